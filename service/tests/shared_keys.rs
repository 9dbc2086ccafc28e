//! The service's keys as an operator meets them: one key set per database, shared by every instance
//! whatever its data dir; refused where the keys at hand are not the database's; admin commands that
//! refuse a directory or database never initialised. The real `kwm-service` binary, the real SDK,
//! SQLite and PostgreSQL.

mod common;

use std::path::Path;
use std::process::{Command, Output};

use common::{
    init, kwm_service, kwm_service_cmd, ok, printed_token, provider_keys, serve_with, text,
    wait_until, TestPostgres,
};

/// A master key for the tests' deployment (32 bytes, hex).
const MASTER: &str = "5f3c0e1d2a4b6c8d9e0f1a2b3c4d5e6f708192a3b4c5d6e7f8091a2b3c4d5e6f";

/// `kwm-service --data-dir DIR --database-url URL ...` with the deployment's master key, and a key
/// reload timer long enough that only SIGHUP reloads within a test.
fn on_db(data_dir: &Path, url: &str, master: Option<&str>) -> Command {
    let mut cmd = kwm_service_cmd(data_dir);
    cmd.arg("--database-url")
        .arg(url)
        .env("KWM__KEY_RELOAD_SECS", "3600");
    if let Some(m) = master {
        cmd.env("KWM_MASTER_KEY", m);
    }
    cmd
}

fn run(mut cmd: Command, args: &[&str]) -> Output {
    cmd.args(args).output().expect("kwm-service runs")
}

fn refused(out: Output) -> String {
    assert!(
        !out.status.success(),
        "should have been refused:\n{}",
        text(&out.stdout)
    );
    text(&out.stderr)
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime")
}

fn active_key(rt: &tokio::runtime::Runtime, base_url: &str) -> String {
    let client = kwm_sdk::Client::new(base_url, None).expect("client");
    rt.block_on(client.keys())
        .expect("GET /v1/keys")
        .active_key_id
        .to_string()
}

fn hang_up(pid: u32) {
    let status = Command::new("kill")
        .args(["-HUP", &pid.to_string()])
        .status()
        .expect("kill runs");
    assert!(status.success());
}

#[test]
fn admin_commands_refuse_a_directory_never_initialised_and_init_sets_one_up() {
    let dir = tempfile::tempdir().expect("temp dir");
    let data = dir.path().join("wrong-dir");
    std::fs::create_dir(&data).expect("dir");
    for args in [
        &["admin", "token", "list"][..],
        &["admin", "keys", "rotate"][..],
        &["admin", "keys", "list"][..],
    ] {
        let err = refused(kwm_service(&data, args));
        assert!(
            err.contains("there is no service database here")
                && err.contains("Pass the service's --data-dir (or --database-url)")
                && err.contains("admin init"),
            "{args:?}: {err}"
        );
    }
    // Nothing was created by the refused commands.
    assert_eq!(std::fs::read_dir(&data).expect("dir").count(), 0);

    let said = init(&data);
    assert!(said.contains("Initialised database"), "{said}");
    assert!(
        said.contains("master.key") && said.contains("Back it up"),
        "{said}"
    );
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(data.join("master.key"))
            .expect("the master key file")
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
    }
    let again = init(&data);
    assert!(again.contains("Nothing changed"), "{again}");
    assert_eq!(
        ok(kwm_service(&data, &["admin", "token", "list"])).trim(),
        "no tokens"
    );
    let keys = ok(kwm_service(&data, &["admin", "keys", "list"]));
    assert_eq!(keys.lines().count(), 2, "a header and one key: {keys}");
    // The keys are in the database, not in files of the data dir.
    assert!(!data.join("keys").exists());
    // Without the master key the keys do not open, and the error says what to do.
    std::fs::rename(data.join("master.key"), dir.path().join("master.key.bak")).expect("moved");
    let err = refused(kwm_service(&data, &["admin", "keys", "list"]));
    assert!(
        err.contains("none is at hand") && err.contains("KWM_MASTER_KEY"),
        "{err}"
    );
}

#[test]
fn an_uninitialised_postgres_database_is_refused_by_admin_commands_and_serve() {
    let Some(db) = TestPostgres::create() else {
        return;
    };
    let dir = tempfile::tempdir().expect("temp dir");
    let err = refused(run(
        on_db(dir.path(), &db.url, Some(MASTER)),
        &["admin", "token", "list"],
    ));
    assert!(
        err.contains("never initialised") && err.contains("kwm-service admin init"),
        "{err}"
    );
    let err = refused(run(on_db(dir.path(), &db.url, Some(MASTER)), &["serve"]));
    assert!(err.contains("admin init"), "{err}");
    // Nothing was written: no keys, no master key file.
    assert!(db
        .query_bytes("SELECT master_check FROM key_check")
        .is_empty());
    assert!(!dir.path().join("master.key").exists());
}

#[test]
fn two_instances_with_their_own_data_dirs_share_the_keys_of_their_database() {
    let Some(db) = TestPostgres::create() else {
        return;
    };
    let root = tempfile::tempdir().expect("temp dir");
    let (dir_a, dir_b, dir_c) = (
        root.path().join("a"),
        root.path().join("b"),
        root.path().join("admin"),
    );
    for d in [&dir_a, &dir_b, &dir_c] {
        std::fs::create_dir(d).expect("dir");
    }
    let said = ok(run(
        on_db(&dir_a, &db.url, Some(MASTER)),
        &["admin", "init"],
    ));
    assert!(said.contains("KWM_MASTER_KEY"), "{said}");

    // Two providers of the same children (the same export, the same regional key), registered by
    // the operator from yet another directory.
    let export = root.path().join("export.csv");
    let first_agb = kwm_sdk::synth::write_single_export(
        std::fs::File::create(&export).expect("export"),
        120,
        7,
    )
    .expect("written")
    .to_string();
    let second_agb = if first_agb == "87654321" {
        "12345678"
    } else {
        "87654321"
    }
    .to_string();
    let register = |agb: &str| {
        let keys_dir = root.path().join(format!("provider-{agb}"));
        let public = provider_keys(&keys_dir);
        let mut add = on_db(&dir_c, &db.url, Some(MASTER));
        add.args([
            "admin",
            "provider",
            "add",
            "--agb",
            agb,
            "--name",
            "Voorbeeld",
            "--signing-key",
        ])
        .arg(&public);
        (printed_token(&ok(add.output().expect("runs"))), keys_dir)
    };
    let first = register(&first_agb);
    let second = register(&second_agb);
    let regional = kwm_sdk::RegionalKey::generate().expect("regional key");
    let mut set = on_db(&dir_c, &db.url, Some(MASTER));
    set.args([
        "admin",
        "region",
        "key-check",
        "set",
        &regional.check_value(),
    ]);
    ok(set.output().expect("runs"));

    let a = serve_with(on_db(&dir_a, &db.url, Some(MASTER)));
    let b = serve_with(on_db(&dir_b, &db.url, Some(MASTER)));
    let rt = runtime();
    let first_key = active_key(&rt, &a.base_url);
    assert_eq!(active_key(&rt, &b.base_url), first_key);

    let upload = |base: &str, (token, keys_dir): &(String, std::path::PathBuf)| {
        let mut o = kwm_sdk::UploadOptions::new(
            &export,
            base,
            Some(kwm_sdk::Token::new(token.clone())),
            kwm_sdk::ProviderKeys::load(keys_dir).expect("keys"),
            regional.clone(),
        );
        o.retry = kwm_sdk::RetryPolicy::none();
        rt.block_on(kwm_sdk::upload_file(&o)).expect("uploaded")
    };
    let through_a = upload(&a.base_url, &first);
    let stored: u32 = through_a.receipts.iter().map(|r| r.stored).sum();
    assert_eq!(stored, 120, "{through_a:?}");

    // Admin commands from a directory without the master key are refused, saying what to do.
    let err = refused(run(
        on_db(&dir_c, &db.url, None),
        &["admin", "keys", "list"],
    ));
    assert!(
        err.contains("none is at hand") && err.contains("KWM_MASTER_KEY"),
        "{err}"
    );
    // A rotation from the admin directory reaches both running instances at their reload (SIGHUP).
    let rotated = ok(run(
        on_db(&dir_c, &db.url, Some(MASTER)),
        &[
            "admin",
            "keys",
            "rotate",
            "--activate-after",
            "0",
            "--retire-after",
            "3600",
        ],
    ));
    let new_key = rotated
        .split_whitespace()
        .nth(2)
        .map(|w| w.trim_end_matches(';').to_string())
        .expect("the new key id");
    assert_ne!(new_key, first_key);
    // Not before the reload: no request reads the database for keys.
    assert_eq!(active_key(&rt, &b.base_url), first_key);
    for served in [&a, &b] {
        hang_up(served.pid());
        wait_until("the instance serves the rotated key after SIGHUP", || {
            active_key(&rt, &served.base_url) == new_key
        });
    }

    // The second provider's upload through B, sealed to the new key: B stores the same client
    // pseudonyms for the same children as A did (its own key would have given each child a second
    // pseudonym).
    let through_b = upload(&b.base_url, &second);
    assert!(
        through_b
            .receipts
            .iter()
            .all(|r| r.key_id.as_str() == new_key),
        "{through_b:?}"
    );
    let stored: u32 = through_b.receipts.iter().map(|r| r.stored).sum();
    assert_eq!(stored, 120, "{through_b:?}");
    let clients = |agb: &str| {
        db.query_bytes(&format!(
            "SELECT client FROM trajectories WHERE provider = '{agb}' ORDER BY client"
        ))
    };
    let (of_first, of_second) = (clients(&first_agb), clients(&second_agb));
    assert_eq!(of_first.len(), 120);
    assert_eq!(
        of_first, of_second,
        "the same children, the same stored pseudonyms"
    );
}

#[test]
fn a_start_with_keys_that_are_not_the_databases_is_refused() {
    let Some(db) = TestPostgres::create() else {
        return;
    };
    let root = tempfile::tempdir().expect("temp dir");
    let (dir_a, dir_b) = (root.path().join("a"), root.path().join("b"));
    std::fs::create_dir(&dir_a).expect("dir");
    std::fs::create_dir(&dir_b).expect("dir");
    ok(run(
        on_db(&dir_a, &db.url, Some(MASTER)),
        &["admin", "init"],
    ));

    // Another master key.
    let other = "00".repeat(32);
    let err = refused(run(on_db(&dir_b, &db.url, Some(&other)), &["serve"]));
    assert!(
        err.contains("is not the one the service keys") && err.contains("KWM_MASTER_KEY"),
        "{err}"
    );

    // A data dir of another deployment, with its pseudonymisation key file of an earlier version.
    use base64::Engine;
    let keys = dir_b.join("keys");
    std::fs::create_dir(&keys).expect("dir");
    std::fs::write(
        keys.join("pseudonym.key"),
        base64::engine::general_purpose::STANDARD.encode([3u8; 32]),
    )
    .expect("written");
    let err = refused(run(on_db(&dir_b, &db.url, Some(MASTER)), &["serve"]));
    assert!(
        err.contains("is not the pseudonymisation key of database")
            && err.contains("another deployment"),
        "{err}"
    );
    let err = refused(run(
        on_db(&dir_b, &db.url, Some(MASTER)),
        &["admin", "token", "list"],
    ));
    assert!(err.contains("is not the pseudonymisation key"), "{err}");
    // With the files moved away, the same instance starts on the database's keys.
    std::fs::rename(&keys, root.path().join("old-keys")).expect("moved");
    ok(run(
        on_db(&dir_b, &db.url, Some(MASTER)),
        &["admin", "keys", "list"],
    ));
}

#[test]
fn key_files_of_an_earlier_version_are_imported_on_first_start() {
    use base64::Engine;
    let dir = tempfile::tempdir().expect("temp dir");
    let data = dir.path();
    // What an earlier version left in the data dir: the pseudonymisation key and no HPKE key yet.
    let keys = data.join("keys");
    std::fs::create_dir(&keys).expect("dir");
    std::fs::write(
        keys.join("pseudonym.key"),
        base64::engine::general_purpose::STANDARD.encode([9u8; 32]),
    )
    .expect("written");
    let said = init(data);
    assert!(said.contains("imported the key files"), "{said}");
    // The database now holds the key: the check value of the file's key matches on every start,
    // and another key file in its place is refused.
    ok(kwm_service(data, &["admin", "keys", "list"]));
    std::fs::write(
        keys.join("pseudonym.key"),
        base64::engine::general_purpose::STANDARD.encode([8u8; 32]),
    )
    .expect("written");
    let err = refused(kwm_service(data, &["admin", "keys", "list"]));
    assert!(err.contains("is not the pseudonymisation key"), "{err}");
}
