//! Load harness: many providers uploading at once against the service on PostgreSQL, for a fixed time.
//! Each provider is a task with its own keys and token that seals batches of its synthetic export with
//! the real SDK and posts them over HTTP as fast as they are answered; every batch carries new
//! trajectories, so every request stores rows. Reports throughput and latency of the uploads, and fails
//! if any request failed.
//!
//! Run (release build; PostgreSQL from KWM_TEST_DATABASE_URL, a fresh database per run):
//!   KWM_TEST_DATABASE_URL=postgres://postgres@127.0.0.1:5432/test \
//!     cargo run --release -p kwm-benches --bin load -- --providers 50 --seconds 60
//! Target: no failed request.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::Parser;
use kwm_schemas::{Role, WireRecord};
use kwm_sdk::batch::seal_records;
use kwm_sdk::prepare::{prepare_file, PrepareContext};
use kwm_sdk::synth::{generate, SynthOptions};
use kwm_sdk::{Client, ProviderKeys, Pseudonymiser, RegionalKey, RetryPolicy, Token};
use kwm_service::store::Provider;
use kwm_service::{Application, Config};

#[derive(Debug, Parser)]
struct Args {
    /// Concurrent providers
    #[arg(long, default_value_t = 50)]
    providers: u32,
    /// How long they upload
    #[arg(long, default_value_t = 60)]
    seconds: u64,
    /// Records per batch
    #[arg(long, default_value_t = 250)]
    batch_size: usize,
    /// Seconds between the service's background syncs of its release index (0: none)
    #[arg(long, default_value_t = Config::default().release_index_sync_secs)]
    index_sync_secs: u64,
}

struct Outcome {
    latencies: Vec<Duration>,
    records: u64,
    failures: Vec<String>,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let db = kwm_tests::EphemeralPostgres::create()
        .await
        .context("set KWM_TEST_DATABASE_URL=postgres://USER@HOST/DB")?;
    let dir = tempfile::tempdir()?;
    let config = Config {
        data_dir: dir.path().join("service"),
        database_url: Some(db.url().to_string()),
        listen: "127.0.0.1:0".parse()?,
        metrics_listen: None,
        // One token per provider at full speed: the harness measures the service, not the limiter.
        rate_limit_per_second: 0,
        release_index_sync_secs: args.index_sync_secs,
        ..Config::default()
    };
    kwm_service::http::startup::initialise(&config).await?;
    let app = Application::build(config).await?;
    let state = app.state().clone();
    let base = format!("http://{}", app.local_addr());
    let server = tokio::spawn(app.run_until_stopped());

    let exports = dir.path().join("exports");
    let synth = SynthOptions::new(
        &exports,
        args.providers,
        u64::from(args.providers) * 2_000,
        7,
    );
    let out = tokio::task::spawn_blocking(move || generate(&synth)).await??;
    let regional = RegionalKey::generate()?;
    // As the operator does once for a region: register the check value of its key.
    state
        .store
        .put_regional_key_check(
            &kwm_service::store::RegionalKeyCheck::from_hex(
                &regional.check_value(),
                time::OffsetDateTime::now_utc(),
            )
            .context("check value")?,
            true,
        )
        .await?;
    let regional_check = regional.check_value();
    let mut tasks = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(5) + Duration::from_secs(args.seconds);
    let start_at = Instant::now() + Duration::from_secs(5);
    for p in &out.providers {
        let keys = ProviderKeys::generate()?;
        state
            .store
            .put_provider(&Provider {
                agb: p.agb,
                name: format!("load {}", p.agb),
                signing_public_key: keys.signing_public_key().to_vec(),
                created_at: time::OffsetDateTime::now_utc(),
            })
            .await?;
        let (_, token) = kwm_service::app::access::issue_token(
            state.store.as_ref(),
            Role::Provider,
            Some(p.agb.as_str()),
            "load",
        )
        .await?;
        let ctx = PrepareContext::new(
            state.region.as_ref().clone(),
            Pseudonymiser::new(&regional, &keys),
        );
        let records: Arc<Vec<WireRecord>> = Arc::new(prepare_file(&p.path, &ctx)?.records);
        anyhow::ensure!(!records.is_empty(), "an empty export");
        let client =
            Client::new(&base, Some(Token::new(token.as_str())))?.with_retry(RetryPolicy::none());
        let (agb, batch_size) = (p.agb, args.batch_size);
        let regional_check = regional_check.clone();
        tasks.push(tokio::spawn(async move {
            let mut o = Outcome {
                latencies: Vec::new(),
                records: 0,
                failures: Vec::new(),
            };
            let (_, key) = client.active_key().await?;
            tokio::time::sleep_until(start_at.into()).await;
            let mut round = 0u64;
            while Instant::now() < deadline {
                // New trajectories every round: each batch stores rows.
                let mut batch: Vec<WireRecord> = records
                    .iter()
                    .cycle()
                    .skip((round as usize * batch_size) % records.len())
                    .take(batch_size)
                    .cloned()
                    .collect();
                for (i, r) in batch.iter_mut().enumerate() {
                    r.trajectory.0[..8].copy_from_slice(&round.to_le_bytes());
                    r.trajectory.0[8..16].copy_from_slice(&(i as u64).to_le_bytes());
                }
                round += 1;
                let sealed = seal_records(
                    &batch,
                    agb,
                    None,
                    &key,
                    keys.signer(),
                    &regional_check,
                    time::OffsetDateTime::now_utc(),
                )?;
                let t = Instant::now();
                match client.post_batch(&sealed).await {
                    Ok(_) => {
                        o.latencies.push(t.elapsed());
                        o.records += batch.len() as u64;
                    }
                    Err(e) => o.failures.push(e.to_string()),
                }
            }
            Ok::<_, anyhow::Error>(o)
        }));
    }
    println!(
        "{} providers upload batches of {} records for {} s ...",
        out.providers.len(),
        args.batch_size,
        args.seconds
    );
    let mut latencies = Vec::new();
    let (mut records, mut failures) = (0u64, Vec::new());
    for t in tasks {
        let o = t.await??;
        latencies.extend(o.latencies);
        records += o.records;
        failures.extend(o.failures);
    }
    server.abort();
    latencies.sort_unstable();
    anyhow::ensure!(!latencies.is_empty(), "no request succeeded");
    let q = |p: f64| latencies[((latencies.len() as f64 * p) as usize).min(latencies.len() - 1)];
    let secs = args.seconds as f64;
    println!(
        "batches {}  records {}  {:.1} batches/s  {:.0} records/s  latency p50 {:.1} ms  p99 {:.1} ms  \
         max {:.1} ms  failed requests {}",
        latencies.len(),
        records,
        latencies.len() as f64 / secs,
        records as f64 / secs,
        q(0.50).as_secs_f64() * 1e3,
        q(0.99).as_secs_f64() * 1e3,
        latencies[latencies.len() - 1].as_secs_f64() * 1e3,
        failures.len()
    );
    if let Some(first) = failures.first() {
        anyhow::bail!("{} requests failed; the first: {first}", failures.len());
    }
    Ok(())
}
