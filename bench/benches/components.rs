//! Micro-benchmarks of the parts the packet path is built from: Maglev table
//! build and lookup, a connection-table lookup among 1M flows, HTTP/1.1
//! request parsing and checking, and TLS record sealing and opening. Run with
//! `cargo bench -p switchyard-bench --bench components`; compare figures from
//! one run only. (New flows per second at 1M flows: the `l4-replay` binary.)

use std::hint::black_box;
use std::io::{Read, Write};
use std::sync::Arc;

use criterion::{BatchSize, Criterion, Throughput, criterion_group, criterion_main};
use switchyard_bench::tls::{client_config, handshake, tls_configs, tls_pair};
use switchyard_l4::sched::{Maglev, hash_flow};
use switchyard_l4::{L4, L4Config, Scheduler, Timeouts, Verdict};
use switchyard_nic::Pool;
use switchyard_stack::Instant;
use switchyard_stack::wire::*;

fn names(n: usize) -> Vec<Vec<u8>> {
    (0..n).map(|i| format!("198.18.{}.{}:5432", 1 + i / 250, 1 + i % 250).into_bytes()).collect()
}

fn maglev(c: &mut Criterion) {
    let mut g = c.benchmark_group("maglev");
    for n in [8usize, 1000] {
        let v = names(n);
        let refs: Vec<&[u8]> = v.iter().map(|x| x.as_slice()).collect();
        let w = vec![1u32; n];
        g.bench_function(format!("build_{n}_backends"), |b| {
            b.iter(|| Maglev::new(black_box(&refs), black_box(&w)))
        });
    }
    let v = names(8);
    let refs: Vec<&[u8]> = v.iter().map(|x| x.as_slice()).collect();
    let m = Maglev::new(&refs, &[1; 8]);
    let vip = "198.18.0.10:5432".parse().unwrap();
    let mut port = 0u16;
    g.bench_function("hash_and_lookup", |b| {
        b.iter(|| {
            port = port.wrapping_add(1);
            let src = std::net::SocketAddr::from(([198, 18, 3, 7], port));
            m.lookup(hash_flow(black_box(src), vip))
        })
    });
    g.finish();
}

/// A client's TCP segment to the VIP, as a frame.
fn segment(i: u32, flags: u8) -> Vec<u8> {
    let src = [198, 18, 4 + (i >> 16) as u8, (i >> 8) as u8];
    let dst = [198, 18, 0, 10];
    let mut f = vec![0u8; ETH_LEN + 40];
    put_eth(&mut f, [2, 0, 0, 0, 0, 2], [2, 0, 0, 0, 0, 1], ETHERTYPE_IPV4);
    put_ip_header(&mut f[ETH_LEN..], src.into(), dst.into(), IPPROTO_TCP, 20);
    let t = &mut f[ETH_LEN + 20..];
    put16(t, 0, 1024 + (i & 0xff) as u16);
    put16(t, 2, 5432);
    t[12] = 0x50;
    t[13] = flags;
    fix_l4_checksum(t, src.into(), dst.into(), IPPROTO_TCP, 16);
    f
}

fn conntrack(c: &mut Criterion) {
    const FLOWS: u32 = 1_000_000;
    let mut l4 = L4::new(L4Config {
        listeners: vec![switchyard_bench::pg_listener(
            (1..=8).map(|i| std::net::SocketAddr::from(([198, 18, 1, i], 5432))),
            Scheduler::Maglev,
        )],
        snat_addrs: (0..20).map(|k| std::net::IpAddr::from([198, 19, 0, k])).collect(),
        snat_ports: 1024..65535,
        table_capacity: FLOWS as usize,
        timeouts: Timeouts::default(),
        hash_seed: 1,
        worker: Default::default(),
    })
    .unwrap();
    let mut pool = Pool::with_count(4);
    let now = Instant::from_secs(1);
    let mut run = |l4: &mut L4, f: &[u8]| {
        let ip = parse_ip(f, ETHERTYPE_IPV4).unwrap();
        let meta = parse_transport(f, &ip, true).unwrap();
        let mut m = pool.alloc();
        m.fill(f);
        let v = l4.from_client(now, &mut m, &meta, 0);
        pool.free(m);
        v
    };
    for i in 0..FLOWS {
        assert_eq!(run(&mut l4, &segment(i, 0x02)), Verdict::Forward);
    }
    // Established packets of flows drawn at random from the million.
    let mut x = 0x2545_f491_4f6c_dd1du64;
    let frames: Vec<Vec<u8>> = (0..4096)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            segment((x % u64::from(FLOWS)) as u32, 0x10)
        })
        .collect();
    let mut g = c.benchmark_group("conntrack_1M_flows");
    let mut k = 0;
    g.bench_function("lookup_and_rewrite", |b| {
        b.iter(|| {
            k = (k + 1) & 4095;
            run(&mut l4, &frames[k])
        })
    });
    g.finish();
}

fn http_parse(c: &mut Criterion) {
    let req = b"GET /api/v1/users/12345?fields=name,email HTTP/1.1\r\nHost: api.example.com\r\n\
User-Agent: Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko)\r\n\
Accept: application/json, text/plain, */*\r\nAccept-Language: en-US,en;q=0.9\r\n\
Accept-Encoding: gzip, deflate, br\r\nCookie: session=abcdef0123456789; theme=dark\r\n\
Connection: keep-alive\r\n\r\n";
    let mut g = c.benchmark_group("http1");
    g.throughput(Throughput::Bytes(req.len() as u64));
    g.bench_function("parse_and_check_request", |b| {
        b.iter(|| {
            let mut headers = [httparse::EMPTY_HEADER; 64];
            let mut r = httparse::Request::new(&mut headers);
            let n = r.parse(black_box(req)).unwrap();
            (n.is_complete(), switchyard_l7::http1::check_request(&r).is_ok())
        })
    });
    g.finish();
}

/// Server-side cost of TLS 1.3 handshakes (ECDSA P-256 certificate): full
/// with classical X25519 and with the post-quantum hybrid X25519MLKEM768, and
/// resumed. Criterion reports time per handshake; handshakes per CPU-second
/// is its inverse.
fn tls_handshakes(c: &mut Criterion) {
    use rustls::crypto::aws_lc_rs::kx_group::{X25519, X25519MLKEM768};
    let (server_cfg, roots) = tls_configs();
    let mut g = c.benchmark_group("tls13_handshake_server");
    for (name, groups) in
        [("full_x25519", &[X25519][..]), ("full_x25519mlkem768", &[X25519MLKEM768][..])]
    {
        let mut client_cfg = client_config(&roots, groups);
        // No resumption. (A clone of a client configuration shares its
        // session cache: a fresh copy per handshake, as this bench had until
        // December 2026, measured resumed handshakes after the first.)
        Arc::make_mut(&mut client_cfg).resumption = rustls::client::Resumption::disabled();
        g.bench_function(name, |b| {
            b.iter_custom(|iters| {
                let mut total = std::time::Duration::ZERO;
                for _ in 0..iters {
                    let (_, server, t) = handshake(&client_cfg, &server_cfg);
                    assert_eq!(server.handshake_kind(), Some(rustls::HandshakeKind::Full));
                    total += t;
                }
                total
            })
        });
    }
    // Resumed: one client configuration, whose session cache holds a ticket
    // from the previous handshake.
    let client_cfg = client_config(&roots, &[X25519MLKEM768]);
    let (mut c0, _, _) = handshake(&client_cfg, &server_cfg);
    let _ = c0.process_new_packets();
    g.bench_function("resumed_x25519mlkem768", |b| {
        b.iter_custom(|iters| {
            let mut total = std::time::Duration::ZERO;
            for _ in 0..iters {
                let (client, mut server, t) = handshake(&client_cfg, &server_cfg);
                total += t;
                // The tickets the server sends after the handshake feed the
                // client's cache for the next round.
                let mut buf = Vec::new();
                while server.wants_write() {
                    server.write_tls(&mut buf).unwrap();
                }
                let mut client = client;
                let _ = client.read_tls(&mut &buf[..]);
                let _ = client.process_new_packets();
                assert_eq!(
                    server.handshake_kind(),
                    Some(rustls::HandshakeKind::Resumed),
                    "the bench measures resumed handshakes only"
                );
            }
            total
        })
    });
    g.finish();
}

fn tls_records(c: &mut Criterion) {
    let (mut client, mut server) = tls_pair();
    let mut g = c.benchmark_group("tls13_record");
    for size in [1024usize, 16 * 1024] {
        let data = vec![0x5au8; size];
        let mut wire = Vec::with_capacity(size + 64);
        let mut plain = vec![0u8; size];
        g.throughput(Throughput::Bytes(size as u64));
        g.bench_function(format!("seal_open_{size}B"), |b| {
            b.iter_batched_ref(
                || (),
                |_| {
                    wire.clear();
                    server.writer().write_all(&data).unwrap();
                    while server.wants_write() {
                        server.write_tls(&mut wire).unwrap();
                    }
                    let mut rd = &wire[..];
                    while !rd.is_empty() {
                        client.read_tls(&mut rd).unwrap();
                        client.process_new_packets().unwrap();
                    }
                    client.reader().read_exact(&mut plain).unwrap();
                },
                BatchSize::SmallInput,
            )
        });
    }
    g.finish();
}

/// The record path of terminated connections: our record layer sealing and
/// opening from the secrets rustls extracted after a real handshake, next to
/// rustls doing the same in line (`tls13_record` above). Same sizes, same
/// run: compare the two as a ratio.
fn tls_record_layer(c: &mut Criterion) {
    use switchyard_tls::record::{Keys, Version, content};
    let (server_cfg, roots) = tls_configs();
    let mut client_cfg = (*client_config(&roots, &[])).clone();
    client_cfg.enable_secret_extraction = true;
    let (client, server, _) = handshake(&Arc::new(client_cfg), &server_cfg);
    let (s, c_) =
        (server.dangerous_extract_secrets().unwrap(), client.dangerous_extract_secrets().unwrap());
    let mut tx = Keys::new(Version::Tls13, s.tx.0, s.tx.1).unwrap();
    let mut rx = Keys::new(Version::Tls13, c_.rx.0, c_.rx.1).unwrap();
    let mut g = c.benchmark_group("tls13_record_layer");
    for size in [1024usize, 16 * 1024] {
        let data = vec![0x5au8; size];
        let mut wire = Vec::with_capacity(size + 64);
        let mut plain = vec![0u8; size];
        g.throughput(Throughput::Bytes(size as u64));
        g.bench_function(format!("seal_open_{size}B"), |b| {
            b.iter(|| {
                wire.clear();
                tx.seal(content::APPLICATION_DATA, &data, &mut wire).unwrap();
                let o = rx.open(&mut wire).unwrap().unwrap();
                plain.copy_from_slice(&wire[o.start..o.start + o.len]);
                black_box(&plain);
            })
        });
    }
    g.finish();
}

criterion_group!(
    benches,
    maglev,
    conntrack,
    http_parse,
    tls_records,
    tls_record_layer,
    tls_handshakes
);
criterion_main!(benches);
