//! mqtt-binding: Dapr's MQTT binding as a sandboxed WebAssembly component, and the host
//! that runs it. This is the embedding API:
//!
//! ```no_run
//! # async fn example() -> anyhow::Result<()> {
//! use mqtt_binding::{BindingOptions, InvokeRequest, Runtime, RuntimeOptions};
//!
//! let runtime = Runtime::new(RuntimeOptions::default())?;
//! let binding = runtime
//!     .binding(BindingOptions {
//!         name: "orders".into(),
//!         app_id: "shop".into(),
//!         metadata: vec![("url".into(), "tcp://localhost:1883".into()), ("topic".into(), "orders".into())],
//!         handler: None,
//!     })
//!     .await?;
//! binding
//!     .invoke(InvokeRequest { operation: "create".into(), data: b"hello".to_vec(), metadata: vec![] })
//!     .await?;
//! binding.close().await;
//! # Ok(())
//! # }
//! ```

mod binding;
#[cfg(test)]
mod binding_tests;
mod broker_policy;
mod client_ids;
mod connection_slot;
mod error;
mod generated;
mod guest_log;
mod handler;
mod host_state;
mod imports;
mod instance;
#[cfg(any(feature = "sidecar", feature = "pluggable"))]
pub mod metrics;
mod payload;
mod pending;
#[cfg(feature = "pluggable")]
pub mod pluggable;
#[cfg(any(feature = "sidecar", feature = "pluggable"))]
pub mod registry;
mod runtime;
mod runtime_options;
mod sandbox;
#[cfg(feature = "sidecar")]
pub mod sidecar;

/// The portable component: this binding composed with a broker plug (the same MQTT
/// connection code as this host's, over `wasi:sockets`) and a command driver (`invoke` and
/// `read`), into one component whose only imports are `wasi:*`, for the wasmtime CLI, jco
/// or any other WASI runtime. The binding inside is byte for byte the embedded one.
#[cfg(feature = "portable")]
pub const PORTABLE_COMPONENT: &[u8] =
    include_bytes!(concat!(env!("OUT_DIR"), "/mqtt_binding_portable.wasm"));

/// Dapr Component files, shared with the portable driver.
#[cfg(feature = "sidecar")]
pub use mqtt_binding_cli::component_file;

/// The broker connection, a crate of its own so that the broker plug builds it for wasm too.
use mqtt_binding_broker as broker;

pub use binding::{Binding, BindingOptions, BindingStats, InvokeRequest, InvokeResponse};
pub use broker::{BrokerSettings, LinkStatus};
pub use broker_policy::AllowedBroker;
pub use error::{BindingError, BrokerError};
pub use handler::{Answer, Delivery, Event, EventHandler, Metadata};
pub use runtime::Runtime;
pub use runtime_options::{ComponentSource, RuntimeOptions, default_cache_dir};
