//! A TLS ClientHello (RFC 8446 4.1.2) read without terminating TLS. Two
//! layers look into a client's first flight before any TLS library does:
//! L7 passthrough listeners route on the server name (RFC 6066 3) and then
//! forward the bytes untouched, and the TLS terminator checks whether a
//! client offers a pre-shared key (it is resuming) to pick the server
//! configuration. Both read the hello here, so there is one parser of
//! untrusted bytes to keep right.
//!
//! The hello may arrive over several TCP segments and span several TLS
//! records; [`read`] says whether the bytes so far hold a whole one. When
//! the hello sits in one record, as nearly every hello does, nothing is
//! copied.
#![forbid(unsafe_code)]

use std::borrow::Cow;

/// Largest ClientHello accepted (post-quantum key shares make them larger
/// than they used to be, but far from this).
pub const MAX_HELLO: usize = 64 * 1024;

/// Extension types read here.
pub mod ext {
    /// `server_name` (RFC 6066 3).
    pub const SERVER_NAME: u16 = 0;
    /// `pre_shared_key` (RFC 8446 4.2.11).
    pub const PRE_SHARED_KEY: u16 = 41;
}

/// What the bytes so far say.
#[derive(Debug, PartialEq, Eq)]
pub enum Hello<'a> {
    /// A whole, well-framed ClientHello.
    Complete(ClientHello<'a>),
    /// Not enough bytes yet.
    Partial,
    /// Not a TLS ClientHello, or a malformed one.
    Invalid,
}

/// A ClientHello whose framing was checked: the fixed fields and every
/// extension's length lie within it.
#[derive(Debug, PartialEq, Eq)]
pub struct ClientHello<'a> {
    /// The extensions block, without its length.
    exts: Cow<'a, [u8]>,
}

/// A server name extension that does not parse, or a name that is not a
/// host name.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BadServerName;

/// Reads the ClientHello at the start of `buf`, the client's first bytes.
pub fn read(buf: &[u8]) -> Hello<'_> {
    // The handshake message: borrowed when one record holds it, else
    // reassembled from the records it spans.
    let mut hs: Cow<'_, [u8]> = Cow::Borrowed(&[]);
    let mut rest = buf;
    let need = loop {
        if hs.len() >= 4 {
            let len = u32::from_be_bytes([0, hs[1], hs[2], hs[3]]) as usize;
            if hs[0] != 1 || len > MAX_HELLO {
                return Hello::Invalid;
            }
            if hs.len() >= 4 + len {
                break 4 + len;
            }
        }
        if rest.len() < 5 {
            return Hello::Partial;
        }
        // TLSPlaintext: handshake(22), legacy version 3.x, length.
        if rest[0] != 22 || rest[1] != 3 {
            return Hello::Invalid;
        }
        let len = usize::from(u16::from_be_bytes([rest[3], rest[4]]));
        if len == 0 || len > 16 * 1024 + 256 {
            return Hello::Invalid;
        }
        let Some(fragment) = rest.get(5..5 + len) else { return Hello::Partial };
        if hs.is_empty() {
            hs = Cow::Borrowed(fragment);
        } else {
            hs.to_mut().extend_from_slice(fragment);
        }
        rest = &rest[5 + len..];
    };
    let Some(at) = extensions(&hs[4..need]) else { return Hello::Invalid };
    let exts = match hs {
        Cow::Borrowed(b) => Cow::Borrowed(&b[4 + at.start..4 + at.end]),
        Cow::Owned(mut v) => {
            v.truncate(4 + at.end);
            v.drain(..4 + at.start);
            Cow::Owned(v)
        }
    };
    Hello::Complete(ClientHello { exts })
}

impl ClientHello<'_> {
    /// The body of extension `ty`, if the client sent it.
    pub fn extension(&self, ty: u16) -> Option<&[u8]> {
        let mut r = Rd(&self.exts);
        while !r.0.is_empty() {
            let t = r.u16()?;
            let data = r.vec16()?;
            if t == usize::from(ty) {
                return Some(data);
            }
        }
        None
    }

    /// The host name the client asked for, as sent (RFC 6066 3: the first
    /// `host_name` entry); `Ok(None)` without a server name extension.
    pub fn server_name(&self) -> Result<Option<&str>, BadServerName> {
        let Some(data) = self.extension(ext::SERVER_NAME) else { return Ok(None) };
        let mut list = Rd(Rd(data).vec16().ok_or(BadServerName)?);
        while !list.0.is_empty() {
            let kind = list.u8().ok_or(BadServerName)?;
            let name = list.vec16().ok_or(BadServerName)?;
            if kind == 0 {
                let name = std::str::from_utf8(name).map_err(|_| BadServerName)?;
                let valid = !name.is_empty()
                    && name.len() <= 253
                    && name.bytes().all(|b| b.is_ascii_alphanumeric() || b"-._".contains(&b));
                return if valid { Ok(Some(name)) } else { Err(BadServerName) };
            }
        }
        Ok(None)
    }
}

/// Where the extensions block of a ClientHello body (the message without
/// its handshake header) lies in it, once the fixed fields and every
/// extension's framing check out.
fn extensions(body: &[u8]) -> Option<std::ops::Range<usize>> {
    let mut r = Rd(body);
    r.take(2 + 32)?; // legacy_version, random
    r.vec8()?; // legacy_session_id
    r.vec16()?; // cipher_suites
    r.vec8()?; // legacy_compression_methods
    if r.0.is_empty() {
        return Some(body.len()..body.len()); // no extensions at all
    }
    let exts = r.vec16()?;
    let end = body.len() - r.0.len();
    let mut walk = Rd(exts);
    while !walk.0.is_empty() {
        walk.u16()?;
        walk.vec16()?;
    }
    Some(end - exts.len()..end)
}

/// A cursor over the hello's fields; `None` when a length runs past the end.
struct Rd<'a>(&'a [u8]);

impl<'a> Rd<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        if self.0.len() < n {
            return None;
        }
        let (a, b) = self.0.split_at(n);
        self.0 = b;
        Some(a)
    }
    fn u8(&mut self) -> Option<usize> {
        self.take(1).map(|b| usize::from(b[0]))
    }
    fn u16(&mut self) -> Option<usize> {
        self.take(2).map(|b| usize::from(u16::from_be_bytes([b[0], b[1]])))
    }
    fn vec8(&mut self) -> Option<&'a [u8]> {
        let n = self.u8()?;
        self.take(n)
    }
    fn vec16(&mut self) -> Option<&'a [u8]> {
        let n = self.u16()?;
        self.take(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A ClientHello with extensions `exts` (type, body), in records of at
    /// most 16 KiB.
    fn hello(exts: &[(u16, Vec<u8>)]) -> Vec<u8> {
        let mut e = Vec::new();
        for (ty, body) in exts {
            e.extend_from_slice(&ty.to_be_bytes());
            e.extend_from_slice(&(body.len() as u16).to_be_bytes());
            e.extend_from_slice(body);
        }
        let mut body = vec![3, 3];
        body.extend_from_slice(&[9; 32]);
        body.push(32);
        body.extend_from_slice(&[1; 32]); // legacy_session_id
        body.extend_from_slice(&[0, 4, 0x13, 0x01, 0x13, 0x02]);
        body.extend_from_slice(&[1, 0]);
        body.extend_from_slice(&(e.len() as u16).to_be_bytes());
        body.extend_from_slice(&e);
        let mut hs = vec![1];
        hs.extend_from_slice(&(body.len() as u32).to_be_bytes()[1..]);
        hs.extend_from_slice(&body);
        let mut out = Vec::new();
        for frag in hs.chunks(16384) {
            out.extend_from_slice(&[22, 3, 1]);
            out.extend_from_slice(&(frag.len() as u16).to_be_bytes());
            out.extend_from_slice(frag);
        }
        out
    }

    /// A server_name extension naming `name`.
    fn sni(name: &str) -> (u16, Vec<u8>) {
        let n = name.as_bytes();
        let mut e = ((n.len() + 3) as u16).to_be_bytes().to_vec();
        e.push(0);
        e.extend_from_slice(&(n.len() as u16).to_be_bytes());
        e.extend_from_slice(n);
        (ext::SERVER_NAME, e)
    }

    fn pad(n: usize) -> (u16, Vec<u8>) {
        (21, vec![0; n])
    }

    fn name(buf: &[u8]) -> Option<Result<Option<String>, BadServerName>> {
        match read(buf) {
            Hello::Complete(h) => Some(h.server_name().map(|n| n.map(str::to_owned))),
            _ => None,
        }
    }

    #[test]
    fn names_are_found_across_segments_and_records() {
        let h = hello(&[sni("API.Example.com"), pad(100)]);
        assert_eq!(name(&h), Some(Ok(Some("API.Example.com".into()))));
        for cut in 0..h.len() {
            assert_eq!(read(&h[..cut]), Hello::Partial, "cut at {cut}");
        }
        // A hello larger than a record: two records, copied together.
        let big = hello(&[pad(20_000), sni("big.example.com")]);
        assert!(big.len() > 16384 + 5);
        assert_eq!(read(&big[..16384 + 5]), Hello::Partial);
        assert_eq!(name(&big), Some(Ok(Some("big.example.com".into()))));
        assert_eq!(name(&hello(&[pad(0)])), Some(Ok(None)));
        assert_eq!(name(&hello(&[])), Some(Ok(None)));
    }

    #[test]
    fn one_record_is_read_in_place() {
        let h = hello(&[sni("a.example")]);
        let Hello::Complete(c) = read(&h) else { panic!("not read") };
        assert!(matches!(c.exts, Cow::Borrowed(_)));
    }

    /// The handshake message of the one-record `hello`, in records of at
    /// most `n` bytes.
    fn records(hello: &[u8], n: usize) -> Vec<u8> {
        let mut out = Vec::new();
        for frag in hello[5..].chunks(n) {
            out.extend_from_slice(&[22, 3, 1]);
            out.extend_from_slice(&(frag.len() as u16).to_be_bytes());
            out.extend_from_slice(frag);
        }
        out
    }

    #[test]
    fn a_hello_in_records_of_any_size_reads_as_in_one() {
        let psk = vec![0, 4, 1, 2, 3, 4];
        let one = hello(&[sni("a.example"), pad(50), (ext::PRE_SHARED_KEY, psk.clone())]);
        for n in [1, 2, 3, 4, 5, 100] {
            let split = records(&one, n);
            let Hello::Complete(h) = read(&split) else { panic!("records of {n}") };
            assert!(matches!(h.exts, Cow::Owned(_)), "records of {n}");
            assert_eq!(h.extension(ext::PRE_SHARED_KEY), Some(&psk[..]), "records of {n}");
            assert_eq!(h.server_name(), Ok(Some("a.example")), "records of {n}");
            assert_eq!(read(&split[..split.len() - 1]), Hello::Partial, "records of {n}");
        }
        // Past 16 KiB, the key comes from the second record.
        let big = hello(&[pad(20_000), (ext::PRE_SHARED_KEY, psk.clone())]);
        let Hello::Complete(h) = read(&big) else { panic!("not read") };
        assert_eq!(h.extension(ext::PRE_SHARED_KEY), Some(&psk[..]));
    }

    #[test]
    fn extensions_are_found_by_type() {
        let psk = vec![0, 4, 1, 2, 3, 4];
        let with =
            hello(&[sni("a.example"), (43, vec![2, 3, 4]), (ext::PRE_SHARED_KEY, psk.clone())]);
        let Hello::Complete(h) = read(&with) else { panic!("not read") };
        assert_eq!(h.extension(ext::PRE_SHARED_KEY), Some(&psk[..]));
        assert_eq!(h.extension(43), Some(&[2, 3, 4][..]));
        assert_eq!(h.extension(45), None);
        // Bytes after the hello do not matter.
        let mut more = with.clone();
        more.extend_from_slice(&[23, 3, 3, 0, 1, 0]);
        let Hello::Complete(h) = read(&more) else { panic!("not read") };
        assert_eq!(h.extension(ext::PRE_SHARED_KEY), Some(&psk[..]));
    }

    #[test]
    fn garbage_is_invalid() {
        assert_eq!(read(b"GET / HTTP/1.1\r\n\r\n"), Hello::Invalid);
        let good = hello(&[sni("a.example"), (ext::PRE_SHARED_KEY, vec![0, 0])]);
        let mut h = good.clone();
        h[0] = 23; // not a handshake record
        assert_eq!(read(&h), Hello::Invalid);
        let mut h = good.clone();
        h[5] = 2; // a ServerHello
        assert_eq!(read(&h), Hello::Invalid);
        let mut h = good.clone();
        let n = h.len();
        h[n - 3] = 0xff; // the last extension's length runs past the end
        assert_eq!(read(&h), Hello::Invalid);
        // A server name that is not a host name, or a list that does not
        // parse, is the extension's fault: the hello itself is well framed.
        assert_eq!(name(&hello(&[sni("bad name!")])), Some(Err(BadServerName)));
        assert_eq!(name(&hello(&[(ext::SERVER_NAME, vec![0, 9, 0])])), Some(Err(BadServerName)));
        // Every byte flipped, in one record and in records of three bytes
        // (reassembled): an answer, never a panic.
        for hello in [good.clone(), records(&good, 3)] {
            for i in 0..hello.len() {
                for v in [0, 0x80, 0xff] {
                    let mut h = hello.clone();
                    h[i] = v;
                    let _ = name(&h);
                }
            }
        }
    }
}
