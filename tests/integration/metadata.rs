//! Every bad metadata value of docs/BEHAVIOUR.md, through the real component in the host: refused at
//! init with an error naming the field, never a panic or a trap.

use mqtt_binding::BindingError;

use crate::support::binding;

const PEM_CERT: &str =
    "-----BEGIN CERTIFICATE-----\nMIIBszCCAVmgAwIBAgIU\n-----END CERTIFICATE-----\n";
const PEM_KEY: &str = "-----BEGIN PRIVATE KEY-----\nMIGHAgEAMBMGByqGSM49AgEGCCqGSM49AwEHBG0wawIBAQQg\n-----END PRIVATE KEY-----\n";

#[tokio::test]
async fn each_bad_value_is_refused_naming_its_field() {
    // No broker runs: validation happens before any connection is attempted.
    let url = ("url", "tcp://127.0.0.1:1");
    let topic = ("topic", "t");
    let cases: Vec<(Vec<(&str, &str)>, &str)> = vec![
        (vec![topic], "url"),
        (vec![("url", ""), topic], "url"),
        (vec![("url", "localhost:1883"), topic], "url"),
        (vec![("url", "http://h"), topic], "url"),
        (vec![("url", "tcp://"), topic], "url"),
        (vec![("url", "tcp://h:70000"), topic], "url"),
        (vec![("url", "ws://h/mqtt#part"), topic], "url"),
        (
            vec![url, topic, ("protocolVersion", "6")],
            "protocolVersion",
        ),
        (
            vec![url, topic, ("sessionExpiryInterval", "60")],
            "sessionExpiryInterval",
        ),
        (vec![url, topic, ("ttlInSeconds", "-5")], "ttlInSeconds"),
        (vec![url, topic, ("concurrency", "0")], "concurrency"),
        (vec![url], "topic"),
        (vec![url, ("topic", "a/#/b")], "topic"),
        (vec![url, ("topic", "a+")], "topic"),
        (vec![url, ("topic", "$share//x")], "topic"),
        (
            vec![url, topic, ("sharedSubscriptionGroup", "a/b")],
            "sharedSubscriptionGroup",
        ),
        (
            vec![
                url,
                ("topic", "$share/g/x"),
                ("sharedSubscriptionGroup", "g"),
            ],
            "sharedSubscriptionGroup",
        ),
        (vec![url, topic, ("qos", "7")], "qos"),
        (vec![url, topic, ("qos", "one")], "qos"),
        (vec![url, topic, ("retain", "maybe")], "retain"),
        (vec![url, topic, ("cleanSession", "2")], "cleanSession"),
        (
            vec![url, topic, ("backOffMaxRetries", "three")],
            "backOffMaxRetries",
        ),
        (vec![url, topic, ("caCert", "not a certificate")], "caCert"),
        (vec![url, topic, ("clientCert", PEM_CERT)], "clientCert"),
        (vec![url, topic, ("clientKey", PEM_KEY)], "clientKey"),
        (
            vec![
                url,
                topic,
                ("clientCert", PEM_CERT),
                ("clientKey", "garbage"),
            ],
            "clientKey",
        ),
        (vec![url, topic, ("qos", "1"), ("QOS", "2")], "QOS"),
    ];
    for (pairs, field) in cases {
        match binding(&pairs).await {
            Err(BindingError::InvalidMetadata(text)) => {
                assert!(
                    text.starts_with(&format!("metadata field {field:?}: ")),
                    "{pairs:?} gave {text:?}"
                )
            }
            other => panic!("{pairs:?}: expected invalid metadata naming {field:?}, got {other:?}"),
        }
    }
}

#[tokio::test]
async fn consumer_id_is_required_without_an_app_id() {
    let runtime = crate::support::runtime();
    let options = mqtt_binding::BindingOptions {
        name: "no-app-id".into(),
        app_id: String::new(),
        metadata: crate::support::metadata(&[("url", "tcp://127.0.0.1:1"), ("topic", "t")]),
        handler: None,
    };
    match runtime.binding(options).await {
        Err(BindingError::InvalidMetadata(text)) => assert!(
            text.starts_with(r#"metadata field "consumerID": "#),
            "{text}"
        ),
        other => panic!("expected invalid metadata, got {other:?}"),
    }
}

#[tokio::test]
async fn secrets_never_appear_in_errors() {
    let password = "pa55-do-not-print";
    let key =
        "-----BEGIN PRIVATE KEY-----\nc2VjcmV0LWtleS1tYXRlcmlhbA==\n-----END PRIVATE KEY-----\n";
    for pairs in [
        vec![
            ("url", format!("tcp://u:{password}@h:99999")),
            ("topic", "t".into()),
        ],
        vec![
            ("url", format!("tcp://u:{password}@127.0.0.1:1")),
            ("topic", "t".into()),
        ],
        vec![
            ("url", "ssl://127.0.0.1:1".into()),
            ("topic", "t".into()),
            ("clientCert", PEM_CERT.into()),
            ("clientKey", key.into()),
        ],
    ] {
        let pairs: Vec<(&str, &str)> = pairs.iter().map(|(n, v)| (*n, v.as_str())).collect();
        let error = binding(&pairs).await.expect_err("refused");
        let text = format!("{error} {error:?}");
        assert!(
            !text.contains(password) && !text.contains("c2VjcmV0"),
            "secret in {text}"
        );
    }
}

#[tokio::test]
async fn a_metadata_warning_is_logged_once_whatever_the_instances() {
    let broker = crate::support::Mosquitto::start();
    let (captured, _logging) = crate::support::Captured::logs(tracing::Level::DEBUG);

    let ca = crate::support::Authority::new("unused CA").pem();
    let binding = std::sync::Arc::new(
        binding(&[
            ("url", &broker.url()),
            ("topic", "warn/once"),
            ("qos", "1"),
            ("caCert", &ca),
        ])
        .await
        .expect("a warning, not an error"),
    );
    // At QoS 1 each invoke waits for its PUBACK, so the binding makes more output instances,
    // each running `init`; the log shows each one joining the connection.
    let mut invokes = tokio::task::JoinSet::new();
    for _ in 0..16 {
        let binding = binding.clone();
        invokes.spawn(async move {
            let request = mqtt_binding::InvokeRequest {
                operation: "create".into(),
                data: b"x".to_vec(),
                metadata: vec![],
            };
            binding.invoke(request).await
        });
    }
    while let Some(outcome) = invokes.join_next().await {
        outcome.expect("the task ran").expect("invoke");
    }
    binding.close().await;

    let log = captured.text();
    assert!(
        log.contains("joining the binding's connection"),
        "more than one instance ran `init`:\n{log}"
    );
    assert_eq!(
        log.matches("is not a TLS url").count(),
        1,
        "logged once, by the first instance:\n{log}"
    );
}
