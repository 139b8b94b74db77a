//! IPv6 end to end on the simulated network: neighbor discovery with smoltcp
//! hosts, L4 full-NAT streams digest-checked and L7 requests byte-checked, all
//! over IPv6 (2001:2::/48), clean and with loss and reordering.

mod common;

use switchyard::config::Config;
use switchyard::world::ClientHost;

const CONFIG: &str = r#"
[device]
nic = "sim"
mac = "02:53:59:00:00:02"
addresses = ["198.18.0.2/24", "2001:2::2/64"]

[[listener]]
name = "pg6"
mode = "l4"
address = "[2001:2::10]:5432"
pool = "pg6"

[[listener]]
name = "web6"
mode = "l7"
address = "[2001:2::10]:80"
  [[listener.route]]
  path_prefix = "/"
  pool = "web6"

[[pool]]
name = "pg6"
backends = [
  { name = "pg6-1", address = "[2001:2::21]:5432" },
  { name = "pg6-2", address = "[2001:2::22]:5432" },
]

[[pool]]
name = "web6"
backends = [
  { name = "web6-1", address = "[2001:2::31]:8080" },
  { name = "web6-2", address = "[2001:2::32]:8080" },
]

[sim]
seed = 5
seconds = 60
body_size = 1024

[[sim.client]]
name = "bulk6"
kind = "bulk"
listener = "pg6"
address = "2001:2::102"
concurrency = 2
total = 4
bytes_per_stream = 262144
latency_us = 200

[[sim.client]]
name = "http6"
kind = "http"
listener = "web6"
address = "2001:2::101"
concurrency = 4
total = 100
requests_per_connection = 25
paths = ["/a", "/b"]
latency_us = 200
"#;

fn run_v6(seed: u64, loss: f64) {
    let src = CONFIG
        .replace("seed = 5", &format!("seed = {seed}"))
        .replace("latency_us = 200", &format!("latency_us = 200\nloss = {loss}\nreorder = {loss}"));
    let cfg = Config::parse("ipv6.toml", &src).unwrap_or_else(|e| panic!("{e}"));
    let (w, snap) = common::run(&cfg, 120);
    let ctx = format!("sim seed {seed}\n{}", snap.summary());
    let ClientHost::Bulk(bulk) = &w.clients[0] else { panic!("bulk") };
    let b = bulk.borrow();
    assert_eq!((b.streams_ok, b.streams_failed, b.timeouts), (4, 0, 0), "{b:?}\n{ctx}");
    let ClientHost::Http(http) = &w.clients[1] else { panic!("http") };
    let h = http.borrow();
    assert_eq!(h.responses_ok, 100, "{ctx}");
    assert_eq!(h.errors + h.bad_bodies + h.timeouts, 0, "{ctx}");
    let lb = w.lb.borrow();
    let c = lb.dp.stack.counters();
    // Neighbor discovery both ways: advertisements for the VIP and the SNAT
    // address, solicitations for the backends and clients.
    assert!(c.arp_replies_sent >= 2 && c.arp_requests_sent >= 2, "{c:?}");
    assert_eq!(lb.dp.l4.listener_stats(0).unwrap().flows_new, 4, "{ctx}");
}

#[test]
fn ipv6_l4_and_l7_end_to_end() {
    run_v6(common::seed(51), 0.0);
}

#[test]
fn ipv6_l4_and_l7_with_loss_and_reordering() {
    run_v6(common::seed(52), 0.02);
}
