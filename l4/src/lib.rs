//! L4 forwarding: connection table, schedulers, full-NAT rewrite (RFC 1624 checksums).
#![forbid(unsafe_code)]
