//! The custodian's use cases without HTTP: an upload, a withdrawal and a round, each called with the
//! parts it needs (a real store on SQLite and PostgreSQL, the keys in it, the release index, the
//! metrics) and a clock the test sets. No listener is started and no route is involved.

use std::sync::Arc;

use kwm_schemas::envelope::{HpkePublicKey, SealedBatch};
use kwm_schemas::problem::ProblemType;
use kwm_schemas::{AgbCode, Period, RegionConfig, WireRecord};
use kwm_sdk::batch::seal_records;
use kwm_sdk::prepare::{prepare_file, PrepareContext};
use kwm_sdk::{ProviderKeys, Pseudonymiser};
use kwm_service::app::custody::{self, CustodyDeps};
use kwm_service::app::rounds::{publish_round, publishable_from, Actor, ReleaseCache, RoundDeps};
use kwm_service::app::upload::{upload, UploadDeps, UploadRefused, Uploaded};
use kwm_service::audit::AuditAction;
use kwm_service::clock::{Clock, FixedClock};
use kwm_service::index::ReleaseIndex;
use kwm_service::keys::{KeyLookup, Keyring, PseudonymKey, WhenNew};
use kwm_service::metrics::Metrics;
use kwm_service::store::{Provider, RegionalKeyCheck, Store};
use time::macros::datetime;
use time::OffsetDateTime;

/// The parts of one custodian, and a provider's keys and prepared records.
struct Parts {
    store: Arc<dyn Store>,
    keyring: Arc<Keyring>,
    pseudonym_key: Arc<PseudonymKey>,
    index: Arc<ReleaseIndex>,
    metrics: Metrics,
    clock: Arc<FixedClock>,
    region: Arc<RegionConfig>,
    provider: ProviderKeys,
    agb: AgbCode,
    records: Vec<WireRecord>,
    _dirs: Vec<tempfile::TempDir>,
}

impl Parts {
    async fn new(url: &str) -> Self {
        let data = tempfile::tempdir().expect("a data dir");
        let store = kwm_service::store::connect(url).await.expect("the store");
        let clock = FixedClock::at(datetime!(2026-03-02 09:30:00 UTC));
        let keys = kwm_service::keys::open(
            store.clone(),
            data.path(),
            "test",
            WhenNew::Create,
            None,
            clock.clone(),
        )
        .await
        .expect("the service keys");
        let region = Arc::new(RegionConfig::wbw());
        let exports = tempfile::tempdir().expect("an export dir");
        let out = kwm_sdk::synth::generate(&kwm_sdk::synth::SynthOptions::new(
            exports.path(),
            1,
            300,
            41,
        ))
        .expect("a synthetic export");
        let provider = ProviderKeys::generate().expect("provider keys");
        let regional = kwm_tests::regional_key();
        let ctx = PrepareContext::new(
            region.as_ref().clone(),
            Pseudonymiser::new(&regional, &provider),
        );
        let records = prepare_file(&out.providers[0].path, &ctx)
            .expect("prepared")
            .records;
        let agb = out.providers[0].agb;
        store
            .put_provider(&Provider {
                agb,
                name: "Zorgaanbieder".into(),
                signing_public_key: provider.signing_public_key().to_vec(),
                created_at: OffsetDateTime::now_utc(),
            })
            .await
            .expect("registered");
        let check = RegionalKeyCheck::from_hex(&regional.check_value(), OffsetDateTime::now_utc())
            .expect("a check value");
        store
            .put_regional_key_check(&check, false)
            .await
            .expect("the regional key's check value");
        Self {
            store,
            keyring: Arc::new(keys.keyring),
            pseudonym_key: Arc::new(keys.pseudonym_key),
            index: Arc::new(ReleaseIndex::new(&region)),
            metrics: Metrics::new().expect("metrics"),
            clock,
            region,
            provider,
            agb,
            records,
            _dirs: vec![data, exports],
        }
    }

    fn upload_deps(&self) -> UploadDeps {
        UploadDeps {
            store: self.store.clone(),
            keyring: self.keyring.clone(),
            pseudonym_key: self.pseudonym_key.clone(),
            region: self.region.clone(),
            metrics: self.metrics.clone(),
            clock: self.clock.clone(),
        }
    }

    fn custody_deps(&self) -> CustodyDeps {
        CustodyDeps {
            store: self.store.clone(),
            metrics: self.metrics.clone(),
            clock: self.clock.clone(),
        }
    }

    fn round_deps(&self) -> RoundDeps {
        RoundDeps {
            store: self.store.clone(),
            index: self.index.clone(),
            region: self.region.clone(),
            pseudonym_key: self.pseudonym_key.clone(),
            metrics: self.metrics.clone(),
            releases: Arc::new(ReleaseCache::default()),
            lock: Arc::new(tokio::sync::Mutex::new(())),
            clock: self.clock.clone(),
        }
    }

    fn sealed(&self) -> SealedBatch {
        let info = self
            .keyring
            .public_infos()
            .into_iter()
            .next()
            .expect("an HPKE key");
        let recipient = HpkePublicKey::from_bytes(&info.public_key.0).expect("a public key");
        seal_records(
            &self.records,
            self.agb,
            None,
            &recipient,
            self.provider.signer(),
            &kwm_tests::regional_key().check_value(),
            OffsetDateTime::now_utc()
                .replace_nanosecond(0)
                .expect("whole seconds"),
        )
        .expect("sealed")
    }

    async fn actions(&self) -> Vec<AuditAction> {
        kwm_service::app::audit_trail::load_chain(self.store.as_ref())
            .await
            .expect("the chain")
            .into_iter()
            .map(|e| e.entry.action)
            .collect()
    }
}

fn provider_actor() -> Actor {
    Actor {
        role: "provider".into(),
        id: "token 1".into(),
    }
}

/// The problem of an upload refused and recorded in the audit chain.
fn refused(outcome: Result<Uploaded, UploadRefused>) -> ProblemType {
    match outcome {
        Err(UploadRefused {
            error,
            audited: true,
        }) => error.kind(),
        other => panic!("a refusal on the audit chain expected: {other:?}"),
    }
}

async fn upload_and_withdraw(parts: Parts) {
    let deps = parts.upload_deps();
    let sealed = parts.sealed();
    let n = parts.records.len() as u64;

    // Stored whole, at the clock's time, with its entry.
    let receipt = match upload(&deps, &provider_actor(), parts.agb, sealed.clone()).await {
        Ok(Uploaded::Stored(r)) => r,
        other => panic!("stored expected: {other:?}"),
    };
    assert_eq!(u64::from(receipt.stored), n);
    assert_eq!(receipt.received_at, parts.clock.now());
    assert_eq!(
        parts
            .store
            .count_trajectories(Some(parts.agb))
            .await
            .expect("count"),
        n
    );
    assert_eq!(parts.actions().await, [AuditAction::Upload]);

    // The same batch again: the original receipt, and a replay entry.
    parts.clock.advance(time::Duration::hours(1));
    match upload(&deps, &provider_actor(), parts.agb, sealed.clone()).await {
        Ok(Uploaded::Replayed(r)) => {
            assert!(r.replayed);
            assert_eq!(
                r,
                kwm_schemas::api::BatchReceipt {
                    replayed: true,
                    ..receipt.clone()
                }
            );
        }
        other => panic!("replayed expected: {other:?}"),
    }

    // Another provider's batch: refused and on the chain (so the middleware leaves it).
    let other: AgbCode = "87654321".parse().expect("an AGB code");
    assert_eq!(
        refused(upload(&deps, &provider_actor(), other, sealed.clone()).await),
        ProblemType::Forbidden
    );

    // Withdrawn: every row goes, at the clock's time; the batch id stays refused.
    let w = custody::withdraw_batch(
        &parts.custody_deps(),
        &provider_actor(),
        parts.agb,
        receipt.batch_id,
    )
    .await
    .expect("withdrawn");
    assert_eq!(w.trajectories_removed, n);
    assert_eq!(w.withdrawn_at, parts.clock.now());
    assert!(w.audit_seq > 0);
    assert_eq!(
        parts
            .store
            .count_trajectories(Some(parts.agb))
            .await
            .expect("count"),
        0
    );
    assert_eq!(
        refused(upload(&deps, &provider_actor(), parts.agb, sealed).await),
        ProblemType::BatchWithdrawn
    );
    assert_eq!(
        parts.actions().await,
        [
            AuditAction::Upload,
            AuditAction::UploadReplayed,
            AuditAction::UploadRefused,
            AuditAction::Withdraw,
            AuditAction::UploadRefused,
        ]
    );
}

async fn a_round_waits_for_the_clock(parts: Parts) {
    let deps = parts.upload_deps();
    assert!(matches!(
        upload(&deps, &provider_actor(), parts.agb, parts.sealed()).await,
        Ok(Uploaded::Stored(_))
    ));
    let period: Period = "2025".parse().expect("a period");
    let from = publishable_from(&parts.region, period);
    let admin = Actor {
        role: "admin".into(),
        id: "test".into(),
    };
    let rounds = parts.round_deps();

    // The day before the period is final by the clock: nothing is published, nothing charged.
    parts.clock.set(
        from.previous_day()
            .expect("a day")
            .with_hms(23, 0, 0)
            .expect("a time")
            .assume_utc(),
    );
    let err = publish_round(&rounds, period, &admin, false)
        .await
        .expect_err("not final yet");
    assert_eq!(err.kind(), ProblemType::PeriodNotFinal);
    assert!(parts
        .store
        .list_rounds(None)
        .await
        .expect("rounds")
        .is_empty());

    // From that day on it is, and the round is stamped with the clock's time.
    parts
        .clock
        .set(from.with_hms(8, 0, 0).expect("a time").assume_utc());
    let outcome = publish_round(&rounds, period, &admin, false)
        .await
        .expect("published");
    assert_eq!(outcome.round.version, 1);
    assert!(!outcome.round.charges.is_empty());
    assert_eq!(outcome.round.created_at, parts.clock.now());
    assert_eq!(
        parts.store.list_rounds(None).await.expect("rounds").len(),
        1
    );
}

/// A rotated key becomes active and the old one retires when the injected clock says so.
async fn keys_rotate_by_the_clock(parts: Parts) {
    let old = parts.keyring.active_key_id().expect("an active key");
    let new = parts
        .keyring
        .rotate(time::Duration::days(1), time::Duration::days(7), None)
        .await
        .expect("rotated");
    assert_eq!(
        parts.keyring.active_key_id(),
        Some(old.clone()),
        "pending for a day"
    );
    parts
        .clock
        .advance(time::Duration::days(1) + time::Duration::seconds(1));
    assert_eq!(parts.keyring.active_key_id(), Some(new));
    let usable = |id| {
        parts
            .keyring
            .with_key(id, |l| matches!(l, KeyLookup::Usable(_)))
    };
    assert!(
        usable(&old),
        "the old key still opens batches sealed before the switch"
    );
    parts.clock.advance(time::Duration::days(7));
    assert!(
        parts
            .keyring
            .with_key(&old, |l| matches!(l, KeyLookup::Retired)),
        "retired a week after the switch"
    );
}

mod sqlite {
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn keys_rotate_by_the_injected_clock() {
        let db = kwm_tests::TempSqlite::new();
        super::keys_rotate_by_the_clock(super::Parts::new(db.url()).await).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn an_upload_and_its_withdrawal_run_without_http() {
        let db = kwm_tests::TempSqlite::new();
        super::upload_and_withdraw(super::Parts::new(db.url()).await).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_round_waits_for_its_period_to_be_final_by_the_injected_clock() {
        let db = kwm_tests::TempSqlite::new();
        super::a_round_waits_for_the_clock(super::Parts::new(db.url()).await).await;
    }
}

mod postgres {
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn an_upload_and_its_withdrawal_run_without_http() {
        let Some(db) = kwm_tests::EphemeralPostgres::create().await else {
            return;
        };
        super::upload_and_withdraw(super::Parts::new(db.url()).await).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_round_waits_for_its_period_to_be_final_by_the_injected_clock() {
        let Some(db) = kwm_tests::EphemeralPostgres::create().await else {
            return;
        };
        super::a_round_waits_for_the_clock(super::Parts::new(db.url()).await).await;
    }
}
