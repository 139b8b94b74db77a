//! The `switchyard` command: `demo`, `run`, `check`.
#![forbid(unsafe_code)]

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use switchyard::config::Config;
use switchyard::run::{self, SimOptions};

/// The heap: mimalloc by default (feature `mimalloc`). Its thread-local
/// heaps and size-segregated pages keep each request's short-lived
/// allocations apart from long-lived connection state; with glibc's malloc
/// they interleave, and the cost per request grows with the connections
/// (`bench/L7-CONCURRENCY.md`). `--no-default-features` builds on glibc.
#[cfg(feature = "mimalloc")]
#[global_allocator]
static HEAP: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(name = "switchyard", version, about = "Userspace L4 + L7 load-balancing dataplane")]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Run the embedded demo: an L4 listener and an L7 listener with simulated
    /// clients and backends on the in-process network.
    Demo {
        /// Virtual seconds the clients send for.
        #[arg(long, default_value_t = 10)]
        seconds: u32,
        /// Seed of the simulated network (replays a run exactly).
        #[arg(long)]
        seed: Option<u64>,
        /// Run as fast as possible instead of pacing to the wall clock.
        #[arg(long)]
        fast: bool,
        /// Write every frame on the load balancer's link to this pcap file.
        #[arg(long)]
        pcap: Option<PathBuf>,
    },
    /// Run the dataplane from a configuration file.
    Run {
        /// The TOML configuration.
        #[arg(long, short)]
        config: PathBuf,
        /// With `nic = "sim"`: run as fast as possible instead of pacing.
        #[arg(long)]
        fast: bool,
        /// With `nic = "sim"`: write the load balancer's link to this pcap file.
        #[arg(long)]
        pcap: Option<PathBuf>,
        /// Serve operator commands (`drain POOL BACKEND`, `show backends`, ...)
        /// on this Unix socket.
        #[arg(long)]
        admin: Option<PathBuf>,
        /// With a TAP or AF_PACKET NIC: stop after this many seconds (else at
        /// SIGINT or SIGTERM).
        #[arg(long)]
        seconds: Option<u32>,
    },
    /// Replay a capture through the dataplane as fast as it goes (the
    /// configuration's NIC is replaced by the capture): Mpps, counters, drops.
    Replay {
        /// The capture (pcap or pcapng, Ethernet), e.g. from the trace-gen bench binary.
        trace: PathBuf,
        /// The TOML configuration.
        #[arg(long, short)]
        config: PathBuf,
        /// Write the frames the dataplane sent to this pcap file.
        #[arg(long)]
        out: Option<PathBuf>,
    },
    /// Validate a configuration file; exit 2 if it is invalid.
    Check {
        /// The TOML configuration.
        #[arg(long, short)]
        config: PathBuf,
    },
}

fn load(path: &std::path::Path) -> Result<Config, ExitCode> {
    Config::load(path).map_err(|e| {
        eprintln!("error: {e}");
        ExitCode::from(2)
    })
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.cmd {
        Cmd::Demo { seconds, seed, fast, pcap } => {
            let mut cfg = Config::demo();
            if let Some(sim) = cfg.sim.as_mut() {
                sim.seconds = seconds.max(1);
                if let Some(s) = seed {
                    sim.seed = s;
                }
            }
            run::sim(
                &cfg,
                &SimOptions { pace: !fast, pcap, title: "switchyard demo".into(), admin: None },
            )
        }
        Cmd::Run { config, fast, pcap, admin, seconds } => {
            let cfg = match load(&config) {
                Ok(c) => c,
                Err(code) => return code,
            };
            match cfg.device.nic {
                switchyard::config::NicSpec::Sim => run::sim(
                    &cfg,
                    &SimOptions {
                        pace: !fast,
                        pcap,
                        title: format!("switchyard {}", config.display()),
                        admin,
                    },
                ),
                switchyard::config::NicSpec::Pcap { .. } => run::pcap(&cfg),
                switchyard::config::NicSpec::Tap { .. }
                | switchyard::config::NicSpec::AfPacket { .. }
                | switchyard::config::NicSpec::AfXdp { .. }
                | switchyard::config::NicSpec::Dpdk { .. } => {
                    run::live(&cfg, &run::LiveOptions { seconds, admin })
                }
            }
        }
        Cmd::Replay { trace, config, out } => {
            let mut cfg = match load(&config) {
                Ok(c) => c,
                Err(code) => return code,
            };
            cfg.device.nic = switchyard::config::NicSpec::Pcap {
                input: trace.display().to_string(),
                output: out.map(|o| o.display().to_string()),
            };
            run::pcap(&cfg)
        }
        Cmd::Check { config } => match load(&config) {
            Ok(c) => {
                println!(
                    "{}: ok ({} listeners, {} pools, {} backends)",
                    config.display(),
                    c.listeners.len(),
                    c.pools.len(),
                    c.pools.iter().map(|p| p.backends.len()).sum::<usize>()
                );
                ExitCode::SUCCESS
            }
            Err(code) => code,
        },
    }
}
