//! `kwm` as a provider's quality officer runs it against a real `kwm-service serve`, with only the
//! README and the error messages to go on.

mod common;

use std::path::Path;
use std::process::{Command, Output, Stdio};

use common::{
    init, kwm, kwm_binary, kwm_service, kwm_service_cmd, ok, printed_token, register_regional_key,
    serve, text,
};

/// `kwm ...` in `cwd` with `KWM_TOKEN` set, as the README has the provider do it.
fn kwm_with_token(cwd: &Path, token: &str, args: &[&str]) -> Output {
    let mut cmd = Command::new(kwm_binary());
    for (key, _) in std::env::vars_os() {
        if key.to_string_lossy().starts_with("KWM_") {
            cmd.env_remove(key);
        }
    }
    cmd.args(args)
        .current_dir(cwd)
        .env("KWM_TOKEN", token)
        .stdin(Stdio::null())
        .output()
        .expect("kwm runs")
}

/// The fenced block of `lang` that follows `marker` in the README.
fn readme_block(marker: &str, lang: &str) -> String {
    let readme = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../README.md"))
        .expect("README.md");
    let after = &readme[readme.find(marker).expect("the marker is in the README")..];
    let fence = format!("```{lang}\n");
    let start = after.find(&fence).expect("a block follows") + fence.len();
    let len = after[start..].find("```").expect("the block ends");
    after[start..start + len].to_string()
}

#[test]
fn the_readme_kwm_toml_and_its_commands_work_as_written() {
    let dir = tempfile::tempdir().expect("temp dir");
    let data = dir.path().join("service");
    std::fs::create_dir(&data).expect("data dir");
    let work = dir.path().join("provider");
    std::fs::create_dir(&work).expect("provider dir");
    ok(kwm(&work, &["keygen", "--out", "keys/"]));
    ok(kwm(
        &work,
        &["keygen", "--regional", "--out", "regional.key"],
    ));
    ok(kwm(
        &work,
        &[
            "synth",
            "--out-dir",
            "synth",
            "--providers",
            "1",
            "--trajectories",
            "150",
        ],
    ));
    let agb = std::fs::read_to_string(work.join("synth/providers.txt")).expect("providers.txt");
    let agb = agb.trim();
    std::fs::copy(
        work.join(format!("synth/{agb}.csv")),
        work.join("export.csv"),
    )
    .expect("copied");
    ok(kwm_service_cmd(&data)
        .args(["admin", "init"])
        .output()
        .expect("runs"));
    register_regional_key(&data, &work.join("regional.key"));
    let token = printed_token(&ok(kwm_service_cmd(&data)
        .args([
            "admin",
            "provider",
            "add",
            "--agb",
            agb,
            "--name",
            "Voorbeeld",
        ])
        .arg("--signing-key")
        .arg(work.join("keys/signing.pub"))
        .output()
        .expect("runs")));
    let service = serve(&data);

    // The README's kwm.toml, with this service's URL and this provider's AGB code.
    let toml: String = readme_block("**`kwm.toml`**", "toml")
        .lines()
        .map(|l| {
            if l.starts_with("service = ") {
                format!("service = \"{}\"", service.base_url)
            } else if l.starts_with("agb = ") {
                format!("agb = \"{agb}\"")
            } else {
                l.to_string()
            }
        })
        .collect::<Vec<_>>()
        .join("\n");
    std::fs::write(work.join("kwm.toml"), toml).expect("kwm.toml");
    let commands: Vec<String> = readme_block("With that file and the token in `KWM_TOKEN`", "sh")
        .lines()
        .filter(|l| l.starts_with("kwm "))
        .map(|l| l.split('#').next().unwrap_or_default().trim().to_string())
        .collect();
    assert_eq!(commands.len(), 3, "{commands:?}");
    assert!(commands.contains(&"kwm export --out stored.csv".to_string()));
    for c in &commands {
        let args: Vec<&str> = c.split_whitespace().skip(1).collect();
        let out = kwm_with_token(&work, &token, &args);
        assert!(
            out.status.success(),
            "`{c}` failed:\n{}\n{}",
            text(&out.stdout),
            text(&out.stderr)
        );
    }
    let stored = std::fs::read_to_string(work.join("stored.csv")).expect("stored.csv");
    assert!(
        stored.lines().count() > 100,
        "{} lines",
        stored.lines().count()
    );
}

#[test]
fn a_refused_token_says_to_pass_token_or_set_kwm_token() {
    let dir = tempfile::tempdir().expect("temp dir");
    let service = serve(dir.path());
    let out = kwm(
        dir.path(),
        &[
            "batches",
            "--service",
            &service.base_url,
            "--token",
            "kwm_not-a-token",
        ],
    );
    assert_eq!(out.status.code(), Some(1));
    let err = text(&out.stderr);
    assert!(err.contains("HTTP 401"), "{err}");
    assert!(
        err.contains("--token TOKEN or set KWM_TOKEN"),
        "the fix is named: {err}"
    );
    assert!(!err.contains("kwm_not-a-token"), "never the token: {err}");
}

#[test]
fn https_against_a_plain_http_service_says_so() {
    let dir = tempfile::tempdir().expect("temp dir");
    let service = serve(dir.path());
    let https = service.base_url.replace("http://", "https://");
    kwm_binary(); // built before the clock starts
    let started = std::time::Instant::now();
    let out = kwm(
        dir.path(),
        &["batches", "--service", &https, "--token", "t"],
    );
    assert_eq!(out.status.code(), Some(1));
    let err = text(&out.stderr);
    assert!(
        err.contains("the URL says https, but the service answered in plain http"),
        "{err}"
    );
    assert!(
        err.contains(&format!("use {}", service.base_url)),
        "names the URL to use: {err}"
    );
    assert!(
        started.elapsed() < std::time::Duration::from_secs(5),
        "not retried as if it were transient: {:?}",
        started.elapsed()
    );
}

/// The summary `kwm upload --json` printed.
fn upload_json(out: Output) -> serde_json::Value {
    let stdout = ok(out);
    serde_json::from_str(stdout.trim()).unwrap_or_else(|e| panic!("not JSON ({e}): {stdout}"))
}

/// The export as its header and rows (synthetic exports: no quoting).
fn read_export(path: &Path) -> (char, Vec<String>, Vec<Vec<String>>) {
    let text = std::fs::read_to_string(path).expect("export");
    let mut lines = text.lines();
    let first = lines.next().expect("header");
    let d = if first.contains(';') { ';' } else { ',' };
    let split = |l: &str| l.split(d).map(str::to_string).collect::<Vec<_>>();
    (d, split(first), lines.map(split).collect())
}

fn write_export(path: &Path, d: char, header: &[String], rows: &[Vec<String>]) {
    let d = d.to_string();
    let mut text = header.join(&d);
    text.push('\n');
    for r in rows {
        text.push_str(&r.join(&d));
        text.push('\n');
    }
    std::fs::write(path, text).expect("export written");
}

/// A quality officer's desk as the README sets it up: her keys and the region's key, a synthetic
/// export of `trajectories` rows, a new service that knows the region's key and her provider (with her
/// token), serving, and `kwm.toml` pointing at it.
struct ProviderDesk {
    _dir: tempfile::TempDir,
    data: std::path::PathBuf,
    work: std::path::PathBuf,
    agb: String,
    token: String,
    _service: common::Served,
}

fn provider_desk(trajectories: u32) -> ProviderDesk {
    let dir = tempfile::tempdir().expect("temp dir");
    let data = dir.path().join("service");
    std::fs::create_dir(&data).expect("data dir");
    let work = dir.path().join("provider");
    std::fs::create_dir(&work).expect("provider dir");
    ok(kwm(&work, &["keygen", "--out", "keys/"]));
    ok(kwm(
        &work,
        &["keygen", "--regional", "--out", "regional.key"],
    ));
    ok(kwm(
        &work,
        &[
            "synth",
            "--out-dir",
            "synth",
            "--providers",
            "1",
            "--trajectories",
            &trajectories.to_string(),
        ],
    ));
    let agb = std::fs::read_to_string(work.join("synth/providers.txt")).expect("providers.txt");
    let agb = agb.trim().to_string();
    init(&data);
    register_regional_key(&data, &work.join("regional.key"));
    let token = printed_token(&ok(kwm_service_cmd(&data)
        .args([
            "admin",
            "provider",
            "add",
            "--agb",
            &agb,
            "--name",
            "Voorbeeld",
        ])
        .arg("--signing-key")
        .arg(work.join("keys/signing.pub"))
        .output()
        .expect("runs")));
    let service = serve(&data);
    std::fs::write(
        work.join("kwm.toml"),
        format!(
            "service = \"{}\"\nkeys = \"keys/\"\nregional_key = \"regional.key\"\n",
            service.base_url
        ),
    )
    .expect("kwm.toml");
    ProviderDesk {
        _dir: dir,
        data,
        work,
        agb,
        token,
        _service: service,
    }
}

#[test]
fn a_quality_officer_corrects_back_withdraws_and_uploads_again() {
    let desk = provider_desk(120);
    let (work, token) = (desk.work.clone(), desk.token.clone());
    let agb = desk.agb.as_str();
    let (d, header, mut rows) = read_export(&work.join(format!("synth/{agb}.csv")));
    let n = rows.len() as u64;
    let col = |name: &str| header.iter().position(|c| c == name).expect(name);
    let (sat, id) = (col("satisfaction"), col("trajectory_id"));
    let i = rows
        .iter()
        .position(|r| !r[sat].is_empty())
        .expect("a graded row");
    let export = work.join("export.csv");
    let stored_csv = |name: &str| {
        ok(kwm_with_token(&work, &token, &["export", "--out", name]));
        let mut lines: Vec<String> = std::fs::read_to_string(work.join(name))
            .expect("stored")
            .lines()
            .map(str::to_string)
            .collect();
        lines.sort();
        lines
    };

    // Satisfaction 3, then 4, then back to 3: every upload applies, and says what it changed.
    let mut summaries = Vec::new();
    let mut first_stored = Vec::new();
    for (k, grade) in ["3", "4", "3"].into_iter().enumerate() {
        rows[i][sat] = grade.into();
        write_export(&export, d, &header, &rows);
        let s = upload_json(kwm_with_token(
            &work,
            &token,
            &["upload", "export.csv", "--json"],
        ));
        summaries.push((
            s["stored"].as_u64(),
            s["corrected"].as_u64(),
            s["replayed_records"].as_u64(),
        ));
        if k == 0 {
            first_stored = stored_csv("stored-0.csv");
        }
    }
    assert_eq!(
        summaries,
        [
            (Some(n), Some(0), Some(0)),
            (Some(0), Some(1), Some(0)),
            (Some(0), Some(1), Some(0))
        ]
    );
    assert_eq!(
        stored_csv("stored-2.csv"),
        first_stored,
        "after 3 -> 4 -> 3 the service holds what it held after the first upload"
    );
    // The human summary says what this upload changed.
    let human = ok(kwm_with_token(&work, &token, &["upload", "export.csv"]));
    assert!(human.contains("this upload changed"), "{human}");
    assert!(
        human
            .lines()
            .any(|l| l.split_whitespace().collect::<Vec<_>>()
                == ["stored", "0", "new", "trajectories"]),
        "{human}"
    );

    // Withdraw every batch, then upload the same export again: it is stored again.
    let list: serde_json::Value =
        serde_json::from_str(&ok(kwm_with_token(&work, &token, &["batches", "--json"])))
            .expect("json");
    for b in list["batches"].as_array().expect("batches") {
        ok(kwm_with_token(
            &work,
            &token,
            &["withdraw", "--batch", b["batch_id"].as_str().expect("id")],
        ));
    }
    let s = upload_json(kwm_with_token(
        &work,
        &token,
        &["upload", "export.csv", "--json"],
    ));
    assert_eq!(s["stored"].as_u64(), Some(n), "{s}");

    // One trajectory withdrawn stays out of the next upload of the full export, with a note.
    let number = rows[0][id].clone();
    let out = kwm_with_token(&work, &token, &["withdraw", "--trajectory", &number]);
    ok(out.clone());
    assert!(
        text(&out.stderr).contains("withdrawn-trajectories.txt"),
        "{}",
        text(&out.stderr)
    );
    let out = kwm_with_token(&work, &token, &["upload", "export.csv", "--json"]);
    let note = text(&out.stderr);
    let s = upload_json(out);
    assert_eq!(
        (s["rows_withdrawn"].as_u64(), s["stored"].as_u64()),
        (Some(1), Some(0)),
        "{s}"
    );
    assert!(
        note.contains("left out") && note.contains("--include-withdrawn"),
        "{note}"
    );
    let s = upload_json(kwm_with_token(
        &work,
        &token,
        &["upload", "export.csv", "--json", "--include-withdrawn"],
    ));
    assert_eq!(
        (s["rows_withdrawn"].as_u64(), s["stored"].as_u64()),
        (Some(0), Some(1)),
        "{s}"
    );
}

/// The Dutch CSV as Excel in a Dutch locale reads it: a byte order mark, `;`, decimal commas.
fn dutch_csv(bytes: &[u8]) -> Vec<Vec<String>> {
    let body = bytes
        .strip_prefix("\u{feff}".as_bytes())
        .expect("UTF-8 with a byte order mark");
    csv::ReaderBuilder::new()
        .delimiter(b';')
        .has_headers(false)
        .from_reader(body)
        .records()
        .map(|r| r.expect("a record").iter().map(str::to_string).collect())
        .collect()
}

#[test]
fn kwm_scores_writes_the_own_scores_as_dutch_csv_and_as_a_workbook() {
    let desk = provider_desk(600);
    let (work, data, token) = (desk.work.clone(), desk.data.clone(), desk.token.clone());
    let agb = desk.agb.as_str();
    let export = format!("synth/{agb}.csv");
    ok(kwm_with_token(&work, &token, &["upload", &export]));

    // Before the round there is nothing to read, and no file is left behind.
    let early = kwm_with_token(&work, &token, &["scores", "--period", "2025", "--csv"]);
    assert_eq!(early.status.code(), Some(1), "{}", text(&early.stderr));
    assert!(!work.join("kwm-scores-2025.csv").exists());

    // The regional team publishes the round of 2025.
    ok(kwm_service(
        &data,
        &["admin", "round", "publish", "--period", "2025"],
    ));

    // CSV, to the file named.
    let said = ok(kwm_with_token(
        &work,
        &token,
        &["scores", "--period", "2025", "--csv", "--out", "scores.csv"],
    ));
    assert!(said.contains("scores.csv"), "{said}");
    let records = dutch_csv(&std::fs::read(work.join("scores.csv")).expect("scores.csv"));
    assert_eq!(
        records[0][..4],
        ["Gebied", "Periode", "Versie", "Cijfers van"]
    );
    assert_eq!(records[0].len(), 13);
    let own = format!("Eigen cijfers (AGB {agb})");
    let sources: std::collections::BTreeSet<&str> =
        records[1..].iter().map(|r| r[3].as_str()).collect();
    assert!(sources.contains(own.as_str()), "{sources:?}");
    assert!(
        sources
            .iter()
            .any(|s| s.starts_with("Jeugdhulpregio West-Brabant West")),
        "the benchmark beside the own figures: {sources:?}"
    );
    assert!(records[1..].iter().all(|r| r.len() == 13 && r[1] == "2025"));
    let values: Vec<&str> = records[1..]
        .iter()
        .map(|r| r[8].as_str())
        .filter(|v| !v.is_empty())
        .collect();
    assert!(values.iter().all(|v| !v.contains('.')), "decimal commas");
    assert!(values.iter().any(|v| v.contains(',')), "{values:?}");
    assert!(records[1..]
        .iter()
        .any(|r| r[3] == own && r[12] == "exact (eigen gegevens)"));

    // XLSX, to the default file name.
    let said = ok(kwm_with_token(
        &work,
        &token,
        &["scores", "--period", "2025", "--xlsx"],
    ));
    assert!(said.contains("kwm-scores-2025.xlsx"), "{said}");
    let bytes = std::fs::read(work.join("kwm-scores-2025.xlsx")).expect("the workbook");
    let mut wb: calamine::Xlsx<_> =
        calamine::open_workbook_from_rs(std::io::Cursor::new(bytes)).expect("a workbook");
    use calamine::Reader;
    assert_eq!(
        wb.sheet_names(),
        ["Cijfers", "Toelichting", "Publicatieronde"]
    );
    let figures = wb.worksheet_range("Cijfers").expect("Cijfers");
    let cell = |y: u32, x: u32| {
        figures
            .get_value((y, x))
            .map(|d| d.to_string())
            .unwrap_or_default()
    };
    assert_eq!(cell(3, 3), own);
    assert!(cell(3, 8).ends_with("(benchmark)"), "{}", cell(3, 8));
    assert_eq!(cell(4, 3), "Waarde");
    assert_eq!(cell(4, 4), "95%-interval ondergrens");
    assert_eq!(cell(4, 6), "Aantal trajecten (n)");

    // On the terminal: the totals, own and the region's.
    let table = ok(kwm_with_token(
        &work,
        &token,
        &["scores", "--period", "2025"],
    ));
    assert!(table.contains("OWN") && table.contains("REGION"), "{table}");
    assert!(table.contains("Beëindiging volgens plan"), "{table}");

    // A period that is not one: a usage error naming the flag.
    let bad = kwm_with_token(&work, &token, &["scores", "--period", "2025-M1", "--csv"]);
    assert_eq!(bad.status.code(), Some(2));
    assert!(
        text(&bad.stderr).contains("--period"),
        "{}",
        text(&bad.stderr)
    );
}
