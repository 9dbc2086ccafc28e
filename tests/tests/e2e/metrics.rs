//! Prometheus metrics: served on the metrics listener only, and the series move with what the service
//! does (an upload, a refused upload, a round published and read).

use std::collections::BTreeMap;

use kwm_schemas::problem::{Problem, ProblemType};
use kwm_schemas::release::Release;
use kwm_schemas::{RegionConfig, Role};
use kwm_sdk::batch::seal_records;
use kwm_sdk::prepare::{prepare_file, PrepareContext};
use kwm_sdk::{upload_file, Pseudonymiser};

use crate::helpers::{get_json, publish_round, spawn_app, synth_exports, upload_options, TestApp};

/// One scrape: every sample as (name, labels, value).
struct Scrape {
    text: String,
    samples: Vec<(String, BTreeMap<String, String>, f64)>,
}

impl Scrape {
    async fn of(app: &TestApp) -> Self {
        let res = reqwest::get(&app.metrics_url).await.expect("scrape");
        assert_eq!(res.status(), 200);
        let text = res.text().await.expect("text");
        let samples = text
            .lines()
            .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
            .map(parse_sample)
            .collect();
        Self { text, samples }
    }

    /// The sum over the samples of `name` whose labels include `labels`.
    fn sum(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        self.samples
            .iter()
            .filter(|(n, l, _)| {
                n == name
                    && labels
                        .iter()
                        .all(|(k, v)| l.get(*k).map(String::as_str) == Some(*v))
            })
            .map(|s| s.2)
            .sum()
    }

    fn has(&self, name: &str) -> bool {
        self.samples.iter().any(|(n, _, _)| n == name)
    }
}

/// `name{a="x",b="y"} value`; label values may hold braces and commas (route templates do).
fn parse_sample(line: &str) -> (String, BTreeMap<String, String>, f64) {
    let (series, value) = line.rsplit_once(' ').expect("a value");
    let value: f64 = value.parse().expect("a number");
    let Some((name, rest)) = series.split_once('{') else {
        return (series.to_string(), BTreeMap::new(), value);
    };
    let mut labels = BTreeMap::new();
    let mut rest = rest.strip_suffix('}').expect("closing brace");
    while let Some((key, after)) = rest.split_once("=\"") {
        let mut val = String::new();
        let mut chars = after.char_indices();
        let mut end = after.len();
        while let Some((i, c)) = chars.next() {
            match c {
                '\\' => {
                    if let Some((_, e)) = chars.next() {
                        val.push(e);
                    }
                }
                '"' => {
                    end = i + 1;
                    break;
                }
                c => val.push(c),
            }
        }
        labels.insert(key.trim_start_matches(',').to_string(), val);
        rest = &after[end..];
    }
    (name.to_string(), labels, value)
}

#[tokio::test]
async fn series_move_with_uploads_refusals_and_releases() {
    let app = spawn_app().await;
    let before = Scrape::of(&app).await;
    assert_eq!(
        before.sum("kwm_build_info", &[("version", env!("CARGO_PKG_VERSION"))]),
        1.0
    );
    assert!(before.has("kwm_db_connections"), "pool gauges");
    assert!(
        before.sum("kwm_db_connections", &[]) >= 1.0,
        "the pool holds a connection"
    );
    for t in ProblemType::ALL {
        assert!(
            before
                .samples
                .iter()
                .any(|(n, l, _)| n == "kwm_rejections_total"
                    && l.get("type").map(String::as_str) == Some(t.slug())),
            "every rejection type is exported from the start: {}",
            t.slug()
        );
    }

    // An upload through the SDK.
    let (_dir, out) = synth_exports(1, 300, 21);
    let export = &out.providers[0];
    let p = app.register_provider(export.agb).await;
    let regional = kwm_tests::regional_key();
    let report = upload_file(&upload_options(&app, &p, &export.path, &regional))
        .await
        .expect("upload");
    assert!(report.batches >= 1);

    // A refused upload: the signature does not match the content.
    let ctx = PrepareContext::new(RegionConfig::wbw(), Pseudonymiser::new(&regional, &p.keys));
    let records = prepare_file(&export.path, &ctx).expect("prepared").records;
    let (_, key) = p.client.active_key().await.expect("keys");
    let mut sealed = seal_records(
        &records[..5],
        p.agb,
        None,
        &key,
        p.keys.signer(),
        &kwm_tests::regional_key().check_value(),
        time::OffsetDateTime::now_utc(),
    )
    .expect("sealed");
    sealed.signature.0[0] ^= 1;
    let c = reqwest::Client::new();
    let res = c
        .post(format!("{}/v1/batches", app.base_url))
        .bearer_auth(&p.token)
        .json(&sealed)
        .send()
        .await
        .expect("request");
    assert_eq!(res.status(), 403);
    let problem: Problem = res.json().await.expect("problem");
    assert_eq!(problem.kind(), Some(ProblemType::BadSignature));

    // A round, published by the regional team, then read: reading moves no release series.
    let region = app.issue_token(Role::Region, None).await;
    publish_round(&app, &region, "2025").await;
    let published = Scrape::of(&app).await;
    let whole: Release = get_json(&app, &region, "/v1/releases?scope=region&period=2025").await;
    let _: Release = get_json(&app, &region, "/v1/releases?scope=GM0748&period=2025").await;

    let after = Scrape::of(&app).await;
    let moved =
        |name: &str, labels: &[(&str, &str)]| after.sum(name, labels) - before.sum(name, labels);
    let batches = f64::from(report.batches);
    assert_eq!(
        moved("kwm_uploads_total", &[("outcome", "stored")]),
        batches
    );
    assert_eq!(moved("kwm_uploads_total", &[("outcome", "rejected")]), 1.0);
    assert_eq!(
        moved("kwm_records_total", &[("outcome", "stored")]),
        export.rows as f64
    );
    assert_eq!(
        moved("kwm_rejections_total", &[("type", "bad-signature")]),
        1.0
    );
    let post = [("route", "/v1/batches"), ("method", "POST")];
    assert_eq!(
        moved(
            "kwm_http_requests_total",
            &[post[0], post[1], ("status", "201")]
        ),
        batches
    );
    assert_eq!(
        moved(
            "kwm_http_requests_total",
            &[post[0], post[1], ("status", "403")]
        ),
        1.0
    );
    assert_eq!(
        moved(
            "kwm_http_request_duration_seconds_count",
            &[post[0], post[1], ("status", "201")]
        ),
        batches
    );
    assert!(moved("kwm_http_request_duration_seconds_sum", &post[..]) > 0.0);
    // One round: a release per municipality, the region's and the per-provider table, computed once.
    let municipalities = RegionConfig::wbw().municipalities.len() as f64;
    assert_eq!(
        moved("kwm_releases_total", &[("scope", "municipality")]),
        municipalities
    );
    assert_eq!(moved("kwm_releases_total", &[("scope", "region")]), 1.0);
    assert_eq!(moved("kwm_releases_total", &[("scope", "providers")]), 1.0);
    assert_eq!(moved("kwm_release_compute_seconds_count", &[]), 1.0);
    // Cells of the municipalities' and the region's releases (not the per-provider table).
    let cells: usize = whole.rows.iter().map(|r| r.cells.len()).sum();
    assert_eq!(
        moved("kwm_release_cells_total", &[]),
        (municipalities + 1.0) * cells as f64
    );
    // The budget per data year: the year round's rho on 2025, herhaald beroep's share on 2026.
    assert_eq!(after.sum("kwm_rho_spent", &[("data_year", "2025")]), 0.6);
    assert_eq!(
        after.sum("kwm_rho_remaining", &[("data_year", "2025")]),
        0.525
    );
    let spent_2026 = after.sum("kwm_rho_spent", &[("data_year", "2026")]);
    assert!(spent_2026 > 0.0 && spent_2026 < 0.6, "{spent_2026}");
    assert!(
        !after.has("kwm_epsilon_spent"),
        "the epsilon gauges are gone"
    );
    // Reading served the stored round: nothing released or computed since it was published.
    for name in [
        "kwm_releases_total",
        "kwm_release_cells_total",
        "kwm_release_compute_seconds_count",
    ] {
        assert_eq!(after.sum(name, &[]), published.sum(name, &[]), "{name}");
    }
    assert_eq!(
        moved(
            "kwm_http_requests_total",
            &[
                ("route", "/v1/rounds"),
                ("method", "POST"),
                ("status", "201")
            ]
        ),
        1.0
    );
    assert!(after.sum("kwm_db_connections", &[]) >= 1.0);

    // Labels carry no identifier: no AGB code, no token, no batch id.
    assert!(!after.text.contains(p.agb.as_str()));
    assert!(!after.text.contains(&p.token));
    assert!(!after.text.contains(&sealed.header.batch_id.to_string()));
}

#[tokio::test]
async fn the_api_listener_does_not_serve_metrics() {
    let app = spawn_app().await;
    assert_ne!(
        app.metrics_url,
        format!("{}/metrics", app.base_url),
        "two listeners"
    );
    let res = reqwest::get(format!("{}/metrics", app.base_url))
        .await
        .expect("request");
    assert_eq!(res.status(), 404);
    let p: Problem = res.json().await.expect("a problem document");
    assert_eq!(p.kind(), Some(ProblemType::NotFound));
    // The metrics listener serves nothing else.
    let other = app.metrics_url.replace("/metrics", "/v1/keys");
    assert_eq!(reqwest::get(other).await.expect("request").status(), 404);
}

/// Made-up methods are counted under one label: a client cannot create series without bound.
#[tokio::test]
async fn unknown_methods_share_one_label() {
    let app = spawn_app().await;
    let client = reqwest::Client::new();
    for m in ["FOOBAR", "BREW", "X-ANYTHING-1"] {
        let method = reqwest::Method::from_bytes(m.as_bytes()).expect("a method token");
        let res = client
            .request(method, format!("{}/v1/keys", app.base_url))
            .send()
            .await
            .expect("sent");
        assert_eq!(res.status(), reqwest::StatusCode::METHOD_NOT_ALLOWED);
    }
    let text = reqwest::get(&app.metrics_url)
        .await
        .expect("scrape")
        .text()
        .await
        .expect("body");
    for m in ["FOOBAR", "BREW", "X-ANYTHING-1"] {
        assert!(!text.contains(m), "{m} became a label");
    }
    let after = Scrape::of(&app).await;
    assert_eq!(
        after.sum("kwm_http_requests_total", &[("method", "other")]),
        3.0
    );
}
