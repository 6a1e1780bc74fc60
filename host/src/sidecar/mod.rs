//! A Dapr-compatible sidecar for MQTT bindings (`mqtt-binding run`): a face over the
//! [`Registry`](crate::registry::Registry). It loads a resources folder, hands each
//! `bindings.mqtt` component to the registry (with the app as its event handler and the
//! app's say as its input gate), and serves Dapr's bindings API over HTTP and gRPC. The
//! HTTP surface is in `http`, the gRPC one in `grpc`; the app is `app` (HTTP) or `grpc_app`
//! (gRPC); the folder is `resources`.

mod app;
mod grpc;
mod grpc_app;
mod http;
pub mod proto;
mod resources;
mod secrets;
mod state;
mod trace;

use std::future::Future;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use tokio_util::sync::CancellationToken;

use crate::metrics::Metrics;
use crate::registry::{InputGate, Plan, Registry};
use crate::{BindingOptions, EventHandler, Runtime, RuntimeOptions};
use app::App;
use grpc_app::GrpcApp;
use resources::BindingSpec;
use state::Sidecar;

/// How long shutdown waits for input bindings to settle the message in hand.
const SHUTDOWN_DEADLINE: Duration = Duration::from_secs(5);

/// What `mqtt-binding run` is given.
#[derive(Clone)]
pub struct SidecarOptions {
    pub resources_path: PathBuf,
    pub app_id: String,
    pub app_port: Option<u16>,
    /// How the app is spoken to (daprd's `--app-protocol`).
    pub app_protocol: AppProtocol,
    pub http_port: u16,
    /// The port of Dapr's gRPC API (daprd's `--dapr-grpc-port`).
    pub grpc_port: u16,
    /// Where Dapr's API listens (daprd's `--dapr-listen-addresses`).
    pub listen_addresses: Vec<std::net::IpAddr>,
    /// daprd's `DAPR_API_TOKEN`: every API request but the health checks must carry it in
    /// the `dapr-api-token` header.
    pub api_token: Option<String>,
    /// daprd's `APP_API_TOKEN`: sent to the app in the `dapr-api-token` header.
    pub app_api_token: Option<String>,
    /// Where Prometheus metrics are served (`GET /metrics`); `None` serves none.
    pub metrics: Option<std::net::SocketAddr>,
    pub runtime: RuntimeOptions,
}

impl std::fmt::Debug for SidecarOptions {
    /// The tokens are secrets: only whether they are set is shown.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SidecarOptions")
            .field("resources_path", &self.resources_path)
            .field("app_id", &self.app_id)
            .field("app_port", &self.app_port)
            .field("app_protocol", &self.app_protocol)
            .field("http_port", &self.http_port)
            .field("grpc_port", &self.grpc_port)
            .field("listen_addresses", &self.listen_addresses)
            .field("api_token", &self.api_token.is_some())
            .field("app_api_token", &self.app_api_token.is_some())
            .field("metrics", &self.metrics)
            .finish_non_exhaustive()
    }
}

/// How the sidecar talks to the app.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum AppProtocol {
    /// `POST /{route}` for each event, after an `OPTIONS` probe.
    #[default]
    Http,
    /// Dapr's `AppCallback` gRPC service.
    Grpc,
}

impl std::fmt::Display for AppProtocol {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            AppProtocol::Http => "http",
            AppProtocol::Grpc => "grpc",
        })
    }
}

impl std::str::FromStr for AppProtocol {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        match text {
            "http" => Ok(AppProtocol::Http),
            "grpc" => Ok(AppProtocol::Grpc),
            other => Err(format!("{other:?}: expected http or grpc")),
        }
    }
}

/// The app, in the protocol it speaks.
#[derive(Debug, Clone)]
enum AppChannel {
    Http(App),
    Grpc(GrpcApp),
}

impl AppChannel {
    fn port(&self) -> u16 {
        match self {
            AppChannel::Http(app) => app.port(),
            AppChannel::Grpc(app) => app.port(),
        }
    }

    /// The handler of `spec`'s events.
    fn handler(&self, spec: &BindingSpec) -> Arc<dyn EventHandler> {
        match self {
            AppChannel::Http(app) => Arc::new(app.route(&spec.route)),
            AppChannel::Grpc(app) => Arc::new(app.route(&spec.name)),
        }
    }

    /// Whether the app wants `spec`'s events, when `direction` does not say.
    async fn wants(&self, spec_name: &str, route: &str) -> bool {
        match self {
            AppChannel::Http(app) => app.wants(route).await,
            AppChannel::Grpc(app) => app.wants(spec_name).await,
        }
    }
}

/// Runs the sidecar until `shutdown` completes, then stops accepting requests, lets input
/// bindings settle, disconnects, and returns.
pub async fn run(
    options: SidecarOptions,
    shutdown: impl Future<Output = ()>,
) -> anyhow::Result<()> {
    let loaded = resources::load(&options.resources_path)?;
    for (component, error) in &loaded.failed {
        tracing::error!(component = %component.name, "component not started: {error}");
    }
    // As daprd: a component that cannot start stops the sidecar, unless it says
    // `spec.ignoreErrors: true`.
    if let Some((component, error)) = loaded.failed.iter().find(|(c, _)| !c.ignore_errors) {
        anyhow::bail!(
            "component {:?} cannot start: {error} (set spec.ignoreErrors: true to run without it)",
            component.name
        );
    }
    let mut listeners = Vec::new();
    let mut grpc_listeners = Vec::new();
    for address in &options.listen_addresses {
        for (port, flag, into) in [
            (options.http_port, "--dapr-http-port", &mut listeners),
            (options.grpc_port, "--dapr-grpc-port", &mut grpc_listeners),
        ] {
            let listener = tokio::net::TcpListener::bind((*address, port))
                .await
                .with_context(|| {
                    format!("listening on {address}:{port} (--dapr-listen-addresses, {flag})")
                })?;
            into.push(listener);
        }
    }
    let metrics_listener = crate::metrics::bind(options.metrics).await?;
    let metrics = Arc::new(Metrics::new(&options.app_id));
    let runtime = Runtime::new(options.runtime.clone())?;
    let token = options.app_api_token.as_deref();
    let app = match options.app_port {
        None => None,
        Some(port) => Some(match options.app_protocol {
            AppProtocol::Http => AppChannel::Http(App::new(port, token)?),
            AppProtocol::Grpc => AppChannel::Grpc(GrpcApp::new(port, token)?),
        }),
    };

    let registry = Registry::new(runtime, metrics);
    for spec in &loaded.bindings {
        let plan = plan(spec, &options.app_id, app.as_ref());
        registry.insert(plan, SHUTDOWN_DEADLINE).await;
    }
    let sidecar = Arc::new(Sidecar {
        app_id: options.app_id.clone(),
        app_port: options.app_port,
        app_protocol: options.app_protocol,
        components: loaded.components,
        bindings: loaded
            .bindings
            .into_iter()
            .map(|spec| (spec.name.clone(), spec))
            .collect(),
        registry: registry.clone(),
        failed: loaded.failed,
        skipped: loaded.skipped,
        body_budget: tokio::sync::Semaphore::new(http::BODY_BUDGET),
        api_token: options.api_token.clone(),
    });
    if let Some(AppChannel::Grpc(app)) = &app {
        app.attach(&sidecar);
    }
    tracing::info!(
        port = options.http_port,
        grpc_port = options.grpc_port,
        addresses = ?options.listen_addresses,
        bindings = sidecar.bindings.len(),
        api_token = sidecar.api_token.is_some(),
        "mqtt-binding sidecar listening"
    );

    let stop_http = CancellationToken::new();
    let api = http::Api::new(sidecar.clone());
    let mut servers = tokio::task::JoinSet::new();
    for listener in listeners {
        servers.spawn(http::serve(listener, api.clone(), stop_http.clone()));
    }
    let mut grpc_servers = tokio::task::JoinSet::new();
    for listener in grpc_listeners {
        grpc_servers.spawn(grpc::serve(listener, sidecar.clone(), stop_http.clone()));
    }
    if let Some(listener) = metrics_listener {
        registry.serve_metrics(listener, stop_http.clone());
    }
    let failure = tokio::select! {
        () = shutdown => None,
        failure = registry.failure() => Some(failure),
    };
    tracing::info!("shutting down");
    stop_http.cancel();
    registry.shutdown(SHUTDOWN_DEADLINE).await;
    let served = tokio::time::timeout(SHUTDOWN_DEADLINE, async {
        while let Some(served) = servers.join_next().await {
            served?;
        }
        while let Some(served) = grpc_servers.join_next().await {
            if let Err(error) = served? {
                tracing::error!("the gRPC API stopped: {error}");
            }
        }
        Ok::<(), tokio::task::JoinError>(())
    })
    .await;
    match served {
        Ok(Ok(())) => {}
        Ok(Err(join)) => return Err(join).context("a server task failed"),
        Err(_) => tracing::warn!("requests still in flight at the deadline were dropped"),
    }
    match failure {
        Some(failure) => Err(anyhow::anyhow!(failure)),
        None => Ok(()),
    }
}

/// What the registry runs for one binding component: the app (if any) receives its
/// events, and its input side runs once the app listens and, unless `direction` says
/// `input`, says it wants them (HTTP: the OPTIONS probe; gRPC: `ListInputBindings`).
fn plan(spec: &BindingSpec, app_id: &str, app: Option<&AppChannel>) -> Plan {
    let options = BindingOptions {
        name: spec.name.clone(),
        app_id: app_id.to_string(),
        metadata: spec.metadata.clone(),
        handler: app.map(|app| app.handler(spec)),
    };
    let wants_input = spec.direction.input != Some(false);
    let input = match app.filter(|_| wants_input) {
        Some(app) => Some(input_gate(spec, app.clone())),
        None => {
            if spec.direction.input == Some(true) {
                tracing::warn!(binding = %spec.name, "direction includes input but no --app-port was given; input not started");
            }
            None
        }
    };
    Plan {
        options,
        input,
        ignore_errors: spec.ignore_errors,
    }
}

fn input_gate(spec: &BindingSpec, app: AppChannel) -> InputGate {
    let (name, route) = (spec.name.clone(), spec.route.clone());
    let ask = spec.direction.input.is_none();
    Box::new(move |stop: CancellationToken| {
        Box::pin(async move {
            if !app::wait_until_listening(app.port(), &stop).await {
                return false;
            }
            if ask && !app.wants(&name, &route).await {
                tracing::info!(binding = %name, "the app does not want this binding's events (HTTP: OPTIONS /{route} answered neither 2xx nor 405; gRPC: not in ListInputBindings); input not started");
                return false;
            }
            match &app {
                AppChannel::Http(app) => {
                    tracing::info!(binding = %name, "delivering input events to POST 127.0.0.1:{}/{route}", app.port())
                }
                AppChannel::Grpc(app) => {
                    tracing::info!(binding = %name, "delivering input events to OnBindingEvent at 127.0.0.1:{}", app.port())
                }
            }
            true
        })
    })
}
