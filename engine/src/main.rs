//! The `steward-engine` binary.
fn main() {}
