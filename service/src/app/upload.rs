//! Where an upload is opened: check the header, the provider and its signature, resolve the key, open the
//! HPKE envelope, validate every record against the region, apply the second pseudonymisation stage and
//! hand the whole batch to the store. Any failure stores nothing.

use std::collections::HashMap;
use std::sync::Arc;

use kwm_schemas::envelope::{self, SealedBatch, PROTOCOL_VERSION};
use kwm_schemas::problem::{ProblemType, RecordError};
use kwm_schemas::{AgbCode, BatchPayload, Pseudonym, WireRecord};
use serde::de::{self, DeserializeSeed, Deserializer, MapAccess, SeqAccess, Visitor};
use serde_json::value::RawValue;

use crate::app::audit_trail::{
    append_best_effort, append_required, batch_subject, entry, failed_action, Recorder,
};
use crate::app::error::ApiError;
use crate::app::rounds::Actor;
use crate::audit::AuditAction;
use crate::clock::SharedClock;
use crate::keys::{KeyLookup, Keyring, PseudonymKey};
use crate::metrics::Metrics;
use crate::store::{NewBatch, PutBatch, RecordFn, Store, StoreError};
use kwm_schemas::api::BatchReceipt;
use kwm_schemas::RegionConfig;

/// At most this many record errors are listed in one problem document; the detail gives the total.
const MAX_LISTED_ERRORS: usize = 200;

/// What an upload needs.
#[derive(Debug, Clone)]
pub struct UploadDeps {
    pub store: Arc<dyn Store>,
    pub keyring: Arc<Keyring>,
    pub pseudonym_key: Arc<PseudonymKey>,
    pub region: Arc<RegionConfig>,
    pub metrics: Metrics,
    pub clock: SharedClock,
}

/// What an upload ended in.
#[derive(Debug)]
pub enum Uploaded {
    /// Stored now (201).
    Stored(BatchReceipt),
    /// Stored before, with the same content: the original receipt (200).
    Replayed(BatchReceipt),
}

/// An upload refused. `audited`: the refusal is in the audit chain already (a forbidden one must not
/// be recorded a second time by the forbidden-call middleware).
#[derive(Debug)]
pub struct UploadRefused {
    pub error: ApiError,
    pub audited: bool,
}

/// The upload of one sealed batch by provider `agb`, acting as `actor`: opened, validated and stored
/// whole or not at all ([`ingest_batch`]), with its audit entry in the store's transaction; a replay's
/// entry appended (the request fails without it); refusals that matter for security (someone else's
/// key or batch, a batch id reused for other content, a withdrawn batch posted again, another regional
/// key) recorded with a digest that binds the entry to the header sent.
pub async fn upload(
    deps: &UploadDeps,
    actor: &Actor,
    agb: AgbCode,
    batch: SealedBatch,
) -> Result<Uploaded, UploadRefused> {
    let header = batch.header.clone();
    let subject = batch_subject(header.batch_id);
    let record = {
        let (actor, subject) = (actor.clone(), subject.clone());
        move |r: &BatchReceipt| entry(&actor, AuditAction::Upload, subject.clone(), Some(agb), r)
    };
    let outcome = ingest_batch(deps, agb, batch, &record).await;
    deps.metrics.observe_upload(outcome.as_ref().ok());
    let to = Recorder {
        store: deps.store.as_ref(),
        metrics: &deps.metrics,
    };
    let refused = |error| UploadRefused {
        error,
        audited: false,
    };
    match outcome {
        Ok(PutBatch::Stored(r)) => Ok(Uploaded::Stored(r)),
        Ok(PutBatch::Replayed(r)) => {
            let e = entry(actor, AuditAction::UploadReplayed, subject, Some(agb), &r);
            append_required(to, e).await.map_err(refused)?;
            Ok(Uploaded::Replayed(r))
        }
        // `ingest_batch` answers a withdrawn batch id with its problem.
        Ok(PutBatch::Withdrawn { .. }) => Err(refused(ApiError::Internal(anyhow::anyhow!(
            "a withdrawn batch reached the upload answer"
        )))),
        Err(error)
            if matches!(
                error.kind(),
                ProblemType::BadSignature
                    | ProblemType::Forbidden
                    | ProblemType::BatchConflict
                    | ProblemType::BatchWithdrawn
                    | ProblemType::WrongRegionalKey
            ) =>
        {
            let e = entry(
                actor,
                AuditAction::UploadRefused,
                format!("{subject}: {}", error.kind().slug()),
                Some(agb),
                &header,
            );
            append_best_effort(to, e).await;
            Err(UploadRefused {
                error,
                audited: true,
            })
        }
        Err(error) => Err(refused(error)),
    }
}

/// Runs the whole pipeline for a batch posted by `caller`. A stored batch's audit entry, made by
/// `record` from the receipt, commits with the rows (`Store::put_batch_recorded`).
pub async fn ingest_batch(
    deps: &UploadDeps,
    caller: AgbCode,
    batch: SealedBatch,
    record: &RecordFn<BatchReceipt>,
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
    let max_records = deps.region.ingest.max_batch_records;
    if header.record_count > max_records {
        return Err(ApiError::new(
            ProblemType::TooLarge,
            format!(
                "a batch holds at most {max_records} records, this header says {}; split the upload",
                header.record_count
            ),
        ));
    }
    let provider = deps.store.get_provider(caller).await?.ok_or_else(|| {
        ApiError::forbidden(format!(
            "provider {caller} is not registered with this service"
        ))
    })?;

    // Signature, decryption, parsing and validation are CPU work: keep them off the async workers.
    let header_check = batch.header.regional_key_check.clone();
    let d = deps.clone();
    let prepared = tokio::task::spawn_blocking(move || {
        open_and_validate(&d, &provider.signing_public_key, batch)
    })
    .await
    .map_err(|e| ApiError::Internal(anyhow::anyhow!("validation task failed: {e}")))??;

    check_regional_key(deps, &header_check).await?;

    match deps.store.put_batch_recorded(&prepared, Some(record)).await {
        Ok(PutBatch::Withdrawn { at }) => Err(ApiError::new(
            ProblemType::BatchWithdrawn,
            format!(
                "batch {} was withdrawn ({}) and stays withdrawn; to upload these records again, \
                 run the upload again (every upload sends its batches under new ids)",
                prepared.batch_id,
                at.format(&time::format_description::well_known::Rfc3339)
                    .unwrap_or_default()
            ),
        )),
        Ok(outcome) => Ok(outcome),
        Err(StoreError::Conflict(_)) => Err(ApiError::new(
            ProblemType::BatchConflict,
            format!(
                "batch {} was already stored with other content; a new upload needs a new batch id",
                prepared.batch_id
            ),
        )),
        Err(e) => Err(failed_action(
            Recorder {
                store: deps.store.as_ref(),
                metrics: &deps.metrics,
            },
            e,
            "upload",
        )),
    }
}

/// Refuses a batch whose client pseudonyms were made under another key than the region's: its check
/// value (in the signed header) must be the registered one. Without a registered one nothing can be told
/// right from wrong, so the batch is refused too: a wrong key accepted once gives children pseudonyms that
/// no later upload matches.
async fn check_regional_key(deps: &UploadDeps, sent: &str) -> Result<(), ApiError> {
    let Some(registered) = deps.store.get_regional_key_check().await? else {
        return Err(ApiError::new(
            ProblemType::RegionalKeyNotRegistered,
            "this service does not know the check value of the region's pseudonymisation key yet, so it \
             stores no upload; the operator registers it once with `kwm-service admin region key-check \
             set HEX` (the check value that `kwm keygen --regional` printed for the region's key)",
        ));
    };
    // The check value is no secret (it is printed and registered in the clear): a plain comparison.
    let matches = hex::decode(sent).is_ok_and(|b| b == registered.check_value);
    if !matches {
        return Err(ApiError::new(
            ProblemType::WrongRegionalKey,
            "this batch was pseudonymised under another regional key than the region's (its check value \
             differs), so its children would get new pseudonyms; nothing was stored. Get the region's key \
             from the regional team and upload again with --regional-key; never make your own with `kwm \
             keygen --regional`",
        ));
    }
    Ok(())
}

fn open_and_validate(
    deps: &UploadDeps,
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
        deps.keyring
            .active_key_id()
            .map(|k| k.to_string())
            .unwrap_or_default()
    };
    let plaintext = deps.keyring.with_key(&header.key_id, |lookup| match lookup {
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
    let payload = parse_payload(&plaintext, header.record_count)?;
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
        for issue in record.check(&deps.region) {
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

    let key = Arc::clone(&deps.pseudonym_key);
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
        received_at: deps.clock.now(),
        records,
    })
}

/// Parses the plaintext in one streaming pass: the records up to the `declared` count of the header, each
/// checked where it lies in the plaintext (borrowed, not copied), so that a bad batch costs no more memory
/// than a good one. A record that does not parse is listed with its field (up to [`MAX_LISTED_ERRORS`],
/// the total in the detail); once one has failed, the good ones are no longer kept.
pub fn parse_payload(plaintext: &[u8], declared: u32) -> Result<BatchPayload, ApiError> {
    let mut de = serde_json::Deserializer::from_slice(plaintext);
    let mut parsed = Parsed {
        declared,
        records: Vec::with_capacity(declared.min(4096) as usize),
        errors: Vec::new(),
        total_errors: 0,
        too_many: false,
    };
    let shape = PayloadSeed(&mut parsed)
        .deserialize(&mut de)
        .and_then(|()| de.end());
    if parsed.too_many {
        return Err(ApiError::new(
            ProblemType::BadRequest,
            format!("the header announces {declared} records but the batch holds more"),
        ));
    }
    if shape.is_err() {
        return Err(ApiError::new(
            ProblemType::BadRequest,
            "the decrypted batch is not a JSON object with a `records` array (and nothing else)",
        ));
    }
    if parsed.total_errors > 0 {
        let total = parsed.total_errors;
        let mut err = ApiError::invalid_records(parsed.errors);
        if let ApiError::Problem { detail, .. } = &mut err {
            if total > MAX_LISTED_ERRORS {
                detail.push_str(&format!(
                    " Only the first {MAX_LISTED_ERRORS} of {total} are listed."
                ));
            }
        }
        return Err(err);
    }
    Ok(BatchPayload {
        records: parsed.records,
    })
}

struct Parsed {
    declared: u32,
    records: Vec<WireRecord>,
    errors: Vec<RecordError>,
    total_errors: usize,
    /// More records than declared: parsing stopped there.
    too_many: bool,
}

/// The payload object: `{"records": [...]}` and no other key.
struct PayloadSeed<'p>(&'p mut Parsed);

impl<'de> DeserializeSeed<'de> for PayloadSeed<'_> {
    type Value = ();
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_map(self)
    }
}

impl<'de> Visitor<'de> for PayloadSeed<'_> {
    type Value = ();
    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("an object with a `records` array")
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        let mut seen = false;
        while let Some(key) = map.next_key::<std::borrow::Cow<'de, str>>()? {
            if key != "records" || seen {
                return Err(de::Error::custom("unexpected key"));
            }
            seen = true;
            map.next_value_seed(RecordsSeed(&mut *self.0))?;
        }
        if seen {
            Ok(())
        } else {
            Err(de::Error::missing_field("records"))
        }
    }
}

/// The `records` array, one record at a time.
struct RecordsSeed<'p>(&'p mut Parsed);

impl<'de> DeserializeSeed<'de> for RecordsSeed<'_> {
    type Value = ();
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_seq(self)
    }
}

impl<'de> Visitor<'de> for RecordsSeed<'_> {
    type Value = ();
    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("an array of records")
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        let p = self.0;
        let mut index = 0u32;
        while let Some(raw) = seq.next_element::<&'de RawValue>()? {
            if index >= p.declared {
                p.too_many = true;
                return Err(de::Error::custom("more records than declared"));
            }
            let mut one = serde_json::Deserializer::from_str(raw.get());
            match serde_path_to_error::deserialize::<_, WireRecord>(&mut one) {
                Ok(record) if p.total_errors == 0 => p.records.push(record),
                Ok(_) => {}
                Err(e) => {
                    if p.total_errors == 0 {
                        // The batch will be refused: what parsed so far is not needed any more.
                        p.records = Vec::new();
                    }
                    p.total_errors += 1;
                    if p.errors.len() < MAX_LISTED_ERRORS {
                        let field = e.path().to_string();
                        // The inner message comes from our parsers and serde: it names the expected
                        // form, never echoes a value of ours. It goes back only to the provider who
                        // sent the record.
                        p.errors.push(RecordError {
                            record: index,
                            field: if field == "." { "record".into() } else { field },
                            reason: e.into_inner().to_string(),
                        });
                    }
                }
            }
            index += 1;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(trajectory: u8) -> serde_json::Value {
        serde_json::json!({
            "client": "01".repeat(32),
            "trajectory": format!("{trajectory:02x}").repeat(32),
            "municipality": "GM0748",
            "target_group": "P01",
            "start_month": "2024-02",
            "age_band": "12-17",
        })
    }

    fn payload(records: Vec<serde_json::Value>) -> Vec<u8> {
        serde_json::to_vec(&serde_json::json!({ "records": records })).expect("json")
    }

    fn problem(e: ApiError) -> (ProblemType, String, Vec<RecordError>) {
        match e {
            ApiError::Problem {
                kind,
                detail,
                errors,
                ..
            } => (kind, detail, errors),
            other => panic!("not a problem: {other:?}"),
        }
    }

    #[test]
    fn a_good_payload_parses_whole() {
        let p = parse_payload(&payload(vec![record(2), record(3)]), 2).expect("parses");
        assert_eq!(p.records.len(), 2);
    }

    #[test]
    fn parsing_stops_at_the_declared_count() {
        let e = parse_payload(&payload(vec![record(2), record(3), record(4)]), 2)
            .expect_err("more than declared");
        let (kind, detail, _) = problem(e);
        assert_eq!(kind, ProblemType::BadRequest);
        assert!(detail.contains("announces 2 records"), "{detail}");
    }

    #[test]
    fn every_bad_record_is_listed_with_its_field() {
        let mut bad = record(3);
        bad["satisfaction"] = serde_json::json!(11);
        let mut worse = record(5);
        worse["municipality"] = serde_json::json!("nowhere");
        let text = payload(vec![record(2), bad, record(4), worse]);
        let (kind, _, errors) = problem(parse_payload(&text, 4).expect_err("invalid"));
        assert_eq!(kind, ProblemType::InvalidRecord);
        let found: Vec<(u32, &str)> = errors
            .iter()
            .map(|e| (e.record, e.field.as_str()))
            .collect();
        assert_eq!(found, [(1, "satisfaction"), (3, "municipality")]);
    }

    #[test]
    fn a_payload_of_another_shape_is_a_bad_request() {
        for text in [
            &b"[]"[..],
            b"{}",
            b"{\"records\": [], \"more\": 1}",
            b"{\"records\": []} trailing",
            b"not json",
        ] {
            let (kind, _, _) = problem(parse_payload(text, 0).expect_err("refused"));
            assert_eq!(
                kind,
                ProblemType::BadRequest,
                "{}",
                String::from_utf8_lossy(text)
            );
        }
    }
}
