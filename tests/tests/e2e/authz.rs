//! The authorisation matrix: every operation of the served OpenAPI document, called without a token,
//! with a token the service never issued, and by every role, inside and outside the caller's scope.
//!
//! The operations come from the document, not from this file: an operation without an example in
//! [`examples`] fails the test, so a new endpoint cannot ship without its role and scope checks.

use std::collections::{BTreeMap, BTreeSet};

use kwm_schemas::envelope::SealedBatch;
use kwm_schemas::problem::{Problem, ProblemType};
use kwm_schemas::release::RoundOutcome;
use kwm_schemas::{Pseudonym, RegionConfig, Role, WireRecord};
use kwm_sdk::batch::seal_records;
use kwm_sdk::prepare::{prepare_file, PrepareContext};
use kwm_sdk::{upload_file, Pseudonymiser};
use reqwest::Method;
use uuid::Uuid;

use crate::helpers::{
    spawn_app, spawn_app_on, synth_exports, upload_options, Backend, TestApp, TestProvider,
};

/// Who makes a call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Caller {
    NoToken,
    /// A well-formed token the service never issued.
    UnknownToken,
    Role(Role),
}

/// What the roles in the operation's `x-roles` get for one call (everybody, for a public operation).
#[derive(Debug, Clone)]
enum Expect {
    All(u16),
    /// Per role: must name exactly the roles of `x-roles`, so that a change of roles is noticed.
    ByRole(Vec<(Role, u16)>),
}

/// One example request of an operation.
#[derive(Debug, Clone)]
struct Call {
    /// What the example shows, for the failure messages.
    what: &'static str,
    /// The path with its parameters filled in, and any query.
    path: String,
    body: Option<serde_json::Value>,
    expect: Expect,
}

fn call(what: &'static str, path: impl Into<String>, expect: Expect) -> Call {
    Call {
        what,
        path: path.into(),
        body: None,
        expect,
    }
}

/// The ids and tokens the examples use: two providers with uploaded data, a published round.
struct World {
    /// Tokens per role. The provider is provider A, the municipality GM0748.
    tokens: BTreeMap<Role, String>,
    a_batch: Uuid,
    b_batch: Uuid,
    /// A batch of A's that the withdrawal example may remove.
    a_withdrawable: Uuid,
    a_trajectory: String,
    b_trajectory: String,
    /// Sealed, signed batches not sent yet: A's own, and one of B's that A's token must not post.
    a_new_batch: serde_json::Value,
    b_new_batch: serde_json::Value,
    release_gm0748: Uuid,
    release_gm0777: Uuid,
    release_region: Uuid,
    /// The per-provider table behind the scores: nobody reads it whole.
    release_providers: Uuid,
}

/// The examples, by operation (`METHOD /path/{param}` as the document names it). Within one operation
/// the calls run in order, and for each call the roles allowed run last: put a call that removes data
/// after the calls that must still find it.
fn examples(w: &World) -> BTreeMap<&'static str, Vec<Call>> {
    use Expect::{All, ByRole};
    use Role::{Admin, Municipality, Region};
    let releases = |scope: &str| format!("/v1/releases?scope={scope}&period=2025");
    let mut m: BTreeMap<&'static str, Vec<Call>> = BTreeMap::new();
    m.insert("GET /healthz", vec![call("liveness", "/healthz", All(200))]);
    m.insert("GET /readyz", vec![call("readiness", "/readyz", All(200))]);
    m.insert(
        "GET /v1/openapi.json",
        vec![call("the document", "/v1/openapi.json", All(200))],
    );
    m.insert(
        "GET /v1/keys",
        vec![call("public keys", "/v1/keys", All(200))],
    );
    m.insert("GET /v1/me", vec![call("own token", "/v1/me", All(200))]);
    m.insert(
        "POST /v1/batches",
        vec![
            Call {
                what: "another provider's batch",
                path: "/v1/batches".into(),
                body: Some(w.b_new_batch.clone()),
                expect: All(403),
            },
            Call {
                what: "own batch",
                path: "/v1/batches".into(),
                body: Some(w.a_new_batch.clone()),
                expect: All(201),
            },
        ],
    );
    m.insert(
        "GET /v1/batches",
        vec![call("own batches", "/v1/batches", All(200))],
    );
    m.insert(
        "GET /v1/batches/{batch_id}",
        vec![
            call("own batch", format!("/v1/batches/{}", w.a_batch), All(200)),
            // Another provider's batch is not found: its existence is not disclosed.
            call(
                "another provider's batch",
                format!("/v1/batches/{}", w.b_batch),
                All(404),
            ),
        ],
    );
    m.insert(
        "DELETE /v1/batches/{batch_id}",
        vec![
            call(
                "another provider's batch",
                format!("/v1/batches/{}", w.b_batch),
                All(404),
            ),
            call(
                "own batch",
                format!("/v1/batches/{}", w.a_withdrawable),
                All(200),
            ),
        ],
    );
    m.insert(
        "DELETE /v1/trajectories/{trajectory}",
        vec![
            call(
                "another provider's trajectory",
                format!("/v1/trajectories/{}", w.b_trajectory),
                All(404),
            ),
            call(
                "own trajectory",
                format!("/v1/trajectories/{}", w.a_trajectory),
                All(200),
            ),
        ],
    );
    m.insert(
        "GET /v1/export",
        vec![call("own records", "/v1/export", All(200))],
    );
    m.insert(
        "GET /v1/audit",
        vec![call("the audit chain", "/v1/audit?limit=10", All(200))],
    );
    let query = serde_json::json!({
        "sql": "SELECT target_group, COUNT(*) FROM trajectories WHERE start_year = 2025 \
                GROUP BY target_group",
        "rho": "0.001",
    });
    m.insert(
        "POST /v1/research/queries",
        vec![Call {
            what: "a query of the researcher's own project",
            path: "/v1/research/queries".into(),
            body: Some(query.clone()),
            expect: All(200),
        }],
    );
    m.insert(
        "POST /v1/research/queries/estimate",
        vec![Call {
            what: "the cost of a query",
            path: "/v1/research/queries/estimate".into(),
            body: Some(query),
            expect: All(200),
        }],
    );
    m.insert(
        "POST /v1/research/extracts",
        vec![Call {
            what: "an extract of the researcher's own project",
            path: "/v1/research/extracts".into(),
            body: Some(serde_json::json!({
                "spec": {
                    "quasi_identifiers": ["municipality", "age_band"],
                    "sensitive": "satisfaction",
                    "k": 10, "l": 2, "max_suppressed": "0.05", "risk_threshold": "0.2",
                },
                "from_year": 2025, "to_year": 2025,
            })),
            expect: All(201),
        }],
    );
    m.insert(
        "GET /v1/research/extracts",
        vec![call(
            "the project's extracts",
            "/v1/research/extracts",
            All(200),
        )],
    );
    m.insert(
        "GET /v1/research/extracts/{extract}",
        vec![call(
            "an extract not produced",
            format!("/v1/research/extracts/{}.csv", uuid::Uuid::nil()),
            All(404),
        )],
    );
    m.insert(
        "GET /v1/research/log",
        vec![call("the project's log", "/v1/research/log", All(200))],
    );
    m.insert(
        "GET /v1/admin/index",
        vec![call("the index check", "/v1/admin/index", All(200))],
    );
    m.insert(
        "GET /v1/releases",
        vec![
            call("the ledger's list", "/v1/releases", All(200)),
            call("own municipality", releases("GM0748"), All(200)),
            call(
                "another municipality",
                releases("GM0777"),
                ByRole(vec![(Municipality, 403), (Region, 200)]),
            ),
            // The region release is a municipality's benchmark.
            call("the region", releases("region"), All(200)),
        ],
    );
    m.insert(
        "GET /v1/releases/{release}",
        vec![
            call(
                "own municipality",
                format!("/v1/releases/{}", w.release_gm0748),
                All(200),
            ),
            call(
                "own municipality as CSV",
                format!("/v1/releases/{}.csv", w.release_gm0748),
                All(200),
            ),
            // A release the caller may not read is not found: its existence is not disclosed.
            call(
                "another municipality",
                format!("/v1/releases/{}", w.release_gm0777),
                ByRole(vec![(Municipality, 404), (Region, 200)]),
            ),
            call(
                "the region as XLSX",
                format!("/v1/releases/{}.xlsx", w.release_region),
                All(200),
            ),
            call(
                "the per-provider table",
                format!("/v1/releases/{}", w.release_providers),
                All(404),
            ),
        ],
    );
    m.insert(
        "GET /v1/releases/{scope}/{period}",
        vec![
            call("own municipality", "/v1/releases/GM0748/2025", All(200)),
            call(
                "own municipality as XLSX",
                "/v1/releases/GM0748/2025.xlsx",
                All(200),
            ),
            // Every round publishes every municipality: naming another one is refused, not hidden.
            call(
                "another municipality as CSV",
                "/v1/releases/GM0777/2025.csv",
                ByRole(vec![(Municipality, 403), (Region, 200)]),
            ),
            call(
                "another municipality",
                "/v1/releases/GM0777/2025.json",
                ByRole(vec![(Municipality, 403), (Region, 200)]),
            ),
            call(
                "the region as CSV",
                "/v1/releases/region/2025.csv",
                All(200),
            ),
            call(
                "the per-provider table",
                "/v1/releases/providers/2025.xlsx",
                All(403),
            ),
        ],
    );
    m.insert(
        "GET /v1/providers/me/scores",
        vec![
            call(
                "own scores",
                "/v1/providers/me/scores?period=2025",
                All(200),
            ),
            call(
                "own scores as XLSX",
                "/v1/providers/me/scores?period=2025&format=xlsx",
                All(200),
            ),
            call(
                "own scores as CSV",
                "/v1/providers/me/scores?period=2025&format=csv",
                All(200),
            ),
        ],
    );
    m.insert(
        "POST /v1/rounds",
        vec![Call {
            // The world published the year; the first half-year is new: the region team (the
            // first allowed role to call) publishes it, the admin then finds it unchanged.
            what: "a half-year round",
            path: "/v1/rounds".into(),
            body: Some(serde_json::json!({ "period": "2025-H1" })),
            expect: ByRole(vec![(Region, 201), (Admin, 200)]),
        }],
    );
    m.insert(
        "GET /v1/rounds",
        vec![call("the rounds", "/v1/rounds", All(200))],
    );
    m.insert(
        "GET /v1/privacy",
        vec![call("the accountant", "/v1/privacy", All(200))],
    );
    m
}

/// One operation of the document.
#[derive(Debug)]
struct Operation {
    method: Method,
    path: String,
    roles: Vec<Role>,
}

impl Operation {
    fn key(&self) -> String {
        format!("{} {}", self.method, self.path)
    }
}

fn operations(doc: &serde_json::Value) -> Vec<Operation> {
    let paths = doc["paths"].as_object().expect("paths");
    let mut ops = Vec::new();
    for (path, item) in paths {
        for (method, op) in item.as_object().expect("a path item") {
            let method: Method = method.to_ascii_uppercase().parse().expect("a method");
            let roles = op["x-roles"]
                .as_array()
                .unwrap_or_else(|| panic!("{method} {path} has no x-roles"))
                .iter()
                .map(|r| {
                    let r = r.as_str().expect("a role name");
                    r.parse::<Role>()
                        .unwrap_or_else(|e| panic!("{method} {path}: x-roles names {r:?}: {e}"))
                })
                .collect();
            ops.push(Operation {
                method,
                path: path.clone(),
                roles,
            });
        }
    }
    // Calls that remove data run last.
    ops.sort_by_key(|o| (o.method == Method::DELETE, o.path.clone()));
    ops
}

/// The callers of one operation in the order they call: refused ones first, the allowed roles last.
fn callers(op: &Operation) -> Vec<Caller> {
    let mut out = vec![Caller::NoToken, Caller::UnknownToken];
    let (allowed, refused): (Vec<Role>, Vec<Role>) =
        Role::ALL.iter().partition(|r| op.roles.contains(r));
    out.extend(refused.into_iter().map(Caller::Role));
    out.extend(allowed.into_iter().map(Caller::Role));
    out
}

fn expected(op: &Operation, call: &Call, caller: Caller) -> u16 {
    let allowed = |role: Option<Role>| match &call.expect {
        Expect::All(s) => *s,
        Expect::ByRole(list) => role
            .and_then(|r| list.iter().find(|(x, _)| *x == r))
            .map(|(_, s)| *s)
            .unwrap_or_else(|| panic!("{}: {}: no status for {caller:?}", op.key(), call.what)),
    };
    match caller {
        _ if op.roles.is_empty() => allowed(None),
        Caller::NoToken | Caller::UnknownToken => 401,
        Caller::Role(r) if !op.roles.contains(&r) => 403,
        Caller::Role(r) => allowed(Some(r)),
    }
}

async fn world(app: &TestApp) -> World {
    let (_dir, out) = synth_exports(2, 600, 31);
    let regional = kwm_tests::regional_key();
    let mut providers: Vec<(TestProvider, Vec<WireRecord>, Uuid)> = Vec::new();
    for export in &out.providers {
        let p = app.register_provider(export.agb).await;
        let report = upload_file(&upload_options(app, &p, &export.path, &regional))
            .await
            .expect("upload");
        let batch = report.receipts.first().expect("a receipt").batch_id;
        let ctx = PrepareContext::new(RegionConfig::wbw(), Pseudonymiser::new(&regional, &p.keys));
        let records = prepare_file(&export.path, &ctx).expect("prepared").records;
        providers.push((p, records, batch));
    }
    let (b, b_records, b_batch) = providers.pop().expect("provider B");
    let (a, a_records, a_batch) = providers.pop().expect("provider A");

    let withdrawable = sealed_fresh(&a, &a_records[..2]).await;
    let a_withdrawable = withdrawable.header.batch_id;
    let stored = a
        .client
        .post_batch(&withdrawable)
        .await
        .expect("the withdrawable batch is stored");
    assert!(stored.receipt.stored > 0, "it stored rows of its own");
    let a_new_batch = serde_json::to_value(sealed_fresh(&a, &a_records[2..4]).await).expect("json");
    let b_new_batch = serde_json::to_value(sealed_fresh(&b, &b_records[..2]).await).expect("json");

    let mut tokens = BTreeMap::new();
    tokens.insert(Role::Provider, a.token.clone());
    tokens.insert(
        Role::Municipality,
        app.issue_token(Role::Municipality, Some("GM0748")).await,
    );
    tokens.insert(Role::Region, app.issue_token(Role::Region, None).await);
    // A research project, p1, for the researcher's token.
    app.state
        .store
        .put_project_recorded(
            &kwm_service::store::NewProject {
                name: "Wat werkt voor wie".into(),
                purpose: "the matrix".into(),
                rho_nanos: 100_000_000,
                expires_on: time::macros::date!(2099 - 12 - 31),
                created_at: time::OffsetDateTime::now_utc(),
            },
            &|p| kwm_service::audit::NewAuditEntry {
                at: time::OffsetDateTime::now_utc(),
                actor_role: "admin".into(),
                actor_id: "test".into(),
                action: kwm_service::audit::AuditAction::ProjectRegistered,
                subject: format!("project {}", p.id),
                provider: None,
                details_digest: [0; 32],
            },
        )
        .await
        .expect("project p1");
    tokens.insert(
        Role::Researcher,
        app.issue_token(Role::Researcher, Some("project:p1")).await,
    );
    tokens.insert(Role::Admin, app.issue_token(Role::Admin, None).await);
    assert_eq!(tokens.len(), Role::ALL.len(), "a token for every role");

    // The regional team publishes the round whose releases the examples read.
    let res = reqwest::Client::new()
        .post(format!("{}/v1/rounds", app.base_url))
        .bearer_auth(&tokens[&Role::Region])
        .json(&serde_json::json!({ "period": "2025" }))
        .send()
        .await
        .expect("request");
    assert_eq!(res.status(), 201, "publishing the round of 2025");
    let round: RoundOutcome = res.json().await.expect("the round");
    let release_of = |scope: &str| {
        round
            .round
            .releases
            .iter()
            .find(|r| r.scope.to_string() == scope)
            .unwrap_or_else(|| panic!("the round has a release of {scope}"))
            .id
    };

    World {
        tokens,
        a_batch,
        b_batch,
        a_withdrawable,
        a_trajectory: hex(&a_records[5].trajectory),
        b_trajectory: hex(&b_records[0].trajectory),
        a_new_batch,
        b_new_batch,
        release_gm0748: release_of("GM0748"),
        release_gm0777: release_of("GM0777"),
        release_region: release_of("region"),
        release_providers: release_of("providers"),
    }
}

/// A sealed, signed batch of `records` under fresh trajectory pseudonyms: rows the service has not
/// stored yet.
async fn sealed_fresh(p: &TestProvider, records: &[WireRecord]) -> SealedBatch {
    let records: Vec<WireRecord> = records
        .iter()
        .map(|r| {
            let mut r = r.clone();
            let mut t = [0u8; 32];
            t[..16].copy_from_slice(Uuid::new_v4().as_bytes());
            t[16..].copy_from_slice(Uuid::new_v4().as_bytes());
            r.trajectory = Pseudonym(t);
            r
        })
        .collect();
    let (_, key) = p.client.active_key().await.expect("keys");
    seal_records(
        &records,
        p.agb,
        None,
        &key,
        p.keys.signer(),
        &kwm_tests::regional_key().check_value(),
        time::OffsetDateTime::now_utc(),
    )
    .expect("sealed")
}

/// A trajectory pseudonym as `DELETE /v1/trajectories/{trajectory}` names it.
fn hex(p: &Pseudonym) -> String {
    p.as_bytes().iter().map(|b| format!("{b:02x}")).collect()
}

async fn matrix(app: TestApp) {
    let doc: serde_json::Value = reqwest::get(format!("{}/v1/openapi.json", app.base_url))
        .await
        .expect("the document")
        .json()
        .await
        .expect("json");
    let ops = operations(&doc);
    assert!(ops.len() >= 10, "the document lists the API: {ops:?}");
    let w = world(&app).await;
    let table = examples(&w);

    // The document decides what is checked: every operation needs an example, and every example an
    // operation (a stale one means the API changed under the test).
    let in_doc: BTreeSet<String> = ops.iter().map(Operation::key).collect();
    let missing: Vec<&String> = in_doc
        .iter()
        .filter(|k| !table.contains_key(k.as_str()))
        .collect();
    assert!(
        missing.is_empty(),
        "operations of /v1/openapi.json without an example in the authorisation matrix \
         (add them to `examples` in tests/tests/e2e/authz.rs): {missing:?}"
    );
    let stale: Vec<&&str> = table.keys().filter(|k| !in_doc.contains(**k)).collect();
    assert!(
        stale.is_empty(),
        "examples of operations the document does not list: {stale:?}"
    );

    let c = reqwest::Client::new();
    let mut failures = Vec::new();
    let mut checked = 0;
    for op in &ops {
        for call in &table[op.key().as_str()] {
            if let Expect::ByRole(list) = &call.expect {
                let named: BTreeSet<Role> = list.iter().map(|(r, _)| *r).collect();
                let allowed: BTreeSet<Role> = op.roles.iter().copied().collect();
                assert_eq!(
                    named,
                    allowed,
                    "{}: {}: the roles of x-roles",
                    op.key(),
                    call.what
                );
            }
            for caller in callers(op) {
                let want = expected(op, call, caller);
                let mut req =
                    c.request(op.method.clone(), format!("{}{}", app.base_url, call.path));
                match caller {
                    Caller::NoToken => {}
                    Caller::UnknownToken => req = req.bearer_auth("kwm_never-issued-token"),
                    Caller::Role(r) => req = req.bearer_auth(&w.tokens[&r]),
                }
                if let Some(body) = &call.body {
                    req = req.json(body);
                }
                let res = req.send().await.expect("request sent");
                checked += 1;
                let got = res.status().as_u16();
                let ct = res
                    .headers()
                    .get("content-type")
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or_default()
                    .to_string();
                let challenge = res
                    .headers()
                    .get("www-authenticate")
                    .and_then(|v| v.to_str().ok())
                    .map(str::to_string);
                let body = res.text().await.unwrap_or_default();
                let label = format!("{} ({}) as {caller:?}", op.key(), call.what);
                if got != want {
                    failures.push(format!("{label}: {got}, expected {want}: {body:.200}"));
                    continue;
                }
                // RFC 6750: every 401 challenges for a bearer token, naming invalid_token only when
                // one was sent.
                if got == 401 {
                    let ok = match (caller, challenge.as_deref()) {
                        (Caller::NoToken, Some(c)) => c == r#"Bearer realm="kwm""#,
                        (_, Some(c)) => {
                            c.starts_with(r#"Bearer realm="kwm", error="invalid_token""#)
                        }
                        (_, None) => false,
                    };
                    if !ok {
                        failures.push(format!("{label}: 401 with WWW-Authenticate {challenge:?}"));
                    }
                }
                let problem = match want {
                    401 => Some(ProblemType::Unauthenticated),
                    403 => Some(ProblemType::Forbidden),
                    404 => Some(ProblemType::NotFound),
                    _ => None,
                };
                match problem {
                    Some(kind) => {
                        let p: Option<Problem> = serde_json::from_str(&body).ok();
                        if ct != "application/problem+json"
                            || p.and_then(|p| p.kind()) != Some(kind)
                        {
                            failures.push(format!(
                                "{label}: not a {} problem: {ct} {body:.200}",
                                kind.slug()
                            ));
                        }
                    }
                    None if ct.starts_with("application/problem+json") => {
                        failures.push(format!("{label}: success with a problem document"));
                    }
                    None => {}
                }
            }
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {checked} calls answered otherwise:\n{}",
        failures.len(),
        failures.join("\n")
    );
    app.assert_logs_free_of(&[w.a_trajectory.clone(), w.b_trajectory.clone()]);
}

#[tokio::test]
async fn every_operation_refuses_the_wrong_role_and_scope_on_sqlite() {
    matrix(spawn_app().await).await;
}

#[tokio::test]
async fn every_operation_refuses_the_wrong_role_and_scope_on_postgres() {
    if let Some(app) = spawn_app_on(Backend::Postgres).await {
        matrix(app).await;
    }
}
