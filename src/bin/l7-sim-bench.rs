//! L7 cost per request and memory per connection against the number of
//! concurrent client connections, on the simulated network: HTTP/1.1
//! keep-alive clients (or, with `PROTOCOL=h2c`, HTTP/2 clients with prior
//! knowledge, one request in flight per connection) with 1 KiB bodies through
//! one L7 listener (two routes, two pools of simulated HTTP/1.1 origins), at
//! each concurrency in turn.
//!
//! Cost: the load balancer's own time (its turns, the simulated hosts
//! excluded) divided by the requests it proxied in steady state: from the
//! moment every client connection is open and has made a request until the
//! first client population has sent its last request (before any connection
//! closes). The ratio to the cost at the smallest concurrency is the figure
//! the design promises to keep flat.
//!
//! Memory: a counting global allocator (the `cap` crate) is read around every
//! turn of the load balancer, so what its turns allocate and keep is known
//! apart from the simulated hosts' memory (see `World::lb_heap_bytes`). At
//! the end of steady state that heap, less the heap before the first client
//! connected, divided by the client connections open, is the memory per
//! proxied connection pair (a client connection and its share of upstream
//! connections, which are pooled per backend); twice the heap per terminated
//! connection is what a pair holds whose upstream connection is its own.
//!
//! Clients are spread over many simulated hosts (250 connections each, every
//! host is one smoltcp interface that scans all of its sockets per segment)
//! in 198.18.0.0/15 and open at most 10,000 connections per virtual
//! millisecond in all (1 ms one-way latency, so the first connections make
//! few requests while the last ones open); origins scale with the load (one per 1,563
//! connections, at least two).
//!
//!   cargo run --release --bin l7-sim-bench [-- 10 1000 100000]
//!   PROTOCOL=h2c cargo run --release --bin l7-sim-bench
//!   SOCKETS_PER_SHARD=16 BUFFER_SIZE=16384 cargo run --release --bin l7-sim-bench

use std::time::Instant as WallClock;

use switchyard::config::Config;
use switchyard::world::{ClientHost, World};
use switchyard_sim::Duration;

#[cfg(not(feature = "mimalloc"))]
type Heap = std::alloc::System;
#[cfg(not(feature = "mimalloc"))]
const HEAP: Heap = std::alloc::System;
#[cfg(feature = "mimalloc")]
type Heap = mimalloc::MiMalloc;
#[cfg(feature = "mimalloc")]
const HEAP: Heap = mimalloc::MiMalloc;

#[global_allocator]
static ALLOC: cap::Cap<Heap> = cap::Cap::new(HEAP, usize::MAX);

fn allocated() -> usize {
    ALLOC.allocated()
}

/// Client connections per simulated client host.
const PER_HOST: usize = 250;
/// New connections per virtual millisecond, all hosts together.
const RAMP_PER_MS: usize = 10_000;
/// Requests each connection makes (at least 200,000 in all, so that the
/// small levels run long enough to average out other work on the machine;
/// `MIN_REQUESTS` sets that floor, e.g. lower for a run under callgrind).
const REQUESTS_PER_CONNECTION: u64 = 8;
const MIN_REQUESTS: u64 = 200_000;

struct Shape {
    hosts: Vec<(usize, u64)>,
    backends: usize,
}

fn shape(n: usize) -> Shape {
    let h = n.div_ceil(PER_HOST).max(1);
    let floor =
        std::env::var("MIN_REQUESTS").ok().and_then(|v| v.parse().ok()).unwrap_or(MIN_REQUESTS);
    let total = (n as u64 * REQUESTS_PER_CONNECTION).max(floor);
    let hosts = (0..h)
        .map(|i| {
            let c = n / h + usize::from(i < n % h);
            (c, total * c as u64 / n as u64)
        })
        .collect();
    Shape { hosts, backends: n.div_ceil(1563).max(2) }
}

/// The clients' protocol: the `[[sim.client]]` kind.
fn protocol() -> &'static str {
    match std::env::var("PROTOCOL").as_deref() {
        Err(_) | Ok("" | "http" | "http1") => "http",
        Ok("h2c" | "h2" | "http2") => "h2c",
        Ok(other) => panic!("PROTOCOL={other}: expected `http` (the default) or `h2c`"),
    }
}

fn config(n: usize, per_shard: usize, buffer: Option<usize>) -> (Config, Shape) {
    let s = shape(n);
    let mut src = String::new();
    let buffer = buffer.map(|b| format!("buffer_size = {b}\n")).unwrap_or_default();
    src.push_str(&format!(
        "[device]\nnic = \"sim\"\nmac = \"02:53:59:00:00:02\"\naddresses = [\"198.18.0.2/15\"]\n\n\
         [tcp]\nsockets_per_shard = {per_shard}\nmax_connections = 262144\n{buffer}\
         ephemeral_ports = \"20000-40959\"\n\n[l4]\nsnat_ports = \"40960-65534\"\n\n\
         [[listener]]\nname = \"web\"\nmode = \"l7\"\naddress = \"198.18.0.10:80\"\n  \
         [[listener.route]]\n  path_prefix = \"/api/\"\n  pool = \"api\"\n  \
         [[listener.route]]\n  path_prefix = \"/\"\n  pool = \"static\"\n\n"
    ));
    for (pi, pool) in ["api", "static"].iter().enumerate() {
        src.push_str(&format!("[[pool]]\nname = \"{pool}\"\nbackends = [\n"));
        for b in (pi..s.backends).step_by(2) {
            src.push_str(&format!(
                "  {{ name = \"{pool}-{b}\", address = \"198.18.1.{}:8080\" }},\n",
                b + 1
            ));
        }
        // Probes resolve the origins' addresses before the first requests.
        src.push_str("]\n  [pool.health]\n  interval_ms = 1000\n\n");
    }
    src.push_str(
        "[sim]\nseed = 7\nseconds = 600\nbody_size = 1024\nhost_buffer = 4096\n\
         origin_backlog = 512\n\n",
    );
    let ramp_total: usize =
        std::env::var("RAMP").ok().and_then(|v| v.parse().ok()).unwrap_or(RAMP_PER_MS);
    let ramp = ramp_total.div_ceil(s.hosts.len()).max(1);
    for (i, (c, total)) in s.hosts.iter().enumerate() {
        src.push_str(&format!(
            "[[sim.client]]\nname = \"clients-{i}\"\nkind = \"{}\"\nlistener = \"web\"\n\
             address = \"198.18.{}.{}\"\nconcurrency = {c}\nrequests_per_connection = 1000000\n\
             total = {total}\npaths = [\"/api/users\", \"/index.html\"]\nlatency_us = 1000\n\
             connects_per_ms = {ramp}\n\n",
            protocol(),
            2 + i / 250,
            1 + i % 250
        ));
    }
    match Config::parse("l7-sim-bench", &src) {
        Ok(c) => (c, s),
        Err(e) => panic!("bench config: {e}"),
    }
}

/// What the clients did so far, all hosts together.
#[derive(Default)]
struct Clients {
    connections: u64,
    requests: u64,
    errors: u64,
    /// Some host has sent its last request (connections will close).
    any_done_sending: bool,
}

fn clients(w: &World, s: &Shape) -> Clients {
    let mut out = Clients::default();
    for (c, (_, total)) in w.clients.iter().zip(&s.hosts) {
        let (ClientHost::Http(st) | ClientHost::H2c(st)) = c else { continue };
        let st = st.borrow();
        out.connections += st.connections;
        out.requests += st.requests;
        out.errors += st.errors + st.bad_bodies + st.timeouts;
        out.any_done_sending |= st.requests >= *total;
    }
    out
}

/// A reading of the load balancer at one instant.
#[derive(Clone, Copy, Default)]
struct Mark {
    busy: std::time::Duration,
    requests: u64,
    heap: i64,
    tcp_active: u64,
    client_conns: u64,
}

fn mark(w: &World) -> Mark {
    let lb = w.lb.borrow();
    let l = lb.dp.l7.listener_stats(0);
    Mark {
        busy: w.lb_busy.get(),
        requests: l.map_or(0, |s| s.requests),
        heap: w.lb_heap_bytes(),
        tcp_active: lb.dp.stack.tcp_stats().active,
        // Over HTTP/2 the listener sees each stream as a connection: the
        // client connections are the front's.
        client_conns: if protocol() == "h2c" {
            lb.dp.h2.active_connections() as u64
        } else {
            l.map_or(0, |s| s.connections_active)
        },
    }
}

fn main() {
    let args: Vec<usize> = std::env::args().skip(1).filter_map(|a| a.parse().ok()).collect();
    let levels = if args.is_empty() { vec![10, 1000, 100_000] } else { args };
    // Sockets per smoltcp shard: a shard's poll visits all of its sockets.
    let per_shard: usize = std::env::var("SOCKETS_PER_SHARD")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| switchyard_stack::TcpConfig::default().sockets_per_shard);
    let buffer: Option<usize> = std::env::var("BUFFER_SIZE").ok().and_then(|v| v.parse().ok());
    let mut rows = Vec::new();
    let mut first = None;
    for &n in &levels {
        let started = WallClock::now();
        let (cfg, sh) = config(n, per_shard, buffer);
        let mut w = World::build(&cfg).expect("world");
        w.set_heap_probe(allocated);
        let base_heap = w.lb_heap_bytes();
        eprintln!(
            "{n} connections: {} client hosts, {} origins, socket buffers {} B",
            sh.hosts.len(),
            sh.backends,
            cfg.tcp.rx_buffer
        );
        let mut from: Option<Mark> = None;
        let mut to = Mark::default();
        let mut last_print = WallClock::now();
        let done = w.run(Duration::from_micros(500), Duration::from_secs(60), |w| {
            let c = clients(w, &sh);
            if c.errors > 0 {
                return;
            }
            if !c.any_done_sending {
                let m = mark(w);
                if from.is_none() && c.connections >= n as u64 && m.requests >= 2 * n as u64 {
                    from = Some(m);
                }
                to = m;
            }
            if last_print.elapsed().as_secs() >= 10 {
                last_print = WallClock::now();
                eprintln!(
                    "  {:>6.0} s wall, {:>6} ms virtual: {} connections opened, {} requests",
                    started.elapsed().as_secs_f64(),
                    (w.net.now() - w.start).total_millis(),
                    c.connections,
                    c.requests
                );
            }
        });
        let c = clients(&w, &sh);
        if !done || c.errors > 0 {
            let snap = switchyard::report::Snapshot::take(&w);
            panic!(
                "{n} connections: finished {done}, {} client errors\n{}",
                c.errors,
                snap.summary()
            );
        }
        let from = from.expect("steady state reached");
        eprintln!("  steady state: requests {}..{} of {}", from.requests, to.requests, c.requests);
        let requests = to.requests - from.requests;
        let busy = to.busy - from.busy;
        let per = busy.as_nanos() as f64 / requests.max(1) as f64;
        let base = *first.get_or_insert(per);
        let pairs = to.client_conns.max(1);
        let heap_total = (to.heap - base_heap).max(0) as f64;
        let heap = heap_total / pairs as f64;
        // Every terminated connection alike, client or upstream: what a pair
        // that has its upstream connection to itself holds is twice that.
        let per_conn = heap_total / to.tcp_active.max(1) as f64;
        let upstreams = to.tcp_active.saturating_sub(to.client_conns);
        let tcp = &cfg.tcp;
        let l7 = w.lb.borrow().dp.l7.peak_pair_bytes();
        eprintln!("  done in {:.0} s wall", started.elapsed().as_secs_f64());
        rows.push((
            n,
            requests,
            busy,
            per,
            per / base,
            to.client_conns,
            upstreams,
            heap,
            2.0 * per_conn,
            2 * (tcp.rx_buffer + tcp.tx_buffer),
            l7,
        ));
    }
    println!("protocol: {}, sockets per shard: {per_shard}", protocol());
    println!(
        "{:>11} {:>9} {:>10} {:>8} {:>8} {:>8} {:>9} {:>11} {:>11} {:>11} {:>9}",
        "connections",
        "requests",
        "LB time ms",
        "ns/req",
        "vs first",
        "clients",
        "upstreams",
        "heap B/pair",
        "1:1 B/pair",
        "sock B/pair",
        "L7 peak B"
    );
    for (n, requests, busy, per, ratio, conns, ups, heap, one, sock, l7) in rows {
        println!(
            "{n:>11} {requests:>9} {:>10.1} {per:>8.0} {ratio:>7.2}× {conns:>8} {ups:>9} {heap:>11.0} {one:>11.0} {sock:>11} {l7:>9}",
            busy.as_secs_f64() * 1e3,
        );
    }
    println!(
        "heap B/pair: the load balancer's measured heap per open client connection \
         (with its share of pooled upstream connections); 1:1 B/pair: twice the heap \
         per terminated connection (a pair whose upstream is its own); sock B/pair: configured \
         socket buffers of one client and one upstream connection; L7 peak B: the \
         proxy's buffers' high-water mark for one pair"
    );
}
