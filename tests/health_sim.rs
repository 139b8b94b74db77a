//! Active health checks of L4 backends on the simulated network: a backend whose
//! link is cut is marked down and gets no new flows, every stream still completes
//! on the others; when the link returns the backend is re-admitted and serves
//! again.

mod common;

use switchyard::world::{BackendHost, ClientHost, World};
use switchyard_sim::Duration;

fn config(seed: u64) -> switchyard::config::Config {
    let clients = r#"[[sim.client]]
name = "early"
kind = "bulk"
listener = "postgres"
address = "198.18.0.102"
concurrency = 3
total = 30
bytes_per_stream = 65536
start_ms = 1000
latency_us = 200

[[sim.client]]
name = "late"
kind = "bulk"
listener = "postgres"
address = "198.18.0.103"
concurrency = 3
total = 30
bytes_per_stream = 65536
start_ms = 6000
latency_us = 200
"#;
    let mut cfg = common::config(seed, 60, clients);
    let pg = cfg.pools.iter().position(|p| p.name == "pg").expect("pg pool");
    cfg.pools[pg].health = Some(switchyard_stack::health::CheckConfig {
        interval: Duration::from_millis(200),
        timeout: Duration::from_millis(200),
        rise: 2,
        fall: 2,
    });
    cfg
}

/// Client flows the load balancer sent to each backend of the `postgres`
/// listener (the backends' own counts include the health probes).
fn served(w: &World) -> Vec<u64> {
    w.lb.borrow().dp.l4.backend_stats(0).iter().map(|b| b.flows_new).collect()
}

/// Connections each echo backend accepted: client flows plus probes.
fn accepted(w: &World, pool: usize) -> Vec<u64> {
    w.backends[pool].iter().map(BackendHost::served).collect()
}

#[test]
fn a_dead_backend_is_skipped_and_readmitted() {
    let seed = common::seed(31);
    let cfg = config(seed);
    let pg = cfg.pools.iter().position(|p| p.name == "pg").unwrap();
    let mut w = World::build(&cfg).expect("world");
    let t0 = w.net.now();
    // pg-2 dies before any client starts.
    let dead = w.backend_links[pg][1];
    w.net.set_link_up(dead, false);
    w.net.run_until(t0 + Duration::from_millis(4000));
    {
        let lb = w.lb.borrow();
        assert!(!lb.dp.l4.backend_up(0, 1), "pg-2 still up (seed {seed})");
        assert!(lb.dp.l4.backend_up(0, 0) && lb.dp.l4.backend_up(0, 2));
        let st = lb.dp.health.stats((0, 1)).unwrap();
        assert_eq!(st.downs, 1, "{st:?}");
    }
    let ClientHost::Bulk(early) = &w.clients[0] else { panic!("bulk") };
    assert!(early.borrow().done(), "early client finished: {:?} (seed {seed})", early.borrow());
    assert_eq!(early.borrow().streams_ok, 30, "{:?} (seed {seed})", early.borrow());
    let after_early = served(&w);
    assert_eq!(after_early[1], 0, "the dead backend got flows: {after_early:?}");
    assert_eq!(after_early[0] + after_early[2], 30);
    assert_eq!(accepted(&w, pg)[1], 0, "nothing reached the dead backend");

    // It comes back; two good probes later it takes flows again.
    w.net.set_link_up(dead, true);
    let done = w.run(Duration::from_millis(100), Duration::from_secs(30), |_| {});
    assert!(done, "late client did not finish (seed {seed})");
    let ClientHost::Bulk(late) = &w.clients[1] else { panic!("bulk") };
    assert_eq!(late.borrow().streams_ok, 30, "{:?} (seed {seed})", late.borrow());
    let lb = w.lb.borrow();
    assert!(lb.dp.l4.backend_up(0, 1));
    assert_eq!(lb.dp.health.stats((0, 1)).unwrap().ups, 1);
    drop(lb);
    let total = served(&w);
    // Probes reach it again too.
    assert!(accepted(&w, pg)[1] > total[1]);
    assert_eq!(total.iter().sum::<u64>(), 60);
    assert_eq!(total[1], 10, "re-admitted backend takes its round-robin share: {total:?}");
}
