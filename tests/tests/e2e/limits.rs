//! What one client can take from the service without a proxy in front (slowloris, many connections,
//! many large uploads at once), and what a withdrawal leaves on the SQLite file.

use std::time::Duration;

use kwm_schemas::Role;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::helpers::{spawn_app_configured, synth_exports, upload_providers, Backend};

/// Opens a connection and sends `head` (an incomplete request, typically), returning the stream.
async fn connect_and_send(base_url: &str, head: &[u8]) -> TcpStream {
    let addr = base_url.trim_start_matches("http://");
    let mut s = TcpStream::connect(addr).await.expect("connect");
    s.write_all(head).await.expect("write");
    s.flush().await.expect("flush");
    s
}

/// Reads until the server closes the connection; `None` if it did not within `within`.
async fn closed_within(mut s: TcpStream, within: Duration) -> Option<Vec<u8>> {
    let mut got = Vec::new();
    tokio::time::timeout(within, s.read_to_end(&mut got))
        .await
        .ok()
        .map(|r| {
            r.expect("read");
            got
        })
}

#[tokio::test]
async fn a_connection_that_trickles_its_header_is_closed() {
    let app = spawn_app_configured(Backend::Sqlite, None, |c| c.header_read_timeout_secs = 1)
        .await
        .expect("SQLite");
    // Half a header, then nothing: the service closes the connection instead of waiting for ever.
    let s = connect_and_send(&app.base_url, b"GET /healthz HTTP/1.1\r\nHost: x\r\n").await;
    let got = closed_within(s, Duration::from_secs(10))
        .await
        .expect("the service closed the connection");
    assert!(
        !String::from_utf8_lossy(&got).starts_with("HTTP/1.1 200"),
        "no request was served"
    );
    // A connection that sends nothing at all is closed too.
    let s = connect_and_send(&app.base_url, b"").await;
    assert!(closed_within(s, Duration::from_secs(10)).await.is_some());
    // A whole request is still served.
    let res = reqwest::get(format!("{}/healthz", app.base_url))
        .await
        .expect("served");
    assert_eq!(res.status(), 200);
}

#[tokio::test]
async fn connections_beyond_the_limit_wait_until_one_closes() {
    let app = spawn_app_configured(Backend::Sqlite, None, |c| {
        c.max_connections = 2;
        c.header_read_timeout_secs = 60;
    })
    .await
    .expect("SQLite");
    let held_a = connect_and_send(&app.base_url, b"GET /healthz HTTP/1.1\r\n").await;
    let held_b = connect_and_send(&app.base_url, b"GET /healthz HTTP/1.1\r\n").await;
    let client = reqwest::Client::builder()
        .timeout(Duration::from_millis(1500))
        .build()
        .expect("client");
    let url = format!("{}/healthz", app.base_url);
    assert!(
        client.get(&url).send().await.is_err(),
        "a third connection is not served while two are open"
    );
    drop(held_a);
    let res = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            if let Ok(r) = client.get(&url).send().await {
                return r;
            }
        }
    })
    .await
    .expect("served once a connection closed");
    assert_eq!(res.status(), 200);
    drop(held_b);
}

#[tokio::test]
async fn uploads_beyond_the_ingest_slots_wait_their_turn() {
    let app = spawn_app_configured(Backend::Sqlite, None, |c| c.max_concurrent_ingests = 1)
        .await
        .expect("SQLite");
    let token = app.issue_token(Role::Provider, Some("12345678")).await;
    let post = |body_len: usize| {
        format!(
            "POST /v1/batches HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {token}\r\n\
             Content-Type: application/json\r\nContent-Length: {body_len}\r\nConnection: close\r\n\r\n"
        )
    };
    // The first upload holds the one slot: its body is still coming.
    let mut first = connect_and_send(&app.base_url, format!("{}{{", post(2)).as_bytes()).await;
    let metrics_url = app.metrics_url.clone();
    tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            let text = reqwest::get(&metrics_url)
                .await
                .expect("scrape")
                .text()
                .await
                .expect("text");
            if text.lines().any(|l| l == "kwm_http_requests_in_flight 1") {
                break;
            }
            tokio::task::yield_now().await;
        }
    })
    .await
    .expect("the first upload is in flight");
    // The second, complete, waits for it ...
    let second = connect_and_send(&app.base_url, format!("{}{{}}", post(2)).as_bytes()).await;
    let second = tokio::spawn(async move {
        let answer = closed_within(second, Duration::from_secs(30)).await;
        (answer, std::time::Instant::now())
    });
    // Other requests are served meanwhile.
    let res = reqwest::get(format!("{}/v1/keys", app.base_url))
        .await
        .expect("served");
    assert_eq!(res.status(), 200);
    // The first ends; only then is the second answered (both bodies are not batches: 400).
    let released = std::time::Instant::now();
    first.write_all(b"}").await.expect("rest");
    let first = closed_within(first, Duration::from_secs(10))
        .await
        .expect("first answered");
    assert!(String::from_utf8_lossy(&first).starts_with("HTTP/1.1 4"));
    let (second, answered) = second.await.expect("joined");
    let second = second.expect("second answered");
    assert!(
        answered > released,
        "the second upload was answered while the first held the only slot"
    );
    assert!(
        String::from_utf8_lossy(&second).starts_with("HTTP/1.1 4"),
        "{}",
        String::from_utf8_lossy(&second)
    );
}

#[tokio::test]
async fn a_withdrawal_leaves_no_pseudonym_in_the_sqlite_files() {
    use std::os::unix::fs::PermissionsExt;

    let app = spawn_app_configured(Backend::Sqlite, None, |c| {
        // A data dir the service creates itself.
        c.data_dir = c.data_dir.join("new").join("data");
    })
    .await
    .expect("SQLite");
    let (_dir, out) = synth_exports(1, 60, 7);
    let regional = kwm_tests::regional_key();
    let ps = upload_providers(&app, &out, 0..1, &regional).await;
    let stored = app
        .state
        .store
        .list_trajectories(ps[0].agb)
        .await
        .expect("stored");
    assert!(!stored.is_empty());
    let batches = ps[0].client.list_batches().await.expect("batches");
    for b in &batches.batches {
        ps[0]
            .client
            .withdraw_batch(b.batch_id)
            .await
            .expect("withdrawn");
    }
    assert_eq!(app.stored_rows(Some(ps[0].agb)).await, 0);
    // The maintenance run, a day later: the change feed's pseudonyms erased, the log checkpointed.
    let store = &app.state.store;
    store
        .prune_change_feed(time::OffsetDateTime::now_utc() + time::Duration::days(2))
        .await
        .expect("pruned");
    store.erase_deleted().await.expect("erased");

    let db = app.config.data_dir.join("kwm.sqlite3");
    let mut bytes = std::fs::read(&db).expect("database file");
    if let Ok(wal) = std::fs::read(db.with_extension("sqlite3-wal")) {
        bytes.extend_from_slice(&wal);
    }
    let contains = |needle: &[u8]| bytes.windows(needle.len()).any(|w| w == needle);
    for r in &stored {
        assert!(
            !contains(r.trajectory.as_bytes()),
            "a withdrawn trajectory pseudonym is still in the file"
        );
        assert!(
            !contains(r.client.as_bytes()),
            "a withdrawn client pseudonym is still in the file"
        );
    }

    // Only the service's user may read the data dir and the database.
    let mode =
        |p: &std::path::Path| std::fs::metadata(p).expect("exists").permissions().mode() & 0o777;
    assert_eq!(mode(&app.config.data_dir), 0o700);
    assert_eq!(mode(&db), 0o600);
}
