//! Keeps a store on the one database it opened. A pool opens connections as it needs them, by path or
//! URL: if the SQLite file was removed and created anew at that path (a second `kwm-service demo` on
//! the same directory does so), or a PostgreSQL database dropped and created under the same name,
//! later connections would reach another database, and a release index synced through them would add
//! that database's rows to its own. So every new connection must show the identity the database had
//! when the store opened it (`store_identity`, migration 0008), a SQLite file must still be the file
//! (device and inode) that was opened, and once another database was met every call fails, saying so:
//! the instance must be restarted.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use super::StoreError;

#[derive(Debug, Default)]
pub(crate) struct Tether {
    /// Where the database is, for messages (a SQLite path, or a redacted PostgreSQL URL).
    place: String,
    /// The database's `store_identity`, read once the migrations have run.
    identity: OnceLock<String>,
    /// SQLite: the file and its (device, inode) when the store opened it.
    file: OnceLock<(PathBuf, (u64, u64))>,
    /// Why this store stopped: set once, when another database was met.
    lost: OnceLock<String>,
}

/// The identity query, the same on both backends.
pub(crate) const SELECT_IDENTITY: &str = "SELECT id FROM store_identity WHERE singleton = 1";

fn file_id(path: &Path) -> std::io::Result<(u64, u64)> {
    use std::os::unix::fs::MetadataExt;
    let m = std::fs::metadata(path)?;
    Ok((m.dev(), m.ino()))
}

impl Tether {
    pub(crate) fn new(place: impl Into<String>) -> Self {
        Self {
            place: place.into(),
            ..Self::default()
        }
    }

    /// Records the SQLite file the store opened.
    pub(crate) fn hold_file(&self, path: &Path) -> Result<(), StoreError> {
        let id = file_id(path)
            .map_err(|e| StoreError::Other(anyhow::anyhow!("reading {}: {e}", path.display())))?;
        let _ = self.file.set((path.to_owned(), id));
        Ok(())
    }

    /// Records the identity of the opened database (after its migrations).
    pub(crate) fn hold_identity(&self, identity: String) {
        let _ = self.identity.set(identity);
    }

    fn lose(&self, what: &str) -> String {
        let why = self
            .lost
            .get_or_init(|| {
                let why = format!(
                    "{} is not the database this instance opened ({what}, while the service ran); \
                     nothing is read from or written to it: restart the service",
                    self.place
                );
                tracing::error!("{why}");
                why
            })
            .clone();
        why
    }

    /// Before every use of the pool: fails once another database was met, or when the SQLite file at
    /// the path is no longer the one opened.
    pub(crate) fn check(&self) -> Result<(), StoreError> {
        if let Some(why) = self.lost.get() {
            return Err(StoreError::Other(anyhow::anyhow!("{why}")));
        }
        if let Some((path, opened)) = self.file.get() {
            match file_id(path) {
                Ok(now) if now == *opened => {}
                Ok(_) => {
                    let why = self.lose("the file was replaced");
                    return Err(StoreError::Other(anyhow::anyhow!("{why}")));
                }
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                    let why = self.lose("the file was removed");
                    return Err(StoreError::Other(anyhow::anyhow!("{why}")));
                }
                // Another reason the path cannot be read now: the connection will say more.
                Err(_) => {}
            }
        }
        Ok(())
    }

    /// For a new connection (the pool's `after_connect`): the identity it reads, `None` when the
    /// table is missing or empty. Refused when the store's identity is known and differs; the pool
    /// then retries until its acquire timeout, and every later [`Tether::check`] fails at once.
    pub(crate) fn check_connection(&self, found: Option<String>) -> Result<(), sqlx::Error> {
        match self.identity.get() {
            Some(id) if found.as_deref() != Some(id.as_str()) => Err(sqlx::Error::Configuration(
                self.lose("a new connection reached another database")
                    .into(),
            )),
            _ => Ok(()),
        }
    }
}
