//! Where a cell is suppressed (DESIGN section 7): primary suppression per cell (k, providers, dominance,
//! finality) and secondary suppression over the whole region grid of one criterion, so that every
//! release of a period shows a slice of one consistent pattern, and no suppressed cell can be recomputed,
//! or pinned to fewer than k values, from everything the releases of that period publish together.
//!
//! The grid of one criterion: municipalities x target groups, with the municipality totals, the region
//! figure per target group and the grand total; with per-provider reporting also providers x target
//! groups against the same region figures. Every equation of the grid ("a total is the sum of its line")
//! is flow conservation at one node of a small network (source -> municipality -> target group ->
//! [provider ->] sink -> source), so the exact range a suppressed cell can take, given every published
//! cell, is a max-flow question. That is the audit the engine runs before it lets a pattern go.

use kwm_schemas::release::CellStatus;

/// Dimensions of one criterion's grid and where each cell sits in the flat cell vector: inner cells
/// (municipality x target group), municipality totals, target-group totals (the region rows), the grand
/// total, then provider cells and provider totals when per-provider reporting is on (`providers > 0`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Shape {
    pub munis: usize,
    pub groups: usize,
    pub providers: usize,
}

/// One equation of the grid: `total` is the sum of `members`.
#[derive(Debug, Clone)]
pub(crate) struct Line {
    pub total: usize,
    pub members: Vec<usize>,
}

const SOURCE: usize = 0;
const SINK: usize = 1;

impl Shape {
    pub fn inner(&self, m: usize, t: usize) -> usize {
        m * self.groups + t
    }
    fn margins_start(&self) -> usize {
        self.munis * self.groups
    }
    pub fn muni_total(&self, m: usize) -> usize {
        self.margins_start() + m
    }
    pub fn group_total(&self, t: usize) -> usize {
        self.margins_start() + self.munis + t
    }
    pub fn grand_total(&self) -> usize {
        self.margins_start() + self.munis + self.groups
    }
    pub fn provider_cell(&self, p: usize, t: usize) -> usize {
        self.grand_total() + 1 + p * self.groups + t
    }
    pub fn provider_total(&self, p: usize) -> usize {
        self.grand_total() + 1 + self.providers * self.groups + p
    }
    pub fn len(&self) -> usize {
        self.grand_total() + 1 + self.providers * (self.groups + 1)
    }
    pub fn is_provider_cell(&self, cell: usize) -> bool {
        cell > self.grand_total()
    }
    /// Totals are the last resort as complements: they are what the releases are read for.
    fn is_total(&self, cell: usize) -> bool {
        (self.margins_start()..=self.grand_total()).contains(&cell)
            || (self.providers > 0 && cell >= self.provider_total(0))
    }

    fn muni_node(&self, m: usize) -> usize {
        2 + m
    }
    fn group_in(&self, t: usize) -> usize {
        2 + self.munis + t
    }
    fn group_out(&self, t: usize) -> usize {
        2 + self.munis + self.groups + t
    }
    fn provider_node(&self, p: usize) -> usize {
        2 + self.munis + 2 * self.groups + p
    }
    fn node_count(&self) -> usize {
        if self.providers > 0 {
            2 + self.munis + 2 * self.groups + self.providers
        } else {
            2 + self.munis + self.groups
        }
    }

    /// Every cell as an arc (from node, to node) of the network whose conservation laws are the grid's
    /// equations.
    fn arcs(&self) -> Vec<(usize, usize)> {
        let mut arcs = vec![(0, 0); self.len()];
        for m in 0..self.munis {
            for t in 0..self.groups {
                arcs[self.inner(m, t)] = (self.muni_node(m), self.group_in(t));
            }
            arcs[self.muni_total(m)] = (SOURCE, self.muni_node(m));
        }
        for t in 0..self.groups {
            let to = if self.providers > 0 {
                self.group_out(t)
            } else {
                SINK
            };
            arcs[self.group_total(t)] = (self.group_in(t), to);
        }
        arcs[self.grand_total()] = (SINK, SOURCE);
        for p in 0..self.providers {
            for t in 0..self.groups {
                arcs[self.provider_cell(p, t)] = (self.group_out(t), self.provider_node(p));
            }
            arcs[self.provider_total(p)] = (self.provider_node(p), SINK);
        }
        arcs
    }

    /// The equations as lines, each with its total: one per node, plus (with providers) the region row
    /// against the grand total, which the nodes imply but the line rules should also see.
    pub fn lines(&self) -> Vec<Line> {
        let mut lines = Vec::new();
        let (m_all, t_all) = (0..self.munis, 0..self.groups);
        for m in m_all.clone() {
            lines.push(Line {
                total: self.muni_total(m),
                members: t_all.clone().map(|t| self.inner(m, t)).collect(),
            });
        }
        for t in t_all.clone() {
            lines.push(Line {
                total: self.group_total(t),
                members: m_all.clone().map(|m| self.inner(m, t)).collect(),
            });
        }
        lines.push(Line {
            total: self.grand_total(),
            members: m_all.clone().map(|m| self.muni_total(m)).collect(),
        });
        lines.push(Line {
            total: self.grand_total(),
            members: t_all.clone().map(|t| self.group_total(t)).collect(),
        });
        if self.providers > 0 {
            let p_all = 0..self.providers;
            for t in t_all.clone() {
                lines.push(Line {
                    total: self.group_total(t),
                    members: p_all.clone().map(|p| self.provider_cell(p, t)).collect(),
                });
            }
            for p in p_all.clone() {
                lines.push(Line {
                    total: self.provider_total(p),
                    members: t_all.clone().map(|t| self.provider_cell(p, t)).collect(),
                });
            }
            lines.push(Line {
                total: self.grand_total(),
                members: p_all.map(|p| self.provider_total(p)).collect(),
            });
        }
        lines
    }
}

/// What primary suppression needs to know about one cell.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(crate) struct Facts {
    /// Additive count: the number of (client, target group) contributions, so that a total is the sum
    /// of its line.
    pub count: u64,
    /// Distinct clients, for the k threshold. Equal to `count` for a cell within one target group.
    pub clients: u64,
    /// Distinct providers.
    pub providers: u32,
    /// Contributions of the largest provider.
    pub top_provider: u64,
}

/// The policy as primary suppression applies it to one criterion.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Rules {
    pub k: u64,
    pub min_providers: u32,
    pub dominance_pct: u64,
    pub per_provider_reporting: bool,
    /// Herhaald beroep before its window has passed: nothing of the criterion is released.
    pub not_final: bool,
}

/// Whether a cell's true count is public: published, or known to be zero from its `no-data` status.
fn known(status: CellStatus) -> bool {
    matches!(status, CellStatus::Published | CellStatus::NoData)
}

/// Primary suppression, cell by cell. Provider cells are exempt from the provider rules: they exist only
/// when the region agreed to report per provider, and they hold one provider by construction.
pub(crate) fn primary(shape: &Shape, facts: &[Facts], rules: &Rules) -> Vec<CellStatus> {
    facts
        .iter()
        .enumerate()
        .map(|(cell, f)| {
            let provider_cell = shape.is_provider_cell(cell);
            if rules.not_final {
                CellStatus::NotFinal
            } else if f.clients == 0 {
                CellStatus::NoData
            } else if f.clients < rules.k {
                CellStatus::BelowK
            } else if !provider_cell && f.providers < rules.min_providers {
                CellStatus::FewProviders
            } else if !provider_cell
                && !rules.per_provider_reporting
                && u128::from(f.top_provider) * 100
                    > u128::from(rules.dominance_pct) * u128::from(f.count)
            {
                CellStatus::Dominance
            } else {
                CellStatus::Published
            }
        })
        .collect()
}

/// The full pattern of one criterion: primary, then secondary suppression.
pub(crate) fn pattern(shape: &Shape, facts: &[Facts], rules: &Rules) -> Vec<CellStatus> {
    let mut status = primary(shape, facts, rules);
    if !rules.not_final {
        let counts: Vec<u64> = facts.iter().map(|f| f.count).collect();
        secondary(shape, &counts, &mut status, rules.k);
    }
    status
}

/// Secondary suppression. First the line rules: wherever a line has exactly one hidden member (its
/// total included), or its total is published and its hidden cells hold fewer than k contributions
/// together, the smallest published cell of the line is suppressed as well (the total only when no cell
/// is left), until every line passes. Then the audit: every hidden cell's exact range given everything
/// published must span at least k values; a cell that fails gets a complement next to it, and the line
/// rules run again. Suppressing more only widens ranges, so a cell found safe stays safe and the loop
/// ends. The result depends on the counts alone: same data, same pattern.
pub(crate) fn secondary(shape: &Shape, counts: &[u64], status: &mut [CellStatus], k: u64) {
    let lines = shape.lines();
    let arcs = shape.arcs();
    let mut safe = vec![false; status.len()];
    loop {
        line_rules(&lines, counts, status, k);
        let mut exposed = None;
        for cell in 0..status.len() {
            if known(status[cell]) || safe[cell] {
                continue;
            }
            if spans_k(shape, &arcs, counts, status, cell, k) {
                safe[cell] = true;
            } else {
                exposed = Some(cell);
                break;
            }
        }
        let Some(cell) = exposed else { return };
        match complement(shape, &arcs, counts, status, cell) {
            Some(c) => status[c] = CellStatus::Secondary,
            // Nothing left to suppress: every cell with a count is hidden, and then no range is
            // bounded. Unreachable, but it must not loop.
            None => safe[cell] = true,
        }
    }
}

fn line_rules(lines: &[Line], counts: &[u64], status: &mut [CellStatus], k: u64) {
    loop {
        let mut changed = false;
        for line in lines {
            loop {
                let hidden: Vec<usize> = line
                    .members
                    .iter()
                    .copied()
                    .filter(|c| !known(status[*c]))
                    .collect();
                let total_hidden = !known(status[line.total]);
                let sum: u64 = hidden.iter().map(|c| counts[*c]).sum();
                let exposed = hidden.len() + usize::from(total_hidden) == 1
                    || (!total_hidden && hidden.len() >= 2 && sum < k);
                if !exposed {
                    break;
                }
                let smallest = line
                    .members
                    .iter()
                    .copied()
                    .filter(|c| status[*c] == CellStatus::Published)
                    .min_by_key(|c| (counts[*c], *c));
                match smallest {
                    Some(c) => status[c] = CellStatus::Secondary,
                    None if !total_hidden => status[line.total] = CellStatus::Secondary,
                    None => break,
                }
                changed = true;
            }
        }
        if !changed {
            return;
        }
    }
}

/// The published cell to suppress for an exposed one: a cell sharing a node (a line) with it, inner
/// cells before totals, smallest first; failing that, the smallest published cell anywhere.
fn complement(
    shape: &Shape,
    arcs: &[(usize, usize)],
    counts: &[u64],
    status: &[CellStatus],
    cell: usize,
) -> Option<usize> {
    let (u, v) = arcs[cell];
    let key = |c: &usize| (shape.is_total(*c), counts[*c], *c);
    let published = || (0..status.len()).filter(|c| status[*c] == CellStatus::Published);
    published()
        .filter(|c| {
            let (x, y) = arcs[*c];
            [x, y].iter().any(|n| *n == u || *n == v)
        })
        .min_by_key(key)
        .or_else(|| published().min_by_key(key))
}

/// Capacity standing in for "unbounded".
#[cfg(test)]
const UNBOUNDED: u64 = u64::MAX / 4;

/// The residual network of the hidden cells other than `skip`: a hidden cell may grow without bound and
/// shrink to zero; a known cell cannot change.
fn residual(
    arcs: &[(usize, usize)],
    counts: &[u64],
    status: &[CellStatus],
    skip: usize,
    nodes: usize,
    up: u64,
) -> FlowNet {
    let mut net = FlowNet::new(nodes);
    for (cell, (u, v)) in arcs.iter().enumerate() {
        if cell == skip || known(status[cell]) {
            continue;
        }
        net.add(*u, *v, up);
        net.add(*v, *u, counts[cell]);
    }
    net
}

/// Whether the hidden `cell` can take at least k values given every known cell: it can grow by the max
/// flow from its head back to its tail through the other hidden cells, and shrink by the max flow the
/// other way (at most its count). Both flows stop as soon as k - 1 is reached.
fn spans_k(
    shape: &Shape,
    arcs: &[(usize, usize)],
    counts: &[u64],
    status: &[CellStatus],
    cell: usize,
    k: u64,
) -> bool {
    let need = k.saturating_sub(1);
    let (u, v) = arcs[cell];
    let nodes = shape.node_count();
    let up = residual(arcs, counts, status, cell, nodes, need).max_flow(v, u, need);
    if up >= need {
        return true;
    }
    let rest = need - up;
    let down = residual(arcs, counts, status, cell, nodes, rest)
        .max_flow(u, v, rest)
        .min(counts[cell]);
    up + down >= need
}

/// The exact range `[lo, hi]` of a hidden cell given every known cell; `hi` is `None` when unbounded.
/// Integral by total unimodularity of the network. For tests and diagnostics.
#[cfg(test)]
pub(crate) fn exact_range(
    shape: &Shape,
    counts: &[u64],
    status: &[CellStatus],
    cell: usize,
) -> (u64, Option<u64>) {
    let arcs = shape.arcs();
    let (u, v) = arcs[cell];
    let nodes = shape.node_count();
    let up = residual(&arcs, counts, status, cell, nodes, UNBOUNDED).max_flow(v, u, UNBOUNDED);
    let down = residual(&arcs, counts, status, cell, nodes, UNBOUNDED)
        .max_flow(u, v, UNBOUNDED)
        .min(counts[cell]);
    let hi = (up < UNBOUNDED / 2).then(|| counts[cell] + up);
    (counts[cell] - down, hi)
}

/// A small max-flow network (Edmonds-Karp): a grid has a few dozen nodes.
struct FlowNet {
    adj: Vec<Vec<usize>>,
    to: Vec<usize>,
    cap: Vec<u64>,
}

impl FlowNet {
    fn new(nodes: usize) -> Self {
        Self {
            adj: vec![Vec::new(); nodes],
            to: Vec::new(),
            cap: Vec::new(),
        }
    }

    /// An edge and its zero-capacity reverse, at indices e and e ^ 1.
    fn add(&mut self, u: usize, v: usize, cap: u64) {
        self.adj[u].push(self.to.len());
        self.to.push(v);
        self.cap.push(cap);
        self.adj[v].push(self.to.len());
        self.to.push(u);
        self.cap.push(0);
    }

    /// Max flow from `s` to `t`, stopping once `limit` is reached.
    fn max_flow(&mut self, s: usize, t: usize, limit: u64) -> u64 {
        let mut flow = 0u64;
        let n = self.adj.len();
        while flow < limit {
            let mut via = vec![usize::MAX; n];
            let mut seen = vec![false; n];
            seen[s] = true;
            let mut queue = std::collections::VecDeque::from([s]);
            while let Some(x) = queue.pop_front() {
                if x == t {
                    break;
                }
                for &e in &self.adj[x] {
                    let y = self.to[e];
                    if self.cap[e] > 0 && !seen[y] {
                        seen[y] = true;
                        via[y] = e;
                        queue.push_back(y);
                    }
                }
            }
            if !seen[t] {
                break;
            }
            let mut push = limit - flow;
            let mut x = t;
            while x != s {
                let e = via[x];
                push = push.min(self.cap[e]);
                x = self.to[e ^ 1];
            }
            let mut x = t;
            while x != s {
                let e = via[x];
                self.cap[e] -= push;
                self.cap[e ^ 1] = self.cap[e ^ 1].saturating_add(push);
                x = self.to[e ^ 1];
            }
            flow += push;
        }
        flow
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use CellStatus::*;

    /// Unbounded, for the auditor's interval arithmetic.
    const INF: i64 = 1 << 40;

    /// The grid's equations written out from the definition of the tables, independently of
    /// `Shape::lines` and `Shape::arcs`: (total, members).
    fn equations(s: &Shape) -> Vec<(usize, Vec<usize>)> {
        let mut eq = Vec::new();
        for m in 0..s.munis {
            eq.push((
                s.muni_total(m),
                (0..s.groups).map(|t| s.inner(m, t)).collect(),
            ));
        }
        for t in 0..s.groups {
            eq.push((
                s.group_total(t),
                (0..s.munis).map(|m| s.inner(m, t)).collect(),
            ));
            if s.providers > 0 {
                eq.push((
                    s.group_total(t),
                    (0..s.providers).map(|p| s.provider_cell(p, t)).collect(),
                ));
            }
        }
        eq.push((
            s.grand_total(),
            (0..s.munis).map(|m| s.muni_total(m)).collect(),
        ));
        eq.push((
            s.grand_total(),
            (0..s.groups).map(|t| s.group_total(t)).collect(),
        ));
        for p in 0..s.providers {
            eq.push((
                s.provider_total(p),
                (0..s.groups).map(|t| s.provider_cell(p, t)).collect(),
            ));
        }
        if s.providers > 0 {
            eq.push((
                s.grand_total(),
                (0..s.providers).map(|p| s.provider_total(p)).collect(),
            ));
        }
        eq
    }

    /// The auditor: knows the true count of every published cell (and that `no-data` cells are zero) and
    /// that every cell is at least zero, and narrows every hidden cell's interval over all equations
    /// until nothing changes. Sound: the truth always stays inside.
    fn propagate(s: &Shape, counts: &[u64], status: &[CellStatus]) -> Vec<(i64, i64)> {
        let mut iv: Vec<(i64, i64)> = (0..s.len())
            .map(|c| {
                if known(status[c]) {
                    (counts[c] as i64, counts[c] as i64)
                } else {
                    (0, INF)
                }
            })
            .collect();
        let eqs = equations(s);
        for _round in 0..1_000_000 {
            let mut changed = false;
            for (total, members) in &eqs {
                let lo_sum: i64 = members.iter().map(|c| iv[*c].0).sum();
                let unbounded = members.iter().filter(|c| iv[**c].1 >= INF).count();
                let hi_finite: i64 = members.iter().map(|c| iv[*c].1).filter(|h| *h < INF).sum();
                let hi_sum = if unbounded > 0 { INF } else { hi_finite };
                let (tlo, thi) = iv[*total];
                let narrowed = (tlo.max(lo_sum), thi.min(hi_sum));
                if narrowed != iv[*total] {
                    iv[*total] = narrowed;
                    changed = true;
                }
                let (tlo, thi) = iv[*total];
                for c in members {
                    let (lo, hi) = iv[*c];
                    let new_hi = if thi >= INF {
                        hi
                    } else {
                        hi.min(thi - (lo_sum - lo))
                    };
                    let others_unbounded = unbounded - usize::from(hi >= INF) > 0;
                    let new_lo = if others_unbounded {
                        lo
                    } else {
                        lo.max(tlo - (hi_finite - if hi < INF { hi } else { 0 }))
                    };
                    if (new_lo, new_hi) != (lo, hi) {
                        iv[*c] = (new_lo, new_hi);
                        changed = true;
                    }
                }
            }
            if !changed {
                return iv;
            }
        }
        panic!("interval propagation did not settle");
    }

    /// A grid built from clients per (municipality, target group, provider), as the engine builds it.
    fn grid(n: &[Vec<Vec<u64>>], providers_shown: bool) -> (Shape, Vec<Facts>) {
        let (munis, groups, nprov) = (n.len(), n[0].len(), n[0][0].len());
        let shape = Shape {
            munis,
            groups,
            providers: if providers_shown { nprov } else { 0 },
        };
        let mut per: Vec<Vec<u64>> = vec![vec![0; nprov]; shape.len()];
        for (m, by_group) in n.iter().enumerate() {
            for (t, by_provider) in by_group.iter().enumerate() {
                for (p, v) in by_provider.iter().copied().enumerate() {
                    let mut cells = vec![
                        shape.inner(m, t),
                        shape.muni_total(m),
                        shape.group_total(t),
                        shape.grand_total(),
                    ];
                    if providers_shown {
                        cells.push(shape.provider_cell(p, t));
                        cells.push(shape.provider_total(p));
                    }
                    for c in cells {
                        per[c][p] += v;
                    }
                }
            }
        }
        let facts = per
            .iter()
            .map(|by_p| {
                let count = by_p.iter().sum();
                Facts {
                    count,
                    clients: count,
                    providers: by_p.iter().filter(|v| **v > 0).count() as u32,
                    top_provider: by_p.iter().copied().max().unwrap_or(0),
                }
            })
            .collect();
        (shape, facts)
    }

    fn tensor(
        max_m: usize,
        max_t: usize,
        max_count: u64,
    ) -> impl Strategy<Value = Vec<Vec<Vec<u64>>>> {
        (2..=max_m, 2..=max_t, 1usize..=4).prop_flat_map(move |(m, t, p)| {
            let entry = prop_oneof![Just(0u64), 0..=max_count / 4, 0..=max_count / p as u64];
            proptest::collection::vec(
                proptest::collection::vec(proptest::collection::vec(entry, p), t),
                m,
            )
        })
    }

    fn rules_strategy() -> impl Strategy<Value = Rules> {
        (3u64..=10, 1u32..=3, 50u64..=100, proptest::bool::ANY).prop_map(
            |(k, min_providers, dominance_pct, ppr)| Rules {
                k,
                min_providers,
                dominance_pct,
                per_provider_reporting: ppr,
                not_final: false,
            },
        )
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(400))]

        /// No published cell breaks a primary rule, and the auditor cannot pin any suppressed cell to
        /// fewer than k values from the published cells and totals of all releases of the period.
        #[test]
        fn no_suppressed_cell_can_be_pinned(n in tensor(5, 6, 40), rules in rules_strategy()) {
            let (shape, facts) = grid(&n, rules.per_provider_reporting);
            let status = pattern(&shape, &facts, &rules);
            for (c, f) in facts.iter().enumerate() {
                if status[c] == Published {
                    prop_assert!(f.clients >= rules.k, "cell {c} published below k");
                    if !shape.is_provider_cell(c) {
                        prop_assert!(f.providers >= rules.min_providers, "cell {c} with too few providers");
                        if !rules.per_provider_reporting {
                            prop_assert!(f.top_provider * 100 <= rules.dominance_pct * f.count, "cell {c} dominated");
                        }
                    }
                }
                if f.count == 0 {
                    prop_assert_eq!(status[c], NoData);
                }
            }
            let counts: Vec<u64> = facts.iter().map(|f| f.count).collect();
            let iv = propagate(&shape, &counts, &status);
            for c in 0..shape.len() {
                if known(status[c]) {
                    continue;
                }
                let (lo, hi) = iv[c];
                prop_assert!(lo <= counts[c] as i64 && counts[c] as i64 <= hi, "auditor unsound at {c}");
                prop_assert!(hi - lo + 1 >= rules.k as i64, "cell {c} ({:?}, {}) pinned to [{lo}, {hi}], k = {}", status[c], counts[c], rules.k);
                // The engine's exact range lies within the auditor's outer interval.
                let (elo, ehi) = exact_range(&shape, &counts, &status, c);
                prop_assert!(elo as i64 >= lo && ehi.map_or(INF, |h| h as i64) <= hi);
                prop_assert!(ehi.map_or(u64::MAX, |h| h - elo + 1) >= rules.k);
            }
            prop_assert_eq!(pattern(&shape, &facts, &rules), status, "not deterministic");
        }
    }

    /// Enumerates every non-negative completion of the hidden inner cells (no providers) that agrees
    /// with the known totals, within `bounds`, and returns each hidden cell's [min, max] over them;
    /// `None` if the search grows too large.
    fn enumerate(
        s: &Shape,
        counts: &[u64],
        status: &[CellStatus],
        bounds: &[(i64, i64)],
    ) -> Option<Vec<(i64, i64)>> {
        let inner = s.munis * s.groups;
        let vars: Vec<usize> = (0..inner).filter(|c| !known(status[*c])).collect();
        // Known totals as equations over inner cells.
        let mut eqs: Vec<(i64, Vec<usize>)> = Vec::new();
        for m in 0..s.munis {
            eqs.push((
                s.muni_total(m) as i64,
                (0..s.groups).map(|t| s.inner(m, t)).collect(),
            ));
        }
        for t in 0..s.groups {
            eqs.push((
                s.group_total(t) as i64,
                (0..s.munis).map(|m| s.inner(m, t)).collect(),
            ));
        }
        eqs.push((s.grand_total() as i64, (0..inner).collect()));
        let eqs: Vec<(i64, Vec<usize>)> = eqs
            .into_iter()
            .filter(|(total, _)| known(status[*total as usize]))
            .map(|(total, cells)| (counts[total as usize] as i64, cells))
            .collect();

        struct Search<'a> {
            s: &'a Shape,
            status: &'a [CellStatus],
            vars: Vec<usize>,
            bounds: &'a [(i64, i64)],
            eqs: Vec<(i64, Vec<usize>)>,
            values: Vec<Option<i64>>,
            ranges: Vec<(i64, i64)>,
            visited: u64,
        }
        impl Search<'_> {
            fn consistent(&self) -> bool {
                self.eqs.iter().all(|(value, cells)| {
                    let sum: i64 = cells.iter().filter_map(|c| self.values[*c]).sum();
                    let complete = cells.iter().all(|c| self.values[*c].is_some());
                    sum <= *value && (!complete || sum == *value)
                })
            }
            fn record(&mut self) {
                let s = self.s;
                let v = |c: usize| self.values[c].unwrap_or(0);
                let mut full = vec![0i64; s.len()];
                for m in 0..s.munis {
                    for t in 0..s.groups {
                        let x = v(s.inner(m, t));
                        full[s.inner(m, t)] = x;
                        full[s.muni_total(m)] += x;
                        full[s.group_total(t)] += x;
                        full[s.grand_total()] += x;
                    }
                }
                for (c, x) in full.into_iter().enumerate() {
                    if !known(self.status[c]) {
                        self.ranges[c] = (self.ranges[c].0.min(x), self.ranges[c].1.max(x));
                    }
                }
            }
            fn run(&mut self, i: usize) -> bool {
                self.visited += 1;
                if self.visited > 5_000_000 {
                    return false;
                }
                if i == self.vars.len() {
                    self.record();
                    return true;
                }
                let c = self.vars[i];
                let (lo, hi) = self.bounds[c];
                for x in lo..=hi {
                    self.values[c] = Some(x);
                    if self.consistent() && !self.run(i + 1) {
                        return false;
                    }
                }
                self.values[c] = None;
                true
            }
        }
        let mut values = vec![None; s.len()];
        for c in 0..inner {
            if known(status[c]) {
                values[c] = Some(counts[c] as i64);
            }
        }
        let mut search = Search {
            s,
            status,
            vars,
            bounds,
            eqs,
            values,
            ranges: vec![(i64::MAX, i64::MIN); s.len()],
            visited: 0,
        };
        search.run(0).then_some(search.ranges)
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(150))]

        /// On tiny grids the exact ranges the engine audits with equal those of brute-force enumeration,
        /// and every suppressed cell keeps at least k values.
        #[test]
        fn exact_ranges_match_enumeration(n in tensor(3, 3, 12), rules in rules_strategy()) {
            let rules = Rules { per_provider_reporting: false, ..rules };
            let (shape, facts) = grid(&n, false);
            let status = pattern(&shape, &facts, &rules);
            let counts: Vec<u64> = facts.iter().map(|f| f.count).collect();
            let iv = propagate(&shape, &counts, &status);
            if iv.iter().any(|(_, hi)| *hi >= INF) {
                // Unbounded cells (the grand total hidden): nothing to enumerate over.
                return Ok(());
            }
            let Some(ranges) = enumerate(&shape, &counts, &status, &iv) else { return Ok(()) };
            for c in 0..shape.len() {
                if known(status[c]) {
                    continue;
                }
                let (lo, hi) = exact_range(&shape, &counts, &status, c);
                let hi = hi.expect("bounded by the auditor") as i64;
                prop_assert_eq!(ranges[c], (lo as i64, hi), "cell {}", c);
                prop_assert!(hi - lo as i64 + 1 >= rules.k as i64);
            }
        }
    }

    fn rules(k: u64) -> Rules {
        Rules {
            k,
            min_providers: 1,
            dominance_pct: 100,
            per_provider_reporting: false,
            not_final: false,
        }
    }

    fn facts_of(counts: &[u64]) -> Vec<Facts> {
        counts
            .iter()
            .map(|c| Facts {
                count: *c,
                clients: *c,
                providers: 3,
                top_provider: c / 3,
            })
            .collect()
    }

    /// A 2 x 2 grid with margins, laid out as the shape lays it out.
    fn two_by_two(x: [[u64; 2]; 2]) -> Vec<u64> {
        let r = [x[0][0] + x[0][1], x[1][0] + x[1][1]];
        let c = [x[0][0] + x[1][0], x[0][1] + x[1][1]];
        vec![
            x[0][0],
            x[0][1],
            x[1][0],
            x[1][1],
            r[0],
            r[1],
            c[0],
            c[1],
            r[0] + r[1],
        ]
    }

    #[test]
    fn a_lone_suppressed_cell_gets_complements_in_its_row_and_column() {
        let shape = Shape {
            munis: 2,
            groups: 2,
            providers: 0,
        };
        let counts = two_by_two([[3, 20], [30, 25]]);
        let status = pattern(&shape, &facts_of(&counts), &rules(5));
        // 3 is below k; its row and column partners follow, and then the fourth cell closes the cycle.
        assert_eq!(&status[..4], &[BelowK, Secondary, Secondary, Secondary]);
        assert!(status[4..].iter().all(|s| *s == Published));
        assert_eq!(exact_range(&shape, &counts, &status, 0), (0, Some(23)));
    }

    #[test]
    fn a_suppressed_total_is_protected_too() {
        // The municipality total is dominated by one provider although no cell is: the line rule hides a
        // cell of the municipality column so that the total cannot be read off the grand total.
        let shape = Shape {
            munis: 2,
            groups: 2,
            providers: 0,
        };
        let counts = two_by_two([[10, 12], [30, 25]]);
        let mut facts = facts_of(&counts);
        facts[shape.muni_total(0)].top_provider = 21;
        let status = pattern(
            &shape,
            &facts,
            &Rules {
                dominance_pct: 85,
                ..rules(5)
            },
        );
        assert_eq!(status[shape.muni_total(0)], Dominance);
        for c in 0..shape.len() {
            if !known(status[c]) {
                let (lo, hi) = exact_range(&shape, &counts, &status, c);
                assert!(hi.map_or(u64::MAX, |h| h - lo + 1) >= 5, "cell {c}");
            }
        }
    }

    #[test]
    fn the_audit_catches_what_the_line_rules_miss() {
        // A six-cell cycle over three rows and columns: every line has two hidden cells holding at least
        // k together, so the line rules are content, yet the two cells of 1 pin each other: the cycle
        // moves by at most min(+side) + min(-side) = 2.
        let shape = Shape {
            munis: 3,
            groups: 3,
            providers: 0,
        };
        let x = [[1, 50, 40], [40, 50, 1], [50, 40, 50]];
        let mut counts = vec![0u64; shape.len()];
        for m in 0..3 {
            for t in 0..3 {
                counts[shape.inner(m, t)] = x[m][t];
                counts[shape.muni_total(m)] += x[m][t];
                counts[shape.group_total(t)] += x[m][t];
                counts[shape.grand_total()] += x[m][t];
            }
        }
        let mut status = vec![Published; shape.len()];
        for (m, t) in [(0, 0), (0, 1), (1, 1), (1, 2), (2, 2), (2, 0)] {
            status[shape.inner(m, t)] = Secondary;
        }
        status[shape.inner(0, 0)] = BelowK;
        status[shape.inner(1, 2)] = BelowK;
        let before = exact_range(&shape, &counts, &status, shape.inner(0, 0));
        assert_eq!(before, (0, Some(2)));
        let mut lines_only = status.clone();
        line_rules(&shape.lines(), &counts, &mut lines_only, 10);
        assert_eq!(lines_only, status, "the line rules alone see nothing wrong");
        secondary(&shape, &counts, &mut status, 10);
        for c in 0..shape.len() {
            if !known(status[c]) {
                let (lo, hi) = exact_range(&shape, &counts, &status, c);
                assert!(
                    hi.map_or(u64::MAX, |h| h - lo + 1) >= 10,
                    "cell {c}: [{lo}, {hi:?}]"
                );
            }
        }
    }

    #[test]
    fn not_final_hides_everything_and_needs_no_complements() {
        let shape = Shape {
            munis: 2,
            groups: 2,
            providers: 0,
        };
        let counts = two_by_two([[30, 20], [30, 25]]);
        let status = pattern(
            &shape,
            &facts_of(&counts),
            &Rules {
                not_final: true,
                ..rules(5)
            },
        );
        assert!(status.iter().all(|s| *s == NotFinal));
    }
}
