//! UDP through an L4 listener on the simulated network: request/response
//! datagrams from many client ports (each a flow) through full-NAT to UDP echo
//! backends, every echo compared byte for byte.

mod common;

use switchyard::config::Config;
use switchyard::world::ClientHost;

const CONFIG: &str = r#"
[device]
nic = "sim"
mac = "02:53:59:00:00:02"
addresses = ["198.18.0.2/24"]

[[listener]]
name = "dns"
mode = "l4"
protocol = "udp"
address = "198.18.0.10:53"
pool = "dns"

[[pool]]
name = "dns"
backends = [
  { name = "dns-1", address = "198.18.0.51:53" },
  { name = "dns-2", address = "198.18.0.52:53" },
]

[sim]
seed = 61
seconds = 60

[[sim.client]]
name = "resolvers"
kind = "udp"
listener = "dns"
address = "198.18.0.105"
concurrency = 8
total = 400
bytes_per_stream = 200
latency_us = 200
"#;

#[test]
fn udp_requests_and_responses_through_full_nat() {
    let seed = common::seed(61);
    let cfg = Config::parse("udp.toml", &CONFIG.replace("seed = 61", &format!("seed = {seed}")))
        .unwrap_or_else(|e| panic!("{e}"));
    let (w, snap) = common::run(&cfg, 60);
    let ctx = format!("sim seed {seed}\n{}", snap.summary());
    let ClientHost::Udp(st) = &w.clients[0] else { panic!("udp client") };
    let st = st.borrow();
    assert_eq!((st.sent, st.ok, st.bad, st.lost), (400, 400, 0, 0), "{ctx}");
    let lb = w.lb.borrow();
    let l = lb.dp.l4.listener_stats(0).unwrap();
    // Eight client ports: eight flows, split by round-robin, every datagram both ways.
    assert_eq!(l.flows_new, 8, "{ctx}");
    assert_eq!((l.packets_in, l.packets_out), (400, 400), "{ctx}");
    let served: Vec<u64> = w.backends[0].iter().map(|b| b.served()).collect();
    assert_eq!(served, vec![200, 200], "{ctx}");
}
