//! The component instances daprd asks for, by the name in `x-component-instance`: each is a
//! binding of its own in the [`Registry`] (its own limits, its own broker connection,
//! shared by its input and output sides), made by `Init`, replaced by an `Init` that cannot
//! be its other side, and released when daprd's connections to it have all been gone for a
//! while. A released instance keeps its metadata: a call that comes for it later (daprd's
//! connection was only idle) starts it again.
//!
//! The two `Init`s of one component (input and output, on separate connections) share one
//! binding when their metadata is the same and the side is new; anything else is a new
//! component under that name (daprd restarted, or the file changed), and replaces it.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use super::reader::{Events, Reader};
use super::socket::ConnectionId;
use crate::error::{BindingError, Kind, one_line};
use crate::registry::{BindingState, InvokeError, NotUp, Plan, Registry};
use crate::{BindingOptions, EventHandler, InvokeRequest, InvokeResponse};

/// How long `Init` waits for the first attempt to connect before answering: daprd gives an
/// `Init` 5 s. A broker that is down answers at once (and is retried in the background); one
/// that does not answer at all is left to the background after this.
const INIT_WAIT: Duration = Duration::from_secs(3);
/// How long stopping an instance may take to settle a message in hand.
const STOP_DEADLINE: Duration = Duration::from_secs(3);

/// Which service an `Init` came on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Side {
    Input,
    Output,
}

/// Every instance of the process.
#[derive(Debug)]
pub(crate) struct Instances {
    registry: Arc<Registry>,
    /// The component's operations (they depend on no metadata or broker).
    operations: Vec<String>,
    app_id: Option<String>,
    release_after: Duration,
    slots: Mutex<HashMap<String, Arc<Slot>>>,
    stopping: CancellationToken,
}

/// One instance name.
#[derive(Debug)]
struct Slot {
    name: String,
    /// Serialises everything that starts or stops this instance.
    state: tokio::sync::Mutex<SlotState>,
    /// The connections daprd has called this instance on, and that are still open.
    connections: Mutex<HashSet<ConnectionId>>,
}

#[derive(Debug, Default)]
struct SlotState {
    /// `None` once released (or before the first `Init` succeeded).
    running: Option<Arc<Instance>>,
    /// What the last successful `Init`s gave; kept after a release.
    metadata: Vec<(String, String)>,
    input: bool,
    output: bool,
}

/// A running instance: its binding is the registry's, under the instance's name.
#[derive(Debug)]
struct Instance {
    name: String,
    registry: Arc<Registry>,
    reader: Arc<Reader>,
}

impl Instances {
    pub(crate) fn new(
        registry: Arc<Registry>,
        operations: Vec<String>,
        app_id: Option<String>,
        release_after: Duration,
    ) -> Self {
        Self {
            registry,
            operations,
            app_id,
            release_after,
            slots: Mutex::new(HashMap::new()),
            stopping: CancellationToken::new(),
        }
    }

    /// `Init` on `side` for instance `name`.
    pub(crate) async fn init(
        self: &Arc<Self>,
        name: &str,
        side: Side,
        metadata: HashMap<String, String>,
        connection: Option<ConnectionId>,
    ) -> Result<(), tonic::Status> {
        self.refuse_when_stopping()?;
        let metadata: Vec<(String, String)> = metadata
            .into_iter()
            .collect::<BTreeMap<_, _>>()
            .into_iter()
            .collect();
        let slot = self.slot(name);
        slot.connected(connection);
        let mut state = slot.state.lock().await;
        let other_side = match side {
            Side::Input => !state.input,
            Side::Output => !state.output,
        };
        if state.running.is_some() && state.metadata == metadata && other_side {
            tracing::info!(instance = %name, ?side, "Init: the other side of a running instance");
            state.set(side);
            return Ok(());
        }
        if let Some(previous) = state.running.take() {
            tracing::info!(instance = %name, ?side, "Init: replacing the running instance");
            previous.stop().await;
        }
        let instance = self.start(name, &metadata).await;
        let settled = tokio::time::timeout(INIT_WAIT, self.registry.settled(name)).await;
        match settled {
            Ok(Some(BindingState::Failed(error))) => {
                instance.stop().await;
                return Err(init_status(&error));
            }
            Ok(Some(BindingState::Retrying(why))) => {
                tracing::warn!(instance = %name, "Init: cannot connect yet, retrying in the background: {why}");
            }
            Ok(_) => {}
            Err(_) => {
                tracing::warn!(instance = %name, "Init: still connecting after {INIT_WAIT:?}; continuing in the background")
            }
        }
        *state = SlotState {
            running: Some(instance),
            metadata,
            ..SlotState::default()
        };
        state.set(side);
        Ok(())
    }

    /// `Invoke` on instance `name`.
    pub(crate) async fn invoke(
        self: &Arc<Self>,
        name: &str,
        request: InvokeRequest,
        connection: Option<ConnectionId>,
    ) -> Result<InvokeResponse, tonic::Status> {
        self.running(name, connection).await?;
        self.registry
            .invoke(name, request)
            .await
            .map_err(|error| match error {
                InvokeError::NotUp(not_up) => not_up_status(name, &not_up),
                InvokeError::Failed(error) => invoke_status(name, &error),
            })
    }

    /// The operations of instance `name` (`ListOperations`): the component's, which do not
    /// depend on the broker, so that daprd gets them while the broker is still down.
    pub(crate) fn operations(
        &self,
        name: &str,
        connection: Option<ConnectionId>,
    ) -> Result<Vec<String>, tonic::Status> {
        self.refuse_when_stopping()?;
        let slot = lock(&self.slots).get(name).cloned();
        let Some(slot) = slot else {
            return Err(not_initialised(name));
        };
        slot.connected(connection);
        Ok(self.operations.clone())
    }

    /// `Read` on instance `name`: its input side starts with the first one.
    pub(crate) async fn read(
        self: &Arc<Self>,
        name: &str,
        answers: tonic::Streaming<super::proto::ReadRequest>,
        connection: Option<ConnectionId>,
    ) -> Result<Events, tonic::Status> {
        let instance = self.running(name, connection).await?;
        Ok(instance.reader.attach(answers))
    }

    /// A connection closed: instances left with none are released after the grace period.
    pub(crate) fn disconnected(self: &Arc<Self>, connection: ConnectionId) {
        let slots: Vec<Arc<Slot>> = lock(&self.slots).values().cloned().collect();
        for slot in slots {
            let now_unused = {
                let mut connections = lock(&slot.connections);
                connections.remove(&connection) && connections.is_empty()
            };
            if now_unused {
                let instances = self.clone();
                tokio::spawn(async move {
                    tokio::select! {
                        () = tokio::time::sleep(instances.release_after) => {}
                        () = instances.stopping.cancelled() => return,
                    }
                    instances.release(&slot).await;
                });
            }
        }
    }

    /// Stops every instance: messages in hand are left for the broker, then each
    /// disconnects.
    pub(crate) async fn shutdown(&self) {
        self.stopping.cancel();
        let slots: Vec<Arc<Slot>> = lock(&self.slots).drain().map(|(_, slot)| slot).collect();
        let mut stopping = tokio::task::JoinSet::new();
        for slot in slots {
            stopping.spawn(async move {
                if let Some(instance) = slot.state.lock().await.running.take() {
                    instance.stop().await;
                }
            });
        }
        while stopping.join_next().await.is_some() {}
    }

    fn refuse_when_stopping(&self) -> Result<(), tonic::Status> {
        if self.stopping.is_cancelled() {
            return Err(tonic::Status::unavailable("the component is shutting down"));
        }
        Ok(())
    }

    fn slot(&self, name: &str) -> Arc<Slot> {
        lock(&self.slots)
            .entry(name.to_string())
            .or_insert_with(|| {
                Arc::new(Slot {
                    name: name.to_string(),
                    state: tokio::sync::Mutex::default(),
                    connections: Mutex::default(),
                })
            })
            .clone()
    }

    /// Instance `name`, started again if it was released; an error if daprd never
    /// initialised it.
    async fn running(
        self: &Arc<Self>,
        name: &str,
        connection: Option<ConnectionId>,
    ) -> Result<Arc<Instance>, tonic::Status> {
        self.refuse_when_stopping()?;
        let slot = lock(&self.slots).get(name).cloned();
        let slot = slot.ok_or_else(|| not_initialised(name))?;
        slot.connected(connection);
        let mut state = slot.state.lock().await;
        if let Some(instance) = &state.running {
            return Ok(instance.clone());
        }
        if !state.input && !state.output {
            return Err(not_initialised(name));
        }
        tracing::info!(instance = %name, "starting the released instance again for a call");
        let instance = self.start(name, &state.metadata).await;
        let _ = tokio::time::timeout(INIT_WAIT, self.registry.settled(name)).await;
        state.running = Some(instance.clone());
        Ok(instance)
    }

    /// Starts instance `name`'s binding in the registry.
    async fn start(&self, name: &str, metadata: &[(String, String)]) -> Arc<Instance> {
        let reader = Arc::new(Reader::new());
        let gate_reader = reader.clone();
        let plan = Plan {
            options: BindingOptions {
                name: name.to_string(),
                // As `invoke` does: without consumerID, the client ID is the component's
                // name, so that a persistent session is found again.
                app_id: self.app_id.clone().unwrap_or_else(|| name.to_string()),
                metadata: metadata.to_vec(),
                handler: Some(reader.clone() as Arc<dyn EventHandler>),
            },
            input: Some(Box::new(move |stop: CancellationToken| {
                Box::pin(async move { gate_reader.first_read(&stop).await })
            })),
            // Init reads the state and answers daprd; nothing else is told.
            ignore_errors: true,
        };
        self.registry.insert(plan, STOP_DEADLINE).await;
        Arc::new(Instance {
            name: name.to_string(),
            registry: self.registry.clone(),
            reader,
        })
    }

    /// Releases `slot`'s instance if no connection uses it any more.
    async fn release(&self, slot: &Slot) {
        let mut state = slot.state.lock().await;
        if !lock(&slot.connections).is_empty() {
            return;
        }
        if let Some(instance) = state.running.take() {
            tracing::info!(instance = %slot.name, "daprd's connections are gone; releasing the instance");
            instance.stop().await;
        }
    }
}

impl Slot {
    fn connected(&self, connection: Option<ConnectionId>) {
        if let Some(connection) = connection {
            lock(&self.connections).insert(connection);
        }
    }
}

impl SlotState {
    fn set(&mut self, side: Side) {
        match side {
            Side::Input => self.input = true,
            Side::Output => self.output = true,
        }
    }
}

impl Instance {
    async fn stop(&self) {
        self.registry.remove(&self.name, STOP_DEADLINE).await;
        self.reader.close();
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Why instance `name`'s binding cannot take a call yet.
fn not_up_status(name: &str, not_up: &NotUp) -> tonic::Status {
    match not_up {
        NotUp::Retrying(why) => {
            tonic::Status::unavailable(format!("binding {name:?} is not connected yet: {why}"))
        }
        NotUp::Failed(error) => init_status(error),
        NotUp::Starting | NotUp::Unknown => {
            tonic::Status::unavailable(format!("binding {name:?} is still connecting"))
        }
    }
}

fn not_initialised(name: &str) -> tonic::Status {
    tonic::Status::failed_precondition(format!(
        "no component instance {name:?}: daprd calls Init before using it"
    ))
}

/// Why an instance cannot start, as a status daprd shows its user.
fn init_status(error: &BindingError) -> tonic::Status {
    let message = one_line(error);
    match error.kind() {
        Kind::Invalid => tonic::Status::invalid_argument(message),
        Kind::NotAuthorized => tonic::Status::permission_denied(message),
        Kind::Unavailable
        | Kind::Unconfirmed
        | Kind::TooLarge
        | Kind::Rejected { .. }
        | Kind::Stopped
        | Kind::Internal => tonic::Status::failed_precondition(message),
    }
}

/// A failed invoke as a status: whether the message was sent decides between
/// `Unavailable` (not sent, safe to retry) and `DeadlineExceeded` (sent, unconfirmed: the
/// broker may have it, as gRPC defines that code).
fn invoke_status(name: &str, error: &BindingError) -> tonic::Status {
    let message = format!("binding {name:?}: {}", one_line(error));
    match error.kind() {
        Kind::Invalid => tonic::Status::invalid_argument(message),
        Kind::NotAuthorized => tonic::Status::permission_denied(message),
        Kind::Unavailable | Kind::Stopped => tonic::Status::unavailable(message),
        Kind::Unconfirmed => tonic::Status::deadline_exceeded(message),
        Kind::TooLarge | Kind::Rejected { retryable: true } => {
            tonic::Status::resource_exhausted(message)
        }
        Kind::Rejected { retryable: false } => tonic::Status::failed_precondition(message),
        Kind::Internal => tonic::Status::internal(message),
    }
}
