//! L7 end to end on the simulated network: HTTP/1.1 clients through the
//! terminated listener to origins chosen by path prefix, with keep-alive on
//! both sides; clean and over a lossy, reordering client link; and HTTP/2
//! (h2c, prior knowledge) clients through the same listener to the same
//! HTTP/1.1 origins; HTTPS (rustls) clients, TLS 1.3 and 1.2, through TLS
//! terminated on it.

mod common;

use switchyard::report::Snapshot;
use switchyard::world::{ClientHost, World};
use switchyard_sim::hosts::ClientStats;

/// 1000 requests over four paths by `concurrency` connections of a `kind`
/// client population, each making `per_connection` requests; returns the
/// world, its last snapshot and the context to print on failure.
fn run(
    kind: &str,
    concurrency: u32,
    per_connection: u32,
    seed: u64,
    loss: f64,
    reorder: f64,
) -> (World, Snapshot, String) {
    let clients = format!(
        r#"[[sim.client]]
name = "clients"
kind = "{kind}"
listener = "web"
address = "198.18.0.101"
concurrency = {concurrency}
requests_per_connection = {per_connection}
total = 1000
paths = ["/api/users", "/index.html", "/api/orders/7", "/img/logo.png"]
loss = {loss}
reorder = {reorder}
latency_us = 200
"#
    );
    let cfg = common::config(seed, 60, &clients);
    let (world, snap) = common::run(&cfg, 120);
    let ctx = format!("sim seed = {seed}\n{}", snap.summary());
    (world, snap, ctx)
}

/// What every run must show, whatever the client's protocol: 1000 responses
/// verified byte for byte, no error, each path answered only by its route's
/// pool, all four origins answering, and each of them having seen the
/// requests the client made.
fn check_responses(st: &ClientStats, snap: &Snapshot, ctx: &str) {
    assert_eq!(st.responses_ok, 1000, "{ctx}");
    assert_eq!((st.errors, st.bad_bodies, st.timeouts), (0, 0, 0), "{ctx}");
    assert!(st.bytes_in >= 1000 * 1024, "{ctx}");
    let mut seen = std::collections::BTreeSet::new();
    for (path, by_backend) in &st.by_path {
        let pool = if path.starts_with("/api/") { "api-" } else { "static-" };
        for (backend, n) in by_backend {
            assert!(backend.starts_with(pool), "{path} answered by {backend} ({n} times)\n{ctx}");
            seen.insert(backend.clone());
        }
        // Paths are requested in turn.
        assert_eq!(by_backend.values().sum::<u64>(), 250, "{path}\n{ctx}");
    }
    assert_eq!(seen.len(), 4, "all four origins answered: {seen:?}\n{ctx}");
    let served: u64 = snap.backends.iter().filter(|b| b.pool != "pg").map(|b| b.host_served).sum();
    assert_eq!(served, 1000, "{ctx}");
}

/// Upstream connects and reuses of the HTTP pools (keep-alive to origins).
fn upstream(snap: &Snapshot) -> (u64, u64) {
    snap.backends
        .iter()
        .filter(|b| b.pool != "pg")
        .fold((0, 0), |(c, r), b| (c + b.upstream_connects, r + b.upstream_reuses))
}

fn http_run(seed: u64, loss: f64, reorder: f64) {
    let (world, snap, ctx) = run("http", 50, 20, seed, loss, reorder);
    let ClientHost::Http(stats) = &world.clients[0] else { panic!("http client expected") };
    let st = stats.borrow();
    check_responses(&st, &snap, &ctx);
    // Keep-alive on the client side: 1000 requests over at most 100 connections
    // (50 slots of 20; under loss a slow slot's share moves to a new connection).
    assert!(st.connections >= 50 && st.connections <= 100, "{ctx}");
    if loss == 0.0 {
        assert_eq!(st.connections, 50, "{ctx}");
    }
    // Keep-alive on the upstream side: far fewer upstream connections than requests.
    let lb = world.lb.borrow();
    let listener = lb.dp.l7.listener_stats(1).expect("web listener stats");
    assert_eq!(listener.requests, 1000, "{ctx}");
    assert_eq!(listener.connections_total, st.connections, "{ctx}");
    let (connects, reuses) = upstream(&snap);
    assert!(connects > 0 && connects <= 100, "upstream connects {connects}\n{ctx}");
    assert!(reuses >= 900, "upstream reuses {reuses}\n{ctx}");
    assert_eq!(connects + reuses, 1000, "{ctx}");
}

#[test]
fn http_50_clients_x_20_requests() {
    http_run(common::seed(11), 0.0, 0.0);
}

#[test]
fn http_50_clients_x_20_requests_with_loss_and_reordering() {
    let seed = common::seed(12);
    http_run(seed, 0.02, 0.02);
}

fn h2c_run(seed: u64, loss: f64, reorder: f64) {
    let (world, snap, ctx) = run("h2c", 40, 25, seed, loss, reorder);
    let ClientHost::H2c(stats) = &world.clients[0] else { panic!("h2c client expected") };
    let st = stats.borrow();
    check_responses(&st, &snap, &ctx);
    assert!(st.connections >= 40 && st.connections <= 80, "{ctx}");
    if loss == 0.0 {
        assert_eq!(st.connections, 40, "{ctx}");
    }
    // The listener served them as HTTP/2: its front counted the connections
    // and one stream per request, and the listener proxied every request.
    let lb = world.lb.borrow();
    let h2 = lb.dp.h2.stats();
    assert_eq!(h2.connections, st.connections, "{ctx}");
    assert_eq!(h2.streams, 1000, "{ctx}");
    assert_eq!((h2.protocol_errors, h2.proxy_resets, h2.client_resets), (0, 0, 0), "{ctx}");
    let listener = lb.dp.l7.listener_stats(1).expect("web listener stats");
    assert_eq!(listener.requests, 1000, "{ctx}");
    // Upstream it is HTTP/1.1 keep-alive to the origins.
    let (connects, reuses) = upstream(&snap);
    assert!(connects > 0 && connects <= 100, "upstream connects {connects}\n{ctx}");
    assert_eq!(connects + reuses, 1000, "{ctx}");
    assert!(reuses >= 900, "upstream reuses {reuses}\n{ctx}");
}

#[test]
fn h2c_40_clients_x_25_requests() {
    h2c_run(common::seed(13), 0.0, 0.0);
}

#[test]
fn h2c_40_clients_x_25_requests_with_loss_and_reordering() {
    h2c_run(common::seed(14), 0.02, 0.02);
}

/// A CA and a certificate it signs for `switchyard.test`, as PEM files in a
/// fresh folder: (folder, CA, certificate, key).
fn test_pki(tag: &str) -> (std::path::PathBuf, String, String, String) {
    use rcgen::{BasicConstraints, CertificateParams, IsCa, KeyPair};
    let dir = std::env::temp_dir().join(format!("switchyard-sim-tls-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let ca_key = KeyPair::generate().unwrap();
    let mut p = CertificateParams::new(Vec::<String>::new()).unwrap();
    p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca = p.self_signed(&ca_key).unwrap();
    let key = KeyPair::generate().unwrap();
    let cert = CertificateParams::new(vec!["switchyard.test".to_string()])
        .unwrap()
        .signed_by(&key, &ca, &ca_key)
        .unwrap();
    let path = |f: &str| dir.join(f).to_string_lossy().into_owned();
    std::fs::write(path("ca.pem"), ca.pem()).unwrap();
    std::fs::write(path("cert.pem"), cert.pem()).unwrap();
    std::fs::write(path("key.pem"), key.serialize_pem()).unwrap();
    (dir.clone(), path("ca.pem"), path("cert.pem"), path("key.pem"))
}

/// `total` HTTPS requests (`tls_version`) by `concurrency` rustls clients
/// through the demo's L7 listener with TLS terminated on it, bodies of
/// `body_size`; the world, its snapshot, the stats and the context.
fn https_run(
    tag: &str,
    tls_version: &str,
    concurrency: u32,
    total: u64,
    body_size: usize,
) -> (World, Snapshot, String) {
    tls_run("https", tag, tls_version, concurrency, total, body_size)
}

/// [`https_run`] with clients of `kind`: `https` (HTTP/1.1) or `h2`
/// (HTTP/2, ALPN `h2`).
fn tls_run(
    kind: &str,
    tag: &str,
    tls_version: &str,
    concurrency: u32,
    total: u64,
    body_size: usize,
) -> (World, Snapshot, String) {
    let (dir, ca, cert, key) = test_pki(tag);
    let demo = switchyard::config::DEMO_CONFIG;
    let head = &demo[..demo.find("[sim]").expect("demo config has a [sim] section")];
    let head = head.replacen(
        "address = \"198.18.0.10:80\"",
        &format!("address = \"198.18.0.10:443\"\ntls = {{ cert = \"{cert}\", key = \"{key}\" }}"),
        1,
    );
    let seed = common::seed(11);
    let src = format!(
        r#"{head}[sim]
seed = {seed}
seconds = 60
body_size = {body_size}
host_buffer = 262144

[[sim.client]]
name = "tls-clients"
kind = "{kind}"
listener = "web"
address = "198.18.0.101"
ca = "{ca}"
server_name = "switchyard.test"
tls_version = "{tls_version}"
concurrency = {concurrency}
requests_per_connection = 10
total = {total}
paths = ["/api/users", "/index.html", "/api/orders/7", "/img/logo.png"]
latency_us = 200
"#
    );
    let cfg = switchyard::config::Config::parse("test.toml", &src)
        .unwrap_or_else(|e| panic!("test config invalid: {e}"));
    let (world, snap) = common::run(&cfg, 120);
    let _ = std::fs::remove_dir_all(dir);
    let ctx = format!("sim seed = {seed}\n{}", snap.summary());
    (world, snap, ctx)
}

/// The load balancer's TLS counters, checked: one handshake of TLS `v` per
/// client connection, none failed, no record refused.
fn terminated<'a>(
    lb: &'a switchyard::worker::Worker<switchyard_nic::sim::SimPort>,
    v: &str,
    connections: u64,
) -> &'a switchyard_tls::TlsStats {
    let tls = lb.dp.tls.stats();
    let version = if v == "1.3" { "TLSv1_3" } else { "TLSv1_2" };
    let done: u64 =
        tls.handshakes.iter().filter(|((ver, _), _)| ver == version).map(|(_, n)| n).sum();
    assert_eq!(done, connections, "TLS {v}: {tls:?}");
    assert_eq!((tls.failed, tls.records.refused), (0, 0), "TLS {v}: {tls:?}");
    tls
}

/// TLS 1.3 and 1.2 terminated on the L7 listener for real rustls clients on
/// the simulated network: 1000 requests each, every body byte-exact, each
/// path answered by its route's pool, keep-alive inside TLS, sessions
/// resumed.
#[test]
fn https_clients_through_tls_termination_and_l7_tls13_and_tls12() {
    for v in ["1.3", "1.2"] {
        let (world, snap, ctx) = https_run(&format!("v{v}"), v, 20, 1000, 1024);
        let ClientHost::Http(stats) = &world.clients[0] else { panic!("http client expected") };
        let st = stats.borrow();
        check_responses(&st, &snap, &format!("TLS {v}\n{ctx}"));
        // Ten requests per connection: a hundred handshakes, not a thousand,
        // each of the version asked for, terminated by the load balancer.
        assert!(st.connections <= 120, "TLS {v}: {} connections\n{ctx}", st.connections);
        let lb = world.lb.borrow();
        let tls = terminated(&lb, v, st.connections);
        assert!(tls.records.opened >= 1000, "requests went through the record layer: {tls:?}");
        // The clients share rustls's session cache, and later connections
        // resume: in TLS 1.2 every one after the 20 slots' first; in TLS 1.3
        // those that find one of the single-use tickets the cache keeps
        // (eight per server), at least the eight the first handshakes left.
        if v == "1.2" {
            assert_eq!(tls.resumed, st.connections - 20, "TLS {v}: {tls:?}");
        } else {
            assert!(tls.resumed >= 8, "TLS {v}: {tls:?}");
        }
    }
}

/// HTTP/2 over TLS end to end: rustls clients that offer ALPN `h2` and
/// nothing else (a handshake that agreed on anything else breaks the
/// connection on the client's side), the listener's termination agreeing to
/// it, its HTTP/2 front serving one stream per request, every body
/// byte-exact, in TLS 1.3 and 1.2.
#[test]
fn h2_over_tls_with_alpn_h2_through_termination_and_l7() {
    for v in ["1.3", "1.2"] {
        let (world, snap, ctx) = tls_run("h2", &format!("h2v{v}"), v, 20, 1000, 1024);
        let ClientHost::H2c(stats) = &world.clients[0] else { panic!("h2 client expected") };
        let st = stats.borrow();
        check_responses(&st, &snap, &format!("TLS {v}\n{ctx}"));
        assert!(st.connections <= 120, "TLS {v}: {} connections\n{ctx}", st.connections);
        let lb = world.lb.borrow();
        let h2 = lb.dp.h2.stats();
        assert_eq!(h2.connections, st.connections, "TLS {v}\n{ctx}");
        assert_eq!(h2.streams, 1000, "TLS {v}\n{ctx}");
        assert_eq!((h2.protocol_errors, h2.proxy_resets, h2.client_resets), (0, 0, 0), "{ctx}");
        terminated(&lb, v, st.connections);
    }
}

/// 1 MiB bodies through TLS and L7, byte-exact, in TLS 1.3 and 1.2.
#[test]
fn https_mebibyte_bodies_arrive_byte_exact() {
    for v in ["1.3", "1.2"] {
        let (world, _, ctx) = https_run(&format!("mib{v}"), v, 2, 8, 1 << 20);
        let ClientHost::Http(stats) = &world.clients[0] else { panic!("http client expected") };
        let st = stats.borrow();
        assert_eq!(st.responses_ok, 8, "TLS {v}\n{ctx}");
        assert_eq!((st.errors, st.bad_bodies, st.timeouts), (0, 0, 0), "TLS {v}\n{ctx}");
        assert!(st.bytes_in >= 8 << 20, "TLS {v}\n{ctx}");
    }
}
