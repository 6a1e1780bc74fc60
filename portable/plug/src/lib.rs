//! The broker plug: the WIT `broker` interface (and `types.payload`, and our `plug`
//! interface) exported by a component, implemented with the same connection crate as the
//! native host, so that the binding runs in any WASI runtime. Only the component glue is
//! here (`component`, built for wasm32); the MQTT connection is `mqtt-binding-broker`'s.

#[cfg(target_arch = "wasm32")]
mod component;
