//! The portable component (`mqtt-binding portable --out FILE`) run by real WASI runtimes:
//! the wasmtime CLI and jco on Node, against a real mosquitto, checked with independent
//! clients. Each scenario runs in both runtimes.

use std::path::{Path, PathBuf};
use std::process::{Output, Stdio};
use std::sync::OnceLock;
use std::time::Duration;

use rumqttc::QoS;
use tokio::process::{Child, Command};

use crate::cli::component_file;
use crate::support::{
    BrokerConfig, Mosquitto, Subscriber, WAIT, eventually, free_port, publish_all, unique,
};

/// How long one run of the component may take, the runtime's start included (jco
/// translates the component to JavaScript on every run, a few seconds).
const RUN_WAIT: Duration = Duration::from_secs(90);

/// The composed component, written once per test process by the command under test.
fn portable_file() -> &'static Path {
    static FILE: OnceLock<PathBuf> = OnceLock::new();
    FILE.get_or_init(|| {
        let path = Path::new(env!("CARGO_TARGET_TMPDIR")).join("mqtt-binding-portable.wasm");
        let status = std::process::Command::new(env!("CARGO_BIN_EXE_mqtt-binding"))
            .args(["portable", "--out"])
            .arg(&path)
            .status()
            .expect("mqtt-binding portable runs");
        assert!(status.success(), "mqtt-binding portable --out: {status}");
        path
    })
}

/// A WASI runtime that runs the component as a command.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Runtime {
    /// The wasmtime CLI, with network permission (`-S inherit-network`) and the test's
    /// folder as `.`.
    Wasmtime,
    /// jco on Node, with the test's folder as `.` and blocking stdout
    /// (`tests/portable/preopen.mjs`).
    Jco,
}

/// What the runtime grants the component.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Network {
    Granted,
    Denied,
}

fn portable_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/portable")
}

impl Runtime {
    /// The component with `args`, run in `dir` (its files are named relative to it).
    fn command(self, dir: &Path, network: Network, args: &[&str]) -> Command {
        let mut command = match self {
            Runtime::Wasmtime => {
                let wasmtime = std::env::var_os("MQTT_BINDING_WASMTIME")
                    .map(PathBuf::from)
                    .unwrap_or_else(|| PathBuf::from("wasmtime"));
                let mut command = Command::new(wasmtime);
                command.arg("run");
                if network == Network::Granted {
                    command.args(["-S", "inherit-network", "-S", "allow-ip-name-lookup"]);
                }
                command.args(["--dir", "."]);
                command
            }
            Runtime::Jco => {
                let jco = portable_dir().join("node_modules/.bin/jco");
                assert!(
                    jco.exists(),
                    "{} is missing: ./scripts/test installs jco there (cd tests/portable && npm ci)",
                    jco.display()
                );
                let setup = match network {
                    Network::Granted => "preopen.mjs",
                    Network::Denied => "no-network.mjs",
                };
                let mut command = Command::new(jco);
                command
                    .arg("run")
                    .arg("--jco-import")
                    .arg(portable_dir().join(setup));
                command
            }
        };
        // A group of its own: jco runs the component in a second Node process, and a test
        // that kills the run kills both.
        command
            .arg(portable_file())
            .args(args)
            .current_dir(dir)
            .stdin(Stdio::null())
            .process_group(0)
            .kill_on_drop(true);
        command
    }

    /// Runs the component to its end.
    async fn run(self, dir: &Path, args: &[&str]) -> Output {
        self.run_with(dir, Network::Granted, args).await
    }

    async fn run_with(self, dir: &Path, network: Network, args: &[&str]) -> Output {
        let child = self.command(dir, network, args).output();
        tokio::time::timeout(RUN_WAIT, child)
            .await
            .unwrap_or_else(|_| panic!("{self:?} {args:?} did not exit"))
            .unwrap_or_else(|e| panic!("{self:?} runs ({e}); ./scripts/test installs it"))
    }
}

/// Waits until a thread of the run (its process group) sleeps in the kernel writing to a
/// full pipe: a line is being written, and the write has not returned. (A runtime whose
/// writes to stdout only queue, as Node's do unless made blocking, never gets there.)
async fn wait_until_writing_to_a_full_pipe(child: &Child) {
    let group = child.id().expect("running").to_string();
    let in_group = |pid: &Path| {
        std::fs::read_to_string(pid.join("stat")).is_ok_and(|stat| {
            // pid (comm) state ppid pgrp ...; comm may hold spaces and parentheses.
            let after_comm = stat.rsplit_once(')').map_or("", |(_, rest)| rest);
            after_comm.split_whitespace().nth(2) == Some(group.as_str())
        })
    };
    let blocked_on_a_pipe = |pid: &Path| {
        std::fs::read_dir(pid.join("task")).is_ok_and(|tasks| {
            tasks.flatten().any(|task| {
                std::fs::read_to_string(task.path().join("wchan"))
                    .is_ok_and(|wchan| wchan.ends_with("pipe_write"))
            })
        })
    };
    eventually(WAIT, async || {
        let processes = std::fs::read_dir("/proc").expect("/proc");
        if processes
            .flatten()
            .map(|entry| entry.path())
            .any(|pid| in_group(&pid) && blocked_on_a_pipe(&pid))
        {
            return Ok(());
        }
        Err("no thread of the run blocks writing to a full pipe (/proc/*/task/*/wchan)".into())
    })
    .await;
}

/// SIGKILL to the run's whole process group, and its end.
async fn kill_group(child: &mut Child) {
    let group = format!("-{}", child.id().expect("running"));
    let status = Command::new("kill")
        .args(["-KILL", "--", &group])
        .status()
        .await
        .expect("kill runs");
    assert!(status.success(), "kill -KILL -- {group}");
    tokio::time::timeout(WAIT, child.wait())
        .await
        .expect("killed in time")
        .expect("status");
}

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

fn assert_success(runtime: Runtime, output: &Output) {
    assert!(
        output.status.success(),
        "{runtime:?}: exit {}; stderr: {}",
        output.status,
        stderr(output)
    );
}

/// The error line the native command prints is the one line on stderr, and the exit
/// status 1.
fn assert_fails_with(runtime: Runtime, output: &Output, line: &str) {
    assert_eq!(
        output.status.code(),
        Some(1),
        "{runtime:?}: {}",
        stderr(output)
    );
    assert_eq!(
        stderr(output).trim_end(),
        line,
        "{runtime:?}: expected the one line {line:?} on stderr"
    );
}

macro_rules! in_both_runtimes {
    ($($scenario:ident),* $(,)?) => {
        mod wasmtime_cli {
            $(
                #[tokio::test]
                async fn $scenario() {
                    super::$scenario(super::Runtime::Wasmtime).await;
                }
            )*
        }
        mod jco {
            $(
                #[tokio::test]
                async fn $scenario() {
                    super::$scenario(super::Runtime::Jco).await;
                }
            )*
        }
    };
}

in_both_runtimes!(
    invoke_at_each_qos_exits_0_once_the_broker_has_it,
    read_count_acknowledges_what_it_printed_and_leaves_the_rest,
    a_read_killed_with_a_message_in_hand_gets_it_again,
    mutual_tls_with_openssl_certificates_and_an_untrusted_server_refused,
    mqtt5_request_properties_reach_a_paho_subscriber_byte_for_byte,
    websockets_and_secure_websockets_carry_a_publish,
    bad_metadata_gets_the_native_error_text,
    an_unreachable_broker_fails_at_once,
    without_network_permission_the_error_says_so,
);

/// Its only imports are WASI 0.2's: any WASI runtime can run it.
#[test]
fn the_composed_component_imports_only_wasi() {
    let bytes = std::fs::read(portable_file()).expect("the portable component");
    let mut depth = 0usize;
    let mut imports = Vec::new();
    for payload in wasmparser::Parser::new(0).parse_all(&bytes) {
        match payload.expect("a valid component") {
            wasmparser::Payload::Version { .. } => depth += 1,
            wasmparser::Payload::End(_) => depth -= 1,
            wasmparser::Payload::ComponentImportSection(section) if depth == 1 => {
                for import in section {
                    imports.push(import.expect("an import").name.name.to_string());
                }
            }
            _ => {}
        }
    }
    assert!(imports.len() > 5, "{imports:?}");
    let foreign: Vec<&String> = imports
        .iter()
        .filter(|name| !(name.starts_with("wasi:") && name.contains("@0.2.")))
        .collect();
    assert!(
        foreign.is_empty(),
        "imports beyond wasi:*@0.2.x: {foreign:?}"
    );
}

async fn invoke_at_each_qos_exits_0_once_the_broker_has_it(runtime: Runtime) {
    let broker = Mosquitto::start();
    let topic = format!("portable/{}", unique());
    let mut subscriber = Subscriber::start(broker.port, &topic).await;
    for qos in ["0", "1", "2"] {
        let file = component_file(
            broker.dir.path(),
            &format!("qos{qos}"),
            &[("url", &broker.url()), ("topic", &topic), ("qos", qos)],
        );
        let client = format!("portable-{}", unique());
        let data = format!("at qos {qos}");
        let output = runtime
            .run(
                broker.dir.path(),
                &[
                    "invoke",
                    "--component",
                    file.file_name().and_then(|n| n.to_str()).expect("name"),
                    "--data",
                    &data,
                    "--app-id",
                    &client,
                ],
            )
            .await;
        assert_success(runtime, &output);
        assert_eq!(output.stdout, b"", "create prints nothing");
        // Exit 0 came after the acknowledgement: mosquitto logs it as it sends it, so it is
        // in the log by now, without waiting.
        let acknowledged = match qos {
            "1" => Some(format!("Sending PUBACK to {client}")),
            "2" => Some(format!("Sending PUBCOMP to {client}")),
            _ => None,
        };
        if let Some(acknowledged) = acknowledged {
            assert_eq!(broker.log_count(&acknowledged), 1, "{acknowledged:?}");
        }
        let message = subscriber.next().await;
        assert_eq!(&message.payload[..], data.as_bytes());
        assert_eq!(message.topic, topic);
    }
}

/// A persistent session's binding on `topic`, written as `NAME.yaml` in the broker's folder.
fn persistent_reader(broker: &Mosquitto, topic: &str) -> String {
    let name = format!("reader{}", unique().replace('-', ""));
    component_file(
        broker.dir.path(),
        &name,
        &[
            ("url", &broker.url()),
            ("topic", topic),
            ("qos", "1"),
            ("cleanSession", "false"),
        ],
    );
    name
}

/// Leaves the session on the broker: one `read` that subscribes and is told to stop after
/// one message, which the test sends.
async fn subscribe_once(runtime: Runtime, broker: &Mosquitto, name: &str, topic: &str) {
    let file = format!("{name}.yaml");
    let child = runtime
        .command(
            broker.dir.path(),
            Network::Granted,
            &["read", "--component", &file, "--count", "1"],
        )
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("the runtime starts");
    broker
        .wait_for_log(&format!("Received SUBSCRIBE from {name}"))
        .await;
    publish_all(broker.port, topic, QoS::AtLeastOnce, &[b"first".to_vec()]).await;
    let output = tokio::time::timeout(RUN_WAIT, child.wait_with_output())
        .await
        .expect("read --count 1 exits")
        .expect("output");
    assert_success(runtime, &output);
    assert_eq!(lines(&output), [line("first", topic)]);
}

fn lines(output: &Output) -> Vec<String> {
    String::from_utf8_lossy(&output.stdout)
        .lines()
        .map(str::to_string)
        .collect()
}

/// The line the native `read` prints for a QoS 1 message.
fn line(data: &str, topic: &str) -> String {
    format!(
        r#"{{"data":"{data}","metadata":{{"duplicate":"false","qos":"1","retained":"false","topic":"{topic}"}}}}"#
    )
}

async fn read_count_acknowledges_what_it_printed_and_leaves_the_rest(runtime: Runtime) {
    let broker = Mosquitto::start_with(BrokerConfig {
        persistence: true,
        ..Default::default()
    });
    let topic = format!("portable/read/{}", unique());
    let name = persistent_reader(&broker, &topic);
    subscribe_once(runtime, &broker, &name, &topic).await;
    let acks_before = broker.log_count(&format!("Received PUBACK from {name}"));
    // Queued for the session while no reader runs.
    let payloads: Vec<Vec<u8>> = ["a", "b", "c"]
        .iter()
        .map(|p| p.as_bytes().to_vec())
        .collect();
    publish_all(broker.port, &topic, QoS::AtLeastOnce, &payloads).await;
    let file = format!("{name}.yaml");
    let output = runtime
        .run(
            broker.dir.path(),
            &["read", "--component", &file, "--count", "2"],
        )
        .await;
    assert_success(runtime, &output);
    assert_eq!(lines(&output), [line("a", &topic), line("b", &topic)]);
    assert_eq!(
        broker.log_count(&format!("Received PUBACK from {name}")) - acks_before,
        2,
        "the two printed were acknowledged, the third was not"
    );
    // The third stayed with the broker, for the next reader.
    let output = runtime
        .run(
            broker.dir.path(),
            &["read", "--component", &file, "--count", "1"],
        )
        .await;
    assert_success(runtime, &output);
    let lines = lines(&output);
    assert_eq!(lines.len(), 1, "{lines:?}");
    let event: serde_json::Value = serde_json::from_str(&lines[0]).expect("a JSON line");
    // The earlier reader may have been sent it (then the broker marks it as a duplicate).
    assert_eq!(event["data"], "c", "{event}");
    assert_eq!(event["metadata"]["topic"], topic.as_str(), "{event}");
}

/// Killed while its line is stuck in a full pipe, a reader has acknowledged nothing: the
/// line counts as written only once the pipe has taken all of it.
async fn a_read_killed_with_a_message_in_hand_gets_it_again(runtime: Runtime) {
    let broker = Mosquitto::start_with(BrokerConfig {
        persistence: true,
        ..Default::default()
    });
    let topic = format!("portable/kill/{}", unique());
    let name = persistent_reader(&broker, &topic);
    subscribe_once(runtime, &broker, &name, &topic).await;
    let file = format!("{name}.yaml");
    // Nobody reads this reader's stdout, so its first line stays in hand, unacknowledged.
    let mut child = runtime
        .command(
            broker.dir.path(),
            Network::Granted,
            &["read", "--component", &file],
        )
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("the runtime starts");
    let acks_before = broker.log_count(&format!("Received PUBACK from {name}"));
    let big = "x".repeat(1 << 20);
    publish_all(
        broker.port,
        &topic,
        QoS::AtLeastOnce,
        &[big.as_bytes().to_vec()],
    )
    .await;
    broker
        .wait_for_log(&format!("Sending PUBLISH to {name}"))
        .await;
    // The line is being written: stdout's first bytes arrive, and the pipe stays full.
    let mut stdout = tokio::io::BufReader::new(child.stdout.take().expect("stdout"));
    let mut first = [0u8; 9];
    tokio::time::timeout(
        WAIT,
        tokio::io::AsyncReadExt::read_exact(&mut stdout, &mut first),
    )
    .await
    .expect("the reader starts writing its line")
    .expect("stdout");
    assert_eq!(&first, b"{\"data\":\"");
    wait_until_writing_to_a_full_pipe(&child).await;
    kill_group(&mut child).await;
    assert_eq!(
        broker.log_count(&format!("Received PUBACK from {name}")),
        acks_before,
        "nothing was acknowledged"
    );
    // The next reader gets it again; it is stopped once its line is read.
    let mut child = runtime
        .command(
            broker.dir.path(),
            Network::Granted,
            &["read", "--component", &file],
        )
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("the runtime starts");
    let mut stdout = tokio::io::BufReader::new(child.stdout.take().expect("stdout"));
    let mut line = String::new();
    tokio::time::timeout(
        RUN_WAIT,
        tokio::io::AsyncBufReadExt::read_line(&mut stdout, &mut line),
    )
    .await
    .expect("the next reader prints the message")
    .expect("stdout");
    kill_group(&mut child).await;
    let event: serde_json::Value = serde_json::from_str(&line).expect("a JSON line");
    assert_eq!(event["data"], big, "the same message again");
    assert_eq!(
        event["metadata"]["duplicate"], "true",
        "sent again by the broker"
    );
}

async fn mutual_tls_with_openssl_certificates_and_an_untrusted_server_refused(runtime: Runtime) {
    let pki = crate::tls::OpensslPki::make();
    let port = free_port();
    let broker = Mosquitto::start_with(BrokerConfig {
        extra: pki.listener(port),
        ..Default::default()
    });
    let topic = format!("portable/tls/{}", unique());
    let mut subscriber = Subscriber::start(broker.port, &topic).await;
    let (chain, key) = pki.client("portable", crate::tls::ClientKey::RsaPkcs1, false);
    let ca = pki.read("ca.pem");
    let url = format!("ssl://127.0.0.1:{port}");
    let tls = |ca: &str, name: &str| {
        component_file(
            broker.dir.path(),
            name,
            &[
                ("url", &url),
                ("topic", &topic),
                ("qos", "1"),
                ("caCert", ca),
                ("clientCert", &chain),
                ("clientKey", &key),
            ],
        );
        format!("{name}.yaml")
    };
    let trusted = tls(&ca, "trusted");
    let output = runtime
        .run(
            broker.dir.path(),
            &["invoke", "--component", &trusted, "--data", "over mTLS"],
        )
        .await;
    assert_success(runtime, &output);
    assert_eq!(&subscriber.next().await.payload[..], b"over mTLS");
    // The same server, checked against another CA (the host's test PKI's).
    let untrusted = tls(&broker.certs.ca_pem, "untrusted");
    let output = runtime
        .run(
            broker.dir.path(),
            &["invoke", "--component", &untrusted, "--data", "x"],
        )
        .await;
    assert_eq!(
        output.status.code(),
        Some(1),
        "{runtime:?}: {}",
        stderr(&output)
    );
    assert!(
        stderr(&output).contains(
            "mqtt-binding: starting binding \"untrusted\": tls handshake with the broker failed: invalid peer certificate"
        ),
        "{runtime:?}: {}",
        stderr(&output)
    );
}

async fn mqtt5_request_properties_reach_a_paho_subscriber_byte_for_byte(runtime: Runtime) {
    let broker = Mosquitto::start();
    let topic = format!("portable/mqtt5/{}", unique());
    let mut subscriber = crate::mqtt5::PeerSubscriber::start(broker.port, &topic, 1).await;
    component_file(
        broker.dir.path(),
        "requests",
        &[
            ("url", &broker.url()),
            ("topic", &topic),
            ("qos", "1"),
            ("protocolVersion", "5"),
        ],
    );
    let correlation = crate::mqtt5::b64(b"\x00\x01\xfe\xff");
    let output = runtime
        .run(
            broker.dir.path(),
            &[
                "invoke",
                "--component",
                "requests.yaml",
                "--data",
                "a request",
                "--metadata",
                "contentType=application/json",
                "--metadata",
                "responseTopic=replies/42",
                "--metadata",
                &format!("correlationDataBase64={correlation}"),
                "--metadata",
                "userProperty.region=eu-west",
                "--metadata",
                "userProperty.Region=with spaces, and ünïcode",
            ],
        )
        .await;
    assert_success(runtime, &output);
    let message = subscriber.next().await;
    assert_eq!(message["payload_b64"], crate::mqtt5::b64(b"a request"));
    assert_eq!(message["content_type"], "application/json");
    assert_eq!(message["response_topic"], "replies/42");
    assert_eq!(message["correlation_b64"], correlation);
    assert_eq!(
        message["user_properties"],
        serde_json::json!([
            ["region", "eu-west"],
            ["Region", "with spaces, and ünïcode"]
        ])
    );
}

/// `ws://` and `wss://` (verified against the CA, by host name) at MQTT 5, received by a
/// native binding on the same broker.
async fn websockets_and_secure_websockets_carry_a_publish(runtime: Runtime) {
    let broker = crate::websocket::WebSocketBroker::start().await;
    let dir = tempfile::tempdir().expect("temp dir");
    let topic = format!("portable/ws/{}", unique());
    let reader_metadata = [
        ("url", format!("ws://127.0.0.1:{}/mqtt", broker.ws_port)),
        ("topic", topic.clone()),
        ("qos", "1".to_string()),
        ("protocolVersion", "5".to_string()),
    ];
    let pairs: Vec<(&str, &str)> = reader_metadata
        .iter()
        .map(|(k, v)| (*k, v.as_str()))
        .collect();
    let (recorder, mut accepted) = crate::support::Recorder::failing(0);
    let reader = crate::support::Reader::start(&pairs, recorder).await;
    let cases = [
        ("ws", format!("ws://127.0.0.1:{}/mqtt", broker.ws_port)),
        ("wss", format!("wss://localhost:{}/mqtt", broker.wss_port)),
    ];
    for (name, url) in &cases {
        component_file(
            dir.path(),
            name,
            &[
                ("url", url),
                ("topic", &topic),
                ("qos", "1"),
                ("protocolVersion", "5"),
                ("caCert", &broker.certs.ca_pem),
            ],
        );
        let file = format!("{name}.yaml");
        let data = format!("over {name}");
        let output = runtime
            .run(
                dir.path(),
                &[
                    "invoke",
                    "--component",
                    &file,
                    "--data",
                    &data,
                    "--metadata",
                    &format!("userProperty.via={name}"),
                ],
            )
            .await;
        assert_success(runtime, &output);
        let event = accepted.next().await;
        assert_eq!(event.data, data.as_bytes());
        assert_eq!(crate::support::meta(&event, "userProperty.via"), *name);
    }
    reader.stop().await.expect("stopped");
}

async fn bad_metadata_gets_the_native_error_text(runtime: Runtime) {
    let broker = Mosquitto::start();
    let dir = broker.dir.path();
    component_file(
        dir,
        "badqos",
        &[("url", &broker.url()), ("topic", "t"), ("qos", "7")],
    );
    std::fs::write(
        dir.join("secret.yaml"),
        "apiVersion: dapr.io/v1alpha1\nkind: Component\nmetadata:\n  name: secret\nspec:\n  type: bindings.mqtt\n  version: v1\n  metadata:\n  - name: url\n    secretKeyRef:\n      name: mqtt\n      key: url\n",
    )
    .expect("write");
    for args in [
        ["invoke", "--component", "badqos.yaml", "--data", "x"],
        ["invoke", "--component", "secret.yaml", "--data", "x"],
        ["invoke", "--component", "missing.yaml", "--data", "x"],
    ] {
        let native = Command::new(env!("CARGO_BIN_EXE_mqtt-binding"))
            .args(args)
            .current_dir(dir)
            .output()
            .await
            .expect("mqtt-binding runs");
        let native_line = stderr(&native);
        let native_line = native_line.trim_end();
        assert_eq!(native.status.code(), Some(1), "{native_line}");
        assert!(native_line.starts_with("mqtt-binding: "), "{native_line}");
        let output = runtime.run(dir, &args).await;
        // The operating system's error number is WASI's there.
        let line = match native_line.strip_suffix(" (os error 2)") {
            Some(line) => format!("{line} (os error 44)"),
            None => native_line.to_string(),
        };
        assert_fails_with(runtime, &output, &line);
    }
}

async fn an_unreachable_broker_fails_at_once(runtime: Runtime) {
    let dir = tempfile::tempdir().expect("temp dir");
    let port = free_port();
    component_file(
        dir.path(),
        "nobroker",
        &[("url", &format!("tcp://127.0.0.1:{port}")), ("topic", "t")],
    );
    // "unreachable", not "timed out: no CONNACK": refused at once, not after the connect
    // timeout.
    let output = runtime
        .run(
            dir.path(),
            &["invoke", "--component", "nobroker.yaml", "--data", "x"],
        )
        .await;
    assert_eq!(
        output.status.code(),
        Some(1),
        "{runtime:?}: {}",
        stderr(&output)
    );
    assert!(
        stderr(&output).contains(&format!(
            "mqtt-binding: starting binding \"nobroker\": broker unreachable: 127.0.0.1:{port}: "
        )),
        "{runtime:?}: {}",
        stderr(&output)
    );
}

async fn without_network_permission_the_error_says_so(runtime: Runtime) {
    let broker = Mosquitto::start();
    component_file(
        broker.dir.path(),
        "sandboxed",
        &[("url", &broker.url()), ("topic", "t"), ("qos", "1")],
    );
    let output = runtime
        .run_with(
            broker.dir.path(),
            Network::Denied,
            &["invoke", "--component", "sandboxed.yaml", "--data", "x"],
        )
        .await;
    assert_eq!(
        output.status.code(),
        Some(1),
        "{runtime:?}: {}",
        stderr(&output)
    );
    let text = stderr(&output);
    assert!(
        text.contains(&format!(
            "mqtt-binding: starting binding \"sandboxed\": broker unreachable: 127.0.0.1:{}: ",
            broker.port
        )) && text.contains("the WASI runtime gives this component no network"),
        "{runtime:?}: {text}"
    );
    assert_eq!(
        broker.log_count("New connection from"),
        0,
        "nothing reached the broker"
    );
}
