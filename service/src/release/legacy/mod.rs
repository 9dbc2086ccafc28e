//! The release mechanism before release rounds (releases on demand: one release per scope, discrete
//! Laplace noise at epsilon 0.5 each, suppression decided on true counts), frozen as it was. Kept only
//! so that the utility benchmark can show today's figures beside the rounds' in the same run: compiled
//! with the `legacy-release` feature, never into the service.

mod engine;
mod figures;
mod suppress;
pub mod wire;

pub use engine::PeriodTables;

use kwm_schemas::region::Epsilon;
use kwm_schemas::MunicipalityCode;

use crate::noise::NoiseError;

/// The release policy of the old mechanism.
#[derive(Debug, Clone, PartialEq)]
pub struct LegacyPolicy {
    pub k: u32,
    pub min_providers: u32,
    pub dominance_pct: u32,
    pub max_cells_per_client: u32,
    pub per_provider_reporting: bool,
    pub herhaald_beroep_window_months: u32,
    pub epsilon_per_release: Epsilon,
    pub count_rounding: u32,
}

impl LegacyPolicy {
    /// The West-Brabant West defaults of the old mechanism.
    pub fn today() -> Self {
        Self {
            k: 10,
            min_providers: 2,
            dominance_pct: 85,
            max_cells_per_client: 2,
            per_provider_reporting: false,
            herhaald_beroep_window_months: 6,
            epsilon_per_release: Epsilon::new(1, 2).unwrap_or_else(|_| unreachable!("1/2")),
            count_rounding: 5,
        }
    }

    /// The old engine without noise to speak of and with every cell of two children published: the
    /// noise-free figures.
    pub fn noise_free() -> Self {
        Self {
            k: 2,
            min_providers: 1,
            dominance_pct: 100,
            epsilon_per_release: Epsilon::new(1_000_000_000, 1)
                .unwrap_or_else(|_| unreachable!("positive")),
            count_rounding: 1,
            ..Self::today()
        }
    }
}

/// Why the old engine computed nothing.
#[derive(Debug, thiserror::Error)]
pub enum LegacyError {
    #[error("{municipality} is not a municipality of region {region}")]
    UnknownMunicipality {
        municipality: MunicipalityCode,
        region: String,
    },
    #[error("criterion {0} of the catalogue has no computation in the release engine")]
    UnknownCriterion(String),
    #[error("the noise scale {num}/{den} of measure group {group} is out of range")]
    Scale {
        group: &'static str,
        num: u128,
        den: u128,
    },
    #[error("{0} rows are more than one release can read")]
    TooManyRows(usize),
    #[error("no noise could be drawn")]
    Noise(#[from] NoiseError),
}
