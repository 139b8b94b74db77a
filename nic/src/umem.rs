//! An AF_XDP UMEM shared between its port and the buffers it lends frames
//! to (user-space zero copy): a received frame stays where the kernel wrote
//! it, wrapped by the dataplane's `Mbuf`, until it is freed (back to the
//! fill ring) or transmitted as it is.
#![allow(unsafe_code)]

use std::sync::Arc;

use crossbeam_queue::ArrayQueue;

use crate::sys::Ring;

/// One UMEM frame's size (see `afxdp`).
pub(crate) const FRAME: usize = 2048;

/// A UMEM: the mapping the kernel shares, and the receive frames buffers
/// gave back.
pub(crate) struct Umem {
    map: Ring,
    /// Receive frames the dataplane is done with, for the fill ring.
    returned: ArrayQueue<u64>,
}

// SAFETY: the mapping is written through a shared `Umem` only by the one
// `UmemFrame` that owns a frame, or by the port on a free transmit frame
// (`write`); the port lends each receive frame to one buffer at a time and
// takes it back only from `returned` or the completion ring. `returned` is a
// lock-free queue.
unsafe impl Sync for Umem {}

impl Umem {
    /// The UMEM in `map`, with room in `returned` for every receive frame.
    pub(crate) fn new(map: Ring, returned: ArrayQueue<u64>) -> Umem {
        Umem { map, returned }
    }

    /// A receive frame (its base) back for the fill ring.
    pub(crate) fn give_back(&self, base: u64) {
        // Room for every receive frame: never full.
        let _ = self.returned.push(base);
    }

    /// Whether receive frames wait to go back to the fill ring.
    pub(crate) fn has_returned(&self) -> bool {
        !self.returned.is_empty()
    }

    /// A receive frame given back, if any.
    pub(crate) fn take_back(&self) -> Option<u64> {
        self.returned.pop()
    }

    /// Copies `bytes` to the frame at `addr`. The caller (the port) owns
    /// that frame: a free transmit frame no buffer and no kernel ring has.
    pub(crate) fn write(&self, addr: u64, bytes: &[u8]) {
        let p = self.map.ptr_at(addr as usize, bytes.len());
        // SAFETY: in bounds (`ptr_at` checks); the frame is the caller's
        // alone, so nothing else reads or writes it meanwhile.
        unsafe { std::ptr::copy_nonoverlapping(bytes.as_ptr(), p, bytes.len()) }
    }
}

/// One receive frame of a UMEM, lent to a buffer: the frame is this value's
/// until it is dropped (back to the fill ring) or handed to the kernel for
/// transmit ([`UmemFrame::hand_over`]).
pub(crate) struct UmemFrame {
    umem: Arc<Umem>,
    base: u64,
    /// Dropping gives the frame back (unless the kernel took it).
    owned: bool,
}

impl UmemFrame {
    /// Lends the receive frame at `base`, which the kernel has just handed
    /// over through the receive ring.
    pub(crate) fn lend(umem: &Arc<Umem>, base: u64) -> UmemFrame {
        UmemFrame { umem: umem.clone(), base, owned: true }
    }

    /// The frame's offset in its UMEM.
    pub(crate) fn base(&self) -> u64 {
        self.base
    }

    /// Whether the frame is one of `umem`'s.
    pub(crate) fn is_of(&self, umem: &Arc<Umem>) -> bool {
        Arc::ptr_eq(&self.umem, umem)
    }

    /// The kernel took the frame (transmit): not given back on drop; the
    /// completion ring returns it to the port.
    pub(crate) fn hand_over(mut self) {
        self.owned = false;
    }

    /// The frame's bytes.
    pub(crate) fn buffer(&self) -> &[u8] {
        let p = self.umem.map.ptr_at(self.base as usize, FRAME);
        // SAFETY: in bounds (`ptr_at` checks); the frame is ours alone (see
        // `Umem`) and in no ring the kernel writes from.
        unsafe { std::slice::from_raw_parts(p, FRAME) }
    }

    /// The frame's bytes, writable.
    pub(crate) fn buffer_mut(&mut self) -> &mut [u8] {
        let p = self.umem.map.ptr_at(self.base as usize, FRAME);
        // SAFETY: as for `buffer`, and `&mut self` makes this the only view.
        unsafe { std::slice::from_raw_parts_mut(p, FRAME) }
    }
}

impl Drop for UmemFrame {
    fn drop(&mut self) {
        if self.owned {
            self.umem.give_back(self.base);
        }
    }
}

impl std::fmt::Debug for UmemFrame {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UmemFrame").field("base", &self.base).finish()
    }
}
