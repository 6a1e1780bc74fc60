//! The process-wide settings of a [`Runtime`](crate::Runtime): which component, where its
//! compiled code is cached, and the limits every binding runs under.

use std::path::PathBuf;

use crate::broker::BrokerSettings;
use crate::broker_policy::AllowedBroker;

/// Which component to run.
#[derive(Debug, Clone, Default)]
pub enum ComponentSource {
    /// The component built into this host.
    #[default]
    Embedded,
    /// A component file (`.wasm`).
    File(PathBuf),
}

/// Process-wide settings.
#[derive(Debug, Clone)]
pub struct RuntimeOptions {
    pub component: ComponentSource,
    /// Where compiled code is cached; `None` compiles every time.
    pub cache_dir: Option<PathBuf>,
    pub broker: BrokerSettings,
    /// Most linear memory one binding instance may use, in bytes.
    pub max_memory_bytes: usize,
    /// Most output instances one binding runs at once, i.e. how many invokes of one binding
    /// may be in flight together; more wait for a free instance.
    pub max_output_instances: usize,
    /// Most request data (bytes) one binding's invokes hold at once; more wait. With the
    /// copies an invoke makes (guest memory, the packet being written), a binding's
    /// memory beyond idle stays within a few times this (see the README, "Memory").
    pub max_in_flight_bytes: usize,
    /// An output instance whose linear memory grew beyond this is dropped after its call
    /// instead of going back to the pool (wasm memory never shrinks).
    pub pooled_instance_max_memory: usize,
    /// The brokers a component may connect to (`--allow-broker`); `None`, the default, allows
    /// any, as Dapr does. A connection elsewhere fails at `init` and nothing is sent to it.
    pub allowed_brokers: Option<Vec<AllowedBroker>>,
    /// How long the component may compute without calling the host before it is stopped
    /// (time spent waiting inside host calls does not count). Meanwhile it yields to the
    /// rest of the process every few milliseconds. `None` compiles the component without
    /// these checks: a component that loops then holds its thread for as long as it likes,
    /// so use it only for a component you trust, and only if you measured a gain.
    pub cpu_budget: Option<std::time::Duration>,
    /// Most handles (connections, payloads) one instance may hold at once; past it, the call
    /// fails and the instance is thrown away.
    pub max_handles: usize,
    /// Log lines a binding's component may write per second (bursts of a second's worth);
    /// more are dropped, and the host says how many.
    pub max_log_lines_per_second: u32,
    /// Longest log line of the component, in bytes; longer ones are cut.
    pub max_log_line_bytes: usize,
    /// What Dapr's `{podName}` tag in metadata stands for: the replica's pod name, the one
    /// variable of the host's environment the component sees (as `POD_NAME`). By default
    /// `$POD_NAME`, which Kubernetes sets through the downward API.
    pub pod_name: Option<String>,
}

impl Default for RuntimeOptions {
    fn default() -> Self {
        Self {
            component: ComponentSource::Embedded,
            cache_dir: default_cache_dir(),
            broker: BrokerSettings::default(),
            max_memory_bytes: 256 * 1024 * 1024,
            max_output_instances: 64,
            max_in_flight_bytes: 64 * 1024 * 1024,
            pooled_instance_max_memory: 8 * 1024 * 1024,
            allowed_brokers: None,
            cpu_budget: Some(std::time::Duration::from_secs(1)),
            max_handles: 1024,
            max_log_lines_per_second: 100,
            max_log_line_bytes: 4096,
            pod_name: std::env::var("POD_NAME")
                .ok()
                .filter(|name| !name.is_empty()),
        }
    }
}

/// `$XDG_CACHE_HOME/mqtt-binding`, else `$HOME/.cache/mqtt-binding`.
pub fn default_cache_dir() -> Option<PathBuf> {
    let base = std::env::var_os("XDG_CACHE_HOME")
        .filter(|dir| !dir.is_empty())
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|home| PathBuf::from(home).join(".cache")))?;
    Some(base.join("mqtt-binding"))
}
