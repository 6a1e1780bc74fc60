//! What the native `mqtt-binding` command and the portable driver (the binding composed
//! into one WASI component) share, so that both read the same files and print the same
//! lines: the arguments of `invoke` and `read` (`args`), the Dapr Component file
//! (`component_file`) and the JSON line `read` writes for each event (`event_line`).

pub mod args;
pub mod component_file;
pub mod event_line;
