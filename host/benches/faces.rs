//! The `faces` group: the binding as users call it, through a face in its own process, in
//! the same run on the same broker. Against `mqtt-binding run` over HTTP: `mqtt-binding
//! pluggable` through its Unix socket (a tonic client, as daprd would call it: one
//! connection, calls multiplexed), output (`Invoke`) and input (`Read` answered at once,
//! against an HTTP app answering 200 at once); and the sidecar's gRPC API (`InvokeBinding`,
//! one connection, as an SDK keeps).
//!
//! Input rates are timed from the first event to the last, so that neither face's start
//! (process, component, subscription) is in its figure.

use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use mqtt_binding::pluggable::proto::input_binding_client::InputBindingClient;
use mqtt_binding::pluggable::proto::output_binding_client::OutputBindingClient;
use mqtt_binding::pluggable::proto::{
    InputBindingInitRequest, InvokeRequest, MetadataRequest, OutputBindingInitRequest, ReadRequest,
};
use rumqttc::QoS;
use tokio::process::{Child, Command};

use super::{IN_FLIGHT, Row, Settings, preload};
use crate::support::{Mosquitto, free_port, unique};

const BIN: &str = env!("CARGO_BIN_EXE_mqtt-binding");
const INSTANCE: &str = "bench";

pub(crate) async fn rows(settings: &Settings, broker: &Mosquitto) -> Vec<Row> {
    let n = settings.messages;
    let mut output = Row {
        figure: format!(
            "output through the pluggable socket (Invoke), QoS 1, 100 B, {IN_FLIGHT} in flight"
        ),
        unit: "msg/s",
        binding: Vec::new(),
        reference_name: "`mqtt-binding run`, POST /v1.0/bindings".into(),
        reference: Vec::new(),
        higher_is_better: true,
    };
    let mut grpc = Row {
        figure: format!(
            "output through the gRPC API (InvokeBinding), QoS 1, 100 B, {IN_FLIGHT} in flight"
        ),
        unit: "msg/s",
        binding: Vec::new(),
        reference_name: "`mqtt-binding run`, POST /v1.0/bindings".into(),
        reference: Vec::new(),
        higher_is_better: true,
    };
    let mut input = Row {
        figure: "input through the pluggable socket (Read, answered at once), QoS 1, 100 B".into(),
        unit: "msg/s",
        binding: Vec::new(),
        reference_name: "`mqtt-binding run`, app answering 200 at once".into(),
        reference: Vec::new(),
        higher_is_better: true,
    };
    for _ in 0..settings.runs {
        let http = http_output(broker, n).await;
        output.binding.push(socket_output(broker, n).await);
        output.reference.push(http);
        grpc.binding.push(grpc_output(broker, n).await);
        grpc.reference.push(http);
        input.binding.push(socket_input(broker, n).await);
        input
            .reference
            .push(http_input(broker, n, 1, Duration::ZERO).await);
    }
    vec![output, grpc, input]
}

/// A face's process; killed when dropped.
pub(crate) struct Process {
    pub(crate) child: Child,
    /// Its files (component file, socket), removed with it.
    pub(crate) _folder: tempfile::TempDir,
}

impl Process {
    pub(crate) async fn stop(mut self) {
        if let Some(pid) = self.child.id() {
            let _ = Command::new("kill")
                .args(["-TERM", &pid.to_string()])
                .status()
                .await;
        }
        let _ = tokio::time::timeout(Duration::from_secs(10), self.child.wait()).await;
    }
}

fn spawn(args: &[&str]) -> Child {
    Command::new(BIN)
        .args(args)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("mqtt-binding starts")
}

/// Invokes per second with [`IN_FLIGHT`] workers each calling `invoke` in a row, once every
/// worker has made one call (steady state).
pub(crate) async fn steady_rate<F>(
    messages: usize,
    invoke: impl Fn() -> F + Clone + Send + 'static,
) -> f64
where
    F: Future<Output = ()> + Send,
{
    let in_parallel = async |count: usize| {
        let mut workers = tokio::task::JoinSet::new();
        for _ in 0..IN_FLIGHT {
            let invoke = invoke.clone();
            workers.spawn(async move {
                for _ in 0..count {
                    invoke().await;
                }
            });
        }
        while workers.join_next().await.is_some() {}
    };
    in_parallel(1).await;
    let started = Instant::now();
    in_parallel(messages / IN_FLIGHT).await;
    ((messages / IN_FLIGHT) * IN_FLIGHT) as f64 / started.elapsed().as_secs_f64()
}

/// Retries `attempt` every 5 ms until it succeeds, for a process that is starting (fine
/// enough for the `bindings` group, which times how long that takes).
pub(crate) async fn until_ready<T, E: std::fmt::Debug>(
    what: &str,
    mut attempt: impl AsyncFnMut() -> Result<T, E>,
) -> T {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        match attempt().await {
            Ok(value) => return value,
            Err(error) => assert!(Instant::now() < deadline, "{what}: {error:?}"),
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// A persistent session preloaded with QoS 1 messages of 100 B, for an input figure.
pub(crate) struct Session {
    pub(crate) topic: String,
    pub(crate) client_id: String,
    url: String,
}

impl Session {
    pub(crate) async fn preload(broker: &Mosquitto, messages: usize, label: &str) -> Self {
        let client_id = format!("bench-{label}-{}", unique());
        let topic = preload(broker, QoS::AtLeastOnce, messages, &client_id).await;
        Self {
            topic,
            client_id,
            url: broker.url(),
        }
    }

    /// The metadata of a binding that takes the session over.
    pub(crate) fn metadata(&self) -> Vec<(&'static str, String)> {
        vec![
            ("url", self.url.clone()),
            ("topic", self.topic.clone()),
            ("qos", "1".into()),
            ("consumerID", self.client_id.clone()),
            ("cleanSession", "false".into()),
        ]
    }
}

// ---- the pluggable socket ----

pub(crate) async fn pluggable() -> (Process, tonic::transport::Channel) {
    pluggable_on(1).await
}

/// [`pluggable`] with `--threads threads`.
pub(crate) async fn pluggable_on(threads: usize) -> (Process, tonic::transport::Channel) {
    let folder = tempfile::tempdir().expect("dir");
    let threads = threads.to_string();
    let child = spawn(&[
        "--threads",
        &threads,
        "pluggable",
        "--enable-metrics",
        "false",
        "--name",
        "bench",
        "--socket-folder",
        folder.path().to_str().expect("path"),
    ]);
    let socket = folder.path().join("bench.sock");
    let channel = until_ready("the socket", async || connect(&socket).await).await;
    (
        Process {
            child,
            _folder: folder,
        },
        channel,
    )
}

/// One HTTP/2 connection to the socket, as daprd has one per component.
pub(crate) async fn connect(
    socket: &Path,
) -> Result<tonic::transport::Channel, tonic::transport::Error> {
    let socket = PathBuf::from(socket);
    tonic::transport::Endpoint::from_static("http://localhost")
        .connect_with_connector(tower::service_fn(move |_| {
            let socket = socket.clone();
            async move {
                Ok::<_, std::io::Error>(hyper_util::rt::TokioIo::new(
                    tokio::net::UnixStream::connect(socket).await?,
                ))
            }
        }))
        .await
}

pub(crate) fn addressed<T>(message: T) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    request
        .metadata_mut()
        .insert("x-component-instance", INSTANCE.parse().expect("ascii"));
    request
}

pub(crate) fn init_metadata(pairs: &[(&str, String)]) -> Option<MetadataRequest> {
    Some(MetadataRequest {
        properties: pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.clone()))
            .collect(),
    })
}

async fn socket_output(broker: &Mosquitto, messages: usize) -> f64 {
    let (process, channel) = pluggable().await;
    let mut client = OutputBindingClient::new(channel);
    let metadata = init_metadata(&[
        ("url", broker.url()),
        ("topic", format!("bench/faces/{}", unique())),
        ("qos", "1".into()),
    ]);
    client
        .init(addressed(OutputBindingInitRequest { metadata }))
        .await
        .expect("Init");
    let rate = steady_rate(messages, move || {
        let mut client = client.clone();
        async move {
            let request = InvokeRequest {
                data: vec![b'x'; 100],
                metadata: Default::default(),
                operation: "create".into(),
            };
            client.invoke(addressed(request)).await.expect("Invoke");
        }
    })
    .await;
    process.stop().await;
    rate
}

async fn socket_input(broker: &Mosquitto, messages: usize) -> f64 {
    let session = Session::preload(broker, messages, "faces").await;
    let (process, channel) = pluggable().await;
    let rate = read_rate(channel, &session.metadata(), messages).await;
    process.stop().await;
    rate
}

/// As daprd reads a pluggable input binding: `Init` with `metadata`, then one `Read`
/// stream, each event answered at once. Events per second from the first to the last of
/// `messages`.
pub(crate) async fn read_rate(
    channel: tonic::transport::Channel,
    metadata: &[(&str, String)],
    messages: usize,
) -> f64 {
    let mut client = InputBindingClient::new(channel);
    client
        .init(addressed(InputBindingInitRequest {
            metadata: init_metadata(metadata),
        }))
        .await
        .expect("Init");
    let (answers, outgoing) = tokio::sync::mpsc::unbounded_channel();
    let mut events = client
        .read(addressed(
            tokio_stream::wrappers::UnboundedReceiverStream::new(outgoing),
        ))
        .await
        .expect("Read")
        .into_inner();
    let mut first = None;
    for _ in 0..messages {
        let event = events
            .message()
            .await
            .expect("the stream stays up")
            .expect("an event");
        first.get_or_insert_with(Instant::now);
        answers
            .send(ReadRequest {
                response_data: Vec::new(),
                message_id: event.message_id,
                response_error: None,
            })
            .expect("answering");
    }
    let elapsed = first.expect("events came").elapsed();
    (messages - 1) as f64 / elapsed.as_secs_f64()
}

// ---- the HTTP sidecar ----

/// `mqtt-binding run` with one binding `bench` of `metadata`, healthy; its HTTP and gRPC
/// ports.
pub(crate) async fn sidecar(
    metadata: &[(&str, String)],
    app_port: Option<u16>,
) -> (Process, u16, u16) {
    sidecar_on(metadata, app_port, 1).await
}

/// [`sidecar`] with `--threads threads`.
pub(crate) async fn sidecar_on(
    metadata: &[(&str, String)],
    app_port: Option<u16>,
    threads: usize,
) -> (Process, u16, u16) {
    sidecar_with(metadata, app_port, threads, &[]).await
}

/// [`sidecar_on`] with more arguments for `run` (`--app-protocol grpc`, say).
pub(crate) async fn sidecar_with(
    metadata: &[(&str, String)],
    app_port: Option<u16>,
    threads: usize,
    extra: &[&str],
) -> (Process, u16, u16) {
    let threads_text = threads.to_string();
    let folder = tempfile::tempdir().expect("dir");
    let mut yaml = String::from(
        "kind: Component\nmetadata: {name: bench}\nspec:\n  type: bindings.mqtt\n  version: v1\n  metadata:\n",
    );
    for (name, value) in metadata {
        yaml.push_str(&format!("  - {{name: {name}, value: \"{value}\"}}\n"));
    }
    std::fs::write(folder.path().join("bench.yaml"), yaml).expect("component file");
    let port = free_port();
    let port_text = port.to_string();
    let grpc_port = free_port();
    let grpc_text = grpc_port.to_string();
    let app_text = app_port.map(|p| p.to_string());
    let mut args = vec![
        "run",
        "--resources-path",
        folder.path().to_str().expect("path"),
        "--app-id",
        "bench",
        "--dapr-http-port",
        &port_text,
        "--dapr-grpc-port",
        &grpc_text,
        "--enable-metrics",
        "false",
        "--threads",
        &threads_text,
    ];
    if let Some(app) = &app_text {
        args.extend(["--app-port", app]);
    }
    args.extend(extra);
    let child = spawn(&args);
    let client = reqwest::Client::new();
    let health = format!("http://127.0.0.1:{port}/v1.0/healthz");
    until_ready("the sidecar's health", async || {
        match client.get(&health).send().await {
            Ok(answer) if answer.status() == reqwest::StatusCode::NO_CONTENT => Ok(()),
            Ok(answer) => Err(format!("{}", answer.status())),
            Err(error) => Err(error.to_string()),
        }
    })
    .await;
    (
        Process {
            child,
            _folder: folder,
        },
        port,
        grpc_port,
    )
}

async fn http_output(broker: &Mosquitto, messages: usize) -> f64 {
    let (process, port, _) = sidecar(&output_metadata(broker), None).await;
    let client = reqwest::Client::new();
    let url = format!("http://127.0.0.1:{port}/v1.0/bindings/bench");
    let body = format!(r#"{{"data": "{}", "operation": "create"}}"#, "x".repeat(98));
    let rate = steady_rate(messages, move || {
        let request = client.post(&url).body(body.clone());
        async move {
            let answer = request.send().await.expect("invoke answered");
            assert_eq!(answer.status(), reqwest::StatusCode::NO_CONTENT);
        }
    })
    .await;
    process.stop().await;
    rate
}

pub(crate) fn output_metadata(broker: &Mosquitto) -> Vec<(&'static str, String)> {
    vec![
        ("url", broker.url()),
        ("topic", format!("bench/faces/{}", unique())),
        ("qos", "1".into()),
    ]
}

async fn grpc_output(broker: &Mosquitto, messages: usize) -> f64 {
    use mqtt_binding::sidecar::proto::InvokeBindingRequest;
    use mqtt_binding::sidecar::proto::dapr_client::DaprClient;

    let (process, _, grpc_port) = sidecar(&output_metadata(broker), None).await;
    let channel = tonic::transport::Endpoint::from_shared(format!("http://127.0.0.1:{grpc_port}"))
        .expect("address")
        .connect()
        .await
        .expect("the gRPC API accepts");
    let client = DaprClient::new(channel);
    let rate = steady_rate(messages, move || {
        let mut client = client.clone();
        async move {
            let request = InvokeBindingRequest {
                name: "bench".into(),
                data: vec![b'x'; 100],
                metadata: Default::default(),
                operation: "create".into(),
            };
            client.invoke_binding(request).await.expect("InvokeBinding");
        }
    })
    .await;
    process.stop().await;
    rate
}

/// The times an app got each event, until it has the `usize` it waits for.
#[derive(Clone, Default)]
pub(crate) struct Arrivals(Arc<Mutex<Vec<Instant>>>, Arc<tokio::sync::Notify>, usize);

impl Arrivals {
    pub(crate) fn expecting(messages: usize) -> Self {
        Self(Arc::default(), Arc::default(), messages)
    }

    /// Records one event, now.
    pub(crate) fn record(&self) {
        let mut times = self.0.lock().expect("lock");
        times.push(Instant::now());
        if times.len() == self.2 {
            self.1.notify_one();
        }
    }

    /// Waits for every event; events per second from the first to the last.
    pub(crate) async fn rate(&self) -> f64 {
        tokio::time::timeout(Duration::from_secs(300), self.1.notified())
            .await
            .expect("every event reached the app");
        let times = self.0.lock().expect("lock").clone();
        (times.len() - 1) as f64
            / times[times.len() - 1]
                .duration_since(times[0])
                .as_secs_f64()
    }
}

/// Input to an HTTP app through `mqtt-binding run` with metadata `concurrency`, the app
/// taking `app_time` per event: the app's `concurrency` ingest rate, QoS 1, 100 B, with the
/// metric `concurrency: 1` beside it in the same run. The issue's target is 10× with 16 and
/// an app that takes 1 ms.
pub(crate) async fn concurrency_rows(settings: &Settings, broker: &Mosquitto) -> Vec<Row> {
    // An app taking 1 ms tops out near 1,000 events a second one at a time: fewer messages
    // than the other groups keep the runs short.
    let n = (settings.messages / 15).max(100);
    let app_time = Duration::from_millis(1);
    let mut row = Row {
        figure: "input to an HTTP app taking 1 ms per event, `concurrency: 16`, QoS 1, 100 B"
            .into(),
        unit: "msg/s",
        binding: Vec::new(),
        reference_name: "`concurrency: 1`".into(),
        reference: Vec::new(),
        higher_is_better: true,
    };
    for _ in 0..settings.runs {
        row.binding.push(http_input(broker, n, 16, app_time).await);
        row.reference.push(http_input(broker, n, 1, app_time).await);
    }
    vec![row]
}

async fn http_input(
    broker: &Mosquitto,
    messages: usize,
    concurrency: u16,
    app_time: Duration,
) -> f64 {
    let session = Session::preload(broker, messages, "faces").await;
    let app = TimedApp::start(messages, app_time).await;
    let mut metadata = session.metadata();
    metadata.push(("concurrency", concurrency.to_string()));
    let (process, _, _) = sidecar(&metadata, Some(app.port)).await;
    let rate = app.rate().await;
    process.stop().await;
    rate
}

/// An HTTP app that answers `POST /bench` with 200 after `app_time`, and times the events
/// from the first to the last of `messages`.
pub(crate) struct TimedApp {
    arrivals: Arrivals,
    pub(crate) port: u16,
    serving: tokio::task::JoinHandle<std::io::Result<()>>,
}

impl TimedApp {
    pub(crate) async fn start(messages: usize, app_time: Duration) -> Self {
        let arrivals = Arrivals::expecting(messages);
        let app = axum::Router::new()
            .route(
                "/bench",
                axum::routing::post(
                    move |axum::extract::State(arrivals): axum::extract::State<Arrivals>| async move {
                        if !app_time.is_zero() {
                            tokio::time::sleep(app_time).await;
                        }
                        arrivals.record();
                        axum::http::StatusCode::OK
                    },
                )
                .options(|| async { axum::http::StatusCode::OK }),
            )
            .with_state(arrivals.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("app port");
        let port = listener.local_addr().expect("address").port();
        let serving = tokio::spawn(async move { axum::serve(listener, app).await });
        Self {
            arrivals,
            port,
            serving,
        }
    }

    /// Waits for every event; events per second from the first to the last.
    pub(crate) async fn rate(self) -> f64 {
        let rate = self.arrivals.rate().await;
        self.serving.abort();
        rate
    }
}
