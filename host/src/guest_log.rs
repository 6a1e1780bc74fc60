//! The component's log lines through the host (the `logging` import): a rate limit per
//! binding and a length limit per line, so that a component cannot flood the host's log or
//! its memory.
//!
//! The import is linked by hand rather than through the generated bindings, which would copy
//! the whole line into a host `String` before anything could look at it: a component could
//! make the host allocate a hundred megabytes for one line. Here the line stays in the
//! component's memory ([`WasmStr`]); a dropped line is never read, and a long one is cut
//! before it is copied.

use std::borrow::Cow;
use std::time::Instant;

use wasmtime::StoreContextMut;
use wasmtime::component::{Linker, WasmStr};

use crate::generated::mqtt_binding::binding::logging::Level;
use crate::host_state::HostState;

/// The import's name, as the WIT declares it.
const INTERFACE: &str = "mqtt-binding:binding/logging@0.4.0";

/// Adds the `logging` import to `linker`.
pub(crate) fn add_to_linker(linker: &mut Linker<HostState>) -> anyhow::Result<()> {
    linker
        .instance(INTERFACE)?
        .func_wrap("log", |store, (level, line): (Level, WasmStr)| {
            log(store, level, &line)
        })?;
    Ok(())
}

fn log(
    mut store: StoreContextMut<'_, HostState>,
    level: Level,
    line: &WasmStr,
) -> wasmtime::Result<()> {
    let host = store.data_mut().host_call();
    let binding = &host.name;
    let admitted = host
        .log_limiter
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
        .admit(Instant::now());
    let Admit::Write { dropped } = admitted else {
        return Ok(());
    };
    if dropped > 0 {
        tracing::warn!(
            binding,
            dropped,
            "{dropped} log lines of the component were dropped: it logged faster than RuntimeOptions::max_log_lines_per_second allows"
        );
    }
    // Borrowed from the component's memory (it is UTF-8): nothing is copied but the part
    // that is written.
    let line = line.to_str(&store)?;
    let line = clipped(&line, host.max_log_line_bytes);
    match level {
        Level::Trace => tracing::trace!(binding, "{line}"),
        Level::Debug => tracing::debug!(binding, "{line}"),
        Level::Info => tracing::info!(binding, "{line}"),
        Level::Warn => tracing::warn!(binding, "{line}"),
        Level::Error => tracing::error!(binding, "{line}"),
    }
    Ok(())
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
