//! The bindings a face runs, by name: the one place that starts a binding (with the host's
//! backoff while its broker is unreachable), keeps its state for health and metadata, runs
//! its input side once the face says the application wants it, counts its invocations and
//! events in the metrics, and stops it. Bindings are inserted, replaced and removed at any
//! time (daprd's `Init`s come and go); `shutdown` stops them all within a deadline. No
//! protocol lives here: a face translates its requests into these calls, and these answers
//! into its own codes.

use std::collections::BTreeMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::binding::{Binding, BindingOptions};
use crate::broker::Backoff;
use crate::error::{BindingError, one_line};
use crate::metrics::{Measured, Metrics};
use crate::runtime::Runtime;
use crate::{BindingStats, EventHandler, InvokeRequest, InvokeResponse};

/// Decides, once the binding is up, whether its input side runs: the face waits for its
/// application and asks it (the HTTP face probes the app). Given the stop signal; `false`
/// means no input.
pub type InputGate =
    Box<dyn FnOnce(CancellationToken) -> Pin<Box<dyn Future<Output = bool> + Send>> + Send>;

/// One binding to run.
pub struct Plan {
    pub options: BindingOptions,
    /// `None`: output only.
    pub input: Option<InputGate>,
    /// Whether a failure to start that will not go away (bad metadata, TLS, credentials)
    /// is tolerated; without it, such a failure is reported by [`Registry::failure`].
    pub ignore_errors: bool,
}

impl std::fmt::Debug for Plan {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Plan")
            .field("options", &self.options)
            .field("input", &self.input.is_some())
            .field("ignore_errors", &self.ignore_errors)
            .finish()
    }
}

/// Where a binding is in its life.
#[derive(Clone)]
pub enum BindingState {
    /// Before the first attempt to start it has ended.
    Starting,
    Up(Arc<Binding>),
    /// The last attempt failed for a reason that may go away (the broker is unreachable);
    /// it is tried again with backoff.
    Retrying(String),
    /// It cannot start, and is not tried again (bad metadata, TLS, credentials).
    Failed(Arc<BindingError>),
}

impl std::fmt::Debug for BindingState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            BindingState::Starting => f.write_str("Starting"),
            BindingState::Up(_) => f.write_str("Up"),
            BindingState::Retrying(why) => f.debug_tuple("Retrying").field(why).finish(),
            BindingState::Failed(why) => f.debug_tuple("Failed").field(&one_line(&**why)).finish(),
        }
    }
}

/// Why a call found no binding ready to run it.
#[derive(Debug, Clone)]
pub enum NotUp {
    /// No binding of that name.
    Unknown,
    /// Its first attempt to start has not ended.
    Starting,
    /// Its last attempt to start failed for a reason that may pass; it is tried again.
    Retrying(String),
    /// It cannot start (bad metadata, TLS, credentials).
    Failed(Arc<BindingError>),
}

/// Why an invocation failed.
#[derive(Debug)]
pub enum InvokeError {
    NotUp(NotUp),
    /// The binding ran it and it failed.
    Failed(BindingError),
}

/// A set of running bindings, by name.
pub struct Registry {
    runtime: Runtime,
    metrics: Arc<Metrics>,
    entries: Mutex<BTreeMap<String, Arc<Entry>>>,
    /// Bumped whenever a state changes.
    changed: tokio::sync::watch::Sender<()>,
    failed: mpsc::UnboundedSender<String>,
    failures: tokio::sync::Mutex<mpsc::UnboundedReceiver<String>>,
}

/// One binding: its state, and the task that starts it and runs its input side.
struct Entry {
    state: RwLock<BindingState>,
    stop: CancellationToken,
    task: Mutex<Option<JoinHandle<()>>>,
}

impl std::fmt::Debug for Registry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Registry")
            .field("bindings", &lock(&self.entries).keys().collect::<Vec<_>>())
            .finish_non_exhaustive()
    }
}

impl Registry {
    pub fn new(runtime: Runtime, metrics: Arc<Metrics>) -> Arc<Self> {
        let (failed, failures) = mpsc::unbounded_channel();
        Arc::new(Self {
            runtime,
            metrics,
            entries: Mutex::new(BTreeMap::new()),
            changed: tokio::sync::watch::Sender::new(()),
            failed,
            failures: tokio::sync::Mutex::new(failures),
        })
    }

    /// Starts `plan`'s binding on a task of its own. A binding of the same name is stopped
    /// first (within `deadline`), so that the two never share the broker's client ID.
    pub async fn insert(self: &Arc<Self>, mut plan: Plan, deadline: Duration) {
        let name = plan.options.name.clone();
        plan.options.handler = plan.options.handler.take().map(|inner| {
            Arc::new(Measured {
                inner,
                metrics: self.metrics.clone(),
                component: name.clone(),
            }) as Arc<dyn EventHandler>
        });
        let entry = Arc::new(Entry {
            state: RwLock::new(BindingState::Starting),
            stop: CancellationToken::new(),
            task: Mutex::new(None),
        });
        let previous = lock(&self.entries).insert(name.clone(), entry.clone());
        if let Some(previous) = previous {
            previous.stop(deadline).await;
        }
        self.changed.send_replace(());
        let entries = lock(&self.entries);
        // Replaced or removed while the previous one stopped: this one never starts.
        if !entries
            .get(&name)
            .is_some_and(|current| Arc::ptr_eq(current, &entry))
        {
            return;
        }
        let task = tokio::spawn(supervise(self.clone(), entry.clone(), plan));
        *lock(&entry.task) = Some(task);
        drop(entries);
    }

    /// Stops the binding called `name` (its input side settles the message in hand within
    /// `deadline`, then it disconnects) and forgets it. `false` if there was none.
    pub async fn remove(&self, name: &str, deadline: Duration) -> bool {
        let entry = lock(&self.entries).remove(name);
        match entry {
            Some(entry) => {
                entry.stop(deadline).await;
                self.changed.send_replace(());
                true
            }
            None => false,
        }
    }

    /// The state of the binding called `name`, if there is one.
    pub fn state(&self, name: &str) -> Option<BindingState> {
        let entry = lock(&self.entries).get(name).cloned()?;
        Some(entry.state())
    }

    /// Every binding's name and state, by name.
    pub fn states(&self) -> Vec<(String, BindingState)> {
        let entries: Vec<(String, Arc<Entry>)> = lock(&self.entries)
            .iter()
            .map(|(name, entry)| (name.clone(), entry.clone()))
            .collect();
        entries
            .into_iter()
            .map(|(name, entry)| (name, entry.state()))
            .collect()
    }

    /// The binding called `name` if it is up, or why not.
    pub fn up(&self, name: &str) -> Result<Arc<Binding>, NotUp> {
        match self.state(name) {
            None => Err(NotUp::Unknown),
            Some(BindingState::Up(binding)) => Ok(binding),
            Some(BindingState::Starting) => Err(NotUp::Starting),
            Some(BindingState::Retrying(why)) => Err(NotUp::Retrying(why)),
            Some(BindingState::Failed(error)) => Err(NotUp::Failed(error)),
        }
    }

    /// Waits until the first attempt to start the binding called `name` has ended, and
    /// returns its state then (never [`BindingState::Starting`]); `None` if there is no
    /// such binding.
    pub async fn settled(&self, name: &str) -> Option<BindingState> {
        let mut changed = self.changed.subscribe();
        loop {
            match self.state(name)? {
                BindingState::Starting => {}
                settled => return Some(settled),
            }
            // The sender lives as long as `self`.
            let _ = changed.changed().await;
        }
    }

    /// Runs `request` on the binding called `name`, and counts it in the metrics (as
    /// daprd, only an invocation of a binding that exists is counted).
    pub async fn invoke(
        &self,
        name: &str,
        request: InvokeRequest,
    ) -> Result<InvokeResponse, InvokeError> {
        let started = Instant::now();
        let binding = match self.up(name) {
            Ok(binding) => binding,
            Err(NotUp::Unknown) => return Err(InvokeError::NotUp(NotUp::Unknown)),
            Err(not_up) => {
                self.metrics
                    .output(name, &request.operation, false, started.elapsed());
                return Err(InvokeError::NotUp(not_up));
            }
        };
        let operation = request.operation.clone();
        let outcome = binding.invoke(request).await;
        self.metrics
            .output(name, &operation, outcome.is_ok(), started.elapsed());
        outcome.map_err(InvokeError::Failed)
    }

    /// Each binding's name and figures (`None` while it is not up), by name.
    pub async fn stats(&self) -> Vec<(String, Option<BindingStats>)> {
        let mut stats = Vec::new();
        for (name, state) in self.states() {
            let figures = match state {
                BindingState::Up(binding) => Some(binding.stats().await),
                _ => None,
            };
            stats.push((name, figures));
        }
        stats
    }

    /// Serves the metrics on `listener` (`GET /metrics`) until `stop`.
    pub fn serve_metrics(
        self: &Arc<Self>,
        listener: tokio::net::TcpListener,
        stop: CancellationToken,
    ) {
        let registry = self.clone();
        let snapshot: crate::metrics::Snapshot = Arc::new(move || {
            let registry = registry.clone();
            Box::pin(async move { registry.stats().await })
        });
        tokio::spawn(crate::metrics::serve(
            listener,
            self.metrics.clone(),
            snapshot,
            stop,
        ));
    }

    /// Waits for a binding that cannot start and does not ignore errors; returns why.
    /// Never returns if there is none.
    pub async fn failure(&self) -> String {
        match self.failures.lock().await.recv().await {
            Some(failure) => failure,
            None => std::future::pending().await,
        }
    }

    /// Stops every binding: input sides settle the message in hand (acknowledged, or left
    /// for the broker) within `deadline`, then each disconnects.
    pub async fn shutdown(&self, deadline: Duration) {
        let entries: Vec<Arc<Entry>> = std::mem::take(&mut *lock(&self.entries))
            .into_values()
            .collect();
        let mut stopping = tokio::task::JoinSet::new();
        for entry in entries {
            stopping.spawn(async move { entry.stop(deadline).await });
        }
        while stopping.join_next().await.is_some() {}
        self.changed.send_replace(());
    }

    fn set(&self, entry: &Entry, state: BindingState) {
        *entry
            .state
            .write()
            .unwrap_or_else(|poisoned| poisoned.into_inner()) = state;
        self.changed.send_replace(());
    }
}

impl Entry {
    fn state(&self) -> BindingState {
        self.state
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .clone()
    }

    /// Stops the task, letting the input side settle within `deadline`, then disconnects.
    async fn stop(&self, deadline: Duration) {
        self.stop.cancel();
        if let BindingState::Up(binding) = self.state() {
            binding.shutdown();
        }
        let task = lock(&self.task).take();
        if let Some(mut task) = task
            && tokio::time::timeout(deadline, &mut task).await.is_err()
        {
            tracing::warn!("an input binding did not settle within {deadline:?}; stopping it");
            task.abort();
        }
        // Read again: the binding may have come up while the task was stopping.
        if let BindingState::Up(binding) = self.state() {
            binding.close().await;
        }
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Starts one binding (retrying while the error is retryable), then runs its input side if
/// its gate opens, restarting it after a failure.
async fn supervise(registry: Arc<Registry>, entry: Arc<Entry>, plan: Plan) {
    let stop = entry.stop.clone();
    let name = plan.options.name.clone();
    let mut backoff = Backoff::STANDARD;
    let binding = loop {
        let started = tokio::select! {
            started = registry.runtime.binding(plan.options.clone()) => started,
            () = stop.cancelled() => return,
        };
        let error = match started {
            Ok(binding) => break Arc::new(binding),
            Err(error) => error,
        };
        let message = one_line(&error);
        if !error.is_retryable() {
            registry.set(&entry, BindingState::Failed(Arc::new(error)));
            tracing::error!(binding = %name, "cannot start: {message}");
            if !plan.ignore_errors {
                let _ = registry.failed.send(format!(
                    "binding {name:?} cannot start: {message} (set spec.ignoreErrors: true to run without it)"
                ));
            }
            return;
        }
        registry.set(&entry, BindingState::Retrying(message.clone()));
        let wait = backoff.next_wait();
        tracing::warn!(binding = %name, retry_in = ?wait, "cannot start yet: {message}");
        tokio::select! {
            () = tokio::time::sleep(wait) => {}
            () = stop.cancelled() => return,
        }
    };
    registry.set(&entry, BindingState::Up(binding.clone()));
    if stop.is_cancelled() {
        // Stopped while it was starting: `Entry::stop` reads the state once more and closes it.
        return;
    }
    tracing::info!(binding = %name, "started");

    let Some(gate) = plan.input else {
        return;
    };
    if !gate(stop.clone()).await || stop.is_cancelled() {
        return;
    }
    let mut backoff = Backoff::STANDARD;
    while !stop.is_cancelled() {
        match binding.read().await {
            Ok(()) => return,
            Err(error) => {
                let wait = backoff.next_wait();
                tracing::error!(binding = %name, retry_in = ?wait, "input stopped: {}", one_line(&error));
                tokio::select! {
                    () = tokio::time::sleep(wait) => {}
                    () = stop.cancelled() => return,
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use rumqttc::Packet;

    use super::*;
    use crate::RuntimeOptions;
    use crate::broker::fake::{FakeBroker, WAIT};

    fn plan(name: &str, metadata: &[(&str, &str)], ignore_errors: bool) -> Plan {
        Plan {
            options: BindingOptions {
                name: name.into(),
                app_id: format!("{name}-app"),
                metadata: metadata
                    .iter()
                    .map(|(k, v)| (k.to_string(), v.to_string()))
                    .collect(),
                handler: None,
            },
            input: None,
            ignore_errors,
        }
    }

    /// A registry with these plans inserted.
    async fn registry(plans: Vec<Plan>) -> Arc<Registry> {
        let runtime = Runtime::new(RuntimeOptions::default()).expect("the component loads");
        let registry = Registry::new(runtime, Arc::new(Metrics::new("test")));
        for plan in plans {
            registry.insert(plan, WAIT).await;
        }
        registry
    }

    /// Waits until the binding's state satisfies `wanted`, failing after [`WAIT`].
    async fn wait_for_state(
        registry: &Registry,
        name: &str,
        wanted: impl Fn(&BindingState) -> bool,
    ) -> BindingState {
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            let state = registry.state(name).expect("a registered binding");
            if wanted(&state) {
                return state;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "{name} stayed {state:?}"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    #[tokio::test]
    async fn a_binding_that_cannot_start_is_reported_unless_it_ignores_errors() {
        let bad = [("url", "tcp://127.0.0.1:1"), ("topic", "t"), ("qos", "7")];
        let registry = registry(vec![
            plan("lenient", &bad, true),
            plan("strict", &bad, false),
        ])
        .await;
        let failure = tokio::time::timeout(WAIT, registry.failure())
            .await
            .expect("a failure is reported");
        assert!(
            failure.starts_with(r#"binding "strict" cannot start: metadata field "qos""#),
            "{failure}"
        );
        for name in ["lenient", "strict"] {
            let state =
                wait_for_state(&registry, name, |s| matches!(s, BindingState::Failed(_))).await;
            assert!(
                matches!(&state, BindingState::Failed(why) if why.to_string().contains("expected 0, 1 or 2")),
                "{state:?}"
            );
        }
        // Every task has ended after shutdown: the lenient one reported nothing.
        registry.shutdown(WAIT).await;
        let more = registry.failures.lock().await.try_recv();
        assert!(more.is_err(), "a second failure was reported: {more:?}");
    }

    #[tokio::test]
    async fn a_binding_whose_broker_is_down_starts_once_it_is_up_and_shutdown_disconnects() {
        // A port with nothing listening, then a broker on it.
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|listener| listener.local_addr())
            .expect("a free port")
            .port();
        let url = format!("tcp://127.0.0.1:{port}");
        let registry = registry(vec![plan("late", &[("url", &url), ("topic", "t")], false)]).await;
        let state = registry.settled("late").await.expect("registered");
        assert!(
            matches!(&state, BindingState::Retrying(why) if why.contains("broker unreachable")),
            "{state:?}"
        );
        let broker = FakeBroker::start_on(port).await;
        let mut link = broker.accept(false).await;
        wait_for_state(&registry, "late", |s| matches!(s, BindingState::Up(_))).await;
        let stopping = {
            let registry = registry.clone();
            tokio::spawn(async move { registry.shutdown(WAIT).await })
        };
        match link.next().await {
            Packet::Disconnect => {}
            other => panic!("expected DISCONNECT, got {other:?}"),
        }
        drop(link);
        tokio::time::timeout(WAIT, stopping)
            .await
            .expect("shutdown within its deadline")
            .expect("shutdown task");
    }

    #[tokio::test]
    async fn a_binding_inserted_under_a_taken_name_replaces_it_and_remove_stops_it() {
        let broker = FakeBroker::start().await;
        let url = format!("tcp://127.0.0.1:{}", broker.port);
        let registry = registry(vec![plan(
            "orders",
            &[("url", &url), ("topic", "a")],
            false,
        )])
        .await;
        let mut first = broker.accept(false).await;
        wait_for_state(&registry, "orders", |s| matches!(s, BindingState::Up(_))).await;

        // The old binding has said goodbye before the new one connects.
        let replacing = {
            let registry = registry.clone();
            let plan = plan("orders", &[("url", &url), ("topic", "b")], false);
            tokio::spawn(async move { registry.insert(plan, WAIT).await })
        };
        match first.next().await {
            Packet::Disconnect => {}
            other => panic!("expected DISCONNECT, got {other:?}"),
        }
        drop(first);
        let mut second = broker.accept(false).await;
        tokio::time::timeout(WAIT, replacing)
            .await
            .expect("replaced in time")
            .expect("insert task");
        wait_for_state(&registry, "orders", |s| matches!(s, BindingState::Up(_))).await;

        let removing = {
            let registry = registry.clone();
            tokio::spawn(async move { registry.remove("orders", WAIT).await })
        };
        match second.next().await {
            Packet::Disconnect => {}
            other => panic!("expected DISCONNECT, got {other:?}"),
        }
        drop(second);
        let removed = tokio::time::timeout(WAIT, removing)
            .await
            .expect("removed in time")
            .expect("remove task");
        assert!(removed);
        assert!(registry.state("orders").is_none());
        assert!(!registry.remove("orders", WAIT).await, "already gone");
    }

    #[tokio::test]
    async fn an_invocation_says_why_its_binding_is_not_up() {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|listener| listener.local_addr())
            .expect("a free port")
            .port();
        let url = format!("tcp://127.0.0.1:{port}");
        let registry = registry(vec![
            plan("down", &[("url", &url), ("topic", "t")], true),
            plan("bad", &[("url", &url), ("topic", "t"), ("qos", "7")], true),
        ])
        .await;
        registry.settled("down").await.expect("registered");
        registry.settled("bad").await.expect("registered");
        let request = || InvokeRequest {
            operation: "create".into(),
            data: b"x".to_vec(),
            metadata: Vec::new(),
        };
        match registry.invoke("down", request()).await {
            Err(InvokeError::NotUp(NotUp::Retrying(why))) => {
                assert!(why.contains("broker unreachable"), "{why}");
            }
            other => panic!("expected retrying, got {other:?}"),
        }
        match registry.invoke("bad", request()).await {
            Err(InvokeError::NotUp(NotUp::Failed(error))) => {
                assert!(error.to_string().contains("qos"), "{error}");
            }
            other => panic!("expected failed, got {other:?}"),
        }
        assert!(matches!(
            registry.invoke("nothing", request()).await,
            Err(InvokeError::NotUp(NotUp::Unknown))
        ));
        registry.shutdown(WAIT).await;
    }
}
