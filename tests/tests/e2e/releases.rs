//! Releases end to end: data uploaded through the SDK, releases asked for over HTTP by municipality,
//! region and provider tokens, frozen in the ledger, served as JSON, CSV and XLSX, and a budget that
//! holds under concurrent requests on two instances.

use std::collections::BTreeMap;

use kwm_schemas::problem::{Problem, ProblemType};
use kwm_schemas::region::{Epsilon, WBW_TOML};
use kwm_schemas::release::{CellStatus, ProviderScores, Release, ReleaseList};
use kwm_schemas::Role;
use kwm_sdk::{upload_file, RegionalKey};
use reqwest::StatusCode;

use crate::helpers::{
    spawn_app, spawn_app_on, spawn_app_with, synth_exports, upload_options, Backend, TestApp,
};

async fn get(app: &TestApp, token: &str, path: &str) -> reqwest::Response {
    reqwest::Client::new()
        .get(format!("{}{path}", app.base_url))
        .bearer_auth(token)
        .send()
        .await
        .expect("request sent")
}

async fn get_json<T: serde::de::DeserializeOwned>(app: &TestApp, token: &str, path: &str) -> T {
    let res = get(app, token, path).await;
    let status = res.status();
    let text = res.text().await.expect("body");
    assert_eq!(status, StatusCode::OK, "GET {path}: {text}");
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("GET {path}: {e}: {text}"))
}

async fn get_problem(app: &TestApp, token: &str, path: &str) -> (StatusCode, Problem) {
    let res = get(app, token, path).await;
    let status = res.status();
    let text = res.text().await.expect("body");
    let p: Problem = serde_json::from_str(&text)
        .unwrap_or_else(|e| panic!("GET {path}: not a problem document ({e}): {text}"));
    (status, p)
}

/// Uploads the synthetic exports of the first `n` providers of `out` through the SDK.
async fn upload(
    app: &TestApp,
    out: &kwm_sdk::synth::SynthOutput,
    range: std::ops::Range<usize>,
    regional: &RegionalKey,
) -> Vec<crate::helpers::TestProvider> {
    let mut ps = Vec::new();
    for export in &out.providers[range] {
        let p = app.register_provider(export.agb).await;
        upload_file(&upload_options(app, &p, &export.path, regional))
            .await
            .expect("upload succeeds");
        ps.push(p);
    }
    ps
}

fn check_cells(r: &Release) {
    assert!(!r.rows.is_empty());
    for row in &r.rows {
        assert_eq!(row.cells.len(), r.criteria.len());
        for c in &row.cells {
            assert_eq!(
                c.value.is_some(),
                c.status == CellStatus::Published,
                "{c:?}"
            );
            if c.status == CellStatus::Published {
                assert!(c.ci95_low.is_some() && c.ci95_high.is_some(), "{c:?}");
            }
        }
    }
}

async fn publish_freeze_and_serve(app: TestApp) {
    let (_dir, out) = synth_exports(5, 8_000, 11);
    let regional = RegionalKey::generate().expect("regional key");
    let providers = upload(&app, &out, 0..4, &regional).await;
    let muni = app.issue_token(Role::Municipality, Some("GM0748")).await;
    let region = app.issue_token(Role::Region, None).await;

    // First request publishes version 1; asking again returns it unchanged.
    let path = "/v1/releases?scope=GM0748&period=2025";
    let first: Release = get_json(&app, &muni, path).await;
    assert!(first.frozen);
    assert_eq!(first.version, Some(1));
    assert_eq!(first.scope.to_string(), "GM0748");
    assert_eq!(first.partitions.len(), 4, "a year reads four quarters");
    check_cells(&first);
    let published = first
        .status_counts()
        .iter()
        .find(|(s, _)| s.is_published())
        .map_or(0, |c| c.1);
    assert!(published > 0, "8,000 trajectories publish something");
    let again: Release = get_json(&app, &muni, path).await;
    assert_eq!(again, first, "a frozen release is served unchanged");
    // A municipality token may leave its scope out.
    let implied: Release = get_json(&app, &muni, "/v1/releases?period=2025").await;
    assert_eq!(implied, first);

    // By id, as JSON, CSV and XLSX.
    let id = first.id.expect("an id");
    let by_id: Release = get_json(&app, &muni, &format!("/v1/releases/{id}")).await;
    assert_eq!(by_id, first);
    let csv = get(&app, &muni, &format!("/v1/releases/{id}.csv")).await;
    assert_eq!(csv.status(), StatusCode::OK);
    assert!(csv.headers()["content-type"]
        .to_str()
        .expect("ascii")
        .starts_with("text/csv"));
    let text = csv.text().await.expect("csv");
    let cells: usize = first.rows.iter().map(|r| r.cells.len()).sum();
    assert_eq!(text.lines().count(), cells + 1, "one line per cell");
    assert!(text.starts_with("scope,period,version,"));
    let xlsx = get(&app, &muni, &format!("/v1/releases/{id}.xlsx")).await;
    assert_eq!(xlsx.status(), StatusCode::OK);
    assert!(xlsx.bytes().await.expect("xlsx").starts_with(b"PK"));
    let (status, p) = get_problem(&app, &muni, &format!("/v1/releases/{id}.pdf")).await;
    assert_eq!(
        (status, p.kind()),
        (StatusCode::BAD_REQUEST, Some(ProblemType::BadRequest))
    );

    // Role and scope checks.
    for forbidden in [
        "/v1/releases?scope=GM0777&period=2025",
        "/v1/releases?scope=region&period=2025",
    ] {
        let (status, p) = get_problem(&app, &muni, forbidden).await;
        assert_eq!(
            (status, p.kind()),
            (StatusCode::FORBIDDEN, Some(ProblemType::Forbidden))
        );
    }
    let (status, _) = get_problem(&app, &providers[0].token, path).await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    let (status, p) = get_problem(&app, &muni, "/v1/releases?period=2025-M1").await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(p.detail.contains("period"), "{}", p.detail);

    // The region reads the region and every municipality.
    let whole: Release = get_json(&app, &region, "/v1/releases?scope=region&period=2025").await;
    assert_eq!(whole.partitions.len(), 9 * 4);
    check_cells(&whole);
    let _: Release = get_json(&app, &region, "/v1/releases?scope=GM0777&period=2025-H1").await;
    // The list shows a municipality its own releases only, the region all of them.
    let own: ReleaseList = get_json(&app, &muni, "/v1/releases").await;
    assert_eq!(own.releases.len(), 1);
    assert_eq!(own.releases[0].id, id);
    let all: ReleaseList = get_json(&app, &region, "/v1/releases").await;
    assert_eq!(all.releases.len(), 3);
    // Another municipality's release is not found by id for this token.
    let other = all
        .releases
        .iter()
        .find(|r| r.scope.to_string() == "GM0777")
        .expect("GM0777 released");
    let (status, _) = get_problem(&app, &muni, &format!("/v1/releases/{}", other.id)).await;
    assert_eq!(status, StatusCode::NOT_FOUND);

    // A provider sees its own rows next to the region's.
    let p0 = &providers[0];
    let scores: ProviderScores =
        get_json(&app, &p0.token, "/v1/providers/me/scores?period=2025").await;
    assert_eq!(scores.provider, p0.agb);
    assert!(!scores.own.rows.is_empty());
    assert!(scores.own.rows.iter().all(|r| r.provider == Some(p0.agb)));
    assert!(scores.benchmark.rows.iter().all(|r| r.provider.is_none()));
    assert_eq!(scores.benchmark.release, whole.id.expect("id"));
    let (status, _) = get_problem(&app, &muni, "/v1/providers/me/scores?period=2025").await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    let (status, _) = get_problem(&app, &p0.token, "/v1/providers/me/scores").await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    // The per-provider table is nobody's to read whole.
    let (status, _) = get_problem(
        &app,
        &region,
        &format!("/v1/releases/{}", scores.own.release),
    )
    .await;
    assert_eq!(status, StatusCode::NOT_FOUND);

    // New data: a new version; the old one stays as published.
    upload(&app, &out, 4..5, &regional).await;
    let second: Release = get_json(&app, &muni, path).await;
    assert_eq!(second.version, Some(2));
    assert_ne!(second.id, first.id);
    let old: Release = get_json(&app, &muni, &format!("/v1/releases/{id}")).await;
    assert_eq!(old, first, "frozen releases stay as published");

    // The ledger charged every partition exactly.
    let budget: BTreeMap<String, Epsilon> = app
        .state
        .store
        .list_budget()
        .await
        .expect("budget")
        .into_iter()
        .collect();
    // GM0748/2025-Q1: two GM0748 releases, the region release, the per-provider table: 4 x 0.5.
    assert_eq!(budget["GM0748/2025-Q1"].to_string(), "2");
    // GM0777/2025-Q1: the region, the per-provider table and the GM0777 half-year.
    assert_eq!(budget["GM0777/2025-Q1"].to_string(), "1.5");
    assert_eq!(budget["GM0777/2025-Q3"].to_string(), "1");
    app.assert_logs_free_of(&[]);
}

#[tokio::test]
async fn releases_are_published_frozen_and_served_on_sqlite() {
    publish_freeze_and_serve(spawn_app().await).await;
}

#[tokio::test]
async fn releases_are_published_frozen_and_served_on_postgres() {
    if let Some(app) = spawn_app_on(Backend::Postgres).await {
        publish_freeze_and_serve(app).await;
    }
}

fn region_with_cap(cap: &str) -> String {
    let text = WBW_TOML.replace(
        "partition_epsilon_cap = \"4\"",
        &format!("partition_epsilon_cap = \"{cap}\""),
    );
    assert_ne!(text, WBW_TOML, "the cap line is in the region file");
    text
}

#[tokio::test]
async fn exhausted_budget_is_a_problem_naming_the_partition() {
    let app = spawn_app_with(Backend::Sqlite, Some(region_with_cap("1")))
        .await
        .expect("SQLite");
    let (_dir, out) = synth_exports(4, 3_000, 5);
    let regional = RegionalKey::generate().expect("regional key");
    upload(&app, &out, 0..3, &regional).await;
    let region = app.issue_token(Role::Region, None).await;

    let year: Release = get_json(&app, &region, "/v1/releases?scope=GM0748&period=2025").await;
    let _: Release = get_json(&app, &region, "/v1/releases?scope=GM0748&period=2025-H1").await;
    // GM0748/2025-Q1 and -Q2 are spent (0.5 + 0.5 of 1); Q3 and Q4 have 0.5 left.
    let (status, p) = get_problem(&app, &region, "/v1/releases?scope=GM0748&period=2025-Q2").await;
    assert_eq!(status, StatusCode::CONFLICT);
    assert_eq!(p.kind(), Some(ProblemType::BudgetExhausted));
    assert_eq!(p.partition.as_deref(), Some("GM0748/2025-Q2"));
    assert!(p.detail.contains("GM0748/2025-Q2"), "{}", p.detail);
    let (status, p) = get_problem(&app, &region, "/v1/releases?scope=region&period=2025").await;
    assert_eq!(status, StatusCode::CONFLICT);
    assert_eq!(p.partition.as_deref(), Some("GM0748/2025-Q1"));
    let _: Release = get_json(&app, &region, "/v1/releases?scope=GM0748&period=2025-Q3").await;

    // New data, no budget: the published version stays, and the response says why.
    upload(&app, &out, 3..4, &regional).await;
    let res = get(&app, &region, "/v1/releases?scope=GM0748&period=2025").await;
    assert_eq!(res.status(), StatusCode::OK);
    assert_eq!(
        res.headers()
            .get("kwm-newer-data-withheld")
            .and_then(|v| v.to_str().ok()),
        Some("GM0748/2025-Q1")
    );
    let served: Release = res.json().await.expect("release");
    assert_eq!(served, year);
    let spent = app
        .state
        .store
        .budget_spent(&["GM0748/2025-Q1".into(), "GM0748/2025-Q3".into()])
        .await
        .expect("budget");
    assert_eq!(
        spent
            .iter()
            .map(|e| e.map(|e| e.to_string()))
            .collect::<Vec<_>>(),
        [Some("1".to_string()), Some("1".to_string())]
    );
}

/// Many concurrent requests for overlapping releases, spread over two instances on one PostgreSQL
/// database, never spend more than the cap of any partition.
#[tokio::test]
async fn two_instances_never_overspend_the_budget() {
    let Some(a) = spawn_app_with(Backend::Postgres, Some(region_with_cap("2"))).await else {
        return;
    };
    let b = a.second_instance().await;
    let (_dir, out) = synth_exports(3, 2_000, 9);
    let regional = RegionalKey::generate().expect("regional key");
    upload(&a, &out, 0..3, &regional).await;
    let region = a.issue_token(Role::Region, None).await;

    let scopes = ["region", "GM0748", "GM0777"];
    let periods = [
        "2025", "2025-H1", "2025-H2", "2025-Q1", "2025-Q2", "2025-Q3", "2025-Q4",
    ];
    let mut tasks = Vec::new();
    for round in 0..3 {
        for (i, scope) in scopes.iter().enumerate() {
            for (j, period) in periods.iter().enumerate() {
                let base = if (round + i + j) % 2 == 0 {
                    a.base_url.clone()
                } else {
                    b.base_url.clone()
                };
                let token = region.clone();
                let url = format!("{base}/v1/releases?scope={scope}&period={period}");
                tasks.push(tokio::spawn(async move {
                    let res = reqwest::Client::new()
                        .get(url)
                        .bearer_auth(token)
                        .send()
                        .await
                        .expect("sent");
                    res.status()
                }));
            }
        }
    }
    let mut statuses = BTreeMap::<u16, usize>::new();
    for t in tasks {
        *statuses.entry(t.await.expect("task").as_u16()).or_default() += 1;
    }
    assert_eq!(
        statuses.keys().copied().collect::<Vec<_>>(),
        [200, 409],
        "every request is served or refused for budget: {statuses:?}"
    );

    // No partition past its cap, and every partition's spend is exactly what its releases charged.
    let cap: Epsilon = "2".parse().expect("cap");
    let releases = a.state.store.list_releases(None, None).await.expect("list");
    let mut charged = BTreeMap::<String, i64>::new();
    for r in &releases {
        let rel: Release = serde_json::from_value(r.body.clone()).expect("body");
        for p in &rel.partitions {
            *charged
                .entry(format!("{}/{}", p.municipality, p.period))
                .or_default() += r.epsilon.to_nanos().expect("nanos");
        }
    }
    let budget = a.state.store.list_budget().await.expect("budget");
    assert!(!budget.is_empty());
    for (partition, spent) in &budget {
        let spent = spent.to_nanos().expect("nanos");
        assert!(
            spent <= cap.to_nanos().expect("nanos"),
            "{partition}: {spent}"
        );
        assert_eq!(charged.get(partition), Some(&spent), "{partition}");
    }
    // The cap was reached somewhere, so the race was real.
    assert!(budget.iter().any(|(_, s)| s.to_nanos() == cap.to_nanos()));
    // One version per (scope, period): the data did not change.
    let mut seen = std::collections::BTreeSet::new();
    for r in &releases {
        assert!(
            seen.insert((r.scope.clone(), r.period.clone())),
            "{} {}",
            r.scope,
            r.period
        );
    }
    drop(b);
}
