//! What a provider may do with the data held for it, over HTTP: withdraw a batch (`DELETE
//! /v1/batches/{batch_id}`) or one trajectory (`DELETE /v1/trajectories/{trajectory}`), and export its
//! stored records (`GET /v1/export`). The use cases are `app::custody`'s.

use axum::extract::{Path, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get};
use futures::StreamExt;
use kwm_schemas::api::WithdrawalReceipt;
use kwm_schemas::problem::ProblemType;
use kwm_schemas::{ExportedRecord, Pseudonym, Role};
use tracing::instrument;
use uuid::Uuid;

use super::{json, schema_of, Endpoint, Method, Reply};
use crate::app::audit_trail::api_actor;
use crate::app::custody;
use crate::app::error::ApiError;
use crate::http::auth::ProviderToken;
use crate::http::problem::AppJson;
use crate::http::startup::AppState;

/// Media type of the export: one JSON `WireRecord` per line.
pub const NDJSON: &str = "application/x-ndjson";

/// Header of the export naming the number of records, so a client can check it read them all.
pub const EXPORT_COUNT_HEADER: &str = "kwm-record-count";

fn record_schema(g: &mut schemars::SchemaGenerator) -> schemars::Schema {
    schema_of::<ExportedRecord>(g)
}

pub fn endpoints() -> Vec<Endpoint> {
    vec![
        Endpoint {
            method: Method::Delete,
            path: "/v1/batches/{batch_id}",
            operation_id: "withdrawBatch",
            summary:
                "Withdraw one of the calling provider's batches: the rows it last wrote and its \
                      receipt are removed; later releases no longer count them",
            roles: &[Role::Provider],
            request: None,
            query: &[],
            replies: vec![json(
                200,
                "withdrawn; what was removed",
                schema_of::<WithdrawalReceipt>,
            )],
            problems: &[
                ProblemType::BadRequest,
                ProblemType::NotFound,
                ProblemType::Unavailable,
            ],
            handler: || delete(withdraw_batch),
        },
        Endpoint {
            method: Method::Delete,
            path: "/v1/trajectories/{trajectory}",
            operation_id: "withdrawTrajectory",
            summary:
                "Withdraw one of the calling provider's trajectories, named by its trajectory \
                      pseudonym (64 hex digits, as `kwm withdraw --trajectory` computes it)",
            roles: &[Role::Provider],
            request: None,
            query: &[],
            replies: vec![json(
                200,
                "withdrawn; what was removed",
                schema_of::<WithdrawalReceipt>,
            )],
            problems: &[
                ProblemType::BadRequest,
                ProblemType::NotFound,
                ProblemType::Unavailable,
            ],
            handler: || delete(withdraw_trajectory),
        },
        Endpoint {
            method: Method::Get,
            path: "/v1/export",
            operation_id: "exportRecords",
            summary: "The calling provider's stored records as it sent them, one JSON record per \
                      line, without client pseudonyms (the service hands out none)",
            roles: &[Role::Provider],
            request: None,
            query: &[],
            replies: vec![Reply {
                status: 200,
                description: "the records, one per line",
                body: Some(record_schema),
                media_type: NDJSON,
            }],
            problems: &[ProblemType::Unavailable],
            handler: || get(export),
        },
    ]
}

#[instrument(skip_all, fields(provider, batch_id = %batch_id))]
async fn withdraw_batch(
    State(state): State<AppState>,
    ProviderToken { agb, caller }: ProviderToken,
    Path(batch_id): Path<String>,
) -> Result<AppJson<WithdrawalReceipt>, ApiError> {
    tracing::Span::current().record("provider", agb.as_str());
    let id: Uuid = batch_id
        .parse()
        .map_err(|_| ApiError::new(ProblemType::BadRequest, "a batch id is a UUID"))?;
    let r = custody::withdraw_batch(&state.custody_deps(), &api_actor(&caller), agb, id).await?;
    tracing::info!(
        trajectories = r.trajectories_removed,
        batches = r.batches_removed,
        "batch withdrawn"
    );
    Ok(AppJson(r))
}

#[instrument(skip_all, fields(provider))]
async fn withdraw_trajectory(
    State(state): State<AppState>,
    ProviderToken { agb, caller }: ProviderToken,
    Path(trajectory): Path<String>,
) -> Result<AppJson<WithdrawalReceipt>, ApiError> {
    tracing::Span::current().record("provider", agb.as_str());
    let mut bytes = [0u8; 32];
    hex::decode_to_slice(trajectory.as_bytes(), &mut bytes).map_err(|_| {
        ApiError::new(
            ProblemType::BadRequest,
            "a trajectory is named by its trajectory pseudonym, 64 hex digits",
        )
    })?;
    let r = custody::withdraw_trajectory(
        &state.custody_deps(),
        &api_actor(&caller),
        agb,
        Pseudonym(bytes),
    )
    .await?;
    tracing::info!(
        trajectories = r.trajectories_removed,
        batches = r.batches_removed,
        "trajectory withdrawn"
    );
    Ok(AppJson(r))
}

#[instrument(skip_all, fields(provider))]
async fn export(
    State(state): State<AppState>,
    ProviderToken { agb, caller }: ProviderToken,
) -> Result<Response, ApiError> {
    tracing::Span::current().record("provider", agb.as_str());
    let deps = state.custody_deps();
    let actor = api_actor(&caller);
    let count = custody::start_export(&deps, &actor, agb).await?;
    tracing::info!(records = count, "export started");
    let pages =
        custody::export_pages(deps, agb, actor).map(|chunk| chunk.map(axum::body::Bytes::from));
    let body = axum::body::Body::from_stream(pages);
    let mut res = (StatusCode::OK, body).into_response();
    res.headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(NDJSON));
    if let Ok(v) = HeaderValue::from_str(&count.to_string()) {
        res.headers_mut().insert(EXPORT_COUNT_HEADER, v);
    }
    Ok(res)
}
