//! Releases: `GET /v1/releases` (the ledger, or the release of one scope and period),
//! `GET /v1/releases/{release}` (one frozen release as JSON, `.csv` or `.xlsx`) and
//! `GET /v1/providers/me/scores` (a provider's own figures next to the regional benchmark).

use axum::extract::rejection::QueryRejection;
use axum::extract::{Path, Query, State};
use axum::http::{header, HeaderName, HeaderValue};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use kwm_schemas::problem::ProblemType;
use kwm_schemas::release::{
    ProviderScores, Release, ReleaseList, ReleaseScope, ReleaseSummary, ScoresTable,
};
use kwm_schemas::{Period, Role};
use serde::Deserialize;
use tracing::instrument;
use uuid::Uuid;

use super::{json, schema_of, Endpoint, Method, QueryParam, Reply, SchemaFn};
use crate::audit_trail::api_actor;
use crate::auth::{Caller, ProviderCaller};
use crate::error::{ApiError, AppJson};
use crate::publish::{get_or_publish, Actor, LedgerScope, Served};
use crate::startup::AppState;
use crate::store::StoredRelease;
use crate::tables;

/// Set when data changed after the served release but its budget allows no new version.
pub const NEWER_DATA_HEADER: &str = "kwm-newer-data-withheld";

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
                "With scope and period: the release of that scope and period (published on first \
                      request, frozen after). Without a period: the releases the caller may read.",
            roles: &[Role::Municipality, Role::Region],
            request: None,
            query: &[
                QueryParam {
                    name: "scope",
                    description:
                        "a CBS code (GM0748) or `region`; a municipality token may leave it out",
                    required: false,
                },
                QueryParam {
                    name: "period",
                    description: "2025, 2025-H1 or 2025-Q3; without it, the list of releases",
                    required: false,
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
                ProblemType::BudgetExhausted,
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
                      under the same release rules",
            roles: &[Role::Provider],
            request: None,
            query: &[QueryParam {
                name: "period",
                description: "2025, 2025-H1 or 2025-Q3",
                required: true,
            }],
            replies: vec![json(
                200,
                "the provider's rows and the region's",
                schema_of::<ProviderScores>,
            )],
            problems: &[ProblemType::BadRequest, ProblemType::BudgetExhausted],
            handler: || get(get_scores),
        },
    ]
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

fn with_withheld(mut res: Response, served: &Served) -> Response {
    if let Some(p) = &served.newer_data_withheld {
        if let Ok(v) = HeaderValue::from_str(p) {
            res.headers_mut()
                .insert(HeaderName::from_static(NEWER_DATA_HEADER), v);
        }
    }
    res
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
    let scope_text = match (&q.scope, caller.role) {
        (Some(s), _) => Some(s.clone()),
        (None, Role::Municipality) => caller.scope.clone(),
        (None, _) => None,
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
        let scope_key = scope.map(|s| s.to_string());
        let stored = state
            .store
            .list_releases(scope_key.as_deref(), None)
            .await?;
        let mut releases = Vec::new();
        for s in &stored {
            if s.scope != "providers" && caller.may_read_release_scope(&s.scope).is_ok() {
                releases.push(summary(s)?);
            }
        }
        return Ok(AppJson(ReleaseList { releases }).into_response());
    };
    let period = parse_period(&period_text)?;
    let scope = scope.ok_or_else(|| {
        bad_request("with a period, name the scope too: scope=GM0748 or scope=region")
    })?;
    let served = get_or_publish(
        &state,
        LedgerScope::Release(scope),
        period,
        &api_actor(&caller),
    )
    .await?;
    let res = json_bytes(served.release.json.clone());
    Ok(with_withheld(res, &served))
}

fn summary(s: &StoredRelease) -> Result<ReleaseSummary, ApiError> {
    let bad = |what: &str| ApiError::Internal(anyhow::anyhow!("ledger row {}: {what}", s.id));
    Ok(ReleaseSummary {
        id: s.id,
        scope: s.scope.parse().map_err(|_| bad("scope"))?,
        period: s.period.parse().map_err(|_| bad("period"))?,
        version: s.version,
        created_at: s.created_at,
        epsilon: s.epsilon,
    })
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
    if cached.scope == "providers" || caller.may_read_release_scope(&cached.scope).is_err() {
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
    let actor = Actor {
        role: Role::Provider.as_str().into(),
        id: agb.to_string(),
    };
    let own = get_or_publish(&state, LedgerScope::Providers, period, &actor).await?;
    let benchmark = get_or_publish(
        &state,
        LedgerScope::Release(ReleaseScope::Region),
        period,
        &actor,
    )
    .await?;
    let table = |served: &Served, rows| ScoresTable {
        release: served.release.release.id.unwrap_or_default(),
        version: served.release.version,
        rows,
    };
    let own_rows = own
        .release
        .release
        .rows
        .iter()
        .filter(|r| r.provider == Some(agb))
        .cloned()
        .collect();
    let bench_rows = benchmark
        .release
        .release
        .rows
        .iter()
        .filter(|r| r.provider.is_none())
        .cloned()
        .collect();
    let scores = ProviderScores {
        provider: agb,
        period,
        criteria: benchmark.release.release.criteria.clone(),
        own: table(&own, own_rows),
        benchmark: table(&benchmark, bench_rows),
        policy: state.region.policy.clone(),
    };
    let res = AppJson(scores).into_response();
    Ok(with_withheld(with_withheld(res, &own), &benchmark))
}
