//! Shared pieces of the end-to-end tests: a configuration in the demo's shape
//! with the client section replaced, and a runner that prints the seed on failure.
#![allow(dead_code)]

use switchyard::config::Config;
use switchyard::report::Snapshot;
use switchyard::world::World;
use switchyard_sim::Duration;

/// The device, listeners and pools of the demo, with `clients` as the `[sim]`
/// client section and `seed` as the network's seed.
pub fn config(seed: u64, seconds: u32, clients: &str) -> Config {
    let demo = switchyard::config::DEMO_CONFIG;
    let head = &demo[..demo.find("[sim]").expect("demo config has a [sim] section")];
    let src =
        format!("{head}[sim]\nseed = {seed}\nseconds = {seconds}\nbody_size = 1024\n\n{clients}");
    match Config::parse("test.toml", &src) {
        Ok(c) => c,
        Err(e) => panic!("test config invalid: {e}"),
    }
}

/// The seed for a test: `SIM_SEED` if set, else `default`.
pub fn seed(default: u64) -> u64 {
    std::env::var("SIM_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or(default)
}

/// Runs a world until its clients finish (or `limit` of virtual time passes)
/// and returns the world and its final snapshot. Panics with the seed if the
/// clients did not finish.
pub fn run(cfg: &Config, limit_secs: u64) -> (World, Snapshot) {
    let seed = cfg.sim.as_ref().map(|s| s.seed).unwrap_or(0);
    let mut world = match World::build(cfg) {
        Ok(w) => w,
        Err(e) => panic!("world: {e}"),
    };
    let done = world.run(Duration::from_millis(100), Duration::from_secs(limit_secs), |_| {});
    let snap = Snapshot::take(&world);
    assert!(
        done,
        "clients did not finish (sim seed = {seed}; rerun with SIM_SEED={seed})\n{}",
        snap.summary()
    );
    (world, snap)
}
