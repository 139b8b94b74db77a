//! TLS fixtures the benchmarks share: a server configuration with an ECDSA
//! P-256 certificate, clients offering chosen key-exchange groups, and
//! handshakes run in memory with the server's part timed (or counted, see
//! `src/bin/tls-handshakes.rs`).

use std::sync::Arc;

/// A server configuration (ECDSA P-256 certificate made by openssl) and the
/// roots a client needs to trust it.
pub fn tls_configs() -> (Arc<rustls::ServerConfig>, rustls::RootCertStore) {
    let dir = std::env::temp_dir().join(format!("switchyard-bench-tls-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let (cert, key) = (dir.join("cert.pem"), dir.join("key.pem"));
    let ok = std::process::Command::new("openssl")
        .args(["req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes"])
        .arg("-keyout")
        .arg(&key)
        .arg("-out")
        .arg(&cert)
        .args(["-subj", "/CN=switchyard.test", "-addext", "subjectAltName=DNS:switchyard.test"])
        .args(["-addext", "basicConstraints=critical,CA:FALSE"])
        .args(["-days", "2"])
        .output()
        .expect("openssl (to make a test certificate)")
        .status
        .success();
    assert!(ok, "openssl could not make a certificate");
    let server_cfg = switchyard_tls::server_config(&cert, &key).unwrap();
    let mut roots = rustls::RootCertStore::empty();
    let pem = std::fs::read(&cert).unwrap();
    use rustls::pki_types::pem::PemObject;
    for c in rustls::pki_types::CertificateDer::pem_slice_iter(&pem) {
        roots.add(c.unwrap()).unwrap();
    }
    let _ = std::fs::remove_dir_all(&dir);
    (server_cfg, roots)
}

/// A client configuration offering only `groups` (all of the default
/// provider's when empty).
pub fn client_config(
    roots: &rustls::RootCertStore,
    groups: &[&'static dyn rustls::crypto::SupportedKxGroup],
) -> Arc<rustls::ClientConfig> {
    client_config_with(roots, groups, &[])
}

/// [`client_config`] offering only the cipher `suites` (all of the default
/// provider's when empty).
pub fn client_config_with(
    roots: &rustls::RootCertStore,
    groups: &[&'static dyn rustls::crypto::SupportedKxGroup],
    suites: &[rustls::SupportedCipherSuite],
) -> Arc<rustls::ClientConfig> {
    let mut provider = rustls::crypto::aws_lc_rs::default_provider();
    if !groups.is_empty() {
        provider.kx_groups = groups.to_vec();
    }
    if !suites.is_empty() {
        provider.cipher_suites = suites.to_vec();
    }
    Arc::new(
        rustls::ClientConfig::builder_with_provider(Arc::new(provider))
            .with_protocol_versions(&[&rustls::version::TLS13])
            .unwrap()
            .with_root_certificates(roots.clone())
            .with_no_client_auth(),
    )
}

/// Runs a handshake in memory; returns both ends and the time the server
/// spent in it (its reads, processing and writes: what a worker or a crypto
/// engine pays per connection).
pub fn handshake(
    client_cfg: &Arc<rustls::ClientConfig>,
    server_cfg: &Arc<rustls::ServerConfig>,
) -> (rustls::ClientConnection, rustls::ServerConnection, std::time::Duration) {
    handshake_with(client_cfg, server_cfg, server_flight)
}

/// The server's part of one round trip: it reads the client's flight,
/// processes it and writes its own (tickets included, once the handshake is
/// done).
#[inline(never)]
pub fn server_flight(server: &mut rustls::ServerConnection, input: &[u8]) -> Vec<u8> {
    server.read_tls(&mut &input[..]).unwrap();
    server.process_new_packets().unwrap();
    let mut out = Vec::new();
    while server.wants_write() {
        server.write_tls(&mut out).unwrap();
    }
    out
}

/// [`handshake`] with the server's part done by `flight` (a wrapper of
/// [`server_flight`], so a profiler can tell kinds of handshake apart).
pub fn handshake_with(
    client_cfg: &Arc<rustls::ClientConfig>,
    server_cfg: &Arc<rustls::ServerConfig>,
    flight: fn(&mut rustls::ServerConnection, &[u8]) -> Vec<u8>,
) -> (rustls::ClientConnection, rustls::ServerConnection, std::time::Duration) {
    let mut client =
        rustls::ClientConnection::new(client_cfg.clone(), "switchyard.test".try_into().unwrap())
            .unwrap();
    let mut server = rustls::ServerConnection::new(server_cfg.clone()).unwrap();
    let mut server_time = std::time::Duration::ZERO;
    for _ in 0..10 {
        let mut buf = Vec::new();
        while client.wants_write() {
            client.write_tls(&mut buf).unwrap();
        }
        let t = std::time::Instant::now();
        let buf = flight(&mut server, &buf);
        server_time += t.elapsed();
        client.read_tls(&mut &buf[..]).unwrap();
        client.process_new_packets().unwrap();
        if !client.is_handshaking() && !server.is_handshaking() {
            break;
        }
    }
    assert!(!server.is_handshaking());
    (client, server, server_time)
}

/// A TLS 1.3 client and server connected in memory, handshake done.
pub fn tls_pair() -> (rustls::ClientConnection, rustls::ServerConnection) {
    let (server_cfg, roots) = tls_configs();
    let (client, server, _) = handshake(&client_config(&roots, &[]), &server_cfg);
    (client, server)
}
