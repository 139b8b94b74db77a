//! Frames per second through the DPDK backend on a `net_ring` loopback, in
//! three ways, side by side in one run (each round transmits a burst of 32
//! frames and receives them back):
//!
//! * `copy both ways`: frames built in our own buffers, copied into DPDK
//!   mbufs to send, and each received one copied out into one of ours (what
//!   the backend did before it wrapped DPDK's mbufs);
//! * `copy on transmit`: built in our buffers, received zero copy;
//! * `forward`: the received frames sent on again as they are (an L4
//!   forwarder's path), zero copy both ways.
//!
//! Bounded: 2 s or 50 million frames per size and way, whichever comes first.
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
    let mut pool = Pool::with_count(8 * BURST);
    for size in [64usize, 512, 1514] {
        let frame = vec![0xa5u8; size];
        let mut rates = Vec::new();
        for way in ["copy both ways", "copy on transmit", "forward"] {
            let (mut frames, mut rounds) = (0u64, 0u64);
            let mut pkts = Vec::with_capacity(BURST);
            let mut back = Vec::with_capacity(BURST);
            // `forward` starts from one burst in flight and keeps it moving.
            if way == "forward" {
                while pkts.len() < BURST {
                    let mut m = pool.alloc();
                    m.fill(&frame);
                    pkts.push(m);
                }
            }
            let start = Instant::now();
            while frames < 50_000_000
                && (rounds % 1024 != 0 || start.elapsed() < Duration::from_secs(2))
            {
                if way != "forward" {
                    while pkts.len() < BURST {
                        let mut m = pool.alloc();
                        m.fill(&frame);
                        pkts.push(m);
                    }
                }
                port.tx_burst(&mut pkts, &mut pool);
                port.rx_burst(&mut pool, &mut back, BURST);
                frames += back.len() as u64;
                match way {
                    "copy both ways" => {
                        for m in back.drain(..) {
                            let mut ours = pool.alloc();
                            ours.fill(m.data());
                            pool.free(m);
                            pool.free(ours);
                        }
                    }
                    "copy on transmit" => back.drain(..).for_each(|m| pool.free(m)),
                    _ => pkts.append(&mut back),
                }
                rounds += 1;
            }
            for m in pkts.drain(..).chain(back.drain(..)) {
                pool.free(m);
            }
            let s = start.elapsed().as_secs_f64();
            let rate = frames as f64 / s / 1e6;
            rates.push(rate);
            println!(
                "{size:>5}-byte frames, {way:<16}: {rate:.2} Mframes/s ({:.2} Gbit/s) tx+rx on one core",
                frames as f64 * size as f64 * 8.0 / s / 1e9
            );
        }
        println!("{size:>5}-byte frames: forward / copy both ways = {:.2}x", rates[2] / rates[0]);
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
