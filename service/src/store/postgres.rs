//! The PostgreSQL backend of the store: production and several service replicas (`postgres://...`).
//!
//! A batch is ingested with one binary `COPY` into a transaction-scoped staging table and one
//! `INSERT ... SELECT ... ON CONFLICT DO UPDATE` that inserts new trajectories, replaces changed ones and
//! leaves identical ones alone; row-by-row statements would cost a round trip per record (binding the
//! records as arrays for `unnest` measured slightly slower than COPY here). Idempotency
//! rests on the primary key of `batches`: the batch row is inserted first, so a second transaction with
//! the same batch id waits for the first and then finds its receipt.

use std::str::FromStr;
use std::sync::LazyLock;
use std::time::Duration;

use async_trait::async_trait;
use kwm_schemas::api::BatchReceipt;
use kwm_schemas::codes::{
    AgeBand, EndReason, GoalCount, Intensity, ProductCategory, Satisfaction, TScore,
};
use kwm_schemas::{AgbCode, Month, Pseudonym, Role, WireRecord};
use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions, PgRow};
use sqlx::Row;
use time::OffsetDateTime;
use uuid::Uuid;

use super::{NewBatch, NewToken, Provider, PutBatch, Store, StoreError, TokenRecord};

/// The embedded migrations of this backend.
static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations/postgres");

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

/// Moves the staged records into `trajectories` and counts what happened. `revision` tells a new row
/// (1) from a corrected one (more); rows whose values are all equal are not touched and not returned.
/// Sorted by key so that concurrent batches lock shared rows in the same order.
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
    format!(
        "WITH written AS ( \
           INSERT INTO trajectories (provider, {cols}, batch_id, revision, updated_at) \
           SELECT $1, {staged}, $2::uuid, 1, $3::timestamptz FROM kwm_staging s ORDER BY s.trajectory \
           ON CONFLICT (provider, trajectory) DO UPDATE SET {set}, batch_id = excluded.batch_id, \
             revision = trajectories.revision + 1, updated_at = excluded.updated_at \
           WHERE ({old}) IS DISTINCT FROM ({new}) \
           RETURNING revision) \
         SELECT count(*) FILTER (WHERE revision = 1) AS stored, \
                count(*) FILTER (WHERE revision > 1) AS corrected \
         FROM written",
        cols = cols.join(", "),
        staged = staged.join(", "),
        set = set.join(", "),
        old = old.join(", "),
        new = new.join(", "),
    )
});

static SELECT_TRAJECTORIES: LazyLock<String> = LazyLock::new(|| {
    let cols: Vec<&str> = RECORD_COLUMNS.iter().map(|(c, _)| *c).collect();
    format!(
        "SELECT {} FROM trajectories WHERE provider = $1 ORDER BY trajectory",
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
        let pool = PgPoolOptions::new()
            .max_connections(10)
            .acquire_timeout(Duration::from_secs(5))
            .connect_with(options)
            .await
            .map_err(db_err)?;
        // sqlx holds an advisory lock while migrating, so replicas starting together are safe.
        MIGRATOR.run(&pool).await.map_err(|e| {
            StoreError::Other(anyhow::anyhow!("running the PostgreSQL migrations: {e}"))
        })?;
        Ok(Self { pool })
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
        let mut tx = self.pool.begin().await.map_err(db_err)?;
        sqlx::query(&format!(
            "ALTER TABLE trajectories ALTER COLUMN provider SET DEFAULT '{}', \
             ALTER COLUMN batch_id SET DEFAULT '{}'::uuid, ALTER COLUMN revision SET DEFAULT 1, \
             ALTER COLUMN updated_at SET DEFAULT now()",
            provider.as_str(),
            Uuid::new_v4().hyphenated()
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
        tx.commit().await.map_err(db_err)
    }
}

#[async_trait]
impl Store for PgStore {
    async fn ping(&self) -> Result<(), StoreError> {
        sqlx::query("SELECT 1")
            .execute(&self.pool)
            .await
            .map_err(db_err)?;
        Ok(())
    }

    fn pool_status(&self) -> Option<super::PoolStatus> {
        let size = self.pool.size();
        let idle = u32::try_from(self.pool.num_idle()).unwrap_or(size);
        Some(super::PoolStatus { size, idle })
    }

    async fn put_provider(&self, p: &Provider) -> Result<(), StoreError> {
        let done = sqlx::query(
            "INSERT INTO providers (agb, name, signing_public_key, created_at) \
             VALUES ($1, $2, $3, $4::timestamptz) ON CONFLICT (agb) DO NOTHING",
        )
        .bind(p.agb.as_str())
        .bind(&p.name)
        .bind(&p.signing_public_key)
        .bind(format_ts(p.created_at)?)
        .execute(&self.pool)
        .await
        .map_err(db_err)?;
        if done.rows_affected() == 0 {
            return Err(StoreError::Conflict(format!(
                "provider {} is already registered",
                p.agb
            )));
        }
        Ok(())
    }

    async fn get_provider(&self, agb: AgbCode) -> Result<Option<Provider>, StoreError> {
        sqlx::query(&format!(
            "SELECT {} FROM providers WHERE agb = $1",
            *SELECT_PROVIDER_COLUMNS
        ))
        .bind(agb.as_str())
        .fetch_optional(&self.pool)
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
        .fetch_all(&self.pool)
        .await
        .map_err(db_err)?
        .iter()
        .map(provider_from_row)
        .collect()
    }

    async fn put_token(&self, t: &NewToken) -> Result<i64, StoreError> {
        let id: Option<i64> = sqlx::query_scalar(
            "INSERT INTO tokens (token_hash, role, scope, label, created_at) \
             VALUES ($1, $2, $3, $4, $5::timestamptz) ON CONFLICT (token_hash) DO NOTHING RETURNING id",
        )
        .bind(&t.token_hash[..])
        .bind(t.role.as_str())
        .bind(t.scope.as_deref())
        .bind(&t.label)
        .bind(format_ts(t.created_at)?)
        .fetch_optional(&self.pool)
        .await
        .map_err(db_err)?;
        id.ok_or_else(|| StoreError::Conflict("a token with this hash exists".into()))
    }

    async fn get_token(&self, token_hash: &[u8; 32]) -> Result<Option<TokenRecord>, StoreError> {
        let Some(r) = sqlx::query(&format!(
            "SELECT id, role, scope, label, {}, {} FROM tokens WHERE token_hash = $1",
            ts_column("created_at"),
            ts_column("revoked_at")
        ))
        .bind(&token_hash[..])
        .fetch_optional(&self.pool)
        .await
        .map_err(db_err)?
        else {
            return Ok(None);
        };
        let role: String = r.try_get("role").map_err(db_err)?;
        let revoked_at: Option<String> = r.try_get("revoked_at").map_err(db_err)?;
        Ok(Some(TokenRecord {
            id: r.try_get("id").map_err(db_err)?,
            role: Role::from_str(&role).map_err(|_| corrupt("tokens.role"))?,
            scope: r.try_get("scope").map_err(db_err)?,
            label: r.try_get("label").map_err(db_err)?,
            created_at: parse_ts(&r.try_get::<String, _>("created_at").map_err(db_err)?)?,
            revoked_at: revoked_at.as_deref().map(parse_ts).transpose()?,
        }))
    }

    async fn put_batch(&self, batch: &NewBatch) -> Result<PutBatch, StoreError> {
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

        let mut tx = self.pool.begin().await.map_err(db_err)?;

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
        tx.commit().await.map_err(db_err)?;

        Ok(PutBatch::Stored(BatchReceipt {
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
        }))
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
        .fetch_optional(&self.pool)
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
        .fetch_all(&self.pool)
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
                .fetch_one(&self.pool)
                .await
                .map_err(db_err)?,
            None => sqlx::query_scalar("SELECT count(*) FROM trajectories")
                .fetch_one(&self.pool)
                .await
                .map_err(db_err)?,
        };
        u64::try_from(n).map_err(|_| corrupt("count"))
    }

    async fn list_trajectories(&self, provider: AgbCode) -> Result<Vec<WireRecord>, StoreError> {
        sqlx::query(SELECT_TRAJECTORIES.as_str())
            .bind(provider.as_str())
            .fetch_all(&self.pool)
            .await
            .map_err(db_err)?
            .iter()
            .map(record_from_row)
            .collect()
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
