//! Incremental update of the Internet checksum (RFC 1624, equation 3:
//! `HC' = ~(~HC + ~m + m')`), so a rewritten address or port costs a few adds
//! instead of a pass over the packet.

// The implementation lives in the stack, which patches checksums too
// (duplicate-ACK windows); L4 keeps its names.
pub use switchyard_stack::wire::{checksum_update as update, checksum_update16 as update16};

#[cfg(test)]
mod tests {
    use super::*;

    fn full(data: &[u8]) -> u16 {
        let mut sum = 0u32;
        for c in data.chunks(2) {
            let w =
                if c.len() == 2 { u16::from_be_bytes([c[0], c[1]]) } else { u16::from(c[0]) << 8 };
            sum += u32::from(w);
        }
        while sum > 0xffff {
            sum = (sum & 0xffff) + (sum >> 16);
        }
        !(sum as u16)
    }

    #[test]
    fn matches_a_full_recomputation() {
        // An IPv4 header (checksum field zeroed) from 198.18.0.101 to 198.18.0.10.
        let mut h: [u8; 20] = [
            0x45, 0, 0, 0x3c, 0x1c, 0x46, 0x40, 0, 0x40, 0x06, 0, 0, 198, 18, 0, 101, 198, 18, 0,
            10,
        ];
        let c0 = full(&h);
        let new_dst = [198, 18, 0, 22];
        let c1 = update(c0, &h[16..20], &new_dst);
        h[16..20].copy_from_slice(&new_dst);
        assert_eq!(c1, full(&h));
        // TTL decrement: the word holding TTL and protocol.
        let c2 = update16(c1, 0x4006, 0x3f06);
        h[8] = 0x3f;
        assert_eq!(c2, full(&h));
    }

    #[test]
    fn rfc1624_example_gives_the_corrected_result() {
        // RFC 1624 section 4: HC = 0xdd2f, m = 0x5555 → m' = 0x3285, HC' = 0x0000.
        assert_eq!(update16(0xdd2f, 0x5555, 0x3285), 0x0000);
    }
}
