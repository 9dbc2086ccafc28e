//! Research access over HTTP, for a project's researchers: `POST /v1/research/queries` (an answer,
//! charged to the project), `POST /v1/research/queries/estimate` (its cost and interval widths,
//! nothing spent) and `GET /v1/research/log`. The use cases are `app::research`'s.

use axum::extract::{Path, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use kwm_schemas::api::{
    ExtractList, ExtractRequest, ExtractStatus, ResearchAnswered, ResearchEstimated, ResearchLog,
    ResearchQueryRequest,
};
use kwm_schemas::problem::ProblemType;
use kwm_schemas::Role;
use tracing::instrument;

use super::{json, schema_of, Endpoint, Method, Reply};
use crate::app::access::Caller;
use crate::app::error::ApiError;
use crate::app::research;
use crate::http::problem::AppJson;
use crate::http::startup::AppState;

pub fn endpoints() -> Vec<Endpoint> {
    vec![
        Endpoint {
            method: Method::Post,
            path: "/v1/research/queries",
            operation_id: "postResearchQuery",
            summary: "Answer a query of the calling researcher's project, in the service's SQL \
                      dialect over the virtual table `trajectories`: every group of the codebook \
                      values asked for, each value with its 95% interval and status, charged to the \
                      project",
            roles: &[Role::Researcher],
            request: Some(schema_of::<ResearchQueryRequest>),
            query: &[],
            replies: vec![json(
                200,
                "the answer, what it charged and what the project has left",
                schema_of::<ResearchAnswered>,
            )],
            problems: &[ProblemType::BadRequest, ProblemType::BudgetExhausted],
            handler: || post(post_query),
        },
        Endpoint {
            method: Method::Post,
            path: "/v1/research/queries/estimate",
            operation_id: "estimateResearchQuery",
            summary: "What a query would cost and how wide its intervals would be, before anything \
                      is spent",
            roles: &[Role::Researcher],
            request: Some(schema_of::<ResearchQueryRequest>),
            query: &[],
            replies: vec![json(
                200,
                "the estimate; nothing was read, drawn or charged",
                schema_of::<ResearchEstimated>,
            )],
            problems: &[ProblemType::BadRequest],
            handler: || post(post_estimate),
        },
        Endpoint {
            method: Method::Post,
            path: "/v1/research/extracts",
            operation_id: "requestResearchExtract",
            summary: "Ask for an anonymised extract (k children and l distinct outcomes in every \
                      class, at most a share of records left out); nothing is produced until the \
                      operator approves it, since an extract leaves differential privacy behind",
            roles: &[Role::Researcher],
            request: Some(schema_of::<ExtractRequest>),
            query: &[],
            replies: vec![json(
                201,
                "asked for; waiting for the operator's approval",
                schema_of::<ExtractStatus>,
            )],
            problems: &[ProblemType::BadRequest],
            handler: || post(post_extract),
        },
        Endpoint {
            method: Method::Get,
            path: "/v1/research/extracts",
            operation_id: "listResearchExtracts",
            summary: "The project's extracts: asked for, or produced with their risk report",
            roles: &[Role::Researcher],
            request: None,
            query: &[],
            replies: vec![json(200, "the extracts", schema_of::<ExtractList>)],
            problems: &[],
            handler: || get(list_extracts),
        },
        Endpoint {
            method: Method::Get,
            path: "/v1/research/extracts/{extract}",
            operation_id: "getResearchExtractCsv",
            summary: "A produced extract of the project as CSV (`{id}.csv`): a header row, `*` for a \
                      value left out, an empty field for a missing one",
            roles: &[Role::Researcher],
            request: None,
            query: &[],
            replies: vec![Reply {
                status: 200,
                description: "the extract",
                body: None,
                media_type: "text/csv",
            }],
            problems: &[ProblemType::BadRequest, ProblemType::NotFound],
            handler: || get(get_extract_csv),
        },
        Endpoint {
            method: Method::Get,
            path: "/v1/research/log",
            operation_id: "getResearchLog",
            summary: "The calling researcher's project: its budget, what it spent, and every answer \
                      it was given (who, what, when, rho charged)",
            roles: &[Role::Researcher],
            request: None,
            query: &[],
            replies: vec![json(200, "the project's log", schema_of::<ResearchLog>)],
            problems: &[],
            handler: || get(get_log),
        },
    ]
}

#[instrument(skip_all, fields(role = %caller.role))]
async fn post_query(
    State(state): State<AppState>,
    caller: Caller,
    AppJson(req): AppJson<ResearchQueryRequest>,
) -> Result<AppJson<ResearchAnswered>, ApiError> {
    let answered = research::ask(&state.research_deps(), &caller, &req).await?;
    tracing::info!(
        rows = answered.answer.rows.len(),
        audit_seq = answered.audit_seq,
        "research query answered"
    );
    Ok(AppJson(answered))
}

#[instrument(skip_all, fields(role = %caller.role))]
async fn post_estimate(
    State(state): State<AppState>,
    caller: Caller,
    AppJson(req): AppJson<ResearchQueryRequest>,
) -> Result<AppJson<ResearchEstimated>, ApiError> {
    Ok(AppJson(
        research::estimate(&state.research_deps(), &caller, &req).await?,
    ))
}

#[instrument(skip_all, fields(role = %caller.role))]
async fn get_log(
    State(state): State<AppState>,
    caller: Caller,
) -> Result<AppJson<ResearchLog>, ApiError> {
    Ok(AppJson(
        research::log(&state.research_deps(), &caller).await?,
    ))
}

#[instrument(skip_all, fields(role = %caller.role))]
async fn post_extract(
    State(state): State<AppState>,
    caller: Caller,
    AppJson(req): AppJson<ExtractRequest>,
) -> Result<Response, ApiError> {
    let status = research::request_extract(&state.research_deps(), &caller, &req).await?;
    Ok((StatusCode::CREATED, AppJson(status)).into_response())
}

#[instrument(skip_all, fields(role = %caller.role))]
async fn list_extracts(
    State(state): State<AppState>,
    caller: Caller,
) -> Result<AppJson<ExtractList>, ApiError> {
    Ok(AppJson(
        research::list_extracts(&state.research_deps(), &caller).await?,
    ))
}

#[instrument(skip_all, fields(role = %caller.role))]
async fn get_extract_csv(
    State(state): State<AppState>,
    caller: Caller,
    Path(extract): Path<String>,
) -> Result<Response, ApiError> {
    let id = extract
        .strip_suffix(".csv")
        .and_then(|id| id.parse().ok())
        .ok_or_else(|| {
            ApiError::new(
                ProblemType::BadRequest,
                "an extract is downloaded as /v1/research/extracts/{id}.csv",
            )
        })?;
    let csv = research::extract_csv(&state.research_deps(), &caller, id).await?;
    let mut res = (StatusCode::OK, csv).into_response();
    res.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/csv; charset=utf-8"),
    );
    if let Ok(v) = HeaderValue::from_str(&format!("attachment; filename=\"kwm-extract-{id}.csv\""))
    {
        res.headers_mut().insert(header::CONTENT_DISPOSITION, v);
    }
    Ok(res)
}

/// The `{extract}` path parameter: an extract id with `.csv`.
pub fn extract_name_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
    schemars::json_schema!({
        "type": "string",
        "pattern": "^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}\\.csv$",
        "description": "an extract id (UUID) followed by .csv"
    })
}
