//! The release index against the store, on SQLite and PostgreSQL: after uploads, corrections and
//! withdrawals written through one store instance, the index of another instance, synced
//! incrementally, computes exactly the round that the rows read from the database give; and so does
//! an index loaded whole. Rounds are compared without noise, every scope (each municipality, the
//! region and the per-provider table) and the charges, on synthetic WBW data with repeat trajectories
//! across providers.

use std::sync::Arc;

use anyhow::Context;
use kwm_schemas::release::{Release, ReleaseScope};
use kwm_schemas::{AgbCode, Month, Period, RegionConfig, WireRecord};
use kwm_sdk::prepare::{prepare_file, PrepareContext};
use kwm_sdk::synth::{generate, SynthOptions};
use kwm_sdk::{ProviderKeys, Pseudonymiser};
use kwm_service::index::ReleaseIndex;
use kwm_service::noise::NoNoise;
use kwm_service::release::{compute_round, engine_rows, ComputedRound, IndexedInput};
use kwm_service::store::{NewBatch, Store};
use time::OffsetDateTime;
use uuid::Uuid;

type TestResult = anyhow::Result<()>;

const ORDER_KEY: [u8; 32] = [5; 32];

fn month(s: &str) -> Month {
    s.parse().expect("a valid month")
}

/// The round of `period` without noise from `shards`.
fn round(
    region: &RegionConfig,
    shards: &[Vec<kwm_service::release::EngineRow>],
    period: Period,
) -> anyhow::Result<ComputedRound> {
    let rho = region
        .round_rho(period)
        .context("the region publishes rounds of this period")?;
    Ok(compute_round(
        &IndexedInput {
            region,
            shards,
            period,
            as_of: month("2026-12"),
            order_key: &ORDER_KEY,
        },
        rho,
        &mut NoNoise,
    )?)
}

/// The round of `period`, from the rows as the database lists them, in one shard.
async fn from_database(
    store: &dyn Store,
    region: &RegionConfig,
    period: Period,
) -> anyhow::Result<ComputedRound> {
    let rows = store
        .list_trajectories_between(month("1900-01"), month("2999-12"))
        .await?;
    round(region, &[engine_rows(region, &rows)], period)
}

/// The same, from the index's shards as they are now.
fn from_index(
    index: &ReleaseIndex,
    region: &RegionConfig,
    period: Period,
) -> anyhow::Result<ComputedRound> {
    let data = index.read();
    round(region, data.shards(), period)
}

/// Every scope of the region once: each municipality, the region and the per-provider table.
fn scopes_of(releases: &[Release], region: &RegionConfig) -> anyhow::Result<()> {
    let mut want = vec![ReleaseScope::Region, ReleaseScope::Providers];
    want.extend(
        region
            .municipalities
            .iter()
            .map(|m| ReleaseScope::Municipality(m.code)),
    );
    want.sort();
    let mut got: Vec<ReleaseScope> = releases.iter().map(|r| r.scope).collect();
    got.sort();
    anyhow::ensure!(got == want, "the round's scopes: {got:?}");
    Ok(())
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
        scopes_of(&db.releases, region)?;
        anyhow::ensure!(
            db.charges == ix.charges,
            "{when}: charges of {period} differ"
        );
        anyhow::ensure!(
            db.releases.len() == ix.releases.len(),
            "{when}: {period}: {} releases from the database, {} from the index",
            db.releases.len(),
            ix.releases.len()
        );
        for (d, i) in db.releases.iter().zip(&ix.releases) {
            anyhow::ensure!(
                d == i,
                "{when}: the {} release of {period} differs",
                d.scope
            );
        }
        // Not vacuous: figures were published, in the noisy tables and in the providers' own rows.
        for scope in [ReleaseScope::Region, ReleaseScope::Providers] {
            let r = db
                .releases
                .iter()
                .find(|r| r.scope == scope)
                .context("every scope")?;
            anyhow::ensure!(
                r.rows
                    .iter()
                    .flat_map(|row| &row.cells)
                    .any(|c| c.status.is_published()),
                "{when}: nothing published in {scope} of {period}, the comparison says little"
            );
        }
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
    let regional = kwm_tests::regional_key();
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
            // One key per provider: the store refuses a key registered for another AGB code.
            signing_public_key: agb.as_str().bytes().cycle().take(32).collect(),
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

/// Four providers write at once through their own store instances (uploads in small batches,
/// corrections, withdrawals of trajectories and batches, re-uploads) while two indexes sync over and
/// over, one of them replaced midway by a fresh instance (a restart). Afterwards every index equals a
/// fresh load of the table (`ReleaseIndex::verify`, what `kwm-service admin index verify` asks an
/// instance for), and a change written behind the change feed's back is named by its start year.
async fn concurrent_writes_and_syncs(
    url: &str,
    tamper: impl AsyncFnOnce(&str) -> TestResult,
) -> TestResult {
    let region = RegionConfig::wbw();
    let dir = tempfile::tempdir()?;
    let data = exports(dir.path(), &region)?;
    let setup = kwm_service::store::connect(url).await?;
    for (agb, _) in &data {
        register(setup.as_ref(), *agb).await?;
    }
    let done = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut writers = Vec::new();
    for (agb, records) in data.clone() {
        let store = kwm_service::store::connect(url).await?;
        writers.push(tokio::spawn(async move {
            let mut ids = Vec::new();
            for chunk in records.chunks(250) {
                let b = batch(agb, chunk.to_vec());
                ids.push(b.batch_id);
                store.put_batch(&b).await?;
            }
            // Correct the running trajectories of the first chunk, and one client.
            let mut corrected: Vec<WireRecord> = records[..250]
                .iter()
                .filter(|r| r.end_month.is_none())
                .cloned()
                .collect();
            for r in &mut corrected {
                r.end_month = Some(month("2025-06").max(r.start_month));
                r.end_reason = Some("32".parse()?);
            }
            if let Some(first) = corrected.first_mut() {
                first.client = records[records.len() - 1].client;
            }
            store.put_batch(&batch(agb, corrected)).await?;
            store
                .withdraw_trajectory(agb, &records[300].trajectory)
                .await?;
            store.withdraw_batch(agb, ids[2]).await?;
            // The withdrawn batch's rows come back in a new upload, a few of them changed.
            let mut again = records[500..750].to_vec();
            for r in again
                .iter_mut()
                .filter(|r| r.satisfaction.is_some())
                .take(20)
            {
                r.satisfaction = Some("7".parse()?);
            }
            store.put_batch(&batch(agb, again)).await?;
            anyhow::Ok(())
        }));
    }
    let mut syncers = Vec::new();
    for restart in [false, true] {
        let store = kwm_service::store::connect(url).await?;
        let done = done.clone();
        let region = region.clone();
        syncers.push(tokio::spawn(async move {
            let mut index = Arc::new(ReleaseIndex::new(&region));
            let mut syncs = 0u32;
            while !done.load(std::sync::atomic::Ordering::SeqCst) {
                index.sync(store.as_ref()).await?;
                syncs += 1;
                if restart && syncs == 5 {
                    index = Arc::new(ReleaseIndex::new(&region));
                }
                tokio::task::yield_now().await;
            }
            anyhow::Ok((index, store))
        }));
    }
    for w in writers {
        w.await??;
    }
    done.store(true, std::sync::atomic::Ordering::SeqCst);
    let mut indexes = Vec::new();
    for s in syncers {
        indexes.push(s.await??);
    }
    for (index, store) in &indexes {
        let check = index.verify(store.as_ref()).await?;
        anyhow::ensure!(check.consistent, "index differs from the store: {check:?}");
        anyhow::ensure!(check.stored_rows > 0 && check.years.len() >= 3, "{check:?}");
        agree(store.as_ref(), index, &region, "after concurrent writes").await?;
    }

    // Written behind the feed's back: the index cannot know, the check names the year.
    tamper(url).await?;
    let (index, store) = &indexes[0];
    let check = index.verify(store.as_ref()).await?;
    anyhow::ensure!(
        !check.consistent,
        "a change behind the feed is seen: {check:?}"
    );
    let differing: Vec<u16> = check
        .years
        .iter()
        .filter(|y| !y.consistent)
        .map(|y| y.year)
        .collect();
    let earliest = data
        .iter()
        .flat_map(|(_, rs)| rs.iter().map(|r| r.start_month))
        .min()
        .context("rows")?
        .year();
    anyhow::ensure!(
        differing == vec![earliest],
        "only the earliest year differs: {check:?}"
    );
    anyhow::ensure!(
        check.index_rows == check.stored_rows,
        "counts agree, digests do not"
    );
    Ok(())
}

/// A running instance whose SQLite file is replaced under it (a second `kwm-service demo` on the same
/// directory removes it and starts a new database at the same path) must never read the new file:
/// connections it opens afterwards would see another database, and an index synced through them
/// would add the other database's rows to its own. Its reads give its own rows or fail, saying why.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_instance_never_reads_a_database_file_that_replaced_its_own() -> TestResult {
    let region = RegionConfig::wbw();
    let dir = tempfile::tempdir()?;
    let data = exports(dir.path(), &region)?;
    let db_dir = dir.path().join("data");
    let url = format!("sqlite://{}/kwm.sqlite3", db_dir.display());

    let first = kwm_service::store::connect(&url).await?;
    register(first.as_ref(), data[0].0).await?;
    first
        .put_batch(&batch(data[0].0, data[0].1.clone()))
        .await?;
    let own = first.count_trajectories(None).await?;
    let index = Arc::new(ReleaseIndex::new(&region));
    anyhow::ensure!(index.sync(first.as_ref()).await?.rows as u64 == own);

    // The directory removed and a new database started at the same path, with other rows.
    std::fs::remove_dir_all(&db_dir)?;
    let second = kwm_service::store::connect(&url).await?;
    register(second.as_ref(), data[1].0).await?;
    second
        .put_batch(&batch(data[1].0, data[1].1.clone()))
        .await?;

    // Many reads at once make the first instance's pool open new connections.
    let mut refused = 0;
    for _ in 0..5 {
        let reads: Vec<_> = (0..16)
            .map(|_| {
                let store = first.clone();
                tokio::spawn(async move { store.count_trajectories(None).await })
            })
            .collect();
        for read in reads {
            let result = read.await?;
            match result {
                Ok(n) => anyhow::ensure!(n == own, "read {n} rows, its own database has {own}"),
                Err(e) => {
                    let e = format!("{e:#}");
                    anyhow::ensure!(e.contains("not the database this instance opened"), "{e}");
                    refused += 1;
                }
            }
        }
        match index.sync(first.as_ref()).await {
            Ok(s) => anyhow::ensure!(
                s.rows as u64 == own,
                "the index holds {} rows, its database {own}",
                s.rows
            ),
            Err(e) => anyhow::ensure!(
                format!("{e:#}").contains("not the database this instance opened"),
                "{e:#}"
            ),
        }
    }
    anyhow::ensure!(
        refused > 0,
        "no read opened a new connection: the test proves nothing"
    );
    Ok(())
}

/// The same on PostgreSQL: a database dropped and created anew under the same name while an instance
/// runs. Its old connections are gone; the new ones reach a database with another identity and are
/// refused, and from then on every call fails at once, naming the database.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_instance_never_reads_a_postgres_database_created_anew_under_its_name() -> TestResult {
    let Some(db) = kwm_tests::EphemeralPostgres::create().await else {
        return Ok(());
    };
    let region = RegionConfig::wbw();
    let dir = tempfile::tempdir()?;
    let data = exports(dir.path(), &region)?;
    let first = kwm_service::store::connect(db.url()).await?;
    register(first.as_ref(), data[0].0).await?;
    first
        .put_batch(&batch(data[0].0, data[0].1[..100].to_vec()))
        .await?;
    anyhow::ensure!(first.count_trajectories(None).await? == 100);

    let admin = sqlx::PgPool::connect(&kwm_tests::postgres_test_url().context("the URL")?).await?;
    sqlx::query(&format!(r#"DROP DATABASE "{}" WITH (FORCE)"#, db.name()))
        .execute(&admin)
        .await?;
    sqlx::query(&format!(r#"CREATE DATABASE "{}""#, db.name()))
        .execute(&admin)
        .await?;
    let second = kwm_service::store::connect(db.url()).await?;
    register(second.as_ref(), data[1].0).await?;
    second
        .put_batch(&batch(data[1].0, data[1].1[..30].to_vec()))
        .await?;

    // The first call may fail on a connection the drop ended, or wait out the pool's timeout while
    // new connections are refused; it never counts the other database's rows.
    for attempt in 0..3 {
        match first.count_trajectories(None).await {
            Ok(n) => anyhow::bail!("attempt {attempt} read {n} rows of another database"),
            Err(e) if attempt > 0 => {
                let e = format!("{e:#}");
                anyhow::ensure!(
                    e.contains("is not the database this instance opened") && e.contains(db.name()),
                    "{e}"
                );
            }
            Err(_) => {}
        }
    }
    Ok(())
}

/// Moves the earliest month's rows to another municipality, without a change-feed entry.
const TAMPER: &str = "UPDATE trajectories \
     SET municipality = CASE WHEN municipality = 'GM0748' THEN 'GM0777' ELSE 'GM0748' END \
     WHERE start_month = (SELECT min(start_month) FROM trajectories)";

mod sqlite {
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_writes_and_syncs_leave_every_index_equal_to_the_store() -> super::TestResult
    {
        let db = kwm_tests::TempSqlite::new();
        super::concurrent_writes_and_syncs(db.url(), async |url: &str| {
            let pool = sqlx::SqlitePool::connect(url).await?;
            sqlx::query(super::TAMPER).execute(&pool).await?;
            Ok(())
        })
        .await
    }

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
    async fn concurrent_writes_and_syncs_leave_every_index_equal_to_the_store() -> super::TestResult
    {
        let Some(db) = kwm_tests::EphemeralPostgres::create().await else {
            return Ok(());
        };
        super::concurrent_writes_and_syncs(db.url(), async |url: &str| {
            let pool = sqlx::PgPool::connect(url).await?;
            sqlx::query(super::TAMPER).execute(&pool).await?;
            Ok(())
        })
        .await
    }

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
