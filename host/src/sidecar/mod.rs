//! A Dapr-compatible sidecar for MQTT bindings (`mqtt-binding run`): loads a resources
//! folder, runs each `bindings.mqtt` component in its own instances, serves Dapr's bindings
//! HTTP API, and delivers input events to the app as daprd does. The HTTP surface is in
//! `http`, the app side in `app`, the folder in `resources`.

mod app;
mod http;
mod resources;
mod secrets;

use std::collections::BTreeMap;
use std::future::Future;
use std::path::PathBuf;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use anyhow::Context as _;
use tokio_util::sync::CancellationToken;

use crate::{
    Binding, BindingError, BindingOptions, BrokerError, EventHandler, Runtime, RuntimeOptions,
};
use app::App;
use resources::{BindingSpec, ComponentSummary};

/// Retrying a binding that cannot start yet (broker down): from 1 s, doubling, up to 60 s.
const START_RETRY_FIRST: Duration = Duration::from_secs(1);
const START_RETRY_MAX: Duration = Duration::from_secs(60);
/// How long shutdown waits for input bindings to settle the message in hand.
const SHUTDOWN_DEADLINE: Duration = Duration::from_secs(5);

/// What `mqtt-binding run` is given.
#[derive(Debug, Clone)]
pub struct SidecarOptions {
    pub resources_path: PathBuf,
    pub app_id: String,
    pub app_port: Option<u16>,
    pub http_port: u16,
    pub runtime: RuntimeOptions,
}

/// The sidecar's shared state, read by the HTTP handlers.
pub(crate) struct Sidecar {
    app_id: String,
    app_port: Option<u16>,
    components: Vec<ComponentSummary>,
    bindings: BTreeMap<String, Slot>,
    /// Components that failed before starting (bad folder content), with the reason.
    failed: Vec<(ComponentSummary, String)>,
    /// Files, or documents in them, holding no usable component, with the reason.
    skipped: Vec<(String, String)>,
    /// Request body bytes held by invokes in progress, one permit per byte (see
    /// `http::BODY_BUDGET`).
    body_budget: tokio::sync::Semaphore,
}

pub(crate) struct Slot {
    spec: BindingSpec,
    state: RwLock<SlotState>,
}

#[derive(Clone)]
pub(crate) enum SlotState {
    Starting,
    Up(Arc<Binding>),
    Failed(String),
}

impl Slot {
    fn set(&self, state: SlotState) {
        *self
            .state
            .write()
            .unwrap_or_else(|poisoned| poisoned.into_inner()) = state;
    }

    pub(crate) fn get(&self) -> SlotState {
        self.state
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .clone()
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
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", options.http_port))
        .await
        .with_context(|| {
            format!(
                "listening on 127.0.0.1:{} (--dapr-http-port)",
                options.http_port
            )
        })?;
    let runtime = Runtime::new(options.runtime.clone())?;
    let app = options.app_port.map(App::new).transpose()?;

    let bindings = loaded
        .bindings
        .iter()
        .map(|spec| {
            (
                spec.name.clone(),
                Slot {
                    spec: spec.clone(),
                    state: RwLock::new(SlotState::Starting),
                },
            )
        })
        .collect();
    let sidecar = Arc::new(Sidecar {
        app_id: options.app_id.clone(),
        app_port: options.app_port,
        components: loaded.components,
        bindings,
        failed: loaded.failed,
        skipped: loaded.skipped,
        body_budget: tokio::sync::Semaphore::new(http::BODY_BUDGET),
    });
    let stop = CancellationToken::new();
    let (fatal_tx, mut fatal) = tokio::sync::mpsc::unbounded_channel();
    let mut tasks = tokio::task::JoinSet::new();
    for name in sidecar.bindings.keys() {
        tasks.spawn(serve_binding(
            sidecar.clone(),
            name.clone(),
            runtime.clone(),
            app.clone(),
            stop.clone(),
            fatal_tx.clone(),
        ));
    }
    drop(fatal_tx);
    tracing::info!(
        port = options.http_port,
        bindings = sidecar.bindings.len(),
        "mqtt-binding sidecar listening"
    );

    let server = tokio::spawn(http::serve(
        listener,
        http::router(sidecar.clone()),
        stop.clone(),
    ));
    let failure = tokio::select! {
        () = shutdown => None,
        Some(failure) = fatal.recv() => Some(failure),
    };
    tracing::info!("shutting down");
    stop.cancel();
    for slot in sidecar.bindings.values() {
        if let SlotState::Up(binding) = slot.get() {
            binding.shutdown();
        }
    }
    let settled = tokio::time::timeout(SHUTDOWN_DEADLINE, async {
        while tasks.join_next().await.is_some() {}
    })
    .await;
    if settled.is_err() {
        tracing::warn!("input bindings did not settle within {SHUTDOWN_DEADLINE:?}; stopping them");
        tasks.abort_all();
    }
    for slot in sidecar.bindings.values() {
        if let SlotState::Up(binding) = slot.get() {
            binding.close().await;
        }
    }
    match tokio::time::timeout(SHUTDOWN_DEADLINE, server).await {
        Ok(Ok(())) => {}
        Ok(Err(join)) => return Err(join).context("the HTTP server task failed"),
        Err(_) => tracing::warn!("HTTP requests still in flight at the deadline were dropped"),
    }
    match failure {
        Some(failure) => Err(anyhow::anyhow!(failure)),
        None => Ok(()),
    }
}

/// Starts one binding (retrying while its broker is unreachable), then runs its input side
/// if the app wants it.
async fn serve_binding(
    sidecar: Arc<Sidecar>,
    name: String,
    runtime: Runtime,
    app: Option<App>,
    stop: CancellationToken,
    fatal: tokio::sync::mpsc::UnboundedSender<String>,
) {
    let slot = &sidecar.bindings[&name];
    let spec = &slot.spec;
    let handler = app
        .as_ref()
        .map(|app| Arc::new(app.route(&spec.route)) as Arc<dyn EventHandler>);
    let mut wait = START_RETRY_FIRST;
    let binding = loop {
        let options = BindingOptions {
            name: name.clone(),
            app_id: sidecar.app_id.clone(),
            metadata: spec.metadata.clone(),
            handler: handler.clone(),
        };
        let error = match runtime.binding(options).await {
            Ok(binding) => break Arc::new(binding),
            Err(error) => error,
        };
        let message = chain(&error);
        slot.set(SlotState::Failed(message.clone()));
        if !retryable(&error) {
            tracing::error!(binding = %name, "cannot start: {message}");
            if !spec.ignore_errors {
                let _ = fatal.send(format!(
                    "binding {name:?} cannot start: {message} (set spec.ignoreErrors: true to run without it)"
                ));
            }
            return;
        }
        tracing::warn!(binding = %name, retry_in = ?wait, "cannot start yet: {message}");
        tokio::select! {
            () = tokio::time::sleep(wait) => {}
            () = stop.cancelled() => return,
        }
        wait = (wait * 2).min(START_RETRY_MAX);
    };
    slot.set(SlotState::Up(binding.clone()));
    tracing::info!(binding = %name, output = spec.direction.output, "started");

    let wants_input = spec.direction.input != Some(false);
    let Some(app) = app.filter(|_| wants_input) else {
        if spec.direction.input == Some(true) {
            tracing::warn!(binding = %name, "direction includes input but no --app-port was given; input not started");
        }
        return;
    };
    if !app.wait_until_listening(&stop).await {
        return;
    }
    if spec.direction.input.is_none() && !app.wants(&spec.route).await {
        tracing::info!(binding = %name, route = %spec.route, "the app does not answer OPTIONS /{} with 2xx or 405; input not started", spec.route);
        return;
    }
    tracing::info!(binding = %name, "delivering input events to POST 127.0.0.1:{}/{}", app.port(), spec.route);
    let mut wait = START_RETRY_FIRST;
    while !stop.is_cancelled() {
        match binding.read().await {
            Ok(()) => return,
            Err(error) => {
                tracing::error!(binding = %name, retry_in = ?wait, "input stopped: {}", chain(&error));
                tokio::select! {
                    () = tokio::time::sleep(wait) => {}
                    () = stop.cancelled() => return,
                }
                wait = (wait * 2).min(START_RETRY_MAX);
            }
        }
    }
}

/// A broker that is down or slow may come back; bad metadata, TLS or credentials will not.
fn retryable(error: &BindingError) -> bool {
    matches!(
        error,
        BindingError::Broker(BrokerError::Unreachable(_) | BrokerError::Timeout(_))
    )
}

/// An error and its causes on one line, each said once.
fn chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}
