//! The proxy with TLS towards its backends: L7 runs on the TLS layer's
//! wrapper over an in-memory TCP, the backends are rustls servers played by
//! the test. A request is answered by a backend it reached over TLS; a
//! backend whose certificate does not verify is a connect failure (502, or
//! a retry on another backend).

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair};
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use switchyard_l7::*;
use switchyard_stack::Instant;
use switchyard_stack::fake::FakeTcp;
use switchyard_stack::tcp::{ConnId, ConnState, TcpEvent};
use switchyard_tls::{ClientOptions, SoftwareEngine, Tls, client_config};

const GOOD: &str = "198.18.0.31:8443";
const STRANGER: &str = "198.18.0.32:8443";

/// A CA's PEM file and a server certificate it signed for `name`.
fn pki(dir: &std::path::Path, tag: &str, name: &str) -> (PathBuf, Arc<rustls::ServerConfig>) {
    let ca_key = KeyPair::generate().unwrap();
    let mut p = CertificateParams::new(Vec::<String>::new()).unwrap();
    p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    p.distinguished_name.push(DnType::CommonName, format!("{tag} CA"));
    let ca = p.self_signed(&ca_key).unwrap();
    let ca_path = dir.join(format!("{tag}-ca.pem"));
    std::fs::write(&ca_path, ca.pem()).unwrap();
    let key = KeyPair::generate().unwrap();
    let cert = CertificateParams::new(vec![name.to_string()])
        .unwrap()
        .signed_by(&key, &ca, &ca_key)
        .unwrap();
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let cfg = rustls::ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(rustls::DEFAULT_VERSIONS)
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(
            vec![CertificateDer::from(cert.der().to_vec())],
            PrivateKeyDer::try_from(key.serialize_der()).unwrap(),
        )
        .unwrap();
    (ca_path, Arc::new(cfg))
}

struct Backend {
    tls: rustls::ServerConnection,
    request: Vec<u8>,
    /// Requests answered (each is a head without a body).
    answered: usize,
    failed: bool,
}

struct H {
    l7: L7,
    tls: Tls,
    tcp: FakeTcp,
    now: Instant,
    /// Server configurations by backend address.
    certs: HashMap<SocketAddr, Arc<rustls::ServerConfig>>,
    backends: HashMap<ConnId, Backend>,
    dir: PathBuf,
}

impl Drop for H {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

impl H {
    /// Pool `api` with backends `good` (certificate from the CA L7 trusts)
    /// and `stranger` (another CA), in that order, both for `api.internal`.
    fn new(retries: u32, order: &[(&str, &str)]) -> H {
        static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let dir =
            std::env::temp_dir().join(format!("switchyard-l7-uptls-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let (ca, good) = pki(&dir, "good", "api.internal");
        let (_, stranger) = pki(&dir, "other", "api.internal");
        let cfg = L7Config {
            listeners: vec![ListenerConfig {
                id: 3,
                name: "web".into(),
                tls: false,
                client_cert_header: None,
                passthrough: false,
                routes: vec![Route {
                    path_prefix: "/".into(),
                    pool: 0,
                    retries,
                    ..Route::default()
                }],
            }],
            pools: vec![PoolConfig {
                name: "api".into(),
                backends: order
                    .iter()
                    .map(|(n, a)| switchyard_l7::Backend {
                        name: n.to_string(),
                        addr: a.parse().unwrap(),
                        weight: 1,
                    })
                    .collect(),
                ..Default::default()
            }],
            limits: Limits::default(),
        };
        let mut tls = Tls::new(Vec::new(), SoftwareEngine::new(1, 64));
        let client = client_config(&ClientOptions {
            ca: Some(ca),
            alpn: vec![b"http/1.1".to_vec()],
            ..Default::default()
        })
        .unwrap();
        for addr in [GOOD, STRANGER] {
            tls.add_upstream(addr.parse().unwrap(), client.clone(), "api.internal").unwrap();
        }
        H {
            l7: L7::new(cfg).unwrap(),
            tls,
            tcp: FakeTcp::default(),
            now: Instant::from_secs(1),
            certs: [(GOOD.parse().unwrap(), good), (STRANGER.parse().unwrap(), stranger)]
                .into_iter()
                .collect(),
            backends: HashMap::new(),
            dir,
        }
    }

    /// A TCP event through TLS, then to L7 if it is for L7.
    fn ev(&mut self, ev: TcpEvent) {
        if let Some(ev) = self.tls.on_event(ev, &mut self.tcp) {
            self.l7.on_event(self.now, ev, &mut self.tls.wrap(&mut self.tcp));
        }
    }

    /// Runs until nothing moves: connects complete, the engine finishes,
    /// ciphertext goes both ways, backends answer with their name.
    fn run(&mut self) {
        for _ in 0..2000 {
            let mut moved = false;
            for c in std::mem::take(&mut self.tcp.connects) {
                let remote = self.tcp.c(c).remote;
                let cfg = self.certs[&remote].clone();
                self.backends.insert(
                    c,
                    Backend {
                        tls: rustls::ServerConnection::new(cfg).unwrap(),
                        request: Vec::new(),
                        answered: 0,
                        failed: false,
                    },
                );
                self.tcp.c(c).state = Some(ConnState::Established);
                self.ev(TcpEvent::Connected { conn: c });
                moved = true;
            }
            let mut out = Vec::new();
            self.tls.poll(self.now, &mut self.tcp, &mut out);
            moved |= !out.is_empty();
            for ev in out {
                self.l7.on_event(self.now, ev, &mut self.tls.wrap(&mut self.tcp));
            }
            let ids: Vec<ConnId> = self.backends.keys().copied().collect();
            for c in ids {
                let from_lb = self.tcp.take(c);
                let name =
                    if self.tcp.c(c).remote == GOOD.parse().unwrap() { "good" } else { "stranger" };
                let b = self.backends.get_mut(&c).unwrap();
                if b.failed {
                    continue;
                }
                let mut rd = &from_lb[..];
                while !rd.is_empty() {
                    moved = true;
                    if b.tls.read_tls(&mut rd).is_err() || b.tls.process_new_packets().is_err() {
                        b.failed = true;
                        break;
                    }
                    let mut buf = [0u8; 4096];
                    while let Ok(n) = b.tls.reader().read(&mut buf) {
                        if n == 0 {
                            break;
                        }
                        b.request.extend_from_slice(&buf[..n]);
                    }
                }
                let heads = b.request.windows(4).filter(|w| w == b"\r\n\r\n").count();
                while b.answered < heads {
                    b.answered += 1;
                    let body = format!("answered by {name}");
                    let resp =
                        format!("HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n{body}", body.len());
                    b.tls.writer().write_all(resp.as_bytes()).unwrap();
                }
                let mut out = Vec::new();
                while b.tls.wants_write() {
                    b.tls.write_tls(&mut out).unwrap();
                }
                if !out.is_empty() && !self.tcp.c(c).aborted {
                    self.tcp.peer_sends(c, &out);
                    self.ev(TcpEvent::Readable { conn: c });
                    moved = true;
                }
            }
            self.l7.poll(self.now, &mut self.tls.wrap(&mut self.tcp));
            let busy = self.tls.poll_at(self.now) == Some(self.now);
            if !moved && !busy {
                return;
            }
            if busy {
                std::thread::sleep(std::time::Duration::from_micros(200));
            }
        }
        panic!("no quiescence");
    }

    /// A client sends a GET and gets what the proxy answered.
    fn get(&mut self) -> String {
        let peer: SocketAddr = "198.18.0.101:40000".parse().unwrap();
        let c = self.tcp.new_conn(peer, ConnState::Established);
        self.ev(TcpEvent::Accepted {
            conn: c,
            listener: 3,
            peer,
            local: "198.18.0.10:80".parse().unwrap(),
        });
        self.tcp.peer_sends(c, b"GET /x HTTP/1.1\r\nHost: api.internal\r\n\r\n");
        self.ev(TcpEvent::Readable { conn: c });
        self.run();
        String::from_utf8_lossy(&self.tcp.take(c)).into_owned()
    }
}

#[test]
fn a_request_reaches_a_tls_backend_and_its_answer_comes_back() {
    let mut h = H::new(0, &[("good", GOOD)]);
    for i in 0..3 {
        let resp = h.get();
        assert!(resp.starts_with("HTTP/1.1 200"), "request {i}: {resp}");
        assert!(resp.ends_with("answered by good"), "request {i}: {resp}");
    }
    // The backend saw the requests in plaintext, over TLS, on one kept-alive
    // connection.
    assert_eq!(h.backends.len(), 1);
    assert!(h.backends.values().all(|b| b.request.starts_with(b"GET /x HTTP/1.1\r\n")));
    assert!(h.backends.values().all(|b| b.answered == 3));
    let up = &h.tls.stats().upstream;
    assert!(up.handshakes.values().sum::<u64>() >= 1, "{up:?}");
    assert!(up.failed.is_empty(), "{up:?}");
    let b = &h.l7.pool_stats()[0].backends[0];
    assert_eq!((b.responses, b.connect_failures), (3, 0), "{b:?}");
}

#[test]
fn a_backend_that_fails_verification_is_a_502_or_a_retry_elsewhere() {
    // Only the stranger: 502, counted as its connect failure.
    let mut h = H::new(0, &[("stranger", STRANGER)]);
    let resp = h.get();
    assert!(resp.starts_with("HTTP/1.1 502"), "{resp}");
    assert_eq!(h.l7.pool_stats()[0].backends[0].connect_failures, 1);
    assert_eq!(h.tls.stats().upstream.failed.get("unknown-issuer"), Some(&1));
    assert!(h.backends.values().all(|b| b.request.is_empty() && b.failed));
    // The stranger first, with a retry: the good backend answers.
    let mut h = H::new(1, &[("stranger", STRANGER), ("good", GOOD)]);
    let resp = h.get();
    assert!(resp.starts_with("HTTP/1.1 200"), "{resp}");
    assert!(resp.ends_with("answered by good"), "{resp}");
    let st = &h.l7.pool_stats()[0];
    assert_eq!(st.backends[0].connect_failures, 1, "{st:?}");
    assert_eq!(st.backends[1].responses, 1, "{st:?}");
    assert_eq!(h.l7.listener_stats(3).unwrap().retries, 1);
}
