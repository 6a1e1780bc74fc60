//! A Dapr-compatible sidecar for MQTT bindings (`mqtt-binding run`): a face over the
//! [`Supervisor`](crate::supervisor::Supervisor). It loads a resources folder, hands each
//! `bindings.mqtt` component to the supervisor (with the app as its event handler and the
//! app's OPTIONS probe as its input gate), and serves Dapr's bindings HTTP API. The HTTP
//! surface is in `http`, the app side in `app`, the folder in `resources`.

mod app;
mod http;
mod resources;
mod secrets;
mod state;

use std::future::Future;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use tokio_util::sync::CancellationToken;

use crate::supervisor::{InputGate, Plan, Supervisor};
use crate::{BindingOptions, EventHandler, Runtime, RuntimeOptions};
use app::App;
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
    pub http_port: u16,
    /// Where Dapr's API listens (daprd's `--dapr-listen-addresses`).
    pub listen_addresses: Vec<std::net::IpAddr>,
    /// daprd's `DAPR_API_TOKEN`: every API request but the health checks must carry it in
    /// the `dapr-api-token` header.
    pub api_token: Option<String>,
    /// daprd's `APP_API_TOKEN`: sent to the app in the `dapr-api-token` header.
    pub app_api_token: Option<String>,
    pub runtime: RuntimeOptions,
}

impl std::fmt::Debug for SidecarOptions {
    /// The tokens are secrets: only whether they are set is shown.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SidecarOptions")
            .field("resources_path", &self.resources_path)
            .field("app_id", &self.app_id)
            .field("app_port", &self.app_port)
            .field("http_port", &self.http_port)
            .field("listen_addresses", &self.listen_addresses)
            .field("api_token", &self.api_token.is_some())
            .field("app_api_token", &self.app_api_token.is_some())
            .finish_non_exhaustive()
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
    for address in &options.listen_addresses {
        let listener = tokio::net::TcpListener::bind((*address, options.http_port))
            .await
            .with_context(|| {
                format!(
                    "listening on {address}:{} (--dapr-listen-addresses, --dapr-http-port)",
                    options.http_port
                )
            })?;
        listeners.push(listener);
    }
    let runtime = Runtime::new(options.runtime.clone())?;
    let app = options
        .app_port
        .map(|port| App::new(port, options.app_api_token.as_deref()))
        .transpose()?;

    let plans = loaded
        .bindings
        .iter()
        .map(|spec| plan(spec, &options.app_id, app.as_ref()))
        .collect();
    let supervisor = Supervisor::start(&runtime, plans);
    let sidecar = Arc::new(Sidecar {
        app_id: options.app_id.clone(),
        app_port: options.app_port,
        components: loaded.components,
        bindings: loaded
            .bindings
            .into_iter()
            .map(|spec| (spec.name.clone(), spec))
            .collect(),
        supervisor: supervisor.clone(),
        failed: loaded.failed,
        skipped: loaded.skipped,
        body_budget: tokio::sync::Semaphore::new(http::BODY_BUDGET),
        api_token: options.api_token.clone(),
    });
    tracing::info!(
        port = options.http_port,
        addresses = ?options.listen_addresses,
        bindings = sidecar.bindings.len(),
        api_token = sidecar.api_token.is_some(),
        "mqtt-binding sidecar listening"
    );

    let stop_http = CancellationToken::new();
    let router = http::router(sidecar.clone());
    let mut servers = tokio::task::JoinSet::new();
    for listener in listeners {
        servers.spawn(http::serve(listener, router.clone(), stop_http.clone()));
    }
    let failure = tokio::select! {
        () = shutdown => None,
        failure = supervisor.failure() => Some(failure),
    };
    tracing::info!("shutting down");
    stop_http.cancel();
    supervisor.shutdown(SHUTDOWN_DEADLINE).await;
    let served = tokio::time::timeout(SHUTDOWN_DEADLINE, async {
        while let Some(served) = servers.join_next().await {
            served?;
        }
        Ok::<(), tokio::task::JoinError>(())
    })
    .await;
    match served {
        Ok(Ok(())) => {}
        Ok(Err(join)) => return Err(join).context("the HTTP server task failed"),
        Err(_) => tracing::warn!("HTTP requests still in flight at the deadline were dropped"),
    }
    match failure {
        Some(failure) => Err(anyhow::anyhow!(failure)),
        None => Ok(()),
    }
}

/// What the supervisor runs for one binding component: the app (if any) receives its
/// events, and its input side runs once the app listens and, unless `direction` says
/// `input`, answers the OPTIONS probe.
fn plan(spec: &BindingSpec, app_id: &str, app: Option<&App>) -> Plan {
    let handler = app.map(|app| Arc::new(app.route(&spec.route)) as Arc<dyn EventHandler>);
    let options = BindingOptions {
        name: spec.name.clone(),
        app_id: app_id.to_string(),
        metadata: spec.metadata.clone(),
        handler,
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

fn input_gate(spec: &BindingSpec, app: App) -> InputGate {
    let (name, route) = (spec.name.clone(), spec.route.clone());
    let probe = spec.direction.input.is_none();
    Box::new(move |stop: CancellationToken| {
        Box::pin(async move {
            if !app.wait_until_listening(&stop).await {
                return false;
            }
            if probe && !app.wants(&route).await {
                tracing::info!(binding = %name, route = %route, "the app does not answer OPTIONS /{route} with 2xx or 405; input not started");
                return false;
            }
            tracing::info!(binding = %name, "delivering input events to POST 127.0.0.1:{}/{route}", app.port());
            true
        })
    })
}
