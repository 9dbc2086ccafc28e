//! The release index against the store, on SQLite and PostgreSQL: after uploads, corrections and
//! withdrawals written through one store instance, the index of another instance, synced
//! incrementally, computes exactly the releases that the rows read from the database give; and so does
//! an index loaded whole. Releases are compared without noise, every scope, on synthetic WBW data with
//! repeat trajectories across providers.

use std::sync::Arc;

use anyhow::Context;
use kwm_schemas::release::{Release, ReleaseScope};
use kwm_schemas::{AgbCode, Month, Period, RegionConfig, WireRecord};
use kwm_sdk::prepare::{prepare_file, PrepareContext};
use kwm_sdk::synth::{generate, SynthOptions};
use kwm_sdk::{ProviderKeys, Pseudonymiser, RegionalKey};
use kwm_service::index::ReleaseIndex;
use kwm_service::noise::NoNoise;
use kwm_service::release::{IndexedInput, PeriodTables, ReleaseInput};
use kwm_service::store::{NewBatch, Store};
use time::OffsetDateTime;
use uuid::Uuid;

type TestResult = anyhow::Result<()>;

const ORDER_KEY: [u8; 32] = [5; 32];

fn month(s: &str) -> Month {
    s.parse().expect("a valid month")
}

/// Every scope's release of `period`, without noise, from the rows as the database lists them.
async fn from_database(
    store: &dyn Store,
    region: &RegionConfig,
    period: Period,
) -> anyhow::Result<Vec<Release>> {
    let rows = store
        .list_trajectories_between(month("1900-01"), month("2999-12"))
        .await?;
    let tables = PeriodTables::build(&ReleaseInput {
        region,
        rows: &rows,
        period,
        as_of: month("2026-12"),
        order_key: &ORDER_KEY,
    })?;
    releases(&tables, region)
}

/// The same, from the index as it is now.
fn from_index(
    index: &ReleaseIndex,
    region: &RegionConfig,
    period: Period,
) -> anyhow::Result<Vec<Release>> {
    let data = index.read();
    let tables = PeriodTables::build_indexed(&IndexedInput {
        region,
        shards: data.shards(),
        period,
        as_of: month("2026-12"),
        order_key: &ORDER_KEY,
    })?;
    releases(&tables, region)
}

fn releases(tables: &PeriodTables, region: &RegionConfig) -> anyhow::Result<Vec<Release>> {
    let mut scopes = vec![ReleaseScope::Region];
    scopes.extend(
        region
            .municipalities
            .iter()
            .map(|m| ReleaseScope::Municipality(m.code)),
    );
    scopes
        .into_iter()
        .map(|s| Ok(tables.release(s, &mut NoNoise)?))
        .collect()
}

/// Both ways agree for 2025 and 2024, and the index holds as many rows as the table.
async fn agree(
    store: &dyn Store,
    index: &ReleaseIndex,
    region: &RegionConfig,
    when: &str,
) -> TestResult {
    let stored = store.count_trajectories(None).await?;
    anyhow::ensure!(
        index.read().rows() as u64 == stored,
        "{when}: the index holds {} rows, the store {stored}",
        index.read().rows()
    );
    for period in ["2025", "2024"] {
        let period: Period = period.parse()?;
        let db = from_database(store, region, period).await?;
        let ix = from_index(index, region, period)?;
        anyhow::ensure!(db == ix, "{when}: releases of {period} differ");
        // Not vacuous: figures were published.
        anyhow::ensure!(
            db.iter()
                .flat_map(|r| r.rows.iter().flat_map(|row| &row.cells))
                .any(|c| c.status.is_published()),
            "{when}: nothing published, the comparison says little"
        );
    }
    Ok(())
}

/// Synthetic exports of `providers` providers, prepared as the SDK uploads them.
fn exports(
    dir: &std::path::Path,
    region: &RegionConfig,
) -> anyhow::Result<Vec<(AgbCode, Vec<WireRecord>)>> {
    let mut opts = SynthOptions::new(dir, 4, 6_000, 11);
    opts.first_year = 2023;
    opts.last_year = 2025;
    let out = generate(&opts)?;
    let regional = RegionalKey::generate()?;
    out.providers
        .iter()
        .map(|p| {
            let keys = ProviderKeys::generate()?;
            let ctx = PrepareContext::new(region.clone(), Pseudonymiser::new(&regional, &keys));
            Ok((p.agb, prepare_file(&p.path, &ctx)?.records))
        })
        .collect()
}

fn batch(provider: AgbCode, records: Vec<WireRecord>) -> NewBatch {
    NewBatch {
        provider,
        batch_id: Uuid::new_v4(),
        key_id: "0123456789abcdef".parse().expect("a valid key id"),
        content_digest: [7; 32],
        received_at: OffsetDateTime::now_utc(),
        records,
    }
}

async fn register(store: &dyn Store, agb: AgbCode) -> TestResult {
    store
        .put_provider(&kwm_service::store::Provider {
            agb,
            name: format!("Zorgaanbieder {agb}"),
            signing_public_key: vec![7; 32],
            created_at: OffsetDateTime::now_utc(),
        })
        .await?;
    Ok(())
}

/// `writer` and `reader` are two instances on one database.
async fn the_index_follows_every_change(
    writer: Arc<dyn Store>,
    reader: Arc<dyn Store>,
) -> TestResult {
    let region = RegionConfig::wbw();
    let dir = tempfile::tempdir()?;
    let data = exports(dir.path(), &region)?;
    let index = Arc::new(ReleaseIndex::new(&region));
    let first = index.sync(reader.as_ref()).await?;
    anyhow::ensure!(first.rows == 0, "an empty store gives an empty index");

    // Every provider's rows in two batches; the index syncs between them.
    let mut batches = Vec::new();
    for (agb, records) in &data {
        register(writer.as_ref(), *agb).await?;
        let half = records.len() / 2;
        for part in [&records[..half], &records[half..]] {
            let b = batch(*agb, part.to_vec());
            batches.push((*agb, b.batch_id));
            writer.put_batch(&b).await?;
        }
        index.sync(reader.as_ref()).await?;
    }
    agree(reader.as_ref(), &index, &region, "after the uploads").await?;

    // Corrections: end the first provider's running trajectories as planned, one moved to another
    // client (a corrected BSN), in a new batch.
    let (agb, records) = &data[0];
    let mut corrected: Vec<WireRecord> = records
        .iter()
        .filter(|r| r.end_month.is_none())
        .take(300)
        .cloned()
        .collect();
    anyhow::ensure!(corrected.len() > 10, "running trajectories to correct");
    for r in &mut corrected {
        r.end_month = Some(month("2025-06").max(r.start_month));
        r.end_reason = Some("31".parse()?);
    }
    corrected[0].client = data[1].1[0].client;
    writer.put_batch(&batch(*agb, corrected.clone())).await?;
    let synced = index.sync(reader.as_ref()).await?;
    anyhow::ensure!(!synced.full_load && synced.changes == corrected.len());
    agree(reader.as_ref(), &index, &region, "after the corrections").await?;

    // Withdrawals: one trajectory, then a whole batch of another provider.
    let gone = writer
        .withdraw_trajectory(data[2].0, &data[2].1[0].trajectory)
        .await?;
    anyhow::ensure!(gone.trajectories == 1);
    let (b_agb, b_id) = batches
        .iter()
        .find(|(a, _)| *a == data[3].0)
        .copied()
        .context("a batch of the fourth provider")?;
    writer.withdraw_batch(b_agb, b_id).await?;
    index.sync(reader.as_ref()).await?;
    agree(reader.as_ref(), &index, &region, "after the withdrawals").await?;

    // The withdrawn trajectory uploaded again, and nothing changed since: the sync is a no-op.
    writer
        .put_batch(&batch(data[2].0, vec![data[2].1[0].clone()]))
        .await?;
    index.sync(reader.as_ref()).await?;
    let idle = index.sync(reader.as_ref()).await?;
    anyhow::ensure!(idle.changes == 0, "nothing changed, nothing applied");
    agree(reader.as_ref(), &index, &region, "after the re-upload").await?;

    // A new instance loads the whole table and agrees too.
    let fresh = Arc::new(ReleaseIndex::new(&region));
    let loaded = fresh.sync(writer.as_ref()).await?;
    anyhow::ensure!(loaded.full_load);
    agree(writer.as_ref(), &fresh, &region, "loaded whole").await?;

    // A database restored to an earlier state does not know the index's mark: the index loads again.
    let restored_db = kwm_tests::TempSqlite::new();
    let restored = kwm_service::store::connect(restored_db.url()).await?;
    register(restored.as_ref(), data[0].0).await?;
    restored
        .put_batch(&batch(data[0].0, data[0].1[..50].to_vec()))
        .await?;
    let reloaded = fresh.sync(restored.as_ref()).await?;
    anyhow::ensure!(
        reloaded.full_load && reloaded.rows == 50,
        "reloaded from 0: {reloaded:?}"
    );
    Ok(())
}

mod sqlite {
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_index_follows_every_change() -> super::TestResult {
        let db = kwm_tests::TempSqlite::new();
        let a = kwm_service::store::connect(db.url()).await?;
        let b = kwm_service::store::connect(db.url()).await?;
        super::the_index_follows_every_change(a, b).await
    }
}

mod postgres {
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_index_follows_every_change() -> super::TestResult {
        let Some(db) = kwm_tests::EphemeralPostgres::create().await else {
            return Ok(());
        };
        let a = kwm_service::store::connect(db.url()).await?;
        let b = kwm_service::store::connect(db.url()).await?;
        super::the_index_follows_every_change(a, b).await
    }
}
