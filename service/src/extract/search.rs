//! The search of the generalisation lattice: one node per combination of hierarchy levels of the
//! quasi-identifiers. A node is anonymous when the records of its equivalence classes that fail k (in
//! children) or distinct l (sensitive values) are at most the allowed share; the search returns the
//! anonymous node of least information loss (loss metric, suppressed records at full loss).
//!
//! Best-first branch and bound: the loss of a node's generalisation over all records is a lower bound of
//! its loss with suppression (a suppressed record loses 1, the most a generalised one can) and is
//! monotone in the lattice, computed from the per-column value counts without grouping. Nodes are
//! visited in order of that bound; once the bound exceeds the best loss found, no node left can win, so
//! the result equals that of evaluating every node (a test checks this against the exhaustive search).
//! k in children and distinct l are monotone under generalisation (a merged class fails only if every
//! part failed), so anonymity is too: ARX's Flash prunes with that. It is not used here, because with
//! suppression the loss is not monotone (a node above may leave out fewer records), so an anonymous
//! node's successors must still be weighed; the loss bound does the pruning here.
//!
//! The data are first reduced to cells: distinct combinations of the quasi-identifiers' leaves and the
//! sensitive value, with their record counts; children are lists of the cells their records fall in.
//! A node is evaluated on cells, never on records. Classes only merge going up the lattice, so a node
//! can also be evaluated on the cells of an evaluated node below it, rolled up to (its class, sensitive
//! value): a few such roll-ups are kept and the smallest one below a node is used (ARX keeps snapshots of
//! evaluated nodes for the same reason).

use kwm_schemas::extract::{ExtractSpec, Share};
use rayon::prelude::*;
use rustc_hash::FxHashMap;

use super::hierarchy::Hierarchy;
use super::ExtractError;

/// Levels of the quasi-identifiers, in the order of [`Prepared::hierarchies`].
pub(crate) type Node = Vec<u8>;

/// Cells and children: the data at level 0 (the base), or rolled up to the classes of a node.
#[derive(Debug, Clone, Default)]
pub(crate) struct Table {
    /// Leaves of each cell, `q` per cell (for a rolled-up cell, those of one of its records: every
    /// record of it falls in the same group at the node and above).
    pub leaves: Vec<u32>,
    /// Sensitive value code of each cell; cells are ordered by it.
    pub sens: Vec<u32>,
    pub records: Vec<u32>,
    /// Children whose records all fall in the cell (and in no other).
    pub solo: Vec<u32>,
    /// Distinct cells of each child of several cells, one child after another (`child_start` delimits
    /// them).
    pub child_cells: Vec<u32>,
    pub child_start: Vec<u32>,
}

impl Table {
    pub fn cells(&self) -> usize {
        self.records.len()
    }
}

/// The data of one request reduced for the search.
#[derive(Debug)]
pub(crate) struct Prepared {
    pub hierarchies: Vec<Hierarchy>,
    pub base: Table,
    pub records: u64,
    /// Loss weight per quasi-identifier, level and leaf, in units of `1 / unit`.
    weight: Vec<Vec<Vec<u128>>>,
    /// Lower bound per quasi-identifier and level: the weights summed over all records.
    bound: Vec<Vec<u128>>,
    /// The loss of one record in one quasi-identifier when it is suppressed.
    pub unit: u128,
}

/// One node's equivalence classes and whether it is anonymous.
#[derive(Debug, Clone)]
pub(crate) struct Evaluation {
    pub node: Node,
    /// Class of each cell.
    pub cell_class: Vec<u32>,
    pub class_children: Vec<u32>,
    pub class_records: Vec<u32>,
    pub class_distinct: Vec<u32>,
    /// Whether a class is released (meets k and l).
    pub class_kept: Vec<bool>,
    pub suppressed: u64,
    pub anonymous: bool,
    /// Loss in units of `1 / unit` summed over records and quasi-identifiers.
    pub loss: u128,
    /// The part of `loss` from released records.
    pub generalisation_loss: u128,
}

fn gcd(mut a: u128, mut b: u128) -> u128 {
    while b != 0 {
        (a, b) = (b, a % b);
    }
    a
}

impl Prepared {
    pub fn new(hierarchies: Vec<Hierarchy>, base: Table) -> Result<Self, ExtractError> {
        let q = hierarchies.len();
        let records = base.records.iter().map(|&c| u64::from(c)).sum();
        // Exact loss arithmetic: the unit is the least common multiple of (leaves - 1).
        let mut unit: u128 = 1;
        for h in &hierarchies {
            let d = h.leaves() as u128;
            if d > 1 {
                unit = (unit / gcd(unit, d - 1))
                    .checked_mul(d - 1)
                    .ok_or(ExtractError::TooManyValues)?;
            }
        }
        let mut weight = Vec::with_capacity(q);
        let mut bound = Vec::with_capacity(q);
        for (a, h) in hierarchies.iter().enumerate() {
            let d = h.leaves() as u128;
            let mut marginal = vec![0u128; h.leaves()];
            for (c, &n) in base.records.iter().enumerate() {
                marginal[base.leaves[c * q + a] as usize] += u128::from(n);
            }
            let per_level: Vec<Vec<u128>> = (0..h.levels())
                .map(|lvl| {
                    (0..h.leaves() as u32)
                        .map(|leaf| {
                            if d <= 1 {
                                0
                            } else {
                                let under = u128::from(h.leaves_under(lvl, h.group(lvl, leaf)));
                                (under - 1) * (unit / (d - 1))
                            }
                        })
                        .collect()
                })
                .collect();
            bound.push(
                per_level
                    .iter()
                    .map(|w| w.iter().zip(&marginal).map(|(w, m)| w * m).sum())
                    .collect(),
            );
            weight.push(per_level);
        }
        Ok(Self {
            hierarchies,
            base,
            records,
            weight,
            bound,
            unit,
        })
    }

    pub fn q(&self) -> usize {
        self.hierarchies.len()
    }

    /// The loss if every record were released at this node: a lower bound of its loss.
    pub fn lower_bound(&self, node: &[u8]) -> u128 {
        node.iter()
            .enumerate()
            .map(|(a, &lvl)| self.bound[a][usize::from(lvl)])
            .sum()
    }

    /// The largest loss there is: every record suppressed.
    pub fn max_loss(&self) -> u128 {
        u128::from(self.records) * self.q() as u128 * self.unit
    }

    /// Every node of the lattice.
    pub fn lattice(&self) -> Vec<Node> {
        let mut nodes: Vec<Node> = vec![Vec::new()];
        for h in &self.hierarchies {
            nodes = nodes
                .into_iter()
                .flat_map(|n| {
                    (0..h.levels() as u8).map(move |l| {
                        let mut m = n.clone();
                        m.push(l);
                        m
                    })
                })
                .collect();
        }
        nodes
    }

    /// The equivalence classes of a node, and whether it meets k, l and the suppression share, from
    /// the base or from a table rolled up to a node below it. `cell_class` is of the table's cells.
    pub fn evaluate(
        &self,
        t: &Table,
        node: &[u8],
        k: u32,
        l: u32,
        max_suppressed: Share,
    ) -> Evaluation {
        let q = self.q();
        let mut index: FxHashMap<u128, u32> = FxHashMap::default();
        let mut cell_class = Vec::with_capacity(t.cells());
        let mut class_records: Vec<u32> = Vec::new();
        let mut class_distinct: Vec<u32> = Vec::new();
        let mut class_children: Vec<u32> = Vec::new();
        let mut last_sens: Vec<u32> = Vec::new();
        for c in 0..t.cells() {
            let mut key: u128 = 0;
            for (a, h) in self.hierarchies.iter().enumerate() {
                let lvl = usize::from(node[a]);
                key = key * h.groups(lvl) as u128 + u128::from(h.group(lvl, t.leaves[c * q + a]));
            }
            let next = class_records.len() as u32;
            let class = *index.entry(key).or_insert(next);
            if class == next {
                class_records.push(0);
                class_distinct.push(0);
                class_children.push(0);
                last_sens.push(u32::MAX);
            }
            let i = class as usize;
            class_records[i] += t.records[c];
            class_children[i] += t.solo[c];
            // Cells come in order of their sensitive code, so a class sees each code in one run.
            if last_sens[i] != t.sens[c] {
                last_sens[i] = t.sens[c];
                class_distinct[i] += 1;
            }
            cell_class.push(class);
        }
        let classes = class_records.len();
        let mut last_child = vec![u32::MAX; classes];
        for child in 0..t.child_start.len().saturating_sub(1) {
            let (from, to) = (
                t.child_start[child] as usize,
                t.child_start[child + 1] as usize,
            );
            for &cell in &t.child_cells[from..to] {
                let i = cell_class[cell as usize] as usize;
                if last_child[i] != child as u32 {
                    last_child[i] = child as u32;
                    class_children[i] += 1;
                }
            }
        }
        let class_kept: Vec<bool> = (0..classes)
            .map(|i| class_children[i] >= k && class_distinct[i] >= l)
            .collect();
        let suppressed: u64 = (0..classes)
            .filter(|&i| !class_kept[i])
            .map(|i| u64::from(class_records[i]))
            .sum();
        let mut generalisation_loss: u128 = 0;
        for c in 0..t.cells() {
            if class_kept[cell_class[c] as usize] {
                let w: u128 = (0..q)
                    .map(|a| self.weight[a][usize::from(node[a])][t.leaves[c * q + a] as usize])
                    .sum();
                generalisation_loss += w * u128::from(t.records[c]);
            }
        }
        let loss = generalisation_loss + u128::from(suppressed) * q as u128 * self.unit;
        Evaluation {
            node: node.to_vec(),
            cell_class,
            class_children,
            class_records,
            class_distinct,
            class_kept,
            suppressed,
            anonymous: suppressed <= max_suppressed.of(self.records),
            loss,
            generalisation_loss,
        }
    }

    /// The table `t` rolled up to the classes of its evaluation `e`: one cell per (class, sensitive
    /// value). Cells stay in order of sensitive value: `t`'s are, and a new cell is numbered where
    /// its first part comes.
    pub fn roll_up(&self, t: &Table, e: &Evaluation) -> Table {
        let q = self.q();
        let mut index: FxHashMap<(u32, u32), u32> = FxHashMap::default();
        let mut out = Table::default();
        let mut new_of = Vec::with_capacity(t.cells());
        for c in 0..t.cells() {
            let next = out.records.len() as u32;
            let n = *index.entry((e.cell_class[c], t.sens[c])).or_insert(next);
            if n == next {
                out.leaves.extend_from_slice(&t.leaves[c * q..(c + 1) * q]);
                out.sens.push(t.sens[c]);
                out.records.push(0);
                out.solo.push(0);
            }
            out.records[n as usize] += t.records[c];
            out.solo[n as usize] += t.solo[c];
            new_of.push(n);
        }
        out.child_start.push(0);
        let mut run = Vec::new();
        for child in 0..t.child_start.len().saturating_sub(1) {
            run.clear();
            run.extend(
                t.child_cells[t.child_start[child] as usize..t.child_start[child + 1] as usize]
                    .iter()
                    .map(|&c| new_of[c as usize]),
            );
            run.sort_unstable();
            run.dedup();
            if let [only] = run[..] {
                out.solo[only as usize] += 1;
            } else {
                out.child_cells.extend_from_slice(&run);
                out.child_start.push(out.child_cells.len() as u32);
            }
        }
        out
    }
}

/// Ordering of candidates: least loss, then least generalised (sum of levels), then the levels.
fn rank(loss: u128, node: &[u8]) -> (u128, u32, Node) {
    (
        loss,
        node.iter().map(|&l| u32::from(l)).sum(),
        node.to_vec(),
    )
}

/// The outcome of a search: the best node's evaluation, and how many nodes were evaluated.
#[derive(Debug)]
pub(crate) struct Found {
    pub best: Evaluation,
    pub lattice_nodes: u64,
    pub evaluated: u64,
}

/// Roll-ups kept during a search; each is at most a quarter of the base.
const ROLL_UPS: usize = 8;

/// Best-first branch and bound (see the module comment). `None` when no node is anonymous.
pub(crate) fn search(p: &Prepared, spec: &ExtractSpec) -> Option<Found> {
    let mut nodes: Vec<(u128, u32, Node)> = p
        .lattice()
        .into_iter()
        .map(|n| {
            let (_, height, n) = rank(0, &n);
            (p.lower_bound(&n), height, n)
        })
        .collect();
    nodes.sort_unstable();
    let lattice_nodes = nodes.len() as u64;
    let mut best: Option<Evaluation> = None;
    let mut evaluated = 0;
    let mut roll_ups: Vec<(Node, Table)> = Vec::new();
    // The next nodes are evaluated one per thread at a time; a node of a batch that a better node of
    // the same batch would have pruned is only wasted work, the answer is the same.
    let batch = rayon::current_num_threads().max(1);
    let mut next = 0;
    while next < nodes.len() {
        let limit = best.as_ref().map_or(u128::MAX, |b| b.loss);
        let take = nodes[next..]
            .iter()
            .take(batch)
            .take_while(|(bound, _, _)| *bound <= limit)
            .count();
        if take == 0 {
            break;
        }
        let results: Vec<(Evaluation, Option<Table>)> = nodes[next..next + take]
            .par_iter()
            .map(|(_, _, node)| {
                let below = |anchor: &Node| anchor.iter().zip(node).all(|(a, n)| a <= n);
                let table = roll_ups
                    .iter()
                    .filter(|(anchor, _)| below(anchor))
                    .map(|(_, t)| t)
                    .min_by_key(|t| t.cells())
                    .unwrap_or(&p.base);
                let e = p.evaluate(table, node, spec.k, spec.l, spec.max_suppressed);
                // Worth keeping when its classes are few next to the base's cells.
                let roll_up = (e.class_records.len() * 4 <= p.base.cells()
                    && table.cells() > e.class_records.len() * 2)
                    .then(|| p.roll_up(table, &e))
                    .filter(|t| t.cells() * 4 <= p.base.cells());
                (e, roll_up)
            })
            .collect();
        next += take;
        evaluated += take as u64;
        for (e, roll_up) in results {
            if let Some(t) = roll_up {
                roll_ups.push((e.node.clone(), t));
                roll_ups.sort_by_key(|(_, t)| t.cells());
                roll_ups.truncate(ROLL_UPS);
            }
            if e.anonymous
                && best
                    .as_ref()
                    .is_none_or(|b| rank(e.loss, &e.node) < rank(b.loss, &b.node))
            {
                best = Some(e);
            }
        }
    }
    // The output needs the classes of the base's cells.
    best.map(|b| Found {
        best: p.evaluate(&p.base, &b.node, spec.k, spec.l, spec.max_suppressed),
        lattice_nodes,
        evaluated,
    })
}

/// Every node evaluated: the reference the search is tested against.
#[cfg(test)]
pub(crate) fn exhaustive(p: &Prepared, spec: &ExtractSpec) -> Option<Evaluation> {
    p.lattice()
        .into_iter()
        .map(|n| p.evaluate(&p.base, &n, spec.k, spec.l, spec.max_suppressed))
        .filter(|e| e.anonymous)
        .min_by_key(|e| rank(e.loss, &e.node))
}
