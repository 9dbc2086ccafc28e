//! Fault tests with real processes: the `kwm-service` binary killed with SIGKILL in the middle of a
//! stream of uploads, stopped with SIGTERM during an upload, and cut off from its PostgreSQL server.
//! After each fault every batch is either stored whole with its receipt or not at all, and every
//! acknowledged batch is there. SQLite and PostgreSQL (`KWM_TEST_DATABASE_URL`); the outage runs on a
//! private PostgreSQL server of its own, since the shared one must never be stopped.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use kwm_schemas::api::{BatchReceipt, Health};
use kwm_schemas::envelope::SealedBatch;
use kwm_schemas::problem::{Problem, ProblemType};
use kwm_schemas::{AgbCode, RegionConfig, WireRecord};
use kwm_sdk::batch::{now_utc_seconds, seal_records};
use kwm_sdk::prepare::{prepare_file, PrepareContext};
use kwm_sdk::{Client, ClientError, ProviderKeys, Pseudonymiser, RetryPolicy, Token};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use tempfile::TempDir;
use tokio::sync::mpsc;
use uuid::Uuid;

/// Longest wait for a service to answer `/readyz` after it was started.
const READY_TIMEOUT: Duration = Duration::from_secs(90);

fn in_ci() -> bool {
    std::env::var("CI").is_ok_and(|v| !v.is_empty() && v != "false")
}

// ---------------------------------------------------------------------------------------------------
// The service binary
// ---------------------------------------------------------------------------------------------------

/// The `kwm-service` binary of the profile these tests were built with: next to the test executable
/// (`target/<profile>/deps/faults-*` -> `target/<profile>/kwm-service`), built first when it is missing
/// or older than a source file of the service or of a crate it uses (`cargo nextest run -p kwm-tests`
/// builds no other package's binaries, and a stale one would test old code). `KWM_SERVICE_BIN` names
/// another binary.
fn service_binary() -> &'static Path {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| {
        if let Some(bin) = std::env::var_os("KWM_SERVICE_BIN") {
            return PathBuf::from(bin);
        }
        let exe = std::env::current_exe().expect("the test executable's path");
        let deps = exe.parent().expect("the test executable's directory");
        let profile_dir = if deps.ends_with("deps") {
            deps.parent().expect("the profile directory")
        } else {
            deps
        };
        let bin = profile_dir.join(format!("kwm-service{}", std::env::consts::EXE_SUFFIX));
        let built = std::fs::metadata(&bin).and_then(|m| m.modified()).ok();
        if built.is_none_or(|built| newest_source() > Some(built)) {
            build_service(profile_dir);
        }
        assert!(
            bin.is_file(),
            "{} is missing after building it; build it with `cargo build -p kwm-service --bin kwm-service`",
            bin.display()
        );
        bin
    })
}

/// The newest modification time among the sources the service binary is built from.
fn newest_source() -> Option<std::time::SystemTime> {
    fn walk(path: &Path, newest: &mut Option<std::time::SystemTime>) {
        let Ok(meta) = std::fs::metadata(path) else {
            return;
        };
        if meta.is_dir() {
            for entry in std::fs::read_dir(path).into_iter().flatten().flatten() {
                walk(&entry.path(), newest);
            }
        } else if let Ok(m) = meta.modified() {
            *newest = (*newest).max(Some(m));
        }
    }
    let root = Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("the workspace root");
    let mut newest = None;
    for part in [
        "Cargo.toml",
        "Cargo.lock",
        "service/Cargo.toml",
        "service/build.rs",
        "service/src",
        "service/migrations",
        "schemas/Cargo.toml",
        "schemas/src",
        "schemas/regions",
        "client-sdk/Cargo.toml",
        "client-sdk/src",
    ] {
        walk(&root.join(part), &mut newest);
    }
    newest
}

fn build_service(profile_dir: &Path) {
    let profile = profile_dir
        .file_name()
        .and_then(|n| n.to_str())
        .expect("a profile directory name");
    let target_dir = profile_dir.parent().expect("the target directory");
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut cmd = Command::new(cargo);
    // Without the variables cargo set for this test: build scripts (ring's, say) watch some of
    // them, and a different value would rebuild them here and again in the next outer build.
    for (key, _) in std::env::vars_os() {
        let k = key.to_string_lossy();
        if k.starts_with("CARGO_PKG_")
            || k.starts_with("CARGO_BIN_")
            || k.starts_with("CARGO_MANIFEST_")
            || k.starts_with("CARGO_CRATE_")
            || k.starts_with("NEXTEST")
            || matches!(
                k.as_ref(),
                "CARGO"
                    | "CARGO_PRIMARY_PACKAGE"
                    | "CARGO_TARGET_TMPDIR"
                    | "CARGO_RUSTC_CURRENT_DIR"
                    | "OUT_DIR"
            )
        {
            cmd.env_remove(key);
        }
    }
    cmd.args(["build", "-p", "kwm-service", "--bin", "kwm-service"])
        .arg("--target-dir")
        .arg(target_dir)
        .current_dir(env!("CARGO_MANIFEST_DIR"));
    match profile {
        "debug" => {}
        "release" => {
            cmd.arg("--release");
        }
        other => {
            cmd.args(["--profile", other]);
        }
    }
    eprintln!("building kwm-service ({profile}) for the fault tests");
    let status = cmd.status().expect("running cargo build");
    assert!(
        status.success(),
        "cargo build -p kwm-service --bin kwm-service failed: {status}"
    );
}

/// A port that was free a moment ago (the service binds it itself; a lost race is retried).
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port on 127.0.0.1")
        .port()
}

// ---------------------------------------------------------------------------------------------------
// A deployment: data dir + database, and the service processes run on them
// ---------------------------------------------------------------------------------------------------

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Backend {
    Sqlite,
    Postgres,
}

/// A data dir and a database that successive service processes share, as one installation does
/// across restarts.
struct Deployment {
    data_dir: TempDir,
    database_url: String,
    /// Log files of the processes; kept apart from the data dir.
    log_dir: TempDir,
    started: AtomicUsize,
    _pg: Option<kwm_tests::EphemeralPostgres>,
}

impl Deployment {
    /// `None` when PostgreSQL is not configured (outside CI).
    async fn new(backend: Backend) -> Option<Self> {
        let data_dir = tempfile::tempdir().expect("a data dir");
        let (database_url, pg) = match backend {
            Backend::Sqlite => (
                format!("sqlite://{}", data_dir.path().join("kwm.sqlite3").display()),
                None,
            ),
            Backend::Postgres => {
                let db = kwm_tests::EphemeralPostgres::create().await?;
                (db.url().to_string(), Some(db))
            }
        };
        Some(Self::with(data_dir, database_url, pg))
    }

    fn on_database(database_url: String) -> Self {
        Self::with(tempfile::tempdir().expect("a data dir"), database_url, None)
    }

    fn with(
        data_dir: TempDir,
        database_url: String,
        pg: Option<kwm_tests::EphemeralPostgres>,
    ) -> Self {
        let deployment = Self {
            data_dir,
            database_url,
            log_dir: tempfile::tempdir().expect("a log dir"),
            started: AtomicUsize::new(0),
            _pg: pg,
        };
        // A new service is initialised once (its keys in the database), as the operator does.
        let out = deployment
            .command()
            .args(["admin", "init"])
            .output()
            .expect("running kwm-service admin init");
        assert!(
            out.status.success(),
            "admin init failed ({}):\n{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
        // And the check value of the region's key (the tests' fixed one) is registered once.
        let out = deployment
            .command()
            .args(["admin", "region", "key-check", "set"])
            .arg(kwm_tests::regional_key().check_value())
            .output()
            .expect("running kwm-service admin region key-check set");
        assert!(
            out.status.success(),
            "admin region key-check set failed ({}):\n{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
        deployment
    }

    /// `kwm-service --data-dir DIR --database-url URL`, with no configuration from this environment.
    fn command(&self) -> Command {
        let mut cmd = Command::new(service_binary());
        for (key, _) in std::env::vars_os() {
            if key.to_string_lossy().starts_with("KWM_") {
                cmd.env_remove(key);
            }
        }
        cmd.env_remove("RUST_LOG")
            // Uploads come faster than a provider's would; the limiter is not under test.
            .env("KWM__RATE_LIMIT_PER_SECOND", "0")
            // No ./kwm-service.toml of the working directory.
            .current_dir(self.data_dir.path())
            .arg("--data-dir")
            .arg(self.data_dir.path())
            .arg("--database-url")
            .arg(&self.database_url)
            .stdin(Stdio::null());
        cmd
    }

    /// `kwm-service admin provider add`: registers the provider and returns the token it prints.
    fn register_provider(&self, agb: AgbCode, signing_pub: &Path) -> String {
        let out = self
            .command()
            .args(["admin", "provider", "add", "--agb", agb.as_str()])
            .args(["--name", "fault test provider", "--signing-key"])
            .arg(signing_pub)
            .output()
            .expect("running kwm-service admin provider add");
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "admin provider add failed ({}):\n{stdout}\n{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
        // The token is the line after "Its bearer token ...".
        let mut lines = stdout.lines().map(str::trim);
        lines
            .by_ref()
            .find(|l| l.contains("bearer token"))
            .expect("admin provider add announces the token");
        lines
            .find(|l| !l.is_empty())
            .expect("admin provider add prints the token")
            .to_string()
    }

    /// Starts `kwm-service serve` on a free port and waits until `/readyz` answers 200.
    async fn start(&self) -> Service {
        let mut last_log = String::new();
        for _ in 0..5 {
            let n = self.started.fetch_add(1, Ordering::Relaxed);
            let port = free_port();
            let log = self.log_dir.path().join(format!("service-{n}.log"));
            let file = std::fs::File::create(&log).expect("a log file");
            let child = self
                .command()
                .arg("serve")
                .arg("--listen")
                .arg(format!("127.0.0.1:{port}"))
                .args(["--metrics-listen", "127.0.0.1:0"])
                .stdout(file.try_clone().expect("the log file"))
                .stderr(file)
                .spawn()
                .expect("starting kwm-service serve");
            let mut service = Service {
                child,
                base_url: format!("http://127.0.0.1:{port}"),
                log,
                http: http_client(),
            };
            match service.wait_ready().await {
                Ok(()) => return service,
                Err(Exited(status)) => {
                    last_log = service.log();
                    if last_log.contains("binding the API listener") {
                        continue; // someone took the port in the meantime
                    }
                    panic!("kwm-service exited at start ({status}):\n{last_log}");
                }
                Err(NotReady) => panic!(
                    "kwm-service did not become ready within {READY_TIMEOUT:?}:\n{}",
                    service.log()
                ),
            }
        }
        panic!("kwm-service could not bind a port in five attempts:\n{last_log}");
    }

    async fn store(&self) -> Arc<dyn kwm_service::store::Store> {
        kwm_service::store::connect(&self.database_url)
            .await
            .expect("the store opens")
    }

    async fn db(&self) -> Db {
        if self.database_url.starts_with("sqlite:") {
            Db::Sqlite(
                sqlx::SqlitePool::connect(&self.database_url)
                    .await
                    .expect("the SQLite database opens"),
            )
        } else {
            Db::Postgres(
                sqlx::PgPool::connect(&self.database_url)
                    .await
                    .expect("the PostgreSQL database opens"),
            )
        }
    }
}

fn http_client() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .build()
        .expect("an HTTP client")
}

/// A running `kwm-service serve`, killed (SIGKILL) on drop if it still runs.
struct Service {
    child: Child,
    base_url: String,
    log: PathBuf,
    http: reqwest::Client,
}

enum StartFailure {
    Exited(ExitStatus),
    NotReady,
}
use StartFailure::{Exited, NotReady};

impl Drop for Service {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

impl Service {
    fn pid(&self) -> Pid {
        Pid::from_raw(i32::try_from(self.child.id()).expect("a pid"))
    }

    /// What the process wrote so far.
    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    async fn wait_ready(&mut self) -> Result<(), StartFailure> {
        let deadline = Instant::now() + READY_TIMEOUT;
        while Instant::now() < deadline {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Err(Exited(status));
            }
            if self.readyz().await.is_ok_and(|(status, _)| status == 200) {
                return Ok(());
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        Err(NotReady)
    }

    /// `GET /readyz`: status and body.
    async fn readyz(&self) -> Result<(u16, Health), reqwest::Error> {
        let res = self
            .http
            .get(format!("{}/readyz", self.base_url))
            .send()
            .await?;
        let status = res.status().as_u16();
        Ok((status, res.json().await?))
    }

    /// SIGKILL, and the exit status.
    fn kill_hard(&mut self) -> ExitStatus {
        self.child.kill().expect("SIGKILL sent");
        self.child.wait().expect("the killed process is reaped")
    }

    fn terminate(&self) {
        kill(self.pid(), Signal::SIGTERM).expect("SIGTERM sent");
    }

    /// Waits for the process to exit; `None` if it still runs after `timeout`.
    async fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.child.try_wait().expect("waiting for kwm-service") {
                return Some(status);
            }
            if Instant::now() >= deadline {
                return None;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

// ---------------------------------------------------------------------------------------------------
// A provider with a synthetic export, and its batches
// ---------------------------------------------------------------------------------------------------

struct TestProvider {
    agb: AgbCode,
    keys: ProviderKeys,
    _keys_dir: TempDir,
    token: String,
    /// The export, pseudonymised and coarsened by the SDK; no two share a trajectory pseudonym, so
    /// the rows a batch wrote are exactly the rows carrying its batch id.
    records: Vec<WireRecord>,
}

impl TestProvider {
    /// A synthetic export of `trajectories` rows, keys from `kwm keygen`, registered with the admin
    /// command.
    fn register(deploy: &Deployment, trajectories: u64, seed: u64) -> Self {
        let export_dir = tempfile::tempdir().expect("an export dir");
        let out = kwm_sdk::synth::generate(&kwm_sdk::synth::SynthOptions::new(
            export_dir.path(),
            1,
            trajectories,
            seed,
        ))
        .expect("a synthetic export");
        let export = &out.providers[0];
        let keys = ProviderKeys::generate().expect("provider keys");
        let keys_dir = tempfile::tempdir().expect("a key dir");
        keys.write_to(keys_dir.path(), true).expect("keys written");
        let regional = kwm_tests::regional_key();
        let ctx = PrepareContext::new(RegionConfig::wbw(), Pseudonymiser::new(&regional, &keys));
        let prepared = prepare_file(&export.path, &ctx).expect("the export prepares");
        assert!(prepared.bad_rows.is_empty(), "synthetic rows are valid");
        let records = prepared.records;
        assert_eq!(records.len() as u64, export.rows);
        let distinct: HashSet<_> = records.iter().map(|r| r.trajectory).collect();
        assert_eq!(distinct.len(), records.len(), "one row per trajectory");
        let token = deploy.register_provider(
            export.agb,
            &keys_dir.path().join(kwm_sdk::keys::SIGNING_PUB_FILE),
        );
        Self {
            agb: export.agb,
            keys,
            _keys_dir: keys_dir,
            token,
            records,
        }
    }

    /// An SDK client of this provider that does not retry: every failure is seen as it happens.
    fn client(&self, service: &Service) -> Client {
        Client::new(&service.base_url, Some(Token::new(self.token.clone())))
            .expect("a client")
            .with_retry(RetryPolicy::none())
    }

    /// Seals `records` in batches of `size`, as `kwm upload` would (a new id per batch).
    async fn seal(&self, client: &Client, records: &[WireRecord], size: usize) -> Vec<SealedBatch> {
        let (_, key) = client.active_key().await.expect("the service's key");
        records
            .chunks(size)
            .map(|chunk| {
                seal_records(
                    chunk,
                    self.agb,
                    None,
                    &key,
                    self.keys.signer(),
                    &kwm_tests::regional_key().check_value(),
                    now_utc_seconds(),
                )
                .expect("sealed")
            })
            .collect()
    }
}

// ---------------------------------------------------------------------------------------------------
// Checking what was stored
// ---------------------------------------------------------------------------------------------------

/// Direct access to the database, past the service: rows by the batch that wrote them.
enum Db {
    Sqlite(sqlx::SqlitePool),
    Postgres(sqlx::PgPool),
}

impl Db {
    async fn rows_of_batch(&self, provider: AgbCode, batch_id: Uuid) -> u64 {
        let id = batch_id.hyphenated().to_string();
        let n: i64 = match self {
            Db::Sqlite(pool) => sqlx::query_scalar(
                "SELECT COUNT(*) FROM trajectories WHERE provider = ? AND batch_id = ?",
            )
            .bind(provider.as_str())
            .bind(&id)
            .fetch_one(pool)
            .await
            .expect("rows counted"),
            Db::Postgres(pool) => sqlx::query_scalar(
                "SELECT COUNT(*) FROM trajectories WHERE provider = $1 AND batch_id = $2::uuid",
            )
            .bind(provider.as_str())
            .bind(&id)
            .fetch_one(pool)
            .await
            .expect("rows counted"),
        };
        u64::try_from(n).expect("a count")
    }

    async fn close(self) {
        match self {
            Db::Sqlite(pool) => pool.close().await,
            Db::Postgres(pool) => pool.close().await,
        }
    }
}

/// What the restarted service holds of one batch that was sent.
#[derive(Debug)]
enum Found {
    Whole(BatchReceipt),
    Absent,
}

/// Asks the service for the batch's receipt and the database for its rows, and fails on anything but
/// "receipt and every row" or "no receipt and no row".
async fn find_batch(client: &Client, db: &Db, batch: &SealedBatch) -> Found {
    let id = batch.header.batch_id;
    let count = u64::from(batch.header.record_count);
    let rows = db.rows_of_batch(batch.header.provider, id).await;
    match client.get_batch(id).await {
        Ok(receipt) => {
            assert_eq!(receipt.batch_id, id);
            assert_eq!(receipt.record_count, batch.header.record_count);
            assert_eq!(
                (receipt.stored, receipt.corrected, receipt.unchanged),
                (batch.header.record_count, 0, 0),
                "batch {id}: every trajectory is new"
            );
            assert_eq!(
                rows, count,
                "batch {id} has its receipt but {rows} of its {count} rows"
            );
            Found::Whole(receipt)
        }
        Err(e) if e.status() == Some(404) => {
            assert_eq!(
                rows, 0,
                "batch {id} has no receipt but {rows} of its {count} rows are stored: a partial batch"
            );
            Found::Absent
        }
        Err(e) => panic!("GET /v1/batches/{id}: {e}"),
    }
}

/// The receipt as the service keeps it (the replay flag belongs to one answer).
fn kept(r: &BatchReceipt) -> BatchReceipt {
    BatchReceipt {
        replayed: false,
        ..r.clone()
    }
}

// ---------------------------------------------------------------------------------------------------
// Uploads in flight
// ---------------------------------------------------------------------------------------------------

enum Event {
    Acked {
        index: usize,
        receipt: BatchReceipt,
        at: Instant,
    },
    Failed {
        index: usize,
        error: ClientError,
    },
}

/// Posts `batches` with `workers` concurrent posters, each taking the next batch until one of its posts
/// fails; every outcome is sent on the returned channel.
fn upload_stream(
    client: &Client,
    batches: &Arc<Vec<SealedBatch>>,
    workers: usize,
) -> (
    mpsc::UnboundedReceiver<Event>,
    Vec<tokio::task::JoinHandle<()>>,
) {
    let (tx, rx) = mpsc::unbounded_channel();
    let next = Arc::new(AtomicUsize::new(0));
    let handles = (0..workers)
        .map(|_| {
            let (client, batches, next, tx) =
                (client.clone(), batches.clone(), next.clone(), tx.clone());
            tokio::spawn(async move {
                loop {
                    let index = next.fetch_add(1, Ordering::SeqCst);
                    let Some(batch) = batches.get(index) else {
                        return;
                    };
                    match client.post_batch(batch).await {
                        Ok(outcome) => {
                            let _ = tx.send(Event::Acked {
                                index,
                                receipt: outcome.receipt,
                                at: Instant::now(),
                            });
                        }
                        Err(error) => {
                            let _ = tx.send(Event::Failed { index, error });
                            return;
                        }
                    }
                }
            })
        })
        .collect();
    (rx, handles)
}

/// Waits for the next event, failing the test when the posters stopped or nothing happens for long.
async fn next_event(rx: &mut mpsc::UnboundedReceiver<Event>, service: &Service) -> Event {
    match tokio::time::timeout(Duration::from_secs(120), rx.recv()).await {
        Ok(Some(e)) => e,
        Ok(None) => panic!("the uploads stopped early:\n{}", service.log()),
        Err(_) => panic!("no upload finished within 120 s:\n{}", service.log()),
    }
}

/// Joins the posters (they stop by themselves once the service is gone) and collects what is left.
async fn drain(
    mut rx: mpsc::UnboundedReceiver<Event>,
    handles: Vec<tokio::task::JoinHandle<()>>,
) -> Vec<Event> {
    for h in handles {
        tokio::time::timeout(Duration::from_secs(120), h)
            .await
            .expect("the uploads end once the service is gone")
            .expect("an upload task panicked");
    }
    let mut events = Vec::new();
    while let Ok(e) = rx.try_recv() {
        events.push(e);
    }
    events
}

// ---------------------------------------------------------------------------------------------------
// 1. SIGKILL during a stream of uploads
// ---------------------------------------------------------------------------------------------------

/// Batches of this many records, posted by this many concurrent posters; the service is killed once
/// this many are acknowledged.
const STREAM_BATCH: usize = 200;
const STREAM_BATCHES: usize = 80;
const STREAM_WORKERS: usize = 4;
const KILL_AFTER_ACKS: usize = 20;

async fn kill_during_upload_stream(backend: Backend) {
    let Some(deploy) = Deployment::new(backend).await else {
        return;
    };
    let provider = TestProvider::register(&deploy, (STREAM_BATCH * STREAM_BATCHES) as u64, 41);
    let mut service = deploy.start().await;
    let client = provider.client(&service);
    let batches = Arc::new(
        provider
            .seal(&client, &provider.records, STREAM_BATCH)
            .await,
    );
    assert_eq!(batches.len(), STREAM_BATCHES);

    let (mut rx, handles) = upload_stream(&client, &batches, STREAM_WORKERS);
    let mut acked: Vec<(usize, BatchReceipt)> = Vec::new();
    while acked.len() < KILL_AFTER_ACKS {
        match next_event(&mut rx, &service).await {
            Event::Acked { index, receipt, .. } => acked.push((index, receipt)),
            Event::Failed { index, error } => {
                panic!(
                    "batch {index} failed before the kill: {error}\n{}",
                    service.log()
                )
            }
        }
    }
    let status = service.kill_hard();
    assert_eq!(
        std::os::unix::process::ExitStatusExt::signal(&status),
        Some(9),
        "killed by SIGKILL"
    );

    let mut unacked = Vec::new();
    for event in drain(rx, handles).await {
        match event {
            Event::Acked { index, receipt, .. } => acked.push((index, receipt)),
            Event::Failed { index, .. } => unacked.push(index),
        }
    }
    // Each poster stops at its first failure, which the kill causes.
    assert_eq!(unacked.len(), STREAM_WORKERS, "every poster was cut off");
    let sent = acked.len() + unacked.len();
    assert!(
        sent < STREAM_BATCHES,
        "the kill came after the last batch was sent"
    );

    let service = deploy.start().await;
    let client = provider.client(&service);
    let db = deploy.db().await;
    // Every acknowledged batch is there, whole, with the receipt the provider got.
    for (index, receipt) in &acked {
        match find_batch(&client, &db, &batches[*index]).await {
            Found::Whole(r) => assert_eq!(kept(&r), kept(receipt), "batch {index}"),
            Found::Absent => panic!("acknowledged batch {index} was lost"),
        }
    }
    // A batch that was cut off is whole or absent; none that was never sent is there.
    let mut whole_unacked = 0;
    for index in &unacked {
        if let Found::Whole(_) = find_batch(&client, &db, &batches[*index]).await {
            whole_unacked += 1;
        }
    }
    for index in sent..STREAM_BATCHES {
        assert!(
            matches!(
                find_batch(&client, &db, &batches[index]).await,
                Found::Absent
            ),
            "batch {index} was never sent"
        );
    }
    let store = deploy.store().await;
    let stored = (acked.len() + whole_unacked) * STREAM_BATCH;
    assert_eq!(
        store
            .count_trajectories(Some(provider.agb))
            .await
            .expect("count"),
        stored as u64,
        "the stored rows are exactly those of the whole batches"
    );
    assert_eq!(
        client.list_batches().await.expect("batches").batches.len(),
        acked.len() + whole_unacked
    );
    eprintln!(
        "{backend:?}: killed with {} batches acknowledged; of {} cut off, {whole_unacked} were stored whole",
        acked.len(),
        unacked.len()
    );

    // The provider resends what was not acknowledged (as the SDK's retries do): all of it lands once.
    for (index, batch) in batches.iter().enumerate() {
        if acked.iter().any(|(i, _)| *i == index) {
            continue;
        }
        let outcome = client
            .post_batch(batch)
            .await
            .expect("resent after restart");
        assert_eq!(outcome.receipt.stored, batch.header.record_count);
    }
    assert_eq!(
        store
            .count_trajectories(Some(provider.agb))
            .await
            .expect("count"),
        provider.records.len() as u64
    );
    db.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_during_upload_stream_on_sqlite() {
    kill_during_upload_stream(Backend::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_during_upload_stream_on_postgres() {
    kill_during_upload_stream(Backend::Postgres).await;
}

// ---------------------------------------------------------------------------------------------------
// 3. SIGTERM during an upload
// ---------------------------------------------------------------------------------------------------

/// Large batches posted at once; SIGTERM comes when the first is acknowledged, with the others in
/// flight. One more batch is posted right after the signal.
const LARGE_BATCH: usize = 5_000;
const LARGE_BATCHES: usize = 4;
const LATE_BATCH: usize = 200;
/// The service has this long from SIGTERM to exit; finishing the batches in flight takes a second or
/// two.
const EXIT_TIMEOUT: Duration = Duration::from_secs(15);

async fn sigterm_during_upload(backend: Backend) {
    let Some(deploy) = Deployment::new(backend).await else {
        return;
    };
    let provider = TestProvider::register(
        &deploy,
        (LARGE_BATCH * LARGE_BATCHES + LATE_BATCH) as u64,
        43,
    );
    let mut service = deploy.start().await;
    let client = provider.client(&service);
    let (large, late) = provider.records.split_at(LARGE_BATCH * LARGE_BATCHES);
    let mut all = provider.seal(&client, large, LARGE_BATCH).await;
    all.extend(provider.seal(&client, late, LATE_BATCH).await);
    let batches = Arc::new(all);
    let late_index = LARGE_BATCHES;

    let large_only = Arc::new(batches[..LARGE_BATCHES].to_vec());
    let (mut rx, handles) = upload_stream(&client, &large_only, LARGE_BATCHES);
    let mut acked: Vec<(usize, BatchReceipt)> = Vec::new();
    match next_event(&mut rx, &service).await {
        Event::Acked { index, receipt, .. } => acked.push((index, receipt)),
        Event::Failed { index, error } => {
            panic!(
                "batch {index} failed before SIGTERM: {error}\n{}",
                service.log()
            )
        }
    }
    let signalled = Instant::now();
    service.terminate();
    let late_outcome = client.post_batch(&batches[late_index]).await;

    let status = service.wait_exit(EXIT_TIMEOUT).await.unwrap_or_else(|| {
        panic!(
            "kwm-service still runs {EXIT_TIMEOUT:?} after SIGTERM:\n{}",
            service.log()
        )
    });
    let exit_after = signalled.elapsed();
    assert!(
        status.success(),
        "kwm-service exits 0 after SIGTERM, got {status}:\n{}",
        service.log()
    );

    let mut acked_after_signal = 0;
    let mut refused = Vec::new();
    for event in drain(rx, handles).await {
        match event {
            Event::Acked { index, receipt, at } => {
                if at > signalled {
                    acked_after_signal += 1;
                }
                acked.push((index, receipt));
            }
            Event::Failed { index, error } => refused.push((index, error.to_string())),
        }
    }
    match late_outcome {
        Ok(outcome) => acked.push((late_index, outcome.receipt)),
        Err(error) => refused.push((late_index, error.to_string())),
    }
    // The batches in flight when the signal came were finished, not cut off.
    assert!(
        acked_after_signal >= 1,
        "no upload was in flight at SIGTERM (refused: {refused:?}): the test proves nothing"
    );

    let restarted = deploy.start().await;
    let client = provider.client(&restarted);
    let db = deploy.db().await;
    for (index, receipt) in &acked {
        match find_batch(&client, &db, &batches[*index]).await {
            Found::Whole(r) => assert_eq!(kept(&r), kept(receipt), "batch {index}"),
            Found::Absent => panic!("acknowledged batch {index} was lost"),
        }
    }
    let mut whole_refused = 0;
    let mut stored_rows: u64 = acked
        .iter()
        .map(|(i, _)| u64::from(batches[*i].header.record_count))
        .sum();
    for (index, _) in &refused {
        if let Found::Whole(_) = find_batch(&client, &db, &batches[*index]).await {
            whole_refused += 1;
            stored_rows += u64::from(batches[*index].header.record_count);
        }
    }
    assert_eq!(
        deploy
            .store()
            .await
            .count_trajectories(Some(provider.agb))
            .await
            .expect("count"),
        stored_rows,
        "the stored rows are exactly those of the whole batches"
    );
    eprintln!(
        "{backend:?}: exited {exit_after:?} after SIGTERM; {} batches acknowledged ({acked_after_signal} \
         after the signal), {} refused ({whole_refused} of them stored whole): {refused:?}",
        acked.len(),
        refused.len()
    );
    db.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_during_upload_on_sqlite() {
    sigterm_during_upload(Backend::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_during_upload_on_postgres() {
    sigterm_during_upload(Backend::Postgres).await;
}

// ---------------------------------------------------------------------------------------------------
// 2. Database outage (PostgreSQL): a private server, stopped and started again under the service
// ---------------------------------------------------------------------------------------------------

/// A PostgreSQL server of this test alone, in a temporary directory, on 127.0.0.1 with trust
/// authentication; stopped (immediately) on drop. As root, its commands run as the `postgres` user,
/// since PostgreSQL refuses to run as root.
struct PrivatePostgres {
    bin: PathBuf,
    dir: TempDir,
    run_as: Option<String>,
    port: u16,
}

impl PrivatePostgres {
    /// `initdb` from /usr/lib/postgresql/<newest>/bin or the PATH.
    fn find_bin() -> Option<PathBuf> {
        let mut versions: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
            .into_iter()
            .flatten()
            .flatten()
            .filter_map(|e| {
                let version = e.file_name().to_str()?.parse::<u32>().ok()?;
                let bin = e.path().join("bin");
                bin.join("initdb").is_file().then_some((version, bin))
            })
            .collect();
        versions.sort();
        if let Some((_, bin)) = versions.pop() {
            return Some(bin);
        }
        std::env::split_paths(&std::env::var_os("PATH")?)
            .find(|dir| dir.join("initdb").is_file() && dir.join("pg_ctl").is_file())
    }

    /// Creates and starts the server; `None` (skipped) when PostgreSQL's server programs are not
    /// installed, which fails the test in CI instead.
    fn start() -> Option<Self> {
        let Some(bin) = Self::find_bin() else {
            assert!(
                !in_ci(),
                "initdb not found (looked in /usr/lib/postgresql/*/bin and PATH), but CI is set: \
                 install the PostgreSQL server programs"
            );
            eprintln!(
                "skipped: the database outage test needs PostgreSQL's initdb and pg_ctl \
                 (not found in /usr/lib/postgresql/*/bin or PATH)"
            );
            return None;
        };
        let dir = tempfile::tempdir().expect("a directory for the private server");
        let run_as = if nix::unistd::geteuid().is_root() {
            let user = nix::unistd::User::from_name("postgres")
                .ok()
                .flatten()
                .expect("running as root, the private server needs the `postgres` user to run as");
            std::os::unix::fs::chown(dir.path(), Some(user.uid.as_raw()), Some(user.gid.as_raw()))
                .expect("the server's directory handed to the postgres user");
            Some(user.name)
        } else {
            None
        };
        let mut server = Self {
            bin,
            dir,
            run_as,
            port: 0,
        };
        server.run(
            "initdb",
            &[
                "-D",
                &server.data().display().to_string(),
                "-U",
                "postgres",
                "-A",
                "trust",
                "-E",
                "UTF8",
                "--no-locale",
                "--no-sync",
            ],
        );
        for _ in 0..5 {
            server.port = free_port();
            if server.pg_ctl_start() {
                return Some(server);
            }
        }
        panic!(
            "the private PostgreSQL server did not start:\n{}",
            server.log()
        );
    }

    fn data(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("server.log")).unwrap_or_default()
    }

    fn url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}/postgres", self.port)
    }

    fn command(&self, program: &str) -> Command {
        let program = self.bin.join(program);
        let mut cmd = match &self.run_as {
            Some(user) => {
                let mut c = Command::new("runuser");
                c.args(["-u", user, "--"]).arg(program);
                c
            }
            None => Command::new(program),
        };
        cmd.current_dir(self.dir.path())
            .env_remove("PGDATA")
            .env_remove("PGPORT")
            .stdin(Stdio::null());
        cmd
    }

    fn run(&self, program: &str, args: &[&str]) -> std::process::Output {
        let out = self
            .command(program)
            .args(args)
            .output()
            .unwrap_or_else(|e| panic!("running {program}: {e}"));
        assert!(
            out.status.success(),
            "{program} {args:?} failed ({}):\n{}\n{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        out
    }

    /// `pg_ctl start`, waiting until the server accepts connections; false when it did not start
    /// (the port was taken, say).
    fn pg_ctl_start(&self) -> bool {
        let options = format!(
            "-p {} -k {} -c listen_addresses=127.0.0.1 -c fsync=off -c shared_buffers=16MB",
            self.port,
            self.dir.path().display()
        );
        self.command("pg_ctl")
            .arg("-D")
            .arg(self.data())
            .arg("-l")
            .arg(self.dir.path().join("server.log"))
            .args(["-o", &options, "-w", "-t", "60", "start"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    }

    /// Starts the stopped server again on its port.
    fn restart(&self) {
        for _ in 0..5 {
            if self.pg_ctl_start() {
                return;
            }
            std::thread::sleep(Duration::from_millis(500));
        }
        panic!(
            "the private PostgreSQL server did not start again on port {}:\n{}",
            self.port,
            self.log()
        );
    }

    /// `pg_ctl stop -m fast`: sessions are disconnected, the server is down when this returns.
    fn stop(&self) {
        self.run(
            "pg_ctl",
            &[
                "-D",
                &self.data().display().to_string(),
                "-m",
                "fast",
                "-w",
                "-t",
                "60",
                "stop",
            ],
        );
    }
}

impl Drop for PrivatePostgres {
    fn drop(&mut self) {
        let _ = self
            .command("pg_ctl")
            .arg("-D")
            .arg(self.data())
            .args(["-m", "immediate", "-w", "-t", "30", "stop"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }
}

/// Polls `/readyz` until `want(status)` holds; the last answer.
async fn readyz_until(service: &Service, want: impl Fn(u16) -> bool, what: &str) -> (u16, Health) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        match service.readyz().await {
            Ok((status, health)) if want(status) => return (status, health),
            _ if Instant::now() >= deadline => {
                panic!(
                    "/readyz did not report {what} within 60 s:\n{}",
                    service.log()
                )
            }
            _ => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn database_outage_on_postgres() {
    let Some(pg) = PrivatePostgres::start() else {
        return;
    };
    let deploy = Deployment::on_database(pg.url());
    let provider = TestProvider::register(&deploy, 600, 47);
    let service = deploy.start().await;
    let client = provider.client(&service);
    let batches = provider.seal(&client, &provider.records, 200).await;
    let first = client
        .post_batch(&batches[0])
        .await
        .expect("upload before the outage");
    assert!(first.created);

    pg.stop();

    // Readiness says the database is down, and why; liveness stays up.
    let (status, health) = readyz_until(&service, |s| s != 200, "the database down").await;
    assert_eq!(status, 503);
    assert_eq!(health.status, "unavailable");
    assert_eq!(health.database.as_deref(), Some("unreachable"));
    let live = service
        .http
        .get(format!("{}/healthz", service.base_url))
        .send()
        .await
        .expect("/healthz answers");
    assert_eq!(live.status().as_u16(), 200);

    // An upload is refused with a retryable problem: 503 `unavailable` with Retry-After.
    let res = service
        .http
        .post(format!("{}/v1/batches", service.base_url))
        .bearer_auth(&provider.token)
        .json(&batches[1])
        .send()
        .await
        .expect("the service answers during the outage");
    assert_eq!(res.status().as_u16(), 503);
    let retry_after: u64 = res
        .headers()
        .get(reqwest::header::RETRY_AFTER)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok())
        .expect("a Retry-After header in seconds");
    assert!(retry_after > 0);
    assert_eq!(
        res.headers()
            .get(reqwest::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok()),
        Some("application/problem+json")
    );
    let problem: Problem = res.json().await.expect("a problem document");
    assert_eq!(problem.kind(), Some(ProblemType::Unavailable));
    assert_eq!(problem.status, 503);
    // The SDK sees the same answer as one to retry.
    let err = client
        .post_batch(&batches[1])
        .await
        .expect_err("refused during the outage");
    assert_eq!(err.problem_type(), Some(ProblemType::Unavailable));
    assert!(err.is_transient(), "the SDK retries an outage: {err}");

    // The database comes back; the same process recovers without a restart.
    pg.restart();
    let (status, health) = readyz_until(&service, |s| s == 200, "ready again").await;
    assert_eq!((status, health.database.as_deref()), (200, Some("ok")));
    for batch in &batches[1..] {
        let outcome = client
            .post_batch(batch)
            .await
            .unwrap_or_else(|e| panic!("upload after the outage: {e}\n{}", service.log()));
        assert!(outcome.created);
        assert_eq!(outcome.receipt.stored, batch.header.record_count);
    }
    let store = deploy.store().await;
    assert_eq!(
        store
            .count_trajectories(Some(provider.agb))
            .await
            .expect("count"),
        provider.records.len() as u64
    );
    assert_eq!(first.receipt, {
        let mut r = client
            .get_batch(batches[0].header.batch_id)
            .await
            .expect("the batch from before the outage");
        r.replayed = first.receipt.replayed;
        r
    });
    drop(store);
    drop(service);
}
