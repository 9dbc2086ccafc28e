//! Parsed value types for every field of a record: each one is checked once, at the edge, and is then
//! known to be valid wherever it travels.

use std::borrow::Cow;
use std::fmt;
use std::str::FromStr;

use schemars::{json_schema, JsonSchema, Schema, SchemaGenerator};
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use zeroize::Zeroize;

/// Why a value could not be parsed. The text says what was expected, never echoes a secret.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct ParseError(pub String);

impl ParseError {
    fn new(msg: impl Into<String>) -> Self {
        Self(msg.into())
    }
}

/// Implements `Display`, serde (as a string) and JSON Schema (a string with a pattern) for a type with
/// `FromStr` and an `as_str`-like rendering.
macro_rules! string_type {
    ($ty:ident, $name:literal, $pattern:literal, $desc:literal) => {
        impl Serialize for $ty {
            fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.collect_str(self)
            }
        }
        impl<'de> Deserialize<'de> for $ty {
            fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                let s = <Cow<'de, str>>::deserialize(d)?;
                s.parse().map_err(serde::de::Error::custom)
            }
        }
        impl JsonSchema for $ty {
            fn schema_name() -> Cow<'static, str> {
                $name.into()
            }
            fn json_schema(_: &mut SchemaGenerator) -> Schema {
                json_schema!({ "type": "string", "pattern": $pattern, "description": $desc })
            }
        }
    };
}

/// Implements serde and JSON Schema for a small integer type with a range.
macro_rules! int_type {
    ($ty:ident, $inner:ty, $min:literal, $max:literal, $name:literal, $desc:literal) => {
        impl $ty {
            pub const MIN: $inner = $min;
            pub const MAX: $inner = $max;
            pub fn new(v: $inner) -> Result<Self, ParseError> {
                if ($min..=$max).contains(&v) {
                    Ok(Self(v))
                } else {
                    Err(ParseError::new(format!(
                        "must be between {} and {}, got {}",
                        $min, $max, v
                    )))
                }
            }
            pub fn get(self) -> $inner {
                self.0
            }
        }
        impl FromStr for $ty {
            type Err = ParseError;
            fn from_str(s: &str) -> Result<Self, ParseError> {
                let v: $inner = s.trim().parse().map_err(|_| {
                    ParseError::new(format!("must be a whole number between {} and {}", $min, $max))
                })?;
                Self::new(v)
            }
        }
        impl fmt::Display for $ty {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                self.0.fmt(f)
            }
        }
        impl Serialize for $ty {
            fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                self.0.serialize(s)
            }
        }
        impl<'de> Deserialize<'de> for $ty {
            fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                let v = <$inner>::deserialize(d)?;
                Self::new(v).map_err(serde::de::Error::custom)
            }
        }
        impl JsonSchema for $ty {
            fn schema_name() -> Cow<'static, str> {
                $name.into()
            }
            fn json_schema(_: &mut SchemaGenerator) -> Schema {
                json_schema!({ "type": "integer", "minimum": $min, "maximum": $max, "description": $desc })
            }
        }
    };
}

/// A burgerservicenummer: nine digits that pass the elfproef. Only ever held on the provider's machine;
/// `Debug` and `Display` never show it and the digits are zeroed on drop.
#[derive(Clone, PartialEq, Eq)]
pub struct Bsn([u8; 9]);

impl Bsn {
    /// Parses a BSN. Surrounding spaces are ignored; an eight-digit number gets its leading zero back
    /// (spreadsheets drop it).
    pub fn parse(s: &str) -> Result<Self, ParseError> {
        let s = s.trim();
        if !s.bytes().all(|b| b.is_ascii_digit()) || s.is_empty() {
            return Err(ParseError::new("a BSN has only digits"));
        }
        let mut digits = [0u8; 9];
        match s.len() {
            9 => digits.copy_from_slice(s.as_bytes()),
            8 => {
                digits[0] = b'0';
                digits[1..].copy_from_slice(s.as_bytes());
            }
            n => {
                return Err(ParseError::new(format!(
                    "a BSN has 9 digits, this one has {n}"
                )))
            }
        }
        if !elfproef(&digits) {
            digits.zeroize();
            return Err(ParseError::new("not a valid BSN (fails the elfproef)"));
        }
        Ok(Self(digits))
    }

    /// The normalised nine ASCII digits, the input of the client pseudonym.
    pub fn normalised(&self) -> &[u8; 9] {
        &self.0
    }
}

/// The elfproef of a BSN: 9*d1 + 8*d2 + ... + 2*d8 - 1*d9 is a multiple of 11, and not all zeros.
pub fn elfproef(digits: &[u8; 9]) -> bool {
    let mut sum: i32 = 0;
    for (i, d) in digits.iter().enumerate() {
        let d = i32::from(d - b'0');
        let w = if i == 8 { -1 } else { 9 - i as i32 };
        sum += w * d;
    }
    sum % 11 == 0 && digits.iter().any(|d| *d != b'0')
}

impl Drop for Bsn {
    fn drop(&mut self) {
        self.0.zeroize();
    }
}

impl fmt::Debug for Bsn {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Bsn(<redacted>)")
    }
}

/// An AGB code: the eight-digit register number of a care provider.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct AgbCode([u8; 8]);

impl AgbCode {
    pub fn as_str(&self) -> &str {
        // Only ASCII digits are ever stored.
        std::str::from_utf8(&self.0).unwrap_or("????????")
    }
}

impl FromStr for AgbCode {
    type Err = ParseError;
    fn from_str(s: &str) -> Result<Self, ParseError> {
        let s = s.trim();
        if s.len() != 8 || !s.bytes().all(|b| b.is_ascii_digit()) {
            return Err(ParseError::new("an AGB code has exactly 8 digits"));
        }
        let mut b = [0u8; 8];
        b.copy_from_slice(s.as_bytes());
        Ok(Self(b))
    }
}

impl fmt::Display for AgbCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}
string_type!(
    AgbCode,
    "AgbCode",
    "^[0-9]{8}$",
    "AGB code of a care provider (8 digits)"
);

/// A CBS municipality code, always rendered as `GM` and four digits. Parses `GM0748`, `gm0748` and `0748`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct MunicipalityCode(u16);

impl MunicipalityCode {
    pub fn number(self) -> u16 {
        self.0
    }
}

impl FromStr for MunicipalityCode {
    type Err = ParseError;
    fn from_str(s: &str) -> Result<Self, ParseError> {
        let t = s.trim();
        let digits = t
            .strip_prefix("GM")
            .or_else(|| t.strip_prefix("gm"))
            .unwrap_or(t);
        if digits.len() != 4 || !digits.bytes().all(|b| b.is_ascii_digit()) {
            return Err(ParseError::new(
                "a municipality is a CBS code such as GM0748 or 0748",
            ));
        }
        let n: u16 = digits
            .parse()
            .map_err(|_| ParseError::new("a municipality is a CBS code such as GM0748 or 0748"))?;
        if n == 0 {
            return Err(ParseError::new("GM0000 is not a municipality"));
        }
        Ok(Self(n))
    }
}

impl fmt::Display for MunicipalityCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "GM{:04}", self.0)
    }
}
string_type!(
    MunicipalityCode,
    "MunicipalityCode",
    "^GM(000[1-9]|00[1-9][0-9]|0[1-9][0-9]{2}|[1-9][0-9]{3})$",
    "CBS municipality code, e.g. GM0748 (GM0000 is none)"
);

/// A code from a region's codebook (target groups, instruments): upper-case letters, digits and `_`,
/// starting with a letter, at most 16 characters. Whether the code exists is a question for the region.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Code(String);

impl Code {
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl FromStr for Code {
    type Err = ParseError;
    fn from_str(s: &str) -> Result<Self, ParseError> {
        let t = s.trim();
        let ok = !t.is_empty()
            && t.len() <= 16
            && t.as_bytes()[0].is_ascii_alphabetic()
            && t.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_');
        if !ok {
            return Err(ParseError::new(
                "a code is 1 to 16 letters, digits or _ and starts with a letter",
            ));
        }
        Ok(Self(t.to_ascii_uppercase()))
    }
}

impl fmt::Display for Code {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}
string_type!(
    Code,
    "Code",
    "^[A-Z][A-Z0-9_]{0,15}$",
    "a code from the region's codebook"
);

/// Intensity of the care as bought by the region, 1 (light) to 4 (intensive).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Intensity(u8);
int_type!(
    Intensity,
    u8,
    1,
    4,
    "Intensity",
    "intensity of the care, 1..4"
);

/// iJw JZ020 product category, 40..55.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ProductCategory(u8);
int_type!(
    ProductCategory,
    u8,
    40,
    55,
    "ProductCategory",
    "iJw JZ020 product category, 40..55"
);

/// Cliënttevredenheid: a grade 1..10.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Satisfaction(u8);
int_type!(
    Satisfaction,
    u8,
    1,
    10,
    "Satisfaction",
    "client satisfaction, grade 1..10"
);

/// A T-score on a standardised instrument, 20..100.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TScore(u8);
int_type!(
    TScore,
    u8,
    20,
    100,
    "TScore",
    "T-score on a standard instrument, 20..100"
);

/// A count of goals in the family plan, 0..100.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct GoalCount(u8);
int_type!(
    GoalCount,
    u8,
    0,
    100,
    "GoalCount",
    "number of goals in the family plan, 0..100"
);

/// iJw JZ588 reason for ending a trajectory.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct EndReason(u8);

impl EndReason {
    pub const ACCORDING_TO_PLAN: EndReason = EndReason(31);
    pub const EARLY_BY_CLIENT: EndReason = EndReason(32);
    pub const EARLY_BY_PROVIDER: EndReason = EndReason(33);
    pub const EARLY_BY_AGREEMENT: EndReason = EndReason(34);
    pub const EXTERNAL: EndReason = EndReason(35);
    /// Every JZ588 code a record may carry, ascending.
    pub const CODES: [u8; 11] = [2, 20, 31, 32, 33, 34, 35, 36, 37, 38, 39];
    const VALID: [u8; 11] = Self::CODES;

    pub fn new(code: u8) -> Result<Self, ParseError> {
        if Self::VALID.contains(&code) {
            Ok(Self(code))
        } else {
            Err(ParseError::new(
                "an end reason is an iJw JZ588 code: 02, 20 or 31..39",
            ))
        }
    }

    pub fn code(self) -> u8 {
        self.0
    }

    /// Administrative endings (02, 20, 36..39) close a trajectory without saying anything about its
    /// outcome, so the outcome percentages leave them out of their denominator.
    pub fn is_administrative(self) -> bool {
        matches!(self.0, 2 | 20 | 36..=39)
    }
}

impl FromStr for EndReason {
    type Err = ParseError;
    fn from_str(s: &str) -> Result<Self, ParseError> {
        let t = s.trim();
        if t.is_empty() || t.len() > 2 || !t.bytes().all(|b| b.is_ascii_digit()) {
            return Err(ParseError::new(
                "an end reason is an iJw JZ588 code: 02, 20 or 31..39",
            ));
        }
        let v: u8 = t
            .parse()
            .map_err(|_| ParseError::new("an end reason is an iJw JZ588 code"))?;
        Self::new(v)
    }
}

impl fmt::Display for EndReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:02}", self.0)
    }
}
string_type!(
    EndReason,
    "EndReason",
    "^(02|20|3[1-9])$",
    "iJw JZ588 end reason"
);

/// Defines a closed set of lower-case words as an enum with `FromStr`, `Display`, serde and JSON Schema.
macro_rules! word_enum {
    ($(#[$m:meta])* $ty:ident, $name:literal, $desc:literal, { $($variant:ident => $word:literal),+ $(,)? }) => {
        $(#[$m])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub enum $ty { $($variant),+ }

        impl $ty {
            pub const ALL: &'static [$ty] = &[$($ty::$variant),+];
            pub fn as_str(self) -> &'static str {
                match self { $($ty::$variant => $word),+ }
            }
        }
        impl FromStr for $ty {
            type Err = ParseError;
            fn from_str(s: &str) -> Result<Self, ParseError> {
                match s.trim().to_ascii_lowercase().as_str() {
                    $($word => Ok($ty::$variant),)+
                    _ => Err(ParseError::new(concat!("must be one of: ", $($word, " "),+).trim_end().to_string())),
                }
            }
        }
        impl fmt::Display for $ty {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result { f.write_str(self.as_str()) }
        }
        impl Serialize for $ty {
            fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> { s.serialize_str(self.as_str()) }
        }
        impl<'de> Deserialize<'de> for $ty {
            fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                let s = <Cow<'de, str>>::deserialize(d)?;
                s.parse().map_err(serde::de::Error::custom)
            }
        }
        impl JsonSchema for $ty {
            fn schema_name() -> Cow<'static, str> { $name.into() }
            fn json_schema(_: &mut SchemaGenerator) -> Schema {
                json_schema!({ "type": "string", "enum": [$($word),+], "description": $desc })
            }
        }
    };
}

word_enum!(
    /// Who answered the satisfaction question.
    Respondent, "Respondent", "who answered the satisfaction question", {
    Youth => "youth",
    Parent => "parent",
    Both => "both",
});

word_enum!(
    /// Indicator 3.1: can the client carry on without help?
    CarryOn, "CarryOn", "indicator 3.1: can the client carry on without help", {
    Yes => "yes",
    No => "no",
    Unknown => "unknown",
});

word_enum!(
    /// Age at the start of the trajectory, in the bands the releases use.
    AgeBand, "AgeBand", "age band at the start of the trajectory", {
    Age0To3 => "0-3",
    Age4To11 => "4-11",
    Age12To17 => "12-17",
    Age18To22 => "18-22",
});

impl AgeBand {
    /// The band of an age in whole years; youth care ends at 23.
    pub fn of_age(years: i32) -> Option<AgeBand> {
        match years {
            0..=3 => Some(AgeBand::Age0To3),
            4..=11 => Some(AgeBand::Age4To11),
            12..=17 => Some(AgeBand::Age12To17),
            18..=22 => Some(AgeBand::Age18To22),
            _ => None,
        }
    }
}

word_enum!(
    /// The roles of the people and systems that hold a token.
    Role, "Role", "role of a token holder", {
    Provider => "provider",
    Municipality => "municipality",
    Region => "region",
    Researcher => "researcher",
    Admin => "admin",
});

/// A calendar month, the only resolution at which dates leave the provider's machine. Renders `2025-03`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Month {
    year: u16,
    month: u8,
}

impl Month {
    pub fn new(year: u16, month: u8) -> Result<Self, ParseError> {
        if !(1900..=2999).contains(&year) || !(1..=12).contains(&month) {
            return Err(ParseError::new(
                "a month is YYYY-MM between 1900-01 and 2999-12",
            ));
        }
        Ok(Self { year, month })
    }
    pub fn of_date(d: time::Date) -> Result<Self, ParseError> {
        let y = u16::try_from(d.year()).map_err(|_| ParseError::new("year out of range"))?;
        Self::new(y, d.month() as u8)
    }
    pub fn year(self) -> u16 {
        self.year
    }
    pub fn month(self) -> u8 {
        self.month
    }
    /// `yyyymm` as an integer, the form the store keeps.
    pub fn as_yyyymm(self) -> u32 {
        u32::from(self.year) * 100 + u32::from(self.month)
    }
    pub fn from_yyyymm(v: u32) -> Result<Self, ParseError> {
        let y = u16::try_from(v / 100).map_err(|_| ParseError::new("year out of range"))?;
        Self::new(y, (v % 100) as u8)
    }
    /// Months since year 0, for window arithmetic.
    pub fn index(self) -> i32 {
        i32::from(self.year) * 12 + i32::from(self.month) - 1
    }

    /// The month `n` months later, saturating at 2999-12.
    pub fn plus_months(self, n: u32) -> Month {
        let idx = (self.index() as i64 + i64::from(n)).min(2999 * 12 + 11);
        Month {
            year: (idx / 12) as u16,
            month: (idx % 12) as u8 + 1,
        }
    }
}

impl FromStr for Month {
    type Err = ParseError;
    fn from_str(s: &str) -> Result<Self, ParseError> {
        let t = s.trim();
        let err = || ParseError::new("a month is written YYYY-MM, e.g. 2025-03");
        let (y, m) = t.split_once('-').ok_or_else(err)?;
        if y.len() != 4 || m.len() != 2 {
            return Err(err());
        }
        let y: u16 = y.parse().map_err(|_| err())?;
        let m: u8 = m.parse().map_err(|_| err())?;
        Self::new(y, m)
    }
}

impl fmt::Display for Month {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:04}-{:02}", self.year, self.month)
    }
}
string_type!(
    Month,
    "Month",
    "^[0-9]{4}-(0[1-9]|1[0-2])$",
    "a calendar month, YYYY-MM"
);

/// A 32-byte keyed pseudonym (HMAC-SHA256 output), hex on the wire. `Debug` never shows it.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Pseudonym(pub [u8; 32]);

impl Pseudonym {
    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }
    pub fn from_slice(b: &[u8]) -> Result<Self, ParseError> {
        let arr: [u8; 32] = b
            .try_into()
            .map_err(|_| ParseError::new("a pseudonym is 32 bytes"))?;
        Ok(Self(arr))
    }
}

impl fmt::Debug for Pseudonym {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Pseudonym(<redacted>)")
    }
}

impl Serialize for Pseudonym {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut buf = [0u8; 64];
        // hex::encode_to_slice cannot fail for a buffer of exactly twice the length.
        hex::encode_to_slice(self.0, &mut buf).map_err(serde::ser::Error::custom)?;
        s.serialize_str(std::str::from_utf8(&buf).map_err(serde::ser::Error::custom)?)
    }
}

impl<'de> Deserialize<'de> for Pseudonym {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = <Cow<'de, str>>::deserialize(d)?;
        let mut out = [0u8; 32];
        hex::decode_to_slice(s.as_bytes(), &mut out)
            .map_err(|_| serde::de::Error::custom("a pseudonym is 64 hex digits"))?;
        Ok(Self(out))
    }
}

impl JsonSchema for Pseudonym {
    fn schema_name() -> Cow<'static, str> {
        "Pseudonym".into()
    }
    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        json_schema!({
            "type": "string",
            "pattern": "^[0-9a-f]{64}$",
            "description": "keyed pseudonym, HMAC-SHA256 output in hex"
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// Builds a valid BSN from its first eight digits, or `None` when no check digit fits.
    fn complete_bsn(first8: [u8; 8]) -> Option<String> {
        let mut sum: i32 = 0;
        for (i, d) in first8.iter().enumerate() {
            sum += (9 - i as i32) * i32::from(*d);
        }
        let check = sum.rem_euclid(11);
        if check > 9 || (first8.iter().all(|d| *d == 0) && check == 0) {
            return None;
        }
        let mut s: String = first8.iter().map(|d| char::from(b'0' + d)).collect();
        s.push(char::from(b'0' + check as u8));
        Some(s)
    }

    #[test]
    fn known_bsns() {
        assert!(Bsn::parse("111222333").is_ok());
        assert!(Bsn::parse("123456782").is_ok());
        assert!(Bsn::parse("123456789").is_err());
        assert!(Bsn::parse("000000000").is_err());
        assert!(Bsn::parse("12345678a").is_err());
        assert!(Bsn::parse("1234567").is_err());
        // Eight digits: the leading zero a spreadsheet dropped is restored.
        let b = Bsn::parse("12345672").expect("valid after padding");
        assert_eq!(b.normalised(), b"012345672");
    }

    #[test]
    fn bsn_debug_is_redacted() {
        let b = Bsn::parse("111222333").expect("valid");
        assert!(!format!("{b:?}").contains("111"));
    }

    proptest! {
        #[test]
        fn elfproef_accepts_exactly_the_valid_numbers(first8 in proptest::array::uniform8(0u8..10), last in 0u8..10) {
            let mut s: String = first8.iter().map(|d| char::from(b'0' + d)).collect();
            s.push(char::from(b'0' + last));
            let expected = complete_bsn(first8).as_deref() == Some(s.as_str());
            prop_assert_eq!(Bsn::parse(&s).is_ok(), expected);
        }

        #[test]
        fn one_changed_digit_breaks_the_elfproef(first8 in proptest::array::uniform8(0u8..10), pos in 0usize..9, delta in 1u8..10) {
            if let Some(valid) = complete_bsn(first8) {
                let mut b = valid.into_bytes();
                b[pos] = b'0' + (b[pos] - b'0' + delta) % 10;
                let s = String::from_utf8(b).expect("ascii");
                prop_assert!(Bsn::parse(&s).is_err());
            }
        }

        #[test]
        fn agb_parses_exactly_eight_digits(s in "\\PC{0,12}") {
            let ok = s.trim().len() == 8 && s.trim().bytes().all(|b| b.is_ascii_digit());
            prop_assert_eq!(s.parse::<AgbCode>().is_ok(), ok);
        }

        #[test]
        fn municipality_roundtrips(n in 1u16..10000, prefix in proptest::bool::ANY) {
            let s = if prefix { format!("GM{n:04}") } else { format!("{n:04}") };
            let m: MunicipalityCode = s.parse().expect("valid");
            prop_assert_eq!(m.to_string(), format!("GM{n:04}"));
        }

        #[test]
        fn municipality_rejects_garbage(s in "\\PC{0,10}") {
            let t = s.trim();
            let d = t.strip_prefix("GM").or_else(|| t.strip_prefix("gm")).unwrap_or(t);
            let ok = d.len() == 4 && d.bytes().all(|b| b.is_ascii_digit()) && d != "0000";
            prop_assert_eq!(s.parse::<MunicipalityCode>().is_ok(), ok);
        }

        #[test]
        fn month_roundtrips(y in 1900u16..3000, m in 1u8..13) {
            let month = Month::new(y, m).expect("valid");
            prop_assert_eq!(month.to_string().parse::<Month>().expect("parses"), month);
            prop_assert_eq!(Month::from_yyyymm(month.as_yyyymm()).expect("parses"), month);
            prop_assert_eq!(month.plus_months(13).index(), (month.index() + 13).min(2999 * 12 + 11));
        }

        #[test]
        fn ranged_ints_accept_exactly_their_range(v in -5i32..200) {
            let s = v.to_string();
            prop_assert_eq!(s.parse::<Intensity>().is_ok(), (1..=4).contains(&v));
            prop_assert_eq!(s.parse::<ProductCategory>().is_ok(), (40..=55).contains(&v));
            prop_assert_eq!(s.parse::<Satisfaction>().is_ok(), (1..=10).contains(&v));
            prop_assert_eq!(s.parse::<TScore>().is_ok(), (20..=100).contains(&v));
            prop_assert_eq!(s.parse::<GoalCount>().is_ok(), (0..=100).contains(&v));
        }

        #[test]
        fn end_reason_accepts_the_jz588_codes(v in 0u8..100, pad in proptest::bool::ANY) {
            let s = if pad { format!("{v:02}") } else { v.to_string() };
            let ok = matches!(v, 2 | 20 | 31..=39);
            prop_assert_eq!(s.parse::<EndReason>().is_ok(), ok);
        }

        #[test]
        fn words_parse_case_insensitively(i in 0usize..3, upper in proptest::bool::ANY) {
            let w = Respondent::ALL[i].as_str();
            let s = if upper { w.to_uppercase() } else { w.to_string() };
            prop_assert_eq!(s.parse::<Respondent>().expect("valid"), Respondent::ALL[i]);
        }

        #[test]
        fn codes_are_normalised_to_upper_case(s in "[a-zA-Z][a-zA-Z0-9_]{0,15}") {
            let c: Code = s.parse().expect("valid");
            prop_assert_eq!(c.as_str(), s.to_ascii_uppercase());
        }
    }
}
