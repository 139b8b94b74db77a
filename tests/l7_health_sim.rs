//! An L7 backend killed under load, on the simulated network: requests that
//! were on it or reach it before it is noticed are retried on the other backend
//! and every one succeeds; passive outlier detection ejects it at once, the
//! active HTTP check marks it down, and when the process is back the check
//! re-admits it and it serves again.

mod common;

use switchyard::worker::L7_POOL_TAG;
use switchyard::world::{BackendHost, ClientHost, World};
use switchyard_sim::Duration;
use switchyard_stack::health::{CheckConfig, HttpCheck};

fn config(seed: u64) -> switchyard::config::Config {
    // GETs only (idempotent: retried), paced by a 5 ms client link so the load
    // spans the whole kill and revival.
    let clients = r#"[[sim.client]]
name = "clients"
kind = "http"
listener = "web"
address = "198.18.0.101"
concurrency = 6
requests_per_connection = 25
paths = ["/api/users", "/api/orders/7"]
latency_us = 5000
"#;
    let mut cfg = common::config(seed, 7, clients);
    let api = cfg.pools.iter().position(|p| p.name == "api").expect("api pool");
    cfg.pools[api].health = Some(CheckConfig {
        interval: Duration::from_millis(200),
        timeout: Duration::from_millis(200),
        rise: 2,
        fall: 2,
    });
    cfg.pools[api].http_check = Some(HttpCheck::new("GET", "/healthz", "api", (200, 299)));
    cfg.pools[api].outlier = Some(switchyard_l7::Outlier {
        consecutive_failures: 3,
        ejection: Duration::from_millis(500),
    });
    cfg
}

/// Requests the load balancer relayed from each api backend.
fn relayed(w: &World, api: usize) -> Vec<u64> {
    w.lb.borrow().dp.l7.pool_stats()[api].backends.iter().map(|b| b.responses).collect()
}

#[test]
fn a_killed_backend_costs_no_request_and_is_readmitted() {
    let seed = common::seed(41);
    let cfg = config(seed);
    let api = cfg.pools.iter().position(|p| p.name == "api").unwrap();
    let tag = (L7_POOL_TAG | api as u16, 0);
    let mut w = World::build(&cfg).expect("world");
    let t0 = w.start;
    let BackendHost::Http(api1) = &w.backends[api][0] else { panic!("api-1 is an HTTP origin") };
    let api1 = api1.clone();

    w.net.run_until(t0 + Duration::from_millis(2000));
    let before = relayed(&w, api);
    assert!(before[0] > 20 && before[1] > 20, "both serve before the kill: {before:?}");
    api1.borrow_mut().killed = true;

    // Noticed: ejected by outlier detection, then down by the HTTP check.
    w.net.run_until(t0 + Duration::from_millis(3000));
    {
        let lb = w.lb.borrow();
        assert!(!lb.dp.l7.backend_up(api, 0), "api-1 still up (seed {seed})");
        assert!(lb.dp.l7.backend_up(api, 1));
        assert_eq!(lb.dp.health.stats(tag).unwrap().downs, 1);
        let b = &lb.dp.l7.pool_stats()[api].backends[0];
        assert!(b.ejections >= 1, "not ejected: {b:?} (seed {seed})");
        assert!(b.connect_failures >= 1, "{b:?}");
    }
    let dead = relayed(&w, api);
    w.net.run_until(t0 + Duration::from_millis(3500));
    let still_dead = relayed(&w, api);
    assert_eq!(still_dead[0], dead[0], "a down backend answered");
    assert!(still_dead[1] > dead[1], "the other backend carries the load");

    // The process is back: two good checks later it takes requests again.
    api1.borrow_mut().killed = false;
    let done = w.run(Duration::from_millis(100), Duration::from_secs(20), |_| {});
    assert!(done, "clients did not finish (seed {seed})");
    let lb = w.lb.borrow();
    assert!(lb.dp.l7.backend_up(api, 0), "api-1 not re-admitted (seed {seed})");
    assert_eq!(lb.dp.health.stats(tag).unwrap().ups, 1);
    drop(lb);
    let after = relayed(&w, api);
    assert!(after[0] > still_dead[0] + 20, "re-admitted api-1 serves: {after:?}");

    // Every request succeeded, byte-exact: the ones caught by the kill were
    // retried on api-2.
    let ClientHost::Http(st) = &w.clients[0] else { panic!("http client") };
    let st = st.borrow();
    assert!(st.responses_ok > 500, "{st:?}");
    assert_eq!((st.errors, st.bad_bodies, st.timeouts), (0, 0, 0), "{st:?} (seed {seed})");
    assert_eq!(st.responses_ok, st.requests, "{st:?}");
    let lb = w.lb.borrow();
    let l = lb.dp.l7.listener_stats(1).unwrap();
    assert!(l.retries >= 1, "nothing was retried: {l:?} (seed {seed})");
    assert_eq!(l.responses_5xx, 0, "{l:?}");
}
