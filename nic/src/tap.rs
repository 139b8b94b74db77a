//! The `tap:NAME` backend: a Linux TAP interface. Each frame is one `read` or
//! `write` on the TAP descriptor (a system call per frame: the simplest
//! backend, for development and for hosts without packet-socket rights).
//! The interface is created if it does not exist; an existing persistent one
//! (`ip tuntap add dev NAME mode tap`, attached to a bridge) is joined.

use std::os::fd::{AsRawFd, OwnedFd};

use crate::sys;
use crate::{Mbuf, NicError, Pool, Port, PortStats};

/// A TAP port.
pub struct TapPort {
    name: String,
    mac: [u8; 6],
    fd: OwnedFd,
    stats: PortStats,
}

impl TapPort {
    /// Opens (or creates) TAP interface `name`; `mac` is the dataplane's address.
    pub fn open(name: &str, mac: [u8; 6]) -> Result<TapPort, NicError> {
        let fd = sys::open_tap(name).map_err(|e| {
            let hint = match e.raw_os_error() {
                Some(libc::EPERM) | Some(libc::EACCES) => " (needs root or CAP_NET_ADMIN)",
                Some(libc::ENOENT) => " (no /dev/net/tun: load the tun module)",
                Some(libc::EBUSY) => " (another process has it open)",
                _ => "",
            };
            NicError::Device { device: format!("tap:{name}"), reason: format!("{e}{hint}") }
        })?;
        Ok(TapPort { name: name.to_string(), mac, fd, stats: PortStats::default() })
    }

    /// The interface name.
    pub fn name(&self) -> &str {
        &self.name
    }
}

impl Port for TapPort {
    fn rx_burst(&mut self, pool: &mut Pool, out: &mut Vec<Mbuf>, max: usize) -> usize {
        let mut got = 0;
        while got < max {
            let mut m = pool.alloc();
            let room = m.tailroom();
            let Some(buf) = m.resize(room) else {
                pool.free(m);
                break;
            };
            match sys::read(&self.fd, buf) {
                Ok(0) | Err(_) => {
                    pool.free(m);
                    break;
                }
                Ok(n) => {
                    m.truncate(n);
                    self.stats.rx_frames += 1;
                    self.stats.rx_bytes += n as u64;
                    out.push(m);
                    got += 1;
                }
            }
        }
        got
    }

    fn tx_burst(&mut self, pkts: &mut Vec<Mbuf>, pool: &mut Pool) -> usize {
        let mut sent = 0;
        for m in pkts.iter() {
            match sys::write(&self.fd, m.data()) {
                Ok(true) => {
                    self.stats.tx_frames += 1;
                    self.stats.tx_bytes += m.len() as u64;
                    sent += 1;
                }
                Ok(false) | Err(_) => break,
            }
        }
        for m in pkts.drain(..sent) {
            pool.free(m);
        }
        self.stats.tx_full += pkts.len() as u64;
        sent
    }

    fn mac(&self) -> [u8; 6] {
        self.mac
    }

    fn stats(&self) -> PortStats {
        self.stats
    }

    fn wait(&mut self, timeout: std::time::Duration) {
        sys::wait_readable_for(&[self.fd.as_raw_fd()], timeout);
    }

    fn wait_fd(&self) -> Option<std::os::fd::RawFd> {
        Some(self.fd.as_raw_fd())
    }
}
