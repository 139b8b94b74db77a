//! `switchyard replay`: a generated trace (seeded, pcap) through the whole
//! dataplane; every flow of the trace is opened by L4, the frames sent go to
//! the backends, and the same seed gives the same bytes.

use std::process::Command;

use switchyard_bench::trace::{TraceParams, generate, write_pcap};

const CONFIG: &str = r#"
[device]
nic = "sim"
mac = "02:53:59:00:00:02"
addresses = ["198.18.0.2/15"]

[l4]
table_capacity = 65536

[[listener]]
name = "pg"
mode = "l4"
address = "198.18.0.10:5432"
pool = "pg"
scheduler = "maglev"

[[listener]]
name = "pg-udp"
mode = "l4"
protocol = "udp"
address = "198.18.0.10:5432"
pool = "pg"

[[pool]]
name = "pg"
backends = [{ name = "pg-1", address = "198.18.1.21:5432" }, { name = "pg-2", address = "198.18.1.22:5432" }]

[sim]
seconds = 1
"#;

fn number_after(out: &str, key: &str) -> Option<u64> {
    let rest = &out[out.find(key)? + key.len()..];
    rest.trim_start().split(|c: char| !c.is_ascii_digit()).next()?.parse().ok()
}

#[test]
fn a_generated_trace_replays_through_every_layer() {
    let dir = std::env::temp_dir().join(format!("switchyard-replay-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let params = TraceParams {
        flows: 5000,
        concurrency: 500,
        small: false,
        backends: vec!["198.18.1.21".parse().unwrap(), "198.18.1.22".parse().unwrap()],
        ..TraceParams::default()
    };
    let (frames, sum) = generate(&params);
    let (again, _) = generate(&params);
    assert!(frames.iter().zip(&again).all(|(a, b)| a.frame == b.frame && a.micros == b.micros));
    assert!(sum.tcp_flows > 4000 && sum.udp_flows > 300, "{sum:?}");
    let trace = dir.join("trace.pcap");
    write_pcap(&trace, &frames).unwrap();
    let cfg = dir.join("lb.toml");
    std::fs::write(&cfg, CONFIG).unwrap();
    let out_pcap = dir.join("out.pcap");
    let out = Command::new(env!("CARGO_BIN_EXE_switchyard"))
        .arg("replay")
        .arg(&trace)
        .arg("--config")
        .arg(&cfg)
        .arg("--out")
        .arg(&out_pcap)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(out.status.success(), "{text}{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(number_after(&text, "frames in"), Some(sum.frames), "{text}");
    assert_eq!(
        number_after(&text, "listener pg (l4): new flows"),
        Some(u64::from(sum.tcp_flows)),
        "{text}"
    );
    assert_eq!(
        number_after(&text, "listener pg-udp (l4): new flows"),
        Some(u64::from(sum.udp_flows)),
        "{text}"
    );
    assert!(!text.contains("drop "), "nothing dropped: {text}");
    // Every frame but the ARP replies came in for L4 and went out to a backend.
    let sent = number_after(&text, "frames out").unwrap();
    assert_eq!(sent, sum.frames - 2, "{text}");
    if let Ok(o) = Command::new("tshark")
        .arg("-r")
        .arg(&out_pcap)
        .args(["-T", "fields", "-e", "ip.dst"])
        .output()
    {
        let dsts = String::from_utf8_lossy(&o.stdout);
        assert_eq!(dsts.lines().count() as u64, sent, "tshark reads every frame");
        assert!(dsts.lines().all(|d| d == "198.18.1.21" || d == "198.18.1.22"), "only to backends");
    }
    let _ = std::fs::remove_dir_all(&dir);
}
