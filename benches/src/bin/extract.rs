//! An anonymised research extract of N synthetic trajectories (issue 12, "Extracts"): the rows as the
//! store lists them (provider, record), the lattice search for the least loss that meets k children and
//! distinct l on the sensitive column within the suppression share, the random client ids, and the CSV.
//! Prints the time of each part and the risk report's main figures. Target: 1,000,000 trajectories in at
//! most 60 s.
//!
//! Run: cargo run --release -p kwm-benches --bin extract -- --trajectories 1000000

use std::time::Instant;

use clap::Parser;
use kwm_schemas::extract::{ExtractColumn, ExtractSpec};
use kwm_schemas::{AgbCode, RegionConfig, WireRecord};
use kwm_sdk::prepare::{prepare_file, PrepareContext};
use kwm_sdk::synth::{generate, SynthOptions};
use kwm_sdk::{ProviderKeys, Pseudonymiser, RegionalKey};
use kwm_service::extract::{anonymise, to_csv};
use rand::rngs::StdRng;
use rand::SeedableRng;

#[derive(Debug, Parser)]
struct Args {
    #[arg(long, default_value_t = 1_000_000)]
    trajectories: u64,
    #[arg(long, default_value_t = 200)]
    providers: u32,
    /// Extracts to time
    #[arg(long, default_value_t = 3)]
    runs: usize,
    /// Quasi-identifiers, comma-separated
    #[arg(
        long,
        default_value = "municipality,target_group,intensity,start_month,end_month,age_band"
    )]
    quasi_identifiers: String,
    #[arg(long, default_value = "satisfaction")]
    sensitive: String,
    /// Columns given as they are, comma-separated
    #[arg(long, default_value = "end_reason,carry_on_without_help")]
    other: String,
    #[arg(long, default_value_t = 10)]
    k: u32,
    #[arg(long, default_value_t = 3)]
    l: u32,
    #[arg(long, default_value = "0.05")]
    max_suppressed: String,
    #[arg(long, default_value = "0.05")]
    risk_threshold: String,
}

fn columns(list: &str) -> anyhow::Result<Vec<ExtractColumn>> {
    list.split(',')
        .filter(|c| !c.trim().is_empty())
        .map(|c| c.parse().map_err(anyhow::Error::from))
        .collect()
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let spec = ExtractSpec {
        quasi_identifiers: columns(&args.quasi_identifiers)?,
        sensitive: args.sensitive.parse()?,
        other_columns: columns(&args.other)?,
        k: args.k,
        l: args.l,
        max_suppressed: args.max_suppressed.parse()?,
        risk_threshold: args.risk_threshold.parse()?,
        client_ids: true,
    };
    let dir = tempfile::tempdir()?;
    let region = RegionConfig::wbw();
    let t0 = Instant::now();
    let out = generate(&SynthOptions::new(
        dir.path(),
        args.providers,
        args.trajectories,
        2025,
    ))?;
    let regional = RegionalKey::generate()?;
    let mut rows: Vec<(AgbCode, WireRecord)> = Vec::new();
    for p in &out.providers {
        let keys = ProviderKeys::generate()?;
        let ctx = PrepareContext::new(region.clone(), Pseudonymiser::new(&regional, &keys));
        rows.extend(
            prepare_file(&p.path, &ctx)?
                .records
                .into_iter()
                .map(|r| (p.agb, r)),
        );
    }
    println!(
        "{} rows of {} children in memory in {:.1} s",
        rows.len(),
        out.children,
        t0.elapsed().as_secs_f64()
    );
    for run in 0..args.runs {
        let t1 = Instant::now();
        let extract = anonymise(&rows, &spec, &region, &mut StdRng::from_os_rng())?;
        let searched = t1.elapsed().as_secs_f64();
        let t2 = Instant::now();
        let mut csv = Vec::new();
        to_csv(&extract, &mut csv)?;
        let written = t2.elapsed().as_secs_f64();
        let r = &extract.report;
        let levels: Vec<String> = r
            .generalisation
            .iter()
            .map(|g| format!("{}={}", g.column, g.level_name))
            .collect();
        println!(
            "run {run}: extract in {searched:.2} s ({} of {} lattice nodes evaluated), CSV of {:.1} MB in \
             {written:.2} s; total {:.2} s. Reached k {} l {}, {} of {} records left out ({:.2}%), {} classes, \
             risk highest {:.3} average {:.4}, {} records above {}, loss {:.4} (generalisation {:.4}); {}",
            r.search.nodes_evaluated,
            r.search.lattice_nodes,
            csv.len() as f64 / 1e6,
            searched + written,
            r.k,
            r.l,
            r.records_suppressed,
            r.records_in,
            100.0 * r.share_suppressed,
            r.equivalence_classes,
            r.prosecutor_risk.highest,
            r.prosecutor_risk.average,
            r.prosecutor_risk.records_above_threshold,
            r.prosecutor_risk.threshold,
            r.information_loss.value,
            r.information_loss.generalisation,
            levels.join(" "),
        );
    }
    Ok(())
}
