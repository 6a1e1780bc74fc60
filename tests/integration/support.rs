//! Helpers for the integration tests: a real mosquitto on free loopback ports (plain and
//! mutual-TLS listeners, certificates generated per test), an independent rumqttc
//! subscriber, and a shared runtime for bindings. Everything started here stops on drop.

use std::collections::BTreeSet;
use std::net::{Ipv4Addr, TcpListener};
use std::os::unix::fs::MetadataExt as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex, OnceLock, PoisonError};
use std::time::Duration;

use mqtt_binding::{
    Binding, BindingError, BindingOptions, Delivery, Event as BindingEvent, EventHandler,
    InvokeRequest, Runtime, RuntimeOptions,
};
use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair, KeyUsagePurpose,
};
use rumqttc::{AsyncClient, Event, MqttOptions, Packet, Publish, QoS};
use tokio::sync::mpsc;

/// How long any test waits for an expected event before failing.
pub const WAIT: Duration = Duration::from_secs(15);

/// Asks `check` every 20 ms until it answers `Ok`, and returns what it answered; after
/// `within`, fails the test with the last `Err`, which says what was seen instead. For
/// events nothing announces: a log line, a metric, a port that starts to accept.
pub async fn eventually<T>(
    within: Duration,
    mut check: impl AsyncFnMut() -> Result<T, String>,
) -> T {
    let deadline = tokio::time::Instant::now() + within;
    loop {
        let seen = match check().await {
            Ok(done) => return done,
            Err(seen) => seen,
        };
        assert!(
            tokio::time::Instant::now() < deadline,
            "not within {within:?}: {seen}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A process-wide runtime with default settings (compiled code cached on disk).
pub fn runtime() -> &'static Runtime {
    static RUNTIME: OnceLock<Runtime> = OnceLock::new();
    RUNTIME.get_or_init(|| {
        Runtime::new(RuntimeOptions::default()).expect("the embedded component loads")
    })
}

/// The Python that `scripts/test` installs, with grpcio and Dapr's SDK
/// (`$MQTT_BINDING_PYTHON`, else `~/.cache/mqtt-binding/venv/bin/python`).
pub fn python() -> PathBuf {
    let python = std::env::var_os("MQTT_BINDING_PYTHON")
        .map(PathBuf::from)
        .or_else(|| {
            std::env::var_os("HOME")
                .map(|home| PathBuf::from(home).join(".cache/mqtt-binding/venv/bin/python"))
        })
        .expect("HOME or MQTT_BINDING_PYTHON is set");
    assert!(
        python.exists(),
        "{} is missing: ./scripts/test installs Python with grpcio and Dapr's SDK there (or set MQTT_BINDING_PYTHON)",
        python.display()
    );
    python
}

/// SIGTERM to `child`, and its exit status (failing the test if it takes longer than
/// [`WAIT`]).
pub async fn terminate(mut child: tokio::process::Child) -> std::process::ExitStatus {
    let pid = child.id().expect("pid").to_string();
    let _ = tokio::process::Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .await;
    tokio::time::timeout(WAIT, child.wait())
        .await
        .expect("exits after SIGTERM")
        .expect("status")
}

/// Metadata pairs from string slices.
pub fn metadata(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
    pairs
        .iter()
        .map(|(name, value)| (name.to_string(), value.to_string()))
        .collect()
}

/// Creates a binding from the shared runtime.
pub async fn binding(pairs: &[(&str, &str)]) -> Result<Binding, BindingError> {
    binding_in(runtime(), pairs).await
}

pub async fn binding_in(
    runtime: &Runtime,
    pairs: &[(&str, &str)],
) -> Result<Binding, BindingError> {
    let options = BindingOptions {
        name: "test".into(),
        app_id: format!("test-app-{}", unique()),
        metadata: metadata(pairs),
        handler: None,
    };
    tokio::time::timeout(WAIT, runtime.binding(options))
        .await
        .expect("binding init did not hang")
}

/// Runs `create` with `data` and request metadata.
pub async fn create(
    binding: &mut Binding,
    data: &[u8],
    pairs: &[(&str, &str)],
) -> Result<(), BindingError> {
    let request = InvokeRequest {
        operation: "create".into(),
        data: data.to_vec(),
        metadata: metadata(pairs),
    };
    let invoked = tokio::time::timeout(Duration::from_secs(60), binding.invoke(request)).await;
    let response = invoked.expect("invoke did not hang")?;
    assert_eq!(response.data, None, "create answers with no data");
    Ok(())
}

/// A short unique string for client IDs and topics.
pub fn unique() -> String {
    use std::sync::atomic::{AtomicU32, Ordering};
    static NEXT: AtomicU32 = AtomicU32::new(0);
    format!(
        "{}-{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    )
}

/// The hostile component of the sandbox tests (`tests/guests/hostile`), built once per test
/// process for wasm32-wasip2 into the folder where the host's build script built the guest,
/// so that its dependencies are compiled already. The shipped build never compiles it.
pub fn hostile_component() -> &'static str {
    static FILE: OnceLock<String> = OnceLock::new();
    FILE.get_or_init(|| {
        let target_dir = env!("MQTT_BINDING_GUEST_TARGET");
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
        let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
        let output = Command::new(cargo)
            .current_dir(&root)
            .args(["build", "--release", "--package", "mqtt-binding-hostile"])
            .args(["--target", "wasm32-wasip2", "--target-dir", target_dir])
            .env_remove("CARGO_ENCODED_RUSTFLAGS")
            .env("RUSTFLAGS", env!("MQTT_BINDING_WASM_RUSTFLAGS"))
            .env_remove("CARGO_TARGET_DIR")
            .env_remove("CARGO_BUILD_TARGET")
            .output()
            .expect("cargo runs");
        assert!(
            output.status.success(),
            "building the hostile component failed:\n{}",
            String::from_utf8_lossy(&output.stderr)
        );
        Path::new(target_dir)
            .join("wasm32-wasip2/release/mqtt_binding_hostile.wasm")
            .to_str()
            .expect("a UTF-8 path")
            .to_string()
    })
}

/// A loopback port free a moment ago, never the same one twice in this process.
pub fn free_port() -> u16 {
    // The kernel may hand a port just released to the very next bind: two servers of one
    // test, or of two tests at once, would then be given the same port.
    static GIVEN: Mutex<BTreeSet<u16>> = Mutex::new(BTreeSet::new());
    loop {
        let port = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
            .and_then(|listener| listener.local_addr())
            .expect("a free loopback port")
            .port();
        if GIVEN
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(port)
        {
            return port;
        }
    }
}

/// A CA, a server certificate for 127.0.0.1/localhost and a client certificate, as PEM
/// files in `dir`.
pub struct Certificates {
    pub ca_pem: String,
    pub client_cert_pem: String,
    pub client_key_pem: String,
    pub ca_file: PathBuf,
    pub server_cert_file: PathBuf,
    pub server_key_file: PathBuf,
    pub client_cert_file: PathBuf,
    pub client_key_file: PathBuf,
}

/// A certificate authority that signs leaf certificates.
pub struct Authority {
    issuer: CertifiedIssuer<'static, KeyPair>,
}

impl Authority {
    pub fn new(name: &str) -> Self {
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("CA params");
        params.distinguished_name.push(DnType::CommonName, name);
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let key = KeyPair::generate().expect("CA key");
        Self {
            issuer: CertifiedIssuer::self_signed(params, key).expect("CA certificate"),
        }
    }

    pub fn pem(&self) -> String {
        self.issuer.pem()
    }

    /// A leaf certificate and its PKCS#8 key, as PEM.
    pub fn leaf(&self, names: &[&str], usage: ExtendedKeyUsagePurpose) -> (String, String) {
        let names: Vec<String> = names.iter().map(|n| n.to_string()).collect();
        let mut params = CertificateParams::new(names).expect("leaf params");
        params
            .distinguished_name
            .push(DnType::CommonName, "mqtt-binding test");
        params.extended_key_usages = vec![usage];
        let key = KeyPair::generate().expect("leaf key");
        let cert = params
            .signed_by(&key, &self.issuer)
            .expect("leaf certificate");
        (cert.pem(), key.serialize_pem())
    }
}

impl Certificates {
    pub fn generate(dir: &Path) -> Self {
        let ca = Authority::new("mqtt-binding test CA");
        let (server_cert, server_key) = ca.leaf(
            &["127.0.0.1", "localhost"],
            ExtendedKeyUsagePurpose::ServerAuth,
        );
        let (client_cert, client_key) =
            ca.leaf(&["binding-client"], ExtendedKeyUsagePurpose::ClientAuth);
        let write = |name: &str, text: &str| {
            let path = dir.join(name);
            std::fs::write(&path, text).expect("writing a certificate file");
            path
        };
        Self {
            ca_file: write("ca.pem", &ca.pem()),
            server_cert_file: write("server.pem", &server_cert),
            server_key_file: write("server.key", &server_key),
            client_cert_file: write("client.pem", &client_cert),
            client_key_file: write("client.key", &client_key),
            ca_pem: ca.pem(),
            client_cert_pem: client_cert,
            client_key_pem: client_key,
        }
    }
}

/// How to configure a test broker.
#[derive(Default)]
pub struct BrokerConfig {
    /// `(user, password)`: refuse anonymous clients, accept this one.
    pub user: Option<(String, String)>,
    /// Keep sessions and queued messages across a restart (saved on SIGTERM).
    pub persistence: bool,
    /// More configuration lines.
    pub extra: String,
    /// The plain listener's port; a free one if `None`.
    pub port: Option<u16>,
}

/// A mosquitto process with a plain listener and a mutual-TLS listener on 127.0.0.1.
pub struct Mosquitto {
    child: Child,
    conf: PathBuf,
    pub port: u16,
    pub tls_port: u16,
    pub certs: Certificates,
    pub dir: tempfile::TempDir,
    log: PathBuf,
}

impl Mosquitto {
    pub fn start() -> Self {
        Self::start_with(BrokerConfig::default())
    }

    pub fn start_with(config: BrokerConfig) -> Self {
        let dir = tempfile::tempdir().expect("a temp dir");
        let certs = Certificates::generate(dir.path());
        let (port, tls_port) = (config.port.unwrap_or_else(free_port), free_port());
        let log = dir.path().join("mosquitto.log");
        let mut conf = String::new();
        // Started as root, mosquitto switches to user "mosquitto", which cannot read our
        // temp files; keep it as root then.
        if std::fs::metadata("/proc/self")
            .map(|m| m.uid() == 0)
            .unwrap_or(false)
        {
            conf.push_str("user root\n");
        }
        match &config.user {
            Some((user, password)) => {
                let file = dir.path().join("passwords");
                let status = Command::new("mosquitto_passwd")
                    .args(["-b", "-c"])
                    .arg(&file)
                    .args([user, password])
                    .stdout(Stdio::null())
                    .stderr(Stdio::null())
                    .status()
                    .expect("mosquitto_passwd runs (apt-get install mosquitto)");
                assert!(status.success(), "mosquitto_passwd failed: {status}");
                conf.push_str(&format!(
                    "allow_anonymous false\npassword_file {}\n",
                    file.display()
                ));
            }
            None => conf.push_str("allow_anonymous true\n"),
        }
        conf.push_str(&config.extra);
        if config.persistence {
            conf.push_str(&format!(
                "persistence true\npersistence_location {}/\n",
                dir.path().display()
            ));
        } else {
            conf.push_str("persistence false\n");
        }
        conf.push_str(&format!(
            "log_type all\nlog_dest file {}\n\
             listener {port} 127.0.0.1\n\
             listener {tls_port} 127.0.0.1\ncafile {}\ncertfile {}\nkeyfile {}\nrequire_certificate true\n",
            log.display(),
            certs.ca_file.display(),
            certs.server_cert_file.display(),
            certs.server_key_file.display(),
        ));
        let conf_path = dir.path().join("mosquitto.conf");
        std::fs::write(&conf_path, conf).expect("writing mosquitto.conf");
        let child = spawn_mosquitto(&conf_path);
        let broker = Self {
            child,
            conf: conf_path,
            port,
            tls_port,
            certs,
            dir,
            log,
        };
        broker.wait_until_running(0);
        broker
    }

    /// Blocks until the log shows more than `runs` starts; only for when no task of the
    /// test needs to run meanwhile.
    fn wait_until_running(&self, runs: usize) {
        let deadline = std::time::Instant::now() + WAIT;
        while self.log().matches(" running").count() <= runs {
            assert!(
                std::time::Instant::now() < deadline,
                "mosquitto did not start:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Stops the broker as an operator would (SIGTERM: it saves its persistent state), then
    /// starts it again on the same ports.
    pub fn restart(&mut self) {
        let runs = self.log().matches(" running").count();
        let status = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        assert!(status.is_ok_and(|s| s.success()), "kill -TERM mosquitto");
        let _ = self.child.wait();
        self.child = spawn_mosquitto(&self.conf);
        self.wait_until_running(runs);
    }

    /// How many times the log contains `text`.
    pub fn log_count(&self, text: &str) -> usize {
        self.log().matches(text).count()
    }

    /// The broker's log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Waits until the log contains `text`, failing the test after [`WAIT`]. Async: the
    /// binding's own tasks keep running on the test's runtime meanwhile.
    pub async fn wait_for_log(&self, text: &str) {
        self.wait_for_log_count(text, 1).await;
    }

    /// Waits until the log contains `text` at least `count` times, failing the test after
    /// [`WAIT`].
    pub async fn wait_for_log_count(&self, text: &str, count: usize) {
        eventually(WAIT, async || {
            if self.log_count(text) >= count {
                return Ok(());
            }
            Err(format!(
                "mosquitto's log never showed {text:?} {count} times; log:\n{}",
                self.log()
            ))
        })
        .await;
    }

    pub fn url(&self) -> String {
        format!("tcp://127.0.0.1:{}", self.port)
    }

    pub fn tls_url(&self) -> String {
        format!("ssl://127.0.0.1:{}", self.tls_port)
    }

    /// Stops the broker now (SIGKILL) and waits for it to exit.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Mosquitto {
    fn drop(&mut self) {
        self.kill();
    }
}

fn spawn_mosquitto(conf: &Path) -> Child {
    Command::new(mosquitto_program())
        .arg("-c")
        .arg(conf)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap_or_else(|e| {
            panic!("cannot start mosquitto ({e}); install it with: sudo apt-get install -y mosquitto mosquitto-clients")
        })
}

/// `mosquitto` from PATH, or from /usr/sbin where Debian installs it (not on every user's
/// PATH).
fn mosquitto_program() -> PathBuf {
    let on_path = std::env::var_os("PATH").map(|path| {
        std::env::split_paths(&path)
            .map(|dir| dir.join("mosquitto"))
            .find(|p| p.is_file())
    });
    on_path
        .flatten()
        .unwrap_or_else(|| PathBuf::from("/usr/sbin/mosquitto"))
}

/// An MQTT client independent of the binding, subscribed to one filter.
pub struct Subscriber {
    client: AsyncClient,
    messages: mpsc::UnboundedReceiver<Publish>,
    task: tokio::task::JoinHandle<()>,
}

impl Subscriber {
    /// Connects to `port`, subscribes to `filter` at QoS 2, and waits for the SUBACK.
    pub async fn start(port: u16, filter: &str) -> Self {
        let mut options = MqttOptions::new(format!("sub-{}", unique()), "127.0.0.1", port);
        options.set_max_packet_size(64 << 20, 64 << 20);
        let (client, mut eventloop) = AsyncClient::new(options, 16);
        client
            .subscribe(filter, QoS::ExactlyOnce)
            .await
            .expect("subscribe queued");
        let (subscribed_tx, subscribed_rx) = tokio::sync::oneshot::channel();
        let (tx, messages) = mpsc::unbounded_channel();
        let task = tokio::spawn(async move {
            let mut subscribed = Some(subscribed_tx);
            loop {
                match eventloop.poll().await {
                    Ok(Event::Incoming(Packet::SubAck(_))) => {
                        if let Some(subscribed) = subscribed.take() {
                            let _ = subscribed.send(());
                        }
                    }
                    Ok(Event::Incoming(Packet::Publish(publish))) => {
                        let _ = tx.send(publish);
                    }
                    Ok(_) => {}
                    Err(error) => panic!("test subscriber lost its connection: {error}"),
                }
            }
        });
        tokio::time::timeout(WAIT, subscribed_rx)
            .await
            .expect("the test subscriber got its SUBACK")
            .expect("the subscriber task is running");
        Self {
            client,
            messages,
            task,
        }
    }

    /// The next message, failing the test after [`WAIT`].
    pub async fn next(&mut self) -> Publish {
        tokio::time::timeout(WAIT, self.messages.recv())
            .await
            .expect("a message reached the test subscriber in time")
            .expect("the subscriber task is running")
    }
}

impl Drop for Subscriber {
    fn drop(&mut self) {
        let _ = self.client.try_disconnect();
        self.task.abort();
    }
}

/// Shared runtime for tests that need their own settings.
pub fn runtime_with(options: RuntimeOptions) -> Arc<Runtime> {
    Arc::new(Runtime::new(options).expect("the embedded component loads"))
}

/// A test application: records every delivery attempt, fails the first `failures` of them,
/// and can hold deliveries at a gate.
pub struct Recorder {
    calls: std::sync::Mutex<Vec<BindingEvent>>,
    failures: std::sync::atomic::AtomicUsize,
    accepted: mpsc::UnboundedSender<BindingEvent>,
    called: tokio::sync::Notify,
    gate: tokio::sync::watch::Sender<bool>,
    hold_after: Option<usize>,
    /// What the application answers to each event it accepts.
    answer: Option<Vec<u8>>,
}

/// What a [`Recorder`] accepted, in order.
pub struct Accepted(mpsc::UnboundedReceiver<BindingEvent>);

impl Accepted {
    /// The next accepted event, failing the test after [`WAIT`].
    pub async fn next(&mut self) -> BindingEvent {
        self.next_within(WAIT).await
    }

    pub async fn next_within(&mut self, wait: Duration) -> BindingEvent {
        tokio::time::timeout(wait, self.0.recv())
            .await
            .expect("the application received an event in time")
            .expect("the recorder is alive")
    }
}

impl Recorder {
    /// Fails the first `failures` deliveries (`usize::MAX`: all), accepts the rest.
    pub fn failing(failures: usize) -> (Arc<Self>, Accepted) {
        Self::build(failures, None)
    }

    /// Accepts everything, but holds deliveries after the first `count` until [`Recorder::open`].
    pub fn holding_after(count: usize) -> (Arc<Self>, Accepted) {
        Self::build(0, Some(count))
    }

    /// Accepts everything and answers each event with `answer` (a responder to MQTT 5
    /// requests).
    pub fn answering(answer: &[u8]) -> (Arc<Self>, Accepted) {
        let (recorder, accepted) = Self::build(0, None);
        let mut recorder = Arc::into_inner(recorder).expect("just built");
        recorder.answer = Some(answer.to_vec());
        (Arc::new(recorder), accepted)
    }

    fn build(failures: usize, hold_after: Option<usize>) -> (Arc<Self>, Accepted) {
        let (accepted, rx) = mpsc::unbounded_channel();
        let recorder = Self {
            calls: std::sync::Mutex::new(Vec::new()),
            failures: std::sync::atomic::AtomicUsize::new(failures),
            accepted,
            called: tokio::sync::Notify::new(),
            gate: tokio::sync::watch::Sender::new(hold_after.is_none()),
            hold_after,
            answer: None,
        };
        (Arc::new(recorder), Accepted(rx))
    }

    pub fn calls(&self) -> Vec<BindingEvent> {
        self.calls.lock().expect("calls").clone()
    }

    /// Waits until the handler has been called `n` times in all.
    pub async fn wait_for_calls(&self, n: usize) {
        let waiting = async {
            loop {
                let called = self.called.notified();
                if self.calls.lock().expect("calls").len() >= n {
                    return;
                }
                called.await;
            }
        };
        tokio::time::timeout(WAIT, waiting)
            .await
            .unwrap_or_else(|_| {
                panic!(
                    "the handler was called {} times, expected {n}",
                    self.calls().len()
                )
            });
    }

    pub fn open(&self) {
        self.gate.send_replace(true);
    }
}

impl EventHandler for Recorder {
    fn deliver(&self, event: BindingEvent) -> Delivery<'_> {
        Box::pin(async move {
            let call = {
                let mut calls = self.calls.lock().expect("calls");
                calls.push(event.clone());
                calls.len()
            };
            self.called.notify_waiters();
            if self.hold_after.is_some_and(|count| call > count) {
                let mut gate = self.gate.subscribe();
                let _ = gate.wait_for(|open| *open).await;
            }
            let failing = self
                .failures
                .fetch_update(
                    std::sync::atomic::Ordering::AcqRel,
                    std::sync::atomic::Ordering::Acquire,
                    |left| (left > 0).then(|| left.saturating_sub(1)),
                )
                .is_ok();
            if failing {
                return Err(format!("scripted failure of call {call}"));
            }
            let _ = self.accepted.send(event);
            Ok(self.answer.clone())
        })
    }
}

/// A binding with an application, reading on a task of its own. Closed on drop.
pub struct Reader {
    pub binding: Arc<Binding>,
    pub task: tokio::task::JoinHandle<Result<(), BindingError>>,
}

impl Reader {
    /// Creates the binding, starts `read`, and waits for the broker's SUBACK.
    pub async fn start(pairs: &[(&str, &str)], handler: Arc<dyn EventHandler>) -> Self {
        let options = BindingOptions {
            name: "reader".into(),
            app_id: format!("reader-{}", unique()),
            metadata: metadata(pairs),
            handler: Some(handler),
        };
        let binding = tokio::time::timeout(WAIT, runtime().binding(options))
            .await
            .expect("binding init did not hang")
            .expect("binding init");
        let binding = Arc::new(binding);
        let reading = binding.clone();
        let task = tokio::spawn(async move { reading.read().await });
        tokio::time::timeout(WAIT, binding.wait_subscribed())
            .await
            .expect("the binding subscribed in time")
            .expect("the binding subscribed");
        Self { binding, task }
    }

    /// Shuts down, waits for `read` to return (failing the test after [`WAIT`]), and
    /// disconnects.
    pub async fn stop(self) -> Result<(), BindingError> {
        self.binding.shutdown();
        let outcome = tokio::time::timeout(WAIT, self.task)
            .await
            .expect("read returned after shutdown");
        self.binding.close().await;
        outcome.expect("the read task did not panic")
    }
}

/// Publishes with an independent client and waits for the broker's acknowledgements.
pub async fn publish_all(port: u16, topic: &str, qos: QoS, payloads: &[Vec<u8>]) {
    let mut options = MqttOptions::new(format!("pub-{}", unique()), "127.0.0.1", port);
    options
        .set_max_packet_size(64 << 20, 64 << 20)
        .set_inflight(100);
    let (client, mut eventloop) = AsyncClient::new(options, 64);
    let sending = {
        let client = client.clone();
        let (topic, payloads) = (topic.to_string(), payloads.to_vec());
        tokio::spawn(async move {
            for payload in payloads {
                client
                    .publish(topic.clone(), qos, false, payload)
                    .await
                    .expect("publish queued");
            }
        })
    };
    let expected = payloads.len();
    let mut acknowledged = 0;
    tokio::time::timeout(Duration::from_secs(60), async {
        while acknowledged < expected {
            match eventloop
                .poll()
                .await
                .expect("the test publisher stays connected")
            {
                Event::Incoming(Packet::PubAck(_) | Packet::PubComp(_)) => acknowledged += 1,
                Event::Outgoing(rumqttc::Outgoing::Publish(_)) if qos == QoS::AtMostOnce => {
                    acknowledged += 1
                }
                _ => {}
            }
        }
    })
    .await
    .unwrap_or_else(|_| panic!("the broker acknowledged {acknowledged} of {expected} messages"));
    sending.await.expect("the sender finished");
    let _ = client.disconnect().await;
    // Let the DISCONNECT go out.
    let _ = tokio::time::timeout(Duration::from_secs(1), eventloop.poll()).await;
}

/// Collects what the host logs on this thread (tokio tests run their tasks on it).
#[derive(Clone, Default)]
pub struct Captured(Arc<std::sync::Mutex<Vec<u8>>>);

impl Captured {
    /// Captures the host's logs at `level` and above until the guard drops.
    pub fn logs(level: tracing::Level) -> (Self, tracing::subscriber::DefaultGuard) {
        let captured = Self::default();
        let writer = captured.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_writer(move || writer.clone())
            .with_max_level(level)
            .with_ansi(false)
            .finish();
        (captured, tracing::subscriber::set_default(subscriber))
    }

    /// Everything logged so far.
    pub fn text(&self) -> String {
        String::from_utf8(self.0.lock().expect("log buffer").clone()).expect("utf-8 logs")
    }
}

impl std::io::Write for Captured {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        self.0.lock().expect("log buffer").extend_from_slice(bytes);
        Ok(bytes.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// The value of a metadata entry of an event.
pub fn meta(event: &BindingEvent, name: &str) -> String {
    event
        .metadata
        .get(name)
        .map(std::borrow::Cow::into_owned)
        .unwrap_or_default()
}

/// Runs `command` to its end: its exit status, or a panic after [`WAIT`] with the child
/// killed.
pub async fn exit_status(command: Command) -> i32 {
    let program = command.get_program().to_string_lossy().into_owned();
    let mut child = tokio::process::Command::from(command)
        .kill_on_drop(true)
        .spawn()
        .unwrap_or_else(|error| panic!("{program} does not start: {error}"));
    let status = tokio::time::timeout(WAIT, child.wait())
        .await
        .unwrap_or_else(|_| panic!("{program} did not exit within {WAIT:?}"))
        .expect("waiting for the child");
    status
        .code()
        .unwrap_or_else(|| panic!("{program} ended by a signal: {status}"))
}

/// Runs `command` to its end under GNU time (which `./scripts/test` installs), its output
/// discarded: its exit status and its peak resident memory in bytes. Under a small parent
/// of its own, because a process spawned by this one starts its accounting with this one's
/// memory: std spawns with a shared address space until exec, and the kernel keeps the
/// larger high-water mark, so `wait4` would report the peak of the whole test binary
/// (hundreds of MiB, with other tests running beside).
pub async fn exit_and_peak_memory(command: Command) -> (i32, u64) {
    let report = tempfile::NamedTempFile::new().expect("a file for GNU time's report");
    let mut timed = Command::new("/usr/bin/time");
    // --quiet: the report holds the figure alone, without a line on a non-zero exit.
    timed
        .args(["--quiet", "-f", "%M", "-o"])
        .arg(report.path())
        .arg(command.get_program())
        .args(command.get_args());
    if let Some(dir) = command.get_current_dir() {
        timed.current_dir(dir);
    }
    for (name, value) in command.get_envs() {
        match value {
            Some(value) => timed.env(name, value),
            None => timed.env_remove(name),
        };
    }
    timed
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    let status = exit_status(timed).await;
    let kib: u64 = std::fs::read_to_string(report.path())
        .expect("GNU time's report")
        .trim()
        .parse()
        .expect("GNU time's %M, in KiB");
    (status, kib * 1024)
}

/// Packet ids in the order mosquitto logged `what` for `client` ("Sending PUBLISH to" or
/// "Received PUBACK from").
pub fn logged_ids(log: &str, what: &str, client: &str) -> Vec<u32> {
    let prefix = format!("{what} {client} (");
    log.lines()
        .filter_map(|line| line.split_once(&prefix).map(|(_, rest)| rest))
        .filter_map(|rest| {
            let id = rest.split([',', ')']).map(str::trim).find_map(|part| {
                part.strip_prefix("Mid: ")
                    .or_else(|| part.strip_prefix('m'))
            })?;
            id.parse().ok()
        })
        .collect()
}
