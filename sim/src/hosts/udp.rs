//! UDP (RFC 768) on simulated hosts: an echo server, and a request/response
//! client that numbers its datagrams, fills them from a seeded generator and
//! checks every echo byte for byte.

use std::cell::RefCell;
use std::net::SocketAddr;
use std::rc::Rc;

use rand::{RngCore, SeedableRng};
use rand_chacha::ChaCha8Rng;
use smoltcp::iface::SocketHandle;
use smoltcp::socket::udp;
use smoltcp::wire::IpAddress;
use switchyard_nic::sim::SimWire;

use super::{Host, HostConfig};
use crate::{Duration, Instant, Node};

fn udp_socket(host: &mut Host) -> SocketHandle {
    let rx = udp::PacketBuffer::new(vec![udp::PacketMetadata::EMPTY; 64], vec![0; 64 * 1024]);
    let tx = udp::PacketBuffer::new(vec![udp::PacketMetadata::EMPTY; 64], vec![0; 64 * 1024]);
    host.sockets.add(udp::Socket::new(rx, tx))
}

/// What a UDP echo server counted.
#[derive(Clone, Debug, Default)]
pub struct UdpEchoStats {
    /// Datagrams echoed.
    pub datagrams: u64,
    /// Bytes echoed.
    pub bytes: u64,
}

/// Echoes every datagram to its sender.
pub struct UdpEchoServer {
    host: Host,
    socket: SocketHandle,
    stats: Rc<RefCell<UdpEchoStats>>,
}

impl UdpEchoServer {
    /// An echo server on `host` port `port`.
    pub fn new(host: HostConfig, port: u16) -> (UdpEchoServer, SimWire, Rc<RefCell<UdpEchoStats>>) {
        let (mut host, wire) = Host::new(&host);
        let socket = udp_socket(&mut host);
        let _ = host.sockets.get_mut::<udp::Socket>(socket).bind(port);
        let stats = Rc::new(RefCell::new(UdpEchoStats::default()));
        (UdpEchoServer { host, socket, stats: stats.clone() }, wire, stats)
    }
}

impl Node for UdpEchoServer {
    fn name(&self) -> &str {
        &self.host.name
    }

    fn poll(&mut self, now: Instant) {
        self.host.poll(now);
        let mut buf = [0u8; 2048];
        let s = self.host.sockets.get_mut::<udp::Socket>(self.socket);
        while s.can_recv() && s.can_send() {
            let Ok((n, meta)) = s.recv_slice(&mut buf) else { break };
            if s.send_slice(&buf[..n], meta.endpoint).is_ok() {
                let mut st = self.stats.borrow_mut();
                st.datagrams += 1;
                st.bytes += n as u64;
            }
        }
        self.host.poll(now);
    }

    fn poll_at(&self, now: Instant) -> Option<Instant> {
        self.host.poll_at(now)
    }
}

/// How a UDP client behaves.
#[derive(Clone, Debug)]
pub struct UdpClientConfig {
    /// The address to send to.
    pub target: SocketAddr,
    /// Requests in flight at once (each from its own local port: its own flow).
    pub flows: usize,
    /// Requests to send in all.
    pub total: u64,
    /// Bytes per request (at least 8).
    pub size: usize,
    /// A request unanswered for this long is lost.
    pub timeout: Duration,
    /// Seed of the payloads.
    pub seed: u64,
    /// First local port.
    pub start_port: u16,
    /// Start no request before this time.
    pub start: Option<Instant>,
}

/// What a UDP client counted.
#[derive(Clone, Debug, Default)]
pub struct UdpClientStats {
    /// Requests sent.
    pub sent: u64,
    /// Echoes that matched their request byte for byte.
    pub ok: u64,
    /// Echoes that differed.
    pub bad: u64,
    /// Requests never answered.
    pub lost: u64,
    /// Everything sent has been answered or given up on.
    pub finished: bool,
}

impl UdpClientStats {
    /// True when the client has finished.
    pub fn done(&self) -> bool {
        self.finished
    }
}

struct Flow {
    socket: SocketHandle,
    want: Vec<u8>,
    sent_at: Option<Instant>,
}

/// A UDP request/response client: one socket (flow) per slot, one request
/// outstanding per flow.
pub struct UdpClient {
    host: Host,
    cfg: UdpClientConfig,
    flows: Vec<Flow>,
    rng: ChaCha8Rng,
    seq: u64,
    stats: Rc<RefCell<UdpClientStats>>,
}

impl UdpClient {
    /// A client on `host`.
    pub fn new(
        host: HostConfig,
        cfg: UdpClientConfig,
    ) -> (UdpClient, SimWire, Rc<RefCell<UdpClientStats>>) {
        let (mut host, wire) = Host::new(&host);
        let flows = (0..cfg.flows.max(1))
            .map(|k| {
                let socket = udp_socket(&mut host);
                let _ = host
                    .sockets
                    .get_mut::<udp::Socket>(socket)
                    .bind(cfg.start_port.wrapping_add(k as u16));
                Flow { socket, want: Vec::new(), sent_at: None }
            })
            .collect();
        let stats = Rc::new(RefCell::new(UdpClientStats::default()));
        let c = UdpClient {
            host,
            rng: ChaCha8Rng::seed_from_u64(cfg.seed),
            cfg,
            flows,
            seq: 0,
            stats: stats.clone(),
        };
        (c, wire, stats)
    }
}

impl Node for UdpClient {
    fn name(&self) -> &str {
        &self.host.name
    }

    fn poll(&mut self, now: Instant) {
        self.host.poll(now);
        let started = self.cfg.start.is_none_or(|t| now >= t);
        let mut buf = [0u8; 2048];
        let target = (IpAddress::from(self.cfg.target.ip()), self.cfg.target.port());
        let mut st = self.stats.borrow_mut();
        for f in &mut self.flows {
            let s = self.host.sockets.get_mut::<udp::Socket>(f.socket);
            while let Ok((n, _)) = s.recv_slice(&mut buf) {
                if f.sent_at.is_some() && buf[..n] == f.want[..] {
                    st.ok += 1;
                } else {
                    st.bad += 1;
                }
                f.sent_at = None;
            }
            if let Some(t) = f.sent_at
                && now >= t + self.cfg.timeout
            {
                st.lost += 1;
                f.sent_at = None;
            }
            if f.sent_at.is_none() && started && self.seq < self.cfg.total && s.can_send() {
                f.want.clear();
                f.want.extend_from_slice(&self.seq.to_be_bytes());
                f.want.resize(self.cfg.size.max(8), 0);
                self.rng.fill_bytes(&mut f.want[8..]);
                if s.send_slice(&f.want, target).is_ok() {
                    self.seq += 1;
                    st.sent += 1;
                    f.sent_at = Some(now);
                }
            }
        }
        st.finished = self.seq >= self.cfg.total && self.flows.iter().all(|f| f.sent_at.is_none());
        drop(st);
        self.host.poll(now);
    }

    fn poll_at(&self, now: Instant) -> Option<Instant> {
        if let Some(start) = self.cfg.start
            && now < start
        {
            return Some(start);
        }
        let mut t = self.host.poll_at(now);
        for f in &self.flows {
            if let Some(s) = f.sent_at {
                let d = s + self.cfg.timeout;
                t = Some(t.map_or(d, |x| x.min(d)));
            }
        }
        t
    }
}
