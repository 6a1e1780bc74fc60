//! Loading the component once per process: the wasmtime engine, the component (embedded or
//! from a file), the on-disk cache of its compiled code, and the linker that provides every
//! import. Creating bindings from it is left to `binding`.

use std::hash::{Hash, Hasher};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::Context as _;
use sha2::{Digest, Sha256};
use tokio_util::sync::CancellationToken;
use wasmtime::component::{Component, Linker, ResourceTable};
use wasmtime::{Config, Engine, Store, StoreLimitsBuilder};
use wasmtime_wasi::WasiCtxBuilder;

use crate::binding::{Binding, BindingOptions, Instance, component_error};
use crate::bindings::{MqttBinding, MqttBindingPre};
use crate::broker::BrokerSettings;
use crate::error::BindingError;
use crate::imports::{BindingHost, HasHostView, HostState, HostView, Limits};

/// The component this host was built with (see `build.rs`).
const EMBEDDED_WASM: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/mqtt_binding_guest.wasm"));
const EMBEDDED_SHA256: &str = env!("GUEST_WASM_SHA256");

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

/// A loaded, compiled, linked component, ready to create bindings from. Cheap to clone.
#[derive(Clone)]
pub struct Runtime {
    inner: Arc<RuntimeInner>,
}

pub(crate) struct RuntimeInner {
    engine: Engine,
    pre: MqttBindingPre<HostState>,
    options: RuntimeOptions,
}

impl std::fmt::Debug for Runtime {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Runtime")
            .field("options", &self.inner.options)
            .finish_non_exhaustive()
    }
}

impl Runtime {
    /// Loads and links the component, from the cache of compiled code when it can.
    pub fn new(options: RuntimeOptions) -> anyhow::Result<Self> {
        let engine = Engine::new(&Config::new())?;
        let component = match &options.component {
            ComponentSource::Embedded => load(
                &engine,
                EMBEDDED_WASM,
                EMBEDDED_SHA256,
                options.cache_dir.as_deref(),
            )
            .context("loading the embedded component")?,
            ComponentSource::File(path) => {
                let wasm = std::fs::read(path)
                    .with_context(|| format!("reading component {}", path.display()))?;
                let digest = hex(&Sha256::digest(&wasm));
                load(&engine, &wasm, &digest, options.cache_dir.as_deref())
                    .with_context(|| format!("loading component {}", path.display()))?
            }
        };
        let mut linker = Linker::new(&engine);
        wasmtime_wasi::p2::add_to_linker_async(&mut linker)?;
        MqttBinding::add_to_linker::<HostState, HasHostView>(&mut linker, HostView::of)?;
        let pre = MqttBindingPre::new(linker.instantiate_pre(&component)?)
            .map_err(anyhow::Error::from)
            .context("the component does not export the mqtt-binding world")?;
        Ok(Self {
            inner: Arc::new(RuntimeInner {
                engine,
                pre,
                options,
            }),
        })
    }

    /// Creates a binding: an instance of the component initialised with the metadata,
    /// which validates it and connects to the broker.
    pub async fn binding(&self, options: BindingOptions) -> Result<Binding, BindingError> {
        let host = Arc::new(BindingHost {
            name: options.name,
            handler: options.handler,
            shutdown: CancellationToken::new(),
            settings: self.inner.options.broker.clone(),
            connection: tokio::sync::Mutex::new(None),
        });
        Binding::start(self.inner.clone(), host, options.app_id, options.metadata).await
    }
}

impl RuntimeInner {
    pub(crate) fn max_output_instances(&self) -> usize {
        self.options.max_output_instances.max(1)
    }

    pub(crate) fn options(&self) -> &RuntimeOptions {
        &self.options
    }

    /// A fresh instance of the component for `host`'s binding, not yet initialised.
    pub(crate) async fn instance(&self, host: Arc<BindingHost>) -> Result<Instance, BindingError> {
        // The guest gets no sockets, no files, no environment: its only network is the
        // broker connection import. stderr is kept so a guest panic is visible.
        let wasi = WasiCtxBuilder::new()
            .inherit_stderr()
            .allow_tcp(false)
            .allow_udp(false)
            .allow_ip_name_lookup(false)
            .build();
        let limits = Limits {
            inner: StoreLimitsBuilder::new()
                .memory_size(self.options.max_memory_bytes)
                .build(),
            memory_bytes: 0,
            max_memory_bytes: self.options.max_memory_bytes,
            refused_bytes: None,
        };
        let state = HostState {
            wasi,
            table: ResourceTable::new(),
            limits,
            host: host.clone(),
            repeating_init: false,
        };
        let mut store = Store::new(&self.engine, state);
        store.limiter(|state| &mut state.limits);
        let exports = self
            .pre
            .instantiate_async(&mut store)
            .await
            .map_err(component_error)?;
        Ok(Instance::new(store, exports))
    }
}

/// Loads compiled code from the cache, or compiles and stores it. The key covers the
/// component's SHA-256 and everything of the engine that compiled code depends on.
fn load(
    engine: &Engine,
    wasm: &[u8],
    digest: &str,
    cache_dir: Option<&Path>,
) -> anyhow::Result<Component> {
    let Some(dir) = cache_dir else {
        return Ok(Component::new(engine, wasm)?);
    };
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    engine.precompile_compatibility_hash().hash(&mut hasher);
    let path = dir.join(format!("{digest}-{:016x}.cwasm", hasher.finish()));
    if path.exists() {
        match deserialize(engine, &path) {
            Ok(component) => return Ok(component),
            Err(error) => {
                tracing::debug!(path = %path.display(), "cached component unusable, recompiling: {error:#}")
            }
        }
    }
    let component = Component::new(engine, wasm)?;
    if let Err(error) = store_compiled(dir, &path, &component) {
        tracing::warn!(dir = %dir.display(), "cannot cache the compiled component: {error:#}");
    }
    Ok(component)
}

#[expect(
    unsafe_code,
    reason = "loading native code that this program compiled and wrote itself"
)]
fn deserialize(engine: &Engine, path: &Path) -> anyhow::Result<Component> {
    // SAFETY: the file was written by `store_compiled`, atomically (rename), into a
    // directory created by this program; wasmtime checks it was produced by a compatible
    // engine. Anyone able to write that directory can already run code as this user.
    Ok(unsafe { Component::deserialize_file(engine, path) }?)
}

fn store_compiled(dir: &Path, path: &Path, component: &Component) -> anyhow::Result<()> {
    use std::os::unix::fs::DirBuilderExt as _;
    // Owner-only: loading from here runs native code (see `deserialize`).
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)?;
    let bytes = component.serialize()?;
    // Written beside its final name and renamed into place, so that a reader never sees a
    // partial file, even with several processes compiling at once.
    let mut temp = tempfile::NamedTempFile::new_in(dir)?;
    std::io::Write::write_all(&mut temp, &bytes)?;
    temp.persist(path)?;
    Ok(())
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
