//! The data of one wasmtime `Store` (`HostState`, built here), the per-binding state its
//! stores share (`BindingHost`), and the short-lived view the generated `Host` traits are
//! implemented on (`HostView`). The implementations themselves are in `imports`; the
//! limits a store enforces are `sandbox`'s.

use std::sync::Arc;

use tokio_util::sync::CancellationToken;
use wasmtime::component::{HasData, ResourceTable};
use wasmtime_wasi::{WasiCtx, WasiCtxBuilder, WasiCtxView, WasiView};

use crate::connection_slot::ConnectionSlot;
use crate::handler::EventHandler;
use crate::sandbox::{self, CpuWatch, Limits, LogLimiter};

/// What a binding's stores share: its name, its application, its shutdown signal, and its
/// one broker connection.
pub(crate) struct BindingHost {
    pub name: String,
    pub handler: Option<Arc<dyn EventHandler>>,
    pub shutdown: CancellationToken,
    /// The binding's one broker connection.
    pub connection: ConnectionSlot,
    /// The rate limit on the component's log lines, shared by the binding's instances.
    pub log_limiter: std::sync::Mutex<LogLimiter>,
    pub max_log_line_bytes: usize,
    /// Instances of this binding thrown away after a trap, and (among them) those stopped
    /// for computing past their CPU budget.
    pub faults: Faults,
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

impl HostState {
    /// One epoch tick while the component runs (see [`CpuWatch`]).
    pub fn tick(&mut self) -> wasmtime::Result<wasmtime::UpdateDeadline> {
        self.cpu.tick(self.calls)
    }
}

impl HostState {
    /// A store's data for an instance of `host`'s binding, with at most `max_memory_bytes`
    /// of linear memory. The guest gets no sockets, no files, and of the environment only
    /// `POD_NAME` (Dapr's `{podName}`), when there is a pod name: its only network is the
    /// broker connection import. stderr is kept so a guest panic is visible.
    pub fn new(
        host: Arc<BindingHost>,
        max_memory_bytes: usize,
        cpu_budget: std::time::Duration,
        max_handles: usize,
        pod_name: Option<&str>,
    ) -> Self {
        let mut wasi = WasiCtxBuilder::new();
        wasi.inherit_stderr()
            .allow_tcp(false)
            .allow_udp(false)
            .allow_ip_name_lookup(false);
        if let Some(pod_name) = pod_name {
            wasi.env("POD_NAME", pod_name);
        }
        let wasi = wasi.build();
        let limits = Limits::new(max_memory_bytes);
        let table = sandbox::handle_table(max_handles);
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
