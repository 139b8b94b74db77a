//! What the operator sees: a snapshot of the counters of every listener,
//! backend and simulated client, printed as a live table while a simulation runs
//! and as a summary at the end.

use std::fmt::Write as _;

use crate::config::{Mode, SimClientKind};
use crate::world::{BackendHost, ClientHost, World};

/// One listener's counters.
#[derive(Debug, Clone, Default)]
pub struct ListenerRow {
    /// Listener name.
    pub name: String,
    /// `l4` or `l7`.
    pub mode: &'static str,
    /// Its address.
    pub addr: String,
    /// Active flows (L4) or client connections (L7).
    pub active: u64,
    /// Flows (L4) or client connections (L7) since start.
    pub total_conns: u64,
    /// Bytes through the listener, both directions.
    pub bytes: u64,
    /// Requests (L7) or packets (L4) since start.
    pub units: u64,
    /// Errors the load balancer counted: refused flows (L4); parse errors,
    /// upstream failures, timeouts and 5xx it generated (L7).
    pub errors: u64,
}

/// One backend's counters, from both ends of the wire.
#[derive(Debug, Clone, Default)]
pub struct BackendRow {
    /// Pool name.
    pub pool: String,
    /// Backend name.
    pub name: String,
    /// Flows (L4) or requests (L7) the load balancer sent it.
    pub lb_sent: u64,
    /// Upstream connections opened (L7).
    pub upstream_connects: u64,
    /// Requests sent on a reused keep-alive connection (L7).
    pub upstream_reuses: u64,
    /// Connections (echo) or requests (HTTP) the backend host itself counted.
    pub host_served: u64,
    /// Errors the host counted.
    pub host_errors: u64,
}

/// One client population's counters.
#[derive(Debug, Clone, Default)]
pub struct ClientRow {
    /// Name.
    pub name: String,
    /// `http` or `bulk`.
    pub kind: &'static str,
    /// Requests or streams completed and verified.
    pub ok: u64,
    /// Errors, wrong bodies, failed streams, timeouts.
    pub errors: u64,
    /// Connections opened (HTTP) or streams started (bulk).
    pub connections: u64,
    /// Bytes received.
    pub bytes: u64,
    /// Finished everything it started.
    pub done: bool,
}

/// All counters at one moment.
#[derive(Debug, Clone, Default)]
pub struct Snapshot {
    /// Virtual seconds since the clients started.
    pub t: f64,
    /// Listeners in configuration order.
    pub listeners: Vec<ListenerRow>,
    /// Backends by pool.
    pub backends: Vec<BackendRow>,
    /// Clients.
    pub clients: Vec<ClientRow>,
    /// Frames the stack dropped, by reason name.
    pub drops: Vec<(&'static str, u64)>,
    /// L4 drops by reason, non-zero only.
    pub l4_drops: Vec<(&'static str, u64)>,
    /// Pool allocations beyond the preallocated buffers.
    pub pool_misses: u64,
}

impl Snapshot {
    /// Reads every counter of the world.
    pub fn take(w: &World) -> Snapshot {
        let lb = w.lb.borrow();
        let dp = &lb.dp;
        let mut s = Snapshot {
            t: (w.net.now() - w.start).total_micros() as f64 / 1e6,
            pool_misses: dp.pool_stats().misses,
            ..Snapshot::default()
        };
        let pools_l7 = dp.l7.pool_stats();
        for (i, l) in w.cfg.listeners.iter().enumerate() {
            let id = i as u16;
            let mut row = ListenerRow {
                name: l.name.clone(),
                addr: l.addr.to_string(),
                ..Default::default()
            };
            match &l.mode {
                Mode::L4 { pool, .. } => {
                    row.mode = "l4";
                    if let Some(st) = dp.l4.listener_stats(id) {
                        row.active = st.flows_active;
                        row.total_conns = st.flows_new;
                        row.bytes = st.bytes_in + st.bytes_out;
                        row.units = st.packets_in + st.packets_out;
                        row.errors = st.flows_refused();
                    }
                    for (b, bs) in w.cfg.pools[*pool].backends.iter().zip(dp.l4.backend_stats(id)) {
                        s.backends.push(BackendRow {
                            pool: w.cfg.pools[*pool].name.clone(),
                            name: b.name.clone(),
                            lb_sent: bs.flows_new,
                            ..Default::default()
                        });
                    }
                }
                Mode::L7 { .. } => {
                    row.mode = "l7";
                    if let Some(st) = dp.l7.listener_stats(id) {
                        row.active = st.connections_active;
                        row.total_conns = st.connections_total;
                        row.bytes = st.bytes_in + st.bytes_out;
                        row.units = st.requests;
                        row.errors = st.errors;
                    }
                }
            }
            s.listeners.push(row);
        }
        // L7 pools: one row per backend of every pool some route uses.
        for (pi, ps) in pools_l7.iter().enumerate() {
            let used = w.cfg.listeners.iter().any(
                |l| matches!(&l.mode, Mode::L7 { routes, .. } if routes.iter().any(|r| r.fixed.is_none() && r.pool == pi)),
            );
            if !used {
                continue;
            }
            for b in &ps.backends {
                s.backends.push(BackendRow {
                    pool: ps.name.clone(),
                    name: b.name.clone(),
                    lb_sent: b.requests,
                    upstream_connects: b.upstream_connects,
                    upstream_reuses: b.upstream_reuses,
                    ..Default::default()
                });
            }
        }
        for (pool, hosts) in w.cfg.pools.iter().zip(&w.backends) {
            for (b, h) in pool.backends.iter().zip(hosts) {
                for row in s.backends.iter_mut().filter(|r| r.name == b.name && r.pool == pool.name)
                {
                    row.host_served = h.served();
                    if let BackendHost::Http(st) = h {
                        row.host_errors = st.borrow().errors;
                    }
                }
            }
        }
        for (c, h) in w.cfg.sim.iter().flat_map(|s| s.clients.iter()).zip(&w.clients) {
            let mut row = ClientRow {
                name: c.name.clone(),
                errors: h.errors(),
                done: h.done(),
                ..Default::default()
            };
            match h {
                ClientHost::Http(st) | ClientHost::H2c(st) => {
                    let st = st.borrow();
                    row.kind = match c.kind {
                        SimClientKind::Https => "https",
                        SimClientKind::H2c => "h2c",
                        SimClientKind::H2 => "h2",
                        _ => "http",
                    };
                    row.ok = st.responses_ok;
                    row.connections = st.connections;
                    row.bytes = st.bytes_in;
                }
                ClientHost::Bulk(st) => {
                    let st = st.borrow();
                    row.kind = "bulk";
                    row.ok = st.streams_ok;
                    row.connections = st.streams_started;
                    row.bytes = st.bytes_received;
                }
                ClientHost::Udp(st) => {
                    let st = st.borrow();
                    row.kind = "udp";
                    row.ok = st.ok;
                    row.connections = st.sent;
                    row.bytes = 0;
                }
            }
            s.clients.push(row);
        }
        let c = dp.stack.counters();
        for r in switchyard_stack::DropReason::ALL {
            let n = c.dropped(r);
            if n > 0 {
                s.drops.push((r.name(), n));
            }
        }
        for r in switchyard_l4::L4Drop::ALL {
            let n = dp.l4.counters().dropped(r);
            if n > 0 {
                s.l4_drops.push((r.name(), n));
            }
        }
        s
    }

    /// Total client errors.
    pub fn client_errors(&self) -> u64 {
        self.clients.iter().map(|c| c.errors).sum()
    }

    /// The live table: rates are computed against the previous snapshot.
    pub fn live(&self, prev: &Snapshot, seed: u64) -> String {
        let dt = (self.t - prev.t).max(1e-9);
        let mut o = String::new();
        let _ = writeln!(o, "switchyard demo   virtual time {:>5.1} s   sim seed {seed}", self.t);
        let _ = writeln!(
            o,
            "{:<12} {:<4} {:<20} {:>8} {:>14} {:>14} {:>7}",
            "LISTENER", "MODE", "ADDRESS", "ACTIVE", "RATE", "TOTAL", "ERRORS"
        );
        for (l, p) in self.listeners.iter().zip(&prev.listeners) {
            let (rate, total) = if l.mode == "l4" {
                (format!("{}/s", bytes((l.bytes - p.bytes) as f64 / dt)), bytes(l.bytes as f64))
            } else {
                (
                    format!("{:.0} req/s", (l.units - p.units) as f64 / dt),
                    format!("{} req", l.units),
                )
            };
            let _ = writeln!(
                o,
                "{:<12} {:<4} {:<20} {:>8} {:>14} {:>14} {:>7}",
                l.name, l.mode, l.addr, l.active, rate, total, l.errors
            );
        }
        let _ = writeln!(
            o,
            "{:<12} {:<4} {:>10} {:>10} {:>8}",
            "CLIENT", "KIND", "OK", "ERRORS", "DONE"
        );
        for c in &self.clients {
            let _ = writeln!(
                o,
                "{:<12} {:<4} {:>10} {:>10} {:>8}",
                c.name,
                c.kind,
                c.ok,
                c.errors,
                if c.done { "yes" } else { "" }
            );
        }
        o
    }

    /// The end-of-run summary.
    pub fn summary(&self) -> String {
        let mut o = String::new();
        let _ = writeln!(o, "== summary after {:.1} s of virtual time ==", self.t);
        let _ = writeln!(
            o,
            "{:<12} {:<4} {:<20} {:>10} {:>12} {:>12} {:>12} {:>7}",
            "LISTENER", "MODE", "ADDRESS", "CONNS", "REQUESTS", "PACKETS", "BYTES", "ERRORS"
        );
        for l in &self.listeners {
            let (req, pkts) = if l.mode == "l7" {
                (l.units.to_string(), "-".into())
            } else {
                ("-".into(), l.units.to_string())
            };
            let _ = writeln!(
                o,
                "{:<12} {:<4} {:<20} {:>10} {:>12} {:>12} {:>12} {:>7}",
                l.name,
                l.mode,
                l.addr,
                l.total_conns,
                req,
                pkts,
                bytes(l.bytes as f64),
                l.errors
            );
        }
        let _ = writeln!(
            o,
            "{:<8} {:<10} {:>10} {:>10} {:>10} {:>12} {:>7}",
            "POOL", "BACKEND", "LB→SENT", "UP-CONNS", "REUSED", "HOST-SERVED", "ERRORS"
        );
        for b in &self.backends {
            let _ = writeln!(
                o,
                "{:<8} {:<10} {:>10} {:>10} {:>10} {:>12} {:>7}",
                b.pool,
                b.name,
                b.lb_sent,
                b.upstream_connects,
                b.upstream_reuses,
                b.host_served,
                b.host_errors
            );
        }
        let _ = writeln!(
            o,
            "{:<12} {:<4} {:>10} {:>10} {:>12} {:>12} {:>6}",
            "CLIENT", "KIND", "CONNS", "OK", "BYTES-IN", "ERRORS", "DONE"
        );
        for c in &self.clients {
            let _ = writeln!(
                o,
                "{:<12} {:<4} {:>10} {:>10} {:>12} {:>12} {:>6}",
                c.name,
                c.kind,
                c.connections,
                c.ok,
                bytes(c.bytes as f64),
                c.errors,
                if c.done { "yes" } else { "no" }
            );
        }
        if self.drops.is_empty() {
            let _ = writeln!(o, "stack drops: none");
        } else {
            let list: Vec<String> = self.drops.iter().map(|(r, n)| format!("{r}={n}")).collect();
            let _ = writeln!(o, "stack drops: {}", list.join(" "));
        }
        if !self.l4_drops.is_empty() {
            let list: Vec<String> = self.l4_drops.iter().map(|(r, n)| format!("{r}={n}")).collect();
            let _ = writeln!(o, "l4 drops: {}", list.join(" "));
        }
        let _ = writeln!(o, "packet buffer pool misses: {}", self.pool_misses);
        o
    }

    /// Problems that make a run a failure: client errors, unfinished clients,
    /// and listeners or backends that carried nothing.
    pub fn problems(&self) -> Vec<String> {
        let mut p = Vec::new();
        for c in &self.clients {
            if c.errors > 0 {
                p.push(format!("client `{}` saw {} errors", c.name, c.errors));
            }
            if !c.done {
                p.push(format!("client `{}` did not finish", c.name));
            }
            if c.ok == 0 {
                p.push(format!("client `{}` completed nothing", c.name));
            }
        }
        for l in &self.listeners {
            if l.total_conns == 0 {
                p.push(format!("listener `{}` carried no traffic", l.name));
            }
        }
        for b in &self.backends {
            if b.host_served == 0 {
                p.push(format!("backend `{}` served nothing", b.name));
            }
        }
        p
    }
}

/// Bytes in human units.
pub fn bytes(b: f64) -> String {
    const UNITS: [&str; 5] = ["B", "KB", "MB", "GB", "TB"];
    let mut v = b;
    let mut u = 0;
    while v >= 1000.0 && u + 1 < UNITS.len() {
        v /= 1000.0;
        u += 1;
    }
    if u == 0 { format!("{v:.0} {}", UNITS[u]) } else { format!("{v:.1} {}", UNITS[u]) }
}
