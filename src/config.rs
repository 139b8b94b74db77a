//! The TOML configuration: parsing, validation, and errors that name the file,
//! line and key. Unknown keys are refused with a suggestion of the nearest known
//! one. The validated [`Config`] is what the rest of the binary works from.

use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::ops::Range;
use std::path::Path;

use serde::Deserialize;
use switchyard_l4::{DownPolicy, Forwarding, Scheduler};
use switchyard_l7::{FixedResponse, Route};
use switchyard_nic::gso::Merge;
use switchyard_stack::Duration;
use switchyard_stack::health::{CheckConfig, HttpCheck};
use switchyard_stack::{Proto, TcpConfig};
use toml::Spanned;

/// The configuration `switchyard demo` runs on.
pub const DEMO_CONFIG: &str = include_str!("demo.toml");

/// A configuration error, located in the file it came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    /// The file (or `<embedded demo config>`).
    pub file: String,
    /// 1-based line, 0 when the error has no position (a missing section).
    pub line: usize,
    /// 1-based column.
    pub column: usize,
    /// Dotted key path, such as `listener[1].pool`.
    pub key: String,
    /// What is wrong and, where we can tell, what to write instead.
    pub message: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.line > 0 {
            write!(f, "{}:{}:{}: ", self.file, self.line, self.column)?;
        } else {
            write!(f, "{}: ", self.file)?;
        }
        if !self.key.is_empty() {
            write!(f, "key `{}`: ", self.key)?;
        }
        f.write_str(&self.message)
    }
}

impl std::error::Error for ConfigError {}

// ---------------------------------------------------------------------------
// The file as written.

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    device: RawDevice,
    #[serde(default)]
    tcp: RawTcp,
    #[serde(default)]
    l4: RawL4,
    #[serde(default)]
    http: RawHttp,
    #[serde(default)]
    tls: RawTlsEngine,
    #[serde(default)]
    listener: Vec<RawListener>,
    #[serde(default)]
    pool: Vec<RawPool>,
    sim: Option<RawSim>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawDevice {
    nic: Spanned<String>,
    mac: Spanned<String>,
    addresses: Spanned<Vec<Spanned<String>>>,
    gateway: Option<Spanned<String>>,
    #[serde(default = "one")]
    workers: Spanned<u32>,
    seed: Option<u64>,
}

fn one() -> Spanned<u32> {
    Spanned::new(0..0, 1)
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawTcp {
    sockets_per_shard: Option<Spanned<u32>>,
    max_connections: Option<Spanned<u32>>,
    buffer_size: Option<Spanned<u32>>,
    ephemeral_ports: Option<Spanned<String>>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawTlsEngine {
    engine: Option<Spanned<String>>,
    inline_steps: Option<Spanned<u32>>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawHttp {
    max_head_bytes: Option<Spanned<u32>>,
    max_request_line_bytes: Option<Spanned<u32>>,
    max_headers: Option<Spanned<u32>>,
    request_timeout_ms: Option<Spanned<u32>>,
    idle_timeout_ms: Option<Spanned<u32>>,
    head_timeout_ms: Option<Spanned<u32>>,
    connect_timeout_ms: Option<Spanned<u32>>,
    idle_upstreams_per_backend: Option<Spanned<u32>>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawL4 {
    table_capacity: Option<Spanned<u32>>,
    snat_ports: Option<Spanned<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawListener {
    name: Spanned<String>,
    mode: Spanned<String>,
    address: Spanned<String>,
    protocol: Option<Spanned<String>>,
    pool: Option<Spanned<String>>,
    scheduler: Option<Spanned<String>>,
    forwarding: Option<Spanned<String>>,
    on_backend_down: Option<Spanned<String>>,
    tls: Option<Spanned<RawTls>>,
    http2: Option<Spanned<bool>>,
    client_cert_header: Option<Spanned<String>>,
    #[serde(default)]
    route: Vec<RawRoute>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTls {
    cert: Option<String>,
    key: Option<String>,
    ocsp: Option<String>,
    certificates: Option<Vec<RawCertPair>>,
    min_version: Option<String>,
    client_ca: Option<String>,
    client_auth: Option<String>,
    cipher_suites: Option<Vec<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawCertPair {
    cert: String,
    key: String,
    ocsp: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRoute {
    path_prefix: Option<Spanned<String>>,
    path: Option<Spanned<String>>,
    host: Option<Spanned<String>>,
    methods: Option<Vec<String>>,
    header: Option<Spanned<String>>,
    cookie: Option<Spanned<String>>,
    query: Option<Spanned<String>>,
    pool: Option<Spanned<String>>,
    status: Option<Spanned<u16>>,
    location: Option<String>,
    body: Option<String>,
    rewrite_prefix: Option<Spanned<String>>,
    retries: Option<Spanned<u32>>,
    set_request_headers: Option<Spanned<std::collections::BTreeMap<String, String>>>,
    add_request_headers: Option<Spanned<std::collections::BTreeMap<String, String>>>,
    remove_request_headers: Option<Spanned<Vec<String>>>,
    set_response_headers: Option<Spanned<std::collections::BTreeMap<String, String>>>,
    add_response_headers: Option<Spanned<std::collections::BTreeMap<String, String>>>,
    remove_response_headers: Option<Spanned<Vec<String>>>,
    path_regex: Option<Spanned<String>>,
    header_regex: Option<Spanned<String>>,
    client_subject: Option<Spanned<String>>,
    sni: Option<Spanned<String>>,
    compress: Option<Spanned<bool>>,
    timeout_ms: Option<Spanned<u32>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPool {
    name: Spanned<String>,
    backends: Spanned<Vec<RawBackend>>,
    health: Option<RawHealth>,
    outlier: Option<RawOutlier>,
    scheduler: Option<Spanned<String>>,
    protocol: Option<Spanned<String>>,
    tls: Option<Spanned<RawPoolTls>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPoolTls {
    ca: Option<String>,
    verify: Option<bool>,
    sni: Option<String>,
    cert: Option<String>,
    key: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawOutlier {
    consecutive_failures: Option<Spanned<u32>>,
    ejection_ms: Option<Spanned<u32>>,
}

#[derive(Deserialize)]
#[serde(untagged)]
enum RawStatus {
    One(u16),
    Range(String),
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawHealth {
    interval_ms: Option<Spanned<u32>>,
    timeout_ms: Option<Spanned<u32>>,
    rise: Option<Spanned<u32>>,
    fall: Option<Spanned<u32>>,
    http_path: Option<Spanned<String>>,
    http_method: Option<Spanned<String>>,
    http_host: Option<Spanned<String>>,
    expect_status: Option<Spanned<RawStatus>>,
    body_contains: Option<Spanned<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawBackend {
    name: Spanned<String>,
    address: Spanned<String>,
    weight: Option<Spanned<u32>>,
    #[serde(default)]
    drain: bool,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSim {
    #[serde(default)]
    seed: u64,
    #[serde(default = "ten")]
    seconds: Spanned<u32>,
    #[serde(default = "default_body")]
    body_size: Spanned<u32>,
    host_buffer: Option<Spanned<u32>>,
    origin_backlog: Option<Spanned<u32>>,
    #[serde(default)]
    client: Vec<RawSimClient>,
    #[serde(default)]
    admin: Vec<RawSimAdmin>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSimAdmin {
    at_ms: Spanned<u64>,
    command: Spanned<String>,
}

fn ten() -> Spanned<u32> {
    Spanned::new(0..0, 10)
}

fn default_body() -> Spanned<u32> {
    Spanned::new(0..0, 1024)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSimClient {
    name: Spanned<String>,
    kind: Spanned<String>,
    listener: Spanned<String>,
    address: Spanned<String>,
    #[serde(default = "one")]
    concurrency: Spanned<u32>,
    #[serde(default)]
    paths: Vec<String>,
    #[serde(default = "hundred")]
    requests_per_connection: u32,
    total: Option<u64>,
    #[serde(default = "mib")]
    bytes_per_stream: u32,
    #[serde(default)]
    loss: f64,
    #[serde(default)]
    reorder: f64,
    #[serde(default = "default_latency")]
    latency_us: u32,
    #[serde(default)]
    start_ms: u32,
    #[serde(default)]
    connects_per_ms: u32,
    /// `https` and `h2` clients: the CA that signed the listener's
    /// certificate (PEM, relative to the config file), the name to ask
    /// for, the version.
    ca: Option<Spanned<String>>,
    server_name: Option<Spanned<String>>,
    tls_version: Option<Spanned<String>>,
}

fn hundred() -> u32 {
    100
}

fn mib() -> u32 {
    1 << 20
}

fn default_latency() -> u32 {
    500
}

// ---------------------------------------------------------------------------
// The validated configuration.

/// The most workers a configuration may ask for.
pub const MAX_WORKERS: u32 = 64;

/// Which NIC backend to open.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NicSpec {
    /// The in-process simulated network.
    Sim,
    /// Frames from a capture file; transmitted frames optionally to another.
    Pcap {
        /// Capture to read.
        input: String,
        /// Capture to write.
        output: Option<String>,
    },
    /// A Linux TAP interface (created if missing).
    Tap {
        /// Interface name.
        name: String,
    },
    /// A Linux interface through packet sockets with mmap rings.
    AfPacket {
        /// Interface name.
        iface: String,
        /// Receive through TPACKET_V3 blocks (`,v3`) instead of V2 frames.
        v3: bool,
        /// Which runs of TCP segments are sent as one large frame for a
        /// TSO-capable device to cut (see `switchyard_nic::gso::Merge`):
        /// flights of at most three segments by default, every run with
        /// `,gso`, none with `,nogso`.
        gso: Merge,
    },
    /// One queue of a Linux interface through an AF_XDP socket and an XDP
    /// program of ours.
    AfXdp {
        /// Interface name.
        iface: String,
        /// Receive queue (`/QUEUE`, default 0).
        queue: u32,
    },
    /// A DPDK port (`dpdk:EAL ARGS [-- port=N]`); needs the `dpdk` feature.
    Dpdk {
        /// The arguments EAL starts with, as written.
        eal: String,
        /// The ethdev port id (0 unless `-- port=N` follows the EAL arguments).
        port: u16,
    },
}

/// The device section.
#[derive(Debug, Clone)]
pub struct Device {
    /// The NIC backend.
    pub nic: NicSpec,
    /// Our Ethernet address.
    pub mac: [u8; 6],
    /// Interface addresses with prefix lengths.
    pub addresses: Vec<(IpAddr, u8)>,
    /// Next hop for off-link destinations.
    pub gateway: Option<IpAddr>,
    /// Worker threads, each with its own port, stack, tables and pools.
    pub workers: u32,
    /// Seed for everything random in the dataplane (ISNs, ports).
    pub seed: u64,
}

/// A backend server.
#[derive(Debug, Clone)]
pub struct Backend {
    /// Name shown in counters.
    pub name: String,
    /// Address and port.
    pub addr: SocketAddr,
    /// Share of new flows relative to the pool's other backends (0: none).
    pub weight: u32,
    /// Drained at start: no new flows or requests until undrained by an
    /// admin command.
    pub drain: bool,
}

/// A named group of backends.
#[derive(Debug, Clone)]
pub struct Pool {
    /// Name referenced by listeners and routes.
    pub name: String,
    /// Its members.
    pub backends: Vec<Backend>,
    /// Active health checks of its members: timing, and for HTTP checks
    /// `http_check` too (otherwise a TCP connect is the check).
    pub health: Option<CheckConfig>,
    /// The HTTP request and expected answer of the health check.
    pub http_check: Option<HttpCheck>,
    /// Passive outlier detection (L7 routes).
    pub outlier: Option<switchyard_l7::Outlier>,
    /// How L7 routes to it pick a backend.
    pub balance: switchyard_l7::Balance,
    /// L7 speaks HTTP/2 with prior knowledge to its backends (`protocol =
    /// "h2c"`, or `"h2"` over TLS), e.g. gRPC servers; otherwise HTTP/1.1.
    pub h2c: bool,
    /// TLS towards its backends (`tls = { ca, sni, cert, key }`).
    pub tls: Option<PoolTls>,
}

/// TLS from L7 to a pool's backends.
#[derive(Debug, Clone)]
pub struct PoolTls {
    /// The client configuration: roots, client certificate, ALPN.
    pub config: std::sync::Arc<switchyard_tls::ClientConfig>,
    /// The server name sent and verified, per backend in order.
    pub sni: Vec<String>,
}

/// Where TLS handshake steps (the public-key work) run.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TlsEngine {
    /// `inline` when the process may use no more CPUs than it has polling
    /// threads (workers, and a software dispatcher): an engine thread would
    /// share a worker's core. Else `thread`.
    Auto,
    /// On an engine thread, off the worker's thread.
    Thread,
    /// On the worker's thread between its turns, a bounded number per turn.
    Inline,
}

impl TlsEngine {
    /// The configuration name.
    pub fn name(self) -> &'static str {
        match self {
            TlsEngine::Auto => "auto",
            TlsEngine::Thread => "thread",
            TlsEngine::Inline => "inline",
        }
    }

    /// Every kind, for configuration parsing.
    pub const ALL: [TlsEngine; 3] = [TlsEngine::Auto, TlsEngine::Thread, TlsEngine::Inline];
}

/// The `[tls]` section.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TlsEngineConfig {
    /// Where handshake steps run.
    pub engine: TlsEngine,
    /// With the inline engine: handshake steps run per turn of the worker.
    pub inline_steps: usize,
}

impl TlsEngineConfig {
    /// `engine` with `auto` decided for `pollers` polling threads in a
    /// process that may run on `cpus` CPUs.
    pub fn resolve(&self, pollers: usize, cpus: usize) -> TlsEngine {
        match self.engine {
            TlsEngine::Auto if cpus <= pollers => TlsEngine::Inline,
            TlsEngine::Auto => TlsEngine::Thread,
            e => e,
        }
    }
}

/// What a listener does.
#[derive(Debug, Clone)]
pub enum Mode {
    /// Forward packets through the connection table.
    L4 {
        /// TCP or UDP.
        proto: Proto,
        /// Index into [`Config::pools`].
        pool: usize,
        /// How new flows pick a backend.
        scheduler: Scheduler,
        /// How packets reach the backends.
        forwarding: Forwarding,
        /// What happens to the flows of a backend that fails its check.
        on_backend_down: DownPolicy,
    },
    /// Terminate TCP and proxy HTTP.
    L7 {
        /// Routes in match order.
        routes: Vec<Route>,
        /// Terminate TLS with this certificate and key (`tls = { cert, key }`).
        tls: Option<std::sync::Arc<switchyard_tls::ServerConfig>>,
        /// Serve HTTP/2 too (prior knowledge, or ALPN `h2` over TLS).
        http2: bool,
        /// The verified client certificate's subject goes upstream in this
        /// header (mutual TLS).
        client_cert_header: Option<String>,
        /// TLS passthrough (`mode = "tls-passthrough"`): routes by the
        /// ClientHello's server name, bytes untouched.
        passthrough: bool,
    },
}

/// A listener.
#[derive(Debug, Clone)]
pub struct Listener {
    /// Name shown in counters.
    pub name: String,
    /// Address and (first) port it listens on (a VIP).
    pub addr: SocketAddr,
    /// Last port of an L4 port range (`address = "198.18.0.10:5000-5099"`);
    /// equal to `addr.port()` for a single port.
    pub last_port: u16,
    /// L4 or L7.
    pub mode: Mode,
}

/// A simulated client population (sim only).
#[derive(Debug, Clone)]
pub struct SimClient {
    /// Name of the client host(s).
    pub name: String,
    /// HTTP requests or bulk TCP streams.
    pub kind: SimClientKind,
    /// Index into [`Config::listeners`].
    pub listener: usize,
    /// The client host's address.
    pub addr: IpAddr,
    /// Concurrent connections.
    pub concurrency: u32,
    /// Paths requested in turn (HTTP).
    pub paths: Vec<String>,
    /// Requests per keep-alive connection (HTTP).
    pub requests_per_connection: u32,
    /// Bytes per stream (bulk).
    pub bytes_per_stream: u32,
    /// Requests (HTTP) or streams (bulk) in all; `None` runs for `sim.seconds`.
    pub total: Option<u64>,
    /// Loss probability on the client's link.
    pub loss: f64,
    /// Reorder probability on the client's link.
    pub reorder: f64,
    /// One-way latency of the client's link.
    pub latency_us: u32,
    /// Virtual milliseconds after the start before the client begins.
    pub start_ms: u32,
    /// New connections opened per virtual millisecond at most (HTTP; 0: no
    /// limit).
    pub connects_per_ms: u32,
    /// `https` and `h2` clients: the CA file, the server name asked for,
    /// and TLS 1.2 only (else TLS 1.3 only).
    pub tls: Option<SimTls>,
}

/// How a simulated HTTPS client speaks TLS.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SimTls {
    /// PEM file of the CA that signed the listener's certificate.
    pub ca: std::path::PathBuf,
    /// The server name (SNI) asked for and verified.
    pub server_name: String,
    /// TLS 1.2 (else TLS 1.3).
    pub tls12: bool,
}

/// Kinds of simulated client.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SimClientKind {
    /// HTTP/1.1 keep-alive requests, bodies verified.
    Http,
    /// HTTP/1.1 keep-alive requests over TLS (rustls), bodies verified.
    Https,
    /// HTTP/2 requests with prior knowledge over cleartext (h2c), one in
    /// flight per connection, bodies verified.
    H2c,
    /// HTTP/2 requests over TLS (rustls, ALPN `h2` and nothing else), one in
    /// flight per connection, bodies verified.
    H2,
    /// TCP streams echoed back and compared by digest.
    Bulk,
    /// UDP requests echoed back and compared byte for byte.
    Udp,
}

/// The sim section.
#[derive(Debug, Clone)]
pub struct Sim {
    /// Seed of the simulated network.
    pub seed: u64,
    /// Virtual seconds to run.
    pub seconds: u32,
    /// Body size the simulated HTTP origins serve.
    pub body_size: u32,
    /// Receive and send buffer of each socket of the simulated HTTP clients
    /// and origins, in bytes.
    pub host_buffer: usize,
    /// Listening sockets each simulated HTTP origin keeps ready (its backlog).
    pub origin_backlog: usize,
    /// Client populations.
    pub clients: Vec<SimClient>,
    /// Operator commands (see [`crate::admin`]) run at a time after the start.
    pub admin: Vec<(Duration, String)>,
}

/// A validated configuration.
#[derive(Debug, Clone)]
pub struct Config {
    /// Where it came from.
    pub file: String,
    /// The device.
    pub device: Device,
    /// TCP termination settings.
    pub tcp: TcpConfig,
    /// L4 connection table capacity per worker.
    pub l4_table_capacity: u32,
    /// Local ports used for L4 full-NAT.
    pub snat_ports: Range<u16>,
    /// HTTP limits and timeouts of L7 listeners (`[http]`).
    pub http: switchyard_l7::Limits,
    /// Where TLS handshakes run (`[tls]`).
    pub tls: TlsEngineConfig,
    /// Listeners in file order.
    pub listeners: Vec<Listener>,
    /// Pools in file order.
    pub pools: Vec<Pool>,
    /// Simulation settings, when present.
    pub sim: Option<Sim>,
}

impl Config {
    /// Reads and validates a configuration file.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let file = path.display().to_string();
        let src = std::fs::read_to_string(path).map_err(|e| ConfigError {
            file: file.clone(),
            line: 0,
            column: 0,
            key: String::new(),
            message: format!("cannot read: {e}"),
        })?;
        Config::parse(&file, &src)
    }

    /// Threads that poll without rest under load: the workers, and the
    /// software dispatcher that several workers on a one-queue device
    /// (`tap`, `af_xdp`, `dpdk`) have.
    pub fn polling_threads(&self) -> usize {
        let workers = self.device.workers.max(1) as usize;
        let dispatcher = workers > 1 && !matches!(self.device.nic, NicSpec::AfPacket { .. });
        workers + usize::from(dispatcher)
    }

    /// Where handshakes run on a host that lets the process use `cpus`
    /// CPUs: `[tls] engine`, with `auto` decided against the polling
    /// threads. A simulation or a replay runs on virtual time and repeats
    /// only with handshakes inline (an engine thread finishes on whichever
    /// turn it happens to), so `auto` is inline there.
    pub fn tls_engine(&self, cpus: usize) -> TlsEngine {
        let virtual_time = matches!(self.device.nic, NicSpec::Sim | NicSpec::Pcap { .. });
        if self.tls.engine == TlsEngine::Auto && virtual_time {
            return TlsEngine::Inline;
        }
        self.tls.resolve(self.polling_threads(), cpus)
    }

    /// Whether a listener terminates TLS or a pool speaks it to backends.
    pub fn uses_tls(&self) -> bool {
        self.pools.iter().any(|p| p.tls.is_some())
            || self.listeners.iter().any(|l| matches!(&l.mode, Mode::L7 { tls: Some(_), .. }))
    }

    /// The embedded demo configuration.
    pub fn demo() -> Config {
        match Config::parse("<embedded demo config>", DEMO_CONFIG) {
            Ok(c) => c,
            Err(e) => panic!("the embedded demo config is invalid: {e}"),
        }
    }

    /// Parses and validates configuration text; `file` names it in errors.
    pub fn parse(file: &str, src: &str) -> Result<Config, ConfigError> {
        let cx = Cx { file, src };
        let raw: RawConfig = toml::from_str(src).map_err(|e| cx.toml_error(&e))?;
        cx.validate(raw)
    }
}

// ---------------------------------------------------------------------------
// Validation.

struct Cx<'a> {
    file: &'a str,
    src: &'a str,
}

impl Cx<'_> {
    fn err(&self, span: Range<usize>, message: impl Into<String>) -> ConfigError {
        let (line, column) = line_col(self.src, span.start);
        ConfigError {
            file: self.file.to_string(),
            line,
            column,
            key: if span.is_empty() && span.start == 0 {
                String::new()
            } else {
                key_path(self.src, span.start)
            },
            message: message.into(),
        }
    }

    fn at<T>(&self, v: &Spanned<T>, message: impl Into<String>) -> ConfigError {
        self.err(v.span(), message)
    }

    /// One of a fixed set of names (`what` says which set, for the message),
    /// or `default` when the key is absent; an unknown name gets the list and
    /// the nearest one.
    fn choice<T: Copy>(
        &self,
        raw: &Option<Spanned<String>>,
        what: &str,
        all: &[T],
        name: fn(T) -> &'static str,
        default: T,
    ) -> Result<T, ConfigError> {
        let Some(s) = raw else { return Ok(default) };
        if let Some(k) = all.iter().find(|k| name(**k) == s.get_ref()) {
            return Ok(*k);
        }
        let names: Vec<&str> = all.iter().map(|k| name(*k)).collect();
        let hint = nearest(s.get_ref(), &names)
            .map(|n| format!("; did you mean `{n}`?"))
            .unwrap_or_default();
        Err(self
            .at(s, format!("{what} `{}`: expected one of {}{hint}", s.get_ref(), names.join(", "))))
    }

    fn toml_error(&self, e: &toml::de::Error) -> ConfigError {
        let msg = e.message().trim().to_string();
        let message = match suggestion(&msg) {
            Some(s) => format!("{msg} (did you mean `{s}`?)"),
            None => msg,
        };
        match e.span() {
            Some(span) => self.err(span, message),
            None => ConfigError {
                file: self.file.to_string(),
                line: 0,
                column: 0,
                key: String::new(),
                message,
            },
        }
    }

    fn validate(&self, raw: RawConfig) -> Result<Config, ConfigError> {
        let device = self.device(&raw.device)?;
        let mut tcp = TcpConfig::default();
        if let Some(v) = &raw.tcp.sockets_per_shard {
            tcp.sockets_per_shard = self.range_u32(v, 4, 4096)? as usize;
        }
        if let Some(v) = &raw.tcp.max_connections {
            tcp.max_connections = self.range_u32(v, 1, 4_000_000)? as usize;
        }
        if let Some(v) = &raw.tcp.buffer_size {
            let b = self.range_u32(v, 1024, 16 << 20)? as usize;
            tcp.rx_buffer = b;
            tcp.tx_buffer = b;
        }
        if let Some(v) = &raw.tcp.ephemeral_ports {
            tcp.ephemeral_ports = self.port_range(v)?;
        }
        let l4_table_capacity = match &raw.l4.table_capacity {
            Some(v) => self.range_u32(v, 1, 1 << 26)?,
            None => 65536,
        };
        let snat_ports = match &raw.l4.snat_ports {
            Some(v) => self.port_range(v)?,
            None => 40960..65535,
        };
        let http = self.http(&raw.http)?;
        let tls = TlsEngineConfig {
            engine: self.choice(
                &raw.tls.engine,
                "engine",
                &TlsEngine::ALL,
                TlsEngine::name,
                TlsEngine::Auto,
            )?,
            inline_steps: match &raw.tls.inline_steps {
                Some(v) => self.range_u32(v, 1, 64)? as usize,
                None => 1,
            },
        };
        if snat_ports.start < tcp.ephemeral_ports.end && tcp.ephemeral_ports.start < snat_ports.end
        {
            let span = raw.l4.snat_ports.as_ref().map(|s| s.span()).unwrap_or(0..0);
            return Err(self.err(
                span,
                format!(
                    "L4 SNAT ports {}-{} overlap the TCP ephemeral ports {}-{}",
                    snat_ports.start,
                    snat_ports.end - 1,
                    tcp.ephemeral_ports.start,
                    tcp.ephemeral_ports.end - 1
                ),
            ));
        }

        let mut pools: Vec<Pool> = Vec::new();
        for p in &raw.pool {
            if pools.iter().any(|q| q.name == *p.name.get_ref()) {
                return Err(
                    self.at(&p.name, format!("pool `{}` is defined twice", p.name.get_ref()))
                );
            }
            if p.backends.get_ref().is_empty() {
                return Err(self.at(&p.backends, "a pool needs at least one backend"));
            }
            let mut backends = Vec::new();
            for b in p.backends.get_ref() {
                let weight = match &b.weight {
                    Some(w) => self.range_u32(w, 0, 10_000)?,
                    None => 1,
                };
                backends.push(Backend {
                    name: b.name.get_ref().clone(),
                    addr: self.backend_addr(&b.address)?,
                    weight,
                    drain: b.drain,
                });
            }
            let health = match &p.health {
                None => None,
                Some(h) => {
                    let mut c = CheckConfig::default();
                    if let Some(v) = &h.interval_ms {
                        c.interval =
                            Duration::from_millis(u64::from(self.range_u32(v, 10, 3_600_000)?));
                    }
                    if let Some(v) = &h.timeout_ms {
                        c.timeout =
                            Duration::from_millis(u64::from(self.range_u32(v, 10, 600_000)?));
                    }
                    if let Some(v) = &h.rise {
                        c.rise = self.range_u32(v, 1, 100)?;
                    }
                    if let Some(v) = &h.fall {
                        c.fall = self.range_u32(v, 1, 100)?;
                    }
                    Some(c)
                }
            };
            let http_check = match &p.health {
                Some(h) => self.http_check(h)?,
                None => None,
            };
            let outlier = match &p.outlier {
                None => None,
                Some(o) => Some(switchyard_l7::Outlier {
                    consecutive_failures: match &o.consecutive_failures {
                        Some(v) => self.range_u32(v, 1, 1000)?,
                        None => 5,
                    },
                    ejection: Duration::from_millis(match &o.ejection_ms {
                        Some(v) => u64::from(self.range_u32(v, 1, 3_600_000)?),
                        None => 30_000,
                    }),
                }),
            };
            let balance = match &p.scheduler {
                None => switchyard_l7::Balance::RoundRobin,
                Some(v) => switchyard_l7::Balance::parse(v.get_ref()).ok_or_else(|| {
                    self.at(
                        v,
                        "expected `round-robin`, `weighted-round-robin`, `least-requests`, `source-ip`, `hash-header:NAME` or `hash-cookie:NAME`",
                    )
                })?,
            };
            let h2c = match p.protocol.as_ref().map(|v| (v, v.get_ref().as_str())) {
                None | Some((_, "http1")) => false,
                Some((_, "h2c" | "h2")) => true,
                Some((v, other)) => {
                    return Err(
                        self.at(v, format!("protocol `{other}`: expected `http1`, `h2c` or `h2`"))
                    );
                }
            };
            let tls = self.pool_tls(p, &backends, &pools)?;
            if let Some(path) = p.health.as_ref().and_then(|h| h.http_path.as_ref())
                && h2c
            {
                return Err(self.at(
                    path,
                    "HTTP health checks speak HTTP/1.1, which this pool's HTTP/2 backends do not: leave out `http_path` for a TCP check",
                ));
            }
            pools.push(Pool {
                name: p.name.get_ref().clone(),
                backends,
                health,
                http_check,
                outlier,
                balance,
                h2c,
                tls,
            });
        }
        let pool_index = |name: &Spanned<String>| -> Result<usize, ConfigError> {
            pools.iter().position(|p| p.name == *name.get_ref()).ok_or_else(|| {
                let names: Vec<&str> = pools.iter().map(|p| p.name.as_str()).collect();
                let hint = nearest(name.get_ref(), &names)
                    .map(|n| format!(" (did you mean `{n}`?)"))
                    .unwrap_or_default();
                self.at(name, format!("no pool named `{}`{hint}", name.get_ref()))
            })
        };

        let mut listeners: Vec<Listener> = Vec::new();
        for l in &raw.listener {
            let (addr, last_port) = self.listener_addr(&l.address)?;
            if listeners.iter().any(|o| o.name == *l.name.get_ref()) {
                return Err(
                    self.at(&l.name, format!("listener `{}` is defined twice", l.name.get_ref()))
                );
            }
            let mode = match l.mode.get_ref().as_str() {
                "l4" => {
                    let proto = match l.protocol.as_ref().map(|p| (p, p.get_ref().as_str())) {
                        None | Some((_, "tcp")) => Proto::Tcp,
                        Some((_, "udp")) => Proto::Udp,
                        Some((p, other)) => {
                            return Err(
                                self.at(p, format!("protocol `{other}`: expected `tcp` or `udp`"))
                            );
                        }
                    };
                    let scheduler = self.choice(
                        &l.scheduler,
                        "scheduler",
                        &Scheduler::ALL,
                        Scheduler::name,
                        Scheduler::RoundRobin,
                    )?;
                    if !l.route.is_empty() {
                        return Err(self.at(&l.mode, "routes belong to `mode = \"l7\"` listeners"));
                    }
                    if let Some(t) = &l.tls {
                        return Err(self.at(
                            t,
                            "TLS is terminated on `mode = \"l7\"` listeners; L4 passes it through untouched",
                        ));
                    }
                    let pool = match &l.pool {
                        Some(p) => pool_index(p)?,
                        None => {
                            return Err(self.at(&l.mode, "an L4 listener needs `pool = \"...\"`"));
                        }
                    };
                    let forwarding = self.choice(
                        &l.forwarding,
                        "forwarding",
                        &Forwarding::ALL,
                        Forwarding::name,
                        Forwarding::FullNat,
                    )?;
                    let on_backend_down = self.choice(
                        &l.on_backend_down,
                        "on_backend_down",
                        &DownPolicy::ALL,
                        DownPolicy::name,
                        DownPolicy::Keep,
                    )?;
                    Mode::L4 { proto, pool, scheduler, forwarding, on_backend_down }
                }
                "l7" | "tls-passthrough" => {
                    let passthrough = l.mode.get_ref() == "tls-passthrough";
                    if passthrough {
                        if let Some(t) = &l.tls {
                            return Err(self.at(
                                t,
                                "a passthrough listener forwards TLS untouched; terminate it with `mode = \"l7\"`",
                            ));
                        }
                        if let Some(h) = &l.client_cert_header {
                            return Err(self.at(h, "needs TLS terminated (`mode = \"l7\"`)"));
                        }
                    }
                    if let Some(p) = &l.protocol
                        && p.get_ref() != "tcp"
                    {
                        return Err(self.at(p, "L7 listeners are TCP"));
                    }
                    if let Some(p) = &l.pool {
                        return Err(
                            self.at(p, "L7 listeners choose pools in `[[listener.route]]` tables")
                        );
                    }
                    if let Some(s) = &l.scheduler {
                        return Err(self.at(
                            s,
                            "set the scheduler on the pool's routes' listener only for L4",
                        ));
                    }
                    if l.route.is_empty() {
                        return Err(self.at(
                            &l.mode,
                            "an L7 listener needs at least one `[[listener.route]]`",
                        ));
                    }
                    let mut routes = Vec::new();
                    for r in &l.route {
                        let mut route = Route { path_prefix: "/".into(), ..Route::default() };
                        // Passthrough routes see only the ClientHello.
                        let http_keys = [
                            r.path_prefix.as_ref().map(|v| v.span()),
                            r.path.as_ref().map(|v| v.span()),
                            r.host.as_ref().map(|v| v.span()),
                            r.header.as_ref().map(|v| v.span()),
                            r.cookie.as_ref().map(|v| v.span()),
                            r.query.as_ref().map(|v| v.span()),
                            r.status.as_ref().map(|v| v.span()),
                            r.rewrite_prefix.as_ref().map(|v| v.span()),
                            r.path_regex.as_ref().map(|v| v.span()),
                            r.header_regex.as_ref().map(|v| v.span()),
                            r.client_subject.as_ref().map(|v| v.span()),
                            r.set_request_headers.as_ref().map(|v| v.span()),
                            r.set_response_headers.as_ref().map(|v| v.span()),
                            r.add_request_headers.as_ref().map(|v| v.span()),
                            r.add_response_headers.as_ref().map(|v| v.span()),
                            r.compress.as_ref().map(|v| v.span()),
                            r.timeout_ms.as_ref().map(|v| v.span()),
                        ];
                        match (&r.sni, passthrough) {
                            (Some(v), false) => {
                                return Err(self.at(
                                    v,
                                    "`sni` routes belong to `mode = \"tls-passthrough\"` listeners",
                                ));
                            }
                            (_, true) => {
                                if let Some(span) = http_keys.into_iter().flatten().next() {
                                    return Err(self.err(
                                        span,
                                        "a passthrough route matches only `sni` and names a `pool`",
                                    ));
                                }
                                if let Some(v) = &r.sni {
                                    let n = v.get_ref();
                                    let bare = n.strip_prefix("*.").unwrap_or(n);
                                    let ok = !bare.is_empty()
                                        && bare.bytes().all(|b| {
                                            b.is_ascii_alphanumeric() || b"-._".contains(&b)
                                        });
                                    if !ok {
                                        return Err(self.at(
                                            v,
                                            "a server name is `db.example.com` or `*.example.com`",
                                        ));
                                    }
                                    route.sni = Some(n.to_ascii_lowercase());
                                }
                            }
                            _ => {}
                        }
                        if let Some(p) = &r.path_prefix {
                            if !p.get_ref().starts_with('/') {
                                return Err(self.at(p, "a path prefix starts with `/`"));
                            }
                            route.path_prefix = p.get_ref().clone();
                        }
                        if let Some(p) = &r.path {
                            if !p.get_ref().starts_with('/') {
                                return Err(self.at(p, "a path starts with `/`"));
                            }
                            route.path = Some(p.get_ref().clone());
                        }
                        route.host = r.host.as_ref().map(|h| h.get_ref().to_ascii_lowercase());
                        route.methods = r.methods.clone().unwrap_or_default();
                        if let Some(h) = &r.header {
                            let (name, value) = match h.get_ref().split_once(':') {
                                Some((n, v)) => (n.trim().to_string(), Some(v.trim().to_string())),
                                None => (h.get_ref().trim().to_string(), None),
                            };
                            if name.is_empty()
                                || !name
                                    .bytes()
                                    .all(|b| b.is_ascii_alphanumeric() || b"-_".contains(&b))
                            {
                                return Err(self.at(h, "a header match is `Name` or `Name: value`"));
                            }
                            route.header = Some((name, value));
                        }
                        let pair = |v: &Spanned<String>, what: &str| -> Result<(String, Option<String>), ConfigError> {
                            let (n, val) = match v.get_ref().split_once('=') {
                                Some((n, val)) => (n.trim().to_string(), Some(val.trim().to_string())),
                                None => (v.get_ref().trim().to_string(), None),
                            };
                            if n.is_empty() || n.bytes().any(|b| b.is_ascii_whitespace() || b"=;&?".contains(&b)) {
                                return Err(self.at(v, format!("a {what} match is `name` or `name=value`")));
                            }
                            Ok((n, val))
                        };
                        if let Some(c) = &r.cookie {
                            route.cookie = Some(pair(c, "cookie")?);
                        }
                        if let Some(q) = &r.query {
                            route.query = Some(pair(q, "query")?);
                        }
                        route.compress = r.compress.as_ref().is_some_and(|c| *c.get_ref());
                        if let Some(v) = &r.timeout_ms {
                            route.request_timeout = Some(Duration::from_millis(u64::from(
                                self.range_u32(v, 1, 3_600_000)?,
                            )));
                        }
                        route.retries = match &r.retries {
                            Some(v) => self.range_u32(v, 0, 10)?,
                            None => 1,
                        };
                        if let Some(p) = &r.rewrite_prefix {
                            if !p.get_ref().starts_with('/') {
                                return Err(self.at(p, "a rewritten prefix starts with `/`"));
                            }
                            route.rewrite_prefix = Some(p.get_ref().clone());
                        }
                        let token = |n: &str| {
                            !n.is_empty()
                                && n.bytes()
                                    .all(|b| b.is_ascii_alphanumeric() || b"-_".contains(&b))
                        };
                        let headers =
                            |set: &Spanned<std::collections::BTreeMap<String, String>>| {
                                let mut out = Vec::new();
                                for (n, v) in set.get_ref() {
                                    if !token(n)
                                        || v.bytes().any(|b| b == b'\r' || b == b'\n' || b == 0)
                                    {
                                        return Err(self
                                            .at(set, format!("`{n}: {v}` is not a valid header")));
                                    }
                                    out.push((n.clone(), v.clone()));
                                }
                                Ok(out)
                            };
                        let names = |rm: &Spanned<Vec<String>>| {
                            if let Some(bad) = rm.get_ref().iter().find(|n| !token(n)) {
                                return Err(self.at(rm, format!("`{bad}` is not a header name")));
                            }
                            Ok(rm.get_ref().clone())
                        };
                        if let Some(set) = &r.set_request_headers {
                            route.set_request_headers = headers(set)?;
                        }
                        if let Some(rm) = &r.remove_request_headers {
                            route.remove_request_headers = names(rm)?;
                        }
                        if let Some(set) = &r.set_response_headers {
                            route.set_response_headers = headers(set)?;
                        }
                        if let Some(add) = &r.add_request_headers {
                            route.add_request_headers = headers(add)?;
                        }
                        if let Some(add) = &r.add_response_headers {
                            route.add_response_headers = headers(add)?;
                        }
                        if let Some(rm) = &r.remove_response_headers {
                            route.remove_response_headers = names(rm)?;
                        }
                        let regex = |v: &Spanned<String>, src: &str| {
                            regex::Regex::new(src).map_err(|e| {
                                let first = e.to_string().lines().last().unwrap_or("").to_string();
                                self.at(v, format!("not a regular expression: {}", first.trim()))
                            })
                        };
                        if let Some(p) = &r.path_regex {
                            route.path_regex = Some(regex(p, p.get_ref())?);
                        }
                        if let Some(p) = &r.client_subject {
                            if l.tls.as_ref().is_none_or(|t| t.get_ref().client_ca.is_none()) {
                                return Err(self.at(
                                    p,
                                    "matching the client certificate needs `client_ca` in the listener's `tls`",
                                ));
                            }
                            route.client_subject = Some(regex(p, p.get_ref())?);
                        }
                        if let Some(h) = &r.header_regex {
                            let Some((name, re)) = h.get_ref().split_once(':') else {
                                return Err(self.at(h, "a header regex is `Name: regex`"));
                            };
                            let name = name.trim();
                            if !token(name) {
                                return Err(self.at(h, format!("`{name}` is not a header name")));
                            }
                            route.header_regex = Some((name.to_string(), regex(h, re.trim())?));
                        }
                        match (&r.pool, &r.status) {
                            (Some(p), None) => route.pool = pool_index(p)?,
                            (None, Some(st)) => {
                                let status = *st.get_ref();
                                if !(200..=599).contains(&status) {
                                    return Err(self.at(
                                        st,
                                        format!("{status} is not a final status code (200-599)"),
                                    ));
                                }
                                route.fixed = Some(FixedResponse {
                                    status,
                                    location: r.location.clone(),
                                    body: r.body.clone().unwrap_or_default(),
                                });
                            }
                            (Some(p), Some(_)) => {
                                return Err(self.at(
                                    p,
                                    "a route has either `pool` or a fixed `status`, not both",
                                ));
                            }
                            (None, None) => {
                                return Err(self.at(
                                    &l.mode,
                                    "every route needs `pool = \"...\"` or a fixed `status`",
                                ));
                            }
                        }
                        routes.push(route);
                    }
                    let tls = match &l.tls {
                        None => None,
                        Some(t) => {
                            // Paths relative to the configuration file's folder.
                            let dir = Path::new(self.file).parent().unwrap_or(Path::new("."));
                            let raw = t.get_ref();
                            let mut pairs = Vec::new();
                            match (&raw.cert, &raw.key, &raw.certificates) {
                                (Some(c), Some(k), None) => pairs.push((dir.join(c), dir.join(k))),
                                (None, None, Some(list)) if !list.is_empty() => {
                                    for p in list {
                                        pairs.push((dir.join(&p.cert), dir.join(&p.key)));
                                    }
                                }
                                _ => {
                                    return Err(self.at(
                                        t,
                                        "give `cert` and `key`, or `certificates = [{ cert, key }, ...]` (chosen by SNI, the first by default)",
                                    ));
                                }
                            }
                            let mut opts = switchyard_tls::TlsOptions::default();
                            match raw.min_version.as_deref() {
                                None | Some("1.2") => {}
                                Some("1.3") => opts.tls13_only = true,
                                Some(v) => {
                                    return Err(self.at(
                                        t,
                                        format!("min_version `{v}`: expected \"1.2\" or \"1.3\""),
                                    ));
                                }
                            }
                            if let Some(list) = &raw.cipher_suites {
                                let known = switchyard_tls::cipher_suite_names();
                                if let Some(bad) =
                                    list.iter().find(|n| !known.contains(&n.as_str()))
                                {
                                    return Err(self.at(
                                        t,
                                        format!(
                                            "cipher_suites: `{bad}` is not one of {}",
                                            known.join(", ")
                                        ),
                                    ));
                                }
                                opts.cipher_suites = Some(list.clone());
                            }
                            opts.client_ca = raw.client_ca.as_ref().map(|c| dir.join(c));
                            match &raw.certificates {
                                Some(list) => {
                                    for (i, p) in list.iter().enumerate() {
                                        if let Some(o) = &p.ocsp {
                                            opts.ocsp.push((i, dir.join(o)));
                                        }
                                    }
                                }
                                None => {
                                    if let Some(o) = &raw.ocsp {
                                        opts.ocsp.push((0, dir.join(o)));
                                    }
                                }
                            }
                            opts.client_cert_required = match raw.client_auth.as_deref() {
                                None | Some("required") => true,
                                Some("optional") => false,
                                Some(v) => {
                                    return Err(self.at(
                                        t,
                                        format!("client_auth `{v}`: expected \"required\" or \"optional\""),
                                    ));
                                }
                            };
                            if raw.client_auth.is_some() && raw.client_ca.is_none() {
                                return Err(self.at(t, "`client_auth` needs `client_ca`"));
                            }
                            if l.http2.as_ref().is_some_and(|h| !*h.get_ref()) {
                                opts.alpn = Some(vec![b"http/1.1".to_vec()]);
                            }
                            Some(
                                switchyard_tls::server_config_with(&pairs, &opts)
                                    .map_err(|e| self.at(t, e.to_string()))?,
                            )
                        }
                    };
                    let http2 = l.http2.as_ref().is_none_or(|h| *h.get_ref());
                    let client_cert_header = match &l.client_cert_header {
                        None => None,
                        Some(h) => {
                            let ok = !h.get_ref().is_empty()
                                && h.get_ref()
                                    .bytes()
                                    .all(|b| b.is_ascii_alphanumeric() || b"-_".contains(&b));
                            if !ok {
                                return Err(self.at(h, "not a header name"));
                            }
                            if l.tls.as_ref().is_none_or(|t| t.get_ref().client_ca.is_none()) {
                                return Err(self.at(
                                    h,
                                    "a client certificate header needs `client_ca` in the listener's `tls`",
                                ));
                            }
                            Some(h.get_ref().clone())
                        }
                    };
                    Mode::L7 {
                        routes,
                        tls,
                        http2: http2 && !passthrough,
                        client_cert_header,
                        passthrough,
                    }
                }
                other => {
                    return Err(self.at(
                        &l.mode,
                        format!("mode `{other}`: expected `l4`, `l7` or `tls-passthrough`"),
                    ));
                }
            };
            let proto = match mode {
                Mode::L4 { proto, .. } => proto,
                Mode::L7 { .. } => Proto::Tcp,
            };
            if last_port != addr.port() && !matches!(mode, Mode::L4 { .. }) {
                return Err(self.at(&l.address, "port ranges are for `mode = \"l4\"` listeners"));
            }
            if let Mode::L7 { routes, .. } = &mode
                && let Some(b) = routes
                    .iter()
                    .filter(|r| r.fixed.is_none())
                    .flat_map(|r| pools[r.pool].backends.iter())
                    .find(|b| b.addr.port() == 0)
            {
                return Err(self
                    .at(&l.address, format!("backend `{}` of an L7 route needs a port", b.name)));
            }
            if let Some(o) = listeners.iter().find(|o| {
                o.addr.ip() == addr.ip()
                    && o.addr.port() <= last_port
                    && addr.port() <= o.last_port
                    && match o.mode {
                        Mode::L4 { proto: p, .. } => p == proto,
                        Mode::L7 { .. } => proto == Proto::Tcp,
                    }
            }) {
                return Err(
                    self.at(&l.address, format!("{addr} is already used by listener `{}`", o.name))
                );
            }
            if let Mode::L4 { pool, .. } = mode {
                if let Some(b) =
                    pools[pool].backends.iter().find(|b| b.addr.is_ipv4() != addr.is_ipv4())
                {
                    return Err(self.at(
                        &l.address,
                        format!(
                            "listener and backend `{}` are of different address families",
                            b.name
                        ),
                    ));
                }
                if !device.addresses.iter().any(|(a, _)| a.is_ipv4() == addr.is_ipv4()) {
                    return Err(self.at(
                        &l.address,
                        "full-NAT needs an interface address of the same family in `device.addresses`",
                    ));
                }
            }
            listeners.push(Listener { name: l.name.get_ref().clone(), addr, last_port, mode });
        }
        if listeners.is_empty() {
            return Err(ConfigError {
                file: self.file.to_string(),
                line: 0,
                column: 0,
                key: "listener".into(),
                message: "no listeners: add at least one `[[listener]]`".into(),
            });
        }

        let sim = match &raw.sim {
            None => None,
            Some(s) => Some(self.sim(s, &listeners, &pools)?),
        };
        if device.nic == NicSpec::Sim && sim.is_none() {
            return Err(self.at(&raw.device.nic, "`nic = \"sim\"` needs a `[sim]` section"));
        }
        Ok(Config {
            file: self.file.to_string(),
            device,
            tcp,
            l4_table_capacity,
            snat_ports,
            http,
            tls,
            listeners,
            pools,
            sim,
        })
    }

    fn device(&self, d: &RawDevice) -> Result<Device, ConfigError> {
        let nic = match d.nic.get_ref().as_str() {
            "sim" => NicSpec::Sim,
            s if s.starts_with("pcap:") => {
                let rest = &s["pcap:".len()..];
                let (input, output) = match rest.split_once(',') {
                    Some((i, o)) => (i.to_string(), Some(o.to_string())),
                    None => (rest.to_string(), None),
                };
                if input.is_empty() {
                    return Err(self.at(&d.nic, "`pcap:` needs a capture file: `pcap:IN[,OUT]`"));
                }
                NicSpec::Pcap { input, output }
            }
            s if s.starts_with("tap:") || s.starts_with("af_packet:") => {
                let (kind, name) = s.split_once(':').unwrap_or((s, ""));
                let (name, opts) = name.split_once(',').unwrap_or((name, ""));
                let (mut v3, mut gso) = (false, None);
                for o in opts.split(',').filter(|o| !o.is_empty()) {
                    let merge = match o {
                        "v3" if kind == "af_packet" => {
                            v3 = true;
                            continue;
                        }
                        "gso" if kind == "af_packet" => Merge::All,
                        "nogso" if kind == "af_packet" => Merge::Off,
                        other => {
                            return Err(self.at(
                                &d.nic,
                                format!(
                                    "`{kind}:` option `{other}`: the options are `af_packet:IFACE,v3` and `,gso` or `,nogso`"
                                ),
                            ));
                        }
                    };
                    if gso.is_some_and(|g| g != merge) {
                        return Err(self.at(&d.nic, "`,gso` and `,nogso` exclude each other"));
                    }
                    gso = Some(merge);
                }
                let gso = gso.unwrap_or(Merge::Flights);
                if name.is_empty() || name.len() > 15 || name.contains(['/', ' ', ':']) {
                    return Err(self.at(
                        &d.nic,
                        format!("`{kind}:` needs an interface name of 1 to 15 characters"),
                    ));
                }
                match kind {
                    "tap" => NicSpec::Tap { name: name.to_string() },
                    _ => NicSpec::AfPacket { iface: name.to_string(), v3, gso },
                }
            }
            s if s.starts_with("af_xdp:") => {
                let rest = &s["af_xdp:".len()..];
                let (name, queue) = match rest.split_once('/') {
                    Some((n, q)) => match q.parse::<u32>() {
                        Ok(q) if q < 1024 => (n, q),
                        _ => {
                            return Err(self.at(
                                &d.nic,
                                format!("`af_xdp:` queue `{q}`: a number from 0 to 1023, as in `af_xdp:IFACE/0`"),
                            ));
                        }
                    },
                    None => (rest, 0),
                };
                if name.is_empty() || name.len() > 15 || name.contains(['/', ' ', ':', ',']) {
                    return Err(self.at(
                        &d.nic,
                        "`af_xdp:` needs an interface name of 1 to 15 characters: `af_xdp:IFACE[/QUEUE]`",
                    ));
                }
                NicSpec::AfXdp { iface: name.to_string(), queue }
            }
            s if s.starts_with("dpdk:") => {
                if !cfg!(feature = "dpdk") {
                    return Err(self.at(
                        &d.nic,
                        "this switchyard was built without DPDK: rebuild with `cargo build --features dpdk` (needs libdpdk-dev, see scripts/setup.sh)",
                    ));
                }
                // DPDK's convention: the application's own options follow `--`.
                let rest = &s["dpdk:".len()..];
                let (eal, ours) = match rest.split_once(" -- ") {
                    Some((e, o)) => (e, o),
                    None => (rest.strip_suffix(" --").unwrap_or(rest), ""),
                };
                let mut port = 0u16;
                for opt in ours.split_whitespace() {
                    port = opt.strip_prefix("port=").and_then(|n| n.parse().ok()).ok_or_else(
                        || {
                            self.at(
                                &d.nic,
                                format!(
                                    "`dpdk:` option `{opt}` after `--`: the only option is `port=N` (an ethdev port id)"
                                ),
                            )
                        },
                    )?;
                }
                NicSpec::Dpdk { eal: eal.trim().to_string(), port }
            }
            other => {
                return Err(self.at(
                    &d.nic,
                    format!(
                        "unknown NIC backend `{other}`: expected `sim`, `pcap:IN[,OUT]`, `tap:NAME`, `af_packet:IFACE`, `af_xdp:IFACE[/QUEUE]` or `dpdk:EAL ARGS`"
                    ),
                ));
            }
        };
        let mac = parse_mac(d.mac.get_ref()).ok_or_else(|| {
            self.at(
                &d.mac,
                format!("`{}` is not a MAC address like 02:00:00:00:00:01", d.mac.get_ref()),
            )
        })?;
        if mac[0] & 1 == 1 {
            return Err(self.at(&d.mac, "the device MAC must be unicast"));
        }
        let mut addresses = Vec::new();
        for a in d.addresses.get_ref() {
            let (ip, prefix) = a
                .get_ref()
                .split_once('/')
                .and_then(|(ip, p)| Some((ip.parse::<IpAddr>().ok()?, p.parse::<u8>().ok()?)))
                .filter(|(ip, p)| *p <= if ip.is_ipv4() { 32 } else { 128 })
                .ok_or_else(|| {
                    self.at(
                        a,
                        format!(
                            "`{}` is not an address with prefix like 198.18.0.2/24",
                            a.get_ref()
                        ),
                    )
                })?;
            addresses.push((ip, prefix));
        }
        if addresses.is_empty() {
            return Err(self.at(&d.addresses, "at least one interface address is needed"));
        }
        let gateway = match &d.gateway {
            Some(g) => Some(
                g.get_ref()
                    .parse::<IpAddr>()
                    .map_err(|_| self.at(g, format!("`{}` is not an IP address", g.get_ref())))?,
            ),
            None => None,
        };
        let workers = *d.workers.get_ref();
        if !(1..=MAX_WORKERS).contains(&workers) {
            return Err(
                self.at(&d.workers, format!("`workers = {workers}`: between 1 and {MAX_WORKERS}"))
            );
        }
        // Flows reach their worker through the kernel's fanout of packet
        // sockets (AF_PACKET) or a software dispatcher (TAP, AF_XDP, DPDK);
        // a simulation or a replay runs one worker.
        if workers > 1 && matches!(nic, NicSpec::Sim | NicSpec::Pcap { .. }) {
            return Err(self.at(
                &d.workers,
                format!(
                    "`workers = {workers}` needs a live device (`tap:`, `af_packet:`, `af_xdp:` or `dpdk:`); `sim` and `pcap:` run one worker"
                ),
            ));
        }
        // Simulations and replays repeat with a fixed seed; on a real
        // interface each start gets its own (initial sequence numbers and
        // ephemeral ports must not repeat across restarts).
        let seed = d.seed.unwrap_or_else(|| match nic {
            NicSpec::Tap { .. }
            | NicSpec::AfPacket { .. }
            | NicSpec::AfXdp { .. }
            | NicSpec::Dpdk { .. } => random_seed(),
            _ => 0x5717_c4a2d,
        });
        Ok(Device { nic, mac, addresses, gateway, workers, seed })
    }

    fn sim(&self, s: &RawSim, listeners: &[Listener], pools: &[Pool]) -> Result<Sim, ConfigError> {
        let mut clients = Vec::new();
        for c in &s.client {
            let kind = match c.kind.get_ref().as_str() {
                "http" => SimClientKind::Http,
                "https" => SimClientKind::Https,
                "h2c" => SimClientKind::H2c,
                "h2" => SimClientKind::H2,
                "bulk" => SimClientKind::Bulk,
                "udp" => SimClientKind::Udp,
                other => {
                    return Err(self.at(
                        &c.kind,
                        format!(
                            "kind `{other}`: expected `http`, `https`, `h2c`, `h2`, `bulk` or `udp`"
                        ),
                    ));
                }
            };
            let listener = listeners
                .iter()
                .position(|l| l.name == *c.listener.get_ref())
                .ok_or_else(|| {
                    let names: Vec<&str> = listeners.iter().map(|l| l.name.as_str()).collect();
                    let hint = nearest(c.listener.get_ref(), &names)
                        .map(|n| format!(" (did you mean `{n}`?)"))
                        .unwrap_or_default();
                    self.at(
                        &c.listener,
                        format!("no listener named `{}`{hint}", c.listener.get_ref()),
                    )
                })?;
            match (&listeners[listener].mode, kind) {
                (Mode::L7 { tls: None, .. }, SimClientKind::Http)
                | (Mode::L7 { tls: Some(_), .. }, SimClientKind::Https)
                | (Mode::L7 { tls: None, http2: true, .. }, SimClientKind::H2c)
                | (Mode::L7 { tls: Some(_), http2: true, .. }, SimClientKind::H2)
                | (Mode::L4 { proto: Proto::Tcp, .. }, SimClientKind::Bulk)
                | (Mode::L4 { proto: Proto::Udp, .. }, SimClientKind::Udp) => {}
                (Mode::L7 { .. }, SimClientKind::Http | SimClientKind::Https) => {
                    return Err(self.at(
                        &c.kind,
                        format!(
                            "`https` clients go to L7 listeners with `tls`, `http` clients to those without: listener `{}`",
                            listeners[listener].name
                        ),
                    ));
                }
                (Mode::L7 { .. }, SimClientKind::H2) => {
                    return Err(self.at(
                        &c.kind,
                        format!(
                            "`h2` clients speak HTTP/2 over TLS: listener `{}` needs `tls` and `http2 = true` (the default)",
                            listeners[listener].name
                        ),
                    ));
                }
                (Mode::L7 { .. }, SimClientKind::H2c) => {
                    return Err(self.at(
                        &c.kind,
                        format!(
                            "`h2c` clients speak cleartext HTTP/2: listener `{}` needs `http2 = true` (the default) and no `tls`",
                            listeners[listener].name
                        ),
                    ));
                }
                _ => {
                    return Err(self.at(
                        &c.kind,
                        "`http`, `https`, `h2c` and `h2` clients go to L7 listeners, `bulk` clients to TCP L4 listeners and `udp` clients to UDP L4 listeners",
                    ));
                }
            }
            if matches!(
                kind,
                SimClientKind::Http | SimClientKind::Https | SimClientKind::H2c | SimClientKind::H2
            ) {
                if c.paths.is_empty() {
                    return Err(self.at(
                        &c.kind,
                        format!("an `{}` client needs `paths = [\"/...\"]`", c.kind.get_ref()),
                    ));
                }
                if let Some(p) = c
                    .paths
                    .iter()
                    .find(|p| !p.starts_with('/') || p.bytes().any(|b| !b.is_ascii_graphic()))
                {
                    return Err(self.at(
                        &c.name,
                        format!("path `{p}`: paths start with `/` and hold no spaces or control characters"),
                    ));
                }
            }
            let addr = c.address.get_ref().parse::<IpAddr>().map_err(|_| {
                self.at(&c.address, format!("`{}` is not an IP address", c.address.get_ref()))
            })?;
            if !(0.0..0.5).contains(&c.loss) || !(0.0..0.5).contains(&c.reorder) {
                return Err(self.at(&c.name, "loss and reorder are probabilities below 0.5"));
            }
            clients.push(SimClient {
                name: c.name.get_ref().clone(),
                kind,
                listener,
                addr,
                concurrency: self.range_u32(&c.concurrency, 1, 10_000)?,
                paths: c.paths.clone(),
                requests_per_connection: c.requests_per_connection.max(1),
                bytes_per_stream: c.bytes_per_stream.max(1),
                total: c.total,
                loss: c.loss,
                reorder: c.reorder,
                latency_us: c.latency_us,
                start_ms: c.start_ms,
                connects_per_ms: c.connects_per_ms,
                tls: self.sim_tls(c, kind)?,
            });
        }
        let mut admin = Vec::new();
        for a in &s.admin {
            let line = a.command.get_ref();
            match crate::admin::Command::parse(line) {
                Ok(crate::admin::Command::Drain { pool, backend, .. }) => {
                    let Some(p) = pools.iter().find(|p| p.name == pool) else {
                        return Err(self.at(&a.command, format!("no pool `{pool}`")));
                    };
                    if !p.backends.iter().any(|b| b.name == backend) {
                        return Err(self
                            .at(&a.command, format!("pool `{pool}` has no backend `{backend}`")));
                    }
                }
                Ok(_) => {}
                Err(e) => return Err(self.at(&a.command, e)),
            }
            // Within the longest run (`seconds` is at most a day).
            let at = *a.at_ms.get_ref();
            if at > 86_400_000 {
                return Err(self.at(&a.at_ms, format!("{at} is out of range 0..=86400000")));
            }
            admin.push((Duration::from_millis(at), line.clone()));
        }
        admin.sort_by_key(|a| a.0);
        Ok(Sim {
            seed: s.seed,
            seconds: self.range_u32(&s.seconds, 1, 86_400)?,
            // Each origin holds a body of this size per path.
            body_size: self.range_u32(&s.body_size, 0, 64 << 20)?,
            host_buffer: match &s.host_buffer {
                Some(v) => self.range_u32(v, 1024, 16 << 20)? as usize,
                None => 65536,
            },
            origin_backlog: match &s.origin_backlog {
                Some(v) => self.range_u32(v, 1, 65536)? as usize,
                None => 256,
            },
            clients,
            admin,
        })
    }

    /// An `https` or `h2` client's TLS; its keys on another kind are an
    /// error.
    fn sim_tls(
        &self,
        c: &RawSimClient,
        kind: SimClientKind,
    ) -> Result<Option<SimTls>, ConfigError> {
        if !matches!(kind, SimClientKind::Https | SimClientKind::H2) {
            if let Some(span) = [&c.ca, &c.server_name, &c.tls_version]
                .into_iter()
                .flatten()
                .map(|v| v.span())
                .next()
            {
                return Err(self.err(
                    span,
                    "`ca`, `server_name` and `tls_version` are for `https` and `h2` clients",
                ));
            }
            return Ok(None);
        }
        let Some(ca) = &c.ca else {
            return Err(self.at(
                &c.kind,
                format!(
                    "an `{}` client needs `ca = \"ca.pem\"` (the CA of the listener's certificate)",
                    c.kind.get_ref()
                ),
            ));
        };
        let dir = Path::new(self.file).parent().unwrap_or(Path::new("."));
        let tls12 = match c.tls_version.as_ref().map(|v| (v, v.get_ref().as_str())) {
            None | Some((_, "1.3")) => false,
            Some((_, "1.2")) => true,
            Some((v, other)) => {
                return Err(self.at(v, format!("tls_version `{other}`: expected `1.2` or `1.3`")));
            }
        };
        Ok(Some(SimTls {
            ca: dir.join(ca.get_ref()),
            server_name: c.server_name.as_ref().map_or("localhost".into(), |n| n.get_ref().clone()),
            tls12,
        }))
    }

    /// The HTTP probe of a `[pool.health]` with `http_path`; the other HTTP
    /// keys without it are an error.
    fn http_check(&self, h: &RawHealth) -> Result<Option<HttpCheck>, ConfigError> {
        let Some(path) = &h.http_path else {
            let stray = [
                h.http_method.as_ref().map(|v| v.span()),
                h.http_host.as_ref().map(|v| v.span()),
                h.expect_status.as_ref().map(|v| v.span()),
                h.body_contains.as_ref().map(|v| v.span()),
            ];
            if let Some(span) = stray.into_iter().flatten().next() {
                return Err(self.err(span, "HTTP check keys need `http_path`"));
            }
            return Ok(None);
        };
        let printable = |v: &str| !v.is_empty() && v.bytes().all(|b| b.is_ascii_graphic());
        if !path.get_ref().starts_with('/') || !printable(path.get_ref()) {
            return Err(self.at(path, "an HTTP check path starts with `/` and has no spaces"));
        }
        let method = match &h.http_method {
            Some(m)
                if !m.get_ref().bytes().all(|b| b.is_ascii_uppercase())
                    || m.get_ref().is_empty() =>
            {
                return Err(self.at(m, "an HTTP method is upper-case letters, like `GET`"));
            }
            Some(m) => m.get_ref().as_str(),
            None => "GET",
        };
        let host = match &h.http_host {
            Some(v) if !printable(v.get_ref()) => {
                return Err(self.at(v, "an HTTP check host has no spaces"));
            }
            Some(v) => v.get_ref().as_str(),
            None => "localhost",
        };
        let status = match &h.expect_status {
            None => (200, 399),
            Some(v) => {
                let range = match v.get_ref() {
                    RawStatus::One(n) => Some((*n, *n)),
                    RawStatus::Range(r) => r
                        .split_once('-')
                        .and_then(|(a, b)| Some((a.trim().parse().ok()?, b.trim().parse().ok()?))),
                };
                match range {
                    Some((a, b)) if (100..=599).contains(&a) && (a..=599).contains(&b) => (a, b),
                    _ => {
                        return Err(
                            self.at(v, "expected a status like 200 or a range like \"200-399\"")
                        );
                    }
                }
            }
        };
        let mut check = HttpCheck::new(method, path.get_ref(), host, status);
        check.body_contains = h.body_contains.as_ref().map(|b| b.get_ref().clone().into_bytes());
        Ok(Some(check))
    }

    fn http(&self, h: &RawHttp) -> Result<switchyard_l7::Limits, ConfigError> {
        let mut l = switchyard_l7::Limits::default();
        let ms = |v: u32| Duration::from_millis(u64::from(v));
        if let Some(v) = &h.max_head_bytes {
            l.max_head = self.range_u32(v, 256, 1 << 20)? as usize;
        }
        if let Some(v) = &h.max_request_line_bytes {
            l.max_request_line = self.range_u32(v, 64, 1 << 20)? as usize;
        }
        if let Some(v) = &h.max_headers {
            l.max_headers = self.range_u32(v, 1, switchyard_l7::MAX_HEADERS as u32)? as usize;
        }
        if let Some(v) = &h.request_timeout_ms {
            l.request_timeout = ms(self.range_u32(v, 1, 3_600_000)?);
        }
        if let Some(v) = &h.idle_timeout_ms {
            l.idle_timeout = ms(self.range_u32(v, 1, 3_600_000)?);
        }
        if let Some(v) = &h.head_timeout_ms {
            l.head_timeout = ms(self.range_u32(v, 1, 3_600_000)?);
        }
        if let Some(v) = &h.connect_timeout_ms {
            l.connect_timeout = ms(self.range_u32(v, 1, 600_000)?);
        }
        if let Some(v) = &h.idle_upstreams_per_backend {
            l.max_idle_upstream_per_backend = self.range_u32(v, 0, 65_536)? as usize;
        }
        Ok(l)
    }

    fn range_u32(&self, v: &Spanned<u32>, lo: u32, hi: u32) -> Result<u32, ConfigError> {
        let x = *v.get_ref();
        if x < lo || x > hi {
            return Err(self.at(v, format!("{x} is out of range {lo}..={hi}")));
        }
        Ok(x)
    }

    fn port_range(&self, v: &Spanned<String>) -> Result<Range<u16>, ConfigError> {
        let bad = || self.at(v, format!("`{}` is not a port range like 40960-65535", v.get_ref()));
        let (a, b) = v.get_ref().split_once('-').ok_or_else(bad)?;
        let a: u16 = a.trim().parse().map_err(|_| bad())?;
        let b: u16 = b.trim().parse().map_err(|_| bad())?;
        if a == 0 || b < a || b == u16::MAX {
            return Err(bad());
        }
        Ok(a..b + 1)
    }

    /// A listener address: `ip:port`, or `ip:first-last` for an L4 port range.
    fn listener_addr(&self, v: &Spanned<String>) -> Result<(SocketAddr, u16), ConfigError> {
        let text = v.get_ref();
        if let Some((head, last)) = text.rsplit_once('-')
            && let Some((ip, first)) = head.rsplit_once(':')
            && first.chars().all(|c| c.is_ascii_digit())
        {
            let bad = || {
                self.at(v, format!("`{text}` is not an address:first-last port range like 198.18.0.10:5000-5099"))
            };
            let addr: SocketAddr = format!("{ip}:{first}").parse().map_err(|_| bad())?;
            let last: u16 = last.parse().map_err(|_| bad())?;
            if addr.port() == 0 || last < addr.port() {
                return Err(bad());
            }
            return Ok((addr, last));
        }
        let a = self.socket_addr(v)?;
        Ok((a, a.port()))
    }

    /// A backend address: `ip:port`, or a bare IP (port 0) meaning the port the
    /// client used on the VIP (for L4 listeners over a port range).
    fn backend_addr(&self, v: &Spanned<String>) -> Result<SocketAddr, ConfigError> {
        if let Ok(ip) = v.get_ref().parse::<IpAddr>() {
            return Ok(SocketAddr::new(ip, 0));
        }
        self.socket_addr(v)
    }

    /// A pool's `tls`: files loaded and checked, a server name for every
    /// backend, ALPN by protocol (`h2` needs TLS, `h2c` refuses it), and an
    /// address with TLS in no other pool (TLS is set per backend address).
    fn pool_tls(
        &self,
        p: &RawPool,
        backends: &[Backend],
        earlier: &[Pool],
    ) -> Result<Option<PoolTls>, ConfigError> {
        let protocol = p.protocol.as_ref().map(|v| v.get_ref().as_str());
        let Some(t) = &p.tls else {
            if protocol == Some("h2") {
                return Err(self.at(
                    p.protocol.as_ref().unwrap_or(&p.name),
                    "protocol `h2` is HTTP/2 over TLS: give the pool `tls = { ca = \"...\" }` (or use `h2c`)",
                ));
            }
            for b in backends {
                if let Some(q) = earlier
                    .iter()
                    .find(|q| q.tls.is_some() && q.backends.iter().any(|o| o.addr == b.addr))
                {
                    return Err(self.at(
                        &p.name,
                        format!("backend {} is reached over TLS in pool `{}`; TLS is set per backend address, so give this pool the same `tls` or use another address", b.addr, q.name),
                    ));
                }
            }
            return Ok(None);
        };
        let raw = t.get_ref();
        if protocol == Some("h2c") {
            return Err(self.at(t, "`h2c` is cleartext HTTP/2: with `tls` use protocol = \"h2\""));
        }
        let dir = Path::new(self.file).parent().unwrap_or(Path::new("."));
        let no_verify = match (raw.verify, &raw.ca) {
            (Some(false), None) => true,
            (Some(false), Some(_)) => {
                return Err(self.at(t, "`verify = false` and a `ca` contradict each other"));
            }
            (_, Some(_)) => false,
            (_, None) => {
                return Err(self.at(
                    t,
                    "give `ca = \"backend-ca.pem\"` to verify backends, or `verify = false` (insecure: any certificate is taken)",
                ));
            }
        };
        let cert_key = match (&raw.cert, &raw.key) {
            (Some(c), Some(k)) => Some((dir.join(c), dir.join(k))),
            (None, None) => None,
            _ => return Err(self.at(t, "a client certificate needs both `cert` and `key`")),
        };
        let alpn: &[u8] = if protocol == Some("h2") { b"h2" } else { b"http/1.1" };
        let opts = switchyard_tls::ClientOptions {
            ca: raw.ca.as_ref().map(|c| dir.join(c)),
            no_verify,
            cert_key,
            alpn: vec![alpn.to_vec()],
        };
        let config = switchyard_tls::client_config(&opts).map_err(|e| {
            let what = match &e {
                switchyard_tls::TlsError::File { path, .. }
                    if opts.ca.as_ref().is_some_and(|c| c.display().to_string() == *path) =>
                {
                    "ca"
                }
                switchyard_tls::TlsError::File { .. } => "cert/key",
                switchyard_tls::TlsError::Mismatch { .. } => "cert and key",
                switchyard_tls::TlsError::Config(_) => "tls",
            };
            self.at(t, format!("{what}: {e}"))
        })?;
        let mut sni = Vec::new();
        for b in backends {
            let name = match &raw.sni {
                Some(n) => n.clone(),
                None if switchyard_tls::is_dns_name(&b.name) => b.name.clone(),
                None => {
                    return Err(self.at(
                        t,
                        format!("backend `{}`: its name is not a DNS name to verify; give `sni = \"...\"`", b.name),
                    ));
                }
            };
            if !switchyard_tls::is_server_name(&name) {
                return Err(self.at(t, format!("sni `{name}` is not a DNS name or an IP address")));
            }
            if let Some(q) = earlier.iter().find(|q| q.backends.iter().any(|o| o.addr == b.addr)) {
                return Err(self.at(
                    t,
                    format!("backend {} is in pool `{}` too; TLS is set per backend address, so it may be in only one pool with `tls`", b.addr, q.name),
                ));
            }
            sni.push(name);
        }
        Ok(Some(PoolTls { config, sni }))
    }

    fn socket_addr(&self, v: &Spanned<String>) -> Result<SocketAddr, ConfigError> {
        let a: SocketAddr = v.get_ref().parse().map_err(|_| {
            self.at(v, format!("`{}` is not an address:port like 198.18.0.10:80", v.get_ref()))
        })?;
        if a.port() == 0 {
            return Err(self.at(v, "port 0 is not a port"));
        }
        Ok(a)
    }
}

/// 1-based line and column of a byte offset.
/// A seed from the process's randomly keyed hasher (no extra dependency).
fn random_seed() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0),
    );
    h.finish()
}

fn line_col(src: &str, offset: usize) -> (usize, usize) {
    let offset = offset.min(src.len());
    let before = &src.as_bytes()[..offset];
    let line = before.iter().filter(|&&b| b == b'\n').count() + 1;
    let col = offset - before.iter().rposition(|&b| b == b'\n').map(|p| p + 1).unwrap_or(0) + 1;
    (line, col)
}

/// The dotted key at a byte offset: the nearest table header above it (with an
/// index for arrays of tables) and the key on the offset's line.
fn key_path(src: &str, offset: usize) -> String {
    let offset = offset.min(src.len());
    let line_start = src[..offset].rfind('\n').map(|p| p + 1).unwrap_or(0);
    let line_end = src[line_start..].find('\n').map(|p| line_start + p).unwrap_or(src.len());
    let trimmed = src[line_start..line_end].trim_start();
    let is_header = trimmed.starts_with('[');
    let key = if is_header {
        String::new()
    } else {
        trimmed.split(['=', ' ', '\t']).next().unwrap_or("").trim().trim_matches('"').to_string()
    };
    let mut header = String::new();
    let mut counts: Vec<(String, usize)> = Vec::new();
    for l in src[..if is_header { line_end } else { line_start }].lines() {
        let t = l.trim();
        if let Some(name) = t.strip_prefix("[[").and_then(|r| r.split("]]").next()) {
            let name = name.trim().to_string();
            // A new element of a parent array restarts the count of its children.
            counts.retain(|(n, _)| !n.starts_with(&format!("{name}.")));
            match counts.iter_mut().find(|(n, _)| *n == name) {
                Some((_, c)) => *c += 1,
                None => counts.push((name.clone(), 0)),
            }
            header = indexed(&name, &counts);
        } else if let Some(name) = t.strip_prefix('[').and_then(|r| r.split(']').next()) {
            header = name.trim().to_string();
        }
    }
    match (header.is_empty(), key.is_empty()) {
        (true, _) => key,
        (false, true) => header,
        (false, false) => format!("{header}.{key}"),
    }
}

fn indexed(name: &str, counts: &[(String, usize)]) -> String {
    let mut out = String::new();
    let mut prefix = String::new();
    for part in name.split('.') {
        if !prefix.is_empty() {
            prefix.push('.');
            out.push('.');
        }
        prefix.push_str(part);
        out.push_str(part);
        if let Some((_, c)) = counts.iter().find(|(n, _)| *n == prefix) {
            out.push_str(&format!("[{c}]"));
        }
    }
    out
}

/// From serde's "unknown field `x`, expected one of `a`, `b`" (or "unknown
/// variant"), the expected name nearest to `x`.
fn suggestion(msg: &str) -> Option<String> {
    let rest =
        msg.strip_prefix("unknown field `").or_else(|| msg.strip_prefix("unknown variant `"))?;
    let (got, rest) = rest.split_once('`')?;
    let expected: Vec<&str> = rest.split('`').skip(1).step_by(2).collect();
    nearest(got, &expected).map(str::to_string)
}

/// The candidate nearest to `got`, if any is close enough to be a likely typo.
fn nearest<'a>(got: &str, candidates: &[&'a str]) -> Option<&'a str> {
    candidates
        .iter()
        .map(|c| (strsim::damerau_levenshtein(got, c), *c))
        .filter(|(d, c)| *d <= 2.max(c.len() / 3))
        .min_by_key(|(d, _)| *d)
        .map(|(_, c)| c)
}

fn parse_mac(s: &str) -> Option<[u8; 6]> {
    let mut mac = [0u8; 6];
    let mut parts = s.split(':');
    for b in &mut mac {
        let p = parts.next()?;
        if p.len() != 2 {
            return None;
        }
        *b = u8::from_str_radix(p, 16).ok()?;
    }
    parts.next().is_none().then_some(mac)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn err(src: &str) -> ConfigError {
        match Config::parse("t.toml", src) {
            Ok(_) => panic!("config should be refused:\n{src}"),
            Err(e) => e,
        }
    }

    const BASE: &str = r#"
[device]
nic = "pcap:in.pcap"
mac = "02:00:00:00:00:01"
addresses = ["198.18.0.2/24"]

[[listener]]
name = "pg"
mode = "l4"
address = "198.18.0.10:5432"
pool = "db"

[[listener]]
name = "web"
mode = "l7"
address = "198.18.0.10:80"
  [[listener.route]]
  path_prefix = "/api/"
  pool = "db"

[[pool]]
name = "db"
backends = [{ name = "a", address = "198.18.0.21:5432" }]
"#;

    #[test]
    fn h2c_sim_clients_need_a_cleartext_http2_l7_listener() {
        let sim = |listener: &str, paths: &str| {
            format!(
                "{BASE}\n[sim]\nseed = 1\nseconds = 1\nbody_size = 16\n\n[[sim.client]]\nname = \"c\"\nkind = \"h2c\"\nlistener = \"{listener}\"\naddress = \"198.18.0.101\"\npaths = {paths}\n"
            )
        };
        let c = Config::parse("t.toml", &sim("web", "[\"/a\"]")).unwrap();
        let s = c.sim.expect("sim section");
        assert_eq!((s.clients[0].kind, s.clients[0].listener), (SimClientKind::H2c, 1));
        // HTTP/2 off on the listener.
        let off = sim("web", "[\"/a\"]")
            .replace("address = \"198.18.0.10:80\"", "address = \"198.18.0.10:80\"\nhttp2 = false");
        let e = err(&off);
        assert_eq!((e.line, e.key.as_str()), (33, "sim.client[0].kind"), "{e}");
        assert!(e.message.contains("`http2 = true`"), "{e}");
        // An L4 listener.
        let e = err(&sim("pg", "[\"/a\"]"));
        assert_eq!(e.key, "sim.client[0].kind", "{e}");
        assert!(e.message.contains("`h2c` and `h2` clients go to L7 listeners"), "{e}");
        // Paths.
        let e = err(&sim("web", "[]"));
        assert!(e.message.contains("an `h2c` client needs `paths"), "{e}");
        let e = err(&sim("web", "[\"a b\"]"));
        assert_eq!(e.key, "sim.client[0].name", "{e}");
        assert!(e.message.contains("path `a b`"), "{e}");
        let e = err(&sim("web", "[\"/a\"]").replace("\"h2c\"", "\"h3\""));
        assert!(
            e.message.contains("expected `http`, `https`, `h2c`, `h2`, `bulk` or `udp`"),
            "{e}"
        );
        // HTTP/2 over TLS goes to a listener with TLS, and needs its CA.
        let h2 = sim("web", "[\"/a\"]").replace("\"h2c\"", "\"h2\"");
        let e = err(&h2);
        assert_eq!(e.key, "sim.client[0].kind", "{e}");
        assert!(e.message.contains("`h2` clients speak HTTP/2 over TLS"), "{e}");
        let e = err(&h2.replace("kind = \"h2\"", "kind = \"h2c\"\nca = \"ca.pem\""));
        assert!(e.message.contains("are for `https` and `h2` clients"), "{e}");
    }

    /// Sim values that would overflow a time or allocate gigabytes are
    /// errors at their key, not a panic or an abort later.
    #[test]
    fn sim_times_and_sizes_are_bounded() {
        let sim = |extra: &str| {
            format!(
                "{BASE}\n[sim]\nseed = 1\nseconds = 1\n{extra}\n[[sim.client]]\nname = \"c\"\nkind = \"http\"\nlistener = \"web\"\naddress = \"198.18.0.101\"\npaths = [\"/a\"]\n"
            )
        };
        assert!(Config::parse("t.toml", &sim("body_size = 65536\n")).is_ok());
        let e = err(&sim("body_size = 4294967295\n"));
        assert_eq!(e.key, "sim.body_size", "{e}");
        assert!(e.message.contains("out of range"), "{e}");
        let admin = |at: &str| sim(&format!("[[sim.admin]]\nat_ms = {at}\ncommand = \"help\"\n"));
        assert!(Config::parse("t.toml", &admin("500")).is_ok());
        let e = err(&admin("9223372036854775807"));
        assert_eq!(e.key, "sim.admin[0].at_ms", "{e}");
        assert!(e.message.contains("out of range"), "{e}");
    }

    #[test]
    fn demo_config_is_valid() {
        let c = Config::demo();
        assert_eq!(c.listeners.len(), 2);
        assert!(c.sim.is_some());
    }

    #[test]
    fn base_is_valid() {
        let c = Config::parse("t.toml", BASE).unwrap();
        assert_eq!(c.listeners[1].name, "web");
        assert!(matches!(&c.listeners[1].mode, Mode::L7 { routes, .. } if routes[0].pool == 0));
    }

    #[test]
    fn unknown_key_names_line_key_and_suggestion() {
        let e = err(&BASE.replace("pool = \"db\"\n\n[[listener]]", "pol = \"db\"\n\n[[listener]]"));
        assert_eq!(e.line, 11, "{e}");
        assert_eq!(e.key, "listener[0].pol", "{e}");
        assert!(e.message.contains("did you mean `pool`?"), "{e}");
        assert!(e.to_string().starts_with("t.toml:11:"), "{e}");
    }

    #[test]
    fn workers_need_a_live_device_and_a_sane_count() {
        let two = |nic: &str| {
            BASE.replace("nic = \"pcap:in.pcap\"", &format!("nic = \"{nic}\"\nworkers = 2"))
        };
        for nic in ["af_packet:lb0", "tap:tap0", "af_xdp:lb0/1"] {
            let c = Config::parse("t.toml", &two(nic)).unwrap();
            assert_eq!(c.device.workers, 2, "{nic}");
        }
        // A replay (and a simulation) runs one worker.
        let e = err(&two("pcap:in.pcap"));
        assert_eq!((e.line, e.key.as_str()), (4, "device.workers"), "{e}");
        assert!(e.message.contains("needs a live device"), "{e}");
        assert!(e.to_string().starts_with("t.toml:4:"), "{e}");
        let e =
            err(&BASE.replace("nic = \"pcap:in.pcap\"", "nic = \"af_packet:lb0\"\nworkers = 0"));
        assert!(e.message.contains("between 1 and 64"), "{e}");
    }

    #[test]
    fn af_packet_options() {
        let with = |nic: &str| BASE.replace("nic = \"pcap:in.pcap\"", &format!("nic = \"{nic}\""));
        let nic = |n: &str| Config::parse("t.toml", &with(n)).unwrap().device.nic;
        let spec = |v3, gso| NicSpec::AfPacket { iface: "lb0".into(), v3, gso };
        assert_eq!(nic("af_packet:lb0"), spec(false, Merge::Flights));
        assert_eq!(nic("af_packet:lb0,nogso"), spec(false, Merge::Off));
        assert_eq!(nic("af_packet:lb0,v3,nogso"), spec(true, Merge::Off));
        assert_eq!(nic("af_packet:lb0,v3"), spec(true, Merge::Flights));
        assert_eq!(nic("af_packet:lb0,gso"), spec(false, Merge::All));
        assert_eq!(nic("af_packet:lb0,v3,gso,gso"), spec(true, Merge::All));
        for bad in ["tap:tap0,gso", "tap:tap0,nogso", "af_packet:lb0,v3,v4"] {
            let e = err(&with(bad));
            assert_eq!(e.key, "device.nic", "{e}");
            assert!(e.message.contains("the options are"), "{bad}: {e}");
        }
        let e = err(&with("af_packet:lb0,gso,nogso"));
        assert_eq!(e.key, "device.nic", "{e}");
        assert!(e.message.contains("exclude each other"), "{e}");
    }

    #[test]
    fn the_tls_engine_is_inline_when_the_workers_have_every_cpu() {
        let c = Config::parse("t.toml", BASE).unwrap();
        assert_eq!(c.tls, TlsEngineConfig { engine: TlsEngine::Auto, inline_steps: 1 });
        // auto: one worker on one CPU, two on two, inline; with a CPU to
        // spare, a thread.
        assert_eq!(c.tls.resolve(1, 1), TlsEngine::Inline);
        assert_eq!(c.tls.resolve(2, 2), TlsEngine::Inline);
        assert_eq!(c.tls.resolve(1, 2), TlsEngine::Thread);
        let with = |t: &str| format!("{BASE}\n[tls]\n{t}\n");
        let c = Config::parse("t.toml", &with("engine = \"thread\"")).unwrap();
        assert_eq!(c.tls.resolve(4, 1), TlsEngine::Thread);
        let c = Config::parse("t.toml", &with("engine = \"inline\"\ninline_steps = 4")).unwrap();
        assert_eq!((c.tls.resolve(1, 8), c.tls.inline_steps), (TlsEngine::Inline, 4));
        let e = err(&with("engine = \"inlined\""));
        assert_eq!(e.key, "tls.engine", "{e}");
        assert!(e.message.contains("did you mean `inline`?"), "{e}");
        let e = err(&with("inline_steps = 0"));
        assert_eq!(e.key, "tls.inline_steps", "{e}");
        // What `auto` counts: workers, and a software dispatcher.
        let dev = |nic: &str, n: u32| {
            let mut c = Config::parse("t.toml", BASE).unwrap();
            c.device.nic =
                Config::parse("t.toml", &BASE.replace("pcap:in.pcap", nic)).unwrap().device.nic;
            c.device.workers = n;
            c.polling_threads()
        };
        assert_eq!(dev("af_packet:lb0", 1), 1);
        assert_eq!(dev("af_packet:lb0", 2), 2);
        assert_eq!(dev("tap:tap0", 1), 1);
        assert_eq!(dev("tap:tap0", 2), 3);
        // A replay (pcap:in.pcap in BASE) repeats only with handshakes
        // inline; a live port with a CPU to spare gets the thread.
        let c = Config::parse("t.toml", BASE).unwrap();
        assert_eq!(c.tls_engine(8), TlsEngine::Inline);
        let live = Config::parse("t.toml", &BASE.replace("pcap:in.pcap", "af_packet:lb0")).unwrap();
        assert_eq!(
            (live.tls_engine(8), live.tls_engine(1)),
            (TlsEngine::Thread, TlsEngine::Inline)
        );
        let c = Config::parse("t.toml", &with("engine = \"thread\"")).unwrap();
        assert_eq!(c.tls_engine(8), TlsEngine::Thread);
    }

    #[cfg(feature = "dpdk")]
    #[test]
    fn dpdk_takes_eal_arguments_and_a_port_after_a_double_dash() {
        let with = |nic: &str| BASE.replace("nic = \"pcap:in.pcap\"", &format!("nic = \"{nic}\""));
        let c = Config::parse("t.toml", &with("dpdk:--no-huge --vdev=net_ring0")).unwrap();
        assert_eq!(
            c.device.nic,
            NicSpec::Dpdk { eal: "--no-huge --vdev=net_ring0".into(), port: 0 }
        );
        let c = Config::parse("t.toml", &with("dpdk:-a 0000:01:00.0 -- port=1")).unwrap();
        assert_eq!(c.device.nic, NicSpec::Dpdk { eal: "-a 0000:01:00.0".into(), port: 1 });
        let e = err(&with("dpdk:--no-huge -- queue=2"));
        assert_eq!((e.line, e.key.as_str()), (3, "device.nic"), "{e}");
        assert!(e.message.contains("the only option is `port=N`"), "{e}");
    }

    #[cfg(not(feature = "dpdk"))]
    #[test]
    fn dpdk_without_the_feature_says_how_to_build_it() {
        let e = err(&BASE.replace("nic = \"pcap:in.pcap\"", "nic = \"dpdk:--no-huge\""));
        assert_eq!((e.line, e.key.as_str()), (3, "device.nic"), "{e}");
        assert!(e.message.contains("built without DPDK"), "{e}");
        assert!(e.message.contains("cargo build --features dpdk"), "{e}");
    }

    #[test]
    fn af_xdp_takes_an_interface_and_an_optional_queue() {
        let with = |nic: &str| BASE.replace("nic = \"pcap:in.pcap\"", &format!("nic = \"{nic}\""));
        let c = Config::parse("t.toml", &with("af_xdp:lb0")).unwrap();
        assert_eq!(c.device.nic, NicSpec::AfXdp { iface: "lb0".into(), queue: 0 });
        let c = Config::parse("t.toml", &with("af_xdp:lb0/1")).unwrap();
        assert_eq!(c.device.nic, NicSpec::AfXdp { iface: "lb0".into(), queue: 1 });
        for (bad, says) in [
            ("af_xdp:", "needs an interface name"),
            ("af_xdp:/1", "needs an interface name"),
            ("af_xdp:averyveryverylongname", "needs an interface name"),
            ("af_xdp:lb0/", "queue ``"),
            ("af_xdp:lb0/x", "queue `x`"),
            ("af_xdp:lb0/-1", "queue `-1`"),
            ("af_xdp:lb0/1/2", "queue `1/2`"),
            ("af_xdp:lb0/4096", "queue `4096`"),
            ("afxdp:lb0", "unknown NIC backend `afxdp:lb0`"),
        ] {
            let e = err(&with(bad));
            assert_eq!((e.line, e.key.as_str()), (3, "device.nic"), "{bad}: {e}");
            assert!(e.message.contains(says), "{bad}: {e}");
        }
        // Several workers share the queue through the software dispatcher.
        let c = Config::parse(
            "t.toml",
            &with("af_xdp:lb0").replace("addresses =", "workers = 2\naddresses ="),
        )
        .unwrap();
        assert_eq!(c.device.workers, 2);
    }

    #[test]
    fn unknown_pool_in_nested_route_is_located() {
        let e = err(&BASE.replace("  pool = \"db\"", "  pool = \"dbb\""));
        assert_eq!(e.line, 19, "{e}");
        assert_eq!(e.key, "listener[1].route[0].pool", "{e}");
        assert!(e.message.contains("did you mean `db`?"), "{e}");
    }

    #[test]
    fn tls_files_are_checked_and_named() {
        let dir = std::env::temp_dir().join(format!("switchyard-tls-cfg-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let with_tls = |cert: &str, key: &str| {
            BASE.replace(
                "address = \"198.18.0.10:80\"\n",
                &format!(
                    "address = \"198.18.0.10:80\"\ntls = {{ cert = \"{cert}\", key = \"{key}\" }}\n"
                ),
            )
        };
        let file = dir.join("lb.toml");
        let file = file.to_str().unwrap();
        // A missing file: the error names it, at the `tls` key.
        let e = Config::parse(file, &with_tls("nope.pem", "nope.key")).unwrap_err();
        assert_eq!(e.key, "listener[1].tls", "{e}");
        assert!(e.to_string().contains(&dir.join("nope.pem").display().to_string()), "{e}");
        // A file without a certificate in it.
        std::fs::write(dir.join("empty.pem"), "not pem\n").unwrap();
        let e = Config::parse(file, &with_tls("empty.pem", "empty.pem")).unwrap_err();
        assert!(e.to_string().contains("empty.pem"), "{e}");
        // TLS on an L4 listener is refused with the reason.
        let l4 = BASE.replace(
            "pool = \"db\"\n\n[[listener]]",
            "pool = \"db\"\ntls = { cert = \"a\", key = \"b\" }\n\n[[listener]]",
        );
        let e = Config::parse(file, &l4).unwrap_err();
        assert!(e.to_string().contains("L4 passes it through"), "{e}");
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn tls_versions_and_client_certificate_keys_are_checked() {
        let with = |tls: &str| {
            BASE.replace(
                "address = \"198.18.0.10:80\"\n",
                &format!("address = \"198.18.0.10:80\"\ntls = {{ cert = \"a.pem\", key = \"a.key\", {tls} }}\n"),
            )
        };
        let e = err(&with("min_version = \"1.1\""));
        assert!(e.message.contains("expected \"1.2\" or \"1.3\""), "{e}");
        let e = err(&with("client_auth = \"optional\""));
        assert!(e.message.contains("`client_auth` needs `client_ca`"), "{e}");
        let e = err(&with("client_auth = \"sometimes\", client_ca = \"ca.pem\""));
        assert!(e.message.contains("expected \"required\" or \"optional\""), "{e}");
        let e = err(&with("cipher_suites = [\"TLS13_AES_128_GCM_SHA256\", \"RC4\"]"));
        assert!(e.message.contains("`RC4` is not one of TLS13_AES_128_GCM_SHA256"), "{e}");
        let e = err(&BASE.replace(
            "address = \"198.18.0.10:80\"\n",
            "address = \"198.18.0.10:80\"\nclient_cert_header = \"X-Client-Subject\"\n",
        ));
        assert_eq!(e.key, "listener[1].client_cert_header", "{e}");
        assert!(e.message.contains("needs `client_ca`"), "{e}");
        let e = err(&BASE.replace(
            "  pool = \"db\"\n\n[[pool]]",
            "  pool = \"db\"\n  client_subject = \"CN=admin\"\n\n[[pool]]",
        ));
        assert!(
            e.key.ends_with("client_subject") && e.message.contains("needs `client_ca`"),
            "{e}"
        );
    }

    #[test]
    fn pool_tls_is_checked_and_named() {
        let with = |pool: &str| {
            BASE.replace("name = \"db\"\nbackends", &format!("name = \"db\"\n{pool}\nbackends"))
        };
        // Neither a CA nor an explicit verify = false.
        let e = err(&with("tls = { sni = \"db.internal\" }"));
        assert_eq!(e.key, "pool[0].tls", "{e}");
        assert!(e.message.contains("verify = false"), "{e}");
        let e = err(&with("tls = { ca = \"ca.pem\", verify = false }"));
        assert!(e.message.contains("contradict"), "{e}");
        // The backend `a` is a DNS name; `198.18.0.21` would not be.
        let ok = Config::parse("t.toml", &with("tls = { verify = false }")).unwrap();
        assert_eq!(ok.pools[0].tls.as_ref().unwrap().sni, ["a"]);
        let ip_named =
            with("tls = { verify = false }").replace("name = \"a\"", "name = \"198.18.0.21\"");
        let e = err(&ip_named);
        assert!(e.message.contains("give `sni"), "{e}");
        let ok = Config::parse("t.toml", &with("tls = { verify = false, sni = \"db.internal\" }"))
            .unwrap();
        assert_eq!(ok.pools[0].tls.as_ref().unwrap().sni, ["db.internal"]);
        let e = err(&with("tls = { verify = false, sni = \"not a name\" }"));
        assert!(e.message.contains("not a DNS name"), "{e}");
        let e = err(&with("tls = { verify = false, cert = \"c.pem\" }"));
        assert!(e.message.contains("both `cert` and `key`"), "{e}");
        // A missing CA file is named.
        let e = err(&with("tls = { ca = \"nope-ca.pem\" }"));
        assert!(e.message.contains("ca: ") && e.message.contains("nope-ca.pem"), "{e}");
        // h2 needs TLS, h2c refuses it.
        let e = err(&with("protocol = \"h2\""));
        assert!(e.message.contains("HTTP/2 over TLS"), "{e}");
        let e = err(&with("protocol = \"h2c\"\ntls = { verify = false }"));
        assert!(e.message.contains("protocol = \"h2\""), "{e}");
        assert!(
            Config::parse("t.toml", &with("protocol = \"h2\"\ntls = { verify = false }"))
                .unwrap()
                .pools[0]
                .h2c
        );
        // TLS is per address: the same backend in another pool is refused.
        let twice = format!(
            "{}\n[[pool]]\nname = \"db2\"\nbackends = [{{ name = \"b\", address = \"198.18.0.21:5432\" }}]\n",
            with("tls = { verify = false }")
        );
        let e = err(&twice);
        assert!(e.message.contains("TLS is set per backend address"), "{e}");
    }

    #[test]
    fn tls_passthrough_listeners_route_by_sni_only() {
        let pt = BASE.replace(
            "mode = \"l7\"\naddress = \"198.18.0.10:80\"\n  [[listener.route]]\n  path_prefix = \"/api/\"\n  pool = \"db\"",
            "mode = \"tls-passthrough\"\naddress = \"198.18.0.10:443\"\n  [[listener.route]]\n  sni = \"*.Example.com\"\n  pool = \"db\"\n  [[listener.route]]\n  pool = \"db\"",
        );
        let c = Config::parse("t.toml", &pt).unwrap();
        let Mode::L7 { routes, passthrough, http2, .. } = &c.listeners[1].mode else { panic!() };
        assert!(*passthrough && !*http2);
        assert_eq!(routes[0].sni.as_deref(), Some("*.example.com"));
        assert_eq!(routes[1].sni, None);
        let e = err(&pt.replace(
            "  sni = \"*.Example.com\"",
            "  sni = \"*.example.com\"\n  path_prefix = \"/x\"",
        ));
        assert!(e.message.contains("matches only `sni`"), "{e}");
        let e = err(&pt.replace("sni = \"*.Example.com\"", "sni = \"a b\""));
        assert!(e.message.contains("a server name is"), "{e}");
        let e = err(&BASE.replace("  path_prefix = \"/api/\"", "  sni = \"a.example\""));
        assert!(e.message.contains("belong to `mode = \"tls-passthrough\"`"), "{e}");
    }

    #[test]
    fn schedulers_and_weights() {
        let src = BASE.replace("pool = \"db\"\n\n[[listener]]", "pool = \"db\"\nscheduler = \"maglev\"\n\n[[listener]]").replace(
            "backends = [{ name = \"a\", address = \"198.18.0.21:5432\" }]",
            "backends = [{ name = \"a\", address = \"198.18.0.21:5432\", weight = 3 }, { name = \"b\", address = \"198.18.0.22:5432\" }]",
        );
        let c = Config::parse("t.toml", &src).unwrap();
        assert!(matches!(c.listeners[0].mode, Mode::L4 { scheduler: Scheduler::Maglev, .. }));
        assert_eq!(c.pools[0].backends.iter().map(|b| b.weight).collect::<Vec<_>>(), vec![3, 1]);
        let e = err(&src.replace("\"maglev\"", "\"maglve\""));
        assert_eq!((e.line, e.key.as_str()), (12, "listener[0].scheduler"), "{e}");
        assert!(e.message.contains("did you mean `maglev`?"), "{e}");
        let dsr = src
            .replace("scheduler = \"maglev\"", "scheduler = \"maglev\"\nforwarding = \"dsr-ipip\"");
        let c = Config::parse("t.toml", &dsr).unwrap();
        assert!(matches!(c.listeners[0].mode, Mode::L4 { forwarding: Forwarding::DsrIpip, .. }));
        let e = err(&dsr.replace("dsr-ipip", "dsr"));
        assert_eq!(e.key, "listener[0].forwarding", "{e}");
        assert!(e.message.contains("full-nat, dsr-ipip"), "{e}");
        let e = err(&src.replace("weight = 3", "weight = -1"));
        assert_eq!((e.line, e.key.as_str()), (24, "pool[0].backends"), "{e}");
        assert!(e.message.contains("-1"), "{e}");
    }

    #[test]
    fn route_match_keys_and_fixed_responses() {
        let src = BASE.replace(
            "  [[listener.route]]\n  path_prefix = \"/api/\"\n  pool = \"db\"",
            "  [[listener.route]]\n  path = \"/old\"\n  status = 301\n  location = \"/new\"\n  [[listener.route]]\n  host = \"*.Example.com\"\n  methods = [\"GET\", \"HEAD\"]\n  header = \"X-Canary: 1\"\n  pool = \"db\"",
        );
        let c = Config::parse("t.toml", &src).unwrap_or_else(|e| panic!("{e}"));
        let Mode::L7 { routes, .. } = &c.listeners[1].mode else { panic!("l7") };
        assert_eq!(routes[0].path.as_deref(), Some("/old"));
        assert_eq!(
            routes[0].fixed.as_ref().map(|f| (f.status, f.location.clone())),
            Some((301, Some("/new".into())))
        );
        assert_eq!(routes[1].host.as_deref(), Some("*.example.com"));
        assert_eq!(routes[1].methods, vec!["GET", "HEAD"]);
        assert_eq!(routes[1].header, Some(("X-Canary".into(), Some("1".into()))));
        let rw = src.replace(
            "  header = \"X-Canary: 1\"",
            "  header = \"X-Canary: 1\"\n  rewrite_prefix = \"/v2/\"\n  set_request_headers = { X-Env = \"prod\" }\n  remove_request_headers = [\"Cookie\"]\n  add_request_headers = { X-Via = \"lb\" }\n  add_response_headers = { Set-Cookie = \"lb=1\" }",
        );
        let c = Config::parse("t.toml", &rw).unwrap_or_else(|e| panic!("{e}"));
        let Mode::L7 { routes, .. } = &c.listeners[1].mode else { panic!("l7") };
        assert_eq!(routes[1].rewrite_prefix.as_deref(), Some("/v2/"));
        assert_eq!(routes[1].set_request_headers, vec![("X-Env".to_string(), "prod".to_string())]);
        assert_eq!(routes[1].remove_request_headers, vec!["Cookie"]);
        assert_eq!(routes[1].add_request_headers, vec![("X-Via".to_string(), "lb".to_string())]);
        assert_eq!(routes[1].add_response_headers, vec![("Set-Cookie".into(), "lb=1".into())]);
        let e = err(&rw.replace("X-Via = \"lb\"", "\"X Via\" = \"lb\""));
        assert_eq!(e.key, "listener[1].route[1].add_request_headers", "{e}");
        let ck = src
            .replace("  header = \"X-Canary: 1\"", "  cookie = \"beta=yes\"\n  query = \"debug\"");
        let c = Config::parse("t.toml", &ck).unwrap_or_else(|e| panic!("{e}"));
        let Mode::L7 { routes, .. } = &c.listeners[1].mode else { panic!("l7") };
        assert_eq!(routes[1].cookie, Some(("beta".into(), Some("yes".into()))));
        assert_eq!(routes[1].query, Some(("debug".into(), None)));
        let e = err(&ck.replace("\"debug\"", "\"de bug\""));
        assert_eq!(e.key, "listener[1].route[1].query", "{e}");
        let e = err(&rw.replace("[\"Cookie\"]", "[\"Co okie\"]"));
        assert_eq!(e.key, "listener[1].route[1].remove_request_headers", "{e}");
        let e = err(&src.replace("status = 301", "status = 301\n  pool = \"db\""));
        assert!(e.message.contains("not both"), "{e}");
        let e = err(&src.replace("status = 301", "status = 99"));
        assert_eq!(e.key, "listener[1].route[0].status", "{e}");
        let e = err(&src.replace("header = \"X-Canary: 1\"", "header = \"X Canary\""));
        assert_eq!(e.key, "listener[1].route[1].header", "{e}");
    }

    #[test]
    fn port_ranges_for_l4_listeners() {
        let src = BASE
            .replace("address = \"198.18.0.10:5432\"", "address = \"198.18.0.10:5000-5099\"")
            .replace(
                "backends = [{ name = \"a\", address = \"198.18.0.21:5432\" }]",
                "backends = [{ name = \"a\", address = \"198.18.0.21\" }]",
            );
        // The L7 route also uses pool `db`, whose backend now has no port.
        let e = err(&src);
        assert!(e.message.contains("needs a port"), "{e}");
        let src = src.replace("  pool = \"db\"", "  pool = \"web\"")
            + "\n[[pool]]\nname = \"web\"\nbackends = [{ name = \"w\", address = \"198.18.0.31:80\" }]\n";
        let c = Config::parse("t.toml", &src).unwrap();
        assert_eq!((c.listeners[0].addr.port(), c.listeners[0].last_port), (5000, 5099));
        assert_eq!(c.pools[0].backends[0].addr.port(), 0);
        let e = err(&src.replace("5000-5099", "5000-4000"));
        assert_eq!(e.key, "listener[0].address", "{e}");
        let e = err(&src.replace("198.18.0.10:80", "198.18.0.10:5050"));
        assert!(e.message.contains("already used"), "{e}");
        let e = err(&src.replace("198.18.0.10:80", "198.18.0.10:80-81"));
        assert!(e.message.contains("port ranges are for"), "{e}");
    }

    #[test]
    fn bad_values_are_located() {
        let e = err(&BASE.replace("198.18.0.10:5432", "198.18.0.10"));
        assert_eq!((e.line, e.key.as_str()), (10, "listener[0].address"), "{e}");
        let e = err(&BASE.replace("02:00:00:00:00:01", "02:00:00:00:01"));
        assert_eq!(e.key, "device.mac", "{e}");
        let e = err(&BASE.replace("mode = \"l4\"", "mode = \"l5\""));
        assert!(e.message.contains("expected `l4`, `l7` or `tls-passthrough`"), "{e}");
        let e = err(&BASE.replace("[device]", "[devices]"));
        assert!(e.message.contains("did you mean `device`?"), "{e}");
    }

    #[test]
    fn http_limits_are_read_and_checked() {
        let src = BASE.replace(
            "[[listener]]\nname = \"pg\"",
            "[http]\nmax_request_line_bytes = 1024\nmax_headers = 20\nrequest_timeout_ms = 2500\nhead_timeout_ms = 4000\n\n[[listener]]\nname = \"pg\"",
        );
        let c = Config::parse("t.toml", &src).unwrap();
        assert_eq!(c.http.max_request_line, 1024);
        assert_eq!(c.http.max_headers, 20);
        assert_eq!(c.http.request_timeout, Duration::from_millis(2500));
        assert_eq!(c.http.head_timeout, Duration::from_millis(4000));
        assert_eq!(c.http.max_head, switchyard_l7::Limits::default().max_head);
        let e = err(&src.replace("max_headers = 20", "max_headers = 1000"));
        assert_eq!(e.key, "http.max_headers", "{e}");
        assert!(e.message.contains("out of range 1..=128"), "{e}");
        let e = err(&src.replace("max_headers = 20", "max_header = 20"));
        assert!(e.message.contains("max_headers"), "{e}");
    }

    #[test]
    fn http_checks_outlier_and_retries() {
        let src = BASE.replace(
            "backends = [{ name = \"a\", address = \"198.18.0.21:5432\" }]",
            "backends = [{ name = \"a\", address = \"198.18.0.21:5432\" }]\n  [pool.health]\n  http_path = \"/healthz\"\n  expect_status = \"200-204\"\n  body_contains = \"ok\"\n  [pool.outlier]\n  consecutive_failures = 3",
        );
        let c = Config::parse("t.toml", &src).unwrap();
        let p = c.pools.iter().find(|p| p.name == "db").unwrap();
        let h = p.http_check.as_ref().expect("http check");
        assert!(h.request.starts_with(b"GET /healthz HTTP/1.1\r\nHost: localhost\r\n"));
        assert_eq!((h.status, h.body_contains.as_deref()), ((200, 204), Some(&b"ok"[..])));
        let o = p.outlier.unwrap();
        assert_eq!((o.consecutive_failures, o.ejection), (3, Duration::from_secs(30)));
        let Mode::L7 { routes, .. } = &c.listeners[1].mode else { panic!("l7") };
        assert!(routes.iter().all(|r| r.retries == 1), "default one retry");
        let e = err(&src.replace("\"200-204\"", "\"2xx\""));
        assert_eq!(e.key, "pool.health.expect_status", "{e}");
        let e = err(&src.replace("http_path = \"/healthz\"", "http_path = \"healthz\""));
        assert!(e.message.contains("starts with `/`"), "{e}");
        let e = err(&src.replace("  http_path = \"/healthz\"\n", ""));
        assert!(e.message.contains("need `http_path`"), "{e}");
        let e = err(&src.replace("  [pool.health]", "protocol = \"h2c\"\n  [pool.health]"));
        assert_eq!(e.key, "pool.health.http_path", "{e}");
        assert!(e.message.contains("speak HTTP/1.1"), "{e}");
        let e = err(&BASE.replace("  pool = \"db\"", "  pool = \"db\"\n  retries = 11"));
        assert!(e.message.contains("out of range 0..=10"), "{e}");
    }

    #[test]
    fn regex_matches_and_response_headers() {
        let src = BASE.replace(
            "  pool = \"db\"\n\n[[pool]]",
            "  pool = \"db\"\n  path_regex = \"^/api/v[0-9]+/\"\n  header_regex = \"User-Agent: (?i)curl\"\n  set_response_headers = { Cache-Control = \"no-store\" }\n  remove_response_headers = [\"Server\"]\n\n[[pool]]",
        );
        let c = Config::parse("t.toml", &src).unwrap();
        let Mode::L7 { routes, .. } = &c.listeners[1].mode else { panic!("l7") };
        let r = &routes[0];
        assert!(r.path_regex.as_ref().unwrap().is_match("/api/v2/x"));
        let (name, re) = r.header_regex.as_ref().unwrap();
        assert!(name == "User-Agent" && re.is_match("CURL/8"));
        assert_eq!(r.set_response_headers, [("Cache-Control".to_string(), "no-store".to_string())]);
        assert_eq!(r.remove_response_headers, ["Server"]);
        assert!(!r.compress);
        let c = Config::parse(
            "t.toml",
            &src.replace("  path_regex", "  compress = true\n  path_regex"),
        )
        .unwrap();
        let Mode::L7 { routes, .. } = &c.listeners[1].mode else { panic!("l7") };
        assert!(routes[0].compress);
        let e = err(&src.replace("^/api/v[0-9]+/", "^/api/v[0-9+/"));
        assert!(
            e.key.ends_with("path_regex") && e.message.contains("not a regular expression"),
            "{e}"
        );
        let e = err(&src.replace("User-Agent: (?i)curl", "(?i)curl"));
        assert!(e.message.contains("`Name: regex`"), "{e}");
    }

    #[test]
    fn l7_pool_schedulers() {
        let with = |v: &str| {
            BASE.replace(
                "name = \"db\"\nbackends",
                &format!("name = \"db\"\nscheduler = \"{v}\"\nbackends"),
            )
        };
        for (name, want) in [
            ("least-requests", switchyard_l7::Balance::LeastRequests),
            ("hash-cookie:sid", switchyard_l7::Balance::HashCookie("sid".into())),
            ("hash-header:X-User", switchyard_l7::Balance::HashHeader("X-User".into())),
        ] {
            let c = Config::parse("t.toml", &with(name)).unwrap();
            assert_eq!(c.pools[0].balance, want);
            assert_eq!(want.name(), name);
        }
        let h2c =
            BASE.replace("name = \"db\"\nbackends", "name = \"db\"\nprotocol = \"h2c\"\nbackends");
        assert!(Config::parse("t.toml", &h2c).unwrap().pools[0].h2c);
        let e = err(&h2c.replace("\"h2c\"", "\"h3\""));
        assert!(e.message.contains("expected `http1`, `h2c` or `h2`"), "{e}");
        let e = err(&with("hash-header:"));
        assert_eq!(e.key, "pool[0].scheduler", "{e}");
        assert!(e.message.contains("hash-cookie:NAME"), "{e}");
    }

    #[test]
    fn duplicate_listener_address_is_refused() {
        let e = err(&BASE.replace("198.18.0.10:80", "198.18.0.10:5432"));
        assert!(e.message.contains("already used by listener `pg`"), "{e}");
    }

    #[test]
    fn overlapping_port_ranges_are_refused() {
        let src = BASE.replace(
            "[[listener]]\nname = \"pg\"",
            "[l4]\nsnat_ports = \"30000-40000\"\n\n[[listener]]\nname = \"pg\"",
        );
        let e = err(&src);
        assert_eq!(e.key, "l4.snat_ports", "{e}");
        assert!(e.message.contains("overlap"), "{e}");
    }

    #[test]
    fn key_paths() {
        let src = "[a]\nx = 1\n[[b]]\ny = 2\n[[b]]\n[[b.c]]\nz = 3\n";
        assert_eq!(key_path(src, src.find("x").unwrap()), "a.x");
        assert_eq!(key_path(src, src.find("y").unwrap()), "b[0].y");
        assert_eq!(key_path(src, src.find("z").unwrap()), "b[1].c[0].z");
    }
}
