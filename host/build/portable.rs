//! The portable component: the broker plug and the driver's two parts, built for
//! wasm32-wasip2 with tokio's WASI networking (`--cfg tokio_unstable`) beside the guest by
//! the build script, then composed with the guest the host embeds, byte for byte, into one
//! component whose only imports are `wasi:*`.
//!
//! The composition plugs each import by name into the export of an earlier part: the
//! graph is plug → app side → guest → command, acyclic as a composition must be.

use std::path::Path;

use wac_graph::types::Package;
use wac_graph::{CompositionGraph, EncodeOptions};

/// The parts in the order they are instantiated: each may import from those before it.
pub const PARTS: [(&str, &str); 3] = [
    ("mqtt-binding-plug", "mqtt_binding_plug.wasm"),
    ("mqtt-binding-driver-app", "mqtt_binding_driver_app.wasm"),
    (
        "mqtt-binding-driver-command",
        "mqtt-binding-driver-command.wasm",
    ),
];

/// Composes the parts (built by the build script into `release`) with the guest the host
/// embeds, byte for byte, into `OUT_DIR/mqtt_binding_portable.wasm`.
pub fn compose_into(release: &Path, out_dir: &Path, guest: &[u8]) {
    let parts: Vec<(String, Vec<u8>)> = PARTS
        .iter()
        .map(|(package, file)| {
            let path = release.join(file);
            let bytes =
                std::fs::read(&path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()));
            (package.to_string(), bytes)
        })
        .collect();
    let [plug, app, command] = <[_; 3]>::try_from(parts).expect("three parts");
    let composed = compose(vec![
        plug,
        app,
        ("mqtt-binding-guest".to_string(), guest.to_vec()),
        command,
    ])
    .unwrap_or_else(|error| panic!("composing the portable component: {error:?}"));
    std::fs::write(out_dir.join("mqtt_binding_portable.wasm"), composed)
        .expect("writing the portable component into OUT_DIR");
}

/// Instantiates the parts in order, gives each import the export of the same name of the
/// latest earlier part that has one, and exports the last part's `wasi:cli/run`. What no
/// part exports (WASI) becomes an import of the whole.
fn compose(parts: Vec<(String, Vec<u8>)>) -> Result<Vec<u8>, Box<dyn std::error::Error>> {
    let mut graph = CompositionGraph::new();
    let mut instances = Vec::new();
    for (name, bytes) in parts {
        let package = Package::from_bytes(
            &format!("mqtt-binding:{name}"),
            None,
            bytes,
            graph.types_mut(),
        )?;
        let package = graph.register_package(package)?;
        instances.push((package, graph.instantiate(package)));
    }
    for (index, &(package, instance)) in instances.iter().enumerate() {
        let imports: Vec<String> = graph.types()[graph[package].ty()]
            .imports
            .keys()
            .cloned()
            .collect();
        for import in imports {
            let provider = instances[..index].iter().rev().find(|(earlier, _)| {
                graph.types()[graph[*earlier].ty()]
                    .exports
                    .contains_key(&import)
            });
            if let Some(&(_, provider)) = provider {
                let export = graph.alias_instance_export(provider, &import)?;
                graph.set_instantiation_argument(instance, &import, export)?;
            }
        }
    }
    let &(package, command) = instances.last().expect("parts");
    let run = graph.types()[graph[package].ty()]
        .exports
        .keys()
        .find(|name| name.starts_with("wasi:cli/run@"))
        .cloned()
        .ok_or("the command exports no wasi:cli/run")?;
    let export = graph.alias_instance_export(command, &run)?;
    graph.export(export, &run)?;
    Ok(graph.encode(EncodeOptions::default())?)
}
