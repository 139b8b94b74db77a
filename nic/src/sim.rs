//! The `sim` backend: a port whose other end is a [`SimWire`] held by the
//! simulated network (the `switchyard-sim` crate).
//!
//! Frames cross between the two ends through bounded lock-free rings, the way a
//! NIC's descriptor rings bound what is in flight. The port copies each frame into
//! a pool buffer on receive and out of it on transmit, as DMA would; the simulated
//! wire is not the packet path, so it may allocate.

use std::sync::Arc;

use crossbeam_queue::ArrayQueue;

use crate::{Mbuf, Pool, Port, PortStats};

/// Default ring size of a sim port, in frames.
pub const RING: usize = 4096;

/// The dataplane side of a simulated port.
#[derive(Debug)]
pub struct SimPort {
    mac: [u8; 6],
    rx: Arc<ArrayQueue<Vec<u8>>>,
    tx: Arc<ArrayQueue<Vec<u8>>>,
    stats: PortStats,
}

/// The network side of a simulated port: the simulator pushes frames the port
/// receives and pops frames the port transmitted.
#[derive(Debug, Clone)]
pub struct SimWire {
    rx: Arc<ArrayQueue<Vec<u8>>>,
    tx: Arc<ArrayQueue<Vec<u8>>>,
}

/// A connected port and wire with rings of `ring` frames each way.
pub fn pair(mac: [u8; 6], ring: usize) -> (SimPort, SimWire) {
    let rx = Arc::new(ArrayQueue::new(ring));
    let tx = Arc::new(ArrayQueue::new(ring));
    (
        SimPort { mac, rx: rx.clone(), tx: tx.clone(), stats: PortStats::default() },
        SimWire { rx, tx },
    )
}

impl SimWire {
    /// Delivers a frame to the port. Returns false (frame dropped) when its receive
    /// ring is full.
    pub fn deliver(&self, frame: Vec<u8>) -> bool {
        self.rx.push(frame).is_ok()
    }

    /// Takes the next frame the port transmitted.
    pub fn take(&self) -> Option<Vec<u8>> {
        self.tx.pop()
    }

    /// True when the port has transmitted frames waiting.
    pub fn has_tx(&self) -> bool {
        !self.tx.is_empty()
    }
}

impl SimPort {
    /// Receives one frame as an owned vector: for simulated hosts, which are not
    /// the packet path.
    pub fn recv_frame(&mut self) -> Option<Vec<u8>> {
        let f = self.rx.pop()?;
        self.stats.rx_frames += 1;
        self.stats.rx_bytes += f.len() as u64;
        Some(f)
    }

    /// Sends one frame from an owned vector. Returns false if the ring was full.
    pub fn send_frame(&mut self, frame: Vec<u8>) -> bool {
        let n = frame.len() as u64;
        match self.tx.push(frame) {
            Ok(()) => {
                self.stats.tx_frames += 1;
                self.stats.tx_bytes += n;
                true
            }
            Err(_) => {
                self.stats.tx_full += 1;
                false
            }
        }
    }

    /// True when frames are waiting to be received.
    pub fn has_rx(&self) -> bool {
        !self.rx.is_empty()
    }
}

impl Port for SimPort {
    fn rx_burst(&mut self, pool: &mut Pool, out: &mut Vec<Mbuf>, max: usize) -> usize {
        let mut n = 0;
        while n < max {
            let Some(frame) = self.rx.pop() else { break };
            let mut m = pool.alloc();
            if !m.fill(&frame) {
                self.stats.rx_oversize += 1;
                pool.free(m);
                continue;
            }
            self.stats.rx_frames += 1;
            self.stats.rx_bytes += frame.len() as u64;
            out.push(m);
            n += 1;
        }
        n
    }

    fn tx_burst(&mut self, pkts: &mut Vec<Mbuf>, pool: &mut Pool) -> usize {
        let mut sent = 0;
        for m in pkts.iter() {
            if self.tx.is_full() {
                break;
            }
            let _ = self.tx.push(m.data().to_vec());
            self.stats.tx_frames += 1;
            self.stats.tx_bytes += m.len() as u64;
            sent += 1;
        }
        for m in pkts.drain(..sent) {
            pool.free(m);
        }
        if !pkts.is_empty() {
            self.stats.tx_full += pkts.len() as u64;
        }
        sent
    }

    fn mac(&self) -> [u8; 6] {
        self.mac
    }

    fn stats(&self) -> PortStats {
        self.stats
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_cross_both_ways() {
        let (mut port, wire) = pair([2, 0, 0, 0, 0, 1], 4);
        let mut pool = Pool::new(8, 2048);
        assert!(wire.deliver(vec![1; 60]));
        assert!(wire.deliver(vec![2; 64]));
        let mut burst = Vec::new();
        assert_eq!(port.rx_burst(&mut pool, &mut burst, 32), 2);
        assert_eq!(burst[1].data(), &[2; 64][..]);
        assert_eq!(port.tx_burst(&mut burst, &mut pool), 2);
        assert!(burst.is_empty());
        assert_eq!(wire.take().unwrap(), vec![1; 60]);
        assert_eq!(port.stats().tx_frames, 2);
    }

    #[test]
    fn full_ring_keeps_unsent_frames() {
        let (mut port, _wire) = pair([2, 0, 0, 0, 0, 1], 2);
        let mut pool = Pool::new(8, 2048);
        let mut burst: Vec<Mbuf> = (0..3)
            .map(|i| {
                let mut m = pool.alloc();
                m.fill(&[i; 60]);
                m
            })
            .collect();
        assert_eq!(port.tx_burst(&mut burst, &mut pool), 2);
        assert_eq!(burst.len(), 1);
        assert_eq!(burst[0].data()[0], 2);
    }
}
