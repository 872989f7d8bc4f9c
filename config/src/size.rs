//! Byte sizes as operators write them: `"1GiB"`, `"512MiB"`, `"4096"`, `"1.5GiB"`.
//!
//! Units are **binary** (powers of 1024) and case-insensitive: `B`, `K`/`KiB`, `M`/`MiB`,
//! `G`/`GiB`, `T`/`TiB`. Decimal (SI) units such as `GB` are refused rather than guessed,
//! because `10GB` means 10^10 bytes to some people and 10 GiB to others. A fraction is allowed
//! when the result is a whole number of bytes (`1.5GiB` yes, `0.3B` no).

use std::fmt;

use serde::de::{self, Visitor};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

const KIB: u64 = 1 << 10;
const MIB: u64 = 1 << 20;
const GIB: u64 = 1 << 30;
const TIB: u64 = 1 << 40;

/// Longest size string we look at; anything longer is refused before parsing.
const SIZE_TEXT_LEN_MAX: usize = 64;

/// Why a size string was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SizeError {
    #[error("empty size")]
    Empty,
    #[error("size text longer than {SIZE_TEXT_LEN_MAX} characters")]
    TooLong,
    #[error("`{0}` is not a number followed by an optional unit (B, KiB, MiB, GiB, TiB)")]
    Syntax(String),
    #[error(
        "unknown unit `{0}`: use B, KiB, MiB, GiB or TiB (K/M/G/T are accepted as binary too)"
    )]
    Unit(String),
    #[error("decimal unit `{0}` is ambiguous: use binary units (KiB, MiB, GiB, TiB)")]
    DecimalUnit(String),
    #[error("`{0}` is not a whole number of bytes")]
    Fraction(String),
    #[error("`{0}` is larger than 2^64-1 bytes")]
    Overflow(String),
}

/// Parses a size; see the module documentation for the accepted forms.
pub fn parse_size(text: &str) -> Result<u64, SizeError> {
    let s = text.trim();
    if s.is_empty() {
        return Err(SizeError::Empty);
    }
    if s.len() > SIZE_TEXT_LEN_MAX {
        return Err(SizeError::TooLong);
    }
    let num_end = s
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(s.len());
    let (num, unit) = s.split_at(num_end);
    let unit = unit.trim();
    if num.is_empty() {
        return Err(SizeError::Syntax(s.to_string()));
    }
    let multiplier = match unit.to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kib" => KIB,
        "m" | "mib" => MIB,
        "g" | "gib" => GIB,
        "t" | "tib" => TIB,
        "kb" | "mb" | "gb" | "tb" => return Err(SizeError::DecimalUnit(unit.to_string())),
        _ => return Err(SizeError::Unit(unit.to_string())),
    };
    let (int_part, frac_part) = match num.split_once('.') {
        Some((i, f)) => (i, f),
        None => (num, ""),
    };
    let has_point = num.contains('.');
    let well_formed = !int_part.is_empty()
        && int_part.bytes().all(|b| b.is_ascii_digit())
        && (!has_point || !frac_part.is_empty())
        && frac_part.bytes().all(|b| b.is_ascii_digit());
    if !well_formed || frac_part.len() > 18 {
        return Err(SizeError::Syntax(s.to_string()));
    }
    let overflow = || SizeError::Overflow(s.to_string());
    // Exact arithmetic in u128: value = (int * 10^f + frac) * multiplier / 10^f.
    let scale = 10u128.pow(frac_part.len() as u32);
    let int: u128 = int_part.parse().map_err(|_| overflow())?;
    let frac: u128 = if frac_part.is_empty() {
        0
    } else {
        frac_part.parse().map_err(|_| overflow())?
    };
    let scaled = int
        .checked_mul(scale)
        .and_then(|v| v.checked_add(frac))
        .and_then(|v| v.checked_mul(u128::from(multiplier)))
        .ok_or_else(overflow)?;
    if scaled % scale != 0 {
        return Err(SizeError::Fraction(s.to_string()));
    }
    u64::try_from(scaled / scale).map_err(|_| overflow())
}

/// Formats a size exactly, with the largest binary unit that divides it: `1GiB`, `1536MiB`,
/// `4KiB`, `1000B`. `parse_size(&format_size(n)) == Ok(n)` for every `n`.
pub fn format_size(bytes: u64) -> String {
    for (unit, name) in [(TIB, "TiB"), (GIB, "GiB"), (MIB, "MiB"), (KIB, "KiB")] {
        if bytes != 0 && bytes % unit == 0 {
            return format!("{}{}", bytes / unit, name);
        }
    }
    format!("{bytes}B")
}

/// Formats a size for people, rounded to one decimal (`1.5GiB`, `10.0MiB`, `512B`).
/// Not exact: use [`format_size`] for anything that is parsed again.
pub fn format_size_approx(bytes: u64) -> String {
    for (unit, name) in [(TIB, "TiB"), (GIB, "GiB"), (MIB, "MiB"), (KIB, "KiB")] {
        if bytes >= unit {
            return format!("{:.1}{}", bytes as f64 / unit as f64, name);
        }
    }
    format!("{bytes}B")
}

/// A byte count that reads from TOML/JSON as either a size string (`"1GiB"`) or an integer,
/// and writes as the exact [`format_size`] string.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Size(pub u64);

impl Size {
    pub const fn bytes(self) -> u64 {
        self.0
    }
}

impl fmt::Display for Size {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&format_size(self.0))
    }
}

impl std::str::FromStr for Size {
    type Err = SizeError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        parse_size(s).map(Size)
    }
}

impl Serialize for Size {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&format_size(self.0))
    }
}

impl<'de> Deserialize<'de> for Size {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct SizeVisitor;
        impl Visitor<'_> for SizeVisitor {
            type Value = Size;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a size such as \"1GiB\", \"512MiB\" or a number of bytes")
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<Size, E> {
                Ok(Size(v))
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<Size, E> {
                u64::try_from(v)
                    .map(Size)
                    .map_err(|_| E::custom(format!("size {v} is negative")))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Size, E> {
                parse_size(v).map(Size).map_err(E::custom)
            }
        }
        deserializer.deserialize_any(SizeVisitor)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_units() {
        assert_eq!(parse_size("4096"), Ok(4096));
        assert_eq!(parse_size("4096B"), Ok(4096));
        assert_eq!(parse_size("1GiB"), Ok(GIB));
        assert_eq!(parse_size("1gib"), Ok(GIB));
        assert_eq!(parse_size("512MiB"), Ok(512 * MIB));
        assert_eq!(parse_size("512M"), Ok(512 * MIB));
        assert_eq!(parse_size("4K"), Ok(4096));
        assert_eq!(parse_size("2T"), Ok(2 * TIB));
        assert_eq!(parse_size(" 10 GiB "), Ok(10 * GIB));
        assert_eq!(parse_size("1.5GiB"), Ok(GIB + GIB / 2));
        assert_eq!(parse_size("0.5KiB"), Ok(512));
        assert_eq!(parse_size("0"), Ok(0));
    }

    #[test]
    fn refuses_bad_sizes() {
        assert_eq!(parse_size(""), Err(SizeError::Empty));
        assert!(matches!(parse_size("GiB"), Err(SizeError::Syntax(_))));
        assert!(matches!(parse_size("1.GiB"), Err(SizeError::Syntax(_))));
        assert!(matches!(parse_size(".5GiB"), Err(SizeError::Syntax(_))));
        assert!(matches!(parse_size("1.2.3"), Err(SizeError::Syntax(_))));
        assert!(matches!(parse_size("-1"), Err(SizeError::Syntax(_))));
        assert!(matches!(parse_size("10GB"), Err(SizeError::DecimalUnit(_))));
        assert!(matches!(parse_size("10 bananas"), Err(SizeError::Unit(_))));
        assert!(matches!(parse_size("0.3B"), Err(SizeError::Fraction(_))));
        assert!(matches!(
            parse_size("16777216TiB"),
            Err(SizeError::Overflow(_))
        ));
        assert!(matches!(
            parse_size("99999999999999999999999"),
            Err(SizeError::Overflow(_))
        ));
        assert_eq!(parse_size(&"1".repeat(65)), Err(SizeError::TooLong));
    }

    #[test]
    fn format_round_trips() {
        for n in [
            0,
            1,
            512,
            1000,
            4096,
            MIB,
            1536 * MIB,
            GIB,
            3 * TIB,
            u64::MAX,
            u64::MAX - 1023,
        ] {
            assert_eq!(parse_size(&format_size(n)), Ok(n), "{}", format_size(n));
        }
        assert_eq!(format_size(GIB), "1GiB");
        assert_eq!(format_size(1536 * MIB), "1536MiB");
        assert_eq!(format_size(1000), "1000B");
        assert_eq!(format_size_approx(GIB + GIB / 2), "1.5GiB");
    }
}
