//! Releases and rounds: `GET /v1/releases` (the newest release of a scope and period, or the list the
//! caller may read), `GET /v1/releases/{release}` (one frozen release as JSON, `.csv` or `.xlsx`),
//! `GET /v1/releases/{scope}/{period}` (the newest release of a scope and period by name, as
//! `GM0748/2025.xlsx`), `GET /v1/providers/me/scores` (a provider's own figures next to the regional
//! benchmark, as JSON, CSV or XLSX),
//! `POST /v1/rounds` and `GET /v1/rounds` (publishing and listing release rounds) and
//! `GET /v1/privacy` (the accountant). Only `POST /v1/rounds` computes or charges anything.

use axum::extract::rejection::QueryRejection;
use axum::extract::{Path, Query, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use kwm_schemas::problem::ProblemType;
use kwm_schemas::release::{
    PrivacyReport, ProviderScores, PublishRound, Release, ReleaseList, ReleaseScope, RoundList,
    RoundOutcome, ScoresTable,
};
use kwm_schemas::{Period, Role};
use serde::Deserialize;
use tracing::instrument;
use uuid::Uuid;

use super::{json, schema_of, Endpoint, Method, QueryParam, Reply, SchemaFn};
use crate::app::access::Caller;
use crate::app::audit_trail::api_actor;
use crate::app::error::ApiError;
use crate::app::rounds::{self, latest_release, publish_round, CachedRelease};
use crate::http::auth::ProviderCaller;
use crate::http::problem::AppJson;
use crate::http::startup::AppState;
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
            replies: download_replies("the release", RELEASE),
            problems: &[ProblemType::BadRequest, ProblemType::NotFound],
            handler: || get(get_release),
        },
        Endpoint {
            method: Method::Get,
            path: "/v1/releases/{scope}/{period}",
            operation_id: "getReleaseByName",
            summary:
                "The release of a scope in the newest version of the period's round, addressed by \
                      name without looking up an id: `GM0748/2025.xlsx`, `region/2025-H1.csv`, \
                      `GM0748/2025` or `.json` as JSON",
            roles: &[Role::Municipality, Role::Region],
            request: None,
            query: &[],
            replies: download_replies(
                "the release",
                RELEASE,
            ),
            problems: &[
                ProblemType::BadRequest,
                ProblemType::NotFound,
                ProblemType::NotReleased,
            ],
            handler: || get(get_release_by_name),
        },
        Endpoint {
            method: Method::Get,
            path: "/v1/providers/me/scores",
            operation_id: "getProviderScores",
            summary:
                "The calling provider's own figures for a period next to the regional benchmark, \
                      from the period's newest round (never publishes or charges), as JSON, CSV \
                      or XLSX",
            roles: &[Role::Provider],
            request: None,
            query: &[
                QueryParam {
                    name: "period",
                    description: "2025, 2025-H1 or 2025-Q3",
                    required: true,
                    schema: schema_of::<Period>,
                },
                QueryParam {
                    name: "format",
                    description:
                        "`json` (default), `csv` (Dutch: `;` and decimal commas) or `xlsx` (a \
                         workbook with the figures, a legend and the round)",
                    required: false,
                    schema: format_schema,
                },
            ],
            replies: download_replies(
                "the provider's rows and the region's",
                schema_of::<ProviderScores>,
            ),
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

/// The `{scope}` path parameter: a municipality code or `region`.
pub fn scope_name_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
    schemars::json_schema!({
        "type": "string",
        "pattern": "^(GM[0-9]{4}|region)$",
        "description": "a municipality's CBS code (GM0748) or `region`"
    })
}

/// The `{period}` path parameter: a period, optionally with the format as an extension.
pub fn period_name_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
    schemars::json_schema!({
        "type": "string",
        "pattern": "^(19[0-9]{2}|2[0-9]{3})(-(H[12]|Q[1-4]))?(\\.(json|csv|xlsx))?$",
        "description": "a period (2025, 2025-H1, 2025-Q3), optionally followed by .json, .csv or .xlsx"
    })
}

fn format_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
    schemars::json_schema!({ "type": "string", "enum": ["json", "csv", "xlsx"], "pattern": "^(json|csv|xlsx)$" })
}

/// The answers of a download: JSON, the Dutch CSV, the workbook.
fn download_replies(what: &'static str, body: SchemaFn) -> Vec<Reply> {
    vec![
        json(200, what, body),
        Reply {
            status: 200,
            description: "as CSV in the Dutch dialect (UTF-8 with BOM, `;`, decimal commas)",
            body: None,
            media_type: "text/csv",
        },
        Reply {
            status: 200,
            description: "as a workbook: figures with intervals and n, a legend, the round",
            body: None,
            media_type: XLSX,
        },
    ]
}

/// The formats of a download.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Format {
    Json,
    Csv,
    Xlsx,
}

impl Format {
    pub(crate) fn parse(ext: &str) -> Result<Self, ApiError> {
        match ext.to_ascii_lowercase().as_str() {
            "json" => Ok(Self::Json),
            "csv" => Ok(Self::Csv),
            "xlsx" => Ok(Self::Xlsx),
            other => Err(bad_request(format!(
                "unknown format {other:?}: use json, csv or xlsx"
            ))),
        }
    }

    /// `NAME` or `NAME.EXT`: the name and the format (JSON without an extension).
    pub(crate) fn split(text: &str) -> Result<(&str, Self), ApiError> {
        match text.rsplit_once('.') {
            Some((name, ext)) => Ok((name, Self::parse(ext)?)),
            None => Ok((text, Self::Json)),
        }
    }
}

/// A report as CSV or XLSX, named for download. JSON is the caller's own (a frozen body).
pub(crate) fn download(report: &tables::Report<'_>, format: Format) -> Result<Response, ApiError> {
    let (content_type, ext, body) = match format {
        Format::Csv => ("text/csv; charset=utf-8", "csv", tables::to_csv(report)?),
        Format::Xlsx => (XLSX, "xlsx", tables::to_xlsx(report)?),
        Format::Json => {
            return Err(ApiError::Internal(anyhow::anyhow!(
                "JSON is not rendered from a report"
            )))
        }
    };
    let disposition = HeaderValue::from_str(&format!(
        "attachment; filename=\"{}.{ext}\"",
        report.file_stem
    ))
    .unwrap_or_else(|_| HeaderValue::from_static("attachment"));
    Ok((
        [
            (header::CONTENT_TYPE, HeaderValue::from_static(content_type)),
            (header::CONTENT_DISPOSITION, disposition),
        ],
        body,
    )
        .into_response())
}

/// A frozen release in the format asked for.
fn release_download(
    region: &kwm_schemas::RegionConfig,
    cached: &CachedRelease,
    format: Format,
) -> Result<Response, ApiError> {
    match format {
        Format::Json => Ok(json_bytes(cached.json.clone())),
        other => download(&tables::Report::of_release(region, &cached.release), other),
    }
}

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
        let releases = rounds::releases_for(state.store.as_ref(), &caller, scope).await?;
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
    let (id_text, format) = Format::split(&release)?;
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
    release_download(&state.region, &cached, format)
}

#[derive(Debug, Deserialize)]
struct ReleaseName {
    scope: String,
    period: String,
}

/// `GET /v1/releases/{scope}/{period}[.ext]`: what `?scope=&period=` answers, in any format. Every
/// round publishes every municipality, so naming another municipality is refused (403) rather than
/// hidden.
#[instrument(skip_all, fields(role = %caller.role))]
async fn get_release_by_name(
    State(state): State<AppState>,
    caller: Caller,
    Path(name): Path<ReleaseName>,
) -> Result<Response, ApiError> {
    caller.require(&[Role::Municipality, Role::Region])?;
    let scope: ReleaseScope = name.scope.parse().map_err(|e| {
        bad_request(format!(
            "scope {:?}: {e} (a CBS code such as GM0748, or region)",
            name.scope
        ))
    })?;
    caller.may_read_release_scope(&scope.to_string())?;
    let (period_text, format) = Format::split(&name.period)?;
    let period = parse_period(period_text)?;
    let cached = latest_release(
        state.store.as_ref(),
        &state.releases,
        &state.region,
        scope,
        period,
    )
    .await?;
    release_download(&state.region, &cached, format)
}

#[derive(Debug, Deserialize)]
struct ScoresQuery {
    period: Option<String>,
    format: Option<String>,
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
    let format = q
        .format
        .as_deref()
        .map(Format::parse)
        .transpose()?
        .unwrap_or(Format::Json);
    let agb = provider.0;
    let (store, cache, region) = (state.store.as_ref(), &state.releases, &state.region);
    let own = latest_release(store, cache, region, ReleaseScope::Providers, period).await?;
    let benchmark = latest_release(store, cache, region, ReleaseScope::Region, period).await?;
    if format != Format::Json {
        let report = tables::Report::of_scores(region, agb, &own.release, &benchmark.release);
        return download(&report, format);
    }
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
