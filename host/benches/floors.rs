//! The `floors` group: each way users reach the binding against what a careful engineer
//! would write by hand for the same job, with no component and no sidecar logic, in a
//! process of its own as the binding's face is (this benchmark binary, started again with
//! `floor-server`), on the same broker, in the same run:
//!
//! - output over HTTP: an axum server whose handler publishes the request's `data` with
//!   rumqttc at QoS 1 and answers 204 on the PUBACK;
//! - output over gRPC (`InvokeBinding`) and through the pluggable socket (`Invoke`): a tonic
//!   server doing the same;
//! - input to an HTTP app: rumqttc with manual acknowledgements, posting each message to the
//!   app with reqwest, one at a time, acknowledging after the answer; to a gRPC app the same
//!   with tonic's `OnBindingEvent`; through a pluggable socket's `Read`, a hand-written
//!   pluggable component (tonic and rumqttc) answering daprd's stream one event at a time.
//!
//! Output is measured with 64 requests in flight (requests per second) and with one at a
//! time (p50 and p99 latency), each on one thread (the binding's default, a current-thread
//! runtime on both sides) and on two (`--threads 2`, a two-worker runtime for the floor).
//! `-- floors-output` and `-- floors-input` run one half each.
//!
//! rumqttc does not say which PUBACK answers which publish, so the hand-written servers do
//! what such a service does: callers queue in publish order under one lock, and each PUBACK
//! answers the oldest (brokers acknowledge QoS 1 in order, MQTT 3.1.1 section 4.6).

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use mqtt_binding::pluggable::proto::input_binding_server::{InputBinding, InputBindingServer};
use mqtt_binding::pluggable::proto::output_binding_client::OutputBindingClient;
use mqtt_binding::pluggable::proto::output_binding_server::{OutputBinding, OutputBindingServer};
use mqtt_binding::pluggable::proto::{
    InputBindingInitRequest, InputBindingInitResponse, InvokeRequest, InvokeResponse,
    ListOperationsRequest, ListOperationsResponse, OutputBindingInitRequest,
    OutputBindingInitResponse, PingRequest, PingResponse, ReadRequest, ReadResponse,
};
use mqtt_binding::sidecar::proto::app_callback_client::AppCallbackClient;
use mqtt_binding::sidecar::proto::app_callback_server::{AppCallback, AppCallbackServer};
use mqtt_binding::sidecar::proto::dapr_client::DaprClient;
use mqtt_binding::sidecar::proto::dapr_server::{Dapr, DaprServer};
use mqtt_binding::sidecar::proto::{
    BindingEventRequest, BindingEventResponse, GetMetadataRequest, GetMetadataResponse,
    InvokeBindingRequest, InvokeBindingResponse, ListInputBindingsResponse,
};
use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};
use tokio::process::Command;
use tokio::sync::oneshot;

use super::faces::{
    Arrivals, Process, Session, TimedApp, addressed, connect, init_metadata, output_metadata,
    pluggable_on, read_rate, sidecar_on, sidecar_with, steady_rate, until_ready,
};
use super::{IN_FLIGHT, Row, Settings, percentiles};
use crate::support::{Mosquitto, free_port, unique};

/// The output rows (`floors-output`): each face's rate and latencies, on one thread and on
/// two.
pub(crate) async fn output_rows(settings: &Settings, broker: &Mosquitto) -> Vec<Row> {
    let n = settings.messages;
    let samples = settings.latency_samples;
    let mut rows = Vec::new();
    for (face, threads) in [Face::Http, Face::Grpc, Face::Socket]
        .into_iter()
        .flat_map(|face| [(face, 1), (face, 2)])
    {
        let mut rate = Row {
            figure: format!(
                "{}, QoS 1, 100 B, {IN_FLIGHT} in flight, {}",
                face.name(),
                on_threads(threads)
            ),
            unit: "msg/s",
            binding: Vec::new(),
            reference_name: format!("hand-written {}", face.floor()),
            reference: Vec::new(),
            higher_is_better: true,
        };
        let latency = |what: &str| Row {
            figure: format!(
                "{}, QoS 1, one at a time, {what}, {}",
                face.name(),
                on_threads(threads)
            ),
            unit: "µs",
            binding: Vec::new(),
            reference_name: format!("hand-written {}", face.floor()),
            reference: Vec::new(),
            higher_is_better: false,
        };
        let (mut p50, mut p99) = (latency("p50"), latency("p99"));
        for _ in 0..settings.runs {
            for floor in [false, true] {
                let server = Server::start(broker, face, floor, threads).await;
                let measured = server.rate(n).await;
                let (median, tail) = percentiles(server.latencies(samples).await);
                server.stop().await;
                let (rates, p50s, p99s) = if floor {
                    (&mut rate.reference, &mut p50.reference, &mut p99.reference)
                } else {
                    (&mut rate.binding, &mut p50.binding, &mut p99.binding)
                };
                rates.push(measured);
                p50s.push(median);
                p99s.push(tail);
            }
        }
        rows.extend([rate, p50, p99]);
    }
    rows
}

/// The input rows (`floors-input`): the three input paths, on one thread and on two.
pub(crate) async fn input_rows(settings: &Settings, broker: &Mosquitto) -> Vec<Row> {
    let n = settings.messages;
    let mut rows = Vec::new();
    for threads in [1, 2] {
        let row = |figure: &str, floor: &str| Row {
            figure: format!("{figure}, QoS 1, 100 B, {}", on_threads(threads)),
            unit: "msg/s",
            binding: Vec::new(),
            reference_name: format!("hand-written {floor}"),
            reference: Vec::new(),
            higher_is_better: true,
        };
        let mut http = row(
            "input to an HTTP app answering 200 at once (`mqtt-binding run`)",
            "rumqttc + reqwest, manual acks",
        );
        let mut grpc = row(
            "input to a gRPC app answering at once (`mqtt-binding run --app-protocol grpc`, OnBindingEvent)",
            "rumqttc + tonic OnBindingEvent, manual acks",
        );
        let mut read = row(
            "input through the pluggable socket (Read, answered at once)",
            "pluggable component (tonic + rumqttc, manual acks)",
        );
        for _ in 0..settings.runs {
            for floor in [false, true] {
                let measured = [
                    http_app_input(broker, n, floor, threads).await,
                    grpc_app_input(broker, n, floor, threads).await,
                    read_input_rate(broker, n, floor, threads).await,
                ];
                for (row, rate) in [&mut http, &mut grpc, &mut read].into_iter().zip(measured) {
                    if floor {
                        row.reference.push(rate);
                    } else {
                        row.binding.push(rate);
                    }
                }
            }
        }
        rows.extend([http, grpc, read]);
    }
    rows
}

fn on_threads(threads: usize) -> String {
    match threads {
        1 => "1 thread".into(),
        n => format!("{n} threads"),
    }
}

/// One output face (`http`, `grpc`, `socket`), the binding's (`floor` false) or its floor,
/// measured again and again for `seconds`, for a profiler to watch the server's process;
/// prints the server's CPU per request (user and system, all its threads) beside the rate.
pub(crate) async fn profile_face(broker: &Mosquitto, face: &str, floor: bool, seconds: u64) {
    let face = match face {
        "http" => Face::Http,
        "grpc" => Face::Grpc,
        "socket" => Face::Socket,
        other => panic!("the face is http, grpc or socket, not {other:?}"),
    };
    const MESSAGES: usize = 30_000;
    let server = Server::start(broker, face, floor, 1).await;
    let pid = server.process.child.id().expect("the server runs");
    println!("server pid {pid}");
    let until = Instant::now() + Duration::from_secs(seconds);
    while Instant::now() < until {
        let cpu_before = process_cpu(pid);
        let rate = server.rate(MESSAGES).await;
        let cpu = process_cpu(pid) - cpu_before;
        println!(
            "{} {}: {rate:.0} requests/s, server CPU {:.1} µs per request",
            face.arg(),
            if floor { "floor" } else { "binding" },
            cpu.as_secs_f64() * 1e6 / MESSAGES as f64,
        );
    }
    server.stop().await;
}

/// User and system time of process `pid` so far, from `/proc` (clock ticks of 10 ms).
fn process_cpu(pid: u32) -> Duration {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).expect("/proc/PID/stat");
    // Fields after the command name, which is in parentheses and may hold spaces.
    let fields: Vec<&str> = stat[stat.rfind(')').expect("stat") + 2..]
        .split(' ')
        .collect();
    let ticks: u64 =
        fields[11].parse::<u64>().expect("utime") + fields[12].parse::<u64>().expect("stime");
    Duration::from_millis(ticks * 10)
}

#[derive(Debug, Clone, Copy)]
enum Face {
    Http,
    Grpc,
    Socket,
}

impl Face {
    fn name(self) -> &'static str {
        match self {
            Face::Http => "output over HTTP (`mqtt-binding run`, POST /v1.0/bindings)",
            Face::Grpc => "output over gRPC (`mqtt-binding run`, InvokeBinding)",
            Face::Socket => "output through the pluggable socket (Invoke)",
        }
    }

    fn floor(self) -> &'static str {
        match self {
            Face::Http => "axum + rumqttc",
            Face::Grpc => "tonic + rumqttc (InvokeBinding)",
            Face::Socket => "tonic + rumqttc on a Unix socket (Invoke)",
        }
    }

    fn arg(self) -> &'static str {
        match self {
            Face::Http => "http",
            Face::Grpc => "grpc",
            Face::Socket => "socket",
        }
    }
}

/// A running output face (the binding's or a floor) and a client for it.
struct Server {
    process: Process,
    client: Client,
}

#[derive(Clone)]
enum Client {
    Http(reqwest::Client, String),
    Grpc(DaprClient<tonic::transport::Channel>),
    Socket(OutputBindingClient<tonic::transport::Channel>),
}

impl Server {
    async fn start(broker: &Mosquitto, face: Face, floor: bool, threads: usize) -> Self {
        let metadata = output_metadata(broker);
        if floor {
            return Self::floor(broker, face, threads).await;
        }
        match face {
            Face::Http | Face::Grpc => {
                let (process, http, grpc) = sidecar_on(&metadata, None, threads).await;
                let client = match face {
                    Face::Http => Client::Http(
                        reqwest::Client::new(),
                        format!("http://127.0.0.1:{http}/v1.0/bindings/bench"),
                    ),
                    _ => Client::Grpc(DaprClient::new(grpc_channel(grpc).await)),
                };
                Self { process, client }
            }
            Face::Socket => {
                let (process, channel) = pluggable_on(threads).await;
                let mut client = OutputBindingClient::new(channel);
                client
                    .init(addressed(OutputBindingInitRequest {
                        metadata: init_metadata(&metadata),
                    }))
                    .await
                    .expect("Init");
                Self {
                    process,
                    client: Client::Socket(client),
                }
            }
        }
    }

    /// This benchmark binary again, as the hand-written server for `face`.
    async fn floor(broker: &Mosquitto, face: Face, threads: usize) -> Self {
        let folder = tempfile::tempdir().expect("dir");
        let port = free_port();
        let socket = folder.path().join("floor.sock");
        let address = match face {
            Face::Socket => socket.to_str().expect("path").to_string(),
            _ => port.to_string(),
        };
        let child = floor_server(threads, face.arg(), &address)
            .args([
                &broker.port.to_string(),
                &format!("bench/floor/{}", unique()),
            ])
            .spawn()
            .expect("the floor server starts");
        let client = match face {
            Face::Http => {
                let client = reqwest::Client::new();
                let url = format!("http://127.0.0.1:{port}/v1.0/bindings/bench");
                until_ready("the HTTP floor", async || {
                    tokio::net::TcpStream::connect(("127.0.0.1", port)).await
                })
                .await;
                Client::Http(client, url)
            }
            Face::Grpc => {
                let channel = until_ready("the gRPC floor", async || {
                    tonic::transport::Endpoint::from_shared(format!("http://127.0.0.1:{port}"))
                        .expect("address")
                        .connect()
                        .await
                })
                .await;
                Client::Grpc(DaprClient::new(channel))
            }
            Face::Socket => {
                let channel =
                    until_ready("the socket floor", async || connect(&socket).await).await;
                Client::Socket(OutputBindingClient::new(channel))
            }
        };
        Self {
            process: Process {
                child,
                _folder: folder,
            },
            client,
        }
    }

    async fn rate(&self, messages: usize) -> f64 {
        let client = self.client.clone();
        steady_rate(messages, move || {
            let client = client.clone();
            async move { client.invoke().await }
        })
        .await
    }

    async fn latencies(&self, samples: usize) -> Vec<Duration> {
        self.client.invoke().await;
        let mut latencies = Vec::with_capacity(samples);
        for _ in 0..samples {
            let started = Instant::now();
            self.client.invoke().await;
            latencies.push(started.elapsed());
        }
        latencies
    }

    async fn stop(self) {
        self.process.stop().await;
    }
}

impl Client {
    /// One `create` of 100 bytes at QoS 1, until it is answered.
    async fn invoke(&self) {
        match self {
            Client::Http(client, url) => {
                let body = format!(r#"{{"data": "{}", "operation": "create"}}"#, "x".repeat(98));
                let answer = client.post(url).body(body).send().await.expect("answered");
                assert_eq!(answer.status(), reqwest::StatusCode::NO_CONTENT);
            }
            Client::Grpc(client) => {
                let request = InvokeBindingRequest {
                    name: "bench".into(),
                    data: vec![b'x'; 100],
                    metadata: Default::default(),
                    operation: "create".into(),
                };
                client
                    .clone()
                    .invoke_binding(request)
                    .await
                    .expect("InvokeBinding");
            }
            Client::Socket(client) => {
                let request = InvokeRequest {
                    data: vec![b'x'; 100],
                    metadata: Default::default(),
                    operation: "create".into(),
                };
                client
                    .clone()
                    .invoke(addressed(request))
                    .await
                    .expect("Invoke");
            }
        }
    }
}

async fn grpc_channel(port: u16) -> tonic::transport::Channel {
    tonic::transport::Endpoint::from_shared(format!("http://127.0.0.1:{port}"))
        .expect("address")
        .connect()
        .await
        .expect("the gRPC API accepts")
}

/// Input to an HTTP app answering 200 at once: through `mqtt-binding run`, or (`floor`) from
/// rumqttc posting each message with reqwest.
async fn http_app_input(broker: &Mosquitto, messages: usize, floor: bool, threads: usize) -> f64 {
    let session = Session::preload(broker, messages, "floor-in").await;
    let app = TimedApp::start(messages, Duration::ZERO).await;
    if floor {
        let mut child = floor_server(threads, "input", &app.port.to_string())
            .args([&broker.port.to_string(), &session.topic, &session.client_id])
            .spawn()
            .expect("the input floor starts");
        let rate = app.rate().await;
        let _ = child.kill().await;
        return rate;
    }
    let (process, _, _) = sidecar_on(&session.metadata(), Some(app.port), threads).await;
    let rate = app.rate().await;
    process.stop().await;
    rate
}

/// This benchmark binary again, as the hand-written server `kind` at `address` on
/// `threads` threads; the caller adds the rest of the arguments.
fn floor_server(threads: usize, kind: &str, address: &str) -> Command {
    let mut command = Command::new(std::env::current_exe().expect("this binary"));
    command
        .args(["floor-server", &threads.to_string(), kind, address])
        .stdin(std::process::Stdio::null())
        .kill_on_drop(true);
    command
}

/// A gRPC app that answers `OnBindingEvent` at once and records when each event came.
struct TimedGrpcApp(Arrivals);

#[tonic::async_trait]
impl AppCallback for TimedGrpcApp {
    async fn list_input_bindings(
        &self,
        _: tonic::Request<()>,
    ) -> Result<tonic::Response<ListInputBindingsResponse>, tonic::Status> {
        Ok(tonic::Response::new(ListInputBindingsResponse {
            bindings: vec!["bench".into()],
        }))
    }

    async fn on_binding_event(
        &self,
        _: tonic::Request<BindingEventRequest>,
    ) -> Result<tonic::Response<BindingEventResponse>, tonic::Status> {
        self.0.record();
        Ok(tonic::Response::new(BindingEventResponse::default()))
    }
}

/// Input to a gRPC app: through `mqtt-binding run --app-protocol grpc`, or (`floor`) from
/// rumqttc calling `OnBindingEvent` itself.
async fn grpc_app_input(broker: &Mosquitto, messages: usize, floor: bool, threads: usize) -> f64 {
    let session = Session::preload(broker, messages, "floor-grpc").await;
    let arrivals = Arrivals::expecting(messages);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("app port");
    let app_port = listener.local_addr().expect("address").port();
    let serving = tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(AppCallbackServer::new(TimedGrpcApp(arrivals.clone())))
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
    );
    let rate = if floor {
        let mut child = floor_server(threads, "grpc-input", &app_port.to_string())
            .args([&broker.port.to_string(), &session.topic, &session.client_id])
            .spawn()
            .expect("the gRPC input floor starts");
        let rate = arrivals.rate().await;
        let _ = child.kill().await;
        rate
    } else {
        let (process, _, _) = sidecar_with(
            &session.metadata(),
            Some(app_port),
            threads,
            &["--app-protocol", "grpc"],
        )
        .await;
        let rate = arrivals.rate().await;
        process.stop().await;
        rate
    };
    serving.abort();
    rate
}

/// Input through a pluggable component's `Read`, as daprd reads it: `mqtt-binding
/// pluggable`, or (`floor`) a hand-written pluggable component.
async fn read_input_rate(broker: &Mosquitto, messages: usize, floor: bool, threads: usize) -> f64 {
    let metadata = Session::preload(broker, messages, "floor-read")
        .await
        .metadata();
    if !floor {
        let (process, channel) = pluggable_on(threads).await;
        let rate = read_rate(channel, &metadata, messages).await;
        process.stop().await;
        return rate;
    }
    let folder = tempfile::tempdir().expect("dir");
    let socket = folder.path().join("floor.sock");
    let child = floor_server(threads, "read", socket.to_str().expect("path"))
        .args([&broker.port.to_string(), "-"])
        .spawn()
        .expect("the Read floor starts");
    let channel = until_ready("the Read floor", async || connect(&socket).await).await;
    let rate = read_rate(channel, &metadata, messages).await;
    Process {
        child,
        _folder: folder,
    }
    .stop()
    .await;
    rate
}

// ---- the hand-written servers, in their own process ----

/// Runs a floor server as `floor-server THREADS KIND ADDRESS BROKER_PORT TOPIC [CLIENT_ID]`
/// asks, until killed: on a current-thread runtime for 1 thread, like the binding's
/// default, else on a multi-thread runtime with that many workers, like `--threads`.
pub(crate) fn serve(args: &[String]) {
    let [threads, kind, address, broker_port, topic, rest @ ..] = args else {
        panic!("floor-server THREADS KIND ADDRESS BROKER_PORT TOPIC [CLIENT_ID]: {args:?}");
    };
    let broker_port: u16 = broker_port.parse().expect("a broker port");
    let threads: usize = threads.parse().expect("a thread count");
    let rt = if threads > 1 {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(threads)
            .enable_all()
            .build()
    } else {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
    }
    .expect("runtime");
    rt.block_on(async move {
        match kind.as_str() {
            "http" => serve_http(address, broker_port, topic).await,
            "grpc" => serve_grpc(address, broker_port, topic).await,
            "socket" => serve_socket(address, broker_port, topic).await,
            "input" => {
                let client_id = rest.first().expect("a client ID");
                serve_input(address, broker_port, topic, client_id).await;
            }
            "grpc-input" => {
                let client_id = rest.first().expect("a client ID");
                serve_grpc_input(address, broker_port, topic, client_id).await;
            }
            "read" => serve_read(address, broker_port).await,
            other => panic!("no floor server {other:?}"),
        }
    });
}

/// rumqttc publishing at QoS 1, each caller waiting for its own PUBACK (see the module
/// documentation).
#[derive(Clone)]
struct Publisher {
    client: AsyncClient,
    topic: String,
    waiting: Arc<Mutex<VecDeque<oneshot::Sender<()>>>>,
}

impl Publisher {
    async fn connect(broker_port: u16, topic: &str) -> Self {
        let mut options = MqttOptions::new(
            format!("floor-{}", std::process::id()),
            "127.0.0.1",
            broker_port,
        );
        options.set_inflight(u16::try_from(IN_FLIGHT * 2).expect("small"));
        let (client, mut eventloop) = AsyncClient::new(options, 1024);
        let waiting: Arc<Mutex<VecDeque<oneshot::Sender<()>>>> = Arc::default();
        let answering = waiting.clone();
        let (connected_tx, connected) = oneshot::channel();
        tokio::spawn(async move {
            let mut connected_tx = Some(connected_tx);
            loop {
                match eventloop.poll().await.expect("the floor's connection") {
                    Event::Incoming(Packet::ConnAck(_)) => {
                        if let Some(tx) = connected_tx.take() {
                            let _ = tx.send(());
                        }
                    }
                    Event::Incoming(Packet::PubAck(_)) => {
                        let oldest = answering.lock().expect("lock").pop_front();
                        if let Some(oldest) = oldest {
                            let _ = oldest.send(());
                        }
                    }
                    _ => {}
                }
            }
        });
        connected.await.expect("connected");
        Self {
            client,
            topic: topic.to_string(),
            waiting,
        }
    }

    async fn publish(&self, payload: Vec<u8>) {
        let (acked, ack) = oneshot::channel();
        {
            let mut waiting = self.waiting.lock().expect("lock");
            waiting.push_back(acked);
            self.client
                .try_publish(&self.topic, QoS::AtLeastOnce, false, payload)
                .expect("queued");
        }
        ack.await.expect("acknowledged");
    }
}

async fn serve_http(port: &str, broker_port: u16, topic: &str) {
    let publisher = Publisher::connect(broker_port, topic).await;
    let app = axum::Router::new()
        .route(
            "/v1.0/bindings/{name}",
            axum::routing::post(
                |axum::extract::State(publisher): axum::extract::State<Publisher>,
                 body: axum::body::Bytes| async move {
                    #[derive(serde::Deserialize)]
                    struct Request {
                        data: serde_json::Value,
                    }
                    let Ok(request) = serde_json::from_slice::<Request>(&body) else {
                        return axum::http::StatusCode::BAD_REQUEST;
                    };
                    let data = serde_json::to_vec(&request.data).expect("JSON");
                    publisher.publish(data).await;
                    axum::http::StatusCode::NO_CONTENT
                },
            ),
        )
        .with_state(publisher);
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", port.parse().expect("port")))
        .await
        .expect("the floor's port");
    axum::serve(listener, app).await.expect("serving");
}

struct GrpcFloor(Publisher);

#[tonic::async_trait]
impl Dapr for GrpcFloor {
    async fn invoke_binding(
        &self,
        request: tonic::Request<InvokeBindingRequest>,
    ) -> Result<tonic::Response<InvokeBindingResponse>, tonic::Status> {
        self.0.publish(request.into_inner().data).await;
        Ok(tonic::Response::new(InvokeBindingResponse::default()))
    }

    async fn get_metadata(
        &self,
        _: tonic::Request<GetMetadataRequest>,
    ) -> Result<tonic::Response<GetMetadataResponse>, tonic::Status> {
        Ok(tonic::Response::new(GetMetadataResponse::default()))
    }
}

async fn serve_grpc(port: &str, broker_port: u16, topic: &str) {
    let publisher = Publisher::connect(broker_port, topic).await;
    let address = format!("127.0.0.1:{port}").parse().expect("address");
    tonic::transport::Server::builder()
        .add_service(DaprServer::new(GrpcFloor(publisher)))
        .serve(address)
        .await
        .expect("serving");
}

struct SocketFloor(Publisher);

#[tonic::async_trait]
impl OutputBinding for SocketFloor {
    async fn init(
        &self,
        _: tonic::Request<OutputBindingInitRequest>,
    ) -> Result<tonic::Response<OutputBindingInitResponse>, tonic::Status> {
        Ok(tonic::Response::new(OutputBindingInitResponse::default()))
    }

    async fn invoke(
        &self,
        request: tonic::Request<InvokeRequest>,
    ) -> Result<tonic::Response<InvokeResponse>, tonic::Status> {
        self.0.publish(request.into_inner().data).await;
        Ok(tonic::Response::new(InvokeResponse::default()))
    }

    async fn list_operations(
        &self,
        _: tonic::Request<ListOperationsRequest>,
    ) -> Result<tonic::Response<ListOperationsResponse>, tonic::Status> {
        Ok(tonic::Response::new(ListOperationsResponse {
            operations: vec!["create".into()],
        }))
    }

    async fn ping(
        &self,
        _: tonic::Request<PingRequest>,
    ) -> Result<tonic::Response<PingResponse>, tonic::Status> {
        Ok(tonic::Response::new(PingResponse::default()))
    }
}

async fn serve_socket(path: &str, broker_port: u16, topic: &str) {
    let publisher = Publisher::connect(broker_port, topic).await;
    let listener = tokio::net::UnixListener::bind(path).expect("the floor's socket");
    tonic::transport::Server::builder()
        .add_service(OutputBindingServer::new(SocketFloor(publisher)))
        .serve_with_incoming(tokio_stream::wrappers::UnixListenerStream::new(listener))
        .await
        .expect("serving");
}

/// rumqttc with manual acknowledgements takes over the preloaded session and posts each
/// message to the app with reqwest, one at a time, acknowledging it after the app's answer.
async fn serve_input(app_port: &str, broker_port: u16, topic: &str, client_id: &str) {
    let http = reqwest::Client::new();
    let url = format!("http://127.0.0.1:{app_port}/bench");
    let (client, mut arrived) = subscribe_manual(broker_port, topic, client_id).await;
    while let Some(publish) = arrived.recv().await {
        let answer = http
            .post(&url)
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .header("topic", publish.topic.as_str())
            .body(publish.payload.to_vec())
            .send()
            .await
            .expect("the app answers");
        assert!(answer.status().is_success());
        client.ack(&publish).await.expect("ack queued");
    }
}

/// rumqttc with manual acknowledgements taking over the preloaded session: the client (to
/// acknowledge with) and the messages as they come.
async fn subscribe_manual(
    broker_port: u16,
    topic: &str,
    client_id: &str,
) -> (
    AsyncClient,
    tokio::sync::mpsc::UnboundedReceiver<rumqttc::Publish>,
) {
    let mut options = MqttOptions::new(client_id, "127.0.0.1", broker_port);
    options.set_clean_session(false).set_manual_acks(true);
    let (client, mut eventloop) = AsyncClient::new(options, 1024);
    client
        .subscribe(topic, QoS::AtLeastOnce)
        .await
        .expect("subscribe queued");
    let (messages, arrived) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        loop {
            if let Event::Incoming(Packet::Publish(publish)) =
                eventloop.poll().await.expect("the floor's connection")
            {
                let _ = messages.send(publish);
            }
        }
    });
    (client, arrived)
}

/// rumqttc calling a gRPC app's `OnBindingEvent` for each message, one at a time.
async fn serve_grpc_input(app_port: &str, broker_port: u16, topic: &str, client_id: &str) {
    let channel = tonic::transport::Endpoint::from_shared(format!("http://127.0.0.1:{app_port}"))
        .expect("address")
        .connect()
        .await
        .expect("the app accepts");
    let mut app = AppCallbackClient::new(channel);
    let (client, mut arrived) = subscribe_manual(broker_port, topic, client_id).await;
    while let Some(publish) = arrived.recv().await {
        let request = BindingEventRequest {
            name: "bench".into(),
            data: publish.payload.clone(),
            metadata: [("topic".to_string(), publish.topic.clone())].into(),
        };
        app.on_binding_event(request)
            .await
            .expect("the app answers");
        client.ack(&publish).await.expect("ack queued");
    }
}

/// A hand-written pluggable input binding: `Init` connects rumqttc (manual acks) with the
/// metadata's topic and client ID; `Read` sends each message and acknowledges it to the
/// broker once daprd's answer for it comes, one at a time.
struct ReadFloor {
    broker_port: u16,
    subscription: Mutex<Option<(String, String)>>,
}

#[tonic::async_trait]
impl InputBinding for ReadFloor {
    async fn init(
        &self,
        request: tonic::Request<InputBindingInitRequest>,
    ) -> Result<tonic::Response<InputBindingInitResponse>, tonic::Status> {
        let properties = request
            .into_inner()
            .metadata
            .map(|metadata| metadata.properties)
            .unwrap_or_default();
        let topic = properties.get("topic").cloned().unwrap_or_default();
        let client_id = properties.get("consumerID").cloned().unwrap_or_default();
        *self.subscription.lock().expect("lock") = Some((topic, client_id));
        Ok(tonic::Response::new(InputBindingInitResponse::default()))
    }

    type ReadStream =
        tokio_stream::wrappers::UnboundedReceiverStream<Result<ReadResponse, tonic::Status>>;

    async fn read(
        &self,
        request: tonic::Request<tonic::Streaming<ReadRequest>>,
    ) -> Result<tonic::Response<Self::ReadStream>, tonic::Status> {
        let (topic, client_id) = self
            .subscription
            .lock()
            .expect("lock")
            .clone()
            .ok_or_else(|| tonic::Status::failed_precondition("Init first"))?;
        let mut answers = request.into_inner();
        let (events, stream) = tokio::sync::mpsc::unbounded_channel();
        let broker_port = self.broker_port;
        tokio::spawn(async move {
            let (client, mut arrived) = subscribe_manual(broker_port, &topic, &client_id).await;
            let mut next_id = 0u64;
            while let Some(publish) = arrived.recv().await {
                next_id += 1;
                let message_id = next_id.to_string();
                let event = ReadResponse {
                    data: publish.payload.clone(),
                    metadata: [("topic".to_string(), publish.topic.clone())].into(),
                    content_type: String::new(),
                    message_id: message_id.clone(),
                };
                if events.send(Ok(event)).is_err() {
                    return;
                }
                match answers.message().await {
                    Ok(Some(answer)) if answer.message_id == message_id => {
                        client.ack(&publish).await.expect("ack queued");
                    }
                    _ => return,
                }
            }
        });
        Ok(tonic::Response::new(
            tokio_stream::wrappers::UnboundedReceiverStream::new(stream),
        ))
    }

    async fn ping(
        &self,
        _: tonic::Request<PingRequest>,
    ) -> Result<tonic::Response<PingResponse>, tonic::Status> {
        Ok(tonic::Response::new(PingResponse::default()))
    }
}

async fn serve_read(path: &str, broker_port: u16) {
    let listener = tokio::net::UnixListener::bind(path).expect("the floor's socket");
    tonic::transport::Server::builder()
        .add_service(InputBindingServer::new(ReadFloor {
            broker_port,
            subscription: Mutex::new(None),
        }))
        .serve_with_incoming(tokio_stream::wrappers::UnixListenerStream::new(listener))
        .await
        .expect("serving");
}
