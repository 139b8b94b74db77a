//! The software dispatcher: several workers on a device with one queue
//! (TAP, AF_XDP on one queue, DPDK on one queue), where no kernel fanout or
//! hardware RSS splits the flows.
//!
//! A [`Dispatcher`] owns the device and a [`Steering`]; each worker gets a
//! [`WorkerPort`], a [`Port`] whose rings lead to and from the dispatcher.
//! A turn of the dispatcher receives a burst from the device and gives each
//! frame to the worker that [`Steering::worker_of`] names (ARP and neighbor
//! discovery to worker 0 and a copy to every other, as the AF_PACKET fanout
//! does, so each keeps its own neighbor table), then sends what the workers
//! queued. Between the dispatcher and each worker there are bounded
//! lock-free rings only: frames each way, and empty buffers each way. No
//! worker touches another's rings.
//!
//! Buffers move with the frames: a received frame's buffer comes from the
//! dispatcher's pool and ends in the worker's, a transmitted one the other
//! way round. Each side keeps its pool near the size it was made with by
//! handing surplus empties to the other over the recycling rings, in
//! batches, so no side runs dry and allocates in a steady state (pool misses
//! are counted on both sides).
//!
//! Idle, nobody spins: a worker with nothing to receive parks its thread
//! and the dispatcher unparks it when it queues a frame for it; the
//! dispatcher sleeps in `poll` on the device's descriptor
//! ([`Port::wait_fd`]) and an eventfd that a worker signals when it queues a
//! frame to send. A device without a descriptor (DPDK) is polled after
//! naps of [`NAP`].

use std::sync::atomic::{AtomicBool, Ordering, fence};
use std::sync::{Arc, OnceLock};
use std::thread::Thread;
use std::time::Duration;

use crossbeam_queue::ArrayQueue;

use crate::steer::{self, Steering};
use crate::sys::{self, EventFd};
use crate::{BURST, Mbuf, NicError, Pool, PoolStats, Port, PortStats};

/// Frames each way between the dispatcher and one worker.
pub const QUEUE: usize = 1024;
/// Buffers of the dispatcher's pool, besides a receive queue's worth per
/// worker.
pub const POOL_BUFFERS: usize = 8192;
/// How long an idle dispatcher naps on a device with no descriptor to sleep
/// on (DPDK), and between retries of frames the device refused.
pub const NAP: Duration = Duration::from_micros(100);
/// Room for empty buffers each way between the dispatcher and one worker.
const RECYCLE: usize = 512;
/// Empty buffers the dispatcher keeps ready for each worker.
const SPARES: usize = 256;
/// A pool this many buffers above its size hands the surplus on; this many
/// below, it takes spares (at most a quarter of the pool's size).
const SLACK: usize = 2 * BURST;
/// Turns in a row without progress after which frames the device keeps
/// refusing are dropped.
const RETRY_TURNS: u32 = 64;
/// Turns with nothing to do before the dispatcher sleeps.
const SPIN_TURNS: u32 = 4;
/// The longest sleep, so the stop flag is seen.
const MAX_SLEEP: Duration = Duration::from_millis(10);

/// What one worker and the dispatcher share.
struct Link {
    /// Received frames, dispatcher to worker.
    rx: ArrayQueue<Mbuf>,
    /// Frames to send, worker to dispatcher.
    tx: ArrayQueue<Mbuf>,
    /// Empty buffers for a worker that is short of them.
    spares: ArrayQueue<Mbuf>,
    /// Empty buffers the worker has too many of.
    surplus: ArrayQueue<Mbuf>,
    /// The worker is parked, or about to park, waiting for `rx`.
    sleeping: AtomicBool,
    /// The worker's thread, known from its first wait.
    thread: OnceLock<Thread>,
}

/// How workers wake a sleeping dispatcher.
struct Waker {
    /// The dispatcher is in, or about to enter, its `poll`.
    sleeping: AtomicBool,
    event: EventFd,
}

/// The dispatcher's counters; the vectors have one entry per worker.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct DispatchStats {
    /// Frames given to each worker (neighbor copies included).
    pub to_worker: Vec<u64>,
    /// Frames taken from each worker's transmit queue.
    pub from_worker: Vec<u64>,
    /// Frames dropped because a worker's receive queue was full.
    pub queue_full: Vec<u64>,
    /// Copies of ARP and neighbor discovery frames for workers other than 0.
    pub neighbor_copies: u64,
    /// Frames the device refused and that were kept to be sent again.
    pub tx_retries: u64,
    /// Frames dropped after the device refused them for `RETRY_TURNS` turns.
    pub tx_dropped: u64,
    /// Times the dispatcher slept for want of work.
    pub sleeps: u64,
    /// The dispatcher's buffer pool.
    pub pool: PoolStats,
    /// The device's own counters.
    pub device: PortStats,
}

/// Shares one device among workers; see the module documentation.
pub struct Dispatcher {
    device: Box<dyn Port + Send>,
    steering: Steering,
    links: Vec<Arc<Link>>,
    waker: Arc<Waker>,
    pool: Pool,
    /// A receive burst from the device.
    rx: Vec<Mbuf>,
    /// Frames taken from the workers and not yet accepted by the device.
    held: Vec<Mbuf>,
    /// Workers given frames this turn.
    fed: Vec<bool>,
    /// Turns in a row the device took nothing of `held`.
    stalled: u32,
    /// The worker whose transmit queue is read first this turn.
    first: usize,
    max_sleep: Duration,
    stats: DispatchStats,
}

/// A worker's port: its frames come from, and go to, the [`Dispatcher`].
pub struct WorkerPort {
    index: u16,
    link: Arc<Link>,
    waker: Arc<Waker>,
    steering: Steering,
    mac: [u8; 6],
    mode: Option<String>,
    stats: PortStats,
}

impl Dispatcher {
    /// A dispatcher for `device` and a port for each of `steering.workers`
    /// workers, with [`QUEUE`] frames each way per worker.
    pub fn new(
        device: Box<dyn Port + Send>,
        steering: Steering,
    ) -> Result<(Dispatcher, Vec<WorkerPort>), NicError> {
        Dispatcher::with_queues(device, steering, QUEUE)
    }

    /// As [`Dispatcher::new`], with `queue` frames each way per worker.
    pub fn with_queues(
        device: Box<dyn Port + Send>,
        steering: Steering,
        queue: usize,
    ) -> Result<(Dispatcher, Vec<WorkerPort>), NicError> {
        let event = EventFd::new().map_err(|e| NicError::Device {
            device: "software dispatch".into(),
            reason: format!("eventfd: {e}"),
        })?;
        let waker = Arc::new(Waker { sleeping: AtomicBool::new(false), event });
        let n = usize::from(steering.workers.max(1));
        let queue = queue.max(1);
        let links: Vec<Arc<Link>> = (0..n)
            .map(|_| {
                Arc::new(Link {
                    rx: ArrayQueue::new(queue),
                    tx: ArrayQueue::new(queue),
                    spares: ArrayQueue::new(RECYCLE),
                    surplus: ArrayQueue::new(RECYCLE),
                    sleeping: AtomicBool::new(false),
                    thread: OnceLock::new(),
                })
            })
            .collect();
        let (mac, mode) = (device.mac(), device.mode());
        let ports = links
            .iter()
            .enumerate()
            .map(|(i, link)| WorkerPort {
                index: i as u16,
                link: link.clone(),
                waker: waker.clone(),
                steering: steering.clone(),
                mac,
                mode: mode.clone(),
                stats: PortStats::default(),
            })
            .collect();
        let stats = DispatchStats {
            to_worker: vec![0; n],
            from_worker: vec![0; n],
            queue_full: vec![0; n],
            ..DispatchStats::default()
        };
        let d = Dispatcher {
            device,
            steering,
            links,
            waker,
            // Enough for every worker's receive queue full and the rest.
            pool: Pool::with_count(POOL_BUFFERS + queue * n),
            rx: Vec::with_capacity(BURST),
            held: Vec::with_capacity(BURST * n),
            fed: vec![false; n],
            stalled: 0,
            first: 0,
            max_sleep: MAX_SLEEP,
            stats,
        };
        Ok((d, ports))
    }

    /// Turns until `stop` is set, sleeping when there is nothing to do.
    pub fn run(&mut self, stop: &AtomicBool) {
        let mut idle = 0;
        while !stop.load(Ordering::Relaxed) {
            if self.turn() > 0 {
                idle = 0;
                continue;
            }
            idle += 1;
            if idle >= SPIN_TURNS {
                let t = if self.held.is_empty() { self.max_sleep } else { NAP };
                self.sleep(t);
            }
        }
    }

    /// One turn: a receive burst handed to the workers, what they queued to
    /// send handed to the device, and buffers rebalanced. Returns the number
    /// of frames moved (0: nothing to do).
    pub fn turn(&mut self) -> usize {
        let received = self.receive();
        let taken = self.transmit();
        for link in &self.links {
            refill(&mut self.pool, &link.spares, &link.surplus);
        }
        self.first = (self.first + 1) % self.links.len();
        received + taken
    }

    /// Receives a burst and gives each frame to its worker; wakes the
    /// workers that were given frames and sleep.
    fn receive(&mut self) -> usize {
        let n = self.device.rx_burst(&mut self.pool, &mut self.rx, BURST);
        let workers = self.links.len();
        for m in self.rx.drain(..) {
            let w = usize::from(self.steering.worker_of(m.data())) % workers;
            if w == 0 && workers > 1 && steer::is_neighbor(m.data()) {
                for i in 1..workers {
                    let mut copy = self.pool.alloc();
                    if !copy.fill(m.data()) {
                        self.pool.free(copy);
                        continue;
                    }
                    copy.set_rx_csum(m.rx_csum());
                    self.stats.neighbor_copies += 1;
                    give(&self.links[i], copy, i, &mut self.pool, &mut self.stats, &mut self.fed);
                }
            }
            give(&self.links[w], m, w, &mut self.pool, &mut self.stats, &mut self.fed);
        }
        if self.fed.iter().any(|f| *f) {
            // Pairs with the fence in `WorkerPort::wait`: either the worker
            // sees its frames before it parks, or we see it sleeping.
            fence(Ordering::SeqCst);
            for (link, fed) in self.links.iter().zip(self.fed.iter_mut()) {
                if std::mem::take(fed)
                    && link.sleeping.load(Ordering::Relaxed)
                    && link.sleeping.swap(false, Ordering::AcqRel)
                    && let Some(t) = link.thread.get()
                {
                    t.unpark();
                }
            }
        }
        n
    }

    /// Takes up to a burst from each worker's transmit queue (starting with
    /// a different worker each turn) and sends what is held. Frames the
    /// device refuses stay held, in order, for the next turn; after
    /// `RETRY_TURNS` turns without progress they are dropped.
    fn transmit(&mut self) -> usize {
        let before = self.held.len();
        let workers = self.links.len();
        let room = BURST * workers;
        for k in 0..workers {
            let i = (self.first + k) % workers;
            let mut taken = 0;
            while taken < BURST && self.held.len() < room {
                let Some(m) = self.links[i].tx.pop() else { break };
                self.held.push(m);
                taken += 1;
            }
            self.stats.from_worker[i] += taken as u64;
        }
        let taken = self.held.len() - before;
        if self.held.is_empty() {
            return 0;
        }
        let sent = self.device.tx_burst(&mut self.held, &mut self.pool);
        if self.held.is_empty() || sent > 0 {
            self.stalled = 0;
        } else {
            self.stalled += 1;
        }
        if !self.held.is_empty() {
            if self.stalled > RETRY_TURNS {
                self.stats.tx_dropped += self.held.len() as u64;
                for m in self.held.drain(..) {
                    self.pool.free(m);
                }
                self.stalled = 0;
            } else {
                self.stats.tx_retries += self.held.len() as u64;
            }
        }
        taken + sent
    }

    /// Sleeps until the device may have frames, a worker queued one to
    /// send, or `timeout` passes (at most [`NAP`] on a device without a
    /// descriptor).
    pub fn sleep(&mut self, timeout: Duration) {
        self.waker.sleeping.store(true, Ordering::SeqCst);
        // Pairs with the fence in `WorkerPort::tx_burst`.
        fence(Ordering::SeqCst);
        if self.links.iter().any(|l| !l.tx.is_empty()) {
            self.waker.sleeping.store(false, Ordering::Relaxed);
            return;
        }
        let ev = self.waker.event.fd();
        // A device whose receive buffers are all out (with the workers) is
        // not woken by the kernel until it has them back: a short nap.
        let timeout = if self.device.starved() { timeout.min(NAP) } else { timeout };
        let ready = match self.device.wait_fd() {
            Some(fd) => sys::wait_readable_for(&[fd, ev], timeout),
            None => sys::wait_readable_for(&[ev], timeout.min(NAP)),
        };
        self.waker.sleeping.store(false, Ordering::Relaxed);
        if ready {
            self.waker.event.clear();
        }
        self.stats.sleeps += 1;
    }

    /// The dispatcher's counters, with the device's and the pool's.
    pub fn stats(&self) -> DispatchStats {
        DispatchStats { pool: self.pool.stats(), device: self.device.stats(), ..self.stats.clone() }
    }

    /// The device's own counters as one line, where it keeps any (see
    /// [`Port::counters`]).
    pub fn device_counters(&self) -> Option<String> {
        self.device.counters()
    }
}

/// Queues `m` for worker `w`, or drops and counts it when the queue is full.
fn give(
    link: &Link,
    m: Mbuf,
    w: usize,
    pool: &mut Pool,
    stats: &mut DispatchStats,
    fed: &mut [bool],
) {
    match link.rx.push(m) {
        Ok(()) => {
            stats.to_worker[w] += 1;
            fed[w] = true;
        }
        Err(m) => {
            stats.queue_full[w] += 1;
            pool.free(m);
        }
    }
}

/// The dispatcher's side of a worker's recycling rings: keeps `spares` at
/// [`SPARES`] buffers while its own pool holds more than a quarter of its
/// size, and takes the worker's `surplus` back when its pool runs more than
/// [`SLACK`] below its size.
fn refill(pool: &mut Pool, spares: &ArrayQueue<Mbuf>, surplus: &ArrayQueue<Mbuf>) {
    let (size, free) = (pool.size(), pool.available());
    if free + SLACK.min(size / 4) < size {
        for _ in free..size {
            let Some(m) = surplus.pop() else { break };
            pool.free(m);
        }
    }
    let want = SPARES.saturating_sub(spares.len());
    for _ in 0..want {
        if pool.available() <= size / 4 {
            break;
        }
        let Some(m) = pool.take() else { break };
        if let Err(m) = spares.push(m) {
            pool.free(m);
            break;
        }
    }
}

/// A worker's side: keeps `pool` near its size. More than [`SLACK`]
/// buffers above it, the surplus goes to `give` (as much as fits); more than
/// that below, spares come from `take`. Moves happen in batches of at least
/// the slack, so a buffer crosses between pools rarely compared with the
/// frames.
fn balance(pool: &mut Pool, give: &ArrayQueue<Mbuf>, take: &ArrayQueue<Mbuf>) {
    let (size, free) = (pool.size(), pool.available());
    let slack = SLACK.min(size / 4).max(1);
    if free > size + slack {
        for _ in size..free {
            let Some(m) = pool.take() else { break };
            if let Err(m) = give.push(m) {
                pool.free(m);
                break;
            }
        }
    } else if free + slack < size {
        for _ in free..size {
            let Some(m) = take.pop() else { break };
            pool.free(m);
        }
    }
}

impl WorkerPort {
    /// The worker's index among the dispatcher's workers.
    pub fn index(&self) -> u16 {
        self.index
    }
}

impl Port for WorkerPort {
    fn rx_burst(&mut self, pool: &mut Pool, out: &mut Vec<Mbuf>, max: usize) -> usize {
        balance(pool, &self.link.surplus, &self.link.spares);
        let mut n = 0;
        while n < max {
            let Some(m) = self.link.rx.pop() else { break };
            // The rule the dispatcher applied, checked again on arrival:
            // neighbor frames come to every worker, all else to its owner.
            if self.steering.worker_of(m.data()) != self.index && !steer::is_neighbor(m.data()) {
                self.stats.rx_misdirected += 1;
            }
            self.stats.rx_frames += 1;
            self.stats.rx_bytes += m.len() as u64;
            out.push(m);
            n += 1;
        }
        n
    }

    /// Queues frames for the dispatcher to send; their buffers go with them
    /// (and come back through the recycling rings), not to `pool`. What does
    /// not fit stays in `pkts`.
    fn tx_burst(&mut self, pkts: &mut Vec<Mbuf>, pool: &mut Pool) -> usize {
        let q = &self.link.tx;
        // Only this worker pushes: the room can only grow meanwhile.
        let k = (q.capacity() - q.len()).min(pkts.len());
        let mut sent = 0;
        for m in pkts.drain(..k) {
            let len = m.len() as u64;
            match q.push(m) {
                Ok(()) => {
                    self.stats.tx_frames += 1;
                    self.stats.tx_bytes += len;
                    sent += 1;
                }
                Err(m) => {
                    self.stats.tx_full += 1;
                    pool.free(m);
                }
            }
        }
        self.stats.tx_full += pkts.len() as u64;
        if sent > 0 {
            // Pairs with the fence in `Dispatcher::sleep`.
            fence(Ordering::SeqCst);
            let w = &self.waker;
            if w.sleeping.load(Ordering::Relaxed) && w.sleeping.swap(false, Ordering::AcqRel) {
                w.event.signal();
            }
        }
        sent
    }

    fn mac(&self) -> [u8; 6] {
        self.mac
    }

    fn stats(&self) -> PortStats {
        self.stats
    }

    fn mode(&self) -> Option<String> {
        self.mode.clone()
    }

    /// Parks the thread until the dispatcher queues a frame for this worker
    /// or `timeout` passes. The first wait records the calling thread as the
    /// one to unpark: a worker port is waited on from one thread.
    fn wait(&mut self, timeout: Duration) {
        let link = &*self.link;
        if !link.rx.is_empty() {
            return;
        }
        link.thread.get_or_init(std::thread::current);
        link.sleeping.store(true, Ordering::SeqCst);
        // Pairs with the fence in `Dispatcher::receive`.
        fence(Ordering::SeqCst);
        if link.rx.is_empty() {
            std::thread::park_timeout(timeout);
        }
        link.sleeping.store(false, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sim;
    use std::os::fd::RawFd;
    use std::sync::atomic::AtomicU64;
    use std::time::Instant;

    const MAC: [u8; 6] = [2, 0, 0, 0, 0, 1];

    fn steering(workers: u16) -> Steering {
        Steering { workers, local_ports: vec![32768..40960, 40960..49152] }
    }

    /// An Ethernet, IPv4 and TCP frame from `src:sport` to port `dport`,
    /// numbered `seq` in its last four bytes, with `pad` bytes of payload.
    fn tcp(src: u32, sport: u16, dport: u16, seq: u32, pad: usize) -> Vec<u8> {
        let mut f = vec![0u8; 54];
        f[..6].copy_from_slice(&MAC);
        f[12..14].copy_from_slice(&[0x08, 0x00]);
        f[14] = 0x45;
        f[23] = 6;
        f[26..30].copy_from_slice(&src.to_be_bytes());
        f[30..34].copy_from_slice(&[198, 18, 0, 10]);
        f[34..36].copy_from_slice(&sport.to_be_bytes());
        f[36..38].copy_from_slice(&dport.to_be_bytes());
        f.extend((0..pad).map(|i| i as u8));
        f.extend_from_slice(&seq.to_be_bytes());
        f
    }

    /// An ARP request numbered `seq`.
    fn arp(seq: u32) -> Vec<u8> {
        let mut f = vec![0xffu8; 6];
        f.extend_from_slice(&[2, 0, 0, 0, 0, 9, 0x08, 0x06]);
        f.extend_from_slice(&[0u8; 28]);
        f.extend_from_slice(&seq.to_be_bytes());
        f
    }

    fn seq_of(f: &[u8]) -> u32 {
        u32::from_be_bytes(f[f.len() - 4..].try_into().unwrap())
    }

    fn rng(mut seed: u64) -> impl FnMut() -> u64 {
        move || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed
        }
    }

    /// A frame of a random flow: mostly clients towards a listener, some
    /// replies to a local port, some ARP.
    fn random_frame(r: u64, seq: u32) -> Vec<u8> {
        match r % 8 {
            0 => arp(seq),
            1 => tcp(0xc612_0015, 8080, 32768 + (r >> 8) as u16 % 16384, seq, 0),
            _ => tcp((r >> 16) as u32, 1024 + (r >> 48) as u16 % 60000, 80, seq, 0),
        }
    }

    #[test]
    fn every_frame_reaches_the_worker_that_owns_its_flow() {
        for workers in [2u16, 3, 4] {
            let s = steering(workers);
            let (dev, wire) = sim::pair(MAC, 8192);
            let (mut d, mut ports) = Dispatcher::new(Box::new(dev), s.clone()).unwrap();
            let n = usize::from(workers);
            let mut pools: Vec<Pool> = (0..n).map(|_| Pool::with_count(1024)).collect();
            let total = 6000u32;
            let mut owner = Vec::new();
            let mut seen: Vec<Vec<u16>> = vec![Vec::new(); total as usize];
            let mut rnd = rng(0x5eed + u64::from(workers));
            let mut burst = Vec::new();
            let mut drain = |d: &mut Dispatcher, ports: &mut [WorkerPort], pools: &mut [Pool]| {
                loop {
                    let moved = d.turn();
                    let mut got = 0;
                    for (i, p) in ports.iter_mut().enumerate() {
                        got += p.rx_burst(&mut pools[i], &mut burst, BURST);
                        for m in burst.drain(..) {
                            seen[seq_of(m.data()) as usize].push(i as u16);
                            pools[i].free(m);
                        }
                    }
                    if moved == 0 && got == 0 {
                        break;
                    }
                }
            };
            for seq in 0..total {
                let f = random_frame(rnd(), seq);
                owner.push(if steer::is_neighbor(&f) { None } else { Some(s.worker_of(&f)) });
                assert!(wire.deliver(f));
                if seq % 700 == 699 {
                    drain(&mut d, &mut ports, &mut pools);
                }
            }
            drain(&mut d, &mut ports, &mut pools);
            let mut per = vec![0u64; n];
            let mut arps = 0u64;
            for (seq, (want, got)) in owner.iter().zip(&seen).enumerate() {
                match want {
                    Some(w) => {
                        assert_eq!(got, &[*w], "frame {seq} with {workers} workers");
                        per[usize::from(*w)] += 1;
                    }
                    None => {
                        let all: Vec<u16> = (0..workers).collect();
                        assert_eq!(got, &all, "ARP frame {seq} reaches every worker once");
                        arps += 1;
                    }
                }
            }
            assert!(per.iter().all(|k| *k > 200), "every worker gets flows: {per:?}");
            let st = d.stats();
            assert_eq!(st.neighbor_copies, arps * u64::from(workers - 1));
            assert_eq!(st.to_worker.iter().sum::<u64>(), u64::from(total) + st.neighbor_copies);
            assert!(st.queue_full.iter().all(|k| *k == 0), "{st:?}");
            assert_eq!(st.device.rx_frames, u64::from(total));
            for p in &ports {
                assert_eq!(p.stats().rx_misdirected, 0);
            }
            assert_eq!(st.pool.misses, 0, "dispatcher pool: {st:?}");
            for p in &pools {
                assert_eq!(p.stats().misses, 0, "worker pool: {:?}", p.stats());
            }
        }
    }

    #[test]
    fn frames_from_every_worker_leave_byte_exact_and_in_order() {
        let workers = 3usize;
        let (dev, wire) = sim::pair(MAC, 8192);
        let (mut d, mut ports) = Dispatcher::new(Box::new(dev), steering(3)).unwrap();
        // Small pools that transmit far more than they hold: they live on
        // the buffers the dispatcher hands back.
        let mut pools: Vec<Pool> = (0..workers).map(|_| Pool::with_count(512)).collect();
        let per_worker = 5000u32;
        let mut rnd = rng(7);
        let mut next = vec![0u32; workers];
        let mut batch = Vec::new();
        let mut rx = Vec::new();
        let mut out: Vec<Vec<Vec<u8>>> = vec![Vec::new(); workers];
        let frame = |w: usize, seq: u32| tcp(w as u32, 1000, 80, seq, seq as usize % 700);
        while next.iter().any(|s| *s < per_worker)
            || out.iter().map(Vec::len).sum::<usize>() < 15000
        {
            for (w, p) in ports.iter_mut().enumerate() {
                p.rx_burst(&mut pools[w], &mut rx, BURST);
                let k = (rnd() % 48) as u32;
                while (batch.len() as u32) < k && next[w] < per_worker {
                    let mut m = pools[w].alloc();
                    assert!(m.fill(&frame(w, next[w])));
                    batch.push(m);
                    next[w] += 1;
                }
                p.tx_burst(&mut batch, &mut pools[w]);
                // What the queue could not take is retried next round.
                next[w] -= batch.len() as u32;
                for m in batch.drain(..) {
                    pools[w].free(m);
                }
            }
            d.turn();
            while let Some(f) = wire.take() {
                let w = u32::from_be_bytes(f[26..30].try_into().unwrap()) as usize;
                out[w].push(f);
            }
        }
        for (w, frames) in out.iter().enumerate() {
            assert_eq!(frames.len(), per_worker as usize);
            for (seq, f) in frames.iter().enumerate() {
                assert_eq!(f, &frame(w, seq as u32), "worker {w} frame {seq}");
            }
        }
        let st = d.stats();
        assert_eq!(st.from_worker, vec![u64::from(per_worker); workers]);
        assert_eq!((st.tx_retries, st.tx_dropped, st.pool.misses), (0, 0, 0), "{st:?}");
        for p in &pools {
            assert_eq!(p.stats().misses, 0, "worker pool: {:?}", p.stats());
        }
    }

    #[test]
    fn full_queues_are_counted_not_lost() {
        let s = steering(2);
        let (dev, wire) = sim::pair(MAC, 64);
        let (mut d, mut ports) = Dispatcher::with_queues(Box::new(dev), s.clone(), 16).unwrap();
        let mut pool = Pool::with_count(256);
        // 40 frames for worker 0, which does not read: 16 queued, 24 dropped.
        let mine: Vec<Vec<u8>> = (0..)
            .map(|p| tcp(0x0a00_0001, 2000 + p, 80, u32::from(p), 0))
            .filter(|f| s.worker_of(f) == 0)
            .take(40)
            .collect();
        for f in &mine {
            assert!(wire.deliver(f.clone()));
        }
        while d.turn() > 0 {}
        let st = d.stats();
        assert_eq!((st.to_worker[0], st.queue_full[0]), (16, 24), "{st:?}");
        let mut got = Vec::new();
        assert_eq!(ports[0].rx_burst(&mut pool, &mut got, 64), 16);
        let seqs: Vec<u32> = got.iter().map(|m| seq_of(m.data())).collect();
        assert_eq!(seqs, mine[..16].iter().map(|f| seq_of(f)).collect::<Vec<_>>());
        // A worker's full transmit queue keeps what it cannot take.
        let mut pkts: Vec<Mbuf> = (0..20)
            .map(|i| {
                let mut m = pool.alloc();
                m.fill(&tcp(1, 1, 80, i, 0));
                m
            })
            .collect();
        assert_eq!(ports[1].tx_burst(&mut pkts, &mut pool), 16);
        assert_eq!((pkts.len(), ports[1].stats().tx_full), (4, 4));
        // A device that stops taking frames (its ring of 64 full): what it
        // refuses is retried, then dropped and counted, never lost silently.
        let mut accepted = 16u64;
        for _ in 0..4 * RETRY_TURNS {
            accepted += ports[1].tx_burst(&mut pkts, &mut pool) as u64;
            d.turn();
            if pkts.is_empty() {
                pkts.extend((0..8).map(|i| {
                    let mut m = pool.alloc();
                    m.fill(&tcp(1, 1, 80, i, 0));
                    m
                }));
            }
        }
        let st = d.stats();
        assert_eq!(st.device.tx_frames, 64, "{st:?}");
        assert!(st.tx_retries > 0 && st.tx_dropped > 0, "{st:?}");
        let in_flight = (d.held.len() + d.links[1].tx.len()) as u64;
        assert_eq!(st.device.tx_frames + st.tx_dropped + in_flight, accepted, "{st:?}");
        assert_eq!(st.from_worker[1], st.device.tx_frames + st.tx_dropped + d.held.len() as u64);
        let mut n = 0;
        while wire.take().is_some() {
            n += 1;
        }
        assert_eq!(n, 64);
    }

    /// Workers on threads that take more or fewer buffers than they give:
    /// worker 0 sends back one frame of two (a sink), worker 1 sends each
    /// frame back and one fresh frame more (a source). They sleep when idle
    /// and are woken by frames. Every frame is accounted for, nothing is
    /// dropped, and no pool allocates.
    #[test]
    fn threads_in_a_steady_state_lose_nothing_and_allocate_nothing() {
        let s = steering(2);
        let (dev, wire) = sim::pair(MAC, 4096);
        let (mut d, ports) = Dispatcher::new(Box::new(dev), s).unwrap();
        let stop = AtomicBool::new(false);
        let received = [AtomicU64::new(0), AtomicU64::new(0)];
        let sent = [AtomicU64::new(0), AtomicU64::new(0)];
        let total = 100_000u64;
        let (st, workers, out) = std::thread::scope(|scope| {
            let disp = scope.spawn(|| {
                d.run(&stop);
                d.stats()
            });
            let mut workers = Vec::new();
            for mut p in ports {
                let (stop, received, sent) = (&stop, &received, &sent);
                workers.push(scope.spawn(move || {
                    let w = usize::from(p.index());
                    let mut pool = Pool::with_count(1024);
                    let (mut rx, mut tx) = (Vec::new(), Vec::new());
                    while !stop.load(Ordering::Relaxed) {
                        let n = p.rx_burst(&mut pool, &mut rx, BURST);
                        for m in rx.drain(..) {
                            if w == 1 {
                                let mut fresh = pool.alloc();
                                fresh.fill(m.data());
                                tx.push(fresh);
                                tx.push(m);
                            } else if seq_of(m.data()).is_multiple_of(2) {
                                tx.push(m);
                            } else {
                                pool.free(m);
                            }
                        }
                        while !tx.is_empty() {
                            let k = p.tx_burst(&mut tx, &mut pool);
                            sent[w].fetch_add(k as u64, Ordering::Relaxed);
                            if k == 0 {
                                std::thread::yield_now();
                            }
                        }
                        received[w].fetch_add(n as u64, Ordering::Relaxed);
                        if n == 0 {
                            p.wait(Duration::from_millis(5));
                        }
                    }
                    (pool.stats(), p.stats())
                }));
            }
            let mut rnd = rng(42);
            let (mut seq, mut out) = (0u64, 0u64);
            let start = Instant::now();
            let load =
                |a: &[AtomicU64; 2]| a[0].load(Ordering::Relaxed) + a[1].load(Ordering::Relaxed);
            while seq < total || load(&received) < total || out < load(&sent) {
                assert!(start.elapsed() < Duration::from_secs(60), "stuck at {seq} in, {out} out");
                // At most 512 frames ahead of the workers: queues never fill.
                let ahead = load(&received) + 512;
                while seq < total.min(ahead) {
                    // Odd: no ARP (see `random_frame`), so no copies.
                    if !wire.deliver(random_frame(rnd() | 1, seq as u32)) {
                        break;
                    }
                    seq += 1;
                }
                while wire.take().is_some() {
                    out += 1;
                }
                std::thread::yield_now();
            }
            stop.store(true, Ordering::Relaxed);
            let workers: Vec<(PoolStats, PortStats)> =
                workers.into_iter().map(|h| h.join().unwrap()).collect();
            (disp.join().unwrap(), workers, out)
        });
        assert_eq!(st.to_worker.iter().sum::<u64>(), total, "{st:?}");
        assert!(st.to_worker.iter().all(|k| *k > total / 4), "{st:?}");
        let r1 = received[1].load(Ordering::Relaxed);
        assert_eq!(sent[1].load(Ordering::Relaxed), 2 * r1);
        assert_eq!(st.device.tx_frames, out, "{st:?}");
        assert!(st.queue_full.iter().all(|k| *k == 0), "{st:?}");
        assert_eq!((st.tx_dropped, st.pool.misses), (0, 0), "{st:?}");
        for (pool, port) in &workers {
            assert_eq!(pool.misses, 0, "worker pool {pool:?}, dispatcher {st:?}");
            assert_eq!(port.rx_misdirected, 0);
        }
        eprintln!("dispatcher {st:?}\nworkers {workers:?}");
    }

    /// A device with a descriptor to sleep on: readable while frames wait.
    struct FdDevice {
        rx: Arc<ArrayQueue<Vec<u8>>>,
        tx: Arc<ArrayQueue<Vec<u8>>>,
        ready: Arc<EventFd>,
        stats: PortStats,
    }

    impl Port for FdDevice {
        fn rx_burst(&mut self, pool: &mut Pool, out: &mut Vec<Mbuf>, max: usize) -> usize {
            self.ready.clear();
            let mut n = 0;
            while n < max {
                let Some(f) = self.rx.pop() else { break };
                let mut m = pool.alloc();
                m.fill(&f);
                out.push(m);
                n += 1;
            }
            if !self.rx.is_empty() {
                self.ready.signal();
            }
            self.stats.rx_frames += n as u64;
            n
        }
        fn tx_burst(&mut self, pkts: &mut Vec<Mbuf>, pool: &mut Pool) -> usize {
            let n = pkts.len();
            for m in pkts.drain(..) {
                let _ = self.tx.push(m.data().to_vec());
                pool.free(m);
            }
            self.stats.tx_frames += n as u64;
            n
        }
        fn mac(&self) -> [u8; 6] {
            MAC
        }
        fn stats(&self) -> PortStats {
            self.stats
        }
        fn wait_fd(&self) -> Option<RawFd> {
            Some(self.ready.fd())
        }
    }

    /// Both sides sleep far longer than a frame takes to cross: the
    /// dispatcher in `poll` (2 s), the worker parked (2 s). A frame from the
    /// device wakes the dispatcher, which unparks the worker; the worker's
    /// answer wakes the dispatcher through the eventfd. Each round trip takes
    /// well under the sleeps.
    #[test]
    fn sleeping_sides_are_woken_by_frames_not_timeouts() {
        let (rx, tx) = (Arc::new(ArrayQueue::new(64)), Arc::new(ArrayQueue::new(64)));
        let ready = Arc::new(EventFd::new().unwrap());
        let dev = FdDevice {
            rx: rx.clone(),
            tx: tx.clone(),
            ready: ready.clone(),
            stats: PortStats::default(),
        };
        let (mut d, mut ports) = Dispatcher::new(Box::new(dev), steering(1)).unwrap();
        d.max_sleep = Duration::from_secs(2);
        let mut p = ports.pop().unwrap();
        let stop = AtomicBool::new(false);
        let st = std::thread::scope(|scope| {
            let disp = scope.spawn(|| {
                d.run(&stop);
                d.stats()
            });
            let worker = scope.spawn(|| {
                let mut pool = Pool::with_count(64);
                let mut burst = Vec::new();
                while !stop.load(Ordering::Relaxed) {
                    if p.rx_burst(&mut pool, &mut burst, BURST) == 0 {
                        p.wait(Duration::from_secs(2));
                    }
                    while !burst.is_empty() {
                        p.tx_burst(&mut burst, &mut pool);
                    }
                }
            });
            let mut worst = Duration::ZERO;
            for seq in 0..20 {
                // Both sides asleep by now.
                std::thread::sleep(Duration::from_millis(20));
                let t = Instant::now();
                rx.push(tcp(1, 1000, 80, seq, 0)).unwrap();
                ready.signal();
                let f = loop {
                    if let Some(f) = tx.pop() {
                        break f;
                    }
                    assert!(t.elapsed() < Duration::from_secs(5), "frame {seq} never came back");
                    std::thread::yield_now();
                };
                assert_eq!(seq_of(&f), seq);
                worst = worst.max(t.elapsed());
            }
            stop.store(true, Ordering::Relaxed);
            ready.signal();
            worker.thread().unpark();
            worker.join().unwrap();
            let st = disp.join().unwrap();
            assert!(worst < Duration::from_millis(500), "slowest round trip {worst:?}");
            eprintln!("slowest round trip {worst:?}");
            st
        });
        assert!(st.sleeps >= 20, "the dispatcher slept between frames: {st:?}");
    }
}
