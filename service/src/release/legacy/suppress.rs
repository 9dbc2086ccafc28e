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

use super::wire::CellStatus;

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
