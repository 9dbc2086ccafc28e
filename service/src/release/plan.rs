//! The noise plan of a round: how the round's rho is split over its three tables and over the measures
//! of each (weights from the region file), the exact noise each measured value gets, and which data
//! years the round charges. Pure arithmetic on public parameters.
//!
//! Accounting (zCDP, Bun and Steinke 2016): a child contributes to at most `c = max_cells_per_client`
//! cells of each measure, each contribution moving the measure's values by at most its sensitivity
//! `D` in L2 (every histogram is one-hot: D = 1; the centred sums: D = 9 half grade points, 500 tenths
//! of a percent). Discrete Gaussian noise of variance `s2` on every value of the measure makes it
//! `c D^2 / (2 s2)`-zCDP (Canonne, Kamath and Steinke 2020, Theorem 15), so `s2 = c D^2 / (2 rho_m)`
//! spends exactly the measure's share `rho_m`. The shares add up to the round's rho. The discrete
//! Laplace alternative spends epsilon = sqrt(2 rho) in pure DP, which is rho-zCDP.
//!
//! Every rounding of a parameter goes the safe way: a variance or scale up, an epsilon down. So the
//! rho spent is at most the rho charged.

use kwm_schemas::region::{Decimal, MeasureWeights, Mechanism, Rho};
use kwm_schemas::release::{MeasureNoise, Rational, YearCharge};
use kwm_schemas::{Period, RegionConfig};

use super::aggregate::{
    END_ADMIN, END_DROP_OUT, END_OTHER, END_PLAN, GOAL_COUNT, GOAL_SUM, GRADE_COUNT, GRADE_SUM,
    HELP_NO, HELP_YES, IMPROVED, IN_CARE, NOT_IMPROVED, REPEAT_YES, STARTED,
};
use super::ReleaseError;
use crate::noise::{NoiseError, NoiseSource, Scale, Variance};

/// One measure: values a child moves together, per contribution by at most `sensitivity`.
pub(crate) struct MeasureSpec {
    pub name: &'static str,
    pub bins: &'static [usize],
    pub values: &'static [&'static str],
    pub sensitivity: u64,
    weight: fn(&MeasureWeights) -> Decimal,
    /// Reads the months after the period (herhaald beroep's window): charged to those years too.
    reads_window: bool,
}

const fn spec(
    name: &'static str,
    bins: &'static [usize],
    values: &'static [&'static str],
    sensitivity: u64,
    weight: fn(&MeasureWeights) -> Decimal,
) -> MeasureSpec {
    MeasureSpec {
        name,
        bins,
        values,
        sensitivity,
        weight,
        reads_window: false,
    }
}

pub(crate) const MEASURES: [MeasureSpec; 10] = [
    spec("in_zorg", &[IN_CARE], &["in_zorg"], 1, |w| w.in_zorg),
    spec("gestart", &[STARTED], &["gestart"], 1, |w| w.gestart),
    spec(
        "einde",
        &[END_PLAN, END_DROP_OUT, END_OTHER, END_ADMIN],
        &["reden_31", "reden_32", "reden_33_35", "administratief"],
        1,
        |w| w.einde,
    ),
    MeasureSpec {
        reads_window: true,
        ..spec("herhaald_beroep", &[REPEAT_YES], &["herhaald"], 1, |w| {
            w.herhaald_beroep
        })
    },
    spec(
        "zonder_hulp",
        &[HELP_YES, HELP_NO],
        &["ja", "nee"],
        1,
        |w| w.zonder_hulp,
    ),
    spec(
        "probleemafname",
        &[IMPROVED, NOT_IMPROVED],
        &["afgenomen", "niet_afgenomen"],
        1,
        |w| w.probleemafname,
    ),
    spec("tevredenheid_aantal", &[GRADE_COUNT], &["aantal"], 1, |w| {
        w.tevredenheid_aantal
    }),
    spec(
        "tevredenheid_som",
        &[GRADE_SUM],
        &["som_halve_punten_rond_5_5"],
        9,
        |w| w.tevredenheid_som,
    ),
    spec(
        "doelrealisatie_aantal",
        &[GOAL_COUNT],
        &["aantal"],
        1,
        |w| w.doelrealisatie_aantal,
    ),
    spec(
        "doelrealisatie_som",
        &[GOAL_SUM],
        &["som_promille_rond_500"],
        500,
        |w| w.doelrealisatie_som,
    ),
];

/// The measure a bin belongs to.
pub(crate) fn measure_of(bin: usize) -> usize {
    MEASURES
        .iter()
        .position(|m| m.bins.contains(&bin))
        .unwrap_or_else(|| unreachable!("every bin belongs to a measure"))
}

/// An exact non-negative rational on public parameters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Frac {
    pub n: u128,
    pub d: u128,
}

fn gcd(mut a: u128, mut b: u128) -> u128 {
    while b != 0 {
        (a, b) = (b, a % b);
    }
    a
}

impl Frac {
    pub fn new(n: u128, d: u128) -> Self {
        let g = gcd(n, d).max(1);
        Self { n: n / g, d: d / g }
    }

    pub fn of(d: Decimal) -> Self {
        let (n, den) = d.fraction();
        Self::new(u128::from(n), u128::from(den))
    }

    pub fn mul(self, o: Self) -> Option<Self> {
        // Cross-reduce first so that the products stay small.
        let g1 = gcd(self.n, o.d).max(1);
        let g2 = gcd(o.n, self.d).max(1);
        Some(Self::new(
            (self.n / g1).checked_mul(o.n / g2)?,
            (self.d / g2).checked_mul(o.d / g1)?,
        ))
    }

    pub fn inv(self) -> Self {
        Self {
            n: self.d,
            d: self.n,
        }
    }

    pub fn add(self, o: Self) -> Option<Self> {
        Some(Self::new(
            self.n
                .checked_mul(o.d)?
                .checked_add(o.n.checked_mul(self.d)?)?,
            self.d.checked_mul(o.d)?,
        ))
    }

    /// A fraction with both parts at most `max` and a value at least this one's.
    pub fn fit_up(self, max: u128) -> (u128, u128) {
        let (mut n, mut d) = (self.n, self.d);
        while n > max || d > max {
            n = n.div_ceil(2);
            d = (d / 2).max(1);
        }
        (n, d)
    }

    /// Nano-units, rounded up (what is charged is never less than what is spent).
    pub fn ceil_nanos(self) -> Option<i64> {
        let v = self.n.checked_mul(1_000_000_000)?.div_ceil(self.d);
        i64::try_from(v).ok()
    }

    #[cfg(test)]
    pub fn approx(self) -> f64 {
        self.n as f64 / self.d as f64
    }

    pub(crate) fn rational(self) -> Rational {
        let (n, d) = self.fit_up(u128::from(u64::MAX));
        Rational {
            numerator: n as u64,
            denominator: d as u64,
        }
    }
}

/// The noise one measured value gets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dist {
    Gaussian(Variance),
    Laplace(Scale),
}

impl Dist {
    pub fn draw(self, noise: &mut dyn NoiseSource) -> Result<i64, NoiseError> {
        match self {
            Self::Gaussian(v) => noise.try_discrete_gaussian(v),
            Self::Laplace(s) => noise.try_discrete_laplace(s),
        }
    }

    /// An upper bound of the variance of one draw (for intervals; reads the public parameter only).
    pub fn variance(self) -> f64 {
        match self {
            // The discrete Gaussian's variance is below sigma^2 (CKS20 Proposition 19).
            Self::Gaussian(v) => v.num as f64 / v.den as f64,
            Self::Laplace(s) => {
                let p = (-(s.den as f64) / s.num as f64).exp();
                2.0 * p / ((1.0 - p) * (1.0 - p))
            }
        }
    }

    /// A weight proportional to the variance, as an exact rational, for the reconciliation.
    pub(crate) fn wls_weight(self) -> Frac {
        match self {
            Self::Gaussian(v) => Frac::new(u128::from(v.num), u128::from(v.den)),
            Self::Laplace(s) => {
                let (n, d) = (u128::from(s.num), u128::from(s.den));
                Frac::new(n * n, d * d)
            }
        }
    }

    /// ln E[exp(t X)] (an upper bound of it): the discrete Gaussian is sigma^2-subgaussian (CKS20
    /// Corollary 22); the discrete Laplace's is exact. Infinite where it does not exist.
    pub fn log_mgf(self, t: f64) -> f64 {
        match self {
            Self::Gaussian(v) => t * t * (v.num as f64 / v.den as f64) / 2.0,
            Self::Laplace(s) => {
                let q = s.den as f64 / s.num as f64;
                if t.abs() >= q {
                    return f64::INFINITY;
                }
                let one_minus_p = -(-q).exp_m1();
                2.0 * one_minus_p.ln() - (-(t - q).exp_m1()).ln() - (-(-t - q).exp_m1()).ln()
            }
        }
    }

    /// The largest |t| for which [`Dist::log_mgf`] is finite.
    fn t_max(self) -> f64 {
        match self {
            Self::Gaussian(_) => f64::INFINITY,
            Self::Laplace(s) => s.den as f64 / s.num as f64,
        }
    }
}

/// A linear combination of independent noise draws: `(coefficient, draw, how many such draws)`.
pub type Terms = Vec<(f64, Dist, u32)>;

pub fn terms_variance(terms: &Terms) -> f64 {
    terms
        .iter()
        .map(|(c, d, k)| f64::from(*k) * c * c * d.variance())
        .sum()
}

/// The smallest z with P(sum of the terms >= z) <= delta by the Chernoff bound: a bound that holds for
/// the exact noise, not an approximation.
pub fn tail_bound(terms: &Terms, delta: f64) -> f64 {
    let ln_delta = delta.ln();
    if terms.iter().all(|(_, d, _)| matches!(d, Dist::Gaussian(_))) {
        let v: f64 = terms
            .iter()
            .map(|(c, d, k)| f64::from(*k) * c * c * d.variance())
            .sum();
        return (2.0 * v * -ln_delta).sqrt();
    }
    let t_max = terms
        .iter()
        .filter(|(c, _, _)| *c != 0.0)
        .map(|(c, d, _)| d.t_max() / c.abs())
        .fold(f64::INFINITY, f64::min);
    let log_m = |t: f64| -> f64 {
        terms
            .iter()
            .map(|(c, d, k)| f64::from(*k) * d.log_mgf(c * t))
            .sum()
    };
    // ln P(S >= z) <= min_t (log_m(t) - t z), convex in t: golden section on (0, t_max).
    let log_bound = |z: f64| {
        let (mut lo, mut hi) = (0.0, t_max * (1.0 - 1e-9));
        let g = (5f64.sqrt() - 1.0) / 2.0;
        let f = |t: f64| log_m(t) - t * z;
        for _ in 0..200 {
            let a = hi - g * (hi - lo);
            let b = lo + g * (hi - lo);
            if f(a) <= f(b) {
                hi = b;
            } else {
                lo = a;
            }
        }
        f((lo + hi) / 2.0).min(0.0)
    };
    let mut hi = terms_variance(terms).sqrt().max(1.0);
    while log_bound(hi) > ln_delta {
        hi *= 2.0;
        if hi > 1e15 {
            return f64::INFINITY;
        }
    }
    let mut lo = 0.0;
    for _ in 0..100 {
        let mid = (lo + hi) / 2.0;
        if log_bound(mid) <= ln_delta {
            hi = mid;
        } else {
            lo = mid;
        }
    }
    hi
}

/// The tables a round measures.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Table {
    Municipality,
    Region,
    Providers,
}

impl Table {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Municipality => "municipality",
            Self::Region => "region",
            Self::Providers => "providers",
        }
    }
}

/// The noise of every measured value of a round, and its cost.
#[derive(Debug, Clone)]
pub struct NoisePlan {
    pub mechanism: Mechanism,
    pub contributions: u32,
    pub muni: [Dist; MEASURES.len()],
    pub region: [Dist; MEASURES.len()],
    /// Herhaald beroep per provider x target group: [repeat, no repeat], one-hot.
    pub provider: Dist,
    muni_rho: [Frac; MEASURES.len()],
    region_rho: [Frac; MEASURES.len()],
    provider_rho: Frac,
    pub round_rho: Rho,
}

/// Largest part of a noise parameter the samplers take.
const MAX_VARIANCE_PART: u128 = Variance::MAX_PART as u128;
const MAX_SCALE_PART: u128 = Scale::MAX_PART as u128;

impl NoisePlan {
    /// The plan of a round of `rho` under the region's policy.
    pub fn new(region: &RegionConfig, rho: Rho) -> Result<Self, ReleaseError> {
        let q = &region.privacy;
        let c = region.policy.max_cells_per_client.max(1);
        let overflow = || ReleaseError::Plan("the privacy parameters are too fine to compute with");
        let total_weight = MEASURES
            .iter()
            .try_fold(Frac::new(0, 1), |acc, m| {
                acc.add(Frac::of((m.weight)(&q.weights)))
            })
            .ok_or_else(overflow)?;
        let round = Frac::of(rho);
        let eps_round_micro = {
            let scaled = round
                .mul(Frac::new(2_000_000_000_000, 1))
                .ok_or_else(overflow)?;
            isqrt(scaled.n / scaled.d)
        };
        let share = |table: Decimal| round.mul(Frac::of(table)).ok_or_else(overflow);
        let (muni_share, region_share, provider_rho) = (
            share(q.levels.municipality)?,
            share(q.levels.region)?,
            share(q.levels.providers)?,
        );
        let split = |table: Frac| -> Result<[Frac; MEASURES.len()], ReleaseError> {
            let mut out = [Frac::new(0, 1); MEASURES.len()];
            for (i, m) in MEASURES.iter().enumerate() {
                out[i] = table
                    .mul(Frac::of((m.weight)(&q.weights)))
                    .and_then(|f| f.mul(total_weight.inv()))
                    .ok_or_else(overflow)?;
            }
            Ok(out)
        };
        let muni_rho = split(muni_share)?;
        let region_rho = split(region_share)?;
        let dist = |rho_m: Frac, sensitivity: u64| -> Result<Dist, ReleaseError> {
            let (c, d) = (u128::from(c), u128::from(sensitivity));
            // Pure DP: the round's epsilon = sqrt(2 rho) (rounded down to millionths) is split over
            // the measures as rho is, so the round is epsilon-DP and so rho-zCDP.
            let eps_m = || {
                Frac::new(eps_round_micro, 1_000_000)
                    .mul(rho_m)
                    .and_then(|f| f.mul(round.inv()))
            };
            dist_for(q.mechanism, c * d * d, c * d, rho_m, eps_m)
        };
        let mut muni = [Dist::Laplace(Scale { num: 1, den: 1 }); MEASURES.len()];
        let mut region_d = muni;
        for (i, m) in MEASURES.iter().enumerate() {
            muni[i] = dist(muni_rho[i], m.sensitivity)?;
            region_d[i] = dist(region_rho[i], m.sensitivity)?;
        }
        Ok(Self {
            mechanism: q.mechanism,
            contributions: c,
            muni,
            region: region_d,
            provider: dist(provider_rho, 1)?,
            muni_rho,
            region_rho,
            provider_rho,
            round_rho: rho,
        })
    }

    /// The data years the round reads and what each is charged, in nano-rho: the period's year the
    /// whole round; each year the herhaald beroep window reaches into, what herhaald beroep spends.
    pub fn charges(
        &self,
        region: &RegionConfig,
        period: Period,
    ) -> Result<Vec<(u16, i64)>, ReleaseError> {
        let whole = self.round_rho.to_nanos().ok_or(ReleaseError::Plan(
            "a round's rho must have at most nine decimals",
        ))?;
        let mut out = vec![(period.year(), whole)];
        let last = period.last_month();
        let reach = last.plus_months(region.policy.herhaald_beroep_window_months);
        if reach.year() > last.year() {
            let mut window = self.provider_rho;
            for (i, m) in MEASURES.iter().enumerate() {
                if m.reads_window {
                    window = window
                        .add(self.muni_rho[i])
                        .and_then(|w| w.add(self.region_rho[i]))
                        .ok_or(ReleaseError::Plan(
                            "the privacy parameters are too fine to compute with",
                        ))?;
                }
            }
            let nanos = window
                .ceil_nanos()
                .ok_or(ReleaseError::Plan(
                    "the privacy parameters are too fine to compute with",
                ))?
                .min(whole);
            for year in last.year() + 1..=reach.year() {
                out.push((year, nanos));
            }
        }
        Ok(out)
    }

    /// What the release says about its noise.
    pub fn describe(&self) -> Vec<MeasureNoise> {
        let one = |name: &str,
                   table: Table,
                   values: Vec<String>,
                   sensitivity: u64,
                   rho: Frac,
                   d: Dist| {
            MeasureNoise {
                name: name.into(),
                table: table.as_str().into(),
                values,
                sensitivity,
                rho: rho.rational(),
                variance: match d {
                    Dist::Gaussian(v) => Some(Rational {
                        numerator: v.num,
                        denominator: v.den,
                    }),
                    Dist::Laplace(_) => None,
                },
                scale: match d {
                    Dist::Laplace(s) => Some(Rational {
                        numerator: s.num,
                        denominator: s.den,
                    }),
                    Dist::Gaussian(_) => None,
                },
            }
        };
        let values = |m: &MeasureSpec| {
            m.values
                .iter()
                .map(|v| (*v).to_string())
                .collect::<Vec<_>>()
        };
        let mut out = Vec::new();
        for (table, dists, rhos) in [
            (Table::Municipality, &self.muni, &self.muni_rho),
            (Table::Region, &self.region, &self.region_rho),
        ] {
            for (i, m) in MEASURES.iter().enumerate() {
                out.push(one(
                    m.name,
                    table,
                    values(m),
                    m.sensitivity,
                    rhos[i],
                    dists[i],
                ));
            }
        }
        out.push(one(
            "herhaald_beroep",
            Table::Providers,
            vec!["herhaald".into(), "niet_herhaald".into()],
            1,
            self.provider_rho,
            self.provider,
        ));
        out
    }

    pub fn year_charges(charges: &[(u16, i64)]) -> Vec<YearCharge> {
        charges
            .iter()
            .filter_map(|(year, nanos)| {
                Some(YearCharge {
                    data_year: *year,
                    rho: Decimal::from_nanos(*nanos)?,
                })
            })
            .collect()
    }
}

/// The noise of a measure that spends `rho_m` and whose values one child moves by at most
/// `sqrt(l2_squared)` in L2 and `l1` in L1: discrete Gaussian with sigma^2 = l2_squared / (2 rho_m)
/// (CKS20 Theorem 15), or discrete Laplace with scale l1 / epsilon_m (pure DP, `eps_m` the measure's
/// share of the epsilon), each rounded up to what the samplers take.
pub(crate) fn dist_for(
    mechanism: Mechanism,
    l2_squared: u128,
    l1: u128,
    rho_m: Frac,
    eps_m: impl FnOnce() -> Option<Frac>,
) -> Result<Dist, ReleaseError> {
    let overflow = || ReleaseError::Plan("the privacy parameters are too fine to compute with");
    if rho_m.n == 0 {
        return Err(ReleaseError::Plan(
            "a measure has no budget: check the weights and levels",
        ));
    }
    match mechanism {
        Mechanism::DiscreteGaussian => {
            // s2 = c D^2 / (2 rho_m), rounded up.
            let s2 = Frac::new(l2_squared, 2)
                .mul(rho_m.inv())
                .ok_or_else(overflow)?;
            let (n, d) = s2.fit_up(MAX_VARIANCE_PART);
            Variance::new(n as u64, d as u64)
                .map(Dist::Gaussian)
                .map_err(|_| ReleaseError::Plan("a noise variance is out of the sampler's range"))
        }
        Mechanism::DiscreteLaplace => {
            let eps_m = eps_m().ok_or_else(overflow)?;
            if eps_m.n == 0 {
                return Err(ReleaseError::Plan("a measure's epsilon is zero"));
            }
            // scale = c D / epsilon_m.
            let scale = Frac::new(l1, 1).mul(eps_m.inv()).ok_or_else(overflow)?;
            let (n, d) = scale.fit_up(MAX_SCALE_PART);
            Scale::new(n as u64, d as u64)
                .map(Dist::Laplace)
                .map_err(|_| ReleaseError::Plan("a noise scale is out of the sampler's range"))
        }
    }
}

/// The largest integer whose square is at most `n`.
pub(crate) fn isqrt(n: u128) -> u128 {
    if n < 2 {
        return n;
    }
    let mut x = (n as f64).sqrt() as u128;
    // Correct the float estimate exactly.
    while x.checked_mul(x).is_none_or(|sq| sq > n) {
        x -= 1;
    }
    while (x + 1).checked_mul(x + 1).is_some_and(|sq| sq <= n) {
        x += 1;
    }
    x
}

/// The (epsilon, delta)-DP that rho-zCDP implies (Canonne, Kamath and Steinke 2020, Corollary 13):
/// epsilon = min over alpha > 1 of alpha rho + (alpha ln(1 - 1/alpha) - ln(alpha - 1) - ln delta) /
/// (alpha - 1), rounded up to a tenth. Public parameters only.
pub fn epsilon_of(rho: f64, delta: f64) -> f64 {
    let f = |a: f64| a * rho + (a * (1.0 - 1.0 / a).ln() - (a - 1.0).ln() - delta.ln()) / (a - 1.0);
    // Convex in alpha on (1, inf): golden section on a log scale of alpha - 1.
    let (mut lo, mut hi) = ((1e-6f64).ln(), (1e6f64).ln());
    let g = (5f64.sqrt() - 1.0) / 2.0;
    let at = |x: f64| f(1.0 + x.exp());
    for _ in 0..300 {
        let a = hi - g * (hi - lo);
        let b = lo + g * (hi - lo);
        if at(a) <= at(b) {
            hi = b;
        } else {
            lo = a;
        }
    }
    let classic = rho + 2.0 * (rho * -delta.ln()).sqrt();
    at((lo + hi) / 2.0).min(classic)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_round_charges_its_rho_and_the_window_year_what_herhaald_beroep_spends() {
        let region = RegionConfig::wbw();
        let rho = region.privacy.year_round;
        let plan = NoisePlan::new(&region, rho).expect("plan");
        let period: Period = "2025".parse().expect("period");
        let charges = plan.charges(&region, period).expect("charges");
        assert_eq!(charges[0], (2025, rho.to_nanos().expect("nanos")));
        assert_eq!(charges.len(), 2, "a six-month window reaches into 2026");
        assert_eq!(charges[1].0, 2026);
        assert!(charges[1].1 > 0 && charges[1].1 < charges[0].1);
        // A first half-year's window ends in the same year: one charge.
        let h1: Period = "2025-H1".parse().expect("period");
        let plan =
            NoisePlan::new(&region, region.privacy.half_year_round.expect("h")).expect("plan");
        assert_eq!(plan.charges(&region, h1).expect("charges").len(), 1);
    }

    #[test]
    fn the_measures_spend_exactly_the_round_rho() {
        let region = RegionConfig::wbw();
        let plan = NoisePlan::new(&region, region.privacy.year_round).expect("plan");
        let mut total = plan.provider_rho;
        for i in 0..MEASURES.len() {
            total = total.add(plan.muni_rho[i]).expect("small");
            total = total.add(plan.region_rho[i]).expect("small");
        }
        assert_eq!(total, Frac::of(region.privacy.year_round));
        // And each variance spends at most its share: c D^2 / (2 s2) <= rho_m.
        let c = f64::from(region.policy.max_cells_per_client);
        for (i, m) in MEASURES.iter().enumerate() {
            for (d, rho_m) in [
                (plan.muni[i], plan.muni_rho[i]),
                (plan.region[i], plan.region_rho[i]),
            ] {
                let spent = c * (m.sensitivity as f64).powi(2) / (2.0 * d.variance());
                assert!(
                    spent <= rho_m.approx() * (1.0 + 1e-12),
                    "{} spends {spent} > {}",
                    m.name,
                    rho_m.approx()
                );
            }
        }
    }

    #[test]
    fn zcdp_converts_to_the_known_epsilon() {
        // rho = 0.5, delta = 1e-6: the classic bound is 0.5 + 2 sqrt(0.5 ln 1e6) = 5.756; the
        // CKS20 bound is below it.
        let e = epsilon_of(0.5, 1e-6);
        assert!(e < 5.756 && e > 4.0, "{e}");
        assert!(epsilon_of(1.125, 1e-6) > e);
    }

    #[test]
    fn gaussian_tail_bound_is_the_subgaussian_one() {
        let v = Variance::new(4, 1).expect("variance");
        let z = tail_bound(&vec![(1.0, Dist::Gaussian(v), 1)], 1e-3);
        assert!((z - (2.0 * 4.0 * 1000f64.ln()).sqrt()).abs() < 1e-9);
    }

    #[test]
    fn laplace_tail_bound_is_close_to_the_exact_tail() {
        // One draw at scale 2: P(X >= z) = p^z / (1 + p), p = e^-1/2. Chernoff is above the exact
        // quantile but within a few units.
        let s = Scale::new(2, 1).expect("scale");
        let z = tail_bound(&vec![(1.0, Dist::Laplace(s), 1)], 1e-3);
        let p = (-0.5f64).exp();
        let exact = ((1e-3 * (1.0 + p)).ln() / p.ln()).ceil();
        assert!(z >= exact - 1.0 && z < exact + 8.0, "{z} vs {exact}");
    }

    #[test]
    fn isqrt_is_exact() {
        for n in [0u128, 1, 2, 3, 4, 15, 16, 17, 1 << 100, (1 << 100) - 1] {
            let r = isqrt(n);
            assert!(r * r <= n && (r + 1) * (r + 1) > n, "{n}");
        }
    }
}
