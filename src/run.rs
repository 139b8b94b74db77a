//! Running the dataplane: on the simulated network (with a live table and a
//! summary) or over a pcap capture (with counters at the end).

use std::io::{IsTerminal, Write};
use std::path::PathBuf;
use std::process::ExitCode;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use switchyard_nic::dispatch::Dispatcher;
use switchyard_nic::gso::Merge;
use switchyard_nic::pcap::PcapPort;
use switchyard_nic::steer::Steering;
use switchyard_nic::{NicError, Port, PortStats};
use switchyard_stack::WorkerSlot;
use switchyard_stack::{Duration, Instant};
use switchyard_tls::EngineWait;

use crate::admin::{AdminRequest, AdminSocket};
use crate::config::{Config, NicSpec, TlsEngine};
use crate::report::Snapshot;
use crate::worker::Dataplane;
use crate::world::World;

/// How to run a simulation.
pub struct SimOptions {
    /// Pace virtual time to the wall clock (the demo); otherwise run flat out.
    pub pace: bool,
    /// Record the load balancer's link.
    pub pcap: Option<PathBuf>,
    /// Heading of the live table.
    pub title: String,
    /// Serve operator commands on this Unix socket (see [`crate::admin`]).
    pub admin: Option<PathBuf>,
}

/// Runs a configuration with a `[sim]` section; exit status 1 if any client saw
/// an error or anything carried no traffic.
pub fn sim(cfg: &Config, opts: &SimOptions) -> ExitCode {
    let mut world = match World::build(cfg) {
        Ok(w) => w,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(2);
        }
    };
    if let Some(p) = &opts.pcap
        && let Err(e) = world.tap_lb(p)
    {
        eprintln!("error: {e}");
        return ExitCode::from(2);
    }
    let admin = match bind_admin(opts.admin.as_deref()) {
        Ok(a) => a,
        Err(code) => return code,
    };
    let seed = world.net.seed();
    let tty = std::io::stdout().is_terminal();
    let wall = std::time::Instant::now();
    let mut prev = Snapshot::take(&world);
    let mut steps = 0u32;
    let step = Duration::from_millis(100);
    let finished = world.run(step, Duration::from_secs(30), |w| {
        steps += 1;
        if let Some(a) = &admin {
            let mut lb = w.lb.borrow_mut();
            let lb = &mut *lb;
            let (port, since) = (&lb.port, (w.net.now() - w.start).total_micros() as f64 / 1e6);
            a.serve(&mut lb.dp, Some(&|dp: &Dataplane| worker_report(cfg, dp, port, since)));
        }
        if opts.pace {
            let virt = std::time::Duration::from_micros((w.net.now() - w.start).total_micros());
            if let Some(ahead) = virt.checked_sub(wall.elapsed()) {
                std::thread::sleep(ahead);
            }
        }
        if steps.is_multiple_of(10) {
            let snap = Snapshot::take(w);
            let table = snap.live(&prev, seed).replace("switchyard demo", &opts.title);
            let mut out = std::io::stdout().lock();
            if tty {
                let _ = write!(out, "\x1b[H\x1b[J{table}");
            } else {
                let _ = writeln!(out, "{table}");
            }
            let _ = out.flush();
            prev = snap;
        }
    });
    world.net.flush_taps();
    let snap = Snapshot::take(&world);
    println!("{}", snap.summary());
    for (at, line, reply) in &world.admin_log {
        let t = (*at - world.start).total_millis();
        println!("admin at {t} ms: {line} -> {reply}");
    }
    println!("wall time {:.1} s; replay with --seed {seed}", wall.elapsed().as_secs_f64());
    let mut problems = snap.problems();
    if !finished {
        problems.push("clients did not finish within 30 s of virtual time after the end".into());
    }
    if problems.is_empty() {
        println!("result: ok — every listener and backend carried traffic, no client saw an error");
        ExitCode::SUCCESS
    } else {
        for p in &problems {
            println!("problem: {p}");
        }
        println!("result: FAILED (sim seed {seed})");
        ExitCode::from(1)
    }
}

/// Replays a capture through the dataplane and prints what happened.
pub fn pcap(cfg: &Config) -> ExitCode {
    let NicSpec::Pcap { input, output } = &cfg.device.nic else {
        return ExitCode::from(2);
    };
    let spec = match output {
        Some(o) => format!("{input},{o}"),
        None => input.clone(),
    };
    let mut port = match PcapPort::open_spec(cfg.device.mac, &spec) {
        Ok(p) => p,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(2);
        }
    };
    let mut dp = match Dataplane::new(cfg) {
        Ok(d) => d,
        Err(e) => {
            eprintln!("error: {}: {e}", cfg.file);
            return ExitCode::from(2);
        }
    };
    // Virtual time: 1 µs per turn of the loop, so runs are repeatable.
    let mut now = Instant::from_micros(0);
    let wall = std::time::Instant::now();
    let mut bar = Progress::new(port.frame_count());
    while !port.rx_exhausted() {
        dp.poll(&mut port, now);
        now += Duration::from_micros(1);
        bar.update(port.stats().rx_frames, wall);
    }
    bar.finish();
    let elapsed = wall.elapsed().as_secs_f64();
    // A second of virtual time for what the capture left in flight
    // (retransmissions, closes), and the handshake steps still queued for
    // the inline engine.
    for _ in 0..100 {
        dp.poll(&mut port, now);
        now += Duration::from_millis(10);
    }
    for _ in 0..100_000 {
        if dp.poll_at(now) != Some(now) {
            break;
        }
        dp.poll(&mut port, now);
        now += Duration::from_micros(1);
    }
    if let Err(e) = port.close_output() {
        eprintln!("error: {e}");
        return ExitCode::from(1);
    }
    print_counters(cfg, &dp, port.stats(), elapsed);
    ExitCode::SUCCESS
}

/// A progress bar on standard error while a replay runs (only when it is a
/// terminal; redrawn at most every 100 ms, checked every 4,096 turns).
struct Progress {
    total: u64,
    turns: u32,
    last: Option<std::time::Instant>,
    on: bool,
}

impl Progress {
    fn new(total: usize) -> Progress {
        use std::io::IsTerminal;
        Progress { total: total as u64, turns: 0, last: None, on: std::io::stderr().is_terminal() }
    }

    fn update(&mut self, done: u64, start: std::time::Instant) {
        self.turns = self.turns.wrapping_add(1);
        if !self.on || !self.turns.is_multiple_of(4096) {
            return;
        }
        let now = std::time::Instant::now();
        if self.last.is_some_and(|l| now - l < std::time::Duration::from_millis(100)) {
            return;
        }
        self.last = Some(now);
        let frac = if self.total == 0 { 1.0 } else { done as f64 / self.total as f64 };
        let width = 40;
        let filled = ((frac * width as f64) as usize).min(width);
        let mpps = done as f64 / (now - start).as_secs_f64().max(1e-9) / 1e6;
        eprint!(
            "\rreplay [{}{}] {:5.1}%  {done}/{} frames  {mpps:.2} Mpps ",
            "#".repeat(filled),
            ".".repeat(width - filled),
            frac * 100.0,
            self.total
        );
    }

    fn finish(&self) {
        if self.on && self.last.is_some() {
            eprintln!();
        }
    }
}

/// The operator socket, if one was asked for; a clear error (exit 2) if it
/// cannot be bound.
fn bind_admin(path: Option<&std::path::Path>) -> Result<Option<AdminSocket>, ExitCode> {
    let Some(p) = path else { return Ok(None) };
    AdminSocket::bind(p).map(Some).map_err(|e| {
        eprintln!("error: admin socket {}: {e}", p.display());
        ExitCode::from(2)
    })
}

/// What a run over a real NIC printed at the end: port, stack and listener
/// counters.
fn print_counters(cfg: &Config, dp: &Dataplane, ps: switchyard_nic::PortStats, elapsed: f64) {
    print!("{}", counters(cfg, dp, ps, elapsed));
}

/// The counters of one worker, as text.
fn counters(cfg: &Config, dp: &Dataplane, ps: switchyard_nic::PortStats, elapsed: f64) -> String {
    use std::fmt::Write as _;
    let mut out = String::new();
    let _ = writeln!(
        out,
        "frames in {} ({} bytes), frames out {} ({} bytes), {:.3} s, {:.2} Mpps, {:.2} Gbit/s in",
        ps.rx_frames,
        ps.rx_bytes,
        ps.tx_frames,
        ps.tx_bytes,
        elapsed,
        ps.rx_frames as f64 / elapsed.max(1e-9) / 1e6,
        ps.rx_bytes as f64 * 8.0 / elapsed.max(1e-9) / 1e9
    );
    if ps.rx_misdirected > 0 {
        let _ = writeln!(out, "port: frames steered to the wrong worker {}", ps.rx_misdirected);
    }
    if ps.tx_gso_frames + ps.tx_gso_refused > 0 {
        let _ = writeln!(
            out,
            "port: large frames of merged TCP segments {}, segments in them {}, refused by the device {}",
            ps.tx_gso_frames, ps.tx_gso_segments, ps.tx_gso_refused
        );
    }
    if dp.pool_stats().misses > 0 {
        let _ = writeln!(
            out,
            "pool: buffers allocated for want of free ones {}",
            dp.pool_stats().misses
        );
    }
    if ps.tx_full + ps.rx_oversize + dp.tx_dropped > 0 {
        let _ = writeln!(
            out,
            "port: transmit ring full {}, oversize frames {}, frames dropped for want of room {}",
            ps.tx_full, ps.rx_oversize, dp.tx_dropped
        );
    }
    let c = dp.stack.counters();
    let _ = writeln!(
        out,
        "stack: arp replies {}, announcements {}, icmp echo replies {}, rst sent {}, to l4 {}, tcp terminated {}, checksums left to the device {}, completed in software {}",
        c.arp_replies_sent,
        c.announcements,
        c.icmp_echo_replies,
        c.rst_sent,
        c.to_l4,
        c.tcp_terminated,
        c.rx_csum_offloaded,
        c.rx_csum_completed
    );
    let t = dp.stack.tcp_stats();
    if t.accepted + t.connected > 0 {
        let _ = writeln!(
            out,
            "tcp: accepted {}, connected {}, closed in order {}, reset or timed out {}, duplicate syns {}, reopened from time-wait {}, refused for a full table {}, shard queue drops {}",
            t.accepted,
            t.connected,
            t.closed,
            t.resets,
            t.duplicate_syns,
            t.time_wait_reopened,
            t.table_full,
            t.shard_queue_drops
        );
    }
    for r in switchyard_stack::DropReason::ALL {
        if c.dropped(r) > 0 {
            let _ = writeln!(out, "drop {:<24} {}", r.name(), c.dropped(r));
        }
    }
    let t = dp.tls.stats();
    if !t.handshakes.is_empty() || t.failed + t.abandoned > 0 {
        let hs: Vec<String> =
            t.handshakes.iter().map(|((v, g), n)| format!("{v} {g}: {n}")).collect();
        let why: Vec<String> = t.failed_by_reason.iter().map(|(r, n)| format!("{r} {n}")).collect();
        let why = if why.is_empty() { String::new() } else { format!(" [{}]", why.join(", ")) };
        let done: u64 = t.handshakes.values().sum();
        let rate = if done > 0 { 100.0 * t.resumed as f64 / done as f64 } else { 0.0 };
        let _ = writeln!(
            out,
            "tls: handshakes [{}], resumed {} ({rate:.1}%), failed {}{}, abandoned {}, timeouts {}, client certificates {}, engine steps {} (withdrawn {})",
            hs.join(", "),
            t.resumed,
            t.failed,
            why,
            t.abandoned,
            t.timeouts,
            t.client_certificates,
            t.engine_steps,
            t.engine_cancelled
        );
        let r = &t.records;
        let _ = writeln!(
            out,
            "tls records (from extracted secrets): sealed {}, opened {}, refused {}, key updates received {}, sent {}",
            r.sealed, r.opened, r.refused, r.key_updates_received, r.key_updates_sent
        );
        let alerts = |m: &std::collections::BTreeMap<String, u64>| {
            m.iter().map(|(a, n)| format!("{a} {n}")).collect::<Vec<_>>().join(", ")
        };
        if !t.alerts_sent.is_empty() || !t.alerts_received.is_empty() {
            let _ = writeln!(
                out,
                "tls alerts: sent [{}], received [{}]",
                alerts(&t.alerts_sent),
                alerts(&t.alerts_received)
            );
        }
    }
    if let Some(line) = t.upstream.summary() {
        let _ = writeln!(out, "{line}");
    }
    for p in dp.l7.pool_stats() {
        for b in p.backends.iter().filter(|b| b.requests > 0) {
            let _ = writeln!(
                out,
                "pool {} backend {} (l7): requests {}, responses {}, connects {}, reuses {}, connect failures {}, 5xx {}, ejections {}",
                p.name,
                b.name,
                b.requests,
                b.responses,
                b.upstream_connects,
                b.upstream_reuses,
                b.connect_failures,
                b.responses_5xx,
                b.ejections
            );
        }
    }
    // Active checks of L7 pools' backends.
    for (pi, p) in cfg.pools.iter().enumerate() {
        for (bi, b) in p.backends.iter().enumerate() {
            let tag = (crate::worker::L7_POOL_TAG | pi as u16, bi as u16);
            if let Some(h) = dp.health.stats(tag) {
                let _ = writeln!(
                    out,
                    "health pool {} backend {}: {}, checks passed {}, failed {}, downs {}, ups {}",
                    p.name,
                    b.name,
                    if dp.health.is_up(tag) { "up" } else { "down" },
                    h.successes,
                    h.failures,
                    h.downs,
                    h.ups
                );
            }
        }
    }
    if dp.l7.peak_pair_bytes() > 0 {
        let _ = writeln!(
            out,
            "l7: peak proxy buffers per connection pair {} bytes",
            dp.l7.peak_pair_bytes()
        );
    }
    let h = dp.h2.stats();
    if h.connections + h.upstream_connections > 0 {
        let _ = writeln!(
            out,
            "http2: connections {}, streams {}, client resets {}, proxy resets {}, protocol errors {}, closed idle {}, upstream connections {}, upstream streams {}",
            h.connections,
            h.streams,
            h.client_resets,
            h.proxy_resets,
            h.protocol_errors,
            h.idle_closed,
            h.upstream_connections,
            h.upstream_streams
        );
        if !h.grpc_status.is_empty() {
            let s: Vec<String> = h.grpc_status.iter().map(|(k, n)| format!("{k}: {n}")).collect();
            let _ = writeln!(out, "grpc-status: {}", s.join(", "));
        }
    }
    for (i, l) in cfg.listeners.iter().enumerate() {
        if let Some(s) = dp.l4.listener_stats(i as u16) {
            let _ = writeln!(
                out,
                "listener {} (l4): new flows {}, packets in {}, out {}, refused {}, bytes in {}, out {}",
                l.name,
                s.flows_new,
                s.packets_in,
                s.packets_out,
                s.flows_refused(),
                s.bytes_in,
                s.bytes_out
            );
            let crate::config::Mode::L4 { pool, .. } = &l.mode else { continue };
            for (b, st) in cfg.pools[*pool].backends.iter().zip(dp.l4.backend_stats(i as u16)) {
                let _ = writeln!(
                    out,
                    "  backend {}: flows {}, packets {}, bytes {}",
                    b.name, st.flows_new, st.packets, st.bytes
                );
            }
        }
        if let Some(s) = dp.l7.listener_stats(i as u16) {
            let groups: Vec<String> = dp
                .tls
                .stats()
                .groups_by_listener
                .iter()
                .filter(|((l, _), _)| usize::from(*l) == i)
                .map(|((_, g), n)| format!("{g} {n}"))
                .collect();
            if !groups.is_empty() {
                let _ =
                    writeln!(out, "listener {} (tls): key exchange {}", l.name, groups.join(", "));
            }
            let _ = writeln!(
                out,
                "listener {} (l7): connections {}, requests {}, 4xx {}, 5xx {}",
                l.name, s.connections_total, s.requests, s.responses_4xx, s.responses_5xx
            );
            let refused: Vec<String> = switchyard_l7::Reject::ALL
                .iter()
                .filter(|r| s.rejected(**r) > 0)
                .map(|r| format!("{} {}", r.name(), s.rejected(*r)))
                .collect();
            if !refused.is_empty() {
                let _ = writeln!(out, "  refused: {}", refused.join(", "));
            }
            if s.timeouts > 0 {
                let _ = writeln!(out, "  timed out (408): {}", s.timeouts);
            }
            for (ri, r) in dp.l7.route_stats(i as u16).unwrap_or(&[]).iter().enumerate() {
                if r.requests == 0 {
                    continue;
                }
                let ms = |h: &hdrhistogram::Histogram<u64>, q: f64| {
                    h.value_at_quantile(q) as f64 / 1000.0
                };
                let [_, ok, redirect, client, server] = r.responses;
                let _ = writeln!(
                    out,
                    "  route {ri}: requests {}, 2xx {ok}, 3xx {redirect}, 4xx {client}, 5xx {server}, bytes in {} out {}, upstream p50 {:.2} ms p99 {:.2} ms, total p50 {:.2} ms p99 {:.2} ms",
                    r.requests,
                    r.bytes_in,
                    r.bytes_out,
                    ms(&r.upstream_us, 0.5),
                    ms(&r.upstream_us, 0.99),
                    ms(&r.total_us, 0.5),
                    ms(&r.total_us, 0.99)
                );
            }
        }
    }
    out
}

/// Opens the kernel (or DPDK) device a live run uses.
fn open_live_port(nic: &NicSpec, mac: [u8; 6]) -> Result<Box<dyn Port + Send>, NicError> {
    match nic {
        NicSpec::Tap { name } => {
            switchyard_nic::tap::TapPort::open(name, mac).map(|p| Box::new(p) as _)
        }
        NicSpec::AfPacket { iface, v3, gso } => {
            use switchyard_nic::afpacket::{AfPacketPort, RxRing};
            let mode = if *v3 { RxRing::Blocks } else { RxRing::Frames };
            let p = AfPacketPort::open(iface, mac, mode)?;
            Ok(Box::new(p.with_gso(*gso)?))
        }
        NicSpec::AfXdp { iface, queue } => {
            switchyard_nic::afxdp::AfXdpPort::open(iface, *queue, mac).map(|p| Box::new(p) as _)
        }
        #[cfg(feature = "dpdk")]
        NicSpec::Dpdk { eal, port } => {
            let p = switchyard_nic::dpdk::DpdkPort::open(eal, *port, mac)?;
            println!(
                "dpdk: port {port} on {}, receive checksum offload {}",
                p.driver(),
                if p.rx_csum_offload() { "on" } else { "off (checked in software)" }
            );
            Ok(Box::new(p))
        }
        #[cfg(not(feature = "dpdk"))]
        NicSpec::Dpdk { .. } => Err(NicError::Device {
            device: nic_label(nic),
            reason:
                "this switchyard was built without DPDK: rebuild with `cargo build --features dpdk`"
                    .into(),
        }),
        NicSpec::Sim | NicSpec::Pcap { .. } => {
            Err(switchyard_nic::NicError::UnknownBackend(nic_label(nic)))
        }
    }
}

/// The device as the configuration names it.
fn nic_label(nic: &NicSpec) -> String {
    match nic {
        NicSpec::Sim => "sim".into(),
        NicSpec::Pcap { input, output: None } => format!("pcap:{input}"),
        NicSpec::Pcap { input, output: Some(o) } => format!("pcap:{input},{o}"),
        NicSpec::Tap { name } => format!("tap:{name}"),
        NicSpec::AfPacket { iface, v3, gso } => format!(
            "af_packet:{iface}{}{}",
            if *v3 { ",v3" } else { "" },
            match gso {
                Merge::Flights => "",
                Merge::All => ",gso",
                Merge::Off => ",nogso",
            }
        ),
        NicSpec::AfXdp { iface, queue } => format!("af_xdp:{iface}/{queue}"),
        NicSpec::Dpdk { eal, port: 0 } => format!("dpdk:{eal}"),
        NicSpec::Dpdk { eal, port } => format!("dpdk:{eal} -- port={port}"),
    }
}

/// How to run on a real NIC.
pub struct LiveOptions {
    /// Stop after this long (otherwise at SIGINT or SIGTERM).
    pub seconds: Option<u32>,
    /// Serve operator commands on this Unix socket.
    pub admin: Option<PathBuf>,
}

/// Runs the dataplane on a kernel device until a signal or `--seconds`, then
/// prints the counters. With `workers = N` each worker is a thread with its
/// own port and dataplane, and every flow reaches the worker that owns it
/// (see `switchyard_nic::steer`): on AF_PACKET each worker has its own
/// socket in a kernel fanout group; on the other devices a software
/// dispatcher on a thread of its own (`dispatch`) shares the one queue (see
/// `switchyard_nic::dispatch`). Nothing is shared between workers but the
/// stop flag and the operator's commands.
pub fn live(cfg: &Config, opts: &LiveOptions) -> ExitCode {
    let (ports, dispatcher) = match open_worker_ports(cfg) {
        Ok(p) => p,
        Err(e) => {
            eprintln!("error: {}: {e}", cfg.file);
            return ExitCode::from(2);
        }
    };
    let admin = match bind_admin(opts.admin.as_deref()) {
        Ok(a) => a,
        Err(code) => return code,
    };
    let stop = Arc::new(AtomicBool::new(false));
    for sig in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        if let Err(e) = signal_hook::flag::register(sig, stop.clone()) {
            eprintln!("error: signal handler: {e}");
            return ExitCode::from(2);
        }
    }
    let limit = opts.seconds.map(|s| std::time::Duration::from_secs(u64::from(s)));
    let n = ports.len();
    // How the backend runs, where it chose when it opened: "(native, copy)".
    let mode = ports.first().and_then(|p| p.mode()).map(|m| format!(" ({m})")).unwrap_or_default();
    let wall = std::time::Instant::now();
    let (ready_tx, ready_rx) = crossbeam_channel::bounded::<Result<(), String>>(n);
    let mut commands = Vec::new();
    let dispatched = dispatcher.is_some();
    let exit = WorkerExit::new();
    let reports = std::thread::scope(|scope| {
        let mut dispatch = None;
        if let Some(mut d) = dispatcher {
            let flag = &*stop;
            let spawned = std::thread::Builder::new().name("dispatch".into()).spawn_scoped(
                scope,
                move || {
                    let start = std::time::Instant::now();
                    d.run(flag);
                    dispatch_counters(&d, start.elapsed().as_secs_f64())
                },
            );
            match spawned {
                Ok(h) => dispatch = Some(h),
                Err(e) => {
                    eprintln!("error: dispatch thread: {e}");
                    stop.store(true, Ordering::Relaxed);
                }
            }
        }
        let mut handles = Vec::new();
        let exit = &exit;
        for (i, port) in ports.into_iter().enumerate() {
            let (tx, rx) = crossbeam_channel::bounded::<AdminRequest>(16);
            commands.push(tx);
            let slot = WorkerSlot { index: i as u16, count: n as u16 };
            let (flag, ready) = (&*stop, ready_tx.clone());
            let worker = std::thread::Builder::new()
                .name(format!("worker-{i}"))
                .spawn_scoped(scope, move || {
                    run_worker(cfg, port, slot, flag, wall, &ready, &rx, exit)
                });
            match worker {
                Ok(h) => handles.push(h),
                Err(e) => {
                    eprintln!("error: worker thread: {e}");
                    stop.store(true, Ordering::Relaxed);
                }
            }
        }
        exit.started.store(handles.len(), Ordering::SeqCst);
        drop(ready_tx);
        // Every worker built its dataplane, or one said why it could not.
        let mut failed = false;
        for r in ready_rx.iter().take(handles.len()) {
            if let Err(e) = r {
                eprintln!("error: {}: {e}", cfg.file);
                failed = true;
            }
        }
        if failed || handles.len() < n || (dispatched && dispatch.is_none()) {
            stop.store(true, Ordering::Relaxed);
        } else {
            let handshakes = match crate::worker::tls_engine(cfg) {
                _ if !cfg.uses_tls() => "",
                TlsEngine::Inline => ", TLS handshakes inline",
                _ if n == 1 => ", TLS handshakes on an engine thread",
                _ => ", TLS handshakes on an engine thread per worker",
            };
            println!(
                "switchyard: running on {}{mode} ({} listeners, {n} worker{}{}{handshakes}){}",
                nic_label(&cfg.device.nic),
                cfg.listeners.len(),
                if n == 1 { "" } else { "s" },
                if dispatched { ", software dispatch" } else { "" },
                limit.map(|l| format!(", for {} s", l.as_secs())).unwrap_or_default()
            );
            let _ = std::io::stdout().flush();
        }
        while !stop.load(Ordering::Relaxed) && limit.is_none_or(|l| wall.elapsed() < l) {
            match &admin {
                Some(a) => a.forward(&commands, std::time::Duration::from_millis(50)),
                None => std::thread::sleep(std::time::Duration::from_millis(50)),
            }
        }
        stop.store(true, Ordering::Relaxed);
        let reports: Vec<Option<(String, PortStats)>> =
            handles.into_iter().map(|h| h.join().ok().flatten()).collect();
        let dispatch = dispatch.map(|h| h.join().ok());
        if failed { None } else { Some((reports, dispatch)) }
    });
    let Some((reports, dispatch)) = reports else { return ExitCode::from(2) };
    let elapsed = wall.elapsed().as_secs_f64();
    let mut total = PortStats::default();
    for (i, r) in reports.iter().enumerate() {
        let Some((text, ps)) = r else {
            eprintln!("error: worker {i} stopped abnormally");
            return ExitCode::from(1);
        };
        if n > 1 {
            println!("worker {i}:");
        }
        print!("{text}");
        total.rx_frames += ps.rx_frames;
        total.rx_bytes += ps.rx_bytes;
        total.tx_frames += ps.tx_frames;
        total.tx_bytes += ps.tx_bytes;
        total.rx_misdirected += ps.rx_misdirected;
    }
    if n > 1 {
        println!(
            "all workers: frames in {} ({} bytes), frames out {} ({} bytes), {elapsed:.3} s, {:.2} Mpps, {:.2} Gbit/s in, steered to the wrong worker {}",
            total.rx_frames,
            total.rx_bytes,
            total.tx_frames,
            total.tx_bytes,
            total.rx_frames as f64 / elapsed.max(1e-9) / 1e6,
            total.rx_bytes as f64 * 8.0 / elapsed.max(1e-9) / 1e9,
            total.rx_misdirected
        );
    }
    match dispatch {
        Some(Some(text)) => print!("{text}"),
        Some(None) => {
            eprintln!("error: the dispatch thread stopped abnormally");
            return ExitCode::from(1);
        }
        None => {}
    }
    ExitCode::SUCCESS
}

/// The software dispatcher's counters, and the device's, as text.
fn dispatch_counters(d: &Dispatcher, elapsed: f64) -> String {
    use std::fmt::Write as _;
    let s = d.stats();
    let list = |v: &[u64]| v.iter().map(u64::to_string).collect::<Vec<_>>().join(", ");
    let mut out = String::new();
    let _ = writeln!(
        out,
        "dispatch: device frames in {} ({} bytes), frames out {} ({} bytes), {elapsed:.3} s; to workers [{}] (neighbor copies {}), from workers [{}]",
        s.device.rx_frames,
        s.device.rx_bytes,
        s.device.tx_frames,
        s.device.tx_bytes,
        list(&s.to_worker),
        s.neighbor_copies,
        list(&s.from_worker)
    );
    let _ = writeln!(
        out,
        "dispatch: receive queue full [{}], transmit retries {}, dropped {}, device ring full {}, oversize frames {}, pool misses {}, sleeps {}",
        list(&s.queue_full),
        s.tx_retries,
        s.tx_dropped,
        s.device.tx_full,
        s.device.rx_oversize,
        s.pool.misses,
        s.sleeps
    );
    if let Some(line) = d.device_counters() {
        out.push_str(&line);
        out.push('\n');
    }
    out
}

/// The workers' ports and the device's owner when they share it. The
/// ports are opened in worker order: one port; or with `workers = N` one
/// AF_PACKET socket per worker in one fanout group, or (every other device)
/// the ports of a software dispatcher that owns the device.
type WorkerPorts = (Vec<Box<dyn Port + Send>>, Option<Dispatcher>);

fn open_worker_ports(cfg: &Config) -> Result<WorkerPorts, NicError> {
    let n = cfg.device.workers as u16;
    let steering = Steering {
        workers: n,
        local_ports: vec![cfg.tcp.ephemeral_ports.clone(), cfg.snat_ports.clone()],
    };
    match &cfg.device.nic {
        NicSpec::AfPacket { iface, v3, gso } if n > 1 => {
            use switchyard_nic::afpacket::{AfPacketPort, RxRing};
            let mode = if *v3 { RxRing::Blocks } else { RxRing::Frames };
            let ports = AfPacketPort::open_workers(iface, cfg.device.mac, mode, &steering)?;
            let mut out: Vec<Box<dyn Port + Send>> = Vec::new();
            for p in ports {
                out.push(Box::new(p.with_gso(*gso)?));
            }
            Ok((out, None))
        }
        nic if n > 1 => {
            let device = open_live_port(nic, cfg.device.mac)?;
            let (d, ports) = Dispatcher::new(device, steering)?;
            Ok((ports.into_iter().map(|p| Box::new(p) as _).collect(), Some(d)))
        }
        nic => Ok((vec![open_live_port(nic, cfg.device.mac)?], None)),
    }
}

/// One worker thread: builds its dataplane (and says so on `ready`), then
/// polls until `stop`; its counters as text at the end.
/// How workers leave together: each reads its counters, then waits (a
/// little) for the others before its port closes. A fanout group that loses
/// a member steers that member's flows to the others, which would count them
/// as misdirected.
struct WorkerExit {
    started: std::sync::atomic::AtomicUsize,
    finished: std::sync::atomic::AtomicUsize,
}

impl WorkerExit {
    fn new() -> WorkerExit {
        WorkerExit { started: usize::MAX.into(), finished: 0.into() }
    }

    /// This worker is done; returns once all are, or after 2 s.
    fn leave(&self) {
        self.finished.fetch_add(1, Ordering::SeqCst);
        let t0 = std::time::Instant::now();
        while self.finished.load(Ordering::SeqCst) < self.started.load(Ordering::SeqCst)
            && t0.elapsed() < std::time::Duration::from_secs(2)
        {
            std::thread::sleep(std::time::Duration::from_millis(1));
        }
    }
}

#[allow(clippy::too_many_arguments)]
fn run_worker(
    cfg: &Config,
    mut port: Box<dyn Port + Send>,
    slot: WorkerSlot,
    stop: &AtomicBool,
    wall: std::time::Instant,
    ready: &crossbeam_channel::Sender<Result<(), String>>,
    admin: &crossbeam_channel::Receiver<AdminRequest>,
    exit: &WorkerExit,
) -> Option<(String, PortStats)> {
    let mut dp = match Dataplane::for_worker(cfg, slot) {
        Ok(d) => {
            let _ = ready.send(Ok(()));
            d
        }
        Err(e) => {
            let _ = ready.send(Err(e.to_string()));
            exit.leave();
            return None;
        }
    };
    // Neighbors learn (or relearn, after a failover) who holds the VIPs.
    dp.announce();
    let start = std::time::Instant::now();
    let mut turns = 0u64;
    while !stop.load(Ordering::Relaxed) {
        let now = Instant::from_micros(wall.elapsed().as_micros() as i64);
        let n = dp.poll(&mut *port, now);
        turns += 1;
        if n == 0 || turns.is_multiple_of(1024) {
            let port = &*port;
            let stats = |d: &Dataplane| worker_report(cfg, d, port, start.elapsed().as_secs_f64());
            crate::admin::serve(admin, &mut dp, Some(&stats));
        }
        if n > 0 {
            continue;
        }
        // Idle: sleep on the device until a frame comes or a timer is due
        // (at most 10 ms, so the stop flag and commands are seen).
        // Handshakes in the TLS engine do not keep the worker spinning (on
        // a core it may share with the engine): it sleeps on the engine's
        // doorbell too, which rings when a step is done.
        let due =
            dp.poll_at_besides_engine(now).map(|t| (t - now).total_micros()).unwrap_or(10_000);
        if due == 0 {
            continue;
        }
        let timeout = std::time::Duration::from_micros(due.min(10_000));
        match dp.tls.engine_wait() {
            EngineWait::Nothing => port.wait(timeout),
            EngineWait::Ready => {}
            EngineWait::Bell(fd) => {
                port.wait_also(timeout, fd);
                dp.tls.engine_woke();
            }
        }
    }
    let elapsed = start.elapsed().as_secs_f64();
    let text = worker_report(cfg, &dp, &*port, elapsed);
    exit.leave();
    Some((text, port.stats()))
}

/// A worker's counters and its device's own, as text: the exit report, and
/// the answer to `show stats` while running.
fn worker_report(cfg: &Config, dp: &Dataplane, port: &dyn Port, elapsed: f64) -> String {
    let mut text = counters(cfg, dp, port.stats(), elapsed);
    if let Some(line) = port.counters() {
        text.push_str(&line);
        text.push('\n');
    }
    text
}
