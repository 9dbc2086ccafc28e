//! Release rounds end to end: data uploaded through the SDK, rounds published over HTTP, by the admin
//! commands and by the region calendar, on one or two instances, on SQLite and PostgreSQL. What is
//! checked is what the rounds promise: a period is published once per data version and charged once
//! per data year; a correction is a new version and the old one stays readable; no read computes,
//! publishes or charges; no data year passes its cap however rounds race; refusals name their reason.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use kwm_schemas::problem::{Problem, ProblemType};
use kwm_schemas::region::WBW_TOML;
use kwm_schemas::release::{
    PrivacyReport, ProviderScores, Release, ReleaseList, ReleaseScope, RoundList, RoundOutcome,
};
use kwm_schemas::Role;
use kwm_service::app::audit_trail::{load_chain, verify};
use kwm_service::store::{PrivacyCharge, RoundRecord};
use reqwest::StatusCode;
use uuid::Uuid;

use crate::helpers::{
    get, get_json, get_problem, post_round_at, publish_round, region_edited,
    region_with_room_for_corrections, spawn_app_configured, spawn_app_with, synth_exports,
    upload_options, upload_providers, Backend, TestApp,
};

/// Nano-rho per rho, as the accountant counts.
const NANOS: i64 = 1_000_000_000;

/// Runs `$body(app)` once per backend, as `<name>_on_sqlite` and `<name>_on_postgres`.
macro_rules! on_both_backends {
    ($name:ident, $body:expr) => {
        mod $name {
            #[tokio::test]
            async fn on_sqlite() {
                $body(super::Backend::Sqlite).await;
            }

            #[tokio::test]
            async fn on_postgres() {
                $body(super::Backend::Postgres).await;
            }
        }
    };
}

/// The app on `backend` with `region` (the shipped region file when `None`); `None` when PostgreSQL is
/// not configured.
async fn app_on(backend: Backend, region: Option<String>) -> Option<TestApp> {
    spawn_app_with(
        backend,
        Some(region.unwrap_or_else(|| WBW_TOML.to_string())),
    )
    .await
}

fn problem_of(status: StatusCode, text: &str) -> (StatusCode, Problem) {
    let p: Problem = serde_json::from_str(text)
        .unwrap_or_else(|e| panic!("{status}: not a problem document ({e}): {text}"));
    (status, p)
}

fn outcome_of(text: &str) -> RoundOutcome {
    serde_json::from_str(text).unwrap_or_else(|e| panic!("not a round outcome ({e}): {text}"))
}

/// `POST /v1/rounds` raw: any body, any token (or none).
async fn post_rounds_body(
    app: &TestApp,
    token: Option<&str>,
    body: serde_json::Value,
) -> (StatusCode, String) {
    let mut req = reqwest::Client::new()
        .post(format!("{}/v1/rounds", app.base_url))
        .json(&body);
    if let Some(t) = token {
        req = req.bearer_auth(t);
    }
    let res = req.send().await.expect("request sent");
    let status = res.status();
    (status, res.text().await.expect("body"))
}

/// The ledger as the store holds it: the rounds of `period` and every charge.
async fn ledger(app: &TestApp, period: &str) -> (Vec<RoundRecord>, Vec<PrivacyCharge>) {
    let store = app.state.store.as_ref();
    let rounds = store.list_rounds(Some(period)).await.expect("rounds");
    let charges = store.list_privacy_charges().await.expect("charges");
    (rounds, charges)
}

/// Charges per data year: (count, nano-rho in all).
fn per_year(charges: &[PrivacyCharge]) -> BTreeMap<u16, (usize, i64)> {
    let mut out = BTreeMap::<u16, (usize, i64)>::new();
    for c in charges {
        let e = out.entry(c.data_year).or_default();
        e.0 += 1;
        e.1 += c.rho_nanos;
    }
    out
}

/// Every round stored whole: each charged exactly what it says, once per data year it reads, and no
/// charge without its round.
fn assert_ledger_whole(rounds: &[RoundRecord], charges: &[PrivacyCharge]) {
    let mut expected: Vec<(String, u16, i64)> = rounds
        .iter()
        .flat_map(|r| r.charges.iter().map(|(y, n)| (r.id.to_string(), *y, *n)))
        .collect();
    let mut got: Vec<(String, u16, i64)> = charges
        .iter()
        .map(|c| {
            assert_eq!(c.subject_kind, "round", "{c:?}");
            (c.subject_id.clone(), c.data_year, c.rho_nanos)
        })
        .collect();
    expected.sort();
    got.sort();
    assert_eq!(
        got, expected,
        "the charges are exactly the stored rounds' charges"
    );
    let mut versions: Vec<u32> = rounds.iter().map(|r| r.version).collect();
    versions.sort_unstable();
    assert_eq!(
        versions,
        (1..=rounds.len() as u32).collect::<Vec<_>>(),
        "versions 1, 2, ... without gaps"
    );
}

/// The audit chain holds, every round's entry included.
async fn assert_audit_intact(app: &TestApp) {
    let v = verify(app.state.store.as_ref(), None)
        .await
        .expect("the chain is readable");
    assert_eq!(
        v.result,
        Ok(()),
        "the audit chain after {} entries",
        v.entries
    );
}

/// Audit entries of rounds (action `release`).
async fn round_audit_entries(app: &TestApp) -> Vec<String> {
    load_chain(app.state.store.as_ref())
        .await
        .expect("chain")
        .into_iter()
        .filter(|e| e.entry.action.as_str() == "release")
        .map(|e| e.entry.subject)
        .collect()
}

fn release_id(o: &RoundOutcome, scope: &str) -> Uuid {
    o.round
        .releases
        .iter()
        .find(|r| r.scope.to_string() == scope)
        .unwrap_or_else(|| panic!("the round has a release of {scope}"))
        .id
}

// ------------------------------------------------------------------------------------------------
// Publish, publish again, correct.

async fn published_once_then_corrected(backend: Backend) {
    // Room for a second year round of 2025 (the correction).
    let Some(app) = app_on(backend, Some(region_with_room_for_corrections())).await else {
        return;
    };
    let (_dir, out) = synth_exports(4, 4_000, 41);
    let regional = kwm_tests::regional_key();
    upload_providers(&app, &out, 0..3, &regional).await;
    let region = app.issue_token(Role::Region, None).await;
    let muni = app.issue_token(Role::Municipality, Some("GM0748")).await;

    let first = publish_round(&app, &region, "2025").await;
    assert_eq!(first.round.version, 1);
    assert_eq!(first.round.period.to_string(), "2025");
    assert!(
        first.round.published_by.starts_with("region token "),
        "{}",
        first.round.published_by
    );
    let charged: Vec<(u16, String)> = first
        .round
        .charges
        .iter()
        .map(|c| (c.data_year, c.rho.to_string()))
        .collect();
    assert_eq!(charged[0], (2025, "0.6".to_string()));
    assert_eq!(
        charged.iter().map(|c| c.0).collect::<Vec<_>>(),
        [2025, 2026],
        "the year and the year herhaald beroep's window reaches into"
    );

    // Again, without new data: the same version, nothing charged.
    let (status, text) = post_round_at(&app.base_url, &region, "2025").await;
    assert_eq!(status, StatusCode::OK, "{text}");
    let again = outcome_of(&text);
    assert_eq!(again.outcome, "unchanged");
    assert_eq!(again.round, first.round);
    let report: PrivacyReport = get_json(&app, &region, "/v1/privacy").await;
    let years: Vec<(u16, usize)> = report
        .years
        .iter()
        .map(|y| (y.data_year, y.spent.len()))
        .collect();
    assert_eq!(years, [(2025, 1), (2026, 1)], "one charge per data year");
    for y in &report.years {
        assert_eq!(y.spent[0].kind, "round");
        assert_eq!(y.spent[0].subject, first.round.id.to_string());
    }
    assert_eq!(report.years[0].spent_total, "0.6");
    assert_eq!(report.years[0].cap.to_string(), "2.125");
    assert!(
        report.years[0].remaining.starts_with("1.525"),
        "{}",
        report.years[0].remaining
    );
    assert_eq!(report.mechanism, "discrete-gaussian");
    let v1: Release = get_json(&app, &muni, "/v1/releases?scope=GM0748&period=2025").await;
    assert_eq!(v1.id, Some(release_id(&first, "GM0748")));

    // New data: publishing again is a correction, a new version, charged again.
    upload_providers(&app, &out, 3..4, &regional).await;
    let second = publish_round(&app, &region, "2025").await;
    assert_eq!(second.round.version, 2);
    assert_ne!(second.round.id, first.round.id);
    // A correction spends the region's correction rho (0.15), in the same data years.
    assert_eq!(second.round.charges[0].rho.to_string(), "0.15");
    assert_eq!(
        second
            .round
            .charges
            .iter()
            .map(|c| c.data_year)
            .collect::<Vec<_>>(),
        first
            .round
            .charges
            .iter()
            .map(|c| c.data_year)
            .collect::<Vec<_>>()
    );
    for r in &second.round.releases {
        assert!(
            first.round.releases.iter().all(|f| f.id != r.id),
            "new releases"
        );
    }
    // v1 stays readable by id, as published; scope and period serve v2.
    let old: Release = get_json(&app, &muni, &format!("/v1/releases/{}", v1.id.expect("id"))).await;
    assert_eq!(old, v1, "a published version stays as published");
    let v2: Release = get_json(&app, &muni, "/v1/releases?scope=GM0748&period=2025").await;
    assert_eq!(
        (v2.id, v2.round, v2.version),
        (
            Some(release_id(&second, "GM0748")),
            Some(second.round.id),
            Some(2)
        )
    );
    let list: ReleaseList = get_json(&app, &region, "/v1/releases").await;
    let mut listed: Vec<(u32, String)> = list
        .releases
        .iter()
        .map(|r| (r.version, r.scope.to_string()))
        .filter(|(_, s)| s == "GM0748" || s == "region")
        .collect();
    listed.sort();
    assert_eq!(
        listed,
        [
            (1, "GM0748".to_string()),
            (1, "region".to_string()),
            (2, "GM0748".to_string()),
            (2, "region".to_string())
        ]
    );
    let rounds: RoundList = get_json(&app, &muni, "/v1/rounds").await;
    assert_eq!(
        rounds.rounds.iter().map(|r| r.version).collect::<Vec<_>>(),
        [2, 1],
        "newest first"
    );
    assert_eq!(
        list.releases.len(),
        2 * 10,
        "every release of both versions but the providers'"
    );
    assert!(rounds.planned.is_empty());

    // The ledger: two rounds, each charged once per data year, each with its audit entry.
    let (stored, charges) = ledger(&app, "2025").await;
    assert_eq!(stored.len(), 2);
    assert_ledger_whole(&stored, &charges);
    let years = per_year(&charges);
    // The round (0.6) and its correction (the region's correction rho, 0.15).
    assert_eq!(years[&2025], (2, 3 * NANOS / 5 + 3 * NANOS / 20));
    assert_eq!(years[&2026].0, 2);
    let audited = round_audit_entries(&app).await;
    assert_eq!(audited.len(), 2, "{audited:?}");
    for r in [&first.round, &second.round] {
        assert!(
            audited.iter().any(|s| s.contains(&r.id.to_string())),
            "{audited:?}"
        );
    }
    assert_audit_intact(&app).await;
    app.assert_logs_free_of(&[]);
}

on_both_backends!(
    a_round_is_published_once_and_corrected_as_a_new_version,
    super::published_once_then_corrected
);

/// The shipped region file says "the rest of a year is for corrections and research", so a year
/// round published once can be corrected once its data change.
#[tokio::test]
async fn a_year_round_can_be_corrected_under_the_shipped_region_file() {
    let app = app_on(Backend::Sqlite, None).await.expect("SQLite");
    let (_dir, out) = synth_exports(3, 2_000, 42);
    let regional = kwm_tests::regional_key();
    upload_providers(&app, &out, 0..2, &regional).await;
    let region = app.issue_token(Role::Region, None).await;
    publish_round(&app, &region, "2025").await;
    upload_providers(&app, &out, 2..3, &regional).await;
    let (status, text) = post_round_at(&app.base_url, &region, "2025").await;
    assert_eq!(
        status,
        StatusCode::CREATED,
        "a correction of the 2025 year round under wbw.toml: {text}"
    );
    let corrected = outcome_of(&text).round;
    assert_eq!(corrected.version, 2);
    // A correction spends the region's correction rho, not the year round's again.
    assert_eq!(corrected.charges[0].rho.to_string(), "0.15");
}

// ------------------------------------------------------------------------------------------------
// Reads never compute, publish or charge.

/// Every read of every role, concurrently: (role, path, status, problem type if any).
async fn read_everything(
    app: &TestApp,
    tokens: &[(Role, String)],
    paths: &[String],
) -> Vec<(Role, String, u16, Option<ProblemType>)> {
    let mut tasks = Vec::new();
    for (role, token) in tokens {
        for path in paths {
            let url = format!("{}{path}", app.base_url);
            let (role, token, path) = (*role, token.clone(), path.clone());
            tasks.push(tokio::spawn(async move {
                let res = reqwest::Client::new()
                    .get(url)
                    .bearer_auth(token)
                    .send()
                    .await
                    .expect("sent");
                let status = res.status().as_u16();
                let text = res.text().await.expect("body");
                let kind = serde_json::from_str::<Problem>(&text)
                    .ok()
                    .and_then(|p| p.kind());
                (role, path, status, kind)
            }));
        }
    }
    let mut out = Vec::new();
    for t in tasks {
        out.push(t.await.expect("task"));
    }
    out
}

async fn reads_never_charge(backend: Backend) {
    let Some(app) = app_on(backend, None).await else {
        return;
    };
    let (_dir, out) = synth_exports(2, 1_500, 43);
    let regional = kwm_tests::regional_key();
    let providers = upload_providers(&app, &out, 0..2, &regional).await;
    let mut tokens = vec![(Role::Provider, providers[0].token.clone())];
    tokens.push((
        Role::Municipality,
        app.issue_token(Role::Municipality, Some("GM0748")).await,
    ));
    tokens.push((Role::Region, app.issue_token(Role::Region, None).await));
    tokens.push((
        Role::Researcher,
        app.issue_token(Role::Researcher, Some("project-x")).await,
    ));
    tokens.push((Role::Admin, app.issue_token(Role::Admin, None).await));
    let region = tokens[2].1.clone();
    let mut paths: Vec<String> = [
        "/v1/releases?scope=GM0748&period=2025",
        "/v1/releases?scope=region&period=2025",
        "/v1/releases?scope=GM0748&period=2025-H1",
        "/v1/releases?period=2025",
        "/v1/releases",
        "/v1/providers/me/scores?period=2025",
        "/v1/providers/me/scores?period=2025-H2",
        "/v1/rounds",
        "/v1/privacy",
    ]
    .iter()
    .map(ToString::to_string)
    .collect();
    // Many times over.
    let once = paths.clone();
    for _ in 0..3 {
        paths.extend(once.iter().cloned());
    }
    let store = app.state.store.as_ref();

    // Before any round: the reads a role may make say `not-released`, the rest are refused.
    for (role, path, status, kind) in read_everything(&app, &tokens, &paths).await {
        let reads_figures = path.contains("period=");
        let allowed = match path.split('?').next().expect("a path") {
            "/v1/releases" => matches!(role, Role::Municipality | Role::Region),
            "/v1/providers/me/scores" => role == Role::Provider,
            "/v1/rounds" => matches!(role, Role::Municipality | Role::Region | Role::Admin),
            "/v1/privacy" => matches!(role, Role::Region | Role::Admin),
            other => panic!("{other}"),
        };
        let want = match (allowed, reads_figures) {
            (false, _) => (403, Some(ProblemType::Forbidden)),
            // A region token names the scope of a period's release.
            (true, true) if role == Role::Region && !path.contains("scope=") => {
                (400, Some(ProblemType::BadRequest))
            }
            (true, true) => (404, Some(ProblemType::NotReleased)),
            (true, false) => (200, None),
        };
        assert_eq!((status, kind), want, "{role} GET {path}");
    }
    let list: ReleaseList = get_json(&app, &region, "/v1/releases").await;
    assert!(list.releases.is_empty());
    let report: PrivacyReport = get_json(&app, &region, "/v1/privacy").await;
    assert!(report.years.is_empty());
    assert!(store.list_rounds(None).await.expect("rounds").is_empty());
    assert_eq!(
        store
            .privacy_spent(&[2024, 2025, 2026])
            .await
            .expect("spent"),
        [0, 0, 0]
    );
    assert!(store
        .list_privacy_charges()
        .await
        .expect("charges")
        .is_empty());
    assert!(round_audit_entries(&app).await.is_empty());

    // One round; then every read again, and the downloads: nothing more is charged or published.
    let round = publish_round(&app, &region, "2025").await;
    let (rounds_before, charges_before) = ledger(&app, "2025").await;
    assert_eq!(rounds_before.len(), 1);
    assert_eq!(charges_before.len(), 2);
    for id in [release_id(&round, "GM0748"), release_id(&round, "region")] {
        for ext in ["", ".json", ".csv", ".xlsx"] {
            paths.push(format!("/v1/releases/{id}{ext}"));
        }
    }
    let reads = read_everything(&app, &tokens, &paths).await;
    for (role, path, status, _) in &reads {
        assert_ne!(*status, 500, "{role} GET {path}");
        if *role == Role::Provider && path.contains("scores?period=2025-H2") {
            assert_eq!(*status, 404, "no round of 2025-H2");
        }
    }
    assert!(
        reads
            .iter()
            .filter(|(_, p, _, _)| p.contains("period=2025&") || p.ends_with("period=2025"))
            .any(|(_, _, s, _)| *s == 200),
        "the round is read"
    );
    let scores: ProviderScores = get_json(
        &app,
        &providers[0].token,
        "/v1/providers/me/scores?period=2025",
    )
    .await;
    assert_eq!(scores.benchmark.release, release_id(&round, "region"));
    let (rounds_after, charges_after) = ledger(&app, "2025").await;
    assert_eq!(rounds_after, rounds_before, "no read published a round");
    assert_eq!(charges_after, charges_before, "no read charged anything");
    assert_eq!(store.list_rounds(None).await.expect("rounds").len(), 1);
    assert_eq!(round_audit_entries(&app).await.len(), 1);
    // The half-year was never published by asking for it.
    let (status, p) = get_problem(
        &app,
        &providers[0].token,
        "/v1/providers/me/scores?period=2025-H1",
    )
    .await;
    assert_eq!(
        (status, p.kind()),
        (StatusCode::NOT_FOUND, Some(ProblemType::NotReleased))
    );
    app.assert_logs_free_of(&[]);
}

on_both_backends!(reads_never_publish_or_charge, super::reads_never_charge);

// ------------------------------------------------------------------------------------------------
// Two instances racing on one period.

async fn two_instances_publish_once(backend: Backend) {
    let Some(a) = app_on(backend, None).await else {
        return;
    };
    // Two instances, and two more: each instance serialises its own requests, so every instance
    // adds one request to the race.
    let b = a.second_instance().await;
    let more = [a.second_instance().await, a.second_instance().await];
    let bases = [&a, &b, &more[0], &more[1]].map(|app| app.base_url.clone());
    let (_dir, out) = synth_exports(2, 1_500, 44);
    let regional = kwm_tests::regional_key();
    upload_providers(&a, &out, 0..2, &regional).await;
    let region = a.issue_token(Role::Region, None).await;
    let admin = a.issue_token(Role::Admin, None).await;

    let mut tasks = Vec::new();
    for i in 0..16 {
        let base = bases[i % bases.len()].clone();
        let token = if i % 3 == 0 {
            admin.clone()
        } else {
            region.clone()
        };
        tasks.push(tokio::spawn(async move {
            post_round_at(&base, &token, "2025").await
        }));
    }
    let mut published = Vec::new();
    let mut unchanged = Vec::new();
    for t in tasks {
        let (status, text) = t.await.expect("task");
        match status {
            StatusCode::CREATED => {
                let o = outcome_of(&text);
                assert_eq!(o.outcome, "published");
                published.push(o);
            }
            StatusCode::OK => {
                let o = outcome_of(&text);
                assert_eq!(o.outcome, "unchanged");
                unchanged.push(o);
            }
            other => panic!(
                "{other}: a request racing the one that publishes must find the round unchanged: {text}"
            ),
        }
    }
    assert_eq!(published.len(), 1, "published exactly once");
    assert_eq!(
        unchanged.len(),
        15,
        "every other request finds the round published: unchanged, nothing charged"
    );
    let id = published[0].round.id;
    assert!(unchanged
        .iter()
        .all(|o| o.round.id == id && o.round.version == 1));

    let (rounds, charges) = ledger(&a, "2025").await;
    assert_eq!(rounds.len(), 1, "one round in the ledger");
    assert_eq!(rounds[0].id, id);
    assert_ledger_whole(&rounds, &charges);
    let years = per_year(&charges);
    assert_eq!(years.keys().copied().collect::<Vec<_>>(), [2025, 2026]);
    assert!(
        years.values().all(|(n, _)| *n == 1),
        "charged once: {years:?}"
    );
    assert_eq!(years[&2025].1, 3 * NANOS / 5, "the year round of 0.6");
    assert_eq!(round_audit_entries(&a).await.len(), 1);
    assert_audit_intact(&a).await;
    // Every instance serves it.
    for app in [&a, &b, &more[0], &more[1]] {
        let r: Release = get_json(app, &region, "/v1/releases?scope=region&period=2025").await;
        assert_eq!(r.round, Some(id));
    }
    drop(more);
    drop(b);
}

on_both_backends!(
    two_instances_racing_publish_a_period_once,
    super::two_instances_publish_once
);

// ------------------------------------------------------------------------------------------------
// The accountant's cap across corrections.

/// A cap of 1 per data year, no research reserve, year rounds of 0.4: two rounds of a year fit, a
/// third does not.
fn region_small_cap() -> String {
    region_edited(&[
        ("rho_per_data_year = \"1.125\"", "rho_per_data_year = \"1\""),
        ("research_reserve = \"0.125\"", ""),
        ("year_round = \"0.6\"", "year_round = \"0.4\""),
        // Corrections at the year round's rho, so that the arithmetic below is about 0.4 alone.
        ("correction_round = \"0.15\"", ""),
    ])
}

async fn cap_holds_across_corrections(backend: Backend) {
    let Some(a) = app_on(backend, Some(region_small_cap())).await else {
        return;
    };
    let b = a.second_instance().await;
    let (_dir, out) = synth_exports(5, 2_500, 45);
    let regional = kwm_tests::regional_key();
    // The first provider in small batches, so that withdrawing one is a correction.
    let first = a.register_provider(out.providers[0].agb).await;
    let mut o = upload_options(&a, &first, &out.providers[0].path, &regional);
    o.batch_size = 50;
    kwm_sdk::upload_file(&o).await.expect("upload");
    assert!(
        first
            .client
            .list_batches()
            .await
            .expect("batches")
            .batches
            .len()
            >= 3,
        "batches to withdraw"
    );
    upload_providers(&a, &out, 1..2, &regional).await;
    let region = a.issue_token(Role::Region, None).await;
    let cap = NANOS;
    let instances = [&a, &b];
    let mut next_provider = 2;
    let mut published = 0usize;
    let mut refused = 0usize;

    for step in 0..5 {
        // Both instances at once, in alternating order.
        let order = [instances[step % 2], instances[(step + 1) % 2]];
        let tasks: Vec<_> = order
            .iter()
            .map(|app| {
                let (base, token) = (app.base_url.clone(), region.clone());
                tokio::spawn(async move { post_round_at(&base, &token, "2025").await })
            })
            .collect();
        let mut statuses = Vec::new();
        for t in tasks {
            let (status, text) = t.await.expect("task");
            match status {
                StatusCode::CREATED => {
                    published += 1;
                    assert_eq!(outcome_of(&text).round.version as usize, published);
                }
                StatusCode::OK => assert_eq!(outcome_of(&text).outcome, "unchanged"),
                StatusCode::CONFLICT => {
                    let (_, p) = problem_of(status, &text);
                    assert_eq!(p.kind(), Some(ProblemType::BudgetExhausted), "{text}");
                    assert_eq!(p.partition.as_deref(), Some("2025"), "{text}");
                    assert!(p.detail.contains("2025"), "{}", p.detail);
                    refused += 1;
                }
                other => panic!("step {step}: {other}: {text}"),
            }
            statuses.push(status);
        }
        // New data is published once, or refused by both: never both published. (When one
        // publishes, the other should find it unchanged; that answer is the racing test's subject,
        // `two_instances_racing_publish_a_period_once`: here only the ledger counts.)
        assert!(
            statuses
                .iter()
                .filter(|s| **s == StatusCode::CREATED)
                .count()
                <= 1,
            "step {step}: {statuses:?}"
        );

        // Never past the cap, nothing half-stored, whatever the outcome.
        let (rounds, charges) = ledger(&a, "2025").await;
        assert_eq!(rounds.len(), published, "step {step}");
        assert_ledger_whole(&rounds, &charges);
        let years = per_year(&charges);
        let spent = a
            .state
            .store
            .privacy_spent(&[2025, 2026])
            .await
            .expect("spent");
        assert!(spent[0] <= cap && spent[1] <= cap, "step {step}: {spent:?}");
        assert_eq!(spent[0], 2 * NANOS / 5 * published as i64, "step {step}");
        assert_eq!(
            years.get(&2025).copied().unwrap_or_default(),
            (published, spent[0])
        );
        assert_eq!(
            years.get(&2026).copied().unwrap_or_default().0,
            published,
            "herhaald beroep's year is charged with every round"
        );
        assert_eq!(round_audit_entries(&a).await.len(), published);
        assert_audit_intact(&a).await;

        // The data change: a new provider's upload, or a withdrawn batch (a correction).
        if step % 2 == 0 {
            upload_providers(&a, &out, next_provider..next_provider + 1, &regional).await;
            next_provider += 1;
        } else {
            let batches = first.client.list_batches().await.expect("batches").batches;
            first
                .client
                .withdraw_batch(batches[0].batch_id)
                .await
                .expect("withdrawn");
        }
    }
    assert_eq!(
        published, 2,
        "0.4 + 0.4 fit a cap of 1, a third round does not"
    );
    assert!(
        refused >= 6,
        "both instances refused in each of the last three steps: {refused}"
    );
    // What the accountant says: the rounds' spend and what remains.
    let report: PrivacyReport = get_json(&b, &region, "/v1/privacy").await;
    let y2025 = report
        .years
        .iter()
        .find(|y| y.data_year == 2025)
        .expect("2025");
    assert_eq!(y2025.spent.len(), 2);
    assert_eq!(y2025.spent_total, "0.8");
    assert!(y2025.remaining.starts_with("0.2"), "{}", y2025.remaining);
    // The published versions stay readable.
    let r: Release = get_json(&a, &region, "/v1/releases?scope=region&period=2025").await;
    assert_eq!(r.version, Some(2));
    drop(b);
}

on_both_backends!(
    the_accountant_never_lets_a_data_year_pass_its_cap,
    super::cap_holds_across_corrections
);

// ------------------------------------------------------------------------------------------------
// Refusals.

#[tokio::test]
async fn refusals_name_their_reason() {
    let app = app_on(Backend::Sqlite, None).await.expect("SQLite");
    let (_dir, out) = synth_exports(2, 1_500, 46);
    let regional = kwm_tests::regional_key();
    let providers = upload_providers(&app, &out, 0..2, &regional).await;
    let region = app.issue_token(Role::Region, None).await;
    let muni = app.issue_token(Role::Municipality, Some("GM0748")).await;
    let researcher = app.issue_token(Role::Researcher, Some("project-x")).await;

    // A period that has not ended long enough ago: when it can be published.
    let (status, text) = post_round_at(&app.base_url, &region, "2099").await;
    let (status, p) = problem_of(status, &text);
    assert_eq!(
        (status, p.kind()),
        (StatusCode::CONFLICT, Some(ProblemType::PeriodNotFinal))
    );
    assert_eq!(p.available_from.as_deref(), Some("2100-07-01"));
    assert!(p.detail.contains("2100-07-01"), "{}", p.detail);

    // Not the publisher's role.
    for token in [&muni, &providers[0].token, &researcher] {
        let (status, text) = post_round_at(&app.base_url, token, "2025").await;
        let (status, p) = problem_of(status, &text);
        assert_eq!(
            (status, p.kind()),
            (StatusCode::FORBIDDEN, Some(ProblemType::Forbidden)),
            "{text}"
        );
    }
    let (status, _) = post_rounds_body(&app, None, serde_json::json!({"period": "2025"})).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);

    // Not a period, or a period the region does not publish rounds of.
    for body in [
        serde_json::json!({"period": "2025-M1"}),
        serde_json::json!({"period": "25"}),
        serde_json::json!({"period": 2025}),
        serde_json::json!({}),
        serde_json::json!({"period": "2025", "rho": "9"}),
        serde_json::json!({"period": "2025-Q1"}),
    ] {
        let (status, text) = post_rounds_body(&app, Some(&region), body.clone()).await;
        let (status, p) = problem_of(status, &text);
        assert_eq!(
            (status, p.kind()),
            (StatusCode::BAD_REQUEST, Some(ProblemType::BadRequest)),
            "{body}: {text}"
        );
    }

    // A period without a round: not released, and from when it can be.
    let (status, p) = get_problem(&app, &muni, "/v1/releases?scope=GM0748&period=2024").await;
    assert_eq!(
        (status, p.kind()),
        (StatusCode::NOT_FOUND, Some(ProblemType::NotReleased))
    );
    assert_eq!(p.available_from.as_deref(), Some("2025-07-01"));
    let (status, p) = get_problem(
        &app,
        &providers[0].token,
        "/v1/providers/me/scores?period=2024",
    )
    .await;
    assert_eq!(
        (status, p.kind()),
        (StatusCode::NOT_FOUND, Some(ProblemType::NotReleased))
    );

    // Nothing was published or charged by any of it.
    let store = app.state.store.as_ref();
    assert!(store.list_rounds(None).await.expect("rounds").is_empty());
    assert!(store
        .list_privacy_charges()
        .await
        .expect("charges")
        .is_empty());

    // 2024's round, published, is read; 2025 still is not released.
    publish_round(&app, &region, "2024").await;
    let r: Release = get_json(&app, &muni, "/v1/releases?scope=GM0748&period=2024").await;
    assert_eq!(r.period.to_string(), "2024");
    let years: Vec<u16> = r.privacy.charges.iter().map(|c| c.data_year).collect();
    assert_eq!(years, [2024, 2025]);
    let (status, p) = get_problem(&app, &muni, "/v1/releases?scope=GM0748&period=2025").await;
    assert_eq!(
        (status, p.kind()),
        (StatusCode::NOT_FOUND, Some(ProblemType::NotReleased))
    );
}

// ------------------------------------------------------------------------------------------------
// The calendar.

/// The shipped region file with calendar entries appended.
fn region_with_calendar(entries: &[(&str, &str)]) -> String {
    let mut text = WBW_TOML.to_string();
    for (period, after) in entries {
        text.push_str(&format!(
            "\n[[calendar]]\nperiod = \"{period}\"\npublish_after = \"{after}\"\n"
        ));
    }
    text
}

async fn calendar_publishes_once(backend: Backend) {
    // The data go in first, through an instance whose calendar has only a round still to come;
    // then two replicas start with the 2025 round due, and both check every second.
    let future = ("2026", "2027-09-01");
    let Some(a) = spawn_app_configured(backend, Some(region_with_calendar(&[future])), |c| {
        c.calendar_check_secs = 1
    })
    .await
    else {
        return;
    };
    let (_dir, out) = synth_exports(2, 1_500, 47);
    let regional = kwm_tests::regional_key();
    upload_providers(&a, &out, 0..2, &regional).await;
    let region = a.issue_token(Role::Region, None).await;
    let before: RoundList = get_json(&a, &region, "/v1/rounds").await;
    assert!(
        before.rounds.is_empty(),
        "nothing is due on the first instance"
    );
    let path = a.config.region_file.clone().expect("a region file");
    std::fs::write(
        &path,
        region_with_calendar(&[("2025", "2026-01-01"), future]),
    )
    .expect("region file");
    let b = a.second_instance().await;
    let c = a.second_instance().await;

    // Within a bounded wait, the round of 2025 is there.
    let deadline = Instant::now() + Duration::from_secs(30);
    let list = loop {
        let list: RoundList = get_json(&b, &region, "/v1/rounds").await;
        if !list.rounds.is_empty() {
            break list;
        }
        assert!(Instant::now() < deadline, "no calendar round within 30 s");
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    // Every replica's next check finds the period published and publishes nothing more (the checks
    // run here directly, concurrently, instead of waiting for the timers).
    let (da, db, dc) = (
        a.state.round_deps(),
        b.state.round_deps(),
        c.state.round_deps(),
    );
    let (ra, rb, rc) = tokio::join!(
        kwm_service::app::rounds::publish_due(&da),
        kwm_service::app::rounds::publish_due(&db),
        kwm_service::app::rounds::publish_due(&dc),
    );
    let checks = [ra, rb, rc];
    for done in checks {
        assert!(
            done.iter()
                .all(|(_, r)| matches!(r, Ok(o) if o.outcome == "unchanged")),
            "a due round published twice: {:?}",
            done.iter()
                .map(|(p, r)| (
                    p.to_string(),
                    r.as_ref()
                        .map(|o| o.outcome.clone())
                        .map_err(|e| e.to_string())
                ))
                .collect::<Vec<_>>()
        );
    }
    let again: RoundList = get_json(&c, &region, "/v1/rounds").await;
    assert_eq!(again.rounds.len(), 1, "{again:?}");
    assert_eq!(list.rounds.len(), 1);
    let round = &list.rounds[0];
    assert_eq!(round.period.to_string(), "2025");
    assert_eq!(round.version, 1);
    assert_eq!(round.published_by, "calendar");
    // The round still to come is planned, from its date.
    let planned: Vec<(String, String)> = list
        .planned
        .iter()
        .map(|p| (p.period.to_string(), p.publish_after.clone()))
        .collect();
    assert_eq!(planned, [("2026".to_string(), "2027-09-01".to_string())]);
    let (status, p) = get_problem(&b, &region, "/v1/releases?scope=region&period=2026").await;
    assert_eq!(
        (status, p.kind()),
        (StatusCode::NOT_FOUND, Some(ProblemType::NotReleased))
    );
    assert_eq!(p.available_from.as_deref(), Some("2027-09-01"));

    // Charged once, audited once, served by every instance.
    let (rounds, charges) = ledger(&a, "2025").await;
    assert_eq!(rounds.len(), 1);
    assert_ledger_whole(&rounds, &charges);
    assert!(per_year(&charges).values().all(|(n, _)| *n == 1));
    let chain = load_chain(a.state.store.as_ref()).await.expect("chain");
    let audited: Vec<_> = chain
        .iter()
        .filter(|e| e.entry.action.as_str() == "release")
        .collect();
    assert_eq!(audited.len(), 1);
    assert_eq!(audited[0].entry.actor_role, "calendar");
    for app in [&a, &b, &c] {
        let r: Release = get_json(app, &region, "/v1/releases?scope=region&period=2025").await;
        assert_eq!(r.round, Some(round.id));
    }
    drop(c);
    drop(b);
}

on_both_backends!(
    the_calendar_publishes_a_due_round_once_across_replicas,
    super::calendar_publishes_once
);

// ------------------------------------------------------------------------------------------------
// A municipality's reads and the downloads.

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

async fn municipality_reads_and_downloads(backend: Backend) {
    let Some(app) = app_on(backend, None).await else {
        return;
    };
    let (_dir, out) = synth_exports(3, 3_000, 48);
    let regional = kwm_tests::regional_key();
    upload_providers(&app, &out, 0..3, &regional).await;
    let region = app.issue_token(Role::Region, None).await;
    let muni = app.issue_token(Role::Municipality, Some("GM0748")).await;
    let round = publish_round(&app, &region, "2025").await;

    // The benchmark: the region release, by scope and by id; another municipality: no.
    let benchmark: Release = get_json(&app, &muni, "/v1/releases?scope=region&period=2025").await;
    let region_id = release_id(&round, "region");
    assert_eq!(benchmark.id, Some(region_id));
    assert_eq!(benchmark.scope, ReleaseScope::Region);
    let by_id: Release = get_json(&app, &muni, &format!("/v1/releases/{region_id}")).await;
    assert_eq!(by_id, benchmark);
    let (status, p) = get_problem(&app, &muni, "/v1/releases?scope=GM0777&period=2025").await;
    assert_eq!(
        (status, p.kind()),
        (StatusCode::FORBIDDEN, Some(ProblemType::Forbidden))
    );
    let other = release_id(&round, "GM0777");
    for ext in ["", ".csv", ".xlsx"] {
        let (status, p) = get_problem(&app, &muni, &format!("/v1/releases/{other}{ext}")).await;
        assert_eq!(
            (status, p.kind()),
            (StatusCode::NOT_FOUND, Some(ProblemType::NotFound)),
            "another municipality's release{ext}"
        );
    }
    let rounds: RoundList = get_json(&app, &muni, "/v1/rounds").await;
    assert_eq!(rounds.rounds.len(), 1);
    let (status, _) = get_problem(&app, &muni, "/v1/privacy").await;
    assert_eq!(
        status,
        StatusCode::FORBIDDEN,
        "the accountant is the region's"
    );

    for (scope, id) in [
        ("region", region_id),
        ("GM0748", release_id(&round, "GM0748")),
    ] {
        let release: Release = get_json(&app, &muni, &format!("/v1/releases/{id}")).await;
        // CSV: a header and one line per cell, in the release's order, with its figures.
        let res = get(&app, &muni, &format!("/v1/releases/{id}.csv")).await;
        assert_eq!(res.status(), StatusCode::OK);
        assert_eq!(
            res.headers()["content-disposition"],
            format!("attachment; filename=\"kwm-{scope}-2025-v1.csv\"").as_str()
        );
        // The Dutch dialect, one line per cell (checked through in `reports`).
        let records = crate::reports::dutch_csv(&res.bytes().await.expect("csv"));
        let subject = match scope {
            "region" => "Jeugdhulpregio West-Brabant West (regio)",
            _ => "Gemeente Bergen op Zoom (GM0748)",
        };
        crate::reports::check_csv(
            &records,
            subject,
            &kwm_schemas::RegionConfig::wbw(),
            &release.criteria,
            &[(subject, release.rows.iter().collect())],
        );
        // XLSX: a zip (local header first, end of central directory last) with a workbook.
        let res = get(&app, &muni, &format!("/v1/releases/{id}.xlsx")).await;
        assert_eq!(res.status(), StatusCode::OK);
        assert_eq!(
            res.headers()["content-type"],
            "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet"
        );
        let bytes = res.bytes().await.expect("xlsx");
        assert!(bytes.starts_with(b"PK\x03\x04"), "a zip");
        let tail = &bytes[bytes.len().saturating_sub(1024)..];
        assert!(contains(tail, b"PK\x05\x06"), "the zip is whole");
        assert!(contains(&bytes, b"xl/workbook.xml"));
        assert!(contains(&bytes, b"xl/worksheets/sheet1.xml"));
    }
    app.assert_logs_free_of(&[]);
}

on_both_backends!(
    a_municipality_reads_its_benchmark_and_downloads_a_round,
    super::municipality_reads_and_downloads
);

// ------------------------------------------------------------------------------------------------
// The admin commands.

/// `kwm-service admin ...` against the app's data dir and database, in this process.
async fn admin(app: &TestApp, args: &[&str]) -> anyhow::Result<()> {
    let data_dir = app.config.data_dir.display().to_string();
    let url = app.config.database_url();
    let region = app
        .config
        .region_file
        .as_ref()
        .expect("a region file")
        .display()
        .to_string();
    let mut argv = vec![
        "kwm-service",
        "--data-dir",
        &data_dir,
        "--database-url",
        &url,
        "--region",
        &region,
        "admin",
    ];
    argv.extend_from_slice(args);
    kwm_service::cli::run_from(argv).await
}

async fn admin_commands(backend: Backend) {
    let Some(app) = app_on(backend, None).await else {
        return;
    };
    let (_dir, out) = synth_exports(2, 1_500, 49);
    let regional = kwm_tests::regional_key();
    upload_providers(&app, &out, 0..2, &regional).await;
    let store = app.state.store.as_ref();

    admin(&app, &["round", "list"])
        .await
        .expect("no rounds yet");
    admin(&app, &["privacy"])
        .await
        .expect("nothing charged yet");
    let err = admin(&app, &["round", "publish", "--period", "2099"])
        .await
        .expect_err("not final");
    assert!(err.to_string().contains("2100-07-01"), "{err}");
    let err = admin(&app, &["round", "publish", "--period", "2025-M1"])
        .await
        .expect_err("not a period");
    assert!(format!("{err:#}").contains("period"), "{err:#}");
    admin(&app, &["round", "publish", "--period", "2025-Q1"])
        .await
        .expect_err("the region publishes no quarter rounds");
    assert!(store.list_rounds(None).await.expect("rounds").is_empty());

    admin(&app, &["round", "publish", "--period", "2025"])
        .await
        .expect("published");
    let (rounds, charges) = ledger(&app, "2025").await;
    assert_eq!(rounds.len(), 1);
    assert!(
        rounds[0].published_by.starts_with("admin cli "),
        "{}",
        rounds[0].published_by
    );
    assert_ledger_whole(&rounds, &charges);
    // Again: unchanged, nothing charged.
    admin(&app, &["round", "publish", "--period", "2025"])
        .await
        .expect("unchanged");
    let (again, charges_again) = ledger(&app, "2025").await;
    assert_eq!(again, rounds);
    assert_eq!(charges_again, charges);
    admin(&app, &["round", "list"]).await.expect("listed");
    admin(&app, &["privacy"]).await.expect("reported");

    // The running service serves what the command published.
    let region = app.issue_token(Role::Region, None).await;
    let r: Release = get_json(&app, &region, "/v1/releases?scope=region&period=2025").await;
    assert_eq!(r.round, Some(rounds[0].id));
    let list: RoundList = get_json(&app, &region, "/v1/rounds").await;
    assert_eq!(list.rounds.len(), 1);
    assert_eq!(list.rounds[0].published_by, rounds[0].published_by);
    let audited = load_chain(store).await.expect("chain");
    let entry = audited
        .iter()
        .find(|e| e.entry.action.as_str() == "release")
        .expect("the round is on the record");
    assert_eq!(entry.entry.actor_role, "admin");
}

on_both_backends!(
    the_admin_commands_publish_list_and_report,
    super::admin_commands
);
