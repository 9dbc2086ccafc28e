//! Uploads as a provider's quality officer makes them, through the real SDK: a correction back to an
//! earlier value lands, a withdrawn export can be uploaded again, withdrawing an obsolete export keeps
//! what a later one carried, a withdrawn batch posted again is refused, a retry of one upload attempt is
//! a replay that changes nothing, and a withdrawn trajectory stays out of later uploads.

use kwm_schemas::problem::ProblemType;
use kwm_schemas::WireRecord;
use kwm_sdk::batch::{now_utc_seconds, seal_records};
use kwm_sdk::custody;
use kwm_sdk::prepare::{prepare_file, PrepareContext};
use kwm_sdk::withdrawn::WithdrawnList;
use kwm_sdk::{upload_file, Pseudonymiser, RegionalKey, RetryPolicy, UploadReport};

use crate::helpers::{
    answer_losing_proxy, kwm, spawn_app, spawn_app_on, synth_exports, upload_options, Backend,
    CsvExport, TestApp, TestProvider,
};

async fn upload(
    app: &TestApp,
    p: &TestProvider,
    file: &std::path::Path,
    regional: &RegionalKey,
) -> UploadReport {
    upload_file(&upload_options(app, p, file, regional))
        .await
        .expect("upload")
}

/// The stored row of one of the provider's trajectories, by its number in the export.
async fn stored_row(app: &TestApp, p: &TestProvider, number: &str) -> Option<WireRecord> {
    let pseudonym = custody::trajectory_pseudonym(&p.load_keys(), number).expect("valid");
    app.state
        .store
        .list_trajectories(p.agb)
        .await
        .expect("rows")
        .into_iter()
        .find(|r| r.trajectory == pseudonym)
}

async fn withdraw_all(p: &TestProvider, report: &UploadReport) {
    for r in &report.receipts {
        p.client
            .withdraw_batch(r.batch_id)
            .await
            .expect("withdrawn");
    }
}

async fn a_correction_back_and_a_withdrawn_export_again(app: TestApp) {
    let (dir, out) = synth_exports(1, 200, 41);
    let export = &out.providers[0];
    let regional = kwm_tests::regional_key();
    let p = app.register_provider(export.agb).await;
    let mut csv = CsvExport::read(&export.path);
    let (sat, id) = (csv.column("satisfaction"), csv.column("trajectory_id"));
    let i = csv
        .rows
        .iter()
        .position(|r| !r[sat].is_empty())
        .expect("a row with a satisfaction grade");
    let number = csv.rows[i][id].clone();
    let file = dir.path().join("export.csv");
    let n = csv.rows.len() as u64;

    // 3 -> 4 -> 3: each upload applies, the last one too (content seen before is a new upload).
    let mut reports = Vec::new();
    for grade in ["3", "4", "3"] {
        csv.rows[i][sat] = grade.into();
        let rows = csv.rows.clone();
        csv.write(&file, &rows);
        reports.push(upload(&app, &p, &file, &regional).await);
        let row = stored_row(&app, &p, &number).await.expect("stored");
        assert_eq!(
            row.satisfaction.map(|s| s.get().to_string()).as_deref(),
            Some(grade),
            "after the upload with {grade}"
        );
    }
    let figures: Vec<_> = reports
        .iter()
        .map(|r| (r.stored, r.corrected, r.unchanged, r.replayed_batches))
        .collect();
    assert_eq!(
        figures,
        [(n, 0, 0, 0), (0, 1, n - 1, 0), (0, 1, n - 1, 0)],
        "each summary says what that upload changed"
    );

    // Withdraw everything, then upload the same export again: it is stored again.
    for r in &reports {
        withdraw_all(&p, r).await;
    }
    assert_eq!(app.stored_rows(Some(p.agb)).await, 0);
    let again = upload(&app, &p, &file, &regional).await;
    assert_eq!(
        (again.stored, again.replayed_batches, again.replayed_records),
        (n, 0, 0)
    );
    assert_eq!(app.stored_rows(Some(p.agb)).await, n);
}

#[tokio::test]
async fn a_correction_back_lands_and_a_withdrawn_export_uploads_again_on_sqlite() {
    a_correction_back_and_a_withdrawn_export_again(spawn_app().await).await;
}

#[tokio::test]
async fn a_correction_back_lands_and_a_withdrawn_export_uploads_again_on_postgres() {
    if let Some(app) = spawn_app_on(Backend::Postgres).await {
        a_correction_back_and_a_withdrawn_export_again(app).await;
    }
}

async fn an_obsolete_export_withdrawn(app: TestApp) {
    let (dir, out) = synth_exports(1, 240, 43);
    let export = &out.providers[0];
    let regional = kwm_tests::regional_key();
    let p = app.register_provider(export.agb).await;
    let csv = CsvExport::read(&export.path);
    let n = csv.rows.len() as u64;
    let half = csv.rows.len() / 2;
    // Export A: the first half of the trajectories. Export B, later: all of them (A's unchanged).
    let a_file = dir.path().join("a.csv");
    csv.write(&a_file, &csv.rows[..half]);
    let a = upload(&app, &p, &a_file, &regional).await;
    let b = upload(&app, &p, &export.path, &regional).await;
    assert_eq!(
        (b.stored, b.corrected, b.unchanged),
        (n - half as u64, 0, half as u64)
    );

    // Withdrawing the obsolete A keeps every row B carried.
    withdraw_all(&p, &a).await;
    assert_eq!(app.stored_rows(Some(p.agb)).await, n);
    let listed = p.client.list_batches().await.expect("batches").batches;
    assert_eq!(listed.len(), b.receipts.len());

    // A's records in a batch of their own: it carries them (unchanged). Withdrawn, they go with it, and
    // the sealed batch posted again is refused: the withdrawn rows do not come back through it.
    let records: Vec<WireRecord> = {
        let ctx = PrepareContext::new(
            kwm_schemas::RegionConfig::wbw(),
            Pseudonymiser::new(&regional, &p.keys),
        );
        prepare_file(&a_file, &ctx).expect("prepared").records
    };
    let (_, key) = p.client.active_key().await.expect("keys");
    let sealed = seal_records(
        &records,
        p.agb,
        None,
        &key,
        p.keys.signer(),
        &kwm_tests::regional_key().check_value(),
        now_utc_seconds(),
    )
    .expect("sealed");
    let first = p.client.post_batch(&sealed).await.expect("stored");
    assert!(first.created);
    assert_eq!(first.receipt.unchanged, half as u32);
    p.client
        .withdraw_batch(sealed.header.batch_id)
        .await
        .expect("withdrawn");
    assert_eq!(app.stored_rows(Some(p.agb)).await, n - half as u64);
    let err = p
        .client
        .post_batch(&sealed)
        .await
        .expect_err("a withdrawn batch stays withdrawn");
    assert_eq!(err.status(), Some(410));
    assert_eq!(err.problem_type(), Some(ProblemType::BatchWithdrawn));
    let detail = &err.problem().expect("a problem").detail;
    assert!(
        detail.contains(&sealed.header.batch_id.to_string()) && detail.contains("upload again"),
        "{detail}"
    );
    assert_eq!(app.stored_rows(Some(p.agb)).await, n - half as u64);
    // The refusal is on the record, for the provider to see.
    let chain = kwm_service::app::audit_trail::load_chain(app.state.store.as_ref())
        .await
        .expect("chain");
    let refused = format!("batch {}: batch-withdrawn", sealed.header.batch_id);
    assert!(
        chain
            .iter()
            .any(|e| e.entry.action.as_str() == "upload-refused" && e.entry.subject == refused),
        "no upload-refused entry {refused}"
    );
}

#[tokio::test]
async fn withdrawing_an_obsolete_export_keeps_a_later_ones_rows_on_sqlite() {
    an_obsolete_export_withdrawn(spawn_app().await).await;
}

#[tokio::test]
async fn withdrawing_an_obsolete_export_keeps_a_later_ones_rows_on_postgres() {
    if let Some(app) = spawn_app_on(Backend::Postgres).await {
        an_obsolete_export_withdrawn(app).await;
    }
}

#[tokio::test]
async fn a_retry_after_a_lost_answer_is_a_replay_that_changes_nothing() {
    let app = spawn_app().await;
    let (_dir, out) = synth_exports(1, 150, 45);
    let export = &out.providers[0];
    let regional = kwm_tests::regional_key();
    let p = app.register_provider(export.agb).await;
    let mut o = upload_options(&app, &p, &export.path, &regional);
    // The answer to the first batch is lost on the way back; the SDK posts the same batch again.
    o.service = answer_losing_proxy(&app.base_url).await;
    o.retry = RetryPolicy {
        max_attempts: 3,
        base_delay: std::time::Duration::from_millis(10),
        max_delay: std::time::Duration::from_millis(50),
    };
    // Two batches of the same size (two are in flight at once: either may be the one).
    let n = export.rows;
    assert_eq!(n % 2, 0, "{n} rows");
    o.batch_size = (n / 2) as u32;
    let report = upload_file(&o).await.expect("upload");
    let half = n / 2;
    assert_eq!(report.batches, 2);
    assert_eq!(
        (report.replayed_batches, report.replayed_records),
        (1, half)
    );
    assert_eq!(
        (report.stored, report.corrected, report.unchanged),
        (half, 0, 0),
        "the replayed batch's first answer is not counted again"
    );
    assert_eq!(app.stored_rows(Some(p.agb)).await, n);
    let summary = kwm_sdk::cli::summary(&report, Some(&o.service));
    assert!(
        summary.contains("1 replayed")
            && summary.contains(&format!("{half} record(s), changed nothing now")),
        "{summary}"
    );
}

#[tokio::test]
async fn a_withdrawn_trajectory_stays_out_of_later_uploads() {
    let app = spawn_app().await;
    let (_dir, out) = synth_exports(1, 120, 47);
    let export = &out.providers[0];
    let regional = kwm_tests::regional_key();
    let p = app.register_provider(export.agb).await;
    let n = export.rows;
    upload(&app, &p, &export.path, &regional).await;
    let csv = CsvExport::read(&export.path);
    let number = csv.rows[3][csv.column("trajectory_id")].clone();
    let keys_dir = p.keys_dir.path().display().to_string();

    // `kwm withdraw --trajectory` withdraws it at the service and lists it in the keys directory.
    kwm(vec![
        "withdraw".into(),
        "--trajectory".into(),
        number.clone(),
        "--keys".into(),
        keys_dir.clone(),
        "--service".into(),
        app.base_url.clone(),
        "--token".into(),
        p.token.clone(),
    ])
    .await
    .expect("kwm withdraw --trajectory");
    assert_eq!(app.stored_rows(Some(p.agb)).await, n - 1);
    let listed = WithdrawnList::load(p.keys_dir.path()).expect("the list");
    let pseudonym = custody::trajectory_pseudonym(&p.load_keys(), &number).expect("valid");
    assert!(listed.contains(&pseudonym) && listed.len() == 1);
    let text = std::fs::read_to_string(WithdrawnList::path_in(p.keys_dir.path())).expect("file");
    assert!(
        !text.contains(&number),
        "the list holds no trajectory number"
    );

    // The next full export leaves it out; with --include-withdrawn it is sent again.
    let upload_args = |extra: &[&str]| {
        let mut args: Vec<String> = [
            "upload",
            &export.path.display().to_string(),
            "--keys",
            &keys_dir,
            "--service",
            &app.base_url,
            "--token",
            &p.token,
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        args.push("--regional-key".into());
        args.push(regional_file(&regional, &p));
        args.extend(extra.iter().map(|s| s.to_string()));
        args
    };
    kwm(upload_args(&[])).await.expect("kwm upload");
    assert_eq!(app.stored_rows(Some(p.agb)).await, n - 1);
    assert!(stored_row(&app, &p, &number).await.is_none());
    let mut o = upload_options(&app, &p, &export.path, &regional);
    o.withdrawn = listed.into_set();
    let report = upload_file(&o).await.expect("upload");
    assert_eq!(
        (report.rows_withdrawn, report.records_sent, report.stored),
        (1, n - 1, 0)
    );
    kwm(upload_args(&["--include-withdrawn"]))
        .await
        .expect("kwm upload --include-withdrawn");
    assert_eq!(app.stored_rows(Some(p.agb)).await, n);
    assert!(stored_row(&app, &p, &number).await.is_some());
}

/// The regional key written next to the provider's keys, as `kwm keygen --regional` would.
fn regional_file(regional: &RegionalKey, p: &TestProvider) -> String {
    let path = p.keys_dir.path().join("regional.key");
    if !path.exists() {
        regional
            .write_to(&path, false)
            .expect("regional key written");
    }
    path.display().to_string()
}

#[tokio::test]
async fn the_openapi_document_names_the_withdrawn_batch_refusal() {
    let app = spawn_app().await;
    let doc: serde_json::Value = reqwest::get(format!("{}/v1/openapi.json", app.base_url))
        .await
        .expect("openapi")
        .json()
        .await
        .expect("json");
    let gone = &doc["paths"]["/v1/batches"]["post"]["responses"]["410"];
    assert!(
        gone.to_string().contains("batch-withdrawn"),
        "POST /v1/batches documents 410 batch-withdrawn: {gone}"
    );
    // And the refusals of another regional key, or of none registered yet.
    let responses = &doc["paths"]["/v1/batches"]["post"]["responses"];
    assert!(
        responses["422"].to_string().contains("wrong-regional-key"),
        "POST /v1/batches documents 422 wrong-regional-key: {}",
        responses["422"]
    );
    assert!(
        responses["409"]
            .to_string()
            .contains("regional-key-not-registered"),
        "POST /v1/batches documents 409 regional-key-not-registered: {}",
        responses["409"]
    );
}
