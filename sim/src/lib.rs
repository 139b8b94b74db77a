//! Deterministic simulated network: virtual clock, links, switch, pcap taps, hosts.
#![forbid(unsafe_code)]
