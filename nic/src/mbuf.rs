//! Packet buffers and the per-worker pool they come from.
//!
//! An [`Mbuf`] owns a fixed-size byte buffer with headroom; the frame lives in
//! `buf[head..head + len]`. A [`Pool`] hands buffers out and takes them back, so a
//! worker in steady state allocates nothing per packet. A pool is owned by one
//! worker and never shared, so it needs no lock. A buffer that is dropped instead of
//! returned is simply freed; the pool allocates a replacement and counts it as a miss.
//!
//! With the `dpdk` feature an `Mbuf` can also wrap a DPDK mbuf as received
//! (zero copy): the same frame view over DPDK's buffer, handed back to the
//! device on transmit without a copy, and freed to its mempool otherwise.

use crate::{BUF_SIZE, HEADROOM};

/// One packet buffer.
#[derive(Debug)]
pub struct Mbuf {
    buf: Storage,
    head: usize,
    len: usize,
    rx_csum: RxCsum,
}

/// Where a buffer's bytes live.
#[derive(Debug)]
enum Storage {
    /// Our own memory, from a [`Pool`].
    Heap(Box<[u8]>),
    /// A DPDK mbuf, as a device received it.
    #[cfg(feature = "dpdk")]
    Dpdk(crate::dpdk::DpdkMbuf),
    /// A frame of an AF_XDP socket's UMEM, as the kernel filled it.
    Umem(crate::afxdp::UmemFrame),
}

impl Storage {
    #[inline]
    fn bytes(&self) -> &[u8] {
        match self {
            Storage::Heap(b) => b,
            #[cfg(feature = "dpdk")]
            Storage::Dpdk(m) => m.buffer(),
            Storage::Umem(f) => f.buffer(),
        }
    }

    #[inline]
    fn bytes_mut(&mut self) -> &mut [u8] {
        match self {
            Storage::Heap(b) => b,
            #[cfg(feature = "dpdk")]
            Storage::Dpdk(m) => m.buffer_mut(),
            Storage::Umem(f) => f.buffer_mut(),
        }
    }

    #[inline]
    fn len(&self) -> usize {
        self.bytes().len()
    }
}

/// What the device said about a received frame's TCP/UDP checksum (its
/// checksum offload), so the stack need not verify it again.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum RxCsum {
    /// Nothing known: the stack verifies the checksum.
    #[default]
    Unchecked,
    /// The device (or the kernel) verified it.
    Verified,
    /// The frame comes from a stack on this host that left the checksum for
    /// the device to complete (Linux's CHECKSUM_PARTIAL, e.g. over a veth):
    /// the field holds only the pseudo-header sum. The data is as sent; a
    /// frame forwarded onwards must get its checksum completed first.
    Partial,
}

impl Mbuf {
    fn with_capacity(size: usize) -> Mbuf {
        Mbuf {
            buf: Storage::Heap(vec![0u8; size].into_boxed_slice()),
            head: HEADROOM.min(size),
            len: 0,
            rx_csum: RxCsum::Unchecked,
        }
    }

    /// The frame's bytes.
    #[inline]
    pub fn data(&self) -> &[u8] {
        &self.buf.bytes()[self.head..self.head + self.len]
    }

    /// The frame's bytes, writable.
    #[inline]
    pub fn data_mut(&mut self) -> &mut [u8] {
        &mut self.buf.bytes_mut()[self.head..self.head + self.len]
    }

    /// Length of the frame.
    #[inline]
    pub fn len(&self) -> usize {
        self.len
    }

    /// True when the frame is empty.
    #[inline]
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Bytes free in front of the frame.
    #[inline]
    pub fn headroom(&self) -> usize {
        self.head
    }

    /// Bytes free behind the frame.
    #[inline]
    pub fn tailroom(&self) -> usize {
        self.buf.len() - self.head - self.len
    }

    /// Empties the buffer and restores the default headroom.
    #[inline]
    pub fn reset(&mut self) {
        self.head = HEADROOM.min(self.buf.len());
        self.len = 0;
        self.rx_csum = RxCsum::Unchecked;
    }

    /// What the receiving device said about the frame's L4 checksum.
    #[inline]
    pub fn rx_csum(&self) -> RxCsum {
        self.rx_csum
    }

    /// Records what the receiving device said about the L4 checksum.
    #[inline]
    pub fn set_rx_csum(&mut self, c: RxCsum) {
        self.rx_csum = c;
    }

    /// Replaces the frame with `bytes`. Returns false (and leaves the buffer empty)
    /// when they do not fit.
    pub fn fill(&mut self, bytes: &[u8]) -> bool {
        self.reset();
        if bytes.len() > self.tailroom() {
            return false;
        }
        self.buf.bytes_mut()[self.head..self.head + bytes.len()].copy_from_slice(bytes);
        self.len = bytes.len();
        true
    }

    /// Sets the frame length to `len` bytes from the current start, growing into
    /// the tailroom (new bytes are whatever the buffer held) or shrinking.
    /// Returns the frame, or `None` if `len` does not fit.
    pub fn resize(&mut self, len: usize) -> Option<&mut [u8]> {
        if len > self.buf.len() - self.head {
            return None;
        }
        self.len = len;
        Some(self.data_mut())
    }

    /// Grows the frame by `n` bytes at the front (taking headroom) and returns the
    /// new front bytes, or `None` without change if the headroom is too small.
    pub fn prepend(&mut self, n: usize) -> Option<&mut [u8]> {
        if n > self.head {
            return None;
        }
        self.head -= n;
        self.len += n;
        Some(&mut self.buf.bytes_mut()[self.head..self.head + n])
    }

    /// Removes `n` bytes from the front of the frame (they become headroom).
    /// Returns false without change if the frame is shorter than `n`.
    pub fn adj(&mut self, n: usize) -> bool {
        if n > self.len {
            return false;
        }
        self.head += n;
        self.len -= n;
        true
    }

    /// Shortens the frame to `len` bytes if it is longer.
    pub fn truncate(&mut self, len: usize) {
        self.len = self.len.min(len);
    }

    /// Whether the frame lives in a device's own buffer (zero copy), not
    /// in one of a pool's.
    pub fn is_device_buffer(&self) -> bool {
        !matches!(self.buf, Storage::Heap(_))
    }

    /// A frame the kernel wrote into a UMEM frame: `len` bytes at `head`.
    pub(crate) fn from_umem(f: crate::afxdp::UmemFrame, head: usize, len: usize) -> Mbuf {
        Mbuf { buf: Storage::Umem(f), head, len, rx_csum: RxCsum::Unchecked }
    }

    /// For transmit on AF_XDP: the UMEM frame holding the frame, if it lives
    /// in one, with where the frame starts in it and its length.
    pub(crate) fn umem(&self) -> Option<(&crate::afxdp::UmemFrame, usize, usize)> {
        match &self.buf {
            Storage::Umem(f) => Some((f, self.head, self.len)),
            _ => None,
        }
    }

    /// Gives the UMEM frame up without returning it (the kernel took it).
    pub(crate) fn into_umem(self) -> Result<crate::afxdp::UmemFrame, Mbuf> {
        match self.buf {
            Storage::Umem(f) => Ok(f),
            buf => Err(Mbuf { buf, ..self }),
        }
    }

    /// A frame in a DPDK mbuf the device received, without copying it.
    #[cfg(feature = "dpdk")]
    pub(crate) fn from_dpdk(m: crate::dpdk::DpdkMbuf, rx_csum: RxCsum) -> Mbuf {
        let (head, len) = m.data_span();
        Mbuf { buf: Storage::Dpdk(m), head, len, rx_csum }
    }

    /// For transmit: the DPDK mbuf holding the frame (its data set to the
    /// frame as it is now), if the frame lives in one.
    #[cfg(feature = "dpdk")]
    pub(crate) fn dpdk_mut(&mut self) -> Option<&mut crate::dpdk::DpdkMbuf> {
        let (head, len) = (self.head, self.len);
        match &mut self.buf {
            Storage::Dpdk(m) => {
                m.set_data_span(head, len);
                Some(m)
            }
            _ => None,
        }
    }

    /// The DPDK mbuf the frame lives in, or the buffer back if it is ours.
    #[cfg(feature = "dpdk")]
    pub(crate) fn into_dpdk(self) -> Result<crate::dpdk::DpdkMbuf, Mbuf> {
        match self.buf {
            Storage::Dpdk(m) => Ok(m),
            buf => Err(Mbuf { buf, ..self }),
        }
    }
}

/// Counters of a pool.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct PoolStats {
    /// Buffers the pool allocated when created.
    pub prealloc: u64,
    /// Allocations made because the pool was empty: zero in a healthy steady state.
    pub misses: u64,
    /// Buffers currently in the pool.
    pub free: u64,
}

/// A per-worker free list of packet buffers.
#[derive(Debug)]
pub struct Pool {
    free: Vec<Mbuf>,
    buf_size: usize,
    prealloc: u64,
    misses: u64,
}

impl Pool {
    /// A pool with `count` buffers of `buf_size` bytes allocated up front.
    pub fn new(count: usize, buf_size: usize) -> Pool {
        let buf_size = buf_size.max(HEADROOM + 64);
        let free = (0..count).map(|_| Mbuf::with_capacity(buf_size)).collect();
        Pool { free, buf_size, prealloc: count as u64, misses: 0 }
    }

    /// A pool of `count` buffers of the default size.
    pub fn with_count(count: usize) -> Pool {
        Pool::new(count, BUF_SIZE)
    }

    /// Takes an empty buffer (default headroom, length 0).
    #[inline]
    pub fn alloc(&mut self) -> Mbuf {
        match self.free.pop() {
            Some(mut m) => {
                m.reset();
                m
            }
            None => {
                self.misses += 1;
                Mbuf::with_capacity(self.buf_size)
            }
        }
    }

    /// Returns a buffer to the pool (a device's buffer goes back to the
    /// device's own pool).
    #[inline]
    pub fn free(&mut self, m: Mbuf) {
        if matches!(&m.buf, Storage::Heap(b) if b.len() == self.buf_size) {
            self.free.push(m);
        }
    }

    /// Takes a free buffer as it is, if the pool has one: no allocation and
    /// no miss. For handing spare buffers on to another pool.
    #[inline]
    pub fn take(&mut self) -> Option<Mbuf> {
        self.free.pop()
    }

    /// Buffers in the pool now.
    #[inline]
    pub fn available(&self) -> usize {
        self.free.len()
    }

    /// Buffers the pool was created with: the level it returns to when
    /// buffers move between pools (see [`crate::dispatch`]).
    #[inline]
    pub fn size(&self) -> usize {
        self.prealloc as usize
    }

    /// Size of each buffer in bytes, headroom included.
    pub fn buf_size(&self) -> usize {
        self.buf_size
    }

    /// The pool's counters.
    pub fn stats(&self) -> PoolStats {
        PoolStats { prealloc: self.prealloc, misses: self.misses, free: self.free.len() as u64 }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prepend_adj_round_trip() {
        let mut pool = Pool::new(1, 256);
        let mut m = pool.alloc();
        assert!(m.fill(&[1, 2, 3, 4]));
        assert_eq!(m.data(), &[1, 2, 3, 4]);
        m.prepend(2).unwrap().copy_from_slice(&[9, 8]);
        assert_eq!(m.data(), &[9, 8, 1, 2, 3, 4]);
        assert!(m.adj(3));
        assert_eq!(m.data(), &[2, 3, 4]);
        assert!(!m.adj(4));
        assert!(m.prepend(HEADROOM + 10).is_none());
        assert_eq!(m.len(), 3);
    }

    #[test]
    fn oversized_fill_is_refused() {
        let mut pool = Pool::new(1, 256);
        let mut m = pool.alloc();
        assert!(!m.fill(&[0u8; 200]));
        assert!(m.is_empty());
    }

    #[test]
    fn steady_state_has_no_misses() {
        let mut pool = Pool::new(4, 256);
        for _ in 0..1000 {
            let a = pool.alloc();
            let b = pool.alloc();
            pool.free(a);
            pool.free(b);
        }
        assert_eq!(pool.stats().misses, 0);
        let held: Vec<_> = (0..5).map(|_| pool.alloc()).collect();
        assert_eq!(pool.stats().misses, 1);
        drop(held);
    }
}
