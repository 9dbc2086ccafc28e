//! Generalisation hierarchies of the quasi-identifiers, from the region file (municipalities, target
//! groups and their main groups) and the codebooks (age bands, intensities, product categories, end
//! reasons), and for months from the months in the data. Level 0 is the value as stored; the last level
//! holds every record in one group.

use std::collections::BTreeSet;

use kwm_schemas::codes::{AgeBand, EndReason};
use kwm_schemas::extract::ExtractColumn;
use kwm_schemas::region::TargetGroupKind;
use kwm_schemas::{Month, RegionConfig};
use rustc_hash::FxHashMap;

use super::values::{self, MISSING};
use super::ExtractError;

/// The label of the last level: the value is suppressed.
pub const SUPPRESSED: &str = "*";

#[derive(Debug, Clone)]
struct Level {
    name: &'static str,
    /// Group of each leaf.
    group: Vec<u32>,
    /// Label of each group.
    labels: Vec<String>,
    /// Leaves under each group (for the loss metric).
    leaves: Vec<u32>,
}

/// One column's hierarchy: its leaves (the values it can take, a missing value included) and, per level,
/// the group each leaf falls in.
#[derive(Debug, Clone)]
pub struct Hierarchy {
    column: ExtractColumn,
    levels: Vec<Level>,
    /// Value key (see `values::key`) to leaf.
    leaf_of: FxHashMap<u32, u32>,
}

impl Hierarchy {
    /// Builds a hierarchy from its leaves (value key and label) and, per level above 0, each leaf's group
    /// label. Groups are numbered in order of first appearance.
    fn build(
        column: ExtractColumn,
        leaves: Vec<(u32, String)>,
        upper: Vec<(&'static str, Vec<String>)>,
    ) -> Self {
        let leaf_of = leaves
            .iter()
            .enumerate()
            .map(|(i, (key, _))| (*key, i as u32))
            .collect();
        let mut levels = vec![Level {
            name: column.as_str(),
            group: (0..leaves.len() as u32).collect(),
            labels: leaves.into_iter().map(|(_, l)| l).collect(),
            leaves: Vec::new(),
        }];
        levels[0].leaves = vec![1; levels[0].labels.len()];
        for (name, per_leaf) in upper {
            let mut index: FxHashMap<&str, u32> = FxHashMap::default();
            let mut level = Level {
                name,
                group: Vec::with_capacity(per_leaf.len()),
                labels: Vec::new(),
                leaves: Vec::new(),
            };
            for label in &per_leaf {
                let g = *index.entry(label.as_str()).or_insert_with(|| {
                    level.labels.push(label.clone());
                    level.leaves.push(0);
                    (level.labels.len() - 1) as u32
                });
                level.group.push(g);
                level.leaves[g as usize] += 1;
            }
            levels.push(level);
        }
        Self {
            column,
            levels,
            leaf_of,
        }
    }

    /// The hierarchy of a quasi-identifier. `months` are the months that occur in the data's column
    /// (only for `start_month` and `end_month`).
    pub fn of(
        column: ExtractColumn,
        region: &RegionConfig,
        months: &BTreeSet<Month>,
    ) -> Result<Self, ExtractError> {
        use ExtractColumn as C;
        let all = |n: usize| vec![SUPPRESSED.to_string(); n];
        // A missing value stays missing (an empty field) until the last level.
        let or_missing = |key: u32, label: String| {
            if key == MISSING {
                String::new()
            } else {
                label
            }
        };
        let leaves = |keys: Vec<u32>| -> Vec<(u32, String)> {
            keys.into_iter()
                .map(|k| (k, values::text(column, k, region)))
                .collect()
        };
        Ok(match column {
            // One region file is one region, so "region" already holds every record: a further
            // "suppressed" level would be the same partition at the same loss.
            C::Municipality => {
                let keys: Vec<u32> = region
                    .municipalities
                    .iter()
                    .map(|m| u32::from(m.code.number()))
                    .collect();
                let n = keys.len();
                Self::build(
                    column,
                    leaves(keys),
                    vec![("region", vec![region.code.clone(); n])],
                )
            }
            C::TargetGroup => {
                let keys: Vec<u32> = (1..=region.target_groups.len() as u32).collect();
                let main: Vec<String> = region
                    .target_groups
                    .iter()
                    .map(|t| {
                        t.main_group.clone().unwrap_or_else(|| {
                            match t.kind {
                                TargetGroupKind::Profile => "profile",
                                TargetGroupKind::Complex => "complex",
                                TargetGroupKind::Other => "other",
                            }
                            .to_string()
                        })
                    })
                    .collect();
                let n = keys.len();
                Self::build(
                    column,
                    leaves(keys),
                    vec![("main_group", main), ("all", all(n))],
                )
            }
            C::AgeBand => {
                let keys: Vec<u32> = (1..=AgeBand::ALL.len() as u32).collect();
                let wide = AgeBand::ALL
                    .iter()
                    .map(|a| match a {
                        AgeBand::Age0To3 | AgeBand::Age4To11 => "0-11",
                        AgeBand::Age12To17 | AgeBand::Age18To22 => "12-22",
                    })
                    .map(String::from)
                    .collect();
                let n = keys.len();
                Self::build(
                    column,
                    leaves(keys),
                    vec![("wide_band", wide), ("all", all(n))],
                )
            }
            C::StartMonth | C::EndMonth => {
                let mut keys = Vec::new();
                if column == C::EndMonth {
                    keys.push(MISSING);
                }
                keys.extend(months.iter().map(|m| values::month_key(*m)));
                let by = |f: &dyn Fn(Month) -> String| -> Vec<String> {
                    keys.iter()
                        .map(|&k| values::month_of_key(k).map(f).unwrap_or_default())
                        .collect()
                };
                let quarter = by(&|m| format!("{}-Q{}", m.year(), (m.month() - 1) / 3 + 1));
                let year = by(&|m| m.year().to_string());
                let n = keys.len();
                Self::build(
                    column,
                    leaves(keys),
                    vec![("quarter", quarter), ("year", year), ("all", all(n))],
                )
            }
            C::Intensity | C::ProductCategory => {
                let range = if column == C::Intensity {
                    1..=4
                } else {
                    40..=55
                };
                let keys: Vec<u32> = std::iter::once(MISSING).chain(range).collect();
                let n = keys.len();
                Self::build(column, leaves(keys), vec![("all", all(n))])
            }
            C::EndReason => {
                let keys: Vec<u32> = std::iter::once(MISSING)
                    .chain(
                        [2u32, 20, 31, 32, 33, 34, 35, 36, 37, 38, 39]
                            .into_iter()
                            .filter(|&c| EndReason::new(c as u8).is_ok()),
                    )
                    .collect();
                let kind = keys
                    .iter()
                    .map(|&k| {
                        let word = match EndReason::new(k as u8) {
                            Ok(r) if r == EndReason::ACCORDING_TO_PLAN => "volgens_plan",
                            Ok(r) if r.is_administrative() => "administratief",
                            _ => "voortijdig",
                        };
                        or_missing(k, word.into())
                    })
                    .collect();
                let n = keys.len();
                Self::build(
                    column,
                    leaves(keys),
                    vec![("end_kind", kind), ("all", all(n))],
                )
            }
            other => return Err(ExtractError::NoHierarchy(other)),
        })
    }

    pub fn column(&self) -> ExtractColumn {
        self.column
    }

    /// Number of levels, the original included.
    pub fn levels(&self) -> usize {
        self.levels.len()
    }

    pub fn level_name(&self, level: usize) -> &'static str {
        self.levels[level].name
    }

    /// Number of leaves (values the column can take).
    pub fn leaves(&self) -> usize {
        self.levels[0].labels.len()
    }

    /// The leaf of a value key, if the hierarchy has it.
    pub(crate) fn leaf(&self, key: u32) -> Option<u32> {
        self.leaf_of.get(&key).copied()
    }

    /// Number of groups at a level.
    pub fn groups(&self, level: usize) -> usize {
        self.levels[level].labels.len()
    }

    pub(crate) fn group(&self, level: usize, leaf: u32) -> u32 {
        self.levels[level].group[leaf as usize]
    }

    /// Leaves under a group.
    pub(crate) fn leaves_under(&self, level: usize, group: u32) -> u32 {
        self.levels[level].leaves[group as usize]
    }

    pub fn label(&self, level: usize, group: u32) -> &str {
        &self.levels[level].labels[group as usize]
    }

    /// The label of a stored value's text at a level, `None` when the value is not in the hierarchy.
    pub fn generalise(&self, level: usize, value: &str) -> Option<&str> {
        let leaf = self.levels[0].labels.iter().position(|l| l == value)? as u32;
        Some(self.label(level, self.group(level, leaf)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn months(list: &[&str]) -> BTreeSet<Month> {
        list.iter().map(|m| m.parse().expect("valid")).collect()
    }

    fn chain(h: &Hierarchy, value: &str) -> Vec<String> {
        (0..h.levels())
            .map(|l| h.generalise(l, value).expect("known value").to_string())
            .collect()
    }

    #[test]
    fn municipality_generalises_to_the_region() {
        let region = RegionConfig::wbw();
        let h = Hierarchy::of(ExtractColumn::Municipality, &region, &BTreeSet::new())
            .expect("has a hierarchy");
        assert_eq!(h.leaves(), 9);
        assert_eq!(chain(&h, "GM0748"), ["GM0748", "wbw"]);
        assert_eq!(h.groups(1), 1);
        assert_eq!(h.level_name(1), "region");
        assert!(h.generalise(0, "GM0363").is_none());
    }

    #[test]
    fn months_go_to_quarters_years_and_all() {
        let region = RegionConfig::wbw();
        let m = months(&["2024-11", "2025-01", "2025-03", "2025-04"]);
        let h = Hierarchy::of(ExtractColumn::StartMonth, &region, &m).expect("has a hierarchy");
        assert_eq!(chain(&h, "2025-03"), ["2025-03", "2025-Q1", "2025", "*"]);
        assert_eq!(chain(&h, "2024-11"), ["2024-11", "2024-Q4", "2024", "*"]);
        assert_eq!(h.groups(1), 3);
        assert_eq!(h.groups(2), 2);
        assert_eq!(h.groups(3), 1);
        // 2025-Q1 holds two of the four months seen.
        let q1 = h.group(
            1,
            h.leaf(values::month_key(m.iter().nth(1).copied().expect("month")))
                .expect("leaf"),
        );
        assert_eq!(h.leaves_under(1, q1), 2);
        let e = Hierarchy::of(ExtractColumn::EndMonth, &region, &m).expect("has a hierarchy");
        assert_eq!(e.leaves(), 5);
        assert_eq!(chain(&e, ""), ["", "", "", "*"]);
    }

    #[test]
    fn age_bands_widen() {
        let h = Hierarchy::of(
            ExtractColumn::AgeBand,
            &RegionConfig::wbw(),
            &BTreeSet::new(),
        )
        .expect("has a hierarchy");
        assert_eq!(chain(&h, "4-11"), ["4-11", "0-11", "*"]);
        assert_eq!(chain(&h, "18-22"), ["18-22", "12-22", "*"]);
    }

    #[test]
    fn target_groups_go_to_their_kind_or_main_group() {
        let mut region = RegionConfig::wbw();
        let h = Hierarchy::of(ExtractColumn::TargetGroup, &region, &BTreeSet::new())
            .expect("has a hierarchy");
        assert_eq!(chain(&h, "P03"), ["P03", "profile", "*"]);
        assert_eq!(chain(&h, "C02"), ["C02", "complex", "*"]);
        region.target_groups[0].main_group = Some("scheiding".into());
        let h = Hierarchy::of(ExtractColumn::TargetGroup, &region, &BTreeSet::new())
            .expect("has a hierarchy");
        assert_eq!(chain(&h, "P01"), ["P01", "scheiding", "*"]);
        assert_eq!(h.groups(1), 3);
    }

    #[test]
    fn end_reasons_group_by_kind_and_missing_stays_missing() {
        let h = Hierarchy::of(
            ExtractColumn::EndReason,
            &RegionConfig::wbw(),
            &BTreeSet::new(),
        )
        .expect("has a hierarchy");
        assert_eq!(chain(&h, "31"), ["31", "volgens_plan", "*"]);
        assert_eq!(chain(&h, "32"), ["32", "voortijdig", "*"]);
        assert_eq!(chain(&h, "02"), ["02", "administratief", "*"]);
        assert_eq!(chain(&h, ""), ["", "", "*"]);
        let i = Hierarchy::of(
            ExtractColumn::Intensity,
            &RegionConfig::wbw(),
            &BTreeSet::new(),
        )
        .expect("has a hierarchy");
        assert_eq!(chain(&i, "3"), ["3", "*"]);
        assert_eq!(chain(&i, ""), ["", "*"]);
    }

    #[test]
    fn outcomes_have_no_hierarchy() {
        let err = Hierarchy::of(
            ExtractColumn::Satisfaction,
            &RegionConfig::wbw(),
            &BTreeSet::new(),
        )
        .expect_err("no hierarchy");
        assert!(err.to_string().contains("satisfaction"), "{err}");
    }
}
