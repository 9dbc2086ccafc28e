//! Building and running the application: open the store and the keys, bind the listeners first, then
//! serve, so that tests can start the real service on port 0 and use it at once.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use axum::extract::{DefaultBodyLimit, Request, State};
use axum::http::{header, HeaderValue};
use axum::middleware::{from_fn, from_fn_with_state, Next};
use axum::response::{IntoResponse, Response};
use axum::Router;
use kwm_schemas::RegionConfig;
use tokio::net::TcpListener;
use tower_http::catch_panic::CatchPanicLayer;
use tower_http::set_header::SetResponseHeaderLayer;
use tower_http::trace::TraceLayer;

use crate::app::error::ApiError;
use crate::config::Config;
use crate::http::problem::{fallback_not_found, problem_for_bare_errors};
use crate::http::ratelimit::RateLimiter;
use crate::keys::{Keyring, KeysReport, MasterKey, PseudonymKey, WhenNew};
use crate::metrics::Metrics;
use crate::store::{self, Store};

/// Everything a handler needs, cheap to clone.
#[derive(Debug, Clone)]
pub struct AppState {
    pub store: Arc<dyn Store>,
    pub keyring: Arc<Keyring>,
    pub pseudonym_key: Arc<PseudonymKey>,
    pub region: Arc<RegionConfig>,
    pub metrics: Metrics,
    pub rate_limiter: Arc<RateLimiter>,
    /// One round computation at a time per instance (the ledger keeps instances consistent).
    pub publish_lock: Arc<tokio::sync::Mutex<()>>,
    /// Frozen releases, parsed and serialised once.
    pub releases: Arc<crate::app::rounds::ReleaseCache>,
    /// The stored trajectories in memory, in the engine's form, kept in step with the store.
    pub index: Arc<crate::index::ReleaseIndex>,
    /// Refused calls counted per token and window, so that they cannot flood the audit chain.
    pub refusals: Arc<crate::app::audit_trail::RefusalTally>,
    /// The use cases' one clock.
    pub clock: crate::clock::SharedClock,
    /// How the dashboard's sign-in sessions behave.
    pub sessions: crate::http::dashboard::SessionSettings,
    /// The dashboard's last read of the ledger and the pages rendered from it.
    pub dashboard: Arc<crate::http::dashboard::pages::PageCache>,
}

impl AppState {
    /// What publishing a round needs, taken from the state.
    pub fn round_deps(&self) -> crate::app::rounds::RoundDeps {
        crate::app::rounds::RoundDeps {
            store: self.store.clone(),
            index: self.index.clone(),
            region: self.region.clone(),
            pseudonym_key: self.pseudonym_key.clone(),
            metrics: self.metrics.clone(),
            releases: self.releases.clone(),
            lock: self.publish_lock.clone(),
            clock: self.clock.clone(),
        }
    }

    /// What an upload needs, taken from the state.
    pub fn upload_deps(&self) -> crate::app::upload::UploadDeps {
        crate::app::upload::UploadDeps {
            store: self.store.clone(),
            keyring: self.keyring.clone(),
            pseudonym_key: self.pseudonym_key.clone(),
            region: self.region.clone(),
            metrics: self.metrics.clone(),
            clock: self.clock.clone(),
        }
    }

    /// What withdrawals and exports need, taken from the state.
    pub fn custody_deps(&self) -> crate::app::custody::CustodyDeps {
        crate::app::custody::CustodyDeps {
            store: self.store.clone(),
            metrics: self.metrics.clone(),
            clock: self.clock.clone(),
        }
    }

    /// What research queries need, taken from the state.
    pub fn research_deps(&self) -> crate::app::research::ResearchDeps {
        crate::app::research::ResearchDeps {
            store: self.store.clone(),
            index: self.index.clone(),
            region: self.region.clone(),
            pseudonym_key: self.pseudonym_key.clone(),
            clock: self.clock.clone(),
        }
    }

    /// Where audit entries go.
    pub fn recorder(&self) -> crate::app::audit_trail::Recorder<'_> {
        crate::app::audit_trail::Recorder {
            store: self.store.as_ref(),
            metrics: &self.metrics,
        }
    }
}

/// What starting the service created or found, for the start-up message.
#[derive(Debug, Clone)]
pub struct StartupReport {
    pub keys: KeysReport,
}

/// Who opens the service's state, which decides what happens to a database that has no keys yet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OpenMode {
    /// `serve` and `demo`: an embedded SQLite database gets its keys on first start; a PostgreSQL
    /// database (shared by replicas) must have been initialised with `admin init`.
    Serve,
    /// The admin commands: refuse a data dir or database that was never initialised.
    Admin,
    /// `admin init`: initialise a new database (or import the key files of an earlier version).
    Init,
}

/// A built, bound, not yet serving application.
#[derive(Debug)]
pub struct Application {
    listener: TcpListener,
    metrics_listener: Option<TcpListener>,
    state: AppState,
    config: Config,
    report: StartupReport,
    /// SIGHUP, taken at build time (before the service says it serves), so that a hang-up sent at
    /// once reloads the keys instead of ending the process.
    hangup: Option<tokio::signal::unix::Signal>,
    /// A shared lock on the data dir's [`IN_USE_FILE`], held while the instance lives.
    _in_use: std::fs::File,
}

/// The file in the data dir that every running instance holds a shared lock on, so that `kwm-service
/// demo` never removes a directory a service runs on: a pool opens its SQLite connections by path, and
/// one opened after the directory was made anew would reach another database.
pub const IN_USE_FILE: &str = "in-use.lock";

/// Takes the shared lock on `dir`'s [`IN_USE_FILE`] (created, 0600, if missing).
fn hold_data_dir(dir: &std::path::Path) -> anyhow::Result<std::fs::File> {
    use std::os::unix::fs::OpenOptionsExt;
    let path = dir.join(IN_USE_FILE);
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o600)
        .open(&path)
        .with_context(|| format!("opening {}", path.display()))?;
    file.lock_shared()
        .with_context(|| format!("locking {}", path.display()))?;
    Ok(file)
}

/// Whether a running instance holds `dir` (see [`IN_USE_FILE`]).
pub fn data_dir_in_use(dir: &std::path::Path) -> anyhow::Result<bool> {
    let path = dir.join(IN_USE_FILE);
    let file = match std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(&path)
    {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(false),
        Err(e) => return Err(e).with_context(|| format!("opening {}", path.display())),
    };
    match file.try_lock() {
        Ok(()) => Ok(false),
        Err(std::fs::TryLockError::WouldBlock) => Ok(true),
        Err(std::fs::TryLockError::Error(e)) => {
            Err(e).with_context(|| format!("locking {}", path.display()))
        }
    }
}

/// The file of a SQLite database URL (`sqlite://PATH?options`); `None` for other URLs and for an
/// in-memory database.
fn sqlite_file(url: &str) -> Option<std::path::PathBuf> {
    let rest = url
        .strip_prefix("sqlite://")
        .or_else(|| url.strip_prefix("sqlite:"))?;
    let path = rest.split('?').next().unwrap_or_default();
    (!path.is_empty() && !path.contains(":memory:")).then(|| std::path::PathBuf::from(path))
}

/// Opens the data dir, keys, region and store the configuration names. Used by `serve` and by the
/// admin commands, so both see the same service; `mode` says who opens it (see [`OpenMode`]).
pub async fn open_state(
    config: &Config,
    mode: OpenMode,
    clock: crate::clock::SharedClock,
) -> anyhow::Result<(AppState, StartupReport)> {
    let url = config.database_url();
    let shown = config.database_url_redacted();
    let sqlite = sqlite_file(&url);
    if mode == OpenMode::Admin {
        // An admin command in the wrong directory must not create an empty store and "succeed".
        if let Some(file) = sqlite.as_ref().filter(|f| !f.exists()) {
            anyhow::bail!(
                "there is no service database here: {} does not exist. Pass the service's \
                 --data-dir (or --database-url); to set up a new service in {}, run \
                 `kwm-service --data-dir {} admin init`",
                file.display(),
                config.data_dir.display(),
                config.data_dir.display()
            );
        }
    } else {
        private_dir(&config.data_dir)?;
    }
    let region = config.region()?;
    let env_master = MasterKey::from_env()?;
    let store = store::connect(&url)
        .await
        .with_context(|| format!("opening database {shown}"))?;
    let when_new = match mode {
        OpenMode::Init => WhenNew::Create,
        OpenMode::Serve if sqlite.is_some() || url.starts_with("sqlite:") => WhenNew::Create,
        OpenMode::Serve | OpenMode::Admin => WhenNew::Refuse,
    };
    let keys = crate::keys::open(
        store.clone(),
        &config.data_dir,
        &shown,
        when_new,
        env_master,
        clock.clone(),
    )
    .await
    .with_context(|| format!("opening the service keys of database {shown}"))?;
    let (pseudonym_key, keyring): (PseudonymKey, Keyring) = (keys.pseudonym_key, keys.keyring);
    let index = Arc::new(crate::index::ReleaseIndex::new(&region));
    let state = AppState {
        store,
        keyring: Arc::new(keyring),
        pseudonym_key: Arc::new(pseudonym_key),
        region: Arc::new(region),
        metrics: Metrics::new()?,
        rate_limiter: Arc::new(RateLimiter::new(
            config.rate_limit_per_second,
            config.rate_limit_burst,
        )),
        publish_lock: Arc::new(tokio::sync::Mutex::new(())),
        releases: Arc::new(crate::app::rounds::ReleaseCache::default()),
        index,
        refusals: Arc::new(crate::app::audit_trail::RefusalTally::new(
            Duration::from_secs(config.audit_refusal_window_secs),
        )),
        clock,
        sessions: crate::http::dashboard::SessionSettings {
            lifetime: time::Duration::minutes(
                i64::try_from(config.dashboard_session_minutes.max(1)).unwrap_or(480),
            ),
            https_only: config.strict_transport_security,
        },
        dashboard: Arc::default(),
    };
    Ok((state, StartupReport { keys: keys.report }))
}

/// Initialises the service keys of the database the configuration names, as `kwm-service admin
/// init` does (a database initialised before is only checked). A PostgreSQL database needs this once
/// before `serve`.
pub async fn initialise(config: &Config) -> anyhow::Result<KeysReport> {
    let (_, report) = open_state(config, OpenMode::Init, crate::clock::system()).await?;
    Ok(report.keys)
}

impl Application {
    pub async fn build(config: Config) -> anyhow::Result<Self> {
        Self::build_with_clock(config, crate::clock::system()).await
    }

    /// [`Application::build`], on `clock` instead of the system's (tests set the time with it).
    pub async fn build_with_clock(
        config: Config,
        clock: crate::clock::SharedClock,
    ) -> anyhow::Result<Self> {
        let (state, report) = open_state(&config, OpenMode::Serve, clock).await?;
        let in_use = hold_data_dir(&config.data_dir)?;
        let hangup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()).ok();
        let listener = TcpListener::bind(config.listen)
            .await
            .with_context(|| format!("binding the API listener to {}", config.listen))?;
        let metrics_listener = match config.metrics_listen {
            Some(addr) => Some(
                TcpListener::bind(addr)
                    .await
                    .with_context(|| format!("binding the metrics listener to {addr}"))?,
            ),
            None => None,
        };
        Ok(Self {
            listener,
            metrics_listener,
            state,
            config,
            report,
            hangup,
            _in_use: in_use,
        })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.listener.local_addr().unwrap_or(self.config.listen)
    }

    pub fn port(&self) -> u16 {
        self.local_addr().port()
    }

    pub fn metrics_addr(&self) -> Option<SocketAddr> {
        self.metrics_listener
            .as_ref()
            .and_then(|l| l.local_addr().ok())
    }

    pub fn state(&self) -> &AppState {
        &self.state
    }

    pub fn config(&self) -> &Config {
        &self.config
    }

    pub fn report(&self) -> &StartupReport {
        &self.report
    }

    /// Serves until Ctrl-C or SIGTERM; in-flight requests finish first.
    pub async fn run_until_stopped(self) -> anyhow::Result<()> {
        self.run_until(shutdown_signal()).await
    }

    /// Serves until `shutdown` completes; in-flight requests finish first.
    pub async fn run_until(
        self,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> anyhow::Result<()> {
        let app = api_router(self.state.clone(), &self.config);
        let (tx, rx) = tokio::sync::watch::channel(false);
        if let Some(ml) = self.metrics_listener {
            let router = crate::http::middleware::router(
                self.state.metrics.clone(),
                self.state.store.clone(),
            );
            let mut rx = rx.clone();
            tokio::spawn(async move {
                let stop = async move {
                    let _ = rx.wait_for(|v| *v).await;
                };
                if let Err(e) = axum::serve(ml, router).with_graceful_shutdown(stop).await {
                    tracing::error!(error = %e, "metrics listener failed");
                }
            });
        }
        {
            let every = (self.config.key_reload_secs > 0)
                .then(|| Duration::from_secs(self.config.key_reload_secs));
            let reload =
                crate::keys::keep_keys_fresh(self.state.keyring.clone(), every, self.hangup);
            let mut rx = rx.clone();
            tokio::spawn(async move {
                tokio::select! {
                    () = reload => {}
                    _ = rx.wait_for(|v| *v) => {}
                }
            });
        }
        if self.config.release_index_sync_secs > 0 {
            let every = Duration::from_secs(self.config.release_index_sync_secs);
            let sync = self.state.index.clone().keep_in_step(
                self.state.store.clone(),
                self.state.metrics.clone(),
                every,
            );
            let mut rx = rx.clone();
            tokio::spawn(async move {
                tokio::select! {
                    () = sync => {}
                    _ = rx.wait_for(|v| *v) => {}
                }
            });
        }
        if !self.state.region.calendar.is_empty() {
            let calendar = crate::app::rounds::run_calendar(
                self.state.round_deps(),
                Duration::from_secs(self.config.calendar_check_secs.max(1)),
            );
            let mut rx = rx.clone();
            tokio::spawn(async move {
                tokio::select! {
                    () = calendar => {}
                    _ = rx.wait_for(|v| *v) => {}
                }
            });
        }
        if self.config.maintenance_secs > 0 {
            let maintenance = maintain(
                self.state.store.clone(),
                Duration::from_secs(self.config.maintenance_secs),
            );
            let mut rx = rx.clone();
            tokio::spawn(async move {
                tokio::select! {
                    () = maintenance => {}
                    _ = rx.wait_for(|v| *v) => {}
                }
            });
        }
        {
            let record = self
                .state
                .refusals
                .clone()
                .record_closed_windows(self.state.store.clone(), self.state.metrics.clone());
            let mut rx = rx.clone();
            tokio::spawn(async move {
                tokio::select! {
                    () = record => {}
                    _ = rx.wait_for(|v| *v) => {}
                }
            });
        }
        let limits = crate::http::server::ConnectionLimits {
            header_read_timeout: Duration::from_secs(self.config.header_read_timeout_secs.max(1)),
            max_connections: self.config.max_connections,
            shutdown_grace: Duration::from_secs(self.config.request_timeout_secs.max(1)),
        };
        let result = crate::http::server::serve(self.listener, app, limits, shutdown).await;
        // Refusals counted in windows still open are recorded before the service stops.
        for count in self.state.refusals.take_all() {
            crate::app::audit_trail::append_best_effort(self.state.recorder(), count.to_entry())
                .await;
        }
        let _ = tx.send(true);
        drop(rx);
        result.context("serving the API")
    }
}

/// Creates a directory, and any missing parents, readable by the service's user alone (0700). An
/// existing directory is left as the operator made it.
pub fn private_dir(dir: &std::path::Path) -> anyhow::Result<()> {
    use std::os::unix::fs::DirBuilderExt;
    if dir.is_dir() {
        return Ok(());
    }
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .with_context(|| format!("creating data dir {}", dir.display()))
}

/// Erases what withdrawals left behind, on its own schedule (not only when a release is computed): the
/// change feed's pseudonyms of withdrawn trajectories after a day, HPKE keys retired for
/// [`crate::keys::RETIRED_KEY_RETENTION`], expired dashboard sessions, and, on SQLite, deleted pages in the write-ahead log. Failures are logged and retried at the next run.
async fn maintain(store: Arc<dyn crate::store::Store>, every: Duration) {
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let before = time::OffsetDateTime::now_utc() - crate::index::REMOVAL_RETENTION;
        match store.prune_change_feed(before).await {
            Ok(0) => {}
            Ok(erased) => {
                tracing::info!(erased, "withdrawn trajectories erased from the change feed")
            }
            Err(e) => tracing::warn!(error = %e, "maintenance: pruning the change feed failed"),
        }
        let retired_before = time::OffsetDateTime::now_utc() - crate::keys::RETIRED_KEY_RETENTION;
        match store.delete_retired_keys(retired_before).await {
            Ok(0) => {}
            Ok(deleted) => tracing::info!(deleted, "retired HPKE keys deleted"),
            Err(e) => tracing::warn!(error = %e, "maintenance: deleting retired keys failed"),
        }
        match store
            .delete_expired_sessions(time::OffsetDateTime::now_utc())
            .await
        {
            Ok(0) => {}
            Ok(ended) => tracing::debug!(ended, "expired dashboard sessions deleted"),
            Err(e) => tracing::warn!(error = %e, "maintenance: deleting expired sessions failed"),
        }
        if let Err(e) = store.erase_deleted().await {
            tracing::warn!(error = %e, "maintenance: erasing deleted rows failed");
        }
    }
}

/// The answer to a request whose handler panicked: the internal problem, nothing of the panic (the
/// panic hook logged where it happened).
fn panic_response(_panic: Box<dyn std::any::Any + Send>) -> Response {
    ApiError::Internal(anyhow::anyhow!("a request handler panicked")).into_response()
}

/// The API with its middleware, innermost first: the deadline around the handler; the body limit; bare
/// error responses (wrong method, body too large) made problem documents; metrics, which so see every
/// answer including timeouts; security headers; the trace span.
pub fn api_router(state: AppState, config: &Config) -> Router {
    let body_limit = usize::try_from(state.region.ingest.max_batch_bytes).unwrap_or(usize::MAX);
    let deadline = Duration::from_secs(config.request_timeout_secs);
    // The dashboard's pages sit beside the API under the same middleware; each sets its own policy.
    let mut router = crate::http::routes::router()
        .merge(crate::http::dashboard::router())
        .fallback(fallback_not_found)
        // A handler that panics is answered with the internal problem (logged by the panic hook),
        // instead of a dropped connection.
        .layer(CatchPanicLayer::custom(panic_response))
        .layer(from_fn_with_state(
            Arc::new(tokio::sync::Semaphore::new(
                config.max_concurrent_ingests.max(1),
            )),
            one_of_few_uploads,
        ))
        .layer(from_fn_with_state(deadline, stop_at_deadline))
        .layer(DefaultBodyLimit::max(body_limit))
        .layer(from_fn(problem_for_bare_errors))
        .layer(from_fn_with_state(
            state.clone(),
            crate::http::forbidden::audit_forbidden,
        ))
        .layer(from_fn_with_state(
            state.metrics.clone(),
            crate::http::middleware::track,
        ));
    // The API serves JSON and files, never pages: nothing may be framed, run or referred from.
    // A route that does serve a page sets its own Content-Security-Policy.
    router = router
        .layer(SetResponseHeaderLayer::if_not_present(
            header::CONTENT_SECURITY_POLICY,
            HeaderValue::from_static("default-src 'none'; frame-ancestors 'none'"),
        ))
        .layer(SetResponseHeaderLayer::overriding(
            header::X_FRAME_OPTIONS,
            HeaderValue::from_static("DENY"),
        ))
        .layer(SetResponseHeaderLayer::overriding(
            header::REFERRER_POLICY,
            HeaderValue::from_static("no-referrer"),
        ))
        .layer(SetResponseHeaderLayer::overriding(
            header::X_CONTENT_TYPE_OPTIONS,
            HeaderValue::from_static("nosniff"),
        ))
        .layer(SetResponseHeaderLayer::overriding(
            header::CACHE_CONTROL,
            HeaderValue::from_static("no-store"),
        ));
    if config.strict_transport_security {
        // Only meaningful over HTTPS, which the TLS-terminating proxy provides (README, "TLS").
        router = router.layer(SetResponseHeaderLayer::overriding(
            header::STRICT_TRANSPORT_SECURITY,
            HeaderValue::from_static("max-age=31536000; includeSubDomains"),
        ));
    }
    // A path may hold a pseudonym: spans show the URI with it left out.
    let trace = TraceLayer::new_for_http().make_span_with(|req: &Request| {
        tracing::debug_span!(
            "request",
            method = %req.method(),
            uri = %crate::telemetry::loggable_uri(req.uri()),
            version = ?req.version(),
        )
    });
    router.layer(trace).with_state(state)
}

/// Middleware: an upload waits for one of the instance's few ingest slots before its body is read, so
/// that concurrent uploads (each up to the region's batch size, decrypted and parsed) cannot take the
/// memory of the machine. The wait counts toward the request's deadline.
async fn one_of_few_uploads(
    State(slots): State<Arc<tokio::sync::Semaphore>>,
    req: Request,
    next: Next,
) -> Response {
    if req.method() != axum::http::Method::POST || req.uri().path() != "/v1/batches" {
        return next.run(req).await;
    }
    match slots.acquire().await {
        Ok(_slot) => next.run(req).await,
        Err(_) => {
            ApiError::Internal(anyhow::anyhow!("the ingest slots are closed")).into_response()
        }
    }
}

/// Middleware: stops a request that runs past the configured deadline and answers a retryable
/// `unavailable` problem. The handler's future is dropped, so an open transaction rolls back.
async fn stop_at_deadline(State(limit): State<Duration>, req: Request, next: Next) -> Response {
    match tokio::time::timeout(limit, next.run(req)).await {
        Ok(res) => res,
        Err(_) => ApiError::TimedOut {
            after_secs: limit.as_secs(),
        }
        .into_response(),
    }
}

async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {},
        _ = term => {},
    }
    tracing::info!("shutting down: finishing in-flight requests");
}

#[cfg(test)]
mod tests {
    use axum::body::Body;
    use axum::http::{Request, StatusCode};
    use axum::routing::get;
    use tower::ServiceExt;

    use super::*;

    #[tokio::test]
    async fn a_panicking_handler_is_answered_with_the_internal_problem() {
        async fn boom() -> &'static str {
            panic!("a handler bug")
        }
        let app = Router::new()
            .route("/boom", get(boom))
            .layer(CatchPanicLayer::custom(panic_response));
        let res = app
            .oneshot(
                Request::get("/boom")
                    .body(Body::empty())
                    .expect("a request"),
            )
            .await
            .expect("an answer, not a dropped connection");
        assert_eq!(res.status(), StatusCode::INTERNAL_SERVER_ERROR);
        assert_eq!(
            res.headers()
                .get(header::CONTENT_TYPE)
                .and_then(|v| v.to_str().ok()),
            Some("application/problem+json")
        );
        let body = axum::body::to_bytes(res.into_body(), 1 << 16)
            .await
            .expect("a body");
        let text = String::from_utf8_lossy(&body);
        assert!(text.contains("internal"), "{text}");
        assert!(!text.contains("handler bug"), "the panic stays out: {text}");
    }
}
