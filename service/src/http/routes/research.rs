//! Research access over HTTP, for a project's researchers: `POST /v1/research/queries` (an answer,
//! charged to the project), `POST /v1/research/queries/estimate` (its cost and interval widths,
//! nothing spent) and `GET /v1/research/log`. The use cases are `app::research`'s.

use axum::extract::State;
use axum::routing::{get, post};
use kwm_schemas::api::{ResearchAnswered, ResearchEstimated, ResearchLog, ResearchQueryRequest};
use kwm_schemas::problem::ProblemType;
use kwm_schemas::Role;
use tracing::instrument;

use super::{json, schema_of, Endpoint, Method};
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
