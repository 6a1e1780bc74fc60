//! The code wasmtime's `bindgen!` generates for `wit/binding.wit`, fenced off: the rest of
//! the host uses its own types and converts at the edges (`imports`, `instance`, `binding`).

wasmtime::component::bindgen!({
    path: "../wit",
    world: "mqtt-binding",
    imports: { default: async | trappable },
    exports: { default: async },
    with: {
        "mqtt-binding:binding/broker.connection": crate::broker::Connection,
        "mqtt-binding:binding/types.payload": crate::payload::Payload,
        "mqtt-binding:binding/delivery.pending": crate::pending::Pending,
    },
});
