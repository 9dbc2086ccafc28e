//! Utility beside privacy: what a policy adviser gets from the 2025 year round on the demo's data
//! (60,000 trajectories, 12 providers, seed 2025, the West-Brabant West defaults), against the
//! noise-free figures, next to the same figures from the mechanism before release rounds (today's
//! releases on demand at their defaults) in the same run.
//!
//! Per scope (the nine municipalities together, the region) and kind of criterion (percentages,
//! grades, counts): the share of cells published, suppressed and unreliable; the median and 90th
//! percentile width of the published 95% intervals; the mean absolute error of published values
//! against the noise-free figures. Over `--runs` independent noise draws (seeded: reproducible).
//!
//! Run: cargo run --release -p kwm-benches --bin utility

use std::collections::BTreeMap;

use clap::Parser;
use kwm_schemas::region::Decimal;
use kwm_schemas::release::{CellStatus, Figure, Period, ReleaseScope};
use kwm_schemas::RegionConfig;
use kwm_sdk::prepare::{prepare_file, PrepareContext};
use kwm_sdk::synth::{generate, SynthOptions};
use kwm_sdk::{ProviderKeys, Pseudonymiser, RegionalKey};
use kwm_service::index::SHARDS;
use kwm_service::noise::{NoNoise, SeededNoise};
use kwm_service::release::legacy;
use kwm_service::release::{compute_round, Codebook, EngineRow, IndexedInput};

#[derive(Debug, Parser)]
struct Args {
    #[arg(long, default_value_t = 60_000)]
    trajectories: u64,
    #[arg(long, default_value_t = 12)]
    providers: u32,
    #[arg(long, default_value_t = 2025)]
    seed: u64,
    /// Independent noise draws to average over
    #[arg(long, default_value_t = 20)]
    runs: u64,
    /// A region file to measure instead of the built-in West-Brabant West one
    #[arg(long)]
    region: Option<std::path::PathBuf>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Kind {
    Percentage,
    Grade,
    Count,
}

impl Kind {
    fn of(code: &str) -> Self {
        match code {
            "tevredenheid" => Self::Grade,
            "in_zorg" | "gestart" | "beeindigd" => Self::Count,
            _ => Self::Percentage,
        }
    }

    fn unit(self) -> &'static str {
        match self {
            Self::Percentage => "points",
            Self::Grade => "grade points",
            Self::Count => "children",
        }
    }
}

/// One cell as both mechanisms report it: status, value and interval in the criterion's unit.
#[derive(Debug, Clone, Copy)]
struct Cell {
    published: bool,
    suppressed: bool,
    value: f64,
    width: f64,
}

fn units(f: Figure) -> f64 {
    match f {
        Figure::Whole(v) => v as f64,
        Figure::Tenths(t) => t as f64 / 10.0,
    }
}

#[derive(Debug, Default)]
struct Tally {
    cells: u64,
    published: u64,
    suppressed: u64,
    unreliable: u64,
    widths: Vec<f64>,
    abs_errors: Vec<f64>,
}

impl Tally {
    fn add(&mut self, c: Cell, truth: Option<f64>) {
        self.cells += 1;
        if c.published {
            self.published += 1;
            self.widths.push(c.width);
            if let Some(t) = truth {
                self.abs_errors.push((c.value - t).abs());
            }
        } else if c.suppressed {
            self.suppressed += 1;
        } else {
            self.unreliable += 1;
        }
    }

    fn quantile(v: &mut [f64], q: f64) -> f64 {
        if v.is_empty() {
            return f64::NAN;
        }
        v.sort_by(|a, b| a.total_cmp(b));
        v[((v.len() - 1) as f64 * q).round() as usize]
    }

    fn line(&mut self, label: &str, kind: Kind) -> String {
        let pct = |n: u64| 100.0 * n as f64 / self.cells.max(1) as f64;
        let mae = self.abs_errors.iter().sum::<f64>() / self.abs_errors.len().max(1) as f64;
        format!(
            "{label:<34} {:>6.1}% {:>6.1}% {:>6.1}%   {:>7.1} {:>7.1}   {:>7.2}  ({})",
            pct(self.published),
            pct(self.suppressed),
            pct(self.unreliable),
            Self::quantile(&mut self.widths, 0.5),
            Self::quantile(&mut self.widths, 0.9),
            mae,
            kind.unit()
        )
    }

    fn median_width(&mut self) -> f64 {
        Self::quantile(&mut self.widths, 0.5)
    }

    fn published_share(&self) -> f64 {
        self.published as f64 / self.cells.max(1) as f64
    }
}

type Key = (String, Option<String>, String);

/// (scope, target group, criterion) -> cell of the new round.
fn round_cells(
    region: &RegionConfig,
    input: &IndexedInput<'_>,
    rho: Decimal,
    noise: &mut dyn kwm_service::noise::NoiseSource,
) -> anyhow::Result<BTreeMap<Key, Cell>> {
    let round = compute_round(input, rho, noise)?;
    let _ = region;
    let mut out = BTreeMap::new();
    for r in round
        .releases
        .iter()
        .filter(|r| r.scope != ReleaseScope::Providers)
    {
        for row in &r.rows {
            for c in &row.cells {
                let value = c.value.map(units).unwrap_or(f64::NAN);
                let width = match (c.ci95_low, c.ci95_high) {
                    (Some(l), Some(h)) => units(h) - units(l),
                    _ => f64::NAN,
                };
                out.insert(
                    (
                        r.scope.to_string(),
                        row.target_group.as_ref().map(|t| t.to_string()),
                        c.criterion.clone(),
                    ),
                    Cell {
                        published: c.status == CellStatus::Published,
                        suppressed: c.status == CellStatus::Suppressed,
                        value,
                        width,
                    },
                );
            }
        }
    }
    Ok(out)
}

/// The same from the mechanism before rounds: a release per scope on demand, each at its own epsilon.
fn legacy_cells(
    input: &IndexedInput<'_>,
    policy: &legacy::LegacyPolicy,
    noise: &mut dyn kwm_service::noise::NoiseSource,
) -> anyhow::Result<BTreeMap<Key, Cell>> {
    let tables = legacy::PeriodTables::build_indexed(input, policy)?;
    let mut scopes = vec![ReleaseScope::Region];
    scopes.extend(
        input
            .region
            .municipalities
            .iter()
            .map(|m| ReleaseScope::Municipality(m.code)),
    );
    let mut out = BTreeMap::new();
    for scope in scopes {
        let r = tables.release(scope, noise)?;
        for row in &r.rows {
            for c in &row.cells {
                let value = c.value.map(units).unwrap_or(f64::NAN);
                let width = match (c.ci95_low, c.ci95_high) {
                    (Some(l), Some(h)) => units(h) - units(l),
                    _ => f64::NAN,
                };
                out.insert(
                    (
                        scope.to_string(),
                        row.target_group.as_ref().map(|t| t.to_string()),
                        c.criterion.clone(),
                    ),
                    Cell {
                        published: c.status.is_published(),
                        // Every reason but the statuses that withhold a value for width.
                        suppressed: !c.status.is_published(),
                        value,
                        width,
                    },
                );
            }
        }
    }
    Ok(out)
}

fn report(
    name: &str,
    runs: &[BTreeMap<Key, Cell>],
    truth: &BTreeMap<Key, Cell>,
) -> BTreeMap<(bool, Kind), Tally> {
    let mut tallies: BTreeMap<(bool, Kind), Tally> = BTreeMap::new();
    for run in runs {
        for (key, cell) in run {
            let is_region = key.0 == "region";
            let kind = Kind::of(&key.2);
            let t = truth.get(key).filter(|t| t.published).map(|t| t.value);
            tallies.entry((is_region, kind)).or_default().add(*cell, t);
        }
    }
    println!();
    println!("{name}");
    println!(
        "{:<34} {:>7} {:>7} {:>7}   {:>7} {:>7}   {:>7}",
        "scope, kind", "publ", "supp", "unrel", "w50", "w90", "MAE"
    );
    for ((is_region, kind), t) in tallies.iter_mut() {
        let label = format!(
            "{} {:?}",
            if *is_region {
                "region"
            } else {
                "municipalities"
            },
            kind
        );
        println!("{}", t.line(&label, *kind));
    }
    tallies
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let region = match &args.region {
        Some(p) => RegionConfig::from_file(p)?,
        None => RegionConfig::wbw(),
    };
    let dir = tempfile::tempdir()?;
    let synth = SynthOptions::new(dir.path(), args.providers, args.trajectories, args.seed);
    let out = generate(&synth)?;
    let regional = RegionalKey::generate()?;
    let codebook = Codebook::new(&region);
    let mut shards: Vec<Vec<EngineRow>> = (0..SHARDS).map(|_| Vec::new()).collect();
    for p in &out.providers {
        let keys = ProviderKeys::generate()?;
        let ctx = PrepareContext::new(region.clone(), Pseudonymiser::new(&regional, &keys));
        for rec in prepare_file(&p.path, &ctx)?.records {
            let row = EngineRow::new(&codebook, p.agb, &rec);
            shards[usize::from(row.client[0])].push(row);
        }
    }
    let period: Period = "2025".parse()?;
    let order_key = [3u8; 32];
    let input = IndexedInput {
        region: &region,
        shards: &shards,
        period,
        as_of: "2026-12".parse()?,
        order_key: &order_key,
    };
    let rho = region.privacy.year_round;
    println!(
        "{} trajectories of {} children, {} providers, seed {}; the {period} year round at rho {rho} \
         (cap {} per data year, {}), {} noise draws",
        out.trajectories,
        out.children,
        args.providers,
        args.seed,
        region.privacy.rho_per_data_year,
        region.privacy.mechanism.as_str(),
        args.runs
    );

    // Noise-free figures: the same engines without noise, with k = 2 and without bounding (every
    // child in as many cells as it has), so that every cell with two children has its true value and
    // the error below includes what bounding drops.
    let mut exact_region = region.clone();
    exact_region.policy.k = 2;
    exact_region.policy.max_cells_per_client = u32::try_from(region.target_groups.len())?;
    let exact_input = IndexedInput {
        region: &exact_region,
        ..input
    };
    let truth = round_cells(
        &exact_region,
        &exact_input,
        "1000000".parse()?,
        &mut NoNoise,
    )?;
    let truth_legacy = legacy_cells(
        &exact_input,
        &legacy::LegacyPolicy {
            max_cells_per_client: exact_region.policy.max_cells_per_client,
            ..legacy::LegacyPolicy::noise_free()
        },
        &mut NoNoise,
    )?;

    let mut new_runs = Vec::new();
    let mut old_runs = Vec::new();
    let today = legacy::LegacyPolicy::today();
    for run in 0..args.runs {
        new_runs.push(round_cells(
            &region,
            &input,
            rho,
            &mut SeededNoise::from_seed(run),
        )?);
        old_runs.push(legacy_cells(
            &input,
            &today,
            &mut SeededNoise::from_seed(1_000_000 + run),
        )?);
    }
    let mut new = report("Release rounds (this build)", &new_runs, &truth);
    report(
        "Before: releases on demand, epsilon 0.5 per release (today's defaults)",
        &old_runs,
        &truth_legacy,
    );

    println!();
    let mut pass = true;
    for (is_region, target_width, target_share) in [(false, 20.0, 0.5), (true, 5.0, 0.9)] {
        let t = new
            .get_mut(&(is_region, Kind::Percentage))
            .ok_or_else(|| anyhow::anyhow!("no percentage cells"))?;
        let (w, share) = (t.median_width(), t.published_share());
        let ok = w <= target_width && share >= target_share;
        pass &= ok;
        println!(
            "target {}: median width of published percentages {w:.1} points (<= {target_width}), \
             published {:.0}% (>= {:.0}%): {}",
            if is_region {
                "region"
            } else {
                "municipalities"
            },
            100.0 * share,
            100.0 * target_share,
            if ok { "met" } else { "NOT met" }
        );
    }
    if !pass {
        std::process::exit(1);
    }
    Ok(())
}
