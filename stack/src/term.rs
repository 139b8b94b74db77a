//! TCP termination (RFC 9293) on smoltcp, sharded as DESIGN.md draws it: many
//! small `Interface` + `SocketSet` shards on `Medium::Ip`, a 4-tuple demux table
//! that sends each segment to its shard, and listening sockets designated per SYN,
//! because a smoltcp listening socket accepts exactly one connection.

use std::collections::{HashMap, VecDeque};
use std::net::{IpAddr, SocketAddr};

use smoltcp::iface::{Config, Interface, SocketHandle, SocketSet};
use smoltcp::phy::{self, Checksum, ChecksumCapabilities, DeviceCapabilities, Medium};
use smoltcp::socket::tcp::{self, State};
use smoltcp::wire::{HardwareAddress, IpAddress, IpCidr, IpEndpoint, IpListenEndpoint};
use switchyard_nic::{Mbuf, Pool};

use crate::tcp::{ConnId, ConnState, TcpApi, TcpError, TcpEvent};
use crate::types::{ListenerId, TcpConfig, WorkerSlot};
use crate::wire::ETH_LEN;
use crate::{Duration, Instant};

/// Segments queued for one shard between polls; more are dropped (TCP recovers).
const SHARD_RX_MAX: usize = 512;
/// A connection that stops acknowledging for this long is aborted.
const SOCKET_TIMEOUT: Duration = Duration::from_secs(60);

/// How long a connection's ACKs are delayed while it is young, and for how
/// long it counts as young. smoltcp delays ACKs 10 ms by default. A peer
/// that writes twice in a row with Nagle on (a TLS client's Finished, then
/// its request) waits for the first write's ACK: a long delay early in a
/// connection costs it that much per handshake.
const QUICK_ACK_DELAY: smoltcp::time::Duration = smoltcp::time::Duration::from_millis(1);
/// (At least; eight round trips of the handshake on slow paths, so a TLS
/// client's Finished still finds quick ACKs.)
const QUICK_ACKS_FOR: Duration = Duration::from_millis(200);
/// The delay afterwards, as Linux leaves quick-ACK mode: long enough that in
/// request/response traffic the ACK rides on the answer (our response to a
/// client, or our next request to a backend) instead of going out alone,
/// which cost a pure ACK per request in both directions. smoltcp still
/// acknowledges every second full-sized segment at once (RFC 9293
/// SHLD-19), so bulk transfers are not slowed.
const ACK_DELAY: smoltcp::time::Duration = smoltcp::time::Duration::from_millis(20);

/// The smoltcp device of one shard: IP packets in, IP packets out, in pooled
/// buffers that keep room for the Ethernet header in front.
struct ShardDevice {
    rx: VecDeque<Mbuf>,
    done: Vec<Mbuf>,
    tx: Vec<Mbuf>,
    mtu: usize,
}

/// A shard's device while it is polled, with the worker's pool: a segment
/// smoltcp sends takes its buffer from the pool then, so a poll that sends
/// nothing touches no buffer (shards used to take eight before every poll
/// and give back what they did not use: 8% of the instructions per
/// HTTP/1.1 request).
struct PollDev<'a> {
    dev: &'a mut ShardDevice,
    pool: &'a mut Pool,
}

struct RxTok<'a> {
    m: Mbuf,
    done: &'a mut Vec<Mbuf>,
}

impl phy::RxToken for RxTok<'_> {
    fn consume<R, F: FnOnce(&[u8]) -> R>(self, f: F) -> R {
        let r = f(self.m.data());
        self.done.push(self.m);
        r
    }
}

struct TxTok<'a> {
    tx: &'a mut Vec<Mbuf>,
    pool: &'a mut Pool,
}

impl phy::TxToken for TxTok<'_> {
    fn consume<R, F: FnOnce(&mut [u8]) -> R>(self, len: usize, f: F) -> R {
        // Should the packet not fit (smoltcp is told the MTU), it is built
        // and dropped rather than panicking.
        let mut m = self.pool.alloc();
        if let Some(buf) = m.resize(ETH_LEN + len) {
            let r = f(&mut buf[ETH_LEN..]);
            self.tx.push(m);
            return r;
        }
        self.pool.free(m);
        let mut scratch = vec![0u8; len];
        f(&mut scratch)
    }
}

impl phy::Device for PollDev<'_> {
    type RxToken<'a>
        = RxTok<'a>
    where
        Self: 'a;
    type TxToken<'a>
        = TxTok<'a>
    where
        Self: 'a;

    fn receive(&mut self, _now: smoltcp::time::Instant) -> Option<(RxTok<'_>, TxTok<'_>)> {
        let d = &mut *self.dev;
        let m = d.rx.pop_front()?;
        Some((RxTok { m, done: &mut d.done }, TxTok { tx: &mut d.tx, pool: self.pool }))
    }

    fn transmit(&mut self, _now: smoltcp::time::Instant) -> Option<TxTok<'_>> {
        Some(TxTok { tx: &mut self.dev.tx, pool: self.pool })
    }

    fn capabilities(&self) -> DeviceCapabilities {
        self.dev.capabilities()
    }
}

impl ShardDevice {
    fn capabilities(&self) -> DeviceCapabilities {
        let mut caps = DeviceCapabilities::default();
        caps.medium = Medium::Ip;
        caps.max_transmission_unit = self.mtu;
        // The classifier has verified every checksum before a segment gets here.
        let mut ck = ChecksumCapabilities::default();
        ck.ipv4 = Checksum::Tx;
        ck.tcp = Checksum::Tx;
        ck.udp = Checksum::Tx;
        ck.icmpv4 = Checksum::Tx;
        ck.icmpv6 = Checksum::Tx;
        caps.checksum = ck;
        caps
    }
}

/// One smoltcp interface with its sockets.
struct Shard {
    iface: Interface,
    sockets: SocketSet<'static>,
    dev: ShardDevice,
    /// Closed sockets kept for reuse, with their buffers.
    free: Vec<SocketHandle>,
    /// Sockets in use, listening or connected.
    used: usize,
    /// Listening sockets not yet designated for a SYN.
    listening: Vec<(ListenerId, SocketHandle)>,
    /// Listeners with a socket designated for a SYN since the last poll: that
    /// socket still listens, so no second one may listen beside it (smoltcp
    /// would give the SYN to whichever comes first).
    designated: Vec<ListenerId>,
    /// Connection slots living in this shard.
    slots: Vec<u32>,
    poll_at: Option<Instant>,
    dirty: bool,
    /// In `TcpTerminator::roomy`.
    roomy: bool,
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Phase {
    Free,
    /// A listening socket designated for a SYN; not reported until established.
    Pending(ListenerId),
    /// Reported to the user (accepted, or returned by `connect`).
    Open,
    /// Reported closed; the socket finishes TIME-WAIT before the slot is freed.
    Lingering,
}

struct Slot {
    generation: u32,
    phase: Phase,
    shard: u32,
    handle: SocketHandle,
    local: SocketAddr,
    remote: SocketAddr,
    established: bool,
    peer_closed: bool,
    user_closed: bool,
    want_write: bool,
    /// The last acknowledgment number and raw window field the peer sent,
    /// for [`normalize_dup_ack`].
    peer_ack: u32,
    peer_win: u16,
    /// Whether `holes` has an entry for this slot.
    hole: bool,
    /// The sequence number just past the peer's FIN, once one arrived: a
    /// SYN beyond it in TIME-WAIT opens a new connection (see `input`).
    peer_fin_end: Option<u32>,
    /// Past its quick-ACK period (see `ACK_DELAY`).
    grown: bool,
    /// When the slot was made (SYN), then the handshake's round-trip time.
    opened: Instant,
    rtt: Duration,
}

impl Slot {
    /// A slot for a connection between `local` and `remote` that is not
    /// established yet, made at `now`.
    fn new(
        phase: Phase,
        shard: u32,
        handle: SocketHandle,
        local: SocketAddr,
        remote: SocketAddr,
        now: Instant,
    ) -> Slot {
        Slot {
            generation: 0,
            phase,
            shard,
            handle,
            local,
            remote,
            established: false,
            peer_closed: false,
            user_closed: false,
            want_write: false,
            peer_ack: 0,
            peer_win: 0,
            hole: false,
            peer_fin_end: None,
            grown: false,
            opened: now,
            rtt: Duration::from_millis(0),
        }
    }
}

/// The 4-tuple demux: which slot a segment's (local, remote) addresses
/// belong to. The table holds only slot numbers (4 bytes a bucket, not the
/// 68 of both addresses and the number), and a candidate is compared with
/// the addresses of its slot, which the segment's processing reads next
/// anyway: with 100,000 connections the table stays small enough for the
/// cache. An entry's slot holds the addresses it was entered under until
/// the entry goes (a slot is removed or replaced before it is reused).
struct Demux {
    table: hashbrown::HashTable<u32>,
    hasher: foldhash::fast::FixedState,
}

impl Demux {
    fn new(seed: u64) -> Demux {
        Demux {
            table: hashbrown::HashTable::with_capacity(1024),
            hasher: foldhash::fast::FixedState::with_seed(seed),
        }
    }

    fn hash(hasher: &foldhash::fast::FixedState, local: SocketAddr, remote: SocketAddr) -> u64 {
        use std::hash::BuildHasher;
        hasher.hash_one((local, remote))
    }

    fn get(&self, slots: &[Slot], local: SocketAddr, remote: SocketAddr) -> Option<u32> {
        let h = Demux::hash(&self.hasher, local, remote);
        self.table.find(h, |&i| is(&slots[i as usize], local, remote)).copied()
    }

    /// Enters slot `i` under its addresses, in place of any slot entered
    /// under the same ones.
    fn insert(&mut self, slots: &[Slot], i: u32) {
        let (local, remote) = (slots[i as usize].local, slots[i as usize].remote);
        let hasher = &self.hasher;
        let h = Demux::hash(hasher, local, remote);
        let rehash =
            |&j: &u32| Demux::hash(hasher, slots[j as usize].local, slots[j as usize].remote);
        match self.table.entry(h, |&j| is(&slots[j as usize], local, remote), rehash) {
            hashbrown::hash_table::Entry::Occupied(mut e) => *e.get_mut() = i,
            hashbrown::hash_table::Entry::Vacant(e) => {
                e.insert(i);
            }
        }
    }

    /// Removes slot `i`'s entry, if its addresses are still entered for it
    /// (not for a newer slot that took them over).
    fn remove_slot(&mut self, slots: &[Slot], i: u32) {
        let s = &slots[i as usize];
        let h = Demux::hash(&self.hasher, s.local, s.remote);
        if let Ok(e) = self.table.find_entry(h, |&j| j == i) {
            e.remove();
        }
    }
}

fn is(s: &Slot, local: SocketAddr, remote: SocketAddr) -> bool {
    s.local == local && s.remote == remote
}

/// A connection whose peer reported a hole in our data (SACK), until the
/// acknowledgment moves on. If smoltcp has not repaired it within twice the
/// round trip, it is nudged: shown the peer's duplicate ACK again three times
/// (after one that resets its count), which starts a fast retransmit. This
/// covers what smoltcp leaves to its retransmission timer, which never fires
/// sooner than a second: a lost retransmission, or a loss too near the end of
/// a flight for three duplicates to follow.
struct Hole {
    slot: u32,
    generation: u32,
    ack: u32,
    since: Instant,
    rtt: Duration,
    nudges: u8,
    /// The peer's last duplicate ACK: the IP packet.
    len: u8,
    ip: [u8; HOLE_ACK_MAX],
}

/// The longest duplicate ACK kept: IPv6 and a TCP header full of options.
const HOLE_ACK_MAX: usize = 40 + 60;
/// Nudges per hole before leaving it to smoltcp's timer.
const MAX_NUDGES: u8 = 4;

impl Hole {
    /// When the next nudge is due: twice the round trip (at least 5 ms),
    /// doubling with each nudge.
    fn due(&self) -> Instant {
        let base = (self.rtt * 2).max(Duration::from_millis(5));
        self.since + base * (1u32 << self.nudges)
    }
}

/// Where the TCP header of `frame` (IP at offset 14, no IPv6 extension
/// headers: the stack's parser has checked both) starts and where its IP
/// packet ends; None if the frame is too short for them.
fn tcp_offsets(frame: &[u8]) -> Option<(usize, usize)> {
    use crate::wire::get16;
    let &vihl = frame.get(ETH_LEN)?;
    let (tcp, ip_end) = match vihl >> 4 {
        4 => (
            ETH_LEN + usize::from(vihl & 0x0f) * 4,
            ETH_LEN + usize::from(get16(frame, ETH_LEN + 2)),
        ),
        6 if frame.len() >= ETH_LEN + 40 => {
            (ETH_LEN + 40, ETH_LEN + 40 + usize::from(get16(frame, ETH_LEN + 4)))
        }
        _ => return None,
    };
    (frame.len() >= tcp + 20 && ip_end <= frame.len()).then_some((tcp, ip_end))
}

/// The sequence number of the TCP segment in `frame`, and the one just past
/// it (its payload, SYN and FIN each counted).
fn seq_span(frame: &[u8]) -> Option<(u32, u32)> {
    use crate::wire::get32;
    let (tcp, ip_end) = tcp_offsets(frame)?;
    let hdr = usize::from(frame[tcp + 12] >> 4) * 4;
    let flags = frame[tcp + 13];
    let seq = get32(frame, tcp + 4);
    let len = ip_end.saturating_sub(tcp + hdr) as u32
        + u32::from(flags & crate::tcp_flags::SYN != 0)
        + u32::from(flags & crate::tcp_flags::FIN != 0);
    Some((seq, seq.wrapping_add(len)))
}

/// Makes a peer's duplicate ACKs recognisable to smoltcp.
///
/// smoltcp counts an ACK as a duplicate (three start a fast retransmit) only
/// when it also leaves the advertised window unchanged, as RFC 5681 defines
/// it. Linux receivers grow their window with nearly every ACK, so after a
/// loss smoltcp saw no duplicates and waited for its retransmission timer,
/// which it never lets fall below one second: a lossy path then crawled at a
/// segment per second. A pure ACK that repeats the last acknowledgment number
/// and carries SACK blocks (RFC 2018: the peer holds data beyond a hole) is a
/// duplicate by any reading; for such an ACK the window field is set back to
/// the previous one (checksum updated, RFC 1624), so smoltcp counts it. The
/// window the peer offered only grew, so this is never more than it allows.
/// Says what kind of ACK the segment was. `frame` is Ethernet + IP + TCP.
fn normalize_dup_ack(last_ack: &mut u32, last_win: &mut u16, frame: &mut [u8]) -> AckKind {
    use crate::wire::{get16, get32, put16};
    let Some((tcp, ip_end)) = tcp_offsets(frame) else { return AckKind::Other };
    let hdr = usize::from(frame[tcp + 12] >> 4) * 4;
    let flags = frame[tcp + 13];
    let (ack, win) = (get32(frame, tcp + 8), get16(frame, tcp + 14));
    let pure_ack = flags & 0x17 == 0x10 && tcp + hdr == ip_end && hdr >= 20;
    let sack = pure_ack && has_sack(frame.get(tcp + 20..tcp + hdr).unwrap_or(&[]));
    if !(sack && ack == *last_ack) {
        if flags & 0x10 == 0 {
            return AckKind::Other;
        }
        let new = ack != *last_ack;
        *last_ack = ack;
        *last_win = win;
        return if new { AckKind::New } else { AckKind::Other };
    }
    if win != *last_win {
        let csum = crate::wire::checksum_update16(get16(frame, tcp + 16), win, *last_win);
        put16(frame, tcp + 14, *last_win);
        put16(frame, tcp + 16, csum);
    }
    AckKind::DupSack
}

/// What an incoming segment told about our data.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum AckKind {
    /// A new acknowledgment number.
    New,
    /// A repeated one with SACK blocks: the peer has data beyond a hole.
    DupSack,
    /// Anything else.
    Other,
}

/// Lowers the window field of the TCP segment in IP packet `ip` by one,
/// updating the checksum; false if it cannot (window 0, or not TCP).
fn shrink_window(ip: &mut [u8]) -> bool {
    use crate::wire::{get16, put16};
    let tcp = match ip.first().map(|v| v >> 4) {
        Some(4) => usize::from(ip[0] & 0x0f) * 4,
        Some(6) => 40,
        _ => return false,
    };
    if ip.len() < tcp + 20 {
        return false;
    }
    let win = get16(ip, tcp + 14);
    if win == 0 {
        return false;
    }
    let csum = crate::wire::checksum_update16(get16(ip, tcp + 16), win, win - 1);
    put16(ip, tcp + 14, win - 1);
    put16(ip, tcp + 16, csum);
    true
}

/// Whether TCP options contain a SACK block list (kind 5).
fn has_sack(mut opts: &[u8]) -> bool {
    while let Some(&kind) = opts.first() {
        match kind {
            0 => return false,
            1 => opts = &opts[1..],
            _ => {
                let Some(&len) = opts.get(1) else { return false };
                if kind == 5 {
                    return true;
                }
                if len < 2 || usize::from(len) > opts.len() {
                    return false;
                }
                opts = &opts[usize::from(len)..];
            }
        }
    }
    false
}

/// Counters of TCP termination.
#[derive(Clone, Debug, Default)]
pub struct TcpStats {
    /// Duplicate ACKs whose window was set back so smoltcp counts them
    /// (see `normalize_dup_ack`).
    pub dup_acks_normalized: u64,
    /// Holes our peers reported that smoltcp was nudged to repair (see `Hole`).
    pub nudges: u64,
    /// Shards created.
    pub shards: u64,
    /// Connections accepted from clients.
    pub accepted: u64,
    /// Outgoing connections opened.
    pub connected: u64,
    /// Connections that ended by reset, refusal or timeout.
    pub resets: u64,
    /// Connections that ended in order.
    pub closed: u64,
    /// Segments dropped because a shard's queue was full.
    pub shard_queue_drops: u64,
    /// SYNs for connections already known (retransmissions), dropped.
    pub duplicate_syns: u64,
    /// SYNs that reopened a connection in TIME-WAIT: the client reused its
    /// port, with a sequence number beyond the old connection's.
    pub time_wait_reopened: u64,
    /// SYNs refused because the connection table was full.
    pub table_full: u64,
    /// Connections open now (pending, open or lingering).
    pub active: u64,
}

/// What the terminator did with a segment.
pub enum Input {
    /// Queued for a shard.
    Queued,
    /// No connection and not a SYN for a listener: answer with a reset.
    Unknown(Mbuf),
    /// The connection table is full.
    Full(Mbuf),
    /// A retransmitted SYN for a half-open connection (see `input`).
    Duplicate(Mbuf),
}

/// Sharded TCP termination for one worker.
pub struct TcpTerminator {
    cfg: TcpConfig,
    seed: u64,
    addrs: Vec<(IpAddr, u8)>,
    shards: Vec<Shard>,
    slots: Vec<Slot>,
    free_slots: Vec<u32>,
    /// Connections whose peer reported a hole (see [`Hole`]); a handful.
    holes: Vec<Hole>,
    /// The time of the current turn.
    now: Instant,
    demux: Demux,
    /// Shards with an undesignated listening socket, per listener.
    spare: HashMap<ListenerId, Vec<u32>>,
    /// Shards that may have room for a socket (some in it may have filled
    /// up since: they leave when next looked at). A new socket looks here,
    /// not through every shard: at 100,000 connections there are 25,000.
    roomy: Vec<u32>,
    /// Where each listener listens.
    listeners: HashMap<ListenerId, SocketAddr>,
    dirty: Vec<u32>,
    /// Every shard's `poll_at`, ordered: the due ones are found without
    /// visiting the others (a turn costs the same at 10 or 100,000
    /// connections).
    timers: std::collections::BTreeSet<(Instant, u32)>,
    readable: Vec<u32>,
    readable_scratch: Vec<u32>,
    events: Vec<TcpEvent>,
    next_port: u16,
    stats: TcpStats,
    max_shards: usize,
    /// Which ephemeral ports are this worker's.
    worker: WorkerSlot,
}

fn endpoint(a: SocketAddr) -> IpEndpoint {
    IpEndpoint::new(IpAddress::from(a.ip()), a.port())
}

impl TcpTerminator {
    /// A terminator for the interface addresses `addrs`.
    pub fn new(cfg: TcpConfig, addrs: Vec<(IpAddr, u8)>, seed: u64) -> TcpTerminator {
        let per = cfg.sockets_per_shard.max(2);
        let max_shards = cfg.max_connections.div_ceil(per) + 1;
        TcpTerminator {
            // Start somewhere in the range that depends on the seed: a restarted
            // dataplane with another seed does not reuse the 4-tuples of
            // connections its predecessor left open on the backends.
            next_port: {
                let r = &cfg.ephemeral_ports;
                let span = u64::from(r.end.saturating_sub(r.start)).max(1);
                r.start + ((seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) >> 32) % span) as u16
            },
            cfg,
            seed,
            addrs,
            shards: Vec::new(),
            slots: Vec::new(),
            free_slots: Vec::new(),
            holes: Vec::new(),
            now: Instant::from_millis(0),
            demux: Demux::new(seed ^ 0x6465_6d75_7800),
            spare: HashMap::new(),
            roomy: Vec::new(),
            listeners: HashMap::new(),
            dirty: Vec::new(),
            timers: std::collections::BTreeSet::new(),
            readable: Vec::new(),
            readable_scratch: Vec::new(),
            events: Vec::with_capacity(256),
            stats: TcpStats::default(),
            max_shards,
            worker: WorkerSlot::default(),
        }
    }

    /// Hands out only the ephemeral ports that `worker` owns, so replies to
    /// upstream connections are steered back to it by their destination port.
    pub fn with_worker(mut self, worker: WorkerSlot) -> TcpTerminator {
        self.worker = worker;
        self
    }

    /// Terminates connections to `addr` for `listener`.
    pub fn listen(&mut self, listener: ListenerId, addr: SocketAddr) {
        self.listeners.insert(listener, addr);
        self.spare.entry(listener).or_default();
    }

    /// The local ports of upstream connections.
    pub fn ephemeral_ports(&self) -> std::ops::Range<u16> {
        self.cfg.ephemeral_ports.clone()
    }

    /// Counters.
    pub fn stats(&self) -> TcpStats {
        let mut s = self.stats.clone();
        s.active = (self.slots.len() - self.free_slots.len()) as u64;
        s
    }

    /// Sockets each connection holds buffers for, in bytes.
    pub fn buffer_bytes_per_connection(&self) -> usize {
        self.cfg.rx_buffer + self.cfg.tx_buffer
    }

    fn new_shard(&mut self, now: Instant) -> Option<u32> {
        if self.shards.len() >= self.max_shards {
            return None;
        }
        let idx = self.shards.len() as u32;
        let mut dev =
            ShardDevice { rx: VecDeque::new(), done: Vec::new(), tx: Vec::new(), mtu: 1500 };
        let mut config = Config::new(HardwareAddress::Ip);
        config.random_seed = self.seed ^ (u64::from(idx) + 1).wrapping_mul(0x9e37_79b9_7f4a_7c15);
        // smoltcp reads the device's capabilities here; nothing is sent, so
        // an empty pool will do.
        let mut none = Pool::new(0, 0);
        let mut iface =
            Interface::new(config, &mut PollDev { dev: &mut dev, pool: &mut none }, now);
        iface.set_any_ip(true);
        let mut v4 = false;
        let mut v6 = false;
        iface.update_ip_addrs(|a| {
            for (ip, prefix) in &self.addrs {
                let first = if ip.is_ipv4() { &mut v4 } else { &mut v6 };
                if !*first {
                    *first = true;
                    let _ = a.push(IpCidr::new(IpAddress::from(*ip), *prefix));
                }
            }
        });
        self.shards.push(Shard {
            iface,
            sockets: SocketSet::new(Vec::new()),
            dev,
            free: Vec::new(),
            used: 0,
            listening: Vec::new(),
            designated: Vec::new(),
            slots: Vec::new(),
            poll_at: None,
            dirty: false,
            roomy: true,
        });
        self.roomy.push(idx);
        self.stats.shards += 1;
        Some(idx)
    }

    /// A shard with room for one more socket that has no listening socket for
    /// `listener` (when given), creating one if needed.
    fn shard_with_room(&mut self, now: Instant, listener: Option<ListenerId>) -> Option<u32> {
        let per = self.cfg.sockets_per_shard.max(2);
        let mut k = self.roomy.len();
        while k > 0 {
            k -= 1;
            let i = self.roomy[k];
            let s = &mut self.shards[i as usize];
            if s.used >= per {
                s.roomy = false;
                self.roomy.swap_remove(k);
                continue;
            }
            let free_for = |l: ListenerId| {
                s.listening.iter().all(|(x, _)| *x != l) && !s.designated.contains(&l)
            };
            if listener.is_none_or(free_for) {
                return Some(i);
            }
        }
        self.new_shard(now)
    }

    fn new_socket(&mut self, shard: u32) -> SocketHandle {
        let (rxb, txb) = (self.cfg.rx_buffer, self.cfg.tx_buffer);
        let s = &mut self.shards[shard as usize];
        s.used += 1;
        if let Some(h) = s.free.pop() {
            // Young again (see `report_open`).
            s.sockets.get_mut::<tcp::Socket>(h).set_ack_delay(Some(QUICK_ACK_DELAY));
            return h;
        }
        let mut sock = tcp::Socket::new(
            tcp::SocketBuffer::new(vec![0u8; rxb]),
            tcp::SocketBuffer::new(vec![0u8; txb]),
        );
        sock.set_nagle_enabled(false);
        sock.set_timeout(Some(SOCKET_TIMEOUT));
        sock.set_ack_delay(Some(QUICK_ACK_DELAY));
        s.sockets.add(sock)
    }

    fn release_socket(&mut self, shard: u32, h: SocketHandle) {
        let s = &mut self.shards[shard as usize];
        let sock = s.sockets.get_mut::<tcp::Socket>(h);
        if sock.state() == State::TimeWait {
            // The connection is over: it goes without a reset, as Linux lets
            // a TIME-WAIT socket go. `listen` clears a closed socket's
            // connection (TIME-WAIT counts as closed), so the abort finds no
            // peer to reset; the port only has to be non-zero.
            let port = sock.local_endpoint().map_or(1, |e| e.port);
            let _ = sock.listen(port);
        }
        sock.abort();
        s.used = s.used.saturating_sub(1);
        s.free.push(h);
        if !s.roomy {
            s.roomy = true;
            self.roomy.push(shard);
        }
    }

    fn new_slot(&mut self, slot: Slot) -> Option<u32> {
        let live = self.slots.len() - self.free_slots.len();
        if live >= self.cfg.max_connections {
            return None;
        }
        if let Some(i) = self.free_slots.pop() {
            let generation = self.slots[i as usize].generation;
            self.slots[i as usize] = Slot { generation, ..slot };
            Some(i)
        } else {
            self.slots.push(slot);
            Some(self.slots.len() as u32 - 1)
        }
    }

    fn free_slot(&mut self, i: u32) {
        let (shard, handle) = {
            let s = &mut self.slots[i as usize];
            s.phase = Phase::Free;
            s.generation = s.generation.wrapping_add(1);
            (s.shard, s.handle)
        };
        self.demux.remove_slot(&self.slots, i);
        self.release_socket(shard, handle);
        let sh = &mut self.shards[shard as usize];
        if let Some(p) = sh.slots.iter().position(|x| *x == i) {
            sh.slots.swap_remove(p);
        }
        self.free_slots.push(i);
    }

    /// Records a duplicate ACK with SACK blocks for `slot` (IP packet `ip`).
    fn note_hole(
        &mut self,
        slot: u32,
        generation: u32,
        ack: u32,
        rtt: Duration,
        now: Instant,
        ip: &[u8],
    ) {
        if ip.len() > HOLE_ACK_MAX {
            return;
        }
        let h = match self.holes.iter_mut().position(|h| h.slot == slot) {
            Some(k) => &mut self.holes[k],
            None => {
                self.slots[slot as usize].hole = true;
                self.holes.push(Hole {
                    slot,
                    generation,
                    ack,
                    since: now,
                    rtt,
                    nudges: 0,
                    len: 0,
                    ip: [0; HOLE_ACK_MAX],
                });
                let k = self.holes.len() - 1;
                &mut self.holes[k]
            }
        };
        if h.ack != ack || h.generation != generation {
            *h = Hole { ack, generation, since: now, nudges: 0, ..*h };
        }
        h.len = ip.len() as u8;
        h.ip[..ip.len()].copy_from_slice(ip);
    }

    /// Nudges connections whose hole has outlasted twice the round trip.
    fn nudge(&mut self, now: Instant, pool: &mut Pool) {
        let mut k = 0;
        while k < self.holes.len() {
            let h = &self.holes[k];
            let sl = &self.slots[h.slot as usize];
            if sl.generation != h.generation
                || sl.phase != Phase::Open
                || !sl.hole
                || h.nudges >= MAX_NUDGES
            {
                let gone = self.holes.swap_remove(k);
                if self.slots[gone.slot as usize].generation == gone.generation {
                    self.slots[gone.slot as usize].hole = false;
                }
                continue;
            }
            if h.due() > now {
                k += 1;
                continue;
            }
            let shard = sl.shard;
            let ip = &h.ip[..usize::from(h.len)];
            // One ACK with the window one unit smaller (smoltcp takes it as a
            // window update and resets its count), then three duplicates of it.
            let mut shrunk = [0u8; HOLE_ACK_MAX];
            shrunk[..ip.len()].copy_from_slice(ip);
            let ok = shrink_window(&mut shrunk[..ip.len()]);
            let dev = &mut self.shards[shard as usize].dev;
            if ok && dev.rx.len() + 4 <= SHARD_RX_MAX {
                for _ in 0..4 {
                    let mut m = pool.alloc();
                    if m.fill(&shrunk[..ip.len()]) {
                        dev.rx.push_back(m);
                    } else {
                        pool.free(m);
                    }
                }
                self.stats.nudges += 1;
            }
            let h = &mut self.holes[k];
            h.nudges += 1;
            h.since = now;
            self.mark_dirty(shard);
            k += 1;
        }
    }

    fn mark_dirty(&mut self, shard: u32) {
        let s = &mut self.shards[shard as usize];
        if !s.dirty {
            s.dirty = true;
            self.dirty.push(shard);
        }
    }

    /// Takes a segment (a whole frame, IP at offset 14) for a terminated
    /// connection or a listener.
    pub fn input(
        &mut self,
        now: Instant,
        mut pkt: Mbuf,
        src: SocketAddr,
        dst: SocketAddr,
        flags: u8,
        listener: Option<ListenerId>,
    ) -> Input {
        use crate::tcp_flags::{ACK, FIN, RST, SYN};
        let mut known = self.demux.get(&self.slots, dst, src);
        // A SYN for a connection in TIME-WAIT whose sequence number is past
        // the old connection's FIN is a new connection from a client that
        // reused its port (RFC 9293 section 3.10.7.4 allows it; Linux does
        // it too): the old socket is let go at once and the SYN goes to the
        // listener. Clients reuse ports this way when the server closes
        // first, as after `Connection: close`. Only for our listeners: a
        // connection we opened keeps its TIME-WAIT (RFC 1337). The old
        // socket goes without a reset (`release_socket`), as Linux drops a
        // TIME-WAIT socket for such a SYN.
        if let Some(i) = known
            && flags & (SYN | ACK | RST) == SYN
            && listener.is_some()
            && self.slots[i as usize].phase == Phase::Lingering
            && let (Some(fin_end), Some((seq, _))) =
                (self.slots[i as usize].peer_fin_end, seq_span(pkt.data()))
            && (seq.wrapping_sub(fin_end) as i32) > 0
        {
            let old = self.slots[i as usize].shard;
            self.free_slot(i);
            self.mark_dirty(old);
            self.stats.time_wait_reopened += 1;
            known = None;
        }
        let slot = match known {
            // A SYN again for a connection we know: its SYN-ACK was lost. smoltcp
            // would hand it to the first listening socket of the shard rather than
            // to the half-open one, so drop it; the half-open socket retransmits
            // its SYN-ACK by itself.
            Some(_) if flags & (SYN | ACK | RST) == SYN => {
                self.stats.duplicate_syns += 1;
                return Input::Duplicate(pkt);
            }
            Some(i) => {
                if flags & FIN != 0
                    && let Some((_, end)) = seq_span(pkt.data())
                {
                    self.slots[i as usize].peer_fin_end = Some(end);
                }
                i
            }
            None => {
                let Some(l) = listener else { return Input::Unknown(pkt) };
                if flags & (SYN | ACK | RST) != SYN {
                    return Input::Unknown(pkt);
                }
                match self.designate(now, l, dst, src) {
                    Some(i) => i,
                    None => {
                        self.stats.table_full += 1;
                        return Input::Full(pkt);
                    }
                }
            }
        };
        let sl = &mut self.slots[slot as usize];
        match normalize_dup_ack(&mut sl.peer_ack, &mut sl.peer_win, pkt.data_mut()) {
            AckKind::DupSack => {
                self.stats.dup_acks_normalized += 1;
                let (ack, generation, rtt) = (sl.peer_ack, sl.generation, sl.rtt);
                self.note_hole(slot, generation, ack, rtt, now, &pkt.data()[ETH_LEN..]);
            }
            AckKind::New if sl.hole => {
                sl.hole = false;
                self.holes.retain(|h| h.slot != slot);
            }
            _ => {}
        }
        let sl = &self.slots[slot as usize];
        let shard = sl.shard;
        let s = &mut self.shards[shard as usize];
        if s.dev.rx.len() >= SHARD_RX_MAX {
            self.stats.shard_queue_drops += 1;
            return Input::Full(pkt);
        }
        pkt.adj(ETH_LEN);
        s.dev.rx.push_back(pkt);
        self.mark_dirty(shard);
        Input::Queued
    }

    /// Gives a SYN for `listener` a listening socket of its own.
    fn designate(
        &mut self,
        now: Instant,
        l: ListenerId,
        local: SocketAddr,
        remote: SocketAddr,
    ) -> Option<u32> {
        let shard = match self.spare.get_mut(&l).and_then(Vec::pop) {
            Some(s) => s,
            None => {
                let s = self.shard_with_room(now, Some(l))?;
                let h = self.new_socket(s);
                let addr = self.listeners.get(&l).copied()?;
                let ep =
                    IpListenEndpoint { addr: Some(IpAddress::from(addr.ip())), port: addr.port() };
                let sh = &mut self.shards[s as usize];
                if sh.sockets.get_mut::<tcp::Socket>(h).listen(ep).is_err() {
                    self.release_socket(s, h);
                    return None;
                }
                sh.listening.push((l, h));
                s
            }
        };
        let sh = &mut self.shards[shard as usize];
        let pos = sh.listening.iter().position(|(x, _)| *x == l)?;
        let (_, handle) = sh.listening.swap_remove(pos);
        sh.designated.push(l);
        let slot = Slot::new(Phase::Pending(l), shard, handle, local, remote, now);
        let Some(i) = self.new_slot(slot) else {
            // Give the listening socket back.
            self.shards[shard as usize].listening.push((l, handle));
            self.spare.entry(l).or_default().push(shard);
            return None;
        };
        self.shards[shard as usize].slots.push(i);
        self.demux.insert(&self.slots, i);
        Some(i)
    }

    /// Polls the shards that received segments, were written to, or whose timers
    /// are due; their output goes to `out` as frames with room for Ethernet.
    pub fn poll(&mut self, now: Instant, pool: &mut Pool, out: &mut Vec<Mbuf>) {
        self.now = now;
        if !self.holes.is_empty() {
            self.nudge(now, pool);
        }
        while let Some(&(t, i)) = self.timers.first()
            && t <= now
        {
            self.timers.pop_first();
            let s = &mut self.shards[i as usize];
            s.poll_at = None;
            if !s.dirty {
                s.dirty = true;
                self.dirty.push(i);
            }
        }
        let mut k = 0;
        while k < self.dirty.len() {
            let idx = self.dirty[k];
            k += 1;
            self.poll_shard(idx, now, pool, out);
        }
        self.dirty.clear();
    }

    fn poll_shard(&mut self, idx: u32, now: Instant, pool: &mut Pool, out: &mut Vec<Mbuf>) {
        let s = &mut self.shards[idx as usize];
        s.dirty = false;
        s.designated.clear();
        s.iface.poll(now, &mut PollDev { dev: &mut s.dev, pool }, &mut s.sockets);
        for m in s.dev.done.drain(..) {
            pool.free(m);
        }
        out.append(&mut s.dev.tx);
        let next = s.iface.poll_at(now, &s.sockets);
        if s.poll_at != next {
            if let Some(t) = s.poll_at {
                self.timers.remove(&(t, idx));
            }
            if let Some(t) = next {
                self.timers.insert((t, idx));
            }
            self.shards[idx as usize].poll_at = next;
        }
        let mut j = 0;
        while j < self.shards[idx as usize].slots.len() {
            let slot = self.shards[idx as usize].slots[j];
            if self.scan(slot) {
                j += 1;
            }
        }
    }

    /// Reports what changed on one connection; false if the slot was freed (and
    /// removed from its shard's list).
    fn scan(&mut self, i: u32) -> bool {
        let (shard, handle, phase) = {
            let s = &self.slots[i as usize];
            (s.shard, s.handle, s.phase)
        };
        let sock = self.shards[shard as usize].sockets.get::<tcp::Socket>(handle);
        let state = sock.state();
        let recv_queue = sock.recv_queue();
        let capacity = sock.send_capacity() - sock.send_queue();
        let conn = ConnId { slot: i, generation: self.slots[i as usize].generation };
        match phase {
            Phase::Free => false,
            Phase::Pending(l) => match state {
                State::Listen => {
                    // The SYN was not taken: the socket listens again.
                    self.demux.remove_slot(&self.slots, i);
                    let sh = &mut self.shards[shard as usize];
                    sh.listening.push((l, handle));
                    if let Some(p) = sh.slots.iter().position(|x| *x == i) {
                        sh.slots.swap_remove(p);
                    }
                    self.spare.entry(l).or_default().push(shard);
                    let s = &mut self.slots[i as usize];
                    s.phase = Phase::Free;
                    s.generation = s.generation.wrapping_add(1);
                    self.free_slots.push(i);
                    false
                }
                State::SynReceived => true,
                State::Closed | State::TimeWait => {
                    self.free_slot(i);
                    false
                }
                _ => {
                    let s = &mut self.slots[i as usize];
                    s.phase = Phase::Open;
                    s.established = true;
                    s.rtt = self.now - s.opened;
                    self.stats.accepted += 1;
                    self.events.push(TcpEvent::Accepted {
                        conn,
                        listener: l,
                        peer: s.remote,
                        local: s.local,
                    });
                    self.report_open(i, conn, state, recv_queue, capacity)
                }
            },
            Phase::Open => self.report_open(i, conn, state, recv_queue, capacity),
            Phase::Lingering => {
                if state == State::Closed {
                    self.free_slot(i);
                    false
                } else {
                    true
                }
            }
        }
    }

    fn report_open(
        &mut self,
        i: u32,
        conn: ConnId,
        state: State,
        recv_queue: usize,
        capacity: usize,
    ) -> bool {
        let s = &mut self.slots[i as usize];
        if s.established && !s.grown && self.now - s.opened >= QUICK_ACKS_FOR.max(s.rtt * 8) {
            s.grown = true;
            let sock = self.shards[s.shard as usize].sockets.get_mut::<tcp::Socket>(s.handle);
            sock.set_ack_delay(Some(ACK_DELAY));
        }
        if !s.established {
            match state {
                State::SynSent | State::SynReceived => return true,
                State::Closed | State::TimeWait => {}
                _ => {
                    s.established = true;
                    s.rtt = self.now - s.opened;
                    self.events.push(TcpEvent::Connected { conn });
                }
            }
        }
        if s.established && recv_queue > 0 {
            self.readable.push(i);
        }
        if s.want_write && capacity > 0 && matches!(state, State::Established | State::CloseWait) {
            s.want_write = false;
            self.events.push(TcpEvent::Writable { conn });
        }
        let fin_in =
            matches!(state, State::CloseWait | State::LastAck | State::Closing | State::TimeWait);
        if s.established && fin_in && !s.peer_closed && recv_queue == 0 {
            s.peer_closed = true;
            self.events.push(TcpEvent::PeerClosed { conn });
        }
        match state {
            State::Closed | State::TimeWait => {
                let orderly = state == State::TimeWait || (s.user_closed && s.peer_closed);
                if orderly {
                    self.stats.closed += 1;
                } else {
                    self.stats.resets += 1;
                }
                self.events.push(TcpEvent::Closed { conn, reset: !orderly });
                if state == State::Closed {
                    self.free_slot(i);
                    return false;
                }
                s.phase = Phase::Lingering;
                s.generation = s.generation.wrapping_add(1);
                true
            }
            _ => true,
        }
    }

    /// Moves the events of the last polls to `out`, then a `Readable` for every
    /// connection with unread data (again each turn until it has been read).
    pub fn drain_events(&mut self, out: &mut Vec<TcpEvent>) {
        out.append(&mut self.events);
        std::mem::swap(&mut self.readable, &mut self.readable_scratch);
        self.readable_scratch.sort_unstable();
        self.readable_scratch.dedup();
        for &i in &self.readable_scratch {
            let s = &self.slots[i as usize];
            if s.phase != Phase::Open {
                continue;
            }
            let sock = self.shards[s.shard as usize].sockets.get::<tcp::Socket>(s.handle);
            if sock.recv_queue() > 0 {
                out.push(TcpEvent::Readable { conn: ConnId { slot: i, generation: s.generation } });
                self.readable.push(i);
            }
        }
        self.readable_scratch.clear();
    }

    /// The earliest timer of any shard; `Some(now)`-like when work is pending.
    pub fn poll_at(&self) -> Option<Instant> {
        let holes = self.holes.iter().filter(|h| h.nudges < MAX_NUDGES).map(Hole::due).min();
        self.timers.first().map(|&(t, _)| t).into_iter().chain(holes).min()
    }

    fn open_slot(&self, conn: ConnId) -> Result<&Slot, TcpError> {
        match self.slots.get(conn.slot as usize) {
            Some(s) if s.generation == conn.generation && s.phase == Phase::Open => Ok(s),
            _ => Err(TcpError::NoSuchConnection),
        }
    }

    fn socket_mut(&mut self, conn: ConnId) -> Result<(&mut tcp::Socket<'static>, u32), TcpError> {
        let (shard, handle) = {
            let s = self.open_slot(conn)?;
            (s.shard, s.handle)
        };
        let sock = self.shards[shard as usize].sockets.get_mut::<tcp::Socket>(handle);
        Ok((sock, shard))
    }

    fn local_addr_for(&self, remote: IpAddr) -> Option<IpAddr> {
        self.addrs.iter().map(|(a, _)| *a).find(|a| a.is_ipv4() == remote.is_ipv4())
    }
}

impl TcpApi for TcpTerminator {
    fn connect(&mut self, now: Instant, remote: SocketAddr) -> Result<ConnId, TcpError> {
        let local_ip = self.local_addr_for(remote.ip()).ok_or(TcpError::Unroutable)?;
        let range = self.cfg.ephemeral_ports.clone();
        let span = usize::from(range.end.saturating_sub(range.start));
        let mut local = None;
        for _ in 0..span {
            let p = self.next_port;
            self.next_port = if p + 1 >= range.end { range.start } else { p + 1 };
            let cand = SocketAddr::new(local_ip, p);
            if self.worker.owns(p) && self.demux.get(&self.slots, cand, remote).is_none() {
                local = Some(cand);
                break;
            }
        }
        let local = local.ok_or(TcpError::NoLocalPort)?;
        let shard = self.shard_with_room(now, None).ok_or(TcpError::TableFull)?;
        let handle = self.new_socket(shard);
        let slot = Slot::new(Phase::Open, shard, handle, local, remote, now);
        let Some(i) = self.new_slot(slot) else {
            self.release_socket(shard, handle);
            return Err(TcpError::TableFull);
        };
        let sh = &mut self.shards[shard as usize];
        let cx = sh.iface.context();
        let ok = sh
            .sockets
            .get_mut::<tcp::Socket>(handle)
            .connect(cx, endpoint(remote), endpoint(local))
            .is_ok();
        if !ok {
            self.slots[i as usize].phase = Phase::Free;
            self.free_slots.push(i);
            self.release_socket(shard, handle);
            return Err(TcpError::Unroutable);
        }
        self.shards[shard as usize].slots.push(i);
        self.demux.insert(&self.slots, i);
        self.stats.connected += 1;
        self.mark_dirty(shard);
        Ok(ConnId { slot: i, generation: self.slots[i as usize].generation })
    }

    fn recv(&mut self, conn: ConnId, buf: &mut [u8]) -> Result<usize, TcpError> {
        let (sock, shard) = self.socket_mut(conn)?;
        if !sock.can_recv() {
            return Ok(0);
        }
        let n = sock.recv_slice(buf).map_err(|_| TcpError::InvalidState)?;
        if n > 0 {
            // The window opened: let the shard send an update.
            self.mark_dirty(shard);
        }
        Ok(n)
    }

    fn send(&mut self, conn: ConnId, data: &[u8]) -> Result<usize, TcpError> {
        let (sock, shard) = self.socket_mut(conn)?;
        if !sock.may_send() {
            return Err(TcpError::InvalidState);
        }
        let n = sock.send_slice(data).map_err(|_| TcpError::InvalidState)?;
        if n > 0 {
            self.mark_dirty(shard);
        }
        if n < data.len() {
            self.slots[conn.slot as usize].want_write = true;
        }
        Ok(n)
    }

    fn send_capacity(&self, conn: ConnId) -> usize {
        match self.open_slot(conn) {
            Ok(s) => {
                let sock = self.shards[s.shard as usize].sockets.get::<tcp::Socket>(s.handle);
                if sock.may_send() { sock.send_capacity() - sock.send_queue() } else { 0 }
            }
            Err(_) => 0,
        }
    }

    fn send_queue(&self, conn: ConnId) -> usize {
        match self.open_slot(conn) {
            Ok(s) => {
                self.shards[s.shard as usize].sockets.get::<tcp::Socket>(s.handle).send_queue()
            }
            Err(_) => 0,
        }
    }

    fn close(&mut self, conn: ConnId) {
        if let Ok((sock, shard)) = self.socket_mut(conn) {
            sock.close();
            self.slots[conn.slot as usize].user_closed = true;
            self.mark_dirty(shard);
        }
    }

    fn abort(&mut self, conn: ConnId) {
        if let Ok((sock, shard)) = self.socket_mut(conn) {
            sock.abort();
            self.slots[conn.slot as usize].user_closed = true;
            self.mark_dirty(shard);
        }
    }

    fn state(&self, conn: ConnId) -> ConnState {
        let Ok(s) = self.open_slot(conn) else { return ConnState::Closed };
        let sock = self.shards[s.shard as usize].sockets.get::<tcp::Socket>(s.handle);
        match sock.state() {
            State::SynSent | State::SynReceived | State::Listen => ConnState::Connecting,
            State::Established => ConnState::Established,
            State::CloseWait => ConnState::PeerClosed,
            State::FinWait1 | State::FinWait2 | State::Closing | State::LastAck => {
                ConnState::Closing
            }
            State::TimeWait | State::Closed => ConnState::Closed,
        }
    }

    fn peer(&self, conn: ConnId) -> Option<SocketAddr> {
        self.open_slot(conn).ok().map(|s| s.remote)
    }
}

#[cfg(test)]
mod dup_ack_tests {
    use super::*;
    use crate::wire::*;

    /// A pure ACK from 198.18.0.101:40000 with `ack`, `win` and, if `sack`,
    /// one SACK block; valid checksum.
    fn ack(ack: u32, win: u16, sack: bool) -> Vec<u8> {
        let opts: &[u8] = if sack { &[1, 1, 5, 10, 0, 0, 0, 9, 0, 0, 0, 19] } else { &[] };
        let len = 20 + opts.len();
        let mut f = vec![0u8; ETH_LEN + 20 + len];
        let (s, d): (IpAddr, IpAddr) =
            ("198.18.0.101".parse().unwrap(), "198.18.0.10".parse().unwrap());
        put_eth(&mut f, [2, 0, 0, 0, 0, 2], [2, 0, 0, 0, 0, 1], ETHERTYPE_IPV4);
        put_ip_header(&mut f[ETH_LEN..], s, d, IPPROTO_TCP, len);
        let t = &mut f[ETH_LEN + 20..];
        put16(t, 0, 40000);
        put16(t, 2, 80);
        put32(t, 8, ack);
        t[12] = ((len / 4) as u8) << 4;
        t[13] = 0x10;
        put16(t, 14, win);
        t[20..].copy_from_slice(opts);
        fix_l4_checksum(t, s, d, IPPROTO_TCP, 16);
        f
    }

    fn checksum_ok(f: &[u8]) -> bool {
        let ip = parse_ip(f, ETHERTYPE_IPV4).unwrap();
        fold(sum(
            pseudo(ip.src, ip.dst, IPPROTO_TCP, ip.end - ip.l4_offset),
            &f[ip.l4_offset..ip.end],
        )) == 0
    }

    #[test]
    fn repeated_acks_with_sack_keep_the_last_window() {
        let (mut a, mut w) = (0, 0);
        let mut f = ack(1000, 500, false);
        assert_eq!(normalize_dup_ack(&mut a, &mut w, &mut f), AckKind::New);
        assert_eq!((a, w), (1000, 500));
        // The same ACK with a grown window and SACK: a duplicate, window set back.
        let mut f = ack(1000, 520, true);
        assert_eq!(normalize_dup_ack(&mut a, &mut w, &mut f), AckKind::DupSack);
        assert_eq!(get16(&f, ETH_LEN + 20 + 14), 500);
        assert!(checksum_ok(&f), "checksum updated");
        // Without SACK it may be a plain window update: left alone, remembered.
        let mut f = ack(1000, 540, false);
        assert_eq!(normalize_dup_ack(&mut a, &mut w, &mut f), AckKind::Other);
        assert_eq!(get16(&f, ETH_LEN + 20 + 14), 540);
        assert_eq!(w, 540);
        // A new acknowledgment number is never touched.
        let mut f = ack(2000, 600, true);
        assert_eq!(normalize_dup_ack(&mut a, &mut w, &mut f), AckKind::New);
        assert_eq!(get16(&f, ETH_LEN + 20 + 14), 600);
        assert!(checksum_ok(&f));
        // The nudge's window one smaller, checksum still right.
        let mut ip = f[ETH_LEN..].to_vec();
        assert!(shrink_window(&mut ip));
        assert_eq!(get16(&ip, 20 + 14), 599);
        let mut again = f[..ETH_LEN].to_vec();
        again.extend_from_slice(&ip);
        assert!(checksum_ok(&again));
        // Truncated or odd frames are left alone.
        let mut short = ack(2000, 700, true);
        short.truncate(ETH_LEN + 30);
        assert_eq!(normalize_dup_ack(&mut a, &mut w, &mut short), AckKind::Other);
        assert_eq!(normalize_dup_ack(&mut a, &mut w, &mut []), AckKind::Other);
    }
}
