//! Batching and sealing (DESIGN section 6): records are serialised straight into the batch plaintext (the
//! JSON of `BatchPayload`), a batch is closed at the record limit or before its sealed JSON would pass the
//! region's byte limit, it gets a new random id for this upload attempt (its retries reuse it), and it
//! is sealed with HPKE to the service key and signed with the provider's Ed25519 key.

use kwm_schemas::envelope::{
    self, BatchHeader, EnvelopeError, HpkePublicKey, SealedBatch, PROTOCOL_VERSION,
};
use kwm_schemas::{AgbCode, WireRecord};
use ring::signature::Ed25519KeyPair;
use time::OffsetDateTime;
use uuid::Uuid;

/// Records per batch unless `--batch-size` says otherwise.
pub const DEFAULT_BATCH_SIZE: u32 = 10_000;

/// Upper bound of the bytes of a sealed batch's JSON besides its base64 ciphertext: the header, the
/// encapsulated key, the signature and the member names (with the regional key's check value) come to about 600 bytes.
pub const SEALED_OVERHEAD_BYTES: u64 = 1024;

const PAYLOAD_OPEN: &[u8] = b"{\"records\":[";
const PAYLOAD_CLOSE: &[u8] = b"]}";
/// AES-256-GCM tag.
const AEAD_TAG: u64 = 16;

/// An upper bound of the length of the JSON of a [`SealedBatch`] whose plaintext has `plaintext_len` bytes.
pub fn sealed_json_len_bound(plaintext_len: u64) -> u64 {
    4 * (plaintext_len + AEAD_TAG).div_ceil(3) + SEALED_OVERHEAD_BYTES
}

/// The largest plaintext whose sealed JSON stays within `max_sealed_bytes`.
pub fn max_plaintext_len(max_sealed_bytes: u64) -> u64 {
    let budget = max_sealed_bytes.saturating_sub(SEALED_OVERHEAD_BYTES);
    (budget / 4 * 3).saturating_sub(AEAD_TAG)
}

/// A new batch id for one upload attempt: a random UUID v4. The attempt's retries post the same sealed
/// batch, so the service answers them as replays; a later upload of the same records is a new upload
/// with new ids and applies (a correction back to an earlier value lands, a withdrawn export can be
/// uploaded again). An id derived from the content would make both look like retries.
pub fn new_batch_id() -> Uuid {
    Uuid::new_v4()
}

/// The plaintext of a batch: exactly `serde_json::to_vec(&BatchPayload { records })`.
pub fn payload_bytes(records: &[WireRecord]) -> Result<Vec<u8>, serde_json::Error> {
    // The same shape as `BatchPayload`, borrowed, so the records need no clone; a test checks the bytes.
    #[derive(serde::Serialize)]
    struct Borrowed<'a> {
        records: &'a [WireRecord],
    }
    serde_json::to_vec(&Borrowed { records })
}

/// A closed batch before sealing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlainBatch {
    /// The JSON of the `BatchPayload`.
    pub plaintext: Vec<u8>,
    pub record_count: u32,
    /// SHA-256 of the plaintext.
    pub content_digest: [u8; 32],
    /// Where each record's JSON ends in `plaintext`, for `--dry-run`.
    record_ends: Vec<u32>,
}

impl PlainBatch {
    /// Each record's JSON, in order.
    pub fn records_json(&self) -> impl Iterator<Item = &[u8]> + '_ {
        let mut start = PAYLOAD_OPEN.len();
        self.record_ends.iter().map(move |&end| {
            let end = end as usize;
            let s = &self.plaintext[start..end];
            start = end + 1; // skip the comma
            s
        })
    }
}

/// Why records could not be batched.
#[derive(Debug, thiserror::Error)]
pub enum BatchError {
    #[error("a batch must hold at least one record")]
    ZeroBatchSize,
    #[error("one record does not fit into a batch of at most {max} bytes")]
    RecordTooLarge { max: u64 },
    #[error("could not serialise a record: {0}")]
    Json(#[from] serde_json::Error),
}

/// Collects serialised records into batches of at most `max_records` records and `max_sealed_bytes`
/// bytes of sealed JSON. Holds one batch.
#[derive(Debug)]
pub struct BatchBuilder {
    buf: Vec<u8>,
    ends: Vec<u32>,
    scratch: Vec<u8>,
    max_records: u32,
    max_plaintext: u64,
}

impl BatchBuilder {
    pub fn new(max_records: u32, max_sealed_bytes: u64) -> Result<Self, BatchError> {
        if max_records == 0 {
            return Err(BatchError::ZeroBatchSize);
        }
        let max_plaintext = max_plaintext_len(max_sealed_bytes);
        let mut b = Self {
            buf: Vec::new(),
            ends: Vec::new(),
            scratch: Vec::with_capacity(1024),
            max_records,
            max_plaintext,
        };
        b.reset();
        Ok(b)
    }

    fn reset(&mut self) {
        self.buf.clear();
        self.buf.extend_from_slice(PAYLOAD_OPEN);
        self.ends.clear();
    }

    /// Records in the open batch.
    pub fn len(&self) -> u32 {
        self.ends.len() as u32
    }

    pub fn is_empty(&self) -> bool {
        self.ends.is_empty()
    }

    /// Adds a record. When it does not fit into the open batch, that batch is closed and returned and
    /// the record starts the next one.
    pub fn push(&mut self, record: &WireRecord) -> Result<Option<PlainBatch>, BatchError> {
        self.scratch.clear();
        serde_json::to_writer(&mut self.scratch, record)?;
        let record_len = self.scratch.len() as u64;
        let alone = (PAYLOAD_OPEN.len() + PAYLOAD_CLOSE.len()) as u64 + record_len;
        if alone > self.max_plaintext {
            return Err(BatchError::RecordTooLarge {
                max: self.max_plaintext,
            });
        }
        let with_it = self.buf.len() as u64 + 1 + record_len + PAYLOAD_CLOSE.len() as u64;
        let closed = if !self.is_empty()
            && (self.len() >= self.max_records || with_it > self.max_plaintext)
        {
            self.close()
        } else {
            None
        };
        if !self.is_empty() {
            self.buf.push(b',');
        }
        self.buf.extend_from_slice(&self.scratch);
        self.ends.push(self.buf.len() as u32);
        Ok(closed)
    }

    /// Closes the open batch, if it has records.
    pub fn finish(&mut self) -> Option<PlainBatch> {
        self.close()
    }

    fn close(&mut self) -> Option<PlainBatch> {
        if self.is_empty() {
            return None;
        }
        let mut plaintext = std::mem::take(&mut self.buf);
        plaintext.extend_from_slice(PAYLOAD_CLOSE);
        let ends = std::mem::take(&mut self.ends);
        let batch = PlainBatch {
            content_digest: envelope::content_digest(&plaintext),
            record_count: ends.len() as u32,
            plaintext,
            record_ends: ends,
        };
        self.buf = Vec::with_capacity(batch.plaintext.len());
        self.reset();
        Some(batch)
    }
}

/// The creation time of a header: now, in UTC, whole seconds.
pub fn now_utc_seconds() -> OffsetDateTime {
    let now = OffsetDateTime::now_utc();
    now.replace_nanosecond(0).unwrap_or(now)
}

/// Seals a plaintext as one batch with the given id. `regional_key_check` is the check value of the
/// regional key its client pseudonyms were made with ([`crate::RegionalKey::check_value`]).
#[allow(clippy::too_many_arguments)]
pub fn seal_plaintext(
    plaintext: &[u8],
    record_count: u32,
    provider: AgbCode,
    batch_id: Uuid,
    recipient: &HpkePublicKey,
    signer: &Ed25519KeyPair,
    regional_key_check: &str,
    created_at: OffsetDateTime,
) -> Result<SealedBatch, EnvelopeError> {
    let header = BatchHeader {
        version: PROTOCOL_VERSION,
        provider,
        batch_id,
        key_id: recipient.key_id(),
        record_count,
        created_at,
        regional_key_check: regional_key_check.to_string(),
    };
    envelope::seal(header, plaintext, recipient, signer)
}

/// Seals the given records as one batch with the given id (tests use it to craft replays, conflicts and
/// tampering). `batch_id: None` draws a new one as `kwm upload` does.
pub fn seal_records(
    records: &[WireRecord],
    provider: AgbCode,
    batch_id: Option<Uuid>,
    recipient: &HpkePublicKey,
    signer: &Ed25519KeyPair,
    regional_key_check: &str,
    created_at: OffsetDateTime,
) -> Result<SealedBatch, SealError> {
    let plaintext = payload_bytes(records)?;
    let id = batch_id.unwrap_or_else(new_batch_id);
    let count = u32::try_from(records.len()).map_err(|_| SealError::TooManyRecords)?;
    Ok(seal_plaintext(
        &plaintext,
        count,
        provider,
        id,
        recipient,
        signer,
        regional_key_check,
        created_at,
    )?)
}

#[derive(Debug, thiserror::Error)]
pub enum SealError {
    #[error("could not serialise the records: {0}")]
    Json(#[from] serde_json::Error),
    #[error(transparent)]
    Envelope(#[from] EnvelopeError),
    #[error("too many records for one batch")]
    TooManyRecords,
}

#[cfg(test)]
mod tests {
    use super::*;
    use kwm_schemas::codes::AgeBand;
    use kwm_schemas::envelope::HpkeSecretKey;
    use kwm_schemas::{BatchPayload, Pseudonym};

    fn record(i: u32) -> WireRecord {
        let mut t = [0u8; 32];
        t[..4].copy_from_slice(&i.to_be_bytes());
        WireRecord {
            client: Pseudonym([7; 32]),
            trajectory: Pseudonym(t),
            municipality: "GM0748".parse().expect("valid"),
            target_group: "P01".parse().expect("valid"),
            intensity: None,
            product_category: None,
            start_month: "2024-01".parse().expect("valid"),
            end_month: None,
            age_band: AgeBand::Age4To11,
            end_reason: None,
            satisfaction: None,
            respondent: None,
            carry_on_without_help: None,
            problem_t_pre: None,
            problem_t_post: None,
            instrument: None,
            goals_agreed: None,
            goals_achieved: None,
        }
    }

    fn agb() -> AgbCode {
        "12345678".parse().expect("valid")
    }

    fn split(records: &[WireRecord], max_records: u32, max_bytes: u64) -> Vec<PlainBatch> {
        let mut b = BatchBuilder::new(max_records, max_bytes).expect("builder");
        let mut out = Vec::new();
        for r in records {
            out.extend(b.push(r).expect("push"));
        }
        out.extend(b.finish());
        out
    }

    #[test]
    fn plaintext_is_the_batch_payload_json() {
        let records: Vec<WireRecord> = (0..5).map(record).collect();
        let batches = split(&records, 100, 1 << 20);
        assert_eq!(batches.len(), 1);
        let expected = serde_json::to_vec(&BatchPayload {
            records: records.clone(),
        })
        .expect("json");
        assert_eq!(batches[0].plaintext, expected);
        assert_eq!(payload_bytes(&records).expect("json"), expected);
        let lines: Vec<WireRecord> = batches[0]
            .records_json()
            .map(|j| serde_json::from_slice(j).expect("record json"))
            .collect();
        assert_eq!(lines, records);
    }

    #[test]
    fn splits_by_count() {
        let records: Vec<WireRecord> = (0..25).map(record).collect();
        let batches = split(&records, 10, 32 << 20);
        let counts: Vec<u32> = batches.iter().map(|b| b.record_count).collect();
        assert_eq!(counts, [10, 10, 5]);
        let back: Vec<WireRecord> = batches
            .iter()
            .flat_map(|b| {
                serde_json::from_slice::<BatchPayload>(&b.plaintext)
                    .expect("payload")
                    .records
            })
            .collect();
        assert_eq!(back, records);
    }

    #[test]
    fn splits_by_sealed_bytes() {
        let records: Vec<WireRecord> = (0..200).map(record).collect();
        let one = serde_json::to_vec(&records[0]).expect("json").len() as u64;
        // Room for about 20 records of sealed JSON.
        let max_bytes = sealed_json_len_bound(20 * (one + 1) + 14);
        let batches = split(&records, 10_000, max_bytes);
        assert!(batches.len() >= 10, "{} batches", batches.len());
        let sk = HpkeSecretKey::generate();
        let keys = crate::keys::ProviderKeys::generate().expect("keys");
        let mut total = 0;
        for b in &batches {
            assert!(b.record_count <= 20);
            let sealed = seal_plaintext(
                &b.plaintext,
                b.record_count,
                agb(),
                new_batch_id(),
                &sk.public_key(),
                keys.signer(),
                &"ab".repeat(32),
                now_utc_seconds(),
            )
            .expect("seal");
            let len = serde_json::to_vec(&sealed).expect("json").len() as u64;
            assert!(len <= max_bytes, "{len} > {max_bytes}");
            assert!(len <= sealed_json_len_bound(b.plaintext.len() as u64));
            total += b.record_count;
        }
        assert_eq!(total, 200);
    }

    #[test]
    fn a_record_larger_than_a_batch_is_an_error() {
        let mut b = BatchBuilder::new(10, 1100).expect("builder");
        assert!(matches!(
            b.push(&record(1)),
            Err(BatchError::RecordTooLarge { .. })
        ));
        assert!(matches!(
            BatchBuilder::new(0, 1 << 20),
            Err(BatchError::ZeroBatchSize)
        ));
    }

    #[test]
    fn batch_ids_are_random_v4_per_attempt() {
        let (a, b) = (new_batch_id(), new_batch_id());
        assert_ne!(a, b, "two uploads of the same records are two uploads");
        assert_eq!(a.get_version_num(), 4);
    }

    #[test]
    fn sealed_records_open_to_the_same_records() {
        let sk = HpkeSecretKey::generate();
        let keys = crate::keys::ProviderKeys::generate().expect("keys");
        let records: Vec<WireRecord> = (0..4).map(record).collect();
        let id = Uuid::new_v4();
        let sealed = seal_records(
            &records,
            agb(),
            Some(id),
            &sk.public_key(),
            keys.signer(),
            &"ab".repeat(32),
            now_utc_seconds(),
        )
        .expect("seal");
        assert_eq!(sealed.header.batch_id, id);
        assert_eq!(sealed.header.record_count, 4);
        assert_eq!(sealed.header.created_at.nanosecond(), 0);
        envelope::verify_signature(&sealed, &keys.signing_public_key()).expect("signature");
        let plain = envelope::open(&sealed, &sk).expect("open");
        let payload: BatchPayload = serde_json::from_slice(&plain).expect("payload");
        assert_eq!(payload.records, records);
        let drawn = seal_records(
            &records,
            agb(),
            None,
            &sk.public_key(),
            keys.signer(),
            &"ab".repeat(32),
            now_utc_seconds(),
        )
        .expect("seal");
        assert_eq!(drawn.header.batch_id.get_version_num(), 4);
        assert_ne!(drawn.header.batch_id, id);
    }
}
