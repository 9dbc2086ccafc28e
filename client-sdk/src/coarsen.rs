//! Coarsening (DESIGN section 4): exact dates become calendar months and the date of birth becomes the age
//! band at the start of the trajectory, so that no exact date leaves the provider's machine.

use kwm_schemas::codes::AgeBand;
use kwm_schemas::Month;
use time::Date;

use crate::fields::Reason;

/// The oldest age (in whole years, at the start of a trajectory) that youth care serves.
pub const MAX_AGE: i32 = 22;

/// The month of a date. Dates are parsed with years 1900..=2999, which is exactly what `Month` holds.
pub fn month(d: Date) -> Result<Month, Reason> {
    Month::of_date(d).map_err(|e| Reason::Owned(e.0))
}

/// Age in whole years on `at` of someone born on `birth`: the birthday counts from its own day, and a
/// 29 February birthday counts from 1 March in a non-leap year.
pub fn age_in_years(birth: Date, at: Date) -> i32 {
    let mut years = at.year() - birth.year();
    if (at.month() as u8, at.day()) < (birth.month() as u8, birth.day()) {
        years -= 1;
    }
    years
}

/// The age band at the start of the trajectory. Refuses a birth after the start and ages above
/// [`MAX_AGE`]; the reasons name no date and no age.
pub fn age_band(birth: Date, start: Date) -> Result<AgeBand, Reason> {
    if birth > start {
        return Err(Reason::Borrowed(
            "the date of birth is after the start date",
        ));
    }
    AgeBand::of_age(age_in_years(birth, start)).ok_or(Reason::Borrowed(
        "the client is older than 22 at the start date; youth care ends at 23",
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use time::macros::date;

    #[test]
    fn age_band_boundaries() {
        let start = date!(2024 - 06 - 15);
        let cases = [
            (date!(2024 - 06 - 15), Some(AgeBand::Age0To3)), // born that day
            (date!(2020 - 06 - 16), Some(AgeBand::Age0To3)), // 3 until tomorrow
            (date!(2020 - 06 - 15), Some(AgeBand::Age4To11)), // 4 today
            (date!(2012 - 06 - 16), Some(AgeBand::Age4To11)), // 11
            (date!(2012 - 06 - 15), Some(AgeBand::Age12To17)), // 12 today
            (date!(2006 - 06 - 16), Some(AgeBand::Age12To17)), // 17
            (date!(2006 - 06 - 15), Some(AgeBand::Age18To22)), // 18 today
            (date!(2001 - 06 - 16), Some(AgeBand::Age18To22)), // 22
            (date!(2001 - 06 - 15), None),                   // 23 today
        ];
        for (birth, expected) in cases {
            assert_eq!(age_band(birth, start).ok(), expected, "born {birth}");
        }
        assert!(age_band(date!(2024 - 06 - 16), start)
            .expect_err("born after start")
            .contains("after the start"));
    }

    #[test]
    fn leap_day_birthdays() {
        let birth = date!(2008 - 02 - 29);
        assert_eq!(age_in_years(birth, date!(2012 - 02 - 28)), 3);
        assert_eq!(age_in_years(birth, date!(2012 - 02 - 29)), 4);
        assert_eq!(age_in_years(birth, date!(2011 - 02 - 28)), 2);
        assert_eq!(age_in_years(birth, date!(2011 - 03 - 01)), 3);
    }

    #[test]
    fn months() {
        assert_eq!(
            month(date!(2025 - 03 - 31)).expect("valid").to_string(),
            "2025-03"
        );
    }

    proptest! {
        #[test]
        fn age_matches_counting_birthdays(b in 0i32..20_000, gap in 0i32..10_000) {
            let birth = Date::from_julian_day(2_440_000 + b).expect("date");
            let at = Date::from_julian_day(2_440_000 + b + gap).expect("date");
            let age = age_in_years(birth, at);
            // The age-th birthday (clamped for 29 February) is on or before `at`, the next one is after.
            let bday = |years: i32| {
                let y = birth.year() + years;
                Date::from_calendar_date(y, birth.month(), birth.day())
                    .or_else(|_| Date::from_calendar_date(y, time::Month::March, 1))
                    .expect("date")
            };
            prop_assert!(age >= 0);
            prop_assert!(bday(age) <= at);
            prop_assert!(bday(age + 1) > at);
        }
    }
}
