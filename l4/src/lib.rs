//! L4 forwarding: a fixed-capacity connection table, round-robin scheduling and
//! full-NAT rewrite in place (DNAT to the backend, SNAT to a local address and
//! port) with incremental checksums (RFC 1624). Payload is never read.
//! Sans-IO: packets and `now` in, a verdict out; the stack sends what we forward.
#![forbid(unsafe_code)]

pub mod checksum;
pub mod sched;
mod table;

use std::collections::VecDeque;
use std::net::{IpAddr, SocketAddr};
use std::ops::Range;

pub use sched::Scheduler;
use switchyard_nic::Mbuf;
use switchyard_stack::IcmpError;
use switchyard_stack::{Duration, Instant, ListenerId, PacketMeta, Proto, tcp_flags};
use table::{FlowState, FlowTable, STATES};

/// A backend of an L4 listener.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Backend {
    /// Name for counters and logs.
    pub name: String,
    /// Address and port packets are forwarded to.
    pub addr: SocketAddr,
    /// Share of new flows relative to the other backends (0: none).
    pub weight: u32,
}

/// One L4 listener.
#[derive(Clone, Debug)]
pub struct ListenerConfig {
    /// The listener's id, the same in every layer.
    pub id: ListenerId,
    /// Name for counters.
    pub name: String,
    /// The VIP and (first) port.
    pub vip: SocketAddr,
    /// The last port of the listener's port range; a value at or below the
    /// VIP's port means the single port `vip.port()`.
    pub last_port: u16,
    /// TCP or UDP.
    pub proto: Proto,
    /// Where flows go.
    pub backends: Vec<Backend>,
    /// How they are chosen.
    pub scheduler: Scheduler,
    /// How packets reach them.
    pub forwarding: Forwarding,
    /// What happens to a backend's flows when its health check fails.
    pub on_backend_down: DownPolicy,
}

/// What happens to the flows of a backend that fails its health check. A
/// drained backend (operator's choice) always keeps its flows.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum DownPolicy {
    /// The flows carry on until they close or time out (the backend may only
    /// have stopped accepting new connections).
    #[default]
    Keep,
    /// The next packet of such a flow, from either side, ends it: TCP gets a
    /// reset so the client reconnects to a healthy backend at once; a UDP
    /// flow is opened again on a healthy backend.
    Reset,
}

impl DownPolicy {
    /// The configuration name.
    pub fn name(self) -> &'static str {
        match self {
            DownPolicy::Keep => "keep",
            DownPolicy::Reset => "reset",
        }
    }

    /// Every policy, for configuration parsing.
    pub const ALL: [DownPolicy; 2] = [DownPolicy::Keep, DownPolicy::Reset];
}

/// How an L4 listener delivers packets to its backends.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum Forwarding {
    /// Full-NAT: destination rewritten to the backend, source to a local SNAT
    /// address and port; replies come back through the load balancer.
    #[default]
    FullNat,
    /// Direct server return by IP-in-IP (RFC 2003; IPv6 in IPv6, RFC 2473): the
    /// packet is sent unchanged inside an outer header to the backend, which
    /// owns the VIP and answers the client directly.
    DsrIpip,
    /// Direct server return by GUE variant 1 (IP directly in UDP, port
    /// [`GUE_PORT`]): like IP-in-IP, but the outer UDP source port carries a
    /// hash of the flow, so ECMP and RSS on the way spread flows.
    DsrGue,
}

/// Maglev entries filled per [`L4::expire`] call while a table is rebuilt
/// after a backend change: tens of microseconds of work per worker turn.
pub const REBUILD_BUDGET: usize = 4096;

/// The UDP port of GUE tunnels (the IANA port assigned to GUE).
pub const GUE_PORT: u16 = 6080;

impl Forwarding {
    /// The configuration name.
    pub fn name(self) -> &'static str {
        match self {
            Forwarding::FullNat => "full-nat",
            Forwarding::DsrIpip => "dsr-ipip",
            Forwarding::DsrGue => "dsr-gue",
        }
    }

    /// Every mode, for configuration parsing.
    pub const ALL: [Forwarding; 3] = [Forwarding::FullNat, Forwarding::DsrIpip, Forwarding::DsrGue];

    /// True for the direct-server-return modes.
    pub fn is_dsr(self) -> bool {
        self != Forwarding::FullNat
    }
}

/// Idle time after which a flow is forgotten, by state.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Timeouts {
    /// A TCP flow whose handshake has not completed.
    pub syn: Duration,
    /// An established TCP flow.
    pub established: Duration,
    /// A TCP flow after FIN or RST.
    pub closing: Duration,
    /// A UDP flow.
    pub udp: Duration,
}

impl Default for Timeouts {
    fn default() -> Self {
        Timeouts {
            syn: Duration::from_secs(10),
            established: Duration::from_secs(300),
            closing: Duration::from_secs(10),
            udp: Duration::from_secs(30),
        }
    }
}

/// The L4 layer's configuration.
#[derive(Clone, Debug)]
pub struct L4Config {
    /// The listeners.
    pub listeners: Vec<ListenerConfig>,
    /// Local addresses used as the source of forwarded packets (full-NAT).
    pub snat_addrs: Vec<IpAddr>,
    /// Source ports used for full-NAT, per address and protocol.
    pub snat_ports: Range<u16>,
    /// Flows held at most; fixed at start.
    pub table_capacity: usize,
    /// Idle timeouts.
    pub timeouts: Timeouts,
    /// Key of the flow tables' hash (from the configuration, so runs repeat).
    pub hash_seed: u64,
    /// This worker's place among the workers sharing the SNAT addresses.
    pub worker: WorkerSlot,
}

pub use switchyard_stack::WorkerSlot;

/// Why L4 did not forward a packet.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum L4Drop {
    /// No flow for a reply, or a reset for no flow.
    UnknownFlow,
    /// A TCP segment other than SYN tried to open a flow.
    NotSyn,
    /// The connection table is full.
    TableFull,
    /// No SNAT port is free.
    NoSnatPort,
    /// The listener id is not an L4 listener.
    NoListener,
    /// The packet's headers are shorter than the classifier said.
    Malformed,
    /// TTL or hop limit ran out.
    TtlExceeded,
    /// No backend can take new flows (every weight is zero).
    NoBackend,
    /// The flow's backend failed its health check and the listener resets
    /// such flows.
    BackendDown,
}

impl L4Drop {
    /// Every reason, in counter order.
    pub const ALL: [L4Drop; 9] = [
        L4Drop::UnknownFlow,
        L4Drop::NotSyn,
        L4Drop::TableFull,
        L4Drop::NoSnatPort,
        L4Drop::NoListener,
        L4Drop::Malformed,
        L4Drop::TtlExceeded,
        L4Drop::NoBackend,
        L4Drop::BackendDown,
    ];

    /// A short name for counters.
    pub fn name(self) -> &'static str {
        match self {
            L4Drop::UnknownFlow => "unknown_flow",
            L4Drop::NotSyn => "not_syn",
            L4Drop::TableFull => "table_full",
            L4Drop::NoSnatPort => "no_snat_port",
            L4Drop::NoListener => "no_listener",
            L4Drop::Malformed => "malformed",
            L4Drop::TtlExceeded => "ttl_exceeded",
            L4Drop::NoBackend => "no_backend",
            L4Drop::BackendDown => "backend_down",
        }
    }

    fn index(self) -> usize {
        self as usize
    }
}

/// What to do with a packet.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Rewritten in place; send it.
    Forward,
    /// Drop it silently (counted).
    Drop(L4Drop),
    /// Drop it and answer the sender with a reset (counted).
    Reject(L4Drop),
}

/// Errors in the L4 configuration.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[non_exhaustive]
pub enum L4Error {
    /// The worker slot is not `index < count`.
    #[error("worker {0} of {1}: the index must be below the count")]
    BadWorker(u16, u16),
    /// A listener has no backends.
    #[error("listener `{0}` has no backends")]
    EmptyPool(String),
    /// A backend's address family differs from its VIP's.
    #[error("listener `{0}`: backend {1} is not of the VIP's address family")]
    MixedFamily(String, SocketAddr),
    /// With DSR the backend receives the packet as sent to the VIP, so it must
    /// listen on the VIP's port (or give port 0: the port the client used).
    #[error("listener `{0}`: with DSR, backend {1} must use the VIP's port (or port 0)")]
    DsrPort(String, SocketAddr),
    /// No SNAT address of the backends' family.
    #[error("listener `{0}`: no local address of the backends' family for full-NAT")]
    NoSnatAddress(String),
    /// Two listeners with one id.
    #[error("listener id {0} is used twice")]
    DuplicateListener(ListenerId),
    /// Capacity 0 or an empty SNAT port range.
    #[error("the connection table needs a capacity and SNAT ports")]
    NoCapacity,
}

/// Counters of one listener.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ListenerStats {
    /// Packets from clients forwarded.
    pub packets_in: u64,
    /// Packets from backends forwarded back to clients.
    pub packets_out: u64,
    /// IP bytes from clients.
    pub bytes_in: u64,
    /// IP bytes to clients.
    pub bytes_out: u64,
    /// Flows created.
    pub flows_new: u64,
    /// Flows open now (in the table and not closing).
    pub flows_active: u64,
    /// New flows refused, by reason, indexed in [`L4Drop::ALL`] order: a
    /// full table, no SNAT port, no backend up, a first segment that is not
    /// a SYN.
    pub refused: [u64; L4Drop::ALL.len()],
}

impl ListenerStats {
    /// New flows refused for any reason.
    pub fn flows_refused(&self) -> u64 {
        self.refused.iter().sum()
    }

    /// New flows refused for one reason.
    pub fn refused(&self, r: L4Drop) -> u64 {
        self.refused[r.index()]
    }
}

/// Counters of one backend of one listener.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct BackendStats {
    /// Flows sent to it.
    pub flows_new: u64,
    /// Its flows open now (in the table and not closing).
    pub flows_active: u64,
    /// Packets forwarded to or from it.
    pub packets: u64,
    /// IP bytes forwarded to or from it.
    pub bytes: u64,
}

/// Drops by reason.
#[derive(Clone, Debug, Default)]
pub struct L4Counters {
    /// Indexed in [`L4Drop::ALL`] order.
    pub drops: [u64; L4Drop::ALL.len()],
    /// Flows that expired.
    pub expired: u64,
    /// ICMP errors rewritten and forwarded to the other side of their flow.
    pub icmp_relayed: u64,
    /// Flows ended because their backend failed its health check.
    pub flows_reset: u64,
}

impl L4Counters {
    /// Drops for one reason.
    pub fn dropped(&self, r: L4Drop) -> u64 {
        self.drops[r.index()]
    }
}

struct Listener {
    cfg: ListenerConfig,
    /// Outer source address of DSR tunnels.
    tunnel_src: IpAddr,
    picker: sched::Picker,
    stats: ListenerStats,
    backends: Vec<BackendStats>,
    /// Per backend: failed its health check (and the policy is reset).
    reset: Vec<bool>,
    /// Per backend: health, and the operator's drain.
    healthy: Vec<bool>,
    drained: Vec<bool>,
}

impl Listener {
    fn update_picker(&mut self, b: usize) {
        self.picker.set_up(b, self.healthy[b] && !self.drained[b]);
    }
}

/// Free SNAT ports of one (address, protocol).
struct PortPool {
    addr: IpAddr,
    proto: Proto,
    free: VecDeque<u16>,
}

/// Listener id → index; ids are small numbers from the configuration.
const NO_LISTENER: u16 = u16::MAX;

/// The L4 layer of one worker.
pub struct L4 {
    listeners: Vec<Listener>,
    by_id: Vec<u16>,
    table: FlowTable,
    ports: Vec<PortPool>,
    next_pool: usize,
    snat_ports: Range<u16>,
    timeouts: Timeouts,
    counters: L4Counters,
}

impl L4 {
    /// Builds the layer; the whole table is allocated here.
    pub fn new(cfg: L4Config) -> Result<L4, L4Error> {
        if cfg.table_capacity == 0
            || cfg.snat_ports.is_empty()
            || cfg.table_capacity >= u32::MAX as usize
        {
            return Err(L4Error::NoCapacity);
        }
        if cfg.worker.count == 0 || cfg.worker.index >= cfg.worker.count {
            return Err(L4Error::BadWorker(cfg.worker.index, cfg.worker.count));
        }
        let mut by_id: Vec<u16> = Vec::new();
        let mut listeners = Vec::new();
        let mut ports: Vec<PortPool> = Vec::new();
        for l in cfg.listeners {
            if l.backends.is_empty() {
                return Err(L4Error::EmptyPool(l.name));
            }
            for b in &l.backends {
                if b.addr.is_ipv4() != l.vip.is_ipv4() {
                    return Err(L4Error::MixedFamily(l.name.clone(), b.addr));
                }
                if l.forwarding.is_dsr() && b.addr.port() != 0 && b.addr.port() != l.vip.port() {
                    return Err(L4Error::DsrPort(l.name.clone(), b.addr));
                }
            }
            let family: Vec<IpAddr> =
                cfg.snat_addrs.iter().copied().filter(|a| a.is_ipv4() == l.vip.is_ipv4()).collect();
            let Some(&tunnel_src) = family.first() else {
                return Err(L4Error::NoSnatAddress(l.name));
            };
            // Every local address of the family is a SNAT source: each gives the
            // whole port range, so concurrent flows scale with addresses.
            for snat in family {
                if !ports.iter().any(|p| p.addr == snat && p.proto == l.proto) {
                    // Handed out from the front; freed ports go to the back, so a
                    // port is reused as late as possible.
                    let free: VecDeque<u16> =
                        cfg.snat_ports.clone().filter(|p| cfg.worker.owns(*p)).collect();
                    ports.push(PortPool { addr: snat, proto: l.proto, free });
                }
            }
            let id = usize::from(l.id);
            if by_id.len() <= id {
                by_id.resize(id + 1, NO_LISTENER);
            }
            if by_id[id] != NO_LISTENER {
                return Err(L4Error::DuplicateListener(l.id));
            }
            by_id[id] = listeners.len() as u16;
            let n = l.backends.len();
            let ids: Vec<String> = l.backends.iter().map(|b| b.addr.to_string()).collect();
            let ids: Vec<&[u8]> = ids.iter().map(|s| s.as_bytes()).collect();
            let weights: Vec<u32> = l.backends.iter().map(|b| b.weight).collect();
            let picker = sched::Picker::new(l.scheduler, &ids, &weights);
            listeners.push(Listener {
                cfg: l,
                tunnel_src,
                picker,
                stats: ListenerStats::default(),
                backends: vec![BackendStats::default(); n],
                reset: vec![false; n],
                healthy: vec![true; n],
                drained: vec![false; n],
            });
        }
        let span = usize::from(cfg.snat_ports.end - cfg.snat_ports.start);
        let table = FlowTable::new(
            cfg.table_capacity,
            ports.len(),
            cfg.snat_ports.start,
            span,
            cfg.hash_seed,
        );
        Ok(L4 {
            listeners,
            by_id,
            table,
            ports,
            next_pool: 0,
            snat_ports: cfg.snat_ports,
            timeouts: cfg.timeouts,
            counters: L4Counters::default(),
        })
    }

    fn index_of(&self, id: ListenerId) -> Option<usize> {
        match self.by_id.get(usize::from(id)) {
            Some(&i) if i != NO_LISTENER => Some(usize::from(i)),
            _ => None,
        }
    }

    /// Every (address, protocol, ports) the stack must hand back to L4: the
    /// destinations of backends' replies.
    pub fn snat_reservations(&self) -> Vec<(IpAddr, Proto, Range<u16>)> {
        self.ports.iter().map(|p| (p.addr, p.proto, self.snat_ports.clone())).collect()
    }

    /// Flows in the table.
    pub fn table_len(&self) -> usize {
        self.table.len()
    }

    /// Flows the table holds at most.
    pub fn table_capacity(&self) -> usize {
        self.table.capacity()
    }

    /// Memory the connection table reserved at start, in bytes: entries, free
    /// list, the hash index and the reply arrays.
    pub fn table_bytes(&self) -> usize {
        self.table.bytes()
    }

    /// Bytes per flow of capacity: the entry, its free-list slot and its share
    /// of the hash index (the reply arrays, 4 bytes per SNAT port per pool, come
    /// on top and do not grow with the table).
    pub fn bytes_per_entry(&self) -> usize {
        self.table.per_flow_bytes() / self.table.capacity().max(1)
    }

    /// Counters of a listener.
    pub fn listener_stats(&self, id: ListenerId) -> Option<&ListenerStats> {
        self.index_of(id).map(|i| &self.listeners[i].stats)
    }

    /// Counters of a listener's backends, in configuration order.
    pub fn backend_stats(&self, id: ListenerId) -> &[BackendStats] {
        match self.index_of(id) {
            Some(i) => &self.listeners[i].backends,
            None => &[],
        }
    }

    /// Marks a backend of a listener healthy or not (from health checks). An
    /// unhealthy backend gets no new flows; what happens to its flows in the
    /// table follows the listener's [`DownPolicy`].
    pub fn set_backend_up(&mut self, id: ListenerId, backend: usize, up: bool) {
        let Some(i) = self.index_of(id) else { return };
        let l = &mut self.listeners[i];
        if let Some(h) = l.healthy.get_mut(backend) {
            *h = up;
            l.reset[backend] = !up && l.cfg.on_backend_down == DownPolicy::Reset;
            l.update_picker(backend);
        }
    }

    /// Drains a backend (no new flows; its flows carry on until they close),
    /// or puts it back in rotation. The operator's switch, independent of
    /// health: a drained backend that is healthy stays out until undrained.
    pub fn set_backend_drain(&mut self, id: ListenerId, backend: usize, drain: bool) {
        let Some(i) = self.index_of(id) else { return };
        let l = &mut self.listeners[i];
        if let Some(d) = l.drained.get_mut(backend) {
            *d = drain;
            l.update_picker(backend);
        }
    }

    /// Whether a backend of a listener takes new flows.
    pub fn backend_up(&self, id: ListenerId, backend: usize) -> bool {
        self.index_of(id).is_some_and(|i| self.listeners[i].picker.is_up(backend))
    }

    /// Whether a backend of a listener is drained.
    pub fn backend_drained(&self, id: ListenerId, backend: usize) -> bool {
        self.index_of(id)
            .and_then(|i| self.listeners[i].drained.get(backend).copied())
            .unwrap_or(false)
    }

    /// Goes on with Maglev tables started by backend changes, at most
    /// `budget` entries in all; true while some are unfinished. The worker
    /// calls it each turn, so a rebuild never stalls the packet path.
    pub fn rebuild(&mut self, budget: usize) -> bool {
        let mut left = false;
        for l in &mut self.listeners {
            left |= l.picker.rebuild(budget);
        }
        left
    }

    /// Drop counters.
    pub fn counters(&self) -> &L4Counters {
        &self.counters
    }

    fn refuse(&mut self, r: L4Drop, reject: bool) -> Verdict {
        self.counters.drops[r.index()] += 1;
        if reject { Verdict::Reject(r) } else { Verdict::Drop(r) }
    }

    /// Prefetch hints for a burst: call `prefetch_client(.., 0)` for each of
    /// its client packets, then `(.., 1)` for each, then `from_client` for
    /// each. The table lines of all of them then load in parallel instead of
    /// one miss after another (stage 0: the index slot; 1: the entry).
    pub fn prefetch_client(&self, meta: &PacketMeta, listener: ListenerId, stage: u8) {
        let Some(li) = self.index_of(listener) else { return };
        if stage == 0 {
            self.table.prefetch_slot(li as u16, meta.src, meta.dst.port());
        } else {
            self.table.prefetch_entry(li as u16, meta.src, meta.dst.port());
        }
    }

    /// A packet from a client to the VIP of `listener`: forwarded to the flow's
    /// backend, or a new flow is created for it.
    pub fn from_client(
        &mut self,
        now: Instant,
        pkt: &mut Mbuf,
        meta: &PacketMeta,
        listener: ListenerId,
    ) -> Verdict {
        let Some(li) = self.index_of(listener) else {
            return self.refuse(L4Drop::NoListener, false);
        };
        let idx = match self.table.find(li as u16, meta.src, meta.dst.port()) {
            Some(i) if self.backend_reset(i) => {
                self.end(i);
                self.counters.flows_reset += 1;
                if meta.proto == Proto::Tcp {
                    let rst = meta.tcp_flags & tcp_flags::RST == 0;
                    return self.refuse(L4Drop::BackendDown, rst);
                }
                // UDP: the flow starts again on a healthy backend.
                match self.open(now, meta, li) {
                    Ok(i) => i,
                    Err(v) => return v,
                }
            }
            Some(i) => i,
            None => match self.open(now, meta, li) {
                Ok(i) => i,
                Err(v) => return v,
            },
        };
        let e = *self.table.entry(idx);
        let l = &self.listeners[li];
        let backend = backend_addr(l, &e);
        let done = match l.cfg.forwarding {
            Forwarding::FullNat => {
                let snat = SocketAddr::new(self.ports[usize::from(e.pool)].addr, e.snat_port);
                rewrite(pkt, meta, snat, backend)
            }
            Forwarding::DsrIpip => encapsulate(pkt, meta, l.tunnel_src, backend.ip(), None),
            Forwarding::DsrGue => {
                // Entropy for the outer source port: the flow's hash, in the
                // ephemeral range as RFC 8086 does for GRE-in-UDP.
                let h = sched::hash_flow(meta.src, meta.dst);
                encapsulate(
                    pkt,
                    meta,
                    l.tunnel_src,
                    backend.ip(),
                    Some(0xc000 | (h as u16 & 0x3fff)),
                )
            }
        };
        if let Err(r) = done {
            return self.refuse(r, false);
        }
        self.track(idx, meta.tcp_flags, now);
        self.count(li, usize::from(e.backend), ip_len(pkt, meta), true);
        Verdict::Forward
    }

    /// Counts a forwarded packet for its listener (by direction) and backend.
    fn count(&mut self, li: usize, backend: usize, bytes: u64, from_client: bool) {
        let l = &mut self.listeners[li];
        if from_client {
            l.stats.packets_in += 1;
            l.stats.bytes_in += bytes;
        } else {
            l.stats.packets_out += 1;
            l.stats.bytes_out += bytes;
        }
        let b = &mut l.backends[backend];
        b.packets += 1;
        b.bytes += bytes;
    }

    /// A packet from a backend to a SNAT address and port: sent back to the client.
    pub fn from_backend(&mut self, now: Instant, pkt: &mut Mbuf, meta: &PacketMeta) -> Verdict {
        let reject = meta.proto == Proto::Tcp && meta.tcp_flags & tcp_flags::RST == 0;
        let pool = self.ports.iter().position(|p| p.addr == meta.dst.ip() && p.proto == meta.proto);
        let found = pool.and_then(|p| self.table.find_reply(p as u16, meta.dst.port()));
        let Some(idx) = found else {
            return self.refuse(L4Drop::UnknownFlow, reject);
        };
        let e = *self.table.entry(idx);
        if self.backend_reset(idx)
            && backend_addr(&self.listeners[usize::from(e.listener)], &e) == meta.src
        {
            self.end(idx);
            self.counters.flows_reset += 1;
            return self.refuse(L4Drop::BackendDown, reject);
        }
        let li = usize::from(e.listener);
        let l = &self.listeners[li];
        // The reply must come from the flow's backend.
        if backend_addr(l, &e) != meta.src {
            return self.refuse(L4Drop::UnknownFlow, reject);
        }
        if let Err(r) = rewrite(pkt, meta, SocketAddr::new(l.cfg.vip.ip(), e.vport), e.client) {
            return self.refuse(r, false);
        }
        self.track(idx, meta.tcp_flags, now);
        self.count(li, usize::from(e.backend), ip_len(pkt, meta), false);
        Verdict::Forward
    }

    /// An ICMP error about a flow (from the backend side about a packet we sent
    /// from a SNAT port, or from a client about a packet it got from the VIP):
    /// rewritten so the other side recognises its own packet in the quote, and
    /// forwarded to it. IPv4 and IPv6, full-NAT flows.
    pub fn icmp_error(&mut self, now: Instant, pkt: &mut Mbuf, err: &IcmpError) -> Verdict {
        let _ = now;
        let found = match err.listener {
            None => {
                let pool = self
                    .ports
                    .iter()
                    .position(|p| p.addr == err.inner_src.ip() && p.proto == err.proto);
                pool.and_then(|p| self.table.find_reply(p as u16, err.inner_src.port()))
            }
            Some(id) => self
                .index_of(id)
                .and_then(|li| self.table.find(li as u16, err.inner_dst, err.inner_src.port())),
        };
        let Some(idx) = found else {
            return self.refuse(L4Drop::UnknownFlow, false);
        };
        let e = *self.table.entry(idx);
        let l = &self.listeners[usize::from(e.listener)];
        let Some(pool) = self.ports.get(usize::from(e.pool)) else {
            return self.refuse(L4Drop::UnknownFlow, false); // DSR: replies bypass us
        };
        let backend = backend_addr(l, &e);
        let vip = SocketAddr::new(l.cfg.vip.ip(), e.vport);
        let snat = SocketAddr::new(pool.addr, e.snat_port);
        // (outer src, outer dst, quoted src, quoted dst)
        let (osrc, odst, qsrc, qdst) = match err.listener {
            None if err.inner_dst == backend => (vip.ip(), e.client.ip(), e.client, vip),
            Some(_) if err.inner_src == vip => (snat.ip(), backend.ip(), backend, snat),
            _ => return self.refuse(L4Drop::UnknownFlow, false),
        };
        match relay_icmp(pkt, err, osrc, odst, qsrc, qdst) {
            Ok(()) => {
                self.counters.icmp_relayed += 1;
                Verdict::Forward
            }
            Err(r) => self.refuse(r, false),
        }
    }

    fn refuse_flow(&mut self, li: usize, r: L4Drop, reject: bool) -> Verdict {
        self.listeners[li].stats.refused[r.index()] += 1;
        self.refuse(r, reject)
    }

    /// Creates the flow for a client's first packet.
    fn open(&mut self, now: Instant, meta: &PacketMeta, li: usize) -> Result<u32, Verdict> {
        use tcp_flags::{ACK, RST, SYN};
        let tcp = meta.proto == Proto::Tcp;
        if tcp && meta.tcp_flags & RST != 0 {
            return Err(self.refuse(L4Drop::UnknownFlow, false));
        }
        if tcp && meta.tcp_flags & (SYN | ACK) != SYN {
            return Err(self.refuse_flow(li, L4Drop::NotSyn, true));
        }
        if self.table.len() >= self.table.capacity() {
            return Err(self.refuse_flow(li, L4Drop::TableFull, tcp));
        }
        let l = &mut self.listeners[li];
        let active = &l.backends;
        let Some(bi) =
            l.picker.pick(meta.src, meta.dst, |i| active.get(i).map_or(0, |b| b.flows_active))
        else {
            return Err(self.refuse_flow(li, L4Drop::NoBackend, tcp));
        };
        let backend = l.cfg.backends[bi].addr;
        let vport = meta.dst.port();
        let state = if tcp { FlowState::SynSent } else { FlowState::Udp };
        if self.listeners[li].cfg.forwarding.is_dsr() {
            // No SNAT: replies go from the backend straight to the client.
            let Some(idx) = self.table.insert(
                li as u16,
                meta.src,
                vport,
                bi as u16,
                table::NO_POOL,
                0,
                state,
                now,
            ) else {
                return Err(self.refuse_flow(li, L4Drop::TableFull, tcp));
            };
            self.count_new(li, bi);
            return Ok(idx);
        }
        // The next SNAT pool of the family and protocol with a free port, in turn.
        let n = self.ports.len();
        let start = self.next_pool;
        let pick = (0..n).map(|k| (start + k) % n).find(|&p| {
            let pool = &self.ports[p];
            pool.proto == meta.proto
                && pool.addr.is_ipv4() == backend.is_ipv4()
                && !pool.free.is_empty()
        });
        let Some(pi) = pick else {
            return Err(self.refuse_flow(li, L4Drop::NoSnatPort, tcp));
        };
        self.next_pool = pi + 1;
        let Some(port) = self.ports[pi].free.pop_front() else {
            return Err(self.refuse(L4Drop::NoSnatPort, tcp));
        };
        let Some(idx) =
            self.table.insert(li as u16, meta.src, vport, bi as u16, pi as u16, port, state, now)
        else {
            self.ports[pi].free.push_front(port);
            return Err(self.refuse_flow(li, L4Drop::TableFull, tcp));
        };
        self.count_new(li, bi);
        Ok(idx)
    }

    fn count_new(&mut self, li: usize, bi: usize) {
        let l = &mut self.listeners[li];
        l.stats.flows_new += 1;
        l.stats.flows_active += 1;
        l.backends[bi].flows_new += 1;
        l.backends[bi].flows_active += 1;
    }

    /// Follows the TCP state from the flags of a forwarded segment.
    fn track(&mut self, idx: u32, flags: u8, now: Instant) {
        use tcp_flags::{ACK, FIN, RST};
        let e = *self.table.entry(idx);
        let state = match e.state {
            FlowState::Udp => FlowState::Udp,
            _ if flags & (FIN | RST) != 0 => FlowState::Closing,
            FlowState::SynSent if flags & ACK != 0 => FlowState::Established,
            s => s,
        };
        self.table.touch(idx, now, state);
        if state == FlowState::Closing && e.state != FlowState::Closing {
            // No longer active; the entry stays until the closing timeout so late
            // segments (retransmitted FINs, last ACKs) still find it.
            let l = &mut self.listeners[usize::from(e.listener)];
            l.stats.flows_active -= 1;
            l.backends[usize::from(e.backend)].flows_active -= 1;
        }
    }

    fn timeout(&self, s: FlowState) -> Duration {
        match s {
            FlowState::SynSent => self.timeouts.syn,
            FlowState::Established => self.timeouts.established,
            FlowState::Closing => self.timeouts.closing,
            FlowState::Udp => self.timeouts.udp,
        }
    }

    /// Frees flows idle past their state's timeout. Only flows at the front
    /// of their state's list are looked at. Also goes on with Maglev tables
    /// being rebuilt, [`REBUILD_BUDGET`] entries per call.
    pub fn expire(&mut self, now: Instant) {
        self.rebuild(REBUILD_BUDGET);
        for st in STATES {
            let timeout = self.timeout(st);
            while let Some(i) = self.table.expired(st, now, timeout) {
                self.release(i);
            }
        }
    }

    fn release(&mut self, idx: u32) {
        self.counters.expired += 1;
        self.end(idx);
    }

    /// Whether flow `idx` belongs to a backend whose flows are being reset.
    fn backend_reset(&self, idx: u32) -> bool {
        let e = self.table.entry(idx);
        self.listeners[usize::from(e.listener)].reset[usize::from(e.backend)]
    }

    /// Frees a flow's entry and SNAT port.
    fn end(&mut self, idx: u32) {
        let e = *self.table.entry(idx);
        self.table.remove(idx);
        if let Some(pool) = self.ports.get_mut(usize::from(e.pool)) {
            pool.free.push_back(e.snat_port);
        }
        if e.state != FlowState::Closing {
            let l = &mut self.listeners[usize::from(e.listener)];
            l.stats.flows_active -= 1;
            l.backends[usize::from(e.backend)].flows_active -= 1;
        }
    }

    /// When `expire` next has work (possibly early: it then finds nothing).
    pub fn next_expiry(&self) -> Option<Instant> {
        if self.listeners.iter().any(|l| l.picker.rebuilding()) {
            return Some(Instant::from_millis(0));
        }
        STATES.iter().filter_map(|st| self.table.earliest(*st, self.timeout(*st))).min()
    }
}

/// Where a flow's packets go: its backend, on the VIP port the client used when
/// the backend's port is 0 (listeners over a port range).
fn backend_addr(l: &Listener, e: &table::Entry) -> SocketAddr {
    let b = l.cfg.backends[usize::from(e.backend)].addr;
    if b.port() == 0 { SocketAddr::new(b.ip(), e.vport) } else { b }
}

fn ip_len(pkt: &Mbuf, meta: &PacketMeta) -> u64 {
    (pkt.len().saturating_sub(usize::from(meta.ip_offset))) as u64
}

/// Rewrites an ICMPv4 error in place: outer addresses, the quoted packet's
/// addresses and ports, and the IP and ICMP checksums, recomputed in full
/// (errors are rare; the quoted transport checksum is left as it was).
fn relay_icmp(
    pkt: &mut Mbuf,
    err: &IcmpError,
    osrc: IpAddr,
    odst: IpAddr,
    qsrc: SocketAddr,
    qdst: SocketAddr,
) -> Result<(), L4Drop> {
    use switchyard_stack::wire::{
        ETH_LEN, IPPROTO_ICMPV6, fix_ipv4_checksum, fix_l4_checksum, fold, sum,
    };
    let (icmp, qip, ql4) = (
        usize::from(err.icmp_offset),
        usize::from(err.inner_ip_offset),
        usize::from(err.inner_l4_offset),
    );
    let f = pkt.data_mut();
    match (osrc, odst, qsrc.ip(), qdst.ip()) {
        (IpAddr::V4(os), IpAddr::V4(od), IpAddr::V4(qs), IpAddr::V4(qd)) => {
            if f.len() < ql4 + 8 || icmp < ETH_LEN + 20 || qip + 20 > ql4 || f[ETH_LEN] >> 4 != 4 {
                return Err(L4Drop::Malformed);
            }
            let ttl = f[ETH_LEN + 8];
            if ttl <= 1 {
                return Err(L4Drop::TtlExceeded);
            }
            f[ETH_LEN + 8] = ttl - 1;
            f[ETH_LEN + 12..ETH_LEN + 16].copy_from_slice(&os.octets());
            f[ETH_LEN + 16..ETH_LEN + 20].copy_from_slice(&od.octets());
            fix_ipv4_checksum(&mut f[ETH_LEN..icmp]);
            f[qip + 12..qip + 16].copy_from_slice(&qs.octets());
            f[qip + 16..qip + 20].copy_from_slice(&qd.octets());
            fix_ipv4_checksum(&mut f[qip..ql4]);
            f[ql4..ql4 + 2].copy_from_slice(&qsrc.port().to_be_bytes());
            f[ql4 + 2..ql4 + 4].copy_from_slice(&qdst.port().to_be_bytes());
            let end = ETH_LEN + usize::from(u16::from_be_bytes([f[ETH_LEN + 2], f[ETH_LEN + 3]]));
            let msg = f.get_mut(icmp..end).filter(|m| m.len() >= 8).ok_or(L4Drop::Malformed)?;
            msg[2] = 0;
            msg[3] = 0;
            let c = fold(sum(0, msg));
            f[icmp + 2..icmp + 4].copy_from_slice(&c.to_be_bytes());
        }
        (IpAddr::V6(os), IpAddr::V6(od), IpAddr::V6(qs), IpAddr::V6(qd)) => {
            if f.len() < ql4 + 8 || icmp != ETH_LEN + 40 || qip + 40 != ql4 || f[ETH_LEN] >> 4 != 6
            {
                return Err(L4Drop::Malformed);
            }
            let hops = f[ETH_LEN + 7];
            if hops <= 1 {
                return Err(L4Drop::TtlExceeded);
            }
            f[ETH_LEN + 7] = hops - 1;
            f[ETH_LEN + 8..ETH_LEN + 24].copy_from_slice(&os.octets());
            f[ETH_LEN + 24..ETH_LEN + 40].copy_from_slice(&od.octets());
            f[qip + 8..qip + 24].copy_from_slice(&qs.octets());
            f[qip + 24..qip + 40].copy_from_slice(&qd.octets());
            f[ql4..ql4 + 2].copy_from_slice(&qsrc.port().to_be_bytes());
            f[ql4 + 2..ql4 + 4].copy_from_slice(&qdst.port().to_be_bytes());
            // The ICMPv6 checksum covers a pseudo-header (RFC 4443 2.3):
            // computed again over the whole message, which the classifier
            // already bounded by the payload length.
            let end = icmp + usize::from(u16::from_be_bytes([f[ETH_LEN + 4], f[ETH_LEN + 5]]));
            let msg = f.get_mut(icmp..end).ok_or(L4Drop::Malformed)?;
            fix_l4_checksum(msg, osrc, odst, IPPROTO_ICMPV6, 2);
        }
        _ => return Err(L4Drop::Malformed),
    }
    Ok(())
}

/// Puts the packet, unchanged, inside an outer IP header from `src` to `dst`
/// (IP-in-IP, protocol 4; IPv6-in-IPv6, next header 41), or with `gue_sport`
/// inside outer IP + UDP to [`GUE_PORT`] (GUE variant 1: the inner IP header
/// follows the UDP header directly). Built in the buffer's headroom: the
/// Ethernet header moves to the front; the stack fills it in.
fn encapsulate(
    pkt: &mut Mbuf,
    meta: &PacketMeta,
    src: IpAddr,
    dst: IpAddr,
    gue_sport: Option<u16>,
) -> Result<(), L4Drop> {
    use switchyard_stack::wire::{IPPROTO_UDP, fix_l4_checksum, put_ip_header, put16};
    let ip = usize::from(meta.ip_offset);
    let inner = pkt.len().checked_sub(ip).ok_or(L4Drop::Malformed)?;
    let (hdr, ipip) = match (src, dst) {
        (IpAddr::V4(_), IpAddr::V4(_)) => (20, 4),
        (IpAddr::V6(_), IpAddr::V6(_)) => (40, 41),
        _ => return Err(L4Drop::Malformed),
    };
    let udp = if gue_sport.is_some() { 8 } else { 0 };
    if pkt.prepend(hdr + udp).is_none() {
        return Err(L4Drop::Malformed);
    }
    let f = pkt.data_mut();
    f.copy_within(hdr + udp..hdr + udp + ip, 0);
    let proto = if udp > 0 { IPPROTO_UDP } else { ipip };
    if put_ip_header(&mut f[ip..], src, dst, proto, udp + inner) == 0 {
        return Err(L4Drop::Malformed);
    }
    if let Some(sport) = gue_sport {
        let u = &mut f[ip + hdr..];
        put16(u, 0, sport);
        put16(u, 2, GUE_PORT);
        put16(u, 4, (8 + inner) as u16);
        // IPv4 may omit the UDP checksum of a tunnel; IPv6 must not (RFC 8200).
        if src.is_ipv4() {
            put16(u, 6, 0);
        } else {
            fix_l4_checksum(&mut u[..8 + inner], src, dst, IPPROTO_UDP, 6);
        }
    }
    Ok(())
}

/// Rewrites source and destination address and port in place, fixing the IP
/// header and transport checksums incrementally and spending one hop of TTL.
fn rewrite(
    pkt: &mut Mbuf,
    meta: &PacketMeta,
    src: SocketAddr,
    dst: SocketAddr,
) -> Result<(), L4Drop> {
    let ip = usize::from(meta.ip_offset);
    let l4 = usize::from(meta.l4_offset);
    let f = pkt.data_mut();
    let csum_at = match meta.proto {
        Proto::Tcp => l4 + 16,
        Proto::Udp => l4 + 6,
    };
    if f.len() < csum_at + 2 || l4 < ip + 20 {
        return Err(L4Drop::Malformed);
    }
    let mut l4sum = u16::from_be_bytes([f[csum_at], f[csum_at + 1]]);
    // UDP over IPv4 may carry no checksum at all (zero); keep it that way.
    let l4sum_used = !(meta.proto == Proto::Udp && l4sum == 0 && src.is_ipv4());
    match (src.ip(), dst.ip()) {
        (IpAddr::V4(s), IpAddr::V4(d)) => {
            let ttl = f[ip + 8];
            if ttl <= 1 {
                return Err(L4Drop::TtlExceeded);
            }
            let mut ipsum = u16::from_be_bytes([f[ip + 10], f[ip + 11]]);
            let (s, d) = (s.octets(), d.octets());
            ipsum = checksum::update(ipsum, &f[ip + 12..ip + 16], &s);
            ipsum = checksum::update(ipsum, &f[ip + 16..ip + 20], &d);
            let old_word = u16::from_be_bytes([ttl, f[ip + 9]]);
            ipsum = checksum::update16(ipsum, old_word, old_word - 0x100);
            l4sum = checksum::update(l4sum, &f[ip + 12..ip + 16], &s);
            l4sum = checksum::update(l4sum, &f[ip + 16..ip + 20], &d);
            f[ip + 8] = ttl - 1;
            f[ip + 10..ip + 12].copy_from_slice(&ipsum.to_be_bytes());
            f[ip + 12..ip + 16].copy_from_slice(&s);
            f[ip + 16..ip + 20].copy_from_slice(&d);
        }
        (IpAddr::V6(s), IpAddr::V6(d)) => {
            if l4 < ip + 40 {
                return Err(L4Drop::Malformed);
            }
            if f[ip + 7] <= 1 {
                return Err(L4Drop::TtlExceeded);
            }
            f[ip + 7] -= 1;
            let (s, d) = (s.octets(), d.octets());
            l4sum = checksum::update(l4sum, &f[ip + 8..ip + 24], &s);
            l4sum = checksum::update(l4sum, &f[ip + 24..ip + 40], &d);
            f[ip + 8..ip + 24].copy_from_slice(&s);
            f[ip + 24..ip + 40].copy_from_slice(&d);
        }
        _ => return Err(L4Drop::Malformed),
    }
    let (sp, dp) = (src.port().to_be_bytes(), dst.port().to_be_bytes());
    l4sum = checksum::update(l4sum, &f[l4..l4 + 2], &sp);
    l4sum = checksum::update(l4sum, &f[l4 + 2..l4 + 4], &dp);
    f[l4..l4 + 2].copy_from_slice(&sp);
    f[l4 + 2..l4 + 4].copy_from_slice(&dp);
    if l4sum_used {
        if meta.proto == Proto::Udp && l4sum == 0 {
            l4sum = 0xffff;
        }
        f[csum_at..csum_at + 2].copy_from_slice(&l4sum.to_be_bytes());
    }
    Ok(())
}
