//! Sealed ingestion end to end: uploads through the SDK, replays, corrections, splitting, every problem
//! type, atomicity, and the promise that no secret reaches the logs.

use kwm_schemas::envelope::{self, SealedBatch};
use kwm_schemas::problem::ProblemType;
use kwm_schemas::{AgbCode, RegionConfig, Role, WireRecord};
use kwm_sdk::batch::seal_records;
use kwm_sdk::prepare::{prepare_file, PrepareContext};
use kwm_sdk::{upload_file, ClientError, Pseudonymiser, RegionalKey};
use ring::signature::KeyPair;
use time::OffsetDateTime;

use crate::helpers::{
    register_regional_key, spawn_app, spawn_app_on, spawn_app_without_regional_key, synth_exports,
    upload_options, Backend, TestApp, TestProvider,
};

/// The records of a synthetic export, pseudonymised and coarsened by the SDK.
fn records_of(file: &std::path::Path, p: &TestProvider, regional: &RegionalKey) -> Vec<WireRecord> {
    let ctx = PrepareContext::new(RegionConfig::wbw(), Pseudonymiser::new(regional, &p.keys));
    let prepared = prepare_file(file, &ctx).expect("export prepared");
    assert!(prepared.bad_rows.is_empty(), "synthetic data must be valid");
    prepared.records
}

async fn seal(p: &TestProvider, records: &[WireRecord], id: Option<uuid::Uuid>) -> SealedBatch {
    let (_, key) = p.client.active_key().await.expect("keys");
    seal_records(
        records,
        p.agb,
        id,
        &key,
        p.keys.signer(),
        &kwm_tests::regional_key().check_value(),
        OffsetDateTime::now_utc(),
    )
    .expect("sealed")
}

/// Re-signs a batch after a test changed it, as a provider with a buggy client would.
fn resign(p: &TestProvider, b: &mut SealedBatch) {
    let digest = envelope::signed_digest(&b.header, &b.encapsulated_key.0, &b.ciphertext.0);
    b.signature.0 = p.keys.signer().sign(&digest).as_ref().to_vec();
}

fn problem(e: ClientError) -> (Option<u16>, ProblemType, kwm_schemas::problem::Problem) {
    let status = e.status();
    let p = e
        .problem()
        .cloned()
        .unwrap_or_else(|| panic!("a problem document, got {e}"));
    (status, p.kind().expect("a known problem type"), p)
}

async fn happy_path(app: TestApp) {
    let (dir, out) = synth_exports(2, 600, 7);
    let regional = kwm_tests::regional_key();
    let export = &out.providers[0];
    let p = app.register_provider(export.agb).await;

    let report = upload_file(&upload_options(&app, &p, &export.path, &regional))
        .await
        .expect("upload");
    assert_eq!(report.rows_read, export.rows);
    assert_eq!(report.stored, export.rows);
    assert_eq!(
        (report.corrected, report.unchanged, report.replayed_batches),
        (0, 0, 0)
    );
    assert_eq!(app.stored_rows(Some(p.agb)).await, export.rows);

    // Running the same upload again is a new upload (new batch ids): nothing new, every row unchanged,
    // and the summary says so.
    let again = upload_file(&upload_options(&app, &p, &export.path, &regional))
        .await
        .expect("a second upload");
    assert_eq!(
        (again.stored, again.corrected, again.unchanged),
        (0, 0, export.rows)
    );
    assert_eq!((again.replayed_batches, again.replayed_records), (0, 0));
    let first_ids: std::collections::HashSet<_> =
        report.receipts.iter().map(|r| r.batch_id).collect();
    assert!(again
        .receipts
        .iter()
        .all(|r| !first_ids.contains(&r.batch_id)));
    assert_eq!(app.stored_rows(None).await, export.rows);

    let listed = p.client.list_batches().await.expect("batches");
    assert_eq!(
        listed.batches.len(),
        report.receipts.len() + again.receipts.len()
    );
    let one = p
        .client
        .get_batch(report.receipts[0].batch_id)
        .await
        .expect("one batch");
    assert_eq!(one.batch_id, report.receipts[0].batch_id);

    // Nothing identifying is stored or logged: no BSN, no pseudonym, no token.
    let csv = std::fs::read_to_string(&export.path).expect("export");
    let mut secrets: Vec<String> = csv
        .lines()
        .skip(1)
        .filter_map(|l| l.split([',', ';']).next())
        .map(str::to_string)
        .collect();
    let stage1 = records_of(&export.path, &p, &regional);
    secrets.extend(stage1.iter().map(|r| hex(r.client.as_bytes())));
    secrets.extend(stage1.iter().map(|r| hex(r.trajectory.as_bytes())));
    let stored = app
        .state
        .store
        .list_trajectories(p.agb)
        .await
        .expect("stored rows");
    assert_eq!(stored.len() as u64, export.rows);
    secrets.extend(stored.iter().map(|r| hex(r.client.as_bytes())));
    // The service's second stage changed every client pseudonym.
    let stage1_clients: std::collections::HashSet<_> = stage1.iter().map(|r| r.client).collect();
    assert!(stored.iter().all(|r| !stage1_clients.contains(&r.client)));
    app.assert_logs_free_of(&secrets);
    drop(dir);
}

/// Issue 14.2: a batch pseudonymised under another regional key than the region's (here: a provider's
/// own, freshly made one) is refused with `wrong-regional-key` and stores nothing; the SDK's upload
/// stops at it; under the region's key the same export is stored.
async fn another_regional_key_is_refused(app: TestApp) {
    let (dir, out) = synth_exports(1, 60, 11);
    let export = &out.providers[0];
    let p = app.register_provider(export.agb).await;
    let own = RegionalKey::generate().expect("a provider's own regional key");
    let records = records_of(&export.path, &p, &own);
    let (_, key) = p.client.active_key().await.expect("keys");
    let sealed = seal_records(
        &records,
        p.agb,
        None,
        &key,
        p.keys.signer(),
        &own.check_value(),
        OffsetDateTime::now_utc(),
    )
    .expect("sealed");
    let (status, kind, doc) = problem(p.client.post_batch(&sealed).await.expect_err("refused"));
    assert_eq!((status, kind), (Some(422), ProblemType::WrongRegionalKey));
    assert!(
        doc.detail.contains("another regional key")
            && doc.detail.contains("from the regional team"),
        "{}",
        doc.detail
    );
    let err = upload_file(&upload_options(&app, &p, &export.path, &own))
        .await
        .expect_err("the SDK's upload is refused too");
    assert!(err.to_string().contains("regional team"), "{err}");
    assert_eq!(app.stored_rows(None).await, 0, "nothing stored");
    assert!(p
        .client
        .list_batches()
        .await
        .expect("batches")
        .batches
        .is_empty());

    let report = upload_file(&upload_options(
        &app,
        &p,
        &export.path,
        &kwm_tests::regional_key(),
    ))
    .await
    .expect("the region's key is accepted");
    assert_eq!(report.stored, export.rows);
    drop(dir);
}

#[tokio::test]
async fn another_regional_key_is_refused_on_sqlite() {
    another_regional_key_is_refused(spawn_app().await).await;
}

#[tokio::test]
async fn another_regional_key_is_refused_on_postgres() {
    if let Some(app) = spawn_app_on(Backend::Postgres).await {
        another_regional_key_is_refused(app).await;
    }
}

/// Before the operator registered the check value of the region's key, no batch can be told right from
/// wrong: every upload is refused (`regional-key-not-registered`) with what the operator must run, and
/// nothing is stored; once it is registered the same batch is stored.
async fn unregistered_regional_key_refuses_uploads(app: TestApp) {
    let (dir, out) = synth_exports(1, 40, 12);
    let export = &out.providers[0];
    let p = app.register_provider(export.agb).await;
    let regional = kwm_tests::regional_key();
    let records = records_of(&export.path, &p, &regional);
    let sealed = seal(&p, &records, None).await;
    let (status, kind, doc) = problem(p.client.post_batch(&sealed).await.expect_err("refused"));
    assert_eq!(
        (status, kind),
        (Some(409), ProblemType::RegionalKeyNotRegistered)
    );
    assert!(
        doc.detail
            .contains("kwm-service admin region key-check set"),
        "{}",
        doc.detail
    );
    assert_eq!(app.stored_rows(None).await, 0, "nothing stored");

    register_regional_key(&app.state, &regional).await;
    let stored = p.client.post_batch(&sealed).await.expect("stored now");
    assert!(stored.created);
    assert_eq!(app.stored_rows(None).await, records.len() as u64);
    drop(dir);
}

#[tokio::test]
async fn unregistered_regional_key_refuses_uploads_on_sqlite() {
    let app = spawn_app_without_regional_key(Backend::Sqlite)
        .await
        .expect("SQLite is always available");
    unregistered_regional_key_refuses_uploads(app).await;
}

#[tokio::test]
async fn unregistered_regional_key_refuses_uploads_on_postgres() {
    if let Some(app) = spawn_app_without_regional_key(Backend::Postgres).await {
        unregistered_regional_key_refuses_uploads(app).await;
    }
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

#[tokio::test]
async fn upload_replay_and_no_secrets_on_sqlite() {
    happy_path(spawn_app().await).await;
}

#[tokio::test]
async fn upload_replay_and_no_secrets_on_postgres() {
    if let Some(app) = spawn_app_on(Backend::Postgres).await {
        happy_path(app).await;
    }
}

async fn split_and_correct(app: TestApp) {
    let (_dir, out) = synth_exports(1, 250, 11);
    let regional = kwm_tests::regional_key();
    let export = &out.providers[0];
    let p = app.register_provider(export.agb).await;
    let mut opts = upload_options(&app, &p, &export.path, &regional);
    opts.batch_size = 100;
    let report = upload_file(&opts).await.expect("upload");
    assert_eq!(report.batches, 3);
    assert_eq!(report.stored, 250);
    assert_eq!(app.stored_rows(Some(p.agb)).await, 250);

    // The trajectory ends: the provider uploads the row again with its end, and it corrects the first.
    let mut records = records_of(&export.path, &p, &regional);
    let running = records
        .iter()
        .position(|r| r.end_month.is_none())
        .expect("a running trajectory in the export");
    let mut r = records[running].clone();
    r.end_month = Some(r.start_month);
    r.end_reason = Some(kwm_schemas::codes::EndReason::ACCORDING_TO_PLAN);
    records[running] = r.clone();
    let batch = seal(&p, &records[running..=running], None).await;
    let outcome = p.client.post_batch(&batch).await.expect("correction");
    assert!(outcome.created);
    assert_eq!(
        (
            outcome.receipt.stored,
            outcome.receipt.corrected,
            outcome.receipt.unchanged
        ),
        (0, 1, 0)
    );
    let stored = app
        .state
        .store
        .list_trajectories(p.agb)
        .await
        .expect("rows");
    assert_eq!(stored.len(), 250);
    let corrected = stored
        .iter()
        .find(|s| s.trajectory == r.trajectory)
        .expect("the corrected trajectory");
    assert_eq!(corrected.end_month, r.end_month);

    // The whole file again, now with the correction in it: everything unchanged.
    let batch = seal(&p, &records, None).await;
    let outcome = p.client.post_batch(&batch).await.expect("re-upload");
    assert_eq!(
        (
            outcome.receipt.stored,
            outcome.receipt.corrected,
            outcome.receipt.unchanged
        ),
        (0, 0, 250)
    );
}

#[tokio::test]
async fn large_upload_is_split_and_corrections_replace_on_sqlite() {
    split_and_correct(spawn_app().await).await;
}

#[tokio::test]
async fn large_upload_is_split_and_corrections_replace_on_postgres() {
    if let Some(app) = spawn_app_on(Backend::Postgres).await {
        split_and_correct(app).await;
    }
}

/// Every refusal stores nothing: each case checks the row count afterwards.
async fn refusals(app: TestApp) {
    let (_dir, out) = synth_exports(2, 120, 3);
    let regional = kwm_tests::regional_key();
    let a = app.register_provider(out.providers[0].agb).await;
    let b = app.register_provider(out.providers[1].agb).await;
    let records = records_of(&out.providers[0].path, &a, &regional);
    let good = seal(&a, &records, None).await;

    let expect =
        |res: Result<kwm_sdk::PostOutcome, ClientError>, status: u16, kind: ProblemType| {
            let (s, k, p) = problem(res.expect_err("must be refused"));
            assert_eq!((s, k), (Some(status), kind), "{p:?}");
            p
        };

    // Tampering: header, ciphertext and signature are all covered by the signature.
    let mut t = good.clone();
    t.header.record_count -= 1;
    expect(
        a.client.post_batch(&t).await,
        403,
        ProblemType::BadSignature,
    );
    let mut t = good.clone();
    t.ciphertext.0[10] ^= 0x01;
    expect(
        a.client.post_batch(&t).await,
        403,
        ProblemType::BadSignature,
    );
    let mut t = good.clone();
    t.signature.0[0] ^= 0x80;
    expect(
        a.client.post_batch(&t).await,
        403,
        ProblemType::BadSignature,
    );
    // Signed by another provider's key.
    let mut t = good.clone();
    resign(&b, &mut t);
    expect(
        a.client.post_batch(&t).await,
        403,
        ProblemType::BadSignature,
    );

    // A correctly signed batch whose ciphertext was damaged before signing.
    let mut t = good.clone();
    t.ciphertext.0[10] ^= 0x01;
    resign(&a, &mut t);
    expect(
        a.client.post_batch(&t).await,
        400,
        ProblemType::DecryptFailed,
    );

    // Provider A's token cannot upload as provider B, and B's batch cannot come with A's token.
    let from_b = seal(&b, &records_of(&out.providers[1].path, &b, &regional), None).await;
    expect(
        a.client.post_batch(&from_b).await,
        403,
        ProblemType::Forbidden,
    );
    // A municipality cannot upload at all.
    let gm = app.issue_token(Role::Municipality, Some("GM0748")).await;
    let gm_client =
        kwm_sdk::Client::new(&app.base_url, Some(kwm_sdk::Token::new(gm))).expect("client");
    expect(
        gm_client.post_batch(&good).await,
        403,
        ProblemType::Forbidden,
    );
    // A token for a provider that was never registered.
    let ghost: AgbCode = "12340000".parse().expect("agb");
    let ghost_token = app.issue_token(Role::Provider, Some(ghost.as_str())).await;
    let ghost_client = kwm_sdk::Client::new(&app.base_url, Some(kwm_sdk::Token::new(ghost_token)))
        .expect("client");
    let mut t = good.clone();
    t.header.provider = ghost;
    resign(&a, &mut t);
    expect(
        ghost_client.post_batch(&t).await,
        403,
        ProblemType::Forbidden,
    );

    // Unsupported protocol version.
    let mut t = good.clone();
    t.header.version = 2;
    resign(&a, &mut t);
    expect(
        a.client.post_batch(&t).await,
        400,
        ProblemType::UnsupportedVersion,
    );

    // Too large: more records than a batch may hold.
    let mut t = good.clone();
    t.header.record_count = 50_001;
    resign(&a, &mut t);
    expect(a.client.post_batch(&t).await, 413, ProblemType::TooLarge);

    // Sealed to a key the service does not have.
    let stranger = envelope::HpkeSecretKey::generate().public_key();
    let t = seal_records(
        &records,
        a.agb,
        None,
        &stranger,
        a.keys.signer(),
        &kwm_tests::regional_key().check_value(),
        OffsetDateTime::now_utc(),
    )
    .expect("sealed");
    let p = expect(a.client.post_batch(&t).await, 400, ProblemType::UnknownKey);
    assert!(p.active_key_id.is_some());

    // An invalid record in the middle of a batch: nothing of the batch is stored, and the problem says
    // which record and which field.
    let mut bad = records.clone();
    bad[1].municipality = "GM0363".parse().expect("Amsterdam");
    let t = seal(&a, &bad, None).await;
    let p = expect(
        a.client.post_batch(&t).await,
        422,
        ProblemType::InvalidRecord,
    );
    assert_eq!(p.errors.len(), 1);
    assert_eq!(
        (p.errors[0].record, p.errors[0].field.as_str()),
        (1, "municipality")
    );
    // The same trajectory twice in one batch.
    let mut dup = records.clone();
    dup[3] = dup[0].clone();
    let t = seal(&a, &dup, None).await;
    let p = expect(
        a.client.post_batch(&t).await,
        422,
        ProblemType::InvalidRecord,
    );
    assert_eq!(p.errors[0].record, 3);

    assert_eq!(
        app.stored_rows(None).await,
        0,
        "no refusal may store anything"
    );

    // The good batch goes through, twice (a retry), and the same id with other content is a conflict.
    let first = a.client.post_batch(&good).await.expect("stored");
    assert!(first.created);
    let retry = a.client.post_batch(&good).await.expect("replayed");
    assert!(!retry.created);
    assert_eq!(
        (
            retry.receipt.batch_id,
            retry.receipt.stored,
            retry.receipt.received_at
        ),
        (
            first.receipt.batch_id,
            first.receipt.stored,
            first.receipt.received_at
        )
    );
    let other = seal(&a, &records[..5], Some(good.header.batch_id)).await;
    expect(
        a.client.post_batch(&other).await,
        409,
        ProblemType::BatchConflict,
    );
    assert_eq!(app.stored_rows(None).await, records.len() as u64);

    // B cannot see A's batch.
    let (_, kind, _) = problem(
        b.client
            .get_batch(good.header.batch_id)
            .await
            .expect_err("hidden"),
    );
    assert_eq!(kind, ProblemType::NotFound);

    // Key rotation: a batch sealed to the retired key is refused, naming the active key; the SDK's
    // upload seals to the new key.
    let old = seal(&a, &records[..3], None).await;
    let new_id = app
        .state
        .keyring
        .rotate(time::Duration::ZERO, time::Duration::ZERO, None)
        .await
        .expect("rotation");
    let p = expect(
        a.client.post_batch(&old).await,
        400,
        ProblemType::RetiredKey,
    );
    assert_eq!(p.active_key_id.as_deref(), Some(new_id.as_str()));
    assert!(p.detail.contains(new_id.as_str()));
    let report = upload_file(&upload_options(&app, &b, &out.providers[1].path, &regional))
        .await
        .expect("upload after rotation");
    assert!(report.receipts.iter().all(|r| r.key_id == new_id));
    app.assert_logs_free_of(&[a.token.clone(), b.token.clone()]);
    let _ = a.keys.signer().public_key();
}

#[tokio::test]
async fn every_refusal_is_a_problem_and_stores_nothing_on_sqlite() {
    refusals(spawn_app().await).await;
}

#[tokio::test]
async fn every_refusal_is_a_problem_and_stores_nothing_on_postgres() {
    if let Some(app) = spawn_app_on(Backend::Postgres).await {
        refusals(app).await;
    }
}
