//! Column values of a trajectory as small integer keys (0 is "missing"), and their CSV text. The search
//! works on keys only; text is made once per distinct value.

use kwm_schemas::codes::{AgeBand, CarryOn, Respondent};
use kwm_schemas::extract::ExtractColumn;
use kwm_schemas::{Month, RegionConfig, WireRecord};

use super::ExtractError;

/// The key of a missing value in every column.
pub(crate) const MISSING: u32 = 0;

fn opt(v: Option<u8>) -> u32 {
    v.map_or(MISSING, u32::from)
}

/// Months are keyed by their index plus one, so that 0 stays "missing".
pub(crate) fn month_key(m: Month) -> u32 {
    m.index() as u32 + 1
}

pub(crate) fn month_of_key(key: u32) -> Option<Month> {
    let idx = key.checked_sub(1)?;
    Month::new(u16::try_from(idx / 12).ok()?, (idx % 12) as u8 + 1).ok()
}

fn ordinal<T: PartialEq>(all: &[T], v: &T) -> u32 {
    all.iter()
        .position(|x| x == v)
        .map_or(MISSING, |i| i as u32 + 1)
}

/// The key of `column` in `rec`. Codes outside the region's codebooks are refused (the store holds
/// none: records are checked on upload).
pub(crate) fn key(
    column: ExtractColumn,
    rec: &WireRecord,
    region: &RegionConfig,
) -> Result<u32, ExtractError> {
    use ExtractColumn as C;
    let unknown = |value: String| ExtractError::UnknownValue { column, value };
    Ok(match column {
        C::Municipality => {
            if region.municipality(rec.municipality).is_none() {
                return Err(unknown(rec.municipality.to_string()));
            }
            u32::from(rec.municipality.number())
        }
        C::TargetGroup => region
            .target_groups
            .iter()
            .position(|t| t.code == rec.target_group)
            .map(|i| i as u32 + 1)
            .ok_or_else(|| unknown(rec.target_group.to_string()))?,
        C::Intensity => opt(rec.intensity.map(|v| v.get())),
        C::ProductCategory => opt(rec.product_category.map(|v| v.get())),
        C::StartMonth => month_key(rec.start_month),
        C::EndMonth => rec.end_month.map_or(MISSING, month_key),
        C::AgeBand => ordinal(AgeBand::ALL, &rec.age_band),
        C::EndReason => opt(rec.end_reason.map(|r| r.code())),
        C::Satisfaction => opt(rec.satisfaction.map(|v| v.get())),
        C::Respondent => rec
            .respondent
            .map_or(MISSING, |r| ordinal(Respondent::ALL, &r)),
        C::CarryOnWithoutHelp => rec
            .carry_on_without_help
            .map_or(MISSING, |c| ordinal(CarryOn::ALL, &c)),
        C::ProblemTPre => opt(rec.problem_t_pre.map(|v| v.get())),
        C::ProblemTPost => opt(rec.problem_t_post.map(|v| v.get())),
        C::Instrument => match &rec.instrument {
            None => MISSING,
            Some(code) => region
                .instruments
                .iter()
                .position(|i| &i.code == code)
                .map(|i| i as u32 + 1)
                .ok_or_else(|| unknown(code.to_string()))?,
        },
        // A count of 0 goals is a value, so counts are shifted by one.
        C::GoalsAgreed => rec.goals_agreed.map_or(MISSING, |g| u32::from(g.get()) + 1),
        C::GoalsAchieved => rec
            .goals_achieved
            .map_or(MISSING, |g| u32::from(g.get()) + 1),
    })
}

/// The CSV text of a key: as the provider's export writes the value; empty when missing.
pub(crate) fn text(column: ExtractColumn, key: u32, region: &RegionConfig) -> String {
    use ExtractColumn as C;
    if key == MISSING {
        return String::new();
    }
    let nth = |i: u32| (i - 1) as usize;
    match column {
        C::Municipality => format!("GM{key:04}"),
        C::TargetGroup => region
            .target_groups
            .get(nth(key))
            .map(|t| t.code.to_string())
            .unwrap_or_default(),
        C::Instrument => region
            .instruments
            .get(nth(key))
            .map(|i| i.code.to_string())
            .unwrap_or_default(),
        C::StartMonth | C::EndMonth => month_of_key(key).map(|m| m.to_string()).unwrap_or_default(),
        C::AgeBand => AgeBand::ALL
            .get(nth(key))
            .map(|a| a.as_str().to_string())
            .unwrap_or_default(),
        C::Respondent => Respondent::ALL
            .get(nth(key))
            .map(|a| a.as_str().to_string())
            .unwrap_or_default(),
        C::CarryOnWithoutHelp => CarryOn::ALL
            .get(nth(key))
            .map(|a| a.as_str().to_string())
            .unwrap_or_default(),
        C::EndReason => format!("{key:02}"),
        C::GoalsAgreed | C::GoalsAchieved => (key - 1).to_string(),
        C::Intensity | C::ProductCategory | C::Satisfaction | C::ProblemTPre | C::ProblemTPost => {
            key.to_string()
        }
    }
}
