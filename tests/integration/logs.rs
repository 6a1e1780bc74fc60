//! The sidecar's logs: `--log-as-json` writes one JSON object per line with daprd's keys
//! and each event's fields; and at trace level, in either format, no password or private
//! key of a component ever reaches the log.

use serde_json::Value;

use crate::sidecar::{Sidecar, binding_yaml};
use crate::support::{BrokerConfig, Mosquitto, unique};

const PASSWORD: &str = "S3cret-Passw0rd";

/// Two bindings with secrets in their metadata: a password in the URL, and a client
/// certificate's private key (mutual TLS). Returns the key's PEM body.
fn secret_bindings(broker: &Mosquitto, dir: &std::path::Path) -> String {
    let certs = &broker.certs;
    let url = format!("tcp://user:{PASSWORD}@127.0.0.1:{}", broker.port);
    let tls_url = format!("ssl://user:{PASSWORD}@127.0.0.1:{}", broker.tls_port);
    let files = [
        binding_yaml(
            "withpassword",
            &[("url", &url), ("topic", &format!("logs/{}", unique()))],
            None,
        ),
        binding_yaml(
            "withkey",
            &[
                ("url", &tls_url),
                ("topic", &format!("logs/{}", unique())),
                ("caCert", &certs.ca_pem),
                ("clientCert", &certs.client_cert_pem),
                ("clientKey", &certs.client_key_pem),
            ],
            None,
        ),
    ];
    std::fs::write(dir.join("bindings.yaml"), files.join("---\n")).expect("component file");
    certs
        .client_key_pem
        .lines()
        .filter(|line| !line.starts_with("-----"))
        .collect()
}

/// Runs the sidecar with `args` until both bindings are up and it has exited, and returns
/// its log.
async fn run_logged(args: &[&str]) -> (String, String) {
    let broker = Mosquitto::start_with(BrokerConfig {
        user: Some(("user".into(), PASSWORD.into())),
        ..BrokerConfig::default()
    });
    let dir = tempfile::tempdir().expect("temp dir");
    let key_body = secret_bindings(&broker, dir.path());
    let sidecar = Sidecar::start_with_args(dir.path(), None, &[], args).await;
    sidecar.healthy().await;
    let (status, body) = sidecar
        .post("withkey", r#"{"operation": "create", "data": "logged"}"#)
        .await;
    assert_eq!(status, axum::http::StatusCode::NO_CONTENT, "{body}");
    assert!(sidecar.terminate().await.success());
    let log = std::fs::read_to_string(dir.path().join("sidecar.log")).expect("the log");
    (log, key_body)
}

fn assert_no_secrets(log: &str, key_body: &str) {
    assert!(!log.contains(PASSWORD), "the password reached the log");
    for chunk in key_body.as_bytes().chunks(16) {
        let chunk = std::str::from_utf8(chunk).expect("base64 is ASCII");
        assert!(!log.contains(chunk), "the private key reached the log");
    }
}

#[tokio::test]
async fn json_logs_have_daprd_keys_and_no_secrets_even_at_trace() {
    let (log, key_body) = run_logged(&["--log-level", "trace", "--log-as-json"]).await;
    let lines: Vec<Value> = log
        .lines()
        .map(|line| serde_json::from_str(line).unwrap_or_else(|_| panic!("not JSON: {line}")))
        .collect();
    assert!(lines.len() > 10, "{} lines", lines.len());
    for line in &lines {
        for key in ["time", "level", "type", "msg", "scope", "app_id", "ver"] {
            assert!(line.get(key).is_some(), "no {key:?} in {line}");
        }
        assert_eq!(line["app_id"], "shop");
    }
    let started: Vec<&Value> = lines
        .iter()
        .filter(|line| line["msg"] == "started")
        .collect();
    let mut bindings: Vec<&str> = started
        .iter()
        .filter_map(|line| line["binding"].as_str())
        .collect();
    bindings.sort_unstable();
    assert_eq!(bindings, ["withkey", "withpassword"]);
    assert!(lines.iter().any(|line| line["level"] == "trace"));
    assert_no_secrets(&log, &key_body);
}

#[tokio::test]
async fn plain_logs_have_no_secrets_even_at_trace() {
    let (log, key_body) = run_logged(&["--log-level", "trace"]).await;
    assert!(log.contains("TRACE"), "trace level was on");
    assert_no_secrets(&log, &key_body);
}
