//! What a provider may do with the data held for it: withdraw a batch (`DELETE /v1/batches/{batch_id}`)
//! or one trajectory (`DELETE /v1/trajectories/{trajectory}`), and export its stored records
//! (`GET /v1/export`). Each is recorded in the audit chain before the answer goes out.

use axum::extract::{Path, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get};
use kwm_schemas::api::{WithdrawalKind, WithdrawalReceipt};
use kwm_schemas::problem::ProblemType;
use kwm_schemas::{AgbCode, ExportedRecord, Pseudonym, Role};
use ring::digest::{Context, SHA256};
use tracing::instrument;
use uuid::Uuid;

use super::{json, schema_of, Endpoint, Method, Reply};
use crate::audit::AuditAction;
use crate::audit_trail::{api_actor, append_required, batch_subject, entry, failed_action};
use crate::auth::ProviderToken;
use crate::error::{ApiError, AppJson};
use crate::ingest::now_micros;
use crate::startup::AppState;
use crate::store::{StoreError, Withdrawn};

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

fn receipt(
    provider: AgbCode,
    withdrawn: WithdrawalKind,
    batch_id: Option<Uuid>,
    w: Withdrawn,
    withdrawn_at: time::OffsetDateTime,
) -> WithdrawalReceipt {
    WithdrawalReceipt {
        provider,
        withdrawn,
        batch_id,
        trajectories_removed: w.trajectories,
        batches_removed: w.batches,
        withdrawn_at,
        audit_seq: 0,
    }
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
    // The entry commits with the withdrawal. Its digest covers the receipt with `audit_seq` 0: the
    // sequence number exists only once appended.
    let at = now_micros();
    let actor = api_actor(&caller);
    let record = move |w: &Withdrawn| {
        entry(
            &actor,
            AuditAction::Withdraw,
            batch_subject(id),
            Some(agb),
            &receipt(agb, WithdrawalKind::Batch, Some(id), *w, at),
        )
    };
    // Another provider's batch is simply not found: its existence is not disclosed.
    let (w, seq) = match state
        .store
        .withdraw_batch_recorded(agb, id, Some(&record))
        .await
    {
        Ok(w) => w,
        Err(StoreError::NotFound) => {
            return Err(ApiError::not_found(format!("you have no batch {id}")))
        }
        Err(e) => return Err(failed_action(&state, e, "withdraw")),
    };
    let mut r = receipt(agb, WithdrawalKind::Batch, Some(id), w, at);
    r.audit_seq = seq.unwrap_or_default();
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
    let pseudonym = Pseudonym(bytes);
    // The subject names no pseudonym; the digest binds the receipt to the trajectory, so that the
    // provider can prove later which one it was. The entry commits with the withdrawal.
    let at = now_micros();
    let actor = api_actor(&caller);
    let record = move |w: &Withdrawn| {
        let r = receipt(agb, WithdrawalKind::Trajectory, None, *w, at);
        let details = serde_json::json!({ "receipt": &r, "trajectory": hex::encode(bytes) });
        entry(
            &actor,
            AuditAction::Withdraw,
            "trajectory",
            Some(agb),
            &details,
        )
    };
    let (w, seq) = match state
        .store
        .withdraw_trajectory_recorded(agb, &pseudonym, Some(&record))
        .await
    {
        Ok(w) => w,
        Err(StoreError::NotFound) => {
            return Err(ApiError::not_found(
                "you have no stored trajectory with this pseudonym",
            ))
        }
        Err(e) => return Err(failed_action(&state, e, "withdraw")),
    };
    let mut r = receipt(agb, WithdrawalKind::Trajectory, None, w, at);
    r.audit_seq = seq.unwrap_or_default();
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
    let count = state.store.count_trajectories(Some(agb)).await?;
    let actor = api_actor(&caller);
    // Nothing leaves before the export is on the record.
    let e = entry(
        &actor,
        AuditAction::Export,
        format!("export of {count} records"),
        Some(agb),
        &serde_json::json!({ "records": count }),
    );
    append_required(&state, e).await?;
    tracing::info!(records = count, "export started");
    let body = axum::body::Body::from_stream(export_pages(state, agb, actor));
    let mut res = (StatusCode::OK, body).into_response();
    res.headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(NDJSON));
    if let Ok(v) = HeaderValue::from_str(&count.to_string()) {
        res.headers_mut().insert(EXPORT_COUNT_HEADER, v);
    }
    Ok(res)
}

/// The export's body, read and sent a page at a time (memory per export: one page, not the whole
/// provider). When the last page has gone, an `export-sent` entry records how many records left and
/// the SHA-256 of the bytes sent; an export cut short (the client went away, the database failed)
/// has its `export` entry only. A database error ends the body early: the client sees fewer records
/// than the count header announced.
fn export_pages(
    state: AppState,
    agb: AgbCode,
    actor: crate::rounds::Actor,
) -> impl futures::Stream<Item = Result<axum::body::Bytes, std::io::Error>> + Send {
    struct Cursor {
        after: Option<Pseudonym>,
        digest: Context,
        sent: u64,
        done: bool,
    }
    let start = Cursor {
        after: None,
        digest: Context::new(&SHA256),
        sent: 0,
        done: false,
    };
    futures::stream::unfold(start, move |mut c| {
        let state = state.clone();
        let actor = actor.clone();
        async move {
            if c.done {
                return None;
            }
            let limit = crate::store::TRAJECTORY_PAGE;
            let page = match state
                .store
                .list_trajectories_page(agb, c.after.as_ref(), limit)
                .await
            {
                Ok(p) => p,
                Err(e) => {
                    tracing::error!(error = %e, sent = c.sent, "export cut short: reading a page failed");
                    c.done = true;
                    return Some((Err(std::io::Error::other("reading the export failed")), c));
                }
            };
            let mut chunk = Vec::with_capacity(page.len() * 420);
            for r in &page {
                if let Err(e) = serde_json::to_writer(&mut chunk, &ExportedRecord::from(r)) {
                    tracing::error!(error = %e, "export cut short: serialising a record failed");
                    c.done = true;
                    return Some((
                        Err(std::io::Error::other("serialising the export failed")),
                        c,
                    ));
                }
                chunk.push(b'\n');
            }
            c.digest.update(&chunk);
            c.sent += page.len() as u64;
            c.after = page.last().map(|r| r.trajectory);
            if page.len() < limit as usize {
                c.done = true;
                let details = serde_json::json!({
                    "records": c.sent,
                    "sha256": hex::encode(c.digest.clone().finish()),
                });
                let e = entry(
                    &actor,
                    AuditAction::ExportSent,
                    format!("export of {} records sent", c.sent),
                    Some(agb),
                    &details,
                );
                // The records have left: a failed entry cannot stop them; it is logged and counted.
                if let Err(err) = state.store.append_audit(&e).await {
                    state.metrics.observe_audit_failure(false);
                    tracing::error!(error = %err, "the audit entry of a sent export could not be written");
                }
                tracing::info!(records = c.sent, "records exported");
            }
            Some((Ok(axum::body::Bytes::from(chunk)), c))
        }
    })
}
