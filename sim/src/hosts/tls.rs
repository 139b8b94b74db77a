//! TLS under a simulated client's HTTP: a rustls client connection between
//! one connection's smoltcp socket and its plaintext, for the HTTPS
//! ([`super::https`]) and HTTP/2-over-TLS ([`super::h2c`]) clients.

use std::io::{Read, Write};
use std::sync::Arc;

use rustls::ClientConnection;
use rustls::pki_types::ServerName;
use smoltcp::socket::tcp;

use super::http::Exchange;

/// A client's TLS: its rustls configuration, and the server name it asks
/// for and verifies.
pub type ClientTls = (Arc<rustls::ClientConfig>, ServerName<'static>);

/// One connection's TLS: the rustls client, and the records the socket has
/// not taken yet.
pub(crate) struct TlsUnder {
    tls: ClientConnection,
    out: Vec<u8>,
    /// The server sent `close_notify`: what came before it has been read.
    closed: bool,
    /// The client offers protocols by ALPN.
    offers_alpn: bool,
}

impl TlsUnder {
    /// A client for `name`; `None` if rustls refuses the configuration.
    /// Plaintext written before the handshake is done waits in rustls, with
    /// no limit (the clients write little).
    pub(crate) fn new(cfg: &Arc<rustls::ClientConfig>, name: &ServerName<'static>) -> Option<Self> {
        let mut tls = ClientConnection::new(cfg.clone(), name.clone()).ok()?;
        tls.set_buffer_limit(None);
        let offers_alpn = !cfg.alpn_protocols.is_empty();
        Some(TlsUnder { tls, out: Vec::new(), closed: false, offers_alpn })
    }

    /// What the socket has, opened and appended to `into`; `wire` counts
    /// the records' bytes. False once TLS has failed or the handshake
    /// agreed on no protocol of those the client offered by ALPN (so that
    /// it does not speak one the server did not agree to). A
    /// `close_notify` is not a failure here: the plaintext before it is
    /// appended, and [`TlsUnder::closed`] says so afterwards.
    pub(crate) fn recv(
        &mut self,
        sock: &mut tcp::Socket<'static>,
        scratch: &mut [u8],
        into: &mut Vec<u8>,
        wire: &mut u64,
    ) -> bool {
        while !self.closed && sock.can_recv() {
            let n = match sock.recv_slice(scratch) {
                Ok(0) | Err(_) => break,
                Ok(n) => n,
            };
            *wire += n as u64;
            let mut rd = &scratch[..n];
            while !rd.is_empty() && !self.closed {
                if self.tls.read_tls(&mut rd).is_err() || self.tls.process_new_packets().is_err() {
                    return false;
                }
                let mut plain = [0u8; 4096];
                loop {
                    match self.tls.reader().read(&mut plain) {
                        Ok(0) => {
                            self.closed = true;
                            break;
                        }
                        Ok(k) => into.extend_from_slice(&plain[..k]),
                        Err(_) => break, // nothing more yet
                    }
                }
            }
        }
        self.tls.is_handshaking() || !self.offers_alpn || self.tls.alpn_protocol().is_some()
    }

    /// The server has closed TLS (`close_notify`).
    pub(crate) fn closed(&self) -> bool {
        self.closed
    }

    /// `out`, the turn's exchange, unless the server closed TLS with no
    /// response ready: a response it closed behind still counts.
    pub(crate) fn unless_closed(&self, out: Exchange) -> Exchange {
        match out {
            Exchange::Pending if self.closed => Exchange::Broken,
            out => out,
        }
    }

    /// Records wait for the socket, or rustls has some to write.
    pub(crate) fn sending(&self) -> bool {
        !self.out.is_empty() || self.tls.wants_write()
    }

    /// `plain` for rustls to send, all of it (before the handshake is done
    /// it keeps it). False if rustls refused it.
    pub(crate) fn write(&mut self, plain: &[u8]) -> bool {
        plain.is_empty() || self.tls.writer().write_all(plain).is_ok()
    }

    /// `plain` to send ([`TlsUnder::write`]), and the socket takes the
    /// records as far as it can; an empty `plain` just moves what waits
    /// (the handshake, key updates). False if rustls or the socket failed.
    pub(crate) fn send(&mut self, sock: &mut tcp::Socket<'static>, plain: &[u8]) -> bool {
        if !self.write(plain) {
            return false;
        }
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
