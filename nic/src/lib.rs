//! The polling NIC layer: packet buffers from per-worker pools, and the [`Port`]
//! trait through which every backend (sim, pcap, TAP, AF_PACKET, AF_XDP, and DPDK
//! with the `dpdk` feature) receives and transmits bursts of Ethernet frames; and
//! the software [`dispatch`]er that shares one such port among several workers.
//!
//! All `unsafe` code of Switchyard belongs in this crate, each use in a small
//! module that says why it is sound (`mem`: prefetch hints and huge pages).
#![deny(unsafe_code)]
#![cfg_attr(not(target_os = "linux"), allow(dead_code))]
#![warn(missing_docs)]

pub mod afpacket;
pub mod afxdp;
pub mod dispatch;
#[cfg(feature = "dpdk")]
pub mod dpdk;
pub mod gso;
pub mod mbuf;
pub mod mem;
pub mod pcap;
pub mod sim;
pub mod steer;
mod sys;
pub mod tap;
mod umem;
mod xdp_sys;

pub use mbuf::{Mbuf, Pool, PoolStats, RxCsum};

/// Pins the calling thread to CPU `cpu` (a worker to its core).
pub fn pin_current_thread(cpu: usize) -> std::io::Result<()> {
    sys::pin_current_thread(cpu)
}

/// The largest number of frames a backend moves in one `rx_burst` call.
pub const BURST: usize = 32;

/// Bytes kept in front of a received frame so a layer can prepend headers
/// (an encapsulation, or an Ethernet header in front of an IP packet) in place.
pub const HEADROOM: usize = 128;

/// Default size of one packet buffer: headroom plus a 1514-byte frame, rounded up.
pub const BUF_SIZE: usize = 2048;

/// Counters every port keeps.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct PortStats {
    /// Frames handed to the caller by `rx_burst`.
    pub rx_frames: u64,
    /// Bytes of those frames.
    pub rx_bytes: u64,
    /// Frames accepted by `tx_burst`.
    pub tx_frames: u64,
    /// Bytes of those frames.
    pub tx_bytes: u64,
    /// Frames the device could not take (ring full) and that the caller dropped.
    pub tx_full: u64,
    /// Frames that arrived larger than a buffer and were dropped.
    pub rx_oversize: u64,
    /// Frames a flow-steering program gave to a worker that does not own
    /// their flow (see [`steer`]); always 0 when the kernel and our rule agree.
    pub rx_misdirected: u64,
    /// Frames that carried a run of TCP segments merged by
    /// [`gso`] (their segments count in `tx_frames`).
    pub tx_gso_frames: u64,
    /// The segments in those frames.
    pub tx_gso_segments: u64,
    /// Times the kernel refused a merged frame; merging then stops.
    pub tx_gso_refused: u64,
}

/// A polling network port: one receive and one transmit queue.
///
/// Both calls move whole bursts and never block. Buffers come from the caller's
/// [`Pool`]; a port never allocates per frame.
pub trait Port {
    /// Receives up to `max` frames, appending them to `out`; returns how many.
    fn rx_burst(&mut self, pool: &mut Pool, out: &mut Vec<Mbuf>, max: usize) -> usize;

    /// Transmits frames from the front of `pkts`. Frames the port accepted are
    /// removed from `pkts` and their buffers go back to `pool`; frames it could
    /// not take (ring full) stay in `pkts` for the caller to retry or drop.
    /// Returns the number sent.
    fn tx_burst(&mut self, pkts: &mut Vec<Mbuf>, pool: &mut Pool) -> usize;

    /// The port's Ethernet address.
    fn mac(&self) -> [u8; 6];

    /// The port's counters.
    fn stats(&self) -> PortStats;

    /// True once a finite receive side (a pcap file) has no more frames.
    fn rx_exhausted(&self) -> bool {
        false
    }

    /// How the backend runs, when it chose at open (AF_XDP: `native, copy`).
    fn mode(&self) -> Option<String> {
        None
    }

    /// The device's own counters as one line, where it keeps any beyond
    /// [`PortStats`] (AF_XDP: the kernel's drops).
    fn counters(&self) -> Option<String> {
        None
    }

    /// Blocks until a frame may be waiting or `timeout` passes: lets a worker
    /// with nothing to do sleep instead of spinning. Backends without a
    /// descriptor to wait on return at once.
    fn wait(&mut self, timeout: std::time::Duration) {
        let _ = timeout;
    }

    /// A descriptor that becomes readable when frames wait to be received,
    /// for a caller that sleeps on the port and on something else at once
    /// (the [`dispatch::Dispatcher`]: the device and its workers). `None`
    /// where the port has none (DPDK polls): such a caller naps instead.
    fn wait_fd(&self) -> Option<std::os::fd::RawFd> {
        None
    }

    /// Whether the device runs short of receive buffers that only the next
    /// `rx_burst` can give back to it (AF_XDP: the fill ring nearly empty
    /// while freed frames wait): a caller should not sleep long on it.
    fn starved(&self) -> bool {
        false
    }

    /// Like [`Port::wait`], and wakes too when `also` becomes readable (the
    /// TLS engine's doorbell). A port without a descriptor waits as it
    /// always does (a dispatcher's worker port parks, and is unparked by
    /// whoever rings).
    fn wait_also(&mut self, timeout: std::time::Duration, also: std::os::fd::RawFd) {
        match self.wait_fd() {
            Some(fd) => {
                sys::wait_readable_for(&[fd, also], timeout);
            }
            None => self.wait(timeout),
        }
    }
}

/// Errors opening a port.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum NicError {
    /// The `nic = "..."` string names no backend we know.
    #[error(
        "unknown NIC backend `{0}` (expected `sim`, `pcap:IN[,OUT]`, `tap:NAME`, `af_packet:IFACE`, `af_xdp:IFACE[/QUEUE]` or `dpdk:EAL ARGS`)"
    )]
    UnknownBackend(String),
    /// A kernel device could not be opened or set up.
    #[error("{device}: {reason}")]
    Device {
        /// The backend and device, as in the configuration.
        device: String,
        /// What failed, with the system's error.
        reason: String,
    },
    /// A capture file could not be opened, read or written.
    #[error("pcap file `{path}`: {reason}")]
    Pcap {
        /// The file.
        path: String,
        /// What went wrong.
        reason: String,
    },
}
