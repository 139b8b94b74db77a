//! L4 end to end on the simulated network: TCP streams through the full-NAT
//! listener to echo backends, compared by SHA-256 digest at the client, spread
//! round-robin over all three backends; clean and over a lossy, reordering link.

mod common;

use switchyard::world::ClientHost;

fn bulk_run(seed: u64, loss: f64, reorder: f64) {
    let clients = format!(
        r#"[[sim.client]]
name = "streams"
kind = "bulk"
listener = "postgres"
address = "198.18.0.102"
concurrency = 5
total = 20
bytes_per_stream = 1048576
loss = {loss}
reorder = {reorder}
latency_us = 200
"#
    );
    let cfg = common::config(seed, 120, &clients);
    let (world, snap) = common::run(&cfg, 240);
    let ctx = format!("sim seed = {seed}\n{}", snap.summary());

    let ClientHost::Bulk(stats) = &world.clients[0] else { panic!("bulk client expected") };
    let st = stats.borrow();
    let ctx =
        format!("{ctx}\n{st:?}\nclient link {:?}", world.net.link_stats(world.client_links[0]));
    assert_eq!(st.streams_ok, 20, "{ctx}");
    assert_eq!((st.streams_failed, st.timeouts), (0, 0), "{ctx}");
    assert_eq!(st.bytes_received, 20 << 20, "{ctx}");
    // Round-robin over three backends: 7, 7, 6 flows, seen by the LB and by the hosts.
    let pg: Vec<_> = snap.backends.iter().filter(|b| b.pool == "pg").collect();
    assert_eq!(pg.len(), 3, "{ctx}");
    let mut lb_sent: Vec<u64> = pg.iter().map(|b| b.lb_sent).collect();
    lb_sent.sort();
    assert_eq!(lb_sent, vec![6, 7, 7], "{ctx}");
    let mut served: Vec<u64> = pg.iter().map(|b| b.host_served).collect();
    served.sort();
    assert_eq!(served, vec![6, 7, 7], "{ctx}");
    let lb = world.lb.borrow();
    let l = lb.dp.l4.listener_stats(0).expect("postgres listener stats");
    assert_eq!(l.flows_new, 20, "{ctx}");
    assert_eq!(l.flows_refused(), 0, "{ctx}");
    // The payload was never touched: bytes through the LB cover both directions.
    assert!(l.bytes_in + l.bytes_out >= 2 * (20 << 20), "{ctx}");
}

#[test]
fn tcp_20_streams_of_1mib() {
    bulk_run(common::seed(21), 0.0, 0.0);
}

#[test]
fn tcp_20_streams_of_1mib_with_loss_and_reordering() {
    bulk_run(common::seed(22), 0.02, 0.02);
}
