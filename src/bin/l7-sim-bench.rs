//! L7 cost per request against the number of concurrent client connections,
//! on the simulated network: HTTP/1.1 keep-alive clients with 1 KiB bodies
//! through the L7 listener of the demo configuration, at each concurrency in
//! turn. The load balancer's own time (its turns, the simulated hosts
//! excluded) divided by the requests it proxied, once every connection is
//! open (steady state), is the cost per request; the
//! ratio to the cost at the smallest concurrency is the figure the design
//! promises to keep flat. Memory per proxied connection pair is the TCP
//! socket buffers (configured) plus the proxy's measured buffer high-water
//! mark.
//!
//!   cargo run --release --bin l7-sim-bench [-- 10 100 1000]
//!   SOCKETS_PER_SHARD=16 cargo run --release --bin l7-sim-bench

use switchyard::config::Config;
use switchyard::world::{ClientHost, World};
use switchyard_sim::Duration;

fn config(concurrency: usize, total: u64, per_shard: usize) -> Config {
    let demo = switchyard::config::DEMO_CONFIG;
    let head = &demo[..demo.find("[sim]").expect("demo has [sim]")];
    // Enough sockets and ports for every client and upstream connection.
    let head: String = head
        .lines()
        .map(|l| {
            if l.starts_with("sockets_per_shard") {
                format!("sockets_per_shard = {per_shard}\n")
            } else {
                format!("{l}\n")
            }
        })
        .collect();
    let head = head
        .replace("[tcp]\n", "[tcp]\nmax_connections = 131072\n")
        .replace("ephemeral_ports = \"32768-40959\"", "ephemeral_ports = \"20000-40959\"");
    let src = format!(
        "{head}[sim]\nseed = 7\nseconds = 600\nbody_size = 1024\n\n\
         [[sim.client]]\nname = \"clients\"\nkind = \"http\"\nlistener = \"web\"\n\
         address = \"198.18.0.101\"\nconcurrency = {concurrency}\nrequests_per_connection = 1000000\n\
         total = {total}\npaths = [\"/api/users\", \"/index.html\"]\nlatency_us = 200\n"
    );
    match Config::parse("l7-sim-bench", &src) {
        Ok(c) => c,
        Err(e) => panic!("bench config: {e}"),
    }
}

fn main() {
    let args: Vec<usize> = std::env::args().skip(1).filter_map(|a| a.parse().ok()).collect();
    // Above a few thousand connections the simulated origins' accept queues
    // (256 listening sockets each) refuse bursts of new upstream
    // connections: a limit of the simulation, not of the load balancer.
    let levels = if args.is_empty() { vec![10, 100, 1000] } else { args };
    // Sockets per smoltcp shard: a shard's poll visits all of its sockets.
    let per_shard: usize = std::env::var("SOCKETS_PER_SHARD")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| switchyard_stack::TcpConfig::default().sockets_per_shard);
    println!("sockets per shard: {per_shard}");
    println!(
        "{:>11} {:>10} {:>12} {:>14} {:>10} {:>22}",
        "connections",
        "requests",
        "LB time ms",
        "ns per request",
        "vs first",
        "bytes per conn pair"
    );
    let mut first = None;
    for &n in &levels {
        // Every connection makes many requests; at least 40,000 in all.
        let total = (n as u64 * 40).max(40_000);
        let cfg = config(n, total, per_shard);
        let mut w = World::build(&cfg).expect("world");
        // Steady state only: measure from the moment every connection is
        // open and has made a request (connection setup is not the cost
        // per request).
        let mut from: Option<(std::time::Duration, u64)> = None;
        let done = w.run(Duration::from_millis(20), Duration::from_secs(60), |w| {
            let ClientHost::Http(st) = &w.clients[0] else { return };
            let reqs = w.lb.borrow().dp.l7.listener_stats(1).map_or(0, |s| s.requests);
            if from.is_none() && st.borrow().connections >= n as u64 && reqs >= 2 * n as u64 {
                from = Some((w.lb_busy.get(), reqs));
            }
        });
        let ClientHost::Http(st) = &w.clients[0] else { panic!("http client") };
        let st = st.borrow().clone();
        assert!(done, "{n} connections: clients did not finish: {st:?}");
        let lb = w.lb.borrow();
        if st.errors + st.bad_bodies + st.timeouts > 0 {
            let snap = switchyard::report::Snapshot::take(&w);
            panic!("{n} connections: client errors {st:?}\n{}", snap.summary());
        }
        let (busy0, reqs0) = from.unwrap_or_default();
        let requests = lb.dp.l7.listener_stats(1).map_or(0, |s| s.requests) - reqs0;
        let busy = w.lb_busy.get() - busy0;
        let per = busy.as_nanos() as f64 / requests.max(1) as f64;
        let base = *first.get_or_insert(per);
        // Two sockets per pair (client side and upstream side), each with
        // its receive and send buffers, plus the proxy's own buffers.
        let tcp = &cfg.tcp;
        let pair = 2 * (tcp.rx_buffer + tcp.tx_buffer) + lb.dp.l7.peak_pair_bytes();
        println!(
            "{:>11} {:>10} {:>12.1} {:>14.0} {:>9.2}× {:>22}",
            n,
            requests,
            busy.as_secs_f64() * 1e3,
            per,
            per / base,
            pair
        );
    }
}
