//! TLS for Switchyard: termination with rustls, handshakes offloaded.
//!
//! The packet path never waits on public-key crypto. A connection accepted on a
//! TLS listener is handed, with the bytes its client sent, to a crypto engine
//! behind a queue ([`CryptoEngine`]; [`SoftwareEngine`] runs worker threads):
//! the rustls connection itself moves to the engine, which runs the handshake
//! step and hands the connection back with the bytes to send. The worker only
//! moves bytes meanwhile. Once the handshake is complete, records are sealed
//! and opened in line by rustls (symmetric crypto, a few hundred nanoseconds a
//! record); moving that to batches from extracted traffic secrets is the next
//! step of the offload design.
//!
//! [`Tls`] sits between the stack's TCP and the L7 proxy: it takes the stack's
//! TCP events first, keeps TLS connections from L7 until their handshake is
//! done, and [`Tls::wrap`] gives L7 a [`TcpApi`] that reads and writes
//! plaintext on TLS connections and passes everything else through.
#![forbid(unsafe_code)]

use std::collections::HashMap;
use std::io::{Read, Write};
use std::path::Path;
use std::sync::Arc;

use crossbeam_channel::{Receiver, Sender};
pub use rustls::ServerConfig;
use rustls::ServerConnection;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use switchyard_stack::tcp::{ConnId, ConnState, TcpApi, TcpError, TcpEvent};
use switchyard_stack::{Instant, ListenerId};

/// A unit of work submitted by a worker, tagged so the answer can be matched
/// to its connection.
#[derive(Debug)]
pub struct Job<T> {
    /// Caller's tag (for example a connection handle).
    pub tag: u64,
    /// The work.
    pub work: T,
}

/// A crypto engine: workers submit jobs without blocking and collect finished
/// results later from their poll loop. Implementations: software threads now,
/// a hardware engine later.
pub trait CryptoEngine<In, Out> {
    /// Queues a job; gives it back if the engine is full.
    fn submit(&self, job: Job<In>) -> Result<(), Job<In>>;
    /// Takes one finished job, if any.
    fn poll(&self) -> Option<Job<Out>>;
}

/// Handshake work: the connection and the bytes its peer sent.
pub struct HandshakeIn {
    conn: ServerConnection,
    input: Vec<u8>,
}

/// Handshake result: the connection, the bytes to send, and the error that
/// ended it, if one did.
pub struct HandshakeOut {
    conn: ServerConnection,
    output: Vec<u8>,
    error: Option<rustls::Error>,
}

/// Runs one handshake step: the peer's bytes in, ours out.
fn handshake_step(mut job: HandshakeIn) -> HandshakeOut {
    let mut rd = &job.input[..];
    let mut error = None;
    while !rd.is_empty() {
        match job.conn.read_tls(&mut rd) {
            Ok(0) => break,
            Ok(_) => {}
            Err(e) => {
                error = Some(rustls::Error::General(e.to_string()));
                break;
            }
        }
        if let Err(e) = job.conn.process_new_packets() {
            error = Some(e);
            break;
        }
    }
    let mut output = Vec::new();
    while job.conn.wants_write() {
        if job.conn.write_tls(&mut output).is_err() {
            break;
        }
    }
    HandshakeOut { conn: job.conn, output, error }
}

/// The software engine: threads that run handshake steps.
pub struct SoftwareEngine {
    jobs: Sender<Job<HandshakeIn>>,
    done: Receiver<Job<HandshakeOut>>,
}

impl SoftwareEngine {
    /// Starts `threads` engine threads with a queue of `queue` jobs.
    pub fn new(threads: usize, queue: usize) -> SoftwareEngine {
        let (jobs, rx) = crossbeam_channel::bounded::<Job<HandshakeIn>>(queue);
        let (tx, done) = crossbeam_channel::unbounded();
        for i in 0..threads.max(1) {
            let rx = rx.clone();
            let tx: Sender<Job<HandshakeOut>> = tx.clone();
            let _ = std::thread::Builder::new().name(format!("tls-engine-{i}")).spawn(move || {
                for job in rx.iter() {
                    let out = handshake_step(job.work);
                    if tx.send(Job { tag: job.tag, work: out }).is_err() {
                        return;
                    }
                }
            });
        }
        SoftwareEngine { jobs, done }
    }
}

impl CryptoEngine<HandshakeIn, HandshakeOut> for SoftwareEngine {
    fn submit(&self, job: Job<HandshakeIn>) -> Result<(), Job<HandshakeIn>> {
        self.jobs.try_send(job).map_err(|e| e.into_inner())
    }

    fn poll(&self) -> Option<Job<HandshakeOut>> {
        self.done.try_recv().ok()
    }
}

/// Errors loading certificates and keys.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A PEM file could not be read or holds nothing usable.
    #[error("{path}: {reason}")]
    File {
        /// The file.
        path: String,
        /// What is wrong with it.
        reason: String,
    },
    /// rustls refused the certificate and key together.
    #[error("{cert} with {key}: {reason}")]
    Mismatch {
        /// The certificate file.
        cert: String,
        /// The key file.
        key: String,
        /// rustls's reason.
        reason: String,
    },
}

/// A server configuration from a PEM certificate chain and a PEM private key,
/// offering ALPN `h2` and `http/1.1`. TLS 1.3 and 1.2; key exchange prefers
/// the post-quantum hybrid X25519MLKEM768, with classical groups as fallback.
pub fn server_config(cert: &Path, key: &Path) -> Result<Arc<rustls::ServerConfig>, TlsError> {
    server_config_sni(&[(cert.to_path_buf(), key.to_path_buf())])
}

/// How a listener's TLS differs from the defaults.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TlsOptions {
    /// Offer TLS 1.3 only (no TLS 1.2).
    pub tls13_only: bool,
    /// Ask clients for a certificate signed by one of the CAs in this PEM
    /// file (mutual TLS).
    pub client_ca: Option<std::path::PathBuf>,
    /// With `client_ca`: a client without a certificate is refused
    /// (`certificate_required`); otherwise it is let in without an identity.
    pub client_cert_required: bool,
    /// ALPN protocols offered, in preference order (default `h2`,
    /// `http/1.1`).
    pub alpn: Option<Vec<Vec<u8>>>,
    /// OCSP responses (DER files) stapled to the certificates, by their
    /// position in the certificate list.
    pub ocsp: Vec<(usize, std::path::PathBuf)>,
}

/// Like [`server_config`] with several certificates: each handshake gets the
/// first whose names (subject alternative names) cover the client's SNI, or
/// the first of all when none does or the client sent no name. ECDSA and RSA
/// keys both work.
pub fn server_config_sni(
    pairs: &[(std::path::PathBuf, std::path::PathBuf)],
) -> Result<Arc<rustls::ServerConfig>, TlsError> {
    server_config_with(pairs, &TlsOptions::default())
}

/// Like [`server_config_sni`], with `opts`.
pub fn server_config_with(
    pairs: &[(std::path::PathBuf, std::path::PathBuf)],
    opts: &TlsOptions,
) -> Result<Arc<rustls::ServerConfig>, TlsError> {
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let mut certs = Vec::new();
    for (i, (cert, key)) in pairs.iter().enumerate() {
        let mut ck = certified_key(&provider, cert, key)?;
        if let Some((_, path)) = opts.ocsp.iter().find(|(j, _)| *j == i) {
            ck.ocsp = Some(ocsp_response(path)?);
        }
        certs.push(Arc::new(ck));
    }
    if certs.is_empty() {
        return Err(TlsError::File { path: String::new(), reason: "no certificate given".into() });
    }
    let versions: &[&rustls::SupportedProtocolVersion] =
        if opts.tls13_only { &[&rustls::version::TLS13] } else { rustls::DEFAULT_VERSIONS };
    let builder = rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(versions)
        .map_err(|e| TlsError::File { path: String::new(), reason: e.to_string() })?;
    let builder = match &opts.client_ca {
        None => builder.with_no_client_auth(),
        Some(ca) => {
            let file_err =
                |reason: String| TlsError::File { path: ca.display().to_string(), reason };
            let mut roots = rustls::RootCertStore::empty();
            for c in CertificateDer::pem_file_iter(ca).map_err(|e| file_err(e.to_string()))? {
                let c = c.map_err(|e| file_err(e.to_string()))?;
                roots.add(c).map_err(|e| file_err(e.to_string()))?;
            }
            if roots.is_empty() {
                return Err(file_err("no CA certificate in the file".into()));
            }
            let v = rustls::server::WebPkiClientVerifier::builder_with_provider(
                Arc::new(roots),
                provider,
            );
            let v = if opts.client_cert_required { v } else { v.allow_unauthenticated() };
            builder.with_client_cert_verifier(v.build().map_err(|e| file_err(e.to_string()))?)
        }
    };
    let mut cfg = builder.with_cert_resolver(Arc::new(SniResolver { certs }));
    // HTTP/2 first when the client offers both (RFC 7301: the server picks).
    cfg.alpn_protocols =
        opts.alpn.clone().unwrap_or_else(|| vec![b"h2".to_vec(), b"http/1.1".to_vec()]);
    // Resumption: TLS 1.3 tickets (two per handshake) and TLS 1.2 session
    // IDs, both backed by a server-side cache of 8,192 sessions.
    cfg.session_storage = rustls::server::ServerSessionMemoryCache::new(8192);
    Ok(Arc::new(cfg))
}

fn certified_key(
    provider: &rustls::crypto::CryptoProvider,
    cert: &Path,
    key: &Path,
) -> Result<rustls::sign::CertifiedKey, TlsError> {
    let file_err =
        |p: &Path, reason: String| TlsError::File { path: p.display().to_string(), reason };
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert)
        .map_err(|e| file_err(cert, e.to_string()))?
        .collect::<Result<_, _>>()
        .map_err(|e| file_err(cert, e.to_string()))?;
    if chain.is_empty() {
        return Err(file_err(cert, "no certificate in the file".into()));
    }
    if webpki::EndEntityCert::try_from(&chain[0]).is_err() {
        return Err(file_err(cert, "the first certificate cannot be parsed".into()));
    }
    let key_der = PrivateKeyDer::from_pem_file(key).map_err(|e| file_err(key, e.to_string()))?;
    let mismatch = |reason: String| TlsError::Mismatch {
        cert: cert.display().to_string(),
        key: key.display().to_string(),
        reason,
    };
    let signing =
        provider.key_provider.load_private_key(key_der).map_err(|e| mismatch(e.to_string()))?;
    let ck = rustls::sign::CertifiedKey::new(chain, signing);
    ck.keys_match().map_err(|e| mismatch(e.to_string()))?;
    Ok(ck)
}

/// A DER OCSP response to staple, checked to be one (a SEQUENCE whose
/// first element is the response status).
fn ocsp_response(path: &Path) -> Result<Vec<u8>, TlsError> {
    let err = |reason: &str| TlsError::File {
        path: path.display().to_string(),
        reason: reason.to_string(),
    };
    let der = std::fs::read(path).map_err(|e| err(&e.to_string()))?;
    // OCSPResponse ::= SEQUENCE { responseStatus ENUMERATED, ... } (RFC 6960).
    let looks_right = der.len() >= 5 && der[0] == 0x30 && der.contains(&0x0a);
    if !looks_right {
        return Err(err("not a DER OCSP response"));
    }
    Ok(der)
}

/// Chooses a certificate by the ClientHello's server name.
#[derive(Debug)]
struct SniResolver {
    certs: Vec<Arc<rustls::sign::CertifiedKey>>,
}

impl rustls::server::ResolvesServerCert for SniResolver {
    fn resolve(
        &self,
        hello: rustls::server::ClientHello<'_>,
    ) -> Option<Arc<rustls::sign::CertifiedKey>> {
        let name = hello
            .server_name()
            .and_then(|n| rustls::pki_types::ServerName::try_from(n.to_string()).ok());
        if let Some(name) = name {
            for ck in &self.certs {
                let ok = ck.cert.first().is_some_and(|der| {
                    webpki::EndEntityCert::try_from(der)
                        .is_ok_and(|ee| ee.verify_is_valid_for_subject_name(&name).is_ok())
                });
                if ok {
                    return Some(ck.clone());
                }
            }
        }
        self.certs.first().cloned()
    }
}

/// Counters of TLS termination.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TlsStats {
    /// Handshakes completed, by protocol version name and key exchange group.
    pub handshakes: std::collections::BTreeMap<(String, String), u64>,
    /// Handshakes completed per listener, by key exchange group.
    pub groups_by_listener: std::collections::BTreeMap<(ListenerId, String), u64>,
    /// Of those, handshakes that resumed an earlier session.
    pub resumed: u64,
    /// Handshakes that failed (a fatal alert sent or received, or bad input).
    pub failed: u64,
    /// Connections closed during the handshake by the peer.
    pub abandoned: u64,
    /// Handshake steps run by the engine.
    pub engine_steps: u64,
    /// Times the engine queue was full (the step then waits for the next turn).
    pub engine_full: u64,
    /// Handshakes not finished within [`HANDSHAKE_TIMEOUT`] (reset).
    pub timeouts: u64,
    /// Fatal alerts sent, by description (`BadRecordMac`, `UnknownCa`, ...).
    pub alerts_sent: std::collections::BTreeMap<String, u64>,
    /// Fatal alerts received from clients, by description.
    pub alerts_received: std::collections::BTreeMap<String, u64>,
    /// Handshakes that verified a client certificate.
    pub client_certificates: u64,
}

impl TlsStats {
    /// Counts the alert that ends a connection with `e`: received from the
    /// peer, or the one rustls sends for it (RFC 8446 6.2).
    fn alert(&mut self, e: &rustls::Error) {
        use rustls::AlertDescription as A;
        let (received, desc) = match e {
            rustls::Error::AlertReceived(d) => (true, *d),
            rustls::Error::InvalidMessage(m) => (false, A::from(*m)),
            rustls::Error::InvalidCertificate(c) => (false, A::from(c.clone())),
            rustls::Error::InappropriateMessage { .. }
            | rustls::Error::InappropriateHandshakeMessage { .. } => (false, A::UnexpectedMessage),
            rustls::Error::NoCertificatesPresented => (false, A::CertificateRequired),
            rustls::Error::DecryptError => (false, A::BadRecordMac),
            rustls::Error::NoApplicationProtocol => (false, A::NoApplicationProtocol),
            rustls::Error::PeerIncompatible(
                rustls::PeerIncompatible::Tls12NotOffered
                | rustls::PeerIncompatible::Tls12NotOfferedOrEnabled
                | rustls::PeerIncompatible::SupportedVersionsExtensionRequired
                | rustls::PeerIncompatible::Tls13RequiredForQuic,
            ) => (false, A::ProtocolVersion),
            rustls::Error::PeerIncompatible(_) => (false, A::HandshakeFailure),
            rustls::Error::PeerMisbehaved(_) => (false, A::IllegalParameter),
            _ => (false, A::InternalError),
        };
        let map = if received { &mut self.alerts_received } else { &mut self.alerts_sent };
        *map.entry(format!("{desc:?}")).or_default() += 1;
    }
}

/// A handshake not complete this long after the connection was accepted is
/// reset: a client that stalls (or trickles) holds no state for longer.
pub const HANDSHAKE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// What a client sent before its handshake is at most this long.
const MAX_HANDSHAKE_INPUT: usize = 64 * 1024;
/// Ciphertext waiting for TCP room, per connection, before `send` refuses more.
const MAX_PENDING_OUT: usize = 64 * 1024;

enum State {
    /// In the handshake; `conn` is `None` while the engine has it.
    Handshake { conn: Option<ServerConnection>, input: Vec<u8> },
    /// Records flow.
    Ready(ServerConnection),
}

struct Conn {
    state: State,
    listener: ListenerId,
    peer: std::net::SocketAddr,
    local: std::net::SocketAddr,
    /// Ciphertext not yet taken by TCP.
    out: Vec<u8>,
    /// Close once `out` is flushed.
    closing: bool,
    /// The peer sent FIN while the engine had the handshake.
    peer_closed: bool,
    /// The verified client certificate's subject (mutual TLS).
    identity: Option<String>,
}

/// TLS termination for the listeners that have certificates.
pub struct Tls {
    listeners: HashMap<ListenerId, Arc<rustls::ServerConfig>>,
    conns: HashMap<ConnId, Conn>,
    engine: SoftwareEngine,
    stats: TlsStats,
    scratch: Vec<u8>,
    /// Connections with ciphertext waiting for TCP room.
    flush: Vec<ConnId>,
    /// Handshakes the engine refused (queue full), to submit again.
    refused: Vec<ConnId>,
    /// Handshake steps submitted and not yet collected.
    in_engine: usize,
    /// Connections accepted since the last `poll`, whose handshake deadline
    /// starts there.
    accepted: Vec<ConnId>,
    /// Handshake deadlines in order.
    deadlines: std::collections::VecDeque<(Instant, ConnId)>,
}

fn tag(c: ConnId) -> u64 {
    (u64::from(c.slot) << 32) | u64::from(c.generation)
}

fn untag(t: u64) -> ConnId {
    ConnId { slot: (t >> 32) as u32, generation: t as u32 }
}

impl Tls {
    /// TLS for `listeners` with handshakes on `engine`.
    pub fn new(
        listeners: Vec<(ListenerId, Arc<rustls::ServerConfig>)>,
        engine: SoftwareEngine,
    ) -> Tls {
        Tls {
            listeners: listeners.into_iter().collect(),
            conns: HashMap::new(),
            engine,
            stats: TlsStats::default(),
            scratch: vec![0; 16 * 1024 + 512],
            flush: Vec::new(),
            refused: Vec::new(),
            in_engine: 0,
            accepted: Vec::new(),
            deadlines: std::collections::VecDeque::new(),
        }
    }

    /// Whether `l` terminates TLS.
    pub fn terminates(&self, l: ListenerId) -> bool {
        self.listeners.contains_key(&l)
    }

    /// The counters.
    pub fn stats(&self) -> &TlsStats {
        &self.stats
    }

    /// Takes a TCP event before L7 does: returns it if L7 should see it now,
    /// `None` if it belongs to a handshake under way.
    pub fn on_event<T: TcpApi>(&mut self, ev: TcpEvent, tcp: &mut T) -> Option<TcpEvent> {
        match ev {
            TcpEvent::Accepted { conn, listener, peer, local } => {
                let Some(cfg) = self.listeners.get(&listener).cloned() else { return Some(ev) };
                let Ok(sc) = ServerConnection::new(cfg) else {
                    tcp.abort(conn);
                    self.stats.failed += 1;
                    return None;
                };
                let state = State::Handshake { conn: Some(sc), input: Vec::new() };
                self.conns.insert(
                    conn,
                    Conn {
                        state,
                        listener,
                        peer,
                        local,
                        out: Vec::new(),
                        closing: false,
                        peer_closed: false,
                        identity: None,
                    },
                );
                self.accepted.push(conn);
                self.read_handshake(conn, tcp);
                None
            }
            TcpEvent::Readable { conn } => match self.conns.get(&conn).map(|c| &c.state) {
                Some(State::Handshake { .. }) => {
                    self.read_handshake(conn, tcp);
                    None
                }
                _ => Some(ev),
            },
            TcpEvent::Writable { conn } => match self.conns.get(&conn).map(|c| &c.state) {
                Some(State::Handshake { .. }) => {
                    self.flush_one(conn, tcp);
                    None
                }
                Some(State::Ready(_)) => {
                    self.flush_one(conn, tcp);
                    Some(ev)
                }
                None => Some(ev),
            },
            TcpEvent::PeerClosed { conn } => match self.conns.get_mut(&conn) {
                // The engine has the handshake, which the client may well
                // have finished before closing: wait for its answer.
                Some(c) if matches!(c.state, State::Handshake { conn: None, .. }) => {
                    c.peer_closed = true;
                    None
                }
                Some(c) if matches!(c.state, State::Handshake { .. }) => {
                    self.stats.abandoned += 1;
                    self.conns.remove(&conn);
                    tcp.close(conn);
                    None
                }
                _ => Some(ev),
            },
            TcpEvent::Closed { conn, .. } => match self.conns.remove(&conn) {
                Some(Conn { state: State::Handshake { .. }, .. }) => {
                    self.stats.abandoned += 1;
                    None
                }
                _ => Some(ev),
            },
            TcpEvent::Connected { .. } => Some(ev),
        }
    }

    /// Reads what a client in its handshake sent and gives it to the engine
    /// (unless the engine already has the connection: then it waits).
    fn read_handshake<T: TcpApi>(&mut self, id: ConnId, tcp: &mut T) {
        let Some(c) = self.conns.get_mut(&id) else { return };
        let State::Handshake { conn, input } = &mut c.state else { return };
        loop {
            match tcp.recv(id, &mut self.scratch) {
                Ok(0) | Err(_) => break,
                Ok(n) => input.extend_from_slice(&self.scratch[..n]),
            }
            if input.len() > MAX_HANDSHAKE_INPUT {
                self.stats.failed += 1;
                self.conns.remove(&id);
                tcp.abort(id);
                return;
            }
        }
        if input.is_empty() {
            return;
        }
        if let Some(sc) = conn.take() {
            let job =
                Job { tag: tag(id), work: HandshakeIn { conn: sc, input: std::mem::take(input) } };
            match self.engine.submit(job) {
                Ok(()) => {
                    self.stats.engine_steps += 1;
                    self.in_engine += 1;
                }
                Err(back) => {
                    // Full: keep it; the next Readable or poll tries again.
                    self.stats.engine_full += 1;
                    *conn = Some(back.work.conn);
                    *input = back.work.input;
                    if !self.refused.contains(&id) {
                        self.refused.push(id);
                    }
                }
            }
        }
    }

    /// Collects finished handshake steps and flushes pending ciphertext;
    /// events for L7 (a TLS connection's `Accepted`, then `Readable`) go to
    /// `out`.
    pub fn poll<T: TcpApi>(&mut self, now: Instant, tcp: &mut T, out: &mut Vec<TcpEvent>) {
        // Handshake deadlines: set at the first poll after acceptance, then
        // enforced in order.
        for id in self.accepted.drain(..) {
            self.deadlines.push_back((now + HANDSHAKE_TIMEOUT.into(), id));
        }
        while let Some(&(at, id)) = self.deadlines.front() {
            if at > now {
                break;
            }
            self.deadlines.pop_front();
            if self.conns.get(&id).is_some_and(|c| matches!(c.state, State::Handshake { .. })) {
                self.stats.timeouts += 1;
                self.conns.remove(&id);
                tcp.abort(id);
            }
        }
        while let Some(Job { tag: t, work }) = self.engine.poll() {
            self.in_engine -= 1;
            let id = untag(t);
            let Some(c) = self.conns.get_mut(&id) else { continue };
            c.out.extend_from_slice(&work.output);
            if let Some(e) = work.error {
                // The alert rustls wrote goes out, then the connection closes.
                self.stats.failed += 1;
                self.stats.alert(&e);
                c.closing = true;
                c.state = State::Handshake { conn: None, input: Vec::new() };
                self.flush_one(id, tcp);
                continue;
            }
            let sc = work.conn;
            if sc.is_handshaking() && c.peer_closed {
                self.stats.abandoned += 1;
                c.closing = true;
                self.flush_one(id, tcp);
                continue;
            }
            if sc.is_handshaking() {
                if let State::Handshake { conn, .. } = &mut c.state {
                    *conn = Some(sc);
                }
                self.flush_one(id, tcp);
                // Bytes that arrived meanwhile go to the engine now.
                self.read_handshake(id, tcp);
                continue;
            }
            let version = sc.protocol_version().map(|v| format!("{v:?}")).unwrap_or_default();
            let group = sc
                .negotiated_key_exchange_group()
                .map(|g| format!("{:?}", g.name()))
                .unwrap_or_default();
            *self.stats.groups_by_listener.entry((c.listener, group.clone())).or_default() += 1;
            *self.stats.handshakes.entry((version, group)).or_default() += 1;
            if sc.handshake_kind() == Some(rustls::HandshakeKind::Resumed) {
                self.stats.resumed += 1;
            }
            // Mutual TLS: the verified client certificate's subject, for
            // routing and for the backends.
            if let Some(der) = sc.peer_certificates().and_then(|c| c.first()) {
                self.stats.client_certificates += 1;
                c.identity = x509_parser::parse_x509_certificate(der)
                    .ok()
                    .map(|(_, cert)| cert.subject().to_string());
            }
            let leftover = match std::mem::replace(&mut c.state, State::Ready(sc)) {
                State::Handshake { input, .. } => input,
                State::Ready(_) => Vec::new(),
            };
            let (listener, peer, local, peer_closed) = (c.listener, c.peer, c.local, c.peer_closed);
            // Application data that came right behind the client's Finished.
            if !leftover.is_empty()
                && let State::Ready(sc) = &mut c.state
            {
                let mut rd = &leftover[..];
                while !rd.is_empty() {
                    if sc.read_tls(&mut rd).is_err() || sc.process_new_packets().is_err() {
                        break;
                    }
                }
            }
            self.flush_one(id, tcp);
            out.push(TcpEvent::Accepted { conn: id, listener, peer, local });
            out.push(TcpEvent::Readable { conn: id });
            if peer_closed {
                out.push(TcpEvent::PeerClosed { conn: id });
            }
        }
        // Ciphertext that did not fit TCP's buffer before.
        let pending = std::mem::take(&mut self.flush);
        for id in pending {
            self.flush_one(id, tcp);
        }
        // Handshakes whose engine submission was refused (queue full); a
        // connection gone since is skipped by `read_handshake`.
        for id in std::mem::take(&mut self.refused) {
            self.read_handshake(id, tcp);
        }
    }

    /// When `poll` next has work: at once while handshakes are in the engine
    /// or waiting for room in it, or ciphertext waits for TCP room.
    pub fn poll_at(&self, now: Instant) -> Option<Instant> {
        let busy = self.in_engine > 0
            || !self.refused.is_empty()
            || !self.flush.is_empty()
            || !self.accepted.is_empty();
        if busy {
            return Some(now);
        }
        self.deadlines.front().map(|(at, _)| *at)
    }

    /// Sends what ciphertext TCP takes; closes a closing connection once all
    /// is out.
    fn flush_one<T: TcpApi>(&mut self, id: ConnId, tcp: &mut T) {
        let Some(c) = self.conns.get_mut(&id) else { return };
        if let State::Ready(sc) = &mut c.state {
            while sc.wants_write() {
                if sc.write_tls(&mut c.out).is_err() {
                    break;
                }
            }
        }
        while !c.out.is_empty() {
            match tcp.send(id, &c.out) {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    c.out.drain(..n);
                }
            }
        }
        if !c.out.is_empty() {
            if !self.flush.contains(&id) {
                self.flush.push(id);
            }
        } else if c.closing {
            let handshaking = matches!(c.state, State::Handshake { .. });
            tcp.close(id);
            if handshaking {
                self.conns.remove(&id);
            }
        }
    }

    /// A [`TcpApi`] for L7: plaintext on TLS connections, the rest unchanged.
    pub fn wrap<'a, T: TcpApi>(&'a mut self, tcp: &'a mut T) -> TlsTcp<'a, T> {
        TlsTcp { tls: self, tcp }
    }
}

/// L7's view of TCP with TLS terminated: see [`Tls::wrap`].
pub struct TlsTcp<'a, T: TcpApi> {
    tls: &'a mut Tls,
    tcp: &'a mut T,
}

impl<T: TcpApi> TcpApi for TlsTcp<'_, T> {
    fn connect(&mut self, now: Instant, remote: std::net::SocketAddr) -> Result<ConnId, TcpError> {
        self.tcp.connect(now, remote)
    }

    fn recv(&mut self, conn: ConnId, buf: &mut [u8]) -> Result<usize, TcpError> {
        let Tls { conns, scratch, stats, .. } = &mut *self.tls;
        let Some(c) = conns.get_mut(&conn) else { return self.tcp.recv(conn, buf) };
        let State::Ready(sc) = &mut c.state else { return Ok(0) };
        loop {
            match sc.reader().read(buf) {
                Ok(n) if n > 0 => return Ok(n),
                Ok(_) => return Ok(0), // close_notify: the TCP FIN follows
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                Err(_) => return Ok(0),
            }
            let n = self.tcp.recv(conn, scratch)?;
            if n == 0 {
                return Ok(0);
            }
            let mut rd = &scratch[..n];
            while !rd.is_empty() {
                let res = match sc.read_tls(&mut rd) {
                    Ok(_) => sc.process_new_packets().map(|_| ()),
                    Err(e) => Err(rustls::Error::General(e.to_string())),
                };
                if let Err(e) = res {
                    // A bad record: rustls queued its alert; send it and reset.
                    stats.failed += 1;
                    stats.alert(&e);
                    let mut alert = Vec::new();
                    let _ = sc.write_tls(&mut alert);
                    let _ = self.tcp.send(conn, &alert);
                    self.tcp.abort(conn);
                    return Err(TcpError::NoSuchConnection);
                }
            }
        }
    }

    fn send(&mut self, conn: ConnId, data: &[u8]) -> Result<usize, TcpError> {
        let Some(c) = self.tls.conns.get_mut(&conn) else { return self.tcp.send(conn, data) };
        if c.out.len() >= MAX_PENDING_OUT {
            self.tls.flush_one(conn, self.tcp);
            return Ok(0);
        }
        let State::Ready(sc) = &mut c.state else { return Ok(0) };
        let room = self.tcp.send_capacity(conn).max(4096);
        let take = data.len().min(room);
        let n = sc.writer().write(&data[..take]).unwrap_or(0);
        self.tls.flush_one(conn, self.tcp);
        Ok(n)
    }

    fn send_capacity(&self, conn: ConnId) -> usize {
        match self.tls.conns.get(&conn) {
            Some(c) if matches!(c.state, State::Ready(_)) => {
                self.tcp.send_capacity(conn).saturating_sub(c.out.len())
            }
            Some(_) => 0,
            None => self.tcp.send_capacity(conn),
        }
    }

    fn send_queue(&self, conn: ConnId) -> usize {
        self.tcp.send_queue(conn) + self.tls.conns.get(&conn).map_or(0, |c| c.out.len())
    }

    fn close(&mut self, conn: ConnId) {
        let Some(c) = self.tls.conns.get_mut(&conn) else { return self.tcp.close(conn) };
        if let State::Ready(sc) = &mut c.state {
            sc.send_close_notify();
        }
        c.closing = true;
        self.tls.flush_one(conn, self.tcp);
    }

    fn abort(&mut self, conn: ConnId) {
        self.tls.conns.remove(&conn);
        self.tcp.abort(conn);
    }

    fn state(&self, conn: ConnId) -> ConnState {
        self.tcp.state(conn)
    }

    fn client_identity(&self, conn: ConnId) -> Option<&str> {
        match self.tls.conns.get(&conn) {
            Some(c) => c.identity.as_deref(),
            None => self.tcp.client_identity(conn),
        }
    }

    fn peer(&self, conn: ConnId) -> Option<std::net::SocketAddr> {
        self.tcp.peer(conn)
    }
}
