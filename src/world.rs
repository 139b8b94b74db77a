//! The simulated world a `nic = "sim"` configuration runs in: the load balancer's
//! worker on a sim port, a simulated backend host for every pool member (an HTTP
//! origin behind L7 routes, an echo server behind L4 listeners), and the client
//! populations of the `[sim]` section, all on one switch.

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::path::Path;
use std::rc::Rc;

use std::sync::Arc;
use switchyard_nic::sim::{RING, SimPort, pair};

use switchyard_sim::hosts::{
    BulkClient, BulkConfig, BulkStats, ClientStats, ClientTls, EchoServer, EchoStats, H2Client,
    HostConfig, HttpClient, HttpClientConfig, HttpServer, HttpsClient, OriginSize, ServerStats,
    UdpClient, UdpClientConfig, UdpClientStats, UdpEchoServer, UdpEchoStats,
};
use switchyard_sim::{Duration, Instant, LinkConfig, LinkId, Network, Node};

use crate::config::{Config, Mode, SimClientKind};
use crate::worker::{BuildError, Worker};

/// A simulated backend host and what it counted.
pub enum BackendHost {
    /// An HTTP origin.
    Http(Rc<RefCell<ServerStats>>),
    /// A TCP echo server.
    Echo(Rc<RefCell<EchoStats>>),
    /// A UDP echo server.
    UdpEcho(Rc<RefCell<UdpEchoStats>>),
}

impl BackendHost {
    /// What the host served: HTTP requests, TCP connections or UDP datagrams.
    pub fn served(&self) -> u64 {
        match self {
            BackendHost::Http(s) => s.borrow().requests,
            BackendHost::Echo(s) => s.borrow().connections,
            BackendHost::UdpEcho(s) => s.borrow().datagrams,
        }
    }
}

/// A simulated client population and what it counted.
pub enum ClientHost {
    /// HTTP/1.1 requests.
    Http(Rc<RefCell<ClientStats>>),
    /// HTTP/2 requests (h2c, or over TLS).
    H2c(Rc<RefCell<ClientStats>>),
    /// Bulk streams.
    Bulk(Rc<RefCell<BulkStats>>),
    /// UDP requests.
    Udp(Rc<RefCell<UdpClientStats>>),
}

impl ClientHost {
    /// True when the client has finished everything it started.
    pub fn done(&self) -> bool {
        match self {
            ClientHost::Http(s) | ClientHost::H2c(s) => s.borrow().done(),
            ClientHost::Bulk(s) => s.borrow().done(),
            ClientHost::Udp(s) => s.borrow().done(),
        }
    }

    /// Errors of any kind the client saw: failed or timed-out requests and
    /// streams, and wrong bodies.
    pub fn errors(&self) -> u64 {
        match self {
            ClientHost::Http(s) | ClientHost::H2c(s) => {
                let s = s.borrow();
                s.errors + s.bad_bodies + s.timeouts
            }
            ClientHost::Bulk(s) => {
                let s = s.borrow();
                s.streams_failed + s.timeouts
            }
            ClientHost::Udp(s) => {
                let s = s.borrow();
                s.bad + s.lost
            }
        }
    }
}

/// Heap bytes the load balancer's turns allocated and did not free, as read
/// by a probe a benchmark installs (see [`World::set_heap_probe`]).
#[derive(Default)]
pub struct HeapMeter {
    probe: std::cell::Cell<Option<fn() -> usize>>,
    net: std::cell::Cell<i64>,
}

impl HeapMeter {
    /// Bytes allocated minus bytes freed during the load balancer's turns
    /// since the probe was installed. Frames cross the turns' boundary (the
    /// sim port frees the frames hosts allocated and allocates the frames
    /// they free); [`World::lb_heap_bytes`] corrects for them.
    pub fn turns_net(&self) -> i64 {
        self.net.get()
    }
}

/// The load balancer as a node of the simulated network.
struct LbNode(
    Rc<RefCell<Worker<SimPort>>>,
    Rc<std::cell::Cell<std::time::Duration>>,
    Rc<HeapMeter>,
);

impl Node for LbNode {
    fn name(&self) -> &str {
        "switchyard"
    }

    fn poll(&mut self, now: Instant) {
        let probe = self.2.probe.get();
        let heap = probe.map_or(0, |p| p());
        let t = std::time::Instant::now();
        let mut w = self.0.borrow_mut();
        // Drain what arrived in full bursts before yielding to the network.
        for _ in 0..64 {
            if w.poll(now) < switchyard_nic::BURST {
                break;
            }
        }
        self.1.set(self.1.get() + t.elapsed());
        if let Some(p) = probe {
            let d = p() as i64 - heap as i64;
            self.2.net.set(self.2.net.get() + d);
        }
    }

    fn poll_at(&self, now: Instant) -> Option<Instant> {
        self.0.borrow().dp.poll_at(now)
    }
}

/// Errors building the world.
#[derive(Debug, thiserror::Error)]
pub enum WorldError {
    /// The configuration has no `[sim]` section.
    #[error("the configuration has no [sim] section")]
    NoSim,
    /// The dataplane refused the configuration.
    #[error(transparent)]
    Build(#[from] BuildError),
    /// Two simulated hosts would share an address.
    #[error("simulated hosts need distinct addresses: {0} is used twice")]
    DuplicateHost(IpAddr),
    /// A pcap tap could not be created.
    #[error("pcap tap {0}: {1}")]
    Tap(String, std::io::Error),
    /// An `https` client's CA could not be loaded.
    #[error("sim client {0}: {1}")]
    ClientTls(String, String),
}

/// The rustls configuration of a simulated HTTPS or HTTP/2-over-TLS client:
/// the CA file's certificates as its roots, the one TLS version asked for,
/// `alpn` the one protocol offered.
fn sim_tls_client(
    name: &str,
    t: &crate::config::SimTls,
    alpn: &[u8],
) -> Result<ClientTls, WorldError> {
    let bad = |e: String| WorldError::ClientTls(name.to_string(), e);
    let roots = switchyard_tls::ca_roots(&t.ca).map_err(|e| bad(e.to_string()))?;
    let version = if t.tls12 { &rustls::version::TLS12 } else { &rustls::version::TLS13 };
    let mut cfg = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::aws_lc_rs::default_provider(),
    ))
    .with_protocol_versions(&[version])
    .map_err(|e| bad(e.to_string()))?
    .with_root_certificates(roots)
    .with_no_client_auth();
    // The protocol the client speaks and nothing else, so that a listener
    // that does not agree to it fails the handshake.
    cfg.alpn_protocols = vec![alpn.to_vec()];
    let sni = rustls::pki_types::ServerName::try_from(t.server_name.clone())
        .map_err(|e| bad(format!("server_name `{}`: {e}", t.server_name)))?;
    Ok((Arc::new(cfg), sni))
}

/// The running simulation.
pub struct World {
    /// The network.
    pub net: Network,
    /// The load balancer's worker.
    pub lb: Rc<RefCell<Worker<SimPort>>>,
    /// The configuration it runs.
    pub cfg: Config,
    /// Backend hosts, by pool index then backend index.
    pub backends: Vec<Vec<BackendHost>>,
    /// Client populations in `[sim]` order.
    pub clients: Vec<ClientHost>,
    /// The load balancer's link to the switch.
    pub lb_link: LinkId,
    /// Each client population's link.
    pub client_links: Vec<LinkId>,
    /// Each backend's link, by pool index then backend index.
    pub backend_links: Vec<Vec<LinkId>>,
    /// When the clients started.
    pub start: Instant,
    /// Wall time spent inside the load balancer's turns (its share of the
    /// simulation's CPU, the hosts excluded).
    pub lb_busy: Rc<std::cell::Cell<std::time::Duration>>,
    /// The load balancer's heap, when a probe is installed.
    pub lb_heap: Rc<HeapMeter>,
    /// The port's received and sent bytes when the probe was installed.
    heap_frames: (u64, u64),
    /// When clients stop starting new work (start + `sim.seconds`).
    pub end: Instant,
    /// `[[sim.admin]]` commands carried out: when, the line, the reply.
    pub admin_log: Vec<(Instant, String, String)>,
}

fn host_mac(ip: IpAddr) -> [u8; 6] {
    let o = match ip {
        IpAddr::V4(a) => a.octets(),
        IpAddr::V6(a) => {
            let o = a.octets();
            [o[12], o[13], o[14], o[15]]
        }
    };
    [0x02, 0x00, o[0], o[1], o[2], o[3]]
}

impl World {
    /// Builds the world for a configuration with a `[sim]` section.
    pub fn build(cfg: &Config) -> Result<World, WorldError> {
        let sim = cfg.sim.as_ref().ok_or(WorldError::NoSim)?;
        let mut net = Network::new(sim.seed);
        let start = net.now();
        let end = start + Duration::from_secs(u64::from(sim.seconds));
        let (prefix, gateway) = (cfg.device.addresses[0].1, None);
        let mut used: Vec<IpAddr> = cfg.device.addresses.iter().map(|a| a.0).collect();
        let mut claim = |ip: IpAddr| {
            if used.contains(&ip) {
                return Err(WorldError::DuplicateHost(ip));
            }
            used.push(ip);
            Ok(())
        };

        let (port, wire) = pair(cfg.device.mac, RING);
        let dp = crate::worker::Dataplane::new(cfg)?;
        let lb = Rc::new(RefCell::new(Worker { port, dp }));
        let lb_busy = Rc::new(std::cell::Cell::new(std::time::Duration::ZERO));
        let lb_heap = Rc::new(HeapMeter::default());
        net.add_node(Box::new(LbNode(lb.clone(), lb_busy.clone(), lb_heap.clone())));
        let lb_link = net.attach("switchyard", wire, LinkConfig::ideal());

        // Which pools sit behind L7 routes (HTTP origins) and which behind L4;
        // backends of DSR listeners own the VIP, as they would on a loopback.
        let mut http_pool = vec![false; cfg.pools.len()];
        let mut pool_vips: Vec<Vec<IpAddr>> = vec![Vec::new(); cfg.pools.len()];
        let mut udp_pool = vec![false; cfg.pools.len()];
        for l in &cfg.listeners {
            match &l.mode {
                Mode::L7 { routes, .. } => {
                    for r in routes.iter().filter(|r| r.fixed.is_none()) {
                        http_pool[r.pool] = true;
                    }
                }
                Mode::L4 { pool, forwarding, .. } if forwarding.is_dsr() => {
                    pool_vips[*pool].push(l.addr.ip());
                }
                Mode::L4 { .. } => {}
            }
            if let Mode::L4 { pool, proto: switchyard_stack::Proto::Udp, .. } = &l.mode {
                udp_pool[*pool] = true;
            }
        }
        let mut backends = Vec::new();
        let mut backend_links = Vec::new();
        for (pi, pool) in cfg.pools.iter().enumerate() {
            let mut hosts = Vec::new();
            let mut links = Vec::new();
            for b in &pool.backends {
                claim(b.addr.ip())?;
                let host = HostConfig {
                    name: b.name.clone(),
                    mac: host_mac(b.addr.ip()),
                    ip: b.addr.ip(),
                    prefix,
                    gateway,
                    vips: pool_vips[pi].clone(),
                };
                if http_pool[pi] {
                    let size = OriginSize {
                        socket_buffer: sim.host_buffer,
                        spare_listeners: sim.origin_backlog,
                    };
                    let (node, wire, stats) =
                        HttpServer::sized(host, b.addr.port(), sim.body_size as usize, size);
                    net.add_node(Box::new(node));
                    links.push(net.attach(&b.name, wire, LinkConfig::ideal()));
                    hosts.push(BackendHost::Http(stats));
                } else if udp_pool[pi] {
                    let (node, wire, stats) = UdpEchoServer::new(host, b.addr.port());
                    net.add_node(Box::new(node));
                    links.push(net.attach(&b.name, wire, LinkConfig::ideal()));
                    hosts.push(BackendHost::UdpEcho(stats));
                } else {
                    let (node, wire, stats) = EchoServer::new(host, b.addr.port());
                    net.add_node(Box::new(node));
                    links.push(net.attach(&b.name, wire, LinkConfig::ideal()));
                    hosts.push(BackendHost::Echo(stats));
                }
            }
            backends.push(hosts);
            backend_links.push(links);
        }

        let mut clients = Vec::new();
        let mut client_links = Vec::new();
        for (ci, c) in cfg.sim.iter().flat_map(|s| s.clients.iter()).enumerate() {
            claim(c.addr)?;
            let host = HostConfig {
                name: c.name.clone(),
                mac: host_mac(c.addr),
                ip: c.addr,
                prefix,
                gateway,
                vips: Vec::new(),
            };
            let target: SocketAddr = cfg.listeners[c.listener].addr;
            let until = if c.total.is_some() { None } else { Some(end) };
            let link = LinkConfig {
                latency: Duration::from_micros(u64::from(c.latency_us)),
                loss: c.loss,
                duplicate: 0.0,
                reorder: c.reorder,
                reorder_delay: Duration::from_micros(u64::from(c.latency_us) + 200),
            };
            match c.kind {
                SimClientKind::Http
                | SimClientKind::Https
                | SimClientKind::H2c
                | SimClientKind::H2 => {
                    let alpn: &[u8] = if c.kind == SimClientKind::H2 { b"h2" } else { b"http/1.1" };
                    let http = HttpClientConfig {
                        target,
                        paths: c.paths.clone(),
                        concurrency: c.concurrency as usize,
                        requests_per_connection: c.requests_per_connection as usize,
                        total_requests: c.total,
                        until,
                        body_size: sim.body_size as usize,
                        timeout: Duration::from_secs(10),
                        start_port: 10000,
                        start: Some(start + Duration::from_millis(u64::from(c.start_ms))),
                        socket_buffer: sim.host_buffer,
                        connects_per_ms: c.connects_per_ms as usize,
                        tls: match &c.tls {
                            Some(t) => Some(sim_tls_client(&c.name, t, alpn)?),
                            None => None,
                        },
                    };
                    let (wire, client) = if matches!(c.kind, SimClientKind::H2c | SimClientKind::H2)
                    {
                        let (node, wire, stats) = H2Client::new(host, http);
                        net.add_node(Box::new(node));
                        (wire, ClientHost::H2c(stats))
                    } else if c.kind == SimClientKind::Https {
                        let (node, wire, stats) = HttpsClient::new(host, http);
                        net.add_node(Box::new(node));
                        (wire, ClientHost::Http(stats))
                    } else {
                        let (node, wire, stats) = HttpClient::new(host, http);
                        net.add_node(Box::new(node));
                        (wire, ClientHost::Http(stats))
                    };
                    client_links.push(net.attach(&c.name, wire, link));
                    clients.push(client);
                }
                SimClientKind::Udp => {
                    let (node, wire, stats) = UdpClient::new(
                        host,
                        UdpClientConfig {
                            target,
                            flows: c.concurrency as usize,
                            total: c.total.unwrap_or(u64::MAX),
                            size: c.bytes_per_stream.clamp(8, 1400) as usize,
                            timeout: Duration::from_secs(2),
                            seed: sim.seed ^ ((ci as u64 + 1) << 32),
                            start_port: 10000,
                            start: Some(start + Duration::from_millis(u64::from(c.start_ms))),
                        },
                    );
                    net.add_node(Box::new(node));
                    client_links.push(net.attach(&c.name, wire, link));
                    clients.push(ClientHost::Udp(stats));
                }
                SimClientKind::Bulk => {
                    let (node, wire, stats) = BulkClient::new(
                        host,
                        BulkConfig {
                            target,
                            streams: c.concurrency as usize,
                            bytes_per_stream: c.bytes_per_stream as usize,
                            total_streams: c.total,
                            until,
                            seed: sim.seed ^ ((ci as u64 + 1) << 32),
                            timeout: Duration::from_secs(30),
                            start_port: 10000,
                            start: Some(start + Duration::from_millis(u64::from(c.start_ms))),
                        },
                    );
                    net.add_node(Box::new(node));
                    client_links.push(net.attach(&c.name, wire, link));
                    clients.push(ClientHost::Bulk(stats));
                }
            }
        }
        Ok(World {
            net,
            lb,
            cfg: cfg.clone(),
            backends,
            clients,
            lb_link,
            client_links,
            backend_links,
            start,
            lb_busy,
            lb_heap,
            heap_frames: (0, 0),
            end,
            admin_log: Vec::new(),
        })
    }

    /// Records every frame on the load balancer's link to a pcap file.
    pub fn tap_lb(&mut self, path: &Path) -> Result<(), WorldError> {
        self.net.tap(self.lb_link, path).map_err(|e| WorldError::Tap(path.display().to_string(), e))
    }

    /// Counts the load balancer's heap from now on with `probe`, a reading of
    /// the process's allocated bytes (a counting global allocator's).
    pub fn set_heap_probe(&mut self, probe: fn() -> usize) {
        self.lb_heap.net.set(0);
        self.lb_heap.probe.set(Some(probe));
        let s = switchyard_nic::Port::stats(&self.lb.borrow().port);
        self.heap_frames = (s.rx_bytes, s.tx_bytes);
    }

    /// Heap bytes the load balancer holds beyond what it held when the probe
    /// was installed: what its turns allocated and kept, counting the frames
    /// it received as freed by it (the hosts allocated them) and the frames it
    /// sent as not its own (the network and the hosts free them). Exact when
    /// every frame's allocation is its length, as the sim port's are.
    pub fn lb_heap_bytes(&self) -> i64 {
        let s = switchyard_nic::Port::stats(&self.lb.borrow().port);
        let rx = (s.rx_bytes - self.heap_frames.0) as i64;
        let tx = (s.tx_bytes - self.heap_frames.1) as i64;
        self.lb_heap.net.get() + rx - tx
    }

    /// True when every client has finished what it started.
    pub fn clients_done(&self) -> bool {
        self.clients.iter().all(ClientHost::done)
    }

    /// Runs the simulation: until `sim.seconds` of virtual time have passed and
    /// the clients have finished their last requests (at most `grace` longer).
    /// `tick` is called after every `step` of virtual time.
    pub fn run(&mut self, step: Duration, grace: Duration, mut tick: impl FnMut(&World)) -> bool {
        let deadline = self.end + grace;
        let admin = self.cfg.sim.as_ref().map(|s| s.admin.clone()).unwrap_or_default();
        let mut admin = admin.into_iter().peekable();
        loop {
            let t = self.net.now() + step;
            // Operator commands at their times, between two turns of the worker.
            while let Some((at, _)) = admin.peek()
                && self.start + *at <= t
            {
                let Some((at, line)) = admin.next() else { break };
                self.net.run_until(self.start + at);
                let reply = crate::admin::execute(&mut self.lb.borrow_mut().dp, &line);
                self.admin_log.push((self.net.now(), line, reply));
            }
            self.net.run_until(t);
            tick(self);
            let past_end = self.net.now() >= self.end;
            let all_total =
                self.cfg.sim.iter().flat_map(|s| s.clients.iter()).all(|c| c.total.is_some());
            if (past_end || all_total) && self.clients_done() {
                return true;
            }
            if self.net.now() >= deadline {
                return false;
            }
        }
    }

    /// Requests answered by each backend (HTTP origins) or connections served
    /// (echo servers), keyed by backend name.
    pub fn backend_load(&self) -> BTreeMap<String, u64> {
        let mut out = BTreeMap::new();
        for (pool, hosts) in self.cfg.pools.iter().zip(&self.backends) {
            for (b, h) in pool.backends.iter().zip(hosts) {
                out.insert(b.name.clone(), h.served());
            }
        }
        out
    }
}
