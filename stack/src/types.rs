//! The vocabulary shared by the stack and the layers above it.

use std::net::{IpAddr, SocketAddr};
use std::ops::Range;

/// A hash map for tables whose keys come from the network (flows, 4-tuples):
/// foldhash, keyed by a per-worker seed from the configuration, so it is fast
/// and not trivially floodable, and runs stay repeatable.
pub type FlowMap<K, V> = std::collections::HashMap<K, V, foldhash::fast::FixedState>;

/// An empty [`FlowMap`] with room for `capacity` entries, keyed by `seed`.
pub fn flow_map<K, V>(capacity: usize, seed: u64) -> FlowMap<K, V> {
    std::collections::HashMap::with_capacity_and_hasher(
        capacity,
        foldhash::fast::FixedState::with_seed(seed),
    )
}

/// Index of a listener in the configuration; the same number in every layer.
pub type ListenerId = u16;

/// Transport protocol of a listener or flow.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Proto {
    /// TCP (RFC 9293).
    Tcp,
    /// UDP (RFC 768).
    Udp,
}

/// Which layer serves a listener.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ListenerKind {
    /// Packets forwarded by the L4 connection table; payload never read.
    L4,
    /// TCP terminated by the stack and handed to L7.
    L7,
}

/// Settings of the stack for one worker.
#[derive(Clone, Debug)]
pub struct StackConfig {
    /// The port's Ethernet address.
    pub mac: [u8; 6],
    /// Interface addresses with prefix length: on-link subnets, and the source
    /// addresses for full-NAT and for upstream TCP connections.
    pub addresses: Vec<(IpAddr, u8)>,
    /// Next hop for destinations that are not on link.
    pub gateway: Option<IpAddr>,
    /// TCP termination settings.
    pub tcp: TcpConfig,
    /// This worker's place among the workers sharing the addresses.
    pub worker: WorkerSlot,
}

/// Worker `index` of `count`. Each worker hands out only the local ports `p`
/// with `p % count == index` (L4 SNAT ports and the TCP terminator's
/// ephemeral ports), so a reply from a backend can be steered to the worker
/// that owns its flow by its destination port alone (the AF_PACKET fanout
/// program, a NIC flow director rule on the port's low bits, or a software
/// dispatcher: see [`WorkerSlot::owner_of_port`]) — no state is shared
/// between workers. Worker 0 is the primary: the only one that answers ARP,
/// neighbor solicitations and pings, and announces the addresses; the others
/// learn neighbors from what they see.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct WorkerSlot {
    /// This worker, from 0.
    pub index: u16,
    /// How many workers there are (at least 1).
    pub count: u16,
}

impl Default for WorkerSlot {
    fn default() -> Self {
        WorkerSlot { index: 0, count: 1 }
    }
}

impl WorkerSlot {
    /// The worker that owns local port `port` among `count` workers.
    pub fn owner_of_port(port: u16, count: u16) -> u16 {
        port % count.max(1)
    }

    /// True if this worker hands out local port `port`.
    pub fn owns(self, port: u16) -> bool {
        Self::owner_of_port(port, self.count) == self.index
    }

    /// True for the worker that answers neighbor discovery and pings.
    pub fn is_primary(self) -> bool {
        self.index == 0
    }
}

/// Settings of TCP termination.
#[derive(Clone, Debug)]
pub struct TcpConfig {
    /// Sockets per smoltcp shard (one `Interface` + `SocketSet` each).
    /// Every poll of a shard visits all of its sockets (smoltcp dispatches
    /// each one, busy or not), so small shards cost less per request: 4
    /// takes 37% fewer instructions per HTTP/1.1 request than 16, for about
    /// 800 B more heap per proxied pair (bench/L7-CONCURRENCY.md).
    pub sockets_per_shard: usize,
    /// Most terminated connections at once (client and upstream together).
    pub max_connections: usize,
    /// Receive buffer per socket in bytes.
    pub rx_buffer: usize,
    /// Send buffer per socket in bytes.
    pub tx_buffer: usize,
    /// Local ports used for upstream connections; L4 SNAT ports must not overlap.
    pub ephemeral_ports: Range<u16>,
}

impl Default for TcpConfig {
    fn default() -> Self {
        TcpConfig {
            sockets_per_shard: 4,
            max_connections: 16384,
            // Both are allocated in full for every socket, and a proxied
            // connection pair has two sockets: 6 KiB keeps a pair's memory
            // under 32 KiB at 100,000 connections even when its upstream
            // connection is its own (`l7-sim-bench`), at the price of a
            // smaller window for bulk transfers.
            rx_buffer: 6 * 1024,
            tx_buffer: 6 * 1024,
            ephemeral_ports: 32768..40960,
        }
    }
}

/// What the classifier learned about an IP packet for L4.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PacketMeta {
    /// Offset of the IP header in the frame (14: after an untagged Ethernet header).
    pub ip_offset: u16,
    /// Offset of the TCP or UDP header in the frame.
    pub l4_offset: u16,
    /// TCP or UDP.
    pub proto: Proto,
    /// Source address and port.
    pub src: SocketAddr,
    /// Destination address and port.
    pub dst: SocketAddr,
    /// TCP flags byte (FIN 0x01, SYN 0x02, RST 0x04, PSH 0x08, ACK 0x10); 0 for UDP.
    pub tcp_flags: u8,
    /// Bytes of transport payload.
    pub payload_len: u16,
}

/// TCP flag bits as they appear in [`PacketMeta::tcp_flags`].
pub mod tcp_flags {
    /// No more data from sender.
    pub const FIN: u8 = 0x01;
    /// Synchronize sequence numbers.
    pub const SYN: u8 = 0x02;
    /// Reset the connection.
    pub const RST: u8 = 0x04;
    /// Push function.
    pub const PSH: u8 = 0x08;
    /// Acknowledgment field significant.
    pub const ACK: u8 = 0x10;
}

/// Where a received frame goes after [`crate::Stack::ingress`]-style classification.
#[derive(Debug)]
pub enum Ingress {
    /// The stack consumed the frame: answered it, handed it to TCP termination, or
    /// dropped and counted it. Its buffer is queued for transmit or back in the pool.
    Done,
    /// A packet for an L4 listener.
    L4 {
        /// The frame, untouched.
        pkt: switchyard_nic::Mbuf,
        /// The listener it matched.
        listener: ListenerId,
        /// What the classifier parsed.
        meta: PacketMeta,
    },
    /// An ICMPv4 error about an L4 flow (for example fragmentation needed).
    L4Icmp {
        /// The frame, untouched.
        pkt: switchyard_nic::Mbuf,
        /// Where the quoted packet is and which flow it names.
        err: IcmpError,
    },
    /// A packet to a local address and port owned by L4 (a full-NAT reply).
    L4Return {
        /// The frame, untouched.
        pkt: switchyard_nic::Mbuf,
        /// What the classifier parsed.
        meta: PacketMeta,
    },
}

/// An ICMP error the classifier traced to an L4 flow: the quoted packet is one
/// the load balancer sent (from a SNAT port, `listener` is `None`) or one a
/// client got from a VIP (`listener` names the VIP's listener).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct IcmpError {
    /// Offset of the ICMP header in the frame.
    pub icmp_offset: u16,
    /// Offset of the quoted IP header.
    pub inner_ip_offset: u16,
    /// Offset of the quoted transport header (8 bytes of it are present).
    pub inner_l4_offset: u16,
    /// Protocol of the quoted packet.
    pub proto: Proto,
    /// Source of the quoted packet.
    pub inner_src: SocketAddr,
    /// Destination of the quoted packet.
    pub inner_dst: SocketAddr,
    /// The L4 listener whose VIP sent the quoted packet, for client-side errors.
    pub listener: Option<ListenerId>,
}

/// Why a frame was dropped. Every drop is counted by reason.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum DropReason {
    /// Shorter than the headers it claims.
    Truncated,
    /// Not IPv4, IPv6 or ARP.
    UnsupportedEthertype,
    /// Destination MAC neither ours nor broadcast/multicast.
    NotOurMac,
    /// IP version, header length or total length inconsistent.
    BadIpHeader,
    /// IPv4 header checksum wrong.
    BadIpChecksum,
    /// TCP, UDP or ICMP checksum wrong.
    BadL4Checksum,
    /// A fragment (reassembly is not supported on the packet path).
    Fragment,
    /// Destination address not owned by this host.
    NotForUs,
    /// A protocol we do not serve (not TCP, UDP or ICMP).
    UnsupportedProtocol,
    /// TCP or UDP to an owned address with no listener there (answered with RST
    /// or ICMP port unreachable).
    NoListener,
    /// A packet for no known flow (answered with RST where TCP).
    UnknownFlow,
    /// Malformed ARP, or ARP for an address we do not own.
    BadArp,
    /// An ICMP message we do not act on.
    IcmpIgnored,
    /// Waiting for ARP resolution and the queue for that neighbor was full.
    NeighborQueueFull,
    /// Neighbor never answered ARP.
    NeighborUnreachable,
    /// The TCP connection table is full.
    TcpTableFull,
    /// Dropped by the L4 layer (its own counters say why).
    L4,
}

impl DropReason {
    /// All reasons, in counter order.
    pub const ALL: [DropReason; 17] = [
        DropReason::Truncated,
        DropReason::UnsupportedEthertype,
        DropReason::NotOurMac,
        DropReason::BadIpHeader,
        DropReason::BadIpChecksum,
        DropReason::BadL4Checksum,
        DropReason::Fragment,
        DropReason::NotForUs,
        DropReason::UnsupportedProtocol,
        DropReason::NoListener,
        DropReason::UnknownFlow,
        DropReason::BadArp,
        DropReason::IcmpIgnored,
        DropReason::NeighborQueueFull,
        DropReason::NeighborUnreachable,
        DropReason::TcpTableFull,
        DropReason::L4,
    ];

    /// Index into a counter array.
    pub fn index(self) -> usize {
        DropReason::ALL.iter().position(|r| *r == self).unwrap_or(0)
    }

    /// A short name for counters and logs.
    pub fn name(self) -> &'static str {
        match self {
            DropReason::Truncated => "truncated",
            DropReason::UnsupportedEthertype => "unsupported_ethertype",
            DropReason::NotOurMac => "not_our_mac",
            DropReason::BadIpHeader => "bad_ip_header",
            DropReason::BadIpChecksum => "bad_ip_checksum",
            DropReason::BadL4Checksum => "bad_l4_checksum",
            DropReason::Fragment => "fragment",
            DropReason::NotForUs => "not_for_us",
            DropReason::UnsupportedProtocol => "unsupported_protocol",
            DropReason::NoListener => "no_listener",
            DropReason::UnknownFlow => "unknown_flow",
            DropReason::BadArp => "bad_arp",
            DropReason::IcmpIgnored => "icmp_ignored",
            DropReason::NeighborQueueFull => "neighbor_queue_full",
            DropReason::NeighborUnreachable => "neighbor_unreachable",
            DropReason::TcpTableFull => "tcp_table_full",
            DropReason::L4 => "l4",
        }
    }
}

/// Counters of the stack.
#[derive(Clone, Debug, Default)]
pub struct StackCounters {
    /// Frames given to `ingress`.
    pub rx_frames: u64,
    /// ARP requests for owned addresses answered.
    pub arp_replies_sent: u64,
    /// ARP requests sent to resolve next hops.
    pub arp_requests_sent: u64,
    /// Gratuitous ARPs and unsolicited neighbor advertisements sent.
    pub announcements: u64,
    /// ICMP echo requests answered.
    pub icmp_echo_replies: u64,
    /// TCP resets sent for segments no listener or flow wanted.
    pub rst_sent: u64,
    /// ICMP port unreachable sent for UDP no listener wanted.
    pub unreachable_sent: u64,
    /// Frames handed to TCP termination.
    pub tcp_terminated: u64,
    /// Frames handed to L4.
    pub to_l4: u64,
    /// Frames queued for transmit.
    pub tx_frames: u64,
    /// TCP/UDP checksums not verified in software because the device had
    /// verified them or the frame came from this host (checksum offload).
    pub rx_csum_offloaded: u64,
    /// Partial checksums (from this host's stack) completed in software
    /// before the frame was forwarded by L4.
    pub rx_csum_completed: u64,
    /// Drops by reason, indexed by [`DropReason::index`].
    pub drops: [u64; DropReason::ALL.len()],
}

impl StackCounters {
    /// Drops for one reason.
    pub fn dropped(&self, r: DropReason) -> u64 {
        self.drops[r.index()]
    }

    /// All drops.
    pub fn dropped_total(&self) -> u64 {
        self.drops.iter().sum()
    }
}

/// Errors configuring the stack.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StackError {
    /// Two listeners on the same address, port and protocol.
    #[error("listener {0} ({1:?}) is already in use")]
    DuplicateListener(SocketAddr, Proto),
    /// An L4 port range overlaps the TCP ephemeral ports or another range.
    #[error("port range {0:?} on {1} overlaps ports already reserved")]
    PortOverlap(Range<u16>, IpAddr),
}
