//! Wire types of a release: the fixed calendar periods a release covers, its scope, and the table of
//! figures per target group in which every cell says whether it is published, and if not, why not.
//! Used by the release engine, the ledger, the API and the CSV/XLSX downloads alike.

use std::borrow::Cow;
use std::fmt;
use std::str::FromStr;

use schemars::{json_schema, JsonSchema, Schema, SchemaGenerator};
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use time::OffsetDateTime;
use uuid::Uuid;

use crate::codes::{AgbCode, Code, Month, MunicipalityCode, ParseError};
use crate::criteria::Criterion;
use crate::region::{Decimal, ReleasePolicy};

/// Serde as a string through `Display`/`FromStr`, and a JSON Schema string with a pattern.
macro_rules! string_wire {
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

/// Which part of a calendar year a period covers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum PeriodSpan {
    Year,
    /// First (1) or second (2) half-year.
    Half(u8),
    /// Quarter 1..4.
    Quarter(u8),
}

/// A release period: a calendar year (`2025`), a half-year (`2025-H1`, `2025-H2`) or a quarter
/// (`2025-Q1` .. `2025-Q4`). Only these fixed grids exist, never an arbitrary window: two overlapping
/// windows that differ by a month would let their difference single out the trajectories of that month.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Period {
    year: u16,
    span: PeriodSpan,
}

impl Period {
    pub fn new(year: u16, span: PeriodSpan) -> Result<Self, ParseError> {
        let ok_span = match span {
            PeriodSpan::Year => true,
            PeriodSpan::Half(h) => (1..=2).contains(&h),
            PeriodSpan::Quarter(q) => (1..=4).contains(&q),
        };
        // Same year range as `Month`, so that first and last month always exist.
        if !ok_span || !(1900..=2999).contains(&year) {
            return Err(period_error());
        }
        Ok(Self { year, span })
    }

    pub fn year(self) -> u16 {
        self.year
    }

    pub fn span(self) -> PeriodSpan {
        self.span
    }

    /// Number of months covered: 12, 6 or 3.
    pub fn month_count(self) -> u8 {
        match self.span {
            PeriodSpan::Year => 12,
            PeriodSpan::Half(_) => 6,
            PeriodSpan::Quarter(_) => 3,
        }
    }

    fn first_month_number(self) -> u8 {
        match self.span {
            PeriodSpan::Year => 1,
            PeriodSpan::Half(h) => 6 * (h - 1) + 1,
            PeriodSpan::Quarter(q) => 3 * (q - 1) + 1,
        }
    }

    pub fn first_month(self) -> Month {
        Month::new(self.year, self.first_month_number())
            .unwrap_or_else(|_| unreachable!("a checked period has valid months"))
    }

    pub fn last_month(self) -> Month {
        Month::new(
            self.year,
            self.first_month_number() + self.month_count() - 1,
        )
        .unwrap_or_else(|_| unreachable!("a checked period has valid months"))
    }

    pub fn contains(self, month: Month) -> bool {
        self.first_month() <= month && month <= self.last_month()
    }

    /// The quarters the period covers, in order: the budget ledger's unit, so that a year and its own
    /// quarters draw on one budget.
    pub fn quarters(self) -> Vec<Period> {
        let first = (self.first_month_number() - 1) / 3 + 1;
        let count = self.month_count() / 3;
        (first..first + count)
            .map(|q| Period {
                year: self.year,
                span: PeriodSpan::Quarter(q),
            })
            .collect()
    }
}

fn period_error() -> ParseError {
    ParseError(
        "a period is a year (2025), a half-year (2025-H1, 2025-H2) or a quarter (2025-Q1 .. 2025-Q4)"
            .into(),
    )
}

impl FromStr for Period {
    type Err = ParseError;
    fn from_str(s: &str) -> Result<Self, ParseError> {
        let t = s.trim();
        let (year, part) = match t.split_once('-') {
            Some((y, p)) => (y, Some(p)),
            None => (t, None),
        };
        if year.len() != 4 || !year.bytes().all(|b| b.is_ascii_digit()) {
            return Err(period_error());
        }
        let year: u16 = year.parse().map_err(|_| period_error())?;
        let span = match part.map(str::as_bytes) {
            None => PeriodSpan::Year,
            Some([h, d]) if h.eq_ignore_ascii_case(&b'H') && d.is_ascii_digit() => {
                PeriodSpan::Half(d - b'0')
            }
            Some([q, d]) if q.eq_ignore_ascii_case(&b'Q') && d.is_ascii_digit() => {
                PeriodSpan::Quarter(d - b'0')
            }
            Some(_) => return Err(period_error()),
        };
        Self::new(year, span)
    }
}

impl fmt::Display for Period {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.span {
            PeriodSpan::Year => write!(f, "{:04}", self.year),
            PeriodSpan::Half(h) => write!(f, "{:04}-H{h}", self.year),
            PeriodSpan::Quarter(q) => write!(f, "{:04}-Q{q}", self.year),
        }
    }
}
string_wire!(
    Period,
    "Period",
    "^(19[0-9]{2}|2[0-9]{3})(-(H[12]|Q[1-4]))?$",
    "release period: a year (2025), a half-year (2025-H1) or a quarter (2025-Q3), years 1900..2999"
);

/// Whose figures a release holds: one municipality (`GM0748`), the whole region (`region`), or the
/// per-provider table of a round (`providers`: each provider reads only its own rows).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum ReleaseScope {
    Municipality(MunicipalityCode),
    Region,
    Providers,
}

impl FromStr for ReleaseScope {
    type Err = ParseError;
    fn from_str(s: &str) -> Result<Self, ParseError> {
        let t = s.trim();
        if t.eq_ignore_ascii_case("region") {
            return Ok(Self::Region);
        }
        if t.eq_ignore_ascii_case("providers") {
            return Ok(Self::Providers);
        }
        t.parse().map(Self::Municipality).map_err(|_| {
            ParseError("a scope is a municipality code such as GM0748, or `region`".into())
        })
    }
}

impl fmt::Display for ReleaseScope {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Municipality(m) => m.fmt(f),
            Self::Region => f.write_str("region"),
            Self::Providers => f.write_str("providers"),
        }
    }
}
string_wire!(
    ReleaseScope,
    "ReleaseScope",
    "^(GM[0-9]{4}|region|providers)$",
    "scope of a release: a municipality code (GM0748), `region`, or `providers`"
);

/// Whether a cell is published and, if not, why not. Every status is decided on the round's noisy
/// figures only, never on a true count: a status says nothing the published figures do not.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub enum CellStatus {
    Published,
    /// Too few children: the noisy count is below the threshold for k (no distinction between none
    /// and few).
    Suppressed,
    /// The 95% interval is wider than the region allows for this kind of figure: withheld.
    Unreliable,
}

impl CellStatus {
    pub const ALL: &'static [CellStatus] = &[Self::Published, Self::Suppressed, Self::Unreliable];

    /// The kebab-case word used on the wire, in downloads and in metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Published => "published",
            Self::Suppressed => "suppressed",
            Self::Unreliable => "unreliable",
        }
    }

    pub fn is_published(self) -> bool {
        self == Self::Published
    }
}

impl fmt::Display for CellStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A released number, exact. Counts are whole numbers (`"35"`); percentages and means are fixed point
/// with one decimal (`"63.4"`, `"7.0"`). On the wire it is a string, so that no consumer reads a figure
/// through a binary float and a download shows exactly what the engine computed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Figure {
    Whole(i64),
    /// The value times ten.
    Tenths(i64),
}

impl Figure {
    /// The value in tenths, whatever its form.
    pub fn tenths(self) -> i64 {
        match self {
            Self::Whole(v) => v * 10,
            Self::Tenths(t) => t,
        }
    }
}

impl FromStr for Figure {
    type Err = ParseError;
    fn from_str(s: &str) -> Result<Self, ParseError> {
        let err = || ParseError("a figure is a whole number or has exactly one decimal".into());
        let t = s.trim();
        let (negative, digits) = match t.strip_prefix('-') {
            Some(rest) => (true, rest),
            None => (false, t),
        };
        let (int, frac) = match digits.split_once('.') {
            Some((i, f)) => (i, Some(f)),
            None => (digits, None),
        };
        if int.is_empty() || !int.bytes().all(|b| b.is_ascii_digit()) {
            return Err(err());
        }
        let int: i64 = int.parse().map_err(|_| err())?;
        let sign = if negative { -1 } else { 1 };
        match frac {
            None => Ok(Self::Whole(sign * int)),
            Some(f) if f.len() == 1 && f.as_bytes()[0].is_ascii_digit() => {
                let tenths = int
                    .checked_mul(10)
                    .and_then(|v| v.checked_add(i64::from(f.as_bytes()[0] - b'0')))
                    .ok_or_else(err)?;
                Ok(Self::Tenths(sign * tenths))
            }
            Some(_) => Err(err()),
        }
    }
}

impl fmt::Display for Figure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            Self::Whole(v) => write!(f, "{v}"),
            Self::Tenths(t) => {
                let sign = if t < 0 { "-" } else { "" };
                let a = t.unsigned_abs();
                write!(f, "{sign}{}.{}", a / 10, a % 10)
            }
        }
    }
}
string_wire!(
    Figure,
    "Figure",
    "^-?[0-9]+(\\.[0-9])?$",
    "an exact released number: a whole count (\"35\") or a percentage or mean with one decimal (\"63.4\")"
);

/// One criterion of one row.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ReleaseCell {
    /// Code of the criterion in the catalogue (`volgens_plan`, `in_zorg`, ...).
    pub criterion: String,
    pub status: CellStatus,
    /// The figure; present exactly when the status is `published`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value: Option<Figure>,
    /// Lower end of the 95% interval around `value`, built from the published (rounded) value and
    /// widened by half the rounding step, clamped to the criterion's bounds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ci95_low: Option<Figure>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ci95_high: Option<Figure>,
    /// For a percentage or a mean: the noisy number of trajectories it is taken over, rounded like a
    /// count. Absent for counts (the value is the count).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub count: Option<u64>,
    /// Computed from the reader's own rows alone (a provider's own figures): exact, without noise or
    /// interval, because they are the reader's own data.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub exact: bool,
}

/// One row of a release: a target group, or the total over all target groups (`target_group` absent);
/// in the per-provider table the same rows for one provider.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ReleaseRow {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target_group: Option<Code>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub provider: Option<AgbCode>,
    pub label_nl: String,
    pub label_en: String,
    /// One cell per criterion, in the order of the release's `criteria`.
    pub cells: Vec<ReleaseCell>,
}

/// An exact positive rational, for variances, scales and shares that need not be decimals.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Rational {
    pub numerator: u64,
    pub denominator: u64,
}

/// How one measure of one table was noised.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct MeasureNoise {
    pub name: String,
    /// `municipality`, `region` or `providers`: the table the measure was taken on.
    pub table: String,
    /// The noised values of the measure in every cell (histogram bins, a count, or a centred
    /// fixed-point sum).
    pub values: Vec<String>,
    /// Sensitivity of the measure for one contribution of one child (L2 for the discrete Gaussian, L1
    /// for the discrete Laplace).
    pub sensitivity: u64,
    /// The rho this measure spends.
    pub rho: Rational,
    /// Discrete Gaussian: sigma^2 of every noised value.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub variance: Option<Rational>,
    /// Discrete Laplace: the scale of every noised value.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scale: Option<Rational>,
}

/// The noisy count a cell needs to be published, per denominator and kind of row.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Threshold {
    /// The denominator (`in_zorg`, `beeindigd`, `einde_uitkomst`, `zonder_hulp`, ...).
    pub denominator: String,
    /// `municipality`, `municipality-total`, `region`, `region-total`, `provider`, `provider-total`.
    pub row: String,
    pub min_noisy_count: u64,
}

/// The noise of a round, enough to judge every figure's accuracy and to recompute the privacy spend.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct NoiseDescription {
    /// `discrete-gaussian` or `discrete-laplace`: exact sampling in integer arithmetic (Canonne, Kamath
    /// and Steinke 2020).
    pub mechanism: String,
    /// How many cells of one measure a single child can reach (`max_cells_per_client`).
    pub contributions_per_client: u32,
    pub measures: Vec<MeasureNoise>,
    /// Counts are rounded to a multiple of this after noise.
    pub count_rounding: u32,
    /// Confidence level of `ci95_low`..`ci95_high`, in percent.
    pub interval_confidence_pct: u32,
    /// A cell of fewer than k children is published with probability at most this.
    pub suppression_delta: Decimal,
    pub thresholds: Vec<Threshold>,
}

/// Rho charged to one calendar year of data.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct YearCharge {
    pub data_year: u16,
    pub rho: Decimal,
}

/// The privacy guarantee of a round, carried in every release of it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct PrivacyStatement {
    pub mechanism: String,
    /// Rho of the whole round (every table of it: one measurement).
    pub round_rho: Decimal,
    /// What the round charged to each data year it reads.
    pub charges: Vec<YearCharge>,
    /// The cap per data year: everything ever published that reads one year is together rho-zCDP
    /// with this rho for any one child's data.
    pub rho_per_data_year: Decimal,
    /// Its conversion to (epsilon, delta)-DP.
    pub epsilon_per_data_year: Figure,
    pub delta: Decimal,
    pub guarantee_nl: String,
    pub guarantee_en: String,
}

/// A release: the figures of one scope of one round. The engine fills everything except `id`,
/// `version`, `round`, `created_at` and `frozen`, which belong to the ledger.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Release {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<Uuid>,
    /// The round this release belongs to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub round: Option<Uuid>,
    /// The round's version (a correction is a new version).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<u32>,
    #[serde(
        default,
        with = "time::serde::rfc3339::option",
        skip_serializing_if = "Option::is_none"
    )]
    #[schemars(with = "Option<String>")]
    pub created_at: Option<OffsetDateTime>,
    /// True once the ledger has stored the release: these figures never change.
    #[serde(default)]
    pub frozen: bool,
    /// Code of the region (`wbw`).
    pub region: String,
    pub scope: ReleaseScope,
    pub period: Period,
    /// The month the data were read in.
    pub as_of: Month,
    pub privacy: PrivacyStatement,
    pub policy: ReleasePolicy,
    pub noise: NoiseDescription,
    /// The criteria of the cells of every row, in order.
    pub criteria: Vec<Criterion>,
    pub rows: Vec<ReleaseRow>,
}

impl Release {
    /// Number of cells per status, for metrics and summaries.
    pub fn status_counts(&self) -> Vec<(CellStatus, usize)> {
        CellStatus::ALL
            .iter()
            .map(|s| {
                let n = self
                    .rows
                    .iter()
                    .flat_map(|r| &r.cells)
                    .filter(|c| c.status == *s)
                    .count();
                (*s, n)
            })
            .collect()
    }
}

/// One entry of `GET /v1/releases` without a period: what the caller may read, without the figures.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ReleaseSummary {
    pub id: Uuid,
    pub round: Uuid,
    pub scope: ReleaseScope,
    pub period: Period,
    pub version: u32,
    #[serde(with = "time::serde::rfc3339")]
    #[schemars(with = "String")]
    pub created_at: OffsetDateTime,
}

/// `GET /v1/releases`: the releases the caller may read, newest first.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ReleaseList {
    pub releases: Vec<ReleaseSummary>,
}

/// One side of a provider's scores: rows of one frozen release.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ScoresTable {
    /// The release the rows come from.
    pub release: Uuid,
    pub version: u32,
    pub rows: Vec<ReleaseRow>,
}

/// `GET /v1/providers/me/scores?period=`: a provider's own figures next to the regional benchmark, both
/// from the newest version of the period's round. Reading never publishes or charges anything.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ProviderScores {
    pub provider: AgbCode,
    pub period: Period,
    /// The criteria of the cells of every row, in order.
    pub criteria: Vec<Criterion>,
    /// The provider's own rows: per target group and its total (exact from its own data, with
    /// herhaald beroep noised, since other providers' data decide it). Empty when the provider had no
    /// trajectories in the period.
    pub own: ScoresTable,
    /// The region's rows (every provider together), as the region release publishes them.
    pub benchmark: ScoresTable,
    pub policy: ReleasePolicy,
    pub privacy: PrivacyStatement,
}

/// `POST /v1/rounds`: publish (or correct) the round of a period.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct PublishRound {
    pub period: Period,
}

/// A round as listed: its version, charge and publisher.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RoundSummary {
    pub id: Uuid,
    pub period: Period,
    pub version: u32,
    #[serde(with = "time::serde::rfc3339")]
    #[schemars(with = "String")]
    pub created_at: OffsetDateTime,
    /// Who published it: `region token 7`, `admin token 1`, `calendar`, `cli <operator>`.
    pub published_by: String,
    pub charges: Vec<YearCharge>,
    /// The releases of the round, one per scope.
    pub releases: Vec<RoundRelease>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RoundRelease {
    pub scope: ReleaseScope,
    pub id: Uuid,
}

/// The answer to `POST /v1/rounds`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RoundOutcome {
    /// `published`: a new version was computed and charged. `unchanged`: the data have not changed
    /// since the newest version (or another request published it first): nothing was charged.
    pub outcome: String,
    pub round: RoundSummary,
}

/// `GET /v1/rounds`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RoundList {
    pub rounds: Vec<RoundSummary>,
    /// Calendar entries not yet published: the period and the date from which it will be.
    pub planned: Vec<PlannedRound>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct PlannedRound {
    pub period: Period,
    /// ISO date.
    pub publish_after: String,
}

/// `GET /v1/privacy`: the accountant per data year.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct PrivacyReport {
    pub mechanism: String,
    pub rho_per_data_year: Decimal,
    pub research_reserve: Option<Decimal>,
    pub epsilon_per_data_year: Figure,
    pub delta: Decimal,
    pub guarantee_en: String,
    pub guarantee_nl: String,
    pub years: Vec<DataYearBudget>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct DataYearBudget {
    pub data_year: u16,
    pub cap: Decimal,
    /// What rounds (and, later, research answers) spent of it, one entry per charge.
    pub spent: Vec<Spend>,
    pub spent_total: String,
    /// Cap minus spent (for rounds: minus the research reserve as well).
    pub remaining: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Spend {
    /// `round`.
    pub kind: String,
    /// The round id.
    pub subject: String,
    pub rho: String,
    #[serde(with = "time::serde::rfc3339")]
    #[schemars(with = "String")]
    pub at: OffsetDateTime,
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn periods_cover_their_quarters() {
        let q = |p: &str| -> Vec<String> {
            let p: Period = p.parse().expect("valid");
            p.quarters().iter().map(ToString::to_string).collect()
        };
        assert_eq!(q("2025"), ["2025-Q1", "2025-Q2", "2025-Q3", "2025-Q4"]);
        assert_eq!(q("2025-H1"), ["2025-Q1", "2025-Q2"]);
        assert_eq!(q("2025-H2"), ["2025-Q3", "2025-Q4"]);
        assert_eq!(q("2025-Q3"), ["2025-Q3"]);
    }

    #[test]
    fn periods_parse_and_render() {
        for (text, first, last) in [
            ("2025", "2025-01", "2025-12"),
            ("2025-H1", "2025-01", "2025-06"),
            ("2025-h2", "2025-07", "2025-12"),
            ("2025-Q1", "2025-01", "2025-03"),
            ("2025-Q3", "2025-07", "2025-09"),
            ("2025-q4", "2025-10", "2025-12"),
        ] {
            let p: Period = text.parse().expect("valid period");
            assert_eq!(p.first_month().to_string(), first, "{text}");
            assert_eq!(p.last_month().to_string(), last, "{text}");
            assert_eq!(p.to_string(), text.to_ascii_uppercase());
        }
        for bad in [
            "25", "2025-H3", "2025-Q0", "2025-Q5", "2025-03", "2025-M1", "2025-", "1899",
            "2025-H12", "", "x025",
        ] {
            assert!(bad.parse::<Period>().is_err(), "{bad}");
        }
    }

    #[test]
    fn period_contains_its_months_only() {
        let p: Period = "2025-Q2".parse().expect("valid");
        let m = |s: &str| s.parse::<Month>().expect("valid month");
        assert!(!p.contains(m("2025-03")));
        assert!(p.contains(m("2025-04")));
        assert!(p.contains(m("2025-06")));
        assert!(!p.contains(m("2025-07")));
        assert!(!p.contains(m("2024-05")));
    }

    #[test]
    fn scope_and_status_on_the_wire() {
        assert_eq!(
            serde_json::to_string(&ReleaseScope::Region).expect("json"),
            "\"region\""
        );
        let s: ReleaseScope = "0748".parse().expect("valid");
        assert_eq!(s.to_string(), "GM0748");
        assert!("GM07".parse::<ReleaseScope>().is_err());
        assert_eq!(
            serde_json::to_string(&CellStatus::Unreliable).expect("json"),
            "\"unreliable\""
        );
        assert_eq!(
            "providers".parse::<ReleaseScope>().expect("valid"),
            ReleaseScope::Providers
        );
        for s in CellStatus::ALL {
            let json = serde_json::to_string(s).expect("json");
            assert_eq!(json, format!("\"{}\"", s.as_str()));
        }
    }

    #[test]
    fn figures_are_exact_strings() {
        assert_eq!(Figure::Tenths(634).to_string(), "63.4");
        assert_eq!(Figure::Tenths(70).to_string(), "7.0");
        assert_eq!(Figure::Tenths(-5).to_string(), "-0.5");
        assert_eq!(Figure::Whole(35).to_string(), "35");
        assert_eq!(
            serde_json::to_string(&Figure::Tenths(1000)).expect("json"),
            "\"100.0\""
        );
        assert!("1.25".parse::<Figure>().is_err());
        assert!("1.".parse::<Figure>().is_err());
        assert!(".5".parse::<Figure>().is_err());
        assert_eq!("-0.5".parse::<Figure>().expect("valid"), Figure::Tenths(-5));
    }

    proptest! {
        #[test]
        fn figures_roundtrip(v in -1_000_000i64..1_000_000, whole in proptest::bool::ANY) {
            let f = if whole { Figure::Whole(v) } else { Figure::Tenths(v) };
            prop_assert_eq!(f.to_string().parse::<Figure>().expect("parses"), f);
        }

        #[test]
        fn periods_roundtrip_and_tile_the_year(y in 1900u16..3000, span in 0u8..7) {
            let span = match span {
                0 => PeriodSpan::Year,
                1 | 2 => PeriodSpan::Half(span),
                q => PeriodSpan::Quarter(q - 2),
            };
            let p = Period::new(y, span).expect("valid");
            prop_assert_eq!(p.to_string().parse::<Period>().expect("parses"), p);
            let months = (1..=12u8).filter(|m| p.contains(Month::new(y, *m).expect("valid"))).count();
            prop_assert_eq!(months, usize::from(p.month_count()));
        }
    }
}
