//! The dashboard's browser harness: headless Chromium driven through chromedriver (WebDriver), with a
//! screenshot of every view and axe-core's accessibility check, both kept as artefacts in
//! `target/dashboard-screenshots/<test>/`.
//!
//! Where the programs are: `KWM_CHROMEDRIVER` (default `chromedriver` on PATH), `KWM_CHROMIUM`
//! (default `/usr/bin/chromium`), `KWM_AXE_JS` (default `tests/browser/node_modules/axe-core/axe.min.js`).
//! `bash scripts/browser-deps.sh` installs all three.
//!
//! WebDriver cannot see HTTP status codes: a test asserts what the page shows, and the status through
//! an HTTP client where it matters.
//!
//! A view's test, in short:
//!
//! ```text
//! let b = Browser::start("gemeente_signed_in").await?;
//! b.goto(&format!("{base}/")).await?;
//! b.fill("#token", token).await?;
//! b.submit_form("#sign-in").await?;
//! assert_eq!(b.current_path().await?, "/gemeente/GM0748");
//! assert!(b.cookie("kwm_session").await?.is_some_and(|c| c.http_only));
//! b.check_view("gemeente").await?; // screenshots at desktop and phone size, then axe-core
//! b.close().await?;
//! ```

use std::ffi::OsString;
use std::fs::File;
use std::net::{Ipv4Addr, TcpListener};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context};
use fantoccini::elements::Element;
use fantoccini::wd::TimeoutConfiguration;
use fantoccini::{Client, ClientBuilder, Locator};
use hyper_util::client::legacy::connect::HttpConnector;
use nix::sys::signal::{killpg, Signal};
use nix::unistd::Pid;
use serde_json::{json, Value};
use tempfile::TempDir;

/// What to do when a program is missing.
const SETUP_HINT: &str = "run `bash scripts/browser-deps.sh`";
const DESKTOP: (u32, u32) = (1280, 1000);
const PHONE: (u32, u32) = (390, 844);
/// A full-page screenshot stops here: a page taller than this is a defect of its own.
const MAX_SCREENSHOT_HEIGHT: u32 = 12_000;
/// How many of a violation's elements its line names.
const TARGETS_SHOWN: usize = 3;

/// The workspace's root directory.
pub fn workspace_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map_or_else(|| PathBuf::from(".."), Path::to_path_buf)
}

/// Where every test keeps its screenshots and axe results.
pub fn artefacts_root() -> PathBuf {
    workspace_dir().join("target").join("dashboard-screenshots")
}

/// The programs and script the harness uses.
#[derive(Debug, Clone)]
pub struct Tools {
    pub chromedriver: OsString,
    pub chromium: PathBuf,
    pub axe_js: PathBuf,
}

impl Tools {
    /// From `KWM_CHROMEDRIVER`, `KWM_CHROMIUM` and `KWM_AXE_JS`, or their defaults.
    pub fn from_env() -> Self {
        let var = |name: &str| std::env::var_os(name).filter(|v| !v.is_empty());
        Self {
            chromedriver: var("KWM_CHROMEDRIVER").unwrap_or_else(|| "chromedriver".into()),
            chromium: var("KWM_CHROMIUM").map_or_else(|| "/usr/bin/chromium".into(), PathBuf::from),
            axe_js: var("KWM_AXE_JS").map_or_else(
                || workspace_dir().join("tests/browser/node_modules/axe-core/axe.min.js"),
                PathBuf::from,
            ),
        }
    }
}

/// A cookie as the browser holds it, flags included (WebDriver sees HttpOnly cookies too).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BrowserCookie {
    pub name: String,
    pub value: String,
    pub path: Option<String>,
    pub http_only: bool,
    pub secure: bool,
    /// `Strict`, `Lax` or `None`, as the browser reports it.
    pub same_site: Option<String>,
    /// `None` for a session cookie.
    pub expiry: Option<time::OffsetDateTime>,
}

/// One headless Chromium session and its chromedriver, for one test.
#[derive(Debug)]
pub struct Browser {
    client: Option<Client>,
    driver: Option<Child>,
    tools: Tools,
    artefacts: PathBuf,
    /// Chromium's profile: removed with the browser, also when a test fails.
    profile: TempDir,
}

impl Drop for Browser {
    fn drop(&mut self) {
        // Also when a test panics before `close`: chromedriver and the Chromium it started share
        // the process group made for them, so none of them outlives the test.
        if let Some(child) = self.driver.take() {
            kill_group(child);
        }
    }
}

/// Kills the process group led by `child` (chromedriver and its browsers) and reaps the leader.
fn kill_group(mut child: Child) {
    if let Ok(pid) = i32::try_from(child.id()) {
        let _ = killpg(Pid::from_raw(pid), Signal::SIGKILL);
    }
    let _ = child.kill();
    let _ = child.wait();
}

impl Browser {
    /// Starts chromedriver and a headless Chromium session for the test `test_name`, whose
    /// artefacts (cleared first) go to `target/dashboard-screenshots/<test_name>/`.
    pub async fn start(test_name: &str) -> anyhow::Result<Browser> {
        Self::start_with(test_name, Tools::from_env()).await
    }

    /// As [`Browser::start`], with the programs given.
    pub async fn start_with(test_name: &str, tools: Tools) -> anyhow::Result<Browser> {
        let artefacts = artefacts_root().join(file_name(test_name)?);
        if artefacts.exists() {
            std::fs::remove_dir_all(&artefacts)
                .with_context(|| format!("clearing {}", artefacts.display()))?;
        }
        std::fs::create_dir_all(&artefacts)
            .with_context(|| format!("creating {}", artefacts.display()))?;
        let Some(chromium) = find_program(&tools.chromium) else {
            bail!(
                "Chromium not found at {} (KWM_CHROMIUM): {SETUP_HINT}",
                tools.chromium.display()
            );
        };
        let tools = Tools { chromium, ..tools };
        let log = artefacts.join("chromedriver.log");
        // A port that was free a moment ago may be taken by the time chromedriver binds it.
        let mut attempt = 0;
        let (driver, port) = loop {
            attempt += 1;
            let port = free_port()?;
            let child = spawn_driver(&tools.chromedriver, port, &log)?;
            match wait_ready(child, port, &log).await {
                Ok(child) => break (child, port),
                Err(e) if attempt >= 3 => return Err(e),
                Err(_) => continue,
            }
        };
        let profile = tempfile::Builder::new()
            .prefix("kwm-chromium-")
            .tempdir()
            .context("Chromium's profile directory")?;
        let mut browser = Browser {
            client: None,
            driver: Some(driver),
            tools,
            artefacts,
            profile,
        };
        let client = ClientBuilder::new(HttpConnector::new())
            .capabilities(capabilities(
                &browser.tools.chromium,
                browser.profile.path(),
            ))
            .connect(&format!("http://127.0.0.1:{port}"))
            .await
            .map_err(|e| {
                anyhow!(
                    "starting headless Chromium ({}) through chromedriver: {e}; {SETUP_HINT} \
                     (log: {})",
                    browser.tools.chromium.display(),
                    log.display()
                )
            })?;
        browser.client = Some(client);
        let c = browser.client()?;
        c.update_timeouts(TimeoutConfiguration::new(
            Some(Duration::from_secs(60)),
            Some(Duration::from_secs(30)),
            Some(Duration::ZERO),
        ))
        .await?;
        c.set_window_size(DESKTOP.0, DESKTOP.1).await?;
        Ok(browser)
    }

    /// Ends the session (Chromium quits and removes its profile) and stops chromedriver.
    pub async fn close(mut self) -> anyhow::Result<()> {
        let closed = match self.client.take() {
            Some(c) => c.close().await.context("closing the WebDriver session"),
            None => Ok(()),
        };
        if let Some(child) = self.driver.take() {
            kill_group(child);
        }
        closed
    }

    fn client(&self) -> anyhow::Result<&Client> {
        self.client
            .as_ref()
            .context("the browser session is closed")
    }

    /// This test's artefacts directory.
    pub fn artefacts_dir(&self) -> &Path {
        &self.artefacts
    }

    /// Opens `url` (absolute) and waits until it has loaded.
    pub async fn goto(&self, url: &str) -> anyhow::Result<()> {
        self.client()?
            .goto(url)
            .await
            .with_context(|| format!("opening {url}"))
    }

    /// The address of the page shown.
    pub async fn current_url(&self) -> anyhow::Result<String> {
        Ok(self.client()?.current_url().await?.to_string())
    }

    /// The path and query of the page shown (`/gemeente/GM0748?jaar=2025`).
    pub async fn current_path(&self) -> anyhow::Result<String> {
        let url = self.client()?.current_url().await?;
        Ok(match url.query() {
            Some(q) => format!("{}?{q}", url.path()),
            None => url.path().to_string(),
        })
    }

    /// The HTML of the page as the browser holds it now.
    pub async fn page_source(&self) -> anyhow::Result<String> {
        Ok(self.client()?.source().await?)
    }

    async fn find(&self, css: &str) -> anyhow::Result<Element> {
        match self.client()?.find(Locator::Css(css)).await {
            Ok(e) => Ok(e),
            Err(e) => {
                let url = self.current_url().await.unwrap_or_default();
                Err(anyhow!("no element matches `{css}` on {url}: {e}"))
            }
        }
    }

    /// The rendered text of the first element matching `css`; an error when none does.
    pub async fn text(&self, css: &str) -> anyhow::Result<String> {
        Ok(self.find(css).await?.text().await?)
    }

    /// The rendered text of every element matching `css`, in document order.
    pub async fn texts(&self, css: &str) -> anyhow::Result<Vec<String>> {
        let mut out = Vec::new();
        for e in self.client()?.find_all(Locator::Css(css)).await? {
            out.push(e.text().await?);
        }
        Ok(out)
    }

    /// An attribute of the first element matching `css` (`None` when it has no such attribute).
    pub async fn attr(&self, css: &str, name: &str) -> anyhow::Result<Option<String>> {
        Ok(self.find(css).await?.attr(name).await?)
    }

    /// Whether an element matches `css` now (no waiting).
    pub async fn exists(&self, css: &str) -> anyhow::Result<bool> {
        Ok(!self.client()?.find_all(Locator::Css(css)).await?.is_empty())
    }

    /// Waits up to 10 s for an element matching `css`, as after a navigation started by script.
    pub async fn wait_for(&self, css: &str) -> anyhow::Result<()> {
        self.client()?
            .wait()
            .at_most(Duration::from_secs(10))
            .for_element(Locator::Css(css))
            .await
            .with_context(|| format!("waiting for `{css}`"))?;
        Ok(())
    }

    /// Types `value` into the field matching `css`, replacing what it held.
    pub async fn fill(&self, css: &str, value: &str) -> anyhow::Result<()> {
        let e = self.find(css).await?;
        e.clear().await?;
        e.send_keys(value).await?;
        Ok(())
    }

    /// Clicks the element matching `css`, as a user does (it must be visible and not covered).
    pub async fn click(&self, css: &str) -> anyhow::Result<()> {
        self.find(css)
            .await?
            .click()
            .await
            .with_context(|| format!("clicking `{css}`"))?;
        Ok(())
    }

    /// Submits the form matching `form_css` by clicking its submit button, as a user does.
    pub async fn submit_form(&self, form_css: &str) -> anyhow::Result<()> {
        self.client()?
            .form(Locator::Css(form_css))
            .await
            .with_context(|| format!("no form matches `{form_css}`"))?
            .submit()
            .await
            .with_context(|| format!("submitting `{form_css}` (does it have a submit button?)"))
    }

    /// The cookies the browser holds for the page shown.
    pub async fn cookies(&self) -> anyhow::Result<Vec<BrowserCookie>> {
        Ok(self
            .client()?
            .get_all_cookies()
            .await?
            .into_iter()
            .map(|c| BrowserCookie {
                name: c.name().to_string(),
                value: c.value().to_string(),
                path: c.path().map(str::to_string),
                http_only: c.http_only().unwrap_or(false),
                secure: c.secure().unwrap_or(false),
                same_site: c.same_site().map(|s| s.to_string()),
                expiry: c.expires().and_then(|e| e.datetime()),
            })
            .collect())
    }

    /// The cookie named `name`, if the browser holds it for the page shown.
    pub async fn cookie(&self, name: &str) -> anyhow::Result<Option<BrowserCookie>> {
        Ok(self.cookies().await?.into_iter().find(|c| c.name == name))
    }

    /// A full-page screenshot at desktop width (1280), saved as `<view>.png` in this test's
    /// artefacts. The window grows to the page's height for the shot and is restored afterwards.
    pub async fn screenshot(&self, view: &str) -> anyhow::Result<PathBuf> {
        self.full_page_png(&format!("{}.png", file_name(view)?), DESKTOP)
            .await
    }

    /// The page as the browser prints it (A4-sized defaults, the print stylesheet applied), saved as
    /// `<view>.pdf` in this test's artefacts; returns the number of pages.
    pub async fn print_pdf(&self, view: &str) -> anyhow::Result<usize> {
        let config = fantoccini::wd::PrintConfiguration::builder()
            .build()
            .map_err(|e| anyhow!("a print configuration: {e:?}"))?;
        let pdf = self
            .client()?
            .print(config)
            .await
            .context("printing the page")?;
        anyhow::ensure!(pdf.starts_with(b"%PDF"), "the print is not a PDF");
        std::fs::write(
            self.artefacts.join(format!("{}.pdf", file_name(view)?)),
            &pdf,
        )?;
        // Each page object names its type; the page tree's own entry says `/Pages`.
        let text = String::from_utf8_lossy(&pdf);
        Ok(text.matches("/Type /Page").count() - text.matches("/Type /Pages").count())
    }

    /// As [`Browser::screenshot`] at a phone's size (390 x 844), saved as `<view>-phone.png`.
    pub async fn screenshot_phone(&self, view: &str) -> anyhow::Result<PathBuf> {
        let shot = self
            .full_page_png(&format!("{}-phone.png", file_name(view)?), PHONE)
            .await;
        self.client()?.set_window_size(DESKTOP.0, DESKTOP.1).await?;
        shot
    }

    async fn full_page_png(
        &self,
        file: &str,
        (width, height): (u32, u32),
    ) -> anyhow::Result<PathBuf> {
        let c = self.client()?;
        c.set_window_size(width, height).await?;
        let sizes = c
            .execute(
                "const d = document.documentElement;\
                 return [window.innerHeight, Math.max(d.scrollHeight, document.body ? document.body.scrollHeight : 0)];",
                vec![],
            )
            .await?;
        let size = |i: usize| {
            sizes
                .get(i)
                .and_then(Value::as_u64)
                .and_then(|v| u32::try_from(v).ok())
        };
        if let (Some(inner), Some(page)) = (size(0), size(1)) {
            if page > inner {
                let grown = (height + (page - inner)).min(MAX_SCREENSHOT_HEIGHT);
                c.set_window_size(width, grown).await?;
            }
        }
        let png = c.screenshot().await;
        c.set_window_size(width, height).await?;
        let path = self.artefacts.join(file);
        std::fs::write(&path, png?).with_context(|| format!("writing {}", path.display()))?;
        Ok(path)
    }

    /// Runs axe-core on the page shown and returns one line per violation whose impact is serious
    /// or critical. The whole result goes to `<view>.axe.json` in this test's artefacts.
    ///
    /// The script is injected through WebDriver, which a page's Content-Security-Policy does not
    /// govern: the dashboard's strict CSP stays as it is in production.
    pub async fn axe_serious(&self, view: &str) -> anyhow::Result<Vec<String>> {
        let c = self.client()?;
        let loaded = c
            .execute(
                "return typeof window.axe === 'object' && window.axe !== null;",
                vec![],
            )
            .await?;
        if loaded != Value::Bool(true) {
            let source = std::fs::read_to_string(&self.tools.axe_js).with_context(|| {
                format!(
                    "reading axe-core at {} (KWM_AXE_JS): {SETUP_HINT}",
                    self.tools.axe_js.display()
                )
            })?;
            let ready = c
                .execute(
                    &format!("{source}\n;return typeof window.axe === 'object' && typeof window.axe.run === 'function';"),
                    vec![],
                )
                .await
                .context("injecting axe-core")?;
            anyhow::ensure!(
                ready == Value::Bool(true),
                "axe-core did not load from {}",
                self.tools.axe_js.display()
            );
        }
        let answer = c
            .execute_async(
                "const done = arguments[arguments.length - 1];\
                 window.axe.run(document, { resultTypes: ['violations'] })\
                   .then(r => done({ ok: JSON.stringify(r) }))\
                   .catch(e => done({ error: String((e && e.stack) || e) }));",
                vec![],
            )
            .await
            .context("running axe-core")?;
        if let Some(e) = answer.get("error") {
            bail!("axe-core failed on {view}: {e}");
        }
        let raw = answer
            .get("ok")
            .and_then(Value::as_str)
            .context("axe-core returned no result")?;
        let result: Value = serde_json::from_str(raw).context("axe-core's result")?;
        let path = self
            .artefacts
            .join(format!("{}.axe.json", file_name(view)?));
        std::fs::write(&path, serde_json::to_vec_pretty(&result)?)
            .with_context(|| format!("writing {}", path.display()))?;
        Ok(serious_lines(&result))
    }

    /// Fails, listing them, when axe-core finds serious or critical violations on the page shown.
    pub async fn assert_accessible(&self, view: &str) -> anyhow::Result<()> {
        let found = self.axe_serious(view).await?;
        if !found.is_empty() {
            bail!(
                "{} serious or critical accessibility violations on view `{view}` ({}); the whole \
                 result is in {}:\n  - {}",
                found.len(),
                self.current_url().await.unwrap_or_default(),
                self.artefacts
                    .join(format!("{}.axe.json", file_name(view)?))
                    .display(),
                found.join("\n  - ")
            );
        }
        Ok(())
    }

    /// What every dashboard view goes through: screenshots at desktop and phone size, and axe-core
    /// with no serious or critical violation.
    pub async fn check_view(&self, view: &str) -> anyhow::Result<()> {
        self.screenshot(view).await?;
        self.screenshot_phone(view).await?;
        self.assert_accessible(view).await
    }
}

/// One line per serious or critical violation: id, impact, help, and the first few elements.
fn serious_lines(result: &Value) -> Vec<String> {
    let Some(violations) = result.get("violations").and_then(Value::as_array) else {
        return vec!["axe-core's result has no `violations`".to_string()];
    };
    violations
        .iter()
        .filter(|v| matches!(v["impact"].as_str(), Some("serious" | "critical")))
        .map(|v| {
            let nodes = v["nodes"].as_array().map(Vec::as_slice).unwrap_or_default();
            let mut targets: Vec<String> = nodes
                .iter()
                .take(TARGETS_SHOWN)
                .map(|n| match &n["target"] {
                    Value::Array(parts) => parts
                        .iter()
                        .map(|p| p.as_str().map_or_else(|| p.to_string(), str::to_string))
                        .collect::<Vec<_>>()
                        .join(" > "),
                    other => other.to_string(),
                })
                .collect();
            if nodes.len() > TARGETS_SHOWN {
                targets.push(format!("and {} more", nodes.len() - TARGETS_SHOWN));
            }
            format!(
                "{} ({}): {} at {}",
                v["id"].as_str().unwrap_or("?"),
                v["impact"].as_str().unwrap_or("?"),
                v["help"].as_str().unwrap_or("?"),
                targets.join(", ")
            )
        })
        .collect()
}

/// A test or view name as a file name: letters, digits, `_`, `-` and `.`, not starting with `.`.
fn file_name(name: &str) -> anyhow::Result<&str> {
    let ok = !name.is_empty()
        && !name.starts_with('.')
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "_-.".contains(c));
    anyhow::ensure!(
        ok,
        "`{name}` cannot name an artefact: use letters, digits, `_`, `-` and `.`"
    );
    Ok(name)
}

/// The capabilities of a headless Chromium session in Dutch at desktop size.
fn capabilities(chromium: &Path, profile: &Path) -> serde_json::Map<String, Value> {
    let caps = json!({
        "browserName": "chrome",
        "goog:chromeOptions": {
            "binary": chromium,
            "args": [
                "--headless=new",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-background-networking",
                "--disable-dev-shm-usage",
                format!("--window-size={},{}", DESKTOP.0, DESKTOP.1),
                "--lang=nl-NL",
                format!("--user-data-dir={}", profile.display()),
            ],
            // `--lang` sets the interface; this sets the Accept-Language the pages are asked in.
            "prefs": { "intl.accept_languages": "nl-NL,nl" },
        },
    });
    match caps {
        Value::Object(map) => map,
        _ => serde_json::Map::new(),
    }
}

/// `program` itself when it is a path to a file; a bare name is looked up on PATH.
fn find_program(program: &Path) -> Option<PathBuf> {
    if program.components().count() > 1 {
        return program.is_file().then(|| program.to_path_buf());
    }
    std::env::split_paths(&std::env::var_os("PATH")?)
        .map(|dir| dir.join(program))
        .find(|p| p.is_file())
}

/// A loopback port that is free now.
fn free_port() -> anyhow::Result<u16> {
    let l = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).context("finding a free port")?;
    Ok(l.local_addr()?.port())
}

/// Starts chromedriver on `port` in a process group of its own, its output appended to `log`.
fn spawn_driver(program: &OsString, port: u16, log: &Path) -> anyhow::Result<Child> {
    let out = File::options()
        .create(true)
        .append(true)
        .open(log)
        .with_context(|| format!("opening {}", log.display()))?;
    let err = out.try_clone()?;
    Command::new(program)
        .arg(format!("--port={port}"))
        .stdin(Stdio::null())
        .stdout(out)
        .stderr(err)
        .process_group(0)
        .spawn()
        .map_err(|e| {
            let what = Path::new(program).display();
            if e.kind() == std::io::ErrorKind::NotFound {
                anyhow!("chromedriver not found (`{what}`, KWM_CHROMEDRIVER): {SETUP_HINT}")
            } else {
                anyhow!("starting chromedriver (`{what}`): {e}")
            }
        })
}

/// Polls chromedriver's `/status` until it is ready for a session; kills it when it never is.
async fn wait_ready(mut child: Child, port: u16, log: &Path) -> anyhow::Result<Child> {
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(2))
        .no_proxy()
        .build()?;
    let url = format!("http://127.0.0.1:{port}/status");
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if let Ok(Some(status)) = child.try_wait() {
            let output = std::fs::read_to_string(log).unwrap_or_default();
            bail!("chromedriver exited ({status}) before it was ready: {output}");
        }
        if let Ok(resp) = http.get(&url).send().await {
            if let Ok(body) = resp.json::<Value>().await {
                if body["value"]["ready"] == Value::Bool(true) {
                    return Ok(child);
                }
            }
        }
        if Instant::now() > deadline {
            kill_group(child);
            bail!(
                "chromedriver did not answer on port {port} within 20 s (log: {})",
                log.display()
            );
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}
