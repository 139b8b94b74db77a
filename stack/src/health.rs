//! Active health checks by TCP connect: each target is probed every interval
//! from the stack's own TCP; `rise` consecutive successes mark it up and `fall`
//! consecutive failures (refused, reset or timed out) mark it down. Sans-IO: it
//! opens connections through [`TcpApi`] and is told their events.

use std::net::SocketAddr;

use crate::tcp::{ConnId, TcpApi, TcpEvent};
use crate::{Duration, Instant};

/// How one target is checked.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CheckConfig {
    /// Time between the starts of two probes.
    pub interval: Duration,
    /// A probe not connected by then has failed.
    pub timeout: Duration,
    /// Consecutive successes that mark a down target up.
    pub rise: u32,
    /// Consecutive failures that mark an up target down.
    pub fall: u32,
}

impl Default for CheckConfig {
    fn default() -> Self {
        CheckConfig {
            interval: Duration::from_secs(1),
            timeout: Duration::from_secs(1),
            rise: 2,
            fall: 3,
        }
    }
}

/// A change of a target's health.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Change {
    /// The caller's tag of the target.
    pub tag: (u16, u16),
    /// Healthy now.
    pub up: bool,
}

/// Counters of one target.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TargetStats {
    /// Probes that connected.
    pub successes: u64,
    /// Probes refused, reset or timed out.
    pub failures: u64,
    /// Times it went down.
    pub downs: u64,
    /// Times it came back up.
    pub ups: u64,
}

struct Target {
    tag: (u16, u16),
    addr: SocketAddr,
    cfg: CheckConfig,
    up: bool,
    streak: u32,
    next: Instant,
    probe: Option<(ConnId, Instant)>,
    stats: TargetStats,
}

/// The health checker of one worker.
#[derive(Default)]
pub struct HealthChecker {
    targets: Vec<Target>,
    changes: Vec<Change>,
}

impl HealthChecker {
    /// Checks `addr`, tagged `tag` in the changes reported; it starts up, and
    /// the first probe goes out at `start`.
    pub fn add(&mut self, tag: (u16, u16), addr: SocketAddr, cfg: CheckConfig, start: Instant) {
        self.targets.push(Target {
            tag,
            addr,
            cfg,
            up: true,
            streak: 0,
            next: start,
            probe: None,
            stats: TargetStats::default(),
        });
    }

    /// True if `conn` is one of the checker's probes.
    pub fn owns(&self, conn: ConnId) -> bool {
        self.targets.iter().any(|t| t.probe.is_some_and(|(c, _)| c == conn))
    }

    /// Whether a tagged target is up (targets not checked are up).
    pub fn is_up(&self, tag: (u16, u16)) -> bool {
        self.targets.iter().find(|t| t.tag == tag).is_none_or(|t| t.up)
    }

    /// Counters of a tagged target.
    pub fn stats(&self, tag: (u16, u16)) -> Option<TargetStats> {
        self.targets.iter().find(|t| t.tag == tag).map(|t| t.stats)
    }

    fn record(&mut self, i: usize, ok: bool) {
        let t = &mut self.targets[i];
        t.probe = None;
        if ok {
            t.stats.successes += 1;
        } else {
            t.stats.failures += 1;
        }
        // The streak counts results that argue for a change of state.
        if ok != t.up {
            t.streak += 1;
        } else {
            t.streak = 0;
        }
        let needed = if t.up { t.cfg.fall } else { t.cfg.rise };
        if t.streak >= needed.max(1) {
            t.up = ok;
            t.streak = 0;
            if ok {
                t.stats.ups += 1;
            } else {
                t.stats.downs += 1;
            }
            self.changes.push(Change { tag: t.tag, up: ok });
        }
    }

    /// Acts on an event for one of the checker's probes.
    pub fn on_event<T: TcpApi>(&mut self, ev: TcpEvent, tcp: &mut T) {
        let (conn, ok) = match ev {
            TcpEvent::Connected { conn } => (conn, true),
            TcpEvent::Closed { conn, .. } => (conn, false),
            _ => return,
        };
        let Some(i) = self.targets.iter().position(|t| t.probe.is_some_and(|(c, _)| c == conn))
        else {
            return;
        };
        if ok {
            tcp.close(conn);
        }
        self.record(i, ok);
    }

    /// Starts due probes and fails the ones past their timeout.
    pub fn poll<T: TcpApi>(&mut self, now: Instant, tcp: &mut T) {
        for i in 0..self.targets.len() {
            let t = &mut self.targets[i];
            if let Some((conn, started)) = t.probe {
                if now >= started + t.cfg.timeout {
                    tcp.abort(conn);
                    self.record(i, false);
                }
                continue;
            }
            if now < t.next {
                continue;
            }
            t.next = now + t.cfg.interval;
            match tcp.connect(now, t.addr) {
                Ok(conn) => t.probe = Some((conn, now)),
                Err(_) => self.record(i, false),
            }
        }
    }

    /// The next time `poll` has work.
    pub fn poll_at(&self) -> Option<Instant> {
        self.targets
            .iter()
            .map(|t| match t.probe {
                Some((_, started)) => started + t.cfg.timeout,
                None => t.next,
            })
            .min()
    }

    /// Moves the state changes since the last call to `out`.
    pub fn drain_changes(&mut self, out: &mut Vec<Change>) {
        out.append(&mut self.changes);
    }
}
