//! Releases and rounds: `GET /v1/releases` (the newest release of a scope and period, or the list the
//! caller may read), `GET /v1/releases/{release}` (one frozen release as JSON, `.csv` or `.xlsx`),
//! `GET /v1/providers/me/scores` (a provider's own figures next to the regional benchmark),
//! `POST /v1/rounds` and `GET /v1/rounds` (publishing and listing release rounds) and
//! `GET /v1/privacy` (the accountant). Only `POST /v1/rounds` computes or charges anything.

use axum::extract::rejection::QueryRejection;
use axum::extract::{Path, Query, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use kwm_schemas::problem::ProblemType;
use kwm_schemas::release::{
    PrivacyReport, ProviderScores, PublishRound, Release, ReleaseList, ReleaseScope,
    ReleaseSummary, RoundList, RoundOutcome, ScoresTable,
};
use kwm_schemas::{Period, Role};
use serde::Deserialize;
use tracing::instrument;
use uuid::Uuid;

use super::{json, schema_of, Endpoint, Method, QueryParam, Reply, SchemaFn};
use crate::audit_trail::api_actor;
use crate::auth::{Caller, ProviderCaller};
use crate::error::{ApiError, AppJson};
use crate::rounds::{self, latest_release, publish_round};
use crate::startup::AppState;
use crate::tables;

fn release_body(g: &mut schemars::SchemaGenerator) -> schemars::Schema {
    schema_of::<Release>(g)
}

pub fn endpoints() -> Vec<Endpoint> {
    const RELEASE: SchemaFn = release_body;
    vec![
        Endpoint {
            method: Method::Get,
            path: "/v1/releases",
            operation_id: "getReleases",
            summary:
                "With scope and period: the release of that scope in the newest version of the \
                      period's round. Without a period: the releases the caller may read. Never \
                      publishes or charges anything.",
            roles: &[Role::Municipality, Role::Region],
            request: None,
            query: &[
                QueryParam {
                    name: "scope",
                    description:
                        "a CBS code (GM0748) or `region`; a municipality token may leave it out \
                         for its own",
                    required: false,
                    schema: schema_of::<ReleaseScope>,
                },
                QueryParam {
                    name: "period",
                    description: "2025, 2025-H1 or 2025-Q3; without it, the list of releases",
                    required: false,
                    schema: schema_of::<Period>,
                },
            ],
            replies: vec![
                json(200, "the release (scope and period given)", RELEASE),
                json(
                    200,
                    "the ledger's releases (no period given)",
                    schema_of::<ReleaseList>,
                ),
            ],
            problems: &[
                ProblemType::BadRequest,
                ProblemType::NotFound,
                ProblemType::NotReleased,
            ],
            handler: || get(get_releases),
        },
        Endpoint {
            method: Method::Get,
            path: "/v1/releases/{release}",
            operation_id: "getRelease",
            summary:
                "One frozen release by id: `{id}` or `{id}.json` as JSON, `{id}.csv` one line per \
                      cell, `{id}.xlsx` a workbook of target groups by criteria",
            roles: &[Role::Municipality, Role::Region],
            request: None,
            query: &[],
            replies: vec![
                json(200, "the release", RELEASE),
                Reply {
                    status: 200,
                    description: "the release as CSV",
                    body: None,
                    media_type: "text/csv",
                },
                Reply {
                    status: 200,
                    description: "the release as a workbook",
                    body: None,
                    media_type: XLSX,
                },
            ],
            problems: &[ProblemType::BadRequest, ProblemType::NotFound],
            handler: || get(get_release),
        },
        Endpoint {
            method: Method::Get,
            path: "/v1/providers/me/scores",
            operation_id: "getProviderScores",
            summary:
                "The calling provider's own figures for a period next to the regional benchmark, \
                      from the period's newest round (never publishes or charges)",
            roles: &[Role::Provider],
            request: None,
            query: &[QueryParam {
                name: "period",
                description: "2025, 2025-H1 or 2025-Q3",
                required: true,
                schema: schema_of::<Period>,
            }],
            replies: vec![json(
                200,
                "the provider's rows and the region's",
                schema_of::<ProviderScores>,
            )],
            problems: &[ProblemType::BadRequest, ProblemType::NotReleased],
            handler: || get(get_scores),
        },
        Endpoint {
            method: Method::Post,
            path: "/v1/rounds",
            operation_id: "publishRound",
            summary:
                "Publishes the round of an ended period for the whole region (every municipality, \
                      the region, the per-provider table) from one noisy measurement, charged once \
                      per data year; again later, a correction (a new version, charged again) when \
                      the data changed",
            roles: &[Role::Region, Role::Admin],
            request: Some(schema_of::<PublishRound>),
            query: &[],
            replies: vec![
                json(201, "published: a new version", schema_of::<RoundOutcome>),
                json(
                    200,
                    "unchanged: the data have not changed since the newest version; nothing charged",
                    schema_of::<RoundOutcome>,
                ),
            ],
            problems: &[
                ProblemType::BadRequest,
                ProblemType::PeriodNotFinal,
                ProblemType::BudgetExhausted,
            ],
            handler: || post(post_round),
        },
        Endpoint {
            method: Method::Get,
            path: "/v1/rounds",
            operation_id: "listRounds",
            summary:
                "Every round with its versions, what it charged to each data year and who \
                      published it, and the calendar's rounds still to come",
            roles: &[Role::Municipality, Role::Region, Role::Admin],
            request: None,
            query: &[],
            replies: vec![json(200, "the rounds, newest first", schema_of::<RoundList>)],
            problems: &[],
            handler: || get(get_rounds),
        },
        Endpoint {
            method: Method::Get,
            path: "/v1/privacy",
            operation_id: "getPrivacy",
            summary:
                "The accountant: per data year the cap, what each round spent and what remains, \
                      with the guarantee in words",
            roles: &[Role::Region, Role::Admin],
            request: None,
            query: &[],
            replies: vec![json(200, "the budget per data year", schema_of::<PrivacyReport>)],
            problems: &[],
            handler: || get(get_privacy),
        },
    ]
}

/// The `{release}` path parameter: a release id, optionally with the format as an extension.
pub fn release_name_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
    schemars::json_schema!({
        "type": "string",
        "pattern": "^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}(\\.(json|csv|xlsx))?$",
        "description": "a release id (UUID), optionally followed by .json, .csv or .xlsx"
    })
}

const XLSX: &str = "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet";

#[derive(Debug, Deserialize)]
struct ReleaseQuery {
    scope: Option<String>,
    period: Option<String>,
}

fn bad_request(detail: impl Into<String>) -> ApiError {
    ApiError::new(ProblemType::BadRequest, detail)
}

fn parse_period(text: &str) -> Result<Period, ApiError> {
    text.parse()
        .map_err(|e: kwm_schemas::ParseError| bad_request(format!("period {text:?}: {e}")))
}

/// A JSON body serialised before (a frozen release).
fn json_bytes(body: axum::body::Bytes) -> Response {
    (
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        )],
        body,
    )
        .into_response()
}

#[instrument(skip_all, fields(role = %caller.role))]
async fn get_releases(
    State(state): State<AppState>,
    caller: Caller,
    query: Result<Query<ReleaseQuery>, QueryRejection>,
) -> Result<Response, ApiError> {
    caller.require(&[Role::Municipality, Role::Region])?;
    let Query(q) = query.map_err(|e| bad_request(format!("query string: {e}")))?;
    // A municipality token may leave its own scope out.
    // With a period, a municipality token may leave its own scope out; without one, the list shows
    // everything the caller may read (its own municipality and the region).
    let scope_text = match (&q.scope, caller.role, &q.period) {
        (Some(s), _, _) => Some(s.clone()),
        (None, Role::Municipality, Some(_)) => caller.scope.clone(),
        (None, _, _) => None,
    };
    let scope = scope_text
        .as_deref()
        .map(|s| {
            s.parse::<ReleaseScope>().map_err(|e| {
                bad_request(format!(
                    "scope {s:?}: {e} (a CBS code such as GM0748, or region)"
                ))
            })
        })
        .transpose()?;
    if let Some(s) = scope {
        caller.may_read_release_scope(&s.to_string())?;
    }
    let Some(period_text) = q.period else {
        let rounds = state.store.list_rounds(None).await?;
        let mut releases = Vec::new();
        for r in &rounds {
            let summary = rounds::round_summary(r)?;
            for rel in &summary.releases {
                let key = rel.scope.to_string();
                if scope.is_some_and(|s| s != rel.scope) {
                    continue;
                }
                if caller.may_read_release_scope(&key).is_ok() {
                    releases.push(ReleaseSummary {
                        id: rel.id,
                        round: summary.id,
                        scope: rel.scope,
                        period: summary.period,
                        version: summary.version,
                        created_at: summary.created_at,
                    });
                }
            }
        }
        return Ok(AppJson(ReleaseList { releases }).into_response());
    };
    let period = parse_period(&period_text)?;
    let scope = scope.ok_or_else(|| {
        bad_request("with a period, name the scope too: scope=GM0748 or scope=region")
    })?;
    let cached = latest_release(
        state.store.as_ref(),
        &state.releases,
        &state.region,
        scope,
        period,
    )
    .await?;
    Ok(json_bytes(cached.json.clone()))
}

#[instrument(skip_all, fields(role = %caller.role))]
async fn get_release(
    State(state): State<AppState>,
    caller: Caller,
    Path(release): Path<String>,
) -> Result<Response, ApiError> {
    caller.require(&[Role::Municipality, Role::Region])?;
    let (id_text, format) = match release.rsplit_once('.') {
        Some((id, ext)) => (id, ext.to_ascii_lowercase()),
        None => (release.as_str(), "json".to_string()),
    };
    let id: Uuid = id_text
        .parse()
        .map_err(|_| bad_request("a release is named by its id, a UUID"))?;
    let not_found = || ApiError::not_found(format!("no release {id}"));
    let cached = state
        .releases
        .get(state.store.as_ref(), id)
        .await?
        .ok_or_else(not_found)?;
    // A release the caller may not read is not found: its existence is not disclosed. The
    // per-provider table is nobody's to read whole.
    if caller.may_read_release_scope(&cached.scope).is_err() {
        return Err(not_found());
    }
    let r = &cached.release;
    let name = format!("kwm-{}-{}-v{}", r.scope, r.period, cached.version);
    let attachment = |ext: &str| {
        HeaderValue::from_str(&format!("attachment; filename=\"{name}.{ext}\""))
            .unwrap_or_else(|_| HeaderValue::from_static("attachment"))
    };
    Ok(match format.as_str() {
        "json" => json_bytes(cached.json.clone()),
        "csv" => (
            [
                (
                    header::CONTENT_TYPE,
                    HeaderValue::from_static("text/csv; charset=utf-8"),
                ),
                (header::CONTENT_DISPOSITION, attachment("csv")),
            ],
            tables::to_csv(r)?,
        )
            .into_response(),
        "xlsx" => (
            [
                (header::CONTENT_TYPE, HeaderValue::from_static(XLSX)),
                (header::CONTENT_DISPOSITION, attachment("xlsx")),
            ],
            tables::to_xlsx(r)?,
        )
            .into_response(),
        other => {
            return Err(bad_request(format!(
                "unknown format .{other}: use .json, .csv or .xlsx"
            )))
        }
    })
}

#[derive(Debug, Deserialize)]
struct ScoresQuery {
    period: Option<String>,
}

#[instrument(skip_all, fields(provider = %provider.0))]
async fn get_scores(
    State(state): State<AppState>,
    provider: ProviderCaller,
    query: Result<Query<ScoresQuery>, QueryRejection>,
) -> Result<Response, ApiError> {
    let Query(q) = query.map_err(|e| bad_request(format!("query string: {e}")))?;
    let period = parse_period(
        q.period
            .as_deref()
            .ok_or_else(|| bad_request("name the period: period=2025, 2025-H1 or 2025-Q3"))?,
    )?;
    let agb = provider.0;
    let (store, cache, region) = (state.store.as_ref(), &state.releases, &state.region);
    let own = latest_release(store, cache, region, ReleaseScope::Providers, period).await?;
    let benchmark = latest_release(store, cache, region, ReleaseScope::Region, period).await?;
    let table = |r: &Release, version, rows| ScoresTable {
        release: r.id.unwrap_or_default(),
        version,
        rows,
    };
    let own_rows = own
        .release
        .rows
        .iter()
        .filter(|r| r.provider == Some(agb))
        .cloned()
        .collect();
    let scores = ProviderScores {
        provider: agb,
        period,
        criteria: benchmark.release.criteria.clone(),
        own: table(&own.release, own.version, own_rows),
        benchmark: table(
            &benchmark.release,
            benchmark.version,
            benchmark.release.rows.clone(),
        ),
        policy: benchmark.release.policy.clone(),
        privacy: benchmark.release.privacy.clone(),
    };
    Ok(AppJson(scores).into_response())
}

#[instrument(skip_all, fields(role = %caller.role))]
async fn post_round(
    State(state): State<AppState>,
    caller: Caller,
    AppJson(req): AppJson<PublishRound>,
) -> Result<Response, ApiError> {
    caller.require(&[Role::Region, Role::Admin])?;
    let outcome =
        publish_round(&state.round_deps(), req.period, &api_actor(&caller), false).await?;
    let status = if outcome.outcome == "published" {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    Ok((status, AppJson(outcome)).into_response())
}

#[instrument(skip_all, fields(role = %caller.role))]
async fn get_rounds(State(state): State<AppState>, caller: Caller) -> Result<Response, ApiError> {
    caller.require(&[Role::Municipality, Role::Region, Role::Admin])?;
    let (rounds, planned) = rounds::list_rounds(state.store.as_ref(), &state.region).await?;
    Ok(AppJson(RoundList { rounds, planned }).into_response())
}

#[instrument(skip_all, fields(role = %caller.role))]
async fn get_privacy(State(state): State<AppState>, caller: Caller) -> Result<Response, ApiError> {
    caller.require(&[Role::Region, Role::Admin])?;
    let report = rounds::privacy_report(state.store.as_ref(), &state.region).await?;
    Ok(AppJson(report).into_response())
}
