//! Benchmarks for Switchyard live in `benches/`; this library holds shared helpers.
#![forbid(unsafe_code)]
