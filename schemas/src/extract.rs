//! Anonymised research extracts (issue 12, "Extracts"): what a project asks for ([`ExtractSpec`]) and the
//! risk report that goes with every extract ([`RiskReport`]). An extract leaves the differential privacy
//! guarantee behind: it is k-anonymous and l-diverse, produced only after the operator's approval.

use std::borrow::Cow;
use std::fmt;
use std::str::FromStr;

use schemars::{json_schema, JsonSchema, Schema, SchemaGenerator};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::codes::ParseError;

impl ParseError {
    fn from_msg(msg: impl Into<String>) -> Self {
        Self(msg.into())
    }
}

/// A column of the trajectory table an extract can hold. Pseudonyms and provider codes are not columns:
/// every extract carries its own random client id instead. Declared in the order of the record schema,
/// which is also the column order of an extract's CSV.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize, JsonSchema,
)]
#[serde(rename_all = "snake_case")]
pub enum ExtractColumn {
    Municipality,
    TargetGroup,
    Intensity,
    ProductCategory,
    StartMonth,
    EndMonth,
    AgeBand,
    EndReason,
    Satisfaction,
    Respondent,
    CarryOnWithoutHelp,
    ProblemTPre,
    ProblemTPost,
    Instrument,
    GoalsAgreed,
    GoalsAchieved,
}

impl ExtractColumn {
    pub const ALL: [ExtractColumn; 16] = [
        Self::Municipality,
        Self::TargetGroup,
        Self::Intensity,
        Self::ProductCategory,
        Self::StartMonth,
        Self::EndMonth,
        Self::AgeBand,
        Self::EndReason,
        Self::Satisfaction,
        Self::Respondent,
        Self::CarryOnWithoutHelp,
        Self::ProblemTPre,
        Self::ProblemTPost,
        Self::Instrument,
        Self::GoalsAgreed,
        Self::GoalsAchieved,
    ];

    /// The column name: the CSV header and the name in requests.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Municipality => "municipality",
            Self::TargetGroup => "target_group",
            Self::Intensity => "intensity",
            Self::ProductCategory => "product_category",
            Self::StartMonth => "start_month",
            Self::EndMonth => "end_month",
            Self::AgeBand => "age_band",
            Self::EndReason => "end_reason",
            Self::Satisfaction => "satisfaction",
            Self::Respondent => "respondent",
            Self::CarryOnWithoutHelp => "carry_on_without_help",
            Self::ProblemTPre => "problem_t_pre",
            Self::ProblemTPost => "problem_t_post",
            Self::Instrument => "instrument",
            Self::GoalsAgreed => "goals_agreed",
            Self::GoalsAchieved => "goals_achieved",
        }
    }

    /// Whether the column has a generalisation hierarchy, and so can be a quasi-identifier. The outcome
    /// fields have none: they are what a study measures, asked for as the sensitive column or as is.
    pub fn has_hierarchy(self) -> bool {
        matches!(
            self,
            Self::Municipality
                | Self::TargetGroup
                | Self::Intensity
                | Self::ProductCategory
                | Self::StartMonth
                | Self::EndMonth
                | Self::AgeBand
                | Self::EndReason
        )
    }
}

impl fmt::Display for ExtractColumn {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for ExtractColumn {
    type Err = ParseError;
    fn from_str(s: &str) -> Result<Self, ParseError> {
        let t = s.trim();
        Self::ALL
            .into_iter()
            .find(|c| c.as_str() == t)
            .ok_or_else(|| ParseError::from_msg(format!("{t} is not a column of an extract")))
    }
}

/// A share between 0 and 1 with at most six decimals, exact (parts per million). Written `"0.05"`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Share(u32);

impl Share {
    pub const ZERO: Share = Share(0);
    pub const ONE: Share = Share(1_000_000);

    pub fn from_ppm(ppm: u32) -> Result<Self, ParseError> {
        if ppm > 1_000_000 {
            return Err(ParseError::from_msg("a share is at most 1"));
        }
        Ok(Self(ppm))
    }

    /// Parts per million.
    pub fn ppm(self) -> u32 {
        self.0
    }

    /// The largest whole number of `n` that is at most this share of it.
    pub fn of(self, n: u64) -> u64 {
        (u128::from(n) * u128::from(self.0) / 1_000_000) as u64
    }

    /// An approximation, for statements only.
    pub fn approx(self) -> f64 {
        f64::from(self.0) / 1e6
    }
}

impl FromStr for Share {
    type Err = ParseError;
    fn from_str(s: &str) -> Result<Self, ParseError> {
        let err = || ParseError::from_msg("a share is a decimal from 0 to 1 such as 0.05");
        let t = s.trim();
        let (int, frac) = t.split_once('.').unwrap_or((t, ""));
        if int.is_empty() && frac.is_empty()
            || int.len() > 1
            || frac.len() > 6
            || !int.bytes().chain(frac.bytes()).all(|b| b.is_ascii_digit())
        {
            return Err(err());
        }
        let int: u32 = if int.is_empty() {
            0
        } else {
            int.parse().map_err(|_| err())?
        };
        let frac_ppm: u32 = format!("{frac:0<6}").parse().map_err(|_| err())?;
        Self::from_ppm(int * 1_000_000 + frac_ppm).map_err(|_| err())
    }
}

impl fmt::Display for Share {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (int, frac) = (self.0 / 1_000_000, self.0 % 1_000_000);
        if frac == 0 {
            return write!(f, "{int}");
        }
        let digits = format!("{frac:06}");
        write!(f, "{int}.{}", digits.trim_end_matches('0'))
    }
}

impl Serialize for Share {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Share {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = <Cow<'de, str>>::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

impl JsonSchema for Share {
    fn schema_name() -> Cow<'static, str> {
        "Share".into()
    }
    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        json_schema!({
            "type": "string",
            "pattern": "^(0?\\.[0-9]{1,6}|[01](\\.[0-9]{0,6})?)$",
            "description": "a share from 0 to 1 with at most six decimals"
        })
    }
}

/// What a research project asks for: the columns and the privacy model the extract must meet.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ExtractSpec {
    /// Columns an attacker may know from elsewhere; generalised along their hierarchies until every
    /// equivalence class (records equal on all of them) holds at least `k` children.
    pub quasi_identifiers: Vec<ExtractColumn>,
    /// The outcome that must be distinct-l-diverse in every equivalence class.
    pub sensitive: ExtractColumn,
    /// Further columns, given as they are (insensitive attributes).
    #[serde(default)]
    pub other_columns: Vec<ExtractColumn>,
    /// Fewest children in an equivalence class (the privacy unit is the child, not the trajectory).
    pub k: u32,
    /// Fewest distinct values of the sensitive column in an equivalence class (a missing value counts
    /// as one value).
    pub l: u32,
    /// Largest share of the records that may be left out (records of the classes that fail k or l).
    pub max_suppressed: Share,
    /// A record is "at risk" when its prosecutor re-identification risk is above this share.
    pub risk_threshold: Share,
    /// Whether the extract has the `client` column (a random id per child, the same on all of that
    /// child's trajectories). k holds per equivalence class; someone who knows several trajectories of
    /// one child can still intersect the ids of their classes, so a study that needs no linkage of a
    /// child's trajectories is safer without it.
    #[serde(default = "yes")]
    pub client_ids: bool,
}

fn yes() -> bool {
    true
}

/// How far one quasi-identifier was generalised.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct Generalisation {
    pub column: ExtractColumn,
    /// 0 is the value as stored; the hierarchy's last level is one value for every record.
    pub level: u32,
    /// The level's name, such as `quarter` or `region`.
    pub level_name: String,
    /// Number of levels of the column's hierarchy, the original included.
    pub levels: u32,
}

/// Re-identification risk under the prosecutor model: the attacker knows the target is in the extract
/// and knows its quasi-identifiers; a record's risk is 1 / the number of children in its class.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct ProsecutorRisk {
    /// The highest risk of any record (1 / the smallest class, in children).
    pub highest: f64,
    /// The mean risk over the records of the extract.
    pub average: f64,
    pub threshold: Share,
    /// Records whose risk is above the threshold.
    pub records_above_threshold: u64,
    /// Their share of the records of the extract.
    pub share_above_threshold: f64,
}

/// Information loss of the extract by the loss metric (LM, Iyengar 2002; ARX's "Loss"): per record and
/// quasi-identifier, (leaves under the released value - 1) / (leaves of the hierarchy - 1); a suppressed
/// record loses 1; averaged over records and quasi-identifiers. 0 is the data as stored, 1 is nothing left.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct InformationLoss {
    /// Always `loss-metric`.
    pub measure: String,
    pub value: f64,
    /// The part due to generalisation alone (the records released), the rest is suppression.
    pub generalisation: f64,
}

/// How the generalisation lattice was searched.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct SearchStats {
    /// Nodes of the lattice (combinations of levels).
    pub lattice_nodes: u64,
    /// Nodes whose equivalence classes were computed; the others were pruned by the loss bound.
    pub nodes_evaluated: u64,
}

/// The risk report of one extract: what was asked, what was reached, what it cost.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct RiskReport {
    pub requested: ExtractSpec,
    /// Smallest number of children in an equivalence class of the extract (0 when it is empty).
    pub k: u32,
    /// Smallest number of distinct sensitive values in an equivalence class (0 when it is empty).
    pub l: u32,
    /// Smallest number of records (trajectories) in an equivalence class.
    pub min_class_records: u32,
    pub equivalence_classes: u64,
    pub records_in: u64,
    pub records_out: u64,
    pub records_suppressed: u64,
    pub share_suppressed: f64,
    /// Distinct children in the extract (each with its own random id).
    pub children_out: u64,
    pub generalisation: Vec<Generalisation>,
    pub prosecutor_risk: ProsecutorRisk,
    pub information_loss: InformationLoss,
    pub search: SearchStats,
    /// Plain statement: the extract is not covered by differential privacy.
    pub guarantee: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shares_parse_exactly() {
        let s: Share = "0.05".parse().expect("valid");
        assert_eq!(s.ppm(), 50_000);
        assert_eq!(s.to_string(), "0.05");
        assert_eq!("0".parse::<Share>().expect("valid"), Share::ZERO);
        assert_eq!("1".parse::<Share>().expect("valid"), Share::ONE);
        assert_eq!(".5".parse::<Share>().expect("valid").to_string(), "0.5");
        assert!("1.1".parse::<Share>().is_err());
        assert!("2".parse::<Share>().is_err());
        assert!("0.0000001".parse::<Share>().is_err());
        assert!("-0.1".parse::<Share>().is_err());
        assert_eq!(s.of(99), 4);
        assert_eq!(s.of(100), 5);
    }

    #[test]
    fn columns_round_trip_by_name() {
        for c in ExtractColumn::ALL {
            assert_eq!(c.as_str().parse::<ExtractColumn>().expect("valid"), c);
            let json = serde_json::to_string(&c).expect("serialises");
            assert_eq!(json, format!("\"{}\"", c.as_str()));
        }
        assert!("client".parse::<ExtractColumn>().is_err());
    }
}
