//! A terminated TLS connection in its two lives. The handshake runs on the
//! crypto engine through rustls's unbuffered API ([`server_step`]); once it
//! is done rustls hands over the traffic secrets, and the worker seals and
//! opens records itself ([`Session`], with [`crate::record`]). rustls's
//! kernel connection stays for what remains of the protocol: new keys on a
//! TLS 1.3 `KeyUpdate` (RFC 8446 4.6.3).
//!
//! This is the only module that knows rustls's unbuffered and kernel APIs,
//! which change between releases.

use rustls::AlertDescription;
use rustls::kernel::KernelConnection;
use rustls::pki_types::CertificateDer;
use rustls::server::{ServerConnectionData, UnbufferedServerConnection};
use rustls::unbuffered::{ConnectionState, EncodeError, UnbufferedStatus};

use crate::record::{Keys, MAX_PLAIN, MAX_RECORD, RecordError, Version, content};

/// A server handshake between engine steps.
pub(crate) struct ServerHs {
    conn: UnbufferedServerConnection,
    /// Bytes from the client that rustls has not consumed yet (part of a
    /// record, or of a handshake message spread over records), and behind
    /// them records not yet shown to rustls.
    rest: Vec<u8>,
    /// rustls sees `rest[..given]`: up to the end of the record it is
    /// reading, never a record beyond. Whatever the client sent behind its
    /// Finished (a KeyUpdate, data, close_notify) is then the record
    /// layer's: rustls reads no record past the handshake, so nothing it
    /// would queue in answer (a KeyUpdate of its own) can be lost when its
    /// secrets are taken over.
    given: usize,
    /// Where the record rustls is reading ends in `rest`.
    record_end: usize,
    /// Whether the configuration is settled: rustls has been shown bytes,
    /// or the resuming configuration was taken (so a step the engine
    /// refused, submitted again, does not build the connection again).
    config_final: bool,
}

impl ServerHs {
    /// A handshake for a connection just accepted.
    pub(crate) fn new(
        cfg: std::sync::Arc<rustls::ServerConfig>,
    ) -> Result<ServerHs, rustls::Error> {
        Ok(ServerHs {
            conn: UnbufferedServerConnection::new(cfg)?,
            rest: Vec::new(),
            given: 0,
            record_end: 0,
            config_final: false,
        })
    }

    /// Starts over with `cfg` if rustls has seen nothing of the client yet
    /// (and this was not done already) and `input` begins with a
    /// ClientHello that offers a pre-shared key ([`offers_psk`]). `cfg`
    /// differs from the first configuration only in what rustls does not
    /// check (the number of tickets), so it is taken.
    pub(crate) fn prefer_when_resuming(
        &mut self,
        input: &[u8],
        cfg: &std::sync::Arc<rustls::ServerConfig>,
    ) {
        if !self.config_final
            && offers_psk(input)
            && let Ok(conn) = UnbufferedServerConnection::new(cfg.clone())
        {
            self.conn = conn;
            self.config_final = true;
        }
    }

    /// Shows rustls more: the rest of the record it reads, or the next
    /// whole record once its header is here. False when nothing more is.
    fn advance(&mut self) -> bool {
        if self.given < self.record_end {
            let g = self.record_end.min(self.rest.len());
            let moved = g > self.given;
            self.given = g;
            return moved;
        }
        let Some(h) = self.rest.get(self.record_end..self.record_end + 5) else { return false };
        self.record_end += 5 + usize::from(u16::from_be_bytes([h[3], h[4]]));
        self.given = self.record_end.min(self.rest.len());
        true
    }

    /// Drops the first `n` bytes, which rustls has consumed.
    fn discard(&mut self, n: usize) {
        self.rest.drain(..n);
        self.given -= n;
        self.record_end -= n;
    }
}

/// Whether `input` starts with a whole ClientHello that offers a pre-shared
/// key (the `pre_shared_key` extension, RFC 8446 4.2.11): a client resuming
/// a session. False for anything else, malformed included (rustls judges
/// it).
fn offers_psk(input: &[u8]) -> bool {
    use switchyard_tls_hello::{Hello, ext, read};
    matches!(read(input), Hello::Complete(h) if h.extension(ext::PRE_SHARED_KEY).is_some())
}

/// What a finished handshake agreed, for the counters and for routing.
pub(crate) struct HandshakeInfo {
    /// `TLSv1_3`, `TLSv1_2`.
    pub version: String,
    /// The key exchange group (`X25519MLKEM768`, ...).
    pub group: String,
    /// Whether an earlier session was resumed.
    pub resumed: bool,
    /// The client's certificate, verified (mutual TLS).
    pub client_cert: Option<CertificateDer<'static>>,
    /// The application protocol agreed by ALPN (`h2`, `http/1.1`).
    pub alpn: Option<Vec<u8>>,
}

/// Where one engine step left a server handshake.
pub(crate) enum ServerStep {
    /// Waiting for more from the client.
    More(Box<ServerHs>),
    /// Complete: the record layer takes over.
    Done(Box<Session>, HandshakeInfo),
    /// Failed; the alert rustls wrote, if any, is in the output.
    Failed(rustls::Error),
    /// The client closed before the handshake was done.
    PeerClosed,
}

/// Runs the handshake on what the client sent (`input` behind what was left
/// from before) as far as it goes; the records to send go to `out`.
pub(crate) fn server_step(mut hs: ServerHs, input: &[u8], out: &mut Vec<u8>) -> ServerStep {
    hs.config_final = true;
    hs.rest.extend_from_slice(input);
    // Application data rustls opened itself: none, as it is shown no
    // record past the client's Finished, but kept for the record layer
    // should a rustls release deliver some.
    let mut early_plain = Vec::new();
    let mut peer_closed = false;
    enum Next {
        Again,
        Wait,
        Writable,
        Fail(rustls::Error),
    }
    loop {
        // Done, and all rustls wrote is out: the record layer takes over.
        if !hs.conn.is_handshaking() && !hs.conn.wants_write() {
            return established(hs, early_plain, peer_closed);
        }
        let given = hs.given;
        let UnbufferedStatus { discard, state } =
            hs.conn.process_tls_records(&mut hs.rest[..given]);
        let next = match state {
            Ok(ConnectionState::EncodeTlsData(mut e)) => match encode(out, |b| e.encode(b)) {
                Ok(()) => Next::Again,
                Err(err) => Next::Fail(err),
            },
            Ok(ConnectionState::TransmitTlsData(t)) => {
                t.done();
                Next::Again
            }
            Ok(ConnectionState::ReadTraffic(mut r)) => {
                let mut next = Next::Again;
                while let Some(rec) = r.next_record() {
                    match rec {
                        Ok(rec) => early_plain.extend_from_slice(rec.payload),
                        Err(e) => {
                            next = Next::Fail(e);
                            break;
                        }
                    }
                }
                next
            }
            Ok(ConnectionState::PeerClosed | ConnectionState::Closed) => {
                // A client may finish its handshake and close at once.
                peer_closed = true;
                Next::Writable
            }
            Ok(ConnectionState::WriteTraffic(_)) => Next::Writable,
            Ok(_) => Next::Wait,
            Err(e) => Next::Fail(e),
        };
        hs.discard(discard);
        match next {
            // A TLS 1.3 server may write once its Finished is out, but the
            // handshake is done only with the client's: the loop's first
            // check takes a finished one to the record layer.
            Next::Again => continue,
            Next::Writable if !hs.conn.is_handshaking() => continue,
            Next::Wait | Next::Writable if hs.advance() => continue,
            Next::Wait | Next::Writable if peer_closed => return ServerStep::PeerClosed,
            Next::Wait | Next::Writable => return ServerStep::More(Box::new(hs)),
            Next::Fail(e) => {
                // The fatal alert rustls queued for it: the next call hands
                // out what is queued before it reads any input again (and a
                // second read would queue a second alert).
                let given = hs.given;
                let UnbufferedStatus { state, .. } =
                    hs.conn.process_tls_records(&mut hs.rest[..given]);
                if let Ok(ConnectionState::EncodeTlsData(mut e)) = state {
                    let _ = encode(out, |b| e.encode(b));
                }
                return ServerStep::Failed(e);
            }
        }
    }
}

/// Appends a record rustls encodes to `out`, growing it as rustls asks.
fn encode(
    out: &mut Vec<u8>,
    mut enc: impl FnMut(&mut [u8]) -> Result<usize, EncodeError>,
) -> Result<(), rustls::Error> {
    let at = out.len();
    let mut want = 2048;
    loop {
        out.resize(at + want, 0);
        match enc(&mut out[at..]) {
            Ok(n) => {
                out.truncate(at + n);
                return Ok(());
            }
            Err(EncodeError::InsufficientSize(s)) => want = s.required_size,
            Err(e) => {
                out.truncate(at);
                return Err(rustls::Error::General(e.to_string()));
            }
        }
    }
}

/// The handshake is done: rustls gives up the secrets.
fn established(hs: ServerHs, early_plain: Vec<u8>, peer_closed: bool) -> ServerStep {
    // What rustls was shown it consumed (the Finished ends its record):
    // the rest are records for the record layer.
    let ServerHs { conn, mut rest, given, .. } = hs;
    rest.drain(..given);
    let info = HandshakeInfo {
        version: conn.protocol_version().map(|v| format!("{v:?}")).unwrap_or_default(),
        group: conn
            .negotiated_key_exchange_group()
            .map(|g| format!("{:?}", g.name()))
            .unwrap_or_default(),
        resumed: conn.handshake_kind() == Some(rustls::HandshakeKind::Resumed),
        client_cert: conn.peer_certificates().and_then(|c| c.first()).cloned(),
        alpn: conn.alpn_protocol().map(<[u8]>::to_vec),
    };
    let (secrets, kernel) = match conn.dangerous_into_kernel_connection() {
        Ok(s) => s,
        Err(e) => return ServerStep::Failed(e),
    };
    let version = match kernel.protocol_version() {
        rustls::ProtocolVersion::TLSv1_3 => Version::Tls13,
        _ => Version::Tls12,
    };
    let unsupported = || rustls::Error::General("cipher suite without extractable keys".into());
    let (Ok(tx), Ok(rx)) = (
        Keys::new(version, secrets.tx.0, secrets.tx.1),
        Keys::new(version, secrets.rx.0, secrets.rx.1),
    ) else {
        return ServerStep::Failed(unsupported());
    };
    let session = Session {
        version,
        tx,
        rx,
        kernel,
        rx_buf: rest,
        plain: early_plain,
        plain_at: 0,
        tx_plain: Vec::new(),
        peer_closed,
        key_update_due: false,
        renegotiations: 0,
        temper: Temper::default(),
        closed: false,
    };
    ServerStep::Done(Box::new(session), info)
}

/// TLS 1.3 keys are renewed after this many records sent, well inside the
/// AES-GCM limit of 2^24.5 full-size records (RFC 8446 5.5); a TLS 1.2
/// AES-GCM connection ends there.
const KEY_UPDATE_AFTER: u64 = 1 << 24;

/// `KeyUpdate` handshake message type (RFC 8446 4).
const KEY_UPDATE: u8 = 24;

/// What a peer may do that the protocol allows but that costs us and gives
/// nothing: the limits rustls (and BoringSSL) set, kept here as the record
/// layer left rustls. A peer past one is refused with `unexpected_message`.
#[derive(Debug)]
struct Temper {
    /// Warning alerts (TLS 1.3 `user_canceled`, any TLS 1.2 warning) left.
    warnings: u8,
    /// Empty application-data records left before one with data.
    empty: u8,
    /// Key updates (each costs a derivation, and a record if it asks for
    /// ours) left before application data comes.
    key_update_requests: u8,
}

impl Temper {
    const WARNINGS: u8 = 4;
    const EMPTY: u8 = 32;
    const KEY_UPDATE_REQUESTS: u8 = 32;

    /// Takes one of `left`; false once none is.
    fn take(left: &mut u8) -> bool {
        let ok = *left > 0;
        *left = left.saturating_sub(1);
        ok
    }
}

impl Default for Temper {
    fn default() -> Temper {
        Temper {
            warnings: Temper::WARNINGS,
            empty: Temper::EMPTY,
            key_update_requests: Temper::KEY_UPDATE_REQUESTS,
        }
    }
}

/// How a record-layer connection failed: the alert to send or the one
/// received.
#[derive(Debug)]
pub(crate) enum Failure {
    /// We refuse the peer's record with this alert.
    Send(AlertDescription),
    /// The peer sent a fatal alert.
    Received(AlertDescription),
}

impl From<RecordError> for Failure {
    fn from(e: RecordError) -> Failure {
        Failure::Send(e.alert())
    }
}

/// Counters of the record layer.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RecordStats {
    /// Records sealed from extracted secrets.
    pub sealed: u64,
    /// Records opened.
    pub opened: u64,
    /// Records refused (bad MAC, overflow, unexpected content).
    pub refused: u64,
    /// TLS 1.3 key updates from peers.
    pub key_updates_received: u64,
    /// Key updates we sent (answering a peer, or after many records).
    pub key_updates_sent: u64,
}

/// A connection after its handshake: the record layer from extracted
/// secrets.
pub(crate) struct Session {
    version: Version,
    tx: Keys,
    rx: Keys,
    kernel: KernelConnection<ServerConnectionData>,
    /// Ciphertext received and not yet opened: at most one partial record
    /// after [`Session::open`].
    rx_buf: Vec<u8>,
    /// Plaintext opened and not yet read: `plain[plain_at..]`.
    plain: Vec<u8>,
    plain_at: usize,
    /// Plaintext written this turn, sealed by [`Session::seal`].
    pub tx_plain: Vec<u8>,
    /// The peer sent `close_notify`.
    pub peer_closed: bool,
    /// The peer asked for our keys to be renewed too.
    key_update_due: bool,
    /// TLS 1.2 renegotiation attempts declined.
    renegotiations: u8,
    temper: Temper,
    /// Our close_notify is sealed: nothing more goes out.
    closed: bool,
}

impl Session {
    /// Copies opened plaintext into `buf`; returns how much.
    pub(crate) fn read(&mut self, buf: &mut [u8]) -> usize {
        let waiting = &self.plain[self.plain_at..];
        let n = waiting.len().min(buf.len());
        buf[..n].copy_from_slice(&waiting[..n]);
        self.plain_at += n;
        if self.plain_at == self.plain.len() {
            self.plain.clear();
            self.plain_at = 0;
        }
        n
    }

    /// Bytes of ciphertext the receive buffer takes before the next
    /// [`Session::open`]: room for one whole record of the largest size.
    pub(crate) fn rx_room(&self) -> usize {
        MAX_RECORD.saturating_sub(self.rx_buf.len())
    }

    /// Ciphertext from TCP.
    pub(crate) fn received(&mut self, bytes: &[u8]) {
        self.rx_buf.extend_from_slice(bytes);
    }

    /// Whether records are waiting to be sealed (plaintext, or a key update
    /// the peer asked for).
    pub(crate) fn wants_seal(&self) -> bool {
        !self.tx_plain.is_empty() || self.key_update_due
    }

    /// Opens every whole record received, as one batch: application data
    /// goes to `buf` and what does not fit waits for [`Session::read`];
    /// alerts, key updates and renegotiation attempts are handled, with
    /// what they need sent appended to `out`. Returns the bytes put in
    /// `buf`.
    pub(crate) fn open(
        &mut self,
        buf: &mut [u8],
        out: &mut Vec<u8>,
        stats: &mut RecordStats,
    ) -> Result<usize, Failure> {
        let mut at = 0;
        let mut filled = 0;
        let result = loop {
            if self.peer_closed {
                break Ok(());
            }
            let opened = match self.rx.open(&mut self.rx_buf[at..]) {
                Ok(Some(o)) => o,
                Ok(None) => break Ok(()),
                Err(e) => {
                    stats.refused += 1;
                    break Err(Failure::from(e));
                }
            };
            stats.opened += 1;
            let data = at + opened.start..at + opened.start + opened.len;
            at += opened.consumed;
            match opened.typ {
                content::APPLICATION_DATA => {
                    let d = &self.rx_buf[data];
                    if d.is_empty() {
                        if !Temper::take(&mut self.temper.empty) {
                            break Err(Failure::Send(AlertDescription::UnexpectedMessage));
                        }
                        continue;
                    }
                    self.temper.empty = Temper::EMPTY;
                    self.temper.key_update_requests = Temper::KEY_UPDATE_REQUESTS;
                    let n = d.len().min(buf.len() - filled);
                    buf[filled..filled + n].copy_from_slice(&d[..n]);
                    filled += n;
                    self.plain.extend_from_slice(&d[n..]);
                }
                content::ALERT => match self.rx_buf[data] {
                    // An empty alert is refused as RFC 8446 5.4 says.
                    [] => break Err(Failure::Send(AlertDescription::UnexpectedMessage)),
                    [level, _] if level != 1 && level != 2 => {
                        break Err(Failure::Send(AlertDescription::IllegalParameter));
                    }
                    [_, 0] => self.peer_closed = true,
                    // user_canceled, and any TLS 1.2 warning, are not fatal,
                    // up to a few; TLS 1.3 has no other warnings.
                    [1, d] if d == 90 || self.version == Version::Tls12 => {
                        if !Temper::take(&mut self.temper.warnings) {
                            break Err(Failure::Send(AlertDescription::UnexpectedMessage));
                        }
                    }
                    [1, _] => break Err(Failure::Send(AlertDescription::DecodeError)),
                    [_, d] => break Err(Failure::Received(AlertDescription::from(d))),
                    _ => break Err(Failure::Send(AlertDescription::DecodeError)),
                },
                content::HANDSHAKE if self.version == Version::Tls12 => {
                    // A renegotiation attempt: declined once with a warning,
                    // the connection going on (RFC 5746 4.4 leaves that to
                    // the server); a peer that insists is refused.
                    if self.renegotiations > 0 {
                        break Err(Failure::Send(AlertDescription::UnexpectedMessage));
                    }
                    self.renegotiations += 1;
                    self.seal_alert(1, AlertDescription::NoRenegotiation, out)?;
                }
                content::HANDSHAKE => {
                    // After the handshake a client sends only KeyUpdate, a
                    // record of its own (it must end at a record boundary).
                    let requested = match self.rx_buf[data] {
                        [KEY_UPDATE, 0, 0, 1, r @ (0 | 1)] => r == 1,
                        [KEY_UPDATE, 0, 0, 1, _] => {
                            break Err(Failure::Send(AlertDescription::IllegalParameter));
                        }
                        _ => break Err(Failure::Send(AlertDescription::UnexpectedMessage)),
                    };
                    // Each costs a derivation, asked for ours or not (rustls
                    // counts them all too).
                    if !Temper::take(&mut self.temper.key_update_requests) {
                        break Err(Failure::Send(AlertDescription::UnexpectedMessage));
                    }
                    let Ok((seq, secrets)) = self.kernel.update_rx_secret() else {
                        break Err(Failure::Send(AlertDescription::InternalError));
                    };
                    let Ok(keys) = Keys::new(self.version, seq, secrets) else {
                        break Err(Failure::Send(AlertDescription::InternalError));
                    };
                    self.rx = keys;
                    stats.key_updates_received += 1;
                    self.key_update_due |= requested;
                }
                _ => break Err(Failure::Send(AlertDescription::UnexpectedMessage)),
            }
        };
        self.rx_buf.drain(..at);
        result.map(|()| filled)
    }

    /// Seals what was written this turn, as records of at most 16 KiB, to
    /// `out`; a key update goes first when one is due.
    pub(crate) fn seal(
        &mut self,
        out: &mut Vec<u8>,
        stats: &mut RecordStats,
    ) -> Result<(), RecordError> {
        if self.closed {
            self.tx_plain.clear();
            return Ok(());
        }
        let renew = self.key_update_due || self.tx.seq() >= KEY_UPDATE_AFTER;
        if self.version == Version::Tls13 && renew {
            // Sent under the old keys; everything after under the new.
            self.tx.seal(content::HANDSHAKE, &[KEY_UPDATE, 0, 0, 1, 0], out)?;
            let (seq, secrets) =
                self.kernel.update_tx_secret().map_err(|_| RecordError::Exhausted)?;
            self.tx = Keys::new(self.version, seq, secrets).map_err(|_| RecordError::Exhausted)?;
            self.key_update_due = false;
            stats.key_updates_sent += 1;
            stats.sealed += 1;
        }
        // TLS 1.2 cannot renew its keys: an AES-GCM connection ends at the
        // limit above. rustls sends close_notify there and refuses further
        // writes; here the connection is reset, which a peer cannot take for
        // the end of a complete response.
        let records = self.tx_plain.len().div_ceil(MAX_PLAIN) as u64;
        if self.version == Version::Tls12
            && self.tx.limited()
            && self.tx.seq() + records > KEY_UPDATE_AFTER
        {
            return Err(RecordError::Exhausted);
        }
        for chunk in self.tx_plain.chunks(MAX_PLAIN) {
            self.tx.seal(content::APPLICATION_DATA, chunk, out)?;
            stats.sealed += 1;
        }
        self.tx_plain.clear();
        Ok(())
    }

    /// Seals an alert (`level` 1 warning, 2 fatal) to `out`; after
    /// close_notify or a fatal alert nothing more is sealed.
    pub(crate) fn seal_alert(
        &mut self,
        level: u8,
        desc: AlertDescription,
        out: &mut Vec<u8>,
    ) -> Result<(), RecordError> {
        if self.closed {
            return Ok(());
        }
        self.closed = level == 2 || desc == AlertDescription::CloseNotify;
        self.tx.seal(content::ALERT, &[level, u8::from(desc)], out)
    }
}

#[cfg(test)]
mod tests {
    use super::offers_psk;

    // The hello itself is read by switchyard-tls-hello, whose tests take it
    // apart; the integration test `the_second_connection_resumes_and_gets_
    // one_ticket_for_the_one_it_used` shows a real rustls client's key found.
    #[test]
    fn what_is_not_a_whole_client_hello_offers_no_key() {
        assert!(!offers_psk(b""));
        assert!(!offers_psk(b"GET / HTTP/1.1\r\n\r\n"));
        // A ClientHello cut after its headers: more may come, but rustls
        // sees the bytes first.
        assert!(!offers_psk(&[22, 3, 1, 0, 200, 1, 0, 0, 196]));
    }
}
