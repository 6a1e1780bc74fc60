//! Connecting: credentials, refusals, and brokers that are not there or vanish.

use std::time::{Duration, Instant};

use mqtt_binding::{BindingError, BrokerError};

use crate::support::{BrokerConfig, Mosquitto, Subscriber, binding, create, unique};

#[tokio::test]
async fn credentials_in_the_url_are_accepted() {
    let broker = Mosquitto::start_with(BrokerConfig {
        user: Some(("app".into(), "s3cr:t@".into())),
        ..Default::default()
    });
    let url = format!("tcp://app:s3cr%3At%40@127.0.0.1:{}", broker.port);
    let topic = format!("auth/{}", unique());
    let mut binding = binding(&[("url", &url), ("topic", &topic), ("qos", "1")])
        .await
        .expect("init with credentials");
    create(&mut binding, b"authorised", &[])
        .await
        .expect("create");
    binding.close().await;
    assert!(
        broker.log().contains("u'app'"),
        "the broker saw user app:\n{}",
        broker.log()
    );
}

#[tokio::test]
async fn wrong_password_is_not_authorised_and_not_echoed() {
    let broker = Mosquitto::start_with(BrokerConfig {
        user: Some(("app".into(), "right".into())),
        ..Default::default()
    });
    let url = format!("tcp://app:wrong-password@127.0.0.1:{}", broker.port);
    match binding(&[("url", &url), ("topic", "t")]).await {
        Err(error @ BindingError::Broker(BrokerError::NotAuthorized(_))) => {
            let text = error.to_string();
            // mosquitto 2.0 answers a wrong password with CONNACK 5, not 4.
            assert_eq!(text, "broker refused the connection: not authorized");
            assert!(!text.contains("wrong-password"));
        }
        other => panic!("expected not-authorized, got {other:?}"),
    }
    match binding(&[
        ("url", &format!("tcp://127.0.0.1:{}", broker.port)),
        ("topic", "t"),
    ])
    .await
    {
        Err(BindingError::Broker(BrokerError::NotAuthorized(text))) => {
            assert_eq!(text, "not authorized")
        }
        other => panic!("expected not-authorized for an anonymous client, got {other:?}"),
    }
}

#[tokio::test]
async fn closed_port_fails_at_once_as_unreachable() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("port")
        .port();
    match binding(&[("url", &format!("tcp://127.0.0.1:{port}")), ("topic", "t")]).await {
        Err(BindingError::Broker(BrokerError::Unreachable(text))) => {
            assert!(text.contains("refused"), "{text}")
        }
        other => panic!("expected unreachable, got {other:?}"),
    }
}

#[tokio::test]
async fn silent_broker_times_out_instead_of_hanging() {
    // Accepts TCP connections and never answers CONNECT.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("listener");
    let port = listener.local_addr().expect("address").port();
    let accept = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((socket, _)) = listener.accept().await {
            held.push(socket);
        }
    });
    match binding(&[("url", &format!("tcp://127.0.0.1:{port}")), ("topic", "t")]).await {
        Err(BindingError::Broker(BrokerError::Timeout(_))) => {}
        other => panic!("expected a timeout, got {other:?}"),
    }
    accept.abort();
}

#[tokio::test]
async fn publish_to_a_vanished_broker_fails_within_its_retries() {
    let mut broker = Mosquitto::start();
    let topic = format!("vanish/{}", unique());
    let mut subscriber = Subscriber::start(broker.port, &topic).await;
    let mut binding = binding(&[("url", &broker.url()), ("topic", &topic), ("qos", "1")])
        .await
        .expect("init");
    create(&mut binding, b"before", &[])
        .await
        .expect("create while the broker is up");
    assert_eq!(&subscriber.next().await.payload[..], b"before");
    drop(subscriber);
    broker.kill();
    let started = Instant::now();
    // Unreachable or timeout if the binding saw the connection go before writing; if it
    // wrote first, unconfirmed (the message may have reached the broker), not retried.
    match create(&mut binding, b"after", &[]).await {
        Err(BindingError::Broker(
            BrokerError::Unreachable(_) | BrokerError::Timeout(_) | BrokerError::Unconfirmed(_),
        )) => {}
        other => panic!("expected unreachable, timeout or unconfirmed, got {other:?}"),
    }
    // Bounded by the publish policy: 4 attempts of at most 10 s each, 200 ms apart.
    assert!(
        started.elapsed() < Duration::from_secs(45),
        "took {:?}",
        started.elapsed()
    );
    binding.close().await;
}

/// Two bindings of one process with the same client ID to the same broker take the
/// connection from each other in turn: the host says so, naming both; a binding that
/// closed frees its client ID.
#[tokio::test]
async fn two_bindings_with_one_client_id_are_named_in_a_warning() {
    let broker = Mosquitto::start();
    let (captured, _logging) = crate::support::Captured::logs(tracing::Level::WARN);
    let client_id = format!("shared-{}", unique());
    let pairs = [
        ("url", broker.url()),
        ("topic", "t".to_string()),
        ("consumerID", client_id.clone()),
    ];
    let start = |name: &'static str| {
        let metadata = crate::support::metadata(
            &pairs
                .iter()
                .map(|(k, v)| (*k, v.as_str()))
                .collect::<Vec<_>>(),
        );
        async move {
            crate::support::runtime()
                .binding(mqtt_binding::BindingOptions {
                    name: name.into(),
                    app_id: "shop".into(),
                    metadata,
                    handler: None,
                })
                .await
                .expect("binding")
        }
    };
    let orders = start("orders").await;
    orders.close().await;
    drop(orders);
    let alerts = start("alerts").await;
    assert!(
        !captured.text().contains("same client ID"),
        "orders had closed: {}",
        captured.text()
    );
    let audit = start("audit").await;
    let text = captured.text();
    assert!(
        text.contains(&format!(
            "bindings \"alerts\" and \"audit\" connect to 127.0.0.1:{} with the same client ID {client_id:?}",
            broker.port
        )),
        "{text}"
    );
    audit.close().await;
    alerts.close().await;
}
