//! TLS: mutual TLS with generated certificates, and the ways it is refused.

use mqtt_binding::{BindingError, BrokerError};
use rcgen::ExtendedKeyUsagePurpose;

use crate::support::{Authority, Mosquitto, Subscriber, binding, create, unique};

#[tokio::test]
async fn mutual_tls_publish_arrives() {
    let broker = Mosquitto::start();
    let topic = format!("tls/{}", unique());
    let mut subscriber = Subscriber::start(broker.port, &topic).await;
    let certs = &broker.certs;
    let mut binding = binding(&[
        ("url", &broker.tls_url()),
        ("topic", &topic),
        ("qos", "1"),
        ("caCert", &certs.ca_pem),
        ("clientCert", &certs.client_cert_pem),
        ("clientKey", &certs.client_key_pem),
    ])
    .await
    .expect("init over mutual TLS");
    create(&mut binding, b"over tls", &[])
        .await
        .expect("create");
    assert_eq!(&subscriber.next().await.payload[..], b"over tls");
    binding.close().await;
}

#[tokio::test]
async fn untrusted_server_certificate_is_refused() {
    let broker = Mosquitto::start();
    let other_ca = Authority::new("some other CA");
    let certs = &broker.certs;
    let outcome = binding(&[
        ("url", &broker.tls_url()),
        ("topic", "t"),
        ("caCert", &other_ca.pem()),
        ("clientCert", &certs.client_cert_pem),
        ("clientKey", &certs.client_key_pem),
    ])
    .await;
    match outcome {
        Err(error @ BindingError::Broker(BrokerError::Tls(_))) => assert_eq!(
            error.to_string(),
            "tls handshake with the broker failed: invalid peer certificate: UnknownIssuer"
        ),
        other => panic!("expected a TLS error, got {other:?}"),
    }
}

#[tokio::test]
async fn system_roots_do_not_trust_a_private_ca() {
    let broker = Mosquitto::start();
    match binding(&[("url", &broker.tls_url()), ("topic", "t")]).await {
        Err(BindingError::Broker(BrokerError::Tls(text))) => {
            assert!(text.contains("UnknownIssuer"), "{text}")
        }
        Err(BindingError::InvalidMetadata(text)) => {
            assert!(text.contains("no system CA certificates"), "{text}")
        }
        other => panic!("expected a TLS error, got {other:?}"),
    }
}

#[tokio::test]
async fn client_certificate_not_matching_its_key_is_refused_at_init() {
    let broker = Mosquitto::start();
    let certs = &broker.certs;
    let (_, unrelated_key) = Authority::new("x").leaf(&["x"], ExtendedKeyUsagePurpose::ClientAuth);
    let outcome = binding(&[
        ("url", &broker.tls_url()),
        ("topic", "t"),
        ("caCert", &certs.ca_pem),
        ("clientCert", &certs.client_cert_pem),
        ("clientKey", &unrelated_key),
    ])
    .await;
    match outcome {
        Err(BindingError::InvalidMetadata(text)) => assert_eq!(
            text,
            r#"metadata field "clientCert": the certificate does not match the private key in client-key"#
        ),
        other => panic!("expected invalid metadata, got {other:?}"),
    }
}

#[tokio::test]
async fn broker_requiring_a_client_certificate_refuses_a_client_without_one() {
    let broker = Mosquitto::start();
    let outcome = binding(&[
        ("url", &broker.tls_url()),
        ("topic", "t"),
        ("caCert", &broker.certs.ca_pem),
    ])
    .await;
    match outcome {
        Err(error @ BindingError::Broker(BrokerError::Tls(_))) => assert_eq!(
            error.to_string(),
            "tls handshake with the broker failed: received fatal alert: CertificateRequired"
        ),
        other => panic!("expected a TLS error, got {other:?}"),
    }
}

/// A PKI made as operators make one, with the `openssl` command line: a root CA, an
/// intermediate CA, a server certificate for 127.0.0.1, and client certificates signed the
/// way mosquitto's TLS guide does it (`openssl x509 -req` without extensions, which makes
/// X.509 version 1 certificates with OpenSSL 3).
pub(crate) struct OpensslPki {
    dir: tempfile::TempDir,
}

/// How a client key is written.
#[derive(Clone, Copy)]
pub(crate) enum ClientKey {
    /// `-----BEGIN RSA PRIVATE KEY-----`
    RsaPkcs1,
    /// `-----BEGIN PRIVATE KEY-----`
    RsaPkcs8,
    /// `-----BEGIN EC PRIVATE KEY-----`
    EcSec1,
}

impl OpensslPki {
    pub(crate) fn make() -> Self {
        let pki = Self {
            dir: tempfile::tempdir().expect("temp dir"),
        };
        pki.openssl(&[
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            "ca.key",
            "-out",
            "ca.pem",
            "-days",
            "2",
            "-subj",
            "/CN=openssl test root",
        ]);
        pki.write(
            "ca.ext",
            "basicConstraints=critical,CA:TRUE\nkeyUsage=critical,keyCertSign,cRLSign\n",
        );
        pki.rsa_key("intermediate.key");
        pki.sign(
            "intermediate",
            "/CN=openssl test intermediate",
            "ca",
            Some("ca.ext"),
        );
        pki.write("server.ext", "subjectAltName=IP:127.0.0.1\n");
        pki.rsa_key("server.key");
        pki.sign("server", "/CN=127.0.0.1", "ca", Some("server.ext"));
        pki
    }

    /// A 2048-bit RSA key in PKCS#8 PEM (`-----BEGIN PRIVATE KEY-----`).
    fn rsa_key(&self, file: &str) {
        self.openssl(&[
            "genpkey",
            "-algorithm",
            "RSA",
            "-pkeyopt",
            "rsa_keygen_bits:2048",
            "-out",
            file,
        ]);
    }

    /// Makes `NAME.pem` for the key `NAME.key`, with `subject`, signed by the CA `ISSUER`
    /// (`ISSUER.pem`, `ISSUER.key`); without `extensions`, as mosquitto's TLS guide does it,
    /// which makes an X.509 version 1 certificate.
    fn sign(&self, name: &str, subject: &str, issuer: &str, extensions: Option<&str>) {
        let (key, csr, cert) = (
            format!("{name}.key"),
            format!("{name}.csr"),
            format!("{name}.pem"),
        );
        let (ca, ca_key) = (format!("{issuer}.pem"), format!("{issuer}.key"));
        self.openssl(&["req", "-new", "-key", &key, "-out", &csr, "-subj", subject]);
        let mut args = vec![
            "x509",
            "-req",
            "-in",
            &csr,
            "-CA",
            &ca,
            "-CAkey",
            &ca_key,
            "-CAcreateserial",
            "-out",
            &cert,
            "-days",
            "2",
        ];
        if let Some(extensions) = extensions {
            args.extend(["-extfile", extensions]);
        }
        self.openssl(&args);
    }

    /// A client key and a version 1 certificate for it, signed by the root or by the
    /// intermediate (then the chain is leaf and intermediate): (certificate chain, key) PEM.
    pub(crate) fn client(
        &self,
        name: &str,
        key: ClientKey,
        by_intermediate: bool,
    ) -> (String, String) {
        let key_file = format!("{name}.key");
        match key {
            ClientKey::RsaPkcs1 => {
                self.openssl(&["genrsa", "-traditional", "-out", &key_file, "2048"])
            }
            ClientKey::RsaPkcs8 => self.rsa_key(&key_file),
            ClientKey::EcSec1 => self.openssl(&[
                "ecparam",
                "-name",
                "prime256v1",
                "-genkey",
                "-noout",
                "-out",
                &key_file,
            ]),
        }
        let issuer = if by_intermediate {
            "intermediate"
        } else {
            "ca"
        };
        self.sign(name, &format!("/CN={name}"), issuer, None);
        let cert = format!("{name}.pem");
        let text = std::process::Command::new("openssl")
            .args(["x509", "-noout", "-text", "-in"])
            .arg(self.path(&cert))
            .output()
            .expect("openssl runs");
        assert!(
            String::from_utf8_lossy(&text.stdout).contains("Version: 1 (0x0)"),
            "openssl made a version 1 certificate, as mosquitto's guide does"
        );
        let mut chain = self.read(&cert);
        if by_intermediate {
            chain.push_str(&self.read("intermediate.pem"));
        }
        (chain, self.read(&key_file))
    }

    fn openssl(&self, args: &[&str]) {
        let output = std::process::Command::new("openssl")
            .args(args)
            .current_dir(self.dir.path())
            .output()
            .expect("openssl runs (apt-get install openssl)");
        assert!(
            output.status.success(),
            "openssl {args:?}: {}",
            String::from_utf8_lossy(&output.stderr)
        );
    }

    fn path(&self, name: &str) -> std::path::PathBuf {
        self.dir.path().join(name)
    }

    fn write(&self, name: &str, text: &str) {
        std::fs::write(self.path(name), text).expect("write");
    }

    pub(crate) fn read(&self, name: &str) -> String {
        std::fs::read_to_string(self.path(name)).expect("read")
    }

    /// A mosquitto listener for `require_certificate` with this PKI, as configuration lines.
    pub(crate) fn listener(&self, port: u16) -> String {
        format!(
            "listener {port} 127.0.0.1\ncafile {}\ncertfile {}\nkeyfile {}\nrequire_certificate true\n",
            self.path("ca.pem").display(),
            self.path("server.pem").display(),
            self.path("server.key").display(),
        )
    }
}

/// Client certificates made with `openssl x509 -req` (version 1), with RSA keys in PKCS#1
/// and PKCS#8 and an EC key in SEC1, signed by the root or through an intermediate CA: the
/// binding connects with each and publishes.
#[tokio::test]
async fn client_certificates_made_by_the_openssl_command_line_are_accepted() {
    let pki = OpensslPki::make();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .expect("a free port")
        .port();
    let broker = Mosquitto::start_with(crate::support::BrokerConfig {
        extra: pki.listener(port),
        ..Default::default()
    });
    let topic = format!("openssl/{}", unique());
    let mut subscriber = Subscriber::start(broker.port, &topic).await;
    let ca = pki.read("ca.pem");
    let cases = [
        ("rsa-pkcs1", ClientKey::RsaPkcs1, false),
        ("rsa-pkcs8", ClientKey::RsaPkcs8, false),
        ("ec-sec1-via-intermediate", ClientKey::EcSec1, true),
    ];
    for (name, key, by_intermediate) in cases {
        let (chain, key) = pki.client(name, key, by_intermediate);
        let mut binding = binding(&[
            ("url", &format!("ssl://127.0.0.1:{port}")),
            ("topic", &topic),
            ("qos", "1"),
            ("caCert", &ca),
            ("clientCert", &chain),
            ("clientKey", &key),
        ])
        .await
        .unwrap_or_else(|e| panic!("{name}: init over mutual TLS: {e:#}"));
        create(&mut binding, name.as_bytes(), &[])
            .await
            .unwrap_or_else(|e| panic!("{name}: create: {e:#}"));
        assert_eq!(&subscriber.next().await.payload[..], name.as_bytes());
        binding.close().await;
    }
}
