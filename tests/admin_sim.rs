//! Draining backends: by configuration (`drain = true`), by an operator command
//! between two turns of the worker, and by `[[sim.admin]]` at a set time. A
//! drained backend gets no new flows; the flows it has finish byte-exact.

mod common;

use switchyard::admin;
use switchyard::world::{ClientHost, World};
use switchyard_sim::Duration;

const CLIENTS: &str = r#"[[sim.client]]
name = "pg-clients"
kind = "bulk"
listener = "postgres"
address = "198.18.0.102"
concurrency = 6
bytes_per_stream = 131072
start_ms = 200
latency_us = 300

[[sim.admin]]
at_ms = 2000
command = "undrain pg pg-3"
"#;

/// Client flows the load balancer sent to each backend of `postgres`.
fn flows_new(w: &World) -> Vec<u64> {
    w.lb.borrow().dp.l4.backend_stats(0).iter().map(|b| b.flows_new).collect()
}

fn flows_active(w: &World) -> Vec<u64> {
    w.lb.borrow().dp.l4.backend_stats(0).iter().map(|b| b.flows_active).collect()
}

#[test]
fn drained_backends_take_no_new_flows_and_finish_the_ones_they_have() {
    let seed = common::seed(41);
    let mut cfg = common::config(seed, 3, CLIENTS);
    let pg = cfg.pools.iter().position(|p| p.name == "pg").unwrap();
    cfg.pools[pg].backends[2].drain = true; // pg-3, as `drain = true` does
    let mut w = World::build(&cfg).expect("world");
    let t0 = w.start;

    w.net.run_until(t0 + Duration::from_millis(1000));
    let before = flows_new(&w);
    let active = flows_active(&w);
    assert_eq!(before[2], 0, "a backend drained by config got flows: {before:?} (seed {seed})");
    assert!(before[0] > 0 && before[1] > 0, "{before:?}");
    assert!(active[1] > 0, "pg-2 has flows under way when it is drained: {active:?}");
    let reply = admin::execute(&mut w.lb.borrow_mut().dp, "drain pg pg-2");
    assert_eq!(reply, "drained pg/pg-2 (1 listeners)");
    let shown = admin::execute(&mut w.lb.borrow_mut().dp, "show backends");
    assert!(shown.contains("pg pg-2 drained"), "{shown}");
    assert!(shown.contains("pg pg-3 drained"), "{shown}");
    assert!(shown.contains("pg pg-1 up"), "{shown}");
    // Mistakes are answered, and change nothing.
    let reply = admin::execute(&mut w.lb.borrow_mut().dp, "drain pg pg-9");
    assert!(reply.starts_with("error: pool `pg` has no backend `pg-9`"), "{reply}");

    // Until the undrain at 2 s only pg-1 takes new flows.
    w.net.run_until(t0 + Duration::from_millis(1990));
    let mid = flows_new(&w);
    assert_eq!(mid[1], before[1], "pg-2 got new flows while drained: {before:?} -> {mid:?}");
    assert_eq!(mid[2], 0, "pg-3 got new flows while drained: {mid:?}");
    assert!(mid[0] > before[0], "pg-1 took the new flows: {before:?} -> {mid:?}");
    assert!(w.admin_log.is_empty());

    // `[[sim.admin]]` undrains pg-3 at 2 s; it takes new flows again.
    let done = w.run(Duration::from_millis(100), Duration::from_secs(30), |_| {});
    assert!(done, "clients did not finish (seed {seed})");
    assert_eq!(w.admin_log.len(), 1);
    assert_eq!(w.admin_log[0].1, "undrain pg pg-3");
    assert_eq!(w.admin_log[0].2, "undrained pg/pg-3 (1 listeners)");
    assert_eq!((w.admin_log[0].0 - t0).total_millis(), 2000);
    let after = flows_new(&w);
    assert!(after[2] > 0, "pg-3 was undrained but got no flows: {after:?}");
    assert_eq!(after[1], before[1], "pg-2 stays drained: {after:?}");

    // Every stream, the ones in flight on pg-2 when it was drained among
    // them, came back byte-exact.
    let ClientHost::Bulk(c) = &w.clients[0] else { panic!("bulk client") };
    let c = c.borrow();
    assert_eq!(c.streams_failed, 0, "{c:?} (seed {seed})");
    assert_eq!(c.timeouts, 0, "{c:?}");
    assert_eq!(c.streams_ok, after.iter().sum::<u64>(), "{c:?} vs {after:?}");
}

#[test]
fn sim_admin_commands_are_checked_with_the_config() {
    let bad = CLIENTS.replace("undrain pg pg-3", "undrain pg nope");
    let demo = switchyard::config::DEMO_CONFIG;
    let head = &demo[..demo.find("[sim]").unwrap()];
    let src = format!("{head}[sim]\nseed = 1\nseconds = 1\n\n{bad}");
    let e = switchyard::config::Config::parse("t.toml", &src).unwrap_err().to_string();
    assert!(e.contains("sim.admin[0].command"), "{e}");
    assert!(e.contains("pool `pg` has no backend `nope`"), "{e}");
    let src =
        format!("{head}[sim]\nseed = 1\nseconds = 1\n\n{}", CLIENTS.replace("undrain", "reboot"));
    let e = switchyard::config::Config::parse("t.toml", &src).unwrap_err().to_string();
    assert!(e.contains("unknown command"), "{e}");
}
