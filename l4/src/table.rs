//! The connection table: a fixed slab of flow entries, an open-addressing index
//! (linear probing, backward-shift deletion, no tombstones) on (listener, client
//! endpoint), a direct array per SNAT port pool for replies, and one intrusive
//! list per TCP/UDP state in queueing order. A packet only notes when it was
//! seen; an entry is moved to the back of its list lazily, when it reaches the
//! front and turns out to have been seen since (so the per-packet path touches
//! no neighbouring entries). Everything is allocated at start.

use std::hash::BuildHasher;
use std::net::SocketAddr;
use switchyard_nic::mem::huge_vec;

use foldhash::fast::FixedState;
use switchyard_stack::{Duration, Instant};

const NIL: u32 = u32::MAX;

/// The pool of a flow without SNAT (DSR): no reply entry.
pub(crate) const NO_POOL: u16 = u16::MAX;

/// Where a flow is in its life; each state has its own idle timeout.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum FlowState {
    SynSent = 0,
    Established = 1,
    Closing = 2,
    Udp = 3,
}

pub(crate) const STATES: [FlowState; 4] =
    [FlowState::SynSent, FlowState::Established, FlowState::Closing, FlowState::Udp];

/// One flow. Addresses other than the client's live in the listener, backend
/// and SNAT pool tables and are named here by index.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Entry {
    pub client: SocketAddr,
    /// When it was put at the back of its list.
    queued: Instant,
    /// Milliseconds from `queued` to the last packet (saturating).
    seen_ms: u32,
    prev: u32,
    next: u32,
    pub snat_port: u16,
    /// The VIP port the client sent to (listeners may span a port range).
    pub vport: u16,
    pub listener: u16,
    pub backend: u16,
    pub pool: u16,
    pub state: FlowState,
    live: bool,
}

pub(crate) struct FlowTable {
    entries: Vec<Entry>,
    free: Vec<u32>,
    index: Vec<u32>,
    mask: usize,
    hasher: FixedState,
    /// Per SNAT pool: entry by port offset.
    rev: Vec<Vec<u32>>,
    port_base: u16,
    heads: [u32; 4],
    tails: [u32; 4],
    live: usize,
}

impl FlowTable {
    /// A table for `capacity` flows and `pools` SNAT pools of `ports` ports
    /// starting at `port_base`.
    pub fn new(
        capacity: usize,
        pools: usize,
        port_base: u16,
        ports: usize,
        seed: u64,
    ) -> FlowTable {
        let blank = Entry {
            client: SocketAddr::from(([0, 0, 0, 0], 0)),
            queued: Instant::from_micros(0),
            seen_ms: 0,
            prev: NIL,
            next: NIL,
            snat_port: 0,
            vport: 0,
            listener: 0,
            backend: 0,
            pool: 0,
            state: FlowState::SynSent,
            live: false,
        };
        // At most half full, so probe sequences stay short.
        let slots = (capacity * 2).next_power_of_two().max(16);
        FlowTable {
            entries: huge_vec(blank, capacity),
            free: (0..capacity as u32).rev().collect(),
            index: huge_vec(NIL, slots),
            mask: slots - 1,
            hasher: FixedState::with_seed(seed),
            rev: (0..pools).map(|_| huge_vec(NIL, ports)).collect(),
            port_base,
            heads: [NIL; 4],
            tails: [NIL; 4],
            live: 0,
        }
    }

    pub fn len(&self) -> usize {
        self.live
    }

    pub fn capacity(&self) -> usize {
        self.entries.len()
    }

    /// Bytes reserved by the table.
    pub fn bytes(&self) -> usize {
        self.per_flow_bytes() + self.rev.iter().map(|r| r.len() * 4).sum::<usize>()
    }

    /// Bytes that grow with the capacity: entries, free list, hash index (the
    /// reply arrays are fixed by the SNAT port range instead).
    pub fn per_flow_bytes(&self) -> usize {
        self.entries.len() * std::mem::size_of::<Entry>()
            + self.free.capacity() * 4
            + self.index.len() * 4
    }

    pub fn entry(&self, i: u32) -> &Entry {
        &self.entries[i as usize]
    }

    fn slot_of(&self, listener: u16, client: SocketAddr, vport: u16) -> usize {
        (self.hasher.hash_one((listener, client, vport)) as usize) & self.mask
    }

    /// Starts loading the index slot `find` will read first (a hint).
    pub fn prefetch_slot(&self, listener: u16, client: SocketAddr, vport: u16) {
        switchyard_nic::mem::prefetch(&self.index[self.slot_of(listener, client, vport)]);
    }

    /// Starts loading the entry the index slot names, if any (a hint; reads
    /// the slot, so call it a while after [`FlowTable::prefetch_slot`]).
    pub fn prefetch_entry(&self, listener: u16, client: SocketAddr, vport: u16) {
        let i = self.index[self.slot_of(listener, client, vport)];
        if let Some(e) = self.entries.get(i as usize) {
            switchyard_nic::mem::prefetch(e);
        }
    }

    /// The flow of `client` to port `vport` of `listener`.
    pub fn find(&self, listener: u16, client: SocketAddr, vport: u16) -> Option<u32> {
        let mut s = self.slot_of(listener, client, vport);
        loop {
            let i = self.index[s];
            if i == NIL {
                return None;
            }
            let e = &self.entries[i as usize];
            if e.listener == listener && e.client == client && e.vport == vport {
                return Some(i);
            }
            s = (s + 1) & self.mask;
        }
    }

    /// The flow using SNAT `port` of `pool`.
    pub fn find_reply(&self, pool: u16, port: u16) -> Option<u32> {
        let off = usize::from(port.checked_sub(self.port_base)?);
        let i = *self.rev.get(usize::from(pool))?.get(off)?;
        (i != NIL).then_some(i)
    }

    /// Adds a flow; `None` when the table is full.
    #[allow(clippy::too_many_arguments)]
    pub fn insert(
        &mut self,
        listener: u16,
        client: SocketAddr,
        vport: u16,
        backend: u16,
        pool: u16,
        snat_port: u16,
        state: FlowState,
        now: Instant,
    ) -> Option<u32> {
        let off = usize::from(snat_port.wrapping_sub(self.port_base));
        if pool != NO_POOL {
            self.rev.get(usize::from(pool)).and_then(|r| r.get(off))?;
        }
        let i = self.free.pop()?;
        self.entries[i as usize] = Entry {
            client,
            queued: now,
            seen_ms: 0,
            prev: NIL,
            next: NIL,
            snat_port,
            vport,
            listener,
            backend,
            pool,
            state,
            live: true,
        };
        let mut s = self.slot_of(listener, client, vport);
        while self.index[s] != NIL {
            s = (s + 1) & self.mask;
        }
        self.index[s] = i;
        if let Some(slot) = self.rev.get_mut(usize::from(pool)).and_then(|r| r.get_mut(off)) {
            *slot = i;
        }
        self.push_tail(i);
        self.live += 1;
        Some(i)
    }

    /// Marks a flow seen at `now` in `state`. Within a state this writes the
    /// entry only; a change of state moves it to the back of the new state's list.
    pub fn touch(&mut self, i: u32, now: Instant, state: FlowState) {
        let e = &mut self.entries[i as usize];
        if e.state == state {
            let ms = (now - e.queued).total_millis();
            e.seen_ms = u32::try_from(ms).unwrap_or(u32::MAX);
            return;
        }
        self.unlink(i);
        let e = &mut self.entries[i as usize];
        e.queued = now;
        e.seen_ms = 0;
        e.state = state;
        self.push_tail(i);
    }

    /// When a flow was last seen.
    pub fn last_seen(&self, i: u32) -> Instant {
        let e = &self.entries[i as usize];
        e.queued + Duration::from_millis(u64::from(e.seen_ms))
    }

    /// A flow of `state` idle for `timeout` at `now`, if there is one. Flows
    /// seen since they were queued are moved to the back on the way.
    pub fn expired(&mut self, state: FlowState, now: Instant, timeout: Duration) -> Option<u32> {
        loop {
            let h = self.heads[state as usize];
            if h == NIL {
                return None;
            }
            let seen = self.last_seen(h);
            if now >= seen + timeout {
                return Some(h);
            }
            if self.entries[h as usize].seen_ms == 0 {
                return None;
            }
            self.unlink(h);
            let e = &mut self.entries[h as usize];
            e.queued = seen;
            e.seen_ms = 0;
            self.push_tail(h);
        }
    }

    /// The earliest time a flow of `state` can expire (a lower bound: the
    /// front entry may have been seen since it was queued).
    pub fn earliest(&self, state: FlowState, timeout: Duration) -> Option<Instant> {
        let h = self.heads[state as usize];
        (h != NIL).then(|| self.entries[h as usize].queued + timeout)
    }

    /// Removes a flow.
    pub fn remove(&mut self, i: u32) {
        let e = self.entries[i as usize];
        if !e.live {
            return;
        }
        // Find its index slot, then close the gap by backward shifting.
        let mut s = self.slot_of(e.listener, e.client, e.vport);
        while self.index[s] != i {
            if self.index[s] == NIL {
                return; // not indexed: cannot happen for a live entry
            }
            s = (s + 1) & self.mask;
        }
        let mut hole = s;
        let mut j = s;
        loop {
            j = (j + 1) & self.mask;
            let k = self.index[j];
            if k == NIL {
                break;
            }
            let ke = &self.entries[k as usize];
            let ideal = self.slot_of(ke.listener, ke.client, ke.vport);
            // Stays if its ideal slot lies cyclically in (hole, j].
            let stays =
                if hole <= j { hole < ideal && ideal <= j } else { hole < ideal || ideal <= j };
            if !stays {
                self.index[hole] = k;
                hole = j;
            }
        }
        self.index[hole] = NIL;
        if let Some(slot) = self
            .rev
            .get_mut(usize::from(e.pool))
            .and_then(|r| r.get_mut(usize::from(e.snat_port.wrapping_sub(self.port_base))))
        {
            *slot = NIL;
        }
        self.unlink(i);
        self.entries[i as usize].live = false;
        self.free.push(i);
        self.live -= 1;
    }

    fn push_tail(&mut self, i: u32) {
        let st = self.entries[i as usize].state as usize;
        let tail = self.tails[st];
        self.entries[i as usize].prev = tail;
        self.entries[i as usize].next = NIL;
        if tail == NIL {
            self.heads[st] = i;
        } else {
            self.entries[tail as usize].next = i;
        }
        self.tails[st] = i;
    }

    fn unlink(&mut self, i: u32) {
        let e = self.entries[i as usize];
        let st = e.state as usize;
        if e.prev == NIL {
            if self.heads[st] == i {
                self.heads[st] = e.next;
            }
        } else {
            self.entries[e.prev as usize].next = e.next;
        }
        if e.next == NIL {
            if self.tails[st] == i {
                self.tails[st] = e.prev;
            }
        } else {
            self.entries[e.next as usize].prev = e.prev;
        }
        let e = &mut self.entries[i as usize];
        e.prev = NIL;
        e.next = NIL;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn client(i: u32) -> SocketAddr {
        SocketAddr::from(([198, 18, (i >> 8) as u8, i as u8], 1000 + (i % 7) as u16))
    }

    #[test]
    fn insert_find_remove_keep_the_index_consistent() {
        let mut t = FlowTable::new(1000, 1, 40000, 2000, 7);
        let now = Instant::from_secs(1);
        for i in 0..1000u32 {
            assert!(
                t.insert(0, client(i), 80, 0, 0, 40000 + i as u16, FlowState::SynSent, now)
                    .is_some()
            );
        }
        assert!(
            t.insert(0, client(5000), 80, 0, 0, 41500, FlowState::SynSent, now).is_none(),
            "full"
        );
        // Remove every third flow; the rest must still be found, by both keys.
        for i in (0..1000u32).step_by(3) {
            let e = t.find(0, client(i), 80).unwrap();
            t.remove(e);
        }
        for i in 0..1000u32 {
            let found = t.find(0, client(i), 80);
            let reply = t.find_reply(0, 40000 + i as u16);
            if i % 3 == 0 {
                assert_eq!((found, reply), (None, None), "flow {i}");
            } else {
                let e = found.unwrap_or_else(|| panic!("flow {i} lost"));
                assert_eq!(reply, Some(e));
                assert_eq!(t.entry(e).client, client(i));
            }
        }
        assert_eq!(t.len(), 666);
        assert_eq!(t.find(1, client(1), 80), None, "other listener");
        assert_eq!(t.find(0, client(1), 81), None, "other VIP port");
    }

    #[test]
    fn expiry_follows_last_seen_per_state() {
        let mut t = FlowTable::new(8, 1, 100, 8, 1);
        let secs = Instant::from_secs;
        let timeout = Duration::from_secs(10);
        let a = t.insert(0, client(1), 80, 0, 0, 100, FlowState::SynSent, secs(1)).unwrap();
        let b = t.insert(0, client(2), 80, 0, 0, 101, FlowState::SynSent, secs(2)).unwrap();
        assert_eq!(t.earliest(FlowState::SynSent, timeout), Some(secs(11)));
        t.touch(a, secs(3), FlowState::SynSent);
        assert_eq!(t.last_seen(a), secs(3));
        // At 12 s, b (seen at 2 s) is expired; a (seen at 3 s) is not.
        assert_eq!(t.expired(FlowState::SynSent, secs(12), timeout), Some(b));
        t.remove(b);
        assert_eq!(t.expired(FlowState::SynSent, secs(12), timeout), None);
        assert_eq!(t.expired(FlowState::SynSent, secs(13), timeout), Some(a));
        // A change of state moves the flow to the other list.
        t.touch(a, secs(13), FlowState::Established);
        assert_eq!(t.expired(FlowState::SynSent, secs(100), timeout), None);
        assert_eq!(t.expired(FlowState::Established, secs(100), timeout), Some(a));
        t.remove(a);
        assert_eq!(t.earliest(FlowState::Established, timeout), None);
        assert_eq!(t.len(), 0);
    }
}
