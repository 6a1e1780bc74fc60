//! The data of one wasmtime `Store` (`HostState`, built here), the per-binding state its
//! stores share (`BindingHost`), the resource limits that watch its memory, and the
//! short-lived view the generated `Host` traits are implemented on (`HostView`). The
//! implementations themselves are in `imports`.

use std::sync::Arc;

use tokio_util::sync::CancellationToken;
use wasmtime::component::{HasData, ResourceTable};
use wasmtime::{StoreLimits, StoreLimitsBuilder};
use wasmtime_wasi::{WasiCtx, WasiCtxBuilder, WasiCtxView, WasiView};

use crate::broker::{BrokerSettings, Connection};
use crate::broker_policy::AllowedBroker;
use crate::guest_log::LogLimiter;
use crate::handler::EventHandler;

/// What a binding's stores share: its name, its application, its shutdown signal, and its
/// one broker connection.
pub(crate) struct BindingHost {
    pub name: String,
    pub handler: Option<Arc<dyn EventHandler>>,
    pub shutdown: CancellationToken,
    pub settings: BrokerSettings,
    /// Where the component may connect (`None`: anywhere).
    pub allowed_brokers: Option<Vec<AllowedBroker>>,
    /// The rate limit on the component's log lines, shared by the binding's instances.
    pub log_limiter: std::sync::Mutex<LogLimiter>,
    pub max_log_line_bytes: usize,
    /// One connection per binding serves both directions (the client ID is used exactly,
    /// with no per-direction suffix). The first instance to connect opens it; the binding's other
    /// instances join it.
    pub connection: tokio::sync::Mutex<Option<Connection>>,
    /// The client IDs of every binding of the runtime, and this binding's hold on its own.
    pub client_ids: Arc<crate::client_ids::ClientIds>,
    pub client_id: std::sync::Mutex<Option<crate::client_ids::Claim>>,
    /// Instances of this binding thrown away after a trap, and (among them) those stopped
    /// for computing past their CPU budget.
    pub faults: Faults,
}

/// The store's resource limits, recording how large the instance's memory has grown (an
/// instance that grew large is not kept in the output pool: its memory never shrinks).
pub(crate) struct Limits {
    pub inner: StoreLimits,
    /// The largest linear memory the instance has had, in bytes.
    pub memory_bytes: usize,
    /// The memory limit, for the error a guest that hits it gets.
    pub max_memory_bytes: usize,
    /// The size a refused memory growth asked for, if one was refused.
    pub refused_bytes: Option<usize>,
}

impl wasmtime::ResourceLimiter for Limits {
    fn memory_growing(
        &mut self,
        current: usize,
        desired: usize,
        maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        let allowed = self.inner.memory_growing(current, desired, maximum)?;
        if allowed {
            self.memory_bytes = self.memory_bytes.max(desired);
        } else {
            self.refused_bytes = Some(desired);
            tracing::warn!(
                current,
                desired,
                limit = self.max_memory_bytes,
                "the component asked for more memory than its limit"
            );
        }
        Ok(allowed)
    }

    fn table_growing(
        &mut self,
        current: usize,
        desired: usize,
        maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        self.inner.table_growing(current, desired, maximum)
    }

    fn memory_grow_failed(&mut self, error: wasmtime::Error) -> wasmtime::Result<()> {
        self.inner.memory_grow_failed(error)
    }

    fn instances(&self) -> usize {
        self.inner.instances()
    }

    fn tables(&self) -> usize {
        self.inner.tables()
    }

    fn memories(&self) -> usize {
        self.inner.memories()
    }
}

/// Counts of what went wrong in a binding, for `/v1.0/metadata` and the metrics: instances
/// that failed, and deliveries the application did not accept the first time.
#[derive(Debug, Default)]
pub(crate) struct Faults {
    pub traps: std::sync::atomic::AtomicU64,
    pub interruptions: std::sync::atomic::AtomicU64,
    /// Deliveries after the first of the same message.
    pub delivery_retries: std::sync::atomic::AtomicU64,
    /// Messages moved to the dead-letter topic after their retries.
    pub dead_lettered: std::sync::atomic::AtomicU64,
    /// Messages left unacknowledged after their retries.
    pub left_unacknowledged: std::sync::atomic::AtomicU64,
}

/// The data of one wasmtime `Store`.
pub(crate) struct HostState {
    pub wasi: WasiCtx,
    pub table: ResourceTable,
    pub limits: Limits,
    pub host: Arc<BindingHost>,
    /// Host calls made by the instance so far (see `cpu`).
    pub calls: u64,
    pub cpu: CpuWatch,
}

/// Watches the component's computing between host calls, one epoch tick at a time (the
/// runtime's ticker advances the epoch every [`TICK`]). Ticks only reach the store while the
/// component runs, so waiting inside a host call never counts.
#[derive(Debug)]
pub(crate) struct CpuWatch {
    budget: std::time::Duration,
    budget_ticks: u64,
    calls_seen: u64,
    busy_ticks: u64,
}

/// How often the component yields to the rest of the process, and the resolution of the
/// CPU budget.
pub(crate) const TICK: std::time::Duration = std::time::Duration::from_millis(10);

/// The component computed longer than its budget without calling the host.
#[derive(Debug, thiserror::Error)]
#[error(
    "the component computed for more than {} ms without calling the host (RuntimeOptions::cpu_budget); it was stopped",
    budget.as_millis()
)]
pub(crate) struct CpuBudgetExceeded {
    budget: std::time::Duration,
}

impl CpuWatch {
    fn new(budget: std::time::Duration) -> Self {
        Self {
            budget,
            budget_ticks: u64::try_from(budget.as_millis().div_ceil(TICK.as_millis()))
                .unwrap_or(u64::MAX)
                .max(1),
            calls_seen: 0,
            busy_ticks: 0,
        }
    }
}

impl HostState {
    /// One epoch tick while the component runs: yield, or stop it if it has computed past its
    /// budget since its last host call.
    pub fn tick(&mut self) -> wasmtime::Result<wasmtime::UpdateDeadline> {
        let cpu = &mut self.cpu;
        if cpu.calls_seen != self.calls {
            cpu.calls_seen = self.calls;
            cpu.busy_ticks = 0;
        } else {
            cpu.busy_ticks += 1;
        }
        if cpu.busy_ticks >= cpu.budget_ticks {
            return Err(CpuBudgetExceeded { budget: cpu.budget }.into());
        }
        Ok(wasmtime::UpdateDeadline::Yield(1))
    }
}

impl HostState {
    /// A store's data for an instance of `host`'s binding, with at most `max_memory_bytes`
    /// of linear memory. The guest gets no sockets, no files, no environment: its only
    /// network is the broker connection import. stderr is kept so a guest panic is visible.
    pub fn new(
        host: Arc<BindingHost>,
        max_memory_bytes: usize,
        cpu_budget: std::time::Duration,
        max_handles: usize,
    ) -> Self {
        let wasi = WasiCtxBuilder::new()
            .inherit_stderr()
            .allow_tcp(false)
            .allow_udp(false)
            .allow_ip_name_lookup(false)
            .build();
        let limits = Limits {
            inner: StoreLimitsBuilder::new()
                .memory_size(max_memory_bytes)
                .build(),
            memory_bytes: 0,
            max_memory_bytes,
            refused_bytes: None,
        };
        let mut table = ResourceTable::new();
        table.set_max_capacity(max_handles);
        Self {
            wasi,
            table,
            limits,
            host,
            calls: 0,
            cpu: CpuWatch::new(cpu_budget),
        }
    }
}

impl HostState {
    /// The binding, for a host call made outside the generated bindings (`guest_log`),
    /// counted as [`HostView::of`] counts the others.
    pub fn host_call(&mut self) -> Arc<BindingHost> {
        self.calls += 1;
        self.host.clone()
    }
}

impl WasiView for HostState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.wasi,
            table: &mut self.table,
        }
    }
}

/// The view the generated `Host` traits are implemented on.
pub(crate) struct HostView<'a> {
    pub host: &'a BindingHost,
    pub table: &'a mut ResourceTable,
}

impl HostView<'_> {
    /// The view for one host call; counting the calls here counts every import (see
    /// [`CpuWatch`]).
    pub fn of(state: &mut HostState) -> HostView<'_> {
        state.calls += 1;
        HostView {
            host: &state.host,
            table: &mut state.table,
        }
    }
}

/// Marks [`HostView`] as the data the generated `add_to_linker` hands to our traits.
pub(crate) struct HasHostView;

impl HasData for HasHostView {
    type Data<'a> = HostView<'a>;
}
