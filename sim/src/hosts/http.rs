//! HTTP/1.1 (RFC 9112) on simulated hosts: an origin that answers every GET with
//! a body derived from its path and names itself in `X-Backend`, and a client that
//! keeps connections alive, checks every body byte for byte, and counts who answered.
//! The client is generic over the protocol of its connections ([`Session`]):
//! HTTP/1.1 here, HTTP/2 in `h2c.rs`.

use std::cell::RefCell;
use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::rc::Rc;

use smoltcp::iface::SocketHandle;
use smoltcp::socket::tcp::{self, State};
use smoltcp::wire::IpAddress;
use switchyard_nic::sim::SimWire;

use super::{Host, HostConfig, refill_listeners};
use crate::{Duration, Instant, Node};

/// The body an origin sends for `path`: `size` bytes of a pattern seeded by the
/// path, so a client can verify it and tell two paths' bodies apart.
pub fn body_bytes(path: &str, size: usize) -> Vec<u8> {
    let mut h: u32 = 2166136261;
    for b in path.bytes() {
        h = (h ^ u32::from(b)).wrapping_mul(16777619);
    }
    (0..size)
        .map(|i| {
            h ^= h << 13;
            h ^= h >> 17;
            h ^= h << 5;
            // Printable, so captures stay readable.
            b'a' + ((h.wrapping_add(i as u32)) % 26) as u8
        })
        .collect()
}

/// What an origin counted, and one switch a test may set.
#[derive(Clone, Debug, Default)]
pub struct ServerStats {
    /// Set by a test: the server process is gone. Its connections are reset
    /// and new ones refused (RST), as the kernel does for a dead process;
    /// cleared, it listens again.
    pub killed: bool,
    /// Connections accepted.
    pub connections: u64,
    /// Requests answered with 200.
    pub requests: u64,
    /// Response bytes queued.
    pub bytes_out: u64,
    /// Requests that could not be parsed (answered 400).
    pub errors: u64,
}

struct ServerConn {
    handle: SocketHandle,
    inbuf: Vec<u8>,
    out: Vec<u8>,
    sent: usize,
    close_after: bool,
}

/// An HTTP/1.1 origin server.
pub struct HttpServer {
    host: Host,
    port: u16,
    body_size: usize,
    listening: Vec<SocketHandle>,
    conns: Vec<ServerConn>,
    bodies: HashMap<String, Vec<u8>>,
    stats: Rc<RefCell<ServerStats>>,
    scratch: Vec<SocketHandle>,
    size: OriginSize,
}

/// How much an origin holds: socket buffers and spare listening sockets.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct OriginSize {
    /// Receive and send buffer of each socket, in bytes.
    pub socket_buffer: usize,
    /// Listening sockets kept ready (smoltcp has no backlog: this many SYNs
    /// between two polls are accepted, more are refused).
    pub spare_listeners: usize,
}

impl Default for OriginSize {
    fn default() -> Self {
        OriginSize { socket_buffer: 65536, spare_listeners: 256 }
    }
}

impl HttpServer {
    /// An origin on `host` port `port` whose bodies are `body_size` bytes.
    pub fn new(
        host: HostConfig,
        port: u16,
        body_size: usize,
    ) -> (HttpServer, SimWire, Rc<RefCell<ServerStats>>) {
        HttpServer::sized(host, port, body_size, OriginSize::default())
    }

    /// An origin as [`HttpServer::new`], with its buffers and backlog given.
    pub fn sized(
        host: HostConfig,
        port: u16,
        body_size: usize,
        size: OriginSize,
    ) -> (HttpServer, SimWire, Rc<RefCell<ServerStats>>) {
        let (host, wire) = Host::new(&host);
        let stats = Rc::new(RefCell::new(ServerStats::default()));
        let mut s = HttpServer {
            host,
            port,
            body_size,
            listening: Vec::new(),
            conns: Vec::new(),
            bodies: HashMap::new(),
            stats: stats.clone(),
            scratch: Vec::new(),
            size: OriginSize {
                socket_buffer: size.socket_buffer.max(1024),
                spare_listeners: size.spare_listeners.max(1),
            },
        };
        s.refill();
        (s, wire, stats)
    }

    fn refill(&mut self) {
        let mut new = std::mem::take(&mut self.scratch);
        let n = refill_listeners(
            &mut self.host,
            self.port,
            &mut self.listening,
            &mut new,
            self.size.spare_listeners,
            self.size.socket_buffer,
        );
        self.stats.borrow_mut().connections += n;
        for handle in new.drain(..) {
            self.conns.push(ServerConn {
                handle,
                inbuf: Vec::new(),
                out: Vec::new(),
                sent: 0,
                close_after: false,
            });
        }
        self.scratch = new;
    }

    /// Parses complete requests in `c.inbuf` and queues their responses.
    fn answer(&mut self, i: usize) {
        loop {
            let c = &mut self.conns[i];
            let mut headers = [httparse::EMPTY_HEADER; 32];
            let mut req = httparse::Request::new(&mut headers);
            let (head_len, path, body_len, close) = match req.parse(&c.inbuf) {
                Ok(httparse::Status::Complete(n)) => {
                    let mut body = 0usize;
                    let mut close = req.version == Some(0);
                    for h in req.headers.iter() {
                        if h.name.eq_ignore_ascii_case("content-length") {
                            body = std::str::from_utf8(h.value)
                                .ok()
                                .and_then(|v| v.trim().parse().ok())
                                .unwrap_or(0);
                        }
                        if h.name.eq_ignore_ascii_case("connection") {
                            close = h.value.eq_ignore_ascii_case(b"close");
                        }
                    }
                    (n, req.path.unwrap_or("/").to_string(), body, close)
                }
                Ok(httparse::Status::Partial) => return,
                Err(_) => {
                    c.out.extend_from_slice(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\nConnection: close\r\n\r\n");
                    c.inbuf.clear();
                    c.close_after = true;
                    self.stats.borrow_mut().errors += 1;
                    return;
                }
            };
            if c.inbuf.len() < head_len + body_len {
                return;
            }
            c.inbuf.drain(..head_len + body_len);
            let size = self.body_size;
            let body = self.bodies.entry(path.clone()).or_insert_with(|| body_bytes(&path, size));
            let head = format!(
                "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nContent-Type: application/octet-stream\r\nX-Backend: {}\r\n{}\r\n",
                body.len(),
                self.host.name,
                if close { "Connection: close\r\n" } else { "" }
            );
            let c = &mut self.conns[i];
            c.out.extend_from_slice(head.as_bytes());
            c.out.extend_from_slice(body);
            c.close_after |= close;
            let mut st = self.stats.borrow_mut();
            st.requests += 1;
            st.bytes_out += (head.len() + body.len()) as u64;
            if close {
                return;
            }
        }
    }
}

impl Node for HttpServer {
    fn name(&self) -> &str {
        &self.host.name
    }

    fn poll(&mut self, now: Instant) {
        self.host.poll(now);
        if self.stats.borrow().killed {
            let gone: Vec<SocketHandle> =
                self.listening.drain(..).chain(self.conns.drain(..).map(|c| c.handle)).collect();
            for &h in &gone {
                self.host.sockets.get_mut::<tcp::Socket>(h).abort();
            }
            self.host.poll(now); // the resets go out
            for h in gone {
                self.host.sockets.remove(h);
            }
            return;
        }
        self.refill();
        let mut buf = [0u8; 8192];
        let mut i = 0;
        while i < self.conns.len() {
            let h = self.conns[i].handle;
            while self.host.socket(h).can_recv() {
                match self.host.socket(h).recv_slice(&mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => self.conns[i].inbuf.extend_from_slice(&buf[..n]),
                }
            }
            if !self.conns[i].inbuf.is_empty() && !self.conns[i].close_after {
                self.answer(i);
            }
            let c = &mut self.conns[i];
            let sock = self.host.sockets.get_mut::<tcp::Socket>(h);
            if c.sent < c.out.len() && sock.can_send() {
                if let Ok(n) = sock.send_slice(&c.out[c.sent..]) {
                    c.sent += n;
                }
                if c.sent == c.out.len() {
                    c.out.clear();
                    c.sent = 0;
                }
            }
            let idle = c.out.is_empty();
            let established = matches!(sock.state(), State::Established | State::CloseWait);
            if idle && established && (c.close_after || sock.state() == State::CloseWait) {
                sock.close();
            }
            if matches!(sock.state(), State::Closed | State::TimeWait) {
                self.host.sockets.remove(h);
                self.conns.swap_remove(i);
                continue;
            }
            i += 1;
        }
        self.host.poll(now);
    }

    fn poll_at(&self, now: Instant) -> Option<Instant> {
        self.host.poll_at(now)
    }
}

/// How an HTTP client population behaves.
#[derive(Clone, Debug)]
pub struct HttpClientConfig {
    /// The address to connect to (a VIP).
    pub target: SocketAddr,
    /// Paths requested in turn.
    pub paths: Vec<String>,
    /// Connections open at once.
    pub concurrency: usize,
    /// Requests sent on one connection before it is closed.
    pub requests_per_connection: usize,
    /// Stop after this many requests (`None`: no limit).
    pub total_requests: Option<u64>,
    /// Start no request after this time (`None`: no limit).
    pub until: Option<Instant>,
    /// Expected body size.
    pub body_size: usize,
    /// A request unanswered for this long counts as timed out.
    pub timeout: Duration,
    /// First local port.
    pub start_port: u16,
    /// Start no work before this time (`None`: at once).
    pub start: Option<Instant>,
    /// Receive and send buffer of each socket, in bytes.
    pub socket_buffer: usize,
    /// Open at most this many new connections per millisecond, evenly spaced
    /// (0: no limit): a population ramps up instead of sending every SYN at
    /// once.
    pub connects_per_ms: usize,
    /// TLS for sessions that speak it ([`super::https::Https1`]): the
    /// client configuration and the server name to ask for.
    pub tls: Option<super::tls::ClientTls>,
}

/// What an HTTP client counted.
#[derive(Clone, Debug, Default)]
pub struct ClientStats {
    /// Connections opened.
    pub connections: u64,
    /// Requests sent.
    pub requests: u64,
    /// Responses with status 200 and the exact expected body.
    pub responses_ok: u64,
    /// Connections refused or reset, other statuses, unparsable responses.
    pub errors: u64,
    /// Responses whose body differed from the expected bytes.
    pub bad_bodies: u64,
    /// Requests or connections that timed out.
    pub timeouts: u64,
    /// Response bytes received.
    pub bytes_in: u64,
    /// Path → value of `X-Backend` → responses.
    pub by_path: BTreeMap<String, BTreeMap<String, u64>>,
    /// Sum of request latencies, µs.
    pub latency_us_sum: u64,
    /// No request will be started any more and none is in flight.
    pub finished: bool,
}

impl ClientStats {
    /// True when the client has finished all it will do.
    pub fn done(&self) -> bool {
        self.finished
    }
}

struct Inflight {
    path: usize,
    sent_at: Instant,
}

struct ClientConn<S> {
    handle: SocketHandle,
    opened: Instant,
    done_requests: usize,
    inflight: Option<Inflight>,
    session: S,
}

/// A complete response, as a [`Session`] read it.
#[derive(Debug)]
pub struct Response {
    /// Status code.
    pub status: u16,
    /// Value of `X-Backend` (`?` when absent).
    pub backend: String,
    /// The body was exactly the expected bytes.
    pub body_ok: bool,
    /// Bytes received for the response (head and body, or frames).
    pub bytes: u64,
    /// The connection may carry another request.
    pub keep: bool,
}

/// What a [`Session`] made of the bytes a socket had.
#[derive(Debug)]
pub enum Exchange {
    /// No complete response yet.
    Pending,
    /// The response to the request in flight.
    Response(Response),
    /// The connection is unusable (unparsable response, protocol error, or
    /// the peer ended it); a request in flight counts as an error.
    Broken,
}

/// The protocol a [`Client`] speaks on each of its connections: the client
/// opens connections at the ramp's pace, keeps one request in flight on each,
/// times them out, checks bodies and counts; a session turns requests into
/// bytes on its socket and bytes back into responses.
pub trait Session: Sized {
    /// What all connections of one client share (requests prepared once,
    /// scratch state).
    type Shared;
    /// Prepares what connections of a client configured by `cfg`
    /// requesting `paths` share.
    fn shared(cfg: &HttpClientConfig, paths: &[String]) -> Self::Shared;
    /// The state of a connection being opened (`None`: it cannot be).
    fn open(shared: &Self::Shared) -> Option<Self>;
    /// Moves what the socket has into the session (and what the session has
    /// to say into the socket); a complete response to the request in flight
    /// is checked against `expected`, its body (`None`: nothing in flight).
    fn exchange(
        &mut self,
        shared: &Self::Shared,
        sock: &mut tcp::Socket<'static>,
        scratch: &mut [u8],
        expected: Option<&[u8]>,
    ) -> Exchange;
    /// Sends the request for path `path` if the socket takes it whole.
    fn send(&mut self, shared: &Self::Shared, path: usize, sock: &mut tcp::Socket<'static>)
    -> bool;
}

/// HTTP/1.1 keep-alive on a connection: the response bytes read so far.
pub struct Http1 {
    inbuf: Vec<u8>,
}

impl Session for Http1 {
    /// Each path's request head.
    type Shared = Vec<Vec<u8>>;

    fn shared(cfg: &HttpClientConfig, paths: &[String]) -> Vec<Vec<u8>> {
        request_heads(cfg.target, paths)
    }

    fn open(_: &Vec<Vec<u8>>) -> Option<Http1> {
        Some(Http1 { inbuf: Vec::new() })
    }

    fn exchange(
        &mut self,
        _: &Vec<Vec<u8>>,
        sock: &mut tcp::Socket<'static>,
        scratch: &mut [u8],
        expected: Option<&[u8]>,
    ) -> Exchange {
        while sock.can_recv() {
            match sock.recv_slice(scratch) {
                Ok(0) | Err(_) => break,
                Ok(n) => self.inbuf.extend_from_slice(&scratch[..n]),
            }
        }
        let Some(expected) = expected else { return Exchange::Pending };
        read_response(&mut self.inbuf, expected)
    }

    fn send(&mut self, heads: &Vec<Vec<u8>>, path: usize, sock: &mut tcp::Socket<'static>) -> bool {
        let req = &heads[path];
        sock.send_capacity() - sock.send_queue() >= req.len() && sock.send_slice(req).is_ok()
    }
}

/// Each path's HTTP/1.1 request head to `target`.
pub(crate) fn request_heads(target: SocketAddr, paths: &[String]) -> Vec<Vec<u8>> {
    paths
        .iter()
        .map(|p| {
            format!("GET {p} HTTP/1.1\r\nHost: {target}\r\nUser-Agent: switchyard-sim\r\n\r\n")
                .into_bytes()
        })
        .collect()
}

/// The HTTP/1.1 response at the front of `inbuf`, if whole, checked against
/// the `expected` body and taken off.
pub(crate) fn read_response(inbuf: &mut Vec<u8>, expected: &[u8]) -> Exchange {
    {
        let mut headers = [httparse::EMPTY_HEADER; 32];
        let mut resp = httparse::Response::new(&mut headers);
        let (head, status, len, backend, close) = match resp.parse(inbuf) {
            Ok(httparse::Status::Complete(n)) => {
                let mut len = None;
                let mut backend = String::from("?");
                let mut close = false;
                for h in resp.headers.iter() {
                    if h.name.eq_ignore_ascii_case("content-length") {
                        len = std::str::from_utf8(h.value)
                            .ok()
                            .and_then(|v| v.trim().parse::<usize>().ok());
                    } else if h.name.eq_ignore_ascii_case("x-backend") {
                        backend = String::from_utf8_lossy(h.value).into_owned();
                    } else if h.name.eq_ignore_ascii_case("connection") {
                        close = h.value.eq_ignore_ascii_case(b"close");
                    }
                }
                (n, resp.code.unwrap_or(0), len, backend, close)
            }
            Ok(httparse::Status::Partial) => return Exchange::Pending,
            Err(_) => return Exchange::Broken,
        };
        let Some(len) = len else { return Exchange::Broken };
        if inbuf.len() < head + len {
            return Exchange::Pending;
        }
        let body_ok = &inbuf[head..head + len] == expected;
        inbuf.drain(..head + len);
        Exchange::Response(Response {
            status,
            backend,
            body_ok,
            bytes: (head + len) as u64,
            keep: !close && status == 200,
        })
    }
}

/// An HTTP load generator speaking `S` on every connection.
pub struct Client<S: Session> {
    host: Host,
    cfg: HttpClientConfig,
    conns: Vec<Option<ClientConn<S>>>,
    next_port: u16,
    next_path: usize,
    expected: Vec<Vec<u8>>,
    shared: S::Shared,
    stats: Rc<RefCell<ClientStats>>,
    /// When the next poll is due, worked out at the end of the last one
    /// (`poll_at` is asked far more often than `poll` runs).
    next: Option<Instant>,
    /// When the ramp lets the next connection open.
    ramp: Instant,
    /// A connection has been established: the target's link-layer address
    /// is known, so the ramp may go on (before, only one connection opens,
    /// or every SYN of the ramp would wait for ARP and leave at once).
    reached: bool,
}

/// An HTTP/1.1 keep-alive load generator.
pub type HttpClient = Client<Http1>;

impl<S: Session> Client<S> {
    /// A client population on `host`.
    pub fn new(
        host: HostConfig,
        cfg: HttpClientConfig,
    ) -> (Client<S>, SimWire, Rc<RefCell<ClientStats>>) {
        let (host, wire) = Host::new(&host);
        let stats = Rc::new(RefCell::new(ClientStats::default()));
        let paths = if cfg.paths.is_empty() { vec!["/".to_string()] } else { cfg.paths.clone() };
        let expected = paths.iter().map(|p| body_bytes(p, cfg.body_size)).collect();
        let shared = S::shared(&cfg, &paths);
        let cfg = HttpClientConfig { paths, ..cfg };
        let c = Client {
            host,
            conns: (0..cfg.concurrency.max(1)).map(|_| None).collect(),
            next_port: cfg.start_port.max(1024),
            next_path: 0,
            expected,
            shared,
            stats: stats.clone(),
            next: Some(Instant::from_millis(0)),
            ramp: Instant::from_millis(0),
            reached: false,
            cfg,
        };
        (c, wire, stats)
    }

    fn may_start(&self, now: Instant) -> bool {
        let st = self.stats.borrow();
        self.cfg.total_requests.is_none_or(|t| st.requests < t)
            && self.cfg.until.is_none_or(|u| now < u)
            && self.cfg.start.is_none_or(|t| now >= t)
    }

    fn port(&mut self) -> u16 {
        let p = self.next_port;
        self.next_port = if p >= 60000 { 10000 } else { p + 1 };
        p
    }

    /// Opens a connection in `slot`.
    fn open(&mut self, slot: usize, now: Instant) {
        let port = self.port();
        let h = self.host.new_socket(self.cfg.socket_buffer.max(1024));
        let remote = (IpAddress::from(self.cfg.target.ip()), self.cfg.target.port());
        let cx = self.host.iface.context();
        let connected =
            self.host.sockets.get_mut::<tcp::Socket>(h).connect(cx, remote, port).is_ok();
        let session = if connected { S::open(&self.shared) } else { None };
        let Some(session) = session else {
            self.host.sockets.remove(h);
            self.stats.borrow_mut().errors += 1;
            return;
        };
        self.stats.borrow_mut().connections += 1;
        self.conns[slot] =
            Some(ClientConn { handle: h, opened: now, done_requests: 0, inflight: None, session });
    }

    /// Counts a response to the request in flight on `c`.
    fn record(
        stats: &RefCell<ClientStats>,
        path: &str,
        sent_at: Instant,
        r: Response,
        now: Instant,
    ) {
        let mut st = stats.borrow_mut();
        st.bytes_in += r.bytes;
        st.latency_us_sum += (now - sent_at).total_micros();
        if r.status != 200 {
            st.errors += 1;
        } else if !r.body_ok {
            st.bad_bodies += 1;
        } else {
            st.responses_ok += 1;
            *st.by_path.entry(path.to_string()).or_default().entry(r.backend).or_default() += 1;
        }
    }
}

impl<S: Session> Node for Client<S> {
    fn name(&self) -> &str {
        &self.host.name
    }

    fn poll(&mut self, now: Instant) {
        self.host.poll(now);
        let mut buf = [0u8; 8192];
        for slot in 0..self.conns.len() {
            // Open a connection where there is none and work remains.
            if self.conns[slot].is_none() {
                if !self.may_start(now) || !self.ramp_allows(now) {
                    continue;
                }
                self.open(slot, now);
            }
            let Some(c) = self.conns[slot].as_mut() else { continue };
            let h = c.handle;
            let sock = self.host.sockets.get_mut::<tcp::Socket>(h);
            let expected = c.inflight.as_ref().map(|f| self.expected[f.path].as_slice());
            let mut keep = true;
            let mut broken = false;
            match c.session.exchange(&self.shared, sock, &mut buf, expected) {
                Exchange::Pending => {}
                Exchange::Broken => broken = true,
                Exchange::Response(r) => {
                    if let Some(f) = c.inflight.take() {
                        keep = r.keep;
                        Self::record(&self.stats, &self.cfg.paths[f.path], f.sent_at, r, now);
                        c.done_requests += 1;
                    }
                }
            }
            let state = sock.state();
            self.reached |= state == State::Established;
            let timed_out = match &c.inflight {
                Some(f) => now >= f.sent_at + self.cfg.timeout,
                None => state == State::SynSent && now >= c.opened + self.cfg.timeout,
            };
            let failed = (broken
                || matches!(
                    state,
                    State::Closed | State::TimeWait | State::CloseWait | State::LastAck
                ))
                && c.inflight.is_some();
            if timed_out || failed || broken || !keep {
                let mut st = self.stats.borrow_mut();
                if timed_out {
                    st.timeouts += 1;
                } else if failed {
                    st.errors += 1;
                }
                drop(st);
                sock.abort();
                self.host.sockets.remove(h);
                self.conns[slot] = None;
                continue;
            }
            // Send the next request, or close when this connection is done.
            if c.inflight.is_none() {
                let more = c.done_requests < self.cfg.requests_per_connection.max(1);
                let may_start = {
                    let st = self.stats.borrow();
                    self.cfg.total_requests.is_none_or(|t| st.requests < t)
                        && self.cfg.until.is_none_or(|u| now < u)
                };
                if more && state == State::Established && may_start {
                    let path = self.next_path % self.cfg.paths.len();
                    if c.session.send(&self.shared, path, sock) {
                        self.next_path += 1;
                        c.inflight = Some(Inflight { path, sent_at: now });
                        self.stats.borrow_mut().requests += 1;
                    }
                } else if state == State::Established || state == State::CloseWait {
                    if !more || !may_start {
                        sock.close();
                    }
                } else if matches!(state, State::TimeWait | State::Closed) {
                    self.host.sockets.remove(h);
                    self.conns[slot] = None;
                }
            }
        }
        self.host.poll(now);
        let waiting = self.cfg.start.is_some_and(|t| now < t);
        let finished = !waiting && !self.may_start(now) && self.conns.iter().all(Option::is_none);
        self.stats.borrow_mut().finished = finished;
        self.next = self.next_poll(now);
    }

    fn poll_at(&self, now: Instant) -> Option<Instant> {
        if self.host.dev.port.has_rx() {
            return Some(now);
        }
        self.next
    }
}

impl<S: Session> Client<S> {
    /// True if the ramp lets one more connection open at `now` (and counts it).
    fn ramp_allows(&mut self, now: Instant) -> bool {
        let per = self.cfg.connects_per_ms as u64;
        if per == 0 {
            return true;
        }
        if now < self.ramp || (!self.reached && self.conns.iter().any(Option::is_some)) {
            return false;
        }
        // One connection per 1000/per µs; a population that fell behind (it
        // had no free slot) does not catch up in a burst.
        self.ramp = now + Duration::from_micros((1000 / per).max(1));
        true
    }

    /// When the client next has work without new frames, as of `now`.
    fn next_poll(&self, now: Instant) -> Option<Instant> {
        let mut t = self.host.poll_at(now);
        for c in self.conns.iter().flatten() {
            let connecting =
                self.host.sockets.get::<tcp::Socket>(c.handle).state() == State::SynSent;
            let d = match &c.inflight {
                Some(f) => f.sent_at + self.cfg.timeout,
                None if connecting => c.opened + self.cfg.timeout,
                None => continue,
            };
            t = Some(t.map_or(d, |x| x.min(d)));
        }
        if let Some(start) = self.cfg.start
            && now < start
        {
            return Some(start);
        }
        if self.conns.iter().any(Option::is_none) && self.may_start(now) {
            // Held back by the ramp: when it lets the next one open (or on
            // the frames that establish the first connection).
            if self.cfg.connects_per_ms == 0 {
                return Some(now);
            }
            if self.reached || self.conns.iter().all(Option::is_none) {
                return Some(self.ramp.max(now));
            }
        }
        if let Some(u) = self.cfg.until
            && now < u
        {
            t = Some(t.map_or(u, |x| x.min(u)));
        }
        t
    }
}
