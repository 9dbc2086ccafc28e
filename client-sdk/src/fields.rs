//! Parsers for the fields of one export row: raw CSV bytes in, the kwm-schemas newtypes out. Every
//! failure says what was expected and never repeats the value (it may be a BSN or a date of birth).

use std::borrow::Cow;

use kwm_schemas::codes::{
    CarryOn, EndReason, GoalCount, Intensity, ProductCategory, Respondent, Satisfaction, TScore,
};
use kwm_schemas::{Bsn, Code, MunicipalityCode};
use time::Date;
use zeroize::Zeroize;

/// Why a field was refused: a fixed text where possible, so the happy path never allocates.
pub type Reason = Cow<'static, str>;

/// The field as text without surrounding white space.
pub fn text(raw: &[u8]) -> Result<&str, Reason> {
    std::str::from_utf8(raw)
        .map(str::trim)
        .map_err(|_| Reason::Borrowed("not valid UTF-8 text; save the export as UTF-8"))
}

/// Whether the field is empty (only white space counts as empty too).
pub fn is_empty(raw: &[u8]) -> bool {
    raw.iter().all(u8::is_ascii_whitespace)
}

/// `None` for an empty field, else the parsed value.
pub fn optional<'a, T>(
    raw: &'a [u8],
    parse: impl FnOnce(&'a [u8]) -> Result<T, Reason>,
) -> Result<Option<T>, Reason> {
    if is_empty(raw) {
        Ok(None)
    } else {
        parse(raw).map(Some)
    }
}

/// A required field: empty is an error.
pub fn required<'a, T>(
    raw: &'a [u8],
    parse: impl FnOnce(&'a [u8]) -> Result<T, Reason>,
) -> Result<T, Reason> {
    if is_empty(raw) {
        Err(Reason::Borrowed("is empty but required"))
    } else {
        parse(raw)
    }
}

/// A BSN. Spaces and dots between the digits are dropped (`123 456 782`, `123.456.782`); an eight-digit
/// number gets back the leading zero a spreadsheet dropped.
pub fn bsn(raw: &[u8]) -> Result<Bsn, Reason> {
    let mut buf = [0u8; 12];
    let mut n = 0usize;
    let mut digits = 0usize;
    let mut other = false;
    for &b in raw {
        match b {
            b'0'..=b'9' => {
                if n < buf.len() {
                    buf[n] = b;
                    n += 1;
                }
                digits += 1;
            }
            b' ' | b'.' | b'\t' => {}
            _ => other = true,
        }
    }
    let result = if other {
        Err(Reason::Borrowed("a BSN has only digits"))
    } else if digits != 8 && digits != 9 {
        Err(Reason::Owned(format!(
            "a BSN has 9 digits, this one has {digits}"
        )))
    } else {
        // Only ASCII digits were copied.
        let s = std::str::from_utf8(&buf[..n]).unwrap_or("");
        Bsn::parse(s).map_err(|e| Reason::Owned(e.0))
    };
    buf.zeroize();
    result
}

/// An ISO 8601 calendar date `YYYY-MM-DD`. A time of day after a `T` or a space (`2024-03-15 00:00:00`,
/// as some client systems export dates) is ignored.
pub fn date(raw: &[u8]) -> Result<Date, Reason> {
    let t = trim_ascii(raw);
    let d = match t.get(10) {
        None => t,
        Some(b'T' | b' ') => &t[..10],
        Some(_) => return Err(date_format_error(t)),
    };
    if d.len() != 10 || d[4] != b'-' || d[7] != b'-' {
        return Err(date_format_error(t));
    }
    let num = |s: &[u8]| -> Option<u16> {
        s.iter().try_fold(0u16, |acc, &b| {
            b.is_ascii_digit().then(|| acc * 10 + u16::from(b - b'0'))
        })
    };
    let (Some(y), Some(m), Some(day)) = (num(&d[..4]), num(&d[5..7]), num(&d[8..10])) else {
        return Err(date_format_error(t));
    };
    if !(1900..=2999).contains(&y) {
        return Err(Reason::Borrowed("the year must be between 1900 and 2999"));
    }
    let month = u8::try_from(m)
        .ok()
        .and_then(|m| time::Month::try_from(m).ok())
        .ok_or(Reason::Borrowed("the month must be 01 to 12"))?;
    let day = u8::try_from(day).unwrap_or(0);
    Date::from_calendar_date(i32::from(y), month, day).map_err(|_| {
        Reason::Borrowed(
            "not a day of the calendar (such as 31 April or 29 February of a non-leap year)",
        )
    })
}

fn date_format_error(t: &[u8]) -> Reason {
    // A Dutch spreadsheet's DD-MM-YYYY is the usual mistake; say so without repeating the date.
    let dutch = t.len() >= 10 && matches!(t[2], b'-' | b'/') && matches!(t[5], b'-' | b'/');
    if dutch {
        Reason::Borrowed(
            "looks like DD-MM-YYYY; dates must be ISO 8601 YYYY-MM-DD (set the date format of the export)",
        )
    } else {
        Reason::Borrowed("a date is written YYYY-MM-DD (ISO 8601), e.g. 2024-03-15")
    }
}

fn trim_ascii(mut s: &[u8]) -> &[u8] {
    while let [first, rest @ ..] = s {
        if first.is_ascii_whitespace() {
            s = rest;
        } else {
            break;
        }
    }
    while let [rest @ .., last] = s {
        if last.is_ascii_whitespace() {
            s = rest;
        } else {
            break;
        }
    }
    s
}

/// The provider's own trajectory number: any text of 1 to 100 bytes without control characters.
pub fn trajectory_id(raw: &[u8]) -> Result<&str, Reason> {
    let t = text(raw)?;
    if t.is_empty() {
        return Err(Reason::Borrowed("is empty but required"));
    }
    if t.len() > 100 {
        return Err(Reason::Borrowed(
            "a trajectory id has at most 100 characters",
        ));
    }
    if t.chars().any(char::is_control) {
        return Err(Reason::Borrowed(
            "a trajectory id cannot hold control characters",
        ));
    }
    Ok(t)
}

/// A CBS municipality code: `GM0748`, `gm0748` or `0748`. A code of one to three digits is what a
/// spreadsheet leaves of `0748` when it takes the column for numbers: the reason names the code with
/// its zeros (a municipality code is public, not a record value).
pub fn municipality(raw: &[u8]) -> Result<MunicipalityCode, Reason> {
    let t = text(raw)?;
    t.parse().map_err(|e: kwm_schemas::ParseError| {
        let digits = t
            .strip_prefix("GM")
            .or_else(|| t.strip_prefix("gm"))
            .unwrap_or(t);
        let lost_zeros = (1..=3).contains(&digits.len())
            && digits.bytes().all(|b| b.is_ascii_digit())
            && digits.bytes().any(|b| b != b'0');
        if lost_zeros {
            Reason::Owned(format!(
                "{digits} has {} digit{} but a CBS code has 4: did a spreadsheet drop the leading \
                 zero? Write {digits:0>4} (or GM{digits:0>4}), and keep the column as text when \
                 saving from Excel",
                digits.len(),
                if digits.len() == 1 { "" } else { "s" }
            ))
        } else {
            Reason::Owned(e.0)
        }
    })
}

/// A codebook code (target group, instrument); upper-cased.
pub fn code(raw: &[u8]) -> Result<Code, Reason> {
    text(raw)?
        .parse()
        .map_err(|e: kwm_schemas::ParseError| Reason::Owned(e.0))
}

/// A whole number in `lo..=hi` (leading zeros allowed), turned into its newtype by `make`.
fn ranged<T>(
    raw: &[u8],
    lo: u8,
    hi: u8,
    make: fn(u8) -> Result<T, kwm_schemas::ParseError>,
) -> Result<T, Reason> {
    let t = trim_ascii(raw);
    let value = if t.is_empty() || t.len() > 4 {
        None
    } else {
        t.iter().try_fold(0u16, |acc, &b| {
            b.is_ascii_digit().then(|| acc * 10 + u16::from(b - b'0'))
        })
    };
    value
        .and_then(|v| u8::try_from(v).ok())
        .filter(|v| (lo..=hi).contains(v))
        .and_then(|v| make(v).ok())
        .ok_or_else(|| Reason::Owned(format!("must be a whole number from {lo} to {hi}")))
}

pub fn intensity(raw: &[u8]) -> Result<Intensity, Reason> {
    ranged(raw, Intensity::MIN, Intensity::MAX, Intensity::new)
}

pub fn product_category(raw: &[u8]) -> Result<ProductCategory, Reason> {
    ranged(
        raw,
        ProductCategory::MIN,
        ProductCategory::MAX,
        ProductCategory::new,
    )
}

pub fn satisfaction(raw: &[u8]) -> Result<Satisfaction, Reason> {
    ranged(raw, Satisfaction::MIN, Satisfaction::MAX, Satisfaction::new)
}

pub fn t_score(raw: &[u8]) -> Result<TScore, Reason> {
    ranged(raw, TScore::MIN, TScore::MAX, TScore::new)
}

pub fn goal_count(raw: &[u8]) -> Result<GoalCount, Reason> {
    ranged(raw, GoalCount::MIN, GoalCount::MAX, GoalCount::new)
}

/// An iJw JZ588 end reason: `02` (or `2`), `20`, `31`..`39`.
pub fn end_reason(raw: &[u8]) -> Result<EndReason, Reason> {
    text(raw)?
        .parse()
        .map_err(|e: kwm_schemas::ParseError| Reason::Owned(e.0))
}

fn word<T: Copy>(raw: &[u8], table: &[(&str, T)], expected: &'static str) -> Result<T, Reason> {
    let t = text(raw)?;
    table
        .iter()
        .find(|(w, _)| w.eq_ignore_ascii_case(t))
        .map(|(_, v)| *v)
        .ok_or(Reason::Borrowed(expected))
}

/// `youth`, `parent` or `both` (any case); the Dutch words of client systems are accepted too.
pub fn respondent(raw: &[u8]) -> Result<Respondent, Reason> {
    word(
        raw,
        &[
            ("youth", Respondent::Youth),
            ("parent", Respondent::Parent),
            ("both", Respondent::Both),
            ("jeugdige", Respondent::Youth),
            ("jongere", Respondent::Youth),
            ("ouder", Respondent::Parent),
            ("ouders", Respondent::Parent),
            ("beide", Respondent::Both),
            ("beiden", Respondent::Both),
        ],
        "must be one of: youth, parent, both",
    )
}

/// `yes`, `no` or `unknown` (any case; also `ja`, `nee`, `onbekend`).
pub fn carry_on(raw: &[u8]) -> Result<CarryOn, Reason> {
    word(
        raw,
        &[
            ("yes", CarryOn::Yes),
            ("no", CarryOn::No),
            ("unknown", CarryOn::Unknown),
            ("ja", CarryOn::Yes),
            ("nee", CarryOn::No),
            ("onbekend", CarryOn::Unknown),
        ],
        "must be one of: yes, no, unknown",
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// A valid BSN from eight digits, or `None` when no check digit fits.
    fn complete_bsn(first8: [u8; 8]) -> Option<String> {
        let sum: i32 = first8
            .iter()
            .enumerate()
            .map(|(i, d)| (9 - i as i32) * i32::from(*d))
            .sum();
        let check = sum.rem_euclid(11);
        if check > 9 || first8.iter().all(|d| *d == 0) {
            return None;
        }
        let mut s: String = first8.iter().map(|d| char::from(b'0' + d)).collect();
        s.push(char::from(b'0' + check as u8));
        Some(s)
    }

    #[test]
    fn bsn_examples() {
        assert!(bsn(b"111222333").is_ok());
        assert!(bsn(b" 111 222 333 ").is_ok());
        assert!(bsn(b"111.222.333").is_ok());
        assert!(bsn(b"12345672").is_ok(), "leading zero restored");
        let e = bsn(b"123456789").expect_err("elfproef");
        assert!(e.contains("elfproef"));
        assert!(!e.contains("123"));
        assert_eq!(
            bsn(b"1234567").expect_err("short"),
            "a BSN has 9 digits, this one has 7"
        );
        assert_eq!(bsn(b"1.2E+08").expect_err("excel"), "a BSN has only digits");
    }

    #[test]
    fn date_examples() {
        let d = date(b"2024-02-29").expect("leap day");
        assert_eq!((d.year(), d.month() as u8, d.day()), (2024, 2, 29));
        assert!(date(b"2023-02-29")
            .expect_err("no leap")
            .contains("calendar"));
        assert!(date(b"15-03-2024")
            .expect_err("dutch")
            .contains("DD-MM-YYYY"));
        assert!(date(b"2024-03-15 00:00:00").is_ok());
        assert!(date(b"2024-03-15T12:30:00Z").is_ok());
        assert!(date(b"2024-3-15").is_err());
        assert!(date(b"2024-13-01").expect_err("month").contains("month"));
        assert!(date(b"1899-12-31").expect_err("year").contains("year"));
        assert!(date(b"2024-03-15x").is_err());
    }

    #[test]
    fn words_and_aliases() {
        assert_eq!(respondent(b" Parent ").expect("ok"), Respondent::Parent);
        assert_eq!(respondent(b"beide").expect("ok"), Respondent::Both);
        assert_eq!(carry_on(b"JA").expect("ok"), CarryOn::Yes);
        assert!(carry_on(b"maybe").is_err());
    }

    proptest! {
        #[test]
        fn bsn_accepts_valid_numbers_with_any_padding(
            first8 in proptest::array::uniform8(0u8..10),
            lead in "[ \t]{0,3}", trail in "[ \t]{0,3}",
            sep in proptest::sample::select(vec!["", " ", "."]),
        ) {
            if let Some(valid) = complete_bsn(first8) {
                let spaced = format!("{lead}{}{sep}{}{sep}{}{trail}", &valid[..3], &valid[3..6], &valid[6..]);
                let parsed = bsn(spaced.as_bytes()).expect("valid BSN with padding");
                prop_assert_eq!(parsed.normalised(), valid.as_bytes());
                if let Some(short) = valid.strip_prefix('0') {
                    let parsed = bsn(short.as_bytes()).expect("leading zero dropped");
                    prop_assert_eq!(parsed.normalised(), valid.as_bytes());
                }
            }
        }

        #[test]
        fn bsn_agrees_with_the_elfproef(first8 in proptest::array::uniform8(0u8..10), last in 0u8..10) {
            let mut s: String = first8.iter().map(|d| char::from(b'0' + d)).collect();
            s.push(char::from(b'0' + last));
            let valid = complete_bsn(first8).as_deref() == Some(s.as_str());
            prop_assert_eq!(bsn(s.as_bytes()).is_ok(), valid);
        }

        #[test]
        fn bsn_never_echoes_its_input(s in "[0-9a-z .-]{0,15}") {
            if let Err(e) = bsn(s.as_bytes()) {
                let digits: String = s.chars().filter(char::is_ascii_digit).collect();
                if digits.len() >= 3 {
                    prop_assert!(!e.contains(&digits));
                }
            }
        }

        #[test]
        fn dates_roundtrip(y in 1900i32..3000, m in 1u8..13, d in 1u8..32, pad in "[ ]{0,2}") {
            let month = time::Month::try_from(m).expect("month");
            let expected = Date::from_calendar_date(y, month, d).ok();
            let s = format!("{pad}{y:04}-{m:02}-{d:02}{pad}");
            prop_assert_eq!(date(s.as_bytes()).ok(), expected);
        }

        #[test]
        fn dates_refuse_other_shapes(s in "\\PC{0,12}") {
            let t = s.trim();
            let b = t.as_bytes();
            let shaped = b.len() == 10
                && b.iter().enumerate().all(|(i, c)| if i == 4 || i == 7 { *c == b'-' } else { c.is_ascii_digit() });
            if !shaped {
                prop_assert!(date(s.as_bytes()).is_err());
            }
        }

        #[test]
        fn optional_fields_are_none_when_blank(ws in "[ \t]{0,4}", v in 0u16..300) {
            prop_assert_eq!(optional(ws.as_bytes(), intensity), Ok(None));
            prop_assert_eq!(optional(ws.as_bytes(), date), Ok(None));
            let s = format!("{ws}{v}{ws}");
            let parsed = optional(s.as_bytes(), intensity);
            prop_assert_eq!(parsed.is_ok(), (1..=4).contains(&v));
            prop_assert!(required(ws.as_bytes(), intensity).is_err());
        }

        #[test]
        fn ranged_numbers_accept_exactly_their_range(v in 0u16..400, zeros in 0usize..2) {
            let s = format!("{}{v}", "0".repeat(zeros));
            let b = s.as_bytes();
            prop_assert_eq!(intensity(b).is_ok(), (1..=4).contains(&v));
            prop_assert_eq!(product_category(b).is_ok(), (40..=55).contains(&v));
            prop_assert_eq!(satisfaction(b).is_ok(), (1..=10).contains(&v));
            prop_assert_eq!(t_score(b).is_ok(), (20..=100).contains(&v));
            prop_assert_eq!(goal_count(b).is_ok(), v <= 100);
            if let Err(e) = satisfaction(b) {
                prop_assert!(!e.contains(&v.to_string()) || v <= 10);
            }
        }

        #[test]
        fn ranged_numbers_refuse_non_numbers(s in "[-+a-z.,]{1,4}[0-9]?") {
            prop_assert!(satisfaction(s.as_bytes()).is_err());
        }

        #[test]
        fn end_reasons_are_the_jz588_codes(v in 0u8..100, pad in proptest::bool::ANY) {
            let s = if pad { format!("{v:02}") } else { v.to_string() };
            prop_assert_eq!(end_reason(s.as_bytes()).is_ok(), matches!(v, 2 | 20 | 31..=39));
        }

        #[test]
        fn municipalities_with_or_without_prefix(n in 1u16..10000, prefix in proptest::sample::select(vec!["", "GM", "gm"]), pad in "[ ]{0,2}") {
            let s = format!("{pad}{prefix}{n:04}{pad}");
            let m = municipality(s.as_bytes()).expect("valid");
            prop_assert_eq!(m.to_string(), format!("GM{n:04}"));
        }

        #[test]
        fn trajectory_ids_are_trimmed(id in "[A-Za-z0-9/_-]{1,40}", pad in "[ \t]{0,3}") {
            let s = format!("{pad}{id}{pad}");
            prop_assert_eq!(trajectory_id(s.as_bytes()).expect("valid"), id.as_str());
        }

        #[test]
        fn words_parse_in_any_case_with_padding(i in 0usize..3, upper in proptest::bool::ANY, pad in "[ \t]{0,2}", junk in "[a-z]{1,8}") {
            let cased = |w: &str| if upper { w.to_uppercase() } else { w.to_string() };
            let r = Respondent::ALL[i];
            let s = format!("{pad}{}{pad}", cased(r.as_str()));
            prop_assert_eq!(respondent(s.as_bytes()), Ok(r));
            let c = CarryOn::ALL[i];
            let s = format!("{pad}{}{pad}", cased(c.as_str()));
            prop_assert_eq!(carry_on(s.as_bytes()), Ok(c));
            let known = ["youth", "parent", "both", "jeugdige", "jongere", "ouder", "ouders", "beide", "beiden"];
            prop_assert_eq!(respondent(junk.as_bytes()).is_ok(), known.contains(&junk.as_str()));
        }

        #[test]
        fn non_utf8_is_refused_cleanly(bytes in proptest::collection::vec(0x80u8..0xff, 1..8)) {
            if std::str::from_utf8(&bytes).is_err() {
                prop_assert!(code(&bytes).expect_err("not utf-8").contains("UTF-8"));
            }
        }
    }
}
