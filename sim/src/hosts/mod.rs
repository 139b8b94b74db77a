//! Simulated hosts: each is a small smoltcp stack on Ethernet (it does its own ARP)
//! behind a sim port, plus an application: an HTTP/1.1 origin and load-generating
//! clients (HTTP/1.1 keep-alive, RFC 9112, and HTTP/2 with prior knowledge,
//! RFC 9113, and HTTP/1.1 over TLS), a TCP bulk client that checks SHA-256 digests end to end, and
//! an echo server.

mod bulk;
mod h2c;
mod http;
mod https;
mod tls;
mod udp;

use std::net::IpAddr;

use smoltcp::iface::{Config, Interface, SocketHandle, SocketSet};
use smoltcp::phy::{self, Device, DeviceCapabilities, Medium};
use smoltcp::socket::tcp;
use smoltcp::wire::{EthernetAddress, HardwareAddress, IpAddress, IpCidr, IpEndpoint};
use switchyard_nic::sim::{SimPort, SimWire, pair};

pub use bulk::{BulkClient, BulkConfig, BulkStats, EchoServer, EchoStats};
pub use h2c::{H2Client, H2Shared, Http2};
pub use http::{
    Client, ClientStats, Exchange, Http1, HttpClient, HttpClientConfig, HttpServer, OriginSize,
    Response, ServerStats, Session, body_bytes,
};
pub use https::{Https1, HttpsClient, HttpsShared};
pub use tls::ClientTls;
pub use udp::{UdpClient, UdpClientConfig, UdpClientStats, UdpEchoServer, UdpEchoStats};

use crate::{Duration, Instant};

/// Where a simulated host sits on the network.
#[derive(Clone, Debug)]
pub struct HostConfig {
    /// Node name (also the name its link is attached under).
    pub name: String,
    /// Ethernet address.
    pub mac: [u8; 6],
    /// IP address.
    pub ip: IpAddr,
    /// Prefix length of its subnet.
    pub prefix: u8,
    /// Default gateway, if any.
    pub gateway: Option<IpAddr>,
    /// Addresses the host also serves but never answers ARP for, and
    /// IP-in-IP tunnels it terminates: a backend behind a DSR listener, with
    /// the VIP on its loopback (Linux `arp_ignore`).
    pub vips: Vec<IpAddr>,
}

/// The smoltcp device of a host: frames to and from its sim port. It drops a
/// retransmitted SYN for a connection that is already half-open or open: smoltcp
/// would give it to the first listening socket on the port, not to its own.
struct PortDevice {
    port: SimPort,
    busy: Vec<(IpEndpoint, IpEndpoint)>,
    ip: IpAddr,
    vips: Vec<IpAddr>,
}

impl PortDevice {
    /// What the host does with a received frame before smoltcp sees it: drop
    /// ARP requests for VIPs and retransmitted SYNs of known connections, and
    /// strip the outer header of IP-in-IP packets addressed to the host.
    fn filter(&self, mut f: Vec<u8>) -> Option<Vec<u8>> {
        if f.len() >= 42 && f[12..14] == [8, 6] {
            let target = IpAddr::from([f[38], f[39], f[40], f[41]]);
            return (!self.vips.contains(&target)).then_some(f);
        }
        // IPv4 tunnels to the host: IP-in-IP (protocol 4), and GUE variant 1
        // (UDP to port 6080 carrying an IP packet directly).
        if f.len() >= 34
            && f[12..14] == [8, 0]
            && (f[23] == 4 || f[23] == 17)
            && !self.vips.is_empty()
        {
            let dst = IpAddr::from([f[30], f[31], f[32], f[33]]);
            let ihl = usize::from(f[14] & 0x0f) * 4;
            let gue = f[23] == 17 && f.get(14 + ihl + 2..14 + ihl + 4) == Some(&[0x17, 0xc0][..]);
            if dst == self.ip && (f[23] == 4 || gue) {
                let outer = ihl + if gue { 8 } else { 0 };
                if f.len() < 14 + outer + 20 {
                    return None;
                }
                f.drain(14..14 + outer);
            }
        }
        if syn_tuple(&f).is_some_and(|t| self.busy.contains(&t)) {
            return None;
        }
        Some(f)
    }
}

/// The (local, remote) endpoints of a pure TCP SYN in an IPv4 Ethernet frame.
fn syn_tuple(f: &[u8]) -> Option<(IpEndpoint, IpEndpoint)> {
    if f.len() < 34 || f[12..14] != [8, 0] || f[23] != 6 {
        return None;
    }
    let ihl = usize::from(f[14] & 0x0f) * 4;
    let t = f.get(14 + ihl..14 + ihl + 14)?;
    if t[13] & 0x17 != 0x02 {
        return None;
    }
    let src = IpAddress::v4(f[26], f[27], f[28], f[29]);
    let dst = IpAddress::v4(f[30], f[31], f[32], f[33]);
    let (sp, dp) = (u16::from_be_bytes([t[0], t[1]]), u16::from_be_bytes([t[2], t[3]]));
    Some((IpEndpoint::new(dst, dp), IpEndpoint::new(src, sp)))
}

struct Rx(Vec<u8>);
struct Tx<'a>(&'a mut SimPort);

impl phy::RxToken for Rx {
    fn consume<R, F: FnOnce(&[u8]) -> R>(self, f: F) -> R {
        f(&self.0)
    }
}

impl phy::TxToken for Tx<'_> {
    fn consume<R, F: FnOnce(&mut [u8]) -> R>(self, len: usize, f: F) -> R {
        let mut v = vec![0u8; len];
        let r = f(&mut v);
        self.0.send_frame(v);
        r
    }
}

impl Device for PortDevice {
    type RxToken<'a> = Rx;
    type TxToken<'a> = Tx<'a>;

    fn receive(&mut self, _: Instant) -> Option<(Rx, Tx<'_>)> {
        loop {
            let f = self.port.recv_frame()?;
            if let Some(f) = self.filter(f) {
                return Some((Rx(f), Tx(&mut self.port)));
            }
        }
    }

    fn transmit(&mut self, _: Instant) -> Option<Tx<'_>> {
        Some(Tx(&mut self.port))
    }

    fn capabilities(&self) -> DeviceCapabilities {
        let mut c = DeviceCapabilities::default();
        c.medium = Medium::Ethernet;
        c.max_transmission_unit = 1514;
        c
    }
}

/// A host's network stack.
struct Host {
    name: String,
    iface: Interface,
    dev: PortDevice,
    sockets: SocketSet<'static>,
    next: Option<Instant>,
}

impl Host {
    fn new(cfg: &HostConfig) -> (Host, SimWire) {
        let (port, wire) = pair(cfg.mac, switchyard_nic::sim::RING);
        let mut dev = PortDevice { port, busy: Vec::new(), ip: cfg.ip, vips: cfg.vips.clone() };
        let mut config = Config::new(HardwareAddress::Ethernet(EthernetAddress(cfg.mac)));
        config.random_seed = match cfg.ip {
            IpAddr::V4(a) => u64::from(u32::from(a)),
            IpAddr::V6(a) => u128::from(a) as u64,
        };
        let mut iface = Interface::new(config, &mut dev, Instant::from_millis(0));
        iface.update_ip_addrs(|a| {
            let _ = a.push(IpCidr::new(IpAddress::from(cfg.ip), cfg.prefix));
            for v in &cfg.vips {
                let _ =
                    a.push(IpCidr::new(IpAddress::from(*v), if v.is_ipv4() { 32 } else { 128 }));
            }
        });
        match cfg.gateway {
            Some(IpAddr::V4(g)) => {
                let _ = iface.routes_mut().add_default_ipv4_route(g);
            }
            Some(IpAddr::V6(g)) => {
                let _ = iface.routes_mut().add_default_ipv6_route(g);
            }
            None => {}
        }
        let host = Host {
            name: cfg.name.clone(),
            iface,
            dev,
            sockets: SocketSet::new(Vec::new()),
            next: None,
        };
        (host, wire)
    }

    fn poll(&mut self, now: Instant) {
        let busy = &mut self.dev.busy;
        busy.clear();
        for (_, s) in self.sockets.iter() {
            if let smoltcp::socket::Socket::Tcp(t) = s
                && t.state() != tcp::State::Listen
                && let (Some(l), Some(r)) = (t.local_endpoint(), t.remote_endpoint())
            {
                busy.push((l, r));
            }
        }
        self.iface.poll(now, &mut self.dev, &mut self.sockets);
        self.next = self.iface.poll_at(now, &self.sockets);
    }

    fn poll_at(&self, now: Instant) -> Option<Instant> {
        if self.dev.port.has_rx() {
            return Some(now);
        }
        self.next
    }

    fn socket(&mut self, h: SocketHandle) -> &mut tcp::Socket<'static> {
        self.sockets.get_mut::<tcp::Socket>(h)
    }

    fn new_socket(&mut self, buf: usize) -> SocketHandle {
        let mut s = tcp::Socket::new(
            tcp::SocketBuffer::new(vec![0; buf]),
            tcp::SocketBuffer::new(vec![0; buf]),
        );
        s.set_nagle_enabled(false);
        s.set_timeout(Some(Duration::from_secs(60)));
        self.sockets.add(s)
    }
}

/// Keeps `min` sockets listening on `port` (smoltcp has no backlog: a listening
/// socket becomes the connection it accepts). Returns how many became
/// connections since the last call, and pushes them onto `active`.
fn refill_listeners(
    host: &mut Host,
    port: u16,
    listening: &mut Vec<SocketHandle>,
    active: &mut Vec<SocketHandle>,
    min: usize,
    buf: usize,
) -> u64 {
    let mut accepted = 0;
    listening.retain(|h| {
        let st = host.sockets.get::<tcp::Socket>(*h).state();
        if st == tcp::State::Listen {
            true
        } else {
            active.push(*h);
            accepted += 1;
            false
        }
    });
    while listening.len() < min {
        let h = host.new_socket(buf);
        if host.socket(h).listen(port).is_err() {
            host.sockets.remove(h);
            break;
        }
        listening.push(h);
    }
    accepted
}
