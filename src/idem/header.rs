//! The `Idempotency-Key` request header: an sf-string (`"…"`, RFC 8941, with `\"` and `\\`
//! escapes) or a bare token, of 1–255 visible ASCII characters. The key is what is inside the
//! quotes, so `"abc"` and `abc` name the same key.
#![forbid(unsafe_code)]

use siphasher::sip128::{Hasher128, SipHasher13};
use std::hash::Hasher;

/// Longest key, in characters.
pub const MAX_KEY: usize = 255;

/// What a request's `Idempotency-Key` headers say.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum KeyHeader {
    #[default]
    None,
    /// The key's fingerprint ([`key_fingerprint`]).
    Key(u128),
    /// Malformed, or given more than once: `400`.
    Bad,
}

impl KeyHeader {
    /// Another `Idempotency-Key` header with `value` (already trimmed of spaces).
    pub fn and(self, value: &[u8]) -> KeyHeader {
        match (self, parse(value)) {
            (KeyHeader::None, Some(fp)) => KeyHeader::Key(fp),
            _ => KeyHeader::Bad,
        }
    }
}

/// The fingerprint of the key `k` (its characters, unquoted).
pub fn key_fingerprint(k: &[u8]) -> u128 {
    let mut h = SipHasher13::new_with_keys(super::SIP_K0, super::SIP_K1);
    h.write(k);
    h.finish128().as_u128()
}

/// The fingerprint of the key a header value names, if it is well formed.
fn parse(v: &[u8]) -> Option<u128> {
    let Some(inner) = v.strip_prefix(b"\"") else {
        let ok = (1..=MAX_KEY).contains(&v.len()) && v.iter().all(|&b| (0x21..=0x7e).contains(&b));
        return ok.then(|| key_fingerprint(v));
    };
    let mut key = [0u8; MAX_KEY];
    let mut n = 0;
    let mut i = 0;
    loop {
        let b = *inner.get(i)?;
        i += 1;
        let c = match b {
            b'"' => break,
            b'\\' => {
                let e = *inner.get(i)?;
                i += 1;
                if e != b'"' && e != b'\\' {
                    return None;
                }
                e
            }
            0x20..=0x7e => b,
            _ => return None,
        };
        *key.get_mut(n)? = c;
        n += 1;
    }
    (i == inner.len() && n > 0).then(|| key_fingerprint(&key[..n]))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_and_strings_name_keys() {
        let k = key_fingerprint(b"abc-123");
        assert_eq!(KeyHeader::None.and(b"abc-123"), KeyHeader::Key(k));
        assert_eq!(KeyHeader::None.and(b"\"abc-123\""), KeyHeader::Key(k));
        let q = key_fingerprint(b"a \"b\\");
        assert_eq!(KeyHeader::None.and(b"\"a \\\"b\\\\\""), KeyHeader::Key(q));
        let long = [b'x'; MAX_KEY];
        assert_eq!(
            KeyHeader::None.and(&long),
            KeyHeader::Key(key_fingerprint(&long))
        );
        assert_ne!(key_fingerprint(b"a"), key_fingerprint(b"b"));
    }

    #[test]
    fn malformed_keys_are_bad() {
        for v in [
            &b""[..],
            b"\"\"",
            b"a b",
            b"a\x01",
            b"\"abc",
            b"\"abc\"x",
            b"\"a\\x\"",
            b"\"a\x7f\"",
            "é".as_bytes(),
        ] {
            assert_eq!(KeyHeader::None.and(v), KeyHeader::Bad, "{v:?}");
        }
        assert_eq!(KeyHeader::None.and(&[b'x'; MAX_KEY + 1]), KeyHeader::Bad);
        let mut q = vec![b'"'];
        q.extend_from_slice(&[b'x'; MAX_KEY + 1]);
        q.push(b'"');
        assert_eq!(KeyHeader::None.and(&q), KeyHeader::Bad);
        // Twice, even the same key: which one counts would be a guess.
        assert_eq!(KeyHeader::None.and(b"a").and(b"a"), KeyHeader::Bad);
    }
}
