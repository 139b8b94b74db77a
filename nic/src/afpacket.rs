//! The `af_packet:IFACE` backend: Linux packet sockets with memory-mapped rings.
//!
//! Receive uses a TPACKET_V2 ring of fixed slots, each handed over as soon as
//! it is written, or (`af_packet:IFACE,v3`) a TPACKET_V3 ring whose blocks are
//! handed over whole, when full or after `RETIRE_MS`. Either way a burst costs
//! no system call. Transmit uses a second socket with a
//! TPACKET_V2 ring of fixed slots: frames are written into slots, marked, and
//! one `send` per burst makes the kernel send them all. Frames are copied
//! between the rings and pool buffers (the rings belong to the kernel); the
//! frames we send are not looped back to our receive ring.
//!
//! Checksums: each received frame carries what the kernel knows of its TCP or
//! UDP checksum ([`RxCsum`], from the ring's status word): verified by the
//! device, or partial — a frame from a stack on this host over a veth, whose
//! checksum was left to a device and never computed. The stack skips
//! verifying both and completes partial ones before L4 forwards them.

use std::io;
use std::os::fd::{AsRawFd, OwnedFd};

use crate::gso::{self, Run, Segment, same_flow};
use crate::steer::Steering;
use crate::sys::{self, Ring};
use crate::{Mbuf, NicError, Pool, Port, PortStats, RxCsum};

/// How the receive ring hands frames over.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum RxRing {
    /// TPACKET_V2: fixed 2 KiB slots, each handed over as soon as the kernel
    /// has written it. The default: no added latency.
    #[default]
    Frames,
    /// TPACKET_V3: variable-size frames packed into blocks, a block handed
    /// over when full or after `RETIRE_MS`. Fewer cache lines per small
    /// frame, but at moderate rates frames wait for their block: a TCP
    /// stream's ACKs are held back and throughput falls (see bench/RESULTS.md).
    Blocks,
}

/// Receive ring (V2): 8,192 slots of 2 KiB (16 MiB).
const RX_SLOT: usize = 2048;
const RX_SLOTS: usize = 8192;
/// tpacket2_hdr: status at 0, snaplen at 8, MAC offset at 12; the
/// sockaddr_ll follows at 32, its packet type at 10 within it.
const H2_SNAPLEN: usize = 8;
const H2_MAC: usize = 12;
const H2_PKTTYPE: usize = 32 + 10;

/// Receive ring (V3): blocks of 16 KiB, 1,024 of them (16 MiB). Small blocks are
/// handed over sooner: a block is retired when full or after `RETIRE_MS`, so
/// at moderate rates the block size, not the timer, bounds the added latency.
const RX_BLOCK: usize = 1 << 14;
const RX_BLOCKS: usize = 1024;
/// The kernel hands over a partly filled block after this many milliseconds.
const RETIRE_MS: u32 = 1;
/// Transmit ring: 1,024 slots of 2 KiB.
const TX_SLOT: usize = 2048;
const TX_BLOCK: usize = 1 << 18;
const TX_BLOCKS: usize = 8;
/// Where a frame starts in a TPACKET_V2 transmit slot (TPACKET2_HDRLEN minus
/// the sockaddr_ll).
const TX_DATA: usize = 32;
/// tpacket3_hdr: offsets of the fields read.
const H3_NEXT: usize = 0;
const H3_SNAPLEN: usize = 12;
const H3_MAC: usize = 24;
const H3_STATUS: usize = 20;
/// Status bits the kernel sets on a received frame (linux/if_packet.h): the
/// checksum is partial (the frame came from this host's stack) or was
/// verified by the device.
const TP_STATUS_CSUMNOTREADY: u32 = 1 << 3;
const TP_STATUS_CSUM_VALID: u32 = 1 << 7;
/// sockaddr_ll follows the aligned tpacket3_hdr; its packet type is at 10.
const H3_PKTTYPE: usize = 48 + 10;
/// Block descriptor: status, packet count, first packet offset.
const BD_STATUS: usize = 8;
const BD_NUM: usize = 12;
const BD_FIRST: usize = 16;
const TPACKET_V2: i32 = 1;
const TPACKET_V3: i32 = 2;

/// An AF_PACKET port on one interface.
pub struct AfPacketPort {
    iface: String,
    ifindex: u32,
    mac: [u8; 6],
    rx_fd: OwnedFd,
    rx: Ring,
    mode: RxRing,
    /// V2: the next slot.
    slot: usize,
    /// V3: the current block and where in it.
    block: usize,
    in_block: bool,
    pkts_left: u32,
    pkt_off: usize,
    tx_fd: OwnedFd,
    tx: Ring,
    tx_next: usize,
    /// Frames written to the ring since its last `send`.
    tx_queued: bool,
    /// The ring was full in this burst: nothing more of it is sent, by
    /// either path, so no frame overtakes one left behind.
    tx_blocked: bool,
    /// The slot last written, to see whether the kernel has taken it.
    tx_last: Option<usize>,
    stats: PortStats,
    /// Set when the port is one worker of a fanout group.
    worker: Option<Worker>,
    /// Segmentation offload: runs of TCP segments sent as one frame.
    gso: Option<Gso>,
}

/// The transmit side's segmentation offload (see [`crate::gso`]): a third
/// socket, with `PACKET_VNET_HDR`, for merged frames, which a device with
/// TSO cuts into segments (a veth does not: the peer receives the large
/// segment as GRO would have made it; a device without TSO drops them, as
/// the queue-bypassing transmit does not cut in software, see
/// [`GSO_DROPS`]).
struct Gso {
    out: Merger,
    /// Runs still open in this burst, at most [`OPEN_RUNS`].
    runs: Vec<Run>,
    /// Per frame of the burst: sent.
    taken: Vec<bool>,
}

/// Where merged frames are written and sent.
struct Merger {
    fd: OwnedFd,
    /// Which runs are sent merged.
    merge: gso::Merge,
    /// The merged frame being written (capacity [`gso::MAX_MERGED`]).
    buf: Vec<u8>,
    /// Merged frames dropped (ENOBUFS) since the last one sent.
    drops: u32,
    /// The kernel refused merged frames for good: merging stops after
    /// this burst.
    refused: bool,
}

/// Flows with a run open at once in one burst; a further flow's run waits
/// for the oldest to be sent.
const OPEN_RUNS: usize = 8;
const PACKET_VNET_HDR: i32 = 15;
/// Merged frames dropped in a row (ENOBUFS) before merging stops.
const GSO_DROPS: u32 = 16;

/// A port's place in a fanout group of workers.
struct Worker {
    group: u16,
    index: u16,
    steering: Steering,
    /// Workers other than 0: ARP and neighbor discovery, which the fanout
    /// gives to worker 0 only, read from a second socket (see
    /// [`crate::steer::neighbor_filter`]).
    neighbors: Option<(OwnedFd, Ring, usize)>,
}

/// Slots of a worker's neighbor-discovery ring (ARP is rare).
const NEIGHBOR_SLOTS: usize = 256;

fn err(iface: &str, what: &str, e: io::Error) -> NicError {
    let hint = match e.raw_os_error() {
        Some(libc::EPERM) | Some(libc::EACCES) => " (needs root or CAP_NET_RAW)",
        Some(libc::ENODEV) => " (no such interface)",
        _ => "",
    };
    NicError::Device { device: format!("af_packet:{iface}"), reason: format!("{what}: {e}{hint}") }
}

impl AfPacketPort {
    /// Opens interface `iface`; `mac` is the address the dataplane uses on it.
    pub fn open(iface: &str, mac: [u8; 6], mode: RxRing) -> Result<AfPacketPort, NicError> {
        AfPacketPort::open_gated(iface, mac, mode, false)
    }

    /// [`AfPacketPort::open`]; with `gated`, the receive socket is bound
    /// with a filter that keeps nothing, which [`AfPacketPort::open_workers`] removes.
    fn open_gated(
        iface: &str,
        mac: [u8; 6],
        mode: RxRing,
        gated: bool,
    ) -> Result<AfPacketPort, NicError> {
        let ifindex = sys::ifindex(iface).map_err(|e| err(iface, "interface", e))?;
        // Receive: created for no protocol, so nothing arrives before the ring
        // is set up and the socket bound to this interface.
        let rx_fd = sys::socket(libc::AF_PACKET, libc::SOCK_RAW, 0)
            .map_err(|e| err(iface, "packet socket", e))?;
        if gated {
            sys::attach_filter(&rx_fd, &crate::steer::drop_all())
                .map_err(|e| err(iface, "receive gate", e))?;
        }
        let rx = match mode {
            RxRing::Frames => frame_ring(&rx_fd, RX_SLOTS, iface)?,
            RxRing::Blocks => {
                sys::setsockopt(&rx_fd, libc::SOL_PACKET, libc::PACKET_VERSION, &TPACKET_V3)
                    .map_err(|e| err(iface, "TPACKET_V3", e))?;
                let req = libc::tpacket_req3 {
                    tp_block_size: RX_BLOCK as u32,
                    tp_block_nr: RX_BLOCKS as u32,
                    tp_frame_size: 2048,
                    tp_frame_nr: (RX_BLOCK / 2048 * RX_BLOCKS) as u32,
                    tp_retire_blk_tov: RETIRE_MS,
                    tp_sizeof_priv: 0,
                    tp_feature_req_word: 0,
                };
                sys::setsockopt(&rx_fd, libc::SOL_PACKET, libc::PACKET_RX_RING, &req)
                    .map_err(|e| err(iface, "receive ring", e))?;
                Ring::map(&rx_fd, RX_BLOCK * RX_BLOCKS).map_err(|e| err(iface, "mmap", e))?
            }
        };
        // Our own transmissions are not for us (Linux 4.20+; older kernels
        // show them with packet type OUTGOING, skipped below).
        let _ = sys::setsockopt(&rx_fd, libc::SOL_PACKET, libc::PACKET_IGNORE_OUTGOING, &1i32);
        sys::bind_packet(&rx_fd, ifindex, libc::ETH_P_ALL as u16)
            .map_err(|e| err(iface, "bind", e))?;

        let tx_fd = sys::socket(libc::AF_PACKET, libc::SOCK_RAW, 0)
            .map_err(|e| err(iface, "packet socket", e))?;
        sys::setsockopt(&tx_fd, libc::SOL_PACKET, libc::PACKET_VERSION, &TPACKET_V2)
            .map_err(|e| err(iface, "TPACKET_V2", e))?;
        // Straight to the driver: the dataplane does its own queueing.
        let _ = sys::setsockopt(&tx_fd, libc::SOL_PACKET, libc::PACKET_QDISC_BYPASS, &1i32);
        let req = libc::tpacket_req {
            tp_block_size: TX_BLOCK as u32,
            tp_block_nr: TX_BLOCKS as u32,
            tp_frame_size: TX_SLOT as u32,
            tp_frame_nr: (TX_BLOCK / TX_SLOT * TX_BLOCKS) as u32,
        };
        sys::setsockopt(&tx_fd, libc::SOL_PACKET, libc::PACKET_TX_RING, &req)
            .map_err(|e| err(iface, "transmit ring", e))?;
        let tx = Ring::map(&tx_fd, TX_BLOCK * TX_BLOCKS).map_err(|e| err(iface, "mmap", e))?;
        sys::bind_packet(&tx_fd, ifindex, 0).map_err(|e| err(iface, "bind", e))?;
        Ok(AfPacketPort {
            iface: iface.to_string(),
            ifindex,
            mac,
            rx_fd,
            rx,
            mode,
            slot: 0,
            block: 0,
            in_block: false,
            pkts_left: 0,
            pkt_off: 0,
            tx_fd,
            tx,
            tx_next: 0,
            tx_queued: false,
            tx_blocked: false,
            tx_last: None,
            stats: PortStats::default(),
            worker: None,
            gso: None,
        })
    }

    /// Opens the `steering.workers` workers' ports on `iface`, in worker
    /// order: each receive socket joins one fanout group whose classic BPF
    /// program ([`Steering::fanout_program`]) gives each frame to the worker
    /// that owns its flow. The kernel numbers a group's members in the order
    /// they join, and until all have joined it would give a worker's frames
    /// to another (a group of one gives all frames to its only member; a
    /// bound socket outside the group sees every frame). So each socket keeps
    /// nothing until the whole group is formed: a frame that arrives sooner
    /// is dropped, as if the ports were not yet open.
    pub fn open_workers(
        iface: &str,
        mac: [u8; 6],
        mode: RxRing,
        steering: &Steering,
    ) -> Result<Vec<AfPacketPort>, NicError> {
        let mut ports: Vec<AfPacketPort> = Vec::new();
        for index in 0..steering.workers.max(1) {
            let group = ports.first().and_then(|p| p.fanout_group());
            ports.push(AfPacketPort::open_worker(iface, mac, mode, steering, index, group)?);
        }
        for p in &ports {
            sys::detach_filter(&p.rx_fd).map_err(|e| err(iface, "receive gate", e))?;
        }
        Ok(ports)
    }

    /// Opens worker `index`, gated; `group` is `None` for the first worker
    /// (the kernel picks an unused group id) and that id for the others.
    fn open_worker(
        iface: &str,
        mac: [u8; 6],
        mode: RxRing,
        steering: &Steering,
        index: u16,
        group: Option<u16>,
    ) -> Result<AfPacketPort, NicError> {
        let mut port = AfPacketPort::open_gated(iface, mac, mode, true)?;
        let group = sys::join_fanout(&port.rx_fd, group, &steering.fanout_program())
            .map_err(|e| err(iface, "fanout group", e))?;
        let neighbors = if index > 0 {
            let fd = sys::socket(libc::AF_PACKET, libc::SOCK_RAW, 0)
                .map_err(|e| err(iface, "packet socket", e))?;
            // Filtered before it is bound, so nothing else ever arrives.
            sys::attach_filter(&fd, &crate::steer::neighbor_filter())
                .map_err(|e| err(iface, "neighbor filter", e))?;
            let ring = frame_ring(&fd, NEIGHBOR_SLOTS, iface)?;
            let _ = sys::setsockopt(&fd, libc::SOL_PACKET, libc::PACKET_IGNORE_OUTGOING, &1i32);
            sys::bind_packet(&fd, port.ifindex, libc::ETH_P_ALL as u16)
                .map_err(|e| err(iface, "bind", e))?;
            Some((fd, ring, 0))
        } else {
            None
        };
        port.worker = Some(Worker { group, index, steering: steering.clone(), neighbors });
        Ok(port)
    }

    /// Merges runs of a flow's TCP segments into large frames that a TSO
    /// device cuts again: the runs that `merge` allows (see
    /// [`gso::Merge`]). On a veth the peer's stack receives the large
    /// frame whole, so a loss there loses the whole run. Short flights are
    /// the default, not a request: if the offload socket cannot be opened
    /// for them, the port goes on without merging; for `All` it is an
    /// error.
    pub fn with_gso(mut self, merge: gso::Merge) -> Result<AfPacketPort, NicError> {
        self.gso = None;
        if merge == gso::Merge::Off {
            return Ok(self);
        }
        match Gso::open(self.ifindex, merge) {
            Ok(g) => self.gso = Some(g),
            Err(_) if merge == gso::Merge::Flights => {}
            Err(e) => return Err(err(&self.iface, "offload socket", e)),
        }
        Ok(self)
    }

    /// The fanout group this port's worker belongs to.
    pub fn fanout_group(&self) -> Option<u16> {
        self.worker.as_ref().map(|w| w.group)
    }

    /// The interface name.
    pub fn iface(&self) -> &str {
        &self.iface
    }

    /// Gives the current block back to the kernel and moves to the next.
    fn release_block(&mut self) {
        self.rx.set_status(self.block * RX_BLOCK + BD_STATUS, libc::TP_STATUS_KERNEL);
        self.block = (self.block + 1) % RX_BLOCKS;
        self.in_block = false;
    }
}

impl AfPacketPort {
    /// V2: slots in turn, each ours once the kernel set TP_STATUS_USER.
    fn rx_frames(&mut self, pool: &mut Pool, out: &mut Vec<Mbuf>, max: usize) -> usize {
        read_slots(&self.rx, &mut self.slot, RX_SLOTS, pool, out, max, &mut self.stats)
    }

    /// V3: blocks in turn, each ours once retired, frames walked inside it.
    fn rx_blocks(&mut self, pool: &mut Pool, out: &mut Vec<Mbuf>, max: usize) -> usize {
        let mut got = 0;
        while got < max {
            if !self.in_block {
                let b = self.block * RX_BLOCK;
                if self.rx.status(b + BD_STATUS) & libc::TP_STATUS_USER == 0 {
                    break;
                }
                self.in_block = true;
                self.pkts_left = self.rx.u32_at(b + BD_NUM);
                self.pkt_off = self.rx.u32_at(b + BD_FIRST) as usize;
            }
            if self.pkts_left == 0 {
                self.release_block();
                continue;
            }
            let p = self.block * RX_BLOCK + self.pkt_off;
            let next = self.rx.u32_at(p + H3_NEXT) as usize;
            let snaplen = self.rx.u32_at(p + H3_SNAPLEN) as usize;
            let mac_off = usize::from(self.rx.u16_at(p + H3_MAC));
            let outgoing = self.rx.bytes(p + H3_PKTTYPE, 1)[0] == libc::PACKET_OUTGOING;
            self.pkts_left -= 1;
            self.pkt_off += next;
            if outgoing {
                continue;
            }
            if mac_off + snaplen > RX_BLOCK - (p - self.block * RX_BLOCK) {
                self.stats.rx_oversize += 1;
                continue;
            }
            let mut m = pool.alloc();
            if !m.fill(self.rx.bytes(p + mac_off, snaplen)) {
                self.stats.rx_oversize += 1;
                pool.free(m);
                continue;
            }
            m.set_rx_csum(csum_status(self.rx.u32_at(p + H3_STATUS)));
            self.stats.rx_frames += 1;
            self.stats.rx_bytes += snaplen as u64;
            out.push(m);
            got += 1;
        }
        if self.in_block && self.pkts_left == 0 {
            self.release_block();
        }
        got
    }
}

/// Reads a TPACKET_V2 receive ring of `slots` slots from slot `*next` on:
/// each slot is ours once the kernel set TP_STATUS_USER, and goes back to it
/// once copied. Frames we sent ourselves are skipped.
fn read_slots(
    rx: &Ring,
    next: &mut usize,
    slots: usize,
    pool: &mut Pool,
    out: &mut Vec<Mbuf>,
    max: usize,
    stats: &mut PortStats,
) -> usize {
    let mut got = 0;
    while got < max {
        let p = *next * RX_SLOT;
        if rx.status(p) & libc::TP_STATUS_USER == 0 {
            break;
        }
        let snaplen = rx.u32_at(p + H2_SNAPLEN) as usize;
        let mac_off = usize::from(rx.u16_at(p + H2_MAC));
        let outgoing = rx.bytes(p + H2_PKTTYPE, 1)[0] == libc::PACKET_OUTGOING;
        if !outgoing {
            if mac_off + snaplen > RX_SLOT {
                stats.rx_oversize += 1;
            } else {
                let mut m = pool.alloc();
                if m.fill(rx.bytes(p + mac_off, snaplen)) {
                    m.set_rx_csum(csum_status(rx.status(p)));
                    stats.rx_frames += 1;
                    stats.rx_bytes += snaplen as u64;
                    out.push(m);
                    got += 1;
                } else {
                    stats.rx_oversize += 1;
                    pool.free(m);
                }
            }
        }
        rx.set_status(p, libc::TP_STATUS_KERNEL);
        *next = (*next + 1) % slots;
    }
    got
}

/// The checksum offload the kernel reported in a frame's status word.
fn csum_status(status: u32) -> RxCsum {
    if status & TP_STATUS_CSUMNOTREADY != 0 {
        RxCsum::Partial
    } else if status & TP_STATUS_CSUM_VALID != 0 {
        RxCsum::Verified
    } else {
        RxCsum::Unchecked
    }
}

/// A TPACKET_V2 receive ring of `slots` slots on socket `fd`.
fn frame_ring(fd: &OwnedFd, slots: usize, iface: &str) -> Result<Ring, NicError> {
    sys::setsockopt(fd, libc::SOL_PACKET, libc::PACKET_VERSION, &TPACKET_V2)
        .map_err(|e| err(iface, "TPACKET_V2", e))?;
    let per_block = 64.min(slots);
    let req = libc::tpacket_req {
        tp_block_size: (RX_SLOT * per_block) as u32,
        tp_block_nr: (slots / per_block) as u32,
        tp_frame_size: RX_SLOT as u32,
        tp_frame_nr: slots as u32,
    };
    sys::setsockopt(fd, libc::SOL_PACKET, libc::PACKET_RX_RING, &req)
        .map_err(|e| err(iface, "receive ring", e))?;
    Ring::map(fd, RX_SLOT * slots).map_err(|e| err(iface, "mmap", e))
}

/// Transmit through the ring, and merged frames through the offload socket.
impl AfPacketPort {
    /// Writes `frame` into the next transmit slot; false if the ring is full.
    fn ring_put(&mut self, frame: &[u8]) -> bool {
        let slots = TX_BLOCK / TX_SLOT * TX_BLOCKS;
        let slot = self.tx_next * TX_SLOT;
        let st = self.tx.status(slot);
        if self.tx_blocked
            || (st != libc::TP_STATUS_AVAILABLE && st & libc::TP_STATUS_WRONG_FORMAT == 0)
        {
            self.tx_blocked = true; // the kernel has not sent this slot yet
            return false;
        }
        self.tx_last = Some(slot);
        let len = frame.len().min(TX_SLOT - TX_DATA);
        self.tx.bytes_mut(slot + TX_DATA, len).copy_from_slice(&frame[..len]);
        self.tx.set_u32(slot + 4, len as u32); // tp_len
        self.tx.set_status(slot, libc::TP_STATUS_SEND_REQUEST);
        self.tx_next = (self.tx_next + 1) % slots;
        self.tx_queued = true;
        self.stats.tx_frames += 1;
        self.stats.tx_bytes += len as u64;
        true
    }

    /// [`AfPacketPort::ring_put`], marking the frame `taken` if it went.
    fn ring_one(&mut self, frame: &[u8], taken: &mut bool) {
        *taken = self.ring_put(frame);
    }

    /// The frames at the front of `pkts`, through the ring, up to the first
    /// that finds it full; then one `send` has the kernel send them all.
    fn ring_burst(&mut self, pkts: &[Mbuf]) -> usize {
        let sent = pkts.iter().take_while(|m| self.ring_put(m.data())).count();
        self.kick();
        sent
    }

    /// Has the kernel send what the ring holds.
    fn kick(&mut self) {
        if std::mem::take(&mut self.tx_queued)
            && let Err(e) = sys::send_empty(&self.tx_fd)
            && e.kind() != io::ErrorKind::WouldBlock
        {
            self.stats.tx_full += 1;
        }
    }

    /// Sends `run`'s frames of `pkts`: one alone, or a run that `m` does
    /// not merge, through the ring; otherwise as one merged frame through
    /// `m`, once the kernel has taken all the ring holds (a flow's frames
    /// stay in order), else through the ring too.
    /// Marks `m` refused if the kernel refused merged frames for good: an
    /// error other than ENOBUFS, or ENOBUFS [`GSO_DROPS`] times in a row (a
    /// device that would need the frame cut in software, which the
    /// queue-bypassing transmit path drops rather than does).
    fn send_run(&mut self, m: &mut Merger, run: &Run, pkts: &[Mbuf], taken: &mut [bool]) {
        let members = run.members();
        if let [i] = members {
            let i = usize::from(*i);
            return self.ring_one(pkts[i].data(), &mut taken[i]);
        }
        if self.tx_blocked {
            return; // left for the caller, with the ring's leftovers
        }
        if !m.merge.merges(members.len()) {
            return self.ring_members(members, pkts, taken);
        }
        self.kick();
        // A send that found the socket's buffer full leaves frames in the
        // ring (still marked for sending): the merged frame must not pass them.
        let pending =
            self.tx_last.is_some_and(|s| self.tx.status(s) == libc::TP_STATUS_SEND_REQUEST);
        if !pending {
            let frames = members.iter().map(|&i| pkts[usize::from(i)].data());
            gso::write_merged(&run.first, frames, &mut m.buf);
            match sys::write(&m.fd, &m.buf) {
                Ok(true) => {
                    m.drops = 0;
                    for &i in members {
                        taken[usize::from(i)] = true;
                    }
                    self.stats.tx_frames += members.len() as u64;
                    self.stats.tx_bytes +=
                        members.iter().map(|&i| pkts[usize::from(i)].len() as u64).sum::<u64>();
                    self.stats.tx_gso_frames += 1;
                    self.stats.tx_gso_segments += members.len() as u64;
                    return;
                }
                Ok(false) => {} // no room for now: the ring takes them
                Err(e) if e.raw_os_error() == Some(libc::ENOBUFS) => {
                    m.drops += 1;
                    m.refused |= m.drops >= GSO_DROPS;
                }
                Err(_) => m.refused = true,
            }
        }
        self.ring_members(members, pkts, taken);
    }

    /// Frames `members` of `pkts` through the ring, in order, up to the
    /// first that finds it full.
    fn ring_members(&mut self, members: &[u16], pkts: &[Mbuf], taken: &mut [bool]) {
        for &i in members {
            let i = usize::from(i);
            if !self.ring_put(pkts[i].data()) {
                break;
            }
            taken[i] = true;
        }
    }
}

impl Gso {
    /// The offload socket on interface `ifindex`, merging the runs `merge`
    /// allows: bound for sending only.
    fn open(ifindex: u32, merge: gso::Merge) -> io::Result<Gso> {
        let fd = sys::socket(libc::AF_PACKET, libc::SOCK_RAW | libc::SOCK_NONBLOCK, 0)?;
        sys::setsockopt(&fd, libc::SOL_PACKET, PACKET_VNET_HDR, &1i32)?;
        let _ = sys::setsockopt(&fd, libc::SOL_PACKET, libc::PACKET_QDISC_BYPASS, &1i32);
        let _ = sys::setsockopt(&fd, libc::SOL_SOCKET, libc::SO_SNDBUF, &(4i32 << 20));
        sys::bind_packet(&fd, ifindex, 0)?;
        Ok(Gso {
            out: Merger {
                fd,
                merge,
                buf: Vec::with_capacity(gso::MAX_MERGED),
                drops: 0,
                refused: false,
            },
            runs: Vec::with_capacity(OPEN_RUNS),
            taken: Vec::with_capacity(1024),
        })
    }
}

impl Port for AfPacketPort {
    fn rx_burst(&mut self, pool: &mut Pool, out: &mut Vec<Mbuf>, max: usize) -> usize {
        let first = out.len();
        let mut n = match self.mode {
            RxRing::Frames => self.rx_frames(pool, out, max),
            RxRing::Blocks => self.rx_blocks(pool, out, max),
        };
        if let Some(w) = &mut self.worker {
            // The kernel's program and our rule must agree: count the frames
            // that reached a worker that does not own their flow.
            for m in &out[first..] {
                if w.steering.worker_of(m.data()) != w.index {
                    self.stats.rx_misdirected += 1;
                }
            }
            if let Some((_, ring, next)) = &mut w.neighbors
                && n < max
            {
                n += read_slots(ring, next, NEIGHBOR_SLOTS, pool, out, max - n, &mut self.stats);
            }
        }
        n
    }

    fn tx_burst(&mut self, pkts: &mut Vec<Mbuf>, pool: &mut Pool) -> usize {
        self.tx_blocked = false;
        let Some(mut g) = self.gso.take() else {
            let sent = self.ring_burst(pkts);
            for m in pkts.drain(..sent) {
                pool.free(m);
            }
            self.stats.tx_full += pkts.len() as u64;
            return sent;
        };
        g.taken.clear();
        g.taken.resize(pkts.len(), false);
        g.runs.clear();
        for i in 0..pkts.len() {
            let f = pkts[i].data();
            let Some(s) = Segment::parse(f) else {
                // Not a TCP segment that could merge: after every open run,
                // in case it belongs to one's flow.
                for run in g.runs.drain(..) {
                    self.send_run(&mut g.out, &run, pkts, &mut g.taken);
                }
                self.ring_one(f, &mut g.taken[i]);
                continue;
            };
            if let Some(r) =
                g.runs.iter().position(|r| same_flow(pkts[r.head()].data(), &r.first, f, &s))
            {
                let first = pkts[g.runs[r].head()].data();
                if g.runs[r].push(first, i, f, &s) {
                    continue;
                }
                let run = g.runs.remove(r);
                self.send_run(&mut g.out, &run, pkts, &mut g.taken);
            }
            match Run::start(i, s) {
                Some(run) => {
                    if g.runs.len() == OPEN_RUNS {
                        let old = g.runs.remove(0);
                        self.send_run(&mut g.out, &old, pkts, &mut g.taken);
                    }
                    g.runs.push(run);
                }
                None => self.ring_one(f, &mut g.taken[i]),
            }
        }
        for run in g.runs.drain(..) {
            self.send_run(&mut g.out, &run, pkts, &mut g.taken);
        }
        self.kick();
        // What was sent goes back to the pool; what was not stays, in order.
        let mut keep = 0;
        for i in 0..pkts.len() {
            if !g.taken[i] {
                pkts.swap(keep, i);
                keep += 1;
            }
        }
        let sent = pkts.len() - keep;
        for m in pkts.drain(keep..) {
            pool.free(m);
        }
        self.stats.tx_full += pkts.len() as u64;
        if g.out.refused {
            self.stats.tx_gso_refused += 1;
        } else {
            self.gso = Some(g);
        }
        sent
    }

    fn mac(&self) -> [u8; 6] {
        self.mac
    }

    fn stats(&self) -> PortStats {
        self.stats
    }

    fn wait(&mut self, timeout: std::time::Duration) {
        if self.in_block && self.pkts_left > 0 {
            return;
        }
        let rx = self.rx_fd.as_raw_fd();
        match self.worker.as_ref().and_then(|w| w.neighbors.as_ref()) {
            Some((fd, _, _)) => sys::wait_readable_for(&[rx, fd.as_raw_fd()], timeout),
            None => sys::wait_readable_for(&[rx], timeout),
        };
    }

    fn wait_also(&mut self, timeout: std::time::Duration, also: std::os::fd::RawFd) {
        if self.in_block && self.pkts_left > 0 {
            return;
        }
        let rx = self.rx_fd.as_raw_fd();
        match self.worker.as_ref().and_then(|w| w.neighbors.as_ref()) {
            Some((fd, _, _)) => sys::wait_readable_for(&[rx, fd.as_raw_fd(), also], timeout),
            None => sys::wait_readable_for(&[rx, also], timeout),
        };
    }
}
