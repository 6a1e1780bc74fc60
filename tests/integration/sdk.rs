//! `mqtt-binding run` through Dapr's official SDKs over gRPC: Python's `dapr` 1.19.0
//! (`tests/sdk/python_grpc.py`: `DaprClient` for output, `dapr.ext.grpc.App` for input), with a
//! real broker and independent MQTT clients.

use std::process::{Output, Stdio};

use rumqttc::QoS;
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt as _, BufReader, Lines};
use tokio::process::{Child, ChildStdout, Command};

use crate::sidecar::{Sidecar, binding_yaml};
use crate::support::{Mosquitto, Subscriber, WAIT, publish_all, python, unique};

const PYTHON_SDK: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../tests/sdk/python_grpc.py");

/// One run of the Python SDK script against `sidecar`.
async fn python_sdk(sidecar: &Sidecar, args: &[&str]) -> Output {
    python_sdk_with(sidecar, &[], args).await
}

/// Likewise, with more environment (`DAPR_API_TOKEN`).
async fn python_sdk_with(sidecar: &Sidecar, env: &[(&str, &str)], args: &[&str]) -> Output {
    let run = Command::new(python())
        .arg(PYTHON_SDK)
        .args(args)
        .env("DAPR_GRPC_PORT", sidecar.grpc.to_string())
        .env("DAPR_HTTP_PORT", sidecar.http.to_string())
        .envs(env.iter().copied())
        .stdin(Stdio::null())
        .kill_on_drop(true)
        .output();
    tokio::time::timeout(WAIT * 2, run)
        .await
        .expect("the SDK script ends")
        .expect("python runs")
}

/// An SDK app that prints one JSON line per event it handles; killed when dropped.
struct AppOutput {
    _child: Child,
    lines: Lines<BufReader<ChildStdout>>,
}

impl AppOutput {
    fn spawn(command: &mut Command) -> Self {
        let mut child = command
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .expect("the SDK app starts (./scripts/test installs the SDKs)");
        let lines = BufReader::new(child.stdout.take().expect("stdout")).lines();
        Self {
            _child: child,
            lines,
        }
    }

    /// The app's next line, failing the test if none comes.
    async fn next(&mut self) -> Value {
        let line = tokio::time::timeout(WAIT * 2, self.lines.next_line())
            .await
            .expect("the app prints")
            .expect("reading the app")
            .expect("the app is running");
        serde_json::from_str(&line).unwrap_or_else(|_| panic!("a JSON line: {line}"))
    }
}

fn stdout(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).trim().to_string()
}

/// `DaprClient().invoke_binding` with data and a per-request topic reaches the broker;
/// an unknown binding raises daprd's error; `get_metadata` answers; a method this sidecar
/// does not serve raises an error that says so.
#[tokio::test]
async fn the_python_sdk_invokes_bindings_over_grpc() {
    let broker = Mosquitto::start();
    let dir = tempfile::tempdir().expect("temp dir");
    let default_topic = format!("orders/{}", unique());
    let topic = format!("elsewhere/{}", unique());
    std::fs::write(
        dir.path().join("orders.yaml"),
        binding_yaml(
            "orders",
            &[("url", &broker.url()), ("topic", &default_topic)],
            None,
        ),
    )
    .expect("component file");
    let mut subscriber = Subscriber::start(broker.port, &topic).await;
    let sidecar = Sidecar::start(dir.path(), None, &[]).await;
    sidecar.healthy().await;

    let sent = python_sdk(&sidecar, &["invoke", "orders", "hello over gRPC", &topic]).await;
    assert!(sent.status.success(), "{sent:?}");
    assert_eq!(stdout(&sent), "ok");
    let received = subscriber.next().await;
    assert_eq!(received.topic, topic);
    assert_eq!(&received.payload[..], b"hello over gRPC");

    let unknown = python_sdk(&sidecar, &["invoke", "nope", "x"]).await;
    assert_eq!(unknown.status.code(), Some(1), "{unknown:?}");
    assert!(
        stdout(&unknown).contains("error invoking output binding nope"),
        "{}",
        stdout(&unknown)
    );

    let metadata = python_sdk(&sidecar, &["metadata"]).await;
    assert!(metadata.status.success(), "{metadata:?}");
    let metadata: Value = serde_json::from_str(&stdout(&metadata)).expect("JSON");
    assert_eq!(
        metadata,
        json!({"id": "shop", "components": [["orders", "bindings.mqtt"]]})
    );

    let state = python_sdk(&sidecar, &["state"]).await;
    assert!(
        stdout(&state).contains("serves Dapr's bindings API only"),
        "{}",
        stdout(&state)
    );
    assert!(sidecar.terminate().await.success());
}

/// A `dapr.ext.grpc.App` receives the events of a binding it lists, in order and intact;
/// a handler that raises gets the same event again (the binding's retry policy).
#[tokio::test]
async fn a_python_sdk_app_receives_events_over_grpc() {
    let broker = Mosquitto::start();
    let dir = tempfile::tempdir().expect("temp dir");
    let topic = format!("events/{}", unique());
    std::fs::write(
        dir.path().join("events.yaml"),
        binding_yaml(
            "events",
            &[
                ("url", &broker.url()),
                ("topic", &topic),
                ("qos", "1"),
                ("consumerID", &format!("events-{}", unique())),
                ("backOffMaxRetries", "3"),
                ("backOffInterval", "100ms"),
            ],
            None,
        ),
    )
    .expect("component file");
    let app_port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("port")
        .port();
    let mut app = AppOutput::spawn(Command::new(python()).arg(PYTHON_SDK).args([
        "serve",
        &app_port.to_string(),
        "events",
        "1",
    ]));
    assert_eq!(app.next().await, json!({"listening": app_port}));

    let sidecar =
        Sidecar::start_with_args(dir.path(), Some(app_port), &[], &["--app-protocol", "grpc"])
            .await;
    let metadata = sidecar.metadata().await;
    assert_eq!(
        metadata["appConnectionProperties"],
        json!({"port": app_port, "protocol": "grpc"}),
        "{metadata}"
    );
    broker.wait_for_log(&topic).await;
    let payloads: Vec<Vec<u8>> = (0..5).map(|n| format!("event {n}").into_bytes()).collect();
    publish_all(broker.port, &topic, QoS::AtLeastOnce, &payloads).await;

    assert_eq!(app.next().await, json!({"data": "event 0", "failed": true}));
    for n in 0..5 {
        assert_eq!(
            app.next().await,
            json!({"data": format!("event {n}"), "failed": false}),
            "event {n}, in order, the failed one again first"
        );
    }
    assert!(sidecar.terminate().await.success());
}

/// The app answers an event with `to`: its data goes on to that output binding, as daprd
/// does. With DAPR_API_TOKEN set, a client without it is refused and one with it served
/// (InvokeBinding and GetMetadata);
/// APP_API_TOKEN reaches the app in `dapr-api-token`.
#[tokio::test]
async fn an_answer_with_to_is_sent_on_and_tokens_guard_both_ways() {
    let broker = Mosquitto::start();
    let dir = tempfile::tempdir().expect("temp dir");
    let (inbox, outbox) = (
        format!("inbox/{}", unique()),
        format!("outbox/{}", unique()),
    );
    let yaml = [
        binding_yaml(
            "inbox",
            &[
                ("url", &broker.url()),
                ("topic", &inbox),
                ("consumerID", &format!("inbox-{}", unique())),
                ("direction", "input"),
            ],
            None,
        ),
        binding_yaml(
            "outbox",
            &[
                ("url", &broker.url()),
                ("topic", &outbox),
                ("consumerID", &format!("outbox-{}", unique())),
                ("direction", "output"),
            ],
            None,
        ),
    ];
    std::fs::write(dir.path().join("bindings.yaml"), yaml.join("---\n")).expect("file");
    let mut forwarded = Subscriber::start(broker.port, &outbox).await;
    let app_port = crate::support::free_port();
    let mut app = AppOutput::spawn(Command::new(python()).arg(PYTHON_SDK).args([
        "forward",
        &app_port.to_string(),
        "inbox",
        "outbox",
    ]));
    assert_eq!(app.next().await, json!({"listening": app_port}));
    let tokens = [
        ("DAPR_API_TOKEN", "api-secret"),
        ("APP_API_TOKEN", "app-secret"),
    ];
    let sidecar = Sidecar::start_with_args(
        dir.path(),
        Some(app_port),
        &tokens,
        &["--app-protocol", "grpc"],
    )
    .await;
    broker.wait_for_log(&inbox).await;

    publish_all(
        broker.port,
        &inbox,
        QoS::AtLeastOnce,
        &[b"pass it on".to_vec()],
    )
    .await;
    assert_eq!(
        app.next().await,
        json!({"data": "pass it on", "token": "app-secret"})
    );
    assert_eq!(&forwarded.next().await.payload[..], b"pass it on");

    let refused = python_sdk(&sidecar, &["invoke", "outbox", "no token"]).await;
    assert_eq!(refused.status.code(), Some(1), "{refused:?}");
    assert!(
        stdout(&refused).contains("dapr-api-token"),
        "{}",
        stdout(&refused)
    );
    let served = python_sdk_with(
        &sidecar,
        &[("DAPR_API_TOKEN", "api-secret")],
        &["invoke", "outbox", "with token"],
    )
    .await;
    assert_eq!(stdout(&served), "ok", "{served:?}");
    assert_eq!(&forwarded.next().await.payload[..], b"with token");
    // GetMetadata checks the token too.
    let refused = python_sdk(&sidecar, &["metadata"]).await;
    assert!(!refused.status.success(), "{refused:?}");
    assert!(
        String::from_utf8_lossy(&refused.stderr).contains("dapr-api-token"),
        "{refused:?}"
    );
    let served =
        python_sdk_with(&sidecar, &[("DAPR_API_TOKEN", "api-secret")], &["metadata"]).await;
    assert!(served.status.success(), "{served:?}");
    assert!(stdout(&served).contains("outbox"), "{served:?}");
    assert!(sidecar.terminate().await.success());
}

const JS_SDK: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../tests/sdk/js_grpc.js");

/// `node tests/sdk/js_grpc.js ...` with the sidecar's gRPC port.
fn node(sidecar_grpc: u16) -> Command {
    let mut node = Command::new("node");
    node.arg(JS_SDK)
        .env("DAPR_GRPC_PORT", sidecar_grpc.to_string())
        .stdin(Stdio::null())
        .kill_on_drop(true);
    node
}

/// Dapr's JavaScript SDK in gRPC mode: a `DaprServer` receives what a `DaprClient` sends
/// through the same binding (published to the topic it reads), and an independent
/// subscriber sees the message on the broker.
#[tokio::test]
async fn the_js_sdk_sends_and_receives_over_grpc() {
    let broker = Mosquitto::start();
    let dir = tempfile::tempdir().expect("temp dir");
    let topic = format!("orders/{}", unique());
    std::fs::write(
        dir.path().join("orders.yaml"),
        binding_yaml(
            "orders",
            &[
                ("url", &broker.url()),
                ("topic", &topic),
                ("qos", "1"),
                ("consumerID", &format!("orders-{}", unique())),
            ],
            None,
        ),
    )
    .expect("component file");
    let mut subscriber = Subscriber::start(broker.port, &topic).await;
    let app_port = crate::support::free_port();
    let sidecar =
        Sidecar::start_with_args(dir.path(), Some(app_port), &[], &["--app-protocol", "grpc"])
            .await;
    let mut app =
        AppOutput::spawn(node(sidecar.grpc).args(["serve", &app_port.to_string(), "orders"]));
    assert_eq!(app.next().await, json!({"listening": app_port}));
    broker.wait_for_log(&topic).await;

    let sent = tokio::time::timeout(
        WAIT * 2,
        node(sidecar.grpc)
            .args(["send", "orders", r#"{"order":1,"item":"pears"}"#, &topic])
            .output(),
    )
    .await
    .expect("the JS client ends")
    .expect("node runs");
    assert_eq!(
        String::from_utf8_lossy(&sent.stdout).trim(),
        "ok",
        "{sent:?}"
    );
    let order = json!({"order": 1, "item": "pears"});
    let published: Value =
        serde_json::from_slice(&subscriber.next().await.payload).expect("JSON on the broker");
    assert_eq!(published, order);
    assert_eq!(app.next().await, json!({"data": order}));
    assert!(sidecar.terminate().await.success());
}
