//! A TLS load client on rustls: each request on a new TLS 1.3 connection, so
//! a load balancer's cost per connection can be measured with a key exchange
//! group chosen here (the system's OpenSSL 3.0, and so wrk and curl, offers
//! no post-quantum group).
//!
//! `--connections C` threads each open connections one after another: TCP
//! connect, handshake offering only `--group`, `GET PATH` with
//! `Connection: close`, the whole response read to EOF and its status
//! checked. It stops after `--seconds S` or `--requests N` in all, whichever
//! comes first, and prints the rate and the errors. `--rate R` paces the
//! connections at R a second in all (connection i starts no sooner than i/R
//! seconds in; after a stall they catch up), so that two runs can offer a
//! server the same load:
//! a server that idles between connections spends more per connection on
//! going to sleep and waking up, so per-CPU-second figures compare fairly
//! only at one offered rate.
//!
//!   tls-load --addr 198.18.0.10:443 --ca cert.pem [--name switchyard.test]
//!            [--group x25519|x25519mlkem768] [--connections 16] [--seconds 5]
//!            [--requests 1000000] [--rate R] [--path /1k]

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use rustls::crypto::aws_lc_rs::kx_group::{X25519, X25519MLKEM768};
use rustls::pki_types::pem::PemObject;

struct Args {
    addr: SocketAddr,
    ca: String,
    name: String,
    /// `name`, checked once.
    server_name: rustls::pki_types::ServerName<'static>,
    group: &'static dyn rustls::crypto::SupportedKxGroup,
    connections: usize,
    seconds: u64,
    requests: u64,
    /// Connections a second in all; 0 for as fast as they go.
    rate: f64,
    path: String,
}

fn usage(why: &str) -> ! {
    eprintln!("tls-load: {why}");
    eprintln!(
        "usage: tls-load --addr IP:PORT --ca PEM [--name SNI] [--group x25519|x25519mlkem768] \
         [--connections C] [--seconds S] [--requests N] [--rate R] [--path /1k]"
    );
    std::process::exit(2);
}

fn value<T: std::str::FromStr>(k: &str, v: &str) -> T {
    v.parse().unwrap_or_else(|_| usage(&format!("{k}: bad value `{v}`")))
}

fn args() -> Args {
    let mut a = Args {
        addr: SocketAddr::from(([198, 18, 0, 10], 443)),
        ca: String::new(),
        name: "switchyard.test".into(),
        server_name: rustls::pki_types::ServerName::try_from("switchyard.test")
            .unwrap_or_else(|_| usage("bad default name")),
        group: X25519MLKEM768,
        connections: 16,
        seconds: 5,
        requests: 1_000_000,
        rate: 0.0,
        path: "/1k".into(),
    };
    let mut it = std::env::args().skip(1);
    while let Some(k) = it.next() {
        let Some(v) = it.next() else { usage(&format!("{k} needs a value")) };
        match k.as_str() {
            "--addr" => a.addr = value(&k, &v),
            "--ca" => a.ca = v,
            "--name" => a.name = v,
            "--group" => {
                a.group = match v.as_str() {
                    "x25519" => X25519,
                    "x25519mlkem768" => X25519MLKEM768,
                    _ => usage(&format!("--group: `{v}` is not x25519 or x25519mlkem768")),
                }
            }
            "--connections" => a.connections = value(&k, &v),
            "--seconds" => a.seconds = value(&k, &v),
            "--requests" => a.requests = value(&k, &v),
            "--rate" => a.rate = value(&k, &v),
            "--path" => a.path = v,
            _ => usage(&format!("unknown option {k}")),
        }
    }
    if a.ca.is_empty() {
        usage("--ca is required");
    }
    if a.connections == 0 || a.seconds == 0 {
        usage("--connections and --seconds must be at least 1");
    }
    if !(a.rate >= 0.0 && a.rate.is_finite()) {
        usage("--rate must be a number of connections a second (0: unpaced)");
    }
    a.server_name = rustls::pki_types::ServerName::try_from(a.name.clone())
        .unwrap_or_else(|e| usage(&format!("--name {}: {e}", a.name)));
    a
}

/// One request on a new connection; Ok(true) for a 200 with a whole
/// response.
fn one(
    cfg: &Arc<rustls::ClientConfig>,
    a: &Args,
    request: &[u8],
    buf: &mut Vec<u8>,
) -> std::io::Result<bool> {
    let conn = rustls::ClientConnection::new(cfg.clone(), a.server_name.clone())
        .map_err(std::io::Error::other)?;
    let tcp = TcpStream::connect_timeout(&a.addr, Duration::from_secs(2))?;
    tcp.set_read_timeout(Some(Duration::from_secs(5)))?;
    tcp.set_nodelay(true)?;
    let mut tls = rustls::StreamOwned::new(conn, tcp);
    tls.write_all(request)?;
    buf.clear();
    match tls.read_to_end(buf) {
        Ok(_) => {}
        // A peer that closes without close_notify after a complete
        // `Connection: close` response is common; the status decides.
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => {}
        Err(e) => return Err(e),
    }
    Ok(buf.starts_with(b"HTTP/1.1 200"))
}

fn main() {
    let a = Arc::new(args());
    let pem = std::fs::read(&a.ca).unwrap_or_else(|e| usage(&format!("--ca {}: {e}", a.ca)));
    let mut roots = rustls::RootCertStore::empty();
    for c in rustls::pki_types::CertificateDer::pem_slice_iter(&pem) {
        let c = c.unwrap_or_else(|e| usage(&format!("--ca {}: {e}", a.ca)));
        roots.add(c).unwrap_or_else(|e| usage(&format!("--ca {}: {e}", a.ca)));
    }
    let mut provider = rustls::crypto::aws_lc_rs::default_provider();
    provider.kx_groups = vec![a.group];
    let mut cfg = rustls::ClientConfig::builder_with_provider(Arc::new(provider))
        .with_protocol_versions(&[&rustls::version::TLS13])
        .unwrap_or_else(|e| usage(&e.to_string()))
        .with_root_certificates(roots)
        .with_no_client_auth();
    // Every connection a full handshake.
    cfg.resumption = rustls::client::Resumption::disabled();
    let cfg = Arc::new(cfg);
    let request =
        format!("GET {} HTTP/1.1\r\nHost: {}\r\nConnection: close\r\n\r\n", a.path, a.name);
    let ok = Arc::new(AtomicU64::new(0));
    let errors = Arc::new(AtomicU64::new(0));
    let numbers = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let deadline = started + Duration::from_secs(a.seconds);
    let first_error = Arc::new(std::sync::Mutex::new(None::<String>));
    let threads: Vec<_> = (0..a.connections)
        .map(|_| {
            let (a, cfg, ok, errors) = (a.clone(), cfg.clone(), ok.clone(), errors.clone());
            let taken = numbers.clone();
            let (request, first_error) = (request.clone(), first_error.clone());
            std::thread::spawn(move || {
                let mut buf = Vec::with_capacity(4096);
                // Each request takes a number first, so that no more than
                // `--requests` are made in all.
                loop {
                    let i = taken.fetch_add(1, Ordering::Relaxed);
                    if i >= a.requests {
                        break;
                    }
                    if a.rate > 0.0 {
                        let at = started + Duration::from_secs_f64(i as f64 / a.rate);
                        if at >= deadline {
                            break;
                        }
                        if let Some(wait) = at.checked_duration_since(Instant::now()) {
                            std::thread::sleep(wait);
                        }
                    }
                    if Instant::now() >= deadline {
                        break;
                    }
                    match one(&cfg, &a, request.as_bytes(), &mut buf) {
                        Ok(true) => ok.fetch_add(1, Ordering::Relaxed),
                        other => {
                            let why = match other {
                                Ok(_) => format!(
                                    "status line {:?}",
                                    String::from_utf8_lossy(&buf[..buf.len().min(40)])
                                ),
                                Err(e) => e.to_string(),
                            };
                            first_error.lock().unwrap().get_or_insert(format!(
                                "{why} at {:.2} s",
                                started.elapsed().as_secs_f64()
                            ));
                            // Do not spin on a peer that refuses.
                            std::thread::sleep(Duration::from_millis(10));
                            errors.fetch_add(1, Ordering::Relaxed)
                        }
                    };
                }
            })
        })
        .collect();
    for t in threads {
        let _ = t.join();
    }
    let secs = started.elapsed().as_secs_f64();
    let (ok, errors) = (ok.load(Ordering::Relaxed), errors.load(Ordering::Relaxed));
    println!("requests {ok} errors {errors} seconds {secs:.2} rate {:.0}", ok as f64 / secs);
    if let Some(e) = first_error.lock().unwrap().take() {
        println!("first error: {e}");
    }
}
