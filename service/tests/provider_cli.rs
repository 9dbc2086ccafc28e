//! `kwm` as a provider's quality officer runs it against a real `kwm-service serve`, with only the
//! README and the error messages to go on.

mod common;

use std::path::Path;
use std::process::{Command, Output, Stdio};

use common::{kwm, kwm_binary, kwm_service_cmd, ok, printed_token, serve, text};

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
