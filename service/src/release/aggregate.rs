//! The true aggregates of one period, before any noise: one pass over the stored trajectories of the
//! region, bounding per child, and the sums every table of a round is measured from. Holds true counts:
//! memory only, never logged, serialised or released (only `measure` reads it, to add noise).

use std::fmt;

use rayon::prelude::*;
use rustc_hash::{FxHashMap, FxHashSet};

use kwm_schemas::{AgbCode, Code, MunicipalityCode, Period};

use super::bounding::{select, OrderKey};
use super::measures::{is_repeat, Deriver, EndClass, Measures};
use super::rows::{EngineRow, OUTSIDE};
use super::{IndexedInput, ReleaseError};

/// The integers of one cell, one slot per measured value.
pub type Bins = [i64; BINS];

pub const BINS: usize = 15;
pub const IN_CARE: usize = 0;
pub const STARTED: usize = 1;
pub const END_PLAN: usize = 2;
pub const END_DROP_OUT: usize = 3;
pub const END_OTHER: usize = 4;
pub const END_ADMIN: usize = 5;
pub const HELP_YES: usize = 6;
pub const HELP_NO: usize = 7;
/// Herhaald beroep: ended for an outcome reason and followed by a new trajectory within the window.
/// Its denominator is the outcome endings (`END_PLAN + END_DROP_OUT + END_OTHER`), measured once.
pub const REPEAT_YES: usize = 8;
pub const IMPROVED: usize = 9;
pub const NOT_IMPROVED: usize = 10;
pub const GRADE_COUNT: usize = 11;
/// Sum of the grades centred on the middle of 1..10, in half points: 2 x grade - 11, in -9..=9.
pub const GRADE_SUM: usize = 12;
pub const GOAL_COUNT: usize = 13;
/// Sum of goal realisation centred on 50%, in tenths of a percent: tenths - 500, in -500..=500.
pub const GOAL_SUM: usize = 14;

/// The per-provider herhaald beroep cell: [repeat, no repeat] over the outcome endings.
pub type RepeatBins = [i64; 2];

/// Bounding domains: the sets of trajectories one measure counts. Bounding is done per domain, so that
/// a child's ended trajectory is not dropped from the outcome figures in favour of a running one in the
/// same target group.
pub(crate) const DOMAINS: usize = 8;
pub(crate) const D_IN_CARE: usize = 0;
pub(crate) const D_STARTED: usize = 1;
pub(crate) const D_ENDED: usize = 2;
pub(crate) const D_HELP: usize = 3;
pub(crate) const D_REPEAT: usize = 4;
pub(crate) const D_PROBLEM: usize = 5;
pub(crate) const D_GRADE: usize = 6;
pub(crate) const D_GOAL: usize = 7;

pub(crate) fn eligible(m: &Measures, domain: usize) -> bool {
    match domain {
        D_IN_CARE => true,
        D_STARTED => m.started,
        D_ENDED => m.ended.is_some(),
        D_HELP => m.without_help.is_some(),
        D_REPEAT => m.repeat.is_some(),
        D_PROBLEM => m.improved.is_some(),
        D_GRADE => m.grade.is_some(),
        D_GOAL => m.goal_tenths.is_some(),
        _ => false,
    }
}

/// Every domain a trajectory is eligible for, as a mask: what a provider's own (unbounded) figures
/// count.
pub(crate) fn all_domains(m: &Measures) -> u8 {
    (0..DOMAINS)
        .filter(|d| eligible(m, *d))
        .fold(0u8, |mask, d| mask | (1 << d))
}

/// One trajectory active in the period, with where it sits in the grid.
pub(crate) struct Traj {
    pub client: [u8; 32],
    pub row: u32,
    pub muni: u16,
    pub group: u16,
    pub provider: u32,
    pub measures: Measures,
}

/// Adds one trajectory, kept in the domains `mask`, to its cell.
pub(crate) fn add_bins(bins: &mut Bins, m: &Measures, mask: u8) {
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
        // Counted with the ending it belongs to, so that its denominator is the outcome endings of
        // the same kept set.
        if m.repeat == Some(true) {
            bins[REPEAT_YES] += 1;
        }
    }
    if let (true, Some(yes)) = (kept(D_HELP), m.without_help) {
        bins[if yes { HELP_YES } else { HELP_NO }] += 1;
    }
    if let (true, Some(yes)) = (kept(D_PROBLEM), m.improved) {
        bins[if yes { IMPROVED } else { NOT_IMPROVED }] += 1;
    }
    if let (true, Some(grade)) = (kept(D_GRADE), m.grade) {
        bins[GRADE_COUNT] += 1;
        bins[GRADE_SUM] += 2 * i64::from(grade.clamp(1, 10)) - 11;
    }
    if let (true, Some(tenths)) = (kept(D_GOAL), m.goal_tenths) {
        bins[GOAL_COUNT] += 1;
        bins[GOAL_SUM] += i64::from(tenths.min(1000)) - 500;
    }
}

fn add_repeat(cell: &mut RepeatBins, m: &Measures, mask: u8) {
    if mask & (1 << D_ENDED) == 0 {
        return;
    }
    if m.ended.is_some_and(|c| c != EndClass::Administrative) {
        match m.repeat {
            Some(true) => cell[0] += 1,
            Some(false) => cell[1] += 1,
            None => {}
        }
    }
}

/// The codebook keys of a period's tables: public (the region file), apart from the providers, whose
/// rows only the provider itself ever reads.
#[derive(Debug, Clone)]
pub struct Frame {
    pub region: String,
    pub period: Period,
    pub as_of: kwm_schemas::Month,
    pub munis: Vec<MunicipalityCode>,
    /// (code, label nl, label en) of every target group.
    pub groups: Vec<(Code, String, String)>,
    /// Providers with a trajectory the period reads, in AGB order.
    pub providers: Vec<AgbCode>,
}

/// The true, bounded sums of a period. Never released: `measure` adds noise to them, and only a
/// provider's own (unbounded) sums go out unnoised, to that provider alone.
pub struct TrueTables {
    pub frame: Frame,
    /// Per municipality x target group (bounded per child), `munis.len() * groups.len()` cells.
    pub muni: Vec<Bins>,
    /// Herhaald beroep per provider x target group (bounded per child).
    pub provider_repeat: Vec<RepeatBins>,
    /// Each provider's own figures per target group, from its own rows alone (no bounding: bounding
    /// looks at other providers' rows; these are the provider's own data).
    pub own: Vec<Bins>,
}

impl fmt::Debug for TrueTables {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TrueTables")
            .field("region", &self.frame.region)
            .field("period", &self.frame.period)
            .finish_non_exhaustive()
    }
}

/// What one worker gathers over the shards it takes; summed at the end (children never span shards).
struct Partial {
    muni: Vec<Bins>,
    provider_repeat: Vec<RepeatBins>,
    own: Vec<Bins>,
}

impl Partial {
    fn new(m_n: usize, t_n: usize, p_n: usize) -> Self {
        Self {
            muni: vec![[0; BINS]; m_n * t_n],
            provider_repeat: vec![[0; 2]; p_n * t_n],
            own: vec![[0; BINS]; p_n * t_n],
        }
    }

    fn merge(mut self, other: Self) -> Self {
        for (a, b) in self.muni.iter_mut().zip(&other.muni) {
            add_into(a, b);
        }
        for (a, b) in self.own.iter_mut().zip(&other.own) {
            add_into(a, b);
        }
        for (a, b) in self.provider_repeat.iter_mut().zip(&other.provider_repeat) {
            a[0] += b[0];
            a[1] += b[1];
        }
        self
    }
}

pub(crate) fn add_into(into: &mut Bins, from: &Bins) {
    for b in 0..BINS {
        into[b] += from[b];
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
    t_n: usize,
}

impl Pass {
    /// One shard: its children's trajectories in care, their measures (herhaald beroep from the
    /// shard's own starts: a child's rows are all in one shard), bounding and aggregation.
    fn shard(&self, rows: &[EngineRow], acc: &mut Partial) {
        // The rows the period reads, ordered by child: by eight bytes of the pseudonym (the first is
        // the shard's, the same for all), the whole pseudonym only where those tie.
        let order = by_child(rows, |r| self.deriver.reads(r).then_some(()));

        let t_n = self.t_n;
        let mut trajs: Vec<Traj> = Vec::new();
        let mut masks: Vec<u8> = Vec::new();
        for client in each_child(rows, &order) {
            trajs.clear();
            for (_, i, _) in client {
                let row = &rows[*i as usize];
                // Group keys come from the codebook only; a row outside it (impossible after ingest
                // validation) is not counted anywhere rather than creating a key.
                if !self.deriver.active(row) || row.muni == OUTSIDE || row.group == OUTSIDE {
                    continue;
                }
                let measures = self.deriver.derive(row, || {
                    client.iter().any(|(_, j, _)| {
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
            for (t, mask) in trajs.iter().zip(&masks) {
                let (m, g, p) = (
                    usize::from(t.muni),
                    usize::from(t.group),
                    t.provider as usize,
                );
                // The provider's own figures: every trajectory it holds, unbounded, without
                // herhaald beroep (which other providers' rows decide).
                let mut own = t.measures;
                own.repeat = None;
                add_bins(&mut acc.own[p * t_n + g], &own, all_domains(&own));
                if *mask != 0 {
                    add_bins(&mut acc.muni[m * t_n + g], &t.measures, *mask);
                    add_repeat(&mut acc.provider_repeat[p * t_n + g], &t.measures, *mask);
                }
            }
        }
    }
}

impl TrueTables {
    /// One pass over the rows: bounding and aggregation, the shards taken in parallel (a child's rows
    /// must all be in one shard). Cost: linear in the rows, plus a sort per shard of the rows the
    /// period reads, by child. Refuses a period whose herhaald beroep window has not closed by
    /// `as_of`: rounds publish final periods only.
    pub fn build(input: &IndexedInput<'_>) -> Result<Self, ReleaseError> {
        let region = input.region;
        let policy = &region.policy;
        let deriver = Deriver::new(region, input.period, input.as_of);
        if !deriver.repeat_final() {
            return Err(ReleaseError::NotFinal(input.period));
        }
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

        // The providers with a trajectory in care in the period, in AGB order.
        let providers = providers_of(input.shards, |r| deriver.active(r));

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
            t_n,
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

        Ok(Self {
            frame: Frame {
                region: region.code.clone(),
                period: input.period,
                as_of: input.as_of,
                munis,
                groups,
                providers,
            },
            muni: partial.muni,
            provider_repeat: partial.provider_repeat,
            own: partial.own,
        })
    }
}

/// The rows of one shard that `pick` selects, as (pseudonym prefix, row index, what `pick` said of
/// the row), ordered by child: by eight bytes of the pseudonym (the first is the shard's, the same
/// for all), the whole pseudonym only where those tie. [`each_child`] walks them child by child.
pub(crate) fn by_child<T>(
    rows: &[EngineRow],
    pick: impl Fn(&EngineRow) -> Option<T>,
) -> Vec<(u64, u32, T)> {
    let prefix = |r: &EngineRow| {
        u64::from_be_bytes(
            r.client[1..9]
                .try_into()
                .unwrap_or_else(|_| unreachable!("8 bytes")),
        )
    };
    let mut order: Vec<(u64, u32, T)> = rows
        .iter()
        .enumerate()
        .filter_map(|(i, r)| pick(r).map(|t| (prefix(r), i as u32, t)))
        .collect();
    order.sort_unstable_by(|a, b| {
        a.0.cmp(&b.0)
            .then_with(|| rows[a.1 as usize].client.cmp(&rows[b.1 as usize].client))
            .then(a.1.cmp(&b.1))
    });
    order
}

/// The runs of [`by_child`]'s order that belong to one child each.
pub(crate) fn each_child<'a, T>(
    rows: &'a [EngineRow],
    order: &'a [(u64, u32, T)],
) -> impl Iterator<Item = &'a [(u64, u32, T)]> + 'a {
    order.chunk_by(move |a, b| a.0 == b.0 && rows[a.1 as usize].client == rows[b.1 as usize].client)
}

/// The providers of the rows `keep` selects, in AGB order.
pub(crate) fn providers_of(
    shards: &[Vec<EngineRow>],
    keep: impl Fn(&EngineRow) -> bool + Sync,
) -> Vec<AgbCode> {
    let mut providers: Vec<AgbCode> = shards
        .par_iter()
        .fold(FxHashSet::default, |mut set, shard| {
            let mut last = None;
            for row in shard.iter().filter(|r| keep(r)) {
                if last != Some(row.provider) {
                    set.insert(row.provider);
                    last = Some(row.provider);
                }
            }
            set
        })
        .reduce(FxHashSet::default, |mut a, b| {
            a.extend(b);
            a
        })
        .into_iter()
        .collect();
    providers.sort_unstable();
    providers
}

/// Position in the keyed order: administrative endings last (end histogram only), then the HMAC, then
/// the row (a tie of two HMACs does not happen, but the order must be total).
type Rank = (bool, [u8; 32], u32);

#[cfg(test)]
pub(crate) fn bound(
    client: &[Traj],
    rows: &[EngineRow],
    key: &OrderKey,
    max_rows: usize,
) -> Vec<u8> {
    let mut masks = Vec::new();
    bound_into(client, rows, key, max_rows, &mut masks);
    masks
}

/// The domains each of one child's trajectories is kept in, as bit masks. One trajectory alone is kept
/// wherever it is eligible (`max_rows` is at least 1); otherwise per domain [`select`] decides by the
/// keyed order, where in the end histogram an outcome ending goes before an administrative one (the
/// choice depends on the child's own data only, so the bound on the child's contribution holds). The
/// keyed order is computed only where it decides something: when a domain holds two trajectories of
/// one row, or more rows than allowed.
pub(crate) fn bound_into(
    client: &[Traj],
    rows: &[EngineRow],
    key: &OrderKey,
    max_rows: usize,
    masks: &mut Vec<u8>,
) {
    masks.clear();
    if client.len() == 1 {
        masks.push(all_domains(&client[0].measures));
        return;
    }
    masks.resize(client.len(), 0);
    let mut ranks: Vec<Option<[u8; 32]>> = Vec::new();
    let mut positions: Vec<usize> = Vec::new();
    for d in 0..DOMAINS {
        positions.clear();
        positions.extend((0..client.len()).filter(|i| eligible(&client[*i].measures, d)));
        let distinct_rows = positions.len() <= max_rows
            && positions.iter().enumerate().all(|(n, i)| {
                positions[..n]
                    .iter()
                    .all(|j| client[*j].group != client[*i].group)
            });
        if distinct_rows {
            for i in &positions {
                masks[*i] |= 1 << d;
            }
            continue;
        }
        if ranks.is_empty() {
            ranks.resize(client.len(), None);
        }
        let items: Vec<(u16, Rank)> = positions
            .iter()
            .map(|i| {
                let t = &client[*i];
                let rank = *ranks[*i]
                    .get_or_insert_with(|| key.rank(&t.client, &rows[t.row as usize].trajectory));
                let administrative =
                    d == D_ENDED && t.measures.ended == Some(EndClass::Administrative);
                (t.group, (administrative, rank, t.row))
            })
            .collect();
        for pos in select(&items, max_rows) {
            masks[positions[pos]] |= 1 << d;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use kwm_schemas::codes::{AgeBand, Pseudonym};
    use kwm_schemas::{AgbCode, WireRecord};
    use proptest::prelude::*;

    fn measures() -> impl Strategy<Value = Measures> {
        let class = prop_oneof![
            Just(None),
            Just(Some(EndClass::Plan)),
            Just(Some(EndClass::DropOut)),
            Just(Some(EndClass::Other)),
            Just(Some(EndClass::Administrative)),
        ];
        (
            proptest::bool::ANY,
            class,
            proptest::option::of(proptest::bool::ANY),
            proptest::option::of(proptest::bool::ANY),
            proptest::option::of(proptest::bool::ANY),
            proptest::option::of(1u8..=10),
            proptest::option::of(0u16..=1000),
        )
            .prop_map(
                |(started, ended, help, repeat, improved, grade, goal)| Measures {
                    started,
                    ended,
                    without_help: ended.and(help),
                    repeat: ended.and(repeat),
                    improved: ended.and(improved),
                    grade: ended.and(grade),
                    goal_tenths: ended.and(goal),
                },
            )
    }

    proptest! {
        /// Bounding: in every measure domain a child lands at most once in a target-group row and in
        /// at most `max_cells_per_client` rows, only trajectories of the domain are kept, and nothing
        /// is dropped that the rule did not require.
        #[test]
        fn no_child_exceeds_its_cells_in_any_domain(
            items in proptest::collection::vec((0u16..4, 0u16..2, 0u32..3, measures()), 1..9),
            max_rows in 1usize..4,
            key in proptest::array::uniform32(proptest::num::u8::ANY),
        ) {
            let region = kwm_schemas::RegionConfig::wbw();
            let codebook = super::super::Codebook::new(&region);
            let rows: Vec<EngineRow> = (0..items.len())
                .map(|i| {
                    let rec = WireRecord {
                        client: Pseudonym([9; 32]),
                        trajectory: Pseudonym([i as u8; 32]),
                        municipality: "GM0748".parse().expect("valid"),
                        target_group: "P01".parse().expect("valid"),
                        intensity: None,
                        product_category: None,
                        start_month: "2025-01".parse().expect("valid"),
                        end_month: None,
                        age_band: AgeBand::Age0To3,
                        end_reason: None,
                        satisfaction: None,
                        respondent: None,
                        carry_on_without_help: None,
                        problem_t_pre: None,
                        problem_t_post: None,
                        instrument: None,
                        goals_agreed: None,
                        goals_achieved: None,
                    };
                    let agb: AgbCode = "12345678".parse().expect("valid");
                    EngineRow::new(&codebook, agb, &rec)
                })
                .collect();
            let client: Vec<Traj> = items
                .iter()
                .enumerate()
                .map(|(i, (group, muni, provider, measures))| Traj {
                    client: [9; 32],
                    row: i as u32,
                    muni: *muni,
                    group: *group,
                    provider: *provider,
                    measures: *measures,
                })
                .collect();
            let masks = bound(&client, &rows, &OrderKey::new(&key), max_rows);
            for d in 0..DOMAINS {
                let kept: Vec<&Traj> = client
                    .iter()
                    .zip(&masks)
                    .filter(|(_, m)| *m & (1 << d) != 0)
                    .map(|(t, _)| t)
                    .collect();
                prop_assert!(kept.iter().all(|t| eligible(&t.measures, d)), "kept outside its domain");
                let mut groups: Vec<u16> = kept.iter().map(|t| t.group).collect();
                groups.sort_unstable();
                let n = groups.len();
                groups.dedup();
                prop_assert_eq!(groups.len(), n, "twice in one row of domain {}", d);
                prop_assert!(n <= max_rows, "more rows than allowed in domain {}", d);
                let mut eligible_groups: Vec<u16> = client
                    .iter()
                    .filter(|t| eligible(&t.measures, d))
                    .map(|t| t.group)
                    .collect();
                eligible_groups.sort_unstable();
                eligible_groups.dedup();
                prop_assert_eq!(n, eligible_groups.len().min(max_rows), "dropped more than needed");
            }
            prop_assert_eq!(bound(&client, &rows, &OrderKey::new(&key), max_rows), masks);
        }
    }
}
