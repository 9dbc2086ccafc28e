//! Answers to research queries, from the release index's shards, with one noisy measurement per
//! answer; and the estimate of a query's cost and accuracy, from the query and the region file alone.
//!
//! 1. **Groups** are the full cross product of the grouping columns' values (region file, record
//!    schema, the query's window), in a fixed order, empty groups included and noised: the answer's
//!    shape is a function of the query and the region file only.
//! 2. **Bounding**: a child contributes at most `c = max_cells_per_client` trajectories to an answer;
//!    of more, the first `c` in the keyed order of the rounds (`release::bounding`) are kept. A kept
//!    trajectory lands in one group. So a child moves a per-trajectory count by at most `c` in L1 and
//!    L2 (all of them in one cell at worst), a centred sum by `c D`, and the count of children by
//!    at most one in each of at most `c` groups (L2 `sqrt(c)`).
//! 3. **Noise**: the rho is split over the noisy measurements the columns need, each measured once
//!    (a histogram and its quantiles share one; a sum and a mean of the same clamped values share
//!    theirs) by weight: 4 for counts, proportions and histograms, 1 + 3 for a clamped count and its
//!    centred sum. Each measurement gets discrete Gaussian noise of sigma^2 = L2^2 / (2 rho_m) (or
//!    discrete Laplace for a pure-DP region), from the same function as the rounds' noise.
//! 4. **Figures, intervals and statuses** by the rounds' functions (`release::estimate`), decided on
//!    noisy figures only: a cell is `suppressed` below the noisy count at which a group of fewer than
//!    k children is published with probability at most `suppression_delta`, `unreliable` when its
//!    95% interval is wider than the region allows.

use std::fmt;

use rayon::prelude::*;

use kwm_schemas::region::{Mechanism, Rho};
use kwm_schemas::release::{CellStatus, Figure, MeasureNoise, Rational, YearCharge};
use kwm_schemas::research::{
    AnswerCell, AnswerColumn, AnswerRow, ColumnEstimate, ColumnKind, ContributionBound, DataWindow,
    ExpectedWidth, QueryEstimate, ResearchAnswer, ResearchPrivacy,
};
use kwm_schemas::RegionConfig;

use super::query::{
    level_label, levels, Bounds, Column, Dimension, Levels, Measure, Numeric, Outcome, Predicate,
    Query, Window,
};
use crate::noise::{NoiseError, NoiseSource};
use crate::release::aggregate::{by_child, each_child};
use crate::release::bounding::{select, OrderKey};
use crate::release::estimate::{
    centred_mean, count, div_round, half_tenths, is_unreliable, min_noisy_count, round_count,
    share, Figured, MeanScale, WidthKind, FP, Z95,
};
use crate::release::plan::{dist_for, epsilon_of, isqrt, Dist, Frac};
use crate::release::rows::OUTSIDE;
use crate::release::{EngineRow, ReleaseError};

/// What an answer is computed from: the release index's rows, all of one child in one shard.
pub struct ResearchInput<'a> {
    pub region: &'a RegionConfig,
    pub shards: &'a [Vec<EngineRow>],
    /// Key of the order in which a child's surplus trajectories are dropped: the rounds' key.
    pub order_key: &'a [u8; 32],
}

impl fmt::Debug for ResearchInput<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ResearchInput")
            .field("region", &self.region.code)
            .field("shards", &self.shards.len())
            .field("order_key", &"<redacted>")
            .finish()
    }
}

/// Why no answer or estimate could be computed. Nothing partial is ever returned.
#[derive(Debug, thiserror::Error)]
pub enum ResearchError {
    #[error("the privacy plan cannot be computed: {0}")]
    Plan(&'static str),
    #[error("a shard of {0} rows is more than one answer can read")]
    TooManyRows(usize),
    #[error("no noise could be drawn, so nothing is answered")]
    Noise(#[from] NoiseError),
}

impl From<ReleaseError> for ResearchError {
    fn from(e: ReleaseError) -> Self {
        match e {
            ReleaseError::Noise(n) => Self::Noise(n),
            ReleaseError::Plan(m) => Self::Plan(m),
            _ => Self::Plan("the noise plan failed"),
        }
    }
}

/// One noisy measurement of every group, shared by the columns that read it.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Primitive {
    Trajectories,
    Children,
    /// [count of values, sum of centred clamped values].
    Clamped(Numeric, Bounds),
    /// [true, false] among the trajectories for which the condition is not NULL.
    Condition(Predicate),
    /// The grades 1..10.
    Histogram,
}

const GRADES: usize = 10;

impl Primitive {
    fn width(&self) -> usize {
        match self {
            Self::Trajectories | Self::Children => 1,
            Self::Clamped(..) | Self::Condition(_) => 2,
            Self::Histogram => GRADES,
        }
    }
}

/// How a clamped value is centred: `units_per_value * clamp(x) - offset`, at most `d` from zero.
#[derive(Debug, Clone, Copy)]
struct Centring {
    units_per_value: i64,
    low: i64,
    high: i64,
    offset: i64,
    d: u64,
    scale: MeanScale,
}

fn centring(n: Numeric, b: Bounds) -> Centring {
    let (lo, hi) = (i64::from(b.low), i64::from(b.high));
    match n {
        // Half grade points around the middle of the bounds.
        Numeric::Satisfaction => Centring {
            units_per_value: 2,
            low: lo,
            high: hi,
            offset: lo + hi,
            d: (hi - lo) as u64,
            scale: MeanScale {
                centre_tenths: i128::from(5 * (lo + hi)),
                tenths_per_unit: 5,
                units_per_value: 2.0,
                tenths_per_value: 10.0,
                lower: 10 * lo,
                upper: 10 * hi,
                kind: WidthKind::Grade,
            },
        },
        // Tenths of a percent around the middle of the bounds (whole percents, so it is whole).
        Numeric::GoalRealisation => Centring {
            units_per_value: 1,
            low: 10 * lo,
            high: 10 * hi,
            offset: 5 * (lo + hi),
            d: (5 * (hi - lo)) as u64,
            scale: MeanScale {
                centre_tenths: i128::from(5 * (lo + hi)),
                tenths_per_unit: 1,
                units_per_value: 1.0,
                tenths_per_value: 1.0,
                lower: 10 * lo,
                upper: 10 * hi,
                kind: WidthKind::Percentage,
            },
        },
    }
}

/// A family of noisy values: one primitive's values that share one noise distribution.
#[derive(Debug, Clone)]
struct Family {
    name: String,
    values: Vec<String>,
    /// Sensitivity of one contribution (as the rounds describe theirs).
    sensitivity: u64,
    rho: Frac,
    dist: Dist,
}

#[derive(Debug, Clone, Copy)]
enum Form {
    Count,
    Sum(Centring),
    Mean(Centring),
    Proportion,
    Bin(usize),
    Quantile(u32),
}

#[derive(Debug, Clone)]
struct ColumnPlan {
    name: String,
    kind: ColumnKind,
    primitive: usize,
    figure: Form,
    /// The noisy count a cell must reach to be published.
    threshold: u64,
}

/// A family before its noise is set: (primitive, name, values, weight, L2^2, L1, sensitivity of one
/// contribution).
type FamilySpec = (usize, String, Vec<String>, u128, u128, u128, u64);

/// The plan of a query: its groups, measurements and noise, from public parameters alone.
struct Plan<'q> {
    query: &'q Query,
    window: Window,
    levels: Vec<Levels>,
    groups: usize,
    primitives: Vec<Primitive>,
    offsets: Vec<usize>,
    slots: usize,
    families: Vec<Family>,
    /// The family of every slot of a group.
    slot_family: Vec<usize>,
    columns: Vec<ColumnPlan>,
    c: u32,
    rounding: i128,
    mechanism: Mechanism,
    rho: Rho,
}

impl<'q> Plan<'q> {
    fn new(query: &'q Query, region: &RegionConfig, rho: Rho) -> Result<Self, ResearchError> {
        let window = query.window();
        let levels: Vec<Levels> = query
            .group_by()
            .iter()
            .map(|d| levels(*d, region, window))
            .collect();
        let groups = levels.iter().map(|l| l.count()).product::<usize>();
        let c = region.policy.max_cells_per_client.max(1);
        let c128 = u128::from(c);

        // The primitives, each once, in the order the columns first need them.
        let mut primitives: Vec<Primitive> = Vec::new();
        let mut need = |p: Primitive| -> usize {
            match primitives.iter().position(|q| *q == p) {
                Some(i) => i,
                None => {
                    primitives.push(p);
                    primitives.len() - 1
                }
            }
        };
        let mut pending: Vec<(String, ColumnKind, usize, Form)> = Vec::new();
        for (name, m) in query.measures() {
            match m {
                Measure::Trajectories => pending.push((
                    name.clone(),
                    ColumnKind::Count,
                    need(Primitive::Trajectories),
                    Form::Count,
                )),
                Measure::Children => pending.push((
                    name.clone(),
                    ColumnKind::Count,
                    need(Primitive::Children),
                    Form::Count,
                )),
                Measure::Sum(n, b) => pending.push((
                    name.clone(),
                    ColumnKind::Sum,
                    need(Primitive::Clamped(*n, *b)),
                    Form::Sum(centring(*n, *b)),
                )),
                Measure::Avg(n, b) => pending.push((
                    name.clone(),
                    ColumnKind::Mean,
                    need(Primitive::Clamped(*n, *b)),
                    Form::Mean(centring(*n, *b)),
                )),
                Measure::Proportion(p) => pending.push((
                    name.clone(),
                    ColumnKind::Percentage,
                    need(Primitive::Condition(p.clone())),
                    Form::Proportion,
                )),
                Measure::Histogram => {
                    let p = need(Primitive::Histogram);
                    for g in 0..GRADES {
                        pending.push((
                            format!("{name}[{}]", g + 1),
                            ColumnKind::Count,
                            p,
                            Form::Bin(g),
                        ));
                    }
                }
                Measure::Quantile { permille } => pending.push((
                    name.clone(),
                    ColumnKind::Quantile,
                    need(Primitive::Histogram),
                    Form::Quantile(*permille),
                )),
            }
        }

        // Families: (primitive, name, values, weight, L2^2, L1, sensitivity per contribution).
        let mut specs: Vec<FamilySpec> = Vec::new();
        for (i, p) in primitives.iter().enumerate() {
            let label = |m: &Measure| {
                query
                    .measures()
                    .iter()
                    .find(|(_, x)| x == m)
                    .map(|(n, _)| n.clone())
            };
            match p {
                Primitive::Trajectories => specs.push((
                    i,
                    "COUNT(*)".into(),
                    vec!["trajectories".into()],
                    4,
                    c128 * c128,
                    c128,
                    1,
                )),
                Primitive::Children => specs.push((
                    i,
                    "COUNT(DISTINCT client)".into(),
                    vec!["children".into()],
                    4,
                    c128,
                    c128,
                    1,
                )),
                Primitive::Clamped(n, b) => {
                    let name = format!("{}[{}..{}]", n.name(), b.low, b.high);
                    let d = u128::from(centring(*n, *b).d);
                    specs.push((
                        i,
                        format!("{name} count"),
                        vec!["count".into()],
                        1,
                        c128 * c128,
                        c128,
                        1,
                    ));
                    specs.push((
                        i,
                        format!("{name} centred sum"),
                        vec![match n {
                            Numeric::Satisfaction => "sum_half_points_around_the_middle".into(),
                            Numeric::GoalRealisation => {
                                "sum_tenths_of_a_percent_around_the_middle".into()
                            }
                        }],
                        3,
                        c128 * c128 * d * d,
                        c128 * d,
                        d as u64,
                    ));
                }
                Primitive::Condition(pred) => specs.push((
                    i,
                    label(&Measure::Proportion(pred.clone()))
                        .unwrap_or_else(|| "PROPORTION".into()),
                    vec!["true".into(), "false".into()],
                    4,
                    c128 * c128,
                    c128,
                    1,
                )),
                Primitive::Histogram => specs.push((
                    i,
                    "HISTOGRAM(satisfaction)".into(),
                    (1..=GRADES).map(|g| g.to_string()).collect(),
                    4,
                    c128 * c128,
                    c128,
                    1,
                )),
            }
        }
        let total_weight: u128 = specs.iter().map(|s| s.3).sum();
        let round = Frac::of(rho);
        let overflow =
            || ResearchError::Plan("the privacy parameters are too fine to compute with");
        let eps_micro = {
            let scaled = round
                .mul(Frac::new(2_000_000_000_000, 1))
                .ok_or_else(overflow)?;
            isqrt(scaled.n / scaled.d)
        };
        let mut families = Vec::with_capacity(specs.len());
        let mut family_of_primitive: Vec<Vec<usize>> = vec![Vec::new(); primitives.len()];
        for (p, name, values, weight, l2sq, l1, sensitivity) in specs {
            let rho_m = round
                .mul(Frac::new(weight, total_weight))
                .ok_or_else(overflow)?;
            let eps_m = || {
                Frac::new(eps_micro, 1_000_000)
                    .mul(rho_m)
                    .and_then(|f| f.mul(round.inv()))
            };
            let dist = dist_for(region.privacy.mechanism, l2sq, l1, rho_m, eps_m)?;
            family_of_primitive[p].push(families.len());
            families.push(Family {
                name,
                values,
                sensitivity,
                rho: rho_m,
                dist,
            });
        }
        let mut offsets = Vec::with_capacity(primitives.len());
        let mut slot_family = Vec::new();
        for (i, p) in primitives.iter().enumerate() {
            offsets.push(slot_family.len());
            let fams = &family_of_primitive[i];
            for v in 0..p.width() {
                // A clamped pair: count, then sum, each its own family.
                slot_family.push(fams[v.min(fams.len() - 1)]);
            }
        }
        let slots = slot_family.len();

        let k = u64::from(region.policy.k);
        let delta = region.privacy.suppression_delta.approx();
        let columns = pending
            .into_iter()
            .map(|(name, kind, primitive, figure)| {
                let dist = families[slot_family[offsets[primitive]]].dist;
                let (draws, per_child) = match primitives[primitive] {
                    Primitive::Children => (1, 1),
                    Primitive::Trajectories | Primitive::Clamped(..) => (1, u64::from(c)),
                    Primitive::Condition(_) => (2, u64::from(c)),
                    Primitive::Histogram => (GRADES as u32, u64::from(c)),
                };
                let threshold = min_noisy_count(k, per_child, &vec![(1.0, dist, draws)], delta);
                ColumnPlan {
                    name,
                    kind,
                    primitive,
                    figure,
                    threshold,
                }
            })
            .collect();
        Ok(Self {
            query,
            window,
            levels,
            groups,
            primitives,
            offsets,
            slots,
            families,
            slot_family,
            columns,
            c,
            rounding: i128::from(region.policy.count_rounding.max(1)),
            mechanism: region.privacy.mechanism,
            rho,
        })
    }

    fn slot_dist(&self, primitive: usize, value: usize) -> Dist {
        self.families[self.slot_family[self.offsets[primitive] + value]].dist
    }

    fn privacy(&self, region: &RegionConfig) -> ResearchPrivacy {
        let q = &region.privacy;
        let eps = epsilon_of(self.rho.approx(), q.delta.approx());
        let eps_tenths = if eps.is_finite() {
            (eps * 10.0).ceil() as i64
        } else {
            i64::MAX
        };
        let eps_text = Figure::Tenths(eps_tenths).to_string();
        let (first, last) = (self.window.first_year, self.window.last_year);
        ResearchPrivacy {
            mechanism: self.mechanism.as_str().into(),
            rho: self.rho,
            charges: self
                .window
                .years()
                .map(|y| YearCharge {
                    data_year: y,
                    rho: self.rho,
                })
                .collect(),
            measurements: self
                .families
                .iter()
                .map(|f| MeasureNoise {
                    name: f.name.clone(),
                    table: "research".into(),
                    values: f.values.clone(),
                    sensitivity: f.sensitivity,
                    rho: f.rho.rational(),
                    variance: match f.dist {
                        Dist::Gaussian(v) => Some(Rational {
                            numerator: v.num,
                            denominator: v.den,
                        }),
                        Dist::Laplace(_) => None,
                    },
                    scale: match f.dist {
                        Dist::Laplace(s) => Some(Rational {
                            numerator: s.num,
                            denominator: s.den,
                        }),
                        Dist::Gaussian(_) => None,
                    },
                })
                .collect(),
            count_rounding: region.policy.count_rounding,
            interval_confidence_pct: 95,
            k: region.policy.k,
            suppression_delta: q.suppression_delta,
            guarantee_en: format!(
                "This answer is {}-zCDP for any one child's data, which on its own implies \
                 ({eps_text}, {})-differential privacy. It is charged to every data year from {first} \
                 to {last}, under the region's cap per data year.",
                self.rho, q.delta
            ),
            guarantee_nl: format!(
                "Dit antwoord is {}-zCDP voor de gegevens van één kind; op zichzelf is dat \
                 ({eps_text}, {})-differentiële privacy. Het wordt afgeschreven van elk gegevensjaar \
                 van {first} tot en met {last}, binnen de grens per gegevensjaar van de regio.",
                self.rho, q.delta
            ),
        }
    }

    fn bounding(&self) -> ContributionBound {
        let c = self.c;
        ContributionBound {
            max_trajectories_per_child: c,
            rule_en: format!(
                "A child contributes at most {c} trajectories to this answer; of more, the first {c} \
                 in the service's keyed order are kept, whatever they are. COUNT(DISTINCT client) \
                 counts a child once in each group it is in."
            ),
            rule_nl: format!(
                "Een kind telt met hooguit {c} trajecten mee in dit antwoord; van meer worden de \
                 eerste {c} in de geheime volgorde van de dienst gehouden, wat ze ook zijn. \
                 COUNT(DISTINCT client) telt een kind eenmaal in elke groep waarin het zit."
            ),
        }
    }

    fn columns(&self) -> Vec<AnswerColumn> {
        self.columns
            .iter()
            .map(|c| AnswerColumn {
                name: c.name.clone(),
                kind: c.kind,
                min_noisy_count: c.threshold,
            })
            .collect()
    }

    fn data_window(&self) -> DataWindow {
        DataWindow {
            first_year: self.window.first_year,
            last_year: self.window.last_year,
        }
    }
}

/// A column's value of a row as the query reads it, within the window whose last month is `last`:
/// of a trajectory that ends after the window, the end columns and the outcomes are NULL.
fn value(row: &EngineRow, column: Column, last: i32) -> Option<i32> {
    let ended = row.end <= last;
    let d = row.dims;
    let month = |m: i32| (m.div_euclid(12), m.rem_euclid(12));
    match column {
        Column::Dim(dim) => match dim {
            Dimension::Municipality => Some(i32::from(row.muni)),
            Dimension::TargetGroup => Some(i32::from(row.group)),
            Dimension::Intensity => d.intensity().map(i32::from),
            Dimension::ProductCategory => d.product_category().map(i32::from),
            Dimension::AgeBand => Some(i32::from(d.age_band())),
            Dimension::StartYear => Some(month(row.start).0),
            Dimension::StartQuarter => Some(month(row.start).1 / 3 + 1),
            Dimension::StartMonth => Some(month(row.start).1 + 1),
            Dimension::EndYear => ended.then(|| month(row.end).0),
            Dimension::EndQuarter => ended.then(|| month(row.end).1 / 3 + 1),
            Dimension::EndMonth => ended.then(|| month(row.end).1 + 1),
            Dimension::EndReason => {
                let code = d.end_reason().filter(|_| ended)?;
                kwm_schemas::codes::EndReason::CODES
                    .iter()
                    .position(|c| *c == code)
                    .map(|p| p as i32)
            }
            Dimension::Respondent => d.respondent().filter(|_| ended).map(i32::from),
            Dimension::Instrument => d.instrument().map(i32::from),
        },
        Column::Outcome(o) if ended => match o {
            Outcome::Satisfaction => row.grade.map(i32::from),
            Outcome::GoalRealisation => row.goal_tenths.map(i32::from),
            Outcome::CarryOnWithoutHelp => row.without_help.map(i32::from),
            Outcome::Improved => row.improved.map(i32::from),
        },
        Column::Outcome(_) => None,
    }
}

/// What every shard's pass shares.
struct Pass<'p, 'q> {
    plan: &'p Plan<'q>,
    first: i32,
    last: i32,
    strides: Vec<usize>,
    key: OrderKey,
    max: usize,
    children: Option<usize>,
}

impl Pass<'_, '_> {
    /// The group of a row the query reads, `None` for a row it does not.
    fn group(&self, row: &EngineRow) -> Option<usize> {
        if !row.overlaps(self.first, self.last) || row.muni == OUTSIDE || row.group == OUTSIDE {
            return None;
        }
        let v = |c: Column| value(row, c, self.last);
        if let Some(f) = self.plan.query.filter() {
            if f.eval(&v) != Some(true) {
                return None;
            }
        }
        let mut g = 0;
        for ((d, l), stride) in self
            .plan
            .query
            .group_by()
            .iter()
            .zip(&self.plan.levels)
            .zip(&self.strides)
        {
            g += l.index(v(Column::Dim(*d)))? * stride;
        }
        Some(g)
    }

    /// Adds one kept trajectory to its group.
    fn add(&self, row: &EngineRow, cell: &mut [i64]) {
        let v = |c: Column| value(row, c, self.last);
        for (p, off) in self.plan.primitives.iter().zip(&self.plan.offsets) {
            match p {
                Primitive::Trajectories => cell[*off] += 1,
                Primitive::Children => {}
                Primitive::Clamped(n, b) => {
                    if let Some(x) = v(Column::Outcome(n.outcome())) {
                        let c = centring(*n, *b);
                        cell[*off] += 1;
                        cell[off + 1] +=
                            c.units_per_value * i64::from(x).clamp(c.low, c.high) - c.offset;
                    }
                }
                Primitive::Condition(pred) => match pred.eval(&v) {
                    Some(true) => cell[*off] += 1,
                    Some(false) => cell[off + 1] += 1,
                    None => {}
                },
                Primitive::Histogram => {
                    if let Some(g) = v(Column::Outcome(Outcome::Satisfaction)) {
                        cell[off + (g.clamp(1, GRADES as i32) - 1) as usize] += 1;
                    }
                }
            }
        }
    }

    /// One shard: the rows the query reads, child by child, bounded and added to their groups.
    fn shard(&self, rows: &[EngineRow], acc: &mut [i64]) {
        // The group travels with the row: the filter is evaluated once per row.
        let order = by_child(rows, |r| self.group(r).map(|g| g as u32));
        let s = self.plan.slots;
        let mut kept: Vec<(u32, usize)> = Vec::new();
        let mut groups: Vec<usize> = Vec::new();
        for child in each_child(rows, &order) {
            kept.clear();
            kept.extend(child.iter().map(|(_, i, g)| (*i, *g as usize)));
            if kept.len() > self.max {
                // The keyed order decides; computed only where it decides something.
                let items: Vec<(usize, ([u8; 32], u32))> = kept
                    .iter()
                    .enumerate()
                    .map(|(pos, (i, _))| {
                        let r = &rows[*i as usize];
                        (pos, (self.key.rank(&r.client, &r.trajectory), *i))
                    })
                    .collect();
                let keep = select(&items, self.max);
                let chosen: Vec<(u32, usize)> = keep.iter().map(|p| kept[*p]).collect();
                kept = chosen;
            }
            for (i, g) in &kept {
                self.add(&rows[*i as usize], &mut acc[g * s..(g + 1) * s]);
            }
            if let Some(off) = self.children {
                groups.clear();
                groups.extend(kept.iter().map(|(_, g)| *g));
                groups.sort_unstable();
                groups.dedup();
                for g in &groups {
                    acc[g * s + off] += 1;
                }
            }
        }
    }
}

/// The true, bounded sums of every group: memory only, never returned (only noised).
fn true_sums(plan: &Plan<'_>, input: &ResearchInput<'_>) -> Result<Vec<i64>, ResearchError> {
    if let Some(big) = input.shards.iter().find(|s| s.len() > u32::MAX as usize) {
        return Err(ResearchError::TooManyRows(big.len()));
    }
    let mut strides = vec![1usize; plan.levels.len()];
    for i in (0..plan.levels.len().saturating_sub(1)).rev() {
        strides[i] = strides[i + 1] * plan.levels[i + 1].count();
    }
    let (first, last) = plan.window.months();
    let pass = Pass {
        plan,
        first,
        last,
        strides,
        key: OrderKey::new(input.order_key),
        max: plan.c as usize,
        children: plan
            .primitives
            .iter()
            .position(|p| *p == Primitive::Children)
            .map(|i| plan.offsets[i]),
    };
    let len = plan.groups * plan.slots;
    let sums = input
        .shards
        .par_iter()
        .with_min_len(
            input
                .shards
                .len()
                .div_ceil(rayon::current_num_threads() * 4)
                .max(1),
        )
        .fold(
            || vec![0i64; len],
            |mut acc, shard| {
                pass.shard(shard, &mut acc);
                acc
            },
        )
        .reduce(
            || vec![0i64; len],
            |mut a, b| {
                for (x, y) in a.iter_mut().zip(&b) {
                    *x += y;
                }
                a
            },
        );
    Ok(sums)
}

/// Answers `query` from the index's shards at `rho`: bounds, measures once with fresh noise, and
/// post-processes every group from that one measurement.
pub fn answer(
    query: &Query,
    input: &ResearchInput<'_>,
    rho: Rho,
    noise: &mut dyn NoiseSource,
) -> Result<ResearchAnswer, ResearchError> {
    let plan = Plan::new(query, input.region, rho)?;
    let sums = true_sums(&plan, input)?;
    let mut noisy = sums;
    for (i, v) in noisy.iter_mut().enumerate() {
        let f = plan.slot_family[i % plan.slots];
        *v = v.saturating_add(plan.families[f].dist.draw(noise)?);
    }
    Ok(assemble(&plan, input.region, &noisy))
}

/// Post-processing of the noisy measurement only.
fn assemble(plan: &Plan<'_>, region: &RegionConfig, noisy: &[i64]) -> ResearchAnswer {
    let max = &region.privacy.max_interval;
    let dims = plan.query.group_by();
    let rows = (0..plan.groups)
        .map(|g| {
            let mut key = Vec::with_capacity(dims.len());
            let mut rest = g;
            let mut levels_of = vec![0usize; dims.len()];
            for i in (0..dims.len()).rev() {
                let n = plan.levels[i].count();
                levels_of[i] = rest % n;
                rest /= n;
            }
            for (d, l) in dims.iter().zip(&levels_of) {
                key.push(level_label(*d, region, plan.window, *l));
            }
            let cell = &noisy[g * plan.slots..(g + 1) * plan.slots];
            AnswerRow {
                key,
                cells: plan
                    .columns
                    .iter()
                    .map(|c| figure_cell(plan, c, cell, max))
                    .collect(),
            }
        })
        .collect();
    ResearchAnswer {
        region: region.code.clone(),
        query: plan.query.text().to_string(),
        window: plan.data_window(),
        group_by: dims.iter().map(|d| d.name().to_string()).collect(),
        columns: plan.columns(),
        rows,
        bounding: plan.bounding(),
        privacy: plan.privacy(region),
    }
}

fn withheld(status: CellStatus) -> AnswerCell {
    AnswerCell {
        status,
        value: None,
        ci95_low: None,
        ci95_high: None,
        count: None,
    }
}

fn fp(v: i64) -> i128 {
    i128::from(v) * FP
}

/// A sum of clamped values from its noisy count `n` and centred sum `s`, in tenths.
fn sum_figure(n: i128, s: i128, vn: f64, vs: f64, c: &Centring) -> Figured {
    let k = c.scale.tenths_per_unit;
    let value = div_round(c.scale.centre_tenths * n + k * s, FP).max(0) as i64;
    let (cf, kf) = (c.scale.centre_tenths as f64, k as f64);
    let half = half_tenths((cf * cf * vn + kf * kf * vs).max(0.0).sqrt());
    Figured {
        value: Figure::Tenths(value),
        low: Figure::Tenths((value - half).max(0)),
        high: Figure::Tenths(value.saturating_add(half)),
        count: None,
        width_tenths: None,
    }
}

/// The grade at which the noisy histogram's cumulative share first reaches `permille`.
fn quantile(bins: &[i128], permille: i128) -> i64 {
    let total: i128 = bins.iter().sum();
    let mut cum = 0i128;
    for (g, b) in bins.iter().enumerate() {
        cum += b;
        if cum > 0 && cum * 1000 >= permille * total {
            return g as i64 + 1;
        }
    }
    bins.len() as i64
}

/// A quantile of the grades with its interval: the quantiles at p -+ 1.96 times the noise of the
/// cumulative share (at most all ten bins' noise over the noisy total).
fn quantile_figure(bins: &[i128], permille: u32, bin_var: f64, rounding: i128) -> Figured {
    let clamped: Vec<i128> = bins.iter().map(|b| (*b).max(0)).collect();
    let total: i128 = clamped.iter().sum();
    let p = i128::from(permille);
    let sd_permille =
        1000.0 * (GRADES as f64 * bin_var).sqrt() / (total as f64 / FP as f64).max(1e-9);
    let spread = (Z95 * sd_permille).ceil();
    let spread = if spread.is_finite() {
        spread as i128
    } else {
        1000
    };
    let value = quantile(&clamped, p);
    let low = quantile(&clamped, (p - spread).max(0));
    let high = quantile(&clamped, (p + spread).min(1000));
    Figured {
        value: Figure::Whole(value),
        low: Figure::Whole(low.min(value)),
        high: Figure::Whole(high.max(value)),
        count: Some(round_count(total, rounding) as u64),
        width_tenths: Some((10 * (high.max(value) - low.min(value)), WidthKind::Grade)),
    }
}

/// The figure of one column from a group's noisy values, or `None` when withheld as suppressed.
fn figured(plan: &Plan<'_>, c: &ColumnPlan, cell: &[i64]) -> Option<Figured> {
    let off = plan.offsets[c.primitive];
    let var = |v: usize| plan.slot_dist(c.primitive, v).variance();
    let threshold = i128::from(c.threshold.min(i64::MAX as u64));
    let rounding = plan.rounding;
    let den = match plan.primitives[c.primitive] {
        Primitive::Trajectories | Primitive::Children | Primitive::Clamped(..) => {
            i128::from(cell[off])
        }
        Primitive::Condition(_) => i128::from(cell[off]) + i128::from(cell[off + 1]),
        Primitive::Histogram => cell[off..off + GRADES].iter().map(|v| i128::from(*v)).sum(),
    };
    if den < threshold {
        return None;
    }
    Some(match c.figure {
        Form::Count => count(fp(cell[off]), var(0), rounding),
        Form::Sum(ref cen) => sum_figure(fp(cell[off]), fp(cell[off + 1]), var(0), var(1), cen),
        Form::Mean(ref cen) => centred_mean(
            fp(cell[off + 1]),
            fp(cell[off]),
            var(1),
            var(0),
            &cen.scale,
            rounding,
        ),
        Form::Proportion => {
            let (vy, vr) = (var(0), var(1));
            share(
                fp(cell[off]),
                fp(cell[off]) + fp(cell[off + 1]),
                vy,
                vy + vr,
                vy,
                rounding,
            )
        }
        Form::Bin(b) => count(fp(cell[off + b]), var(b), rounding),
        Form::Quantile(permille) => {
            let bins: Vec<i128> = cell[off..off + GRADES].iter().map(|v| fp(*v)).collect();
            quantile_figure(&bins, permille, var(0), rounding)
        }
    })
}

fn figure_cell(
    plan: &Plan<'_>,
    c: &ColumnPlan,
    cell: &[i64],
    max: &kwm_schemas::region::MaxInterval,
) -> AnswerCell {
    match figured(plan, c, cell) {
        None => withheld(CellStatus::Suppressed),
        Some(f) if is_unreliable(&f, max) => withheld(CellStatus::Unreliable),
        Some(f) => AnswerCell {
            status: CellStatus::Published,
            value: Some(f.value),
            ci95_low: Some(f.low),
            ci95_high: Some(f.high),
            count: f.count,
        },
    }
}

/// The counts at which an estimate states the widths of percentages, means and quantiles.
const ESTIMATE_COUNTS: [u64; 3] = [100, 1_000, 10_000];

/// What `query` would cost at `rho` and how wide its intervals would be, from the query and the
/// region file alone: no data is read, nothing is drawn or charged.
pub fn estimate(
    query: &Query,
    region: &RegionConfig,
    rho: Rho,
) -> Result<QueryEstimate, ResearchError> {
    let plan = Plan::new(query, region, rho)?;
    let max = &region.privacy.max_interval;
    let columns = plan
        .columns
        .iter()
        .map(|c| column_estimate(&plan, c, max))
        .collect();
    Ok(QueryEstimate {
        region: region.code.clone(),
        query: query.text().to_string(),
        window: plan.data_window(),
        group_by: query
            .group_by()
            .iter()
            .map(|d| d.name().to_string())
            .collect(),
        groups: plan.groups as u64,
        columns,
        bounding: plan.bounding(),
        privacy: plan.privacy(region),
    })
}

/// The figure a column would have at noisy count `n`: for a percentage at 50%, for a mean at the
/// middle of its range, for a quantile of evenly spread grades, for a count or a sum anywhere.
fn figure_at(plan: &Plan<'_>, c: &ColumnPlan, n: u64) -> Option<Figured> {
    let mut cell = vec![0i64; plan.slots];
    let off = plan.offsets[c.primitive];
    let n = i64::try_from(n).ok()?;
    match plan.primitives[c.primitive] {
        Primitive::Trajectories | Primitive::Children => cell[off] = n,
        Primitive::Clamped(..) => cell[off] = n,
        Primitive::Condition(_) => {
            cell[off] = n / 2;
            cell[off + 1] = n - n / 2;
        }
        Primitive::Histogram => {
            for b in 0..GRADES {
                cell[off + b] = n / GRADES as i64;
            }
        }
    }
    figured(plan, c, &cell)
}

fn width(f: &Figured) -> Figure {
    match (f.low, f.high) {
        (Figure::Whole(a), Figure::Whole(b)) => Figure::Whole(b - a),
        (a, b) => Figure::Tenths(b.tenths() - a.tenths()),
    }
}

fn column_estimate(
    plan: &Plan<'_>,
    c: &ColumnPlan,
    max: &kwm_schemas::region::MaxInterval,
) -> ColumnEstimate {
    let by_count = matches!(
        c.kind,
        ColumnKind::Mean | ColumnKind::Percentage | ColumnKind::Quantile
    );
    // Far above any threshold, where a count's or a sum's width no longer depends on the count.
    let big = c.threshold.saturating_mul(4).max(1_000_000);
    let widths = if by_count {
        let mut counts: Vec<u64> = std::iter::once(c.threshold.max(1))
            .chain(ESTIMATE_COUNTS.iter().map(|n| (*n).max(c.threshold)))
            .collect();
        counts.dedup();
        counts
            .into_iter()
            .filter_map(|n| {
                figure_at(plan, c, n).map(|f| ExpectedWidth {
                    count: Some(n),
                    width: width(&f),
                })
            })
            .collect()
    } else {
        figure_at(plan, c, big)
            .map(|f| {
                vec![ExpectedWidth {
                    count: None,
                    width: width(&f),
                }]
            })
            .unwrap_or_default()
    };
    let reliable_from = by_count
        .then(|| {
            let ok = |n: u64| figure_at(plan, c, n).is_some_and(|f| !is_unreliable(&f, max));
            let hi = 1u64 << 40;
            if !ok(hi) {
                return None;
            }
            // The width shrinks as the count grows: the smallest count that is narrow enough.
            let mut lo = c.threshold.max(1);
            if ok(lo) {
                return Some(lo);
            }
            let mut hi = hi;
            while hi - lo > 1 {
                let mid = lo + (hi - lo) / 2;
                if ok(mid) {
                    hi = mid;
                } else {
                    lo = mid;
                }
            }
            Some(hi)
        })
        .flatten();
    ColumnEstimate {
        name: c.name.clone(),
        kind: c.kind,
        min_noisy_count: c.threshold,
        widths,
        reliable_from,
    }
}

/// The true, bounded sums of a query, for tests of bounding: every group's values, and per slot the
/// most one child may move it in one group and in all groups together.
#[cfg(test)]
pub(super) struct BoundedSums {
    pub values: Vec<i64>,
    pub groups: usize,
    pub width: usize,
    /// (slot, limit per group, limit over all groups).
    pub slots: Vec<(usize, i64, i64)>,
}

#[cfg(test)]
pub(super) fn bounded_sums(
    query: &Query,
    input: &ResearchInput<'_>,
) -> Result<BoundedSums, ResearchError> {
    let rho: Rho = "1".parse().map_err(|_| ResearchError::Plan("rho"))?;
    let plan = Plan::new(query, input.region, rho)?;
    let values = true_sums(&plan, input)?;
    let c = i64::from(plan.c);
    let mut slots = Vec::new();
    for (p, off) in plan.primitives.iter().zip(&plan.offsets) {
        match p {
            Primitive::Trajectories => slots.push((*off, c, c)),
            Primitive::Children => slots.push((*off, 1, c)),
            Primitive::Clamped(n, b) => {
                let d = centring(*n, *b).d as i64;
                slots.push((*off, c, c));
                slots.push((off + 1, c * d, c * d));
            }
            Primitive::Condition(_) => {
                slots.push((*off, c, c));
                slots.push((off + 1, c, c));
            }
            Primitive::Histogram => slots.extend((0..GRADES).map(|b| (off + b, c, c))),
        }
    }
    Ok(BoundedSums {
        values,
        groups: plan.groups,
        width: plan.slots,
        slots,
    })
}
