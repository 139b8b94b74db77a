//! L2/L3 of Switchyard: Ethernet (IEEE 802.3), ARP (RFC 826) and IPv6 neighbor
//! discovery (RFC 4861) with one neighbor table, ICMP echo (RFC 792, RFC 4443) for
//! owned addresses, the flow classifier that sends each frame to L4, to TCP
//! termination or to a drop counter, and TCP termination (RFC 9293) on smoltcp in
//! sharded interfaces.
#![forbid(unsafe_code)]

#[cfg(feature = "fake")]
pub mod fake;
pub mod health;
pub mod neighbor;
pub mod tcp;
pub mod term;
pub mod types;
pub mod wire;

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::ops::Range;

pub use smoltcp::time::{Duration, Instant};
use switchyard_nic::{Mbuf, Pool, RxCsum};
pub use term::{TcpStats, TcpTerminator};
pub use types::*;

use neighbor::{Neighbors, Queued};
use wire::*;

/// The stack of one worker: owns the port's addresses, answers ARP, neighbor
/// solicitations and pings, classifies every frame, and terminates TCP for L7.
pub struct Stack {
    mac: [u8; 6],
    addrs: Vec<(IpAddr, u8)>,
    gateway: Option<IpAddr>,
    /// Addresses answered for: interface addresses and listener VIPs.
    owned: Vec<IpAddr>,
    listeners: FlowMap<(SocketAddr, Proto), (ListenerKind, ListenerId)>,
    /// L4 listeners over a port range: (address, first, last, protocol, id).
    listener_ranges: Vec<(IpAddr, u16, u16, Proto, ListenerId)>,
    l4_ranges: Vec<(IpAddr, Proto, Range<u16>)>,
    neigh: Neighbors,
    tcp: TcpTerminator,
    tx: Vec<Mbuf>,
    tcp_out: Vec<Mbuf>,
    ready: Vec<Mbuf>,
    retry: Vec<IpAddr>,
    counters: StackCounters,
    /// Only the primary worker answers ARP and neighbor solicitations.
    worker: WorkerSlot,
}

impl Stack {
    /// A stack for one worker; `seed` makes TCP initial sequence numbers and
    /// ports repeatable.
    pub fn new(cfg: StackConfig, seed: u64) -> Stack {
        let tcp = TcpTerminator::new(cfg.tcp.clone(), cfg.addresses.clone(), seed)
            .with_worker(cfg.worker);
        Stack {
            mac: cfg.mac,
            owned: cfg.addresses.iter().map(|a| a.0).collect(),
            addrs: cfg.addresses,
            gateway: cfg.gateway,
            listeners: flow_map(16, seed),
            listener_ranges: Vec::new(),
            l4_ranges: Vec::new(),
            neigh: Neighbors::default(),
            tcp,
            tx: Vec::with_capacity(256),
            tcp_out: Vec::with_capacity(256),
            ready: Vec::with_capacity(64),
            retry: Vec::new(),
            counters: StackCounters::default(),
            worker: cfg.worker,
        }
    }

    /// Serves `addr` for `proto` with the layer `kind`; `id` names the listener
    /// in every layer. The address becomes owned (ARP, ping).
    pub fn add_listener(
        &mut self,
        addr: SocketAddr,
        proto: Proto,
        kind: ListenerKind,
        id: ListenerId,
    ) -> Result<(), StackError> {
        if self.listeners.contains_key(&(addr, proto)) {
            return Err(StackError::DuplicateListener(addr, proto));
        }
        self.listeners.insert((addr, proto), (kind, id));
        if !self.owned.contains(&addr.ip()) {
            self.owned.push(addr.ip());
        }
        if kind == ListenerKind::L7 {
            self.tcp.listen(id, addr);
        }
        Ok(())
    }

    /// Serves ports `addr.port()..=last` of `addr` for `proto` with L4 listener
    /// `id` (a port range; single ports go through [`Stack::add_listener`]).
    pub fn add_l4_listener_range(
        &mut self,
        addr: SocketAddr,
        last: u16,
        proto: Proto,
        id: ListenerId,
    ) -> Result<(), StackError> {
        let (ip, first) = (addr.ip(), addr.port());
        let taken = self
            .listener_ranges
            .iter()
            .any(|(a, f, l, p, _)| *a == ip && *p == proto && *f <= last && first <= *l)
            || (first..=last)
                .any(|port| self.listeners.contains_key(&(SocketAddr::new(ip, port), proto)));
        if taken {
            return Err(StackError::DuplicateListener(addr, proto));
        }
        self.listener_ranges.push((ip, first, last, proto, id));
        if !self.owned.contains(&ip) {
            self.owned.push(ip);
        }
        Ok(())
    }

    /// Hands packets to `addr` on `ports` for `proto` to L4 (full-NAT replies).
    pub fn reserve_l4_ports(
        &mut self,
        addr: IpAddr,
        proto: Proto,
        ports: Range<u16>,
    ) -> Result<(), StackError> {
        let eph = &self.tcp_config_ports();
        let overlaps = |a: &Range<u16>, b: &Range<u16>| a.start < b.end && b.start < a.end;
        if proto == Proto::Tcp && overlaps(&ports, eph) {
            return Err(StackError::PortOverlap(ports, addr));
        }
        if self.l4_ranges.iter().any(|(a, p, r)| *a == addr && *p == proto && overlaps(r, &ports)) {
            return Err(StackError::PortOverlap(ports, addr));
        }
        self.l4_ranges.push((addr, proto, ports));
        Ok(())
    }

    fn tcp_config_ports(&self) -> Range<u16> {
        self.tcp.ephemeral_ports()
    }

    /// True if this stack answers for `ip`.
    pub fn owns(&self, ip: IpAddr) -> bool {
        self.owned.contains(&ip)
    }

    fn on_link(&self, ip: IpAddr) -> bool {
        self.addrs.iter().any(|(a, p)| same_subnet(*a, ip, *p))
    }

    /// Counters.
    pub fn counters(&self) -> &StackCounters {
        &self.counters
    }

    /// TCP termination counters.
    pub fn tcp_stats(&self) -> TcpStats {
        self.tcp.stats()
    }

    /// The TCP terminator, which L7 drives through [`tcp::TcpApi`].
    pub fn tcp(&mut self) -> &mut TcpTerminator {
        &mut self.tcp
    }

    /// Moves the TCP events of the last polls to `out`.
    pub fn drain_tcp_events(&mut self, out: &mut Vec<tcp::TcpEvent>) {
        self.tcp.drain_events(out);
    }

    /// Moves the frames ready to send to `out`.
    pub fn take_tx(&mut self, out: &mut Vec<Mbuf>) {
        out.append(&mut self.tx);
    }

    /// Counts `pkt` as dropped for `reason` and returns its buffer.
    pub fn drop_packet(&mut self, pkt: Mbuf, reason: DropReason, pool: &mut Pool) {
        self.counters.drops[reason.index()] += 1;
        pool.free(pkt);
    }

    fn push_tx(&mut self, pkt: Mbuf) {
        self.counters.tx_frames += 1;
        self.tx.push(pkt);
    }

    /// Classifies one received frame. ARP, ICMP, TCP for L7 and everything
    /// malformed are consumed here; packets for L4 are handed back untouched.
    pub fn ingress(&mut self, now: Instant, mut pkt: Mbuf, pool: &mut Pool) -> Ingress {
        self.counters.rx_frames += 1;
        let f = pkt.data();
        if f.len() < ETH_LEN {
            self.drop_packet(pkt, DropReason::Truncated, pool);
            return Ingress::Done;
        }
        if f[0..6] != self.mac && f[0] & 1 == 0 {
            self.drop_packet(pkt, DropReason::NotOurMac, pool);
            return Ingress::Done;
        }
        let ethertype = get16(f, 12);
        if ethertype == ETHERTYPE_ARP {
            self.arp(now, pkt, pool);
            return Ingress::Done;
        }
        let ip = match parse_ip(f, ethertype) {
            Ok(ip) => ip,
            Err(r) => {
                self.drop_packet(pkt, r, pool);
                return Ingress::Done;
            }
        };
        let ndp = ip.proto == IPPROTO_ICMPV6 && is_solicited_node(ip.dst);
        if !(self.owns(ip.dst) || ndp) {
            self.drop_packet(pkt, DropReason::NotForUs, pool);
            return Ingress::Done;
        }
        pkt.truncate(ip.end);
        match ip.proto {
            IPPROTO_ICMP if ip.src.is_ipv4() => return self.icmp4(pkt, &ip, pool),
            IPPROTO_ICMPV6 if ip.src.is_ipv6() => return self.icmp6(now, pkt, &ip, pool),
            _ => {}
        }
        let offloaded = pkt.rx_csum() != RxCsum::Unchecked;
        let meta = match parse_transport(pkt.data(), &ip, !offloaded) {
            Ok(m) => m,
            Err(r) => {
                self.drop_packet(pkt, r, pool);
                return Ingress::Done;
            }
        };
        self.counters.rx_csum_offloaded += u64::from(offloaded);
        if let Some(&(kind, listener)) = self.listeners.get(&(meta.dst, meta.proto)) {
            if kind == ListenerKind::L4 {
                self.counters.to_l4 += 1;
                self.complete_csum(&mut pkt, &meta);
                return Ingress::L4 { pkt, listener, meta };
            }
            self.terminate(now, pkt, &meta, Some(listener), pool);
            return Ingress::Done;
        }
        let (dst, port) = (meta.dst.ip(), meta.dst.port());
        if let Some(&(.., listener)) = self
            .listener_ranges
            .iter()
            .find(|(a, f, l, p, _)| *a == dst && *p == meta.proto && *f <= port && port <= *l)
        {
            self.counters.to_l4 += 1;
            self.complete_csum(&mut pkt, &meta);
            return Ingress::L4 { pkt, listener, meta };
        }
        if self.l4_ranges.iter().any(|(a, p, r)| *a == dst && *p == meta.proto && r.contains(&port))
        {
            self.counters.to_l4 += 1;
            self.complete_csum(&mut pkt, &meta);
            return Ingress::L4Return { pkt, meta };
        }
        if meta.proto == Proto::Tcp && self.tcp.ephemeral_ports().contains(&port) {
            self.terminate(now, pkt, &meta, None, pool);
            return Ingress::Done;
        }
        self.reject(now, pkt, &meta, DropReason::NoListener, pool);
        Ingress::Done
    }

    fn terminate(
        &mut self,
        now: Instant,
        pkt: Mbuf,
        meta: &PacketMeta,
        listener: Option<ListenerId>,
        pool: &mut Pool,
    ) {
        match self.tcp.input(now, pkt, meta.src, meta.dst, meta.tcp_flags, listener) {
            term::Input::Queued => self.counters.tcp_terminated += 1,
            term::Input::Unknown(pkt) => self.reject(now, pkt, meta, DropReason::UnknownFlow, pool),
            term::Input::Full(pkt) => self.drop_packet(pkt, DropReason::TcpTableFull, pool),
            term::Input::Duplicate(pkt) => pool.free(pkt),
        }
    }

    /// Counts `pkt` as dropped for `reason` and answers it: a TCP segment with a
    /// reset (unless it is one), a UDP datagram with ICMP port unreachable.
    pub fn reject(
        &mut self,
        _now: Instant,
        mut pkt: Mbuf,
        meta: &PacketMeta,
        reason: DropReason,
        pool: &mut Pool,
    ) {
        self.counters.drops[reason.index()] += 1;
        match meta.proto {
            Proto::Tcp if meta.tcp_flags & tcp_flags::RST == 0 => {
                if build_rst(&mut pkt, meta, self.mac) {
                    self.counters.rst_sent += 1;
                    self.push_tx(pkt);
                } else {
                    pool.free(pkt);
                }
            }
            Proto::Udp => {
                let mut out = pool.alloc();
                if build_port_unreachable(&pkt, &mut out, meta, self.mac) {
                    self.counters.unreachable_sent += 1;
                    self.push_tx(out);
                } else {
                    pool.free(out);
                }
                pool.free(pkt);
            }
            Proto::Tcp => pool.free(pkt),
        }
    }

    /// Sends an IP packet (IP header at offset 14): fills the Ethernet header from
    /// the neighbor table, or holds the packet while the next hop is resolved.
    pub fn send_ip(&mut self, now: Instant, mut pkt: Mbuf, pool: &mut Pool) {
        let f = pkt.data();
        let dst: IpAddr = match f.get(ETH_LEN).map(|b| b >> 4) {
            Some(4) if f.len() >= ETH_LEN + 20 => IpAddr::from([f[30], f[31], f[32], f[33]]),
            Some(6) if f.len() >= ETH_LEN + 40 => {
                let mut a = [0u8; 16];
                a.copy_from_slice(&f[38..54]);
                IpAddr::from(a)
            }
            _ => {
                self.drop_packet(pkt, DropReason::Truncated, pool);
                return;
            }
        };
        let hop = if self.on_link(dst) {
            dst
        } else if let Some(gw) = self.gateway {
            gw
        } else {
            self.drop_packet(pkt, DropReason::NeighborUnreachable, pool);
            return;
        };
        if let Some(mac) = self.neigh.lookup(hop, now) {
            let et = ethertype_of(&pkt);
            put_eth(pkt.data_mut(), mac, self.mac, et);
            self.push_tx(pkt);
            return;
        }
        match self.neigh.queue(hop, pkt, now) {
            Queued::Waiting { request } => {
                if request {
                    self.solicit(hop, pool);
                }
            }
            Queued::Full(pkt) => self.drop_packet(pkt, DropReason::NeighborQueueFull, pool),
        }
    }

    /// Runs TCP termination and neighbor timers; what they send is queued for
    /// transmit.
    pub fn poll(&mut self, now: Instant, pool: &mut Pool) {
        let mut out = std::mem::take(&mut self.tcp_out);
        self.tcp.poll(now, pool, &mut out);
        for m in out.drain(..) {
            self.send_ip(now, m, pool);
        }
        self.tcp_out = out;
        let mut retry = std::mem::take(&mut self.retry);
        let mut dead = std::mem::take(&mut self.ready);
        self.neigh.poll(now, &mut retry, &mut dead);
        for ip in retry.drain(..) {
            self.solicit(ip, pool);
        }
        for m in dead.drain(..) {
            self.drop_packet(m, DropReason::NeighborUnreachable, pool);
        }
        self.retry = retry;
        self.ready = dead;
    }

    /// The next time `poll` has work to do without new frames.
    pub fn poll_at(&self) -> Option<Instant> {
        [self.tcp.poll_at(), self.neigh.poll_at()].into_iter().flatten().min()
    }

    fn learn(&mut self, ip: IpAddr, mac: [u8; 6], now: Instant) {
        let mut ready = std::mem::take(&mut self.ready);
        self.neigh.learn(ip, mac, now, &mut ready);
        for mut m in ready.drain(..) {
            let et = ethertype_of(&m);
            put_eth(m.data_mut(), mac, self.mac, et);
            self.push_tx(m);
        }
        self.ready = ready;
    }

    fn source_for(&self, dst: IpAddr) -> Option<IpAddr> {
        let same = |a: &&(IpAddr, u8)| a.0.is_ipv4() == dst.is_ipv4();
        self.addrs
            .iter()
            .filter(same)
            .find(|(a, p)| same_subnet(*a, dst, *p))
            .or(self.addrs.iter().find(same))
            .map(|a| a.0)
    }

    /// Announces every address this stack answers for (interface addresses
    /// and VIPs): a gratuitous ARP request (RFC 5227 announcement) for IPv4,
    /// an unsolicited neighbor advertisement to all nodes (RFC 4861 7.2.6)
    /// for IPv6. Sent when a dataplane starts on a real interface, so
    /// neighbors that knew another owner of a VIP (a failed-over instance)
    /// update their caches at once.
    pub fn announce(&mut self, pool: &mut Pool) {
        if !self.worker.is_primary() {
            return;
        }
        let owned = self.owned.clone();
        for ip in owned {
            let mut m = pool.alloc();
            m.reset();
            let ok = match ip {
                IpAddr::V4(a) => put_arp_request(&mut m, self.mac, a, a),
                IpAddr::V6(a) => match m.resize(ETH_LEN + 40 + 32) {
                    Some(f) => {
                        let all = IpAddr::from(ALL_NODES);
                        put_eth(f, [0x33, 0x33, 0, 0, 0, 1], self.mac, ETHERTYPE_IPV6);
                        put_ip_header(&mut f[ETH_LEN..], ip, all, IPPROTO_ICMPV6, 32);
                        f[ETH_LEN + 7] = 255;
                        let icmp = &mut f[ETH_LEN + 40..];
                        // Override flag set: replace what neighbors had.
                        icmp[..8].copy_from_slice(&[136, 0, 0, 0, 0x20, 0, 0, 0]);
                        icmp[8..24].copy_from_slice(&a.octets());
                        icmp[24] = 2;
                        icmp[25] = 1;
                        icmp[26..32].copy_from_slice(&self.mac);
                        fix_l4_checksum(icmp, ip, all, IPPROTO_ICMPV6, 2);
                        true
                    }
                    None => false,
                },
            };
            if ok {
                self.counters.announcements += 1;
                self.push_tx(m);
            } else {
                pool.free(m);
            }
        }
    }

    /// A frame L4 forwards carries a full checksum: a partial one (from a
    /// stack on this host that left it to the device) is completed here, in
    /// software, so L4's incremental update yields a valid one.
    fn complete_csum(&mut self, pkt: &mut Mbuf, meta: &PacketMeta) {
        if pkt.rx_csum() != RxCsum::Partial {
            return;
        }
        let (proto, off) = match meta.proto {
            Proto::Tcp => (IPPROTO_TCP, 16),
            Proto::Udp => (IPPROTO_UDP, 6),
        };
        let l4 = usize::from(meta.l4_offset);
        // The frame ends where its IP packet does (truncated at ingress).
        let seg = &mut pkt.data_mut()[l4..];
        if seg.len() >= off + 2 {
            fix_l4_checksum(seg, meta.src.ip(), meta.dst.ip(), proto, off);
            pkt.set_rx_csum(RxCsum::Unchecked);
            self.counters.rx_csum_completed += 1;
        }
    }

    /// Asks who has `ip`: an ARP request, or a neighbor solicitation for IPv6.
    fn solicit(&mut self, ip: IpAddr, pool: &mut Pool) {
        let Some(src) = self.source_for(ip) else { return };
        let mut m = pool.alloc();
        m.reset();
        let ok = match (src, ip) {
            (IpAddr::V4(s), IpAddr::V4(t)) => put_arp_request(&mut m, self.mac, s, t),
            (IpAddr::V6(s), IpAddr::V6(t)) => match m.resize(ETH_LEN + 40 + 32) {
                Some(f) => {
                    let t8 = t.octets();
                    let group = Ipv6Addr::from([
                        0xff, 0x02, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 0xff, t8[13], t8[14], t8[15],
                    ]);
                    put_eth(
                        f,
                        [0x33, 0x33, 0xff, t8[13], t8[14], t8[15]],
                        self.mac,
                        ETHERTYPE_IPV6,
                    );
                    put_ip_header(&mut f[ETH_LEN..], s.into(), group.into(), IPPROTO_ICMPV6, 32);
                    f[ETH_LEN + 7] = 255;
                    let icmp = &mut f[ETH_LEN + 40..];
                    icmp[..8].copy_from_slice(&[135, 0, 0, 0, 0, 0, 0, 0]);
                    icmp[8..24].copy_from_slice(&t8);
                    icmp[24] = 1;
                    icmp[25] = 1;
                    icmp[26..32].copy_from_slice(&self.mac);
                    fix_l4_checksum(icmp, s.into(), group.into(), IPPROTO_ICMPV6, 2);
                    true
                }
                None => false,
            },
            _ => false,
        };
        if ok {
            self.counters.arp_requests_sent += 1;
            self.push_tx(m);
        } else {
            pool.free(m);
        }
    }

    fn arp(&mut self, now: Instant, mut pkt: Mbuf, pool: &mut Pool) {
        let f = pkt.data();
        if f.len() < 42 || f[14..20] != [0, 1, 8, 0, 6, 4] {
            self.drop_packet(pkt, DropReason::BadArp, pool);
            return;
        }
        let op = get16(f, 20);
        let mut sha = [0u8; 6];
        sha.copy_from_slice(&f[22..28]);
        let spa = IpAddr::from([f[28], f[29], f[30], f[31]]);
        let tpa = IpAddr::from([f[38], f[39], f[40], f[41]]);
        let for_us = self.owns(tpa);
        let sender_ok = sha[0] & 1 == 0 && !spa.is_unspecified() && self.on_link(spa);
        if sender_ok && (for_us || op == 2) {
            self.learn(spa, sha, now);
        }
        if op == 1 && for_us && !self.worker.is_primary() {
            // Another worker answers; this one only learned the sender.
            pool.free(pkt);
        } else if op == 1 && for_us {
            pkt.truncate(42);
            let mac = self.mac;
            let f = pkt.data_mut();
            put_eth(f, sha, mac, ETHERTYPE_ARP);
            put16(f, 20, 2);
            let mut tpa4 = [0u8; 4];
            tpa4.copy_from_slice(&f[38..42]);
            let mut spa4 = [0u8; 4];
            spa4.copy_from_slice(&f[28..32]);
            f[32..38].copy_from_slice(&sha);
            f[38..42].copy_from_slice(&spa4);
            f[22..28].copy_from_slice(&mac);
            f[28..32].copy_from_slice(&tpa4);
            self.counters.arp_replies_sent += 1;
            self.push_tx(pkt);
        } else if op == 2 && sender_ok {
            pool.free(pkt);
        } else {
            self.drop_packet(pkt, DropReason::BadArp, pool);
        }
    }

    fn icmp4(&mut self, mut pkt: Mbuf, ip: &IpInfo, pool: &mut Pool) -> Ingress {
        let f = pkt.data();
        let Some(msg) = f.get(ip.l4_offset..ip.end) else {
            self.drop_packet(pkt, DropReason::Truncated, pool);
            return Ingress::Done;
        };
        if msg.len() < 8 {
            self.drop_packet(pkt, DropReason::Truncated, pool);
            return Ingress::Done;
        }
        if fold(sum(0, msg)) != 0 {
            self.drop_packet(pkt, DropReason::BadL4Checksum, pool);
            return Ingress::Done;
        }
        // Destination unreachable (fragmentation needed among them), time
        // exceeded, parameter problem: errors about a flow L4 may own.
        if matches!(msg[0], 3 | 11 | 12) {
            if let Some(err) = self.icmp_error(msg, ip.l4_offset, 4) {
                self.counters.to_l4 += 1;
                return Ingress::L4Icmp { pkt, err };
            }
            self.drop_packet(pkt, DropReason::IcmpIgnored, pool);
            return Ingress::Done;
        }
        if msg[0] != 8 || msg[1] != 0 {
            self.drop_packet(pkt, DropReason::IcmpIgnored, pool);
            return Ingress::Done;
        }
        // Echo reply in place: swap addresses, type 0, checksums again.
        let mac = self.mac;
        let l4 = ip.l4_offset;
        let f = pkt.data_mut();
        swap_macs(f, mac);
        let hdr_len = l4 - ETH_LEN;
        let ipb = &mut f[ETH_LEN..];
        for k in 0..4 {
            ipb.swap(12 + k, 16 + k);
        }
        ipb[8] = 64;
        fix_ipv4_checksum(&mut ipb[..hdr_len]);
        let msg = &mut f[l4..];
        msg[0] = 0;
        put16(msg, 2, 0);
        let c = fold(sum(0, msg));
        put16(msg, 2, c);
        self.counters.icmp_echo_replies += 1;
        self.push_tx(pkt);
        Ingress::Done
    }

    /// Reads the packet quoted by an ICMP error (RFC 792: its IP header and at
    /// least 8 bytes) and says which L4 flow it is about, if any: one of our
    /// SNAT ports (an error from the backend side) or an L4 VIP (from a client).
    ///
    /// ICMPv6 errors quote an IPv6 header (RFC 4443 2.4); a quoted packet with
    /// extension headers before TCP/UDP is not looked into. The quote must be
    /// of the error's own IP `version`: ICMPv4 about an IPv6 packet (or the
    /// other way round) is about no flow of ours, and L4 rewrites the error
    /// as one family.
    fn icmp_error(&self, msg: &[u8], icmp_offset: usize, version: u8) -> Option<IcmpError> {
        let q = msg.get(8..)?;
        let quoted = q.first()? >> 4;
        if quoted != version {
            return None;
        }
        let (hdr, proto, src, dst) = match quoted {
            4 if q.len() >= 28 => {
                let ihl = usize::from(q[0] & 0x0f) * 4;
                if ihl < 20 {
                    return None;
                }
                let s = IpAddr::from([q[12], q[13], q[14], q[15]]);
                let d = IpAddr::from([q[16], q[17], q[18], q[19]]);
                (ihl, q[9], s, d)
            }
            6 if q.len() >= 48 => {
                let mut s = [0u8; 16];
                let mut d = [0u8; 16];
                s.copy_from_slice(&q[8..24]);
                d.copy_from_slice(&q[24..40]);
                (40, q[6], IpAddr::from(s), IpAddr::from(d))
            }
            _ => return None,
        };
        let ports = q.get(hdr..hdr + 8)?;
        let proto = match proto {
            IPPROTO_TCP => Proto::Tcp,
            IPPROTO_UDP => Proto::Udp,
            _ => return None,
        };
        let src = SocketAddr::new(src, get16(ports, 0));
        let dst = SocketAddr::new(dst, get16(ports, 2));
        let ihl = hdr;
        let in_range = self
            .listener_ranges
            .iter()
            .find(|(a, f, l, p, _)| {
                *a == src.ip() && *p == proto && *f <= src.port() && src.port() <= *l
            })
            .map(|r| r.4);
        let listener = match self.listeners.get(&(src, proto)) {
            Some(&(ListenerKind::L4, id)) => Some(id),
            Some(_) => return None,
            None if in_range.is_some() => in_range,
            None => {
                let ours = self
                    .l4_ranges
                    .iter()
                    .any(|(a, p, r)| *a == src.ip() && *p == proto && r.contains(&src.port()));
                if !ours {
                    return None;
                }
                None
            }
        };
        Some(IcmpError {
            icmp_offset: icmp_offset as u16,
            inner_ip_offset: (icmp_offset + 8) as u16,
            inner_l4_offset: (icmp_offset + 8 + ihl) as u16,
            proto,
            inner_src: src,
            inner_dst: dst,
            listener,
        })
    }

    fn icmp6(&mut self, now: Instant, mut pkt: Mbuf, ip: &IpInfo, pool: &mut Pool) -> Ingress {
        let f = pkt.data();
        let Some(msg) = f.get(ip.l4_offset..ip.end) else {
            self.drop_packet(pkt, DropReason::Truncated, pool);
            return Ingress::Done;
        };
        if msg.len() < 8 {
            self.drop_packet(pkt, DropReason::Truncated, pool);
            return Ingress::Done;
        }
        if fold(sum(pseudo(ip.src, ip.dst, IPPROTO_ICMPV6, msg.len()), msg)) != 0 {
            self.drop_packet(pkt, DropReason::BadL4Checksum, pool);
            return Ingress::Done;
        }
        let mac = self.mac;
        match (msg[0], msg[1]) {
            (128, 0) if self.owns(ip.dst) => {
                let l4 = ip.l4_offset;
                let f = pkt.data_mut();
                swap_macs(f, mac);
                for k in 0..16 {
                    f.swap(ETH_LEN + 8 + k, ETH_LEN + 24 + k);
                }
                f[ETH_LEN + 7] = 64;
                f[l4] = 129;
                fix_l4_checksum(&mut f[l4..], ip.dst, ip.src, IPPROTO_ICMPV6, 2);
                self.counters.icmp_echo_replies += 1;
                self.push_tx(pkt);
            }
            // Neighbor solicitation (RFC 4861 4.3) for an owned address.
            (135, 0) if msg.len() >= 24 && f.get(ETH_LEN + 7) == Some(&255) => {
                let mut t = [0u8; 16];
                t.copy_from_slice(&msg[8..24]);
                let target = IpAddr::from(t);
                let src_ll = ll_option(&msg[24..], 1);
                if !self.owns(target) {
                    self.drop_packet(pkt, DropReason::IcmpIgnored, pool);
                    return Ingress::Done;
                }
                if let Some(ll) = src_ll
                    && !ip.src.is_unspecified()
                {
                    self.learn(ip.src, ll, now);
                }
                if !self.worker.is_primary() {
                    pool.free(pkt);
                    return Ingress::Done;
                }
                let dst_ip = if ip.src.is_unspecified() { IpAddr::from(ALL_NODES) } else { ip.src };
                let dst_mac = match (src_ll, dst_ip) {
                    (Some(ll), _) => ll,
                    (None, IpAddr::V6(d)) => multicast_mac(d),
                    _ => [0xff; 6],
                };
                pkt.truncate(0);
                let Some(f) = pkt.resize(ETH_LEN + 40 + 32) else {
                    pool.free(pkt);
                    return Ingress::Done;
                };
                put_eth(f, dst_mac, mac, ETHERTYPE_IPV6);
                put_ip_header(&mut f[ETH_LEN..], target, dst_ip, IPPROTO_ICMPV6, 32);
                f[ETH_LEN + 7] = 255;
                let icmp = &mut f[ETH_LEN + 40..];
                icmp[..8].copy_from_slice(&[136, 0, 0, 0, 0x60, 0, 0, 0]);
                icmp[8..24].copy_from_slice(&t);
                icmp[24] = 2;
                icmp[25] = 1;
                icmp[26..32].copy_from_slice(&mac);
                fix_l4_checksum(icmp, target, dst_ip, IPPROTO_ICMPV6, 2);
                self.counters.arp_replies_sent += 1;
                self.push_tx(pkt);
            }
            // Neighbor advertisement (RFC 4861 4.4).
            (136, 0) if msg.len() >= 24 => {
                let mut t = [0u8; 16];
                t.copy_from_slice(&msg[8..24]);
                let target = IpAddr::from(t);
                match ll_option(&msg[24..], 2) {
                    Some(ll) if self.on_link(target) => {
                        self.learn(target, ll, now);
                        pool.free(pkt);
                    }
                    _ => self.drop_packet(pkt, DropReason::IcmpIgnored, pool),
                }
            }
            // Destination unreachable, packet too big, time exceeded,
            // parameter problem (RFC 4443 3): errors about a flow L4 may own.
            (1..=4, _) => match self.icmp_error(msg, ip.l4_offset, 6) {
                Some(err) => {
                    self.counters.to_l4 += 1;
                    return Ingress::L4Icmp { pkt, err };
                }
                None => self.drop_packet(pkt, DropReason::IcmpIgnored, pool),
            },
            _ => self.drop_packet(pkt, DropReason::IcmpIgnored, pool),
        }
        Ingress::Done
    }
}

/// Makes `m` a broadcast ARP request from `mac`/`spa` for `tpa` (with
/// `spa == tpa`, an RFC 5227 announcement); false if it does not fit.
fn put_arp_request(m: &mut Mbuf, mac: [u8; 6], spa: Ipv4Addr, tpa: Ipv4Addr) -> bool {
    let Some(f) = m.resize(42) else { return false };
    put_eth(f, [0xff; 6], mac, ETHERTYPE_ARP);
    f[14..22].copy_from_slice(&[0, 1, 8, 0, 6, 4, 0, 1]);
    f[22..28].copy_from_slice(&mac);
    f[28..32].copy_from_slice(&spa.octets());
    f[32..38].fill(0);
    f[38..42].copy_from_slice(&tpa.octets());
    true
}

const ALL_NODES: [u8; 16] = [0xff, 2, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1];

fn is_solicited_node(ip: IpAddr) -> bool {
    matches!(ip, IpAddr::V6(a) if a.octets()[..13] == [0xff, 2, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 0xff])
}

fn multicast_mac(ip: Ipv6Addr) -> [u8; 6] {
    let o = ip.octets();
    [0x33, 0x33, o[12], o[13], o[14], o[15]]
}

/// The link-layer address option of `kind` (1 source, 2 target) in NDP options.
fn ll_option(mut opts: &[u8], kind: u8) -> Option<[u8; 6]> {
    while opts.len() >= 8 {
        let len = usize::from(opts[1]) * 8;
        if len == 0 || len > opts.len() {
            return None;
        }
        if opts[0] == kind && len >= 8 {
            let mut mac = [0u8; 6];
            mac.copy_from_slice(&opts[2..8]);
            return Some(mac);
        }
        opts = &opts[len..];
    }
    None
}

fn same_subnet(a: IpAddr, b: IpAddr, prefix: u8) -> bool {
    match (a, b) {
        (IpAddr::V4(a), IpAddr::V4(b)) => {
            let mask = if prefix == 0 { 0 } else { u32::MAX << (32 - u32::from(prefix.min(32))) };
            u32::from(a) & mask == u32::from(b) & mask
        }
        (IpAddr::V6(a), IpAddr::V6(b)) => {
            let mask =
                if prefix == 0 { 0 } else { u128::MAX << (128 - u32::from(prefix.min(128))) };
            u128::from(a) & mask == u128::from(b) & mask
        }
        _ => false,
    }
}

fn ethertype_of(m: &Mbuf) -> u16 {
    match m.data().get(ETH_LEN).map(|b| b >> 4) {
        Some(6) => ETHERTYPE_IPV6,
        _ => ETHERTYPE_IPV4,
    }
}

fn swap_macs(f: &mut [u8], mac: [u8; 6]) {
    if f.len() >= ETH_LEN {
        let (d, s) = f.split_at_mut(6);
        d.copy_from_slice(&s[..6]);
        s[..6].copy_from_slice(&mac);
    }
}

/// Turns a TCP segment into the reset that answers it (RFC 9293 3.10.7.1),
/// in place, addressed back to its sender.
fn build_rst(pkt: &mut Mbuf, meta: &PacketMeta, mac: [u8; 6]) -> bool {
    use tcp_flags::{ACK, FIN, RST, SYN};
    let l4 = usize::from(meta.l4_offset);
    let f = pkt.data();
    if f.len() < l4 + 20 {
        return false;
    }
    let in_seq = get32(f, l4 + 4);
    let in_ack = get32(f, l4 + 8);
    let fl = meta.tcp_flags;
    let (seq, ack, flags) = if fl & ACK != 0 {
        (in_ack, 0, RST)
    } else {
        let len = u32::from(meta.payload_len) + u32::from(fl & SYN != 0) + u32::from(fl & FIN != 0);
        (0, in_seq.wrapping_add(len), RST | ACK)
    };
    let (src, dst) = (meta.dst, meta.src);
    let hdr = if src.is_ipv4() { 20 } else { 40 };
    let total = ETH_LEN + hdr + 20;
    if total > f.len() {
        return false;
    }
    pkt.truncate(total);
    let f = pkt.data_mut();
    swap_macs(f, mac);
    put_ip_header(&mut f[ETH_LEN..], src.ip(), dst.ip(), IPPROTO_TCP, 20);
    let t = &mut f[ETH_LEN + hdr..];
    put16(t, 0, src.port());
    put16(t, 2, dst.port());
    put32(t, 4, seq);
    put32(t, 8, ack);
    t[12] = 0x50;
    t[13] = flags;
    put16(t, 14, 0);
    put16(t, 18, 0);
    fix_l4_checksum(t, src.ip(), dst.ip(), IPPROTO_TCP, 16);
    true
}

/// Writes into `out` the ICMP destination-unreachable, port-unreachable message
/// (RFC 792, RFC 4443 3.1) that answers the UDP datagram in `pkt`.
fn build_port_unreachable(pkt: &Mbuf, out: &mut Mbuf, meta: &PacketMeta, mac: [u8; 6]) -> bool {
    let orig = pkt.data();
    let Some(quoted) = orig.get(ETH_LEN..) else { return false };
    let quoted = &quoted[..quoted.len().min(64)];
    let (src, dst) = (meta.dst.ip(), meta.src.ip());
    let (hdr, proto, kind, code) =
        if src.is_ipv4() { (20, IPPROTO_ICMP, 3, 3) } else { (40, IPPROTO_ICMPV6, 1, 4) };
    let icmp_len = 8 + quoted.len();
    out.reset();
    let Some(f) = out.resize(ETH_LEN + hdr + icmp_len) else { return false };
    f[0..6].copy_from_slice(&orig[6..12]);
    f[6..12].copy_from_slice(&mac);
    put16(f, 12, if src.is_ipv4() { ETHERTYPE_IPV4 } else { ETHERTYPE_IPV6 });
    put_ip_header(&mut f[ETH_LEN..], src, dst, proto, icmp_len);
    let m = &mut f[ETH_LEN + hdr..];
    m[..8].copy_from_slice(&[kind, code, 0, 0, 0, 0, 0, 0]);
    m[8..].copy_from_slice(quoted);
    if src.is_ipv4() {
        let c = fold(sum(0, m));
        put16(m, 2, c);
    } else {
        fix_l4_checksum(m, src, dst, IPPROTO_ICMPV6, 2);
    }
    true
}
