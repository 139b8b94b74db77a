//! Benchmarks for Switchyard live in `benches/` and `src/bin/`; this library
//! holds what they share: the trace generator.
#![forbid(unsafe_code)]

pub mod trace;
