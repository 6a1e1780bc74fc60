//! The app side of the portable driver: the application the binding delivers to when it
//! runs in a plain WASI runtime. Each event becomes one JSON line on stdout (the line the
//! native `read` prints), accepted once the line is written and flushed; logs go to stderr;
//! `sleep` waits on `wasi:clocks`. The rules (the count, the level filter) are plain Rust
//! in `tally` and `level`; `component` joins them to the WIT exports on wasm32.

pub mod tally;

#[cfg(target_arch = "wasm32")]
mod component;
