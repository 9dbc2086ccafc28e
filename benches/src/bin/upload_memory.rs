//! Peak memory of `kwm upload` on a large export: the real `kwm` binary uploads a synthetic file of
//! `--rows` rows (default 1,000,000) to a real service on SQLite, while this harness samples the child's
//! peak resident set (VmHWM in /proc) until it exits. Target: below 200 MB.
//!
//! Run (both binaries in release):
//!   cargo build --release -p kwm-sdk --bin kwm && cargo run --release -p kwm-benches --bin upload_memory

use std::fs::File;
use std::io::BufWriter;
use std::path::PathBuf;
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::Parser;
use kwm_schemas::Role;
use kwm_sdk::{ProviderKeys, RegionalKey};
use kwm_service::store::Provider;
use kwm_service::{Application, Config};

#[derive(Debug, Parser)]
struct Args {
    #[arg(long, default_value_t = 1_000_000)]
    rows: u64,
    /// The `kwm` binary [default: next to this harness]
    #[arg(long)]
    kwm: Option<PathBuf>,
}

/// The peak resident set of a process so far, in kB, from /proc/PID/status.
fn vm_hwm_kb(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find(|l| l.starts_with("VmHWM:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let kwm = match args.kwm {
        Some(p) => p,
        None => std::env::current_exe()?
            .parent()
            .context("harness directory")?
            .join("kwm"),
    };
    anyhow::ensure!(
        kwm.exists(),
        "{} not found: build it first with `cargo build --release -p kwm-sdk --bin kwm`",
        kwm.display()
    );

    let dir = tempfile::tempdir()?;
    let export = dir.path().join("export.csv");
    let t0 = Instant::now();
    let agb =
        kwm_sdk::synth::write_single_export(BufWriter::new(File::create(&export)?), args.rows, 1)?;
    let size = std::fs::metadata(&export)?.len();
    println!(
        "export: {} rows, {:.0} MB, written in {:.1} s",
        args.rows,
        size as f64 / 1e6,
        t0.elapsed().as_secs_f64()
    );

    let config = Config {
        data_dir: dir.path().join("service"),
        listen: "127.0.0.1:0".parse()?,
        metrics_listen: None,
        rate_limit_per_second: 0,
        ..Config::default()
    };
    let app = Application::build(config).await?;
    let base = format!("http://{}", app.local_addr());
    let state = app.state().clone();
    let server = tokio::spawn(app.run_until_stopped());

    let keys = ProviderKeys::generate()?;
    let key_dir = dir.path().join("keys");
    keys.write_to(&key_dir, true)?;
    let regional_path = dir.path().join("regional.key");
    let regional = RegionalKey::generate()?;
    regional.write_to(&regional_path, true)?;
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

    let t0 = Instant::now();
    let mut child = tokio::process::Command::new(&kwm)
        .arg("upload")
        .arg(&export)
        .arg("--service")
        .arg(&base)
        .arg("--keys")
        .arg(&key_dir)
        .arg("--regional-key")
        .arg(&regional_path)
        .arg("--json")
        .env("KWM_TOKEN", token.as_str())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .context("starting kwm upload")?;
    let pid = child.id().context("child pid")?;
    let mut peak_kb = 0u64;
    let status = loop {
        if let Some(kb) = vm_hwm_kb(pid) {
            peak_kb = peak_kb.max(kb);
        }
        tokio::select! {
            s = child.wait() => break s?,
            _ = tokio::time::sleep(Duration::from_millis(20)) => {}
        }
    };
    let secs = t0.elapsed().as_secs_f64();
    let out = child.wait_with_output().await?;
    anyhow::ensure!(status.success(), "kwm upload failed: {status}");
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).context("--json report")?;
    println!(
        "kwm upload: {} rows stored in {} batches, {:.1} s ({:.0} rows/s end to end on SQLite)",
        report["stored"],
        report["batches"],
        secs,
        args.rows as f64 / secs
    );
    println!(
        "peak resident memory of kwm upload: {:.1} MB (target < 200 MB)",
        peak_kb as f64 / 1024.0
    );
    server.abort();
    Ok(())
}
