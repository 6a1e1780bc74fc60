//! Prometheus metrics for the faces (`run`, `pluggable`): daprd's binding metrics under
//! daprd's names, labels and latency buckets, and our own, read from each binding when
//! `/metrics` is scraped.
//!
//! Labels carry only names the operator chose (app ID, component, operation) and fixed words
//! (`true`/`false`): never a topic, a payload or a secret, so their number stays bounded by
//! the components configured.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant};

use prometheus::{Encoder as _, HistogramOpts, HistogramVec, IntCounterVec, IntGaugeVec, Opts};
use tokio_util::sync::CancellationToken;

use crate::{BindingStats, Delivery, Event, EventHandler};

/// daprd's latency buckets, in milliseconds.
const LATENCY_BUCKETS_MS: &[f64] = &[
    1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 8.0, 10.0, 13.0, 16.0, 20.0, 25.0, 30.0, 40.0, 50.0, 65.0, 80.0,
    100.0, 130.0, 160.0, 200.0, 250.0, 300.0, 400.0, 500.0, 650.0, 800.0, 1000.0, 2000.0, 5000.0,
    10000.0, 20000.0, 50000.0, 100000.0,
];

/// The metrics of one process.
#[derive(Debug)]
pub struct Metrics {
    registry: prometheus::Registry,
    app_id: String,
    /// daprd's `namespace` label: `$NAMESPACE`, empty outside Kubernetes.
    namespace: String,
    output_count: IntCounterVec,
    output_latency: HistogramVec,
    input_count: IntCounterVec,
    input_latency: HistogramVec,
}

impl Metrics {
    pub fn new(app_id: &str) -> Self {
        let registry = prometheus::Registry::new();
        let output_labels = ["app_id", "component", "namespace", "operation", "success"];
        let input_labels = ["app_id", "component", "namespace", "success"];
        let output_count = IntCounterVec::new(
            Opts::new(
                "dapr_component_output_binding_count",
                "The number of operations invoked on the output binding component.",
            ),
            &output_labels,
        )
        .expect("a valid metric");
        let output_latency = HistogramVec::new(
            HistogramOpts::new(
                "dapr_component_output_binding_latencies",
                "The latency of the response from the output binding component, in ms.",
            )
            .buckets(LATENCY_BUCKETS_MS.to_vec()),
            &output_labels,
        )
        .expect("a valid metric");
        let input_count = IntCounterVec::new(
            Opts::new(
                "dapr_component_input_binding_count",
                "The number of incoming events arriving from the input binding component.",
            ),
            &input_labels,
        )
        .expect("a valid metric");
        let input_latency = HistogramVec::new(
            HistogramOpts::new(
                "dapr_component_input_binding_latencies",
                "The triggered app event processing latency, in ms.",
            )
            .buckets(LATENCY_BUCKETS_MS.to_vec()),
            &input_labels,
        )
        .expect("a valid metric");
        for metric in [
            Box::new(output_count.clone()) as Box<dyn prometheus::core::Collector>,
            Box::new(output_latency.clone()),
            Box::new(input_count.clone()),
            Box::new(input_latency.clone()),
        ] {
            registry.register(metric).expect("registered once");
        }
        Self {
            registry,
            app_id: app_id.to_string(),
            namespace: std::env::var("NAMESPACE").unwrap_or_default(),
            output_count,
            output_latency,
            input_count,
            input_latency,
        }
    }

    /// One output binding invocation of `component`.
    pub fn output(&self, component: &str, operation: &str, success: bool, took: Duration) {
        let labels = [
            self.app_id.as_str(),
            component,
            &self.namespace,
            operation,
            if success { "true" } else { "false" },
        ];
        self.output_count.with_label_values(&labels).inc();
        self.output_latency
            .with_label_values(&labels)
            .observe(took.as_secs_f64() * 1e3);
    }

    /// One delivery of an input binding event of `component` to the application.
    pub fn input(&self, component: &str, success: bool, took: Duration) {
        let labels = [
            self.app_id.as_str(),
            component,
            &self.namespace,
            if success { "true" } else { "false" },
        ];
        self.input_count.with_label_values(&labels).inc();
        self.input_latency
            .with_label_values(&labels)
            .observe(took.as_secs_f64() * 1e3);
    }

    /// The text exposition: the recorded metrics, and each binding's figures now
    /// (`None` for a binding that is not running).
    pub fn render(&self, bindings: &[(String, Option<BindingStats>)]) -> String {
        let live = prometheus::Registry::new();
        let labels = ["app_id", "component", "namespace"];
        let gauge = |name: &str, help: &str| {
            let gauge = IntGaugeVec::new(Opts::new(name, help), &labels).expect("a valid metric");
            live.register(Box::new(gauge.clone()))
                .expect("registered once");
            gauge
        };
        let counter = |name: &str, help: &str| {
            let counter =
                IntCounterVec::new(Opts::new(name, help), &labels).expect("a valid metric");
            live.register(Box::new(counter.clone()))
                .expect("registered once");
            counter
        };
        let running = gauge(
            "mqtt_binding_running",
            "1 when the binding has started (connected once), 0 while it starts, retries or failed.",
        );
        let connected = gauge(
            "mqtt_binding_connected",
            "1 while the binding's broker connection is up.",
        );
        let reconnects = counter(
            "mqtt_binding_reconnects_total",
            "Broker connections made after the first.",
        );
        let waiting = gauge(
            "mqtt_binding_messages_waiting",
            "Messages received from the broker and not yet delivered to the application.",
        );
        let in_use = gauge(
            "mqtt_binding_output_instances_in_use",
            "Component instances running an invoke now.",
        );
        let traps = counter(
            "mqtt_binding_component_traps_total",
            "Component instances thrown away after a trap (a limit hit, a panic, a fault).",
        );
        let interruptions = counter(
            "mqtt_binding_component_interruptions_total",
            "Of those, the instances stopped for computing past their CPU budget.",
        );
        let retries = counter(
            "mqtt_binding_delivery_retries_total",
            "Deliveries of a message to the application after its first (the binding's retries).",
        );
        let dead_lettered = counter(
            "mqtt_binding_dead_lettered_total",
            "Messages the application never accepted, moved to the dead-letter topic.",
        );
        let left_unacknowledged = counter(
            "mqtt_binding_left_unacknowledged_total",
            "Messages the application never accepted, left unacknowledged for the broker to send again.",
        );
        for (component, stats) in bindings {
            let labels = [self.app_id.as_str(), component, &self.namespace];
            running
                .with_label_values(&labels)
                .set(i64::from(stats.is_some()));
            let stats = stats.unwrap_or_default();
            connected
                .with_label_values(&labels)
                .set(i64::from(stats.connected));
            reconnects
                .with_label_values(&labels)
                .inc_by(stats.reconnects);
            waiting
                .with_label_values(&labels)
                .set(i64::try_from(stats.messages_waiting).unwrap_or(i64::MAX));
            in_use
                .with_label_values(&labels)
                .set(i64::try_from(stats.output_instances_in_use).unwrap_or(i64::MAX));
            traps.with_label_values(&labels).inc_by(stats.traps);
            interruptions
                .with_label_values(&labels)
                .inc_by(stats.interruptions);
            retries
                .with_label_values(&labels)
                .inc_by(stats.delivery_retries);
            dead_lettered
                .with_label_values(&labels)
                .inc_by(stats.dead_lettered);
            left_unacknowledged
                .with_label_values(&labels)
                .inc_by(stats.left_unacknowledged);
        }
        let mut families = self.registry.gather();
        families.extend(live.gather());
        let mut text = Vec::new();
        prometheus::TextEncoder::new()
            .encode(&families, &mut text)
            .expect("encoding into memory");
        String::from_utf8(text).expect("the text format is UTF-8")
    }
}

/// An event handler that records each delivery in [`Metrics::input`].
pub struct Measured {
    pub inner: Arc<dyn EventHandler>,
    pub metrics: Arc<Metrics>,
    pub component: String,
}

impl std::fmt::Debug for Measured {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Measured")
            .field("component", &self.component)
            .finish_non_exhaustive()
    }
}

impl EventHandler for Measured {
    fn deliver(&self, event: Event) -> Delivery<'_> {
        Box::pin(async move {
            let started = Instant::now();
            let outcome = self.inner.deliver(event).await;
            self.metrics
                .input(&self.component, outcome.is_ok(), started.elapsed());
            outcome
        })
    }
}

/// What `/metrics` asks for at each scrape: each binding's name and figures.
pub type Snapshot = Arc<
    dyn Fn() -> Pin<Box<dyn Future<Output = Vec<(String, Option<BindingStats>)>> + Send>>
        + Send
        + Sync,
>;

/// The metrics endpoint's listener, if metrics are on (`--metrics-port`): bound before
/// anything else starts, so that a port in use fails the start with the flag named.
pub async fn bind(
    address: Option<std::net::SocketAddr>,
) -> anyhow::Result<Option<tokio::net::TcpListener>> {
    use anyhow::Context as _;
    let Some(address) = address else {
        return Ok(None);
    };
    let listener = tokio::net::TcpListener::bind(address)
        .await
        .with_context(|| format!("listening on {address} for metrics (--metrics-port)"))?;
    Ok(Some(listener))
}

/// Serves `GET /metrics` (Prometheus text format) on `listener` until `stop`.
pub async fn serve(
    listener: tokio::net::TcpListener,
    metrics: Arc<Metrics>,
    snapshot: Snapshot,
    stop: CancellationToken,
) -> std::io::Result<()> {
    let router = axum::Router::new().route(
        "/metrics",
        axum::routing::get(move || {
            let (metrics, snapshot) = (metrics.clone(), snapshot.clone());
            async move {
                let bindings = snapshot().await;
                (
                    [(
                        axum::http::header::CONTENT_TYPE,
                        "text/plain; version=0.0.4; charset=utf-8",
                    )],
                    metrics.render(&bindings),
                )
            }
        }),
    );
    axum::serve(listener, router)
        .with_graceful_shutdown(stop.cancelled_owned())
        .await
}
