//! Release benchmark: (a) publishing a round from scratch over a national-year-sized store, through
//! the real publishing path (period and budget checks, the release index brought up to date, the
//! engine with fresh exact noise: bounding, the true tables, one noisy measurement, every release of
//! the round assembled, then the round, its charges and its audit entry stored in one transaction);
//! (b) a stored release of the round served over HTTP under 200 concurrent requests, with p50/p99
//! latency.
//!
//! The data: the SDK's synthetic generator (a shared child population, repeat trajectories, realistic
//! distributions per target group), pseudonymised by the SDK and the service's second stage, written
//! with the backend's raw bulk path (loading is not what is measured here).
//!
//! Rounds compute from the service's release index (the stored rows in memory, kept in step with the
//! store by its change feed); the bench times the index's full load, its catch-up after one more batch,
//! and what reading the period's rows from the database alone would cost, apart.
//!
//! Run (release build; PostgreSQL from KWM_TEST_DATABASE_URL, a fresh database per run):
//!   KWM_TEST_DATABASE_URL=postgres://postgres@127.0.0.1:5432/test \
//!     cargo run --release -p kwm-benches --bin release -- --trajectories 5000000
//! Targets: a round (every municipality, the region and the per-provider table) published from
//! scratch in at most 2 s on PostgreSQL; a stored release served at p99 at most 5 ms under 200
//! concurrent requests.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::Parser;
use kwm_schemas::release::{Release, ReleaseScope};
use kwm_schemas::{Period, Role};
use kwm_sdk::prepare::{prepare_file, PrepareContext};
use kwm_sdk::synth::{generate, SynthOptions};
use kwm_sdk::{ProviderKeys, Pseudonymiser, RegionalKey};
use kwm_service::app::rounds::{publish_round, Actor};
use kwm_service::{Application, Config};

#[derive(Debug, Parser)]
struct Args {
    /// Stored trajectories in all
    #[arg(long, default_value_t = 5_000_000)]
    trajectories: u64,
    /// Providers they are spread over
    #[arg(long, default_value_t = 200)]
    providers: u32,
    /// sqlite or postgres
    #[arg(long, default_value = "postgres")]
    backend: String,
    /// Concurrent requests for the stored release
    #[arg(long, default_value_t = 200)]
    concurrency: usize,
    /// Requests for the stored release in all
    #[arg(long, default_value_t = 40_000)]
    requests: usize,
    /// Records of the extra batch stored after the rounds, to time the index's catch-up
    #[arg(long, default_value_t = 5_000)]
    extra_batch: usize,
    /// Offered load in requests per second over all clients (open loop); 0: each client sends its
    /// next request when the previous one is answered (closed loop)
    #[arg(long, default_value_t = 0.0)]
    rate: f64,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let dir = tempfile::tempdir()?;

    // The database.
    let (url, _guard) = match args.backend.as_str() {
        "postgres" => {
            let db = kwm_tests::EphemeralPostgres::create()
                .await
                .context("set KWM_TEST_DATABASE_URL=postgres://USER@HOST/DB")?;
            (db.url().to_string(), Some(db))
        }
        "sqlite" => (
            format!("sqlite://{}", dir.path().join("bench.sqlite3").display()),
            None,
        ),
        other => anyhow::bail!("unknown backend {other}: use postgres or sqlite"),
    };
    let config = Config {
        data_dir: dir.path().join("service"),
        database_url: Some(url.clone()),
        listen: "127.0.0.1:0".parse()?,
        metrics_listen: None,
        rate_limit_per_second: 0,
        ..Config::default()
    };
    kwm_service::http::startup::initialise(&config).await?;
    let app = Application::build(config).await?;
    let state = app.state().clone();

    // One national year of trajectories, all overlapping the released year.
    let t0 = Instant::now();
    let exports = dir.path().join("exports");
    let mut synth = SynthOptions::new(&exports, args.providers, args.trajectories, 2025);
    synth.first_year = 2025;
    synth.last_year = 2025;
    let out = tokio::task::spawn_blocking(move || generate(&synth)).await??;
    println!(
        "generated {} trajectories of {} children at {} providers in {:.1} s",
        out.trajectories,
        out.children,
        out.providers.len(),
        t0.elapsed().as_secs_f64()
    );
    let t0 = Instant::now();
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
    let mut stored_count = 0usize;
    for p in &out.providers {
        let keys = ProviderKeys::generate()?;
        let ctx = PrepareContext::new(
            state.region.as_ref().clone(),
            Pseudonymiser::new(&regional, &keys),
        );
        let records: Vec<_> = prepare_file(&p.path, &ctx)?
            .records
            .into_iter()
            .map(|mut r| {
                r.client = state.pseudonym_key.pseudonymise(&r.client);
                r
            })
            .collect();
        stored_count += records.len();
        kwm_service::store::bulk_insert_raw(&url, p.agb, &records).await?;
    }
    if args.backend == "postgres" {
        // A live database has statistics; a bulk-loaded one gets them here.
        let pool = sqlx::PgPool::connect(&url).await?;
        sqlx::query("ANALYZE trajectories").execute(&pool).await?;
        pool.close().await;
    }
    println!(
        "stored {stored_count} trajectories in {:.1} s (raw bulk path, not measured)",
        t0.elapsed().as_secs_f64()
    );

    // The release index: loaded once by a starting instance (here, after the bulk load), then kept in
    // step by the change feed. Measured apart: a release computes from it.
    let t0 = Instant::now();
    let synced = state.index.sync(state.store.as_ref()).await?;
    println!(
        "the release index loaded {} rows in {:.1} s, about {} MB (once per instance start; then \
         kept in step)",
        synced.rows,
        t0.elapsed().as_secs_f64(),
        state.index.read().approx_bytes() / 1_000_000
    );

    // (a) From scratch: no round of the period in the ledger yet. The year round, then the first
    // half-year's (a smaller rho, the same pass over the data).
    let actor = Actor {
        role: "admin".into(),
        id: "bench".into(),
    };
    let deps = state.round_deps();
    let mut municipality_release = None;
    for period in ["2025", "2025-H1"] {
        let period: Period = period.parse()?;
        let t0 = Instant::now();
        let outcome = publish_round(&deps, period, &actor, false)
            .await
            .map_err(|e| anyhow::anyhow!("{e}"))?;
        let secs = t0.elapsed().as_secs_f64();
        anyhow::ensure!(
            outcome.outcome == "published",
            "the round must be computed, not found"
        );
        let round = &outcome.round;
        let region_id = round
            .releases
            .iter()
            .find(|r| r.scope == ReleaseScope::Region)
            .context("a region release")?
            .id;
        let stored = state
            .store
            .get_round_release(region_id)
            .await?
            .context("the region release is stored")?;
        let region_release: Release = serde_json::from_value(stored.body)?;
        let published = region_release
            .status_counts()
            .iter()
            .find(|(s, _)| s.is_published())
            .map_or(0, |c| c.1);
        let charges: Vec<String> = round
            .charges
            .iter()
            .map(|c| format!("{}: {}", c.data_year, c.rho))
            .collect();
        println!(
            "(a) round {period} from scratch over {stored_rows} stored trajectories: {secs:.2} s \
             ({} releases; {published} cells of the region release published; rho charged {})  \
             target <= 2 s",
            round.releases.len(),
            charges.join(", "),
            stored_rows = stored_count,
        );
        if municipality_release.is_none() {
            municipality_release = round
                .releases
                .iter()
                .find(|r| r.scope.to_string() == "GM0748")
                .map(|r| r.id);
        }
    }
    let period: Period = "2025".parse()?;
    // For comparison: what reading the period's rows from the database alone costs (what every
    // build paid before the release index).
    let t0 = Instant::now();
    let rows = state
        .store
        .list_trajectories_between(
            period.first_month(),
            period
                .last_month()
                .plus_months(state.region.policy.herhaald_beroep_window_months),
        )
        .await?;
    let load = t0.elapsed().as_secs_f64();
    println!(
        "    for comparison, reading the period's {} rows from the database: {load:.2} s",
        rows.len()
    );
    drop(rows);
    // Keeping the index in step: one more provider batch after all this, then the sync a round does.
    let extra = out.providers.first().context("a provider")?;
    let keys = ProviderKeys::generate()?;
    let ctx = PrepareContext::new(
        state.region.as_ref().clone(),
        Pseudonymiser::new(&regional, &keys),
    );
    let batch: Vec<_> = prepare_file(&extra.path, &ctx)?
        .records
        .into_iter()
        .take(args.extra_batch)
        .map(|mut r| {
            r.client = state.pseudonym_key.pseudonymise(&r.client);
            r
        })
        .collect();
    kwm_service::store::bulk_insert_raw(&url, extra.agb, &batch).await?;
    let t0 = Instant::now();
    let synced = state.index.sync(state.store.as_ref()).await?;
    println!(
        "    the sync after one more batch of {} records: {:.3} s ({} changes applied)",
        batch.len(),
        t0.elapsed().as_secs_f64(),
        synced.changes
    );

    // (b) A stored release of the round under concurrent requests.
    let id = municipality_release.context("a municipality release")?;
    let (_, token) = kwm_service::app::access::issue_token(
        state.store.as_ref(),
        Role::Municipality,
        Some("GM0748"),
        "bench",
    )
    .await?;
    let base = format!("http://{}", app.local_addr());
    let server = tokio::spawn(app.run_until_stopped());
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(args.concurrency)
        .build()?;
    for (what, path) in [
        ("by id", format!("/v1/releases/{id}")),
        (
            "by scope and period",
            "/v1/releases?scope=GM0748&period=2025".to_string(),
        ),
    ] {
        let url = Arc::new(format!("{base}{path}"));
        let token = Arc::new(token.to_string());
        // Warm the connection pool.
        for _ in 0..args.concurrency {
            client
                .get(url.as_str())
                .bearer_auth(token.as_str())
                .send()
                .await?
                .bytes()
                .await?;
        }
        let per_worker = args.requests / args.concurrency;
        // Open loop: each client sends on a fixed schedule and latency counts from the scheduled
        // moment, so a slow reply delays nothing it should not (no coordinated omission).
        let interval =
            (args.rate > 0.0).then(|| Duration::from_secs_f64(args.concurrency as f64 / args.rate));
        let t0 = Instant::now();
        let mut workers = Vec::new();
        for w in 0..args.concurrency {
            let (client, url, token) = (client.clone(), url.clone(), token.clone());
            workers.push(tokio::spawn(async move {
                let mut lat = Vec::with_capacity(per_worker);
                for i in 0..per_worker {
                    let t = match interval {
                        Some(every) => {
                            // Spread the clients' first requests over one interval.
                            let offset = every.mul_f64(w as f64 / args.concurrency as f64);
                            let at = t0 + offset + every * i as u32;
                            tokio::time::sleep_until(at.into()).await;
                            at
                        }
                        None => Instant::now(),
                    };
                    let res = client
                        .get(url.as_str())
                        .bearer_auth(token.as_str())
                        .send()
                        .await?;
                    anyhow::ensure!(res.status().is_success(), "status {}", res.status());
                    res.bytes().await?;
                    lat.push(t.elapsed());
                }
                Ok::<_, anyhow::Error>(lat)
            }));
        }
        let mut all: Vec<Duration> = Vec::new();
        for w in workers {
            all.extend(w.await??);
        }
        let wall = t0.elapsed().as_secs_f64();
        all.sort_unstable();
        let q = |p: f64| all[((all.len() as f64 * p) as usize).min(all.len() - 1)];
        let mode = match interval {
            Some(_) => format!("open loop at {} req/s offered", args.rate),
            None => "closed loop".to_string(),
        };
        println!(
            "(b) stored release of the round {what}, {} requests, {} concurrent clients, {mode}: {:.0} req/s, \
             p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms  target p99 <= 5 ms",
            all.len(),
            args.concurrency,
            all.len() as f64 / wall,
            q(0.50).as_secs_f64() * 1e3,
            q(0.99).as_secs_f64() * 1e3,
            all[all.len() - 1].as_secs_f64() * 1e3
        );
    }
    server.abort();
    Ok(())
}
