//! `kwm upload`: validate the whole export (pass 1), then stream it again into sealed batches and post them
//! (pass 2), or with `dry_run` print exactly what would be sent. Holds at most a few batches and the
//! trajectory prefixes of pass 1, never the file.

use std::collections::HashSet;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use futures::StreamExt;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use kwm_schemas::api::BatchReceipt;
use kwm_schemas::envelope::{EnvelopeError, HpkePublicKey, KeyId, PROTOCOL_VERSION};
use kwm_schemas::problem::ProblemType;
use kwm_schemas::{AgbCode, Pseudonym, RegionConfig, Role};
use serde::Serialize;
use uuid::Uuid;

use crate::batch::{self, BatchBuilder, BatchError, PlainBatch, DEFAULT_BATCH_SIZE};
use crate::client::{Client, ClientError, RetryPolicy};
use crate::export::{ExportError, ExportOptions};
use crate::keys::{ProviderKeys, RegionalKey};
use crate::prepare::{self, BadRow, PrepareContext, Records, RowOutcome, Validation};
use crate::pseudonym::Pseudonymiser;
use crate::secret::Token;

/// Batches posted at once by one upload.
const IN_FLIGHT: usize = 2;

/// Everything `kwm upload` needs. Build with [`UploadOptions::new`] and adjust the public fields.
#[derive(Debug)]
pub struct UploadOptions {
    pub file: PathBuf,
    /// Base URL of the service. Not contacted with `dry_run`.
    pub service: String,
    pub token: Option<Token>,
    pub keys: ProviderKeys,
    pub regional_key: RegionalKey,
    pub region: RegionConfig,
    /// Records per batch, 1 to the region's `max_batch_records`.
    pub batch_size: u32,
    /// Send the valid rows and leave the bad ones out, instead of sending nothing.
    pub skip_invalid: bool,
    /// Print what would be sent; contact nobody.
    pub dry_run: bool,
    /// Extra columns that may be in the export (see [`ExportOptions::ignore_columns`]).
    pub ignore_columns: Vec<String>,
    /// The provider's AGB code. Normally learnt from `GET /v1/me`; when set it must match.
    pub provider: Option<AgbCode>,
    /// Trajectories (pseudonyms) the provider withdrew: rows of these are left out and counted in
    /// [`UploadReport::rows_withdrawn`]. `kwm upload` fills it from the keys directory's
    /// [`crate::withdrawn::WithdrawnList`] unless `--include-withdrawn`.
    pub withdrawn: HashSet<Pseudonym>,
    pub retry: RetryPolicy,
    /// Draw a progress bar on stderr (never drawn when stderr is not a terminal).
    pub progress: bool,
}

impl UploadOptions {
    pub fn new(
        file: impl Into<PathBuf>,
        service: impl Into<String>,
        token: Option<Token>,
        keys: ProviderKeys,
        regional_key: RegionalKey,
    ) -> Self {
        Self {
            file: file.into(),
            service: service.into(),
            token,
            keys,
            regional_key,
            region: RegionConfig::wbw(),
            batch_size: DEFAULT_BATCH_SIZE,
            skip_invalid: false,
            dry_run: false,
            ignore_columns: Vec::new(),
            provider: None,
            withdrawn: HashSet::new(),
            retry: RetryPolicy::default(),
            progress: false,
        }
    }

    fn context(&self) -> PrepareContext {
        PrepareContext {
            region: self.region.clone(),
            pseudonymiser: Pseudonymiser::new(&self.regional_key, &self.keys),
            export: ExportOptions {
                ignore_columns: self.ignore_columns.clone(),
            },
        }
    }
}

/// What an upload did. `--json` prints exactly this.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct UploadReport {
    pub file: String,
    pub provider: Option<AgbCode>,
    pub dry_run: bool,
    pub batches: u32,
    /// Batches the service had stored before: a retry of this upload's own batch after a lost answer.
    /// Their records are counted in `replayed_records`, not in `stored`, `corrected` or `unchanged`:
    /// those say what this upload changed.
    pub replayed_batches: u32,
    /// Records of the replayed batches (stored by the first attempt; this upload changed nothing).
    pub replayed_records: u64,
    /// Batches sealed again to the service's new active key after a `retired-key`/`unknown-key` answer.
    pub resealed_batches: u32,
    pub rows_read: u64,
    /// Bad rows and rows of repeated trajectories left out (only with `skip_invalid`).
    pub rows_skipped: u64,
    /// Rows of trajectories the provider withdrew, left out (see [`UploadOptions::withdrawn`]).
    pub rows_withdrawn: u64,
    /// Records sent (or, in a dry run, that would be sent).
    pub records_sent: u64,
    /// Trajectories stored for the first time by this upload.
    pub stored: u64,
    /// Trajectories that replaced an earlier upload with other values.
    pub corrected: u64,
    /// Trajectories already stored with exactly these values (duplicates).
    pub unchanged: u64,
    pub receipts: Vec<BatchReceipt>,
}

/// Why an upload stopped.
#[derive(Debug, thiserror::Error)]
pub enum UploadError {
    #[error("{0}")]
    Options(String),
    #[error(transparent)]
    Export(#[from] ExportError),
    #[error("{file}: {bad_rows} of {rows} rows are not valid; nothing was sent. Correct them, or pass --skip-invalid to send only the valid rows")]
    InvalidRows {
        file: PathBuf,
        rows: u64,
        bad_rows: u64,
        /// The bad rows, when collected (see [`upload_file`]); the CLI prints them as they are found.
        reported: Vec<BadRow>,
    },
    #[error("{file}:{line}: this row was valid in the first pass but not in the second; the file changed during the upload. Nothing more was sent; run the upload again")]
    FileChanged { file: PathBuf, line: u64 },
    #[error("{during}: {source}")]
    Client {
        during: &'static str,
        #[source]
        source: ClientError,
    },
    #[error("this token has the role {role}, but uploads need a provider token (kwm-service admin provider add prints one)")]
    NotAProvider { role: Role },
    #[error("this token belongs to provider {token_agb}, but the settings name provider {configured}; check --agb / agb in kwm.toml and the token")]
    WrongProvider {
        token_agb: AgbCode,
        configured: AgbCode,
    },
    #[error("batch {number} (id {batch_id}) was refused; {stored_before} earlier batch(es) are stored (a re-run sends them again and finds their records unchanged): {source}")]
    Batch {
        number: u32,
        batch_id: Uuid,
        stored_before: u32,
        #[source]
        source: ClientError,
        /// What was done before the failure.
        report: Box<UploadReport>,
    },
    #[error(transparent)]
    Batching(#[from] BatchError),
    #[error("sealing failed: {0}")]
    Seal(#[from] EnvelopeError),
    #[error("writing the dry-run output failed: {0}")]
    Output(#[source] std::io::Error),
    #[error("the reading task failed: {0}")]
    Task(String),
}

impl UploadError {
    /// The CLI exit code: 2 for invalid input or usage, 1 for every other failure.
    pub fn exit_code(&self) -> i32 {
        match self {
            Self::Options(_) | Self::InvalidRows { .. } | Self::FileChanged { .. } => 2,
            Self::Export(ExportError::Header { .. } | ExportError::Empty { .. }) => 2,
            Self::Export(ExportError::Io { .. }) => 2,
            _ => 1,
        }
    }

    /// The problem type of the service's refusal, if that is what stopped the upload.
    pub fn problem_type(&self) -> Option<ProblemType> {
        match self {
            Self::Client { source, .. } | Self::Batch { source, .. } => source.problem_type(),
            _ => None,
        }
    }
}

/// Hooks for a caller that reports as the upload goes (the CLI prints bad rows the moment they are found).
pub trait UploadObserver {
    /// A bad row of pass 1.
    fn bad_row(&mut self, _file: &Path, _row: &BadRow) {}
    /// Pass 1 is done.
    fn validated(&mut self, _validation: &Validation) {}
    /// A batch was accepted.
    fn batch_done(&mut self, _number: u32, _receipt: &BatchReceipt) {}
}

/// Collects the bad rows (at most [`CollectBadRows::LIMIT`]) for [`UploadError::InvalidRows`].
#[derive(Debug, Default)]
pub struct CollectBadRows(pub Vec<BadRow>);

impl CollectBadRows {
    pub const LIMIT: usize = 10_000;
}

impl UploadObserver for CollectBadRows {
    fn bad_row(&mut self, _file: &Path, row: &BadRow) {
        if self.0.len() < Self::LIMIT {
            self.0.push(row.clone());
        }
    }
}

/// Uploads (or dry-runs, printing to stdout) a file, collecting bad rows into the error.
pub async fn upload_file(opts: &UploadOptions) -> Result<UploadReport, UploadError> {
    let mut collect = CollectBadRows::default();
    let mut stdout = std::io::stdout();
    let result = upload_file_with(opts, &mut collect, &mut stdout).await;
    match result {
        Err(UploadError::InvalidRows {
            file,
            rows,
            bad_rows,
            ..
        }) => Err(UploadError::InvalidRows {
            file,
            rows,
            bad_rows,
            reported: collect.0,
        }),
        other => other,
    }
}

/// Uploads a file, reporting to `observer`; a dry run writes its JSON lines to `out`.
pub async fn upload_file_with(
    opts: &UploadOptions,
    observer: &mut dyn UploadObserver,
    out: &mut dyn Write,
) -> Result<UploadReport, UploadError> {
    let max_records = opts.region.ingest.max_batch_records;
    if opts.batch_size == 0 || opts.batch_size > max_records {
        return Err(UploadError::Options(format!(
            "--batch-size must be between 1 and {max_records} (the region's limit)"
        )));
    }
    if !opts.dry_run && opts.token.as_ref().is_none_or(Token::is_empty) {
        return Err(UploadError::Options(
            "no token: pass --token, set KWM_TOKEN, or put token in kwm.toml".into(),
        ));
    }
    let ctx = Arc::new(opts.context());

    // Pass 1: every row, nothing kept but trajectory prefixes.
    let file = opts.file.clone();
    let validation =
        prepare::validate_file(&opts.file, &ctx, &mut |row| observer.bad_row(&file, row))?;
    observer.validated(&validation);
    if validation.bad_rows > 0 && !opts.skip_invalid {
        return Err(UploadError::InvalidRows {
            file: opts.file.clone(),
            rows: validation.rows,
            bad_rows: validation.bad_rows,
            reported: Vec::new(),
        });
    }

    if opts.dry_run {
        return dry_run(opts, &ctx, validation, out);
    }

    let token = opts.token.clone();
    let client = Client::new(&opts.service, token)
        .map_err(|source| UploadError::Client {
            during: "checking the service URL",
            source,
        })?
        .with_retry(opts.retry.clone());
    let me = client.me().await.map_err(|source| UploadError::Client {
        during: "asking the service who this token is (GET /v1/me)",
        source,
    })?;
    if me.role != Role::Provider {
        return Err(UploadError::NotAProvider { role: me.role });
    }
    let token_agb: AgbCode = me
        .scope
        .as_deref()
        .unwrap_or_default()
        .parse()
        .map_err(|_| UploadError::Client {
            during: "asking the service who this token is (GET /v1/me)",
            source: ClientError::Decode {
                url: format!("{}/v1/me", client.base_url()),
                message: "a provider token without an AGB code as its scope".into(),
            },
        })?;
    if let Some(configured) = opts.provider {
        if configured != token_agb {
            return Err(UploadError::WrongProvider {
                token_agb,
                configured,
            });
        }
    }
    let (mut key_id, mut key) =
        client
            .active_key()
            .await
            .map_err(|source| UploadError::Client {
                during: "fetching the service's public keys (GET /v1/keys)",
                source,
            })?;

    let mut report = UploadReport {
        file: opts.file.display().to_string(),
        provider: Some(token_agb),
        ..UploadReport::default()
    };

    // Pass 2: a reading thread builds plaintext batches; this task seals and posts them one at a time.
    // The channel holds one batch, so at most three are in memory.
    let (tx, mut rx) = tokio::sync::mpsc::channel::<PlainBatch>(1);
    let producer = {
        let ctx = Arc::clone(&ctx);
        let path = opts.file.clone();
        let exclude = validation.duplicates.clone();
        let batch_size = opts.batch_size;
        let max_bytes = opts.region.ingest.max_batch_bytes;
        let skip_invalid = opts.skip_invalid;
        let withdrawn = opts.withdrawn.clone();
        tokio::task::spawn_blocking(move || -> Result<(u64, u64, u64), UploadError> {
            let mut builder = BatchBuilder::new(batch_size, max_bytes)?;
            let mut records = Records::open(&path, &ctx, exclude)?;
            let (mut skipped, mut left_out) = (0u64, 0u64);
            for item in records.by_ref() {
                match item? {
                    RowOutcome::Record { record, .. } if withdrawn.contains(&record.trajectory) => {
                        left_out += 1
                    }
                    RowOutcome::Record { record, .. } => {
                        if let Some(b) = builder.push(&record)? {
                            if tx.blocking_send(b).is_err() {
                                // The uploader stopped; it reports why.
                                return Ok((records.rows(), skipped, left_out));
                            }
                        }
                    }
                    RowOutcome::Bad(row) if !skip_invalid => {
                        return Err(UploadError::FileChanged {
                            file: path.clone(),
                            line: row.line,
                        })
                    }
                    RowOutcome::Bad(_) | RowOutcome::Duplicate { .. } => skipped += 1,
                }
            }
            if let Some(b) = builder.finish() {
                let _ = tx.blocking_send(b);
            }
            Ok((records.rows(), skipped, left_out))
        })
    };

    let bar = progress_bar(opts.progress, validation.valid);
    let mut failure = None;
    // Up to IN_FLIGHT batches are posted at once, so that the service opens and stores one while the
    // next travels; receipts are taken in batch order.
    let mut in_flight = futures::stream::FuturesOrdered::new();
    let mut next_number = 0u32;
    let mut input_done = false;
    loop {
        while !input_done && in_flight.len() < IN_FLIGHT && failure.is_none() {
            match rx.recv().await {
                Some(plain) => {
                    next_number += 1;
                    let number = next_number;
                    // A new id per batch of this attempt; its retries (in the client) and a reseal
                    // reuse it.
                    let batch_id = batch::new_batch_id();
                    let current = (key_id.clone(), key.clone());
                    let client = &client;
                    in_flight.push_back(async move {
                        let result =
                            send_batch(client, opts, &plain, token_agb, batch_id, current).await;
                        (number, batch_id, plain.record_count, result)
                    });
                }
                None => input_done = true,
            }
        }
        let Some((number, batch_id, record_count, result)) = in_flight.next().await else {
            break;
        };
        match result {
            Ok((receipt, replayed, resealed, used)) => {
                if resealed {
                    (key_id, key) = used;
                }
                report.batches = number;
                report.replayed_batches += u32::from(replayed);
                report.resealed_batches += u32::from(resealed);
                report.records_sent += u64::from(record_count);
                if replayed {
                    // The original receipt's figures are what the first attempt changed.
                    report.replayed_records += u64::from(receipt.record_count);
                } else {
                    report.stored += u64::from(receipt.stored);
                    report.corrected += u64::from(receipt.corrected);
                    report.unchanged += u64::from(receipt.unchanged);
                }
                bar.inc(u64::from(record_count));
                observer.batch_done(number, &receipt);
                report.receipts.push(receipt);
            }
            Err(e) => {
                if failure.is_none() {
                    failure = Some((number, batch_id, e));
                }
                // Later batches still in flight finish (the service stores each whole or not at all),
                // but their receipts are not counted: a re-run sends them again (their rows unchanged).
                while in_flight.next().await.is_some() {}
                break;
            }
        }
    }
    drop(rx);
    bar.finish_and_clear();
    let produced = producer
        .await
        .map_err(|e| UploadError::Task(e.to_string()))?;
    if let Some((number, batch_id, e)) = failure {
        return Err(match e {
            SendError::Client(source) => UploadError::Batch {
                number,
                batch_id,
                stored_before: report.batches,
                source,
                report: Box::new(report),
            },
            SendError::Other(e) => e,
        });
    }
    let (rows, skipped, left_out) = produced?;
    report.rows_read = rows;
    report.rows_skipped = skipped;
    report.rows_withdrawn = left_out;
    Ok(report)
}

enum SendError {
    Client(ClientError),
    Other(UploadError),
}

/// Seals and posts one batch; on `retired-key`/`unknown-key` fetches the keys and reseals once to the
/// active key (same batch id). Returns the receipt, whether it was a replay and whether it was resealed.
async fn send_batch(
    client: &Client,
    opts: &UploadOptions,
    plain: &PlainBatch,
    provider: AgbCode,
    batch_id: Uuid,
    (key_id, key): (KeyId, HpkePublicKey),
) -> Result<(BatchReceipt, bool, bool, (KeyId, HpkePublicKey)), SendError> {
    let seal = |key: &HpkePublicKey| {
        batch::seal_plaintext(
            &plain.plaintext,
            plain.record_count,
            provider,
            batch_id,
            key,
            opts.keys.signer(),
            &opts.regional_key.check_value(),
            batch::now_utc_seconds(),
        )
        .map_err(|e| SendError::Other(e.into()))
    };
    let sealed = seal(&key)?;
    match client.post_batch(&sealed).await {
        Ok(o) => {
            let replayed = !o.created || o.receipt.replayed;
            Ok((
                checked(o.receipt, batch_id)?,
                replayed,
                false,
                (key_id, key),
            ))
        }
        Err(e)
            if matches!(
                e.problem_type(),
                Some(ProblemType::RetiredKey | ProblemType::UnknownKey)
            ) && e.problem().is_some_and(|p| p.active_key_id.is_some()) =>
        {
            let (new_id, new_key) = client.active_key().await.map_err(SendError::Client)?;
            if new_id == key_id {
                // The service refuses the key it publishes as active: resealing cannot help.
                return Err(SendError::Client(e));
            }
            tracing::warn!(old = %key_id, new = %new_id, "the service key changed; sealing again to the active key");
            let sealed = seal(&new_key)?;
            let o = client
                .post_batch(&sealed)
                .await
                .map_err(SendError::Client)?;
            let replayed = !o.created || o.receipt.replayed;
            Ok((
                checked(o.receipt, batch_id)?,
                replayed,
                true,
                (new_id, new_key),
            ))
        }
        Err(e) => Err(SendError::Client(e)),
    }
}

fn checked(receipt: BatchReceipt, batch_id: Uuid) -> Result<BatchReceipt, SendError> {
    if receipt.batch_id != batch_id {
        return Err(SendError::Client(ClientError::Decode {
            url: "/v1/batches".into(),
            message: format!(
                "the receipt is for batch {} but batch {batch_id} was sent",
                receipt.batch_id
            ),
        }));
    }
    Ok(receipt)
}

fn progress_bar(enabled: bool, total: u64) -> ProgressBar {
    if !enabled {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::with_draw_target(Some(total), ProgressDrawTarget::stderr());
    if let Ok(style) = ProgressStyle::with_template(
        "{spinner} uploading [{bar:40}] {pos}/{len} records, {per_sec}, eta {eta}",
    ) {
        bar.set_style(style.progress_chars("=> "));
    }
    bar
}

/// The header fields a dry run shows for a batch.
#[derive(Serialize)]
struct DryRunHeader {
    batch: u32,
    version: u16,
    provider: String,
    batch_id: &'static str,
    key_id: &'static str,
    record_count: u32,
    created_at: &'static str,
}

const FETCHED_AT_UPLOAD: &str = "(fetched at upload)";

/// Pass 2 of a dry run: for each batch one `{"batch": ...}` line with the header fields, then each
/// record's JSON exactly as it would be sealed, one per line.
fn dry_run(
    opts: &UploadOptions,
    ctx: &PrepareContext,
    validation: Validation,
    out: &mut dyn Write,
) -> Result<UploadReport, UploadError> {
    let mut builder = BatchBuilder::new(opts.batch_size, opts.region.ingest.max_batch_bytes)?;
    let mut records = Records::open(&opts.file, ctx, validation.duplicates)?;
    let mut report = UploadReport {
        file: opts.file.display().to_string(),
        provider: opts.provider,
        dry_run: true,
        ..UploadReport::default()
    };
    let mut emit = |b: PlainBatch, report: &mut UploadReport| -> Result<(), UploadError> {
        report.batches += 1;
        report.records_sent += u64::from(b.record_count);
        let header = DryRunHeader {
            batch: report.batches,
            version: PROTOCOL_VERSION,
            provider: opts
                .provider
                .map(|p| p.to_string())
                .unwrap_or_else(|| FETCHED_AT_UPLOAD.into()),
            batch_id: "(a new random id at upload)",
            key_id: FETCHED_AT_UPLOAD,
            record_count: b.record_count,
            created_at: "(set at upload)",
        };
        let line = serde_json::to_string(&serde_json::json!({ "batch": header }))
            .map_err(|e| UploadError::Output(e.into()))?;
        writeln!(out, "{line}").map_err(UploadError::Output)?;
        for r in b.records_json() {
            out.write_all(r).map_err(UploadError::Output)?;
            out.write_all(b"\n").map_err(UploadError::Output)?;
        }
        Ok(())
    };
    for item in records.by_ref() {
        match item? {
            RowOutcome::Record { record, .. } if opts.withdrawn.contains(&record.trajectory) => {
                report.rows_withdrawn += 1
            }
            RowOutcome::Record { record, .. } => {
                if let Some(b) = builder.push(&record)? {
                    emit(b, &mut report)?;
                }
            }
            RowOutcome::Bad(row) if !opts.skip_invalid => {
                return Err(UploadError::FileChanged {
                    file: opts.file.clone(),
                    line: row.line,
                })
            }
            RowOutcome::Bad(_) | RowOutcome::Duplicate { .. } => report.rows_skipped += 1,
        }
    }
    if let Some(b) = builder.finish() {
        emit(b, &mut report)?;
    }
    out.flush().map_err(UploadError::Output)?;
    report.rows_read = records.rows();
    Ok(report)
}
