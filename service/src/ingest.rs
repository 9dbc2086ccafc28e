//! Where an upload is opened: check the header, the provider and its signature, resolve the key, open the
//! HPKE envelope, validate every record against the region, apply the second pseudonymisation stage and
//! hand the whole batch to the store. Any failure stores nothing.

use std::collections::HashMap;
use std::sync::Arc;

use kwm_schemas::envelope::{self, SealedBatch, PROTOCOL_VERSION};
use kwm_schemas::problem::{ProblemType, RecordError};
use kwm_schemas::{AgbCode, BatchPayload, Pseudonym, WireRecord};
use serde::Deserialize;
use time::OffsetDateTime;

use crate::error::ApiError;
use crate::keys::KeyLookup;
use crate::startup::AppState;
use crate::store::{NewBatch, PutBatch, StoreError};

/// At most this many record errors are listed in one problem document; the detail gives the total.
const MAX_LISTED_ERRORS: usize = 200;

/// Runs the whole pipeline for a batch posted by `caller`.
pub async fn ingest_batch(
    state: &AppState,
    caller: AgbCode,
    batch: SealedBatch,
) -> Result<PutBatch, ApiError> {
    let header = &batch.header;
    if header.version != PROTOCOL_VERSION {
        return Err(ApiError::new(
            ProblemType::UnsupportedVersion,
            format!(
                "batch protocol version {} is not supported; this service speaks version {PROTOCOL_VERSION}",
                header.version
            ),
        ));
    }
    if header.provider != caller {
        return Err(ApiError::forbidden(format!(
            "this token belongs to provider {caller} and cannot upload batches of provider {}",
            header.provider
        )));
    }
    let max_records = state.region.ingest.max_batch_records;
    if header.record_count > max_records {
        return Err(ApiError::new(
            ProblemType::TooLarge,
            format!(
                "a batch holds at most {max_records} records, this header says {}; split the upload",
                header.record_count
            ),
        ));
    }
    let provider = state.store.get_provider(caller).await?.ok_or_else(|| {
        ApiError::forbidden(format!(
            "provider {caller} is not registered with this service"
        ))
    })?;

    // Signature, decryption, parsing and validation are CPU work: keep them off the async workers.
    let st = state.clone();
    let prepared = tokio::task::spawn_blocking(move || {
        open_and_validate(&st, &provider.signing_public_key, batch)
    })
    .await
    .map_err(|e| ApiError::Internal(anyhow::anyhow!("validation task failed: {e}")))??;

    match state.store.put_batch(&prepared).await {
        Ok(outcome) => Ok(outcome),
        Err(StoreError::Conflict(_)) => Err(ApiError::new(
            ProblemType::BatchConflict,
            format!(
                "batch {} was already stored with other content; a new upload needs a new batch id",
                prepared.batch_id
            ),
        )),
        Err(e) => Err(e.into()),
    }
}

fn open_and_validate(
    state: &AppState,
    signing_public_key: &[u8],
    batch: SealedBatch,
) -> Result<NewBatch, ApiError> {
    envelope::verify_signature(&batch, signing_public_key).map_err(|_| {
        ApiError::new(
            ProblemType::BadSignature,
            "the signature does not verify with the provider's registered signing key",
        )
    })?;

    let header = &batch.header;
    let active = || {
        state
            .keyring
            .active_key_id()
            .map(|k| k.to_string())
            .unwrap_or_default()
    };
    let plaintext = state.keyring.with_key(&header.key_id, |lookup| match lookup {
        KeyLookup::Usable(key) => envelope::open(&batch, key).map_err(|_| {
            ApiError::new(
                ProblemType::DecryptFailed,
                "the batch does not decrypt with the key it names; it was changed or sealed wrongly",
            )
        }),
        KeyLookup::Retired => Err(ApiError::new(
            ProblemType::RetiredKey,
            format!(
                "key {} is retired; fetch GET /v1/keys and seal to the active key {}",
                header.key_id,
                active()
            ),
        )
        .with_active_key(active())),
        KeyLookup::Pending => Err(ApiError::new(
            ProblemType::UnknownKey,
            format!(
                "key {} is not active yet; seal to the active key {}",
                header.key_id,
                active()
            ),
        )
        .with_active_key(active())),
        KeyLookup::Unknown => Err(ApiError::new(
            ProblemType::UnknownKey,
            format!(
                "this service has no key {}; fetch GET /v1/keys and seal to the active key {}",
                header.key_id,
                active()
            ),
        )
        .with_active_key(active())),
    })?;

    let content_digest = envelope::content_digest(&plaintext);
    let payload = parse_payload(&plaintext)?;
    if payload.records.len() != header.record_count as usize {
        return Err(ApiError::new(
            ProblemType::BadRequest,
            format!(
                "the header announces {} records but the batch holds {}",
                header.record_count,
                payload.records.len()
            ),
        ));
    }

    let mut errors = Vec::new();
    let mut total = 0usize;
    let mut seen: HashMap<Pseudonym, u32> = HashMap::with_capacity(payload.records.len());
    for (i, record) in payload.records.iter().enumerate() {
        let index = i as u32;
        let mut push = |field: String, reason: String| {
            total += 1;
            if errors.len() < MAX_LISTED_ERRORS {
                errors.push(RecordError {
                    record: index,
                    field,
                    reason,
                });
            }
        };
        for issue in record.check(&state.region) {
            push(issue.field, issue.reason);
        }
        if let Some(first) = seen.insert(record.trajectory, index) {
            push(
                "trajectory_id".into(),
                format!(
                    "the same trajectory as record {first}; a batch holds each trajectory once"
                ),
            );
        }
    }
    if total > 0 {
        let mut err = ApiError::invalid_records(errors);
        if let ApiError::Problem { detail, .. } = &mut err {
            if total > MAX_LISTED_ERRORS {
                detail.push_str(&format!(
                    " Only the first {MAX_LISTED_ERRORS} of {total} are listed."
                ));
            }
        }
        return Err(err);
    }

    let key = Arc::clone(&state.pseudonym_key);
    let records = payload
        .records
        .into_iter()
        .map(|mut r| {
            r.client = key.pseudonymise(&r.client);
            r
        })
        .collect();
    Ok(NewBatch {
        provider: header.provider,
        batch_id: header.batch_id,
        key_id: header.key_id.clone(),
        content_digest,
        received_at: now_micros(),
        records,
    })
}

/// Now, at the precision every store keeps.
pub fn now_micros() -> OffsetDateTime {
    let now = OffsetDateTime::now_utc();
    now.replace_nanosecond(now.nanosecond() / 1000 * 1000)
        .unwrap_or(now)
}

/// Parses the plaintext; on failure, finds the first bad record and field so the error can say where.
pub fn parse_payload(plaintext: &[u8]) -> Result<BatchPayload, ApiError> {
    if let Ok(p) = serde_json::from_slice::<BatchPayload>(plaintext) {
        return Ok(p);
    }
    #[derive(Deserialize)]
    struct Loose {
        records: Vec<serde_json::Value>,
    }
    let loose: Loose = serde_json::from_slice(plaintext).map_err(|_| {
        ApiError::new(
            ProblemType::BadRequest,
            "the decrypted batch is not a JSON object with a `records` array",
        )
    })?;
    let mut errors = Vec::new();
    for (i, value) in loose.records.into_iter().enumerate() {
        if let Err(e) = serde_path_to_error::deserialize::<_, WireRecord>(value) {
            let field = e.path().to_string();
            // The inner message comes from our parsers and serde: it names the expected form, never echoes
            // a value of ours. It is sent back only to the provider who sent the record.
            errors.push(RecordError {
                record: i as u32,
                field: if field == "." { "record".into() } else { field },
                reason: e.into_inner().to_string(),
            });
            if errors.len() >= MAX_LISTED_ERRORS {
                break;
            }
        }
    }
    Err(ApiError::invalid_records(errors))
}
