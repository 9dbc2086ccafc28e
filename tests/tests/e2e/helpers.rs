//! `spawn_app()`: the real service on port 0 with a fresh database and data dir, and typed handles for
//! the parties the tests play (providers with their SDK keys, other token holders).

use std::sync::{Arc, Mutex, OnceLock};

use kwm_schemas::Role;
use kwm_service::{AppState, Application, Config};
use tempfile::TempDir;
use tokio::sync::oneshot;

/// Which store the app under test uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

/// Everything written by `tracing` in this test process, for the check that no secret is ever logged.
/// nextest runs every test in its own process, so this holds one test's logs.
pub fn captured_logs() -> String {
    let buf = log_buffer().lock().map(|b| b.clone()).unwrap_or_default();
    String::from_utf8_lossy(&buf).into_owned()
}

fn log_buffer() -> &'static Arc<Mutex<Vec<u8>>> {
    static BUF: OnceLock<Arc<Mutex<Vec<u8>>>> = OnceLock::new();
    BUF.get_or_init(|| Arc::new(Mutex::new(Vec::new())))
}

#[derive(Clone)]
struct BufWriter(Arc<Mutex<Vec<u8>>>);

impl std::io::Write for BufWriter {
    fn write(&mut self, data: &[u8]) -> std::io::Result<usize> {
        if let Ok(mut b) = self.0.lock() {
            b.extend_from_slice(data);
        }
        Ok(data.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Installs a TRACE-level subscriber (every crate, every span field) that writes into the buffer.
fn init_log_capture() {
    static INIT: OnceLock<()> = OnceLock::new();
    INIT.get_or_init(|| {
        let buf = log_buffer().clone();
        let _ = tracing_subscriber::fmt()
            .with_env_filter("trace")
            .with_ansi(false)
            .with_writer(move || BufWriter(buf.clone()))
            .try_init();
    });
}

/// A running service with its own database and data dir, stopped on drop.
pub struct TestApp {
    pub base_url: String,
    /// `http://ADDR/metrics` on the metrics listener, which is not the API listener.
    pub metrics_url: String,
    pub state: AppState,
    /// Every token the test issued: none may ever appear in the logs.
    pub issued_tokens: Mutex<Vec<String>>,
    /// The configuration it runs with: a second instance sharing the database starts from it.
    pub config: Config,
    _data_dir: Option<TempDir>,
    _pg: Option<kwm_tests::EphemeralPostgres>,
    shutdown: Option<oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<anyhow::Result<()>>>,
}

impl Drop for TestApp {
    fn drop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        if let Some(t) = self.task.take() {
            t.abort();
        }
    }
}

/// The service on SQLite.
pub async fn spawn_app() -> TestApp {
    spawn_app_on(Backend::Sqlite)
        .await
        .expect("SQLite is always available")
}

/// The service on the given backend; `None` when PostgreSQL is not configured (and not in CI, where
/// the helper fails instead of skipping).
pub async fn spawn_app_on(backend: Backend) -> Option<TestApp> {
    spawn_app_with(backend, None).await
}

/// The service with a region file of the test's own (e.g. a small budget cap).
pub async fn spawn_app_with(backend: Backend, region_toml: Option<String>) -> Option<TestApp> {
    spawn_app_configured(backend, region_toml, |_| {}).await
}

/// The service with settings of the test's own (a tiny rate limit, a short deadline), applied last.
pub async fn spawn_app_configured(
    backend: Backend,
    region_toml: Option<String>,
    configure: impl FnOnce(&mut Config),
) -> Option<TestApp> {
    spawn(backend, region_toml, configure, true).await
}

/// The service before its operator registered the check value of the region's key.
pub async fn spawn_app_without_regional_key(backend: Backend) -> Option<TestApp> {
    spawn(backend, None, |_| {}, false).await
}

async fn spawn(
    backend: Backend,
    region_toml: Option<String>,
    configure: impl FnOnce(&mut Config),
    register: bool,
) -> Option<TestApp> {
    init_log_capture();
    let data_dir = tempfile::tempdir().expect("temp data dir");
    let region_file = region_toml.map(|text| {
        let path = data_dir.path().join("region.toml");
        std::fs::write(&path, text).expect("region file written");
        path
    });
    let mut config = Config {
        region_file,
        data_dir: data_dir.path().to_path_buf(),
        listen: "127.0.0.1:0".parse().expect("addr"),
        metrics_listen: Some("127.0.0.1:0".parse().expect("addr")),
        ..Config::default()
    };
    let pg = match backend {
        Backend::Sqlite => None,
        Backend::Postgres => {
            let db = kwm_tests::EphemeralPostgres::create().await?;
            config.database_url = Some(db.url().to_string());
            Some(db)
        }
    };
    configure(&mut config);
    if backend == Backend::Postgres {
        // A shared database is initialised once by the operator (`admin init`), not by `serve`.
        kwm_service::http::startup::initialise(&config)
            .await
            .expect("the database is initialised");
    }
    let mut app = start(config).await;
    if register {
        // As the operator does once: the check value of the region's key (the tests' fixed one).
        register_regional_key(&app.state, &kwm_tests::regional_key()).await;
    }
    app._data_dir = Some(data_dir);
    app._pg = pg;
    Some(app)
}

/// Registers the check value of `regional` as the region's, as `admin region key-check set --replace`.
pub async fn register_regional_key(state: &AppState, regional: &kwm_sdk::RegionalKey) {
    let check = kwm_service::store::RegionalKeyCheck::from_hex(
        &regional.check_value(),
        time::OffsetDateTime::now_utc(),
    )
    .expect("a check value is 64 hex digits");
    state
        .store
        .put_regional_key_check(&check, true)
        .await
        .expect("the check value is registered");
}

/// Builds and serves one instance.
async fn start(config: Config) -> TestApp {
    let app = Application::build(config.clone())
        .await
        .expect("the service starts");
    let addr = app.local_addr();
    let metrics_addr = app.metrics_addr().expect("tests run the metrics listener");
    let state = app.state().clone();
    let (tx, rx) = oneshot::channel::<()>();
    let task = tokio::spawn(app.run_until(async {
        let _ = rx.await;
    }));
    TestApp {
        base_url: format!("http://{addr}"),
        metrics_url: format!("http://{metrics_addr}/metrics"),
        state,
        issued_tokens: Mutex::new(Vec::new()),
        config,
        _data_dir: None,
        _pg: None,
        shutdown: Some(tx),
        task: Some(task),
    }
}

impl TestApp {
    /// A second instance of the service on the same database, data dir and keys, as behind a load
    /// balancer. It must be dropped before `self`.
    pub async fn second_instance(&self) -> TestApp {
        let mut config = self.config.clone();
        config.listen = "127.0.0.1:0".parse().expect("addr");
        config.metrics_listen = Some("127.0.0.1:0".parse().expect("addr"));
        start(config).await
    }
}

impl TestApp {
    /// Asks the service to stop, as SIGTERM does, and waits until it has: in-flight requests first.
    pub async fn shutdown(&mut self) -> anyhow::Result<()> {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        match self.task.take() {
            Some(task) => task.await?,
            None => Ok(()),
        }
    }

    /// Signals the stop without waiting; [`TestApp::shutdown`] then waits for the end.
    pub fn begin_shutdown(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
    }

    /// Issues a token the way `kwm-service admin token issue` does.
    pub async fn issue_token(&self, role: Role, scope: Option<&str>) -> String {
        let (_, token) =
            kwm_service::app::access::issue_token(self.state.store.as_ref(), role, scope, "test")
                .await
                .expect("token issued");
        let t = token.to_string();
        self.issued_tokens.lock().expect("lock").push(t.clone());
        t
    }

    /// Asserts that none of `secrets` (and none of the issued tokens) occurs in the captured logs.
    pub fn assert_logs_free_of(&self, secrets: &[String]) {
        let logs = captured_logs();
        assert!(
            !logs.is_empty(),
            "the log capture saw nothing: the check would be vacuous"
        );
        let tokens = self.issued_tokens.lock().expect("lock").clone();
        for s in tokens.iter().chain(secrets) {
            assert!(!s.is_empty());
            assert!(
                !logs.contains(s.as_str()),
                "a secret value appears in the logs"
            );
        }
    }
}

/// A registered provider as the tests play it: its SDK keys, its token and an SDK client.
pub struct TestProvider {
    pub agb: kwm_schemas::AgbCode,
    pub keys: kwm_sdk::ProviderKeys,
    /// The same keys as files, as `kwm keygen --out` writes them.
    pub keys_dir: TempDir,
    pub token: String,
    pub client: kwm_sdk::Client,
}

impl TestProvider {
    /// A fresh copy of the keys (they are not `Clone`: the signing key stays in one place).
    pub fn load_keys(&self) -> kwm_sdk::ProviderKeys {
        kwm_sdk::ProviderKeys::load(self.keys_dir.path()).expect("keys load")
    }
}

impl TestApp {
    /// Registers a provider the way `kwm-service admin provider add` does, with keys from `kwm keygen`.
    pub async fn register_provider(&self, agb: kwm_schemas::AgbCode) -> TestProvider {
        let keys = kwm_sdk::ProviderKeys::generate().expect("keygen");
        let keys_dir = tempfile::tempdir().expect("key dir");
        keys.write_to(keys_dir.path(), true).expect("keys written");
        self.state
            .store
            .put_provider(&kwm_service::store::Provider {
                agb,
                name: format!("provider {agb}"),
                signing_public_key: keys.signing_public_key().to_vec(),
                created_at: time::OffsetDateTime::now_utc(),
            })
            .await
            .expect("provider registered");
        let token = self.issue_token(Role::Provider, Some(agb.as_str())).await;
        let client = kwm_sdk::Client::new(&self.base_url, Some(kwm_sdk::Token::new(token.clone())))
            .expect("client");
        TestProvider {
            agb,
            keys,
            keys_dir,
            token,
            client,
        }
    }

    pub async fn stored_rows(&self, provider: Option<kwm_schemas::AgbCode>) -> u64 {
        self.state
            .store
            .count_trajectories(provider)
            .await
            .expect("count")
    }
}

/// Synthetic exports of `providers` providers with `trajectories` rows in all, in a temp dir.
pub fn synth_exports(
    providers: u32,
    trajectories: u64,
    seed: u64,
) -> (TempDir, kwm_sdk::synth::SynthOutput) {
    let dir = tempfile::tempdir().expect("temp dir");
    let out = kwm_sdk::synth::generate(&kwm_sdk::synth::SynthOptions::new(
        dir.path(),
        providers,
        trajectories,
        seed,
    ))
    .expect("synthetic exports");
    (dir, out)
}

/// The upload settings `kwm upload` would use for this provider.
pub fn upload_options(
    app: &TestApp,
    p: &TestProvider,
    file: &std::path::Path,
    regional: &kwm_sdk::RegionalKey,
) -> kwm_sdk::UploadOptions {
    let mut o = kwm_sdk::UploadOptions::new(
        file,
        &app.base_url,
        Some(kwm_sdk::Token::new(p.token.clone())),
        p.load_keys(),
        regional.clone(),
    );
    o.retry = kwm_sdk::RetryPolicy::none();
    o
}

/// `GET path` with a bearer token.
pub async fn get(app: &TestApp, token: &str, path: &str) -> reqwest::Response {
    reqwest::Client::new()
        .get(format!("{}{path}", app.base_url))
        .bearer_auth(token)
        .send()
        .await
        .expect("request sent")
}

/// `GET path`, which must answer 200 with `T`.
pub async fn get_json<T: serde::de::DeserializeOwned>(app: &TestApp, token: &str, path: &str) -> T {
    let res = get(app, token, path).await;
    let status = res.status();
    let text = res.text().await.expect("body");
    assert_eq!(status, reqwest::StatusCode::OK, "GET {path}: {text}");
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("GET {path}: {e}: {text}"))
}

/// `GET path`, which must answer with a problem document.
pub async fn get_problem(
    app: &TestApp,
    token: &str,
    path: &str,
) -> (reqwest::StatusCode, kwm_schemas::problem::Problem) {
    let res = get(app, token, path).await;
    let status = res.status();
    let text = res.text().await.expect("body");
    let p = serde_json::from_str(&text)
        .unwrap_or_else(|e| panic!("GET {path}: not a problem document ({e}): {text}"));
    (status, p)
}

/// `POST /v1/rounds {"period": period}` on `base_url`: the status and the body.
pub async fn post_round_at(
    base_url: &str,
    token: &str,
    period: &str,
) -> (reqwest::StatusCode, String) {
    let res = reqwest::Client::new()
        .post(format!("{base_url}/v1/rounds"))
        .bearer_auth(token)
        .json(&serde_json::json!({ "period": period }))
        .send()
        .await
        .expect("request sent");
    let status = res.status();
    (status, res.text().await.expect("body"))
}

/// Publishes the round of `period`, which must be a new version (201).
pub async fn publish_round(
    app: &TestApp,
    token: &str,
    period: &str,
) -> kwm_schemas::release::RoundOutcome {
    let (status, text) = post_round_at(&app.base_url, token, period).await;
    assert_eq!(
        status,
        reqwest::StatusCode::CREATED,
        "POST /v1/rounds {period}: {text}"
    );
    let o: kwm_schemas::release::RoundOutcome =
        serde_json::from_str(&text).unwrap_or_else(|e| panic!("{e}: {text}"));
    assert_eq!(o.outcome, "published", "{text}");
    o
}

/// Uploads the synthetic exports of `out.providers[range]` through the SDK, each by a newly registered
/// provider.
pub async fn upload_providers(
    app: &TestApp,
    out: &kwm_sdk::synth::SynthOutput,
    range: std::ops::Range<usize>,
    regional: &kwm_sdk::RegionalKey,
) -> Vec<TestProvider> {
    let mut ps = Vec::new();
    for export in &out.providers[range] {
        let p = app.register_provider(export.agb).await;
        kwm_sdk::upload_file(&upload_options(app, &p, &export.path, regional))
            .await
            .expect("upload succeeds");
        ps.push(p);
    }
    ps
}

/// The shipped region file with some lines replaced (each must occur in it).
pub fn region_edited(edits: &[(&str, &str)]) -> String {
    let mut text = kwm_schemas::region::WBW_TOML.to_string();
    for (from, to) in edits {
        assert!(text.contains(from), "the region file has {from:?}");
        text = text.replacen(from, to, 1);
    }
    text
}

/// The shipped region file with room for corrections of a year round: a cap per data year that
/// rounds may spend twice the year round of (2 after the research reserve).
pub fn region_with_room_for_corrections() -> String {
    region_edited(&[(
        "rho_per_data_year = \"1.125\"",
        "rho_per_data_year = \"2.125\"",
    )])
}

/// A TCP proxy in front of the service that passes every request and answer through, one request per
/// connection, except the answer to the first `POST /v1/batches`: the service stores that batch, and
/// the connection closes without an answer, as when a network loses one. Returns its base URL.
pub async fn answer_losing_proxy(target: &str) -> String {
    use std::sync::atomic::{AtomicBool, Ordering};
    use tokio::io::AsyncWriteExt;

    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("proxy binds");
    let addr = listener.local_addr().expect("proxy address");
    let upstream = target.trim_start_matches("http://").to_string();
    let lost = Arc::new(AtomicBool::new(false));
    tokio::spawn(async move {
        while let Ok((mut client, _)) = listener.accept().await {
            let upstream = upstream.clone();
            let lost = Arc::clone(&lost);
            tokio::spawn(async move {
                let Some(request) = read_http_message(&mut client).await else {
                    return;
                };
                let Ok(mut up) = tokio::net::TcpStream::connect(&upstream).await else {
                    return;
                };
                if up.write_all(&request).await.is_err() {
                    return;
                }
                let Some(answer) = read_http_message(&mut up).await else {
                    return;
                };
                if request.starts_with(b"POST /v1/batches ") && !lost.swap(true, Ordering::SeqCst) {
                    return; // the answer is lost: the connection closes without it
                }
                // One request per connection: the client must not reuse this one.
                let Some(line_end) = answer.windows(2).position(|w| w == b"\r\n") else {
                    return;
                };
                let mut out = answer[..line_end + 2].to_vec();
                out.extend_from_slice(b"connection: close\r\n");
                out.extend_from_slice(&answer[line_end + 2..]);
                let _ = client.write_all(&out).await;
                let _ = client.shutdown().await;
            });
        }
    });
    format!("http://{addr}")
}

/// One HTTP/1.1 message (head and a `content-length` body) from a stream; `None` when it ends first.
async fn read_http_message(stream: &mut tokio::net::TcpStream) -> Option<Vec<u8>> {
    use tokio::io::AsyncReadExt;

    let mut buf = Vec::new();
    let mut chunk = [0u8; 8192];
    let head_end = loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
        let n = stream.read(&mut chunk).await.ok()?;
        if n == 0 {
            return None;
        }
        buf.extend_from_slice(&chunk[..n]);
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).to_ascii_lowercase();
    let len: usize = head
        .lines()
        .find_map(|l| l.strip_prefix("content-length:"))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0);
    while buf.len() < head_end + len {
        let n = stream.read(&mut chunk).await.ok()?;
        if n == 0 {
            return None;
        }
        buf.extend_from_slice(&chunk[..n]);
    }
    Some(buf)
}

/// A CSV export as its delimiter, header and rows (synthetic exports: no quoting).
pub struct CsvExport {
    pub delimiter: char,
    pub header: Vec<String>,
    pub rows: Vec<Vec<String>>,
}

impl CsvExport {
    pub fn read(path: &std::path::Path) -> Self {
        let text = std::fs::read_to_string(path).expect("export readable");
        let mut lines = text.lines();
        let first = lines.next().expect("a header");
        let delimiter = if first.contains(';') { ';' } else { ',' };
        let split = |l: &str| l.split(delimiter).map(str::to_string).collect::<Vec<_>>();
        Self {
            delimiter,
            header: split(first),
            rows: lines.map(split).collect(),
        }
    }

    /// The index of a column.
    pub fn column(&self, name: &str) -> usize {
        self.header
            .iter()
            .position(|c| c == name)
            .unwrap_or_else(|| panic!("the export has a {name} column"))
    }

    /// Writes the header and `rows` to `path`.
    pub fn write(&self, path: &std::path::Path, rows: &[Vec<String>]) {
        let d = self.delimiter.to_string();
        let mut text = self.header.join(&d);
        text.push('\n');
        for r in rows {
            text.push_str(&r.join(&d));
            text.push('\n');
        }
        std::fs::write(path, text).expect("export written");
    }
}

/// `kwm ...` in a thread of its own (the command starts its own runtime), as a provider runs it.
pub async fn kwm(args: Vec<String>) -> Result<(), kwm_sdk::cli::CliError> {
    let mut argv = vec!["kwm".to_string()];
    argv.extend(args);
    let t = std::thread::spawn(move || kwm_sdk::cli::run_from(argv));
    tokio::task::spawn_blocking(move || t.join().expect("kwm ran"))
        .await
        .expect("joined")
}
