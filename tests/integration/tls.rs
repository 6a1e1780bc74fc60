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
