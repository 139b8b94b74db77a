//! The DPDK backend without hardware: EAL with `--no-huge --no-pci` and a
//! `net_ring` virtual device, whose transmit ring is its receive ring, so
//! every frame sent comes back. EAL starts once per process, so this is one
//! test function; the EAL failure runs in a child process of this binary.

use std::process::Command;
use std::time::{Duration, Instant};

use switchyard_nic::dpdk::DpdkPort;
use switchyard_nic::{Mbuf, Pool, Port, RxCsum};

/// No shared configuration files (so test processes can run side by side),
/// no huge pages, no PCI scan, one lcore.
const EAL: &str = "--no-huge --no-pci --no-shconf -m 128 -l 0 --no-telemetry --vdev=net_ring0";
const BOGUS: &str = "--no-huge --no-pci --no-shconf -m 128 -l 0 --vdev=net_nonexistent0";
const CHILD: &str = "SWITCHYARD_DPDK_TEST_CHILD";
const MAC: [u8; 6] = [0x02, 0x53, 0x59, 0, 0, 2];

/// Frame `i`: Ethernet broadcast from MAC, a test EtherType, a length that
/// varies from 60 to 1514 bytes and a payload that names `i`.
fn frame(i: usize) -> Vec<u8> {
    let len = 60 + (i * 97) % 1455;
    let mut f = vec![0xffu8; 6];
    f.extend_from_slice(&MAC);
    f.extend_from_slice(&[0x88, 0xb5]);
    f.extend((0..len - 14).map(|j| (i * 31 + j) as u8));
    f
}

fn mbufs(pool: &mut Pool, range: std::ops::Range<usize>) -> Vec<Mbuf> {
    range
        .map(|i| {
            let mut m = pool.alloc();
            assert!(m.fill(&frame(i)));
            m
        })
        .collect()
}

/// Receives until `n` frames arrived or a second passed.
fn receive(port: &mut DpdkPort, pool: &mut Pool, n: usize) -> Vec<Mbuf> {
    let mut got = Vec::new();
    let start = Instant::now();
    while got.len() < n && start.elapsed() < Duration::from_secs(1) {
        port.rx_burst(pool, &mut got, 32);
    }
    got
}

#[test]
fn net_ring_loops_frames_back_byte_exact_and_eal_errors_are_clear() {
    if std::env::var(CHILD).is_ok() {
        // The child: EAL must refuse an unknown driver with an error, not abort.
        match DpdkPort::open(BOGUS, 0, MAC) {
            Ok(_) => panic!("EAL started with a bogus --vdev"),
            Err(e) => println!("CHILD ERROR: {e}"),
        }
        return;
    }
    let me = std::env::current_exe().unwrap();
    let out = Command::new(me)
        .args(["--exact", "net_ring_loops_frames_back_byte_exact_and_eal_errors_are_clear"])
        .args(["--nocapture", "--test-threads=1"])
        .env(CHILD, "1")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "child: {stdout}{}", String::from_utf8_lossy(&out.stderr));
    let at = stdout.find("CHILD ERROR").unwrap_or_else(|| panic!("no error line: {stdout}"));
    let line = stdout[at..].lines().next().unwrap_or_default();
    assert!(line.contains(&format!("dpdk:{BOGUS}: EAL did not start")), "{line}");
    assert!(line.contains("No such device (rte_errno 19"), "{line}");

    // EAL pins its caller to lcore 0 (`-l 0`); the port gives the thread its
    // CPUs back, or every worker started later would share one.
    let cpus = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1);
    let mut port = match DpdkPort::open(EAL, 0, MAC) {
        Ok(p) => p,
        Err(e) => panic!(
            "DPDK could not open a net_ring port ({e}); with --no-huge and a virtual device \
             nothing of the kernel is needed, so this is a bug or a broken DPDK install"
        ),
    };
    assert_eq!(port.driver(), "net_ring");
    assert_eq!(std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1), cpus);
    assert_eq!(port.mac(), MAC);
    // net_ring verifies no checksums: the stack must.
    assert!(!port.rx_csum_offload());
    let full = port.pool_free();

    // Same EAL again is fine (a second port would be); other arguments are not.
    let e = DpdkPort::open("--no-huge --vdev=net_ring1", 0, MAC).err().expect("second EAL");
    assert!(e.to_string().contains("EAL already runs in this process"), "{e}");
    let e = DpdkPort::open(EAL, 7, MAC).err().expect("port 7");
    assert!(e.to_string().contains("no DPDK port 7: 1 port(s) found"), "{e}");

    let mut pool = Pool::with_count(4096);
    // 200 frames out in bursts, back byte-exact and in order.
    let mut pkts = mbufs(&mut pool, 0..200);
    let mut sent = 0;
    while !pkts.is_empty() {
        let n = port.tx_burst(&mut pkts, &mut pool);
        assert!(n > 0, "ring full with {} frames in it", sent);
        sent += n;
    }
    let back = receive(&mut port, &mut pool, 200);
    assert_eq!(back.len(), 200);
    let mut bytes = 0;
    for (i, m) in back.iter().enumerate() {
        assert_eq!(m.data(), &frame(i)[..], "frame {i}");
        assert_eq!(m.rx_csum(), RxCsum::Unchecked);
        bytes += m.len() as u64;
    }
    let s = port.stats();
    assert_eq!((s.tx_frames, s.rx_frames, s.tx_bytes, s.rx_bytes), (200, 200, bytes, bytes));
    let d = port.device_stats();
    // (net_ring counts frames, not bytes.)
    assert_eq!((d.opackets, d.ipackets, d.oerrors, d.imissed), (200, 200, 0, 0));
    // Zero copy: what came in lives in DPDK's mbufs (our pool gave nothing),
    // and goes out again without a copy: rewritten in place (a MAC swap, as
    // a forwarder does), sent, received again.
    assert!(back.iter().all(|m| m.is_device_buffer()));
    assert_eq!(port.pool_free(), full - 200, "the received frames hold their mbufs");
    let heap = pool.stats();
    let mut fwd = back;
    for m in fwd.iter_mut() {
        let d = m.data_mut();
        let (dst, src) = d.split_at_mut(6);
        dst.swap_with_slice(&mut src[..6]);
    }
    let expect: Vec<Vec<u8>> = fwd.iter().map(|m| m.data().to_vec()).collect();
    while !fwd.is_empty() {
        assert!(port.tx_burst(&mut fwd, &mut pool) > 0);
    }
    assert_eq!(port.pool_free(), full - 200, "sent without taking a copy's mbuf");
    let again = receive(&mut port, &mut pool, 200);
    assert!(again.iter().zip(&expect).all(|(m, e)| m.data() == &e[..]));
    assert_eq!(pool.stats(), heap, "our pool was not touched by the zero-copy frames");
    for m in again {
        pool.free(m);
    }
    assert_eq!(port.pool_free(), full, "freed frames go back to DPDK's pool");

    // More frames than the ring holds: what it cannot take stays with the
    // caller, is counted, and its DPDK mbufs are freed (none leak).
    let mut pkts = mbufs(&mut pool, 0..3000);
    let n = port.tx_burst(&mut pkts, &mut pool);
    assert!(n > 0 && n < 3000, "sent {n} of 3000");
    assert_eq!(pkts.len(), 3000 - n);
    assert_eq!(port.stats().tx_full, (3000 - n) as u64);
    assert_eq!(port.pool_free(), full - n as u32, "only the frames in the ring are out");
    let back = receive(&mut port, &mut pool, n);
    assert_eq!(back.len(), n);
    assert!(back.iter().enumerate().all(|(i, m)| m.data() == &frame(i)[..]));
    drop(back);
    assert_eq!(port.pool_free(), full, "every mbuf is back in the pool");
    eprintln!(
        "dpdk: net_ring took {n} of 3000 frames at once; pool {full} of {} mbufs free",
        port.pool_size()
    );

    // Received frames may outlive their port (a dispatcher's rings): the
    // mempool goes only with the last of them, and they stay readable.
    let mut pkts = mbufs(&mut pool, 0..10);
    while !pkts.is_empty() {
        port.tx_burst(&mut pkts, &mut pool);
    }
    let held = receive(&mut port, &mut pool, 10);
    drop(port);
    assert!(held.iter().enumerate().all(|(i, m)| m.data() == &frame(i)[..]));
    drop(held);
}
