//! `mqtt-binding pluggable` as a process, driven through its Unix socket by a stand-in for
//! daprd (`tests/pluggable/daprd_standin.py`, Python grpcio with stubs generated from the
//! project's `.proto` files) doing what daprd does, and checked by independent MQTT clients
//! on a real broker.

use std::path::{Path, PathBuf};
use std::process::Stdio;

use rumqttc::QoS;
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt as _, AsyncWriteExt as _, BufReader, Lines};
use tokio::process::{Child, ChildStdin, ChildStdout, Command};

use crate::support::{
    BrokerConfig, Mosquitto, Subscriber, WAIT, eventually, logged_ids, publish_all, python, unique,
};

const BIN: &str = env!("CARGO_BIN_EXE_mqtt-binding");
const STANDIN: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../tests/pluggable/daprd_standin.py"
);
const PROTO: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/proto");
/// The socket's name in these tests: components of type `bindings.mqtt-test`.
const NAME: &str = "mqtt-test";

/// A running `mqtt-binding pluggable`; killed on drop.
struct Pluggable {
    child: Option<Child>,
    socket: PathBuf,
    log: PathBuf,
    metrics: u16,
}

impl Pluggable {
    /// Starts it on `folder/mqtt-test.sock` and waits until the socket accepts.
    async fn start(folder: &Path, args: &[&str]) -> Self {
        let log = folder.join(format!("pluggable-{}.log", unique()));
        let metrics = crate::support::free_port();
        let child = Command::new(BIN)
            .args(["--log-level", "info", "pluggable", "--name", NAME])
            .args(["--metrics-port", &metrics.to_string()])
            .arg("--socket-folder")
            .arg(folder)
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).expect("log file"))
            .kill_on_drop(true)
            .spawn()
            .expect("mqtt-binding pluggable starts");
        let pluggable = Self {
            child: Some(child),
            socket: folder.join(format!("{NAME}.sock")),
            log,
            metrics,
        };
        eventually(WAIT, async || {
            match tokio::net::UnixStream::connect(&pluggable.socket).await {
                Ok(_) => Ok(()),
                Err(error) => Err(format!(
                    "the socket never accepted ({error}); log:\n{}",
                    pluggable.log()
                )),
            }
        })
        .await;
        pluggable
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// SIGTERM, and the exit status (failing the test if it takes longer than WAIT).
    async fn terminate(mut self) -> std::process::ExitStatus {
        crate::support::terminate(self.child.take().expect("running")).await
    }
}

/// The daprd stand-in, one command at a time.
struct Daprd {
    _child: Child,
    stdin: ChildStdin,
    answers: Lines<BufReader<ChildStdout>>,
}

impl Daprd {
    async fn start(socket: &Path) -> Self {
        let mut child = Command::new(python())
            .arg(STANDIN)
            .arg(socket)
            .arg(PROTO)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .expect("the daprd stand-in starts");
        let stdin = child.stdin.take().expect("stdin");
        let answers = BufReader::new(child.stdout.take().expect("stdout")).lines();
        let mut daprd = Self {
            _child: child,
            stdin,
            answers,
        };
        assert_eq!(daprd.answer().await, json!({"ready": true}));
        daprd
    }

    async fn answer(&mut self) -> Value {
        let line = tokio::time::timeout(WAIT * 2, self.answers.next_line())
            .await
            .expect("the stand-in answers")
            .expect("reading the stand-in")
            .expect("the stand-in is running");
        serde_json::from_str(&line).expect("one JSON object per line")
    }

    async fn call(&mut self, command: Value) -> Value {
        let mut line = command.to_string();
        line.push('\n');
        self.stdin
            .write_all(line.as_bytes())
            .await
            .expect("writing to the stand-in");
        self.answer().await
    }

    async fn init(&mut self, side: &str, instance: &str, metadata: &[(&str, &str)]) -> Value {
        let metadata: serde_json::Map<String, Value> = metadata
            .iter()
            .map(|(k, v)| (k.to_string(), json!(v)))
            .collect();
        self.call(json!({"cmd": "init", "side": side, "instance": instance, "metadata": metadata}))
            .await
    }

    /// Init on both services, as daprd does for a component without `direction`.
    async fn init_both(&mut self, instance: &str, metadata: &[(&str, &str)]) {
        for side in ["input", "output"] {
            assert_eq!(
                self.init(side, instance, metadata).await,
                json!({"ok": true}),
                "{side} Init of {instance}"
            );
        }
    }

    async fn invoke(&mut self, instance: &str, data: &str) -> Value {
        self.call(json!({"cmd": "invoke", "instance": instance, "data": data}))
            .await
    }

    async fn open_read(&mut self, instance: &str, stream: &str) {
        let answer = self
            .call(json!({"cmd": "read_open", "instance": instance, "stream": stream}))
            .await;
        assert_eq!(answer, json!({"ok": true}));
    }

    /// The next event on `stream`, failing the test if none comes.
    async fn event(&mut self, stream: &str) -> Value {
        let answer = self
            .call(json!({"cmd": "read_next", "stream": stream, "timeout": WAIT.as_secs()}))
            .await;
        assert!(answer.get("message_id").is_some(), "no event: {answer}");
        answer
    }

    async fn ack(&mut self, stream: &str, event: &Value) {
        let answer = self
            .call(json!({"cmd": "ack", "stream": stream, "message_id": event["message_id"]}))
            .await;
        assert_eq!(answer, json!({"ok": true}));
    }

    async fn fail(&mut self, stream: &str, event: &Value, error: &str) {
        let answer = self
            .call(json!({"cmd": "ack", "stream": stream, "message_id": event["message_id"], "error": error}))
            .await;
        assert_eq!(answer, json!({"ok": true}));
    }
}

/// A persistent session's metadata on `topic`, QoS 1.
fn session(broker: &Mosquitto, topic: &str, client_id: &str) -> Vec<(&'static str, String)> {
    vec![
        ("url", broker.url()),
        ("topic", topic.to_string()),
        ("qos", "1".into()),
        ("consumerID", client_id.to_string()),
        ("cleanSession", "false".into()),
    ]
}

fn pairs<'a>(metadata: &'a [(&'static str, String)]) -> Vec<(&'static str, &'a str)> {
    metadata.iter().map(|(k, v)| (*k, v.as_str())).collect()
}

/// `metadata` with redeliveries quick enough for a test: three, 50 ms apart.
fn retrying(mut metadata: Vec<(&'static str, String)>) -> Vec<(&'static str, String)> {
    metadata.push(("backOffMaxRetries", "3".into()));
    metadata.push(("backOffInterval", "50ms".into()));
    metadata
}

/// The binding serving on a socket in `folder`, daprd's instance "events" initialised with
/// `metadata`, and a `Read` of it open as `stream`.
async fn reading(
    folder: &std::path::Path,
    metadata: &[(&'static str, String)],
    stream: &str,
) -> (Pluggable, Daprd) {
    let pluggable = Pluggable::start(folder, &[]).await;
    let mut daprd = Daprd::start(&pluggable.socket).await;
    daprd.init_both("events", &pairs(metadata)).await;
    daprd.open_read("events", stream).await;
    (pluggable, daprd)
}

/// Discovery as daprd does it, then two component instances on one socket, each with both
/// services: invokes reach the broker on each one's topic, and events read from each come
/// with their topic and are acknowledged in the other order than they were sent.
#[tokio::test]
async fn daprd_discovers_the_socket_and_two_instances_run_side_by_side() {
    let broker = Mosquitto::start();
    let folder = tempfile::tempdir().expect("temp dir");
    let pluggable = Pluggable::start(folder.path(), &[]).await;
    let mut daprd = Daprd::start(&pluggable.socket).await;

    let discovered = daprd.call(json!({"cmd": "discover"})).await;
    assert_eq!(
        discovered,
        json!({
            "services": [
                "dapr.proto.components.v1.InputBinding",
                "dapr.proto.components.v1.OutputBinding",
                "grpc.reflection.v1alpha.ServerReflection",
            ],
            "component_types": ["bindings.mqtt-test"],
        })
    );

    let (orders, alerts) = (
        format!("orders/{}", unique()),
        format!("alerts/{}", unique()),
    );
    let mut subscriber = Subscriber::start(broker.port, &format!("{orders}/out")).await;
    let mut alert_subscriber = Subscriber::start(broker.port, &format!("{alerts}/out")).await;
    for (instance, topic) in [("orders", &orders), ("alerts", &alerts)] {
        let metadata = [
            ("url", broker.url()),
            ("topic", format!("{topic}/in")),
            ("consumerID", format!("{instance}-{}", unique())),
        ];
        daprd.init_both(instance, &pairs(&metadata)).await;
        assert_eq!(
            daprd
                .call(json!({"cmd": "list_operations", "instance": instance}))
                .await,
            json!({"operations": ["create"]})
        );
        for side in ["input", "output"] {
            assert_eq!(
                daprd
                    .call(json!({"cmd": "ping", "side": side, "instance": instance}))
                    .await,
                json!({"ok": true})
            );
        }
    }
    for (instance, topic) in [("orders", &orders), ("alerts", &alerts)] {
        let answer = daprd
            .call(json!({
                "cmd": "invoke", "instance": instance, "data": format!("from {instance}"),
                "metadata": {"topic": format!("{topic}/out")},
            }))
            .await;
        assert_eq!(answer, json!({"data": "", "metadata": {}}));
    }
    assert_eq!(&subscriber.next().await.payload[..], b"from orders");
    assert_eq!(&alert_subscriber.next().await.payload[..], b"from alerts");

    daprd.open_read("orders", "orders").await;
    daprd.open_read("alerts", "alerts").await;
    broker.wait_for_log(&format!("{orders}/in")).await;
    broker.wait_for_log(&format!("{alerts}/in")).await;
    for (topic, n) in [(&orders, 0), (&alerts, 0), (&orders, 1), (&alerts, 1)] {
        publish_all(
            broker.port,
            &format!("{topic}/in"),
            QoS::AtLeastOnce,
            &[format!("{topic} {n}").into_bytes()],
        )
        .await;
    }
    let order = daprd.event("orders").await;
    let alert = daprd.event("alerts").await;
    assert_eq!(order["data"], json!(format!("{orders} 0")));
    assert_eq!(order["metadata"]["topic"], json!(format!("{orders}/in")));
    assert_eq!(alert["data"], json!(format!("{alerts} 0")));
    assert_ne!(order["message_id"], alert["message_id"]);
    // An answer naming no event of the stream is ignored.
    let stray = daprd
        .call(json!({"cmd": "ack", "stream": "orders", "message_id": "not-an-event"}))
        .await;
    assert_eq!(stray, json!({"ok": true}));
    daprd.ack("alerts", &alert).await;
    daprd.ack("orders", &order).await;
    assert_eq!(
        daprd.event("alerts").await["data"],
        json!(format!("{alerts} 1"))
    );
    assert_eq!(
        daprd.event("orders").await["data"],
        json!(format!("{orders} 1"))
    );

    let metrics = reqwest::get(format!("http://127.0.0.1:{}/metrics", pluggable.metrics))
        .await
        .expect("the metrics endpoint answers")
        .text()
        .await
        .expect("text");
    for instance in ["orders", "alerts"] {
        let sample = |name, success| {
            crate::metrics::sample(
                &metrics,
                name,
                &[("component", instance), ("success", success)],
            )
        };
        assert_eq!(
            sample("dapr_component_output_binding_count", "true"),
            Some(1.0)
        );
        assert_eq!(
            sample("dapr_component_input_binding_count", "true"),
            Some(1.0)
        );
    }
    assert!(pluggable.terminate().await.success());
}

/// Read keeps the binding's semantics through daprd's answers: an error answer is retried
/// by the component's policy, a stream cancelled with an event in hand gives that event
/// first to the next Read, and an event in hand at shutdown is left to the broker, which
/// gives it to the next run. Nothing daprd accepted comes again.
#[tokio::test]
async fn read_acknowledges_only_what_daprd_accepted() {
    let broker = Mosquitto::start_with(BrokerConfig {
        persistence: true,
        ..BrokerConfig::default()
    });
    let folder = tempfile::tempdir().expect("temp dir");
    let topic = format!("events/{}", unique());
    let metadata = retrying(session(&broker, &topic, &format!("reader-{}", unique())));
    let (pluggable, mut daprd) = reading(folder.path(), &metadata, "first").await;
    broker.wait_for_log(&topic).await;
    let publish = async |payload: &str| {
        publish_all(
            broker.port,
            &topic,
            QoS::AtLeastOnce,
            &[payload.as_bytes().to_vec()],
        )
        .await
    };

    publish("m0").await;
    let first = daprd.event("first").await;
    assert_eq!(first["data"], json!("m0"));
    daprd.fail("first", &first, "the app is not ready").await;
    let retried = daprd.event("first").await;
    assert_eq!(retried["data"], json!("m0"), "an error answer is retried");
    assert_ne!(retried["message_id"], first["message_id"]);
    daprd.ack("first", &retried).await;

    publish("m1").await;
    let in_hand = daprd.event("first").await;
    assert_eq!(in_hand["data"], json!("m1"));
    daprd
        .call(json!({"cmd": "read_cancel", "stream": "first"}))
        .await;
    daprd.open_read("events", "second").await;
    let again = daprd.event("second").await;
    assert_eq!(
        again["data"],
        json!("m1"),
        "the event in hand when the stream ended comes first on the next Read"
    );
    daprd.ack("second", &again).await;

    publish("m2").await;
    assert_eq!(daprd.event("second").await["data"], json!("m2"));
    let status = pluggable.terminate().await;
    assert!(status.success(), "{status}");
    assert!(
        !folder.path().join(format!("{NAME}.sock")).exists(),
        "the socket is removed on exit"
    );

    let (pluggable, mut daprd) = reading(folder.path(), &metadata, "after").await;
    let redelivered = daprd.event("after").await;
    assert_eq!(
        redelivered["data"],
        json!("m2"),
        "the event in hand at shutdown was left to the broker"
    );
    daprd.ack("after", &redelivered).await;
    publish("m3").await;
    assert_eq!(
        daprd.event("after").await["data"],
        json!("m3"),
        "nothing daprd accepted comes again"
    );
    assert!(pluggable.terminate().await.success());
}

/// With `concurrency: 4` several events are in hand on one Read at once and daprd answers
/// them in an order of its own: each answer reaches its own event (the one refused is the one
/// retried), a stream cancelled with several in hand gives each of them to the next Read,
/// and the broker is acknowledged once per message, in the order it sent them. A message
/// settled early waits for the earlier ones and keeps its place in the window meanwhile.
#[tokio::test]
async fn read_with_concurrency_routes_each_answer_to_its_own_event() {
    let broker = Mosquitto::start();
    let folder = tempfile::tempdir().expect("temp dir");
    let topic = format!("events/{}", unique());
    let client = format!("reader-{}", unique());
    let mut metadata = retrying(session(&broker, &topic, &client));
    metadata.push(("concurrency", "4".into()));
    let (pluggable, mut daprd) = reading(folder.path(), &metadata, "first").await;
    broker.wait_for_log(&topic).await;
    let payloads = |range: std::ops::Range<usize>| -> Vec<Vec<u8>> {
        range.map(|n| format!("m{n}").into_bytes()).collect()
    };
    // Events by payload, read until `count` are in hand on `stream`.
    async fn in_hand(
        daprd: &mut Daprd,
        stream: &str,
        count: usize,
    ) -> std::collections::BTreeMap<String, Value> {
        let mut events = std::collections::BTreeMap::new();
        for _ in 0..count {
            let event = daprd.event(stream).await;
            let data = event["data"].as_str().expect("data").to_string();
            assert!(
                events.insert(data, event).is_none(),
                "delivered twice at once"
            );
        }
        events
    }

    publish_all(broker.port, &topic, QoS::AtLeastOnce, &payloads(0..4)).await;
    let events = in_hand(&mut daprd, "first", 4).await;
    assert_eq!(
        events.keys().collect::<Vec<_>>(),
        ["m0", "m1", "m2", "m3"],
        "four in hand at once"
    );
    daprd.ack("first", &events["m3"]).await;
    daprd.fail("first", &events["m1"], "not this one").await;
    daprd.ack("first", &events["m0"]).await;
    daprd.ack("first", &events["m2"]).await;
    let retried = daprd.event("first").await;
    assert_eq!(
        retried["data"],
        json!("m1"),
        "the event daprd refused is the one retried"
    );

    // m2 and m3 are settled but wait for m1's acknowledgement, so the window of four has
    // room for m4 alone: m5 waits until m1 is accepted.
    publish_all(broker.port, &topic, QoS::AtLeastOnce, &payloads(4..6)).await;
    let mut events = in_hand(&mut daprd, "first", 1).await;
    events.insert("m1".into(), retried);
    assert_eq!(events.keys().collect::<Vec<_>>(), ["m1", "m4"]);
    daprd
        .call(json!({"cmd": "read_cancel", "stream": "first"}))
        .await;
    daprd.open_read("events", "second").await;
    let again = in_hand(&mut daprd, "second", 2).await;
    assert_eq!(
        again.keys().collect::<Vec<_>>(),
        ["m1", "m4"],
        "every event in hand when the stream ended comes on the next Read"
    );
    daprd.ack("second", &again["m4"]).await;
    daprd.ack("second", &again["m1"]).await;
    let last = daprd.event("second").await;
    assert_eq!(last["data"], json!("m5"));
    daprd.ack("second", &last).await;

    broker
        .wait_for_log_count(&format!("Received PUBACK from {client}"), 6)
        .await;
    let log = broker.log();
    let sent = logged_ids(&log, "Sending PUBLISH to", &client);
    let acknowledged = logged_ids(&log, "Received PUBACK from", &client);
    assert_eq!(sent.len(), 6, "each message sent to the binding once");
    assert_eq!(acknowledged, sent, "PUBACKs in the order of the PUBLISHes");
    assert!(pluggable.terminate().await.success());
}

/// Bad metadata fails Init with the field named; an unknown operation, or an instance
/// daprd never initialised, fails the call with a status that says so.
#[tokio::test]
async fn bad_metadata_and_bad_requests_are_refused_with_the_reason() {
    let broker = Mosquitto::start();
    let folder = tempfile::tempdir().expect("temp dir");
    let pluggable = Pluggable::start(folder.path(), &[]).await;
    let mut daprd = Daprd::start(&pluggable.socket).await;
    let url = broker.url();

    let refused = daprd
        .init(
            "output",
            "bad",
            &[("url", &url), ("topic", "t"), ("qos", "7")],
        )
        .await;
    assert_eq!(refused["code"], json!("INVALID_ARGUMENT"), "{refused}");
    assert!(
        refused["message"]
            .as_str()
            .is_some_and(|m| m.contains(r#"metadata field "qos": expected 0, 1 or 2"#)),
        "{refused}"
    );

    daprd
        .init_both("good", &[("url", &url), ("topic", "t")])
        .await;
    let unknown = daprd
        .call(json!({"cmd": "invoke", "instance": "good", "data": "x", "operation": "delete"}))
        .await;
    assert_eq!(unknown["code"], json!("INVALID_ARGUMENT"), "{unknown}");
    assert!(
        unknown["message"]
            .as_str()
            .is_some_and(|m| m.contains(r#"operation "delete" is not supported"#)),
        "{unknown}"
    );
    let never = daprd.invoke("never-initialised", "x").await;
    assert_eq!(never["code"], json!("FAILED_PRECONDITION"), "{never}");
    assert!(pluggable.terminate().await.success());
}

/// A stale socket file of a crashed run is replaced; a socket another live process serves
/// is not taken over; the socket goes when the process exits.
#[tokio::test]
async fn the_socket_is_claimed_only_from_a_dead_process() {
    let folder = tempfile::tempdir().expect("temp dir");
    let path = folder.path().join(format!("{NAME}.sock"));
    // What a killed process leaves: the file, with nobody accepting on it.
    drop(std::os::unix::net::UnixListener::bind(&path).expect("bind"));
    assert!(path.exists());

    let pluggable = Pluggable::start(folder.path(), &[]).await;
    let second = crate::cli::run(&[
        "pluggable",
        "--enable-metrics",
        "false",
        "--name",
        NAME,
        "--socket-folder",
        folder.path().to_str().expect("utf-8"),
    ])
    .await;
    let stderr = String::from_utf8_lossy(&second.stderr);
    assert_eq!(second.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("another process is serving") && stderr.contains(NAME),
        "{stderr}"
    );
    assert!(
        tokio::net::UnixStream::connect(&path).await.is_ok(),
        "the first process still serves"
    );
    assert!(pluggable.terminate().await.success());
    assert!(!path.exists(), "the socket is removed on exit");
}

/// A broker that is down does not fail Init: invokes fail as unavailable (not sent) until
/// it comes up, and then succeed.
#[tokio::test]
async fn init_succeeds_while_the_broker_is_down() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("port")
        .port();
    let folder = tempfile::tempdir().expect("temp dir");
    let pluggable = Pluggable::start(folder.path(), &[]).await;
    let mut daprd = Daprd::start(&pluggable.socket).await;
    let url = format!("tcp://127.0.0.1:{port}");
    let topic = format!("late/{}", unique());
    assert_eq!(
        daprd
            .init("output", "late", &[("url", &url), ("topic", &topic)])
            .await,
        json!({"ok": true})
    );
    let refused = daprd.invoke("late", "too early").await;
    assert_eq!(refused["code"], json!("UNAVAILABLE"), "{refused}");

    let broker = Mosquitto::start_with(BrokerConfig {
        port: Some(port),
        ..BrokerConfig::default()
    });
    let mut subscriber = Subscriber::start(broker.port, &topic).await;
    // The instance reconnects with backoff (1 s, then 2 s...): invoke until it is up.
    eventually(WAIT, async || {
        let answer = daprd.invoke("late", "in time").await;
        if answer == json!({"data": "", "metadata": {}}) {
            return Ok(());
        }
        assert_eq!(answer["code"], json!("UNAVAILABLE"), "{answer}");
        Err(format!("never connected: {answer}"))
    })
    .await;
    assert_eq!(&subscriber.next().await.payload[..], b"in time");
    assert!(pluggable.terminate().await.success());
}

/// daprd restarted: an Init for a side that is already initialised replaces the instance,
/// disconnecting the old one first (no takeover at the broker). When daprd's connections
/// are gone the instance is released after the grace period, and a later call starts it
/// again.
#[tokio::test]
async fn a_new_init_replaces_the_instance_and_a_released_one_comes_back() {
    let broker = Mosquitto::start();
    let folder = tempfile::tempdir().expect("temp dir");
    let pluggable = Pluggable::start(folder.path(), &["--release-after", "500ms"]).await;
    let client_id = format!("replaced-{}", unique());
    let topic = format!("replaced/{}", unique());
    let mut subscriber = Subscriber::start(broker.port, &topic).await;
    let metadata = [
        ("url", broker.url()),
        ("topic", topic.clone()),
        ("consumerID", client_id.clone()),
    ];

    let mut daprd = Daprd::start(&pluggable.socket).await;
    daprd.init_both("orders", &pairs(&metadata)).await;
    assert_eq!(daprd.invoke("orders", "one").await["data"], json!(""));
    // daprd again, on new connections: Init replaces.
    let mut restarted = Daprd::start(&pluggable.socket).await;
    restarted.init_both("orders", &pairs(&metadata)).await;
    assert_eq!(restarted.invoke("orders", "two").await["data"], json!(""));
    assert_eq!(&subscriber.next().await.payload[..], b"one");
    assert_eq!(&subscriber.next().await.payload[..], b"two");
    assert_eq!(
        broker.log_count("already connected, closing old connection"),
        0,
        "the old instance disconnected before the new one connected:\n{}",
        broker.log()
    );

    let disconnected = format!("Client {client_id} disconnected");
    assert_eq!(broker.log_count(&disconnected), 1, "the replaced instance");
    drop(daprd);
    drop(restarted);
    broker.wait_for_log_count(&disconnected, 2).await;
    let mut later = Daprd::start(&pluggable.socket).await;
    assert_eq!(later.invoke("orders", "three").await["data"], json!(""));
    assert_eq!(&subscriber.next().await.payload[..], b"three");
    assert!(pluggable.log().contains("releasing the instance"));
    assert!(pluggable.terminate().await.success());
}

/// One instance whose component spins in `read` (the hostile test component, loaded with
/// `--wasm`) is stopped again and again for CPU, while another instance on the same socket
/// is served.
#[tokio::test]
async fn a_misbehaving_instance_does_not_stall_the_others() {
    let broker = Mosquitto::start();
    let folder = tempfile::tempdir().expect("temp dir");
    let pluggable = Pluggable::start(
        folder.path(),
        &[
            "--wasm",
            crate::support::hostile_component(),
            "--cpu-budget",
            "200ms",
        ],
    )
    .await;
    let mut daprd = Daprd::start(&pluggable.socket).await;
    let url = broker.url();
    let topic = format!("calm/{}", unique());
    let mut subscriber = Subscriber::start(broker.port, &topic).await;
    daprd
        .init_both(
            "spinner",
            &[
                ("url", &url),
                ("topic", "spin"),
                ("misbehave", "spin-read"),
                ("consumerID", &unique()),
            ],
        )
        .await;
    daprd
        .init_both(
            "calm",
            &[("url", &url), ("topic", &topic), ("consumerID", &unique())],
        )
        .await;
    daprd.open_read("spinner", "spinner").await;
    // Invokes on the calm instance go on while the spinner spins, is stopped, and spins
    // again after its backoff.
    let deadline = tokio::time::Instant::now() + WAIT;
    let mut n = 0;
    while pluggable.log().matches("without calling the host").count() < 2 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the spinner was never stopped twice:\n{}",
            pluggable.log()
        );
        let answer = daprd.invoke("calm", &format!("calm {n}")).await;
        assert_eq!(answer, json!({"data": "", "metadata": {}}));
        assert_eq!(
            subscriber.next().await.payload,
            format!("calm {n}").into_bytes()
        );
        n += 1;
    }
    assert!(n > 0, "no invoke ran while the spinner spun");
    assert!(pluggable.terminate().await.success());
}

/// MQTT 5 request/response through the socket: daprd's `response_data` for a request event
/// is published to the request's response topic with its correlation data, and the request's
/// properties reach daprd as event metadata (and `contentType` as the event's content type).
#[tokio::test]
async fn daprds_response_data_answers_an_mqtt5_request() {
    let broker = Mosquitto::start();
    let folder = tempfile::tempdir().expect("temp dir");
    let topic = format!("requests/{}", unique());
    let metadata = [
        ("url", broker.url()),
        ("topic", topic.clone()),
        ("qos", "1".to_string()),
        ("protocolVersion", "5".to_string()),
    ];
    let pluggable = Pluggable::start(folder.path(), &[]).await;
    let mut daprd = Daprd::start(&pluggable.socket).await;
    daprd.init_both("requests", &pairs(&metadata)).await;
    daprd.open_read("requests", "requests").await;
    broker.wait_for_log(&topic).await;
    let replies = format!("replies/{}", unique());
    let requester = {
        let (port, topic, replies) = (broker.port.to_string(), topic.clone(), replies.clone());
        tokio::spawn(async move {
            tokio::process::Command::new(crate::support::python())
                .arg(concat!(
                    env!("CARGO_MANIFEST_DIR"),
                    "/../tests/mqtt5/peer.py"
                ))
                .args(["request", "--port", &port, "--topic", &topic])
                .args([
                    "--response-topic",
                    &replies,
                    "--correlation-b64",
                    "Y29yci05",
                ])
                .args(["--payload-b64", "cGluZw=="])
                .output()
                .await
                .expect("the MQTT 5 peer runs")
        })
    };
    let event = daprd.event("requests").await;
    assert_eq!(event["data"], json!("ping"));
    assert_eq!(event["metadata"]["responseTopic"], json!(replies));
    assert_eq!(event["metadata"]["correlationData"], json!("corr-9"));
    let answer = daprd
        .call(json!({"cmd": "ack", "stream": "requests", "message_id": event["message_id"], "response_data": "pong"}))
        .await;
    assert_eq!(answer, json!({"ok": true}));
    let output = tokio::time::timeout(WAIT, requester)
        .await
        .expect("the requester got its answer in time")
        .expect("the requester task");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let response: Value =
        serde_json::from_str(stdout.lines().last().expect("a line")).expect("JSON");
    assert_eq!(response["payload_b64"], json!("cG9uZw=="), "pong");
    assert_eq!(response["correlation_b64"], json!("Y29yci05"), "corr-9");
    assert_eq!(response["topic"], json!(replies));
}
