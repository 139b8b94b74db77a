//! The operator's runtime commands, one per line of text, in the spirit of
//! HAProxy's runtime API: read from a Unix socket (`run --admin PATH`) or, in
//! simulations, from `[[sim.admin]]` entries at set times.
//!
//! ```text
//! drain POOL BACKEND     no new flows or requests; those under way finish
//! undrain POOL BACKEND   back in rotation (if its health check passes)
//! show backends          one line per backend: pool, name, state, flows
//! show stats             every counter, as the exit report prints them, now
//! help
//! ```
//!
//! Each reply ends with an empty line. The socket thread only moves lines: each command is carried out by the
//! worker between two turns of its loop, so no state is shared with it.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};

use crossbeam_channel::{Receiver, Sender, TryRecvError};

use crate::worker::Dataplane;

/// A parsed command.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Command {
    /// Drain (`true`) or undrain a backend of a pool.
    Drain {
        /// Pool name.
        pool: String,
        /// Backend name.
        backend: String,
        /// Drain or undrain.
        drain: bool,
    },
    /// List backends with their state.
    ShowBackends,
    /// Every counter so far (the exit report, while running).
    ShowStats,
    /// List the commands.
    Help,
}

/// The commands, for `help` and for errors.
pub const USAGE: &str =
    "commands: drain POOL BACKEND | undrain POOL BACKEND | show backends | show stats | help";

impl Command {
    /// Parses one line.
    pub fn parse(line: &str) -> Result<Command, String> {
        let words: Vec<&str> = line.split_whitespace().collect();
        match words.as_slice() {
            [verb @ ("drain" | "undrain"), pool, backend] => Ok(Command::Drain {
                pool: (*pool).to_string(),
                backend: (*backend).to_string(),
                drain: *verb == "drain",
            }),
            ["drain" | "undrain", ..] => Err(format!("usage: {} POOL BACKEND", words[0])),
            ["show", "backends"] => Ok(Command::ShowBackends),
            ["show", "stats"] => Ok(Command::ShowStats),
            ["help"] => Ok(Command::Help),
            [] => Err(USAGE.to_string()),
            _ => Err(format!("unknown command `{}`; {USAGE}", line.trim())),
        }
    }
}

/// The counters of a worker as text (the exit report's lines), for `show
/// stats`: the caller knows the port and the configuration's names.
pub type Stats<'a> = &'a dyn Fn(&Dataplane) -> String;

/// Carries out one line on a worker's dataplane; the reply to send back
/// (starting with `error:` when the command failed). Without `stats`, `show
/// stats` is an error.
pub fn execute(dp: &mut Dataplane, line: &str) -> String {
    execute_with(dp, line, None)
}

/// [`execute`], with the worker's counters for `show stats`.
pub fn execute_with(dp: &mut Dataplane, line: &str, stats: Option<Stats>) -> String {
    let result = Command::parse(line).and_then(|c| match c {
        Command::Drain { pool, backend, drain } => dp.set_drain(&pool, &backend, drain).map(|n| {
            let verb = if drain { "drained" } else { "undrained" };
            format!("{verb} {pool}/{backend} ({n} listeners)")
        }),
        Command::ShowBackends => Ok(dp.show_backends()),
        Command::ShowStats => match stats {
            Some(f) => Ok(f(dp).trim_end().to_string()),
            None => Err("show stats: not available here".to_string()),
        },
        Command::Help => Ok(USAGE.to_string()),
    });
    match result {
        Ok(s) => s,
        Err(e) => format!("error: {e}"),
    }
}

/// A request from the socket thread: the line and where the reply goes.
pub type AdminRequest = (String, Sender<String>);
type Request = AdminRequest;

/// The admin socket: a thread accepts connections and reads lines; the worker
/// answers them with [`AdminSocket::serve`] between turns.
pub struct AdminSocket {
    path: PathBuf,
    requests: Receiver<Request>,
}

impl AdminSocket {
    /// Binds `path` (an old socket file there is replaced) and starts the
    /// thread that reads commands.
    pub fn bind(path: &Path) -> std::io::Result<AdminSocket> {
        if path.exists() {
            std::fs::remove_file(path)?;
        }
        let listener = UnixListener::bind(path)?;
        let (tx, rx) = crossbeam_channel::bounded::<Request>(64);
        std::thread::Builder::new().name("admin".into()).spawn(move || {
            for stream in listener.incoming().flatten() {
                let tx = tx.clone();
                // One client at a time is plenty for an operator's socket.
                if client(stream, &tx).is_err() {
                    continue;
                }
            }
        })?;
        Ok(AdminSocket { path: path.to_path_buf(), requests: rx })
    }

    /// Answers the commands that arrived since the last call; never blocks.
    /// The number answered.
    pub fn serve(&self, dp: &mut Dataplane, stats: Option<Stats>) -> usize {
        serve(&self.requests, dp, stats)
    }

    /// With several workers: waits up to `timeout` for a command, hands it
    /// to every worker (each carries it out between two turns of its loop)
    /// and answers with their replies merged.
    pub fn forward(&self, workers: &[Sender<Request>], timeout: std::time::Duration) {
        let Ok((line, reply)) = self.requests.recv_timeout(timeout) else { return };
        let mut replies = Vec::with_capacity(workers.len());
        for w in workers {
            let (tx, rx) = crossbeam_channel::bounded(1);
            if w.send((line.clone(), tx)).is_ok()
                && let Ok(r) = rx.recv_timeout(std::time::Duration::from_secs(2))
            {
                replies.push(r);
            }
        }
        let merged = if replies.len() < workers.len() {
            "error: a worker did not answer".to_string()
        } else if Command::parse(&line) == Ok(Command::ShowStats) {
            // Each worker's own counters, one section each.
            let sections: Vec<String> =
                replies.iter().enumerate().map(|(i, r)| format!("worker {i}:\n{r}")).collect();
            sections.join("\n")
        } else {
            merge(&replies)
        };
        let _ = reply.send(merged);
    }
}

/// Answers the commands waiting on `requests`; never blocks. The number
/// answered.
pub fn serve(requests: &Receiver<Request>, dp: &mut Dataplane, stats: Option<Stats>) -> usize {
    let mut n = 0;
    loop {
        match requests.try_recv() {
            Ok((line, reply)) => {
                let _ = reply.send(execute_with(dp, &line, stats));
                n += 1;
            }
            Err(TryRecvError::Empty | TryRecvError::Disconnected) => return n,
        }
    }
}

/// The workers' replies to one command as one: each worker counts only its
/// own flows, so `flows=` of a `show backends` line is summed over them (and
/// a backend is shown drained or down if any worker has it so); for the other
/// commands the workers say the same thing and the first reply stands.
pub fn merge(replies: &[String]) -> String {
    let Some(first) = replies.first() else { return String::new() };
    let mut lines: Vec<(Vec<String>, u64)> = Vec::new();
    for l in first.lines() {
        let words: Vec<String> = l.split_whitespace().map(str::to_string).collect();
        let flows =
            words.last().and_then(|w| w.strip_prefix("flows=")).and_then(|v| v.parse().ok());
        match flows {
            Some(f) if words.len() == 4 => lines.push((words, f)),
            _ => return first.clone(),
        }
    }
    for r in &replies[1..] {
        for (line, (words, flows)) in r.lines().zip(lines.iter_mut()) {
            let w: Vec<&str> = line.split_whitespace().collect();
            if w.len() == 4 && w[..2] == [words[0].as_str(), words[1].as_str()] {
                *flows +=
                    w[3].strip_prefix("flows=").and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
                if w[2] != "up" && words[2] == "up" {
                    words[2] = w[2].to_string();
                }
            }
        }
    }
    lines
        .iter()
        .map(|(w, f)| format!("{} {} {} flows={f}", w[0], w[1], w[2]))
        .collect::<Vec<_>>()
        .join("\n")
}

impl Drop for AdminSocket {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

fn client(stream: UnixStream, tx: &Sender<Request>) -> std::io::Result<()> {
    let mut out = stream.try_clone()?;
    for line in BufReader::new(stream).lines() {
        let line = line?;
        if line.trim().is_empty() {
            continue;
        }
        let (rtx, rrx) = crossbeam_channel::bounded(1);
        if tx.send((line, rtx)).is_err() {
            return Ok(());
        }
        // The worker answers between turns; if it has stopped, say so.
        let reply = rrx
            .recv_timeout(std::time::Duration::from_secs(5))
            .unwrap_or_else(|_| "error: the worker did not answer".into());
        // A reply may have several lines; an empty line ends it.
        writeln!(out, "{reply}\n")?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_commands_and_explains_mistakes() {
        assert_eq!(
            Command::parse("drain pg pg-1"),
            Ok(Command::Drain { pool: "pg".into(), backend: "pg-1".into(), drain: true })
        );
        assert_eq!(
            Command::parse("  undrain  pg  pg-1 "),
            Ok(Command::Drain { pool: "pg".into(), backend: "pg-1".into(), drain: false })
        );
        assert_eq!(Command::parse("show backends"), Ok(Command::ShowBackends));
        assert_eq!(Command::parse("drain pg"), Err("usage: drain POOL BACKEND".into()));
        assert!(Command::parse("reboot").unwrap_err().contains("unknown command `reboot`"));
    }

    #[test]
    fn replies_of_several_workers_merge_into_one() {
        let a = "pg pg-1 up flows=3\npg pg-2 drained flows=1".to_string();
        let b = "pg pg-1 down flows=4\npg pg-2 drained flows=0".to_string();
        assert_eq!(merge(&[a.clone(), b]), "pg pg-1 down flows=7\npg pg-2 drained flows=1");
        let d = "drained pg/pg-1 (1 listeners)".to_string();
        assert_eq!(merge(&[d.clone(), d.clone()]), d);
        assert_eq!(merge(std::slice::from_ref(&a)), a);
    }
}
