//! The MQTT binding component. The policy lives in plain Rust modules that build and test
//! on any target: `input` and `output` are written against `host::Host`, the imports as a
//! trait; `component` implements it over the WIT imports, and the WIT exports, on wasm32.

pub mod host;
pub mod input;
pub mod metadata;
pub mod output;
pub mod request;
pub mod retry;
#[cfg(test)]
mod scripted;
pub mod topic;
pub mod window;

#[cfg(target_arch = "wasm32")]
mod component;
