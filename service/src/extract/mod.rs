//! Anonymised research extracts, produced the way ARX produces them: the quasi-identifiers are
//! generalised along hierarchies from the region file until every equivalence class holds at least k
//! children and at least l distinct values of the sensitive outcome, records of the classes that still
//! fail are left out (up to a set share), and the least information loss wins. Client pseudonyms become
//! random ids that exist only in one extract; provider codes and trajectory pseudonyms are never output.
//!
//! Pure: rows and a request in, an [`Extract`] with its [`RiskReport`] out. Approval, storage, budgets and
//! HTTP live elsewhere. An extract is not differentially private; its report says so.

mod csv;
mod hierarchy;
mod search;
mod values;

use std::collections::BTreeSet;

use kwm_schemas::extract::{
    ExtractColumn, ExtractSpec, Generalisation, InformationLoss, ProsecutorRisk, RiskReport,
    SearchStats,
};
use kwm_schemas::{AgbCode, Month, Pseudonym, RegionConfig, WireRecord};
use rand::seq::SliceRandom;
use rand::CryptoRng;
use rustc_hash::FxHashMap;

pub use self::csv::{to_csv, CSV_CLIENT_COLUMN};
pub use hierarchy::{Hierarchy, SUPPRESSED};

use search::{Prepared, Table};

/// Why no extract was produced.
#[derive(Debug, thiserror::Error)]
pub enum ExtractError {
    #[error("{0} has no generalisation hierarchy, so it cannot be a quasi-identifier")]
    NoHierarchy(ExtractColumn),
    #[error("an extract needs at least one quasi-identifier")]
    NoQuasiIdentifiers,
    #[error("column {0} is asked for more than once (quasi-identifiers, sensitive and other columns are apart)")]
    Duplicate(ExtractColumn),
    #[error("k must be at least 2 and l at least 1")]
    Model,
    #[error("{column} holds {value}, which is not in the region's codebook")]
    UnknownValue {
        column: ExtractColumn,
        value: String,
    },
    #[error("the quasi-identifiers take too many values for the search")]
    TooManyValues,
    #[error(
        "no generalisation meets k = {k} and l = {l} with at most {max_suppressed} of the records left out"
    )]
    NoSolution {
        k: u32,
        l: u32,
        max_suppressed: String,
    },
}

/// An anonymised extract: rows of a random client id and the chosen columns' released values, and the
/// risk report. Values are kept once per column (a dictionary) and referenced by the rows.
#[derive(Debug, Clone)]
pub struct Extract {
    client_ids: bool,
    columns: Vec<ExtractColumn>,
    dictionaries: Vec<Vec<String>>,
    clients: Vec<u32>,
    values: Vec<u32>,
    pub report: RiskReport,
}

/// One row of an extract.
#[derive(Debug, Clone, Copy)]
pub struct ExtractRow<'a> {
    extract: &'a Extract,
    index: usize,
}

impl<'a> ExtractRow<'a> {
    /// The client's id in this extract: 1 to the number of children, in random order; `None` when the
    /// request asked for no ids.
    pub fn client(&self) -> Option<u32> {
        self.extract
            .client_ids
            .then(|| self.extract.clients[self.index])
    }

    /// The released value of the `i`-th column of [`Extract::columns`]; empty when missing.
    pub fn value(&self, i: usize) -> &'a str {
        let e = self.extract;
        let code = e.values[self.index * e.columns.len() + i];
        &e.dictionaries[i][code as usize]
    }

    pub fn values(&self) -> impl Iterator<Item = &'a str> + '_ {
        (0..self.extract.columns.len()).map(|i| self.value(i))
    }
}

impl Extract {
    /// The columns after the client id, in the order of [`ExtractColumn::ALL`] (the record schema's).
    pub fn columns(&self) -> &[ExtractColumn] {
        &self.columns
    }

    /// Whether the rows carry a client id (the `client` column).
    pub fn has_client_ids(&self) -> bool {
        self.client_ids
    }

    pub fn len(&self) -> usize {
        self.clients.len()
    }

    pub fn is_empty(&self) -> bool {
        self.clients.is_empty()
    }

    /// Rows ordered by client id, so a child's trajectories are together and the order says nothing
    /// about the store's (which is by provider).
    pub fn rows(&self) -> impl Iterator<Item = ExtractRow<'_>> {
        (0..self.len()).map(|index| ExtractRow {
            extract: self,
            index,
        })
    }
}

const GUARANTEE: &str = "Not differentially private. This extract is k-anonymous (every equivalence class of the \
quasi-identifiers holds at least k children) and distinct l-diverse on the sensitive column, and was produced \
only after the operator's approval; it leaves the differential privacy guarantee of releases and research \
queries behind. Client ids exist only in this extract; they link a child's trajectories, so whoever knows \
several trajectories of one child can intersect the ids of their classes.";

/// Checks a request without data, so that it can be refused when it is made rather than when it is
/// approved: k of at least 2, l of at least 1, at least one quasi-identifier, each with a hierarchy, and
/// no column twice. Returns the quasi-identifiers in the record schema's order.
pub fn check_request(spec: &ExtractSpec) -> Result<Vec<ExtractColumn>, ExtractError> {
    if spec.k < 2 || spec.l < 1 {
        return Err(ExtractError::Model);
    }
    if spec.quasi_identifiers.is_empty() {
        return Err(ExtractError::NoQuasiIdentifiers);
    }
    let mut seen = BTreeSet::new();
    for &c in spec
        .quasi_identifiers
        .iter()
        .chain([&spec.sensitive])
        .chain(&spec.other_columns)
    {
        if !seen.insert(c) {
            return Err(ExtractError::Duplicate(c));
        }
    }
    if let Some(&c) = spec.quasi_identifiers.iter().find(|c| !c.has_hierarchy()) {
        return Err(ExtractError::NoHierarchy(c));
    }
    let mut qis = spec.quasi_identifiers.clone();
    qis.sort_unstable();
    Ok(qis)
}

/// Produces the extract of `rows` (as the store lists them) that `spec` asks for. The client ids are
/// drawn from `rng`, which must be a cryptographically secure generator.
pub fn anonymise<R: CryptoRng + ?Sized>(
    rows: &[(AgbCode, WireRecord)],
    spec: &ExtractSpec,
    region: &RegionConfig,
    rng: &mut R,
) -> Result<Extract, ExtractError> {
    let (prepared, per_row) = prepare(rows, spec, region)?;
    let found = search::search(&prepared, spec).ok_or_else(|| ExtractError::NoSolution {
        k: spec.k,
        l: spec.l,
        max_suppressed: spec.max_suppressed.to_string(),
    })?;
    Ok(build(&prepared, found, spec, region, &per_row, rng))
}

/// What the output needs of each input row: its cell, its child, and the other columns' value keys.
#[derive(Debug)]
struct PerRow {
    cell: Vec<u32>,
    child: Vec<u32>,
    other: Vec<u32>,
}

/// Reduces the rows to the search's cells and children.
fn prepare(
    rows: &[(AgbCode, WireRecord)],
    spec: &ExtractSpec,
    region: &RegionConfig,
) -> Result<(Prepared, PerRow), ExtractError> {
    let qis = check_request(spec)?;
    let q = qis.len();
    let hierarchies = qis
        .iter()
        .map(|&c| {
            let months: BTreeSet<Month> = match c {
                ExtractColumn::StartMonth => rows.iter().map(|(_, r)| r.start_month).collect(),
                ExtractColumn::EndMonth => rows.iter().filter_map(|(_, r)| r.end_month).collect(),
                _ => BTreeSet::new(),
            };
            Hierarchy::of(c, region, &months)
        })
        .collect::<Result<Vec<_>, _>>()?;
    let level0: u128 = hierarchies
        .iter()
        .try_fold(1u128, |acc, h| acc.checked_mul(h.leaves() as u128))
        .ok_or(ExtractError::TooManyValues)?;

    // Cells (quasi-identifier leaves and sensitive value), children, and the other columns' keys.
    let mut cell_index: FxHashMap<(u128, u32), u32> = FxHashMap::default();
    let mut cell_leaves: Vec<u32> = Vec::new();
    let mut cell_sens: Vec<u32> = Vec::new();
    let mut cell_records: Vec<u32> = Vec::new();
    let mut child_index: FxHashMap<Pseudonym, u32> = FxHashMap::default();
    let mut row_cell = Vec::with_capacity(rows.len());
    let mut row_child = Vec::with_capacity(rows.len());
    let mut row_other = Vec::with_capacity(rows.len() * spec.other_columns.len());
    let mut leaves = vec![0u32; q];
    for (_, rec) in rows {
        let mut packed: u128 = 0;
        for (a, h) in hierarchies.iter().enumerate() {
            let key = values::key(h.column(), rec, region)?;
            leaves[a] = h.leaf(key).ok_or_else(|| ExtractError::UnknownValue {
                column: h.column(),
                value: values::text(h.column(), key, region),
            })?;
            packed = packed * h.leaves() as u128 + u128::from(leaves[a]);
        }
        debug_assert!(packed < level0);
        let sens = values::key(spec.sensitive, rec, region)?;
        let next = cell_records.len() as u32;
        let cell = *cell_index.entry((packed, sens)).or_insert(next);
        if cell == next {
            cell_leaves.extend_from_slice(&leaves);
            cell_sens.push(sens);
            cell_records.push(0);
        }
        cell_records[cell as usize] += 1;
        row_cell.push(cell);
        let next = child_index.len() as u32;
        row_child.push(*child_index.entry(rec.client).or_insert(next));
        for &c in &spec.other_columns {
            row_other.push(values::key(c, rec, region)?);
        }
    }
    drop(cell_index);

    // Order cells by sensitive value (the search counts distinct values in runs).
    let mut order: Vec<u32> = (0..cell_records.len() as u32).collect();
    order.sort_by_key(|&c| cell_sens[c as usize]);
    let mut renumber = vec![0u32; order.len()];
    for (new, &old) in order.iter().enumerate() {
        renumber[old as usize] = new as u32;
    }
    let cell_leaves: Vec<u32> = order
        .iter()
        .flat_map(|&c| {
            cell_leaves[c as usize * q..(c as usize + 1) * q]
                .iter()
                .copied()
        })
        .collect();
    let cell_sens: Vec<u32> = order.iter().map(|&c| cell_sens[c as usize]).collect();
    let cell_records: Vec<u32> = order.iter().map(|&c| cell_records[c as usize]).collect();
    for c in &mut row_cell {
        *c = renumber[*c as usize];
    }

    // Each child's distinct cells, children one after another.
    let children = child_index.len();
    drop(child_index);
    let mut child_start = vec![0u32; children + 1];
    for &ch in &row_child {
        child_start[ch as usize + 1] += 1;
    }
    for i in 0..children {
        child_start[i + 1] += child_start[i];
    }
    let mut fill = child_start.clone();
    let mut child_cells = vec![0u32; rows.len()];
    for (r, &ch) in row_child.iter().enumerate() {
        child_cells[fill[ch as usize] as usize] = row_cell[r];
        fill[ch as usize] += 1;
    }
    // A child whose records all fall in one cell counts once for that cell's class at any node
    // (`cell_solo`); only children of several cells are listed, with their distinct cells.
    let mut cell_solo = vec![0u32; cell_records.len()];
    let mut multi = Vec::new();
    let mut multi_start = vec![0u32];
    for ch in 0..children {
        let run = &mut child_cells[child_start[ch] as usize..child_start[ch + 1] as usize];
        run.sort_unstable();
        let from = multi.len();
        for &cell in run.iter() {
            if multi.len() == from || multi.last() != Some(&cell) {
                multi.push(cell);
            }
        }
        if multi.len() - from == 1 {
            cell_solo[multi[from] as usize] += 1;
            multi.truncate(from);
        } else {
            multi_start.push(multi.len() as u32);
        }
    }
    drop(child_cells);

    let base = Table {
        leaves: cell_leaves,
        sens: cell_sens,
        records: cell_records,
        solo: cell_solo,
        child_cells: multi,
        child_start: multi_start,
    };
    let prepared = Prepared::new(hierarchies, base)?;
    let per_row = PerRow {
        cell: row_cell,
        child: row_child,
        other: row_other,
    };
    Ok((prepared, per_row))
}

fn build<R: CryptoRng + ?Sized>(
    p: &Prepared,
    found: search::Found,
    spec: &ExtractSpec,
    region: &RegionConfig,
    per_row: &PerRow,
    rng: &mut R,
) -> Extract {
    let (row_cell, row_child, row_other) = (&per_row.cell, &per_row.child, &per_row.other);
    let best = &found.best;
    let q = p.q();
    let kept_row = |r: usize| best.class_kept[best.cell_class[row_cell[r] as usize] as usize];

    // The output columns in the record schema's order, each with its source.
    enum Source {
        Qi(usize),
        Sensitive,
        Other(usize),
    }
    let mut columns: Vec<(ExtractColumn, Source)> = p
        .hierarchies
        .iter()
        .enumerate()
        .map(|(a, h)| (h.column(), Source::Qi(a)))
        .chain([(spec.sensitive, Source::Sensitive)])
        .chain(
            spec.other_columns
                .iter()
                .enumerate()
                .map(|(i, &c)| (c, Source::Other(i))),
        )
        .collect();
    columns.sort_by_key(|(c, _)| *c);
    let width = columns.len();
    let others = spec.other_columns.len();

    // Dictionaries: a quasi-identifier's are its level's labels; the others' are their distinct values.
    let mut dictionaries: Vec<Vec<String>> = Vec::with_capacity(width);
    let mut key_codes: Vec<FxHashMap<u32, u32>> = Vec::with_capacity(width);
    for (column, source) in &columns {
        match source {
            Source::Qi(a) => {
                let h = &p.hierarchies[*a];
                let lvl = usize::from(best.node[*a]);
                dictionaries.push(
                    (0..h.groups(lvl) as u32)
                        .map(|g| h.label(lvl, g).to_string())
                        .collect(),
                );
                key_codes.push(FxHashMap::default());
            }
            Source::Sensitive | Source::Other(_) => {
                let keys: BTreeSet<u32> = match source {
                    Source::Sensitive => p.base.sens.iter().copied().collect(),
                    _ => BTreeSet::new(),
                };
                let mut keys = keys;
                if let Source::Other(i) = source {
                    keys.extend(row_other.iter().skip(*i).step_by(others.max(1)).copied());
                }
                dictionaries.push(
                    keys.iter()
                        .map(|&k| values::text(*column, k, region))
                        .collect(),
                );
                key_codes.push(
                    keys.iter()
                        .enumerate()
                        .map(|(i, &k)| (k, i as u32))
                        .collect(),
                );
            }
        }
    }

    // Random ids: a shuffled 1..=n over the children with a released record.
    let mut child_id = vec![0u32; row_child.iter().map(|&c| c as usize + 1).max().unwrap_or(0)];
    for r in (0..row_cell.len()).filter(|&r| kept_row(r)) {
        child_id[row_child[r] as usize] = 1;
    }
    let children_out = child_id.iter().filter(|&&x| x == 1).count();
    let mut ids: Vec<u32> = (1..=children_out as u32).collect();
    if spec.client_ids {
        ids.shuffle(rng);
    } else {
        ids.fill(0);
    }
    let mut next = ids.into_iter();
    for id in child_id.iter_mut().filter(|x| **x == 1) {
        *id = next.next().unwrap_or(0);
    }

    let mut out: Vec<(u32, Vec<u32>)> = Vec::new();
    for r in (0..row_cell.len()).filter(|&r| kept_row(r)) {
        let cell = row_cell[r] as usize;
        let vals = columns
            .iter()
            .enumerate()
            .map(|(i, (_, source))| match source {
                Source::Qi(a) => {
                    let h = &p.hierarchies[*a];
                    h.group(usize::from(best.node[*a]), p.base.leaves[cell * q + a])
                }
                Source::Sensitive => key_codes[i][&p.base.sens[cell]],
                Source::Other(o) => key_codes[i][&row_other[r * others + o]],
            })
            .collect();
        out.push((child_id[row_child[r] as usize], vals));
    }
    out.sort_unstable();
    let clients = out.iter().map(|(c, _)| *c).collect();
    let values = out.into_iter().flat_map(|(_, v)| v).collect();

    let report = report(p, &found, spec, children_out as u64);
    Extract {
        client_ids: spec.client_ids,
        columns: columns.into_iter().map(|(c, _)| c).collect(),
        dictionaries,
        clients,
        values,
        report,
    }
}

fn report(
    p: &Prepared,
    found: &search::Found,
    spec: &ExtractSpec,
    children_out: u64,
) -> RiskReport {
    let best = &found.best;
    let kept: Vec<usize> = (0..best.class_kept.len())
        .filter(|&i| best.class_kept[i])
        .collect();
    let records_out = p.records - best.suppressed;
    let min = |v: &[u32]| kept.iter().map(|&i| v[i]).min().unwrap_or(0);
    let k = min(&best.class_children);
    let ratio = |a: f64, b: f64| if b > 0.0 { a / b } else { 0.0 };
    let threshold = spec.risk_threshold.ppm();
    let records_above: u64 = kept
        .iter()
        .filter(|&&i| u64::from(best.class_children[i]) * u64::from(threshold) < 1_000_000)
        .map(|&i| u64::from(best.class_records[i]))
        .sum();
    let risk_sum: f64 = kept
        .iter()
        .map(|&i| f64::from(best.class_records[i]) / f64::from(best.class_children[i]))
        .sum();
    let max_loss = p.max_loss() as f64;
    RiskReport {
        requested: spec.clone(),
        k,
        l: min(&best.class_distinct),
        min_class_records: min(&best.class_records),
        equivalence_classes: kept.len() as u64,
        records_in: p.records,
        records_out,
        records_suppressed: best.suppressed,
        share_suppressed: ratio(best.suppressed as f64, p.records as f64),
        children_out,
        generalisation: p
            .hierarchies
            .iter()
            .zip(&best.node)
            .map(|(h, &lvl)| Generalisation {
                column: h.column(),
                level: u32::from(lvl),
                level_name: h.level_name(usize::from(lvl)).to_string(),
                levels: h.levels() as u32,
            })
            .collect(),
        prosecutor_risk: ProsecutorRisk {
            highest: ratio(1.0, f64::from(k)),
            average: ratio(risk_sum, records_out as f64),
            threshold: spec.risk_threshold,
            records_above_threshold: records_above,
            share_above_threshold: ratio(records_above as f64, records_out as f64),
        },
        information_loss: InformationLoss {
            measure: "loss-metric".into(),
            value: ratio(best.loss as f64, max_loss),
            generalisation: ratio(best.generalisation_loss as f64, max_loss),
        },
        search: SearchStats {
            lattice_nodes: found.lattice_nodes,
            nodes_evaluated: found.evaluated,
        },
        guarantee: GUARANTEE.into(),
    }
}

#[cfg(test)]
mod tests;
