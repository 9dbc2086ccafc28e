//! The SQLite backend of the store: the embedded default for a single machine (`sqlite://PATH`).
//!
//! One file in WAL mode: readers never block the writer. Writes from this process are serialised by an
//! in-process lock and each write transaction starts `IMMEDIATE`, so two writers never meet inside
//! SQLite's lock upgrade (which fails at once instead of waiting); writers in other processes wait up to
//! the busy timeout.
//!
//! The change feed of `trajectories` (`trajectory_changes`) needs no barrier here: one write
//! transaction at a time takes its numbers and commits, so a reader never sees a number committed
//! while a lower one is still in flight; one read transaction gives the reader one snapshot.

use crate::store::RecordFn;
use std::str::FromStr;
use std::sync::{Arc, LazyLock};
use std::time::Duration;

use async_trait::async_trait;
use kwm_schemas::api::BatchReceipt;
use kwm_schemas::codes::{
    AgeBand, CarryOn, EndReason, GoalCount, Intensity, ProductCategory, Respondent, Satisfaction,
    TScore,
};
use kwm_schemas::region::Epsilon;
use kwm_schemas::{AgbCode, Month, Pseudonym, Role, WireRecord};
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteRow,
    SqliteSynchronous,
};
use sqlx::{Row, SqliteConnection};
use time::OffsetDateTime;
use uuid::Uuid;

use super::research::{format_date, parse_date};
use super::tether::{Tether, SELECT_IDENTITY};
use super::{
    check_new_round, data_version_of, round_retry_pause, ChangeSink, KeyCheck, NewBatch,
    NewRelease, NewRound, NewSession, NewToken, PrivacyCharge, Provider, PutBatch, PutRelease,
    PutRound, RegionalKeyCheck, RoundRecord, ServiceKeyKind, SortBuckets, Store, StoreError,
    StoredRelease, StoredRoundRelease, StoredServiceKey, TokenRecord, Withdrawn, NEWEST_CHANGE,
    NEWEST_ERASED, ROUND_ATTEMPTS,
};
use super::{
    ExtractRecord, NewProject, NewResearchAnswer, Project, PutResearch, ResearchKind,
    ResearchLogEntry,
};
use crate::audit::{AuditAction, AuditEntry, NewAuditEntry};

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

/// Inserts `rows` trajectories, or replaces a stored one when any value differs. Per row 22 parameters:
/// provider, the 18 record columns, batch id, carrier, time. A row whose values are all equal is not written,
/// so the statement's change count is new plus corrected rows. (No `RETURNING`: the driver hands each
/// returned row across threads one by one, which cost more than the inserts.)
///
/// The parameters are anonymous (`?`), not numbered (`?NNN`): the driver looks each numbered parameter
/// up by name, a linear search in SQLite, which makes a statement of thousands of them quadratic.
fn upsert_trajectories_sql(rows: usize) -> String {
    let columns = RECORD_COLUMNS.join(", ");
    let row = format!("(?, {}?, ?, 1, ?)", "?, ".repeat(RECORD_COLUMNS.len()));
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
        "INSERT INTO trajectories (provider, {columns}, batch_id, carrier, revision, updated_at) \
         VALUES {values} \
         ON CONFLICT (provider, trajectory) DO UPDATE SET {set}, batch_id = excluded.batch_id, \
         carrier = excluded.carrier, revision = trajectories.revision + 1, \
         updated_at = excluded.updated_at \
         WHERE {differs}",
        set = set.join(", "),
        differs = differs.join(" OR "),
    )
}

/// Makes the batch (`?` 1 and 3) the carrier of those of `rows` trajectories of a provider (`?` 2) that it
/// carried unchanged: the upsert did not touch them (it writes only new and changed rows, and sets their
/// carrier itself).
fn carry_unchanged_sql(rows: usize) -> String {
    let params = vec!["?"; rows].join(", ");
    format!(
        "UPDATE trajectories SET carrier = ? WHERE provider = ? AND carrier <> ? \
         AND trajectory IN ({params})"
    )
}

/// How many of `rows` trajectories of a provider are stored already: ask before the upsert, and the
/// change count tells new from corrected.
fn count_existing_sql(rows: usize) -> String {
    let params = vec!["?"; rows].join(", ");
    format!("SELECT count(*) FROM trajectories WHERE provider = ? AND trajectory IN ({params})")
}

/// Binds one trajectory row in the column order of [`upsert_trajectories_sql`]: provider, the 18 record
/// columns, batch id, carrier (the same batch), time.
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
        .bind(batch_id)
        .bind(time)
}

/// The statements for a full chunk, built once; the last, shorter chunk of a batch builds its own.
static UPSERT_FULL_CHUNK: LazyLock<String> =
    LazyLock::new(|| upsert_trajectories_sql(ROWS_PER_STATEMENT));
static COUNT_EXISTING_FULL_CHUNK: LazyLock<String> =
    LazyLock::new(|| count_existing_sql(ROWS_PER_STATEMENT));
static CARRY_UNCHANGED_FULL_CHUNK: LazyLock<String> =
    LazyLock::new(|| carry_unchanged_sql(ROWS_PER_STATEMENT));

static SELECT_TRAJECTORIES_PAGE: LazyLock<String> = LazyLock::new(|| {
    format!(
        "SELECT {} FROM trajectories WHERE provider = ?1 AND (?2 IS NULL OR trajectory > ?2) \
         ORDER BY trajectory LIMIT ?3",
        RECORD_COLUMNS.join(", ")
    )
});

/// Rowids per statement of [`Store::list_trajectories_between`].
const ROWIDS_PER_CHUNK: i64 = 16_384;

/// Every provider's trajectories in a range of rowids (`?1..?2`) overlapping a range of months (`?3`
/// from, `?4` to, as yyyymm), as ONE text value: a line per row, the fields separated by commas
/// ([`parse_between_line`] reads them). The driver copies every value of every result row into memory
/// it allocates and hands each row to the caller across threads, which costs more than SQLite's own
/// work: one value per few thousand rows instead of 19 per row reads 5M rows about five times faster.
/// (Every text column is a code that never holds a comma or a line break: the CHECKs see to that.)
static SELECT_TRAJECTORIES_BETWEEN: LazyLock<String> = LazyLock::new(|| {
    format!(
        "SELECT {} FROM trajectories \
         WHERE rowid >= ?1 AND rowid < ?2 AND start_month <= ?4 \
         AND (end_month IS NULL OR end_month >= ?3)",
        *CONCAT_LINES
    )
});

/// The lines of [`SELECT_TRAJECTORIES_BETWEEN`] for every row of one batch (`?1` provider, `?2`
/// batch id), by the index on (provider, batch_id).
static SELECT_TRAJECTORIES_OF_BATCH: LazyLock<String> = LazyLock::new(|| {
    format!(
        "SELECT {} FROM trajectories WHERE provider = ?1 AND batch_id = ?2",
        *CONCAT_LINES
    )
});

/// The rows of a query on `trajectories` as one text value, a line per row (see
/// [`SELECT_TRAJECTORIES_BETWEEN`]).
static CONCAT_LINES: LazyLock<String> = LazyLock::new(|| {
    let fields: Vec<String> = std::iter::once("provider".to_owned())
        .chain(RECORD_COLUMNS.iter().map(|c| match *c {
            "trajectory" | "client" => format!("hex({c})"),
            c => format!("coalesce({c}, '')"),
        }))
        .collect();
    format!("group_concat({}, char(10))", fields.join(" || ',' || "))
});

/// The months (yyyymm) every stored trajectory overlaps: the bounds the table's CHECKs allow.
const ALL_MONTHS: (i64, i64) = (190001, 299912);

const BATCH_COLUMNS: &str = "provider, batch_id, key_id, content_digest, record_count, stored, \
                             corrected, unchanged, received_at";

#[derive(Debug)]
pub struct SqliteStore {
    pool: SqlitePool,
    /// Keeps the pool on the database file it opened.
    tether: Arc<Tether>,
    /// Serialises this process's write transactions (see the module comment).
    writer: tokio::sync::Mutex<()>,
}

/// Creates the database's directory (0700) and file (0600) if missing, and takes group and other
/// access away from an existing file: the database holds pseudonymised records. SQLite gives its
/// `-wal` and `-shm` files the database file's mode.
fn private_database_file(path: &std::path::Path) -> Result<(), StoreError> {
    use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
    let fail = |what: &str, e: std::io::Error| {
        StoreError::Other(anyhow::anyhow!("{what} {}: {e}", path.display()))
    };
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        if !dir.exists() {
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(dir)
                .map_err(|e| fail("creating the directory for the database", e))?;
        }
    }
    match std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
    {
        Ok(_) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
            let mode = std::fs::metadata(path)
                .map_err(|e| fail("reading the mode of", e))?
                .permissions()
                .mode();
            if mode & 0o077 != 0 {
                std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode & 0o700))
                    .map_err(|e| fail("making the database private:", e))?;
            }
            Ok(())
        }
        Err(e) => Err(fail("creating the database", e)),
    }
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
            // Deleted content (withdrawn rows) is overwritten with zeros, not left in free pages.
            .pragma("secure_delete", "ON")
            .busy_timeout(BUSY_TIMEOUT);
        let in_memory = url.contains(":memory:") || url.contains("mode=memory");
        let path = options.get_filename().to_owned();
        let tether = Arc::new(Tether::new(format!("the database file {}", path.display())));
        let pool_options = if in_memory {
            // An in-memory database lives as long as its one connection.
            SqlitePoolOptions::new()
                .max_connections(1)
                .min_connections(1)
                .idle_timeout(None)
                .max_lifetime(None)
        } else {
            private_database_file(options.get_filename())?;
            SqlitePoolOptions::new()
                .max_connections(8)
                .acquire_timeout(Duration::from_secs(15))
        };
        let hook = tether.clone();
        let pool = pool_options
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
        if !in_memory {
            tether.hold_file(&path)?;
        }
        MIGRATOR.run(&pool).await.map_err(|e| {
            StoreError::Other(anyhow::anyhow!("running the SQLite migrations: {e}"))
        })?;
        let identity: String = sqlx::query_scalar(SELECT_IDENTITY)
            .fetch_one(&pool)
            .await
            .map_err(db_err)?;
        tether.hold_identity(identity);
        Ok(Self {
            pool,
            tether,
            writer: tokio::sync::Mutex::new(()),
        })
    }

    /// The pool, while it still reaches the database this store opened (see [`Tether`]).
    fn pool(&self) -> Result<&SqlitePool, StoreError> {
        self.tether.check()?;
        Ok(&self.pool)
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
            let row = format!("(?, {}?, ?, 1, ?)", "?, ".repeat(RECORD_COLUMNS.len()));
            format!(
                "INSERT INTO trajectories (provider, {}, batch_id, carrier, revision, updated_at) \
                 VALUES {}",
                RECORD_COLUMNS.join(", "),
                vec![row; rows].join(", ")
            )
        };
        let full = sql(ROWS_PER_STATEMENT);
        let mut tx = self.pool()?.begin().await.map_err(db_err)?;
        // The rows the foreign keys of `trajectories` point at, as the service path has them too (a
        // provider loaded before keeps its row).
        sqlx::query(
            "INSERT INTO providers (agb, name, signing_public_key, created_at) VALUES (?1, 'raw', ?2, ?3) \
             ON CONFLICT (agb) DO NOTHING",
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
        if !records.is_empty() {
            log_batch_change(&mut tx, provider, &batch_id).await?;
        }
        tx.commit().await.map_err(db_err)
    }
}

impl SqliteStore {
    /// One attempt of [`Store::put_round`] (checked already), with the release bodies as JSON text.
    async fn try_put_round(
        &self,
        round: &NewRound,
        bodies: &[String],
    ) -> Result<PutRound, TxError> {
        let id = round.id.hyphenated().to_string();
        let created_at = truncate_to_micros(round.created_at);
        let created_text = format_ts(created_at)?;
        let _w = self.writer.lock().await;
        // IMMEDIATE: the write lock is taken now, so rounds of every period, in this process or
        // another, take turns: the newest version read here is still the newest at commit, and the
        // spend read by each charge is the committed one.
        let mut tx = self.pool()?.begin_with("BEGIN IMMEDIATE").await?;

        let newest = sqlx::query(
            "SELECT id, version, data_version FROM rounds WHERE period = ?1 \
             ORDER BY version DESC LIMIT 1",
        )
        .bind(&round.period)
        .fetch_optional(&mut *tx)
        .await?;
        let mut version: u32 = 1;
        if let Some(row) = newest {
            let newest_id: String = row.try_get("id")?;
            let newest_version: i64 = row.try_get("version")?;
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

        // Years in ascending order (checked): the same order as on PostgreSQL.
        for &(year, rho) in &round.charges {
            sqlx::query(
                "INSERT INTO privacy_budget (data_year, spent_nanos) VALUES (?1, 0) \
                 ON CONFLICT (data_year) DO NOTHING",
            )
            .bind(i64::from(year))
            .execute(&mut *tx)
            .await?;
            // `cap - rho` cannot overflow (cap >= 0, rho > 0), and a spend at most `cap - rho` plus
            // `rho` stays at most `cap`. A negative bound refuses every spend.
            let charged: Option<i64> = sqlx::query_scalar(
                "UPDATE privacy_budget SET spent_nanos = spent_nanos + ?2 \
                 WHERE data_year = ?1 AND spent_nanos <= ?3 RETURNING spent_nanos",
            )
            .bind(i64::from(year))
            .bind(rho)
            .bind(round.cap_nanos - rho)
            .fetch_optional(&mut *tx)
            .await?;
            if charged.is_none() {
                let spent: i64 = sqlx::query_scalar(
                    "SELECT spent_nanos FROM privacy_budget WHERE data_year = ?1",
                )
                .bind(i64::from(year))
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
            let inserted = sqlx::query(
                "INSERT INTO privacy_charges (data_year, rho_nanos, subject_kind, subject_id, at) \
                 VALUES (?1, ?2, 'round', ?3, ?4)",
            )
            .bind(i64::from(year))
            .bind(rho)
            .bind(&id)
            .bind(&created_text)
            .execute(&mut *tx)
            .await;
            if let Err(e) = inserted {
                // The round id charged this year before: the round is stored already.
                return Err(id_conflict(e, || format!("round {id} exists already")));
            }
        }

        let audit = append_audit_in(&mut tx, &round.audit).await?;
        let inserted = sqlx::query(
            "INSERT INTO rounds (id, period, version, data_version, published_by, created_at, \
             audit_seq) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
        )
        .bind(&id)
        .bind(&round.period)
        .bind(i64::from(version))
        .bind(&round.data_version)
        .bind(&round.published_by)
        .bind(&created_text)
        .bind(audit.seq)
        .execute(&mut *tx)
        .await;
        if let Err(e) = inserted {
            return Err(id_conflict(e, || format!("round {id} exists already")));
        }
        let mut releases = Vec::with_capacity(round.releases.len());
        for (r, body) in round.releases.iter().zip(bodies) {
            let release_id = r.id.hyphenated().to_string();
            let inserted = sqlx::query(
                "INSERT INTO round_releases (id, round_id, scope, body) VALUES (?1, ?2, ?3, ?4)",
            )
            .bind(&release_id)
            .bind(&id)
            .bind(&r.scope)
            .bind(body)
            .execute(&mut *tx)
            .await;
            if let Err(e) = inserted {
                return Err(id_conflict(e, || {
                    format!("round release {release_id} exists already")
                }));
            }
            releases.push((r.scope.clone(), r.id));
        }
        tx.commit().await?;

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
impl Store for SqliteStore {
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
        let _w = self.writer.lock().await;
        // One write transaction: no other process registers the same key in between.
        let mut tx = self
            .pool()?
            .begin_with("BEGIN IMMEDIATE")
            .await
            .map_err(db_err)?;
        let holder: Option<String> =
            sqlx::query_scalar("SELECT agb FROM providers WHERE signing_public_key = ?1 LIMIT 1")
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
            "INSERT INTO providers (agb, name, signing_public_key, created_at) VALUES (?1, ?2, ?3, ?4) \
             ON CONFLICT (agb) DO NOTHING",
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
        let _w = self.writer.lock().await;
        let mut tx = self
            .pool()?
            .begin_with("BEGIN IMMEDIATE")
            .await
            .map_err(db_err)?;
        let holder: Option<String> = sqlx::query_scalar(
            "SELECT agb FROM providers WHERE signing_public_key = ?1 AND agb <> ?2 LIMIT 1",
        )
        .bind(key)
        .bind(agb.as_str())
        .fetch_optional(&mut *tx)
        .await
        .map_err(db_err)?;
        if let Some(h) = holder {
            return Err(super::key_taken(&h));
        }
        let done = sqlx::query("UPDATE providers SET signing_public_key = ?1 WHERE agb = ?2")
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
        sqlx::query(
            "SELECT agb, name, signing_public_key, created_at FROM providers WHERE agb = ?1",
        )
        .bind(agb.as_str())
        .fetch_optional(self.pool()?)
        .await
        .map_err(db_err)?
        .map(|r| provider_from_row(&r))
        .transpose()
    }

    async fn list_providers(&self) -> Result<Vec<Provider>, StoreError> {
        sqlx::query("SELECT agb, name, signing_public_key, created_at FROM providers ORDER BY agb")
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
        let _w = self.writer.lock().await;
        let mut tx = self
            .pool()?
            .begin_with("BEGIN IMMEDIATE")
            .await
            .map_err(db_err)?;
        let id: Option<i64> = sqlx::query_scalar(
            "INSERT INTO tokens (token_hash, role, scope, label, created_at) \
             VALUES (?1, ?2, ?3, ?4, ?5) ON CONFLICT (token_hash) DO NOTHING RETURNING id",
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
        sqlx::query(
            "SELECT id, role, scope, label, created_at, revoked_at FROM tokens WHERE token_hash = ?1",
        )
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
        let record_count = u32::try_from(batch.records.len()).map_err(|_| {
            StoreError::Other(anyhow::anyhow!("a batch this large cannot be stored"))
        })?;

        let _w = self.writer.lock().await;
        let mut tx = self
            .pool()?
            .begin_with("BEGIN IMMEDIATE")
            .await
            .map_err(db_err)?;

        // A withdrawn batch stays withdrawn: re-posting it must not bring its rows back.
        let withdrawn: Option<String> = sqlx::query_scalar(
            "SELECT at FROM withdrawn_batches WHERE provider = ?1 AND batch_id = ?2",
        )
        .bind(provider)
        .bind(&batch_id)
        .fetch_optional(&mut *tx)
        .await
        .map_err(db_err)?;
        if let Some(at) = withdrawn {
            tx.rollback().await.map_err(db_err)?;
            return Ok(PutBatch::Withdrawn { at: parse_ts(&at)? });
        }

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
            let (short_count, short_upsert, short_carry);
            let (count_sql, upsert_sql, carry_sql) = if full {
                (
                    COUNT_EXISTING_FULL_CHUNK.as_str(),
                    UPSERT_FULL_CHUNK.as_str(),
                    CARRY_UNCHANGED_FULL_CHUNK.as_str(),
                )
            } else {
                short_count = count_existing_sql(chunk.len());
                short_upsert = upsert_trajectories_sql(chunk.len());
                short_carry = carry_unchanged_sql(chunk.len());
                (
                    short_count.as_str(),
                    short_upsert.as_str(),
                    short_carry.as_str(),
                )
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

            let mut q = sqlx::query(carry_sql)
                .bind(&batch_id)
                .bind(provider)
                .bind(&batch_id);
            for r in chunk {
                q = q.bind(&r.trajectory.as_bytes()[..]);
            }
            q.persistent(full).execute(&mut *tx).await.map_err(db_err)?;

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
            "SELECT {BATCH_COLUMNS} FROM batches WHERE provider = ?1 AND batch_id = ?2"
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
        // rowid breaks ties between batches received in the same microsecond: later insert first.
        sqlx::query(&format!(
            "SELECT {BATCH_COLUMNS} FROM batches WHERE provider = ?1 \
             ORDER BY received_at DESC, rowid DESC"
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
        let n: i64 = match provider {
            Some(p) => sqlx::query_scalar("SELECT count(*) FROM trajectories WHERE provider = ?1")
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
        // One read transaction: every chunk sees the same snapshot (WAL: writers go on meanwhile).
        let mut tx = self.pool()?.begin().await.map_err(db_err)?;
        let mut out = SortBuckets::default();
        read_between(
            &mut tx,
            i64::from(from.as_yyyymm()),
            i64::from(to.as_yyyymm()),
            |provider, record| out.push((provider, record)),
        )
        .await?;
        tx.rollback().await.map_err(db_err)?;
        Ok(out.into_sorted())
    }

    async fn trajectory_changes(
        &self,
        since: i64,
        sink: &mut dyn ChangeSink,
    ) -> Result<i64, StoreError> {
        // Cheap first look, outside a transaction: nothing new, nothing to read.
        let newest: i64 = sqlx::query_scalar(NEWEST_CHANGE)
            .fetch_one(self.pool()?)
            .await
            .map_err(db_err)?;
        check_mark(since, newest)?;
        if newest == since {
            return Ok(since);
        }
        // One read transaction, one snapshot: its first statement fixes it (WAL), and SQLite runs one
        // write transaction at a time, so every change numbered up to the mark is in it and no part
        // of a later one.
        let mut tx = self.pool()?.begin().await.map_err(db_err)?;
        let mark: i64 = sqlx::query_scalar(NEWEST_CHANGE)
            .fetch_one(&mut *tx)
            .await
            .map_err(db_err)?;
        check_mark(since, mark)?;
        if since > 0 {
            let erased: i64 = sqlx::query_scalar(NEWEST_ERASED)
                .fetch_one(&mut *tx)
                .await
                .map_err(db_err)?;
            // A removal after the mark lost its pseudonym: the reader must load from 0.
            if erased > since {
                return Err(StoreError::UnknownMark {
                    since,
                    newest: mark,
                });
            }
        }
        if since == 0 {
            read_between(&mut tx, ALL_MONTHS.0, ALL_MONTHS.1, |provider, record| {
                sink.upsert(provider, record)
            })
            .await?;
        } else {
            let removed = sqlx::query(
                "SELECT provider, trajectory FROM trajectory_changes \
                 WHERE seq > ?1 AND seq <= ?2 AND trajectory IS NOT NULL ORDER BY seq",
            )
            .bind(since)
            .bind(mark)
            .fetch_all(&mut *tx)
            .await
            .map_err(db_err)?;
            for r in &removed {
                let provider: &str = r.try_get(0).map_err(db_err)?;
                let provider = provider
                    .parse()
                    .map_err(|_| corrupt("trajectory_changes.provider"))?;
                sink.removed(provider, &pseudonym(r, 1, "trajectory_changes.trajectory")?);
            }
            // A batch id can come back after its batch was withdrawn: each batch is read once.
            let batches: Vec<(String, String)> = sqlx::query_as(
                "SELECT provider, batch_id FROM trajectory_changes \
                 WHERE seq > ?1 AND seq <= ?2 AND batch_id IS NOT NULL \
                 GROUP BY provider, batch_id ORDER BY min(seq)",
            )
            .bind(since)
            .bind(mark)
            .fetch_all(&mut *tx)
            .await
            .map_err(db_err)?;
            let mut last = None;
            for (provider, batch_id) in &batches {
                let text: Option<String> =
                    sqlx::query_scalar(SELECT_TRAJECTORIES_OF_BATCH.as_str())
                        .bind(provider)
                        .bind(batch_id)
                        .fetch_one(&mut *tx)
                        .await
                        .map_err(db_err)?;
                // NULL: the batch has no rows left.
                for line in text.as_deref().map(|t| t.split('\n')).into_iter().flatten() {
                    let (provider, record) = parse_between_line(line, &mut last)?;
                    sink.upsert(provider, record);
                }
            }
        }
        tx.rollback().await.map_err(db_err)?;
        Ok(mark)
    }

    async fn prune_change_feed(&self, before: OffsetDateTime) -> Result<u64, StoreError> {
        let done = sqlx::query(
            "UPDATE trajectory_changes SET trajectory = NULL \
             WHERE trajectory IS NOT NULL AND at < ?1",
        )
        .bind(before.unix_timestamp())
        .execute(self.pool()?)
        .await
        .map_err(db_err)?;
        Ok(done.rows_affected())
    }

    async fn erase_deleted(&self) -> Result<(), StoreError> {
        // A checkpoint waits for no reader; TRUNCATE then empties the log if no reader is in it, and a
        // busy answer only means the next run does it.
        let _w = self.writer.lock().await;
        sqlx::query("PRAGMA wal_checkpoint(TRUNCATE)")
            .execute(self.pool()?)
            .await
            .map_err(db_err)?;
        Ok(())
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
        let id = release.id.hyphenated().to_string();
        let created_at = truncate_to_micros(release.created_at);
        let body = serde_json::to_string(&release.body)
            .map_err(|e| StoreError::Other(anyhow::anyhow!("serialising a release: {e}")))?;

        let _w = self.writer.lock().await;
        // IMMEDIATE: the write lock is taken now, so the check below and the charge are one step for
        // every writer, in this process or another.
        let mut tx = self
            .pool()?
            .begin_with("BEGIN IMMEDIATE")
            .await
            .map_err(db_err)?;

        let existing = sqlx::query(&format!(
            "SELECT {RELEASE_COLUMNS} FROM releases \
             WHERE scope = ?1 AND period = ?2 AND data_version = ?3"
        ))
        .bind(&release.scope)
        .bind(&release.period)
        .bind(&release.data_version)
        .fetch_optional(&mut *tx)
        .await
        .map_err(db_err)?;
        if let Some(row) = existing {
            let existing = release_from_row(&row)?;
            tx.rollback().await.map_err(db_err)?;
            return Ok(PutRelease::Existing(existing));
        }

        for partition in &partitions {
            sqlx::query(
                "INSERT INTO budget (partition, spent_nanos) VALUES (?1, 0) \
                 ON CONFLICT (partition) DO NOTHING",
            )
            .bind(partition)
            .execute(&mut *tx)
            .await
            .map_err(db_err)?;
            // `cap - epsilon` is at least 0 (checked above), and no sum can overflow.
            let charged: Option<i64> = sqlx::query_scalar(
                "UPDATE budget SET spent_nanos = spent_nanos + ?2 \
                 WHERE partition = ?1 AND spent_nanos <= ?3 RETURNING spent_nanos",
            )
            .bind(partition)
            .bind(epsilon)
            .bind(cap - epsilon)
            .fetch_optional(&mut *tx)
            .await
            .map_err(db_err)?;
            if charged.is_none() {
                let spent: i64 =
                    sqlx::query_scalar("SELECT spent_nanos FROM budget WHERE partition = ?1")
                        .bind(partition)
                        .fetch_one(&mut *tx)
                        .await
                        .map_err(db_err)?;
                tx.rollback().await.map_err(db_err)?;
                return Ok(PutRelease::BudgetExhausted {
                    partition: partition.clone(),
                    spent: spent_epsilon(spent)?.ok_or_else(|| corrupt("budget.spent_nanos"))?,
                    cap: release.cap,
                });
            }
        }

        let version: i64 = sqlx::query_scalar(
            "SELECT coalesce(max(version), 0) + 1 FROM releases WHERE scope = ?1 AND period = ?2",
        )
        .bind(&release.scope)
        .bind(&release.period)
        .fetch_one(&mut *tx)
        .await
        .map_err(db_err)?;
        let version = u32::try_from(version).map_err(|_| corrupt("releases.version"))?;
        let inserted = sqlx::query(
            "INSERT INTO releases (id, scope, period, version, data_version, epsilon_nanos, \
             created_at, body) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
        )
        .bind(&id)
        .bind(&release.scope)
        .bind(&release.period)
        .bind(i64::from(version))
        .bind(&release.data_version)
        .bind(epsilon)
        .bind(format_ts(created_at)?)
        .bind(&body)
        .execute(&mut *tx)
        .await;
        if let Err(e) = inserted {
            // Nothing else writes while this transaction holds the write lock: the only clash left
            // is the release id itself.
            let unique = is_unique_violation(&e);
            let err = db_err(e);
            tx.rollback().await.map_err(db_err)?;
            return Err(if unique {
                StoreError::Conflict(format!("release {id} exists already"))
            } else {
                err
            });
        }
        sqlx::query(
            "INSERT INTO release_partitions (release_id, partition) \
             SELECT ?1, value FROM json_each(?2)",
        )
        .bind(&id)
        .bind(json_array(&partitions)?)
        .execute(&mut *tx)
        .await
        .map_err(db_err)?;
        tx.commit().await.map_err(db_err)?;

        Ok(PutRelease::Stored(StoredRelease {
            id: release.id,
            scope: release.scope.clone(),
            period: release.period.clone(),
            version,
            data_version: release.data_version.clone(),
            epsilon: release.epsilon,
            created_at,
            body: release.body.clone(),
        }))
    }

    async fn get_release(&self, id: Uuid) -> Result<Option<StoredRelease>, StoreError> {
        sqlx::query(&format!(
            "SELECT {RELEASE_COLUMNS} FROM releases WHERE id = ?1"
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
            "SELECT {RELEASE_COLUMNS} FROM releases WHERE scope = ?1 AND period = ?2 \
             ORDER BY version DESC LIMIT 1"
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
             (SELECT id AS id, data_version FROM releases \
              WHERE scope = ?1 AND period = ?2 ORDER BY version DESC LIMIT 1) AS h ON true",
        )
        .bind(scope)
        .bind(period)
        .fetch_one(self.pool()?)
        .await
        .map_err(db_err)?;
        let head = match (id, version) {
            (Some(id), Some(v)) => {
                let id = Uuid::parse_str(&id)
                    .map_err(|e| StoreError::Other(anyhow::anyhow!("release id {id:?}: {e}")))?;
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
        // rowid breaks ties between releases created in the same microsecond: later insert first.
        sqlx::query(&format!(
            "SELECT {RELEASE_COLUMNS} FROM releases \
             WHERE (?1 IS NULL OR scope = ?1) AND (?2 IS NULL OR period = ?2) \
             ORDER BY created_at DESC, rowid DESC"
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
            "SELECT partition, spent_nanos FROM budget \
             WHERE partition IN (SELECT value FROM json_each(?1))",
        )
        .bind(json_array(partitions)?)
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
        let rows = sqlx::query("SELECT partition, spent_nanos FROM budget ORDER BY partition")
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
        let _w = self.writer.lock().await;
        let mut tx = self
            .pool()?
            .begin_with("BEGIN IMMEDIATE")
            .await
            .map_err(db_err)?;
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
            "SELECT {ROUND_RELEASE_COLUMNS} FROM round_releases rr JOIN rounds r ON r.id = rr.round_id \
             WHERE rr.id = ?1"
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
            "SELECT {ROUND_RELEASE_COLUMNS} FROM round_releases rr JOIN rounds r ON r.id = rr.round_id \
             WHERE rr.round_id = \
               (SELECT id FROM rounds WHERE period = ?2 ORDER BY version DESC LIMIT 1) \
             AND rr.scope = ?1"
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
            "SELECT rr.id FROM round_releases rr \
             WHERE rr.round_id = \
               (SELECT id FROM rounds WHERE period = ?2 ORDER BY version DESC LIMIT 1) \
             AND rr.scope = ?1",
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
        let asked = serde_json::to_string(years)
            .map_err(|e| StoreError::Other(anyhow::anyhow!("serialising a list: {e}")))?;
        let rows = sqlx::query(
            "SELECT data_year, spent_nanos FROM privacy_budget \
             WHERE data_year IN (SELECT value FROM json_each(?1))",
        )
        .bind(asked)
        .fetch_all(self.pool()?)
        .await
        .map_err(db_err)?;
        let mut spent = std::collections::HashMap::with_capacity(rows.len());
        for r in &rows {
            let year: i64 = r.try_get("data_year").map_err(db_err)?;
            let nanos: i64 = r.try_get("spent_nanos").map_err(db_err)?;
            spent.insert(data_year(year, "privacy_budget.data_year")?, nanos);
        }
        Ok(years
            .iter()
            .map(|y| spent.get(y).copied().unwrap_or(0))
            .collect())
    }

    async fn list_privacy_charges(&self) -> Result<Vec<PrivacyCharge>, StoreError> {
        sqlx::query(
            "SELECT data_year, rho_nanos, subject_kind, subject_id, at FROM privacy_charges \
             ORDER BY data_year, at, id",
        )
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
                at: parse_ts(&r.try_get::<String, _>("at").map_err(db_err)?)?,
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
        let rows = match provider {
            Some(p) => sqlx::query(&format!(
                "SELECT {AUDIT_COLUMNS} FROM audit_log WHERE provider = ?1 AND seq > ?2 \
                 ORDER BY seq LIMIT ?3"
            ))
            .bind(p.as_str())
            .bind(after)
            .bind(i64::from(limit))
            .fetch_all(self.pool()?)
            .await
            .map_err(db_err)?,
            None => sqlx::query(&format!(
                "SELECT {AUDIT_COLUMNS} FROM audit_log WHERE seq > ?1 ORDER BY seq LIMIT ?2"
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
        let _w = self.writer.lock().await;
        let mut tx = self
            .pool()?
            .begin_with("BEGIN IMMEDIATE")
            .await
            .map_err(db_err)?;
        let known: Option<i64> =
            sqlx::query_scalar("SELECT 1 FROM batches WHERE provider = ?1 AND batch_id = ?2")
                .bind(provider.as_str())
                .bind(&batch_id)
                .fetch_optional(&mut *tx)
                .await
                .map_err(db_err)?;
        if known.is_none() {
            tx.rollback().await.map_err(db_err)?;
            return Err(StoreError::NotFound);
        }
        // Only the rows this batch is the newest carrier of go: a later batch that carried a row
        // (changed or not) keeps it. The change feed first, from the rows about to go.
        sqlx::query(
            "INSERT INTO trajectory_changes (provider, trajectory) \
             SELECT provider, trajectory FROM trajectories WHERE provider = ?1 AND carrier = ?2",
        )
        .bind(provider.as_str())
        .bind(&batch_id)
        .execute(&mut *tx)
        .await
        .map_err(db_err)?;
        let trajectories =
            sqlx::query("DELETE FROM trajectories WHERE provider = ?1 AND carrier = ?2")
                .bind(provider.as_str())
                .bind(&batch_id)
                .execute(&mut *tx)
                .await
                .map_err(db_err)?
                .rows_affected();
        let batches = move_rows_and_forget(&mut tx, provider, &batch_id).await?;
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
        let _w = self.writer.lock().await;
        let mut tx = self
            .pool()?
            .begin_with("BEGIN IMMEDIATE")
            .await
            .map_err(db_err)?;
        let gone: Option<(String, String)> = sqlx::query_as(
            "DELETE FROM trajectories WHERE provider = ?1 AND trajectory = ?2 \
             RETURNING batch_id, carrier",
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
        sqlx::query("INSERT INTO trajectory_changes (provider, trajectory) VALUES (?1, ?2)")
            .bind(provider.as_str())
            .bind(&trajectory.as_bytes()[..])
            .execute(&mut *tx)
            .await
            .map_err(db_err)?;
        // A batch left without rows (none it wrote, none it carried) is withdrawn with it.
        let mut batches = 0;
        let ids = if batch_id == carrier {
            vec![batch_id]
        } else {
            vec![batch_id, carrier]
        };
        for id in ids {
            let empty: Option<i64> = sqlx::query_scalar(
                "SELECT 1 FROM batches WHERE provider = ?1 AND batch_id = ?2 \
                 AND NOT EXISTS (SELECT 1 FROM trajectories WHERE provider = ?1 AND batch_id = ?2) \
                 AND NOT EXISTS (SELECT 1 FROM trajectories WHERE provider = ?1 AND carrier = ?2)",
            )
            .bind(provider.as_str())
            .bind(&id)
            .fetch_optional(&mut *tx)
            .await
            .map_err(db_err)?;
            if empty.is_some() {
                batches += move_rows_and_forget(&mut tx, provider, &id).await?;
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
        sqlx::query("SELECT check_value, registered_at FROM regional_key_check WHERE singleton = 1")
            .fetch_optional(self.pool()?)
            .await
            .map_err(db_err)?
            .map(|r| {
                let v: Vec<u8> = r.try_get("check_value").map_err(db_err)?;
                Ok(RegionalKeyCheck {
                    check_value: v.try_into().map_err(|_| corrupt("regional_key_check"))?,
                    registered_at: parse_ts(
                        &r.try_get::<String, _>("registered_at").map_err(db_err)?,
                    )?,
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
        let _w = self.writer.lock().await;
        let mut tx = self
            .pool()?
            .begin_with("BEGIN IMMEDIATE")
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
            "INSERT INTO regional_key_check (singleton, check_value, registered_at) VALUES (1, ?1, ?2) \
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
        sqlx::query(
            "SELECT master_check, pseudonym_check, created_at FROM key_check WHERE singleton = 1",
        )
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
        let _w = self.writer.lock().await;
        let mut tx = self
            .pool()?
            .begin_with("BEGIN IMMEDIATE")
            .await
            .map_err(db_err)?;
        let done = sqlx::query(
            "INSERT INTO key_check (singleton, master_check, pseudonym_check, created_at) \
             VALUES (1, ?1, ?2, ?3) ON CONFLICT (singleton) DO NOTHING",
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
        sqlx::query(
            "SELECT id, kind, sealed, public_key, created_at, activates_at, retires_at \
             FROM service_keys ORDER BY activates_at, created_at, id",
        )
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
        let _w = self.writer.lock().await;
        let mut tx = self
            .pool()?
            .begin_with("BEGIN IMMEDIATE")
            .await
            .map_err(db_err)?;
        sqlx::query(
            "UPDATE service_keys SET retires_at = ?1 WHERE kind = 'hpke' AND retires_at IS NULL",
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
        let _w = self.writer.lock().await;
        let done = sqlx::query(
            "DELETE FROM service_keys WHERE kind = 'hpke' AND retires_at IS NOT NULL \
             AND retires_at < ?1",
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
        let _w = self.writer.lock().await;
        let mut tx = self
            .pool()?
            .begin_with("BEGIN IMMEDIATE")
            .await
            .map_err(db_err)?;
        // Projects are never deleted: the next number is free (the write lock is held).
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
             VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
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
        sqlx::query(
            "SELECT id, name, purpose, rho_nanos, spent_nanos, expires_on, created_at, closed_at \
             FROM research_projects ORDER BY rowid",
        )
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
        let _w = self.writer.lock().await;
        let mut tx = self
            .pool()?
            .begin_with("BEGIN IMMEDIATE")
            .await
            .map_err(db_err)?;
        let closed: Option<Option<String>> =
            sqlx::query_scalar("SELECT closed_at FROM research_projects WHERE id = ?1")
                .bind(id)
                .fetch_optional(&mut *tx)
                .await
                .map_err(db_err)?;
        match closed {
            None => return Err(StoreError::NotFound),
            Some(Some(_)) => return Ok(()),
            Some(None) => {}
        }
        sqlx::query("UPDATE research_projects SET closed_at = ?2 WHERE id = ?1")
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
        let _w = self.writer.lock().await;
        // IMMEDIATE: charges of every process take turns, each reading the committed spend.
        let mut tx = self
            .pool()?
            .begin_with("BEGIN IMMEDIATE")
            .await
            .map_err(db_err)?;
        let Some(row) = sqlx::query(
            "SELECT rho_nanos, spent_nanos, expires_on, closed_at FROM research_projects \
             WHERE id = ?1",
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
                    "INSERT INTO research_budget (data_year, spent_nanos) VALUES (?1, 0) \
                     ON CONFLICT (data_year) DO NOTHING",
                )
                .bind(i64::from(year))
                .execute(&mut *tx)
                .await
                .map_err(db_err)?;
                let charged: Option<i64> = sqlx::query_scalar(
                    "UPDATE research_budget SET spent_nanos = spent_nanos + ?2 \
                     WHERE data_year = ?1 AND spent_nanos <= ?3 RETURNING spent_nanos",
                )
                .bind(i64::from(year))
                .bind(a.rho_nanos)
                .bind(a.reserve_nanos - a.rho_nanos)
                .fetch_optional(&mut *tx)
                .await
                .map_err(db_err)?;
                if charged.is_none() {
                    let spent: i64 = sqlx::query_scalar(
                        "SELECT spent_nanos FROM research_budget WHERE data_year = ?1",
                    )
                    .bind(i64::from(year))
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
                    "INSERT INTO privacy_budget (data_year, spent_nanos) VALUES (?1, 0) \
                     ON CONFLICT (data_year) DO NOTHING",
                )
                .bind(i64::from(year))
                .execute(&mut *tx)
                .await
                .map_err(db_err)?;
                sqlx::query(
                    "INSERT INTO privacy_charges (data_year, rho_nanos, subject_kind, subject_id, at) \
                     VALUES (?1, ?2, 'query', ?3, ?4)",
                )
                .bind(i64::from(year))
                .bind(a.rho_nanos)
                .bind(&id)
                .bind(&at)
                .execute(&mut *tx)
                .await
                .map_err(db_err)?;
            }
            sqlx::query(
                "UPDATE research_projects SET spent_nanos = spent_nanos + ?2 WHERE id = ?1",
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
             audit_seq, answer) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
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
        sqlx::query(
            "SELECT id, kind, statement, actor, rho_nanos, at, audit_seq FROM research_log \
             WHERE project_id = ?1 ORDER BY audit_seq",
        )
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
                let year: i64 = r.try_get("data_year").map_err(db_err)?;
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
        let _w = self.writer.lock().await;
        let mut tx = self
            .pool()?
            .begin_with("BEGIN IMMEDIATE")
            .await
            .map_err(db_err)?;
        sqlx::query(
            "INSERT INTO research_extracts (id, project_id, request, requested_by, requested_at, \
             state) VALUES (?1, ?2, ?3, ?4, ?5, 'requested')",
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
        sqlx::query(
            "SELECT id, project_id, request, requested_by, requested_at, approved_by, approved_at, \
             report FROM research_extracts WHERE ?1 IS NULL OR project_id = ?1 ORDER BY rowid",
        )
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
                r.try_get::<Option<String>, _>("approved_by").map_err(db_err)?,
                r.try_get::<Option<String>, _>("approved_at").map_err(db_err)?,
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
        let _w = self.writer.lock().await;
        let mut tx = self
            .pool()?
            .begin_with("BEGIN IMMEDIATE")
            .await
            .map_err(db_err)?;
        let state: Option<String> =
            sqlx::query_scalar("SELECT state FROM research_extracts WHERE id = ?1")
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
            "UPDATE research_extracts SET state = 'produced', approved_by = ?2, approved_at = ?3, \
             report = ?4, csv = ?5 WHERE id = ?1",
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
            "SELECT csv FROM research_extracts WHERE id = ?1",
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
        let _w = self.writer.lock().await;
        let mut tx = self
            .pool()?
            .begin_with("BEGIN IMMEDIATE")
            .await
            .map_err(db_err)?;
        let done =
            sqlx::query("UPDATE tokens SET revoked_at = coalesce(revoked_at, ?2) WHERE id = ?1")
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
        sqlx::query(
            "SELECT id, role, scope, label, created_at, revoked_at FROM tokens \
             ORDER BY created_at, id",
        )
        .fetch_all(self.pool()?)
        .await
        .map_err(db_err)?
        .iter()
        .map(token_from_row)
        .collect()
    }
    async fn put_session(&self, session: &NewSession) -> Result<(), StoreError> {
        let _w = self.writer.lock().await;
        let done = sqlx::query(
            "INSERT INTO dashboard_sessions (session_hash, token_id, created_at, expires_at) \
             VALUES (?1, ?2, ?3, ?4) ON CONFLICT (session_hash) DO NOTHING",
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
        let row = sqlx::query(
            "SELECT t.id AS id, t.role AS role, t.scope AS scope, t.label AS label, \
             t.created_at AS created_at, t.revoked_at AS revoked_at, s.expires_at AS expires_at \
             FROM dashboard_sessions s JOIN tokens t ON t.id = s.token_id \
             WHERE s.session_hash = ?1",
        )
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
        let _w = self.writer.lock().await;
        sqlx::query("DELETE FROM dashboard_sessions WHERE session_hash = ?1")
            .bind(&session_hash[..])
            .execute(self.pool()?)
            .await
            .map_err(db_err)?;
        Ok(())
    }

    async fn delete_expired_sessions(&self, now: OffsetDateTime) -> Result<u64, StoreError> {
        let _w = self.writer.lock().await;
        let done = sqlx::query("DELETE FROM dashboard_sessions WHERE expires_at <= ?1")
            .bind(format_ts(now)?)
            .execute(self.pool()?)
            .await
            .map_err(db_err)?;
        Ok(done.rows_affected())
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

/// Reads an optional small integer column (by position) into its domain type.
fn small<T>(
    r: &SqliteRow,
    at: usize,
    column: &str,
    make: impl FnOnce(u8) -> Result<T, kwm_schemas::ParseError>,
) -> Result<Option<T>, StoreError> {
    let v: Option<i64> = r.try_get(at).map_err(db_err)?;
    v.map(|v| {
        u8::try_from(v)
            .ok()
            .and_then(|v| make(v).ok())
            .ok_or_else(|| corrupt(column))
    })
    .transpose()
}

/// Reads an optional text column (by position) into its domain type.
fn word<T: FromStr>(r: &SqliteRow, at: usize, column: &str) -> Result<Option<T>, StoreError> {
    let v: Option<&str> = r.try_get(at).map_err(db_err)?;
    v.map(|s| s.parse().map_err(|_| corrupt(column)))
        .transpose()
}

fn month(v: i64, column: &str) -> Result<Month, StoreError> {
    u32::try_from(v)
        .ok()
        .and_then(|v| Month::from_yyyymm(v).ok())
        .ok_or_else(|| corrupt(column))
}

fn pseudonym(r: &SqliteRow, at: usize, column: &str) -> Result<Pseudonym, StoreError> {
    let b: &[u8] = r.try_get(at).map_err(db_err)?;
    Pseudonym::from_slice(b).map_err(|_| corrupt(column))
}

/// A row whose columns are [`RECORD_COLUMNS`] in order.
fn record_from_row(r: &SqliteRow) -> Result<WireRecord, StoreError> {
    record_at(r, 0)
}

/// Decodes the [`RECORD_COLUMNS`] that start at column `first` of the row. By position: a lookup by
/// name hashes the name, per column and row, which costs more than the decoding on large reads.
fn record_at(r: &SqliteRow, first: usize) -> Result<WireRecord, StoreError> {
    let c = |i: usize| (first + i, RECORD_COLUMNS[i]);
    let (at, name) = c(7);
    let end_month: Option<i64> = r.try_get(at).map_err(db_err)?;
    let end_month = end_month.map(|v| month(v, name)).transpose()?;
    let (at, name) = c(6);
    let start_month = month(r.try_get(at).map_err(db_err)?, name)?;
    let required = |i: usize| corrupt(RECORD_COLUMNS[i]);
    Ok(WireRecord {
        trajectory: pseudonym(r, c(0).0, c(0).1)?,
        client: pseudonym(r, c(1).0, c(1).1)?,
        municipality: word(r, c(2).0, c(2).1)?.ok_or_else(|| required(2))?,
        target_group: word(r, c(3).0, c(3).1)?.ok_or_else(|| required(3))?,
        intensity: small(r, c(4).0, c(4).1, Intensity::new)?,
        product_category: small(r, c(5).0, c(5).1, ProductCategory::new)?,
        start_month,
        end_month,
        age_band: word::<AgeBand>(r, c(8).0, c(8).1)?.ok_or_else(|| required(8))?,
        end_reason: small(r, c(9).0, c(9).1, EndReason::new)?,
        satisfaction: small(r, c(10).0, c(10).1, Satisfaction::new)?,
        respondent: word(r, c(11).0, c(11).1)?,
        carry_on_without_help: word(r, c(12).0, c(12).1)?,
        problem_t_pre: small(r, c(13).0, c(13).1, TScore::new)?,
        problem_t_post: small(r, c(14).0, c(14).1, TScore::new)?,
        instrument: word(r, c(15).0, c(15).1)?,
        goals_agreed: small(r, c(16).0, c(16).1, GoalCount::new)?,
        goals_achieved: small(r, c(17).0, c(17).1, GoalCount::new)?,
    })
}

/// The 32 bytes that 64 hex digits (as SQLite's `hex()` writes them) stand for. By table: millions
/// of these are read at a time.
fn unhex32(text: &str) -> Option<Pseudonym> {
    const INVALID: u8 = 0xFF;
    const TABLE: [u8; 256] = {
        let mut t = [INVALID; 256];
        let mut i = 0;
        while i < 10 {
            t[b'0' as usize + i] = i as u8;
            i += 1;
        }
        let mut i = 0;
        while i < 6 {
            t[b'A' as usize + i] = 10 + i as u8;
            t[b'a' as usize + i] = 10 + i as u8;
            i += 1;
        }
        t
    };
    let digits: &[u8; 64] = text.as_bytes().try_into().ok()?;
    let mut out = [0u8; 32];
    let mut bad = 0;
    for (byte, pair) in out.iter_mut().zip(digits.chunks_exact(2)) {
        let (hi, lo) = (TABLE[usize::from(pair[0])], TABLE[usize::from(pair[1])]);
        bad |= hi | lo;
        *byte = (hi << 4) | (lo & 0x0F);
    }
    // Every valid digit is below 16, INVALID is not.
    (bad < 16).then_some(Pseudonym(out))
}

/// Reads one line of [`SELECT_TRAJECTORIES_BETWEEN`]: the provider, then the [`RECORD_COLUMNS`],
/// pseudonyms in hex and NULL as an empty field. `last` keeps the provider of the line before, whose
/// code need not be parsed again.
fn parse_between_line(
    line: &str,
    last: &mut Option<(String, AgbCode)>,
) -> Result<(AgbCode, WireRecord), StoreError> {
    let mut fields = line.split(',');
    let mut next = |column: &'static str| fields.next().ok_or_else(|| corrupt(column));
    let p = next("provider")?;
    let agb = match last {
        Some((text, agb)) if text == p => *agb,
        _ => {
            let agb: AgbCode = p.parse().map_err(|_| corrupt("trajectories.provider"))?;
            *last = Some((p.to_owned(), agb));
            agb
        }
    };
    let mut f = [""; 18];
    for (slot, column) in f.iter_mut().zip(RECORD_COLUMNS) {
        *slot = next(column)?;
    }
    if fields.next().is_some() {
        return Err(corrupt("a trajectory read (too many fields)"));
    }
    let pseudonym = |i: usize| unhex32(f[i]).ok_or_else(|| corrupt(RECORD_COLUMNS[i]));
    fn opt<T: FromStr>(v: &str, column: &str) -> Result<Option<T>, StoreError> {
        match v {
            "" => Ok(None),
            v => v.parse().map(Some).map_err(|_| corrupt(column)),
        }
    }
    fn small<T>(
        v: &str,
        column: &str,
        make: impl FnOnce(u8) -> Result<T, kwm_schemas::ParseError>,
    ) -> Result<Option<T>, StoreError> {
        opt::<u8>(v, column)?
            .map(|v| make(v).map_err(|_| corrupt(column)))
            .transpose()
    }
    let month = |i: usize| -> Result<Option<Month>, StoreError> {
        opt::<u32>(f[i], RECORD_COLUMNS[i])?
            .map(|v| Month::from_yyyymm(v).map_err(|_| corrupt(RECORD_COLUMNS[i])))
            .transpose()
    };
    let required = |i: usize| corrupt(RECORD_COLUMNS[i]);
    Ok((
        agb,
        WireRecord {
            trajectory: pseudonym(0)?,
            client: pseudonym(1)?,
            municipality: opt(f[2], RECORD_COLUMNS[2])?.ok_or_else(|| required(2))?,
            target_group: opt(f[3], RECORD_COLUMNS[3])?.ok_or_else(|| required(3))?,
            intensity: small(f[4], RECORD_COLUMNS[4], Intensity::new)?,
            product_category: small(f[5], RECORD_COLUMNS[5], ProductCategory::new)?,
            start_month: month(6)?.ok_or_else(|| required(6))?,
            end_month: month(7)?,
            age_band: opt::<AgeBand>(f[8], RECORD_COLUMNS[8])?.ok_or_else(|| required(8))?,
            end_reason: small(f[9], RECORD_COLUMNS[9], EndReason::new)?,
            satisfaction: small(f[10], RECORD_COLUMNS[10], Satisfaction::new)?,
            respondent: opt(f[11], RECORD_COLUMNS[11])?,
            carry_on_without_help: opt(f[12], RECORD_COLUMNS[12])?,
            problem_t_pre: small(f[13], RECORD_COLUMNS[13], TScore::new)?,
            problem_t_post: small(f[14], RECORD_COLUMNS[14], TScore::new)?,
            instrument: opt(f[15], RECORD_COLUMNS[15])?,
            goals_agreed: small(f[16], RECORD_COLUMNS[16], GoalCount::new)?,
            goals_achieved: small(f[17], RECORD_COLUMNS[17], GoalCount::new)?,
        },
    ))
}

/// Inserts one service key in a write transaction; `Conflict` if its id is taken.
async fn insert_service_key(
    tx: &mut sqlx::Transaction<'_, sqlx::Sqlite>,
    k: &StoredServiceKey,
) -> Result<(), StoreError> {
    sqlx::query(
        "INSERT INTO service_keys \
         (id, kind, sealed, public_key, created_at, activates_at, retires_at) \
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
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
        if is_unique_violation(&e) {
            StoreError::Conflict(format!("service key {} exists", k.id))
        } else {
            db_err(e)
        }
    })?;
    Ok(())
}

fn token_from_row(r: &SqliteRow) -> Result<TokenRecord, StoreError> {
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

/// Strings as a JSON array, for `json_each`: one parameter for a list of any length.
fn json_array(items: &[String]) -> Result<String, StoreError> {
    serde_json::to_string(items)
        .map_err(|e| StoreError::Other(anyhow::anyhow!("serialising a list: {e}")))
}

/// A UNIQUE or PRIMARY KEY constraint refused the statement (SQLITE_CONSTRAINT_UNIQUE, _PRIMARYKEY).
fn is_unique_violation(e: &sqlx::Error) -> bool {
    match e {
        sqlx::Error::Database(d) => matches!(d.code().as_deref(), Some("2067") | Some("1555")),
        _ => false,
    }
}

const RELEASE_COLUMNS: &str =
    "id, scope, period, version, data_version, epsilon_nanos, created_at, body";

fn release_from_row(r: &SqliteRow) -> Result<StoredRelease, StoreError> {
    let id: String = r.try_get("id").map_err(db_err)?;
    let version: i64 = r.try_get("version").map_err(db_err)?;
    let epsilon: i64 = r.try_get("epsilon_nanos").map_err(db_err)?;
    let body: &str = r.try_get("body").map_err(db_err)?;
    Ok(StoredRelease {
        id: Uuid::parse_str(&id).map_err(|_| corrupt("releases.id"))?,
        scope: r.try_get("scope").map_err(db_err)?,
        period: r.try_get("period").map_err(db_err)?,
        version: u32::try_from(version).map_err(|_| corrupt("releases.version"))?,
        data_version: r.try_get("data_version").map_err(db_err)?,
        epsilon: Epsilon::from_nanos(epsilon).ok_or_else(|| corrupt("releases.epsilon_nanos"))?,
        created_at: parse_ts(&r.try_get::<String, _>("created_at").map_err(db_err)?)?,
        body: serde_json::from_str(body).map_err(|_| corrupt("releases.body"))?,
    })
}

const AUDIT_COLUMNS: &str = "seq, at, actor_role, actor_id, action, subject, provider, \
                             details_digest, prev_hash, hash";

fn hash32(r: &SqliteRow, column: &str, what: &str) -> Result<[u8; 32], StoreError> {
    let b: &[u8] = r.try_get(column).map_err(db_err)?;
    <[u8; 32]>::try_from(b).map_err(|_| corrupt(what))
}

fn audit_from_row(r: &SqliteRow) -> Result<AuditEntry, StoreError> {
    let action: String = r.try_get("action").map_err(db_err)?;
    let provider: Option<String> = r.try_get("provider").map_err(db_err)?;
    Ok(AuditEntry {
        seq: r.try_get("seq").map_err(db_err)?,
        entry: NewAuditEntry {
            at: parse_ts(&r.try_get::<String, _>("at").map_err(db_err)?)?,
            actor_role: r.try_get("actor_role").map_err(db_err)?,
            actor_id: r.try_get("actor_id").map_err(db_err)?,
            action: AuditAction::parse(&action).ok_or_else(|| corrupt("audit_log.action"))?,
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

/// Records a withdrawal in its transaction: the data version counts these rows.
async fn record_withdrawal(
    tx: &mut sqlx::Transaction<'_, sqlx::Sqlite>,
    provider: AgbCode,
    withdrawn: Withdrawn,
) -> Result<(), StoreError> {
    let count = |n: u64| i64::try_from(n).map_err(|_| corrupt("a withdrawal count"));
    sqlx::query(
        "INSERT INTO withdrawals (provider, at, trajectories, batches) VALUES (?1, ?2, ?3, ?4)",
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

/// The end of a batch being withdrawn, once the rows it carried are gone: rows it wrote that a later
/// batch carried stay, and that later batch becomes the one that wrote them (same values; the foreign
/// key needs a receipt); the change feed reads those batches again, so that an index that has not seen
/// this batch yet finds the rows under their new batch. Then the receipt goes and the id is kept in
/// `withdrawn_batches`. Returns the receipts deleted (0 or 1).
async fn move_rows_and_forget(
    tx: &mut sqlx::Transaction<'_, sqlx::Sqlite>,
    provider: AgbCode,
    batch_id: &str,
) -> Result<u64, StoreError> {
    sqlx::query(
        "INSERT INTO trajectory_changes (provider, batch_id) \
         SELECT DISTINCT provider, carrier FROM trajectories WHERE provider = ?1 AND batch_id = ?2",
    )
    .bind(provider.as_str())
    .bind(batch_id)
    .execute(&mut **tx)
    .await
    .map_err(db_err)?;
    sqlx::query("UPDATE trajectories SET batch_id = carrier WHERE provider = ?1 AND batch_id = ?2")
        .bind(provider.as_str())
        .bind(batch_id)
        .execute(&mut **tx)
        .await
        .map_err(db_err)?;
    let deleted = sqlx::query("DELETE FROM batches WHERE provider = ?1 AND batch_id = ?2")
        .bind(provider.as_str())
        .bind(batch_id)
        .execute(&mut **tx)
        .await
        .map_err(db_err)?
        .rows_affected();
    sqlx::query(
        "INSERT INTO withdrawn_batches (provider, batch_id, at) VALUES (?1, ?2, ?3) \
         ON CONFLICT (provider, batch_id) DO NOTHING",
    )
    .bind(provider.as_str())
    .bind(batch_id)
    .bind(format_ts(OffsetDateTime::now_utc())?)
    .execute(&mut **tx)
    .await
    .map_err(db_err)?;
    Ok(deleted)
}

/// Tells the change feed, in the batch's transaction, that the batch stored or corrected rows.
async fn log_batch_change(
    tx: &mut sqlx::Transaction<'_, sqlx::Sqlite>,
    provider: &str,
    batch_id: &str,
) -> Result<(), StoreError> {
    sqlx::query("INSERT INTO trajectory_changes (provider, batch_id) VALUES (?1, ?2)")
        .bind(provider)
        .bind(batch_id)
        .execute(&mut **tx)
        .await
        .map_err(db_err)?;
    Ok(())
}

/// Reads every trajectory whose months overlap `from..=to` (yyyymm) in the transaction's snapshot
/// into `push`, in rowid chunks of one text value each (see [`SELECT_TRAJECTORIES_BETWEEN`]).
async fn read_between(
    tx: &mut sqlx::Transaction<'_, sqlx::Sqlite>,
    from: i64,
    to: i64,
    mut push: impl FnMut(AgbCode, WireRecord) + Send,
) -> Result<(), StoreError> {
    let last: Option<i64> = sqlx::query_scalar("SELECT max(rowid) FROM trajectories")
        .fetch_one(&mut **tx)
        .await
        .map_err(db_err)?;
    let last = last.unwrap_or(-1);
    let mut provider: Option<(String, AgbCode)> = None;
    // The text of the chunk before, parsed here while SQLite (on the driver's own thread)
    // prepares the next one.
    let mut previous: Option<String> = None;
    let mut start: i64 = 0;
    loop {
        let end = start.saturating_add(ROWIDS_PER_CHUNK);
        let next = async {
            if start > last {
                return Ok(None);
            }
            sqlx::query_scalar::<_, Option<String>>(SELECT_TRAJECTORIES_BETWEEN.as_str())
                .bind(start)
                .bind(end)
                .bind(from)
                .bind(to)
                .fetch_one(&mut **tx)
                .await
                .map(Some)
        };
        let parse = async {
            for line in previous
                .as_deref()
                .map(|t| t.split('\n'))
                .into_iter()
                .flatten()
            {
                let (p, r) = parse_between_line(line, &mut provider)?;
                push(p, r);
            }
            Ok::<(), StoreError>(())
        };
        // `next` first: it hands the statement to the driver's thread before `parse` runs.
        let (next, parsed) = tokio::join!(next, parse);
        parsed?;
        match next.map_err(db_err)? {
            // NULL: no row of the chunk overlaps the months.
            Some(text) => previous = text,
            None => break,
        }
        start = end;
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
    tx: &mut sqlx::Transaction<'_, sqlx::Sqlite>,
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
    tx: &mut sqlx::Transaction<'_, sqlx::Sqlite>,
    audit: Option<&NewAuditEntry>,
) -> Result<(), StoreError> {
    let Some(entry) = audit else {
        return Ok(());
    };
    let entry = entry.clone();
    let make = move |_: &()| entry.clone();
    append_recorded(tx, Some(&make), &()).await.map(|_| ())
}

/// Appends `entry` to the audit chain inside `tx`, whose opener holds the write lock (this process's
/// writer mutex and `BEGIN IMMEDIATE`): the newest entry read here stays the newest until commit, so
/// the chain never forks.
async fn append_audit_in(
    tx: &mut sqlx::Transaction<'_, sqlx::Sqlite>,
    entry: &NewAuditEntry,
) -> Result<AuditEntry, TxError> {
    let entry = NewAuditEntry {
        at: truncate_to_micros(entry.at),
        ..entry.clone()
    };
    let at = format_ts(entry.at)?;
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
         details_digest, prev_hash, hash) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)",
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
    /// The write lock stayed busy past the busy timeout (another process held it): another attempt
    /// may succeed.
    fn retryable(&self) -> bool {
        match self {
            Self::Db(sqlx::Error::Database(d)) => d
                .code()
                .and_then(|c| c.parse::<i32>().ok())
                .is_some_and(|c| matches!(c & 0xff, 5 | 6)),
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

/// A failed insert of an id: `Conflict` when the id is taken (the transaction is rolled back when
/// dropped).
fn id_conflict(e: sqlx::Error, what: impl FnOnce() -> String) -> TxError {
    if is_unique_violation(&e) {
        TxError::Store(StoreError::Conflict(what()))
    } else {
        TxError::Db(e)
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
/// order), on one connection (inside a transaction: from its snapshot).
async fn load_rounds(
    conn: &mut SqliteConnection,
    of: RoundsOf<'_>,
) -> Result<Vec<RoundRecord>, TxError> {
    let (period, id) = match of {
        RoundsOf::Period(p) => (p, None),
        RoundsOf::Id(id) => (None, Some(id)),
    };
    let rows = sqlx::query(
        "SELECT id, period, version, data_version, published_by, created_at, audit_seq \
         FROM rounds WHERE (?1 IS NULL OR period = ?1) AND (?2 IS NULL OR id = ?2) \
         ORDER BY created_at DESC, version DESC, rowid DESC",
    )
    .bind(period)
    .bind(id)
    .fetch_all(&mut *conn)
    .await?;
    let mut rounds = Vec::with_capacity(rows.len());
    let mut ids = Vec::with_capacity(rows.len());
    for r in &rows {
        let id: String = r.try_get("id")?;
        let version: i64 = r.try_get("version")?;
        rounds.push(RoundRecord {
            id: Uuid::parse_str(&id).map_err(|_| corrupt("rounds.id"))?,
            period: r.try_get("period")?,
            version: u32::try_from(version).map_err(|_| corrupt("rounds.version"))?,
            data_version: r.try_get("data_version")?,
            charges: Vec::new(),
            published_by: r.try_get("published_by")?,
            created_at: parse_ts(&r.try_get::<String, _>("created_at")?)?,
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
    let ids = json_array(&ids)?;
    let find = |id: &str, what: &str| -> Result<usize, StoreError> {
        Uuid::parse_str(id)
            .ok()
            .and_then(|id| at.get(&id).copied())
            .ok_or_else(|| corrupt(what))
    };

    let releases = sqlx::query(
        "SELECT round_id, scope, id FROM round_releases \
         WHERE round_id IN (SELECT value FROM json_each(?1))",
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
         WHERE subject_kind = 'round' AND subject_id IN (SELECT value FROM json_each(?1))",
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
    for round in &mut rounds {
        round.releases.sort();
        round.charges.sort();
    }
    Ok(rounds)
}

/// The columns [`round_release_from_row`] reads, of `round_releases rr JOIN rounds r`.
const ROUND_RELEASE_COLUMNS: &str =
    "rr.id AS id, rr.round_id AS round_id, rr.scope AS scope, r.period AS period, \
     r.version AS version, r.created_at AS created_at, rr.body AS body";

fn round_release_from_row(r: &SqliteRow) -> Result<StoredRoundRelease, StoreError> {
    let id: &str = r.try_get("id").map_err(db_err)?;
    let round_id: &str = r.try_get("round_id").map_err(db_err)?;
    let version: i64 = r.try_get("version").map_err(db_err)?;
    let body: &str = r.try_get("body").map_err(db_err)?;
    Ok(StoredRoundRelease {
        id: Uuid::parse_str(id).map_err(|_| corrupt("round_releases.id"))?,
        round_id: Uuid::parse_str(round_id).map_err(|_| corrupt("round_releases.round_id"))?,
        scope: r.try_get("scope").map_err(db_err)?,
        period: r.try_get("period").map_err(db_err)?,
        version: u32::try_from(version).map_err(|_| corrupt("rounds.version"))?,
        created_at: parse_ts(&r.try_get::<String, _>("created_at").map_err(db_err)?)?,
        body: serde_json::from_str(body).map_err(|_| corrupt("round_releases.body"))?,
    })
}

/// A stored data year.
fn data_year(v: i64, column: &str) -> Result<u16, StoreError> {
    u16::try_from(v).map_err(|_| corrupt(column))
}
