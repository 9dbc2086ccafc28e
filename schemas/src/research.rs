//! Wire types of research access (DESIGN section 7, "Research"): the answer to a differentially
//! private query over the virtual table `trajectories`, and the estimate of its cost and accuracy that
//! a researcher can ask for before anything is spent. Figures, statuses and noise descriptions are
//! those of releases, decided by the same rules.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::region::Decimal;
use crate::release::{CellStatus, Figure, MeasureNoise, YearCharge};

/// The calendar years of data a query reads, and is charged to: every trajectory in care in some
/// month of them, with its outcome only when it ended within them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct DataWindow {
    pub first_year: u16,
    pub last_year: u16,
}

/// What kind of figure a column holds: decides its form and its `unreliable` rule.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub enum ColumnKind {
    /// A whole number of trajectories or children, rounded like release counts; never withheld for
    /// its width.
    Count,
    /// A sum of clamped values, one decimal; never withheld for its width.
    Sum,
    /// A mean of clamped values, one decimal: withheld as `unreliable` when its interval is wider than
    /// the region allows (grade points for a grade, percentage points for a percentage).
    Mean,
    /// A percentage with one decimal, withheld as `unreliable` like a release's percentages.
    Percentage,
    /// A quantile of a grade read from a noisy histogram, withheld as `unreliable` when its interval is
    /// wider than the region allows for grades.
    Quantile,
}

/// One value column of an answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct AnswerColumn {
    /// The measure as written in the query, normalised (`AVG(satisfaction)`,
    /// `PROPORTION(end_reason = '31')`); a histogram's bins are `HISTOGRAM(satisfaction)[7]`.
    pub name: String,
    pub kind: ColumnKind,
    /// The noisy count (of trajectories, or of children for a count of children) a cell of this column
    /// must reach to be published: a group of fewer than k children is published with probability at
    /// most the region's `suppression_delta`.
    pub min_noisy_count: u64,
}

/// One value of one group. Every withheld cell says why.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct AnswerCell {
    pub status: CellStatus,
    /// Present exactly when the status is `published`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value: Option<Figure>,
    /// The 95% interval around `value`, from the noise of the measurement (built from the published,
    /// rounded value, as in releases).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ci95_low: Option<Figure>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ci95_high: Option<Figure>,
    /// For a percentage, mean or quantile: the noisy number of trajectories it is taken over, rounded
    /// like a count.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub count: Option<u64>,
}

/// One group: one value of every grouping column (`null`: not recorded, or for an end column, not
/// ended within the window) and one cell per value column.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct AnswerRow {
    pub key: Vec<Option<String>>,
    pub cells: Vec<AnswerCell>,
}

/// How much one child can contribute to one answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ContributionBound {
    /// A child contributes at most this many trajectories to the answer; the surplus is dropped in a
    /// keyed order nobody outside the service can predict.
    pub max_trajectories_per_child: u32,
    pub rule_en: String,
    pub rule_nl: String,
}

/// The privacy side of an answer or an estimate.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ResearchPrivacy {
    /// `discrete-gaussian` or `discrete-laplace`, as the region's releases.
    pub mechanism: String,
    /// The rho the answer spends: one noisy measurement of every group.
    pub rho: Decimal,
    /// What it charges to each data year of its window.
    pub charges: Vec<YearCharge>,
    /// How `rho` is split over the noisy measurements the columns are computed from (measurements
    /// shared by several columns, such as a histogram and its quantiles, are taken once).
    pub measurements: Vec<MeasureNoise>,
    /// Counts are rounded to a multiple of this after noise.
    pub count_rounding: u32,
    /// Confidence level of `ci95_low`..`ci95_high`, in percent.
    pub interval_confidence_pct: u32,
    /// The region's k: a group of fewer than k children is published with probability at most
    /// `suppression_delta`.
    pub k: u32,
    pub suppression_delta: Decimal,
    pub guarantee_en: String,
    pub guarantee_nl: String,
}

/// The answer to a research query: every group of the full cross product of the codebook values asked
/// for, in a fixed order, so that its shape depends on the query and the region file alone.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ResearchAnswer {
    /// Code of the region (`wbw`).
    pub region: String,
    /// The query as the service read it (normalised SQL).
    pub query: String,
    pub window: DataWindow,
    /// The grouping columns, in order; every row's `key` has one value per column.
    pub group_by: Vec<String>,
    /// The value columns, in order; every row has one cell per column.
    pub columns: Vec<AnswerColumn>,
    pub rows: Vec<AnswerRow>,
    pub bounding: ContributionBound,
    pub privacy: ResearchPrivacy,
}

/// The expected width of a column's 95% interval at a given count.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ExpectedWidth {
    /// The (noisy) count of the cell; absent for counts and sums, whose width does not depend on it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub count: Option<u64>,
    /// Width of the 95% interval (high minus low), in the column's unit: for a percentage at 50%, for
    /// a mean at the middle of its range, for a quantile of evenly spread grades.
    pub width: Figure,
}

/// What one column of a query would look like, before any data is read.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ColumnEstimate {
    pub name: String,
    pub kind: ColumnKind,
    pub min_noisy_count: u64,
    pub widths: Vec<ExpectedWidth>,
    /// For percentages, means and quantiles: the smallest count from which the interval is narrow
    /// enough to be published rather than withheld as `unreliable` (absent when no count is).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reliable_from: Option<u64>,
}

/// `POST /v1/research/queries/estimate`: the cost of a query and the accuracy of its columns,
/// computed from the query and the region file alone: no data is read and nothing is charged.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct QueryEstimate {
    pub region: String,
    pub query: String,
    pub window: DataWindow,
    pub group_by: Vec<String>,
    /// Rows the answer will have (the cross product of the grouping columns' codebook values).
    pub groups: u64,
    pub columns: Vec<ColumnEstimate>,
    pub bounding: ContributionBound,
    pub privacy: ResearchPrivacy,
}
