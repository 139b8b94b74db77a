//! Seeded traffic traces for replay benchmarks: frames from many clients to
//! one VIP, as a load balancer's receive side would see them.
//!
//! Model: flows arrive as a Poisson process and up to `concurrency` are open
//! at once; flow sizes in packets follow a Pareto distribution (shape 1.2:
//! most flows are a few packets, a few are very long), packet sizes are 64 B
//! or the simple IMIX; TCP flows open with a SYN and end with a FIN or, for
//! `rst_percent` of them, a RST; `udp_percent` of the flows are UDP
//! request/response pairs to the same VIP port. The same parameters and seed
//! give the same bytes.

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use switchyard_stack::wire::*;

/// What to generate.
#[derive(Clone, Debug)]
pub struct TraceParams {
    /// Flows in all.
    pub flows: u32,
    /// Flows open at once, at most.
    pub concurrency: u32,
    /// Percent of flows that are UDP.
    pub udp_percent: u32,
    /// Percent of TCP flows that end with RST instead of FIN.
    pub rst_percent: u32,
    /// 64-byte frames only (`false`: IMIX 7:4:1 of 64, 590 and 1514 bytes).
    pub small: bool,
    /// The VIP and port.
    pub vip: std::net::SocketAddrV4,
    /// The load balancer's MAC (destination of every frame).
    pub lb_mac: [u8; 6],
    /// Seed.
    pub seed: u64,
    /// Backends that announce themselves first (an ARP reply each, to the
    /// load balancer), so the replayed dataplane can send to them.
    pub backends: Vec<std::net::Ipv4Addr>,
}

impl Default for TraceParams {
    fn default() -> Self {
        TraceParams {
            flows: 100_000,
            concurrency: 10_000,
            udp_percent: 10,
            rst_percent: 5,
            small: true,
            vip: "198.18.0.10:5432".parse().unwrap(),
            lb_mac: [0x02, 0x53, 0x59, 0, 0, 2],
            seed: 1,
            backends: Vec::new(),
        }
    }
}

/// One frame with its timestamp (microseconds from the start).
pub struct TraceFrame {
    /// When it arrives.
    pub micros: u64,
    /// Ethernet frame.
    pub frame: Vec<u8>,
}

/// What a trace holds, for checking a replay against it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TraceSummary {
    /// TCP flows (each opens with one SYN).
    pub tcp_flows: u32,
    /// UDP flows.
    pub udp_flows: u32,
    /// Frames in all.
    pub frames: u64,
}

struct Open {
    client: ([u8; 4], u16),
    udp: bool,
    left: u32,
    rst: bool,
    seq: u32,
}

/// Generates a trace.
pub fn generate(p: &TraceParams) -> (Vec<TraceFrame>, TraceSummary) {
    let mut rng = ChaCha8Rng::seed_from_u64(p.seed);
    let mut out = Vec::new();
    let mut sum = TraceSummary::default();
    let mut open: Vec<Open> = Vec::new();
    let mut started = 0u32;
    let mut now = 0u64;
    for (k, b) in p.backends.iter().enumerate() {
        let mut f = vec![0u8; 60];
        let mac = [2, 0xbe, 0, 0, 0, k as u8 + 1];
        put_eth(&mut f, p.lb_mac, mac, 0x0806);
        f[14..22].copy_from_slice(&[0, 1, 8, 0, 6, 4, 0, 2]);
        f[22..28].copy_from_slice(&mac);
        f[28..32].copy_from_slice(&b.octets());
        f[32..38].copy_from_slice(&p.lb_mac);
        out.push(TraceFrame { micros: 0, frame: f });
    }
    while started < p.flows || !open.is_empty() {
        // New flows while there is room (arrivals ~ every 2 µs on average).
        if started < p.flows && (open.len() as u32) < p.concurrency && rng.random_bool(0.5) {
            let i = started;
            started += 1;
            // Clients across 198.18.0.0/15 beyond the first /24, distinct ports.
            let host = 256 + i / 40_000;
            let ip = ((198u32 << 24) | (18 << 16) | host).to_be_bytes();
            let port = 1024 + (i % 40_000) as u16;
            let udp = rng.random_range(0..100) < p.udp_percent;
            // Pareto(1.2) packets per flow, at least 1 (UDP: request/response pairs).
            let u: f64 = rng.random_range(f64::EPSILON..1.0);
            let len = (u.powf(-1.0 / 1.2)).min(10_000.0) as u32;
            let rst = rng.random_range(0..100) < p.rst_percent;
            if udp {
                sum.udp_flows += 1;
            } else {
                sum.tcp_flows += 1;
                out.push(TraceFrame {
                    micros: now,
                    frame: frame(p, (ip, port), false, 0x02, 0, 64),
                });
            }
            open.push(Open { client: (ip, port), udp, left: len, rst, seq: 1 });
        }
        if !open.is_empty() {
            let k = rng.random_range(0..open.len());
            let size = if p.small {
                64
            } else {
                match rng.random_range(0..12) {
                    0..=6 => 64,
                    7..=10 => 590,
                    _ => 1514,
                }
            };
            let f = &mut open[k];
            if f.left == 0 {
                if !f.udp {
                    let flags = if f.rst { 0x04 } else { 0x11 };
                    out.push(TraceFrame {
                        micros: now,
                        frame: frame(p, f.client, false, flags, f.seq, 64),
                    });
                }
                open.swap_remove(k);
            } else {
                f.left -= 1;
                let seq = f.seq;
                f.seq = f.seq.wrapping_add(size as u32);
                out.push(TraceFrame {
                    micros: now,
                    frame: frame(p, f.client, f.udp, 0x18, seq, size),
                });
            }
        }
        now += 1;
    }
    sum.frames = out.len() as u64;
    (out, sum)
}

/// A client's frame to the VIP: TCP with `flags` and sequence `seq`, or UDP.
fn frame(
    p: &TraceParams,
    client: ([u8; 4], u16),
    udp: bool,
    flags: u8,
    seq: u32,
    size: usize,
) -> Vec<u8> {
    let (ip, port) = client;
    let vip = *p.vip.ip();
    let l4 = if udp { 8 } else { 20 };
    let len = size.max(ETH_LEN + 20 + l4);
    let mut f = vec![0u8; len];
    let payload = len - ETH_LEN - 20 - l4;
    put_eth(&mut f, p.lb_mac, [2, 0, ip[0], ip[1], ip[2], ip[3]], ETHERTYPE_IPV4);
    let proto = if udp { IPPROTO_UDP } else { IPPROTO_TCP };
    put_ip_header(&mut f[ETH_LEN..], ip.into(), vip.into(), proto, l4 + payload);
    let t = &mut f[ETH_LEN + 20..];
    put16(t, 0, port);
    put16(t, 2, p.vip.port());
    if udp {
        put16(t, 4, (l4 + payload) as u16);
        fix_l4_checksum(t, ip.into(), vip.into(), IPPROTO_UDP, 6);
    } else {
        put32(t, 4, seq);
        put32(t, 8, if flags == 0x02 { 0 } else { 1 });
        t[12] = 0x50;
        t[13] = flags | if flags == 0x02 { 0 } else { 0x10 };
        put16(t, 14, 65535);
        fix_l4_checksum(t, ip.into(), vip.into(), IPPROTO_TCP, 16);
    }
    f
}

/// Writes a trace as a pcap file (Ethernet, microsecond timestamps).
pub fn write_pcap(path: &std::path::Path, frames: &[TraceFrame]) -> Result<(), String> {
    let mut w = switchyard_nic::pcap::create_writer(path).map_err(|e| e.to_string())?;
    for f in frames {
        let pkt = pcap_file::pcap::PcapPacket::new(
            std::time::Duration::from_micros(f.micros),
            f.frame.len() as u32,
            &f.frame,
        );
        w.write_packet(&pkt).map_err(|e| format!("{}: {e}", path.display()))?;
    }
    Ok(())
}
