//! MQTT 5 against a real mosquitto 2.0, checked by an independent MQTT 5 client: Eclipse
//! Paho's Python client (paho-mqtt 2.x, `tests/mqtt5/peer.py`). Properties both ways byte for
//! byte, message expiry, request/response, reason codes, sessions and shared subscriptions.

use base64::Engine as _;
use mqtt_binding::{BindingError, BrokerError};
use serde_json::Value;
use tokio::io::{AsyncBufReadExt as _, BufReader};

use crate::support::{
    BrokerConfig, Mosquitto, Reader, Recorder, WAIT, binding, create, eventually, meta, python,
    unique,
};

const PEER: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../tests/mqtt5/peer.py");

pub(crate) fn b64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

/// Runs the peer once to the end and returns the JSON line it printed last.
async fn peer(args: &[&str]) -> Value {
    let output = tokio::time::timeout(
        WAIT,
        tokio::process::Command::new(python())
            .arg(PEER)
            .args(args)
            .output(),
    )
    .await
    .expect("the MQTT 5 peer finished in time")
    .expect("the MQTT 5 peer runs");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "peer {args:?} failed: {stdout}{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let last = stdout.lines().last().expect("the peer printed a line");
    serde_json::from_str(last).expect("a JSON line")
}

/// Publishes with the peer at QoS 1 (`properties` as `peer.py` takes them) and returns the
/// broker's reason code.
async fn peer_publish(
    port: u16,
    topic: &str,
    payload: &[u8],
    properties: &str,
    retain: bool,
) -> u64 {
    let (port, payload) = (port.to_string(), b64(payload));
    let mut args = vec![
        "publish",
        "--port",
        &port,
        "--topic",
        topic,
        "--payload-b64",
        &payload,
    ];
    args.extend(["--properties", properties]);
    if retain {
        args.push("--retain");
    }
    peer(&args).await["reason_code"]
        .as_u64()
        .expect("a reason code")
}

/// The message the broker retains for `topic` now, as the peer received it (null: none).
async fn peer_retained(port: u16, topic: &str) -> Value {
    let port = port.to_string();
    peer(&["retained", "--port", &port, "--topic", topic]).await["retained"].clone()
}

/// Waits until the broker no longer retains a message for `topic` (expiry is the event),
/// failing the test after [`WAIT`].
async fn wait_until_not_retained(port: u16, topic: &str) {
    eventually(WAIT, async || match peer_retained(port, topic).await {
        serde_json::Value::Null => Ok(()),
        retained => Err(format!("{topic} is still retained: {retained}")),
    })
    .await;
}

/// A peer subscribed to a topic (the subscription is made when this returns), printing the
/// messages it receives.
pub(crate) struct PeerSubscriber {
    lines: tokio::io::Lines<BufReader<tokio::process::ChildStdout>>,
    _child: tokio::process::Child,
}

impl PeerSubscriber {
    pub(crate) async fn start(port: u16, topic: &str, count: usize) -> Self {
        let mut child = tokio::process::Command::new(python())
            .arg(PEER)
            .args(["subscribe", "--port", &port.to_string(), "--topic", topic])
            .args(["--count", &count.to_string()])
            .stdout(std::process::Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .expect("the MQTT 5 peer runs");
        let stdout = child.stdout.take().expect("stdout");
        let mut subscriber = Self {
            lines: BufReader::new(stdout).lines(),
            _child: child,
        };
        assert_eq!(subscriber.next().await["ready"], true);
        subscriber
    }

    pub(crate) async fn next(&mut self) -> Value {
        let line = tokio::time::timeout(WAIT, self.lines.next_line())
            .await
            .expect("the peer printed in time")
            .expect("reading the peer")
            .expect("the peer is running");
        serde_json::from_str(&line).expect("a JSON line")
    }
}

fn mqtt5(broker: &Mosquitto, topic: &str) -> Vec<(String, String)> {
    vec![
        ("url".into(), broker.url()),
        ("topic".into(), topic.into()),
        ("qos".into(), "1".into()),
        ("protocolVersion".into(), "5".into()),
    ]
}

/// Writes `dir/NAME.yaml`: an MQTT 5 binding component on `topic` at QoS 1, plus `extra`,
/// for `mqtt-binding run`.
fn write_component(
    dir: &std::path::Path,
    name: &str,
    broker: &Mosquitto,
    topic: &str,
    extra: &[(&str, &str)],
) {
    let mut metadata = mqtt5(broker, topic);
    metadata.extend(extra.iter().map(|(k, v)| (k.to_string(), v.to_string())));
    let yaml = crate::sidecar::binding_yaml(name, &pairs(&metadata), None);
    std::fs::write(dir.join(format!("{name}.yaml")), yaml).expect("writing the component");
}

/// The metadata of an MQTT 5 binding on `topic` with a persistent session (its own client
/// ID, `cleanSession: false`) that has subscribed once and stopped, so the broker now
/// queues the topic's messages for it.
async fn left_persistent_session(broker: &Mosquitto, topic: &str) -> Vec<(String, String)> {
    let mut metadata = mqtt5(broker, topic);
    metadata.push(("consumerID".into(), format!("session-{}", unique())));
    metadata.push(("cleanSession".into(), "false".into()));
    let (recorder, _) = Recorder::failing(0);
    let reader = Reader::start(&pairs(&metadata), recorder).await;
    reader.stop().await.expect("stopped");
    metadata
}

fn pairs(owned: &[(String, String)]) -> Vec<(&str, &str)> {
    owned
        .iter()
        .map(|(name, value)| (name.as_str(), value.as_str()))
        .collect()
}

#[tokio::test]
async fn properties_go_out_byte_for_byte() {
    let broker = Mosquitto::start();
    let topic = format!("mqtt5/out/{}", unique());
    let mut subscriber = PeerSubscriber::start(broker.port, &topic, 1).await;
    let metadata = mqtt5(&broker, &topic);
    let mut binding = binding(&pairs(&metadata)).await.expect("binding");
    let traceparent = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
    create(
        &mut binding,
        b"\x00payload\xff",
        &[
            ("contentType", "application/octet-stream"),
            ("responseTopic", "replies/42"),
            ("correlationDataBase64", &b64(b"\x00\x01\xfe\xff")),
            ("userProperty.region", "eu-west"),
            ("userProperty.Region", "with spaces, and ünïcode"),
            ("ttlInSeconds", "300"),
            ("traceparent", traceparent),
            ("x-unrelated-header", "not a property"),
        ],
    )
    .await
    .expect("published");
    let message = subscriber.next().await;
    assert_eq!(message["payload_b64"], b64(b"\x00payload\xff"));
    assert_eq!(message["content_type"], "application/octet-stream");
    assert_eq!(message["response_topic"], "replies/42");
    assert_eq!(message["correlation_b64"], b64(b"\x00\x01\xfe\xff"));
    assert_eq!(
        message["user_properties"],
        serde_json::json!([
            ["region", "eu-west"],
            ["Region", "with spaces, and ünïcode"],
            ["traceparent", traceparent]
        ])
    );
    let expiry = message["expiry"].as_u64().expect("an expiry");
    assert!(
        (1..=300).contains(&expiry),
        "what is left of 300 s: {expiry}"
    );
    binding.close().await;
}

#[tokio::test]
async fn properties_come_in_byte_for_byte() {
    let broker = Mosquitto::start();
    let topic = format!("mqtt5/in/{}", unique());
    let (recorder, mut accepted) = Recorder::failing(0);
    let metadata = mqtt5(&broker, &topic);
    let reader = Reader::start(&pairs(&metadata), recorder).await;
    let traceparent = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";
    let properties = serde_json::json!({
        "content_type": "text/plain; charset=utf-8",
        "correlation_b64": b64(b"\x00\xffbinary"),
        "expiry": 600,
        "user_properties": [["a", "1"], ["a", "2"], ["traceparent", traceparent]],
    });
    let code = peer_publish(
        broker.port,
        &topic,
        b"hello",
        &properties.to_string(),
        false,
    )
    .await;
    assert_eq!(code, 0);
    let event = accepted.next().await;
    assert_eq!(event.data, &b"hello"[..]);
    assert_eq!(meta(&event, "contentType"), "text/plain; charset=utf-8");
    assert_eq!(
        meta(&event, "correlationDataBase64"),
        b64(b"\x00\xffbinary")
    );
    assert_eq!(
        meta(&event, "correlationData"),
        "",
        "binary data is not text"
    );
    let expiry: u32 = meta(&event, "messageExpiryInterval")
        .parse()
        .expect("a number");
    assert!((1..=600).contains(&expiry), "left of 600 s: {expiry}");
    let metadata = event.metadata.to_vec();
    let user: Vec<(&str, &str)> = metadata
        .iter()
        .filter(|(name, _)| name.starts_with("userProperty."))
        .map(|(name, value)| (name.as_str(), value.as_str()))
        .collect();
    assert_eq!(
        user,
        [
            ("userProperty.a", "1"),
            ("userProperty.a", "2"),
            ("userProperty.traceparent", traceparent)
        ]
    );
    assert_eq!(meta(&event, "traceparent"), traceparent);
    assert_eq!(event.attempt, 1);
    reader.stop().await.expect("stopped");
}

#[tokio::test]
async fn an_expired_retained_message_is_not_delivered() {
    let broker = Mosquitto::start();
    let base = format!("mqtt5/expiry/{}", unique());
    let metadata = mqtt5(&broker, &format!("{base}/#"));
    let mut binding = binding(&pairs(&metadata)).await.expect("binding");
    let (short, kept) = (format!("{base}/short"), format!("{base}/kept"));
    create(
        &mut binding,
        b"short-lived",
        &[("topic", &short), ("retain", "true"), ("ttlInSeconds", "5")],
    )
    .await
    .expect("published");
    create(
        &mut binding,
        b"kept",
        &[("topic", &kept), ("retain", "true")],
    )
    .await
    .expect("published");
    assert_eq!(
        peer_retained(broker.port, &short).await["payload_b64"],
        b64(b"short-lived"),
        "retained until it expires"
    );
    wait_until_not_retained(broker.port, &short).await;
    assert_eq!(
        peer_retained(broker.port, &kept).await["payload_b64"],
        b64(b"kept"),
        "a message without expiry stays"
    );
    binding.close().await;
}

#[tokio::test]
async fn an_expired_queued_message_is_not_delivered_to_a_returning_session() {
    let broker = Mosquitto::start();
    let topic = format!("mqtt5/queued/{}", unique());
    let metadata = left_persistent_session(&broker, &topic).await;
    // The session is kept (sessionExpiryInterval defaults to "never" with cleanSession
    // false); two messages are queued for it, one that expires in 1 s.
    peer_publish(broker.port, &topic, b"expires", r#"{"expiry": 1}"#, false).await;
    peer_publish(broker.port, &topic, b"stays", "{}", false).await;
    // A retained message published after the queued one, with a second more of expiry:
    // once it is gone, so is the queued one. (mosquitto counts expiry in whole seconds and
    // drops an expired retained message from the second it expires, a queued one from
    // the next.)
    let probe = format!("{topic}/probe");
    peer_publish(broker.port, &probe, b"probe", r#"{"expiry": 2}"#, true).await;
    wait_until_not_retained(broker.port, &probe).await;
    let (recorder, mut accepted) = Recorder::failing(0);
    let reader = Reader::start(&pairs(&metadata), recorder.clone()).await;
    assert_eq!(accepted.next().await.data, &b"stays"[..]);
    assert_eq!(
        peer_publish(broker.port, &topic, b"marker", "{}", false).await,
        0
    );
    assert_eq!(accepted.next().await.data, &b"marker"[..]);
    assert_eq!(
        recorder
            .calls()
            .iter()
            .map(|event| event.data.clone())
            .collect::<Vec<_>>(),
        [b"stays".to_vec(), b"marker".to_vec()],
        "the expired message was never delivered"
    );
    reader.stop().await.expect("stopped");
}

#[tokio::test]
async fn a_request_gets_the_applications_answer_with_its_correlation_data() {
    let broker = Mosquitto::start();
    let topic = format!("mqtt5/requests/{}", unique());
    let (recorder, mut accepted) = Recorder::answering(b"the answer");
    let metadata = mqtt5(&broker, &topic);
    let reader = Reader::start(&pairs(&metadata), recorder).await;
    let replies = format!("mqtt5/replies/{}", unique());
    let response = peer(&[
        "request",
        "--port",
        &broker.port.to_string(),
        "--topic",
        &topic,
        "--response-topic",
        &replies,
        "--correlation-b64",
        &b64(b"\x01request-7\xff"),
        "--payload-b64",
        &b64(b"the question"),
    ])
    .await;
    assert_eq!(response["topic"], replies.as_str());
    assert_eq!(response["payload_b64"], b64(b"the answer"));
    assert_eq!(response["correlation_b64"], b64(b"\x01request-7\xff"));
    let request = accepted.next().await;
    assert_eq!(request.data, &b"the question"[..]);
    assert_eq!(meta(&request, "responseTopic"), replies);
    reader.stop().await.expect("stopped");
}

#[tokio::test]
async fn a_publish_the_acl_denies_fails_with_the_reason_code() {
    let dir = tempfile::tempdir().expect("dir");
    let acl = dir.path().join("acl");
    // As mosquitto's documentation writes an ACL file: anonymous clients may read
    // everything and write only under allowed/.
    std::fs::write(&acl, "topic read #\ntopic write allowed/#\n").expect("acl");
    let broker = Mosquitto::start_with(BrokerConfig {
        extra: format!("acl_file {}\n", acl.display()),
        ..Default::default()
    });
    let metadata = mqtt5(&broker, "allowed/x");
    let mut binding = binding(&pairs(&metadata)).await.expect("binding");
    create(&mut binding, b"ok", &[]).await.expect("allowed");
    match create(&mut binding, b"no", &[("topic", "denied/x")]).await {
        Err(BindingError::Broker(BrokerError::Rejected(rejection))) => {
            assert_eq!(rejection.code, 0x87);
            assert!(!rejection.retryable);
            let text = BindingError::Broker(BrokerError::Rejected(rejection)).to_string();
            assert_eq!(
                text,
                "the broker refused it with reason code 0x87 (not authorized); trying again will fail the same way"
            );
        }
        other => panic!("expected a rejection, got {other:?}"),
    }
    binding.close().await;
}

#[tokio::test]
async fn a_persistent_session_survives_a_binding_restart() {
    let broker = Mosquitto::start();
    let topic = format!("mqtt5/session/{}", unique());
    let metadata = left_persistent_session(&broker, &topic).await;
    assert_eq!(
        peer_publish(broker.port, &topic, b"while away", "{}", false).await,
        0,
        "the broker kept the subscription, so someone matches"
    );
    let (recorder, mut accepted) = Recorder::failing(0);
    let reader = Reader::start(&pairs(&metadata), recorder).await;
    assert_eq!(accepted.next().await.data, &b"while away"[..]);
    reader.stop().await.expect("stopped");
}

#[tokio::test]
async fn a_share_group_splits_the_messages_between_bindings() {
    let broker = Mosquitto::start();
    let topic = format!("mqtt5/shared/{}", unique());
    let mut metadata = mqtt5(&broker, &topic);
    metadata.push(("sharedSubscriptionGroup".into(), "workers".into()));
    let (first, _) = Recorder::failing(0);
    let (second, _) = Recorder::failing(0);
    let readers = [
        Reader::start(&pairs(&metadata), first.clone()).await,
        Reader::start(&pairs(&metadata), second.clone()).await,
    ];
    // An output binding with the group publishes to the topic itself.
    let mut output = binding(&pairs(&metadata)).await.expect("binding");
    let count = 20;
    for n in 0..count {
        create(&mut output, n.to_string().as_bytes(), &[])
            .await
            .expect("published");
    }
    eventually(WAIT, async || {
        let delivered = first.calls().len() + second.calls().len();
        if delivered >= count {
            return Ok(());
        }
        Err(format!("{delivered} of {count} delivered"))
    })
    .await;
    let mut all: Vec<u32> = first
        .calls()
        .iter()
        .chain(second.calls().iter())
        .map(|event| {
            String::from_utf8_lossy(&event.data)
                .parse()
                .expect("a number")
        })
        .collect();
    all.sort_unstable();
    assert_eq!(all, (0..20).collect::<Vec<_>>(), "each message once");
    assert!(
        !first.calls().is_empty() && !second.calls().is_empty(),
        "both bindings took part: {} and {}",
        first.calls().len(),
        second.calls().len()
    );
    for event in first.calls().iter().chain(second.calls().iter()) {
        assert_eq!(
            meta(event, "topic"),
            topic,
            "the concrete topic, not the filter"
        );
    }
    output.close().await;
    for reader in readers {
        reader.stop().await.expect("stopped");
    }
}

#[tokio::test]
async fn mqtt5_request_fields_are_refused_on_an_mqtt_311_binding() {
    let broker = Mosquitto::start();
    let topic = format!("mqtt5/311/{}", unique());
    let mut binding = binding(&[("url", &broker.url()), ("topic", &topic)])
        .await
        .expect("binding");
    match create(&mut binding, b"x", &[("userProperty.a", "1")]).await {
        Err(BindingError::InvalidRequest(text)) => assert_eq!(
            text,
            r#"request metadata field "userProperty.a": is an MQTT 5 feature; set the metadata field "protocolVersion" to "5" to use it"#
        ),
        other => panic!("expected an invalid request, got {other:?}"),
    }
    // What a sidecar copies in, and Dapr's ttl, are left out at MQTT 3.1.1.
    create(
        &mut binding,
        b"x",
        &[("traceparent", "00-ab-cd-01"), ("ttlInSeconds", "5")],
    )
    .await
    .expect("published without them");
    binding.close().await;
}

#[tokio::test]
async fn a_refused_connection_names_the_mqtt5_reason_code() {
    let broker = Mosquitto::start_with(BrokerConfig {
        user: Some(("app".into(), "right".into())),
        ..Default::default()
    });
    let url = format!("tcp://app:wrong-password@127.0.0.1:{}", broker.port);
    match binding(&[("url", &url), ("topic", "t"), ("protocolVersion", "5")]).await {
        Err(error @ BindingError::Broker(BrokerError::NotAuthorized(_))) => {
            let text = error.to_string();
            assert!(
                text.starts_with("broker refused the connection: reason code 0x8"),
                "{text}"
            );
            assert!(!text.contains("wrong-password"), "{text}");
        }
        other => panic!("expected not-authorized, got {other:?}"),
    }
}

#[tokio::test]
async fn the_brokers_receive_maximum_bounds_the_publishes_in_flight() {
    // mosquitto tells MQTT 5 clients its max_inflight_messages as its receive maximum, and
    // disconnects a client that sends more unacknowledged publishes than that.
    let broker = Mosquitto::start_with(BrokerConfig {
        extra: "max_inflight_messages 2\n".into(),
        ..Default::default()
    });
    let topic = format!("mqtt5/inflight/{}", unique());
    let metadata = mqtt5(&broker, &topic);
    let binding = std::sync::Arc::new(binding(&pairs(&metadata)).await.expect("binding"));
    let invokes: Vec<_> = (0..50)
        .map(|n| {
            let binding = binding.clone();
            tokio::spawn(async move {
                binding
                    .invoke(mqtt_binding::InvokeRequest {
                        operation: "create".into(),
                        data: n.to_string().into_bytes(),
                        metadata: Vec::new(),
                    })
                    .await
            })
        })
        .collect();
    for invoke in invokes {
        tokio::time::timeout(WAIT, invoke)
            .await
            .expect("in time")
            .expect("no panic")
            .expect("every publish acknowledged");
    }
    assert_eq!(binding.stats().await.reconnects, 0, "never disconnected");
    assert_eq!(broker.log_count("Receive Maximum"), 0, "{}", broker.log());
}

#[tokio::test]
async fn a_publish_over_the_brokers_maximum_packet_size_fails_unsent() {
    let broker = Mosquitto::start_with(BrokerConfig {
        extra: "max_packet_size 1000\n".into(),
        ..Default::default()
    });
    let topic = format!("mqtt5/size/{}", unique());
    let metadata = mqtt5(&broker, &topic);
    let mut binding = binding(&pairs(&metadata)).await.expect("binding");
    match create(&mut binding, &[b'x'; 5000], &[]).await {
        Err(BindingError::Broker(BrokerError::TooLarge(text))) => {
            assert!(text.contains("1000"), "{text}");
        }
        other => panic!("expected too-large, got {other:?}"),
    }
    create(&mut binding, b"small", &[])
        .await
        .expect("the connection is still up");
    assert_eq!(binding.stats().await.reconnects, 0);
    binding.close().await;
}

/// Through `mqtt-binding run`: an MQTT 5 request reaches an HTTP app with its properties as
/// headers, and the app's 200 body goes back to the requester; a message's `traceparent`
/// user property reaches the app as the `traceparent` header, and the caller's
/// `traceparent` header on an output request becomes a user property of the published
/// message.
#[tokio::test]
async fn through_the_http_sidecar_properties_are_headers_and_the_answer_is_the_response() {
    use axum::http::{HeaderMap, StatusCode};

    use crate::sidecar::Sidecar;

    let broker = Mosquitto::start();
    let requests = format!("mqtt5/http/{}", unique());
    let out = format!("mqtt5/http-out/{}", unique());
    let dir = tempfile::tempdir().expect("dir");
    for (name, topic) in [("requests", requests.as_str()), ("out", out.as_str())] {
        // Two bindings of one app need client IDs of their own.
        let client_id = format!("shop-{name}");
        write_component(
            dir.path(),
            name,
            &broker,
            topic,
            &[("consumerID", &client_id)],
        );
    }
    let (seen_tx, mut seen) = tokio::sync::mpsc::unbounded_channel::<HeaderMap>();
    let app = axum::Router::new().route(
        "/requests",
        axum::routing::options(|| async { StatusCode::OK }).post(
            move |headers: HeaderMap, body: axum::body::Bytes| {
                let seen_tx = seen_tx.clone();
                async move {
                    let _ = seen_tx.send(headers);
                    let mut answer = b"answered: ".to_vec();
                    answer.extend_from_slice(&body);
                    (StatusCode::OK, answer)
                }
            },
        ),
    );
    let app_port = crate::support::free_port();
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", app_port))
        .await
        .expect("app port");
    let server = tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    let sidecar = Sidecar::start(dir.path(), Some(app_port), &[]).await;
    sidecar.healthy().await;
    broker
        .wait_for_log("Received SUBSCRIBE from shop-requests")
        .await;

    let replies = format!("mqtt5/http-replies/{}", unique());
    let response = peer(&[
        "request",
        "--port",
        &broker.port.to_string(),
        "--topic",
        &requests,
        "--response-topic",
        &replies,
        "--correlation-b64",
        &b64(b"corr-1"),
        "--payload-b64",
        &b64(b"ping"),
    ])
    .await;
    assert_eq!(response["payload_b64"], b64(b"answered: ping"));
    assert_eq!(response["correlation_b64"], b64(b"corr-1"));
    let headers = tokio::time::timeout(WAIT, seen.recv())
        .await
        .expect("the app was called")
        .expect("headers");
    assert_eq!(headers["responsetopic"], replies.as_str());
    assert_eq!(headers["correlationdata"], "corr-1");

    // W3C Trace Context over MQTT, inbound: the message's traceparent reaches the app as
    // the traceparent header.
    let incoming_trace = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";
    let properties = serde_json::json!({"user_properties": [["traceparent", incoming_trace]]});
    let code = peer_publish(
        broker.port,
        &requests,
        b"traced in",
        &properties.to_string(),
        false,
    )
    .await;
    assert_eq!(code, 0);
    let headers = tokio::time::timeout(WAIT, seen.recv())
        .await
        .expect("the app was called")
        .expect("headers");
    assert_eq!(headers["traceparent"], incoming_trace);

    let mut subscriber = PeerSubscriber::start(broker.port, &out, 1).await;
    let traceparent = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
    let answer = sidecar
        .client
        .post(sidecar.url("/v1.0/bindings/out"))
        .header("traceparent", traceparent)
        .body(r#"{"operation": "create", "data": "traced"}"#)
        .send()
        .await
        .expect("answer");
    assert_eq!(
        answer.status(),
        StatusCode::NO_CONTENT,
        "{}",
        answer.text().await.unwrap_or_default()
    );
    let message = subscriber.next().await;
    assert_eq!(
        message["user_properties"],
        serde_json::json!([["traceparent", traceparent]])
    );
    assert!(sidecar.terminate().await.success());
    server.abort();
}

/// The caller's `traceparent` and `tracestate` gRPC metadata on `InvokeBinding` become user
/// properties of the published message; a `traceparent` in the request's own metadata wins.
#[tokio::test]
async fn grpc_trace_context_becomes_user_properties() {
    use mqtt_binding::sidecar::proto::InvokeBindingRequest;
    use mqtt_binding::sidecar::proto::dapr_client::DaprClient;

    use crate::sidecar::Sidecar;

    let broker = Mosquitto::start();
    let topic = format!("mqtt5/grpc-trace/{}", unique());
    let dir = tempfile::tempdir().expect("dir");
    write_component(dir.path(), "out", &broker, &topic, &[]);
    let sidecar = Sidecar::start(dir.path(), None, &[]).await;
    sidecar.healthy().await;
    let channel =
        tonic::transport::Endpoint::from_shared(format!("http://127.0.0.1:{}", sidecar.grpc))
            .expect("address")
            .connect()
            .await
            .expect("the gRPC API accepts");
    let mut client = DaprClient::new(channel);
    let mut subscriber = PeerSubscriber::start(broker.port, &topic, 2).await;
    let traceparent = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
    for own in [
        None,
        Some("00-11111111111111111111111111111111-2222222222222222-01"),
    ] {
        let mut request = tonic::Request::new(InvokeBindingRequest {
            name: "out".into(),
            data: b"traced".to_vec(),
            metadata: own
                .map(|value| ("traceparent".to_string(), value.to_string()))
                .into_iter()
                .collect(),
            operation: "create".into(),
        });
        request
            .metadata_mut()
            .insert("traceparent", traceparent.parse().expect("ascii"));
        request
            .metadata_mut()
            .insert("tracestate", "vendor=value".parse().expect("ascii"));
        client.invoke_binding(request).await.expect("InvokeBinding");
        let message = subscriber.next().await;
        assert_eq!(
            message["user_properties"],
            serde_json::json!([
                ["traceparent", own.unwrap_or(traceparent)],
                ["tracestate", "vendor=value"]
            ])
        );
    }
    assert!(sidecar.terminate().await.success());
}

/// Through `mqtt-binding run --app-protocol grpc`: a gRPC app's `data` answers an MQTT 5
/// request, and a message's `traceparent` reaches the app as gRPC metadata too.
#[tokio::test]
async fn through_a_grpc_app_the_answer_is_the_response_and_traceparent_is_grpc_metadata() {
    use mqtt_binding::sidecar::proto::app_callback_server::{AppCallback, AppCallbackServer};
    use mqtt_binding::sidecar::proto::{
        BindingEventRequest, BindingEventResponse, ListInputBindingsResponse,
    };

    use crate::sidecar::Sidecar;

    struct App(
        tokio::sync::mpsc::UnboundedSender<(tonic::metadata::MetadataMap, BindingEventRequest)>,
    );

    #[tonic::async_trait]
    impl AppCallback for App {
        async fn list_input_bindings(
            &self,
            _: tonic::Request<()>,
        ) -> Result<tonic::Response<ListInputBindingsResponse>, tonic::Status> {
            Ok(tonic::Response::new(ListInputBindingsResponse {
                bindings: vec!["requests".into()],
            }))
        }

        async fn on_binding_event(
            &self,
            request: tonic::Request<BindingEventRequest>,
        ) -> Result<tonic::Response<BindingEventResponse>, tonic::Status> {
            let headers = request.metadata().clone();
            let event = request.into_inner();
            let mut data = b"answered: ".to_vec();
            data.extend_from_slice(&event.data);
            let _ = self.0.send((headers, event));
            Ok(tonic::Response::new(BindingEventResponse {
                data,
                ..Default::default()
            }))
        }
    }

    let broker = Mosquitto::start();
    let topic = format!("mqtt5/grpc-app/{}", unique());
    let dir = tempfile::tempdir().expect("dir");
    write_component(dir.path(), "requests", &broker, &topic, &[]);
    let (seen_tx, mut seen) = tokio::sync::mpsc::unbounded_channel();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("app port");
    let app_port = listener.local_addr().expect("address").port();
    let server = tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(AppCallbackServer::new(App(seen_tx)))
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
    );
    let sidecar =
        Sidecar::start_with_args(dir.path(), Some(app_port), &[], &["--app-protocol", "grpc"])
            .await;
    sidecar.healthy().await;
    broker.wait_for_log("Received SUBSCRIBE from shop").await;

    let replies = format!("mqtt5/grpc-replies/{}", unique());
    let response = peer(&[
        "request",
        "--port",
        &broker.port.to_string(),
        "--topic",
        &topic,
        "--response-topic",
        &replies,
        "--correlation-b64",
        &b64(b"\x00grpc"),
        "--payload-b64",
        &b64(b"ping"),
    ])
    .await;
    assert_eq!(response["payload_b64"], b64(b"answered: ping"));
    assert_eq!(response["correlation_b64"], b64(b"\x00grpc"));
    let (_, request) = tokio::time::timeout(WAIT, seen.recv())
        .await
        .expect("the app was called")
        .expect("an event");
    assert_eq!(request.metadata["responseTopic"], replies);

    let trace = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";
    let properties = serde_json::json!({"user_properties": [["traceparent", trace]]});
    let code = peer_publish(
        broker.port,
        &topic,
        b"traced",
        &properties.to_string(),
        false,
    )
    .await;
    assert_eq!(code, 0);
    let (headers, event) = tokio::time::timeout(WAIT, seen.recv())
        .await
        .expect("the app was called")
        .expect("an event");
    assert_eq!(event.metadata["traceparent"], trace);
    assert_eq!(
        headers.get("traceparent").and_then(|v| v.to_str().ok()),
        Some(trace)
    );
    assert!(sidecar.terminate().await.success());
    server.abort();
}
