//! Direct access to the database of an app under test, around the service: to tamper with stored rows
//! as an intruder with database access would, and to check what is (no longer) stored.

use sqlx::postgres::PgPoolOptions;
use sqlx::sqlite::SqlitePoolOptions;
use sqlx::{PgPool, SqlitePool};

use crate::helpers::TestApp;

pub enum RawDb {
    Sqlite(SqlitePool),
    Postgres(PgPool),
}

impl RawDb {
    /// The app's own database (SQLite file in its data dir, or its ephemeral PostgreSQL database).
    pub async fn open(app: &TestApp) -> Self {
        let url = app.config.database_url();
        if url.starts_with("sqlite:") {
            Self::Sqlite(
                SqlitePoolOptions::new()
                    .max_connections(1)
                    .connect(&url)
                    .await
                    .expect("the SQLite file opens"),
            )
        } else {
            Self::Postgres(
                PgPoolOptions::new()
                    .max_connections(1)
                    .connect(&url)
                    .await
                    .expect("the PostgreSQL database opens"),
            )
        }
    }

    /// Runs one statement; the number of rows it touched.
    pub async fn execute(&self, sql: &str) -> u64 {
        match self {
            Self::Sqlite(p) => sqlx::query(sql).execute(p).await.map(|r| r.rows_affected()),
            Self::Postgres(p) => sqlx::query(sql).execute(p).await.map(|r| r.rows_affected()),
        }
        .unwrap_or_else(|e| panic!("{sql}: {e}"))
    }

    /// Runs one statement; the database's refusal, if it refuses.
    pub async fn try_execute(&self, sql: &str) -> Result<u64, sqlx::Error> {
        match self {
            Self::Sqlite(p) => sqlx::query(sql).execute(p).await.map(|r| r.rows_affected()),
            Self::Postgres(p) => sqlx::query(sql).execute(p).await.map(|r| r.rows_affected()),
        }
    }

    /// Runs one statement with the foreign key checks switched off for it, as an intruder with
    /// control of the database can (SQLite: the connection's pragma; PostgreSQL: replica mode for the
    /// transaction, which needs a superuser, as the test database's user is).
    pub async fn execute_without_foreign_keys(&self, sql: &str) -> u64 {
        let n = match self {
            Self::Sqlite(p) => {
                let mut c = p.acquire().await.expect("a connection");
                sqlx::query("PRAGMA foreign_keys = OFF")
                    .execute(&mut *c)
                    .await
                    .expect("pragma");
                let n = sqlx::query(sql).execute(&mut *c).await;
                sqlx::query("PRAGMA foreign_keys = ON")
                    .execute(&mut *c)
                    .await
                    .expect("pragma");
                n.map(|r| r.rows_affected())
            }
            Self::Postgres(p) => {
                let mut tx = p.begin().await.expect("a transaction");
                sqlx::query("SET LOCAL session_replication_role = replica")
                    .execute(&mut *tx)
                    .await
                    .expect("replica mode");
                let n = sqlx::query(sql).execute(&mut *tx).await;
                tx.commit().await.expect("committed");
                n.map(|r| r.rows_affected())
            }
        };
        n.unwrap_or_else(|e| panic!("{sql}: {e}"))
    }

    /// `SELECT count(*) ...`.
    pub async fn count(&self, sql: &str) -> i64 {
        match self {
            Self::Sqlite(p) => sqlx::query_scalar::<_, i64>(sql).fetch_one(p).await,
            Self::Postgres(p) => sqlx::query_scalar::<_, i64>(sql).fetch_one(p).await,
        }
        .unwrap_or_else(|e| panic!("{sql}: {e}"))
    }

    /// `SELECT count(*) ...` with one text parameter, written `{}` in `sql`: a value that must not
    /// appear in the logs (the driver logs statements, not parameters).
    pub async fn count_with(&self, sql: &str, value: &str) -> i64 {
        match self {
            Self::Sqlite(p) => {
                sqlx::query_scalar::<_, i64>(&sql.replace("{}", "?1"))
                    .bind(value)
                    .fetch_one(p)
                    .await
            }
            Self::Postgres(p) => {
                sqlx::query_scalar::<_, i64>(&sql.replace("{}", "$1"))
                    .bind(value)
                    .fetch_one(p)
                    .await
            }
        }
        .unwrap_or_else(|e| panic!("{sql}: {e}"))
    }

    /// An SQL expression for a bytea/blob column as lower-case hex.
    pub fn hex(&self, column: &str) -> String {
        match self {
            Self::Sqlite(_) => format!("lower(hex({column}))"),
            Self::Postgres(_) => format!("encode({column}, 'hex')"),
        }
    }

    /// Swaps the sequence numbers of two audit entries.
    pub async fn swap_audit_seq(&self, a: i64, b: i64) {
        let parked = 1_000_000_000;
        self.execute(&format!(
            "UPDATE audit_log SET seq = {parked} WHERE seq = {a}"
        ))
        .await;
        self.execute(&format!("UPDATE audit_log SET seq = {a} WHERE seq = {b}"))
            .await;
        self.execute(&format!(
            "UPDATE audit_log SET seq = {b} WHERE seq = {parked}"
        ))
        .await;
    }
}
