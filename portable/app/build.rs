//! Rebuilds this crate when the WIT changes. wit-bindgen reads files outside the package,
//! which rustc records by absolute path; a checkout sharing the target directory with
//! another (CI's clones do) would then watch the other's WIT and keep stale bindings. A
//! watched path is relative to the package, so it is this checkout's.

fn main() {
    println!("cargo:rerun-if-changed=../../wit");
}
