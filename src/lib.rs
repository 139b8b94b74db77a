//! Switchyard: a userspace L4 + L7 load-balancing dataplane. This library is the
//! binary's own code — configuration, the worker loop that wires the layers, the
//! simulated world and the operator's reports — kept in a library so the
//! end-to-end tests in `tests/` drive exactly what the binary runs.
#![forbid(unsafe_code)]

pub mod admin;
pub mod config;
pub mod report;
pub mod run;
pub mod worker;
pub mod world;
