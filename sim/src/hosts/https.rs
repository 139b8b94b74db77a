//! HTTP/1.1 over TLS for the simulated client: a rustls client connection
//! between each [`super::http::Client`] connection's smoltcp socket and the
//! HTTP/1.1 reading and writing of [`super::http::Http1`], so the load
//! balancer's TLS termination is driven by a real TLS client on the
//! simulated network.

use std::io::{Read, Write};
use std::sync::Arc;

use rustls::ClientConnection;
use rustls::pki_types::ServerName;
use smoltcp::socket::tcp;

use super::http::{Client, Exchange, HttpClientConfig, Session, read_response, request_heads};

/// What all HTTPS connections of one client share.
pub struct HttpsShared {
    heads: Vec<Vec<u8>>,
    tls: Option<(Arc<rustls::ClientConfig>, ServerName<'static>)>,
}

/// One HTTPS connection: its TLS state, the ciphertext the socket has not
/// taken yet, and the plaintext response bytes read so far.
pub struct Https1 {
    tls: ClientConnection,
    out: Vec<u8>,
    inbuf: Vec<u8>,
}

impl Https1 {
    /// Hands what TLS has to send to the socket, as much as it takes.
    fn flush(&mut self, sock: &mut tcp::Socket<'static>) -> bool {
        while self.tls.wants_write() {
            if self.tls.write_tls(&mut self.out).is_err() {
                return false;
            }
        }
        // Before the TCP handshake is done the records wait here.
        if !self.out.is_empty() && sock.may_send() {
            match sock.send_slice(&self.out) {
                Ok(n) => {
                    self.out.drain(..n);
                }
                Err(_) => return false,
            }
        }
        true
    }
}

impl Session for Https1 {
    type Shared = HttpsShared;

    fn shared(cfg: &HttpClientConfig, paths: &[String]) -> HttpsShared {
        HttpsShared { heads: request_heads(cfg.target, paths), tls: cfg.tls.clone() }
    }

    fn open(shared: &HttpsShared) -> Option<Https1> {
        let (cfg, name) = shared.tls.as_ref()?;
        let tls = ClientConnection::new(cfg.clone(), name.clone()).ok()?;
        Some(Https1 { tls, out: Vec::new(), inbuf: Vec::new() })
    }

    fn exchange(
        &mut self,
        _: &HttpsShared,
        sock: &mut tcp::Socket<'static>,
        scratch: &mut [u8],
        expected: Option<&[u8]>,
    ) -> Exchange {
        while sock.can_recv() {
            let n = match sock.recv_slice(scratch) {
                Ok(0) | Err(_) => break,
                Ok(n) => n,
            };
            let mut rd = &scratch[..n];
            while !rd.is_empty() {
                if self.tls.read_tls(&mut rd).is_err() || self.tls.process_new_packets().is_err() {
                    return Exchange::Broken;
                }
                let mut plain = [0u8; 4096];
                loop {
                    match self.tls.reader().read(&mut plain) {
                        Ok(0) => return Exchange::Broken, // close_notify
                        Ok(k) => self.inbuf.extend_from_slice(&plain[..k]),
                        Err(_) => break, // nothing more yet
                    }
                }
            }
        }
        // The handshake's answers, key updates, and what `send` queued.
        if !self.flush(sock) {
            return Exchange::Broken;
        }
        let Some(expected) = expected else { return Exchange::Pending };
        read_response(&mut self.inbuf, expected)
    }

    fn send(&mut self, shared: &HttpsShared, path: usize, sock: &mut tcp::Socket<'static>) -> bool {
        // Before the handshake is done rustls keeps the request and sends
        // it once it is; the socket takes the records as it can.
        if !self.out.is_empty() {
            return false;
        }
        if self.tls.writer().write_all(&shared.heads[path]).is_err() {
            return false;
        }
        self.flush(sock)
    }
}

/// An HTTPS (HTTP/1.1 over TLS) keep-alive load generator.
pub type HttpsClient = Client<Https1>;
