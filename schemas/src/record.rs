//! The trajectory record as it leaves the provider's machine (schema v1): pseudonymised, coarsened to
//! months and age bands, and checked against the region's codebooks by the SDK and again by the service.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::codes::{
    AgeBand, CarryOn, Code, EndReason, GoalCount, Intensity, Month, MunicipalityCode,
    ProductCategory, Pseudonym, Respondent, Satisfaction, TScore,
};
use crate::region::RegionConfig;

/// The record schema version this crate speaks.
pub const RECORD_SCHEMA_VERSION: u16 = 1;

/// Defines [`WireRecord`] and [`ExportedRecord`] from one list of fields: the export is the record as
/// the provider sent it, minus the client pseudonym, and the two must never drift apart.
macro_rules! trajectory_records {
    ($($(#[$attr:meta])* pub $field:ident: $ty:ty,)*) => {
        /// One trajectory, as sealed into a batch. Holds no BSN, no trajectory number, no birth date and no
        /// exact date. `Debug` shows no pseudonym (see [`Pseudonym`]).
        #[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
        #[serde(deny_unknown_fields)]
        pub struct WireRecord {
            /// Stage-1 client pseudonym: HMAC-SHA256(regional key, normalised BSN).
            pub client: Pseudonym,
            $($(#[$attr])* pub $field: $ty,)*
        }

        /// One stored trajectory as `GET /v1/export` gives it back to its provider: what the provider sent,
        /// without the client. The service keeps only its own second-stage client pseudonym, and handing
        /// that out would let a holder of the regional key build a BSN -> stored pseudonym dictionary, which
        /// is what the second stage exists to prevent.
        #[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
        #[serde(deny_unknown_fields)]
        pub struct ExportedRecord {
            $($(#[$attr])* pub $field: $ty,)*
        }

        impl From<&WireRecord> for ExportedRecord {
            fn from(r: &WireRecord) -> Self {
                Self { $($field: r.$field.clone(),)* }
            }
        }
    };
}

trajectory_records! {
    /// Trajectory pseudonym: HMAC-SHA256(provider's trajectory key, trajectory id).
    pub trajectory: Pseudonym,
    pub municipality: MunicipalityCode,
    pub target_group: Code,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub intensity: Option<Intensity>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub product_category: Option<ProductCategory>,
    pub start_month: Month,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub end_month: Option<Month>,
    pub age_band: AgeBand,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub end_reason: Option<EndReason>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub satisfaction: Option<Satisfaction>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub respondent: Option<Respondent>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub carry_on_without_help: Option<CarryOn>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub problem_t_pre: Option<TScore>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub problem_t_post: Option<TScore>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub instrument: Option<Code>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub goals_agreed: Option<GoalCount>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub goals_achieved: Option<GoalCount>,
}

/// One broken rule of one record: the field (the CSV column name) and why.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct FieldIssue {
    pub field: String,
    pub reason: String,
}

impl FieldIssue {
    pub fn new(field: &str, reason: impl Into<String>) -> Self {
        Self {
            field: field.to_string(),
            reason: reason.into(),
        }
    }
}

impl WireRecord {
    /// Checks the rules that span fields and the region's codebooks. Field formats are already guaranteed
    /// by the types. Returns every issue, not just the first.
    pub fn check(&self, region: &RegionConfig) -> Vec<FieldIssue> {
        let mut issues = Vec::new();
        if region.municipality(self.municipality).is_none() {
            issues.push(FieldIssue::new(
                "municipality",
                format!(
                    "{} is not a municipality of region {}",
                    self.municipality, region.code
                ),
            ));
        }
        if region.target_group(&self.target_group).is_none() {
            issues.push(FieldIssue::new(
                "target_group",
                format!(
                    "{} is not a target group of region {}",
                    self.target_group, region.code
                ),
            ));
        }
        match (self.end_month, self.end_reason) {
            (Some(end), _) if end < self.start_month => issues.push(FieldIssue::new(
                "end_date",
                "the trajectory ends before it starts",
            )),
            (Some(_), None) => issues.push(FieldIssue::new(
                "end_reason",
                "an ended trajectory needs an end reason",
            )),
            (None, Some(_)) => issues.push(FieldIssue::new(
                "end_reason",
                "a running trajectory (no end date) cannot have an end reason",
            )),
            _ => {}
        }
        match (self.satisfaction, self.respondent) {
            (Some(_), None) => issues.push(FieldIssue::new(
                "respondent",
                "a satisfaction grade needs a respondent (youth, parent or both)",
            )),
            (None, Some(_)) => issues.push(FieldIssue::new(
                "respondent",
                "a respondent is given without a satisfaction grade",
            )),
            _ => {}
        }
        let has_scores = self.problem_t_pre.is_some() || self.problem_t_post.is_some();
        match &self.instrument {
            None if has_scores => issues.push(FieldIssue::new(
                "instrument",
                "T-scores need the instrument they were measured with",
            )),
            Some(code) if region.instrument(code).is_none() => issues.push(FieldIssue::new(
                "instrument",
                format!("{code} is not an instrument of region {}", region.code),
            )),
            _ => {}
        }
        if self.problem_t_post.is_some() && self.problem_t_pre.is_none() {
            issues.push(FieldIssue::new(
                "problem_t_pre",
                "a post-measurement needs a pre-measurement",
            ));
        }
        match (self.goals_agreed, self.goals_achieved) {
            (None, Some(_)) => issues.push(FieldIssue::new(
                "goals_agreed",
                "goals achieved are given without goals agreed",
            )),
            (Some(a), Some(b)) if b > a => issues.push(FieldIssue::new(
                "goals_achieved",
                format!(
                    "more goals achieved ({}) than agreed ({})",
                    b.get(),
                    a.get()
                ),
            )),
            _ => {}
        }
        issues
    }
}

/// The plaintext inside a sealed batch.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct BatchPayload {
    pub records: Vec<WireRecord>,
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    pub fn sample_record() -> WireRecord {
        WireRecord {
            client: Pseudonym([1; 32]),
            trajectory: Pseudonym([2; 32]),
            municipality: "GM0748".parse().expect("valid"),
            target_group: "P01".parse().expect("valid"),
            intensity: Some(Intensity::new(2).expect("valid")),
            product_category: Some(ProductCategory::new(45).expect("valid")),
            start_month: "2024-02".parse().expect("valid"),
            end_month: Some("2024-11".parse().expect("valid")),
            age_band: AgeBand::Age12To17,
            end_reason: Some(EndReason::ACCORDING_TO_PLAN),
            satisfaction: Some(Satisfaction::new(8).expect("valid")),
            respondent: Some(Respondent::Parent),
            carry_on_without_help: Some(CarryOn::Yes),
            problem_t_pre: Some(TScore::new(68).expect("valid")),
            problem_t_post: Some(TScore::new(55).expect("valid")),
            instrument: Some("CBCL".parse().expect("valid")),
            goals_agreed: Some(GoalCount::new(4).expect("valid")),
            goals_achieved: Some(GoalCount::new(3).expect("valid")),
        }
    }

    #[test]
    fn a_good_record_passes() {
        assert_eq!(sample_record().check(&RegionConfig::wbw()), vec![]);
    }

    #[test]
    fn cross_field_rules_are_reported_by_field() {
        let region = RegionConfig::wbw();
        let mut r = sample_record();
        r.municipality = "GM0363".parse().expect("valid");
        r.end_reason = None;
        r.goals_achieved = Some(GoalCount::new(9).expect("valid"));
        r.instrument = Some("XYZ".parse().expect("valid"));
        let fields: Vec<String> = r.check(&region).into_iter().map(|i| i.field).collect();
        assert_eq!(
            fields,
            ["municipality", "end_reason", "instrument", "goals_achieved"]
        );
    }

    #[test]
    fn json_roundtrip_and_unknown_fields() {
        let r = sample_record();
        let json = serde_json::to_string(&r).expect("serialises");
        assert_eq!(
            serde_json::from_str::<WireRecord>(&json).expect("parses"),
            r
        );
        let mut v: serde_json::Value = serde_json::from_str(&json).expect("json");
        v["bsn"] = "111222333".into();
        assert!(serde_json::from_value::<WireRecord>(v).is_err());
    }
}
