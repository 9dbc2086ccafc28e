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

/// The privacy policy every release of the region follows.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ReleasePolicy {
    /// A cell is published only with at least `k` distinct clients.
    pub k: u32,
    /// ... and at least this many distinct providers.
    pub min_providers: u32,
    /// A cell where one provider holds more than this share (percent) of the clients is suppressed,
    /// unless per-provider reporting is enabled.
    pub dominance_pct: u32,
    /// A client contributes to at most this many cells of one table.
    pub max_cells_per_client: u32,
    /// Whether the region has agreed to report per provider.
    pub per_provider_reporting: bool,
    /// Window for herhaald beroep (3.2), in months after the end of a trajectory.
    pub herhaald_beroep_window_months: u32,
    /// Epsilon charged to each (municipality, period) partition a release reads.
    pub epsilon_per_release: Epsilon,
    /// Lifetime epsilon cap of one partition.
    pub partition_epsilon_cap: Epsilon,
    /// Published counts are rounded to a multiple of this after noise.
    pub count_rounding: u32,
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

/// A privacy parameter as an exact rational `num / den`, written as a decimal such as `0.5`. Budgets are
/// added and compared exactly, never in floating point.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Epsilon {
    num: u64,
    den: u64,
}

impl Epsilon {
    pub fn new(num: u64, den: u64) -> Result<Self, ParseError> {
        if den == 0 || num == 0 {
            return Err(ParseError("epsilon must be a positive number".into()));
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

fn gcd(mut a: u64, mut b: u64) -> u64 {
    while b != 0 {
        (a, b) = (b, a % b);
    }
    a
}

impl FromStr for Epsilon {
    type Err = ParseError;
    fn from_str(s: &str) -> Result<Self, ParseError> {
        let err = || ParseError("epsilon is a positive decimal such as 0.5 or 2".into());
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

impl fmt::Display for Epsilon {
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

impl Serialize for Epsilon {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Epsilon {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = <Cow<'de, str>>::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

impl JsonSchema for Epsilon {
    fn schema_name() -> Cow<'static, str> {
        "Epsilon".into()
    }
    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        json_schema!({
            "type": "string",
            "pattern": "^[0-9]*\\.?[0-9]{0,9}$",
            "description": "privacy parameter epsilon as an exact decimal"
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
        if p.min_providers < 1 {
            return Err("policy.min_providers must be at least 1".into());
        }
        if !(1..=100).contains(&p.dominance_pct) {
            return Err("policy.dominance_pct must be between 1 and 100".into());
        }
        if p.max_cells_per_client < 1 {
            return Err("policy.max_cells_per_client must be at least 1".into());
        }
        if p.count_rounding < 1 {
            return Err("policy.count_rounding must be at least 1".into());
        }
        // The ledger adds budgets as whole nano-epsilon; Epsilon parses at most nine decimals, so
        // this holds for every value written in a region file.
        match (
            p.epsilon_per_release.to_nanos(),
            p.partition_epsilon_cap.to_nanos(),
        ) {
            (Some(e), Some(cap)) if e <= cap => {}
            (Some(_), Some(_)) => {
                return Err(format!(
                    "policy.epsilon_per_release ({}) is above policy.partition_epsilon_cap ({}): \
                     no release could ever be published",
                    p.epsilon_per_release, p.partition_epsilon_cap
                ))
            }
            _ => return Err("policy epsilons must have at most nine decimals".into()),
        }
        if self.ingest.max_batch_records < 1 || self.ingest.max_batch_bytes < 1024 {
            return Err("ingest limits are too small".into());
        }
        Ok(())
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
    fn a_release_epsilon_above_the_cap_is_refused() {
        let text = WBW_TOML.replace(
            "partition_epsilon_cap = \"4\"",
            "partition_epsilon_cap = \"0.25\"",
        );
        let err = RegionConfig::from_toml_str(&text, "x.toml").expect_err("must fail");
        assert!(err.to_string().contains("partition_epsilon_cap"), "{err}");
    }

    #[test]
    fn unknown_fields_are_refused() {
        let text = WBW_TOML.replace("count_rounding = 5", "count_rounding = 5\nk_anon = 3");
        let err = RegionConfig::from_toml_str(&text, "x.toml").expect_err("must fail");
        assert!(err.to_string().contains("k_anon"), "{err}");
    }
}
