//! L4 replay benchmark: a generated trace through the stack's classifier and the
//! L4 table in memory, on one core, as a NIC would hand it over (each frame is
//! copied into a pooled buffer first, like a DMA). Two phases, timed apart:
//!   1. new flows: one SYN for each of N distinct clients (table inserts);
//!   2. established: M data packets of 64 bytes (or `--size BYTES|imix`)
//!      spread at random over those N flows (lookups and rewrites in a table
//!      of N flows), read in order from a ring of 2^20 pre-built frames;
//!   3. churn: `--churn` packets in which flows keep arriving and ending
//!      (`--arrivals` % SYNs of new clients and as many % FINs, the rest data).
//!
//! Usage: `cargo run --release -p switchyard-bench --bin l4-replay -- [--flows N]
//! [--packets M] [--size BYTES|imix] [--churn K] [--arrivals PCT]
//! [--scheduler maglev]`. Instructions per packet: `bench/instructions.sh`.
//! Quote the figures as measured on the machine that printed them.

use std::time::Instant as WallClock;

use switchyard_l4::{L4, L4Config, Scheduler, Timeouts, Verdict};
use switchyard_nic::{BURST, Pool};
use switchyard_stack::wire::*;
use switchyard_stack::{Ingress, Instant, ListenerKind, Proto, Stack, StackConfig, TcpConfig};

const LB_MAC: [u8; 6] = [0x02, 0x53, 0x59, 0, 0, 2];
const VIP: [u8; 4] = [198, 18, 0, 10];

struct Args {
    flows: usize,
    packets: usize,
    size: Size,
    scheduler: Scheduler,
    churn: usize,
    arrivals: usize,
    prefetch: bool,
}

/// Packet sizes: fixed, or the simple IMIX (7 × 64, 4 × 576, 1 × 1500 bytes
/// of IP packet; Ethernet adds 14).
#[derive(Clone, Copy)]
enum Size {
    Fixed(usize),
    Imix,
}

impl Size {
    fn pick(self, rng: &mut Rng) -> usize {
        match self {
            Size::Fixed(n) => n,
            Size::Imix => match rng.below(12) {
                0..=6 => 64,
                7..=10 => 576 + ETH_LEN,
                _ => 1500 + ETH_LEN,
            },
        }
    }

    fn name(self) -> String {
        match self {
            Size::Fixed(n) => n.to_string(),
            Size::Imix => "IMIX (7:4:1 of 64, 590, 1514)".into(),
        }
    }
}

/// xorshift64, fixed seed: the same trace every run.
struct Rng(u64);

impl Rng {
    fn below(&mut self, n: usize) -> usize {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        (self.0 % n.max(1) as u64) as usize
    }
}

fn args() -> Result<Args, String> {
    let mut a = Args {
        flows: 1_000_000,
        packets: 10_000_000,
        size: Size::Fixed(64),
        scheduler: Scheduler::RoundRobin,
        churn: 1_000_000,
        arrivals: 5,
        prefetch: true,
    };
    let mut it = std::env::args().skip(1);
    while let Some(k) = it.next() {
        let v = it.next().ok_or(format!("{k} needs a value"))?;
        let num = || v.parse::<usize>().map_err(|_| format!("{k}: `{v}` is not a number"));
        match k.as_str() {
            "--flows" => a.flows = num()?,
            "--packets" => a.packets = num()?,
            "--size" if v == "imix" => a.size = Size::Imix,
            "--size" => a.size = Size::Fixed(num()?.clamp(64, 1514)),
            "--churn" => a.churn = num()?,
            "--arrivals" => a.arrivals = num()?.min(50),
            "--prefetch" => a.prefetch = v != "off",
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

/// What a phase works with.
struct Cx {
    stack: Stack,
    l4: L4,
    pool: Pool,
    now: Instant,
    burst: Vec<(switchyard_nic::Mbuf, switchyard_stack::PacketMeta, u16)>,
    prefetch: bool,
}

/// Frames through classifier and L4 as the worker moves them: copied into a
/// pooled buffer (the DMA), classified, forwarded. (forwarded, other).
fn push(cx: &mut Cx, frames: &mut dyn Iterator<Item = &Vec<u8>>) -> (u64, u64) {
    let (mut ok, mut other) = (0u64, 0u64);
    let Cx { stack, l4, pool, now, burst, prefetch } = cx;
    let now = *now;
    loop {
        // A burst as the NIC hands it over: classified first, then the table
        // lines of all its L4 packets requested, then each forwarded.
        let mut n = 0;
        for f in (&mut *frames).take(BURST) {
            n += 1;
            let mut m = pool.alloc();
            m.fill(f);
            match stack.ingress(now, m, pool) {
                Ingress::L4 { pkt, meta, listener } => burst.push((pkt, meta, listener)),
                Ingress::L4Return { pkt, .. } | Ingress::L4Icmp { pkt, .. } => {
                    other += 1;
                    pool.free(pkt);
                }
                Ingress::Done => other += 1,
            }
        }
        if n == 0 {
            return (ok, other);
        }
        if *prefetch {
            for stage in 0..2 {
                for (_, meta, listener) in burst.iter() {
                    l4.prefetch_client(meta, *listener, stage);
                }
            }
        }
        for (mut pkt, meta, listener) in burst.drain(..) {
            if l4.from_client(now, &mut pkt, &meta, listener) == Verdict::Forward {
                ok += 1;
            } else {
                other += 1;
            }
            pool.free(pkt);
        }
    }
}

// The phases are functions of their own so `bench/instructions.sh` can count
// each one's instructions under callgrind.
#[inline(never)]
fn phase_new_flows(cx: &mut Cx, syns: &[Vec<u8>]) -> (u64, u64) {
    // Distinct bodies, or the compiler folds identical phases into one symbol.
    std::hint::black_box("new flows");
    push(cx, &mut syns.iter())
}

#[inline(never)]
fn phase_established(cx: &mut Cx, ring: &[Vec<u8>], packets: usize) -> (u64, u64) {
    push(cx, &mut ring.iter().cycle().take(packets))
}

#[inline(never)]
fn phase_churn(cx: &mut Cx, frames: &[Vec<u8>]) -> (u64, u64) {
    std::hint::black_box("churn");
    push(cx, &mut frames.iter())
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
            worker: Default::default(),
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
    // Room for the flows the churn phase opens as well.
    let capacity = a.flows + a.churn * a.arrivals / 100 + 1024;
    let snat: Vec<std::net::IpAddr> = (0..capacity.div_ceil(per_addr))
        .map(|k| std::net::IpAddr::from([198, 19, (k >> 8) as u8, k as u8]))
        .collect();
    let listener = switchyard_bench::pg_listener(
        (1..=8).map(|b| std::net::SocketAddr::from(([198, 18, 1, b], 5432))),
        a.scheduler,
    );
    let l4 = match L4::new(L4Config {
        listeners: vec![listener],
        snat_addrs: snat,
        snat_ports: ports,
        table_capacity: capacity,
        timeouts: Timeouts::default(),
        hash_seed: 1,
        worker: Default::default(),
    }) {
        Ok(l) => l,
        Err(e) => {
            eprintln!("error: {e}");
            std::process::exit(2);
        }
    };
    let flows = a.flows;
    let mut cx = Cx {
        stack,
        l4,
        pool: Pool::with_count(2 * BURST),
        now: Instant::from_secs(1),
        burst: Vec::with_capacity(BURST),
        prefetch: a.prefetch,
    };

    let syns: Vec<Vec<u8>> = (0..flows).map(|i| frame(i, 0x02, 64)).collect();
    // The established phase reads its frames in order from a ring of 2^20
    // pre-built frames whose flows are drawn at random (xorshift, fixed seed):
    // frames stream in like DMA, while the table is hit at random.
    let ring = (1usize << 20).min(a.packets.max(1));
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    let data: Vec<Vec<u8>> =
        (0..ring).map(|_| frame(rng.below(flows), 0x18, a.size.pick(&mut rng))).collect();
    // The churn phase: flows keep arriving and ending among the established
    // ones. Per 100 packets: `--arrivals` SYNs of new clients, as many FINs
    // of open flows, the rest data on open flows.
    let churn_len = ring.min(a.churn.max(1));
    let mut next_client = flows;
    let churn: Vec<Vec<u8>> = (0..churn_len)
        .map(|_| {
            let r = rng.below(100);
            if r < a.arrivals {
                next_client += 1;
                frame(next_client - 1, 0x02, 64)
            } else if r < 2 * a.arrivals {
                frame(rng.below(flows), 0x11, 64)
            } else {
                frame(rng.below(flows), 0x18, a.size.pick(&mut rng))
            }
        })
        .collect();

    let t = WallClock::now();
    let (new_ok, new_bad) = phase_new_flows(&mut cx, &syns);
    let new_s = t.elapsed().as_secs_f64();
    let t = WallClock::now();
    let (est_ok, est_bad) = phase_established(&mut cx, &data, a.packets);
    let est_s = t.elapsed().as_secs_f64();
    let t = WallClock::now();
    let (churn_ok, churn_other) = phase_churn(&mut cx, &churn);
    let churn_s = t.elapsed().as_secs_f64();
    let l4 = cx.l4;

    println!(
        "l4-replay: {} flows, {} packets of {} bytes, scheduler {}",
        flows,
        a.packets,
        a.size.name(),
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
        "churn:       {} packets ({}% new flows, {}% FINs) in {:.3} s = {:.2} Mpps ({:.0} ns per packet), {churn_other} refused",
        churn_ok + churn_other,
        a.arrivals,
        a.arrivals,
        churn_s,
        (churn_ok + churn_other) as f64 / churn_s / 1e6,
        churn_s * 1e9 / (churn_ok + churn_other).max(1) as f64,
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
