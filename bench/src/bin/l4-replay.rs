//! L4 replay benchmark: a generated trace through the stack's classifier and the
//! L4 table in memory, on one core, as a NIC would hand it over (each frame is
//! copied into a pooled buffer first, like a DMA). Two phases, timed apart:
//!   1. new flows: one SYN for each of N distinct clients (table inserts);
//!   2. established: M data packets of 64 bytes (or `--size`) spread at random
//!      over those N flows (lookups and rewrites in a table of N flows), read
//!      in order from a ring of 2^20 pre-built frames.
//!
//! Usage: `cargo run --release -p switchyard-bench --bin l4-replay -- [--flows N]
//! [--packets M] [--size BYTES] [--scheduler maglev]`. Quote the figures as
//! measured on the machine that printed them.

use std::time::Instant as WallClock;

use switchyard_l4::{Backend, L4, L4Config, ListenerConfig, Scheduler, Timeouts, Verdict};
use switchyard_nic::Pool;
use switchyard_stack::wire::*;
use switchyard_stack::{Ingress, Instant, ListenerKind, Proto, Stack, StackConfig, TcpConfig};

const LB_MAC: [u8; 6] = [0x02, 0x53, 0x59, 0, 0, 2];
const VIP: [u8; 4] = [198, 18, 0, 10];

struct Args {
    flows: usize,
    packets: usize,
    size: usize,
    scheduler: Scheduler,
}

fn args() -> Result<Args, String> {
    let mut a =
        Args { flows: 1_000_000, packets: 10_000_000, size: 64, scheduler: Scheduler::RoundRobin };
    let mut it = std::env::args().skip(1);
    while let Some(k) = it.next() {
        let v = it.next().ok_or(format!("{k} needs a value"))?;
        let num = || v.parse::<usize>().map_err(|_| format!("{k}: `{v}` is not a number"));
        match k.as_str() {
            "--flows" => a.flows = num()?,
            "--packets" => a.packets = num()?,
            "--size" => a.size = num()?.clamp(64, 1514),
            "--scheduler" => {
                a.scheduler = Scheduler::ALL
                    .into_iter()
                    .find(|s| s.name() == v)
                    .ok_or(format!("--scheduler: `{v}` is not a scheduler"))?
            }
            _ => return Err(format!("unknown option {k}")),
        }
    }
    if a.flows == 0 || a.flows > 16_000_000 {
        return Err("--flows must be 1..=16000000".into());
    }
    Ok(a)
}

/// Client `i`: addresses in 198.18.0.0/15 beyond the first /24, distinct ports.
fn client(i: usize) -> ([u8; 4], u16) {
    let host = (i / 50_000) as u32 + 256;
    let ip = (198u32 << 24) | (18 << 16) | host;
    (ip.to_be_bytes(), 10_000 + (i % 50_000) as u16)
}

fn frame(i: usize, flags: u8, size: usize) -> Vec<u8> {
    let (ip, port) = client(i);
    let mut f = vec![0u8; size.max(ETH_LEN + 40)];
    let payload = f.len() - ETH_LEN - 40;
    put_eth(&mut f, LB_MAC, [2, 0, ip[0], ip[1], ip[2], ip[3]], ETHERTYPE_IPV4);
    put_ip_header(&mut f[ETH_LEN..], ip.into(), VIP.into(), IPPROTO_TCP, 20 + payload);
    let t = &mut f[ETH_LEN + 20..];
    put16(t, 0, port);
    put16(t, 2, 5432);
    put32(t, 4, 1);
    t[12] = 0x50;
    t[13] = flags;
    put16(t, 14, 65535);
    fix_l4_checksum(t, ip.into(), VIP.into(), IPPROTO_TCP, 16);
    f
}

fn main() {
    let a = match args() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("error: {e}");
            std::process::exit(2);
        }
    };
    let mut stack = Stack::new(
        StackConfig {
            mac: LB_MAC,
            addresses: vec![("198.18.0.2".parse().unwrap(), 15)],
            gateway: None,
            tcp: TcpConfig::default(),
        },
        1,
    );
    stack
        .add_listener("198.18.0.10:5432".parse().unwrap(), Proto::Tcp, ListenerKind::L4, 0)
        .unwrap();
    // One SNAT address gives the whole port range to its flows: use as many
    // addresses as the flows need.
    let ports = 1024..65535u16;
    let per_addr = ports.len();
    let snat: Vec<std::net::IpAddr> = (0..a.flows.div_ceil(per_addr))
        .map(|k| std::net::IpAddr::from([198, 19, (k >> 8) as u8, k as u8]))
        .collect();
    let listener = ListenerConfig {
        id: 0,
        name: "pg".into(),
        vip: "198.18.0.10:5432".parse().unwrap(),
        last_port: 0,
        proto: Proto::Tcp,
        backends: (1..=8)
            .map(|b| Backend {
                name: format!("pg-{b}"),
                addr: format!("198.18.1.{b}:5432").parse().unwrap(),
                weight: 1,
            })
            .collect(),
        scheduler: a.scheduler,
        forwarding: switchyard_l4::Forwarding::FullNat,
        on_backend_down: switchyard_l4::DownPolicy::Keep,
    };
    let mut l4 = match L4::new(L4Config {
        listeners: vec![listener],
        snat_addrs: snat,
        snat_ports: ports,
        table_capacity: a.flows,
        timeouts: Timeouts::default(),
        hash_seed: 1,
    }) {
        Ok(l) => l,
        Err(e) => {
            eprintln!("error: {e}");
            std::process::exit(2);
        }
    };
    let flows = a.flows;
    let mut pool = Pool::with_count(64);
    let now = Instant::from_secs(1);

    let syns: Vec<Vec<u8>> = (0..flows).map(|i| frame(i, 0x02, 64)).collect();
    // The established phase reads its frames in order from a ring of 2^20
    // pre-built frames whose flows are drawn at random (xorshift, fixed seed):
    // frames stream in like DMA, while the table is hit at random.
    let ring = (1usize << 20).min(a.packets.max(1));
    let mut x = 0x9e37_79b9_7f4a_7c15u64;
    let data: Vec<Vec<u8>> = (0..ring)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            frame((x % flows as u64) as usize, 0x18, a.size)
        })
        .collect();
    let mut run = |frames: &mut dyn Iterator<Item = &Vec<u8>>| -> (u64, u64) {
        let (mut ok, mut other) = (0u64, 0u64);
        for f in frames {
            let mut m = pool.alloc();
            m.fill(f);
            match stack.ingress(now, m, &mut pool) {
                Ingress::L4 { mut pkt, meta, listener } => {
                    if l4.from_client(now, &mut pkt, &meta, listener) == Verdict::Forward {
                        ok += 1;
                    } else {
                        other += 1;
                    }
                    pool.free(pkt);
                }
                Ingress::L4Return { pkt, .. } | Ingress::L4Icmp { pkt, .. } => {
                    other += 1;
                    pool.free(pkt);
                }
                Ingress::Done => other += 1,
            }
        }
        (ok, other)
    };

    let t = WallClock::now();
    let (new_ok, new_bad) = run(&mut syns.iter());
    let new_s = t.elapsed().as_secs_f64();
    let t = WallClock::now();
    let (est_ok, est_bad) = run(&mut data.iter().cycle().take(a.packets));
    let est_s = t.elapsed().as_secs_f64();

    println!(
        "l4-replay: {} flows, {} packets of {} bytes, scheduler {}",
        flows,
        a.packets,
        a.size,
        a.scheduler.name()
    );
    println!(
        "new flows:   {new_ok} in {:.3} s = {:.0} k new flows/s ({:.0} ns each){}",
        new_s,
        new_ok as f64 / new_s / 1e3,
        new_s * 1e9 / new_ok.max(1) as f64,
        if new_bad > 0 { format!(", {new_bad} not forwarded") } else { String::new() }
    );
    println!(
        "established: {est_ok} in {:.3} s = {:.2} Mpps ({:.0} ns per packet){}",
        est_s,
        est_ok as f64 / est_s / 1e6,
        est_s * 1e9 / est_ok.max(1) as f64,
        if est_bad > 0 { format!(", {est_bad} not forwarded") } else { String::new() }
    );
    println!(
        "table: {} flows, {} bytes per entry, {:.1} MiB",
        l4.table_len(),
        l4.bytes_per_entry(),
        l4.table_bytes() as f64 / (1 << 20) as f64
    );
    if new_bad + est_bad > 0 {
        std::process::exit(1);
    }
}
