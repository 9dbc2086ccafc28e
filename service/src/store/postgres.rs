//! The PostgreSQL backend of the store: production and several service replicas (`postgres://...`).
//!
//! A batch is ingested with one binary `COPY` into a transaction-scoped staging table and one
//! `INSERT ... SELECT ... ON CONFLICT DO UPDATE` that inserts new trajectories, replaces changed ones and
//! leaves identical ones alone; row-by-row statements would cost a round trip per record (binding the
//! records as arrays for `unnest` measured slightly slower than COPY here). Idempotency
//! rests on the primary key of `batches`: the batch row is inserted first, so a second transaction with
//! the same batch id waits for the first and then finds its receipt.
//!
//! The change feed of `trajectories` (`trajectory_changes`, read by [`Store::trajectory_changes`])
//! numbers changes by an identity column, whose values are taken at insert and may commit out of
//! order. An advisory lock orders them: every writer of `trajectories` holds it shared until commit,
//! and the reader takes it exclusively for the moment it fixes its snapshot (see [`CHANGE_FEED_LOCK`]).

use super::research::{format_date, parse_date};
use super::tether::{Tether, SELECT_IDENTITY};
use super::{
    ExtractRecord, NewProject, NewResearchAnswer, Project, PutResearch, ResearchKind,
    ResearchLogEntry,
};
use crate::store::RecordFn;
use std::str::FromStr;
use std::sync::{Arc, LazyLock};
use std::time::Duration;

use async_trait::async_trait;
use futures::TryStreamExt;
use kwm_schemas::api::BatchReceipt;
use kwm_schemas::codes::{
    AgeBand, EndReason, GoalCount, Intensity, ProductCategory, Satisfaction, TScore,
};
use kwm_schemas::region::Epsilon;
use kwm_schemas::{AgbCode, Month, Pseudonym, Role, WireRecord};
use sqlx::pool::PoolConnection;
use sqlx::postgres::{PgConnectOptions, PgConnection, PgPool, PgPoolOptions, PgRow};
use sqlx::Row;
use time::OffsetDateTime;
use uuid::Uuid;

use super::{
    check_new_round, data_version_of, round_retry_pause, ChangeSink, KeyCheck, NewBatch,
    NewRelease, NewRound, NewSession, NewToken, PrivacyCharge, Provider, PutBatch, PutRelease,
    PutRound, RegionalKeyCheck, RoundRecord, ServiceKeyKind, SortBuckets, Store, StoreError,
    StoredRelease, StoredRoundRelease, StoredServiceKey, TokenRecord, Withdrawn, NEWEST_CHANGE,
    NEWEST_ERASED, ROUND_ATTEMPTS,
};
use crate::audit::{AuditAction, AuditEntry, NewAuditEntry};

/// The embedded migrations of this backend.
static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations/postgres");

/// The advisory lock (key pair: class, object) that orders the change feed. A number of
/// `trajectory_changes` is taken at insert, not at commit, so a reader could see number 12 committed
/// while 11 is still in flight and then never read 11. Every transaction that writes `trajectories` or
/// the feed takes this lock shared as its first statement (writers do not wait for each other); the
/// reader takes it exclusively, so that no writer is in flight, fixes its snapshot and lets go. The
/// two-int4 form is a key space of its own: never the same lock as the bigint
/// `hashtextextended(...)` locks of the releases. (The identity's sequence keeps the default cache of
/// 1: a session never holds back numbers it takes later.)
const CHANGE_FEED_LOCK: (i32, i32) = (0x4B57_4D43, 1); // "KWMC", the trajectory change feed

/// The class of the advisory lock (class, provider AGB code as a number) that orders one provider's
/// writes: uploads take it shared (they lock shared rows in key order and do not wait for each
/// other), withdrawals exclusively. A withdrawal deletes and moves rows in the order it finds them,
/// and a later export carries the same rows: without this, the two could deadlock.
const PROVIDER_WRITES_LOCK: i32 = 0x4B57_4D50; // "KWMP"

/// The record columns of `trajectories` with their types, in COPY order.
const RECORD_COLUMNS: [(&str, &str); 18] = [
    ("trajectory", "bytea NOT NULL"),
    ("client", "bytea NOT NULL"),
    ("municipality", "text NOT NULL"),
    ("target_group", "text NOT NULL"),
    ("intensity", "smallint"),
    ("product_category", "smallint"),
    ("start_month", "integer NOT NULL"),
    ("end_month", "integer"),
    ("age_band", "text NOT NULL"),
    ("end_reason", "smallint"),
    ("satisfaction", "smallint"),
    ("respondent", "text"),
    ("carry_on_without_help", "text"),
    ("problem_t_pre", "smallint"),
    ("problem_t_post", "smallint"),
    ("instrument", "text"),
    ("goals_agreed", "smallint"),
    ("goals_achieved", "smallint"),
];

/// Lives until the end of the transaction; each connection has its own.
static CREATE_STAGING: LazyLock<String> = LazyLock::new(|| {
    let cols: Vec<String> = RECORD_COLUMNS
        .iter()
        .map(|(c, t)| format!("{c} {t}"))
        .collect();
    format!(
        "CREATE TEMPORARY TABLE kwm_staging ({}) ON COMMIT DROP",
        cols.join(", ")
    )
});

static COPY_STAGING: LazyLock<String> = LazyLock::new(|| {
    let cols: Vec<&str> = RECORD_COLUMNS.iter().map(|(c, _)| *c).collect();
    format!(
        "COPY kwm_staging ({}) FROM STDIN (FORMAT binary)",
        cols.join(", ")
    )
});

/// Moves the staged records into `trajectories` and counts what happened. Every staged row is written:
/// this batch becomes the carrier of each (the newest batch that carried it). A row whose values
/// differ (or a new one) also takes this batch as the one that wrote it (`batch_id`), a new `revision`
/// (1 for a new row) and time; an unchanged row keeps those. So `batch_id = $2` in the returned rows
/// tells written from unchanged, and `revision` new from corrected. One statement, sorted by key, so
/// that concurrent batches lock shared rows in the same order.
static UPSERT_FROM_STAGING: LazyLock<String> = LazyLock::new(|| {
    let cols: Vec<&str> = RECORD_COLUMNS.iter().map(|(c, _)| *c).collect();
    let staged: Vec<String> = cols.iter().map(|c| format!("s.{c}")).collect();
    let set: Vec<String> = cols
        .iter()
        .skip(1)
        .map(|c| format!("{c} = excluded.{c}"))
        .collect();
    let old: Vec<String> = cols
        .iter()
        .skip(1)
        .map(|c| format!("trajectories.{c}"))
        .collect();
    let new: Vec<String> = cols
        .iter()
        .skip(1)
        .map(|c| format!("excluded.{c}"))
        .collect();
    let differs = format!("({}) IS DISTINCT FROM ({})", old.join(", "), new.join(", "));
    format!(
        "WITH written AS ( \
           INSERT INTO trajectories (provider, {cols}, batch_id, carrier, revision, updated_at) \
           SELECT $1, {staged}, $2::uuid, $2::uuid, 1, $3::timestamptz FROM kwm_staging s \
           ORDER BY s.trajectory \
           ON CONFLICT (provider, trajectory) DO UPDATE SET {set}, carrier = excluded.carrier, \
             batch_id = CASE WHEN {differs} THEN excluded.batch_id ELSE trajectories.batch_id END, \
             revision = CASE WHEN {differs} THEN trajectories.revision + 1 \
                        ELSE trajectories.revision END, \
             updated_at = CASE WHEN {differs} THEN excluded.updated_at \
                          ELSE trajectories.updated_at END \
           RETURNING revision, batch_id) \
         SELECT count(*) FILTER (WHERE batch_id = $2::uuid AND revision = 1) AS stored, \
                count(*) FILTER (WHERE batch_id = $2::uuid AND revision > 1) AS corrected \
         FROM written",
        cols = cols.join(", "),
        staged = staged.join(", "),
        set = set.join(", "),
    )
});

static SELECT_TRAJECTORIES_PAGE: LazyLock<String> = LazyLock::new(|| {
    let cols: Vec<&str> = RECORD_COLUMNS.iter().map(|(c, _)| *c).collect();
    format!(
        "SELECT {} FROM trajectories WHERE provider = $1 AND ($2::bytea IS NULL OR trajectory > $2) \
         ORDER BY trajectory LIMIT $3",
        cols.join(", ")
    )
});

/// Timestamps travel as text in one fixed UTC form, exact to the microsecond PostgreSQL keeps.
const TS_SQL_FORMAT: &str = r#"'YYYY-MM-DD"T"HH24:MI:SS.US"Z"'"#;

fn ts_column(column: &str) -> String {
    format!("to_char({column} AT TIME ZONE 'UTC', {TS_SQL_FORMAT}) AS {column}")
}

static SELECT_BATCH_COLUMNS: LazyLock<String> = LazyLock::new(|| {
    format!(
        "provider, batch_id::text AS batch_id, key_id, content_digest, record_count, stored, \
         corrected, unchanged, {}",
        ts_column("received_at")
    )
});

static SELECT_PROVIDER_COLUMNS: LazyLock<String> =
    LazyLock::new(|| format!("agb, name, signing_public_key, {}", ts_column("created_at")));

#[derive(Debug)]
pub struct PgStore {
    pool: PgPool,
    /// Keeps the pool on the database it opened.
    tether: Arc<Tether>,
}

impl PgStore {
    /// Connects (at most 10 connections, 5 s to get one) and runs the migrations.
    pub async fn connect(url: &str) -> Result<Self, StoreError> {
        let mut options = PgConnectOptions::from_str(url)
            .map_err(|e| StoreError::Other(anyhow::anyhow!("invalid PostgreSQL URL: {e}")))?;
        // Names the service's sessions in pg_stat_activity, unless the URL names them already.
        if options.get_application_name().is_none() {
            options = options.application_name("kwm-service");
        }
        let tether = Arc::new(Tether::new(format!(
            "the PostgreSQL database {} on {}:{}",
            options.get_database().unwrap_or("(default)"),
            options.get_host(),
            options.get_port()
        )));
        let hook = tether.clone();
        let pool = PgPoolOptions::new()
            .max_connections(10)
            .acquire_timeout(Duration::from_secs(5))
            .after_connect(move |conn, _| {
                let tether = hook.clone();
                Box::pin(async move {
                    let found: Option<String> = sqlx::query_scalar(SELECT_IDENTITY)
                        .fetch_optional(&mut *conn)
                        .await
                        .ok()
                        .flatten();
                    tether.check_connection(found)
                })
            })
            .connect_with(options)
            .await
            .map_err(db_err)?;
        // sqlx holds an advisory lock while migrating, so replicas starting together are safe.
        MIGRATOR.run(&pool).await.map_err(|e| {
            StoreError::Other(anyhow::anyhow!("running the PostgreSQL migrations: {e}"))
        })?;
        let identity: String = sqlx::query_scalar(SELECT_IDENTITY)
            .fetch_one(&pool)
            .await
            .map_err(db_err)?;
        tether.hold_identity(identity);
        Ok(Self { pool, tether })
    }

    /// The pool, while it still reaches the database this store opened (see [`Tether`]).
    fn pool(&self) -> Result<&PgPool, StoreError> {
        self.tether.check()?;
        Ok(&self.pool)
    }
}

impl PgStore {
    /// The fastest plain bulk path, for the ingest benchmark's ceiling only: one binary `COPY` of all
    /// records straight into `trajectories` (same keys, indexes and checks), without the staging table,
    /// upsert, batch bookkeeping or counts of [`Store::put_batch`]. It gives the table column defaults
    /// for the columns a COPY of records does not carry, so use it on a throwaway database only.
    pub async fn bulk_insert_raw(
        &self,
        provider: AgbCode,
        records: &[WireRecord],
    ) -> Result<(), StoreError> {
        let batch_id = Uuid::new_v4().hyphenated().to_string();
        let mut tx = self.pool()?.begin().await.map_err(db_err)?;
        enter_change_feed(&mut tx).await?;
        sqlx::query(&format!(
            "ALTER TABLE trajectories ALTER COLUMN provider SET DEFAULT '{}', \
             ALTER COLUMN batch_id SET DEFAULT '{batch_id}'::uuid, \
             ALTER COLUMN carrier SET DEFAULT '{batch_id}'::uuid, ALTER COLUMN revision SET DEFAULT 1, \
             ALTER COLUMN updated_at SET DEFAULT now()",
            provider.as_str(),
        ))
        .execute(&mut *tx)
        .await
        .map_err(db_err)?;
        let cols: Vec<&str> = RECORD_COLUMNS.iter().map(|(c, _)| *c).collect();
        let mut copy = tx
            .copy_in_raw(&format!(
                "COPY trajectories ({}) FROM STDIN (FORMAT binary)",
                cols.join(", ")
            ))
            .await
            .map_err(db_err)?;
        copy.send(encode_copy_binary(records))
            .await
            .map_err(db_err)?;
        copy.finish().await.map_err(db_err)?;
        // The rows carry the default batch id set above (no receipt in `batches` on this path).
        if !records.is_empty() {
            log_batch_change(&mut tx, provider.as_str(), &batch_id).await?;
        }
        tx.commit().await.map_err(db_err)
    }
}

/// How often [`Store::put_release`] starts over when a release of another data version took the
/// version number it was about to use. A safety net: the advisory lock on (scope, period) that every
/// attempt takes first makes this impossible as long as every writer takes it.
const RELEASE_ATTEMPTS: usize = 5;

impl PgStore {
    /// One attempt of [`Store::put_release`]: `None` when another release took the version number
    /// (nothing was written; try again).
    async fn try_put_release(
        &self,
        release: &StoredRelease,
        partitions: &[String],
        epsilon: i64,
        cap: i64,
        cap_epsilon: Epsilon,
        body: &str,
    ) -> Result<Option<PutRelease>, StoreError> {
        let mut tx = self.pool()?.begin().await.map_err(db_err)?;
        // Releases of one (scope, period) take turns, on every replica, until commit: the check
        // below then sees the release a concurrent request just stored, and no version number is
        // taken twice. This lock first, then the partitions (sorted): always in this order.
        sqlx::query("SELECT pg_advisory_xact_lock(hashtextextended($1, 0))")
            .bind(format!(
                "kwm-release\u{1f}{}\u{1f}{}",
                release.scope, release.period
            ))
            .execute(&mut *tx)
            .await
            .map_err(db_err)?;
        if let Some(existing) = self.find_release(&mut *tx, release).await? {
            tx.rollback().await.map_err(db_err)?;
            return Ok(Some(PutRelease::Existing(existing)));
        }

        // Sorted: two transactions lock shared partitions in the same order and never deadlock. The
        // conditional update waits for a concurrent charge of the partition, then re-checks the cap
        // against the committed spend (READ COMMITTED): no partition ever passes its cap.
        for partition in partitions {
            sqlx::query(
                "INSERT INTO budget (partition, spent_nanos) VALUES ($1, 0) \
                 ON CONFLICT (partition) DO NOTHING",
            )
            .bind(partition)
            .execute(&mut *tx)
            .await
            .map_err(db_err)?;
            // `cap - epsilon` is at least 0 (checked before), and no sum can overflow.
            let charged: Option<i64> = sqlx::query_scalar(
                "UPDATE budget SET spent_nanos = spent_nanos + $2 \
                 WHERE partition = $1 AND spent_nanos <= $3 RETURNING spent_nanos",
            )
            .bind(partition)
            .bind(epsilon)
            .bind(cap - epsilon)
            .fetch_optional(&mut *tx)
            .await
            .map_err(db_err)?;
            if charged.is_none() {
                let spent: i64 =
                    sqlx::query_scalar("SELECT spent_nanos FROM budget WHERE partition = $1")
                        .bind(partition)
                        .fetch_one(&mut *tx)
                        .await
                        .map_err(db_err)?;
                tx.rollback().await.map_err(db_err)?;
                // The budget may be gone because a release of this very data version took it
                // while this one waited: that release is the answer.
                if let Some(existing) = self.find_release(self.pool()?, release).await? {
                    return Ok(Some(PutRelease::Existing(existing)));
                }
                return Ok(Some(PutRelease::BudgetExhausted {
                    partition: partition.clone(),
                    spent: spent_epsilon(spent)?.ok_or_else(|| corrupt("budget.spent_nanos"))?,
                    cap: cap_epsilon,
                }));
            }
        }

        let version: i32 = sqlx::query_scalar(
            "SELECT coalesce(max(version), 0) + 1 FROM releases WHERE scope = $1 AND period = $2",
        )
        .bind(&release.scope)
        .bind(&release.period)
        .fetch_one(&mut *tx)
        .await
        .map_err(db_err)?;
        let id = release.id.hyphenated().to_string();
        let inserted = sqlx::query(
            "INSERT INTO releases (id, scope, period, version, data_version, epsilon_nanos, \
             created_at, body) VALUES ($1::uuid, $2, $3, $4, $5, $6, $7::timestamptz, $8::json)",
        )
        .bind(&id)
        .bind(&release.scope)
        .bind(&release.period)
        .bind(version)
        .bind(&release.data_version)
        .bind(epsilon)
        .bind(format_ts(release.created_at)?)
        .bind(body)
        .execute(&mut *tx)
        .await;
        if let Err(e) = inserted {
            let Some(constraint) = unique_violation(&e) else {
                return Err(db_err(e));
            };
            // Another transaction committed a release of (scope, period) first: of this data
            // version (the answer), or of another that took the version number (start over).
            tx.rollback().await.map_err(db_err)?;
            if let Some(existing) = self.find_release(self.pool()?, release).await? {
                return Ok(Some(PutRelease::Existing(existing)));
            }
            return match constraint.as_str() {
                "releases_pkey" => {
                    Err(StoreError::Conflict(format!("release {id} exists already")))
                }
                _ => Ok(None),
            };
        }
        sqlx::query(
            "INSERT INTO release_partitions (release_id, partition) \
             SELECT $1::uuid, p FROM unnest($2::text[]) AS p",
        )
        .bind(&id)
        .bind(partitions)
        .execute(&mut *tx)
        .await
        .map_err(db_err)?;
        tx.commit().await.map_err(db_err)?;

        Ok(Some(PutRelease::Stored(StoredRelease {
            version: u32::try_from(version).map_err(|_| corrupt("releases.version"))?,
            ..release.clone()
        })))
    }

    /// The stored release of the same (scope, period, data version) as `release`, if any.
    async fn find_release<'e, E>(
        &self,
        executor: E,
        release: &StoredRelease,
    ) -> Result<Option<StoredRelease>, StoreError>
    where
        E: sqlx::PgExecutor<'e>,
    {
        sqlx::query(&format!(
            "SELECT {} FROM releases WHERE scope = $1 AND period = $2 AND data_version = $3",
            *SELECT_RELEASE_COLUMNS
        ))
        .bind(&release.scope)
        .bind(&release.period)
        .bind(&release.data_version)
        .fetch_optional(executor)
        .await
        .map_err(db_err)?
        .map(|r| release_from_row(&r))
        .transpose()
    }
}

impl PgStore {
    /// One attempt of [`Store::put_round`] (checked already), with the release bodies as JSON text.
    async fn try_put_round(
        &self,
        round: &NewRound,
        bodies: &[String],
    ) -> Result<PutRound, TxError> {
        let id = round.id.hyphenated().to_string();
        let created_at = truncate_to_micros(round.created_at);
        let created_text = format_ts(created_at)?;
        let mut tx = self.pool()?.begin().await?;
        // Rounds of one period take turns, on every replica, until commit: the newest version read
        // below is still the newest at commit, so a data version is stored once and no version
        // number is taken twice. This lock first, then the years (ascending), then the audit log:
        // always in this order, so no two rounds wait for each other in a circle.
        sqlx::query("SELECT pg_advisory_xact_lock(hashtextextended($1, 0))")
            .bind(format!("kwm-round\u{1f}{}", round.period))
            .execute(&mut *tx)
            .await?;

        let newest = sqlx::query(
            "SELECT id::text AS id, version, data_version FROM rounds WHERE period = $1 \
             ORDER BY version DESC LIMIT 1",
        )
        .bind(&round.period)
        .fetch_optional(&mut *tx)
        .await?;
        let mut version: u32 = 1;
        if let Some(row) = newest {
            let newest_id: String = row.try_get("id")?;
            let newest_version: i32 = row.try_get("version")?;
            let newest_data: String = row.try_get("data_version")?;
            if round.first_only || newest_data == round.data_version {
                let record = load_rounds(&mut tx, RoundsOf::Id(&newest_id))
                    .await?
                    .pop()
                    .ok_or_else(|| corrupt("rounds (a round read back)"))?;
                tx.rollback().await?;
                return Ok(PutRound::Unchanged(record));
            }
            version = u32::try_from(newest_version)
                .ok()
                .and_then(|v| v.checked_add(1))
                .ok_or_else(|| corrupt("rounds.version"))?;
        }
        let version_sql = i32::try_from(version).map_err(|_| corrupt("rounds.version"))?;

        // Ascending years (checked): two rounds lock shared years in the same order and never
        // deadlock. The conditional update waits for a concurrent charge of the year, then re-checks
        // the cap against the committed spend (READ COMMITTED): no year ever passes the cap.
        for &(year, rho) in &round.charges {
            sqlx::query(
                "INSERT INTO privacy_budget (data_year, spent_nanos) VALUES ($1, 0) \
                 ON CONFLICT (data_year) DO NOTHING",
            )
            .bind(i32::from(year))
            .execute(&mut *tx)
            .await?;
            // `cap - rho` cannot overflow (cap >= 0, rho > 0), and a spend at most `cap - rho` plus
            // `rho` stays at most `cap`. A negative bound refuses every spend.
            let charged: Option<i64> = sqlx::query_scalar(
                "UPDATE privacy_budget SET spent_nanos = spent_nanos + $2 \
                 WHERE data_year = $1 AND spent_nanos <= $3 RETURNING spent_nanos",
            )
            .bind(i32::from(year))
            .bind(rho)
            .bind(round.cap_nanos - rho)
            .fetch_optional(&mut *tx)
            .await?;
            if charged.is_none() {
                let spent: i64 = sqlx::query_scalar(
                    "SELECT spent_nanos FROM privacy_budget WHERE data_year = $1",
                )
                .bind(i32::from(year))
                .fetch_one(&mut *tx)
                .await?;
                tx.rollback().await?;
                return Ok(PutRound::BudgetExhausted {
                    year,
                    spent_nanos: spent,
                    asked_nanos: rho,
                    cap_nanos: round.cap_nanos,
                });
            }
        }
        let years: Vec<i32> = round.charges.iter().map(|&(y, _)| i32::from(y)).collect();
        let rhos: Vec<i64> = round.charges.iter().map(|&(_, r)| r).collect();
        let inserted = sqlx::query(
            "INSERT INTO privacy_charges (data_year, rho_nanos, subject_kind, subject_id, at) \
             SELECT y, r, 'round', $3, $4::timestamptz FROM unnest($1::int4[], $2::int8[]) AS c(y, r)",
        )
        .bind(&years)
        .bind(&rhos)
        .bind(&id)
        .bind(&created_text)
        .execute(&mut *tx)
        .await;
        if let Err(e) = inserted {
            // The round id charged these years before: the round is stored already.
            return Err(id_conflict(e, "privacy_charges_once_per_year", || {
                format!("round {id} exists already")
            }));
        }

        let audit = append_audit_in(&mut tx, &round.audit).await?;
        let inserted = sqlx::query(
            "INSERT INTO rounds (id, period, version, data_version, published_by, created_at, \
             audit_seq) VALUES ($1::uuid, $2, $3, $4, $5, $6::timestamptz, $7)",
        )
        .bind(&id)
        .bind(&round.period)
        .bind(version_sql)
        .bind(&round.data_version)
        .bind(&round.published_by)
        .bind(&created_text)
        .bind(audit.seq)
        .execute(&mut *tx)
        .await;
        if let Err(e) = inserted {
            return Err(id_conflict(e, "rounds_pkey", || {
                format!("round {id} exists already")
            }));
        }
        let release_ids: Vec<String> = round
            .releases
            .iter()
            .map(|r| r.id.hyphenated().to_string())
            .collect();
        let scopes: Vec<&str> = round.releases.iter().map(|r| r.scope.as_str()).collect();
        let inserted = sqlx::query(
            "INSERT INTO round_releases (id, round_id, scope, body) \
             SELECT i::uuid, $1::uuid, s, b::json FROM unnest($2::text[], $3::text[], $4::text[]) \
             AS t(i, s, b)",
        )
        .bind(&id)
        .bind(&release_ids)
        .bind(&scopes)
        .bind(bodies)
        .execute(&mut *tx)
        .await;
        if let Err(e) = inserted {
            return Err(id_conflict(e, "round_releases_pkey", || {
                format!("a release id of round {id} exists already")
            }));
        }
        tx.commit().await?;

        let mut releases: Vec<(String, Uuid)> = round
            .releases
            .iter()
            .map(|r| (r.scope.clone(), r.id))
            .collect();
        releases.sort();
        Ok(PutRound::Stored(RoundRecord {
            id: round.id,
            period: round.period.clone(),
            version,
            data_version: round.data_version.clone(),
            charges: round.charges.clone(),
            published_by: round.published_by.clone(),
            created_at,
            releases,
            audit_seq: audit.seq,
        }))
    }
}

#[async_trait]
impl Store for PgStore {
    async fn ping(&self) -> Result<(), StoreError> {
        sqlx::query("SELECT 1")
            .execute(self.pool()?)
            .await
            .map_err(db_err)?;
        Ok(())
    }

    fn pool_status(&self) -> Option<super::PoolStatus> {
        let size = self.pool.size();
        let idle = u32::try_from(self.pool.num_idle()).unwrap_or(size);
        Some(super::PoolStatus { size, idle })
    }

    async fn put_provider_recorded(
        &self,
        p: &Provider,
        audit: Option<&NewAuditEntry>,
    ) -> Result<(), StoreError> {
        let mut tx = self.pool()?.begin().await.map_err(db_err)?;
        // Registrations queue behind each other, so that two cannot take the same key at once
        // (readers are not blocked).
        sqlx::query("LOCK TABLE providers IN SHARE ROW EXCLUSIVE MODE")
            .execute(&mut *tx)
            .await
            .map_err(db_err)?;
        let holder: Option<String> =
            sqlx::query_scalar("SELECT agb FROM providers WHERE signing_public_key = $1 LIMIT 1")
                .bind(&p.signing_public_key)
                .fetch_optional(&mut *tx)
                .await
                .map_err(db_err)?;
        match holder {
            Some(h) if h == p.agb.as_str() => {
                return Err(StoreError::Conflict(format!(
                    "provider {} is already registered",
                    p.agb
                )))
            }
            Some(h) => return Err(super::key_taken(&h)),
            None => {}
        }
        let done = sqlx::query(
            "INSERT INTO providers (agb, name, signing_public_key, created_at) \
             VALUES ($1, $2, $3, $4::timestamptz) ON CONFLICT (agb) DO NOTHING",
        )
        .bind(p.agb.as_str())
        .bind(&p.name)
        .bind(&p.signing_public_key)
        .bind(format_ts(p.created_at)?)
        .execute(&mut *tx)
        .await
        .map_err(db_err)?;
        if done.rows_affected() == 0 {
            return Err(StoreError::Conflict(format!(
                "provider {} is already registered",
                p.agb
            )));
        }
        append_entry(&mut tx, audit).await?;
        tx.commit().await.map_err(db_err)?;
        Ok(())
    }

    async fn put_provider_key_recorded(
        &self,
        agb: AgbCode,
        key: &[u8],
        audit: Option<&NewAuditEntry>,
    ) -> Result<(), StoreError> {
        let mut tx = self.pool()?.begin().await.map_err(db_err)?;
        sqlx::query("LOCK TABLE providers IN SHARE ROW EXCLUSIVE MODE")
            .execute(&mut *tx)
            .await
            .map_err(db_err)?;
        let holder: Option<String> = sqlx::query_scalar(
            "SELECT agb FROM providers WHERE signing_public_key = $1 AND agb <> $2 LIMIT 1",
        )
        .bind(key)
        .bind(agb.as_str())
        .fetch_optional(&mut *tx)
        .await
        .map_err(db_err)?;
        if let Some(h) = holder {
            return Err(super::key_taken(&h));
        }
        let done = sqlx::query("UPDATE providers SET signing_public_key = $1 WHERE agb = $2")
            .bind(key)
            .bind(agb.as_str())
            .execute(&mut *tx)
            .await
            .map_err(db_err)?;
        if done.rows_affected() == 0 {
            return Err(StoreError::NotFound);
        }
        append_entry(&mut tx, audit).await?;
        tx.commit().await.map_err(db_err)?;
        Ok(())
    }

    async fn get_provider(&self, agb: AgbCode) -> Result<Option<Provider>, StoreError> {
        sqlx::query(&format!(
            "SELECT {} FROM providers WHERE agb = $1",
            *SELECT_PROVIDER_COLUMNS
        ))
        .bind(agb.as_str())
        .fetch_optional(self.pool()?)
        .await
        .map_err(db_err)?
        .map(|r| provider_from_row(&r))
        .transpose()
    }

    async fn list_providers(&self) -> Result<Vec<Provider>, StoreError> {
        sqlx::query(&format!(
            "SELECT {} FROM providers ORDER BY agb",
            *SELECT_PROVIDER_COLUMNS
        ))
        .fetch_all(self.pool()?)
        .await
        .map_err(db_err)?
        .iter()
        .map(provider_from_row)
        .collect()
    }

    async fn put_token_recorded(
        &self,
        t: &NewToken,
        record: Option<&RecordFn<i64>>,
    ) -> Result<i64, StoreError> {
        let mut tx = self.pool()?.begin().await.map_err(db_err)?;
        let id: Option<i64> = sqlx::query_scalar(
            "INSERT INTO tokens (token_hash, role, scope, label, created_at) \
             VALUES ($1, $2, $3, $4, $5::timestamptz) ON CONFLICT (token_hash) DO NOTHING RETURNING id",
        )
        .bind(&t.token_hash[..])
        .bind(t.role.as_str())
        .bind(t.scope.as_deref())
        .bind(&t.label)
        .bind(format_ts(t.created_at)?)
        .fetch_optional(&mut *tx)
        .await
        .map_err(db_err)?;
        let id = id.ok_or_else(|| StoreError::Conflict("a token with this hash exists".into()))?;
        append_recorded(&mut tx, record, &id).await?;
        tx.commit().await.map_err(db_err)?;
        Ok(id)
    }

    async fn get_token(&self, token_hash: &[u8; 32]) -> Result<Option<TokenRecord>, StoreError> {
        sqlx::query(&format!(
            "SELECT id, role, scope, label, {}, {} FROM tokens WHERE token_hash = $1",
            ts_column("created_at"),
            ts_column("revoked_at")
        ))
        .bind(&token_hash[..])
        .fetch_optional(self.pool()?)
        .await
        .map_err(db_err)?
        .map(|r| token_from_row(&r))
        .transpose()
    }

    async fn put_batch_recorded(
        &self,
        batch: &NewBatch,
        record: Option<&RecordFn<BatchReceipt>>,
    ) -> Result<PutBatch, StoreError> {
        let provider = batch.provider.as_str();
        let batch_id = batch.batch_id.hyphenated().to_string();
        let received_at = truncate_to_micros(batch.received_at);
        let received_text = format_ts(received_at)?;
        let record_count = u32::try_from(batch.records.len())
            .ok()
            .and_then(|n| i32::try_from(n).ok().map(|_| n))
            .ok_or_else(|| {
                StoreError::Other(anyhow::anyhow!("a batch this large cannot be stored"))
            })?;

        let mut tx = self.pool()?.begin().await.map_err(db_err)?;
        enter_change_feed(&mut tx).await?;
        lock_provider_writes(&mut tx, batch.provider, false).await?;

        // Claims the batch id. A concurrent transaction with the same id waits here until this one
        // ends; then it finds the committed row (a replay) or, after a rollback, claims the id itself.
        let claimed = sqlx::query(
            "INSERT INTO batches (provider, batch_id, key_id, content_digest, record_count, \
             stored, corrected, unchanged, received_at) \
             VALUES ($1, $2::uuid, $3, $4, $5, 0, 0, 0, $6::timestamptz) \
             ON CONFLICT (provider, batch_id) DO NOTHING",
        )
        .bind(provider)
        .bind(&batch_id)
        .bind(batch.key_id.as_str())
        .bind(&batch.content_digest[..])
        .bind(record_count as i32)
        .bind(&received_text)
        .execute(&mut *tx)
        .await
        .map_err(db_err)?
        .rows_affected()
            == 1;
        // A withdrawn batch stays withdrawn. Asked after the claim: a withdrawal that deleted the
        // receipt meanwhile has committed its tombstone by now (READ COMMITTED: this statement sees it).
        if claimed {
            let withdrawn: Option<String> = sqlx::query_scalar(&format!(
                "SELECT {} FROM withdrawn_batches WHERE provider = $1 AND batch_id = $2::uuid",
                ts_column("at")
            ))
            .bind(provider)
            .bind(&batch_id)
            .fetch_optional(&mut *tx)
            .await
            .map_err(db_err)?;
            if let Some(at) = withdrawn {
                tx.rollback().await.map_err(db_err)?;
                return Ok(PutBatch::Withdrawn { at: parse_ts(&at)? });
            }
        }
        if !claimed {
            // READ COMMITTED: this statement sees the row the other transaction committed.
            let existing = sqlx::query(&format!(
                "SELECT {} FROM batches WHERE provider = $1 AND batch_id = $2::uuid",
                *SELECT_BATCH_COLUMNS
            ))
            .bind(provider)
            .bind(&batch_id)
            .fetch_optional(&mut *tx)
            .await
            .map_err(db_err)?;
            tx.rollback().await.map_err(db_err)?;
            let original = existing.ok_or_else(|| {
                StoreError::Unavailable("a concurrent upload of this batch did not finish".into())
            })?;
            return replay_or_conflict(receipt_from_row(&original)?, &batch.content_digest);
        }

        let (stored, corrected) = if batch.records.is_empty() {
            (0, 0)
        } else {
            sqlx::query(CREATE_STAGING.as_str())
                .execute(&mut *tx)
                .await
                .map_err(db_err)?;
            let data = encode_copy_binary(&batch.records);
            let mut copy = tx
                .copy_in_raw(COPY_STAGING.as_str())
                .await
                .map_err(db_err)?;
            copy.send(data).await.map_err(db_err)?;
            copy.finish().await.map_err(db_err)?;
            let counts = sqlx::query(UPSERT_FROM_STAGING.as_str())
                .bind(provider)
                .bind(&batch_id)
                .bind(&received_text)
                .fetch_one(&mut *tx)
                .await
                .map_err(db_err)?;
            let count = |c: &str| -> Result<u32, StoreError> {
                let v: i64 = counts.try_get(c).map_err(db_err)?;
                u32::try_from(v).map_err(|_| corrupt("a batch count"))
            };
            (count("stored")?, count("corrected")?)
        };
        let unchanged = record_count
            .checked_sub(stored + corrected)
            .ok_or_else(|| corrupt("the batch counts"))?;

        sqlx::query(
            "UPDATE batches SET stored = $3, corrected = $4, unchanged = $5 \
             WHERE provider = $1 AND batch_id = $2::uuid",
        )
        .bind(provider)
        .bind(&batch_id)
        .bind(stored as i32)
        .bind(corrected as i32)
        .bind(unchanged as i32)
        .execute(&mut *tx)
        .await
        .map_err(db_err)?;
        if stored + corrected > 0 {
            log_batch_change(&mut tx, provider, &batch_id).await?;
        }
        let receipt = BatchReceipt {
            batch_id: batch.batch_id,
            provider: batch.provider,
            key_id: batch.key_id.clone(),
            record_count,
            stored,
            corrected,
            unchanged,
            received_at,
            content_digest: hex::encode(batch.content_digest),
            replayed: false,
        };
        append_recorded(&mut tx, record, &receipt).await?;
        tx.commit().await.map_err(db_err)?;
        Ok(PutBatch::Stored(receipt))
    }

    async fn get_batch(
        &self,
        provider: AgbCode,
        batch_id: Uuid,
    ) -> Result<Option<BatchReceipt>, StoreError> {
        sqlx::query(&format!(
            "SELECT {} FROM batches WHERE provider = $1 AND batch_id = $2::uuid",
            *SELECT_BATCH_COLUMNS
        ))
        .bind(provider.as_str())
        .bind(batch_id.hyphenated().to_string())
        .fetch_optional(self.pool()?)
        .await
        .map_err(db_err)?
        .map(|r| receipt_from_row(&r))
        .transpose()
    }

    async fn list_batches(&self, provider: AgbCode) -> Result<Vec<BatchReceipt>, StoreError> {
        sqlx::query(&format!(
            "SELECT {} FROM batches WHERE provider = $1 ORDER BY received_at DESC, seq DESC",
            *SELECT_BATCH_COLUMNS
        ))
        .bind(provider.as_str())
        .fetch_all(self.pool()?)
        .await
        .map_err(db_err)?
        .iter()
        .map(receipt_from_row)
        .collect()
    }

    async fn count_trajectories(&self, provider: Option<AgbCode>) -> Result<u64, StoreError> {
        // Two statements rather than `$1 IS NULL OR ...`, which would keep a generic plan off the index.
        let n: i64 = match provider {
            Some(p) => sqlx::query_scalar("SELECT count(*) FROM trajectories WHERE provider = $1")
                .bind(p.as_str())
                .fetch_one(self.pool()?)
                .await
                .map_err(db_err)?,
            None => sqlx::query_scalar("SELECT count(*) FROM trajectories")
                .fetch_one(self.pool()?)
                .await
                .map_err(db_err)?,
        };
        u64::try_from(n).map_err(|_| corrupt("count"))
    }

    async fn list_trajectories_page(
        &self,
        provider: AgbCode,
        after: Option<&Pseudonym>,
        limit: u32,
    ) -> Result<Vec<WireRecord>, StoreError> {
        sqlx::query(SELECT_TRAJECTORIES_PAGE.as_str())
            .bind(provider.as_str())
            .bind(after.map(|p| &p.as_bytes()[..]))
            .bind(i64::from(limit))
            .fetch_all(self.pool()?)
            .await
            .map_err(db_err)?
            .iter()
            .map(record_from_row)
            .collect()
    }

    async fn list_trajectories_between(
        &self,
        from: Month,
        to: Month,
    ) -> Result<Vec<(AgbCode, WireRecord)>, StoreError> {
        // Binary COPY out: PostgreSQL sends each row as one small message that is decoded straight
        // into records, at several times the rate of decoding result rows one column at a time. The
        // months are integers the types produced, so they can be written into the statement (COPY
        // takes no parameters). The rows are sorted here, not by PostgreSQL (see `SortBuckets`).
        let sql = format!(
            "COPY (SELECT {fields} FROM trajectories \
             WHERE start_month <= {to} AND (end_month IS NULL OR end_month >= {from})) \
             TO STDOUT (FORMAT binary)",
            fields = *SELECT_BETWEEN_FIELDS,
            from = from.as_yyyymm(),
            to = to.as_yyyymm(),
        );
        let mut conn = self.pool()?.acquire().await.map_err(db_err)?;
        let mut out = SortBuckets::default();
        let decoded = async {
            let mut stream = conn.copy_out_raw(&sql).await.map_err(db_err)?;
            let mut decoder = CopyOutDecoder::default();
            let mut push = |provider, record| out.push((provider, record));
            while let Some(chunk) = stream.try_next().await.map_err(db_err)? {
                decoder.feed(&chunk, &mut push)?;
            }
            decoder.finish()
        }
        .await;
        if decoded.is_err() {
            // The copy may not have been read to its end: the connection cannot be reused.
            conn.close_on_drop();
        }
        decoded?;
        Ok(out.into_sorted())
    }

    async fn trajectory_changes(
        &self,
        since: i64,
        sink: &mut dyn ChangeSink,
    ) -> Result<i64, StoreError> {
        // Cheap first look, without the lock: nothing committed since the mark, nothing to read (a
        // writer still in flight shows up in a later call).
        let newest: i64 = sqlx::query_scalar(NEWEST_CHANGE)
            .fetch_one(self.pool()?)
            .await
            .map_err(db_err)?;
        check_mark(since, newest)?;
        if newest == since {
            return Ok(since);
        }
        let mut conn = CloseUnlessClean {
            conn: self.pool()?.acquire().await.map_err(db_err)?,
            clean: false,
        };
        let mark = read_changes(&mut conn.conn, since, sink).await?;
        // Only a read that ran to its end leaves the connection without lock and transaction.
        conn.clean = true;
        Ok(mark)
    }

    async fn prune_change_feed(&self, before: OffsetDateTime) -> Result<u64, StoreError> {
        let done = sqlx::query(
            "UPDATE trajectory_changes SET trajectory = NULL \
             WHERE trajectory IS NOT NULL AND at < $1::timestamptz",
        )
        .bind(format_ts(before)?)
        .execute(self.pool()?)
        .await
        .map_err(db_err)?;
        Ok(done.rows_affected())
    }

    async fn data_version(&self) -> Result<String, StoreError> {
        // The change feed's newest number: one index lookup, however many batches are stored.
        let newest: i64 = sqlx::query_scalar(NEWEST_CHANGE)
            .fetch_one(self.pool()?)
            .await
            .map_err(db_err)?;
        Ok(data_version_of(newest))
    }

    async fn put_release(&self, release: &NewRelease) -> Result<PutRelease, StoreError> {
        let (epsilon, cap) = release_nanos(release)?;
        let mut partitions = release.partitions.clone();
        partitions.sort();
        partitions.dedup();
        let body = serde_json::to_string(&release.body)
            .map_err(|e| StoreError::Other(anyhow::anyhow!("serialising a release: {e}")))?;
        let stored = StoredRelease {
            id: release.id,
            scope: release.scope.clone(),
            period: release.period.clone(),
            version: 0,
            data_version: release.data_version.clone(),
            epsilon: release.epsilon,
            created_at: truncate_to_micros(release.created_at),
            body: release.body.clone(),
        };
        for _ in 0..RELEASE_ATTEMPTS {
            let attempt = self
                .try_put_release(&stored, &partitions, epsilon, cap, release.cap, &body)
                .await?;
            if let Some(outcome) = attempt {
                return Ok(outcome);
            }
        }
        Err(StoreError::Unavailable(format!(
            "releases of {} {} kept taking the next version number; try again",
            release.scope, release.period
        )))
    }

    async fn get_release(&self, id: Uuid) -> Result<Option<StoredRelease>, StoreError> {
        sqlx::query(&format!(
            "SELECT {} FROM releases WHERE id = $1::uuid",
            *SELECT_RELEASE_COLUMNS
        ))
        .bind(id.hyphenated().to_string())
        .fetch_optional(self.pool()?)
        .await
        .map_err(db_err)?
        .map(|r| release_from_row(&r))
        .transpose()
    }

    async fn get_latest_release(
        &self,
        scope: &str,
        period: &str,
    ) -> Result<Option<StoredRelease>, StoreError> {
        sqlx::query(&format!(
            "SELECT {} FROM releases WHERE scope = $1 AND period = $2 \
             ORDER BY version DESC LIMIT 1",
            *SELECT_RELEASE_COLUMNS
        ))
        .bind(scope)
        .bind(period)
        .fetch_optional(self.pool()?)
        .await
        .map_err(db_err)?
        .map(|r| release_from_row(&r))
        .transpose()
    }

    async fn get_latest_release_head(
        &self,
        scope: &str,
        period: &str,
    ) -> Result<(Option<(Uuid, String)>, String), StoreError> {
        // One statement: the newest head (if any) next to the change feed's newest number.
        let (id, version, newest): (Option<String>, Option<String>, i64) = sqlx::query_as(
            "SELECT h.id, h.data_version, \
             (SELECT coalesce(max(seq), 0) FROM trajectory_changes) \
             FROM (SELECT 1) AS one LEFT JOIN \
             (SELECT id::text AS id, data_version FROM releases \
              WHERE scope = $1 AND period = $2 ORDER BY version DESC LIMIT 1) AS h ON true",
        )
        .bind(scope)
        .bind(period)
        .fetch_one(self.pool()?)
        .await
        .map_err(db_err)?;
        let head = match (id, version) {
            (Some(id), Some(v)) => {
                let id = Uuid::parse_str(&id).map_err(|_| corrupt("releases.id"))?;
                Some((id, v))
            }
            _ => None,
        };
        Ok((head, data_version_of(newest)))
    }

    async fn list_releases(
        &self,
        scope: Option<&str>,
        period: Option<&str>,
    ) -> Result<Vec<StoredRelease>, StoreError> {
        // A small table: one statement with optional filters is good enough.
        sqlx::query(&format!(
            "SELECT {} FROM releases \
             WHERE ($1::text IS NULL OR scope = $1) AND ($2::text IS NULL OR period = $2) \
             ORDER BY created_at DESC, seq DESC",
            *SELECT_RELEASE_COLUMNS
        ))
        .bind(scope)
        .bind(period)
        .fetch_all(self.pool()?)
        .await
        .map_err(db_err)?
        .iter()
        .map(release_from_row)
        .collect()
    }

    async fn budget_spent(
        &self,
        partitions: &[String],
    ) -> Result<Vec<Option<Epsilon>>, StoreError> {
        let rows = sqlx::query(
            "SELECT partition, spent_nanos FROM budget WHERE partition = ANY($1::text[])",
        )
        .bind(partitions)
        .fetch_all(self.pool()?)
        .await
        .map_err(db_err)?;
        let mut spent = std::collections::HashMap::with_capacity(rows.len());
        for r in &rows {
            let partition: String = r.try_get("partition").map_err(db_err)?;
            spent.insert(
                partition,
                spent_epsilon(r.try_get("spent_nanos").map_err(db_err)?)?,
            );
        }
        Ok(partitions
            .iter()
            .map(|p| spent.get(p).copied().flatten())
            .collect())
    }

    async fn list_budget(&self) -> Result<Vec<(String, Epsilon)>, StoreError> {
        // Byte order, as SQLite sorts, whatever the database's collation.
        let rows = sqlx::query(
            "SELECT partition, spent_nanos FROM budget ORDER BY partition COLLATE \"C\"",
        )
        .fetch_all(self.pool()?)
        .await
        .map_err(db_err)?;
        let mut out = Vec::with_capacity(rows.len());
        for r in &rows {
            if let Some(spent) = spent_epsilon(r.try_get("spent_nanos").map_err(db_err)?)? {
                out.push((r.try_get("partition").map_err(db_err)?, spent));
            }
        }
        Ok(out)
    }

    async fn append_audit(&self, entry: &NewAuditEntry) -> Result<AuditEntry, StoreError> {
        let mut tx = self.pool()?.begin().await.map_err(db_err)?;
        let chained = append_audit_in(&mut tx, entry).await?;
        tx.commit().await.map_err(db_err)?;
        Ok(chained)
    }

    async fn put_round(&self, round: &NewRound) -> Result<PutRound, StoreError> {
        check_new_round(round)?;
        let bodies = round
            .releases
            .iter()
            .map(|r| {
                serde_json::to_string(&r.body).map_err(|e| {
                    StoreError::Other(anyhow::anyhow!(
                        "serialising the release of {}: {e}",
                        r.scope
                    ))
                })
            })
            .collect::<Result<Vec<String>, StoreError>>()?;
        let mut attempt = 1;
        loop {
            match self.try_put_round(round, &bodies).await {
                Err(e) if e.retryable() && attempt < ROUND_ATTEMPTS => {
                    tokio::time::sleep(round_retry_pause(attempt)).await;
                    attempt += 1;
                }
                done => return done.map_err(StoreError::from),
            }
        }
    }

    async fn list_rounds(&self, period: Option<&str>) -> Result<Vec<RoundRecord>, StoreError> {
        let mut conn = self.pool()?.acquire().await.map_err(db_err)?;
        Ok(load_rounds(&mut conn, RoundsOf::Period(period)).await?)
    }

    async fn get_round_release(&self, id: Uuid) -> Result<Option<StoredRoundRelease>, StoreError> {
        sqlx::query(&format!(
            "SELECT {} FROM round_releases rr JOIN rounds r ON r.id = rr.round_id \
             WHERE rr.id = $1::uuid",
            *SELECT_ROUND_RELEASE_COLUMNS
        ))
        .bind(id.hyphenated().to_string())
        .fetch_optional(self.pool()?)
        .await
        .map_err(db_err)?
        .map(|r| round_release_from_row(&r))
        .transpose()
    }

    async fn get_latest_round_release(
        &self,
        scope: &str,
        period: &str,
    ) -> Result<Option<StoredRoundRelease>, StoreError> {
        // The newest version of the period by the unique index on (period, version), then its
        // release of the scope by the one on (round_id, scope).
        sqlx::query(&format!(
            "SELECT {} FROM round_releases rr JOIN rounds r ON r.id = rr.round_id \
             WHERE rr.round_id = \
               (SELECT id FROM rounds WHERE period = $2 ORDER BY version DESC LIMIT 1) \
             AND rr.scope = $1",
            *SELECT_ROUND_RELEASE_COLUMNS
        ))
        .bind(scope)
        .bind(period)
        .fetch_optional(self.pool()?)
        .await
        .map_err(db_err)?
        .map(|r| round_release_from_row(&r))
        .transpose()
    }

    async fn get_latest_round_release_id(
        &self,
        scope: &str,
        period: &str,
    ) -> Result<Option<Uuid>, StoreError> {
        let id: Option<String> = sqlx::query_scalar(
            "SELECT rr.id::text FROM round_releases rr \
             WHERE rr.round_id = \
               (SELECT id FROM rounds WHERE period = $2 ORDER BY version DESC LIMIT 1) \
             AND rr.scope = $1",
        )
        .bind(scope)
        .bind(period)
        .fetch_optional(self.pool()?)
        .await
        .map_err(db_err)?;
        id.map(|id| Uuid::parse_str(&id).map_err(|_| corrupt("round_releases.id")))
            .transpose()
    }

    async fn privacy_spent(&self, years: &[u16]) -> Result<Vec<i64>, StoreError> {
        let asked: Vec<i32> = years.iter().map(|&y| i32::from(y)).collect();
        let rows = sqlx::query(
            "SELECT data_year, spent_nanos FROM privacy_budget WHERE data_year = ANY($1::int4[])",
        )
        .bind(&asked)
        .fetch_all(self.pool()?)
        .await
        .map_err(db_err)?;
        let mut spent = std::collections::HashMap::with_capacity(rows.len());
        for r in &rows {
            let year: i32 = r.try_get("data_year").map_err(db_err)?;
            let nanos: i64 = r.try_get("spent_nanos").map_err(db_err)?;
            spent.insert(data_year(year, "privacy_budget.data_year")?, nanos);
        }
        Ok(years
            .iter()
            .map(|y| spent.get(y).copied().unwrap_or(0))
            .collect())
    }

    async fn list_privacy_charges(&self) -> Result<Vec<PrivacyCharge>, StoreError> {
        sqlx::query(&format!(
            "SELECT data_year, rho_nanos, subject_kind, subject_id, {} FROM privacy_charges \
             ORDER BY data_year, privacy_charges.at, id",
            ts_column("at")
        ))
        .fetch_all(self.pool()?)
        .await
        .map_err(db_err)?
        .iter()
        .map(|r| {
            Ok(PrivacyCharge {
                data_year: data_year(
                    r.try_get("data_year").map_err(db_err)?,
                    "privacy_charges.data_year",
                )?,
                rho_nanos: r.try_get("rho_nanos").map_err(db_err)?,
                subject_kind: r.try_get("subject_kind").map_err(db_err)?,
                subject_id: r.try_get("subject_id").map_err(db_err)?,
                at: parse_ts(r.try_get("at").map_err(db_err)?)?,
            })
        })
        .collect()
    }

    async fn list_audit(
        &self,
        after: i64,
        limit: u32,
        provider: Option<AgbCode>,
    ) -> Result<Vec<AuditEntry>, StoreError> {
        // Two statements rather than `$1 IS NULL OR ...`, which would keep a generic plan off the index.
        let rows = match provider {
            Some(p) => sqlx::query(&format!(
                "SELECT {} FROM audit_log WHERE provider = $1 AND seq > $2 ORDER BY seq LIMIT $3",
                *SELECT_AUDIT_COLUMNS
            ))
            .bind(p.as_str())
            .bind(after)
            .bind(i64::from(limit))
            .fetch_all(self.pool()?)
            .await
            .map_err(db_err)?,
            None => sqlx::query(&format!(
                "SELECT {} FROM audit_log WHERE seq > $1 ORDER BY seq LIMIT $2",
                *SELECT_AUDIT_COLUMNS
            ))
            .bind(after)
            .bind(i64::from(limit))
            .fetch_all(self.pool()?)
            .await
            .map_err(db_err)?,
        };
        rows.iter().map(audit_from_row).collect()
    }

    async fn withdraw_batch_recorded(
        &self,
        provider: AgbCode,
        batch_id: Uuid,
        record: Option<&RecordFn<Withdrawn>>,
    ) -> Result<(Withdrawn, Option<i64>), StoreError> {
        let batch_id = batch_id.hyphenated().to_string();
        let mut tx = self.pool()?.begin().await.map_err(db_err)?;
        enter_change_feed(&mut tx).await?;
        lock_provider_writes(&mut tx, provider, true).await?;
        // The receipt first: a concurrent withdrawal of the same batch waits here, then finds none.
        let batches =
            sqlx::query("DELETE FROM batches WHERE provider = $1 AND batch_id = $2::uuid")
                .bind(provider.as_str())
                .bind(&batch_id)
                .execute(&mut *tx)
                .await
                .map_err(db_err)?
                .rows_affected();
        if batches == 0 {
            tx.rollback().await.map_err(db_err)?;
            return Err(StoreError::NotFound);
        }
        // Only the rows this batch is the newest carrier of go: a later batch that carried a row
        // (changed or not) keeps it (uploads of this provider wait for the withdrawal, or it for
        // them). Each row deleted is a removal in the change feed.
        let trajectories = sqlx::query(
            "WITH gone AS (DELETE FROM trajectories WHERE provider = $1 AND carrier = $2::uuid \
             RETURNING provider, trajectory) \
             INSERT INTO trajectory_changes (provider, trajectory) \
             SELECT provider, trajectory FROM gone",
        )
        .bind(provider.as_str())
        .bind(&batch_id)
        .execute(&mut *tx)
        .await
        .map_err(db_err)?
        .rows_affected();
        move_rows_and_forget(&mut tx, provider, &batch_id).await?;
        let withdrawn = Withdrawn {
            trajectories,
            batches,
        };
        record_withdrawal(&mut tx, provider, withdrawn).await?;
        let seq = append_recorded(&mut tx, record, &withdrawn).await?;
        tx.commit().await.map_err(db_err)?;
        Ok((withdrawn, seq))
    }

    async fn withdraw_trajectory_recorded(
        &self,
        provider: AgbCode,
        trajectory: &Pseudonym,
        record: Option<&RecordFn<Withdrawn>>,
    ) -> Result<(Withdrawn, Option<i64>), StoreError> {
        let mut tx = self.pool()?.begin().await.map_err(db_err)?;
        enter_change_feed(&mut tx).await?;
        lock_provider_writes(&mut tx, provider, true).await?;
        let gone: Option<(String, String)> = sqlx::query_as(
            "WITH gone AS (DELETE FROM trajectories WHERE provider = $1 AND trajectory = $2 \
             RETURNING provider, trajectory, batch_id, carrier), \
             logged AS (INSERT INTO trajectory_changes (provider, trajectory) \
             SELECT provider, trajectory FROM gone) \
             SELECT batch_id::text, carrier::text FROM gone",
        )
        .bind(provider.as_str())
        .bind(&trajectory.as_bytes()[..])
        .fetch_optional(&mut *tx)
        .await
        .map_err(db_err)?;
        let Some((batch_id, carrier)) = gone else {
            tx.rollback().await.map_err(db_err)?;
            return Err(StoreError::NotFound);
        };
        // A batch left without rows (none it wrote, none it carries) is withdrawn with it.
        let ids = if batch_id == carrier {
            vec![batch_id]
        } else {
            vec![batch_id, carrier]
        };
        let mut batches = 0;
        for id in ids {
            let deleted = sqlx::query(
                "DELETE FROM batches WHERE provider = $1 AND batch_id = $2::uuid \
                 AND NOT EXISTS (SELECT 1 FROM trajectories \
                                 WHERE provider = $1 AND batch_id = $2::uuid) \
                 AND NOT EXISTS (SELECT 1 FROM trajectories \
                                 WHERE provider = $1 AND carrier = $2::uuid)",
            )
            .bind(provider.as_str())
            .bind(&id)
            .execute(&mut *tx)
            .await
            .map_err(db_err)?
            .rows_affected();
            if deleted > 0 {
                batches += deleted;
                move_rows_and_forget(&mut tx, provider, &id).await?;
            }
        }
        let withdrawn = Withdrawn {
            trajectories: 1,
            batches,
        };
        record_withdrawal(&mut tx, provider, withdrawn).await?;
        let seq = append_recorded(&mut tx, record, &withdrawn).await?;
        tx.commit().await.map_err(db_err)?;
        Ok((withdrawn, seq))
    }

    async fn get_regional_key_check(&self) -> Result<Option<RegionalKeyCheck>, StoreError> {
        sqlx::query(&format!(
            "SELECT check_value, {} FROM regional_key_check WHERE singleton = 1",
            ts_column("registered_at")
        ))
        .fetch_optional(self.pool()?)
        .await
        .map_err(db_err)?
        .map(|r| {
            let v: Vec<u8> = r.try_get("check_value").map_err(db_err)?;
            Ok(RegionalKeyCheck {
                check_value: v.try_into().map_err(|_| corrupt("regional_key_check"))?,
                registered_at: parse_ts(&r.try_get::<String, _>("registered_at").map_err(db_err)?)?,
            })
        })
        .transpose()
    }

    async fn put_regional_key_check_recorded(
        &self,
        check: &RegionalKeyCheck,
        replace: bool,
        audit: Option<&NewAuditEntry>,
    ) -> Result<(), StoreError> {
        let mut tx = self.pool()?.begin().await.map_err(db_err)?;
        // Two operators at once: the second waits on the row lock of the first.
        sqlx::query("LOCK TABLE regional_key_check IN EXCLUSIVE MODE")
            .execute(&mut *tx)
            .await
            .map_err(db_err)?;
        let old: Option<Vec<u8>> =
            sqlx::query_scalar("SELECT check_value FROM regional_key_check WHERE singleton = 1")
                .fetch_optional(&mut *tx)
                .await
                .map_err(db_err)?;
        if old.is_some_and(|o| o != check.check_value) && !replace {
            return Err(StoreError::Conflict(
                "another check value of the region's key is registered".into(),
            ));
        }
        sqlx::query(
            "INSERT INTO regional_key_check (singleton, check_value, registered_at) VALUES (1, $1, $2::timestamptz) \
             ON CONFLICT (singleton) DO UPDATE SET check_value = excluded.check_value, \
             registered_at = excluded.registered_at",
        )
        .bind(&check.check_value[..])
        .bind(format_ts(check.registered_at)?)
        .execute(&mut *tx)
        .await
        .map_err(db_err)?;
        append_entry(&mut tx, audit).await?;
        tx.commit().await.map_err(db_err)?;
        Ok(())
    }

    async fn get_key_check(&self) -> Result<Option<KeyCheck>, StoreError> {
        sqlx::query(&format!(
            "SELECT master_check, pseudonym_check, {} FROM key_check WHERE singleton = 1",
            ts_column("created_at")
        ))
        .fetch_optional(self.pool()?)
        .await
        .map_err(db_err)?
        .map(|r| {
            let check = |col: &str| -> Result<[u8; 32], StoreError> {
                let v: Vec<u8> = r.try_get(col).map_err(db_err)?;
                v.try_into().map_err(|_| corrupt("key_check"))
            };
            Ok(KeyCheck {
                master_check: check("master_check")?,
                pseudonym_check: check("pseudonym_check")?,
                created_at: parse_ts(&r.try_get::<String, _>("created_at").map_err(db_err)?)?,
            })
        })
        .transpose()
    }

    async fn put_key_set(
        &self,
        check: &KeyCheck,
        keys: &[StoredServiceKey],
    ) -> Result<bool, StoreError> {
        let mut tx = self.pool()?.begin().await.map_err(db_err)?;
        // Two instances initialising at once: the second waits on the row lock of the first's
        // insert, then finds it and writes nothing.
        let done = sqlx::query(
            "INSERT INTO key_check (singleton, master_check, pseudonym_check, created_at) \
             VALUES (1, $1, $2, $3::timestamptz) ON CONFLICT (singleton) DO NOTHING",
        )
        .bind(&check.master_check[..])
        .bind(&check.pseudonym_check[..])
        .bind(format_ts(check.created_at)?)
        .execute(&mut *tx)
        .await
        .map_err(db_err)?;
        if done.rows_affected() == 0 {
            return Ok(false);
        }
        for k in keys {
            insert_service_key(&mut tx, k).await?;
        }
        tx.commit().await.map_err(db_err)?;
        Ok(true)
    }

    async fn list_service_keys(&self) -> Result<Vec<StoredServiceKey>, StoreError> {
        sqlx::query(&format!(
            "SELECT id, kind, sealed, public_key, {}, {}, {} FROM service_keys \
             ORDER BY service_keys.activates_at, service_keys.created_at, id",
            ts_column("created_at"),
            ts_column("activates_at"),
            ts_column("retires_at")
        ))
        .fetch_all(self.pool()?)
        .await
        .map_err(db_err)?
        .iter()
        .map(|r| {
            let retires_at: Option<String> = r.try_get("retires_at").map_err(db_err)?;
            Ok(StoredServiceKey {
                id: r.try_get("id").map_err(db_err)?,
                kind: ServiceKeyKind::parse(&r.try_get::<String, _>("kind").map_err(db_err)?)?,
                sealed: r.try_get("sealed").map_err(db_err)?,
                public_key: r.try_get("public_key").map_err(db_err)?,
                created_at: parse_ts(&r.try_get::<String, _>("created_at").map_err(db_err)?)?,
                activates_at: parse_ts(&r.try_get::<String, _>("activates_at").map_err(db_err)?)?,
                retires_at: retires_at.as_deref().map(parse_ts).transpose()?,
            })
        })
        .collect()
    }

    async fn put_rotated_key_recorded(
        &self,
        key: &StoredServiceKey,
        retire_at: OffsetDateTime,
        audit: Option<&NewAuditEntry>,
    ) -> Result<(), StoreError> {
        if key.kind != ServiceKeyKind::Hpke {
            return Err(StoreError::Other(anyhow::anyhow!(
                "only HPKE keys are rotated"
            )));
        }
        let mut tx = self.pool()?.begin().await.map_err(db_err)?;
        sqlx::query(
            "UPDATE service_keys SET retires_at = $1::timestamptz \
             WHERE kind = 'hpke' AND retires_at IS NULL",
        )
        .bind(format_ts(retire_at)?)
        .execute(&mut *tx)
        .await
        .map_err(db_err)?;
        insert_service_key(&mut tx, key).await?;
        append_entry(&mut tx, audit).await?;
        tx.commit().await.map_err(db_err)?;
        Ok(())
    }

    async fn delete_retired_keys(&self, before: OffsetDateTime) -> Result<u64, StoreError> {
        let done = sqlx::query(
            "DELETE FROM service_keys WHERE kind = 'hpke' AND retires_at IS NOT NULL \
             AND retires_at < $1::timestamptz",
        )
        .bind(format_ts(before)?)
        .execute(self.pool()?)
        .await
        .map_err(db_err)?;
        Ok(done.rows_affected())
    }

    async fn put_project_recorded(
        &self,
        project: &NewProject,
        record: &RecordFn<Project>,
    ) -> Result<Project, StoreError> {
        let mut tx = self.pool()?.begin().await.map_err(db_err)?;
        // Registrations take turns (readers are not blocked); projects are never deleted, so the
        // next number is free.
        sqlx::query("LOCK TABLE research_projects IN SHARE ROW EXCLUSIVE MODE")
            .execute(&mut *tx)
            .await
            .map_err(db_err)?;
        let n: i64 = sqlx::query_scalar("SELECT count(*) FROM research_projects")
            .fetch_one(&mut *tx)
            .await
            .map_err(db_err)?;
        let stored = Project {
            id: format!("p{}", n + 1),
            name: project.name.clone(),
            purpose: project.purpose.clone(),
            rho_nanos: project.rho_nanos,
            spent_nanos: 0,
            expires_on: project.expires_on,
            created_at: truncate_to_micros(project.created_at),
            closed_at: None,
        };
        sqlx::query(
            "INSERT INTO research_projects (id, name, purpose, rho_nanos, expires_on, created_at) \
             VALUES ($1, $2, $3, $4, $5::date, $6::timestamptz)",
        )
        .bind(&stored.id)
        .bind(&stored.name)
        .bind(&stored.purpose)
        .bind(stored.rho_nanos)
        .bind(format_date(stored.expires_on))
        .bind(format_ts(stored.created_at)?)
        .execute(&mut *tx)
        .await
        .map_err(db_err)?;
        append_recorded(&mut tx, Some(record), &stored).await?;
        tx.commit().await.map_err(db_err)?;
        Ok(stored)
    }

    async fn list_projects(&self) -> Result<Vec<Project>, StoreError> {
        sqlx::query(&format!(
            "SELECT id, name, purpose, rho_nanos, spent_nanos, \
             to_char(expires_on, 'YYYY-MM-DD') AS expires_on, {}, {} \
             FROM research_projects ORDER BY created_at, id",
            ts_column("created_at"),
            ts_column("closed_at")
        ))
        .fetch_all(self.pool()?)
        .await
        .map_err(db_err)?
        .iter()
        .map(|r| {
            Ok(Project {
                id: r.try_get("id").map_err(db_err)?,
                name: r.try_get("name").map_err(db_err)?,
                purpose: r.try_get("purpose").map_err(db_err)?,
                rho_nanos: r.try_get("rho_nanos").map_err(db_err)?,
                spent_nanos: r.try_get("spent_nanos").map_err(db_err)?,
                expires_on: parse_date(&r.try_get::<String, _>("expires_on").map_err(db_err)?)?,
                created_at: parse_ts(&r.try_get::<String, _>("created_at").map_err(db_err)?)?,
                closed_at: r
                    .try_get::<Option<String>, _>("closed_at")
                    .map_err(db_err)?
                    .as_deref()
                    .map(parse_ts)
                    .transpose()?,
            })
        })
        .collect()
    }

    async fn close_project_recorded(
        &self,
        id: &str,
        at: OffsetDateTime,
        audit: &NewAuditEntry,
    ) -> Result<(), StoreError> {
        let mut tx = self.pool()?.begin().await.map_err(db_err)?;
        let closed: Option<Option<String>> = sqlx::query_scalar(
            "SELECT closed_at::text FROM research_projects WHERE id = $1 FOR UPDATE",
        )
        .bind(id)
        .fetch_optional(&mut *tx)
        .await
        .map_err(db_err)?;
        match closed {
            None => return Err(StoreError::NotFound),
            Some(Some(_)) => return Ok(()),
            Some(None) => {}
        }
        sqlx::query("UPDATE research_projects SET closed_at = $2::timestamptz WHERE id = $1")
            .bind(id)
            .bind(format_ts(at)?)
            .execute(&mut *tx)
            .await
            .map_err(db_err)?;
        append_entry(&mut tx, Some(audit)).await?;
        tx.commit().await.map_err(db_err)?;
        Ok(())
    }

    async fn put_research_answer(&self, a: &NewResearchAnswer) -> Result<PutResearch, StoreError> {
        super::research::check_new_answer(a)?;
        let answer = serde_json::to_string(&a.answer)
            .map_err(|e| StoreError::Other(anyhow::anyhow!("serialising an answer: {e}")))?;
        let at = format_ts(a.at)?;
        let mut tx = self.pool()?.begin().await.map_err(db_err)?;
        // The project's row first: answers to one project take turns on every replica, each
        // reading the committed spend; then the years in ascending order (as rounds do).
        let Some(row) = sqlx::query(
            "SELECT rho_nanos, spent_nanos, to_char(expires_on, 'YYYY-MM-DD') AS expires_on, \
             closed_at::text AS closed_at FROM research_projects WHERE id = $1 FOR UPDATE",
        )
        .bind(&a.project)
        .fetch_optional(&mut *tx)
        .await
        .map_err(db_err)?
        else {
            return Ok(PutResearch::NoProject);
        };
        let rho: i64 = row.try_get("rho_nanos").map_err(db_err)?;
        let spent: i64 = row.try_get("spent_nanos").map_err(db_err)?;
        let expires = parse_date(&row.try_get::<String, _>("expires_on").map_err(db_err)?)?;
        if row
            .try_get::<Option<String>, _>("closed_at")
            .map_err(db_err)?
            .is_some()
        {
            return Ok(PutResearch::Closed);
        }
        if a.at.date() > expires {
            return Ok(PutResearch::Expired { on: expires });
        }
        if spent > rho - a.rho_nanos {
            return Ok(PutResearch::ProjectExhausted {
                spent_nanos: spent,
                rho_nanos: rho,
            });
        }
        let id = a.id.hyphenated().to_string();
        if a.rho_nanos > 0 {
            for &year in &a.years {
                sqlx::query(
                    "INSERT INTO research_budget (data_year, spent_nanos) VALUES ($1, 0) \
                     ON CONFLICT (data_year) DO NOTHING",
                )
                .bind(i32::from(year))
                .execute(&mut *tx)
                .await
                .map_err(db_err)?;
                let charged: Option<i64> = sqlx::query_scalar(
                    "UPDATE research_budget SET spent_nanos = spent_nanos + $2 \
                     WHERE data_year = $1 AND spent_nanos <= $3 RETURNING spent_nanos",
                )
                .bind(i32::from(year))
                .bind(a.rho_nanos)
                .bind(a.reserve_nanos - a.rho_nanos)
                .fetch_optional(&mut *tx)
                .await
                .map_err(db_err)?;
                if charged.is_none() {
                    let spent: i64 = sqlx::query_scalar(
                        "SELECT spent_nanos FROM research_budget WHERE data_year = $1",
                    )
                    .bind(i32::from(year))
                    .fetch_one(&mut *tx)
                    .await
                    .map_err(db_err)?;
                    tx.rollback().await.map_err(db_err)?;
                    return Ok(PutResearch::YearExhausted {
                        year,
                        spent_nanos: spent,
                        reserve_nanos: a.reserve_nanos,
                    });
                }
                // The charge in the accountant's ledger (its year needs a row of its own there).
                sqlx::query(
                    "INSERT INTO privacy_budget (data_year, spent_nanos) VALUES ($1, 0) \
                     ON CONFLICT (data_year) DO NOTHING",
                )
                .bind(i32::from(year))
                .execute(&mut *tx)
                .await
                .map_err(db_err)?;
                sqlx::query(
                    "INSERT INTO privacy_charges (data_year, rho_nanos, subject_kind, subject_id, at) \
                     VALUES ($1, $2, 'query', $3, $4::timestamptz)",
                )
                .bind(i32::from(year))
                .bind(a.rho_nanos)
                .bind(&id)
                .bind(&at)
                .execute(&mut *tx)
                .await
                .map_err(db_err)?;
            }
            sqlx::query(
                "UPDATE research_projects SET spent_nanos = spent_nanos + $2 WHERE id = $1",
            )
            .bind(&a.project)
            .bind(a.rho_nanos)
            .execute(&mut *tx)
            .await
            .map_err(db_err)?;
        }
        let entry = append_audit_in(&mut tx, &a.audit)
            .await
            .map_err(|e| StoreError::AuditUnwritten(Box::new(e.into())))?;
        sqlx::query(
            "INSERT INTO research_log (id, project_id, kind, statement, actor, rho_nanos, at, \
             audit_seq, answer) VALUES ($1::uuid, $2, $3, $4, $5, $6, $7::timestamptz, $8, $9::json)",
        )
        .bind(&id)
        .bind(&a.project)
        .bind(a.kind.as_str())
        .bind(&a.statement)
        .bind(&a.actor)
        .bind(a.rho_nanos)
        .bind(&at)
        .bind(entry.seq)
        .bind(&answer)
        .execute(&mut *tx)
        .await
        .map_err(db_err)?;
        tx.commit().await.map_err(db_err)?;
        Ok(PutResearch::Charged {
            audit_seq: entry.seq,
            left_nanos: rho - spent - a.rho_nanos,
        })
    }

    async fn list_research_log(&self, project: &str) -> Result<Vec<ResearchLogEntry>, StoreError> {
        sqlx::query(&format!(
            "SELECT id::text AS id, kind, statement, actor, rho_nanos, {}, audit_seq \
             FROM research_log WHERE project_id = $1 ORDER BY audit_seq",
            ts_column("at")
        ))
        .bind(project)
        .fetch_all(self.pool()?)
        .await
        .map_err(db_err)?
        .iter()
        .map(|r| {
            Ok(ResearchLogEntry {
                id: r
                    .try_get::<String, _>("id")
                    .map_err(db_err)?
                    .parse()
                    .map_err(|_| corrupt("research_log.id"))?,
                kind: ResearchKind::parse(&r.try_get::<String, _>("kind").map_err(db_err)?)
                    .ok_or_else(|| corrupt("research_log.kind"))?,
                statement: r.try_get("statement").map_err(db_err)?,
                actor: r.try_get("actor").map_err(db_err)?,
                rho_nanos: r.try_get("rho_nanos").map_err(db_err)?,
                at: parse_ts(&r.try_get::<String, _>("at").map_err(db_err)?)?,
                audit_seq: r.try_get("audit_seq").map_err(db_err)?,
            })
        })
        .collect()
    }

    async fn list_research_spend(&self) -> Result<Vec<(u16, i64)>, StoreError> {
        sqlx::query("SELECT data_year, spent_nanos FROM research_budget ORDER BY data_year")
            .fetch_all(self.pool()?)
            .await
            .map_err(db_err)?
            .iter()
            .map(|r| {
                let year: i32 = r.try_get("data_year").map_err(db_err)?;
                Ok((
                    u16::try_from(year).map_err(|_| corrupt("research_budget.data_year"))?,
                    r.try_get("spent_nanos").map_err(db_err)?,
                ))
            })
            .collect()
    }

    async fn put_extract_request_recorded(
        &self,
        x: &ExtractRecord,
        audit: &NewAuditEntry,
    ) -> Result<(), StoreError> {
        let request = serde_json::to_string(&x.request)
            .map_err(|e| StoreError::Other(anyhow::anyhow!("serialising a request: {e}")))?;
        let mut tx = self.pool()?.begin().await.map_err(db_err)?;
        sqlx::query(
            "INSERT INTO research_extracts (id, project_id, request, requested_by, requested_at, \
             state) VALUES ($1::uuid, $2, $3::json, $4, $5::timestamptz, 'requested')",
        )
        .bind(x.id.hyphenated().to_string())
        .bind(&x.project)
        .bind(&request)
        .bind(&x.requested_by)
        .bind(format_ts(x.requested_at)?)
        .execute(&mut *tx)
        .await
        .map_err(db_err)?;
        append_entry(&mut tx, Some(audit)).await?;
        tx.commit().await.map_err(db_err)?;
        Ok(())
    }

    async fn list_extracts(&self, project: Option<&str>) -> Result<Vec<ExtractRecord>, StoreError> {
        sqlx::query(&format!(
            "SELECT id::text AS id, project_id, request::text AS request, requested_by, {}, \
             approved_by, {}, report::text AS report FROM research_extracts \
             WHERE $1::text IS NULL OR project_id = $1 ORDER BY requested_at, id",
            ts_column("requested_at"),
            ts_column("approved_at")
        ))
        .bind(project)
        .fetch_all(self.pool()?)
        .await
        .map_err(db_err)?
        .iter()
        .map(|r| {
            let json = |col: &str| -> Result<Option<serde_json::Value>, StoreError> {
                r.try_get::<Option<String>, _>(col)
                    .map_err(db_err)?
                    .map(|t| serde_json::from_str(&t).map_err(|_| corrupt(col)))
                    .transpose()
            };
            let produced = match (
                r.try_get::<Option<String>, _>("approved_by")
                    .map_err(db_err)?,
                r.try_get::<Option<String>, _>("approved_at")
                    .map_err(db_err)?,
                json("report")?,
            ) {
                (Some(by), Some(at), Some(report)) => Some((by, parse_ts(&at)?, report)),
                _ => None,
            };
            Ok(ExtractRecord {
                id: r
                    .try_get::<String, _>("id")
                    .map_err(db_err)?
                    .parse()
                    .map_err(|_| corrupt("research_extracts.id"))?,
                project: r.try_get("project_id").map_err(db_err)?,
                request: json("request")?.ok_or_else(|| corrupt("research_extracts.request"))?,
                requested_by: r.try_get("requested_by").map_err(db_err)?,
                requested_at: parse_ts(&r.try_get::<String, _>("requested_at").map_err(db_err)?)?,
                produced,
            })
        })
        .collect()
    }

    async fn put_extract_produced_recorded(
        &self,
        id: Uuid,
        approved_by: &str,
        at: OffsetDateTime,
        report: &serde_json::Value,
        csv: &[u8],
        audit: &NewAuditEntry,
    ) -> Result<(), StoreError> {
        let report = serde_json::to_string(report)
            .map_err(|e| StoreError::Other(anyhow::anyhow!("serialising a report: {e}")))?;
        let mut tx = self.pool()?.begin().await.map_err(db_err)?;
        let state: Option<String> = sqlx::query_scalar(
            "SELECT state FROM research_extracts WHERE id = $1::uuid FOR UPDATE",
        )
        .bind(id.hyphenated().to_string())
        .fetch_optional(&mut *tx)
        .await
        .map_err(db_err)?;
        match state.as_deref() {
            None => return Err(StoreError::NotFound),
            Some("requested") => {}
            Some(_) => {
                return Err(StoreError::Conflict(format!(
                    "extract {id} was produced before"
                )))
            }
        }
        sqlx::query(
            "UPDATE research_extracts SET state = 'produced', approved_by = $2, \
             approved_at = $3::timestamptz, report = $4::json, csv = $5 WHERE id = $1::uuid",
        )
        .bind(id.hyphenated().to_string())
        .bind(approved_by)
        .bind(format_ts(at)?)
        .bind(&report)
        .bind(csv)
        .execute(&mut *tx)
        .await
        .map_err(db_err)?;
        append_entry(&mut tx, Some(audit)).await?;
        tx.commit().await.map_err(db_err)?;
        Ok(())
    }

    async fn get_extract_csv(&self, id: Uuid) -> Result<Option<Vec<u8>>, StoreError> {
        Ok(sqlx::query_scalar::<_, Option<Vec<u8>>>(
            "SELECT csv FROM research_extracts WHERE id = $1::uuid",
        )
        .bind(id.hyphenated().to_string())
        .fetch_optional(self.pool()?)
        .await
        .map_err(db_err)?
        .flatten())
    }

    async fn revoke_token_recorded(
        &self,
        id: i64,
        at: OffsetDateTime,
        audit: Option<&NewAuditEntry>,
    ) -> Result<(), StoreError> {
        let mut tx = self.pool()?.begin().await.map_err(db_err)?;
        let done = sqlx::query(
            "UPDATE tokens SET revoked_at = coalesce(revoked_at, $2::timestamptz) WHERE id = $1",
        )
        .bind(id)
        .bind(format_ts(at)?)
        .execute(&mut *tx)
        .await
        .map_err(db_err)?;
        if done.rows_affected() == 0 {
            return Err(StoreError::NotFound);
        }
        append_entry(&mut tx, audit).await?;
        tx.commit().await.map_err(db_err)?;
        Ok(())
    }

    async fn list_tokens(&self) -> Result<Vec<TokenRecord>, StoreError> {
        sqlx::query(&format!(
            "SELECT id, role, scope, label, {}, {} FROM tokens ORDER BY created_at, id",
            ts_column("created_at"),
            ts_column("revoked_at")
        ))
        .fetch_all(self.pool()?)
        .await
        .map_err(db_err)?
        .iter()
        .map(token_from_row)
        .collect()
    }
    async fn put_session(&self, session: &NewSession) -> Result<(), StoreError> {
        let done = sqlx::query(
            "INSERT INTO dashboard_sessions (session_hash, token_id, created_at, expires_at) \
             VALUES ($1, $2, $3::timestamptz, $4::timestamptz) ON CONFLICT (session_hash) DO NOTHING",
        )
        .bind(&session.session_hash[..])
        .bind(session.token_id)
        .bind(format_ts(session.created_at)?)
        .bind(format_ts(session.expires_at)?)
        .execute(self.pool()?)
        .await
        .map_err(db_err)?;
        if done.rows_affected() == 0 {
            return Err(StoreError::Conflict("this session id is taken".into()));
        }
        Ok(())
    }

    async fn get_session(
        &self,
        session_hash: &[u8; 32],
        now: OffsetDateTime,
    ) -> Result<Option<TokenRecord>, StoreError> {
        let row = sqlx::query(&format!(
            "SELECT t.id AS id, t.role AS role, t.scope AS scope, t.label AS label, \
             to_char(t.created_at AT TIME ZONE 'UTC', {f}) AS created_at, \
             to_char(t.revoked_at AT TIME ZONE 'UTC', {f}) AS revoked_at, \
             to_char(s.expires_at AT TIME ZONE 'UTC', {f}) AS expires_at \
             FROM dashboard_sessions s JOIN tokens t ON t.id = s.token_id \
             WHERE s.session_hash = $1",
            f = TS_SQL_FORMAT
        ))
        .bind(&session_hash[..])
        .fetch_optional(self.pool()?)
        .await
        .map_err(db_err)?;
        let Some(row) = row else { return Ok(None) };
        let expires_at = parse_ts(&row.try_get::<String, _>("expires_at").map_err(db_err)?)?;
        let token = token_from_row(&row)?;
        Ok((expires_at > now && token.revoked_at.is_none()).then_some(token))
    }

    async fn delete_session(&self, session_hash: &[u8; 32]) -> Result<(), StoreError> {
        sqlx::query("DELETE FROM dashboard_sessions WHERE session_hash = $1")
            .bind(&session_hash[..])
            .execute(self.pool()?)
            .await
            .map_err(db_err)?;
        Ok(())
    }

    async fn delete_expired_sessions(&self, now: OffsetDateTime) -> Result<u64, StoreError> {
        let done =
            sqlx::query("DELETE FROM dashboard_sessions WHERE expires_at <= $1::timestamptz")
                .bind(format_ts(now)?)
                .execute(self.pool()?)
                .await
                .map_err(db_err)?;
        Ok(done.rows_affected())
    }
}

/// Encodes the records as PostgreSQL binary COPY data for the staging table: per row the field count,
/// then each field as a big-endian length (-1 for NULL) and its value in the type's binary form.
fn encode_copy_binary(records: &[WireRecord]) -> Vec<u8> {
    fn bytes(buf: &mut Vec<u8>, b: &[u8]) {
        // Every value here is far below 2 GiB.
        buf.extend_from_slice(&(b.len() as i32).to_be_bytes());
        buf.extend_from_slice(b);
    }
    fn int2(buf: &mut Vec<u8>, v: Option<u8>) {
        match v {
            Some(v) => {
                buf.extend_from_slice(&2i32.to_be_bytes());
                buf.extend_from_slice(&i16::from(v).to_be_bytes());
            }
            None => buf.extend_from_slice(&(-1i32).to_be_bytes()),
        }
    }
    fn int4(buf: &mut Vec<u8>, v: Option<u32>) {
        match v {
            Some(v) => {
                buf.extend_from_slice(&4i32.to_be_bytes());
                // Months are yyyymm below 300000: they fit.
                buf.extend_from_slice(&(v as i32).to_be_bytes());
            }
            None => buf.extend_from_slice(&(-1i32).to_be_bytes()),
        }
    }
    fn text(buf: &mut Vec<u8>, v: Option<&str>) {
        match v {
            Some(s) => bytes(buf, s.as_bytes()),
            None => buf.extend_from_slice(&(-1i32).to_be_bytes()),
        }
    }

    let mut buf = Vec::with_capacity(19 + records.len() * 220 + 2);
    buf.extend_from_slice(b"PGCOPY\n\xff\r\n\0");
    buf.extend_from_slice(&0i32.to_be_bytes()); // flags
    buf.extend_from_slice(&0i32.to_be_bytes()); // header extension length
    let mut municipality = String::with_capacity(6);
    for r in records {
        buf.extend_from_slice(&(RECORD_COLUMNS.len() as i16).to_be_bytes());
        bytes(&mut buf, r.trajectory.as_bytes());
        bytes(&mut buf, r.client.as_bytes());
        municipality.clear();
        use std::fmt::Write as _;
        // Writing into a String cannot fail.
        let _ = write!(municipality, "{}", r.municipality);
        text(&mut buf, Some(&municipality));
        text(&mut buf, Some(r.target_group.as_str()));
        int2(&mut buf, r.intensity.map(Intensity::get));
        int2(&mut buf, r.product_category.map(ProductCategory::get));
        int4(&mut buf, Some(r.start_month.as_yyyymm()));
        int4(&mut buf, r.end_month.map(Month::as_yyyymm));
        text(&mut buf, Some(r.age_band.as_str()));
        int2(&mut buf, r.end_reason.map(EndReason::code));
        int2(&mut buf, r.satisfaction.map(Satisfaction::get));
        text(&mut buf, r.respondent.map(|v| v.as_str()));
        text(&mut buf, r.carry_on_without_help.map(|v| v.as_str()));
        int2(&mut buf, r.problem_t_pre.map(TScore::get));
        int2(&mut buf, r.problem_t_post.map(TScore::get));
        text(&mut buf, r.instrument.as_ref().map(|c| c.as_str()));
        int2(&mut buf, r.goals_agreed.map(GoalCount::get));
        int2(&mut buf, r.goals_achieved.map(GoalCount::get));
    }
    buf.extend_from_slice(&(-1i16).to_be_bytes());
    buf
}

/// Maps a driver error: lost connections, pool timeouts, shutdowns, deadlocks and serialisation
/// failures are `Unavailable` (retrying may help). Only the SQLSTATE and the primary message are kept:
/// PostgreSQL's DETAIL can quote the failing row, and record values must never reach a log.
fn db_err(e: sqlx::Error) -> StoreError {
    match e {
        sqlx::Error::PoolTimedOut
        | sqlx::Error::PoolClosed
        | sqlx::Error::WorkerCrashed
        | sqlx::Error::Io(_)
        | sqlx::Error::Tls(_) => StoreError::Unavailable(e.to_string()),
        sqlx::Error::Database(d) => {
            let code = d.code().map(|c| c.into_owned()).unwrap_or_default();
            let retryable = code.starts_with("08") // connection exception
                || matches!(
                    code.as_str(),
                    "40001" // serialization_failure
                        | "40P01" // deadlock_detected
                        | "53300" // too_many_connections
                        | "55P03" // lock_not_available
                        | "57P01" // admin_shutdown
                        | "57P02" // crash_shutdown
                        | "57P03" // cannot_connect_now
                );
            if retryable {
                StoreError::Unavailable(format!("PostgreSQL error {code}: {}", d.message()))
            } else {
                StoreError::Other(anyhow::anyhow!("PostgreSQL error {code}: {}", d.message()))
            }
        }
        other => StoreError::Other(anyhow::Error::new(other)),
    }
}

/// A stored value that cannot be read back as its domain type.
fn corrupt(what: &str) -> StoreError {
    StoreError::Other(anyhow::anyhow!(
        "the database holds an invalid value in {what}"
    ))
}

/// The precision PostgreSQL keeps, so that what is read back equals what was written.
fn truncate_to_micros(t: OffsetDateTime) -> OffsetDateTime {
    t.replace_nanosecond(t.nanosecond() / 1_000 * 1_000)
        .unwrap_or(t)
}

/// The Rust side of [`TS_SQL_FORMAT`].
static TS_FORMAT: &[time::format_description::BorrowedFormatItem<'static>] = time::macros::format_description!(
    "[year]-[month]-[day]T[hour]:[minute]:[second].[subsecond digits:6]Z"
);

fn format_ts(t: OffsetDateTime) -> Result<String, StoreError> {
    truncate_to_micros(t)
        .to_offset(time::UtcOffset::UTC)
        .format(TS_FORMAT)
        .map_err(|e| StoreError::Other(anyhow::anyhow!("formatting a timestamp: {e}")))
}

fn parse_ts(s: &str) -> Result<OffsetDateTime, StoreError> {
    time::PrimitiveDateTime::parse(s, TS_FORMAT)
        .map(|t| t.assume_utc())
        .map_err(|_| corrupt("a timestamp"))
}

fn replay_or_conflict(
    original: BatchReceipt,
    content_digest: &[u8; 32],
) -> Result<PutBatch, StoreError> {
    if original.content_digest == hex::encode(content_digest) {
        Ok(PutBatch::Replayed(BatchReceipt {
            replayed: true,
            ..original
        }))
    } else {
        Err(StoreError::Conflict(format!(
            "batch {} was already stored with other content",
            original.batch_id
        )))
    }
}

fn provider_from_row(r: &PgRow) -> Result<Provider, StoreError> {
    let agb: String = r.try_get("agb").map_err(db_err)?;
    Ok(Provider {
        agb: agb.parse().map_err(|_| corrupt("providers.agb"))?,
        name: r.try_get("name").map_err(db_err)?,
        signing_public_key: r.try_get("signing_public_key").map_err(db_err)?,
        created_at: parse_ts(&r.try_get::<String, _>("created_at").map_err(db_err)?)?,
    })
}

fn receipt_from_row(r: &PgRow) -> Result<BatchReceipt, StoreError> {
    let provider: String = r.try_get("provider").map_err(db_err)?;
    let batch_id: String = r.try_get("batch_id").map_err(db_err)?;
    let key_id: String = r.try_get("key_id").map_err(db_err)?;
    let digest: Vec<u8> = r.try_get("content_digest").map_err(db_err)?;
    let count = |c: &str| -> Result<u32, StoreError> {
        let v: i32 = r.try_get(c).map_err(db_err)?;
        u32::try_from(v).map_err(|_| corrupt("a batch count"))
    };
    Ok(BatchReceipt {
        batch_id: Uuid::parse_str(&batch_id).map_err(|_| corrupt("batches.batch_id"))?,
        provider: provider.parse().map_err(|_| corrupt("batches.provider"))?,
        key_id: key_id.parse().map_err(|_| corrupt("batches.key_id"))?,
        record_count: count("record_count")?,
        stored: count("stored")?,
        corrected: count("corrected")?,
        unchanged: count("unchanged")?,
        received_at: parse_ts(&r.try_get::<String, _>("received_at").map_err(db_err)?)?,
        content_digest: hex::encode(digest),
        replayed: false,
    })
}

/// Reads an optional smallint column into its domain type.
fn small<T>(
    r: &PgRow,
    column: &str,
    make: impl FnOnce(u8) -> Result<T, kwm_schemas::ParseError>,
) -> Result<Option<T>, StoreError> {
    let v: Option<i16> = r.try_get(column).map_err(db_err)?;
    v.map(|v| {
        u8::try_from(v)
            .ok()
            .and_then(|v| make(v).ok())
            .ok_or_else(|| corrupt(column))
    })
    .transpose()
}

/// Reads an optional text column into its domain type.
fn word<T: FromStr>(r: &PgRow, column: &str) -> Result<Option<T>, StoreError> {
    let v: Option<String> = r.try_get(column).map_err(db_err)?;
    v.map(|s| s.parse().map_err(|_| corrupt(column)))
        .transpose()
}

fn month(v: i32, column: &str) -> Result<Month, StoreError> {
    u32::try_from(v)
        .ok()
        .and_then(|v| Month::from_yyyymm(v).ok())
        .ok_or_else(|| corrupt(column))
}

fn pseudonym(r: &PgRow, column: &str) -> Result<Pseudonym, StoreError> {
    let b: Vec<u8> = r.try_get(column).map_err(db_err)?;
    Pseudonym::from_slice(&b).map_err(|_| corrupt(column))
}

fn record_from_row(r: &PgRow) -> Result<WireRecord, StoreError> {
    let end_month: Option<i32> = r.try_get("end_month").map_err(db_err)?;
    Ok(WireRecord {
        client: pseudonym(r, "client")?,
        trajectory: pseudonym(r, "trajectory")?,
        municipality: word(r, "municipality")?.ok_or_else(|| corrupt("municipality"))?,
        target_group: word(r, "target_group")?.ok_or_else(|| corrupt("target_group"))?,
        intensity: small(r, "intensity", Intensity::new)?,
        product_category: small(r, "product_category", ProductCategory::new)?,
        start_month: month(r.try_get("start_month").map_err(db_err)?, "start_month")?,
        end_month: end_month.map(|v| month(v, "end_month")).transpose()?,
        age_band: word::<AgeBand>(r, "age_band")?.ok_or_else(|| corrupt("age_band"))?,
        end_reason: small(r, "end_reason", EndReason::new)?,
        satisfaction: small(r, "satisfaction", Satisfaction::new)?,
        respondent: word(r, "respondent")?,
        carry_on_without_help: word(r, "carry_on_without_help")?,
        problem_t_pre: small(r, "problem_t_pre", TScore::new)?,
        problem_t_post: small(r, "problem_t_post", TScore::new)?,
        instrument: word(r, "instrument")?,
        goals_agreed: small(r, "goals_agreed", GoalCount::new)?,
        goals_achieved: small(r, "goals_achieved", GoalCount::new)?,
    })
}

/// What [`Store::list_trajectories_between`] copies out, field by field. The eight nullable small
/// integers travel packed into one bigint, a byte each in [`PACKED_COLUMNS`] order, [`PACKED_NULL`] for
/// NULL (every stored value is at most 100): PostgreSQL's cost of a binary COPY is mostly per field,
/// and this saves it about a quarter.
const BETWEEN_FIELDS: [&str; 12] = [
    "provider",
    "trajectory",
    "client",
    "municipality",
    "target_group",
    "age_band",
    "respondent",
    "carry_on_without_help",
    "instrument",
    "start_month",
    "end_month",
    "packed",
];

/// The columns packed into the last of [`BETWEEN_FIELDS`], most significant byte first.
const PACKED_COLUMNS: [&str; 8] = [
    "intensity",
    "product_category",
    "end_reason",
    "satisfaction",
    "problem_t_pre",
    "problem_t_post",
    "goals_agreed",
    "goals_achieved",
];

/// A NULL in the packed columns.
const PACKED_NULL: u8 = 255;

/// The select list of [`BETWEEN_FIELDS`].
static SELECT_BETWEEN_FIELDS: LazyLock<String> = LazyLock::new(|| {
    let packed: Vec<String> = PACKED_COLUMNS
        .iter()
        .enumerate()
        .map(|(i, c)| {
            format!(
                "(coalesce({c}, {PACKED_NULL})::bigint << {})",
                8 * (PACKED_COLUMNS.len() - 1 - i)
            )
        })
        .collect();
    let plain = &BETWEEN_FIELDS[..BETWEEN_FIELDS.len() - 1];
    format!("{}, {} AS packed", plain.join(", "), packed.join(" | "))
});

/// Decodes the binary `COPY` output of [`SELECT_BETWEEN_FIELDS`] into records, handed to a callback
/// (sorting buckets, a change sink), whatever the chunking of the stream (PostgreSQL sends a row per
/// message, the header with the first).
#[derive(Debug, Default)]
struct CopyOutDecoder {
    /// The bytes of an incomplete row (or header) carried over to the next chunk.
    pending: Vec<u8>,
    header_done: bool,
    trailer_seen: bool,
    /// The last provider decoded, so that its text is parsed once per run of rows.
    provider: Option<([u8; 8], AgbCode)>,
}

/// The binary COPY signature, flags and header-extension length PostgreSQL writes.
const COPY_SIGNATURE: &[u8; 11] = b"PGCOPY\n\xff\r\n\0";

impl CopyOutDecoder {
    fn feed(
        &mut self,
        chunk: &[u8],
        out: &mut impl FnMut(AgbCode, WireRecord),
    ) -> Result<(), StoreError> {
        if self.pending.is_empty() {
            let used = self.decode(chunk, out)?;
            self.pending.extend_from_slice(&chunk[used..]);
        } else {
            let mut pending = std::mem::take(&mut self.pending);
            pending.extend_from_slice(chunk);
            let used = self.decode(&pending, out)?;
            pending.drain(..used);
            self.pending = pending;
        }
        Ok(())
    }

    fn finish(&self) -> Result<(), StoreError> {
        if self.trailer_seen && self.pending.is_empty() {
            Ok(())
        } else {
            Err(StoreError::Other(anyhow::anyhow!(
                "the COPY output of trajectories ended early"
            )))
        }
    }

    /// Decodes every complete row at the start of `buf`; returns the bytes used.
    fn decode(
        &mut self,
        buf: &[u8],
        out: &mut impl FnMut(AgbCode, WireRecord),
    ) -> Result<usize, StoreError> {
        let mut used = 0;
        if !self.header_done {
            if buf.len() < 19 {
                return Ok(0);
            }
            if &buf[..11] != COPY_SIGNATURE {
                return Err(corrupt("the COPY header"));
            }
            let ext = u32::from_be_bytes([buf[15], buf[16], buf[17], buf[18]]) as usize;
            if buf.len() < 19 + ext {
                return Ok(0);
            }
            used = 19 + ext;
            self.header_done = true;
        }
        while !self.trailer_seen {
            let mut row = CopyRow {
                buf: &buf[used..],
                at: 0,
            };
            match self.decode_row(&mut row, out)? {
                RowOutcome::Incomplete => break,
                RowOutcome::Trailer => self.trailer_seen = true,
                RowOutcome::Row => {}
            }
            used += row.at;
        }
        if self.trailer_seen && used < buf.len() {
            return Err(corrupt("the COPY output after its trailer"));
        }
        Ok(used)
    }

    /// Decodes one row onto `out`.
    fn decode_row(
        &mut self,
        row: &mut CopyRow<'_>,
        out: &mut impl FnMut(AgbCode, WireRecord),
    ) -> Result<RowOutcome, StoreError> {
        let Some(count) = row.take(2) else {
            return Ok(RowOutcome::Incomplete);
        };
        let count = i16::from_be_bytes([count[0], count[1]]);
        if count == -1 {
            return Ok(RowOutcome::Trailer);
        }
        if count != BETWEEN_FIELDS.len() as i16 {
            return Err(corrupt("the COPY output (field count)"));
        }
        // Every field is found before any is decoded: an incomplete row is decided first.
        let mut f: [Option<&[u8]>; BETWEEN_FIELDS.len()] = [None; BETWEEN_FIELDS.len()];
        for slot in &mut f {
            match row.field() {
                Some(v) => *slot = v,
                None => return Ok(RowOutcome::Incomplete),
            }
        }
        let required = |i: usize| f[i].ok_or_else(|| corrupt(BETWEEN_FIELDS[i]));

        let digits =
            <[u8; 8]>::try_from(required(0)?).map_err(|_| corrupt("trajectories.provider"))?;
        let agb = match self.provider {
            Some((last, agb)) if last == digits => agb,
            _ => {
                let agb: AgbCode = std::str::from_utf8(&digits)
                    .ok()
                    .and_then(|s| s.parse().ok())
                    .ok_or_else(|| corrupt("trajectories.provider"))?;
                self.provider = Some((digits, agb));
                agb
            }
        };
        let pseudonym =
            |i: usize| Pseudonym::from_slice(required(i)?).map_err(|_| corrupt(BETWEEN_FIELDS[i]));
        let text = |i: usize| -> Result<Option<&str>, StoreError> {
            f[i].map(|b| std::str::from_utf8(b).map_err(|_| corrupt(BETWEEN_FIELDS[i])))
                .transpose()
        };
        fn parsed<T: FromStr>(v: Option<&str>, column: &str) -> Result<Option<T>, StoreError> {
            v.map(|s| s.parse().map_err(|_| corrupt(column)))
                .transpose()
        }
        let month = |i: usize| -> Result<Option<Month>, StoreError> {
            f[i].map(|b| {
                <[u8; 4]>::try_from(b)
                    .ok()
                    .and_then(|b| u32::try_from(i32::from_be_bytes(b)).ok())
                    .and_then(|v| Month::from_yyyymm(v).ok())
                    .ok_or_else(|| corrupt(BETWEEN_FIELDS[i]))
            })
            .transpose()
        };
        let packed =
            <[u8; 8]>::try_from(required(11)?).map_err(|_| corrupt("the packed columns"))?;
        fn small<T>(
            byte: u8,
            column: &str,
            make: impl FnOnce(u8) -> Result<T, kwm_schemas::ParseError>,
        ) -> Result<Option<T>, StoreError> {
            match byte {
                PACKED_NULL => Ok(None),
                v => make(v).map(Some).map_err(|_| corrupt(column)),
            }
        }
        let name = |i: usize| PACKED_COLUMNS[i];
        out(
            agb,
            WireRecord {
                trajectory: pseudonym(1)?,
                client: pseudonym(2)?,
                municipality: parsed(text(3)?, BETWEEN_FIELDS[3])?
                    .ok_or_else(|| corrupt(BETWEEN_FIELDS[3]))?,
                target_group: parsed(text(4)?, BETWEEN_FIELDS[4])?
                    .ok_or_else(|| corrupt(BETWEEN_FIELDS[4]))?,
                age_band: parsed::<AgeBand>(text(5)?, BETWEEN_FIELDS[5])?
                    .ok_or_else(|| corrupt(BETWEEN_FIELDS[5]))?,
                respondent: parsed(text(6)?, BETWEEN_FIELDS[6])?,
                carry_on_without_help: parsed(text(7)?, BETWEEN_FIELDS[7])?,
                instrument: parsed(text(8)?, BETWEEN_FIELDS[8])?,
                start_month: month(9)?.ok_or_else(|| corrupt(BETWEEN_FIELDS[9]))?,
                end_month: month(10)?,
                intensity: small(packed[0], name(0), Intensity::new)?,
                product_category: small(packed[1], name(1), ProductCategory::new)?,
                end_reason: small(packed[2], name(2), EndReason::new)?,
                satisfaction: small(packed[3], name(3), Satisfaction::new)?,
                problem_t_pre: small(packed[4], name(4), TScore::new)?,
                problem_t_post: small(packed[5], name(5), TScore::new)?,
                goals_agreed: small(packed[6], name(6), GoalCount::new)?,
                goals_achieved: small(packed[7], name(7), GoalCount::new)?,
            },
        );
        Ok(RowOutcome::Row)
    }
}

enum RowOutcome {
    Incomplete,
    Trailer,
    Row,
}

/// A cursor over one row of binary COPY data.
struct CopyRow<'a> {
    buf: &'a [u8],
    at: usize,
}

impl<'a> CopyRow<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        let bytes = self.buf.get(self.at..self.at.checked_add(n)?)?;
        self.at += n;
        Some(bytes)
    }

    /// `None`: the row goes on in a later chunk; `Some(None)`: a NULL.
    fn field(&mut self) -> Option<Option<&'a [u8]>> {
        let len = self.take(4)?;
        let len = i32::from_be_bytes([len[0], len[1], len[2], len[3]]);
        match usize::try_from(len) {
            Ok(n) => self.take(n).map(Some),
            Err(_) => Some(None),
        }
    }
}

/// The release's epsilon and cap in nano-units, and a cap that one release can ever fit under.
fn release_nanos(release: &NewRelease) -> Result<(i64, i64), StoreError> {
    let nanos = |e: Epsilon, what: &str| {
        e.to_nanos().ok_or_else(|| {
            StoreError::Other(anyhow::anyhow!(
                "the {what} {e} is not a whole number of nano-epsilon: the budget ledger cannot \
                 keep it exactly"
            ))
        })
    };
    let epsilon = nanos(release.epsilon, "release epsilon")?;
    let cap = nanos(release.cap, "partition cap")?;
    if epsilon > cap {
        return Err(StoreError::Other(anyhow::anyhow!(
            "the release epsilon {} exceeds the partition cap {}: no release can ever be charged",
            release.epsilon,
            release.cap
        )));
    }
    Ok((epsilon, cap))
}

/// A partition's stored spend: `None` for nothing spent.
fn spent_epsilon(nanos: i64) -> Result<Option<Epsilon>, StoreError> {
    match nanos {
        0 => Ok(None),
        n => Epsilon::from_nanos(n)
            .map(Some)
            .ok_or_else(|| corrupt("budget.spent_nanos")),
    }
}

/// The constraint a unique violation (SQLSTATE 23505) names, if the error is one.
fn unique_violation(e: &sqlx::Error) -> Option<String> {
    match e {
        sqlx::Error::Database(d) if d.code().as_deref() == Some("23505") => {
            Some(d.constraint().unwrap_or_default().to_owned())
        }
        _ => None,
    }
}

static SELECT_RELEASE_COLUMNS: LazyLock<String> = LazyLock::new(|| {
    format!(
        "id::text AS id, scope, period, version, data_version, epsilon_nanos, {}, body::text AS body",
        ts_column("created_at")
    )
});

fn release_from_row(r: &PgRow) -> Result<StoredRelease, StoreError> {
    let id: &str = r.try_get("id").map_err(db_err)?;
    let version: i32 = r.try_get("version").map_err(db_err)?;
    let epsilon: i64 = r.try_get("epsilon_nanos").map_err(db_err)?;
    let body: &str = r.try_get("body").map_err(db_err)?;
    Ok(StoredRelease {
        id: Uuid::parse_str(id).map_err(|_| corrupt("releases.id"))?,
        scope: r.try_get("scope").map_err(db_err)?,
        period: r.try_get("period").map_err(db_err)?,
        version: u32::try_from(version).map_err(|_| corrupt("releases.version"))?,
        data_version: r.try_get("data_version").map_err(db_err)?,
        epsilon: Epsilon::from_nanos(epsilon).ok_or_else(|| corrupt("releases.epsilon_nanos"))?,
        created_at: parse_ts(&r.try_get::<String, _>("created_at").map_err(db_err)?)?,
        body: serde_json::from_str(body).map_err(|_| corrupt("releases.body"))?,
    })
}

static SELECT_AUDIT_COLUMNS: LazyLock<String> = LazyLock::new(|| {
    format!(
        "seq, {}, actor_role, actor_id, action, subject, provider, details_digest, prev_hash, hash",
        ts_column("at")
    )
});

fn hash32(r: &PgRow, column: &str, what: &str) -> Result<[u8; 32], StoreError> {
    let b: &[u8] = r.try_get(column).map_err(db_err)?;
    <[u8; 32]>::try_from(b).map_err(|_| corrupt(what))
}

fn audit_from_row(r: &PgRow) -> Result<AuditEntry, StoreError> {
    let action: &str = r.try_get("action").map_err(db_err)?;
    let provider: Option<&str> = r.try_get("provider").map_err(db_err)?;
    Ok(AuditEntry {
        seq: r.try_get("seq").map_err(db_err)?,
        entry: NewAuditEntry {
            at: parse_ts(r.try_get("at").map_err(db_err)?)?,
            actor_role: r.try_get("actor_role").map_err(db_err)?,
            actor_id: r.try_get("actor_id").map_err(db_err)?,
            action: AuditAction::parse(action).ok_or_else(|| corrupt("audit_log.action"))?,
            subject: r.try_get("subject").map_err(db_err)?,
            provider: provider
                .map(|p| p.parse().map_err(|_| corrupt("audit_log.provider")))
                .transpose()?,
            details_digest: hash32(r, "details_digest", "audit_log.details_digest")?,
        },
        prev_hash: hash32(r, "prev_hash", "audit_log.prev_hash")?,
        hash: hash32(r, "hash", "audit_log.hash")?,
    })
}

/// Inserts one service key in a transaction; `Conflict` if its id is taken.
async fn insert_service_key(
    tx: &mut sqlx::Transaction<'_, sqlx::Postgres>,
    k: &StoredServiceKey,
) -> Result<(), StoreError> {
    sqlx::query(
        "INSERT INTO service_keys \
         (id, kind, sealed, public_key, created_at, activates_at, retires_at) \
         VALUES ($1, $2, $3, $4, $5::timestamptz, $6::timestamptz, $7::timestamptz)",
    )
    .bind(&k.id)
    .bind(k.kind.as_str())
    .bind(&k.sealed)
    .bind(k.public_key.as_deref())
    .bind(format_ts(k.created_at)?)
    .bind(format_ts(k.activates_at)?)
    .bind(k.retires_at.map(format_ts).transpose()?)
    .execute(&mut **tx)
    .await
    .map_err(|e| {
        if unique_violation(&e).is_some() {
            StoreError::Conflict(format!("service key {} exists", k.id))
        } else {
            db_err(e)
        }
    })?;
    Ok(())
}

fn token_from_row(r: &PgRow) -> Result<TokenRecord, StoreError> {
    let role: String = r.try_get("role").map_err(db_err)?;
    let revoked_at: Option<String> = r.try_get("revoked_at").map_err(db_err)?;
    Ok(TokenRecord {
        id: r.try_get("id").map_err(db_err)?,
        role: Role::from_str(&role).map_err(|_| corrupt("tokens.role"))?,
        scope: r.try_get("scope").map_err(db_err)?,
        label: r.try_get("label").map_err(db_err)?,
        created_at: parse_ts(&r.try_get::<String, _>("created_at").map_err(db_err)?)?,
        revoked_at: revoked_at.as_deref().map(parse_ts).transpose()?,
    })
}

/// Records a withdrawal in its transaction: the data version counts these rows.
async fn record_withdrawal(
    tx: &mut sqlx::Transaction<'_, sqlx::Postgres>,
    provider: AgbCode,
    withdrawn: Withdrawn,
) -> Result<(), StoreError> {
    let count = |n: u64| i64::try_from(n).map_err(|_| corrupt("a withdrawal count"));
    sqlx::query(
        "INSERT INTO withdrawals (provider, at, trajectories, batches) \
         VALUES ($1, $2::timestamptz, $3, $4)",
    )
    .bind(provider.as_str())
    .bind(format_ts(OffsetDateTime::now_utc())?)
    .bind(count(withdrawn.trajectories)?)
    .bind(count(withdrawn.batches)?)
    .execute(&mut **tx)
    .await
    .map_err(db_err)?;
    Ok(())
}

/// Takes the provider's write lock (see [`PROVIDER_WRITES_LOCK`]), after [`enter_change_feed`].
async fn lock_provider_writes(
    tx: &mut sqlx::Transaction<'_, sqlx::Postgres>,
    provider: AgbCode,
    exclusive: bool,
) -> Result<(), StoreError> {
    let key: i32 = provider
        .as_str()
        .parse()
        .map_err(|_| corrupt("an AGB code"))?;
    let sql = if exclusive {
        "SELECT pg_advisory_xact_lock($1, $2)"
    } else {
        "SELECT pg_advisory_xact_lock_shared($1, $2)"
    };
    sqlx::query(sql)
        .bind(PROVIDER_WRITES_LOCK)
        .bind(key)
        .execute(&mut **tx)
        .await
        .map_err(db_err)?;
    Ok(())
}

/// Joins the change feed's order (see [`CHANGE_FEED_LOCK`]): the first statement of every transaction
/// that writes `trajectories` or `trajectory_changes`, before it takes a change number or a row lock.
async fn enter_change_feed(
    tx: &mut sqlx::Transaction<'_, sqlx::Postgres>,
) -> Result<(), StoreError> {
    sqlx::query("SELECT pg_advisory_xact_lock_shared($1, $2)")
        .bind(CHANGE_FEED_LOCK.0)
        .bind(CHANGE_FEED_LOCK.1)
        .execute(&mut **tx)
        .await
        .map_err(db_err)?;
    Ok(())
}

/// The end of a batch being withdrawn, once its receipt and the rows it carried are gone: rows it
/// wrote that a later batch carried stay, and that later batch becomes the one that wrote them (same
/// values), as on SQLite; the change feed reads those batches again, so that an index that has not
/// seen this batch yet finds the rows under their new batch. The id is kept in `withdrawn_batches`.
async fn move_rows_and_forget(
    tx: &mut sqlx::Transaction<'_, sqlx::Postgres>,
    provider: AgbCode,
    batch_id: &str,
) -> Result<(), StoreError> {
    sqlx::query(
        "INSERT INTO trajectory_changes (provider, batch_id) \
         SELECT DISTINCT provider, carrier FROM trajectories \
         WHERE provider = $1 AND batch_id = $2::uuid",
    )
    .bind(provider.as_str())
    .bind(batch_id)
    .execute(&mut **tx)
    .await
    .map_err(db_err)?;
    sqlx::query(
        "UPDATE trajectories SET batch_id = carrier WHERE provider = $1 AND batch_id = $2::uuid",
    )
    .bind(provider.as_str())
    .bind(batch_id)
    .execute(&mut **tx)
    .await
    .map_err(db_err)?;
    sqlx::query(
        "INSERT INTO withdrawn_batches (provider, batch_id, at) VALUES ($1, $2::uuid, $3::timestamptz) \
         ON CONFLICT (provider, batch_id) DO NOTHING",
    )
    .bind(provider.as_str())
    .bind(batch_id)
    .bind(format_ts(OffsetDateTime::now_utc())?)
    .execute(&mut **tx)
    .await
    .map_err(db_err)?;
    Ok(())
}

/// Tells the change feed, in the batch's transaction, that the batch stored or corrected rows.
async fn log_batch_change(
    tx: &mut sqlx::Transaction<'_, sqlx::Postgres>,
    provider: &str,
    batch_id: &str,
) -> Result<(), StoreError> {
    sqlx::query("INSERT INTO trajectory_changes (provider, batch_id) VALUES ($1, $2::uuid)")
        .bind(provider)
        .bind(batch_id)
        .execute(&mut **tx)
        .await
        .map_err(db_err)?;
    Ok(())
}

/// A pooled connection that is closed, not returned to the pool, unless `clean` was set: an error or
/// a cancelled future may leave it holding the change feed's lock (which would stop every writer) or
/// in a transaction or a COPY.
struct CloseUnlessClean {
    conn: PoolConnection<sqlx::Postgres>,
    clean: bool,
}

impl Drop for CloseUnlessClean {
    fn drop(&mut self) {
        if !self.clean {
            self.conn.close_on_drop();
        }
    }
}

/// The body of [`Store::trajectory_changes`] after its cheap look, on one connection: wait until no
/// writer is in flight, fix a snapshot and let the writers go on, then read the changes in `(since,
/// mark]` from that snapshot. Returns the mark. Leaves the connection clean only when it returns Ok.
async fn read_changes(
    conn: &mut sqlx::PgConnection,
    since: i64,
    sink: &mut dyn ChangeSink,
) -> Result<i64, StoreError> {
    // Session-level and exclusive: waits for the writers in flight; new ones queue behind it.
    sqlx::query("SELECT pg_advisory_lock($1, $2)")
        .bind(CHANGE_FEED_LOCK.0)
        .bind(CHANGE_FEED_LOCK.1)
        .execute(&mut *conn)
        .await
        .map_err(db_err)?;
    sqlx::query("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")
        .execute(&mut *conn)
        .await
        .map_err(db_err)?;
    // The transaction's first statement takes its snapshot: every change up to the mark is
    // committed in it, and every later change will have a greater number.
    let mark: i64 = sqlx::query_scalar(NEWEST_CHANGE)
        .fetch_one(&mut *conn)
        .await
        .map_err(db_err)?;
    let unlocked: bool = sqlx::query_scalar("SELECT pg_advisory_unlock($1, $2)")
        .bind(CHANGE_FEED_LOCK.0)
        .bind(CHANGE_FEED_LOCK.1)
        .fetch_one(&mut *conn)
        .await
        .map_err(db_err)?;
    if !unlocked {
        return Err(StoreError::Other(anyhow::anyhow!(
            "the change feed's lock was not held by its reader"
        )));
    }
    check_mark(since, mark)?;
    check_not_erased(&mut *conn, since, mark).await?;

    if since > 0 {
        let mut removed = sqlx::query(
            "SELECT provider, trajectory FROM trajectory_changes \
             WHERE seq > $1 AND seq <= $2 AND trajectory IS NOT NULL ORDER BY seq",
        )
        .bind(since)
        .bind(mark)
        .fetch(&mut *conn);
        while let Some(r) = removed.try_next().await.map_err(db_err)? {
            let provider: &str = r.try_get(0).map_err(db_err)?;
            let provider = provider
                .parse()
                .map_err(|_| corrupt("trajectory_changes.provider"))?;
            let trajectory: &[u8] = r.try_get(1).map_err(db_err)?;
            let trajectory = Pseudonym::from_slice(trajectory)
                .map_err(|_| corrupt("trajectory_changes.trajectory"))?;
            sink.removed(provider, &trajectory);
        }
    }

    // Binary COPY out, as `list_trajectories_between` reads (COPY takes no parameters: the bounds
    // are integers). In the transaction: it sees the snapshot.
    let sql = if since == 0 {
        format!(
            "COPY (SELECT {fields} FROM trajectories) TO STDOUT (FORMAT binary)",
            fields = *SELECT_BETWEEN_FIELDS
        )
    } else {
        // A batch id can come back after its batch was withdrawn: each batch is read once.
        format!(
            "COPY (SELECT {fields} FROM trajectories JOIN \
             (SELECT DISTINCT provider, batch_id FROM trajectory_changes \
              WHERE seq > {since} AND seq <= {mark} AND batch_id IS NOT NULL) AS changed \
             USING (provider, batch_id)) TO STDOUT (FORMAT binary)",
            fields = *SELECT_BETWEEN_FIELDS
        )
    };
    {
        let mut stream = conn.copy_out_raw(&sql).await.map_err(db_err)?;
        let mut decoder = CopyOutDecoder::default();
        let mut upsert = |provider, record| sink.upsert(provider, record);
        while let Some(chunk) = stream.try_next().await.map_err(db_err)? {
            decoder.feed(&chunk, &mut upsert)?;
        }
        decoder.finish()?;
    }
    sqlx::query("COMMIT")
        .execute(&mut *conn)
        .await
        .map_err(db_err)?;
    Ok(mark)
}

/// `UnknownMark` when a removal after `since` has had its pseudonym erased: the reader cannot apply
/// it and must load from 0.
async fn check_not_erased(
    conn: &mut sqlx::PgConnection,
    since: i64,
    mark: i64,
) -> Result<(), StoreError> {
    if since == 0 {
        return Ok(());
    }
    let erased: i64 = sqlx::query_scalar(NEWEST_ERASED)
        .fetch_one(conn)
        .await
        .map_err(db_err)?;
    if erased > since {
        return Err(StoreError::UnknownMark {
            since,
            newest: mark,
        });
    }
    Ok(())
}

/// A mark handed back must be one this database gave out: change numbers are never reused, so a
/// mark beyond the newest change comes from elsewhere.
fn check_mark(since: i64, newest: i64) -> Result<(), StoreError> {
    if since < 0 || since > newest {
        return Err(StoreError::UnknownMark { since, newest });
    }
    Ok(())
}

/// Appends the entry `record` makes of an audited action's outcome inside the action's transaction;
/// the entry's sequence number, `None` without `record`. A failed append is `AuditUnwritten`.
async fn append_recorded<T>(
    tx: &mut sqlx::Transaction<'_, sqlx::Postgres>,
    record: Option<&RecordFn<T>>,
    outcome: &T,
) -> Result<Option<i64>, StoreError> {
    let Some(record) = record else {
        return Ok(None);
    };
    match append_audit_in(tx, &record(outcome)).await {
        Ok(e) => Ok(Some(e.seq)),
        Err(e) => Err(StoreError::AuditUnwritten(Box::new(e.into()))),
    }
}

/// Appends `audit`, an action's entry known before the action, inside the action's transaction.
async fn append_entry(
    tx: &mut sqlx::Transaction<'_, sqlx::Postgres>,
    audit: Option<&NewAuditEntry>,
) -> Result<(), StoreError> {
    let Some(entry) = audit else {
        return Ok(());
    };
    let entry = entry.clone();
    let make = move |_: &()| entry.clone();
    append_recorded(tx, Some(&make), &()).await.map(|_| ())
}

/// Appends `entry` to the audit chain inside `tx`: locks the log first (one appender at a time on every
/// replica, until `tx` ends; readers of the log are not blocked), so the newest entry read here stays
/// the newest until commit and the chain never forks.
async fn append_audit_in(
    tx: &mut sqlx::Transaction<'_, sqlx::Postgres>,
    entry: &NewAuditEntry,
) -> Result<AuditEntry, TxError> {
    let entry = NewAuditEntry {
        at: truncate_to_micros(entry.at),
        ..entry.clone()
    };
    let at = format_ts(entry.at)?;
    sqlx::query("LOCK TABLE audit_log IN EXCLUSIVE MODE")
        .execute(&mut **tx)
        .await?;
    let last = sqlx::query("SELECT seq, hash FROM audit_log ORDER BY seq DESC LIMIT 1")
        .fetch_optional(&mut **tx)
        .await?
        .map(|r| -> Result<(i64, [u8; 32]), StoreError> {
            Ok((
                r.try_get("seq").map_err(db_err)?,
                hash32(&r, "hash", "audit_log.hash")?,
            ))
        })
        .transpose()?;
    let chained = crate::audit::chain_next(last, entry);
    let e = &chained.entry;
    sqlx::query(
        "INSERT INTO audit_log (seq, at, actor_role, actor_id, action, subject, provider, \
         details_digest, prev_hash, hash) \
         VALUES ($1, $2::timestamptz, $3, $4, $5, $6, $7, $8, $9, $10)",
    )
    .bind(chained.seq)
    .bind(&at)
    .bind(&e.actor_role)
    .bind(&e.actor_id)
    .bind(e.action.as_str())
    .bind(&e.subject)
    .bind(e.provider.as_ref().map(|p| p.as_str()))
    .bind(&e.details_digest[..])
    .bind(&chained.prev_hash[..])
    .bind(&chained.hash[..])
    .execute(&mut **tx)
    .await?;
    Ok(chained)
}

/// An error inside a transaction of [`Store::put_round`]: the driver's own, which may be worth
/// another attempt, or the store's.
#[derive(Debug)]
enum TxError {
    Db(sqlx::Error),
    Store(StoreError),
}

impl TxError {
    /// A serialisation failure, a deadlock or a lock timeout, or a version number another round of
    /// the period took (impossible while every writer takes the period's lock): another attempt may
    /// succeed. A lost connection is not retried here: the caller sees `Unavailable`.
    fn retryable(&self) -> bool {
        let Self::Db(sqlx::Error::Database(d)) = self else {
            return false;
        };
        match d.code().as_deref() {
            Some("40001" | "40P01" | "55P03") => true,
            Some("23505") => d.constraint() == Some("rounds_one_per_version"),
            _ => false,
        }
    }
}

impl From<sqlx::Error> for TxError {
    fn from(e: sqlx::Error) -> Self {
        Self::Db(e)
    }
}

impl From<StoreError> for TxError {
    fn from(e: StoreError) -> Self {
        Self::Store(e)
    }
}

impl From<TxError> for StoreError {
    fn from(e: TxError) -> Self {
        match e {
            TxError::Db(e) => db_err(e),
            TxError::Store(e) => e,
        }
    }
}

/// A failed insert of an id: `Conflict` when `constraint` (the id's key) refused it.
fn id_conflict(e: sqlx::Error, constraint: &str, what: impl FnOnce() -> String) -> TxError {
    match unique_violation(&e) {
        Some(c) if c == constraint => TxError::Store(StoreError::Conflict(what())),
        _ => TxError::Db(e),
    }
}

/// Which rounds [`load_rounds`] reads.
#[derive(Debug, Clone, Copy)]
enum RoundsOf<'a> {
    /// Of one period, or all.
    Period(Option<&'a str>),
    /// The round with this id (hyphenated).
    Id(&'a str),
}

/// Rounds with their charges and release ids, newest first (created_at, version, then insertion
/// order), on one connection (inside a transaction: as it sees the tables).
async fn load_rounds(
    conn: &mut PgConnection,
    of: RoundsOf<'_>,
) -> Result<Vec<RoundRecord>, TxError> {
    let (period, id) = match of {
        RoundsOf::Period(p) => (p, None),
        RoundsOf::Id(id) => (None, Some(id)),
    };
    let rows = sqlx::query(&format!(
        "SELECT id::text AS id, period, version, data_version, published_by, {}, audit_seq \
         FROM rounds WHERE ($1::text IS NULL OR period = $1) AND ($2::uuid IS NULL OR id = $2::uuid) \
         ORDER BY rounds.created_at DESC, version DESC, seq DESC",
        ts_column("created_at")
    ))
    .bind(period)
    .bind(id)
    .fetch_all(&mut *conn)
    .await?;
    let mut rounds = Vec::with_capacity(rows.len());
    let mut ids = Vec::with_capacity(rows.len());
    for r in &rows {
        let id: String = r.try_get("id")?;
        let version: i32 = r.try_get("version")?;
        rounds.push(RoundRecord {
            id: Uuid::parse_str(&id).map_err(|_| corrupt("rounds.id"))?,
            period: r.try_get("period")?,
            version: u32::try_from(version).map_err(|_| corrupt("rounds.version"))?,
            data_version: r.try_get("data_version")?,
            charges: Vec::new(),
            published_by: r.try_get("published_by")?,
            created_at: parse_ts(r.try_get("created_at")?)?,
            releases: Vec::new(),
            audit_seq: r.try_get("audit_seq")?,
        });
        ids.push(id);
    }
    if rounds.is_empty() {
        return Ok(rounds);
    }
    let at: std::collections::HashMap<Uuid, usize> =
        rounds.iter().enumerate().map(|(i, r)| (r.id, i)).collect();
    let find = |id: &str, what: &str| -> Result<usize, StoreError> {
        Uuid::parse_str(id)
            .ok()
            .and_then(|id| at.get(&id).copied())
            .ok_or_else(|| corrupt(what))
    };

    let releases = sqlx::query(
        "SELECT round_id::text AS round_id, scope, id::text AS id FROM round_releases \
         WHERE round_id = ANY($1::uuid[])",
    )
    .bind(&ids)
    .fetch_all(&mut *conn)
    .await?;
    for r in &releases {
        let round_id: &str = r.try_get("round_id")?;
        let release_id: &str = r.try_get("id")?;
        let i = find(round_id, "round_releases.round_id")?;
        rounds[i].releases.push((
            r.try_get("scope")?,
            Uuid::parse_str(release_id).map_err(|_| corrupt("round_releases.id"))?,
        ));
    }
    let charges = sqlx::query(
        "SELECT subject_id, data_year, rho_nanos FROM privacy_charges \
         WHERE subject_kind = 'round' AND subject_id = ANY($1::text[])",
    )
    .bind(&ids)
    .fetch_all(&mut *conn)
    .await?;
    for r in &charges {
        let subject: &str = r.try_get("subject_id")?;
        let i = find(subject, "privacy_charges.subject_id")?;
        rounds[i].charges.push((
            data_year(r.try_get("data_year")?, "privacy_charges.data_year")?,
            r.try_get("rho_nanos")?,
        ));
    }
    // Byte order of the scopes, as on SQLite, whatever the database's collation.
    for round in &mut rounds {
        round.releases.sort();
        round.charges.sort();
    }
    Ok(rounds)
}

/// The columns [`round_release_from_row`] reads, of `round_releases rr JOIN rounds r`.
static SELECT_ROUND_RELEASE_COLUMNS: LazyLock<String> = LazyLock::new(|| {
    format!(
        "rr.id::text AS id, rr.round_id::text AS round_id, rr.scope AS scope, r.period AS period, \
         r.version AS version, to_char(r.created_at AT TIME ZONE 'UTC', {TS_SQL_FORMAT}) \
         AS created_at, rr.body::text AS body"
    )
});

fn round_release_from_row(r: &PgRow) -> Result<StoredRoundRelease, StoreError> {
    let id: &str = r.try_get("id").map_err(db_err)?;
    let round_id: &str = r.try_get("round_id").map_err(db_err)?;
    let version: i32 = r.try_get("version").map_err(db_err)?;
    let body: &str = r.try_get("body").map_err(db_err)?;
    Ok(StoredRoundRelease {
        id: Uuid::parse_str(id).map_err(|_| corrupt("round_releases.id"))?,
        round_id: Uuid::parse_str(round_id).map_err(|_| corrupt("round_releases.round_id"))?,
        scope: r.try_get("scope").map_err(db_err)?,
        period: r.try_get("period").map_err(db_err)?,
        version: u32::try_from(version).map_err(|_| corrupt("rounds.version"))?,
        created_at: parse_ts(r.try_get("created_at").map_err(db_err)?)?,
        body: serde_json::from_str(body).map_err(|_| corrupt("round_releases.body"))?,
    })
}

/// A stored data year.
fn data_year(v: i32, column: &str) -> Result<u16, StoreError> {
    u16::try_from(v).map_err(|_| corrupt(column))
}
