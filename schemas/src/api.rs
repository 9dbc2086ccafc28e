//! Request and response bodies of the API other than the sealed batch itself.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;
use uuid::Uuid;

use crate::codes::AgbCode;
use crate::envelope::{Base64Bytes, KeyId};

/// What the service answers for a stored batch. A replay of the same batch returns the same receipt.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct BatchReceipt {
    pub batch_id: Uuid,
    pub provider: AgbCode,
    pub key_id: KeyId,
    pub record_count: u32,
    /// Trajectories seen for the first time.
    pub stored: u32,
    /// Trajectories that replaced an earlier upload with other values.
    pub corrected: u32,
    /// Trajectories that were already stored with exactly these values.
    pub unchanged: u32,
    #[serde(with = "time::serde::rfc3339")]
    #[schemars(with = "String")]
    pub received_at: OffsetDateTime,
    /// SHA-256 of the batch's plaintext, hex: what the batch id is bound to.
    pub content_digest: String,
    /// True when this answer is for a batch that was already stored: a retry of the same upload attempt
    /// (same batch id and content). The figures are then those of the original upload; this answer
    /// changed nothing.
    #[serde(default)]
    pub replayed: bool,
}

/// `GET /v1/batches`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct BatchList {
    pub batches: Vec<BatchReceipt>,
}

/// Lifecycle of a service HPKE key: pending (published ahead), active (seal to this one), retired
/// (batches sealed to it are refused).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum KeyState {
    Pending,
    Active,
    Retired,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct PublicKeyInfo {
    pub key_id: KeyId,
    pub state: KeyState,
    /// Raw X25519 public key.
    pub public_key: Base64Bytes,
    #[serde(with = "time::serde::rfc3339")]
    #[schemars(with = "String")]
    pub created_at: OffsetDateTime,
    #[serde(default, with = "time::serde::rfc3339::option")]
    #[schemars(with = "Option<String>")]
    pub activated_at: Option<OffsetDateTime>,
    #[serde(default, with = "time::serde::rfc3339::option")]
    #[schemars(with = "Option<String>")]
    pub retired_at: Option<OffsetDateTime>,
}

/// `GET /v1/keys`: the service's HPKE keys and the suite they are used with.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct KeysResponse {
    pub protocol_version: u16,
    /// `DHKEM(X25519, HKDF-SHA256), HKDF-SHA256, AES-256-GCM`.
    pub suite: String,
    pub active_key_id: KeyId,
    pub keys: Vec<PublicKeyInfo>,
}

/// `GET /healthz` and `GET /readyz`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct Health {
    pub status: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub database: Option<String>,
}

/// `GET /v1/me`: who the presented token belongs to, so that a client need not be told its own AGB code.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct TokenInfo {
    pub role: crate::codes::Role,
    /// AGB code (provider), CBS code (municipality), project (researcher); absent for region and admin.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scope: Option<String>,
}

/// One entry of the audit chain as `GET /v1/audit` shows it: who did what to which subject, and the
/// hashes that chain it to the entry before. Never a token, a pseudonym or a record value.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct AuditRecord {
    /// Position in the chain, from 1.
    pub seq: i64,
    #[serde(with = "time::serde::rfc3339")]
    #[schemars(with = "String")]
    pub at: OffsetDateTime,
    /// `provider`, `municipality`, `region`, `researcher`, `admin` or `system`.
    pub actor_role: String,
    /// `token N` for an API caller (the token's id, never the token), `cli USER` for an operator
    /// (a provider's own view shows `operator` instead of the login).
    pub actor_id: String,
    /// `upload`, `upload-replayed`, `upload-refused`, `withdraw`, `export`, `release`, `token-issued`,
    /// `token-revoked`, `provider-registered`, `provider-key-changed`, `key-rotated`, `policy-changed`,
    /// `regional-key-check-set` or `forbidden`.
    pub action: String,
    /// What the action was about: `batch <id>`, `release <id> ...`, `token <id>`, `GET /v1/...`.
    pub subject: String,
    /// The provider whose data the action touched.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub provider: Option<AgbCode>,
    /// SHA-256 of the action's details (a receipt, a release body), hex.
    pub details_digest: String,
    /// Hash of the entry before, hex (zeros for the first).
    pub prev_hash: String,
    /// SHA-256 over `prev_hash` and this entry's fields, hex.
    pub hash: String,
}

/// `GET /v1/audit`: a page of audit entries, oldest first.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct AuditPage {
    pub entries: Vec<AuditRecord>,
    /// Pass it as `after` to get the next page; absent on the last page.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_after: Option<i64>,
}

/// `GET /v1/admin/index`: a running instance's release index compared with a fresh load of the
/// stored table at the same change mark, per year the trajectories started.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct IndexCheck {
    /// The store's change mark both sides are at.
    pub mark: i64,
    /// Whether the index holds exactly the stored rows.
    pub consistent: bool,
    /// Rows in the instance's index.
    pub index_rows: u64,
    /// Rows in the store.
    pub stored_rows: u64,
    /// Per start year, every year either side has rows in.
    pub years: Vec<IndexYear>,
}

/// One start year of an [`IndexCheck`]: row counts and an order-independent digest of the rows' contents
/// on each side (hex; equal digests, equal rows).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct IndexYear {
    pub year: u16,
    pub index_rows: u64,
    pub stored_rows: u64,
    pub index_digest: String,
    pub stored_digest: String,
    pub consistent: bool,
}

/// What a withdrawal named.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum WithdrawalKind {
    Batch,
    Trajectory,
}

/// The answer to `DELETE /v1/batches/{batch_id}` and `DELETE /v1/trajectories/{trajectory}`: what was
/// removed from the store. Releases published before stay as they were; later ones no longer count it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct WithdrawalReceipt {
    pub provider: AgbCode,
    pub withdrawn: WithdrawalKind,
    /// The batch, for a batch withdrawal.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub batch_id: Option<Uuid>,
    /// Trajectory rows removed. A batch withdrawal removes the rows the batch last wrote: rows a later
    /// batch corrected belong to that batch and stay.
    pub trajectories_removed: u64,
    /// Batch receipts removed: the batch itself, or a batch left without rows by a trajectory withdrawal.
    pub batches_removed: u64,
    #[serde(with = "time::serde::rfc3339")]
    #[schemars(with = "String")]
    pub withdrawn_at: OffsetDateTime,
    /// The audit entry that records this withdrawal (see `GET /v1/audit`).
    pub audit_seq: i64,
}

/// `POST /v1/research/queries` and `.../estimate`: a query of the project's researcher.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ResearchQueryRequest {
    /// One `SELECT ... FROM trajectories ...` in the service's dialect (README, "Research").
    pub sql: String,
    /// The rho the answer spends (charged to the project once and to each data year it reads);
    /// 0.01 when left out.
    #[serde(default)]
    pub rho: Option<crate::region::Decimal>,
}

/// The answer to a research query, as charged to its project.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ResearchAnswered {
    /// The answer's id in the project's log.
    pub id: Uuid,
    pub project: String,
    /// What this answer charged the project (and each data year it reads).
    pub rho_charged: crate::region::Decimal,
    /// What the project has left, in rho (`0` when it is spent).
    pub project_left: String,
    /// The answer's entry in the audit chain.
    pub audit_seq: i64,
    pub answer: crate::research::ResearchAnswer,
}

/// What a research query would cost and how wide its intervals would be; nothing was spent.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ResearchEstimated {
    pub project: String,
    /// What the project has left, in rho.
    pub project_left: String,
    /// Whether the project (and each data year's research reserve, as far as the project can know)
    /// could pay for it now.
    pub affordable: bool,
    pub estimate: crate::research::QueryEstimate,
}

/// `GET /v1/research/log`: a project's budget and every answer it was given.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ResearchLog {
    pub project: String,
    pub name: String,
    pub purpose: String,
    /// The project's budget, what it spent and what it has left, in rho.
    pub rho: String,
    pub spent: String,
    pub left: String,
    /// The last day it is answered (YYYY-MM-DD).
    pub expires_on: String,
    pub closed: bool,
    pub entries: Vec<ResearchLogLine>,
}

/// One answer in a project's log: who asked what, when, at what cost.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ResearchLogLine {
    pub id: Uuid,
    /// `query`, `extract-requested` or `extract-produced`.
    pub kind: String,
    /// The query as sent.
    pub statement: String,
    /// `researcher token 12`.
    pub actor: String,
    pub rho: String,
    #[serde(with = "time::serde::rfc3339")]
    #[schemars(with = "String")]
    pub at: OffsetDateTime,
    /// The answer's entry in the audit chain (0 for an extract's lines: the chain has its request and
    /// its approval, the admin's `audit list` shows them).
    pub audit_seq: i64,
}

/// `POST /v1/research/extracts`: an anonymised extract a project asks for. Nothing is produced until
/// the operator approves it: an extract leaves differential privacy behind.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ExtractRequest {
    /// The columns, k, l, suppression share and risk threshold.
    pub spec: crate::extract::ExtractSpec,
    /// The trajectories in care in these calendar years (inclusive).
    pub from_year: u16,
    pub to_year: u16,
}

/// An extract of a project: asked for, or produced (with its risk report).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ExtractStatus {
    pub id: Uuid,
    pub project: String,
    /// `requested` (waiting for the operator's approval) or `produced`.
    pub state: String,
    pub request: ExtractRequest,
    #[serde(with = "time::serde::rfc3339")]
    #[schemars(with = "String")]
    pub requested_at: OffsetDateTime,
    /// Once produced: the risk report, and where to download the CSV.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub report: Option<crate::extract::RiskReport>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub download: Option<String>,
}

/// `GET /v1/research/extracts`: the project's extracts, oldest first.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ExtractList {
    pub extracts: Vec<ExtractStatus>,
}
