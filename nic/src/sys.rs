//! Thin, safe wrappers over the Linux calls the kernel-socket backends share:
//! interface lookup, memory-mapped rings, waiting for a descriptor.
#![allow(unsafe_code)]

use std::ffi::CString;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::sync::atomic::{AtomicU32, Ordering};

/// The index of network interface `name`.
pub fn ifindex(name: &str) -> io::Result<u32> {
    let c = CString::new(name).map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
    // SAFETY: `c` is a valid NUL-terminated string for the whole call.
    let i = unsafe { libc::if_nametoindex(c.as_ptr()) };
    if i == 0 { Err(io::Error::last_os_error()) } else { Ok(i) }
}

/// A new socket, owned.
pub fn socket(domain: i32, ty: i32, proto: i32) -> io::Result<OwnedFd> {
    // SAFETY: plain system call; the descriptor returned is ours alone.
    let fd = unsafe { libc::socket(domain, ty | libc::SOCK_CLOEXEC, proto) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `fd` is a freshly opened descriptor nobody else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// `setsockopt` with a plain-data value.
pub fn setsockopt<T: Copy>(fd: &OwnedFd, level: i32, name: i32, value: &T) -> io::Result<()> {
    // SAFETY: `value` points to `size_of::<T>()` readable bytes for the call;
    // callers pass only the C structs and integers the option expects.
    let r = unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            level,
            name,
            (value as *const T).cast(),
            std::mem::size_of::<T>() as libc::socklen_t,
        )
    };
    if r < 0 { Err(io::Error::last_os_error()) } else { Ok(()) }
}

/// Binds a packet socket to interface `ifindex` for `protocol` (network order
/// is applied here; 0 receives nothing, for transmit-only sockets).
pub fn bind_packet(fd: &OwnedFd, ifindex: u32, protocol: u16) -> io::Result<()> {
    // SAFETY: sockaddr_ll is plain data; all-zero is a valid value.
    let mut sa: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
    sa.sll_family = libc::AF_PACKET as u16;
    sa.sll_protocol = protocol.to_be();
    sa.sll_ifindex = ifindex as i32;
    // SAFETY: `sa` is a valid sockaddr_ll for the length given.
    let r = unsafe {
        libc::bind(
            fd.as_raw_fd(),
            (&sa as *const libc::sockaddr_ll).cast(),
            std::mem::size_of::<libc::sockaddr_ll>() as libc::socklen_t,
        )
    };
    if r < 0 { Err(io::Error::last_os_error()) } else { Ok(()) }
}

/// Waits until one of `fds` is readable or `timeout` passes, to the
/// microsecond (`ppoll`). Not `poll`, which counts in milliseconds: a timer
/// due in less than one (a delayed ACK) would make it return at once, and an
/// idle worker spin through system calls until then. Returns true when a
/// descriptor is ready. An empty `fds` just sleeps.
pub fn wait_readable_for(fds: &[RawFd], timeout: std::time::Duration) -> bool {
    let mut p = [libc::pollfd { fd: -1, events: libc::POLLIN, revents: 0 }; 4];
    let n = fds.len().min(p.len());
    for (slot, fd) in p.iter_mut().zip(fds) {
        slot.fd = *fd;
    }
    let ts = libc::timespec {
        tv_sec: timeout.as_secs().min(i32::MAX as u64) as libc::time_t,
        tv_nsec: timeout.subsec_nanos() as _,
    };
    // SAFETY: `n` valid pollfds and one timespec for the call's duration; no
    // signal mask is passed.
    let r = unsafe { libc::ppoll(p.as_mut_ptr(), n as libc::nfds_t, &ts, std::ptr::null()) };
    r > 0
}

/// An eventfd: a counter in the kernel that one thread bumps to wake another
/// sleeping in `poll` on it (here: a worker waking the dispatcher).
#[derive(Debug)]
pub struct EventFd(OwnedFd);

impl EventFd {
    /// A new non-blocking eventfd, at 0.
    pub fn new() -> io::Result<EventFd> {
        // SAFETY: plain system call; the descriptor returned is ours alone.
        let fd = unsafe { libc::eventfd(0, libc::EFD_NONBLOCK | libc::EFD_CLOEXEC) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: a freshly opened descriptor nobody else owns.
        Ok(EventFd(unsafe { OwnedFd::from_raw_fd(fd) }))
    }

    /// Makes the descriptor readable (adds 1 to the counter). Never blocks:
    /// a counter at its maximum is readable already.
    pub fn signal(&self) {
        let one = 1u64.to_ne_bytes();
        let _ = write(&self.0, &one);
    }

    /// Resets the counter, so the descriptor is no longer readable.
    pub fn clear(&self) {
        let mut v = [0u8; 8];
        let _ = read(&self.0, &mut v);
    }

    /// The descriptor, to wait on.
    pub fn fd(&self) -> RawFd {
        self.0.as_raw_fd()
    }
}

/// A ring shared with the kernel through `mmap` of a packet socket.
pub struct Ring {
    base: *mut u8,
    len: usize,
}

impl Ring {
    /// Maps `len` bytes of the ring configured on `fd`.
    pub fn map(fd: &OwnedFd, len: usize) -> io::Result<Ring> {
        Ring::map_at(fd, len, 0)
    }

    /// Maps `len` bytes of the socket's memory at `offset`: an AF_XDP socket
    /// tells its rings apart by the offset (`XDP_PGOFF_RX_RING` and so on).
    pub fn map_at(fd: &OwnedFd, len: usize, offset: u64) -> io::Result<Ring> {
        let offset = libc::off_t::try_from(offset).map_err(|_| io::ErrorKind::InvalidInput)?;
        // SAFETY: maps the socket's ring; the kernel checks `len` and
        // `offset` against it and the mapping is ours until `Drop`.
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                fd.as_raw_fd(),
                offset,
            )
        };
        if p == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        Ok(Ring { base: p.cast(), len })
    }

    /// `len` bytes of fresh zeroed memory, page aligned and private to this
    /// process (an AF_XDP UMEM, which the kernel then pins and shares).
    pub fn anonymous(len: usize) -> io::Result<Ring> {
        // SAFETY: a new anonymous mapping overlaps nothing of ours.
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_POPULATE,
                -1,
                0,
            )
        };
        if p == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        Ok(Ring { base: p.cast(), len })
    }

    /// The start of the mapping (to register it with the kernel).
    pub fn addr(&self) -> u64 {
        self.base as u64
    }

    /// The mapping's length.
    pub fn len(&self) -> usize {
        self.len
    }

    /// The status word at `off`, shared with the kernel, read with acquire
    /// ordering so the frame it guards is seen whole.
    pub fn status(&self, off: usize) -> u32 {
        self.word(off).load(Ordering::Acquire)
    }

    /// Hands the slot at `off` over by writing its status with release
    /// ordering, after everything written into the slot.
    pub fn set_status(&self, off: usize, v: u32) {
        self.word(off).store(v, Ordering::Release)
    }

    fn word(&self, off: usize) -> &AtomicU32 {
        assert!(off.is_multiple_of(4) && off + 4 <= self.len, "ring word out of bounds");
        // SAFETY: in bounds and 4-byte aligned (checked; the mapping is page
        // aligned); the kernel accesses the word concurrently, which is what
        // the atomic type is for.
        unsafe { &*(self.base.add(off).cast::<AtomicU32>()) }
    }

    /// A plain 32-bit field (owned by us while the slot's status says so).
    pub fn u32_at(&self, off: usize) -> u32 {
        let b = self.bytes(off, 4);
        u32::from_ne_bytes([b[0], b[1], b[2], b[3]])
    }

    /// A plain 16-bit field.
    pub fn u16_at(&self, off: usize) -> u16 {
        let b = self.bytes(off, 2);
        u16::from_ne_bytes([b[0], b[1]])
    }

    /// A plain 64-bit field.
    pub fn u64_at(&self, off: usize) -> u64 {
        let b = self.bytes(off, 8);
        u64::from_ne_bytes([b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7]])
    }

    /// Writes a plain 64-bit field.
    pub fn set_u64(&mut self, off: usize, v: u64) {
        self.bytes_mut(off, 8).copy_from_slice(&v.to_ne_bytes());
    }

    /// Writes a plain 32-bit field.
    pub fn set_u32(&mut self, off: usize, v: u32) {
        self.bytes_mut(off, 4).copy_from_slice(&v.to_ne_bytes());
    }

    /// Bytes of a slot we own. Panics out of bounds (a ring bug, not input).
    pub fn bytes(&self, off: usize, len: usize) -> &[u8] {
        assert!(off.checked_add(len).is_some_and(|e| e <= self.len), "ring read out of bounds");
        // SAFETY: in bounds of the mapping; the slot belongs to user space
        // until its status is handed back, so the kernel does not write it.
        unsafe { std::slice::from_raw_parts(self.base.add(off), len) }
    }

    /// Writable bytes of a slot we own.
    pub fn bytes_mut(&mut self, off: usize, len: usize) -> &mut [u8] {
        assert!(off.checked_add(len).is_some_and(|e| e <= self.len), "ring write out of bounds");
        // SAFETY: as for `bytes`, and `&mut self` makes this the only view.
        unsafe { std::slice::from_raw_parts_mut(self.base.add(off), len) }
    }
}

impl Ring {
    /// A raw pointer to byte `off` of the mapping, for a caller that owns
    /// that part of it by a protocol of its own (an AF_XDP frame handed to
    /// one buffer at a time) and so may write through a shared `Ring`.
    pub fn ptr_at(&self, off: usize, len: usize) -> *mut u8 {
        assert!(off.checked_add(len).is_some_and(|e| e <= self.len), "ring access out of bounds");
        // SAFETY: in bounds of the mapping (checked above).
        unsafe { self.base.add(off) }
    }
}

impl Drop for Ring {
    fn drop(&mut self) {
        // SAFETY: unmaps exactly what `map` mapped; no slice outlives `self`.
        unsafe { libc::munmap(self.base.cast(), self.len) };
    }
}

// SAFETY: the mapping is owned by the Ring and moves with it; the kernel side
// synchronises through the status words.
unsafe impl Send for Ring {}

/// `read` into `buf`: Ok(0) when nothing is waiting (non-blocking descriptor).
pub fn read(fd: &OwnedFd, buf: &mut [u8]) -> io::Result<usize> {
    // SAFETY: `buf` is valid for writes of its length.
    let n = unsafe { libc::read(fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) };
    if n < 0 {
        let e = io::Error::last_os_error();
        return if e.kind() == io::ErrorKind::WouldBlock { Ok(0) } else { Err(e) };
    }
    Ok(n as usize)
}

/// `write` of one whole frame; Ok(false) when the device cannot take it now.
pub fn write(fd: &OwnedFd, buf: &[u8]) -> io::Result<bool> {
    // SAFETY: `buf` is valid for reads of its length.
    let n = unsafe { libc::write(fd.as_raw_fd(), buf.as_ptr().cast(), buf.len()) };
    if n < 0 {
        let e = io::Error::last_os_error();
        return if e.kind() == io::ErrorKind::WouldBlock { Ok(false) } else { Err(e) };
    }
    Ok(true)
}

/// A zero-length send on `fd`: how a packet socket's or an AF_XDP socket's
/// transmit ring is flushed. The error is the kernel's, `WouldBlock`
/// included; each backend knows what its own errors mean.
pub fn send_empty(fd: &OwnedFd) -> io::Result<()> {
    // SAFETY: a zero-length send with no buffer reads no memory.
    let r = unsafe { libc::send(fd.as_raw_fd(), std::ptr::null(), 0, libc::MSG_DONTWAIT) };
    if r < 0 { Err(io::Error::last_os_error()) } else { Ok(()) }
}

/// Opens `/dev/net/tun` and attaches to (or creates) TAP interface `name`,
/// without packet information headers, non-blocking.
pub fn open_tap(name: &str) -> io::Result<OwnedFd> {
    if name.is_empty() || name.len() >= libc::IFNAMSIZ {
        return Err(io::Error::new(io::ErrorKind::InvalidInput, "interface name too long"));
    }
    let path = CString::new("/dev/net/tun").map_err(|_| io::ErrorKind::InvalidInput)?;
    // SAFETY: valid path string; the descriptor returned is ours alone.
    let fd =
        unsafe { libc::open(path.as_ptr(), libc::O_RDWR | libc::O_NONBLOCK | libc::O_CLOEXEC) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: freshly opened, owned from here on.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    // SAFETY: ifreq is plain data; all-zero is valid.
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    for (d, s) in req.ifr_name.iter_mut().zip(name.bytes()) {
        *d = s as libc::c_char;
    }
    req.ifr_ifru.ifru_flags = (libc::IFF_TAP | libc::IFF_NO_PI) as libc::c_short;
    // SAFETY: TUNSETIFF reads and writes one ifreq, which `req` is.
    let r = unsafe { libc::ioctl(fd.as_raw_fd(), libc::TUNSETIFF, &mut req) };
    if r < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(fd)
}

/// `SOL_SOCKET` options that attach and detach a classic BPF filter.
const SO_ATTACH_FILTER: i32 = 26;
const SO_DETACH_FILTER: i32 = 27;
/// `SOL_PACKET` options of fanout groups (linux/if_packet.h).
const PACKET_FANOUT: i32 = 18;
const PACKET_FANOUT_DATA: i32 = 22;
const PACKET_FANOUT_CBPF: u32 = 6;
const PACKET_FANOUT_FLAG_UNIQUEID: u32 = 0x2000;

/// A classic BPF program as the kernel takes it; borrows `prog`.
fn fprog(prog: &[crate::steer::Insn]) -> io::Result<libc::sock_fprog> {
    let len = u16::try_from(prog.len()).map_err(|_| io::ErrorKind::InvalidInput)?;
    // `Insn` is `repr(C)` with the fields of `struct sock_filter` in order.
    Ok(libc::sock_fprog { len, filter: prog.as_ptr() as *mut libc::sock_filter })
}

/// Attaches classic BPF program `prog` as the socket's receive filter.
pub fn attach_filter(fd: &OwnedFd, prog: &[crate::steer::Insn]) -> io::Result<()> {
    let p = fprog(prog)?;
    // The kernel copies the program during the call; `prog` outlives it.
    setsockopt(fd, libc::SOL_SOCKET, SO_ATTACH_FILTER, &p)
}

/// Removes the socket's receive filter.
pub fn detach_filter(fd: &OwnedFd) -> io::Result<()> {
    setsockopt(fd, libc::SOL_SOCKET, SO_DETACH_FILTER, &0i32)
}

/// Joins packet socket `fd` (bound, with its ring) to fanout group `group`,
/// which picks a member for each frame by classic BPF program `prog`
/// (members in the order they joined). `None` asks the kernel for a group id
/// of its own (unused in this network namespace), which is returned.
pub fn join_fanout(
    fd: &OwnedFd,
    group: Option<u16>,
    prog: &[crate::steer::Insn],
) -> io::Result<u16> {
    let arg = match group {
        Some(id) => u32::from(id) | (PACKET_FANOUT_CBPF << 16),
        None => (PACKET_FANOUT_CBPF | PACKET_FANOUT_FLAG_UNIQUEID) << 16,
    };
    setsockopt(fd, libc::SOL_PACKET, PACKET_FANOUT, &arg)?;
    let id = match group {
        Some(id) => id,
        None => {
            let mut v: u32 = 0;
            let mut len = std::mem::size_of::<u32>() as libc::socklen_t;
            // SAFETY: `v` and `len` are valid for writes for the call.
            let r = unsafe {
                libc::getsockopt(
                    fd.as_raw_fd(),
                    libc::SOL_PACKET,
                    PACKET_FANOUT,
                    (&mut v as *mut u32).cast(),
                    &mut len,
                )
            };
            if r < 0 {
                return Err(io::Error::last_os_error());
            }
            (v & 0xffff) as u16
        }
    };
    let p = fprog(prog)?;
    setsockopt(fd, libc::SOL_PACKET, PACKET_FANOUT_DATA, &p)?;
    Ok(id)
}

/// Pins the calling thread to CPU `cpu`.
pub fn pin_current_thread(cpu: usize) -> io::Result<()> {
    // SAFETY: cpu_set_t is plain data; all-zero is the empty set.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    if cpu >= 8 * std::mem::size_of::<libc::cpu_set_t>() {
        return Err(io::ErrorKind::InvalidInput.into());
    }
    // SAFETY: `cpu` is within the set (checked above).
    unsafe { libc::CPU_SET(cpu, &mut set) };
    // SAFETY: `set` is a valid cpu_set_t of the size given; 0 is this thread.
    let r = unsafe { libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set) };
    if r < 0 { Err(io::Error::last_os_error()) } else { Ok(()) }
}
