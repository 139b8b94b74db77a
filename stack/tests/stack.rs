//! The stack against a real TCP/IP peer: a smoltcp host on Ethernet exchanging
//! frames with `Stack` directly, plus hand-built frames for ARP, ICMP, resets
//! and malformed input.

use std::collections::VecDeque;
use std::net::SocketAddr;

use rand::{Rng, SeedableRng};
use smoltcp::iface::{Config, Interface, SocketSet};
use smoltcp::phy::{self, Device, DeviceCapabilities, Medium};
use smoltcp::socket::tcp;
use smoltcp::wire::{EthernetAddress, HardwareAddress, IpAddress, IpCidr};
use switchyard_nic::{Mbuf, Pool, RxCsum};
use switchyard_stack::tcp::{ConnId, TcpApi, TcpEvent};
use switchyard_stack::wire::*;
use switchyard_stack::*;

const LB_MAC: [u8; 6] = [0x02, 0x53, 0x59, 0, 0, 2];
const HOST_MAC: [u8; 6] = [0x02, 0, 198, 18, 0, 101];
const VIP: &str = "198.18.0.10:80";
const L4_VIP: &str = "198.18.0.10:5432";

/// A smoltcp device whose frames are queues the test moves by hand.
#[derive(Default)]
struct Wire {
    rx: VecDeque<Vec<u8>>,
    tx: Vec<Vec<u8>>,
}

struct Rx(Vec<u8>);
struct Tx<'a>(&'a mut Vec<Vec<u8>>);

impl phy::RxToken for Rx {
    fn consume<R, F: FnOnce(&[u8]) -> R>(self, f: F) -> R {
        f(&self.0)
    }
}

impl phy::TxToken for Tx<'_> {
    fn consume<R, F: FnOnce(&mut [u8]) -> R>(self, len: usize, f: F) -> R {
        let mut v = vec![0; len];
        let r = f(&mut v);
        self.0.push(v);
        r
    }
}

impl Device for Wire {
    type RxToken<'a> = Rx;
    type TxToken<'a> = Tx<'a>;
    fn receive(&mut self, _: smoltcp::time::Instant) -> Option<(Rx, Tx<'_>)> {
        let f = self.rx.pop_front()?;
        Some((Rx(f), Tx(&mut self.tx)))
    }
    fn transmit(&mut self, _: smoltcp::time::Instant) -> Option<Tx<'_>> {
        Some(Tx(&mut self.tx))
    }
    fn capabilities(&self) -> DeviceCapabilities {
        let mut c = DeviceCapabilities::default();
        c.medium = Medium::Ethernet;
        c.max_transmission_unit = 1514;
        c
    }
}

struct Bench {
    stack: Stack,
    pool: Pool,
    host: Interface,
    wire: Wire,
    sockets: SocketSet<'static>,
    now: Instant,
    events: Vec<TcpEvent>,
}

impl Bench {
    fn new() -> Bench {
        Bench::for_worker(WorkerSlot::default())
    }

    fn for_worker(worker: WorkerSlot) -> Bench {
        let mut stack = Stack::new(
            StackConfig {
                mac: LB_MAC,
                addresses: vec![("198.18.0.2".parse().unwrap(), 24)],
                gateway: None,
                tcp: TcpConfig { sockets_per_shard: 4, ..TcpConfig::default() },
                worker,
            },
            7,
        );
        stack.add_listener(VIP.parse().unwrap(), Proto::Tcp, ListenerKind::L7, 0).unwrap();
        stack.add_listener(L4_VIP.parse().unwrap(), Proto::Tcp, ListenerKind::L4, 1).unwrap();
        let mut wire = Wire::default();
        let now = Instant::from_millis(0);
        let mut host = Interface::new(
            Config::new(HardwareAddress::Ethernet(EthernetAddress(HOST_MAC))),
            &mut wire,
            now,
        );
        host.update_ip_addrs(|a| {
            a.push(IpCidr::new(IpAddress::v4(198, 18, 0, 101), 24)).unwrap();
        });
        Bench {
            stack,
            pool: Pool::with_count(4096),
            host,
            wire,
            sockets: SocketSet::new(Vec::new()),
            now,
            events: Vec::new(),
        }
    }

    /// Gives a frame to the stack; returns what it did not consume.
    fn ingress(&mut self, frame: &[u8]) -> Ingress {
        let mut m = self.pool.alloc();
        assert!(m.fill(frame));
        self.stack.ingress(self.now, m, &mut self.pool)
    }

    fn tx(&mut self) -> Vec<Vec<u8>> {
        let mut out = Vec::new();
        self.stack.take_tx(&mut out);
        out.into_iter()
            .map(|m: Mbuf| {
                let v = m.data().to_vec();
                self.pool.free(m);
                v
            })
            .collect()
    }

    /// One millisecond of both sides; `app` acts on the stack's TCP events.
    fn step(&mut self, app: &mut dyn FnMut(Instant, TcpEvent, &mut TcpTerminator)) {
        self.now += Duration::from_millis(1);
        self.host.poll(self.now, &mut self.wire, &mut self.sockets);
        for f in std::mem::take(&mut self.wire.tx) {
            if let Ingress::L4 { pkt, .. }
            | Ingress::L4Return { pkt, .. }
            | Ingress::L4Icmp { pkt, .. } = self.ingress(&f)
            {
                self.pool.free(pkt);
            }
        }
        self.stack.poll(self.now, &mut self.pool);
        self.stack.drain_tcp_events(&mut self.events);
        for ev in std::mem::take(&mut self.events) {
            app(self.now, ev, self.stack.tcp());
        }
        self.stack.poll(self.now, &mut self.pool);
        for f in self.tx() {
            self.wire.rx.push_back(f);
        }
    }
}

fn pattern(n: usize) -> Vec<u8> {
    (0..n).map(|i| (i * 7 + i / 251) as u8).collect()
}

#[test]
fn echoes_through_terminated_connections_from_several_clients() {
    let mut b = Bench::new();
    let mut accepted = Vec::new();
    let mut closed = 0;
    let mut buf = vec![0u8; 4096];
    let mut app = |_: Instant, ev: TcpEvent, tcp: &mut TcpTerminator| match ev {
        TcpEvent::Accepted { conn, listener, local, .. } => {
            assert_eq!(listener, 0);
            assert_eq!(local, VIP.parse::<SocketAddr>().unwrap());
            accepted.push(conn);
        }
        TcpEvent::Readable { conn } | TcpEvent::Writable { conn } => loop {
            let room = tcp.send_capacity(conn).min(buf.len());
            if room == 0 {
                break;
            }
            let n = tcp.recv(conn, &mut buf[..room]).unwrap();
            if n == 0 {
                break;
            }
            assert_eq!(tcp.send(conn, &buf[..n]).unwrap(), n);
        },
        TcpEvent::PeerClosed { conn } => tcp.close(conn),
        TcpEvent::Closed { .. } => closed += 1,
        _ => {}
    };
    // Two rounds of six clients whose SYNs arrive in one burst: the second round
    // reuses the first round's sockets. Each client sends its own bytes, so a
    // connection wired to the wrong socket would show.
    let mut shards = Vec::new();
    for round in 0..2u16 {
        let mut clients = Vec::new();
        for k in 0..6u16 {
            let mut s = tcp::Socket::new(
                tcp::SocketBuffer::new(vec![0; 65536]),
                tcp::SocketBuffer::new(vec![0; 65536]),
            );
            s.connect(
                b.host.context(),
                (IpAddress::v4(198, 18, 0, 10), 80),
                40000 + round * 10 + k,
            )
            .unwrap();
            let data: Vec<u8> = pattern(50_000 + usize::from(k) * 1000)
                .into_iter()
                .map(|x| x ^ (k as u8 * 37))
                .collect();
            clients.push((b.sockets.add(s), data, 0usize, Vec::new()));
        }
        for _ in 0..20_000 {
            b.step(&mut app);
            let mut all = true;
            for (h, data, sent, got) in clients.iter_mut() {
                let s = b.sockets.get_mut::<tcp::Socket>(*h);
                if s.can_send() && *sent < data.len() {
                    *sent += s.send_slice(&data[*sent..]).unwrap();
                }
                while s.can_recv() {
                    s.recv(|d| {
                        got.extend_from_slice(d);
                        (d.len(), ())
                    })
                    .unwrap();
                }
                if got.len() == data.len() && s.is_open() && s.state() == tcp::State::Established {
                    s.close();
                }
                all &= got.len() == data.len() && !s.is_open();
            }
            if all {
                break;
            }
        }
        for (k, (h, data, _, got)) in clients.iter().enumerate() {
            assert!(
                got == data,
                "round {round} client {k}: echo differs ({} of {} bytes)",
                got.len(),
                data.len()
            );
            b.sockets.remove(*h);
        }
        for _ in 0..100 {
            b.step(&mut app);
        }
        shards.push(b.stack.tcp_stats().shards);
    }
    assert_eq!(shards[0], shards[1], "the second round found room in the first round's shards");
    assert_eq!(accepted.len(), 12);
    assert_eq!(closed, 12);
    let st = b.stack.tcp_stats();
    assert_eq!(st.accepted, 12);
    // Four sockets per shard: six connections at once need at least two shards.
    assert!(st.shards >= 2, "{st:?}");
    assert!(b.stack.counters().arp_replies_sent >= 1);
}

#[test]
fn sockets_of_closed_connections_are_taken_again_before_new_shards_are_made() {
    let mut b = Bench::new();
    let mut shards = Vec::new();
    for _ in 0..3 {
        // Twelve at once fill three shards of four.
        let conns: Vec<ConnId> = (0..12)
            .map(|_| b.stack.tcp().connect(b.now, "198.18.0.101:8080".parse().unwrap()).unwrap())
            .collect();
        for c in conns {
            b.stack.tcp().abort(c);
        }
        for _ in 0..10 {
            b.step(&mut |_, _, _| {});
        }
        shards.push(b.stack.tcp_stats().shards);
    }
    assert_eq!(shards, [3, 3, 3]);
}

#[test]
fn connects_upstream_and_reports_refusal() {
    let mut b = Bench::new();
    let mut server = tcp::Socket::new(
        tcp::SocketBuffer::new(vec![0; 8192]),
        tcp::SocketBuffer::new(vec![0; 8192]),
    );
    server.listen(8080).unwrap();
    let sh = b.sockets.add(server);
    let connected = std::cell::RefCell::new(Vec::new());
    let closed = std::cell::RefCell::new(Vec::new());
    let up = b.stack.tcp().connect(b.now, "198.18.0.101:8080".parse().unwrap()).unwrap();
    let refused = b.stack.tcp().connect(b.now, "198.18.0.101:9".parse().unwrap()).unwrap();
    let mut app = |_: Instant, ev: TcpEvent, tcp: &mut TcpTerminator| match ev {
        TcpEvent::Connected { conn } => {
            tcp.send(conn, b"hello upstream").unwrap();
            connected.borrow_mut().push(conn);
        }
        TcpEvent::Closed { conn, reset } => closed.borrow_mut().push((conn, reset)),
        _ => {}
    };
    let mut got = Vec::new();
    for _ in 0..2000 {
        b.step(&mut app);
        let s = b.sockets.get_mut::<tcp::Socket>(sh);
        while s.can_recv() {
            s.recv(|d| {
                got.extend_from_slice(d);
                (d.len(), ())
            })
            .unwrap();
        }
        if got.len() == 14 && !closed.borrow().is_empty() {
            break;
        }
    }
    assert_eq!(*connected.borrow(), vec![up]);
    assert_eq!(got, b"hello upstream");
    assert_eq!(*closed.borrow(), vec![(refused, true)]);
    assert_eq!(b.stack.counters().arp_requests_sent, 1);
}

fn eth(dst: [u8; 6], ethertype: u16, payload: &[u8]) -> Vec<u8> {
    let mut f = vec![0u8; 14];
    put_eth(&mut f, dst, HOST_MAC, ethertype);
    f.extend_from_slice(payload);
    f
}

fn ipv4_packet(src: [u8; 4], dst: [u8; 4], proto: u8, l4: &[u8]) -> Vec<u8> {
    let mut ip = vec![0u8; 20];
    put_ip_header(&mut ip, src.into(), dst.into(), proto, l4.len());
    ip.extend_from_slice(l4);
    let (s, d) = (src.into(), dst.into());
    match proto {
        IPPROTO_TCP => fix_l4_checksum(&mut ip[20..], s, d, proto, 16),
        IPPROTO_UDP => fix_l4_checksum(&mut ip[20..], s, d, proto, 6),
        _ => {
            let c = fold(sum(0, &ip[20..]));
            put16(&mut ip[20..], 2, c);
        }
    }
    eth(LB_MAC, ETHERTYPE_IPV4, &ip)
}

fn tcp_segment(sport: u16, dport: u16, seq: u32, flags: u8, payload: &[u8]) -> Vec<u8> {
    let mut t = vec![0u8; 20];
    put16(&mut t, 0, sport);
    put16(&mut t, 2, dport);
    put32(&mut t, 4, seq);
    t[12] = 0x50;
    t[13] = flags;
    put16(&mut t, 14, 8192);
    t.extend_from_slice(payload);
    t
}

const HOST_IP: [u8; 4] = [198, 18, 0, 101];
const VIP_IP: [u8; 4] = [198, 18, 0, 10];

#[test]
fn answers_arp_for_vips_and_only_for_them() {
    let mut b = Bench::new();
    let mut arp = vec![0, 1, 8, 0, 6, 4, 0, 1];
    arp.extend_from_slice(&HOST_MAC);
    arp.extend_from_slice(&HOST_IP);
    arp.extend_from_slice(&[0; 6]);
    arp.extend_from_slice(&VIP_IP);
    assert!(matches!(b.ingress(&eth([0xff; 6], ETHERTYPE_ARP, &arp)), Ingress::Done));
    let out = b.tx();
    assert_eq!(out.len(), 1);
    let r = &out[0];
    assert_eq!(&r[0..6], &HOST_MAC);
    assert_eq!(&r[6..12], &LB_MAC);
    assert_eq!(get16(r, 20), 2, "ARP reply");
    assert_eq!(&r[22..28], &LB_MAC);
    assert_eq!(&r[28..32], &VIP_IP);
    assert_eq!(&r[32..38], &HOST_MAC);
    assert_eq!(&r[38..42], &HOST_IP);
    // Someone else's address: not answered, counted.
    let mut other = arp.clone();
    other[24..28].copy_from_slice(&[198, 18, 0, 99]);
    b.ingress(&eth([0xff; 6], ETHERTYPE_ARP, &other));
    assert!(b.tx().is_empty());
    assert_eq!(b.stack.counters().dropped(DropReason::BadArp), 1);
    assert_eq!(b.stack.counters().arp_replies_sent, 1);
}

/// With several workers only the primary answers ARP; a secondary learns the
/// sender (so it needs no request of its own), sends no announcements, and
/// opens upstream connections only from the ephemeral ports it owns.
#[test]
fn a_secondary_worker_learns_neighbors_and_leaves_answers_to_the_primary() {
    let worker = WorkerSlot { index: 1, count: 2 };
    let mut b = Bench::for_worker(worker);
    let mut arp = vec![0, 1, 8, 0, 6, 4, 0, 1];
    arp.extend_from_slice(&HOST_MAC);
    arp.extend_from_slice(&HOST_IP);
    arp.extend_from_slice(&[0; 6]);
    arp.extend_from_slice(&VIP_IP);
    assert!(matches!(b.ingress(&eth([0xff; 6], ETHERTYPE_ARP, &arp)), Ingress::Done));
    assert!(b.tx().is_empty(), "the primary answers");
    assert_eq!(b.stack.counters().arp_replies_sent, 0);
    assert_eq!(b.stack.counters().dropped(DropReason::BadArp), 0);
    b.stack.announce(&mut b.pool);
    assert!(b.tx().is_empty(), "the primary announces");
    for _ in 0..20 {
        b.stack.tcp().connect(b.now, "198.18.0.101:8080".parse().unwrap()).unwrap();
    }
    b.stack.poll(b.now, &mut b.pool);
    let syns = b.tx();
    assert_eq!(syns.len(), 20, "the neighbor was learned from its request");
    assert_eq!(b.stack.counters().arp_requests_sent, 0);
    for f in &syns {
        let sport = get16(f, ETH_LEN + 20);
        assert!(worker.owns(sport), "source port {sport} belongs to worker 1 of 2");
    }
}

#[test]
fn answers_ping_to_a_vip() {
    let mut b = Bench::new();
    let mut echo = vec![8, 0, 0, 0, 0x12, 0x34, 0, 1];
    echo.extend_from_slice(b"switchyard ping");
    let f = ipv4_packet(HOST_IP, VIP_IP, IPPROTO_ICMP, &echo);
    b.ingress(&f);
    let out = b.tx();
    assert_eq!(out.len(), 1);
    let r = &out[0];
    let ip = parse_ip(r, ETHERTYPE_IPV4).unwrap();
    assert_eq!(ip.src, std::net::IpAddr::from(VIP_IP));
    assert_eq!(ip.dst, std::net::IpAddr::from(HOST_IP));
    let msg = &r[ip.l4_offset..ip.end];
    assert_eq!(msg[0], 0, "echo reply");
    assert_eq!(&msg[4..], &echo[4..]);
    assert_eq!(fold(sum(0, msg)), 0, "ICMP checksum");
    assert_eq!(b.stack.counters().icmp_echo_replies, 1);
}

#[test]
fn resets_tcp_and_refuses_udp_without_a_listener() {
    let mut b = Bench::new();
    let syn = ipv4_packet(HOST_IP, VIP_IP, IPPROTO_TCP, &tcp_segment(1234, 81, 1000, 0x02, &[]));
    b.ingress(&syn);
    let out = b.tx();
    assert_eq!(out.len(), 1);
    let ip = parse_ip(&out[0], ETHERTYPE_IPV4).unwrap();
    let m = parse_transport(&out[0], &ip, true).unwrap();
    assert_eq!(m.src, "198.18.0.10:81".parse().unwrap());
    assert_eq!(m.dst, "198.18.0.101:1234".parse().unwrap());
    assert_eq!(m.tcp_flags, 0x14, "RST|ACK");
    assert_eq!(get32(&out[0], ip.l4_offset + 8), 1001, "acknowledges the SYN");
    // A stray ACK to the L7 listener without a connection is reset too.
    let ack = ipv4_packet(HOST_IP, VIP_IP, IPPROTO_TCP, &tcp_segment(1235, 80, 5, 0x10, &[]));
    b.ingress(&ack);
    assert_eq!(b.tx().len(), 1);
    let udp = {
        let mut u = vec![0u8; 8];
        put16(&mut u, 0, 5000);
        put16(&mut u, 2, 53);
        put16(&mut u, 4, 12);
        u.extend_from_slice(b"dns?");
        ipv4_packet(HOST_IP, VIP_IP, IPPROTO_UDP, &u)
    };
    b.ingress(&udp);
    let out = b.tx();
    assert_eq!(out.len(), 1);
    let ip = parse_ip(&out[0], ETHERTYPE_IPV4).unwrap();
    assert_eq!(ip.proto, IPPROTO_ICMP);
    assert_eq!(&out[0][ip.l4_offset..ip.l4_offset + 2], &[3, 3], "port unreachable");
    let c = b.stack.counters();
    assert_eq!(c.rst_sent, 2);
    assert_eq!(c.unreachable_sent, 1);
    assert_eq!(c.dropped(DropReason::NoListener), 2);
    assert_eq!(c.dropped(DropReason::UnknownFlow), 1);
}

#[test]
fn hands_l4_listener_packets_up_untouched() {
    let mut b = Bench::new();
    let syn = ipv4_packet(HOST_IP, VIP_IP, IPPROTO_TCP, &tcp_segment(1234, 5432, 1, 0x02, &[]));
    match b.ingress(&syn) {
        Ingress::L4 { pkt, listener, meta } => {
            assert_eq!(listener, 1);
            assert_eq!(pkt.data(), &syn[..]);
            assert_eq!(meta.dst, L4_VIP.parse().unwrap());
            b.pool.free(pkt);
        }
        other => panic!("expected L4, got {other:?}"),
    }
}

/// Checksum offload: a frame whose checksum a local stack left partial (only
/// the pseudo-header sum in the field, as over a veth) reaches L4 with its
/// checksum completed; one the device verified is not checked again; one
/// nobody vouched for is still verified and dropped when wrong.
#[test]
fn offloaded_checksums_are_trusted_and_partial_ones_completed() {
    let mut b = Bench::new();
    let mut syn =
        ipv4_packet(HOST_IP, VIP_IP, IPPROTO_TCP, &tcp_segment(1234, 5432, 1, 0x02, b"payload!"));
    let full = syn.clone();
    let (s, d) = (HOST_IP.into(), VIP_IP.into());
    let pseudo_only = !fold(sum(pseudo(s, d, IPPROTO_TCP, 28), &[]));
    put16(&mut syn[14 + 20..], 16, pseudo_only);
    // Trailing bytes after the IP packet, as Ethernet padding would be.
    syn.resize(syn.len() + 4, 0xee);
    let frame_with = |b: &mut Bench, f: &[u8], c: RxCsum| {
        let mut m = b.pool.alloc();
        assert!(m.fill(f));
        m.set_rx_csum(c);
        b.stack.ingress(b.now, m, &mut b.pool)
    };
    match frame_with(&mut b, &syn, RxCsum::Partial) {
        Ingress::L4 { pkt, .. } => {
            assert_eq!(
                &pkt.data()[..full.len()],
                &full[..],
                "checksum completed over the IP packet only"
            );
            assert_eq!(pkt.rx_csum(), RxCsum::Unchecked);
            b.pool.free(pkt);
        }
        other => panic!("expected L4, got {other:?}"),
    }
    assert_eq!(b.stack.counters().rx_csum_completed, 1);
    let mut bad = full.clone();
    bad[14 + 20 + 16] ^= 0x5a;
    match frame_with(&mut b, &bad, RxCsum::Verified) {
        Ingress::L4 { pkt, .. } => b.pool.free(pkt),
        other => panic!("a device-verified frame is not checked again, got {other:?}"),
    }
    assert_eq!(b.stack.counters().rx_csum_offloaded, 2);
    assert!(matches!(frame_with(&mut b, &bad, RxCsum::Unchecked), Ingress::Done));
    assert_eq!(b.stack.counters().dropped(DropReason::BadL4Checksum), 1);
    assert_eq!(b.stack.counters().rx_csum_completed, 1);
}

#[test]
fn bad_input_is_counted_by_reason_and_never_panics() {
    let mut b = Bench::new();
    let good =
        ipv4_packet(HOST_IP, VIP_IP, IPPROTO_TCP, &tcp_segment(1234, 5432, 1, 0x02, b"payload"));
    b.ingress(&good[..20]);
    let mut bad_sum = good.clone();
    bad_sum[40] ^= 0xff;
    b.ingress(&bad_sum);
    let mut bad_ip = good.clone();
    bad_ip[22] ^= 1;
    b.ingress(&bad_ip);
    b.ingress(&eth(LB_MAC, 0x88cc, b"lldp"));
    b.ingress(&{
        let mut f = good.clone();
        f[0] = 0x04;
        f
    });
    let c = b.stack.counters();
    assert_eq!(c.dropped(DropReason::Truncated), 1);
    assert_eq!(c.dropped(DropReason::BadL4Checksum), 1);
    assert_eq!(c.dropped(DropReason::BadIpChecksum), 1);
    assert_eq!(c.dropped(DropReason::UnsupportedEthertype), 1);
    assert_eq!(c.dropped(DropReason::NotOurMac), 1);

    // Thousands of random frames and mutations of a valid one.
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(switchyard_seed());
    let before = b.pool.stats();
    for i in 0..5000 {
        let frame = if i % 2 == 0 {
            let n = rng.random_range(0..200);
            let mut f: Vec<u8> = (0..n).map(|_| rng.random()).collect();
            if f.len() > 14 && rng.random_bool(0.5) {
                f[..6].copy_from_slice(&LB_MAC);
                f[12..14].copy_from_slice(&[8, 0]);
            }
            f
        } else {
            let mut f = good.clone();
            for _ in 0..rng.random_range(1..4) {
                let k = rng.random_range(0..f.len());
                f[k] = rng.random();
            }
            f.truncate(rng.random_range(0..=f.len()));
            f
        };
        if let Ingress::L4 { pkt, .. }
        | Ingress::L4Return { pkt, .. }
        | Ingress::L4Icmp { pkt, .. } = b.ingress(&frame)
        {
            b.pool.free(pkt);
        }
        b.stack.poll(b.now, &mut b.pool);
        b.tx();
    }
    assert_eq!(b.stack.counters().rx_frames, 5005);
    assert!(b.stack.counters().dropped_total() > 4000);
    // Every buffer came back (nothing leaked on any path).
    assert_eq!(b.pool.stats().free, before.free);
}

fn switchyard_seed() -> u64 {
    let seed = std::env::var("SIM_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or(1);
    eprintln!("fuzz seed {seed} (SIM_SEED={seed} replays it)");
    seed
}

#[test]
fn an_l4_port_range_is_classified_as_its_listener() {
    let mut b = Bench::new();
    b.stack
        .add_l4_listener_range("198.18.0.11:6000".parse().unwrap(), 6099, Proto::Tcp, 7)
        .unwrap();
    assert!(
        b.stack
            .add_l4_listener_range("198.18.0.11:6050".parse().unwrap(), 6200, Proto::Tcp, 8)
            .is_err()
    );
    for (port, inside) in [(6000u16, true), (6042, true), (6099, true), (6100, false)] {
        let syn = ipv4_packet(
            HOST_IP,
            [198, 18, 0, 11],
            IPPROTO_TCP,
            &tcp_segment(1234, port, 1, 0x02, &[]),
        );
        match b.ingress(&syn) {
            Ingress::L4 { pkt, listener, .. } => {
                assert!(inside, "port {port}");
                assert_eq!(listener, 7);
                b.pool.free(pkt);
            }
            Ingress::Done => assert!(!inside, "port {port}"),
            other => panic!("{other:?}"),
        }
    }
    assert_eq!(b.stack.counters().dropped(DropReason::NoListener), 1);
    assert!(b.stack.owns("198.18.0.11".parse().unwrap()));
}

/// At start on a real link the stack announces every address it answers
/// for: gratuitous ARP requests (sender = target) for IPv4 addresses and
/// VIPs, an unsolicited neighbor advertisement with the override flag to all
/// nodes for IPv6, with a valid checksum.
#[test]
fn announces_its_addresses_and_vips() {
    let mut stack = Stack::new(
        StackConfig {
            mac: LB_MAC,
            addresses: vec![
                ("198.18.0.2".parse().unwrap(), 24),
                ("2001:2::2".parse().unwrap(), 64),
            ],
            gateway: None,
            tcp: TcpConfig::default(),
            worker: Default::default(),
        },
        7,
    );
    stack.add_listener("198.18.0.10:80".parse().unwrap(), Proto::Tcp, ListenerKind::L7, 0).unwrap();
    let mut pool = Pool::with_count(8);
    stack.announce(&mut pool);
    let mut tx = Vec::new();
    stack.take_tx(&mut tx);
    let frames: Vec<Vec<u8>> = tx.iter().map(|m| m.data().to_vec()).collect();
    for m in tx {
        pool.free(m);
    }
    assert_eq!(frames.len(), 3, "two IPv4 addresses (interface and VIP), one IPv6");
    assert_eq!(stack.counters().announcements, 3);
    let mut garps: Vec<[u8; 4]> = Vec::new();
    for f in &frames {
        match get16(f, 12) {
            ETHERTYPE_ARP => {
                assert_eq!(&f[0..6], &[0xff; 6]);
                assert_eq!(get16(f, 20), 1, "an ARP request (RFC 5227 announcement)");
                assert_eq!(&f[22..28], &LB_MAC);
                assert_eq!(&f[28..32], &f[38..42], "sender and target address are the same");
                garps.push([f[28], f[29], f[30], f[31]]);
            }
            ETHERTYPE_IPV6 => {
                let ip = parse_ip(f, ETHERTYPE_IPV6).unwrap();
                let msg = &f[ip.l4_offset..ip.end];
                assert_eq!(msg[0], 136, "neighbor advertisement");
                assert_eq!(msg[4] & 0x20, 0x20, "override flag");
                assert_eq!(ip.dst, "ff02::1".parse::<std::net::IpAddr>().unwrap());
                assert_eq!(f[ETH_LEN + 7], 255, "hop limit 255 (RFC 4861 7.1.2)");
                assert_eq!(fold(sum(pseudo(ip.src, ip.dst, IPPROTO_ICMPV6, msg.len()), msg)), 0);
                assert_eq!(&msg[26..32], &LB_MAC);
            }
            other => panic!("unexpected ethertype {other:#x}"),
        }
    }
    garps.sort();
    assert_eq!(garps, vec![[198, 18, 0, 2], [198, 18, 0, 10]]);
}

/// A segment from the host to the L7 listener with an acknowledgment number.
fn to_vip(sport: u16, seq: u32, ack: u32, flags: u8, payload: &[u8]) -> Vec<u8> {
    let mut t = tcp_segment(sport, 80, seq, flags, payload);
    put32(&mut t, 8, ack);
    ipv4_packet(HOST_IP, VIP_IP, IPPROTO_TCP, &t)
}

/// A host's ARP request for the VIP.
fn arp_request_for_vip() -> Vec<u8> {
    let mut arp = vec![0, 1, 8, 0, 6, 4, 0, 1];
    arp.extend_from_slice(&HOST_MAC);
    arp.extend_from_slice(&HOST_IP);
    arp.extend_from_slice(&[0; 6]);
    arp.extend_from_slice(&VIP_IP);
    eth([0xff; 6], ETHERTYPE_ARP, &arp)
}

impl Bench {
    /// A connection to the L7 listener from `port` driven by hand: the host
    /// asks for the VIP's address (so the stack knows the host), then sends
    /// a SYN with sequence number `seq`. Returns the stack's initial
    /// sequence number, from its SYN-ACK.
    fn open_by_hand(
        &mut self,
        port: u16,
        seq: u32,
        app: &mut dyn FnMut(TcpEvent, &mut TcpTerminator),
    ) -> u32 {
        self.ingress(&arp_request_for_vip());
        self.tx();
        self.ingress(&to_vip(port, seq, 0, 0x02, &[]));
        let out = self.turn(app);
        out.iter().find(|s| s.0 == 0x12).expect("SYN-ACK").1
    }

    /// Polls the stack, lets `app` act on its events, polls again; returns
    /// the TCP segments it sent as (flags, seq, ack, payload length).
    fn turn(
        &mut self,
        app: &mut dyn FnMut(TcpEvent, &mut TcpTerminator),
    ) -> Vec<(u8, u32, u32, usize)> {
        self.now += Duration::from_millis(1);
        self.stack.poll(self.now, &mut self.pool);
        self.stack.drain_tcp_events(&mut self.events);
        for ev in std::mem::take(&mut self.events) {
            app(ev, self.stack.tcp());
        }
        self.stack.poll(self.now, &mut self.pool);
        self.tx()
            .iter()
            .filter_map(|f| {
                let ip = parse_ip(f, ETHERTYPE_IPV4).ok()?;
                let m = parse_transport(f, &ip, true).ok()?;
                let t = ip.l4_offset;
                let hdr = usize::from(f[t + 12] >> 4) * 4;
                Some((m.tcp_flags, get32(f, t + 4), get32(f, t + 8), ip.end - t - hdr))
            })
            .collect()
    }
}

#[test]
fn a_syn_past_the_old_fin_reopens_a_connection_in_time_wait() {
    const SYN: u8 = 0x02;
    const ACK: u8 = 0x10;
    const FIN: u8 = 0x01;
    let mut b = Bench::new();
    let accepted = std::cell::RefCell::new(Vec::new());
    let mut app = |ev: TcpEvent, tcp: &mut TcpTerminator| match ev {
        TcpEvent::Accepted { conn, peer, .. } => accepted.borrow_mut().push((conn, peer)),
        // The server answers and closes first, as after `Connection: close`.
        TcpEvent::Readable { conn } => {
            let mut buf = [0u8; 64];
            while tcp.recv(conn, &mut buf).unwrap_or(0) > 0 {}
            tcp.send(conn, b"bye").unwrap();
            tcp.close(conn);
        }
        _ => {}
    };
    let port = 41000;
    let isn = b.open_by_hand(port, 1000, &mut app);
    b.ingress(&to_vip(port, 1001, isn + 1, ACK, b"hi"));
    let out = b.turn(&mut app);
    assert!(
        out.iter().any(|s| s.3 == 3) && out.iter().any(|s| s.0 & FIN != 0),
        "the server's answer and FIN: {out:?}"
    );
    // The client acknowledges both and sends its FIN: the server's socket is
    // in TIME-WAIT, the connection reported closed.
    b.ingress(&to_vip(port, 1003, isn + 5, FIN | ACK, &[]));
    b.turn(&mut app);
    b.turn(&mut app);
    assert_eq!(accepted.borrow().len(), 1);
    let before = b.stack.tcp_stats();
    assert_eq!(before.closed, 1, "{before:?}");
    assert_eq!(before.active, 1, "still lingering in TIME-WAIT: {before:?}");

    // An old duplicate SYN (sequence before the FIN) is dropped.
    b.ingress(&to_vip(port, 900, 0, SYN, &[]));
    let out = b.turn(&mut app);
    assert!(out.iter().all(|s| s.0 & SYN == 0), "no SYN-ACK to an old SYN: {out:?}");
    assert_eq!(b.stack.tcp_stats().duplicate_syns, before.duplicate_syns + 1);

    // The same port again with a sequence number past the FIN: a new
    // connection, answered at once (not after TIME-WAIT).
    // Another client's SYN comes first in the same turn: its listening
    // socket is made in the old connection's shard, so the new connection
    // gets a socket elsewhere and the old one is not reused at once.
    b.ingress(&to_vip(port + 1, 7000, 0, SYN, &[]));
    b.ingress(&to_vip(port, 1004 + 100_000, 0, SYN, &[]));
    let out = b.turn(&mut app);
    let &(_, isn2, ack2, _) = out
        .iter()
        .find(|s| s.0 == SYN | ACK && s.2 == 1004 + 100_001)
        .expect("SYN-ACK to the new SYN");
    assert_eq!(ack2, 1004 + 100_001);
    // The old connection goes quietly: no reset, now or later.
    const RST: u8 = 0x04;
    assert!(out.iter().all(|s| s.0 & RST == 0), "no reset: {out:?}");
    b.ingress(&to_vip(port, 1004 + 100_001, isn2 + 1, ACK, b"hi"));
    let out = b.turn(&mut app);
    assert!(out.iter().all(|s| s.0 & RST == 0), "no reset: {out:?}");
    assert!(out.iter().any(|s| s.3 == 3), "the new connection is served: {out:?}");
    let st = b.stack.tcp_stats();
    assert_eq!(st.time_wait_reopened, 1, "{st:?}");
    let accepted = accepted.borrow();
    let again = accepted.iter().filter(|(_, peer)| peer.port() == port).collect::<Vec<_>>();
    assert_eq!(again.len(), 2, "{accepted:?}");
    assert_ne!(again[0].0, again[1].0, "a new connection id");
}

#[test]
fn acks_are_quick_while_a_connection_is_young_then_ride_on_the_answer() {
    const ACK: u8 = 0x10;
    const PSH: u8 = 0x08;
    let mut b = Bench::new();
    let answer = std::cell::Cell::new(false);
    let conn = std::cell::Cell::new(None);
    let mut app = |ev: TcpEvent, tcp: &mut TcpTerminator| match ev {
        TcpEvent::Accepted { conn: c, .. } => conn.set(Some(c)),
        TcpEvent::Readable { conn: c } if answer.get() => {
            let mut buf = [0u8; 64];
            while tcp.recv(c, &mut buf).unwrap_or(0) > 0 {}
            tcp.send(c, b"ok").unwrap();
        }
        _ => {}
    };
    let port = 41001;
    let isn = b.open_by_hand(port, 1000, &mut app);
    let mut seq = 1001;
    b.ingress(&to_vip(port, seq, isn + 1, ACK, &[]));
    b.turn(&mut app);
    assert!(conn.get().is_some());
    // Young: a request the application does not answer yet is acknowledged
    // within a couple of milliseconds, alone.
    b.ingress(&to_vip(port, seq, isn + 1, ACK | PSH, b"req1"));
    seq += 4;
    let mut pure = 0;
    for _ in 0..3 {
        pure += b.turn(&mut app).iter().filter(|s| s.0 == ACK && s.3 == 0).count();
    }
    assert_eq!(pure, 1, "a quick ACK while young");
    // Grown (past 200 ms): the next request's ACK waits for the answer and
    // rides on it.
    b.now += Duration::from_millis(300);
    b.ingress(&to_vip(port, seq, isn + 1, ACK | PSH, b"req2"));
    seq += 4;
    for _ in 0..30 {
        b.turn(&mut app);
    }
    b.ingress(&to_vip(port, seq, isn + 1, ACK | PSH, b"req3"));
    seq += 4;
    let mut pure = 0;
    for _ in 0..10 {
        pure += b.turn(&mut app).iter().filter(|s| s.0 == ACK && s.3 == 0).count();
    }
    assert_eq!(pure, 0, "no ACK alone within 10 ms once grown");
    answer.set(true);
    b.ingress(&to_vip(port, seq, isn + 1, ACK | PSH, b"req4"));
    seq += 4;
    let out = b.turn(&mut app);
    let reply = out.iter().find(|s| s.3 > 0).expect("the answer");
    assert_eq!(reply.2, seq, "the answer acknowledges every request");
    assert!(out.iter().all(|s| s.3 > 0), "and goes without a separate ACK: {out:?}");
}
