//! The store conformance suite: the same tests against every backend of the `Store` trait, SQLite
//! always (a temporary file) and PostgreSQL when `KWM_TEST_DATABASE_URL` is set (a fresh database per
//! test, dropped afterwards; in CI an unset variable fails the PostgreSQL tests instead of skipping).

use std::collections::HashSet;
use std::sync::Arc;

use anyhow::{ensure, Context};
use kwm_schemas::api::BatchReceipt;
use kwm_schemas::codes::{
    AgeBand, CarryOn, EndReason, GoalCount, Intensity, ProductCategory, Respondent, Satisfaction,
    TScore,
};
use kwm_schemas::envelope::KeyId;
use kwm_schemas::{AgbCode, Month, Pseudonym, Role, WireRecord};
use kwm_service::store::{NewBatch, NewToken, Provider, PutBatch, Store, StoreError};
use time::OffsetDateTime;
use uuid::Uuid;

type TestResult = anyhow::Result<()>;

/// Generates, for each named test function `async fn name(store: Arc<dyn Store>) -> TestResult`, one
/// test per backend: `sqlite::name` and `postgres::name`.
macro_rules! conformance_tests {
    ($($name:ident),+ $(,)?) => {
        mod sqlite {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() -> super::TestResult {
                    let db = kwm_tests::TempSqlite::new();
                    let store = kwm_service::store::connect(db.url()).await?;
                    super::$name(store).await
                }
            )+
        }
        mod postgres {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() -> super::TestResult {
                    let Some(db) = kwm_tests::EphemeralPostgres::create().await else {
                        return Ok(());
                    };
                    let store = kwm_service::store::connect(db.url()).await?;
                    super::$name(store).await
                }
            )+
        }
    };
}

conformance_tests!(
    ping_answers,
    providers_are_stored_once,
    tokens_are_found_by_hash,
    a_new_batch_stores_every_record,
    a_replay_returns_the_original_receipt_and_writes_nothing,
    the_same_batch_id_with_other_content_is_a_conflict,
    a_later_batch_corrects_changed_trajectories,
    an_identical_reupload_counts_unchanged,
    a_failure_mid_batch_leaves_nothing,
    batches_are_listed_newest_first_per_provider,
    concurrent_identical_uploads_store_once,
    concurrent_uploads_with_other_content_conflict,
    every_field_round_trips,
    a_large_batch_is_stored_completely,
);

// ---------------------------------------------------------------------------------------------------
// Fixtures

fn agb(s: &str) -> AgbCode {
    s.parse().expect("a valid AGB code")
}

fn provider_a() -> AgbCode {
    agb("12345678")
}

fn provider_b() -> AgbCode {
    agb("87654321")
}

fn key_id() -> KeyId {
    "0123456789abcdef".parse().expect("a valid key id")
}

/// Now, at the microsecond precision the stores keep.
fn now() -> OffsetDateTime {
    let t = OffsetDateTime::now_utc();
    t.replace_nanosecond(t.nanosecond() / 1000 * 1000)
        .expect("a valid nanosecond")
}

async fn register(store: &dyn Store, agb: AgbCode) -> TestResult {
    store
        .put_provider(&Provider {
            agb,
            name: format!("Zorgaanbieder {agb}"),
            signing_public_key: vec![7; 32],
            created_at: now(),
        })
        .await?;
    Ok(())
}

/// A pseudonym unique to (`tag`, `i`).
fn pseudonym(tag: u8, i: u32) -> Pseudonym {
    let mut b = [tag; 32];
    b[..4].copy_from_slice(&i.to_be_bytes());
    Pseudonym(b)
}

fn month(s: &str) -> Month {
    s.parse().expect("a valid month")
}

/// An ended trajectory with every field set, varied by `i`.
fn full_record(i: u32) -> WireRecord {
    let v = |modulus: u32| (i % modulus) as u8;
    WireRecord {
        client: pseudonym(0xC1, i / 2),
        trajectory: pseudonym(0x7A, i),
        municipality: format!("GM{:04}", 748 + i % 9).parse().expect("valid"),
        target_group: format!("P{:02}", 1 + i % 10).parse().expect("valid"),
        intensity: Some(Intensity::new(1 + v(4)).expect("valid")),
        product_category: Some(ProductCategory::new(40 + v(16)).expect("valid")),
        start_month: Month::new(2020 + (i % 4) as u16, 1 + v(12)).expect("valid"),
        end_month: Some(Month::new(2024, 1 + v(12)).expect("valid")),
        age_band: AgeBand::ALL[(i % 4) as usize],
        end_reason: Some(
            EndReason::new([31, 32, 33, 34, 35, 2, 20][(i % 7) as usize]).expect("valid"),
        ),
        satisfaction: Some(Satisfaction::new(1 + v(10)).expect("valid")),
        respondent: Some(Respondent::ALL[(i % 3) as usize]),
        carry_on_without_help: Some(CarryOn::ALL[(i % 3) as usize]),
        problem_t_pre: Some(TScore::new(50 + v(50)).expect("valid")),
        problem_t_post: Some(TScore::new(20 + v(60)).expect("valid")),
        instrument: Some(["CBCL", "SDQ"][(i % 2) as usize].parse().expect("valid")),
        goals_agreed: Some(GoalCount::new(5 + v(5)).expect("valid")),
        goals_achieved: Some(GoalCount::new(v(6)).expect("valid")),
    }
}

/// A running trajectory with every optional field empty.
fn minimal_record(i: u32) -> WireRecord {
    WireRecord {
        client: pseudonym(0xC2, i),
        trajectory: pseudonym(0x7B, i),
        municipality: "GM0748".parse().expect("valid"),
        target_group: "C01".parse().expect("valid"),
        intensity: None,
        product_category: None,
        start_month: month("2025-03"),
        end_month: None,
        age_band: AgeBand::Age0To3,
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

fn records(range: std::ops::Range<u32>) -> Vec<WireRecord> {
    range.map(full_record).collect()
}

/// A batch whose content digest is derived from its records, as the service derives it from the
/// plaintext: other records, other digest.
fn batch(provider: AgbCode, batch_id: Uuid, records: Vec<WireRecord>) -> NewBatch {
    let json = serde_json::to_vec(&records).expect("records serialise");
    let mut content_digest = [0u8; 32];
    content_digest.copy_from_slice(ring::digest::digest(&ring::digest::SHA256, &json).as_ref());
    NewBatch {
        provider,
        batch_id,
        key_id: key_id(),
        content_digest,
        received_at: now(),
        records,
    }
}

fn stored(outcome: PutBatch) -> anyhow::Result<BatchReceipt> {
    match outcome {
        PutBatch::Stored(r) => Ok(r),
        PutBatch::Replayed(_) => anyhow::bail!("expected Stored, got Replayed"),
    }
}

fn replayed(outcome: PutBatch) -> anyhow::Result<BatchReceipt> {
    match outcome {
        PutBatch::Replayed(r) => Ok(r),
        PutBatch::Stored(_) => anyhow::bail!("expected Replayed, got Stored"),
    }
}

/// The records in the order `list_trajectories` returns them.
fn sorted(mut records: Vec<WireRecord>) -> Vec<WireRecord> {
    records.sort_by_key(|r| r.trajectory);
    records
}

// ---------------------------------------------------------------------------------------------------
// Tests

async fn ping_answers(store: Arc<dyn Store>) -> TestResult {
    store.ping().await?;
    Ok(())
}

async fn providers_are_stored_once(store: Arc<dyn Store>) -> TestResult {
    let p = Provider {
        agb: provider_a(),
        name: "Jeugdhulp West".into(),
        signing_public_key: (0u8..32).collect(),
        created_at: now(),
    };
    assert_eq!(store.get_provider(p.agb).await?, None);
    store.put_provider(&p).await?;
    assert_eq!(store.get_provider(p.agb).await?, Some(p.clone()));

    let again = Provider {
        name: "Someone else".into(),
        ..p.clone()
    };
    let err = store
        .put_provider(&again)
        .await
        .expect_err("a second registration");
    assert!(matches!(err, StoreError::Conflict(_)), "got {err:?}");
    assert_eq!(
        store.get_provider(p.agb).await?,
        Some(p.clone()),
        "the conflict changed nothing"
    );

    register(store.as_ref(), provider_b()).await?;
    let listed: Vec<AgbCode> = store
        .list_providers()
        .await?
        .into_iter()
        .map(|p| p.agb)
        .collect();
    assert_eq!(listed, vec![provider_a(), provider_b()]);
    Ok(())
}

async fn tokens_are_found_by_hash(store: Arc<dyn Store>) -> TestResult {
    let municipality = NewToken {
        token_hash: [0xAB; 32],
        role: Role::Municipality,
        scope: Some("GM0748".into()),
        label: "Bergen op Zoom".into(),
        created_at: now(),
    };
    let admin = NewToken {
        token_hash: [0xCD; 32],
        role: Role::Admin,
        scope: None,
        label: "operator".into(),
        created_at: now(),
    };
    let id1 = store.put_token(&municipality).await?;
    let id2 = store.put_token(&admin).await?;
    assert_ne!(id1, id2);

    let t = store
        .get_token(&municipality.token_hash)
        .await?
        .context("the token is found")?;
    assert_eq!(t.id, id1);
    assert_eq!(t.role, Role::Municipality);
    assert_eq!(t.scope.as_deref(), Some("GM0748"));
    assert_eq!(t.label, "Bergen op Zoom");
    assert_eq!(t.created_at, municipality.created_at);
    assert_eq!(t.revoked_at, None);

    let t = store.get_token(&admin.token_hash).await?.context("found")?;
    assert_eq!((t.id, t.role, t.scope), (id2, Role::Admin, None));

    assert_eq!(store.get_token(&[0xEF; 32]).await?, None, "unknown hash");

    let err = store
        .put_token(&NewToken {
            label: "copy".into(),
            ..admin.clone()
        })
        .await
        .expect_err("the same hash twice");
    assert!(matches!(err, StoreError::Conflict(_)), "got {err:?}");
    Ok(())
}

async fn a_new_batch_stores_every_record(store: Arc<dyn Store>) -> TestResult {
    register(store.as_ref(), provider_a()).await?;
    let mut b = batch(provider_a(), Uuid::new_v4(), records(0..100));
    // Finer than the stores keep: the receipt carries the stored precision.
    b.received_at = b.received_at.replace_nanosecond(123_456_789)?;
    let r = stored(store.put_batch(&b).await?)?;
    assert_eq!(
        r,
        BatchReceipt {
            batch_id: b.batch_id,
            provider: provider_a(),
            key_id: key_id(),
            record_count: 100,
            stored: 100,
            corrected: 0,
            unchanged: 0,
            received_at: b.received_at.replace_nanosecond(123_456_000)?,
            content_digest: hex_of(&b.content_digest),
            replayed: false,
        }
    );
    assert_eq!(store.count_trajectories(Some(provider_a())).await?, 100);
    assert_eq!(store.count_trajectories(Some(provider_b())).await?, 0);
    assert_eq!(store.count_trajectories(None).await?, 100);
    assert_eq!(
        store.get_batch(provider_a(), b.batch_id).await?,
        Some(r.clone())
    );
    assert_eq!(store.list_batches(provider_a()).await?, vec![r]);
    assert_eq!(
        store.list_trajectories(provider_a()).await?,
        sorted(b.records.clone())
    );
    Ok(())
}

async fn a_replay_returns_the_original_receipt_and_writes_nothing(
    store: Arc<dyn Store>,
) -> TestResult {
    register(store.as_ref(), provider_a()).await?;
    let b = batch(provider_a(), Uuid::new_v4(), records(0..50));
    let original = stored(store.put_batch(&b).await?)?;

    // A retry, later: same id and content.
    let mut retry = b.clone();
    retry.received_at = original.received_at + time::Duration::seconds(30);
    let again = replayed(store.put_batch(&retry).await?)?;
    assert_eq!(
        again,
        BatchReceipt {
            replayed: true,
            ..original.clone()
        }
    );
    assert_eq!(store.count_trajectories(None).await?, 50);
    assert_eq!(
        store.list_batches(provider_a()).await?,
        vec![original.clone()]
    );
    assert_eq!(
        store.get_batch(provider_a(), b.batch_id).await?,
        Some(original)
    );
    Ok(())
}

async fn the_same_batch_id_with_other_content_is_a_conflict(store: Arc<dyn Store>) -> TestResult {
    register(store.as_ref(), provider_a()).await?;
    let id = Uuid::new_v4();
    let first = stored(
        store
            .put_batch(&batch(provider_a(), id, records(0..10)))
            .await?,
    )?;
    let before = store.list_trajectories(provider_a()).await?;

    let mut changed = records(0..10);
    changed[3].satisfaction = Some(Satisfaction::new(1).expect("valid"));
    changed.push(full_record(10));
    let err = store
        .put_batch(&batch(provider_a(), id, changed))
        .await
        .expect_err("other content under a used batch id");
    assert!(matches!(err, StoreError::Conflict(_)), "got {err:?}");

    assert_eq!(store.list_trajectories(provider_a()).await?, before);
    assert_eq!(store.list_batches(provider_a()).await?, vec![first]);
    Ok(())
}

async fn a_later_batch_corrects_changed_trajectories(store: Arc<dyn Store>) -> TestResult {
    register(store.as_ref(), provider_a()).await?;
    // Ten trajectories, 0..5 still running at first upload.
    let mut first: Vec<WireRecord> = records(0..10);
    for r in &mut first[..5] {
        r.end_month = None;
        r.end_reason = None;
    }
    stored(
        store
            .put_batch(&batch(provider_a(), Uuid::new_v4(), first.clone()))
            .await?,
    )?;

    // Second upload: 0..4 ended now (corrected), 4 with one other value (corrected), 5..8 as before
    // (unchanged), 10 and 11 new (stored).
    let mut second: Vec<WireRecord> = (0..4).map(full_record).collect();
    let mut four = first[4].clone();
    four.goals_achieved = four.goals_agreed;
    second.push(four);
    second.extend(first[5..8].iter().cloned());
    second.push(full_record(10));
    second.push(full_record(11));
    let b2 = batch(provider_a(), Uuid::new_v4(), second.clone());
    let r = stored(store.put_batch(&b2).await?)?;
    assert_eq!(
        (r.record_count, r.stored, r.corrected, r.unchanged),
        (10, 2, 5, 3)
    );

    let mut expected: Vec<WireRecord> = second.clone();
    expected.extend(first[8..10].iter().cloned());
    assert_eq!(
        store.list_trajectories(provider_a()).await?,
        sorted(expected)
    );
    assert_eq!(store.count_trajectories(None).await?, 12);
    assert_eq!(store.get_batch(provider_a(), b2.batch_id).await?, Some(r));

    // A change of the client pseudonym alone is a correction too.
    let mut moved = full_record(10);
    moved.client = pseudonym(0xC9, 1);
    let r = stored(
        store
            .put_batch(&batch(provider_a(), Uuid::new_v4(), vec![moved.clone()]))
            .await?,
    )?;
    assert_eq!((r.stored, r.corrected, r.unchanged), (0, 1, 0));
    let listed = store.list_trajectories(provider_a()).await?;
    ensure!(
        listed.contains(&moved),
        "the corrected client pseudonym is stored"
    );
    Ok(())
}

async fn an_identical_reupload_counts_unchanged(store: Arc<dyn Store>) -> TestResult {
    register(store.as_ref(), provider_a()).await?;
    let mut rs = records(0..20);
    rs.extend((0..5).map(minimal_record));
    stored(
        store
            .put_batch(&batch(provider_a(), Uuid::new_v4(), rs.clone()))
            .await?,
    )?;
    // A new batch id with the same records (the provider re-exported everything).
    let r = stored(
        store
            .put_batch(&batch(provider_a(), Uuid::new_v4(), rs.clone()))
            .await?,
    )?;
    assert_eq!(
        (r.record_count, r.stored, r.corrected, r.unchanged),
        (25, 0, 0, 25)
    );
    assert_eq!(store.count_trajectories(None).await?, 25);
    assert_eq!(store.list_trajectories(provider_a()).await?, sorted(rs));
    assert_eq!(store.list_batches(provider_a()).await?.len(), 2);
    Ok(())
}

async fn a_failure_mid_batch_leaves_nothing(store: Arc<dyn Store>) -> TestResult {
    register(store.as_ref(), provider_a()).await?;
    let first = stored(
        store
            .put_batch(&batch(provider_a(), Uuid::new_v4(), records(0..10)))
            .await?,
    )?;
    let trajectories_before = store.list_trajectories(provider_a()).await?;

    // Corrections of stored trajectories, new ones, and in the middle one record the database must
    // refuse (more goals achieved than agreed: the types allow it, the CHECK constraint does not).
    let mut rs: Vec<WireRecord> = (0..5)
        .map(|i| {
            let mut r = full_record(i);
            r.satisfaction = Some(Satisfaction::new(10).expect("valid"));
            r
        })
        .collect();
    rs.extend(records(100..120));
    let mut bad = full_record(120);
    bad.goals_agreed = Some(GoalCount::new(2).expect("valid"));
    bad.goals_achieved = Some(GoalCount::new(3).expect("valid"));
    rs.insert(12, bad);
    rs.extend(records(121..140));
    let failing = batch(provider_a(), Uuid::new_v4(), rs);

    let err = store
        .put_batch(&failing)
        .await
        .expect_err("a constraint violation");
    assert!(matches!(err, StoreError::Other(_)), "got {err:?}");

    assert_eq!(store.count_trajectories(None).await?, 10);
    assert_eq!(
        store.list_trajectories(provider_a()).await?,
        trajectories_before
    );
    assert_eq!(store.list_batches(provider_a()).await?, vec![first]);
    assert_eq!(store.get_batch(provider_a(), failing.batch_id).await?, None);

    // Nothing of it remains, not even the claim on its batch id: fixed, it stores.
    let mut fixed = failing.clone();
    fixed
        .records
        .retain(|r| r.trajectory != pseudonym(0x7A, 120));
    fixed.content_digest = [9; 32];
    let r = stored(store.put_batch(&fixed).await?)?;
    assert_eq!((r.stored, r.corrected, r.unchanged), (39, 5, 0));
    Ok(())
}

async fn batches_are_listed_newest_first_per_provider(store: Arc<dyn Store>) -> TestResult {
    register(store.as_ref(), provider_a()).await?;
    register(store.as_ref(), provider_b()).await?;
    let t0 = now();
    let mut receipts = Vec::new();
    // Received out of insertion order: the list follows the receipt time.
    for (i, offset) in [(0u32, 1i64), (1, 0), (2, 2)] {
        let mut b = batch(provider_a(), Uuid::new_v4(), records(i * 10..i * 10 + 10));
        b.received_at = t0 + time::Duration::seconds(offset);
        receipts.push((offset, stored(store.put_batch(&b).await?)?));
    }
    receipts.sort_by_key(|(offset, _)| std::cmp::Reverse(*offset));
    let newest_first: Vec<BatchReceipt> = receipts.into_iter().map(|(_, r)| r).collect();
    assert_eq!(store.list_batches(provider_a()).await?, newest_first);

    // Provider B sees none of A's batches, not even by id.
    let a_batch = newest_first[0].batch_id;
    assert_eq!(store.list_batches(provider_b()).await?, vec![]);
    assert_eq!(store.get_batch(provider_b(), a_batch).await?, None);
    assert_eq!(store.get_batch(provider_a(), Uuid::new_v4()).await?, None);

    // Batch ids are unique per provider: B may use the same id, for its own trajectories.
    let rb = stored(
        store
            .put_batch(&batch(provider_b(), a_batch, records(0..3)))
            .await?,
    )?;
    assert_eq!(
        rb.stored, 3,
        "the same trajectory pseudonym at another provider is another row"
    );
    assert_eq!(store.list_batches(provider_b()).await?, vec![rb.clone()]);
    assert_eq!(store.get_batch(provider_b(), a_batch).await?, Some(rb));
    assert_eq!(store.count_trajectories(Some(provider_a())).await?, 30);
    assert_eq!(store.count_trajectories(Some(provider_b())).await?, 3);
    assert_eq!(
        store.list_trajectories(provider_b()).await?,
        sorted(records(0..3))
    );
    Ok(())
}

async fn concurrent_identical_uploads_store_once(store: Arc<dyn Store>) -> TestResult {
    register(store.as_ref(), provider_a()).await?;
    let b = Arc::new(batch(provider_a(), Uuid::new_v4(), records(0..2_000)));
    let tasks: Vec<_> = (0..8)
        .map(|_| {
            let store = Arc::clone(&store);
            let b = Arc::clone(&b);
            tokio::spawn(async move { store.put_batch(&b).await })
        })
        .collect();
    let mut stored_receipts = Vec::new();
    let mut replayed_receipts = Vec::new();
    for t in tasks {
        match t.await?? {
            PutBatch::Stored(r) => stored_receipts.push(r),
            PutBatch::Replayed(r) => replayed_receipts.push(r),
        }
    }
    assert_eq!(
        stored_receipts.len(),
        1,
        "exactly one upload stores the batch"
    );
    assert_eq!(replayed_receipts.len(), 7);
    let original = stored_receipts.remove(0);
    assert_eq!(original.stored, 2_000);
    for r in replayed_receipts {
        assert_eq!(
            r,
            BatchReceipt {
                replayed: true,
                ..original.clone()
            }
        );
    }
    assert_eq!(store.count_trajectories(None).await?, 2_000);
    assert_eq!(store.list_batches(provider_a()).await?, vec![original]);
    Ok(())
}

async fn concurrent_uploads_with_other_content_conflict(store: Arc<dyn Store>) -> TestResult {
    register(store.as_ref(), provider_a()).await?;
    let id = Uuid::new_v4();
    let tasks: Vec<_> = (0..6u32)
        .map(|k| {
            let store = Arc::clone(&store);
            // Each task its own content (and trajectories) under the same batch id.
            let b = batch(provider_a(), id, records(k * 1_000..k * 1_000 + 500));
            tokio::spawn(async move { (k, store.put_batch(&b).await) })
        })
        .collect();
    let mut winners = Vec::new();
    for t in tasks {
        match t.await? {
            (k, Ok(PutBatch::Stored(r))) => winners.push((k, r)),
            (_, Ok(PutBatch::Replayed(_))) => anyhow::bail!("other content must not replay"),
            (_, Err(StoreError::Conflict(_))) => {}
            (_, Err(e)) => anyhow::bail!("expected Conflict, got {e:?}"),
        }
    }
    assert_eq!(winners.len(), 1, "exactly one upload wins the batch id");
    let (k, receipt) = winners.remove(0);
    assert_eq!(store.list_batches(provider_a()).await?, vec![receipt]);
    assert_eq!(
        store.list_trajectories(provider_a()).await?,
        sorted(records(k * 1_000..k * 1_000 + 500)),
        "only the winner's records are stored"
    );
    Ok(())
}

async fn every_field_round_trips(store: Arc<dyn Store>) -> TestResult {
    register(store.as_ref(), provider_a()).await?;
    let mut rs: Vec<WireRecord> = records(0..84);
    rs.extend((0..3).map(minimal_record));
    // The edges of every range and every code.
    let mut low = full_record(1_000);
    low.intensity = Some(Intensity::new(1).expect("valid"));
    low.product_category = Some(ProductCategory::new(40).expect("valid"));
    low.start_month = month("1900-01");
    low.end_month = Some(month("1900-01"));
    low.end_reason = Some(EndReason::new(2).expect("valid"));
    low.satisfaction = Some(Satisfaction::new(1).expect("valid"));
    low.problem_t_pre = Some(TScore::new(20).expect("valid"));
    low.problem_t_post = Some(TScore::new(20).expect("valid"));
    low.goals_agreed = Some(GoalCount::new(0).expect("valid"));
    low.goals_achieved = Some(GoalCount::new(0).expect("valid"));
    low.municipality = "GM0001".parse().expect("valid");
    low.target_group = "A".parse().expect("valid");
    low.instrument = Some("Z_9".parse().expect("valid"));
    let mut high = full_record(1_001);
    high.intensity = Some(Intensity::new(4).expect("valid"));
    high.product_category = Some(ProductCategory::new(55).expect("valid"));
    high.start_month = month("2999-11");
    high.end_month = Some(month("2999-12"));
    high.end_reason = Some(EndReason::new(39).expect("valid"));
    high.satisfaction = Some(Satisfaction::new(10).expect("valid"));
    high.problem_t_pre = Some(TScore::new(100).expect("valid"));
    high.problem_t_post = Some(TScore::new(100).expect("valid"));
    high.goals_agreed = Some(GoalCount::new(100).expect("valid"));
    high.goals_achieved = Some(GoalCount::new(100).expect("valid"));
    high.municipality = "GM9999".parse().expect("valid");
    high.target_group = "ABCDEFGHIJKLMNOP".parse().expect("valid");
    high.client = Pseudonym([0xFF; 32]);
    high.trajectory = Pseudonym([0xFF; 32]);
    let mut zero = minimal_record(1_002);
    zero.client = Pseudonym([0; 32]);
    zero.trajectory = Pseudonym([0; 32]);
    // Optional fields one at a time.
    let mut partial = minimal_record(1_003);
    partial.instrument = Some("CBCL".parse().expect("valid"));
    partial.carry_on_without_help = Some(CarryOn::Unknown);
    partial.goals_agreed = Some(GoalCount::new(3).expect("valid"));
    rs.extend([low, high, zero, partial]);

    // Every value of every closed set appears.
    for i in 0..12u8 {
        ensure!(rs.iter().any(|r| r.start_month.month() == i + 1));
    }
    let codes: HashSet<u8> = rs
        .iter()
        .filter_map(|r| r.end_reason.map(EndReason::code))
        .collect();
    ensure!(codes.len() >= 8, "end reasons covered: {codes:?}");
    for band in AgeBand::ALL {
        ensure!(rs.iter().any(|r| r.age_band == *band));
    }

    let r = stored(
        store
            .put_batch(&batch(provider_a(), Uuid::new_v4(), rs.clone()))
            .await?,
    )?;
    assert_eq!(r.stored as usize, rs.len());
    assert_eq!(store.list_trajectories(provider_a()).await?, sorted(rs));
    Ok(())
}

async fn a_large_batch_is_stored_completely(store: Arc<dyn Store>) -> TestResult {
    register(store.as_ref(), provider_a()).await?;
    let rs = records(0..20_000);
    let r = stored(
        store
            .put_batch(&batch(provider_a(), Uuid::new_v4(), rs.clone()))
            .await?,
    )?;
    assert_eq!((r.record_count, r.stored), (20_000, 20_000));
    assert_eq!(store.count_trajectories(Some(provider_a())).await?, 20_000);
    assert_eq!(store.list_trajectories(provider_a()).await?, sorted(rs));
    Ok(())
}

fn hex_of(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The HTTP layer answers a retryable 503 for `Unavailable`: a server that does not answer is one.
#[tokio::test]
async fn an_unreachable_postgres_is_unavailable() {
    // Port 1 on the loopback: nothing listens there; the pool retries until its acquire timeout.
    let err = kwm_service::store::connect("postgres://kwm@127.0.0.1:1/kwm")
        .await
        .expect_err("nothing listens on port 1");
    assert!(matches!(err, StoreError::Unavailable(_)), "got {err:?}");
}

/// A URL of a database the service does not support is a configuration error, not an outage.
#[tokio::test]
async fn an_unsupported_url_is_refused() {
    let err = kwm_service::store::connect("mysql://localhost/kwm")
        .await
        .expect_err("not a supported scheme");
    assert!(matches!(err, StoreError::Other(_)), "got {err:?}");
}

/// `sqlite::memory:` is a private database that lives as long as the store (for quick experiments).
#[tokio::test]
async fn an_in_memory_sqlite_store_works() -> TestResult {
    let store = kwm_service::store::connect("sqlite::memory:").await?;
    register(store.as_ref(), provider_a()).await?;
    let r = stored(
        store
            .put_batch(&batch(provider_a(), Uuid::new_v4(), records(0..10)))
            .await?,
    )?;
    assert_eq!(r.stored, 10);
    assert_eq!(store.count_trajectories(None).await?, 10);
    Ok(())
}
