//! Research access as a researcher uses it, over HTTP on both backends: the operator registers a
//! project with its budget, the researcher estimates a query, asks it, reads the project's log; a
//! column that is not public is refused by name; a group without data is in the answer, noised or
//! withheld, never absent; a query the project cannot pay for is refused and charges nothing.

use kwm_schemas::api::{ResearchAnswered, ResearchEstimated, ResearchLog};
use kwm_schemas::problem::{Problem, ProblemType};
use kwm_schemas::release::CellStatus;
use kwm_schemas::Role;
use kwm_service::app::operator::Desk;
use kwm_service::app::rounds::Actor;
use reqwest::StatusCode;

use crate::helpers::{get_json, spawn_app_on, synth_exports, upload_providers, Backend, TestApp};

async fn post(
    app: &TestApp,
    token: &str,
    path: &str,
    body: serde_json::Value,
) -> (StatusCode, String) {
    let res = reqwest::Client::new()
        .post(format!("{}{path}", app.base_url))
        .bearer_auth(token)
        .json(&body)
        .send()
        .await
        .expect("sent");
    let status = res.status();
    (status, res.text().await.expect("body"))
}

fn problem(text: &str) -> Problem {
    serde_json::from_str(text).unwrap_or_else(|e| panic!("not a problem ({e}): {text}"))
}

async fn researchers_route(backend: Backend) {
    let Some(app) = spawn_app_on(backend).await else {
        return;
    };
    let (_dir, out) = synth_exports(2, 3_000, 61);
    upload_providers(&app, &out, 0..2, &kwm_tests::regional_key()).await;

    // The operator's side: a project with rho 0.05 and its researcher's token.
    let actor = Actor {
        role: "admin".into(),
        id: "cli test".into(),
    };
    let desk = Desk {
        store: app.state.store.as_ref(),
        region: &app.state.region,
        actor: &actor,
        clock: app.state.clock.as_ref(),
    };
    let project = kwm_service::app::research::add_project(
        desk,
        "Wat werkt voor wie",
        "welke zorg werkt voor welke doelgroep",
        "0.05".parse().expect("rho"),
        time::macros::date!(2099 - 12 - 31),
    )
    .await
    .expect("registered");
    let token = app
        .issue_token(Role::Researcher, Some(&format!("project:{}", project.id)))
        .await;

    // The cost first: nothing is spent.
    let sql = "SELECT intensity, COUNT(*), AVG(satisfaction) FROM trajectories \
               WHERE start_year = 2025 GROUP BY intensity";
    let body = serde_json::json!({ "sql": sql, "rho": "0.02" });
    let (status, text) = post(&app, &token, "/v1/research/queries/estimate", body.clone()).await;
    assert_eq!(status, StatusCode::OK, "{text}");
    let est: ResearchEstimated = serde_json::from_str(&text).expect("an estimate");
    assert!(est.affordable);
    assert_eq!(est.project_left, "0.05");
    let groups = est.estimate.groups;
    assert!(groups >= 2, "a group per intensity: {groups}");

    // The answer: every intensity of the codebook, each cell with its status; charged 0.02.
    let (status, text) = post(&app, &token, "/v1/research/queries", body.clone()).await;
    assert_eq!(status, StatusCode::OK, "{text}");
    let answered: ResearchAnswered = serde_json::from_str(&text).expect("an answer");
    assert_eq!(
        answered.answer.rows.len() as u64,
        groups,
        "the shape the estimate said"
    );
    assert_eq!(answered.project_left, "0.03");
    assert_eq!(answered.answer.columns.len(), 2);
    for row in &answered.answer.rows {
        assert_eq!(row.cells.len(), 2);
        for cell in &row.cells {
            assert_eq!(cell.value.is_some(), cell.status == CellStatus::Published);
        }
    }
    assert!(
        answered
            .answer
            .rows
            .iter()
            .any(|r| r.cells[0].status == CellStatus::Published),
        "some count is published: the answer is of use"
    );

    // A municipality with no data at all: every group still answered, none published.
    let empty = "SELECT intensity, COUNT(*) FROM trajectories \
                 WHERE start_year = 2025 AND municipality = 'GM0879' GROUP BY intensity";
    let (status, text) = post(
        &app,
        &token,
        "/v1/research/queries",
        serde_json::json!({ "sql": empty, "rho": "0.01" }),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{text}");
    let empty: ResearchAnswered = serde_json::from_str(&text).expect("an answer");
    assert_eq!(empty.answer.rows.len() as u64, groups, "no group left out");
    assert!(empty.answer.rows.iter().all(|r| r.cells[0].value.is_none()));

    // A pseudonym is not a column: refused by name, nothing charged.
    let (status, text) = post(
        &app,
        &token,
        "/v1/research/queries",
        serde_json::json!({ "sql": "SELECT client, COUNT(*) FROM trajectories GROUP BY client" }),
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{text}");
    let p = problem(&text);
    assert!(
        p.detail.contains("`client`") && p.detail.contains("not a public column"),
        "{}",
        p.detail
    );

    // More than the project has left: refused, nothing charged.
    let (status, text) = post(
        &app,
        &token,
        "/v1/research/queries",
        serde_json::json!({ "sql": sql, "rho": "0.03" }),
    )
    .await;
    assert_eq!(status, StatusCode::CONFLICT, "{text}");
    assert_eq!(problem(&text).kind(), Some(ProblemType::BudgetExhausted));

    // The log: two answers, who asked, what they cost; the rest of the budget.
    let log: ResearchLog = get_json(&app, &token, "/v1/research/log").await;
    assert_eq!(log.project, project.id);
    assert_eq!((log.spent.as_str(), log.left.as_str()), ("0.03", "0.02"));
    assert_eq!(log.entries.len(), 2, "{log:?}");
    assert_eq!(log.entries[0].statement, sql);
    assert_eq!(log.entries[0].rho, "0.02");
    assert!(log.entries[0].actor.starts_with("researcher token"));

    // The same route from the command line: `kwm query --estimate` spends nothing, `kwm query`
    // is charged (and a refused query fails the command).
    let args = |extra: &[&str]| {
        let mut v: Vec<String> = [
            "query",
            "--sql",
            "SELECT target_group, COUNT(*) FROM trajectories WHERE start_year = 2025 GROUP BY target_group",
            "--service",
            app.base_url.as_str(),
            "--token",
            token.as_str(),
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        v.extend(extra.iter().map(|s| s.to_string()));
        v
    };
    crate::helpers::kwm(args(&["--estimate"]))
        .await
        .expect("kwm query --estimate");
    let log: ResearchLog = get_json(&app, &token, "/v1/research/log").await;
    assert_eq!(log.entries.len(), 2, "an estimate is not charged");
    crate::helpers::kwm(args(&["--rho", "0.005", "--csv"]))
        .await
        .expect("kwm query --csv");
    let log: ResearchLog = get_json(&app, &token, "/v1/research/log").await;
    assert_eq!((log.entries.len(), log.left.as_str()), (3, "0.015"));
    let refused = crate::helpers::kwm(args(&["--rho", "0.5"])).await;
    assert!(
        refused.is_err(),
        "a query the project cannot pay for fails the command"
    );

    // An extract: asked for, produced only once the operator approves it, downloaded as CSV.
    let spec = serde_json::json!({
        "spec": {
            "quasi_identifiers": ["municipality", "target_group", "age_band", "start_month"],
            "sensitive": "satisfaction",
            "other_columns": ["end_reason"],
            "k": 10, "l": 2, "max_suppressed": "0.1", "risk_threshold": "0.2",
        },
        "from_year": 2024, "to_year": 2025,
    });
    let mut weak = spec.clone();
    weak["spec"]["k"] = serde_json::json!(3);
    let (status, text) = post(&app, &token, "/v1/research/extracts", weak).await;
    assert_eq!(
        status,
        StatusCode::BAD_REQUEST,
        "below the region's k: {text}"
    );
    assert!(problem(&text).detail.contains("at least k 10"), "{text}");
    let (status, text) = post(&app, &token, "/v1/research/extracts", spec).await;
    assert_eq!(status, StatusCode::CREATED, "{text}");
    let asked: kwm_schemas::api::ExtractStatus = serde_json::from_str(&text).expect("a status");
    assert_eq!(asked.state, "requested");
    let csv_path = format!("/v1/research/extracts/{}.csv", asked.id);
    let early = crate::helpers::get(&app, &token, &csv_path).await;
    assert_eq!(
        early.status(),
        StatusCode::NOT_FOUND,
        "nothing before the approval"
    );
    let produced = kwm_service::app::research::approve_extract(desk, asked.id)
        .await
        .expect("approved and produced");
    let report = produced.report.expect("a risk report");
    assert!(report.k >= 10 && report.l >= 2, "{report:?}");
    let list: kwm_schemas::api::ExtractList = get_json(&app, &token, "/v1/research/extracts").await;
    assert_eq!(list.extracts.len(), 1);
    assert_eq!(list.extracts[0].state, "produced");
    let res = crate::helpers::get(&app, &token, &csv_path).await;
    assert_eq!(res.status(), StatusCode::OK);
    let csv = res.text().await.expect("the CSV");
    let header = csv.lines().next().expect("a header");
    assert_eq!(
        header,
        "client,municipality,target_group,start_month,age_band,end_reason,satisfaction"
    );
    assert_eq!(csv.lines().count() as u64, report.records_out + 1);
    assert!(
        !csv.split([',', '\n'])
            .any(|f| f.len() == 64 && f.bytes().all(|b| b.is_ascii_hexdigit())),
        "no pseudonym leaves"
    );

    let log: ResearchLog = get_json(&app, &token, "/v1/research/log").await;
    let kinds: Vec<&str> = log.entries.iter().map(|e| e.kind.as_str()).collect();
    assert_eq!(
        kinds,
        [
            "query",
            "query",
            "query",
            "extract-requested",
            "extract-produced"
        ],
        "every answer and the extract, in time order"
    );

    // Another role reads no project's log.
    let muni = app.issue_token(Role::Municipality, Some("GM0748")).await;
    let res = crate::helpers::get(&app, &muni, "/v1/research/log").await;
    assert_eq!(res.status(), StatusCode::FORBIDDEN);
}

#[tokio::test]
async fn a_researchers_route_on_sqlite() {
    researchers_route(Backend::Sqlite).await;
}

#[tokio::test]
async fn a_researchers_route_on_postgres() {
    researchers_route(Backend::Postgres).await;
}
