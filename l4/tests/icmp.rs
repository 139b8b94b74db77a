//! ICMP errors relayed to the other side of their flow: the stack recognises an
//! error quoting a packet of an L4 flow, and L4 rewrites outer and quoted
//! headers so the receiver finds its own packet in the quote.

use std::net::{IpAddr, SocketAddr};

use switchyard_l4::*;
use switchyard_nic::{Mbuf, Pool};
use switchyard_stack::wire::*;
use switchyard_stack::*;

const LB_MAC: [u8; 6] = [0x02, 0x53, 0x59, 0, 0, 2];

fn sa(s: &str) -> SocketAddr {
    s.parse().unwrap()
}

fn tcp(src: SocketAddr, dst: SocketAddr, flags: u8) -> Vec<u8> {
    let (hdr, ethertype) = if src.is_ipv4() { (20, ETHERTYPE_IPV4) } else { (40, ETHERTYPE_IPV6) };
    let mut f = vec![0u8; ETH_LEN + hdr + 20];
    put_eth(&mut f, LB_MAC, [2, 0, 0, 0, 0, 1], ethertype);
    put_ip_header(&mut f[ETH_LEN..], src.ip(), dst.ip(), IPPROTO_TCP, 20);
    let t = &mut f[ETH_LEN + hdr..];
    put16(t, 0, src.port());
    put16(t, 2, dst.port());
    put32(t, 4, 7777);
    t[12] = 0x50;
    t[13] = flags;
    fix_l4_checksum(t, src.ip(), dst.ip(), IPPROTO_TCP, 16);
    f
}

/// An ICMP (or ICMPv6, by the family of `from`) error from `from` to `to`
/// quoting the IP packet of `quoted` (a frame): its header and 8 bytes more.
fn icmp_error(from: IpAddr, to: IpAddr, kind: [u8; 2], rest: [u8; 4], quoted: &[u8]) -> Vec<u8> {
    let (hdr, ethertype, proto) = if from.is_ipv4() {
        (20, ETHERTYPE_IPV4, IPPROTO_ICMP)
    } else {
        (40, ETHERTYPE_IPV6, IPPROTO_ICMPV6)
    };
    let mut msg = vec![kind[0], kind[1], 0, 0];
    msg.extend_from_slice(&rest);
    let qhdr = if quoted[ETH_LEN] >> 4 == 4 { 20 } else { 40 };
    msg.extend_from_slice(&quoted[ETH_LEN..ETH_LEN + qhdr + 8]);
    if from.is_ipv4() {
        let c = fold(sum(0, &msg));
        put16(&mut msg, 2, c);
    } else {
        fix_l4_checksum(&mut msg, from, to, IPPROTO_ICMPV6, 2);
    }
    let mut f = vec![0u8; ETH_LEN + hdr];
    put_eth(&mut f, LB_MAC, [2, 0, 0, 0, 0, 9], ethertype);
    put_ip_header(&mut f[ETH_LEN..], from, to, proto, msg.len());
    f.extend_from_slice(&msg);
    f
}

struct Lb {
    stack: Stack,
    l4: L4,
    pool: Pool,
    now: Instant,
}

impl Lb {
    fn new() -> Lb {
        Lb::with("198.18.0.2", 24, "198.18.0.10:5432", "198.18.0.21:5432")
    }

    fn with(addr: &str, prefix: u8, vip: &str, backend: &str) -> Lb {
        Lb::with_addresses(&[(addr, prefix)], vip, backend)
    }

    fn with_addresses(addrs: &[(&str, u8)], vip: &str, backend: &str) -> Lb {
        let addrs: Vec<(IpAddr, u8)> =
            addrs.iter().map(|(a, p)| (a.parse().unwrap(), *p)).collect();
        let mut stack = Stack::new(
            StackConfig {
                mac: LB_MAC,
                addresses: addrs.clone(),
                gateway: None,
                tcp: TcpConfig::default(),
                worker: Default::default(),
            },
            1,
        );
        stack.add_listener(sa(vip), Proto::Tcp, ListenerKind::L4, 0).unwrap();
        let l4 = L4::new(L4Config {
            listeners: vec![ListenerConfig {
                id: 0,
                name: "pg".into(),
                vip: sa(vip),
                last_port: 0,
                proto: Proto::Tcp,
                backends: vec![Backend { name: "pg-1".into(), addr: sa(backend), weight: 1 }],
                scheduler: Scheduler::RoundRobin,
                forwarding: Forwarding::FullNat,
                on_backend_down: DownPolicy::Keep,
            }],
            snat_addrs: addrs.iter().map(|a| a.0).collect(),
            snat_ports: 40960..65535,
            table_capacity: 64,
            timeouts: Timeouts::default(),
            hash_seed: 1,
            worker: Default::default(),
        })
        .unwrap();
        for (a, p, r) in l4.snat_reservations() {
            stack.reserve_l4_ports(a, p, r).unwrap();
        }
        Lb { stack, l4, pool: Pool::with_count(16), now: Instant::from_secs(1) }
    }

    /// One frame through classifier and L4, as the worker does; the IP packet
    /// L4 forwarded, if it did.
    fn input(&mut self, frame: &[u8]) -> Option<Vec<u8>> {
        let mut m: Mbuf = self.pool.alloc();
        m.fill(frame);
        let (v, pkt) = match self.stack.ingress(self.now, m, &mut self.pool) {
            Ingress::L4 { mut pkt, listener, meta } => {
                (self.l4.from_client(self.now, &mut pkt, &meta, listener), pkt)
            }
            Ingress::L4Return { mut pkt, meta } => {
                (self.l4.from_backend(self.now, &mut pkt, &meta), pkt)
            }
            Ingress::L4Icmp { mut pkt, err } => (self.l4.icmp_error(self.now, &mut pkt, &err), pkt),
            Ingress::Done => return None,
        };
        let out = (v == Verdict::Forward).then(|| pkt.data().to_vec());
        self.pool.free(pkt);
        out
    }
}

fn quoted(f: &[u8]) -> (SocketAddr, SocketAddr) {
    let ip = parse_ip(f, ETHERTYPE_IPV4).unwrap();
    let q = &f[ip.l4_offset + 8..];
    assert_eq!(fold(sum(0, &q[..20])), 0, "quoted IP header checksum");
    let src = SocketAddr::new(IpAddr::from([q[12], q[13], q[14], q[15]]), get16(q, 20));
    let dst = SocketAddr::new(IpAddr::from([q[16], q[17], q[18], q[19]]), get16(q, 22));
    (src, dst)
}

#[test]
fn fragmentation_needed_from_the_backend_side_reaches_the_client() {
    let mut lb = Lb::new();
    let client = sa("198.18.0.101:33000");
    let vip = sa("198.18.0.10:5432");
    let fwd = lb.input(&tcp(client, vip, 0x02)).expect("SYN forwarded");
    let ip = parse_ip(&fwd, ETHERTYPE_IPV4).unwrap();
    let m = parse_transport(&fwd, &ip, true).unwrap();
    assert_eq!(m.src, sa("198.18.0.2:40960"));
    // A router on the way to the backend cannot forward 1500 bytes: MTU 1400.
    let err =
        icmp_error("198.18.0.1".parse().unwrap(), m.src.ip(), [3, 4], [0, 0, 0x05, 0x78], &fwd);
    let out = lb.input(&err).expect("relayed");
    let oip = parse_ip(&out, ETHERTYPE_IPV4).expect("outer header valid");
    assert_eq!((oip.src, oip.dst), (vip.ip(), client.ip()));
    let msg = &out[oip.l4_offset..oip.end];
    assert_eq!(fold(sum(0, msg)), 0, "ICMP checksum");
    assert_eq!(&msg[..2], &[3, 4]);
    assert_eq!(get16(msg, 6), 1400, "next-hop MTU kept");
    assert_eq!(quoted(&out), (client, vip), "the client sees its own packet quoted");
    assert_eq!(lb.l4.counters().icmp_relayed, 1);

    // The other way: the client says the VIP's reply was unreachable.
    let reply = tcp(vip, client, 0x12);
    let err = icmp_error(client.ip(), vip.ip(), [3, 3], [0; 4], &reply);
    let out = lb.input(&err).expect("relayed");
    let oip = parse_ip(&out, ETHERTYPE_IPV4).unwrap();
    assert_eq!((oip.src, oip.dst), (m.src.ip(), m.dst.ip()));
    assert_eq!(quoted(&out), (m.dst, m.src), "the backend sees its own packet quoted");

    // An error about no flow of ours is dropped and counted.
    let stray = tcp(sa("198.18.0.2:50000"), sa("198.18.0.21:5432"), 0x02);
    let err = icmp_error(
        "198.18.0.1".parse().unwrap(),
        "198.18.0.2".parse().unwrap(),
        [3, 4],
        [0; 4],
        &stray,
    );
    assert!(lb.input(&err).is_none());
    assert_eq!(lb.l4.counters().dropped(L4Drop::UnknownFlow), 1);
    // An error quoting something that is not ours at all never reaches L4.
    let other = tcp(sa("198.18.0.77:1000"), sa("198.18.0.78:2000"), 0x02);
    let err = icmp_error(
        "198.18.0.1".parse().unwrap(),
        "198.18.0.2".parse().unwrap(),
        [3, 1],
        [0; 4],
        &other,
    );
    assert!(lb.input(&err).is_none());
    assert_eq!(lb.stack.counters().dropped(DropReason::IcmpIgnored), 1);
}

fn quoted6(f: &[u8]) -> (SocketAddr, SocketAddr) {
    let ip = parse_ip(f, ETHERTYPE_IPV6).unwrap();
    let q = &f[ip.l4_offset + 8..];
    let mut s = [0u8; 16];
    let mut d = [0u8; 16];
    s.copy_from_slice(&q[8..24]);
    d.copy_from_slice(&q[24..40]);
    (SocketAddr::new(IpAddr::from(s), get16(q, 40)), SocketAddr::new(IpAddr::from(d), get16(q, 42)))
}

#[test]
fn packet_too_big_over_ipv6_is_relayed_both_ways() {
    let mut lb = Lb::with("2001:2::2", 64, "[2001:2::10]:5432", "[2001:2::21]:5432");
    let client = sa("[2001:2::101]:33000");
    let vip = sa("[2001:2::10]:5432");
    let fwd = lb.input(&tcp(client, vip, 0x02)).expect("SYN forwarded");
    let ip = parse_ip(&fwd, ETHERTYPE_IPV6).unwrap();
    let m = parse_transport(&fwd, &ip, true).unwrap();
    assert_eq!(m.src.ip(), "2001:2::2".parse::<IpAddr>().unwrap());
    // Packet too big (type 2) from a router towards the backend: MTU 1280.
    let router: IpAddr = "2001:2::1".parse().unwrap();
    let err = icmp_error(router, m.src.ip(), [2, 0], [0, 0, 0x05, 0x00], &fwd);
    let out = lb.input(&err).expect("relayed");
    let oip = parse_ip(&out, ETHERTYPE_IPV6).expect("outer header valid");
    assert_eq!((oip.src, oip.dst), (vip.ip(), client.ip()));
    let msg = &out[oip.l4_offset..oip.end];
    assert_eq!(
        fold(sum(pseudo(oip.src, oip.dst, IPPROTO_ICMPV6, msg.len()), msg)),
        0,
        "ICMPv6 checksum over the new pseudo-header"
    );
    assert_eq!(&msg[..2], &[2, 0]);
    assert_eq!(get32(msg, 4), 1280, "MTU kept");
    assert_eq!(quoted6(&out), (client, vip), "the client sees its own packet quoted");
    assert_eq!(out[ETH_LEN + 7], 63, "hop limit decremented");

    // Destination unreachable from the client about the VIP's reply.
    let err = icmp_error(client.ip(), vip.ip(), [1, 4], [0; 4], &tcp(vip, client, 0x12));
    let out = lb.input(&err).expect("relayed");
    let oip = parse_ip(&out, ETHERTYPE_IPV6).unwrap();
    assert_eq!((oip.src, oip.dst), (m.src.ip(), m.dst.ip()));
    assert_eq!(quoted6(&out), (m.dst, m.src), "the backend sees its own packet quoted");
    assert_eq!(lb.l4.counters().icmp_relayed, 2);

    // Quoting a flow we do not have: dropped by L4, counted.
    let stray = tcp(sa("[2001:2::2]:50000"), m.dst, 0x02);
    assert!(lb.input(&icmp_error(router, m.src.ip(), [2, 0], [0; 4], &stray)).is_none());
    assert_eq!(lb.l4.counters().dropped(L4Drop::UnknownFlow), 1);
}

/// An ICMPv6 error quoting an IPv4 packet of a flow (or ICMPv4 quoting
/// IPv6) is about no flow of ours: ignored and counted. L4 used to rewrite
/// it as the quote's family, reading IPv4 fields out of the IPv6 header (a
/// flow label of 40 made it index past the message).
#[test]
fn an_icmp_error_quoting_the_other_family_is_ignored() {
    let mut lb = Lb::with_addresses(
        &[("198.18.0.2", 24), ("2001:2::2", 64)],
        "198.18.0.10:5432",
        "198.18.0.21:5432",
    );
    let (client, vip) = (sa("198.18.0.101:33000"), sa("198.18.0.10:5432"));
    lb.input(&tcp(client, vip, 0x02)).expect("SYN forwarded");
    let router: IpAddr = "2001:2::99".parse().unwrap();
    let lb6: IpAddr = "2001:2::2".parse().unwrap();
    for label in [0u16, 40, 41, 43, 0xffff] {
        let mut err = icmp_error(router, lb6, [1, 4], [0; 4], &tcp(vip, client, 0x12));
        err[ETH_LEN + 2..ETH_LEN + 4].copy_from_slice(&label.to_be_bytes());
        assert!(lb.input(&err).is_none(), "flow label {label}");
    }
    // ICMPv4 from the client's side quoting an IPv6 packet.
    let six = tcp(sa("[2001:2::10]:5432"), sa("[2001:2::101]:33000"), 0x12);
    assert!(lb.input(&icmp_error(client.ip(), vip.ip(), [3, 4], [0; 4], &six)).is_none());
    assert_eq!(lb.stack.counters().dropped(DropReason::IcmpIgnored), 6);
    assert_eq!(lb.l4.counters().icmp_relayed, 0);
}

/// Mutated ICMP errors, data packets and replies through classifier and L4:
/// counted or forwarded, never a panic, never a lost buffer.
#[test]
fn mutated_packets_through_classifier_and_l4_never_panic() {
    use rand::{Rng, SeedableRng};
    let seed = std::env::var("SIM_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or(3u64);
    println!("fuzz seed {seed} (SIM_SEED={seed} replays it)");
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
    let mut lb = Lb::new();
    let client = sa("198.18.0.101:33000");
    let vip = sa("198.18.0.10:5432");
    let fwd = lb.input(&tcp(client, vip, 0x02)).expect("SYN forwarded");
    let ip = parse_ip(&fwd, ETHERTYPE_IPV4).unwrap();
    let m = parse_transport(&fwd, &ip, true).unwrap();
    let seeds: Vec<Vec<u8>> = vec![
        icmp_error("198.18.0.1".parse().unwrap(), m.src.ip(), [3, 4], [0, 0, 5, 0x78], &fwd),
        icmp_error(client.ip(), vip.ip(), [3, 3], [0; 4], &tcp(vip, client, 0x12)),
        tcp(client, vip, 0x18),
        tcp(m.dst, m.src, 0x12),
    ];
    let before = lb.pool.stats().free;
    for i in 0..20_000 {
        let mut f = seeds[i % seeds.len()].clone();
        for _ in 0..rng.random_range(1..4) {
            let k = rng.random_range(0..f.len());
            f[k] = rng.random();
        }
        if rng.random_bool(0.2) {
            f.truncate(rng.random_range(0..=f.len()));
        }
        // Half of the time keep the checksums valid, so the mutation reaches L4.
        if rng.random_bool(0.5) && f.len() >= ETH_LEN + 20 && f[ETH_LEN] == 0x45 {
            fix_ipv4_checksum(&mut f[ETH_LEN..]);
            if let Ok(ip) = parse_ip(&f, ETHERTYPE_IPV4) {
                let (src, dst, end) = (ip.src, ip.dst, ip.end);
                let seg = &mut f[ip.l4_offset..end];
                match ip.proto {
                    IPPROTO_TCP if seg.len() >= 20 => {
                        fix_l4_checksum(seg, src, dst, IPPROTO_TCP, 16)
                    }
                    IPPROTO_ICMP if seg.len() >= 8 => {
                        put16(seg, 2, 0);
                        let c = fold(sum(0, seg));
                        put16(seg, 2, c);
                    }
                    _ => {}
                }
            }
        }
        let _ = lb.input(&f);
        let mut tx = Vec::new();
        lb.stack.take_tx(&mut tx);
        for m in tx {
            lb.pool.free(m);
        }
    }
    assert_eq!(lb.pool.stats().free, before, "every buffer came back");
    assert!(lb.l4.counters().icmp_relayed > 0, "some mutations still reached the relay");
}
