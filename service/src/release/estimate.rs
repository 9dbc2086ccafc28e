//! From the round's noisy measurement to its releases: post-processing only. Nothing here sees a true
//! count (the function signatures take a [`Measurement`] and public parameters; a provider's own rows,
//! its own data, go only into its own rows of the per-provider table).
//!
//! 1. **Consistency** (as the US Census TopDown does): every value is measured twice, in the municipal
//!    cell and in the region's cell of its target group. Weighted least squares under the constraint
//!    that the municipalities add up to the region gives, for variances `a` (municipal) and `b`
//!    (region) and `M` municipalities, `x_m + lambda (r - S)` with `lambda = a / (M a + b)`, `S` the
//!    sum of the municipal values and `r` the region's. The region's estimate is then the sum of its
//!    municipalities' by construction, and a total row the sum of its target groups. Estimates are
//!    fixed point (2^-20), in integers.
//! 2. **Figures**: counts rounded to the region's step; percentages and means as exact quotients of
//!    estimates, to one decimal. One noisy denominator serves every criterion that divides by it.
//! 3. **Intervals**: from the published (rounded) value, +-1.96 standard deviations of the estimate's
//!    noise (exact variances of the linear combination; delta method for quotients), widened by half
//!    the rounding step, clamped to the criterion's bounds.
//! 4. **Statuses**: `suppressed` when the noisy denominator is below the threshold at which a cell of
//!    fewer than k children is published with probability at most `suppression_delta` (a Chernoff
//!    bound on the exact noise); `unreliable` when the interval is wider than the region allows.

use std::collections::BTreeMap;

use kwm_schemas::criteria::{catalogue, Criterion};
use kwm_schemas::region::Decimal;
use kwm_schemas::release::{
    CellStatus, Figure, NoiseDescription, PrivacyStatement, Release, ReleaseCell, ReleaseRow,
    ReleaseScope, Threshold,
};
use kwm_schemas::RegionConfig;

use super::aggregate::{
    Bins, Frame, RepeatBins, BINS, END_ADMIN, END_DROP_OUT, END_OTHER, END_PLAN, GOAL_COUNT,
    GOAL_SUM, GRADE_COUNT, GRADE_SUM, HELP_NO, HELP_YES, IMPROVED, IN_CARE, NOT_IMPROVED,
    REPEAT_YES, STARTED,
};
use super::measure::Measurement;
use super::plan::{epsilon_of, measure_of, tail_bound, NoisePlan, Terms, MEASURES};
use super::ReleaseError;

/// Fixed point of the estimates: 2^20 units per one.
pub const FP: i128 = 1 << 20;

/// z of a two-sided 95% interval.
pub(crate) const Z95: f64 = 1.959_963_984_540_054;

/// Which kind of row a value is estimated for: decides its noise terms.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum RowKind {
    MuniCell,
    MuniTotal,
    RegionCell,
    RegionTotal,
    ProviderCell,
    ProviderTotal,
}

impl RowKind {
    fn as_str(self) -> &'static str {
        match self {
            Self::MuniCell => "municipality",
            Self::MuniTotal => "municipality-total",
            Self::RegionCell => "region",
            Self::RegionTotal => "region-total",
            Self::ProviderCell => "provider",
            Self::ProviderTotal => "provider-total",
        }
    }

    fn is_total(self) -> bool {
        matches!(
            self,
            Self::MuniTotal | Self::RegionTotal | Self::ProviderTotal
        )
    }
}

/// How a criterion's figure is computed, and the denominator that decides its status.
#[derive(Debug, Clone, Copy)]
enum Comp {
    Count(&'static [usize]),
    /// part / (part + rest), as a percentage.
    Share {
        part: &'static [usize],
        rest: &'static [usize],
    },
    /// Herhaald beroep: repeats / outcome endings, as a percentage.
    Repeat,
    /// A mean of a centred sum: tevredenheid (half points around 5.5) or doelrealisatie (tenths of a
    /// percent around 50%).
    Mean {
        sum: usize,
        count: usize,
        grade: bool,
    },
}

const OUTCOME_ENDINGS: &[usize] = &[END_PLAN, END_DROP_OUT, END_OTHER];
const ALL_ENDINGS: &[usize] = &[END_PLAN, END_DROP_OUT, END_OTHER, END_ADMIN];

/// The computation and the denominator (name and bins) of each criterion of the catalogue.
fn computation(code: &str) -> Option<(Comp, &'static str, &'static [usize])> {
    Some(match code {
        "volgens_plan" => (
            Comp::Share {
                part: &[END_PLAN],
                rest: &[END_DROP_OUT, END_OTHER],
            },
            "einde_uitkomst",
            OUTCOME_ENDINGS,
        ),
        "uitval" => (
            Comp::Share {
                part: &[END_DROP_OUT],
                rest: &[END_PLAN, END_OTHER],
            },
            "einde_uitkomst",
            OUTCOME_ENDINGS,
        ),
        "herhaald_beroep" => (Comp::Repeat, "einde_uitkomst", OUTCOME_ENDINGS),
        "zonder_hulp" => (
            Comp::Share {
                part: &[HELP_YES],
                rest: &[HELP_NO],
            },
            "zonder_hulp",
            &[HELP_YES, HELP_NO],
        ),
        "probleemafname" => (
            Comp::Share {
                part: &[IMPROVED],
                rest: &[NOT_IMPROVED],
            },
            "probleemafname",
            &[IMPROVED, NOT_IMPROVED],
        ),
        "tevredenheid" => (
            Comp::Mean {
                sum: GRADE_SUM,
                count: GRADE_COUNT,
                grade: true,
            },
            "tevredenheid",
            &[GRADE_COUNT],
        ),
        "doelrealisatie" => (
            Comp::Mean {
                sum: GOAL_SUM,
                count: GOAL_COUNT,
                grade: false,
            },
            "doelrealisatie",
            &[GOAL_COUNT],
        ),
        "in_zorg" => (Comp::Count(&[IN_CARE]), "in_zorg", &[IN_CARE]),
        "gestart" => (Comp::Count(&[STARTED]), "gestart", &[STARTED]),
        "beeindigd" => (Comp::Count(ALL_ENDINGS), "beeindigd", ALL_ENDINGS),
        _ => return None,
    })
}

/// A criterion with its computation and its denominator (name and bins).
type Planned = (Criterion, Comp, &'static str, &'static [usize]);

/// The criteria of the catalogue with their computations, or the first one the engine cannot compute.
fn criteria() -> Result<Vec<Planned>, ReleaseError> {
    catalogue()
        .into_iter()
        .map(|c| match computation(&c.code) {
            Some((comp, name, den)) => Ok((c, comp, name, den)),
            None => Err(ReleaseError::UnknownCriterion(c.code)),
        })
        .collect()
}

/// The estimates of one row, per bin, in fixed point.
struct RowEst {
    val: [i128; BINS],
    kind: RowKind,
}

/// A row's noisy [repeat, no repeat] in fixed point (per-provider table).
struct RepeatEst {
    val: [i128; 2],
    kind: RowKind,
}

/// The reconciliation of the two measurements and the noise of every estimate.
struct Noise<'a> {
    plan: &'a NoisePlan,
    munis: usize,
    groups: usize,
    /// lambda of each measure, in fixed point.
    lambda: [i128; MEASURES.len()],
}

impl<'a> Noise<'a> {
    fn new(plan: &'a NoisePlan, munis: usize, groups: usize) -> Self {
        let mut lambda = [0i128; MEASURES.len()];
        for (g, l) in lambda.iter_mut().enumerate() {
            // Weights only steer the combination (any weights keep it unbiased and consistent), so
            // they may be approximated; 2^32 keeps every product in range.
            let (an, ad) = plan.muni[g].wls_weight().fit_up(1 << 32);
            let (bn, bd) = plan.region[g].wls_weight().fit_up(1 << 32);
            let num = an * bd;
            let den = munis as u128 * an * bd + bn * ad;
            *l = ((num * FP as u128 * 2 + den) / (2 * den)) as i128;
        }
        Self {
            plan,
            munis,
            groups,
            lambda,
        }
    }

    /// The noise of the estimate of bin `b` in a row of `kind`, as independent draws.
    fn terms(&self, b: usize, kind: RowKind, out: &mut Terms) {
        let g = measure_of(b);
        let l = self.lambda[g] as f64 / FP as f64;
        let (a, r) = (self.plan.muni[g], self.plan.region[g]);
        let m = self.munis as u32;
        let reps = if kind.is_total() {
            self.groups as u32
        } else {
            1
        };
        match kind {
            RowKind::MuniCell | RowKind::MuniTotal => {
                out.push((1.0 - l, a, reps));
                if m > 1 {
                    out.push((-l, a, (m - 1) * reps));
                }
                out.push((l, r, reps));
            }
            RowKind::RegionCell | RowKind::RegionTotal => {
                let ml = f64::from(m) * l;
                out.push((1.0 - ml, a, m * reps));
                out.push((ml, r, reps));
            }
            RowKind::ProviderCell | RowKind::ProviderTotal => {
                out.push((1.0, self.plan.provider, reps));
            }
        }
    }

    fn variance(&self, bins: &[usize], kind: RowKind) -> f64 {
        let mut terms = Terms::new();
        for b in bins {
            self.terms(*b, kind, &mut terms);
        }
        super::plan::terms_variance(&terms)
    }
}

/// Publication thresholds, computed once per (denominator, kind of row).
struct Thresholds<'a> {
    noise: &'a Noise<'a>,
    k: u64,
    per_child_in_total: u64,
    delta: f64,
    cache: BTreeMap<(&'static str, RowKind), u64>,
}

impl Thresholds<'_> {
    /// The smallest noisy count that publishes: a cell of fewer than k children has a true count of
    /// at most (k - 1) (one contribution per child and target group; `c` in a total row), and its
    /// noise exceeds z with probability at most delta.
    fn get(&mut self, name: &'static str, bins: &[usize], kind: RowKind) -> u64 {
        if let Some(t) = self.cache.get(&(name, kind)) {
            return *t;
        }
        let mut terms = Terms::new();
        for b in bins {
            self.noise.terms(*b, kind, &mut terms);
        }
        let per_child = if kind.is_total() {
            self.per_child_in_total
        } else {
            1
        };
        let t = min_noisy_count(self.k, per_child, &terms, self.delta);
        self.cache.insert((name, kind), t);
        t
    }
}

/// The smallest noisy count that publishes a cell whose count has the noise `terms`: a cell of fewer
/// than `k` children has a true count of at most (k - 1) `per_child`, and its noise exceeds the
/// Chernoff bound z with probability at most `delta`.
pub(crate) fn min_noisy_count(k: u64, per_child: u64, terms: &Terms, delta: f64) -> u64 {
    let z = tail_bound(terms, delta);
    let t = (k.saturating_sub(1) * per_child) as f64 + z;
    if t.is_finite() {
        t.ceil() as u64
    } else {
        u64::MAX
    }
}

pub(crate) fn div_round(n: i128, d: i128) -> i128 {
    // Half away from zero; d > 0.
    if n >= 0 {
        (2 * n + d) / (2 * d)
    } else {
        -((-2 * n + d) / (2 * d))
    }
}

/// What a cell computes to before its status is decided.
pub(crate) struct Figured {
    pub value: Figure,
    pub low: Figure,
    pub high: Figure,
    pub count: Option<u64>,
    /// Interval width in tenths, for the `unreliable` rule (counts: never withheld for width).
    pub width_tenths: Option<(i64, WidthKind)>,
}

#[derive(Debug, Clone, Copy)]
pub(crate) enum WidthKind {
    Percentage,
    Grade,
}

pub(crate) fn half_tenths(sd_tenths: f64) -> i64 {
    // Half a tenth for the rounding of the value to one decimal.
    let h = Z95 * sd_tenths + 0.5;
    if h.is_finite() {
        h.ceil() as i64
    } else {
        i64::MAX / 4
    }
}

pub(crate) fn round_count(v_fp: i128, step: i128) -> i64 {
    let v = v_fp.max(0);
    (div_round(v, step * FP) * step) as i64
}

pub(crate) fn fp_f64(v: i128) -> f64 {
    v as f64 / FP as f64
}

/// A percentage (tenths of a percent) of `y` over `n`, both estimates, with the delta-method variance
/// var(y)/n^2 - 2 y cov/n^3 + y^2 var(n)/n^4.
pub(crate) fn share(y: i128, n: i128, vy: f64, vn: f64, cov: f64, rounding: i128) -> Figured {
    let yc = y.clamp(0, n.max(0));
    let value = if n > 0 {
        ((2000 * yc + n) / (2 * n)) as i64
    } else {
        0
    };
    let (yf, nf) = (fp_f64(yc), fp_f64(n).max(1e-9));
    let var = vy / (nf * nf) - 2.0 * yf * cov / (nf * nf * nf) + yf * yf * vn / nf.powi(4);
    let half = half_tenths(var.max(0.0).sqrt() * 1000.0);
    let (low, high) = ((value - half).max(0), (value + half).min(1000));
    Figured {
        value: Figure::Tenths(value),
        low: Figure::Tenths(low),
        high: Figure::Tenths(high),
        count: Some(round_count(n, rounding) as u64),
        width_tenths: Some((high - low, WidthKind::Percentage)),
    }
}

fn mean(s: i128, n: i128, vs: f64, vn: f64, grade: bool, rounding: i128) -> Figured {
    // tevredenheid: 5.5 + (s / 2) / n grade points, in tenths 55 + 5 s / n; doelrealisatie:
    // 500 + s / n tenths of a percent.
    let scale = if grade {
        MeanScale::GRADE
    } else {
        MeanScale::GOAL
    };
    centred_mean(s, n, vs, vn, &scale, rounding)
}

/// How a mean is read from a centred sum: values clamped to `lower..=upper` (in tenths of the figure)
/// are summed as `units_per_value * value - centre` in whole sum units, so the mean in tenths is
/// `centre_tenths + tenths_per_unit * s / n`.
#[derive(Debug, Clone, Copy)]
pub(crate) struct MeanScale {
    pub centre_tenths: i128,
    /// Tenths of the figure per unit of the centred sum.
    pub tenths_per_unit: i128,
    /// Sum units per unit of the figure (2: half grade points; 1: tenths of a percent).
    pub units_per_value: f64,
    /// Tenths of the figure per unit of the figure (10 for grade points, 1 for tenths of a percent).
    pub tenths_per_value: f64,
    pub lower: i64,
    pub upper: i64,
    pub kind: WidthKind,
}

impl MeanScale {
    /// tevredenheid: half grade points around 5.5, grades 1..10.
    pub const GRADE: MeanScale = MeanScale {
        centre_tenths: 55,
        tenths_per_unit: 5,
        units_per_value: 2.0,
        tenths_per_value: 10.0,
        lower: 10,
        upper: 100,
        kind: WidthKind::Grade,
    };
    /// doelrealisatie: tenths of a percent around 50%, 0..100%.
    pub const GOAL: MeanScale = MeanScale {
        centre_tenths: 500,
        tenths_per_unit: 1,
        units_per_value: 1.0,
        tenths_per_value: 1.0,
        lower: 0,
        upper: 1000,
        kind: WidthKind::Percentage,
    };
}

/// A mean of a centred sum `s` over `n` (both fixed-point estimates, variances `vs` and `vn`), with
/// the delta-method variance var(s)/n^2 + s^2 var(n)/n^4 in the figure's units.
pub(crate) fn centred_mean(
    s: i128,
    n: i128,
    vs: f64,
    vn: f64,
    scale: &MeanScale,
    rounding: i128,
) -> Figured {
    let nn = n.max(1);
    let (sf, nf) = (fp_f64(s), fp_f64(nn));
    let value = (scale.centre_tenths + div_round(scale.tenths_per_unit * s, nn))
        .clamp(i128::from(scale.lower), i128::from(scale.upper)) as i64;
    let h = scale.units_per_value;
    let var = (vs / (h * h)) / (nf * nf) + (sf / h).powi(2) * vn / nf.powi(4);
    let sd_tenths = var.max(0.0).sqrt() * scale.tenths_per_value;
    let half = half_tenths(sd_tenths);
    let (low, high) = (
        (value - half).max(scale.lower),
        (value + half).min(scale.upper),
    );
    Figured {
        value: Figure::Tenths(value),
        low: Figure::Tenths(low),
        high: Figure::Tenths(high),
        count: Some(round_count(n, rounding) as u64),
        width_tenths: Some((high - low, scale.kind)),
    }
}

pub(crate) fn count(v: i128, var: f64, rounding: i128) -> Figured {
    let value = round_count(v, rounding);
    let h = Z95 * var.max(0.0).sqrt() + rounding as f64 / 2.0;
    let half = if h.is_finite() {
        h.ceil() as i64
    } else {
        i64::MAX / 4
    };
    Figured {
        value: Figure::Whole(value),
        low: Figure::Whole((value - half).max(0)),
        high: Figure::Whole(value.saturating_add(half)),
        count: None,
        width_tenths: None,
    }
}

/// Everything a round's releases are assembled from, apart from the measurement.
#[derive(Debug)]
pub struct RoundContext<'a> {
    pub region: &'a RegionConfig,
    pub plan: &'a NoisePlan,
    /// Nano-rho per data year, as charged.
    pub charges: &'a [(u16, i64)],
}

/// The privacy statement every release of the round carries.
pub fn privacy_statement(ctx: &RoundContext<'_>) -> PrivacyStatement {
    let q = &ctx.region.privacy;
    let rho = q.rho_per_data_year;
    let eps = epsilon_of(rho.approx(), q.delta.approx());
    let eps_tenths = if eps.is_finite() {
        (eps * 10.0).ceil() as i64
    } else {
        i64::MAX
    };
    let eps_text = Figure::Tenths(eps_tenths).to_string();
    PrivacyStatement {
        mechanism: q.mechanism.as_str().into(),
        round_rho: ctx.plan.round_rho,
        charges: NoisePlan::year_charges(ctx.charges),
        rho_per_data_year: rho,
        epsilon_per_data_year: Figure::Tenths(eps_tenths),
        delta: q.delta,
        guarantee_en: format!(
            "Everything ever published that reads data of one calendar year is together {rho}-zCDP for \
             any one child's data, which implies ({eps_text}, {})-differential privacy. A child in care \
             in N calendar years is protected at N times that.",
            q.delta
        ),
        guarantee_nl: format!(
            "Alles wat ooit gepubliceerd wordt over gegevens van één kalenderjaar is samen {rho}-zCDP \
             voor de gegevens van één kind; dat is ({eps_text}, {})-differentiële privacy. Voor een \
             kind dat in N kalenderjaren in zorg is, geldt N keer die grens.",
            q.delta
        ),
    }
}

/// The releases of a round: one per municipality, the region's, and the per-provider table (with each
/// provider's own rows as `own`, its own data). Post-processing of `m` only.
pub fn assemble(
    ctx: &RoundContext<'_>,
    frame: &Frame,
    m: &Measurement,
    own: &[Bins],
) -> Result<Vec<Release>, ReleaseError> {
    let region = ctx.region;
    let policy = &region.policy;
    let crit = criteria()?;
    let (m_n, t_n, p_n) = (frame.munis.len(), frame.groups.len(), frame.providers.len());
    if m.muni.len() != m_n * t_n
        || m.region.len() != t_n
        || m.provider_repeat.len() != p_n * t_n
        || own.len() != p_n * t_n
    {
        return Err(ReleaseError::Plan("the measurement does not fit the frame"));
    }
    let noise = Noise::new(ctx.plan, m_n, t_n);
    let delta = ctx.region.privacy.suppression_delta.approx();
    let mut thresholds = Thresholds {
        noise: &noise,
        k: u64::from(policy.k),
        per_child_in_total: u64::from(policy.max_cells_per_client.max(1)),
        delta,
        cache: BTreeMap::new(),
    };
    let rounding = i128::from(policy.count_rounding.max(1));
    let max = &region.privacy.max_interval;

    // Reconciled estimates per municipality x target group; the region's are their sums.
    let muni_est = reconcile(m, &noise.lambda, m_n, t_n);
    let sum_rows = |rows: &mut dyn Iterator<Item = [i128; BINS]>| {
        rows.fold([0i128; BINS], |mut acc, r| {
            for b in 0..BINS {
                acc[b] += r[b];
            }
            acc
        })
    };

    let mut figure_cell = |row: &RowEst, c: &Planned| -> ReleaseCell {
        let (criterion, comp, den_name, den_bins) = c;
        let den: i128 = den_bins.iter().map(|b| row.val[*b]).sum();
        let threshold = thresholds.get(den_name, den_bins, row.kind);
        let published_enough = den >= i128::from(threshold.min(i64::MAX as u64)) * FP;
        if !published_enough {
            return withheld(criterion, CellStatus::Suppressed);
        }
        let var = |bins: &[usize]| noise.variance(bins, row.kind);
        let sum = |bins: &[usize]| bins.iter().map(|b| row.val[*b]).sum::<i128>();
        let f = match comp {
            Comp::Count(bins) => count(sum(bins), var(bins), rounding),
            Comp::Share { part, rest } => {
                let (vy, vr) = (var(part), var(rest));
                share(sum(part), sum(part) + sum(rest), vy, vy + vr, vy, rounding)
            }
            Comp::Repeat => share(
                row.val[REPEAT_YES],
                den,
                var(&[REPEAT_YES]),
                var(OUTCOME_ENDINGS),
                0.0,
                rounding,
            ),
            Comp::Mean {
                sum: s,
                count: n,
                grade,
            } => mean(
                row.val[*s],
                row.val[*n],
                var(&[*s]),
                var(&[*n]),
                *grade,
                rounding,
            ),
        };
        publish_or_unreliable(criterion, f, max)
    };

    let label = |t: Option<usize>| match t {
        Some(t) => (frame.groups[t].1.clone(), frame.groups[t].2.clone()),
        None => ("Totaal".to_string(), "Total".to_string()),
    };
    let group_code = |t: Option<usize>| t.map(|t| frame.groups[t].0.clone());

    let mut rows_of = |cells: &[[i128; BINS]], cell_kind: RowKind, total_kind: RowKind| {
        let mut rows = Vec::with_capacity(cells.len() + 1);
        for (t, val) in cells.iter().enumerate() {
            let est = RowEst {
                val: *val,
                kind: cell_kind,
            };
            let (label_nl, label_en) = label(Some(t));
            rows.push(ReleaseRow {
                target_group: group_code(Some(t)),
                provider: None,
                label_nl,
                label_en,
                cells: crit.iter().map(|c| figure_cell(&est, c)).collect(),
            });
        }
        let total = RowEst {
            val: sum_rows(&mut cells.iter().copied()),
            kind: total_kind,
        };
        let (label_nl, label_en) = label(None);
        rows.push(ReleaseRow {
            target_group: None,
            provider: None,
            label_nl,
            label_en,
            cells: crit.iter().map(|c| figure_cell(&total, c)).collect(),
        });
        rows
    };

    let base = |scope: ReleaseScope, rows: Vec<ReleaseRow>| Release {
        id: None,
        round: None,
        version: None,
        created_at: None,
        frozen: false,
        region: frame.region.clone(),
        scope,
        period: frame.period,
        as_of: frame.as_of,
        privacy: privacy_statement(ctx),
        policy: policy.clone(),
        noise: NoiseDescription {
            mechanism: ctx.plan.mechanism.as_str().into(),
            contributions_per_client: ctx.plan.contributions,
            measures: ctx.plan.describe(),
            count_rounding: policy.count_rounding,
            interval_confidence_pct: 95,
            suppression_delta: region.privacy.suppression_delta,
            thresholds: Vec::new(),
        },
        criteria: crit.iter().map(|c| c.0.clone()).collect(),
        rows,
    };

    let mut releases = Vec::with_capacity(m_n + 2);
    for (mi, code) in frame.munis.iter().enumerate() {
        let rows = rows_of(
            &muni_est[mi * t_n..(mi + 1) * t_n],
            RowKind::MuniCell,
            RowKind::MuniTotal,
        );
        releases.push(base(ReleaseScope::Municipality(*code), rows));
    }
    let region_est: Vec<[i128; BINS]> = (0..t_n)
        .map(|t| sum_rows(&mut (0..m_n).map(|mi| muni_est[mi * t_n + t])))
        .collect();
    let rows = rows_of(&region_est, RowKind::RegionCell, RowKind::RegionTotal);
    releases.push(base(ReleaseScope::Region, rows));

    // The per-provider table: the provider's own figures, exact; herhaald beroep noisy.
    let repeat_idx = crit.iter().position(|c| matches!(c.1, Comp::Repeat));
    let mut provider_rows = Vec::with_capacity(p_n * (t_n + 1));
    for (pi, agb) in frame.providers.iter().enumerate() {
        let own_cells = &own[pi * t_n..(pi + 1) * t_n];
        let rep_cells = &m.provider_repeat[pi * t_n..(pi + 1) * t_n];
        for t in 0..=t_n {
            let (own_val, rep, kind) = if t < t_n {
                (own_cells[t], rep_cells[t], RowKind::ProviderCell)
            } else {
                let mut o = [0i64; BINS];
                let mut r: RepeatBins = [0; 2];
                for (a, b) in own_cells.iter().zip(rep_cells) {
                    super::aggregate::add_into(&mut o, a);
                    r[0] += b[0];
                    r[1] += b[1];
                }
                (o, r, RowKind::ProviderTotal)
            };
            let group = (t < t_n).then_some(t);
            let (label_nl, label_en) = label(group);
            let mut cells: Vec<ReleaseCell> =
                crit.iter().map(|c| exact_cell(&own_val, c)).collect();
            if let Some(i) = repeat_idx {
                let est = RepeatEst {
                    val: [i128::from(rep[0]) * FP, i128::from(rep[1]) * FP],
                    kind,
                };
                cells[i] =
                    provider_repeat_cell(&crit[i].0, &est, &noise, &mut thresholds, rounding, max);
            }
            provider_rows.push(ReleaseRow {
                target_group: group_code(group),
                provider: Some(*agb),
                label_nl,
                label_en,
                cells,
            });
        }
    }
    releases.push(base(ReleaseScope::Providers, provider_rows));

    let listed: Vec<Threshold> = thresholds
        .cache
        .iter()
        .map(|((name, kind), t)| Threshold {
            denominator: (*name).into(),
            row: kind.as_str().into(),
            min_noisy_count: *t,
        })
        .collect();
    for r in &mut releases {
        r.noise.thresholds = listed.clone();
    }
    Ok(releases)
}

/// The weighted least squares estimates of the municipal cells (fixed point): each municipal value
/// moves by lambda times the difference between the region's measurement and the municipal sum, so
/// that the municipalities add up to the region's estimate exactly.
fn reconcile(
    m: &Measurement,
    lambda: &[i128; MEASURES.len()],
    m_n: usize,
    t_n: usize,
) -> Vec<[i128; BINS]> {
    let mut est: Vec<[i128; BINS]> = m
        .muni
        .iter()
        .map(|cell| cell.map(|v| i128::from(v) * FP))
        .collect();
    for (t, region) in m.region.iter().enumerate() {
        let mut diff = region.map(i128::from);
        for mi in 0..m_n {
            for (d, v) in diff.iter_mut().zip(&m.muni[mi * t_n + t]) {
                *d -= i128::from(*v);
            }
        }
        for mi in 0..m_n {
            for (b, (e, d)) in est[mi * t_n + t].iter_mut().zip(diff).enumerate() {
                *e += lambda[measure_of(b)] * d;
            }
        }
    }
    est
}

fn withheld(criterion: &Criterion, status: CellStatus) -> ReleaseCell {
    ReleaseCell {
        criterion: criterion.code.clone(),
        status,
        value: None,
        ci95_low: None,
        ci95_high: None,
        count: None,
        exact: false,
    }
}

/// Whether a figure's 95% interval is wider than the region allows for its kind (counts never are).
pub(crate) fn is_unreliable(f: &Figured, max: &kwm_schemas::region::MaxInterval) -> bool {
    let too_wide = |width: i64, limit: Decimal| {
        // width (tenths) > limit (points) x 10, exactly.
        let (n, d) = limit.fraction();
        i128::from(width) * i128::from(d) > 10 * i128::from(n)
    };
    match f.width_tenths {
        Some((w, WidthKind::Percentage)) => too_wide(w, max.percentage),
        Some((w, WidthKind::Grade)) => too_wide(w, max.grade),
        None => false,
    }
}

fn publish_or_unreliable(
    criterion: &Criterion,
    f: Figured,
    max: &kwm_schemas::region::MaxInterval,
) -> ReleaseCell {
    if is_unreliable(&f, max) {
        return withheld(criterion, CellStatus::Unreliable);
    }
    ReleaseCell {
        criterion: criterion.code.clone(),
        status: CellStatus::Published,
        value: Some(f.value),
        ci95_low: Some(f.low),
        ci95_high: Some(f.high),
        count: f.count,
        exact: false,
    }
}

/// A provider's own figure from its own rows: exact, no interval. Herhaald beroep is replaced by the
/// noisy one (other providers' rows decide it).
fn exact_cell(own: &Bins, c: &Planned) -> ReleaseCell {
    let (criterion, comp, _, den_bins) = c;
    let den: i64 = den_bins.iter().map(|b| own[*b]).sum();
    if den <= 0 {
        return ReleaseCell {
            exact: true,
            ..withheld(criterion, CellStatus::Suppressed)
        };
    }
    let fp = |v: i64| i128::from(v) * FP;
    let sum = |bins: &[usize]| bins.iter().map(|b| own[*b]).sum::<i64>();
    let f = match comp {
        Comp::Count(bins) => Figured {
            value: Figure::Whole(sum(bins)),
            low: Figure::Whole(sum(bins)),
            high: Figure::Whole(sum(bins)),
            count: None,
            width_tenths: None,
        },
        Comp::Share { part, rest } => {
            share(fp(sum(part)), fp(sum(part) + sum(rest)), 0.0, 0.0, 0.0, 1)
        }
        Comp::Repeat => share(fp(own[REPEAT_YES]), fp(den), 0.0, 0.0, 0.0, 1),
        Comp::Mean {
            sum: s,
            count: n,
            grade,
        } => mean(fp(own[*s]), fp(own[*n]), 0.0, 0.0, *grade, 1),
    };
    ReleaseCell {
        criterion: criterion.code.clone(),
        status: CellStatus::Published,
        value: Some(f.value),
        ci95_low: None,
        ci95_high: None,
        count: f.count,
        exact: true,
    }
}

fn provider_repeat_cell(
    criterion: &Criterion,
    est: &RepeatEst,
    noise: &Noise<'_>,
    thresholds: &mut Thresholds<'_>,
    rounding: i128,
    max: &kwm_schemas::region::MaxInterval,
) -> ReleaseCell {
    // Two one-hot values of the provider measure: noise terms as `ProviderCell` per value.
    let den = est.val[0] + est.val[1];
    let threshold = thresholds.get("herhaald_beroep_aanbieder", &[0, 0], est.kind);
    if den < i128::from(threshold.min(i64::MAX as u64)) * FP {
        return withheld(criterion, CellStatus::Suppressed);
    }
    let reps = if est.kind.is_total() {
        noise.groups as f64
    } else {
        1.0
    };
    let v = noise.plan.provider.variance() * reps;
    let f = share(est.val[0], den, v, 2.0 * v, v, rounding);
    publish_or_unreliable(criterion, f, max)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        /// Whatever the measurement, the reconciled municipalities add up to the region's estimate,
        /// which lies between the region's measurement and the municipal sum; a measurement that
        /// already agrees is left as it is.
        #[test]
        #[allow(clippy::needless_range_loop)]
        fn reconciliation_is_consistent(
            cells in proptest::collection::vec(-50i64..500, 3 * 2 * BINS),
            region in proptest::collection::vec(-50i64..1500, 2 * BINS),
            lambda_fp in 0i128..(FP / 3),
        ) {
            let (m_n, t_n) = (3, 2);
            let as_bins = |v: &[i64]| -> Vec<Bins> {
                v.chunks(BINS).map(|c| c.try_into().expect("bins")).collect()
            };
            let m = Measurement {
                muni: as_bins(&cells),
                region: as_bins(&region),
                provider_repeat: Vec::new(),
            };
            let lambda = [lambda_fp; MEASURES.len()];
            let est = reconcile(&m, &lambda, m_n, t_n);
            for t in 0..t_n {
                for b in 0..BINS {
                    let s: i128 = (0..m_n).map(|mi| i128::from(m.muni[mi * t_n + t][b])).sum();
                    let r = i128::from(m.region[t][b]);
                    let total: i128 = (0..m_n).map(|mi| est[mi * t_n + t][b]).sum();
                    // total = S + M lambda (r - S): between S and r, since M lambda < 1.
                    prop_assert_eq!(total, s * FP + m_n as i128 * lambda_fp * (r - s));
                    let (lo, hi) = (s.min(r) * FP, s.max(r) * FP);
                    prop_assert!(lo <= total && total <= hi);
                }
            }
            let agreeing = Measurement {
                region: (0..t_n)
                    .map(|t| {
                        let mut b = [0i64; BINS];
                        for mi in 0..m_n {
                            super::super::aggregate::add_into(&mut b, &m.muni[mi * t_n + t]);
                        }
                        b
                    })
                    .collect(),
                ..m.clone()
            };
            let est = reconcile(&agreeing, &lambda, m_n, t_n);
            for (e, x) in est.iter().zip(&agreeing.muni) {
                prop_assert_eq!(*e, x.map(|v| i128::from(v) * FP));
            }
        }
    }
}
