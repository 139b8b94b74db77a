//! A deterministic in-process network for tests and the demo: a virtual clock,
//! links with latency, loss, duplication and reordering drawn from one seeded RNG,
//! an L2 learning switch (IEEE 802.1D forwarding without spanning tree), pcap taps,
//! and small smoltcp hosts (HTTP client and origin, bulk client, echo server).
//! The same seed replays the same run, frame for frame.
#![forbid(unsafe_code)]

pub mod hosts;

use std::cmp::Ordering;
use std::collections::{BinaryHeap, HashMap};
use std::fs::File;
use std::io::BufWriter;
use std::path::Path;

use pcap_file::pcap::{PcapPacket, PcapWriter};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
pub use smoltcp::time::{Duration, Instant};
use switchyard_nic::sim::SimWire;

/// A participant of the network, polled by the event loop.
pub trait Node {
    /// The name it was attached under.
    fn name(&self) -> &str;
    /// Does everything due at `now`: read frames, run timers, send frames.
    fn poll(&mut self, now: Instant);
    /// When the node next has work without new frames (`None`: only on frames).
    fn poll_at(&self, now: Instant) -> Option<Instant>;
}

/// Impairments of one link, applied to each frame in each direction.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct LinkConfig {
    /// One-way delay.
    pub latency: Duration,
    /// Probability that a frame is lost.
    pub loss: f64,
    /// Probability that a frame is delivered twice.
    pub duplicate: f64,
    /// Probability that a frame is held back by `reorder_delay`, letting later
    /// frames overtake it.
    pub reorder: f64,
    /// Extra delay of a reordered frame.
    pub reorder_delay: Duration,
}

impl LinkConfig {
    /// A clean link with 10 µs of latency.
    pub fn ideal() -> LinkConfig {
        LinkConfig {
            latency: Duration::from_micros(10),
            loss: 0.0,
            duplicate: 0.0,
            reorder: 0.0,
            reorder_delay: Duration::from_micros(0),
        }
    }

    /// A link with 100 µs of latency that loses and reorders frames.
    pub fn lossy(loss: f64, reorder: f64) -> LinkConfig {
        LinkConfig {
            latency: Duration::from_micros(100),
            loss,
            duplicate: 0.0,
            reorder,
            reorder_delay: Duration::from_micros(300),
        }
    }
}

/// A link of the network.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct LinkId(pub usize);

/// What crossed a link, both directions together.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct LinkStats {
    /// Frames offered to the link.
    pub frames: u64,
    /// Bytes offered to the link.
    pub bytes: u64,
    /// Frames lost.
    pub lost: u64,
    /// Frames delivered twice.
    pub duplicated: u64,
    /// Frames held back.
    pub reordered: u64,
    /// Frames dropped because the receiving port's ring was full.
    pub ring_full: u64,
    /// Frames dropped while the link was down.
    pub down: u64,
}

struct Link {
    up: bool,
    wire: SimWire,
    cfg: LinkConfig,
    stats: LinkStats,
    node: Option<usize>,
    tap: Option<PcapWriter<BufWriter<File>>>,
}

enum Hop {
    /// From a host into the switch.
    ToSwitch,
    /// From the switch out to the host.
    ToHost,
}

struct Event {
    at: Instant,
    seq: u64,
    link: usize,
    hop: Hop,
    frame: Vec<u8>,
}

impl PartialEq for Event {
    fn eq(&self, o: &Self) -> bool {
        self.at == o.at && self.seq == o.seq
    }
}
impl Eq for Event {}
impl PartialOrd for Event {
    fn partial_cmp(&self, o: &Self) -> Option<Ordering> {
        Some(self.cmp(o))
    }
}
impl Ord for Event {
    // Reversed: BinaryHeap pops the earliest event, ties in send order.
    fn cmp(&self, o: &Self) -> Ordering {
        o.at.cmp(&self.at).then(o.seq.cmp(&self.seq))
    }
}

/// Polls of one node at one instant before the clock is forced forward (a node
/// that keeps asking for `now` would otherwise stop time).
const MAX_POLLS_PER_INSTANT: u32 = 64;

/// The simulated network.
pub struct Network {
    seed: u64,
    rng: ChaCha8Rng,
    now: Instant,
    nodes: Vec<Box<dyn Node>>,
    wake: Vec<bool>,
    links: Vec<Link>,
    macs: HashMap<[u8; 6], usize>,
    events: BinaryHeap<Event>,
    seq: u64,
}

impl Network {
    /// An empty network whose every random choice comes from `seed`.
    pub fn new(seed: u64) -> Network {
        Network {
            seed,
            rng: ChaCha8Rng::seed_from_u64(seed),
            now: Instant::from_millis(0),
            nodes: Vec::new(),
            wake: Vec::new(),
            links: Vec::new(),
            macs: HashMap::new(),
            events: BinaryHeap::new(),
            seq: 0,
        }
    }

    /// The seed this network was built with.
    pub fn seed(&self) -> u64 {
        self.seed
    }

    /// The virtual time.
    pub fn now(&self) -> Instant {
        self.now
    }

    /// Adds a node; attach its port with [`Network::attach`] under the same name.
    pub fn add_node(&mut self, node: Box<dyn Node>) {
        self.nodes.push(node);
        self.wake.push(true);
    }

    /// Plugs a port's wire into the switch through a link with `cfg`. Frames
    /// arriving on it wake the node of the same name.
    pub fn attach(&mut self, name: &str, wire: SimWire, cfg: LinkConfig) -> LinkId {
        let node = self.nodes.iter().position(|n| n.name() == name);
        self.links.push(Link { up: true, wire, cfg, stats: LinkStats::default(), node, tap: None });
        LinkId(self.links.len() - 1)
    }

    /// Records every frame crossing `link`, both directions, to a pcap file
    /// (Ethernet link type, virtual timestamps).
    pub fn tap(&mut self, link: LinkId, path: &Path) -> std::io::Result<()> {
        let l = self
            .links
            .get_mut(link.0)
            .ok_or_else(|| std::io::Error::new(std::io::ErrorKind::NotFound, "no such link"))?;
        let w =
            PcapWriter::new(BufWriter::new(File::create(path)?)).map_err(std::io::Error::other)?;
        l.tap = Some(w);
        Ok(())
    }

    /// Flushes the pcap taps to their files.
    pub fn flush_taps(&mut self) {
        for l in &mut self.links {
            if let Some(w) = l.tap.take() {
                let _ = w.into_writer().into_inner();
            }
        }
    }

    /// Cuts a link (every frame on it is dropped, both ways) or restores it:
    /// a host that crashed, or a cable pulled.
    pub fn set_link_up(&mut self, link: LinkId, up: bool) {
        if let Some(l) = self.links.get_mut(link.0) {
            l.up = up;
        }
    }

    /// What crossed a link so far.
    pub fn link_stats(&self, link: LinkId) -> LinkStats {
        self.links.get(link.0).map(|l| l.stats).unwrap_or_default()
    }

    /// Runs the network until virtual time `t`.
    pub fn run_until(&mut self, t: Instant) {
        self.run_while_until(t, |_| true);
    }

    /// Runs while `cond` holds, until virtual time `t`. Returns true if `cond`
    /// became false.
    pub fn run_while_until(&mut self, t: Instant, mut cond: impl FnMut(&Network) -> bool) -> bool {
        let mut polls_now = 0u32;
        loop {
            if !cond(self) {
                return true;
            }
            let now = self.now;
            for i in 0..self.nodes.len() {
                let due = self.nodes[i].poll_at(now).is_some_and(|d| d <= now);
                if self.wake[i] || due {
                    self.wake[i] = false;
                    self.nodes[i].poll(now);
                }
            }
            for i in 0..self.links.len() {
                while let Some(f) = self.links[i].wire.take() {
                    self.record(i, &f);
                    self.send(i, Hop::ToSwitch, f);
                }
            }
            while self.events.peek().is_some_and(|e| e.at <= now) {
                if let Some(ev) = self.events.pop() {
                    self.arrive(ev);
                }
            }
            // More to do at this instant? Bounded, so a node cannot stop time.
            let pending =
                self.wake.iter().any(|w| *w) || self.links.iter().any(|l| l.wire.has_tx());
            let mut next = self.events.peek().map(|e| e.at);
            for n in &self.nodes {
                if let Some(d) = n.poll_at(now) {
                    next = Some(next.map_or(d, |x| x.min(d)));
                }
            }
            let again = pending || next.is_some_and(|d| d <= now);
            if again && polls_now < MAX_POLLS_PER_INSTANT {
                polls_now += 1;
                continue;
            }
            let next = match next {
                _ if again => now + Duration::from_micros(1),
                Some(d) => d,
                None => t.max(now) + Duration::from_micros(1),
            };
            if next > t {
                self.now = t.max(now);
                return false;
            }
            self.now = next;
            polls_now = 0;
        }
    }

    fn record(&mut self, link: usize, frame: &[u8]) {
        let ts = std::time::Duration::from_micros(self.now.total_micros().max(0) as u64);
        if let Some(w) = self.links[link].tap.as_mut() {
            let _ = w.write_packet(&PcapPacket::new(ts, frame.len() as u32, frame));
        }
    }

    /// Puts a frame on a link in one direction, with the link's impairments.
    fn send(&mut self, link: usize, hop: Hop, frame: Vec<u8>) {
        let cfg = self.links[link].cfg;
        let up = self.links[link].up;
        let st = &mut self.links[link].stats;
        st.frames += 1;
        st.bytes += frame.len() as u64;
        if !up {
            st.down += 1;
            return;
        }
        if cfg.loss > 0.0 && self.rng.random_bool(cfg.loss) {
            st.lost += 1;
            return;
        }
        let mut at = self.now + cfg.latency;
        if cfg.reorder > 0.0 && self.rng.random_bool(cfg.reorder) {
            st.reordered += 1;
            at += cfg.reorder_delay;
        }
        if cfg.duplicate > 0.0 && self.rng.random_bool(cfg.duplicate) {
            st.duplicated += 1;
            self.push(Event {
                at: at + Duration::from_micros(1),
                seq: 0,
                link,
                hop: clone_hop(&hop),
                frame: frame.clone(),
            });
        }
        self.push(Event { at, seq: 0, link, hop, frame });
    }

    fn push(&mut self, mut ev: Event) {
        self.seq += 1;
        ev.seq = self.seq;
        self.events.push(ev);
    }

    fn arrive(&mut self, ev: Event) {
        match ev.hop {
            Hop::ToSwitch => {
                if ev.frame.len() < 14 {
                    return;
                }
                let mut src = [0u8; 6];
                src.copy_from_slice(&ev.frame[6..12]);
                let mut dst = [0u8; 6];
                dst.copy_from_slice(&ev.frame[0..6]);
                if src[0] & 1 == 0 {
                    self.macs.insert(src, ev.link);
                }
                match self.macs.get(&dst) {
                    Some(&out) if dst[0] & 1 == 0 => {
                        if out != ev.link {
                            self.send(out, Hop::ToHost, ev.frame);
                        }
                    }
                    _ => {
                        // Broadcast, multicast or unknown: flood to every other port.
                        for out in 0..self.links.len() {
                            if out != ev.link {
                                self.send(out, Hop::ToHost, ev.frame.clone());
                            }
                        }
                    }
                }
            }
            Hop::ToHost => {
                self.record(ev.link, &ev.frame);
                let l = &mut self.links[ev.link];
                if !l.wire.deliver(ev.frame) {
                    l.stats.ring_full += 1;
                }
                match l.node {
                    Some(n) => self.wake[n] = true,
                    None => self.wake.iter_mut().for_each(|w| *w = true),
                }
            }
        }
    }
}

fn clone_hop(h: &Hop) -> Hop {
    match h {
        Hop::ToSwitch => Hop::ToSwitch,
        Hop::ToHost => Hop::ToHost,
    }
}

/// The seed for a simulation: the `SIM_SEED` environment variable if it is set
/// to a number, else `default`.
pub fn seed_from_env(default: u64) -> u64 {
    std::env::var("SIM_SEED").ok().and_then(|s| s.trim().parse().ok()).unwrap_or(default)
}
