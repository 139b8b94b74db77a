//! Benchmarks for Switchyard live in `benches/` and `src/bin/`; this library
//! holds what they share: the trace generator and the TLS fixtures.
#![forbid(unsafe_code)]

pub mod tls;
pub mod trace;

use std::net::SocketAddr;

use switchyard_l4::{Backend, ListenerConfig, Scheduler};
use switchyard_stack::Proto;

/// The L4 listener every benchmark measures: `pg` on 198.18.0.10:5432,
/// full-NAT, one backend per address in `backends` (named `pg-1`, ...).
pub fn pg_listener(
    backends: impl IntoIterator<Item = SocketAddr>,
    scheduler: Scheduler,
) -> ListenerConfig {
    ListenerConfig {
        id: 0,
        name: "pg".into(),
        vip: SocketAddr::from(([198, 18, 0, 10], 5432)),
        last_port: 0,
        proto: Proto::Tcp,
        backends: backends
            .into_iter()
            .enumerate()
            .map(|(i, addr)| Backend { name: format!("pg-{}", i + 1), addr, weight: 1 })
            .collect(),
        scheduler,
        forwarding: switchyard_l4::Forwarding::FullNat,
        on_backend_down: switchyard_l4::DownPolicy::Keep,
    }
}
