//! Prometheus metrics of `mqtt-binding run`, scraped with a real HTTP client around real
//! traffic: invokes that succeed and fail, a delivery the app fails and then accepts, a
//! broker restart, and messages the app never accepts (dead-lettered or left).

use axum::http::StatusCode;
use rumqttc::QoS;

use crate::sidecar::{App, Sidecar, binding_yaml};
use crate::support::{BrokerConfig, Mosquitto, WAIT, eventually, free_port, publish_all, unique};

/// The value of the sample `name{labels...}` in a scrape, if there is one.
pub(crate) fn sample(text: &str, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    text.lines().find_map(|line| {
        let (series, value) = line.rsplit_once(' ')?;
        let (metric, rest) = series.split_once('{').unwrap_or((series, "}"));
        let matches = metric == name
            && labels
                .iter()
                .all(|(key, value)| rest.contains(&format!("{key}=\"{value}\"")));
        matches.then(|| value.parse().ok()).flatten()
    })
}

async fn scrape(sidecar: &Sidecar) -> String {
    let answer = sidecar
        .client
        .get(format!("http://127.0.0.1:{}/metrics", sidecar.metrics))
        .send()
        .await
        .expect("the metrics endpoint answers");
    assert_eq!(answer.status(), StatusCode::OK);
    answer.text().await.expect("text")
}

/// Scrapes until `name{labels}` reaches at least `wanted`, failing the test after WAIT.
async fn scrape_until(
    sidecar: &Sidecar,
    name: &str,
    labels: &[(&str, &str)],
    wanted: f64,
) -> String {
    eventually(WAIT, async || {
        let text = scrape(sidecar).await;
        if sample(&text, name, labels).is_some_and(|value| value >= wanted) {
            return Ok(text);
        }
        Err(format!("{name}{labels:?} never reached {wanted}:\n{text}"))
    })
    .await
}

#[tokio::test]
async fn metrics_follow_invokes_deliveries_and_a_broker_restart() {
    let mut broker = Mosquitto::start_with(BrokerConfig {
        persistence: true,
        ..BrokerConfig::default()
    });
    let dir = tempfile::tempdir().expect("temp dir");
    let topic = format!("metered/{}", unique());
    std::fs::write(
        dir.path().join("orders.yaml"),
        binding_yaml(
            "orders",
            &[
                ("url", &broker.url()),
                ("topic", &topic),
                ("qos", "1"),
                ("consumerID", &format!("metered-{}", unique())),
                ("backOffMaxRetries", "2"),
                ("backOffInterval", "50ms"),
            ],
            None,
        ),
    )
    .expect("component file");
    let app_port = free_port();
    let (app, _serving) = App::serve(app_port, StatusCode::OK, 1).await;
    let sidecar = Sidecar::start(dir.path(), Some(app_port), &[]).await;
    sidecar.healthy().await;
    broker.wait_for_log(&topic).await;

    for _ in 0..3 {
        let (status, body) = sidecar
            .post("orders", r#"{"operation": "create", "data": "counted"}"#)
            .await;
        assert_eq!(status, StatusCode::NO_CONTENT, "{body}");
    }
    let (status, _) = sidecar
        .post(
            "orders",
            r#"{"operation": "create", "data": "bad", "metadata": {"qos": "7"}}"#,
        )
        .await;
    assert_eq!(status, StatusCode::INTERNAL_SERVER_ERROR);
    let (status, _) = sidecar
        .post("nope", r#"{"operation": "create", "data": "x"}"#)
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);

    publish_all(broker.port, &topic, QoS::AtLeastOnce, &[b"event".to_vec()]).await;
    app.wait_for_calls(2).await;

    let ok = [
        ("app_id", "shop"),
        ("component", "orders"),
        ("operation", "create"),
    ];
    let text = scrape_until(
        &sidecar,
        "dapr_component_input_binding_count",
        &[("component", "orders"), ("success", "true")],
        1.0,
    )
    .await;
    let output = |success| {
        let mut labels = ok.to_vec();
        labels.push(("success", success));
        labels
    };
    assert_eq!(
        sample(
            &text,
            "dapr_component_output_binding_count",
            &output("true")
        ),
        Some(3.0),
        "{text}"
    );
    assert_eq!(
        sample(
            &text,
            "dapr_component_output_binding_count",
            &output("false")
        ),
        Some(1.0),
        "{text}"
    );
    assert_eq!(
        sample(
            &text,
            "dapr_component_output_binding_latencies_count",
            &output("true")
        ),
        Some(3.0),
        "{text}"
    );
    assert!(
        sample(
            &text,
            "dapr_component_output_binding_latencies_bucket",
            &[("success", "true"), ("le", "100000")]
        ) == Some(3.0),
        "{text}"
    );
    assert!(
        !text.contains("\"nope\""),
        "an unknown binding is not a label"
    );
    assert_eq!(
        sample(
            &text,
            "dapr_component_input_binding_count",
            &[("component", "orders"), ("success", "false")]
        ),
        Some(1.0),
        "the failed delivery: {text}"
    );
    assert_eq!(
        sample(&text, "mqtt_binding_connected", &[("component", "orders")]),
        Some(1.0)
    );
    assert_eq!(
        sample(
            &text,
            "mqtt_binding_reconnects_total",
            &[("component", "orders")]
        ),
        Some(0.0)
    );
    assert!(
        !text.contains(&topic) && !text.contains("counted"),
        "no topic or payload in the labels"
    );
    assert_eq!(
        sample(
            &text,
            "mqtt_binding_delivery_retries_total",
            &[("component", "orders")]
        ),
        Some(1.0),
        "the delivery the app failed once: {text}"
    );

    broker.restart();
    let text = scrape_until(
        &sidecar,
        "mqtt_binding_reconnects_total",
        &[("component", "orders")],
        1.0,
    )
    .await;
    assert_eq!(
        sample(
            &text,
            "mqtt_binding_component_traps_total",
            &[("component", "orders")]
        ),
        Some(0.0)
    );
    assert!(sidecar.terminate().await.success());
}

#[tokio::test]
async fn messages_the_app_never_accepts_are_counted_as_dead_lettered_or_left() {
    let broker = Mosquitto::start();
    let dir = tempfile::tempdir().expect("temp dir");
    let (lettered, left) = (
        format!("lettered/{}", unique()),
        format!("left/{}", unique()),
    );
    for (name, topic, dead_letter) in [
        ("lettered", &lettered, Some(format!("{lettered}/dead"))),
        ("left", &left, None),
    ] {
        let mut metadata = vec![
            ("url", broker.url()),
            ("topic", topic.clone()),
            ("qos", "1".to_string()),
            ("consumerID", format!("{name}-{}", unique())),
            ("backOffMaxRetries", "1".to_string()),
            ("backOffInterval", "20ms".to_string()),
        ];
        if let Some(dead_letter) = dead_letter {
            metadata.push(("deadLetterTopic", dead_letter));
        }
        let metadata: Vec<(&str, &str)> = metadata
            .iter()
            .map(|(field, value)| (*field, value.as_str()))
            .collect();
        std::fs::write(
            dir.path().join(format!("{name}.yaml")),
            binding_yaml(name, &metadata, None),
        )
        .expect("component file");
    }
    let app_port = free_port();
    let (_app, _serving) = App::serve(app_port, StatusCode::OK, usize::MAX).await;
    let sidecar = Sidecar::start(dir.path(), Some(app_port), &[]).await;
    sidecar.healthy().await;
    broker.wait_for_log(&lettered).await;
    broker.wait_for_log(&left).await;
    publish_all(
        broker.port,
        &lettered,
        QoS::AtLeastOnce,
        &[b"doomed".to_vec()],
    )
    .await;
    publish_all(broker.port, &left, QoS::AtLeastOnce, &[b"doomed".to_vec()]).await;
    let text = scrape_until(
        &sidecar,
        "mqtt_binding_dead_lettered_total",
        &[("component", "lettered")],
        1.0,
    )
    .await;
    let text = if sample(
        &text,
        "mqtt_binding_left_unacknowledged_total",
        &[("component", "left")],
    ) == Some(1.0)
    {
        text
    } else {
        scrape_until(
            &sidecar,
            "mqtt_binding_left_unacknowledged_total",
            &[("component", "left")],
            1.0,
        )
        .await
    };
    for component in ["lettered", "left"] {
        assert_eq!(
            sample(
                &text,
                "mqtt_binding_delivery_retries_total",
                &[("component", component)]
            ),
            Some(1.0),
            "{component}: one retry each: {text}"
        );
    }
    assert_eq!(
        sample(
            &text,
            "mqtt_binding_left_unacknowledged_total",
            &[("component", "lettered")]
        ),
        Some(0.0)
    );
    assert_eq!(
        sample(
            &text,
            "mqtt_binding_dead_lettered_total",
            &[("component", "left")]
        ),
        Some(0.0)
    );
    assert!(sidecar.terminate().await.success());
}
