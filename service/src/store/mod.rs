//! The store: every SQL statement of the service lives behind the [`Store`] trait, with one module per
//! backend (`sqlite`, `postgres`), chosen once from the database URL. Migrations are embedded per backend.

use std::sync::Arc;

use async_trait::async_trait;
use kwm_schemas::api::BatchReceipt;
use kwm_schemas::envelope::KeyId;
use kwm_schemas::{AgbCode, Role, WireRecord};
use time::OffsetDateTime;
use uuid::Uuid;

pub mod postgres;
pub mod sqlite;

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
    #[error(transparent)]
    Other(#[from] anyhow::Error),
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
#[async_trait]
pub trait Store: Send + Sync + std::fmt::Debug + 'static {
    /// Cheap round trip for `/readyz`.
    async fn ping(&self) -> Result<(), StoreError>;

    /// Connections of the pool, for the metrics; `None` where a store has no pool.
    fn pool_status(&self) -> Option<PoolStatus> {
        None
    }

    /// Registers a provider. `Conflict` if the AGB code is already registered.
    async fn put_provider(&self, provider: &Provider) -> Result<(), StoreError>;
    async fn get_provider(&self, agb: AgbCode) -> Result<Option<Provider>, StoreError>;
    async fn list_providers(&self) -> Result<Vec<Provider>, StoreError>;

    /// Stores a token hash and returns its id. `Conflict` if the hash exists.
    async fn put_token(&self, token: &NewToken) -> Result<i64, StoreError>;
    /// The token with this hash, revoked or not.
    async fn get_token(&self, token_hash: &[u8; 32]) -> Result<Option<TokenRecord>, StoreError>;

    /// Stores a whole batch in one transaction, or nothing:
    /// - batch id new for this provider: insert every trajectory keyed by (provider, trajectory
    ///   pseudonym); a trajectory already stored with other values is corrected (replaced), one with
    ///   the same values is counted unchanged; the receipt is stored with the batch.
    /// - batch id known with the same `content_digest`: `Replayed` with the original receipt.
    /// - batch id known with another digest: `Err(Conflict)`.
    ///
    /// Two records of one batch never share a trajectory pseudonym (the service checks this first).
    ///
    /// Timestamps are kept to the microsecond: the receipt returned carries `received_at` as stored,
    /// so it equals what `get_batch` returns later. Concurrent calls with the same batch id end with
    /// one `Stored` and the others `Replayed` (or `Conflict`), never a duplicate. A lost connection or
    /// a lock held too long is `Unavailable`; a value the schema refuses is `Other`.
    async fn put_batch(&self, batch: &NewBatch) -> Result<PutBatch, StoreError>;
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
    async fn list_trajectories(&self, provider: AgbCode) -> Result<Vec<WireRecord>, StoreError>;
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
