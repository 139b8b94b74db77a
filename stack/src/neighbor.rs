//! The neighbor table shared by L4 and every TCP shard: next-hop IP → Ethernet
//! address, learned from ARP (RFC 826), with a short queue of frames per neighbor
//! that waits for resolution and a bounded number of retries.

use std::collections::VecDeque;
use std::net::IpAddr;

use switchyard_nic::Mbuf;

use crate::{Duration, Instant};

/// Frames held per unresolved neighbor.
pub const PENDING_MAX: usize = 64;
/// Interval between ARP requests for an unresolved neighbor.
pub const RETRY: Duration = Duration::from_millis(1000);
/// Requests sent before an unresolved neighbor's frames are dropped.
pub const MAX_TRIES: u8 = 3;
/// How long a learned entry is trusted without being refreshed by ARP traffic.
pub const REACHABLE: Duration = Duration::from_secs(300);

struct Entry {
    mac: Option<[u8; 6]>,
    learned: Instant,
    pending: VecDeque<Mbuf>,
    next_request: Instant,
    tries: u8,
}

/// What happened when a frame was offered to an unresolved neighbor.
pub enum Queued {
    /// The frame waits; send an ARP request now if `request` is true.
    Waiting {
        /// True when an ARP request should go out now.
        request: bool,
    },
    /// The queue for that neighbor is full; the frame comes back to be dropped.
    Full(Mbuf),
}

/// One neighbor table per worker.
pub struct Neighbors {
    entries: crate::FlowMap<IpAddr, Entry>,
}

impl Default for Neighbors {
    fn default() -> Self {
        Neighbors { entries: crate::flow_map(64, 0x6e65_6967) }
    }
}

impl Neighbors {
    /// The Ethernet address of `ip`, if it is known and fresh.
    pub fn lookup(&self, ip: IpAddr, now: Instant) -> Option<[u8; 6]> {
        let e = self.entries.get(&ip)?;
        match e.mac {
            Some(mac) if now < e.learned + REACHABLE => Some(mac),
            _ => None,
        }
    }

    /// Records `ip` at `mac`; returns the frames that were waiting for it.
    pub fn learn(&mut self, ip: IpAddr, mac: [u8; 6], now: Instant, out: &mut Vec<Mbuf>) {
        let e = self.entries.entry(ip).or_insert_with(|| Entry {
            mac: None,
            learned: now,
            pending: VecDeque::new(),
            next_request: now,
            tries: 0,
        });
        e.mac = Some(mac);
        e.learned = now;
        e.tries = 0;
        out.extend(e.pending.drain(..));
    }

    /// Holds `pkt` until `ip` is resolved.
    pub fn queue(&mut self, ip: IpAddr, pkt: Mbuf, now: Instant) -> Queued {
        let e = self.entries.entry(ip).or_insert_with(|| Entry {
            mac: None,
            learned: now,
            pending: VecDeque::with_capacity(8),
            next_request: now,
            tries: 0,
        });
        if e.pending.len() >= PENDING_MAX {
            return Queued::Full(pkt);
        }
        e.pending.push_back(pkt);
        let request = now >= e.next_request && e.tries < MAX_TRIES;
        if request {
            e.tries += 1;
            e.next_request = now + RETRY;
        }
        Queued::Waiting { request }
    }

    /// Retries due requests and gives up on neighbors that never answered:
    /// `retry` gets the addresses to ask for again, `dead` the frames to drop.
    pub fn poll(&mut self, now: Instant, retry: &mut Vec<IpAddr>, dead: &mut Vec<Mbuf>) {
        for (ip, e) in self.entries.iter_mut() {
            if e.pending.is_empty() || now < e.next_request {
                continue;
            }
            if e.tries >= MAX_TRIES {
                dead.extend(e.pending.drain(..));
                e.tries = 0;
            } else {
                e.tries += 1;
                e.next_request = now + RETRY;
                retry.push(*ip);
            }
        }
    }

    /// The next time `poll` has work.
    pub fn poll_at(&self) -> Option<Instant> {
        self.entries.values().filter(|e| !e.pending.is_empty()).map(|e| e.next_request).min()
    }
}
