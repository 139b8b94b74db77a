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

/// Streams in flight on a backend whose link is cut, with either policy.
/// Returns the world 4.8 s after the cut.
fn cut_mid_stream(policy: switchyard_l4::DownPolicy, seed: u64) -> World {
    let clients = r#"[[sim.client]]
name = "pg-clients"
kind = "bulk"
listener = "postgres"
address = "198.18.0.102"
concurrency = 6
total = 6
bytes_per_stream = 67108864
start_ms = 500
latency_us = 200
"#;
    let mut cfg = common::config(seed, 60, clients);
    let pg = cfg.pools.iter().position(|p| p.name == "pg").unwrap();
    cfg.pools[pg].health = Some(switchyard_stack::health::CheckConfig {
        interval: Duration::from_millis(200),
        timeout: Duration::from_millis(200),
        rise: 2,
        fall: 2,
    });
    let switchyard::config::Mode::L4 { on_backend_down, .. } = &mut cfg.listeners[0].mode else {
        panic!("postgres is L4")
    };
    *on_backend_down = policy;
    let mut w = World::build(&cfg).expect("world");
    let t0 = w.start;
    // Each 64 MiB stream takes about a second of virtual time: cut pg-2's
    // link while they are all under way.
    w.net.run_until(t0 + Duration::from_millis(700));
    assert_eq!(served(&w), vec![2, 2, 2], "six long streams, two per backend (seed {seed})");
    let active: Vec<u64> =
        w.lb.borrow().dp.l4.backend_stats(0).iter().map(|b| b.flows_active).collect();
    assert_eq!(active, vec![2, 2, 2], "all six under way at the cut (seed {seed})");
    w.net.set_link_up(w.backend_links[pg][1], false);
    w.net.run_until(t0 + Duration::from_millis(5500));
    assert!(!w.lb.borrow().dp.l4.backend_up(0, 1), "pg-2 marked down (seed {seed})");
    w
}

#[test]
fn flows_of_a_dead_backend_are_kept_or_reset_as_configured() {
    use switchyard_l4::{DownPolicy, L4Drop};
    let seed = common::seed(33);

    // keep: the two streams on pg-2 hang on (the client keeps retransmitting
    // into them); the table still holds them.
    let w = cut_mid_stream(DownPolicy::Keep, seed);
    let ClientHost::Bulk(c) = &w.clients[0] else { panic!("bulk") };
    assert_eq!(c.borrow().streams_failed, 0, "{:?} (seed {seed})", c.borrow());
    let lb = w.lb.borrow();
    assert_eq!(lb.dp.l4.backend_stats(0)[1].flows_active, 2);
    assert_eq!(lb.dp.l4.counters().flows_reset, 0);
    drop(lb);

    // reset: the next segment of each ends it with a RST to the client, which
    // sees the streams fail at once; the entries are gone.
    let w = cut_mid_stream(DownPolicy::Reset, seed);
    let ClientHost::Bulk(c) = &w.clients[0] else { panic!("bulk") };
    assert_eq!(c.borrow().streams_failed, 2, "{:?} (seed {seed})", c.borrow());
    assert_eq!(c.borrow().timeouts, 0, "reset, not timed out: {:?}", c.borrow());
    let lb = w.lb.borrow();
    assert_eq!(lb.dp.l4.backend_stats(0)[1].flows_active, 0);
    assert_eq!(lb.dp.l4.counters().flows_reset, 2);
    assert!(lb.dp.l4.counters().dropped(L4Drop::BackendDown) >= 2);
    // The streams on the healthy backends were untouched and completed.
    assert_eq!(c.borrow().streams_ok, 4, "{:?}", c.borrow());
}
