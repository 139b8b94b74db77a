//! Backend selection for new flows: round-robin, smooth weighted round-robin,
//! weighted least-connections, source-IP affinity and Maglev consistent hashing
//! (Eisenbud et al., "Maglev: A Fast and Reliable Software Network Load
//! Balancer", NSDI 2016, section 3.4), with weights.

use std::net::{IpAddr, SocketAddr};

/// How a listener picks a backend for a new flow.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum Scheduler {
    /// Each new flow to the next backend in turn.
    #[default]
    RoundRobin,
    /// Round-robin in proportion to weights, interleaved smoothly.
    WeightedRoundRobin,
    /// The backend with the fewest active flows per unit of weight.
    LeastConnections,
    /// The client's address picks the backend (consistent hashing on the
    /// source IP): a client keeps its backend while the backend set holds.
    SourceIp,
    /// Maglev consistent hashing on the flow's addresses and ports: every
    /// instance with the same backends picks the same backend for a flow.
    Maglev,
}

impl Scheduler {
    /// The configuration name.
    pub fn name(self) -> &'static str {
        match self {
            Scheduler::RoundRobin => "round-robin",
            Scheduler::WeightedRoundRobin => "weighted-round-robin",
            Scheduler::LeastConnections => "least-connections",
            Scheduler::SourceIp => "source-ip",
            Scheduler::Maglev => "maglev",
        }
    }

    /// Every scheduler, for configuration parsing.
    pub const ALL: [Scheduler; 5] = [
        Scheduler::RoundRobin,
        Scheduler::WeightedRoundRobin,
        Scheduler::LeastConnections,
        Scheduler::SourceIp,
        Scheduler::Maglev,
    ];
}

/// A 64-bit hash of bytes: FNV-1a folded through the splitmix64 finalizer.
/// Stable across runs and machines, so every instance computes the same table.
pub fn hash64(data: &[u8], seed: u64) -> u64 {
    let mut h = 0xcbf2_9ce4_8422_2325u64 ^ seed;
    for b in data {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h ^= h >> 30;
    h = h.wrapping_mul(0xbf58_476d_1ce4_e5b9);
    h ^= h >> 27;
    h = h.wrapping_mul(0x94d0_49bb_1331_11eb);
    h ^ (h >> 31)
}

fn ip_bytes(ip: IpAddr, out: &mut [u8; 16]) -> usize {
    match ip {
        IpAddr::V4(a) => {
            out[..4].copy_from_slice(&a.octets());
            4
        }
        IpAddr::V6(a) => {
            out.copy_from_slice(&a.octets());
            16
        }
    }
}

/// The hash of a client address.
pub fn hash_ip(ip: IpAddr) -> u64 {
    let mut b = [0u8; 16];
    let n = ip_bytes(ip, &mut b);
    hash64(&b[..n], 0x5359)
}

/// The hash of a flow's client and VIP endpoints (protocol is the listener's).
pub fn hash_flow(src: SocketAddr, dst: SocketAddr) -> u64 {
    let mut b = [0u8; 36];
    let mut t = [0u8; 16];
    let n = ip_bytes(src.ip(), &mut t);
    b[..n].copy_from_slice(&t[..n]);
    let mut len = n;
    let m = ip_bytes(dst.ip(), &mut t);
    b[len..len + m].copy_from_slice(&t[..m]);
    len += m;
    b[len..len + 2].copy_from_slice(&src.port().to_be_bytes());
    b[len + 2..len + 4].copy_from_slice(&dst.port().to_be_bytes());
    hash64(&b[..len + 4], 0x4d41)
}

/// The smallest prime at least `n`.
pub fn next_prime(n: usize) -> usize {
    let is_prime =
        |p: usize| p >= 2 && (2..).take_while(|d| d * d <= p).all(|d| !p.is_multiple_of(d));
    (n.max(2)..).find(|p| is_prime(*p)).unwrap_or(n)
}

/// The smallest Maglev table: a prime, enough for 655 backends at 100 entries each.
pub const MIN_TABLE: usize = 65_537;

/// A Maglev lookup table: `entry[hash % size]` is a backend index.
#[derive(Clone, Debug)]
pub struct Maglev {
    table: Vec<u16>,
}

impl Maglev {
    /// Builds the table for backends identified by `names` (a stable identity,
    /// such as the backend's name or address) with `weights`. The size is
    /// 65,537 (prime), or the smallest prime above 100 × the number of backends
    /// when that is larger, as the paper recommends for an imbalance near 1%.
    /// The size must not follow small changes of the backend set: a table of
    /// another size would move nearly every flow. Zero-weight backends get no
    /// entries; if every weight is zero the table is empty.
    pub fn new(names: &[&[u8]], weights: &[u32]) -> Maglev {
        let mut b = MaglevBuilder::new(names, weights);
        loop {
            if let Some(m) = b.step(usize::MAX) {
                return m;
            }
        }
    }

    /// The backend for a hash, or `None` for an empty table.
    pub fn lookup(&self, hash: u64) -> Option<usize> {
        if self.table.is_empty() {
            return None;
        }
        Some(usize::from(self.table[(hash % self.table.len() as u64) as usize]))
    }

    /// Number of entries.
    pub fn size(&self) -> usize {
        self.table.len()
    }
}

/// A Maglev table being filled a slice at a time, so a rebuild after a backend
/// change never stalls the packet path: the worker gives it a budget of
/// entries per turn and keeps using the old table (skipping backends that are
/// down) until the new one is complete.
#[derive(Clone, Debug)]
pub struct MaglevBuilder {
    table: Vec<u16>,
    /// (offset, skip) of each backend's permutation.
    perm: Vec<(usize, usize)>,
    /// Each backend's position in its permutation.
    next: Vec<usize>,
    weights: Vec<u32>,
    credit: Vec<u64>,
    max_w: u64,
    filled: usize,
    /// The backend whose turn is next.
    turn: usize,
}

impl MaglevBuilder {
    /// Starts a table for `names` with `weights` (see [`Maglev::new`]).
    pub fn new(names: &[&[u8]], weights: &[u32]) -> MaglevBuilder {
        let n = names.len();
        let size = next_prime((100 * n + 1).max(MIN_TABLE));
        let empty = n == 0 || weights.iter().all(|w| *w == 0);
        let perm = names
            .iter()
            .map(|name| {
                let offset = (hash64(name, 0xa5a5) % size as u64) as usize;
                let skip = (hash64(name, 0x5a5a) % (size as u64 - 1) + 1) as usize;
                (offset, skip)
            })
            .collect();
        MaglevBuilder {
            table: if empty { Vec::new() } else { vec![u16::MAX; size] },
            perm,
            next: vec![0; n],
            weights: (0..n).map(|i| weights.get(i).copied().unwrap_or(0)).collect(),
            credit: vec![0; n],
            max_w: u64::from(*weights.iter().max().unwrap_or(&1)),
            filled: 0,
            turn: 0,
        }
    }

    /// Fills up to `budget` more entries; the finished table once all are
    /// filled (and then an empty one if called again).
    pub fn step(&mut self, budget: usize) -> Option<Maglev> {
        let size = self.table.len();
        let n = self.perm.len();
        let mut done = 0;
        // Weighted turns: each turn, a backend earns its weight in credit and
        // takes one entry per `max_w` of credit.
        while self.filled < size && done < budget {
            let i = self.turn;
            self.turn = (i + 1) % n;
            self.credit[i] += u64::from(self.weights[i]);
            if self.credit[i] < self.max_w {
                continue;
            }
            self.credit[i] -= self.max_w;
            let (offset, skip) = self.perm[i];
            let mut c = (offset + self.next[i] * skip) % size;
            while self.table[c] != u16::MAX {
                self.next[i] += 1;
                c = (offset + self.next[i] * skip) % size;
            }
            self.table[c] = i as u16;
            self.next[i] += 1;
            self.filled += 1;
            done += 1;
        }
        (self.filled == size).then(|| Maglev { table: std::mem::take(&mut self.table) })
    }
}

/// The per-listener state of a scheduler.
#[derive(Clone, Debug)]
pub struct Picker {
    kind: Scheduler,
    /// Configured weights.
    base: Vec<u32>,
    /// Which backends may take new flows.
    up: Vec<bool>,
    /// Stable identities, for rebuilding the Maglev table.
    names: Vec<Vec<u8>>,
    /// Effective weights: the configured weight, or 0 while down.
    weights: Vec<u32>,
    next: usize,
    current: Vec<i64>,
    maglev: Option<Maglev>,
    /// The table after the last backend change, while it is being filled.
    pending: Option<MaglevBuilder>,
}

impl Picker {
    /// A picker for backends identified by `names` with `weights`.
    pub fn new(kind: Scheduler, names: &[&[u8]], weights: &[u32]) -> Picker {
        let maglev = match kind {
            Scheduler::SourceIp | Scheduler::Maglev => Some(Maglev::new(names, weights)),
            _ => None,
        };
        Picker {
            kind,
            base: weights.to_vec(),
            up: vec![true; weights.len()],
            names: names.iter().map(|n| n.to_vec()).collect(),
            weights: weights.to_vec(),
            next: 0,
            current: vec![0; weights.len()],
            maglev,
            pending: None,
        }
    }

    /// Takes backend `i` out of rotation for new flows, or puts it back. A new
    /// Maglev table is started, in which the other backends keep their entries
    /// where they can; [`Picker::rebuild`] fills it a slice at a time. Flows
    /// already in the connection table are not affected.
    pub fn set_up(&mut self, i: usize, up: bool) {
        if self.up.get(i) == Some(&up) || i >= self.up.len() {
            return;
        }
        self.up[i] = up;
        self.weights[i] = if up { self.base[i] } else { 0 };
        self.current.iter_mut().for_each(|c| *c = 0);
        if self.maglev.is_some() {
            let names: Vec<&[u8]> = self.names.iter().map(|n| n.as_slice()).collect();
            self.pending = Some(MaglevBuilder::new(&names, &self.weights));
        }
    }

    /// Goes on filling the Maglev table started by the last backend change,
    /// at most `budget` entries; true while it is not finished. Until then
    /// lookups use the previous table and pass over backends that are down.
    pub fn rebuild(&mut self, budget: usize) -> bool {
        let Some(b) = self.pending.as_mut() else { return false };
        match b.step(budget) {
            Some(m) => {
                self.maglev = Some(m);
                self.pending = None;
                false
            }
            None => true,
        }
    }

    /// Whether a Maglev table is still being filled.
    pub fn rebuilding(&self) -> bool {
        self.pending.is_some()
    }

    /// Looks `hash` up in the Maglev table. While a rebuild is under way the
    /// table may still name a backend that went down: the next entries are
    /// tried, then any backend that is up.
    fn consistent(&self, hash: u64) -> Option<usize> {
        let m = self.maglev.as_ref()?;
        let up = |i: usize| self.weights.get(i).is_some_and(|w| *w > 0);
        (0..64u64).filter_map(|k| m.lookup(hash.wrapping_add(k))).find(|&i| up(i)).or_else(|| {
            let n = self.weights.len();
            (0..n).map(|k| (hash as usize).wrapping_add(k) % n).find(|&i| up(i))
        })
    }

    /// Whether backend `i` takes new flows.
    pub fn is_up(&self, i: usize) -> bool {
        self.up.get(i).copied().unwrap_or(false)
    }

    /// The scheduler.
    pub fn kind(&self) -> Scheduler {
        self.kind
    }

    /// Chooses a backend for a new flow from `src` to `dst`, given each
    /// backend's active flows. `None` if no backend can take flows.
    pub fn pick(
        &mut self,
        src: SocketAddr,
        dst: SocketAddr,
        active: impl Fn(usize) -> u64,
    ) -> Option<usize> {
        let n = self.weights.len();
        if n == 0 || self.weights.iter().all(|w| *w == 0) {
            return None;
        }
        match self.kind {
            Scheduler::RoundRobin => {
                for _ in 0..n {
                    let i = self.next % n;
                    self.next = self.next.wrapping_add(1);
                    if self.weights[i] > 0 {
                        return Some(i);
                    }
                }
                None
            }
            Scheduler::WeightedRoundRobin => {
                // Smooth weighted round-robin: every pick, each backend gains its
                // weight; the richest is chosen and pays the total.
                let total: i64 = self.weights.iter().map(|w| i64::from(*w)).sum();
                let mut best = 0;
                for i in 0..n {
                    self.current[i] += i64::from(self.weights[i]);
                    if self.current[i] > self.current[best] {
                        best = i;
                    }
                }
                self.current[best] -= total;
                Some(best)
            }
            Scheduler::LeastConnections => {
                // Fewest active flows per weight; ties rotate so equal backends share.
                let start = self.next % n;
                self.next = self.next.wrapping_add(1);
                let mut best: Option<usize> = None;
                for k in 0..n {
                    let i = (start + k) % n;
                    let w = u128::from(self.weights[i]);
                    if w == 0 {
                        continue;
                    }
                    best = match best {
                        Some(b)
                            if u128::from(active(b)) * w
                                <= u128::from(active(i)) * u128::from(self.weights[b]) =>
                        {
                            Some(b)
                        }
                        _ => Some(i),
                    };
                }
                best
            }
            Scheduler::SourceIp => self.consistent(hash_ip(src.ip())),
            Scheduler::Maglev => self.consistent(hash_flow(src, dst)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(n: usize) -> Vec<Vec<u8>> {
        (0..n).map(|i| format!("198.18.1.{i}:5432").into_bytes()).collect()
    }

    fn refs(v: &[Vec<u8>]) -> Vec<&[u8]> {
        v.iter().map(|x| x.as_slice()).collect()
    }

    #[test]
    fn table_size_is_a_prime_above_100_per_backend() {
        assert_eq!(next_prime(301), 307);
        let n = names(7);
        assert_eq!(Maglev::new(&refs(&n), &[1; 7]).size(), 65_537);
        let n = names(1000);
        assert_eq!(Maglev::new(&refs(&n), &[1; 1000]).size(), 100_003);
        assert_eq!(next_prime(65_537), 65_537);
    }

    #[test]
    fn hashes_are_pinned() {
        // A change here would silently move flows between instances running
        // different versions: keep these values.
        assert_eq!(hash64(b"switchyard", 0), PINNED);
        assert_ne!(hash64(b"a", 0), hash64(b"b", 0));
        assert_ne!(hash64(b"a", 0), hash64(b"a", 1));
    }

    const PINNED: u64 = 7_685_421_733_583_697_505;
}
