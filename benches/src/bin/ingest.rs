//! End-to-end ingest benchmark: a synthetic export uploaded by the real SDK over HTTP into the real
//! service, on SQLite and on PostgreSQL, and in the same run the raw ceiling: the same (pseudonymised)
//! rows written straight into a fresh database of the same kind by its fastest bulk path (binary COPY for
//! PostgreSQL, one prepared multi-row transaction for SQLite).
//!
//! Run (release build; PostgreSQL from KWM_TEST_DATABASE_URL, a fresh database per measurement):
//!   KWM_TEST_DATABASE_URL=postgres://postgres@127.0.0.1:5432/test \\
//!     cargo run --release -p kwm-benches --bin ingest -- --rows 200000
//! Targets: at least 50,000 rows/s into PostgreSQL over HTTP, and at least half of the raw ceiling.

use std::fs::File;
use std::io::BufWriter;
use std::sync::Arc;
use std::time::Instant;

use anyhow::Context;
use clap::Parser;
use kwm_schemas::{Role, WireRecord};
use kwm_sdk::prepare::{prepare_file, PrepareContext};
use kwm_sdk::{upload_file, ProviderKeys, Pseudonymiser, RegionalKey, Token, UploadOptions};
use kwm_service::store::Provider;
use kwm_service::{Application, Config};

#[derive(Debug, Parser)]
struct Args {
    /// Rows in the export
    #[arg(long, default_value_t = 200_000)]
    rows: u64,
    /// Records per batch
    #[arg(long, default_value_t = 10_000)]
    batch_size: u32,
    /// sqlite, postgres or both
    #[arg(long, default_value = "both")]
    backend: String,
}

struct Measured {
    backend: &'static str,
    http_secs: f64,
    raw_secs: f64,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let dir = tempfile::tempdir()?;
    let path = dir.path().join("export.csv");
    let agb =
        kwm_sdk::synth::write_single_export(BufWriter::new(File::create(&path)?), args.rows, 2025)?;
    println!("export: {} rows, provider {agb}", args.rows);

    let pg_configured = std::env::var_os(kwm_tests::TEST_DATABASE_URL_VAR).is_some();
    let mut results = Vec::new();
    for backend in ["sqlite", "postgres"] {
        if args.backend != "both" && args.backend != backend {
            continue;
        }
        let (url, raw_url, _guards) = match backend {
            "sqlite" => {
                let d = tempfile::tempdir()?;
                let url = format!("sqlite://{}", d.path().join("http.sqlite3").display());
                let raw = format!("sqlite://{}", d.path().join("raw.sqlite3").display());
                (url, raw, Guards::Sqlite(d))
            }
            _ => {
                if !pg_configured {
                    println!(
                        "postgres: skipped (set KWM_TEST_DATABASE_URL=postgres://USER@HOST/DB)"
                    );
                    continue;
                }
                let a = kwm_tests::EphemeralPostgres::create()
                    .await
                    .context("database")?;
                let b = kwm_tests::EphemeralPostgres::create()
                    .await
                    .context("database")?;
                (a.url().to_string(), b.url().to_string(), Guards::Pg(a, b))
            }
        };
        let m = measure(backend, &url, &raw_url, &path, agb, args.batch_size).await?;
        results.push(m);
    }

    println!();
    println!(
        "{:<9} {:>9} {:>14} {:>14} {:>10}",
        "backend", "rows", "HTTP rows/s", "raw rows/s", "HTTP/raw"
    );
    for m in &results {
        let http = args.rows as f64 / m.http_secs;
        let raw = args.rows as f64 / m.raw_secs;
        println!(
            "{:<9} {:>9} {:>14.0} {:>14.0} {:>9.0}%",
            m.backend,
            args.rows,
            http,
            raw,
            100.0 * http / raw
        );
    }
    Ok(())
}

/// Keeps the databases alive until their measurement is done; dropping removes them.
#[allow(dead_code)]
enum Guards {
    Sqlite(tempfile::TempDir),
    Pg(kwm_tests::EphemeralPostgres, kwm_tests::EphemeralPostgres),
}

async fn measure(
    backend: &'static str,
    url: &str,
    raw_url: &str,
    path: &std::path::Path,
    agb: kwm_schemas::AgbCode,
    batch_size: u32,
) -> anyhow::Result<Measured> {
    let data = tempfile::tempdir()?;
    let config = Config {
        data_dir: data.path().to_path_buf(),
        database_url: Some(url.to_string()),
        listen: "127.0.0.1:0".parse()?,
        metrics_listen: None,
        rate_limit_per_second: 0,
        ..Config::default()
    };
    kwm_service::http::startup::initialise(&config).await?;
    let app = Application::build(config).await?;
    let base = format!("http://{}", app.local_addr());
    let state = app.state().clone();
    let server = tokio::spawn(app.run_until_stopped());

    let keys = ProviderKeys::generate()?;
    state
        .store
        .put_provider(&Provider {
            agb,
            name: "bench".into(),
            signing_public_key: keys.signing_public_key().to_vec(),
            created_at: time::OffsetDateTime::now_utc(),
        })
        .await?;
    let (_, token) = kwm_service::app::access::issue_token(
        state.store.as_ref(),
        Role::Provider,
        Some(agb.as_str()),
        "bench",
    )
    .await?;
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

    // The raw ceiling's rows: what the service would store (stage-2 pseudonyms), prepared up front.
    let ctx = PrepareContext::new(
        state.region.as_ref().clone(),
        Pseudonymiser::new(&regional, &keys),
    );
    let records: Vec<WireRecord> = prepare_file(path, &ctx)?
        .records
        .into_iter()
        .map(|mut r| {
            r.client = state.pseudonym_key.pseudonymise(&r.client);
            r
        })
        .collect();

    let mut opts = UploadOptions::new(
        path,
        &base,
        Some(Token::new(token.as_str())),
        keys,
        regional,
    );
    opts.batch_size = batch_size;
    let t0 = Instant::now();
    let report = upload_file(&opts).await.context("upload")?;
    let http_secs = t0.elapsed().as_secs_f64();
    anyhow::ensure!(
        report.stored == records.len() as u64,
        "not every row was stored"
    );
    println!(
        "{backend}: HTTP upload of {} rows in {} batches: {:.2} s",
        report.stored, report.batches, http_secs
    );
    server.abort();

    let raw = Arc::new(records);
    let t0 = Instant::now();
    kwm_service::store::bulk_insert_raw(raw_url, agb, &raw).await?;
    let raw_secs = t0.elapsed().as_secs_f64();
    println!(
        "{backend}: raw bulk insert of {} rows: {:.2} s",
        raw.len(),
        raw_secs
    );
    Ok(Measured {
        backend,
        http_secs,
        raw_secs,
    })
}
