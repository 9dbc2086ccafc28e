//! The release engine alone, without a database: N synthetic trajectories in the release index's form
//! (client shards of engine rows), and the time to build a period's tables from them and to draw one
//! release. What the `release` benchmark's from-scratch figure is made of, minus the ledger.
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
use kwm_service::release::{Codebook, EngineRow, IndexedInput, PeriodTables};

#[derive(Debug, Parser)]
struct Args {
    #[arg(long, default_value_t = 5_000_000)]
    trajectories: u64,
    #[arg(long, default_value_t = 200)]
    providers: u32,
    /// Builds to time
    #[arg(long, default_value_t = 3)]
    runs: usize,
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
    let period: Period = "2025".parse()?;
    let input = IndexedInput {
        region: &region,
        shards: &shards,
        period,
        as_of: "2026-11".parse()?,
        order_key: &[3; 32],
    };
    for run in 0..args.runs {
        let t0 = Instant::now();
        let tables = PeriodTables::build_indexed(&input)?;
        let built = t0.elapsed().as_secs_f64();
        let t1 = Instant::now();
        let release = tables.release(ReleaseScope::Region, &mut OsNoise::new())?;
        println!(
            "run {run}: tables of {period} built in {built:.3} s, the region release drawn in {:.4} s \
             ({} rows)",
            t1.elapsed().as_secs_f64(),
            release.rows.len()
        );
    }
    Ok(())
}
