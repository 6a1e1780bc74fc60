//! What the HTTP handlers read: the components loaded, each binding's spec, the supervisor
//! that runs the bindings, and the budget of request bodies in flight.

use std::collections::BTreeMap;
use std::sync::Arc;

use super::resources::{BindingSpec, ComponentSummary};
use crate::supervisor::Supervisor;

/// The sidecar's shared state, read by the HTTP handlers.
pub(crate) struct Sidecar {
    pub app_id: String,
    pub app_port: Option<u16>,
    pub components: Vec<ComponentSummary>,
    /// The MQTT bindings, by name; their state is the supervisor's.
    pub bindings: BTreeMap<String, BindingSpec>,
    pub supervisor: Arc<Supervisor>,
    /// Components that failed before starting (bad folder content), with the reason.
    pub failed: Vec<(ComponentSummary, String)>,
    /// Files, or documents in them, holding no usable component, with the reason.
    pub skipped: Vec<(String, String)>,
    /// Request body bytes held by invokes in progress, one permit per byte (see
    /// `http::BODY_BUDGET`).
    pub body_budget: tokio::sync::Semaphore,
    /// `DAPR_API_TOKEN`, if set (see `http::require_token`).
    pub api_token: Option<String>,
}
