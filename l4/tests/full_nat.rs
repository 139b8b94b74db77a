//! Full-NAT through the L4 table on hand-built IPv4 and IPv6 packets: addresses
//! and ports rewritten both ways, checksums that verify from scratch, exact
//! round-robin, a full table, expiry, and refused openings.

use std::net::{IpAddr, SocketAddr};

use switchyard_l4::*;
use switchyard_nic::{Mbuf, Pool};
use switchyard_stack::wire::*;
use switchyard_stack::{Duration, Instant, PacketMeta, Proto, tcp_flags};

const SNAT4: &str = "198.18.0.2";
const SNAT6: &str = "2001:2::2";

fn cfg(capacity: usize) -> L4Config {
    let backends = |addrs: &[&str]| {
        addrs
            .iter()
            .enumerate()
            .map(|(i, a)| Backend { name: format!("b{i}"), addr: a.parse().unwrap(), weight: 1 })
            .collect()
    };
    L4Config {
        listeners: vec![
            ListenerConfig {
                id: 0,
                name: "pg".into(),
                vip: "198.18.0.10:5432".parse().unwrap(),
                last_port: 0,
                proto: Proto::Tcp,
                backends: backends(&["198.18.0.21:5432", "198.18.0.22:5432", "198.18.0.23:5432"]),
                scheduler: Scheduler::RoundRobin,
                forwarding: Forwarding::FullNat,
                on_backend_down: DownPolicy::Keep,
            },
            ListenerConfig {
                id: 1,
                name: "pg6".into(),
                vip: "[2001:2::10]:5432".parse().unwrap(),
                last_port: 0,
                proto: Proto::Tcp,
                backends: backends(&["[2001:2::21]:5432"]),
                scheduler: Scheduler::RoundRobin,
                forwarding: Forwarding::FullNat,
                on_backend_down: DownPolicy::Keep,
            },
            ListenerConfig {
                id: 2,
                name: "dns".into(),
                vip: "198.18.0.10:53".parse().unwrap(),
                last_port: 0,
                proto: Proto::Udp,
                backends: backends(&["198.18.0.31:53"]),
                scheduler: Scheduler::RoundRobin,
                forwarding: Forwarding::FullNat,
                on_backend_down: DownPolicy::Keep,
            },
        ],
        snat_addrs: vec![SNAT4.parse().unwrap(), SNAT6.parse().unwrap()],
        snat_ports: 40960..40970,
        table_capacity: capacity,
        timeouts: Timeouts::default(),
        hash_seed: 1,
        worker: Default::default(),
    }
}

/// A frame with valid checksums; `proto` TCP (with `flags`) or UDP.
fn packet(src: SocketAddr, dst: SocketAddr, proto: Proto, flags: u8, payload: &[u8]) -> Vec<u8> {
    let hdr = if src.is_ipv4() { 20 } else { 40 };
    let l4len = if proto == Proto::Tcp { 20 } else { 8 } + payload.len();
    let mut f = vec![0u8; ETH_LEN + hdr + l4len];
    let et = if src.is_ipv4() { ETHERTYPE_IPV4 } else { ETHERTYPE_IPV6 };
    put_eth(&mut f, [2, 0, 0, 0, 0, 2], [2, 0, 0, 0, 0, 1], et);
    let pnum = if proto == Proto::Tcp { IPPROTO_TCP } else { IPPROTO_UDP };
    put_ip_header(&mut f[ETH_LEN..], src.ip(), dst.ip(), pnum, l4len);
    let t = &mut f[ETH_LEN + hdr..];
    put16(t, 0, src.port());
    put16(t, 2, dst.port());
    if proto == Proto::Tcp {
        put32(t, 4, 1000);
        t[12] = 0x50;
        t[13] = flags;
        put16(t, 14, 65535);
        t[20..].copy_from_slice(payload);
        fix_l4_checksum(t, src.ip(), dst.ip(), pnum, 16);
    } else {
        put16(t, 4, l4len as u16);
        t[8..].copy_from_slice(payload);
        fix_l4_checksum(t, src.ip(), dst.ip(), pnum, 6);
    }
    f
}

/// Parses a frame as the stack would, verifying every checksum from scratch.
fn meta(f: &[u8]) -> PacketMeta {
    let et = get16(f, 12);
    let ip = parse_ip(f, et).expect("IP header and checksum");
    parse_transport(f, &ip, true).expect("transport header and checksum")
}

struct T {
    l4: L4,
    pool: Pool,
    now: Instant,
}

impl T {
    fn new(capacity: usize) -> T {
        T {
            l4: L4::new(cfg(capacity)).unwrap(),
            pool: Pool::with_count(16),
            now: Instant::from_secs(1),
        }
    }

    fn client(&mut self, f: &[u8], listener: u16) -> (Verdict, Vec<u8>) {
        let mut m: Mbuf = self.pool.alloc();
        assert!(m.fill(f));
        let v = self.l4.from_client(self.now, &mut m, &meta(f), listener);
        let out = m.data().to_vec();
        self.pool.free(m);
        (v, out)
    }

    fn backend(&mut self, f: &[u8]) -> (Verdict, Vec<u8>) {
        let mut m: Mbuf = self.pool.alloc();
        assert!(m.fill(f));
        let v = self.l4.from_backend(self.now, &mut m, &meta(f));
        let out = m.data().to_vec();
        self.pool.free(m);
        (v, out)
    }
}

fn sa(s: &str) -> SocketAddr {
    s.parse().unwrap()
}

#[test]
fn full_nat_rewrites_both_ways_with_valid_checksums_v4() {
    let mut t = T::new(64);
    let client = sa("198.18.0.101:33000");
    let vip = sa("198.18.0.10:5432");
    let syn = packet(client, vip, Proto::Tcp, tcp_flags::SYN, b"");
    let (v, out) = t.client(&syn, 0);
    assert_eq!(v, Verdict::Forward);
    let m = meta(&out); // checksums verified here
    assert_eq!(m.src, sa("198.18.0.2:40960"));
    assert_eq!(m.dst, sa("198.18.0.21:5432"));
    assert_eq!(out[ETH_LEN + 8], 63, "TTL spent");
    assert_eq!(&out[ETH_LEN + 40..], &syn[ETH_LEN + 40..], "TCP beyond the ports untouched");

    let synack = packet(m.dst, m.src, Proto::Tcp, tcp_flags::SYN | tcp_flags::ACK, b"");
    let (v, back) = t.backend(&synack);
    assert_eq!(v, Verdict::Forward);
    let r = meta(&back);
    assert_eq!(r.src, vip);
    assert_eq!(r.dst, client);

    let data = packet(client, vip, Proto::Tcp, tcp_flags::ACK | tcp_flags::PSH, b"SELECT 1;");
    let (v, out) = t.client(&data, 0);
    assert_eq!(v, Verdict::Forward);
    assert_eq!(meta(&out).dst, sa("198.18.0.21:5432"), "same flow, same backend");
    assert!(out.ends_with(b"SELECT 1;"));
    let st = t.l4.listener_stats(0).unwrap();
    assert_eq!((st.flows_new, st.flows_active, st.packets_in, st.packets_out), (1, 1, 2, 1));

    // A FIN makes the flow inactive, but it stays in the table for the last ACKs.
    let fin = packet(client, vip, Proto::Tcp, tcp_flags::FIN | tcp_flags::ACK, b"");
    assert_eq!(t.client(&fin, 0).0, Verdict::Forward);
    assert_eq!(t.l4.listener_stats(0).unwrap().flows_active, 0);
    assert_eq!(t.l4.backend_stats(0)[0].flows_active, 0);
    assert_eq!(t.l4.table_len(), 1);
    let last_ack = packet(m.dst, m.src, Proto::Tcp, tcp_flags::ACK, b"");
    assert_eq!(t.backend(&last_ack).0, Verdict::Forward);
    t.now += Duration::from_secs(11);
    t.l4.expire(t.now);
    assert_eq!(t.l4.table_len(), 0);
    assert_eq!(t.l4.listener_stats(0).unwrap().flows_active, 0);
}

#[test]
fn full_nat_v6_and_udp() {
    let mut t = T::new(64);
    let client = sa("[2001:2::101]:33000");
    let (v, out) =
        t.client(&packet(client, sa("[2001:2::10]:5432"), Proto::Tcp, tcp_flags::SYN, b""), 1);
    assert_eq!(v, Verdict::Forward);
    let m = meta(&out);
    assert_eq!(m.src, sa("[2001:2::2]:40960"));
    assert_eq!(m.dst, sa("[2001:2::21]:5432"));
    let (v, back) =
        t.backend(&packet(m.dst, m.src, Proto::Tcp, tcp_flags::SYN | tcp_flags::ACK, b""));
    assert_eq!(v, Verdict::Forward);
    assert_eq!(meta(&back).dst, client);

    let uclient = sa("198.18.0.101:5353");
    let (v, out) = t.client(&packet(uclient, sa("198.18.0.10:53"), Proto::Udp, 0, b"query"), 2);
    assert_eq!(v, Verdict::Forward);
    let m = meta(&out);
    assert_eq!(m.dst, sa("198.18.0.31:53"));
    let (v, back) = t.backend(&packet(m.dst, m.src, Proto::Udp, 0, b"answer"));
    assert_eq!(v, Verdict::Forward);
    let r = meta(&back);
    assert_eq!((r.src, r.dst), (sa("198.18.0.10:53"), uclient));
    assert!(back.ends_with(b"answer"));
}

#[test]
fn round_robin_is_exact() {
    let mut t = T::new(64);
    for i in 0..9u16 {
        let syn = packet(
            SocketAddr::new(IpAddr::from([198, 18, 1, 1]), 1000 + i),
            sa("198.18.0.10:5432"),
            Proto::Tcp,
            tcp_flags::SYN,
            b"",
        );
        assert_eq!(t.client(&syn, 0).0, Verdict::Forward);
    }
    let per: Vec<u64> = t.l4.backend_stats(0).iter().map(|b| b.flows_new).collect();
    assert_eq!(per, vec![3, 3, 3]);
}

#[test]
fn a_full_table_refuses_new_flows_and_keeps_serving_established_ones() {
    let mut t = T::new(2);
    let vip = sa("198.18.0.10:5432");
    let a = sa("198.18.0.101:1");
    let b = sa("198.18.0.101:2");
    assert_eq!(t.client(&packet(a, vip, Proto::Tcp, tcp_flags::SYN, b""), 0).0, Verdict::Forward);
    assert_eq!(t.client(&packet(b, vip, Proto::Tcp, tcp_flags::SYN, b""), 0).0, Verdict::Forward);
    let c = packet(sa("198.18.0.101:3"), vip, Proto::Tcp, tcp_flags::SYN, b"");
    assert_eq!(t.client(&c, 0).0, Verdict::Reject(L4Drop::TableFull));
    assert_eq!(t.l4.listener_stats(0).unwrap().refused(L4Drop::TableFull), 1);
    assert_eq!(t.l4.counters().dropped(L4Drop::TableFull), 1);
    assert_eq!(t.client(&packet(a, vip, Proto::Tcp, tcp_flags::ACK, b"x"), 0).0, Verdict::Forward);
}

#[test]
fn idle_flows_expire_and_free_their_snat_ports() {
    let mut t = T::new(64);
    let vip = sa("198.18.0.10:5432");
    // Ten SNAT ports: ten flows use them all, the eleventh is refused.
    for i in 0..10 {
        let syn = packet(
            SocketAddr::new(IpAddr::from([198, 18, 1, 1]), 2000 + i),
            vip,
            Proto::Tcp,
            tcp_flags::SYN,
            b"",
        );
        assert_eq!(t.client(&syn, 0).0, Verdict::Forward);
    }
    let late = packet(sa("198.18.1.1:3000"), vip, Proto::Tcp, tcp_flags::SYN, b"");
    assert_eq!(t.client(&late, 0).0, Verdict::Reject(L4Drop::NoSnatPort));
    // Not yet: SYN timeout is 10 s.
    t.now += Duration::from_secs(5);
    t.l4.expire(t.now);
    assert_eq!(t.l4.table_len(), 10);
    t.now += Duration::from_secs(6);
    t.l4.expire(t.now);
    assert_eq!(t.l4.table_len(), 0);
    assert_eq!(t.l4.listener_stats(0).unwrap().flows_active, 0);
    assert_eq!(t.l4.next_expiry(), None);
    assert_eq!(t.client(&late, 0).0, Verdict::Forward, "ports came back");
}

#[test]
fn only_a_syn_opens_a_flow_and_unknown_replies_are_refused() {
    let mut t = T::new(64);
    let vip = sa("198.18.0.10:5432");
    let ack = packet(sa("198.18.0.101:1"), vip, Proto::Tcp, tcp_flags::ACK, b"");
    assert_eq!(t.client(&ack, 0).0, Verdict::Reject(L4Drop::NotSyn));
    let rst = packet(sa("198.18.0.101:1"), vip, Proto::Tcp, tcp_flags::RST, b"");
    assert_eq!(t.client(&rst, 0).0, Verdict::Drop(L4Drop::UnknownFlow));
    let stray =
        packet(sa("198.18.0.21:5432"), sa("198.18.0.2:40999"), Proto::Tcp, tcp_flags::ACK, b"");
    assert_eq!(t.backend(&stray).0, Verdict::Reject(L4Drop::UnknownFlow));
    assert_eq!(t.l4.table_len(), 0);
    // Refusals are counted per listener by reason: the ACK tried to open a flow.
    let st = t.l4.listener_stats(0).unwrap();
    assert_eq!((st.refused(L4Drop::NotSyn), st.flows_refused()), (1, 1));
    // With every backend down, a SYN is refused for want of a backend.
    for b in 0..3 {
        t.l4.set_backend_up(0, b, false);
    }
    let syn = packet(sa("198.18.0.101:2"), vip, Proto::Tcp, tcp_flags::SYN, b"");
    assert_eq!(t.client(&syn, 0).0, Verdict::Reject(L4Drop::NoBackend));
    let st = t.l4.listener_stats(0).unwrap();
    assert_eq!((st.refused(L4Drop::NoBackend), st.flows_refused()), (1, 2));
}

#[test]
fn bad_configurations_are_refused() {
    let mut c = cfg(8);
    c.listeners[0].backends.clear();
    assert_eq!(L4::new(c).err(), Some(L4Error::EmptyPool("pg".into())));
    let mut c = cfg(8);
    c.snat_addrs.retain(|a| a.is_ipv4());
    assert_eq!(L4::new(c).err(), Some(L4Error::NoSnatAddress("pg6".into())));
    assert_eq!(L4::new(cfg(0)).err(), Some(L4Error::NoCapacity));
}

#[test]
fn a_syn_flood_fills_at_most_the_table_and_established_flows_carry_on() {
    let mut c = cfg(1000);
    c.snat_ports = 20000..60000;
    let mut t =
        T { l4: L4::new(c).unwrap(), pool: Pool::with_count(16), now: Instant::from_secs(1) };
    let vip = sa("198.18.0.10:5432");
    let client = sa("198.18.0.101:40000");
    assert_eq!(
        t.client(&packet(client, vip, Proto::Tcp, tcp_flags::SYN, b""), 0).0,
        Verdict::Forward
    );
    assert_eq!(
        t.client(&packet(client, vip, Proto::Tcp, tcp_flags::ACK, b"hello"), 0).0,
        Verdict::Forward
    );
    // 5,000 SYNs from spoofed sources: the table takes what fits, the rest are
    // refused and counted, and nothing else grows.
    let bytes = t.l4.table_bytes();
    let mut refused = 0;
    for i in 0..5000u32 {
        let src = SocketAddr::new(
            IpAddr::from([198, 19, (i >> 8) as u8, i as u8]),
            1024 + (i % 60000) as u16,
        );
        match t.client(&packet(src, vip, Proto::Tcp, tcp_flags::SYN, b""), 0).0 {
            Verdict::Forward => {}
            Verdict::Reject(L4Drop::TableFull) => refused += 1,
            v => panic!("unexpected {v:?}"),
        }
    }
    assert_eq!(t.l4.table_len(), 1000, "the table filled up");
    assert_eq!(t.l4.table_bytes(), bytes, "no allocation under load");
    assert_eq!(refused, 4001);
    assert_eq!(t.l4.counters().dropped(L4Drop::TableFull), 4001);
    assert_eq!(t.l4.listener_stats(0).unwrap().refused(L4Drop::TableFull), refused);
    // The established flow still forwards both ways.
    let (v, out) = t.client(&packet(client, vip, Proto::Tcp, tcp_flags::ACK, b"more"), 0);
    assert_eq!(v, Verdict::Forward);
    let fwd = meta(&out);
    let (v, back) = t.backend(&packet(fwd.dst, fwd.src, Proto::Tcp, tcp_flags::ACK, b"reply"));
    assert_eq!(v, Verdict::Forward);
    assert_eq!(meta(&back).dst, client);
    // Half-open flood entries expire after the SYN timeout; the flow does not.
    t.now += Duration::from_secs(11);
    let (v, _) = t.client(&packet(client, vip, Proto::Tcp, tcp_flags::ACK, b"still here"), 0);
    assert_eq!(v, Verdict::Forward);
    for _ in 0..3 {
        t.l4.expire(t.now);
    }
    assert_eq!(t.l4.table_len(), 1);
    println!(
        "connection table: {} bytes for {} flows, {} bytes per entry",
        t.l4.table_bytes(),
        t.l4.table_capacity(),
        t.l4.bytes_per_entry()
    );
    assert!(
        t.l4.bytes_per_entry() > 0 && t.l4.bytes_per_entry() < 512,
        "{} bytes per entry",
        t.l4.bytes_per_entry()
    );
}

#[test]
fn several_snat_addresses_multiply_the_ports() {
    let mut c = cfg(64);
    c.snat_addrs =
        vec!["198.18.0.2".parse().unwrap(), "198.18.0.3".parse().unwrap(), SNAT6.parse().unwrap()];
    let mut t =
        T { l4: L4::new(c).unwrap(), pool: Pool::with_count(16), now: Instant::from_secs(1) };
    let vip = sa("198.18.0.10:5432");
    let mut sources = std::collections::BTreeMap::new();
    for i in 0..20u16 {
        let client = SocketAddr::new(IpAddr::from([198, 18, 2, 1]), 3000 + i);
        let (v, out) = t.client(&packet(client, vip, Proto::Tcp, tcp_flags::SYN, b""), 0);
        assert_eq!(v, Verdict::Forward, "flow {i}");
        let m = meta(&out);
        *sources.entry(m.src.ip()).or_insert(0) += 1;
        // The reply to whichever address was used finds its way back.
        let (v, back) =
            t.backend(&packet(m.dst, m.src, Proto::Tcp, tcp_flags::SYN | tcp_flags::ACK, b""));
        assert_eq!(v, Verdict::Forward);
        assert_eq!(meta(&back).dst, client);
    }
    assert_eq!(sources.values().copied().collect::<Vec<_>>(), vec![10, 10], "{sources:?}");
    let late = packet(sa("198.18.2.1:4000"), vip, Proto::Tcp, tcp_flags::SYN, b"");
    assert_eq!(t.client(&late, 0).0, Verdict::Reject(L4Drop::NoSnatPort));
    let res = t.l4.snat_reservations();
    assert!(res.iter().any(|r| r.0 == "198.18.0.3".parse::<IpAddr>().unwrap()));
}

#[test]
fn dsr_wraps_the_untouched_packet_in_ip_in_ip() {
    for (vip, backend, client, outer_src, proto) in [
        ("198.18.0.10:5432", "198.18.0.21:5432", "198.18.0.101:33000", SNAT4, 4u8),
        ("[2001:2::10]:5432", "[2001:2::21]:5432", "[2001:2::101]:33000", SNAT6, 41u8),
    ] {
        let mut c = cfg(8);
        c.listeners[0].vip = sa(vip);
        c.listeners[0].backends = vec![Backend { name: "b".into(), addr: sa(backend), weight: 1 }];
        c.listeners[0].forwarding = Forwarding::DsrIpip;
        c.listeners.truncate(1);
        let mut t =
            T { l4: L4::new(c).unwrap(), pool: Pool::with_count(4), now: Instant::from_secs(1) };
        let syn = packet(sa(client), sa(vip), Proto::Tcp, tcp_flags::SYN, b"");
        let (v, out) = t.client(&syn, 0);
        assert_eq!(v, Verdict::Forward);
        let hdr = if proto == 4 { 20 } else { 40 };
        assert_eq!(out.len(), syn.len() + hdr);
        assert_eq!(&out[12..14], &syn[12..14], "ethertype kept");
        let ip = parse_ip(&out, get16(&out, 12)).expect("outer header valid");
        assert_eq!(ip.proto, proto);
        assert_eq!(ip.src, outer_src.parse::<IpAddr>().unwrap());
        assert_eq!(ip.dst, sa(backend).ip());
        assert_eq!(&out[ETH_LEN + hdr..], &syn[ETH_LEN..], "inner packet untouched");
        assert_eq!(t.l4.table_len(), 1);
        assert!(t.l4.snat_reservations().iter().all(|r| r.2 == (40960..40970)));
    }
    // A backend on another port cannot take DSR traffic for the VIP.
    let mut c = cfg(8);
    c.listeners[0].forwarding = Forwarding::DsrIpip;
    c.listeners[0].backends[0].addr = sa("198.18.0.21:6432");
    assert!(matches!(L4::new(c), Err(L4Error::DsrPort(..))));
}

#[test]
fn dsr_gue_puts_the_packet_after_a_udp_header_to_port_6080() {
    for (vip, backend, client) in [
        ("198.18.0.10:5432", "198.18.0.21:5432", "198.18.0.101:33000"),
        ("[2001:2::10]:5432", "[2001:2::21]:5432", "[2001:2::101]:33000"),
    ] {
        let mut c = cfg(8);
        c.listeners[0].vip = sa(vip);
        c.listeners[0].backends = vec![Backend { name: "b".into(), addr: sa(backend), weight: 1 }];
        c.listeners[0].forwarding = Forwarding::DsrGue;
        c.listeners.truncate(1);
        let mut t =
            T { l4: L4::new(c).unwrap(), pool: Pool::with_count(4), now: Instant::from_secs(1) };
        let syn = packet(sa(client), sa(vip), Proto::Tcp, tcp_flags::SYN, b"");
        let (v, out) = t.client(&syn, 0);
        assert_eq!(v, Verdict::Forward);
        let ip = parse_ip(&out, get16(&out, 12)).expect("outer header valid");
        // The outer UDP datagram checks out like any other (checksum 0 over IPv4).
        let m = parse_transport(&out, &ip, true).expect("outer UDP valid");
        assert_eq!(m.proto, Proto::Udp);
        assert_eq!(m.dst.port(), GUE_PORT);
        assert!(m.src.port() >= 0xc000, "entropy port {}", m.src.port());
        assert_eq!(m.dst.ip(), sa(backend).ip());
        assert_eq!(&out[ip.l4_offset + 8..], &syn[ETH_LEN..], "inner packet untouched");
        // The same flow always uses the same outer source port.
        let (_, again) = t.client(&packet(sa(client), sa(vip), Proto::Tcp, tcp_flags::ACK, b""), 0);
        let ip2 = parse_ip(&again, get16(&again, 12)).unwrap();
        assert_eq!(parse_transport(&again, &ip2, true).unwrap().src.port(), m.src.port());
    }
}

#[test]
fn a_port_range_listener_keeps_each_flow_on_its_port() {
    let mut c = cfg(64);
    c.listeners[0].vip = sa("198.18.0.10:5000");
    c.listeners[0].last_port = 5009;
    c.listeners[0].backends =
        vec![Backend { name: "b".into(), addr: sa("198.18.0.21:0"), weight: 1 }];
    let mut t =
        T { l4: L4::new(c).unwrap(), pool: Pool::with_count(8), now: Instant::from_secs(1) };
    let client = sa("198.18.0.101:33000");
    // The same client port to two ports of the range: two flows.
    for port in [5003u16, 5007] {
        let vip = SocketAddr::new("198.18.0.10".parse().unwrap(), port);
        let (v, out) = t.client(&packet(client, vip, Proto::Tcp, tcp_flags::SYN, b""), 0);
        assert_eq!(v, Verdict::Forward);
        let m = meta(&out);
        assert_eq!(
            m.dst,
            SocketAddr::new("198.18.0.21".parse().unwrap(), port),
            "backend port follows the VIP port"
        );
        let (v, back) =
            t.backend(&packet(m.dst, m.src, Proto::Tcp, tcp_flags::SYN | tcp_flags::ACK, b""));
        assert_eq!(v, Verdict::Forward);
        assert_eq!((meta(&back).src, meta(&back).dst), (vip, client));
    }
    assert_eq!(t.l4.table_len(), 2);
}

/// Two workers share the SNAT address: each hands out only the ports the
/// dispatcher steers back to it, so replies reach the worker owning the flow.
#[test]
fn workers_split_the_snat_ports_so_replies_come_back_to_their_owner() {
    let vip = sa("198.18.0.10:5432");
    let mut used = Vec::new();
    for index in 0..2u16 {
        let mut c = cfg(64);
        c.worker = WorkerSlot { index, count: 2 };
        let mut t =
            T { l4: L4::new(c).unwrap(), pool: Pool::with_count(16), now: Instant::from_secs(1) };
        // 40960..40970 holds 10 ports: 5 for each worker.
        for i in 0..5u16 {
            let client = SocketAddr::new(IpAddr::from([198, 18, 2, 1]), 3000 + i);
            let (v, out) = t.client(&packet(client, vip, Proto::Tcp, tcp_flags::SYN, b""), 0);
            assert_eq!(v, Verdict::Forward, "worker {index}, flow {i}");
            let port = meta(&out).src.port();
            assert_eq!(WorkerSlot::owner_of_port(port, 2), index, "port {port}");
            used.push(port);
        }
        let late = packet(sa("198.18.2.1:4000"), vip, Proto::Tcp, tcp_flags::SYN, b"");
        assert_eq!(t.client(&late, 0).0, Verdict::Reject(L4Drop::NoSnatPort));
    }
    used.sort();
    assert_eq!(used, (40960..40970).collect::<Vec<u16>>(), "every port used once");
    let mut c = cfg(64);
    c.worker = WorkerSlot { index: 2, count: 2 };
    assert_eq!(L4::new(c).err(), Some(L4Error::BadWorker(2, 2)));
}
