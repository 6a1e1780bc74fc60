//! The component's log lines through the host (the `logging` import): a rate limit per
//! binding and a length limit per line, so that a component cannot flood the host's log or
//! its memory.
//!
//! The import is linked by hand rather than through the generated bindings, which would copy
//! the whole line into a host `String` before anything could look at it: a component could
//! make the host allocate a hundred megabytes for one line. Here the line stays in the
//! component's memory ([`WasmStr`]); a dropped line is never read, and a long one is cut
//! before it is copied.

use std::time::Instant;

use wasmtime::StoreContextMut;
use wasmtime::component::{Linker, WasmStr};

use crate::generated::mqtt_binding::binding::logging::Level;
use crate::host_state::HostState;
use crate::sandbox::{Admit, clipped};

/// The import's name, as the WIT declares it.
const INTERFACE: &str = "mqtt-binding:binding/logging@0.5.0";

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
