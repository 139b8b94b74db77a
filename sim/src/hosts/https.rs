//! HTTP/1.1 over TLS for the simulated client: a rustls client connection
//! between each [`super::http::Client`] connection's smoltcp socket and the
//! HTTP/1.1 reading and writing of [`super::http::Http1`], so the load
//! balancer's TLS termination is driven by a real TLS client on the
//! simulated network.

use smoltcp::socket::tcp;

use super::http::{Client, Exchange, HttpClientConfig, Session, read_response, request_heads};
use super::tls::{ClientTls, TlsUnder};

/// What all HTTPS connections of one client share.
pub struct HttpsShared {
    heads: Vec<Vec<u8>>,
    tls: Option<ClientTls>,
}

/// One HTTPS connection: its TLS, and the plaintext response bytes read so
/// far.
pub struct Https1 {
    tls: TlsUnder,
    inbuf: Vec<u8>,
}

impl Session for Https1 {
    type Shared = HttpsShared;

    fn shared(cfg: &HttpClientConfig, paths: &[String]) -> HttpsShared {
        HttpsShared { heads: request_heads(cfg.target, paths), tls: cfg.tls.clone() }
    }

    fn open(shared: &HttpsShared) -> Option<Https1> {
        let (cfg, name) = shared.tls.as_ref()?;
        Some(Https1 { tls: TlsUnder::new(cfg, name)?, inbuf: Vec::new() })
    }

    fn exchange(
        &mut self,
        _: &HttpsShared,
        sock: &mut tcp::Socket<'static>,
        scratch: &mut [u8],
        expected: Option<&[u8]>,
    ) -> Exchange {
        // (The responses' sizes are counted from their plaintext.)
        let mut records = 0;
        if !self.tls.recv(sock, scratch, &mut self.inbuf, &mut records) {
            return Exchange::Broken;
        }
        // The handshake's answers, key updates, and what `send` queued.
        if !self.tls.send(sock, &[]) {
            return Exchange::Broken;
        }
        let out = match expected {
            Some(expected) => read_response(&mut self.inbuf, expected),
            None => Exchange::Pending,
        };
        self.tls.unless_closed(out)
    }

    fn send(&mut self, shared: &HttpsShared, path: usize, sock: &mut tcp::Socket<'static>) -> bool {
        // One request at a time: not while the last one's records wait.
        // Before the handshake is done rustls keeps the request and sends
        // it once it is.
        // Nor once the server has closed TLS.
        if self.tls.sending() || self.tls.closed() {
            return false;
        }
        self.tls.send(sock, &shared.heads[path])
    }
}

/// An HTTPS (HTTP/1.1 over TLS) keep-alive load generator.
pub type HttpsClient = Client<Https1>;
