//! Service configuration: built-in defaults, then a TOML file, then `KWM__...` environment variables, then
//! command-line flags. Unknown keys are refused. Secrets never live here: the service's keys are in the
//! database, sealed under the master key (`KWM_MASTER_KEY` or `<data dir>/master.key`).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use figment::providers::{Env, Format, Serialized, Toml};
use figment::Figment;
use kwm_schemas::RegionConfig;
use serde::{Deserialize, Serialize};

#[derive(Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Where the SQLite database and the master key file live (and the key files of earlier versions,
    /// imported into the database on first start).
    pub data_dir: PathBuf,
    /// `sqlite://PATH` or `postgres://...`; default: SQLite in the data dir. May carry a password, so it
    /// is never printed whole (see [`Config::database_url_redacted`]).
    pub database_url: Option<String>,
    /// Address of the API listener.
    pub listen: SocketAddr,
    /// Address of the Prometheus metrics listener; none to switch it off.
    pub metrics_listen: Option<SocketAddr>,
    /// A region file; default: the built-in West-Brabant West configuration.
    pub region_file: Option<PathBuf>,
    /// `text` or `json` log lines.
    pub log_format: LogFormat,
    /// Upper bound of one request's processing time, in seconds.
    pub request_timeout_secs: u64,
    /// Requests per second one token may make on average (0: no limit) ...
    pub rate_limit_per_second: u32,
    /// ... and at once.
    pub rate_limit_burst: u32,
    /// Set when clients reach the API over HTTPS only, through the TLS-terminating proxy in front of it
    /// (README, "TLS"): responses then carry `Strict-Transport-Security`.
    pub strict_transport_security: bool,
    /// Seconds between background syncs of the release index with the store (0: sync only when a
    /// release is computed). Every release syncs first anyway; this keeps a release after a large
    /// upload from waiting for the catch-up.
    pub release_index_sync_secs: u64,
    /// Seconds between checks of the region calendar for rounds that are due (only when the region
    /// file has a calendar).
    pub calendar_check_secs: u64,
    /// A connection that has not sent a request's whole header within this many seconds is closed.
    pub header_read_timeout_secs: u64,
    /// At most this many API connections are served at once; more wait in the listen queue.
    pub max_connections: usize,
    /// At most this many uploads are opened and validated at once (each may hold a batch of up to the
    /// region's size limit in memory); more wait their turn.
    pub max_concurrent_ingests: usize,
    /// Seconds between maintenance runs: the change feed's pseudonyms of withdrawn trajectories are
    /// erased after a day, and SQLite's write-ahead log is checkpointed so deleted rows leave the disk.
    pub maintenance_secs: u64,
    /// Refused (`forbidden`) calls are recorded in the audit chain once per token and this many
    /// seconds: the first at once, the rest of the window as one counted entry when it closes, so that
    /// a token cannot flood the chain.
    pub audit_refusal_window_secs: u64,
    /// Seconds between reloads of the service keys from the database (0: only on SIGHUP), so that a
    /// key rotated by `admin keys rotate` or another instance reaches this one.
    pub key_reload_secs: u64,
    /// Minutes a dashboard session lasts after sign-in (then the person signs in again).
    pub dashboard_session_minutes: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    Text,
    Json,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            data_dir: PathBuf::from("data"),
            database_url: None,
            listen: SocketAddr::from(([127, 0, 0, 1], 8080)),
            metrics_listen: Some(SocketAddr::from(([127, 0, 0, 1], 9090))),
            region_file: None,
            log_format: LogFormat::Text,
            request_timeout_secs: 60,
            rate_limit_per_second: 50,
            rate_limit_burst: 200,
            strict_transport_security: false,
            release_index_sync_secs: 5,
            calendar_check_secs: 60,
            header_read_timeout_secs: 10,
            max_connections: 1024,
            max_concurrent_ingests: 4,
            maintenance_secs: 600,
            audit_refusal_window_secs: 60,
            key_reload_secs: 60,
            dashboard_session_minutes: 480,
        }
    }
}

impl std::fmt::Debug for Config {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Config")
            .field("data_dir", &self.data_dir)
            .field(
                "database_url",
                &self.database_url.as_deref().map(redact_url),
            )
            .field("listen", &self.listen)
            .field("metrics_listen", &self.metrics_listen)
            .field("region_file", &self.region_file)
            .field("log_format", &self.log_format)
            .field("request_timeout_secs", &self.request_timeout_secs)
            .field("rate_limit_per_second", &self.rate_limit_per_second)
            .field("rate_limit_burst", &self.rate_limit_burst)
            .field("strict_transport_security", &self.strict_transport_security)
            .field("release_index_sync_secs", &self.release_index_sync_secs)
            .field("calendar_check_secs", &self.calendar_check_secs)
            .field("header_read_timeout_secs", &self.header_read_timeout_secs)
            .field("max_connections", &self.max_connections)
            .field("max_concurrent_ingests", &self.max_concurrent_ingests)
            .field("maintenance_secs", &self.maintenance_secs)
            .field("audit_refusal_window_secs", &self.audit_refusal_window_secs)
            .field("key_reload_secs", &self.key_reload_secs)
            .field("dashboard_session_minutes", &self.dashboard_session_minutes)
            .finish()
    }
}

impl Config {
    /// Defaults, then the file (if given, or `kwm-service.toml` in the working directory if present),
    /// then `KWM__` environment variables (`KWM__LISTEN=0.0.0.0:8080`, `KWM__DATABASE_URL=...`).
    pub fn load(file: Option<&Path>) -> anyhow::Result<Self> {
        let mut fig = Figment::from(Serialized::defaults(Config::default()));
        match file {
            Some(path) => {
                if !path.exists() {
                    anyhow::bail!("config file {} does not exist", path.display());
                }
                fig = fig.merge(Toml::file(path));
            }
            None => fig = fig.merge(Toml::file("kwm-service.toml")),
        }
        fig = fig.merge(Env::prefixed("KWM__").split("__").lowercase(true));
        fig.extract()
            .map_err(|e| anyhow::anyhow!("configuration is not valid: {e}"))
    }

    /// The database URL in force.
    pub fn database_url(&self) -> String {
        match &self.database_url {
            Some(url) => url.clone(),
            None => format!("sqlite://{}", self.data_dir.join("kwm.sqlite3").display()),
        }
    }

    /// The database URL with any password replaced, for printing.
    pub fn database_url_redacted(&self) -> String {
        redact_url(&self.database_url())
    }

    pub fn region(&self) -> anyhow::Result<RegionConfig> {
        match &self.region_file {
            Some(p) => Ok(RegionConfig::from_file(p)?),
            None => Ok(RegionConfig::wbw()),
        }
    }
}

/// Replaces the password of `scheme://user:password@host` with `***`.
pub fn redact_url(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_string();
    };
    let Some((userinfo, host)) = rest.split_once('@') else {
        return url.to_string();
    };
    match userinfo.split_once(':') {
        Some((user, _)) => format!("{scheme}://{user}:***@{host}"),
        None => url.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_are_redacted() {
        assert_eq!(
            redact_url("postgres://kwm:s3cret@db:5432/kwm"),
            "postgres://kwm:***@db:5432/kwm"
        );
        assert_eq!(redact_url("postgres://kwm@db/kwm"), "postgres://kwm@db/kwm");
        assert_eq!(redact_url("sqlite://data/x"), "sqlite://data/x");
    }

    #[test]
    fn unknown_keys_are_refused() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("c.toml");
        std::fs::write(&path, "listen = \"127.0.0.1:1\"\nlisten_port = 3\n").expect("write");
        let err = Config::load(Some(&path)).expect_err("unknown key");
        assert!(err.to_string().contains("listen_port"), "{err}");
    }

    #[test]
    fn debug_shows_no_database_password() {
        let config = Config {
            database_url: Some("postgres://kwm:s3cret-pw@db:5432/kwm".into()),
            ..Config::default()
        };
        let shown = format!("{config:?} {config:#?}");
        assert!(!shown.contains("s3cret-pw"), "{shown}");
        assert!(shown.contains("postgres://kwm:***@db:5432/kwm"), "{shown}");
    }

    #[test]
    fn a_file_sets_fields_and_keeps_the_other_defaults() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("c.toml");
        std::fs::write(
            &path,
            "rate_limit_per_second = 3\nstrict_transport_security = true\n",
        )
        .expect("write");
        let config = Config::load(Some(&path)).expect("valid");
        assert_eq!(config.rate_limit_per_second, 3);
        assert!(config.strict_transport_security);
        assert_eq!(config.rate_limit_burst, Config::default().rate_limit_burst);
    }
}
