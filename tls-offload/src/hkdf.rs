//! The TLS 1.3 key schedule on HMAC keys prepared once per secret.
//!
//! rustls's aws-lc-rs provider derives secrets through aws-lc's one-shot HKDF
//! functions. Every expand keys HMAC from scratch (hashing the padded key
//! twice), and an expander that came from an extract keeps the salt and the
//! input rather than the extracted key, so each of its expands runs the extract
//! again. A resumed TLS 1.3 handshake makes dozens of expands.
//!
//! Here an extract keys one HMAC with the extracted secret, and that key is
//! the expander. A key is the two hash states after its padded inner and
//! outer key blocks, so an expand is one HMAC of the label from copies of
//! those states: for a label of under 56 bytes, two calls of the SHA-256
//! compression function (`sha2`'s, with the SHA extensions where the CPU has
//! them). aws-lc's HMAC did the same work but spent as long again setting up,
//! copying and cleaning up its contexts (`HMAC_CTX_copy_ex`, `HMAC_Init_ex`:
//! about 5% of the load balancer's CPU in a run of new TLS connections). Keys,
//! extracted secrets, intermediate blocks and the states of a message being
//! signed are zeroized when dropped or done with. The outputs are HMAC's
//! (RFC 2104) and HKDF's (RFC 5869); the tests check RFC 4231's and RFC
//! 5869's vectors and compare with aws-lc's HMAC and HKDF over many key,
//! message and output lengths.
//!
//! rustls counts a provider's own HKDF as not FIPS-approved unless it says
//! so, and this one does not: a configuration with these suites reports
//! `fips() == false`. That changes nothing here (aws-lc-rs is not built in
//! its FIPS mode); a FIPS build would keep the provider's own suites.

use std::sync::LazyLock;

use rustls::crypto::tls13::{HkdfExpander, OkmBlock, OutputLengthError};
use rustls::{SupportedCipherSuite, Tls13CipherSuite};
use sha2::digest::generic_array::GenericArray;
use zeroize::Zeroize;

/// The longest block of the hashes below (SHA-384's).
const MAX_BLOCK: usize = 128;

/// A hash of the SHA-2 family as its compression function, which is all
/// HMAC needs from it.
trait Sha: Send + Sync + 'static {
    /// The chaining state: eight words.
    type State: Copy + Zeroize + Send + Sync;
    const IV: Self::State;
    /// Bytes per block.
    const BLOCK: usize;
    /// Bytes of output.
    const OUT: usize;
    /// Bytes the message length takes at the end of the padding.
    const LEN_BYTES: usize;
    /// Runs the compression function over `blocks`, a whole number of blocks.
    fn compress(state: &mut Self::State, blocks: &[u8]);
    /// The first `OUT` bytes of `state`, big-endian, into `out`.
    fn output(state: &Self::State, out: &mut [u8]);
}

struct Sha256;
struct Sha384;

impl Sha for Sha256 {
    type State = [u32; 8];
    const IV: [u32; 8] = [
        0x6a09e667, 0xbb67ae85, 0x3c6ef372, 0xa54ff53a, 0x510e527f, 0x9b05688c, 0x1f83d9ab,
        0x5be0cd19,
    ];
    const BLOCK: usize = 64;
    const OUT: usize = 32;
    const LEN_BYTES: usize = 8;

    fn compress(state: &mut [u32; 8], blocks: &[u8]) {
        for b in blocks.chunks_exact(Self::BLOCK) {
            sha2::compress256(state, std::slice::from_ref(GenericArray::from_slice(b)));
        }
    }

    fn output(state: &[u32; 8], out: &mut [u8]) {
        for (o, w) in out.chunks_exact_mut(4).zip(state) {
            o.copy_from_slice(&w.to_be_bytes());
        }
    }
}

impl Sha for Sha384 {
    type State = [u64; 8];
    const IV: [u64; 8] = [
        0xcbbb9d5dc1059ed8,
        0x629a292a367cd507,
        0x9159015a3070dd17,
        0x152fecd8f70e5939,
        0x67332667ffc00b31,
        0x8eb44a8768581511,
        0xdb0c2e0d64f98fa7,
        0x47b5481dbefa4fa4,
    ];
    const BLOCK: usize = 128;
    const OUT: usize = 48;
    const LEN_BYTES: usize = 16;

    fn compress(state: &mut [u64; 8], blocks: &[u8]) {
        for b in blocks.chunks_exact(Self::BLOCK) {
            sha2::compress512(state, std::slice::from_ref(GenericArray::from_slice(b)));
        }
    }

    fn output(state: &[u64; 8], out: &mut [u8]) {
        for (o, w) in out.chunks_exact_mut(8).zip(state) {
            o.copy_from_slice(&w.to_be_bytes());
        }
    }
}

/// A message being hashed: the state after its whole blocks, and the bytes
/// of a block not yet whole.
struct Run<S: Sha> {
    state: S::State,
    buf: [u8; MAX_BLOCK],
    fill: usize,
    /// Bytes hashed so far, the partial block included.
    len: u64,
}

impl<S: Sha> Run<S> {
    /// A message whose first block (a padded key) `state` has taken.
    fn after_block(state: S::State) -> Self {
        Run { state, buf: [0; MAX_BLOCK], fill: 0, len: S::BLOCK as u64 }
    }

    fn new() -> Self {
        Run { state: S::IV, buf: [0; MAX_BLOCK], fill: 0, len: 0 }
    }

    fn update(&mut self, mut data: &[u8]) {
        self.len += data.len() as u64;
        if self.fill > 0 {
            let take = data.len().min(S::BLOCK - self.fill);
            self.buf[self.fill..self.fill + take].copy_from_slice(&data[..take]);
            self.fill += take;
            data = &data[take..];
            if self.fill < S::BLOCK {
                return;
            }
            S::compress(&mut self.state, &self.buf[..S::BLOCK]);
            self.fill = 0;
        }
        let whole = data.len() - data.len() % S::BLOCK;
        S::compress(&mut self.state, &data[..whole]);
        let rest = &data[whole..];
        self.buf[..rest.len()].copy_from_slice(rest);
        self.fill = rest.len();
    }

    /// Pads the message (FIPS 180-4, 5.1) and writes its hash to `out`.
    fn finish(mut self, out: &mut [u8]) {
        let (b, bits) = (S::BLOCK, self.len * 8);
        self.buf[self.fill] = 0x80;
        self.buf[self.fill + 1..b].fill(0);
        if self.fill + 1 > b - S::LEN_BYTES {
            S::compress(&mut self.state, &self.buf[..b]);
            self.buf[..b].fill(0);
        }
        // Lengths here are under 2^61 bytes, so the top 8 bytes of SHA-384's
        // 16-byte length stay zero.
        self.buf[b - 8..b].copy_from_slice(&bits.to_be_bytes());
        S::compress(&mut self.state, &self.buf[..b]);
        S::output(&self.state, &mut out[..S::OUT]);
    }
}

impl<S: Sha> Drop for Run<S> {
    fn drop(&mut self) {
        self.state.zeroize();
        self.buf.zeroize();
    }
}

/// An HMAC (RFC 2104) key: the hash states after the padded inner and the
/// padded outer key block.
struct HmacKey<S: Sha> {
    inner: S::State,
    outer: S::State,
}

impl<S: Sha> HmacKey<S> {
    fn new(key: &[u8]) -> Self {
        let mut k = [0u8; MAX_BLOCK];
        if key.len() > S::BLOCK {
            let mut run = Run::<S>::new();
            run.update(key);
            run.finish(&mut k);
        } else {
            k[..key.len()].copy_from_slice(key);
        }
        let mut this = HmacKey { inner: S::IV, outer: S::IV };
        for (state, byte) in [(&mut this.inner, 0x36u8), (&mut this.outer, 0x5c)] {
            k[..S::BLOCK].iter_mut().for_each(|x| *x ^= byte);
            S::compress(state, &k[..S::BLOCK]);
            k[..S::BLOCK].iter_mut().for_each(|x| *x ^= byte);
        }
        k.zeroize();
        this
    }

    /// The tag of `first ‖ middle… ‖ last`, `S::OUT` bytes of it, into `out`.
    fn sign_into(&self, first: &[u8], middle: &[&[u8]], last: &[u8], out: &mut [u8; 64]) {
        let mut inner = Run::<S>::after_block(self.inner);
        inner.update(first);
        for part in middle {
            inner.update(part);
        }
        inner.update(last);
        inner.finish(out);
        let mut outer = Run::<S>::after_block(self.outer);
        outer.update(&out[..S::OUT]);
        outer.finish(out);
    }

    fn tag(&self, first: &[u8], middle: &[&[u8]], last: &[u8]) -> rustls::crypto::hmac::Tag {
        let mut out = [0u8; 64];
        self.sign_into(first, middle, last, &mut out);
        let tag = rustls::crypto::hmac::Tag::new(&out[..S::OUT]);
        out.zeroize();
        tag
    }
}

impl<S: Sha> Drop for HmacKey<S> {
    fn drop(&mut self) {
        self.inner.zeroize();
        self.outer.zeroize();
    }
}

/// HKDF (RFC 5869) on [`HmacKey`], as rustls's TLS 1.3 HKDF. rustls's generic
/// `HkdfUsingHmac` would do the same arithmetic, but it hands each extracted
/// secret back as a `Vec` that it frees without zeroizing, and boxes a key and
/// an expander for each; here the secret stays on the stack and is zeroized,
/// and the expander is the key.
struct Hkdf<S>(std::marker::PhantomData<fn() -> S>);

impl<S: Sha> Hkdf<S> {
    /// The expander keyed with HKDF-Extract(salt, secret); no salt is
    /// `S::OUT` zero bytes.
    fn extract(salt: Option<&[u8]>, secret: &[u8]) -> Box<dyn HkdfExpander> {
        let zeroes = [0u8; 64];
        let salt = salt.unwrap_or(&zeroes[..S::OUT]);
        let mut prk = [0u8; 64];
        HmacKey::<S>::new(salt).sign_into(secret, &[], &[], &mut prk);
        let key = HmacKey::<S>::new(&prk[..S::OUT]);
        prk.zeroize();
        Box::new(key)
    }
}

impl<S: Sha> rustls::crypto::tls13::Hkdf for Hkdf<S> {
    fn extract_from_zero_ikm(&self, salt: Option<&[u8]>) -> Box<dyn HkdfExpander> {
        Self::extract(salt, &[0u8; 64][..S::OUT])
    }

    fn extract_from_secret(&self, salt: Option<&[u8]>, secret: &[u8]) -> Box<dyn HkdfExpander> {
        Self::extract(salt, secret)
    }

    fn expander_for_okm(&self, okm: &OkmBlock) -> Box<dyn HkdfExpander> {
        Box::new(HmacKey::<S>::new(okm.as_ref()))
    }

    fn hmac_sign(&self, key: &OkmBlock, message: &[u8]) -> rustls::crypto::hmac::Tag {
        HmacKey::<S>::new(key.as_ref()).tag(message, &[], &[])
    }
}

impl<S: Sha> HkdfExpander for HmacKey<S> {
    /// HKDF-Expand: T(n) = HMAC(PRK, T(n-1) ‖ info ‖ n), at most 255 of them.
    fn expand_slice(&self, info: &[&[u8]], output: &mut [u8]) -> Result<(), OutputLengthError> {
        if output.len() > 255 * S::OUT {
            return Err(OutputLengthError);
        }
        // T(n-1) is the output's previous block, whole (only the last can
        // be short).
        let mut t = [0u8; 64];
        for n in 0..output.len().div_ceil(S::OUT) {
            let (done, rest) = output.split_at_mut(n * S::OUT);
            let prev = &done[done.len().saturating_sub(S::OUT)..];
            self.sign_into(prev, info, &[n as u8 + 1], &mut t);
            let len = rest.len().min(S::OUT);
            rest[..len].copy_from_slice(&t[..len]);
        }
        t.zeroize();
        Ok(())
    }

    fn expand_block(&self, info: &[&[u8]]) -> OkmBlock {
        let mut t = [0u8; 64];
        self.sign_into(&[], info, &[1], &mut t);
        let block = OkmBlock::new(&t[..S::OUT]);
        t.zeroize();
        block
    }

    fn hash_len(&self) -> usize {
        S::OUT
    }
}

static HKDF_SHA256: Hkdf<Sha256> = Hkdf(std::marker::PhantomData);
static HKDF_SHA384: Hkdf<Sha384> = Hkdf(std::marker::PhantomData);

/// HMAC-SHA256 of the concatenated `parts` under `key`, into `out`.
pub(crate) fn hmac_sha256(key: &[u8], parts: &[&[u8]], out: &mut [u8; 32]) {
    let mut t = [0u8; 64];
    HmacKey::<Sha256>::new(key).sign_into(&[], parts, &[], &mut t);
    out.copy_from_slice(&t[..32]);
    t.zeroize();
}

/// `suite` with its HKDF on [`Hkdf`]; everything else (record
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

    fn sign<S: Sha>(key: &[u8], parts: &[&[u8]]) -> Vec<u8> {
        HmacKey::<S>::new(key).tag(&[], parts, &[]).as_ref().to_vec()
    }

    /// RFC 4231's test cases 1, 2, 6 and 7 (6 and 7 with a 131-byte key,
    /// longer than SHA-384's block, and 7 with a 152-byte message).
    #[test]
    fn hmac_matches_rfc4231() {
        let long_key = [0xaa; 131];
        let cases: [(&[u8], &[u8], &str, &str); 4] = [
            (
                &[0x0b; 20],
                b"Hi There",
                "b0344c61d8db38535ca8afceaf0bf12b881dc200c9833da726e9376c2e32cff7",
                "afd03944d84895626b0825f4ab46907f15f9dadbe4101ec682aa034c7cebc59c\
                 faea9ea9076ede7f4af152e8b2fa9cb6",
            ),
            (
                b"Jefe",
                b"what do ya want for nothing?",
                "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843",
                "af45d2e376484031617f78d2b58a6b1b9c7ef464f5a01b47e42ec3736322445e\
                 8e2240ca5e69e2c78b3239ecfab21649",
            ),
            (
                &long_key,
                b"Test Using Larger Than Block-Size Key - Hash Key First",
                "60e431591ee0b67f0d8a26aacbf5b77f8e0bc6213728c5140546040f0ee37f54",
                "4ece084485813e9088d2c63a041bc5b44f9ef1012a2b588f3cd11f05033ac4c6\
                 0c2ef6ab4030fe8296248df163f44952",
            ),
            (
                &long_key,
                b"This is a test using a larger than block-size key and a larger than \
                  block-size data. The key needs to be hashed before being used by the \
                  HMAC algorithm.",
                "9b09ffa71b942fcb27635fbcd5b0e944bfdc63644f0713938a7f51535c3a35e2",
                "6617178e941f020d351e2f254e8fd32c602420feb0b8fb9adccebb82461e99c5\
                 a678cc31e799176d3860e6110c46523e",
            ),
        ];
        for (key, msg, want256, want384) in cases {
            assert_eq!(sign::<Sha256>(key, &[msg]), hex(want256));
            assert_eq!(sign::<Sha384>(key, &[msg]), hex(want384));
        }
    }

    fn bytes() -> Vec<u8> {
        (0..1024u32).map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8).collect()
    }

    /// Against aws-lc's HMAC: keys of 0 to 200 bytes, messages of 0 to 300
    /// in one to five pieces, so every way a message can meet a block
    /// boundary and the padding can spill into another block is taken.
    fn hmac_matches<S: Sha>(alg: aws_lc_rs::hmac::Algorithm) {
        use aws_lc_rs::hmac as lc;
        let bytes = bytes();
        for klen in (0..=200).step_by(7).chain([64, 128, 129]) {
            let key = &bytes[..klen];
            let theirs = lc::Key::new(alg, key);
            let ours = HmacKey::<S>::new(key);
            for mlen in 0..=300 {
                let msg = &bytes[200..200 + mlen];
                let want = lc::sign(&theirs, msg);
                let pieces = 1 + mlen % 5;
                let cut: Vec<usize> = (0..=pieces).map(|i| mlen * i / pieces).collect();
                let parts: Vec<&[u8]> = cut.windows(2).map(|w| &msg[w[0]..w[1]]).collect();
                let (first, rest) = parts.split_first().unwrap();
                let (last, middle): (&[u8], &[&[u8]]) = match rest.split_last() {
                    Some((last, middle)) => (last, middle),
                    None => (&[], &[]),
                };
                let got = ours.tag(first, middle, last);
                assert_eq!(got.as_ref(), want.as_ref(), "key {klen} bytes, message {mlen}");
            }
        }
    }

    #[test]
    fn hmac_matches_aws_lc() {
        hmac_matches::<Sha256>(aws_lc_rs::hmac::HMAC_SHA256);
        hmac_matches::<Sha384>(aws_lc_rs::hmac::HMAC_SHA384);
    }

    /// Against aws-lc's HKDF, through the rustls trait the key schedule
    /// calls: extracts with and without salt and from zero input, expands of
    /// every length from 0 to 255 blocks and one byte too many, the block
    /// expand, an expander from an output block, and the Finished HMAC.
    fn hkdf_matches<S: Sha>(
        ours: &dyn rustls::crypto::tls13::Hkdf,
        alg: aws_lc_rs::hkdf::Algorithm,
    ) {
        use aws_lc_rs::hkdf as lc;
        struct Len(usize);
        impl lc::KeyType for Len {
            fn len(&self) -> usize {
                self.0
            }
        }
        let theirs = |salt: &[u8], ikm: &[u8], info: &[&[u8]], len: usize| {
            let mut out = vec![0; len];
            lc::Salt::new(alg, salt)
                .extract(ikm)
                .expand(info, Len(len))
                .unwrap()
                .fill(&mut out)
                .unwrap();
            out
        };
        let bytes = bytes();
        let zeroes = [0u8; 64];
        let info: [&[u8]; 3] = [b"tls13 ", b"c hs traffic", &bytes[900..932]];
        for (slen, ilen) in [(0, 0), (1, 32), (32, 32), (48, 48), (130, 7), (200, 300)] {
            let (salt, ikm) = (&bytes[..slen], &bytes[300..300 + ilen]);
            let x = ours.extract_from_secret(Some(salt), ikm);
            assert_eq!(x.hash_len(), S::OUT);
            for len in (0..=80).chain([255 * S::OUT - 1, 255 * S::OUT]) {
                let mut out = vec![0; len];
                x.expand_slice(&info, &mut out).unwrap();
                assert_eq!(
                    out,
                    theirs(salt, ikm, &info, len),
                    "salt {slen}, ikm {ilen}, {len} out"
                );
            }
            let mut over = vec![0; 255 * S::OUT + 1];
            assert!(x.expand_slice(&info, &mut over).is_err());
            let block = x.expand_block(&info);
            assert_eq!(block.as_ref(), &theirs(salt, ikm, &info, S::OUT)[..]);
            // An expander keyed with an output block, as for traffic secrets.
            let y = ours.expander_for_okm(&block);
            let mut out = [0u8; 40];
            y.expand_slice(&info, &mut out).unwrap();
            let prk = lc::Prk::new_less_safe(alg, block.as_ref());
            let mut want = [0u8; 40];
            prk.expand(&info, Len(40)).unwrap().fill(&mut want).unwrap();
            assert_eq!(out, want);
            let tag = ours.hmac_sign(&block, ikm);
            assert_eq!(tag.as_ref(), &sign::<S>(block.as_ref(), &[ikm])[..]);
        }
        // No salt is a hash length of zeroes; the zero input likewise.
        let mut a = [0u8; 20];
        let mut b = [0u8; 20];
        ours.extract_from_secret(None, b"ikm").expand_slice(&info, &mut a).unwrap();
        b.copy_from_slice(&theirs(&zeroes[..S::OUT], b"ikm", &info, 20));
        assert_eq!(a, b);
        ours.extract_from_zero_ikm(Some(b"salt")).expand_slice(&info, &mut a).unwrap();
        b.copy_from_slice(&theirs(b"salt", &zeroes[..S::OUT], &info, 20));
        assert_eq!(a, b);
    }

    #[test]
    fn hkdf_matches_aws_lc() {
        hkdf_matches::<Sha256>(&HKDF_SHA256, aws_lc_rs::hkdf::HKDF_SHA256);
        hkdf_matches::<Sha384>(&HKDF_SHA384, aws_lc_rs::hkdf::HKDF_SHA384);
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
