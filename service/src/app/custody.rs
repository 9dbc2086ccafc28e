//! What a provider may do with the data held for it: withdraw a batch or one trajectory, and export
//! its stored records as it sent them. Each is on the audit chain: a withdrawal's entry commits with
//! it; an export's entry is written before anything leaves, and an `export-sent` entry after the last
//! page.

use std::sync::Arc;

use kwm_schemas::api::{WithdrawalKind, WithdrawalReceipt};
use kwm_schemas::{AgbCode, ExportedRecord, Pseudonym};
use ring::digest::{Context, SHA256};
use uuid::Uuid;

use crate::app::audit_trail::{append_required, batch_subject, entry, failed_action, Recorder};
use crate::app::error::ApiError;
use crate::app::rounds::Actor;
use crate::audit::AuditAction;
use crate::clock::SharedClock;
use crate::metrics::Metrics;
use crate::store::{Store, StoreError, Withdrawn};

/// What withdrawals and exports need.
#[derive(Debug, Clone)]
pub struct CustodyDeps {
    pub store: Arc<dyn Store>,
    pub metrics: Metrics,
    pub clock: SharedClock,
}

impl CustodyDeps {
    fn recorder(&self) -> Recorder<'_> {
        Recorder {
            store: self.store.as_ref(),
            metrics: &self.metrics,
        }
    }
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

/// Withdraws one of `agb`'s batches: the rows it was the newest carrier of and its receipt go; its id
/// stays refused. Another provider's batch is simply not found: its existence is not disclosed.
pub async fn withdraw_batch(
    deps: &CustodyDeps,
    actor: &Actor,
    agb: AgbCode,
    id: Uuid,
) -> Result<WithdrawalReceipt, ApiError> {
    // The entry commits with the withdrawal. Its digest covers the receipt with `audit_seq` 0: the
    // sequence number exists only once appended.
    let at = deps.clock.now();
    let actor = actor.clone();
    let record = move |w: &Withdrawn| {
        entry(
            &actor,
            AuditAction::Withdraw,
            batch_subject(id),
            Some(agb),
            &receipt(agb, WithdrawalKind::Batch, Some(id), *w, at),
        )
    };
    let (w, seq) = match deps
        .store
        .withdraw_batch_recorded(agb, id, Some(&record))
        .await
    {
        Ok(w) => w,
        Err(StoreError::NotFound) => {
            return Err(ApiError::not_found(format!("you have no batch {id}")))
        }
        Err(e) => return Err(failed_action(deps.recorder(), e, "withdraw")),
    };
    let mut r = receipt(agb, WithdrawalKind::Batch, Some(id), w, at);
    r.audit_seq = seq.unwrap_or_default();
    Ok(r)
}

/// Withdraws one of `agb`'s trajectories, named by its stage-1 pseudonym. The entry's subject names
/// no pseudonym; its digest binds the receipt to the trajectory, so that the provider can prove later
/// which one it was.
pub async fn withdraw_trajectory(
    deps: &CustodyDeps,
    actor: &Actor,
    agb: AgbCode,
    trajectory: Pseudonym,
) -> Result<WithdrawalReceipt, ApiError> {
    let at = deps.clock.now();
    let actor = actor.clone();
    let record = move |w: &Withdrawn| {
        let r = receipt(agb, WithdrawalKind::Trajectory, None, *w, at);
        let details = serde_json::json!({ "receipt": &r, "trajectory": hex::encode(trajectory.0) });
        entry(
            &actor,
            AuditAction::Withdraw,
            "trajectory",
            Some(agb),
            &details,
        )
    };
    let (w, seq) = match deps
        .store
        .withdraw_trajectory_recorded(agb, &trajectory, Some(&record))
        .await
    {
        Ok(w) => w,
        Err(StoreError::NotFound) => {
            return Err(ApiError::not_found(
                "you have no stored trajectory with this pseudonym",
            ))
        }
        Err(e) => return Err(failed_action(deps.recorder(), e, "withdraw")),
    };
    let mut r = receipt(agb, WithdrawalKind::Trajectory, None, w, at);
    r.audit_seq = seq.unwrap_or_default();
    Ok(r)
}

/// Starts an export of `agb`'s records: nothing leaves before it is on the record. The number of
/// records; then [`export_pages`] gives them.
pub async fn start_export(
    deps: &CustodyDeps,
    actor: &Actor,
    agb: AgbCode,
) -> Result<u64, ApiError> {
    let count = deps.store.count_trajectories(Some(agb)).await?;
    let e = entry(
        actor,
        AuditAction::Export,
        format!("export of {count} records"),
        Some(agb),
        &serde_json::json!({ "records": count }),
    );
    append_required(deps.recorder(), e).await?;
    Ok(count)
}

/// The export's body, read and sent a page at a time (memory per export: one page, not the whole
/// provider). When the last page has gone, an `export-sent` entry records how many records left and
/// the SHA-256 of the bytes sent; an export cut short (the client went away, the database failed)
/// has its `export` entry only. A database error ends the body early: the client sees fewer records
/// than the count header announced.
pub fn export_pages(
    deps: CustodyDeps,
    agb: AgbCode,
    actor: Actor,
) -> impl futures::Stream<Item = Result<Vec<u8>, std::io::Error>> + Send {
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
        let deps = deps.clone();
        let actor = actor.clone();
        async move {
            if c.done {
                return None;
            }
            let limit = crate::store::TRAJECTORY_PAGE;
            let page = match deps
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
                if let Err(err) = deps.store.append_audit(&e).await {
                    deps.metrics.observe_audit_failure(false);
                    tracing::error!(error = %err, "the audit entry of a sent export could not be written");
                }
                tracing::info!(records = c.sent, "records exported");
            }
            Some((Ok(chunk), c))
        }
    })
}
