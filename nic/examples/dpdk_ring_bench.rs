//! Frames per second through the DPDK backend on a `net_ring` loopback: each
//! round transmits a burst of 32 frames and receives them back, so a frame
//! costs one copy into a DPDK mbuf, the ring, and one copy out into our
//! `Mbuf`. Bounded: 3 s or 50 million frames per size, whichever comes first.
//!
//! `cargo run --release -p switchyard-nic --features dpdk --example dpdk_ring_bench`

use std::time::{Duration, Instant};

use switchyard_nic::dpdk::DpdkPort;
use switchyard_nic::{BURST, Pool, Port};

const EAL: &str = "--no-huge --no-pci --no-shconf -m 256 -l 0 --no-telemetry --vdev=net_ring0";

fn main() {
    let mut port = match DpdkPort::open(EAL, 0, [2, 0x53, 0x59, 0, 0, 2]) {
        Ok(p) => p,
        Err(e) => {
            eprintln!("error: {e}");
            std::process::exit(2);
        }
    };
    let mut pool = Pool::with_count(4 * BURST);
    for size in [64usize, 512, 1514] {
        let frame = vec![0xa5u8; size];
        let (mut frames, mut rounds) = (0u64, 0u64);
        let start = Instant::now();
        let mut pkts = Vec::with_capacity(BURST);
        let mut back = Vec::with_capacity(BURST);
        while frames < 50_000_000
            && (rounds % 1024 != 0 || start.elapsed() < Duration::from_secs(3))
        {
            while pkts.len() < BURST {
                let mut m = pool.alloc();
                m.fill(&frame);
                pkts.push(m);
            }
            port.tx_burst(&mut pkts, &mut pool);
            port.rx_burst(&mut pool, &mut back, BURST);
            frames += back.len() as u64;
            for m in back.drain(..) {
                pool.free(m);
            }
            rounds += 1;
        }
        let s = start.elapsed().as_secs_f64();
        println!(
            "{size:>5}-byte frames: {frames} in {s:.2} s = {:.2} Mframes/s ({:.2} Gbit/s) tx+rx on one core",
            frames as f64 / s / 1e6,
            frames as f64 * size as f64 * 8.0 / s / 1e9
        );
    }
    let st = port.stats();
    println!(
        "port: tx {} rx {} tx_full {}; pool misses {}",
        st.tx_frames,
        st.rx_frames,
        st.tx_full,
        pool.stats().misses
    );
}
