//! End to end with real programs on real kernel interfaces: Switchyard runs in
//! a network namespace on an AF_PACKET, AF_XDP or TAP port (scripts/netns.sh builds the
//! topology), `curl`, `wrk`, `iperf3`, `psql` and `pgbench` are the clients,
//! `nginx` and PostgreSQL the backends.
//!
//! These need root (namespaces, packet sockets) and the programs that
//! `scripts/setup.sh` installs. Where something is missing a test says so on
//! stderr and returns; with `SWITCHYARD_E2E=require` (as `.ci/run` sets) it
//! fails instead, so CI can never pass them silently.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// One topology at a time: the machine has two cores, and the programs in
/// one test should not compete with another test's.
static SERIAL: Mutex<()> = Mutex::new(());

const NGINX_BIN: &str = "/usr/sbin/nginx";
const PG_BIN: &str = "/usr/lib/postgresql/15/bin";

fn have(cmd: &str) -> bool {
    Command::new("sh")
        .args(["-c", &format!("command -v {cmd}")])
        .stdout(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// Why these tests cannot run here, if they cannot.
fn missing(test: &str, extra: &[&str]) -> Option<String> {
    let uid = Command::new("id").arg("-u").output().ok()?;
    if String::from_utf8_lossy(&uid.stdout).trim() != "0" {
        return Some("not root: network namespaces and packet sockets need root".into());
    }
    for c in ["ip", "ethtool", "curl", "tc"].iter().chain(extra) {
        if !have(c) && !Path::new(c).exists() {
            return Some(format!("`{c}` is not installed (scripts/setup.sh installs it)"));
        }
    }
    // A probe namespace of this test's own (the tests start concurrently).
    let probe = format!("sy-probe-{}-{test}", std::process::id());
    if Command::new("ip").args(["netns", "add", &probe]).status().is_ok_and(|s| s.success()) {
        let _ = Command::new("ip").args(["netns", "del", &probe]).status();
        None
    } else {
        Some("`ip netns add` failed: network namespaces are not permitted here".into())
    }
}

/// Returns false (after saying why) when the test cannot run; panics instead
/// when `SWITCHYARD_E2E=require`.
fn can_run(test: &str, extra: &[&str]) -> bool {
    let Some(why) = missing(test, extra) else { return true };
    if std::env::var("SWITCHYARD_E2E").as_deref() == Ok("require") {
        panic!("{test}: cannot run: {why}");
    }
    eprintln!("SKIPPED {test}: {why}");
    false
}

fn sh(cmd: &str) -> std::process::Output {
    let out = Command::new("sh").args(["-c", cmd]).output().expect("sh");
    assert!(
        out.status.success(),
        "`{cmd}` failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

fn text(o: &std::process::Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// The namespaces of one test, removed (with whatever runs in them) on drop.
struct Topology {
    prefix: String,
    dir: PathBuf,
}

impl Topology {
    fn up(prefix: &str) -> Topology {
        let script = concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/netns.sh");
        sh(&format!("bash {script} up {prefix}"));
        let dir =
            std::env::temp_dir().join(format!("switchyard-e2e-{prefix}{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        Topology { prefix: prefix.to_string(), dir }
    }

    fn ns(&self, which: &str) -> String {
        format!("{}{which}", self.prefix)
    }

    /// A command run in namespace `which` (`cl`, `be`, `lb`).
    fn exec(&self, which: &str, cmd: &str) -> std::process::Output {
        sh(&format!("ip netns exec {} {cmd}", self.ns(which)))
    }

    /// nginx in the backend namespace on 198.18.0.21:8080 (X-Backend: a) and
    /// 198.18.0.22:8080 (X-Backend: b), serving `www/`, with a 4 MiB random
    /// file `big.bin`. Returns its SHA-256.
    fn nginx(&self) -> String {
        let d = &self.dir;
        let www = d.join("www");
        std::fs::create_dir_all(www.join("api")).unwrap();
        std::fs::write(www.join("index.html"), "home\n").unwrap();
        std::fs::write(www.join("api/users"), "users\n").unwrap();
        let mut big = vec![0u8; 4 << 20];
        let mut x = 0x2545_f491_4f6c_dd1du64;
        for b in big.iter_mut() {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            *b = x as u8;
        }
        std::fs::write(www.join("big.bin"), &big).unwrap();
        let conf = format!(
            "daemon on;\nworker_processes 1;\npid {d}/nginx.pid;\nerror_log {d}/nginx.err;\n\
             events {{ worker_connections 4096; }}\nhttp {{\n access_log off;\n\
             client_body_temp_path {d}/b; proxy_temp_path {d}/p; fastcgi_temp_path {d}/f;\n\
             uwsgi_temp_path {d}/u; scgi_temp_path {d}/s;\n keepalive_requests 1000000;\n\
             server {{ listen 198.18.0.21:8080; root {w}; add_header X-Backend a; }}\n\
             server {{ listen 198.18.0.22:8080; root {w}; add_header X-Backend b; }}\n\
             server {{ listen 198.18.0.23:8081 http2; root {w}; add_header X-Backend h2; add_header X-Proto $server_protocol; }}\n}}\n",
            d = d.display(),
            w = www.display()
        );
        let path = d.join("nginx.conf");
        std::fs::write(&path, conf).unwrap();
        self.exec("be", &format!("{NGINX_BIN} -c {}", path.display()));
        let sum = sh(&format!("sha256sum {}", www.join("big.bin").display()));
        text(&sum).split_whitespace().next().unwrap().to_string()
    }

    /// From the client, for `seconds` (at most 500,000 datagrams): UDP
    /// datagrams to 198.18.0.10:9, each from a new socket and so a new
    /// source port, sent to Switchyard's MAC without asking ARP, so frames
    /// of many flows arrive while Switchyard starts. Returns the sender.
    fn spray_udp(&self, seconds: f64) -> Child {
        self.exec("cl", "ip neigh replace 198.18.0.10 lladdr 02:53:59:00:00:02 dev eth0");
        let py = format!(
            "import socket, time\nend = time.time() + {seconds}\nn = 0\n\
             while time.time() < end and n < 500000:\n\
             \x20   s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\n\
             \x20   s.sendto(b'x', ('198.18.0.10', 9))\n\
             \x20   s.close()\n\
             \x20   n += 1\n"
        );
        Command::new("ip")
            .args(["netns", "exec", &self.ns("cl"), "python3", "-c", &py])
            .stdout(Stdio::null())
            .spawn()
            .expect("python3")
    }

    /// Starts Switchyard in the load balancer's namespace with `config`.
    fn switchyard(&self, config: &str) -> Switchyard {
        let path = self.dir.join("switchyard.toml");
        std::fs::write(&path, config).unwrap();
        let child = Command::new("ip")
            .args(["netns", "exec", &self.ns("lb"), env!("CARGO_BIN_EXE_switchyard"), "run"])
            .arg("--config")
            .arg(&path)
            .args(["--seconds", "120"])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("switchyard");
        // Up once the kernel side answers: ARP for the VIP through it.
        std::thread::sleep(Duration::from_millis(300));
        Switchyard { child: Some(child) }
    }
}

impl Drop for Topology {
    fn drop(&mut self) {
        let script = concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/netns.sh");
        let _ = Command::new("bash").args([script, "down", &self.prefix]).status();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// The Switchyard process of a test; `stop` ends it with SIGTERM and returns
/// what it printed (its counters).
struct Switchyard {
    child: Option<Child>,
}

impl Switchyard {
    fn stop(&mut self) -> String {
        let mut child = self.child.take().expect("running");
        let _ = Command::new("kill").args(["-TERM", &child.id().to_string()]).status();
        let start = Instant::now();
        loop {
            if child.try_wait().ok().flatten().is_some() {
                break;
            }
            if start.elapsed() > Duration::from_secs(10) {
                let _ = child.kill();
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let mut out = String::new();
        if let Some(mut s) = child.stdout.take() {
            let _ = s.read_to_string(&mut out);
        }
        if let Some(mut s) = child.stderr.take() {
            let _ = s.read_to_string(&mut out);
        }
        let status = child.wait().expect("wait");
        assert!(status.success(), "switchyard exited with {status}:\n{out}");
        out
    }
}

impl Switchyard {
    /// CPU time (user and system) the process has used so far, in seconds
    /// (`ip netns exec` runs it in its own process: the child's pid).
    fn cpu_seconds(&self) -> f64 {
        let pid = self.child.as_ref().expect("running").id();
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).expect("stat");
        // After the command name in parentheses: fields 3.., utime and
        // stime are the 14th and 15th, in clock ticks.
        let rest = &stat[stat.rfind(')').expect("comm") + 2..];
        let f: Vec<&str> = rest.split(' ').collect();
        let ticks: u64 = f[11].parse::<u64>().unwrap() + f[12].parse::<u64>().unwrap();
        let hz = sh("getconf CLK_TCK");
        ticks as f64 / text(&hz).trim().parse::<f64>().unwrap()
    }

    /// If the process has already ended (it could not start), its exit
    /// status and what it printed.
    fn exited(&mut self) -> Option<(std::process::ExitStatus, String)> {
        let child = self.child.as_mut()?;
        let status = child.try_wait().ok().flatten()?;
        let mut out = String::new();
        if let Some(mut s) = child.stdout.take() {
            let _ = s.read_to_string(&mut out);
        }
        if let Some(mut s) = child.stderr.take() {
            let _ = s.read_to_string(&mut out);
        }
        self.child = None;
        Some((status, out))
    }
}

impl Drop for Switchyard {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// A number after `key` in Switchyard's or a tool's output.
fn number_after(out: &str, key: &str) -> Option<u64> {
    let rest = &out[out.find(key)? + key.len()..];
    rest.trim_start().split(|c: char| !c.is_ascii_digit()).next()?.parse().ok()
}

fn config(nic: &str, l4_scheduler: &str, l4_pool: &str) -> String {
    format!(
        r#"[device]
nic = "{nic}"
mac = "02:53:59:00:00:02"
addresses = ["198.18.0.2/24"]

[[listener]]
name = "web"
mode = "l7"
address = "198.18.0.10:80"
  [[listener.route]]
  path_prefix = "/api/"
  pool = "a"
  [[listener.route]]
  pool = "b"

[[listener]]
name = "tcp"
mode = "l4"
address = "198.18.0.10:8080"
pool = "{l4_pool}"
scheduler = "{l4_scheduler}"

[[pool]]
name = "a"
backends = [{{ name = "a1", address = "198.18.0.21:8080" }}]

[[pool]]
name = "b"
backends = [{{ name = "b1", address = "198.18.0.22:8080" }}]

[[pool]]
name = "ab"
backends = [{{ name = "ab1", address = "198.18.0.21:8080" }}, {{ name = "ab2", address = "198.18.0.22:8080" }}]

[[pool]]
name = "pg"
backends = [{{ name = "pg1", address = "198.18.0.21:5432" }}, {{ name = "pg2", address = "198.18.0.22:5432" }}]

[[pool]]
name = "iperf"
backends = [{{ name = "iperf1", address = "198.18.0.21:5201" }}]
"#
    )
}

/// `cfg` with a first L7 route on `web`: requests under `prefix` go to a pool
/// of one backend at `addr`.
fn with_route(cfg: String, prefix: &str, addr: &str) -> String {
    cfg.replace(
        "  [[listener.route]]\n  path_prefix = \"/api/\"",
        &format!(
            "  [[listener.route]]\n  path_prefix = \"{prefix}\"\n  pool = \"extra\"\n  [[listener.route]]\n  path_prefix = \"/api/\""
        ),
    )
    .replace(
        "[[pool]]\nname = \"a\"",
        &format!(
            "[[pool]]\nname = \"extra\"\nbackends = [{{ name = \"x1\", address = \"{addr}\" }}]\n\n[[pool]]\nname = \"a\""
        ),
    )
}

/// [`routes_and_downloads`] through a Switchyard on port `nic` (round-robin,
/// backend `a` for L4) in front of `t`'s nginx; what Switchyard printed.
fn downloads_through(t: &Topology, nic: &str) -> String {
    let sum = t.nginx();
    let mut lb = t.switchyard(&config(nic, "round-robin", "a"));
    routes_and_downloads(t, &sum);
    lb.stop()
}

/// Routes answered by the right nginx, over L7 and L4, and a 4 MiB download
/// byte-exact both ways; the counters agree with what the clients did.
fn routes_and_downloads(t: &Topology, sum: &str) {
    let head = |url: &str| {
        let o = t.exec("cl", &format!("curl -sS -m 10 -D - -o /dev/null {url}"));
        let h = text(&o).to_ascii_lowercase();
        h.lines().find_map(|l| l.strip_prefix("x-backend: ").map(|v| v.trim().to_string()))
    };
    assert_eq!(head("http://198.18.0.10/api/users").as_deref(), Some("a"), "/api/ goes to pool a");
    assert_eq!(head("http://198.18.0.10/index.html").as_deref(), Some("b"), "the rest to pool b");
    assert_eq!(head("http://198.18.0.10:8080/index.html").as_deref(), Some("a"), "L4 to a1");
    // A generous limit: under 2% loss with the other tests of this file
    // running beside it on two cores, 4 MiB has taken over 30 s (curl then
    // stops, and the digest is of what arrived); the whole test takes about
    // 10 s alone.
    for url in ["http://198.18.0.10/big.bin", "http://198.18.0.10:8080/big.bin"] {
        let o = t.exec("cl", &format!("sh -c 'curl -sS -m 120 {url} | sha256sum'"));
        assert_eq!(text(&o).split_whitespace().next(), Some(sum), "{url} byte-exact");
    }
}

#[test]
fn l7_and_l4_through_af_packet_to_nginx_with_curl_and_wrk() {
    if !can_run("af_packet", &[NGINX_BIN, "wrk"]) {
        return;
    }
    let _g = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let t = Topology::up("sya-");
    let sum = t.nginx();
    let mut lb = t.switchyard(&config("af_packet:lb0", "round-robin", "a"));
    routes_and_downloads(&t, &sum);
    // wrk, bounded: 2 s, 16 connections, keep-alive, through the L7 route.
    let o = t.exec("cl", "wrk -t1 -c16 -d2s --timeout 5s http://198.18.0.10/api/users");
    let w = text(&o);
    // "  12345 requests in 2.00s, ..."
    let requests = w
        .lines()
        .find(|l| l.contains("requests in"))
        .and_then(|l| l.split_whitespace().next()?.parse::<u64>().ok())
        .unwrap_or_else(|| panic!("wrk output:\n{w}"));
    assert!(requests > 100, "wrk completed only {requests} requests:\n{w}");
    assert!(!w.contains("Non-2xx"), "wrk saw errors:\n{w}");
    assert!(!w.contains("Socket errors"), "wrk saw socket errors:\n{w}");
    // A client that reuses its port right after a connection the load
    // balancer closed first (Connection: close leaves it in TIME-WAIT):
    // answered at once, as Linux would, not after TIME-WAIT runs out.
    for _ in 0..2 {
        let started = std::time::Instant::now();
        let o = t.exec(
            "cl",
            "curl -sS -m 5 --local-port 40404 -H 'Connection: close' -o /dev/null -w '%{http_code}' http://198.18.0.10/api/users",
        );
        assert_eq!(text(&o), "200");
        assert!(
            started.elapsed().as_secs_f64() < 0.9,
            "port reuse waited: {:?}",
            started.elapsed()
        );
    }
    let out = lb.stop();
    assert_eq!(number_after(&out, "reopened from time-wait"), Some(1), "{out}");
    let l7 = number_after(&out, "listener web (l7): connections").unwrap_or(0);
    assert!(l7 >= 16 + 3, "L7 connections counted: {out}");
    let reqs = number_after(&out, ", requests").unwrap_or(0);
    assert!(reqs >= requests, "switchyard counted {reqs} requests, wrk {requests}:\n{out}");
    assert!(!out.contains("drop bad_"), "no checksum or header drops:\n{out}");
}

/// The same downloads with `af_packet:lb0,gso`: runs of a flow's segments
/// leave as one large frame (the kernel's veth hands it to the peer's stack
/// whole, as GRO would have made it); both downloads are byte-exact.
#[test]
fn af_packet_with_segmentation_offload() {
    if !can_run("af_packet", &[NGINX_BIN]) {
        return;
    }
    let _g = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let t = Topology::up("syg-");
    let out = downloads_through(&t, "af_packet:lb0,gso");
    assert!(out.contains("running on af_packet:lb0,gso"), "{out}");
    let merged = number_after(&out, "large frames of merged TCP segments").unwrap_or(0);
    assert!(merged > 100, "merged frames {merged}:\n{out}");
    // Runs longer than a short flight among them.
    let segments = number_after(&out, "segments in them").unwrap_or(0);
    assert!(segments > 3 * merged, "{merged} frames of {segments} segments:\n{out}");
    assert_eq!(number_after(&out, "refused by the device"), Some(0), "{out}");
    assert!(!out.contains("drop bad_"), "{out}");
    // The default merges runs of two or three segments only: the same
    // downloads' long runs leave as single frames.
    drop(t);
    let out = downloads_through(&Topology::up("syg-"), "af_packet:lb0");
    let flights = number_after(&out, "large frames of merged TCP segments").unwrap_or(0);
    let short = number_after(&out, "segments in them").unwrap_or(0);
    println!(
        "merged: {merged} frames of {segments} segments with ,gso, {flights} of {short} by default"
    );
    assert!(flights > 0 && short >= 2 * flights && short <= 3 * flights, "{out}");
}

/// Two workers on one interface: each has its own AF_PACKET socket in one
/// fanout group whose classic BPF program steers a client's flow by its
/// source port and a reply by the local port it comes back to, so every
/// connection — client side, upstream side, full-NAT — stays on one worker
/// and the workers share nothing. Both carry traffic, every request
/// succeeds, and no frame reaches a worker that does not own its flow, not
/// even while the workers' sockets join the group: frames of many flows
/// arrive throughout the start.
#[test]
fn two_workers_split_the_flows_of_one_interface_by_fanout() {
    if !can_run("workers", &[NGINX_BIN, "wrk", "python3"]) {
        return;
    }
    let _g = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let t = Topology::up("mw-");
    let sum = t.nginx();
    let mut spray = t.spray_udp(1.5);
    std::thread::sleep(Duration::from_millis(300));
    let mut lb = t.switchyard(&two_workers("af_packet:lb0"));
    assert!(spray.wait().is_ok_and(|s| s.success()), "the UDP sender failed");
    let out = two_workers_carry_the_flows(&t, &mut lb, &sum, 0.1);
    assert!(!out.contains("software dispatch"), "{out}");
    println!("{out}");
}

/// `config` with two workers and an L4 pool of both nginx servers.
fn two_workers(nic: &str) -> String {
    config(nic, "round-robin", "ab")
        .replace("addresses = [\"198.18.0.2/24\"]", "addresses = [\"198.18.0.2/24\"]\nworkers = 2")
}

/// Routes and downloads, then new connections (each from its own source
/// port) and wrk over L7 and L4: every request answered, both workers carry
/// L7 and L4 connections, no 5xx, no bad frames, none steered to the wrong
/// worker; then an idle second costs at most `idle_cpu` seconds of CPU.
/// Returns what Switchyard printed.
fn two_workers_carry_the_flows(
    t: &Topology,
    lb: &mut Switchyard,
    sum: &str,
    idle_cpu: f64,
) -> String {
    routes_and_downloads(t, sum);
    let o = t.exec(
        "cl",
        "sh -c 'for i in $(seq 1 24); do curl -sS -m 5 -o /dev/null -w \"%{http_code} \" http://198.18.0.10/api/users http://198.18.0.10:8080/index.html; done'",
    );
    let codes = text(&o);
    assert_eq!(codes.matches("200").count(), 48, "every request answered: {codes}");
    for url in ["http://198.18.0.10/api/users", "http://198.18.0.10:8080/index.html"] {
        let o = t.exec("cl", &format!("wrk -t1 -c32 -d2s --timeout 5s {url}"));
        let w = text(&o);
        assert!(w.contains("requests in"), "wrk output:\n{w}");
        assert!(!w.contains("Non-2xx") && !w.contains("Socket errors"), "wrk saw errors:\n{w}");
    }
    // Idle: every thread sleeps until a frame or a timer (at most 10 ms).
    std::thread::sleep(Duration::from_millis(200));
    let before = lb.cpu_seconds();
    std::thread::sleep(Duration::from_secs(1));
    let idle = lb.cpu_seconds() - before;
    eprintln!("idle for 1 s with two workers: {idle:.2} s of CPU");
    assert!(idle < idle_cpu, "an idle second cost {idle:.2} s of CPU");
    let out = lb.stop();
    assert!(out.contains("2 workers"), "{out}");
    let (w0, w1) =
        out.split_once("worker 1:").unwrap_or_else(|| panic!("per-worker counters:\n{out}"));
    for (i, w) in [w0, w1].iter().enumerate() {
        let l7 = number_after(w, "listener web (l7): connections").unwrap_or(0);
        let l4 = number_after(w, "listener tcp (l4): new flows").unwrap_or(0);
        assert!(l7 >= 8 && l4 >= 8, "worker {i} carried L7 {l7} and L4 {l4} connections:\n{out}");
        assert!(!w.contains("5xx 1") && !w.contains("drop bad_"), "worker {i}:\n{out}");
    }
    assert_eq!(number_after(&out, "steered to the wrong worker"), Some(0), "{out}");
    out
}

/// The counters of a software-dispatched run: both workers were given and
/// sent frames, none lost for want of queue room or device room, and no
/// buffer allocated on the packet path.
fn dispatched_cleanly(out: &str) {
    assert!(out.contains("2 workers, software dispatch)"), "{out}");
    let line = out
        .lines()
        .find(|l| l.starts_with("dispatch: device frames in"))
        .unwrap_or_else(|| panic!("dispatcher counters:\n{out}"));
    let list = |key: &str| -> Vec<u64> {
        let rest = &line[line.find(key).unwrap_or_else(|| panic!("{key}: {line}")) + key.len()..];
        let inside = &rest[..rest.find(']').unwrap()];
        inside.split(", ").map(|n| n.parse().unwrap()).collect()
    };
    for key in ["to workers [", "from workers ["] {
        let v = list(key);
        assert!(v.len() == 2 && v.iter().all(|n| *n > 500), "{key}{v:?}:\n{out}");
    }
    // Frames the device refused for a moment are retried, never dropped.
    assert!(out.contains("dispatch: receive queue full [0, 0], transmit retries"), "{out}");
    assert_eq!(
        number_after(out, "transmit retries").and(number_after(out, ", dropped")),
        Some(0),
        "{out}"
    );
    assert_eq!(number_after(out, "pool misses"), Some(0), "{out}");
    assert!(!out.contains("buffers allocated for want of free ones"), "{out}");
}

/// Two workers on one AF_XDP socket: the software dispatcher owns the
/// socket and steers each frame to the worker that owns its flow by the
/// same rule as the AF_PACKET fanout. Skips as the AF_XDP test does where
/// XDP is not permitted.
#[test]
fn two_workers_share_one_af_xdp_queue_by_software_dispatch() {
    if !can_run("workers_af_xdp", &[NGINX_BIN, "wrk"]) {
        return;
    }
    let _g = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let t = Topology::up("swd-");
    let sum = t.nginx();
    let mut lb = t.switchyard(&two_workers("af_xdp:lb0"));
    if let Some((status, out)) = lb.exited() {
        match xdp_not_permitted(&out) {
            Some(why) => {
                eprintln!("SKIPPED workers_af_xdp: {why}; switchyard said ({status}):\n{out}");
                return;
            }
            None => panic!("switchyard on af_xdp:lb0 did not start ({status}):\n{out}"),
        }
    }
    let out = two_workers_carry_the_flows(&t, &mut lb, &sum, 0.1);
    dispatched_cleanly(&out);
    assert!(out.contains("running on af_xdp:lb0/0 ("), "{out}");
    assert_eq!(number_after(&out, "af_xdp: dropped by the kernel"), Some(0), "{out}");
    println!("{out}");
}

/// Two workers on one TAP interface through the software dispatcher.
#[test]
fn two_workers_share_one_tap_by_software_dispatch() {
    if !can_run("workers_tap", &[NGINX_BIN, "wrk"]) {
        return;
    }
    let _g = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let t = Topology::up("swt-");
    let sum = t.nginx();
    let mut lb = t.switchyard(&two_workers("tap:tap0"));
    let out = two_workers_carry_the_flows(&t, &mut lb, &sum, 0.1);
    dispatched_cleanly(&out);
    assert!(out.contains("running on tap:tap0 (2 listeners"), "{out}");
    println!("{out}");
}

/// Peers whose kernels leave transmit checksums to the device, as a local
/// stack over a veth does: their frames arrive on the AF_PACKET ring with a
/// partial checksum and the kernel's word for it. Switchyard does not verify
/// those, completes them in software before L4 forwards them, and every
/// transfer stays byte-exact; nothing is dropped as a bad checksum.
#[test]
fn peers_with_transmit_checksum_offload_on() {
    if !can_run("csum_offload", &[NGINX_BIN]) {
        return;
    }
    let _g = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let t = Topology::up("syo-");
    for ns in ["cl", "be"] {
        // Segmentation stays off: frames must fit the ring's slots.
        t.exec(ns, "ethtool -K eth0 tx on tso off gso off");
    }
    let out = downloads_through(&t, "af_packet:lb0");
    let trusted = number_after(&out, "checksums left to the device").unwrap_or(0);
    let completed = number_after(&out, "completed in software").unwrap_or(0);
    // The L4 download alone is over 2,800 frames each way.
    assert!(trusted > 2_000, "frames with offloaded checksums: {trusted}\n{out}");
    assert!(completed > 1_000, "partial checksums completed for L4: {completed}\n{out}");
    assert!(!out.contains("drop bad_"), "no checksum drops:\n{out}");
    println!("{out}");
}

#[test]
fn l7_and_l4_through_tap_to_nginx() {
    if !can_run("tap", &[NGINX_BIN]) {
        return;
    }
    let _g = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let t = Topology::up("syb-");
    let sum = t.nginx();
    // Accept gratuitous ARP for new entries, to see Switchyard's announcement.
    t.exec("cl", "sysctl -qw net.ipv4.conf.eth0.arp_accept=1");
    let mut lb = t.switchyard(&config("tap:tap0", "round-robin", "a"));
    // Before any client spoke: the VIP was announced with Switchyard's MAC.
    let o = t.exec("cl", "ip neigh show 198.18.0.10 dev eth0");
    assert!(text(&o).contains("02:53:59:00:00:02"), "VIP not announced: {}", text(&o));
    routes_and_downloads(&t, &sum);
    let out = lb.stop();
    assert!(out.contains("running on tap:tap0"), "{out}");
    // 198.18.0.2 and the VIP 198.18.0.10.
    assert_eq!(number_after(&out, "announcements"), Some(2), "{out}");
    assert_eq!(number_after(&out, "listener tcp (l4): new flows"), Some(2), "{out}");
}

/// Why AF_XDP cannot start here, when the cause is the machine rather than
/// our code: a kernel without AF_XDP sockets or bpf(2), BPF or XDP refused
/// to root (a container, kernel lockdown), or an interface that supports
/// XDP in neither mode. Anything else (the verifier refusing our program, a
/// bind or ring setup error) is a failure of the backend.
fn xdp_not_permitted(start_error: &str) -> Option<&'static str> {
    [
        ("CONFIG_XDP_SOCKETS", "the kernel has no AF_XDP sockets"),
        ("CONFIG_BPF_SYSCALL", "the kernel has no bpf(2)"),
        ("needs root or CAP_NET_ADMIN + CAP_BPF", "BPF or XDP is not permitted to this process"),
        ("attach XDP program (native:", "the interface takes XDP in neither mode"),
    ]
    .into_iter()
    .find(|(key, _)| start_error.contains(key))
    .map(|(_, why)| why)
}

/// The AF_XDP backend on the same topology: an XDP program of ours on lb0
/// redirects its frames to an AF_XDP socket (native XDP on the veth, copy
/// mode: veth has no zero-copy). Routes answered by the right nginx over L7
/// and L4, 4 MiB downloads byte-exact, the mode printed, the kernel's drop
/// counters at 0 and the program gone from the interface after exit.
///
/// Where XDP is not permitted (see `xdp_not_permitted`) the test says why on
/// stderr and returns, even with `SWITCHYARD_E2E=require`: that is the
/// machine, not the code. Any other start error fails the test.
#[test]
fn l7_and_l4_through_af_xdp_to_nginx() {
    if !can_run("af_xdp", &[NGINX_BIN]) {
        return;
    }
    let _g = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let t = Topology::up("syx-");
    let sum = t.nginx();
    let mut lb = t.switchyard(&config("af_xdp:lb0", "round-robin", "a"));
    if let Some((status, out)) = lb.exited() {
        match xdp_not_permitted(&out) {
            Some(why) => {
                eprintln!("SKIPPED af_xdp: {why}; switchyard said ({status}):\n{out}");
                return;
            }
            None => panic!("switchyard on af_xdp:lb0 did not start ({status}):\n{out}"),
        }
    }
    let o = t.exec("lb", "ip link show lb0");
    assert!(text(&o).contains("sy_xsk_redirect"), "our XDP program on lb0: {}", text(&o));
    routes_and_downloads(&t, &sum);
    let out = lb.stop();
    let mode = out
        .lines()
        .find_map(|l| l.strip_prefix("switchyard: running on af_xdp:lb0/0 ("))
        .and_then(|l| l.split(')').next())
        .unwrap_or_else(|| panic!("the XDP mode is printed at start:\n{out}"));
    eprintln!("af_xdp: XDP mode used: {mode}");
    assert!(["native, copy", "native, zero-copy", "generic, copy"].contains(&mode), "{out}");
    assert_eq!(number_after(&out, "listener tcp (l4): new flows"), Some(2), "{out}");
    assert_eq!(number_after(&out, "af_xdp: dropped by the kernel"), Some(0), "{out}");
    // L4 forwards what it received in the UMEM frame it came in (zero copy).
    assert!(number_after(&out, "sent in the frame they came in").unwrap() > 1000, "{out}");
    assert!(!out.contains("drop bad_"), "no checksum or header drops:\n{out}");
    // The link went with the process: the kernel's stack has lb0 back.
    let o = t.exec("lb", "ip link show lb0");
    assert!(!text(&o).contains("prog/xdp"), "XDP program left on lb0: {}", text(&o));
    println!("{out}");
}

#[test]
fn iperf3_through_full_nat_counts_the_same_bytes_on_both_sides() {
    if !can_run("iperf3", &["iperf3", "nft"]) {
        return;
    }
    let _g = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let t = Topology::up("syc-");
    t.exec("be", "iperf3 -s -B 198.18.0.21 -p 5201 -D -1");
    std::thread::sleep(Duration::from_millis(200));
    // Without merging (`,nogso`): a veth hands a merged frame to the peer
    // whole, and its input hook counts one header for the segments in it.
    let cfg = config("af_packet:lb0,nogso", "round-robin", "iperf")
        .replace(":8080\"\npool", ":5201\"\npool");
    let acct = |peer: &str| {
        format!(
            "nft 'add table inet acct; \\
             add chain inet acct in {{ type filter hook input priority 0; }}; \\
             add chain inet acct out {{ type filter hook output priority 0; }}; \\
             add rule inet acct in ip saddr {peer} counter; \\
             add rule inet acct out ip daddr {peer} counter'"
        )
    };
    t.exec("cl", &acct("198.18.0.10"));
    t.exec("be", &acct("198.18.0.2"));
    let mut lb = t.switchyard(&cfg);
    let o = t.exec("cl", "iperf3 -c 198.18.0.10 -p 5201 -n 64M -J");
    let j = text(&o);
    let sent = number_after(&j[j.find("\"sum_sent\"").expect("sum_sent")..], "\"bytes\":").unwrap();
    // (-n is met in whole blocks: it may overshoot by one.)
    assert!(sent >= 64 << 20, "iperf3 sent {sent} bytes, asked for 64 MiB");
    // The server's last segments (its control channel's closing bytes) may
    // still be on their way when the client returns: let them through before
    // stopping the load balancer, or the two kernels count bytes it never saw.
    std::thread::sleep(Duration::from_millis(500));
    let out = lb.stop();
    assert_eq!(number_after(&out, "backend iperf1: flows"), Some(2), "control and data: {out}");
    // IP bytes each way as the kernels at both ends (nftables counters on
    // the flows' addresses) and Switchyard counted them. iperf3's own counts
    // are not comparable: its client counts what it wrote into the socket.
    let counted = |ns: &str| -> (u64, u64) {
        let o = text(&t.exec(ns, "nft list table inet acct"));
        let bytes = |chain: &str| -> u64 {
            let at = o.find(&format!("chain {chain}")).expect("chain");
            number_after(&o[at..], "bytes").expect("counter")
        };
        (bytes("in"), bytes("out"))
    };
    // (The client's output hook sees TCP's segments before software GSO
    // splits them, so its count lacks some headers: the client side is
    // compared where it receives.)
    let (cl_in, _) = counted("cl");
    let (be_in, be_out) = counted("be");
    let line =
        out.lines().find(|l| l.starts_with("listener tcp (l4)")).unwrap_or_else(|| panic!("{out}"));
    let lb_in = number_after(line, "bytes in").unwrap_or_else(|| panic!("{line}"));
    let lb_out = number_after(&line[line.find("bytes in").unwrap()..], "out").unwrap();
    // (Less than the 64 MiB iperf3 wrote can cross: its server closes as soon
    // as the client says it is done.)
    assert!(lb_in > 32 << 20, "{out}");
    assert_eq!(be_in, lb_in, "client to backend: backend kernel vs switchyard");
    assert_eq!((be_out, cl_in), (lb_out, lb_out), "backend to client: both kernels vs switchyard");
}

#[test]
fn postgres_behind_an_l4_listener_with_source_ip_affinity() {
    let initdb = format!("{PG_BIN}/initdb");
    if !can_run("postgres", &[&initdb, "psql", "pgbench", "runuser"]) {
        return;
    }
    let _g = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let t = Topology::up("syd-");
    let data = t.dir.join("pg");
    sh(&format!(
        "mkdir -p {d} && chown postgres {d} && chown postgres {dir}",
        d = data.display(),
        dir = t.dir.display()
    ));
    sh(&format!(
        "runuser -u postgres -- {initdb} -D {} -A trust -U postgres >/dev/null",
        data.display()
    ));
    std::fs::write(
        data.join("pg_hba.conf"),
        "host all all 198.18.0.0/15 trust\nlocal all all trust\n",
    )
    .unwrap();
    t.exec(
        "be",
        &format!(
            "runuser -u postgres -- {PG_BIN}/pg_ctl -D {d} -l {d}/log -w -o \"-c listen_addresses=198.18.0.21,198.18.0.22 -c unix_socket_directories={d} -p 5432\" start >/dev/null",
            d = data.display()
        ),
    );
    let cfg = config("af_packet:lb0", "source-ip", "pg").replace(":8080\"\npool", ":5432\"\npool");
    let mut lb = t.switchyard(&cfg);
    let o = t.exec("cl", "psql -h 198.18.0.10 -U postgres -At -c 'select 40 + 2'");
    assert_eq!(text(&o).trim(), "42");
    t.exec("cl", "pgbench -h 198.18.0.10 -U postgres -i -s 1 -q postgres");
    let o = t.exec("cl", "pgbench -h 198.18.0.10 -U postgres -c 4 -j 2 -t 100 postgres");
    let b = text(&o);
    assert!(b.contains("number of transactions actually processed: 400/400"), "{b}");
    assert!(b.contains("number of failed transactions: 0"), "{b}");
    let out = lb.stop();
    let pg1 = number_after(&out, "backend pg1: flows").unwrap();
    let pg2 = number_after(&out, "backend pg2: flows").unwrap();
    // One client address: every connection (psql, pgbench's init, its four
    // clients) lands on the same backend.
    assert!(pg1 == 0 || pg2 == 0, "source-IP affinity split one client: pg1 {pg1}, pg2 {pg2}");
    assert!(pg1 + pg2 >= 6, "{out}");
    let _ = Command::new("sh")
        .args([
            "-c",
            &format!(
                "runuser -u postgres -- {PG_BIN}/pg_ctl -D {} -m immediate stop",
                data.display()
            ),
        ])
        .output();
}

#[test]
fn two_percent_loss_and_reordering_keep_transfers_byte_exact() {
    if !can_run("netem", &[NGINX_BIN, "nft"]) {
        return;
    }
    let _g = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let t = Topology::up("sye-");
    let sum = t.nginx();
    // netem where the kernel has it; otherwise (as in these Firecracker VMs,
    // built without CONFIG_NET_SCH_NETEM) 2% loss each way by nftables,
    // without reordering, which nftables cannot do.
    let netem = Command::new("ip")
        .args(["netns", "exec", &t.ns("cl"), "tc", "qdisc", "add", "dev", "eth0", "root"])
        .args(["netem", "delay", "1ms", "loss", "2%", "reorder", "2%", "50%"])
        .output()
        .is_ok_and(|o| o.status.success());
    if !netem {
        eprintln!("netem: not in this kernel; 2% loss each way by nftables, no reordering");
        t.exec(
            "cl",
            "nft 'add table inet lossy; \
             add chain inet lossy in { type filter hook input priority 0; }; \
             add chain inet lossy out { type filter hook output priority 0; }; \
             add rule inet lossy in numgen random mod 100 < 2 counter drop; \
             add rule inet lossy out numgen random mod 100 < 2 counter drop'",
        );
    }
    let mut lb = t.switchyard(&config("af_packet:lb0", "round-robin", "a"));
    routes_and_downloads(&t, &sum);
    if !netem {
        // The loss really happened: packets were dropped both ways.
        let o = t.exec("cl", "nft list table inet lossy");
        let drops: Vec<u64> =
            text(&o).lines().filter_map(|l| number_after(l, "counter packets")).collect();
        assert!(drops.len() == 2 && drops.iter().all(|d| *d > 10), "nft drops: {drops:?}");
    }
    let out = lb.stop();
    assert!(number_after(&out, "listener tcp (l4): new flows").unwrap() >= 2, "{out}");
}

/// HTTPS terminated by Switchyard (rustls, handshakes on the engine thread):
/// curl through the routes, a 4 MiB download byte-exact, TLS 1.3 and 1.2 with
/// openssl s_client, and a client speaking plain HTTP to the TLS port gets
/// closed without disturbing the others.
#[test]
fn https_terminated_with_curl_and_openssl() {
    if !can_run("tls", &[NGINX_BIN, "openssl"]) {
        return;
    }
    let _g = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let t = Topology::up("syf-");
    let sum = t.nginx();
    let (cert, key) = (t.dir.join("cert.pem"), t.dir.join("key.pem"));
    sh(&format!(
        "openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -keyout {} -out {} \
         -subj /CN=switchyard.test -addext subjectAltName=DNS:switchyard.test \
         -addext basicConstraints=critical,CA:FALSE -days 2 2>/dev/null",
        key.display(),
        cert.display()
    ));
    // A second certificate, RSA, for another name: chosen by SNI.
    let (cert2, key2) = (t.dir.join("other.pem"), t.dir.join("other.key"));
    sh(&format!(
        "openssl req -x509 -newkey rsa:2048 -nodes -keyout {} -out {} \
         -subj /CN=other.test -addext subjectAltName=DNS:other.test -days 2 2>/dev/null",
        key2.display(),
        cert2.display()
    ));
    // An OCSP response to staple (RFC 6960: status successful).
    let staple = t.dir.join("staple.der");
    std::fs::write(&staple, [0x30u8, 0x03, 0x0a, 0x01, 0x00]).unwrap();
    let https = format!(
        "[[listener]]\nname = \"https\"\nmode = \"l7\"\naddress = \"198.18.0.10:443\"\n\
         tls = {{ certificates = [{{ cert = \"{}\", key = \"{}\", ocsp = \"{}\" }}, {{ cert = \"{}\", key = \"{}\" }}] }}\n\
         [[listener.route]]\n  path_prefix = \"/api/\"\n  pool = \"a\"\n\n  [[listener.route]]\n  pool = \"b\"\n\n",
        cert.display(),
        key.display(),
        staple.display(),
        cert2.display(),
        key2.display()
    );
    let cfg = config("af_packet:lb0", "round-robin", "a")
        .replace("[[pool]]\nname = \"a\"", &format!("{https}[[pool]]\nname = \"a\""));
    let mut lb = t.switchyard(&cfg);
    let curl = format!(
        "curl -sS -m 20 --cacert {} --resolve switchyard.test:443:198.18.0.10",
        cert.display()
    );
    let o = t.exec("cl", &format!("{curl} -D - -o /dev/null https://switchyard.test/api/users"));
    assert!(text(&o).to_ascii_lowercase().contains("x-backend: a"), "{}", text(&o));
    let o = t.exec("cl", &format!("sh -c '{curl} https://switchyard.test/big.bin | sha256sum'"));
    assert_eq!(text(&o).split_whitespace().next(), Some(sum.as_str()), "HTTPS download byte-exact");
    for (flag, want) in [("-tls1_3", "TLSv1.3"), ("-tls1_2", "TLSv1.2")] {
        let o = t.exec(
            "cl",
            &format!(
                "sh -c 'openssl s_client -connect 198.18.0.10:443 -servername switchyard.test {flag} \
                 -CAfile {} </dev/null 2>&1'",
                cert.display()
            ),
        );
        let s = text(&o);
        assert!(
            s.contains(&format!("Protocol  : {want}")) || s.contains(&format!("New, {want}")),
            "{s}"
        );
        assert!(s.contains("Verify return code: 0 (ok)"), "{s}");
    }
    // The OCSP response is stapled for a client that asks (`-status`).
    let o = t.exec(
        "cl",
        "sh -c 'openssl s_client -connect 198.18.0.10:443 -servername switchyard.test -status </dev/null 2>&1'",
    );
    assert!(text(&o).contains("OCSP Response Status: successful"), "{}", text(&o));
    // SNI picks the certificate; an unknown name gets the first (default).
    for (name, cn) in [("other.test", "other.test"), ("unknown.test", "switchyard.test")] {
        let o = t.exec(
            "cl",
            &format!("sh -c 'openssl s_client -connect 198.18.0.10:443 -servername {name} </dev/null 2>&1'"),
        );
        assert!(text(&o).contains(&format!("subject=CN = {cn}")), "SNI {name}:\n{}", text(&o));
    }
    // Resumption: a second connection presenting the first one's session.
    let sess = t.dir.join("session.pem");
    let s_client = format!(
        "openssl s_client -connect 198.18.0.10:443 -servername switchyard.test -CAfile {}",
        cert.display()
    );
    // (The sleep keeps the first client reading until the tickets arrive.)
    t.exec(
        "cl",
        &format!("sh -c '(sleep 1) | {s_client} -sess_out {} >/dev/null 2>&1'", sess.display()),
    );
    let o =
        t.exec("cl", &format!("sh -c '{s_client} -sess_in {} </dev/null 2>&1'", sess.display()));
    assert!(text(&o).contains("Reused, TLSv1.3"), "second connection not resumed:\n{}", text(&o));
    // A TLS 1.3 key update asked for by the client (s_client's `K`: update
    // requested), then a request under the new keys both ways.
    let o = t.exec(
        "cl",
        &format!(
            "sh -c '(printf \"K\\n\"; sleep 0.5; printf \"GET /api/users HTTP/1.1\\r\\nHost: switchyard.test\\r\\nConnection: close\\r\\n\\r\\n\"; sleep 1) \
             | {s_client} -tls1_3 2>&1'"
        ),
    );
    let s = text(&o);
    assert!(s.contains("KEYUPDATE") && s.to_ascii_lowercase().contains("x-backend: a"), "{s}");
    // Plain HTTP to the TLS port: refused with an alert, counted; HTTPS goes on.
    let bad = Command::new("ip")
        .args(["netns", "exec", &t.ns("cl"), "curl", "-sS", "-m", "5", "http://198.18.0.10:443/"])
        .output()
        .unwrap();
    assert!(!bad.status.success(), "plain HTTP on the TLS port must fail");
    let o = t.exec("cl", &format!("{curl} -D - -o /dev/null https://switchyard.test/index.html"));
    assert!(text(&o).to_ascii_lowercase().contains("x-backend: b"), "{}", text(&o));
    // The post-quantum hybrid with a client that offers it (this OpenSSL
    // does not): tls-load, rustls over the kernel's TCP, offering only
    // X25519MLKEM768, four new connections.
    let o = t.exec(
        "cl",
        &format!(
            "{} --addr 198.18.0.10:443 --ca {} --group x25519mlkem768 --connections 2 --requests 4 --seconds 20 --path /api/users",
            env!("CARGO_BIN_EXE_tls-load"),
            cert.display()
        ),
    );
    assert!(text(&o).starts_with("requests 4 errors 0 "), "{}", text(&o));
    let out = lb.stop();
    let line = out.lines().find(|l| l.starts_with("tls: ")).unwrap_or_else(|| panic!("{out}"));
    // One connection each (kept alive, and one HTTP/2 connection): TLS 1.3
    // to the first nginx, 1.2 to the second.
    assert!(line.contains("handshakes [TLSv1_2 X25519: 1, TLSv1_3 "), "{line}");
    assert!(line.contains("TLSv1_2"), "{line}");
    assert!(number_after(line, "failed").unwrap() >= 1, "{line}");
    assert_eq!(number_after(line, "resumed"), Some(1), "{line}");
    // Records after the handshakes are ours, from the extracted secrets.
    let records =
        out.lines().find(|l| l.starts_with("tls records")).unwrap_or_else(|| panic!("{out}"));
    assert!(number_after(records, "sealed").unwrap() > 100, "{records}");
    assert_eq!(number_after(records, "key updates received"), Some(1), "{records}");
    assert_eq!(number_after(records, "sent"), Some(1), "{records}");
    // The group each handshake used, per listener.
    let groups = out
        .lines()
        .find(|l| l.starts_with("listener https (tls): key exchange"))
        .unwrap_or_else(|| panic!("{out}"));
    assert_eq!(number_after(groups, "X25519MLKEM768"), Some(4), "{groups}");
    // A post-quantum server flight (ServerHello to Finished) is two
    // segments; the port's default merging sends each as one frame.
    let merged = number_after(&out, "large frames of merged TCP segments").unwrap_or(0);
    assert!(merged >= 4, "merged frames {merged}:\n{out}");
    assert_eq!(number_after(&out, "refused by the device"), Some(0), "{out}");
    // Three curls, eight s_clients and four tls-load connections reach L7;
    // the plain-HTTP client never does.
    assert_eq!(number_after(&out, "listener https (l7): connections"), Some(15), "{out}");
}

/// HTTP/2 towards clients: cleartext with prior knowledge and over TLS with
/// ALPN `h2`, with curl and a bounded h2load run, translated to HTTP/1.1 for
/// nginx; routes, bytes and counters as for HTTP/1.1.
#[test]
fn http2_with_curl_and_h2load() {
    if !can_run("http2", &[NGINX_BIN, "openssl", "h2load"]) {
        return;
    }
    let _g = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let t = Topology::up("syh-");
    let sum = t.nginx();
    let (cert, key) = (t.dir.join("cert.pem"), t.dir.join("key.pem"));
    sh(&format!(
        "openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -keyout {} -out {} \
         -subj /CN=switchyard.test -addext subjectAltName=DNS:switchyard.test -days 2 2>/dev/null",
        key.display(),
        cert.display()
    ));
    let https = format!(
        "[[listener]]\nname = \"https\"\nmode = \"l7\"\naddress = \"198.18.0.10:443\"\n\
         tls = {{ cert = \"{}\", key = \"{}\" }}\n\
         [[listener.route]]\n  path_prefix = \"/api/\"\n  pool = \"a\"\n\n  [[listener.route]]\n  pool = \"b\"\n\n",
        cert.display(),
        key.display(),
    );
    let h2_pool = "[[pool]]\nname = \"h2up\"\nprotocol = \"h2c\"\nbackends = [{ name = \"h2b\", address = \"198.18.0.23:8081\" }]\n\n";
    let cfg = config("af_packet:lb0", "round-robin", "a")
        .replace("[[pool]]\nname = \"a\"", &format!("{https}{h2_pool}[[pool]]\nname = \"a\""))
        .replace(
            "  [[listener.route]]\n  path_prefix = \"/api/\"\n  pool = \"a\"\n  [[listener.route]]\n  pool = \"b\"",
            "  [[listener.route]]\n  path_prefix = \"/h2/\"\n  rewrite_prefix = \"/\"\n  pool = \"h2up\"\n  [[listener.route]]\n  path_prefix = \"/api/\"\n  pool = \"a\"\n  [[listener.route]]\n  pool = \"b\"",
        );
    // Handshakes on the worker's thread here (the other TLS tests use the
    // engine thread that `auto` picks with a CPU to spare).
    let cfg = format!("{cfg}\n[tls]\nengine = \"inline\"\n");
    let mut lb = t.switchyard(&cfg);
    // HTTP/2 to the backend too (an h2c pool): from an HTTP/1.1 client and
    // from an HTTP/2 one, nginx sees HTTP/2.
    for client in ["curl -sS -m 20", "curl -sS -m 20 --http2-prior-knowledge"] {
        let o = t.exec("cl", &format!("{client} -D - http://198.18.0.10/h2/api/users"));
        let out = text(&o).to_ascii_lowercase();
        assert!(
            out.contains("x-backend: h2") && out.contains("x-proto: http/2.0"),
            "{client}: {out}"
        );
        assert!(out.ends_with("users\n"), "{client}: {out}");
        let o =
            t.exec("cl", &format!("sh -c '{client} http://198.18.0.10/h2/big.bin | sha256sum'"));
        assert_eq!(text(&o).split_whitespace().next(), Some(sum.as_str()), "{client}: h2c big.bin");
    }
    let h2c = "curl -sS -m 20 --http2-prior-knowledge";
    let https = format!(
        "curl -sS -m 20 --http2 --cacert {} --resolve switchyard.test:443:198.18.0.10",
        cert.display()
    );
    for (curl, base) in [(h2c, "http://198.18.0.10"), (https.as_str(), "https://switchyard.test")] {
        // The protocol curl used, and the backend that answered.
        let o = t.exec(
            "cl",
            &format!("{curl} -D - -o /dev/null -w 'version=%{{http_version}}\\n' {base}/api/users"),
        );
        let out = text(&o).to_ascii_lowercase();
        assert!(out.contains("version=2"), "not HTTP/2: {out}");
        assert!(out.contains("x-backend: a"), "{out}");
        let o = t.exec("cl", &format!("{curl} -D - -o /dev/null {base}/index.html"));
        assert!(text(&o).to_ascii_lowercase().contains("x-backend: b"), "{}", text(&o));
        // 4 MiB through the stream's flow control, byte-exact.
        let o = t.exec("cl", &format!("sh -c '{curl} {base}/big.bin | sha256sum'"));
        assert_eq!(text(&o).split_whitespace().next(), Some(sum.as_str()), "{base} big.bin");
        // A missing file is nginx's 404, relayed as such.
        let o = t.exec("cl", &format!("{curl} -o /dev/null -w '%{{http_code}}' {base}/nope"));
        assert_eq!(text(&o).trim(), "404");
    }
    // h2load, bounded: 2,000 requests over 4 connections, 10 streams each.
    let o = t.exec("cl", "h2load -n 2000 -c 4 -m 10 -t 1 http://198.18.0.10/api/users");
    let w = text(&o);
    assert!(w.contains("2000 succeeded, 0 failed, 0 errored"), "h2load:\n{w}");
    assert!(w.contains("2000 2xx"), "h2load:\n{w}");
    let out = lb.stop();
    let line = out.lines().find(|l| l.starts_with("http2: ")).unwrap_or_else(|| panic!("{out}"));
    // 8 + 2 curls and h2load's 4 connections; 2,008 + 2 streams; one
    // upstream HTTP/2 connection carried the 4 h2c requests.
    assert_eq!(number_after(line, "connections"), Some(14), "{line}");
    assert_eq!(number_after(line, "streams"), Some(2010), "{line}");
    assert_eq!(number_after(line, "upstream connections"), Some(1), "{line}");
    assert_eq!(number_after(line, "upstream streams"), Some(4), "{line}");
    assert_eq!(number_after(line, "protocol errors"), Some(0), "{line}");
    assert!(out.contains("TLSv1_3"), "{out}");
    assert!(out.contains("TLS handshakes inline"), "{out}");
}

/// TLS passthrough: curl's ClientHello names a host, Switchyard picks the
/// pool by it without terminating TLS, and the handshake completes with the
/// backend's own certificate (nginx terminates), byte for byte end to end.
#[test]
fn tls_passthrough_routes_by_sni_to_nginx_terminating_tls() {
    if !can_run("tls passthrough", &[NGINX_BIN, "openssl"]) {
        return;
    }
    let _g = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let t = Topology::up("syp-");
    let d = &t.dir;
    // One self-signed certificate per backend name.
    for name in ["a", "b"] {
        sh(&format!(
            "openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -keyout {d}/{name}.key \
             -out {d}/{name}.pem -subj /CN={name}.test -addext subjectAltName=DNS:{name}.test -days 2 2>/dev/null",
            d = d.display()
        ));
    }
    let www = d.join("www");
    std::fs::create_dir_all(&www).unwrap();
    std::fs::write(www.join("who"), "tls\n").unwrap();
    let conf = format!(
        "daemon on;\nworker_processes 1;\npid {d}/nginx.pid;\nerror_log {d}/nginx.err;\n\
         events {{ worker_connections 256; }}\nhttp {{\n access_log off;\n\
         client_body_temp_path {d}/b; proxy_temp_path {d}/p; fastcgi_temp_path {d}/f;\n\
         uwsgi_temp_path {d}/u; scgi_temp_path {d}/s;\n\
         server {{ listen 198.18.0.21:8443 ssl; ssl_certificate {d}/a.pem; ssl_certificate_key {d}/a.key; root {w}; add_header X-Backend a; }}\n\
         server {{ listen 198.18.0.22:8443 ssl; ssl_certificate {d}/b.pem; ssl_certificate_key {d}/b.key; root {w}; add_header X-Backend b; }}\n}}\n",
        d = d.display(),
        w = www.display()
    );
    std::fs::write(d.join("nginx.conf"), conf).unwrap();
    t.exec("be", &format!("{NGINX_BIN} -c {}/nginx.conf", d.display()));
    let listener = "[[listener]]\nname = \"pass\"\nmode = \"tls-passthrough\"\naddress = \"198.18.0.10:443\"\n\
         [[listener.route]]\n  sni = \"a.test\"\n  pool = \"ta\"\n  [[listener.route]]\n  sni = \"*.b.test\"\n  pool = \"tb\"\n  [[listener.route]]\n  sni = \"b.test\"\n  pool = \"tb\"\n\n\
         [[pool]]\nname = \"ta\"\nbackends = [{ name = \"ta1\", address = \"198.18.0.21:8443\" }]\n\n\
         [[pool]]\nname = \"tb\"\nbackends = [{ name = \"tb1\", address = \"198.18.0.22:8443\" }]\n\n";
    let cfg = config("af_packet:lb0", "round-robin", "a")
        .replace("[[pool]]\nname = \"a\"", &format!("{listener}[[pool]]\nname = \"a\""));
    let mut lb = t.switchyard(&cfg);
    for name in ["a", "b"] {
        // curl verifies the backend's own certificate for the name: only the
        // right backend can complete this handshake.
        let o = t.exec(
            "cl",
            &format!(
                "curl -sS -m 10 -D - --cacert {d}/{name}.pem --resolve {name}.test:443:198.18.0.10 https://{name}.test/who",
                d = d.display()
            ),
        );
        let out = text(&o).to_ascii_lowercase();
        assert!(
            out.contains(&format!("x-backend: {name}")) && out.contains("tls"),
            "{name}: {out}"
        );
    }
    // No route for the name: the connection is reset, no certificate seen.
    let o = t.exec(
        "cl",
        "sh -c 'openssl s_client -connect 198.18.0.10:443 -servername nobody.test </dev/null 2>&1; true'",
    );
    assert!(!text(&o).contains("BEGIN CERTIFICATE"), "{}", text(&o));
    let out = lb.stop();
    assert_eq!(number_after(&out, "listener pass (l7): connections"), Some(3), "{out}");
    assert!(out.contains("refused: no_route 1"), "{out}");
}

/// 100 MiB each way through an L7 route, streamed: a rate-limited curl
/// downloads from nginx, curl uploads (with `Expect: 100-continue`) to a
/// Python server that hashes what it receives; both byte-exact, and the
/// proxy's own buffers for a connection pair stay bounded (measured by
/// Switchyard's high-water mark), however large the bodies.
#[test]
fn hundred_mebibytes_stream_both_ways_with_bounded_proxy_memory() {
    if !can_run("100 MiB streaming", &[NGINX_BIN, "python3"]) {
        return;
    }
    let _g = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let t = Topology::up("sym-");
    t.nginx();
    let d = &t.dir;
    let big = d.join("www/big100.bin");
    sh(&format!("head -c 104857600 /dev/urandom > {}", big.display()));
    let sum = text(&sh(&format!("sha256sum {}", big.display())))
        .split_whitespace()
        .next()
        .unwrap()
        .to_string();
    let server = d.join("put_server.py");
    std::fs::write(
        &server,
        "import hashlib, http.server\n\
         class H(http.server.BaseHTTPRequestHandler):\n\
         \x20   protocol_version = 'HTTP/1.1'\n\
         \x20   def do_PUT(self):\n\
         \x20       n = int(self.headers.get('Content-Length', '0')); h = hashlib.sha256(); left = n\n\
         \x20       while left > 0:\n\
         \x20           b = self.rfile.read(min(left, 65536))\n\
         \x20           if not b: break\n\
         \x20           h.update(b); left -= len(b)\n\
         \x20       body = ('%s %d\\n' % (h.hexdigest(), n - left)).encode()\n\
         \x20       self.send_response(200); self.send_header('Content-Length', str(len(body))); self.end_headers(); self.wfile.write(body)\n\
         \x20   def log_message(self, *a): pass\n\
         http.server.ThreadingHTTPServer(('198.18.0.23', 9090), H).serve_forever()\n",
    )
    .unwrap();
    let mut py = Command::new("ip")
        .args(["netns", "exec", &t.ns("be"), "python3"])
        .arg(&server)
        .spawn()
        .expect("python3");
    std::thread::sleep(Duration::from_millis(500));
    let cfg =
        with_route(config("af_packet:lb0", "round-robin", "a"), "/upload/", "198.18.0.23:9090");
    let mut lb = t.switchyard(&cfg);
    // Download, the client reading at 40 MB/s: the proxy must not buffer
    // what the client has not taken.
    let t0 = std::time::Instant::now();
    let o = t.exec(
        "cl",
        "sh -c 'curl -sS -m 60 --limit-rate 40M http://198.18.0.10/big100.bin | sha256sum'",
    );
    assert_eq!(text(&o).split_whitespace().next(), Some(sum.as_str()), "download byte-exact");
    let down = t0.elapsed();
    // Upload, as fast as it goes.
    let t0 = std::time::Instant::now();
    let o =
        t.exec("cl", &format!("curl -sS -m 60 -T {} http://198.18.0.10/upload/it", big.display()));
    assert_eq!(text(&o).trim(), format!("{sum} 104857600"), "upload byte-exact");
    let up = t0.elapsed();
    let mbs = |d: Duration| 104.857_6 / d.as_secs_f64().max(1e-6);
    eprintln!(
        "100 MiB download (client limited to 40 MB/s) {:.0} MB/s, upload {:.0} MB/s",
        mbs(down),
        mbs(up)
    );
    let out = lb.stop();
    let _ = py.kill();
    let _ = py.wait();
    let peak = number_after(&out, "l7: peak proxy buffers per connection pair")
        .unwrap_or_else(|| panic!("{out}"));
    eprintln!("peak proxy buffers per connection pair: {peak} bytes for 100 MiB each way");
    assert!(peak <= 512 * 1024, "proxy buffered {peak} bytes for one connection pair:\n{out}");
}

/// WebSocket through an L7 route, with a real client and server (the
/// Python `websockets` library): the upgrade passes, then text and binary
/// messages up to 1 MiB are echoed unchanged, and the close handshake
/// completes.
#[test]
fn websocket_echo_with_a_real_client_and_server() {
    const PY: &str = "/usr/bin/python3";
    if !can_run("websocket", &[PY]) {
        return;
    }
    let have_ws =
        Command::new(PY).args(["-c", "import websockets"]).status().is_ok_and(|s| s.success());
    if !have_ws {
        let msg = "websocket: python3-websockets is not installed (scripts/setup.sh installs it)";
        assert!(std::env::var("SWITCHYARD_E2E").as_deref() != Ok("require"), "{msg}");
        eprintln!("skipped: {msg}");
        return;
    }
    let _g = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let t = Topology::up("syw-");
    let server = t.dir.join("ws_server.py");
    std::fs::write(
        &server,
        "import asyncio, websockets\n\
         async def echo(ws, path=None):\n\
         \x20   async for m in ws:\n\
         \x20       await ws.send(m)\n\
         async def main():\n\
         \x20   async with websockets.serve(echo, '198.18.0.23', 9100, max_size=None):\n\
         \x20       await asyncio.Future()\n\
         asyncio.run(main())\n",
    )
    .unwrap();
    let client = t.dir.join("ws_client.py");
    std::fs::write(
        &client,
        "import asyncio, os, websockets\n\
         async def main():\n\
         \x20   async with websockets.connect('ws://198.18.0.10/ws/echo', max_size=None) as ws:\n\
         \x20       n = 0\n\
         \x20       for size in [1, 125, 126, 65535, 65536, 1 << 20]:\n\
         \x20           for msg in ['x' * size, os.urandom(size)]:\n\
         \x20               await ws.send(msg)\n\
         \x20               back = await ws.recv()\n\
         \x20               assert back == msg, (size, type(msg))\n\
         \x20               n += 1\n\
         \x20       await ws.close()\n\
         \x20       print('echoed', n, 'close', ws.close_code)\n\
         asyncio.run(main())\n",
    )
    .unwrap();
    let mut srv = Command::new("ip")
        .args(["netns", "exec", &t.ns("be"), PY])
        .arg(&server)
        .spawn()
        .expect("python3");
    std::thread::sleep(Duration::from_millis(700));
    let cfg = with_route(config("af_packet:lb0", "round-robin", "a"), "/ws/", "198.18.0.23:9100");
    let mut lb = t.switchyard(&cfg);
    let o = t.exec("cl", &format!("timeout 30 {PY} {}", client.display()));
    let _ = srv.kill();
    let _ = srv.wait();
    assert_eq!(text(&o).trim(), "echoed 12 close 1000", "{}", text(&o));
    let out = lb.stop();
    // The handshake counts as a request answered 1xx by its route.
    assert!(out.contains("route 0: requests 1, 2xx 0"), "{out}");
}

/// TLS towards backends: curl speaks plain HTTP to Switchyard, which opens
/// TLS with its client certificate to nginx (`ssl_verify_client on`),
/// verifying nginx against the backend CA; HTTP/1.1 and HTTP/2 (`protocol =
/// "h2"`) pools. A backend whose certificate comes from another CA fails
/// verification: 502, counted.
#[test]
fn tls_and_mtls_to_nginx_backends() {
    if !can_run("upstream tls", &[NGINX_BIN, "openssl"]) {
        return;
    }
    let _g = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let t = Topology::up("syu-");
    let d = t.dir.display().to_string();
    let ec = "-newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes";
    // The backend CA; nginx's certificate and Switchyard's client certificate
    // signed by it (X.509 v3: an extension each); a stranger's certificate for
    // the same name from another CA.
    sh(&format!(
        "cd {d} && openssl req -x509 {ec} -keyout ca.key -out ca.pem -subj /CN=backend-ca -days 2 2>/dev/null \
         && printf 'subjectAltName=DNS:api.internal\\n' > san.ext \
         && printf 'extendedKeyUsage=clientAuth\\n' > client.ext \
         && openssl req {ec} -keyout api.key -out api.csr -subj /CN=api.internal 2>/dev/null \
         && openssl x509 -req -in api.csr -CA ca.pem -CAkey ca.key -CAcreateserial -out api.pem -days 2 -extfile san.ext 2>/dev/null \
         && openssl req {ec} -keyout lb.key -out lb.csr -subj /O=Switchyard/CN=switchyard-lb 2>/dev/null \
         && openssl x509 -req -in lb.csr -CA ca.pem -CAkey ca.key -CAcreateserial -out lb.pem -days 2 -extfile client.ext 2>/dev/null \
         && openssl req -x509 {ec} -keyout other-ca.key -out other-ca.pem -subj /CN=other-ca -days 2 2>/dev/null \
         && openssl req {ec} -keyout bad.key -out bad.csr -subj /CN=api.internal 2>/dev/null \
         && openssl x509 -req -in bad.csr -CA other-ca.pem -CAkey other-ca.key -CAcreateserial -out bad.pem -days 2 -extfile san.ext 2>/dev/null"
    ));
    std::fs::create_dir_all(t.dir.join("www")).unwrap();
    std::fs::write(t.dir.join("www/who"), "tls backend\n").unwrap();
    let mtls = "ssl_certificate {d}/api.pem; ssl_certificate_key {d}/api.key; \
                ssl_client_certificate {d}/ca.pem; ssl_verify_client on; root {d}/www; \
                add_header X-Client-Verify $ssl_client_verify; add_header X-Client-DN $ssl_client_s_dn; \
                add_header X-Proto $server_protocol;";
    let conf = format!(
        "daemon on;\nworker_processes 1;\npid {d}/nginx.pid;\nerror_log {d}/nginx.err;\n\
         events {{ worker_connections 256; }}\nhttp {{\n access_log off;\n\
         client_body_temp_path {d}/b; proxy_temp_path {d}/p; fastcgi_temp_path {d}/f;\n\
         uwsgi_temp_path {d}/u; scgi_temp_path {d}/s;\n\
         server {{ listen 198.18.0.21:8443 ssl; ssl_protocols TLSv1.3; {m} add_header X-Backend mtls; }}\n\
         server {{ listen 198.18.0.23:8444 ssl http2; ssl_protocols TLSv1.2; {m} add_header X-Backend h2tls; }}\n\
         server {{ listen 198.18.0.22:8443 ssl; ssl_certificate {d}/bad.pem; ssl_certificate_key {d}/bad.key; root {d}/www; add_header X-Backend bad; }}\n}}\n",
        m = mtls.replace("{d}", &d),
    );
    std::fs::write(t.dir.join("nginx.conf"), conf).unwrap();
    t.exec("be", &format!("{NGINX_BIN} -c {d}/nginx.conf"));
    let tls =
        format!("tls = {{ ca = \"{d}/ca.pem\", cert = \"{d}/lb.pem\", key = \"{d}/lb.key\" }}");
    let tls_sni = format!(
        "tls = {{ ca = \"{d}/ca.pem\", sni = \"api.internal\", cert = \"{d}/lb.pem\", key = \"{d}/lb.key\" }}"
    );
    // The first pool's SNI is its backend's name.
    let pools = format!(
        "[[pool]]\nname = \"up\"\n{tls}\nhealth = {{ interval_ms = 200, http_path = \"/who\", body_contains = \"tls backend\" }}\n\
         backends = [{{ name = \"api.internal\", address = \"198.18.0.21:8443\" }}]\n\n\
         [[pool]]\nname = \"uph2\"\nprotocol = \"h2\"\n{tls_sni}\nbackends = [{{ name = \"h2t\", address = \"198.18.0.23:8444\" }}]\n\n\
         [[pool]]\nname = \"upbad\"\n{tls_sni}\nbackends = [{{ name = \"bad1\", address = \"198.18.0.22:8443\" }}]\n\n"
    );
    let routes = "  [[listener.route]]\n  path_prefix = \"/mtls/\"\n  rewrite_prefix = \"/\"\n  pool = \"up\"\n\
                  [[listener.route]]\n  path_prefix = \"/h2tls/\"\n  rewrite_prefix = \"/\"\n  pool = \"uph2\"\n\
                  [[listener.route]]\n  path_prefix = \"/bad/\"\n  rewrite_prefix = \"/\"\n  pool = \"upbad\"\n\
                  [[listener.route]]\n  path_prefix = \"/api/\"";
    let cfg = config("af_packet:lb0", "round-robin", "a")
        .replace("[[pool]]\nname = \"a\"", &format!("{pools}[[pool]]\nname = \"a\""))
        .replace("  [[listener.route]]\n  path_prefix = \"/api/\"", routes);
    let mut lb = t.switchyard(&cfg);
    if lb.child.as_mut().is_some_and(|c| c.try_wait().ok().flatten().is_some()) {
        panic!("switchyard did not start:\n{}", lb.stop());
    }
    for (path, backend, proto) in
        [("/mtls/who", "mtls", "http/1.1"), ("/h2tls/who", "h2tls", "http/2.0")]
    {
        for i in 0..2 {
            let o = t.exec("cl", &format!("curl -sS -m 10 -D - http://198.18.0.10{path}"));
            let out = text(&o).to_ascii_lowercase();
            assert!(out.starts_with("http/1.1 200"), "{path} #{i}: {out}");
            assert!(out.contains(&format!("x-backend: {backend}\r\n")), "{path} #{i}: {out}");
            assert!(out.contains(&format!("x-proto: {proto}\r\n")), "{path} #{i}: {out}");
            // nginx verified Switchyard's client certificate.
            assert!(out.contains("x-client-verify: success"), "{path} #{i}: {out}");
            assert!(out.contains("cn=switchyard-lb"), "{path} #{i}: {out}");
            assert!(out.ends_with("tls backend\n"), "{path} #{i}: {out}");
        }
    }
    let o =
        t.exec("cl", "curl -sS -m 10 -o /dev/null -w '%{http_code}' http://198.18.0.10/bad/who");
    assert_eq!(text(&o).trim(), "502", "a backend from another CA");
    // Health checks every 200 ms: at least two have run by now, however
    // quickly the requests above went (they can take under 400 ms).
    std::thread::sleep(std::time::Duration::from_millis(1000));
    let out = lb.stop();
    let line = out
        .lines()
        .find(|l| l.starts_with("tls to backends: "))
        .unwrap_or_else(|| panic!("no upstream TLS counters:\n{out}"));
    eprintln!("{line}");
    // One connection each (kept alive, and one HTTP/2 connection): TLS 1.3
    // to the first nginx, 1.2 to the second.
    assert!(line.contains("handshakes [TLSv1_2 X25519: 1, TLSv1_3 "), "{line}");
    assert!(line.contains("unknown-issuer 1"), "{line}");
    assert!(line.contains("UnknownCA 1"), "{line}");
    // The HTTP health check of the mTLS backend speaks TLS with our client
    // certificate too, and finds the body it expects.
    let health = out
        .lines()
        .find(|l| l.starts_with("health pool up backend api.internal:"))
        .unwrap_or_else(|| panic!("no health line:\n{out}"));
    assert!(
        health.contains(": up,") && number_after(health, "checks passed").unwrap() >= 2,
        "{health}"
    );
    assert_eq!(number_after(health, "failed"), Some(0), "{health}");
    assert!(
        out.contains("pool upbad backend bad1 (l7): requests 1")
            && out.contains("connect failures 1"),
        "{out}"
    );
}

/// The same routes and downloads as through AF_PACKET, with Switchyard on
/// DPDK: EAL without huge pages or PCI, and DPDK's own AF_PACKET driver
/// (`net_af_packet`) as the port on lb0.
#[cfg(feature = "dpdk")]
#[test]
fn l7_and_l4_through_dpdk_net_af_packet_to_nginx() {
    if !can_run("dpdk", &[NGINX_BIN]) {
        return;
    }
    let _g = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let t = Topology::up("sdpa-");
    let sum = t.nginx();
    let nic = "dpdk:--no-huge --no-pci --no-shconf -m 256 -l 0 --no-telemetry --vdev=net_af_packet0,iface=lb0";
    let mut lb = t.switchyard(&config(nic, "round-robin", "a"));
    // EAL takes a moment longer to start than a packet socket.
    std::thread::sleep(Duration::from_millis(700));
    routes_and_downloads(&t, &sum);
    let out = lb.stop();
    assert!(out.contains(&format!("running on {nic}")), "{out}");
    assert!(out.contains("dpdk: port 0 on net_af_packet, receive checksum offload off"), "{out}");
    assert_eq!(number_after(&out, "listener tcp (l4): new flows"), Some(2), "{out}");
    // Two 4 MiB downloads came in through the port.
    assert!(number_after(&out, "frames out").unwrap() > 2 * (4 << 20) / 1514, "{out}");
}

/// Two workers on one DPDK port (`net_af_packet` on lb0, one queue) through
/// the software dispatcher, which naps between polls: DPDK has no
/// descriptor to sleep on.
#[cfg(feature = "dpdk")]
#[test]
fn two_workers_share_one_dpdk_port_by_software_dispatch() {
    if !can_run("workers_dpdk", &[NGINX_BIN, "wrk"]) {
        return;
    }
    let _g = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let t = Topology::up("swdp-");
    let sum = t.nginx();
    let nic = "dpdk:--no-huge --no-pci --no-shconf -m 256 -l 0 --no-telemetry --vdev=net_af_packet0,iface=lb0";
    let mut lb = t.switchyard(&two_workers(nic));
    // EAL takes a moment longer to start than a packet socket.
    std::thread::sleep(Duration::from_millis(700));
    // Idle, the dispatcher polls DPDK every 100 µs as one worker does (about
    // 0.2 s of CPU per second here either way).
    let out = two_workers_carry_the_flows(&t, &mut lb, &sum, 0.5);
    dispatched_cleanly(&out);
    assert!(out.contains(&format!("running on {nic} (2 listeners")), "{out}");
    println!("{out}");
}

/// The same through DPDK's TAP driver, which verifies checksums of what it
/// receives and says so in each mbuf: Switchyard turns the offload on and
/// the stack trusts those frames (7,132 of 7,135 in one run). The driver makes its own interface (`dtap0`), joined to the
/// bridge once it appears.
#[cfg(feature = "dpdk")]
#[test]
fn l7_and_l4_through_dpdk_net_tap_with_receive_checksum_offload() {
    if !can_run("dpdk_tap", &[NGINX_BIN]) {
        return;
    }
    let _g = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let t = Topology::up("sdpt-");
    let sum = t.nginx();
    let nic = "dpdk:--no-huge --no-pci --no-shconf -m 256 -l 0 --no-telemetry --vdev=net_tap0,iface=dtap0";
    let mut lb = t.switchyard(&config(nic, "round-robin", "a"));
    let start = Instant::now();
    let lb_ns = t.ns("lb");
    while !Command::new("ip")
        .args(["-n", &lb_ns, "link", "show", "dtap0"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
    {
        assert!(start.elapsed() < Duration::from_secs(10), "no dtap0: {}", lb.stop());
        std::thread::sleep(Duration::from_millis(50));
    }
    t.exec("lb", "ip link set dtap0 master br0 up");
    routes_and_downloads(&t, &sum);
    let out = lb.stop();
    assert!(out.contains(&format!("running on {nic}")), "{out}");
    assert!(out.contains("dpdk: port 0 on net_tap, receive checksum offload on"), "{out}");
    assert_eq!(number_after(&out, "listener tcp (l4): new flows"), Some(2), "{out}");
    let frames_in = number_after(&out, "frames in").unwrap();
    assert!(number_after(&out, "frames out").unwrap() > 2 * (4 << 20) / 1514, "{out}");
    // Nearly every frame came verified by the driver and was not checked again.
    let trusted = number_after(&out, "checksums left to the device").unwrap();
    assert!(trusted * 10 > frames_in * 9, "{trusted} of {frames_in} frames trusted:\n{out}");
}
