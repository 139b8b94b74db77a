//! Writes a seeded pcap trace for replay benchmarks (see `switchyard_bench::trace`).
//!
//! `cargo run --release -p switchyard-bench --bin trace-gen -- OUT.pcap [--flows N]
//! [--concurrency C] [--udp PCT] [--rst PCT] [--imix] [--vip IP:PORT] [--seed S]
//! [--backends IP,IP]` (backends announce themselves by ARP first, so frames
//! the dataplane forwards to them leave instead of waiting for a neighbor)
//! then `switchyard replay OUT.pcap --config F`.

use switchyard_bench::trace::{TraceParams, generate, write_pcap};

fn main() {
    let mut p = TraceParams::default();
    let mut out = None;
    let mut it = std::env::args().skip(1);
    let fail = |m: String| -> ! {
        eprintln!("error: {m}");
        std::process::exit(2)
    };
    while let Some(a) = it.next() {
        let mut num = |k: &str| -> u64 {
            let v = it.next().unwrap_or_else(|| fail(format!("{k} needs a value")));
            v.parse().unwrap_or_else(|_| fail(format!("{k}: `{v}` is not a number")))
        };
        match a.as_str() {
            "--flows" => p.flows = num("--flows") as u32,
            "--concurrency" => p.concurrency = num("--concurrency").max(1) as u32,
            "--udp" => p.udp_percent = num("--udp").min(100) as u32,
            "--rst" => p.rst_percent = num("--rst").min(100) as u32,
            "--seed" => p.seed = num("--seed"),
            "--imix" => p.small = false,
            "--backends" => {
                let v = it.next().unwrap_or_else(|| fail("--backends needs IP,IP,...".into()));
                p.backends = v
                    .split(',')
                    .map(|b| {
                        b.parse().unwrap_or_else(|_| fail(format!("--backends: `{b}` is not IPv4")))
                    })
                    .collect();
            }
            "--vip" => {
                let v = it.next().unwrap_or_else(|| fail("--vip needs IP:PORT".into()));
                p.vip =
                    v.parse().unwrap_or_else(|_| fail(format!("--vip: `{v}` is not IPv4:PORT")));
            }
            s if !s.starts_with("--") && out.is_none() => out = Some(std::path::PathBuf::from(s)),
            s => fail(format!("unknown option {s}")),
        }
    }
    let out = out.unwrap_or_else(|| fail("give the output file: trace-gen OUT.pcap".into()));
    let (frames, sum) = generate(&p);
    if let Err(e) = write_pcap(&out, &frames) {
        fail(e);
    }
    println!(
        "{}: {} frames, {} TCP flows, {} UDP flows (seed {})",
        out.display(),
        sum.frames,
        sum.tcp_flows,
        sum.udp_flows,
        p.seed
    );
}
