//! Text key=value pairs (RFC 7143 §6.1): `key=value` entries, each followed by a NUL byte, in
//! the data segment of Login and Text PDUs.
//!
//! [`parse_pairs`] checks syntax only (lengths, characters, count); the meaning of keys and
//! duplicate detection belong to the caller ([`crate::login`], the Text handler).

use thiserror::Error;

/// Longest key name (RFC 7143 §6.1: "key-name ... up to 63 bytes").
pub const MAX_KEY_LEN: usize = 63;
/// Longest value of most keys ("simple-value ... maximum length of 255 bytes").
pub const MAX_SIMPLE_VALUE_LEN: usize = 255;
/// Longest value we accept for any key. Binary values (CHAP_C, CHAP_R) can be long: a
/// 1024-byte challenge is 2050 hex characters. 8192 bytes is the minimum negotiation buffer
/// every implementation must support.
pub const MAX_VALUE_LEN: usize = 8192;

/// Bounds applied by [`parse_pairs`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TextLimits {
    /// Most pairs accepted in one text buffer.
    pub max_pairs: usize,
    /// Longest key, in bytes.
    pub max_key_len: usize,
    /// Longest value, in bytes.
    pub max_value_len: usize,
}

impl TextLimits {
    /// Limits for login and text negotiation.
    pub const DEFAULT: TextLimits = TextLimits {
        max_pairs: 256,
        max_key_len: MAX_KEY_LEN,
        max_value_len: MAX_VALUE_LEN,
    };
}

impl Default for TextLimits {
    fn default() -> Self {
        TextLimits::DEFAULT
    }
}

/// Errors from [`parse_pairs`].
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum TextError {
    #[error("entry without '='")]
    MissingEquals,
    #[error("empty key")]
    EmptyKey,
    #[error("key longer than {0} bytes")]
    KeyTooLong(usize),
    #[error("value of key {0} too long")]
    ValueTooLong(String),
    #[error("illegal character in key")]
    IllegalKeyChar,
    #[error("illegal character in value of key {0}")]
    IllegalValueChar(String),
    #[error("text is not UTF-8")]
    NotUtf8,
    #[error("more than {0} key=value pairs")]
    TooManyPairs(usize),
}

fn is_key_char(c: u8) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, b'.' | b'-' | b'+' | b'@' | b'_')
}

fn check_key(key: &[u8], limits: &TextLimits) -> Result<(), TextError> {
    if key.is_empty() {
        return Err(TextError::EmptyKey);
    }
    if key.len() > limits.max_key_len {
        return Err(TextError::KeyTooLong(limits.max_key_len));
    }
    if !key[0].is_ascii_alphabetic() {
        return Err(TextError::IllegalKeyChar);
    }
    // "X#" introduces IANA-registered extension keys; '#' is legal only there.
    let rest = if key.starts_with(b"X#") {
        &key[2..]
    } else {
        key
    };
    if !rest.iter().copied().all(is_key_char) {
        return Err(TextError::IllegalKeyChar);
    }
    Ok(())
}

/// Parses NUL-separated `key=value` pairs.
///
/// * Every entry must contain `=`; the key must be 1..=`max_key_len` bytes of
///   `[A-Za-z0-9.+@_-]` starting with a letter (`X#` prefix allowed).
/// * The value is UTF-8 of at most `max_value_len` bytes, without control characters.
/// * Empty entries (consecutive NULs, trailing padding) are skipped, and the final NUL may be
///   missing.
/// * Duplicates are returned as they are; detecting them is the caller's business.
pub fn parse_pairs(data: &[u8], limits: &TextLimits) -> Result<Vec<(String, String)>, TextError> {
    let mut pairs = Vec::new();
    for entry in data.split(|&b| b == 0) {
        if entry.is_empty() {
            continue;
        }
        if pairs.len() >= limits.max_pairs {
            return Err(TextError::TooManyPairs(limits.max_pairs));
        }
        let eq = entry
            .iter()
            .position(|&b| b == b'=')
            .ok_or(TextError::MissingEquals)?;
        let (key, value) = (&entry[..eq], &entry[eq + 1..]);
        check_key(key, limits)?;
        // The key is ASCII by construction.
        let key = String::from_utf8(key.to_vec()).map_err(|_| TextError::NotUtf8)?;
        if value.len() > limits.max_value_len {
            return Err(TextError::ValueTooLong(key));
        }
        let value = std::str::from_utf8(value).map_err(|_| TextError::NotUtf8)?;
        if value.chars().any(char::is_control) {
            return Err(TextError::IllegalValueChar(key));
        }
        pairs.push((key, value.to_owned()));
    }
    Ok(pairs)
}

/// Encodes pairs as `key=value\0` entries.
pub fn emit_pairs<K: AsRef<str>, V: AsRef<str>>(pairs: &[(K, V)]) -> Vec<u8> {
    let mut out = Vec::new();
    for (k, v) in pairs {
        out.extend_from_slice(k.as_ref().as_bytes());
        out.push(b'=');
        out.extend_from_slice(v.as_ref().as_bytes());
        out.push(0);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(data: &[u8]) -> Result<Vec<(String, String)>, TextError> {
        parse_pairs(data, &TextLimits::DEFAULT)
    }

    #[test]
    fn parses_login_text() {
        let data =
            b"InitiatorName=iqn.1994-05.com.redhat:abc\0SessionType=Normal\0AuthMethod=None\0";
        let pairs = p(data).unwrap();
        assert_eq!(
            pairs,
            vec![
                ("InitiatorName".into(), "iqn.1994-05.com.redhat:abc".into()),
                ("SessionType".into(), "Normal".into()),
                ("AuthMethod".into(), "None".into()),
            ]
        );
    }

    #[test]
    fn tolerates_padding_and_missing_final_nul() {
        assert_eq!(p(b"A=1\0\0\0\0").unwrap().len(), 1);
        assert_eq!(p(b"A=1\0B=2").unwrap()[1], ("B".into(), "2".into()));
        assert_eq!(p(b"").unwrap(), vec![]);
        assert_eq!(p(b"A=\0").unwrap()[0], ("A".into(), String::new()));
        assert_eq!(p(b"A=b=c\0").unwrap()[0], ("A".into(), "b=c".into()));
    }

    #[test]
    fn rejects_bad_syntax() {
        assert_eq!(p(b"NoEquals\0"), Err(TextError::MissingEquals));
        assert_eq!(p(b"=value\0"), Err(TextError::EmptyKey));
        assert_eq!(p(b"1Key=v\0"), Err(TextError::IllegalKeyChar));
        assert_eq!(p(b"Ke y=v\0"), Err(TextError::IllegalKeyChar));
        assert_eq!(p(b"K#ey=v\0"), Err(TextError::IllegalKeyChar));
        assert!(p(b"X#com.example.key=v\0").is_ok());
        assert!(p(b"X-com.example.key=v\0").is_ok());
        assert_eq!(p(b"K=\xff\xfe\0"), Err(TextError::NotUtf8));
        assert_eq!(p(b"K=a\nb\0"), Err(TextError::IllegalValueChar("K".into())));
        assert_eq!(p(b"K=\x7f\0"), Err(TextError::IllegalValueChar("K".into())));
    }

    #[test]
    fn enforces_lengths() {
        let key = "K".repeat(63);
        assert!(p(format!("{key}=v\0").as_bytes()).is_ok());
        let key = "K".repeat(64);
        assert_eq!(
            p(format!("{key}=v\0").as_bytes()),
            Err(TextError::KeyTooLong(63))
        );
        let v = "a".repeat(8192);
        assert!(p(format!("K={v}\0").as_bytes()).is_ok());
        let v = "a".repeat(8193);
        assert_eq!(
            p(format!("K={v}\0").as_bytes()),
            Err(TextError::ValueTooLong("K".into()))
        );
    }

    #[test]
    fn bounds_pair_count() {
        let limits = TextLimits {
            max_pairs: 2,
            ..TextLimits::DEFAULT
        };
        assert!(parse_pairs(b"A=1\0B=2\0", &limits).is_ok());
        assert_eq!(
            parse_pairs(b"A=1\0B=2\0C=3\0", &limits),
            Err(TextError::TooManyPairs(2))
        );
    }

    #[test]
    fn duplicates_are_returned() {
        assert_eq!(p(b"A=1\0A=2\0").unwrap().len(), 2);
    }

    #[test]
    fn emit_roundtrip() {
        let pairs = [
            ("TargetName", "iqn.2026-11.io.tandem:n1-disk"),
            ("TargetAlias", "disk"),
        ];
        let bytes = emit_pairs(&pairs);
        assert_eq!(
            bytes,
            b"TargetName=iqn.2026-11.io.tandem:n1-disk\0TargetAlias=disk\0"
        );
        let back = p(&bytes).unwrap();
        assert_eq!(back[1], ("TargetAlias".into(), "disk".into()));
    }

    proptest::proptest! {
        #[test]
        fn never_panics(data in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..600)) {
            let _ = p(&data);
        }

        #[test]
        fn roundtrips(pairs in proptest::collection::vec(("[A-Z][A-Za-z0-9._-]{0,20}", "[ -~]{0,40}"), 0..10)) {
            let bytes = emit_pairs(&pairs);
            let back = p(&bytes).unwrap();
            proptest::prop_assert_eq!(back, pairs);
        }
    }
}
