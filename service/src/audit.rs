//! The audit chain: every security-relevant action appends an entry that carries the SHA-256 of the entry
//! before it, so that changing, deleting or reordering any stored entry breaks the chain from there on.
//! Entries hold who, what and a digest of the details: never a record value, pseudonym or token.
//! Pure core: the chain's arithmetic. Which action appends what, and when, is `app::audit_trail`'s.

use kwm_schemas::AgbCode;
use ring::digest::{Context, SHA256};
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

/// The hash of the (virtual) entry before the first one.
pub const GENESIS: [u8; 32] = [0u8; 32];

/// What happened. The wire names are stable: auditors filter on them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum AuditAction {
    Upload,
    UploadReplayed,
    UploadRefused,
    Withdraw,
    Export,
    ExportSent,
    Release,
    TokenIssued,
    TokenRevoked,
    ProviderRegistered,
    ProviderKeyChanged,
    KeyRotated,
    PolicyChanged,
    RegionalKeyCheckSet,
    Forbidden,
    ProjectRegistered,
    ProjectClosed,
    ResearchAnswer,
    ExtractRequested,
    ExtractApproved,
}

impl AuditAction {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Upload => "upload",
            Self::UploadReplayed => "upload-replayed",
            Self::UploadRefused => "upload-refused",
            Self::Withdraw => "withdraw",
            Self::Export => "export",
            Self::ExportSent => "export-sent",
            Self::Release => "release",
            Self::TokenIssued => "token-issued",
            Self::TokenRevoked => "token-revoked",
            Self::ProviderRegistered => "provider-registered",
            Self::ProviderKeyChanged => "provider-key-changed",
            Self::KeyRotated => "key-rotated",
            Self::PolicyChanged => "policy-changed",
            Self::RegionalKeyCheckSet => "regional-key-check-set",
            Self::Forbidden => "forbidden",
            Self::ProjectRegistered => "project-registered",
            Self::ProjectClosed => "project-closed",
            Self::ResearchAnswer => "research-answer",
            Self::ExtractRequested => "extract-requested",
            Self::ExtractApproved => "extract-approved",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        use AuditAction::*;
        [
            Upload,
            UploadReplayed,
            UploadRefused,
            Withdraw,
            Export,
            ExportSent,
            Release,
            TokenIssued,
            TokenRevoked,
            ProviderRegistered,
            ProviderKeyChanged,
            KeyRotated,
            PolicyChanged,
            RegionalKeyCheckSet,
            Forbidden,
            ProjectRegistered,
            ProjectClosed,
            ResearchAnswer,
            ExtractRequested,
            ExtractApproved,
        ]
        .into_iter()
        .find(|a| a.as_str() == s)
    }
}

/// An entry before it is chained: the store adds the sequence number and the hashes in the same
/// transaction that appends it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewAuditEntry {
    pub at: OffsetDateTime,
    /// `provider`, `admin`, ... or `system`.
    pub actor_role: String,
    /// Token id, AGB code or operator name; never a token.
    pub actor_id: String,
    pub action: AuditAction,
    /// What the action was about: a batch id, a release id, a provider's AGB code.
    pub subject: String,
    /// The provider whose data the action touched, if any: the provider's own audit view filters on it.
    pub provider: Option<AgbCode>,
    /// SHA-256 of the details (e.g. a receipt), so that they can be proven later without being stored here.
    pub details_digest: [u8; 32],
}

/// A stored entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuditEntry {
    pub seq: i64,
    pub entry: NewAuditEntry,
    pub prev_hash: [u8; 32],
    pub hash: [u8; 32],
}

/// SHA-256 over the previous hash and the canonical, length-prefixed fields of the entry.
pub fn entry_hash(seq: i64, e: &NewAuditEntry, prev_hash: &[u8; 32]) -> [u8; 32] {
    let mut ctx = Context::new(&SHA256);
    ctx.update(b"kwm-audit-v1");
    ctx.update(prev_hash);
    ctx.update(&seq.to_be_bytes());
    // Nanosecond precision is not kept by every database: hash the microseconds the store keeps.
    let micros = e.at.unix_timestamp_nanos() / 1000;
    ctx.update(&micros.to_be_bytes());
    for part in [
        e.actor_role.as_bytes(),
        e.actor_id.as_bytes(),
        e.action.as_str().as_bytes(),
        e.subject.as_bytes(),
        e.provider.as_ref().map_or("", |p| p.as_str()).as_bytes(),
        &e.details_digest[..],
    ] {
        ctx.update(&(part.len() as u64).to_be_bytes());
        ctx.update(part);
    }
    let mut out = [0u8; 32];
    out.copy_from_slice(ctx.finish().as_ref());
    out
}

/// SHA-256 of any serialisable details.
pub fn digest_of<T: Serialize>(details: &T) -> [u8; 32] {
    let bytes = serde_json::to_vec(details).unwrap_or_default();
    let mut out = [0u8; 32];
    out.copy_from_slice(ring::digest::digest(&SHA256, &bytes).as_ref());
    out
}

/// Why a chain does not verify: the first entry at fault.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ChainError {
    #[error("entry {seq}: its hash does not match its contents (the entry was changed)")]
    Altered { seq: i64 },
    #[error("entry {seq}: it does not follow entry {expected_prev} (an entry was deleted, inserted or reordered)")]
    Broken { seq: i64, expected_prev: i64 },
    #[error("entry {seq}: sequence numbers must increase by one from 1 (expected {expected})")]
    Gap { seq: i64, expected: i64 },
}

impl ChainError {
    pub fn seq(&self) -> i64 {
        match self {
            Self::Altered { seq } | Self::Broken { seq, .. } | Self::Gap { seq, .. } => *seq,
        }
    }
}

/// Recomputes the chain in sequence order and names the first broken entry.
pub fn verify_chain(entries: &[AuditEntry]) -> Result<usize, ChainError> {
    let mut v = ChainVerifier::default();
    entries.iter().try_for_each(|e| v.check(e))?;
    Ok(v.entries())
}

/// Checks a chain one entry at a time, oldest first, so that a chain of any length is verified page
/// by page in constant memory.
#[derive(Debug, Clone)]
pub struct ChainVerifier {
    prev: [u8; 32],
    next_seq: i64,
}

impl Default for ChainVerifier {
    fn default() -> Self {
        Self {
            prev: GENESIS,
            next_seq: 1,
        }
    }
}

impl ChainVerifier {
    /// Checks the next entry: its sequence number, its link to the one before and its own hash.
    pub fn check(&mut self, e: &AuditEntry) -> Result<(), ChainError> {
        if e.seq != self.next_seq {
            return Err(ChainError::Gap {
                seq: e.seq,
                expected: self.next_seq,
            });
        }
        if e.prev_hash != self.prev {
            return Err(ChainError::Broken {
                seq: e.seq,
                expected_prev: e.seq - 1,
            });
        }
        if entry_hash(e.seq, &e.entry, &e.prev_hash) != e.hash {
            return Err(ChainError::Altered { seq: e.seq });
        }
        self.prev = e.hash;
        self.next_seq += 1;
        Ok(())
    }

    /// Entries checked so far.
    pub fn entries(&self) -> usize {
        usize::try_from(self.next_seq - 1).unwrap_or(0)
    }
}

/// Chains new entries after `last` (seq and hash of the newest stored entry, if any).
pub fn chain_next(last: Option<(i64, [u8; 32])>, entry: NewAuditEntry) -> AuditEntry {
    let (seq, prev_hash) = match last {
        Some((s, h)) => (s + 1, h),
        None => (1, GENESIS),
    };
    let hash = entry_hash(seq, &entry, &prev_hash);
    AuditEntry {
        seq,
        entry,
        prev_hash,
        hash,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chain(n: usize) -> Vec<AuditEntry> {
        let mut out: Vec<AuditEntry> = Vec::new();
        for i in 0..n {
            let last = out.last().map(|e| (e.seq, e.hash));
            out.push(chain_next(
                last,
                NewAuditEntry {
                    at: OffsetDateTime::from_unix_timestamp(1_700_000_000 + i as i64)
                        .expect("valid"),
                    actor_role: "provider".into(),
                    actor_id: "12345678".into(),
                    action: AuditAction::Upload,
                    subject: format!("batch-{i}"),
                    provider: None,
                    details_digest: [i as u8; 32],
                },
            ));
        }
        out
    }

    #[test]
    fn an_untouched_chain_verifies() {
        assert_eq!(verify_chain(&chain(5)), Ok(5));
        assert_eq!(verify_chain(&[]), Ok(0));
    }

    #[test]
    fn a_changed_entry_is_named() {
        let mut c = chain(5);
        c[2].entry.subject = "other".into();
        assert_eq!(verify_chain(&c), Err(ChainError::Altered { seq: 3 }));
    }

    #[test]
    fn a_deleted_entry_is_named() {
        let mut c = chain(5);
        c.remove(2);
        assert_eq!(verify_chain(&c).map_err(|e| e.seq()), Err(4));
    }

    #[test]
    fn reordering_is_named() {
        let mut c = chain(5);
        c.swap(1, 3);
        let err = verify_chain(&c).expect_err("reordered");
        assert_eq!(err.seq(), 4);
    }

    #[test]
    fn renumbering_after_deletion_is_still_caught() {
        let mut c = chain(5);
        c.remove(2);
        for (i, e) in c.iter_mut().enumerate() {
            e.seq = i as i64 + 1;
        }
        // Entry 3 is now the old entry 4, whose prev hash is the deleted entry's hash.
        assert_eq!(verify_chain(&c).map_err(|e| e.seq()), Err(3));
    }
}
