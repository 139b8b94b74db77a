//! Session tickets sealed and opened without a lock between workers.
//!
//! rustls's `Ticketer` keeps its keys behind an `RwLock` that every thread
//! takes, and reads the clock through, for each ticket sealed or opened: a
//! cache line all workers write. Here each thread keeps the keys it needs in a
//! cache of its own, and takes the listener's lock only when the period has
//! changed since it last looked: about twice a period.
//!
//! Time since start is cut into periods of [`PERIOD_SECS`]. Period 0 has a
//! random 32-byte secret, and each next period's secret is HMAC-SHA256 of the
//! one before under [`NEXT`], a one-way step; a period's AES-256-GCM key is
//! HMAC-SHA256 of its secret under [`KEY`]. The listener keeps the secret of
//! the previous period only (zeroizing the ones before it as the periods
//! pass), so whoever reads the process's memory can open the tickets of that
//! period and later ones, never older ones: the forward secrecy that rustls's
//! `ProducesTickets::lifetime` asks key rolling to give. A thread's cache
//! holds, for each listener, the keys of its current and previous period, and
//! forgets them when it next finds the period changed, or the listener gone.
//!
//! A ticket names its period, so whichever worker (or engine thread) a
//! resuming client reaches opens it. Tickets of the current and the previous
//! period open, so a ticket lives between one and two periods, as rustls's do
//! (6 h periods, 12 h announced lifetime).
//!
//! A ticket is `period (4 bytes, big-endian) | nonce (12) | sealed state | tag (16)`,
//! the period authenticated as associated data. A nonce is the sealing
//! thread's number (4 bytes, one per thread in the process) and that thread's
//! count of tickets sealed (8 bytes), so no two tickets share a nonce, however
//! many are sealed under one key; random nonces would bound a key to 2^32
//! tickets (NIST SP 800-38D, 8.3), about 200,000 a second for a period. The
//! count tells a client how many tickets its thread has sealed; it says
//! nothing about the sessions in them.

use std::cell::{Cell, RefCell};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::Instant;

use aws_lc_rs::aead::{AES_256_GCM, Aad, LessSafeKey, NONCE_LEN, Nonce, UnboundKey};
use zeroize::Zeroize;

use crate::hkdf::hmac_sha256;

/// Seconds a period's key seals tickets.
pub(crate) const PERIOD_SECS: u64 = 6 * 60 * 60;

const HEAD: usize = 4 + NONCE_LEN;
const TAG: usize = 16;
/// The label of the step from a period's secret to the next one's.
const NEXT: &[u8] = b"switchyard tls ticket secret, next period";
/// The label of a period's key.
const KEY: &[u8] = b"switchyard tls ticket key";

/// Ticket keys shared by every worker of a listener (see the module).
pub(crate) struct Tickets {
    shared: Arc<Shared>,
}

struct Shared {
    start: Instant,
    ratchet: Mutex<Ratchet>,
}

/// The oldest secret still kept, and its period.
struct Ratchet {
    period: u32,
    secret: [u8; 32],
}

/// Replaces a period's secret with the next period's, HMAC-SHA256 of it
/// under [`NEXT`].
fn step(secret: &mut [u8; 32]) {
    let mut next = [0u8; 32];
    hmac_sha256(secret, &[NEXT], &mut next);
    *secret = next;
    next.zeroize();
}

impl Ratchet {
    /// Steps on to `period`'s secret, if it is later, zeroizing the ones
    /// passed.
    fn advance_to(&mut self, period: u32) {
        while self.period < period {
            step(&mut self.secret);
            self.period += 1;
        }
    }

    /// The key of `period`, which is not earlier than the ratchet's.
    fn key(&self, period: u32) -> Option<LessSafeKey> {
        let mut secret = self.secret;
        for _ in self.period..period {
            step(&mut secret);
        }
        let mut key = [0u8; 32];
        hmac_sha256(&secret, &[KEY], &mut key);
        secret.zeroize();
        let key_ok = UnboundKey::new(&AES_256_GCM, &key).ok().map(LessSafeKey::new);
        key.zeroize();
        key_ok
    }
}

impl Drop for Ratchet {
    fn drop(&mut self) {
        self.secret.zeroize();
    }
}

/// A listener's keys as a thread keeps them: those of `period` and of the
/// one before (`None` before period 1, or if the listener had already
/// forgotten it).
struct Cached {
    owner: Weak<Shared>,
    period: u32,
    current: LessSafeKey,
    previous: Option<LessSafeKey>,
}

thread_local! {
    static KEYS: RefCell<Vec<Cached>> = const { RefCell::new(Vec::new()) };
    /// This thread's number and its count of tickets sealed: the next nonce.
    static NONCES: Cell<Option<(u32, u64)>> = const { Cell::new(None) };
}

/// A nonce used by no other ticket of this process; `None` once 2^32
/// threads have sealed tickets.
fn next_nonce() -> Option<[u8; NONCE_LEN]> {
    static THREADS: AtomicU32 = AtomicU32::new(0);
    NONCES
        .try_with(|n| {
            let (thread, count) = match n.get() {
                Some(v) => v,
                None => {
                    let t = THREADS.fetch_add(1, Ordering::Relaxed);
                    if t == u32::MAX {
                        // Every number is taken; keep THREADS from wrapping.
                        THREADS.store(u32::MAX, Ordering::Relaxed);
                        return None;
                    }
                    (t, 0)
                }
            };
            n.set(Some((thread, count.checked_add(1)?)));
            let mut nonce = [0u8; NONCE_LEN];
            nonce[..4].copy_from_slice(&thread.to_be_bytes());
            nonce[4..].copy_from_slice(&count.to_be_bytes());
            Some(nonce)
        })
        .ok()
        .flatten()
}

impl Tickets {
    /// A new set with a random secret; `None` if the system has no randomness.
    pub(crate) fn new() -> Option<Tickets> {
        let mut ratchet = Ratchet { period: 0, secret: [0u8; 32] };
        aws_lc_rs::rand::fill(&mut ratchet.secret).ok()?;
        let shared = Shared { start: Instant::now(), ratchet: Mutex::new(ratchet) };
        Some(Tickets { shared: Arc::new(shared) })
    }

    fn period_now(&self) -> u32 {
        (self.shared.start.elapsed().as_secs() / PERIOD_SECS) as u32
    }

    /// Runs `f` with this thread's keys for period `now`, fetched from the
    /// listener if the thread has none for `now` yet.
    fn with_keys<R>(&self, now: u32, f: impl FnOnce(&Cached) -> R) -> Option<R> {
        KEYS.try_with(|keys| {
            let mut keys = keys.borrow_mut();
            let mine = |c: &Cached| std::ptr::eq(c.owner.as_ptr(), Arc::as_ptr(&self.shared));
            let i = match keys.iter().position(|c| mine(c) && c.period == now) {
                Some(i) => i,
                None => {
                    // Forget this listener's older keys and those of listeners
                    // gone, then fetch.
                    keys.retain(|c| !mine(c) && c.owner.strong_count() > 0);
                    keys.push(self.fetch(now)?);
                    keys.len() - 1
                }
            };
            Some(f(&keys[i]))
        })
        .ok()
        .flatten()
    }

    /// The keys of `now` and the period before, from the listener's secret,
    /// which moves on to the period before `now` (if it is not there yet).
    fn fetch(&self, now: u32) -> Option<Cached> {
        let mut ratchet = self.shared.ratchet.lock().ok()?;
        ratchet.advance_to(now.saturating_sub(1));
        if ratchet.period > now {
            // A thread that read the clock before another moved the
            // listener two periods on: too late for this ticket.
            return None;
        }
        let previous = match now.checked_sub(1) {
            Some(p) if p >= ratchet.period => ratchet.key(p),
            _ => None,
        };
        Some(Cached {
            owner: Arc::downgrade(&self.shared),
            period: now,
            current: ratchet.key(now)?,
            previous,
        })
    }

    /// `plain` sealed in a ticket of period `now`.
    fn seal_in(&self, now: u32, plain: &[u8]) -> Option<Vec<u8>> {
        let nonce = next_nonce()?;
        let mut out = Vec::with_capacity(HEAD + plain.len() + TAG);
        out.extend_from_slice(&now.to_be_bytes());
        out.extend_from_slice(&nonce);
        out.extend_from_slice(plain);
        let tag = self.with_keys(now, |keys| {
            keys.current.seal_in_place_separate_tag(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(now.to_be_bytes()),
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
        let previous = match now.checked_sub(period) {
            Some(0) => false,
            Some(1) => true,
            _ => return None,
        };
        let nonce = Nonce::try_assume_unique_for_key(&ticket[4..HEAD]).ok()?;
        let mut state = ticket[HEAD..].to_vec();
        let n = self.with_keys(now, |keys| {
            let key = if previous { keys.previous.as_ref()? } else { &keys.current };
            key.open_in_place(nonce, Aad::from(period.to_be_bytes()), &mut state)
                .map(|p| p.len())
                .ok()
        })??;
        state.truncate(n);
        Some(state)
    }
}

impl std::fmt::Debug for Tickets {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tickets").finish_non_exhaustive()
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

    fn cached() -> usize {
        KEYS.with(|k| k.borrow().len())
    }

    #[test]
    fn a_ticket_opens_on_another_thread_and_in_the_next_period_only() {
        let t = Arc::new(Tickets::new().unwrap());
        let ticket = t.encrypt(b"session state").unwrap();
        assert_eq!(ticket.len(), HEAD + 13 + TAG);
        assert_eq!(t.decrypt(&ticket).as_deref(), Some(&b"session state"[..]));
        // Another thread fetches the same key (its cache starts empty).
        let t2 = t.clone();
        let other = std::thread::spawn(move || t2.decrypt(&ticket)).join().unwrap();
        assert_eq!(other.as_deref(), Some(&b"session state"[..]));

        let old = t.seal_in(7, b"x").unwrap();
        assert_eq!(t.open_at(7, &old).as_deref(), Some(&b"x"[..]));
        assert_eq!(t.open_at(6, &old), None, "a period not begun");
        // Each period has its own key: the label rewritten to the next period fails.
        let mut moved = old.clone();
        moved[..4].copy_from_slice(&8u32.to_be_bytes());
        assert_eq!(t.open_at(8, &moved), None);
        // Another thread, already in period 8, opens it too.
        let (t2, old2) = (t.clone(), old.clone());
        let other = std::thread::spawn(move || t2.open_at(8, &old2)).join().unwrap();
        assert_eq!(other.as_deref(), Some(&b"x"[..]));
        assert_eq!(t.open_at(8, &old).as_deref(), Some(&b"x"[..]));
        assert_eq!(t.open_at(9, &old), None, "two periods on");
    }

    /// The listener keeps only the previous period's secret: once period 9
    /// has begun, period 7's key is gone from it and from this thread's
    /// cache, even for a thread still in period 8.
    #[test]
    fn old_periods_keys_are_forgotten() {
        let t = Arc::new(Tickets::new().unwrap());
        let s0 = t.shared.ratchet.lock().unwrap().secret;
        let old = t.seal_in(7, b"x").unwrap();
        assert_eq!(t.shared.ratchet.lock().unwrap().period, 6);
        assert_eq!(t.open_at(9, &t.seal_in(9, b"y").unwrap()).as_deref(), Some(&b"y"[..]));
        let ratchet = t.shared.ratchet.lock().unwrap();
        assert_eq!(ratchet.period, 8);
        // Period 8's secret is period 0's stepped on eight times.
        let mut s = s0;
        for _ in 0..8 {
            let mut next = [0u8; 32];
            hmac_sha256(&s, &[NEXT], &mut next);
            s = next;
        }
        assert_eq!(ratchet.secret, s);
        drop(ratchet);
        assert_eq!(cached(), 1, "one listener, one entry");
        let t2 = t.clone();
        let late = std::thread::spawn(move || t2.open_at(8, &old)).join().unwrap();
        assert_eq!(late, None, "period 7's key is gone");
    }

    #[test]
    fn a_thread_forgets_the_keys_of_listeners_gone() {
        let many: Vec<Tickets> = (0..20).map(|_| Tickets::new().unwrap()).collect();
        let sealed: Vec<Vec<u8>> = many.iter().map(|t| t.encrypt(b"m").unwrap()).collect();
        for (t, s) in many.iter().zip(&sealed).rev() {
            assert_eq!(t.decrypt(s).as_deref(), Some(&b"m"[..]));
        }
        assert_eq!(cached(), 20);
        drop(many);
        let t = Tickets::new().unwrap();
        assert!(t.encrypt(b"n").is_some());
        assert_eq!(cached(), 1);
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
        // A period from the far future or the far past costs nothing.
        let mut far = ticket.clone();
        for period in [u32::MAX, 0] {
            far[..4].copy_from_slice(&period.to_be_bytes());
            assert_eq!(a.open_at(5, &far), None);
        }
    }

    /// Nonces are this thread's number and count: never the same twice, in
    /// one thread or across threads.
    #[test]
    fn no_two_tickets_share_a_nonce() {
        let t = Arc::new(Tickets::new().unwrap());
        let nonce = |ticket: Vec<u8>| <[u8; NONCE_LEN]>::try_from(&ticket[4..HEAD]).unwrap();
        let (a, b) = (nonce(t.encrypt(b"s").unwrap()), nonce(t.encrypt(b"s").unwrap()));
        assert_eq!(a[..4], b[..4], "one thread");
        let count = |n: [u8; NONCE_LEN]| u64::from_be_bytes(n[4..].try_into().unwrap());
        assert_eq!(count(b), count(a) + 1);
        let t2 = t.clone();
        let c = std::thread::spawn(move || nonce(t2.encrypt(b"s").unwrap())).join().unwrap();
        assert_ne!(c[..4], a[..4], "another thread");
    }
}
