//! The store conformance suite: the same tests against every backend of the `Store` trait, SQLite
//! always (a temporary file) and PostgreSQL when `KWM_TEST_DATABASE_URL` is set (a fresh database per
//! test, dropped afterwards; in CI an unset variable fails the PostgreSQL tests instead of skipping).

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{ensure, Context};
use kwm_schemas::api::BatchReceipt;
use kwm_schemas::codes::{
    AgeBand, CarryOn, EndReason, GoalCount, Intensity, ProductCategory, Respondent, Satisfaction,
    TScore,
};
use kwm_schemas::envelope::KeyId;
use kwm_schemas::region::Epsilon;
use kwm_schemas::{AgbCode, Month, Pseudonym, Role, WireRecord};
use kwm_service::audit::{verify_chain, AuditAction, AuditEntry, NewAuditEntry};
use kwm_service::store::{
    ChangeSink, KeyCheck, NewBatch, NewRelease, NewRound, NewRoundRelease, NewSession, NewToken,
    PrivacyCharge, Provider, PutBatch, PutRelease, PutRound, RegionalKeyCheck, RoundRecord,
    ServiceKeyKind, Store, StoreError, StoredRelease, StoredRoundRelease, StoredServiceKey,
    Withdrawn,
};
use kwm_service::store::{NewProject, NewResearchAnswer, Project, PutResearch, ResearchKind};
use time::OffsetDateTime;
use uuid::Uuid;

type TestResult = anyhow::Result<()>;

/// Generates, for each named test function `async fn name(store: Arc<dyn Store>) -> TestResult`, one
/// test per backend: `sqlite::name` and `postgres::name`; and for each function after `pairs:`,
/// `async fn name(a: Arc<dyn Store>, b: Arc<dyn Store>) -> TestResult`, the same with two stores
/// (two pools, as two service instances have) on one database.
macro_rules! conformance_tests {
    ($($name:ident),+ $(,)? ; pairs: $($pair:ident),+ $(,)?) => {
        mod sqlite {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() -> super::TestResult {
                    let db = kwm_tests::TempSqlite::new();
                    let store = kwm_service::store::connect(db.url()).await?;
                    super::$name(store).await
                }
            )+
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $pair() -> super::TestResult {
                    let db = kwm_tests::TempSqlite::new();
                    let a = kwm_service::store::connect(db.url()).await?;
                    let b = kwm_service::store::connect(db.url()).await?;
                    super::$pair(a, b).await
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
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $pair() -> super::TestResult {
                    let Some(db) = kwm_tests::EphemeralPostgres::create().await else {
                        return Ok(());
                    };
                    let a = kwm_service::store::connect(db.url()).await?;
                    let b = kwm_service::store::connect(db.url()).await?;
                    super::$pair(a, b).await
                }
            )+
        }
    };
}

conformance_tests!(
    ping_answers,
    the_regional_key_check_is_registered_once_and_replaced_only_on_purpose,
    providers_are_stored_once,
    one_signing_key_belongs_to_one_provider,
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
    trajectories_between_are_those_overlapping_the_months,
    trajectories_between_are_ordered_by_provider_and_pseudonym,
    the_data_version_changes_with_the_data_only,
    a_release_is_stored_once_per_data_version,
    the_release_head_comes_with_the_current_data_version,
    releases_are_found_and_listed,
    a_release_body_round_trips,
    partitions_are_charged_exactly_up_to_the_cap,
    a_release_over_any_partition_cap_charges_nothing,
    an_inexact_or_oversized_epsilon_is_refused,
    the_audit_chain_verifies_and_pages,
    the_audit_log_filters_by_provider,
    withdrawing_a_batch_removes_its_rows_and_receipt,
    withdrawing_a_trajectory_removes_a_batch_left_empty,
    withdrawing_an_export_keeps_what_a_later_export_carried,
    a_withdrawn_batch_id_stays_refused,
    a_correction_back_to_an_earlier_value_lands,
    the_change_feed_finds_the_rows_a_withdrawn_batch_left_to_a_later_one,
    a_token_is_revoked_once,
    tokens_are_listed_oldest_first_without_hashes,
    the_change_feed_of_an_empty_store_is_empty,
    the_change_feed_follows_new_corrected_and_replayed_batches,
    the_change_feed_follows_withdrawals_and_uploads_after_them,
    the_change_feed_brings_every_older_mark_to_the_table,
    a_change_mark_not_handed_out_is_refused,
    a_withdrawn_pseudonym_leaves_the_change_feed_after_its_retention,
    a_cancelled_change_read_never_holds_up_the_writers,
    rounds_are_versioned_per_period_and_stored_once_per_data_version,
    rounds_are_listed_newest_first,
    round_releases_of_every_version_stay_readable,
    data_years_are_charged_exactly_up_to_the_cap,
    a_round_over_the_cap_in_any_year_is_refused_whole,
    a_round_and_its_audit_entry_are_stored_together,
    an_invalid_round_is_refused_and_writes_nothing,
    a_round_or_release_id_taken_is_a_conflict_and_writes_nothing,
    a_key_set_is_stored_once_with_its_keys,
    a_rotation_retires_the_unretired_keys_and_adds_one,
    only_long_retired_hpke_keys_are_deleted,
    research_projects_are_numbered_listed_and_closed_once,
    research_answers_are_charged_up_to_the_project_and_the_years_reserve,
    a_session_lives_until_it_expires_is_ended_or_its_token_is_revoked;
    pairs:
    a_session_opened_on_one_instance_is_seen_and_ended_on_the_other,
    concurrent_releases_on_two_instances_never_pass_the_cap,
    concurrent_releases_of_one_data_version_store_once,
    concurrent_releases_on_other_partitions_get_distinct_versions,
    concurrent_audit_appends_on_two_instances_keep_one_chain,
    the_change_feed_misses_nothing_under_concurrent_writers_on_two_instances,
    concurrent_rounds_on_two_instances_never_pass_a_years_cap,
    two_instances_publishing_one_data_version_store_one_round,
    two_instances_initialising_at_once_store_one_key_set,
    a_withdrawal_racing_a_later_export_on_two_instances_keeps_its_rows,
    concurrent_research_answers_on_two_instances_never_pass_a_cap,
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
            // One key per provider: the store refuses a key registered for another AGB code.
            signing_public_key: agb.as_str().bytes().cycle().take(32).collect(),
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
        other => anyhow::bail!("expected Stored, got {other:?}"),
    }
}

fn replayed(outcome: PutBatch) -> anyhow::Result<BatchReceipt> {
    match outcome {
        PutBatch::Replayed(r) => Ok(r),
        other => anyhow::bail!("expected Replayed, got {other:?}"),
    }
}

fn refused_as_withdrawn(outcome: PutBatch) -> anyhow::Result<OffsetDateTime> {
    match outcome {
        PutBatch::Withdrawn { at } => Ok(at),
        other => anyhow::bail!("expected Withdrawn, got {other:?}"),
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

async fn the_regional_key_check_is_registered_once_and_replaced_only_on_purpose(
    store: Arc<dyn Store>,
) -> TestResult {
    assert_eq!(store.get_regional_key_check().await?, None);
    let first = RegionalKeyCheck {
        check_value: [1; 32],
        registered_at: now(),
    };
    store.put_regional_key_check(&first, false).await?;
    assert_eq!(store.get_regional_key_check().await?, Some(first.clone()));
    // The same value again is no change of key.
    store.put_regional_key_check(&first, false).await?;
    let second = RegionalKeyCheck {
        check_value: [2; 32],
        registered_at: now(),
    };
    let err = store
        .put_regional_key_check(&second, false)
        .await
        .expect_err("another value without replace");
    assert!(matches!(err, StoreError::Conflict(_)), "got {err:?}");
    assert_eq!(
        store.get_regional_key_check().await?,
        Some(first),
        "the conflict changed nothing"
    );
    store.put_regional_key_check(&second, true).await?;
    assert_eq!(store.get_regional_key_check().await?, Some(second));
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

async fn one_signing_key_belongs_to_one_provider(store: Arc<dyn Store>) -> TestResult {
    let key_a: Vec<u8> = (0u8..32).collect();
    let key_b: Vec<u8> = (100u8..132).collect();
    let a = Provider {
        agb: provider_a(),
        name: "Jeugdhulp West".into(),
        signing_public_key: key_a.clone(),
        created_at: now(),
    };
    store.put_provider(&a).await?;
    let err = store
        .put_provider(&Provider {
            agb: provider_b(),
            name: "Another".into(),
            ..a.clone()
        })
        .await
        .expect_err("the same key for a second AGB code");
    match &err {
        StoreError::Conflict(why) => assert!(why.contains(provider_a().as_str()), "{why}"),
        other => panic!("a conflict expected, got {other:?}"),
    }
    assert_eq!(
        store.get_provider(provider_b()).await?,
        None,
        "nothing stored"
    );

    let b = Provider {
        agb: provider_b(),
        name: "Another".into(),
        signing_public_key: key_b.clone(),
        created_at: now(),
    };
    store.put_provider(&b).await?;
    // Replacing a key: not with another provider's, not for an unregistered provider.
    let err = store
        .put_provider_key(provider_a(), &key_b)
        .await
        .expect_err("b's key");
    assert!(matches!(err, StoreError::Conflict(_)), "got {err:?}");
    let err = store
        .put_provider_key(agb("11111111"), &[9; 32])
        .await
        .expect_err("not registered");
    assert!(matches!(err, StoreError::NotFound), "got {err:?}");
    assert_eq!(store.get_provider(provider_a()).await?, Some(a.clone()));

    let key_c: Vec<u8> = (50u8..82).collect();
    store.put_provider_key(provider_a(), &key_c).await?;
    // Setting the key a provider already has is no conflict.
    store.put_provider_key(provider_a(), &key_c).await?;
    let now_a = store.get_provider(provider_a()).await?.expect("a");
    assert_eq!(now_a.signing_public_key, key_c);
    assert_eq!(
        (now_a.name.as_str(), now_a.created_at),
        (a.name.as_str(), a.created_at),
        "only the key changed"
    );
    // The old key is free for someone else now.
    store
        .put_provider(&Provider {
            agb: agb("22222222"),
            name: "Third".into(),
            signing_public_key: key_a,
            created_at: now(),
        })
        .await?;
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
            PutBatch::Withdrawn { .. } => anyhow::bail!("nothing was withdrawn"),
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
            (_, Ok(PutBatch::Withdrawn { .. })) => anyhow::bail!("nothing was withdrawn"),
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
    assert_eq!(
        store.list_trajectories(provider_a()).await?,
        sorted(rs.clone())
    );
    // The release engine's read decodes every field the same.
    let between: Vec<(AgbCode, WireRecord)> =
        sorted(rs).into_iter().map(|r| (provider_a(), r)).collect();
    assert_eq!(
        store
            .list_trajectories_between(month("1900-01"), month("2999-12"))
            .await?,
        between
    );
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

// ---------------------------------------------------------------------------------------------------
// Release inputs, data version

/// A record of `provider`'s trajectory `i` that runs from `start` to `end` (running when `None`).
fn spanning(i: u32, start: &str, end: Option<&str>) -> WireRecord {
    let mut r = full_record(i);
    r.start_month = month(start);
    r.end_month = end.map(month);
    if end.is_none() {
        r.end_reason = None;
    }
    r
}

async fn trajectories_between_are_those_overlapping_the_months(
    store: Arc<dyn Store>,
) -> TestResult {
    register(store.as_ref(), provider_a()).await?;
    register(store.as_ref(), provider_b()).await?;
    // The range is 2025-01 ..= 2025-03.
    let (from, to) = (month("2025-01"), month("2025-03"));
    let inside = vec![
        spanning(1, "2025-02", Some("2025-02")),
        spanning(2, "2024-06", Some("2025-01")), // ends on the first month
        spanning(3, "2025-03", None),            // starts on the last month, running
        spanning(4, "2023-01", None),            // running since long ago
        spanning(5, "2024-12", Some("2025-06")), // spans the whole range
        spanning(6, "2025-03", Some("2025-04")),
    ];
    let outside = vec![
        spanning(7, "2025-04", None),            // starts after `to`
        spanning(8, "2025-04", Some("2025-05")), // starts after `to`
        spanning(9, "2024-01", Some("2024-12")), // ended before `from`
        spanning(10, "2020-01", Some("2020-02")),
    ];
    let mut a_records = inside.clone();
    a_records.extend(outside.clone());
    stored(
        store
            .put_batch(&batch(provider_a(), Uuid::new_v4(), a_records))
            .await?,
    )?;
    // Provider B has the same trajectory pseudonyms for 1..=3 (other rows), and one of its own.
    let mut b_records: Vec<WireRecord> = inside[..3]
        .iter()
        .map(|r| {
            let mut r = r.clone();
            r.client = pseudonym(0xCB, 1);
            r
        })
        .collect();
    b_records.push(spanning(20, "2025-01", None));
    b_records.push(spanning(21, "2025-04", None));
    stored(
        store
            .put_batch(&batch(provider_b(), Uuid::new_v4(), b_records.clone()))
            .await?,
    )?;

    let mut expected: Vec<(AgbCode, WireRecord)> = sorted(inside)
        .into_iter()
        .map(|r| (provider_a(), r))
        .collect();
    expected.extend(
        sorted(b_records[..4].to_vec())
            .into_iter()
            .map(|r| (provider_b(), r)),
    );
    assert_eq!(store.list_trajectories_between(from, to).await?, expected);

    // One month; and a range nothing overlaps.
    let one: Vec<Pseudonym> = store
        .list_trajectories_between(month("2025-04"), month("2025-04"))
        .await?
        .into_iter()
        .filter(|(p, _)| *p == provider_a())
        .map(|(_, r)| r.trajectory)
        .collect();
    let mut want: Vec<Pseudonym> = [3, 4, 5, 6, 7, 8]
        .iter()
        .map(|&i| full_record(i).trajectory)
        .collect();
    want.sort();
    assert_eq!(one, want);
    assert_eq!(
        store
            .list_trajectories_between(month("2019-01"), month("2019-12"))
            .await?,
        vec![]
    );
    Ok(())
}

async fn trajectories_between_are_ordered_by_provider_and_pseudonym(
    store: Arc<dyn Store>,
) -> TestResult {
    let providers = [agb("30000000"), provider_b(), provider_a()];
    let mut expected = Vec::new();
    for (k, p) in providers.into_iter().enumerate() {
        register(store.as_ref(), p).await?;
        // Pseudonyms in no particular order, as HMAC outputs are; and a few that agree on their
        // first bytes and differ only at the end.
        let mut rs: Vec<WireRecord> = (0..6_000u32)
            .map(|i| {
                let mut r = full_record(i);
                let seed = format!("{k}-{i}");
                let digest = ring::digest::digest(&ring::digest::SHA256, seed.as_bytes());
                r.trajectory = Pseudonym::from_slice(digest.as_ref()).expect("32 bytes");
                r
            })
            .collect();
        for (j, last) in [9u8, 3, 200, 0].into_iter().enumerate() {
            let mut r = full_record(5_000 + j as u32);
            let mut b = [0x5A; 32];
            b[31] = last;
            r.trajectory = Pseudonym(b);
            rs.push(r);
        }
        for part in rs.chunks(1_100) {
            stored(
                store
                    .put_batch(&batch(p, Uuid::new_v4(), part.to_vec()))
                    .await?,
            )?;
        }
        expected.extend(rs.into_iter().map(|r| (p, r)));
    }
    expected.sort_by_key(|(p, r)| (*p, r.trajectory));
    assert_eq!(
        store
            .list_trajectories_between(month("2020-01"), month("2024-12"))
            .await?,
        expected
    );
    Ok(())
}

async fn the_data_version_changes_with_the_data_only(store: Arc<dyn Store>) -> TestResult {
    register(store.as_ref(), provider_a()).await?;
    let mut seen = Vec::new();
    let v0 = store.data_version().await?;
    seen.push(v0.clone());

    let b1 = batch(provider_a(), Uuid::new_v4(), records(0..10));
    stored(store.put_batch(&b1).await?)?;
    let v1 = store.data_version().await?;
    ensure!(v1 != v0, "a stored batch changes the data version");
    seen.push(v1.clone());

    // A replay and a batch of only unchanged rows change nothing a release could see.
    replayed(store.put_batch(&b1).await?)?;
    assert_eq!(store.data_version().await?, v1, "after a replay");
    let same = stored(
        store
            .put_batch(&batch(provider_a(), Uuid::new_v4(), records(0..10)))
            .await?,
    )?;
    assert_eq!(same.unchanged, 10);
    assert_eq!(store.data_version().await?, v1, "after an unchanged batch");
    // A failed withdrawal neither.
    let err = store
        .withdraw_batch(provider_a(), Uuid::new_v4())
        .await
        .expect_err("no such batch");
    assert!(matches!(err, StoreError::NotFound), "got {err:?}");
    assert_eq!(store.data_version().await?, v1, "after a failed withdrawal");

    // A correction does, even received at an earlier time.
    let mut corrected = full_record(3);
    corrected.satisfaction = Some(Satisfaction::new(1).expect("valid"));
    let mut b = batch(provider_a(), Uuid::new_v4(), vec![corrected]);
    b.received_at = b1.received_at - time::Duration::hours(1);
    let r = stored(store.put_batch(&b).await?)?;
    assert_eq!(r.corrected, 1);
    let v2 = store.data_version().await?;
    seen.push(v2.clone());

    // Every withdrawal does.
    store
        .withdraw_trajectory(provider_a(), &full_record(5).trajectory)
        .await?;
    seen.push(store.data_version().await?);
    store.withdraw_batch(provider_a(), b.batch_id).await?;
    seen.push(store.data_version().await?);
    // Storing the withdrawn trajectory again: as many batches as after the correction, and yet
    // another version.
    stored(
        store
            .put_batch(&batch(provider_a(), Uuid::new_v4(), vec![full_record(5)]))
            .await?,
    )?;
    seen.push(store.data_version().await?);

    let distinct: HashSet<&String> = seen.iter().collect();
    assert_eq!(distinct.len(), seen.len(), "versions repeat: {seen:?}");
    ensure!(
        seen.iter().all(|v| !v.is_empty() && v.len() <= 64),
        "short strings: {seen:?}"
    );
    Ok(())
}

// ---------------------------------------------------------------------------------------------------
// Releases and budget

fn eps(s: &str) -> Epsilon {
    s.parse().expect("a valid epsilon")
}

fn new_release(
    scope: &str,
    period: &str,
    data_version: &str,
    epsilon: &str,
    cap: &str,
    partitions: &[&str],
) -> NewRelease {
    NewRelease {
        id: Uuid::new_v4(),
        scope: scope.into(),
        period: period.into(),
        data_version: data_version.into(),
        epsilon: eps(epsilon),
        partitions: partitions.iter().map(|p| p.to_string()).collect(),
        cap: eps(cap),
        created_at: now(),
        body: serde_json::json!({ "scope": scope, "period": period, "data_version": data_version }),
    }
}

fn stored_release(outcome: PutRelease) -> anyhow::Result<StoredRelease> {
    match outcome {
        PutRelease::Stored(r) => Ok(r),
        other => anyhow::bail!("expected Stored, got {other:?}"),
    }
}

fn existing_release(outcome: PutRelease) -> anyhow::Result<StoredRelease> {
    match outcome {
        PutRelease::Existing(r) => Ok(r),
        other => anyhow::bail!("expected Existing, got {other:?}"),
    }
}

fn strings(items: &[&str]) -> Vec<String> {
    items.iter().map(|s| s.to_string()).collect()
}

const Q1: &str = "GM0748/2025-Q1";
const Q2: &str = "GM0748/2025-Q2";

/// The head of the newest release of (scope, period) and the data version, as one answer; each half
/// what the separate methods say.
async fn the_release_head_comes_with_the_current_data_version(store: Arc<dyn Store>) -> TestResult {
    let (head, v0) = store.get_latest_release_head("GM0748", "2025").await?;
    ensure!(head.is_none(), "no release yet: {head:?}");
    ensure!(v0 == store.data_version().await?);

    register(store.as_ref(), provider_a()).await?;
    stored(
        store
            .put_batch(&batch(provider_a(), Uuid::new_v4(), records(0..3)))
            .await?,
    )?;
    let v1 = store.data_version().await?;
    ensure!(v1 != v0, "a stored batch changes the data version");
    let r1 = stored_release(
        store
            .put_release(&new_release("GM0748", "2025", &v1, "0.5", "10", &[Q1]))
            .await?,
    )?;
    let r2 = stored_release(
        store
            .put_release(&new_release(
                "GM0748",
                "2025",
                "dv-later",
                "0.5",
                "10",
                &[Q1],
            ))
            .await?,
    )?;
    let (head, v) = store.get_latest_release_head("GM0748", "2025").await?;
    ensure!(
        head == Some((r2.id, "dv-later".to_string())),
        "the newest version's head: {head:?}"
    );
    ensure!(v == v1, "the current data version: {v} against {v1}");
    ensure!(r1.version == 1 && r2.version == 2);
    let (other, _) = store.get_latest_release_head("GM0777", "2025").await?;
    ensure!(other.is_none(), "another scope has none: {other:?}");
    Ok(())
}

async fn a_release_is_stored_once_per_data_version(store: Arc<dyn Store>) -> TestResult {
    let mut first = new_release("GM0748", "2025-H1", "dv-1", "0.5", "10", &[Q2, Q1]);
    // Finer than the stores keep: the stored release carries the stored precision.
    first.created_at = first.created_at.replace_nanosecond(987_654_321)?;
    let r1 = stored_release(store.put_release(&first).await?)?;
    assert_eq!(
        r1,
        StoredRelease {
            id: first.id,
            scope: "GM0748".into(),
            period: "2025-H1".into(),
            version: 1,
            data_version: "dv-1".into(),
            epsilon: eps("0.5"),
            created_at: first.created_at.replace_nanosecond(987_654_000)?,
            body: first.body.clone(),
        }
    );
    assert_eq!(store.get_release(first.id).await?, Some(r1.clone()));

    // The same data version again, under another id: the first release, and nothing charged.
    let again = new_release("GM0748", "2025-H1", "dv-1", "0.5", "10", &[Q1, Q2]);
    assert_eq!(existing_release(store.put_release(&again).await?)?, r1);
    assert_eq!(store.get_release(again.id).await?, None);
    assert_eq!(
        store.budget_spent(&strings(&[Q1, Q2])).await?,
        vec![Some(eps("0.5")), Some(eps("0.5"))]
    );

    // New data: version 2, charged again.
    let second = new_release("GM0748", "2025-H1", "dv-2", "0.5", "10", &[Q1, Q2]);
    let r2 = stored_release(store.put_release(&second).await?)?;
    assert_eq!((r2.version, r2.id), (2, second.id));
    assert_eq!(
        store
            .budget_spent(&strings(&[Q2, "GM0001/2025-Q1", Q1]))
            .await?,
        vec![Some(eps("1")), None, Some(eps("1"))],
        "in the order asked, None for a partition never charged"
    );

    // Versions count per (scope, period).
    let other = new_release("region", "2025-H1", "dv-2", "0.5", "10", &[Q1]);
    assert_eq!(stored_release(store.put_release(&other).await?)?.version, 1);
    let other = new_release("GM0748", "2025", "dv-2", "0.5", "10", &[Q1]);
    assert_eq!(stored_release(store.put_release(&other).await?)?.version, 1);
    assert_eq!(
        store.list_budget().await?,
        vec![(Q1.to_string(), eps("2")), (Q2.to_string(), eps("1"))]
    );
    Ok(())
}

async fn releases_are_found_and_listed(store: Arc<dyn Store>) -> TestResult {
    assert_eq!(store.get_latest_release("GM0748", "2025-Q1").await?, None);
    assert_eq!(store.list_releases(None, None).await?, vec![]);
    let t0 = now();
    let mut all = Vec::new();
    for (i, (scope, period)) in [
        ("GM0748", "2025-Q1"),
        ("GM0748", "2025-Q1"),
        ("GM0748", "2025-Q2"),
        ("region", "2025-Q1"),
        ("GM0748", "2025-Q1"),
    ]
    .into_iter()
    .enumerate()
    {
        let mut r = new_release(scope, period, &format!("dv-{i}"), "0.1", "10", &[Q1]);
        r.created_at = t0 + time::Duration::seconds(i as i64);
        all.push(stored_release(store.put_release(&r).await?)?);
    }
    let versions: Vec<u32> = all.iter().map(|r| r.version).collect();
    assert_eq!(versions, vec![1, 2, 1, 1, 3]);

    let latest = store.get_latest_release("GM0748", "2025-Q1").await?;
    assert_eq!(latest, Some(all[4].clone()));
    assert_eq!(
        store.get_latest_release("region", "2025-Q1").await?,
        Some(all[3].clone())
    );
    assert_eq!(store.get_latest_release("region", "2025-Q2").await?, None);
    assert_eq!(store.get_release(Uuid::new_v4()).await?, None);

    let newest_first: Vec<StoredRelease> = all.iter().rev().cloned().collect();
    assert_eq!(store.list_releases(None, None).await?, newest_first);
    let pick =
        |idx: &[usize]| -> Vec<StoredRelease> { idx.iter().map(|&i| all[i].clone()).collect() };
    assert_eq!(
        store.list_releases(Some("GM0748"), None).await?,
        pick(&[4, 2, 1, 0])
    );
    assert_eq!(
        store.list_releases(None, Some("2025-Q1")).await?,
        pick(&[4, 3, 1, 0])
    );
    assert_eq!(
        store.list_releases(Some("GM0748"), Some("2025-Q2")).await?,
        pick(&[2])
    );
    assert_eq!(store.list_releases(Some("GM0999"), None).await?, vec![]);
    Ok(())
}

async fn a_release_body_round_trips(store: Arc<dyn Store>) -> TestResult {
    let mut r = new_release("GM0748", "2025-Q1", "dv", "0.25", "10", &[Q1]);
    r.body = serde_json::json!({
        "release_id": r.id.to_string(),
        "tables": [
            {
                "id": "3.1",
                "cells": [
                    { "count": 120, "mean": 7.25, "ci95": [6.5, 8.0], "suppressed": null },
                    { "count": 0, "mean": null, "reason": "k", "pct": 0.1 },
                    { "count": -5, "mean": 1e-7, "big": 9007199254740993u64, "neg": -1.5e10 }
                ]
            }
        ],
        "text": "Zoë's \"quoted\" text, tab\t, newline\n, NUL \u{0} and 🧒",
        "empty": {},
        "list": [],
        "flag": true,
        "zebra": 1, "apple": 2
    });
    let stored = stored_release(store.put_release(&r).await?)?;
    assert_eq!(stored.body, r.body);
    let read = store.get_release(r.id).await?.context("stored")?;
    assert_eq!(read.body, r.body);
    assert_eq!(read, stored);
    Ok(())
}

async fn partitions_are_charged_exactly_up_to_the_cap(store: Arc<dyn Store>) -> TestResult {
    // 0.1 is no exact binary fraction: ten of them make exactly 1 in nano-units.
    for i in 0..10 {
        let r = new_release("GM0748", "2025-Q1", &format!("dv-{i}"), "0.1", "1", &[Q1]);
        stored_release(store.put_release(&r).await?)?;
    }
    assert_eq!(
        store.budget_spent(&strings(&[Q1])).await?,
        vec![Some(eps("1"))]
    );
    let over = new_release("GM0748", "2025-Q1", "dv-10", "0.1", "1", &[Q1]);
    assert_eq!(
        store.put_release(&over).await?,
        PutRelease::BudgetExhausted {
            partition: Q1.into(),
            spent: eps("1"),
            cap: eps("1"),
        }
    );

    // Cap 1, epsilon 0.5: two succeed, the third is refused.
    for i in 0..2 {
        let r = new_release("GM0748", "2025-Q2", &format!("dv-{i}"), "0.5", "1", &[Q2]);
        assert_eq!(stored_release(store.put_release(&r).await?)?.version, i + 1);
    }
    let third = new_release("GM0748", "2025-Q2", "dv-2", "0.5", "1", &[Q2]);
    assert!(matches!(
        store.put_release(&third).await?,
        PutRelease::BudgetExhausted { ref partition, spent, .. } if partition == Q2 && spent == eps("1")
    ));
    assert_eq!(store.get_release(third.id).await?, None);
    // A published release is still answered for its own data version.
    let asked_again = new_release("GM0748", "2025-Q2", "dv-1", "0.5", "1", &[Q2]);
    assert_eq!(
        existing_release(store.put_release(&asked_again).await?)?.version,
        2
    );
    assert_eq!(
        store.list_budget().await?,
        vec![(Q1.to_string(), eps("1")), (Q2.to_string(), eps("1"))]
    );
    Ok(())
}

async fn a_release_over_any_partition_cap_charges_nothing(store: Arc<dyn Store>) -> TestResult {
    let q3 = "GM0748/2025-Q3";
    // Q2 nearly spent.
    let r = new_release("GM0748", "2025-Q2", "dv-0", "0.75", "1", &[Q2]);
    stored_release(store.put_release(&r).await?)?;

    // A half-year release reading Q1 (fresh), Q2 (spent) and Q3 (fresh): refused, naming Q2, and
    // Q1 (charged before Q2 in sorted order) is not charged after all.
    let half = new_release("GM0748", "2025-H1", "dv-0", "0.5", "1", &[q3, Q2, Q1, Q2]);
    assert_eq!(
        store.put_release(&half).await?,
        PutRelease::BudgetExhausted {
            partition: Q2.into(),
            spent: eps("0.75"),
            cap: eps("1"),
        }
    );
    assert_eq!(
        store.budget_spent(&strings(&[Q1, Q2, q3])).await?,
        vec![None, Some(eps("0.75")), None]
    );
    assert_eq!(
        store.list_budget().await?,
        vec![(Q2.to_string(), eps("0.75"))]
    );
    assert_eq!(store.get_release(half.id).await?, None);
    assert_eq!(store.get_latest_release("GM0748", "2025-H1").await?, None);
    assert_eq!(store.list_releases(None, None).await?.len(), 1);

    // Partitions named twice are charged once.
    let twice = new_release("GM0748", "2025-Q1", "dv-0", "0.5", "1", &[Q1, Q1]);
    stored_release(store.put_release(&twice).await?)?;
    assert_eq!(
        store.budget_spent(&strings(&[Q1])).await?,
        vec![Some(eps("0.5"))]
    );
    Ok(())
}

async fn an_inexact_or_oversized_epsilon_is_refused(store: Arc<dyn Store>) -> TestResult {
    let mut third = new_release("GM0748", "2025-Q1", "dv", "1", "10", &[Q1]);
    third.epsilon = Epsilon::new(1, 3)?;
    let err = store
        .put_release(&third)
        .await
        .expect_err("not exact in nano-units");
    assert!(matches!(err, StoreError::Other(_)), "got {err:?}");
    let mut cap = new_release("GM0748", "2025-Q1", "dv", "1", "10", &[Q1]);
    cap.cap = Epsilon::new(10, 7)?;
    let err = store.put_release(&cap).await.expect_err("cap not exact");
    assert!(matches!(err, StoreError::Other(_)), "got {err:?}");
    let over = new_release("GM0748", "2025-Q1", "dv", "2", "1", &[Q1]);
    let err = store
        .put_release(&over)
        .await
        .expect_err("epsilon over the cap");
    assert!(matches!(err, StoreError::Other(_)), "got {err:?}");
    assert_eq!(store.list_budget().await?, vec![]);
    assert_eq!(store.list_releases(None, None).await?, vec![]);
    Ok(())
}

async fn concurrent_releases_on_two_instances_never_pass_the_cap(
    a: Arc<dyn Store>,
    b: Arc<dyn Store>,
) -> TestResult {
    // Cap 5, epsilon 0.25: room for exactly 20 of 40 releases with distinct data versions, all
    // reading the same partitions (named in varying order), half through each instance.
    let partitions = [Q1, Q2, "GM0748/2025-Q3"];
    let tasks: Vec<_> = (0..40usize)
        .map(|i| {
            let store = Arc::clone(if i % 2 == 0 { &a } else { &b });
            let mut named = partitions.to_vec();
            named.rotate_left(i % 3);
            let r = new_release("GM0748", "2025", &format!("dv-{i}"), "0.25", "5", &named);
            tokio::spawn(async move { store.put_release(&r).await })
        })
        .collect();
    let (mut stored, mut refused) = (Vec::new(), 0);
    for t in tasks {
        match t.await?? {
            PutRelease::Stored(r) => stored.push(r),
            PutRelease::BudgetExhausted { spent, cap, .. } => {
                assert_eq!((spent, cap), (eps("5"), eps("5")));
                refused += 1;
            }
            PutRelease::Existing(r) => anyhow::bail!("distinct data versions, got Existing {r:?}"),
        }
    }
    assert_eq!((stored.len(), refused), (20, 20));
    let mut versions: Vec<u32> = stored.iter().map(|r| r.version).collect();
    versions.sort();
    assert_eq!(versions, (1..=20).collect::<Vec<u32>>());
    for store in [&a, &b] {
        assert_eq!(
            store.budget_spent(&strings(&partitions)).await?,
            vec![Some(eps("5")); 3]
        );
        assert_eq!(store.list_releases(None, None).await?.len(), 20);
    }
    Ok(())
}

async fn concurrent_releases_of_one_data_version_store_once(
    a: Arc<dyn Store>,
    b: Arc<dyn Store>,
) -> TestResult {
    let tasks: Vec<_> = (0..12usize)
        .map(|i| {
            let store = Arc::clone(if i % 2 == 0 { &a } else { &b });
            let r = new_release("GM0748", "2025-Q1", "dv-same", "0.5", "1", &[Q1, Q2]);
            tokio::spawn(async move { store.put_release(&r).await })
        })
        .collect();
    let (mut stored, mut existing) = (Vec::new(), Vec::new());
    for t in tasks {
        match t.await?? {
            PutRelease::Stored(r) => stored.push(r),
            PutRelease::Existing(r) => existing.push(r),
            other => anyhow::bail!("expected Stored or Existing, got {other:?}"),
        }
    }
    assert_eq!((stored.len(), existing.len()), (1, 11));
    let winner = stored.remove(0);
    assert_eq!(winner.version, 1);
    ensure!(
        existing.iter().all(|r| *r == winner),
        "every loser gets the winner"
    );
    assert_eq!(
        a.budget_spent(&strings(&[Q1, Q2])).await?,
        vec![Some(eps("0.5")); 2],
        "charged once"
    );
    Ok(())
}

async fn concurrent_releases_on_other_partitions_get_distinct_versions(
    a: Arc<dyn Store>,
    b: Arc<dyn Store>,
) -> TestResult {
    // Nothing shared to lock on but (scope, period) itself.
    let tasks: Vec<_> = (0..16usize)
        .map(|i| {
            let store = Arc::clone(if i % 2 == 0 { &a } else { &b });
            let partition = format!("GM{:04}/2025-Q1", 100 + i);
            let r = new_release(
                "region",
                "2025-Q1",
                &format!("dv-{i}"),
                "1",
                "1",
                &[&partition],
            );
            tokio::spawn(async move { store.put_release(&r).await })
        })
        .collect();
    let mut versions = Vec::new();
    for t in tasks {
        versions.push(stored_release(t.await??)?.version);
    }
    versions.sort();
    assert_eq!(versions, (1..=16).collect::<Vec<u32>>());
    assert_eq!(b.list_budget().await?.len(), 16);
    Ok(())
}

// ---------------------------------------------------------------------------------------------------
// Release rounds and the privacy accountant

/// One rho in the accountant's nano-units.
const RHO: i64 = 1_000_000_000;

/// The audit entry the service would build for a round.
fn round_audit(id: Uuid, period: &str) -> NewAuditEntry {
    NewAuditEntry {
        // Finer than the stores keep.
        at: OffsetDateTime::now_utc(),
        actor_role: "region".into(),
        actor_id: "7".into(),
        action: AuditAction::Release,
        subject: format!("round {id} ({period})"),
        provider: None,
        details_digest: [0x5A; 32],
    }
}

/// A round with a release for each of [`ROUND_SCOPES`] (named out of order), whose bodies name the
/// round.
fn new_round(period: &str, data_version: &str, charges: &[(u16, i64)], cap_nanos: i64) -> NewRound {
    let id = Uuid::new_v4();
    NewRound {
        id,
        period: period.into(),
        data_version: data_version.into(),
        charges: charges.to_vec(),
        cap_nanos,
        published_by: "region token 7".into(),
        created_at: now(),
        first_only: false,
        releases: ["region", "GM0777", "providers", "GM0748"]
            .into_iter()
            .map(|scope| NewRoundRelease {
                id: Uuid::new_v4(),
                scope: scope.into(),
                body: serde_json::json!({
                    "scope": scope, "period": period, "data_version": data_version, "round": id,
                }),
            })
            .collect(),
        audit: round_audit(id, period),
    }
}

/// What a stored round's record says, from what was asked (at the stored precision).
fn round_record(round: &NewRound, version: u32, audit_seq: i64) -> RoundRecord {
    let mut releases: Vec<(String, Uuid)> = round
        .releases
        .iter()
        .map(|r| (r.scope.clone(), r.id))
        .collect();
    releases.sort();
    RoundRecord {
        id: round.id,
        period: round.period.clone(),
        version,
        data_version: round.data_version.clone(),
        charges: round.charges.clone(),
        published_by: round.published_by.clone(),
        created_at: round
            .created_at
            .replace_nanosecond(round.created_at.nanosecond() / 1000 * 1000)
            .expect("a valid nanosecond"),
        releases,
        audit_seq,
    }
}

fn stored_round(outcome: PutRound) -> anyhow::Result<RoundRecord> {
    match outcome {
        PutRound::Stored(r) => Ok(r),
        other => anyhow::bail!("expected Stored, got {other:?}"),
    }
}

fn unchanged_round(outcome: PutRound) -> anyhow::Result<RoundRecord> {
    match outcome {
        PutRound::Unchanged(r) => Ok(r),
        other => anyhow::bail!("expected Unchanged, got {other:?}"),
    }
}

/// The whole audit chain.
async fn audit_chain(store: &dyn Store) -> anyhow::Result<Vec<AuditEntry>> {
    Ok(store.list_audit(0, 100_000, None).await?)
}

/// Everything a refused or invalid round must leave as it was.
#[derive(Debug, PartialEq)]
struct AccountantState {
    rounds: Vec<RoundRecord>,
    spent: Vec<i64>,
    charges: Vec<PrivacyCharge>,
    audit: Vec<AuditEntry>,
}

async fn accountant_state(store: &dyn Store, years: &[u16]) -> anyhow::Result<AccountantState> {
    Ok(AccountantState {
        rounds: store.list_rounds(None).await?,
        spent: store.privacy_spent(years).await?,
        charges: store.list_privacy_charges().await?,
        audit: audit_chain(store).await?,
    })
}

async fn rounds_are_versioned_per_period_and_stored_once_per_data_version(
    store: Arc<dyn Store>,
) -> TestResult {
    let mut first = new_round(
        "2025",
        "dv-1",
        &[(2024, RHO / 4), (2025, RHO / 2)],
        10 * RHO,
    );
    // Finer than the stores keep: the record carries the stored precision. (A second back: the
    // rounds after it are newer.)
    first.created_at =
        (first.created_at - time::Duration::SECOND).replace_nanosecond(987_654_321)?;
    let r1 = stored_round(store.put_round(&first).await?)?;
    assert_eq!(r1, round_record(&first, 1, 1));
    assert_eq!(r1.created_at.nanosecond(), 987_654_000);
    assert_eq!(store.list_rounds(None).await?, vec![r1.clone()]);

    // The same data version again, under another id: the stored round, nothing charged or audited.
    let again = new_round("2025", "dv-1", &[(2025, RHO)], 10 * RHO);
    assert_eq!(unchanged_round(store.put_round(&again).await?)?, r1);
    assert_eq!(
        store.privacy_spent(&[2024, 2025]).await?,
        vec![RHO / 4, RHO / 2]
    );
    assert_eq!(audit_chain(store.as_ref()).await?.len(), 1);
    for r in &again.releases {
        assert_eq!(store.get_round_release(r.id).await?, None);
    }

    // New data versions: corrections 2 and 3, each charged.
    let second = new_round("2025", "dv-2", &[(2025, RHO / 2)], 10 * RHO);
    let r2 = stored_round(store.put_round(&second).await?)?;
    assert_eq!(r2, round_record(&second, 2, 2));
    let third = new_round("2025", "dv-3", &[(2025, RHO / 2)], 10 * RHO);
    let r3 = stored_round(store.put_round(&third).await?)?;
    assert_eq!(r3, round_record(&third, 3, 3));
    assert_eq!(
        store.privacy_spent(&[2025, 2024]).await?,
        vec![3 * RHO / 2, RHO / 4]
    );

    // The calendar publishes a period once: with a round stored, first_only answers the newest.
    let mut calendar = new_round("2025", "dv-4", &[(2025, RHO)], 10 * RHO);
    calendar.first_only = true;
    calendar.published_by = "calendar".into();
    assert_eq!(unchanged_round(store.put_round(&calendar).await?)?, r3);
    // ... and stores the first round of a period that has none.
    let mut calendar = new_round("2025-H1", "dv-4", &[(2025, RHO)], 10 * RHO);
    calendar.first_only = true;
    calendar.published_by = "calendar".into();
    let h1 = stored_round(store.put_round(&calendar).await?)?;
    assert_eq!(h1, round_record(&calendar, 1, 4));
    assert_eq!(unchanged_round(store.put_round(&calendar).await?)?, h1);

    // Only the newest version counts: an older data version again is a new correction.
    let back = new_round("2025", "dv-1", &[(2025, RHO / 2)], 10 * RHO);
    assert_eq!(stored_round(store.put_round(&back).await?)?.version, 4);

    assert_eq!(
        store.privacy_spent(&[2024, 2025, 2026]).await?,
        vec![RHO / 4, 3 * RHO, 0]
    );
    let versions: Vec<u32> = store
        .list_rounds(Some("2025"))
        .await?
        .iter()
        .map(|r| r.version)
        .collect();
    assert_eq!(versions, vec![4, 3, 2, 1]);
    assert_eq!(store.list_rounds(Some("2025-H1")).await?, vec![h1]);
    assert_eq!(store.list_rounds(Some("2026")).await?, vec![]);
    assert_eq!(store.list_rounds(None).await?.len(), 5);
    assert_eq!(verify_chain(&audit_chain(store.as_ref()).await?), Ok(5));
    Ok(())
}

async fn rounds_are_listed_newest_first(store: Arc<dyn Store>) -> TestResult {
    let t0 = now();
    let at = |s: i64| t0 + time::Duration::seconds(s);
    // Stored out of time order; two versions of 2024 at the same moment.
    let mut stored = Vec::new();
    for (period, dv, when) in [
        ("2024", "dv-1", at(10)),
        ("2023", "dv-1", at(30)),
        ("2024", "dv-2", at(20)),
        ("2024", "dv-3", at(20)),
        ("2025-Q1", "dv-1", at(5)),
    ] {
        let mut round = new_round(period, dv, &[(2024, 1)], RHO);
        round.created_at = when;
        stored.push(stored_round(store.put_round(&round).await?)?);
    }
    let listed: Vec<(String, u32)> = store
        .list_rounds(None)
        .await?
        .into_iter()
        .map(|r| (r.period, r.version))
        .collect();
    let expected: Vec<(String, u32)> = [
        ("2023", 1),
        ("2024", 3),
        ("2024", 2),
        ("2024", 1),
        ("2025-Q1", 1),
    ]
    .into_iter()
    .map(|(p, v)| (p.to_string(), v))
    .collect();
    assert_eq!(listed, expected);
    assert_eq!(
        store.list_rounds(Some("2024")).await?,
        vec![stored[3].clone(), stored[2].clone(), stored[0].clone()]
    );
    Ok(())
}

async fn round_releases_of_every_version_stay_readable(store: Arc<dyn Store>) -> TestResult {
    assert_eq!(
        store.get_latest_round_release("GM0748", "2025").await?,
        None
    );
    let mut first = new_round("2025", "dv-1", &[(2025, RHO)], 10 * RHO);
    // A body that a rewriting JSON type would change: key order, big and fractional numbers,
    // escapes and non-ASCII text.
    first.releases[0].body = serde_json::json!({
        "zeta": 1, "alpha": [0.1, 1e-7, 12345678901234567u64, -0.0, null],
        "text": "Gemeente 's-Hertogenbosch \u{e9}\u{2603} \"quoted\" \\ tab\t",
        "nested": { "b": { "c": [] }, "a": {} },
    });
    let r1 = stored_round(store.put_round(&first).await?)?;
    let mut second = new_round("2025", "dv-2", &[(2025, RHO)], 10 * RHO);
    // The correction no longer has GM0777.
    second.releases.retain(|r| r.scope != "GM0777");
    let r2 = stored_round(store.put_round(&second).await?)?;
    let other_period = new_round("2025-H2", "dv-2", &[(2025, RHO)], 10 * RHO);
    stored_round(store.put_round(&other_period).await?)?;

    for (round, record) in [(&first, &r1), (&second, &r2)] {
        for r in &round.releases {
            let got = store
                .get_round_release(r.id)
                .await?
                .context("every version's release stays readable")?;
            assert_eq!(
                got,
                StoredRoundRelease {
                    id: r.id,
                    round_id: round.id,
                    scope: r.scope.clone(),
                    period: "2025".into(),
                    version: record.version,
                    created_at: record.created_at,
                    body: r.body.clone(),
                }
            );
        }
    }
    // The newest version's release of a scope, whatever the versions before had.
    for scope in ["GM0748", "region", "providers"] {
        let latest = store
            .get_latest_round_release(scope, "2025")
            .await?
            .context("the newest version has this scope")?;
        let expected = second
            .releases
            .iter()
            .find(|r| r.scope == scope)
            .context("a scope of the correction")?;
        assert_eq!((latest.id, latest.version), (expected.id, 2));
        assert_eq!(latest.body, expected.body);
    }
    assert_eq!(
        store.get_latest_round_release("GM0777", "2025").await?,
        None,
        "the newest version has no GM0777: an older version's release is not current"
    );
    assert_eq!(
        store
            .get_latest_round_release("GM0748", "2025-H2")
            .await?
            .map(|r| r.round_id),
        Some(other_period.id)
    );
    assert_eq!(
        store.get_latest_round_release("GM0748", "2024").await?,
        None
    );
    assert_eq!(store.get_round_release(Uuid::new_v4()).await?, None);
    Ok(())
}

async fn data_years_are_charged_exactly_up_to_the_cap(store: Arc<dyn Store>) -> TestResult {
    // Ten charges of 0.1 rho fill a cap of 1 rho exactly (integers: no rounding anywhere).
    let mut ids = Vec::new();
    for i in 0..10 {
        let round = new_round("2025", &format!("dv-{i}"), &[(2025, RHO / 10)], RHO);
        ids.push(stored_round(store.put_round(&round).await?)?.id);
    }
    assert_eq!(store.privacy_spent(&[2025]).await?, vec![RHO]);
    let over = new_round("2025", "dv-10", &[(2025, 1)], RHO);
    assert_eq!(
        store.put_round(&over).await?,
        PutRound::BudgetExhausted {
            year: 2025,
            spent_nanos: RHO,
            asked_nanos: 1,
            cap_nanos: RHO,
        }
    );
    // A larger cap (the region raised it) leaves room again, to the nano.
    let raised = new_round("2025", "dv-10", &[(2025, RHO / 2 + 7)], 3 * RHO / 2 + 7);
    stored_round(store.put_round(&raised).await?)?;
    assert_eq!(store.privacy_spent(&[2025]).await?, vec![3 * RHO / 2 + 7]);
    assert_eq!(
        store.privacy_spent(&[2026, 2025, 1999, 2025]).await?,
        vec![0, 3 * RHO / 2 + 7, 0, 3 * RHO / 2 + 7],
        "in the order asked, 0 for a year never charged"
    );
    assert_eq!(store.privacy_spent(&[]).await?, Vec::<i64>::new());

    // Every charge, by year then time.
    let mut late = new_round("2024", "dv-0", &[(2023, 5), (2024, 6)], RHO);
    late.created_at = now() + time::Duration::hours(1);
    let late_id = stored_round(store.put_round(&late).await?)?.id;
    let charges = store.list_privacy_charges().await?;
    let seen: Vec<(u16, i64, String)> = charges
        .iter()
        .map(|c| (c.data_year, c.rho_nanos, c.subject_id.clone()))
        .collect();
    let mut expected = vec![
        (2023, 5, late_id.to_string()),
        (2024, 6, late_id.to_string()),
    ];
    expected.extend(ids.iter().map(|id| (2025, RHO / 10, id.to_string())));
    expected.push((2025, RHO / 2 + 7, raised.id.to_string()));
    assert_eq!(seen, expected);
    ensure!(charges.iter().all(|c| c.subject_kind == "round"));
    assert_eq!(charges[0].at, late.created_at);
    ensure!(
        charges
            .windows(2)
            .all(|w| (w[0].data_year, w[0].at) <= (w[1].data_year, w[1].at)),
        "ordered by year, then time"
    );
    Ok(())
}

async fn a_round_over_the_cap_in_any_year_is_refused_whole(store: Arc<dyn Store>) -> TestResult {
    let years = [2023, 2024, 2025];
    // 2024 nearly spent.
    stored_round(
        store
            .put_round(&new_round("2024", "dv-0", &[(2024, 3 * RHO / 4)], RHO))
            .await?,
    )?;
    let before = accountant_state(store.as_ref(), &years).await?;

    // Reads 2023 (fresh: charged first, then given back), 2024 (no room) and 2025 (fresh).
    let wide = new_round(
        "2024-H2",
        "dv-0",
        &[(2023, RHO / 2), (2024, RHO / 2), (2025, RHO / 2)],
        RHO,
    );
    assert_eq!(
        store.put_round(&wide).await?,
        PutRound::BudgetExhausted {
            year: 2024,
            spent_nanos: 3 * RHO / 4,
            asked_nanos: RHO / 2,
            cap_nanos: RHO,
        }
    );
    // A charge larger than the cap itself, on a fresh year, and a cap of 0.
    assert_eq!(
        store
            .put_round(&new_round("2023", "dv-0", &[(2023, 2 * RHO)], RHO))
            .await?,
        PutRound::BudgetExhausted {
            year: 2023,
            spent_nanos: 0,
            asked_nanos: 2 * RHO,
            cap_nanos: RHO,
        }
    );
    assert_eq!(
        store
            .put_round(&new_round("2025", "dv-0", &[(2025, 1)], 0))
            .await?,
        PutRound::BudgetExhausted {
            year: 2025,
            spent_nanos: 0,
            asked_nanos: 1,
            cap_nanos: 0,
        }
    );
    // Nothing of any of them: no round, release, charge or audit entry.
    assert_eq!(accountant_state(store.as_ref(), &years).await?, before);
    assert_eq!(store.privacy_spent(&years).await?, vec![0, 3 * RHO / 4, 0]);
    for r in &wide.releases {
        assert_eq!(store.get_round_release(r.id).await?, None);
    }
    assert_eq!(
        store.get_latest_round_release("region", "2024-H2").await?,
        None
    );

    // Left whole: the same round fits once its years have room, and then it is charged everywhere.
    let mut fits = wide.clone();
    fits.charges[1].1 = RHO / 4;
    let stored = stored_round(store.put_round(&fits).await?)?;
    assert_eq!(stored.version, 1);
    assert_eq!(
        store.privacy_spent(&years).await?,
        vec![RHO / 2, RHO, RHO / 2]
    );
    Ok(())
}

async fn a_round_and_its_audit_entry_are_stored_together(store: Arc<dyn Store>) -> TestResult {
    for i in 0..3 {
        store.append_audit(&audit_entry(i, None)).await?;
    }
    let round = new_round("2025", "dv-1", &[(2025, RHO)], RHO);
    let record = stored_round(store.put_round(&round).await?)?;
    assert_eq!(record.audit_seq, 4);
    let chain = audit_chain(store.as_ref()).await?;
    assert_eq!(chain.len(), 4);
    let entry = &chain[3];
    assert_eq!(entry.seq, record.audit_seq);
    assert_eq!(
        entry.entry,
        NewAuditEntry {
            at: round
                .audit
                .at
                .replace_nanosecond(round.audit.at.nanosecond() / 1000 * 1000)?,
            ..round.audit.clone()
        }
    );

    // Neither an unchanged round nor a refused one writes an entry.
    unchanged_round(
        store
            .put_round(&new_round("2025", "dv-1", &[(2025, 1)], RHO))
            .await?,
    )?;
    let refused = store
        .put_round(&new_round("2025", "dv-2", &[(2025, 1)], RHO))
        .await?;
    ensure!(
        matches!(refused, PutRound::BudgetExhausted { .. }),
        "{refused:?}"
    );
    assert_eq!(audit_chain(store.as_ref()).await?.len(), 4);

    // The chain goes on through plain appends and rounds alike.
    store
        .append_audit(&audit_entry(9, Some(provider_a())))
        .await?;
    let next = new_round("2025-H1", "dv-1", &[(2024, RHO)], RHO);
    assert_eq!(stored_round(store.put_round(&next).await?)?.audit_seq, 6);
    let chain = audit_chain(store.as_ref()).await?;
    assert_eq!(verify_chain(&chain), Ok(6));
    assert_eq!(chain[5].entry.subject, next.audit.subject);
    Ok(())
}

async fn an_invalid_round_is_refused_and_writes_nothing(store: Arc<dyn Store>) -> TestResult {
    let valid = || new_round("2025", "dv-1", &[(2024, RHO / 2), (2025, RHO / 2)], RHO);
    let cases: Vec<(&str, NewRound)> = vec![
        ("years out of order", {
            let mut r = valid();
            r.charges.reverse();
            r
        }),
        ("a year twice", {
            let mut r = valid();
            r.charges = vec![(2025, 1), (2025, 2)];
            r
        }),
        ("a charge of 0", {
            let mut r = valid();
            r.charges[1].1 = 0;
            r
        }),
        ("a negative charge", {
            let mut r = valid();
            r.charges[0].1 = -RHO;
            r
        }),
        ("no charge", {
            let mut r = valid();
            r.charges.clear();
            r
        }),
        ("a year before 1900", {
            let mut r = valid();
            r.charges = vec![(1899, 1)];
            r
        }),
        ("a year after 2999", {
            let mut r = valid();
            r.charges = vec![(3000, 1)];
            r
        }),
        ("a negative cap", {
            let mut r = valid();
            r.cap_nanos = -1;
            r
        }),
        ("no release", {
            let mut r = valid();
            r.releases.clear();
            r
        }),
        ("a scope twice", {
            let mut r = valid();
            r.releases[1].scope = r.releases[0].scope.clone();
            r
        }),
        ("a release id twice", {
            let mut r = valid();
            r.releases[1].id = r.releases[0].id;
            r
        }),
    ];
    let before = accountant_state(store.as_ref(), &[2024, 2025]).await?;
    for (what, round) in &cases {
        match store.put_round(round).await {
            Err(StoreError::Other(_)) => {}
            other => anyhow::bail!("{what}: expected Other, got {other:?}"),
        }
    }
    assert_eq!(
        accountant_state(store.as_ref(), &[2024, 2025]).await?,
        before
    );
    assert_eq!(before.rounds, vec![]);
    stored_round(store.put_round(&valid()).await?)?;
    Ok(())
}

async fn a_round_or_release_id_taken_is_a_conflict_and_writes_nothing(
    store: Arc<dyn Store>,
) -> TestResult {
    let first = new_round("2025", "dv-1", &[(2025, RHO / 4)], RHO);
    stored_round(store.put_round(&first).await?)?;
    let before = accountant_state(store.as_ref(), &[2023, 2024, 2025]).await?;

    // The round id again, for new data (so that it is not answered as unchanged).
    let mut same_id = new_round("2025", "dv-2", &[(2024, RHO / 4), (2025, RHO / 4)], RHO);
    same_id.id = first.id;
    let err = store.put_round(&same_id).await.expect_err("round id taken");
    assert!(matches!(err, StoreError::Conflict(_)), "got {err:?}");
    // ... charging only years the first did not (the round's own key refuses it then).
    let mut same_id = new_round("2024", "dv-2", &[(2023, RHO / 4)], RHO);
    same_id.id = first.id;
    let err = store.put_round(&same_id).await.expect_err("round id taken");
    assert!(matches!(err, StoreError::Conflict(_)), "got {err:?}");
    // A release id of the first round, in another period.
    let mut same_release = new_round("2024", "dv-2", &[(2024, RHO / 4), (2025, RHO / 4)], RHO);
    same_release.releases[2].id = first.releases[0].id;
    let err = store
        .put_round(&same_release)
        .await
        .expect_err("release id taken");
    assert!(matches!(err, StoreError::Conflict(_)), "got {err:?}");

    assert_eq!(
        accountant_state(store.as_ref(), &[2023, 2024, 2025]).await?,
        before
    );
    Ok(())
}

/// A small deterministic generator (SplitMix64) for the concurrency tests: the same seed, the same
/// rounds.
#[derive(Debug)]
struct SplitMix(u64);

impl SplitMix {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform enough in `0..n` for a test.
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

/// The sum of the charges of `rounds` per year in `years`.
fn charged_by(rounds: &[RoundRecord], years: &[u16]) -> Vec<i64> {
    years
        .iter()
        .map(|y| {
            rounds
                .iter()
                .flat_map(|r| &r.charges)
                .filter(|c| c.0 == *y)
                .map(|c| c.1)
                .sum()
        })
        .collect()
}

async fn concurrent_rounds_on_two_instances_never_pass_a_years_cap(
    a: Arc<dyn Store>,
    b: Arc<dyn Store>,
) -> TestResult {
    const CAP: i64 = 3 * RHO;
    let years = [2023u16, 2024, 2025];
    // Periods of three years; a round reads its own year and sometimes the year before or after
    // (look-ahead windows), so periods share years.
    let periods = [
        "2023", "2023-H2", "2024", "2024-H1", "2024-Q3", "2025", "2025-H1",
    ];
    let seed = 0x4B57_4D52_u64;
    let mut rng = SplitMix(seed);
    let tasks: Vec<_> = (0..48usize)
        .map(|i| {
            let store = Arc::clone(if i % 2 == 0 { &a } else { &b });
            let period = periods[rng.below(periods.len() as u64) as usize];
            let own: u16 = period[..4].parse().expect("a year");
            let mut read: Vec<u16> = vec![own];
            if rng.below(3) == 0 && own > 2023 {
                read.insert(0, own - 1);
            }
            if rng.below(3) == 0 && own < 2025 {
                read.push(own + 1);
            }
            // 0.05 to 0.55 rho, to the nano.
            let charges: Vec<(u16, i64)> = read
                .into_iter()
                .map(|y| (y, RHO / 20 + rng.below(RHO as u64 / 2) as i64))
                .collect();
            let round = new_round(period, &format!("dv-{i}"), &charges, CAP);
            tokio::spawn(async move { store.put_round(&round).await.map(|o| (round, o)) })
        })
        .collect();
    let (mut stored, mut refused) = (Vec::new(), Vec::new());
    for t in tasks {
        match t.await?? {
            (_, PutRound::Stored(r)) => stored.push(r),
            (
                round,
                PutRound::BudgetExhausted {
                    year,
                    spent_nanos,
                    asked_nanos,
                    cap_nanos,
                },
            ) => {
                ensure!(cap_nanos == CAP && spent_nanos + asked_nanos > CAP);
                ensure!(round.charges.contains(&(year, asked_nanos)));
                refused.push((year, asked_nanos));
            }
            (_, PutRound::Unchanged(r)) => {
                anyhow::bail!("distinct data versions (seed {seed:#x}), got Unchanged {r:?}")
            }
        }
    }
    ensure!(
        !stored.is_empty() && !refused.is_empty(),
        "the test must both store and refuse (seed {seed:#x}): {} stored, {} refused",
        stored.len(),
        refused.len()
    );

    for store in [&a, &b] {
        let spent = store.privacy_spent(&years).await?;
        ensure!(
            spent.iter().all(|&s| s <= CAP),
            "a year passed its cap (seed {seed:#x}): {spent:?}"
        );
        assert_eq!(spent, charged_by(&stored, &years), "seed {seed:#x}");
        let mut listed = store.list_rounds(None).await?;
        assert_eq!(spent, charged_by(&listed, &years), "seed {seed:#x}");
        // A refused round found no room: none appeared later either (spend only grows).
        for (year, asked) in &refused {
            let i = years
                .iter()
                .position(|y| y == year)
                .context("a test year")?;
            ensure!(spent[i] + asked > CAP);
        }
        // Versions of each period count 1, 2, ... without gaps.
        listed.sort_by(|x, y| (&x.period, x.version).cmp(&(&y.period, y.version)));
        let mut stored_sorted = stored.clone();
        stored_sorted.sort_by(|x, y| (&x.period, x.version).cmp(&(&y.period, y.version)));
        assert_eq!(listed, stored_sorted, "seed {seed:#x}");
        for period in periods {
            let versions: Vec<u32> = listed
                .iter()
                .filter(|r| r.period == period)
                .map(|r| r.version)
                .collect();
            assert_eq!(versions, (1..=versions.len() as u32).collect::<Vec<_>>());
        }
        let charges = store.list_privacy_charges().await?;
        let by_charges: Vec<i64> = years
            .iter()
            .map(|y| {
                charges
                    .iter()
                    .filter(|c| c.data_year == *y)
                    .map(|c| c.rho_nanos)
                    .sum()
            })
            .collect();
        assert_eq!(by_charges, spent);
        // One audit entry per stored round, one chain.
        let chain = audit_chain(store.as_ref()).await?;
        assert_eq!(verify_chain(&chain), Ok(stored.len()));
        let mut seqs: Vec<i64> = stored.iter().map(|r| r.audit_seq).collect();
        seqs.sort();
        assert_eq!(seqs, (1..=stored.len() as i64).collect::<Vec<_>>());
        for r in &stored {
            let entry = &chain[(r.audit_seq - 1) as usize];
            ensure!(entry.entry.subject.contains(&r.id.to_string()));
        }
    }
    Ok(())
}

async fn two_instances_publishing_one_data_version_store_one_round(
    a: Arc<dyn Store>,
    b: Arc<dyn Store>,
) -> TestResult {
    // Twelve publications of one (period, data version), half by the calendar (first_only).
    let tasks: Vec<_> = (0..12usize)
        .map(|i| {
            let store = Arc::clone(if i % 2 == 0 { &a } else { &b });
            let mut round = new_round("2025", "dv-same", &[(2024, RHO / 2), (2025, RHO / 2)], RHO);
            round.first_only = i % 4 < 2;
            tokio::spawn(async move { store.put_round(&round).await })
        })
        .collect();
    let (mut stored, mut unchanged) = (Vec::new(), Vec::new());
    for t in tasks {
        match t.await?? {
            PutRound::Stored(r) => stored.push(r),
            PutRound::Unchanged(r) => unchanged.push(r),
            other => anyhow::bail!("expected Stored or Unchanged, got {other:?}"),
        }
    }
    assert_eq!((stored.len(), unchanged.len()), (1, 11));
    let winner = stored.remove(0);
    assert_eq!(winner.version, 1);
    ensure!(
        unchanged.iter().all(|r| *r == winner),
        "every other publication gets the one stored"
    );
    assert_eq!(
        a.privacy_spent(&[2024, 2025]).await?,
        vec![RHO / 2; 2],
        "charged once"
    );
    assert_eq!(b.list_rounds(None).await?, vec![winner]);
    assert_eq!(verify_chain(&audit_chain(a.as_ref()).await?), Ok(1));

    // The calendar on every replica at once, each with the data version it saw: one round.
    let tasks: Vec<_> = (0..10usize)
        .map(|i| {
            let store = Arc::clone(if i % 2 == 0 { &a } else { &b });
            let mut round = new_round("2026-H1", &format!("dv-{i}"), &[(2026, RHO / 4)], RHO);
            round.first_only = true;
            round.published_by = "calendar".into();
            tokio::spawn(async move { store.put_round(&round).await })
        })
        .collect();
    let mut outcomes = Vec::new();
    for t in tasks {
        outcomes.push(t.await??);
    }
    let stored: Vec<&RoundRecord> = outcomes
        .iter()
        .filter_map(|o| match o {
            PutRound::Stored(r) => Some(r),
            _ => None,
        })
        .collect();
    assert_eq!(stored.len(), 1, "{outcomes:?}");
    ensure!(outcomes
        .iter()
        .all(|o| matches!(o, PutRound::Stored(r) | PutRound::Unchanged(r) if r == stored[0])));
    assert_eq!(a.privacy_spent(&[2026]).await?, vec![RHO / 4]);
    assert_eq!(verify_chain(&audit_chain(b.as_ref()).await?), Ok(2));
    Ok(())
}

/// One step of the accountant's property test.
#[derive(Debug, Clone)]
struct RoundStep {
    period: &'static str,
    data_version: &'static str,
    charges: Vec<(u16, i64)>,
    cap_nanos: i64,
    first_only: bool,
    /// Through the second store instance.
    second: bool,
}

fn round_step() -> impl proptest::strategy::Strategy<Value = RoundStep> {
    use proptest::prelude::*;
    (
        prop::sample::select(vec!["2024", "2024-H2", "2025", "2025-Q1"]),
        prop::sample::select(vec!["dv-0", "dv-1", "dv-2"]),
        // Sorted, distinct years: the order `subsequence` keeps.
        prop::sample::subsequence(vec![2023u16, 2024, 2025], 1..=3),
        prop::collection::vec(1..=RHO, 3),
        prop::sample::select(vec![0, RHO / 2, RHO, 2 * RHO, 2 * RHO, 2 * RHO]),
        prop::bool::weighted(0.2),
        prop::bool::ANY,
    )
        .prop_map(
            |(period, data_version, years, rhos, cap_nanos, first_only, second)| RoundStep {
                period,
                data_version,
                charges: years.into_iter().zip(rhos).collect(),
                cap_nanos,
                first_only,
                second,
            },
        )
}

/// Runs `steps` on two instances of one fresh database and checks each outcome against a model of
/// the accountant; after every stored round no year it charged is over that round's cap, and at the
/// end the stored spend of each year is the sum of the stored rounds' charges.
async fn rounds_follow_the_accountants_model(
    a: Arc<dyn Store>,
    b: Arc<dyn Store>,
    steps: Vec<RoundStep>,
) -> TestResult {
    let years = [2023u16, 2024, 2025];
    // Per period: the newest version, its data version and record.
    let mut newest: HashMap<&str, RoundRecord> = HashMap::new();
    let mut spent: HashMap<u16, i64> = HashMap::new();
    let mut stored: Vec<RoundRecord> = Vec::new();
    for (i, step) in steps.iter().enumerate() {
        let store = if step.second { &b } else { &a };
        let mut round = new_round(
            step.period,
            step.data_version,
            &step.charges,
            step.cap_nanos,
        );
        round.first_only = step.first_only;
        let outcome = store.put_round(&round).await?;
        let expected = match newest.get(step.period) {
            Some(r) if step.first_only || r.data_version == step.data_version => {
                PutRound::Unchanged(r.clone())
            }
            last => {
                let over = step
                    .charges
                    .iter()
                    .find(|(y, rho)| spent.get(y).copied().unwrap_or(0) + rho > step.cap_nanos);
                match over {
                    Some(&(year, rho)) => PutRound::BudgetExhausted {
                        year,
                        spent_nanos: spent.get(&year).copied().unwrap_or(0),
                        asked_nanos: rho,
                        cap_nanos: step.cap_nanos,
                    },
                    None => PutRound::Stored(round_record(
                        &round,
                        last.map_or(1, |r| r.version + 1),
                        stored.len() as i64 + 1,
                    )),
                }
            }
        };
        ensure!(
            outcome == expected,
            "step {i} {step:?}: got {outcome:?}, expected {expected:?}"
        );
        if let PutRound::Stored(r) = outcome {
            for &(year, rho) in &r.charges {
                *spent.entry(year).or_default() += rho;
            }
            let now_spent = store.privacy_spent(&years).await?;
            for (year, s) in years.iter().zip(&now_spent) {
                ensure!(
                    !r.charges.iter().any(|c| c.0 == *year) || *s <= step.cap_nanos,
                    "step {i}: year {year} at {s}, over the cap {}",
                    step.cap_nanos
                );
            }
            newest.insert(step.period, r.clone());
            stored.push(r);
        }
    }
    let expected_spent: Vec<i64> = years
        .iter()
        .map(|y| spent.get(y).copied().unwrap_or(0))
        .collect();
    let listed = a.list_rounds(None).await?;
    assert_eq!(listed.len(), stored.len());
    assert_eq!(b.privacy_spent(&years).await?, expected_spent);
    assert_eq!(charged_by(&listed, &years), expected_spent);
    assert_eq!(
        verify_chain(&audit_chain(a.as_ref()).await?),
        Ok(stored.len())
    );
    Ok(())
}

/// Runs [`rounds_follow_the_accountants_model`] as one proptest case, on its own runtime and a fresh
/// database: a SQLite file, or a PostgreSQL database (a passing case when none is configured).
fn run_round_case(
    postgres: bool,
    steps: Vec<RoundStep>,
) -> Result<(), proptest::test_runner::TestCaseError> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(|e| proptest::test_runner::TestCaseError::fail(e.to_string()))?;
    rt.block_on(async {
        if postgres {
            let Some(db) = kwm_tests::EphemeralPostgres::create().await else {
                return Ok(());
            };
            let a = kwm_service::store::connect(db.url()).await?;
            let b = kwm_service::store::connect(db.url()).await?;
            // The stores go first, then the database.
            rounds_follow_the_accountants_model(a, b, steps).await
        } else {
            let db = kwm_tests::TempSqlite::new();
            let a = kwm_service::store::connect(db.url()).await?;
            let b = kwm_service::store::connect(db.url()).await?;
            rounds_follow_the_accountants_model(a, b, steps).await
        }
    })
    .map_err(|e| proptest::test_runner::TestCaseError::fail(format!("{e:#}")))
}

proptest::proptest! {
    #![proptest_config(proptest::test_runner::Config { cases: 16, ..Default::default() })]

    /// No sequence of rounds takes a data year over its cap (SQLite, a fresh file per case).
    #[test]
    fn sqlite_no_sequence_of_rounds_passes_a_cap(
        steps in proptest::collection::vec(round_step(), 1..24),
    ) {
        run_round_case(false, steps)?;
    }
}

proptest::proptest! {
    // A fresh database per case costs a CREATE DATABASE: a handful of cases.
    #![proptest_config(proptest::test_runner::Config { cases: 4, ..Default::default() })]

    /// No sequence of rounds takes a data year over its cap (PostgreSQL, a fresh database per case).
    #[test]
    fn postgres_no_sequence_of_rounds_passes_a_cap(
        steps in proptest::collection::vec(round_step(), 1..24),
    ) {
        run_round_case(true, steps)?;
    }
}

// ---------------------------------------------------------------------------------------------------
// Audit

fn audit_entry(i: u32, provider: Option<AgbCode>) -> NewAuditEntry {
    NewAuditEntry {
        // Finer than the stores keep: what comes back carries the stored precision.
        at: OffsetDateTime::now_utc(),
        actor_role: "provider".into(),
        actor_id: provider.map_or("system".into(), |p| p.to_string()),
        action: [
            AuditAction::Upload,
            AuditAction::Release,
            AuditAction::Withdraw,
        ][(i % 3) as usize],
        subject: format!("subject-{i}"),
        provider,
        details_digest: [i as u8; 32],
    }
}

async fn the_audit_chain_verifies_and_pages(store: Arc<dyn Store>) -> TestResult {
    assert_eq!(store.list_audit(0, 100, None).await?, vec![]);
    let mut appended: Vec<AuditEntry> = Vec::new();
    for i in 0..25 {
        let e = audit_entry(i, [None, Some(provider_a())][(i % 2) as usize]);
        let stored = store.append_audit(&e).await?;
        assert_eq!(stored.seq, i64::from(i) + 1);
        assert_eq!(
            stored.entry.at,
            e.at.replace_nanosecond(e.at.nanosecond() / 1000 * 1000)?
        );
        assert_eq!(
            NewAuditEntry {
                at: e.at,
                ..stored.entry.clone()
            },
            e
        );
        appended.push(stored);
    }
    let all = store.list_audit(0, 1000, None).await?;
    assert_eq!(all, appended);
    assert_eq!(verify_chain(&all), Ok(25));

    let mut paged = Vec::new();
    let mut after = 0;
    loop {
        let page = store.list_audit(after, 10, None).await?;
        if page.is_empty() {
            break;
        }
        ensure!(page.len() <= 10);
        after = page.last().map_or(after, |e| e.seq);
        paged.extend(page);
    }
    assert_eq!(paged, all);
    assert_eq!(store.list_audit(25, 10, None).await?, vec![]);
    assert_eq!(store.list_audit(20, 10, None).await?, all[20..].to_vec());
    assert_eq!(store.list_audit(0, 0, None).await?, vec![]);
    Ok(())
}

async fn the_audit_log_filters_by_provider(store: Arc<dyn Store>) -> TestResult {
    let whose = [None, Some(provider_a()), Some(provider_b())];
    let mut appended = Vec::new();
    for i in 0..30 {
        appended.push(
            store
                .append_audit(&audit_entry(i, whose[(i % 3) as usize]))
                .await?,
        );
    }
    for p in [provider_a(), provider_b()] {
        let expected: Vec<AuditEntry> = appended
            .iter()
            .filter(|e| e.entry.provider == Some(p))
            .cloned()
            .collect();
        assert_eq!(expected.len(), 10);
        assert_eq!(store.list_audit(0, 100, Some(p)).await?, expected);
        // Paging by sequence number within the provider's entries.
        let first = store.list_audit(0, 4, Some(p)).await?;
        assert_eq!(first, expected[..4].to_vec());
        let rest = store.list_audit(first[3].seq, 100, Some(p)).await?;
        assert_eq!(rest, expected[4..].to_vec());
    }
    assert_eq!(
        store.list_audit(0, 100, Some(agb("11111111"))).await?,
        vec![]
    );
    assert_eq!(verify_chain(&store.list_audit(0, 100, None).await?), Ok(30));
    Ok(())
}

async fn concurrent_audit_appends_on_two_instances_keep_one_chain(
    a: Arc<dyn Store>,
    b: Arc<dyn Store>,
) -> TestResult {
    let tasks: Vec<_> = (0..60u32)
        .map(|i| {
            let store = Arc::clone(if i % 2 == 0 { &a } else { &b });
            tokio::spawn(async move { store.append_audit(&audit_entry(i, None)).await })
        })
        .collect();
    let mut seqs = Vec::new();
    for t in tasks {
        seqs.push(t.await??.seq);
    }
    seqs.sort();
    assert_eq!(seqs, (1..=60).collect::<Vec<i64>>());
    let all = b.list_audit(0, 1000, None).await?;
    assert_eq!(verify_chain(&all), Ok(60));
    let subjects: HashSet<String> = all.iter().map(|e| e.entry.subject.clone()).collect();
    assert_eq!(subjects.len(), 60, "every entry once");
    Ok(())
}

// ---------------------------------------------------------------------------------------------------
// Withdrawals

async fn withdrawing_a_batch_removes_its_rows_and_receipt(store: Arc<dyn Store>) -> TestResult {
    register(store.as_ref(), provider_a()).await?;
    register(store.as_ref(), provider_b()).await?;
    let b1 = batch(provider_a(), Uuid::new_v4(), records(0..10));
    stored(store.put_batch(&b1).await?)?;
    // A later batch corrects 0..3 and adds 10..12: those rows are the later batch's.
    let mut second: Vec<WireRecord> = records(0..3)
        .into_iter()
        .map(|mut r| {
            r.satisfaction = Some(Satisfaction::new(10).expect("valid"));
            r
        })
        .collect();
    second.extend(records(10..12));
    let b2 = batch(provider_a(), Uuid::new_v4(), second.clone());
    let r2 = stored(store.put_batch(&b2).await?)?;
    assert_eq!((r2.stored, r2.corrected), (2, 3));
    // Provider B's rows with the same pseudonyms, under the same batch id, are B's.
    let bb = batch(provider_b(), b1.batch_id, records(0..4));
    stored(store.put_batch(&bb).await?)?;

    // B cannot withdraw A's batch (B has no batch of that id).
    let err = store
        .withdraw_batch(provider_b(), b2.batch_id)
        .await
        .expect_err("another provider's batch");
    assert!(matches!(err, StoreError::NotFound), "got {err:?}");
    assert_eq!(store.count_trajectories(Some(provider_a())).await?, 12);

    let w = store.withdraw_batch(provider_a(), b1.batch_id).await?;
    assert_eq!(
        w,
        Withdrawn {
            trajectories: 7,
            batches: 1
        }
    );
    assert_eq!(store.get_batch(provider_a(), b1.batch_id).await?, None);
    assert_eq!(store.list_batches(provider_a()).await?, vec![r2]);
    assert_eq!(store.list_trajectories(provider_a()).await?, sorted(second));
    // B's batch of the same id and its rows stay.
    ensure!(store.get_batch(provider_b(), b1.batch_id).await?.is_some());
    assert_eq!(
        store.list_trajectories(provider_b()).await?,
        sorted(records(0..4))
    );

    let err = store
        .withdraw_batch(provider_a(), b1.batch_id)
        .await
        .expect_err("withdrawn already");
    assert!(matches!(err, StoreError::NotFound), "got {err:?}");

    // A batch whose rows were all corrected since: only its receipt goes.
    let w = store.withdraw_batch(provider_b(), b1.batch_id).await?;
    assert_eq!(
        w,
        Withdrawn {
            trajectories: 4,
            batches: 1
        }
    );
    assert_eq!(store.count_trajectories(Some(provider_b())).await?, 0);

    // A withdrawn id stays withdrawn (for each provider); the same records under a new id are a new
    // upload.
    refused_as_withdrawn(store.put_batch(&b1).await?)?;
    refused_as_withdrawn(store.put_batch(&bb).await?)?;
    assert_eq!(store.count_trajectories(None).await?, 5);
    let anew = batch(provider_a(), Uuid::new_v4(), records(0..10));
    let again = stored(store.put_batch(&anew).await?)?;
    assert_eq!((again.stored, again.corrected, again.unchanged), (7, 3, 0));
    Ok(())
}

async fn withdrawing_an_export_keeps_what_a_later_export_carried(
    store: Arc<dyn Store>,
) -> TestResult {
    register(store.as_ref(), provider_a()).await?;
    // Export A, then the full re-export B: every row of A again, one of them changed, two new.
    let a = batch(provider_a(), Uuid::new_v4(), records(0..10));
    stored(store.put_batch(&a).await?)?;
    let mut full = records(0..12);
    full[3].satisfaction = Some(Satisfaction::new(10).expect("valid"));
    let b = batch(provider_a(), Uuid::new_v4(), full.clone());
    let rb = stored(store.put_batch(&b).await?)?;
    assert_eq!((rb.stored, rb.corrected, rb.unchanged), (2, 1, 9));

    // Withdrawing the obsolete A removes nothing B carried, unchanged rows included.
    let w = store.withdraw_batch(provider_a(), a.batch_id).await?;
    assert_eq!(
        w,
        Withdrawn {
            trajectories: 0,
            batches: 1
        }
    );
    assert_eq!(
        store.list_trajectories(provider_a()).await?,
        sorted(full.clone())
    );
    assert_eq!(store.list_batches(provider_a()).await?, vec![rb.clone()]);
    // B posted again is its own replay, and it still holds every row.
    assert_eq!(replayed(store.put_batch(&b).await?)?.batch_id, b.batch_id);

    // A partial export C carries only 0..4: withdrawing B then removes what only B carried.
    let c = batch(provider_a(), Uuid::new_v4(), full[..4].to_vec());
    let rc = stored(store.put_batch(&c).await?)?;
    assert_eq!((rc.stored, rc.corrected, rc.unchanged), (0, 0, 4));
    let w = store.withdraw_batch(provider_a(), b.batch_id).await?;
    assert_eq!(
        w,
        Withdrawn {
            trajectories: 8,
            batches: 1
        }
    );
    assert_eq!(
        store.list_trajectories(provider_a()).await?,
        sorted(full[..4].to_vec())
    );
    // C's rows go with C, and then nothing is left.
    let w = store.withdraw_batch(provider_a(), c.batch_id).await?;
    assert_eq!(w.trajectories, 4);
    assert_eq!(store.count_trajectories(None).await?, 0);
    assert_eq!(store.list_batches(provider_a()).await?, vec![]);
    Ok(())
}

async fn a_withdrawn_batch_id_stays_refused(store: Arc<dyn Store>) -> TestResult {
    register(store.as_ref(), provider_a()).await?;
    register(store.as_ref(), provider_b()).await?;
    let a = batch(provider_a(), Uuid::new_v4(), records(0..5));
    stored(store.put_batch(&a).await?)?;
    let before = now();
    store.withdraw_batch(provider_a(), a.batch_id).await?;
    let v = store.data_version().await?;

    // The old sealed batch posted again, or other content under its id: refused, nothing written.
    let at = refused_as_withdrawn(store.put_batch(&a).await?)?;
    ensure!(at >= before, "withdrawn at {at}, before {before}");
    let other = batch(provider_a(), a.batch_id, records(5..7));
    refused_as_withdrawn(store.put_batch(&other).await?)?;
    assert_eq!(store.count_trajectories(None).await?, 0);
    assert_eq!(store.get_batch(provider_a(), a.batch_id).await?, None);
    assert_eq!(store.data_version().await?, v, "a refusal changes nothing");
    // The tombstone is the provider's: another provider may use the id.
    stored(
        store
            .put_batch(&batch(provider_b(), a.batch_id, records(0..2)))
            .await?,
    )?;

    // A batch that lost its last row to trajectory withdrawals is withdrawn too.
    let t = batch(provider_a(), Uuid::new_v4(), records(10..11));
    stored(store.put_batch(&t).await?)?;
    let w = store
        .withdraw_trajectory(provider_a(), &full_record(10).trajectory)
        .await?;
    assert_eq!(w.batches, 1);
    refused_as_withdrawn(store.put_batch(&t).await?)?;
    assert_eq!(store.count_trajectories(Some(provider_a())).await?, 0);
    Ok(())
}

async fn a_correction_back_to_an_earlier_value_lands(store: Arc<dyn Store>) -> TestResult {
    register(store.as_ref(), provider_a()).await?;
    let with = |grade: u8| {
        let mut r = full_record(1);
        r.satisfaction = Some(Satisfaction::new(grade).expect("valid"));
        r
    };
    // 3 -> 4 -> 3, each a new upload (a new batch id) with content seen before.
    stored(
        store
            .put_batch(&batch(provider_a(), Uuid::new_v4(), vec![with(3)]))
            .await?,
    )?;
    let r = stored(
        store
            .put_batch(&batch(provider_a(), Uuid::new_v4(), vec![with(4)]))
            .await?,
    )?;
    assert_eq!(r.corrected, 1);
    let r = stored(
        store
            .put_batch(&batch(provider_a(), Uuid::new_v4(), vec![with(3)]))
            .await?,
    )?;
    assert_eq!((r.stored, r.corrected, r.unchanged), (0, 1, 0));
    assert_eq!(store.list_trajectories(provider_a()).await?, vec![with(3)]);
    Ok(())
}

async fn withdrawing_a_trajectory_removes_a_batch_left_empty(store: Arc<dyn Store>) -> TestResult {
    register(store.as_ref(), provider_a()).await?;
    register(store.as_ref(), provider_b()).await?;
    let b1 = batch(provider_a(), Uuid::new_v4(), records(0..2));
    let r1 = stored(store.put_batch(&b1).await?)?;
    let t0 = full_record(0).trajectory;
    let t1 = full_record(1).trajectory;

    let err = store
        .withdraw_trajectory(provider_b(), &t0)
        .await
        .expect_err("not B's trajectory");
    assert!(matches!(err, StoreError::NotFound), "got {err:?}");
    let err = store
        .withdraw_trajectory(provider_a(), &pseudonym(0x11, 1))
        .await
        .expect_err("no such trajectory");
    assert!(matches!(err, StoreError::NotFound), "got {err:?}");

    let w = store.withdraw_trajectory(provider_a(), &t0).await?;
    assert_eq!(
        w,
        Withdrawn {
            trajectories: 1,
            batches: 0
        }
    );
    assert_eq!(store.list_batches(provider_a()).await?, vec![r1]);
    assert_eq!(
        store.list_trajectories(provider_a()).await?,
        vec![full_record(1)]
    );
    let err = store
        .withdraw_trajectory(provider_a(), &t0)
        .await
        .expect_err("withdrawn already");
    assert!(matches!(err, StoreError::NotFound), "got {err:?}");

    let w = store.withdraw_trajectory(provider_a(), &t1).await?;
    assert_eq!(
        w,
        Withdrawn {
            trajectories: 1,
            batches: 1
        }
    );
    assert_eq!(store.list_batches(provider_a()).await?, vec![]);
    assert_eq!(store.count_trajectories(None).await?, 0);
    Ok(())
}

// ---------------------------------------------------------------------------------------------------
// Change feed

/// The release engine's in-memory copy of `trajectories`, kept as the change feed's contract says:
/// removals applied first, then the upserts.
#[derive(Debug, Clone, Default)]
struct Replica {
    rows: HashMap<(AgbCode, Pseudonym), (AgbCode, WireRecord)>,
    /// The mark of the last call.
    mark: i64,
    /// What the last call delivered.
    removed: usize,
    upserted: usize,
    /// A removal came after an upsert in one call (the contract says removals first).
    out_of_order: bool,
}

impl ChangeSink for Replica {
    fn removed(&mut self, provider: AgbCode, trajectory: &Pseudonym) {
        self.out_of_order |= self.upserted > 0;
        self.removed += 1;
        self.rows.remove(&(provider, *trajectory));
    }

    fn upsert(&mut self, provider: AgbCode, record: WireRecord) {
        self.upserted += 1;
        self.rows
            .insert((provider, record.trajectory), (provider, record));
    }
}

impl Replica {
    /// One incremental call from the replica's mark; the mark never goes back.
    async fn follow(&mut self, store: &dyn Store) -> anyhow::Result<i64> {
        let since = self.mark;
        (self.removed, self.upserted, self.out_of_order) = (0, 0, false);
        let mark = store.trajectory_changes(since, self).await?;
        ensure!(mark >= since, "the mark went back from {since} to {mark}");
        ensure!(!self.out_of_order, "a removal came after an upsert");
        if since == 0 {
            ensure!(self.removed == 0, "a call from mark 0 removed rows");
        }
        if mark == since {
            ensure!(
                (self.removed, self.upserted) == (0, 0),
                "a call without change delivered rows"
            );
        }
        self.mark = mark;
        Ok(mark)
    }

    /// The rows in the order of `list_trajectories_between`.
    fn sorted(&self) -> Vec<(AgbCode, WireRecord)> {
        let mut rows: Vec<(AgbCode, WireRecord)> = self.rows.values().cloned().collect();
        rows.sort_by_key(|(provider, r)| (*provider, r.trajectory));
        rows
    }

    /// The replica holds exactly the stored table.
    async fn assert_is_table(&self, store: &dyn Store) -> TestResult {
        let table = whole_table(store).await?;
        let mine = self.sorted();
        ensure!(
            mine == table,
            "the replica at mark {} has {} rows, the table {}; first difference at row {:?}",
            self.mark,
            mine.len(),
            table.len(),
            mine.iter().zip(&table).position(|(a, b)| a != b)
        );
        Ok(())
    }

    /// Follows once and checks the result against the table (which must not change meanwhile).
    async fn follow_to_table(&mut self, store: &dyn Store) -> anyhow::Result<i64> {
        let mark = self.follow(store).await?;
        self.assert_is_table(store).await?;
        Ok(mark)
    }
}

/// Every stored row: every month the records can hold.
async fn whole_table(store: &dyn Store) -> anyhow::Result<Vec<(AgbCode, WireRecord)>> {
    Ok(store
        .list_trajectories_between(month("1900-01"), month("2999-12"))
        .await?)
}

async fn the_change_feed_of_an_empty_store_is_empty(store: Arc<dyn Store>) -> TestResult {
    let mut replica = Replica::default();
    assert_eq!(replica.follow_to_table(store.as_ref()).await?, 0);
    assert_eq!((replica.removed, replica.upserted), (0, 0));
    // Registering a provider or a token changes no trajectory.
    register(store.as_ref(), provider_a()).await?;
    assert_eq!(replica.follow(store.as_ref()).await?, 0);
    // A batch without records stores nothing.
    stored(
        store
            .put_batch(&batch(provider_a(), Uuid::new_v4(), vec![]))
            .await?,
    )?;
    assert_eq!(replica.follow_to_table(store.as_ref()).await?, 0);
    Ok(())
}

async fn the_change_feed_follows_new_corrected_and_replayed_batches(
    store: Arc<dyn Store>,
) -> TestResult {
    let store = store.as_ref();
    register(store, provider_a()).await?;
    register(store, provider_b()).await?;
    let mut replica = Replica::default();

    // First batches, of two providers with the same trajectory pseudonyms.
    let b1 = batch(provider_a(), Uuid::new_v4(), records(0..10));
    stored(store.put_batch(&b1).await?)?;
    let mut b_rows = records(0..4);
    b_rows.extend((0..3).map(minimal_record));
    stored(
        store
            .put_batch(&batch(provider_b(), Uuid::new_v4(), b_rows))
            .await?,
    )?;
    let first = replica.follow_to_table(store).await?;
    ensure!(first > 0, "stored batches move the mark");
    assert_eq!((replica.removed, replica.upserted), (0, 17));

    // A correcting batch: row 3 gets another satisfaction, row 10 is new.
    let mut three = full_record(3);
    three.satisfaction = Some(Satisfaction::new(10).expect("valid"));
    let b2 = batch(
        provider_a(),
        Uuid::new_v4(),
        vec![three.clone(), full_record(10)],
    );
    let r2 = stored(store.put_batch(&b2).await?)?;
    assert_eq!((r2.stored, r2.corrected), (1, 1));
    let second = replica.follow_to_table(store).await?;
    ensure!(second > first, "a correcting batch moves the mark");
    assert_eq!(replica.removed, 0);
    assert_eq!(
        replica.rows.get(&(provider_a(), three.trajectory)),
        Some(&(provider_a(), three.clone())),
        "the replica holds the corrected value"
    );

    // A replay writes nothing: the mark stays.
    replayed(store.put_batch(&b2).await?)?;
    replayed(store.put_batch(&b1).await?)?;
    assert_eq!(replica.follow_to_table(store).await?, second);

    // The same content under a new batch id: rows unchanged. Whatever the store records for it,
    // the replica still equals the table.
    let r3 = stored(
        store
            .put_batch(&batch(
                provider_a(),
                Uuid::new_v4(),
                vec![three, full_record(10)],
            ))
            .await?,
    )?;
    assert_eq!((r3.stored, r3.corrected, r3.unchanged), (0, 0, 2));
    let third = replica.follow_to_table(store).await?;

    // No change since the last call: the same mark, nothing delivered.
    assert_eq!(replica.follow(store).await?, third);
    assert_eq!(replica.follow(store).await?, third);

    // A second reader from scratch gets the whole table, without removals.
    let mut fresh = Replica::default();
    assert_eq!(fresh.follow_to_table(store).await?, third);
    assert_eq!((fresh.removed, fresh.upserted), (0, 18));
    Ok(())
}

async fn the_change_feed_follows_withdrawals_and_uploads_after_them(
    store: Arc<dyn Store>,
) -> TestResult {
    let store = store.as_ref();
    register(store, provider_a()).await?;
    register(store, provider_b()).await?;
    let mut replica = Replica::default();

    let b1 = batch(provider_a(), Uuid::new_v4(), records(0..10));
    stored(store.put_batch(&b1).await?)?;
    // A later batch corrects 0..3 and adds 10..12: those rows are the later batch's.
    let mut second: Vec<WireRecord> = records(0..3)
        .into_iter()
        .map(|mut r| {
            r.satisfaction = Some(Satisfaction::new(10).expect("valid"));
            r
        })
        .collect();
    second.extend(records(10..12));
    let b2 = batch(provider_a(), Uuid::new_v4(), second);
    stored(store.put_batch(&b2).await?)?;
    // Provider B's rows with the same pseudonyms stay through A's withdrawals.
    stored(
        store
            .put_batch(&batch(provider_b(), Uuid::new_v4(), records(0..4)))
            .await?,
    )?;
    let mut mark = replica.follow_to_table(store).await?;

    // One trajectory.
    let t5 = full_record(5).trajectory;
    store.withdraw_trajectory(provider_a(), &t5).await?;
    let next = replica.follow_to_table(store).await?;
    ensure!(next > mark, "a withdrawal moves the mark");
    assert_eq!((replica.removed, replica.upserted), (1, 0));
    ensure!(!replica.rows.contains_key(&(provider_a(), t5)));
    ensure!(replica
        .rows
        .contains_key(&(provider_b(), full_record(0).trajectory)));
    mark = next;

    // A batch: its 6 rows left (0..3 belong to b2 now, 5 is gone) go.
    let w = store.withdraw_batch(provider_a(), b1.batch_id).await?;
    assert_eq!(w.trajectories, 6);
    let next = replica.follow_to_table(store).await?;
    ensure!(next > mark, "a withdrawal moves the mark");
    assert_eq!((replica.removed, replica.upserted), (6, 0));
    mark = next;

    // Refused withdrawals change nothing.
    store
        .withdraw_batch(provider_a(), b1.batch_id)
        .await
        .expect_err("withdrawn already");
    store
        .withdraw_trajectory(provider_a(), &t5)
        .await
        .expect_err("withdrawn already");
    assert_eq!(replica.follow_to_table(store).await?, mark);

    // The same batch id again, after its withdrawal, is refused and changes nothing; the same
    // records under a new id are a new upload: its rows are back (0..3 corrected back too).
    refused_as_withdrawn(store.put_batch(&b1).await?)?;
    assert_eq!(replica.follow_to_table(store).await?, mark);
    let b1_anew = batch(provider_a(), Uuid::new_v4(), records(0..10));
    let again = stored(store.put_batch(&b1_anew).await?)?;
    assert_eq!((again.stored, again.corrected), (7, 3));
    let next = replica.follow_to_table(store).await?;
    assert_eq!((replica.removed, replica.upserted), (0, 10));
    mark = next;

    // Withdrawn and uploaded again between two calls: removal first, then the row as stored now.
    store.withdraw_trajectory(provider_a(), &t5).await?;
    let mut five = full_record(5);
    five.goals_achieved = Some(GoalCount::new(0).expect("valid"));
    stored(
        store
            .put_batch(&batch(provider_a(), Uuid::new_v4(), vec![five.clone()]))
            .await?,
    )?;
    let next = replica.follow_to_table(store).await?;
    ensure!(next > mark);
    assert_eq!((replica.removed, replica.upserted), (1, 1));
    assert_eq!(
        replica.rows.get(&(provider_a(), t5)),
        Some(&(provider_a(), five))
    );

    // Uploaded and then withdrawn between two calls: gone.
    let b9 = batch(provider_a(), Uuid::new_v4(), records(20..25));
    stored(store.put_batch(&b9).await?)?;
    store.withdraw_batch(provider_a(), b9.batch_id).await?;
    replica.follow_to_table(store).await?;
    ensure!(!replica
        .rows
        .contains_key(&(provider_a(), full_record(20).trajectory)));
    Ok(())
}

async fn the_change_feed_finds_the_rows_a_withdrawn_batch_left_to_a_later_one(
    store: Arc<dyn Store>,
) -> TestResult {
    let store = store.as_ref();
    register(store, provider_a()).await?;
    let mut replica = Replica::default();
    stored(
        store
            .put_batch(&batch(provider_a(), Uuid::new_v4(), records(20..22)))
            .await?,
    )?;
    replica.follow_to_table(store).await?;
    // A replica that has not seen A yet when A is withdrawn, after B carried all of A unchanged
    // (B itself changed nothing, so it alone never entered the feed).
    let a = batch(provider_a(), Uuid::new_v4(), records(0..6));
    stored(store.put_batch(&a).await?)?;
    let b = batch(provider_a(), Uuid::new_v4(), records(0..6));
    assert_eq!(stored(store.put_batch(&b).await?)?.unchanged, 6);
    store.withdraw_batch(provider_a(), a.batch_id).await?;
    replica.follow_to_table(store).await?;
    assert_eq!(store.count_trajectories(None).await?, 8);
    // And B's withdrawal then takes them.
    store.withdraw_batch(provider_a(), b.batch_id).await?;
    replica.follow_to_table(store).await?;
    assert_eq!(store.count_trajectories(None).await?, 2);
    Ok(())
}

async fn the_change_feed_brings_every_older_mark_to_the_table(store: Arc<dyn Store>) -> TestResult {
    let store = store.as_ref();
    register(store, provider_a()).await?;
    register(store, provider_b()).await?;
    // The replica after every step: an index that last looked then.
    let mut replica = Replica::default();
    let mut seen = vec![replica.clone()];
    let mut step = 0u8;
    let mut changed = |replica: Replica| {
        seen.push(replica);
    };

    // Large enough to span several read chunks of a backend.
    let big = records(0..17_000);
    let b_big = batch(provider_a(), Uuid::new_v4(), big);
    stored(store.put_batch(&b_big).await?)?;
    replica.follow_to_table(store).await?;
    changed(replica.clone());

    let steps: Vec<Box<dyn Fn(u8) -> NewBatch>> = vec![
        Box::new(|_| batch(provider_b(), Uuid::new_v4(), records(0..50))),
        Box::new(|s| {
            let rows = records(100..160)
                .into_iter()
                .map(|mut r| {
                    r.goals_agreed = Some(GoalCount::new(50 + s).expect("valid"));
                    r
                })
                .collect();
            batch(provider_a(), Uuid::new_v4(), rows)
        }),
        Box::new(|_| batch(provider_a(), Uuid::new_v4(), records(16_990..17_010))),
    ];
    for round in 0..3u32 {
        for make in &steps {
            step += 1;
            stored(store.put_batch(&make(step)).await?)?;
            replica.follow_to_table(store).await?;
            changed(replica.clone());
        }
        store
            .withdraw_trajectory(provider_a(), &full_record(200 + round).trajectory)
            .await?;
        replica.follow_to_table(store).await?;
        changed(replica.clone());
    }
    store.withdraw_batch(provider_a(), b_big.batch_id).await?;
    replica.follow_to_table(store).await?;
    changed(replica.clone());
    // Several changes between two calls.
    stored(
        store
            .put_batch(&batch(provider_b(), Uuid::new_v4(), records(40..90)))
            .await?,
    )?;
    store
        .withdraw_trajectory(provider_b(), &full_record(0).trajectory)
        .await?;
    let last = replica.follow_to_table(store).await?;

    // Marks never went back (an upload that changed nothing leaves the mark).
    let marks: Vec<i64> = seen.iter().map(|r| r.mark).collect();
    ensure!(
        marks.windows(2).all(|w| w[0] <= w[1]) && marks[0] < last,
        "marks never go back: {marks:?}"
    );
    // From every older mark, one call brings the replica taken then to the table.
    for old in seen {
        let from = old.mark;
        let mut r = old;
        assert_eq!(r.follow_to_table(store).await?, last, "from mark {from}");
    }
    Ok(())
}

async fn a_change_mark_not_handed_out_is_refused(store: Arc<dyn Store>) -> TestResult {
    register(store.as_ref(), provider_a()).await?;
    stored(
        store
            .put_batch(&batch(provider_a(), Uuid::new_v4(), records(0..3)))
            .await?,
    )?;
    let mut replica = Replica::default();
    let mark = replica.follow(store.as_ref()).await?;
    for bad in [mark + 1, -1] {
        let err = store
            .trajectory_changes(bad, &mut Replica::default())
            .await
            .expect_err("a mark from elsewhere");
        assert!(
            matches!(err, StoreError::UnknownMark { since, .. } if since == bad),
            "got {err:?}"
        );
    }
    Ok(())
}

/// A withdrawal's removal row holds the trajectory pseudonym only until pruning erases it; a reader
/// whose mark is before an erased removal is told to load again, and a load from 0 is the table.
async fn a_withdrawn_pseudonym_leaves_the_change_feed_after_its_retention(
    store: Arc<dyn Store>,
) -> TestResult {
    let store = store.as_ref();
    register(store, provider_a()).await?;
    stored(
        store
            .put_batch(&batch(provider_a(), Uuid::new_v4(), records(0..6)))
            .await?,
    )?;
    let mut behind = Replica::default();
    let before_withdrawal = behind.follow(store).await?;
    let mut current = Replica::default();
    store
        .withdraw_trajectory(provider_a(), &full_record(2).trajectory)
        .await?;
    current.follow_to_table(store).await?;

    // Recent removals stay; older than the cut-off they lose their pseudonym, once.
    ensure!(
        store
            .prune_change_feed(now() - time::Duration::days(1))
            .await?
            == 0
    );
    ensure!(
        store
            .prune_change_feed(now() + time::Duration::minutes(1))
            .await?
            == 1
    );
    ensure!(
        store
            .prune_change_feed(now() + time::Duration::minutes(1))
            .await?
            == 0
    );

    let err = store
        .trajectory_changes(before_withdrawal, &mut Replica::default())
        .await
        .expect_err("a removal after this mark was erased");
    ensure!(
        matches!(err, StoreError::UnknownMark { since, .. } if since == before_withdrawal),
        "got {err:?}"
    );
    // A reader past the erased removal goes on; a new one loads the table.
    stored(
        store
            .put_batch(&batch(provider_a(), Uuid::new_v4(), records(6..8)))
            .await?,
    )?;
    current.follow_to_table(store).await?;
    Replica::default().follow_to_table(store).await?;
    Ok(())
}

/// A reader dropped at any point of its read (a release request that timed out) must not leave the
/// feed's lock held or a connection mid-read in the pool: writers and later reads go on.
async fn a_cancelled_change_read_never_holds_up_the_writers(store: Arc<dyn Store>) -> TestResult {
    register(store.as_ref(), provider_a()).await?;
    stored(
        store
            .put_batch(&batch(provider_a(), Uuid::new_v4(), records(0..3_000)))
            .await?,
    )?;
    let mut cut = 0;
    for i in 0..40u64 {
        // From mark 0 (the whole table), cut off after a growing moment: before, inside and after
        // the part that holds the lock.
        let mut sink = Replica::default();
        let read = store.trajectory_changes(0, &mut sink);
        if tokio::time::timeout(Duration::from_micros(50 * i * i), read)
            .await
            .is_err()
        {
            cut += 1;
        }
        let b = batch(
            provider_a(),
            Uuid::new_v4(),
            records(3_000 + i as u32..3_001 + i as u32),
        );
        tokio::time::timeout(Duration::from_secs(10), store.put_batch(&b))
            .await
            .context("a writer was held up after a cancelled read")??;
    }
    ensure!(cut > 0, "some reads were cut off");
    let mut replica = Replica::default();
    tokio::time::timeout(
        Duration::from_secs(10),
        replica.follow_to_table(store.as_ref()),
    )
    .await
    .context("a reader was held up after a cancelled read")??;
    Ok(())
}

/// Providers writing at once through two instances while a reader follows the feed through both:
/// after the writers are done and one last call, the reader's copy is the table. On PostgreSQL the
/// change numbers are taken before commit and may commit out of order; without the store's barrier
/// the reader would skip a change now and then.
async fn the_change_feed_misses_nothing_under_concurrent_writers_on_two_instances(
    a: Arc<dyn Store>,
    b: Arc<dyn Store>,
) -> TestResult {
    const WRITERS: u32 = 4;
    const ROUNDS: u32 = 24;
    let providers: Vec<AgbCode> = (0..WRITERS).map(|k| agb(&format!("2000000{k}"))).collect();
    for p in &providers {
        register(a.as_ref(), *p).await?;
    }
    let done = Arc::new(AtomicBool::new(false));

    let writers: Vec<_> = providers
        .iter()
        .enumerate()
        .map(|(k, &provider)| {
            let stores = [Arc::clone(&a), Arc::clone(&b)];
            tokio::spawn(async move {
                let mut batches = Vec::new();
                for round in 0..ROUNDS {
                    let store = &stores[(k + round as usize) % 2];
                    // A window of 40 trajectories moving by 20: half new, half corrected.
                    let rows: Vec<WireRecord> = (round * 20..round * 20 + 40)
                        .map(|i| {
                            let mut r = full_record(i);
                            r.satisfaction = Some(Satisfaction::new(1 + (round % 10) as u8)?);
                            Ok(r)
                        })
                        .collect::<Result<_, kwm_schemas::ParseError>>()?;
                    let b = batch(provider, Uuid::new_v4(), rows);
                    stored(store.put_batch(&b).await?)?;
                    batches.push(b.batch_id);
                    if round % 8 == 5 {
                        store
                            .withdraw_trajectory(provider, &full_record(round * 20 + 30).trajectory)
                            .await?;
                    }
                    if round % 8 == 7 {
                        // The batch before this one: its rows not corrected since go.
                        let w = store
                            .withdraw_batch(provider, batches[round as usize - 1])
                            .await?;
                        ensure!(w.trajectories > 0, "the batch had rows left");
                    }
                }
                Ok::<(), anyhow::Error>(())
            })
        })
        .collect();

    let reader = {
        let stores = [Arc::clone(&a), Arc::clone(&b)];
        let done = Arc::clone(&done);
        tokio::spawn(async move {
            let mut replica = Replica::default();
            let mut calls = 0u32;
            while !done.load(Ordering::Acquire) {
                replica.follow(stores[calls as usize % 2].as_ref()).await?;
                calls += 1;
                tokio::task::yield_now().await;
            }
            Ok::<(Replica, u32), anyhow::Error>((replica, calls))
        })
    };

    let finished = tokio::time::timeout(Duration::from_secs(120), async {
        for w in writers {
            w.await??;
        }
        done.store(true, Ordering::Release);
        reader.await?
    })
    .await
    .context("the writers and the reader did not finish in time")?;
    let (mut replica, calls) = finished?;
    ensure!(calls > 1, "the reader followed while the writers wrote");

    // The writers are done: one more call, and the copy is the table, through either instance.
    replica.follow_to_table(a.as_ref()).await?;
    replica.follow_to_table(b.as_ref()).await?;
    let mut fresh = Replica::default();
    assert_eq!(fresh.follow_to_table(b.as_ref()).await?, replica.mark);
    Ok(())
}

// ---------------------------------------------------------------------------------------------------
// Tokens

fn token(hash: u8, role: Role, created_at: OffsetDateTime) -> NewToken {
    NewToken {
        token_hash: [hash; 32],
        role,
        scope: (role == Role::Provider).then(|| provider_a().to_string()),
        label: format!("token {hash}"),
        created_at,
    }
}

fn session(hash: u8, token_id: i64, expires_at: OffsetDateTime) -> NewSession {
    NewSession {
        session_hash: [hash; 32],
        token_id,
        created_at: now(),
        expires_at,
    }
}

async fn a_session_lives_until_it_expires_is_ended_or_its_token_is_revoked(
    store: Arc<dyn Store>,
) -> TestResult {
    let t0 = now();
    let hour = time::Duration::hours(1);
    let municipality = store.put_token(&token(1, Role::Municipality, t0)).await?;
    let region = store.put_token(&token(2, Role::Region, t0)).await?;
    store
        .put_session(&session(10, municipality, t0 + hour))
        .await?;
    store.put_session(&session(11, region, t0 + hour)).await?;
    store.put_session(&session(12, region, t0 - hour)).await?;

    // A live session names its token; an unknown one nothing.
    let got = store.get_session(&[10; 32], t0).await?.context("live")?;
    ensure!(got.id == municipality && got.role == Role::Municipality);
    ensure!(store.get_session(&[99; 32], t0).await?.is_none());
    // A taken hash is refused.
    let again = store.put_session(&session(10, region, t0 + hour)).await;
    ensure!(matches!(again, Err(StoreError::Conflict(_))), "{again:?}");
    ensure!(store.get_session(&[10; 32], t0).await?.context("live")?.id == municipality);
    // Expiry: not live at or after `expires_at`.
    ensure!(store.get_session(&[12; 32], t0).await?.is_none());
    ensure!(store.get_session(&[11; 32], t0 + hour).await?.is_none());
    // Sign-out ends one session, and ending it twice is no error.
    store.delete_session(&[11; 32]).await?;
    store.delete_session(&[11; 32]).await?;
    ensure!(store.get_session(&[11; 32], t0).await?.is_none());
    ensure!(store.get_session(&[10; 32], t0).await?.is_some());
    // Revoking the token ends its sessions at once.
    store.revoke_token(municipality, t0).await?;
    ensure!(store.get_session(&[10; 32], t0).await?.is_none());
    // Maintenance deletes the expired rows only.
    store
        .put_session(&session(13, region, t0 + hour * 8))
        .await?;
    ensure!(store.delete_expired_sessions(t0).await? == 1);
    ensure!(store.delete_expired_sessions(t0).await? == 0);
    ensure!(store.get_session(&[13; 32], t0).await?.is_some());
    ensure!(store.delete_expired_sessions(t0 + hour * 9).await? == 2);
    ensure!(store.get_session(&[13; 32], t0).await?.is_none());
    Ok(())
}

async fn a_session_opened_on_one_instance_is_seen_and_ended_on_the_other(
    a: Arc<dyn Store>,
    b: Arc<dyn Store>,
) -> TestResult {
    let t0 = now();
    let id = a.put_token(&token(1, Role::Region, t0)).await?;
    a.put_session(&session(7, id, t0 + time::Duration::hours(8)))
        .await?;
    ensure!(b.get_session(&[7; 32], t0).await?.context("seen on b")?.id == id);
    b.delete_session(&[7; 32]).await?;
    ensure!(a.get_session(&[7; 32], t0).await?.is_none());
    Ok(())
}

async fn a_token_is_revoked_once(store: Arc<dyn Store>) -> TestResult {
    let t = token(1, Role::Provider, now());
    let id = store.put_token(&t).await?;
    let other = store.put_token(&token(2, Role::Admin, now())).await?;
    let first = now().replace_nanosecond(123_456_789)?;
    store.revoke_token(id, first).await?;
    let got = store.get_token(&t.token_hash).await?.context("found")?;
    assert_eq!(got.revoked_at, Some(first.replace_nanosecond(123_456_000)?));
    // Revoking again keeps the first time.
    store
        .revoke_token(id, first + time::Duration::hours(1))
        .await?;
    let got = store.get_token(&t.token_hash).await?.context("found")?;
    assert_eq!(got.revoked_at, Some(first.replace_nanosecond(123_456_000)?));
    // The other token is untouched.
    let untouched = store.get_token(&[2; 32]).await?.context("found")?;
    assert_eq!((untouched.id, untouched.revoked_at), (other, None));
    let err = store
        .revoke_token(other + 1000, now())
        .await
        .expect_err("no such token");
    assert!(matches!(err, StoreError::NotFound), "got {err:?}");
    Ok(())
}

async fn tokens_are_listed_oldest_first_without_hashes(store: Arc<dyn Store>) -> TestResult {
    assert_eq!(store.list_tokens().await?, vec![]);
    let t0 = now();
    // Created out of insertion order: the list follows the creation time.
    let specs = [
        (1u8, Role::Provider, 2i64),
        (2, Role::Admin, 0),
        (3, Role::Municipality, 1),
    ];
    let mut ids = Vec::new();
    for (hash, role, offset) in specs {
        let t = token(hash, role, t0 + time::Duration::seconds(offset));
        ids.push((offset, store.put_token(&t).await?, t));
    }
    store
        .revoke_token(ids[0].1, t0 + time::Duration::seconds(5))
        .await?;
    ids.sort_by_key(|(offset, _, _)| *offset);
    let listed = store.list_tokens().await?;
    assert_eq!(listed.len(), 3);
    for ((_, id, t), got) in ids.iter().zip(&listed) {
        assert_eq!(
            (got.id, got.role, &got.scope, &got.label, got.created_at),
            (*id, t.role, &t.scope, &t.label, t.created_at)
        );
        // The same record `get_token` finds by hash.
        assert_eq!(Some(got), store.get_token(&t.token_hash).await?.as_ref());
    }
    assert_eq!(listed[2].revoked_at, Some(t0 + time::Duration::seconds(5)));
    ensure!(listed[..2].iter().all(|t| t.revoked_at.is_none()));
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

/// The ingest benchmark's raw bulk path writes trajectories too: the change feed has them.
#[tokio::test]
async fn sqlite_raw_bulk_loads_are_in_the_change_feed() -> TestResult {
    let db = kwm_tests::TempSqlite::new();
    raw_bulk_loads_are_in_the_change_feed(db.url()).await
}

#[tokio::test]
async fn postgres_raw_bulk_loads_are_in_the_change_feed() -> TestResult {
    let Some(db) = kwm_tests::EphemeralPostgres::create().await else {
        return Ok(());
    };
    raw_bulk_loads_are_in_the_change_feed(db.url()).await
}

async fn raw_bulk_loads_are_in_the_change_feed(url: &str) -> TestResult {
    let store = kwm_service::store::connect(url).await?;
    register(store.as_ref(), provider_a()).await?;
    stored(
        store
            .put_batch(&batch(provider_a(), Uuid::new_v4(), records(0..5)))
            .await?,
    )?;
    let mut replica = Replica::default();
    let mut mark = replica.follow_to_table(store.as_ref()).await?;
    // Twice for one provider: two loads, each read once.
    for (n, rows) in [(20, records(0..20)), (10, records(20..30))] {
        kwm_service::store::bulk_insert_raw(url, provider_b(), &rows).await?;
        let next = replica.follow_to_table(store.as_ref()).await?;
        ensure!(next > mark, "a raw load moves the mark");
        assert_eq!((replica.removed, replica.upserted), (0, n));
        mark = next;
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------------
// The service's keys (sealed by the caller: the store sees opaque bytes)

fn key_check(tag: u8) -> KeyCheck {
    KeyCheck {
        master_check: [tag; 32],
        pseudonym_check: [tag ^ 0xff; 32],
        created_at: OffsetDateTime::from_unix_timestamp(1_735_689_600).expect("a time"),
    }
}

fn service_key(
    id: &str,
    kind: ServiceKeyKind,
    activates_at: OffsetDateTime,
    retires_at: Option<OffsetDateTime>,
) -> StoredServiceKey {
    StoredServiceKey {
        id: id.to_string(),
        kind,
        sealed: id.as_bytes().iter().rev().copied().collect(),
        public_key: (kind == ServiceKeyKind::Hpke).then(|| vec![7u8; 32]),
        created_at: now(),
        activates_at,
        retires_at,
    }
}

async fn a_key_set_is_stored_once_with_its_keys(store: Arc<dyn Store>) -> TestResult {
    ensure!(
        store.get_key_check().await?.is_none(),
        "a new database has no key set"
    );
    ensure!(store.list_service_keys().await?.is_empty());
    let keys = vec![
        service_key("pseudonym", ServiceKeyKind::Pseudonym, now(), None),
        service_key("00112233aabbccdd", ServiceKeyKind::Hpke, now(), None),
    ];
    ensure!(store.put_key_set(&key_check(1), &keys).await?, "stored");
    ensure!(store.get_key_check().await? == Some(key_check(1)));
    let listed = store.list_service_keys().await?;
    ensure!(
        listed.len() == 2 && listed.iter().all(|k| keys.contains(k)),
        "{listed:?}"
    );
    // A second key set is refused whole: the first stays.
    let other = vec![
        service_key("pseudonym", ServiceKeyKind::Pseudonym, now(), None),
        service_key("ffffffffffffffff", ServiceKeyKind::Hpke, now(), None),
    ];
    ensure!(!store.put_key_set(&key_check(2), &other).await?, "refused");
    ensure!(store.get_key_check().await? == Some(key_check(1)));
    ensure!(store.list_service_keys().await? == listed);
    Ok(())
}

async fn a_rotation_retires_the_unretired_keys_and_adds_one(store: Arc<dyn Store>) -> TestResult {
    let t0 = now();
    let earlier = t0 - time::Duration::days(10);
    let keys = vec![
        service_key("pseudonym", ServiceKeyKind::Pseudonym, t0, None),
        service_key(
            "1111111111111111",
            ServiceKeyKind::Hpke,
            earlier,
            Some(earlier),
        ),
        service_key("2222222222222222", ServiceKeyKind::Hpke, t0, None),
    ];
    ensure!(store.put_key_set(&key_check(3), &keys).await?);
    let switch = t0 + time::Duration::hours(1);
    let retire = t0 + time::Duration::hours(2);
    let new = service_key("3333333333333333", ServiceKeyKind::Hpke, switch, None);
    store.put_rotated_key(&new, retire).await?;
    let listed = store.list_service_keys().await?;
    let get = |id: &str| listed.iter().find(|k| k.id == id).cloned();
    ensure!(
        get("1111111111111111").and_then(|k| k.retires_at) == Some(earlier),
        "kept"
    );
    ensure!(get("2222222222222222").and_then(|k| k.retires_at) == Some(retire));
    ensure!(
        get("pseudonym").is_some_and(|k| k.retires_at.is_none()),
        "never retired"
    );
    ensure!(get("3333333333333333") == Some(new.clone()));
    // Ordered by activation.
    let order: Vec<&str> = listed.iter().map(|k| k.id.as_str()).collect();
    ensure!(
        order.first() == Some(&"1111111111111111") && order.last() == Some(&"3333333333333333"),
        "{order:?}"
    );
    // The same id again is a conflict and changes nothing.
    let again = service_key("3333333333333333", ServiceKeyKind::Hpke, switch, None);
    match store.put_rotated_key(&again, t0).await {
        Err(StoreError::Conflict(_)) => {}
        other => anyhow::bail!("expected a conflict, got {other:?}"),
    }
    ensure!(store.list_service_keys().await? == listed, "rolled back");
    // The pseudonymisation key is not rotated.
    let p = service_key("pseudonym", ServiceKeyKind::Pseudonym, t0, None);
    ensure!(store.put_rotated_key(&p, t0).await.is_err());
    Ok(())
}

async fn only_long_retired_hpke_keys_are_deleted(store: Arc<dyn Store>) -> TestResult {
    let t0 = now();
    let day = time::Duration::days(1);
    let keys = vec![
        service_key("pseudonym", ServiceKeyKind::Pseudonym, t0 - day * 90, None),
        service_key(
            "1111111111111111",
            ServiceKeyKind::Hpke,
            t0 - day * 90,
            Some(t0 - day * 60),
        ),
        service_key(
            "2222222222222222",
            ServiceKeyKind::Hpke,
            t0 - day * 60,
            Some(t0 - day),
        ),
        service_key("3333333333333333", ServiceKeyKind::Hpke, t0 - day, None),
    ];
    ensure!(store.put_key_set(&key_check(4), &keys).await?);
    ensure!(store.delete_retired_keys(t0 - day * 30).await? == 1);
    let ids: Vec<String> = store
        .list_service_keys()
        .await?
        .into_iter()
        .map(|k| k.id)
        .collect();
    ensure!(
        ids == ["pseudonym", "2222222222222222", "3333333333333333"],
        "{ids:?}"
    );
    ensure!(store.delete_retired_keys(t0 + day * 365).await? == 1);
    let ids: Vec<String> = store
        .list_service_keys()
        .await?
        .into_iter()
        .map(|k| k.id)
        .collect();
    ensure!(ids == ["pseudonym", "3333333333333333"], "{ids:?}");
    Ok(())
}

async fn two_instances_initialising_at_once_store_one_key_set(
    a: Arc<dyn Store>,
    b: Arc<dyn Store>,
) -> TestResult {
    let set = |id: &str| {
        vec![
            service_key("pseudonym", ServiceKeyKind::Pseudonym, now(), None),
            service_key(id, ServiceKeyKind::Hpke, now(), None),
        ]
    };
    let (ka, kb) = (set("aaaaaaaaaaaaaaaa"), set("bbbbbbbbbbbbbbbb"));
    let (ca, cb) = (key_check(5), key_check(6));
    let (ra, rb) = tokio::join!(a.put_key_set(&ca, &ka), b.put_key_set(&cb, &kb));
    let (ra, rb) = (ra?, rb?);
    ensure!(ra != rb, "exactly one stores its set: {ra} {rb}");
    let (check, keys) = if ra {
        (key_check(5), ka)
    } else {
        (key_check(6), kb)
    };
    ensure!(a.get_key_check().await? == Some(check.clone()));
    ensure!(b.get_key_check().await? == Some(check));
    let listed = b.list_service_keys().await?;
    ensure!(
        listed.len() == 2 && listed.iter().all(|k| keys.contains(k)),
        "{listed:?}"
    );
    Ok(())
}

async fn a_withdrawal_racing_a_later_export_on_two_instances_keeps_its_rows(
    a: Arc<dyn Store>,
    b: Arc<dyn Store>,
) -> TestResult {
    register(a.as_ref(), provider_a()).await?;
    // Each round: export A is stored; then, at once, one instance withdraws A while the other stores
    // B, which carries A's rows again (unchanged) and some of its own. Whichever runs first, B keeps
    // every row it carried.
    for round in 0..8u32 {
        let base = round * 1_000;
        let old = batch(provider_a(), Uuid::new_v4(), records(base..base + 300));
        stored(a.put_batch(&old).await?)?;
        let later = batch(provider_a(), Uuid::new_v4(), records(base..base + 400));
        let (w, s) = tokio::join!(
            a.withdraw_batch(provider_a(), old.batch_id),
            b.put_batch(&later)
        );
        w?;
        let r = stored(s?)?;
        ensure!(
            r.stored + r.corrected + r.unchanged == 400,
            "round {round}: {r:?}"
        );
        let held: HashSet<Pseudonym> = a
            .list_trajectories(provider_a())
            .await?
            .into_iter()
            .map(|r| r.trajectory)
            .collect();
        for rec in &later.records {
            ensure!(
                held.contains(&rec.trajectory),
                "round {round}: a row the later export carried is gone"
            );
        }
        refused_as_withdrawn(b.put_batch(&old).await?)?;
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------------
// Research projects and their budgets

fn new_project(name: &str, rho_nanos: i64) -> NewProject {
    NewProject {
        name: name.into(),
        purpose: "which care works for whom".into(),
        rho_nanos,
        expires_on: time::macros::date!(2027 - 12 - 31),
        created_at: OffsetDateTime::now_utc(),
    }
}

fn project_entry(p: &Project) -> NewAuditEntry {
    NewAuditEntry {
        at: OffsetDateTime::now_utc(),
        actor_role: "admin".into(),
        actor_id: "cli test".into(),
        action: AuditAction::ProjectRegistered,
        subject: format!("project {}", p.id),
        provider: None,
        details_digest: [1; 32],
    }
}

fn research_answer(
    project: &str,
    rho_nanos: i64,
    years: &[u16],
    reserve: i64,
) -> NewResearchAnswer {
    NewResearchAnswer {
        id: Uuid::new_v4(),
        project: project.into(),
        kind: ResearchKind::Query,
        statement: "SELECT target_group, COUNT(*) FROM trajectories GROUP BY target_group".into(),
        actor: "researcher token 3".into(),
        rho_nanos,
        years: years.to_vec(),
        reserve_nanos: reserve,
        at: time::macros::datetime!(2026-06-01 10:00 UTC),
        answer: serde_json::json!({ "rows": [] }),
        audit: NewAuditEntry {
            at: OffsetDateTime::now_utc(),
            actor_role: "researcher".into(),
            actor_id: "token 3".into(),
            action: AuditAction::ResearchAnswer,
            subject: format!("project {project}"),
            provider: None,
            details_digest: [2; 32],
        },
    }
}

async fn research_projects_are_numbered_listed_and_closed_once(
    store: Arc<dyn Store>,
) -> TestResult {
    let a = store
        .put_project_recorded(&new_project("Wat werkt", RHO / 5), &project_entry)
        .await?;
    let b = store
        .put_project_recorded(&new_project("Voor wie", RHO / 10), &project_entry)
        .await?;
    ensure!(a.id == "p1" && b.id == "p2", "{} {}", a.id, b.id);
    ensure!(store.list_projects().await? == vec![a.clone(), b.clone()]);
    ensure!(store.get_project("p2").await? == Some(b.clone()));
    let close = project_entry(&a);
    store
        .close_project_recorded("p1", OffsetDateTime::now_utc(), &close)
        .await?;
    let closed = store.get_project("p1").await?.context("p1")?;
    ensure!(closed.closed_at.is_some());
    // Closing again keeps the first time and appends nothing.
    let chain = store.list_audit(0, 100, None).await?.len();
    store
        .close_project_recorded("p1", OffsetDateTime::now_utc(), &close)
        .await?;
    ensure!(store.get_project("p1").await?.context("p1")?.closed_at == closed.closed_at);
    ensure!(store.list_audit(0, 100, None).await?.len() == chain);
    ensure!(matches!(
        store
            .close_project_recorded("p9", OffsetDateTime::now_utc(), &close)
            .await,
        Err(StoreError::NotFound)
    ));
    ensure!(
        chain == 3,
        "two registrations and one closing on the chain: {chain}"
    );
    Ok(())
}

async fn research_answers_are_charged_up_to_the_project_and_the_years_reserve(
    store: Arc<dyn Store>,
) -> TestResult {
    let reserve = RHO / 8;
    let p = store
        .put_project_recorded(&new_project("Wat werkt", RHO / 10), &project_entry)
        .await?;
    let q = store
        .put_project_recorded(&new_project("Voor wie", RHO / 10), &project_entry)
        .await?;
    // 0.04 twice fits the project's 0.1; a third does not, and charges nothing.
    for left in [RHO / 100 * 6, RHO / 100 * 2] {
        match store
            .put_research_answer(&research_answer(
                &p.id,
                RHO / 100 * 4,
                &[2024, 2025],
                reserve,
            ))
            .await?
        {
            PutResearch::Charged { left_nanos, .. } => ensure!(left_nanos == left, "{left_nanos}"),
            other => anyhow::bail!("charged expected: {other:?}"),
        }
    }
    ensure!(matches!(
        store
            .put_research_answer(&research_answer(&p.id, RHO / 100 * 4, &[2024], reserve))
            .await?,
        PutResearch::ProjectExhausted { spent_nanos, rho_nanos }
            if spent_nanos == RHO / 100 * 8 && rho_nanos == RHO / 10
    ));
    // The years' reserve (0.125) holds across projects: 2025 has 0.08 spent, 0.05 more would pass it.
    match store
        .put_research_answer(&research_answer(
            &q.id,
            RHO / 100 * 5,
            &[2025, 2026],
            reserve,
        ))
        .await?
    {
        PutResearch::YearExhausted {
            year: 2025,
            spent_nanos,
            reserve_nanos,
        } => {
            ensure!(spent_nanos == RHO / 100 * 8 && reserve_nanos == reserve)
        }
        other => anyhow::bail!("the 2025 reserve: {other:?}"),
    }
    ensure!(
        store.get_project(&q.id).await?.context("q")?.spent_nanos == 0,
        "nothing charged"
    );
    ensure!(
        store.list_research_spend().await? == vec![(2024, RHO / 100 * 8), (2025, RHO / 100 * 8)],
        "2026 was not charged: {:?}",
        store.list_research_spend().await?
    );
    // Research never counts against the rounds' share.
    ensure!(store.privacy_spent(&[2024, 2025]).await? == vec![0, 0]);
    // The accountant's ledger names every research charge, per year.
    let charges = store.list_privacy_charges().await?;
    ensure!(
        charges.iter().filter(|c| c.subject_kind == "query").count() == 4,
        "{charges:?}"
    );
    // Closed and expired projects are answered nothing.
    let entry = project_entry(&q);
    store
        .close_project_recorded(&q.id, OffsetDateTime::now_utc(), &entry)
        .await?;
    ensure!(
        store
            .put_research_answer(&research_answer(&q.id, 1, &[2024], reserve))
            .await?
            == PutResearch::Closed
    );
    let mut late = research_answer(&p.id, 1, &[2024], reserve);
    late.at = time::macros::datetime!(2028-01-01 00:00 UTC);
    ensure!(matches!(
        store.put_research_answer(&late).await?,
        PutResearch::Expired { .. }
    ));
    ensure!(
        store
            .put_research_answer(&research_answer("p9", 1, &[2024], reserve))
            .await?
            == PutResearch::NoProject
    );
    let log = store.list_research_log(&p.id).await?;
    ensure!(
        log.len() == 2 && log.iter().all(|e| e.rho_nanos == RHO / 100 * 4),
        "{log:?}"
    );
    ensure!(log[0].audit_seq < log[1].audit_seq);
    let chain = store.list_audit(0, 100, None).await?;
    ensure!(
        chain
            .iter()
            .filter(|e| e.entry.action == AuditAction::ResearchAnswer)
            .count()
            == 2,
        "one entry per answer given"
    );
    Ok(())
}

/// Two instances answer two projects at once, many times: no project passes its rho and no year
/// its research reserve, and what was charged is exactly what the answers given say.
async fn concurrent_research_answers_on_two_instances_never_pass_a_cap(
    a: Arc<dyn Store>,
    b: Arc<dyn Store>,
) -> TestResult {
    let reserve = RHO / 8;
    let p = a
        .put_project_recorded(&new_project("Wat werkt", RHO / 10), &project_entry)
        .await?;
    let q = b
        .put_project_recorded(&new_project("Voor wie", RHO / 10), &project_entry)
        .await?;
    ensure!(p.id != q.id);
    let mut tasks = Vec::new();
    for i in 0..24u32 {
        let store = [a.clone(), b.clone()][(i % 2) as usize].clone();
        let project = [p.id.clone(), q.id.clone()][((i / 2) % 2) as usize].clone();
        tasks.push(tokio::spawn(async move {
            store
                .put_research_answer(&research_answer(&project, RHO / 100, &[2025], reserve))
                .await
        }));
    }
    let mut charged = 0;
    for t in tasks {
        if let PutResearch::Charged { .. } = t.await?? {
            charged += 1;
        }
    }
    // 12.5 hundredths of reserve for 2025: 12 answers of 0.01 fit, across both projects.
    ensure!(charged == 12, "{charged} answers charged");
    let spend = a.list_research_spend().await?;
    ensure!(spend == vec![(2025, RHO / 100 * 12)], "{spend:?}");
    let projects = a.list_projects().await?;
    ensure!(projects.iter().all(|p| p.spent_nanos <= p.rho_nanos));
    ensure!(projects.iter().map(|p| p.spent_nanos).sum::<i64>() == RHO / 100 * 12);
    Ok(())
}
