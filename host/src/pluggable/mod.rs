//! The binding as a Dapr pluggable component (`mqtt-binding pluggable`): Dapr's
//! `InputBinding` and `OutputBinding` gRPC services, and the v1alpha reflection service
//! daprd discovers them with, on the Unix socket `FOLDER/NAME.sock`. daprd then loads
//! component files of type `bindings.NAME`. Each component instance it initialises is a
//! binding in the process's one registry, under the instance's name (`instances` pairs
//! daprd's `Init`s and tracks its connections); `Read` streams are bridged to the
//! binding's deliveries in `reader`; the socket file and its connections are `socket`'s.

mod instances;
pub mod proto;
mod reader;
mod services;
mod socket;

use std::future::Future;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use tokio::sync::mpsc;

use crate::metrics::Metrics;
use crate::registry::Registry;
use crate::{Runtime, RuntimeOptions};
use instances::Instances;
use services::Services;
use socket::SocketFile;

/// The socket's name when none is given: components then say `type: bindings.mqtt-wasm`.
pub const DEFAULT_NAME: &str = "mqtt-wasm";
/// daprd's folder when `DAPR_COMPONENTS_SOCKETS_FOLDER` is not set.
pub const DEFAULT_SOCKET_FOLDER: &str = "/tmp/dapr-components-sockets";

/// How long shutdown waits for the calls under way.
const SHUTDOWN_DEADLINE: Duration = Duration::from_secs(5);

/// What `mqtt-binding pluggable` is given.
#[derive(Debug, Clone)]
pub struct PluggableOptions {
    pub socket_folder: PathBuf,
    /// The socket is `NAME.sock`, and daprd's component type `bindings.NAME`.
    pub name: String,
    /// The client ID of instances without `consumerID`; their component name if `None`.
    pub app_id: Option<String>,
    /// How long an instance lives on once daprd's connections to it are gone.
    pub release_after: Duration,
    /// Where Prometheus metrics are served (`GET /metrics`); `None` serves none.
    pub metrics: Option<std::net::SocketAddr>,
    pub runtime: RuntimeOptions,
}

/// `$DAPR_COMPONENTS_SOCKETS_FOLDER`, else daprd's default.
pub fn default_socket_folder() -> PathBuf {
    std::env::var_os("DAPR_COMPONENTS_SOCKETS_FOLDER")
        .filter(|folder| !folder.is_empty())
        .map_or_else(|| PathBuf::from(DEFAULT_SOCKET_FOLDER), PathBuf::from)
}

/// Serves until `shutdown` completes, then refuses new calls, stops every instance (a
/// message in hand is left for the broker), ends the streams, removes the socket and
/// returns.
pub async fn run(
    options: PluggableOptions,
    shutdown: impl Future<Output = ()>,
) -> anyhow::Result<()> {
    check_name(&options.name)?;
    let path = options.socket_folder.join(format!("{}.sock", options.name));
    let runtime = Runtime::new(options.runtime.clone())?;
    // What ListOperations answers, for every instance: the component's operations, asked
    // once here, so that a component that cannot answer fails at start, not at daprd's call.
    let operations = runtime
        .operations()
        .await
        .context("asking the component for its operations")?;
    let metrics_listener = crate::metrics::bind(options.metrics).await?;
    let (socket, listener) = SocketFile::claim(&path).await?;
    let metrics = Arc::new(Metrics::new(options.app_id.as_deref().unwrap_or_default()));
    let registry = Registry::new(runtime, metrics);
    let instances = Arc::new(Instances::new(
        registry.clone(),
        operations,
        options.app_id.clone(),
        options.release_after,
    ));

    let (closed, mut closings) = mpsc::unbounded_channel();
    let watcher = {
        let instances = instances.clone();
        tokio::spawn(async move {
            while let Some(connection) = closings.recv().await {
                instances.disconnected(connection);
            }
        })
    };
    let services = Services {
        instances: instances.clone(),
    };
    // A payload as large as the broker settings allow, and room for the metadata.
    let max_message = usize::try_from(options.runtime.broker.max_payload_bytes)
        .unwrap_or(usize::MAX)
        .saturating_add(1024 * 1024);
    let reflection = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(proto::FILE_DESCRIPTOR_SET)
        .build_v1alpha()
        .context("building the reflection service")?;
    let server = tonic::transport::Server::builder()
        .add_service(reflection)
        .add_service(
            proto::input_binding_server::InputBindingServer::new(services.clone())
                .max_decoding_message_size(max_message)
                .max_encoding_message_size(max_message),
        )
        .add_service(
            proto::output_binding_server::OutputBindingServer::new(services)
                .max_decoding_message_size(max_message)
                .max_encoding_message_size(max_message),
        );
    tracing::info!(
        socket = %socket.path().display(),
        component_type = %format!("bindings.{}", options.name),
        "mqtt-binding pluggable component listening"
    );

    let stopping = tokio_util::sync::CancellationToken::new();
    if let Some(listener) = metrics_listener {
        registry.serve_metrics(listener, stopping.clone());
    }
    let serving = tokio::spawn(server.serve_with_incoming_shutdown(
        socket::incoming(listener, closed),
        stopping.clone().cancelled_owned(),
    ));
    shutdown.await;
    tracing::info!("shutting down");
    // Instances first: that ends the Read streams, which would keep the server waiting.
    instances.shutdown().await;
    stopping.cancel();
    match tokio::time::timeout(SHUTDOWN_DEADLINE, serving).await {
        Ok(Ok(served)) => served.context("serving gRPC")?,
        Ok(Err(join)) => return Err(join).context("the gRPC server task failed"),
        Err(_) => tracing::warn!("calls still under way at the deadline were dropped"),
    }
    watcher.abort();
    drop(socket);
    Ok(())
}

/// daprd lower-cases the socket's name into the component type, and the name is a file
/// name: letters, digits, `-`, `_` and `.` only.
fn check_name(name: &str) -> anyhow::Result<()> {
    let valid = !name.is_empty()
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
        && !name.starts_with('.');
    anyhow::ensure!(
        valid,
        "--name {name:?}: expected letters, digits, '-', '_' or '.' (it becomes NAME.sock and the component type bindings.NAME)"
    );
    Ok(())
}
