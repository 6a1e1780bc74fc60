//! One binding: the calls a host makes on it (invoke, read, shutdown, close), served by
//! instances of the component (a pool for output, one for input) that share its broker
//! connection, within its byte budget. Conversions between our request types and the
//! generated ones happen here, once; making instances is `instance`'s.

use std::sync::Arc;

use crate::error::BindingError;
use crate::generated::exports::mqtt_binding::binding::binding as wit;
use crate::handler::EventHandler;
use crate::host_state::BindingHost;
use crate::instance::{Instance, Instances, component_error, from_guest};
use crate::payload::Payload;

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
        let names: Vec<&str> = self
            .metadata
            .iter()
            .map(|(name, _)| name.as_str())
            .collect();
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

/// A binding's figures at one moment (see [`Binding::stats`]).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct BindingStats {
    /// Whether its broker connection is up.
    pub connected: bool,
    /// Connections made after the first.
    pub reconnects: u64,
    /// Messages received and not yet delivered.
    pub messages_waiting: usize,
    /// Output instances running an invoke now.
    pub output_instances_in_use: usize,
    /// Instances thrown away after a trap.
    pub traps: u64,
    /// Of those, the ones stopped for computing past their CPU budget.
    pub interruptions: u64,
    /// Deliveries to the application after the first of the same message.
    pub delivery_retries: u64,
    /// Messages the application never accepted, moved to the dead-letter topic.
    pub dead_lettered: u64,
    /// Messages the application never accepted, left unacknowledged (no dead-letter topic,
    /// or publishing to it failed).
    pub left_unacknowledged: u64,
}

/// A running binding. Calls may come from many tasks at once: each `invoke` runs in an
/// instance of the component taken from a pool (one Store runs one call at a time, so a
/// single instance would make invokes queue), `read` runs in an instance of its own, and
/// all of them share the binding's one broker connection.
pub struct Binding {
    runtime: Arc<Instances>,
    host: Arc<BindingHost>,
    app_id: String,
    metadata: Vec<(String, String)>,
    /// Idle output instances, ready for the next invoke.
    idle: std::sync::Mutex<Vec<Instance>>,
    /// Bounds the output instances in use at once (`RuntimeOptions::max_output_instances`).
    permits: tokio::sync::Semaphore,
    /// Bounds the request bytes held at once, one permit per byte
    /// (`RuntimeOptions::max_in_flight_bytes`).
    bytes: tokio::sync::Semaphore,
}

impl std::fmt::Debug for Binding {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Binding")
            .field("name", &self.host.name)
            .finish_non_exhaustive()
    }
}

impl Binding {
    /// Creates the binding's output instance and initialises it (which connects).
    pub(crate) async fn start(
        runtime: Arc<Instances>,
        host: Arc<BindingHost>,
        app_id: String,
        metadata: Vec<(String, String)>,
    ) -> Result<Self, BindingError> {
        // The first instance validates the metadata and opens the connection; the others
        // are made on demand and join it.
        let mut first = runtime.instance(host.clone()).await?;
        let initialised = first.init(&app_id, &metadata, true).await;
        if let Err(error) = first.explained(initialised) {
            // A refusal after connecting (a share group the broker cannot make) still
            // disconnects cleanly.
            host.connection.close().await;
            return Err(error);
        }
        let permits = tokio::sync::Semaphore::new(runtime.max_output_instances());
        let bytes = tokio::sync::Semaphore::new(byte_budget(runtime.options()));
        Ok(Self {
            runtime,
            host,
            app_id,
            metadata,
            idle: std::sync::Mutex::new(vec![first]),
            permits,
            bytes,
        })
    }

    /// Runs `call` on an output instance from the pool. An instance that trapped is dropped,
    /// not reused.
    async fn with_output<T>(
        &self,
        call: impl AsyncFnOnce(&mut Instance) -> Result<T, BindingError>,
    ) -> Result<T, BindingError> {
        let _permit = self
            .permits
            .acquire()
            .await
            .map_err(|_| BindingError::Broker(crate::BrokerError::Closed))?;
        let idle = self
            .idle
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .pop();
        let mut instance = match idle {
            Some(instance) => instance,
            None => {
                let mut instance = self.runtime.instance(self.host.clone()).await?;
                let initialised = instance.init(&self.app_id, &self.metadata, false).await;
                instance.explained(initialised)?;
                instance
            }
        };
        let outcome = call(&mut instance).await;
        let outcome = instance.explained(outcome);
        let grown = instance.store.data().limits.memory_bytes
            > self.runtime.options().pooled_instance_max_memory;
        if !grown && !matches!(outcome, Err(BindingError::Component(_))) {
            self.idle
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner())
                .push(instance);
        }
        outcome
    }

    /// The output operations the binding supports.
    pub async fn operations(&self) -> Result<Vec<String>, BindingError> {
        self.with_output(async |Instance { store, exports }| {
            exports
                .mqtt_binding_binding_binding()
                .call_operations(store)
                .await
                .map_err(component_error)
        })
        .await
    }

    /// Runs one output operation.
    pub async fn invoke(&self, request: InvokeRequest) -> Result<InvokeResponse, BindingError> {
        // A request larger than the whole budget takes all of it, so it runs alone.
        let budget = byte_budget(self.runtime.options());
        let weight = u32::try_from(request.data.len().clamp(1, budget)).unwrap_or(u32::MAX);
        let _bytes = self
            .bytes
            .acquire_many(weight)
            .await
            .map_err(|_| BindingError::Broker(crate::BrokerError::Closed))?;
        let InvokeRequest {
            operation,
            data,
            metadata,
        } = request;
        let data = Payload::from(bytes::Bytes::from(data));
        self.with_output(async |Instance { store, exports }| {
            // The bytes stay with the host; the component gets a handle it owns and drops.
            let data = store
                .data_mut()
                .table
                .push(data)
                .map_err(|e| component_error(e.into()))?;
            let request = wit::InvokeRequest {
                operation,
                data,
                metadata,
            };
            let outcome = exports
                .mqtt_binding_binding_binding()
                .call_invoke(store, &request)
                .await
                .map_err(component_error)?;
            outcome
                .map(|response| InvokeResponse {
                    data: response.data,
                    metadata: response.metadata,
                })
                .map_err(from_guest)
        })
        .await
    }

    /// Runs the input binding: subscribes and hands each message to the binding's
    /// [`EventHandler`] until [`Binding::shutdown`] (or [`Binding::close`]) is called.
    pub async fn read(&self) -> Result<(), BindingError> {
        let mut input = self.runtime.instance(self.host.clone()).await?;
        let initialised = input.init(&self.app_id, &self.metadata, false).await;
        input.explained(initialised)?;
        let Instance { store, exports } = &mut input;
        let outcome = exports
            .mqtt_binding_binding_binding()
            .call_read(store)
            .await
            .map_err(component_error);
        input.explained(outcome)?.map_err(from_guest)
    }

    /// Waits until the broker has accepted the input binding's subscription (after `read`
    /// started). Useful before publishing to a binding that has no persistent session.
    pub async fn wait_subscribed(&self) -> Result<(), BindingError> {
        let connection = self.host.connection.current().await;
        let connection =
            connection.ok_or(BindingError::Broker(crate::error::BrokerError::Closed))?;
        Ok(connection.wait_subscribed().await?)
    }

    /// The state of the binding's broker connection: up since when, or down since when and
    /// why. `None` before the first connection or after `close`.
    pub async fn connection_status(&self) -> Option<crate::LinkStatus> {
        let connection = self.host.connection.current().await;
        connection.map(|connection| connection.status())
    }

    /// A snapshot of the binding's figures, for metrics.
    pub async fn stats(&self) -> BindingStats {
        let connection = self.host.connection.current().await;
        let (connected, (messages_waiting, reconnects)) = match &connection {
            Some(connection) => (connection.status().connected, connection.traffic()),
            None => (false, (0, 0)),
        };
        let (traps, interruptions) = self.faults();
        BindingStats {
            connected,
            reconnects,
            messages_waiting,
            output_instances_in_use: self
                .runtime
                .max_output_instances()
                .saturating_sub(self.permits.available_permits()),
            traps,
            interruptions,
            delivery_retries: count(&self.host.faults.delivery_retries),
            dead_lettered: count(&self.host.faults.dead_lettered),
            left_unacknowledged: count(&self.host.faults.left_unacknowledged),
        }
    }

    /// How many of the binding's instances were thrown away after a trap, and how many of
    /// those were stopped for computing past their CPU budget.
    fn faults(&self) -> (u64, u64) {
        let faults = &self.host.faults;
        (count(&faults.traps), count(&faults.interruptions))
    }

    /// Asks the binding to stop: `read` returns once the message in hand is settled
    /// (acknowledged, or left unacknowledged if its delivery had not succeeded), retry waits
    /// end, and new calls fail with `closed`.
    pub fn shutdown(&self) {
        self.host.shutdown.cancel();
    }

    /// Stops the binding and disconnects from the broker cleanly (no UNSUBSCRIBE, so a
    /// persistent session survives). Acknowledgements already given are sent first.
    pub async fn close(&self) {
        self.shutdown();
        self.host.connection.close().await;
    }
}

/// The byte budget as semaphore permits (a semaphore holds at most `u32::MAX >> 3`).
fn byte_budget(options: &crate::RuntimeOptions) -> usize {
    options.max_in_flight_bytes.clamp(
        1,
        tokio::sync::Semaphore::MAX_PERMITS.min(u32::MAX as usize),
    )
}

fn count(counter: &std::sync::atomic::AtomicU64) -> u64 {
    counter.load(std::sync::atomic::Ordering::Relaxed)
}
