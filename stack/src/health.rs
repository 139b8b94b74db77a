//! Active health checks: each target is probed every interval from the
//! stack's own TCP, by connecting (L4) or by an HTTP request whose response
//! status, and optionally body, must match (L7); `rise` consecutive successes
//! mark it up and `fall` consecutive failures (refused, reset, timed out, or a
//! wrong answer) mark it down. Sans-IO: it opens connections through
//! [`TcpApi`] and is told their events.

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

/// An HTTP probe: the request sent once connected, and what the response
/// must show.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HttpCheck {
    /// The request, complete (`Connection: close`).
    pub request: Vec<u8>,
    /// Lowest and highest accepted status.
    pub status: (u16, u16),
    /// A byte string the response must contain, if any.
    pub body_contains: Option<Vec<u8>>,
}

impl HttpCheck {
    /// `method path` to `host`, accepting `status` (inclusive range).
    pub fn new(method: &str, path: &str, host: &str, status: (u16, u16)) -> HttpCheck {
        let request = format!(
            "{method} {path} HTTP/1.1\r\nHost: {host}\r\nUser-Agent: switchyard-health\r\nConnection: close\r\n\r\n"
        )
        .into_bytes();
        HttpCheck { request, status, body_contains: None }
    }

    /// The verdict on what arrived so far: `Some(true|false)` once known,
    /// `None` while more bytes could change it. `complete` says the response
    /// has ended (the server closed).
    fn verdict(&self, buf: &[u8], complete: bool) -> Option<bool> {
        let line_end = buf.iter().position(|b| *b == b'\n')?;
        let line = &buf[..line_end];
        // HTTP/1.x SP 3DIGIT SP reason
        let ok_line = line.len() >= 12 && line.starts_with(b"HTTP/1.") && line[8] == b' ';
        let status = std::str::from_utf8(line.get(9..12)?).ok()?.parse::<u16>().ok();
        let Some(status) = status.filter(|_| ok_line) else { return Some(false) };
        if status < self.status.0 || status > self.status.1 {
            return Some(false);
        }
        match &self.body_contains {
            None => Some(true),
            Some(needle) => {
                // In the body: a header (a Server, a cookie) proves nothing.
                let body = buf.windows(4).position(|w| w == b"\r\n\r\n").map(|i| &buf[i + 4..]);
                let found = body.is_some_and(|b| {
                    b.windows(needle.len().max(1)).any(|w| w == needle.as_slice())
                });
                if found {
                    Some(true)
                } else if complete {
                    Some(false)
                } else {
                    None
                }
            }
        }
    }
}

/// Bytes of a probe's response kept for matching.
const PROBE_BUF: usize = 16 * 1024;

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
    http: Option<HttpCheck>,
    buf: Vec<u8>,
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
        self.add_target(tag, addr, cfg, None, start);
    }

    /// Like [`HealthChecker::add`], probing with an HTTP request.
    pub fn add_http(
        &mut self,
        tag: (u16, u16),
        addr: SocketAddr,
        cfg: CheckConfig,
        http: HttpCheck,
        start: Instant,
    ) {
        self.add_target(tag, addr, cfg, Some(http), start);
    }

    fn add_target(
        &mut self,
        tag: (u16, u16),
        addr: SocketAddr,
        cfg: CheckConfig,
        http: Option<HttpCheck>,
        start: Instant,
    ) {
        self.targets.push(Target {
            tag,
            addr,
            cfg,
            up: true,
            streak: 0,
            next: start,
            probe: None,
            http,
            buf: Vec::new(),
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
        t.buf.clear();
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
        let conn = match ev {
            TcpEvent::Connected { conn }
            | TcpEvent::Closed { conn, .. }
            | TcpEvent::Readable { conn }
            | TcpEvent::PeerClosed { conn } => conn,
            _ => return,
        };
        let Some(i) = self.targets.iter().position(|t| t.probe.is_some_and(|(c, _)| c == conn))
        else {
            return;
        };
        let t = &mut self.targets[i];
        let Some(http) = &t.http else {
            // A connect check: connected is healthy, anything else is not.
            match ev {
                TcpEvent::Connected { .. } => {
                    tcp.close(conn);
                    self.record(i, true);
                }
                TcpEvent::Closed { .. } => self.record(i, false),
                _ => {}
            }
            return;
        };
        if let TcpEvent::Connected { .. } = ev {
            // The request is small; a send window that cannot take it is a
            // failed probe.
            if tcp.send(conn, &http.request) != Ok(http.request.len()) {
                tcp.abort(conn);
                self.record(i, false);
            }
            return;
        }
        let mut chunk = [0u8; 2048];
        while t.buf.len() < PROBE_BUF {
            match tcp.recv(conn, &mut chunk) {
                Ok(0) | Err(_) => break,
                Ok(n) => t.buf.extend_from_slice(&chunk[..n]),
            }
        }
        let ended = matches!(ev, TcpEvent::PeerClosed { .. } | TcpEvent::Closed { .. })
            || t.buf.len() >= PROBE_BUF;
        match http.verdict(&t.buf, ended) {
            Some(ok) => {
                if !matches!(ev, TcpEvent::Closed { .. }) {
                    tcp.close(conn);
                }
                self.record(i, ok);
            }
            None if ended => {
                if !matches!(ev, TcpEvent::Closed { .. }) {
                    tcp.abort(conn);
                }
                self.record(i, false);
            }
            None => {}
        }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn http_verdicts() {
        let mut c = HttpCheck::new("GET", "/healthz", "svc", (200, 299));
        assert!(c.request.starts_with(b"GET /healthz HTTP/1.1\r\nHost: svc\r\n"));
        assert_eq!(c.verdict(b"HTTP/1.1 20", false), None, "status line incomplete");
        assert_eq!(c.verdict(b"HTTP/1.1 204 No Content\r\n", false), Some(true));
        assert_eq!(c.verdict(b"HTTP/1.1 503 Busy\r\n", false), Some(false));
        assert_eq!(c.verdict(b"HTTP/1.1 302 Found\r\n", false), Some(false));
        assert_eq!(c.verdict(b"SSH-2.0-OpenSSH\r\n", false), Some(false));
        c.body_contains = Some(b"ready".to_vec());
        let head = b"HTTP/1.1 200 OK\r\nContent-Length: 9\r\n\r\n";
        assert_eq!(c.verdict(head, false), None, "body not seen yet");
        assert_eq!(c.verdict(head, true), Some(false), "ended without the body text");
        assert_eq!(c.verdict(&[&head[..], b"not ready"].concat(), false), Some(true));
        assert_eq!(c.verdict(b"HTTP/1.1 500 x\r\n\r\nready", false), Some(false));
        // The text in a header is not the body's.
        let in_header = b"HTTP/1.1 200 OK\r\nX-State: ready\r\n\r\nbooting";
        assert_eq!(c.verdict(in_header, false), None);
        assert_eq!(c.verdict(in_header, true), Some(false));
    }
}
