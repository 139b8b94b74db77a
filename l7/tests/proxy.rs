//! The proxy against an in-memory TCP: the test plays clients and origins byte
//! by byte and checks what each side receives.

use std::net::SocketAddr;

use switchyard_l7::*;
use switchyard_stack::fake::FakeTcp;
use switchyard_stack::tcp::{ConnId, ConnState, TcpEvent};
use switchyard_stack::{Duration, Instant};

struct H {
    l7: L7,
    tcp: FakeTcp,
    now: Instant,
}

fn backend(name: &str, addr: &str) -> Backend {
    Backend { name: name.into(), addr: addr.parse().unwrap(), weight: 1 }
}

impl H {
    fn new() -> H {
        H::with(|_| {})
    }

    /// The standard configuration, changed by `change`.
    fn with(change: impl FnOnce(&mut L7Config)) -> H {
        let mut cfg = L7Config {
            listeners: vec![ListenerConfig {
                id: 3,
                name: "web".into(),
                tls: false,
                client_cert_header: None,
                passthrough: false,
                routes: vec![
                    Route { path_prefix: "/api/".into(), pool: 0, ..Route::default() },
                    Route { path_prefix: "/one/".into(), pool: 2, ..Route::default() },
                    Route { path_prefix: "/static/".into(), pool: 1, ..Route::default() },
                ],
            }],
            pools: vec![
                PoolConfig {
                    name: "api".into(),
                    backends: vec![
                        backend("api-1", "198.18.0.31:8080"),
                        backend("api-2", "198.18.0.32:8080"),
                    ],
                    ..Default::default()
                },
                PoolConfig {
                    name: "static".into(),
                    backends: vec![backend("static-1", "198.18.0.41:8080")],
                    ..Default::default()
                },
                PoolConfig {
                    name: "one".into(),
                    backends: vec![backend("one-1", "198.18.0.51:8080")],
                    ..Default::default()
                },
            ],
            limits: Limits::default(),
        };
        change(&mut cfg);
        H { l7: L7::new(cfg).unwrap(), tcp: FakeTcp::default(), now: Instant::from_secs(1) }
    }

    fn ev(&mut self, ev: TcpEvent) {
        self.l7.on_event(self.now, ev, &mut self.tcp);
    }

    fn client(&mut self) -> ConnId {
        let c = self.tcp.new_conn("198.18.0.101:40000".parse().unwrap(), ConnState::Established);
        self.ev(TcpEvent::Accepted {
            conn: c,
            listener: 3,
            peer: "198.18.0.101:40000".parse().unwrap(),
            local: "198.18.0.10:80".parse().unwrap(),
        });
        c
    }

    fn write(&mut self, conn: ConnId, bytes: &[u8]) {
        self.tcp.c(conn).to_l7.extend(bytes.iter().copied());
        self.ev(TcpEvent::Readable { conn });
    }

    /// Completes every pending upstream connect; returns the new upstream conns.
    fn accept_upstreams(&mut self) -> Vec<ConnId> {
        let new: Vec<ConnId> = std::mem::take(&mut self.tcp.connects);
        for &u in &new {
            self.tcp.c(u).state = Some(ConnState::Established);
            self.ev(TcpEvent::Connected { conn: u });
        }
        new
    }

    fn take(&mut self, conn: ConnId) -> Vec<u8> {
        std::mem::take(&mut self.tcp.c(conn).sent)
    }
}

fn response(body: &[u8], extra: &str) -> Vec<u8> {
    let mut r =
        format!("HTTP/1.1 200 OK\r\nContent-Length: {}\r\n{extra}\r\n", body.len()).into_bytes();
    r.extend_from_slice(body);
    r
}

fn header_block(raw: &[u8]) -> String {
    String::from_utf8_lossy(raw).into_owned()
}

#[test]
fn routes_by_prefix_and_relays_byte_exact() {
    let mut h = H::new();
    let c = h.client();
    h.write(c, b"GET /api/users HTTP/1.1\r\nHost: vip\r\n\r\n");
    let ups = h.accept_upstreams();
    assert_eq!(ups.len(), 1);
    assert_eq!(h.tcp.c(ups[0]).remote, "198.18.0.31:8080".parse().unwrap());
    let req = header_block(&h.take(ups[0]));
    assert!(req.starts_with("GET /api/users HTTP/1.1\r\n"), "{req}");
    assert!(req.contains("Host: vip\r\n"));
    assert!(req.contains("X-Forwarded-For: 198.18.0.101\r\n"));
    let resp = response(b"users!", "X-Backend: api-1\r\n");
    h.write(ups[0], &resp);
    assert_eq!(h.take(c), resp);

    h.write(c, b"GET /static/logo.png HTTP/1.1\r\nHost: vip\r\n\r\n");
    let ups = h.accept_upstreams();
    assert_eq!(h.tcp.c(ups[0]).remote, "198.18.0.41:8080".parse().unwrap());
    assert!(header_block(&h.take(ups[0])).starts_with("GET /static/logo.png "));
    let st = h.l7.listener_stats(3).unwrap();
    assert_eq!((st.requests, st.errors), (2, 0));
}

#[test]
fn keep_alive_reuses_one_upstream_connection() {
    let mut h = H::new();
    let c = h.client();
    let mut first = None;
    for i in 0..5 {
        h.write(c, format!("GET /one/{i} HTTP/1.1\r\nHost: vip\r\n\r\n").as_bytes());
        if let Some(u) = h.accept_upstreams().first() {
            first = Some(*u);
        }
        let u = first.unwrap();
        assert!(header_block(&h.take(u)).starts_with(&format!("GET /one/{i} ")));
        let body = format!("body {i}");
        h.write(u, &response(body.as_bytes(), ""));
        assert!(h.take(c).ends_with(body.as_bytes()));
    }
    let one = h.l7.pool_stats()[2].backends[0].clone();
    assert_eq!(
        (one.requests, one.responses, one.upstream_connects, one.upstream_reuses),
        (5, 5, 1, 4)
    );
    assert!(!h.tcp.c(c).closed);
}

#[test]
fn idle_keep_alive_connections_hold_no_proxy_buffers() {
    let mut h = H::new();
    let c = h.client();
    h.write(c, b"GET /one/a HTTP/1.1\r\nHost: vip\r\n\r\n");
    // The request waits in a buffer until the upstream connection is up.
    assert!(h.l7.held_buffer_bytes() > 0);
    let u = h.accept_upstreams()[0];
    assert!(header_block(&h.take(u)).starts_with("GET /one/a "));
    assert_eq!(h.l7.held_buffer_bytes(), 0);
    h.write(u, &response(&[b'x'; 3000], ""));
    assert!(h.take(c).ends_with(&[b'x'; 3000]));
    // Both connections stay open (the upstream idle in its pool) and hold
    // nothing of the proxy's; the next request reuses a spare buffer.
    assert_eq!(h.l7.held_buffer_bytes(), 0);
    assert!(!h.tcp.c(c).closed && !h.tcp.c(u).closed);
    h.write(c, b"GET /one/b HTTP/1.1\r\nHost: vip\r\n\r\n");
    assert!(h.accept_upstreams().is_empty());
    assert!(header_block(&h.take(u)).starts_with("GET /one/b "));
    h.write(u, &response(b"again", ""));
    assert!(h.take(c).ends_with(b"again"));
    assert_eq!(h.l7.held_buffer_bytes(), 0);
    // A response larger than the client's window ends in a Writable event
    // of the client's: the upstream goes back to the pool holding nothing.
    h.tcp.c(c).window = 4096;
    h.write(c, b"GET /one/c HTTP/1.1\r\nHost: vip\r\n\r\n");
    assert!(header_block(&h.take(u)).starts_with("GET /one/c "));
    let big = response(&[b'y'; 6000], "");
    h.write(u, &big);
    let mut got = h.take(c);
    assert!(got.len() < big.len(), "the window holds part of it back");
    for _ in 0..10 {
        h.ev(TcpEvent::Writable { conn: c });
        got.extend_from_slice(&h.take(c));
    }
    assert!(got.ends_with(&[b'y'; 6000]));
    assert_eq!(h.l7.held_buffer_bytes(), 0);
}

#[test]
fn round_robin_alternates_backends() {
    let mut h = H::new();
    let mut seen = Vec::new();
    let mut ups: Vec<ConnId> = Vec::new();
    for _ in 0..4 {
        let c = h.client();
        h.write(c, b"GET /api/x HTTP/1.1\r\nHost: vip\r\nConnection: close\r\n\r\n");
        ups.extend(h.accept_upstreams());
        let u = *ups.iter().find(|u| !h.tcp.c(**u).sent.is_empty()).expect("request sent upstream");
        seen.push(h.tcp.c(u).remote.to_string());
        let req = header_block(&h.take(u));
        assert!(!req.contains("Connection"), "hop-by-hop header forwarded: {req}");
        h.write(u, &response(b"ok", ""));
        assert!(h.take(c).ends_with(b"ok"));
        assert!(h.tcp.c(c).closed, "client asked to close");
    }
    assert_eq!(
        seen,
        ["198.18.0.31:8080", "198.18.0.32:8080", "198.18.0.31:8080", "198.18.0.32:8080"]
    );
    // The client closed each time, but the upstream connections were kept.
    assert_eq!(ups.len(), 2);
}

#[test]
fn post_body_and_chunked_response_are_relayed() {
    let mut h = H::new();
    let c = h.client();
    h.write(c, b"POST /one/upload HTTP/1.1\r\nHost: vip\r\nContent-Length: 11\r\n\r\nhello");
    let u = h.accept_upstreams()[0];
    h.write(c, b" world");
    let sent = h.take(u);
    assert!(sent.ends_with(b"\r\n\r\nhello world"), "{}", header_block(&sent));
    let resp = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n";
    h.write(u, &resp[..30]);
    h.write(u, &resp[30..]);
    assert_eq!(h.take(c), resp.to_vec());
    // The response ended with its last chunk: the upstream is parked for reuse.
    h.write(c, b"GET /one/again HTTP/1.1\r\nHost: vip\r\n\r\n");
    assert!(h.accept_upstreams().is_empty());
    assert!(header_block(&h.take(u)).starts_with("GET /one/again "));
}

/// Malformed and ambiguous requests, by smuggling class (RFC 9112; the
/// classes of Kettle's "HTTP Desync Attacks"): each gets its status, is
/// counted under its reason, closes the connection, and no backend connection
/// is even opened.
#[test]
fn malformed_and_ambiguous_requests_get_their_status_and_never_reach_a_backend() {
    use Reject::*;
    let long_line = format!("GET /api/{} HTTP/1.1\r\nHost: v\r\n\r\n", "a".repeat(9000));
    let long_ext = format!(
        "POST /api/ HTTP/1.1\r\nHost: v\r\nTransfer-Encoding: chunked\r\n\r\n5;{}\r\nhello\r\n0\r\n\r\n",
        "x".repeat(5000)
    );
    let mut many = String::from("GET /api/ HTTP/1.1\r\nHost: v\r\n");
    for i in 0..80 {
        many.push_str(&format!("X-H{i}: v\r\n"));
    }
    many.push_str("\r\n");
    let mut big = String::from("GET /api/ HTTP/1.1\r\nHost: v\r\n");
    while big.len() < 20_000 {
        big.push_str("X-Filler: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\r\n");
    }
    let chunked = "POST /api/ HTTP/1.1\r\nHost: v\r\nTransfer-Encoding: chunked\r\n\r\n";
    let cases: Vec<(String, &[u8], u16, Reject)> = vec![
        // CL.TE and TE.CL: both framings present.
        ("CL then TE".into(), b"POST /api/ HTTP/1.1\r\nHost: v\r\nContent-Length: 6\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\nG", 400, ContentLengthAndTransferEncoding),
        ("TE then CL".into(), b"POST /api/ HTTP/1.1\r\nHost: v\r\nTransfer-Encoding: chunked\r\nContent-Length: 3\r\n\r\n8\r\nSMUGGLED\r\n0\r\n\r\n", 400, ContentLengthAndTransferEncoding),
        ("CL 0 with TE".into(), b"POST /api/ HTTP/1.1\r\nHost: v\r\nContent-Length: 0\r\nTransfer-Encoding: chunked\r\n\r\n", 400, ContentLengthAndTransferEncoding),
        ("TE mixed case with CL".into(), b"POST /api/ HTTP/1.1\r\nHost: v\r\ntRaNsFeR-eNcOdInG: cHuNkEd\r\nContent-Length: 4\r\n\r\n", 400, ContentLengthAndTransferEncoding),
        // TE.TE: obfuscated transfer codings.
        ("TE xchunked".into(), b"POST /api/ HTTP/1.1\r\nHost: v\r\nTransfer-Encoding: xchunked\r\n\r\n", 400, TransferEncodingNotChunked),
        ("TE chunk".into(), b"POST /api/ HTTP/1.1\r\nHost: v\r\nTransfer-Encoding: chunk\r\n\r\n", 400, TransferEncodingNotChunked),
        ("TE quoted".into(), b"POST /api/ HTTP/1.1\r\nHost: v\r\nTransfer-Encoding: \"chunked\"\r\n\r\n", 400, TransferEncodingNotChunked),
        ("TE twice".into(), b"POST /api/ HTTP/1.1\r\nHost: v\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: identity\r\n\r\n", 400, TransferEncodingNotChunked),
        ("TE list chunked first".into(), b"POST /api/ HTTP/1.1\r\nHost: v\r\nTransfer-Encoding: chunked, identity\r\n\r\n", 400, TransferEncodingNotChunked),
        ("TE list chunked last".into(), b"POST /api/ HTTP/1.1\r\nHost: v\r\nTransfer-Encoding: gzip, chunked\r\n\r\n", 501, UnsupportedTransferEncoding),
        ("TE space before colon".into(), b"POST /api/ HTTP/1.1\r\nHost: v\r\nTransfer-Encoding : chunked\r\n\r\n", 400, Malformed),
        ("TE vertical tab".into(), b"POST /api/ HTTP/1.1\r\nHost: v\r\nTransfer-Encoding:\x0bchunked\r\n\r\n", 400, Malformed),
        ("TE trailing NUL".into(), b"POST /api/ HTTP/1.1\r\nHost: v\r\nTransfer-Encoding: chunked\x00\r\n\r\n", 400, Malformed),
        ("TE folded onto previous line".into(), b"POST /api/ HTTP/1.1\r\nHost: v\r\nX: y\r\n Transfer-Encoding: chunked\r\n\r\n", 400, Malformed),
        ("TE in HTTP/1.0".into(), b"POST /api/ HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n", 400, Http10TransferEncoding),
        // Absolute-form targets whose authority is no host.
        ("absolute form, empty host".into(), b"GET http:///api/ HTTP/1.1\r\nHost: v\r\n\r\n", 400, BadTarget),
        ("absolute form, userinfo".into(), b"GET http://u:p@v/api/ HTTP/1.1\r\nHost: v\r\n\r\n", 400, BadTarget),
        // Content-Length: duplicates and anything but one decimal number.
        ("CL twice, equal".into(), b"POST /api/ HTTP/1.1\r\nHost: v\r\nContent-Length: 5\r\nContent-Length: 5\r\n\r\nhello", 400, BadContentLength),
        ("CL twice, different".into(), b"POST /api/ HTTP/1.1\r\nHost: v\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\nhello!", 400, BadContentLength),
        ("CL list".into(), b"POST /api/ HTTP/1.1\r\nHost: v\r\nContent-Length: 5, 5\r\n\r\nhello", 400, BadContentLength),
        ("CL negative".into(), b"POST /api/ HTTP/1.1\r\nHost: v\r\nContent-Length: -1\r\n\r\n", 400, BadContentLength),
        ("CL plus sign".into(), b"POST /api/ HTTP/1.1\r\nHost: v\r\nContent-Length: +5\r\n\r\nhello", 400, BadContentLength),
        ("CL hex".into(), b"POST /api/ HTTP/1.1\r\nHost: v\r\nContent-Length: 0x5\r\n\r\nhello", 400, BadContentLength),
        ("CL two numbers".into(), b"POST /api/ HTTP/1.1\r\nHost: v\r\nContent-Length: 5 5\r\n\r\nhello", 400, BadContentLength),
        ("CL overflow".into(), b"POST /api/ HTTP/1.1\r\nHost: v\r\nContent-Length: 99999999999999999999\r\n\r\n", 400, BadContentLength),
        ("CL empty".into(), b"POST /api/ HTTP/1.1\r\nHost: v\r\nContent-Length: \r\n\r\n", 400, BadContentLength),
        ("CL space before colon".into(), b"POST /api/ HTTP/1.1\r\nHost: v\r\nContent-Length : 5\r\n\r\nhello", 400, Malformed),
        // Chunked bodies: sizes, extensions, framing (checked before upstream).
        ("chunk size not hex".into(), b"", 400, BadChunk),
        ("chunk size negative".into(), b"", 400, BadChunk),
        ("chunk size 0x prefix".into(), b"", 400, BadChunk),
        ("chunk size overflow".into(), b"", 400, BadChunk),
        ("chunk longer than its size".into(), b"", 400, BadChunk),
        ("chunk size bare LF".into(), b"", 400, BadChunk),
        ("chunk ext bare LF".into(), b"", 400, BadChunk),
        ("chunk ext NUL".into(), b"", 400, BadChunk),
        ("chunk ext without semicolon".into(), b"", 400, BadChunk),
        ("chunk ext control character".into(), b"", 400, BadChunk),
        ("chunk ext too long".into(), b"", 400, ExtensionTooLong),
        ("chunk data without CRLF".into(), b"", 400, BadChunk),
        ("trailer bare LF".into(), b"", 400, BadChunk),
        ("chunk size empty".into(), b"", 400, BadChunk),
        ("chunk ext empty name".into(), b"", 400, BadChunk),
        ("chunk ext quotes for a name".into(), b"", 400, BadChunk),
        ("chunk ext unterminated quote".into(), b"", 400, BadChunk),
        ("chunk ext two values".into(), b"", 400, BadChunk),
        ("trailer folded".into(), b"", 400, BadChunk),
        ("trailer without a colon".into(), b"", 400, BadChunk),
        ("trailer space before colon".into(), b"", 400, BadChunk),
        // Header fields: folding, bare CR, NUL, bad names.
        ("obs-fold with tab".into(), b"GET /api/ HTTP/1.1\r\nHost: v\r\nX: a\r\n\tb\r\n\r\n", 400, Malformed),
        ("bare CR in value".into(), b"GET /api/ HTTP/1.1\r\nHost: v\r\nX: a\rb\r\n\r\n", 400, Malformed),
        ("NUL in value".into(), b"GET /api/ HTTP/1.1\r\nHost: v\r\nX: a\x00b\r\n\r\n", 400, Malformed),
        ("NUL in name".into(), b"GET /api/ HTTP/1.1\r\nHost: v\r\nBad\x00Header: x\r\n\r\n", 400, Malformed),
        ("DEL in value".into(), b"GET /api/ HTTP/1.1\r\nHost: v\r\nX: a\x7fb\r\n\r\n", 400, Malformed),
        ("space in name".into(), b"GET /api/ HTTP/1.1\r\nHost: v\r\nHo st: v\r\n\r\n", 400, Malformed),
        ("empty name".into(), b"GET /api/ HTTP/1.1\r\nHost: v\r\n: x\r\n\r\n", 400, Malformed),
        // Request line.
        ("bare CR in request line".into(), b"GET /api/\r HTTP/1.1\r\nHost: v\r\n\r\n", 400, Malformed),
        ("NUL in target".into(), b"GET /api/\x00 HTTP/1.1\r\nHost: v\r\n\r\n", 400, Malformed),
        ("double space".into(), b"GET  /api/ HTTP/1.1\r\nHost: v\r\n\r\n", 400, Malformed),
        ("bad method character".into(), b"G(T /api/ HTTP/1.1\r\nHost: v\r\n\r\n", 400, Malformed),
        ("HTTP/2.0 on a request line".into(), b"GET /api/ HTTP/2.0\r\nHost: v\r\n\r\n", 505, BadVersion),
        ("lowercase version".into(), b"GET /api/ http/1.1\r\nHost: v\r\n\r\n", 505, BadVersion),
        ("TLS ClientHello on a plain port".into(), b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03", 400, Malformed),
        // Host.
        ("no Host in HTTP/1.1".into(), b"GET /api/ HTTP/1.1\r\n\r\n", 400, BadHost),
        ("two Hosts".into(), b"GET /api/ HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n", 400, BadHost),
        ("Host with a space".into(), b"GET /api/ HTTP/1.1\r\nHost: a b\r\n\r\n", 400, BadHost),
        ("Host with a slash".into(), b"GET /api/ HTTP/1.1\r\nHost: a/b@evil\r\n\r\n", 400, BadHost),
        // Limits.
        ("request line over the limit".into(), long_line.as_bytes(), 414, RequestLineTooLong),
        ("too many header fields".into(), many.as_bytes(), 431, HeadTooLarge),
        ("head over the limit".into(), big.as_bytes(), 431, HeadTooLarge),
        ("no route".into(), b"GET /nowhere HTTP/1.1\r\nHost: v\r\n\r\n", 404, NoRoute),
    ];
    let chunk_bodies: &[(&str, &str)] = &[
        ("chunk size not hex", "z\r\nhello\r\n0\r\n\r\n"),
        ("chunk size negative", "-5\r\nhello\r\n0\r\n\r\n"),
        ("chunk size 0x prefix", "0x5\r\nhello\r\n0\r\n\r\n"),
        ("chunk size overflow", "10000000000000005\r\nhello\r\n0\r\n\r\n"),
        ("chunk longer than its size", "3\r\nhello\r\n0\r\n\r\n"),
        ("chunk size bare LF", "5\nhello\r\n0\r\n\r\n"),
        ("chunk ext bare LF", "5;a=b\nhello\r\n0\r\n\r\n"),
        ("chunk ext NUL", "5;a\x00=b\r\nhello\r\n0\r\n\r\n"),
        ("chunk ext without semicolon", "5 ext\r\nhello\r\n0\r\n\r\n"),
        ("chunk ext control character", "5;a=\x01\r\nhello\r\n0\r\n\r\n"),
        ("chunk data without CRLF", "5\r\nhelloXX0\r\n\r\n"),
        ("trailer bare LF", "5\r\nhello\r\n0\r\nX-T: 1\n\r\n"),
        ("chunk size empty", "\r\nhello\r\n0\r\n\r\n"),
        ("chunk ext empty name", "5;=x\r\nhello\r\n0\r\n\r\n"),
        ("chunk ext quotes for a name", "5;\"\"=\r\nhello\r\n0\r\n\r\n"),
        ("chunk ext unterminated quote", "5;a=\"x\r\nhello\r\n0\r\n\r\n"),
        ("chunk ext two values", "5;a=b c\r\nhello\r\n0\r\n\r\n"),
        ("trailer folded", "5\r\nhello\r\n0\r\nX-T: a\r\n b\r\n\r\n"),
        ("trailer without a colon", "5\r\nhello\r\n0\r\njunk\r\n\r\n"),
        ("trailer space before colon", "5\r\nhello\r\n0\r\nX-T : a\r\n\r\n"),
    ];
    let mut checked = 0;
    for (name, raw, status, reason) in &cases {
        let raw: Vec<u8> = if let Some((_, body)) = chunk_bodies.iter().find(|(n, _)| n == name) {
            format!("{chunked}{body}").into_bytes()
        } else if name == "chunk ext too long" {
            long_ext.clone().into_bytes()
        } else {
            raw.to_vec()
        };
        assert!(!raw.is_empty(), "{name}: no request");
        let mut h = H::new();
        let c = h.client();
        h.write(c, &raw);
        assert!(h.tcp.connects.is_empty(), "{name}: reached a backend");
        let out = header_block(&h.take(c));
        assert!(out.starts_with(&format!("HTTP/1.1 {status} ")), "{name}: got {out}");
        assert!(h.tcp.c(c).closed, "{name}: connection left open");
        let st = h.l7.listener_stats(3).unwrap();
        assert_eq!(st.rejected(*reason), 1, "{name}: not counted as {reason:?}");
        assert_eq!(st.rejected.iter().sum::<u64>(), 1, "{name}: counted twice");
        assert_eq!(st.requests, 0, "{name}");
        checked += 1;
    }
    assert!(checked >= 40, "only {checked} cases");
}

/// Refusing a request costs no allocation once the proxy is warm: the error
/// response is written into a spare buffer, which goes back once the
/// answer is sent, so the spares neither grow nor shrink however many requests
/// are refused (and the same holds for fixed responses).
#[test]
fn refused_requests_write_their_answers_into_spare_buffers() {
    let mut h = H::with(|cfg| {
        cfg.listeners[0].routes.push(Route {
            path_prefix: "/moved".into(),
            fixed: Some(FixedResponse {
                status: 301,
                body: "moved".into(),
                location: Some("https://vip/".into()),
            }),
            ..Route::default()
        })
    });
    let mut spares = Vec::new();
    for i in 0..12 {
        let c = h.client();
        let req: &[u8] = match i % 3 {
            0 => b"GET /api/ HTTP/1.1\r\nHost: v\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n",
            1 => b"GET /nowhere HTTP/1.1\r\nHost: v\r\n\r\n",
            _ => b"GET /moved HTTP/1.1\r\nHost: v\r\n\r\n",
        };
        h.write(c, req);
        let status = [" 400 ", " 404 ", " 301 "][i % 3];
        assert!(header_block(&h.take(c)).contains(status), "request {i}");
        assert!(h.tcp.c(c).closed, "request {i}");
        h.ev(TcpEvent::Closed { conn: c, reset: false });
        spares.push(h.l7.spare_buffers());
    }
    assert!(h.tcp.connects.is_empty());
    // The first connection allocates its two buffers (head and answer);
    // every later one borrows them and gives them back.
    assert!(spares.iter().all(|&n| n == spares[0]), "spare buffers after each: {spares:?}");
}

/// A bad chunk that arrives after the head went upstream: the upstream
/// connection is aborted (the backend never sees a complete request) and the
/// client gets 400.
#[test]
fn a_bad_chunk_after_the_head_aborts_the_upstream() {
    let mut h = H::new();
    let c = h.client();
    h.write(
        c,
        b"POST /api/ HTTP/1.1\r\nHost: v\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n",
    );
    let ups = h.accept_upstreams();
    assert_eq!(ups.len(), 1);
    h.write(c, b"zz\r\nGET /smuggled HTTP/1.1\r\n\r\n");
    assert!(h.tcp.c(ups[0]).aborted, "upstream not aborted");
    assert!(header_block(&h.take(c)).starts_with("HTTP/1.1 400 "));
    assert_eq!(h.l7.listener_stats(3).unwrap().rejected(Reject::BadChunk), 1);
}

#[test]
fn a_reset_upstream_gives_502_and_a_silent_one_504() {
    let mut h = H::new();
    let c = h.client();
    h.write(c, b"GET /one/ HTTP/1.1\r\nHost: v\r\n\r\n");
    let u = h.tcp.connects.pop().unwrap();
    h.ev(TcpEvent::Closed { conn: u, reset: true });
    assert!(header_block(&h.take(c)).starts_with("HTTP/1.1 502 "));
    assert_eq!(h.l7.pool_stats()[2].backends[0].connect_failures, 1);

    let c = h.client();
    h.write(c, b"GET /one/ HTTP/1.1\r\nHost: v\r\n\r\n");
    h.accept_upstreams();
    h.now += Duration::from_secs(31);
    h.l7.poll(h.now, &mut h.tcp);
    assert!(header_block(&h.take(c)).starts_with("HTTP/1.1 504 "));
    assert_eq!(h.l7.listener_stats(3).unwrap().responses_5xx, 2);
}

/// A head trickled a byte a second (slowloris) gets 408 at the head
/// timeout, though every byte resets the idle clock; an upload slower than
/// the request timeout is not cut off while it moves (the request timeout
/// runs from its end), and one that stops gets 408 at the idle timeout.
#[test]
fn a_trickled_head_times_out_and_a_slow_upload_does_not_until_it_stalls() {
    let mut h = H::new();
    let c = h.client();
    let head = b"GET /one/ HTTP/1.1\r\nHost: v\r\nX-Pad: aaaaaaaaaaaaaaaaaaaa\r\n";
    for (i, b) in head.iter().enumerate().take(12) {
        h.write(c, &[*b]);
        h.now += Duration::from_secs(1);
        h.l7.poll(h.now, &mut h.tcp);
        if i < 9 {
            assert!(h.take(c).is_empty(), "second {i}");
        }
    }
    let got = header_block(&h.take(c));
    assert!(got.starts_with("HTTP/1.1 408 "), "{got}");
    assert!(h.tcp.c(c).closed);
    assert!(h.tcp.connects.is_empty(), "nothing went upstream");
    assert_eq!(h.l7.listener_stats(3).unwrap().timeouts, 1);

    // 100 bytes over 50 s, 10 every 5 s: longer than the 30 s request
    // timeout, answered once complete.
    let c = h.client();
    h.write(c, b"POST /one/ HTTP/1.1\r\nHost: v\r\nContent-Length: 100\r\n\r\n");
    let u = h.accept_upstreams()[0];
    for _ in 0..10 {
        h.now += Duration::from_secs(5);
        h.l7.poll(h.now, &mut h.tcp);
        h.write(c, &[b'x'; 10]);
    }
    assert!(h.take(c).is_empty(), "no 504 while the body moves");
    let up = h.take(u);
    assert!(up.ends_with(&[b'x'; 100]), "{}", String::from_utf8_lossy(&up));
    h.now += Duration::from_secs(20);
    h.l7.poll(h.now, &mut h.tcp);
    h.write(u, &response(b"got it", ""));
    assert!(h.take(c).ends_with(b"got it"));
    let head = "POST /one/ HTTP/1.1\r\nHost: v\r\nContent-Length: 100\r\n\r\n";
    let route = &h.l7.route_stats(3).unwrap()[1];
    assert_eq!(route.bytes_in, (head.len() + 100) as u64, "head and body counted");

    // A body that stops half way: 408 after the idle timeout, and the
    // upstream, which has half a request, is dropped.
    h.write(c, b"POST /one/ HTTP/1.1\r\nHost: v\r\nContent-Length: 100\r\n\r\nhalf");
    h.now += Duration::from_secs(59);
    h.l7.poll(h.now, &mut h.tcp);
    let early = h.take(c);
    assert!(early.is_empty(), "{}", String::from_utf8_lossy(&early));
    h.now += Duration::from_secs(2);
    h.l7.poll(h.now, &mut h.tcp);
    assert!(header_block(&h.take(c)).starts_with("HTTP/1.1 408 "));
    assert!(h.tcp.c(u).aborted, "the backend never sees a complete request");
    assert_eq!(h.l7.listener_stats(3).unwrap().timeouts, 2);

    // A blank line between requests (RFC 9112 2.2) is not a head being
    // trickled: the connection idles as any other.
    let c = h.client();
    h.write(c, b"GET /one/ HTTP/1.1\r\nHost: v\r\n\r\n");
    let u = h.accept_upstreams().pop().unwrap_or(u);
    h.take(u);
    h.write(u, &response(b"ok", ""));
    h.take(c);
    h.write(c, b"\r\n");
    h.now += Duration::from_secs(11);
    h.l7.poll(h.now, &mut h.tcp);
    assert!(h.take(c).is_empty() && !h.tcp.c(c).closed, "no 408 for a blank line");
}

#[test]
fn a_slow_client_gets_every_byte_of_a_large_response() {
    let mut h = H::new();
    let c = h.client();
    h.tcp.c(c).window = 4096;
    h.write(c, b"GET /one/big HTTP/1.1\r\nHost: v\r\n\r\n");
    let u = h.accept_upstreams()[0];
    let body: Vec<u8> = (0..1 << 20).map(|i: u32| (i % 251) as u8).collect();
    let resp = response(&body, "");
    let mut fed = 0;
    let mut got = Vec::new();
    for _ in 0..100_000 {
        if fed < resp.len() && h.tcp.c(u).to_l7.len() < 65536 {
            let n = (resp.len() - fed).min(8192);
            h.write(u, &resp[fed..fed + n]);
            fed += n;
        }
        let chunk = h.take(c);
        got.extend_from_slice(&chunk);
        h.ev(TcpEvent::Writable { conn: c });
        // The proxy reads the upstream again when there is room.
        h.ev(TcpEvent::Readable { conn: u });
        if got.len() == resp.len() {
            break;
        }
    }
    assert_eq!(got.len(), resp.len());
    assert!(got == resp, "bytes differ");
}

/// Random and mutated bytes from clients and from origins, in random pieces:
/// the proxy answers or closes, and never panics.
#[test]
fn random_input_from_both_sides_never_panics() {
    use rand::{Rng, SeedableRng};
    let seed = std::env::var("SIM_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or(9u64);
    println!("fuzz seed {seed} (SIM_SEED={seed} replays it)");
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
    let good_req: &[u8] = b"POST /api/x HTTP/1.1\r\nHost: v\r\nContent-Length: 5\r\n\r\nhello";
    let good_resp: &[u8] =
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n";
    let mut h = H::new();
    for round in 0..2000 {
        let c = h.client();
        let mut req = if rng.random_bool(0.5) {
            good_req.to_vec()
        } else {
            (0..rng.random_range(0..300)).map(|_| rng.random()).collect()
        };
        for _ in 0..rng.random_range(0..4) {
            if !req.is_empty() {
                let k = rng.random_range(0..req.len());
                req[k] = rng.random();
            }
        }
        // Deliver in random pieces.
        let mut off = 0;
        while off < req.len() {
            let n = rng.random_range(1..=req.len() - off);
            h.write(c, &req[off..off + n]);
            off += n;
        }
        for u in h.accept_upstreams() {
            let mut resp = good_resp.to_vec();
            for _ in 0..rng.random_range(0..4) {
                let k = rng.random_range(0..resp.len());
                resp[k] = rng.random();
            }
            if rng.random_bool(0.1) {
                h.ev(TcpEvent::Closed { conn: u, reset: true });
            } else {
                h.write(u, &resp);
                if rng.random_bool(0.3) {
                    h.ev(TcpEvent::PeerClosed { conn: u });
                }
            }
        }
        if rng.random_bool(0.5) {
            h.ev(TcpEvent::PeerClosed { conn: c });
        }
        h.ev(TcpEvent::Closed { conn: c, reset: round % 3 == 0 });
        h.now += Duration::from_millis(50);
        h.l7.poll(h.now, &mut h.tcp);
    }
    let st = h.l7.listener_stats(3).unwrap();
    assert_eq!(st.connections_total, 2000);
    assert_eq!(st.connections_active, 0, "every client session was released");
    assert!(st.errors > 0 && st.requests > 0, "{st:?}");
}

/// Each match kind decides where a request goes; a request that differs only in
/// that one respect goes elsewhere, so an ignored rule would fail here.
#[test]
fn routes_match_host_method_header_exact_path_and_answer_fixed_responses() {
    let routes = vec![
        Route {
            path_prefix: "/".into(),
            path: Some("/old".into()),
            fixed: Some(FixedResponse {
                status: 301,
                location: Some("/new".into()),
                body: "moved".into(),
            }),
            ..Route::default()
        },
        Route {
            path_prefix: "/".into(),
            host: Some("*.tenant.example".into()),
            pool: 2,
            ..Route::default()
        },
        Route {
            path_prefix: "/".into(),
            host: Some("api.example".into()),
            pool: 0,
            ..Route::default()
        },
        Route {
            path_prefix: "/".into(),
            methods: vec!["DELETE".into()],
            pool: 2,
            ..Route::default()
        },
        Route {
            path_prefix: "/".into(),
            header: Some(("X-Canary".into(), Some("1".into()))),
            pool: 0,
            ..Route::default()
        },
        Route {
            path_prefix: "/".into(),
            cookie: Some(("beta".into(), Some("yes".into()))),
            pool: 0,
            ..Route::default()
        },
        Route {
            path_prefix: "/".into(),
            query: Some(("debug".into(), None)),
            pool: 2,
            ..Route::default()
        },
        Route {
            path_prefix: "/".into(),
            query: Some(("lang".into(), Some("en".into()))),
            pool: 0,
            ..Route::default()
        },
        Route { path_prefix: "/".into(), pool: 1, ..Route::default() },
    ];
    let mut h = H::new();
    let cfg = L7Config {
        listeners: vec![ListenerConfig {
            id: 3,
            name: "web".into(),
            routes,
            ..ListenerConfig::default()
        }],
        pools: vec![
            PoolConfig {
                name: "api".into(),
                backends: vec![backend("api-1", "198.18.0.31:8080")],
                ..Default::default()
            },
            PoolConfig {
                name: "static".into(),
                backends: vec![backend("static-1", "198.18.0.41:8080")],
                ..Default::default()
            },
            PoolConfig {
                name: "one".into(),
                backends: vec![backend("one-1", "198.18.0.51:8080")],
                ..Default::default()
            },
        ],
        limits: Limits::default(),
    };
    h.l7 = L7::new(cfg).unwrap();
    let cases: &[(&str, Option<&str>)] = &[
        ("GET /x HTTP/1.1\r\nHost: a.tenant.example\r\n\r\n", Some("198.18.0.51:8080")),
        ("GET /x HTTP/1.1\r\nHost: A.Tenant.Example:8443\r\n\r\n", Some("198.18.0.51:8080")),
        ("GET /x HTTP/1.1\r\nHost: tenant.example\r\n\r\n", Some("198.18.0.41:8080")),
        ("GET /x HTTP/1.1\r\nHost: api.example\r\n\r\n", Some("198.18.0.31:8080")),
        ("GET /x HTTP/1.1\r\nHost: api.example.org\r\n\r\n", Some("198.18.0.41:8080")),
        ("DELETE /x HTTP/1.1\r\nHost: v\r\n\r\n", Some("198.18.0.51:8080")),
        ("delete /x HTTP/1.1\r\nHost: v\r\n\r\n", Some("198.18.0.41:8080")),
        ("GET /x HTTP/1.1\r\nHost: v\r\nX-Canary: 1\r\n\r\n", Some("198.18.0.31:8080")),
        ("GET /x HTTP/1.1\r\nHost: v\r\nX-Canary: 2\r\n\r\n", Some("198.18.0.41:8080")),
        ("GET /x HTTP/1.1\r\nHost: v\r\nCookie: a=1; beta=yes\r\n\r\n", Some("198.18.0.31:8080")),
        ("GET /x HTTP/1.1\r\nHost: v\r\nCookie: beta=no; a=1\r\n\r\n", Some("198.18.0.41:8080")),
        ("GET /x?a=1&debug HTTP/1.1\r\nHost: v\r\n\r\n", Some("198.18.0.51:8080")),
        ("GET /x?debugging=1 HTTP/1.1\r\nHost: v\r\n\r\n", Some("198.18.0.41:8080")),
        ("GET /x?a=1&lang=en HTTP/1.1\r\nHost: v\r\n\r\n", Some("198.18.0.31:8080")),
        ("GET /x?lang=fr HTTP/1.1\r\nHost: v\r\n\r\n", Some("198.18.0.41:8080")),
        ("GET /old HTTP/1.1\r\nHost: v\r\n\r\n", None),
        ("GET /old/page HTTP/1.1\r\nHost: v\r\n\r\n", Some("198.18.0.41:8080")),
        // A `://` in the query is not an absolute-form target: the path is
        // `/x`, not `/old` (which used to take the fixed route).
        ("GET /x?r=http://h/old HTTP/1.1\r\nHost: v\r\n\r\n", Some("198.18.0.41:8080")),
        // Absolute form: the authority is the host (RFC 9112 3.2.2).
        ("GET http://api.example/x HTTP/1.1\r\nHost: v\r\n\r\n", Some("198.18.0.31:8080")),
        (
            "GET HTTP://A.TENANT.EXAMPLE:8080/x HTTP/1.1\r\nHost: api.example\r\n\r\n",
            Some("198.18.0.51:8080"),
        ),
        ("GET http://v/old HTTP/1.1\r\nHost: v\r\n\r\n", None),
    ];
    for (req, want) in cases {
        let c = h.client();
        h.write(c, req.as_bytes());
        let ups = h.accept_upstreams();
        match want {
            Some(addr) => {
                assert_eq!(ups.len(), 1, "{req}");
                assert_eq!(h.tcp.c(ups[0]).remote.to_string(), *addr, "{req}");
            }
            None => {
                assert!(ups.is_empty(), "{req}");
                let out = header_block(&h.take(c));
                assert!(out.starts_with("HTTP/1.1 301 Moved Permanently\r\n"), "{out}");
                assert!(out.contains("Location: /new\r\n") && out.ends_with("moved"), "{out}");
            }
        }
        h.ev(TcpEvent::Closed { conn: c, reset: true });
    }
    assert_eq!(h.l7.listener_stats(3).unwrap().fixed_responses, 2);

    // HTTP/1.0 without Host goes up as HTTP/1.1 with the address the
    // client asked as its Host (an HTTP/1.1 backend refuses one without).
    let c = h.client();
    h.write(c, b"GET /x HTTP/1.0\r\n\r\n");
    let u = h.accept_upstreams()[0];
    let up = header_block(&h.take(u));
    assert!(
        up.starts_with("GET /x HTTP/1.1\r\n") && up.contains("\r\nHost: 198.18.0.10:80\r\n"),
        "{up}"
    );

    // Upstream, an absolute-form request goes in origin form with the
    // authority as its one Host.
    let c = h.client();
    h.write(c, b"GET http://api.example:8080/x?q=1 HTTP/1.1\r\nHost: v\r\n\r\n");
    let u = h.accept_upstreams()[0];
    let up = header_block(&h.take(u));
    assert!(up.starts_with("GET /x?q=1 HTTP/1.1\r\n"), "{up}");
    assert!(up.contains("\r\nHost: api.example:8080\r\n"), "{up}");
    assert_eq!(up.matches("Host:").count(), 1, "{up}");
}

/// Two requests in one segment: the second waits for the first's response and
/// then goes out on the same upstream connection; the client gets both, in order.
#[test]
fn pipelined_requests_are_answered_in_order() {
    let mut h = H::new();
    let c = h.client();
    h.write(c, b"GET /one/a HTTP/1.1\r\nHost: v\r\n\r\nGET /one/b HTTP/1.1\r\nHost: v\r\n\r\n");
    let u = h.accept_upstreams()[0];
    let first = header_block(&h.take(u));
    assert!(first.starts_with("GET /one/a ") && !first.contains("/one/b"), "{first}");
    h.write(u, &response(b"AAA", ""));
    let second = header_block(&h.take(u));
    assert!(second.starts_with("GET /one/b "), "second request after the first response: {second}");
    h.write(u, &response(b"BBB", ""));
    let got = header_block(&h.take(c));
    let (a, b) = (got.find("AAA").unwrap(), got.find("BBB").unwrap());
    assert!(a < b, "{got}");
    assert_eq!(h.l7.pool_stats()[2].backends[0].upstream_connects, 1);
}

/// `Expect: 100-continue`: the interim response reaches the client, the body
/// follows, and the final response ends the exchange (RFC 9110 10.1.1).
#[test]
fn expect_100_continue_passes_the_interim_response() {
    let mut h = H::new();
    let c = h.client();
    h.write(
        c,
        b"PUT /one/f HTTP/1.1\r\nHost: v\r\nContent-Length: 5\r\nExpect: 100-continue\r\n\r\n",
    );
    let u = h.accept_upstreams()[0];
    assert!(header_block(&h.take(u)).contains("Expect: 100-continue\r\n"));
    h.write(u, b"HTTP/1.1 100 Continue\r\n\r\n");
    assert_eq!(h.take(c), b"HTTP/1.1 100 Continue\r\n\r\n");
    h.write(c, b"hello");
    assert_eq!(h.take(u), b"hello");
    h.write(u, &response(b"stored", ""));
    assert!(h.take(c).ends_with(b"stored"));
    // The exchange is over: the connection takes another request.
    h.write(c, b"GET /one/g HTTP/1.1\r\nHost: v\r\n\r\n");
    assert!(header_block(&h.take(u)).starts_with("GET /one/g "));
}

/// A route rewrites the path prefix and the request headers on the way up.
#[test]
fn routes_rewrite_path_and_request_headers() {
    let mut h = H::new();
    let cfg = L7Config {
        listeners: vec![ListenerConfig {
            id: 3,
            name: "web".into(),
            tls: false,
            client_cert_header: None,
            passthrough: false,
            routes: vec![Route {
                path_prefix: "/api/".into(),
                pool: 0,
                rewrite_prefix: Some("/v2/".into()),
                set_request_headers: vec![("X-Env".into(), "prod".into())],
                remove_request_headers: vec!["Cookie".into()],
                ..Route::default()
            }],
        }],
        pools: vec![PoolConfig {
            name: "api".into(),
            backends: vec![backend("api-1", "198.18.0.31:8080")],
            ..Default::default()
        }],
        limits: Limits::default(),
    };
    h.l7 = L7::new(cfg).unwrap();
    let c = h.client();
    h.write(
        c,
        b"GET /api/users?id=7 HTTP/1.1\r\nHost: v\r\nCookie: secret=1\r\nX-Env: dev\r\nX-Forwarded-For: 6.6.6.6\r\nForwarded: for=6.6.6.6\r\nAccept: */*\r\n\r\n",
    );
    let u = h.accept_upstreams()[0];
    let up = header_block(&h.take(u));
    assert!(up.starts_with("GET /v2/users?id=7 HTTP/1.1\r\n"), "{up}");
    assert!(
        !up.contains("Cookie") && !up.contains("X-Env: dev") && !up.contains("6.6.6.6"),
        "{up}"
    );
    assert!(up.contains("X-Env: prod\r\n") && up.contains("Accept: */*\r\n"), "{up}");
    assert!(
        up.contains("X-Forwarded-For: 198.18.0.101\r\n")
            && up.contains("X-Forwarded-Proto: http\r\n")
            && up.contains("Forwarded: for=198.18.0.101;proto=http\r\n"),
        "{up}"
    );
}

/// The upstream's connection headers stay on the upstream connection: the
/// client gets its own (`Connection: close` when it asked to close), never
/// the backend's keep-alive or the headers its `Connection` names.
#[test]
fn connection_headers_are_the_clients_not_the_backends() {
    let mut h = H::new();
    let hop = "Connection: keep-alive, X-Hop\r\nKeep-Alive: timeout=5\r\nX-Hop: 1\r\nX-End: 2\r\n";
    for (ask, want_close) in [("Connection: close\r\n", true), ("", false)] {
        let c = h.client();
        h.write(c, format!("GET /api/x HTTP/1.1\r\nHost: vip\r\n{ask}\r\n").as_bytes());
        let ups = h.accept_upstreams();
        let u = *ups.iter().find(|u| !h.tcp.c(**u).sent.is_empty()).expect("request sent upstream");
        h.take(u);
        h.write(u, &response(b"ok", hop));
        let got = header_block(&h.take(c));
        let head = got.split("\r\n\r\n").next().unwrap().to_ascii_lowercase();
        assert!(head.starts_with("http/1.1 200 ok"), "{got}");
        assert!(head.contains("x-end: 2"), "end-to-end header kept: {got}");
        assert!(!head.contains("keep-alive"), "backend's keep-alive relayed: {got}");
        assert!(!head.contains("x-hop"), "header named by Connection relayed: {got}");
        assert_eq!(head.contains("connection: close"), want_close, "{got}");
        assert!(got.ends_with("ok"), "{got}");
        assert_eq!(h.tcp.c(c).closed, want_close);
    }
}

/// A response framed by the backend's close (no length, as HTTP/1.0
/// origins send) tells the client `Connection: close` and closes it after
/// the body: a kept-alive client could not find its end, and the next
/// response would run into it. A response with both Transfer-Encoding and
/// Content-Length goes on chunked, without the length (RFC 9112 6.3 item
/// 3); `gzip, chunked` is chunked too.
#[test]
fn a_response_until_close_closes_the_client_and_a_chunked_one_drops_its_length() {
    let mut h = H::new();
    let c = h.client();
    h.write(c, b"GET /api/x HTTP/1.1\r\nHost: v\r\n\r\n");
    let u = h.accept_upstreams()[0];
    h.take(u);
    h.write(u, b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n\r\nuntil the end");
    let got = header_block(&h.take(c));
    assert!(got.to_ascii_lowercase().contains("\r\nconnection: close\r\n"), "{got}");
    assert!(got.ends_with("until the end"), "{got}");
    assert!(!h.tcp.c(c).closed, "the body may go on");
    h.ev(TcpEvent::PeerClosed { conn: u });
    assert!(h.tcp.c(c).closed, "the end of the body is the end of the connection");

    for te in ["chunked", "gzip, chunked"] {
        let c = h.client();
        h.write(c, b"GET /api/x HTTP/1.1\r\nHost: v\r\n\r\n");
        let ups = h.accept_upstreams();
        let u = *ups.iter().find(|u| !h.tcp.c(**u).sent.is_empty()).expect("sent upstream");
        h.take(u);
        let resp = format!(
            "HTTP/1.1 200 OK\r\nContent-Length: 100\r\nTransfer-Encoding: {te}\r\n\r\n5\r\nhello\r\n0\r\n\r\n"
        );
        h.write(u, resp.as_bytes());
        let got = header_block(&h.take(c));
        let head = got.split("\r\n\r\n").next().unwrap().to_ascii_lowercase();
        assert!(!head.contains("content-length"), "{te}: {got}");
        assert!(!head.contains("connection: close"), "{te}: {got}");
        assert!(got.ends_with("5\r\nhello\r\n0\r\n\r\n"), "{te}: {got}");
        assert!(!h.tcp.c(c).closed, "{te}: kept alive");
    }
}

/// Where an upstream connection goes.
fn remote(h: &mut H, u: ConnId) -> SocketAddr {
    h.tcp.c(u).remote
}

const API_1: &str = "198.18.0.31:8080";
const API_2: &str = "198.18.0.32:8080";

#[test]
fn idempotent_requests_are_retried_on_another_backend() {
    let mut h = H::with(|c| c.listeners[0].routes[0].retries = 1);
    // A reset before any response: the GET goes to the other backend.
    let c = h.client();
    h.write(c, b"GET /api/a HTTP/1.1\r\nHost: v\r\n\r\n");
    let first = h.tcp.connects.pop().unwrap();
    assert_eq!(remote(&mut h, first).to_string(), API_1);
    h.ev(TcpEvent::Closed { conn: first, reset: true });
    let second = h.accept_upstreams();
    assert_eq!(second.len(), 1, "retried once");
    assert_eq!(remote(&mut h, second[0]).to_string(), API_2);
    assert!(header_block(&h.take(second[0])).starts_with("GET /api/a HTTP/1.1\r\n"));
    h.write(second[0], &response(b"two", ""));
    let got = h.take(c);
    assert!(header_block(&got).starts_with("HTTP/1.1 200 "), "{}", header_block(&got));
    assert!(got.ends_with(b"two"));
    assert_eq!(h.l7.listener_stats(3).unwrap().retries, 1);
    assert_eq!(h.l7.pool_stats()[0].backends[0].connect_failures, 1);

    // A 503 from api-1 is not relayed; api-2 answers.
    let c = h.client();
    h.write(c, b"GET /api/b HTTP/1.1\r\nHost: v\r\n\r\n");
    // Round robin: api-1's turn, on a new connection.
    let mut ups = h.accept_upstreams();
    assert_eq!(ups.len(), 1, "a new connection to api-1");
    assert_eq!(remote(&mut h, ups[0]).to_string(), API_1);
    h.take(ups[0]);
    h.tcp.c(ups[0]).to_l7.extend(b"HTTP/1.1 503 Busy\r\nContent-Length: 4\r\n\r\nbusy".iter());
    h.ev(TcpEvent::Readable { conn: ups[0] });
    assert!(h.tcp.c(ups[0]).aborted, "the 503 connection is dropped");
    assert!(h.take(c).is_empty(), "the client saw nothing of the 503");
    // api-2's idle connection from the first request carries the retry.
    ups = h.accept_upstreams();
    assert!(ups.is_empty(), "kept-alive connection to api-2 reused");
    let reused = second[0];
    assert!(header_block(&h.take(reused)).starts_with("GET /api/b "));
    h.write(reused, &response(b"ok-b", ""));
    let got = h.take(c);
    assert!(header_block(&got).starts_with("HTTP/1.1 200 "));
    assert!(got.ends_with(b"ok-b"));
    let st = h.l7.listener_stats(3).unwrap();
    assert_eq!((st.retries, st.responses_5xx), (2, 0));
    assert_eq!(h.l7.pool_stats()[0].backends[0].responses_5xx, 1);

    // A POST with a body is not retried: the 503 reaches the client.
    let c = h.client();
    h.write(c, b"POST /api/c HTTP/1.1\r\nHost: v\r\nContent-Length: 2\r\n\r\nhi");
    let u = h.accept_upstreams()[0];
    h.take(u);
    h.write(u, b"HTTP/1.1 503 Busy\r\nContent-Length: 4\r\n\r\nbusy");
    assert!(header_block(&h.take(c)).starts_with("HTTP/1.1 503 "));
    assert_eq!(h.l7.listener_stats(3).unwrap().retries, 2);
}

/// A 503 from the only backend that could answer is the client's answer,
/// Retry-After and body included: a retry would find no other backend and
/// end in a 502 of our own.
#[test]
fn a_503_with_no_other_backend_is_relayed_not_retried() {
    let mut h = H::with(|c| c.listeners[0].routes[1].retries = 1);
    let c = h.client();
    h.write(c, b"GET /one/a HTTP/1.1\r\nHost: v\r\n\r\n");
    let u = h.accept_upstreams()[0];
    h.take(u);
    h.write(u, b"HTTP/1.1 503 Busy\r\nRetry-After: 7\r\nContent-Length: 4\r\n\r\nbusy");
    let got = header_block(&h.take(c));
    assert!(got.starts_with("HTTP/1.1 503 Busy\r\n"), "{got}");
    assert!(got.contains("Retry-After: 7\r\n") && got.ends_with("busy"), "{got}");
    assert!(h.accept_upstreams().is_empty(), "no second attempt");
    assert_eq!(h.l7.listener_stats(3).unwrap().retries, 0);
}

#[test]
fn without_retries_a_reset_is_a_502_and_retries_stop_when_backends_run_out() {
    // retries = 0: the client gets the 502.
    let mut h = H::new();
    let c = h.client();
    h.write(c, b"GET /api/a HTTP/1.1\r\nHost: v\r\n\r\n");
    let u = h.tcp.connects.pop().unwrap();
    h.ev(TcpEvent::Closed { conn: u, reset: true });
    assert!(header_block(&h.take(c)).starts_with("HTTP/1.1 502 "));
    assert!(h.tcp.connects.is_empty());
    // retries = 5 but two backends: each is tried once, then 502.
    let mut h = H::with(|c| c.listeners[0].routes[0].retries = 5);
    let c = h.client();
    h.write(c, b"GET /api/a HTTP/1.1\r\nHost: v\r\n\r\n");
    for _ in 0..2 {
        let u = h.tcp.connects.pop().expect("a connection attempt");
        h.ev(TcpEvent::Closed { conn: u, reset: true });
    }
    assert!(h.tcp.connects.is_empty(), "no backend tried twice");
    assert!(header_block(&h.take(c)).starts_with("HTTP/1.1 502 "));
    assert_eq!(h.l7.listener_stats(3).unwrap().retries, 1);
}

#[test]
fn consecutive_failures_eject_a_backend_until_the_ejection_ends() {
    let mut h = H::with(|c| {
        c.pools[0].outlier =
            Some(Outlier { consecutive_failures: 2, ejection: Duration::from_secs(10) })
    });
    let send = |h: &mut H, status: &str| -> SocketAddr {
        let c = h.client();
        h.write(c, b"GET /api/x HTTP/1.1\r\nHost: v\r\nConnection: close\r\n\r\n");
        let u = h.accept_upstreams().pop().expect("new upstream (client closes)");
        let to = remote(h, u);
        h.take(u);
        let st = if to.to_string() == API_1 { status } else { "200 OK" };
        h.write(
            u,
            format!("HTTP/1.1 {st}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n").as_bytes(),
        );
        to
    };
    // api-1 fails twice in a row (api-2 answers in between): ejected.
    let mut seen = Vec::new();
    for _ in 0..4 {
        seen.push(send(&mut h, "500 Oops").to_string());
    }
    assert_eq!(seen, [API_1, API_2, API_1, API_2]);
    assert!(h.l7.backend_ejected(0, 0, h.now));
    assert_eq!(h.l7.pool_stats()[0].backends[0].ejections, 1);
    for _ in 0..4 {
        assert_eq!(send(&mut h, "200 OK").to_string(), API_2, "ejected backend got a request");
    }
    // The ejection ends; api-1 is back in the rotation.
    h.now += Duration::from_secs(11);
    let after: Vec<String> = (0..4).map(|_| send(&mut h, "200 OK").to_string()).collect();
    assert_eq!(after.iter().filter(|a| *a == API_1).count(), 2, "{after:?}");
    // A backend marked down by its health check gets nothing either.
    h.l7.set_backend_up(0, 1, false);
    for _ in 0..3 {
        assert_eq!(send(&mut h, "200 OK").to_string(), API_1);
    }
    // All down: 503 without a backend.
    h.l7.set_backend_up(0, 0, false);
    let c = h.client();
    h.write(c, b"GET /api/x HTTP/1.1\r\nHost: v\r\n\r\n");
    assert!(h.tcp.connects.is_empty());
    assert!(header_block(&h.take(c)).starts_with("HTTP/1.1 503 "));
}

#[test]
fn regex_routes_response_headers_and_route_counters() {
    let mut h = H::with(|c| {
        c.listeners[0].routes = vec![
            // Numeric order ids only; a header regex picks admins.
            Route {
                path_regex: Some(regex::Regex::new(r"^/orders/[0-9]+$").unwrap()),
                header_regex: Some(("X-User".into(), regex::Regex::new("^admin-").unwrap())),
                pool: 2,
                set_response_headers: vec![("Cache-Control".into(), "no-store".into())],
                remove_response_headers: vec!["Server".into()],
                add_response_headers: vec![("Set-Cookie".into(), "lb=a".into())],
                add_request_headers: vec![("X-User".into(), "via-lb".into())],
                ..Route::default()
            },
            Route {
                path_regex: Some(regex::Regex::new(r"^/orders/[0-9]+$").unwrap()),
                pool: 0,
                ..Route::default()
            },
        ];
    });
    let ask = |h: &mut H, req: &str| -> (Option<SocketAddr>, String, String) {
        let c = h.client();
        h.write(c, req.as_bytes());
        let Some(u) = h.accept_upstreams().pop() else {
            return (None, header_block(&h.take(c)), String::new());
        };
        let up = header_block(&h.take(u));
        h.write(
            u,
            b"HTTP/1.1 200 OK\r\nServer: origin/1.0\r\nCache-Control: max-age=60\r\nSet-Cookie: app=1\r\nContent-Length: 2\r\n\r\nok",
        );
        (Some(remote(h, u)), header_block(&h.take(c)), up)
    };
    let (to, resp, up) =
        ask(&mut h, "GET /orders/42 HTTP/1.1\r\nHost: v\r\nX-User: admin-ann\r\n\r\n");
    assert_eq!(to.unwrap().to_string(), "198.18.0.51:8080", "admin route");
    assert!(resp.contains("Cache-Control: no-store\r\n"), "{resp}");
    // Added headers come after the backend's (or client's) of that name.
    let (app, lb) = (resp.find("Set-Cookie: app=1\r\n"), resp.find("Set-Cookie: lb=a\r\n"));
    assert!(app.is_some() && lb.is_some() && app < lb, "{resp}");
    assert!(up.contains("X-User: admin-ann\r\n") && up.contains("X-User: via-lb\r\n"), "{up}");
    assert!(!resp.contains("max-age") && !resp.contains("Server: origin"), "{resp}");
    let (to, resp, _) = ask(&mut h, "GET /orders/42 HTTP/1.1\r\nHost: v\r\nX-User: bob\r\n\r\n");
    assert_eq!(to.unwrap().to_string(), API_1, "regex on the header did not match");
    assert!(resp.contains("Cache-Control: max-age=60\r\n") && resp.contains("Server: origin"));
    let (to, resp, _) =
        ask(&mut h, "GET /orders/42x HTTP/1.1\r\nHost: v\r\nX-User: admin-ann\r\n\r\n");
    assert!(to.is_none() && resp.starts_with("HTTP/1.1 404 "), "path regex is anchored: {resp}");
    let (to, _, _) = ask(&mut h, "GET /orders/7?x=1 HTTP/1.1\r\nHost: v\r\n\r\n");
    assert_eq!(to.unwrap().to_string(), API_2, "query string is not part of the path");

    let routes = h.l7.route_stats(3).unwrap();
    assert_eq!((routes[0].requests, routes[1].requests), (1, 2));
    assert_eq!(routes[0].responses, [0, 1, 0, 0, 0]);
    assert_eq!(routes[1].responses, [0, 2, 0, 0, 0]);
    assert_eq!(routes[1].upstream_us.len(), 2);
    assert_eq!(routes[1].total_us.len(), 2);
    assert!(routes[0].bytes_out > 2);
    // Request bytes: the one head route 0 took, as the client sent it.
    let head = "GET /orders/42 HTTP/1.1\r\nHost: v\r\nX-User: admin-ann\r\n\r\n";
    assert_eq!(routes[0].bytes_in, head.len() as u64);
}

#[test]
fn route_latency_histograms_measure_upstream_and_total_time() {
    let mut h = H::new();
    let c = h.client();
    h.write(c, b"GET /api/slow HTTP/1.1\r\nHost: v\r\n\r\n");
    let u = h.accept_upstreams()[0];
    h.take(u);
    h.now += Duration::from_millis(40);
    h.write(u, b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\nab");
    h.now += Duration::from_millis(10);
    h.write(u, b"cd");
    assert!(h.take(c).ends_with(b"abcd"));
    let r = &h.l7.route_stats(3).unwrap()[0];
    let (up, total) = (r.upstream_us.max(), r.total_us.max());
    assert!((39_000..=41_000).contains(&up), "upstream {up} µs");
    assert!((49_000..=51_000).contains(&total), "total {total} µs");
    // A 502 the proxy writes counts as the route's 5xx.
    let c = h.client();
    h.write(c, b"GET /api/x HTTP/1.1\r\nHost: v\r\n\r\n");
    let u = h.tcp.connects.pop().unwrap();
    h.ev(TcpEvent::Closed { conn: u, reset: true });
    assert!(header_block(&h.take(c)).starts_with("HTTP/1.1 502 "));
    assert_eq!(h.l7.route_stats(3).unwrap()[0].responses, [0, 1, 0, 0, 1]);
}

/// Sends `n` requests (each on its own client connection, answered at once
/// unless `hold`) and returns the backend port's last octet of each.
fn spread(h: &mut H, n: usize, req: impl Fn(usize) -> String, hold: bool) -> Vec<String> {
    let mut out = Vec::new();
    for i in 0..n {
        let c = h.client();
        h.write(c, req(i).as_bytes());
        let u = h.accept_upstreams().pop().expect("a new upstream connection");
        out.push(h.tcp.c(u).remote.ip().to_string());
        h.take(u);
        if !hold {
            h.write(u, &response(b"x", "Connection: close\r\n"));
        }
    }
    out
}

fn three_backends(balance: Balance, weights: [u32; 3]) -> H {
    H::with(|c| {
        c.pools[0].backends = (0..3)
            .map(|i| Backend {
                name: format!("api-{}", i + 1),
                addr: format!("198.18.0.3{}:8080", i + 1).parse().unwrap(),
                weight: weights[i],
            })
            .collect();
        c.pools[0].balance = balance;
    })
}

#[test]
fn weighted_round_robin_is_smooth_and_proportional() {
    let mut h = three_backends(Balance::WeightedRoundRobin, [5, 1, 1]);
    let got = spread(&mut h, 7, |_| "GET /api/ HTTP/1.1\r\nHost: v\r\n\r\n".into(), false);
    // nginx's smooth order for 5:1:1 — the heavy one never gets 5 in a row.
    assert_eq!(
        got,
        [
            "198.18.0.31",
            "198.18.0.31",
            "198.18.0.32",
            "198.18.0.31",
            "198.18.0.33",
            "198.18.0.31",
            "198.18.0.31"
        ]
    );
    // Weight 0: out of rotation.
    let mut h = three_backends(Balance::WeightedRoundRobin, [1, 0, 1]);
    let got = spread(&mut h, 6, |_| "GET /api/ HTTP/1.1\r\nHost: v\r\n\r\n".into(), false);
    assert!(!got.iter().any(|a| a == "198.18.0.32"), "{got:?}");
}

#[test]
fn least_requests_avoids_the_busy_backend() {
    let mut h = three_backends(Balance::LeastRequests, [1, 1, 1]);
    // Three requests held open: one on each backend.
    let held = spread(&mut h, 3, |_| "GET /api/ HTTP/1.1\r\nHost: v\r\n\r\n".into(), true);
    let mut sorted = held.clone();
    sorted.sort();
    assert_eq!(sorted, ["198.18.0.31", "198.18.0.32", "198.18.0.33"]);
    // Six more, held too: they spread evenly, two more per backend, never
    // piling onto one.
    let more = spread(&mut h, 6, |_| "GET /api/ HTTP/1.1\r\nHost: v\r\n\r\n".into(), true);
    for b in ["198.18.0.31", "198.18.0.32", "198.18.0.33"] {
        assert_eq!(more.iter().filter(|a| *a == b).count(), 2, "{more:?}");
    }
    // Weight 2 on api-1: it may carry twice the others in flight.
    let mut h = three_backends(Balance::LeastRequests, [2, 1, 1]);
    let got = spread(&mut h, 8, |_| "GET /api/ HTTP/1.1\r\nHost: v\r\n\r\n".into(), true);
    assert_eq!(got.iter().filter(|a| *a == "198.18.0.31").count(), 4, "{got:?}");
}

#[test]
fn hashing_on_a_header_or_cookie_keeps_a_client_on_its_backend() {
    for (balance, req) in [
        (
            Balance::HashHeader("X-User".into()),
            (|i: usize| format!("GET /api/ HTTP/1.1\r\nHost: v\r\nX-User: user-{}\r\n\r\n", i % 20))
                as fn(usize) -> String,
        ),
        (Balance::HashCookie("sid".into()), |i: usize| {
            format!("GET /api/ HTTP/1.1\r\nHost: v\r\nCookie: a=b; sid={}\r\n\r\n", i % 20)
        }),
    ] {
        let mut h = three_backends(balance.clone(), [1, 1, 1]);
        let got = spread(&mut h, 60, req, false);
        // Each of the 20 keys always lands on the same backend...
        for k in 0..20 {
            let mine: Vec<&String> = got.iter().skip(k).step_by(20).collect();
            assert!(mine.iter().all(|a| *a == mine[0]), "{balance:?} key {k}: {mine:?}");
        }
        // ...and the keys spread over all three.
        let mut used: Vec<&String> = got.iter().collect();
        used.sort();
        used.dedup();
        assert_eq!(used.len(), 3, "{balance:?}: {used:?}");
        // With api-2 down, only api-2's keys move.
        h.l7.set_backend_up(0, 1, false);
        let after = spread(&mut h, 20, req, false);
        for k in 0..20 {
            if got[k] != "198.18.0.32" {
                assert_eq!(after[k], got[k], "{balance:?} key {k} moved without need");
            } else {
                assert_ne!(after[k], "198.18.0.32");
            }
        }
    }
    // Without the header: round robin.
    let mut h = three_backends(Balance::HashHeader("X-User".into()), [1, 1, 1]);
    let got = spread(&mut h, 3, |_| "GET /api/ HTTP/1.1\r\nHost: v\r\n\r\n".into(), false);
    assert_eq!(got, ["198.18.0.31", "198.18.0.32", "198.18.0.33"]);
}

/// A WebSocket upgrade (RFC 6455): the handshake passes with its
/// `Connection: Upgrade`, the 101 comes back, then frames go both ways
/// unchanged, and a close on either side ends both.
#[test]
fn websocket_upgrade_becomes_a_tunnel() {
    let mut h = H::new();
    let c = h.client();
    h.write(
        c,
        b"GET /api/chat HTTP/1.1\r\nHost: v\r\nConnection: keep-alive, Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n",
    );
    let u = h.accept_upstreams()[0];
    let up = header_block(&h.take(u));
    assert!(
        up.contains("Upgrade: websocket\r\n") && up.contains("Connection: Upgrade\r\n"),
        "{up}"
    );
    assert!(up.contains("Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"), "{up}");
    h.write(
        u,
        b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n\r\n",
    );
    let down = header_block(&h.take(c));
    assert!(down.starts_with("HTTP/1.1 101 "), "{down}");
    assert!(down.contains("Upgrade: websocket\r\n") && down.contains("Connection: Upgrade\r\n"));
    assert!(down.contains("Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n"), "{down}");
    // A masked text frame "Hello" from the client (RFC 6455 5.7), then a
    // 300-byte binary frame, then the server's unmasked echo.
    let hello = [0x81, 0x85, 0x37, 0xfa, 0x21, 0x3d, 0x7f, 0x9f, 0x4d, 0x51, 0x58];
    h.write(c, &hello);
    let mut big = vec![0x82, 0xfe, 0x01, 0x2c, 1, 2, 3, 4];
    big.extend((0..300u32).map(|i| (i % 251) as u8));
    h.write(c, &big);
    assert_eq!(h.take(u), [&hello[..], &big[..]].concat(), "frames upstream byte-exact");
    let echo = [0x81, 0x05, b'H', b'e', b'l', b'l', b'o'];
    h.write(u, &echo);
    assert_eq!(h.take(c), echo, "frames downstream byte-exact");
    // Nothing was parsed as HTTP: no 400 for the frame bytes.
    assert_eq!(h.l7.listener_stats(3).unwrap().errors, 0);
    // The client closes: the backend gets the FIN, closes too, and so does
    // the client connection.
    h.ev(TcpEvent::PeerClosed { conn: c });
    assert!(h.tcp.c(u).closed, "FIN passed to the backend");
    h.ev(TcpEvent::PeerClosed { conn: u });
    assert!(h.tcp.c(c).closed, "client connection closed after the backend's");
}

#[test]
fn upgrade_headers_are_hop_by_hop_unless_upgrading() {
    let mut h = H::new();
    // Upgrade without `Connection: upgrade`, and an h2c upgrade: neither is
    // passed on; headers named by Connection are dropped.
    for req in [
        "GET /api/ HTTP/1.1\r\nHost: v\r\nUpgrade: websocket\r\n\r\n",
        "GET /api/ HTTP/1.1\r\nHost: v\r\nConnection: Upgrade, HTTP2-Settings\r\nUpgrade: h2c\r\nHTTP2-Settings: AAMAAABkAARAAAAAAAIAAAAA\r\n\r\n",
    ] {
        let c = h.client();
        h.write(c, req.as_bytes());
        let u = h.accept_upstreams().pop().expect("round robin: a new connection each time");
        let up = header_block(&h.take(u));
        assert!(up.starts_with("GET /api/ "), "{up}");
        assert!(!up.contains("Upgrade") && !up.contains("HTTP2-Settings"), "{up}");
        // A 101 the client did not ask for is a bad gateway.
        h.write(u, b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n\r\n");
        assert!(header_block(&h.take(c)).starts_with("HTTP/1.1 502 "));
    }
}

mod h2_client {
    //! An HTTP/2 client (the h2 crate) over the fake TCP: polled by hand
    //! with a no-op waker, like the proxy's front.
    use super::*;
    use bytes::Bytes;
    use std::cell::RefCell;
    use std::future::Future;
    use std::pin::Pin;
    use std::rc::Rc;
    use std::task::{Context, Poll, Waker};
    use switchyard_l7::h2front::H2Front;

    #[derive(Default)]
    pub struct Bufs {
        rx: Vec<u8>,
        tx: Vec<u8>,
    }
    pub struct Pipe(pub Rc<RefCell<Bufs>>);
    impl tokio::io::AsyncRead for Pipe {
        fn poll_read(
            self: Pin<&mut Self>,
            _: &mut Context<'_>,
            buf: &mut tokio::io::ReadBuf<'_>,
        ) -> Poll<std::io::Result<()>> {
            let mut b = self.0.borrow_mut();
            if b.rx.is_empty() {
                return Poll::Pending;
            }
            let n = b.rx.len().min(buf.remaining());
            buf.put_slice(&b.rx[..n]);
            b.rx.drain(..n);
            Poll::Ready(Ok(()))
        }
    }
    impl tokio::io::AsyncWrite for Pipe {
        fn poll_write(
            self: Pin<&mut Self>,
            _: &mut Context<'_>,
            d: &[u8],
        ) -> Poll<std::io::Result<usize>> {
            self.0.borrow_mut().tx.extend_from_slice(d);
            Poll::Ready(Ok(d.len()))
        }
        fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
            Poll::Ready(Ok(()))
        }
        fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
            Poll::Ready(Ok(()))
        }
    }

    /// The HTTP/2 frames in `b`, as (type, flags, stream, payload length).
    pub fn frames(mut b: &[u8]) -> Vec<(u8, u8, u32, usize)> {
        let mut out = Vec::new();
        while b.len() >= 9 {
            let len = usize::from(b[0]) << 16 | usize::from(b[1]) << 8 | usize::from(b[2]);
            let stream = u32::from_be_bytes([b[5], b[6], b[7], b[8]]) & 0x7fff_ffff;
            out.push((b[3], b[4], stream, len));
            b = &b[(9 + len).min(b.len())..];
        }
        out
    }

    /// The proxy with its HTTP/2 front, and one HTTP/2 client connection.
    pub struct H2 {
        pub h: H,
        pub front: H2Front,
        pub conn: ConnId,
        pipe: Rc<RefCell<Bufs>>,
        pub client: h2::client::SendRequest<Bytes>,
        connection: h2::client::Connection<Pipe, Bytes>,
        /// Every byte the front sent the client.
        pub from_front: Vec<u8>,
    }

    /// A backend's HTTP/2 server side.
    pub struct Server {
        conn: ConnId,
        pipe: Rc<RefCell<Bufs>>,
        #[allow(clippy::type_complexity)]
        hs: Option<
            Pin<Box<dyn Future<Output = Result<h2::server::Connection<Pipe, Bytes>, h2::Error>>>>,
        >,
        server: Option<h2::server::Connection<Pipe, Bytes>>,
        /// Every byte the proxy sent this server.
        pub from_proxy: Vec<u8>,
    }

    impl H2 {
        pub fn new() -> H2 {
            H2::with_h2c(&[])
        }

        /// With the backends at `h2c` spoken to over HTTP/2.
        pub fn with_h2c(h2c: &[&str]) -> H2 {
            let mut h = H::new();
            let mut front = H2Front::new([3]);
            front.add_h2c_backends(h2c.iter().map(|a| a.parse().unwrap()));
            let conn =
                h.tcp.new_conn("198.18.0.101:40000".parse().unwrap(), ConnState::Established);
            let accepted = TcpEvent::Accepted {
                conn,
                listener: 3,
                peer: "198.18.0.101:40000".parse().unwrap(),
                local: "198.18.0.10:80".parse().unwrap(),
            };
            assert!(front.on_event(h.now, accepted, &mut h.tcp).is_none(), "the front sniffs");
            let pipe = Rc::new(RefCell::new(Bufs::default()));
            let mut hs = Box::pin(h2::client::handshake(Pipe(pipe.clone())));
            let mut cx = Context::from_waker(Waker::noop());
            let (client, connection) = match hs.as_mut().poll(&mut cx) {
                Poll::Ready(Ok(x)) => x,
                _ => panic!("client handshake is immediate"),
            };
            let mut s = H2 { h, front, conn, pipe, client, connection, from_front: Vec::new() };
            s.run();
            s
        }

        /// Moves bytes both ways and lets everyone act until nothing moves.
        pub fn run(&mut self) {
            let mut cx = Context::from_waker(Waker::noop());
            for _ in 0..64 {
                let _ = Pin::new(&mut self.connection).poll(&mut cx);
                let out = std::mem::take(&mut self.pipe.borrow_mut().tx);
                let sent = std::mem::take(&mut self.h.tcp.c(self.conn).sent);
                let moved = !out.is_empty() || !sent.is_empty() || self.front.has_events();
                self.pipe.borrow_mut().rx.extend_from_slice(&sent);
                self.from_front.extend_from_slice(&sent);
                if !out.is_empty() {
                    self.h.tcp.c(self.conn).to_l7.extend(out.iter().copied());
                    self.event(TcpEvent::Readable { conn: self.conn });
                }
                self.relay();
                // (What the front framed at the end of the relay moves next.)
                if !moved && self.h.tcp.c(self.conn).sent.is_empty() {
                    return;
                }
            }
            panic!("no quiescence");
        }

        /// An event of the fake TCP, through the front to the proxy.
        pub fn event(&mut self, ev: TcpEvent) {
            let now = self.h.now;
            if let Some(ev) = self.front.on_event(now, ev, &mut self.h.tcp) {
                self.h.l7.on_event(now, ev, &mut self.front.wrap(&mut self.h.tcp));
            }
            self.relay();
        }

        fn relay(&mut self) {
            let mut evs = Vec::new();
            while self.front.has_events() {
                self.front.take_events(&mut evs);
                for ev in evs.drain(..) {
                    self.h.l7.on_event(self.h.now, ev, &mut self.front.wrap(&mut self.h.tcp));
                }
            }
            // As the worker does at the end of its turn.
            self.front.flush(&mut self.h.tcp);
        }

        /// An HTTP/2 server (the h2 crate) on upstream connection `u`: its
        /// connection is completed, and its bytes move with [`H2::serve`].
        pub fn h2_server(&mut self, u: ConnId) -> Server {
            self.h.tcp.c(u).state = Some(ConnState::Established);
            self.event(TcpEvent::Connected { conn: u });
            let pipe = Rc::new(RefCell::new(Bufs::default()));
            let hs = Box::pin(h2::server::handshake(Pipe(pipe.clone())));
            Server { conn: u, pipe, hs: Some(hs), server: None, from_proxy: Vec::new() }
        }

        /// Moves bytes between the proxy and `srv` until nothing moves;
        /// returns the requests the server accepted meanwhile.
        pub fn serve(
            &mut self,
            srv: &mut Server,
        ) -> Vec<(http::Request<h2::RecvStream>, h2::server::SendResponse<Bytes>)> {
            let mut cx = Context::from_waker(Waker::noop());
            let mut got = Vec::new();
            for _ in 0..64 {
                self.run();
                let from_proxy = std::mem::take(&mut self.h.tcp.c(srv.conn).sent);
                srv.pipe.borrow_mut().rx.extend_from_slice(&from_proxy);
                srv.from_proxy.extend_from_slice(&from_proxy);
                if let Some(hs) = srv.hs.as_mut()
                    && let Poll::Ready(r) = hs.as_mut().poll(&mut cx)
                {
                    srv.server = Some(r.expect("server handshake"));
                    srv.hs = None;
                }
                if let Some(s) = srv.server.as_mut() {
                    while let Poll::Ready(Some(Ok(req))) = s.poll_accept(&mut cx) {
                        got.push(req);
                    }
                }
                let out = std::mem::take(&mut srv.pipe.borrow_mut().tx);
                if !out.is_empty() {
                    self.h.tcp.c(srv.conn).to_l7.extend(out.iter().copied());
                    self.event(TcpEvent::Readable { conn: srv.conn });
                }
                if from_proxy.is_empty() && out.is_empty() {
                    self.run();
                    return got;
                }
            }
            panic!("no quiescence");
        }

        /// Backend bytes arriving on upstream connection `u`.
        pub fn upstream_writes(&mut self, u: ConnId, bytes: &[u8]) {
            self.h.tcp.c(u).to_l7.extend(bytes.iter().copied());
            self.event(TcpEvent::Readable { conn: u });
            self.run();
        }

        /// Reads a response body to its end, and its trailers.
        pub fn read_body(&mut self, rb: &mut h2::RecvStream) -> (Vec<u8>, Option<http::HeaderMap>) {
            let mut got = Vec::new();
            loop {
                let mut next = Box::pin(std::future::poll_fn(|cx| rb.poll_data(cx)));
                match self.poll(&mut next) {
                    Some(Some(Ok(d))) => got.extend_from_slice(&d),
                    Some(None) => break,
                    other => panic!("body: {other:?}"),
                }
            }
            let mut tr = Box::pin(std::future::poll_fn(|cx| rb.poll_trailers(cx)));
            let tr = self.poll(&mut tr).expect("trailers").expect("ok");
            (got, tr)
        }

        pub fn poll<T>(&mut self, f: &mut Pin<Box<impl Future<Output = T>>>) -> Option<T> {
            self.run();
            match f.as_mut().poll(&mut Context::from_waker(Waker::noop())) {
                Poll::Ready(x) => Some(x),
                Poll::Pending => None,
            }
        }
    }
}

/// An HTTP/1.1 message with a length ends its HTTP/2 stream on its last
/// DATA frame, not on an empty one behind it (one frame less per message):
/// a response to an HTTP/2 client, a request to an HTTP/2 backend.
#[test]
fn an_http2_message_with_a_length_ends_on_its_last_data_frame() {
    let mut t = h2_client::H2::new();
    let req = http::Request::builder().uri("http://v/api/x").body(()).unwrap();
    let (resp, _) = t.client.send_request(req, true).unwrap();
    t.run();
    let ups = t.h.accept_upstreams();
    assert_eq!(ups.len(), 1);
    t.run();
    t.upstream_writes(ups[0], b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello");
    let mut resp = Box::pin(resp);
    let resp = t.poll(&mut resp).expect("response").expect("ok");
    let (got, _) = t.read_body(&mut resp.into_body());
    assert_eq!(got, b"hello");
    const DATA: u8 = 0;
    const END_STREAM: u8 = 1;
    let data: Vec<_> =
        h2_client::frames(&t.from_front).into_iter().filter(|f| f.0 == DATA && f.2 == 1).collect();
    assert_eq!(data, [(DATA, END_STREAM, 1, 5)]);

    // The same for a request with a length from an HTTP/1.1 client to an
    // HTTP/2 backend.
    const ONE: &str = "198.18.0.51:8080";
    let mut t = h2_client::H2::with_h2c(&[ONE]);
    let peer = "198.18.0.102:40000".parse().unwrap();
    let c = t.h.tcp.new_conn(peer, ConnState::Established);
    let local = "198.18.0.10:80".parse().unwrap();
    t.event(TcpEvent::Accepted { conn: c, listener: 3, peer, local });
    t.h.tcp.c(c).to_l7.extend(b"POST /one/x HTTP/1.1\r\nHost: v\r\nContent-Length: 5\r\n\r\nhello");
    t.event(TcpEvent::Readable { conn: c });
    t.run();
    let ups = t.h.accept_upstreams();
    assert_eq!(ups.len(), 1);
    let mut srv = t.h2_server(ups[0]);
    let reqs = t.serve(&mut srv);
    assert_eq!(reqs.len(), 1);
    let preface = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".len();
    assert!(srv.from_proxy.len() > preface);
    let data: Vec<_> = h2_client::frames(&srv.from_proxy[preface..])
        .into_iter()
        .filter(|f| f.0 == DATA && f.2 == 1)
        .collect();
    assert_eq!(data, [(DATA, END_STREAM, 1, 5)]);
}

/// HTTP/2 to HTTP/1.1: a request body and trailers become a chunked request;
/// a chunked response with trailers (gRPC's `grpc-status`) becomes HTTP/2
/// data and trailers; a stream the client resets aborts its upstream
/// request, and the connection carries on.
#[test]
fn http2_streams_translate_bodies_and_trailers_both_ways() {
    use bytes::Bytes;
    let mut t = h2_client::H2::new();
    let req = http::Request::builder()
        .method("POST")
        .uri("http://v/api/greeter.Greeter/SayHello")
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .body(())
        .unwrap();
    let (resp, mut body) = t.client.send_request(req, false).unwrap();
    body.send_data(Bytes::from_static(b"hello "), false).unwrap();
    body.send_data(Bytes::from_static(b"world"), false).unwrap();
    let mut trailers = http::HeaderMap::new();
    trailers.insert("x-checksum", "abc".parse().unwrap());
    body.send_trailers(trailers).unwrap();
    t.run();
    let ups = t.h.accept_upstreams();
    assert_eq!(ups.len(), 1);
    t.run();
    let up = String::from_utf8(t.h.take(ups[0])).unwrap();
    assert!(up.starts_with("POST /api/greeter.Greeter/SayHello HTTP/1.1\r\n"), "{up}");
    assert!(
        up.contains("content-type: application/grpc\r\n") && up.contains("Host: v\r\n"),
        "{up}"
    );
    assert!(!up.to_ascii_lowercase().contains("\r\nte:"), "TE is hop-by-hop: {up}");
    assert!(up.contains("Transfer-Encoding: chunked\r\n"), "{up}");
    assert!(
        up.ends_with("\r\n\r\n6\r\nhello \r\n5\r\nworld\r\n0\r\nx-checksum: abc\r\n\r\n"),
        "{up}"
    );
    t.upstream_writes(
        ups[0],
        b"HTTP/1.1 200 OK\r\nContent-Type: application/grpc\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nabcde\r\n0\r\ngrpc-status: 0\r\ngrpc-message: ok\r\n\r\n",
    );
    let mut resp = Box::pin(resp);
    let resp = t.poll(&mut resp).expect("response").expect("ok");
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["content-type"], "application/grpc");
    assert!(resp.headers().get("transfer-encoding").is_none());
    let (got, tr) = t.read_body(&mut resp.into_body());
    assert_eq!(got, b"abcde");
    let tr = tr.expect("some trailers");
    assert_eq!(tr["grpc-status"], "0");
    assert_eq!(tr["grpc-message"], "ok");

    // A second stream, reset by the client while its request is upstream.
    let req = http::Request::builder().uri("http://v/api/slow").body(()).unwrap();
    let (_resp, mut s) = t.client.send_request(req, true).unwrap();
    t.run();
    let ups = t.h.accept_upstreams();
    t.run();
    assert!(header_block(&t.h.take(ups[0])).starts_with("GET /api/slow HTTP/1.1\r\n"));
    s.send_reset(h2::Reason::CANCEL);
    t.run();
    assert!(t.h.tcp.c(ups[0]).aborted, "the reset stream's upstream request is aborted");
    assert_eq!(t.front.stats().client_resets, 1);
    // The connection still serves.
    let req = http::Request::builder().uri("http://v/static/x").body(()).unwrap();
    let (resp, _) = t.client.send_request(req, true).unwrap();
    t.run();
    let ups = t.h.accept_upstreams();
    t.run();
    t.h.take(ups[0]);
    t.upstream_writes(ups[0], &response(b"fine", ""));
    let mut resp = Box::pin(resp);
    assert_eq!(t.poll(&mut resp).expect("response").expect("ok").status(), 200);
    assert_eq!(t.front.stats().streams, 3);
    assert_eq!(t.h.l7.listener_stats(3).unwrap().requests, 3);
}

/// Mutual TLS: the verified subject goes upstream in the configured header
/// (a client's own header of that name never does), and routes match on it.
#[test]
fn client_certificate_subject_is_passed_on_and_routed_on() {
    let mut h = H::with(|c| {
        c.listeners[0].tls = true;
        c.listeners[0].client_cert_header = Some("X-Client-Subject".into());
        c.listeners[0].routes.insert(
            0,
            Route {
                path_prefix: "/api/".into(),
                client_subject: Some(regex::Regex::new("CN=admin-").unwrap()),
                pool: 2,
                ..Route::default()
            },
        );
    });
    let ask = |h: &mut H, subject: Option<&str>| -> (String, String) {
        let c = h.client();
        if let Some(s) = subject {
            h.tcp.identities.insert(c, s.into());
        }
        h.write(c, b"GET /api/x HTTP/1.1\r\nHost: v\r\nX-Client-Subject: CN=forged\r\n\r\n");
        let u = h.accept_upstreams().pop().expect("an upstream");
        (h.tcp.c(u).remote.to_string(), header_block(&h.take(u)))
    };
    let (to, up) = ask(&mut h, Some("O=Example, CN=admin-ann"));
    assert_eq!(to, "198.18.0.51:8080", "admin route by subject");
    assert!(up.contains("X-Client-Subject: O=Example, CN=admin-ann\r\n"), "{up}");
    assert!(!up.contains("forged") && up.contains("X-Forwarded-Proto: https\r\n"), "{up}");
    let (to, up) = ask(&mut h, Some("CN=bob"));
    assert_eq!(to, API_1);
    assert!(up.contains("X-Client-Subject: CN=bob\r\n") && !up.contains("forged"), "{up}");
    let (to, up) = ask(&mut h, None);
    assert_eq!(to, API_2, "no certificate: not the admin route");
    assert!(!up.contains("X-Client-Subject"), "{up}");
}

/// A real ClientHello (rustls, post-quantum key share and all) for `name`.
fn client_hello(name: &str) -> Vec<u8> {
    let cfg = rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(
        rustls::crypto::aws_lc_rs::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(rustls::RootCertStore::empty())
    .with_no_client_auth();
    let server = rustls::pki_types::ServerName::try_from(name.to_string()).unwrap();
    let mut c = rustls::ClientConnection::new(std::sync::Arc::new(cfg), server).unwrap();
    let mut out = Vec::new();
    c.write_tls(&mut out).unwrap();
    out
}

/// TLS passthrough: the ClientHello's server name picks the pool (exact,
/// wildcard, default), the hello goes to the backend byte for byte however
/// it was segmented, then bytes flow both ways untouched.
#[test]
fn tls_passthrough_routes_by_sni_and_never_touches_the_bytes() {
    let mut h = H::with(|c| {
        c.listeners[0].passthrough = true;
        c.listeners[0].routes = vec![
            Route { sni: Some("db.example.com".into()), pool: 2, ..Route::default() },
            Route { sni: Some("*.example.com".into()), pool: 0, ..Route::default() },
            Route { pool: 1, ..Route::default() },
        ];
    });
    for (name, backend) in [
        ("db.example.com", "198.18.0.51:8080"),
        ("api.example.com", "198.18.0.31:8080"),
        ("other.test", "198.18.0.41:8080"),
        ("198.18.0.10", "198.18.0.41:8080"), // an IP: no SNI sent
    ] {
        let hello = client_hello(name);
        assert!(hello.len() > 1000, "a post-quantum hello is big: {}", hello.len());
        let c = h.client();
        // In three segments: nothing goes upstream before the hello is whole.
        let (a, b) = (hello.len() / 3, 2 * hello.len() / 3);
        h.write(c, &hello[..a]);
        h.write(c, &hello[a..b]);
        assert!(h.tcp.connects.is_empty(), "{name}: connected before the hello was complete");
        h.write(c, &hello[b..]);
        let u = h.accept_upstreams().pop().expect("an upstream connection");
        assert_eq!(h.tcp.c(u).remote.to_string(), backend, "{name}");
        assert_eq!(h.take(u), hello, "{name}: the hello reaches the backend untouched");
        // Server flight and application records: relayed as they are.
        let server_bytes: Vec<u8> = (0..5000u32).map(|i| (i * 7) as u8).collect();
        h.write(u, &server_bytes);
        assert_eq!(h.take(c), server_bytes);
        h.write(c, b"\x17\x03\x03\x00\x05abcde");
        assert_eq!(h.take(u), b"\x17\x03\x03\x00\x05abcde");
        h.ev(TcpEvent::PeerClosed { conn: c });
        assert!(h.tcp.c(u).closed, "{name}: FIN passed on");
        h.ev(TcpEvent::PeerClosed { conn: u });
        assert!(h.tcp.c(c).closed);
    }
    // Not TLS: reset, counted, no backend, and not a byte of HTTP written.
    let c = h.client();
    h.write(c, b"GET / HTTP/1.1\r\nHost: x\r\n\r\n");
    assert!(h.tcp.connects.is_empty());
    assert!(h.tcp.c(c).aborted && h.take(c).is_empty());
    let st = h.l7.listener_stats(3).unwrap();
    assert_eq!((st.requests, st.rejected(Reject::Malformed)), (4, 1));
    // Half a hello, then nothing: reset at the head timeout, no HTTP 408
    // written into what the client takes for TLS.
    let c = h.client();
    let hello = client_hello("db.example.com");
    h.write(c, &hello[..100]);
    h.now += Duration::from_secs(11);
    h.l7.poll(h.now, &mut h.tcp);
    assert!(h.tcp.c(c).aborted && h.take(c).is_empty());
    assert!(h.tcp.connects.is_empty());
}

/// gRPC through the proxy: an HTTP/2 client, HTTP/2 to an `h2c` backend
/// (one connection carries every call), unary and streaming calls (several
/// messages each way, frame by frame) with `grpc-status` trailers, all
/// unchanged.
#[test]
fn grpc_over_http2_on_both_sides_keeps_trailers() {
    use bytes::Bytes;
    use std::task::{Context, Poll, Waker};
    const ONE: &str = "198.18.0.51:8080";
    let mut t = h2_client::H2::with_h2c(&[ONE]);
    let mut server: Option<h2_client::Server> = None;
    for call in 0..4 {
        let req = http::Request::builder()
            .method("POST")
            .uri("http://v/one/helloworld.Greeter/SayHello")
            .header("content-type", "application/grpc")
            .header("te", "trailers")
            .body(())
            .unwrap();
        let (resp, mut body) = t.client.send_request(req, false).unwrap();
        // A gRPC message: compression flag, length, payload.
        // Calls 0-1 are unary; calls 2-3 stream: several messages, each in
        // its own DATA frame, both ways.
        let streams = if call < 2 { 1 } else { 3 };
        let one = [&[0u8, 0, 0, 0, 5][..], b"hello"].concat();
        let msg = one.repeat(streams);
        for i in 0..streams {
            body.send_data(Bytes::from(one.clone()), i + 1 == streams).unwrap();
            t.run();
        }
        let new = t.h.accept_upstreams();
        if call == 0 {
            assert_eq!(new.len(), 1, "one HTTP/2 connection to the backend");
            assert_eq!(t.h.tcp.c(new[0]).remote.to_string(), ONE);
            server = Some(t.h2_server(new[0]));
        } else {
            assert!(new.is_empty(), "call {call}: the HTTP/2 connection is shared");
        }
        let srv = server.as_mut().unwrap();
        let mut reqs = t.serve(srv);
        assert_eq!(reqs.len(), 1, "call {call}");
        let (req, mut respond) = reqs.pop().unwrap();
        assert_eq!(req.method(), "POST");
        assert_eq!(req.uri().path(), "/one/helloworld.Greeter/SayHello");
        assert_eq!(req.headers()["content-type"], "application/grpc");
        assert_eq!(req.headers()["te"], "trailers", "gRPC servers need it");
        let mut rb = req.into_body();
        let mut got = Vec::new();
        let mut cx = Context::from_waker(Waker::noop());
        loop {
            match rb.poll_data(&mut cx) {
                Poll::Ready(Some(Ok(d))) => got.extend_from_slice(&d),
                Poll::Ready(None) => break,
                other => panic!("call {call}: request body {other:?}"),
            }
        }
        assert_eq!(got, msg, "call {call}: the message arrives unchanged");
        let head = http::Response::builder()
            .status(200)
            .header("content-type", "application/grpc")
            .body(())
            .unwrap();
        let mut out = respond.send_response(head, false).unwrap();
        for _ in 0..streams {
            out.send_data(Bytes::from_static(b"\0\0\0\0\x03hey"), false).unwrap();
            t.serve(srv);
        }
        let mut tr = http::HeaderMap::new();
        tr.insert("grpc-status", "0".parse().unwrap());
        tr.insert("grpc-message", format!("call-{call}").parse().unwrap());
        out.send_trailers(tr).unwrap();
        t.serve(srv);
        let mut resp = Box::pin(resp);
        let resp = t.poll(&mut resp).expect("response").expect("ok");
        assert_eq!(resp.status(), 200);
        assert_eq!(resp.headers()["content-type"], "application/grpc");
        let (got, tr) = t.read_body(&mut resp.into_body());
        assert_eq!(got, b"\0\0\0\0\x03hey".repeat(streams), "call {call}");
        let tr = tr.expect("some trailers");
        assert_eq!(tr["grpc-status"], "0");
        assert_eq!(tr["grpc-message"], format!("call-{call}").as_str());
    }
    assert_eq!(t.front.stats().upstream_connections, 1);
    assert_eq!(t.front.stats().upstream_streams, 4);
    assert_eq!(t.front.stats().grpc_status.get("0"), Some(&4), "grpc-status counted");
}

/// A large upload through a narrow upstream window: every byte reaches the
/// backend, whose answer reaches the client.
#[test]
fn a_large_upload_streams_through_a_narrow_upstream_window() {
    let mut h = H::new();
    let c = h.client();
    let total = 2_000_000usize;
    h.write(
        c,
        format!("PUT /one/up HTTP/1.1\r\nHost: v\r\nContent-Length: {total}\r\n\r\n").as_bytes(),
    );
    let u = h.accept_upstreams()[0];
    h.tcp.c(u).window = 16 * 1024;
    let body: Vec<u8> = (0..total).map(|i| (i % 251) as u8).collect();
    let mut fed = 0;
    let mut got: Vec<u8> = Vec::new();
    for _ in 0..100_000 {
        // The client sends in bursts larger than the proxy's buffer.
        if fed < total && h.tcp.c(c).to_l7.is_empty() {
            let n = (total - fed).min(200_000);
            h.tcp.peer_sends(c, &body[fed..fed + n]);
            fed += n;
        }
        // The stack's turn: unread client bytes are announced again, the
        // backend reads what it was sent and the window reopens.
        if !h.tcp.c(c).to_l7.is_empty() {
            h.ev(TcpEvent::Readable { conn: c });
        }
        // The backend reads everything it was sent; the window reopens and,
        // as the stack does after a send that did not fit, Writable.
        let was_full = h.tcp.c(u).sent.len() >= 16 * 1024;
        let sent = h.take(u);
        got.extend_from_slice(&sent);
        if was_full {
            h.ev(TcpEvent::Writable { conn: u });
        }
        if got.len() >= total + 20 && fed == total {
            break;
        }
    }
    let head_end = got.windows(4).position(|w| w == b"\r\n\r\n").unwrap() + 4;
    assert_eq!(got.len() - head_end, total, "body bytes upstream");
    assert!(got[head_end..] == body[..]);
    h.write(u, &response(b"stored", ""));
    assert!(header_block(&h.take(c)).starts_with("HTTP/1.1 200 "));
}

/// Decodes a chunked body (the whole of it) in a test.
fn dechunk(mut b: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    loop {
        let line_end = b.windows(2).position(|w| w == b"\r\n").expect("chunk size line");
        let size = usize::from_str_radix(std::str::from_utf8(&b[..line_end]).unwrap(), 16).unwrap();
        b = &b[line_end + 2..];
        if size == 0 {
            return out;
        }
        out.extend_from_slice(&b[..size]);
        b = &b[size + 2..];
    }
}

/// gzip and brotli per route: text-like responses to clients that accept it are
/// compressed (from a fixed-length or a chunked upstream body), streamed in
/// chunks; everything else passes untouched.
#[test]
fn compression_by_accept_encoding_and_content_type() {
    use std::io::Read;
    let mut h = H::with(|c| c.listeners[0].routes[0].compress = true);
    let text: Vec<u8> = (0..20_000).map(|i| b"switchyard gzip test "[i % 21]).collect();
    let ask = |h: &mut H, req: &str, resp: Vec<Vec<u8>>| -> Vec<u8> {
        let c = h.client();
        h.write(c, req.as_bytes());
        // A new upstream connection, or a kept-alive one that got the request.
        let u = h.accept_upstreams().pop().unwrap_or_else(|| {
            let busy = h.tcp.conns.iter().find(|(id, cn)| **id != c && !cn.sent.is_empty());
            *busy.expect("the request went upstream").0
        });
        h.take(u);
        for part in resp {
            h.write(u, &part);
        }
        h.take(c)
    };
    let gunzip = |body: &[u8]| {
        let mut out = Vec::new();
        flate2::read::GzDecoder::new(body).read_to_end(&mut out).expect("valid gzip");
        out
    };
    let split = |raw: &[u8]| {
        let i = raw.windows(4).position(|w| w == b"\r\n\r\n").unwrap() + 4;
        (String::from_utf8_lossy(&raw[..i]).into_owned(), raw[i..].to_vec())
    };
    // Fixed length upstream, arriving in two pieces.
    let mut resp = format!("HTTP/1.1 200 OK\r\nContent-Type: text/html; charset=utf-8\r\nContent-Length: {}\r\nETag: \"abc\"\r\nVary: Origin\r\n\r\n", text.len()).into_bytes();
    resp.extend_from_slice(&text[..7000]);
    let got = ask(
        &mut h,
        "GET /api/page HTTP/1.1\r\nHost: v\r\nAccept-Encoding: br;q=0.9, gzip, deflate\r\n\r\n",
        vec![resp, text[7000..].to_vec()],
    );
    let (head, body) = split(&got);
    assert!(
        head.contains("Content-Encoding: gzip\r\n")
            && head.contains("Vary: Origin, Accept-Encoding\r\n"),
        "the backend's Vary keeps its reasons: {head}"
    );
    assert!(
        head.contains("Transfer-Encoding: chunked\r\n") && !head.contains("Content-Length"),
        "{head}"
    );
    assert!(
        head.contains("ETag: W/\"abc\"\r\n") && !head.contains("ETag: \"abc\""),
        "a strong ETag names the uncompressed bytes: weakened, {head}"
    );
    let zipped = dechunk(&body);
    assert!(zipped.len() < text.len() / 10, "compressed to {} bytes", zipped.len());
    assert_eq!(gunzip(&zipped), text);
    // Chunked upstream (JSON).
    let mut resp =
        b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n"
            .to_vec();
    resp.extend_from_slice(format!("{:x}\r\n", 12_000).as_bytes());
    resp.extend_from_slice(&text[..12_000]);
    resp.extend_from_slice(b"\r\n");
    let tail = [
        format!("{:x}\r\n", 8_000).into_bytes(),
        text[12_000..].to_vec(),
        b"\r\n0\r\n\r\n".to_vec(),
    ]
    .concat();
    let got = ask(
        &mut h,
        "GET /api/data HTTP/1.1\r\nHost: v\r\nAccept-Encoding: gzip\r\n\r\n",
        vec![resp, tail],
    );
    let (head, body) = split(&got);
    assert!(head.contains("Content-Encoding: gzip\r\n"), "{head}");
    assert_eq!(gunzip(&dechunk(&body)), text);
    // brotli where the client prefers it, or ranks it equal; a streaming
    // chunked upstream body arriving in pieces decodes byte-exact.
    let unbrotli = |body: &[u8]| {
        let mut out = Vec::new();
        brotli::Decompressor::new(body, 4096).read_to_end(&mut out).expect("valid brotli");
        out
    };
    for accept in ["br, gzip", "gzip;q=0.8, br", "*", "gzip;q=0.5, br;q=0.5"] {
        let mut resp =
            b"HTTP/1.1 200 OK\r\nContent-Type: text/css\r\nTransfer-Encoding: chunked\r\n\r\n"
                .to_vec();
        resp.extend_from_slice(format!("{:x}\r\n", 5_000).as_bytes());
        resp.extend_from_slice(&text[..5_000]);
        let tail = [
            b"\r\n".to_vec(),
            format!("{:x}\r\n", 15_000).into_bytes(),
            text[5_000..].to_vec(),
            b"\r\n0\r\n\r\n".to_vec(),
        ]
        .concat();
        let got = ask(
            &mut h,
            &format!("GET /api/style HTTP/1.1\r\nHost: v\r\nAccept-Encoding: {accept}\r\n\r\n"),
            vec![resp, tail],
        );
        let (head, body) = split(&got);
        assert!(head.contains("Content-Encoding: br\r\n"), "{accept}: {head}");
        let packed = dechunk(&body);
        assert!(packed.len() < text.len() / 10, "{accept}: {} bytes", packed.len());
        assert_eq!(unbrotli(&packed), text, "{accept}");
    }
    // Untouched: no Accept-Encoding, gzip;q=0, an image, already encoded.
    for (req_extra, ctype) in [
        ("", "text/html"),
        ("Accept-Encoding: gzip;q=0, identity\r\n", "text/html"),
        ("Accept-Encoding: br;q=0, gzip;q=0.000, deflate\r\n", "text/html"),
        ("Accept-Encoding: *;q=0\r\n", "text/html"),
        ("Accept-Encoding: gzip\r\n", "image/png"),
    ] {
        let resp = [
            format!(
                "HTTP/1.1 200 OK\r\nContent-Type: {ctype}\r\nContent-Length: {}\r\n\r\n",
                text.len()
            )
            .into_bytes(),
            text.clone(),
        ]
        .concat();
        let got =
            ask(&mut h, &format!("GET /api/x HTTP/1.1\r\nHost: v\r\n{req_extra}\r\n"), vec![resp]);
        let (head, body) = split(&got);
        assert!(
            !head.contains("Content-Encoding") && head.contains("Content-Length"),
            "{req_extra}{ctype}: {head}"
        );
        assert_eq!(body, text);
    }
    // Routes without `compress` never compress.
    let resp = [
        format!(
            "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: {}\r\n\r\n",
            text.len()
        )
        .into_bytes(),
        text.clone(),
    ]
    .concat();
    let got = ask(
        &mut h,
        "GET /static/x HTTP/1.1\r\nHost: v\r\nAccept-Encoding: gzip\r\n\r\n",
        vec![resp],
    );
    assert!(!split(&got).0.contains("Content-Encoding"));
    // A body the backend coded in transit (`gzip, chunked`) is relayed as it
    // is: compressing it again would drop the coding it has.
    let resp = b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nTransfer-Encoding: gzip, chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n".to_vec();
    let got =
        ask(&mut h, "GET /api/x HTTP/1.1\r\nHost: v\r\nAccept-Encoding: gzip\r\n\r\n", vec![resp]);
    let (head, body) = split(&got);
    assert!(
        !head.contains("Content-Encoding") && head.contains("Transfer-Encoding: gzip, chunked"),
        "{head}"
    );
    assert_eq!(body, b"3\r\nabc\r\n0\r\n\r\n");
}

#[test]
fn a_route_can_have_its_own_request_timeout() {
    let mut h =
        H::with(|c| c.listeners[0].routes[0].request_timeout = Some(Duration::from_secs(2)));
    let fast = h.client();
    h.write(fast, b"GET /api/slow HTTP/1.1\r\nHost: v\r\n\r\n");
    let slow = h.client();
    h.write(slow, b"GET /static/slow HTTP/1.1\r\nHost: v\r\n\r\n");
    h.accept_upstreams();
    h.now += Duration::from_millis(2100);
    h.l7.poll(h.now, &mut h.tcp);
    assert!(header_block(&h.take(fast)).starts_with("HTTP/1.1 504 "), "the route's 2 s");
    assert!(h.take(slow).is_empty(), "the default 30 s still runs");
    h.now += Duration::from_secs(28);
    h.l7.poll(h.now, &mut h.tcp);
    assert!(header_block(&h.take(slow)).starts_with("HTTP/1.1 504 "));
}

/// A protocol agreed by ALPN is the one spoken, whatever the first bytes
/// look like (RFC 7301 3.2): after `http/1.1` the HTTP/2 preface is an
/// HTTP/1.1 request L7 refuses, and after `h2` an HTTP/1.1 request is an
/// HTTP/2 connection error (RFC 9113 3.4). Neither reaches a backend.
#[test]
fn alpn_decides_the_protocol_not_the_first_bytes() {
    use switchyard_l7::h2front::H2Front;
    let mut h = H::new();
    let mut front = H2Front::new([3]);
    let peer: SocketAddr = "198.18.0.101:40000".parse().unwrap();
    let local: SocketAddr = "198.18.0.10:443".parse().unwrap();
    let through = |h: &mut H, front: &mut H2Front, ev: TcpEvent| {
        if let Some(ev) = front.on_event(h.now, ev, &mut h.tcp) {
            h.l7.on_event(h.now, ev, &mut front.wrap(&mut h.tcp));
        }
        let mut evs = Vec::new();
        while front.has_events() {
            front.take_events(&mut evs);
            for ev in evs.drain(..) {
                h.l7.on_event(h.now, ev, &mut front.wrap(&mut h.tcp));
            }
        }
        front.flush(&mut h.tcp);
    };
    let preface = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x00\x04\x00\x00\x00\x00\x00";
    let request = b"GET /api/x HTTP/1.1\r\nHost: v\r\n\r\n";
    for (alpn, bytes) in [(&b"http/1.1"[..], &preface[..]), (&b"h2"[..], &request[..])] {
        let c = h.tcp.new_conn(peer, ConnState::Established);
        h.tcp.alpns.insert(c, alpn.to_vec());
        through(&mut h, &mut front, TcpEvent::Accepted { conn: c, listener: 3, peer, local });
        h.tcp.c(c).to_l7.extend(bytes.iter().copied());
        through(&mut h, &mut front, TcpEvent::Readable { conn: c });
        let sent = String::from_utf8_lossy(&h.tcp.c(c).sent).into_owned();
        let what = String::from_utf8_lossy(alpn);
        if alpn == b"h2" {
            assert_eq!(front.stats().protocol_errors, 1, "{what}");
            assert!(!sent.contains("HTTP/1.1"), "{what}: {sent:?}");
        } else {
            assert!(sent.starts_with("HTTP/1.1 4") || sent.starts_with("HTTP/1.1 5"), "{sent:?}");
            assert_eq!(front.stats().connections, 0, "{what}: not served as HTTP/2");
        }
        assert!(h.tcp.c(c).closed || h.tcp.c(c).aborted, "{what}: connection left open");
        assert!(h.tcp.connects.is_empty(), "{what}: a backend was asked");
    }
    // Without ALPN the first bytes still decide: the preface is HTTP/2.
    let c = h.tcp.new_conn(peer, ConnState::Established);
    through(&mut h, &mut front, TcpEvent::Accepted { conn: c, listener: 3, peer, local });
    h.tcp.c(c).to_l7.extend(preface.iter().copied());
    through(&mut h, &mut front, TcpEvent::Readable { conn: c });
    assert_eq!(front.stats().connections, 2, "the h2 connection above and this one");
    assert!(!h.tcp.c(c).closed && !h.tcp.c(c).aborted);
}

/// An HTTP/2 connection with no stream open that sends nothing for the idle
/// timeout gets a GOAWAY and closes when the client has seen it; one with a
/// request under way is left alone; one that never finishes its preface is
/// reset. Each is counted.
#[test]
fn idle_http2_connections_are_closed() {
    use switchyard_l7::h2front::H2Front;
    const GOAWAY: u8 = 7;
    // A request under way at the deadline: nothing happens.
    let mut t = h2_client::H2::new();
    let req = http::Request::builder().uri("http://v/api/x").body(()).unwrap();
    let (_resp, _) = t.client.send_request(req, true).unwrap();
    t.run();
    assert_eq!(t.h.accept_upstreams().len(), 1);
    t.h.now += Duration::from_secs(61);
    t.front.poll(t.h.now, &mut t.h.tcp);
    t.run();
    assert_eq!(t.front.stats().idle_closed, 0);
    assert!(!h2_client::frames(&t.from_front).iter().any(|f| f.0 == GOAWAY));

    // No stream: GOAWAY at the deadline, then the connection closes once
    // the client has answered (the h2 crate's graceful shutdown).
    let mut t = h2_client::H2::new();
    let at = t.front.poll_at().expect("an idle deadline");
    assert!(at > t.h.now && at <= t.h.now + Duration::from_secs(60), "{at}");
    t.h.now += Duration::from_secs(59);
    t.front.poll(t.h.now, &mut t.h.tcp);
    t.run();
    assert_eq!(t.front.stats().idle_closed, 0, "not before the timeout");
    t.h.now += Duration::from_secs(2);
    t.front.poll(t.h.now, &mut t.h.tcp);
    t.run();
    assert_eq!(t.front.stats().idle_closed, 1);
    assert!(h2_client::frames(&t.from_front).iter().any(|f| f.0 == GOAWAY), "a GOAWAY");
    assert!(t.h.tcp.c(t.conn).closed, "closed after the GOAWAY");

    // ALPN `h2`, then part of the preface and nothing more: reset at the
    // deadline. Closing before any byte is no protocol error.
    let mut h = H::new();
    let mut front = H2Front::new([3]);
    let peer: SocketAddr = "198.18.0.101:40000".parse().unwrap();
    let local: SocketAddr = "198.18.0.10:443".parse().unwrap();
    let mut conns = Vec::new();
    for bytes in [&b"PRI * HT"[..], b""] {
        let c = h.tcp.new_conn(peer, ConnState::Established);
        h.tcp.alpns.insert(c, b"h2".to_vec());
        assert!(
            front
                .on_event(
                    h.now,
                    TcpEvent::Accepted { conn: c, listener: 3, peer, local },
                    &mut h.tcp
                )
                .is_none()
        );
        h.tcp.c(c).to_l7.extend(bytes.iter().copied());
        conns.push(c);
    }
    assert!(front.on_event(h.now, TcpEvent::Readable { conn: conns[0] }, &mut h.tcp).is_none());
    assert!(front.on_event(h.now, TcpEvent::PeerClosed { conn: conns[1] }, &mut h.tcp).is_none());
    let mut evs = Vec::new();
    front.take_events(&mut evs);
    let to_l7 =
        |c: ConnId| evs.iter().any(|e| matches!(e, TcpEvent::Accepted { conn, .. } if *conn == c));
    assert!(
        to_l7(conns[1]) && !to_l7(conns[0]),
        "the empty one goes to L7, which closes it: {evs:?}"
    );
    assert_eq!(front.stats().protocol_errors, 0);
    h.now += Duration::from_secs(61);
    front.poll(h.now, &mut h.tcp);
    assert!(h.tcp.c(conns[0]).aborted, "a preface never finished");
    assert_eq!(front.stats().idle_closed, 1);
}

/// The idle close never cuts work short: a request that crossed the GOAWAY
/// is answered and a response a slow client is still reading is delivered
/// whole; a client that answers nothing after its GOAWAY is reset.
#[test]
fn idle_http2_close_waits_for_streams_and_slow_readers() {
    let later = |t: &mut h2_client::H2, s: u64| {
        t.h.now += Duration::from_secs(s);
        t.front.poll(t.h.now, &mut t.h.tcp);
    };
    // A request that crosses the GOAWAY, its backend slow to answer.
    let mut t = h2_client::H2::new();
    later(&mut t, 61);
    assert_eq!(t.front.stats().idle_closed, 1, "GOAWAY sent");
    let req = http::Request::builder().uri("http://v/api/x").body(()).unwrap();
    let (resp, _) = t.client.send_request(req, true).unwrap();
    t.run();
    let ups = t.h.accept_upstreams();
    assert_eq!(ups.len(), 1, "the request that crossed it is served");
    t.run();
    for _ in 0..3 {
        later(&mut t, 61);
    }
    assert!(!t.h.tcp.c(t.conn).aborted, "reset with a stream open");
    t.upstream_writes(ups[0], b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello");
    let mut resp = Box::pin(resp);
    let resp = t.poll(&mut resp).expect("response").expect("ok");
    let (got, _) = t.read_body(&mut resp.into_body());
    assert_eq!(got, b"hello");
    t.run();
    assert!(t.h.tcp.c(t.conn).closed && !t.h.tcp.c(t.conn).aborted, "closed after the stream");

    // A 60 KB response to a client that is not reading yet (no window).
    let mut t = h2_client::H2::new();
    let req = http::Request::builder().uri("http://v/api/x").body(()).unwrap();
    let (resp, _) = t.client.send_request(req, true).unwrap();
    t.run();
    let ups = t.h.accept_upstreams();
    t.run();
    let body = vec![b'x'; 60_000];
    let mut answer = b"HTTP/1.1 200 OK\r\nContent-Length: 60000\r\n\r\n".to_vec();
    answer.extend_from_slice(&body);
    t.h.tcp.c(t.conn).window = 0;
    t.upstream_writes(ups[0], &answer);
    for _ in 0..3 {
        later(&mut t, 61);
    }
    assert!(!t.h.tcp.c(t.conn).aborted, "reset while the response waited for the client");
    assert_eq!(t.front.stats().idle_closed, 0);
    t.h.tcp.c(t.conn).window = usize::MAX;
    t.event(TcpEvent::Writable { conn: t.conn });
    let mut resp = Box::pin(resp);
    let resp = t.poll(&mut resp).expect("response").expect("ok");
    let (got, _) = t.read_body(&mut resp.into_body());
    assert_eq!(got, body, "delivered whole");

    // A client that answers nothing once it has its GOAWAY: reset a timeout
    // later (the front's bytes are not taken to it).
    let mut t = h2_client::H2::new();
    later(&mut t, 61);
    assert_eq!(t.front.stats().idle_closed, 1);
    assert!(!t.h.tcp.c(t.conn).aborted);
    later(&mut t, 61);
    assert!(t.h.tcp.c(t.conn).aborted, "reset after the GOAWAY went unanswered");
    assert_eq!(t.front.stats().idle_closed, 1, "counted once");
}
