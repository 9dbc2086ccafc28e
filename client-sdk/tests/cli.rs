//! The `kwm` binary as a user runs it, for everything that needs no service: keygen, synth, and upload's
//! validation and `--dry-run`, with their exit codes.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use kwm_schemas::WireRecord;

fn kwm(args: &[&str], cwd: &Path) -> Output {
    Command::new(env!("CARGO_BIN_EXE_kwm"))
        .args(args)
        .current_dir(cwd)
        .env_remove("KWM_TOKEN")
        .env_remove("KWM_LOG")
        .output()
        .expect("kwm runs")
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

fn fixture() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/bad_rows.csv")
}

/// A working directory with provider keys, a regional key and a small synthetic export.
fn setup() -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().expect("tempdir");
    let d = dir.path();
    assert!(kwm(&["keygen", "--out", "keys"], d).status.success());
    assert!(kwm(&["keygen", "--regional", "--out", "regional.key"], d)
        .status
        .success());
    let out = kwm(
        &[
            "synth",
            "--out-dir",
            "synth",
            "--providers",
            "1",
            "--trajectories",
            "60",
            "--seed",
            "4",
        ],
        d,
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    let agb = std::fs::read_to_string(d.join("synth/providers.txt")).expect("providers.txt");
    let export = d.join("synth").join(format!("{}.csv", agb.trim()));
    (dir, export)
}

#[test]
fn keygen_writes_keys_and_refuses_to_overwrite() {
    let dir = tempfile::tempdir().expect("tempdir");
    let d = dir.path();
    let out = kwm(&["keygen", "--out", "k"], d);
    assert!(out.status.success(), "{}", text(&out.stderr));
    for f in ["signing.key", "signing.pub", "trajectory.key"] {
        assert!(d.join("k").join(f).is_file(), "{f}");
    }
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        for f in ["signing.key", "trajectory.key"] {
            let mode = std::fs::metadata(d.join("k").join(f))
                .expect("meta")
                .permissions()
                .mode();
            assert_eq!(mode & 0o777, 0o600, "{f}");
        }
    }
    let before = std::fs::read(d.join("k/signing.key")).expect("key");
    let again = kwm(&["keygen", "--out", "k"], d);
    assert_eq!(again.status.code(), Some(2));
    assert!(
        text(&again.stderr).contains("--force"),
        "{}",
        text(&again.stderr)
    );
    assert_eq!(std::fs::read(d.join("k/signing.key")).expect("key"), before);
    assert!(kwm(&["keygen", "--out", "k", "--force"], d)
        .status
        .success());
    assert_ne!(std::fs::read(d.join("k/signing.key")).expect("key"), before);

    assert!(kwm(&["keygen", "--regional", "--out", "r.key"], d)
        .status
        .success());
    assert_eq!(
        kwm(&["keygen", "--regional", "--out", "r.key"], d)
            .status
            .code(),
        Some(2)
    );
}

#[test]
fn synth_is_reproducible_from_the_command_line() {
    let dir = tempfile::tempdir().expect("tempdir");
    let d = dir.path();
    let args = |out: &'static str| {
        vec![
            "synth",
            "--out-dir",
            out,
            "--providers",
            "3",
            "--trajectories",
            "300",
            "--seed",
            "12",
        ]
    };
    assert!(kwm(&args("a"), d).status.success());
    assert!(kwm(&args("b"), d).status.success());
    let list = std::fs::read_to_string(d.join("a/providers.txt")).expect("list");
    assert_eq!(list.lines().count(), 3);
    for agb in list.lines() {
        let name = format!("{agb}.csv");
        assert_eq!(
            std::fs::read(d.join("a").join(&name)).expect("a"),
            std::fs::read(d.join("b").join(&name)).expect("b")
        );
    }
}

#[test]
fn upload_of_a_bad_file_lists_every_bad_row_and_sends_nothing() {
    let (dir, _) = setup();
    let d = dir.path();
    let file = fixture();
    let out = kwm(
        &[
            "upload",
            file.to_str().expect("utf-8 path"),
            "--service",
            // Nothing listens here: a request would fail with exit code 1, not 2.
            "http://127.0.0.1:9",
            "--token",
            "t",
            "--keys",
            "keys",
            "--regional-key",
            "regional.key",
        ],
        d,
    );
    assert_eq!(out.status.code(), Some(2), "{}", text(&out.stderr));
    let err = text(&out.stderr);
    let shown = format!("{}:", file.display());
    let lines: Vec<&str> = err.lines().filter(|l| l.starts_with(&shown)).collect();
    assert_eq!(lines.len(), 16, "{err}");
    assert!(err.contains(&format!(
        "{}:3: column bsn (col 1): not a valid BSN (fails the elfproef)",
        file.display()
    )));
    assert!(
        err.contains("15 of 17 rows are not valid; nothing was sent"),
        "{err}"
    );
    assert!(!err.contains("123456789"), "no BSN in the output");
    assert!(text(&out.stdout).is_empty());
}

#[test]
fn dry_run_prints_exactly_what_would_leave_the_machine() {
    let (dir, export) = setup();
    let d = dir.path();
    let out = kwm(
        &[
            "upload",
            export.to_str().expect("utf-8 path"),
            "--keys",
            "keys",
            "--regional-key",
            "regional.key",
            "--dry-run",
            "--batch-size",
            "25",
        ],
        d,
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    let stdout = text(&out.stdout);
    let mut headers = Vec::new();
    let mut records = 0;
    for line in stdout.lines() {
        let v: serde_json::Value = serde_json::from_str(line).expect("every line is JSON");
        if let Some(h) = v.get("batch") {
            headers.push(h.clone());
        } else {
            let _: WireRecord = serde_json::from_value(v).expect("a wire record");
            records += 1;
        }
    }
    assert_eq!(records, 60);
    let counts: Vec<u64> = headers
        .iter()
        .map(|h| h["record_count"].as_u64().expect("count"))
        .collect();
    assert_eq!(counts, [25, 25, 10]);
    assert_eq!(headers[0]["key_id"], "(fetched at upload)");
    assert_eq!(headers[0]["provider"], "(fetched at upload)");
    // Nothing of the export's identifying columns is in what would be sent.
    let csv = std::fs::read_to_string(&export).expect("export");
    for row in csv.lines().skip(1).take(20) {
        let bsn = row.split([',', ';']).next().expect("bsn");
        assert!(!stdout.contains(bsn), "a BSN in the dry-run output");
    }
    assert!(!stdout.contains("birth"), "no birth dates");
    assert!(
        text(&out.stderr).contains("nothing was sent"),
        "{}",
        text(&out.stderr)
    );

    // No batch id is shown: every upload draws new ones (its retries reuse them), so a dry run cannot
    // know them; the AGB code, when given, is shown.
    assert_eq!(headers[0]["batch_id"], "(a new random id at upload)");
    let agb = export.file_stem().and_then(|s| s.to_str()).expect("agb");
    let o = kwm(
        &[
            "upload",
            export.to_str().expect("utf-8 path"),
            "--keys",
            "keys",
            "--regional-key",
            "regional.key",
            "--dry-run",
            "--agb",
            agb,
        ],
        d,
    );
    assert!(o.status.success(), "{}", text(&o.stderr));
    let first = text(&o.stdout)
        .lines()
        .find(|l| l.starts_with("{\"batch\""))
        .map(|l| serde_json::from_str::<serde_json::Value>(l).expect("json"))
        .expect("a batch line");
    assert_eq!(first["batch"]["provider"], agb);
    assert_eq!(first["batch"]["batch_id"], "(a new random id at upload)");
}

#[test]
fn settings_come_from_kwm_toml_and_flags_override() {
    let (dir, export) = setup();
    let d = dir.path();
    std::fs::write(
        d.join("kwm.toml"),
        "keys = \"keys\"\nregional_key = \"regional.key\"\nbatch_size = 7\n",
    )
    .expect("write");
    let run = |extra: &[&str]| {
        let mut args = vec![
            "upload",
            export.to_str().expect("utf-8 path"),
            "--dry-run",
            "--json",
        ];
        args.extend_from_slice(extra);
        let o = kwm(&args, d);
        assert!(o.status.success(), "{}", text(&o.stderr));
        let summary: serde_json::Value =
            serde_json::from_str(text(&o.stderr).lines().last().expect("summary")).expect("json");
        summary["batches"].as_u64().expect("batches")
    };
    assert_eq!(run(&[]), 9, "60 rows in batches of 7 from kwm.toml");
    assert_eq!(run(&["--batch-size", "30"]), 2, "the flag wins");

    std::fs::write(d.join("kwm.toml"), "keyz = \"keys\"\n").expect("write");
    let o = kwm(
        &["upload", export.to_str().expect("utf-8 path"), "--dry-run"],
        d,
    );
    assert_eq!(o.status.code(), Some(2));
    assert!(text(&o.stderr).contains("keyz"), "{}", text(&o.stderr));
}

#[test]
fn missing_settings_are_usage_errors() {
    let (dir, export) = setup();
    let d = dir.path();
    let o = kwm(&["upload", export.to_str().expect("utf-8 path")], d);
    assert_eq!(o.status.code(), Some(2));
    assert!(text(&o.stderr).contains("--keys"), "{}", text(&o.stderr));
    let o = kwm(
        &[
            "upload",
            export.to_str().expect("utf-8 path"),
            "--keys",
            "keys",
            "--regional-key",
            "regional.key",
        ],
        d,
    );
    assert_eq!(o.status.code(), Some(2));
    assert!(text(&o.stderr).contains("--service"), "{}", text(&o.stderr));
    let o = kwm(
        &[
            "upload",
            "nope.csv",
            "--keys",
            "nokeys",
            "--regional-key",
            "regional.key",
            "--dry-run",
        ],
        d,
    );
    assert_eq!(o.status.code(), Some(2));
    assert!(
        text(&o.stderr).contains("kwm keygen"),
        "{}",
        text(&o.stderr)
    );
    assert_eq!(
        kwm(&["upload"], d).status.code(),
        Some(2),
        "clap usage error"
    );
}

/// A synthetic export of `trajectories` rows, its path, in a working directory with keys.
fn setup_with(trajectories: u64) -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().expect("tempdir");
    let d = dir.path();
    assert!(kwm(&["keygen", "--out", "keys"], d).status.success());
    assert!(kwm(&["keygen", "--regional", "--out", "regional.key"], d)
        .status
        .success());
    let n = trajectories.to_string();
    let out = kwm(
        &[
            "synth",
            "--out-dir",
            "synth",
            "--providers",
            "1",
            "--trajectories",
            &n,
            "--seed",
            "4",
        ],
        d,
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    let agb = std::fs::read_to_string(d.join("synth/providers.txt")).expect("providers.txt");
    let export = d.join("synth").join(format!("{}.csv", agb.trim()));
    (dir, export)
}

fn dry_run(d: &Path, file: &Path) -> Output {
    kwm(
        &[
            "upload",
            file.to_str().expect("utf-8 path"),
            "--keys",
            "keys",
            "--regional-key",
            "regional.key",
            "--dry-run",
        ],
        d,
    )
}

/// The export with every field rewritten by `f(column name, value)`, written with `delimiter`
/// between the header's fields and `row_delimiter` between each row's.
fn rewrite(
    export: &Path,
    to: &Path,
    delimiter: &str,
    row_delimiter: &str,
    f: impl Fn(&str, &str) -> String,
) -> usize {
    let text = std::fs::read_to_string(export).expect("export");
    let text = text.trim_start_matches('\u{feff}');
    let mut lines = text.lines();
    let first = lines.next().expect("header");
    let src = if first.contains(';') { ';' } else { ',' };
    let header: Vec<&str> = first.split(src).collect();
    let mut out = header.join(delimiter);
    out.push('\n');
    let mut rows = 0;
    for line in lines.filter(|l| !l.is_empty()) {
        let fields: Vec<String> = line.split(src).zip(&header).map(|(v, h)| f(h, v)).collect();
        out.push_str(&fields.join(row_delimiter));
        out.push('\n');
        rows += 1;
    }
    std::fs::write(to, out).expect("written");
    rows
}

#[test]
fn a_tab_separated_export_is_recognised_and_said() {
    let (dir, export) = setup();
    let d = dir.path();
    let tsv = d.join("export.tsv");
    rewrite(&export, &tsv, "\t", "\t", |_, v| v.to_string());
    let out = dry_run(d, &tsv);
    let err = text(&out.stderr);
    assert!(out.status.success(), "{err}");
    assert!(err.contains("tab-separated"), "{err}");
    let records = text(&out.stdout)
        .lines()
        .filter(|l| l.contains("\"client\""))
        .count();
    assert!(records > 0, "the rows were read: {err}");
}

#[test]
fn a_header_and_rows_with_different_delimiters_are_named() {
    let (dir, export) = setup();
    let d = dir.path();
    let mixed = d.join("mixed.csv");
    let rows = rewrite(&export, &mixed, ",", ";", |_, v| v.to_string());
    let out = dry_run(d, &mixed);
    assert_eq!(out.status.code(), Some(2));
    let err = text(&out.stderr);
    assert!(
        err.contains("this row is separated by semicolons (;) but the header by commas (,)"),
        "{err}"
    );
    // One systematic error: a few rows in full, then one line for it, not one per row.
    assert!(err.lines().count() < 30, "{err}");
    assert!(
        err.contains(&format!("the row as a whole: {rows} rows")),
        "{err}"
    );
}

#[test]
fn a_municipality_without_its_leading_zero_suggests_it_and_920_bad_rows_are_summarised() {
    let (dir, export) = setup_with(920);
    let d = dir.path();
    let excel = d.join("excel.csv");
    // What Excel makes of a column of 0748, 0777, ...: numbers (1674 stays as it was).
    let lost = std::cell::Cell::new(0usize);
    let rows = rewrite(&export, &excel, ",", ",", |h, v| {
        if h == "municipality" {
            let digits = v.trim_start_matches("GM");
            if digits.starts_with('0') {
                lost.set(lost.get() + 1);
            }
            digits.trim_start_matches('0').to_string()
        } else {
            v.to_string()
        }
    });
    let bad = lost.get();
    assert!(rows >= 900 && bad > 100, "{rows} {bad}");
    let out = dry_run(d, &excel);
    assert_eq!(out.status.code(), Some(2));
    let err = text(&out.stderr);
    assert!(
        err.contains("did a spreadsheet drop the leading zero? Write 0"),
        "{err}"
    );
    assert!(
        err.contains("748 has 3 digits") || err.contains("777 has 3 digits"),
        "{err}"
    );
    let lines = err.lines().count();
    assert!(
        lines < 40,
        "a short summary, not a line per row ({lines} lines):\n{err}"
    );
    assert!(
        err.contains(&format!("{bad} of {rows} rows are not valid; per column")),
        "{err}"
    );
    assert!(
        err.contains(&format!("column municipality (col 3): {bad} rows, lines ")),
        "{err}"
    );
}

#[test]
fn a_service_url_without_a_scheme_is_named() {
    let (dir, export) = setup();
    let d = dir.path();
    let out = kwm(&["batches", "--service", "kwm.example", "--token", "t"], d);
    assert_eq!(out.status.code(), Some(2));
    let err = text(&out.stderr);
    assert!(
        err.contains("`kwm.example` has no scheme; write https://kwm.example"),
        "{err}"
    );
    // An upload says so before reading the file.
    let out = kwm(
        &[
            "upload",
            export.to_str().expect("utf-8"),
            "--service",
            "localhost:8080",
            "--token",
            "t",
            "--keys",
            "keys",
            "--regional-key",
            "regional.key",
        ],
        d,
    );
    assert_eq!(out.status.code(), Some(2));
    let err = text(&out.stderr);
    assert!(
        err.contains("`localhost:8080` has no scheme; write https://localhost:8080 (or http://localhost:8080"),
        "{err}"
    );
}

/// Issue 14.2: a key of the wrong kind is refused before anything is read or sent, with a message that
/// names both kinds and what to pass instead; `keygen --regional` says the region makes it once and
/// prints its check value.
#[test]
fn a_key_of_the_wrong_kind_is_refused_by_name() {
    let (dir, export) = setup();
    let d = dir.path();
    let export = export.to_str().expect("utf-8 path");
    let first_line = |p: &str| {
        std::fs::read_to_string(d.join(p))
            .expect("key file")
            .lines()
            .next()
            .unwrap_or_default()
            .to_string()
    };
    assert_eq!(first_line("regional.key"), "kind: regional-key");
    assert_eq!(first_line("keys/trajectory.key"), "kind: trajectory-key");
    assert_eq!(first_line("keys/signing.pub"), "kind: signing-public-key");

    let upload = |keys: &str, regional: &str| {
        kwm(
            &[
                "upload",
                export,
                "--service",
                // Nothing listens here: a request would fail with exit code 1, not 2.
                "http://127.0.0.1:9",
                "--token",
                "t",
                "--keys",
                keys,
                "--regional-key",
                regional,
            ],
            d,
        )
    };
    // trajectory.key given as the regional key.
    let out = upload("keys", "keys/trajectory.key");
    let err = text(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(
        err.contains("is a trajectory-key")
            && err.contains("but a regional-key is needed here")
            && err.contains("get it from the regional team"),
        "{err}"
    );
    // The same, from an older kwm: no kind line, the file renamed.
    let body = std::fs::read_to_string(d.join("keys/trajectory.key")).expect("key");
    let old = body.lines().nth(1).expect("base64 line");
    std::fs::write(d.join("copied.key"), format!("{old}\n")).expect("write");
    let out = upload("keys", "copied.key");
    let err = text(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(
        err.contains("the same key as") && err.contains("a trajectory-key, not a regional-key"),
        "{err}"
    );
    // signing.pub given as the regional key; the regional key given as the keys directory.
    let out = upload("keys", "keys/signing.pub");
    let err = text(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(err.contains("is a signing-public-key"), "{err}");
    let out = upload("regional.key", "regional.key");
    let err = text(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(
        err.contains("is a regional-key")
            && err.contains("but a trajectory-key is needed here")
            && err.contains("--keys"),
        "{err}"
    );
    // The private signing key (binary DER) given as the regional key.
    let out = upload("keys", "keys/signing.key");
    let err = text(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(err.contains("is a signing-key"), "{err}");

    // An older regional key file without the kind line is still read, with a warning.
    let body = std::fs::read_to_string(d.join("regional.key")).expect("key");
    let old = body.lines().nth(1).expect("base64 line");
    std::fs::write(d.join("old-regional.key"), format!("{old}\n")).expect("write");
    let out = kwm(
        &[
            "upload",
            export,
            "--keys",
            "keys",
            "--regional-key",
            "old-regional.key",
            "--dry-run",
        ],
        d,
    );
    let err = text(&out.stderr);
    assert!(out.status.success(), "{err}");
    assert!(
        err.contains("does not state its kind (written by an older kwm)"),
        "{err}"
    );

    // keygen --regional: once per region, handed to every provider, with its check value.
    let out = kwm(&["keygen", "--regional", "--out", "r2.key"], d);
    let said = text(&out.stdout);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(
        said.contains("ONCE") && said.contains("every provider"),
        "{said}"
    );
    let check = said
        .lines()
        .find_map(|l| l.strip_prefix("check value: "))
        .expect("a check value line");
    assert_eq!(check.len(), 64, "{said}");
    assert!(check.chars().all(|c| c.is_ascii_hexdigit()), "{said}");
    let key = std::fs::read_to_string(d.join("r2.key")).expect("key");
    assert!(
        !said.contains(key.lines().nth(1).expect("b64")),
        "never the key"
    );
}
