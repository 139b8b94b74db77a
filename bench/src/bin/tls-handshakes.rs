//! The server's cost of TLS 1.3 handshakes (ECDSA P-256 certificate), full
//! and resumed, with the classical X25519 group and the post-quantum hybrid
//! X25519MLKEM768: the work a crypto engine does per new connection.
//!
//! Each kind runs `--handshakes N` times (default 200) in each of `--rounds R`
//! (default 1), the kinds taking turns, after 20 of each to warm up;
//! the server's part of every round trip goes through a function of its own
//! (`flight_<kind>`), so `bash bench/instructions.sh tls` can count its
//! instructions under callgrind, which do not depend on the machine's load
//! the way times do. Times are printed too, for what they are worth here.
//!
//!   cargo run --release -p switchyard-bench --bin tls-handshakes [-- --handshakes N --rounds R --suite 128|256]
//!
//! `--suite` is the client's only cipher suite: TLS13_AES_128_GCM_SHA256
//! (128, the default, what a Switchyard listener picks first) or
//! TLS13_AES_256_GCM_SHA384 (256, what rustls and OpenSSL clients list first).

use std::sync::Arc;

use rustls::crypto::SupportedKxGroup;
use rustls::crypto::aws_lc_rs::kx_group::{X25519, X25519MLKEM768};
use switchyard_bench::tls::{client_config_with, handshake_with, server_flight, tls_configs};

// Each wrapper does something of its own (`black_box` of its number) so that
// the compiler does not fold the four into one symbol.
type Flight = fn(&mut rustls::ServerConnection, &[u8]) -> Vec<u8>;

#[inline(never)]
fn flight_full_x25519(s: &mut rustls::ServerConnection, input: &[u8]) -> Vec<u8> {
    std::hint::black_box(0);
    server_flight(s, input)
}

#[inline(never)]
fn flight_full_x25519mlkem768(s: &mut rustls::ServerConnection, input: &[u8]) -> Vec<u8> {
    std::hint::black_box(1);
    server_flight(s, input)
}

#[inline(never)]
fn flight_resumed_x25519(s: &mut rustls::ServerConnection, input: &[u8]) -> Vec<u8> {
    std::hint::black_box(2);
    server_flight(s, input)
}

#[inline(never)]
fn flight_resumed_x25519mlkem768(s: &mut rustls::ServerConnection, input: &[u8]) -> Vec<u8> {
    std::hint::black_box(3);
    server_flight(s, input)
}

struct Kind {
    name: &'static str,
    group: &'static dyn SupportedKxGroup,
    resumed: bool,
    flight: Flight,
}

const KINDS: [Kind; 4] = [
    Kind { name: "full_x25519", group: X25519, resumed: false, flight: flight_full_x25519 },
    Kind {
        name: "full_x25519mlkem768",
        group: X25519MLKEM768,
        resumed: false,
        flight: flight_full_x25519mlkem768,
    },
    Kind { name: "resumed_x25519", group: X25519, resumed: true, flight: flight_resumed_x25519 },
    Kind {
        name: "resumed_x25519mlkem768",
        group: X25519MLKEM768,
        resumed: true,
        flight: flight_resumed_x25519mlkem768,
    },
];

/// Runs `n` handshakes of `kind`; returns the server's time in them.
fn run(
    kind: &Kind,
    flight: Flight,
    n: usize,
    roots: &rustls::RootCertStore,
    server_cfg: &Arc<rustls::ServerConfig>,
    suite: rustls::SupportedCipherSuite,
) -> std::time::Duration {
    let mut client_cfg = client_config_with(roots, &[kind.group], &[suite]);
    if !kind.resumed {
        // A clone of a client configuration shares its session cache, so a
        // full handshake needs resumption switched off, not a fresh copy.
        Arc::make_mut(&mut client_cfg).resumption = rustls::client::Resumption::disabled();
    }
    let mut total = std::time::Duration::ZERO;
    for _ in 0..n {
        // A resumed handshake's client has in its cache the tickets of the
        // previous round.
        let (mut client, mut server, t) = handshake_with(&client_cfg, server_cfg, flight);
        total += t;
        let want =
            if kind.resumed { rustls::HandshakeKind::Resumed } else { rustls::HandshakeKind::Full };
        // The first resumed round of the warm-up has no ticket yet.
        if server.handshake_kind() != Some(want) && !(kind.resumed && total == t) {
            eprintln!("{}: handshake was {:?}", kind.name, server.handshake_kind());
            std::process::exit(1);
        }
        if kind.resumed {
            // Tickets the server wrote with its last flight reach the client.
            let mut buf = Vec::new();
            while server.wants_write() {
                server.write_tls(&mut buf).unwrap();
            }
            let _ = client.read_tls(&mut &buf[..]);
            let _ = client.process_new_packets();
        }
        let _ = client.process_new_packets();
    }
    total
}

fn main() {
    let mut n = 200usize;
    let mut rounds = 1usize;
    // The suite a Switchyard listener picks by default (its order puts
    // AES-128-GCM first).
    let mut suite = rustls::crypto::aws_lc_rs::cipher_suite::TLS13_AES_128_GCM_SHA256;
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match (a.as_str(), args.next().and_then(|v| v.parse().ok())) {
            ("--handshakes", Some(v)) if v > 0 => n = v,
            ("--rounds", Some(v)) if v > 0 => rounds = v,
            ("--suite", Some(128)) => {}
            ("--suite", Some(256)) => {
                suite = rustls::crypto::aws_lc_rs::cipher_suite::TLS13_AES_256_GCM_SHA384
            }
            _ => {
                eprintln!("usage: tls-handshakes [--handshakes N] [--rounds R] [--suite 128|256]");
                std::process::exit(2);
            }
        }
    }
    let (full_cfg, roots) = tls_configs();
    // A listener answers a ClientHello that offers a ticket with one new
    // ticket, not two (`switchyard_tls::Tls`); the same here.
    let mut resuming = (*full_cfg).clone();
    resuming.send_tls13_tickets = 1;
    let resuming_cfg = Arc::new(resuming);
    let cfg = |kind: &Kind| if kind.resumed { &resuming_cfg } else { &full_cfg };
    // Warm-up, not counted (it goes through `server_flight` itself); it
    // also leaves the resumed kinds' clients a ticket.
    for kind in &KINDS {
        run(kind, server_flight, 20, &roots, cfg(kind), suite);
    }
    // The kinds take turns, round after round, so that whatever else the
    // machine does falls on all of them alike; the median round is shown.
    let mut times: Vec<Vec<f64>> = vec![Vec::new(); KINDS.len()];
    for _ in 0..rounds {
        for (kind, t) in KINDS.iter().zip(&mut times) {
            let d = run(kind, kind.flight, n, &roots, cfg(kind), suite);
            t.push(d.as_secs_f64() * 1e6 / n as f64);
        }
    }
    println!("handshakes per kind: {} ({suite:?})", n * rounds);
    let median = |t: &mut Vec<f64>| {
        t.sort_by(f64::total_cmp);
        t[t.len() / 2]
    };
    let base = median(&mut times[0].clone());
    for (kind, t) in KINDS.iter().zip(&mut times) {
        let m = median(t);
        println!(
            "{:<24} server {:>7.1} µs per handshake (median of {rounds} rounds of {n}), {:>6.0} per CPU-second, {:.3}× full_x25519's time",
            kind.name,
            m,
            1e6 / m,
            m / base
        );
    }
}
