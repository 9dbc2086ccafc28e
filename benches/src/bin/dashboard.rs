//! Dashboard load harness: many signed-in municipality users opening their municipality's page at
//! once, for a fixed time. Starts the service on SQLite in a temporary directory, uploads synthetic
//! exports through the SDK and publishes the rounds of 2021..2025 (as the demo does), signs in
//! through the dashboard's form with a municipality token for GM0748, then lets every user GET `/gemeente/GM0748` with the session cookie
//! as fast as it is answered. Every answer must be 200 and HTML. Reports throughput and latency, and
//! fails if any request failed.
//!
//! Run (release build):
//!   cargo run --release -p kwm-benches --bin dashboard -- --users 50 --seconds 20
//! Target: p99 <= 20 ms with 50 concurrent users, and no failed request.
//!
//! The latency is the client's: from sending the request to the last byte of the page, over loopback
//! HTTP on the same machine, with the harness and the service sharing its cores; so it includes the
//! loopback round trip and the client's own work. The service's time alone comes from its own request
//! histogram (the metrics middleware, from the request reaching the router to the response's head),
//! which is exact only to that histogram's bucket bounds; both are printed.

use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context};
use clap::Parser;
use kwm_schemas::{Period, Role};
use kwm_sdk::synth::{generate, SynthOptions};
use kwm_sdk::{upload_file, ProviderKeys, RegionalKey, Token, UploadOptions};
use kwm_service::app::operator::{self, Desk};
use kwm_service::app::rounds::{publish_round, Actor};
use kwm_service::{AppState, Application, Config};
use reqwest::header::{CONTENT_TYPE, COOKIE, LOCATION, SET_COOKIE};
use reqwest::StatusCode;

#[derive(Debug, Parser)]
struct Args {
    /// Concurrent signed-in users
    #[arg(long, default_value_t = 50)]
    users: usize,
    /// How long they are measured
    #[arg(long, default_value_t = 20)]
    seconds: u64,
    /// How long they run before that, unmeasured
    #[arg(long, default_value_t = 3)]
    warmup_seconds: u64,
    /// Synthetic providers whose exports are uploaded
    #[arg(long, default_value_t = 12)]
    providers: u32,
    /// Synthetic trajectories over all providers
    #[arg(long, default_value_t = 20_000)]
    trajectories: u64,
    /// The municipality whose user signs in and whose page is loaded
    #[arg(long, default_value = "GM0748")]
    municipality: String,
}

/// The period whose round is published and shown.
const PERIOD: &str = "2025";

#[derive(Default)]
struct Outcome {
    latencies: Vec<Duration>,
    bytes: u64,
    failures: u64,
    first_failure: Option<String>,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    ensure!(
        args.users > 0 && args.seconds > 0,
        "--users and --seconds must be positive"
    );
    let dir = tempfile::tempdir()?;
    let config = Config {
        data_dir: dir.path().join("service"),
        // SQLite in the data dir.
        database_url: None,
        listen: "127.0.0.1:0".parse()?,
        metrics_listen: None,
        // Every user at full speed: the harness measures the pages, not the limiter.
        rate_limit_per_second: 0,
        ..Config::default()
    };
    kwm_service::http::startup::initialise(&config).await?;
    let app = Application::build(config).await?;
    let state = app.state().clone();
    let base = format!("http://{}", app.local_addr());
    let server = tokio::spawn(app.run_until_stopped());

    let t0 = Instant::now();
    let stored = publish_synthetic_round(&state, &base, dir.path(), &args).await?;
    println!(
        "data: {} providers, {stored} trajectories stored, rounds up to {PERIOD} published ({:.1} s)",
        args.providers,
        t0.elapsed().as_secs_f64()
    );

    let (_, token) = kwm_service::app::access::issue_token(
        state.store.as_ref(),
        Role::Municipality,
        Some(&args.municipality),
        "bench",
    )
    .await?;
    let http = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .tcp_nodelay(true)
        .no_proxy()
        .timeout(Duration::from_secs(30))
        .build()?;
    let session = sign_in(&http, &base, token.as_str(), &args.municipality).await?;
    let page = format!("{base}/gemeente/{}", args.municipality);
    let size = get_page(&http, &page, &session)
        .await
        .map_err(|e| anyhow::anyhow!("GET {page} signed in: {e}"))?;
    println!(
        "page: /gemeente/{} is {size} bytes of HTML",
        args.municipality
    );

    let warm_until = Instant::now() + Duration::from_secs(args.warmup_seconds);
    let end = warm_until + Duration::from_secs(args.seconds);
    let mut tasks = Vec::with_capacity(args.users);
    for _ in 0..args.users {
        let (http, page, session) = (http.clone(), page.clone(), session.clone());
        tasks.push(tokio::spawn(async move {
            let mut o = Outcome::default();
            loop {
                let t = Instant::now();
                if t >= end {
                    break;
                }
                match get_page(&http, &page, &session).await {
                    Ok(n) if t >= warm_until => {
                        o.latencies.push(t.elapsed());
                        o.bytes += n;
                    }
                    Ok(_) => {}
                    Err(e) => {
                        o.failures += 1;
                        o.first_failure.get_or_insert(e);
                    }
                }
            }
            o
        }));
    }
    println!(
        "{} users GET /gemeente/{} for {} s after {} s of warm-up ...",
        args.users, args.municipality, args.seconds, args.warmup_seconds
    );
    tokio::time::sleep_until(warm_until.into()).await;
    let server_before = server_histogram(&state);
    let mut all = Outcome::default();
    for t in tasks {
        let o = t.await?;
        all.latencies.extend(o.latencies);
        all.bytes += o.bytes;
        all.failures += o.failures;
        if all.first_failure.is_none() {
            all.first_failure = o.first_failure;
        }
    }
    let server_after = server_histogram(&state);
    server.abort();

    let lat = &mut all.latencies;
    lat.sort_unstable();
    ensure!(
        !lat.is_empty(),
        "no request succeeded: {:?}",
        all.first_failure
    );
    let q = |p: f64| lat[((lat.len() as f64 * p).ceil() as usize).clamp(1, lat.len()) - 1];
    let ms = |d: Duration| d.as_secs_f64() * 1e3;
    let secs = args.seconds as f64;
    println!(
        "requests {}  {:.0} pages/s  {:.1} MB/s  latency p50 {:.2} ms  p95 {:.2} ms  p99 {:.2} ms  \
         max {:.2} ms  failed {}",
        lat.len(),
        lat.len() as f64 / secs,
        all.bytes as f64 / secs / 1e6,
        ms(q(0.50)),
        ms(q(0.95)),
        ms(q(0.99)),
        ms(lat[lat.len() - 1]),
        all.failures
    );
    match (server_before, server_after) {
        (Some(before), Some(after)) => println!("{}", server_summary(&before, &after)),
        _ => println!(
            "server side: not measured (the service's request histogram has no GET route under \
             /gemeente/ answered 200)"
        ),
    }
    let met = q(0.99) <= Duration::from_millis(20);
    println!(
        "target: p99 <= 20 ms: {}",
        if met { "met" } else { "NOT met" }
    );
    if let Some(first) = all.first_failure {
        bail!("{} requests failed; the first: {first}", all.failures);
    }
    Ok(())
}

/// Uploads the synthetic exports of `args.providers` providers through the SDK, as their software
/// does, and publishes the rounds of [`PERIOD`] and the four years before it as the region team does. Returns the trajectories stored.
async fn publish_synthetic_round(
    state: &AppState,
    base: &str,
    dir: &std::path::Path,
    args: &Args,
) -> anyhow::Result<u64> {
    let mut synth = SynthOptions::new(dir.join("exports"), args.providers, args.trajectories, 7);
    synth.region = state.region.as_ref().clone();
    let out = tokio::task::spawn_blocking(move || generate(&synth)).await??;
    let actor = Actor {
        role: "admin".into(),
        id: "bench".into(),
    };
    let desk = Desk {
        store: state.store.as_ref(),
        region: &state.region,
        actor: &actor,
        clock: state.clock.as_ref(),
    };
    let regional = RegionalKey::generate()?;
    operator::set_regional_key_check(desk, &regional.check_value(), true).await?;
    let mut uploads = Vec::new();
    for p in &out.providers {
        let keys = ProviderKeys::generate()?;
        let name = format!("Bench {}", p.agb.as_str());
        let (_, token) =
            operator::register_provider(desk, p.agb, &name, keys.signing_public_key().to_vec())
                .await?;
        let mut upload = UploadOptions::new(
            &p.path,
            base,
            Some(Token::new(token.as_str())),
            keys,
            regional.clone(),
        );
        upload.region = state.region.as_ref().clone();
        uploads.push(upload);
    }
    let reports = futures::future::try_join_all(uploads.iter().map(upload_file)).await?;
    // The four years before it too, as the demo publishes them: the page then draws its trend from
    // five rounds, which is the page a municipality opens.
    let last: Period = PERIOD.parse().context("the period")?;
    for year in last.year() - 4..=last.year() {
        let period: Period = year.to_string().parse().context("a year")?;
        publish_round(&state.round_deps(), period, &actor, false)
            .await
            .map_err(|e| {
                anyhow::anyhow!("publishing the round of {period}: {}", e.to_string_detail())
            })?;
    }
    Ok(reports.iter().map(|r| r.stored).sum())
}

/// Signs in through the dashboard's form as a browser does (GET `/` for the form and its pre-session
/// cookie, POST `/inloggen`), checks where the signed-in home leads, and returns the `Cookie` header
/// value of the session.
async fn sign_in(
    http: &reqwest::Client,
    base: &str,
    token: &str,
    municipality: &str,
) -> anyhow::Result<String> {
    let resp = http.get(format!("{base}/")).send().await?;
    ensure!(
        resp.status() == StatusCode::OK,
        "GET / signed out answered {} (is the dashboard there?)",
        resp.status()
    );
    let signin = set_cookie(&resp, "kwm_signin").context("GET / set no kwm_signin cookie")?;
    let html = resp.text().await?;
    let csrf = input_value(&html, "csrf").context("no csrf field in the sign-in form")?;
    let resp = http
        .post(format!("{base}/inloggen"))
        .header(COOKIE, format!("kwm_signin={signin}"))
        .form(&[("token", token), ("csrf", csrf.as_str())])
        .send()
        .await?;
    ensure!(
        resp.status() == StatusCode::SEE_OTHER,
        "POST /inloggen answered {}, not 303",
        resp.status()
    );
    let session = set_cookie(&resp, "kwm_session").context("signing in set no kwm_session")?;
    let cookie = format!("kwm_session={session}");
    let resp = http
        .get(format!("{base}/"))
        .header(COOKIE, &cookie)
        .send()
        .await?;
    let home = resp
        .headers()
        .get(LOCATION)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default();
    ensure!(
        resp.status() == StatusCode::SEE_OTHER
            && home.ends_with(&format!("/gemeente/{municipality}")),
        "GET / signed in answered {} to `{home}`, not 303 to /gemeente/{municipality}",
        resp.status()
    );
    Ok(cookie)
}

/// One page load: the body's length when the answer is 200 and HTML, else what was wrong.
async fn get_page(http: &reqwest::Client, url: &str, cookie: &str) -> Result<u64, String> {
    let resp = http
        .get(url)
        .header(COOKIE, cookie)
        .send()
        .await
        .map_err(|e| e.to_string())?;
    let status = resp.status();
    let html = resp
        .headers()
        .get(CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|ct| ct.starts_with("text/html"));
    let body = resp.bytes().await.map_err(|e| e.to_string())?;
    if status != StatusCode::OK || !html {
        return Err(format!(
            "{status}{}",
            if html { "" } else { ", not text/html" }
        ));
    }
    Ok(body.len() as u64)
}

/// The value of the cookie `name` that a response sets.
fn set_cookie(resp: &reqwest::Response, name: &str) -> Option<String> {
    resp.headers()
        .get_all(SET_COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .find_map(|v| {
            let (n, value) = v.split(';').next()?.trim().split_once('=')?;
            (n == name).then(|| value.to_string())
        })
}

/// The `value` of the `<input>` named `name` in `html`.
fn input_value(html: &str, name: &str) -> Option<String> {
    let at = html.find(&format!("name=\"{name}\""))?;
    let start = html[..at].rfind('<')?;
    let end = at + html[at..].find('>')?;
    let tag = &html[start..end];
    let from = tag.find("value=\"")? + "value=\"".len();
    let len = tag[from..].find('"')?;
    Some(tag[from..from + len].replace("&amp;", "&"))
}

/// The service's own histogram of the municipality page (GET, 200): cumulative count per upper
/// bound in seconds, `+Inf` last. `None` when it has no such series.
fn server_histogram(state: &AppState) -> Option<Vec<(f64, u64)>> {
    let text = state.metrics.render();
    let mut buckets: Vec<(f64, u64)> = Vec::new();
    for line in text.lines() {
        let Some(rest) = line.strip_prefix("kwm_http_request_duration_seconds_bucket{") else {
            continue;
        };
        let Some((labels, count)) = rest.rsplit_once("} ") else {
            continue;
        };
        if !(labels.contains("route=\"/gemeente/")
            && labels.contains("method=\"GET\"")
            && labels.contains("status=\"200\""))
        {
            continue;
        }
        let le = labels
            .split("le=\"")
            .nth(1)
            .and_then(|s| s.split('"').next())
            .and_then(|s| s.parse::<f64>().ok());
        if let (Some(le), Ok(count)) = (le, count.trim().parse::<u64>()) {
            // Summed over the matching series (one, unless several routes match).
            match buckets.iter_mut().find(|(b, _)| *b == le) {
                Some(b) => b.1 += count,
                None => buckets.push((le, count)),
            }
        }
    }
    buckets.sort_by(|a, b| a.0.total_cmp(&b.0));
    (!buckets.is_empty()).then_some(buckets)
}

/// The server-side quantiles of the measured window, as the bucket each falls in.
fn server_summary(before: &[(f64, u64)], after: &[(f64, u64)]) -> String {
    let window: Vec<(f64, u64)> = after
        .iter()
        .map(|&(le, n)| {
            let earlier = before.iter().find(|b| b.0 == le).map_or(0, |b| b.1);
            (le, n.saturating_sub(earlier))
        })
        .collect();
    let total = window.last().map_or(0, |b| b.1);
    if total == 0 {
        return "server side: no request in the measured window".into();
    }
    let bound = |p: f64| {
        let want = (total as f64 * p).ceil() as u64;
        let i = window
            .iter()
            .position(|b| b.1 >= want)
            .unwrap_or(window.len() - 1);
        let upper = window[i].0;
        let lower = if i == 0 { 0.0 } else { window[i - 1].0 };
        if upper.is_infinite() {
            format!("> {:.1} ms", lower * 1e3)
        } else {
            format!("{:.1}..{:.1} ms", lower * 1e3, upper * 1e3)
        }
    };
    format!(
        "server side (the service's request histogram, {total} requests; bucket bounds): p50 {}  \
         p95 {}  p99 {}",
        bound(0.50),
        bound(0.95),
        bound(0.99)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_csrf_value_is_read_from_its_input() {
        let html = r#"<form id="sign-in" method="post" action="/inloggen">
            <input type="password" name="token" id="token">
            <input type="hidden" name="csrf" value="a-b_c&amp;d">
            <button type="submit" id="sign-in-button">Inloggen</button></form>"#;
        assert_eq!(input_value(html, "csrf").as_deref(), Some("a-b_c&d"));
        assert_eq!(input_value(html, "token"), None);
        assert_eq!(input_value("<p>niets</p>", "csrf"), None);
    }

    #[test]
    fn server_quantiles_come_from_the_window_between_two_snapshots() {
        let before = [(0.001, 10), (0.0025, 10), (0.005, 10), (f64::INFINITY, 10)];
        // In the window: 90 under 1 ms, 9 in 1..2.5 ms, 1 in 2.5..5 ms.
        let after = [
            (0.001, 100),
            (0.0025, 109),
            (0.005, 110),
            (f64::INFINITY, 110),
        ];
        let s = server_summary(&before, &after);
        assert!(s.contains("100 requests"), "{s}");
        assert!(s.contains("p50 0.0..1.0 ms"), "{s}");
        assert!(s.contains("p95 1.0..2.5 ms"), "{s}");
        assert!(s.contains("p99 1.0..2.5 ms"), "{s}");
        let slow = [(0.001, 10), (0.0025, 10), (0.005, 10), (f64::INFINITY, 20)];
        assert!(server_summary(&before, &slow).contains("p50 > 5.0 ms"));
    }
}
