//! The TLS 1.3 key schedule on HMAC keys prepared once per secret.
//!
//! rustls's aws-lc-rs provider derives secrets through aws-lc's one-shot HKDF
//! functions. Every expand keys HMAC from scratch (hashing the padded key
//! twice), and an expander that came from an extract keeps the salt and the
//! input rather than the extracted key, so each of its expands runs the extract
//! again. A resumed TLS 1.3 handshake makes dozens of expands.
//!
//! rustls's generic [`HkdfUsingHmac`] extracts once and keys one HMAC per
//! secret. Over aws-lc-rs's HMAC, whose key holds the inner and outer hash
//! states computed when it is made, each expand is then one HMAC of the label
//! from copies of those states. The outputs are HKDF's (RFC 5869) either way;
//! `hkdf_matches_rfc5869` below checks the RFC's test vectors against both.
//!
//! rustls counts [`HkdfUsingHmac`] as not FIPS-approved, so a configuration
//! with these suites reports `fips() == false`. That changes nothing here
//! (aws-lc-rs is not built in its FIPS mode); a FIPS build would keep the
//! provider's own suites.

use std::sync::LazyLock;

use aws_lc_rs::hmac;
use rustls::crypto::tls13::HkdfUsingHmac;
use rustls::{SupportedCipherSuite, Tls13CipherSuite};

/// HMAC over one of aws-lc-rs's hash functions, for [`HkdfUsingHmac`].
struct Hmac(hmac::Algorithm);

/// A key of [`Hmac`]: aws-lc-rs keeps its padded inner and outer states.
struct HmacKey(hmac::Key);

impl rustls::crypto::hmac::Hmac for Hmac {
    fn with_key(&self, key: &[u8]) -> Box<dyn rustls::crypto::hmac::Key> {
        Box::new(HmacKey(hmac::Key::new(self.0, key)))
    }

    fn hash_output_len(&self) -> usize {
        self.0.digest_algorithm().output_len()
    }
}

impl rustls::crypto::hmac::Key for HmacKey {
    fn sign_concat(
        &self,
        first: &[u8],
        middle: &[&[u8]],
        last: &[u8],
    ) -> rustls::crypto::hmac::Tag {
        let mut cx = hmac::Context::with_key(&self.0);
        cx.update(first);
        for part in middle {
            cx.update(part);
        }
        cx.update(last);
        rustls::crypto::hmac::Tag::new(cx.sign().as_ref())
    }

    fn tag_len(&self) -> usize {
        self.0.algorithm().digest_algorithm().output_len()
    }
}

static HMAC_SHA256: Hmac = Hmac(hmac::HMAC_SHA256);
static HMAC_SHA384: Hmac = Hmac(hmac::HMAC_SHA384);
static HKDF_SHA256: HkdfUsingHmac<'static> = HkdfUsingHmac(&HMAC_SHA256);
static HKDF_SHA384: HkdfUsingHmac<'static> = HkdfUsingHmac(&HMAC_SHA384);

/// `suite` with its HKDF on [`HkdfUsingHmac`]; everything else (record
/// protection, hash, limits, QUIC) is the suite's own.
fn rekeyed(suite: &'static Tls13CipherSuite) -> Tls13CipherSuite {
    let sha384 =
        suite.common.hash_provider.algorithm() == rustls::crypto::hash::HashAlgorithm::SHA384;
    Tls13CipherSuite {
        common: rustls::CipherSuiteCommon {
            suite: suite.common.suite,
            hash_provider: suite.common.hash_provider,
            confidentiality_limit: suite.common.confidentiality_limit,
        },
        hkdf_provider: if sha384 { &HKDF_SHA384 } else { &HKDF_SHA256 },
        aead_alg: suite.aead_alg,
        quic: suite.quic,
    }
}

fn tls13(suite: SupportedCipherSuite) -> Option<&'static Tls13CipherSuite> {
    match suite {
        SupportedCipherSuite::Tls13(s) => Some(s),
        SupportedCipherSuite::Tls12(_) => None,
    }
}

/// The three TLS 1.3 suites of rustls's aws-lc-rs provider, rekeyed.
static SUITES: LazyLock<[Option<Tls13CipherSuite>; 3]> = LazyLock::new(|| {
    use rustls::crypto::aws_lc_rs::cipher_suite as cs;
    [cs::TLS13_AES_128_GCM_SHA256, cs::TLS13_AES_256_GCM_SHA384, cs::TLS13_CHACHA20_POLY1305_SHA256]
        .map(|s| tls13(s).map(rekeyed))
});

/// `suite`, its HKDF replaced as this module describes if it is one of the
/// aws-lc-rs provider's TLS 1.3 suites; TLS 1.2 suites unchanged.
pub(crate) fn with_prepared_hmac(suite: SupportedCipherSuite) -> SupportedCipherSuite {
    let Some(s) = tls13(suite) else { return suite };
    SUITES
        .iter()
        .flatten()
        .find(|r| r.common.suite == s.common.suite)
        .map_or(suite, SupportedCipherSuite::Tls13)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hex(s: &str) -> Vec<u8> {
        (0..s.len()).step_by(2).map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap()).collect()
    }

    /// RFC 5869 appendix A.1 to A.3 (SHA-256), through this module's HKDF and
    /// through the provider's own.
    #[test]
    fn hkdf_matches_rfc5869() {
        let cases = [
            (
                "0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b",
                "000102030405060708090a0b0c",
                "f0f1f2f3f4f5f6f7f8f9",
                "3cb25f25faacd57a90434f64d0362f2a2d2d0a90cf1a5a4c5db02d56ecc4c5bf34007208d5b887185865",
            ),
            (
                "000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f\
                 202122232425262728292a2b2c2d2e2f303132333435363738393a3b3c3d3e3f\
                 404142434445464748494a4b4c4d4e4f",
                "606162636465666768696a6b6c6d6e6f707172737475767778797a7b7c7d7e7f\
                 808182838485868788898a8b8c8d8e8f909192939495969798999a9b9c9d9e9f\
                 a0a1a2a3a4a5a6a7a8a9aaabacadaeaf",
                "b0b1b2b3b4b5b6b7b8b9babbbcbdbebfc0c1c2c3c4c5c6c7c8c9cacbcccdcecf\
                 d0d1d2d3d4d5d6d7d8d9dadbdcdddedfe0e1e2e3e4e5e6e7e8e9eaebecedeeef\
                 f0f1f2f3f4f5f6f7f8f9fafbfcfdfeff",
                "b11e398dc80327a1c8e7f78c596a49344f012eda2d4efad8a050cc4c19afa97c\
                 59045a99cac7827271cb41c65e590e09da3275600c2f09b8367793a9aca3db71\
                 cc30c58179ec3e87c14c01d5c1f3434f1d87",
            ),
            (
                "0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b",
                "",
                "",
                "8da4e775a563c18f715f802a063c5a31b8a11f5c5ee1879ec3454e5f3c738d2d9d201395faa4b61a96c8",
            ),
        ];
        let ours = tls13(with_prepared_hmac(
            rustls::crypto::aws_lc_rs::cipher_suite::TLS13_AES_128_GCM_SHA256,
        ))
        .unwrap();
        let theirs =
            tls13(rustls::crypto::aws_lc_rs::cipher_suite::TLS13_AES_128_GCM_SHA256).unwrap();
        assert!(!std::ptr::eq(ours, theirs));
        for (ikm, salt, info, okm) in cases {
            let (ikm, salt, info, okm) = (hex(ikm), hex(salt), hex(info), hex(okm));
            for suite in [ours, theirs] {
                let x = suite.hkdf_provider.extract_from_secret(Some(&salt), &ikm);
                let mut out = vec![0; okm.len()];
                x.expand_slice(&[&info], &mut out).unwrap();
                assert_eq!(out, okm);
                // A second expand from the same expander, in two pieces of info.
                let (a, b) = info.split_at(info.len() / 2);
                x.expand_slice(&[a, b], &mut out).unwrap();
                assert_eq!(out, okm);
            }
        }
        // The SHA-384 suite gets the SHA-384 HKDF.
        let s384 = tls13(with_prepared_hmac(
            rustls::crypto::aws_lc_rs::cipher_suite::TLS13_AES_256_GCM_SHA384,
        ))
        .unwrap();
        assert_eq!(s384.hkdf_provider.extract_from_secret(None, b"x").hash_len(), 48);
        let unchanged =
            rustls::crypto::aws_lc_rs::cipher_suite::TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256;
        assert_eq!(with_prepared_hmac(unchanged), unchanged);
    }
}
