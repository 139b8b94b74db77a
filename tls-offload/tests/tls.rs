//! TLS termination against real rustls clients over an in-memory TCP:
//! versions, SNI, ALPN, resumption, mutual TLS, and bad input (garbage,
//! truncated and oversized ClientHellos, a record with a bad MAC, a handshake
//! that never finishes), each with the alert the client sees and the counter
//! that moves.

use std::io::{Read, Write};
use std::path::PathBuf;
use std::sync::Arc;

use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls::{AlertDescription, ClientConfig, ClientConnection};
use switchyard_stack::fake::FakeTcp;
use switchyard_stack::tcp::{ConnId, ConnState, TcpApi, TcpEvent};
use switchyard_stack::{Duration, Instant};
use switchyard_tls::{
    CryptoEngine, EngineWait, HANDSHAKE_TIMEOUT, HandshakeIn, HandshakeOut, InlineEngine,
    SoftwareEngine, Tls, TlsOptions, server_config_with,
};

/// A CA, and certificates it signs, written as PEM files for the server side.
struct Pki {
    dir: PathBuf,
    ca: rcgen::Certificate,
    ca_key: KeyPair,
}

struct Issued {
    der: CertificateDer<'static>,
    key: PrivateKeyDer<'static>,
    cert_path: PathBuf,
    key_path: PathBuf,
}

impl Pki {
    fn new(name: &str) -> Pki {
        let dir =
            std::env::temp_dir().join(format!("switchyard-tls-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let ca_key = KeyPair::generate().unwrap();
        let mut p = CertificateParams::new(Vec::<String>::new()).unwrap();
        p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        p.distinguished_name.push(DnType::CommonName, format!("{name} CA"));
        let ca = p.self_signed(&ca_key).unwrap();
        std::fs::write(dir.join("ca.pem"), ca.pem()).unwrap();
        Pki { dir, ca, ca_key }
    }

    fn ca_path(&self) -> PathBuf {
        self.dir.join("ca.pem")
    }

    /// A certificate for `names` with common name `cn`, valid now unless
    /// `expired`.
    fn issue(&self, file: &str, cn: &str, names: &[&str], expired: bool) -> Issued {
        self.issue_with(KeyPair::generate().unwrap(), file, cn, names, expired)
    }

    /// As [`Pki::issue`], with an RSA 2048 key.
    fn issue_rsa(&self, file: &str, names: &[&str]) -> Issued {
        let key = KeyPair::generate_rsa_for(&rcgen::PKCS_RSA_SHA256, rcgen::RsaKeySize::_2048);
        self.issue_with(key.unwrap(), file, "rsa", names, false)
    }

    fn issue_with(
        &self,
        key: KeyPair,
        file: &str,
        cn: &str,
        names: &[&str],
        expired: bool,
    ) -> Issued {
        let mut p = CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>())
            .unwrap();
        p.distinguished_name.push(DnType::OrganizationName, "Switchyard Test");
        p.distinguished_name.push(DnType::CommonName, cn);
        if expired {
            p.not_before = rcgen::date_time_ymd(2020, 1, 1);
            p.not_after = rcgen::date_time_ymd(2021, 1, 1);
        }
        let cert = p.signed_by(&key, &self.ca, &self.ca_key).unwrap();
        let (cert_path, key_path) =
            (self.dir.join(format!("{file}.pem")), self.dir.join(format!("{file}.key")));
        std::fs::write(&cert_path, cert.pem()).unwrap();
        std::fs::write(&key_path, key.serialize_pem()).unwrap();
        Issued {
            der: cert.der().clone(),
            key: PrivateKeyDer::try_from(key.serialize_der()).unwrap(),
            cert_path,
            key_path,
        }
    }

    fn roots(&self) -> rustls::RootCertStore {
        let mut r = rustls::RootCertStore::empty();
        r.add(self.ca.der().clone()).unwrap();
        r
    }
}

impl Drop for Pki {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::aws_lc_rs::default_provider())
}

fn client_config(
    pki: &Pki,
    versions: &[&'static rustls::SupportedProtocolVersion],
    client_cert: Option<&Issued>,
    alpn: &[&[u8]],
) -> Arc<ClientConfig> {
    client_config_from(provider(), pki, versions, client_cert, alpn)
}

/// As [`client_config`], over a provider changed by the test (its groups,
/// the signature schemes it verifies).
fn client_config_from(
    provider: Arc<rustls::crypto::CryptoProvider>,
    pki: &Pki,
    versions: &[&'static rustls::SupportedProtocolVersion],
    client_cert: Option<&Issued>,
    alpn: &[&[u8]],
) -> Arc<ClientConfig> {
    let b = ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(versions)
        .unwrap()
        .with_root_certificates(pki.roots());
    let mut c = match client_cert {
        Some(i) => b.with_client_auth_cert(vec![i.der.clone()], i.key.clone_key()).unwrap(),
        None => b.with_no_client_auth(),
    };
    c.alpn_protocols = alpn.iter().map(|a| a.to_vec()).collect();
    Arc::new(c)
}

const LISTENER: u16 = 7;

/// The TLS layer on a fake TCP; the test plays the clients and L7.
struct T {
    tls: Tls,
    tcp: FakeTcp,
    now: Instant,
    /// Events TLS handed to L7.
    l7: Vec<TcpEvent>,
    /// Plaintext each client has received.
    received: std::collections::HashMap<ConnId, Vec<u8>>,
}

impl T {
    fn new(pairs: &[&Issued], opts: TlsOptions) -> T {
        T::with_engine(pairs, opts, None)
    }

    /// With `inline = Some((queue, per_turn))`, handshakes run on the test's
    /// thread ([`InlineEngine`]); else on an engine thread.
    fn with_engine(pairs: &[&Issued], opts: TlsOptions, inline: Option<(usize, usize)>) -> T {
        match inline {
            Some((queue, per_turn)) => T::on(pairs, opts, InlineEngine::new(queue, per_turn)),
            None => T::on(pairs, opts, SoftwareEngine::new(1, 64)),
        }
    }

    /// Over `engine`, of whatever kind.
    fn on(
        pairs: &[&Issued],
        opts: TlsOptions,
        engine: impl CryptoEngine<HandshakeIn, HandshakeOut> + Send + 'static,
    ) -> T {
        let pairs: Vec<(PathBuf, PathBuf)> =
            pairs.iter().map(|i| (i.cert_path.clone(), i.key_path.clone())).collect();
        let cfg = server_config_with(&pairs, &opts).unwrap();
        T {
            tls: Tls::new(vec![(LISTENER, cfg)], engine),
            tcp: FakeTcp::default(),
            now: Instant::from_secs(1),
            l7: Vec::new(),
            received: Default::default(),
        }
    }

    fn accept(&mut self) -> ConnId {
        let peer = "198.18.0.101:40000".parse().unwrap();
        let c = self.tcp.new_conn(peer, ConnState::Established);
        let ev = TcpEvent::Accepted {
            conn: c,
            listener: LISTENER,
            peer,
            local: "198.18.0.10:443".parse().unwrap(),
        };
        assert!(self.tls.on_event(ev, &mut self.tcp).is_none(), "L7 waits for the handshake");
        c
    }

    /// `n` connections accepted, each with its client's ClientHello
    /// arrived and announced, in one turn.
    fn hellos(&mut self, cfg: &Arc<ClientConfig>, n: usize) -> Vec<(ConnId, ClientConnection)> {
        (0..n)
            .map(|_| {
                let c = self.accept();
                let name = ServerName::try_from("switchyard.test").unwrap();
                let mut client = ClientConnection::new(cfg.clone(), name).unwrap();
                let mut hello = Vec::new();
                while client.wants_write() {
                    client.write_tls(&mut hello).unwrap();
                }
                self.tcp.peer_sends(c, &hello);
                self.event(TcpEvent::Readable { conn: c });
                (c, client)
            })
            .collect()
    }

    fn event(&mut self, ev: TcpEvent) {
        if let Some(ev) = self.tls.on_event(ev, &mut self.tcp) {
            self.l7.push(ev);
        }
    }

    /// Lets the engine finish what it has.
    fn settle(&mut self) {
        for _ in 0..2000 {
            let mut out = Vec::new();
            self.tls.poll(self.now, &mut self.tcp, &mut out);
            self.l7.extend(out);
            if self.tls.poll_at(self.now) != Some(self.now) {
                return;
            }
            std::thread::sleep(std::time::Duration::from_micros(200));
        }
        panic!("the engine never finished");
    }

    /// Moves bytes between `client` and connection `c` until neither side
    /// has more. Returns the client's error, if it failed.
    fn pump(&mut self, c: ConnId, client: &mut ClientConnection) -> Option<rustls::Error> {
        for _ in 0..64 {
            let mut moved = false;
            let mut out = Vec::new();
            while client.wants_write() {
                client.write_tls(&mut out).unwrap();
            }
            if !out.is_empty() && !self.tcp.c(c).closed && !self.tcp.c(c).aborted {
                self.tcp.peer_sends(c, &out);
                self.event(TcpEvent::Readable { conn: c });
                moved = true;
            }
            self.settle();
            let back = self.tcp.take(c);
            if !back.is_empty() {
                moved = true;
                let mut rd = &back[..];
                while !rd.is_empty() {
                    client.read_tls(&mut rd).expect("client takes the records");
                    if let Err(e) = client.process_new_packets() {
                        return Some(e);
                    }
                    // Plaintext out, so the client's buffer never fills.
                    let mut buf = vec![0u8; 65536];
                    while let Ok(n) = client.reader().read(&mut buf) {
                        if n == 0 {
                            break;
                        }
                        self.received.entry(c).or_default().extend_from_slice(&buf[..n]);
                    }
                }
            }
            if !moved {
                return None;
            }
        }
        panic!("no quiescence");
    }

    fn connect(
        &mut self,
        cfg: &Arc<ClientConfig>,
        name: &str,
    ) -> (ConnId, ClientConnection, Option<rustls::Error>) {
        let c = self.accept();
        let mut client =
            ClientConnection::new(cfg.clone(), ServerName::try_from(name.to_string()).unwrap())
                .unwrap();
        let err = self.pump(c, &mut client);
        (c, client, err)
    }

    /// Plaintext L7 reads on `c`.
    fn l7_read(&mut self, c: ConnId) -> Vec<u8> {
        let mut got = Vec::new();
        let mut buf = [0u8; 16384];
        let mut t = self.tls.wrap(&mut self.tcp);
        while let Ok(n) = t.recv(c, &mut buf) {
            if n == 0 {
                break;
            }
            got.extend_from_slice(&buf[..n]);
        }
        got
    }
}

fn pattern(n: usize, seed: u8) -> Vec<u8> {
    (0..n).map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed)).collect()
}

#[test]
fn tls13_and_tls12_carry_a_mebibyte_each_way_byte_exact() {
    let pki = Pki::new("versions");
    let server = pki.issue("server", "switchyard.test", &["switchyard.test"], false);
    for (v, name) in [(&rustls::version::TLS13, "TLSv1_3"), (&rustls::version::TLS12, "TLSv1_2")] {
        let mut t = T::new(&[&server], TlsOptions::default());
        let cfg = client_config(&pki, &[v], None, &[b"http/1.1"]);
        let (c, mut client, err) = t.connect(&cfg, "switchyard.test");
        assert!(err.is_none(), "{name}: {err:?}");
        assert!(!client.is_handshaking());
        assert!(
            matches!(t.l7.as_slice(), [TcpEvent::Accepted { .. }, TcpEvent::Readable { .. }, ..]),
            "{:?}",
            t.l7
        );
        assert!(t.tls.stats().handshakes.keys().any(|(ver, _)| ver == name), "{:?}", t.tls.stats());
        // Client to L7.
        let up = pattern(1 << 20, 1);
        let mut got = Vec::new();
        for chunk in up.chunks(16_384) {
            client.writer().write_all(chunk).unwrap();
            assert!(t.pump(c, &mut client).is_none());
            got.extend(t.l7_read(c));
        }
        assert!(got == up, "{name}: upload differs ({} of {} bytes)", got.len(), up.len());
        // L7 to the client.
        let down = pattern(1 << 20, 7);
        let mut sent = 0;
        while sent < down.len() {
            sent += t.tls.wrap(&mut t.tcp).send(c, &down[sent..]).unwrap();
            let err = t.pump(c, &mut client);
            assert!(err.is_none(), "{name}: {err:?} after {sent} bytes");
        }
        let back = t.received.remove(&c).unwrap_or_default();
        assert!(back == down, "{name}: download differs ({} of {} bytes)", back.len(), down.len());
        // Both directions went through our record layer, not rustls's.
        let r = &t.tls.stats().records;
        assert!(r.opened >= 64 && r.sealed >= 64 && r.refused == 0, "{name}: {r:?}");
    }
}

#[test]
fn the_inline_engine_runs_its_steps_per_turn_and_the_connections_carry_bytes() {
    let pki = Pki::new("inline");
    let server = pki.issue("server", "switchyard.test", &["switchyard.test"], false);
    let mut t = T::with_engine(&[&server], TlsOptions::default(), Some((64, 1)));
    let cfg = client_config(&pki, &[&rustls::version::TLS13], None, &[b"http/1.1"]);
    // Three ClientHellos arrive in one turn.
    let clients = t.hellos(&cfg, 3);
    // One step per turn: each poll answers one more of them, in order, and
    // the worker is told not to sleep while steps wait (never a doorbell).
    for turn in 0..3 {
        assert_eq!(t.tls.engine_wait(), EngineWait::Ready, "turn {turn}");
        let mut out = Vec::new();
        t.tls.poll(t.now, &mut t.tcp, &mut out);
        let answered: Vec<bool> =
            clients.iter().map(|(c, _)| !t.tcp.c(*c).sent.is_empty()).collect();
        let want: Vec<bool> = (0..3).map(|i| i <= turn).collect();
        assert_eq!(answered, want, "after turn {turn}");
    }
    assert_eq!(t.tls.engine_wait(), EngineWait::Nothing);
    assert_eq!(t.tls.stats().engine_steps, 3);
    // The handshakes finish and the connections carry bytes both ways.
    for (c, mut client) in clients {
        assert!(t.pump(c, &mut client).is_none());
        assert!(!client.is_handshaking());
        let up = pattern(100_000, 3);
        let mut got = Vec::new();
        for chunk in up.chunks(16_384) {
            client.writer().write_all(chunk).unwrap();
            assert!(t.pump(c, &mut client).is_none());
            got.extend(t.l7_read(c));
        }
        assert!(got == up, "upload differs");
        let down = pattern(100_000, 9);
        let mut sent = 0;
        while sent < down.len() {
            sent += t.tls.wrap(&mut t.tcp).send(c, &down[sent..]).unwrap();
            assert!(t.pump(c, &mut client).is_none());
        }
        assert!(t.received.remove(&c).unwrap_or_default() == down, "download differs");
    }
    assert_eq!(t.tls.stats().handshakes.values().sum::<u64>(), 3);
}

#[test]
fn a_full_inline_engine_takes_the_refused_handshake_at_a_later_turn() {
    let pki = Pki::new("inline-full");
    let server = pki.issue("server", "switchyard.test", &["switchyard.test"], false);
    // Room for one queued step.
    let mut t = T::with_engine(&[&server], TlsOptions::default(), Some((1, 1)));
    let cfg = client_config(&pki, &[&rustls::version::TLS13], None, &[b"http/1.1"]);
    let clients = t.hellos(&cfg, 2);
    assert_eq!(t.tls.stats().engine_full, 1, "the second hello found the queue full");
    // The worker keeps turning; the refused hello goes in once there is room.
    t.settle();
    for (c, mut client) in clients {
        assert!(t.pump(c, &mut client).is_none());
        assert!(!client.is_handshaking());
    }
    assert_eq!(t.tls.stats().handshakes.values().sum::<u64>(), 2);
}

#[test]
fn a_step_queued_for_a_connection_that_went_is_withdrawn_and_never_runs() {
    let pki = Pki::new("inline-cancel");
    let server = pki.issue("server", "switchyard.test", &["switchyard.test"], false);
    let cfg = client_config(&pki, &[&rustls::version::TLS13], None, &[b"http/1.1"]);

    // Reset by the client while its ClientHello waits in the queue.
    let mut t = T::with_engine(&[&server], TlsOptions::default(), Some((64, 1)));
    let mut clients = t.hellos(&cfg, 3);
    let (gone, _) = clients.remove(1);
    t.event(TcpEvent::Closed { conn: gone, reset: true });
    t.settle();
    assert_eq!(t.tls.stats().engine_cancelled, 1);
    assert_eq!(t.tls.stats().abandoned, 1);
    assert!(t.tcp.c(gone).sent.is_empty(), "no ServerHello for a connection that went");
    for (c, mut client) in clients {
        assert!(t.pump(c, &mut client).is_none());
        assert!(!client.is_handshaking());
    }
    assert_eq!(t.tls.stats().handshakes.values().sum::<u64>(), 2);
    assert_eq!(t.tls.engine_wait(), EngineWait::Nothing, "nothing counted as in the engine");

    // Timed out: the first connection's step ran in the first turn, the
    // other two wait in the queue when the deadline passes.
    let mut t = T::with_engine(&[&server], TlsOptions::default(), Some((64, 1)));
    let clients = t.hellos(&cfg, 3);
    let mut out = Vec::new();
    t.tls.poll(t.now, &mut t.tcp, &mut out);
    t.now += Duration::from_secs(HANDSHAKE_TIMEOUT.as_secs() + 1);
    t.tls.poll(t.now, &mut t.tcp, &mut out);
    let s = t.tls.stats();
    assert_eq!((s.timeouts, s.engine_cancelled, s.engine_steps), (3, 2, 3), "{s:?}");
    assert_eq!(t.tls.engine_wait(), EngineWait::Nothing);
    let answered: Vec<bool> = clients.iter().map(|(c, _)| !t.tcp.c(*c).sent.is_empty()).collect();
    assert_eq!(answered, [true, false, false]);
    assert!(clients.iter().all(|(c, _)| t.tcp.c(*c).aborted));
}

#[test]
fn a_key_update_from_the_client_renews_the_keys_both_ways() {
    let pki = Pki::new("keyupdate");
    let server = pki.issue("server", "switchyard.test", &["switchyard.test"], false);
    let mut t = T::new(&[&server], TlsOptions::default());
    let cfg = client_config(&pki, &[&rustls::version::TLS13], None, &[b"http/1.1"]);
    let (c, mut client, err) = t.connect(&cfg, "switchyard.test");
    assert!(err.is_none(), "{err:?}");
    for round in 1..=3u64 {
        // The client asks for new keys (update_requested): it sends under
        // new keys at once and expects ours to change too.
        client.refresh_traffic_keys().unwrap();
        let up = pattern(40_000, round as u8);
        client.writer().write_all(&up).unwrap();
        assert!(t.pump(c, &mut client).is_none());
        assert!(t.l7_read(c) == up, "round {round}: upload differs");
        let down = pattern(40_000, 100 + round as u8);
        let mut sent = 0;
        while sent < down.len() {
            sent += t.tls.wrap(&mut t.tcp).send(c, &down[sent..]).unwrap();
            let err = t.pump(c, &mut client);
            assert!(err.is_none(), "round {round}: {err:?}");
        }
        assert!(t.received.remove(&c).unwrap_or_default() == down, "round {round}: download");
        let r = &t.tls.stats().records;
        assert_eq!((r.key_updates_received, r.key_updates_sent), (round, round), "{r:?}");
    }
}

#[test]
fn a_key_update_right_behind_the_clients_finished_is_answered() {
    let pki = Pki::new("keyupdate-early");
    let server = pki.issue("server", "switchyard.test", &["switchyard.test"], false);
    // With tickets (sent right after the client's Finished) and without
    // (then nothing stops rustls between the Finished and what follows).
    for tickets in [2, 0] {
        early_key_update(&pki, &server, tickets);
    }
}

fn early_key_update(pki: &Pki, server: &Issued, tickets: usize) {
    let mut t = T::new(&[server], TlsOptions::default());
    let pairs = vec![(server.cert_path.clone(), server.key_path.clone())];
    let mut sc = (*server_config_with(&pairs, &TlsOptions::default()).unwrap()).clone();
    sc.send_tls13_tickets = tickets;
    t.tls = Tls::new(vec![(LISTENER, Arc::new(sc))], SoftwareEngine::new(1, 64));
    let cfg = client_config(pki, &[&rustls::version::TLS13], None, &[b"http/1.1"]);
    let c = t.accept();
    let mut client =
        ClientConnection::new(cfg, ServerName::try_from("switchyard.test").unwrap()).unwrap();
    let mut hello = Vec::new();
    client.write_tls(&mut hello).unwrap();
    t.tcp.peer_sends(c, &hello);
    t.event(TcpEvent::Readable { conn: c });
    t.settle();
    let flight = t.tcp.take(c);
    let mut rd = &flight[..];
    while !rd.is_empty() {
        client.read_tls(&mut rd).unwrap();
        client.process_new_packets().unwrap();
    }
    // The client's Finished, a KeyUpdate asking for ours, and data: all in
    // one segment, so the engine sees them together.
    client.refresh_traffic_keys().unwrap();
    client.writer().write_all(b"under new keys").unwrap();
    assert!(t.pump(c, &mut client).is_none());
    assert_eq!(t.l7_read(c), b"under new keys");
    t.tls.wrap(&mut t.tcp).send(c, b"so are we").unwrap();
    assert!(t.pump(c, &mut client).is_none(), "the client reads our records");
    assert_eq!(t.received.get(&c).map(Vec::as_slice), Some(&b"so are we"[..]));
    let r = &t.tls.stats().records;
    assert_eq!((r.key_updates_received, r.key_updates_sent), (1, 1), "tickets {tickets}: {r:?}");
}

#[test]
fn l7_refused_for_want_of_room_hears_writable_once_the_records_leave() {
    let pki = Pki::new("owed-writable");
    let server = pki.issue("server", "switchyard.test", &["switchyard.test"], false);
    let mut t = T::new(&[&server], TlsOptions::default());
    let cfg = client_config(&pki, &[&rustls::version::TLS13], None, &[b"http/1.1"]);
    let (c, mut client, _) = t.connect(&cfg, "switchyard.test");
    t.tcp.c(c).window = 1 << 20; // TCP takes everything: never a short send
    t.l7.clear();
    let data = pattern(200_000, 3);
    let mut sent = 0;
    loop {
        let n = t.tls.wrap(&mut t.tcp).send(c, &data[sent..]).unwrap();
        if n == 0 {
            break;
        }
        sent += n;
    }
    assert!(sent >= 60_000 && sent < data.len(), "refused after {sent}");
    t.settle();
    assert!(
        t.l7.iter().any(|e| matches!(e, TcpEvent::Writable { conn } if *conn == c)),
        "no Writable for L7: {:?}",
        t.l7
    );
    assert!(t.pump(c, &mut client).is_none());
    assert!(t.received.remove(&c).unwrap_or_default() == data[..sent]);
}

#[test]
fn what_l7_writes_in_one_turn_is_sealed_as_one_batch_of_records() {
    let pki = Pki::new("batch");
    let server = pki.issue("server", "switchyard.test", &["switchyard.test"], false);
    let mut t = T::new(&[&server], TlsOptions::default());
    let cfg = client_config(&pki, &[&rustls::version::TLS13], None, &[b"http/1.1"]);
    let (c, mut client, _) = t.connect(&cfg, "switchyard.test");
    let before = t.tls.stats().records.sealed;
    // A response written as 50 pieces (headers, then body pieces) in one
    // turn: sealed at the end of the turn into one record.
    let mut want = Vec::new();
    for i in 0..50u8 {
        let piece = pattern(100, i);
        assert_eq!(t.tls.wrap(&mut t.tcp).send(c, &piece).unwrap(), 100);
        want.extend(piece);
    }
    t.tls.seal(&mut t.tcp);
    assert_eq!(t.tls.stats().records.sealed - before, 1);
    assert!(t.pump(c, &mut client).is_none());
    assert!(t.received.remove(&c).unwrap_or_default() == want);
}

#[test]
fn sni_picks_the_certificate_and_alpn_offers_h2_first() {
    let pki = Pki::new("sni");
    let a = pki.issue("a", "a.test", &["a.test"], false);
    let b = pki.issue("b", "b.test", &["b.test"], false);
    let mut t = T::new(&[&a, &b], TlsOptions::default());
    for (name, want) in [("b.test", &b.der), ("a.test", &a.der)] {
        let cfg = client_config(&pki, &[&rustls::version::TLS13], None, &[b"h2", b"http/1.1"]);
        let (c, client, err) = t.connect(&cfg, name);
        assert!(err.is_none(), "{err:?}");
        assert_eq!(&client.peer_certificates().unwrap()[0], want, "certificate for {name}");
        assert_eq!(client.alpn_protocol(), Some(&b"h2"[..]));
        // L7 is told what was agreed (its HTTP/2 front serves by it).
        assert_eq!(t.tls.wrap(&mut t.tcp).alpn(c), Some(&b"h2"[..]));
    }
    let cfg = client_config(&pki, &[&rustls::version::TLS13], None, &[b"http/1.1"]);
    let (c, client, _) = t.connect(&cfg, "a.test");
    assert_eq!(client.alpn_protocol(), Some(&b"http/1.1"[..]));
    assert_eq!(t.tls.wrap(&mut t.tcp).alpn(c), Some(&b"http/1.1"[..]));
    // A client that offers none: nothing agreed.
    let (c, client, _) =
        t.connect(&client_config(&pki, &[&rustls::version::TLS13], None, &[]), "a.test");
    assert_eq!(client.alpn_protocol(), None);
    assert_eq!(t.tls.wrap(&mut t.tcp).alpn(c), None);
}

/// A client's session store that counts the TLS 1.3 tickets it is given.
#[derive(Debug)]
struct CountingStore {
    inner: rustls::client::ClientSessionMemoryCache,
    tickets: std::sync::atomic::AtomicUsize,
}

impl rustls::client::ClientSessionStore for CountingStore {
    fn set_kx_hint(&self, name: ServerName<'static>, group: rustls::NamedGroup) {
        self.inner.set_kx_hint(name, group)
    }
    fn kx_hint(&self, name: &ServerName<'_>) -> Option<rustls::NamedGroup> {
        self.inner.kx_hint(name)
    }
    fn set_tls12_session(
        &self,
        name: ServerName<'static>,
        value: rustls::client::Tls12ClientSessionValue,
    ) {
        self.inner.set_tls12_session(name, value)
    }
    fn tls12_session(
        &self,
        name: &ServerName<'_>,
    ) -> Option<rustls::client::Tls12ClientSessionValue> {
        self.inner.tls12_session(name)
    }
    fn remove_tls12_session(&self, name: &ServerName<'static>) {
        self.inner.remove_tls12_session(name)
    }
    fn insert_tls13_ticket(
        &self,
        name: ServerName<'static>,
        value: rustls::client::Tls13ClientSessionValue,
    ) {
        self.tickets.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        self.inner.insert_tls13_ticket(name, value)
    }
    fn take_tls13_ticket(
        &self,
        name: &ServerName<'static>,
    ) -> Option<rustls::client::Tls13ClientSessionValue> {
        self.inner.take_tls13_ticket(name)
    }
}

#[test]
fn the_second_connection_resumes_and_gets_one_ticket_for_the_one_it_used() {
    let pki = Pki::new("resume");
    let server = pki.issue("server", "switchyard.test", &["switchyard.test"], false);
    let mut t = T::new(&[&server], TlsOptions::default());
    let store = Arc::new(CountingStore {
        inner: rustls::client::ClientSessionMemoryCache::new(8),
        tickets: Default::default(),
    });
    let mut cfg = (*client_config(&pki, &[&rustls::version::TLS13], None, &[b"http/1.1"])).clone();
    cfg.resumption = rustls::client::Resumption::store(store.clone());
    let cfg = Arc::new(cfg);
    let tickets = || store.tickets.load(std::sync::atomic::Ordering::Relaxed);
    let (_, first, _) = t.connect(&cfg, "switchyard.test");
    assert_eq!(first.handshake_kind(), Some(rustls::HandshakeKind::Full));
    // Two tickets after a full handshake, so two connections can resume at once.
    assert_eq!(tickets(), 2);
    for n in 1..=2 {
        let (_, again, err) = t.connect(&cfg, "switchyard.test");
        assert!(err.is_none(), "{err:?}");
        assert_eq!(again.handshake_kind(), Some(rustls::HandshakeKind::Resumed));
        assert_eq!(t.tls.stats().resumed, n);
        // One after each resumption: the client still holds two.
        assert_eq!(tickets(), 2 + n as usize);
    }
}

#[test]
fn a_session_from_one_worker_resumes_on_another() {
    let pki = Pki::new("resume-workers");
    let server = pki.issue("server", "switchyard.test", &["switchyard.test"], false);
    let pairs = vec![(server.cert_path.clone(), server.key_path.clone())];
    // One listener configuration, two workers' TLS layers (each with its own
    // session-ID cache), as `workers = 2` builds them.
    let shared = server_config_with(&pairs, &TlsOptions::default()).unwrap();
    let mut a = T::new(&[&server], TlsOptions::default());
    let mut b = T::new(&[&server], TlsOptions::default());
    a.tls = Tls::new(vec![(LISTENER, shared.clone())], SoftwareEngine::new(1, 64));
    b.tls = Tls::new(vec![(LISTENER, shared)], SoftwareEngine::new(1, 64));
    for v in [&rustls::version::TLS13, &rustls::version::TLS12] {
        let cfg = client_config(&pki, &[v], None, &[b"http/1.1"]);
        let (_, first, _) = a.connect(&cfg, "switchyard.test");
        assert_eq!(first.handshake_kind(), Some(rustls::HandshakeKind::Full));
        let (_, second, err) = b.connect(&cfg, "switchyard.test");
        assert!(err.is_none(), "{err:?}");
        assert_eq!(second.handshake_kind(), Some(rustls::HandshakeKind::Resumed), "{v:?}");
    }
    assert_eq!(b.tls.stats().resumed, 2);
}

#[test]
fn mutual_tls_accepts_a_good_certificate_and_refuses_the_rest_with_their_alerts() {
    let pki = Pki::new("mtls");
    let other = Pki::new("mtls-other");
    let server = pki.issue("server", "switchyard.test", &["switchyard.test"], false);
    let alice = pki.issue("alice", "alice", &[], false);
    let expired = pki.issue("expired", "old", &[], true);
    let stranger = other.issue("stranger", "mallory", &[], false);
    let opts = TlsOptions {
        client_ca: Some(pki.ca_path()),
        client_cert_required: true,
        ..TlsOptions::default()
    };
    let mut t = T::new(&[&server], opts);
    let v13: &[&'static rustls::SupportedProtocolVersion] = &[&rustls::version::TLS13];
    // A good certificate: in, and its subject is the connection's identity.
    let cfg = client_config(&pki, v13, Some(&alice), &[b"http/1.1"]);
    let (c, _, err) = t.connect(&cfg, "switchyard.test");
    assert!(err.is_none(), "{err:?}");
    let id = t.tls.wrap(&mut t.tcp).client_identity(c).map(str::to_string);
    let id = id.expect("an identity");
    assert!(id.contains("CN=alice") && id.contains("O=Switchyard Test"), "{id}");
    assert_eq!(t.tls.stats().client_certificates, 1);
    // No certificate, an expired one, one from another CA: each refused
    // with its alert, which the client sees, and none reaches L7.
    for (who, cert, alert, reason) in [
        ("none", None, AlertDescription::CertificateRequired, "no-certificate"),
        ("expired", Some(&expired), AlertDescription::CertificateExpired, "expired"),
        ("stranger", Some(&stranger), AlertDescription::UnknownCA, "unknown-issuer"),
    ] {
        let before = t.l7.len();
        let cfg = client_config(&pki, v13, cert, &[b"http/1.1"]);
        let (c, mut client, err) = t.connect(&cfg, "switchyard.test");
        let err = err.or_else(|| t.pump(c, &mut client));
        assert_eq!(err, Some(rustls::Error::AlertReceived(alert)), "{who}");
        assert!(t.tcp.c(c).closed || t.tcp.c(c).aborted, "{who}: connection left open");
        assert_eq!(t.l7.len(), before, "{who} reached L7");
        assert_eq!(t.tls.stats().alerts_sent.get(&format!("{alert:?}")), Some(&1), "{who}");
        assert_eq!(t.tls.stats().failed_by_reason.get(reason), Some(&1), "{who}");
    }
    assert_eq!(t.tls.stats().failed, 3);
    // Optional client certificates: no certificate is let in, without an
    // identity.
    let opts = TlsOptions {
        client_ca: Some(pki.ca_path()),
        client_cert_required: false,
        ..TlsOptions::default()
    };
    let mut t = T::new(&[&server], opts);
    let (c, _, err) = t.connect(&client_config(&pki, v13, None, &[b"http/1.1"]), "switchyard.test");
    assert!(err.is_none(), "{err:?}");
    assert_eq!(t.tls.wrap(&mut t.tcp).client_identity(c), None);
}

#[test]
fn tls12_can_be_switched_off() {
    let pki = Pki::new("v13");
    let server = pki.issue("server", "switchyard.test", &["switchyard.test"], false);
    let mut t = T::new(&[&server], TlsOptions { tls13_only: true, ..TlsOptions::default() });
    let cfg = client_config(&pki, &[&rustls::version::TLS12], None, &[b"http/1.1"]);
    let (_, _, err) = t.connect(&cfg, "switchyard.test");
    assert_eq!(err, Some(rustls::Error::AlertReceived(AlertDescription::ProtocolVersion)));
    assert_eq!(t.tls.stats().alerts_sent.get("ProtocolVersion"), Some(&1), "{:?}", t.tls.stats());
    assert_eq!(t.tls.stats().failed_by_reason.get("incompatible"), Some(&1));
    let cfg = client_config(&pki, &[&rustls::version::TLS13], None, &[b"http/1.1"]);
    assert!(t.connect(&cfg, "switchyard.test").2.is_none());
}

#[test]
fn the_server_chooses_the_cipher_suite_in_its_own_order() {
    use rustls::CipherSuite as S;
    let pki = Pki::new("suites");
    let server = pki.issue("server", "switchyard.test", &["switchyard.test"], false);
    // rustls's client lists AES-256-GCM first; the default order picks
    // AES-128-GCM all the same, for TLS 1.3 and 1.2.
    let mut t = T::new(&[&server], TlsOptions::default());
    for (v, want) in [
        (&rustls::version::TLS13, S::TLS13_AES_128_GCM_SHA256),
        (&rustls::version::TLS12, S::TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256),
    ] {
        let cfg = client_config(&pki, &[v], None, &[b"http/1.1"]);
        let (_, client, err) = t.connect(&cfg, "switchyard.test");
        assert!(err.is_none(), "{err:?}");
        assert_eq!(client.negotiated_cipher_suite().map(|s| s.suite()), Some(want));
    }
    // A configured order is followed.
    let only = |names: &[&str]| TlsOptions {
        cipher_suites: Some(names.iter().map(|n| n.to_string()).collect()),
        ..TlsOptions::default()
    };
    let mut t = T::new(
        &[&server],
        TlsOptions {
            tls13_only: true,
            ..only(&["TLS13_CHACHA20_POLY1305_SHA256", "TLS13_AES_256_GCM_SHA384"])
        },
    );
    let cfg = client_config(&pki, &[&rustls::version::TLS13], None, &[b"http/1.1"]);
    let (_, client, err) = t.connect(&cfg, "switchyard.test");
    assert!(err.is_none(), "{err:?}");
    assert_eq!(
        client.negotiated_cipher_suite().map(|s| s.suite()),
        Some(S::TLS13_CHACHA20_POLY1305_SHA256)
    );
    // Names it does not know, or no TLS 1.3 suite, are configuration errors.
    let pair = [(server.cert_path.clone(), server.key_path.clone())];
    let e = switchyard_tls::server_config_with(&pair, &only(&["TLS13_RC4"])).unwrap_err();
    assert!(e.to_string().contains("unknown cipher suite `TLS13_RC4`"), "{e}");
    let e = switchyard_tls::server_config_with(
        &pair,
        &only(&["TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256"]),
    )
    .unwrap_err();
    assert!(e.to_string().contains("no TLS 1.3 suite"), "{e}");
    // TLS 1.2 left on without a suite for it.
    let e = switchyard_tls::server_config_with(&pair, &only(&["TLS13_AES_128_GCM_SHA256"]))
        .unwrap_err();
    assert!(e.to_string().contains("no TLS 1.2 suite"), "{e}");
}

#[test]
fn bad_input_is_refused_counted_and_disturbs_no_one_else() {
    let pki = Pki::new("bad");
    let server = pki.issue("server", "switchyard.test", &["switchyard.test"], false);
    let mut t = T::new(&[&server], TlsOptions::default());
    let cfg = client_config(&pki, &[&rustls::version::TLS13], None, &[b"http/1.1"]);
    // A healthy connection, kept through everything below.
    let (good, mut good_client, err) = t.connect(&cfg, "switchyard.test");
    assert!(err.is_none());

    // Garbage instead of a ClientHello (plain HTTP on the TLS port).
    let c = t.accept();
    t.tcp.peer_sends(c, b"GET / HTTP/1.1\r\nHost: x\r\n\r\n");
    t.event(TcpEvent::Readable { conn: c });
    t.settle();
    assert!(t.tcp.c(c).closed || t.tcp.c(c).aborted, "garbage: still open");
    let failed_garbage = t.tls.stats().failed;
    assert!(failed_garbage >= 1);
    assert_eq!(t.tls.stats().failed_by_reason.get("malformed"), Some(&failed_garbage));

    // A truncated ClientHello, then the client gives up.
    let mut hello = Vec::new();
    let mut probe =
        ClientConnection::new(cfg.clone(), ServerName::try_from("switchyard.test").unwrap())
            .unwrap();
    probe.write_tls(&mut hello).unwrap();
    let c = t.accept();
    t.tcp.peer_sends(c, &hello[..hello.len() / 2]);
    t.event(TcpEvent::Readable { conn: c });
    t.settle();
    assert!(!t.tcp.c(c).closed && !t.tcp.c(c).aborted, "half a hello waits for the rest");
    t.event(TcpEvent::PeerClosed { conn: c });
    t.settle();
    assert!(t.tcp.c(c).closed || t.tcp.c(c).aborted);
    assert_eq!(t.tls.stats().abandoned, 1);

    // An oversized ClientHello: a handshake message claiming 16 MiB.
    let c = t.accept();
    let mut big = vec![0x16, 0x03, 0x01, 0x40, 0x00, 0x01, 0xff, 0xff, 0xff];
    big.resize(5 + 0x4000, 0x41);
    for _ in 0..5 {
        let mut rec = vec![0x16, 0x03, 0x01, 0x40, 0x00];
        rec.resize(5 + 0x4000, 0x41);
        big.extend_from_slice(&rec);
    }
    t.tcp.peer_sends(c, &big);
    t.event(TcpEvent::Readable { conn: c });
    t.settle();
    assert!(t.tcp.c(c).closed || t.tcp.c(c).aborted, "oversized hello: still open");
    assert!(t.tls.stats().failed > failed_garbage);
    // Refused by its size before rustls reads it, and counted so.
    let reasons = &t.tls.stats().failed_by_reason;
    assert_eq!(reasons.get("oversized"), Some(&1), "{reasons:?}");
    assert_eq!(reasons.values().sum::<u64>(), t.tls.stats().failed, "{reasons:?}");

    // A record with a bad MAC on an established connection: alert, reset.
    let (c, mut client, _) = t.connect(&cfg, "switchyard.test");
    client.writer().write_all(b"GET / HTTP/1.1\r\n\r\n").unwrap();
    let mut rec = Vec::new();
    client.write_tls(&mut rec).unwrap();
    let last = rec.len() - 1;
    rec[last] ^= 0x80; // the tag
    t.tcp.peer_sends(c, &rec);
    t.event(TcpEvent::Readable { conn: c });
    assert!(t.l7_read(c).is_empty(), "nothing of a forged record reaches L7");
    assert!(t.tcp.c(c).closed, "bad MAC: closed");
    // The client hears why: our bad_record_mac alert, sealed, before the FIN.
    let alert = t.tcp.take(c);
    let mut rd = &alert[..];
    client.read_tls(&mut rd).unwrap();
    let e = client.process_new_packets().unwrap_err();
    assert_eq!(e, rustls::Error::AlertReceived(rustls::AlertDescription::BadRecordMac));
    assert_eq!(t.tls.stats().alerts_sent.get("BadRecordMac"), Some(&1), "{:?}", t.tls.stats());

    // A handshake that never finishes: reset after the timeout.
    let c = t.accept();
    t.settle();
    t.now += Duration::from_secs(5);
    t.settle();
    assert!(!t.tcp.c(c).aborted, "not yet");
    t.now += Duration::from_secs(6);
    t.settle();
    assert!(t.tcp.c(c).aborted, "stalled handshake reset");
    assert_eq!(t.tls.stats().timeouts, 1);

    // Through all of it the healthy connection works both ways.
    good_client.writer().write_all(b"still here").unwrap();
    assert!(t.pump(good, &mut good_client).is_none());
    assert_eq!(t.l7_read(good), b"still here");
    t.tls.wrap(&mut t.tcp).send(good, b"and answered").unwrap();
    assert!(t.pump(good, &mut good_client).is_none());
    assert_eq!(t.received.get(&good).map(Vec::as_slice), Some(&b"and answered"[..]));
}

/// A client verifier that records the OCSP response the server stapled.
#[derive(Debug)]
struct Stapled {
    inner: Arc<rustls::client::WebPkiServerVerifier>,
    seen: Arc<std::sync::Mutex<Option<Vec<u8>>>>,
}

impl rustls::client::danger::ServerCertVerifier for Stapled {
    fn verify_server_cert(
        &self,
        ee: &CertificateDer<'_>,
        inter: &[CertificateDer<'_>],
        name: &ServerName<'_>,
        ocsp: &[u8],
        now: rustls::pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        *self.seen.lock().unwrap() = Some(ocsp.to_vec());
        self.inner.verify_server_cert(ee, inter, name, ocsp, now)
    }
    fn verify_tls12_signature(
        &self,
        m: &[u8],
        c: &CertificateDer<'_>,
        d: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(m, c, d)
    }
    fn verify_tls13_signature(
        &self,
        m: &[u8],
        c: &CertificateDer<'_>,
        d: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(m, c, d)
    }
    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}

#[test]
fn an_ocsp_response_from_a_file_is_stapled() {
    let pki = Pki::new("ocsp");
    let server = pki.issue("server", "switchyard.test", &["switchyard.test"], false);
    // OCSPResponse { responseStatus successful } (RFC 6960), as a file.
    let staple = [0x30u8, 0x03, 0x0a, 0x01, 0x00];
    let path = pki.dir.join("staple.der");
    std::fs::write(&path, staple).unwrap();
    let opts = TlsOptions { ocsp: vec![(0, path)], ..TlsOptions::default() };
    let mut t = T::new(&[&server], opts);
    let seen = Arc::new(std::sync::Mutex::new(None));
    let inner = rustls::client::WebPkiServerVerifier::builder_with_provider(
        Arc::new(pki.roots()),
        provider(),
    )
    .build()
    .unwrap();
    for v in [&rustls::version::TLS13, &rustls::version::TLS12] {
        *seen.lock().unwrap() = None;
        let cfg = ClientConfig::builder_with_provider(provider())
            .with_protocol_versions(&[v])
            .unwrap()
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(Stapled {
                inner: inner.clone(),
                seen: seen.clone(),
            }))
            .with_no_client_auth();
        let (_, _, err) = t.connect(&Arc::new(cfg), "switchyard.test");
        assert!(err.is_none(), "{v:?}: {err:?}");
        assert_eq!(seen.lock().unwrap().as_deref(), Some(&staple[..]), "{v:?}: stapled");
    }
    // Not an OCSP response: a configuration error naming the file.
    let bad = pki.dir.join("bad.der");
    std::fs::write(&bad, b"hello").unwrap();
    let pairs = [(server.cert_path.clone(), server.key_path.clone())];
    let opts = TlsOptions { ocsp: vec![(0, bad.clone())], ..TlsOptions::default() };
    let e = server_config_with(&pairs, &opts).unwrap_err().to_string();
    assert!(e.contains("bad.der") && e.contains("not a DER OCSP response"), "{e}");
}

// ---------------------------------------------------------------------------
// TLS towards backends: the layer is the client, a rustls server the backend.

const BACKEND: &str = "198.18.0.21:8443";

/// A backend: a rustls server for `cert`, asking for a client certificate
/// from `client_ca` if given.
fn backend(cert: &Issued, client_ca: Option<&Pki>) -> rustls::ServerConnection {
    rustls::ServerConnection::new(backend_config(cert, client_ca)).unwrap()
}

fn backend_config(cert: &Issued, client_ca: Option<&Pki>) -> Arc<rustls::ServerConfig> {
    let b = rustls::ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(rustls::DEFAULT_VERSIONS)
        .unwrap();
    let b = match client_ca {
        None => b.with_no_client_auth(),
        Some(p) => b.with_client_cert_verifier(
            rustls::server::WebPkiClientVerifier::builder_with_provider(
                Arc::new(p.roots()),
                provider(),
            )
            .build()
            .unwrap(),
        ),
    };
    let mut cfg = b.with_single_cert(vec![cert.der.clone()], cert.key.clone_key()).unwrap();
    cfg.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Arc::new(cfg)
}

impl T {
    /// The layer with no listeners, speaking TLS to `BACKEND`.
    fn upstream(opts: &switchyard_tls::ClientOptions, sni: &str) -> T {
        let mut tls = Tls::new(Vec::new(), SoftwareEngine::new(1, 64));
        let cfg = switchyard_tls::client_config(opts).unwrap();
        tls.add_upstream(BACKEND.parse().unwrap(), cfg, sni).unwrap();
        T {
            tls,
            tcp: FakeTcp::default(),
            now: Instant::from_secs(1),
            l7: Vec::new(),
            received: Default::default(),
        }
    }

    /// L7 opens a connection to the backend and TCP completes it: the layer
    /// keeps `Connected` for after the handshake.
    fn dial(&mut self) -> ConnId {
        let c = self.tls.wrap(&mut self.tcp).connect(self.now, BACKEND.parse().unwrap()).unwrap();
        assert_eq!(self.tls.wrap(&mut self.tcp).state(c), ConnState::Connecting);
        self.tcp.c(c).state = Some(ConnState::Established);
        assert!(self.tls.on_event(TcpEvent::Connected { conn: c }, &mut self.tcp).is_none());
        assert_eq!(self.tls.wrap(&mut self.tcp).state(c), ConnState::Connecting);
        c
    }

    /// Moves bytes between connection `c` and the backend `server` until
    /// neither has more; the backend's plaintext lands in `received`.
    /// Returns the backend's error, if it failed.
    fn pump_backend(
        &mut self,
        c: ConnId,
        server: &mut rustls::ServerConnection,
    ) -> Option<rustls::Error> {
        for _ in 0..64 {
            let mut moved = false;
            self.settle();
            let from_lb = self.tcp.take(c);
            if !from_lb.is_empty() {
                moved = true;
                let mut rd = &from_lb[..];
                while !rd.is_empty() {
                    server.read_tls(&mut rd).expect("backend takes the records");
                    if let Err(e) = server.process_new_packets() {
                        let mut alert = Vec::new();
                        let _ = server.write_tls(&mut alert);
                        self.tcp.peer_sends(c, &alert);
                        self.event(TcpEvent::Readable { conn: c });
                        self.settle();
                        return Some(e);
                    }
                    let mut buf = vec![0u8; 65536];
                    while let Ok(n) = server.reader().read(&mut buf) {
                        if n == 0 {
                            break;
                        }
                        self.received.entry(c).or_default().extend_from_slice(&buf[..n]);
                    }
                }
            }
            let mut out = Vec::new();
            while server.wants_write() {
                server.write_tls(&mut out).unwrap();
            }
            if !out.is_empty() && !self.tcp.c(c).aborted {
                self.tcp.peer_sends(c, &out);
                self.event(TcpEvent::Readable { conn: c });
                moved = true;
            }
            if !moved {
                return None;
            }
        }
        panic!("no quiescence");
    }
}

fn verify_with(pki: &Pki) -> switchyard_tls::ClientOptions {
    switchyard_tls::ClientOptions {
        ca: Some(pki.ca_path()),
        alpn: vec![b"http/1.1".to_vec()],
        ..Default::default()
    }
}

#[test]
fn upstream_tls_verifies_the_backend_and_carries_a_mebibyte_each_way_byte_exact() {
    let pki = Pki::new("up-ok");
    let cert = pki.issue("backend", "api", &["api.internal"], false);
    let mut t = T::upstream(&verify_with(&pki), "api.internal");
    let c = t.dial();
    let server_cfg = backend_config(&cert, None);
    let mut server = rustls::ServerConnection::new(server_cfg.clone()).unwrap();
    let err = t.pump_backend(c, &mut server);
    assert!(err.is_none(), "{err:?}");
    assert!(!server.is_handshaking());
    // The backend saw the name and the protocol L7 asked for.
    assert_eq!(server.server_name(), Some("api.internal"));
    assert_eq!(server.alpn_protocol(), Some(&b"http/1.1"[..]));
    assert!(matches!(t.l7.first(), Some(TcpEvent::Connected { conn }) if *conn == c), "{:?}", t.l7);
    assert_eq!(t.tls.wrap(&mut t.tcp).state(c), ConnState::Established);
    let up = t.tls.stats().upstream.clone();
    assert_eq!(up.handshakes.values().sum::<u64>(), 1, "{up:?}");
    assert!(up.handshakes.keys().any(|(v, _)| v == "TLSv1_3"), "{up:?}");
    assert!(up.failed.is_empty(), "{up:?}");
    // The server side's counters stay untouched.
    assert!(t.tls.stats().handshakes.is_empty());
    // L7 to the backend.
    let req = pattern(1 << 20, 3);
    let mut sent = 0;
    while sent < req.len() {
        sent += t.tls.wrap(&mut t.tcp).send(c, &req[sent..]).unwrap();
        assert!(t.pump_backend(c, &mut server).is_none());
    }
    let got = t.received.remove(&c).unwrap_or_default();
    assert!(got == req, "request differs ({} of {} bytes)", got.len(), req.len());
    // The backend to L7.
    let resp = pattern(1 << 20, 9);
    let mut back = Vec::new();
    for chunk in resp.chunks(16_384) {
        server.writer().write_all(chunk).unwrap();
        assert!(t.pump_backend(c, &mut server).is_none());
        back.extend(t.l7_read(c));
    }
    assert!(back == resp, "response differs ({} of {} bytes)", back.len(), resp.len());
    // Small records, many at once in TCP (rustls holds at most 16 KiB of
    // unread plaintext: fed all at once, they overflowed it and reset the
    // connection).
    server.set_buffer_limit(None);
    for record in [1000, 4150, 5500, 8300, 12_000] {
        let resp = pattern(256 << 10, record as u8);
        for chunk in resp.chunks(record) {
            server.writer().write_all(chunk).unwrap();
        }
        assert!(t.pump_backend(c, &mut server).is_none());
        assert!(t.tcp.c(c).to_l7.len() > 64 << 10, "the records wait in TCP together");
        let back = t.l7_read(c);
        assert!(back == resp, "{record}-byte records: {} of {} bytes", back.len(), resp.len());
    }
    assert!(t.tls.stats().upstream.failed.is_empty(), "{:?}", t.tls.stats().upstream);
    // L7 half-closes (a tunnel whose client sent its FIN): close_notify
    // goes, and what the backend still sends is read (TLS 1.3 allows it).
    t.tls.wrap(&mut t.tcp).close(c);
    assert!(t.pump_backend(c, &mut server).is_none());
    server.writer().write_all(b"late bytes").unwrap();
    assert!(t.pump_backend(c, &mut server).is_none());
    assert_eq!(t.l7_read(c), b"late bytes");
    // A second connection resumes the session.
    let c2 = t.dial();
    let mut server2 = rustls::ServerConnection::new(server_cfg).unwrap();
    assert!(t.pump_backend(c2, &mut server2).is_none());
    assert_eq!(t.tls.stats().upstream.resumed, 1, "{:?}", t.tls.stats().upstream);
}

/// A forged record from a backend: nothing of it reaches L7, which hears a
/// reset; the backend hears our bad_record_mac alert before the FIN.
#[test]
fn a_forged_record_from_a_backend_gets_an_alert_before_the_fin() {
    let pki = Pki::new("up-mac");
    let cert = pki.issue("backend", "api", &["api.internal"], false);
    let mut t = T::upstream(&verify_with(&pki), "api.internal");
    let c = t.dial();
    let mut server = backend(&cert, None);
    assert!(t.pump_backend(c, &mut server).is_none());
    server.writer().write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok").unwrap();
    let mut rec = Vec::new();
    while server.wants_write() {
        server.write_tls(&mut rec).unwrap();
    }
    let last = rec.len() - 1;
    rec[last] ^= 0x80; // the tag
    t.tcp.peer_sends(c, &rec);
    t.event(TcpEvent::Readable { conn: c });
    assert!(t.l7_read(c).is_empty(), "nothing of a forged record reaches L7");
    t.settle();
    assert!(
        t.l7.iter().any(|e| matches!(e, TcpEvent::Closed { conn, reset: true } if *conn == c)),
        "{:?}",
        t.l7
    );
    assert!(t.tcp.c(c).closed && !t.tcp.c(c).aborted, "a FIN after the alert, not a reset");
    let alert = t.tcp.take(c);
    let mut rd = &alert[..];
    server.read_tls(&mut rd).unwrap();
    let e = server.process_new_packets().unwrap_err();
    assert_eq!(e, rustls::Error::AlertReceived(rustls::AlertDescription::BadRecordMac));
    let up = &t.tls.stats().upstream;
    assert_eq!(up.alerts_sent.get("BadRecordMac"), Some(&1), "{up:?}");
}

/// L7 sees the connection close, never connect.
fn refused(t: &T, c: ConnId) -> bool {
    !t.l7.iter().any(|e| matches!(e, TcpEvent::Connected { .. }))
        && t.l7.iter().any(|e| matches!(e, TcpEvent::Closed { conn, reset: true } if *conn == c))
}

/// An HTTP/2 pool offers only `h2`: a backend that agrees is connected, one
/// that ignores ALPN (it may not speak HTTP/2) is refused and counted.
#[test]
fn an_h2_backend_must_agree_to_h2() {
    let pki = Pki::new("up-alpn");
    let cert = pki.issue("backend", "api", &["api.internal"], false);
    let opts = switchyard_tls::ClientOptions { alpn: vec![b"h2".to_vec()], ..verify_with(&pki) };
    let mut t = T::upstream(&opts, "api.internal");
    let c = t.dial();
    let mut server = backend(&cert, None);
    assert!(t.pump_backend(c, &mut server).is_none());
    assert_eq!(server.alpn_protocol(), Some(&b"h2"[..]));
    assert!(matches!(t.l7.first(), Some(TcpEvent::Connected { .. })), "{:?}", t.l7);
    let mut t = T::upstream(&opts, "api.internal");
    let c = t.dial();
    let mut no_alpn = (*backend_config(&cert, None)).clone();
    no_alpn.alpn_protocols.clear();
    let mut server = rustls::ServerConnection::new(Arc::new(no_alpn)).unwrap();
    let _ = t.pump_backend(c, &mut server);
    assert!(refused(&t, c), "{:?}", t.l7);
    let up = &t.tls.stats().upstream;
    assert_eq!(up.failed.get("no-application-protocol"), Some(&1), "{up:?}");
}

#[test]
fn a_backend_from_another_ca_or_for_another_name_is_refused_and_counted() {
    let pki = Pki::new("up-bad");
    let other = Pki::new("up-bad-other");
    // Another CA.
    let stranger = other.issue("stranger", "api", &["api.internal"], false);
    let mut t = T::upstream(&verify_with(&pki), "api.internal");
    let c = t.dial();
    let mut server = backend(&stranger, None);
    let err = t.pump_backend(c, &mut server);
    assert_eq!(err, Some(rustls::Error::AlertReceived(AlertDescription::UnknownCA)));
    assert!(refused(&t, c), "{:?}", t.l7);
    let up = &t.tls.stats().upstream;
    assert_eq!(up.failed.get("unknown-issuer"), Some(&1), "{up:?}");
    assert_eq!(up.alerts_sent.get("UnknownCA"), Some(&1), "{up:?}");
    assert!(up.handshakes.is_empty());
    // The right CA, the wrong name.
    let elsewhere = pki.issue("elsewhere", "db", &["db.internal"], false);
    let mut t = T::upstream(&verify_with(&pki), "api.internal");
    let c = t.dial();
    let mut server = backend(&elsewhere, None);
    let err = t.pump_backend(c, &mut server);
    assert_eq!(err, Some(rustls::Error::AlertReceived(AlertDescription::BadCertificate)));
    assert!(refused(&t, c), "{:?}", t.l7);
    assert_eq!(t.tls.stats().upstream.failed.get("name-mismatch"), Some(&1));
    // An expired certificate.
    let old = pki.issue("old", "api", &["api.internal"], true);
    let mut t = T::upstream(&verify_with(&pki), "api.internal");
    let c = t.dial();
    let mut server = backend(&old, None);
    assert!(t.pump_backend(c, &mut server).is_some());
    assert!(refused(&t, c), "{:?}", t.l7);
    assert_eq!(t.tls.stats().upstream.failed.get("expired"), Some(&1));
    // verify = false takes the stranger (insecure, explicit).
    let opts = switchyard_tls::ClientOptions { no_verify: true, ..Default::default() };
    let mut t = T::upstream(&opts, "api.internal");
    let c = t.dial();
    let mut server = backend(&stranger, None);
    assert!(t.pump_backend(c, &mut server).is_none());
    assert!(matches!(t.l7.first(), Some(TcpEvent::Connected { .. })), "{:?}", t.l7);
}

#[test]
fn a_client_certificate_is_shown_to_a_backend_that_requires_one() {
    let pki = Pki::new("up-mtls");
    let cert = pki.issue("backend", "api", &["api.internal"], false);
    let lb = pki.issue("lb", "switchyard-lb", &[], false);
    let mut opts = verify_with(&pki);
    opts.cert_key = Some((lb.cert_path.clone(), lb.key_path.clone()));
    let mut t = T::upstream(&opts, "api.internal");
    let c = t.dial();
    let mut server = backend(&cert, Some(&pki));
    let err = t.pump_backend(c, &mut server);
    assert!(err.is_none(), "{err:?}");
    assert_eq!(server.peer_certificates().map(|c| c[0].clone()), Some(lb.der.clone()));
    assert!(matches!(t.l7.first(), Some(TcpEvent::Connected { .. })), "{:?}", t.l7);
    // Bytes flow after the mutual handshake.
    t.tls.wrap(&mut t.tcp).send(c, b"GET / HTTP/1.1\r\n\r\n").unwrap();
    assert!(t.pump_backend(c, &mut server).is_none());
    assert_eq!(t.received.get(&c).map(Vec::as_slice), Some(&b"GET / HTTP/1.1\r\n\r\n"[..]));
    // Without a certificate the backend refuses it. Under TLS 1.3 the
    // client's side of the handshake is over by then, so L7 sees the
    // connection up and its first read fails: L7 hears a reset, the
    // connection ends with a FIN (the backend has said its last), and the
    // backend's alert is counted.
    let mut t = T::upstream(&verify_with(&pki), "api.internal");
    let c = t.dial();
    let mut server = backend(&cert, Some(&pki));
    let err = t.pump_backend(c, &mut server);
    assert_eq!(err, Some(rustls::Error::NoCertificatesPresented));
    assert!(t.l7_read(c).is_empty());
    assert!(t.tcp.c(c).closed);
    t.settle();
    assert!(
        matches!(t.l7.last(), Some(TcpEvent::Closed { conn, reset: true }) if *conn == c),
        "{:?}",
        t.l7
    );
    let up = &t.tls.stats().upstream;
    assert_eq!(up.failed.get("alert"), Some(&1), "{up:?}");
    assert_eq!(up.alerts_received.get("CertificateRequired"), Some(&1), "{up:?}");
    assert_eq!(t.tls.stats().failed, 0, "the server side's counter stays");
}

#[test]
fn client_configuration_errors_name_the_file() {
    let pki = Pki::new("up-files");
    let lb = pki.issue("lb", "lb", &[], false);
    let other = pki.issue("other", "other", &[], false);
    let e = switchyard_tls::client_config(&Default::default()).unwrap_err().to_string();
    assert!(e.contains("verify = false"), "{e}");
    let missing = pki.dir.join("nope.pem");
    let opts = switchyard_tls::ClientOptions { ca: Some(missing.clone()), ..Default::default() };
    let e = switchyard_tls::client_config(&opts).unwrap_err().to_string();
    assert!(e.contains(&missing.display().to_string()), "{e}");
    // A CA file holding only a key.
    let opts =
        switchyard_tls::ClientOptions { ca: Some(lb.key_path.clone()), ..Default::default() };
    let e = switchyard_tls::client_config(&opts).unwrap_err().to_string();
    assert!(e.contains("lb.key"), "{e}");
    // A certificate with another certificate's key.
    let mut opts = verify_with(&pki);
    opts.cert_key = Some((lb.cert_path.clone(), other.key_path.clone()));
    let e = switchyard_tls::client_config(&opts).unwrap_err().to_string();
    assert!(e.contains("lb.pem") && e.contains("other.key"), "{e}");
}

/// An established TLS 1.3 connection whose client is given up for its
/// record keys, so a test can send records no rustls client would.
struct RawClient {
    c: ConnId,
    tx: switchyard_tls::record::Keys,
    rx: switchyard_tls::record::Keys,
}

impl RawClient {
    fn new(t: &mut T, pki: &Pki) -> RawClient {
        let mut cfg = (*client_config(pki, &[&rustls::version::TLS13], None, &[])).clone();
        cfg.enable_secret_extraction = true;
        let (c, client, err) = t.connect(&Arc::new(cfg), "switchyard.test");
        assert!(err.is_none(), "{err:?}");
        let s = client.dangerous_extract_secrets().unwrap();
        let v = switchyard_tls::record::Version::Tls13;
        let tx = switchyard_tls::record::Keys::new(v, s.tx.0, s.tx.1).ok().unwrap();
        let rx = switchyard_tls::record::Keys::new(v, s.rx.0, s.rx.1).ok().unwrap();
        RawClient { c, tx, rx }
    }

    /// Seals a record of `typ` and `plain` and hands it to the server;
    /// L7 then reads what it can.
    fn send(&mut self, t: &mut T, typ: u8, plain: &[u8]) -> Vec<u8> {
        let mut wire = Vec::new();
        self.tx.seal(typ, plain, &mut wire).unwrap();
        t.tcp.peer_sends(self.c, &wire);
        t.event(TcpEvent::Readable { conn: self.c });
        t.l7_read(self.c)
    }

    /// The alerts the server sent, opened.
    fn alerts(&mut self, t: &mut T) -> Vec<[u8; 2]> {
        use switchyard_tls::record::content;
        let mut wire = t.tcp.take(self.c);
        let mut got = Vec::new();
        let mut at = 0;
        while let Ok(Some(o)) = self.rx.open(&mut wire[at..]) {
            let d = &wire[at + o.start..at + o.start + o.len];
            if o.typ == content::ALERT {
                got.push([d[0], d[1]]);
            }
            at += o.consumed;
        }
        got
    }
}

/// RFC 8446 5.4 and the limits rustls keeps on what the protocol allows but
/// a peer may abuse (warning alerts, empty records, key update requests):
/// each refused with its alert, the connection closed, others untouched.
#[test]
fn records_no_client_sends_get_their_alerts() {
    use switchyard_tls::record::content;
    let pki = Pki::new("raw");
    let server = pki.issue("server", "switchyard.test", &["switchyard.test"], false);
    let mut t = T::new(&[&server], TlsOptions::default());
    let unexpected = u8::from(AlertDescription::UnexpectedMessage);

    // An alert with no content.
    let mut r = RawClient::new(&mut t, &pki);
    assert!(r.send(&mut t, content::ALERT, &[]).is_empty());
    assert!(t.tcp.c(r.c).closed);
    assert_eq!(r.alerts(&mut t), [[2, unexpected]]);

    // Four user_canceled warnings are let pass; the fifth is refused.
    let mut r = RawClient::new(&mut t, &pki);
    for _ in 0..4 {
        r.send(&mut t, content::ALERT, &[1, 90]);
    }
    assert_eq!(r.send(&mut t, content::APPLICATION_DATA, b"GET"), b"GET");
    assert!(!t.tcp.c(r.c).closed);
    r.send(&mut t, content::ALERT, &[1, 90]);
    assert!(t.tcp.c(r.c).closed);
    assert_eq!(r.alerts(&mut t), [[2, unexpected]]);

    // A TLS 1.3 warning other than user_canceled.
    let mut r = RawClient::new(&mut t, &pki);
    r.send(&mut t, content::ALERT, &[1, u8::from(AlertDescription::BadCertificate)]);
    assert_eq!(r.alerts(&mut t), [[2, u8::from(AlertDescription::DecodeError)]]);

    // 32 empty records in a row pass, data resets the count, then 33 do not.
    let mut r = RawClient::new(&mut t, &pki);
    for _ in 0..32 {
        r.send(&mut t, content::APPLICATION_DATA, b"");
    }
    assert_eq!(r.send(&mut t, content::APPLICATION_DATA, b"x"), b"x");
    for _ in 0..32 {
        r.send(&mut t, content::APPLICATION_DATA, b"");
    }
    assert!(!t.tcp.c(r.c).closed);
    r.send(&mut t, content::APPLICATION_DATA, b"");
    assert!(t.tcp.c(r.c).closed);
    assert_eq!(r.alerts(&mut t), [[2, unexpected]]);

    // Key updates asking for ours (a rustls client's, as the keys change):
    // 32 answered with no data between them, the 33rd refused.
    let cfg = client_config(&pki, &[&rustls::version::TLS13], None, &[]);
    let (c, mut client, err) = t.connect(&cfg, "switchyard.test");
    assert!(err.is_none());
    for i in 1..=33 {
        client.refresh_traffic_keys().unwrap();
        assert!(t.pump(c, &mut client).is_none());
        assert!(t.l7_read(c).is_empty());
        let err = t.pump(c, &mut client);
        if i <= 32 {
            assert!(err.is_none() && !t.tcp.c(c).closed, "update {i}: {err:?}");
        } else {
            assert_eq!(
                err,
                Some(rustls::Error::AlertReceived(AlertDescription::UnexpectedMessage))
            );
        }
    }
    assert!(t.tcp.c(c).closed);

    // A record too short to hold a tag is a MAC failure, not a decode error.
    let mut r = RawClient::new(&mut t, &pki);
    let mut short = vec![content::APPLICATION_DATA, 3, 3, 0, 15];
    short.resize(5 + 15, 0);
    t.tcp.peer_sends(r.c, &short);
    t.event(TcpEvent::Readable { conn: r.c });
    assert!(t.l7_read(r.c).is_empty());
    assert_eq!(r.alerts(&mut t), [[2, u8::from(AlertDescription::BadRecordMac)]]);
}

/// A client's close_notify reaches L7 as the peer closing, though the TCP
/// FIN has not come (a client may wait for our close_notify first); the
/// FIN when it comes is not told twice; in TLS 1.3 and 1.2.
#[test]
fn a_close_notify_is_heard_by_l7_before_the_fin() {
    let pki = Pki::new("closenotify");
    let server = pki.issue("server", "switchyard.test", &["switchyard.test"], false);
    let mut t = T::new(&[&server], TlsOptions::default());
    for v in [&rustls::version::TLS13, &rustls::version::TLS12] {
        let cfg = client_config(&pki, &[v], None, &[]);
        let (c, mut client, err) = t.connect(&cfg, "switchyard.test");
        assert!(err.is_none(), "{err:?}");
        let closed = |t: &T| {
            t.l7.iter().filter(|e| matches!(e, TcpEvent::PeerClosed { conn } if *conn == c)).count()
        };
        client.writer().write_all(b"last words").unwrap();
        client.send_close_notify();
        assert!(t.pump(c, &mut client).is_none());
        assert_eq!(t.l7_read(c), b"last words", "{v:?}");
        t.settle();
        assert_eq!(closed(&t), 1, "{v:?}: L7 hears the close_notify");
        t.event(TcpEvent::PeerClosed { conn: c });
        assert_eq!(closed(&t), 1, "{v:?}: and not the FIN again");
    }
}

/// Two certificates for one name, ECDSA first and RSA second: a client
/// that verifies ECDSA gets the first; one that verifies only RSA gets the
/// RSA one (rather than a certificate it cannot verify).
#[test]
fn of_two_certificates_for_a_name_the_client_gets_one_it_can_verify() {
    let pki = Pki::new("dualcert");
    let ecdsa = pki.issue("ecdsa", "switchyard.test", &["switchyard.test"], false);
    let rsa = pki.issue_rsa("rsa", &["switchyard.test"]);
    let mut t = T::new(&[&ecdsa, &rsa], TlsOptions::default());
    let any = client_config(&pki, &[&rustls::version::TLS13], None, &[]);
    let base = rustls::crypto::aws_lc_rs::default_provider().signature_verification_algorithms;
    let mapping: Vec<_> = base
        .mapping
        .iter()
        .filter(|(s, _)| format!("{s:?}").starts_with("RSA_"))
        .cloned()
        .collect();
    assert!(!mapping.is_empty());
    let mut provider = rustls::crypto::aws_lc_rs::default_provider();
    provider.signature_verification_algorithms = rustls::crypto::WebPkiSupportedAlgorithms {
        all: base.all,
        mapping: Box::leak(mapping.into_boxed_slice()),
    };
    let rsa_only =
        client_config_from(Arc::new(provider), &pki, &[&rustls::version::TLS13], None, &[]);
    for (cfg, want, kind) in [(&any, &ecdsa, "ECDSA"), (&rsa_only, &rsa, "RSA only")] {
        let (_, client, err) = t.connect(cfg, "switchyard.test");
        assert!(err.is_none(), "{kind}: {err:?}");
        let got = client.peer_certificates().and_then(|c| c.first().cloned());
        assert_eq!(got.as_ref(), Some(&want.der), "{kind}");
    }
}

/// A client offering the post-quantum hybrid first (rustls's default,
/// with an X25519 share besides) gets it; a classical-only client gets
/// X25519; each counted by group, for the listener too.
#[test]
fn the_hybrid_is_preferred_and_x25519_is_the_fallback() {
    let pki = Pki::new("groups");
    let server = pki.issue("server", "switchyard.test", &["switchyard.test"], false);
    let mut t = T::new(&[&server], TlsOptions::default());
    let hybrid = client_config(&pki, &[&rustls::version::TLS13], None, &[]);
    let mut classical = rustls::crypto::aws_lc_rs::default_provider();
    classical.kx_groups = vec![rustls::crypto::aws_lc_rs::kx_group::X25519];
    let classical =
        client_config_from(Arc::new(classical), &pki, &[&rustls::version::TLS13], None, &[]);
    // P-256 only: the classical groups besides X25519 are in the list too.
    let mut p256 = rustls::crypto::aws_lc_rs::default_provider();
    p256.kx_groups = vec![rustls::crypto::aws_lc_rs::kx_group::SECP256R1];
    let p256 = client_config_from(Arc::new(p256), &pki, &[&rustls::version::TLS13], None, &[]);
    for (cfg, want) in [(&hybrid, "X25519MLKEM768"), (&classical, "X25519"), (&p256, "secp256r1")] {
        let (_, client, err) = t.connect(cfg, "switchyard.test");
        assert!(err.is_none(), "{err:?}");
        let group = client.negotiated_key_exchange_group().map(|g| format!("{:?}", g.name()));
        assert_eq!(group.as_deref(), Some(want));
    }
    let st = t.tls.stats();
    for g in ["X25519MLKEM768", "X25519"] {
        assert_eq!(st.handshakes.get(&("TLSv1_3".into(), g.into())), Some(&1), "{st:?}");
        assert_eq!(st.groups_by_listener.get(&(LISTENER, g.into())), Some(&1), "{st:?}");
    }
}

/// The seam for an engine of another kind: one written outside this crate
/// queues jobs its own way and runs them with [`Job::run`] (here, all of
/// them at each turn); handshakes through it complete and carry bytes.
#[test]
fn an_engine_from_outside_the_crate_runs_handshakes_with_job_run() {
    use std::collections::VecDeque;
    use switchyard_tls::Job;
    #[derive(Default)]
    struct Outside {
        queue: VecDeque<Job<HandshakeIn>>,
        done: VecDeque<Job<HandshakeOut>>,
        ran: Arc<std::sync::atomic::AtomicUsize>,
    }
    impl CryptoEngine<HandshakeIn, HandshakeOut> for Outside {
        fn submit(&mut self, job: Job<HandshakeIn>) -> Result<(), Job<HandshakeIn>> {
            self.queue.push_back(job);
            Ok(())
        }
        fn work(&mut self) {
            while let Some(job) = self.queue.pop_front() {
                let tag = job.tag;
                let out = job.run();
                assert_eq!(out.tag, tag);
                self.done.push_back(out);
                self.ran.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            }
        }
        fn poll(&mut self) -> Option<Job<HandshakeOut>> {
            self.done.pop_front()
        }
        fn arm(&self) -> Option<std::os::fd::RawFd> {
            None
        }
        fn disarm(&self) {}
    }
    let pki = Pki::new("outside");
    let server = pki.issue("server", "switchyard.test", &["switchyard.test"], false);
    let engine = Outside::default();
    let ran = engine.ran.clone();
    let mut t = T::on(&[&server], TlsOptions::default(), engine);
    let client = client_config(&pki, &[&rustls::version::TLS13], None, &[]);
    let (c, mut client, err) = t.connect(&client, "switchyard.test");
    assert!(err.is_none(), "{err:?}");
    let ran = ran.load(std::sync::atomic::Ordering::Relaxed);
    assert!(ran >= 2, "the engine ran the handshake's steps: {ran}");
    client.writer().write_all(b"through the seam").unwrap();
    assert!(t.pump(c, &mut client).is_none());
    assert_eq!(t.l7_read(c), b"through the seam");
}
