//! Withdrawal and export end to end, through the SDK's own functions (`kwm withdraw`, `kwm export`):
//! what is withdrawn is gone from every table, nothing else is, a later round is a new version without
//! it while the earlier one stays as published, and an export holds exactly the provider's own rows.

use std::collections::BTreeSet;

use kwm_schemas::api::WithdrawalKind;
use kwm_schemas::problem::ProblemType;
use kwm_schemas::release::Release;
use kwm_schemas::{ExportedRecord, Role};
use kwm_sdk::custody::{self, Withdrawal};
use kwm_sdk::upload_file;
use kwm_service::app::audit_trail::{load_chain, verify};
use reqwest::StatusCode;

use crate::helpers::{
    kwm, publish_round, region_with_room_for_corrections, spawn_app, spawn_app_on, spawn_app_with,
    synth_exports, upload_options, Backend, TestApp, TestProvider,
};
use crate::rawdb::RawDb;

async fn release(app: &TestApp, token: &str, path: &str) -> Release {
    let res = reqwest::Client::new()
        .get(format!("{}{path}", app.base_url))
        .bearer_auth(token)
        .send()
        .await
        .expect("request sent");
    let status = res.status();
    let text = res.text().await.expect("body");
    assert_eq!(status, StatusCode::OK, "GET {path}: {text}");
    serde_json::from_str(&text).expect("a release")
}

/// The region's `in_zorg` total (all target groups), in tenths.
fn in_zorg_total(r: &Release) -> i64 {
    let col = r
        .criteria
        .iter()
        .position(|c| c.code == "in_zorg")
        .expect("in_zorg is released");
    let total = r
        .rows
        .iter()
        .find(|row| row.target_group.is_none() && row.provider.is_none())
        .expect("a total row");
    total.cells[col]
        .value
        .expect("the region total is published")
        .tenths()
}

/// The trajectory numbers of a synthetic export (second column; `,` or `;`, no quoting).
fn trajectory_numbers(path: &std::path::Path) -> Vec<String> {
    let text = std::fs::read_to_string(path).expect("export readable");
    let mut lines = text.lines();
    let header = lines.next().expect("header");
    let d = if header.contains(';') { ';' } else { ',' };
    assert_eq!(header.split(d).nth(1), Some("trajectory_id"));
    lines
        .map(|l| l.split(d).nth(1).expect("a trajectory id").to_string())
        .collect()
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

async fn rows(db: &RawDb, table: &str, filter: &str) -> i64 {
    db.count(&format!("SELECT count(*) FROM {table} WHERE {filter}"))
        .await
}

async fn withdrawal(app: TestApp) {
    // Every trajectory in 2025, so that every withdrawn row counts in the 2025 round.
    let dir = tempfile::tempdir().expect("temp dir");
    let mut opts = kwm_sdk::synth::SynthOptions::new(dir.path(), 5, 8_000, 31);
    opts.first_year = 2025;
    opts.last_year = 2025;
    let out = kwm_sdk::synth::generate(&opts).expect("synthetic exports");
    let regional = kwm_tests::regional_key();
    let mut ps: Vec<TestProvider> = Vec::new();
    for export in &out.providers[0..4] {
        let p = app.register_provider(export.agb).await;
        let mut o = upload_options(&app, &p, &export.path, &regional);
        // The first provider's rows in two batches, so that one batch can go and one stay.
        o.batch_size = export.rows.div_ceil(2) as u32;
        upload_file(&o).await.expect("upload");
        ps.push(p);
    }
    let a = &ps[0];
    let b = &ps[1];
    let db = RawDb::open(&app).await;
    let total_before = app.stored_rows(None).await;
    let a_before = app.stored_rows(Some(a.agb)).await;

    let region = app.issue_token(Role::Region, None).await;
    let path = "/v1/releases?scope=region&period=2025";
    let round = publish_round(&app, &region, "2025").await.round;
    let first = release(&app, &region, path).await;
    assert_eq!((first.version, first.round), (Some(1), Some(round.id)));

    // One trajectory, named by its number as in the export: pseudonymised here, as on upload.
    let numbers = trajectory_numbers(&out.providers[0].path);
    let number = numbers.last().expect("rows").clone();
    let pseudonym = custody::trajectory_pseudonym(&a.load_keys(), &number).expect("valid");
    let hex = hex(pseudonym.as_bytes());
    let traj_count = format!(
        "SELECT count(*) FROM trajectories WHERE provider = '{}' AND {} = {{}}",
        a.agb,
        db.hex("trajectory")
    );
    assert_eq!(db.count_with(&traj_count, &hex).await, 1);
    let keys = a.load_keys();
    let r = custody::withdraw(
        &a.client,
        &Withdrawal::Trajectory(number.clone()),
        Some(&keys),
    )
    .await
    .expect("withdrawn");
    assert_eq!(
        (r.withdrawn, r.provider, r.trajectories_removed, r.batch_id),
        (WithdrawalKind::Trajectory, a.agb, 1, None)
    );
    assert_eq!(db.count_with(&traj_count, &hex).await, 0);
    assert_eq!(app.stored_rows(Some(a.agb)).await, a_before - 1);
    // Again: nothing left to withdraw.
    let err = custody::withdraw(&a.client, &Withdrawal::Trajectory(number), Some(&keys))
        .await
        .expect_err("gone");
    assert!(
        matches!(&err, custody::CustodyError::Client(c) if c.problem_type() == Some(ProblemType::NotFound)),
        "{err}"
    );

    // A batch: another provider cannot withdraw it (not found), its owner can.
    let batches = a.client.list_batches().await.expect("batches").batches;
    assert_eq!(batches.len(), 2);
    let gone = &batches[0];
    let err = b
        .client
        .withdraw_batch(gone.batch_id)
        .await
        .expect_err("not B's batch");
    assert_eq!(err.problem_type(), Some(ProblemType::NotFound));
    let batch_filter = format!("provider = '{}' AND batch_id = '{}'", a.agb, gone.batch_id);
    let in_batch = rows(&db, "trajectories", &batch_filter).await;
    assert!(in_batch > 1000, "{in_batch}");
    let r = custody::withdraw(&a.client, &Withdrawal::Batch(gone.batch_id), None)
        .await
        .expect("withdrawn");
    assert_eq!(
        (
            r.withdrawn,
            r.batch_id,
            r.trajectories_removed,
            r.batches_removed
        ),
        (
            WithdrawalKind::Batch,
            Some(gone.batch_id),
            in_batch as u64,
            1
        )
    );
    assert_eq!(rows(&db, "trajectories", &batch_filter).await, 0);
    assert_eq!(rows(&db, "batches", &batch_filter).await, 0);
    // Everything else stays.
    let kept = &batches[1];
    let kept_filter = format!("provider = '{}' AND batch_id = '{}'", a.agb, kept.batch_id);
    assert_eq!(rows(&db, "batches", &kept_filter).await, 1);
    assert_eq!(
        app.stored_rows(Some(a.agb)).await,
        a_before - 1 - in_batch as u64
    );
    assert_eq!(
        app.stored_rows(None).await,
        total_before - 1 - in_batch as u64
    );
    assert_eq!(
        app.stored_rows(Some(b.agb)).await,
        out.providers[1].rows,
        "other providers keep every row"
    );

    // A round published now is a new version without the withdrawn rows; the first stays as it was.
    let corrected = publish_round(&app, &region, "2025").await.round;
    assert_eq!(corrected.version, 2);
    let second = release(&app, &region, path).await;
    assert_eq!(
        (second.version, second.round),
        (Some(2), Some(corrected.id))
    );
    assert_ne!(second.id, first.id);
    assert!(
        in_zorg_total(&second) < in_zorg_total(&first),
        "{} trajectories fewer: {} then {}",
        in_batch + 1,
        in_zorg_total(&first),
        in_zorg_total(&second)
    );
    let id = first.id.expect("id");
    let again = release(&app, &region, &format!("/v1/releases/{id}")).await;
    assert_eq!(again, first, "a published release stays as published");

    // Both withdrawals are on the record, for the provider to see.
    let chain = load_chain(app.state.store.as_ref()).await.expect("chain");
    let withdrawals: Vec<&str> = chain
        .iter()
        .filter(|e| e.entry.action.as_str() == "withdraw")
        .map(|e| e.entry.subject.as_str())
        .collect();
    let batch_subject = format!("batch {}", gone.batch_id);
    assert_eq!(withdrawals, ["trajectory", batch_subject.as_str()]);
    assert_eq!(
        verify(app.state.store.as_ref(), None)
            .await
            .expect("readable")
            .result,
        Ok(()),
        "a withdrawn batch needs no upload entry any more, the rest still have theirs"
    );
    app.assert_logs_free_of(&[hex]);
}

#[tokio::test]
async fn withdrawn_rows_are_gone_and_new_releases_leave_them_out_on_sqlite() {
    // The corrected round is a second year round of 2025: a region with the budget for it.
    let app = spawn_app_with(Backend::Sqlite, Some(region_with_room_for_corrections()))
        .await
        .expect("SQLite");
    withdrawal(app).await;
}

#[tokio::test]
async fn withdrawn_rows_are_gone_and_new_releases_leave_them_out_on_postgres() {
    if let Some(app) =
        spawn_app_with(Backend::Postgres, Some(region_with_room_for_corrections())).await
    {
        withdrawal(app).await;
    }
}

async fn export(app: TestApp) {
    // More rows than a page of the export (1000), so it is read and sent in several.
    let (dir, out) = synth_exports(2, 2600, 32);
    let regional = kwm_tests::regional_key();
    let mut ps = Vec::new();
    for export in &out.providers {
        let p = app.register_provider(export.agb).await;
        upload_file(&upload_options(&app, &p, &export.path, &regional))
            .await
            .expect("upload");
        ps.push(p);
    }
    let (a, b) = (&ps[0], &ps[1]);

    let exported = a.client.export().await.expect("export");
    let stored = app
        .state
        .store
        .list_trajectories(a.agb)
        .await
        .expect("stored");
    let set = |rs: Vec<ExportedRecord>| -> BTreeSet<String> {
        rs.iter()
            .map(|r| serde_json::to_string(r).expect("json"))
            .collect()
    };
    assert_eq!(exported.len() as u64, out.providers[0].rows);
    assert_eq!(
        set(exported.clone()),
        set(stored.iter().map(ExportedRecord::from).collect()),
        "exactly the stored rows"
    );
    let others: BTreeSet<_> = app
        .state
        .store
        .list_trajectories(b.agb)
        .await
        .expect("stored")
        .into_iter()
        .map(|r| r.trajectory)
        .collect();
    assert!(exported.iter().all(|r| !others.contains(&r.trajectory)));
    // What the provider sent, minus the client: no pseudonym of the service's second stage leaves
    // (with the regional key, it would make a BSN -> stored pseudonym dictionary), and no client field
    // at all is in the body.
    let ctx = kwm_sdk::PrepareContext::new(
        kwm_schemas::RegionConfig::wbw(),
        kwm_sdk::Pseudonymiser::new(&regional, &a.keys),
    );
    let sent = kwm_sdk::prepare::prepare_file(&out.providers[0].path, &ctx)
        .expect("prepared")
        .records;
    assert_eq!(
        set(exported.clone()),
        set(sent.iter().map(ExportedRecord::from).collect()),
        "the export gives back what was sent"
    );
    let raw = reqwest::Client::new()
        .get(format!("{}/v1/export", app.base_url))
        .bearer_auth(&a.token)
        .send()
        .await
        .expect("sent")
        .text()
        .await
        .expect("body");
    assert!(!raw.contains("\"client\""), "no client field in the export");
    let hex = |p: &kwm_schemas::Pseudonym| {
        p.as_bytes()
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect::<String>()
    };
    for r in stored.iter().chain(&sent) {
        assert!(
            !raw.contains(&hex(&r.client)),
            "a client pseudonym in the export"
        );
    }

    // As CSV, the way `kwm export --out` writes it.
    let file = dir.path().join("export.csv");
    let n = custody::export_csv(&a.client, &file)
        .await
        .expect("written");
    assert_eq!(n, exported.len());
    let text = std::fs::read_to_string(&file).expect("csv");
    assert_eq!(text.lines().count(), n + 1);
    assert!(text.starts_with("trajectory,municipality,target_group,"));

    // Only providers export; the export is on the record.
    let muni = app.issue_token(Role::Municipality, Some("GM0748")).await;
    let res = reqwest::Client::new()
        .get(format!("{}/v1/export", app.base_url))
        .bearer_auth(&muni)
        .send()
        .await
        .expect("sent");
    assert_eq!(res.status(), StatusCode::FORBIDDEN);
    let chain = load_chain(app.state.store.as_ref()).await.expect("chain");
    let of = |action: &str| {
        chain
            .iter()
            .filter(|e| e.entry.action.as_str() == action)
            .collect::<Vec<_>>()
    };
    let (exports, sent) = (of("export"), of("export-sent"));
    assert_eq!((exports.len(), sent.len()), (3, 3));
    assert!(exports
        .iter()
        .chain(&sent)
        .all(|e| e.entry.provider == Some(a.agb)));
    assert_eq!(
        exports[0].entry.subject,
        format!("export of {} records", exported.len())
    );
    assert_eq!(
        sent[1].entry.subject,
        format!("export of {} records sent", exported.len())
    );
    // The entry of a sent export holds the SHA-256 of the very bytes that left.
    let sha = ring::digest::digest(&ring::digest::SHA256, raw.as_bytes());
    let details = serde_json::json!({
        "records": exported.len(),
        "sha256": sha.as_ref().iter().map(|b| format!("{b:02x}")).collect::<String>(),
    });
    assert_eq!(
        sent[1].entry.details_digest,
        kwm_service::audit::digest_of(&details),
        "the second export is the raw one read above"
    );
    app.assert_logs_free_of(&[]);
}

#[tokio::test]
async fn an_export_holds_exactly_the_providers_own_rows_on_sqlite() {
    export(spawn_app().await).await;
}

#[tokio::test]
async fn an_export_holds_exactly_the_providers_own_rows_on_postgres() {
    if let Some(app) = spawn_app_on(Backend::Postgres).await {
        export(app).await;
    }
}

#[tokio::test]
async fn the_kwm_commands_withdraw_and_export() {
    let app = spawn_app().await;
    let (dir, out) = synth_exports(1, 300, 33);
    let export = &out.providers[0];
    let regional = kwm_tests::regional_key();
    let p = app.register_provider(export.agb).await;
    let mut o = upload_options(&app, &p, &export.path, &regional);
    o.batch_size = 100;
    upload_file(&o).await.expect("upload");
    let keys_dir = p.keys_dir.path().display().to_string();
    let conn = |mut args: Vec<String>| {
        args.extend([
            "--service".to_string(),
            app.base_url.clone(),
            "--token".to_string(),
            p.token.clone(),
        ]);
        args
    };
    let s = |v: &[&str]| v.iter().map(|a| a.to_string()).collect::<Vec<_>>();

    let file = dir.path().join("stored.csv");
    let file_arg = file.display().to_string();
    kwm(conn(s(&["export", "--out", &file_arg])))
        .await
        .expect("kwm export");
    let text = std::fs::read_to_string(&file).expect("written");
    assert_eq!(text.lines().count() as u64, export.rows + 1);

    // A trajectory by its number: pseudonymised with the keys, never sent as is.
    let number = trajectory_numbers(&export.path)[0].clone();
    let err = kwm(conn(s(&["withdraw", "--trajectory", &number])))
        .await
        .expect_err("the keys are needed");
    assert_eq!(err.code, 2, "{}", err.message);
    kwm(conn(s(&[
        "withdraw",
        "--trajectory",
        &number,
        "--keys",
        &keys_dir,
    ])))
    .await
    .expect("kwm withdraw --trajectory");
    assert_eq!(app.stored_rows(Some(p.agb)).await, export.rows - 1);

    let batch = p.client.list_batches().await.expect("batches").batches[0].clone();
    kwm(conn(s(&[
        "withdraw",
        "--batch",
        &batch.batch_id.to_string(),
    ])))
    .await
    .expect("kwm withdraw --batch");
    let left = p.client.list_batches().await.expect("batches").batches;
    assert!(left.iter().all(|b| b.batch_id != batch.batch_id));
    let err = kwm(conn(s(&[
        "withdraw",
        "--batch",
        &batch.batch_id.to_string(),
    ])))
    .await
    .expect_err("gone");
    assert_eq!(err.code, 1);
    assert!(err.message.contains("not-found"), "{}", err.message);
    let pseudonym = custody::trajectory_pseudonym(&p.load_keys(), &number).expect("valid");
    app.assert_logs_free_of(&[hex(pseudonym.as_bytes())]);
}
