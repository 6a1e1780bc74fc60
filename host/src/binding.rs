//! One binding: an instance of the component in its own store, and the calls a host makes
//! on it (init, invoke, read, close). Conversions between our request types and the
//! generated ones happen here, once.

use std::sync::Arc;

use wasmtime::Store;

use crate::bindings::exports::mqtt_binding::binding::binding as wit;
use crate::bindings::MqttBinding;
use crate::error::BindingError;
use crate::imports::{from_wit, BindingHost, EventHandler, HostState};

/// What a binding is made from.
#[derive(Clone)]
pub struct BindingOptions {
    /// The binding's name (the Dapr component name), for logs.
    pub name: String,
    /// The application ID: the default MQTT client ID. May be empty.
    pub app_id: String,
    /// The component's metadata, secrets already resolved.
    pub metadata: Vec<(String, String)>,
    /// The application that receives input events, if any.
    pub handler: Option<Arc<dyn EventHandler>>,
}

impl std::fmt::Debug for BindingOptions {
    /// Metadata values may be secrets: show the names only.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let names: Vec<&str> = self.metadata.iter().map(|(name, _)| name.as_str()).collect();
        f.debug_struct("BindingOptions")
            .field("name", &self.name)
            .field("app_id", &self.app_id)
            .field("metadata", &names)
            .finish_non_exhaustive()
    }
}

/// An output binding request (Dapr's `{"operation", "data", "metadata"}`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct InvokeRequest {
    pub operation: String,
    pub data: Vec<u8>,
    pub metadata: Vec<(String, String)>,
}

/// The answer to an output binding request.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct InvokeResponse {
    pub data: Option<Vec<u8>>,
    pub metadata: Vec<(String, String)>,
}

/// A running binding. Calls on one `Binding` run one at a time.
pub struct Binding {
    store: Store<HostState>,
    exports: MqttBinding,
    host: Arc<BindingHost>,
}

impl std::fmt::Debug for Binding {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Binding").field("name", &self.host.name).finish_non_exhaustive()
    }
}

impl Binding {
    pub(crate) fn new(store: Store<HostState>, exports: MqttBinding, host: Arc<BindingHost>) -> Self {
        Self { store, exports, host }
    }

    pub(crate) async fn init(&mut self, app_id: &str, metadata: Vec<(String, String)>) -> Result<(), BindingError> {
        let outcome = self
            .exports
            .mqtt_binding_binding_binding()
            .call_init(&mut self.store, app_id, &metadata)
            .await
            .map_err(component_error)?;
        outcome.map_err(from_guest)
    }

    /// The output operations the binding supports.
    pub async fn operations(&mut self) -> Result<Vec<String>, BindingError> {
        self.exports
            .mqtt_binding_binding_binding()
            .call_operations(&mut self.store)
            .await
            .map_err(component_error)
    }

    /// Runs one output operation.
    pub async fn invoke(&mut self, request: InvokeRequest) -> Result<InvokeResponse, BindingError> {
        let request = wit::InvokeRequest {
            operation: request.operation,
            data: request.data,
            metadata: request.metadata,
        };
        let outcome = self
            .exports
            .mqtt_binding_binding_binding()
            .call_invoke(&mut self.store, &request)
            .await
            .map_err(component_error)?;
        outcome
            .map(|response| InvokeResponse { data: response.data, metadata: response.metadata })
            .map_err(from_guest)
    }

    /// Runs the input binding until [`Binding::shutdown_token`] is cancelled.
    pub async fn read(&mut self) -> Result<(), BindingError> {
        let outcome = self
            .exports
            .mqtt_binding_binding_binding()
            .call_read(&mut self.store)
            .await
            .map_err(component_error)?;
        outcome.map_err(from_guest)
    }

    /// Cancelled to stop the binding: waits end, `read` returns, connections close.
    pub fn shutdown_token(&self) -> tokio_util::sync::CancellationToken {
        self.host.shutdown.clone()
    }

    /// Stops the binding and disconnects from the broker cleanly.
    pub async fn close(self) {
        self.host.shutdown.cancel();
        let connections = std::mem::take(
            &mut *self.host.connections.lock().unwrap_or_else(|poisoned| poisoned.into_inner()),
        );
        for connection in connections {
            connection.disconnect().await;
        }
    }
}

/// The component trapped or could not run.
pub(crate) fn component_error(error: wasmtime::Error) -> BindingError {
    BindingError::Component(error.into())
}

fn from_guest(error: wit::Error) -> BindingError {
    match error {
        wit::Error::InvalidMetadata(s) => BindingError::InvalidMetadata(s),
        wit::Error::InvalidRequest(s) => BindingError::InvalidRequest(s),
        wit::Error::Broker(e) => BindingError::Broker(from_wit(e)),
        wit::Error::NotInitialized => BindingError::NotInitialized,
    }
}
