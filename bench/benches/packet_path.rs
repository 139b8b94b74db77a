//! Micro-benchmarks of the packet path: the Internet checksum, the stack's
//! classification of a frame for an L4 listener (parse, validate, look up), and
//! classification plus L4 forwarding of an established flow (table lookup and
//! full-NAT rewrite). Run with `cargo bench -p switchyard-bench`; compare
//! figures from one run only.

use std::hint::black_box;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use switchyard_nic::Pool;
use switchyard_stack::wire::*;
use switchyard_stack::{Ingress, Instant, ListenerKind, Proto, Stack, StackConfig, TcpConfig};

const LB_MAC: [u8; 6] = [0x02, 0x53, 0x59, 0, 0, 2];

/// An Ethernet + IPv4 + TCP frame with valid checksums and `payload` bytes.
fn tcp_frame(payload: usize, flags: u8) -> Vec<u8> {
    let (src, dst) = ([198, 18, 0, 101], [198, 18, 0, 10]);
    let mut f = vec![0u8; ETH_LEN + 20 + 20 + payload];
    put_eth(&mut f, LB_MAC, [2, 0, 198, 18, 0, 101], ETHERTYPE_IPV4);
    put_ip_header(&mut f[ETH_LEN..], src.into(), dst.into(), IPPROTO_TCP, 20 + payload);
    let t = &mut f[ETH_LEN + 20..];
    put16(t, 0, 40000);
    put16(t, 2, 5432);
    put32(t, 4, 1);
    t[12] = 0x50;
    t[13] = flags;
    put16(t, 14, 65535);
    for (i, b) in t[20..].iter_mut().enumerate() {
        *b = i as u8;
    }
    fix_l4_checksum(t, src.into(), dst.into(), IPPROTO_TCP, 16);
    f
}

fn checksum(c: &mut Criterion) {
    let data = vec![0xa5u8; 1500];
    let mut g = c.benchmark_group("checksum");
    g.throughput(Throughput::Bytes(data.len() as u64));
    g.bench_function("rfc1071_1500B", |b| b.iter(|| fold(sum(0, black_box(&data)))));
    g.finish();
}

fn classify(c: &mut Criterion) {
    let mut stack = Stack::new(
        StackConfig {
            mac: LB_MAC,
            addresses: vec![("198.18.0.2".parse().unwrap(), 24)],
            gateway: None,
            tcp: TcpConfig::default(),
            worker: Default::default(),
        },
        1,
    );
    stack
        .add_listener("198.18.0.10:5432".parse().unwrap(), Proto::Tcp, ListenerKind::L4, 0)
        .unwrap();
    let mut pool = Pool::with_count(64);
    let now = Instant::from_millis(0);
    let mut g = c.benchmark_group("classify");
    g.throughput(Throughput::Elements(1));
    for (name, size) in [("l4_tcp_64B", 10), ("l4_tcp_1500B", 1446)] {
        let frame = tcp_frame(size, 0x10);
        g.bench_function(name, |b| {
            b.iter(|| {
                let mut m = pool.alloc();
                m.fill(&frame);
                match stack.ingress(now, m, &mut pool) {
                    Ingress::L4 { pkt, meta, .. } => {
                        black_box(meta);
                        pool.free(pkt);
                    }
                    _ => panic!("frame not classified for L4"),
                }
            })
        });
    }
    g.finish();
}

fn l4_forward(c: &mut Criterion) {
    use switchyard_l4::{L4, L4Config, Scheduler, Timeouts, Verdict};
    let mut stack = Stack::new(
        StackConfig {
            mac: LB_MAC,
            addresses: vec![("198.18.0.2".parse().unwrap(), 24)],
            gateway: None,
            tcp: TcpConfig::default(),
            worker: Default::default(),
        },
        1,
    );
    stack
        .add_listener("198.18.0.10:5432".parse().unwrap(), Proto::Tcp, ListenerKind::L4, 0)
        .unwrap();
    let mut l4 = L4::new(L4Config {
        listeners: vec![switchyard_bench::pg_listener(
            (1..=3).map(|i| std::net::SocketAddr::from(([198, 18, 0, 20 + i], 5432))),
            Scheduler::RoundRobin,
        )],
        snat_addrs: vec!["198.18.0.2".parse().unwrap()],
        snat_ports: 40960..65535,
        table_capacity: 65536,
        timeouts: Timeouts::default(),
        hash_seed: 1,
        worker: Default::default(),
    })
    .unwrap();
    let mut pool = Pool::with_count(64);
    let now = Instant::from_millis(0);
    // Open the flow once with a SYN; then measure its data packets.
    let syn = tcp_frame(0, 0x02);
    let mut m = pool.alloc();
    m.fill(&syn);
    if let Ingress::L4 { mut pkt, meta, listener } = stack.ingress(now, m, &mut pool) {
        assert_eq!(l4.from_client(now, &mut pkt, &meta, listener), Verdict::Forward);
        pool.free(pkt);
    }
    let mut g = c.benchmark_group("l4");
    g.throughput(Throughput::Elements(1));
    for (name, size) in [("classify_and_forward_64B", 10), ("classify_and_forward_1500B", 1446)] {
        let frame = tcp_frame(size, 0x10);
        g.bench_function(name, |b| {
            b.iter(|| {
                let mut m = pool.alloc();
                m.fill(&frame);
                match stack.ingress(now, m, &mut pool) {
                    Ingress::L4 { mut pkt, meta, listener } => {
                        let v = l4.from_client(now, &mut pkt, &meta, listener);
                        assert_eq!(v, Verdict::Forward);
                        pool.free(pkt);
                    }
                    _ => panic!("frame not classified for L4"),
                }
            })
        });
    }
    g.finish();
}

criterion_group!(benches, checksum, classify, l4_forward);
criterion_main!(benches);
