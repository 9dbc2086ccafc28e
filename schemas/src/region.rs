//! Region configuration: the codebooks (municipalities, target groups, instruments) and the release policy
//! of one Dutch youth-care region. West-Brabant West ships as the default.

use std::borrow::Cow;
use std::collections::BTreeSet;
use std::fmt;
use std::path::Path;
use std::str::FromStr;

use schemars::{json_schema, JsonSchema, Schema, SchemaGenerator};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::codes::{Code, MunicipalityCode, ParseError};

/// The WBW region file, compiled in so that a fresh installation needs no other file.
pub const WBW_TOML: &str = include_str!("../regions/wbw.toml");

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RegionConfig {
    /// Short code of the region, e.g. `wbw`.
    pub code: String,
    pub name: String,
    /// The regional team that reads region-wide releases.
    #[serde(default)]
    pub region_team: Option<String>,
    pub municipalities: Vec<Municipality>,
    pub target_groups: Vec<TargetGroup>,
    #[serde(default)]
    pub instruments: Vec<Instrument>,
    pub policy: ReleasePolicy,
    pub privacy: PrivacyPolicy,
    /// Rounds the service publishes by itself when due.
    #[serde(default)]
    pub calendar: Vec<CalendarEntry>,
    #[serde(default)]
    pub ingest: IngestLimits,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Municipality {
    pub code: MunicipalityCode,
    pub name: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum TargetGroupKind {
    /// A profile of low-complexity care.
    Profile,
    /// A zorgcombinatie of complex care.
    Complex,
    Other,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct TargetGroup {
    pub code: Code,
    pub kind: TargetGroupKind,
    /// The main group it belongs to in generalisations (research extracts); its kind when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub main_group: Option<String>,
    pub label_nl: String,
    pub label_en: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Instrument {
    pub code: Code,
    pub name: String,
    /// Test-retest reliability r of the scale, used in the reliable change index. Configuration, not a
    /// released value.
    pub reliability: f64,
}

/// The release rules every round of the region follows (DESIGN section 7): who may appear in a table,
/// how much one child may contribute, and how figures are rounded.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ReleasePolicy {
    /// A cell is published only when its noisy count of children clears the threshold that publishes a
    /// cell of fewer than `k` children with probability at most `privacy.suppression_delta`.
    pub k: u32,
    /// A child contributes to at most this many cells of one measure (surplus dropped in a keyed order).
    pub max_cells_per_client: u32,
    /// Window for herhaald beroep (3.2), in months after the end of a trajectory.
    pub herhaald_beroep_window_months: u32,
    /// Published counts are rounded to a multiple of this after noise.
    pub count_rounding: u32,
}

/// The noise mechanism of a region.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub enum Mechanism {
    /// Exact discrete Gaussian noise (Canonne, Kamath and Steinke 2020), accounted in rho-zCDP.
    DiscreteGaussian,
    /// Exact discrete Laplace noise, pure epsilon-DP; a round of epsilon is charged as rho = epsilon^2 / 2.
    DiscreteLaplace,
}

impl Mechanism {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::DiscreteGaussian => "discrete-gaussian",
            Self::DiscreteLaplace => "discrete-laplace",
        }
    }
}

/// The privacy budget of the region and how a round spends it (DESIGN section 7, "Accountant").
/// Every rho is an exact decimal; budgets are added and compared in integer nano-units.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct PrivacyPolicy {
    pub mechanism: Mechanism,
    /// Cap per calendar year of data: everything ever published that reads year Y is together
    /// rho-zCDP with this rho for any one child's data.
    pub rho_per_data_year: Rho,
    /// Part of each data year's cap that rounds may not spend: kept for research access.
    #[serde(default)]
    pub research_reserve: Option<Rho>,
    /// Delta of the (epsilon, delta) conversion stated with every release.
    pub delta: Decimal,
    /// Probability bound of publishing a cell of fewer than `policy.k` children.
    pub suppression_delta: Decimal,
    /// A period can be published only when this many whole months have passed since its last month
    /// (uploads and corrections come in late; at least the herhaald beroep window).
    pub data_deadline_months: u32,
    /// Rho of a round of a year, a half-year and a quarter; a span without a rho cannot be published.
    pub year_round: Rho,
    #[serde(default)]
    pub half_year_round: Option<Rho>,
    #[serde(default)]
    pub quarter_round: Option<Rho>,
    /// Rho of a correction (a new version of a round that exists), when below the span's rho: what
    /// the rest of a data year allows after its planned rounds.
    #[serde(default)]
    pub correction_round: Option<Rho>,
    /// How a round's rho is split over its three tables (must add up to 1).
    pub levels: LevelShares,
    /// How each table's rho is split over the measures, by weight (any positive numbers).
    pub weights: MeasureWeights,
    /// A published figure whose 95% interval is wider than this is withheld as `unreliable`.
    pub max_interval: MaxInterval,
}

/// The share of a round's rho spent on each table.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct LevelShares {
    /// The municipality x target group table (every municipality's release).
    pub municipality: Decimal,
    /// The region x target group table, reconciled with the municipal one.
    pub region: Decimal,
    /// Herhaald beroep per provider x target group (the rest of a provider's own figures are its own
    /// data and carry no noise).
    pub providers: Decimal,
}

/// Relative weights of the measures within a table.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct MeasureWeights {
    pub in_zorg: Decimal,
    pub gestart: Decimal,
    /// The end-reason histogram: beeindigd, volgens plan and uitval (and herhaald beroep's denominator).
    pub einde: Decimal,
    pub herhaald_beroep: Decimal,
    pub zonder_hulp: Decimal,
    pub probleemafname: Decimal,
    pub tevredenheid_aantal: Decimal,
    pub tevredenheid_som: Decimal,
    pub doelrealisatie_aantal: Decimal,
    pub doelrealisatie_som: Decimal,
}

/// Widest 95% interval still published, per kind of figure.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct MaxInterval {
    /// Percentage points, for percentages (and doelrealisatie, a mean percentage).
    pub percentage: Decimal,
    /// Grade points on the 1-10 scale (tevredenheid).
    pub grade: Decimal,
}

/// A round the service publishes by itself: `period` once `publish_after` has come (exactly once
/// across replicas), with `rho` (default: the span's round rho).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct CalendarEntry {
    pub period: crate::release::Period,
    /// ISO date (`2026-07-01`), UTC.
    #[serde(with = "iso_date")]
    #[schemars(with = "String")]
    pub publish_after: time::Date,
    #[serde(default)]
    pub rho: Option<Rho>,
}

mod iso_date {
    use serde::{Deserialize, Deserializer, Serializer};

    const FORMAT: &[time::format_description::BorrowedFormatItem<'static>] =
        time::macros::format_description!("[year]-[month]-[day]");

    pub fn serialize<S: Serializer>(d: &time::Date, s: S) -> Result<S::Ok, S::Error> {
        let text = d.format(FORMAT).map_err(serde::ser::Error::custom)?;
        s.serialize_str(&text)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<time::Date, D::Error> {
        let text = String::deserialize(d)?;
        time::Date::parse(&text, FORMAT).map_err(|_| {
            serde::de::Error::custom(format!("`{text}` is not a date like 2026-07-01"))
        })
    }
}

/// Limits of one sealed batch.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct IngestLimits {
    pub max_batch_records: u32,
    pub max_batch_bytes: u64,
}

impl Default for IngestLimits {
    fn default() -> Self {
        Self {
            max_batch_records: 50_000,
            max_batch_bytes: 32 * 1024 * 1024,
        }
    }
}

/// An exact positive rational `num / den`, written as a decimal such as `0.5` (at most nine decimals):
/// privacy parameters, shares and weights. Budgets are added and compared exactly, never in floating
/// point.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Decimal {
    num: u64,
    den: u64,
}

impl Decimal {
    pub fn new(num: u64, den: u64) -> Result<Self, ParseError> {
        if den == 0 || num == 0 {
            return Err(ParseError("the number must be positive".into()));
        }
        let g = gcd(num, den);
        Ok(Self {
            num: num / g,
            den: den / g,
        })
    }
    pub fn numerator(self) -> u64 {
        self.num
    }
    pub fn denominator(self) -> u64 {
        self.den
    }

    /// Epsilon in whole nano-units, the integer the budget ledger adds and compares. `None` when it
    /// is not a whole number of nano-units (a decimal of more than nine places, or a third) or too big.
    pub fn to_nanos(self) -> Option<i64> {
        let scaled = u128::from(self.num) * 1_000_000_000;
        let den = u128::from(self.den);
        if scaled % den != 0 {
            return None;
        }
        i64::try_from(scaled / den).ok()
    }

    /// The epsilon of a whole number of nano-units; `None` for zero or less.
    pub fn from_nanos(nanos: i64) -> Option<Self> {
        let num = u64::try_from(nanos).ok()?;
        Self::new(num, 1_000_000_000).ok()
    }
}

/// A privacy-loss parameter epsilon (pure DP).
pub type Epsilon = Decimal;
/// A zero-concentrated DP parameter rho.
pub type Rho = Decimal;

impl Decimal {
    /// The value as the exact fraction (numerator, denominator), in lowest terms.
    pub fn fraction(self) -> (u64, u64) {
        (self.num, self.den)
    }

    /// An approximation for arithmetic on public parameters (interval widths, statements); never for
    /// a value that is released or charged.
    pub fn approx(self) -> f64 {
        self.num as f64 / self.den as f64
    }
}

fn gcd(mut a: u64, mut b: u64) -> u64 {
    while b != 0 {
        (a, b) = (b, a % b);
    }
    a
}

impl FromStr for Decimal {
    type Err = ParseError;
    fn from_str(s: &str) -> Result<Self, ParseError> {
        let err = || ParseError("expected a positive decimal such as 0.5 or 2".into());
        let t = s.trim();
        let (int, frac) = t.split_once('.').unwrap_or((t, ""));
        if int.is_empty() && frac.is_empty()
            || frac.len() > 9
            || !int.bytes().chain(frac.bytes()).all(|b| b.is_ascii_digit())
        {
            return Err(err());
        }
        let den = 10u64.pow(frac.len() as u32);
        let int: u64 = if int.is_empty() {
            0
        } else {
            int.parse().map_err(|_| err())?
        };
        let frac: u64 = if frac.is_empty() {
            0
        } else {
            frac.parse().map_err(|_| err())?
        };
        let num = int
            .checked_mul(den)
            .and_then(|v| v.checked_add(frac))
            .ok_or_else(err)?;
        Self::new(num, den)
    }
}

impl fmt::Display for Decimal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let int = self.num / self.den;
        let mut rem = self.num % self.den;
        if rem == 0 {
            return write!(f, "{int}");
        }
        write!(f, "{int}.")?;
        // Terminating decimals print exactly; others are cut at 9 digits.
        for _ in 0..9 {
            if rem == 0 {
                break;
            }
            rem *= 10;
            write!(f, "{}", rem / self.den)?;
            rem %= self.den;
        }
        Ok(())
    }
}

impl Serialize for Decimal {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Decimal {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = <Cow<'de, str>>::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

impl JsonSchema for Decimal {
    fn schema_name() -> Cow<'static, str> {
        "Decimal".into()
    }
    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        json_schema!({
            "type": "string",
            "pattern": "^[0-9]*\\.?[0-9]{0,9}$",
            "description": "an exact positive decimal (privacy parameter, share or weight)"
        })
    }
}

/// Why a region file was refused.
#[derive(Debug, thiserror::Error)]
pub enum RegionError {
    #[error("cannot read region file {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("region file {path} is not valid: {message}")]
    Parse { path: String, message: String },
    #[error("region file {path}: {message}")]
    Invalid { path: String, message: String },
}

impl RegionConfig {
    /// The shipped West-Brabant West configuration.
    pub fn wbw() -> Self {
        Self::from_toml_str(WBW_TOML, "<built-in wbw.toml>")
            .unwrap_or_else(|e| panic!("the built-in region file is broken: {e}"))
    }

    pub fn from_file(path: &Path) -> Result<Self, RegionError> {
        let text = std::fs::read_to_string(path).map_err(|source| RegionError::Read {
            path: path.display().to_string(),
            source,
        })?;
        Self::from_toml_str(&text, &path.display().to_string())
    }

    pub fn from_toml_str(text: &str, path: &str) -> Result<Self, RegionError> {
        let cfg: RegionConfig = toml::from_str(text).map_err(|e| RegionError::Parse {
            path: path.to_string(),
            message: e.to_string(),
        })?;
        cfg.check().map_err(|message| RegionError::Invalid {
            path: path.to_string(),
            message,
        })?;
        Ok(cfg)
    }

    fn check(&self) -> Result<(), String> {
        if self.municipalities.is_empty() {
            return Err("a region needs at least one municipality".into());
        }
        if self.target_groups.is_empty() {
            return Err("a region needs at least one target group".into());
        }
        let mut seen = BTreeSet::new();
        for m in &self.municipalities {
            if !seen.insert(m.code.to_string()) {
                return Err(format!("municipality {} is listed twice", m.code));
            }
        }
        let mut seen = BTreeSet::new();
        for t in &self.target_groups {
            if !seen.insert(t.code.clone()) {
                return Err(format!("target group {} is listed twice", t.code));
            }
        }
        for i in &self.instruments {
            if !(0.0..1.0).contains(&i.reliability) {
                return Err(format!(
                    "instrument {}: reliability must be at least 0 and below 1",
                    i.code
                ));
            }
        }
        let p = &self.policy;
        if p.k < 2 {
            return Err("policy.k must be at least 2".into());
        }
        if p.max_cells_per_client < 1 {
            return Err("policy.max_cells_per_client must be at least 1".into());
        }
        if p.count_rounding < 1 {
            return Err("policy.count_rounding must be at least 1".into());
        }
        self.check_privacy()?;
        if self.ingest.max_batch_records < 1 || self.ingest.max_batch_bytes < 1024 {
            return Err("ingest limits are too small".into());
        }
        Ok(())
    }

    fn check_privacy(&self) -> Result<(), String> {
        let q = &self.privacy;
        let nanos = |d: Decimal, what: &str| {
            d.to_nanos()
                .ok_or_else(|| format!("privacy.{what} must have at most nine decimals"))
        };
        let cap = nanos(q.rho_per_data_year, "rho_per_data_year")?;
        let reserve = match q.research_reserve {
            Some(r) => nanos(r, "research_reserve")?,
            None => 0,
        };
        if reserve >= cap {
            return Err(format!(
                "privacy.research_reserve ({}) leaves nothing of privacy.rho_per_data_year ({}) for rounds",
                q.research_reserve.map(|r| r.to_string()).unwrap_or_default(),
                q.rho_per_data_year
            ));
        }
        for (what, rho) in [
            ("year_round", Some(q.year_round)),
            ("half_year_round", q.half_year_round),
            ("quarter_round", q.quarter_round),
            ("correction_round", q.correction_round),
        ] {
            if let Some(rho) = rho {
                if nanos(rho, what)? > cap - reserve {
                    return Err(format!(
                        "privacy.{what} ({rho}) is above what a data year allows rounds \
                         (rho_per_data_year minus research_reserve): no such round could be published"
                    ));
                }
            }
        }
        for (what, d) in [
            ("delta", q.delta),
            ("suppression_delta", q.suppression_delta),
        ] {
            let (num, den) = d.fraction();
            if num >= den {
                return Err(format!("privacy.{what} must be below 1"));
            }
        }
        if q.data_deadline_months < self.policy.herhaald_beroep_window_months {
            return Err(format!(
                "privacy.data_deadline_months ({}) must be at least policy.herhaald_beroep_window_months \
                 ({}): a round is published only when herhaald beroep is final",
                q.data_deadline_months, self.policy.herhaald_beroep_window_months
            ));
        }
        let l = &q.levels;
        let total = [l.municipality, l.region, l.providers]
            .iter()
            .map(|d| nanos(*d, "levels"))
            .sum::<Result<i64, String>>()?;
        if total != 1_000_000_000 {
            return Err("privacy.levels (municipality, region, providers) must add up to 1".into());
        }
        for w in [
            q.weights.in_zorg,
            q.weights.gestart,
            q.weights.einde,
            q.weights.herhaald_beroep,
            q.weights.zonder_hulp,
            q.weights.probleemafname,
            q.weights.tevredenheid_aantal,
            q.weights.tevredenheid_som,
            q.weights.doelrealisatie_aantal,
            q.weights.doelrealisatie_som,
        ] {
            nanos(w, "weights")?;
        }
        let mut seen = BTreeSet::new();
        for c in &self.calendar {
            if !seen.insert(c.period) {
                return Err(format!("calendar: period {} is listed twice", c.period));
            }
            if let Some(rho) = c.rho {
                if nanos(rho, "calendar rho")? > cap - reserve {
                    return Err(format!(
                        "calendar {}: rho {rho} is above what a data year allows rounds",
                        c.period
                    ));
                }
            }
        }
        Ok(())
    }

    /// The rho of a round of `period` (the calendar's, else the span's), `None` when the region
    /// publishes no rounds of that span.
    pub fn round_rho(&self, period: crate::release::Period) -> Option<Rho> {
        use crate::release::PeriodSpan;
        if let Some(c) = self.calendar.iter().find(|c| c.period == period) {
            if c.rho.is_some() {
                return c.rho;
            }
        }
        match period.span() {
            PeriodSpan::Year => Some(self.privacy.year_round),
            PeriodSpan::Half(_) => self.privacy.half_year_round,
            PeriodSpan::Quarter(_) => self.privacy.quarter_round,
        }
    }

    /// What rounds may spend of one data year, in nano-rho: the cap minus the research reserve.
    pub fn round_cap_nanos(&self) -> i64 {
        let q = &self.privacy;
        let cap = q.rho_per_data_year.to_nanos().unwrap_or(0);
        cap - q.research_reserve.and_then(|r| r.to_nanos()).unwrap_or(0)
    }

    pub fn municipality(&self, code: MunicipalityCode) -> Option<&Municipality> {
        self.municipalities.iter().find(|m| m.code == code)
    }

    pub fn target_group(&self, code: &Code) -> Option<&TargetGroup> {
        self.target_groups.iter().find(|t| &t.code == code)
    }

    pub fn instrument(&self, code: &Code) -> Option<&Instrument> {
        self.instruments.iter().find(|i| &i.code == code)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wbw_has_the_nine_municipalities() {
        let r = RegionConfig::wbw();
        let codes: Vec<String> = r
            .municipalities
            .iter()
            .map(|m| m.code.to_string())
            .collect();
        assert_eq!(
            codes,
            [
                "GM0748", "GM0777", "GM1655", "GM1709", "GM1674", "GM0840", "GM0851", "GM0873",
                "GM0879"
            ]
        );
        assert_eq!(r.target_groups.len(), 16);
        assert_eq!(r.policy.k, 10);
    }

    #[test]
    fn epsilon_is_exact() {
        let e: Epsilon = "0.5".parse().expect("valid");
        assert_eq!((e.numerator(), e.denominator()), (1, 2));
        assert_eq!(e.to_string(), "0.5");
        let e: Epsilon = "2".parse().expect("valid");
        assert_eq!(e.to_string(), "2");
        assert!("0".parse::<Epsilon>().is_err());
        assert!("-1".parse::<Epsilon>().is_err());
        assert!("1e3".parse::<Epsilon>().is_err());
        assert_eq!(
            "0.125".parse::<Epsilon>().expect("valid").to_string(),
            "0.125"
        );
    }

    #[test]
    fn epsilon_nanos_round_trip_exactly() {
        let e: Epsilon = "0.5".parse().expect("valid");
        assert_eq!(e.to_nanos(), Some(500_000_000));
        assert_eq!(Epsilon::from_nanos(500_000_000), Some(e));
        let tiny: Epsilon = "0.000000001".parse().expect("valid");
        assert_eq!(tiny.to_nanos(), Some(1));
        assert_eq!(Epsilon::new(1, 3).expect("valid").to_nanos(), None);
        assert_eq!(Epsilon::from_nanos(0), None);
        assert_eq!(Epsilon::from_nanos(-5), None);
        assert_eq!(
            Epsilon::from_nanos(4_500_000_000).map(|e| e.to_string()),
            Some("4.5".into())
        );
    }

    #[test]
    fn a_round_above_the_cap_is_refused() {
        let text = WBW_TOML.replace("year_round = \"0.6\"", "year_round = \"1.1\"");
        let err = RegionConfig::from_toml_str(&text, "x.toml").expect_err("must fail");
        assert!(err.to_string().contains("year_round"), "{err}");
    }

    #[test]
    fn a_deadline_before_the_window_closes_is_refused() {
        let text = WBW_TOML.replace("data_deadline_months = 6", "data_deadline_months = 3");
        let err = RegionConfig::from_toml_str(&text, "x.toml").expect_err("must fail");
        assert!(err.to_string().contains("data_deadline_months"), "{err}");
    }

    #[test]
    fn levels_must_add_up_to_one() {
        let text = WBW_TOML.replace("providers = \"0.05\"", "providers = \"0.5\"");
        let err = RegionConfig::from_toml_str(&text, "x.toml").expect_err("must fail");
        assert!(err.to_string().contains("levels"), "{err}");
    }

    #[test]
    fn unknown_fields_are_refused() {
        let text = WBW_TOML.replace("count_rounding = 5", "count_rounding = 5\nk_anon = 3");
        let err = RegionConfig::from_toml_str(&text, "x.toml").expect_err("must fail");
        assert!(err.to_string().contains("k_anon"), "{err}");
    }
}
