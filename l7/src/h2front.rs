//! HTTP/2 towards clients (RFC 9113), by translation: each HTTP/2 stream
//! becomes a virtual connection carrying one HTTP/1.1 request, so routing,
//! rewriting, retries, health and counters of the HTTP/1.1 proxy apply to
//! both protocols unchanged.
//!
//! The front sits between TCP (or TLS) and [`crate::L7`]. On listeners with
//! HTTP/2 on it reads the first bytes of each new connection: the HTTP/2
//! preface (sent first by every HTTP/2 client, after ALPN `h2` or with prior
//! knowledge over cleartext) makes it an HTTP/2 connection served here by the
//! `h2` crate; anything else is handed to L7 as HTTP/1.1 with those bytes
//! replayed. Sans-IO and single-threaded: `h2`'s futures are polled with a
//! no-op waker whenever bytes, window or L7 output arrive, over an in-memory
//! pipe the front moves to and from TCP.

use std::cell::RefCell;
use std::collections::HashSet;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll, Waker};

use bytes::{BufMut, Bytes, BytesMut};
use h2::server::{Connection, Handshake, SendResponse};
use h2::{Reason, RecvStream, SendStream};
use switchyard_stack::tcp::{ConnId, ConnState, TcpApi, TcpError, TcpEvent};
use switchyard_stack::{Duration, FlowMap, Instant, ListenerId, flow_map};

use crate::{SPARE_BUF_MAX, keep_buf};

/// The client connection preface (RFC 9113 3.4).
const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
/// Virtual connection ids have this bit set in their slot; the stack's slots
/// never reach it.
const VIRTUAL: u32 = 1 << 31;
/// Request bytes serialized ahead of L7 before the stream's window closes.
const REQ_BUF: usize = 64 * 1024;
/// Response bytes accepted from L7 ahead of the stream's window.
const RESP_BUF: usize = 64 * 1024;
/// HTTP/2 output held before `h2` is told to stop writing.
const PIPE_BUF: usize = 256 * 1024;
/// Request and body buffers kept for the next streams when theirs end, at
/// most this many, each at most `SPARE_BUF_MAX` bytes: a stream allocates
/// none of its own in steady state.
const SPARES: usize = 256;
/// Room taken at a time for the response heads `h2` is handed (as shared
/// bytes: header values are slices of them).
const HEADS_CHUNK: usize = 16 * 1024;
/// A new connection that sends nothing for this long is closed.
const SNIFF_TIMEOUT: Duration = Duration::from_secs(30);

/// How long an HTTP/2 connection may be idle by default (L7's
/// [`crate::Limits::idle_timeout`] sets it: [`H2Front::set_idle_timeout`]).
const IDLE_TIMEOUT: Duration = Duration::from_secs(60);

/// Counters of the front.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct H2Stats {
    /// HTTP/2 client connections accepted.
    pub connections: u64,
    /// Streams (requests) opened by clients.
    pub streams: u64,
    /// Streams the client reset.
    pub client_resets: u64,
    /// Streams the proxy reset (the request could not be answered).
    pub proxy_resets: u64,
    /// Connections ended by an HTTP/2 protocol error.
    pub protocol_errors: u64,
    /// Connections closed for sending nothing for the idle timeout while
    /// no stream was open (GOAWAY, then a reset if the client does not
    /// finish), or for not finishing the connection preface in that time.
    pub idle_closed: u64,
    /// HTTP/2 connections opened to `h2c` backends.
    pub upstream_connections: u64,
    /// Requests sent on them.
    pub upstream_streams: u64,
    /// gRPC responses relayed to clients, by `grpc-status` (from trailers,
    /// or the head of a trailers-only response).
    pub grpc_status: std::collections::BTreeMap<String, u64>,
}

/// The in-memory transport under an `h2` connection.
#[derive(Default)]
pub(crate) struct PipeBufs {
    pub(crate) rx: Vec<u8>,
    pub(crate) rx_off: usize,
    pub(crate) rx_eof: bool,
    pub(crate) tx: Vec<u8>,
}

pub(crate) struct Pipe(pub(crate) Rc<RefCell<PipeBufs>>);

impl PipeBufs {
    /// Reads what TCP has for the `h2` connection on `conn` (up to 64 KiB
    /// ahead of it); marks the end once the peer closed. True if bytes came.
    pub(crate) fn fill<T: TcpApi>(
        &mut self,
        tcp: &mut T,
        conn: ConnId,
        scratch: &mut [u8],
        peer_closed: bool,
    ) -> bool {
        let mut got = false;
        while self.rx.len() - self.rx_off < 64 * 1024 {
            match tcp.recv(conn, scratch) {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    self.rx.extend_from_slice(&scratch[..n]);
                    got = true;
                }
            }
        }
        if peer_closed {
            self.rx_eof = true;
        }
        got
    }

    /// Sends what `h2` wrote, as far as TCP takes it. True if bytes went.
    pub(crate) fn flush<T: TcpApi>(&mut self, tcp: &mut T, conn: ConnId) -> bool {
        if self.tx.is_empty() {
            return false;
        }
        let n = tcp.send(conn, &self.tx).unwrap_or(0);
        self.tx.drain(..n);
        n > 0
    }
}

impl tokio::io::AsyncRead for Pipe {
    fn poll_read(
        self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let mut p = self.0.borrow_mut();
        let avail = p.rx.len() - p.rx_off;
        if avail == 0 {
            p.rx.clear();
            p.rx_off = 0;
            // EOF is a zero-length read; otherwise wait for the next bytes.
            return if p.rx_eof { Poll::Ready(Ok(())) } else { Poll::Pending };
        }
        let n = avail.min(buf.remaining());
        let off = p.rx_off;
        buf.put_slice(&p.rx[off..off + n]);
        p.rx_off += n;
        Poll::Ready(Ok(()))
    }
}

impl tokio::io::AsyncWrite for Pipe {
    fn poll_write(
        self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        let mut p = self.0.borrow_mut();
        if p.tx.len() >= PIPE_BUF {
            return Poll::Pending;
        }
        p.tx.extend_from_slice(data);
        Poll::Ready(Ok(data.len()))
    }

    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

enum ConnPhase {
    Handshaking(Handshake<Pipe, Bytes>),
    Ready(Connection<Pipe, Bytes>),
    Done,
}

struct H2Conn {
    pipe: Rc<RefCell<PipeBufs>>,
    phase: ConnPhase,
    listener: ListenerId,
    peer: SocketAddr,
    local: SocketAddr,
    streams: Vec<ConnId>,
    peer_closed: bool,
    /// In `H2Front::written`.
    written: bool,
    /// When the client last sent bytes (or, after a deadline found the
    /// connection busy, the first deadline that found it idle).
    active: Instant,
    /// The last deadline found a stream open or a response on its way.
    was_busy: bool,
    /// Sent GOAWAY for being idle; reset if it is still here at the next
    /// deadline.
    shutting: bool,
}

/// How the response L7 writes is delimited, as it is parsed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Body {
    Length(u64),
    Chunked(Chunk),
    UntilClose,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Chunk {
    Size(u64),
    Ext(u64),
    SizeLf(u64),
    Data(u64),
    DataCr,
    DataLf,
    Trailers,
}

enum Resp {
    /// Waiting for the response head.
    Head(Vec<u8>),
    /// Relaying the body.
    Body(Body),
    /// The response is complete.
    Done,
}

pub(crate) enum End {
    None,
    Eos,
    Trailers(http::HeaderMap),
}

struct Stream {
    conn: ConnId,
    head_request: bool,
    recv: Option<RecvStream>,
    /// Serialized HTTP/1.1 request bytes L7 has not read yet.
    req: Vec<u8>,
    req_chunked: bool,
    respond: Option<SendResponse<Bytes>>,
    send: Option<SendStream<Bytes>>,
    resp: Resp,
    /// Response body bytes waiting for stream window; handed to `h2` as
    /// slices of it, not copies.
    pending: BytesMut,
    /// What follows `pending`.
    end: End,
    /// Trailer lines being collected from a chunked response.
    trailer_buf: Vec<u8>,
    /// L7 was told the window is full and waits for `Writable`.
    blocked: bool,
    /// Gone from the client's side; L7 gets `Closed`.
    gone: bool,
    /// L7 closed it (and was told `Closed`); it goes once its response is
    /// out.
    l7_closed: bool,
    /// In `H2Front::unread`.
    unread: bool,
    /// `pending` once held more than `SPARE_BUF_MAX` (its allocation may be
    /// larger than what its capacity shows after splits): not kept.
    big_body: bool,
}

impl Stream {
    /// Resets the stream towards the client (`INTERNAL_ERROR`).
    fn reset(&mut self) {
        if let Some(s) = self.send.as_mut() {
            s.send_reset(Reason::INTERNAL_ERROR);
        } else if let Some(r) = self.respond.as_mut() {
            r.send_reset(Reason::INTERNAL_ERROR);
        }
    }
}

struct Sniff {
    listener: ListenerId,
    peer: SocketAddr,
    local: SocketAddr,
    buf: Vec<u8>,
    since: Instant,
    /// ALPN agreed on `h2`: the first bytes start HTTP/2.
    h2: bool,
}

/// The HTTP/2 front of one worker.
pub struct H2Front {
    listeners: HashSet<ListenerId>,
    // Keyed by our own connection handles, not by what peers choose: a fast
    // fixed hash will do (they are looked up on every event and call).
    sniffing: FlowMap<ConnId, Sniff>,
    /// Idle deadlines of HTTP/2 connections, in order (a connection's entry
    /// is checked when due and put back if it has been active since).
    idle: std::collections::VecDeque<(Instant, ConnId)>,
    /// How long a connection may send nothing while no stream is open.
    idle_timeout: Duration,
    /// Bytes read while sniffing an HTTP/1.1 connection, replayed to L7.
    stash: FlowMap<ConnId, Vec<u8>>,
    conns: FlowMap<ConnId, H2Conn>,
    streams: FlowMap<ConnId, Stream>,
    next_virtual: u32,
    pub(crate) events: Vec<TcpEvent>,
    pub(crate) scratch: Vec<u8>,
    pub(crate) stats: H2Stats,
    /// Backends spoken to over HTTP/2 (`h2c` pools).
    pub(crate) h2c_backends: HashSet<SocketAddr>,
    /// Their connections, by the real connection.
    pub(crate) uconns: FlowMap<ConnId, crate::h2back::UpConn>,
    /// Requests on them, by virtual connection.
    pub(crate) ustreams: FlowMap<ConnId, crate::h2back::UStream>,
    pub(crate) up_by_addr: FlowMap<SocketAddr, ConnId>,
    /// Connections whose streams L7 wrote to since the last [`H2Front::flush`]:
    /// driven (frames encoded, bytes to TCP) once each there, not once per
    /// write.
    written: Vec<ConnId>,
    /// Streams whose request bytes L7 may not have read; announced again by
    /// [`H2Front::poll`] while it has not (each once, `Stream::unread`).
    unread: Vec<ConnId>,
    /// Room `drive` reuses for the streams a poll accepted and the streams
    /// it polls, so driving a connection allocates nothing.
    accepted: Vec<(http::Request<RecvStream>, SendResponse<Bytes>)>,
    ids: Vec<ConnId>,
    /// Buffers of ended streams, for the next ones.
    spare_reqs: Vec<Vec<u8>>,
    spare_bodies: Vec<BytesMut>,
    /// Where response heads are copied, one after the other, each split off
    /// as shared bytes.
    heads: BytesMut,
}

fn virtual_id(conn: ConnId) -> bool {
    conn.slot & VIRTUAL != 0
}

impl H2Front {
    /// A front serving HTTP/2 on `listeners` (the others pass through).
    pub fn new(listeners: impl IntoIterator<Item = ListenerId>) -> H2Front {
        H2Front {
            listeners: listeners.into_iter().collect(),
            sniffing: flow_map(64, 0x6832_736e_6966),
            idle: std::collections::VecDeque::new(),
            idle_timeout: IDLE_TIMEOUT,
            stash: flow_map(0, 0x6832_7374_6173),
            conns: flow_map(64, 0x6832_636f_6e6e),
            streams: flow_map(64, 0x6832_7374_7265),
            next_virtual: 0,
            events: Vec::new(),
            scratch: vec![0; 16 * 1024],
            stats: H2Stats::default(),
            h2c_backends: HashSet::new(),
            uconns: flow_map(0, 0x6832_7563_6f6e),
            ustreams: flow_map(0, 0x6832_7573_7472),
            up_by_addr: flow_map(0, 0x6832_7570_6164),
            written: Vec::new(),
            unread: Vec::new(),
            accepted: Vec::new(),
            ids: Vec::new(),
            spare_reqs: Vec::new(),
            spare_bodies: Vec::new(),
            heads: BytesMut::new(),
        }
    }

    /// A fresh virtual connection id.
    pub(crate) fn virtual_conn(&mut self) -> ConnId {
        let v = ConnId {
            slot: VIRTUAL | (self.next_virtual & !VIRTUAL),
            generation: self.next_virtual >> 31,
        };
        self.next_virtual = self.next_virtual.wrapping_add(1);
        v
    }

    /// Counters.
    pub fn stats(&self) -> &H2Stats {
        &self.stats
    }

    /// HTTP/2 connections open now.
    pub fn active_connections(&self) -> usize {
        self.conns.len()
    }

    /// L7's view of TCP: virtual connections for HTTP/2 streams, the rest
    /// passed to `tcp`.
    pub fn wrap<'a, T: TcpApi>(&'a mut self, tcp: &'a mut T) -> H2Tcp<'a, T> {
        H2Tcp { front: self, tcp }
    }

    /// Moves the events for L7 (of virtual connections, and of HTTP/1.1
    /// connections once sniffed) to `out`.
    pub fn take_events(&mut self, out: &mut Vec<TcpEvent>) {
        out.append(&mut self.events);
    }

    /// True while events wait for [`H2Front::take_events`].
    pub fn has_events(&self) -> bool {
        !self.events.is_empty()
    }

    /// Takes the TCP events of the connections the front handles; returns
    /// the others for L7.
    pub fn on_event<T: TcpApi>(
        &mut self,
        now: Instant,
        ev: TcpEvent,
        tcp: &mut T,
    ) -> Option<TcpEvent> {
        if self.up_event(ev, tcp) {
            return None;
        }
        match ev {
            TcpEvent::Accepted { conn, listener, peer, local }
                if self.listeners.contains(&listener) =>
            {
                // A protocol agreed by ALPN is the one spoken (RFC 7301
                // 3.2): HTTP/1.1 goes to L7 as it is (the h2 preface there
                // is a bad request), and on `h2` the first bytes, whatever
                // they are, start HTTP/2 (anything but the preface is a
                // connection error for `h2` to find, RFC 9113 3.4). Without
                // ALPN (cleartext, or a client that offered none) the first
                // bytes decide.
                let h2 = match tcp.alpn(conn) {
                    Some(b"http/1.1") => return Some(ev),
                    Some(b"h2") => true,
                    _ => false,
                };
                self.sniffing
                    .insert(conn, Sniff { listener, peer, local, buf: Vec::new(), since: now, h2 });
                None
            }
            TcpEvent::Readable { conn } | TcpEvent::PeerClosed { conn }
                if self.sniffing.contains_key(&conn) =>
            {
                self.sniff(now, conn, matches!(ev, TcpEvent::PeerClosed { .. }), tcp);
                None
            }
            TcpEvent::Closed { conn, .. } if self.sniffing.remove(&conn).is_some() => None,
            TcpEvent::Closed { conn, .. } => {
                self.stash.remove(&conn);
                if self.remove_conn(conn) {
                    return None;
                }
                Some(ev)
            }
            TcpEvent::Readable { conn }
            | TcpEvent::Writable { conn }
            | TcpEvent::PeerClosed { conn }
                if self.conns.contains_key(&conn) =>
            {
                if let Some(c) = self.conns.get_mut(&conn) {
                    if let TcpEvent::PeerClosed { .. } = ev {
                        c.peer_closed = true;
                    }
                    if let TcpEvent::Readable { .. } = ev {
                        c.active = now;
                    }
                }
                self.drive(conn, tcp);
                None
            }
            _ => Some(ev),
        }
    }

    /// Once a turn: announces again the virtual connections whose bytes L7
    /// has not read (level-triggered, as the stack does for TCP), and closes
    /// connections that never said what they speak.
    pub fn poll<T: TcpApi>(&mut self, now: Instant, tcp: &mut T) {
        for (v, st) in &self.ustreams {
            if !st.resp.is_empty() {
                self.events.push(TcpEvent::Readable { conn: *v });
            }
        }
        let streams = &mut self.streams;
        let events = &mut self.events;
        self.unread.retain(|v| {
            let Some(st) = streams.get_mut(v) else { return false };
            st.unread = !st.req.is_empty();
            if st.unread {
                events.push(TcpEvent::Readable { conn: *v });
            }
            st.unread
        });
        self.expire_idle(now, tcp);
        if self.sniffing.is_empty() {
            return;
        }
        let stale: Vec<ConnId> = self
            .sniffing
            .iter()
            .filter(|(_, s)| now >= s.since + SNIFF_TIMEOUT)
            .map(|(c, _)| *c)
            .collect();
        for c in stale {
            self.sniffing.remove(&c);
            tcp.abort(c);
        }
    }

    /// Drives the connections whose streams L7 wrote to since the last call:
    /// h2 encodes their frames and the bytes go to TCP. Called once a turn,
    /// after L7 (and before TLS seals what was written).
    pub fn flush<T: TcpApi>(&mut self, tcp: &mut T) {
        let mut written = std::mem::take(&mut self.written);
        for conn in written.drain(..) {
            if let Some(c) = self.conns.get_mut(&conn) {
                c.written = false;
            }
            self.drive(conn, tcp);
        }
        // The list keeps its room for the next turn.
        if self.written.is_empty() {
            self.written = written;
        }
    }

    /// When `poll` next has work.
    pub fn poll_at(&self) -> Option<Instant> {
        let sniff = self.sniffing.values().map(|s| s.since + SNIFF_TIMEOUT);
        sniff.chain(self.idle.front().map(|e| e.0)).min()
    }

    /// Reads a new connection's first bytes and decides what it speaks.
    fn sniff<T: TcpApi>(&mut self, now: Instant, conn: ConnId, closed: bool, tcp: &mut T) {
        let Some(s) = self.sniffing.get_mut(&conn) else { return };
        while s.buf.len() < PREFACE.len() {
            let mut b = [0u8; 24];
            let want = PREFACE.len() - s.buf.len();
            match tcp.recv(conn, &mut b[..want]) {
                Ok(0) | Err(_) => break,
                Ok(n) => s.buf.extend_from_slice(&b[..n]),
            }
        }
        let h2 = if s.h2 { !s.buf.is_empty() } else { s.buf == PREFACE };
        let undecided = !closed
            && if s.h2 {
                s.buf.is_empty()
            } else {
                s.buf.len() < PREFACE.len() && PREFACE.starts_with(&s.buf)
            };
        if undecided {
            return;
        }
        let Some(s) = self.sniffing.remove(&conn) else { return };
        if h2 {
            self.start_h2(now, conn, s, closed, tcp);
        } else {
            // HTTP/1.1 (or garbage, which L7 refuses): L7 sees the
            // connection from the start, the bytes read here first.
            if !s.buf.is_empty() {
                self.stash.insert(conn, s.buf);
            }
            self.events.push(TcpEvent::Accepted {
                conn,
                listener: s.listener,
                peer: s.peer,
                local: s.local,
            });
            self.events.push(TcpEvent::Readable { conn });
            if closed {
                self.events.push(TcpEvent::PeerClosed { conn });
            }
        }
    }

    /// Serves `conn` as HTTP/2 from here on, the bytes sniffed first.
    fn start_h2<T: TcpApi>(
        &mut self,
        now: Instant,
        conn: ConnId,
        s: Sniff,
        closed: bool,
        tcp: &mut T,
    ) {
        self.stats.connections += 1;
        let pipe = Rc::new(RefCell::new(PipeBufs::default()));
        pipe.borrow_mut().rx.extend_from_slice(&s.buf);
        let hs = h2::server::Builder::new()
            .max_concurrent_streams(128)
            .initial_window_size(REQ_BUF as u32)
            .max_header_list_size(64 * 1024)
            .handshake(Pipe(pipe.clone()));
        self.conns.insert(
            conn,
            H2Conn {
                pipe,
                phase: ConnPhase::Handshaking(hs),
                listener: s.listener,
                peer: s.peer,
                local: s.local,
                streams: Vec::new(),
                peer_closed: closed,
                written: false,
                active: now,
                was_busy: false,
                shutting: false,
            },
        );
        self.idle.push_back((now + self.idle_timeout, conn));
        self.drive(conn, tcp);
    }

    /// How long an HTTP/2 client connection may send nothing while it has
    /// no stream open, or take to finish its connection preface (L7's
    /// idle timeout).
    pub fn set_idle_timeout(&mut self, d: Duration) {
        self.idle_timeout = d.max(Duration::from_millis(1));
    }

    /// Idle connections: GOAWAY first (RFC 9113 6.8), a reset if one is
    /// still there, and idle, at its next deadline; one still in its
    /// preface that has sent nothing for the timeout is reset.
    /// Every connection has one entry in `idle`, always a timeout ahead of
    /// when it was put there.
    fn expire_idle<T: TcpApi>(&mut self, now: Instant, tcp: &mut T) {
        while let Some(&(at, conn)) = self.idle.front() {
            if at > now {
                break;
            }
            self.idle.pop_front();
            let timeout = self.idle_timeout;
            let Some(c) = self.conns.get_mut(&conn) else { continue };
            // Busy: a stream open (one may have crossed our GOAWAY, which
            // is what a graceful one is for), or a response still on its
            // way to a client that is reading it.
            let busy =
                !c.streams.is_empty() || !c.pipe.borrow().tx.is_empty() || tcp.send_queue(conn) > 0;
            let was_busy = std::mem::replace(&mut c.was_busy, busy);
            if was_busy && !busy {
                // Idleness counts from here: when the work ended is not
                // known.
                c.active = now;
            }
            // Checked again a whole timeout later, which keeps the queue in
            // order: a connection closes after between one and two timeouts
            // without a byte or work (after its GOAWAY, one more without
            // work).
            if busy || was_busy || (!c.shutting && c.active + timeout > now) {
                self.idle.push_back((now + timeout, conn));
                continue;
            }
            match &mut c.phase {
                ConnPhase::Ready(h) if !c.shutting => {
                    c.shutting = true;
                    h.graceful_shutdown();
                    self.stats.idle_closed += 1;
                    self.idle.push_back((now + timeout, conn));
                    self.drive(conn, tcp);
                }
                _ => {
                    if !c.shutting {
                        self.stats.idle_closed += 1;
                    }
                    self.remove_conn(conn);
                    tcp.abort(conn);
                }
            }
        }
    }

    /// Moves bytes between TCP and the `h2` connection and polls everything
    /// that may have progressed.
    fn drive<T: TcpApi>(&mut self, conn: ConnId, tcp: &mut T) {
        let mut cx = Context::from_waker(Waker::noop());
        for _ in 0..16 {
            let mut progress = false;
            // Bytes in.
            let Some(c) = self.conns.get_mut(&conn) else { return };
            progress |= c.pipe.borrow_mut().fill(tcp, conn, &mut self.scratch, c.peer_closed);
            // The connection: handshake, then new streams.
            let mut accepted = std::mem::take(&mut self.accepted);
            let mut failed = false;
            loop {
                match &mut c.phase {
                    ConnPhase::Handshaking(hs) => match Pin::new(hs).poll(&mut cx) {
                        Poll::Ready(Ok(h)) => {
                            c.phase = ConnPhase::Ready(h);
                            progress = true;
                        }
                        Poll::Ready(Err(_)) => {
                            failed = true;
                            break;
                        }
                        Poll::Pending => break,
                    },
                    ConnPhase::Ready(h) => match h.poll_accept(&mut cx) {
                        Poll::Ready(Some(Ok(req))) => {
                            accepted.push(req);
                            progress = true;
                        }
                        Poll::Ready(Some(Err(_))) => {
                            failed = true;
                            break;
                        }
                        Poll::Ready(None) => {
                            c.phase = ConnPhase::Done;
                            break;
                        }
                        Poll::Pending => break,
                    },
                    ConnPhase::Done => break,
                }
            }
            let (listener, peer, local) = (c.listener, c.peer, c.local);
            for (req, respond) in accepted.drain(..) {
                self.new_stream(conn, listener, peer, local, req, respond);
            }
            self.accepted = accepted;
            // Streams: request bodies in, response bodies out.
            let mut ids = std::mem::take(&mut self.ids);
            if let Some(c) = self.conns.get(&conn) {
                ids.extend_from_slice(&c.streams);
            }
            for v in ids.drain(..) {
                progress |= self.poll_stream(v, &mut cx);
            }
            self.ids = ids;
            // Bytes out. Sending them is progress only when `h2` was held up
            // by a full pipe: otherwise the next round would find nothing
            // new (what TCP could not take goes at `Writable`).
            let Some(c) = self.conns.get_mut(&conn) else { return };
            let mut pipe = c.pipe.borrow_mut();
            let blocked = pipe.tx.len() >= PIPE_BUF;
            progress |= pipe.flush(tcp, conn) && blocked;
            let flushed = pipe.tx.is_empty();
            drop(pipe);
            if failed {
                self.stats.protocol_errors += 1;
            }
            let done = matches!(c.phase, ConnPhase::Done) || failed;
            if done && flushed {
                self.remove_conn(conn);
                tcp.close(conn);
                return;
            }
            if !progress {
                return;
            }
        }
    }

    fn new_stream(
        &mut self,
        conn: ConnId,
        listener: ListenerId,
        peer: SocketAddr,
        local: SocketAddr,
        req: http::Request<RecvStream>,
        respond: SendResponse<Bytes>,
    ) {
        self.stats.streams += 1;
        let (parts, body) = req.into_parts();
        let v = self.virtual_conn();
        // The request as HTTP/1.1: authority as Host, one request per
        // virtual connection.
        let mut head = self.spare_reqs.pop().unwrap_or_else(|| Vec::with_capacity(256));
        let path = parts.uri.path_and_query().map_or("/", |p| p.as_str());
        head.extend_from_slice(parts.method.as_str().as_bytes());
        head.push(b' ');
        head.extend_from_slice(path.as_bytes());
        head.extend_from_slice(b" HTTP/1.1\r\n");
        let mut host = parts.uri.authority().map(|a| a.as_str().as_bytes());
        let mut length = false;
        for (name, value) in &parts.headers {
            let n = name.as_str();
            if matches!(
                n,
                "connection"
                    | "keep-alive"
                    | "proxy-connection"
                    | "transfer-encoding"
                    | "upgrade"
                    | "te"
            ) {
                continue;
            }
            if n == "host" {
                if host.is_none() && value.to_str().is_ok() {
                    host = Some(value.as_bytes());
                }
                continue;
            }
            length |= n == "content-length";
            head.extend_from_slice(n.as_bytes());
            head.extend_from_slice(b": ");
            head.extend_from_slice(value.as_bytes());
            head.extend_from_slice(b"\r\n");
        }
        if let Some(h) = host {
            head.extend_from_slice(b"Host: ");
            head.extend_from_slice(h);
            head.extend_from_slice(b"\r\n");
        }
        let has_body = !body.is_end_stream();
        let chunked = has_body && !length;
        if chunked {
            head.extend_from_slice(b"Transfer-Encoding: chunked\r\n");
        }
        head.extend_from_slice(b"Connection: close\r\n\r\n");
        let head_request = parts.method == http::Method::HEAD;
        self.streams.insert(
            v,
            Stream {
                conn,
                head_request,
                recv: has_body.then_some(body),
                req: head,
                req_chunked: chunked,
                respond: Some(respond),
                send: None,
                resp: Resp::Head(Vec::new()),
                pending: self.spare_bodies.pop().unwrap_or_default(),
                end: End::None,
                trailer_buf: Vec::new(),
                blocked: false,
                gone: false,
                l7_closed: false,
                unread: true,
                big_body: false,
            },
        );
        self.unread.push(v);
        if let Some(c) = self.conns.get_mut(&conn) {
            c.streams.push(v);
        }
        self.events.push(TcpEvent::Accepted { conn: v, listener, peer, local });
        self.events.push(TcpEvent::Readable { conn: v });
    }

    /// Polls one stream: request body, client resets, response window.
    fn poll_stream(&mut self, v: ConnId, cx: &mut Context<'_>) -> bool {
        let Some(st) = self.streams.get_mut(&v) else { return false };
        let mut progress = false;
        let mut readable = false;
        // Request body, while L7 keeps up.
        while st.req.len() < REQ_BUF {
            let Some(recv) = st.recv.as_mut() else { break };
            match recv.poll_data(cx) {
                Poll::Ready(Some(Ok(data))) => {
                    let _ = recv.flow_control().release_capacity(data.len());
                    if st.req_chunked && !data.is_empty() {
                        use std::io::Write as _;
                        let _ = write!(st.req, "{:x}\r\n", data.len());
                        st.req.extend_from_slice(&data);
                        st.req.extend_from_slice(b"\r\n");
                    } else {
                        st.req.extend_from_slice(&data);
                    }
                    readable = true;
                }
                Poll::Ready(None) => {
                    let trailers = match recv.poll_trailers(cx) {
                        Poll::Ready(Ok(t)) => t,
                        _ => None,
                    };
                    if st.req_chunked {
                        st.req.extend_from_slice(b"0\r\n");
                        for (n, val) in trailers.iter().flatten() {
                            st.req.extend_from_slice(n.as_str().as_bytes());
                            st.req.extend_from_slice(b": ");
                            st.req.extend_from_slice(val.as_bytes());
                            st.req.extend_from_slice(b"\r\n");
                        }
                        st.req.extend_from_slice(b"\r\n");
                    }
                    st.recv = None;
                    readable = true;
                }
                Poll::Ready(Some(Err(_))) => {
                    st.recv = None;
                    st.gone = true;
                    break;
                }
                Poll::Pending => break,
            }
        }
        // The client may reset the stream at any time.
        let reset = match (&mut st.send, &mut st.respond) {
            (Some(s), _) => s.poll_reset(cx).is_ready(),
            (None, Some(r)) => r.poll_reset(cx).is_ready(),
            _ => false,
        };
        if reset && !matches!(st.resp, Resp::Done) {
            st.gone = true;
            self.stats.client_resets += 1;
        }
        if st.gone {
            self.stream_gone(v);
            return true;
        }
        if readable {
            if !st.unread {
                st.unread = true;
                self.unread.push(v);
            }
            self.events.push(TcpEvent::Readable { conn: v });
            progress = true;
        }
        progress | self.push_response(v, cx)
    }

    /// Sends what stream window allows of the pending response body, then
    /// the end of stream or trailers.
    fn push_response(&mut self, v: ConnId, cx: &mut Context<'_>) -> bool {
        let Some(st) = self.streams.get_mut(&v) else { return false };
        let Some(send) = st.send.as_mut() else {
            if st.l7_closed {
                self.forget(v);
            }
            return false;
        };
        st.big_body |= st.pending.len() > SPARE_BUF_MAX;
        let grpc = &mut self.stats.grpc_status;
        let mut progress = send_body(send, &mut st.pending, &mut st.end, cx, |t| {
            if let Some(s) = t.get("grpc-status").and_then(|v| v.to_str().ok()) {
                count_grpc_status(grpc, s);
            }
        });
        if st.blocked && st.pending.len() < RESP_BUF / 2 && !st.l7_closed {
            st.blocked = false;
            self.events.push(TcpEvent::Writable { conn: v });
            progress = true;
        }
        if st.l7_closed && st.pending.is_empty() && matches!(st.end, End::None) {
            self.forget(v);
        }
        progress
    }

    /// Drops stream `v` without telling L7 (which closed it).
    fn forget(&mut self, v: ConnId) {
        if let Some(st) = self.streams.remove(&v) {
            if let Some(c) = self.conns.get_mut(&st.conn) {
                c.streams.retain(|x| *x != v);
            }
            self.recycle(st);
        }
    }

    /// Keeps an ended stream's buffers for the next streams.
    fn recycle(&mut self, st: Stream) {
        let Stream { req, mut pending, big_body, .. } = st;
        keep_buf(&mut self.spare_reqs, req, SPARES);
        if self.spare_bodies.len() < SPARES && !big_body && pending.capacity() <= SPARE_BUF_MAX {
            pending.clear();
            self.spare_bodies.push(pending);
        }
    }

    /// The client's side of stream `v` is gone: L7 hears `Closed`.
    /// Forgets HTTP/2 connection `conn` and its streams (L7 hears that
    /// they are gone); false if it was not one.
    fn remove_conn(&mut self, conn: ConnId) -> bool {
        let Some(c) = self.conns.remove(&conn) else { return false };
        for v in c.streams {
            self.stream_gone(v);
        }
        true
    }

    fn stream_gone(&mut self, v: ConnId) {
        if let Some(st) = self.streams.remove(&v) {
            if let Some(c) = self.conns.get_mut(&st.conn) {
                c.streams.retain(|x| *x != v);
            }
            if !st.l7_closed {
                self.events.push(TcpEvent::Closed { conn: v, reset: true });
            }
            self.recycle(st);
        }
    }

    /// L7 wrote response bytes (HTTP/1.1) on stream `v`: parse and relay.
    fn write_response(&mut self, v: ConnId, mut data: &[u8]) -> usize {
        let Some(st) = self.streams.get_mut(&v) else { return 0 };
        if st.pending.len() >= RESP_BUF {
            st.blocked = true;
            return 0;
        }
        let total = data.len();
        while !data.is_empty() {
            match &mut st.resp {
                Resp::Head(buf) => {
                    // A head usually comes in one write: parsed where it
                    // lies. One in pieces is gathered in `buf` first.
                    let gathered;
                    let src: &[u8] = if buf.is_empty() {
                        data
                    } else {
                        buf.extend_from_slice(data);
                        gathered = std::mem::take(buf);
                        &gathered
                    };
                    data = &[];
                    let mut headers = [httparse::EMPTY_HEADER; crate::MAX_HEADERS];
                    let mut r = httparse::Response::new(&mut headers);
                    let n = match r.parse(src) {
                        Ok(httparse::Status::Complete(n)) => n,
                        Ok(httparse::Status::Partial) => {
                            buf.extend_from_slice(src);
                            break;
                        }
                        Err(_) => {
                            st.resp = Resp::Done;
                            if let Some(x) = st.respond.as_mut() {
                                x.send_reset(Reason::INTERNAL_ERROR);
                            }
                            self.stats.proxy_resets += 1;
                            break;
                        }
                    };
                    let status = r.code.unwrap_or(502);
                    if (100..200).contains(&status) {
                        // Interim responses are not relayed over HTTP/2.
                        let again = &src[n..];
                        st.resp = Resp::Head(Vec::new());
                        return total - again.len() + self.write_response(v, again);
                    }
                    // The head once in shared bytes: header values are
                    // slices of it, not copies each (header names of the
                    // standard set are not allocated either).
                    if self.heads.capacity() < n {
                        self.heads.reserve(n.max(HEADS_CHUNK));
                    }
                    self.heads.extend_from_slice(&src[..n]);
                    let head = self.heads.split().freeze();
                    let base = src.as_ptr() as usize;
                    let mut headers = http::HeaderMap::with_capacity(r.headers.len());
                    let mut body = Body::UntilClose;
                    let mut bad = false;
                    for h in r.headers.iter() {
                        let is = |n: &str| h.name.eq_ignore_ascii_case(n);
                        if is("connection")
                            || is("keep-alive")
                            || is("proxy-connection")
                            || is("upgrade")
                        {
                            continue;
                        }
                        if is("transfer-encoding") {
                            if h.value.trim_ascii().eq_ignore_ascii_case(b"chunked") {
                                body = Body::Chunked(Chunk::Size(0));
                            }
                            continue;
                        }
                        if is("content-length") {
                            let n = std::str::from_utf8(h.value)
                                .ok()
                                .and_then(|s| s.trim().parse().ok());
                            if let Some(n) = n.filter(|_| !matches!(body, Body::Chunked(_))) {
                                body = Body::Length(n);
                            }
                        }
                        // httparse's values lie inside the head; one that
                        // did not (or an empty one pointing elsewhere) is
                        // copied rather than trusted to an offset.
                        let at = (h.value.as_ptr() as usize).wrapping_sub(base);
                        let value = match at.checked_add(h.value.len()) {
                            Some(end) if end <= n => head.slice(at..end),
                            _ => Bytes::copy_from_slice(h.value),
                        };
                        match (
                            http::HeaderName::from_bytes(h.name.as_bytes()),
                            http::HeaderValue::from_maybe_shared(value),
                        ) {
                            (Ok(k), Ok(v)) => {
                                headers.append(k, v);
                            }
                            _ => bad = true,
                        }
                    }
                    if st.head_request || status == 204 || status == 304 {
                        body = Body::Length(0);
                    }
                    // A trailers-only gRPC response carries its status here.
                    if let Some(h) =
                        r.headers.iter().find(|h| h.name.eq_ignore_ascii_case("grpc-status"))
                    {
                        count_grpc_status(
                            &mut self.stats.grpc_status,
                            String::from_utf8_lossy(h.value).trim(),
                        );
                    }
                    let rest = &src[n..];
                    let status = http::StatusCode::from_u16(status);
                    let resp = match status {
                        Ok(status) if !bad => {
                            let mut resp = http::Response::new(());
                            *resp.status_mut() = status;
                            *resp.headers_mut() = headers;
                            resp
                        }
                        _ => {
                            st.resp = Resp::Done;
                            if let Some(x) = st.respond.as_mut() {
                                x.send_reset(Reason::INTERNAL_ERROR);
                            }
                            self.stats.proxy_resets += 1;
                            break;
                        }
                    };
                    let empty = body == Body::Length(0);
                    let Some(respond) = st.respond.as_mut() else { break };
                    match respond.send_response(resp, empty) {
                        Ok(s) => st.send = Some(s),
                        Err(_) => {
                            st.gone = true;
                            break;
                        }
                    }
                    st.resp = if empty { Resp::Done } else { Resp::Body(body) };
                    // The body bytes that came with the head.
                    let consumed = total - rest.len();
                    return consumed + self.write_response(v, rest);
                }
                Resp::Body(Body::Length(left)) => {
                    let n = (*left).min(data.len() as u64) as usize;
                    st.pending.extend_from_slice(&data[..n]);
                    *left -= n as u64;
                    data = &data[n..];
                    if *left == 0 {
                        st.resp = Resp::Done;
                        st.end = End::Eos;
                    }
                }
                Resp::Body(Body::UntilClose) => {
                    st.pending.extend_from_slice(data);
                    data = &[];
                }
                Resp::Body(Body::Chunked(state)) => {
                    let (used, fin) =
                        decode_chunks(state, data, &mut st.pending, &mut st.trailer_buf);
                    data = &data[used..];
                    if fin {
                        st.end = trailers(&st.trailer_buf);
                        st.resp = Resp::Done;
                    }
                }
                Resp::Done => break, // anything after the response is dropped
            }
        }
        total - data.len()
    }
}

/// Sends on `send` what its stream window allows of `pending`, then, once
/// all of it is sent, `end`: the end of the stream rides on the body's last
/// DATA frame (no empty frame behind it), trailers go after it, shown to
/// `on_trailers` first. `pending` is dropped if the stream is gone. Returns
/// whether anything was sent. (Both directions: responses to HTTP/2
/// clients, requests to HTTP/2 backends.)
pub(crate) fn send_body(
    send: &mut h2::SendStream<Bytes>,
    pending: &mut BytesMut,
    end: &mut End,
    cx: &mut Context<'_>,
    on_trailers: impl FnOnce(&http::HeaderMap),
) -> bool {
    let mut progress = false;
    while !pending.is_empty() {
        send.reserve_capacity(pending.len());
        let cap = match send.poll_capacity(cx) {
            Poll::Ready(Some(Ok(n))) => n,
            Poll::Ready(Some(Err(_))) | Poll::Ready(None) => {
                pending.clear();
                break;
            }
            Poll::Pending => 0,
        };
        if cap == 0 {
            break;
        }
        let n = cap.min(pending.len());
        let last = n == pending.len() && matches!(end, End::Eos);
        let _ = send.send_data(pending.split_to(n).freeze(), last);
        if last {
            *end = End::None;
        }
        progress = true;
    }
    if pending.is_empty() {
        match std::mem::replace(end, End::None) {
            End::None => {}
            End::Eos => {
                let _ = send.send_data(Bytes::new(), true);
                progress = true;
            }
            End::Trailers(t) => {
                on_trailers(&t);
                let _ = send.send_trailers(t);
                progress = true;
            }
        }
    }
    progress
}

/// Decodes chunked coding (already validated by the proxy) into `body`,
/// collecting the trailer section into `trailer`; returns the bytes used and
/// whether the message ended.
pub(crate) fn decode_chunks(
    state: &mut Chunk,
    data: &[u8],
    body: &mut impl BufMut,
    trailer: &mut Vec<u8>,
) -> (usize, bool) {
    let mut i = 0;
    while i < data.len() {
        let b = data[i];
        i += 1;
        *state = match *state {
            Chunk::Size(n) => match (b as char).to_digit(16) {
                Some(d) => Chunk::Size(n * 16 + u64::from(d)),
                None if b == b'\r' => Chunk::SizeLf(n),
                None => Chunk::Ext(n),
            },
            Chunk::Ext(n) if b == b'\r' => Chunk::SizeLf(n),
            Chunk::Ext(n) => Chunk::Ext(n),
            Chunk::SizeLf(0) => Chunk::Trailers,
            Chunk::SizeLf(n) => Chunk::Data(n),
            Chunk::Data(n) => {
                i -= 1;
                let take = (n.min((data.len() - i) as u64)) as usize;
                body.put_slice(&data[i..i + take]);
                i += take;
                if n == take as u64 { Chunk::DataCr } else { Chunk::Data(n - take as u64) }
            }
            Chunk::DataCr => Chunk::DataLf,
            Chunk::DataLf => Chunk::Size(0),
            Chunk::Trailers => {
                trailer.push(b);
                if trailer.as_slice() == b"\r\n" || trailer.ends_with(b"\r\n\r\n") {
                    return (i, true);
                }
                Chunk::Trailers
            }
        };
    }
    (i, false)
}

/// The trailer section of a chunked response (the lines after the last
/// chunk) as HTTP/2 trailers; none means a plain end of stream.
pub(crate) fn trailers(raw: &[u8]) -> End {
    let mut map = http::HeaderMap::new();
    for line in raw.split(|b| *b == b'\n') {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        let Some(i) = line.iter().position(|b| *b == b':') else { continue };
        let (Ok(n), Ok(v)) = (
            http::HeaderName::from_bytes(line[..i].trim_ascii()),
            http::HeaderValue::from_bytes(line[i + 1..].trim_ascii()),
        ) else {
            continue;
        };
        map.append(n, v);
    }
    if map.is_empty() { End::Eos } else { End::Trailers(map) }
}

/// L7's view of TCP with HTTP/2 streams as virtual connections: see
/// [`H2Front::wrap`].
pub struct H2Tcp<'a, T: TcpApi> {
    front: &'a mut H2Front,
    tcp: &'a mut T,
}

impl<T: TcpApi> H2Tcp<'_, T> {
    /// L7 closes or aborts `conn`: if it is a request on a backend's HTTP/2
    /// connection, the stream ends (reset if its response is not complete)
    /// and true is returned.
    fn end_upstream_stream(&mut self, conn: ConnId) -> bool {
        let Some(c) = self.front.ustreams.get(&conn).map(|u| u.conn) else { return false };
        self.front.up_close(conn);
        self.front.drive_up(c, self.tcp);
        true
    }

    /// Hands what L7 wrote on stream `v` to h2; its connection is driven at
    /// the next [`H2Front::flush`], with whatever else L7 writes on it in
    /// this turn (a response's head and body, other streams' responses).
    fn kick(&mut self, v: ConnId) {
        if let Some(conn) = self.front.streams.get(&v).map(|s| s.conn) {
            let mut cx = Context::from_waker(Waker::noop());
            self.front.push_response(v, &mut cx);
            if let Some(c) = self.front.conns.get_mut(&conn)
                && !c.written
            {
                c.written = true;
                self.front.written.push(conn);
            }
        }
    }
}

impl<T: TcpApi> TcpApi for H2Tcp<'_, T> {
    fn connect(&mut self, now: Instant, remote: SocketAddr) -> Result<ConnId, TcpError> {
        if self.front.is_h2c(remote) {
            return self.front.up_connect(now, remote, self.tcp);
        }
        self.tcp.connect(now, remote)
    }

    fn recv(&mut self, conn: ConnId, buf: &mut [u8]) -> Result<usize, TcpError> {
        if let Some(c) = self.front.ustreams.get(&conn).map(|u| u.conn) {
            let n = self.front.up_read(conn, buf)?;
            if n > 0 {
                // Room again: more of the response may come in.
                self.front.drive_up(c, self.tcp);
            }
            return Ok(n);
        }
        if virtual_id(conn) {
            let Some(st) = self.front.streams.get_mut(&conn) else {
                return Err(TcpError::NoSuchConnection);
            };
            let n = buf.len().min(st.req.len());
            buf[..n].copy_from_slice(&st.req[..n]);
            st.req.drain(..n);
            if n > 0 && st.recv.is_some() {
                // Room again: read more of the request body.
                let c = st.conn;
                let mut cx = Context::from_waker(Waker::noop());
                self.front.poll_stream(conn, &mut cx);
                self.front.drive(c, self.tcp);
            }
            return Ok(n);
        }
        if let Some(stash) = self.front.stash.get_mut(&conn) {
            let n = buf.len().min(stash.len());
            buf[..n].copy_from_slice(&stash[..n]);
            stash.drain(..n);
            if stash.is_empty() {
                self.front.stash.remove(&conn);
            }
            return Ok(n);
        }
        self.tcp.recv(conn, buf)
    }

    fn send(&mut self, conn: ConnId, data: &[u8]) -> Result<usize, TcpError> {
        if let Some(c) = self.front.ustreams.get(&conn).map(|u| u.conn) {
            let n = self.front.up_write(conn, data)?;
            self.front.drive_up(c, self.tcp);
            return Ok(n);
        }
        if !virtual_id(conn) {
            return self.tcp.send(conn, data);
        }
        if !self.front.streams.contains_key(&conn) {
            return Err(TcpError::NoSuchConnection);
        }
        let n = self.front.write_response(conn, data);
        self.kick(conn);
        Ok(n)
    }

    fn send_capacity(&self, conn: ConnId) -> usize {
        if let Some(u) = self.front.ustreams.get(&conn) {
            return (64 * 1024usize).saturating_sub(u.pending.len());
        }
        if !virtual_id(conn) {
            return self.tcp.send_capacity(conn);
        }
        self.front.streams.get(&conn).map_or(0, |s| RESP_BUF.saturating_sub(s.pending.len()))
    }

    fn send_queue(&self, conn: ConnId) -> usize {
        if let Some(u) = self.front.ustreams.get(&conn) {
            return u.pending.len();
        }
        if !virtual_id(conn) {
            return self.tcp.send_queue(conn);
        }
        self.front.streams.get(&conn).map_or(0, |s| s.pending.len())
    }

    fn close(&mut self, conn: ConnId) {
        if self.end_upstream_stream(conn) {
            return;
        }
        if !virtual_id(conn) {
            return self.tcp.close(conn);
        }
        let Some(st) = self.front.streams.get_mut(&conn) else { return };
        match st.resp {
            Resp::Body(Body::UntilClose) => {
                st.resp = Resp::Done;
                st.end = End::Eos;
            }
            Resp::Done => {}
            _ => {
                // Closed before a complete response: the stream cannot end
                // well.
                st.reset();
                st.pending.clear();
                st.end = End::None;
                self.front.stats.proxy_resets += 1;
            }
        }
        // L7 forgets the connection at `Closed`; the stream stays until its
        // response is out.
        st.l7_closed = true;
        self.front.events.push(TcpEvent::Closed { conn, reset: false });
        self.kick(conn);
    }

    fn abort(&mut self, conn: ConnId) {
        if self.end_upstream_stream(conn) {
            return;
        }
        if !virtual_id(conn) {
            return self.tcp.abort(conn);
        }
        let Some(st) = self.front.streams.get_mut(&conn) else { return };
        if !matches!(st.resp, Resp::Done) || !st.pending.is_empty() {
            st.reset();
            self.front.stats.proxy_resets += 1;
        }
        let c = st.conn;
        self.front.stream_gone(conn);
        self.front.drive(c, self.tcp);
    }

    fn state(&self, conn: ConnId) -> ConnState {
        if let Some(u) = self.front.ustreams.get(&conn) {
            return if u.connected { ConnState::Established } else { ConnState::Connecting };
        }
        if !virtual_id(conn) {
            return self.tcp.state(conn);
        }
        if self.front.streams.contains_key(&conn) {
            ConnState::Established
        } else {
            ConnState::Closed
        }
    }

    fn client_identity(&self, conn: ConnId) -> Option<&str> {
        if !virtual_id(conn) {
            return self.tcp.client_identity(conn);
        }
        self.front.streams.get(&conn).and_then(|s| self.tcp.client_identity(s.conn))
    }

    fn alpn(&self, conn: ConnId) -> Option<&[u8]> {
        if !virtual_id(conn) {
            return self.tcp.alpn(conn);
        }
        self.front.streams.get(&conn).and_then(|s| self.tcp.alpn(s.conn))
    }

    fn peer(&self, conn: ConnId) -> Option<SocketAddr> {
        if let Some(u) = self.front.ustreams.get(&conn) {
            return self.front.uconns.get(&u.conn).map(|c| c.addr);
        }
        if !virtual_id(conn) {
            return self.tcp.peer(conn);
        }
        let st = self.front.streams.get(&conn)?;
        self.front.conns.get(&st.conn).map(|c| c.peer)
    }
}

/// Counts a gRPC status; a key is made only for a status not seen before
/// (not one string per response).
fn count_grpc_status(counts: &mut std::collections::BTreeMap<String, u64>, s: &str) {
    match counts.get_mut(s) {
        Some(n) => *n += 1,
        None => {
            counts.insert(s.to_string(), 1);
        }
    }
}
