//! Helpers for the integration tests: a real mosquitto on free loopback ports (plain and
//! mutual-TLS listeners, certificates generated per test), an independent rumqttc
//! subscriber, and a shared runtime for bindings. Everything started here stops on drop.

use std::net::{Ipv4Addr, TcpListener};
use std::os::unix::fs::MetadataExt as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use mqtt_binding::{Binding, BindingError, BindingOptions, InvokeRequest, Runtime, RuntimeOptions};
use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair,
    KeyUsagePurpose,
};
use rumqttc::{AsyncClient, Event, MqttOptions, Packet, Publish, QoS};
use tokio::sync::mpsc;

/// How long any test waits for an expected event before failing.
pub const WAIT: Duration = Duration::from_secs(15);

/// A process-wide runtime with default settings (compiled code cached on disk).
pub fn runtime() -> &'static Runtime {
    static RUNTIME: OnceLock<Runtime> = OnceLock::new();
    RUNTIME.get_or_init(|| Runtime::new(RuntimeOptions::default()).expect("the embedded component loads"))
}

/// Metadata pairs from string slices.
pub fn metadata(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
    pairs.iter().map(|(name, value)| (name.to_string(), value.to_string())).collect()
}

/// Creates a binding from the shared runtime.
pub async fn binding(pairs: &[(&str, &str)]) -> Result<Binding, BindingError> {
    binding_in(runtime(), pairs).await
}

pub async fn binding_in(runtime: &Runtime, pairs: &[(&str, &str)]) -> Result<Binding, BindingError> {
    let options = BindingOptions {
        name: "test".into(),
        app_id: format!("test-app-{}", unique()),
        metadata: metadata(pairs),
        handler: None,
    };
    tokio::time::timeout(WAIT, runtime.binding(options)).await.expect("binding init did not hang")
}

/// Runs `create` with `data` and request metadata.
pub async fn create(binding: &mut Binding, data: &[u8], pairs: &[(&str, &str)]) -> Result<(), BindingError> {
    let request = InvokeRequest { operation: "create".into(), data: data.to_vec(), metadata: metadata(pairs) };
    let invoked = tokio::time::timeout(Duration::from_secs(60), binding.invoke(request)).await;
    let response = invoked.expect("invoke did not hang")?;
    assert_eq!(response.data, None, "create answers with no data");
    Ok(())
}

/// A short unique string for client IDs and topics.
pub fn unique() -> String {
    use std::sync::atomic::{AtomicU32, Ordering};
    static NEXT: AtomicU32 = AtomicU32::new(0);
    format!("{}-{}", std::process::id(), NEXT.fetch_add(1, Ordering::Relaxed))
}

fn free_port() -> u16 {
    TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
        .and_then(|listener| listener.local_addr())
        .expect("a free loopback port")
        .port()
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
        Self { issuer: CertifiedIssuer::self_signed(params, key).expect("CA certificate") }
    }

    pub fn pem(&self) -> String {
        self.issuer.pem()
    }

    /// A leaf certificate and its PKCS#8 key, as PEM.
    pub fn leaf(&self, names: &[&str], usage: ExtendedKeyUsagePurpose) -> (String, String) {
        let names: Vec<String> = names.iter().map(|n| n.to_string()).collect();
        let mut params = CertificateParams::new(names).expect("leaf params");
        params.distinguished_name.push(DnType::CommonName, "mqtt-binding test");
        params.extended_key_usages = vec![usage];
        let key = KeyPair::generate().expect("leaf key");
        let cert = params.signed_by(&key, &self.issuer).expect("leaf certificate");
        (cert.pem(), key.serialize_pem())
    }
}

impl Certificates {
    fn generate(dir: &Path) -> Self {
        let ca = Authority::new("mqtt-binding test CA");
        let (server_cert, server_key) = ca.leaf(&["127.0.0.1", "localhost"], ExtendedKeyUsagePurpose::ServerAuth);
        let (client_cert, client_key) = ca.leaf(&["binding-client"], ExtendedKeyUsagePurpose::ClientAuth);
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
}

/// A mosquitto process with a plain listener and a mutual-TLS listener on 127.0.0.1.
pub struct Mosquitto {
    child: Child,
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
        let (port, tls_port) = (free_port(), free_port());
        let log = dir.path().join("mosquitto.log");
        let mut conf = String::new();
        // Started as root, mosquitto switches to user "mosquitto", which cannot read our
        // temp files; keep it as root then.
        if std::fs::metadata("/proc/self").map(|m| m.uid() == 0).unwrap_or(false) {
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
                conf.push_str(&format!("allow_anonymous false\npassword_file {}\n", file.display()));
            }
            None => conf.push_str("allow_anonymous true\n"),
        }
        conf.push_str(&format!(
            "log_type all\nlog_dest file {}\npersistence false\n\
             listener {port} 127.0.0.1\n\
             listener {tls_port} 127.0.0.1\ncafile {}\ncertfile {}\nkeyfile {}\nrequire_certificate true\n",
            log.display(),
            certs.ca_file.display(),
            certs.server_cert_file.display(),
            certs.server_key_file.display(),
        ));
        let conf_path = dir.path().join("mosquitto.conf");
        std::fs::write(&conf_path, conf).expect("writing mosquitto.conf");
        let child = Command::new(mosquitto_program())
            .arg("-c")
            .arg(&conf_path)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| {
                panic!("cannot start mosquitto ({e}); install it with: sudo apt-get install -y mosquitto mosquitto-clients")
            });
        let broker = Self { child, port, tls_port, certs, dir, log };
        broker.wait_for_log("running");
        broker
    }

    /// The broker's log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Waits until the log contains `text`, failing the test after [`WAIT`].
    pub fn wait_for_log(&self, text: &str) {
        let deadline = std::time::Instant::now() + WAIT;
        loop {
            if self.log().contains(text) {
                return;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "mosquitto's log never showed {text:?}; log:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(10));
        }
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

/// `mosquitto` from PATH, or from /usr/sbin where Debian installs it (not on every user's
/// PATH).
fn mosquitto_program() -> PathBuf {
    let on_path = std::env::var_os("PATH")
        .map(|path| std::env::split_paths(&path).map(|dir| dir.join("mosquitto")).find(|p| p.is_file()));
    on_path.flatten().unwrap_or_else(|| PathBuf::from("/usr/sbin/mosquitto"))
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
        client.subscribe(filter, QoS::ExactlyOnce).await.expect("subscribe queued");
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
        Self { client, messages, task }
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
