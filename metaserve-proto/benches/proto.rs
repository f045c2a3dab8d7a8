//! Criterion benchmarks of metaserve-proto (filled in by the benchmark work).
fn main() {}
