//! The `switchyard` binary as a user runs it: `check` on good and bad files,
//! `demo` end to end with a pcap tap that tshark reads, and `run` replaying that
//! capture through the dataplane on the pcap NIC.

use std::path::PathBuf;
use std::process::{Command, Output};

fn bin() -> Command {
    Command::new(env!("CARGO_BIN_EXE_switchyard"))
}

/// A test's own scratch directory, removed when the test ends (the demo's
/// capture alone is hundreds of megabytes).
struct Scratch(PathBuf);

impl Scratch {
    fn new(test: &str) -> Scratch {
        let dir =
            std::env::temp_dir().join(format!("switchyard-cli-{}-{test}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        Scratch(dir)
    }

    fn file(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn text(o: &Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr))
}

#[test]
fn check_accepts_the_demo_config() {
    let dir = Scratch::new("check");
    let path = dir.file("demo.toml");
    std::fs::write(&path, switchyard::config::DEMO_CONFIG).unwrap();
    let out = bin().args(["check", "--config"]).arg(&path).output().unwrap();
    assert!(out.status.success(), "{}", text(&out));
    assert!(text(&out).contains("ok (2 listeners, 3 pools, 7 backends)"), "{}", text(&out));
}

#[test]
fn check_names_file_line_key_and_suggestion_and_exits_2() {
    let dir = Scratch::new("bad");
    let path = dir.file("bad.toml");
    let src = switchyard::config::DEMO_CONFIG
        .replace("path_prefix = \"/api/\"", "path_prefx = \"/api/\"");
    std::fs::write(&path, &src).unwrap();
    let out = bin().args(["check", "--config"]).arg(&path).output().unwrap();
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    let line = src.lines().position(|l| l.contains("path_prefx")).unwrap() + 1;
    let msg = text(&out);
    assert!(msg.contains(&format!("{}:{line}:", path.display())), "{msg}");
    assert!(msg.contains("path_prefx"), "{msg}");
    assert!(msg.contains("path_prefix"), "suggestion missing: {msg}");

    let missing =
        bin().args(["check", "--config", "/nonexistent/switchyard.toml"]).output().unwrap();
    assert_eq!(missing.status.code(), Some(2));
    assert!(text(&missing).contains("/nonexistent/switchyard.toml"));
}

fn tshark(args: &[&str]) -> Option<String> {
    let out = Command::new("tshark").args(args).output().ok()?;
    assert!(out.status.success(), "tshark {args:?}: {}", text(&out));
    Some(String::from_utf8_lossy(&out.stdout).into_owned())
}

#[test]
fn demo_runs_clean_and_its_capture_replays_through_the_pcap_nic() {
    let dir = Scratch::new("demo");
    let cap = dir.file("demo.pcap");
    let out =
        bin().args(["demo", "--seconds", "1", "--fast", "--pcap"]).arg(&cap).output().unwrap();
    let msg = text(&out);
    assert!(out.status.success(), "demo failed:\n{msg}");
    for word in
        ["postgres", "web", "pg-1", "pg-2", "pg-3", "api-1", "api-2", "static-1", "static-2"]
    {
        assert!(msg.contains(word), "summary lacks {word}:\n{msg}");
    }

    // Wireshark's reader opens the capture and sees ARP, HTTP and PostgreSQL-port TCP.
    match tshark(&["-r", cap.to_str().unwrap(), "-T", "fields", "-e", "frame.protocols"]) {
        Some(protos) => {
            assert!(protos.lines().count() > 1000, "capture too small");
            assert!(protos.contains("eth:ethertype:arp"), "no ARP in capture");
            assert!(protos.contains(":http"), "no HTTP in capture");
            let pg = tshark(&["-r", cap.to_str().unwrap(), "-Y", "tcp.port == 5432"])
                .unwrap_or_default();
            assert!(pg.lines().count() > 100, "no L4 traffic in capture");
        }
        None => println!(
            "tshark not installed: capture not checked by Wireshark (scripts/setup.sh installs it)"
        ),
    }

    // Replay the capture as the receive side of the pcap NIC.
    let cfg = dir.file("replay.toml");
    let replayed = dir.file("replayed.pcap");
    let src = switchyard::config::DEMO_CONFIG.replace(
        "nic = \"sim\"",
        &format!("nic = \"pcap:{},{}\"", cap.display(), replayed.display()),
    );
    let src = &src[..src.find("[sim]").unwrap()];
    std::fs::write(&cfg, src).unwrap();
    let out = bin().args(["run", "--config"]).arg(&cfg).output().unwrap();
    let msg = text(&out);
    assert!(out.status.success(), "replay failed:\n{msg}");
    assert!(msg.contains("frames"), "{msg}");
    if let Some(frames) = tshark(&["-r", replayed.to_str().unwrap()]) {
        assert!(frames.lines().count() > 100, "replay transmitted too little:\n{msg}");
    }
}

/// `run --admin`: an operator drains a backend over the Unix socket while the
/// (paced) simulation runs; the reply comes back on the socket and the drained
/// backend shows as such.
#[test]
fn admin_socket_drains_a_backend_of_a_running_dataplane() {
    let dir = Scratch::new("admin");
    use std::io::{BufRead, BufReader, Write};
    let demo = switchyard::config::DEMO_CONFIG;
    let cfg = demo.replace("seconds = 10", "seconds = 2");
    assert_ne!(cfg, demo, "the demo config sets `seconds = 10`");
    let path = dir.file("admin.toml");
    std::fs::write(&path, &cfg).unwrap();
    let sock = dir.file("admin.sock");
    let child = bin()
        .args(["run", "--config"])
        .arg(&path)
        .arg("--admin")
        .arg(&sock)
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // Wait (bounded) for the socket to appear.
    let start = std::time::Instant::now();
    let stream = loop {
        if let Ok(s) = std::os::unix::net::UnixStream::connect(&sock) {
            break s;
        }
        assert!(start.elapsed().as_secs() < 10, "no admin socket at {}", sock.display());
        std::thread::sleep(std::time::Duration::from_millis(20));
    };
    stream.set_read_timeout(Some(std::time::Duration::from_secs(10))).unwrap();
    let mut w = stream.try_clone().unwrap();
    let mut r = BufReader::new(stream);
    let mut ask = |line: &str| -> String {
        writeln!(w, "{line}").unwrap();
        let mut reply = String::new();
        loop {
            let mut l = String::new();
            assert!(r.read_line(&mut l).unwrap() > 0, "socket closed");
            if l.trim().is_empty() {
                return reply.trim_end().to_string();
            }
            reply.push_str(&l);
        }
    };
    assert_eq!(ask("drain pg pg-2"), "drained pg/pg-2 (1 listeners)");
    assert_eq!(
        ask("frobnicate"),
        "error: unknown command `frobnicate`; ".to_string() + switchyard::admin::USAGE
    );
    // `show backends`: a line per backend of every pool, ended by an empty line.
    let shown = ask("show backends");
    assert_eq!(shown.lines().count(), 7, "{shown}");
    assert!(shown.lines().any(|l| l.starts_with("pg pg-2 drained flows=")), "{shown}");
    assert!(shown.lines().any(|l| l.starts_with("pg pg-1 up flows=")), "{shown}");
    // `show stats`: the exit report's counters while running, and they move.
    let frames = |s: &str| -> u64 {
        let rest = s.split("frames in ").nth(1).unwrap_or_else(|| panic!("{s}"));
        rest.split_whitespace().next().and_then(|n| n.parse().ok()).unwrap_or_else(|| panic!("{s}"))
    };
    let first = ask("show stats");
    assert!(first.lines().any(|l| l.starts_with("listener web (l7): connections")), "{first}");
    assert!(first.lines().any(|l| l.starts_with("stack: ")), "{first}");
    std::thread::sleep(std::time::Duration::from_millis(300));
    let second = ask("show stats");
    assert!(frames(&second) > frames(&first), "{first}\n---\n{second}");
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "{}", text(&out));
    assert!(!sock.exists(), "the socket file is removed at exit");
}

/// A minimal live configuration on device `nic`.
fn live_config(nic: &str) -> String {
    format!(
        "[device]\nnic = \"{nic}\"\nmac = \"02:53:59:00:00:02\"\naddresses = [\"198.18.0.2/24\"]\n\n\
         [[listener]]\nname = \"tcp\"\nmode = \"l4\"\naddress = \"198.18.0.10:8080\"\npool = \"p\"\n\n\
         [[pool]]\nname = \"p\"\nbackends = [{{ name = \"p1\", address = \"198.18.0.21:8080\" }}]\n"
    )
}

fn is_root() -> bool {
    Command::new("id").arg("-u").output().is_ok_and(|o| o.stdout.starts_with(b"0\n"))
}

/// Devices that cannot be opened stop `run` at start with exit code 2 and a
/// message naming the configuration, the device and the cause: an interface
/// that does not exist, and (run as an unprivileged user) the rights each
/// backend needs.
#[test]
fn live_devices_that_cannot_be_opened_are_clear_errors_at_start() {
    let dir = Scratch::new("devices");
    // A copy of the binary where `nobody` may run it, wherever the build is.
    let exe = dir.file("switchyard");
    std::fs::copy(env!("CARGO_BIN_EXE_switchyard"), &exe).unwrap();
    let run = |nic: &str, user: Option<&str>| {
        let path = dir.file(&format!("{}.toml", nic.replace(':', "-")));
        std::fs::write(&path, live_config(nic)).unwrap();
        let mut cmd = match user {
            Some(u) => {
                let mut c = Command::new("runuser");
                c.args(["-u", u, "--"]).arg(&exe);
                c
            }
            None => bin(),
        };
        let out = cmd.args(["run", "--seconds", "1", "--config"]).arg(&path).output().unwrap();
        (out.status.code(), text(&out))
    };
    // The name is looked up first: no privileges needed for this one.
    for (nic, device) in [
        ("af_packet:sy-absent0", "af_packet:sy-absent0"),
        ("af_xdp:sy-absent0", "af_xdp:sy-absent0/0"),
    ] {
        let (code, msg) = run(nic, None);
        assert_eq!(code, Some(2), "{nic}: {msg}");
        let path = dir.file(&format!("{}.toml", nic.replace(':', "-")));
        assert!(msg.contains(&format!("error: {}: {device}: interface:", path.display())), "{msg}");
        assert!(msg.contains("no such interface") && !msg.contains("panicked"), "{msg}");
    }
    if !is_root() {
        eprintln!(
            "SKIPPED the privilege cases: they run the binary as `nobody` through runuser, which needs root"
        );
        return;
    }
    let (code, msg) = run("af_packet:lo", Some("nobody"));
    assert_eq!(code, Some(2), "{msg}");
    assert!(msg.contains("af_packet:lo") && msg.contains("needs root or CAP_NET_RAW"), "{msg}");
    let (code, msg) = run("af_xdp:lo", Some("nobody"));
    assert_eq!(code, Some(2), "{msg}");
    assert!(msg.contains("af_xdp:lo") && msg.contains("needs root or CAP_NET_ADMIN"), "{msg}");
    let (code, msg) = run("tap:sy-notap0", Some("nobody"));
    assert_eq!(code, Some(2), "{msg}");
    assert!(msg.contains("tap:sy-notap0") && msg.contains("needs root or CAP_NET_ADMIN"), "{msg}");
}

/// A live run on DPDK without hardware or root: a `net_ring` virtual device
/// (what is sent comes back), and an EAL failure at start.
#[cfg(feature = "dpdk")]
mod dpdk {
    use super::*;

    const EAL: &str = "--no-huge --no-pci --no-shconf -m 256 -l 0 --no-telemetry";

    #[test]
    fn run_on_a_net_ring_port_starts_announces_and_stops() {
        let dir = Scratch::new("dpdk-ring");
        let path = dir.file("ring.toml");
        std::fs::write(&path, live_config(&format!("dpdk:{EAL} --vdev=net_ring0"))).unwrap();
        let out = bin().args(["run", "--seconds", "1", "--config"]).arg(&path).output().unwrap();
        let msg = text(&out);
        assert!(out.status.success(), "{msg}");
        assert!(msg.contains(&format!("running on dpdk:{EAL} --vdev=net_ring0")), "{msg}");
        // Its announcements of 198.18.0.2 and the VIP went out and, the
        // ring being a loop, came back in.
        let after = |key: &str| {
            let rest = &msg[msg.find(key).unwrap_or_else(|| panic!("{key}: {msg}")) + key.len()..];
            rest.trim_start().split(|c: char| !c.is_ascii_digit()).next().unwrap().parse::<u64>()
        };
        assert_eq!(after("announcements").unwrap(), 2, "{msg}");
        let (rx, tx) = (after("frames in").unwrap(), after("frames out").unwrap());
        assert!(tx >= 2 && rx == tx, "frames in {rx}, out {tx}: {msg}");
    }

    #[test]
    fn an_eal_failure_is_a_clear_error_at_start_not_a_panic() {
        let dir = Scratch::new("dpdk-bad");
        let path = dir.file("bad.toml");
        std::fs::write(&path, live_config(&format!("dpdk:{EAL} --vdev=net_nonexistent0"))).unwrap();
        let out = bin().args(["run", "--seconds", "1", "--config"]).arg(&path).output().unwrap();
        let msg = text(&out);
        assert_eq!(out.status.code(), Some(2), "{msg}");
        assert!(
            msg.contains(&format!(
                "error: {}: dpdk:{EAL} --vdev=net_nonexistent0: EAL did not start: No such device",
                path.display()
            )),
            "{msg}"
        );
        assert!(!msg.contains("panicked"), "{msg}");
    }
}
