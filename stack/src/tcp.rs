//! TCP termination (RFC 9293) on smoltcp: the interface the L7 layer drives.
//!
//! Connections are named by [`ConnId`] handles; the terminator reports what
//! happened to them as [`TcpEvent`]s after each poll. The [`TcpApi`] trait is
//! what L7 is written against, so it can be driven by the sharded smoltcp
//! terminator or by anything else that keeps the same promises.

use std::net::SocketAddr;

use crate::Instant;
use crate::ListenerId;

/// A handle to one terminated TCP connection. Handles are never reused while the
/// connection they name is still reported to the user: a stale handle gives
/// [`TcpError::NoSuchConnection`], never another connection's data.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ConnId {
    /// Slot in the connection table.
    pub slot: u32,
    /// Generation of that slot.
    pub generation: u32,
}

/// Something that happened to a connection, reported after a poll.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TcpEvent {
    /// A client's connection to a listener completed its handshake.
    Accepted {
        /// The new connection.
        conn: ConnId,
        /// The listener it arrived on.
        listener: ListenerId,
        /// The client.
        peer: SocketAddr,
        /// The listener's address.
        local: SocketAddr,
    },
    /// An outgoing connection made by `connect` is established.
    Connected {
        /// The connection.
        conn: ConnId,
    },
    /// Data is waiting to be read (reported after every poll while it is).
    Readable {
        /// The connection.
        conn: ConnId,
    },
    /// Send buffer space opened after a `send` that could not take everything.
    Writable {
        /// The connection.
        conn: ConnId,
    },
    /// The peer sent FIN and all its data has been read.
    PeerClosed {
        /// The connection.
        conn: ConnId,
    },
    /// The connection is gone (closed, reset, refused or timed out); its handle is
    /// invalid from now on.
    Closed {
        /// The connection.
        conn: ConnId,
        /// True if it ended by reset, refusal or timeout rather than an orderly close.
        reset: bool,
    },
}

/// The state of a connection as L7 sees it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ConnState {
    /// `connect` was called; the handshake has not completed.
    Connecting,
    /// Data may flow both ways.
    Established,
    /// The peer sent FIN; we may still send.
    PeerClosed,
    /// We closed; waiting for the connection to finish.
    Closing,
    /// Gone.
    Closed,
}

/// Errors of the TCP interface.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum TcpError {
    /// The handle names no live connection.
    #[error("no such connection")]
    NoSuchConnection,
    /// The connection cannot carry data in its current state.
    #[error("connection is not open for this operation")]
    InvalidState,
    /// No local port is free for a new upstream connection.
    #[error("no free local port")]
    NoLocalPort,
    /// The connection table is full.
    #[error("connection table full")]
    TableFull,
    /// No local address can reach the destination.
    #[error("no local address for destination")]
    Unroutable,
}

/// What L7 needs from TCP termination.
pub trait TcpApi {
    /// Opens a connection to `remote` from a local interface address and a free
    /// ephemeral port. `Connected` or `Closed` follows.
    fn connect(&mut self, now: Instant, remote: SocketAddr) -> Result<ConnId, TcpError>;
    /// Reads received bytes into `buf`; `Ok(0)` when none are waiting.
    fn recv(&mut self, conn: ConnId, buf: &mut [u8]) -> Result<usize, TcpError>;
    /// Queues bytes to send; returns how many were taken (possibly fewer than
    /// given, then `Writable` follows when space opens).
    fn send(&mut self, conn: ConnId, data: &[u8]) -> Result<usize, TcpError>;
    /// Bytes `send` would accept now.
    fn send_capacity(&self, conn: ConnId) -> usize;
    /// Bytes queued but not yet acknowledged by the peer.
    fn send_queue(&self, conn: ConnId) -> usize;
    /// Closes gracefully: FIN after queued data.
    fn close(&mut self, conn: ConnId);
    /// Resets the connection at once.
    fn abort(&mut self, conn: ConnId);
    /// The connection's state; `Closed` for unknown handles.
    fn state(&self, conn: ConnId) -> ConnState;
    /// The remote address of a connection.
    fn peer(&self, conn: ConnId) -> Option<SocketAddr>;
    /// The subject of the certificate the client presented and a TLS layer
    /// verified (mutual TLS), as an RFC 4514 string; `None` without one.
    fn client_identity(&self, conn: ConnId) -> Option<&str> {
        let _ = conn;
        None
    }
    /// The application protocol a TLS layer agreed with the client by ALPN
    /// (RFC 7301: `h2`, `http/1.1`); `None` without TLS or without ALPN.
    fn alpn(&self, conn: ConnId) -> Option<&[u8]> {
        let _ = conn;
        None
    }
}
