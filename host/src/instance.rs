//! Instances of the component: making a fresh one, in its own store, for a binding
//! ([`Instances`]), and the calls every instance answers the same way (`init`, and turning a
//! trap into an error a person can act on). Which instance serves which call is `binding`'s.

use std::sync::Arc;

use wasmtime::{Engine, Store};

use crate::error::BindingError;
use crate::generated::exports::mqtt_binding::binding::binding as wit;
use crate::generated::{MqttBinding, MqttBindingPre};
use crate::host_state::{BindingHost, HostState};
use crate::imports::from_wit;
use crate::runtime_options::RuntimeOptions;
use crate::sandbox::{self, CpuBudgetExceeded, TICK};

/// Makes instances of one loaded component. Shared by the runtime and its bindings.
pub(crate) struct Instances {
    engine: Engine,
    pre: MqttBindingPre<HostState>,
    options: RuntimeOptions,
    /// Running while components have a CPU budget.
    _ticker: Option<Ticker>,
}

/// Advances the engine's epoch every [`TICK`] on a thread of its own, for as long as the
/// instances exist: the clock the components' CPU budget is counted in.
struct Ticker {
    stop: Arc<std::sync::atomic::AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Ticker {
    fn start(engine: Engine) -> Self {
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let stopping = stop.clone();
        let thread = std::thread::Builder::new()
            .name("mqtt-binding-epoch".into())
            .spawn(move || {
                while !stopping.load(std::sync::atomic::Ordering::Relaxed) {
                    // Parked rather than asleep, so that dropping the ticker wakes it at
                    // once: a short-lived process (`invoke`) does not wait out a tick.
                    std::thread::park_timeout(TICK);
                    engine.increment_epoch();
                }
            })
            .ok();
        if thread.is_none() {
            tracing::error!("cannot start the epoch thread; components are not interrupted");
        }
        Self { stop, thread }
    }
}

impl Drop for Ticker {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            thread.thread().unpark();
            let _ = thread.join();
        }
    }
}

impl Instances {
    pub(crate) fn new(
        engine: Engine,
        pre: MqttBindingPre<HostState>,
        options: RuntimeOptions,
    ) -> Self {
        Self {
            _ticker: options.cpu_budget.map(|_| Ticker::start(engine.clone())),
            engine,
            pre,
            options,
        }
    }

    pub(crate) fn options(&self) -> &RuntimeOptions {
        &self.options
    }

    pub(crate) fn max_output_instances(&self) -> usize {
        self.options.max_output_instances.max(1)
    }

    /// A fresh instance of the component for `host`'s binding, not yet initialised.
    pub(crate) async fn instance(&self, host: Arc<BindingHost>) -> Result<Instance, BindingError> {
        let state = HostState::new(
            host,
            self.options.max_memory_bytes,
            self.options.cpu_budget.unwrap_or(std::time::Duration::MAX),
            self.options.max_handles,
            self.options.pod_name.as_deref(),
        );
        let mut store = Store::new(&self.engine, state);
        store.limiter(|state| &mut state.limits);
        store.set_hostcall_fuel(sandbox::hostcall_fuel(
            self.options.broker.max_payload_bytes,
        ));
        if self.options.cpu_budget.is_some() {
            // Every epoch tick while the component runs: yield to the other tasks, or stop a
            // component that computes past its budget without calling the host.
            store.set_epoch_deadline(1);
            store.epoch_deadline_callback(|mut context| context.data_mut().tick());
        }
        let exports = self
            .pre
            .instantiate_async(&mut store)
            .await
            .map_err(component_error)?;
        Ok(Instance { store, exports })
    }
}

/// One instance of the component in its own store.
pub(crate) struct Instance {
    pub store: Store<HostState>,
    pub exports: MqttBinding,
}

impl Instance {
    /// A component failure in words a person can act on: running out of memory names the
    /// limit, instead of the trap and wasm backtrace it comes out as.
    pub(crate) fn explained<T>(&self, outcome: Result<T, BindingError>) -> Result<T, BindingError> {
        if let Err(BindingError::Component(error)) = &outcome {
            let faults = &self.store.data().host.faults;
            faults
                .traps
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            if let Some(cpu) = error.downcast_ref::<CpuBudgetExceeded>() {
                faults
                    .interruptions
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                return Err(BindingError::Component(anyhow::anyhow!("{cpu}")));
            }
            if let Some(wasmtime::Trap::StackOverflow) = error.downcast_ref() {
                return Err(BindingError::Component(anyhow::anyhow!(
                    "the component exhausted its call stack (unbounded recursion?); it was stopped"
                )));
            }
            if sandbox::is_hostcall_fuel_exhausted(error) {
                return Err(BindingError::Component(anyhow::anyhow!(
                    "the component asked the host to copy more than {} bytes in one call (the largest message, RuntimeOptions::broker.max_payload_bytes, and 1 MiB); it was stopped",
                    self.store.hostcall_fuel()
                )));
            }
            if let Some(wasmtime::component::ResourceTableError::Full) = error.downcast_ref() {
                return Err(BindingError::Component(anyhow::anyhow!(
                    "the component held more than {} handles at once (RuntimeOptions::max_handles); it was stopped",
                    self.store.data().table.max_capacity()
                )));
            }
        }
        let limits = &self.store.data().limits;
        match (outcome, limits.refused_bytes) {
            (Err(BindingError::Component(_)), Some(asked)) => {
                Err(BindingError::Component(anyhow::anyhow!(
                    "the component ran out of memory: it asked for {asked} bytes of linear memory, over its limit of {} bytes (RuntimeOptions::max_memory_bytes)",
                    limits.max_memory_bytes
                )))
            }
            // Any other trap (a panic in the component is one): say which, without the wasm
            // backtrace, which tells an operator nothing.
            (Err(BindingError::Component(error)), None) => {
                match error.downcast_ref::<wasmtime::Trap>() {
                    Some(trap) => Err(BindingError::Component(anyhow::anyhow!(
                        "the component trapped ({trap}); it was thrown away"
                    ))),
                    None => Err(BindingError::Component(error)),
                }
            }
            (outcome, _) => outcome,
        }
    }

    /// `init`: the binding's `first` instance reports its notes on the metadata and opens
    /// the connection; the others stay quiet and join it.
    pub(crate) async fn init(
        &mut self,
        app_id: &str,
        metadata: &Vec<(String, String)>,
        first: bool,
    ) -> Result<(), BindingError> {
        let outcome = self
            .exports
            .mqtt_binding_binding_binding()
            .call_init(&mut self.store, app_id, metadata, first)
            .await
            .map_err(component_error)?;
        outcome.map_err(from_guest)
    }
}

/// The component trapped or could not run.
pub(crate) fn component_error(error: wasmtime::Error) -> BindingError {
    BindingError::Component(error.into())
}

pub(crate) fn from_guest(error: wit::Error) -> BindingError {
    match error {
        wit::Error::InvalidMetadata(s) => BindingError::InvalidMetadata(s),
        wit::Error::InvalidRequest(s) => BindingError::InvalidRequest(s),
        wit::Error::Broker(e) => BindingError::Broker(from_wit(e)),
        wit::Error::NotInitialized => BindingError::NotInitialized,
    }
}
