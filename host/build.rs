//! Builds the guest component for wasm32-wasip2 so the host can embed the component it was
//! built with. The wasm builds get their own target directory: the outer cargo holds the
//! lock on ours, and host flags must not leak into a wasm build. With the `portable`
//! feature, the same cargo run also builds the broker plug and the driver, which are then
//! composed with that very guest into the portable component (`portable.rs`). With the
//! `pluggable` feature, also compiles the project's `.proto` files (protox, no `protoc`)
//! into Rust and into the encoded descriptor set the reflection service serves.

#[cfg(feature = "portable")]
#[path = "build/portable.rs"]
mod portable;

use std::env;
use std::path::PathBuf;
use std::process::Command;

use sha2::{Digest, Sha256};

const GUEST: &str = "mqtt-binding-guest";
const TARGET: &str = "wasm32-wasip2";
const WASM_RUSTFLAGS: &str = "--cfg tokio_unstable";

fn main() {
    let manifest_dir =
        PathBuf::from(env::var_os("CARGO_MANIFEST_DIR").expect("cargo sets CARGO_MANIFEST_DIR"));
    let root = manifest_dir
        .parent()
        .expect("host/ sits in the workspace root")
        .to_path_buf();
    let out_dir = PathBuf::from(env::var_os("OUT_DIR").expect("cargo sets OUT_DIR"));
    // Relative to this package, not absolute: checkouts that share a target directory (CI
    // does) get the same fingerprint, and an absolute path would make one checkout watch
    // another's sources and embed a stale guest.
    for watched in [
        "../guest/src",
        "../guest/Cargo.toml",
        "../broker/src",
        "../broker/Cargo.toml",
        "../cli/src",
        "../cli/Cargo.toml",
        "../portable",
        "../wit",
        "../Cargo.lock",
    ] {
        println!("cargo:rerun-if-changed={watched}");
    }

    // Every wasm part in one cargo run, in one folder: the guest and (with `portable`) the
    // plug and the driver share their compiled dependencies (wit-bindgen's macros above
    // all) and build side by side. tokio's networking on wasm32-wasip2 (wasi:sockets) is
    // still behind `--cfg tokio_unstable`; the flag changes nothing in crates that do not
    // ask for it (the guest has no tokio), and the tests build their hostile component
    // with the same flags (`WASM_RUSTFLAGS`) so that nothing is compiled twice.
    let target_dir = out_dir.join("wasm-target");
    #[cfg(feature = "portable")]
    let packages = [&[GUEST][..], &portable::PARTS.map(|(package, _)| package)].concat();
    #[cfg(not(feature = "portable"))]
    let packages = [GUEST];
    let cargo = env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut command = Command::new(cargo);
    command
        .current_dir(&root)
        .args(["build", "--release", "--target", TARGET, "--target-dir"])
        .arg(&target_dir);
    for package in packages {
        command.args(["--package", package]);
    }
    let output = command
        .env_remove("CARGO_ENCODED_RUSTFLAGS")
        .env_remove("CARGO_TARGET_DIR")
        .env_remove("CARGO_BUILD_TARGET")
        .env("RUSTFLAGS", WASM_RUSTFLAGS)
        .output()
        .expect("running cargo to build the wasm components");
    if !output.status.success() {
        let stderr = String::from_utf8_lossy(&output.stderr);
        let hint = if stderr.contains("target may not be installed")
            || stderr.contains("can't find crate for `core`")
        {
            format!(
                "\nthe {TARGET} target is missing; install it with: rustup target add {TARGET}\n"
            )
        } else if stderr.contains("failed to find tool") && stderr.contains("clang") {
            "\nring (TLS inside the portable component) compiles C for wasm32 with clang; install it with: sudo apt-get install clang\n".to_string()
        } else {
            String::new()
        };
        panic!("building the wasm components failed:{hint}\n{stderr}");
    }
    let release = target_dir.join(TARGET).join("release");

    let wasm_path = release.join("mqtt_binding_guest.wasm");
    let wasm = std::fs::read(&wasm_path)
        .unwrap_or_else(|e| panic!("reading {}: {e}", wasm_path.display()));
    std::fs::write(out_dir.join("mqtt_binding_guest.wasm"), &wasm)
        .expect("copying the guest component into OUT_DIR");
    let digest: String = Sha256::digest(&wasm)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    println!("cargo:rustc-env=GUEST_WASM_SHA256={digest}");

    // The tests build their hostile component into the same folder, reusing what the guest
    // compiled (tests/integration/support.rs, `hostile_component`).
    println!(
        "cargo:rustc-env=MQTT_BINDING_GUEST_TARGET={}",
        target_dir.display()
    );
    println!("cargo:rustc-env=MQTT_BINDING_WASM_RUSTFLAGS={WASM_RUSTFLAGS}");

    #[cfg(feature = "portable")]
    portable::compose_into(&release, &out_dir, &wasm);

    #[cfg(feature = "sidecar")]
    compile_protos(
        &out_dir,
        &[
            "dapr/proto/runtime/v1/dapr.proto",
            "dapr/proto/runtime/v1/appcallback.proto",
        ],
        "runtime_descriptor.bin",
    );
    #[cfg(feature = "pluggable")]
    compile_protos(
        &out_dir,
        &["dapr/proto/components/v1/bindings.proto"],
        "components_descriptor.bin",
    );
}

/// Rust for `files` of `proto/` (our own wire-compatible copies of Dapr's definitions), and
/// their encoded descriptor set as `descriptor` (for gRPC reflection).
#[cfg(any(feature = "sidecar", feature = "pluggable"))]
fn compile_protos(out_dir: &std::path::Path, files: &[&str], descriptor: &str) {
    use prost::Message as _;

    println!("cargo:rerun-if-changed=proto");
    let compiled = protox::compile(files, ["proto"])
        .unwrap_or_else(|error| panic!("compiling {files:?} in proto/: {error}"));
    std::fs::write(out_dir.join(descriptor), compiled.encode_to_vec())
        .expect("writing the descriptor set into OUT_DIR");
    tonic_prost_build::configure()
        // An event's data goes out as the payload's own bytes, shared, not copied.
        .bytes(".dapr.proto.runtime.v1.BindingEventRequest.data")
        .bytes(".dapr.proto.components.v1.ReadResponse.data")
        .compile_fds(compiled)
        .unwrap_or_else(|error| panic!("generating code from {files:?}: {error}"));
}
