//! The release engine proper: one pass over the stored trajectories of the region, bounding per client,
//! the suppression pattern of every criterion on the whole region grid, and then a release as one slice
//! of that grid with exact noise on its values.
//!
//! Noise is organised in measure groups (below, `GROUPS`): to one group a client contributes, per noised
//! row, with L1 sensitivity at most the group's `sensitivity`. The policy's epsilon is split evenly over
//! (noised rows a client can reach) x (groups). Total rows are sums of noised rows: post-processing.

use std::fmt;

use rayon::prelude::*;
use rustc_hash::FxHashMap;

use kwm_schemas::criteria::{catalogue, Criterion, CriterionKind};
use kwm_schemas::release::{Rational, ReleaseScope};
use kwm_schemas::{AgbCode, Code, Month, MunicipalityCode, Period};

use super::super::aggregate::{
    bound_into, by_child, each_child, providers_of, Traj, D_ENDED, D_GOAL, D_GRADE, D_HELP,
    D_IN_CARE, D_PROBLEM, D_REPEAT, D_STARTED,
};
use super::super::bounding::OrderKey;
use super::super::measures::{is_repeat, Deriver, EndClass, Measures};
use super::super::rows::{EngineRow, OUTSIDE};
use super::super::IndexedInput;
use super::figures::{self, Level, Released, Widths};
use super::suppress::{self, Facts, Rules, Shape};
use super::wire::{
    CellStatus, MeasureGroupNoise, NoiseDescription, Partition, Release, ReleaseCell, ReleaseRow,
};
use super::{LegacyError as ReleaseError, LegacyPolicy as ReleasePolicy};
use crate::noise::{NoiseSource, Scale};

/// The true (or, after noise, noisy) integers of one row, one slot per noised value.
type Bins = [i64; BINS];

const BINS: usize = 16;
const IN_CARE: usize = 0;
const STARTED: usize = 1;
const END_PLAN: usize = 2;
const END_DROP_OUT: usize = 3;
const END_OTHER: usize = 4;
const END_ADMIN: usize = 5;
const HELP_YES: usize = 6;
const HELP_NO: usize = 7;
const REPEAT_YES: usize = 8;
const REPEAT_NO: usize = 9;
const IMPROVED: usize = 10;
const NOT_IMPROVED: usize = 11;
const GRADE_COUNT: usize = 12;
const GRADE_SUM: usize = 13;
const GOAL_COUNT: usize = 14;
const GOAL_SUM: usize = 15;

/// One measure group: noised values to which one client adds, per row, at most `sensitivity` in L1.
struct Group {
    name: &'static str,
    bins: &'static [usize],
    values: &'static [&'static str],
    sensitivity: u64,
    /// Herhaald beroep: noised (and paid for) only when the period is final.
    repeat: bool,
}

const fn group(
    name: &'static str,
    bins: &'static [usize],
    values: &'static [&'static str],
    sensitivity: u64,
) -> Group {
    Group {
        name,
        bins,
        values,
        sensitivity,
        repeat: false,
    }
}

/// A trajectory falls in exactly one bin of a histogram, so each histogram is one group of sensitivity 1;
/// sums are of values clamped to the criterion's bounds (grades 1..10, goal percentages 0..1000 tenths).
const GROUPS: [Group; 10] = [
    group("in_zorg", &[IN_CARE], &["in_zorg"], 1),
    group("gestart", &[STARTED], &["gestart"], 1),
    group(
        "einde",
        &[END_PLAN, END_DROP_OUT, END_OTHER, END_ADMIN],
        &["reden_31", "reden_32", "reden_33_35", "administratief"],
        1,
    ),
    group("zonder_hulp", &[HELP_YES, HELP_NO], &["ja", "nee"], 1),
    Group {
        repeat: true,
        ..group(
            "herhaald_beroep",
            &[REPEAT_YES, REPEAT_NO],
            &["herhaald", "niet_herhaald"],
            1,
        )
    },
    group(
        "probleemafname",
        &[IMPROVED, NOT_IMPROVED],
        &["afgenomen", "niet_afgenomen"],
        1,
    ),
    group("tevredenheid_aantal", &[GRADE_COUNT], &["aantal"], 1),
    group("tevredenheid_som", &[GRADE_SUM], &["som_cijfers"], 10),
    group("doelrealisatie_aantal", &[GOAL_COUNT], &["aantal"], 1),
    group("doelrealisatie_som", &[GOAL_SUM], &["som_promille"], 1000),
];

fn group_of(bin: usize) -> usize {
    GROUPS
        .iter()
        .position(|g| g.bins.contains(&bin))
        .unwrap_or_else(|| unreachable!("every bin belongs to a group"))
}

/// The client sets suppression is decided on: each criterion's denominator.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Denominator {
    InCare,
    Started,
    Ended,
    /// Ended without an administrative reason: volgens_plan and uitval.
    EndedOutcome,
    Help,
    Repeat,
    Problem,
    Grade,
    Goal,
}

impl Denominator {
    const ALL: [Denominator; 9] = [
        Self::InCare,
        Self::Started,
        Self::Ended,
        Self::EndedOutcome,
        Self::Help,
        Self::Repeat,
        Self::Problem,
        Self::Grade,
        Self::Goal,
    ];

    fn index(self) -> usize {
        self as usize
    }

    fn count(self, b: &Bins) -> i64 {
        match self {
            Self::InCare => b[IN_CARE],
            Self::Started => b[STARTED],
            Self::Ended => b[END_PLAN] + b[END_DROP_OUT] + b[END_OTHER] + b[END_ADMIN],
            Self::EndedOutcome => b[END_PLAN] + b[END_DROP_OUT] + b[END_OTHER],
            Self::Help => b[HELP_YES] + b[HELP_NO],
            Self::Repeat => b[REPEAT_YES] + b[REPEAT_NO],
            Self::Problem => b[IMPROVED] + b[NOT_IMPROVED],
            Self::Grade => b[GRADE_COUNT],
            Self::Goal => b[GOAL_COUNT],
        }
    }

    /// Whether a trajectory kept in the domains `mask` counts in this denominator.
    fn includes(self, m: &Measures, mask: u8) -> bool {
        let kept = |d: usize| mask & (1 << d) != 0;
        match self {
            Self::InCare => kept(D_IN_CARE),
            Self::Started => kept(D_STARTED),
            Self::Ended => kept(D_ENDED),
            Self::EndedOutcome => {
                kept(D_ENDED) && m.ended.is_some_and(|c| c != EndClass::Administrative)
            }
            Self::Help => kept(D_HELP),
            Self::Repeat => kept(D_REPEAT),
            Self::Problem => kept(D_PROBLEM),
            Self::Grade => kept(D_GRADE),
            Self::Goal => kept(D_GOAL),
        }
    }
}

/// How a criterion's figure is computed from a row's noisy bins.
#[derive(Debug, Clone, Copy)]
enum Computation {
    Count(&'static [usize]),
    Share {
        part: &'static [usize],
        rest: &'static [usize],
    },
    Mean {
        sum: usize,
        count: usize,
        tenths_per_unit: i64,
    },
}

fn computation(code: &str) -> Option<(Denominator, Computation)> {
    use Computation::*;
    use Denominator::*;
    Some(match code {
        "volgens_plan" => (
            EndedOutcome,
            Share {
                part: &[END_PLAN],
                rest: &[END_DROP_OUT, END_OTHER],
            },
        ),
        "uitval" => (
            EndedOutcome,
            Share {
                part: &[END_DROP_OUT],
                rest: &[END_PLAN, END_OTHER],
            },
        ),
        "tevredenheid" => (
            Grade,
            Mean {
                sum: GRADE_SUM,
                count: GRADE_COUNT,
                tenths_per_unit: 10,
            },
        ),
        "zonder_hulp" => (
            Help,
            Share {
                part: &[HELP_YES],
                rest: &[HELP_NO],
            },
        ),
        "herhaald_beroep" => (
            Repeat,
            Share {
                part: &[REPEAT_YES],
                rest: &[REPEAT_NO],
            },
        ),
        "probleemafname" => (
            Problem,
            Share {
                part: &[IMPROVED],
                rest: &[NOT_IMPROVED],
            },
        ),
        "doelrealisatie" => (
            Goal,
            Mean {
                sum: GOAL_SUM,
                count: GOAL_COUNT,
                tenths_per_unit: 1,
            },
        ),
        "in_zorg" => (InCare, Count(&[IN_CARE])),
        "gestart" => (Started, Count(&[STARTED])),
        "beeindigd" => (
            Ended,
            Count(&[END_PLAN, END_DROP_OUT, END_OTHER, END_ADMIN]),
        ),
        _ => return None,
    })
}

/// The bounded aggregates and suppression patterns of one period: everything every release of the period
/// is a slice of. Build once, then call [`PeriodTables::release`] per scope. Holds true counts: never log
/// or serialise it (its `Debug` shows only what it is about).
pub struct PeriodTables {
    region: String,
    period: Period,
    as_of: Month,
    policy: ReleasePolicy,
    munis: Vec<MunicipalityCode>,
    groups: Vec<(Code, String, String)>,
    providers: Vec<AgbCode>,
    shape: Shape,
    repeat_final: bool,
    /// True bins per municipality x target group, per target group (region), per provider x target
    /// group (only with per-provider reporting).
    muni_bins: Vec<Bins>,
    region_bins: Vec<Bins>,
    provider_bins: Vec<Bins>,
    /// Suppression pattern per denominator, over the cells of `shape`.
    patterns: Vec<Vec<CellStatus>>,
    criteria: Vec<(Criterion, Denominator, Computation)>,
}

impl fmt::Debug for PeriodTables {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PeriodTables")
            .field("region", &self.region)
            .field("period", &self.period)
            .field("as_of", &self.as_of)
            .finish_non_exhaustive()
    }
}

/// A row of a release: what it shows, which grid cell decides its statuses, and which noised rows it
/// sums.
struct RowPlan {
    group: Option<usize>,
    provider: Option<usize>,
    cell: usize,
    base: std::ops::Range<usize>,
}

/// Bins per (municipality, target group, provider): a dense array when the grid is small (a region),
/// a map when it is not (a national grid with thousands of providers).
enum Cube {
    Dense {
        t_n: usize,
        p_n: usize,
        bins: Vec<Bins>,
    },
    Sparse(FxHashMap<(u16, u16, u32), Bins>),
}

/// Cells up to which a cube is dense: 8 MiB of bins per worker.
const DENSE_CUBE_CELLS: usize = 1 << 16;

impl Cube {
    fn new(m_n: usize, t_n: usize, p_n: usize) -> Self {
        match m_n.checked_mul(t_n).and_then(|c| c.checked_mul(p_n)) {
            Some(cells) if cells <= DENSE_CUBE_CELLS => Self::Dense {
                t_n,
                p_n,
                bins: vec![[0; BINS]; cells],
            },
            _ => Self::Sparse(FxHashMap::default()),
        }
    }

    fn at(&mut self, m: u16, t: u16, p: u32) -> &mut Bins {
        match self {
            Self::Dense { t_n, p_n, bins } => {
                &mut bins[(usize::from(m) * *t_n + usize::from(t)) * *p_n + p as usize]
            }
            Self::Sparse(map) => map.entry((m, t, p)).or_insert([0; BINS]),
        }
    }

    /// Every cell that holds a kept trajectory (every kept trajectory adds to some bin), in key order.
    fn into_sorted(self) -> Vec<((u16, u16, u32), Bins)> {
        let mut out: Vec<((u16, u16, u32), Bins)> = match self {
            Self::Dense { t_n, p_n, bins } => bins
                .into_iter()
                .enumerate()
                .filter(|(_, b)| b.iter().any(|v| *v != 0))
                .map(|(i, b)| {
                    let (mt, p) = (i / p_n, i % p_n);
                    (((mt / t_n) as u16, (mt % t_n) as u16, p as u32), b)
                })
                .collect(),
            Self::Sparse(map) => map.into_iter().collect(),
        };
        out.sort_unstable_by_key(|(k, _)| *k);
        out
    }

    fn add(&mut self, other: Self) {
        match other {
            Self::Dense { t_n, p_n, bins } => {
                for (i, b) in bins.iter().enumerate() {
                    if b.iter().all(|v| *v == 0) {
                        continue;
                    }
                    let (mt, p) = (i / p_n, i % p_n);
                    add_into(self.at((mt / t_n) as u16, (mt % t_n) as u16, p as u32), b);
                }
            }
            Self::Sparse(map) => {
                for ((m, t, p), b) in map {
                    add_into(self.at(m, t, p), &b);
                }
            }
        }
    }
}

fn add_into(into: &mut Bins, from: &Bins) {
    for b in 0..BINS {
        into[b] += from[b];
    }
}

/// What one worker gathers over the shards it takes; summed at the end (clients never span shards).
struct Partial {
    cube: Cube,
    distinct_muni: Vec<u64>,
    distinct_provider: Vec<u64>,
    distinct_all: Vec<u64>,
}

impl Partial {
    fn new(m_n: usize, t_n: usize, p_n: usize) -> Self {
        let dn = Denominator::ALL.len();
        Self {
            cube: Cube::new(m_n, t_n, p_n),
            distinct_muni: vec![0; m_n * dn],
            distinct_provider: vec![0; p_n * dn],
            distinct_all: vec![0; dn],
        }
    }

    fn merge(mut self, other: Self) -> Self {
        self.cube.add(other.cube);
        for (a, b) in [
            (&mut self.distinct_muni, &other.distinct_muni),
            (&mut self.distinct_provider, &other.distinct_provider),
            (&mut self.distinct_all, &other.distinct_all),
        ] {
            for (x, y) in a.iter_mut().zip(b) {
                *x += y;
            }
        }
        self
    }
}

/// What every shard's pass shares.
struct Pass {
    deriver: Deriver,
    window: i32,
    repeat_range: (i32, i32),
    provider_index: FxHashMap<AgbCode, u32>,
    key: OrderKey,
    max_rows: usize,
}

impl Pass {
    /// One shard: its clients' trajectories in care, their measures (herhaald beroep from the shard's
    /// own starts: a client's rows are all in one shard), bounding and aggregation.
    fn shard(&self, rows: &[EngineRow], acc: &mut Partial) {
        // The rows the period reads, ordered by client: by eight bytes of the pseudonym (the first is
        // the shard's, the same for all), the whole pseudonym only where those tie.
        let order = by_child(rows, |r| self.deriver.reads(r).then_some(()));

        let dn = Denominator::ALL.len();
        let mut trajs: Vec<Traj> = Vec::new();
        let mut masks: Vec<u8> = Vec::new();
        let mut seen_munis: Vec<u16> = Vec::new();
        let mut seen_providers: Vec<u32> = Vec::new();
        for client in each_child(rows, &order) {
            // The client's trajectories in care, with their measures; herhaald beroep from the
            // client's own other starts (at any provider, in any municipality).
            trajs.clear();
            for (_, i, ()) in client {
                let row = &rows[*i as usize];
                // Group keys come from the codebook only; a row outside it (impossible after ingest
                // validation) is not counted anywhere rather than creating a key.
                if !self.deriver.active(row) || row.muni == OUTSIDE || row.group == OUTSIDE {
                    continue;
                }
                let measures = self.deriver.derive(row, || {
                    client.iter().any(|(_, j, ())| {
                        j != i
                            && is_repeat(
                                row.end,
                                self.window,
                                rows[*j as usize].start,
                                self.repeat_range,
                            )
                    })
                });
                trajs.push(Traj {
                    client: row.client,
                    row: *i,
                    muni: row.muni,
                    group: row.group,
                    provider: self.provider_index.get(&row.provider).copied().unwrap_or(0),
                    measures,
                });
            }
            if trajs.is_empty() {
                continue;
            }
            bound_into(&trajs, rows, &self.key, self.max_rows, &mut masks);
            // Distinct clients per municipality, per provider and in the region, for the k threshold of
            // the totals (a client in two target groups is one child).
            for d in Denominator::ALL {
                seen_munis.clear();
                seen_providers.clear();
                for (t, mask) in trajs.iter().zip(&masks) {
                    if d.includes(&t.measures, *mask) {
                        if !seen_munis.contains(&t.muni) {
                            seen_munis.push(t.muni);
                        }
                        if !seen_providers.contains(&t.provider) {
                            seen_providers.push(t.provider);
                        }
                    }
                }
                if !seen_munis.is_empty() {
                    acc.distinct_all[d.index()] += 1;
                }
                for m in &seen_munis {
                    acc.distinct_muni[usize::from(*m) * dn + d.index()] += 1;
                }
                for p in &seen_providers {
                    acc.distinct_provider[*p as usize * dn + d.index()] += 1;
                }
            }
            for (t, mask) in trajs.iter().zip(&masks) {
                if *mask != 0 {
                    add_bins(acc.cube.at(t.muni, t.group, t.provider), &t.measures, *mask);
                }
            }
        }
    }
}

impl PeriodTables {
    /// One pass over the rows, bounding, aggregation and the suppression patterns. The shards are
    /// taken in parallel; a client's rows must all be in one shard. Cost: linear in the rows, plus a
    /// sort per shard of the rows the period reads, by client.
    pub fn build_indexed(
        input: &IndexedInput<'_>,
        policy: &ReleasePolicy,
    ) -> Result<Self, ReleaseError> {
        let mut region = input.region.clone();
        region.policy.herhaald_beroep_window_months = policy.herhaald_beroep_window_months;
        let region = &region;
        let deriver = Deriver::new(region, input.period, input.as_of);
        let repeat_final = deriver.repeat_final();
        let window = deriver.window();
        let repeat_range = deriver.repeat_start_range();
        if let Some(big) = input.shards.iter().find(|s| s.len() > u32::MAX as usize) {
            return Err(ReleaseError::TooManyRows(big.len()));
        }

        let munis: Vec<MunicipalityCode> = region.municipalities.iter().map(|m| m.code).collect();
        let groups: Vec<(Code, String, String)> = region
            .target_groups
            .iter()
            .map(|t| (t.code.clone(), t.label_nl.clone(), t.label_en.clone()))
            .collect();

        // The providers of every row the period reads, in AGB order.
        let providers = providers_of(input.shards, |r| deriver.reads(r));

        let (m_n, t_n, p_n) = (munis.len(), groups.len(), providers.len());
        let pass = Pass {
            deriver,
            window,
            repeat_range,
            provider_index: providers
                .iter()
                .enumerate()
                .map(|(i, p)| (*p, i as u32))
                .collect(),
            key: OrderKey::new(input.order_key),
            max_rows: usize::try_from(policy.max_cells_per_client)
                .unwrap_or(usize::MAX)
                .max(1),
        };
        let partial = input
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
                || Partial::new(m_n, t_n, p_n),
                |mut acc, shard| {
                    pass.shard(shard, &mut acc);
                    acc
                },
            )
            .reduce(|| Partial::new(m_n, t_n, p_n), Partial::merge);
        let Partial {
            cube,
            distinct_muni,
            distinct_provider,
            distinct_all,
        } = partial;
        let cube = cube.into_sorted();
        let dn = Denominator::ALL.len();

        let per_provider = policy.per_provider_reporting;
        let shape = Shape {
            munis: m_n,
            groups: t_n,
            providers: if per_provider { p_n } else { 0 },
        };
        let mut muni_bins = vec![[0i64; BINS]; m_n * t_n];
        let mut region_bins = vec![[0i64; BINS]; t_n];
        let mut provider_bins = vec![[0i64; BINS]; if per_provider { p_n * t_n } else { 0 }];
        for ((m, t, p), bins) in &cube {
            let (m, t, p) = (usize::from(*m), usize::from(*t), *p as usize);
            for b in 0..BINS {
                muni_bins[m * t_n + t][b] += bins[b];
                region_bins[t][b] += bins[b];
                if per_provider {
                    provider_bins[p * t_n + t][b] += bins[b];
                }
            }
        }

        let mut patterns = Vec::with_capacity(dn);
        for d in Denominator::ALL {
            let facts = grid_facts(
                &shape,
                &cube,
                d,
                p_n,
                &distinct_muni,
                &distinct_provider,
                distinct_all[d.index()],
            );
            let rules = Rules {
                k: u64::from(policy.k),
                min_providers: policy.min_providers,
                dominance_pct: u64::from(policy.dominance_pct),
                per_provider_reporting: per_provider,
                not_final: d == Denominator::Repeat && !repeat_final,
            };
            patterns.push(suppress::pattern(&shape, &facts, &rules));
        }

        let criteria = catalogue()
            .into_iter()
            .map(|c| match computation(&c.code) {
                Some((d, comp)) => Ok((c, d, comp)),
                None => Err(ReleaseError::UnknownCriterion(c.code)),
            })
            .collect::<Result<Vec<_>, _>>()?;

        Ok(Self {
            region: region.code.clone(),
            period: input.period,
            as_of: input.as_of,
            policy: policy.clone(),
            munis,
            groups,
            providers,
            shape,
            repeat_final,
            muni_bins,
            region_bins,
            provider_bins,
            patterns,
            criteria,
        })
    }

    pub fn period(&self) -> Period {
        self.period
    }

    pub fn as_of(&self) -> Month {
        self.as_of
    }

    /// The release of one scope: draws fresh noise for every noised row (so each call is a new release
    /// that costs epsilon), then post-processes. With [`crate::noise::NoNoise`] the result is a function
    /// of the input alone.
    pub fn release(
        &self,
        scope: ReleaseScope,
        noise: &mut dyn NoiseSource,
    ) -> Result<Release, ReleaseError> {
        let t_n = self.groups.len();
        let s = &self.shape;
        let mut plan = Vec::new();
        let base: Vec<&Bins>;
        let contributions;
        let max_cells = self.policy.max_cells_per_client.max(1);
        match scope {
            ReleaseScope::Municipality(code) => {
                let m = self.munis.iter().position(|c| *c == code).ok_or_else(|| {
                    ReleaseError::UnknownMunicipality {
                        municipality: code,
                        region: self.region.clone(),
                    }
                })?;
                base = self.muni_bins[m * t_n..(m + 1) * t_n].iter().collect();
                for t in 0..t_n {
                    plan.push(RowPlan {
                        group: Some(t),
                        provider: None,
                        cell: s.inner(m, t),
                        base: t..t + 1,
                    });
                }
                plan.push(RowPlan {
                    group: None,
                    provider: None,
                    cell: s.muni_total(m),
                    base: 0..t_n,
                });
                contributions = max_cells;
            }
            ReleaseScope::Region | ReleaseScope::Providers => {
                base = self.region_bins.iter().chain(&self.provider_bins).collect();
                for t in 0..t_n {
                    plan.push(RowPlan {
                        group: Some(t),
                        provider: None,
                        cell: s.group_total(t),
                        base: t..t + 1,
                    });
                }
                plan.push(RowPlan {
                    group: None,
                    provider: None,
                    cell: s.grand_total(),
                    base: 0..t_n,
                });
                for p in 0..s.providers {
                    let first = t_n + p * t_n;
                    for t in 0..t_n {
                        plan.push(RowPlan {
                            group: Some(t),
                            provider: Some(p),
                            cell: s.provider_cell(p, t),
                            base: first + t..first + t + 1,
                        });
                    }
                    plan.push(RowPlan {
                        group: None,
                        provider: Some(p),
                        cell: s.provider_total(p),
                        base: first..first + t_n,
                    });
                }
                // A client's contribution reaches a region row and a provider row.
                contributions = if s.providers > 0 {
                    max_cells.saturating_mul(2)
                } else {
                    max_cells
                };
            }
        }
        let noise_plan = NoisePlan::new(&self.policy, self.repeat_final, contributions)?;

        // Fresh noise on every value of every noised row, in a fixed order.
        let mut noisy: Vec<Bins> = Vec::with_capacity(base.len());
        for bins in base {
            let mut out = *bins;
            for g in &noise_plan.active {
                let scale = noise_plan.scales[*g];
                for b in GROUPS[*g].bins {
                    out[*b] = out[*b].saturating_add(noise.try_discrete_laplace(scale)?);
                }
            }
            noisy.push(out);
        }

        let rounding = u64::from(self.policy.count_rounding.max(1));
        let mut widths = Widths::default();
        let rows = plan
            .iter()
            .map(|row| {
                let mut sum = [0i64; BINS];
                for bins in &noisy[row.base.clone()] {
                    for b in 0..BINS {
                        sum[b] = sum[b].saturating_add(bins[b]);
                    }
                }
                let terms = row.base.len() as u32;
                let cells = self
                    .criteria
                    .iter()
                    .map(|(criterion, d, comp)| {
                        let status = self.patterns[d.index()][row.cell];
                        let released = status.is_published().then(|| {
                            figure(
                                criterion,
                                *comp,
                                &sum,
                                terms,
                                &noise_plan,
                                &mut widths,
                                rounding,
                            )
                        });
                        ReleaseCell {
                            criterion: criterion.code.clone(),
                            status,
                            value: released.map(|r| r.value),
                            ci95_low: released.map(|r| r.low),
                            ci95_high: released.map(|r| r.high),
                            count: released.and_then(|r| r.count),
                        }
                    })
                    .collect();
                let (label_nl, label_en) = match row.group {
                    Some(t) => (self.groups[t].1.clone(), self.groups[t].2.clone()),
                    None => ("Totaal".to_string(), "Total".to_string()),
                };
                ReleaseRow {
                    target_group: row.group.map(|t| self.groups[t].0.clone()),
                    provider: row.provider.map(|p| self.providers[p]),
                    label_nl,
                    label_en,
                    cells,
                }
            })
            .collect();

        Ok(Release {
            id: None,
            version: None,
            created_at: None,
            frozen: false,
            region: self.region.clone(),
            scope,
            period: self.period,
            as_of: self.as_of,
            epsilon: self.policy.epsilon_per_release,
            partitions: partitions_of(&self.munis, scope, self.period),
            policy: self.policy.clone(),
            noise: noise_plan.describe(rounding as u32),
            criteria: self.criteria.iter().map(|(c, _, _)| c.clone()).collect(),
            rows,
        })
    }
}

pub(super) fn partitions_of(
    munis: &[MunicipalityCode],
    scope: ReleaseScope,
    period: Period,
) -> Vec<Partition> {
    let munis: &[MunicipalityCode] = match &scope {
        ReleaseScope::Municipality(m) => std::slice::from_ref(m),
        ReleaseScope::Region | ReleaseScope::Providers => munis,
    };
    munis
        .iter()
        .flat_map(|m| {
            period.quarters().into_iter().map(|q| Partition {
                municipality: *m,
                period: q,
            })
        })
        .collect()
}

fn add_bins(bins: &mut Bins, m: &Measures, mask: u8) {
    let kept = |d: usize| mask & (1 << d) != 0;
    if kept(D_IN_CARE) {
        bins[IN_CARE] += 1;
    }
    if kept(D_STARTED) {
        bins[STARTED] += 1;
    }
    if kept(D_ENDED) {
        if let Some(class) = m.ended {
            bins[match class {
                EndClass::Plan => END_PLAN,
                EndClass::DropOut => END_DROP_OUT,
                EndClass::Other => END_OTHER,
                EndClass::Administrative => END_ADMIN,
            }] += 1;
        }
    }
    if let (true, Some(yes)) = (kept(D_HELP), m.without_help) {
        bins[if yes { HELP_YES } else { HELP_NO }] += 1;
    }
    if let (true, Some(yes)) = (kept(D_REPEAT), m.repeat) {
        bins[if yes { REPEAT_YES } else { REPEAT_NO }] += 1;
    }
    if let (true, Some(yes)) = (kept(D_PROBLEM), m.improved) {
        bins[if yes { IMPROVED } else { NOT_IMPROVED }] += 1;
    }
    if let (true, Some(grade)) = (kept(D_GRADE), m.grade) {
        bins[GRADE_COUNT] += 1;
        bins[GRADE_SUM] += i64::from(grade.clamp(1, 10));
    }
    if let (true, Some(tenths)) = (kept(D_GOAL), m.goal_tenths) {
        bins[GOAL_COUNT] += 1;
        bins[GOAL_SUM] += i64::from(tenths.min(1000));
    }
}

/// The facts primary suppression needs for every cell of one denominator's grid.
fn grid_facts(
    shape: &Shape,
    cube: &[((u16, u16, u32), Bins)],
    d: Denominator,
    p_n: usize,
    distinct_muni: &[u64],
    distinct_provider: &[u64],
    distinct_all: u64,
) -> Vec<Facts> {
    let dn = Denominator::ALL.len();
    let mut facts = vec![Facts::default(); shape.len()];
    // Contributions per provider in each total, to count providers and find the largest.
    let mut muni_p = vec![0u64; shape.munis * p_n];
    let mut group_p = vec![0u64; shape.groups * p_n];
    let mut all_p = vec![0u64; p_n];
    for ((m, t, p), bins) in cube {
        let n = u64::try_from(d.count(bins)).unwrap_or(0);
        if n == 0 {
            continue;
        }
        let (m, t, p) = (usize::from(*m), usize::from(*t), *p as usize);
        // The cube has one entry per (municipality, target group, provider).
        let inner = &mut facts[shape.inner(m, t)];
        inner.count += n;
        inner.providers += 1;
        inner.top_provider = inner.top_provider.max(n);
        muni_p[m * p_n + p] += n;
        group_p[t * p_n + p] += n;
        all_p[p] += n;
        if shape.providers > 0 {
            facts[shape.provider_cell(p, t)].count += n;
            facts[shape.provider_total(p)].count += n;
        }
    }
    let summarise = |per_p: &[u64]| {
        (
            per_p.iter().sum::<u64>(),
            per_p.iter().filter(|v| **v > 0).count() as u32,
            per_p.iter().copied().max().unwrap_or(0),
        )
    };
    for m in 0..shape.munis {
        let (count, providers, top) = summarise(&muni_p[m * p_n..(m + 1) * p_n]);
        facts[shape.muni_total(m)] = Facts {
            count,
            clients: distinct_muni[m * dn + d.index()],
            providers,
            top_provider: top,
        };
    }
    for t in 0..shape.groups {
        let (count, providers, top) = summarise(&group_p[t * p_n..(t + 1) * p_n]);
        // Within one target group a client has at most one trajectory: contributions are clients.
        facts[shape.group_total(t)] = Facts {
            count,
            clients: count,
            providers,
            top_provider: top,
        };
    }
    let (count, providers, top) = summarise(&all_p);
    facts[shape.grand_total()] = Facts {
        count,
        clients: distinct_all,
        providers,
        top_provider: top,
    };
    for f in &mut facts[..shape.munis * shape.groups] {
        f.clients = f.count;
    }
    for p in 0..shape.providers {
        for t in 0..shape.groups {
            let f = &mut facts[shape.provider_cell(p, t)];
            f.clients = f.count;
            f.providers = u32::from(f.count > 0);
            f.top_provider = f.count;
        }
        let f = &mut facts[shape.provider_total(p)];
        f.clients = distinct_provider[p * dn + d.index()];
        f.providers = u32::from(f.count > 0);
        f.top_provider = f.count;
    }
    facts
}

/// The noise of one release: which groups are noised and at what scale.
struct NoisePlan {
    contributions: u32,
    active: Vec<usize>,
    scales: [Scale; GROUPS.len()],
    epsilon_per_group: (u64, u64),
}

fn gcd(mut a: u128, mut b: u128) -> u128 {
    while b != 0 {
        (a, b) = (b, a % b);
    }
    a
}

impl NoisePlan {
    /// epsilon_group = epsilon / (contributions x active groups); scale = sensitivity / epsilon_group,
    /// both exact rationals.
    fn new(
        policy: &ReleasePolicy,
        repeat_final: bool,
        contributions: u32,
    ) -> Result<Self, ReleaseError> {
        let active: Vec<usize> = (0..GROUPS.len())
            .filter(|g| repeat_final || !GROUPS[*g].repeat)
            .collect();
        let units = u128::from(contributions) * active.len() as u128;
        let (e_num, e_den) = (
            u128::from(policy.epsilon_per_release.numerator()),
            u128::from(policy.epsilon_per_release.denominator()),
        );
        let reduce = |num: u128, den: u128| {
            let g = gcd(num, den).max(1);
            (num / g, den / g)
        };
        let eps_group = reduce(e_num, e_den * units);
        let mut scales = [Scale { num: 1, den: 1 }; GROUPS.len()];
        for g in &active {
            let (num, den) = reduce(u128::from(GROUPS[*g].sensitivity) * e_den * units, e_num);
            let scale = match (u64::try_from(num), u64::try_from(den)) {
                (Ok(num), Ok(den)) => Scale::new(num, den).ok(),
                _ => None,
            };
            scales[*g] = scale.ok_or(ReleaseError::Scale {
                group: GROUPS[*g].name,
                num,
                den,
            })?;
        }
        Ok(Self {
            contributions,
            active,
            scales,
            epsilon_per_group: (
                u64::try_from(eps_group.0).unwrap_or(u64::MAX),
                u64::try_from(eps_group.1).unwrap_or(u64::MAX),
            ),
        })
    }

    fn scale_of(&self, bin: usize) -> Scale {
        self.scales[group_of(bin)]
    }

    fn describe(&self, rounding: u32) -> NoiseDescription {
        NoiseDescription {
            mechanism: "discrete-laplace".into(),
            contributions_per_client: self.contributions,
            epsilon_per_group: Rational {
                numerator: self.epsilon_per_group.0,
                denominator: self.epsilon_per_group.1,
            },
            measure_groups: self
                .active
                .iter()
                .map(|g| MeasureGroupNoise {
                    name: GROUPS[*g].name.into(),
                    values: GROUPS[*g].values.iter().map(|v| (*v).into()).collect(),
                    sensitivity: GROUPS[*g].sensitivity,
                    scale: Rational {
                        numerator: self.scales[*g].num,
                        denominator: self.scales[*g].den,
                    },
                })
                .collect(),
            count_rounding: rounding,
            interval_confidence_pct: 95,
        }
    }
}

/// The figure of one published cell from its row's noisy bins; `terms` noised rows were summed.
fn figure(
    criterion: &Criterion,
    comp: Computation,
    sum: &Bins,
    terms: u32,
    plan: &NoisePlan,
    widths: &mut Widths,
    rounding: u64,
) -> Released {
    let total = |bins: &[usize]| bins.iter().map(|b| sum[*b]).sum::<i64>();
    // All bins of one part belong to one group (one scale); a part of n bins over `terms` rows is a sum
    // of n x terms independent draws.
    let width = |widths: &mut Widths, bins: &[usize], level| {
        let n = terms.saturating_mul(bins.len() as u32);
        widths.get(plan.scale_of(bins[0]), n, level)
    };
    match comp {
        Computation::Count(bins) => {
            figures::count(total(bins), width(widths, bins, Level::P95), rounding)
        }
        Computation::Share { part, rest } => {
            let ha = width(widths, part, Level::P975);
            let hb = width(widths, rest, Level::P975);
            figures::share(total(part), ha, total(rest), hb, rounding)
        }
        Computation::Mean {
            sum: s,
            count: c,
            tenths_per_unit,
        } => {
            debug_assert_eq!(criterion.kind, CriterionKind::Mean);
            let hs = width(widths, &[s], Level::P975);
            let hc = width(widths, &[c], Level::P975);
            figures::mean(
                sum[s],
                hs,
                sum[c],
                hc,
                tenths_per_unit,
                (criterion.lower * 10, criterion.upper * 10),
                rounding,
            )
        }
    }
}
