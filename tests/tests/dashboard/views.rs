//! The dashboard as its people use it, in headless Chromium against the real service: synthetic
//! providers upload through the SDK, the region publishes rounds through the API, and each role signs
//! in with its token through the form. Every figure a page shows is held against the API's release;
//! every view is screenshot at desktop and phone size and checked by axe-core.

use std::collections::BTreeMap;

use anyhow::{ensure, Context};
use kwm_schemas::release::{CellStatus, Release};
use kwm_schemas::Role;
use kwm_service::app::access::token_hash;

use crate::browser::Browser;
use crate::helpers::{get, get_json, publish_round, spawn_app, synth_exports, upload_providers};
use crate::helpers::{TestApp, TestProvider};

/// A service with data and published rounds, and a token per role.
struct World {
    app: TestApp,
    municipality: String,
    region: String,
    provider: TestProvider,
    _exports: tempfile::TempDir,
}

async fn world() -> World {
    let app = spawn_app().await;
    let (exports, out) = synth_exports(3, 9_000, 17);
    let mut providers = upload_providers(
        &app,
        &out,
        0..out.providers.len(),
        &kwm_tests::regional_key(),
    )
    .await;
    let region = app.issue_token(Role::Region, None).await;
    for year in ["2024", "2025"] {
        publish_round(&app, &region, year).await;
    }
    let municipality = app.issue_token(Role::Municipality, Some("GM0748")).await;
    World {
        app,
        municipality,
        region,
        provider: providers.remove(0),
        _exports: exports,
    }
}

/// Opens the start page, signs in with `token` through the form, and waits for the page it leads to
/// (`/inloggen` again when the sign-in is refused).
async fn sign_in(b: &Browser, base: &str, token: &str, lands_on: &str) -> anyhow::Result<()> {
    b.goto(&format!("{base}/")).await?;
    b.fill("#token", token).await?;
    b.submit_form("#sign-in").await?;
    arrive(b, lands_on).await?;
    Ok(())
}

/// Waits (up to 10 s) until the page shown is at a path containing `part`: a click or a form starts
/// a navigation that WebDriver may not have finished when it answers.
async fn arrive(b: &Browser, part: &str) -> anyhow::Result<String> {
    let until = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let path = b.current_path().await?;
        if path.contains(part) {
            return Ok(path);
        }
        ensure!(
            std::time::Instant::now() < until,
            "still at {path}, expected a path with {part}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}

/// What the page shows for every marked figure: `data-cell` to the shown text.
async fn shown_figures(b: &Browser) -> anyhow::Result<BTreeMap<String, String>> {
    let html = b.page_source().await?;
    let mut out = BTreeMap::new();
    for part in html.split("data-cell=\"").skip(1) {
        let (key, rest) = part.split_once('"').context("a data-cell attribute")?;
        let text = rest
            .split_once('>')
            .and_then(|(_, t)| t.split_once('<'))
            .map(|(t, _)| t.trim().to_string())
            .context("a figure's text")?;
        if let Some(earlier) = out.insert(key.to_string(), text.clone()) {
            ensure!(earlier == text, "{key} is shown as {earlier} and as {text}");
        }
    }
    Ok(out)
}

/// The text a Dutch page shows for a released cell: the figure with a decimal comma, or why it is
/// held back.
fn expected_text(cell: &kwm_schemas::release::ReleaseCell) -> String {
    match (cell.status, cell.value) {
        (CellStatus::Published, Some(v)) => v.to_string().replace('.', ","),
        (CellStatus::Suppressed, _) => "te weinig kinderen".into(),
        (CellStatus::Unreliable, _) => "te onzeker".into(),
        (CellStatus::Published, None) => "–".into(),
    }
}

/// Every figure shown for `scope` equals the release's, and the page shows at least `min` of them.
fn assert_matches_release(
    shown: &BTreeMap<String, String>,
    scope: &str,
    release: &Release,
    min: usize,
) -> anyhow::Result<usize> {
    let mut compared = 0;
    for row in release.rows.iter().filter(|r| r.provider.is_none()) {
        let group = row
            .target_group
            .as_ref()
            .map_or("total".to_string(), |g| g.as_str().to_string());
        for cell in &row.cells {
            let key = format!("{scope}|{group}|{}", cell.criterion);
            if let Some(text) = shown.get(&key) {
                ensure!(
                    *text == expected_text(cell),
                    "{key}: the page shows {text:?}, the API released {:?} ({})",
                    cell.value.map(|v| v.to_string()),
                    cell.status
                );
                compared += 1;
            }
        }
    }
    let of_scope = shown
        .keys()
        .filter(|k| k.starts_with(&format!("{scope}|")))
        .count();
    ensure!(
        compared == of_scope,
        "{scope}: {of_scope} figures shown, {compared} found in the release"
    );
    ensure!(compared >= min, "{scope}: only {compared} figures compared");
    Ok(compared)
}

/// A page fetched with a session cookie, as the browser sends it: the status and the body.
async fn fetch_with_cookie(
    url: &str,
    cookie: &str,
) -> anyhow::Result<(reqwest::StatusCode, reqwest::header::HeaderMap, Vec<u8>)> {
    let res = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()?
        .get(url)
        .header(reqwest::header::COOKIE, cookie)
        .send()
        .await?;
    let status = res.status();
    let headers = res.headers().clone();
    Ok((status, headers, res.bytes().await?.to_vec()))
}

/// Every sheet of a workbook with every cell, as a spreadsheet program reads them.
fn sheets(xlsx: Vec<u8>) -> anyhow::Result<Vec<(String, Vec<Vec<String>>)>> {
    use calamine::Reader;
    let mut book: calamine::Xlsx<_> =
        calamine::open_workbook_from_rs(std::io::Cursor::new(xlsx)).context("the XLSX opens")?;
    let mut out = Vec::new();
    for name in book.sheet_names() {
        let range = book.worksheet_range(&name)?;
        let rows: Vec<Vec<String>> = range
            .rows()
            .map(|r| r.iter().map(|c| c.to_string()).collect())
            .collect();
        out.push((name, rows));
    }
    ensure!(!out.is_empty() && !out[0].1.is_empty(), "an empty workbook");
    Ok(out)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_municipality_sees_its_own_figures_as_released_and_no_others() -> anyhow::Result<()> {
    let w = world().await;
    let base = w.app.base_url.clone();
    let b = Browser::start("municipality").await?;

    // The sign-in page itself.
    b.goto(&format!("{base}/")).await?;
    ensure!(b.exists("form#sign-in input[type=password]#token").await?);
    b.check_view("sign-in").await?;

    sign_in(&b, &base, &w.municipality, "/gemeente/GM0748").await?;
    ensure!(
        b.current_path().await? == "/gemeente/GM0748",
        "{}",
        b.current_path().await?
    );
    let session = b.cookie("kwm_session").await?.context("a session cookie")?;
    ensure!(session.http_only, "the session cookie is HttpOnly");
    ensure!(
        session.same_site.as_deref() == Some("Strict"),
        "{:?}",
        session.same_site
    );
    ensure!(session.path.as_deref() == Some("/"));
    ensure!(session.expiry.is_some(), "the session expires");
    ensure!(!b.current_url().await?.contains(&w.municipality));
    let html = b.page_source().await?;
    ensure!(!html.contains(&w.municipality), "the token is in the page");
    ensure!(
        !html.contains(&session.value),
        "the session secret is in the page"
    );
    ensure!(!html.contains("<script"), "a page runs no script");

    // Every figure against the API: the municipality's and the region's.
    let own: Release = get_json(&w.app, &w.municipality, "/v1/releases/GM0748/2025").await;
    let region: Release = get_json(&w.app, &w.municipality, "/v1/releases/region/2025").await;
    let shown = shown_figures(&b).await?;
    let n_own = assert_matches_release(&shown, "GM0748", &own, 100)?;
    let n_region = assert_matches_release(&shown, "region", &region, 10)?;
    ensure!(
        shown.len() == n_own + n_region,
        "{} figures of other scopes",
        shown.len() - n_own - n_region
    );
    ensure!(
        b.exists("svg.chart[role=img] title").await?,
        "a chart with a title"
    );
    ensure!(
        b.exists("section.trend svg.chart").await?,
        "a trend over 2024 and 2025"
    );
    b.check_view("gemeente").await?;
    // On paper: a handful of pages, the navigation and forms left out by the print stylesheet.
    let pages = b.print_pdf("gemeente").await?;
    ensure!(
        (1..=12).contains(&pages),
        "the page prints on {pages} pages"
    );

    // Another target group in detail, and another period.
    let groups = b.texts("#doelgroep option").await?;
    ensure!(groups.len() > 3, "{groups:?}");
    b.click("#doelgroep option:nth-child(3)").await?;
    b.submit_form("form.groups").await?;
    let path = arrive(&b, "doelgroep=").await?;
    ensure!(
        path.contains("doelgroep=") && !path.contains("doelgroep=total"),
        "{path}"
    );
    let detail = b.text("section.group h3").await?;
    ensure!(
        detail == groups[2],
        "{detail} is shown, {} was chosen",
        groups[2]
    );
    let shown = shown_figures(&b).await?;
    assert_matches_release(&shown, "GM0748", &own, 100)?;
    b.goto(&format!("{base}/gemeente/GM0748?periode=2024"))
        .await?;
    let own_2024: Release = get_json(&w.app, &w.municipality, "/v1/releases/GM0748/2024").await;
    assert_matches_release(&shown_figures(&b).await?, "GM0748", &own_2024, 100)?;

    // The page's headers: HTML under the strict policy, nothing cached.
    let cookie = format!("kwm_session={}", session.value);
    let (status, headers, _) =
        fetch_with_cookie(&format!("{base}/gemeente/GM0748"), &cookie).await?;
    ensure!(status == 200);
    let csp = headers
        .get("content-security-policy")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default();
    ensure!(
        csp.contains("default-src 'none'") && !csp.contains("script-src"),
        "{csp}"
    );
    ensure!(headers
        .get("cache-control")
        .is_some_and(|v| v == "no-store"));

    // Downloads: the same files the API serves.
    let (status, headers, csv) = fetch_with_cookie(
        &format!("{base}/gemeente/GM0748/download/2025.csv"),
        &cookie,
    )
    .await?;
    ensure!(status == 200, "{status}");
    ensure!(headers
        .get("content-disposition")
        .is_some_and(|v| v.to_str().unwrap_or_default().contains(".csv")));
    let api_csv = get(&w.app, &w.municipality, "/v1/releases/GM0748/2025.csv")
        .await
        .bytes()
        .await?;
    ensure!(csv == api_csv.to_vec(), "the dashboard's CSV is the API's");
    let (status, _, xlsx) = fetch_with_cookie(
        &format!("{base}/gemeente/GM0748/download/2025.xlsx"),
        &cookie,
    )
    .await?;
    ensure!(status == 200 && xlsx.starts_with(b"PK"), "an XLSX workbook");
    let api_xlsx = get(&w.app, &w.municipality, "/v1/releases/GM0748/2025.xlsx")
        .await
        .bytes()
        .await?;
    ensure!(
        sheets(xlsx)? == sheets(api_xlsx.to_vec())?,
        "the dashboard's workbook holds what the API's does"
    );

    // Another municipality is refused, in words, and the refusal is audited.
    b.goto(&format!("{base}/gemeente/GM0777")).await?;
    let refusal = b.text("p.error[role=alert]").await?;
    ensure!(refusal.contains("GM0748"), "{refusal}");
    ensure!(
        !b.exists("span.figure").await?,
        "no figure of another municipality"
    );
    let (status, _, _) = fetch_with_cookie(&format!("{base}/gemeente/GM0777"), &cookie).await?;
    ensure!(status == 403, "{status}");
    let (status, _, _) = fetch_with_cookie(
        &format!("{base}/gemeente/GM0777/download/2025.csv"),
        &cookie,
    )
    .await?;
    ensure!(status == 403, "{status}");
    let (status, _, _) = fetch_with_cookie(&format!("{base}/regio"), &cookie).await?;
    ensure!(status == 403, "{status}");
    let audit = w.app.state.store.list_audit(0, 10_000, None).await?;
    ensure!(
        audit.iter().any(|e| e.entry.action.as_str() == "forbidden"
            && e.entry.subject.contains("/gemeente/{code}")),
        "the refusal is in the audit chain"
    );

    // English, then sign-out.
    b.goto(&format!("{base}/gemeente/GM0748")).await?;
    b.click("#language-switch").await?;
    b.wait_for("html[lang=en]").await?;
    ensure!(b.current_path().await?.starts_with("/gemeente/GM0748"));
    let heading = b.text("#detail-heading").await?;
    ensure!(heading == "Compared with the region", "{heading}");
    b.check_view("gemeente-en").await?;
    b.click("#sign-out-button").await?;
    b.wait_for("form#sign-in").await?;
    ensure!(
        b.current_path().await? == "/",
        "{}",
        b.current_path().await?
    );
    ensure!(b.exists("form#sign-in").await?);
    ensure!(
        b.cookie("kwm_session").await?.is_none(),
        "the cookie is gone"
    );
    b.goto(&format!("{base}/gemeente/GM0748")).await?;
    ensure!(
        b.exists("form#sign-in").await?,
        "signed out, the page asks to sign in"
    );
    // The old secret opens nothing: the session ended on the server too.
    let (status, headers, _) =
        fetch_with_cookie(&format!("{base}/gemeente/GM0748"), &cookie).await?;
    ensure!(status == 303 && headers.get("location").is_some_and(|l| l == "/"));
    ensure!(w
        .app
        .state
        .store
        .get_session(&token_hash(&session.value), time::OffsetDateTime::now_utc())
        .await?
        .is_none());
    b.close().await?;
    w.app.assert_logs_free_of(&[session.value]);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_region_compares_municipalities_publishes_rounds_and_follows_its_budget(
) -> anyhow::Result<()> {
    let w = world().await;
    let base = w.app.base_url.clone();
    let b = Browser::start("region").await?;
    sign_in(&b, &base, &w.region, "/regio").await?;
    ensure!(
        b.current_path().await? == "/regio",
        "{}",
        b.current_path().await?
    );

    // The heat map and the table of every municipality, against the API.
    ensure!(b.exists("svg.chart[role=img]").await?, "the heat map");
    let shown = shown_figures(&b).await?;
    let region = &w.app.state.region;
    for m in &region.municipalities {
        let r: Release =
            get_json(&w.app, &w.region, &format!("/v1/releases/{}/2025", m.code)).await;
        assert_matches_release(&shown, &m.code.to_string(), &r, 5)?;
    }
    let links = b.texts("table a[href^='/gemeente/']").await?;
    ensure!(links.len() == region.municipalities.len(), "{links:?}");
    b.check_view("regio").await?;

    // A municipality's page, from the region.
    b.click("table a[href^='/gemeente/GM0748']").await?;
    arrive(&b, "/gemeente/GM0748").await?;
    ensure!(b.exists("span.figure").await?);

    // Rounds: publish 2023 through the form; 2025 again changes nothing.
    b.goto(&format!("{base}/regio/rondes")).await?;
    b.check_view("rondes").await?;
    let before: kwm_schemas::release::RoundList = get_json(&w.app, &w.region, "/v1/rounds").await;
    b.click("#periode option[value='2023']").await?;
    b.submit_form("#publish-round").await?;
    arrive(&b, "gepubliceerd=2023").await?;
    let notice = b.text("p.notice[role=status]").await?;
    ensure!(notice.contains("2023"), "{notice}");
    let after: kwm_schemas::release::RoundList = get_json(&w.app, &w.region, "/v1/rounds").await;
    ensure!(after.rounds.len() == before.rounds.len() + 1);
    ensure!(after.rounds.iter().any(|r| r.period.to_string() == "2023"));
    let shown_rounds = b.texts("table#rounds tbody tr").await?;
    ensure!(shown_rounds.len() == after.rounds.len(), "{shown_rounds:?}");
    b.click("#periode option[value='2025']").await?;
    b.submit_form("#publish-round").await?;
    arrive(&b, "uitkomst=unchanged").await?;
    let notice = b.text("p.notice[role=status]").await?;
    ensure!(notice.contains("niet veranderd"), "{notice}");
    let again: kwm_schemas::release::RoundList = get_json(&w.app, &w.region, "/v1/rounds").await;
    ensure!(
        again.rounds.len() == after.rounds.len(),
        "nothing published twice"
    );

    // The budget per data year, as the API reports it.
    b.goto(&format!("{base}/regio/privacy")).await?;
    let report: kwm_schemas::release::PrivacyReport =
        get_json(&w.app, &w.region, "/v1/privacy").await;
    for y in &report.years {
        let row = b
            .texts(&format!("table#budget tr[data-year='{}'] td", y.data_year))
            .await?;
        ensure!(
            row.first() == Some(&y.spent_total),
            "{}: {row:?} vs {}",
            y.data_year,
            y.spent_total
        );
    }
    ensure!(b.exists("svg.chart[role=img]").await?);
    b.check_view("privacy").await?;
    b.close().await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_provider_sees_its_scores_batches_and_audit_entries() -> anyhow::Result<()> {
    let w = world().await;
    let base = w.app.base_url.clone();
    let b = Browser::start("provider").await?;
    sign_in(&b, &base, &w.provider.token, "/aanbieder").await?;
    ensure!(
        b.current_path().await? == "/aanbieder",
        "{}",
        b.current_path().await?
    );

    let scores: kwm_schemas::release::ProviderScores = get_json(
        &w.app,
        &w.provider.token,
        "/v1/providers/me/scores?period=2025",
    )
    .await;
    let shown = shown_figures(&b).await?;
    let agb = w.provider.agb.to_string();
    let mut compared = 0;
    for row in &scores.own.rows {
        let group = row
            .target_group
            .as_ref()
            .map_or("total".to_string(), |g| g.as_str().to_string());
        for cell in &row.cells {
            if let Some(text) = shown.get(&format!("{agb}|{group}|{}", cell.criterion)) {
                ensure!(
                    *text == expected_text(cell),
                    "{group} {}: {text}",
                    cell.criterion
                );
                compared += 1;
            }
        }
    }
    ensure!(compared >= 20, "only {compared} own figures compared");
    ensure!(
        shown
            .keys()
            .all(|k| k.starts_with(&format!("{agb}|")) || k.starts_with("region|")),
        "only its own and the region's figures"
    );

    let batches = w.app.state.store.list_batches(w.provider.agb).await?;
    let listed = b.texts("table#batch-list tbody tr").await?;
    ensure!(listed.len() == batches.len() && !batches.is_empty());
    for batch in &batches {
        ensure!(
            b.exists(&format!("tr[data-batch='{}']", batch.batch_id))
                .await?
        );
    }
    let entries = w
        .app
        .state
        .store
        .list_audit(0, 50, Some(w.provider.agb))
        .await?;
    ensure!(!entries.is_empty());
    for e in &entries {
        ensure!(
            b.exists(&format!("table#audit-list tr[data-seq='{}']", e.seq))
                .await?
        );
    }
    b.check_view("aanbieder").await?;

    // The region's pages are not a provider's.
    b.goto(&format!("{base}/regio")).await?;
    ensure!(b.exists("p.error[role=alert]").await?);
    b.goto(&format!("{base}/gemeente/GM0748")).await?;
    ensure!(!b.exists("span.figure").await?);
    b.close().await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_token_a_forged_form_or_a_revoked_token_opens_nothing() -> anyhow::Result<()> {
    let w = world().await;
    let base = w.app.base_url.clone();
    let b = Browser::start("refusals").await?;

    // A wrong token: the form again, with the reason, and no session.
    sign_in(&b, &base, "kwm_not-a-token", "/inloggen").await?;
    let error = b.text("p.error[role=alert]").await?;
    ensure!(error.contains("onbekend"), "{error}");
    ensure!(b.cookie("kwm_session").await?.is_none());
    b.check_view("sign-in-refused").await?;
    // An operator's token is not for the dashboard.
    let admin = w.app.issue_token(Role::Admin, None).await;
    sign_in(&b, &base, &admin, "/inloggen").await?;
    ensure!(b.text("p.error[role=alert]").await?.contains("beheerders"));
    ensure!(b.cookie("kwm_session").await?.is_none());

    // A sign-in form from elsewhere (no matching CSRF cookie) is refused.
    let client = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()?;
    let res = client
        .post(format!("{base}/inloggen"))
        .form(&[("token", w.municipality.as_str()), ("csrf", "forged")])
        .send()
        .await?;
    ensure!(res.status() == 400, "{}", res.status());
    ensure!(
        res.headers().get("set-cookie").is_none(),
        "no session from a forged form"
    );

    // Signed in: a sign-out without the session's CSRF value does not end it.
    sign_in(&b, &base, &w.municipality, "/gemeente/GM0748").await?;
    let session = b.cookie("kwm_session").await?.context("signed in")?;
    let cookie = format!("kwm_session={}", session.value);
    let res = client
        .post(format!("{base}/uitloggen"))
        .header(reqwest::header::COOKIE, &cookie)
        .form(&[("csrf", "forged")])
        .send()
        .await?;
    ensure!(res.status() == 400, "{}", res.status());
    let (status, _, _) = fetch_with_cookie(&format!("{base}/gemeente/GM0748"), &cookie).await?;
    ensure!(status == 200, "the session survives a forged sign-out");

    // Revoking the token ends its sessions at once.
    let token = w
        .app
        .state
        .store
        .get_token(&token_hash(&w.municipality))
        .await?
        .context("the token")?;
    w.app
        .state
        .store
        .revoke_token(token.id, time::OffsetDateTime::now_utc())
        .await?;
    b.goto(&format!("{base}/gemeente/GM0748")).await?;
    ensure!(
        b.exists("form#sign-in").await?,
        "a revoked token's session is over"
    );

    // The explainer is open to everyone.
    b.goto(&format!("{base}/uitleg")).await?;
    ensure!(b.text("h1").await? == "Uitleg bij de cijfers");
    b.check_view("uitleg").await?;
    b.close().await?;
    Ok(())
}

/// The hidden `csrf` field of a page.
fn csrf_field(html: &str) -> anyhow::Result<String> {
    let rest = html
        .split("name=\"csrf\" value=\"")
        .nth(1)
        .context("a csrf field")?;
    Ok(rest.split('"').next().unwrap_or_default().to_string())
}

/// The value a response sets for cookie `name`.
fn set_cookie(res: &reqwest::Response, name: &str) -> Option<String> {
    res.headers()
        .get_all(reqwest::header::SET_COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .find_map(|v| v.strip_prefix(&format!("{name}=")))
        .map(|v| v.split(';').next().unwrap_or_default().to_string())
}

/// Two instances on one database, as behind a load balancer: a session opened on one serves on the
/// other, and signing out on the other ends it on both. On SQLite and on PostgreSQL.
async fn a_session_is_one_across_instances(backend: crate::helpers::Backend) -> anyhow::Result<()> {
    let Some(a) = crate::helpers::spawn_app_on(backend).await else {
        return Ok(());
    };
    let b = a.second_instance().await;
    let region = a.issue_token(Role::Region, None).await;
    let http = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()?;

    let res = http.get(format!("{}/", a.base_url)).send().await?;
    let signin = set_cookie(&res, "kwm_signin").context("the pre-session cookie")?;
    let csrf = csrf_field(&res.text().await?)?;
    ensure!(
        csrf == signin,
        "the sign-in form carries its cookie's value"
    );
    let res = http
        .post(format!("{}/inloggen", a.base_url))
        .header(reqwest::header::COOKIE, format!("kwm_signin={signin}"))
        .form(&[("token", region.as_str()), ("csrf", csrf.as_str())])
        .send()
        .await?;
    ensure!(res.status() == 303, "{}", res.status());
    ensure!(res.headers().get("location").is_some_and(|l| l == "/regio"));
    let secret = set_cookie(&res, "kwm_session").context("a session")?;
    let cookie = format!("kwm_session={secret}");

    // The other instance knows the session: no round yet, so the page says so.
    let res = http
        .get(format!("{}/regio/rondes", b.base_url))
        .header(reqwest::header::COOKIE, &cookie)
        .send()
        .await?;
    ensure!(res.status() == 200, "{}", res.status());
    let page = res.text().await?;
    let csrf = csrf_field(&page)?;
    ensure!(!page.contains(&region) && !page.contains(&secret));

    // Signed out on the other instance: over on both.
    let res = http
        .post(format!("{}/uitloggen", b.base_url))
        .header(reqwest::header::COOKIE, &cookie)
        .form(&[("csrf", csrf.as_str())])
        .send()
        .await?;
    ensure!(res.status() == 303, "{}", res.status());
    ensure!(
        set_cookie(&res, "kwm_session").as_deref() == Some(""),
        "the cookie is cleared"
    );
    for app in [&a, &b] {
        let res = http
            .get(format!("{}/regio", app.base_url))
            .header(reqwest::header::COOKIE, &cookie)
            .send()
            .await?;
        ensure!(
            res.status() == 303 && res.headers().get("location").is_some_and(|l| l == "/"),
            "{} after sign-out",
            res.status()
        );
    }
    drop(b);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_is_one_across_two_instances_on_sqlite() -> anyhow::Result<()> {
    a_session_is_one_across_instances(crate::helpers::Backend::Sqlite).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_is_one_across_two_instances_on_postgres() -> anyhow::Result<()> {
    a_session_is_one_across_instances(crate::helpers::Backend::Postgres).await
}
