//! The release engine (DESIGN sections 5 and 7): from the stored trajectories of a region to the
//! k-anonymous, exactly noised table of one municipality or of the whole region for one period. Pure:
//! the caller loads the rows, passes them in and stores what comes out; nothing here touches the
//! database or HTTP.
//!
//! Where things are: `measures` (the criteria per trajectory, herhaald beroep across providers, the
//! reliable change index), `bounding` (contribution limits and the keyed order), `suppress` (primary and
//! secondary suppression and the audit that no suppressed cell can be pinned), `figures` (noisy
//! integers to released figures with their 95% intervals), `engine` (the pass over the data, the grids,
//! the noise, the release).
//!
//! For the ledger: a release of a municipality reads its own (municipality, period) partition; a release
//! of the region reads all of them ([`partitions`], and `Release::partitions`). Each is charged
//! `policy.epsilon_per_release` (`Release::epsilon`).

mod bounding;
mod engine;
mod figures;
mod measures;
mod rows;
mod suppress;
#[cfg(test)]
mod tests;

use std::fmt;

use kwm_schemas::release::{Partition, Release, ReleaseScope};
use kwm_schemas::{AgbCode, Month, MunicipalityCode, Period, RegionConfig, WireRecord};

pub use engine::PeriodTables;
pub use rows::{Codebook, EngineRow};

use crate::noise::{NoiseError, NoiseSource};

/// Everything a release is computed from.
pub struct ReleaseInput<'a> {
    pub region: &'a RegionConfig,
    /// Every stored trajectory of the region, of every period, with its provider; `client` is the
    /// stored (second-stage) pseudonym. Herhaald beroep looks past the period, bounding across
    /// municipalities, so a municipality release needs the whole region too.
    pub rows: &'a [(AgbCode, WireRecord)],
    pub period: Period,
    /// The month the data are read in (normally the current month): herhaald beroep of a period is
    /// final only when its window closed before this month.
    pub as_of: Month,
    /// Key of the order in which a client's surplus trajectories are dropped (HMAC-SHA256). A service
    /// secret: with it, anyone could predict which trajectories count.
    pub order_key: &'a [u8; 32],
}

impl fmt::Debug for ReleaseInput<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ReleaseInput")
            .field("region", &self.region.code)
            .field("rows", &self.rows.len())
            .field("period", &self.period)
            .field("as_of", &self.as_of)
            .field("order_key", &"<redacted>")
            .finish()
    }
}

/// What [`PeriodTables::build_indexed`] computes from: the rows in the engine's form, in shards such
/// that all of one client's rows are in one shard (the release index shards by client pseudonym).
pub struct IndexedInput<'a> {
    pub region: &'a RegionConfig,
    pub shards: &'a [Vec<EngineRow>],
    pub period: Period,
    pub as_of: Month,
    /// As [`ReleaseInput::order_key`].
    pub order_key: &'a [u8; 32],
}

impl fmt::Debug for IndexedInput<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("IndexedInput")
            .field("region", &self.region.code)
            .field("shards", &self.shards.len())
            .field("period", &self.period)
            .field("as_of", &self.as_of)
            .field("order_key", &"<redacted>")
            .finish()
    }
}

/// Why no release could be computed. Nothing partial is ever returned.
#[derive(Debug, thiserror::Error)]
pub enum ReleaseError {
    #[error("{municipality} is not a municipality of region {region}")]
    UnknownMunicipality {
        municipality: MunicipalityCode,
        region: String,
    },
    #[error("criterion {0} of the catalogue has no computation in the release engine")]
    UnknownCriterion(String),
    #[error(
        "the noise scale {num}/{den} of measure group {group} is out of range: \
         the policy's epsilon is too small or too large"
    )]
    Scale {
        group: &'static str,
        num: u128,
        den: u128,
    },
    #[error("{0} rows are more than one release can read")]
    TooManyRows(usize),
    #[error("no noise could be drawn, so nothing is released")]
    Noise(#[from] NoiseError),
}

/// The release of `scope` for `input.period`: builds the period's tables and draws fresh noise. To
/// release several scopes of one period, build [`PeriodTables`] once and call
/// [`PeriodTables::release`] per scope: the suppression pattern is the same either way.
pub fn compute_release(
    input: &ReleaseInput<'_>,
    scope: ReleaseScope,
    noise: &mut dyn NoiseSource,
) -> Result<Release, ReleaseError> {
    if let ReleaseScope::Municipality(m) = scope {
        check_scope(input.region, m)?;
    }
    PeriodTables::build(input)?.release(scope, noise)
}

/// The (municipality, period) partitions a release of `scope` reads, for the ledger to check and charge
/// before computing anything.
pub fn partitions(
    region: &RegionConfig,
    scope: ReleaseScope,
    period: Period,
) -> Result<Vec<Partition>, ReleaseError> {
    if let ReleaseScope::Municipality(m) = scope {
        check_scope(region, m)?;
    }
    let munis: Vec<MunicipalityCode> = region.municipalities.iter().map(|m| m.code).collect();
    Ok(engine::partitions_of(&munis, scope, period))
}

fn check_scope(region: &RegionConfig, m: MunicipalityCode) -> Result<(), ReleaseError> {
    match region.municipality(m) {
        Some(_) => Ok(()),
        None => Err(ReleaseError::UnknownMunicipality {
            municipality: m,
            region: region.code.clone(),
        }),
    }
}
