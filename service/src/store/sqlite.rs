//! The SQLite backend of the store: the embedded default for a single machine (`sqlite://PATH`).
//!
//! One file in WAL mode: readers never block the writer. Writes from this process are serialised by an
//! in-process lock and each write transaction starts `IMMEDIATE`, so two writers never meet inside
//! SQLite's lock upgrade (which fails at once instead of waiting); writers in other processes wait up to
//! the busy timeout.

use std::str::FromStr;
use std::sync::LazyLock;
use std::time::Duration;

use async_trait::async_trait;
use kwm_schemas::api::BatchReceipt;
use kwm_schemas::codes::{
    AgeBand, CarryOn, EndReason, GoalCount, Intensity, ProductCategory, Respondent, Satisfaction,
    TScore,
};
use kwm_schemas::{AgbCode, Month, Pseudonym, Role, WireRecord};
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteRow,
    SqliteSynchronous,
};
use sqlx::Row;
use time::OffsetDateTime;
use uuid::Uuid;

use super::{NewBatch, NewToken, Provider, PutBatch, Store, StoreError, TokenRecord};

/// The embedded migrations of this backend.
static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations/sqlite");

/// How long a statement waits for another process's write lock before giving up (then: `Unavailable`).
const BUSY_TIMEOUT: Duration = Duration::from_secs(10);

/// The record columns of `trajectories`, in bind order.
const RECORD_COLUMNS: [&str; 18] = [
    "trajectory",
    "client",
    "municipality",
    "target_group",
    "intensity",
    "product_category",
    "start_month",
    "end_month",
    "age_band",
    "end_reason",
    "satisfaction",
    "respondent",
    "carry_on_without_help",
    "problem_t_pre",
    "problem_t_post",
    "instrument",
    "goals_agreed",
    "goals_achieved",
];

/// Records per upsert statement: each statement is a round trip to the connection's worker thread, so
/// many rows go in one; 500 rows of 21 parameters stay far below SQLite's limit of 32,766.
const ROWS_PER_STATEMENT: usize = 500;

/// Inserts `rows` trajectories, or replaces a stored one when any value differs. Per row 21 parameters:
/// provider, the 18 record columns, batch id, time. A row whose values are all equal is not written,
/// so the statement's change count is new plus corrected rows. (No `RETURNING`: the driver hands each
/// returned row across threads one by one, which cost more than the inserts.)
///
/// The parameters are anonymous (`?`), not numbered (`?NNN`): the driver looks each numbered parameter
/// up by name, a linear search in SQLite, which makes a statement of thousands of them quadratic.
fn upsert_trajectories_sql(rows: usize) -> String {
    let columns = RECORD_COLUMNS.join(", ");
    let row = format!("(?, {}?, 1, ?)", "?, ".repeat(RECORD_COLUMNS.len()));
    let values = vec![row; rows].join(", ");
    let set: Vec<String> = RECORD_COLUMNS
        .iter()
        .skip(1)
        .map(|c| format!("{c} = excluded.{c}"))
        .collect();
    let differs: Vec<String> = RECORD_COLUMNS
        .iter()
        .skip(1)
        .map(|c| format!("trajectories.{c} IS NOT excluded.{c}"))
        .collect();
    format!(
        "INSERT INTO trajectories (provider, {columns}, batch_id, revision, updated_at) \
         VALUES {values} \
         ON CONFLICT (provider, trajectory) DO UPDATE SET {set}, batch_id = excluded.batch_id, \
         revision = trajectories.revision + 1, updated_at = excluded.updated_at \
         WHERE {differs}",
        set = set.join(", "),
        differs = differs.join(" OR "),
    )
}

/// How many of `rows` trajectories of a provider are stored already: ask before the upsert, and the
/// change count tells new from corrected.
fn count_existing_sql(rows: usize) -> String {
    let params = vec!["?"; rows].join(", ");
    format!("SELECT count(*) FROM trajectories WHERE provider = ? AND trajectory IN ({params})")
}

/// Binds one trajectory row in the column order of [`upsert_trajectories_sql`]: provider, the 18 record
/// columns, batch id, time.
fn bind_record<'q>(
    q: sqlx::query::Query<'q, sqlx::Sqlite, sqlx::sqlite::SqliteArguments<'q>>,
    provider: &'q str,
    r: &'q WireRecord,
    batch_id: &'q str,
    time: &'q str,
) -> sqlx::query::Query<'q, sqlx::Sqlite, sqlx::sqlite::SqliteArguments<'q>> {
    q.bind(provider)
        .bind(&r.trajectory.as_bytes()[..])
        .bind(&r.client.as_bytes()[..])
        .bind(r.municipality.to_string())
        .bind(r.target_group.as_str())
        .bind(r.intensity.map(|v| i64::from(v.get())))
        .bind(r.product_category.map(|v| i64::from(v.get())))
        .bind(i64::from(r.start_month.as_yyyymm()))
        .bind(r.end_month.map(|m| i64::from(m.as_yyyymm())))
        .bind(r.age_band.as_str())
        .bind(r.end_reason.map(|v| i64::from(v.code())))
        .bind(r.satisfaction.map(|v| i64::from(v.get())))
        .bind(r.respondent.map(Respondent::as_str))
        .bind(r.carry_on_without_help.map(CarryOn::as_str))
        .bind(r.problem_t_pre.map(|v| i64::from(v.get())))
        .bind(r.problem_t_post.map(|v| i64::from(v.get())))
        .bind(r.instrument.as_ref().map(|c| c.as_str()))
        .bind(r.goals_agreed.map(|v| i64::from(v.get())))
        .bind(r.goals_achieved.map(|v| i64::from(v.get())))
        .bind(batch_id)
        .bind(time)
}

/// The statements for a full chunk, built once; the last, shorter chunk of a batch builds its own.
static UPSERT_FULL_CHUNK: LazyLock<String> =
    LazyLock::new(|| upsert_trajectories_sql(ROWS_PER_STATEMENT));
static COUNT_EXISTING_FULL_CHUNK: LazyLock<String> =
    LazyLock::new(|| count_existing_sql(ROWS_PER_STATEMENT));

static SELECT_TRAJECTORIES: LazyLock<String> = LazyLock::new(|| {
    format!(
        "SELECT {} FROM trajectories WHERE provider = ?1 ORDER BY trajectory",
        RECORD_COLUMNS.join(", ")
    )
});

const BATCH_COLUMNS: &str = "provider, batch_id, key_id, content_digest, record_count, stored, \
                             corrected, unchanged, received_at";

#[derive(Debug)]
pub struct SqliteStore {
    pool: SqlitePool,
    /// Serialises this process's write transactions (see the module comment).
    writer: tokio::sync::Mutex<()>,
}

impl SqliteStore {
    /// Opens (creating file and parent directory if missing) the database at `sqlite://PATH` and
    /// runs the migrations. `sqlite::memory:` gives a private in-memory database.
    pub async fn connect(url: &str) -> Result<Self, StoreError> {
        let options = SqliteConnectOptions::from_str(url)
            .map_err(|e| StoreError::Other(anyhow::anyhow!("invalid SQLite URL: {e}")))?
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            // NORMAL in WAL mode: a commit survives a crash of the process; a power loss may lose the
            // last commits but never corrupts the file.
            .synchronous(SqliteSynchronous::Normal)
            .foreign_keys(true)
            .busy_timeout(BUSY_TIMEOUT);
        let in_memory = url.contains(":memory:") || url.contains("mode=memory");
        let pool_options = if in_memory {
            // An in-memory database lives as long as its one connection.
            SqlitePoolOptions::new()
                .max_connections(1)
                .min_connections(1)
                .idle_timeout(None)
                .max_lifetime(None)
        } else {
            if let Some(dir) = options.get_filename().parent() {
                if !dir.as_os_str().is_empty() {
                    std::fs::create_dir_all(dir).map_err(|e| {
                        StoreError::Other(anyhow::anyhow!(
                            "creating the directory {} for the database: {e}",
                            dir.display()
                        ))
                    })?;
                }
            }
            SqlitePoolOptions::new()
                .max_connections(8)
                .acquire_timeout(Duration::from_secs(15))
        };
        let pool = pool_options.connect_with(options).await.map_err(db_err)?;
        MIGRATOR.run(&pool).await.map_err(|e| {
            StoreError::Other(anyhow::anyhow!("running the SQLite migrations: {e}"))
        })?;
        Ok(Self {
            pool,
            writer: tokio::sync::Mutex::new(()),
        })
    }
}

impl SqliteStore {
    /// The fastest plain bulk path, for the ingest benchmark's ceiling only: multi-row inserts of new
    /// rows in one transaction, without the batch bookkeeping, conflict handling or counts of
    /// [`Store::put_batch`]. Not used by the service.
    pub async fn bulk_insert_raw(
        &self,
        provider: AgbCode,
        records: &[WireRecord],
    ) -> Result<(), StoreError> {
        let provider = provider.as_str();
        let batch_id = Uuid::new_v4().hyphenated().to_string();
        let now = format_ts(OffsetDateTime::now_utc())?;
        let sql = |rows: usize| {
            let row = format!("(?, {}?, 1, ?)", "?, ".repeat(RECORD_COLUMNS.len()));
            format!(
                "INSERT INTO trajectories (provider, {}, batch_id, revision, updated_at) VALUES {}",
                RECORD_COLUMNS.join(", "),
                vec![row; rows].join(", ")
            )
        };
        let full = sql(ROWS_PER_STATEMENT);
        let mut tx = self.pool.begin().await.map_err(db_err)?;
        // The rows the foreign keys of `trajectories` point at, as the service path has them too.
        sqlx::query(
            "INSERT INTO providers (agb, name, signing_public_key, created_at) VALUES (?1, 'raw', ?2, ?3)",
        )
        .bind(provider)
        .bind(&[0u8; 32][..])
        .bind(&now)
        .execute(&mut *tx)
        .await
        .map_err(db_err)?;
        sqlx::query(
            "INSERT INTO batches (provider, batch_id, key_id, content_digest, record_count, stored, \
             corrected, unchanged, received_at) VALUES (?1, ?2, '0000000000000000', ?3, 0, 0, 0, 0, ?4)",
        )
        .bind(provider)
        .bind(&batch_id)
        .bind(&[0u8; 32][..])
        .bind(&now)
        .execute(&mut *tx)
        .await
        .map_err(db_err)?;
        for chunk in records.chunks(ROWS_PER_STATEMENT) {
            let short;
            let text = if chunk.len() == ROWS_PER_STATEMENT {
                full.as_str()
            } else {
                short = sql(chunk.len());
                short.as_str()
            };
            let mut q = sqlx::query(text);
            for r in chunk {
                q = bind_record(q, provider, r, &batch_id, &now);
            }
            q.execute(&mut *tx).await.map_err(db_err)?;
        }
        tx.commit().await.map_err(db_err)
    }
}

#[async_trait]
impl Store for SqliteStore {
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
        let _w = self.writer.lock().await;
        let done = sqlx::query(
            "INSERT INTO providers (agb, name, signing_public_key, created_at) VALUES (?1, ?2, ?3, ?4) \
             ON CONFLICT (agb) DO NOTHING",
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
        sqlx::query(
            "SELECT agb, name, signing_public_key, created_at FROM providers WHERE agb = ?1",
        )
        .bind(agb.as_str())
        .fetch_optional(&self.pool)
        .await
        .map_err(db_err)?
        .map(|r| provider_from_row(&r))
        .transpose()
    }

    async fn list_providers(&self) -> Result<Vec<Provider>, StoreError> {
        sqlx::query("SELECT agb, name, signing_public_key, created_at FROM providers ORDER BY agb")
            .fetch_all(&self.pool)
            .await
            .map_err(db_err)?
            .iter()
            .map(provider_from_row)
            .collect()
    }

    async fn put_token(&self, t: &NewToken) -> Result<i64, StoreError> {
        let _w = self.writer.lock().await;
        let id: Option<i64> = sqlx::query_scalar(
            "INSERT INTO tokens (token_hash, role, scope, label, created_at) \
             VALUES (?1, ?2, ?3, ?4, ?5) ON CONFLICT (token_hash) DO NOTHING RETURNING id",
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
        let Some(r) = sqlx::query(
            "SELECT id, role, scope, label, created_at, revoked_at FROM tokens WHERE token_hash = ?1",
        )
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
        let record_count = u32::try_from(batch.records.len()).map_err(|_| {
            StoreError::Other(anyhow::anyhow!("a batch this large cannot be stored"))
        })?;

        let _w = self.writer.lock().await;
        let mut tx = self
            .pool
            .begin_with("BEGIN IMMEDIATE")
            .await
            .map_err(db_err)?;

        let existing = sqlx::query(&format!(
            "SELECT {BATCH_COLUMNS} FROM batches WHERE provider = ?1 AND batch_id = ?2"
        ))
        .bind(provider)
        .bind(&batch_id)
        .fetch_optional(&mut *tx)
        .await
        .map_err(db_err)?;
        if let Some(row) = existing {
            let original = receipt_from_row(&row)?;
            tx.rollback().await.map_err(db_err)?;
            return replay_or_conflict(original, &batch.content_digest);
        }

        // The batch row comes first: the trajectories reference it.
        sqlx::query(
            "INSERT INTO batches (provider, batch_id, key_id, content_digest, record_count, \
             stored, corrected, unchanged, received_at) VALUES (?1, ?2, ?3, ?4, ?5, 0, 0, 0, ?6)",
        )
        .bind(provider)
        .bind(&batch_id)
        .bind(batch.key_id.as_str())
        .bind(&batch.content_digest[..])
        .bind(i64::from(record_count))
        .bind(&received_text)
        .execute(&mut *tx)
        .await
        .map_err(db_err)?;

        let (mut stored, mut corrected) = (0u32, 0u32);
        for chunk in batch.records.chunks(ROWS_PER_STATEMENT) {
            let full = chunk.len() == ROWS_PER_STATEMENT;
            let (short_count, short_upsert);
            let (count_sql, upsert_sql) = if full {
                (
                    COUNT_EXISTING_FULL_CHUNK.as_str(),
                    UPSERT_FULL_CHUNK.as_str(),
                )
            } else {
                short_count = count_existing_sql(chunk.len());
                short_upsert = upsert_trajectories_sql(chunk.len());
                (short_count.as_str(), short_upsert.as_str())
            };

            let mut q = sqlx::query_scalar::<_, i64>(count_sql).bind(provider);
            for r in chunk {
                q = q.bind(&r.trajectory.as_bytes()[..]);
            }
            // A short chunk's statements are used once: not worth a place in the statement cache.
            let existing = q
                .persistent(full)
                .fetch_one(&mut *tx)
                .await
                .map_err(db_err)?;

            let mut q = sqlx::query(upsert_sql);
            for r in chunk {
                q = bind_record(q, provider, r, &batch_id, &received_text);
            }
            let written = q
                .persistent(full)
                .execute(&mut *tx)
                .await
                .map_err(db_err)?
                .rows_affected();

            // Trajectories are unique within a batch (the service checks), so these add up.
            let new = (chunk.len() as u64).checked_sub(u64::try_from(existing).unwrap_or(u64::MAX));
            let fixed = new.and_then(|n| written.checked_sub(n));
            let (Some(new), Some(fixed)) = (new, fixed) else {
                return Err(StoreError::Other(anyhow::anyhow!(
                    "inconsistent counts while storing a batch: a trajectory occurs twice in it"
                )));
            };
            stored += new as u32;
            corrected += fixed as u32;
        }
        let unchanged = record_count - stored - corrected;

        sqlx::query(
            "UPDATE batches SET stored = ?3, corrected = ?4, unchanged = ?5 \
             WHERE provider = ?1 AND batch_id = ?2",
        )
        .bind(provider)
        .bind(&batch_id)
        .bind(i64::from(stored))
        .bind(i64::from(corrected))
        .bind(i64::from(unchanged))
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
            "SELECT {BATCH_COLUMNS} FROM batches WHERE provider = ?1 AND batch_id = ?2"
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
        // rowid breaks ties between batches received in the same microsecond: later insert first.
        sqlx::query(&format!(
            "SELECT {BATCH_COLUMNS} FROM batches WHERE provider = ?1 \
             ORDER BY received_at DESC, rowid DESC"
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
        let n: i64 = match provider {
            Some(p) => sqlx::query_scalar("SELECT count(*) FROM trajectories WHERE provider = ?1")
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

/// Maps a driver error: lost connections and lock timeouts are `Unavailable` (retrying may help).
/// Only the SQLite result code and message are kept: they name constraints, never values.
fn db_err(e: sqlx::Error) -> StoreError {
    match e {
        sqlx::Error::PoolTimedOut
        | sqlx::Error::PoolClosed
        | sqlx::Error::WorkerCrashed
        | sqlx::Error::Io(_) => StoreError::Unavailable(e.to_string()),
        sqlx::Error::Database(d) => {
            let code = d.code().and_then(|c| c.parse::<i32>().ok()).unwrap_or(0);
            // SQLITE_BUSY (5) and SQLITE_LOCKED (6), with their extended codes.
            if matches!(code & 0xff, 5 | 6) {
                StoreError::Unavailable(format!("database is locked (SQLite code {code})"))
            } else {
                StoreError::Other(anyhow::anyhow!("SQLite error {code}: {}", d.message()))
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

/// The precision every store keeps, so that what is read back equals what was written.
fn truncate_to_micros(t: OffsetDateTime) -> OffsetDateTime {
    t.replace_nanosecond(t.nanosecond() / 1_000 * 1_000)
        .unwrap_or(t)
}

static TS_FORMAT: &[time::format_description::BorrowedFormatItem<'static>] = time::macros::format_description!(
    "[year]-[month]-[day]T[hour]:[minute]:[second].[subsecond digits:6]Z"
);

/// UTC, RFC 3339 with exactly six fractional digits: text order is time order.
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

fn provider_from_row(r: &SqliteRow) -> Result<Provider, StoreError> {
    let agb: String = r.try_get("agb").map_err(db_err)?;
    Ok(Provider {
        agb: agb.parse().map_err(|_| corrupt("providers.agb"))?,
        name: r.try_get("name").map_err(db_err)?,
        signing_public_key: r.try_get("signing_public_key").map_err(db_err)?,
        created_at: parse_ts(&r.try_get::<String, _>("created_at").map_err(db_err)?)?,
    })
}

fn receipt_from_row(r: &SqliteRow) -> Result<BatchReceipt, StoreError> {
    let provider: String = r.try_get("provider").map_err(db_err)?;
    let batch_id: String = r.try_get("batch_id").map_err(db_err)?;
    let key_id: String = r.try_get("key_id").map_err(db_err)?;
    let digest: Vec<u8> = r.try_get("content_digest").map_err(db_err)?;
    let count = |c: &str| -> Result<u32, StoreError> {
        let v: i64 = r.try_get(c).map_err(db_err)?;
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

/// Reads an optional small integer column into its domain type.
fn small<T>(
    r: &SqliteRow,
    column: &str,
    make: impl FnOnce(u8) -> Result<T, kwm_schemas::ParseError>,
) -> Result<Option<T>, StoreError> {
    let v: Option<i64> = r.try_get(column).map_err(db_err)?;
    v.map(|v| {
        u8::try_from(v)
            .ok()
            .and_then(|v| make(v).ok())
            .ok_or_else(|| corrupt(column))
    })
    .transpose()
}

/// Reads an optional text column into its domain type.
fn word<T: FromStr>(r: &SqliteRow, column: &str) -> Result<Option<T>, StoreError> {
    let v: Option<String> = r.try_get(column).map_err(db_err)?;
    v.map(|s| s.parse().map_err(|_| corrupt(column)))
        .transpose()
}

fn month(v: i64, column: &str) -> Result<Month, StoreError> {
    u32::try_from(v)
        .ok()
        .and_then(|v| Month::from_yyyymm(v).ok())
        .ok_or_else(|| corrupt(column))
}

fn pseudonym(r: &SqliteRow, column: &str) -> Result<Pseudonym, StoreError> {
    let b: Vec<u8> = r.try_get(column).map_err(db_err)?;
    Pseudonym::from_slice(&b).map_err(|_| corrupt(column))
}

fn record_from_row(r: &SqliteRow) -> Result<WireRecord, StoreError> {
    let end_month: Option<i64> = r.try_get("end_month").map_err(db_err)?;
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
