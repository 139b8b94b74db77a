//! The server name of a TLS ClientHello (RFC 8446 4.1.2, RFC 6066 3), read
//! without terminating TLS, for passthrough listeners that route by SNI and
//! then forward the bytes untouched. The hello may arrive over several TCP
//! segments and several TLS records; `switchyard-tls-hello` reads it.

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

pub use switchyard_tls_hello::MAX_HELLO;

/// Reads the ClientHello at the start of `buf` for the server name it asks
/// for, lowercased; a server name extension that does not parse makes the
/// hello invalid, as a name that is not a host name does.
pub fn client_hello(buf: &[u8]) -> Hello {
    use switchyard_tls_hello as tls;
    match tls::read(buf) {
        tls::Hello::Complete(h) => match h.server_name() {
            Ok(name) => Hello::Complete(name.map(str::to_ascii_lowercase)),
            Err(tls::BadServerName) => Hello::Invalid,
        },
        tls::Hello::Partial => Hello::Partial,
        tls::Hello::Invalid => Hello::Invalid,
    }
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

    /// A ClientHello record naming `sni`.
    fn hello(sni: &str) -> Vec<u8> {
        let n = sni.as_bytes();
        let mut exts = 0u16.to_be_bytes().to_vec();
        exts.extend_from_slice(&((n.len() + 5) as u16).to_be_bytes());
        exts.extend_from_slice(&((n.len() + 3) as u16).to_be_bytes());
        exts.push(0);
        exts.extend_from_slice(&(n.len() as u16).to_be_bytes());
        exts.extend_from_slice(n);
        let mut body = vec![3, 3];
        body.extend_from_slice(&[7; 32]);
        body.extend_from_slice(&[0, 0, 2, 0x13, 0x01, 1, 0]);
        body.extend_from_slice(&(exts.len() as u16).to_be_bytes());
        body.extend_from_slice(&exts);
        let mut out = vec![22, 3, 1];
        out.extend_from_slice(&((body.len() + 4) as u16).to_be_bytes());
        out.push(1);
        out.extend_from_slice(&(body.len() as u32).to_be_bytes()[1..]);
        out.extend_from_slice(&body);
        out
    }

    #[test]
    fn names_are_lowercased_and_bad_ones_make_the_hello_invalid() {
        let h = hello("API.Example.com");
        assert_eq!(client_hello(&h), Hello::Complete(Some("api.example.com".into())));
        assert_eq!(client_hello(&h[..h.len() - 1]), Hello::Partial);
        assert_eq!(client_hello(&hello("bad name!")), Hello::Invalid);
        assert_eq!(client_hello(b"GET / HTTP/1.1\r\n\r\n"), Hello::Invalid);
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
