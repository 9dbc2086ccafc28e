//! The release engine alone, without a database: N synthetic trajectories in the release index's form
//! (client shards of engine rows), and the time to build a period's true tables from them
//! (`TrueTables::build`: bounding and aggregation), to draw the round's one noisy measurement, to
//! assemble every release of the round from it, and to compute a whole round (`compute_round`: all
//! of it). What the `release` benchmark's from-scratch figure is made of, minus the ledger.
//!
//! Run: cargo run --release -p kwm-benches --bin engine -- --trajectories 5000000

use std::time::Instant;

use clap::Parser;
use kwm_schemas::release::ReleaseScope;
use kwm_schemas::{Period, RegionConfig};
use kwm_sdk::prepare::{prepare_file, PrepareContext};
use kwm_sdk::synth::{generate, SynthOptions};
use kwm_sdk::{ProviderKeys, Pseudonymiser, RegionalKey};
use kwm_service::index::SHARDS;
use kwm_service::noise::OsNoise;
use kwm_service::release::{
    assemble, compute_round, Codebook, EngineRow, IndexedInput, Measurement, NoisePlan,
    RoundContext, TrueTables,
};

#[derive(Debug, Parser)]
struct Args {
    #[arg(long, default_value_t = 5_000_000)]
    trajectories: u64,
    #[arg(long, default_value_t = 200)]
    providers: u32,
    /// Builds to time
    #[arg(long, default_value_t = 3)]
    runs: usize,
    /// The period of the round: 2025 or 2025-H1 (the region's round rho for it)
    #[arg(long, default_value = "2025")]
    period: String,
}

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
    let period: Period = args.period.parse()?;
    let rho = region
        .round_rho(period)
        .ok_or_else(|| anyhow::anyhow!("the region publishes no rounds of {period}"))?;
    let input = IndexedInput {
        region: &region,
        shards: &shards,
        period,
        as_of: "2026-11".parse()?,
        order_key: &[3; 32],
    };
    let plan = NoisePlan::new(&region, rho)?;
    let charges = plan.charges(&region, period)?;
    for run in 0..args.runs {
        let t0 = Instant::now();
        let tables = TrueTables::build(&input)?;
        let built = t0.elapsed().as_secs_f64();
        let t1 = Instant::now();
        let measurement = Measurement::draw(&tables, &plan, &mut OsNoise::new())?;
        let drawn = t1.elapsed().as_secs_f64();
        let t2 = Instant::now();
        let ctx = RoundContext {
            region: &region,
            plan: &plan,
            charges: &charges,
        };
        let releases = assemble(&ctx, &tables.frame, &measurement, &tables.own)?;
        let assembled = t2.elapsed().as_secs_f64();
        let providers_rows = releases
            .iter()
            .find(|r| r.scope == ReleaseScope::Providers)
            .map_or(0, |r| r.rows.len());
        drop(tables);
        let t3 = Instant::now();
        let round = compute_round(&input, rho, &mut OsNoise::new())?;
        let whole = t3.elapsed().as_secs_f64();
        println!(
            "run {run}: true tables of {period} built in {built:.3} s; the noisy measurement drawn in \
             {drawn:.4} s; {} releases assembled in {assembled:.4} s ({providers_rows} rows in the \
             per-provider table); a whole round (compute_round, rho {rho}) in {whole:.3} s",
            releases.len(),
        );
        anyhow::ensure!(round.releases.len() == releases.len());
    }
    Ok(())
}
