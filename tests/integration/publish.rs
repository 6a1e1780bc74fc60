//! The output binding against a real broker, checked by an independent subscriber.

use mqtt_binding::{BindingError, BrokerError, BrokerSettings, RuntimeOptions};
use rumqttc::QoS;

use crate::support::{Mosquitto, Subscriber, binding, binding_in, create, runtime_with, unique};

#[tokio::test]
async fn publishes_to_the_component_topic_at_each_qos() {
    let broker = Mosquitto::start();
    for (qos, expected) in [
        ("0", QoS::AtMostOnce),
        ("1", QoS::AtLeastOnce),
        ("2", QoS::ExactlyOnce),
    ] {
        let topic = format!("orders/{}", unique());
        let mut subscriber = Subscriber::start(broker.port, &topic).await;
        let mut binding = binding(&[("url", &broker.url()), ("topic", &topic), ("qos", qos)])
            .await
            .expect("init");
        create(&mut binding, format!("at qos {qos}").as_bytes(), &[])
            .await
            .expect("create");
        let message = subscriber.next().await;
        assert_eq!(
            (message.topic.as_str(), &message.payload[..]),
            (topic.as_str(), format!("at qos {qos}").as_bytes())
        );
        assert_eq!(message.qos, expected, "delivered at the binding's qos");
        assert!(!message.retain);
        binding.close().await;
    }
}

#[tokio::test]
async fn qos1_publish_returns_after_puback_and_qos2_after_pubcomp() {
    let broker = Mosquitto::start();
    for (qos, last_packet) in [("1", "Sending PUBACK to"), ("2", "Sending PUBCOMP to")] {
        let client_id = format!("acked-{}", unique());
        let mut binding = binding(&[
            ("url", &broker.url()),
            ("topic", "acks"),
            ("qos", qos),
            ("consumerID", &client_id),
        ])
        .await
        .expect("init");
        create(&mut binding, b"x", &[]).await.expect("create");
        // mosquitto logs the acknowledgement before it writes it, so by the time `create`
        // has returned, the line is in the log.
        let line = format!("{last_packet} {client_id}");
        assert!(
            broker.log().contains(&line),
            "no {line:?} in the broker log:\n{}",
            broker.log()
        );
        binding.close().await;
    }
}

#[tokio::test]
async fn request_metadata_overrides_topic_and_retain() {
    let broker = Mosquitto::start();
    let base = format!("override/{}", unique());
    let mut binding = binding(&[
        ("url", &broker.url()),
        ("topic", &format!("{base}/default")),
        ("qos", "1"),
    ])
    .await
    .expect("init");
    let other = format!("{base}/other");
    create(
        &mut binding,
        b"retained value",
        &[("topic", &other), ("retain", "true")],
    )
    .await
    .expect("create");
    // A subscriber that arrives afterwards gets the retained message, flagged as retained.
    let mut late = Subscriber::start(broker.port, &other).await;
    let message = late.next().await;
    assert_eq!(
        (message.topic.as_str(), &message.payload[..], message.retain),
        (other.as_str(), &b"retained value"[..], true)
    );
    binding.close().await;
}

#[tokio::test]
async fn payloads_arrive_byte_for_byte() {
    let broker = Mosquitto::start();
    let topic = format!("bytes/{}", unique());
    let mut subscriber = Subscriber::start(broker.port, &topic).await;
    let mut binding = binding(&[("url", &broker.url()), ("topic", &topic), ("qos", "1")])
        .await
        .expect("init");
    let every_byte: Vec<u8> = (0..=255u8).chain((0..=255u8).rev()).collect();
    let one_mib: Vec<u8> = (0..1024 * 1024)
        .map(|i: u32| (i.wrapping_mul(2_654_435_761) >> 24) as u8)
        .collect();
    for payload in [every_byte, Vec::new(), one_mib] {
        create(&mut binding, &payload, &[]).await.expect("create");
        let message = subscriber.next().await;
        assert_eq!(message.payload.len(), payload.len());
        assert!(
            message.payload[..] == payload[..],
            "payload of {} bytes changed in transit",
            payload.len()
        );
    }
    binding.close().await;
}

#[tokio::test]
async fn payload_at_the_limit_passes_one_byte_over_is_rejected() {
    let broker = Mosquitto::start();
    let limit = 64 * 1024;
    let runtime = runtime_with(RuntimeOptions {
        broker: BrokerSettings {
            max_payload_bytes: limit,
            ..BrokerSettings::default()
        },
        ..RuntimeOptions::default()
    });
    let topic = format!("limit/{}", unique());
    let mut subscriber = Subscriber::start(broker.port, &topic).await;
    let mut binding = binding_in(
        &runtime,
        &[("url", &broker.url()), ("topic", &topic), ("qos", "1")],
    )
    .await
    .expect("init");
    create(&mut binding, &vec![7; limit as usize], &[])
        .await
        .expect("at the limit");
    assert_eq!(subscriber.next().await.payload.len(), limit as usize);
    match create(&mut binding, &vec![7; limit as usize + 1], &[]).await {
        Err(BindingError::Broker(BrokerError::TooLarge(text))) => {
            assert_eq!(
                text,
                "payload of 65537 bytes is over the limit of 65536 bytes"
            )
        }
        other => panic!("expected too-large, got {other:?}"),
    }
    // The connection survived the refusal.
    create(&mut binding, b"after", &[])
        .await
        .expect("publish after a refusal");
    assert_eq!(&subscriber.next().await.payload[..], b"after");
    binding.close().await;
}

/// Request metadata larger than the component may hold (payloads stay with the host, but
/// metadata is copied in): the invoke fails with an error that says so and names the limit
/// (not a trap and its wasm backtrace); the instance is thrown away and the next invoke
/// works. Meanwhile a payload twice the memory limit goes through: it never enters the
/// component.
#[tokio::test]
async fn a_component_out_of_memory_says_so_with_its_limit() {
    let broker = Mosquitto::start();
    let limit = 8 * 1024 * 1024;
    let runtime = runtime_with(RuntimeOptions {
        max_memory_bytes: limit,
        ..RuntimeOptions::default()
    });
    let topic = format!("oom/{}", unique());
    let mut subscriber = Subscriber::start(broker.port, &topic).await;
    let mut binding = binding_in(
        &runtime,
        &[("url", &broker.url()), ("topic", &topic), ("qos", "1")],
    )
    .await
    .expect("init");
    create(&mut binding, &vec![1; 2 * limit], &[])
        .await
        .expect("a payload does not enter the component's memory");
    assert_eq!(subscriber.next().await.payload.len(), 2 * limit);
    let huge = "x".repeat(2 * limit);
    match create(&mut binding, b"with huge metadata", &[("note", &huge)]).await {
        Err(BindingError::Component(error)) => {
            let text = format!("{error:#}");
            assert!(
                text.starts_with("the component ran out of memory")
                    && text.contains("over its limit of 8388608 bytes")
                    && !text.contains("wasm backtrace"),
                "{text}"
            );
        }
        other => panic!("expected the component to run out of memory, got {other:?}"),
    }
    create(&mut binding, b"after", &[])
        .await
        .expect("a fresh instance serves the next invoke");
    assert_eq!(&subscriber.next().await.payload[..], b"after");
    binding.close().await;
}

#[tokio::test]
async fn wildcard_topics_and_unknown_operations_are_refused() {
    let broker = Mosquitto::start();
    let mut binding = binding(&[("url", &broker.url()), ("topic", "sensors/+/temp")])
        .await
        .expect("init");
    match create(&mut binding, b"x", &[]).await {
        Err(BindingError::InvalidRequest(text)) => assert_eq!(
            text,
            r#"the component's topic "sensors/+/temp" cannot be published to (a topic to publish to must not contain + or #); give the request metadata field "topic""#
        ),
        other => panic!("expected invalid-request, got {other:?}"),
    }
    match create(&mut binding, b"x", &[("topic", "a/#")]).await {
        Err(BindingError::InvalidRequest(text)) => assert!(
            text.starts_with(r#"request metadata field "topic""#),
            "{text}"
        ),
        other => panic!("expected invalid-request, got {other:?}"),
    }
    let request = mqtt_binding::InvokeRequest {
        operation: "get".into(),
        ..Default::default()
    };
    match binding.invoke(request).await {
        Err(BindingError::InvalidRequest(text)) => {
            assert_eq!(
                text,
                r#"operation "get" is not supported; supported operations: create"#
            )
        }
        other => panic!("expected invalid-request, got {other:?}"),
    }
    assert_eq!(binding.operations().await.expect("operations"), ["create"]);
    binding.close().await;
}

#[tokio::test]
async fn concurrent_invokes_on_one_binding_all_arrive() {
    let broker = Mosquitto::start();
    let topic = format!("concurrent/{}", unique());
    let mut subscriber = Subscriber::start(broker.port, &topic).await;
    let binding = std::sync::Arc::new(
        binding(&[("url", &broker.url()), ("topic", &topic), ("qos", "1")])
            .await
            .expect("init"),
    );
    let mut invokes = tokio::task::JoinSet::new();
    for n in 0..200 {
        let binding = binding.clone();
        invokes.spawn(async move {
            let request = mqtt_binding::InvokeRequest {
                operation: "create".into(),
                data: format!("m{n}").into_bytes(),
                metadata: vec![],
            };
            binding.invoke(request).await
        });
    }
    while let Some(outcome) = invokes.join_next().await {
        outcome
            .expect("the task ran")
            .expect("every invoke succeeded");
    }
    let mut received = std::collections::BTreeSet::new();
    for _ in 0..200 {
        received
            .insert(String::from_utf8(subscriber.next().await.payload.to_vec()).expect("utf-8"));
    }
    let expected: std::collections::BTreeSet<String> = (0..200).map(|n| format!("m{n}")).collect();
    assert_eq!(received, expected);
    binding.close().await;
}

#[tokio::test]
async fn qos0_invokes_all_go_out_in_order_before_the_disconnect() {
    let broker = Mosquitto::start();
    let topic = format!("qos0/{}", unique());
    let mut subscriber = Subscriber::start(broker.port, &topic).await;
    let mut binding = binding(&[("url", &broker.url()), ("topic", &topic), ("qos", "0")])
        .await
        .expect("init");
    for n in 0..300 {
        create(&mut binding, format!("m{n}").as_bytes(), &[])
            .await
            .expect("create");
    }
    // Straight after the last invoke: the DISCONNECT is queued behind all 300.
    binding.close().await;
    for n in 0..300 {
        let message = subscriber.next().await;
        assert_eq!(&message.payload[..], format!("m{n}").as_bytes(), "in order");
    }
}
