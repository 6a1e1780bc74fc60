//! Loading the component once per process: the wasmtime engine, the component (embedded or
//! from a file), the on-disk cache of its compiled code, and the linker that provides every
//! import. Making instances is `instance`'s; running bindings is `binding`'s.

use std::hash::{Hash, Hasher};
use std::path::Path;
use std::sync::Arc;

use anyhow::Context as _;
use sha2::{Digest, Sha256};
use tokio_util::sync::CancellationToken;
use wasmtime::component::{Component, Linker};
use wasmtime::{Config, Engine};

use crate::binding::{Binding, BindingOptions};
use crate::connection_slot::ConnectionSlot;
use crate::error::BindingError;
use crate::generated::MqttBindingPre;
use crate::guest_log;
use crate::host_state::{BindingHost, HasHostView, HostState, HostView};
use crate::instance::{Instance, Instances, component_error};
use crate::runtime_options::{ComponentSource, RuntimeOptions};

/// The component this host was built with (see `build.rs`).
const EMBEDDED_WASM: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/mqtt_binding_guest.wasm"));
const EMBEDDED_SHA256: &str = env!("GUEST_WASM_SHA256");

/// A loaded, compiled, linked component, ready to create bindings from. Cheap to clone.
#[derive(Clone)]
pub struct Runtime {
    instances: Arc<Instances>,
    client_ids: Arc<crate::client_ids::ClientIds>,
}

impl std::fmt::Debug for Runtime {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Runtime")
            .field("options", self.instances.options())
            .finish_non_exhaustive()
    }
}

impl Runtime {
    /// Loads and links the component, from the cache of compiled code when it can.
    pub fn new(options: RuntimeOptions) -> anyhow::Result<Self> {
        let mut config = Config::new();
        // Guest code checks the epoch at function entries and loop heads: how a component
        // that computes without calling the host is made to yield, and stopped (see
        // `instance::Ticker` and `sandbox::CpuWatch`). Without a budget the checks are
        // not compiled in at all.
        config.epoch_interruption(options.cpu_budget.is_some());
        let engine = Engine::new(&config)?;
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
        add_imports(&mut linker)?;
        let pre = MqttBindingPre::new(linker.instantiate_pre(&component)?)
            .map_err(anyhow::Error::from)
            .context("the component does not export the mqtt-binding world")?;
        Ok(Self {
            instances: Arc::new(Instances::new(engine, pre, options)),
            client_ids: Arc::default(),
        })
    }

    /// Creates a binding: an instance of the component initialised with the metadata,
    /// which validates it and connects to the broker.
    pub async fn binding(&self, options: BindingOptions) -> Result<Binding, BindingError> {
        let host = self.host(options.name, options.handler);
        Binding::start(
            self.instances.clone(),
            host,
            options.app_id,
            options.metadata,
        )
        .await
    }

    /// The output operations the component supports, asked of an instance that is not
    /// initialised (no metadata, no connection): what a binding of it would answer.
    pub async fn operations(&self) -> Result<Vec<String>, BindingError> {
        let host = self.host("operations".into(), None);
        let mut instance = self.instances.instance(host).await?;
        let Instance { store, exports } = &mut instance;
        let outcome = exports
            .mqtt_binding_binding_binding()
            .call_operations(store)
            .await
            .map_err(component_error);
        instance.explained(outcome)
    }

    /// What a binding's instances share with the host: its name, handler, settings and
    /// limits.
    fn host(
        &self,
        name: String,
        handler: Option<Arc<dyn crate::EventHandler>>,
    ) -> Arc<BindingHost> {
        let shutdown = CancellationToken::new();
        let options = self.instances.options();
        Arc::new(BindingHost {
            connection: ConnectionSlot::new(
                name.clone(),
                options.broker.clone(),
                options.allowed_brokers.clone(),
                self.client_ids.clone(),
                shutdown.clone(),
            ),
            name,
            handler,
            shutdown,
            log_limiter: std::sync::Mutex::new(crate::sandbox::LogLimiter::new(
                self.instances.options().max_log_lines_per_second,
                std::time::Instant::now(),
            )),
            max_log_line_bytes: self.instances.options().max_log_line_bytes,
            faults: Default::default(),
        })
    }
}

/// Every import of the world. Each interface is added on its own because `logging` is not
/// the generated one: see [`guest_log::add_to_linker`].
fn add_imports(linker: &mut Linker<HostState>) -> anyhow::Result<()> {
    use crate::generated::mqtt_binding::binding::{broker, delivery, lifecycle, types};
    types::add_to_linker::<HostState, HasHostView>(linker, HostView::of)?;
    broker::add_to_linker::<HostState, HasHostView>(linker, HostView::of)?;
    delivery::add_to_linker::<HostState, HasHostView>(linker, HostView::of)?;
    lifecycle::add_to_linker::<HostState, HasHostView>(linker, HostView::of)?;
    guest_log::add_to_linker(linker)
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
