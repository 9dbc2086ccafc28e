//! The one noisy measurement of a round: the only place where true sums meet noise. Everything a round
//! publishes (values, intervals, statuses, totals, the region's table) is computed from a
//! [`Measurement`] and public parameters alone (`estimate`).

use super::aggregate::{add_into, Bins, RepeatBins, TrueTables, BINS};
use super::plan::{measure_of, NoisePlan};
use super::ReleaseError;
use crate::noise::NoiseSource;

/// Noisy integers: the municipality x target group table, the region's own measurement of each target
/// group, and herhaald beroep per provider x target group. Safe to keep and to post-process.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Measurement {
    pub muni: Vec<Bins>,
    pub region: Vec<Bins>,
    pub provider_repeat: Vec<RepeatBins>,
}

impl Measurement {
    /// Adds fresh noise to every value of every table, in a fixed order (municipality cells, region
    /// cells, provider cells; bins in order).
    pub fn draw(
        tables: &TrueTables,
        plan: &NoisePlan,
        noise: &mut dyn NoiseSource,
    ) -> Result<Self, ReleaseError> {
        let t_n = tables.frame.groups.len();
        let mut region = vec![[0i64; BINS]; t_n];
        for (i, cell) in tables.muni.iter().enumerate() {
            add_into(&mut region[i % t_n], cell);
        }
        let mut noisy =
            |cells: &[Bins], dists: &[super::plan::Dist]| -> Result<Vec<Bins>, ReleaseError> {
                cells
                    .iter()
                    .map(|cell| {
                        let mut out = *cell;
                        for (b, v) in out.iter_mut().enumerate() {
                            *v = v.saturating_add(dists[measure_of(b)].draw(noise)?);
                        }
                        Ok(out)
                    })
                    .collect()
            };
        let muni = noisy(&tables.muni, &plan.muni)?;
        let region = noisy(&region, &plan.region)?;
        let provider_repeat = tables
            .provider_repeat
            .iter()
            .map(|cell| {
                Ok([
                    cell[0].saturating_add(plan.provider.draw(noise)?),
                    cell[1].saturating_add(plan.provider.draw(noise)?),
                ])
            })
            .collect::<Result<Vec<_>, ReleaseError>>()?;
        Ok(Self {
            muni,
            region,
            provider_repeat,
        })
    }
}
