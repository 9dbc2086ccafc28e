//! `POST /v1/batches` (upload a sealed batch, recorded in the audit chain), `GET /v1/batches` and
//! `GET /v1/batches/{batch_id}`. Withdrawing a batch is in `custody`.

use axum::extract::{Path, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use kwm_schemas::api::{BatchList, BatchReceipt};
use kwm_schemas::envelope::SealedBatch;
use kwm_schemas::problem::ProblemType;
use kwm_schemas::Role;
use tracing::instrument;
use uuid::Uuid;

use super::{json, schema_of, Endpoint, Method};
use crate::app::audit_trail::{api_actor, AlreadyAudited};
use crate::app::error::ApiError;
use crate::app::upload::{upload, UploadRefused, Uploaded};
use crate::http::auth::{ProviderCaller, ProviderToken};
use crate::http::problem::AppJson;
use crate::http::startup::AppState;

pub fn endpoints() -> Vec<Endpoint> {
    vec![
        Endpoint {
            method: Method::Post,
            path: "/v1/batches",
            operation_id: "postBatch",
            summary: "Upload a sealed, signed batch of trajectory records",
            roles: &[Role::Provider],
            request: Some(schema_of::<SealedBatch>),
            query: &[],
            replies: vec![
                json(201, "stored; the receipt", schema_of::<BatchReceipt>),
                json(
                    200,
                    "this batch was stored before (a retry of the same upload attempt): the original \
                     receipt, `replayed: true`; nothing changed now",
                    schema_of::<BatchReceipt>,
                ),
            ],
            problems: &[
                ProblemType::BadSignature,
                ProblemType::UnknownKey,
                ProblemType::RetiredKey,
                ProblemType::DecryptFailed,
                ProblemType::InvalidRecord,
                ProblemType::BatchConflict,
                ProblemType::BatchWithdrawn,
                ProblemType::WrongRegionalKey,
                ProblemType::RegionalKeyNotRegistered,
                ProblemType::TooLarge,
                ProblemType::UnsupportedVersion,
                ProblemType::BadRequest,
            ],
            handler: || post(post_batch),
        },
        Endpoint {
            method: Method::Get,
            path: "/v1/batches",
            operation_id: "listBatches",
            summary: "The calling provider's batches, newest first",
            roles: &[Role::Provider],
            request: None,
            query: &[],
            replies: vec![json(200, "the batches", schema_of::<BatchList>)],
            problems: &[],
            handler: || get(list_batches),
        },
        Endpoint {
            method: Method::Get,
            path: "/v1/batches/{batch_id}",
            operation_id: "getBatch",
            summary: "The receipt of one of the calling provider's batches",
            roles: &[Role::Provider],
            request: None,
            query: &[],
            replies: vec![json(200, "the receipt", schema_of::<BatchReceipt>)],
            problems: &[ProblemType::BadRequest, ProblemType::NotFound],
            handler: || get(get_batch),
        },
    ]
}

#[instrument(skip_all, fields(provider = %provider.agb, batch_id = %batch.header.batch_id, records = batch.header.record_count))]
async fn post_batch(
    State(state): State<AppState>,
    provider: ProviderToken,
    AppJson(batch): AppJson<SealedBatch>,
) -> Result<Response, ApiError> {
    let actor = api_actor(&provider.caller);
    let (status, receipt) = match upload(&state.upload_deps(), &actor, provider.agb, batch).await {
        Ok(Uploaded::Stored(r)) => (StatusCode::CREATED, r),
        Ok(Uploaded::Replayed(r)) => (StatusCode::OK, r),
        Err(UploadRefused {
            error,
            audited: true,
        }) => {
            let mut res = error.into_response();
            res.extensions_mut().insert(AlreadyAudited);
            return Ok(res);
        }
        Err(refused) => return Err(refused.error),
    };
    tracing::info!(
        stored = receipt.stored,
        corrected = receipt.corrected,
        unchanged = receipt.unchanged,
        replayed = receipt.replayed,
        "batch accepted"
    );
    let location = format!("/v1/batches/{}", receipt.batch_id);
    let mut res = (status, AppJson(receipt)).into_response();
    if let Ok(v) = HeaderValue::from_str(&location) {
        res.headers_mut().insert(header::LOCATION, v);
    }
    Ok(res)
}

#[instrument(skip_all, fields(provider = %provider.0))]
async fn list_batches(
    State(state): State<AppState>,
    provider: ProviderCaller,
) -> Result<AppJson<BatchList>, ApiError> {
    let batches = state.store.list_batches(provider.0).await?;
    Ok(AppJson(BatchList { batches }))
}

#[instrument(skip_all, fields(provider = %provider.0))]
async fn get_batch(
    State(state): State<AppState>,
    provider: ProviderCaller,
    Path(batch_id): Path<String>,
) -> Result<AppJson<BatchReceipt>, ApiError> {
    let id: Uuid = batch_id
        .parse()
        .map_err(|_| ApiError::new(ProblemType::BadRequest, "a batch id is a UUID"))?;
    // Another provider's batch is simply not found: its existence is not disclosed.
    state
        .store
        .get_batch(provider.0, id)
        .await?
        .map(AppJson)
        .ok_or_else(|| ApiError::not_found(format!("you have no batch {id}")))
}
