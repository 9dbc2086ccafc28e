//! Reading the releases of a round end to end: data uploaded through the SDK, the round of 2025
//! published by the regional team, and its frozen releases read over HTTP by municipality, region and
//! provider tokens, as JSON, CSV and XLSX, with the scope rules of each role.

use kwm_schemas::problem::ProblemType;
use kwm_schemas::release::{
    CellStatus, Figure, ProviderScores, Release, ReleaseList, ReleaseScope,
};
use kwm_schemas::{RegionConfig, Role};
use reqwest::StatusCode;

use crate::helpers::{
    get, get_json, get_problem, publish_round, spawn_app, spawn_app_on, synth_exports,
    upload_providers, Backend, TestApp,
};

/// Every cell of a noisy table: a value exactly when published, with its interval, counts rounded
/// to the region's step.
pub fn check_cells(r: &Release) {
    assert!(!r.rows.is_empty());
    let step = i64::from(r.policy.count_rounding);
    for row in &r.rows {
        assert_eq!(row.cells.len(), r.criteria.len());
        for (c, criterion) in row.cells.iter().zip(&r.criteria) {
            assert_eq!(c.criterion, criterion.code);
            assert!(!c.exact, "{c:?}");
            assert_eq!(
                c.value.is_some(),
                c.status == CellStatus::Published,
                "{c:?}"
            );
            if c.status == CellStatus::Published {
                assert!(c.ci95_low.is_some() && c.ci95_high.is_some(), "{c:?}");
                let (low, high) = (c.ci95_low.expect("low"), c.ci95_high.expect("high"));
                let v = c.value.expect("value");
                assert!(
                    low.tenths() <= v.tenths() && v.tenths() <= high.tenths(),
                    "{c:?}"
                );
                if let Figure::Whole(n) = v {
                    assert_eq!(n % step, 0, "a count is rounded to {step}: {c:?}");
                }
                if let Some(n) = c.count {
                    assert_eq!(n % step as u64, 0, "{c:?}");
                }
            }
        }
    }
}

fn published_cells(r: &Release) -> usize {
    r.status_counts()
        .iter()
        .find(|(s, _)| s.is_published())
        .map_or(0, |c| c.1)
}

async fn a_round_is_read(app: TestApp) {
    let (_dir, out) = synth_exports(5, 8_000, 11);
    let regional = kwm_tests::regional_key();
    let providers = upload_providers(&app, &out, 0..4, &regional).await;
    let muni = app.issue_token(Role::Municipality, Some("GM0748")).await;
    let region = app.issue_token(Role::Region, None).await;
    let wbw = RegionConfig::wbw();

    let path = "/v1/releases?scope=GM0748&period=2025";
    let (status, p) = get_problem(&app, &muni, path).await;
    assert_eq!(
        (status, p.kind()),
        (StatusCode::NOT_FOUND, Some(ProblemType::NotReleased)),
        "{}",
        p.detail
    );
    assert_eq!(p.available_from.as_deref(), Some("2026-07-01"));

    let round = publish_round(&app, &region, "2025").await.round;
    assert_eq!(round.version, 1);
    let mut scopes: Vec<String> = round.releases.iter().map(|r| r.scope.to_string()).collect();
    scopes.sort();
    let mut want: Vec<String> = wbw
        .municipalities
        .iter()
        .map(|m| m.code.to_string())
        .collect();
    want.extend(["providers".to_string(), "region".to_string()]);
    want.sort();
    assert_eq!(
        scopes, want,
        "one release per municipality, the region's and the providers'"
    );

    // The municipality's release of the round.
    let first: Release = get_json(&app, &muni, path).await;
    assert!(first.frozen);
    assert_eq!(first.version, Some(1));
    assert_eq!(first.round, Some(round.id));
    assert_eq!(first.scope.to_string(), "GM0748");
    assert_eq!(first.period.to_string(), "2025");
    check_cells(&first);
    assert!(
        published_cells(&first) > 0,
        "8,000 trajectories publish something"
    );
    assert_eq!(
        first.rows.len(),
        wbw.target_groups.len() + 1,
        "a row per target group and the total"
    );
    // What it says about its privacy and its noise.
    assert_eq!(first.privacy.mechanism, "discrete-gaussian");
    assert_eq!(first.privacy.round_rho.to_string(), "0.6");
    assert_eq!(first.privacy.rho_per_data_year.to_string(), "1.125");
    assert_eq!(first.privacy.charges, round.charges);
    let years: Vec<u16> = first.privacy.charges.iter().map(|c| c.data_year).collect();
    assert_eq!(
        years,
        [2025, 2026],
        "herhaald beroep's window reaches into 2026"
    );
    assert_eq!(first.privacy.charges[0].rho.to_string(), "0.6");
    assert!(first.privacy.guarantee_en.contains("zCDP"));
    assert!(!first.noise.measures.is_empty());
    assert!(!first.noise.thresholds.is_empty());
    assert_eq!(first.noise.count_rounding, 5);
    assert!(first
        .noise
        .thresholds
        .iter()
        .all(|t| t.min_noisy_count >= 1));

    // Read again, and without the scope (a municipality's own): the same frozen release.
    let again: Release = get_json(&app, &muni, path).await;
    assert_eq!(again, first, "a frozen release is served unchanged");
    let implied: Release = get_json(&app, &muni, "/v1/releases?period=2025").await;
    assert_eq!(implied, first);

    // By id, as JSON, CSV and XLSX.
    let id = first.id.expect("an id");
    let by_id: Release = get_json(&app, &muni, &format!("/v1/releases/{id}")).await;
    assert_eq!(by_id, first);
    let by_json: Release = get_json(&app, &muni, &format!("/v1/releases/{id}.json")).await;
    assert_eq!(by_json, first);
    let csv = get(&app, &muni, &format!("/v1/releases/{id}.csv")).await;
    assert_eq!(csv.status(), StatusCode::OK);
    assert!(csv.headers()["content-type"]
        .to_str()
        .expect("ascii")
        .starts_with("text/csv"));
    let text = csv.text().await.expect("csv");
    let cells: usize = first.rows.iter().map(|r| r.cells.len()).sum();
    assert_eq!(text.lines().count(), cells + 1, "one line per cell");
    assert!(
        text.starts_with("\u{feff}Gebied;Periode;Versie;"),
        "the Dutch dialect, with a byte order mark"
    );
    let xlsx = get(&app, &muni, &format!("/v1/releases/{id}.xlsx")).await;
    assert_eq!(xlsx.status(), StatusCode::OK);
    assert!(xlsx.bytes().await.expect("xlsx").starts_with(b"PK"));
    let (status, p) = get_problem(&app, &muni, &format!("/v1/releases/{id}.pdf")).await;
    assert_eq!(
        (status, p.kind()),
        (StatusCode::BAD_REQUEST, Some(ProblemType::BadRequest))
    );

    // Scope and role checks: the municipality reads its own and the region (its benchmark).
    let (status, p) = get_problem(&app, &muni, "/v1/releases?scope=GM0777&period=2025").await;
    assert_eq!(
        (status, p.kind()),
        (StatusCode::FORBIDDEN, Some(ProblemType::Forbidden))
    );
    let benchmark: Release = get_json(&app, &muni, "/v1/releases?scope=region&period=2025").await;
    assert_eq!(benchmark.scope, ReleaseScope::Region);
    assert_eq!(benchmark.round, Some(round.id));
    let (status, _) = get_problem(&app, &providers[0].token, path).await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    let (status, p) = get_problem(&app, &muni, "/v1/releases?period=2025-M1").await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(p.detail.contains("period"), "{}", p.detail);
    let (status, p) = get_problem(&app, &region, "/v1/releases?scope=GM9999&period=2025").await;
    assert_eq!(
        (status, p.kind()),
        (StatusCode::NOT_FOUND, Some(ProblemType::NotFound)),
        "not a municipality of the region: {}",
        p.detail
    );
    let (status, _) = get_problem(&app, &region, "/v1/releases?period=2025").await;
    assert_eq!(
        status,
        StatusCode::BAD_REQUEST,
        "the region names the scope"
    );

    // The region reads the region and every municipality, all of the one round.
    let whole: Release = get_json(&app, &region, "/v1/releases?scope=region&period=2025").await;
    assert_eq!(whole, benchmark);
    check_cells(&whole);
    assert!(published_cells(&whole) > 0);
    for m in &wbw.municipalities {
        let r: Release = get_json(
            &app,
            &region,
            &format!("/v1/releases?scope={}&period=2025", m.code),
        )
        .await;
        assert_eq!(r.scope, ReleaseScope::Municipality(m.code));
        assert_eq!((r.round, r.version), (Some(round.id), Some(1)));
        assert_eq!(r.privacy, first.privacy, "one measurement, one statement");
        check_cells(&r);
    }

    // The list: the region every release but the per-provider table (a municipality's list:
    // `a_municipality_lists_its_own_release_and_the_regions`).
    let all: ReleaseList = get_json(&app, &region, "/v1/releases").await;
    assert_eq!(all.releases.len(), wbw.municipalities.len() + 1);
    assert!(all
        .releases
        .iter()
        .all(|r| r.scope != ReleaseScope::Providers));
    // Another municipality's release is not found by id for this token.
    let other = all
        .releases
        .iter()
        .find(|r| r.scope.to_string() == "GM0777")
        .expect("GM0777 released");
    let (status, _) = get_problem(&app, &muni, &format!("/v1/releases/{}", other.id)).await;
    assert_eq!(status, StatusCode::NOT_FOUND);

    // A provider sees its own rows (exact, its own data; herhaald beroep noisy) next to the region's.
    let p0 = &providers[0];
    let scores: ProviderScores =
        get_json(&app, &p0.token, "/v1/providers/me/scores?period=2025").await;
    assert_eq!(scores.provider, p0.agb);
    assert_eq!(scores.period.to_string(), "2025");
    assert!(!scores.own.rows.is_empty());
    assert!(scores.own.rows.iter().all(|r| r.provider == Some(p0.agb)));
    for row in &scores.own.rows {
        for c in &row.cells {
            assert_eq!(c.exact, c.criterion != "herhaald_beroep", "{c:?}");
            if c.exact && c.status == CellStatus::Published {
                assert!(
                    c.ci95_low.is_none(),
                    "an exact figure has no interval: {c:?}"
                );
            }
        }
    }
    assert!(scores.own.rows.iter().any(|r| r
        .cells
        .iter()
        .any(|c| c.exact && c.status == CellStatus::Published)));
    assert_eq!(scores.benchmark.release, whole.id.expect("id"));
    assert_eq!(scores.benchmark.rows, whole.rows);
    assert_eq!(scores.criteria, whole.criteria);
    assert_eq!(scores.privacy, whole.privacy);
    let providers_release = round
        .releases
        .iter()
        .find(|r| r.scope == ReleaseScope::Providers)
        .expect("the per-provider table")
        .id;
    assert_eq!(scores.own.release, providers_release);
    // A provider without data in the period has no rows of its own, and the benchmark.
    let idle = app.register_provider(out.providers[4].agb).await;
    let none: ProviderScores =
        get_json(&app, &idle.token, "/v1/providers/me/scores?period=2025").await;
    assert!(none.own.rows.is_empty());
    assert_eq!(none.benchmark.rows, whole.rows);
    let (status, _) = get_problem(&app, &muni, "/v1/providers/me/scores?period=2025").await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    let (status, _) = get_problem(&app, &p0.token, "/v1/providers/me/scores").await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    // The per-provider table is nobody's to read whole.
    for token in [&region, &muni] {
        let (status, p) =
            get_problem(&app, token, &format!("/v1/releases/{providers_release}")).await;
        assert_eq!(
            (status, p.kind()),
            (StatusCode::NOT_FOUND, Some(ProblemType::NotFound))
        );
    }
    let (status, _) = get_problem(&app, &region, "/v1/releases?scope=providers&period=2025").await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    app.assert_logs_free_of(&[]);
}

/// `GET /v1/releases` lists what the caller may read: a municipality its own release and the region's
/// (its benchmark), of every version, and nothing of another municipality.
#[tokio::test]
async fn a_municipality_lists_its_own_release_and_the_regions() {
    let app = spawn_app().await;
    let (_dir, out) = synth_exports(2, 1_500, 12);
    let regional = kwm_tests::regional_key();
    upload_providers(&app, &out, 0..2, &regional).await;
    let muni = app.issue_token(Role::Municipality, Some("GM0748")).await;
    let region = app.issue_token(Role::Region, None).await;
    let round = publish_round(&app, &region, "2025").await.round;
    let own: ReleaseList = get_json(&app, &muni, "/v1/releases").await;
    let mut listed: Vec<(String, uuid::Uuid)> = own
        .releases
        .iter()
        .map(|r| (r.scope.to_string(), r.id))
        .collect();
    listed.sort();
    let mut want: Vec<(String, uuid::Uuid)> = round
        .releases
        .iter()
        .filter(|r| matches!(r.scope.to_string().as_str(), "GM0748" | "region"))
        .map(|r| (r.scope.to_string(), r.id))
        .collect();
    want.sort();
    assert_eq!(listed, want, "its own release and the region's");
    assert!(own
        .releases
        .iter()
        .all(|r| r.round == round.id && r.version == 1));
    // Naming a scope narrows the list to what the token may read of it.
    let benchmark: ReleaseList = get_json(&app, &muni, "/v1/releases?scope=region").await;
    assert_eq!(benchmark.releases.len(), 1);
    assert_eq!(benchmark.releases[0].scope, ReleaseScope::Region);
    let (status, _) = get_problem(&app, &muni, "/v1/releases?scope=GM0777").await;
    assert_eq!(status, StatusCode::FORBIDDEN);
}

#[tokio::test]
async fn a_round_is_read_by_every_role_on_sqlite() {
    a_round_is_read(spawn_app().await).await;
}

#[tokio::test]
async fn a_round_is_read_by_every_role_on_postgres() {
    if let Some(app) = spawn_app_on(Backend::Postgres).await {
        a_round_is_read(app).await;
    }
}
