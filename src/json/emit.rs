//! JSON string escaping for answers: `"`, `\` and control characters are escaped, everything
//! else (valid UTF-8, as stored) is copied as is.

/// Append `s` to `out` as the inside of a JSON string (no surrounding quotes).
pub fn escaped(out: &mut Vec<u8>, s: &[u8]) {
    let mut plain = 0;
    for (i, &b) in s.iter().enumerate() {
        let esc: &[u8] = match b {
            b'"' => b"\\\"",
            b'\\' => b"\\\\",
            b'\n' => b"\\n",
            b'\r' => b"\\r",
            b'\t' => b"\\t",
            0..=0x1f => b"",
            _ => continue,
        };
        out.extend_from_slice(&s[plain..i]);
        plain = i + 1;
        if esc.is_empty() {
            const HEX: &[u8; 16] = b"0123456789abcdef";
            out.extend_from_slice(&[
                b'\\',
                b'u',
                b'0',
                b'0',
                HEX[(b >> 4) as usize],
                HEX[(b & 15) as usize],
            ]);
        } else {
            out.extend_from_slice(esc);
        }
    }
    out.extend_from_slice(&s[plain..]);
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn round_trips_through_serde_json(s in any::<String>()) {
            let mut out = vec![b'"'];
            escaped(&mut out, s.as_bytes());
            out.push(b'"');
            let back: String = serde_json::from_slice(&out).unwrap();
            prop_assert_eq!(back, s);
        }
    }

    #[test]
    fn escapes_what_json_requires() {
        let mut out = Vec::new();
        escaped(&mut out, b"a\"b\\c\n\x01\xc3\xa9");
        assert_eq!(out, b"a\\\"b\\\\c\\n\\u0001\xc3\xa9");
    }
}
