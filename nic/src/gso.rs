//! Segmentation offload for transmit, done by merging: consecutive TCP
//! segments of one flow in a transmit burst become one large segment that
//! a TSO-capable device cuts back into the original segments — what a
//! kernel stack hands such a NIC. (A veth passes it to the peer whole.)
//!
//! Our TCP stack emits segments no larger than the peer's MSS. On a packet
//! socket every frame costs a trip through the kernel's transmit path (and,
//! on a veth, the peer's receive path); one merged frame pays it once for a
//! whole run of segments.
//!
//! [`Run`] decides which segments merge; [`write_merged`] writes the merged
//! frame behind a `virtio_net_hdr` (the form `PACKET_VNET_HDR` sockets and
//! TAP's `IFF_VNET_HDR` take). Cutting the merged frame at `gso_size`
//! gives back the original segments, byte for byte, except that every piece
//! carries the first segment's IPv4 identification plus its index (the
//! kernel's rule) and the first segment's TCP options: segments merge only
//! when their options are identical, so this changes nothing.

/// Which runs of segments a port merges.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Merge {
    /// None: every segment is its own frame.
    Off,
    /// Runs of at most [`FLIGHT_SEGMENTS`], such as a TLS server's first
    /// flight (see [`Merge::limit`]).
    Flights,
    /// Every run, up to 64 KiB.
    All,
}

/// The most segments a run may have to merge under [`Merge::Flights`].
pub const FLIGHT_SEGMENTS: usize = 3;

impl Merge {
    /// The most segments of a run that is sent merged; a longer run goes
    /// out as single frames.
    ///
    /// Where nothing cuts the merged frame before a loss can hit it (a
    /// veth), one loss takes the whole run. For a whole flight of at most
    /// three segments that hardly changes the odds of waiting for the
    /// retransmission timeout: sent singly, the loss of its last segment
    /// waits for it too (nothing follows to draw duplicate ACKs), and as
    /// one frame the flight has one chance of being lost, not three. What
    /// merging does give up is the quick repair of a lost segment that is
    /// not the last (the peer's SACKed duplicate ACK, see `stack::term`),
    /// and, where a short run is only a slice of a larger flight (cut by
    /// a burst's end), some duplicate ACKs for fast retransmit. Longer runs
    /// are where fast retransmit counts: `Flights` leaves them alone, `All`
    /// merges them (for links that cut frames, or bulk traffic where the
    /// rate is worth the risk).
    fn limit(self) -> usize {
        match self {
            Merge::Off => 1,
            Merge::Flights => FLIGHT_SEGMENTS,
            Merge::All => MAX_SEGMENTS,
        }
    }

    /// Whether a run of `segments` goes out as one merged frame.
    pub fn merges(self, segments: usize) -> bool {
        (2..=self.limit()).contains(&segments)
    }
}

/// TCP flags.
const FIN: u8 = 0x01;
const PSH: u8 = 0x08;
const ACK: u8 = 0x10;
/// Segments with less payload than this are not worth merging.
const MIN_SEGMENT: usize = 512;
/// The most segments in one merged frame (64 KiB bounds it first for
/// segments of 1,024 bytes or more).
const MAX_SEGMENTS: usize = 64;
/// The largest IPv4 total length or IPv6 payload length.
const MAX_IP_LEN: usize = 65_535;
/// Size of `struct virtio_net_hdr`.
pub const VNET_HDR_LEN: usize = 10;
/// The largest merged frame, with its `virtio_net_hdr`.
pub const MAX_MERGED: usize = VNET_HDR_LEN + 14 + 40 + MAX_IP_LEN;

/// Where a TCP segment's parts are in an Ethernet frame.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Segment {
    /// IPv6 rather than IPv4.
    pub v6: bool,
    /// Offset of the TCP header.
    pub l4: usize,
    /// Offset of the payload (the end of the TCP header).
    pub hdr: usize,
    /// Sequence number.
    pub seq: u32,
    /// Flags byte.
    pub flags: u8,
    /// Payload length.
    pub payload: usize,
}

impl Segment {
    /// The TCP segment in `frame`, if it is one that could merge: Ethernet,
    /// IPv4 without options or fragmentation or IPv6 with TCP right after
    /// the fixed header, lengths that agree with the frame.
    pub fn parse(frame: &[u8]) -> Option<Segment> {
        let be16 = |at: usize| -> Option<usize> {
            Some(usize::from(u16::from_be_bytes([*frame.get(at)?, *frame.get(at + 1)?])))
        };
        let (v6, l4, end) = match be16(12)? {
            0x0800 => {
                let ok = frame.get(14) == Some(&0x45)
                    && frame.get(23) == Some(&6)
                    && be16(20)? & 0x3fff == 0;
                (false, if ok { 34 } else { return None }, 14 + be16(16)?)
            }
            0x86dd if frame.get(20) == Some(&6) => (true, 54, 54 + be16(18)?),
            _ => return None,
        };
        // Only a minimum-size frame may carry padding after the packet.
        if end > frame.len() || (end < frame.len() && frame.len() > 60) {
            return None;
        }
        let hdr = l4 + usize::from(*frame.get(l4 + 12)? >> 4) * 4;
        if hdr < l4 + 20 || hdr > end {
            return None;
        }
        let seq = u32::from_be_bytes(frame.get(l4 + 4..l4 + 8)?.try_into().ok()?);
        Some(Segment { v6, l4, hdr, seq, flags: frame[l4 + 13], payload: end - hdr })
    }

    /// Whether a run may start with this segment.
    fn can_start(&self) -> bool {
        self.flags & !(ACK | PSH) == 0 && self.flags & ACK != 0 && self.payload >= MIN_SEGMENT
    }
}

/// Whether frames `a` and `b` are segments of one flow: same addresses and
/// ports (`sa` and `sb` parsed from them).
pub fn same_flow(a: &[u8], sa: &Segment, b: &[u8], sb: &Segment) -> bool {
    let addrs = if sa.v6 { 22..54 } else { 26..34 };
    sa.v6 == sb.v6 && a[addrs.clone()] == b[addrs] && a[sa.l4..sa.l4 + 4] == b[sb.l4..sb.l4 + 4]
}

/// Whether `b`'s headers equal `a`'s but for the fields that differ between
/// the pieces of one large segment: IP length, identification and checksum,
/// TCP sequence number, flags and checksum.
fn same_headers(a: &[u8], b: &[u8], s: &Segment) -> bool {
    let (x, y) = (&a[..s.hdr], &b[..s.hdr]);
    let ip = if s.v6 { [0..18, 20..54, 0..0] } else { [0..16, 20..24, 26..34] };
    let l4 = s.l4;
    ip.iter().all(|r| x[r.clone()] == y[r.clone()])
        && x[l4..l4 + 4] == y[l4..l4 + 4]
        && x[l4 + 8..l4 + 13] == y[l4 + 8..l4 + 13]
        && x[l4 + 14..l4 + 16] == y[l4 + 14..l4 + 16]
        && x[l4 + 18..] == y[l4 + 18..]
}

/// A run of segments of one flow that will be sent as one frame: the indices
/// of its frames in the burst, in order.
#[derive(Clone, Debug)]
pub struct Run {
    /// The first segment, whose headers the merged frame takes.
    pub first: Segment,
    members: [u16; MAX_SEGMENTS],
    len: usize,
    next_seq: u32,
    bytes: usize,
    /// No segment may follow (the last was short or ended the flow).
    closed: bool,
}

impl Run {
    /// A run starting with frame `index`, if segment `s` may start one.
    pub fn start(index: usize, s: Segment) -> Option<Run> {
        let index = u16::try_from(index).ok()?;
        s.can_start().then(|| {
            let mut members = [0; MAX_SEGMENTS];
            members[0] = index;
            Run {
                first: s,
                members,
                len: 1,
                next_seq: s.seq.wrapping_add(s.payload as u32),
                bytes: s.payload,
                closed: false,
            }
        })
    }

    /// Adds frame `index` (`frame`, segment `s`) if it continues the run:
    /// the next sequence number, no more payload than the first segment,
    /// the same headers (`first` is the run's first frame), only ACK, PSH or
    /// FIN set, and room left.
    pub fn push(&mut self, first: &[u8], index: usize, frame: &[u8], s: &Segment) -> bool {
        let f = &self.first;
        // IPv6's length leaves out its 40-byte header, IPv4's counts its own.
        let room = if f.v6 { MAX_IP_LEN + 54 - f.hdr } else { MAX_IP_LEN + 14 - f.hdr };
        let fits = !self.closed
            && self.len < MAX_SEGMENTS
            && s.seq == self.next_seq
            && s.hdr == f.hdr
            && s.payload > 0
            && s.payload <= f.payload
            && self.bytes + s.payload <= room
            && s.flags & !(ACK | PSH | FIN) == 0
            && s.flags & ACK != 0
            && same_headers(first, frame, s);
        let Ok(index) = u16::try_from(index) else { return false };
        if !fits {
            return false;
        }
        self.members[self.len] = index;
        self.len += 1;
        self.next_seq = s.seq.wrapping_add(s.payload as u32);
        self.bytes += s.payload;
        self.closed = s.payload < f.payload || s.flags & FIN != 0;
        true
    }

    /// The indices of the run's frames, in order.
    pub fn members(&self) -> &[u16] {
        &self.members[..self.len]
    }

    /// The index of the run's first frame, whose headers it takes.
    pub fn head(&self) -> usize {
        usize::from(self.members[0])
    }
}

/// One's-complement sum of `data` as 16-bit big-endian words, added to `sum`.
fn sum16(mut sum: u32, data: &[u8]) -> u32 {
    let mut chunks = data.chunks_exact(2);
    for c in &mut chunks {
        sum += u32::from(u16::from_be_bytes([c[0], c[1]]));
    }
    if let [b] = chunks.remainder() {
        sum += u32::from(*b) << 8;
    }
    sum
}

fn fold(mut sum: u32) -> u16 {
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    sum as u16
}

/// Writes into `out` (cleared first) the `virtio_net_hdr` and the merged
/// frame of `frames`, the run's frames in order (`frames[0]` parsed as
/// `first`): the first frame's headers with the lengths of the whole, the
/// payloads one after another, PSH if any segment had it and FIN if the
/// last did. The TCP checksum is left to the device (the header field holds
/// the pseudo-header's sum, as `NEEDS_CSUM` asks); the IPv4 header
/// checksum is complete.
pub fn write_merged<'a>(
    first: &Segment,
    frames: impl Iterator<Item = &'a [u8]>,
    out: &mut Vec<u8>,
) {
    out.clear();
    out.resize(VNET_HDR_LEN, 0);
    let mut flags = ACK;
    for (n, f) in frames.enumerate() {
        if n == 0 {
            out.extend_from_slice(&f[..first.hdr]);
        }
        let s = f[first.l4 + 13];
        flags |= s & PSH;
        flags = (flags & !FIN) | (s & FIN);
        // Without any padding after the packet.
        let end = if first.v6 {
            54 + usize::from(u16::from_be_bytes([f[18], f[19]]))
        } else {
            14 + usize::from(u16::from_be_bytes([f[16], f[17]]))
        };
        out.extend_from_slice(&f[first.hdr..end]);
    }
    let frame = &mut out[VNET_HDR_LEN..];
    let (l4, hdr) = (first.l4, first.hdr);
    let tcp_len = frame.len() - l4;
    let mut pseudo = if first.v6 {
        let payload = (frame.len() - 54) as u16;
        frame[18..20].copy_from_slice(&payload.to_be_bytes());
        sum16(0, &frame[22..54])
    } else {
        let total = (frame.len() - 14) as u16;
        frame[16..18].copy_from_slice(&total.to_be_bytes());
        frame[24..26].copy_from_slice(&[0, 0]);
        let check = !fold(sum16(0, &frame[14..34]));
        frame[24..26].copy_from_slice(&check.to_be_bytes());
        sum16(0, &frame[26..34])
    };
    pseudo += 6 + tcp_len as u32;
    frame[l4 + 13] = flags;
    frame[l4 + 16..l4 + 18].copy_from_slice(&fold(pseudo).to_be_bytes());
    // struct virtio_net_hdr, in the host's byte order (what packet sockets
    // and TAP take on every host where legacy virtio is native-endian).
    let gso_type: u8 = if first.v6 { 4 } else { 1 }; // GSO_TCPV6 / GSO_TCPV4
    out[0] = 1; // VIRTIO_NET_HDR_F_NEEDS_CSUM
    out[1] = gso_type;
    out[2..4].copy_from_slice(&(hdr as u16).to_ne_bytes());
    out[4..6].copy_from_slice(&(first.payload as u16).to_ne_bytes());
    out[6..8].copy_from_slice(&(l4 as u16).to_ne_bytes());
    out[8..10].copy_from_slice(&16u16.to_ne_bytes());
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A TCP segment from 198.18.0.10:443 to 198.18.0.101:40000 (or the
    /// IPv6 2001:2:: pair) with complete checksums.
    fn segment(v6: bool, seq: u32, flags: u8, opts: &[u8], payload: &[u8], id: u16) -> Vec<u8> {
        let mut f = vec![2, 0, 0, 0, 0, 1, 2, 0x53, 0x59, 0, 0, 2];
        let tcp_len = 20 + opts.len() + payload.len();
        if v6 {
            f.extend_from_slice(&[0x86, 0xdd, 0x60, 0, 0, 0]);
            f.extend_from_slice(&(tcp_len as u16).to_be_bytes());
            f.extend_from_slice(&[6, 64]);
            f.extend_from_slice(&[0x20, 1, 0, 2, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x10]);
            f.extend_from_slice(&[0x20, 1, 0, 2, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 1]);
        } else {
            f.extend_from_slice(&[0x08, 0x00, 0x45, 0]);
            f.extend_from_slice(&((20 + tcp_len) as u16).to_be_bytes());
            f.extend_from_slice(&id.to_be_bytes());
            f.extend_from_slice(&[0x40, 0, 64, 6, 0, 0, 198, 18, 0, 10, 198, 18, 0, 101]);
            let c = !fold(sum16(0, &f[14..34]));
            f[24..26].copy_from_slice(&c.to_be_bytes());
        }
        let l4 = f.len();
        f.extend_from_slice(&443u16.to_be_bytes());
        f.extend_from_slice(&40000u16.to_be_bytes());
        f.extend_from_slice(&seq.to_be_bytes());
        f.extend_from_slice(&7u32.to_be_bytes());
        f.extend_from_slice(&[((20 + opts.len()) / 4 * 16) as u8, flags, 0x10, 0, 0, 0, 0, 0]);
        f.extend_from_slice(opts);
        f.extend_from_slice(payload);
        tcp_checksum(&mut f, l4, v6);
        f
    }

    fn tcp_checksum(f: &mut [u8], l4: usize, v6: bool) {
        f[l4 + 16..l4 + 18].copy_from_slice(&[0, 0]);
        let addrs = if v6 { 22..54 } else { 26..34 };
        let s = sum16(sum16(6 + (f.len() - l4) as u32, &f[addrs]), &f[l4..]);
        let c = !fold(s);
        f[l4 + 16..l4 + 18].copy_from_slice(&c.to_be_bytes());
    }

    /// What a device does with a merged frame: cuts the payload at
    /// `gso_size`, gives each piece the headers with its own lengths,
    /// sequence number, identification (first + index), flags (PSH and FIN
    /// on the last only) and complete checksums.
    fn cut(merged: &[u8]) -> Vec<Vec<u8>> {
        let hdr = usize::from(u16::from_ne_bytes([merged[2], merged[3]]));
        let mss = usize::from(u16::from_ne_bytes([merged[4], merged[5]]));
        let l4 = usize::from(u16::from_ne_bytes([merged[6], merged[7]]));
        let v6 = merged[1] == 4;
        let f = &merged[VNET_HDR_LEN..];
        let seq = u32::from_be_bytes(f[l4 + 4..l4 + 8].try_into().unwrap());
        let id = u16::from_be_bytes([f[18], f[19]]);
        let pieces: Vec<&[u8]> = f[hdr..].chunks(mss).collect();
        let n = pieces.len();
        pieces
            .iter()
            .enumerate()
            .map(|(i, p)| {
                let mut s = f[..hdr].to_vec();
                s.extend_from_slice(p);
                let len = s.len();
                if v6 {
                    s[18..20].copy_from_slice(&((len - 54) as u16).to_be_bytes());
                } else {
                    s[16..18].copy_from_slice(&((len - 14) as u16).to_be_bytes());
                    s[18..20].copy_from_slice(&id.wrapping_add(i as u16).to_be_bytes());
                    s[24..26].copy_from_slice(&[0, 0]);
                    let c = !fold(sum16(0, &s[14..34]));
                    s[24..26].copy_from_slice(&c.to_be_bytes());
                }
                let off = (i * mss) as u32;
                s[l4 + 4..l4 + 8].copy_from_slice(&seq.wrapping_add(off).to_be_bytes());
                if i + 1 < n {
                    s[l4 + 13] &= !(PSH | FIN);
                }
                tcp_checksum(&mut s, l4, v6);
                s
            })
            .collect()
    }

    /// Merges `frames` as one run (all must join it).
    fn merge(frames: &[Vec<u8>]) -> Vec<u8> {
        let s0 = Segment::parse(&frames[0]).unwrap();
        let mut run = Run::start(0, s0).unwrap();
        for (i, f) in frames.iter().enumerate().skip(1) {
            let s = Segment::parse(f).unwrap();
            assert!(run.push(&frames[0], i, f, &s), "segment {i} joins");
        }
        let mut out = Vec::new();
        write_merged(
            &s0,
            run.members().iter().map(|&i| frames[usize::from(i)].as_slice()),
            &mut out,
        );
        out
    }

    fn data(n: usize, salt: u8) -> Vec<u8> {
        (0..n).map(|i| (i as u8).wrapping_mul(31) ^ salt).collect()
    }

    #[test]
    fn a_merged_run_cut_again_gives_back_the_segments() {
        let ts = [1, 1, 8, 10, 0, 0, 0, 5, 0, 0, 0, 9];
        for v6 in [false, true] {
            for (opts, last_flags) in [(&[][..], ACK | PSH), (&ts[..], ACK | PSH | FIN)] {
                let mut frames = Vec::new();
                let mut seq = 0xffff_f000u32; // wraps inside the run
                for (i, len) in [1448, 1448, 1448, 1448, 700].into_iter().enumerate() {
                    let flags = if i == 4 { last_flags } else { ACK };
                    frames.push(segment(v6, seq, flags, opts, &data(len, i as u8), 77 + i as u16));
                    seq = seq.wrapping_add(len as u32);
                }
                let merged = merge(&frames);
                assert_eq!(merged.len(), VNET_HDR_LEN + frames[0].len() + 1448 * 3 + 700);
                assert_eq!(cut(&merged), frames, "v6 {v6}, options {opts:?}");
            }
        }
    }

    #[test]
    fn the_merged_frame_has_valid_lengths_and_a_partial_checksum() {
        let frames: Vec<Vec<u8>> =
            (0..3).map(|i| segment(false, 1000 + i * 1000, ACK, &[], &data(1000, 3), 5)).collect();
        let m = merge(&frames);
        let f = &m[VNET_HDR_LEN..];
        assert_eq!(u16::from_be_bytes([f[16], f[17]]) as usize, 20 + 20 + 3000);
        assert_eq!(fold(sum16(0, &f[14..34])), 0xffff, "IPv4 header checksum is complete");
        // NEEDS_CSUM: the field holds the pseudo-header's sum; the device adds
        // the segment's and stores the complement.
        let pseudo = fold(sum16(6 + 3020, &f[26..34]));
        assert_eq!(u16::from_be_bytes([f[50], f[51]]), pseudo);
        assert_eq!(&m[..2], &[1, 1]);
        assert_eq!(u16::from_ne_bytes([m[4], m[5]]), 1000);
    }

    #[test]
    fn segments_that_do_not_continue_the_run_are_refused() {
        let p = data(1448, 1);
        let first = segment(false, 0, ACK, &[], &p, 1);
        let s0 = Segment::parse(&first).unwrap();
        let cases: Vec<(&str, Vec<u8>)> = vec![
            ("a gap in sequence", segment(false, 2000, ACK, &[], &p, 2)),
            ("a retransmission", segment(false, 0, ACK, &[], &p, 2)),
            ("more payload than the first", segment(false, 1448, ACK, &[], &data(1449, 1), 2)),
            ("no payload", segment(false, 1448, ACK, &[], &[], 2)),
            ("SYN", segment(false, 1448, ACK | 0x02, &[], &p, 2)),
            ("RST", segment(false, 1448, ACK | 0x04, &[], &p, 2)),
            ("URG", segment(false, 1448, ACK | 0x20, &[], &p, 2)),
            ("other options", segment(false, 1448, ACK, &[1, 1, 1, 1], &p, 2)),
            ("another ack number", {
                let mut f = segment(false, 1448, ACK, &[], &p, 2);
                f[42] = 9;
                f
            }),
            ("another window", {
                let mut f = segment(false, 1448, ACK, &[], &p, 2);
                f[48] = 1;
                f
            }),
            ("another TTL", {
                let mut f = segment(false, 1448, ACK, &[], &p, 2);
                f[22] = 1;
                f
            }),
        ];
        for (what, f) in &cases {
            let mut run = Run::start(0, s0).unwrap();
            let s = Segment::parse(f).unwrap();
            assert!(!run.push(&first, 1, f, &s), "{what} joined the run");
        }
        // After a short segment or a FIN, nothing more joins.
        for (len, flags) in [(1000, ACK), (1448, ACK | FIN)] {
            let mut run = Run::start(0, s0).unwrap();
            let second = segment(false, 1448, flags, &[], &data(len, 1), 2);
            assert!(run.push(&first, 1, &second, &Segment::parse(&second).unwrap()));
            let next = 1448 + len as u32;
            let third = segment(false, next, ACK, &[], &data(100, 1), 3);
            assert!(!run.push(&first, 2, &third, &Segment::parse(&third).unwrap()));
        }
    }

    #[test]
    fn what_cannot_start_a_run_or_be_parsed() {
        let small = segment(false, 0, ACK, &[], &data(100, 1), 1);
        assert!(Run::start(0, Segment::parse(&small).unwrap()).is_none(), "small");
        let fin = segment(false, 0, ACK | FIN, &[], &data(1448, 1), 1);
        assert!(Run::start(0, Segment::parse(&fin).unwrap()).is_none(), "FIN");
        let mut frag = segment(false, 0, ACK, &[], &data(1448, 1), 1);
        frag[20] = 0x20; // more fragments
        assert!(Segment::parse(&frag).is_none());
        let mut padded = segment(false, 0, ACK, &[], &data(1448, 1), 1);
        padded.push(0);
        assert!(Segment::parse(&padded).is_none(), "a length the frame disagrees with");
        let mut ack = segment(false, 0, ACK, &[], &[], 1);
        ack.extend_from_slice(&[0; 6]);
        assert_eq!(Segment::parse(&ack).map(|s| s.payload), Some(0), "a padded minimum frame");
        let mut udp = segment(false, 0, ACK, &[], &data(1448, 1), 1);
        udp[23] = 17;
        assert!(Segment::parse(&udp).is_none());
        assert!(Segment::parse(&small[..30]).is_none());
        let mut bad_off = small.clone();
        bad_off[46] = 0x40; // a 16-byte TCP header
        assert!(Segment::parse(&bad_off).is_none());
    }

    #[test]
    fn flights_merge_only_runs_of_two_or_three() {
        let merged = |m: Merge| (1..=MAX_SEGMENTS + 1).filter(|&n| m.merges(n)).collect::<Vec<_>>();
        assert_eq!(merged(Merge::Flights), [2, 3]);
        assert_eq!(merged(Merge::All), (2..=MAX_SEGMENTS).collect::<Vec<_>>());
        assert!(merged(Merge::Off).is_empty());
    }

    #[test]
    fn runs_hold_at_most_64_kib() {
        let p = data(1448, 1);
        let frames: Vec<Vec<u8>> =
            (0..60).map(|i| segment(false, i * 1448, ACK, &[], &p, i as u16)).collect();
        let mut run = Run::start(0, Segment::parse(&frames[0]).unwrap()).unwrap();
        let mut n = 1;
        while n < frames.len()
            && run.push(&frames[0], n, &frames[n], &Segment::parse(&frames[n]).unwrap())
        {
            n += 1;
        }
        assert_eq!(n, (MAX_IP_LEN - 40) / 1448);
        // A last segment that fills the IP length to 65,535 joins; one byte
        // more does not (IPv4's length counts its header, IPv6's does not).
        for v6 in [false, true] {
            let full = if v6 { MAX_IP_LEN - 20 - 45 * 1448 } else { MAX_IP_LEN - 40 - 45 * 1448 };
            for (last, joins) in [(full, true), (full + 1, false)] {
                let mut frames: Vec<Vec<u8>> =
                    (0..45).map(|i| segment(v6, i * 1448, ACK, &[], &p, i as u16)).collect();
                frames.push(segment(v6, 45 * 1448, ACK, &[], &data(last, 2), 45));
                let s0 = Segment::parse(&frames[0]).unwrap();
                let mut run = Run::start(0, s0).unwrap();
                for (i, f) in frames.iter().enumerate().skip(1).take(44) {
                    assert!(run.push(&frames[0], i, f, &Segment::parse(f).unwrap()));
                }
                let s = Segment::parse(&frames[45]).unwrap();
                assert_eq!(run.push(&frames[0], 45, &frames[45], &s), joins, "v6 {v6}, {last}");
                if joins {
                    let mut out = Vec::new();
                    let fr = run.members().iter().map(|&i| frames[usize::from(i)].as_slice());
                    write_merged(&s0, fr, &mut out);
                    let at = if v6 { VNET_HDR_LEN + 18 } else { VNET_HDR_LEN + 16 };
                    assert_eq!(u16::from_be_bytes([out[at], out[at + 1]]), 65_535);
                    assert_eq!(cut(&out), frames, "v6 {v6}");
                }
            }
        }
        let mut out = Vec::new();
        write_merged(
            &run.first,
            run.members().iter().map(|&i| frames[usize::from(i)].as_slice()),
            &mut out,
        );
        assert!(out.len() <= MAX_MERGED);
    }
}
