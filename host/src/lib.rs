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

mod backoff;
mod binding;
#[cfg(test)]
mod binding_tests;
mod broker;
mod broker_policy;
mod client_ids;
#[cfg(feature = "sidecar")]
pub mod component_file;
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
mod runtime;
mod runtime_options;
#[cfg(feature = "sidecar")]
pub mod sidecar;
pub mod supervisor;
mod tls;

pub use binding::{Binding, BindingOptions, BindingStats, InvokeRequest, InvokeResponse};
pub use broker::{BrokerSettings, LinkStatus};
pub use broker_policy::AllowedBroker;
pub use error::{BindingError, BrokerError};
pub use handler::{Answer, Delivery, Event, EventHandler};
pub use runtime::Runtime;
pub use runtime_options::{ComponentSource, RuntimeOptions, default_cache_dir};
