//! TCP bulk transfer on simulated hosts: an echo server, and a client whose
//! streams send seeded pseudo-random bytes and compare the SHA-256 of what they
//! sent with the SHA-256 of what came back, end to end through the load balancer.

use std::cell::RefCell;
use std::net::SocketAddr;
use std::rc::Rc;

use rand::{RngCore, SeedableRng};
use rand_chacha::ChaCha8Rng;
use sha2::{Digest, Sha256};
use smoltcp::iface::SocketHandle;
use smoltcp::socket::tcp::{self, State};
use smoltcp::wire::IpAddress;
use switchyard_nic::sim::SimWire;

use super::{Host, HostConfig, refill_listeners};
use crate::{Duration, Instant, Node};

const BUF: usize = 65536;
const SPARE_LISTENERS: usize = 8;

/// What an echo server counted.
#[derive(Clone, Debug, Default)]
pub struct EchoStats {
    /// Connections accepted.
    pub connections: u64,
    /// Bytes echoed.
    pub bytes: u64,
    /// Connections open now.
    pub active: u64,
}

/// A TCP echo server: every byte received is sent back; it closes after the
/// peer has closed and everything was echoed.
pub struct EchoServer {
    host: Host,
    port: u16,
    listening: Vec<SocketHandle>,
    conns: Vec<SocketHandle>,
    stats: Rc<RefCell<EchoStats>>,
}

impl EchoServer {
    /// An echo server on `host` port `port`.
    pub fn new(host: HostConfig, port: u16) -> (EchoServer, SimWire, Rc<RefCell<EchoStats>>) {
        let (host, wire) = Host::new(&host);
        let stats = Rc::new(RefCell::new(EchoStats::default()));
        let mut s = EchoServer {
            host,
            port,
            listening: Vec::new(),
            conns: Vec::new(),
            stats: stats.clone(),
        };
        let n = refill_listeners(
            &mut s.host,
            port,
            &mut s.listening,
            &mut s.conns,
            SPARE_LISTENERS,
            BUF,
        );
        s.stats.borrow_mut().connections += n;
        (s, wire, stats)
    }
}

impl Node for EchoServer {
    fn name(&self) -> &str {
        &self.host.name
    }

    fn poll(&mut self, now: Instant) {
        self.host.poll(now);
        let n = refill_listeners(
            &mut self.host,
            self.port,
            &mut self.listening,
            &mut self.conns,
            SPARE_LISTENERS,
            BUF,
        );
        self.stats.borrow_mut().connections += n;
        let mut buf = [0u8; 16384];
        let mut echoed = 0u64;
        self.conns.retain(|&h| {
            let sock = self.host.sockets.get_mut::<tcp::Socket>(h);
            loop {
                let room = (sock.send_capacity() - sock.send_queue()).min(buf.len());
                if room == 0 || !sock.can_recv() || !sock.may_send() {
                    break;
                }
                match sock.recv_slice(&mut buf[..room]) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => {
                        let sent = sock.send_slice(&buf[..n]).unwrap_or(0);
                        echoed += sent as u64;
                    }
                }
            }
            if !sock.may_recv()
                && sock.send_queue() == 0
                && sock.is_open()
                && sock.state() == State::CloseWait
            {
                sock.close();
            }
            if matches!(sock.state(), State::Closed | State::TimeWait) {
                self.host.sockets.remove(h);
                return false;
            }
            true
        });
        let mut st = self.stats.borrow_mut();
        st.bytes += echoed;
        st.active = self.conns.len() as u64;
        drop(st);
        self.host.poll(now);
    }

    fn poll_at(&self, now: Instant) -> Option<Instant> {
        self.host.poll_at(now)
    }
}

/// How a bulk client behaves.
#[derive(Clone, Debug)]
pub struct BulkConfig {
    /// The address to connect to.
    pub target: SocketAddr,
    /// Streams open at once.
    pub streams: usize,
    /// Bytes each stream sends (and expects back).
    pub bytes_per_stream: usize,
    /// Stop after this many streams (`None`: no limit).
    pub total_streams: Option<u64>,
    /// Start no stream after this time.
    pub until: Option<Instant>,
    /// Seed of the streams' contents.
    pub seed: u64,
    /// A stream that makes no progress for this long fails.
    pub timeout: Duration,
    /// First local port.
    pub start_port: u16,
    /// Start no work before this time (`None`: at once).
    pub start: Option<Instant>,
}

/// What a bulk client counted.
#[derive(Clone, Debug, Default)]
pub struct BulkStats {
    /// Streams opened.
    pub streams_started: u64,
    /// Streams whose echo matched byte for byte (same length and SHA-256).
    pub streams_ok: u64,
    /// Streams that were reset, refused, or came back different.
    pub streams_failed: u64,
    /// Bytes sent.
    pub bytes_sent: u64,
    /// Bytes received.
    pub bytes_received: u64,
    /// Streams that stalled past the timeout.
    pub timeouts: u64,
    /// No stream will be started any more and none is open.
    pub finished: bool,
}

impl BulkStats {
    /// True when the client has finished all it will do.
    pub fn done(&self) -> bool {
        self.finished
    }
}

struct Stream {
    handle: SocketHandle,
    rng: ChaCha8Rng,
    chunk: Vec<u8>,
    chunk_off: usize,
    sent: usize,
    received: usize,
    tx_hash: Sha256,
    rx_hash: Sha256,
    progress: Instant,
    verified: bool,
}

/// A client of TCP streams checked end to end by digest.
pub struct BulkClient {
    host: Host,
    cfg: BulkConfig,
    streams: Vec<Option<Stream>>,
    next_port: u16,
    started: u64,
    stats: Rc<RefCell<BulkStats>>,
}

impl BulkClient {
    /// A bulk client on `host`.
    pub fn new(host: HostConfig, cfg: BulkConfig) -> (BulkClient, SimWire, Rc<RefCell<BulkStats>>) {
        let (host, wire) = Host::new(&host);
        let stats = Rc::new(RefCell::new(BulkStats::default()));
        let c = BulkClient {
            host,
            streams: (0..cfg.streams.max(1)).map(|_| None).collect(),
            next_port: cfg.start_port.max(1024),
            started: 0,
            stats: stats.clone(),
            cfg,
        };
        (c, wire, stats)
    }

    fn may_start(&self, now: Instant) -> bool {
        self.cfg.total_streams.is_none_or(|t| self.started < t)
            && self.cfg.until.is_none_or(|u| now < u)
            && self.cfg.start.is_none_or(|t| now >= t)
    }
}

impl Node for BulkClient {
    fn name(&self) -> &str {
        &self.host.name
    }

    fn poll(&mut self, now: Instant) {
        self.host.poll(now);
        let mut buf = [0u8; 16384];
        for slot in 0..self.streams.len() {
            if self.streams[slot].is_none() {
                if !self.may_start(now) {
                    continue;
                }
                let port = self.next_port;
                self.next_port = if port >= 60000 { 10000 } else { port + 1 };
                let h = self.host.new_socket(BUF);
                let remote = (IpAddress::from(self.cfg.target.ip()), self.cfg.target.port());
                let cx = self.host.iface.context();
                if self.host.sockets.get_mut::<tcp::Socket>(h).connect(cx, remote, port).is_err() {
                    self.host.sockets.remove(h);
                    self.stats.borrow_mut().streams_failed += 1;
                    continue;
                }
                let rng = ChaCha8Rng::seed_from_u64(
                    self.cfg.seed ^ self.started.wrapping_mul(0x9e37_79b9_7f4a_7c15),
                );
                self.started += 1;
                self.stats.borrow_mut().streams_started += 1;
                self.streams[slot] = Some(Stream {
                    handle: h,
                    rng,
                    chunk: vec![0; 4096],
                    chunk_off: 4096,
                    sent: 0,
                    received: 0,
                    tx_hash: Sha256::new(),
                    rx_hash: Sha256::new(),
                    progress: now,
                    verified: false,
                });
            }
            let Some(s) = self.streams[slot].as_mut() else { continue };
            let total = self.cfg.bytes_per_stream;
            let sock = self.host.sockets.get_mut::<tcp::Socket>(s.handle);
            let mut st = self.stats.borrow_mut();
            // Send the next bytes of the stream.
            while s.sent < total && sock.can_send() {
                if s.chunk_off == s.chunk.len() {
                    s.rng.fill_bytes(&mut s.chunk);
                    s.chunk_off = 0;
                }
                let want = (s.chunk.len() - s.chunk_off).min(total - s.sent);
                let n = sock.send_slice(&s.chunk[s.chunk_off..s.chunk_off + want]).unwrap_or(0);
                if n == 0 {
                    break;
                }
                s.tx_hash.update(&s.chunk[s.chunk_off..s.chunk_off + n]);
                s.chunk_off += n;
                s.sent += n;
                st.bytes_sent += n as u64;
                s.progress = now;
                if s.sent == total {
                    sock.close();
                }
            }
            // Receive the echo.
            while sock.can_recv() {
                match sock.recv_slice(&mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => {
                        s.rx_hash.update(&buf[..n]);
                        s.received += n;
                        st.bytes_received += n as u64;
                        s.progress = now;
                    }
                }
            }
            let state = sock.state();
            let mut finished = false;
            if s.received >= total && s.sent == total && !s.verified {
                s.verified = true;
                let tx = std::mem::take(&mut s.tx_hash).finalize();
                let rx = std::mem::take(&mut s.rx_hash).finalize();
                if s.received == total && tx == rx {
                    st.streams_ok += 1;
                } else {
                    st.streams_failed += 1;
                }
            }
            if s.verified && matches!(state, State::TimeWait | State::Closed) {
                finished = true;
            } else if !s.verified && matches!(state, State::Closed | State::TimeWait) {
                st.streams_failed += 1;
                finished = true;
            } else if now >= s.progress + self.cfg.timeout {
                if !s.verified {
                    st.timeouts += 1;
                }
                sock.abort();
                finished = true;
            }
            drop(st);
            if finished {
                let h = s.handle;
                self.host.sockets.remove(h);
                self.streams[slot] = None;
            }
        }
        self.host.poll(now);
        let waiting = self.cfg.start.is_some_and(|t| now < t);
        let finished = !waiting && !self.may_start(now) && self.streams.iter().all(Option::is_none);
        self.stats.borrow_mut().finished = finished;
    }

    fn poll_at(&self, now: Instant) -> Option<Instant> {
        if let Some(start) = self.cfg.start
            && now < start
        {
            return Some(start);
        }
        if self.streams.iter().any(Option::is_none) && self.may_start(now) {
            return Some(now);
        }
        let mut t = self.host.poll_at(now);
        for s in self.streams.iter().flatten() {
            let d = s.progress + self.cfg.timeout;
            t = Some(t.map_or(d, |x| x.min(d)));
        }
        if let Some(u) = self.cfg.until
            && now < u
            && self.streams.iter().any(Option::is_none)
        {
            t = Some(t.map_or(u, |x| x.min(u)));
        }
        t
    }
}
