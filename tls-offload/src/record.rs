//! TLS records sealed and opened from extracted traffic secrets, the way kTLS
//! and NIC inline TLS do it: an AEAD key, the nonce's fixed part and a
//! sequence number per direction, nothing else of the handshake. TLS 1.3
//! records follow RFC 8446 section 5, TLS 1.2 AEAD records RFC 5246 6.2.3.3
//! with RFC 5288 (AES-GCM) and RFC 7905 (ChaCha20-Poly1305) nonces.

use aws_lc_rs::aead::{
    AES_128_GCM, AES_256_GCM, Aad, CHACHA20_POLY1305, LessSafeKey, Nonce, UnboundKey,
};
use rustls::ConnectionTrafficSecrets;

/// Bytes of a record header: content type, legacy version, length.
pub const HEADER: usize = 5;
/// The most plaintext one record carries (2^14).
pub const MAX_PLAIN: usize = 16 * 1024;
/// The longest record a peer may send: TLS 1.2 allows 2,048 bytes of
/// expansion (RFC 5246 6.2.3), TLS 1.3 only 256 (RFC 8446 5.2).
pub const MAX_RECORD: usize = HEADER + MAX_PLAIN + 2048;
const MAX_CIPHER_13: usize = MAX_PLAIN + 256;
const MAX_CIPHER_12: usize = MAX_PLAIN + 2048;
const TAG: usize = 16;
/// TLS 1.2 AES-GCM sends the nonce's last 8 bytes in front of each record.
const EXPLICIT_NONCE: usize = 8;

/// Content types (RFC 8446 5.1).
pub mod content {
    /// `change_cipher_spec`.
    pub const CHANGE_CIPHER_SPEC: u8 = 20;
    /// `alert`.
    pub const ALERT: u8 = 21;
    /// `handshake`.
    pub const HANDSHAKE: u8 = 22;
    /// `application_data`.
    pub const APPLICATION_DATA: u8 = 23;
}

/// The protocol whose record format is used.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Version {
    /// TLS 1.2: the content type in the header, AAD of sequence, type,
    /// version and length.
    Tls12,
    /// TLS 1.3: every record says `application_data`; the real type is the
    /// last non-zero byte of the plaintext.
    Tls13,
}

/// Why a record could not be opened: each is a fatal alert to send.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RecordError {
    /// The tag did not verify, or there is no room for one
    /// (`bad_record_mac`, RFC 8446 5.2).
    BadMac,
    /// Longer than the protocol allows (`record_overflow`).
    Overflow,
    /// A content type that has no business here, or none at all (a TLS
    /// 1.3 inner plaintext of nothing but zeros) (`unexpected_message`).
    Unexpected,
    /// The sequence number would wrap: the connection must end.
    Exhausted,
}

impl RecordError {
    /// The alert description (RFC 8446 6) that answers the error.
    pub fn alert(self) -> rustls::AlertDescription {
        use rustls::AlertDescription as A;
        match self {
            RecordError::BadMac => A::BadRecordMac,
            RecordError::Overflow => A::RecordOverflow,
            RecordError::Unexpected => A::UnexpectedMessage,
            RecordError::Exhausted => A::InternalError,
        }
    }
}

/// The cipher suites' AEADs whose keys can come out of rustls.
#[derive(Debug)]
pub struct Unsupported;

/// One direction of a connection: the key, the nonce's fixed part and the
/// sequence number of the next record.
pub struct Keys {
    version: Version,
    key: LessSafeKey,
    iv: [u8; 12],
    seq: u64,
    /// TLS 1.2 with AES-GCM: an explicit nonce in each record.
    explicit: bool,
}

/// A record opened in place at the front of a buffer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Opened {
    /// The real content type.
    pub typ: u8,
    /// Where the plaintext lies in the buffer.
    pub start: usize,
    /// Its length.
    pub len: usize,
    /// Bytes of the record, header included: what to consume.
    pub consumed: usize,
}

impl Keys {
    /// The keys of one direction, starting at sequence number `seq`.
    pub fn new(
        version: Version,
        seq: u64,
        secrets: ConnectionTrafficSecrets,
    ) -> Result<Keys, Unsupported> {
        let (alg, key, iv) = match secrets {
            ConnectionTrafficSecrets::Aes128Gcm { key, iv } => (&AES_128_GCM, key, iv),
            ConnectionTrafficSecrets::Aes256Gcm { key, iv } => (&AES_256_GCM, key, iv),
            ConnectionTrafficSecrets::Chacha20Poly1305 { key, iv } => (&CHACHA20_POLY1305, key, iv),
            _ => return Err(Unsupported),
        };
        let iv: [u8; 12] = iv.as_ref().try_into().map_err(|_| Unsupported)?;
        Keys::from_parts(version, seq, alg, key.as_ref(), iv)
    }

    /// The keys from an algorithm, key bytes and IV.
    fn from_parts(
        version: Version,
        seq: u64,
        alg: &'static aws_lc_rs::aead::Algorithm,
        key: &[u8],
        iv: [u8; 12],
    ) -> Result<Keys, Unsupported> {
        let gcm = alg != &CHACHA20_POLY1305;
        let key = UnboundKey::new(alg, key).map_err(|_| Unsupported)?;
        Ok(Keys {
            version,
            key: LessSafeKey::new(key),
            iv,
            seq,
            explicit: gcm && version == Version::Tls12,
        })
    }

    /// The sequence number of the next record.
    pub fn seq(&self) -> u64 {
        self.seq
    }

    /// The nonce of the record with the current sequence number: the fixed
    /// part with the sequence number XORed into its last 8 bytes (RFC 8446
    /// 5.3; for TLS 1.2 AES-GCM that is also what goes out explicitly).
    fn nonce(&self) -> [u8; 12] {
        let mut n = self.iv;
        for (b, s) in n[4..].iter_mut().zip(self.seq.to_be_bytes()) {
            *b ^= s;
        }
        n
    }

    fn next(&mut self) -> Result<(), RecordError> {
        self.seq = self.seq.checked_add(1).ok_or(RecordError::Exhausted)?;
        Ok(())
    }

    /// Whether the AEAD limits how many records one key may seal (AES-GCM,
    /// 2^24.5 full records, RFC 8446 5.5); ChaCha20-Poly1305 does not in
    /// practice (2^64).
    pub fn limited(&self) -> bool {
        self.key.algorithm() != &CHACHA20_POLY1305
    }

    /// Bytes a record adds to `n` bytes of plaintext.
    pub fn overhead(&self) -> usize {
        HEADER
            + TAG
            + match (self.version, self.explicit) {
                (Version::Tls13, _) => 1,
                (Version::Tls12, true) => EXPLICIT_NONCE,
                (Version::Tls12, false) => 0,
            }
    }

    /// Appends to `out` one sealed record of content type `typ` holding
    /// `plain` (at most [`MAX_PLAIN`] bytes).
    pub fn seal(&mut self, typ: u8, plain: &[u8], out: &mut Vec<u8>) -> Result<(), RecordError> {
        debug_assert!(plain.len() <= MAX_PLAIN);
        let nonce = self.nonce();
        let start = out.len();
        let body = plain.len() + self.overhead() - HEADER;
        let outer = if self.version == Version::Tls13 { content::APPLICATION_DATA } else { typ };
        out.extend_from_slice(&[outer, 3, 3]);
        out.extend_from_slice(&(body as u16).to_be_bytes());
        // TLS 1.3 authenticates the header; TLS 1.2 its own pseudo-header.
        let mut aad = [0u8; 13];
        let aad: &[u8] = match self.version {
            Version::Tls13 => {
                aad[..HEADER].copy_from_slice(&out[start..start + HEADER]);
                &aad[..HEADER]
            }
            Version::Tls12 => {
                aad = tls12_aad(self.seq, typ, plain.len());
                &aad
            }
        };
        if self.explicit {
            out.extend_from_slice(&nonce[4..]);
        }
        let sealed_from = out.len();
        out.extend_from_slice(plain);
        if self.version == Version::Tls13 {
            out.push(typ);
        }
        let tag = self
            .key
            .seal_in_place_separate_tag(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(aad),
                &mut out[sealed_from..],
            )
            .map_err(|_| RecordError::Exhausted)?;
        out.extend_from_slice(tag.as_ref());
        self.next()
    }

    /// Opens the record at the front of `buf` in place. `Ok(None)` while the
    /// buffer does not yet hold a whole record.
    pub fn open(&mut self, buf: &mut [u8]) -> Result<Option<Opened>, RecordError> {
        let Some(header) = buf.get(..HEADER) else { return Ok(None) };
        let outer = header[0];
        let len = usize::from(u16::from_be_bytes([header[3], header[4]]));
        let max = if self.version == Version::Tls13 { MAX_CIPHER_13 } else { MAX_CIPHER_12 };
        if len > max {
            return Err(RecordError::Overflow);
        }
        if buf.len() < HEADER + len {
            return Ok(None);
        }
        let consumed = HEADER + len;
        match self.version {
            Version::Tls13 => {
                // After the handshake every record is protected application
                // data (a stray change_cipher_spec is refused: RFC 8446 5).
                if outer != content::APPLICATION_DATA {
                    return Err(RecordError::Unexpected);
                }
                // Too short to hold a tag cannot be authentic; a tag and
                // nothing else opens to an empty TLSInnerPlaintext, which
                // has no content type (below).
                if len < TAG {
                    return Err(RecordError::BadMac);
                }
                let mut h = [0u8; HEADER];
                h.copy_from_slice(&buf[..HEADER]);
                let nonce = Nonce::assume_unique_for_key(self.nonce());
                let plain = self
                    .key
                    .open_in_place(nonce, Aad::from(h), &mut buf[HEADER..consumed])
                    .map_err(|_| RecordError::BadMac)?;
                // TLSInnerPlaintext: content, type, zero padding; at most
                // 2^14 + 1 bytes (RFC 8446 5.4).
                if plain.len() > MAX_PLAIN + 1 {
                    return Err(RecordError::Overflow);
                }
                let Some(end) = plain.iter().rposition(|&b| b != 0) else {
                    return Err(RecordError::Unexpected);
                };
                let typ = plain[end];
                if end > MAX_PLAIN {
                    return Err(RecordError::Overflow);
                }
                self.next()?;
                Ok(Some(Opened { typ, start: HEADER, len: end, consumed }))
            }
            Version::Tls12 => {
                if !matches!(outer, content::ALERT | content::HANDSHAKE | content::APPLICATION_DATA)
                {
                    return Err(RecordError::Unexpected);
                }
                let lead = if self.explicit { EXPLICIT_NONCE } else { 0 };
                if len < lead + TAG {
                    return Err(RecordError::BadMac);
                }
                let mut nonce = self.nonce();
                if self.explicit {
                    nonce[4..].copy_from_slice(&buf[HEADER..HEADER + EXPLICIT_NONCE]);
                }
                let plain_len = len - lead - TAG;
                if plain_len > MAX_PLAIN {
                    return Err(RecordError::Overflow);
                }
                let mut aad = tls12_aad(self.seq, outer, plain_len);
                // The version as the record says (RFC 5246 6.2.3.3).
                aad[9..11].copy_from_slice(&buf[1..3]);
                self.key
                    .open_in_place(
                        Nonce::assume_unique_for_key(nonce),
                        Aad::from(aad),
                        &mut buf[HEADER + lead..consumed],
                    )
                    .map_err(|_| RecordError::BadMac)?;
                self.next()?;
                Ok(Some(Opened { typ: outer, start: HEADER + lead, len: plain_len, consumed }))
            }
        }
    }
}

/// TLS 1.2's additional data: sequence number, type, version, length.
fn tls12_aad(seq: u64, typ: u8, len: usize) -> [u8; 13] {
    let mut a = [0u8; 13];
    a[..8].copy_from_slice(&seq.to_be_bytes());
    a[8] = typ;
    a[9] = 3;
    a[10] = 3;
    a[11..].copy_from_slice(&(len as u16).to_be_bytes());
    a
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keys(v: Version, kind: u8) -> Keys {
        let (alg, len) = match kind {
            0 => (&AES_128_GCM, 16),
            1 => (&AES_256_GCM, 32),
            _ => (&CHACHA20_POLY1305, 32),
        };
        Keys::from_parts(v, 5, alg, &[kind + 1; 32][..len], [7; 12]).unwrap()
    }

    fn pair(v: Version, kind: u8) -> (Keys, Keys) {
        (keys(v, kind), keys(v, kind))
    }

    #[test]
    fn records_round_trip_in_every_format() {
        for v in [Version::Tls12, Version::Tls13] {
            for kind in 0..3 {
                let (mut tx, mut rx) = pair(v, kind);
                let mut wire = Vec::new();
                for (i, n) in [0usize, 1, 100, MAX_PLAIN].into_iter().enumerate() {
                    let plain: Vec<u8> = (0..n).map(|j| (i + j) as u8).collect();
                    let typ = if i == 1 { content::ALERT } else { content::APPLICATION_DATA };
                    let at = wire.len();
                    tx.seal(typ, &plain, &mut wire).unwrap();
                    assert_eq!(wire.len() - at, n + tx.overhead(), "{v:?} {kind}");
                    let o = rx.open(&mut wire[at..]).unwrap().unwrap();
                    assert_eq!(o.typ, typ);
                    assert_eq!(&wire[at + o.start..at + o.start + o.len], &plain[..]);
                    assert_eq!(o.consumed, wire.len() - at);
                }
                assert_eq!((tx.seq(), rx.seq()), (9, 9));
            }
        }
    }

    #[test]
    fn tampering_truncation_and_overflow_are_refused() {
        for v in [Version::Tls12, Version::Tls13] {
            let (mut tx, mut rx) = pair(v, 0);
            let mut wire = Vec::new();
            tx.seal(content::APPLICATION_DATA, b"hello", &mut wire).unwrap();
            // Incomplete: waits.
            assert_eq!(rx.open(&mut wire.clone()[..wire.len() - 1]), Ok(None));
            assert_eq!(rx.open(&mut wire.clone()[..3]), Ok(None));
            // A flipped bit anywhere after the header, or in the header.
            for at in [0, 1, HEADER, HEADER + 9, wire.len() - 1] {
                let mut bad = wire.clone();
                bad[at] ^= 1;
                assert!(rx.open(&mut bad).is_err(), "{v:?} flip at {at}");
            }
            // A length one short leaves the tag incomplete: refused once
            // the rest is there, as a MAC failure.
            let mut cut = wire.clone();
            cut[4] -= 1;
            assert_eq!(rx.open(&mut cut), Err(RecordError::BadMac), "{v:?}");
            // A record claiming more than the protocol allows.
            let mut big = vec![content::APPLICATION_DATA, 3, 3, 0x50, 0x00];
            big.resize(HEADER + 0x5000, 0);
            assert_eq!(rx.open(&mut big), Err(RecordError::Overflow));
            // Too short for a tag: it cannot be authentic.
            let mut short = vec![content::APPLICATION_DATA, 3, 3, 0, 4, 1, 2, 3, 4];
            assert_eq!(rx.open(&mut short), Err(RecordError::BadMac));
            // The longest record the protocol allows is opened (and fails
            // its tag); one byte more is an overflow before that. TLS 1.3
            // bounds the ciphertext (2^14 + 256), TLS 1.2 the plaintext
            // (2^14) inside it.
            let most = match v {
                Version::Tls13 => MAX_CIPHER_13,
                Version::Tls12 => MAX_PLAIN + tx.overhead() - HEADER,
            };
            for (len, want) in [(most, RecordError::BadMac), (most + 1, RecordError::Overflow)] {
                let mut rec = vec![content::APPLICATION_DATA, 3, 3];
                rec.extend_from_slice(&(len as u16).to_be_bytes());
                rec.resize(HEADER + len, 0x5a);
                assert_eq!(rx.open(&mut rec), Err(want), "{v:?} {len}");
            }
            // The good record still opens: failures consumed no sequence number.
            assert!(rx.open(&mut wire).unwrap().is_some());
        }
    }

    /// A TLS 1.3 record of `inner` (TLSInnerPlaintext: content, type,
    /// padding) sealed by hand under `tx`'s next sequence number.
    fn seal_inner(tx: &mut Keys, inner: &[u8]) -> Vec<u8> {
        let mut wire = vec![content::APPLICATION_DATA, 3, 3];
        wire.extend_from_slice(&((inner.len() + TAG) as u16).to_be_bytes());
        let h: [u8; HEADER] = wire[..].try_into().unwrap();
        wire.extend_from_slice(inner);
        let nonce = Nonce::assume_unique_for_key(tx.nonce());
        let tag = tx.key.seal_in_place_separate_tag(nonce, Aad::from(h), &mut wire[HEADER..]);
        wire.extend_from_slice(tag.unwrap().as_ref());
        tx.next().unwrap();
        wire
    }

    #[test]
    fn tls13_padding_is_stripped_and_a_stray_change_cipher_spec_refused() {
        let (mut tx, mut rx) = pair(Version::Tls13, 2);
        // A record padded with zeros behind its content type.
        let mut inner = b"pad".to_vec();
        inner.push(content::APPLICATION_DATA);
        inner.extend_from_slice(&[0; 20]);
        let mut wire = seal_inner(&mut tx, &inner);
        let o = rx.open(&mut wire).unwrap().unwrap();
        assert_eq!(
            (o.typ, &wire[o.start..o.start + o.len]),
            (content::APPLICATION_DATA, &b"pad"[..])
        );
        let mut ccs = vec![content::CHANGE_CIPHER_SPEC, 3, 3, 0, 1, 1];
        assert_eq!(rx.open(&mut ccs), Err(RecordError::Unexpected));
    }

    /// RFC 8446 5.4: an inner plaintext with no content type (empty, or
    /// nothing but padding) is `unexpected_message`; one longer than
    /// 2^14 + 1 bytes is `record_overflow`, though its ciphertext is
    /// within the record limit.
    #[test]
    fn tls13_inner_plaintext_without_a_type_or_too_long_is_refused() {
        let (mut tx, mut rx) = pair(Version::Tls13, 0);
        let mut empty = seal_inner(&mut tx, &[]);
        assert_eq!(empty.len(), HEADER + TAG);
        assert_eq!(rx.open(&mut empty), Err(RecordError::Unexpected));
        let (mut tx, mut rx) = pair(Version::Tls13, 0);
        let mut zeros = seal_inner(&mut tx, &[0; 40]);
        assert_eq!(rx.open(&mut zeros), Err(RecordError::Unexpected));
        for (content_len, want) in [(MAX_PLAIN, None), (MAX_PLAIN + 1, Some(RecordError::Overflow))]
        {
            let (mut tx, mut rx) = pair(Version::Tls13, 1);
            let mut inner = vec![7u8; content_len];
            inner.push(content::APPLICATION_DATA);
            let mut wire = seal_inner(&mut tx, &inner);
            match want {
                None => assert_eq!(rx.open(&mut wire).unwrap().unwrap().len, MAX_PLAIN),
                Some(e) => assert_eq!(rx.open(&mut wire), Err(e)),
            }
        }
    }
}
