//! The command of the portable driver: `invoke` and `read` with the native command's
//! arguments, exit codes and error texts, calling the binding component it is composed
//! with. It is a WebAssembly component (`wasi:cli/run`); built natively it only says so.

#[cfg(target_arch = "wasm32")]
mod command;

#[cfg(target_arch = "wasm32")]
fn main() -> std::process::ExitCode {
    command::main()
}

#[cfg(not(target_arch = "wasm32"))]
fn main() -> std::process::ExitCode {
    eprintln!(
        "mqtt-binding-driver-command runs only as part of the portable component (wasm32-wasip2); write that with `mqtt-binding portable --out FILE`"
    );
    std::process::ExitCode::FAILURE
}
