//! Direct server return by IP-in-IP and by GUE on the simulated network: client packets
//! reach the backends through the load balancer inside an outer header, the
//! backends (which own the VIP and never answer ARP for it) reply to the client
//! directly, and every stream's SHA-256 still matches.

mod common;

use switchyard::config::Mode;
use switchyard::world::{BackendHost, ClientHost, World};
use switchyard_sim::Duration;

#[test]
fn dsr_ipip_carries_streams_and_replies_bypass_the_load_balancer() {
    dsr(switchyard_l4::Forwarding::DsrIpip, common::seed(41));
}

#[test]
fn dsr_gue_carries_streams_and_replies_bypass_the_load_balancer() {
    dsr(switchyard_l4::Forwarding::DsrGue, common::seed(42));
}

fn dsr(mode: switchyard_l4::Forwarding, seed: u64) {
    let clients = r#"[[sim.client]]
name = "streams"
kind = "bulk"
listener = "postgres"
address = "198.18.0.102"
concurrency = 3
total = 9
bytes_per_stream = 262144
latency_us = 200
"#;
    let mut cfg = common::config(seed, 60, clients);
    let Mode::L4 { forwarding, .. } = &mut cfg.listeners[0].mode else { panic!("postgres is L4") };
    *forwarding = mode;
    let mut w = World::build(&cfg).expect("world");
    let done = w.run(Duration::from_millis(100), Duration::from_secs(60), |_| {});
    assert!(done, "streams did not finish (seed {seed})");
    let ClientHost::Bulk(st) = &w.clients[0] else { panic!("bulk") };
    let st = st.borrow();
    assert_eq!((st.streams_ok, st.streams_failed, st.timeouts), (9, 0, 0), "{st:?} (seed {seed})");
    assert_eq!(st.bytes_received, 9 * 262144);

    let lb = w.lb.borrow();
    let l = lb.dp.l4.listener_stats(0).unwrap();
    assert_eq!(l.flows_new, 9);
    // Client to backend went through the load balancer; nothing came back through it.
    assert!(l.packets_in > 9 * 262144 / 1500, "{l:?}");
    assert_eq!(l.packets_out, 0, "{l:?}");
    // Backend replies did not touch the LB's port at all beyond ARP: far fewer
    // frames crossed its link than the streams' data in both directions.
    let lb_frames = w.net.link_stats(w.lb_link).frames;
    assert!(lb_frames < 2 * l.packets_in + 200, "LB link carried {lb_frames} frames");
    // Round-robin: three streams per backend, each seen by its host.
    let per: Vec<u64> = lb.dp.l4.backend_stats(0).iter().map(|b| b.flows_new).collect();
    assert_eq!(per, vec![3, 3, 3]);
    drop(lb);
    let served: Vec<u64> = w.backends[0].iter().map(BackendHost::served).collect();
    assert_eq!(served, vec![3, 3, 3]);
}
