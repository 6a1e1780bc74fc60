//! The MQTT binding component. The policy lives in plain Rust modules that build and test
//! on any target; `component` joins them to the WIT imports and exports on wasm32.

pub mod metadata;
pub mod request;
pub mod retry;
pub mod topic;
pub mod window;

#[cfg(target_arch = "wasm32")]
mod component;
