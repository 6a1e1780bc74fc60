//! `mqtt-binding run` as a process: Dapr's HTTP API in, a real HTTP app out, a real broker
//! between, checked by independent MQTT clients.

use std::path::Path;
use std::process::Stdio;
use std::sync::{Arc, Mutex};

use axum::extract::{Path as UrlPath, State};
use axum::http::{HeaderMap, StatusCode};
use rumqttc::QoS;
use tokio::process::{Child, Command};

use crate::support::{Mosquitto, Subscriber, WAIT, eventually, free_port, publish_all, unique};

const BIN: &str = env!("CARGO_BIN_EXE_mqtt-binding");

/// One binding component as YAML; `(name, value)` or `(name, "secret:NAME:KEY")`.
pub(crate) fn binding_yaml(
    name: &str,
    metadata: &[(&str, &str)],
    secret_store: Option<&str>,
) -> String {
    let mut yaml = format!(
        "apiVersion: dapr.io/v1alpha1\nkind: Component\nmetadata:\n  name: {name}\nspec:\n  type: bindings.mqtt\n  version: v1\n  metadata:\n"
    );
    for (field, value) in metadata {
        match value
            .strip_prefix("secret:")
            .and_then(|r| r.split_once(':'))
        {
            Some((secret, key)) => yaml.push_str(&format!(
                "  - name: {field}\n    secretKeyRef:\n      name: {}\n      key: {}\n",
                serde_json::Value::from(secret),
                serde_json::Value::from(key)
            )),
            None => yaml.push_str(&format!(
                "  - name: {field}\n    value: {}\n",
                serde_json::Value::from(*value)
            )),
        }
    }
    if let Some(store) = secret_store {
        yaml.push_str(&format!("auth:\n  secretStore: {store}\n"));
    }
    yaml
}

/// The same component with `spec.ignoreErrors: true`.
fn ignoring_errors(yaml: String) -> String {
    yaml.replace("  version: v1\n", "  version: v1\n  ignoreErrors: true\n")
}

/// The arguments of an `mqtt-binding run` on `dir` with the HTTP API on `http_port`, a free
/// gRPC port and no metrics, for tests that start the process their own way.
fn run_args(dir: &Path, http_port: u16) -> Vec<String> {
    [
        "run",
        "--resources-path",
        dir.to_str().expect("path"),
        "--app-id",
        "shop",
        "--dapr-http-port",
        &http_port.to_string(),
        "--dapr-grpc-port",
        &free_port().to_string(),
        "--enable-metrics",
        "false",
    ]
    .map(String::from)
    .to_vec()
}

/// A running sidecar process; SIGTERM, then kill, on drop.
pub(crate) struct Sidecar {
    child: Option<Child>,
    pub(crate) http: u16,
    pub(crate) grpc: u16,
    pub(crate) metrics: u16,
    pub(crate) client: reqwest::Client,
}

impl Sidecar {
    pub(crate) async fn start(dir: &Path, app_port: Option<u16>, env: &[(&str, &str)]) -> Self {
        Self::start_with_args(dir, app_port, env, &[]).await
    }

    /// Like [`Sidecar::start`], with more arguments for `mqtt-binding run` (global flags
    /// such as `--wasm` too).
    pub(crate) async fn start_with_args(
        dir: &Path,
        app_port: Option<u16>,
        env: &[(&str, &str)],
        args: &[&str],
    ) -> Self {
        let (http, grpc, metrics) = (free_port(), free_port(), free_port());
        let mut command = Command::new(BIN);
        command
            .args([
                "run",
                "--resources-path",
                dir.to_str().expect("path"),
                "--app-id",
                "shop",
            ])
            .args(args)
            .args(["--dapr-http-port", &http.to_string()])
            .args(["--dapr-grpc-port", &grpc.to_string()])
            .args(["--metrics-port", &metrics.to_string()])
            .current_dir(dir)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            // Kept beside the test's files rather than mixed into the test output.
            .stderr(std::fs::File::create(dir.join("sidecar.log")).expect("log file"))
            .kill_on_drop(true);
        if let Some(port) = app_port {
            command.args(["--app-port", &port.to_string()]);
        }
        for (key, value) in env {
            command.env(key, value);
        }
        let child = command.spawn().expect("mqtt-binding run starts");
        let sidecar = Self {
            child: Some(child),
            http,
            grpc,
            metrics,
            client: reqwest::Client::new(),
        };
        serving(&sidecar.client, &sidecar.url("/v1.0/metadata")).await;
        sidecar
    }

    pub(crate) fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.http)
    }

    /// `GET /v1.0/metadata`, as JSON.
    pub(crate) async fn metadata(&self) -> serde_json::Value {
        self.client
            .get(self.url("/v1.0/metadata"))
            .send()
            .await
            .expect("the sidecar answers /v1.0/metadata")
            .json()
            .await
            .expect("metadata as JSON")
    }

    /// Waits until `/v1.0/healthz` answers 204.
    pub(crate) async fn healthy(&self) {
        self.wait_for_no_content("/v1.0/healthz").await;
    }

    /// Waits until `GET path` answers 204, failing the test after [`WAIT`].
    pub(crate) async fn wait_for_no_content(&self, path: &str) {
        eventually(WAIT, async || {
            let response = self
                .client
                .get(self.url(path))
                .send()
                .await
                .expect("the sidecar answers");
            if response.status() == StatusCode::NO_CONTENT {
                return Ok(());
            }
            Err(format!(
                "{path} never answered 204: {}",
                response.text().await.unwrap_or_default()
            ))
        })
        .await;
    }

    pub(crate) async fn post(&self, binding: &str, body: &str) -> (StatusCode, String) {
        let response = self
            .client
            .post(self.url(&format!("/v1.0/bindings/{binding}")))
            .body(body.to_string())
            .send()
            .await
            .expect("answer");
        (response.status(), response.text().await.expect("body"))
    }

    /// SIGTERM, and the exit status (failing the test if it takes longer than WAIT).
    pub(crate) async fn terminate(mut self) -> std::process::ExitStatus {
        crate::support::terminate(self.child.take().expect("running")).await
    }

    /// SIGKILL, as a crash or an OOM kill would stop it, and waits for it to be gone.
    pub(crate) async fn kill(mut self) {
        let mut child = self.child.take().expect("running");
        child.kill().await.expect("SIGKILL");
    }
}

/// One POST the app received: route, headers, body.
pub(crate) type Call = (String, HeaderMap, Vec<u8>);

/// A test app: answers OPTIONS with `probe`, records every POST, fails the first `failures`.
#[derive(Clone)]
pub(crate) struct App {
    calls: Arc<Mutex<Vec<Call>>>,
    failures: Arc<Mutex<usize>>,
    arrived: Arc<tokio::sync::Notify>,
}

impl App {
    pub(crate) async fn serve(
        port: u16,
        probe: StatusCode,
        failures: usize,
    ) -> (Self, tokio::task::JoinHandle<()>) {
        let app = App {
            calls: Arc::default(),
            failures: Arc::new(Mutex::new(failures)),
            arrived: Arc::default(),
        };
        let router = axum::Router::new()
            .route(
                "/{route}",
                axum::routing::options(move || async move { probe }).post(
                    |State(app): State<App>,
                     UrlPath(route): UrlPath<String>,
                     headers: HeaderMap,
                     body: axum::body::Bytes| async move {
                        app.calls
                            .lock()
                            .expect("calls")
                            .push((route, headers, body.to_vec()));
                        app.arrived.notify_waiters();
                        let mut failures = app.failures.lock().expect("failures");
                        if *failures > 0 {
                            *failures -= 1;
                            StatusCode::INTERNAL_SERVER_ERROR
                        } else {
                            StatusCode::OK
                        }
                    },
                ),
            )
            .with_state(app.clone());
        let listener = tokio::net::TcpListener::bind(("127.0.0.1", port))
            .await
            .expect("app port");
        let server = tokio::spawn(async move {
            let _ = axum::serve(listener, router).await;
        });
        (app, server)
    }

    /// Every POST so far.
    pub(crate) fn calls(&self) -> Vec<Call> {
        self.calls.lock().expect("calls").clone()
    }

    pub(crate) async fn wait_for_calls(&self, n: usize) -> Vec<Call> {
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            let arrived = self.arrived.notified();
            let calls = self.calls.lock().expect("calls").clone();
            if calls.len() >= n {
                return calls;
            }
            assert!(
                tokio::time::timeout_at(deadline, arrived).await.is_ok(),
                "the app got {} calls, expected {n}",
                calls.len()
            );
        }
    }
}

#[tokio::test]
async fn output_binding_over_http_publishes_json_text() {
    let broker = Mosquitto::start();
    let topic = format!("http-out/{}", unique());
    let dir = tempfile::tempdir().expect("dir");
    std::fs::write(
        dir.path().join("orders.yaml"),
        binding_yaml(
            "orders",
            &[("url", &broker.url()), ("topic", &topic), ("qos", "1")],
            None,
        ),
    )
    .expect("write");
    let mut subscriber = Subscriber::start(broker.port, &topic).await;
    let sidecar = Sidecar::start(dir.path(), None, &[]).await;
    sidecar.healthy().await;
    for (body, published) in [
        (
            r#"{"data": {"id": 7, "items": ["a"]}, "operation": "create"}"#,
            r#"{"id":7,"items":["a"]}"#,
        ),
        (r#"{"data": "hi", "operation": "create"}"#, r#""hi""#),
        (
            r#"{"data": 42, "metadata": {"retain": "false"}, "operation": "create"}"#,
            "42",
        ),
    ] {
        assert_eq!(
            sidecar.post("orders", body).await,
            (StatusCode::NO_CONTENT, String::new())
        );
        assert_eq!(
            String::from_utf8_lossy(&subscriber.next().await.payload),
            published
        );
    }
    let put = sidecar
        .client
        .put(sidecar.url("/v1.0/bindings/orders"))
        .body(r#"{"data": 1, "operation": "create"}"#)
        .send()
        .await;
    assert_eq!(put.expect("answer").status(), StatusCode::NO_CONTENT);
    assert_eq!(&subscriber.next().await.payload[..], b"1");
    assert!(sidecar.terminate().await.success());
}

#[tokio::test]
async fn input_events_reach_the_app_with_the_topic_header() {
    let broker = Mosquitto::start();
    let base = format!("http-in/{}", unique());
    let dir = tempfile::tempdir().expect("dir");
    std::fs::write(
        dir.path().join("orders.yaml"),
        binding_yaml(
            "orders",
            &[
                ("url", &broker.url()),
                ("topic", &format!("{base}/+")),
                ("qos", "1"),
            ],
            None,
        ),
    )
    .expect("write");
    let app_port = free_port();
    let (app, _server) = App::serve(app_port, StatusCode::OK, 0).await;
    let sidecar = Sidecar::start(dir.path(), Some(app_port), &[]).await;
    broker.wait_for_log("Received SUBSCRIBE from shop").await;
    publish_all(
        broker.port,
        &format!("{base}/eu"),
        QoS::AtLeastOnce,
        &[br#"{"order":1}"#.to_vec()],
    )
    .await;
    let calls = app.wait_for_calls(1).await;
    let (route, headers, body) = &calls[0];
    assert_eq!(
        (route.as_str(), body.as_slice()),
        ("orders", &br#"{"order":1}"#[..])
    );
    assert_eq!(headers["topic"], format!("{base}/eu").as_str());
    assert_eq!(headers["content-type"], "application/json");
    assert!(sidecar.terminate().await.success());
}

/// `--threads 2`: the same sidecar on a multi-thread runtime publishes 64 concurrent
/// invokes, every one reaching the broker, and delivers what it reads in order.
#[tokio::test]
async fn the_sidecar_runs_on_several_threads() {
    let broker = Mosquitto::start();
    let topic = format!("threads/{}", unique());
    let dir = tempfile::tempdir().expect("dir");
    std::fs::write(
        dir.path().join("orders.yaml"),
        binding_yaml(
            "orders",
            &[("url", &broker.url()), ("topic", &topic), ("qos", "1")],
            None,
        ),
    )
    .expect("write");
    let mut subscriber = Subscriber::start(broker.port, &topic).await;
    let app_port = free_port();
    let (app, _server) = App::serve(app_port, StatusCode::OK, 0).await;
    let sidecar =
        Sidecar::start_with_args(dir.path(), Some(app_port), &[], &["--threads", "2"]).await;
    broker.wait_for_log("Received SUBSCRIBE from shop").await;

    let sidecar = Arc::new(sidecar);
    let mut invokes = tokio::task::JoinSet::new();
    for n in 0..64 {
        let sidecar = sidecar.clone();
        invokes.spawn(async move {
            sidecar
                .post(
                    "orders",
                    &format!(r#"{{"operation": "create", "data": {n}}}"#),
                )
                .await
        });
    }
    while let Some(answer) = invokes.join_next().await {
        let (status, body) = answer.expect("invoke task");
        assert_eq!(status, StatusCode::NO_CONTENT, "{body}");
    }
    let mut published: Vec<u32> = Vec::new();
    for _ in 0..64 {
        let payload = subscriber.next().await.payload;
        published.push(
            std::str::from_utf8(&payload)
                .expect("text")
                .parse()
                .expect("n"),
        );
    }
    published.sort_unstable();
    assert_eq!(published, (0..64).collect::<Vec<_>>());
    // The binding reads its own topic: the app gets all 64.
    let calls = app.wait_for_calls(64).await;
    assert_eq!(calls.len(), 64);
    let Ok(sidecar) = Arc::try_unwrap(sidecar) else {
        panic!("no invoke task holds the sidecar any more");
    };
    assert!(sidecar.terminate().await.success());
}

#[tokio::test]
async fn app_failing_twice_gets_the_event_three_times() {
    let broker = Mosquitto::start();
    let topic = format!("http-retry/{}", unique());
    let dir = tempfile::tempdir().expect("dir");
    let metadata = [
        ("url", broker.url()),
        ("topic", topic.clone()),
        ("qos", "1".into()),
        ("backOffMaxRetries", "3".into()),
        ("backOffInterval", "20ms".into()),
        ("route", "/incoming".into()),
    ];
    let metadata: Vec<(&str, &str)> = metadata.iter().map(|(k, v)| (*k, v.as_str())).collect();
    std::fs::write(
        dir.path().join("b.yaml"),
        binding_yaml("orders", &metadata, None),
    )
    .expect("write");
    let app_port = free_port();
    let (app, _server) = App::serve(app_port, StatusCode::METHOD_NOT_ALLOWED, 2).await;
    let sidecar = Sidecar::start(dir.path(), Some(app_port), &[]).await;
    broker.wait_for_log("Received SUBSCRIBE from shop").await;
    publish_all(broker.port, &topic, QoS::AtLeastOnce, &[b"flaky".to_vec()]).await;
    let calls = app.wait_for_calls(3).await;
    assert!(
        calls
            .iter()
            .all(|(route, _, body)| route == "incoming" && body == b"flaky")
    );
    broker.wait_for_log("Received PUBACK from shop").await;
    assert!(sidecar.terminate().await.success());
    assert_eq!(app.calls.lock().expect("calls").len(), 3);
}

#[tokio::test]
async fn an_app_that_is_down_gets_events_once_it_listens_and_output_works_meanwhile() {
    let broker = Mosquitto::start();
    let base = format!("late/{}", unique());
    let dir = tempfile::tempdir().expect("dir");
    std::fs::write(
        dir.path().join("b.yaml"),
        binding_yaml(
            "orders",
            &[
                ("url", &broker.url()),
                ("topic", &format!("{base}/in")),
                ("qos", "1"),
            ],
            None,
        ),
    )
    .expect("write");
    let app_port = free_port();
    let sidecar = Sidecar::start(dir.path(), Some(app_port), &[]).await;
    sidecar.healthy().await;
    let mut out = Subscriber::start(broker.port, &format!("{base}/out")).await;
    let body = format!(
        r#"{{"data": "while the app is down", "metadata": {{"topic": "{base}/out"}}, "operation": "create"}}"#
    );
    assert_eq!(
        sidecar.post("orders", &body).await.0,
        StatusCode::NO_CONTENT
    );
    assert_eq!(&out.next().await.payload[..], br#""while the app is down""#);

    let (app, _server) = App::serve(app_port, StatusCode::OK, 0).await;
    broker.wait_for_log("Received SUBSCRIBE from shop").await;
    publish_all(
        broker.port,
        &format!("{base}/in"),
        QoS::AtLeastOnce,
        &[b"now up".to_vec()],
    )
    .await;
    assert_eq!(app.wait_for_calls(1).await[0].2, b"now up");
    assert!(sidecar.terminate().await.success());
}

#[tokio::test]
async fn secrets_come_from_env_and_file_stores() {
    let broker = Mosquitto::start();
    let topic = format!("secret-topic/{}", unique());
    let dir = tempfile::tempdir().expect("dir");
    std::fs::write(
        dir.path().join("secrets.json"),
        format!(r#"{{"mqtt": {{"url": "{}"}}}}"#, broker.url()),
    )
    .expect("write");
    let stores = "apiVersion: dapr.io/v1alpha1\nkind: Component\nmetadata:\n  name: files\nspec:\n  type: secretstores.local.file\n  version: v1\n  metadata:\n  - name: secretsFile\n    value: secrets.json\n  - name: nestedSeparator\n    value: \".\"\n---\napiVersion: dapr.io/v1alpha1\nkind: Component\nmetadata:\n  name: env\nspec:\n  type: secretstores.local.env\n  version: v1\n";
    std::fs::write(dir.path().join("stores.yaml"), stores).expect("write");
    std::fs::write(
        dir.path().join("a.yaml"),
        binding_yaml(
            "from-file",
            &[
                ("url", "secret:mqtt.url:mqtt.url"),
                ("topic", &topic),
                ("consumerID", "shop-file"),
            ],
            Some("files"),
        ),
    )
    .expect("write");
    std::fs::write(
        dir.path().join("b.yaml"),
        binding_yaml(
            "from-env",
            &[
                ("url", &broker.url()),
                ("topic", "secret:TEST_TOPIC:TEST_TOPIC"),
                ("consumerID", "shop-env"),
            ],
            Some("env"),
        ),
    )
    .expect("write");
    let mut subscriber = Subscriber::start(broker.port, &topic).await;
    let sidecar = Sidecar::start(dir.path(), None, &[("TEST_TOPIC", topic.as_str())]).await;
    sidecar.healthy().await;
    for binding in ["from-file", "from-env"] {
        assert_eq!(
            sidecar
                .post(
                    binding,
                    &format!(r#"{{"data": "{binding}", "operation": "create"}}"#)
                )
                .await
                .0,
            StatusCode::NO_CONTENT
        );
        assert_eq!(
            String::from_utf8_lossy(&subscriber.next().await.payload),
            format!("\"{binding}\"")
        );
    }
    assert!(sidecar.terminate().await.success());
}

#[tokio::test]
async fn a_missing_secret_fails_only_its_component() {
    let broker = Mosquitto::start();
    let topic = format!("partial/{}", unique());
    let dir = tempfile::tempdir().expect("dir");
    std::fs::write(
        dir.path().join("secrets.json"),
        r#"{"present": "tcp://127.0.0.1:1"}"#,
    )
    .expect("write");
    let store = "kind: Component\nmetadata:\n  name: files\nspec:\n  type: secretstores.local.file\n  version: v1\n  metadata:\n  - name: secretsFile\n    value: secrets.json\n";
    std::fs::write(dir.path().join("store.yaml"), store).expect("write");
    std::fs::write(
        dir.path().join("good.yaml"),
        binding_yaml("good", &[("url", &broker.url()), ("topic", &topic)], None),
    )
    .expect("write");
    std::fs::write(
        dir.path().join("bad.yaml"),
        ignoring_errors(binding_yaml(
            "bad",
            &[("url", "secret:absent:absent"), ("topic", "t")],
            Some("files"),
        )),
    )
    .expect("write");
    std::fs::write(
        dir.path().join("nostore.yaml"),
        ignoring_errors(binding_yaml(
            "nostore",
            &[("url", "secret:x:x"), ("topic", "t")],
            Some("vault"),
        )),
    )
    .expect("write");
    std::fs::write(
        dir.path().join("badqos.yaml"),
        ignoring_errors(binding_yaml(
            "badqos",
            &[("url", &broker.url()), ("topic", "t"), ("qos", "7")],
            None,
        )),
    )
    .expect("write");
    let mut subscriber = Subscriber::start(broker.port, &topic).await;
    let sidecar = Sidecar::start(dir.path(), None, &[]).await;

    // As daprd with `spec.ignoreErrors: true`: ready without them, and the metadata
    // names them with their errors.
    sidecar.healthy().await;
    let metadata = sidecar.metadata().await;
    let failed = |name: &str| {
        metadata["extended"][format!("component.{name}")]
            .as_str()
            .unwrap_or_default()
            .to_string()
    };
    assert!(
        failed("bad").contains(r#"secret store "files" has no secret "absent" with key "absent""#),
        "{metadata}"
    );
    assert!(
        failed("nostore").contains(
            r#"secret store "vault" (auth.secretStore) is not a loaded secret store component"#
        ),
        "{metadata}"
    );
    let binding = metadata["extended"]["binding.badqos"]
        .as_str()
        .unwrap_or_default();
    assert!(
        binding.starts_with("failed: ") && binding.contains(r#"metadata field "qos""#),
        "{metadata}"
    );
    let (status, body) = sidecar
        .post("bad", r#"{"data": 1, "operation": "create"}"#)
        .await;
    assert_eq!(status, StatusCode::INTERNAL_SERVER_ERROR);
    assert!(
        body.contains("ERR_INVOKE_OUTPUT_BINDING") && body.contains("did not start"),
        "{body}"
    );

    // The good binding serves once it has connected.
    sidecar.wait_for_no_content("/v1.0/healthz/outbound").await;
    assert_eq!(
        sidecar
            .post("good", r#"{"data": "still here", "operation": "create"}"#)
            .await
            .0,
        StatusCode::NO_CONTENT
    );
    assert_eq!(&subscriber.next().await.payload[..], br#""still here""#);
    assert!(sidecar.terminate().await.success());
}

#[tokio::test]
async fn a_component_that_cannot_start_stops_the_sidecar_unless_it_ignores_errors() {
    let dir = tempfile::tempdir().expect("dir");
    std::fs::write(
        dir.path().join("bad.yaml"),
        binding_yaml(
            "bad",
            &[("url", "tcp://127.0.0.1:1"), ("topic", "t"), ("qos", "7")],
            None,
        ),
    )
    .expect("write");
    let run = Command::new(BIN)
        .args(run_args(dir.path(), free_port()))
        .stdin(Stdio::null())
        .kill_on_drop(true)
        .output();
    let output = tokio::time::timeout(WAIT, run)
        .await
        .expect("the sidecar exits by itself")
        .expect("mqtt-binding run starts");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success(), "{stderr}");
    assert!(
        stderr.contains(
            r#"binding "bad" cannot start: metadata field "qos": expected 0, 1 or 2, got "7""#
        ) && stderr.contains("spec.ignoreErrors: true"),
        "{stderr}"
    );
}

/// Whatever else lies in the folder: a FIFO named like a component (which would block a
/// plain read), a file over the size limit, YAML nested too deep, a document with no kind.
/// Start-up neither blocks nor fails, and `/v1.0/metadata` names each file skipped.
#[tokio::test]
async fn unreadable_files_in_the_resources_folder_are_skipped_and_reported() {
    let broker = Mosquitto::start();
    let topic = format!("folder/{}", unique());
    let dir = tempfile::tempdir().expect("dir");
    std::fs::write(
        dir.path().join("good.yaml"),
        binding_yaml("good", &[("url", &broker.url()), ("topic", &topic)], None),
    )
    .expect("write");
    let fifo = dir.path().join("fifo.yaml");
    let status = std::process::Command::new("mkfifo")
        .arg(&fifo)
        .status()
        .expect("mkfifo runs");
    assert!(status.success());
    std::fs::write(dir.path().join("huge.yaml"), vec![b'#'; 2 * 1024 * 1024]).expect("write");
    std::fs::write(
        dir.path().join("deep.yaml"),
        format!("x: {}", "[".repeat(100_000)),
    )
    .expect("write");
    std::fs::write(dir.path().join("nokind.yaml"), "metadata: {name: x}\n").expect("write");
    let sidecar = Sidecar::start(dir.path(), None, &[]).await;
    sidecar.healthy().await;
    let metadata = sidecar.metadata().await;
    let extended = &metadata["extended"];
    let skipped = |file: &str| {
        extended[format!("file.{file}")]
            .as_str()
            .unwrap_or_default()
            .to_string()
    };
    assert!(
        skipped("fifo.yaml").contains("is not a regular file"),
        "{extended}"
    );
    assert!(
        skipped("huge.yaml").contains("over the limit of 1048576 bytes"),
        "{extended}"
    );
    assert!(
        skipped("deep.yaml").contains("nested more than 64 levels"),
        "{extended}"
    );
    assert!(
        skipped("nokind.yaml").contains("it has no kind"),
        "{extended}"
    );
    assert!(
        extended["binding.good"]
            .as_str()
            .unwrap_or_default()
            .starts_with("connected since "),
        "{extended}"
    );
    assert!(sidecar.terminate().await.success());
}

/// Connections that send nothing, or half a request header, are closed by the sidecar after
/// its header-read timeout (10 s); meanwhile the API keeps answering.
#[tokio::test]
async fn idle_and_half_sent_http_connections_are_closed() {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let dir = tempfile::tempdir().expect("dir");
    let sidecar = Sidecar::start(dir.path(), None, &[]).await;
    let address = format!("127.0.0.1:{}", sidecar.http);
    let mut idle = Vec::new();
    for _ in 0..50 {
        idle.push(
            tokio::net::TcpStream::connect(&address)
                .await
                .expect("connects"),
        );
    }
    let mut half = tokio::net::TcpStream::connect(&address)
        .await
        .expect("connects");
    half.write_all(b"GET /v1.0/healthz HTTP/1.1\r\nHost: x\r\n")
        .await
        .expect("half a header");
    sidecar.healthy().await;
    for mut connection in idle.into_iter().chain([half]) {
        let mut buffer = [0u8; 1024];
        // The server closes (0 bytes) or answers 408 and closes; it never leaves it open.
        let closed = tokio::time::timeout(std::time::Duration::from_secs(30), async {
            loop {
                match connection.read(&mut buffer).await {
                    Ok(0) | Err(_) => return,
                    Ok(_) => {}
                }
            }
        })
        .await;
        assert!(closed.is_ok(), "a connection was still open after 30 s");
    }
    assert!(sidecar.terminate().await.success());
}

/// Started with a soft limit of 256 open descriptors, the sidecar raises it to the hard
/// limit, so that clients holding connections cannot exhaust it.
#[tokio::test]
async fn the_sidecar_raises_its_soft_descriptor_limit() {
    let dir = tempfile::tempdir().expect("dir");
    let port = free_port();
    let mut child = Command::new("sh")
        .args(["-c", r#"ulimit -Sn 256 && exec "$0" "$@""#, BIN])
        .args(run_args(dir.path(), port))
        .stdin(Stdio::null())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("mqtt-binding run starts");
    let client = reqwest::Client::new();
    serving(&client, &format!("http://127.0.0.1:{port}/v1.0/metadata")).await;
    let pid = child.id().expect("running");
    let limits = std::fs::read_to_string(format!("/proc/{pid}/limits")).expect("limits");
    let open_files: Vec<&str> = limits
        .lines()
        .find(|line| line.starts_with("Max open files"))
        .expect("a Max open files line")
        .split_whitespace()
        .collect();
    // "Max open files <soft> <hard> files"
    assert_ne!(open_files[3], "256", "{open_files:?}");
    assert_eq!(open_files[3], open_files[4], "{open_files:?}");
    let _ = child.kill().await;
}

/// With DAPR_API_TOKEN set, every request but the two health checks needs the token in
/// `dapr-api-token` (401 without it or with another, also when `/healthz` hides in the
/// query); with APP_API_TOKEN set, the app gets that token with every event.
#[tokio::test]
async fn api_tokens_guard_the_sidecar_and_reach_the_app() {
    let broker = Mosquitto::start();
    let topic = format!("tokens/{}", unique());
    let dir = tempfile::tempdir().expect("dir");
    std::fs::write(
        dir.path().join("orders.yaml"),
        binding_yaml(
            "orders",
            &[("url", &broker.url()), ("topic", &topic), ("qos", "1")],
            None,
        ),
    )
    .expect("write");
    let app_port = free_port();
    let (app, _server) = App::serve(app_port, StatusCode::OK, 0).await;
    let sidecar = Sidecar::start(
        dir.path(),
        Some(app_port),
        &[
            ("DAPR_API_TOKEN", "sidecar-secret"),
            ("APP_API_TOKEN", "app-secret"),
        ],
    )
    .await;
    // Its input side is subscribed, so its own output comes back to the app.
    broker.wait_for_log("Received SUBSCRIBE from shop").await;
    let get = |path: &str, token: Option<&str>| {
        let mut request = sidecar.client.get(sidecar.url(path));
        if let Some(token) = token {
            request = request.header("dapr-api-token", token);
        }
        async move { request.send().await.expect("answer").status() }
    };
    assert_eq!(get("/v1.0/healthz", None).await, StatusCode::NO_CONTENT);
    assert_eq!(
        get("/v1.0/healthz/outbound", None).await,
        StatusCode::NO_CONTENT
    );
    assert_eq!(get("/v1.0/metadata", None).await, StatusCode::UNAUTHORIZED);
    assert_eq!(
        get("/v1.0/metadata", Some("wrong")).await,
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(
        get("/v1.0/metadata?x=/v1.0/healthz", None).await,
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(
        get("/v1.0/metadata", Some("sidecar-secret")).await,
        StatusCode::OK
    );

    let invoke = |token: Option<&str>| {
        let mut request = sidecar
            .client
            .post(sidecar.url("/v1.0/bindings/orders"))
            .body(r#"{"operation": "create", "data": "with token"}"#);
        if let Some(token) = token {
            request = request.header("dapr-api-token", token);
        }
        async move { request.send().await.expect("answer") }
    };
    let refused = invoke(None).await;
    assert_eq!(refused.status(), StatusCode::UNAUTHORIZED);
    let body = refused.text().await.expect("body");
    assert!(
        body.contains("ERR_UNAUTHORIZED") && !body.contains("sidecar-secret"),
        "{body}"
    );
    assert_eq!(
        invoke(Some("sidecar-secret")).await.status(),
        StatusCode::NO_CONTENT
    );

    // The binding's own output reaches its input, and the app sees the app token.
    let calls = app.wait_for_calls(1).await;
    let (_, headers, body) = &calls[0];
    assert_eq!(body.as_slice(), br#""with token""#);
    assert_eq!(headers["dapr-api-token"], "app-secret");
    assert!(sidecar.terminate().await.success());
}

/// `--dapr-listen-addresses` chooses the interfaces; the API is not on the others.
#[tokio::test]
async fn the_api_listens_only_on_the_addresses_given() {
    let dir = tempfile::tempdir().expect("dir");
    let port = free_port();
    let mut child = Command::new(BIN)
        .args(run_args(dir.path(), port))
        .args(["--dapr-listen-addresses", "127.0.0.2,127.0.0.3"])
        .stdin(Stdio::null())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("mqtt-binding run starts");
    let client = reqwest::Client::new();
    for address in ["127.0.0.2", "127.0.0.3"] {
        serving(&client, &format!("http://{address}:{port}/v1.0/healthz")).await;
    }
    let elsewhere = client
        .get(format!("http://127.0.0.1:{port}/v1.0/healthz"))
        .send()
        .await;
    assert!(elsewhere.is_err(), "served on 127.0.0.1 too: {elsewhere:?}");
    let _ = child.kill().await;
}

#[tokio::test]
async fn dapr_error_codes() {
    let broker = Mosquitto::start();
    let dir = tempfile::tempdir().expect("dir");
    std::fs::write(
        dir.path().join("b.yaml"),
        binding_yaml(
            "sensors",
            &[("url", &broker.url()), ("topic", "sensors/#")],
            None,
        ),
    )
    .expect("write");
    let sidecar = Sidecar::start(dir.path(), None, &[]).await;
    sidecar.healthy().await;
    let cases = [
        (
            "sensors",
            "{not json",
            StatusCode::BAD_REQUEST,
            "ERR_MALFORMED_REQUEST",
        ),
        (
            "sensors",
            r#"{"data": 1}"#,
            StatusCode::BAD_REQUEST,
            "ERR_MALFORMED_REQUEST",
        ),
        (
            "sensors",
            r#"{"data": 1, "metadata": {"qos": 1}, "operation": "create"}"#,
            StatusCode::BAD_REQUEST,
            "ERR_MALFORMED_REQUEST",
        ),
        (
            "unknown",
            r#"{"data": 1, "operation": "create"}"#,
            StatusCode::NOT_FOUND,
            "ERR_INVOKE_OUTPUT_BINDING",
        ),
        // The component's topic is a filter and the request names no topic.
        (
            "sensors",
            r#"{"data": 1, "operation": "create"}"#,
            StatusCode::INTERNAL_SERVER_ERROR,
            "ERR_INVOKE_OUTPUT_BINDING",
        ),
        (
            "sensors",
            r#"{"data": 1, "operation": "delete"}"#,
            StatusCode::INTERNAL_SERVER_ERROR,
            "ERR_INVOKE_OUTPUT_BINDING",
        ),
        // A binding name that is not UTF-8 once percent-decoded.
        (
            "%FF%FE",
            r#"{"data": 1, "operation": "create"}"#,
            StatusCode::BAD_REQUEST,
            "ERR_MALFORMED_REQUEST",
        ),
    ];
    for (binding, body, status, code) in cases {
        let (got, text) = sidecar.post(binding, body).await;
        let json: serde_json::Value = serde_json::from_str(&text)
            .unwrap_or_else(|e| panic!("{body}: not JSON ({e}): {text}"));
        assert_eq!(
            (got, json["errorCode"].as_str()),
            (status, Some(code)),
            "{body}: {text}"
        );
        assert!(!json["message"].as_str().unwrap_or_default().is_empty());
    }
    let metadata = sidecar.metadata().await;
    assert_eq!(metadata["id"], "shop");
    assert_eq!(metadata["components"][0]["name"], "sensors");
    assert_eq!(metadata["components"][0]["type"], "bindings.mqtt");
    assert!(sidecar.terminate().await.success());
}

/// Waits until `url` answers at all (the sidecar serves HTTP).
async fn serving(client: &reqwest::Client, url: &str) {
    eventually(WAIT, async || match client.get(url).send().await {
        Ok(_) => Ok(()),
        Err(error) => Err(format!("nothing served at {url}: {error}")),
    })
    .await;
}
