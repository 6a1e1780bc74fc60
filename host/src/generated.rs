//! The generated bindings for `wit/binding.wit`, fenced off: the rest of the host uses our
//! own types and converts at the edges (`imports`, `binding`).

wasmtime::component::bindgen!({
    path: "../wit",
    world: "mqtt-binding",
    imports: { default: async | trappable },
    exports: { default: async },
    with: {
        "mqtt-binding:binding/broker.connection": crate::broker::Connection,
        "mqtt-binding:binding/types.payload": crate::payload::Payload,
    },
});
