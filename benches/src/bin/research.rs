//! Research queries alone, without a database: N synthetic trajectories in the release index's form
//! (client shards of engine rows, as `engine` builds them), and the time to answer grouped research
//! queries from them (`research::answer`: the filter, bounding per child in the keyed order, the true
//! sums of every group, one noisy measurement with fresh exact noise from the OS, and every cell's
//! figure, interval and status), with the time to estimate each query (no data read).
//!
//! Run: cargo run --release -p kwm-benches --bin research -- --trajectories 5000000
//! Target: a grouped query over 5,000,000 trajectories answered in at most 1 s.

use std::time::Instant;

use clap::Parser;
use kwm_schemas::release::CellStatus;
use kwm_schemas::RegionConfig;
use kwm_sdk::prepare::{prepare_file, PrepareContext};
use kwm_sdk::synth::{generate, SynthOptions};
use kwm_sdk::{ProviderKeys, Pseudonymiser, RegionalKey};
use kwm_service::index::SHARDS;
use kwm_service::noise::OsNoise;
use kwm_service::release::{Codebook, EngineRow};
use kwm_service::research::{answer, estimate, Query, ResearchInput};

#[derive(Debug, Parser)]
struct Args {
    #[arg(long, default_value_t = 5_000_000)]
    trajectories: u64,
    #[arg(long, default_value_t = 200)]
    providers: u32,
    /// Answers to time per query
    #[arg(long, default_value_t = 3)]
    runs: usize,
    /// Rho of each answer
    #[arg(long, default_value = "0.05")]
    rho: String,
}

/// The queries timed: the example (one municipality), and one that reads every trajectory of
/// the year into 9 x 16 x 5 = 720 groups with seven columns.
const QUERIES: [(&str, &str); 2] = [
    (
        "one municipality, target group x intensity",
        "SELECT target_group, intensity, COUNT(*), AVG(satisfaction), \
         PROPORTION(end_reason = 'volgens_plan') FROM trajectories \
         WHERE start_year = 2025 AND municipality = 'GM0748' GROUP BY target_group, intensity",
    ),
    (
        "the whole region, municipality x target group x intensity",
        "SELECT municipality, target_group, intensity, COUNT(*), COUNT(DISTINCT client), \
         AVG(satisfaction), AVG(goal_realisation), PROPORTION(end_reason = 'volgens_plan'), \
         PROPORTION(carry_on_without_help = 'yes'), QUANTILE(satisfaction, 0.5) \
         FROM trajectories WHERE start_year = 2025 \
         GROUP BY municipality, target_group, intensity",
    ),
];

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let dir = tempfile::tempdir()?;
    let region = RegionConfig::wbw();
    let t0 = Instant::now();
    let mut synth = SynthOptions::new(dir.path(), args.providers, args.trajectories, 2025);
    synth.first_year = 2025;
    synth.last_year = 2025;
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
    let rows: usize = shards.iter().map(Vec::len).sum();
    println!(
        "{rows} rows of {} children in memory in {:.1} s ({} bytes per engine row)",
        out.children,
        t0.elapsed().as_secs_f64(),
        std::mem::size_of::<EngineRow>()
    );
    let rho = args.rho.parse()?;
    let input = ResearchInput {
        region: &region,
        shards: &shards,
        order_key: &[3; 32],
    };
    for (label, sql) in QUERIES {
        let query = Query::parse(sql, &region)?;
        let t = Instant::now();
        let est = estimate(&query, &region, rho)?;
        let estimated = t.elapsed().as_secs_f64();
        println!(
            "{label}: {} groups x {} columns; estimated in {:.4} s",
            est.groups,
            est.columns.len(),
            estimated
        );
        for run in 0..args.runs {
            let t = Instant::now();
            let a = answer(&query, &input, rho, &mut OsNoise::new())?;
            let took = t.elapsed().as_secs_f64();
            let cells = a.rows.iter().flat_map(|r| &r.cells);
            let published = cells
                .clone()
                .filter(|c| c.status == CellStatus::Published)
                .count();
            println!(
                "  run {run}: answered in {took:.3} s ({} rows, {published} of {} cells published, rho {rho})",
                a.rows.len(),
                cells.count()
            );
        }
    }
    Ok(())
}
