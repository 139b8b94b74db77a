//! The simulated network with its own hosts, no load balancer: HTTP client to
//! origin and bulk client to echo server, on clean and impaired links, replayed
//! from the same seed, and recorded by a tap that pcap readers open.

use std::net::IpAddr;

use switchyard_sim::hosts::*;
use switchyard_sim::{Duration, Instant, LinkConfig, Network, seed_from_env};

fn host(name: &str, last: u8) -> HostConfig {
    HostConfig {
        name: name.into(),
        mac: [0x02, 0, 198, 18, 0, last],
        ip: IpAddr::from([198, 18, 0, last]),
        prefix: 24,
        gateway: None,
        vips: Vec::new(),
    }
}

struct Outcome {
    client: ClientStats,
    server: ServerStats,
    bulk: BulkStats,
    echo: EchoStats,
    link: switchyard_sim::LinkStats,
}

fn run(seed: u64, link: LinkConfig, tap: Option<&std::path::Path>) -> Outcome {
    let mut net = Network::new(seed);
    let (origin, wire, server) = HttpServer::new(host("origin", 31), 8080, 1500);
    net.add_node(Box::new(origin));
    net.attach("origin", wire, LinkConfig::ideal());
    let (client, wire, client_stats) = HttpClient::new(
        host("client", 101),
        HttpClientConfig {
            target: "198.18.0.31:8080".parse().unwrap(),
            paths: vec!["/a".into(), "/b/c".into()],
            concurrency: 4,
            requests_per_connection: 10,
            total_requests: Some(100),
            until: None,
            body_size: 1500,
            timeout: Duration::from_secs(5),
            start_port: 20000,
            start: None,
            socket_buffer: 65536,
            connects_per_ms: 0,
            tls: None,
        },
    );
    net.add_node(Box::new(client));
    let client_link = net.attach("client", wire, link);
    if let Some(p) = tap {
        net.tap(client_link, p).unwrap();
    }
    let (echo, wire, echo_stats) = EchoServer::new(host("echo", 21), 7);
    net.add_node(Box::new(echo));
    net.attach("echo", wire, LinkConfig::ideal());
    let (bulk, wire, bulk_stats) = BulkClient::new(
        host("bulk", 102),
        BulkConfig {
            target: "198.18.0.21:7".parse().unwrap(),
            streams: 3,
            bytes_per_stream: 256 * 1024,
            total_streams: Some(3),
            until: None,
            seed,
            timeout: Duration::from_secs(10),
            start_port: 30000,
            start: None,
        },
    );
    net.add_node(Box::new(bulk));
    net.attach("bulk", wire, link);
    let done = net.run_while_until(Instant::from_secs(60), |_| {
        !(client_stats.borrow().done() && bulk_stats.borrow().done())
    });
    net.flush_taps();
    assert!(
        done,
        "sim did not finish (seed {seed}; rerun with SIM_SEED={seed})\n{:?}\n{:?}\n{:?}\n{:?}\n{:?}",
        client_stats.borrow(),
        server.borrow(),
        bulk_stats.borrow(),
        echo_stats.borrow(),
        net.link_stats(client_link)
    );
    Outcome {
        client: client_stats.borrow().clone(),
        server: server.borrow().clone(),
        bulk: bulk_stats.borrow().clone(),
        echo: echo_stats.borrow().clone(),
        link: net.link_stats(client_link),
    }
}

fn check(o: &Outcome, seed: u64) {
    let c = &o.client;
    assert_eq!(c.requests, 100, "seed {seed}");
    assert_eq!(c.responses_ok, 100, "seed {seed}: {c:?}");
    assert_eq!(c.errors + c.bad_bodies + c.timeouts, 0, "seed {seed}: {c:?}");
    // 10 requests per connection; near the end a slot may open a connection
    // that finds the total already reached.
    assert!((10..=14).contains(&c.connections), "{c:?}");
    assert_eq!(c.by_path["/a"]["origin"], 50);
    assert_eq!(c.by_path["/b/c"]["origin"], 50);
    assert_eq!(o.server.requests, 100);
    assert_eq!(o.server.connections, c.connections);
    assert_eq!(o.bulk.streams_ok, 3, "seed {seed}: {:?}", o.bulk);
    assert_eq!(o.bulk.streams_failed + o.bulk.timeouts, 0);
    assert_eq!(o.bulk.bytes_received, 3 * 256 * 1024);
    assert_eq!(o.echo.bytes, 3 * 256 * 1024);
}

#[test]
fn hosts_exchange_exact_bytes_on_a_clean_network() {
    let seed = seed_from_env(1);
    let o = run(seed, LinkConfig::ideal(), None);
    check(&o, seed);
    assert_eq!(o.link.lost, 0);
}

#[test]
fn loss_and_reordering_do_not_change_a_byte() {
    let seed = seed_from_env(2);
    let o = run(seed, LinkConfig::lossy(0.02, 0.02), None);
    check(&o, seed);
    assert!(o.link.lost > 0 && o.link.reordered > 0, "impairments did not happen: {:?}", o.link);
}

#[test]
fn the_same_seed_replays_the_same_run() {
    let a = run(7, LinkConfig::lossy(0.02, 0.02), None);
    let b = run(7, LinkConfig::lossy(0.02, 0.02), None);
    assert_eq!(a.link, b.link);
    assert_eq!(a.client.latency_us_sum, b.client.latency_us_sum);
    let c = run(8, LinkConfig::lossy(0.02, 0.02), None);
    assert_ne!(a.link, c.link, "another seed should give another run");
}

#[test]
fn a_tap_writes_a_pcap_that_parses_back() {
    let path = std::env::temp_dir().join(format!("switchyard-sim-tap-{}.pcap", std::process::id()));
    let o = run(3, LinkConfig::ideal(), Some(&path));
    check(&o, 3);
    let data = std::fs::read(&path).unwrap();
    let mut reader = pcap_file::pcap::PcapReader::new(&data[..]).unwrap();
    let mut frames = 0u64;
    let mut http = 0u64;
    while let Some(p) = reader.next_packet() {
        let p = p.unwrap();
        frames += 1;
        if p.data.windows(8).any(|w| w == b"GET /b/c") {
            http += 1;
        }
    }
    // Both directions of the client's link: every frame it sent and received.
    assert_eq!(frames, o.link.frames);
    assert_eq!(http, 50);
    let _ = std::fs::remove_file(&path);
}
