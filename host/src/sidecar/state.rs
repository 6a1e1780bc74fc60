//! What the API handlers (HTTP and gRPC) read: the components loaded, each binding's spec,
//! the registry that runs the bindings, and the budget of request bodies in flight; and
//! what both APIs answer the same way: an output binding's invocation, and the metadata
//! under `extended`.

use std::collections::BTreeMap;
use std::sync::Arc;

use super::resources::{BindingSpec, ComponentSummary};
use crate::error::one_line;
use crate::registry::{BindingState, InvokeError, NotUp, Registry};
use crate::{InvokeRequest, InvokeResponse};

/// The sidecar's shared state, read by the HTTP handlers.
pub(crate) struct Sidecar {
    pub app_id: String,
    pub app_port: Option<u16>,
    pub app_protocol: super::AppProtocol,
    pub components: Vec<ComponentSummary>,
    /// The MQTT bindings, by name; their state is the registry's.
    pub bindings: BTreeMap<String, BindingSpec>,
    pub registry: Arc<Registry>,
    /// Components that failed before starting (bad folder content), with the reason.
    pub failed: Vec<(ComponentSummary, String)>,
    /// Files, or documents in them, holding no usable component, with the reason.
    pub skipped: Vec<(String, String)>,
    /// Request body bytes held by invokes in progress, one permit per byte (see
    /// `http::BODY_BUDGET`).
    pub body_budget: tokio::sync::Semaphore,
    /// `DAPR_API_TOKEN`, if set (see `http::Api::refusal`).
    pub api_token: Option<String>,
}

/// Why an invocation failed, in daprd's words.
#[derive(Debug)]
pub(crate) enum InvokeFailure {
    /// No output binding of that name.
    NotFound(String),
    /// The binding exists and the invocation failed (or the binding is not running).
    Failed(String),
}

impl Sidecar {
    /// Runs `request` on output binding `name` (the registry counts it in the metrics).
    pub(crate) async fn invoke(
        &self,
        name: &str,
        request: InvokeRequest,
    ) -> Result<InvokeResponse, InvokeFailure> {
        let not_found = || {
            let names: Vec<&str> = self
                .bindings
                .values()
                .filter(|spec| spec.direction.output)
                .map(|spec| spec.name.as_str())
                .collect();
            InvokeFailure::NotFound(format!(
                "output binding {name:?} not found; output bindings: [{}]",
                names.join(", ")
            ))
        };
        let Some(spec) = self.bindings.get(name) else {
            if let Some((_, why)) = self.failed.iter().find(|(c, _)| c.name == name) {
                return Err(InvokeFailure::Failed(format!(
                    "binding {name:?} did not start: {why}"
                )));
            }
            return Err(not_found());
        };
        if !spec.direction.output {
            return Err(not_found());
        }
        self.registry
            .invoke(name, request)
            .await
            .map_err(|error| match error {
                InvokeError::NotUp(NotUp::Unknown) => not_found(),
                InvokeError::NotUp(NotUp::Starting) => {
                    InvokeFailure::Failed(format!("binding {name:?} is starting"))
                }
                InvokeError::NotUp(NotUp::Retrying(why)) => {
                    InvokeFailure::Failed(format!("binding {name:?} is not running: {why}"))
                }
                InvokeError::NotUp(NotUp::Failed(why)) => InvokeFailure::Failed(format!(
                    "binding {name:?} is not running: {}",
                    one_line(&*why)
                )),
                InvokeError::Failed(error) => InvokeFailure::Failed(format!(
                    "error invoking output binding {name}: {}",
                    one_line(&error)
                )),
            })
    }

    /// What `extended` says in the metadata: each binding's connection state and faults,
    /// each component that failed, each file skipped.
    pub(crate) async fn extended_metadata(&self) -> BTreeMap<String, String> {
        let mut extended = BTreeMap::new();
        for (name, state) in self.registry.states() {
            let text = match &state {
                BindingState::Up(binding) => match binding.connection_status().await {
                    Some(status) => connection_state(&status),
                    None => "up".to_string(),
                },
                BindingState::Starting => "starting".to_string(),
                BindingState::Retrying(why) => format!("retrying: {why}"),
                BindingState::Failed(why) => format!("failed: {}", one_line(&**why)),
            };
            extended.insert(format!("binding.{name}"), text);
            if let BindingState::Up(binding) = state {
                let crate::BindingStats {
                    traps,
                    interruptions,
                    ..
                } = binding.stats().await;
                extended.insert(
                    format!("binding.{name}.faults"),
                    format!("{traps} instances thrown away after a trap, {interruptions} of them stopped for CPU"),
                );
            }
        }
        for (component, why) in &self.failed {
            extended.insert(
                format!("component.{}", component.name),
                format!("failed: {why}"),
            );
        }
        for (file, why) in &self.skipped {
            let key = format!("file.{file}");
            let text = match extended.get(&key) {
                Some(earlier) => format!("{earlier}; {why}"),
                None => format!("skipped: {why}"),
            };
            extended.insert(key, text);
        }
        extended
    }
}

/// A binding's broker connection in words: `connected since ...`, or
/// `reconnecting since ...: last error`. Times are RFC 3339, UTC.
fn connection_state(status: &crate::LinkStatus) -> String {
    let since = humantime::format_rfc3339_seconds(status.since);
    match (status.connected, &status.last_error) {
        (true, _) => format!("connected since {since}"),
        (false, Some(error)) => format!("reconnecting since {since}: {error}"),
        (false, None) => format!("reconnecting since {since}"),
    }
}
