//! An in-memory [`TcpApi`] for tests of the layers above TCP (TLS, HTTP/2,
//! L7): the test plays every peer, byte by byte, and sees what each side
//! received and how each connection ended. Built with the `fake` feature.

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;

use crate::Instant;
use crate::tcp::{ConnId, ConnState, TcpApi, TcpError};

/// One connection: what the peer sent (for the layer above to `recv`),
/// what the layer above sent, and how it ended.
pub struct Conn {
    /// The peer.
    pub remote: SocketAddr,
    /// Its state (until closed or aborted).
    pub state: Option<ConnState>,
    /// Bytes the peer sent, not yet received by the layer above.
    pub to_l7: VecDeque<u8>,
    /// Bytes the layer above sent, not yet taken by the test.
    pub sent: Vec<u8>,
    /// Most bytes `sent` may hold (the peer's window).
    pub window: usize,
    /// The layer above closed it.
    pub closed: bool,
    /// The layer above reset it.
    pub aborted: bool,
}

/// A TCP whose peers are the test: it moves bytes by hand.
#[derive(Default)]
pub struct FakeTcp {
    /// Every connection.
    pub conns: HashMap<ConnId, Conn>,
    /// The last id handed out.
    pub next: u32,
    /// Connections opened by the layer above, not yet completed by the
    /// test.
    pub connects: Vec<ConnId>,
    /// `connect` fails at once.
    pub refuse: bool,
    /// Client certificate subjects, as a TLS layer would report them.
    pub identities: HashMap<ConnId, String>,
    /// What `alpn` returns per connection, as a TLS layer would.
    pub alpns: HashMap<ConnId, Vec<u8>>,
}

impl FakeTcp {
    /// A connection to or from `remote` in `state`.
    pub fn new_conn(&mut self, remote: SocketAddr, state: ConnState) -> ConnId {
        self.next += 1;
        let id = ConnId { slot: self.next, generation: 0 };
        self.conns.insert(
            id,
            Conn {
                remote,
                state: Some(state),
                to_l7: VecDeque::new(),
                sent: Vec::new(),
                window: usize::MAX,
                closed: false,
                aborted: false,
            },
        );
        id
    }
    /// Feeds `bytes` from the peer of `conn`.
    pub fn peer_sends(&mut self, conn: ConnId, bytes: &[u8]) {
        self.c(conn).to_l7.extend(bytes.iter().copied());
    }

    /// Takes what the layer above sent on `conn`.
    pub fn take(&mut self, conn: ConnId) -> Vec<u8> {
        std::mem::take(&mut self.c(conn).sent)
    }

    /// Connection `id` (panics if there is none).
    pub fn c(&mut self, id: ConnId) -> &mut Conn {
        self.conns.get_mut(&id).expect("conn")
    }
}

impl TcpApi for FakeTcp {
    fn connect(&mut self, _now: Instant, remote: SocketAddr) -> Result<ConnId, TcpError> {
        if self.refuse {
            return Err(TcpError::NoLocalPort);
        }
        let id = self.new_conn(remote, ConnState::Connecting);
        self.connects.push(id);
        Ok(id)
    }
    fn recv(&mut self, conn: ConnId, buf: &mut [u8]) -> Result<usize, TcpError> {
        let c = self.conns.get_mut(&conn).ok_or(TcpError::NoSuchConnection)?;
        let n = buf.len().min(c.to_l7.len());
        for (i, b) in c.to_l7.drain(..n).enumerate() {
            buf[i] = b;
        }
        Ok(n)
    }
    fn send(&mut self, conn: ConnId, data: &[u8]) -> Result<usize, TcpError> {
        let c = self.conns.get_mut(&conn).ok_or(TcpError::NoSuchConnection)?;
        if c.closed || c.aborted {
            return Err(TcpError::InvalidState);
        }
        let n = data.len().min(c.window.saturating_sub(c.sent.len()));
        c.sent.extend_from_slice(&data[..n]);
        Ok(n)
    }
    fn send_capacity(&self, conn: ConnId) -> usize {
        self.conns.get(&conn).map_or(0, |c| c.window.saturating_sub(c.sent.len()))
    }
    fn send_queue(&self, _conn: ConnId) -> usize {
        0
    }
    fn close(&mut self, conn: ConnId) {
        if let Some(c) = self.conns.get_mut(&conn) {
            c.closed = true;
        }
    }
    fn abort(&mut self, conn: ConnId) {
        if let Some(c) = self.conns.get_mut(&conn) {
            c.aborted = true;
        }
    }
    fn state(&self, conn: ConnId) -> ConnState {
        match self.conns.get(&conn) {
            Some(c) if c.closed || c.aborted => ConnState::Closed,
            Some(c) => c.state.unwrap_or(ConnState::Closed),
            None => ConnState::Closed,
        }
    }
    fn client_identity(&self, conn: ConnId) -> Option<&str> {
        self.identities.get(&conn).map(String::as_str)
    }
    fn alpn(&self, conn: ConnId) -> Option<&[u8]> {
        self.alpns.get(&conn).map(Vec::as_slice)
    }

    fn peer(&self, conn: ConnId) -> Option<SocketAddr> {
        self.conns.get(&conn).map(|c| c.remote)
    }
}
