//! Wire formats the stack reads and writes itself: Ethernet II (IEEE 802.3), IPv4
//! (RFC 791), IPv6 (RFC 8200), the transport headers the classifier needs (RFC 9293,
//! RFC 768) and the Internet checksum (RFC 1071). Every parser checks lengths first,
//! so nothing here panics on untrusted bytes.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use crate::types::{DropReason, PacketMeta, Proto};

/// Length of an untagged Ethernet header.
pub const ETH_LEN: usize = 14;
/// EtherType of IPv4.
pub const ETHERTYPE_IPV4: u16 = 0x0800;
/// EtherType of ARP.
pub const ETHERTYPE_ARP: u16 = 0x0806;
/// EtherType of IPv6.
pub const ETHERTYPE_IPV6: u16 = 0x86dd;
/// IP protocol number of ICMP.
pub const IPPROTO_ICMP: u8 = 1;
/// IP protocol number of TCP.
pub const IPPROTO_TCP: u8 = 6;
/// IP protocol number of UDP.
pub const IPPROTO_UDP: u8 = 17;
/// IP protocol number of ICMPv6.
pub const IPPROTO_ICMPV6: u8 = 58;

/// Reads a big-endian u16 at `off`; 0 past the end (callers check lengths first).
pub fn get16(b: &[u8], off: usize) -> u16 {
    match b.get(off..off + 2) {
        Some(s) => u16::from_be_bytes([s[0], s[1]]),
        None => 0,
    }
}

/// Reads a big-endian u32 at `off`; 0 past the end.
pub fn get32(b: &[u8], off: usize) -> u32 {
    match b.get(off..off + 4) {
        Some(s) => u32::from_be_bytes([s[0], s[1], s[2], s[3]]),
        None => 0,
    }
}

/// Writes a big-endian u16 at `off`; does nothing past the end.
pub fn put16(b: &mut [u8], off: usize, v: u16) {
    if let Some(s) = b.get_mut(off..off + 2) {
        s.copy_from_slice(&v.to_be_bytes());
    }
}

/// Writes a big-endian u32 at `off`; does nothing past the end.
pub fn put32(b: &mut [u8], off: usize, v: u32) {
    if let Some(s) = b.get_mut(off..off + 4) {
        s.copy_from_slice(&v.to_be_bytes());
    }
}

/// Adds `data` to a running one's-complement sum (RFC 1071). `data` must start
/// on a 16-bit boundary of the checksummed bytes. Eight bytes are added per step
/// as two 32-bit words into a 64-bit accumulator (RFC 1071 section 2(B): the sum
/// may be taken over larger words and folded); the result is folded to 16 bits.
pub fn sum(acc: u32, data: &[u8]) -> u32 {
    let mut s = u64::from(acc);
    let mut chunks = data.chunks_exact(8);
    for c in &mut chunks {
        s += u64::from(u32::from_be_bytes([c[0], c[1], c[2], c[3]]));
        s += u64::from(u32::from_be_bytes([c[4], c[5], c[6], c[7]]));
    }
    let mut rest = chunks.remainder().chunks_exact(2);
    for c in &mut rest {
        s += u64::from(u16::from_be_bytes([c[0], c[1]]));
    }
    if let [last] = rest.remainder() {
        s += u64::from(*last) << 8;
    }
    while s > 0xffff {
        s = (s & 0xffff) + (s >> 16);
    }
    s as u32
}

/// Incremental update of the Internet checksum (RFC 1624, equation 3:
/// `HC' = ~(~HC + ~m + m')`): the checksum `csum` after the bytes `old` of the
/// covered data became `new`. Both must have the same even length and start
/// on a 16-bit boundary of the checksummed data.
#[inline]
pub fn checksum_update(csum: u16, old: &[u8], new: &[u8]) -> u16 {
    let mut sum = u32::from(!csum);
    for (o, n) in old.chunks_exact(2).zip(new.chunks_exact(2)) {
        sum += u32::from(!u16::from_be_bytes([o[0], o[1]]));
        sum += u32::from(u16::from_be_bytes([n[0], n[1]]));
    }
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

/// The checksum after one 16-bit word changed from `old` to `new`.
#[inline]
pub fn checksum_update16(csum: u16, old: u16, new: u16) -> u16 {
    checksum_update(csum, &old.to_be_bytes(), &new.to_be_bytes())
}

/// Folds a running sum to 16 bits and complements it: the checksum field value.
pub fn fold(mut acc: u32) -> u16 {
    while acc > 0xffff {
        acc = (acc & 0xffff) + (acc >> 16);
    }
    !(acc as u16)
}

/// The pseudo-header sum of TCP, UDP and ICMPv6 (RFC 9293 3.1, RFC 8200 8.1).
pub fn pseudo(src: IpAddr, dst: IpAddr, proto: u8, len: usize) -> u32 {
    let mut acc = match (src, dst) {
        (IpAddr::V4(s), IpAddr::V4(d)) => sum(sum(0, &s.octets()), &d.octets()),
        (IpAddr::V6(s), IpAddr::V6(d)) => sum(sum(0, &s.octets()), &d.octets()),
        _ => 0,
    };
    acc = acc.wrapping_add(u32::from(proto));
    acc.wrapping_add(len as u32 & 0xffff).wrapping_add((len as u32) >> 16)
}

/// What the IP layer of a frame says, after validation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct IpInfo {
    /// Source address.
    pub src: IpAddr,
    /// Destination address.
    pub dst: IpAddr,
    /// Transport protocol number.
    pub proto: u8,
    /// Offset of the transport header in the frame.
    pub l4_offset: usize,
    /// Offset just past the IP payload (the frame may carry Ethernet padding after it).
    pub end: usize,
}

/// Validates the IPv4 or IPv6 header that follows the Ethernet header.
pub fn parse_ip(frame: &[u8], ethertype: u16) -> Result<IpInfo, DropReason> {
    let ip = frame.get(ETH_LEN..).ok_or(DropReason::Truncated)?;
    match ethertype {
        ETHERTYPE_IPV4 => {
            if ip.len() < 20 {
                return Err(DropReason::Truncated);
            }
            let ihl = usize::from(ip[0] & 0x0f) * 4;
            let total = usize::from(get16(ip, 2));
            if ip[0] >> 4 != 4 || ihl < 20 || total < ihl {
                return Err(DropReason::BadIpHeader);
            }
            if total > ip.len() {
                return Err(DropReason::Truncated);
            }
            if fold(sum(0, &ip[..ihl])) != 0 {
                return Err(DropReason::BadIpChecksum);
            }
            // More-fragments flag or a fragment offset: reassembly is not ours.
            if get16(ip, 6) & 0x3fff != 0 {
                return Err(DropReason::Fragment);
            }
            let src = Ipv4Addr::new(ip[12], ip[13], ip[14], ip[15]);
            let dst = Ipv4Addr::new(ip[16], ip[17], ip[18], ip[19]);
            Ok(IpInfo {
                src: src.into(),
                dst: dst.into(),
                proto: ip[9],
                l4_offset: ETH_LEN + ihl,
                end: ETH_LEN + total,
            })
        }
        ETHERTYPE_IPV6 => {
            if ip.len() < 40 {
                return Err(DropReason::Truncated);
            }
            if ip[0] >> 4 != 6 {
                return Err(DropReason::BadIpHeader);
            }
            let payload = usize::from(get16(ip, 4));
            if 40 + payload > ip.len() {
                return Err(DropReason::Truncated);
            }
            let mut s = [0u8; 16];
            let mut d = [0u8; 16];
            s.copy_from_slice(&ip[8..24]);
            d.copy_from_slice(&ip[24..40]);
            // Extension headers are not followed on the packet path; a fragment
            // header is counted as a fragment, the rest as unsupported.
            let next = ip[6];
            if next == 44 {
                return Err(DropReason::Fragment);
            }
            Ok(IpInfo {
                src: Ipv6Addr::from(s).into(),
                dst: Ipv6Addr::from(d).into(),
                proto: next,
                l4_offset: ETH_LEN + 40,
                end: ETH_LEN + 40 + payload,
            })
        }
        _ => Err(DropReason::UnsupportedEthertype),
    }
}

/// Validates a TCP or UDP header and checksum and describes the packet for L4.
/// `verify` is false when the device's checksum offload vouched for the
/// checksum (see `switchyard_nic::RxCsum`).
pub fn parse_transport(frame: &[u8], ip: &IpInfo, verify: bool) -> Result<PacketMeta, DropReason> {
    let seg = frame.get(ip.l4_offset..ip.end).ok_or(DropReason::Truncated)?;
    let (proto, hdr, flags) = match ip.proto {
        IPPROTO_TCP => {
            if seg.len() < 20 {
                return Err(DropReason::Truncated);
            }
            let off = usize::from(seg[12] >> 4) * 4;
            if off < 20 || off > seg.len() {
                return Err(DropReason::BadIpHeader);
            }
            if verify && fold(sum(pseudo(ip.src, ip.dst, IPPROTO_TCP, seg.len()), seg)) != 0 {
                return Err(DropReason::BadL4Checksum);
            }
            (Proto::Tcp, off, seg[13])
        }
        IPPROTO_UDP => {
            if seg.len() < 8 {
                return Err(DropReason::Truncated);
            }
            if usize::from(get16(seg, 4)) != seg.len() {
                return Err(DropReason::BadIpHeader);
            }
            let zero_ok = ip.src.is_ipv4();
            if verify
                && !(zero_ok && get16(seg, 6) == 0)
                && fold(sum(pseudo(ip.src, ip.dst, IPPROTO_UDP, seg.len()), seg)) != 0
            {
                return Err(DropReason::BadL4Checksum);
            }
            (Proto::Udp, 8, 0)
        }
        _ => return Err(DropReason::UnsupportedProtocol),
    };
    Ok(PacketMeta {
        ip_offset: ETH_LEN as u16,
        l4_offset: ip.l4_offset as u16,
        proto,
        src: SocketAddr::new(ip.src, get16(seg, 0)),
        dst: SocketAddr::new(ip.dst, get16(seg, 2)),
        tcp_flags: flags,
        payload_len: (seg.len() - hdr) as u16,
    })
}

/// Recomputes the IPv4 header checksum of the packet at `ip` (no-op for IPv6).
pub fn fix_ipv4_checksum(ip: &mut [u8]) {
    if ip.len() < 20 || ip[0] >> 4 != 4 {
        return;
    }
    let ihl = (usize::from(ip[0] & 0x0f) * 4).min(ip.len());
    put16(ip, 10, 0);
    let c = fold(sum(0, &ip[..ihl]));
    put16(ip, 10, c);
}

/// Recomputes the checksum of the TCP, UDP or ICMPv6 segment `seg` carried
/// between `src` and `dst`; `csum_off` is the checksum field's offset in `seg`.
pub fn fix_l4_checksum(seg: &mut [u8], src: IpAddr, dst: IpAddr, proto: u8, csum_off: usize) {
    put16(seg, csum_off, 0);
    let mut c = fold(sum(pseudo(src, dst, proto, seg.len()), seg));
    if c == 0 && proto == IPPROTO_UDP {
        c = 0xffff;
    }
    put16(seg, csum_off, c);
}

/// Writes an Ethernet header at the start of `frame`.
pub fn put_eth(frame: &mut [u8], dst: [u8; 6], src: [u8; 6], ethertype: u16) {
    if frame.len() >= ETH_LEN {
        frame[0..6].copy_from_slice(&dst);
        frame[6..12].copy_from_slice(&src);
        put16(frame, 12, ethertype);
    }
}

/// Writes the fixed IPv4 or IPv6 header for a packet of `payload` bytes at the
/// start of `ip`; returns the header length. `src` and `dst` must be one family.
pub fn put_ip_header(ip: &mut [u8], src: IpAddr, dst: IpAddr, proto: u8, payload: usize) -> usize {
    match (src, dst) {
        (IpAddr::V4(s), IpAddr::V4(d)) if ip.len() >= 20 => {
            ip[..20].fill(0);
            ip[0] = 0x45;
            put16(ip, 2, (20 + payload) as u16);
            put16(ip, 6, 0x4000); // don't fragment
            ip[8] = 64;
            ip[9] = proto;
            ip[12..16].copy_from_slice(&s.octets());
            ip[16..20].copy_from_slice(&d.octets());
            fix_ipv4_checksum(ip);
            20
        }
        (IpAddr::V6(s), IpAddr::V6(d)) if ip.len() >= 40 => {
            ip[..40].fill(0);
            ip[0] = 0x60;
            put16(ip, 4, payload as u16);
            ip[6] = proto;
            ip[7] = 64;
            ip[8..24].copy_from_slice(&s.octets());
            ip[24..40].copy_from_slice(&d.octets());
            40
        }
        _ => 0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An IPv4 TCP SYN from 198.18.0.1:1234 to 198.18.0.2:80, checksums valid.
    const SYN_V4: [u8; 54] = [
        0x02, 0, 0, 0, 0, 2, 0x02, 0, 0, 0, 0, 1, 0x08, 0x00, // ethernet
        0x45, 0x00, 0x00, 0x28, 0x00, 0x01, 0x40, 0x00, 0x40, 0x06, 0xae, 0xa7, 198, 18, 0, 1, 198,
        18, 0, 2, // ipv4
        0x04, 0xd2, 0x00, 0x50, 0, 0, 0, 1, 0, 0, 0, 0, 0x50, 0x02, 0xff, 0xff, 0x00, 0x00, 0,
        0, // tcp
    ];

    fn syn_v4() -> Vec<u8> {
        let mut f = SYN_V4.to_vec();
        let (src, dst) = (IpAddr::from([198, 18, 0, 1]), IpAddr::from([198, 18, 0, 2]));
        fix_l4_checksum(&mut f[34..], src, dst, IPPROTO_TCP, 16);
        f
    }

    #[test]
    fn ipv4_header_checksum_matches_literal() {
        let mut f = SYN_V4.to_vec();
        put16(&mut f, 24, 0);
        fix_ipv4_checksum(&mut f[14..]);
        assert_eq!(&f[24..26], &[0xae, 0xa7]);
    }

    #[test]
    fn parses_a_valid_syn() {
        let f = syn_v4();
        let ip = parse_ip(&f, ETHERTYPE_IPV4).unwrap();
        assert_eq!(ip.l4_offset, 34);
        assert_eq!(ip.end, 54);
        let m = parse_transport(&f, &ip, true).unwrap();
        assert_eq!(m.src, "198.18.0.1:1234".parse().unwrap());
        assert_eq!(m.dst, "198.18.0.2:80".parse().unwrap());
        assert_eq!(m.tcp_flags, crate::tcp_flags::SYN);
        assert_eq!(m.payload_len, 0);
    }

    #[test]
    fn rejects_bad_checksums_and_lengths() {
        let mut f = syn_v4();
        f[40] ^= 1; // sequence number
        let ip = parse_ip(&f, ETHERTYPE_IPV4).unwrap();
        assert_eq!(parse_transport(&f, &ip, true), Err(DropReason::BadL4Checksum));
        let mut f = syn_v4();
        f[22] ^= 1; // TTL
        assert_eq!(parse_ip(&f, ETHERTYPE_IPV4), Err(DropReason::BadIpChecksum));
        let f = syn_v4();
        assert_eq!(parse_ip(&f[..30], ETHERTYPE_IPV4), Err(DropReason::Truncated));
        let mut f = syn_v4();
        f[14] = 0x44; // IHL 4
        assert_eq!(parse_ip(&f, ETHERTYPE_IPV4), Err(DropReason::BadIpHeader));
        let mut f = syn_v4();
        put16(&mut f, 20, 0x2000); // more fragments
        fix_ipv4_checksum(&mut f[14..]);
        assert_eq!(parse_ip(&f, ETHERTYPE_IPV4), Err(DropReason::Fragment));
    }

    #[test]
    fn wide_sum_equals_the_16_bit_definition() {
        fn reference(data: &[u8]) -> u16 {
            let mut acc = 0u32;
            for c in data.chunks(2) {
                let w = if c.len() == 2 {
                    u16::from_be_bytes([c[0], c[1]])
                } else {
                    u16::from(c[0]) << 8
                };
                acc += u32::from(w);
                acc = (acc & 0xffff) + (acc >> 16);
            }
            !(acc as u16)
        }
        let data: Vec<u8> =
            (0..1501u32).map(|i| (i.wrapping_mul(2654435761) >> 13) as u8).collect();
        for len in 0..data.len() {
            assert_eq!(fold(sum(0, &data[..len])), reference(&data[..len]), "length {len}");
        }
        let ones = vec![0xffu8; 1500];
        assert_eq!(fold(sum(0xffff, &ones)), reference(&ones));
    }

    #[test]
    fn padding_after_the_ip_packet_is_ignored() {
        let mut f = syn_v4();
        f.extend_from_slice(&[0; 6]);
        let ip = parse_ip(&f, ETHERTYPE_IPV4).unwrap();
        assert_eq!(ip.end, 54);
        assert!(parse_transport(&f, &ip, true).is_ok());
    }
}
