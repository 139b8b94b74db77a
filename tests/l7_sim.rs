//! L7 end to end on the simulated network: HTTP/1.1 clients through the
//! terminated listener to origins chosen by path prefix, with keep-alive on
//! both sides; clean and over a lossy, reordering client link.

mod common;

use switchyard::world::ClientHost;

fn http_run(seed: u64, loss: f64, reorder: f64) {
    let clients = format!(
        r#"[[sim.client]]
name = "clients"
kind = "http"
listener = "web"
address = "198.18.0.101"
concurrency = 50
requests_per_connection = 20
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

    let ClientHost::Http(stats) = &world.clients[0] else { panic!("http client expected") };
    let st = stats.borrow();
    // Every response verified byte for byte by the client.
    assert_eq!(st.responses_ok, 1000, "{ctx}");
    assert_eq!((st.errors, st.bad_bodies, st.timeouts), (0, 0, 0), "{ctx}");
    assert!(st.bytes_in >= 1000 * 1024, "{ctx}");
    // Each path was answered only by backends of the pool its route names,
    // and both backends of each pool answered.
    let mut seen = std::collections::BTreeSet::new();
    for (path, by_backend) in &st.by_path {
        let pool = if path.starts_with("/api/") { "api-" } else { "static-" };
        for (backend, n) in by_backend {
            assert!(backend.starts_with(pool), "{path} answered by {backend} ({n} times)\n{ctx}");
            seen.insert(backend.clone());
        }
    }
    assert_eq!(seen.len(), 4, "all four origins answered: {seen:?}\n{ctx}");
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
    let (connects, reuses): (u64, u64) = snap
        .backends
        .iter()
        .filter(|b| b.pool != "pg")
        .fold((0, 0), |(c, r), b| (c + b.upstream_connects, r + b.upstream_reuses));
    assert!(connects > 0 && connects <= 100, "upstream connects {connects}\n{ctx}");
    assert!(reuses >= 900, "upstream reuses {reuses}\n{ctx}");
    assert_eq!(connects + reuses, 1000, "{ctx}");
    // Backends saw exactly the requests the client made.
    let served: u64 = snap.backends.iter().filter(|b| b.pool != "pg").map(|b| b.host_served).sum();
    assert_eq!(served, 1000, "{ctx}");
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
