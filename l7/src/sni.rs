//! The server name of a TLS ClientHello (RFC 8446 4.1.2, RFC 6066 3), read
//! without terminating TLS: for passthrough listeners that route by SNI and
//! then forward the bytes untouched. The hello may arrive over several TCP
//! segments and several TLS records.

/// What the bytes so far say.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Hello {
    /// A complete ClientHello, with its server name if it sent one.
    Complete(Option<String>),
    /// Not enough bytes yet.
    Partial,
    /// Not a TLS ClientHello, or a malformed one.
    Invalid,
}

/// Largest ClientHello accepted (post-quantum key shares make them larger
/// than they used to be, but far from this).
pub const MAX_HELLO: usize = 64 * 1024;

/// Reads the ClientHello at the start of `buf`.
pub fn client_hello(buf: &[u8]) -> Hello {
    // The handshake message, reassembled from the records it spans.
    let mut hs: Vec<u8> = Vec::new();
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
        if rest.len() < 5 + len {
            return Hello::Partial;
        }
        hs.extend_from_slice(&rest[5..5 + len]);
        rest = &rest[5 + len..];
    };
    match server_name(&hs[4..need]) {
        Some(name) => Hello::Complete(name),
        None => Hello::Invalid,
    }
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

/// The host name in a ClientHello body: `Some(None)` without the extension,
/// `None` if the body is malformed.
fn server_name(body: &[u8]) -> Option<Option<String>> {
    let mut r = Rd(body);
    r.take(2 + 32)?; // legacy_version, random
    r.vec8()?; // legacy_session_id
    r.vec16()?; // cipher_suites
    r.vec8()?; // legacy_compression_methods
    if r.0.is_empty() {
        return Some(None); // no extensions at all
    }
    let mut exts = Rd(r.vec16()?);
    while !exts.0.is_empty() {
        let ty = exts.u16()?;
        let data = exts.vec16()?;
        if ty != 0 {
            continue;
        }
        // ServerNameList: the first host_name entry.
        let mut list = Rd(Rd(data).vec16()?);
        while !list.0.is_empty() {
            let kind = list.u8()?;
            let name = list.vec16()?;
            if kind == 0 {
                let name = std::str::from_utf8(name).ok()?;
                let valid = !name.is_empty()
                    && name.len() <= 253
                    && name.bytes().all(|b| b.is_ascii_alphanumeric() || b"-._".contains(&b));
                return valid.then(|| Some(name.to_ascii_lowercase()));
            }
        }
        return Some(None);
    }
    Some(None)
}

/// Whether `name` matches `pattern`: equal (case-insensitive), or for
/// `*.example.com` any name directly or deeper under `example.com`.
pub fn name_matches(pattern: &str, name: &str) -> bool {
    match pattern.strip_prefix("*.") {
        Some(domain) => {
            name.len() > domain.len() + 1
                && name[name.len() - domain.len()..].eq_ignore_ascii_case(domain)
                && name.as_bytes()[name.len() - domain.len() - 1] == b'.'
        }
        None => pattern.eq_ignore_ascii_case(name),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A ClientHello with `sni` (if any) and `pad` bytes of padding extension.
    fn hello(sni: Option<&str>, pad: usize) -> Vec<u8> {
        let mut exts = Vec::new();
        if let Some(name) = sni {
            let n = name.as_bytes();
            exts.extend_from_slice(&0u16.to_be_bytes());
            exts.extend_from_slice(&((n.len() + 5) as u16).to_be_bytes());
            exts.extend_from_slice(&((n.len() + 3) as u16).to_be_bytes());
            exts.push(0);
            exts.extend_from_slice(&(n.len() as u16).to_be_bytes());
            exts.extend_from_slice(n);
        }
        exts.extend_from_slice(&21u16.to_be_bytes()); // padding
        exts.extend_from_slice(&(pad as u16).to_be_bytes());
        exts.extend(std::iter::repeat_n(0, pad));
        let mut body = vec![3, 3];
        body.extend_from_slice(&[7; 32]);
        body.push(0);
        body.extend_from_slice(&[0, 2, 0x13, 0x01]);
        body.extend_from_slice(&[1, 0]);
        body.extend_from_slice(&(exts.len() as u16).to_be_bytes());
        body.extend_from_slice(&exts);
        let mut hs = vec![1];
        hs.extend_from_slice(&(body.len() as u32).to_be_bytes()[1..]);
        hs.extend_from_slice(&body);
        // Records of at most 16 KiB.
        let mut out = Vec::new();
        for frag in hs.chunks(16384) {
            out.extend_from_slice(&[22, 3, 1]);
            out.extend_from_slice(&(frag.len() as u16).to_be_bytes());
            out.extend_from_slice(frag);
        }
        out
    }

    #[test]
    fn names_are_found_across_segments_and_records() {
        let h = hello(Some("API.Example.com"), 100);
        assert_eq!(client_hello(&h), Hello::Complete(Some("api.example.com".into())));
        for cut in [0, 3, 5, 9, 40, h.len() - 1] {
            assert_eq!(client_hello(&h[..cut]), Hello::Partial, "cut at {cut}");
        }
        // A hello larger than a record: two records.
        let big = hello(Some("big.example.com"), 20_000);
        assert!(big.len() > 16384 + 5);
        assert_eq!(client_hello(&big[..16384 + 5]), Hello::Partial);
        assert_eq!(client_hello(&big), Hello::Complete(Some("big.example.com".into())));
        assert_eq!(client_hello(&hello(None, 0)), Hello::Complete(None));
    }

    #[test]
    fn garbage_is_invalid() {
        assert_eq!(client_hello(b"GET / HTTP/1.1\r\n\r\n"), Hello::Invalid);
        let mut h = hello(Some("a.example"), 0);
        h[5] = 2; // a ServerHello
        assert_eq!(client_hello(&h), Hello::Invalid);
        let mut h = hello(Some("a.example"), 0);
        let n = h.len();
        h[n - 12] = 0xff; // a length past the end
        assert_eq!(client_hello(&h), Hello::Invalid);
        let h = hello(Some("bad name!"), 0);
        assert_eq!(client_hello(&h), Hello::Invalid);
    }

    #[test]
    fn wildcards() {
        assert!(name_matches("*.example.com", "a.example.com"));
        assert!(name_matches("*.example.com", "a.b.example.com"));
        assert!(!name_matches("*.example.com", "example.com"));
        assert!(!name_matches("*.example.com", "badexample.com"));
        assert!(name_matches("db.example.com", "DB.example.com"));
    }
}
