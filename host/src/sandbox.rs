//! What one instance of the component may use, each limit enforced here: linear memory
//! (`Limits`, a wasmtime resource limiter), computing between host calls (`CpuWatch`, on
//! the engine's epoch ticks), handles (the store's table), and log lines (`LogLimiter`, a
//! token bucket per binding, and `clipped` for a line's length). The values come from
//! `RuntimeOptions`; README, "Sandbox", says what each one means to an operator.

use std::borrow::Cow;
use std::time::Instant;

use wasmtime::component::ResourceTable;
use wasmtime::{StoreLimits, StoreLimitsBuilder};

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

impl Limits {
    /// At most `max_memory_bytes` of linear memory.
    pub fn new(max_memory_bytes: usize) -> Self {
        Self {
            inner: StoreLimitsBuilder::new()
                .memory_size(max_memory_bytes)
                .build(),
            memory_bytes: 0,
            max_memory_bytes,
            refused_bytes: None,
        }
    }
}

/// What one host call may copy out of the component (wasmtime's "hostcall fuel", 128 MiB
/// unless set): the largest message the host accepts, `max_payload_bytes`, and 1 MiB for its
/// topic, properties and metadata. The payload itself is a handle and is not copied; this
/// bounds what a component can make the host allocate in one call.
pub(crate) fn hostcall_fuel(max_payload_bytes: u32) -> usize {
    usize::try_from(max_payload_bytes)
        .unwrap_or(usize::MAX)
        .saturating_add(1 << 20)
}

/// What wasmtime says when a call would copy more than [`hostcall_fuel`] (its error type is
/// private, so the words are matched).
const HOSTCALL_FUEL_EXHAUSTED: &str = "fuel allocated for hostcalls has been exhausted";

/// Whether `error` is a host call stopped by [`hostcall_fuel`].
pub(crate) fn is_hostcall_fuel_exhausted(error: &anyhow::Error) -> bool {
    error
        .chain()
        .any(|cause| cause.to_string().contains(HOSTCALL_FUEL_EXHAUSTED))
}

/// The store's table of handles (connections, payloads, deliveries), holding at most
/// `max_handles`.
pub(crate) fn handle_table(max_handles: usize) -> ResourceTable {
    let mut table = ResourceTable::new();
    table.set_max_capacity(max_handles);
    table
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
    pub fn new(budget: std::time::Duration) -> Self {
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

impl CpuWatch {
    /// One epoch tick while the component runs, `calls` host calls into its life: yield, or
    /// stop it if it has computed past its budget since its last host call.
    pub fn tick(&mut self, calls: u64) -> wasmtime::Result<wasmtime::UpdateDeadline> {
        if self.calls_seen != calls {
            self.calls_seen = calls;
            self.busy_ticks = 0;
        } else {
            self.busy_ticks += 1;
        }
        if self.busy_ticks >= self.budget_ticks {
            return Err(CpuBudgetExceeded {
                budget: self.budget,
            }
            .into());
        }
        Ok(wasmtime::UpdateDeadline::Yield(1))
    }
}

/// A token bucket: `rate` lines a second on average, bursts of up to `burst`.
#[derive(Debug)]
pub(crate) struct LogLimiter {
    rate: f64,
    burst: f64,
    tokens: f64,
    last: Instant,
    dropped: u64,
}

/// What to do with a line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Admit {
    /// Write it; `dropped` lines were dropped since the last one written (say so first).
    Write {
        dropped: u64,
    },
    Drop,
}

impl LogLimiter {
    pub(crate) fn new(per_second: u32, now: Instant) -> Self {
        let rate = f64::from(per_second.max(1));
        // A second's worth of lines at once, and at least a few.
        let burst = rate.max(10.0);
        Self {
            rate,
            burst,
            tokens: burst,
            last: now,
            dropped: 0,
        }
    }

    pub(crate) fn admit(&mut self, now: Instant) -> Admit {
        let elapsed = now.saturating_duration_since(self.last);
        self.last = now;
        self.tokens = (self.tokens + elapsed.as_secs_f64() * self.rate).min(self.burst);
        if self.tokens < 1.0 {
            self.dropped += 1;
            return Admit::Drop;
        }
        self.tokens -= 1.0;
        Admit::Write {
            dropped: std::mem::take(&mut self.dropped),
        }
    }
}

/// The line cut to at most `max` bytes (at a character boundary), saying how much was cut.
pub(crate) fn clipped(line: &str, max: usize) -> Cow<'_, str> {
    if line.len() <= max {
        return Cow::Borrowed(line);
    }
    let mut end = max;
    while !line.is_char_boundary(end) {
        end -= 1;
    }
    Cow::Owned(format!(
        "{}… ({} bytes cut)",
        &line[..end],
        line.len() - end
    ))
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    /// How long a whole burst takes to come back.
    fn refill(per_second: u32) -> Duration {
        Duration::from_secs_f64(
            LogLimiter::new(per_second, Instant::now()).burst / f64::from(per_second),
        )
    }

    #[test]
    fn a_burst_passes_then_lines_are_dropped_and_counted() {
        let start = Instant::now();
        let mut limiter = LogLimiter::new(100, start);
        for _ in 0..100 {
            assert_eq!(limiter.admit(start), Admit::Write { dropped: 0 });
        }
        assert_eq!(limiter.admit(start), Admit::Drop);
        assert_eq!(limiter.admit(start), Admit::Drop);
        // Ten milliseconds later one line's worth has come back.
        let later = start + Duration::from_millis(10);
        assert_eq!(limiter.admit(later), Admit::Write { dropped: 2 });
        assert_eq!(limiter.admit(later), Admit::Drop);
        assert_eq!(refill(100), Duration::from_secs(1));
    }

    #[test]
    fn long_lines_are_clipped_at_a_character_boundary() {
        assert_eq!(clipped("short", 10), "short");
        assert_eq!(clipped("héllo wörld", 2), "h… (12 bytes cut)");
        let long = "x".repeat(10_000);
        let clipped = clipped(&long, 4096);
        assert!(clipped.starts_with(&"x".repeat(4096)) && clipped.ends_with("(5904 bytes cut)"));
    }
}
