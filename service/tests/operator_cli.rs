//! The operator's commands as a new operator runs them (`kwm-service admin ...`, `demo`), with what
//! they refuse and what they record; and what a provider sees of the operator.

mod common;

use common::{
    init, kwm_service, kwm_service_cmd, kwm_service_in, ok, printed_token, provider_keys, serve,
    text,
};

fn add_provider(data: &std::path::Path, agb: &str, key: &std::path::Path) -> std::process::Output {
    kwm_service_cmd(data)
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
        .arg(key)
        .output()
        .expect("runs")
}

#[test]
fn token_issue_refuses_a_municipality_outside_the_region_and_an_unregistered_provider() {
    let dir = tempfile::tempdir().expect("temp dir");
    let data = dir.path();
    init(data);
    let issue = |role: &str, scope: &str| {
        kwm_service(
            data,
            &["admin", "token", "issue", "--role", role, "--scope", scope],
        )
    };
    let out = issue("municipality", "GM9999");
    assert!(!out.status.success(), "GM9999 is no municipality of WBW");
    let err = text(&out.stderr);
    assert!(
        err.contains("GM9999") && err.contains("not a municipality of region wbw"),
        "{err}"
    );
    assert!(
        err.contains("GM0748"),
        "names the region's municipalities: {err}"
    );

    let out = issue("provider", "12345678");
    assert!(!out.status.success(), "12345678 is not registered");
    let err = text(&out.stderr);
    assert!(
        err.contains("no provider with this AGB code is registered")
            && err.contains("admin provider add"),
        "{err}"
    );
    // Nothing was issued.
    let list = ok(kwm_service(data, &["admin", "token", "list"]));
    assert_eq!(list.trim(), "no tokens", "{list}");

    ok(issue("municipality", "GM0748"));
    let public = provider_keys(&data.join("keys-p"));
    ok(add_provider(data, "12345678", &public));
    ok(issue("provider", "12345678"));
}

#[test]
fn provider_add_says_what_it_got_when_given_a_private_key() {
    let dir = tempfile::tempdir().expect("temp dir");
    let data = dir.path();
    init(data);
    let public = provider_keys(&data.join("keys"));
    for secret in ["signing.key", "trajectory.key"] {
        let out = add_provider(data, "12345678", &data.join("keys").join(secret));
        assert!(!out.status.success(), "{secret} refused");
        let err = text(&out.stderr);
        assert!(!err.contains("UTF-8"), "{err}");
        assert!(
            err.contains("private key") && err.contains("signing.pub"),
            "{secret}: {err}"
        );
    }
    // The signing key under another name: its content gives it away.
    std::fs::copy(data.join("keys/signing.key"), data.join("provider.der")).expect("copied");
    let out = add_provider(data, "12345678", &data.join("provider.der"));
    let err = text(&out.stderr);
    assert!(!out.status.success());
    assert!(
        err.contains("binary DER data")
            && err.contains("private key")
            && err.contains("signing.pub"),
        "{err}"
    );
    // A key file that states another kind, under another name.
    std::fs::copy(data.join("keys/trajectory.key"), data.join("t.txt")).expect("copied");
    let out = add_provider(data, "12345678", &data.join("t.txt"));
    let err = text(&out.stderr);
    assert!(!out.status.success());
    assert!(
        err.contains("of kind \"trajectory-key\", not signing-public-key")
            && err.contains("signing.pub"),
        "{err}"
    );
    // Some other text file.
    std::fs::write(data.join("notes.txt"), "hello\n").expect("written");
    let out = add_provider(data, "12345678", &data.join("notes.txt"));
    let err = text(&out.stderr);
    assert!(
        err.contains("not base64") && err.contains("signing.pub"),
        "{err}"
    );
    assert!(ok(kwm_service(data, &["admin", "provider", "list"])).is_empty());

    ok(add_provider(data, "12345678", &public));
}

#[test]
fn one_signing_key_registers_one_provider_and_set_key_replaces_it_audited() {
    let dir = tempfile::tempdir().expect("temp dir");
    let data = dir.path();
    init(data);
    let first = provider_keys(&data.join("k1"));
    let second = provider_keys(&data.join("k2"));
    ok(add_provider(data, "12345678", &first));
    let out = add_provider(data, "87654321", &first);
    assert!(
        !out.status.success(),
        "the same public key for a second AGB code"
    );
    let err = text(&out.stderr);
    assert!(
        err.contains("already registered for provider 12345678"),
        "{err}"
    );
    let list = ok(kwm_service(data, &["admin", "provider", "list"]));
    assert_eq!(list.lines().count(), 1, "{list}");
    ok(add_provider(data, "87654321", &second));

    // Replacing the key: not with another provider's, not for an unregistered provider.
    let set_key = |agb: &str, key: &std::path::Path| {
        kwm_service_cmd(data)
            .args([
                "admin",
                "provider",
                "set-key",
                "--agb",
                agb,
                "--signing-key",
            ])
            .arg(key)
            .output()
            .expect("runs")
    };
    let out = set_key("12345678", &second);
    assert!(!out.status.success());
    assert!(
        text(&out.stderr).contains("already registered for provider 87654321"),
        "{}",
        text(&out.stderr)
    );
    let out = set_key("11111111", &data.join("k2/signing.pub"));
    assert!(!out.status.success());
    assert!(text(&out.stderr).contains("not registered"));
    let out = set_key("12345678", &data.join("k1/signing.key"));
    assert!(text(&out.stderr).contains("private key"));

    let third = provider_keys(&data.join("k3"));
    let said = ok(set_key("12345678", &third));
    assert!(
        said.contains("Replaced the signing key of provider 12345678"),
        "{said}"
    );
    let audit = ok(kwm_service(data, &["admin", "audit", "list"]));
    let changed: Vec<&str> = audit
        .lines()
        .filter(|l| l.contains("provider-key-changed"))
        .collect();
    assert_eq!(changed.len(), 1, "{audit}");
    assert!(
        changed[0].contains("cli alice") && changed[0].contains("12345678"),
        "{audit}"
    );
    let verified = ok(kwm_service(data, &["admin", "audit", "verify"]));
    assert!(verified.contains("audit chain intact"), "{verified}");
    // The first key is free again.
    ok(add_provider(data, "22222222", &first));
}

#[test]
fn keys_list_shows_the_dates_of_each_key() {
    let dir = tempfile::tempdir().expect("temp dir");
    let data = dir.path();
    init(data);
    ok(kwm_service(
        data,
        &["admin", "keys", "rotate", "--activate-after", "3600"],
    ));
    let list = ok(kwm_service(data, &["admin", "keys", "list"]));
    let lines: Vec<&str> = list.lines().collect();
    assert_eq!(lines.len(), 3, "a header and two keys: {list}");
    for h in ["CREATED (UTC)", "ACTIVATED (UTC)", "RETIRED (UTC)"] {
        assert!(lines[0].contains(h), "{list}");
    }
    let year = time::OffsetDateTime::now_utc().year().to_string();
    let active = lines
        .iter()
        .find(|l| l.contains("active"))
        .expect("an active key");
    assert_eq!(
        active.matches(&year).count(),
        2,
        "created and activated: {list}"
    );
    let pending = lines
        .iter()
        .find(|l| l.contains("pending"))
        .expect("the new key");
    assert_eq!(pending.matches(&year).count(), 1, "created only: {list}");
}

#[test]
fn logs_written_to_a_file_carry_no_colour_codes() {
    let dir = tempfile::tempdir().expect("temp dir");
    let data = dir.path();
    init(data);
    let log = std::fs::File::create(data.join("admin.log")).expect("log file");
    let status = kwm_service_cmd(data)
        .args(["admin", "token", "list"])
        .env("RUST_LOG", "debug")
        .env_remove("NO_COLOR")
        .stdout(std::process::Stdio::null())
        .stderr(log)
        .status()
        .expect("runs");
    assert!(status.success());
    let logged = std::fs::read_to_string(data.join("admin.log")).expect("log");
    assert!(logged.lines().count() > 1, "something was logged: {logged}");
    assert!(
        !logged.contains('\u{1b}'),
        "no escape codes in a file:\n{logged}"
    );
}

#[test]
fn the_audit_actor_is_the_os_user_who_ran_the_command() {
    let dir = tempfile::tempdir().expect("temp dir");
    let data = dir.path();
    init(data);
    ok(kwm_service(
        data,
        &["admin", "token", "issue", "--role", "region"],
    ));
    // Without USER and LOGNAME (a service manager, a container): the user of the process's uid.
    let out = kwm_service_cmd(data)
        .args(["admin", "token", "issue", "--role", "region"])
        .env_remove("USER")
        .env_remove("LOGNAME")
        .env_remove("USERNAME")
        .output()
        .expect("runs");
    ok(out);
    let audit = ok(kwm_service(data, &["admin", "audit", "list"]));
    let actors: Vec<String> = audit
        .lines()
        .skip(1)
        .map(|l| {
            l.split_whitespace()
                .skip(5)
                .take(2)
                .collect::<Vec<_>>()
                .join(" ")
        })
        .collect();
    let me = std::process::Command::new("id")
        .arg("-un")
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| text(&o.stdout).trim().to_string());
    assert_eq!(actors[0], "cli alice", "{audit}");
    assert_ne!(actors[1], "cli unknown", "{audit}");
    if let Some(me) = me {
        assert_eq!(actors[1], format!("cli {me}"), "{audit}");
    }
}

#[test]
fn providers_see_the_operator_by_role_and_the_operator_sees_the_login() {
    let dir = tempfile::tempdir().expect("temp dir");
    let data = dir.path();
    init(data);
    let public = provider_keys(&data.join("keys"));
    let token = printed_token(&ok(add_provider(data, "12345678", &public)));
    ok(kwm_service(
        data,
        &[
            "admin", "token", "issue", "--role", "provider", "--scope", "12345678",
        ],
    ));
    let service = serve(data);
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let client =
        kwm_sdk::Client::new(&service.base_url, Some(kwm_sdk::Token::new(token))).expect("client");
    let page = rt
        .block_on(client.audit(0, 100))
        .expect("the provider's audit view");
    let actions: Vec<&str> = page.entries.iter().map(|e| e.action.as_str()).collect();
    assert_eq!(
        actions,
        ["provider-registered", "token-issued", "token-issued"],
        "{page:?}"
    );
    for e in &page.entries {
        assert_eq!(
            (e.actor_role.as_str(), e.actor_id.as_str()),
            ("admin", "operator")
        );
    }
    let body = serde_json::to_string(&page).expect("json");
    assert!(!body.contains("alice"), "{body}");
    // The operator's own view keeps the login.
    let audit = ok(kwm_service(data, &["admin", "audit", "list"]));
    assert_eq!(audit.matches("cli alice").count(), 3, "{audit}");
}

#[test]
fn the_demo_leaves_its_data_where_serve_and_admin_look_and_says_how_to_go_on() {
    let dir = tempfile::tempdir().expect("temp dir");
    let demo = dir.path().join("demo");
    let out = kwm_service_in(dir.path())
        .arg("--data-dir")
        .arg(&demo)
        .args([
            "demo",
            "--providers",
            "2",
            "--trajectories",
            "400",
            "--listen",
            "127.0.0.1:0",
            "--exit",
        ])
        .output()
        .expect("the demo runs");
    let said = ok(out);
    let abs = std::fs::canonicalize(&demo).expect("the demo dir");
    let serve_line = format!("kwm-service --data-dir {} serve", abs.display());
    let issue_line = format!(
        "kwm-service --data-dir {} admin token issue --role municipality --scope GM0748",
        abs.display()
    );
    assert!(said.contains(&serve_line), "{said}");
    assert!(said.contains(&issue_line), "{said}");
    assert!(!said.contains("/service"), "no hidden subdirectory: {said}");

    // The printed commands, run as printed (from another directory), find the demo's data.
    let elsewhere = tempfile::tempdir().expect("another dir");
    let run = |line: &str| {
        let args: Vec<&str> = line.split_whitespace().skip(1).collect();
        kwm_service_in(elsewhere.path())
            .args(&args)
            .output()
            .expect("runs")
    };
    let providers = ok(run(&format!(
        "kwm-service --data-dir {} admin provider list",
        abs.display()
    )));
    assert_eq!(
        providers.lines().count(),
        2,
        "the demo's providers: {providers}"
    );
    let issued = ok(run(&issue_line));
    let token = printed_token(&issued);
    let tokens = ok(kwm_service(&abs, &["admin", "token", "list"]));
    assert!(
        tokens.lines().count() > 3,
        "the demo's tokens and the new one: {tokens}"
    );

    // `serve` on it answers with the demo's published round.
    let service = serve(&abs);
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let round_status = || {
        rt.block_on(reqwest_get(
            &format!("{}/v1/releases?scope=GM0748&period=2025", service.base_url),
            &token,
        ))
    };
    assert_eq!(round_status(), 200);

    // A second demo on the directory a service runs on is refused: it would remove the database
    // under the running service. Nothing was touched: the service still answers from it.
    let again = kwm_service_in(dir.path())
        .arg("--data-dir")
        .arg(&demo)
        .args(["demo", "--listen", "127.0.0.1:0", "--exit"])
        .output()
        .expect("the second demo runs");
    assert!(!again.status.success(), "{}", text(&again.stdout));
    let err = text(&again.stderr);
    assert!(
        err.contains("a service is running on") && err.contains("--data-dir"),
        "{err}"
    );
    let still = ok(kwm_service(&abs, &["admin", "provider", "list"]));
    assert_eq!(still, providers, "the demo's data is untouched");
    assert_eq!(round_status(), 200);

    // The help says what the option is.
    let help = ok(kwm_service(dir.path(), &["demo", "--help"]));
    assert!(help.contains("--data-dir"), "{help}");
    assert!(
        help.contains("serve") && help.contains("demo-data"),
        "the demo's help names its data dir and what uses it: {help}"
    );
}

/// The status of a GET with a bearer token (the SDK's client knows no releases).
async fn reqwest_get(url: &str, token: &str) -> u16 {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let rest = url.strip_prefix("http://").expect("http");
    let (host, path) = rest.split_at(rest.find('/').expect("a path"));
    let mut s = tokio::net::TcpStream::connect(host)
        .await
        .expect("connects");
    let req = format!(
        "GET {path} HTTP/1.1\r\nHost: {host}\r\nAuthorization: Bearer {token}\r\nConnection: close\r\n\r\n"
    );
    s.write_all(req.as_bytes()).await.expect("sent");
    let mut buf = Vec::new();
    s.read_to_end(&mut buf).await.expect("read");
    let head = String::from_utf8_lossy(&buf);
    head.split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .expect("a status")
}

#[test]
fn index_verify_asks_a_running_instance_and_says_what_it_found() {
    let dir = tempfile::tempdir().expect("temp dir");
    let data = dir.path();
    init(data);
    let public = provider_keys(&data.join("keys"));
    ok(add_provider(data, "12345678", &public));
    let admin = printed_token(&ok(kwm_service(
        data,
        &["admin", "token", "issue", "--role", "admin"],
    )));
    let muni = printed_token(&ok(kwm_service(
        data,
        &[
            "admin",
            "token",
            "issue",
            "--role",
            "municipality",
            "--scope",
            "GM0748",
        ],
    )));
    let service = serve(data);
    let url = service.base_url.as_str();

    let said = ok(kwm_service(
        data,
        &["admin", "index", "verify", "--url", url, "--token", &admin],
    ));
    assert!(
        said.contains("release index consistent with the store at change mark"),
        "{said}"
    );
    // The token from the environment, as the other commands take it.
    let out = kwm_service_cmd(data)
        .args(["admin", "index", "verify", "--url", url])
        .env("KWM_TOKEN", &admin)
        .output()
        .expect("runs");
    assert!(out.status.success(), "{}", text(&out.stderr));

    // A municipality's token: refused, and told why.
    let out = kwm_service(
        data,
        &["admin", "index", "verify", "--url", url, "--token", &muni],
    );
    assert!(!out.status.success());
    assert!(
        text(&out.stderr).contains("not an admin's"),
        "{}",
        text(&out.stderr)
    );
    // An address without its scheme.
    let bare = url.trim_start_matches("http://");
    let out = kwm_service(
        data,
        &["admin", "index", "verify", "--url", bare, "--token", &admin],
    );
    assert!(!out.status.success());
    assert!(
        text(&out.stderr).contains("with its scheme"),
        "{}",
        text(&out.stderr)
    );
}

/// Issue 14.2: the operator registers the check value of the region's key once (never the key), sees
/// it with `show`, cannot change it by accident (`--replace`), and both changes are in the audit chain.
#[test]
fn region_key_check_set_and_show() {
    let dir = tempfile::tempdir().expect("temp dir");
    let data = dir.path();
    init(data);
    let shown = ok(kwm_service(data, &["admin", "region", "key-check", "show"]));
    assert!(
        shown.contains("no check value registered") && shown.contains("key-check set"),
        "{shown}"
    );

    let first = kwm_sdk::RegionalKey::generate().expect("key").check_value();
    let said = ok(kwm_service(
        data,
        &["admin", "region", "key-check", "set", &first],
    ));
    assert!(said.contains(&first), "{said}");
    let shown = ok(kwm_service(data, &["admin", "region", "key-check", "show"]));
    assert!(shown.starts_with(&first), "{shown}");
    // The same value again changes nothing.
    let again = ok(kwm_service(
        data,
        &["admin", "region", "key-check", "set", &first],
    ));
    assert!(again.contains("nothing changed"), "{again}");

    // Another value is refused without --replace, and the old one stays.
    let second = kwm_sdk::RegionalKey::generate().expect("key").check_value();
    let out = kwm_service(data, &["admin", "region", "key-check", "set", &second]);
    let err = text(&out.stderr);
    assert!(!out.status.success());
    assert!(err.contains("--replace") && err.contains(&first), "{err}");
    let shown = ok(kwm_service(data, &["admin", "region", "key-check", "show"]));
    assert!(shown.starts_with(&first), "{shown}");
    ok(kwm_service(
        data,
        &["admin", "region", "key-check", "set", &second, "--replace"],
    ));
    let shown = ok(kwm_service(data, &["admin", "region", "key-check", "show"]));
    assert!(shown.starts_with(&second), "{shown}");

    // Not a check value (e.g. the key file's base64): refused, saying what is needed.
    let out = kwm_service(
        data,
        &[
            "admin",
            "region",
            "key-check",
            "set",
            "UlJSUlJSUlJSUlJSUlJSUlJSUlJSUlJSUlJSUlJSUlI=",
        ],
    );
    let err = text(&out.stderr);
    assert!(!out.status.success());
    assert!(
        err.contains("64 hex digits") && err.contains("never pass the key"),
        "{err}"
    );

    let audit = ok(kwm_service(
        data,
        &["admin", "audit", "list", "--after", "0", "--limit", "100"],
    ));
    assert_eq!(
        audit.matches("regional-key-check-set").count(),
        2,
        "{audit}"
    );
}
