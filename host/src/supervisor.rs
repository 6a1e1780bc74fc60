//! Running a set of bindings for a face (the HTTP sidecar; a gRPC face next): each binding
//! is started with the host's backoff while its broker is unreachable, its state is kept for
//! health and metadata, its input side is run (and restarted with backoff) once the face says
//! the application wants it, and shutdown stops everything in order within a deadline. No
//! protocol lives here: a face translates its own and asks.

use std::collections::BTreeMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::binding::{Binding, BindingOptions};
use crate::broker::Backoff;
use crate::error::BindingError;
use crate::error::one_line;
use crate::runtime::Runtime;

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
    /// is tolerated; without it, such a failure is reported by [`Supervisor::failure`].
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

/// A running set of bindings.
pub struct Supervisor {
    states: BTreeMap<String, RwLock<BindingState>>,
    /// Bumped whenever a state changes.
    changed: tokio::sync::watch::Sender<()>,
    stop: CancellationToken,
    tasks: Mutex<tokio::task::JoinSet<()>>,
    failures: tokio::sync::Mutex<mpsc::UnboundedReceiver<String>>,
}

impl std::fmt::Debug for Supervisor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Supervisor")
            .field("bindings", &self.states.keys().collect::<Vec<_>>())
            .finish_non_exhaustive()
    }
}

impl Supervisor {
    /// Starts every plan on a task of its own.
    pub fn start(runtime: &Runtime, plans: Vec<Plan>) -> Arc<Self> {
        let (failed, failures) = mpsc::unbounded_channel();
        let supervisor = Arc::new(Self {
            states: plans
                .iter()
                .map(|plan| {
                    (
                        plan.options.name.clone(),
                        RwLock::new(BindingState::Starting),
                    )
                })
                .collect(),
            changed: tokio::sync::watch::Sender::new(()),
            stop: CancellationToken::new(),
            tasks: Mutex::new(tokio::task::JoinSet::new()),
            failures: tokio::sync::Mutex::new(failures),
        });
        for plan in plans {
            let task = supervise(supervisor.clone(), runtime.clone(), plan, failed.clone());
            lock(&supervisor.tasks).spawn(task);
        }
        supervisor
    }

    /// The state of the binding called `name`, if it is one of this supervisor's.
    pub fn state(&self, name: &str) -> Option<BindingState> {
        let state = self.states.get(name)?;
        Some(
            state
                .read()
                .unwrap_or_else(|poisoned| poisoned.into_inner())
                .clone(),
        )
    }

    /// Every binding's name and state, by name.
    pub fn states(&self) -> Vec<(String, BindingState)> {
        self.states
            .keys()
            .filter_map(|name| Some((name.clone(), self.state(name)?)))
            .collect()
    }

    /// Waits until the first attempt to start the binding called `name` has ended, and
    /// returns its state then (never [`BindingState::Starting`]); `None` if it is not one of
    /// this supervisor's.
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

    /// Waits for a binding that cannot start and does not ignore errors; returns why.
    /// Never returns if there is none.
    pub async fn failure(&self) -> String {
        match self.failures.lock().await.recv().await {
            Some(failure) => failure,
            None => std::future::pending().await,
        }
    }

    /// Stops: input sides settle the message in hand (acknowledged, or left for the broker)
    /// within `deadline`, then every binding disconnects.
    pub async fn shutdown(&self, deadline: Duration) {
        self.stop.cancel();
        for (_, state) in self.states() {
            if let BindingState::Up(binding) = state {
                binding.shutdown();
            }
        }
        let mut tasks = std::mem::take(&mut *lock(&self.tasks));
        let settled = tokio::time::timeout(deadline, async {
            while tasks.join_next().await.is_some() {}
        })
        .await;
        if settled.is_err() {
            tracing::warn!("input bindings did not settle within {deadline:?}; stopping them");
            tasks.abort_all();
        }
        for (_, state) in self.states() {
            if let BindingState::Up(binding) = state {
                binding.close().await;
            }
        }
    }

    fn set(&self, name: &str, state: BindingState) {
        if let Some(slot) = self.states.get(name) {
            *slot
                .write()
                .unwrap_or_else(|poisoned| poisoned.into_inner()) = state;
            self.changed.send_replace(());
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
async fn supervise(
    supervisor: Arc<Supervisor>,
    runtime: Runtime,
    plan: Plan,
    failed: mpsc::UnboundedSender<String>,
) {
    let stop = supervisor.stop.clone();
    let name = plan.options.name.clone();
    let mut backoff = Backoff::STANDARD;
    let binding = loop {
        let error = match runtime.binding(plan.options.clone()).await {
            Ok(binding) => break Arc::new(binding),
            Err(error) => error,
        };
        let message = one_line(&error);
        if !error.is_retryable() {
            supervisor.set(&name, BindingState::Failed(Arc::new(error)));
            tracing::error!(binding = %name, "cannot start: {message}");
            if !plan.ignore_errors {
                let _ = failed.send(format!(
                    "binding {name:?} cannot start: {message} (set spec.ignoreErrors: true to run without it)"
                ));
            }
            return;
        }
        supervisor.set(&name, BindingState::Retrying(message.clone()));
        let wait = backoff.next_wait();
        tracing::warn!(binding = %name, retry_in = ?wait, "cannot start yet: {message}");
        tokio::select! {
            () = tokio::time::sleep(wait) => {}
            () = stop.cancelled() => return,
        }
    };
    supervisor.set(&name, BindingState::Up(binding.clone()));
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

    fn runtime() -> Runtime {
        Runtime::new(RuntimeOptions::default()).expect("the component loads")
    }

    /// Waits until the binding's state satisfies `wanted`, failing after [`WAIT`].
    async fn wait_for_state(
        supervisor: &Supervisor,
        name: &str,
        wanted: impl Fn(&BindingState) -> bool,
    ) -> BindingState {
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            let state = supervisor.state(name).expect("a supervised binding");
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
        let supervisor = Supervisor::start(
            &runtime(),
            vec![plan("lenient", &bad, true), plan("strict", &bad, false)],
        );
        let failure = tokio::time::timeout(WAIT, supervisor.failure())
            .await
            .expect("a failure is reported");
        assert!(
            failure.starts_with(r#"binding "strict" cannot start: metadata field "qos""#),
            "{failure}"
        );
        for name in ["lenient", "strict"] {
            let state =
                wait_for_state(&supervisor, name, |s| matches!(s, BindingState::Failed(_))).await;
            assert!(
                matches!(&state, BindingState::Failed(why) if why.to_string().contains("expected 0, 1 or 2")),
                "{state:?}"
            );
        }
        // Every task has ended after shutdown: the lenient one reported nothing.
        supervisor.shutdown(WAIT).await;
        let more = supervisor.failures.lock().await.try_recv();
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
        let supervisor = Supervisor::start(
            &runtime(),
            vec![plan("late", &[("url", &url), ("topic", "t")], false)],
        );
        let state = supervisor.settled("late").await.expect("supervised");
        assert!(
            matches!(&state, BindingState::Retrying(why) if why.contains("broker unreachable")),
            "{state:?}"
        );
        let broker = FakeBroker::start_on(port).await;
        let mut link = broker.accept(false).await;
        wait_for_state(&supervisor, "late", |s| matches!(s, BindingState::Up(_))).await;
        let stopping = {
            let supervisor = supervisor.clone();
            tokio::spawn(async move { supervisor.shutdown(WAIT).await })
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
}
