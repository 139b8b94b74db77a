//! The worker: one port, one stack, one L4 table, one L7 proxy, run to completion
//! on one core. Each `poll` moves one receive burst through the layers and sends
//! everything they produced in one transmit burst (DESIGN.md, "The packet path").

use std::net::IpAddr;

use switchyard_l4::{L4, Verdict};
use switchyard_l7::L7;
use switchyard_l7::h2front::H2Front;
use switchyard_nic::{BURST, Mbuf, Pool, Port};
use switchyard_stack::health::{Change, HealthChecker};
use switchyard_stack::tcp::TcpEvent;
use switchyard_stack::{
    DropReason, Ingress, Instant, ListenerKind, PacketMeta, Proto, Stack, StackConfig, WorkerSlot,
};
use switchyard_tls::{InlineEngine, SoftwareEngine, Tls};

use crate::config::{Config, Mode, TlsEngine};

/// Packet buffers per worker: enough for a receive burst, socket output and the
/// frames waiting for ARP, with room to spare.
const POOL_BUFFERS: usize = 8192;

/// Errors building a worker from a configuration.
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    /// The stack refused a listener or port range.
    #[error("stack: {0}")]
    Stack(#[from] switchyard_stack::StackError),
    /// The L4 layer refused its configuration.
    #[error("l4: {0}")]
    L4(#[from] switchyard_l4::L4Error),
    /// The L7 layer refused its configuration.
    #[error("l7: {0}")]
    L7(#[from] switchyard_l7::L7Error),
}

/// The layers of one worker, without the port.
pub struct Dataplane {
    /// L2/L3 and TCP termination.
    pub stack: Stack,
    /// The L4 connection table.
    pub l4: L4,
    /// The L7 proxy.
    pub l7: L7,
    /// TLS termination in front of L7.
    pub tls: Tls,
    tls_events: Vec<TcpEvent>,
    /// HTTP/2 towards clients, translated to L7's HTTP/1.1.
    pub h2: H2Front,
    h2_events: Vec<TcpEvent>,
    /// Active health checks of L4 backends.
    pub health: HealthChecker,
    changes: Vec<Change>,
    pool: Pool,
    rx: Vec<Mbuf>,
    /// Client packets of L4 flows from the current burst.
    l4_burst: Vec<(Mbuf, PacketMeta, u16)>,
    tx: Vec<Mbuf>,
    events: Vec<TcpEvent>,
    more_rx: bool,
    /// Frames the port could not take and that were dropped.
    pub tx_dropped: u64,
    /// Pool and backend names, and the L4 listeners of each pool, for
    /// operator commands.
    pools: Vec<PoolNames>,
}

struct PoolNames {
    name: String,
    backends: Vec<String>,
    l4_listeners: Vec<u16>,
}

/// Health check tags are (L4 listener id, backend) or, with this bit set in
/// the first half, (L7 pool index, backend).
pub const L7_POOL_TAG: u16 = 0x8000;

/// Adds the health checks of `pool`'s backends, tagged `(tag, backend)`.
fn add_checks(health: &mut HealthChecker, pool: &crate::config::Pool, tag: u16) {
    let Some(check) = pool.health else { return };
    for (bi, b) in pool.backends.iter().enumerate() {
        let t = (tag, bi as u16);
        match &pool.http_check {
            Some(http) => health.add_http(t, b.addr, check, http.clone(), Instant::from_millis(0)),
            None => health.add(t, b.addr, check, Instant::from_millis(0)),
        }
    }
}

/// Where this worker's TLS handshakes run ([`Config::tls_engine`]), `auto`
/// decided by the CPUs the process may run on (its affinity mask and CPU
/// quota).
pub fn tls_engine(cfg: &Config) -> TlsEngine {
    cfg.tls_engine(std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1))
}

impl Dataplane {
    /// Builds the layers for `cfg` (the only worker).
    pub fn new(cfg: &Config) -> Result<Dataplane, BuildError> {
        Dataplane::for_worker(cfg, WorkerSlot::default())
    }

    /// Builds the layers of worker `worker` for `cfg`: it hands out only its
    /// share of local ports, and only worker 0 answers neighbor discovery.
    pub fn for_worker(cfg: &Config, worker: WorkerSlot) -> Result<Dataplane, BuildError> {
        // Each worker its own ISNs and port sequence.
        let seed = cfg.device.seed ^ u64::from(worker.index).wrapping_mul(0x9e37_79b9_7f4a_7c15);
        let mut stack = Stack::new(
            StackConfig {
                mac: cfg.device.mac,
                addresses: cfg.device.addresses.clone(),
                gateway: cfg.device.gateway,
                tcp: cfg.tcp.clone(),
                worker,
            },
            seed,
        );
        let mut l4_listeners = Vec::new();
        let mut l7_listeners = Vec::new();
        let mut tls_listeners = Vec::new();
        let mut h2_listeners = Vec::new();
        let mut health = HealthChecker::default();
        let mut pools: Vec<PoolNames> = cfg
            .pools
            .iter()
            .map(|p| PoolNames {
                name: p.name.clone(),
                backends: p.backends.iter().map(|b| b.name.clone()).collect(),
                l4_listeners: Vec::new(),
            })
            .collect();
        for (i, l) in cfg.listeners.iter().enumerate() {
            let id = i as u16;
            match &l.mode {
                Mode::L4 { proto, pool, scheduler, forwarding, on_backend_down } => {
                    pools[*pool].l4_listeners.push(id);
                    if l.last_port > l.addr.port() {
                        stack.add_l4_listener_range(l.addr, l.last_port, *proto, id)?;
                    } else {
                        stack.add_listener(l.addr, *proto, ListenerKind::L4, id)?;
                    }
                    add_checks(&mut health, &cfg.pools[*pool], id);
                    l4_listeners.push(switchyard_l4::ListenerConfig {
                        id,
                        name: l.name.clone(),
                        vip: l.addr,
                        last_port: l.last_port,
                        proto: *proto,
                        backends: cfg.pools[*pool]
                            .backends
                            .iter()
                            .map(|b| switchyard_l4::Backend {
                                name: b.name.clone(),
                                addr: b.addr,
                                weight: b.weight,
                            })
                            .collect(),
                        scheduler: *scheduler,
                        forwarding: *forwarding,
                        on_backend_down: *on_backend_down,
                    });
                }
                Mode::L7 { routes, tls, http2, client_cert_header, passthrough } => {
                    if *http2 {
                        h2_listeners.push(id);
                    }
                    stack.add_listener(l.addr, Proto::Tcp, ListenerKind::L7, id)?;
                    if let Some(t) = tls {
                        tls_listeners.push((id, t.clone()));
                    }
                    l7_listeners.push(switchyard_l7::ListenerConfig {
                        id,
                        name: l.name.clone(),
                        routes: routes.clone(),
                        tls: tls.is_some(),
                        client_cert_header: client_cert_header.clone(),
                        passthrough: *passthrough,
                    });
                }
            }
        }
        // L7 pools are checked once each, whichever routes use them.
        for (pi, p) in cfg.pools.iter().enumerate() {
            let used = cfg.listeners.iter().any(|l| {
                matches!(&l.mode, Mode::L7 { routes, .. }
                    if routes.iter().any(|r| r.fixed.is_none() && r.pool == pi))
            });
            if used {
                add_checks(&mut health, p, L7_POOL_TAG | pi as u16);
            }
        }
        let snat_addrs: Vec<IpAddr> = cfg.device.addresses.iter().map(|(a, _)| *a).collect();
        let l4 = L4::new(switchyard_l4::L4Config {
            listeners: l4_listeners,
            snat_addrs,
            snat_ports: cfg.snat_ports.clone(),
            table_capacity: cfg.l4_table_capacity as usize,
            timeouts: switchyard_l4::Timeouts::default(),
            hash_seed: cfg.device.seed ^ 0x4c34,
            worker,
        })?;
        for (addr, proto, ports) in l4.snat_reservations() {
            stack.reserve_l4_ports(addr, proto, ports)?;
        }
        let l7 = L7::new(switchyard_l7::L7Config {
            listeners: l7_listeners,
            pools: cfg
                .pools
                .iter()
                .map(|p| switchyard_l7::PoolConfig {
                    name: p.name.clone(),
                    backends: p
                        .backends
                        .iter()
                        .map(|b| switchyard_l7::Backend {
                            name: b.name.clone(),
                            addr: b.addr,
                            weight: b.weight,
                        })
                        .collect(),
                    outlier: p.outlier,
                    balance: p.balance.clone(),
                })
                .collect(),
            limits: cfg.http.clone(),
        })?;
        // Handshakes run on an engine thread of this worker's, or inline
        // between its turns (`[tls] engine`); no thread is started without a
        // TLS listener or pool.
        let tls_pools = cfg.pools.iter().filter_map(|p| p.tls.as_ref().map(|t| (p, t)));
        let mut tls = match tls_engine(cfg) {
            TlsEngine::Inline => {
                Tls::new(tls_listeners, InlineEngine::new(1024, cfg.tls.inline_steps))
            }
            _ => Tls::new(tls_listeners, SoftwareEngine::new(usize::from(cfg.uses_tls()), 1024)),
        };
        for (p, t) in tls_pools {
            for (b, sni) in p.backends.iter().zip(&t.sni) {
                // Names were checked at load.
                let _ = tls.add_upstream(b.addr, t.config.clone(), sni);
            }
        }
        let mut dp = Dataplane {
            stack,
            l4,
            l7,
            tls,
            tls_events: Vec::new(),
            h2: {
                let mut f = H2Front::new(h2_listeners);
                f.set_idle_timeout(cfg.http.idle_timeout);
                f.add_h2c_backends(
                    cfg.pools
                        .iter()
                        .filter(|p| p.h2c)
                        .flat_map(|p| p.backends.iter().map(|b| b.addr)),
                );
                f
            },
            h2_events: Vec::new(),
            health,
            changes: Vec::new(),
            pool: Pool::with_count(POOL_BUFFERS),
            rx: Vec::with_capacity(BURST),
            l4_burst: Vec::with_capacity(BURST),
            tx: Vec::with_capacity(4 * BURST),
            events: Vec::with_capacity(256),
            more_rx: false,
            tx_dropped: 0,
            pools,
        };
        for p in &cfg.pools {
            for b in p.backends.iter().filter(|b| b.drain) {
                let _ = dp.set_drain(&p.name, &b.name, true);
            }
        }
        Ok(dp)
    }

    /// Drains or undrains backend `backend` of pool `pool` on every listener
    /// that uses the pool, L4 and L7; the number of L4 listeners affected.
    pub fn set_drain(&mut self, pool: &str, backend: &str, drain: bool) -> Result<usize, String> {
        let Some(pi) = self.pools.iter().position(|p| p.name == pool) else {
            let names: Vec<&str> = self.pools.iter().map(|p| p.name.as_str()).collect();
            return Err(format!("no pool `{pool}` (pools: {})", names.join(", ")));
        };
        let p = &self.pools[pi];
        let Some(bi) = p.backends.iter().position(|b| b == backend) else {
            return Err(format!(
                "pool `{pool}` has no backend `{backend}` (backends: {})",
                p.backends.join(", ")
            ));
        };
        for &id in &p.l4_listeners {
            self.l4.set_backend_drain(id, bi, drain);
        }
        self.l7.set_backend_drain(pi, bi, drain);
        Ok(p.l4_listeners.len())
    }

    /// One line per backend: pool, name, state (up, down, drained) and the
    /// active flows over the pool's L4 listeners.
    pub fn show_backends(&self) -> String {
        let mut out = String::new();
        for (pi, p) in self.pools.iter().enumerate() {
            for (bi, b) in p.backends.iter().enumerate() {
                let mut state = if self.l7.backend_drained(pi, bi) {
                    "drained"
                } else if !self.l7.backend_up(pi, bi) {
                    "down"
                } else {
                    "up"
                };
                let mut flows = 0;
                for &id in &p.l4_listeners {
                    if self.l4.backend_drained(id, bi) {
                        state = "drained";
                    } else if !self.l4.backend_up(id, bi) {
                        state = "down";
                    }
                    flows += self.l4.backend_stats(id).get(bi).map_or(0, |s| s.flows_active);
                }
                out.push_str(&format!("{} {} {} flows={}\n", p.name, b, state, flows));
            }
        }
        out.pop();
        out
    }

    /// One turn of the loop: a receive burst through every layer, then one
    /// transmit burst. Returns the number of frames received.
    pub fn poll<P: Port + ?Sized>(&mut self, port: &mut P, now: Instant) -> usize {
        let Dataplane {
            stack,
            l4,
            l7,
            tls,
            tls_events,
            h2,
            h2_events,
            health,
            changes,
            pool,
            rx,
            tx,
            events,
            l4_burst,
            ..
        } = self;
        let n = port.rx_burst(pool, rx, BURST);
        self.more_rx = n == BURST;
        for pkt in rx.drain(..) {
            match stack.ingress(now, pkt, pool) {
                Ingress::Done => {}
                // Client packets of L4 flows wait for the rest of the burst, so
                // their table lines load in parallel (below).
                Ingress::L4 { pkt, listener, meta } => l4_burst.push((pkt, meta, listener)),
                Ingress::L4Icmp { mut pkt, err } => match l4.icmp_error(now, &mut pkt, &err) {
                    Verdict::Forward => stack.send_ip(now, pkt, pool),
                    _ => stack.drop_packet(pkt, DropReason::L4, pool),
                },
                Ingress::L4Return { mut pkt, meta } => {
                    match l4.from_backend(now, &mut pkt, &meta) {
                        Verdict::Forward => stack.send_ip(now, pkt, pool),
                        Verdict::Drop(_) => stack.drop_packet(pkt, DropReason::L4, pool),
                        Verdict::Reject(_) => {
                            stack.reject(now, pkt, &meta, DropReason::UnknownFlow, pool)
                        }
                    }
                }
            }
        }
        for stage in 0..2 {
            for (_, meta, listener) in l4_burst.iter() {
                l4.prefetch_client(meta, *listener, stage);
            }
        }
        for (mut pkt, meta, listener) in l4_burst.drain(..) {
            match l4.from_client(now, &mut pkt, &meta, listener) {
                Verdict::Forward => stack.send_ip(now, pkt, pool),
                Verdict::Drop(_) => stack.drop_packet(pkt, DropReason::L4, pool),
                Verdict::Reject(_) => stack.reject(now, pkt, &meta, DropReason::L4, pool),
            }
        }
        // TCP: segments in, then the proxy acts on what happened, then what it
        // wrote goes out in the same turn.
        stack.poll(now, pool);
        stack.drain_tcp_events(events);
        // An event TLS has passed on: to the health probe that owns its
        // connection (probes of backends reached over TLS speak it too), or
        // through HTTP/2 to L7.
        let above_tls = |ev: TcpEvent,
                         health: &mut HealthChecker,
                         h2: &mut H2Front,
                         l7: &mut L7,
                         tls: &mut Tls,
                         stack: &mut Stack| {
            if health.owns(event_conn(&ev)) {
                health.on_event(ev, &mut tls.wrap(stack.tcp()));
            } else if let Some(ev) = h2.on_event(now, ev, &mut tls.wrap(stack.tcp())) {
                l7.on_event(now, ev, &mut h2.wrap(&mut tls.wrap(stack.tcp())));
            }
        };
        // TLS sees every event first.
        for ev in events.drain(..) {
            if let Some(ev) = tls.on_event(ev, stack.tcp()) {
                above_tls(ev, health, h2, l7, tls, stack);
            }
        }
        // Handshakes the engine finished: their connections reach L7 (or a
        // health probe) now.
        tls.poll(now, stack.tcp(), tls_events);
        for ev in tls_events.drain(..) {
            above_tls(ev, health, h2, l7, tls, stack);
        }
        // HTTP/2 streams (and sniffed HTTP/1.1 connections) for L7; what L7
        // does may wake more of them.
        let relay = |l7: &mut L7,
                     h2: &mut H2Front,
                     tls: &mut Tls,
                     stack: &mut Stack,
                     evs: &mut Vec<TcpEvent>| {
            for _ in 0..16 {
                if !h2.has_events() {
                    break;
                }
                h2.take_events(evs);
                for ev in evs.drain(..) {
                    l7.on_event(now, ev, &mut h2.wrap(&mut tls.wrap(stack.tcp())));
                }
            }
        };
        relay(l7, h2, tls, stack, h2_events);
        h2.poll(now, &mut tls.wrap(stack.tcp()));
        l7.poll(now, &mut h2.wrap(&mut tls.wrap(stack.tcp())));
        relay(l7, h2, tls, stack, h2_events);
        // What L7 wrote on HTTP/2 streams this turn, framed once per
        // connection; then what was written on TLS connections, sealed as
        // one batch.
        h2.flush(&mut tls.wrap(stack.tcp()));
        tls.seal(stack.tcp());
        health.poll(now, &mut tls.wrap(stack.tcp()));
        health.drain_changes(changes);
        for c in changes.drain(..) {
            if c.tag.0 & L7_POOL_TAG != 0 {
                l7.set_backend_up(usize::from(c.tag.0 & !L7_POOL_TAG), usize::from(c.tag.1), c.up);
            } else {
                l4.set_backend_up(c.tag.0, usize::from(c.tag.1), c.up);
            }
        }
        stack.poll(now, pool);
        l4.expire(now);

        stack.take_tx(tx);
        port.tx_burst(tx, pool);
        if !tx.is_empty() {
            self.tx_dropped += tx.len() as u64;
            for m in tx.drain(..) {
                pool.free(m);
            }
        }
        n
    }

    /// When the worker next has work without new frames: now if a burst was
    /// full, else the earliest timer of any layer.
    pub fn poll_at(&self, now: Instant) -> Option<Instant> {
        self.next_due(now, self.tls.poll_at(now))
    }

    /// Like [`Dataplane::poll_at`], leaving out the TLS handshakes in the
    /// engine: for a loop that sleeps on the engine's doorbell instead
    /// (`Tls::engine_wait`).
    pub fn poll_at_besides_engine(&self, now: Instant) -> Option<Instant> {
        self.next_due(now, self.tls.poll_at_besides_engine(now))
    }

    fn next_due(&self, now: Instant, tls: Option<Instant>) -> Option<Instant> {
        if self.more_rx {
            return Some(now);
        }
        [
            self.stack.poll_at(),
            self.l7.poll_at(),
            self.l4.next_expiry(),
            self.health.poll_at(),
            tls,
            self.h2.poll_at(),
            self.h2.has_events().then_some(now),
        ]
        .into_iter()
        .flatten()
        .min()
    }

    /// Announces the dataplane's addresses and VIPs on the link (gratuitous
    /// ARP, unsolicited neighbor advertisements); sent with the next turn.
    pub fn announce(&mut self) {
        self.stack.announce(&mut self.pool);
    }

    /// The worker's buffer pool counters.
    pub fn pool_stats(&self) -> switchyard_nic::PoolStats {
        self.pool.stats()
    }
}

fn event_conn(ev: &TcpEvent) -> switchyard_stack::tcp::ConnId {
    match *ev {
        TcpEvent::Accepted { conn, .. }
        | TcpEvent::Connected { conn }
        | TcpEvent::Readable { conn }
        | TcpEvent::Writable { conn }
        | TcpEvent::PeerClosed { conn }
        | TcpEvent::Closed { conn, .. } => conn,
    }
}

/// A worker: a port and the dataplane it feeds.
pub struct Worker<P: Port> {
    /// The port.
    pub port: P,
    /// The layers.
    pub dp: Dataplane,
}

impl<P: Port> Worker<P> {
    /// One turn of the loop.
    pub fn poll(&mut self, now: Instant) -> usize {
        self.dp.poll(&mut self.port, now)
    }
}
