//! The `kwm-service admin` audit and token commands as an operator runs them: the real binary on a
//! SQLite data dir, with the database tampered with in between.

use std::path::Path;

use base64::Engine;
use std::process::{Command, Output};

fn kwm_service(data_dir: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_kwm-service"))
        .arg("--data-dir")
        .arg(data_dir)
        .args(args)
        // No kwm-service.toml of the working directory, no KWM__ settings of the caller.
        .current_dir(data_dir)
        .env_remove("KWM_CONFIG")
        .env("RUST_LOG", "warn")
        .output()
        .expect("the binary runs")
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// `admin provider add` of provider 12345678 "Voorbeeld" with `signing.pub` of the data dir.
fn add_voorbeeld(data: &Path) {
    let out = kwm_service(
        data,
        &[
            "admin",
            "provider",
            "add",
            "--agb",
            "12345678",
            "--name",
            "Voorbeeld",
            "--signing-key",
            "signing.pub",
        ],
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
}

#[test]
fn verify_passes_an_untouched_chain_and_names_a_changed_entry() {
    let dir = tempfile::tempdir().expect("temp dir");
    let data = dir.path();
    assert!(kwm_service(data, &["admin", "init"]).status.success());
    for scope in ["GM0748", "GM0777", "GM1709"] {
        let out = kwm_service(
            data,
            &[
                "admin",
                "token",
                "issue",
                "--role",
                "municipality",
                "--scope",
                scope,
            ],
        );
        assert!(out.status.success(), "{}", text(&out.stderr));
    }
    let out = kwm_service(data, &["admin", "audit", "verify"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(
        text(&out.stdout).contains("audit chain intact: 3 entries"),
        "{}",
        text(&out.stdout)
    );

    let out = kwm_service(data, &["admin", "token", "revoke", "--id", "2"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let out = kwm_service(data, &["admin", "token", "list"]);
    let list = text(&out.stdout);
    assert!(out.status.success());
    assert_eq!(list.lines().count(), 4, "{list}");
    assert!(!list.contains("kwm_"), "never a token: {list}");
    let listed = kwm_service(data, &["admin", "audit", "list"]);
    let entries = text(&listed.stdout);
    assert!(entries.contains("token-revoked"), "{entries}");

    // An intruder with access to the database file changes one entry.
    let db = format!("sqlite://{}", data.join("kwm.sqlite3").display());
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    rt.block_on(async {
        let pool = sqlx::SqlitePool::connect(&db).await.expect("db");
        sqlx::query("UPDATE audit_log SET actor_id = 'someone else' WHERE seq = 2")
            .execute(&pool)
            .await
            .expect("tampered");
        pool.close().await;
    });
    let out = kwm_service(data, &["admin", "audit", "verify"]);
    assert!(!out.status.success());
    let err = text(&out.stderr);
    assert!(err.contains("audit chain broken: entry 2"), "{err}");
}

#[test]
fn registration_and_key_rotation_are_recorded() {
    let dir = tempfile::tempdir().expect("temp dir");
    let data = dir.path();
    assert!(kwm_service(data, &["admin", "init"]).status.success());
    // Any 32 bytes stand in for the provider's Ed25519 public key here.
    let public = base64::engine::general_purpose::STANDARD.encode([7u8; 32]);
    std::fs::write(data.join("signing.pub"), public).expect("written");
    add_voorbeeld(data);
    let out = kwm_service(data, &["admin", "keys", "rotate"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let out = kwm_service(data, &["admin", "audit", "list"]);
    let list = text(&out.stdout);
    let actions: Vec<&str> = list
        .lines()
        .skip(1)
        .map(|l| l.split_whitespace().nth(3).unwrap_or_default())
        .collect();
    assert_eq!(
        actions,
        ["provider-registered", "token-issued", "key-rotated"],
        "{list}"
    );
    assert!(
        list.lines().nth(1).is_some_and(|l| l.contains("12345678")),
        "{list}"
    );
    let out = kwm_service(data, &["admin", "audit", "verify"]);
    assert!(
        text(&out.stdout).contains("audit chain intact: 3 entries"),
        "{}",
        text(&out.stderr)
    );
}

/// Runs `sql` on the data dir's database, as someone with access to the file would.
fn on_database(data: &Path, sql: &str) {
    let db = format!("sqlite://{}", data.join("kwm.sqlite3").display());
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    rt.block_on(async {
        let pool = sqlx::SqlitePool::connect(&db).await.expect("db");
        sqlx::query(sql).execute(&pool).await.expect("executed");
        pool.close().await;
    });
}

/// What the operator's listings say, to compare before and after.
fn state_of(data: &Path) -> Vec<String> {
    [
        &["admin", "provider", "list"][..],
        &["admin", "token", "list"][..],
        &["admin", "keys", "list"][..],
        &["admin", "region", "key-check", "show"][..],
    ]
    .iter()
    .map(|args| text(&kwm_service(data, args).stdout))
    .collect()
}

/// Every operator command that changes state writes its audit entry in its own transaction: when the
/// entry cannot be written the command fails, says nothing was changed, and nothing was.
#[test]
fn operator_commands_change_nothing_without_their_audit_entry() {
    let dir = tempfile::tempdir().expect("temp dir");
    let data = dir.path();
    assert!(kwm_service(data, &["admin", "init"]).status.success());
    for (file, byte) in [("signing.pub", 7u8), ("other.pub", 9u8)] {
        let public = base64::engine::general_purpose::STANDARD.encode([byte; 32]);
        std::fs::write(data.join(file), public).expect("written");
    }
    add_voorbeeld(data);
    let check = "ab".repeat(32);
    let set = kwm_service(data, &["admin", "region", "key-check", "set", &check]);
    assert!(set.status.success(), "{}", text(&set.stderr));
    let before = state_of(data);
    let chain = text(&kwm_service(data, &["admin", "audit", "list"]).stdout);

    on_database(
        data,
        "CREATE TRIGGER no_audit BEFORE INSERT ON audit_log \
         BEGIN SELECT RAISE(ABORT, 'audit writes disabled by the test'); END",
    );
    let other_check = "cd".repeat(32);
    for args in [
        &[
            "admin",
            "provider",
            "add",
            "--agb",
            "87654321",
            "--name",
            "Ander",
            "--signing-key",
            "other.pub",
        ][..],
        &[
            "admin",
            "provider",
            "set-key",
            "--agb",
            "12345678",
            "--signing-key",
            "other.pub",
        ][..],
        &["admin", "token", "issue", "--role", "region"][..],
        &["admin", "token", "revoke", "--id", "1"][..],
        &["admin", "keys", "rotate"][..],
        &[
            "admin",
            "region",
            "key-check",
            "set",
            &other_check,
            "--replace",
        ][..],
    ] {
        let out = kwm_service(data, args);
        let err = text(&out.stderr);
        assert!(
            !out.status.success(),
            "{args:?} should fail: {}",
            text(&out.stdout)
        );
        assert!(
            err.contains("audit entry could not be written") && err.contains("nothing was changed"),
            "{args:?}: {err}"
        );
        assert!(
            !text(&out.stdout).contains("kwm_"),
            "no token shown: {args:?}"
        );
        assert_eq!(state_of(data), before, "{args:?} changed something");
    }

    on_database(data, "DROP TRIGGER no_audit");
    assert_eq!(
        text(&kwm_service(data, &["admin", "audit", "list"]).stdout),
        chain
    );
    let out = kwm_service(data, &["admin", "audit", "verify"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
}
