//! The server's key exchange alone, as rustls's aws-lc-rs provider does it
//! in a TLS 1.3 handshake: `start_and_complete` on the client's key share
//! (X25519: a key pair and one agreement; ML-KEM-768: parsing the client's
//! encapsulation key and encapsulating to it; the hybrid: both). This is the
//! floor under what the post-quantum group adds to a handshake, which is
//! the provider's work, not ours; `tls-handshakes` measures whole handshakes
//! to set beside it.
//!
//! Each group runs `--ops N` exchanges (default 5000) in each of `--rounds R`
//! (default 3), the groups taking turns, after a warm-up; the median round is
//! printed. Client shares are made beforehand and used in turn, so the
//! client's work is not counted.
//!
//!   cargo run --release -p switchyard-bench --bin kx-costs [-- --ops N --rounds R]

use std::time::{Duration, Instant};

use rustls::crypto::SupportedKxGroup;
use rustls::crypto::aws_lc_rs::kx_group::{MLKEM768, X25519, X25519MLKEM768};

/// Client shares per group, used in turn.
const SHARES: usize = 16;

struct Group {
    name: &'static str,
    group: &'static dyn SupportedKxGroup,
    shares: Vec<Vec<u8>>,
}

/// Runs `n` server-side exchanges of `g`; returns the time they took, or
/// an error if the provider refused one.
fn run(g: &Group, n: usize) -> Result<Duration, rustls::Error> {
    let t = Instant::now();
    for i in 0..n {
        let done = g.group.start_and_complete(&g.shares[i % SHARES])?;
        std::hint::black_box(done.secret.secret_bytes());
    }
    Ok(t.elapsed())
}

/// What /proc/cpuinfo says of the CPU's PEXT, which ML-KEM's rejection
/// sampling in aws-lc runs once per 8 candidates: AMD's family 23 (Zen to
/// Zen 2) executes it in microcode, tens of cycles where others take three.
fn pext_note() -> Option<&'static str> {
    let info = std::fs::read_to_string("/proc/cpuinfo").ok()?;
    let field = |k: &str| {
        info.lines()
            .find(|l| l.split(':').next().map(str::trim) == Some(k))
            .and_then(|l| l.split(':').nth(1))
            .map(str::trim)
    };
    let amd = field("vendor_id") == Some("AuthenticAMD");
    let bmi2 = field("flags").is_some_and(|f| f.split(' ').any(|x| x == "bmi2"));
    (amd && bmi2 && field("cpu family") == Some("23"))
        .then_some("this CPU (AMD family 23) runs PEXT in microcode: ML-KEM's rejection sampling is slower here than on Intel or Zen 3 and later")
}

fn main() {
    let mut n = 5000usize;
    let mut rounds = 3usize;
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match (a.as_str(), args.next().and_then(|v| v.parse().ok())) {
            ("--ops", Some(v)) if v > 0 => n = v,
            ("--rounds", Some(v)) if v > 0 => rounds = v,
            _ => {
                eprintln!("usage: kx-costs [--ops N] [--rounds R]");
                std::process::exit(2);
            }
        }
    }
    let groups: Vec<Group> =
        [("x25519", X25519), ("mlkem768", MLKEM768), ("x25519mlkem768", X25519MLKEM768)]
            .into_iter()
            .map(|(name, group)| {
                let shares = (0..SHARES)
                    .map(|_| group.start().map(|kx| kx.pub_key().to_vec()))
                    .collect::<Result<_, _>>()
                    .unwrap_or_else(|e| panic!("{name}: no client share: {e:?}"));
                Group { name, group, shares }
            })
            .collect();
    let mut times: Vec<Vec<Duration>> = vec![Vec::new(); groups.len()];
    let measure = |g: &Group, n| run(g, n).unwrap_or_else(|e| panic!("{}: {e:?}", g.name));
    for g in &groups {
        measure(g, n / 10 + 1);
    }
    for _ in 0..rounds {
        for (g, t) in groups.iter().zip(&mut times) {
            t.push(measure(g, n));
        }
    }
    println!("server key exchanges per group: {}", n * rounds);
    let median = |t: &mut Vec<Duration>| {
        t.sort();
        t[t.len() / 2].as_secs_f64() * 1e6 / n as f64
    };
    let us: Vec<f64> = times.iter_mut().map(median).collect();
    for (g, u) in groups.iter().zip(&us) {
        println!(
            "{:<16} {:8.2} µs per exchange (median of {rounds} rounds of {n}), {:7.0} per CPU-second, {:.2}× x25519's time",
            g.name,
            u,
            1e6 / u,
            u / us[0]
        );
    }
    println!("the hybrid adds {:.2} µs to x25519's exchange", us[2] - us[0]);
    if let Some(note) = pext_note() {
        println!("{note}");
    }
}
