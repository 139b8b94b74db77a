//! TLS for Switchyard. For now this crate holds only the seam the offload design
//! needs: a crypto engine that takes handshake work off the packet path behind a
//! queue. rustls termination (RFC 8446) is built on it in the TLS issue.
#![forbid(unsafe_code)]

/// A unit of public-key work submitted by a worker, tagged so the answer can be
/// matched to its connection.
#[derive(Debug)]
pub struct Job<T> {
    /// Caller's tag (for example a connection handle).
    pub tag: u64,
    /// The work.
    pub work: T,
}

/// A crypto engine: workers submit jobs without blocking and collect finished
/// results later from their poll loop. Implementations: software threads first,
/// a hardware engine later.
pub trait CryptoEngine<In, Out> {
    /// Queues a job; gives it back if the engine is full.
    fn submit(&self, job: Job<In>) -> Result<(), Job<In>>;
    /// Takes one finished job, if any.
    fn poll(&self) -> Option<Job<Out>>;
}
