//! The release engine (DESIGN sections 5 and 7): from the stored trajectories of a region to the
//! releases of one round, all from one noisy measurement. Pure: the caller passes the rows in and
//! stores what comes out; nothing here touches the database or HTTP.
//!
//! Where things are: `measures` (the criteria per trajectory, herhaald beroep across providers, the
//! reliable change index), `bounding` (the keyed order that drops a child's surplus), `aggregate`
//! (the pass over the data: bounding and the true sums, never released), `plan` (how a round's rho is
//! split and the noise of every value; the data years it charges), `measure` (the one noisy
//! measurement), `estimate` (post-processing: consistent tables, figures, intervals and statuses
//! decided on noisy figures only).

pub(crate) mod aggregate;
pub(crate) mod bounding;
pub(crate) mod estimate;
#[cfg(feature = "legacy-release")]
pub mod legacy;
mod measure;
pub(crate) mod measures;
pub(crate) mod plan;
pub(crate) mod rows;
#[cfg(test)]
pub(crate) mod tests;

use std::fmt;

use kwm_schemas::region::Rho;
use kwm_schemas::release::Release;
use kwm_schemas::{AgbCode, Month, Period, RegionConfig, WireRecord};

pub use aggregate::{Frame, TrueTables};
pub use estimate::{assemble, privacy_statement, RoundContext};
pub use measure::Measurement;
pub use plan::{epsilon_of, NoisePlan};
pub use rows::{Codebook, Dims, EngineRow};

use crate::noise::{NoiseError, NoiseSource};

/// What a round is computed from: the rows in the engine's form, in shards such that all of one
/// child's rows are in one shard (the release index shards by client pseudonym).
pub struct IndexedInput<'a> {
    pub region: &'a RegionConfig,
    pub shards: &'a [Vec<EngineRow>],
    pub period: Period,
    /// The month the data are read in: the period must be final by then (herhaald beroep's window
    /// closed).
    pub as_of: Month,
    /// Key of the order in which a child's surplus trajectories are dropped (HMAC-SHA256). A service
    /// secret: with it, anyone could predict which trajectories count.
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

/// Why no round could be computed. Nothing partial is ever returned.
#[derive(Debug, thiserror::Error)]
pub enum ReleaseError {
    #[error("criterion {0} of the catalogue has no computation in the release engine")]
    UnknownCriterion(String),
    #[error("{0} is not final yet: herhaald beroep's window has not closed")]
    NotFinal(Period),
    #[error("the privacy plan cannot be computed: {0}")]
    Plan(&'static str),
    #[error("{0} rows are more than one round can read")]
    TooManyRows(usize),
    #[error("no noise could be drawn, so nothing is released")]
    Noise(#[from] NoiseError),
}

/// A computed round, before the ledger stores it.
#[derive(Debug)]
pub struct ComputedRound {
    /// One release per municipality, then the region's, then the per-provider table.
    pub releases: Vec<Release>,
    /// Nano-rho charged per data year, ascending.
    pub charges: Vec<(u16, i64)>,
}

/// Computes the round of `input.period` at `rho`: bounds, measures once with fresh noise, and
/// post-processes every table from that one measurement.
pub fn compute_round(
    input: &IndexedInput<'_>,
    rho: Rho,
    noise: &mut dyn NoiseSource,
) -> Result<ComputedRound, ReleaseError> {
    let plan = NoisePlan::new(input.region, rho)?;
    let charges = plan.charges(input.region, input.period)?;
    let tables = TrueTables::build(input)?;
    let measurement = Measurement::draw(&tables, &plan, noise)?;
    let ctx = RoundContext {
        region: input.region,
        plan: &plan,
        charges: &charges,
    };
    let releases = assemble(&ctx, &tables.frame, &measurement, &tables.own)?;
    Ok(ComputedRound { releases, charges })
}

/// The rows of wire records (one provider each), in one shard, as tests and tools hold them.
pub fn engine_rows(region: &RegionConfig, rows: &[(AgbCode, WireRecord)]) -> Vec<EngineRow> {
    let codebook = Codebook::new(region);
    rows.iter()
        .map(|(agb, rec)| EngineRow::new(&codebook, *agb, rec))
        .collect()
}
