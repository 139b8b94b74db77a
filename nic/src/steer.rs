//! Flow steering onto workers, without shared state.
//!
//! Every worker hands out only the local ports `p` with `p % workers ==
//! index` (its share of the L4 SNAT ports and of the TCP terminator's
//! ephemeral ports). So one rule puts every packet of a flow on the worker
//! that owns it, in both directions:
//!
//! * a TCP or UDP packet whose **destination** port is one of the local port
//!   ranges is a reply to something a worker sent (a backend answering a
//!   full-NAT flow, an upstream connection, a health check): it goes to worker
//!   `dst_port % workers`;
//! * any other TCP or UDP packet comes from a client towards a listener: it
//!   goes to the worker given by a multiplicative hash of its source port and
//!   (the last 32 bits of) its source address, the same for every packet of
//!   the connection. Not the port alone: Linux clients `connect()` from even
//!   ports first, which would put every connection of such a client on the
//!   even workers;
//! * everything else (ARP, ICMP, IPv4 fragments after the first, IPv6 with
//!   extension headers before TCP/UDP, other EtherTypes) goes to worker 0, the
//!   primary, which answers neighbor discovery and pings.
//!
//! [`Steering::worker_of`] is that rule in Rust (for a software dispatcher and
//! to count misdirected frames); [`Steering::fanout_program`] is the same rule
//! as a classic BPF program for the kernel's `PACKET_FANOUT_CBPF`, which runs
//! it on each received frame to pick the worker's socket. The tests run the
//! program in an interpreter against the Rust rule over many generated frames.

use std::ops::Range;

/// The steering rule of a set of workers.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Steering {
    /// How many workers (at least 1).
    pub workers: u16,
    /// The local port ranges the workers partition among themselves.
    pub local_ports: Vec<Range<u16>>,
}

const ETHERTYPE_IPV4: u16 = 0x0800;
const ETHERTYPE_IPV6: u16 = 0x86dd;
const IPPROTO_TCP: u8 = 6;
const IPPROTO_UDP: u8 = 17;
const ETH_LEN: usize = 14;
/// 2^32 divided by the golden ratio: multiplying by it spreads every input
/// bit into the high half (Knuth's multiplicative hashing).
const GOLDEN: u32 = 0x9e37_79b9;

impl Steering {
    /// The worker that owns the flow of Ethernet frame `frame`.
    pub fn worker_of(&self, frame: &[u8]) -> u16 {
        let n = u32::from(self.workers.max(1));
        match self.key(frame) {
            Some(k) => (k % n) as u16,
            None => 0,
        }
    }

    /// The number that decides the worker, if the frame has ports.
    fn key(&self, frame: &[u8]) -> Option<u32> {
        let be32 = |b: &[u8], at: usize| -> Option<u32> {
            Some(u32::from_be_bytes(b.get(at..at + 4)?.try_into().ok()?))
        };
        let be16 = |b: &[u8], at: usize| -> Option<u16> {
            Some(u16::from_be_bytes([*b.get(at)?, *b.get(at + 1)?]))
        };
        let ethertype = be16(frame, 12)?;
        let ip = frame.get(ETH_LEN..)?;
        let l4 = match ethertype {
            ETHERTYPE_IPV4 => {
                if !matches!(*ip.get(9)?, IPPROTO_TCP | IPPROTO_UDP) {
                    return None;
                }
                // A fragment other than the first has no ports.
                if be16(ip, 6)? & 0x1fff != 0 {
                    return None;
                }
                (be32(ip, 12)?, usize::from(*ip.first()? & 0x0f) * 4)
            }
            ETHERTYPE_IPV6 => {
                if !matches!(*ip.get(6)?, IPPROTO_TCP | IPPROTO_UDP) {
                    return None;
                }
                (be32(ip, 20)?, 40)
            }
            _ => return None,
        };
        let (src_ip, l4) = l4;
        let dst = be16(ip, l4 + 2)?;
        if self.local_ports.iter().any(|r| r.contains(&dst)) {
            Some(u32::from(dst))
        } else {
            let src = u32::from(be16(ip, l4)?);
            Some((src_ip ^ src).wrapping_mul(GOLDEN) >> 16)
        }
    }

    /// The rule as a classic BPF program for `PACKET_FANOUT_CBPF`: it returns
    /// the worker's index. Loads are relative to the network header
    /// (`SKF_NET_OFF`) and the EtherType comes from the socket buffer
    /// (`SKF_AD_PROTOCOL`), so the program does not depend on where the
    /// kernel's data pointer is when it runs; a load past the end of the
    /// frame ends the program with 0, as the Rust rule gives 0 to a frame too
    /// short to have ports.
    pub fn fanout_program(&self) -> Vec<Insn> {
        use Label::*;
        let mut a = Asm::default();
        a.op(LD | W | ABS, SKF_AD_OFF + SKF_AD_PROTOCOL);
        a.jeq(u32::from(ETHERTYPE_IPV4), V4, NotV4);
        a.label(NotV4);
        a.jeq(u32::from(ETHERTYPE_IPV6), V6, Other);
        // IPv4: TCP or UDP, not a later fragment; X = header length.
        a.label(V4);
        a.op(LD | B | ABS, SKF_NET_OFF + 9);
        a.jeq(u32::from(IPPROTO_TCP), V4Frag, V4Udp);
        a.label(V4Udp);
        a.jeq(u32::from(IPPROTO_UDP), V4Frag, Other);
        a.label(V4Frag);
        a.op(LD | H | ABS, SKF_NET_OFF + 6);
        a.jset(0x1fff, Other, V4Len);
        a.label(V4Len);
        a.op(LD | W | ABS, SKF_NET_OFF + 12);
        a.op(ST, 0);
        a.op(LDX | B | MSH, SKF_NET_OFF);
        a.ja(Ports);
        // IPv6: TCP or UDP right after the fixed header.
        a.label(V6);
        a.op(LD | B | ABS, SKF_NET_OFF + 6);
        a.jeq(u32::from(IPPROTO_TCP), V6Len, V6Udp);
        a.label(V6Udp);
        a.jeq(u32::from(IPPROTO_UDP), V6Len, Other);
        a.label(V6Len);
        a.op(LD | W | ABS, SKF_NET_OFF + 20);
        a.op(ST, 0);
        a.op(LDX | W | IMM, 40);
        // A = destination port; in a local range, it is the key.
        a.label(Ports);
        a.op(LD | H | IND, SKF_NET_OFF + 2);
        for (i, r) in self.local_ports.iter().enumerate() {
            let next = Range(i as u8 + 1);
            a.label(Range(i as u8));
            a.jge(u32::from(r.start), InRange(i as u8), next);
            a.label(InRange(i as u8));
            a.jge(u32::from(r.end), next, Key);
        }
        // Otherwise a hash of the source port and address (kept in M[0]).
        a.label(Range(self.local_ports.len() as u8));
        a.op(LD | H | IND, SKF_NET_OFF);
        a.op(MISC | TAX, 0);
        a.op(LD | W | MEM, 0);
        a.op(ALU | XOR | X, 0);
        a.op(ALU | MUL | K, GOLDEN);
        a.op(ALU | RSH | K, 16);
        a.label(Key);
        a.op(ALU | MOD | K, u32::from(self.workers.max(1)));
        a.op(RET | A, 0);
        a.label(Other);
        a.op(RET | K, 0);
        a.assemble()
    }
}

/// A classic BPF receive filter that keeps only what every worker must see
/// to keep its own neighbor table: ARP, and IPv6 neighbor solicitations and
/// advertisements (ICMPv6 135 and 136 right after the fixed header). The
/// fanout program gives these to worker 0 only; the other workers read them
/// from a second socket with this filter (and leave the answers to worker 0).
pub fn neighbor_filter() -> Vec<Insn> {
    use Label::*;
    let mut a = Asm::default();
    a.op(LD | W | ABS, SKF_AD_OFF + SKF_AD_PROTOCOL);
    a.jeq(0x0806, Accept, NotV4);
    a.label(NotV4);
    a.jeq(u32::from(ETHERTYPE_IPV6), V6, Other);
    a.label(V6);
    a.op(LD | B | ABS, SKF_NET_OFF + 6);
    a.jeq(58, Icmp6, Other);
    a.label(Icmp6);
    a.op(LD | B | ABS, SKF_NET_OFF + 40);
    a.jge(135, Nd, Other);
    a.label(Nd);
    a.jge(137, Other, Accept);
    a.label(Accept);
    a.op(RET | K, 0x4_0000);
    a.label(Other);
    a.op(RET | K, 0);
    a.assemble()
}

/// A classic BPF receive filter that keeps nothing: a worker's socket
/// carries it from before it is bound until every worker has joined the
/// fanout group, so no frame reaches a socket that is not yet steered.
pub fn drop_all() -> Vec<Insn> {
    vec![Insn { code: RET | K, jt: 0, jf: 0, k: 0 }]
}

/// True for the frames [`neighbor_filter`] keeps: ARP, and IPv6 neighbor
/// solicitations and advertisements right after the fixed header. A software
/// dispatcher gives worker 0 these frames and every other worker a copy.
pub fn is_neighbor(frame: &[u8]) -> bool {
    match frame.get(12..14) {
        Some([0x08, 0x06]) => true,
        Some([0x86, 0xdd]) => {
            frame.get(ETH_LEN + 6) == Some(&58)
                && frame.get(ETH_LEN + 40).is_some_and(|t| matches!(t, 135 | 136))
        }
        _ => false,
    }
}

/// One classic BPF instruction, laid out as the kernel's `struct sock_filter`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(C)]
pub struct Insn {
    /// Operation.
    pub code: u16,
    /// Jump offset if true.
    pub jt: u8,
    /// Jump offset if false.
    pub jf: u8,
    /// Operand.
    pub k: u32,
}

// Classic BPF encoding (linux/filter.h, linux/bpf_common.h).
const LD: u16 = 0x00;
const LDX: u16 = 0x01;
const ALU: u16 = 0x04;
const JMP: u16 = 0x05;
const RET: u16 = 0x06;
const ST: u16 = 0x02;
const MISC: u16 = 0x07;
const TAX: u16 = 0x00;
const MEM: u16 = 0x60;
const MUL: u16 = 0x20;
const RSH: u16 = 0x70;
const XOR: u16 = 0xa0;
const X: u16 = 0x08;
const W: u16 = 0x00;
const H: u16 = 0x08;
const B: u16 = 0x10;
const IMM: u16 = 0x00;
const ABS: u16 = 0x20;
const IND: u16 = 0x40;
const MSH: u16 = 0xa0;
const MOD: u16 = 0x90;
const JA: u16 = 0x00;
const JEQ: u16 = 0x10;
const JGE: u16 = 0x30;
const JSET: u16 = 0x40;
const K: u16 = 0x00;
const A: u16 = 0x10;
/// Ancillary loads start here; the protocol (EtherType, host order) is 0 in.
const SKF_AD_OFF: u32 = (-0x1000i32) as u32;
const SKF_AD_PROTOCOL: u32 = 0;
/// Loads relative to the network header.
const SKF_NET_OFF: u32 = (-0x100000i32) as u32;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Label {
    NotV4,
    V4,
    V4Udp,
    V4Frag,
    V4Len,
    V6,
    V6Udp,
    V6Len,
    Ports,
    Range(u8),
    InRange(u8),
    Key,
    Other,
    Icmp6,
    Nd,
    Accept,
}

enum Item {
    Op(Insn),
    Jump(u16, u32, Label, Label),
    Always(Label),
    Label(Label),
}

/// A small assembler: jumps name labels; offsets are filled in at the end.
#[derive(Default)]
struct Asm(Vec<Item>);

impl Asm {
    fn op(&mut self, code: u16, k: u32) {
        self.0.push(Item::Op(Insn { code, jt: 0, jf: 0, k }));
    }
    fn jeq(&mut self, k: u32, t: Label, f: Label) {
        self.0.push(Item::Jump(JMP | JEQ | K, k, t, f));
    }
    fn jge(&mut self, k: u32, t: Label, f: Label) {
        self.0.push(Item::Jump(JMP | JGE | K, k, t, f));
    }
    fn jset(&mut self, k: u32, t: Label, f: Label) {
        self.0.push(Item::Jump(JMP | JSET | K, k, t, f));
    }
    fn ja(&mut self, to: Label) {
        self.0.push(Item::Always(to));
    }
    fn label(&mut self, l: Label) {
        self.0.push(Item::Label(l));
    }

    fn assemble(self) -> Vec<Insn> {
        let mut at = Vec::new();
        let mut n = 0usize;
        for item in &self.0 {
            match item {
                Item::Label(l) => at.push((*l, n)),
                _ => n += 1,
            }
        }
        let find = |l: Label| at.iter().find(|(x, _)| *x == l).map(|(_, i)| *i).expect("label");
        let mut out = Vec::with_capacity(n);
        for item in self.0 {
            let here = out.len() + 1;
            let off = |l: Label| find(l) - here;
            match item {
                Item::Op(i) => out.push(i),
                Item::Jump(code, k, t, f) => {
                    let (jt, jf) = (off(t), off(f));
                    out.push(Insn { code, jt: jt as u8, jf: jf as u8, k });
                }
                Item::Always(l) => {
                    out.push(Insn { code: JMP | JA, jt: 0, jf: 0, k: off(l) as u32 })
                }
                Item::Label(_) => {}
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Runs a classic BPF program the way the kernel's fanout does for a
    /// frame (the subset of instructions the program uses); a load outside
    /// the packet ends the program with 0.
    fn run(prog: &[Insn], frame: &[u8]) -> u32 {
        let ethertype = u32::from(u16::from_be_bytes([frame[12], frame[13]]));
        let net = &frame[ETH_LEN..];
        let load = |off: u32, size: usize| -> Option<u32> {
            let off = if off == SKF_AD_OFF + SKF_AD_PROTOCOL {
                return Some(ethertype);
            } else {
                off.checked_sub(SKF_NET_OFF)? as usize
            };
            let b = net.get(off..off + size)?;
            Some(b.iter().fold(0u32, |acc, x| (acc << 8) | u32::from(*x)))
        };
        let (mut a, mut x, mut pc, mut mem) = (0u32, 0u32, 0usize, [0u32; 16]);
        loop {
            let i = prog[pc];
            pc += 1;
            let size = match i.code & 0x18 {
                W => 4,
                H => 2,
                _ => 1,
            };
            match i.code {
                c if c & 0x07 == LD && c & 0xe0 == ABS => match load(i.k, size) {
                    Some(v) => a = v,
                    None => return 0,
                },
                c if c & 0x07 == LD && c & 0xe0 == IND => match load(x.wrapping_add(i.k), size) {
                    Some(v) => a = v,
                    None => return 0,
                },
                c if c == LDX | B | MSH => match load(i.k, 1) {
                    Some(v) => x = (v & 0xf) * 4,
                    None => return 0,
                },
                c if c == LDX | W | IMM => x = i.k,
                c if c == ST => mem[i.k as usize] = a,
                c if c == LD | W | MEM => a = mem[i.k as usize],
                c if c == MISC | TAX => x = a,
                c if c == ALU | XOR | X => a ^= x,
                c if c == ALU | MUL | K => a = a.wrapping_mul(i.k),
                c if c == ALU | RSH | K => a >>= i.k,
                c if c == ALU | MOD | K => a %= i.k,
                c if c == JMP | JA => pc += i.k as usize,
                c if c & 0x07 == JMP => {
                    let t = match c & 0xf0 {
                        JEQ => a == i.k,
                        JGE => a >= i.k,
                        JSET => a & i.k != 0,
                        _ => panic!("unexpected jump {c:#x}"),
                    };
                    pc += usize::from(if t { i.jt } else { i.jf });
                }
                c if c == RET | A => return a,
                c if c == RET | K => return i.k,
                c => panic!("unexpected instruction {c:#x}"),
            }
        }
    }

    fn steering(workers: u16) -> Steering {
        Steering { workers, local_ports: vec![32768..40960, 40960..49152] }
    }

    /// An Ethernet frame with an IPv4 or IPv6 header (`ihl` 32-bit words of
    /// IPv4 header) and TCP/UDP ports.
    fn frame(v6: bool, proto: u8, ihl: u8, frag: u16, sport: u16, dport: u16) -> Vec<u8> {
        let mut f = vec![0u8; 12];
        if v6 {
            f.extend_from_slice(&ETHERTYPE_IPV6.to_be_bytes());
            let mut ip = vec![0u8; 40];
            ip[0] = 0x60;
            ip[6] = proto;
            f.extend_from_slice(&ip);
        } else {
            f.extend_from_slice(&ETHERTYPE_IPV4.to_be_bytes());
            let mut ip = vec![0u8; usize::from(ihl) * 4];
            ip[0] = 0x40 | ihl;
            ip[6..8].copy_from_slice(&frag.to_be_bytes());
            ip[9] = proto;
            f.extend_from_slice(&ip);
        }
        f.extend_from_slice(&sport.to_be_bytes());
        f.extend_from_slice(&dport.to_be_bytes());
        f.extend_from_slice(&[0u8; 16]);
        f
    }

    #[test]
    fn clients_go_by_source_port_and_replies_by_local_destination_port() {
        let s = steering(4);
        // Clients of one address from even ports only (Linux's connect())
        // still spread over every worker.
        let mut per = [0u32; 4];
        for port in (40000..40400).step_by(2) {
            per[usize::from(s.worker_of(&frame(false, IPPROTO_TCP, 5, 0, port, 80)))] += 1;
        }
        assert!(per.iter().all(|n| *n > 25), "even client ports over 4 workers: {per:?}");
        // Backend :80 -> our ephemeral port 33002: worker 33002 % 4 = 2.
        assert_eq!(s.worker_of(&frame(false, IPPROTO_TCP, 5, 0, 80, 33002)), 2);
        // A UDP reply to a SNAT port, over IPv6.
        assert_eq!(s.worker_of(&frame(true, IPPROTO_UDP, 0, 0, 53, 40963)), 3);
        // ICMP, later fragments and ARP: the primary.
        assert_eq!(s.worker_of(&frame(false, 1, 5, 0, 50001, 80)), 0);
        assert_eq!(s.worker_of(&frame(false, IPPROTO_UDP, 5, 185, 50001, 80)), 0);
        let mut arp = frame(false, 0, 5, 0, 0, 0);
        arp[12..14].copy_from_slice(&0x0806u16.to_be_bytes());
        assert_eq!(s.worker_of(&arp), 0);
        // Options in the IPv4 header move the ports.
        assert_eq!(s.worker_of(&frame(false, IPPROTO_TCP, 7, 0, 80, 33003)), 3);
    }

    #[test]
    fn the_neighbor_filter_keeps_arp_and_solicitations_only() {
        let prog = neighbor_filter();
        let icmp6 = |ty: u8| {
            let mut f = frame(true, 58, 0, 0, 0, 0);
            f[ETH_LEN + 40] = ty;
            f
        };
        let mut arp = frame(false, 0, 5, 0, 0, 0);
        arp[12..14].copy_from_slice(&0x0806u16.to_be_bytes());
        assert_ne!(run(&prog, &arp), 0);
        assert_ne!(run(&prog, &icmp6(135)), 0);
        assert_ne!(run(&prog, &icmp6(136)), 0);
        assert!(is_neighbor(&arp) && is_neighbor(&icmp6(135)) && is_neighbor(&icmp6(136)));
        for other in [
            icmp6(128),
            icmp6(134),
            icmp6(137),
            frame(false, IPPROTO_TCP, 5, 0, 50001, 80),
            frame(false, 1, 5, 0, 0, 0),
            frame(true, IPPROTO_UDP, 0, 0, 53, 40000),
        ] {
            assert_eq!(run(&prog, &other), 0, "{other:02x?}");
            assert!(!is_neighbor(&other), "{other:02x?}");
        }
    }

    #[test]
    fn the_kernel_program_agrees_with_the_rule_on_generated_frames() {
        let mut seed = 0x5eed_u64;
        let mut rnd = move || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed
        };
        for workers in [1u16, 2, 3, 4, 7, 16] {
            let s = steering(workers);
            let prog = s.fanout_program();
            assert!(prog.len() < 64, "program has {} instructions", prog.len());
            let mut seen = vec![0u32; usize::from(workers)];
            for _ in 0..20_000 {
                let r = rnd();
                let proto = [IPPROTO_TCP, IPPROTO_UDP, 1, 58][(r % 4) as usize];
                let ihl = 5 + ((r >> 4) % 3) as u8;
                let frag = if (r >> 8) % 8 == 0 { ((r >> 12) as u16) & 0x3fff } else { 0x4000 };
                let port = |x: u64| match x % 3 {
                    0 => 32768 + (x >> 2) as u16 % 16384,
                    1 => [80, 443, 5432][(x >> 2) as usize % 3],
                    _ => (x >> 2) as u16,
                };
                let v6 = (r >> 20) % 3 == 0;
                let mut f = frame(v6, proto, ihl, frag, port(r >> 24), port(r >> 40));
                // Source addresses: the last 32 bits enter the client hash.
                let src = ETH_LEN + if v6 { 20 } else { 12 };
                f[src..src + 4].copy_from_slice(&(rnd() as u32).to_be_bytes());
                // Some frames cut short, some with another EtherType.
                match (r >> 60) % 8 {
                    0 => f.truncate((r >> 32) as usize % f.len().max(1)),
                    1 => f[12] = 0x08 ^ ((r >> 33) as u8 & 0x1),
                    _ => {}
                }
                if f.len() < ETH_LEN {
                    continue;
                }
                let want = u32::from(s.worker_of(&f));
                assert_eq!(run(&prog, &f), want, "frame {f:02x?} with {workers} workers");
                seen[want as usize] += 1;
            }
            assert!(seen.iter().all(|n| *n > 0), "every worker gets flows: {seen:?}");
        }
    }
}
#[cfg(test)]
#[test]
fn dump_program() {
    let s = Steering { workers: 2, local_ports: vec![32768..40960, 40960..61000] };
    for i in s.fanout_program() {
        println!("ins({:#x},{},{},{:#x}),", i.code, i.jt, i.jf, i.k);
    }
}
