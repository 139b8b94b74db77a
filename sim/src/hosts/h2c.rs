//! HTTP/2 (RFC 9113) for the simulated client, with prior knowledge over
//! cleartext (h2c) or over TLS with ALPN `h2`: the `h2` crate's client, polled
//! with a no-op waker over an in-memory pipe the session fills from and drains
//! to its smoltcp socket (through a rustls client connection for TLS), so no
//! thread and no runtime. One request is in flight per connection at a time,
//! as with HTTP/1.1 keep-alive; [`super::http::Client`] does the rest.

use std::cell::RefCell;
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll, Waker};

use bytes::Bytes;
use h2::RecvStream;
use h2::client::{Connection, ResponseFuture, SendRequest};
use smoltcp::socket::tcp;

use super::http::{Client, Exchange, Response, Session};
use super::tls::{ClientTls, TlsUnder};

/// The bytes between one connection's `h2` state and its socket during one
/// turn. All connections of a client share it: a turn fills it with what the
/// socket has, polls `h2`, and empties it again (what is left over waits in the
/// connection's own spill buffers, which are usually empty).
#[derive(Default)]
struct Bufs {
    rx: Vec<u8>,
    rx_off: usize,
    tx: Vec<u8>,
}

struct Pipe(Rc<RefCell<Bufs>>);

impl tokio::io::AsyncRead for Pipe {
    fn poll_read(
        self: Pin<&mut Self>,
        _: &mut Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let mut p = self.0.borrow_mut();
        let avail = p.rx.len() - p.rx_off;
        if avail == 0 {
            return Poll::Pending;
        }
        let n = avail.min(buf.remaining());
        let off = p.rx_off;
        buf.put_slice(&p.rx[off..off + n]);
        p.rx_off += n;
        Poll::Ready(Ok(()))
    }
}

impl tokio::io::AsyncWrite for Pipe {
    fn poll_write(self: Pin<&mut Self>, _: &mut Context<'_>, d: &[u8]) -> Poll<io::Result<usize>> {
        self.0.borrow_mut().tx.extend_from_slice(d);
        Poll::Ready(Ok(d.len()))
    }

    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

/// What all HTTP/2 connections of one client share.
pub struct H2Shared {
    pipe: Rc<RefCell<Bufs>>,
    /// Each path's request URI (`http://target/path`, `https://` over TLS).
    uris: Vec<http::Uri>,
    /// HTTP/2 over TLS: the client configuration (offering ALPN `h2`) and
    /// the name sent and verified.
    tls: Option<ClientTls>,
}

/// The response being read: its head, and how much of the body matched.
struct Body {
    status: u16,
    backend: String,
    stream: RecvStream,
    /// Body bytes received.
    len: usize,
    /// Every byte so far was the expected one.
    ok: bool,
}

/// HTTP/2 on one connection: the `h2` client and the request in flight.
pub struct Http2 {
    send: SendRequest<Bytes>,
    conn: Connection<Pipe, Bytes>,
    response: Option<ResponseFuture>,
    body: Option<Body>,
    /// Bytes received since the last response.
    wire: u64,
    /// Received bytes `h2` has not read yet.
    rx_spill: Vec<u8>,
    /// Bytes `h2` wrote that the socket has not taken yet (cleartext; over
    /// TLS rustls takes them all).
    tx_spill: Vec<u8>,
    /// Over TLS: the TLS between socket and pipe.
    tls: Option<TlsUnder>,
}

/// An HTTP/2 load generator: h2c with prior knowledge, or over TLS with ALPN
/// `h2` when its configuration has TLS.
pub type H2Client = Client<Http2>;

impl Http2 {
    /// Polls the connection: reads frames, writes what is due. False once
    /// the connection has ended (error or GOAWAY).
    fn drive(&mut self, cx: &mut Context<'_>) -> bool {
        Pin::new(&mut self.conn).poll(cx).is_pending()
    }

    /// Starts a turn: the bytes waiting and what the socket has go into the
    /// pipe. False if TLS under it has failed.
    fn begin(
        &mut self,
        p: &RefCell<Bufs>,
        sock: &mut tcp::Socket<'static>,
        scratch: &mut [u8],
    ) -> bool {
        let mut p = p.borrow_mut();
        p.rx.clear();
        p.rx_off = 0;
        p.tx.clear();
        let spill = std::mem::take(&mut self.rx_spill);
        p.rx.extend_from_slice(&spill);
        if let Some(t) = &mut self.tls {
            return t.recv(sock, scratch, &mut p.rx, &mut self.wire);
        }
        while sock.can_recv() {
            match sock.recv_slice(scratch) {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    p.rx.extend_from_slice(&scratch[..n]);
                    self.wire += n as u64;
                }
            }
        }
        true
    }

    /// Ends a turn: what `h2` wrote goes to the socket as far as it takes it,
    /// the rest (and anything `h2` did not read) waits in the spill buffers.
    /// False if TLS under it has failed.
    fn end(&mut self, p: &RefCell<Bufs>, sock: &mut tcp::Socket<'static>) -> bool {
        let mut p = p.borrow_mut();
        if p.rx_off < p.rx.len() {
            self.rx_spill.extend_from_slice(&p.rx[p.rx_off..]);
        }
        p.rx.clear();
        p.rx_off = 0;
        if let Some(t) = &mut self.tls {
            let ok = t.send(sock, &p.tx);
            p.tx.clear();
            return ok;
        }
        if self.tx_spill.is_empty() {
            let n = if sock.may_send() { sock.send_slice(&p.tx).unwrap_or(0) } else { 0 };
            if n < p.tx.len() {
                self.tx_spill.extend_from_slice(&p.tx[n..]);
            }
        } else {
            self.tx_spill.extend_from_slice(&p.tx);
            let n = if sock.may_send() { sock.send_slice(&self.tx_spill).unwrap_or(0) } else { 0 };
            self.tx_spill.drain(..n);
            if self.tx_spill.is_empty() {
                self.tx_spill = Vec::new();
            }
        }
        p.tx.clear();
        true
    }

    /// Reads the response in flight as far as it has arrived.
    fn read_response(&mut self, cx: &mut Context<'_>, expected: &[u8]) -> Exchange {
        if let Some(f) = self.response.as_mut() {
            match Pin::new(f).poll(cx) {
                Poll::Pending => return Exchange::Pending,
                Poll::Ready(Err(_)) => return Exchange::Broken,
                Poll::Ready(Ok(resp)) => {
                    self.response = None;
                    let backend = resp
                        .headers()
                        .get("x-backend")
                        .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
                        .unwrap_or_else(|| "?".to_string());
                    let status = resp.status().as_u16();
                    self.body =
                        Some(Body { status, backend, stream: resp.into_body(), len: 0, ok: true });
                }
            }
        }
        let Some(b) = self.body.as_mut() else { return Exchange::Pending };
        loop {
            match b.stream.poll_data(cx) {
                Poll::Pending => return Exchange::Pending,
                Poll::Ready(Some(Err(_))) => return Exchange::Broken,
                Poll::Ready(Some(Ok(d))) => {
                    b.ok &= expected.get(b.len..b.len + d.len()) == Some(&d[..]);
                    b.len += d.len();
                    // Give the window back, or the connection stalls after
                    // 64 KiB of bodies.
                    let _ = b.stream.flow_control().release_capacity(d.len());
                }
                Poll::Ready(None) => break,
            }
        }
        let Some(b) = self.body.take() else { return Exchange::Pending };
        let bytes = std::mem::take(&mut self.wire);
        Exchange::Response(Response {
            status: b.status,
            backend: b.backend,
            body_ok: b.ok && b.len == expected.len(),
            bytes,
            keep: b.status == 200,
        })
    }
}

impl Session for Http2 {
    type Shared = H2Shared;

    fn shared(cfg: &super::http::HttpClientConfig, paths: &[String]) -> H2Shared {
        let target = cfg.target;
        let scheme = if cfg.tls.is_some() { "https" } else { "http" };
        let uris = paths
            .iter()
            .map(|p| {
                // A path that is no URI is asked for as `/`: its bodies then
                // count as wrong, not as silently skipped.
                format!("{scheme}://{target}{p}")
                    .parse()
                    .unwrap_or_else(|_| http::Uri::from_static("/"))
            })
            .collect();
        H2Shared { pipe: Rc::new(RefCell::new(Bufs::default())), uris, tls: cfg.tls.clone() }
    }

    fn open(shared: &H2Shared) -> Option<Http2> {
        let mut cx = Context::from_waker(Waker::noop());
        let mut hs = Box::pin(
            h2::client::Builder::new()
                .enable_push(false)
                .handshake::<_, Bytes>(Pipe(shared.pipe.clone())),
        );
        // Writing the preface and SETTINGS to the pipe is all a client's
        // handshake does: it completes at once.
        let Poll::Ready(Ok((send, conn))) = hs.as_mut().poll(&mut cx) else {
            shared.pipe.borrow_mut().tx.clear();
            return None;
        };
        let preface = std::mem::take(&mut shared.pipe.borrow_mut().tx);
        // Over TLS the preface waits in rustls for the handshake.
        let (tls, tx_spill) = match &shared.tls {
            None => (None, preface),
            Some((cfg, name)) => {
                let mut tls = TlsUnder::new(cfg, name)?;
                tls.write(&preface).then_some(())?;
                (Some(tls), Vec::new())
            }
        };
        Some(Http2 {
            send,
            conn,
            response: None,
            body: None,
            wire: 0,
            rx_spill: Vec::new(),
            tx_spill,
            tls,
        })
    }

    fn exchange(
        &mut self,
        shared: &H2Shared,
        sock: &mut tcp::Socket<'static>,
        scratch: &mut [u8],
        expected: Option<&[u8]>,
    ) -> Exchange {
        // Nothing came and nothing waits to go: `h2` has nothing to act on
        // (the client sets no timers), so it is not polled.
        let tls_idle = self.tls.as_ref().is_none_or(|t| !t.sending() && !t.closed());
        if self.rx_spill.is_empty() && self.tx_spill.is_empty() && tls_idle && !sock.can_recv() {
            return Exchange::Pending;
        }
        let mut cx = Context::from_waker(Waker::noop());
        if !self.begin(&shared.pipe, sock, scratch) {
            self.end(&shared.pipe, sock);
            return Exchange::Broken;
        }
        let mut out = if self.drive(&mut cx) { Exchange::Pending } else { Exchange::Broken };
        if let (Exchange::Pending, Some(expected)) = (&out, expected) {
            out = self.read_response(&mut cx, expected);
            // Window updates for the body just read.
            if !self.drive(&mut cx) && matches!(out, Exchange::Pending) {
                out = Exchange::Broken;
            }
        }
        if !self.end(&shared.pipe, sock) {
            return Exchange::Broken;
        }
        match &self.tls {
            Some(t) => t.unless_closed(out),
            None => out,
        }
    }

    fn send(&mut self, shared: &H2Shared, path: usize, sock: &mut tcp::Socket<'static>) -> bool {
        // Not once the server has closed TLS.
        if self.tls.as_ref().is_some_and(TlsUnder::closed) {
            return false;
        }
        let mut cx = Context::from_waker(Waker::noop());
        if !matches!(self.send.poll_ready(&mut cx), Poll::Ready(Ok(()))) {
            return false;
        }
        let Ok(req) = http::Request::get(shared.uris[path].clone())
            .header("user-agent", "switchyard-sim")
            .body(())
        else {
            return false;
        };
        let Ok((response, _)) = self.send.send_request(req, true) else { return false };
        self.response = Some(response);
        {
            let mut p = shared.pipe.borrow_mut();
            p.rx.clear();
            p.rx_off = 0;
            p.tx.clear();
        }
        self.drive(&mut cx);
        self.end(&shared.pipe, sock)
    }
}
