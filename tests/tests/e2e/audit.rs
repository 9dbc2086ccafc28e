//! The audit trail end to end: entries written by uploads, rounds, refusals and operator commands; tampering
//! with stored entries (changed, reordered, deleted in the middle and at the end) named by the same
//! verification `kwm-service admin audit verify` runs; `GET /v1/audit` per role; token revocation.

use kwm_schemas::api::AuditPage;
use kwm_schemas::problem::{Problem, ProblemType};
use kwm_schemas::Role;
use kwm_sdk::{upload_file, RegionalKey};
use kwm_service::app::audit_trail::{self, load_chain, verify, VerifyError};
use kwm_service::audit::{verify_chain, ChainError};
use reqwest::StatusCode;

use crate::helpers::{
    publish_round, spawn_app, spawn_app_on, synth_exports, upload_options, Backend, TestApp,
};
use crate::rawdb::RawDb;

/// Synthetic providers, registered, with their exports uploaded in batches of 100.
struct Uploaded {
    _dir: tempfile::TempDir,
    out: kwm_sdk::synth::SynthOutput,
    regional: RegionalKey,
    providers: Vec<crate::helpers::TestProvider>,
}

async fn upload_all(app: &TestApp, providers: u32, rows: u64, seed: u64) -> Uploaded {
    let (dir, out) = synth_exports(providers, rows, seed);
    let regional = kwm_tests::regional_key();
    let mut ps = Vec::new();
    for export in &out.providers {
        let p = app.register_provider(export.agb).await;
        let mut o = upload_options(app, &p, &export.path, &regional);
        o.batch_size = 100;
        upload_file(&o).await.expect("upload");
        ps.push(p);
    }
    Uploaded {
        _dir: dir,
        out,
        regional,
        providers: ps,
    }
}

/// `kwm-service admin ...` against the app's data dir and database, in this process.
async fn admin(app: &TestApp, args: &[&str]) -> anyhow::Result<()> {
    let data_dir = app.config.data_dir.display().to_string();
    let url = app.config.database_url();
    let mut argv = vec![
        "kwm-service",
        "--data-dir",
        &data_dir,
        "--database-url",
        &url,
        "admin",
    ];
    argv.extend_from_slice(args);
    kwm_service::cli::run_from(argv).await
}

async fn verified(app: &TestApp) -> Result<(), VerifyError> {
    verify(app.state.store.as_ref(), None)
        .await
        .expect("the chain is readable")
        .result
}

async fn tampering_is_named(app: TestApp) {
    upload_all(&app, 2, 600, 21).await;
    let store = app.state.store.as_ref();
    let intact = verify(store, None).await.expect("readable");
    assert_eq!(intact.result, Ok(()));
    let n = intact.entries as i64;
    assert!(n >= 6, "one upload entry per batch: {n}");
    let head = intact.head.expect("a head");
    assert_eq!(head.seq, n);
    admin(&app, &["audit", "verify"])
        .await
        .expect("an untouched chain passes");
    let chain = load_chain(store).await.expect("chain");
    assert!(chain
        .iter()
        .all(|e| e.entry.action.as_str() == "upload" && e.entry.provider.is_some()));

    let db = RawDb::open(&app).await;

    // A changed entry is named.
    let original = chain[2].entry.subject.clone();
    db.execute(
        "UPDATE audit_log SET subject = 'batch 00000000-0000-0000-0000-000000000000' WHERE seq = 3",
    )
    .await;
    assert_eq!(
        verified(&app).await,
        Err(VerifyError::Chain(ChainError::Altered { seq: 3 }))
    );
    let err = admin(&app, &["audit", "verify"])
        .await
        .expect_err("a changed chain fails");
    assert!(err.to_string().contains("entry 3"), "{err}");
    db.execute(&format!(
        "UPDATE audit_log SET subject = '{original}' WHERE seq = 3"
    ))
    .await;
    assert_eq!(verified(&app).await, Ok(()), "restored");

    // Two entries that swapped places: the first out of place is named.
    db.swap_audit_seq(2, 4).await;
    let err = verified(&app).await.expect_err("reordered");
    assert_eq!(err.seq(), 2, "{err}");
    db.swap_audit_seq(2, 4).await;
    assert_eq!(verified(&app).await, Ok(()), "swapped back");

    // The newest entry deleted: the hash chain alone still holds ...
    db.execute(&format!("DELETE FROM audit_log WHERE seq = {n}"))
        .await;
    let shortened = load_chain(store).await.expect("chain");
    assert_eq!(verify_chain(&shortened), Ok(n as usize - 1));
    // ... but the batch it recorded has no entry any more, and a recorded head is gone.
    match verified(&app).await {
        Err(e @ VerifyError::MissingUpload { head: h, .. }) => {
            assert_eq!(h, n - 1);
            assert_eq!(e.seq(), n);
        }
        other => panic!("the deleted last entry is found: {other:?}"),
    }
    let anchored = verify(store, Some(head)).await.expect("readable");
    assert_eq!(
        anchored.result,
        Err(VerifyError::Anchor {
            seq: n,
            found: false
        })
    );

    // An entry deleted in the middle: the entry after the gap is named.
    db.execute("DELETE FROM audit_log WHERE seq = 2").await;
    assert_eq!(
        verified(&app).await,
        Err(VerifyError::Chain(ChainError::Gap {
            seq: 3,
            expected: 2
        }))
    );
    let err = admin(&app, &["audit", "verify"])
        .await
        .expect_err("a chain with a hole fails");
    assert!(err.to_string().contains("entry 3"), "{err}");
}

#[tokio::test]
async fn tampering_is_named_on_sqlite() {
    tampering_is_named(spawn_app().await).await;
}

#[tokio::test]
async fn tampering_is_named_on_postgres() {
    if let Some(app) = spawn_app_on(Backend::Postgres).await {
        tampering_is_named(app).await;
    }
}

/// A round and its audit entry are stored in one transaction; a round whose entry is gone (deleted from
/// the end of the chain) is named by the verification.
async fn a_round_without_its_entry_is_named(app: TestApp) {
    upload_all(&app, 2, 600, 24).await;
    let region = app.issue_token(Role::Region, None).await;
    let round = publish_round(&app, &region, "2025").await.round;
    let chain = load_chain(app.state.store.as_ref()).await.expect("chain");
    let last = chain.last().expect("entries");
    assert_eq!(last.entry.action.as_str(), "release");
    assert!(
        last.entry.subject.contains(&round.id.to_string()),
        "{}",
        last.entry.subject
    );
    assert_eq!(last.entry.actor_role, "region");
    assert_eq!(verified(&app).await, Ok(()));
    admin(&app, &["audit", "verify"])
        .await
        .expect("a chain with its round's entry passes");

    // The round's row references its entry: the database refuses to delete the entry alone ...
    let db = RawDb::open(&app).await;
    let delete = format!("DELETE FROM audit_log WHERE seq = {}", last.seq);
    assert!(
        db.try_execute(&delete).await.is_err(),
        "the reference holds"
    );
    assert_eq!(verified(&app).await, Ok(()));
    // ... but an intruder who switches the check off can: the verification names the round.
    assert_eq!(db.execute_without_foreign_keys(&delete).await, 1);
    assert_eq!(
        verified(&app).await,
        Err(VerifyError::MissingRelease {
            release: round.id,
            head: last.seq - 1
        })
    );
    let err = admin(&app, &["audit", "verify"])
        .await
        .expect_err("the round's entry is missing");
    assert!(err.to_string().contains(&round.id.to_string()), "{err}");
}

#[tokio::test]
async fn a_round_without_its_entry_is_named_on_sqlite() {
    a_round_without_its_entry_is_named(spawn_app().await).await;
}

#[tokio::test]
async fn a_round_without_its_entry_is_named_on_postgres() {
    if let Some(app) = spawn_app_on(Backend::Postgres).await {
        a_round_without_its_entry_is_named(app).await;
    }
}

#[tokio::test]
async fn an_anchor_file_records_the_head_and_catches_a_rewrite() {
    let app = spawn_app().await;
    upload_all(&app, 1, 250, 22).await;
    let dir = tempfile::tempdir().expect("dir");
    let anchor = dir.path().join("audit.anchor");
    let anchor_arg = anchor.display().to_string();
    admin(&app, &["audit", "verify", "--anchor", &anchor_arg])
        .await
        .expect("intact");
    let recorded = audit_trail::Anchor::read(&anchor)
        .expect("readable")
        .expect("written");
    assert_eq!(recorded.seq, 3, "three batches of at most 100");
    // More entries after the anchor are fine.
    upload_all(&app, 1, 120, 23).await;
    admin(&app, &["audit", "verify", "--anchor", &anchor_arg])
        .await
        .expect("the chain grew");
    // Entries deleted back to before the recorded head: the anchor names the entry it recorded.
    let db = RawDb::open(&app).await;
    let recorded = audit_trail::Anchor::read(&anchor).expect("ok").expect("ok");
    db.execute(&format!(
        "DELETE FROM audit_log WHERE seq >= {}",
        recorded.seq
    ))
    .await;
    let err = admin(&app, &["audit", "verify", "--anchor", &anchor_arg])
        .await
        .expect_err("deleted back to before the anchor");
    assert!(
        err.to_string().contains(&format!("entry {}", recorded.seq)),
        "{err}"
    );
}

async fn get(app: &TestApp, token: &str, path: &str) -> reqwest::Response {
    reqwest::Client::new()
        .get(format!("{}{path}", app.base_url))
        .bearer_auth(token)
        .send()
        .await
        .expect("request sent")
}

async fn page(app: &TestApp, token: &str, after: i64, limit: u32) -> AuditPage {
    let res = get(
        app,
        token,
        &format!("/v1/audit?after={after}&limit={limit}"),
    )
    .await;
    assert_eq!(res.status(), StatusCode::OK);
    res.json().await.expect("an audit page")
}

async fn audit_views(app: TestApp) {
    let up = upload_all(&app, 2, 500, 24).await;
    let ps = &up.providers;
    let admin_token = app.issue_token(Role::Admin, None).await;
    let muni = app.issue_token(Role::Municipality, Some("GM0748")).await;

    // A municipality may not read the audit trail; the refusal itself is recorded.
    let res = get(&app, &muni, "/v1/audit").await;
    assert_eq!(res.status(), StatusCode::FORBIDDEN);
    let p: Problem = res.json().await.expect("problem");
    assert_eq!(p.kind(), Some(ProblemType::Forbidden));

    // The admin pages through everything, oldest first.
    let chain = load_chain(app.state.store.as_ref()).await.expect("chain");
    let mut seen = Vec::new();
    let mut after = 0;
    loop {
        let pg = page(&app, &admin_token, after, 3).await;
        assert!(pg.entries.len() <= 3);
        seen.extend(pg.entries);
        match pg.next_after {
            Some(n) => after = n,
            None => break,
        }
    }
    assert_eq!(seen.len(), chain.len());
    for (i, e) in seen.iter().enumerate() {
        assert_eq!(e.seq, i as i64 + 1);
        let hash: String = chain[i].hash.iter().map(|b| format!("{b:02x}")).collect();
        assert_eq!(e.hash, hash);
    }
    let forbidden = seen.last().expect("entries");
    assert_eq!(
        (
            forbidden.action.as_str(),
            forbidden.subject.as_str(),
            forbidden.actor_role.as_str()
        ),
        ("forbidden", "GET /v1/audit", "municipality")
    );
    assert!(forbidden.actor_id.starts_with("token "));
    let all = page(&app, &admin_token, 0, 1000).await;
    assert_eq!(all.entries, seen);
    assert_eq!(all.next_after, None);

    // A provider sees the entries about its own data only, and all of them.
    for p in ps {
        let own = page(&app, &p.token, 0, 1000).await;
        let expected: Vec<i64> = chain
            .iter()
            .filter(|e| e.entry.provider == Some(p.agb))
            .map(|e| e.seq)
            .collect();
        assert!(!expected.is_empty());
        assert_eq!(
            own.entries.iter().map(|e| e.seq).collect::<Vec<_>>(),
            expected
        );
        assert!(own.entries.iter().all(|e| e.provider == Some(p.agb)));
    }

    // Paging parameters are checked.
    for q in ["limit=0", "limit=1001", "after=-1", "limit=x"] {
        let res = get(&app, &admin_token, &format!("/v1/audit?{q}")).await;
        assert_eq!(res.status(), StatusCode::BAD_REQUEST, "{q}");
    }
    app.assert_logs_free_of(&[]);
}

#[tokio::test]
async fn audit_views_follow_the_role_on_sqlite() {
    audit_views(spawn_app().await).await;
}

#[tokio::test]
async fn audit_views_follow_the_role_on_postgres() {
    if let Some(app) = spawn_app_on(Backend::Postgres).await {
        audit_views(app).await;
    }
}

async fn revocation(app: TestApp) {
    let store = app.state.store.as_ref();
    let (id, token) = audit_trail::issue_token(
        store,
        &audit_trail::operator(),
        Role::Region,
        None,
        "revocation test",
    )
    .await
    .expect("issued");
    app.issued_tokens
        .lock()
        .expect("lock")
        .push(token.to_string());
    assert_eq!(get(&app, &token, "/v1/me").await.status(), StatusCode::OK);

    admin(&app, &["token", "revoke", "--id", &id.to_string()])
        .await
        .expect("revoked");
    let res = get(&app, &token, "/v1/me").await;
    assert_eq!(res.status(), StatusCode::UNAUTHORIZED);
    let p: Problem = res.json().await.expect("problem");
    assert_eq!(p.kind(), Some(ProblemType::Unauthenticated));

    let t = store
        .list_tokens()
        .await
        .expect("tokens")
        .into_iter()
        .find(|t| t.id == id)
        .expect("listed");
    assert!(t.revoked_at.is_some());
    admin(&app, &["token", "revoke", "--id", &id.to_string()])
        .await
        .expect("revoking twice is harmless");
    assert!(admin(&app, &["token", "revoke", "--id", "999999"])
        .await
        .is_err());
    admin(&app, &["token", "list"]).await.expect("listed");
    admin(&app, &["audit", "list", "--limit", "5"])
        .await
        .expect("listed");

    let chain = load_chain(store).await.expect("chain");
    let actions: Vec<(&str, &str)> = chain
        .iter()
        .map(|e| (e.entry.action.as_str(), e.entry.subject.as_str()))
        .collect();
    let subject = format!("token {id} (region)");
    assert_eq!(
        actions,
        [
            ("token-issued", subject.as_str()),
            ("token-revoked", subject.as_str())
        ],
        "one entry per change, none for the second revocation"
    );
    assert!(chain.iter().all(|e| e.entry.actor_role == "admin"));
    assert_eq!(verified(&app).await, Ok(()));
    app.assert_logs_free_of(&[]);
}

#[tokio::test]
async fn a_revoked_token_is_refused_on_sqlite() {
    revocation(spawn_app().await).await;
}

#[tokio::test]
async fn a_revoked_token_is_refused_on_postgres() {
    if let Some(app) = spawn_app_on(Backend::Postgres).await {
        revocation(app).await;
    }
}

#[tokio::test]
async fn refused_uploads_are_recorded() {
    let app = spawn_app().await;
    let up = upload_all(&app, 1, 50, 25).await;
    let p = &up.providers[0];
    let before = load_chain(app.state.store.as_ref())
        .await
        .expect("chain")
        .len();
    // Someone else's provider code in the header: forbidden, recorded once as a refused upload.
    let (_, key) = p.client.active_key().await.expect("keys");
    let other: kwm_schemas::AgbCode = "87654321".parse().expect("agb");
    let ctx = kwm_sdk::PrepareContext::new(
        kwm_schemas::RegionConfig::wbw(),
        kwm_sdk::Pseudonymiser::new(&up.regional, &p.keys),
    );
    let records = kwm_sdk::prepare::prepare_file(&up.out.providers[0].path, &ctx)
        .expect("prepared")
        .records;
    let batch = kwm_sdk::batch::seal_records(
        &records,
        other,
        None,
        &key,
        p.keys.signer(),
        &kwm_tests::regional_key().check_value(),
        time::OffsetDateTime::now_utc(),
    )
    .expect("sealed");
    let err = p.client.post_batch(&batch).await.expect_err("refused");
    assert_eq!(err.problem_type(), Some(ProblemType::Forbidden));
    let chain = load_chain(app.state.store.as_ref()).await.expect("chain");
    assert_eq!(chain.len(), before + 1, "one entry, not two");
    let e = &chain[before].entry;
    assert_eq!(e.action.as_str(), "upload-refused");
    assert_eq!(
        e.subject,
        format!("batch {}: forbidden", batch.header.batch_id)
    );
    assert_eq!(e.provider, Some(p.agb));
}

/// Makes every insert into the audit chain fail, as a full disk or a broken table would.
async fn break_audit_writes(db: &RawDb) {
    match db {
        RawDb::Sqlite(_) => {
            db.execute(
                "CREATE TRIGGER no_audit BEFORE INSERT ON audit_log \
                 BEGIN SELECT RAISE(ABORT, 'audit writes disabled by the test'); END",
            )
            .await;
        }
        RawDb::Postgres(_) => {
            db.execute(
                "CREATE FUNCTION no_audit() RETURNS trigger LANGUAGE plpgsql AS \
                 $$ BEGIN RAISE EXCEPTION 'audit writes disabled by the test'; END $$",
            )
            .await;
            db.execute(
                "CREATE TRIGGER no_audit BEFORE INSERT ON audit_log \
                 FOR EACH ROW EXECUTE FUNCTION no_audit()",
            )
            .await;
        }
    }
}

fn failures(app: &TestApp, request: &str) -> String {
    let metrics = app.state.metrics.render();
    let prefix = format!("kwm_audit_append_failures_total{{request=\"{request}\"}} ");
    metrics
        .lines()
        .find_map(|l| l.strip_prefix(prefix.as_str()))
        .unwrap_or_else(|| panic!("no {prefix} in the metrics"))
        .to_string()
}

async fn audit_write_failures(app: TestApp) {
    let (_dir, out) = synth_exports(1, 80, 26);
    let regional = kwm_tests::regional_key();
    let export = &out.providers[0];
    let p = app.register_provider(export.agb).await;
    let (_dir2, other) = synth_exports(1, 60, 27);
    let q = app.register_provider(other.providers[0].agb).await;
    // One provider's data goes in while the chain can be written.
    upload_file(&upload_options(&app, &p, &export.path, &regional))
        .await
        .expect("upload");
    let batch = app.state.store.list_batches(p.agb).await.expect("batches")[0].batch_id;
    let db = RawDb::open(&app).await;
    break_audit_writes(&db).await;

    // An upload whose entry cannot be written fails, and stores nothing: the entry is written in the
    // upload's own transaction, so no crash or failure leaves a batch without its entry.
    let err = upload_file(&upload_options(
        &app,
        &q,
        &other.providers[0].path,
        &regional,
    ))
    .await
    .expect_err("the upload fails without its audit entry");
    assert!(err.to_string().contains("internal"), "{err}");
    assert_eq!(app.stored_rows(Some(q.agb)).await, 0);
    assert!(app
        .state
        .store
        .list_batches(q.agb)
        .await
        .expect("batches")
        .is_empty());
    assert_eq!(failures(&app, "failed"), "1");
    assert_eq!(verified(&app).await, Ok(()), "nothing unrecorded to find");

    // So does a withdrawal: the rows stay, the batch stays.
    let res = reqwest::Client::new()
        .delete(format!("{}/v1/batches/{batch}", app.base_url))
        .bearer_auth(&p.token)
        .send()
        .await
        .expect("sent");
    assert_eq!(res.status(), StatusCode::INTERNAL_SERVER_ERROR);
    assert_eq!(app.stored_rows(Some(p.agb)).await, export.rows);
    assert_eq!(failures(&app, "failed"), "2");

    // An export hands out nothing without its entry.
    let res = get(&app, &p.token, "/v1/export").await;
    assert_eq!(res.status(), StatusCode::INTERNAL_SERVER_ERROR);
    let body = res.text().await.expect("body");
    assert!(!body.contains("\"trajectory\""), "{body}");
    assert_eq!(failures(&app, "failed"), "3");

    // A refusal stands as answered; the failed entry is counted.
    let muni = app.issue_token(Role::Municipality, Some("GM0748")).await;
    assert_eq!(
        get(&app, &muni, "/v1/audit").await.status(),
        StatusCode::FORBIDDEN
    );
    assert_eq!(failures(&app, "answered"), "1");
    let chain = load_chain(app.state.store.as_ref()).await.expect("chain");
    let actions: Vec<&str> = chain.iter().map(|e| e.entry.action.as_str()).collect();
    assert_eq!(
        actions,
        ["upload"],
        "only the upload made before the failure"
    );
}

#[tokio::test]
async fn without_its_audit_entry_an_action_fails_on_sqlite() {
    audit_write_failures(spawn_app().await).await;
}

#[tokio::test]
async fn without_its_audit_entry_an_action_fails_on_postgres() {
    if let Some(app) = spawn_app_on(Backend::Postgres).await {
        audit_write_failures(app).await;
    }
}

/// A token hammering routes it may not use leaves one entry at once and one counted entry when its
/// window closes (here: at shutdown), not one entry per call; the chain still verifies.
async fn refused_calls_cannot_flood_the_chain(mut app: TestApp) {
    let muni = app.issue_token(Role::Municipality, Some("GM0748")).await;
    let before = load_chain(app.state.store.as_ref())
        .await
        .expect("chain")
        .len();
    for _ in 0..40 {
        let res = get(&app, &muni, "/v1/audit").await;
        assert_eq!(res.status(), StatusCode::FORBIDDEN);
    }
    for _ in 0..5 {
        let res = get(&app, &muni, "/v1/export").await;
        assert_eq!(res.status(), StatusCode::FORBIDDEN);
    }
    let chain = load_chain(app.state.store.as_ref()).await.expect("chain");
    let new: Vec<_> = chain[before..]
        .iter()
        .map(|e| (e.entry.action.as_str(), e.entry.subject.clone()))
        .collect();
    assert_eq!(new, vec![("forbidden", "GET /v1/audit".to_string())]);

    app.shutdown().await.expect("clean shutdown");
    let chain = load_chain(app.state.store.as_ref()).await.expect("chain");
    let new: Vec<_> = chain[before..]
        .iter()
        .map(|e| {
            (
                e.entry.action.as_str(),
                e.entry.subject.clone(),
                e.entry.actor_role.clone(),
            )
        })
        .collect();
    assert_eq!(
        new,
        vec![
            (
                "forbidden",
                "GET /v1/audit".to_string(),
                "municipality".to_string()
            ),
            (
                "forbidden",
                "44 more forbidden calls: GET /v1/audit (39), GET /v1/export (5)".to_string(),
                "municipality".to_string()
            ),
        ]
    );
    assert_eq!(
        chain[before].entry.actor_id,
        chain[before + 1].entry.actor_id,
        "both entries name the same token"
    );
    assert_eq!(verified(&app).await, Ok(()));
}

#[tokio::test]
async fn refused_calls_cannot_flood_the_chain_on_sqlite() {
    refused_calls_cannot_flood_the_chain(spawn_app().await).await;
}

#[tokio::test]
async fn refused_calls_cannot_flood_the_chain_on_postgres() {
    if let Some(app) = spawn_app_on(Backend::Postgres).await {
        refused_calls_cannot_flood_the_chain(app).await;
    }
}

/// Verification reads the chain in pages: a chain longer than a page verifies whole, and an entry
/// changed on a later page is named.
#[tokio::test]
async fn a_chain_longer_than_a_page_is_verified_page_by_page() {
    let app = spawn_app().await;
    let store = app.state.store.as_ref();
    let actor = audit_trail::operator();
    let n = audit_trail::PAGE as usize * 2 + 17;
    for i in 0..n {
        let e = audit_trail::entry(
            &actor,
            kwm_service::audit::AuditAction::Forbidden,
            format!("GET /v1/test/{i}"),
            None,
            &i,
        );
        store.append_audit(&e).await.expect("appended");
    }
    let v = verify(store, None).await.expect("readable");
    assert_eq!(v.result, Ok(()));
    assert_eq!(v.entries, n);
    assert_eq!(v.head.map(|h| h.seq), Some(n as i64));

    let db = RawDb::open(&app).await;
    let target = audit_trail::PAGE as i64 + 500;
    db.execute(&format!(
        "UPDATE audit_log SET subject = 'GET /v1/other' WHERE seq = {target}"
    ))
    .await;
    let v = verify(store, None).await.expect("readable");
    assert_eq!(
        v.result,
        Err(VerifyError::Chain(ChainError::Altered { seq: target }))
    );
    assert_eq!(v.entries, n, "the rest is still counted");
}
