//! Session tickets sealed and opened without a lock between workers.
//!
//! rustls's `Ticketer` keeps its keys behind an `RwLock` that every thread
//! takes, and reads the clock through, for each ticket sealed or opened: a
//! cache line all workers write. Here they share only a secret that never
//! changes. Time since start is cut into periods of [`PERIOD_SECS`]; a
//! period's AES-256-GCM key is HMAC-SHA256(secret, label, period). Each thread
//! derives a period's key the first time it needs it and keeps it in a small
//! cache of its own. A ticket names its period, so whichever worker (or engine
//! thread) a resuming client reaches opens it. Tickets of the current and the
//! previous period open, so a ticket lives between one and two periods, as
//! rustls's do (6 h periods, 12 h announced lifetime); the keys of a period go
//! with it.
//!
//! A ticket is `period (4 bytes, big-endian) | nonce (12) | sealed state | tag (16)`,
//! the period authenticated as associated data. Nonces are random: at most
//! 2^32 tickets a key (NIST SP 800-38D, 8.3) is about 200,000 a second for a
//! whole period.

use std::cell::RefCell;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use aws_lc_rs::aead::{AES_256_GCM, Aad, LessSafeKey, NONCE_LEN, Nonce, UnboundKey};
use aws_lc_rs::hmac;
use zeroize::Zeroize;

/// Seconds a period's key seals tickets.
pub(crate) const PERIOD_SECS: u64 = 6 * 60 * 60;

const HEAD: usize = 4 + NONCE_LEN;
const TAG: usize = 16;
/// Keys a thread keeps: the current and previous period's of a few listeners.
const CACHED: usize = 8;
const LABEL: &[u8] = b"switchyard tls13 ticket key";

/// Ticket keys shared by every worker of a listener (see the module).
pub(crate) struct Tickets {
    /// Tells this set's keys from another's in the threads' caches.
    id: u64,
    secret: [u8; 32],
    start: Instant,
}

/// A period's key, as a thread keeps it.
struct Cached {
    id: u64,
    period: u32,
    key: LessSafeKey,
}

thread_local! {
    static KEYS: RefCell<Vec<Cached>> = const { RefCell::new(Vec::new()) };
}

impl Tickets {
    /// A new set with a random secret; `None` if the system has no randomness.
    pub(crate) fn new() -> Option<Tickets> {
        static IDS: AtomicU64 = AtomicU64::new(0);
        let mut secret = [0u8; 32];
        aws_lc_rs::rand::fill(&mut secret).ok()?;
        Some(Tickets { id: IDS.fetch_add(1, Ordering::Relaxed), secret, start: Instant::now() })
    }

    fn period_now(&self) -> u32 {
        (self.start.elapsed().as_secs() / PERIOD_SECS) as u32
    }

    /// Runs `f` with the key of `period`, derived if this thread has not yet.
    fn with_key<R>(&self, period: u32, f: impl FnOnce(&LessSafeKey) -> R) -> Option<R> {
        KEYS.with(|keys| {
            let mut keys = keys.borrow_mut();
            let found = keys.iter().position(|k| k.id == self.id && k.period == period);
            let i = match found {
                Some(i) => i,
                None => {
                    let mac = hmac::sign(
                        &hmac::Key::new(hmac::HMAC_SHA256, &self.secret),
                        &[LABEL, &period.to_be_bytes()].concat(),
                    );
                    let key = LessSafeKey::new(UnboundKey::new(&AES_256_GCM, mac.as_ref()).ok()?);
                    if keys.len() >= CACHED {
                        keys.remove(0);
                    }
                    keys.push(Cached { id: self.id, period, key });
                    keys.len() - 1
                }
            };
            Some(f(&keys[i].key))
        })
    }

    /// `plain` sealed in a ticket of `period`.
    fn seal_in(&self, period: u32, plain: &[u8]) -> Option<Vec<u8>> {
        let mut nonce = [0u8; NONCE_LEN];
        aws_lc_rs::rand::fill(&mut nonce).ok()?;
        let mut out = Vec::with_capacity(HEAD + plain.len() + TAG);
        out.extend_from_slice(&period.to_be_bytes());
        out.extend_from_slice(&nonce);
        out.extend_from_slice(plain);
        let tag = self.with_key(period, |key| {
            key.seal_in_place_separate_tag(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(period.to_be_bytes()),
                &mut out[HEAD..],
            )
        })?;
        out.extend_from_slice(tag.ok()?.as_ref());
        Some(out)
    }

    /// The state sealed in `ticket`, if it is one of ours from period `now`
    /// or the one before, and unaltered.
    fn open_at(&self, now: u32, ticket: &[u8]) -> Option<Vec<u8>> {
        if ticket.len() < HEAD + TAG {
            return None;
        }
        let period = u32::from_be_bytes(ticket[..4].try_into().ok()?);
        if period != now && period.checked_add(1) != Some(now) {
            return None;
        }
        let nonce = Nonce::try_assume_unique_for_key(&ticket[4..HEAD]).ok()?;
        let mut state = ticket[HEAD..].to_vec();
        let n = self.with_key(period, |key| {
            key.open_in_place(nonce, Aad::from(period.to_be_bytes()), &mut state).map(|p| p.len())
        })?;
        state.truncate(n.ok()?);
        Some(state)
    }
}

impl Drop for Tickets {
    fn drop(&mut self) {
        self.secret.zeroize();
    }
}

impl std::fmt::Debug for Tickets {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tickets").field("id", &self.id).finish_non_exhaustive()
    }
}

impl rustls::server::ProducesTickets for Tickets {
    fn enabled(&self) -> bool {
        true
    }

    fn lifetime(&self) -> u32 {
        (2 * PERIOD_SECS) as u32
    }

    fn encrypt(&self, plain: &[u8]) -> Option<Vec<u8>> {
        self.seal_in(self.period_now(), plain)
    }

    fn decrypt(&self, cipher: &[u8]) -> Option<Vec<u8>> {
        self.open_at(self.period_now(), cipher)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rustls::server::ProducesTickets;

    #[test]
    fn a_ticket_opens_on_another_thread_and_in_the_next_period_only() {
        let t = std::sync::Arc::new(Tickets::new().unwrap());
        let ticket = t.encrypt(b"session state").unwrap();
        assert_eq!(ticket.len(), HEAD + 13 + TAG);
        assert_eq!(t.decrypt(&ticket).as_deref(), Some(&b"session state"[..]));
        // Another thread derives the same key (its cache starts empty).
        let t2 = t.clone();
        let other = std::thread::spawn(move || t2.decrypt(&ticket)).join().unwrap();
        assert_eq!(other.as_deref(), Some(&b"session state"[..]));

        let old = t.seal_in(7, b"x").unwrap();
        assert_eq!(t.open_at(7, &old).as_deref(), Some(&b"x"[..]));
        assert_eq!(t.open_at(8, &old).as_deref(), Some(&b"x"[..]));
        assert_eq!(t.open_at(9, &old), None, "two periods on");
        assert_eq!(t.open_at(6, &old), None, "a period not begun");
        // Each period has its own key: the label rewritten to the next period fails.
        let mut moved = old.clone();
        moved[..4].copy_from_slice(&8u32.to_be_bytes());
        assert_eq!(t.open_at(8, &moved), None);
    }

    #[test]
    fn altered_short_or_foreign_tickets_do_not_open() {
        let (a, b) = (Tickets::new().unwrap(), Tickets::new().unwrap());
        let ticket = a.encrypt(b"state of a session").unwrap();
        assert_eq!(b.decrypt(&ticket), None, "another listener's key");
        for i in 0..ticket.len() {
            let mut t = ticket.clone();
            t[i] ^= 0x01;
            assert_eq!(a.decrypt(&t), None, "byte {i} flipped");
        }
        for n in 0..HEAD + TAG {
            assert_eq!(a.decrypt(&ticket[..n]), None, "{n} bytes");
        }
        assert_eq!(a.decrypt(&ticket[..ticket.len() - 1]), None);
        // Two tickets of one state differ (fresh nonces).
        assert_ne!(a.encrypt(b"s").unwrap(), a.encrypt(b"s").unwrap());
        // Many listeners' keys in one thread's cache: the oldest go, and are
        // derived again when needed.
        let many: Vec<Tickets> = (0..2 * CACHED).map(|_| Tickets::new().unwrap()).collect();
        let sealed: Vec<Vec<u8>> = many.iter().map(|t| t.encrypt(b"m").unwrap()).collect();
        for (t, s) in many.iter().zip(&sealed).rev() {
            assert_eq!(t.decrypt(s).as_deref(), Some(&b"m"[..]));
        }
    }
}
