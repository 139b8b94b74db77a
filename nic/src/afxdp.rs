//! The `af_xdp:IFACE[/QUEUE]` backend: an AF_XDP socket on one queue of a
//! Linux interface, fed by a small XDP program of our own.
//!
//! Setup, all with raw system calls (no libbpf, no libxdp):
//!
//! * an XSKMAP (queue index → socket) and an XDP program of five eBPF
//!   instructions, `return bpf_redirect_map(&xsks, ctx->rx_queue_index,
//!   XDP_PASS)` ([`redirect_program`]): frames of our queue go to our socket,
//!   others (and all, before the socket is in the map) to the kernel's stack;
//! * the program attached through a BPF link, in the driver ("native") if it
//!   can and generic (SKB) XDP otherwise; the kernel detaches it when the
//!   link's descriptor closes, on exit or crash alike;
//! * a UMEM of `FRAMES` frames of `FRAME` bytes: the first half circulates
//!   between the fill and receive rings, the second half between the
//!   transmit and completion rings;
//! * the socket bound zero-copy where the driver supports it (only with
//!   native XDP), in copy mode otherwise.
//!
//! [`AfXdpPort::mode`] says which of these was used, e.g. `native, copy`.
//! Receive is zero copy in user space: the dataplane's [`Mbuf`] wraps the
//! UMEM frame the kernel wrote ([`UmemFrame`]), which goes back to the fill
//! ring when the buffer is freed, or is transmitted as it is when the frame
//! is forwarded (and comes back through the completion ring). Frames the
//! dataplane builds in its own buffers are copied into a free transmit
//! frame. One `sendto` per burst kicks the kernel when the ring asks for
//! it. AF_XDP carries no checksum metadata, so frames are left
//! `RxCsum::Unchecked` and the stack verifies them.

use std::io;
use std::os::fd::{AsRawFd, OwnedFd};
use std::sync::Arc;

use crossbeam_queue::ArrayQueue;

pub(crate) use crate::umem::{Umem, UmemFrame};

use crate::sys::{self, Ring};
use crate::xdp_sys::{self, BpfInsn};
use crate::{Mbuf, NicError, Pool, Port, PortStats};

/// One UMEM frame. Frames in aligned mode are a power of two between 2 KiB
/// and a page; the kernel writes a received frame 256 bytes
/// (XDP_PACKET_HEADROOM) in, which leaves 1,792 bytes: a 1,500-byte MTU.
const FRAME: usize = crate::umem::FRAME;
/// UMEM frames (8 MiB): half for receive, half for transmit.
const FRAMES: usize = 4096;
const RX_FRAMES: usize = FRAMES / 2;
/// Entries of each of the four rings (a power of two). The fill ring holds
/// every receive frame, so a frame given back always finds room.
const RING: u32 = RX_FRAMES as u32;
/// Size of `struct xdp_desc` (addr u64, len u32, options u32).
const DESC: usize = 16;
/// `XDP_PASS` (linux/bpf.h `enum xdp_action`): what the program returns for
/// frames of a queue without a socket.
const XDP_PASS: i32 = 2;
/// Transmit kicks per burst at most: copy mode sends 32 frames a kick.
const MAX_KICKS: usize = 64;

/// One of the four rings shared with the kernel: a power-of-two array of
/// entries with a producer and a consumer index, each written by one side.
struct XdpRing {
    map: Ring,
    producer: usize,
    consumer: usize,
    flags: usize,
    desc: usize,
    mask: u32,
    /// Our side's index (producer of fill and tx, consumer of rx and
    /// completion), published to the kernel with release ordering.
    local: u32,
}

impl XdpRing {
    fn map(
        fd: &OwnedFd,
        pgoff: u64,
        off: &libc::xdp_ring_offset,
        entry: usize,
    ) -> io::Result<XdpRing> {
        let desc = off.desc as usize;
        let map = Ring::map_at(fd, desc + RING as usize * entry, pgoff)?;
        let r = XdpRing {
            map,
            producer: off.producer as usize,
            consumer: off.consumer as usize,
            flags: off.flags as usize,
            desc,
            mask: RING - 1,
            local: 0,
        };
        Ok(r)
    }

    /// Consumer side: entries the kernel has produced and we have not read.
    fn available(&self) -> u32 {
        self.map.status(self.producer).wrapping_sub(self.local)
    }

    /// Consumer side: gives `n` read entries back.
    fn release(&mut self, n: u32) {
        self.local = self.local.wrapping_add(n);
        self.map.set_status(self.consumer, self.local);
    }

    /// Producer side: entries free for us to write.
    fn free(&self) -> u32 {
        RING.saturating_sub(self.local.wrapping_sub(self.map.status(self.consumer)))
    }

    /// Producer side: publishes `n` written entries.
    fn submit(&mut self, n: u32) {
        self.local = self.local.wrapping_add(n);
        self.map.set_status(self.producer, self.local);
    }

    /// Producer side: entries published that the kernel has not taken yet.
    fn pending(&self) -> u32 {
        self.local.wrapping_sub(self.map.status(self.consumer))
    }

    /// The kernel asks to be woken (XDP_USE_NEED_WAKEUP).
    fn needs_wakeup(&self) -> bool {
        self.map.status(self.flags) & libc::XDP_RING_NEED_WAKEUP != 0
    }

    /// Byte offset of entry `i` (counted from `local`) of `entry` bytes.
    fn slot(&self, i: u32, entry: usize) -> usize {
        self.desc + (self.local.wrapping_add(i) & self.mask) as usize * entry
    }
}

/// The socket, its UMEM and rings: what is tried once zero-copy and, if the
/// driver refuses, again in copy mode.
struct Xsk {
    fd: OwnedFd,
    rx: XdpRing,
    tx: XdpRing,
    fill: XdpRing,
    comp: XdpRing,
    umem: Arc<Umem>,
}

impl Xsk {
    fn open(ifindex: u32, queue: u32, bind_flags: u16) -> Result<Xsk, (&'static str, io::Error)> {
        let fd = sys::socket(libc::AF_XDP, libc::SOCK_RAW, 0).map_err(|e| ("AF_XDP socket", e))?;
        let umem = Ring::anonymous(FRAMES * FRAME).map_err(|e| ("UMEM", e))?;
        let reg = libc::xdp_umem_reg {
            addr: umem.addr(),
            len: umem.len() as u64,
            chunk_size: FRAME as u32,
            headroom: 0,
            flags: 0,
            tx_metadata_len: 0,
        };
        sys::setsockopt(&fd, libc::SOL_XDP, libc::XDP_UMEM_REG, &reg)
            .map_err(|e| ("UMEM registration", e))?;
        for (opt, what) in [
            (libc::XDP_UMEM_FILL_RING, "fill ring"),
            (libc::XDP_UMEM_COMPLETION_RING, "completion ring"),
            (libc::XDP_RX_RING, "receive ring"),
            (libc::XDP_TX_RING, "transmit ring"),
        ] {
            sys::setsockopt(&fd, libc::SOL_XDP, opt, &RING).map_err(|e| (what, e))?;
        }
        let off = xdp_sys::mmap_offsets(&fd).map_err(|e| ("ring offsets", e))?;
        let map = |pgoff: u64, o: &libc::xdp_ring_offset, entry: usize, what: &'static str| {
            XdpRing::map(&fd, pgoff, o, entry).map_err(|e| (what, e))
        };
        let rx = map(libc::XDP_PGOFF_RX_RING as u64, &off.rx, DESC, "receive ring mmap")?;
        let tx = map(libc::XDP_PGOFF_TX_RING as u64, &off.tx, DESC, "transmit ring mmap")?;
        let mut fill = map(libc::XDP_UMEM_PGOFF_FILL_RING, &off.fr, 8, "fill ring mmap")?;
        let comp = map(libc::XDP_UMEM_PGOFF_COMPLETION_RING, &off.cr, 8, "completion ring mmap")?;
        // Every receive frame to the kernel before the first frame comes.
        for i in 0..RX_FRAMES {
            let at = fill.slot(i as u32, 8);
            fill.map.set_u64(at, (i * FRAME) as u64);
        }
        fill.submit(RX_FRAMES as u32);
        xdp_sys::bind_xdp(&fd, ifindex, queue, bind_flags | libc::XDP_USE_NEED_WAKEUP)
            .map_err(|e| ("bind", e))?;
        let umem = Arc::new(Umem::new(umem, ArrayQueue::new(RX_FRAMES)));
        Ok(Xsk { fd, rx, tx, fill, comp, umem })
    }
}

/// The XDP program, with XSKMAP `map_fd`: `r2 = ctx->rx_queue_index;
/// r1 = &map; r3 = XDP_PASS; return bpf_redirect_map(r1, r2, r3)`. The low
/// bits of the helper's flags are what it returns when the map has no socket
/// at that index, so frames of other queues (or before our socket is in the
/// map) go on to the kernel's stack.
pub fn redirect_program(map_fd: i32) -> [BpfInsn; 6] {
    const LDX_W: u8 = 0x61; // BPF_LDX | BPF_MEM | BPF_W
    const LD_DW_IMM: u8 = 0x18; // BPF_LD | BPF_DW | BPF_IMM (two slots)
    const MOV64_K: u8 = 0xb7; // BPF_ALU64 | BPF_MOV | BPF_K
    const CALL: u8 = 0x85; // BPF_JMP | BPF_CALL
    const EXIT: u8 = 0x95; // BPF_JMP | BPF_EXIT
    const PSEUDO_MAP_FD: u8 = 1; // BPF_PSEUDO_MAP_FD: the immediate is a map fd
    const RX_QUEUE_INDEX: i16 = 16; // offsetof(struct xdp_md, rx_queue_index)
    const REDIRECT_MAP: i32 = 51; // BPF_FUNC_redirect_map
    let insn = |code, dst: u8, src: u8, off, imm| BpfInsn { code, regs: dst | src << 4, off, imm };
    [
        insn(LDX_W, 2, 1, RX_QUEUE_INDEX, 0),
        insn(LD_DW_IMM, 1, PSEUDO_MAP_FD, 0, map_fd),
        insn(0, 0, 0, 0, 0),
        insn(MOV64_K, 3, 0, 0, XDP_PASS),
        insn(CALL, 0, 0, 0, REDIRECT_MAP),
        insn(EXIT, 0, 0, 0, 0),
    ]
}

/// How the port runs, as printed at start.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct XdpMode {
    /// The program runs in the driver (native XDP), not the generic hook.
    pub native: bool,
    /// The socket shares the driver's buffers (no copy in the kernel).
    pub zero_copy: bool,
}

impl std::fmt::Display for XdpMode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{}, {}",
            if self.native { "native" } else { "generic" },
            if self.zero_copy { "zero-copy" } else { "copy" }
        )
    }
}

/// An AF_XDP port on one queue of an interface.
pub struct AfXdpPort {
    // Field order is drop order: the link first, so the program is detached
    // (and the kernel's stack gets the interface back) before the socket
    // and its memory go.
    _link: OwnedFd,
    _prog: OwnedFd,
    _map: OwnedFd,
    xsk: Xsk,
    /// Transmit frames not in the kernel's hands (UMEM addresses).
    tx_free: Vec<u64>,
    /// Frames sent from the receive frame they came in (no copy).
    tx_in_place: u64,
    label: String,
    mode: XdpMode,
    mac: [u8; 6],
    stats: PortStats,
}

fn err(label: &str, what: &str, e: io::Error) -> NicError {
    let hint = match e.raw_os_error() {
        Some(libc::EPERM) | Some(libc::EACCES) => " (needs root or CAP_NET_ADMIN + CAP_BPF)",
        Some(libc::ENODEV) => " (no such interface)",
        Some(libc::EAFNOSUPPORT) => " (this kernel has no AF_XDP sockets: CONFIG_XDP_SOCKETS)",
        Some(libc::ENOSYS) => " (this kernel has no bpf(2): CONFIG_BPF_SYSCALL)",
        // The UMEM is locked memory, charged to RLIMIT_MEMLOCK without
        // CAP_IPC_LOCK.
        Some(libc::ENOBUFS) | Some(libc::ENOMEM) => {
            " (the 8 MiB UMEM exceeds the locked-memory limit: raise RLIMIT_MEMLOCK, `ulimit -l`, or grant CAP_IPC_LOCK)"
        }
        Some(libc::EBUSY) | Some(libc::EEXIST) => {
            " (another XDP program or socket holds the interface or queue)"
        }
        _ => "",
    };
    NicError::Device { device: label.to_string(), reason: format!("{what}: {e}{hint}") }
}

impl AfXdpPort {
    /// Opens queue `queue` of interface `iface`; `mac` is the address the
    /// dataplane uses on it.
    pub fn open(iface: &str, queue: u32, mac: [u8; 6]) -> Result<AfXdpPort, NicError> {
        let label = format!("af_xdp:{iface}/{queue}");
        let ifindex = sys::ifindex(iface).map_err(|e| err(&label, "interface", e))?;
        let map = xdp_sys::xskmap_create(queue.saturating_add(1))
            .map_err(|e| err(&label, "XSKMAP", e))?;
        let prog = xdp_sys::xdp_prog_load(&redirect_program(map.as_raw_fd()), "sy_xsk_redirect")
            .map_err(|(e, log)| {
                let log =
                    if log.is_empty() { String::new() } else { format!("; verifier:\n{log}") };
                err(&label, &format!("XDP program{log}"), e)
            })?;
        let (link, native) = match xdp_sys::xdp_link(&prog, ifindex, xdp_sys::XDP_FLAGS_DRV_MODE) {
            Ok(l) => (l, true),
            Err(native) if matches!(native.raw_os_error(), Some(libc::EPERM | libc::EBUSY)) => {
                return Err(err(&label, "attach XDP program", native));
            }
            Err(native) => match xdp_sys::xdp_link(&prog, ifindex, xdp_sys::XDP_FLAGS_SKB_MODE) {
                Ok(l) => (l, false),
                Err(e) => {
                    return Err(err(
                        &label,
                        &format!("attach XDP program (native: {native}; generic)"),
                        e,
                    ));
                }
            },
        };
        // Zero-copy needs the driver's support and native XDP; copy mode
        // works on every interface.
        let zc = if native { Xsk::open(ifindex, queue, libc::XDP_ZEROCOPY).ok() } else { None };
        let zero_copy = zc.is_some();
        let xsk = match zc {
            Some(x) => x,
            None => Xsk::open(ifindex, queue, libc::XDP_COPY).map_err(|(what, e)| {
                let e = if e.raw_os_error() == Some(libc::EINVAL) && what == "bind" {
                    io::Error::new(e.kind(), format!("{e} (does {iface} have a queue {queue}?)"))
                } else {
                    e
                };
                err(&label, what, e)
            })?,
        };
        xdp_sys::xskmap_set(&map, queue, &xsk.fd).map_err(|e| err(&label, "XSKMAP update", e))?;
        let tx_free = (RX_FRAMES..FRAMES).rev().map(|i| (i * FRAME) as u64).collect();
        Ok(AfXdpPort {
            _link: link,
            _prog: prog,
            _map: map,
            xsk,
            tx_free,
            tx_in_place: 0,
            label,
            mode: XdpMode { native, zero_copy },
            mac,
            stats: PortStats::default(),
        })
    }

    /// The device as the configuration names it, with its queue.
    pub fn label(&self) -> &str {
        &self.label
    }

    /// Which XDP hook and socket mode the port runs in.
    pub fn xdp_mode(&self) -> XdpMode {
        self.mode
    }

    /// Gives the receive frames the dataplane is done with back to the
    /// kernel's fill ring; how many.
    fn refill(&mut self) -> u32 {
        let xsk = &mut self.xsk;
        let room = xsk.fill.free();
        let mut k = 0;
        while k < room {
            let Some(base) = xsk.umem.take_back() else { break };
            let f = xsk.fill.slot(k, 8);
            xsk.fill.map.set_u64(f, base);
            k += 1;
        }
        if k > 0 {
            xsk.fill.submit(k);
        }
        k
    }

    /// Takes transmit frames the kernel has finished with back.
    fn reclaim(&mut self) {
        let comp = &mut self.xsk.comp;
        let n = comp.available().min(RING);
        let tx_half = (RX_FRAMES * FRAME) as u64..(FRAMES * FRAME) as u64;
        for i in 0..n {
            let addr = comp.map.u64_at(comp.slot(i, 8)) & !(FRAME as u64 - 1);
            // Only our own frames come back, each once: transmit frames to
            // their list, receive frames sent as they came to the fill ring.
            if tx_half.contains(&addr) && self.tx_free.len() < FRAMES - RX_FRAMES {
                self.tx_free.push(addr);
            } else if addr < tx_half.start {
                self.xsk.umem.give_back(addr);
            }
        }
        comp.release(n);
    }

    /// Kicks the kernel to send what the transmit ring holds: copy mode sends
    /// a batch a kick, so more kicks while frames wait, up to `MAX_KICKS`.
    fn flush(&mut self) {
        for _ in 0..MAX_KICKS {
            let tx = &self.xsk.tx;
            if tx.pending() == 0 || !tx.needs_wakeup() {
                return;
            }
            match xdp_sys::kick_tx(&self.xsk.fd) {
                Ok(true) => {}
                // Busy (its completion ring full) or a batch short: free
                // room in the completion ring before the next kick.
                Ok(false) => self.reclaim(),
                Err(_) => return,
            }
        }
    }
}

impl Port for AfXdpPort {
    fn rx_burst(&mut self, _pool: &mut Pool, out: &mut Vec<Mbuf>, max: usize) -> usize {
        // Frames the dataplane is done with go back to the kernel first.
        let k = self.refill();
        let xsk = &mut self.xsk;
        let n = xsk.rx.available().min(max as u32);
        let rx_end = (RX_FRAMES * FRAME) as u64;
        for i in 0..n {
            let at = xsk.rx.slot(i, DESC);
            let addr = xsk.rx.map.u64_at(at);
            let len = xsk.rx.map.u32_at(at + 8) as usize;
            let base = addr & !(FRAME as u64 - 1);
            if base >= rx_end {
                continue; // not one of our receive frames: the kernel's bug
            }
            // Zero copy: the buffer is the UMEM frame.
            let frame = UmemFrame::lend(&xsk.umem, base);
            let head = (addr - base) as usize;
            if head + len <= FRAME {
                self.stats.rx_frames += 1;
                self.stats.rx_bytes += len as u64;
                out.push(Mbuf::from_umem(frame, head, len));
            } else {
                self.stats.rx_oversize += 1; // dropped: back to the kernel
            }
        }
        if n > 0 {
            xsk.rx.release(n);
        }
        if xsk.fill.needs_wakeup() && (n > 0 || k > 0) {
            xdp_sys::wake_rx(&xsk.fd);
        }
        // Frames a kick could not send last time.
        if self.xsk.tx.pending() > 0 {
            self.flush();
        }
        n as usize
    }

    fn tx_burst(&mut self, pkts: &mut Vec<Mbuf>, pool: &mut Pool) -> usize {
        self.reclaim();
        let room = self.xsk.tx.free() as usize;
        let mut sent = 0;
        for m in pkts.iter().take(room) {
            // A frame in one of our UMEM frames goes as it is; one in our
            // own memory is copied into a free transmit frame.
            let (addr, len) = match m.umem() {
                Some((f, head, len)) if f.is_of(&self.xsk.umem) => {
                    self.tx_in_place += 1;
                    (f.base() + head as u64, len)
                }
                _ => {
                    let Some(addr) = self.tx_free.pop() else { break };
                    let len = m.len().min(FRAME);
                    // A free transmit frame: no buffer and no ring has it.
                    self.xsk.umem.write(addr, &m.data()[..len]);
                    (addr, len)
                }
            };
            let at = self.xsk.tx.slot(sent as u32, DESC);
            self.xsk.tx.map.set_u64(at, addr);
            self.xsk.tx.map.set_u32(at + 8, len as u32);
            self.xsk.tx.map.set_u32(at + 12, 0);
            self.stats.tx_frames += 1;
            self.stats.tx_bytes += len as u64;
            sent += 1;
        }
        if sent > 0 {
            self.xsk.tx.submit(sent as u32);
            self.flush();
        }
        for m in pkts.drain(..sent) {
            match m.into_umem() {
                // The kernel has it now; the completion ring gives it back.
                Ok(f) if f.is_of(&self.xsk.umem) => f.hand_over(),
                Ok(_) => {} // another port's frame (copied): back to it
                Err(ours) => pool.free(ours),
            }
        }
        self.stats.tx_full += pkts.len() as u64;
        sent
    }

    fn mac(&self) -> [u8; 6] {
        self.mac
    }

    fn stats(&self) -> PortStats {
        self.stats
    }

    fn mode(&self) -> Option<String> {
        Some(self.mode.to_string())
    }

    fn counters(&self) -> Option<String> {
        let s = xdp_sys::statistics(&self.xsk.fd).ok()?;
        Some(format!(
            "af_xdp: dropped by the kernel {} (receive ring full {}, fill ring empty {}), invalid descriptors rx {} tx {}, sent in the frame they came in {}",
            s.rx_dropped,
            s.rx_ring_full,
            s.rx_fill_ring_empty_descs,
            s.rx_invalid_descs,
            s.tx_invalid_descs,
            self.tx_in_place
        ))
    }

    fn wait(&mut self, timeout: std::time::Duration) {
        if self.refill() > 0 && self.xsk.fill.needs_wakeup() {
            xdp_sys::wake_rx(&self.xsk.fd);
        }
        if self.xsk.rx.available() > 0 {
            return;
        }
        sys::wait_readable_for(&[self.xsk.fd.as_raw_fd()], timeout);
    }

    fn starved(&self) -> bool {
        self.xsk.fill.pending() < RING / 4 && self.xsk.umem.has_returned()
    }

    /// The socket: readable while its receive ring holds frames.
    fn wait_fd(&self) -> Option<std::os::fd::RawFd> {
        Some(self.xsk.fd.as_raw_fd())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn program_is_the_redirect_with_the_map_in_a_wide_load() {
        let p = redirect_program(7);
        // ld_imm64 of a map descriptor: two slots, source register 1.
        assert_eq!((p[1].code, p[1].regs, p[1].imm), (0x18, 0x11, 7));
        assert_eq!(p[2], BpfInsn { code: 0, regs: 0, off: 0, imm: 0 });
        assert_eq!((p[0].regs, p[0].off), (0x12, 16), "r2 = *(u32 *)(r1 + 16)");
        assert_eq!(p[4].imm, 51, "bpf_redirect_map");
        assert_eq!(std::mem::size_of::<BpfInsn>(), 8);
    }

    #[test]
    fn a_missing_interface_is_an_error_naming_it() {
        let e =
            AfXdpPort::open("sy-nonexist0", 0, [2, 0, 0, 0, 0, 1]).err().expect("no such device");
        let s = e.to_string();
        assert!(s.starts_with("af_xdp:sy-nonexist0/0: interface:"), "{s}");
        assert!(s.contains("no such interface"), "{s}");
    }

    /// The kernel's verifier accepts the program (needs CAP_BPF; says so
    /// and returns where it is not permitted).
    #[test]
    fn the_verifier_accepts_the_program() {
        let skip = |why: String| {
            if std::env::var("SWITCHYARD_E2E").as_deref() == Ok("require") {
                panic!("the_verifier_accepts_the_program: cannot run: {why}");
            }
            eprintln!("SKIPPED the_verifier_accepts_the_program: {why}");
        };
        let map = match xdp_sys::xskmap_create(1) {
            Ok(m) => m,
            Err(e) => return skip(format!("bpf(BPF_MAP_CREATE): {e} (needs root or CAP_BPF)")),
        };
        match xdp_sys::xdp_prog_load(&redirect_program(map.as_raw_fd()), "sy_test") {
            Ok(_) => {}
            Err((e, _)) if e.raw_os_error() == Some(libc::EPERM) => {
                skip(format!("bpf(BPF_PROG_LOAD): {e} (needs root or CAP_BPF)"))
            }
            Err((e, log)) => panic!("program refused: {e}\n{log}"),
        }
    }
}
