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
use crate::audit::AuditAction;
use crate::audit_trail::{
    api_actor, append_best_effort, append_required, batch_subject, entry, AlreadyAudited,
};
use crate::auth::{ProviderCaller, ProviderToken};
use crate::error::{ApiError, AppJson};
use crate::ingest::ingest_batch;
use crate::startup::AppState;
use crate::store::PutBatch;

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
    let header = batch.header.clone();
    let actor = api_actor(&provider.caller);
    let subject = batch_subject(header.batch_id);
    // The upload's entry commits with the rows, in the store's transaction.
    let record = {
        let (actor, subject, agb) = (actor.clone(), subject.clone(), provider.agb);
        move |r: &BatchReceipt| entry(&actor, AuditAction::Upload, subject.clone(), Some(agb), r)
    };
    let outcome = ingest_batch(&state, provider.agb, batch, &record).await;
    state.metrics.observe_upload(&outcome);
    let (status, receipt) = match outcome {
        Ok(PutBatch::Stored(r)) => (StatusCode::CREATED, r),
        Ok(PutBatch::Replayed(r)) => {
            let e = entry(
                &actor,
                AuditAction::UploadReplayed,
                subject,
                Some(provider.agb),
                &r,
            );
            append_required(&state, e).await?;
            (StatusCode::OK, r)
        }
        // `ingest_batch` answers a withdrawn batch id with its problem.
        Ok(PutBatch::Withdrawn { .. }) => {
            return Err(ApiError::Internal(anyhow::anyhow!(
                "a withdrawn batch reached the upload answer"
            )))
        }
        // Refusals that matter for security: someone else's key, someone else's batch, a batch id
        // reused for other content, a withdrawn batch posted again, or another regional key. The details digest binds the
        // entry to the header sent.
        Err(err)
            if matches!(
                err.kind(),
                ProblemType::BadSignature
                    | ProblemType::Forbidden
                    | ProblemType::BatchConflict
                    | ProblemType::BatchWithdrawn
                    | ProblemType::WrongRegionalKey
            ) =>
        {
            let e = entry(
                &actor,
                AuditAction::UploadRefused,
                format!("{subject}: {}", err.kind().slug()),
                Some(provider.agb),
                &header,
            );
            append_best_effort(&state, e).await;
            let mut res = err.into_response();
            res.extensions_mut().insert(AlreadyAudited);
            return Ok(res);
        }
        Err(err) => return Err(err),
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
