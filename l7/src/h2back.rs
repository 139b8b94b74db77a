//! HTTP/2 towards backends (h2c, prior knowledge), by the same translation
//! as the front, in the other direction: L7 opens what it takes for an
//! HTTP/1.1 upstream connection to a backend of an `h2c` pool, writes an
//! HTTP/1.1 request on it and reads an HTTP/1.1 response; underneath, the
//! request is a stream on one shared HTTP/2 connection per backend, request
//! bodies and trailers become DATA and trailers, and the response comes back
//! chunked with its trailers (gRPC's `grpc-status`) in the chunked trailer
//! section — which the front turns back into HTTP/2 trailers for an HTTP/2
//! client.

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll, Waker};

use bytes::{Bytes, BytesMut};
use h2::client::{ResponseFuture, SendRequest};
use h2::{Reason, RecvStream, SendStream};
use switchyard_stack::Instant;
use switchyard_stack::tcp::{ConnId, TcpApi, TcpError, TcpEvent};

use crate::h2front::{Chunk, End, H2Front, Pipe, PipeBufs, decode_chunks, send_body, trailers};

/// The client side of a backend's HTTP/2 connection.
pub(crate) type Handshaking = Pin<
    Box<
        dyn Future<
            Output = Result<(SendRequest<Bytes>, h2::client::Connection<Pipe, Bytes>), h2::Error>,
        >,
    >,
>;

pub(crate) enum UpPhase {
    Handshaking(Handshaking),
    Ready(SendRequest<Bytes>, Box<h2::client::Connection<Pipe, Bytes>>),
    Failed,
}

/// One backend's HTTP/2 connection.
pub(crate) struct UpConn {
    pub(crate) addr: SocketAddr,
    pub(crate) pipe: Rc<std::cell::RefCell<PipeBufs>>,
    pub(crate) phase: UpPhase,
    pub(crate) tcp_up: bool,
    pub(crate) peer_closed: bool,
    pub(crate) streams: Vec<ConnId>,
}

/// How the request L7 writes is delimited, as it is parsed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum ReqBody {
    Length(u64),
    Chunked(Chunk),
}

pub(crate) enum Req {
    /// Waiting for the request head.
    Head(Vec<u8>),
    /// Relaying the body.
    Body(ReqBody),
    /// The request is complete.
    Done,
}

/// One request: a virtual upstream connection for L7.
pub(crate) struct UStream {
    pub(crate) conn: ConnId,
    pub(crate) req: Req,
    pub(crate) head_request: bool,
    /// Request body bytes waiting for stream window, then what follows.
    pub(crate) pending: BytesMut,
    pub(crate) end: End,
    pub(crate) trailer_buf: Vec<u8>,
    pub(crate) send: Option<SendStream<Bytes>>,
    pub(crate) response: Option<ResponseFuture>,
    pub(crate) recv: Option<RecvStream>,
    /// The serialized HTTP/1.1 response L7 has not read yet.
    pub(crate) resp: Vec<u8>,
    /// The response is complete in `resp`.
    pub(crate) resp_done: bool,
    /// L7 was told `Connected`.
    pub(crate) connected: bool,
}

/// Response bytes serialized ahead of L7.
const RESP_BUF: usize = 64 * 1024;
/// Request bytes L7 may write ahead of the stream window.
const REQ_BUF: usize = 64 * 1024;

impl H2Front {
    /// Sends requests to these backends over HTTP/2 (prior knowledge).
    pub fn add_h2c_backends(&mut self, addrs: impl IntoIterator<Item = SocketAddr>) {
        self.h2c_backends.extend(addrs);
    }

    /// Whether `addr` is reached over HTTP/2.
    pub(crate) fn is_h2c(&self, addr: SocketAddr) -> bool {
        self.h2c_backends.contains(&addr)
    }

    /// L7 connects to an HTTP/2 backend: a new stream on its connection
    /// (opened now if there is none).
    pub(crate) fn up_connect<T: TcpApi>(
        &mut self,
        now: Instant,
        addr: SocketAddr,
        tcp: &mut T,
    ) -> Result<ConnId, TcpError> {
        let conn = match self.up_by_addr.get(&addr).copied() {
            Some(c) if self.uconns.get(&c).is_some_and(|u| !matches!(u.phase, UpPhase::Failed)) => {
                c
            }
            _ => {
                let c = tcp.connect(now, addr)?;
                let pipe = Rc::new(std::cell::RefCell::new(PipeBufs::default()));
                let hs: Handshaking = Box::pin(
                    h2::client::Builder::new()
                        .initial_window_size(RESP_BUF as u32)
                        .handshake::<_, Bytes>(Pipe(pipe.clone())),
                );
                self.uconns.insert(
                    c,
                    UpConn {
                        addr,
                        pipe,
                        phase: UpPhase::Handshaking(hs),
                        tcp_up: false,
                        peer_closed: false,
                        streams: Vec::new(),
                    },
                );
                self.up_by_addr.insert(addr, c);
                self.stats.upstream_connections += 1;
                c
            }
        };
        let v = self.virtual_conn();
        self.ustreams.insert(
            v,
            UStream {
                conn,
                req: Req::Head(Vec::new()),
                head_request: false,
                pending: BytesMut::new(),
                end: End::None,
                trailer_buf: Vec::new(),
                send: None,
                response: None,
                recv: None,
                resp: Vec::new(),
                resp_done: false,
                connected: false,
            },
        );
        if let Some(u) = self.uconns.get_mut(&conn) {
            u.streams.push(v);
        }
        self.stats.upstream_streams += 1;
        self.drive_up(conn, tcp);
        Ok(v)
    }

    /// TCP events of backends' HTTP/2 connections; `false` for other
    /// connections.
    pub(crate) fn up_event<T: TcpApi>(&mut self, ev: TcpEvent, tcp: &mut T) -> bool {
        let conn = match ev {
            TcpEvent::Connected { conn }
            | TcpEvent::Readable { conn }
            | TcpEvent::Writable { conn }
            | TcpEvent::PeerClosed { conn }
            | TcpEvent::Closed { conn, .. } => conn,
            TcpEvent::Accepted { .. } => return false,
        };
        let Some(u) = self.uconns.get_mut(&conn) else { return false };
        match ev {
            TcpEvent::Connected { .. } => u.tcp_up = true,
            TcpEvent::PeerClosed { .. } => u.peer_closed = true,
            TcpEvent::Closed { .. } => {
                u.phase = UpPhase::Failed;
                u.peer_closed = true;
                self.up_gone(conn);
                return true;
            }
            _ => {}
        }
        self.drive_up(conn, tcp);
        true
    }

    /// A backend connection is gone: its streams end (L7 sees the upstream
    /// close; a response not complete is a failure there).
    fn up_gone(&mut self, conn: ConnId) {
        let Some(u) = self.uconns.remove(&conn) else { return };
        if self.up_by_addr.get(&u.addr) == Some(&conn) {
            self.up_by_addr.remove(&u.addr);
        }
        for v in u.streams {
            if self.ustreams.remove(&v).is_some() {
                self.events.push(TcpEvent::Closed { conn: v, reset: true });
            }
        }
    }

    /// Moves bytes between TCP and a backend's HTTP/2 connection and polls
    /// its streams.
    pub(crate) fn drive_up<T: TcpApi>(&mut self, conn: ConnId, tcp: &mut T) {
        let mut cx = Context::from_waker(Waker::noop());
        for _ in 0..16 {
            let mut progress = false;
            let Some(u) = self.uconns.get_mut(&conn) else { return };
            if !u.tcp_up {
                return;
            }
            progress |= u.pipe.borrow_mut().fill(tcp, conn, &mut self.scratch, u.peer_closed);
            if let UpPhase::Handshaking(hs) = &mut u.phase {
                match hs.as_mut().poll(&mut cx) {
                    Poll::Ready(Ok((send, c))) => {
                        u.phase = UpPhase::Ready(send, Box::new(c));
                        progress = true;
                    }
                    Poll::Ready(Err(_)) => u.phase = UpPhase::Failed,
                    Poll::Pending => {}
                }
            }
            let mut failed = matches!(u.phase, UpPhase::Failed);
            if let UpPhase::Ready(_, c) = &mut u.phase
                && let Poll::Ready(r) = Pin::new(&mut **c).poll(&mut cx)
            {
                // The connection ended (GOAWAY and no streams left, or an
                // error).
                failed = true;
                if r.is_err() {
                    self.stats.protocol_errors += 1;
                }
            }
            let streams = u.streams.clone();
            for v in streams {
                progress |= self.poll_ustream(v, &mut cx);
            }
            let Some(u) = self.uconns.get_mut(&conn) else { return };
            if let UpPhase::Ready(_, c) = &mut u.phase {
                let _ = Pin::new(&mut **c).poll(&mut cx);
            }
            progress |= u.pipe.borrow_mut().flush(tcp, conn);
            if failed {
                tcp.abort(conn);
                self.up_gone(conn);
                return;
            }
            if !progress {
                return;
            }
        }
    }

    /// Polls one upstream stream: starts its request once the connection is
    /// ready, sends body bytes the window allows, collects the response.
    fn poll_ustream(&mut self, v: ConnId, cx: &mut Context<'_>) -> bool {
        let Some(st) = self.ustreams.get_mut(&v) else { return false };
        let Some(u) = self.uconns.get_mut(&st.conn) else { return false };
        let mut progress = false;
        if !st.connected {
            if let UpPhase::Ready(send, _) = &mut u.phase
                && send.poll_ready(cx).is_ready()
            {
                st.connected = true;
                self.events.push(TcpEvent::Connected { conn: v });
                progress = true;
            } else {
                return false;
            }
        }
        // Request body out, as the window allows.
        if let Some(send) = st.send.as_mut() {
            let before = st.pending.len();
            if send_body(send, &mut st.pending, &mut st.end, cx, |_| {}) {
                progress = true;
                if st.pending.len() < before && st.pending.len() < REQ_BUF / 2 {
                    self.events.push(TcpEvent::Writable { conn: v });
                }
            }
        }
        // The response head.
        if let Some(f) = st.response.as_mut() {
            match Pin::new(f).poll(cx) {
                Poll::Ready(Ok(resp)) => {
                    st.response = None;
                    let (parts, body) = resp.into_parts();
                    let no_body = st.head_request
                        || parts.status == http::StatusCode::NO_CONTENT
                        || parts.status == http::StatusCode::NOT_MODIFIED;
                    let r = &mut st.resp;
                    r.extend_from_slice(
                        format!(
                            "HTTP/1.1 {} {}\r\n",
                            parts.status.as_u16(),
                            parts.status.canonical_reason().unwrap_or("Status")
                        )
                        .as_bytes(),
                    );
                    for (n, val) in &parts.headers {
                        if no_body || n != http::header::CONTENT_LENGTH {
                            r.extend_from_slice(n.as_str().as_bytes());
                            r.extend_from_slice(b": ");
                            r.extend_from_slice(val.as_bytes());
                            r.extend_from_slice(b"\r\n");
                        }
                    }
                    if no_body || body.is_end_stream() {
                        if !no_body {
                            r.extend_from_slice(b"Content-Length: 0\r\n");
                        }
                        r.extend_from_slice(b"Connection: close\r\n\r\n");
                        st.resp_done = true;
                    } else {
                        r.extend_from_slice(
                            b"Transfer-Encoding: chunked\r\nConnection: close\r\n\r\n",
                        );
                        st.recv = Some(body);
                    }
                    self.events.push(TcpEvent::Readable { conn: v });
                    progress = true;
                }
                Poll::Ready(Err(_)) => {
                    // Refused or reset before a response: L7 sees the
                    // upstream fail (502, or a retry).
                    self.ustreams.remove(&v);
                    self.events.push(TcpEvent::Closed { conn: v, reset: true });
                    return true;
                }
                Poll::Pending => {}
            }
        }
        // The response body and trailers, while L7 keeps up.
        let mut readable = false;
        while st.resp.len() < RESP_BUF {
            let Some(recv) = st.recv.as_mut() else { break };
            match recv.poll_data(cx) {
                Poll::Ready(Some(Ok(d))) => {
                    let _ = recv.flow_control().release_capacity(d.len());
                    if !d.is_empty() {
                        st.resp.extend_from_slice(format!("{:x}\r\n", d.len()).as_bytes());
                        st.resp.extend_from_slice(&d);
                        st.resp.extend_from_slice(b"\r\n");
                        readable = true;
                    }
                }
                Poll::Ready(None) => {
                    let t = match recv.poll_trailers(cx) {
                        Poll::Ready(Ok(t)) => t,
                        _ => None,
                    };
                    st.resp.extend_from_slice(b"0\r\n");
                    for (n, val) in t.iter().flatten() {
                        st.resp.extend_from_slice(n.as_str().as_bytes());
                        st.resp.extend_from_slice(b": ");
                        st.resp.extend_from_slice(val.as_bytes());
                        st.resp.extend_from_slice(b"\r\n");
                    }
                    st.resp.extend_from_slice(b"\r\n");
                    st.recv = None;
                    st.resp_done = true;
                    readable = true;
                }
                Poll::Ready(Some(Err(_))) => {
                    // Reset mid-body: L7 cuts the client off.
                    self.ustreams.remove(&v);
                    self.events.push(TcpEvent::Closed { conn: v, reset: true });
                    return true;
                }
                Poll::Pending => break,
            }
        }
        if readable {
            self.events.push(TcpEvent::Readable { conn: v });
            progress = true;
        }
        progress
    }

    /// L7 writes HTTP/1.1 request bytes on upstream stream `v`.
    pub(crate) fn up_write(&mut self, v: ConnId, mut data: &[u8]) -> Result<usize, TcpError> {
        let Some(st) = self.ustreams.get_mut(&v) else { return Err(TcpError::NoSuchConnection) };
        if st.pending.len() >= REQ_BUF {
            return Ok(0);
        }
        let total = data.len();
        while !data.is_empty() {
            match &mut st.req {
                Req::Head(buf) => {
                    buf.extend_from_slice(data);
                    data = &[];
                    let mut headers = [httparse::EMPTY_HEADER; crate::MAX_HEADERS];
                    let mut r = httparse::Request::new(&mut headers);
                    let n = match r.parse(buf) {
                        Ok(httparse::Status::Complete(n)) => n,
                        Ok(httparse::Status::Partial) => break,
                        Err(_) => return Err(TcpError::InvalidState),
                    };
                    let method = r.method.unwrap_or("GET");
                    let path = r.path.unwrap_or("/");
                    let mut host = "";
                    let mut body = ReqBody::Length(0);
                    let mut builder = http::Request::builder().method(method);
                    for h in r.headers.iter() {
                        let name = h.name.to_ascii_lowercase();
                        match name.as_str() {
                            "host" => {
                                host = std::str::from_utf8(h.value).unwrap_or("");
                                continue;
                            }
                            // TE is hop-by-hop; HTTP/2 allows only
                            // `trailers`, added below (RFC 9113 8.2.2).
                            "connection" | "keep-alive" | "proxy-connection" | "upgrade" | "te" => {
                                continue;
                            }
                            "transfer-encoding" => {
                                body = ReqBody::Chunked(Chunk::Size(0));
                                continue;
                            }
                            "content-length" => {
                                let n = std::str::from_utf8(h.value)
                                    .ok()
                                    .and_then(|s| s.trim().parse().ok());
                                if let (Some(n), ReqBody::Length(_)) = (n, body) {
                                    body = ReqBody::Length(n);
                                }
                            }
                            _ => {}
                        }
                        builder = builder.header(name.as_str(), h.value);
                    }
                    // We pass trailers on both ways, and gRPC servers
                    // refuse a call without this (gRPC over HTTP/2).
                    builder = builder.header("te", "trailers");
                    let uri =
                        format!("http://{}{path}", if host.is_empty() { "backend" } else { host });
                    let head_request = method == "HEAD";
                    let rest = buf.split_off(n);
                    let Ok(req) = builder.uri(uri).body(()) else {
                        return Err(TcpError::InvalidState);
                    };
                    let eos = body == ReqBody::Length(0);
                    let Some(u) = self.uconns.get_mut(&st.conn) else {
                        return Err(TcpError::NoSuchConnection);
                    };
                    let UpPhase::Ready(send, _) = &mut u.phase else {
                        return Err(TcpError::InvalidState);
                    };
                    let (resp, stream) =
                        send.send_request(req, eos).map_err(|_| TcpError::InvalidState)?;
                    st.response = Some(resp);
                    st.send = Some(stream);
                    st.head_request = head_request;
                    st.req = if eos { Req::Done } else { Req::Body(body) };
                    let consumed = total - rest.len();
                    return Ok(consumed + self.up_write(v, &rest)?);
                }
                Req::Body(ReqBody::Length(left)) => {
                    let n = (*left).min(data.len() as u64) as usize;
                    st.pending.extend_from_slice(&data[..n]);
                    *left -= n as u64;
                    data = &data[n..];
                    if *left == 0 {
                        st.req = Req::Done;
                        st.end = End::Eos;
                    }
                }
                Req::Body(ReqBody::Chunked(state)) => {
                    let (used, fin) =
                        decode_chunks(state, data, &mut st.pending, &mut st.trailer_buf);
                    data = &data[used..];
                    if fin {
                        st.end = trailers(&st.trailer_buf);
                        st.req = Req::Done;
                    }
                }
                Req::Done => break,
            }
        }
        Ok(total - data.len())
    }

    /// L7 reads the serialized response of upstream stream `v`.
    pub(crate) fn up_read(&mut self, v: ConnId, buf: &mut [u8]) -> Result<usize, TcpError> {
        let Some(st) = self.ustreams.get_mut(&v) else { return Err(TcpError::NoSuchConnection) };
        let n = buf.len().min(st.resp.len());
        buf[..n].copy_from_slice(&st.resp[..n]);
        st.resp.drain(..n);
        Ok(n)
    }

    /// L7 closes or aborts upstream stream `v`.
    pub(crate) fn up_close(&mut self, v: ConnId) {
        if let Some(mut st) = self.ustreams.remove(&v) {
            if let Some(s) = st.send.as_mut().filter(|_| !st.resp_done) {
                s.send_reset(Reason::CANCEL);
            }
            if let Some(u) = self.uconns.get_mut(&st.conn) {
                u.streams.retain(|x| *x != v);
            }
        }
    }
}
