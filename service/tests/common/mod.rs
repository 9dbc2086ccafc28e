//! What the CLI tests share: `kwm-service` as the operator runs it (this package's binary), `kwm` as a
//! provider runs it (built on first use: a test of one package builds no other package's binaries),
//! and a running `kwm-service serve`.
#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::OnceLock;

pub fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// `kwm-service --data-dir DIR ...` without configuration from this environment, as user `alice`.
pub fn kwm_service_cmd(data_dir: &Path) -> Command {
    let mut cmd = kwm_service_in(data_dir);
    cmd.arg("--data-dir").arg(data_dir);
    cmd
}

/// `kwm-service ...` in `cwd` without configuration from this environment, as user `alice`.
pub fn kwm_service_in(cwd: &Path) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_kwm-service"));
    for (key, _) in std::env::vars_os() {
        if key.to_string_lossy().starts_with("KWM_") {
            cmd.env_remove(key);
        }
    }
    // No kwm-service.toml of the working directory.
    cmd.current_dir(cwd)
        .env("RUST_LOG", "warn")
        .env("USER", "alice")
        .env_remove("SUDO_USER")
        .stdin(Stdio::null());
    cmd
}

pub fn kwm_service(data_dir: &Path, args: &[&str]) -> Output {
    kwm_service_cmd(data_dir)
        .args(args)
        .output()
        .expect("kwm-service runs")
}

/// `kwm-service --data-dir DIR admin init`: a new service's keys, as the operator sets one up.
pub fn init(data_dir: &Path) -> String {
    ok(kwm_service(data_dir, &["admin", "init"]))
}

/// `kwm-service --data-dir DIR admin region key-check set HEX` with the check value of the regional key
/// in `key_file`, as the operator does once for the region.
pub fn register_regional_key(data_dir: &Path, key_file: &Path) -> String {
    let check = kwm_sdk::RegionalKey::load(key_file)
        .expect("the regional key")
        .check_value();
    ok(kwm_service(
        data_dir,
        &["admin", "region", "key-check", "set", &check],
    ))
}

/// Runs and asserts success; stdout.
pub fn ok(out: Output) -> String {
    assert!(
        out.status.success(),
        "failed ({}):\n{}\n{}",
        out.status,
        text(&out.stdout),
        text(&out.stderr)
    );
    text(&out.stdout)
}

/// The token `admin provider add` or `admin token issue` printed: the line after the announcement.
pub fn printed_token(stdout: &str) -> String {
    let mut lines = stdout.lines().map(str::trim);
    lines
        .by_ref()
        .find(|l| l.contains("shown once"))
        .expect("the token is announced");
    lines
        .find(|l| !l.is_empty())
        .expect("the token is printed")
        .to_string()
}

/// `kwm keygen --out DIR` done by the SDK's library (the same code): signing.key, signing.pub,
/// trajectory.key.
pub fn provider_keys(dir: &Path) -> PathBuf {
    kwm_sdk::ProviderKeys::generate()
        .expect("keys")
        .write_to(dir, false)
        .expect("written");
    dir.join("signing.pub")
}

/// A `kwm-service serve` on a free port of 127.0.0.1; stopped when dropped.
pub struct Served {
    child: Child,
    pub base_url: String,
}

impl Served {
    /// The process id of the service.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for Served {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Starts `kwm-service --data-dir DIR serve` on port 0 and reads the address it bound from what it
/// prints (it binds before it says so: no waiting on a guess).
pub fn serve(data_dir: &Path) -> Served {
    serve_with(kwm_service_cmd(data_dir))
}

/// Starts `serve` on port 0 with the command's options and environment (`kwm_service_cmd` and more).
pub fn serve_with(mut cmd: Command) -> Served {
    let mut child = cmd
        .args([
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--metrics-listen",
            "127.0.0.1:0",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("kwm-service serve starts");
    let stdout = child.stdout.take().expect("stdout");
    let mut lines = BufReader::new(stdout).lines();
    let mut seen = String::new();
    let base_url = loop {
        match lines.next() {
            Some(Ok(line)) => {
                seen.push_str(&line);
                seen.push('\n');
                if let Some(rest) = line.trim().strip_prefix("API") {
                    break rest
                        .split_whitespace()
                        .next()
                        .expect("the API address")
                        .to_string();
                }
            }
            _ => panic!("kwm-service serve stopped before it served:\n{seen}"),
        }
    };
    // Keep reading, so that the service never blocks on a full pipe.
    std::thread::spawn(move || for _ in lines {});
    Served { child, base_url }
}

/// The `kwm` binary of the profile these tests were built with, built (or brought up to date) once
/// per test process by cargo; `KWM_BIN` names another.
pub fn kwm_binary() -> &'static Path {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| {
        if let Some(bin) = std::env::var_os("KWM_BIN") {
            return PathBuf::from(bin);
        }
        let exe = std::env::current_exe().expect("the test executable's path");
        let deps = exe.parent().expect("its directory");
        let profile_dir = if deps.ends_with("deps") {
            deps.parent().expect("the profile directory")
        } else {
            deps
        };
        // A workspace test build (the test command's) builds `kwm` beside this executable: use it when it
        // is newer than every source it is built from, instead of a build of one package, whose own
        // feature set would compile the dependencies again.
        let bin = profile_dir.join(format!("kwm{}", std::env::consts::EXE_SUFFIX));
        let built = std::fs::metadata(&bin).and_then(|m| m.modified()).ok();
        if built.is_some_and(|built| newest_sdk_source() <= Some(built)) {
            return bin;
        }
        let profile = profile_dir
            .file_name()
            .and_then(|n| n.to_str())
            .expect("a profile directory name")
            .to_string();
        let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
        let mut cmd = Command::new(cargo);
        // Without the variables cargo set for this test: build scripts watch some of them, and a
        // different value would rebuild them here and again in the next outer build.
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
        cmd.args(["build", "--quiet", "-p", "kwm-sdk", "--bin", "kwm"])
            .arg("--target-dir")
            .arg(profile_dir.parent().expect("the target directory"))
            .current_dir(env!("CARGO_MANIFEST_DIR"));
        match profile.as_str() {
            "debug" => {}
            "release" => {
                cmd.arg("--release");
            }
            other => {
                cmd.args(["--profile", other]);
            }
        }
        let status = cmd.status().expect("running cargo build");
        assert!(status.success(), "cargo build -p kwm-sdk --bin kwm failed");
        let bin = profile_dir.join(format!("kwm{}", std::env::consts::EXE_SUFFIX));
        assert!(bin.is_file(), "{} is missing", bin.display());
        bin
    })
}

/// The newest modification time among the sources the `kwm` binary is built from.
fn newest_sdk_source() -> Option<std::time::SystemTime> {
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

/// `kwm ...` in `cwd`, as a provider runs it (no KWM_ variables of this environment).
pub fn kwm(cwd: &Path, args: &[&str]) -> Output {
    let mut cmd = Command::new(kwm_binary());
    for (key, _) in std::env::vars_os() {
        if key.to_string_lossy().starts_with("KWM_") {
            cmd.env_remove(key);
        }
    }
    cmd.args(args)
        .current_dir(cwd)
        .stdin(Stdio::null())
        .output()
        .expect("kwm runs")
}

/// A fresh PostgreSQL database on the server of `KWM_TEST_DATABASE_URL`, dropped afterwards; `None`
/// (after a note) when the variable is unset, and a failure instead when `CI` is set.
pub struct TestPostgres {
    admin_url: String,
    name: String,
    pub url: String,
}

impl TestPostgres {
    pub fn create() -> Option<Self> {
        let admin_url = match std::env::var("KWM_TEST_DATABASE_URL") {
            Ok(u) if !u.trim().is_empty() => u,
            _ => {
                assert!(
                    std::env::var("CI").map_or(true, |v| v.is_empty() || v == "false"),
                    "KWM_TEST_DATABASE_URL is not set, but CI is: the PostgreSQL tests must run"
                );
                eprintln!("skipped: PostgreSQL test (set KWM_TEST_DATABASE_URL to run it)");
                return None;
            }
        };
        let name = format!("kwm_cli_{}", uuid::Uuid::new_v4().simple());
        run_sql(&admin_url, &format!(r#"CREATE DATABASE "{name}""#));
        let (base, query) = match admin_url.split_once('?') {
            Some((b, q)) => (b, format!("?{q}")),
            None => (admin_url.as_str(), String::new()),
        };
        let server = base.rsplit_once('/').map_or(base, |(s, _)| s);
        let url = format!("{server}/{name}{query}");
        Some(Self {
            admin_url,
            name,
            url,
        })
    }

    /// One query on this database, for what the operator cannot see otherwise.
    pub fn query_bytes(&self, sql: &str) -> Vec<Vec<u8>> {
        use sqlx::{Connection, Row};
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        rt.block_on(async {
            let mut c = sqlx::PgConnection::connect(&self.url)
                .await
                .expect("connects");
            let rows = sqlx::query(sql).fetch_all(&mut c).await.expect("query");
            rows.iter()
                .map(|r| r.try_get::<Vec<u8>, _>(0).expect("bytes"))
                .collect()
        })
    }
}

impl Drop for TestPostgres {
    fn drop(&mut self) {
        run_sql(
            &self.admin_url,
            &format!(r#"DROP DATABASE IF EXISTS "{}" WITH (FORCE)"#, self.name),
        );
    }
}

fn run_sql(url: &str, sql: &str) {
    use sqlx::Connection;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async {
        let mut c = sqlx::PgConnection::connect(url)
            .await
            .unwrap_or_else(|e| panic!("connecting to KWM_TEST_DATABASE_URL: {e}"));
        sqlx::query(sql)
            .execute(&mut c)
            .await
            .unwrap_or_else(|e| panic!("{sql}: {e}"));
    });
}

/// Waits until `done` holds, asking again as soon as an answer came back; fails after a minute with
/// `what` (a bound for a hung service, not a timing assertion).
pub fn wait_until(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    while !done() {
        assert!(
            std::time::Instant::now() < deadline,
            "gave up waiting: {what}"
        );
        std::thread::yield_now();
    }
}
