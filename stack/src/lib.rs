//! L2/L3 of Switchyard: Ethernet (IEEE 802.3), ARP (RFC 826) with one neighbor
//! table, ICMP echo (RFC 792) for owned addresses, the flow classifier that sends
//! each frame to L4, to TCP termination or to a drop counter, and TCP termination
//! (RFC 9293) on smoltcp in sharded interfaces.
#![forbid(unsafe_code)]

pub mod tcp;
pub mod types;

pub use smoltcp::time::{Duration, Instant};
pub use types::*;
