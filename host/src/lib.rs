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
mod bindings;
mod broker;
pub mod component_file;
mod engine;
mod error;
mod imports;
mod payload;
pub mod sidecar;
mod tls;

pub use binding::{Binding, BindingOptions, InvokeRequest, InvokeResponse};
pub use broker::{BrokerSettings, LinkStatus};
pub use engine::{ComponentSource, Runtime, RuntimeOptions, default_cache_dir};
pub use error::{BindingError, BrokerError};
pub use imports::{Delivery, Event, EventHandler};
