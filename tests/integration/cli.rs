//! The `mqtt-binding` command, run as a process, read by mosquitto_sub.

use std::path::Path;
use std::process::{Output, Stdio};

use tokio::process::Command;

use crate::support::{Mosquitto, Subscriber, WAIT, unique};

const BIN: &str = env!("CARGO_BIN_EXE_mqtt-binding");

pub(crate) fn component_file(
    dir: &Path,
    name: &str,
    metadata: &[(&str, &str)],
) -> std::path::PathBuf {
    let mut yaml = format!(
        "apiVersion: dapr.io/v1alpha1\nkind: Component\nmetadata:\n  name: {name}\nspec:\n  type: bindings.mqtt\n  version: v1\n  metadata:\n"
    );
    for (field, value) in metadata {
        // JSON strings are valid YAML double-quoted scalars, PEM newlines included.
        yaml.push_str(&format!(
            "  - name: {field}\n    value: {}\n",
            serde_json::Value::from(*value)
        ));
    }
    let path = dir.join(format!("{name}.yaml"));
    std::fs::write(&path, yaml).expect("writing the component file");
    path
}

pub(crate) async fn run(args: &[&str]) -> Output {
    let child = Command::new(BIN)
        .args(args)
        .stdin(Stdio::null())
        .kill_on_drop(true)
        .output();
    tokio::time::timeout(std::time::Duration::from_secs(60), child)
        .await
        .expect("mqtt-binding exits on its own")
        .expect("mqtt-binding runs")
}

/// `mqtt-binding invoke --component FILE --data DATA`.
async fn invoke(file: &Path, data: &str) -> Output {
    let file = file.to_str().expect("utf-8 path");
    run(&["invoke", "--component", file, "--data", data]).await
}

/// mosquitto_sub waiting for one message; returns once the broker has its subscription.
async fn mosquitto_sub(broker: &Mosquitto, extra: &[&str], topic: &str) -> tokio::process::Child {
    let id = format!("mosquitto-sub-{}", unique());
    let child = Command::new("mosquitto_sub")
        .args([
            "-h",
            "127.0.0.1",
            "-i",
            &id,
            "-t",
            topic,
            "-C",
            "1",
            "-q",
            "1",
        ])
        .args(extra)
        .stdout(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("mosquitto_sub runs (apt-get install mosquitto-clients)");
    broker
        .wait_for_log(&format!("Received SUBSCRIBE from {id}"))
        .await;
    child
}

async fn received(child: tokio::process::Child) -> String {
    let output = tokio::time::timeout(WAIT, child.wait_with_output())
        .await
        .expect("mosquitto_sub received a message in time")
        .expect("mosquitto_sub ran");
    String::from_utf8(output.stdout).expect("utf-8")
}

#[tokio::test]
async fn invoke_publishes_over_tcp_to_mosquitto_sub() {
    let broker = Mosquitto::start();
    let topic = format!("cli/{}", unique());
    let file = component_file(
        broker.dir.path(),
        "orders",
        &[("url", &broker.url()), ("topic", &topic), ("qos", "1")],
    );
    let sub = mosquitto_sub(&broker, &["-p", &broker.port.to_string()], &topic).await;
    let output = invoke(&file, "hello from the cli").await;
    assert!(
        output.status.success(),
        "exit {}; stderr: {}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    assert_eq!(output.stdout, b"", "create prints no response");
    assert_eq!(received(sub).await, "hello from the cli\n");
}

/// `{podName}` in `consumerID` is the replica's `POD_NAME`, as Dapr's components take it;
/// without one the binding is refused, naming the field, rather than every replica sharing
/// one client ID.
#[tokio::test]
async fn pod_name_in_the_consumer_id_comes_from_pod_name() {
    let broker = Mosquitto::start();
    let topic = format!("replicas/{}", unique());
    let file = component_file(
        broker.dir.path(),
        "orders",
        &[
            ("url", &broker.url()),
            ("topic", &topic),
            ("consumerID", "orders-{podName}"),
        ],
    );
    let path = file.to_str().expect("utf-8 path");
    let pod = format!("orders-7c9f-{}", unique());
    let invoke = |pod_name: Option<&str>| {
        let mut command = Command::new(BIN);
        command
            .args(["invoke", "--component", path, "--data", "x"])
            .env_remove("POD_NAME")
            .stdin(Stdio::null())
            .kill_on_drop(true);
        if let Some(pod_name) = pod_name {
            command.env("POD_NAME", pod_name);
        }
        async move {
            tokio::time::timeout(WAIT, command.output())
                .await
                .expect("mqtt-binding exits on its own")
                .expect("mqtt-binding runs")
        }
    };
    let published = invoke(Some(&pod)).await;
    assert!(
        published.status.success(),
        "{}",
        String::from_utf8_lossy(&published.stderr)
    );
    // The client ID is the pod's.
    broker
        .wait_for_log(&format!("Received PUBLISH from orders-{pod} "))
        .await;

    let refused = invoke(None).await;
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert_eq!(refused.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains(r#"metadata field "consumerID": uses {podName}, but the pod name is not known: set the POD_NAME environment variable"#),
        "{stderr}"
    );
}

/// `--allow-broker`: a broker outside the list is refused before anything is sent to it,
/// with an error naming the address and the policy; one inside it works.
#[tokio::test]
async fn allow_broker_limits_where_the_component_may_connect() {
    let broker = Mosquitto::start();
    let topic = format!("policy/{}", unique());
    let file = component_file(
        broker.dir.path(),
        "orders",
        &[("url", &broker.url()), ("topic", &topic), ("qos", "1")],
    );
    let path = file.to_str().expect("utf-8 path");
    let connects_before = broker.log_count("New connection from");
    let refused = run(&[
        "invoke",
        "--component",
        path,
        "--data",
        "x",
        "--allow-broker",
        "mqtt.example.com",
        "--allow-broker",
        "*.internal:1883",
    ])
    .await;
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert_eq!(refused.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains(&format!(
            "metadata field \"url\": broker 127.0.0.1:{} is not allowed by this host's policy (--allow-broker: mqtt.example.com, *.internal:1883); nothing was sent to it",
            broker.port
        )),
        "{stderr}"
    );
    assert_eq!(
        broker.log_count("New connection from"),
        connects_before,
        "the refused invoke reached the broker"
    );

    let sub = mosquitto_sub(&broker, &["-p", &broker.port.to_string()], &topic).await;
    let allowed = run(&[
        "invoke",
        "--component",
        path,
        "--data",
        "allowed",
        "--allow-broker",
        &format!("127.0.0.1:{}", broker.port),
    ])
    .await;
    assert!(
        allowed.status.success(),
        "{}",
        String::from_utf8_lossy(&allowed.stderr)
    );
    assert_eq!(received(sub).await, "allowed\n");
}

#[tokio::test]
async fn invoke_publishes_over_mutual_tls_with_request_topic() {
    let broker = Mosquitto::start();
    let certs = &broker.certs;
    let topic = format!("cli-tls/{}", unique());
    let file = component_file(
        broker.dir.path(),
        "secure",
        &[
            ("url", &broker.tls_url()),
            ("topic", "unused"),
            ("caCert", &certs.ca_pem),
            ("clientCert", &certs.client_cert_pem),
            ("clientKey", &certs.client_key_pem),
        ],
    );
    let tls_args = [
        "-p",
        &broker.tls_port.to_string(),
        "--cafile",
        certs.ca_file.to_str().expect("path"),
        "--cert",
        certs.client_cert_file.to_str().expect("path"),
        "--key",
        certs.client_key_file.to_str().expect("path"),
    ];
    let sub = mosquitto_sub(&broker, &tls_args, &topic).await;
    let metadata = format!("topic={topic}");
    let output = run(&[
        "invoke",
        "--component",
        file.to_str().expect("path"),
        "--data",
        "secured",
        "--metadata",
        &metadata,
    ])
    .await;
    assert!(
        output.status.success(),
        "stderr: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert_eq!(received(sub).await, "secured\n");
}

#[tokio::test]
async fn invoke_sends_a_data_file_byte_for_byte() {
    let broker = Mosquitto::start();
    let topic = format!("cli-bytes/{}", unique());
    let mut subscriber = Subscriber::start(broker.port, &topic).await;
    let payload: Vec<u8> = (0..=255u8).cycle().take(100_000).collect();
    let data = broker.dir.path().join("payload.bin");
    std::fs::write(&data, &payload).expect("writing payload");
    let file = component_file(
        broker.dir.path(),
        "bytes",
        &[("url", &broker.url()), ("topic", &topic)],
    );
    let output = run(&[
        "invoke",
        "--component",
        file.to_str().expect("path"),
        "--data-file",
        data.to_str().expect("path"),
    ])
    .await;
    assert!(
        output.status.success(),
        "stderr: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(subscriber.next().await.payload[..] == payload[..]);
}

#[tokio::test]
async fn invoke_reports_an_unreachable_broker_and_exits_nonzero() {
    let dir = tempfile::tempdir().expect("temp dir");
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("port")
        .port();
    let file = component_file(
        dir.path(),
        "down",
        &[
            ("url", &format!("tcp://user:hunter2@127.0.0.1:{port}")),
            ("topic", "t"),
        ],
    );
    let output = invoke(&file, "x").await;
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success());
    assert!(
        stderr.starts_with(r#"mqtt-binding: starting binding "down": broker unreachable: "#),
        "{stderr}"
    );
    assert!(!stderr.contains("hunter2"), "{stderr}");
}

#[tokio::test]
async fn invoke_reports_bad_metadata_naming_the_field() {
    let dir = tempfile::tempdir().expect("temp dir");
    let file = component_file(
        dir.path(),
        "bad",
        &[
            ("url", "tcp://127.0.0.1:1883"),
            ("topic", "t"),
            ("qos", "7"),
        ],
    );
    let output = invoke(&file, "x").await;
    assert!(!output.status.success());
    assert_eq!(
        String::from_utf8_lossy(&output.stderr),
        "mqtt-binding: starting binding \"bad\": metadata field \"qos\": expected 0, 1 or 2, got \"7\"\n"
    );
}

#[tokio::test]
async fn invoke_refuses_a_file_without_an_mqtt_binding() {
    let dir = tempfile::tempdir().expect("temp dir");
    let file = dir.path().join("other.yaml");
    std::fs::write(
        &file,
        "kind: Component\nmetadata: {name: s}\nspec: {type: state.redis, version: v1}\n",
    )
    .expect("write");
    let output = invoke(&file, "x").await;
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("no component of type bindings.mqtt or bindings.mqtt3 found"),
        "{stderr}"
    );
}

#[tokio::test]
async fn demo_runs_with_nothing_installed() {
    let output = run(&["demo"]).await;
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "stdout: {stdout}\nstderr: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(
        stdout
            .contains("done: 3 messages published through the component, received, and read back"),
        "{stdout}"
    );
}

/// `mosquitto_pub` one message (`-m TEXT` or `-f FILE`) at QoS 1.
async fn mosquitto_pub(port: u16, topic: &str, message: &[&str]) {
    let status = Command::new("mosquitto_pub")
        .args([
            "-h",
            "127.0.0.1",
            "-p",
            &port.to_string(),
            "-q",
            "1",
            "-t",
            topic,
        ])
        .args(message)
        .status()
        .await
        .expect("mosquitto_pub runs");
    assert!(status.success(), "mosquitto_pub: {status}");
}

/// Reads one line of the child's stdout, failing the test after [`WAIT`].
async fn line(
    lines: &mut tokio::io::Lines<tokio::io::BufReader<tokio::process::ChildStdout>>,
) -> serde_json::Value {
    let text = tokio::time::timeout(WAIT, lines.next_line())
        .await
        .expect("mqtt-binding read printed a line in time")
        .expect("stdout readable")
        .expect("a line, not the end of output");
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("not JSON ({e}): {text}"))
}

fn spawn_read(file: &Path, app_id: &str, extra: &[&str]) -> tokio::process::Child {
    Command::new(BIN)
        .args([
            "read",
            "--component",
            file.to_str().expect("path"),
            "--app-id",
            app_id,
        ])
        .args(extra)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("mqtt-binding runs")
}

#[tokio::test]
async fn read_prints_json_lines_and_exits_after_count() {
    use tokio::io::AsyncBufReadExt as _;
    let broker = Mosquitto::start();
    let topic = format!("cli-read/{}", unique());
    let app_id = format!("cli-reader-{}", unique());
    let file = component_file(
        broker.dir.path(),
        "inbox",
        &[
            ("url", &broker.url()),
            ("topic", &format!("{topic}/#")),
            ("qos", "1"),
        ],
    );
    let mut child = spawn_read(&file, &app_id, &["--count", "2"]);
    broker
        .wait_for_log(&format!("Received SUBSCRIBE from {app_id}"))
        .await;
    let binary = broker.dir.path().join("binary.bin");
    std::fs::write(&binary, [0xff, 0x00, 0xfe]).expect("write");
    mosquitto_pub(broker.port, &format!("{topic}/a"), &["-m", "héllo"]).await;
    mosquitto_pub(
        broker.port,
        &format!("{topic}/b"),
        &["-f", binary.to_str().expect("path")],
    )
    .await;
    let mut lines = tokio::io::BufReader::new(child.stdout.take().expect("stdout")).lines();
    assert_eq!(
        line(&mut lines).await,
        serde_json::json!({"data": "héllo", "metadata": {"topic": format!("{topic}/a"), "retained": "false", "qos": "1", "duplicate": "false"}})
    );
    assert_eq!(
        line(&mut lines).await,
        serde_json::json!({"data_base64": "/wD+", "metadata": {"topic": format!("{topic}/b"), "retained": "false", "qos": "1", "duplicate": "false"}})
    );
    let status = tokio::time::timeout(WAIT, child.wait())
        .await
        .expect("exits after --count")
        .expect("status");
    assert!(status.success(), "exit {status}");
    assert_eq!(
        lines.next_line().await.expect("stdout"),
        None,
        "nothing after the counted messages"
    );
    broker
        .wait_for_log(&format!("Received DISCONNECT from {app_id}"))
        .await;
    assert_eq!(
        broker.log_count(&format!("Received PUBACK from {app_id}")),
        2
    );
}

#[tokio::test]
async fn read_ends_cleanly_on_sigterm_having_acknowledged_what_it_printed() {
    use tokio::io::AsyncBufReadExt as _;
    let broker = Mosquitto::start();
    let topic = format!("cli-term/{}", unique());
    let app_id = format!("cli-term-{}", unique());
    let file = component_file(
        broker.dir.path(),
        "term",
        &[
            ("url", &broker.url()),
            ("topic", &topic),
            ("qos", "1"),
            ("cleanSession", "false"),
        ],
    );
    let mut child = spawn_read(&file, &app_id, &[]);
    broker
        .wait_for_log(&format!("Received SUBSCRIBE from {app_id}"))
        .await;
    let mut lines = tokio::io::BufReader::new(child.stdout.take().expect("stdout")).lines();
    for text in ["one", "two"] {
        mosquitto_pub(broker.port, &topic, &["-m", text]).await;
        assert_eq!(line(&mut lines).await["data"], text);
    }
    let pid = child.id().expect("running").to_string();
    let killed = Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .await
        .expect("kill runs");
    assert!(killed.success());
    let output = tokio::time::timeout(WAIT, child.wait_with_output())
        .await
        .expect("exits on SIGTERM")
        .expect("output");
    assert!(
        output.status.success(),
        "exit {}; stderr: {}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    broker
        .wait_for_log(&format!("Received DISCONNECT from {app_id}"))
        .await;
    assert_eq!(
        broker.log_count(&format!("Received PUBACK from {app_id}")),
        2,
        "both printed messages acknowledged"
    );
    assert_eq!(
        broker.log_count(&format!("Received UNSUBSCRIBE from {app_id}")),
        0,
        "the session's subscription is kept"
    );
}

#[tokio::test]
async fn read_survives_a_broker_restart() {
    use tokio::io::AsyncBufReadExt as _;
    let mut broker = Mosquitto::start_with(crate::support::BrokerConfig {
        persistence: true,
        ..Default::default()
    });
    let topic = format!("cli-restart/{}", unique());
    let app_id = format!("cli-restart-{}", unique());
    let file = component_file(
        broker.dir.path(),
        "restart",
        &[
            ("url", &broker.url()),
            ("topic", &format!("{topic}/+")),
            ("qos", "1"),
            ("cleanSession", "false"),
        ],
    );
    let mut child = spawn_read(&file, &app_id, &["--count", "2"]);
    let subscribed = format!("Received SUBSCRIBE from {app_id}");
    broker.wait_for_log(&subscribed).await;
    let mut lines = tokio::io::BufReader::new(child.stdout.take().expect("stdout")).lines();
    mosquitto_pub(broker.port, &format!("{topic}/before"), &["-m", "before"]).await;
    assert_eq!(line(&mut lines).await["data"], "before");

    broker.restart();
    // The binding reconnects on its own (backoff from 1 s) and subscribes again.
    broker.wait_for_log_count(&subscribed, 2).await;
    mosquitto_pub(broker.port, &format!("{topic}/after"), &["-m", "after"]).await;
    let after = line(&mut lines).await;
    assert_eq!(
        (after["data"].as_str(), after["metadata"]["topic"].as_str()),
        (Some("after"), Some(format!("{topic}/after").as_str()))
    );
    let status = tokio::time::timeout(WAIT, child.wait())
        .await
        .expect("exits after --count")
        .expect("status");
    assert!(status.success(), "exit {status}");
}

/// `--help` of every command keeps its own options apart from the global ones and the
/// sandbox limits, each group under its heading.
#[tokio::test]
async fn help_puts_global_options_and_sandbox_limits_under_their_headings() {
    for command in ["run", "pluggable", "invoke", "read"] {
        let output = run(&[command, "--help"]).await;
        assert!(output.status.success(), "{command} --help: {output:?}");
        let help = String::from_utf8_lossy(&output.stdout).into_owned();
        // Each heading's section: from the heading to the next blank line.
        let section = |heading: &str| -> String {
            let start = help
                .find(&format!("\n{heading}:\n"))
                .unwrap_or_else(|| panic!("{command} --help has no {heading:?} heading:\n{help}"));
            let rest = &help[start + heading.len() + 3..];
            rest.split("\n\n").next().unwrap_or_default().to_string()
        };
        let own = section("Options");
        let global = section("Global options");
        let sandbox = section("Sandbox, per binding");
        for flag in [
            "--allow-broker",
            "--cpu-budget",
            "--max-memory-mib",
            "--max-handles",
        ] {
            assert!(
                sandbox.contains(flag),
                "{command}: {flag} not under Sandbox:\n{help}"
            );
            assert!(
                !own.contains(flag),
                "{command}: {flag} among the command's own:\n{help}"
            );
        }
        for flag in ["--log-level", "--threads", "--wasm", "--no-cache"] {
            assert!(
                global.contains(flag),
                "{command}: {flag} not under Global:\n{help}"
            );
            assert!(
                !own.contains(flag),
                "{command}: {flag} among the command's own:\n{help}"
            );
        }
    }
}
