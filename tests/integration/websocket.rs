//! MQTT over WebSockets (`ws://`, `wss://`) at both protocol versions. Debian's mosquitto
//! 2.0.11 is built without WebSockets, so the server here is another real broker from a
//! package registry: the `mqttv5` command of crates.io's mqttv5-cli (the broker of the
//! `mqtt5` crate), which serves MQTT 3.1.1 and 5 over TCP, TLS, WebSockets and WebSockets
//! over TLS, at a configurable path. `scripts/test` installs it.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};

use mqtt_binding::{BindingError, BrokerError};

use crate::support::{
    Certificates, Reader, Recorder, WAIT, binding, create, eventually, free_port, meta, unique,
};

/// The `mqttv5` command: `$MQTT_BINDING_MQTTV5`, else where `scripts/test` installs it.
fn mqttv5() -> PathBuf {
    let path = std::env::var_os("MQTT_BINDING_MQTTV5")
        .map(PathBuf::from)
        .or_else(|| {
            std::env::var_os("HOME")
                .map(|home| PathBuf::from(home).join(".cache/mqtt-binding/tools/bin/mqttv5"))
        })
        .expect("HOME or MQTT_BINDING_MQTTV5 is set");
    assert!(
        path.exists(),
        "{} is missing: ./scripts/test installs it (cargo install mqttv5-cli), or set MQTT_BINDING_MQTTV5",
        path.display()
    );
    path
}

/// A running mqttv5 broker with a WebSocket listener and a secure one, both at `/mqtt`.
pub(crate) struct WebSocketBroker {
    child: Child,
    pub(crate) ws_port: u16,
    pub(crate) wss_port: u16,
    pub(crate) certs: Certificates,
    _dir: tempfile::TempDir,
}

impl WebSocketBroker {
    pub(crate) async fn start() -> Self {
        let dir = tempfile::tempdir().expect("dir");
        let certs = Certificates::generate(dir.path());
        let (tcp_port, ws_port, wss_port) = (free_port(), free_port(), free_port());
        let log = std::fs::File::create(dir.path().join("broker.log")).expect("log file");
        let child = Command::new(mqttv5())
            .args(["broker", "--non-interactive", "--allow-anonymous", "true"])
            .args(["--host", &format!("127.0.0.1:{tcp_port}")])
            .args(["--ws-host", &format!("127.0.0.1:{ws_port}")])
            .args(["--ws-tls-host", &format!("127.0.0.1:{wss_port}")])
            .args(["--ws-path", "/mqtt"])
            .arg("--tls-cert")
            .arg(&certs.server_cert_file)
            .arg("--tls-key")
            .arg(&certs.server_key_file)
            .args(["--no-persistence", "--no-sys-topics"])
            .arg("--storage-dir")
            .arg(dir.path().join("storage"))
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log"))
            .stderr(log)
            .spawn()
            .expect("mqttv5 runs");
        let broker = Self {
            child,
            ws_port,
            wss_port,
            certs,
            _dir: dir,
        };
        // Listening is the event: wait for both ports to accept.
        for port in [ws_port, wss_port] {
            eventually(WAIT, async || {
                match tokio::net::TcpStream::connect(("127.0.0.1", port)).await {
                    Ok(_) => Ok(()),
                    Err(error) => Err(format!("mqttv5 did not listen on {port}: {error}")),
                }
            })
            .await;
        }
        broker
    }
}

impl Drop for WebSocketBroker {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn pairs(owned: &[(String, String)]) -> Vec<(&str, &str)> {
    owned
        .iter()
        .map(|(name, value)| (name.as_str(), value.as_str()))
        .collect()
}

/// Publishes through one binding and receives through another, both on `url`.
async fn round_trip(url: &str, version: &str, extra: &[(&str, &str)]) {
    let topic = format!("ws/{}", unique());
    let mut metadata: Vec<(String, String)> = [
        ("url", url),
        ("topic", topic.as_str()),
        ("qos", "1"),
        ("protocolVersion", version),
    ]
    .iter()
    .chain(extra)
    .map(|(name, value)| (name.to_string(), value.to_string()))
    .collect();
    let (recorder, mut accepted) = Recorder::failing(0);
    let reader = Reader::start(&pairs(&metadata), recorder).await;
    metadata.retain(|(name, _)| name != "consumerID");
    let mut output = binding(&pairs(&metadata)).await.expect("output binding");
    let mut request = vec![];
    if version == "5" {
        request.push(("userProperty.via", "websocket"));
    }
    create(&mut output, b"over a websocket", &request)
        .await
        .expect("published");
    let event = accepted.next().await;
    assert_eq!(
        event.data,
        &b"over a websocket"[..],
        "{url} at MQTT {version}"
    );
    assert_eq!(meta(&event, "topic"), topic);
    if version == "5" {
        assert_eq!(meta(&event, "userProperty.via"), "websocket");
    }
    output.close().await;
    reader.stop().await.expect("stopped");
}

#[tokio::test]
async fn ws_carries_both_protocol_versions() {
    let broker = WebSocketBroker::start().await;
    let url = format!("ws://127.0.0.1:{}/mqtt", broker.ws_port);
    round_trip(&url, "3.1.1", &[]).await;
    round_trip(&url, "5", &[]).await;
}

#[tokio::test]
async fn wss_carries_both_protocol_versions_verified_against_the_ca() {
    let broker = WebSocketBroker::start().await;
    let url = format!("wss://localhost:{}/mqtt", broker.wss_port);
    let ca = broker.certs.ca_pem.clone();
    round_trip(&url, "3.1.1", &[("caCert", &ca)]).await;
    round_trip(&url, "5", &[("caCert", &ca)]).await;
}

#[tokio::test]
async fn wss_refuses_a_server_it_cannot_verify() {
    let broker = WebSocketBroker::start().await;
    let url = format!("wss://localhost:{}/mqtt", broker.wss_port);
    match binding(&[("url", &url), ("topic", "t")]).await {
        Err(BindingError::Broker(BrokerError::Tls(text))) => {
            assert!(text.contains("certificate"), "{text}")
        }
        other => panic!("expected a TLS error without the CA, got {other:?}"),
    }
}

#[tokio::test]
async fn the_path_is_part_of_the_url() {
    let broker = WebSocketBroker::start().await;
    let url = format!("ws://127.0.0.1:{}/elsewhere", broker.ws_port);
    match binding(&[("url", &url), ("topic", "t")]).await {
        Err(BindingError::Broker(BrokerError::Unreachable(text))) => assert!(
            text.contains("/elsewhere") && text.contains("HTTP 404"),
            "{text}"
        ),
        other => panic!("expected the upgrade to be refused, got {other:?}"),
    }
}
