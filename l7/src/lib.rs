//! L7 proxying: an HTTP/1.1 reverse proxy (RFC 9110, RFC 9112) over TCP
//! connections terminated by our stack. Requests are framed strictly, routed by
//! path prefix to pools, sent round-robin to backends over kept-alive upstream
//! connections, and streamed both ways with bounded buffers. Sans-IO: events and
//! `now` in, calls on [`TcpApi`] out.
#![forbid(unsafe_code)]

pub mod h2back;
pub mod h2front;
pub mod http1;
pub mod sni;

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};

use switchyard_stack::tcp::{ConnId, ConnState, TcpApi, TcpEvent};
use switchyard_stack::{Duration, Instant, ListenerId};

pub use http1::Reject;
use http1::{ChunkScanner, Framing, error_response};

/// A backend of a pool.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Backend {
    /// Name for counters.
    pub name: String,
    /// Where to connect.
    pub addr: SocketAddr,
    /// Share of requests under the weighted schedulers, and the divisor of
    /// in-flight requests under least-requests; 0 takes it out of rotation.
    pub weight: u32,
}

/// A pool of backends.
#[derive(Clone, Debug, Default)]
pub struct PoolConfig {
    /// Name for counters.
    pub name: String,
    /// Its backends.
    pub backends: Vec<Backend>,
    /// Passive outlier detection: backends that keep failing are ejected.
    pub outlier: Option<Outlier>,
    /// How a request picks a backend.
    pub balance: Balance,
}

/// How a pool picks a backend for a request.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum Balance {
    /// Each request to the next backend in turn.
    #[default]
    RoundRobin,
    /// Round robin in proportion to weights, interleaved smoothly (no bursts
    /// to the heaviest backend).
    WeightedRoundRobin,
    /// The backend with the fewest requests in flight per unit of weight.
    LeastRequests,
    /// Session affinity on a request header's value: rendezvous (highest
    /// random weight) hashing, so a value keeps its backend, and when a
    /// backend leaves only its values move. Without the header: round robin.
    HashHeader(String),
    /// The same on a cookie's value.
    HashCookie(String),
    /// The same on the client's address.
    SourceIp,
}

impl Balance {
    /// The configuration name.
    pub fn name(&self) -> String {
        match self {
            Balance::RoundRobin => "round-robin".into(),
            Balance::WeightedRoundRobin => "weighted-round-robin".into(),
            Balance::LeastRequests => "least-requests".into(),
            Balance::HashHeader(h) => format!("hash-header:{h}"),
            Balance::HashCookie(c) => format!("hash-cookie:{c}"),
            Balance::SourceIp => "source-ip".into(),
        }
    }

    /// Parses a configuration name.
    pub fn parse(s: &str) -> Option<Balance> {
        Some(match s {
            "round-robin" => Balance::RoundRobin,
            "weighted-round-robin" => Balance::WeightedRoundRobin,
            "least-requests" => Balance::LeastRequests,
            "source-ip" => Balance::SourceIp,
            _ => {
                let token = |n: &str| {
                    !n.is_empty()
                        && n.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_".contains(&b))
                };
                match s.split_once(':') {
                    Some(("hash-header", h)) if token(h) => Balance::HashHeader(h.into()),
                    Some(("hash-cookie", c)) if token(c) => Balance::HashCookie(c.into()),
                    _ => return None,
                }
            }
        })
    }
}

/// FNV-1a: a hash that is the same in every process and release, so every
/// worker and every instance maps a key to the same backend.
fn stable_hash(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for &b in bytes {
        h = (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3);
    }
    h
}

/// A 64-bit finalizer (SplitMix64's) to spread combined hashes.
fn mix(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// Passive outlier detection (Envoy's consecutive-5xx ejection): a backend
/// whose last `consecutive_failures` requests all failed (connect failure,
/// reset before the response, or a 5xx) gets no requests for `ejection`.
/// A pool never ejects its last available backend.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Outlier {
    /// Failures in a row that eject.
    pub consecutive_failures: u32,
    /// How long an ejection lasts.
    pub ejection: Duration,
}

/// A route: requests that match every condition given go to `pool`, or get
/// `fixed` without a backend. Routes are tried in order; the first match wins.
#[derive(Clone, Debug, Default)]
pub struct Route {
    /// Path prefix to match (`"/"` or `""`: any path).
    pub path_prefix: String,
    /// Exact path to match (the query string is not part of it).
    pub path: Option<String>,
    /// Regular expression the path (without the query string) must match
    /// somewhere; anchor it with `^...$` for a whole match.
    pub path_regex: Option<regex::Regex>,
    /// Host to match, case-insensitive, port ignored: `"api.example.com"`, or
    /// `"*.example.com"` for any subdomain.
    pub host: Option<String>,
    /// Methods to match (case-sensitive, RFC 9110 9.1); empty: any.
    pub methods: Vec<String>,
    /// A header that must be present, with this exact value if given.
    pub header: Option<(String, Option<String>)>,
    /// A header whose value must match a regular expression.
    pub header_regex: Option<(String, regex::Regex)>,
    /// The verified client certificate's subject (mutual TLS) must match
    /// this regular expression; without a certificate the route does not
    /// match.
    pub client_subject: Option<regex::Regex>,
    /// A cookie (RFC 6265) that must be present, with this exact value if given.
    pub cookie: Option<(String, Option<String>)>,
    /// A query parameter that must be present, with this exact (undecoded)
    /// value if given.
    pub query: Option<(String, Option<String>)>,
    /// TLS passthrough listeners: the ClientHello's server name, exact or
    /// `*.example.com`; `None` matches any (and hellos without a name).
    pub sni: Option<String>,
    /// Index into [`L7Config::pools`] (unused when `fixed` is set).
    pub pool: usize,
    /// Replaces the matched `path_prefix` in the request target sent upstream
    /// (`"/api/"` → `"/v2/"` turns `/api/users?id=1` into `/v2/users?id=1`).
    pub rewrite_prefix: Option<String>,
    /// Request headers set (replacing any the client sent) on the way upstream.
    pub set_request_headers: Vec<(String, String)>,
    /// Request headers added on the way upstream, after any the client sent
    /// of the same name (which stay).
    pub add_request_headers: Vec<(String, String)>,
    /// Request headers removed on the way upstream.
    pub remove_request_headers: Vec<String>,
    /// Response headers set (replacing any the backend sent) on the way to
    /// the client.
    pub set_response_headers: Vec<(String, String)>,
    /// Response headers added on the way to the client, after the
    /// backend's of the same name (which stay).
    pub add_response_headers: Vec<(String, String)>,
    /// Response headers removed on the way to the client.
    pub remove_response_headers: Vec<String>,
    /// Compress responses with brotli or gzip, whichever the client prefers
    /// of those it accepts, when the backend did not and the content type
    /// is text-like.
    pub compress: bool,
    /// Time from a request to its response head on this route (the
    /// listener-wide [`Limits::request_timeout`] when `None`).
    pub request_timeout: Option<Duration>,
    /// Times an idempotent request without a body (GET, HEAD, OPTIONS,
    /// TRACE, PUT, DELETE) is sent again, to another backend, after a connect
    /// failure, a reset before the response, or a 502 or 503.
    pub retries: u32,
    /// A response written by the proxy itself, such as a redirect.
    pub fixed: Option<FixedResponse>,
}

/// A response the proxy writes without a backend.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FixedResponse {
    /// Status code.
    pub status: u16,
    /// `Location` header, for redirects.
    pub location: Option<String>,
    /// Body (`text/plain`).
    pub body: String,
}

impl Route {
    /// Whether a request matches the route; `host` is its Host (or its
    /// absolute-form target's authority), `subject` its connection's
    /// verified client certificate subject, if any.
    pub fn matches(
        &self,
        method: &str,
        path: &str,
        host: Option<&str>,
        headers: &[httparse::Header<'_>],
        subject: Option<&str>,
    ) -> bool {
        if let Some(re) = &self.client_subject
            && !subject.is_some_and(|s| re.is_match(s))
        {
            return false;
        }
        let path_with_query = path;
        let path = path.split('?').next().unwrap_or(path);
        if !path.starts_with(self.path_prefix.as_str()) {
            return false;
        }
        if self.path.as_ref().is_some_and(|p| p != path) {
            return false;
        }
        if self.path_regex.as_ref().is_some_and(|r| !r.is_match(path)) {
            return false;
        }
        if !self.methods.is_empty() && !self.methods.iter().any(|m| m == method) {
            return false;
        }
        let header = |name: &str| {
            headers.iter().find(|h| h.name.eq_ignore_ascii_case(name)).map(|h| h.value)
        };
        if let Some(want) = &self.host {
            let Some(got) = host else {
                return false;
            };
            if !sni::name_matches(want, host_without_port(got)) {
                return false;
            }
        }
        if let Some((name, value)) = &self.cookie {
            match cookie(headers, name) {
                None => return false,
                Some(v) if value.as_ref().is_some_and(|want| v != want.as_bytes()) => return false,
                Some(_) => {}
            }
        }
        if let Some((name, value)) = &self.query {
            let qs = path_with_query.split_once('?').map_or("", |(_, q)| q);
            let found = qs.split('&').find_map(|kv| {
                let (n, v) = kv.split_once('=').unwrap_or((kv, ""));
                (n == name).then_some(v)
            });
            match found {
                None => return false,
                Some(v) if value.as_ref().is_some_and(|want| v != want) => return false,
                Some(_) => {}
            }
        }
        if let Some((name, re)) = &self.header_regex {
            let value = header(name).and_then(|v| std::str::from_utf8(v.trim_ascii()).ok());
            if !value.is_some_and(|v| re.is_match(v)) {
                return false;
            }
        }
        if let Some((name, value)) = &self.header {
            match header(name) {
                None => return false,
                Some(v) => {
                    if value.as_ref().is_some_and(|want| v.trim_ascii() != want.as_bytes()) {
                        return false;
                    }
                }
            }
        }
        true
    }
}

/// The first field `name`'s value as text, trimmed.
fn header_str<'h>(headers: &[httparse::Header<'h>], name: &str) -> Option<&'h str> {
    let h = headers.iter().find(|h| h.name.eq_ignore_ascii_case(name))?;
    std::str::from_utf8(h.value).ok().map(str::trim)
}

/// The response's `Vary` with `Accept-Encoding` added, as a compressed
/// response needs (RFC 9110 12.5.5): the backend's own reasons stay.
fn vary_with_accept_encoding(headers: &[httparse::Header<'_>]) -> String {
    let mut v = String::new();
    for h in headers.iter().filter(|h| h.name.eq_ignore_ascii_case("vary")) {
        let Ok(t) = std::str::from_utf8(h.value) else { continue };
        for f in t.split(',').map(str::trim).filter(|f| !f.is_empty()) {
            if f == "*" {
                return "*".into();
            }
            if f.eq_ignore_ascii_case("accept-encoding") {
                continue;
            }
            v.push_str(f);
            v.push_str(", ");
        }
    }
    v.push_str("Accept-Encoding");
    v
}

/// The value of cookie `name` (RFC 6265 `Cookie` pairs), if sent.
fn cookie<'h>(headers: &[httparse::Header<'h>], name: &str) -> Option<&'h [u8]> {
    headers
        .iter()
        .filter(|h| h.name.eq_ignore_ascii_case("cookie"))
        .flat_map(|h| h.value.split(|b| *b == b';'))
        .map(|pair| pair.trim_ascii())
        .find_map(|pair| {
            let (n, v) = match pair.iter().position(|b| *b == b'=') {
                Some(i) => (&pair[..i], &pair[i + 1..]),
                None => (pair, &b""[..]),
            };
            (n == name.as_bytes()).then_some(v)
        })
}

/// `host[:port]` or `[v6]:port` without the port.
fn host_without_port(h: &str) -> &str {
    if let Some(rest) = h.strip_prefix('[') {
        return rest.split(']').next().unwrap_or(rest);
    }
    match h.rsplit_once(':') {
        Some((host, port)) if port.chars().all(|c| c.is_ascii_digit()) => host,
        _ => h,
    }
}

/// One L7 listener.
#[derive(Clone, Debug, Default)]
pub struct ListenerConfig {
    /// The listener's id, the same in every layer.
    pub id: ListenerId,
    /// Name for counters.
    pub name: String,
    /// Routes; the first match wins, no match is 404.
    pub routes: Vec<Route>,
    /// Clients reach it over TLS (terminated in front of L7): requests go
    /// upstream with `X-Forwarded-Proto: https`.
    pub tls: bool,
    /// Requests go upstream with the verified client certificate's subject
    /// (mutual TLS) in this header; a client's own header of that name is
    /// always removed.
    pub client_cert_header: Option<String>,
    /// TLS passthrough: no HTTP; the ClientHello's server name picks the
    /// route (only `sni` and `pool` apply), then bytes go both ways
    /// untouched, TLS ending at the backend.
    pub passthrough: bool,
}

/// Limits of the proxy.
#[derive(Clone, Debug)]
pub struct Limits {
    /// Largest request or response head, bytes (431 beyond).
    pub max_head: usize,
    /// Longest request line, bytes (414 beyond).
    pub max_request_line: usize,
    /// Most header fields in a request head (431 beyond; at most
    /// [`MAX_HEADERS`]).
    pub max_headers: usize,
    /// Idle upstream connections kept per backend.
    pub max_idle_upstream_per_backend: usize,
    /// Time from a request (its body's end, if it has one) to its response
    /// head (504 beyond).
    pub request_timeout: Duration,
    /// Time a client connection may sit idle between requests, or send
    /// nothing of a request body still to come (408 then).
    pub idle_timeout: Duration,
    /// Time from a request head's first byte to its last (408 beyond): a
    /// client trickling a head (slowloris) holds a connection this long at
    /// most.
    pub head_timeout: Duration,
    /// Time to establish an upstream connection.
    pub connect_timeout: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_head: 16 * 1024,
            max_request_line: 8 * 1024,
            max_headers: 64,
            max_idle_upstream_per_backend: 512,
            request_timeout: Duration::from_secs(30),
            idle_timeout: Duration::from_secs(60),
            head_timeout: Duration::from_secs(10),
            connect_timeout: Duration::from_secs(5),
        }
    }
}

/// The L7 layer's configuration.
#[derive(Clone, Debug)]
pub struct L7Config {
    /// The listeners.
    pub listeners: Vec<ListenerConfig>,
    /// The pools routes refer to.
    pub pools: Vec<PoolConfig>,
    /// Limits.
    pub limits: Limits,
}

/// Errors in the L7 configuration.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[non_exhaustive]
pub enum L7Error {
    /// A route names a pool that does not exist.
    #[error("listener `{0}`: route to pool index {1}, which does not exist")]
    UnknownPool(String, usize),
    /// A pool without backends.
    #[error("pool `{0}` has no backends")]
    EmptyPool(String),
    /// Two listeners with one id.
    #[error("listener id {0} is used twice")]
    DuplicateListener(ListenerId),
}

/// Counters of one listener.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ListenerStats {
    /// Client connections open now.
    pub connections_active: u64,
    /// Client connections accepted.
    pub connections_total: u64,
    /// Bytes read from clients.
    pub bytes_in: u64,
    /// Bytes sent to clients.
    pub bytes_out: u64,
    /// Requests sent to a backend.
    pub requests: u64,
    /// Requests refused or failed (every 4xx and 5xx the proxy wrote itself).
    pub errors: u64,
    /// 4xx written by the proxy.
    pub responses_4xx: u64,
    /// 5xx written by the proxy.
    pub responses_5xx: u64,
    /// Responses from routes with a fixed response.
    pub fixed_responses: u64,
    /// Requests sent again to another backend.
    pub retries: u64,
    /// Clients answered 408: a request head not complete within
    /// [`Limits::head_timeout`], or a body stalled for
    /// [`Limits::idle_timeout`].
    pub timeouts: u64,
    /// Requests refused before reaching a backend, by [`Reject::index`].
    pub rejected: [u64; Reject::ALL.len()],
}

impl ListenerStats {
    /// Requests refused for reason `r`.
    pub fn rejected(&self, r: Reject) -> u64 {
        self.rejected[r.index()]
    }
}

/// Counters and latency histograms of one route.
#[derive(Clone, Debug)]
pub struct RouteStats {
    /// Requests the route matched.
    pub requests: u64,
    /// Final responses by status class: `[1xx, 2xx, 3xx, 4xx, 5xx]`,
    /// including the ones the proxy wrote (fixed, 502, 503, 504).
    pub responses: [u64; 5],
    /// Request bytes from clients: heads as received, and bodies as they
    /// go upstream (tunnels after a 101 too).
    pub bytes_in: u64,
    /// Response bytes relayed from backends.
    pub bytes_out: u64,
    /// Microseconds from the request going upstream to its response head.
    pub upstream_us: hdrhistogram::Histogram<u64>,
    /// Microseconds from the request head arriving to the response's last
    /// byte handed to the client connection.
    pub total_us: hdrhistogram::Histogram<u64>,
}

impl RouteStats {
    fn new() -> RouteStats {
        // 1 µs to 1 hour, two significant digits: a few KiB each.
        let h = || {
            hdrhistogram::Histogram::new_with_bounds(1, 3_600_000_000, 2)
                .expect("static histogram bounds are valid")
        };
        RouteStats {
            requests: 0,
            responses: [0; 5],
            bytes_in: 0,
            bytes_out: 0,
            upstream_us: h(),
            total_us: h(),
        }
    }

    fn status(&mut self, code: u16) {
        if let Some(c) = self.responses.get_mut(usize::from(code / 100).wrapping_sub(1)) {
            *c += 1;
        }
    }
}

/// Counters of one pool.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PoolStats {
    /// The pool's name.
    pub name: String,
    /// Per backend, in configuration order.
    pub backends: Vec<BackendStats>,
}

/// Counters of one backend.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct BackendStats {
    /// The backend's name.
    pub name: String,
    /// Requests sent to it.
    pub requests: u64,
    /// Complete responses relayed from it.
    pub responses: u64,
    /// Upstream connections opened to it.
    pub upstream_connects: u64,
    /// Requests sent on an idle kept-alive connection.
    pub upstream_reuses: u64,
    /// Connections that failed or timed out before the handshake completed.
    pub connect_failures: u64,
    /// Responses with a 5xx status.
    pub responses_5xx: u64,
    /// Times passive outlier detection ejected it.
    pub ejections: u64,
}

/// The most header fields [`Limits::max_headers`] may allow.
pub const MAX_HEADERS: usize = 128;

/// Bytes buffered per direction per connection before the proxy stops reading.
const BUF_CAP: usize = 64 * 1024;
/// Buffers kept for reuse: at most this many, each at most `SPARE_BUF_MAX`
/// bytes. A connection's buffer is one of these only while it holds bytes
/// (see [`lend`] and [`settle`]).
const SPARE_BUFS: usize = 128;
pub(crate) const SPARE_BUF_MAX: usize = 16 * 1024;

/// Keeps `b`, emptied, among `spares` for reuse, if it has memory, at most
/// `SPARE_BUF_MAX`, and fewer than `most` are kept.
pub(crate) fn keep_buf(spares: &mut Vec<Vec<u8>>, mut b: Vec<u8>, most: usize) {
    if spares.len() < most && (1..=SPARE_BUF_MAX).contains(&b.capacity()) {
        b.clear();
        spares.push(b);
    }
}
/// Gives an empty buffer with no memory one of the spares, before bytes are
/// written to it. The spares were used last (they are a stack), so the bytes
/// land in memory likely in the cache, not in the cold buffer of a connection
/// that was idle since its last request.
fn lend(spares: &mut Vec<Vec<u8>>, b: &mut Vec<u8>) {
    if b.capacity() == 0
        && let Some(spare) = spares.pop()
    {
        *b = spare;
    }
}

/// Hands the memory of an emptied buffer back to the spares (or frees it):
/// a connection between requests holds no buffer of the proxy's.
fn settle(spares: &mut Vec<Vec<u8>>, b: &mut Vec<u8>) {
    if b.is_empty() && b.capacity() > 0 {
        keep_buf(spares, std::mem::take(b), SPARE_BUFS);
    }
}

/// Appends `a` in dotted decimal, as its `Display` does, without the
/// formatting machinery (twice per proxied request, in the forwarding
/// headers).
fn push_ipv4(out: &mut Vec<u8>, a: std::net::Ipv4Addr) {
    for (i, o) in a.octets().into_iter().enumerate() {
        if i > 0 {
            out.push(b'.');
        }
        if o >= 100 {
            out.push(b'0' + o / 100);
        }
        if o >= 10 {
            out.push(b'0' + o / 10 % 10);
        }
        out.push(b'0' + o % 10);
    }
}

/// Retry copies kept for new requests, up to this many (each at most
/// `SPARE_BUF_MAX`).
const SPARE_RETRIES: usize = 1024;

/// Keeps a retry copy that is done with for other requests, if `small`
/// (at most `SPARE_BUF_MAX`) and there is room.
#[allow(clippy::vec_box)] // the boxes are what sessions hold
fn keep_retry(spares: &mut Vec<Box<Retry>>, r: Option<Box<Retry>>, small: bool) {
    if let Some(r) = r
        && small
        && spares.len() < SPARE_RETRIES
    {
        spares.push(r);
    }
}
/// How often timeouts are checked.
const CHECK_EVERY: Duration = Duration::from_millis(100);

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Owner {
    Client(u32),
    Upstream(u32),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Phase {
    /// Waiting for (the rest of) a request head.
    Head,
    /// A request is in flight.
    Request,
    /// Answered with an error or finished: closing once `out` is flushed.
    Closing,
}

struct Session {
    conn: ConnId,
    listener: usize,
    /// The address the client connected to: the Host of an HTTP/1.0
    /// request that has none, as it goes upstream in HTTP/1.1.
    local: std::net::SocketAddr,
    peer_ip: Option<IpAddr>,
    phase: Phase,
    inbuf: Vec<u8>,
    out: Vec<u8>,
    upstream: Option<u32>,
    keep_alive: bool,
    head_request: bool,
    body: Framing,
    body_left: u64,
    chunks: ChunkScanner,
    body_done: bool,
    started: Instant,
    last_active: Instant,
    /// When the request head being read began (its first byte, or the end
    /// of the previous response for bytes already waiting).
    head_since: Instant,
    /// When the request was all sent (head, and body if any): the
    /// request timeout runs from here.
    waiting_since: Instant,
    peer_closed: bool,
    response_started: bool,
    /// What is needed to send the request again, when its route retries.
    retry: Option<Box<Retry>>,
    /// The route of the request under way.
    route: Option<usize>,
    /// When the request (last) went upstream.
    sent_at: Instant,
    /// The request's affinity hash, under the hashing balances.
    key: Option<u64>,
    /// The request asks to switch protocols; after a 101 the connection is
    /// a byte tunnel to the backend.
    upgrade: bool,
    /// A byte tunnel from the start (TLS passthrough): the proxy never
    /// writes into it.
    raw: bool,
    /// `retry`'s copy is small enough to keep for other requests once done
    /// with (known when it is written, so the copy need not be read again).
    retry_keep: bool,
    /// The coding the response gets, if compressible (from the request's
    /// `Accept-Encoding` on a route that compresses).
    coding: Option<Coding>,
    /// Time allowed from this request to its response head.
    request_timeout: Duration,
}

/// A request that may be sent again: its upstream head, the retries left,
/// and the backends already tried (bit per backend index, up to 64).
struct Retry {
    head: Vec<u8>,
    left: u32,
    tried: u64,
    pool: usize,
}

/// Where a request can go.
enum Pick {
    /// An upstream connection (idle or connecting).
    Conn(u32),
    /// Every backend is drained, down or ejected (503).
    NoBackend,
    /// Connecting to this backend failed at once (502 unless retried).
    ConnectFailed(usize),
}

struct Upstream {
    conn: ConnId,
    pool: usize,
    backend: usize,
    session: Option<u32>,
    connected: bool,
    opened: Instant,
    out: Vec<u8>,
    inbuf: Vec<u8>,
    resp: Option<http1::ResponseInfo>,
    /// Bytes at the front of `inbuf` known to belong to the response.
    ready: usize,
    left: u64,
    chunks: ChunkScanner,
    head_request: bool,
    peer_closed: bool,
    /// Compressing this response.
    gz: Option<Box<Gz>>,
}

/// A content coding the proxy applies to responses (RFC 9110 8.4.1).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Coding {
    Gzip,
    Brotli,
}

impl Coding {
    fn token(self) -> &'static str {
        match self {
            Coding::Gzip => "gzip",
            Coding::Brotli => "br",
        }
    }
}

/// brotli quality and window for streamed responses: quality 4 is the usual
/// choice for on-the-fly compression (faster than gzip -6 at a smaller
/// size); a 2^19-byte window bounds the encoder's memory per response.
const BROTLI_QUALITY: u32 = 4;
const BROTLI_LGWIN: u32 = 19;

/// The compressor of one response, writing into a buffer of its own.
enum Encoder {
    Gzip(flate2::write::GzEncoder<Vec<u8>>),
    Brotli(Box<brotli::CompressorWriter<Vec<u8>>>),
    /// Finished; the last bytes were taken.
    Done(Vec<u8>),
}

impl Encoder {
    fn new(coding: Coding) -> Encoder {
        match coding {
            Coding::Gzip => Encoder::Gzip(flate2::write::GzEncoder::new(
                Vec::new(),
                flate2::Compression::new(5),
            )),
            Coding::Brotli => Encoder::Brotli(Box::new(brotli::CompressorWriter::new(
                Vec::new(),
                4096,
                BROTLI_QUALITY,
                BROTLI_LGWIN,
            ))),
        }
    }

    /// Compresses `data` and flushes, so what was read goes out now.
    fn write_flush(&mut self, data: &[u8]) {
        use std::io::Write;
        let w: &mut dyn Write = match self {
            Encoder::Gzip(e) => e,
            Encoder::Brotli(e) => e.as_mut(),
            Encoder::Done(_) => return,
        };
        let _ = w.write_all(data);
        let _ = w.flush();
    }

    /// Ends the stream (gzip trailer, brotli's last meta-block).
    fn finish(&mut self) {
        match std::mem::replace(self, Encoder::Done(Vec::new())) {
            Encoder::Gzip(mut e) => {
                let _ = e.try_finish();
                *self = Encoder::Done(std::mem::take(e.get_mut()));
            }
            Encoder::Brotli(e) => *self = Encoder::Done(e.into_inner()),
            done => *self = done,
        }
    }

    /// The compressed bytes produced so far and not yet taken.
    fn output(&mut self) -> &mut Vec<u8> {
        match self {
            Encoder::Gzip(e) => e.get_mut(),
            Encoder::Brotli(e) => e.get_mut(),
            Encoder::Done(v) => v,
        }
    }
}

/// A response being compressed on its way to the client: the upstream body
/// (decoded from chunked coding if it was) goes through gzip or brotli, and
/// comes out in chunks, flushed after every read so a streaming response
/// keeps streaming.
struct Gz {
    enc: Encoder,
    /// Chunked output waiting for the client's window.
    out: Vec<u8>,
    /// The upstream body's chunked-coding decoder, if it was chunked.
    chunk: Option<h2front::Chunk>,
    plain: Vec<u8>,
    trailer: Vec<u8>,
    finished: bool,
}

impl Gz {
    fn new(coding: Coding, chunked: bool) -> Box<Gz> {
        Box::new(Gz {
            enc: Encoder::new(coding),
            out: Vec::new(),
            chunk: chunked.then_some(h2front::Chunk::Size(0)),
            plain: Vec::new(),
            trailer: Vec::new(),
            finished: false,
        })
    }

    /// Compresses body bytes as they arrived from upstream.
    fn feed(&mut self, data: &[u8]) {
        let payload = match &mut self.chunk {
            Some(state) => {
                self.plain.clear();
                h2front::decode_chunks(state, data, &mut self.plain, &mut self.trailer);
                &self.plain[..]
            }
            None => data,
        };
        self.enc.write_flush(payload);
        self.frame();
    }

    /// The end of the body: the coding's trailer and the last chunk.
    fn finish(&mut self) {
        self.enc.finish();
        self.frame();
        self.out.extend_from_slice(b"0\r\n\r\n");
        self.finished = true;
    }

    fn frame(&mut self) {
        use std::io::Write;
        let buf = self.enc.output();
        if !buf.is_empty() {
            let _ = write!(self.out, "{:x}\r\n", buf.len());
            self.out.extend_from_slice(buf);
            self.out.extend_from_slice(b"\r\n");
            buf.clear();
        }
    }
}

/// The coding a response gets from `Accept-Encoding` (RFC 9110 12.5.3):
/// of gzip (or `x-gzip`) and br, the one with the highest q-value, a coding
/// not named taking `*`'s; brotli on a tie, for its smaller output; none when
/// neither is acceptable. A malformed q-value counts as 0: not compressing is
/// always safe.
fn preferred_coding(headers: &[httparse::Header<'_>]) -> Option<Coding> {
    let (mut gzip, mut br, mut star) = (None, None, None);
    for item in headers
        .iter()
        .filter(|h| h.name.eq_ignore_ascii_case("accept-encoding"))
        .flat_map(|h| h.value.split(|b| *b == b','))
    {
        let mut parts = item.split(|b| *b == b';');
        let coding = parts.next().unwrap_or_default().trim_ascii();
        let q = parts
            .map(|p| p.trim_ascii())
            .find(|p| p.len() >= 2 && p[..2].eq_ignore_ascii_case(b"q="))
            .map_or(1000, |p| qvalue(&p[2..]).unwrap_or(0));
        let slot = if coding.eq_ignore_ascii_case(b"gzip") || coding.eq_ignore_ascii_case(b"x-gzip")
        {
            &mut gzip
        } else if coding.eq_ignore_ascii_case(b"br") {
            &mut br
        } else if coding == b"*" {
            &mut star
        } else {
            continue;
        };
        *slot = Some(slot.map_or(q, |old: u16| old.max(q)));
    }
    let gzip = gzip.or(star).unwrap_or(0);
    let br = br.or(star).unwrap_or(0);
    match (br, gzip) {
        (0, 0) => None,
        (b, g) if b >= g => Some(Coding::Brotli),
        _ => Some(Coding::Gzip),
    }
}

/// An RFC 9110 qvalue (`0`, `0.5`, `1.000`) in thousandths.
fn qvalue(v: &[u8]) -> Option<u16> {
    let (int, frac) = match v.iter().position(|b| *b == b'.') {
        Some(i) => (&v[..i], &v[i + 1..]),
        None => (v, &[][..]),
    };
    if frac.len() > 3 || !frac.iter().all(u8::is_ascii_digit) {
        return None;
    }
    let thousandths = frac
        .iter()
        .chain(std::iter::repeat(&b'0'))
        .take(3)
        .fold(0u16, |a, d| a * 10 + u16::from(d - b'0'));
    match int {
        b"0" => Some(thousandths),
        b"1" if thousandths == 0 => Some(1000),
        _ => None,
    }
}

/// Whether a response may be compressed: text-like content not already
/// encoded, and no `Cache-Control: no-transform`.
fn compressible(headers: &[httparse::Header<'_>]) -> bool {
    let mut text = false;
    for h in headers {
        let v = h.value.trim_ascii();
        if h.name.eq_ignore_ascii_case("content-encoding") && !v.eq_ignore_ascii_case(b"identity") {
            return false;
        }
        // A transfer coding besides chunked (`gzip, chunked`): the body is
        // coded already, and the coder would drop what says so.
        if h.name.eq_ignore_ascii_case("transfer-encoding")
            && v.split(|b| *b == b',').any(|c| !c.trim_ascii().eq_ignore_ascii_case(b"chunked"))
        {
            return false;
        }
        if h.name.eq_ignore_ascii_case("cache-control")
            && v.windows(12).any(|w| w.eq_ignore_ascii_case(b"no-transform"))
        {
            return false;
        }
        if h.name.eq_ignore_ascii_case("content-type") {
            let ct = v.split(|b| *b == b';').next().unwrap_or_default().trim_ascii();
            let ct = String::from_utf8_lossy(ct).to_ascii_lowercase();
            text = ct.starts_with("text/")
                || matches!(
                    ct.as_str(),
                    "application/json"
                        | "application/javascript"
                        | "application/xml"
                        | "application/xhtml+xml"
                        | "image/svg+xml"
                );
        }
    }
    text
}

struct Pool {
    cfg: PoolConfig,
    next: usize,
    /// Per backend: drained by the operator (no new requests).
    drained: Vec<bool>,
    /// Per backend: up by the active health check.
    up: Vec<bool>,
    /// Per backend: failures in a row (outlier detection).
    fails: Vec<u32>,
    /// Per backend: ejected by outlier detection until then.
    ejected_until: Vec<Option<Instant>>,
    /// Per backend: requests in flight.
    active: Vec<u32>,
    /// Per backend: smooth weighted round robin's running weight.
    current: Vec<i64>,
    /// Per backend: hash of its name, for rendezvous hashing.
    name_hash: Vec<u64>,
    /// Per backend: may take the request being placed (scratch).
    eligible: Vec<bool>,
    idle: Vec<Vec<u32>>,
    stats: PoolStats,
}

impl Pool {
    /// Whether backend `b` may take a new request, ejection aside: not
    /// drained, up, weighted above 0 and not in `exclude` (a bit per backend
    /// index, the ones a request has tried).
    fn may_take(&self, b: usize, exclude: u64) -> bool {
        let excluded = b < 64 && exclude & (1 << b) != 0;
        !self.drained[b] && self.up[b] && self.cfg.backends[b].weight > 0 && !excluded
    }

    /// One of the eligible backends (at least one is) by the pool's balance.
    fn choose(&mut self, key: Option<u64>) -> usize {
        let n = self.cfg.backends.len();
        let weight = |b: usize| i64::from(self.cfg.backends[b].weight);
        match (&self.cfg.balance, key) {
            (Balance::WeightedRoundRobin, _) => {
                // nginx's smooth weighted round robin.
                let mut total = 0;
                let mut best: Option<usize> = None;
                for b in (0..n).filter(|&b| self.eligible[b]) {
                    self.current[b] += weight(b);
                    total += weight(b);
                    if best.is_none_or(|x| self.current[b] > self.current[x]) {
                        best = Some(b);
                    }
                }
                let b = best.unwrap_or(0);
                self.current[b] -= total;
                b
            }
            (Balance::LeastRequests, _) => {
                // Fewest in flight per weight; ties go round robin.
                let start = self.next;
                self.next = self.next.wrapping_add(1);
                let mut best: Option<usize> = None;
                for i in 0..n {
                    let b = (start + i) % n;
                    if !self.eligible[b] {
                        continue;
                    }
                    let fewer = |x: usize| {
                        i64::from(self.active[b]) * weight(x)
                            < i64::from(self.active[x]) * weight(b)
                    };
                    if best.is_none_or(fewer) {
                        best = Some(b);
                    }
                }
                best.unwrap_or(0)
            }
            (Balance::HashHeader(_) | Balance::HashCookie(_) | Balance::SourceIp, Some(k)) => (0
                ..n)
                .filter(|&b| self.eligible[b])
                .max_by_key(|&b| mix(k ^ self.name_hash[b]))
                .unwrap_or(0),
            _ => {
                for _ in 0..n {
                    let b = self.next % n;
                    self.next = self.next.wrapping_add(1);
                    if self.eligible[b] {
                        return b;
                    }
                }
                0
            }
        }
    }
}

struct Listener {
    cfg: ListenerConfig,
    stats: ListenerStats,
    routes: Vec<RouteStats>,
    /// The client certificate subject is used (a header or a route match).
    wants_identity: bool,
}

/// The L7 proxy of one worker.
pub struct L7 {
    listeners: Vec<Listener>,
    by_id: HashMap<ListenerId, usize>,
    pools: Vec<Pool>,
    limits: Limits,
    /// Keys are our own connection handles, not chosen by peers: a fast
    /// fixed hash will do (it is looked up for every TCP event).
    owners: switchyard_stack::FlowMap<ConnId, Owner>,
    sessions: Vec<Option<Session>>,
    free_sessions: Vec<u32>,
    upstreams: Vec<Option<Upstream>>,
    free_upstreams: Vec<u32>,
    scratch: Vec<u8>,
    /// Buffers of closed sessions, for the next (at most `SPARE_BUFS` each).
    spare_bufs: Vec<Vec<u8>>,
    // Boxed as sessions hold them: a session takes one without allocating.
    #[allow(clippy::vec_box)]
    spare_retries: Vec<Box<Retry>>,
    /// Room for the heads the proxy writes (the request's for upstream, the
    /// response's for the client), kept from one to the next.
    head_buf: Vec<u8>,
    next_check: Option<Instant>,
    /// Most bytes the proxy's own buffers held for one client connection
    /// and its upstream together (capacity, after reads).
    peak_pair_bytes: usize,
}

impl L7 {
    /// Builds the proxy.
    pub fn new(cfg: L7Config) -> Result<L7, L7Error> {
        for p in &cfg.pools {
            if p.backends.is_empty() {
                return Err(L7Error::EmptyPool(p.name.clone()));
            }
        }
        let mut by_id = HashMap::new();
        let mut listeners = Vec::new();
        for l in cfg.listeners {
            if let Some(r) =
                l.routes.iter().find(|r| r.fixed.is_none() && r.pool >= cfg.pools.len())
            {
                return Err(L7Error::UnknownPool(l.name.clone(), r.pool));
            }
            if by_id.insert(l.id, listeners.len()).is_some() {
                return Err(L7Error::DuplicateListener(l.id));
            }
            let routes = l.routes.iter().map(|_| RouteStats::new()).collect();
            let wants_identity = l.client_cert_header.is_some()
                || l.routes.iter().any(|r| r.client_subject.is_some());
            listeners.push(Listener {
                cfg: l,
                stats: ListenerStats::default(),
                routes,
                wants_identity,
            });
        }
        let pools: Vec<Pool> = cfg
            .pools
            .into_iter()
            .map(|p| {
                let stats = PoolStats {
                    name: p.name.clone(),
                    backends: p
                        .backends
                        .iter()
                        .map(|b| BackendStats { name: b.name.clone(), ..BackendStats::default() })
                        .collect(),
                };
                Pool {
                    idle: vec![Vec::new(); p.backends.len()],
                    drained: vec![false; p.backends.len()],
                    up: vec![true; p.backends.len()],
                    fails: vec![0; p.backends.len()],
                    ejected_until: vec![None; p.backends.len()],
                    active: vec![0; p.backends.len()],
                    current: vec![0; p.backends.len()],
                    name_hash: p.backends.iter().map(|b| stable_hash(b.name.as_bytes())).collect(),
                    eligible: vec![false; p.backends.len()],
                    cfg: p,
                    next: 0,
                    stats,
                }
            })
            .collect();
        Ok(L7 {
            listeners,
            by_id,
            pools,
            limits: cfg.limits,
            owners: switchyard_stack::flow_map(1024, 0x6f77_6e65_7273),
            sessions: Vec::new(),
            free_sessions: Vec::new(),
            upstreams: Vec::new(),
            free_upstreams: Vec::new(),
            head_buf: Vec::with_capacity(256),
            spare_bufs: Vec::new(),
            spare_retries: Vec::new(),
            scratch: vec![0; 16 * 1024],
            next_check: None,
            peak_pair_bytes: 0,
        })
    }

    /// Counters of a listener.
    pub fn listener_stats(&self, id: ListenerId) -> Option<&ListenerStats> {
        self.by_id.get(&id).map(|&i| &self.listeners[i].stats)
    }

    /// Bytes of memory the buffers of open client and upstream connections
    /// hold now (not counting the spares kept for reuse); a scan of every
    /// connection. Between requests a connection holds none.
    pub fn held_buffer_bytes(&self) -> usize {
        let sessions =
            self.sessions.iter().flatten().map(|x| x.inbuf.capacity() + x.out.capacity());
        let upstreams =
            self.upstreams.iter().flatten().map(|u| u.inbuf.capacity() + u.out.capacity());
        sessions.chain(upstreams).sum()
    }

    /// Emptied buffers kept for the next connections to write into. Every
    /// client and upstream connection's input and output buffer is taken
    /// from these first, so under a steady load their number stays put: a
    /// growing number means such buffers were allocated afresh.
    pub fn spare_buffers(&self) -> usize {
        self.spare_bufs.len()
    }

    /// Most bytes the proxy's buffers held at once for one client connection
    /// and its upstream connection together (the TCP stack's socket buffers
    /// come on top). Bodies stream through; this stays bounded however large
    /// they are.
    pub fn peak_pair_bytes(&self) -> usize {
        self.peak_pair_bytes
    }

    /// Updates the high-water mark of session `s`'s buffers.
    fn note_buffers(&mut self, s: u32) {
        let Some(x) = self.sessions.get(s as usize).and_then(Option::as_ref) else { return };
        let up = x.upstream.and_then(|u| self.upstreams.get(u as usize)?.as_ref());
        let n = x.inbuf.capacity()
            + x.out.capacity()
            + up.map_or(0, |u| u.inbuf.capacity() + u.out.capacity());
        self.peak_pair_bytes = self.peak_pair_bytes.max(n);
    }

    /// Counters of a listener's routes, in configuration order.
    pub fn route_stats(&self, id: ListenerId) -> Option<&[RouteStats]> {
        self.by_id.get(&id).map(|&i| self.listeners[i].routes.as_slice())
    }

    /// Counters of every pool, in configuration order (a copy).
    pub fn pool_stats(&self) -> Vec<PoolStats> {
        self.pools.iter().map(|p| p.stats.clone()).collect()
    }

    /// Acts on one event of the TCP terminator.
    pub fn on_event<T: TcpApi>(&mut self, now: Instant, ev: TcpEvent, tcp: &mut T) {
        match ev {
            TcpEvent::Accepted { conn, listener, peer, local } => {
                let Some(&li) = self.by_id.get(&listener) else {
                    tcp.abort(conn);
                    return;
                };
                let s = Session {
                    conn,
                    listener: li,
                    local,
                    peer_ip: Some(peer.ip()),
                    phase: Phase::Head,
                    inbuf: Vec::new(),
                    out: Vec::new(),
                    upstream: None,
                    keep_alive: true,
                    head_request: false,
                    body: Framing::None,
                    body_left: 0,
                    chunks: ChunkScanner::default(),
                    body_done: true,
                    started: now,
                    last_active: now,
                    peer_closed: false,
                    response_started: false,
                    retry: None,
                    route: None,
                    sent_at: now,
                    key: None,
                    upgrade: false,
                    raw: false,
                    retry_keep: false,
                    coding: None,
                    request_timeout: self.limits.request_timeout,
                    head_since: now,
                    waiting_since: now,
                };
                let i = match self.free_sessions.pop() {
                    Some(i) => {
                        self.sessions[i as usize] = Some(s);
                        i
                    }
                    None => {
                        self.sessions.push(Some(s));
                        (self.sessions.len() - 1) as u32
                    }
                };
                self.owners.insert(conn, Owner::Client(i));
                let st = &mut self.listeners[li].stats;
                st.connections_total += 1;
                st.connections_active += 1;
                if self.next_check.is_none() {
                    self.next_check = Some(now + CHECK_EVERY);
                }
            }
            TcpEvent::Connected { conn } => {
                if let Some(Owner::Upstream(u)) = self.owners.get(&conn).copied() {
                    if let Some(up) = self.up(u) {
                        up.connected = true;
                    }
                    self.flush_up(u, now, tcp);
                    self.settle_upstream(u);
                }
            }
            TcpEvent::Readable { conn } => match self.owners.get(&conn).copied() {
                Some(Owner::Client(s)) => {
                    self.read_client(s, now, tcp);
                    self.settle_session(s);
                }
                Some(Owner::Upstream(u)) => {
                    self.read_upstream(u, now, tcp);
                    self.settle_upstream(u);
                }
                None => {}
            },
            TcpEvent::Writable { conn } => match self.owners.get(&conn).copied() {
                Some(Owner::Client(s)) => {
                    self.flush_client(s, tcp);
                    if let Some(u) = self.sess(s).and_then(|x| x.upstream) {
                        self.pump_down(u, now, tcp);
                    }
                    self.settle_session(s);
                }
                Some(Owner::Upstream(u)) => {
                    self.flush_up(u, now, tcp);
                    // Room upstream: move more of the request body, reading
                    // the client again (its socket is not announced again
                    // once the proxy has read all it had).
                    if let Some(s) = self.up(u).and_then(|x| x.session) {
                        self.read_client(s, now, tcp);
                    }
                    self.settle_upstream(u);
                }
                None => {}
            },
            TcpEvent::PeerClosed { conn } => match self.owners.get(&conn).copied() {
                Some(Owner::Client(s)) => {
                    let Some(x) = self.sess(s) else { return };
                    x.peer_closed = true;
                    if x.phase == Phase::Head && x.inbuf.is_empty() {
                        x.phase = Phase::Closing;
                        self.flush_client(s, tcp);
                    } else if let Some(u) = x.upstream.filter(|_| x.body == Framing::UntilClose) {
                        // A tunnel's client is done sending: pass the FIN on
                        // once its bytes are out.
                        self.pump_up(s, now, tcp);
                        self.tunnel_fin(u, tcp);
                    }
                }
                Some(Owner::Upstream(u)) => {
                    if let Some(up) = self.up(u) {
                        up.peer_closed = true;
                    }
                    self.read_upstream(u, now, tcp);
                    // Whatever is still attached could not complete: end it.
                    if self.up(u).is_some() {
                        self.upstream_gone(u, now, tcp);
                        tcp.close(conn);
                    }
                }
                None => {}
            },
            TcpEvent::Closed { conn, .. } => match self.owners.remove(&conn) {
                Some(Owner::Client(s)) => self.drop_session(s, tcp),
                Some(Owner::Upstream(u)) => {
                    self.owners.insert(conn, Owner::Upstream(u));
                    self.upstream_gone(u, now, tcp);
                    // A retry may have reused slot `u` or even this ConnId.
                    let stale = self.up(u).is_none_or(|x| x.conn != conn);
                    if stale && self.owners.get(&conn) == Some(&Owner::Upstream(u)) {
                        self.owners.remove(&conn);
                    }
                }
                None => {}
            },
        }
    }

    /// Gives back the memory of the emptied buffers of session `s` and
    /// upstream `u` (either may be absent).
    fn settle_bufs(&mut self, s: Option<u32>, u: Option<u32>) {
        if let Some(x) = s.and_then(|s| self.sessions.get_mut(s as usize)?.as_mut()) {
            settle(&mut self.spare_bufs, &mut x.inbuf);
            settle(&mut self.spare_bufs, &mut x.out);
        }
        if let Some(up) = u.and_then(|u| self.upstreams.get_mut(u as usize)?.as_mut()) {
            settle(&mut self.spare_bufs, &mut up.inbuf);
            settle(&mut self.spare_bufs, &mut up.out);
        }
    }

    /// [`L7::settle_bufs`] for session `s` and its upstream, at the end of
    /// an event.
    fn settle_session(&mut self, s: u32) {
        let u = self.sess(s).and_then(|x| x.upstream);
        self.settle_bufs(Some(s), u);
    }

    /// The same for upstream `u` and its session, if it serves one.
    fn settle_upstream(&mut self, u: u32) {
        let s = self.up(u).and_then(|x| x.session);
        self.settle_bufs(s, Some(u));
    }

    /// The counters of the route of session `s`'s request, if it has one.
    fn route_of(&mut self, s: u32) -> Option<&mut RouteStats> {
        let x = self.sessions.get(s as usize).and_then(Option::as_ref)?;
        self.listeners[x.listener].routes.get_mut(x.route?)
    }

    fn sess(&mut self, s: u32) -> Option<&mut Session> {
        self.sessions.get_mut(s as usize).and_then(Option::as_mut)
    }

    fn up(&mut self, u: u32) -> Option<&mut Upstream> {
        self.upstreams.get_mut(u as usize).and_then(Option::as_mut)
    }

    fn read_client<T: TcpApi>(&mut self, s: u32, now: Instant, tcp: &mut T) {
        let Some(conn) = self.sess(s).map(|x| x.conn) else { return };
        let mut scratch = std::mem::take(&mut self.scratch);
        let mut got = 0;
        while let Some(x) = self.sessions.get_mut(s as usize).and_then(Option::as_mut) {
            if x.inbuf.len() >= BUF_CAP || x.phase == Phase::Closing {
                break;
            }
            let room = (BUF_CAP - x.inbuf.len()).min(scratch.len());
            match tcp.recv(conn, &mut scratch[..room]) {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    if x.phase == Phase::Head && x.inbuf.is_empty() {
                        x.head_since = now;
                    }
                    lend(&mut self.spare_bufs, &mut x.inbuf);
                    x.inbuf.extend_from_slice(&scratch[..n]);
                    x.last_active = now;
                    got += n;
                }
            }
        }
        self.scratch = scratch;
        if let Some(li) = self.sess(s).map(|x| x.listener) {
            self.listeners[li].stats.bytes_in += got as u64;
        }
        self.note_buffers(s);
        self.process_client(s, now, tcp);
    }

    /// Parses and starts the next request, or moves request body bytes on.
    fn process_client<T: TcpApi>(&mut self, s: u32, now: Instant, tcp: &mut T) {
        let max_head = self.limits.max_head;
        let max_line = self.limits.max_request_line;
        let max_headers = self.limits.max_headers.min(MAX_HEADERS);
        let Some(x) = self.sessions.get_mut(s as usize).and_then(Option::as_mut) else { return };
        match x.phase {
            Phase::Closing => {
                x.inbuf.clear();
                return;
            }
            Phase::Request => {
                self.pump_up(s, now, tcp);
                return;
            }
            Phase::Head => {}
        }
        if x.inbuf.is_empty() {
            return;
        }
        if self.listeners[x.listener].cfg.passthrough {
            self.passthrough(s, now, tcp);
            return;
        }
        // The request line on its own: too long is 414, not 431.
        let line_end = x.inbuf.iter().position(|b| *b == b'\n');
        if line_end.map_or(x.inbuf.len(), |e| e) > max_line {
            self.reject(s, Reject::RequestLineTooLong, tcp);
            return;
        }
        let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
        let mut req = httparse::Request::new(&mut headers[..max_headers]);
        let parsed = req.parse(&x.inbuf);
        let head_len = match parsed {
            Ok(httparse::Status::Partial) => {
                if x.inbuf.len() > max_head {
                    self.reject(s, Reject::HeadTooLarge, tcp);
                }
                return;
            }
            Err(httparse::Error::TooManyHeaders) => {
                self.reject(s, Reject::HeadTooLarge, tcp);
                return;
            }
            Err(httparse::Error::Version) => {
                self.reject(s, Reject::BadVersion, tcp);
                return;
            }
            Err(_) => {
                self.reject(s, Reject::Malformed, tcp);
                return;
            }
            Ok(httparse::Status::Complete(n)) if n > max_head => {
                self.reject(s, Reject::HeadTooLarge, tcp);
                return;
            }
            Ok(httparse::Status::Complete(n)) => n,
        };
        let info = match http1::check_request(&req) {
            Ok(i) => i,
            Err(r) => {
                self.reject(s, r, tcp);
                return;
            }
        };
        // A chunked body already received is checked before anything goes
        // upstream: a malformed one (the usual carrier of a smuggled second
        // request) never reaches a backend. Bytes arriving later are checked
        // as they stream, and a bad chunk then aborts the upstream connection
        // before the request is complete.
        if info.framing == Framing::Chunked {
            let mut probe = ChunkScanner::default();
            if let Err(r) = probe.scan(&x.inbuf[head_len..]) {
                self.reject(s, r, tcp);
                return;
            }
        }
        // An absolute-form target's authority stands in for Host, for the
        // route and upstream, where the target goes in origin form.
        let (authority, path) = match http1::split_target(req.path.unwrap_or("/")) {
            Ok(t) => t,
            Err(r) => {
                self.reject(s, r, tcp);
                return;
            }
        };
        let path_only: std::borrow::Cow<'_, str> = if authority.is_some() && !path.starts_with('/')
        {
            format!("/{path}").into() // `http://h` or `http://h?q`: rare
        } else {
            path.into()
        };
        let path_only = &*path_only;
        let host = authority.or_else(|| header_str(req.headers, "host"));
        let li = x.listener;
        let method = req.method.unwrap_or("GET");
        let subject: Option<String> = if self.listeners[li].wants_identity {
            tcp.client_identity(x.conn).map(str::to_string)
        } else {
            None
        };
        let Some(ri) = self.listeners[li]
            .cfg
            .routes
            .iter()
            .position(|r| r.matches(method, path_only, host, req.headers, subject.as_deref()))
        else {
            self.reject(s, Reject::NoRoute, tcp);
            return;
        };
        x.route = Some(ri);
        x.started = now;
        self.listeners[li].routes[ri].requests += 1;
        self.listeners[li].routes[ri].bytes_in += head_len as u64;
        let route = &self.listeners[li].cfg.routes[ri];
        if let Some(fixed) = route.fixed.clone() {
            self.fixed(s, &fixed, tcp);
            return;
        }
        let pool = route.pool;
        let retries = route.retries;
        x.coding = if route.compress { preferred_coding(req.headers) } else { None };
        x.request_timeout = route.request_timeout.unwrap_or(self.limits.request_timeout);
        x.key = match &self.pools[pool].cfg.balance {
            Balance::HashHeader(name) => req
                .headers
                .iter()
                .find(|h| h.name.eq_ignore_ascii_case(name))
                .map(|h| stable_hash(h.value.trim_ascii())),
            Balance::HashCookie(name) => cookie(req.headers, name).map(stable_hash),
            Balance::SourceIp => x.peer_ip.map(|ip| match ip {
                IpAddr::V4(a) => stable_hash(&a.octets()),
                IpAddr::V6(a) => stable_hash(&a.octets()),
            }),
            _ => None,
        };
        let idempotent = matches!(method, "GET" | "HEAD" | "OPTIONS" | "TRACE" | "PUT" | "DELETE");
        // Build the upstream head: request line (path rewritten if the route
        // says so) and headers as received, minus hop-by-hop connection headers
        // and the route's removals and replacements, plus the route's headers,
        // X-Forwarded-For and X-Forwarded-Proto.
        let mut head = std::mem::take(&mut self.head_buf);
        head.clear();
        head.reserve(head_len + 64);
        head.extend_from_slice(req.method.unwrap_or("GET").as_bytes());
        head.push(b' ');
        match &route.rewrite_prefix {
            Some(to) if path_only.starts_with(route.path_prefix.as_str()) => {
                head.extend_from_slice(to.as_bytes());
                head.extend_from_slice(&path_only.as_bytes()[route.path_prefix.len()..]);
            }
            _ => head.extend_from_slice(path_only.as_bytes()),
        }
        head.extend_from_slice(b" HTTP/1.1\r\n");
        let cert_header = self.listeners[li].cfg.client_cert_header.as_deref();
        // Headers the client's Connection names are for this hop only
        // (RFC 9110 7.6.1), Upgrade too unless the request upgrades.
        let named = |n: &str| {
            req.headers
                .iter()
                .filter(|h| h.name.eq_ignore_ascii_case("connection"))
                .flat_map(|h| h.value.split(|b| *b == b','))
                .any(|t| t.trim_ascii().eq_ignore_ascii_case(n.as_bytes()))
        };
        for h in req.headers.iter() {
            let n = h.name;
            let is_upgrade = n.eq_ignore_ascii_case("upgrade");
            if (is_upgrade && !info.upgrade)
                || (!is_upgrade && named(n))
                || n.eq_ignore_ascii_case("connection")
                || n.eq_ignore_ascii_case("keep-alive")
                || n.eq_ignore_ascii_case("proxy-connection")
                || n.eq_ignore_ascii_case("x-forwarded-for")
                || n.eq_ignore_ascii_case("x-forwarded-proto")
                || n.eq_ignore_ascii_case("forwarded")
                || (authority.is_some() && n.eq_ignore_ascii_case("host"))
                || route.remove_request_headers.iter().any(|r| r.eq_ignore_ascii_case(n))
                || cert_header.is_some_and(|c| c.eq_ignore_ascii_case(n))
                || route.set_request_headers.iter().any(|(r, _)| r.eq_ignore_ascii_case(n))
            {
                continue;
            }
            head.extend_from_slice(n.as_bytes());
            head.extend_from_slice(b": ");
            head.extend_from_slice(h.value);
            head.extend_from_slice(b"\r\n");
        }
        let sets_host =
            route.set_request_headers.iter().any(|(n, _)| n.eq_ignore_ascii_case("host"));
        if let Some(a) = authority.filter(|_| !sets_host) {
            head.extend_from_slice(b"Host: ");
            head.extend_from_slice(a.as_bytes());
            head.extend_from_slice(b"\r\n");
        } else if host.is_none() && !sets_host {
            // HTTP/1.0 without Host goes up as HTTP/1.1, which needs one
            // (RFC 9112 3.2): the address the client asked.
            use std::io::Write as _;
            let _ = write!(head, "Host: {}\r\n", x.local);
        }
        for (n, v) in route.set_request_headers.iter().chain(&route.add_request_headers) {
            head.extend_from_slice(n.as_bytes());
            head.extend_from_slice(b": ");
            head.extend_from_slice(v.as_bytes());
            head.extend_from_slice(b"\r\n");
        }
        if let (Some(h), Some(subject)) = (cert_header, &subject) {
            // RFC 4514 strings are printable; anything else is dropped rather
            // than risk a header injection.
            if subject.bytes().all(|b| (0x20..0x7f).contains(&b)) {
                head.extend_from_slice(h.as_bytes());
                head.extend_from_slice(b": ");
                head.extend_from_slice(subject.as_bytes());
                head.extend_from_slice(b"\r\n");
            }
        }
        // Who asked, as the de facto headers and as RFC 7239 `Forwarded`
        // (IPv6 quoted and bracketed, section 6). Written straight into the
        // head: no string per request.
        let proto = if self.listeners[li].cfg.tls { "https" } else { "http" };
        match x.peer_ip {
            Some(std::net::IpAddr::V4(a)) => {
                head.extend_from_slice(b"X-Forwarded-For: ");
                push_ipv4(&mut head, a);
                head.extend_from_slice(b"\r\nForwarded: for=");
                push_ipv4(&mut head, a);
                head.extend_from_slice(b";proto=");
                head.extend_from_slice(proto.as_bytes());
                head.extend_from_slice(b"\r\n");
            }
            Some(std::net::IpAddr::V6(a)) => {
                use std::io::Write as _;
                let _ = write!(head, "X-Forwarded-For: {a}\r\n");
                let _ = write!(head, "Forwarded: for=\"[{a}]\";proto={proto}\r\n");
            }
            None => {}
        }
        head.extend_from_slice(b"X-Forwarded-Proto: ");
        head.extend_from_slice(proto.as_bytes());
        if info.upgrade {
            head.extend_from_slice(b"\r\nConnection: Upgrade");
        }
        head.extend_from_slice(b"\r\n\r\n");
        x.inbuf.drain(..head_len);
        x.keep_alive = info.keep_alive;
        x.head_request = info.head;
        x.upgrade = info.upgrade;
        x.body = info.framing;
        x.body_left = match info.framing {
            Framing::Length(n) => n,
            _ => 0,
        };
        x.chunks = ChunkScanner::default();
        x.body_done = info.framing == Framing::None;
        x.started = now;
        x.waiting_since = now;
        x.response_started = false;
        x.phase = Phase::Request;

        if retries > 0 && idempotent && info.framing == Framing::None {
            // A copy from an earlier request (this session's, if its
            // response never completed) takes this one.
            let r = x.retry.get_or_insert_with(|| {
                self.spare_retries.pop().unwrap_or_else(|| {
                    Box::new(Retry { head: Vec::new(), left: 0, tried: 0, pool })
                })
            });
            r.head.clear();
            if r.head.capacity() > SPARE_BUF_MAX {
                r.head = Vec::new();
            }
            r.head.extend_from_slice(&head);
            (r.left, r.tried, r.pool) = (retries, 0, pool);
            x.retry_keep = head.len() <= SPARE_BUF_MAX;
        } else {
            keep_retry(&mut self.spare_retries, x.retry.take(), x.retry_keep);
        }
        self.listeners[li].stats.requests += 1;
        self.dispatch(s, pool, &head, 0, now, tcp);
        self.head_buf = head;
    }

    /// TLS passthrough: once the ClientHello is in, its server name picks
    /// the route and the connection becomes a tunnel to a backend of its
    /// pool, starting with the hello itself.
    fn passthrough<T: TcpApi>(&mut self, s: u32, now: Instant, tcp: &mut T) {
        let Some(x) = self.sessions.get_mut(s as usize).and_then(Option::as_mut) else { return };
        let li = x.listener;
        let name = match sni::client_hello(&x.inbuf) {
            sni::Hello::Partial if x.inbuf.len() <= sni::MAX_HELLO => return,
            sni::Hello::Partial | sni::Hello::Invalid => {
                x.raw = true;
                self.reject(s, Reject::Malformed, tcp);
                return;
            }
            sni::Hello::Complete(name) => name,
        };
        let found = self.listeners[li].cfg.routes.iter().position(|r| match &r.sni {
            None => true,
            Some(p) => name.as_deref().is_some_and(|n| sni::name_matches(p, n)),
        });
        x.raw = true;
        let Some(ri) = found else {
            self.reject(s, Reject::NoRoute, tcp);
            return;
        };
        x.route = Some(ri);
        x.started = now;
        x.phase = Phase::Request;
        x.body = Framing::UntilClose;
        x.body_done = false;
        x.keep_alive = false;
        x.response_started = false;
        keep_retry(&mut self.spare_retries, x.retry.take(), x.retry_keep);
        x.key = None;
        let pool = self.listeners[li].cfg.routes[ri].pool;
        self.listeners[li].routes[ri].requests += 1;
        self.listeners[li].stats.requests += 1;
        self.dispatch(s, pool, &[], 0, now, tcp);
    }

    /// Sends a request head to a backend of `pool` (none of those in the
    /// `exclude` bit set) and starts relaying the request body.
    fn dispatch<T: TcpApi>(
        &mut self,
        s: u32,
        pool: usize,
        head: &[u8],
        exclude: u64,
        now: Instant,
        tcp: &mut T,
    ) {
        let key = self.sess(s).and_then(|x| x.key);
        match self.upstream_for(pool, now, tcp, exclude, key) {
            Pick::Conn(u) => {
                let head_request = self.sess(s).is_some_and(|x| x.head_request);
                if let Some(b) = self.up(u).map(|x| x.backend) {
                    self.pools[pool].active[b] += 1;
                }
                let raw = self.sess(s).is_some_and(|x| x.raw);
                if let Some(up) = self.upstreams.get_mut(u as usize).and_then(Option::as_mut) {
                    up.session = Some(s);
                    lend(&mut self.spare_bufs, &mut up.out);
                    up.out.extend_from_slice(head);
                    up.head_request = head_request;
                    // A tunnel's "response" is every byte until the close.
                    up.resp = raw.then_some(http1::ResponseInfo {
                        status: 0,
                        framing: Framing::UntilClose,
                        keep_alive: false,
                    });
                    up.ready = 0;
                    up.chunks = ChunkScanner::default();
                }
                if let Some(x) = self.sess(s) {
                    x.upstream = Some(u);
                    x.sent_at = now;
                    if exclude != 0 {
                        let li = x.listener;
                        self.listeners[li].stats.retries += 1;
                    }
                }
                self.pump_up(s, now, tcp);
            }
            Pick::NoBackend if exclude == 0 => self.fail(s, 503, "Service Unavailable", tcp),
            Pick::NoBackend => self.fail(s, 502, "Bad Gateway", tcp),
            Pick::ConnectFailed(b) => {
                if !self.retry_request(s, b, now, tcp) {
                    self.fail(s, 502, "Bad Gateway", tcp);
                }
            }
        }
    }

    /// Resets upstream `u` of session `s`, which failed it before any of a
    /// response reached the client, and sends the request to another backend
    /// of its pool (not `failed`), or answers 502 when it may not be retried.
    fn drop_upstream_and_retry<T: TcpApi>(
        &mut self,
        u: u32,
        s: u32,
        failed: usize,
        now: Instant,
        tcp: &mut T,
    ) {
        self.abort_upstream(u, s, tcp);
        if !self.retry_request(s, failed, now, tcp) {
            self.fail(s, 502, "Bad Gateway", tcp);
        }
    }

    /// Sends the request of session `s` again, to another backend, after
    /// backend `failed` of its pool failed it. False when it may not be (not
    /// retryable, no retries left, or the client has seen response bytes):
    /// the caller answers the client.
    fn retry_request<T: TcpApi>(
        &mut self,
        s: u32,
        failed: usize,
        now: Instant,
        tcp: &mut T,
    ) -> bool {
        let Some(x) = self.sessions.get_mut(s as usize).and_then(Option::as_mut) else {
            return false;
        };
        if x.response_started {
            return false;
        }
        let Some(r) = x.retry.as_mut() else { return false };
        if failed < 64 {
            r.tried |= 1 << failed;
        }
        if r.left == 0 {
            return false;
        }
        r.left -= 1;
        let (pool, exclude, head) = (r.pool, r.tried, r.head.clone());
        x.upstream = None;
        self.dispatch(s, pool, &head, exclude, now, tcp);
        true
    }

    /// Outlier detection: a request to backend `b` of `pool` succeeded or
    /// failed.
    fn backend_result(&mut self, pool: usize, b: usize, ok: bool, now: Instant) {
        let p = &mut self.pools[pool];
        let Some(o) = p.cfg.outlier else { return };
        if ok {
            p.fails[b] = 0;
            return;
        }
        p.fails[b] += 1;
        if p.fails[b] >= o.consecutive_failures.max(1) && p.ejected_until[b].is_none() {
            p.fails[b] = 0;
            p.ejected_until[b] = Some(now + o.ejection);
            p.stats.backends[b].ejections += 1;
            log::info!(
                "pool {}: backend {} ejected for {} ms after consecutive failures",
                p.cfg.name,
                p.cfg.backends[b].name,
                o.ejection.total_millis()
            );
        }
    }

    /// Whether [`L7::pick_backend`] would find a backend of `pool` outside
    /// `exclude` (ejected ones count, as they do there when nothing else is
    /// left).
    fn another_backend(&self, pool: usize, exclude: u64) -> bool {
        let p = &self.pools[pool];
        (0..p.cfg.backends.len()).any(|b| p.may_take(b, exclude))
    }

    /// A backend of `pool`, by its balance, among those not drained, down,
    /// weighted 0, ejected or in `exclude`; when only ejected ones remain,
    /// among those (an ejection never empties a pool). `key` is the request's
    /// affinity hash under the hashing balances.
    fn pick_backend(
        &mut self,
        pool: usize,
        now: Instant,
        exclude: u64,
        key: Option<u64>,
    ) -> Option<usize> {
        let p = &mut self.pools[pool];
        for e in p.ejected_until.iter_mut() {
            if e.is_some_and(|t| now >= t) {
                *e = None;
            }
        }
        for ejected_too in [false, true] {
            let mut any = false;
            for b in 0..p.cfg.backends.len() {
                let ok = p.may_take(b, exclude) && (ejected_too || p.ejected_until[b].is_none());
                p.eligible[b] = ok;
                any |= ok;
            }
            if any {
                return Some(p.choose(key));
            }
        }
        None
    }

    /// An idle connection to the pool's next backend, or a new one.
    fn upstream_for<T: TcpApi>(
        &mut self,
        pool: usize,
        now: Instant,
        tcp: &mut T,
        exclude: u64,
        key: Option<u64>,
    ) -> Pick {
        let Some(b) = self.pick_backend(pool, now, exclude, key) else { return Pick::NoBackend };
        self.pools[pool].stats.backends[b].requests += 1;
        while let Some(u) = self.pools[pool].idle[b].pop() {
            let Some(conn) = self.up(u).map(|x| x.conn) else { continue };
            if tcp.state(conn) == ConnState::Established {
                self.pools[pool].stats.backends[b].upstream_reuses += 1;
                return Pick::Conn(u);
            }
            tcp.close(conn);
            self.remove_upstream(u);
        }
        let addr = self.pools[pool].cfg.backends[b].addr;
        let conn = match tcp.connect(now, addr) {
            Ok(c) => c,
            Err(_) => {
                self.pools[pool].stats.backends[b].connect_failures += 1;
                self.backend_result(pool, b, false, now);
                return Pick::ConnectFailed(b);
            }
        };
        self.pools[pool].stats.backends[b].upstream_connects += 1;
        let up = Upstream {
            conn,
            pool,
            backend: b,
            session: None,
            connected: false,
            opened: now,
            out: Vec::new(),
            inbuf: Vec::new(),
            resp: None,
            ready: 0,
            left: 0,
            chunks: ChunkScanner::default(),
            head_request: false,
            peer_closed: false,
            gz: None,
        };
        let u = match self.free_upstreams.pop() {
            Some(u) => {
                self.upstreams[u as usize] = Some(up);
                u
            }
            None => {
                self.upstreams.push(Some(up));
                (self.upstreams.len() - 1) as u32
            }
        };
        self.owners.insert(conn, Owner::Upstream(u));
        Pick::Conn(u)
    }

    /// Moves request body bytes from the client's buffer to the upstream's.
    fn pump_up<T: TcpApi>(&mut self, s: u32, now: Instant, tcp: &mut T) {
        for _ in 0..64 {
            let Some(x) = self.sessions.get_mut(s as usize).and_then(Option::as_mut) else {
                return;
            };
            let Some(u) = x.upstream else { return };
            let Some(up) = self.upstreams.get_mut(u as usize).and_then(Option::as_mut) else {
                return;
            };
            let mut moved = 0;
            if !x.body_done && !x.inbuf.is_empty() {
                let room = BUF_CAP.saturating_sub(up.out.len());
                let avail = x.inbuf.len().min(room);
                let take = match x.body {
                    Framing::Length(_) => {
                        let t = (x.body_left.min(avail as u64)) as usize;
                        x.body_left -= t as u64;
                        x.body_done = x.body_left == 0;
                        if t > 0 {
                            x.waiting_since = now;
                        }
                        t
                    }
                    Framing::Chunked => match x.chunks.scan(&x.inbuf[..avail]) {
                        Ok(t) => {
                            x.body_done = x.chunks.done();
                            if t > 0 {
                                x.waiting_since = now;
                            }
                            t
                        }
                        Err(r) => {
                            // The backend already has the head: abort its
                            // connection so it never sees a complete request.
                            self.abort_upstream(u, s, tcp);
                            self.reject(s, r, tcp);
                            return;
                        }
                    },
                    // A tunnel after a 101: everything.
                    Framing::UntilClose => avail,
                    Framing::None => 0,
                };
                if take > 0 {
                    lend(&mut self.spare_bufs, &mut up.out);
                    let route =
                        x.route.and_then(|ri| self.listeners[x.listener].routes.get_mut(ri));
                    if let Some(r) = route {
                        r.bytes_in += take as u64;
                    }
                }
                up.out.extend_from_slice(&x.inbuf[..take]);
                x.inbuf.drain(..take);
                moved = take;
            }
            let before = up.out.len();
            self.flush_up(u, now, tcp);
            let after = self.up(u).map_or(0, |x| x.out.len());
            if moved == 0 && after == before {
                break;
            }
        }
    }

    fn flush_up<T: TcpApi>(&mut self, u: u32, now: Instant, tcp: &mut T) {
        let _ = now;
        let Some(up) = self.up(u) else { return };
        if !up.connected || up.out.is_empty() {
            return;
        }
        if let Ok(n) = tcp.send(up.conn, &up.out) {
            up.out.drain(..n);
        }
        self.tunnel_fin(u, tcp);
    }

    /// Closes the upstream side of a tunnel whose client has closed, once
    /// every byte the client sent is on its way.
    fn tunnel_fin<T: TcpApi>(&mut self, u: u32, tcp: &mut T) {
        let Some(up) = self.upstreams.get(u as usize).and_then(Option::as_ref) else { return };
        let Some(x) = up.session.and_then(|s| self.sessions.get(s as usize)?.as_ref()) else {
            return;
        };
        if x.body == Framing::UntilClose && x.peer_closed && x.inbuf.is_empty() && up.out.is_empty()
        {
            tcp.close(up.conn);
        }
    }

    fn read_upstream<T: TcpApi>(&mut self, u: u32, now: Instant, tcp: &mut T) {
        let mut scratch = std::mem::take(&mut self.scratch);
        while let Some(up) = self.upstreams.get_mut(u as usize).and_then(Option::as_mut) {
            if up.inbuf.len() >= BUF_CAP {
                break;
            }
            let room = (BUF_CAP - up.inbuf.len()).min(scratch.len());
            match tcp.recv(up.conn, &mut scratch[..room]) {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    lend(&mut self.spare_bufs, &mut up.inbuf);
                    up.inbuf.extend_from_slice(&scratch[..n]);
                }
            }
        }
        self.scratch = scratch;
        let Some(up) = self.up(u) else { return };
        if let Some(s) = up.session {
            self.note_buffers(s);
        }
        let Some(up) = self.up(u) else { return };
        if up.session.is_none() {
            if !up.inbuf.is_empty() {
                // Bytes from an idle connection: nothing asked for them.
                let conn = up.conn;
                tcp.abort(conn);
                self.remove_upstream(u);
            }
            return;
        }
        self.pump_down(u, now, tcp);
    }

    /// Parses the response head of upstream `u`: true once it is in place
    /// (rewritten for the client), false to wait for more bytes or when the
    /// upstream was replaced (retry) or failed.
    fn response_head<T: TcpApi>(&mut self, u: u32, now: Instant, tcp: &mut T) -> bool {
        enum Parsed {
            Partial,
            Bad,
            /// Head length, framing, the head for the client, the coding
            /// the body gets.
            Head(usize, http1::ResponseInfo, Vec<u8>, Option<Coding>),
        }
        let max_head = self.limits.max_head;
        let Some(up) = self.upstreams.get_mut(u as usize).and_then(Option::as_mut) else {
            return false;
        };
        let Some(s) = up.session else { return false };
        let (pool, b) = (up.pool, up.backend);
        let mut headers = [httparse::EMPTY_HEADER; 64];
        let mut resp = httparse::Response::new(&mut headers);
        let parsed = match resp.parse(&up.inbuf) {
            Ok(httparse::Status::Complete(n)) => {
                match http1::check_response(&resp, up.head_request) {
                    Ok(info) => {
                        let x = self.sessions.get(s as usize).and_then(Option::as_ref);
                        let upgrade = info.status == 101 && x.is_some_and(|x| x.upgrade);
                        let route =
                            x.and_then(|x| self.listeners[x.listener].cfg.routes.get(x.route?));
                        let (set, remove, add) = match route {
                            Some(r) => (
                                &r.set_response_headers[..],
                                &r.remove_response_headers[..],
                                &r.add_response_headers[..],
                            ),
                            None => (&[][..], &[][..], &[][..]),
                        };
                        let coding = x.and_then(|x| x.coding).filter(|_| {
                            info.status == 200
                                && info.framing != Framing::None
                                && !up.head_request
                                && compressible(resp.headers)
                        });
                        // A body that ends when the backend closes ends the
                        // client's connection too: it has no other end the
                        // client could find (unless coded, then chunked).
                        let client_keep = x.is_some_and(|x| x.keep_alive)
                            && !(info.framing == Framing::UntilClose && coding.is_none());
                        // With a coding the length and coding change: say so.
                        // (A coded response is a 200, so never an upgrade.)
                        let (coded_set, coded_remove);
                        let (set, remove) = match coding {
                            Some(c) => {
                                let mut set = set.to_vec();
                                set.push(("Content-Encoding".into(), c.token().into()));
                                set.push(("Vary".into(), vary_with_accept_encoding(resp.headers)));
                                set.push(("Transfer-Encoding".into(), "chunked".into()));
                                // The coded body is not the backend's bytes:
                                // a strong validator becomes a weak one
                                // (RFC 9110 8.8.1).
                                if let Some(e) = header_str(resp.headers, "etag") {
                                    let weak = if e.starts_with("W/") {
                                        e.into()
                                    } else {
                                        format!("W/{e}")
                                    };
                                    set.push(("ETag".into(), weak));
                                }
                                let mut remove = remove.to_vec();
                                remove.push("Content-Length".into());
                                coded_set = set;
                                coded_remove = remove;
                                (&coded_set[..], &coded_remove[..])
                            }
                            None => (set, remove),
                        };
                        let mut head = std::mem::take(&mut self.head_buf);
                        http1::client_response_head(
                            &resp,
                            client_keep,
                            set,
                            remove,
                            add,
                            upgrade,
                            &mut head,
                        );
                        if info.status == 101 && !upgrade {
                            // Switching protocols nobody asked for.
                            Parsed::Bad
                        } else {
                            Parsed::Head(n, info, head, coding)
                        }
                    }
                    Err(_) => Parsed::Bad,
                }
            }
            Ok(httparse::Status::Partial) if up.inbuf.len() <= max_head && !up.peer_closed => {
                Parsed::Partial
            }
            Ok(httparse::Status::Partial) | Err(_) => Parsed::Bad,
        };
        let (n, mut info, head, coding) = match parsed {
            Parsed::Partial => return false,
            Parsed::Bad => {
                self.backend_result(pool, b, false, now);
                self.bad_upstream(u, s, tcp);
                return false;
            }
            Parsed::Head(n, info, head, coding) => (n, info, head, coding),
        };
        if info.status >= 200 {
            if let Some(x) = self.sessions.get(s as usize).and_then(Option::as_ref) {
                let waited = (now - x.sent_at).total_micros().max(1);
                if let Some(r) =
                    x.route.and_then(|ri| self.listeners[x.listener].routes.get_mut(ri))
                {
                    let _ = r.upstream_us.record(waited);
                }
            }
            let failed = info.status >= 500;
            if failed {
                self.pools[pool].stats.backends[b].responses_5xx += 1;
            }
            self.backend_result(pool, b, !failed, now);
            // Only when another backend could answer: with none, the
            // backend's own 502 or 503 (its Retry-After, its body) is a
            // better answer than ours.
            let tried = |r: &Retry| r.tried | if b < 64 { 1 << b } else { 0 };
            let retry = matches!(info.status, 502 | 503)
                && self
                    .sessions
                    .get(s as usize)
                    .and_then(Option::as_ref)
                    .and_then(|x| x.retry.as_ref())
                    .is_some_and(|r| r.left > 0 && self.another_backend(pool, tried(r)));
            if retry {
                // Not relayed: the request goes to another backend, on a
                // fresh connection.
                self.drop_upstream_and_retry(u, s, b, now, tcp);
                return false;
            }
        }
        if let Some(r) = self.route_of(s).filter(|_| info.status >= 200 || info.status == 101) {
            r.status(info.status);
        }
        if info.framing == Framing::UntilClose && coding.is_none() {
            // Relayed until the backend closes, then the client is closed
            // (its response head says `Connection: close`).
            if let Some(x) = self.sess(s) {
                x.keep_alive = false;
            }
        }
        if info.status == 101 {
            // Switched: from here on bytes go both ways unchanged until one
            // side closes (a WebSocket, or any other upgraded protocol).
            info.framing = Framing::UntilClose;
            info.keep_alive = false;
            if let Some(x) = self.sess(s) {
                x.body = Framing::UntilClose;
                x.body_done = false;
                x.keep_alive = false;
            }
        }
        let Some(up) = self.up(u) else { return false };
        if let Some(c) = coding {
            // The head goes out first from the compressor's output; the
            // body follows through it.
            let mut gz = Gz::new(c, info.framing == Framing::Chunked);
            gz.out.extend_from_slice(&head);
            up.inbuf.drain(..n);
            up.ready = 0;
            up.gz = Some(gz);
        } else {
            replace_front(&mut up.inbuf, n, &head);
            up.ready = head.len();
            up.gz = None;
        }
        up.left = match info.framing {
            Framing::Length(l) => l,
            _ => 0,
        };
        up.chunks = ChunkScanner::default();
        up.resp = Some(info);
        // The head's room serves the next response.
        self.head_buf = head;
        true
    }

    /// Parses the response head and relays the response to the client.
    fn pump_down<T: TcpApi>(&mut self, u: u32, now: Instant, tcp: &mut T) {
        for _ in 0..64 {
            let Some(up) = self.upstreams.get_mut(u as usize).and_then(Option::as_mut) else {
                return;
            };
            let Some(s) = up.session else { return };
            if up.resp.is_none() && !self.response_head(u, now, tcp) {
                return;
            }
            let Some(up) = self.upstreams.get_mut(u as usize).and_then(Option::as_mut) else {
                return;
            };
            let Some(info) = up.resp.clone() else { return };
            // Extend what is known to belong to the response.
            let unseen = up.inbuf.len() - up.ready;
            let mut body_done = match info.framing {
                Framing::None => true,
                Framing::Length(_) => {
                    let t = up.left.min(unseen as u64);
                    up.left -= t;
                    up.ready += t as usize;
                    up.left == 0
                }
                Framing::Chunked => match up.chunks.scan(&up.inbuf[up.ready..]) {
                    Ok(t) => {
                        up.ready += t;
                        up.chunks.done()
                    }
                    Err(_) => {
                        self.bad_upstream(u, s, tcp);
                        return;
                    }
                },
                Framing::UntilClose => {
                    up.ready = up.inbuf.len();
                    up.peer_closed
                }
            };
            let Some(x) = self.sessions.get_mut(s as usize).and_then(Option::as_mut) else {
                return;
            };
            if let Some(gz) = up.gz.as_mut() {
                // Compressed: feed what is ready once the previous output
                // is out, so the proxy never holds more than one batch.
                loop {
                    if gz.out.is_empty() {
                        if up.ready > 0 {
                            gz.feed(&up.inbuf[..up.ready]);
                            up.inbuf.drain(..up.ready);
                            up.ready = 0;
                        } else if body_done && !gz.finished {
                            gz.finish();
                        }
                    }
                    if gz.out.is_empty() {
                        break;
                    }
                    let n = tcp.send(x.conn, &gz.out).unwrap_or(0);
                    gz.out.drain(..n);
                    x.response_started |= n > 0;
                    let li = x.listener;
                    self.listeners[li].stats.bytes_out += n as u64;
                    if let Some(r) = x.route.and_then(|ri| self.listeners[li].routes.get_mut(ri)) {
                        r.bytes_out += n as u64;
                    }
                    if !gz.out.is_empty() {
                        return; // the client's window is full: Writable resumes
                    }
                }
                body_done &= gz.finished;
            } else if up.ready > 0 {
                let n = tcp.send(x.conn, &up.inbuf[..up.ready]).unwrap_or(0);
                up.inbuf.drain(..n);
                up.ready -= n;
                x.response_started |= n > 0;
                let li = x.listener;
                self.listeners[li].stats.bytes_out += n as u64;
                if let Some(r) = x.route.and_then(|ri| self.listeners[li].routes.get_mut(ri)) {
                    r.bytes_out += n as u64;
                }
                if up.ready > 0 {
                    return; // the client's window is full: Writable resumes
                }
            }
            if (100..200).contains(&info.status) && info.status != 101 {
                // An interim response: the final one follows.
                up.resp = None;
                continue;
            }
            body_done &= up.ready == 0;
            if body_done {
                self.response_done(u, s, now, tcp);
            }
            return;
        }
    }

    /// The response is relayed: park or close the upstream, and get the client
    /// connection ready for its next request.
    fn response_done<T: TcpApi>(&mut self, u: u32, s: u32, now: Instant, tcp: &mut T) {
        let max_idle = self.limits.max_idle_upstream_per_backend;
        let Some(up) = self.upstreams.get_mut(u as usize).and_then(Option::as_mut) else { return };
        let Some(x) = self.sessions.get_mut(s as usize).and_then(Option::as_mut) else { return };
        let (pool, b) = (up.pool, up.backend);
        let reusable = up.resp.as_ref().is_some_and(|r| r.keep_alive)
            && up.inbuf.is_empty()
            && up.out.is_empty()
            && !up.peer_closed
            && x.body_done;
        up.session = None;
        up.resp = None;
        up.ready = 0;
        x.upstream = None;
        x.last_active = now;
        // Past the point of retrying: the copy serves the next request (of
        // any session) rather than waiting idle with this one. Kept without
        // looking inside: with many connections it is out of the cache by
        // now, and the next request writes it anyway.
        keep_retry(&mut self.spare_retries, x.retry.take(), x.retry_keep);
        if let Some(r) = x.route.take().and_then(|ri| self.listeners[x.listener].routes.get_mut(ri))
        {
            let _ = r.total_us.record((now - x.started).total_micros().max(1));
        }
        let client_keep = x.keep_alive && x.body_done && !x.peer_closed;
        let upconn = up.conn;
        self.pools[pool].stats.backends[b].responses += 1;
        self.pools[pool].active[b] = self.pools[pool].active[b].saturating_sub(1);
        if reusable && self.pools[pool].idle[b].len() < max_idle {
            // Idle in the pool with no buffer of the proxy's (its session,
            // which settles the pair at the end of the event, is no longer
            // its own).
            self.settle_bufs(None, Some(u));
            self.pools[pool].idle[b].push(u);
        } else {
            tcp.close(upconn);
            self.remove_upstream(u);
        }
        let Some(x) = self.sess(s) else { return };
        if client_keep {
            x.phase = Phase::Head;
            x.head_since = now;
            if !x.inbuf.is_empty() {
                self.process_client(s, now, tcp);
            }
        } else {
            x.phase = Phase::Closing;
            x.inbuf.clear();
            self.flush_client(s, tcp);
        }
    }

    /// The backend sent something we cannot relay: 502 if the client has seen
    /// nothing yet, else cut the client off.
    fn bad_upstream<T: TcpApi>(&mut self, u: u32, s: u32, tcp: &mut T) {
        self.abort_upstream(u, s, tcp);
        let Some(x) = self.sess(s) else { return };
        if x.response_started {
            let conn = x.conn;
            tcp.abort(conn);
        } else {
            self.fail(s, 502, "Bad Gateway", tcp);
        }
    }

    /// An upstream connection ended (closed, reset, refused, or its peer closed).
    fn upstream_gone<T: TcpApi>(&mut self, u: u32, now: Instant, tcp: &mut T) {
        let Some(up) = self.up(u) else { return };
        let (pool, b, connected, session) = (up.pool, up.backend, up.connected, up.session);
        if let Some(s) = session {
            // A response delimited by the close is complete now.
            let until_close = up.resp.as_ref().is_some_and(|r| r.framing == Framing::UntilClose);
            if until_close {
                up.peer_closed = true;
                self.pump_down(u, now, tcp);
                if self.up(u).is_some_and(|x| x.session.is_none()) {
                    self.remove_upstream(u);
                    return;
                }
            }
            if !connected {
                self.pools[pool].stats.backends[b].connect_failures += 1;
            }
            self.backend_result(pool, b, false, now);
            // Nothing of a response yet: the request may go to another backend.
            if self.up(u).is_some_and(|x| x.resp.is_none()) {
                self.drop_upstream_and_retry(u, s, b, now, tcp);
                return;
            }
            self.bad_upstream(u, s, tcp);
            return;
        }
        let idle = &mut self.pools[pool].idle[b];
        if let Some(p) = idle.iter().position(|x| *x == u) {
            idle.swap_remove(p);
        }
        self.remove_upstream(u);
    }

    /// Resets upstream `u` and detaches it from session `s`: the request
    /// it carried is abandoned (the caller answers the client or retries).
    fn abort_upstream<T: TcpApi>(&mut self, u: u32, s: u32, tcp: &mut T) {
        if let Some(conn) = self.up(u).map(|x| x.conn) {
            tcp.abort(conn);
        }
        self.remove_upstream(u);
        if let Some(x) = self.sess(s) {
            x.upstream = None;
        }
    }

    fn remove_upstream(&mut self, u: u32) {
        if let Some(up) = self.upstreams.get_mut(u as usize).and_then(Option::take) {
            if up.session.is_some() {
                let a = &mut self.pools[up.pool].active[up.backend];
                *a = a.saturating_sub(1);
            }
            if self.owners.get(&up.conn) == Some(&Owner::Upstream(u)) {
                self.owners.remove(&up.conn);
            }
            let idle = &mut self.pools[up.pool].idle[up.backend];
            if let Some(p) = idle.iter().position(|x| *x == u) {
                idle.swap_remove(p);
            }
            self.free_upstreams.push(u);
        }
    }

    fn drop_session<T: TcpApi>(&mut self, s: u32, tcp: &mut T) {
        let Some(x) = self.sessions.get_mut(s as usize).and_then(Option::take) else { return };
        if let Some(u) = x.upstream {
            if let Some(conn) = self.up(u).map(|y| y.conn) {
                tcp.abort(conn);
            }
            self.remove_upstream(u);
        }
        self.listeners[x.listener].stats.connections_active -= 1;
        self.free_sessions.push(s);
        // Its buffers serve the next connections (HTTP/2 makes one per
        // request).
        keep_buf(&mut self.spare_bufs, x.inbuf, SPARE_BUFS);
        keep_buf(&mut self.spare_bufs, x.out, SPARE_BUFS);
        keep_retry(&mut self.spare_retries, x.retry, x.retry_keep);
    }

    /// Answers a request the proxy refuses; it never reaches a backend.
    fn reject<T: TcpApi>(&mut self, s: u32, r: Reject, tcp: &mut T) {
        let (code, reason) = r.status();
        if let Some(li) = self.sess(s).map(|x| x.listener) {
            self.listeners[li].stats.rejected[r.index()] += 1;
        }
        self.fail(s, code, reason, tcp);
    }

    /// Answers with a configured response and closes the connection after it.
    fn fixed<T: TcpApi>(&mut self, s: u32, r: &FixedResponse, tcp: &mut T) {
        use std::io::Write;
        let Some(x) = self.sessions.get_mut(s as usize).and_then(Option::as_mut) else { return };
        x.phase = Phase::Closing;
        x.inbuf.clear();
        lend(&mut self.spare_bufs, &mut x.out);
        let reason = http1::reason(r.status);
        let _ = write!(
            x.out,
            "HTTP/1.1 {} {reason}\r\nContent-Type: text/plain\r\nContent-Length: {}\r\n",
            r.status,
            r.body.len()
        );
        if let Some(loc) = &r.location {
            let _ = write!(x.out, "Location: {loc}\r\n");
        }
        let _ = write!(x.out, "Connection: close\r\nServer: switchyard\r\n\r\n{}", r.body);
        if let Some(rs) = x.route.and_then(|ri| self.listeners[x.listener].routes.get_mut(ri)) {
            rs.status(r.status);
        }
        let st = &mut self.listeners[x.listener].stats;
        st.fixed_responses += 1;
        match r.status {
            400..=499 => st.responses_4xx += 1,
            500..=599 => st.responses_5xx += 1,
            _ => {}
        }
        self.flush_client(s, tcp);
    }

    /// Writes an error response and closes the client connection after it.
    fn fail<T: TcpApi>(&mut self, s: u32, code: u16, reason: &str, tcp: &mut T) {
        if let Some(r) = self.route_of(s) {
            r.status(code);
        }
        let Some(x) = self.sessions.get_mut(s as usize).and_then(Option::as_mut) else { return };
        if x.raw {
            // Nothing HTTP goes into a tunnel: the client sees a reset.
            x.phase = Phase::Closing;
            x.inbuf.clear();
            let st = &mut self.listeners[x.listener].stats;
            st.errors += 1;
            tcp.abort(x.conn);
            return;
        }
        x.phase = Phase::Closing;
        x.inbuf.clear();
        lend(&mut self.spare_bufs, &mut x.out);
        error_response(code, reason, &mut x.out);
        let st = &mut self.listeners[x.listener].stats;
        st.errors += 1;
        if code >= 500 {
            st.responses_5xx += 1;
        } else {
            st.responses_4xx += 1;
        }
        self.flush_client(s, tcp);
    }

    /// Sends what the proxy wrote itself; closes a finished connection.
    fn flush_client<T: TcpApi>(&mut self, s: u32, tcp: &mut T) {
        let Some(x) = self.sessions.get_mut(s as usize).and_then(Option::as_mut) else { return };
        if !x.out.is_empty() {
            let n = tcp.send(x.conn, &x.out).unwrap_or(0);
            x.out.drain(..n);
            self.listeners[x.listener].stats.bytes_out += n as u64;
        }
        if x.out.is_empty() && x.phase == Phase::Closing {
            tcp.close(x.conn);
        }
    }

    /// Runs timeouts: requests without a response head (504), connections
    /// that never completed (502), idle keep-alive clients (closed).
    pub fn poll<T: TcpApi>(&mut self, now: Instant, tcp: &mut T) {
        match self.next_check {
            Some(t) if now >= t => {}
            _ => return,
        }
        self.next_check = Some(now + CHECK_EVERY);
        let (idle_timeout, head_timeout) = (self.limits.idle_timeout, self.limits.head_timeout);
        for s in 0..self.sessions.len() as u32 {
            let Some(x) = self.sessions.get_mut(s as usize).and_then(Option::as_mut) else {
                continue;
            };
            match x.phase {
                Phase::Head if x.inbuf.is_empty() && now >= x.last_active + idle_timeout => {
                    x.phase = Phase::Closing;
                    self.flush_client(s, tcp);
                }
                // Bytes of a head (not the blank lines RFC 9112 2.2 lets a
                // client send between requests) for too long: 408, or for
                // a TLS passthrough listener waiting on a ClientHello, a
                // reset (`fail` writes nothing HTTP into a raw stream).
                Phase::Head
                    if x.inbuf.iter().any(|b| !matches!(b, b'\r' | b'\n'))
                        && now >= x.head_since + head_timeout =>
                {
                    self.listeners[x.listener].stats.timeouts += 1;
                    x.raw |= self.listeners[x.listener].cfg.passthrough;
                    self.fail(s, 408, "Request Timeout", tcp);
                }
                // A body still coming: the client's pace, not the backend's
                // answer, is what may run out.
                // (With bytes of it waiting here the backend is the slow one:
                // the request timeout below, from the last byte moved.)
                Phase::Request
                    if !x.response_started
                        && !x.body_done
                        && !x.raw
                        && x.inbuf.is_empty()
                        && now >= x.last_active + idle_timeout =>
                {
                    self.listeners[x.listener].stats.timeouts += 1;
                    if let Some(u) = x.upstream {
                        self.abort_upstream(u, s, tcp);
                    }
                    self.fail(s, 408, "Request Timeout", tcp);
                }
                Phase::Request if !x.response_started => {
                    let Some(u) = x.upstream else { continue };
                    let (started, request_timeout) = (x.waiting_since, x.request_timeout);
                    // A body still coming is timed by the arm above, unless
                    // the backend does not take it.
                    let sent = x.body_done || x.raw || !x.inbuf.is_empty();
                    let Some(up) = self.up(u) else { continue };
                    let (connected, opened, pool, b) =
                        (up.connected, up.opened, up.pool, up.backend);
                    if !connected && now >= opened + self.limits.connect_timeout {
                        self.pools[pool].stats.backends[b].connect_failures += 1;
                        self.backend_result(pool, b, false, now);
                        self.drop_upstream_and_retry(u, s, b, now, tcp);
                    } else if sent && now >= started + request_timeout {
                        self.abort_upstream(u, s, tcp);
                        self.fail(s, 504, "Gateway Timeout", tcp);
                    }
                }
                _ => {}
            }
        }
        if self.sessions.iter().all(Option::is_none) {
            self.next_check = None;
        }
    }

    /// Drains a backend of pool `pool` (index in [`L7Config::pools`]): no new
    /// requests go to it; requests under way finish. `false` undrains.
    pub fn set_backend_drain(&mut self, pool: usize, backend: usize, drain: bool) {
        if let Some(d) = self.pools.get_mut(pool).and_then(|p| p.drained.get_mut(backend)) {
            *d = drain;
        }
    }

    /// Marks a backend of pool `pool` up or down (active health checks): a
    /// down backend gets no new requests.
    pub fn set_backend_up(&mut self, pool: usize, backend: usize, up: bool) {
        if let Some(u) = self.pools.get_mut(pool).and_then(|p| p.up.get_mut(backend)) {
            *u = up;
        }
    }

    /// Whether a backend of pool `pool` is up by its health check.
    pub fn backend_up(&self, pool: usize, backend: usize) -> bool {
        self.pools.get(pool).and_then(|p| p.up.get(backend)).copied().unwrap_or(false)
    }

    /// Whether outlier detection has ejected a backend of pool `pool` at `now`.
    pub fn backend_ejected(&self, pool: usize, backend: usize, now: Instant) -> bool {
        self.pools
            .get(pool)
            .and_then(|p| p.ejected_until.get(backend))
            .is_some_and(|e| e.is_some_and(|t| now < t))
    }

    /// Whether a backend of pool `pool` is drained.
    pub fn backend_drained(&self, pool: usize, backend: usize) -> bool {
        self.pools.get(pool).and_then(|p| p.drained.get(backend)).copied().unwrap_or(false)
    }

    /// When `poll` next has work.
    pub fn poll_at(&self) -> Option<Instant> {
        self.next_check
    }
}

/// Replaces the first `n` bytes of `buf` with `with`: the bytes behind
/// move once, by `memmove` (`Vec::splice` copies the new bytes one at a
/// time and was a visible share of an HTTP/2 profile).
fn replace_front(buf: &mut Vec<u8>, n: usize, with: &[u8]) {
    let len = buf.len();
    if with.len() <= n {
        let at = n - with.len();
        buf[at..n].copy_from_slice(with);
        buf.drain(..at);
    } else {
        buf.resize(len + with.len() - n, 0);
        buf.copy_within(n..len, with.len());
        buf[..with.len()].copy_from_slice(with);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ipv4_addresses_are_written_as_display_writes_them() {
        for a in ["0.0.0.0", "198.18.0.101", "9.10.99.100", "255.255.255.255", "1.20.200.7"] {
            let a: std::net::Ipv4Addr = a.parse().unwrap();
            let mut out = b"for=".to_vec();
            push_ipv4(&mut out, a);
            assert_eq!(out, format!("for={a}").into_bytes());
        }
    }

    #[test]
    fn replace_front_keeps_what_follows_for_shorter_equal_and_longer_heads() {
        for with in [&b"ab"[..], b"abcd", b"abcdefgh"] {
            let mut buf = b"HEADbody".to_vec();
            replace_front(&mut buf, 4, with);
            assert_eq!(buf, [with, b"body"].concat());
        }
        let mut buf = b"HEAD".to_vec();
        replace_front(&mut buf, 4, b"");
        assert!(buf.is_empty());
    }

    fn accept(v: &str) -> Option<Coding> {
        preferred_coding(&[httparse::Header { name: "Accept-Encoding", value: v.as_bytes() }])
    }

    #[test]
    fn qvalues_follow_the_rfc_grammar() {
        for (v, q) in [("1", Some(1000)), ("1.000", Some(1000)), ("0", Some(0)), ("0.5", Some(500))]
        {
            assert_eq!(qvalue(v.as_bytes()), q, "{v}");
        }
        assert_eq!(qvalue(b"0.123"), Some(123));
        for bad in ["1.5", "2", "0.1234", "", "x", "0.5x", "-1"] {
            assert_eq!(qvalue(bad.as_bytes()), None, "{bad}");
        }
    }

    #[test]
    fn the_coding_is_the_clients_preference() {
        assert_eq!(accept("gzip, deflate"), Some(Coding::Gzip));
        assert_eq!(accept("br;q=0.9, gzip"), Some(Coding::Gzip));
        assert_eq!(accept("gzip, br"), Some(Coding::Brotli), "a tie goes to brotli");
        assert_eq!(accept("x-gzip"), Some(Coding::Gzip));
        assert_eq!(accept("*;q=0.3, br;q=0"), Some(Coding::Gzip), "br refused by name");
        assert_eq!(accept("identity"), None);
        assert_eq!(accept("gzip;q=0, br;q=0.0"), None);
        assert_eq!(accept("gzip;q=high"), None, "a malformed q-value counts as 0");
    }
}
