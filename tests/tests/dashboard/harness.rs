//! The browser harness tested on pages of its own, served over real HTTP with the dashboard's strict
//! Content-Security-Policy: it finds what is there, it fails where a page is inaccessible, and its
//! screenshots and cookies are real.

use axum::http::header::{CONTENT_SECURITY_POLICY, SET_COOKIE};
use axum::http::HeaderValue;
use axum::response::{AppendHeaders, Html, IntoResponse, Response};
use axum::routing::get;
use axum::Router;

use anyhow::Context;

use crate::browser::{Browser, Tools};

const GOOD: &str = r#"<!doctype html>
<html lang="nl">
<head><meta charset="utf-8"><title>Toegankelijk</title></head>
<body>
<main>
  <h1>Kwaliteitsmonitor</h1>
  <p class="figure">Roosendaal</p>
  <p class="figure">Bergen op Zoom</p>
  <form id="search" method="get" action="/echo">
    <label for="q">Gemeente</label>
    <input id="q" name="q" type="text" value="vooraf">
    <button type="submit">Zoeken</button>
  </form>
  <p><a id="next" href="/echo?q=link" hreflang="nl">Verder</a></p>
</main>
<script>document.body.insertAdjacentHTML('beforeend', '<p id="csp-broken">inline script ran</p>');</script>
</body>
</html>"#;

const BAD: &str = r#"<!doctype html>
<html lang="nl">
<head><meta charset="utf-8"><title>Ontoegankelijk</title></head>
<body>
<main>
  <h1>Kapot</h1>
  <img src="/grafiek.png">
  <input type="text" name="naamloos">
  <button type="button"></button>
</main>
</body>
</html>"#;

async fn echo(q: axum::extract::Query<std::collections::HashMap<String, String>>) -> Html<String> {
    let q = q.get("q").map(String::as_str).unwrap_or_default();
    // Only letters and spaces come back: no escaping needed for what the tests send.
    let q: String = q
        .chars()
        .filter(|c| c.is_alphanumeric() || *c == ' ')
        .collect();
    Html(format!(
        r#"<!doctype html><html lang="nl"><head><meta charset="utf-8"><title>Antwoord</title></head>
<body><main><h1>Antwoord</h1><p id="answer">{q}</p></main></body></html>"#
    ))
}

async fn cookies() -> impl IntoResponse {
    (
        AppendHeaders([
            (
                SET_COOKIE,
                "kwm_test=geheim; HttpOnly; SameSite=Strict; Path=/; Max-Age=600",
            ),
            (SET_COOKIE, "kwm_plain=open; SameSite=Lax; Path=/"),
        ]),
        Html(GOOD),
    )
}

async fn strict_csp(mut res: Response) -> Response {
    res.headers_mut().insert(
        CONTENT_SECURITY_POLICY,
        HeaderValue::from_static("default-src 'none'"),
    );
    res
}

/// Serves the harness's pages on a free loopback port; returns the base URL.
async fn serve() -> anyhow::Result<String> {
    let app = Router::new()
        .route("/good", get(|| async { Html(GOOD) }))
        .route("/bad", get(|| async { Html(BAD) }))
        .route("/echo", get(echo))
        .route("/cookies", get(cookies))
        .layer(axum::middleware::map_response(strict_csp));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let base = format!("http://{}", listener.local_addr()?);
    tokio::spawn(async move { axum::serve(listener, app).await });
    Ok(base)
}

#[tokio::test]
async fn axe_passes_an_accessible_page_under_a_strict_csp() -> anyhow::Result<()> {
    let base = serve().await?;
    let b = Browser::start("harness_accessible").await?;
    b.goto(&format!("{base}/good")).await?;
    // The page's CSP is in force (its inline script did not run), and axe runs all the same.
    anyhow::ensure!(!b.exists("#csp-broken").await?, "the CSP was not applied");
    let found = b.axe_serious("good").await?;
    anyhow::ensure!(found.is_empty(), "unexpected violations: {found:?}");
    b.assert_accessible("good").await?;
    // The full result is kept, and axe really ran its rules on this page.
    let json: serde_json::Value =
        serde_json::from_slice(&std::fs::read(b.artefacts_dir().join("good.axe.json"))?)?;
    anyhow::ensure!(json["violations"].is_array(), "no violations array: {json}");
    anyhow::ensure!(
        json["url"].as_str() == Some(format!("{base}/good").as_str()),
        "axe ran on {}",
        json["url"]
    );
    anyhow::ensure!(
        json["testEngine"]["name"] == "axe-core",
        "not axe-core: {}",
        json["testEngine"]
    );
    b.close().await
}

#[tokio::test]
async fn axe_reports_the_serious_violations_of_a_broken_page() -> anyhow::Result<()> {
    let base = serve().await?;
    let b = Browser::start("harness_inaccessible").await?;
    b.goto(&format!("{base}/bad")).await?;
    let found = b.axe_serious("bad").await?;
    for rule in [
        "image-alt (critical)",
        "label (critical)",
        "button-name (critical)",
    ] {
        anyhow::ensure!(
            found.iter().any(|l| l.starts_with(rule)),
            "{rule} not reported in {found:#?}"
        );
    }
    anyhow::ensure!(
        found.iter().any(|l| l.contains("at img")),
        "the image is not named: {found:#?}"
    );
    let err = match b.assert_accessible("bad").await {
        Ok(()) => anyhow::bail!("assert_accessible passed a page with {found:?}"),
        Err(e) => e.to_string(),
    };
    anyhow::ensure!(
        err.contains("image-alt") && err.contains("bad.axe.json"),
        "{err}"
    );
    b.close().await
}

/// The width and height in a PNG's header.
fn png_size(png: &[u8]) -> anyhow::Result<(u32, u32)> {
    anyhow::ensure!(
        png.len() > 24 && png.starts_with(b"\x89PNG\r\n\x1a\n") && &png[12..16] == b"IHDR",
        "not a PNG"
    );
    let be = |b: &[u8]| u32::from_be_bytes([b[0], b[1], b[2], b[3]]);
    Ok((be(&png[16..20]), be(&png[20..24])))
}

#[tokio::test]
async fn screenshots_are_pngs_at_desktop_and_phone_width() -> anyhow::Result<()> {
    let base = serve().await?;
    let b = Browser::start("harness_screenshots").await?;
    b.goto(&format!("{base}/good")).await?;
    let desktop = b.screenshot("good").await?;
    anyhow::ensure!(
        desktop.ends_with("harness_screenshots/good.png"),
        "{desktop:?}"
    );
    let (w, h) = png_size(&std::fs::read(&desktop)?)?;
    // The viewport: the window less the browser frame that headless Chromium still reserves.
    anyhow::ensure!(w == 1280 && h >= 800, "desktop shot is {w}x{h}");
    let phone = b.screenshot_phone("good").await?;
    anyhow::ensure!(
        phone.ends_with("harness_screenshots/good-phone.png"),
        "{phone:?}"
    );
    let (w, h) = png_size(&std::fs::read(&phone)?)?;
    anyhow::ensure!(w == 390 && h >= 600, "phone shot is {w}x{h}");
    // Back at desktop size afterwards.
    let (w, _) = png_size(&std::fs::read(b.screenshot("again").await?)?)?;
    anyhow::ensure!(w == 1280, "after the phone shot the window is {w} wide");
    anyhow::ensure!(
        b.screenshot("../escape").await.is_err(),
        "a path as view name"
    );
    b.close().await
}

#[tokio::test]
async fn cookies_are_read_with_their_flags() -> anyhow::Result<()> {
    let base = serve().await?;
    let b = Browser::start("harness_cookies").await?;
    b.goto(&format!("{base}/cookies")).await?;
    let secret = b.cookie("kwm_test").await?.context("kwm_test not set")?;
    anyhow::ensure!(secret.value == "geheim", "{secret:?}");
    anyhow::ensure!(secret.http_only && !secret.secure, "{secret:?}");
    anyhow::ensure!(secret.same_site.as_deref() == Some("Strict"), "{secret:?}");
    anyhow::ensure!(secret.path.as_deref() == Some("/"), "{secret:?}");
    let expiry = secret.expiry.context("Max-Age gives an expiry")?;
    let left = expiry - time::OffsetDateTime::now_utc();
    anyhow::ensure!(
        left > time::Duration::seconds(500) && left <= time::Duration::seconds(601),
        "expires in {left}"
    );
    let plain = b.cookie("kwm_plain").await?.context("kwm_plain not set")?;
    anyhow::ensure!(!plain.http_only && plain.expiry.is_none(), "{plain:?}");
    anyhow::ensure!(plain.same_site.as_deref() == Some("Lax"), "{plain:?}");
    anyhow::ensure!(b.cookies().await?.len() == 2, "{:?}", b.cookies().await?);
    b.close().await
}

#[tokio::test]
async fn pages_are_read_filled_and_followed() -> anyhow::Result<()> {
    let base = serve().await?;
    let b = Browser::start("harness_forms").await?;
    b.goto(&format!("{base}/good")).await?;
    anyhow::ensure!(b.text("h1").await? == "Kwaliteitsmonitor");
    anyhow::ensure!(b.texts(".figure").await? == ["Roosendaal", "Bergen op Zoom"]);
    anyhow::ensure!(b.attr("#search", "action").await?.as_deref() == Some("/echo"));
    anyhow::ensure!(b.attr("#search", "data-none").await?.is_none());
    anyhow::ensure!(b.page_source().await?.contains(r#"id="search""#));
    // A missing element is an error that names it.
    let err = b.text("#nergens").await.err().context("found #nergens")?;
    anyhow::ensure!(err.to_string().contains("#nergens"), "{err}");

    b.fill("#q", "Woensdrecht").await?;
    b.submit_form("#search").await?;
    b.wait_for("#answer").await?;
    anyhow::ensure!(b.current_path().await? == "/echo?q=Woensdrecht");
    anyhow::ensure!(b.text("#answer").await? == "Woensdrecht");

    b.goto(&format!("{base}/good")).await?;
    b.click("#next").await?;
    b.wait_for("#answer").await?;
    anyhow::ensure!(b.current_url().await? == format!("{base}/echo?q=link"));
    anyhow::ensure!(b.text("#answer").await? == "link");
    // The whole check of a view, as the dashboard's tests call it.
    b.check_view("answer").await?;
    for f in ["answer.png", "answer-phone.png", "answer.axe.json"] {
        anyhow::ensure!(b.artefacts_dir().join(f).is_file(), "{f} missing");
    }
    b.close().await
}

#[tokio::test]
async fn missing_programs_say_how_to_install_them() -> anyhow::Result<()> {
    let mut tools = Tools::from_env();
    tools.chromedriver = "/nonexistent/chromedriver".into();
    let err = Browser::start_with("harness_missing_driver", tools)
        .await
        .err()
        .context("started without chromedriver")?;
    anyhow::ensure!(
        err.to_string().contains("bash scripts/browser-deps.sh"),
        "{err}"
    );
    // A path, or a bare name looked up on PATH.
    for chromium in ["/nonexistent/chromium", "no-such-chromium"] {
        let mut tools = Tools::from_env();
        tools.chromium = chromium.into();
        let err = Browser::start_with("harness_missing_chromium", tools)
            .await
            .err()
            .context("started without Chromium")?;
        anyhow::ensure!(
            err.to_string().contains("bash scripts/browser-deps.sh"),
            "{err}"
        );
    }
    let base = serve().await?;
    let mut tools = Tools::from_env();
    tools.axe_js = "/nonexistent/axe.min.js".into();
    let b = Browser::start_with("harness_missing_axe", tools).await?;
    b.goto(&format!("{base}/good")).await?;
    let err = b
        .axe_serious("good")
        .await
        .err()
        .context("axe ran without axe")?;
    anyhow::ensure!(
        err.to_string().contains("bash scripts/browser-deps.sh"),
        "{err}"
    );
    b.close().await
}
