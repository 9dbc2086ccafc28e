//! Helpers shared by the test binaries in `tests/`: a fresh PostgreSQL database per test, dropped
//! afterwards, and a temporary SQLite file.

use std::time::Duration;

use sqlx::postgres::PgConnectOptions;
use sqlx::{ConnectOptions, Connection, PgConnection};
use tempfile::TempDir;

/// The variable naming the PostgreSQL server tests may create databases on.
pub const TEST_DATABASE_URL_VAR: &str = "KWM_TEST_DATABASE_URL";

/// Where PostgreSQL tests run: `Some(url)` when configured; `None` (after a note on stderr) when not.
///
/// # Panics
/// When the variable is unset but `CI` is set: CI must never skip the PostgreSQL tests silently.
pub fn postgres_test_url() -> Option<String> {
    match std::env::var(TEST_DATABASE_URL_VAR) {
        Ok(url) if !url.trim().is_empty() => Some(url),
        _ => {
            let in_ci = std::env::var("CI").is_ok_and(|v| !v.is_empty() && v != "false");
            assert!(
                !in_ci,
                "{TEST_DATABASE_URL_VAR} is not set, but CI is: the PostgreSQL tests must run in CI \
                 (set {TEST_DATABASE_URL_VAR}=postgres://USER@HOST:PORT/DB)"
            );
            eprintln!(
                "skipped: PostgreSQL test (set {TEST_DATABASE_URL_VAR}=postgres://USER@HOST:PORT/DB to run it)"
            );
            None
        }
    }
}

/// A uniquely named PostgreSQL database created for one test and dropped when this value is dropped
/// (also when the test fails), in the manner of janus's `EphemeralDatastore`.
#[derive(Debug)]
pub struct EphemeralPostgres {
    /// Where to connect to drop the database again: the server's database from the variable.
    admin_url: String,
    name: String,
    url: String,
}

impl EphemeralPostgres {
    /// Creates a fresh database on the server named by `KWM_TEST_DATABASE_URL`. `None` when the
    /// variable is unset (see [`postgres_test_url`]: in CI that panics instead).
    ///
    /// # Panics
    /// When the server cannot be reached or refuses to create the database: a configured test
    /// database that does not work is a failure, not a skip.
    pub async fn create() -> Option<Self> {
        let admin_url = postgres_test_url()?;
        let name = format!("kwm_test_{}", uuid::Uuid::new_v4().simple());
        let mut conn = admin_connection(&admin_url).await.unwrap_or_else(|e| {
            panic!("connecting to {TEST_DATABASE_URL_VAR} to create a test database: {e}")
        });
        sqlx::query(&format!(r#"CREATE DATABASE "{name}""#))
            .execute(&mut conn)
            .await
            .unwrap_or_else(|e| panic!("creating test database {name}: {e}"));
        // Closing is best effort: the database exists either way.
        let _ = conn.close().await;
        let url = with_database(&admin_url, &name);
        Some(Self {
            admin_url,
            name,
            url,
        })
    }

    /// The URL of the fresh database.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// The database's name.
    pub fn name(&self) -> &str {
        &self.name
    }
}

impl Drop for EphemeralPostgres {
    fn drop(&mut self) {
        // Drop cannot await, and the test's runtime may be shutting down: a thread of its own with a
        // small runtime does the work, and this waits for it so the database is gone when drop returns.
        let admin_url = self.admin_url.clone();
        let name = self.name.clone();
        let done = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .map_err(|e| e.to_string())?;
            rt.block_on(async {
                let mut conn = admin_connection(&admin_url)
                    .await
                    .map_err(|e| e.to_string())?;
                // FORCE: the store's pool may still hold connections that are being closed.
                sqlx::query(&format!(r#"DROP DATABASE IF EXISTS "{name}" WITH (FORCE)"#))
                    .execute(&mut conn)
                    .await
                    .map_err(|e| e.to_string())?;
                let _ = conn.close().await;
                Ok::<(), String>(())
            })
        })
        .join();
        match done {
            Ok(Ok(())) => {}
            Ok(Err(e)) => eprintln!("warning: could not drop test database {}: {e}", self.name),
            Err(_) => eprintln!("warning: dropping test database {} panicked", self.name),
        }
    }
}

async fn admin_connection(url: &str) -> Result<PgConnection, sqlx::Error> {
    let options: PgConnectOptions = url.parse()?;
    tokio::time::timeout(Duration::from_secs(10), options.connect())
        .await
        .map_err(|_| sqlx::Error::PoolTimedOut)?
}

/// `url` with its database (the path) replaced by `name`, keeping user, host, port and parameters.
pub fn with_database(url: &str, name: &str) -> String {
    let (base, query) = match url.split_once('?') {
        Some((b, q)) => (b, Some(q)),
        None => (url, None),
    };
    let authority_start = base.find("://").map_or(0, |i| i + 3);
    let path_start = base[authority_start..]
        .find('/')
        .map_or(base.len(), |i| authority_start + i);
    let mut out = format!("{}/{name}", &base[..path_start]);
    if let Some(q) = query {
        out.push('?');
        out.push_str(q);
    }
    out
}

/// A SQLite database file in a temporary directory, removed with it.
#[derive(Debug)]
pub struct TempSqlite {
    _dir: TempDir,
    url: String,
}

impl TempSqlite {
    /// # Panics
    /// When no temporary directory can be created.
    pub fn new() -> Self {
        let dir = tempfile::tempdir().expect("a temporary directory for the SQLite database");
        // A subdirectory that does not exist yet: the store must create it.
        let url = format!("sqlite://{}/db/kwm.sqlite3", dir.path().display());
        Self { _dir: dir, url }
    }

    pub fn url(&self) -> &str {
        &self.url
    }
}

impl Default for TempSqlite {
    fn default() -> Self {
        Self::new()
    }
}

/// The regional key of every test service: fixed, so that the check value each test service registers
/// (`admin region key-check set`) is the one the tests' uploads carry. A test of another key makes its
/// own with `RegionalKey::generate`.
pub fn regional_key() -> kwm_sdk::RegionalKey {
    let mut bytes = [0x52u8; 32];
    kwm_sdk::RegionalKey::from_secret(kwm_sdk::SecretKey32::from_bytes(&mut bytes))
}

#[cfg(test)]
mod tests {
    use super::with_database;

    #[test]
    fn database_is_replaced_in_the_url() {
        assert_eq!(
            with_database("postgres://postgres@127.0.0.1:5432/test", "x"),
            "postgres://postgres@127.0.0.1:5432/x"
        );
        assert_eq!(
            with_database("postgres://u:p@h/db?sslmode=disable", "x"),
            "postgres://u:p@h/x?sslmode=disable"
        );
        assert_eq!(
            with_database("postgres://h:5432", "x"),
            "postgres://h:5432/x"
        );
    }
}
