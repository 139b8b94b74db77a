//! The system calls of the AF_XDP backend, as thin safe wrappers: the `bpf`
//! commands that create an XSKMAP, load a program, fill the map and attach
//! the program to an interface through a BPF link, and the AF_XDP socket
//! options (UMEM registration, ring sizes, ring offsets, bind).
//!
//! The `libc` crate (0.2.191) has the AF_XDP structs and constants
//! (`sockaddr_xdp`, `xdp_umem_reg`, `xdp_mmap_offsets`, `XDP_*`) but nothing
//! of `bpf(2)`: the `bpf_attr` layouts and the numbers below are defined here
//! from linux/bpf.h and linux/if_link.h (their offsets checked against the
//! headers of a 6.x kernel).
#![allow(unsafe_code)]

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

/// `enum bpf_cmd` (linux/bpf.h).
const BPF_MAP_CREATE: libc::c_long = 0;
const BPF_MAP_UPDATE_ELEM: libc::c_long = 2;
const BPF_PROG_LOAD: libc::c_long = 5;
const BPF_LINK_CREATE: libc::c_long = 28;
/// `enum bpf_map_type`: a map of AF_XDP sockets (linux/bpf.h).
const BPF_MAP_TYPE_XSKMAP: u32 = 17;
/// `enum bpf_prog_type` (linux/bpf.h).
const BPF_PROG_TYPE_XDP: u32 = 6;
/// `enum bpf_attach_type` (linux/bpf.h).
const BPF_XDP: u32 = 37;
/// Attach flags (linux/if_link.h): the generic, driver-independent hook, or
/// the driver's own ("native").
pub const XDP_FLAGS_SKB_MODE: u32 = 1 << 1;
/// See [`XDP_FLAGS_SKB_MODE`].
pub const XDP_FLAGS_DRV_MODE: u32 = 1 << 2;

/// One eBPF instruction, `struct bpf_insn` (linux/bpf.h): opcode, the
/// destination register in the low and the source register in the high
/// nibble of `regs` (little-endian bitfields), offset, immediate.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BpfInsn {
    /// Opcode.
    pub code: u8,
    /// `dst | src << 4`.
    pub regs: u8,
    /// Offset.
    pub off: i16,
    /// Immediate.
    pub imm: i32,
}

/// `bpf_attr` for BPF_MAP_CREATE, up to `map_name`.
#[repr(C)]
#[derive(Default)]
struct MapCreate {
    map_type: u32,
    key_size: u32,
    value_size: u32,
    max_entries: u32,
    map_flags: u32,
    inner_map_fd: u32,
    numa_node: u32,
    map_name: [u8; 16],
}

/// `bpf_attr` for BPF_MAP_UPDATE_ELEM.
#[repr(C)]
#[derive(Default)]
struct MapUpdate {
    map_fd: u32,
    _pad: u32,
    key: u64,
    value: u64,
    flags: u64,
}

/// `bpf_attr` for BPF_PROG_LOAD, up to `expected_attach_type`.
#[repr(C)]
#[derive(Default)]
struct ProgLoad {
    prog_type: u32,
    insn_cnt: u32,
    insns: u64,
    license: u64,
    log_level: u32,
    log_size: u32,
    log_buf: u64,
    kern_version: u32,
    prog_flags: u32,
    prog_name: [u8; 16],
    prog_ifindex: u32,
    expected_attach_type: u32,
}

/// `bpf_attr` for BPF_LINK_CREATE, without the per-type union.
#[repr(C)]
#[derive(Default)]
struct LinkCreate {
    prog_fd: u32,
    target_ifindex: u32,
    attach_type: u32,
    flags: u32,
}

/// `bpf(cmd, attr, sizeof attr)`; a new descriptor when the command makes one.
fn bpf<T>(cmd: libc::c_long, attr: &mut T) -> io::Result<i64> {
    // SAFETY: `attr` is one of the `repr(C)` prefixes of `union bpf_attr`
    // above, valid for reads and writes of its size for the call; the
    // kernel reads no more than the size given and treats the rest as zero.
    // Pointers inside it (program, licence, log) are set by the callers to
    // buffers that outlive the call.
    let r = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            cmd,
            (attr as *mut T).cast::<libc::c_void>(),
            std::mem::size_of::<T>() as libc::c_uint,
        )
    };
    if r < 0 { Err(io::Error::last_os_error()) } else { Ok(r) }
}

fn owned(fd: i64) -> OwnedFd {
    // SAFETY: a descriptor the kernel just created for this call, ours alone.
    unsafe { OwnedFd::from_raw_fd(fd as i32) }
}

fn name16(name: &str) -> [u8; 16] {
    let mut n = [0u8; 16];
    for (d, s) in n.iter_mut().take(15).zip(name.bytes()) {
        *d = s;
    }
    n
}

/// A new XSKMAP of `entries` slots (key: queue index, value: socket).
pub fn xskmap_create(entries: u32) -> io::Result<OwnedFd> {
    let mut a = MapCreate {
        map_type: BPF_MAP_TYPE_XSKMAP,
        key_size: 4,
        value_size: 4,
        max_entries: entries,
        map_name: name16("sy_xsks"),
        ..MapCreate::default()
    };
    bpf(BPF_MAP_CREATE, &mut a).map(owned)
}

/// Puts socket `xsk` into slot `key` of XSKMAP `map`.
pub fn xskmap_set(map: &OwnedFd, key: u32, xsk: &OwnedFd) -> io::Result<()> {
    let value: u32 = xsk.as_raw_fd() as u32;
    let mut a = MapUpdate {
        map_fd: map.as_raw_fd() as u32,
        key: (&key as *const u32) as u64,
        value: (&value as *const u32) as u64,
        ..MapUpdate::default()
    };
    bpf(BPF_MAP_UPDATE_ELEM, &mut a).map(|_| ())
}

/// Loads XDP program `insns` (licence GPL: `bpf_redirect_map` is a GPL-only
/// helper). On failure the verifier's log, if it wrote one, is the second
/// part of the error.
pub fn xdp_prog_load(insns: &[BpfInsn], name: &str) -> Result<OwnedFd, (io::Error, String)> {
    let license = c"GPL";
    let mut log = vec![0u8; 64 * 1024];
    let mut a = ProgLoad {
        prog_type: BPF_PROG_TYPE_XDP,
        insn_cnt: insns.len() as u32,
        insns: insns.as_ptr() as u64,
        license: license.as_ptr() as u64,
        log_level: 1,
        log_size: log.len() as u32,
        log_buf: log.as_mut_ptr() as u64,
        prog_name: name16(name),
        expected_attach_type: BPF_XDP,
        ..ProgLoad::default()
    };
    match bpf(BPF_PROG_LOAD, &mut a) {
        Ok(fd) => Ok(owned(fd)),
        Err(e) => {
            let end = log.iter().position(|&b| b == 0).unwrap_or(log.len());
            let text = String::from_utf8_lossy(&log[..end]).trim().to_string();
            Err((e, text))
        }
    }
}

/// Attaches XDP program `prog` to interface `ifindex` in `mode`
/// ([`XDP_FLAGS_DRV_MODE`] or [`XDP_FLAGS_SKB_MODE`]) through a BPF link:
/// the program stays attached while the returned descriptor is open and is
/// detached by the kernel when it closes, however the process ends.
pub fn xdp_link(prog: &OwnedFd, ifindex: u32, mode: u32) -> io::Result<OwnedFd> {
    let mut a = LinkCreate {
        prog_fd: prog.as_raw_fd() as u32,
        target_ifindex: ifindex,
        attach_type: BPF_XDP,
        flags: mode,
    };
    bpf(BPF_LINK_CREATE, &mut a).map(owned)
}

/// The offsets of an AF_XDP socket's four rings' fields within their mappings.
pub fn mmap_offsets(fd: &OwnedFd) -> io::Result<libc::xdp_mmap_offsets> {
    // SAFETY: plain data; all-zero is a valid value.
    let mut off: libc::xdp_mmap_offsets = unsafe { std::mem::zeroed() };
    let mut len = std::mem::size_of::<libc::xdp_mmap_offsets>() as libc::socklen_t;
    // SAFETY: `off` and `len` are valid for writes for the call.
    let r = unsafe {
        libc::getsockopt(
            fd.as_raw_fd(),
            libc::SOL_XDP,
            libc::XDP_MMAP_OFFSETS,
            (&mut off as *mut libc::xdp_mmap_offsets).cast(),
            &mut len,
        )
    };
    if r < 0 {
        return Err(io::Error::last_os_error());
    }
    if len as usize != std::mem::size_of::<libc::xdp_mmap_offsets>() {
        // Kernels before 5.4 have no ring flags (no need-wakeup either).
        return Err(io::Error::new(io::ErrorKind::Unsupported, "kernel too old (before 5.4)"));
    }
    Ok(off)
}

/// The socket's drop counters.
pub fn statistics(fd: &OwnedFd) -> io::Result<libc::xdp_statistics> {
    // SAFETY: plain data; all-zero is a valid value.
    let mut st: libc::xdp_statistics = unsafe { std::mem::zeroed() };
    let mut len = std::mem::size_of::<libc::xdp_statistics>() as libc::socklen_t;
    // SAFETY: `st` and `len` are valid for writes for the call; an older
    // kernel writes a shorter prefix, the rest stays zero.
    let r = unsafe {
        libc::getsockopt(
            fd.as_raw_fd(),
            libc::SOL_XDP,
            libc::XDP_STATISTICS,
            (&mut st as *mut libc::xdp_statistics).cast(),
            &mut len,
        )
    };
    if r < 0 { Err(io::Error::last_os_error()) } else { Ok(st) }
}

/// Binds AF_XDP socket `fd` to queue `queue` of interface `ifindex` with
/// `flags` (`XDP_COPY` or `XDP_ZEROCOPY`, `XDP_USE_NEED_WAKEUP`).
pub fn bind_xdp(fd: &OwnedFd, ifindex: u32, queue: u32, flags: u16) -> io::Result<()> {
    let sa = libc::sockaddr_xdp {
        sxdp_family: libc::AF_XDP as u16,
        sxdp_flags: flags,
        sxdp_ifindex: ifindex,
        sxdp_queue_id: queue,
        sxdp_shared_umem_fd: 0,
    };
    // SAFETY: `sa` is a valid sockaddr_xdp for the length given.
    let r = unsafe {
        libc::bind(
            fd.as_raw_fd(),
            (&sa as *const libc::sockaddr_xdp).cast(),
            std::mem::size_of::<libc::sockaddr_xdp>() as libc::socklen_t,
        )
    };
    if r < 0 { Err(io::Error::last_os_error()) } else { Ok(()) }
}

/// Wakes the kernel to refill from the fill ring (a zero-length receive),
/// when the ring says it needs it.
pub fn wake_rx(fd: &OwnedFd) {
    // SAFETY: a zero-length receive with no buffer only wakes the driver.
    unsafe {
        libc::recvfrom(
            fd.as_raw_fd(),
            std::ptr::null_mut(),
            0,
            libc::MSG_DONTWAIT,
            std::ptr::null_mut(),
            std::ptr::null_mut(),
        )
    };
}

/// Kicks the transmit ring (a zero-length send): the kernel sends what was
/// produced. Ok(true) when it sent everything, Ok(false) when it stopped
/// early and wants another kick (EAGAIN, EBUSY: completion ring full).
pub fn kick_tx(fd: &OwnedFd) -> io::Result<bool> {
    let Err(e) = crate::sys::send_empty(fd) else { return Ok(true) };
    match e.raw_os_error() {
        Some(libc::EAGAIN) | Some(libc::EBUSY) | Some(libc::ENOBUFS) => Ok(false),
        // The device went away or down: frames are lost, not the port.
        Some(libc::ENETDOWN) | Some(libc::ENXIO) => Ok(true),
        _ => Err(e),
    }
}
