//! The wire types of releases before release rounds, as the legacy engine produced them.

use kwm_schemas::criteria::Criterion;
use kwm_schemas::release::{Figure, Rational, ReleaseScope};
use kwm_schemas::{AgbCode, Code, Month, MunicipalityCode, Period};
use time::OffsetDateTime;
use uuid::Uuid;

use super::LegacyPolicy as ReleasePolicy;
use kwm_schemas::region::Epsilon;

/// Whether a cell is published and, if not, why not. A suppressed cell carries no value at all.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum CellStatus {
    Published,
    /// Fewer than `k` distinct clients.
    BelowK,
    /// Fewer than `min_providers` distinct providers.
    FewProviders,
    /// One provider holds more than `dominance_pct` percent of the clients.
    Dominance,
    /// Suppressed so that another suppressed cell cannot be recomputed from the published totals.
    Secondary,
    /// No clients at all.
    NoData,
    /// Herhaald beroep: the window after the end of the period has not passed yet.
    NotFinal,
}

impl CellStatus {
    pub const ALL: &'static [CellStatus] = &[
        Self::Published,
        Self::BelowK,
        Self::FewProviders,
        Self::Dominance,
        Self::Secondary,
        Self::NoData,
        Self::NotFinal,
    ];

    /// The kebab-case word used on the wire, in downloads and in metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Published => "published",
            Self::BelowK => "below-k",
            Self::FewProviders => "few-providers",
            Self::Dominance => "dominance",
            Self::Secondary => "secondary",
            Self::NoData => "no-data",
            Self::NotFinal => "not-final",
        }
    }

    pub fn is_published(self) -> bool {
        self == Self::Published
    }
}

/// One criterion of one row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReleaseCell {
    /// Code of the criterion in the catalogue (`volgens_plan`, `in_zorg`, ...).
    pub criterion: String,
    pub status: CellStatus,
    /// The noisy figure; present exactly when the status is `published`.
    pub value: Option<Figure>,
    /// Lower end of the 95% interval of the noise around `value` (rounded outward, clamped to the
    /// criterion's bounds).
    pub ci95_low: Option<Figure>,
    pub ci95_high: Option<Figure>,
    /// For a percentage or a mean: the noisy number of trajectories it is taken over, rounded like a
    /// count. Absent for counts (the value is the count).
    pub count: Option<u64>,
}

/// One row of a release: a target group, or the total over all target groups (`target_group` absent);
/// in a region release with per-provider reporting also the same rows for one provider.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReleaseRow {
    pub target_group: Option<Code>,
    pub provider: Option<AgbCode>,
    pub label_nl: String,
    pub label_en: String,
    /// One cell per criterion, in the order of the release's `criteria`.
    pub cells: Vec<ReleaseCell>,
}

/// A (municipality, quarter) budget partition a release reads and is charged to: a year release reads
/// the four quarters of the year, so a year and its halves and quarters share one budget.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Partition {
    pub municipality: MunicipalityCode,
    pub period: Period,
}

/// How one measure group was noised: every value of the group got independent discrete Laplace noise
/// with parameter `scale` = `sensitivity` / epsilon share.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MeasureGroupNoise {
    pub name: String,
    /// The noised values of the group (histogram bins, a count, or a fixed-point sum).
    pub values: Vec<String>,
    /// L1 sensitivity of the group for one contribution of one client.
    pub sensitivity: u64,
    pub scale: Rational,
}

/// The noise of a release, enough to judge every figure's accuracy and to recompute the privacy spend.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NoiseDescription {
    /// `discrete-laplace`: exact sampling in integer arithmetic (Canonne, Kamath and Steinke 2020).
    pub mechanism: String,
    /// How many noised rows of one measure group a single client can reach: `max_cells_per_client`,
    /// times two when per-provider rows are noised as well. Total rows are sums of noised rows
    /// (post-processing) and cost nothing.
    pub contributions_per_client: u32,
    /// The epsilon of one measure group for one contribution: epsilon / (contributions x groups).
    pub epsilon_per_group: Rational,
    pub measure_groups: Vec<MeasureGroupNoise>,
    /// Counts are rounded to a multiple of this after noise.
    pub count_rounding: u32,
    /// Confidence level of `ci95_low`..`ci95_high`, in percent.
    pub interval_confidence_pct: u32,
}

/// A release: the figures of one scope for one period under the region's policy. The engine fills
/// everything except `id`, `version`, `created_at` and `frozen`, which belong to the ledger.
#[derive(Debug, Clone, PartialEq)]
pub struct Release {
    pub id: Option<Uuid>,
    pub version: Option<u32>,
    pub created_at: Option<OffsetDateTime>,
    /// True once the ledger has stored the release: asking again returns these figures unchanged.
    pub frozen: bool,
    /// Code of the region (`wbw`).
    pub region: String,
    pub scope: ReleaseScope,
    pub period: Period,
    /// The month the data were read in; herhaald beroep is final only for periods whose window ended
    /// before it.
    pub as_of: Month,
    /// Epsilon charged to each partition in `partitions`.
    pub epsilon: Epsilon,
    pub partitions: Vec<Partition>,
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
