//! The store: every SQL statement of the service lives behind the [`Store`] trait, with one module per
//! backend (`sqlite`, `postgres`), chosen once from the database URL. Migrations are embedded per backend.
//! A part of the service: it knows no use case and no HTTP; it decides nothing a use case decides.

use std::sync::Arc;

use async_trait::async_trait;
use kwm_schemas::api::BatchReceipt;
use kwm_schemas::envelope::KeyId;
use kwm_schemas::region::Epsilon;
use kwm_schemas::{AgbCode, Month, Pseudonym, Role, WireRecord};
use time::OffsetDateTime;
use uuid::Uuid;

use crate::audit::{AuditEntry, NewAuditEntry};

pub mod postgres;
mod research;
pub mod sqlite;
mod tether;

pub use research::{
    ExtractRecord, NewProject, NewResearchAnswer, Project, PutResearch, ResearchKind,
    ResearchLogEntry,
};

/// The store's error stays small: the domain decides what a conflict or a missing row means.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("not found")]
    NotFound,
    /// A unique key is taken by other content (a provider registered twice, a batch id reused).
    #[error("conflict: {0}")]
    Conflict(String),
    /// The database could not be reached or timed out: retrying later may succeed.
    #[error("database unavailable: {0}")]
    Unavailable(String),
    /// A change-feed mark this database never handed out (it was restored to an earlier state, or the
    /// caller's mark is from another database): the caller's copy must be loaded again from 0.
    #[error("change mark {since} was not handed out by this database (newest change: {newest})")]
    UnknownMark { since: i64, newest: i64 },
    /// An action's audit entry could not be appended in the action's transaction: the action was
    /// rolled back with it, nothing changed.
    #[error("the audit entry could not be written, so nothing was changed: {0}")]
    AuditUnwritten(Box<StoreError>),
    #[error(transparent)]
    Other(#[from] anyhow::Error),
}

/// The conflict of a signing public key that `holder` registered already.
pub fn key_taken(holder: &str) -> StoreError {
    StoreError::Conflict(format!(
        "this signing public key is already registered for provider {holder}; every provider signs \
         with its own key (`kwm keygen` makes one)"
    ))
}

/// A provider as registered by the admin.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Provider {
    pub agb: AgbCode,
    pub name: String,
    /// Raw 32-byte Ed25519 public key the provider signs batches with.
    pub signing_public_key: Vec<u8>,
    pub created_at: OffsetDateTime,
}

/// A bearer token, as stored: only the SHA-256 of the token, never the token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewToken {
    pub token_hash: [u8; 32],
    pub role: Role,
    /// CBS code for a municipality, project for a researcher, AGB for a provider, none otherwise.
    pub scope: Option<String>,
    pub label: String,
    pub created_at: OffsetDateTime,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenRecord {
    pub id: i64,
    pub role: Role,
    pub scope: Option<String>,
    pub label: String,
    pub created_at: OffsetDateTime,
    pub revoked_at: Option<OffsetDateTime>,
}

/// A dashboard session being opened: the SHA-256 of the secret in the browser's cookie (the secret itself
/// is never stored), and the token it was opened with.
#[derive(Debug, Clone)]
pub struct NewSession {
    pub session_hash: [u8; 32],
    pub token_id: i64,
    pub created_at: OffsetDateTime,
    pub expires_at: OffsetDateTime,
}

/// A batch that has been opened, validated and pseudonymised a second time, ready to be stored whole.
#[derive(Debug, Clone)]
pub struct NewBatch {
    pub provider: AgbCode,
    pub batch_id: Uuid,
    pub key_id: KeyId,
    /// SHA-256 of the plaintext: the content the batch id is bound to.
    pub content_digest: [u8; 32],
    pub received_at: OffsetDateTime,
    /// Records whose `client` is already the stage-2 (service-keyed) pseudonym.
    pub records: Vec<WireRecord>,
}

/// The outcome of [`Store::put_batch`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PutBatch {
    /// Stored now, in one transaction.
    Stored(BatchReceipt),
    /// The same provider already stored this batch id with the same content digest: the original receipt,
    /// and nothing was written.
    Replayed(BatchReceipt),
    /// The provider withdrew a batch with this id (at `at`): nothing was written. A withdrawn batch id
    /// stays refused, so that re-posting the old sealed batch cannot bring its rows back.
    Withdrawn { at: OffsetDateTime },
}

/// A release as the ledger keeps it: the engine's figures (`body`, the JSON of
/// `kwm_schemas::release::Release` with the ledger's fields filled in) and what the ledger needs to
/// find it again.
#[derive(Debug, Clone, PartialEq)]
pub struct StoredRelease {
    pub id: Uuid,
    /// `region` or a CBS code (`GM0748`).
    pub scope: String,
    /// `2025`, `2025-H1`, `2025-Q3`.
    pub period: String,
    /// 1 for the first release of (scope, period), then 2, 3, ...
    pub version: u32,
    /// The data version the release was computed from ([`Store::data_version`]).
    pub data_version: String,
    pub epsilon: Epsilon,
    pub created_at: OffsetDateTime,
    pub body: serde_json::Value,
}

/// A release to be frozen in the ledger by [`Store::put_release`].
#[derive(Debug, Clone, PartialEq)]
pub struct NewRelease {
    pub id: Uuid,
    pub scope: String,
    pub period: String,
    pub data_version: String,
    /// Charged to every partition in `partitions`.
    pub epsilon: Epsilon,
    /// Budget partitions the release reads, such as `GM0748/2025-Q1`.
    pub partitions: Vec<String>,
    /// Lifetime cap of every partition.
    pub cap: Epsilon,
    pub created_at: OffsetDateTime,
    pub body: serde_json::Value,
}

/// The outcome of [`Store::put_release`].
#[derive(Debug, Clone, PartialEq)]
pub enum PutRelease {
    /// Stored now with this version, and every partition charged, in one transaction.
    Stored(StoredRelease),
    /// A release of the same (scope, period, data_version) was stored first (by another request or
    /// another instance): that one, and nothing was charged.
    Existing(StoredRelease),
    /// Storing it would take `partition` past its cap: nothing was stored or charged.
    BudgetExhausted {
        partition: String,
        spent: Epsilon,
        cap: Epsilon,
    },
}

/// One rho of zero-concentrated DP in the accountant's exact integer units.
pub const NANOS_PER_RHO: i64 = 1_000_000_000;

/// Data years the accountant keeps: the year range of [`Month`].
pub const DATA_YEARS: std::ops::RangeInclusive<u16> = 1900..=2999;

/// A release round to be stored by [`Store::put_round`]: one period for the whole region (a release per
/// scope), computed from one noisy measurement and charged once to every data year it reads.
#[derive(Debug, Clone, PartialEq)]
pub struct NewRound {
    pub id: Uuid,
    /// `2025`, `2025-H1`, `2025-Q3`.
    pub period: String,
    /// The data version the round was computed from ([`Store::data_version`]).
    pub data_version: String,
    /// Rho charged per data year, in nano-rho, sorted by year, no duplicates, every value > 0.
    pub charges: Vec<(u16, i64)>,
    /// No data year may pass this spend (nano-rho) through this charge: the cap for rounds (the
    /// region's cap per data year minus its research reserve).
    pub cap_nanos: i64,
    /// Who published it: `region token 7`, `calendar`, `cli root`.
    pub published_by: String,
    pub created_at: OffsetDateTime,
    /// Store only if the period has no round yet (the calendar publishes each period once across
    /// replicas); otherwise the answer is `Unchanged` with the newest version.
    pub first_only: bool,
    pub releases: Vec<NewRoundRelease>,
    /// The round's audit entry, appended to the audit chain in the same transaction as the round and
    /// its charges (the caller builds it, subject and digest included).
    pub audit: NewAuditEntry,
}

/// One release of a [`NewRound`].
#[derive(Debug, Clone, PartialEq)]
pub struct NewRoundRelease {
    pub id: Uuid,
    /// `GM0748`, `region`, `providers`.
    pub scope: String,
    /// The release JSON, kept verbatim.
    pub body: serde_json::Value,
}

/// The outcome of [`Store::put_round`].
#[derive(Debug, Clone, PartialEq)]
pub enum PutRound {
    /// Stored with the next version of the period, charged, and its audit entry appended.
    Stored(RoundRecord),
    /// The newest version of the period was computed from the same `data_version` (or `first_only`
    /// and the period has a round): that one; nothing stored or charged, no audit entry.
    Unchanged(RoundRecord),
    /// Charging would take `year` past `cap_nanos`: nothing stored or charged, no audit entry.
    BudgetExhausted {
        year: u16,
        /// The year's spend when the round was refused.
        spent_nanos: i64,
        /// What the round would have charged the year.
        asked_nanos: i64,
        cap_nanos: i64,
    },
}

/// A stored round, without its release bodies.
#[derive(Debug, Clone, PartialEq)]
pub struct RoundRecord {
    pub id: Uuid,
    pub period: String,
    /// 1 for the first round of the period, then 2, 3, ... for its corrections.
    pub version: u32,
    pub data_version: String,
    /// Rho charged per data year (nano-rho), sorted by year.
    pub charges: Vec<(u16, i64)>,
    pub published_by: String,
    pub created_at: OffsetDateTime,
    /// (scope, release id), sorted by scope.
    pub releases: Vec<(String, Uuid)>,
    /// Sequence number of the round's audit entry.
    pub audit_seq: i64,
}

/// One release of a stored round, with its figures.
#[derive(Debug, Clone, PartialEq)]
pub struct StoredRoundRelease {
    pub id: Uuid,
    pub round_id: Uuid,
    pub scope: String,
    pub period: String,
    /// The round's version.
    pub version: u32,
    /// The round's time.
    pub created_at: OffsetDateTime,
    pub body: serde_json::Value,
}

/// One charge of the privacy accountant.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PrivacyCharge {
    pub data_year: u16,
    pub rho_nanos: i64,
    /// `round` (research answers will add `query`).
    pub subject_kind: String,
    /// The round id.
    pub subject_id: String,
    pub at: OffsetDateTime,
}

/// Checks what [`Store::put_round`] promises to refuse before anything is written: charges sorted by
/// year, unique, positive and in [`DATA_YEARS`]; a cap of at least 0; at least one release, scopes
/// and release ids unique.
pub(crate) fn check_new_round(round: &NewRound) -> Result<(), StoreError> {
    let refuse = |why: String| {
        Err(StoreError::Other(anyhow::anyhow!(
            "round {} of {} refused: {why}",
            round.id,
            round.period
        )))
    };
    if round.charges.is_empty() {
        return refuse("it charges no data year (every round reads at least one)".into());
    }
    for (i, &(year, rho)) in round.charges.iter().enumerate() {
        if !DATA_YEARS.contains(&year) {
            return refuse(format!(
                "data year {year} is outside {}..={}",
                DATA_YEARS.start(),
                DATA_YEARS.end()
            ));
        }
        if rho <= 0 {
            return refuse(format!(
                "the charge to {year} is {rho} nano-rho (must be more than 0)"
            ));
        }
        if i > 0 && round.charges[i - 1].0 >= year {
            return refuse(format!(
                "the charges are not sorted by data year without duplicates ({} before {year})",
                round.charges[i - 1].0
            ));
        }
    }
    if round.cap_nanos < 0 {
        return refuse(format!("the cap {} nano-rho is negative", round.cap_nanos));
    }
    if round.releases.is_empty() {
        return refuse("it has no release".into());
    }
    let mut scopes = std::collections::HashSet::with_capacity(round.releases.len());
    let mut ids = std::collections::HashSet::with_capacity(round.releases.len());
    for r in &round.releases {
        if !scopes.insert(r.scope.as_str()) {
            return refuse(format!("scope {} has two releases", r.scope));
        }
        if !ids.insert(r.id) {
            return refuse(format!("release id {} is used twice", r.id));
        }
    }
    Ok(())
}

/// How many times [`Store::put_round`] tries, the first included, when an attempt fails on a
/// serialisation failure, a deadlock or a lock timeout.
pub(crate) const ROUND_ATTEMPTS: usize = 5;

/// The pause after failed attempt `attempt` (1, 2, ...) of [`Store::put_round`]: short, and longer
/// each time, so that the contenders do not meet again at once.
pub(crate) fn round_retry_pause(attempt: usize) -> std::time::Duration {
    std::time::Duration::from_millis(20 * attempt as u64)
}

/// What one provider's withdrawal removed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Withdrawn {
    /// Trajectory rows deleted.
    pub trajectories: u64,
    /// Batch receipts deleted (a batch whose rows are all gone no longer exists).
    pub batches: u64,
}

/// Where [`Store::trajectory_changes`] delivers what changed: first every removed key, then every
/// current row of the batches committed since the mark.
pub trait ChangeSink: Send {
    /// A trajectory of `provider` was withdrawn (its stage-1 trajectory pseudonym).
    fn removed(&mut self, provider: AgbCode, trajectory: &Pseudonym);
    /// The row as stored now (client: the stage-2 pseudonym).
    fn upsert(&mut self, provider: AgbCode, record: WireRecord);
}

/// What a stored service key is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ServiceKeyKind {
    /// The second-stage pseudonymisation key (one per database, never rotated).
    Pseudonym,
    /// An HPKE key pair batches are sealed to.
    Hpke,
}

impl ServiceKeyKind {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Pseudonym => "pseudonym",
            Self::Hpke => "hpke",
        }
    }

    pub(crate) fn parse(s: &str) -> Result<Self, StoreError> {
        match s {
            "pseudonym" => Ok(Self::Pseudonym),
            "hpke" => Ok(Self::Hpke),
            _ => Err(StoreError::Other(anyhow::anyhow!(
                "the database holds an invalid value in service_keys.kind"
            ))),
        }
    }
}

/// One of the service's keys as the database keeps it: the secret sealed under the master key
/// (the store never sees a key in the clear), the public half of an HPKE key, and its dates.
#[derive(Clone, PartialEq, Eq)]
pub struct StoredServiceKey {
    /// `pseudonym`, or the HPKE key id.
    pub id: String,
    pub kind: ServiceKeyKind,
    /// Nonce, ciphertext and tag (see `crate::keys::MasterKey`).
    pub sealed: Vec<u8>,
    /// The raw HPKE public key; `None` for the pseudonymisation key.
    pub public_key: Option<Vec<u8>>,
    pub created_at: OffsetDateTime,
    pub activates_at: OffsetDateTime,
    pub retires_at: Option<OffsetDateTime>,
}

impl std::fmt::Debug for StoredServiceKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StoredServiceKey")
            .field("id", &self.id)
            .field("kind", &self.kind)
            .field("created_at", &self.created_at)
            .field("activates_at", &self.activates_at)
            .field("retires_at", &self.retires_at)
            .finish_non_exhaustive()
    }
}

/// The keyed check values of a database's key set: HMACs of fixed labels under the master key and
/// under the pseudonymisation key, never the keys. They tell an instance whether the keys it holds
/// are this database's.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyCheck {
    pub master_check: [u8; 32],
    pub pseudonym_check: [u8; 32],
    pub created_at: OffsetDateTime,
}

/// The registered check value of the region's pseudonymisation key (HMAC-SHA256 of a fixed label under
/// the key; never the key).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RegionalKeyCheck {
    pub check_value: [u8; 32],
    pub registered_at: OffsetDateTime,
}

impl RegionalKeyCheck {
    /// From the 64 hex digits that `kwm keygen --regional` prints; `None` for anything else.
    pub fn from_hex(text: &str, registered_at: OffsetDateTime) -> Option<Self> {
        let check_value = hex::decode(text.trim()).ok()?.try_into().ok()?;
        Some(Self {
            check_value,
            registered_at,
        })
    }
}

/// Connections of a store's pool at one moment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PoolStatus {
    /// Open connections, in use or idle.
    pub size: u32,
    /// Open connections waiting for a query.
    pub idle: u32,
}

/// Every query the service makes. Implementations: [`sqlite::SqliteStore`], [`postgres::PgStore`].
/// Makes an action's audit entry from its outcome, for the store to append in the action's own
/// transaction.
pub type RecordFn<T> = dyn Fn(&T) -> crate::audit::NewAuditEntry + Send + Sync;

/// Trajectories per page of [`Store::list_trajectories`] (and of an export).
pub const TRAJECTORY_PAGE: u32 = 1000;

#[async_trait]
pub trait Store: Send + Sync + std::fmt::Debug + 'static {
    /// Cheap round trip for `/readyz`.
    async fn ping(&self) -> Result<(), StoreError>;

    /// Connections of the pool, for the metrics; `None` where a store has no pool.
    fn pool_status(&self) -> Option<PoolStatus> {
        None
    }

    /// Registers a provider. `Conflict` if the AGB code is already registered, or if another
    /// provider registered the same signing public key (one key signs for one AGB code only).
    async fn put_provider(&self, provider: &Provider) -> Result<(), StoreError> {
        self.put_provider_recorded(provider, None).await
    }
    /// [`Store::put_provider`], with the registration's audit entry appended in its transaction: no
    /// crash leaves a provider registered without its entry, and a failed append registers nothing
    /// (`AuditUnwritten`). The same holds for every `*_recorded` method below.
    async fn put_provider_recorded(
        &self,
        provider: &Provider,
        audit: Option<&NewAuditEntry>,
    ) -> Result<(), StoreError>;
    /// Replaces a provider's signing public key: batches signed with the old key are refused from
    /// now on. `NotFound` if the provider is not registered, `Conflict` if another provider holds
    /// the key.
    async fn put_provider_key(
        &self,
        agb: AgbCode,
        signing_public_key: &[u8],
    ) -> Result<(), StoreError> {
        self.put_provider_key_recorded(agb, signing_public_key, None)
            .await
    }
    async fn put_provider_key_recorded(
        &self,
        agb: AgbCode,
        signing_public_key: &[u8],
        audit: Option<&NewAuditEntry>,
    ) -> Result<(), StoreError>;
    async fn get_provider(&self, agb: AgbCode) -> Result<Option<Provider>, StoreError>;
    async fn list_providers(&self) -> Result<Vec<Provider>, StoreError>;

    /// Stores a token hash and returns its id. `Conflict` if the hash exists.
    async fn put_token(&self, token: &NewToken) -> Result<i64, StoreError> {
        self.put_token_recorded(token, None).await
    }
    /// [`Store::put_token`], with the issuance's entry, which `record` makes from the new token's id.
    async fn put_token_recorded(
        &self,
        token: &NewToken,
        record: Option<&RecordFn<i64>>,
    ) -> Result<i64, StoreError>;
    /// The token with this hash, revoked or not.
    async fn get_token(&self, token_hash: &[u8; 32]) -> Result<Option<TokenRecord>, StoreError>;

    /// Stores a whole batch in one transaction, or nothing:
    /// - batch id withdrawn before by this provider: `Withdrawn`, nothing written.
    /// - batch id new for this provider: insert every trajectory keyed by (provider, trajectory
    ///   pseudonym); a trajectory already stored with other values is corrected (replaced), one with
    ///   the same values is counted unchanged; either way this batch becomes the row's carrier (the
    ///   newest batch that carried it, see [`Store::withdraw_batch`]); the receipt is stored with the
    ///   batch.
    /// - batch id known with the same `content_digest`: `Replayed` with the original receipt.
    /// - batch id known with another digest: `Err(Conflict)`.
    ///
    /// Two records of one batch never share a trajectory pseudonym (the service checks this first).
    ///
    /// Timestamps are kept to the microsecond: the receipt returned carries `received_at` as stored,
    /// so it equals what `get_batch` returns later. Concurrent calls with the same batch id end with
    /// one `Stored` and the others `Replayed` (or `Conflict`), never a duplicate. A lost connection or
    /// a lock held too long is `Unavailable`; a value the schema refuses is `Other`.
    async fn put_batch(&self, batch: &NewBatch) -> Result<PutBatch, StoreError> {
        self.put_batch_recorded(batch, None).await
    }

    /// [`Store::put_batch`], with the upload's audit entry: when the batch is `Stored`, `record` makes
    /// the entry from the receipt and it is appended in the same transaction, so that no crash leaves a
    /// stored batch without its entry (a replay, a conflict or a withdrawn batch appends nothing here).
    async fn put_batch_recorded(
        &self,
        batch: &NewBatch,
        record: Option<&RecordFn<BatchReceipt>>,
    ) -> Result<PutBatch, StoreError>;
    async fn get_batch(
        &self,
        provider: AgbCode,
        batch_id: Uuid,
    ) -> Result<Option<BatchReceipt>, StoreError>;
    /// The provider's batches, newest first.
    async fn list_batches(&self, provider: AgbCode) -> Result<Vec<BatchReceipt>, StoreError>;

    /// Number of stored trajectories, of one provider or of all.
    async fn count_trajectories(&self, provider: Option<AgbCode>) -> Result<u64, StoreError>;
    /// The provider's own stored trajectories (stage-2 client pseudonyms), ordered by trajectory pseudonym.
    async fn list_trajectories(&self, provider: AgbCode) -> Result<Vec<WireRecord>, StoreError> {
        let mut all: Vec<WireRecord> = Vec::new();
        loop {
            let after = all.last().map(|r| r.trajectory);
            let page = self
                .list_trajectories_page(provider, after.as_ref(), TRAJECTORY_PAGE)
                .await?;
            let last = page.len() < TRAJECTORY_PAGE as usize;
            all.extend(page);
            if last {
                return Ok(all);
            }
        }
    }

    /// At most `limit` of the provider's stored trajectories with a trajectory pseudonym above `after`
    /// (from the first when `None`), ordered by trajectory pseudonym: an export reads them page by page.
    async fn list_trajectories_page(
        &self,
        provider: AgbCode,
        after: Option<&Pseudonym>,
        limit: u32,
    ) -> Result<Vec<WireRecord>, StoreError>;

    /// Every stored trajectory (of every provider) whose months overlap `from..=to`: started on or
    /// before `to` and not ended before `from`. Ordered by provider, then trajectory pseudonym, so that
    /// the release engine sees the same input in the same order on both backends.
    async fn list_trajectories_between(
        &self,
        from: Month,
        to: Month,
    ) -> Result<Vec<(AgbCode, WireRecord)>, StoreError>;

    /// What changed in the trajectories since `since` (a mark this method returned before; 0: nothing
    /// yet), for the release engine's in-memory index. Reads one consistent snapshot that contains
    /// every change up to the returned mark and no part of a later one: removals since the mark go to
    /// `sink.removed` first (none when `since` is 0), then every row currently stored by a batch
    /// committed after the mark (every row when `since` is 0) to `sink.upsert`. Replaying the calls in
    /// that order on a copy taken at `since` gives the stored table at the returned mark. Marks only
    /// grow; with no change since `since` it returns `since` without a snapshot. A mark this database
    /// never handed out (negative, or past its newest change) is `Other`.
    async fn trajectory_changes(
        &self,
        since: i64,
        sink: &mut dyn ChangeSink,
    ) -> Result<i64, StoreError>;

    /// Erases the trajectory pseudonym of every removal in the change feed recorded before `before`
    /// (a withdrawn trajectory then leaves no pseudonym behind). Returns how many were erased. A later
    /// [`Store::trajectory_changes`] from a mark below an erased removal is `UnknownMark`: that reader
    /// may have missed it and must load from 0.
    async fn prune_change_feed(&self, before: OffsetDateTime) -> Result<u64, StoreError>;

    /// Makes deleted content leave the disk where the backend can do so online. SQLite (with
    /// `secure_delete` on) keeps earlier versions of pages in its write-ahead log until a checkpoint:
    /// this checkpoints and truncates it. PostgreSQL keeps dead rows until VACUUM reuses their space,
    /// which autovacuum does; `VACUUM FULL` rewrites the tables (README, "Erasure").
    async fn erase_deleted(&self) -> Result<(), StoreError> {
        Ok(())
    }

    /// A short string that changes whenever stored data change in a way a release could see: a batch
    /// that stored or corrected rows, or a withdrawal that removed rows (the change feed's newest
    /// number). Cheap: called on every release request.
    async fn data_version(&self) -> Result<String, StoreError>;

    /// Freezes a release and charges its epsilon to each of its partitions, in one transaction:
    /// partitions are charged in sorted order (no deadlock between two instances), spend is kept in
    /// exact integer units (nano-epsilon), and no partition ever passes `cap`, however many requests
    /// race on however many instances. Unique on (scope, period, data_version): the loser of a race
    /// gets `Existing`. `version` is one more than the newest of (scope, period).
    async fn put_release(&self, release: &NewRelease) -> Result<PutRelease, StoreError>;
    async fn get_release(&self, id: Uuid) -> Result<Option<StoredRelease>, StoreError>;
    /// The newest version of (scope, period).
    async fn get_latest_release(
        &self,
        scope: &str,
        period: &str,
    ) -> Result<Option<StoredRelease>, StoreError>;
    /// The id and data version of the newest version of (scope, period), without its figures, and
    /// the current [`Store::data_version`], in one round trip: what a release request needs to decide
    /// whether the frozen release is still current.
    async fn get_latest_release_head(
        &self,
        scope: &str,
        period: &str,
    ) -> Result<(Option<(Uuid, String)>, String), StoreError>;
    /// Releases, newest first, optionally of one scope and/or one period (no bodies are needed by
    /// callers of a listing, but they are returned whole for simplicity).
    async fn list_releases(
        &self,
        scope: Option<&str>,
        period: Option<&str>,
    ) -> Result<Vec<StoredRelease>, StoreError>;
    /// Epsilon spent so far on each of `partitions` (`None`: never charged), in the order asked.
    async fn budget_spent(&self, partitions: &[String])
        -> Result<Vec<Option<Epsilon>>, StoreError>;
    /// Every charged partition with its spend, sorted by partition.
    async fn list_budget(&self) -> Result<Vec<(String, Epsilon)>, StoreError>;

    /// Stores a round, its releases and its audit entry, and charges each of its data years, in one
    /// transaction. Years are charged in ascending order (no deadlock between instances), and no year's
    /// spend ever passes `cap_nanos`, however many rounds race on however many instances. Rounds of one
    /// period take turns (PostgreSQL: an advisory transaction lock on the period, taken first; SQLite:
    /// the write lock), so `version` is the newest + 1 and two instances publishing the same data
    /// version store it once (the second gets `Unchanged`). Retries a bounded number of times on a
    /// serialisation failure, deadlock or lock timeout (then `Unavailable`).
    ///
    /// Refused with `Other`, before anything is written: charges not sorted by year, duplicated, not
    /// positive or outside [`DATA_YEARS`]; no charge; a negative cap; no release; a scope or release
    /// id twice. A round or release id that is stored already is `Conflict`. Timestamps are kept to
    /// the microsecond, as for batches.
    async fn put_round(&self, round: &NewRound) -> Result<PutRound, StoreError>;
    /// Rounds, newest first (by created_at, then version, then the order stored), optionally of one
    /// period.
    async fn list_rounds(&self, period: Option<&str>) -> Result<Vec<RoundRecord>, StoreError>;
    /// One release of any version of any round.
    async fn get_round_release(&self, id: Uuid) -> Result<Option<StoredRoundRelease>, StoreError>;
    /// The release of `scope` in the newest version of the period's round (one query); `None` when
    /// the period has no round or its newest version has no release of `scope`.
    async fn get_latest_round_release(
        &self,
        scope: &str,
        period: &str,
    ) -> Result<Option<StoredRoundRelease>, StoreError>;
    /// The id of that release only (no figures): what a read by scope and period needs to find the
    /// frozen release in memory.
    async fn get_latest_round_release_id(
        &self,
        scope: &str,
        period: &str,
    ) -> Result<Option<Uuid>, StoreError>;
    /// Spend so far (nano-rho) per data year asked (0 for a year never charged), in the order asked.
    async fn privacy_spent(&self, years: &[u16]) -> Result<Vec<i64>, StoreError>;
    /// Every charge, ordered by data year, then time, then the order stored.
    async fn list_privacy_charges(&self) -> Result<Vec<PrivacyCharge>, StoreError>;

    /// Appends an entry to the audit chain: the store takes the newest entry's sequence number and
    /// hash and appends the chained entry (`crate::audit::chain_next`) in one transaction, serialised
    /// so that two instances never fork the chain.
    async fn append_audit(&self, entry: &NewAuditEntry) -> Result<AuditEntry, StoreError>;
    /// Audit entries with `seq > after`, oldest first, at most `limit`; only the entries about
    /// `provider`'s data (`NewAuditEntry::provider`) when given.
    async fn list_audit(
        &self,
        after: i64,
        limit: u32,
        provider: Option<AgbCode>,
    ) -> Result<Vec<AuditEntry>, StoreError>;

    /// Removes one of the provider's batches, in one transaction: every trajectory row this batch is
    /// the carrier of (the newest batch that carried it, changed or unchanged) and the batch receipt;
    /// the batch id is kept as withdrawn, so that [`Store::put_batch`] refuses it from now on. Rows
    /// the batch carried that a later batch carried again (a correction, or a full re-export that
    /// repeats them unchanged) belong to that later batch and stay. `NotFound` if the provider has no
    /// such batch (or withdrew it already).
    async fn withdraw_batch(
        &self,
        provider: AgbCode,
        batch_id: Uuid,
    ) -> Result<Withdrawn, StoreError> {
        Ok(self
            .withdraw_batch_recorded(provider, batch_id, None)
            .await?
            .0)
    }
    /// [`Store::withdraw_batch`] with its audit entry, made by `record` from what was removed and
    /// appended in the withdrawal's transaction; returns the entry's sequence number with it.
    async fn withdraw_batch_recorded(
        &self,
        provider: AgbCode,
        batch_id: Uuid,
        record: Option<&RecordFn<Withdrawn>>,
    ) -> Result<(Withdrawn, Option<i64>), StoreError>;
    /// Removes one of the provider's trajectories (by its stage-1 trajectory pseudonym); a batch left
    /// without rows (none it wrote, none it carries) is removed too, and its id kept as withdrawn.
    /// `NotFound` if the provider has no such trajectory.
    async fn withdraw_trajectory(
        &self,
        provider: AgbCode,
        trajectory: &Pseudonym,
    ) -> Result<Withdrawn, StoreError> {
        Ok(self
            .withdraw_trajectory_recorded(provider, trajectory, None)
            .await?
            .0)
    }
    /// [`Store::withdraw_trajectory`] with its audit entry, as [`Store::withdraw_batch_recorded`].
    async fn withdraw_trajectory_recorded(
        &self,
        provider: AgbCode,
        trajectory: &Pseudonym,
        record: Option<&RecordFn<Withdrawn>>,
    ) -> Result<(Withdrawn, Option<i64>), StoreError>;

    /// The registered check value of the region's key; `None` while none is registered.
    async fn get_regional_key_check(&self) -> Result<Option<RegionalKeyCheck>, StoreError>;
    /// Registers the check value of the region's key. `Conflict` if another one is registered and
    /// `replace` is false (the old one stays).
    async fn put_regional_key_check(
        &self,
        check: &RegionalKeyCheck,
        replace: bool,
    ) -> Result<(), StoreError> {
        self.put_regional_key_check_recorded(check, replace, None)
            .await
    }
    async fn put_regional_key_check_recorded(
        &self,
        check: &RegionalKeyCheck,
        replace: bool,
        audit: Option<&NewAuditEntry>,
    ) -> Result<(), StoreError>;

    /// The check values of the database's key set; `None` while the key set was never initialised.
    async fn get_key_check(&self) -> Result<Option<KeyCheck>, StoreError>;
    /// Initialises the key set: stores the check values and the keys in one transaction, unless the
    /// database has a key set already (another instance initialised it first): then it writes
    /// nothing and returns `false`.
    async fn put_key_set(
        &self,
        check: &KeyCheck,
        keys: &[StoredServiceKey],
    ) -> Result<bool, StoreError>;
    /// Every stored service key, oldest activation first (the pseudonymisation key included).
    async fn list_service_keys(&self) -> Result<Vec<StoredServiceKey>, StoreError>;
    /// Rotation, in one transaction: every HPKE key without a retirement date retires at
    /// `retire_at`, and `key` (an HPKE key) is added. `Conflict` if its id is taken.
    async fn put_rotated_key(
        &self,
        key: &StoredServiceKey,
        retire_at: OffsetDateTime,
    ) -> Result<(), StoreError> {
        self.put_rotated_key_recorded(key, retire_at, None).await
    }
    async fn put_rotated_key_recorded(
        &self,
        key: &StoredServiceKey,
        retire_at: OffsetDateTime,
        audit: Option<&NewAuditEntry>,
    ) -> Result<(), StoreError>;
    /// Deletes the HPKE keys retired before `before` (a batch sealed to one is refused anyway);
    /// returns how many. Never the pseudonymisation key, never a key that is not retired.
    async fn delete_retired_keys(&self, before: OffsetDateTime) -> Result<u64, StoreError>;

    /// Registers a research project under the next free id (`p1`, `p2`, ...), with its entry, which
    /// `record` makes from the project as stored.
    async fn put_project_recorded(
        &self,
        project: &NewProject,
        record: &RecordFn<Project>,
    ) -> Result<Project, StoreError>;
    /// Every research project, oldest first.
    async fn list_projects(&self) -> Result<Vec<Project>, StoreError>;
    async fn get_project(&self, id: &str) -> Result<Option<Project>, StoreError> {
        Ok(self.list_projects().await?.into_iter().find(|p| p.id == id))
    }
    /// Closes a project at `at`, with its entry: no answer is given it from then on. `NotFound` if
    /// there is no such project; closing twice keeps the first time (and appends nothing).
    async fn close_project_recorded(
        &self,
        id: &str,
        at: OffsetDateTime,
        audit: &NewAuditEntry,
    ) -> Result<(), StoreError>;
    /// Charges an answer to its project and to each data year it reads, and stores it with its audit
    /// entry, all in one transaction, or nothing: the project must be open and not past its last day
    /// (by `answer.at`), its spend plus `rho_nanos` at most its rho, and each year's research spend
    /// plus `rho_nanos` at most `reserve_nanos`. However many answers race on however many
    /// instances, no project and no year passes its cap.
    async fn put_research_answer(
        &self,
        answer: &NewResearchAnswer,
    ) -> Result<PutResearch, StoreError>;
    /// A project's log, oldest first (without the answers).
    async fn list_research_log(&self, project: &str) -> Result<Vec<ResearchLogEntry>, StoreError>;
    /// Research spend per data year, ascending.
    async fn list_research_spend(&self) -> Result<Vec<(u16, i64)>, StoreError>;
    /// Stores a project's extract request (state `requested`) with its audit entry.
    async fn put_extract_request_recorded(
        &self,
        extract: &ExtractRecord,
        audit: &NewAuditEntry,
    ) -> Result<(), StoreError>;
    /// Extracts, of one project or all, oldest first (without their CSV).
    async fn list_extracts(&self, project: Option<&str>) -> Result<Vec<ExtractRecord>, StoreError>;
    /// Records an approved extract as built, with its report and CSV and the approval's audit entry,
    /// in one transaction. `NotFound` without such a request; `Conflict` when it was produced before.
    async fn put_extract_produced_recorded(
        &self,
        id: Uuid,
        approved_by: &str,
        at: OffsetDateTime,
        report: &serde_json::Value,
        csv: &[u8],
        audit: &NewAuditEntry,
    ) -> Result<(), StoreError>;
    /// A produced extract's CSV.
    async fn get_extract_csv(&self, id: Uuid) -> Result<Option<Vec<u8>>, StoreError>;

    /// Marks a token revoked at `at`. `NotFound` if no such token; revoking twice keeps the first time.
    async fn revoke_token(&self, id: i64, at: OffsetDateTime) -> Result<(), StoreError> {
        self.revoke_token_recorded(id, at, None).await
    }
    async fn revoke_token_recorded(
        &self,
        id: i64,
        at: OffsetDateTime,
        audit: Option<&NewAuditEntry>,
    ) -> Result<(), StoreError>;
    /// Every token (never the hash), oldest first.
    async fn list_tokens(&self) -> Result<Vec<TokenRecord>, StoreError>;

    /// Opens a dashboard session. `Conflict` if the hash is taken (a random 32-byte secret never is).
    async fn put_session(&self, session: &NewSession) -> Result<(), StoreError>;
    /// The token behind a live session: `None` when the session is unknown, expired at `now`, or its
    /// token revoked, so that revoking a token ends its sessions at once.
    async fn get_session(
        &self,
        session_hash: &[u8; 32],
        now: OffsetDateTime,
    ) -> Result<Option<TokenRecord>, StoreError>;
    /// Ends a session (sign-out); ending an unknown one is no error.
    async fn delete_session(&self, session_hash: &[u8; 32]) -> Result<(), StoreError>;
    /// Deletes the sessions expired at `now`; returns how many.
    async fn delete_expired_sessions(&self, now: OffsetDateTime) -> Result<u64, StoreError>;
}

/// Rows of one provider whose trajectory pseudonyms start with the same byte.
type Bucket = Vec<(AgbCode, WireRecord)>;

/// Puts rows in the order [`Store::list_trajectories_between`] promises (provider, then trajectory
/// pseudonym) as they arrive, for both backends: in the database, the sort of millions of wide rows
/// spills to disk (PostgreSQL at a default `work_mem`) or reads the table in key order, one random
/// page at a time (SQLite). Millions of 150-byte records are slow to sort in one piece
/// (every move a cache miss): rows go into a bucket per provider and first byte of the pseudonym
/// (pseudonyms are uniformly random), and each bucket, a few thousand rows, is sorted on its own.
#[derive(Debug, Default)]
pub(crate) struct SortBuckets {
    /// Per provider, 256 buckets.
    providers: Vec<(AgbCode, Vec<Bucket>)>,
    /// The provider of the last row: rows come in runs of one provider.
    last: usize,
    len: usize,
}

impl SortBuckets {
    pub(crate) fn push(&mut self, row: (AgbCode, WireRecord)) {
        if self.providers.get(self.last).is_none_or(|p| p.0 != row.0) {
            self.last = match self.providers.iter().position(|p| p.0 == row.0) {
                Some(i) => i,
                None => {
                    self.providers
                        .push((row.0, (0..256).map(|_| Vec::new()).collect()));
                    self.providers.len() - 1
                }
            };
        }
        let bucket = usize::from(row.1.trajectory.as_bytes()[0]);
        self.providers[self.last].1[bucket].push(row);
        self.len += 1;
    }

    pub(crate) fn into_sorted(mut self) -> Vec<(AgbCode, WireRecord)> {
        self.providers.sort_unstable_by_key(|p| p.0);
        let mut out = Vec::with_capacity(self.len);
        for (_, buckets) in self.providers {
            for mut bucket in buckets {
                bucket.sort_unstable_by_key(|r| r.1.trajectory);
                out.append(&mut bucket);
            }
        }
        out
    }
}

/// The newest change of the change feed, 0 before the first (the same SQL on both backends).
pub(crate) const NEWEST_CHANGE: &str = "SELECT coalesce(max(seq), 0) FROM trajectory_changes";

/// The newest removal whose pseudonym was erased (`Store::prune_change_feed`): a reader below it may
/// have missed a removal.
pub(crate) const NEWEST_ERASED: &str = "SELECT coalesce(max(seq), 0) FROM trajectory_changes \
     WHERE batch_id IS NULL AND trajectory IS NULL";

/// The data version of the change feed's newest number (both backends).
pub(crate) fn data_version_of(newest_change: i64) -> String {
    format!("c{newest_change}")
}

/// Opens the store a URL names: `sqlite://PATH` (created if missing) or `postgres://...`, and runs the
/// backend's embedded migrations.
pub async fn connect(url: &str) -> Result<Arc<dyn Store>, StoreError> {
    if url.starts_with("sqlite:") {
        Ok(Arc::new(sqlite::SqliteStore::connect(url).await?))
    } else if url.starts_with("postgres://") || url.starts_with("postgresql://") {
        Ok(Arc::new(postgres::PgStore::connect(url).await?))
    } else {
        Err(StoreError::Other(anyhow::anyhow!(
            "unsupported database URL scheme (use sqlite://PATH or postgres://...)"
        )))
    }
}

/// The raw ceiling of the ingest benchmark: the backend's fastest plain bulk path into a fresh database
/// at `url` (migrated first). Not used by the service; see the backends' `bulk_insert_raw`.
pub async fn bulk_insert_raw(
    url: &str,
    provider: AgbCode,
    records: &[WireRecord],
) -> Result<(), StoreError> {
    if url.starts_with("sqlite:") {
        sqlite::SqliteStore::connect(url)
            .await?
            .bulk_insert_raw(provider, records)
            .await
    } else {
        postgres::PgStore::connect(url)
            .await?
            .bulk_insert_raw(provider, records)
            .await
    }
}
