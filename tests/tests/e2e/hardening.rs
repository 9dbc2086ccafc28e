//! Hardening at the edge of the API: body limits, the request deadline and bare framework errors as
//! problem documents, security headers, the per-token rate limit, and a graceful stop that lets
//! in-flight requests finish.

use std::collections::HashMap;
use std::time::Duration;

use kwm_schemas::problem::{Problem, ProblemType};
use kwm_schemas::region::WBW_TOML;
use kwm_schemas::{RegionConfig, Role};
use kwm_sdk::batch::seal_records;
use kwm_sdk::prepare::{prepare_file, PrepareContext};
use kwm_sdk::Pseudonymiser;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::helpers::{spawn_app, spawn_app_configured, synth_exports, Backend};

fn problem_of(status: u16, content_type: Option<&str>, body: &[u8]) -> Problem {
    assert_eq!(
        content_type,
        Some("application/problem+json"),
        "status {status}: {}",
        String::from_utf8_lossy(body)
    );
    let p: Problem = serde_json::from_slice(body).expect("a problem document");
    assert_eq!(
        p.status, status,
        "the document names the status it came with"
    );
    p
}

async fn problem(res: reqwest::Response) -> (u16, Problem) {
    let status = res.status().as_u16();
    let ct = res
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    let body = res.bytes().await.expect("body");
    (status, problem_of(status, ct.as_deref(), &body))
}

/// A response read off a raw connection.
struct RawResponse {
    status: u16,
    headers: HashMap<String, String>,
    body: Vec<u8>,
}

/// An HTTP/1.1 request written by hand, so that a test can hold its body back: the head (announcing
/// `body_len` bytes) and `first_part` go out now, the rest when the test writes it.
async fn begin_request(
    base_url: &str,
    method: &str,
    path: &str,
    token: &str,
    body_len: usize,
    first_part: &[u8],
) -> TcpStream {
    let addr = base_url.trim_start_matches("http://");
    let mut stream = TcpStream::connect(addr).await.expect("connect");
    let head = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Bearer {token}\r\n\
         Content-Type: application/json\r\nContent-Length: {body_len}\r\nConnection: close\r\n\r\n"
    );
    stream.write_all(head.as_bytes()).await.expect("head");
    stream.write_all(first_part).await.expect("first part");
    stream.flush().await.expect("flush");
    stream
}

/// Reads the whole response; the request said `Connection: close`, so it ends at end of stream.
async fn read_response(mut stream: TcpStream) -> RawResponse {
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw).await.expect("response");
    let split = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .unwrap_or_else(|| panic!("no response head in {:?}", String::from_utf8_lossy(&raw)));
    let head = String::from_utf8_lossy(&raw[..split]).into_owned();
    let mut lines = head.lines();
    let status = lines
        .next()
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|s| s.parse().ok())
        .expect("status line");
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    let mut body = raw[split + 4..].to_vec();
    if head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked")
    {
        body = dechunk(&body);
    }
    RawResponse {
        status,
        headers,
        body,
    }
}

fn dechunk(mut data: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    while let Some(eol) = data.windows(2).position(|w| w == b"\r\n") {
        let size_text = String::from_utf8_lossy(&data[..eol]).into_owned();
        let size = usize::from_str_radix(size_text.trim(), 16).expect("chunk size");
        if size == 0 {
            break;
        }
        out.extend_from_slice(&data[eol + 2..eol + 2 + size]);
        data = &data[eol + 2 + size + 2..];
    }
    out
}

#[tokio::test]
async fn a_body_over_the_limit_is_a_too_large_problem() {
    let region = WBW_TOML.replace("max_batch_bytes = 33554432", "max_batch_bytes = 4096");
    assert_ne!(
        region, WBW_TOML,
        "the region file still sets max_batch_bytes"
    );
    let app = spawn_app_configured(Backend::Sqlite, Some(region), |_| {})
        .await
        .expect("SQLite");
    let token = app.issue_token(Role::Provider, Some("12345678")).await;
    // Valid JSON just over the limit: refused for its size, before anything parses it.
    let body = format!("{{\"padding\": \"{}\"}}", "a".repeat(5000));
    let res = reqwest::Client::new()
        .post(format!("{}/v1/batches", app.base_url))
        .bearer_auth(&token)
        .header("content-type", "application/json")
        .body(body)
        .send()
        .await
        .expect("request");
    let (status, p) = problem(res).await;
    assert_eq!((status, p.kind()), (413, Some(ProblemType::TooLarge)));
}

#[tokio::test]
async fn a_wrong_method_is_a_problem_naming_the_allowed_ones() {
    let app = spawn_app().await;
    let res = reqwest::Client::new()
        .put(format!("{}/v1/keys", app.base_url))
        .send()
        .await
        .expect("request");
    let allow = res
        .headers()
        .get("allow")
        .and_then(|v| v.to_str().ok())
        .map(str::to_ascii_uppercase)
        .expect("an Allow header");
    assert!(allow.contains("GET"), "{allow}");
    let (status, p) = problem(res).await;
    assert_eq!(
        (status, p.kind()),
        (405, Some(ProblemType::MethodNotAllowed))
    );
}

#[tokio::test]
async fn a_request_past_its_deadline_is_a_retryable_unavailable_problem() {
    let app = spawn_app_configured(Backend::Sqlite, None, |c| c.request_timeout_secs = 1)
        .await
        .expect("SQLite");
    let token = app.issue_token(Role::Provider, Some("12345678")).await;
    // The body never arrives in full: the handler waits for it until the deadline stops it.
    let stream = begin_request(&app.base_url, "POST", "/v1/batches", &token, 100, b"{\"he").await;
    let res = read_response(stream).await;
    let p = problem_of(
        res.status,
        res.headers.get("content-type").map(String::as_str),
        &res.body,
    );
    assert_eq!(
        (res.status, p.kind()),
        (503, Some(ProblemType::Unavailable))
    );
    assert!(ProblemType::Unavailable.is_retryable());
    assert_eq!(p.retry_after, Some(5));
    assert_eq!(
        res.headers.get("retry-after").map(String::as_str),
        Some("5")
    );
    app.assert_logs_free_of(&[]);
}

#[tokio::test]
async fn responses_carry_the_security_headers() {
    let app = spawn_app().await;
    let c = reqwest::Client::new();
    for path in ["/v1/keys", "/v1/batches", "/v1/nothing-here"] {
        let res = c
            .get(format!("{}{path}", app.base_url))
            .send()
            .await
            .expect("request");
        let h = res.headers();
        let get = |name: &str| h.get(name).and_then(|v| v.to_str().ok()).unwrap_or("");
        assert_eq!(
            get("content-security-policy"),
            "default-src 'none'; frame-ancestors 'none'",
            "{path}"
        );
        assert_eq!(get("x-frame-options"), "DENY", "{path}");
        assert_eq!(get("referrer-policy"), "no-referrer", "{path}");
        assert_eq!(get("x-content-type-options"), "nosniff", "{path}");
        assert_eq!(get("cache-control"), "no-store", "{path}");
        // Plain HTTP by default (loopback, or a TLS proxy in front): no HSTS unless configured.
        assert!(h.get("strict-transport-security").is_none(), "{path}");
    }

    let behind_tls = spawn_app_configured(Backend::Sqlite, None, |c| {
        c.strict_transport_security = true;
    })
    .await
    .expect("SQLite");
    let res = c
        .get(format!("{}/healthz", behind_tls.base_url))
        .send()
        .await
        .expect("request");
    let hsts = res
        .headers()
        .get("strict-transport-security")
        .and_then(|v| v.to_str().ok())
        .expect("HSTS when configured");
    assert!(hsts.starts_with("max-age=31536000"), "{hsts}");
}

#[tokio::test]
async fn a_token_over_its_rate_is_limited_with_retry_after() {
    let app = spawn_app_configured(Backend::Sqlite, None, |c| {
        c.rate_limit_per_second = 1;
        c.rate_limit_burst = 2;
    })
    .await
    .expect("SQLite");
    let c = reqwest::Client::new();
    let busy = app.issue_token(Role::Municipality, Some("GM0748")).await;
    let me = format!("{}/v1/me", app.base_url);
    // A burst of two, then one request a second: the third of a quick series is refused, unless the
    // machine stalls a whole second between requests, which only delays the refusal.
    let mut answered = Vec::new();
    let limited = loop {
        assert!(answered.len() < 20, "never limited: {answered:?}");
        let res = c.get(&me).bearer_auth(&busy).send().await.expect("request");
        if res.status() == 429 {
            break res;
        }
        answered.push(res.status().as_u16());
    };
    assert!(answered.len() >= 2, "the burst is two: {answered:?}");
    assert!(answered.iter().all(|s| *s == 200), "{answered:?}");
    let retry_after: u64 = limited
        .headers()
        .get("retry-after")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok())
        .expect("a Retry-After header in seconds");
    let (status, p) = problem(limited).await;
    assert_eq!((status, p.kind()), (429, Some(ProblemType::RateLimited)));
    assert!((1..=2).contains(&retry_after), "{retry_after}");
    assert_eq!(p.retry_after, Some(retry_after));

    // The limit is per token: another token is served.
    let other = app.issue_token(Role::Municipality, Some("GM0748")).await;
    let res = c
        .get(&me)
        .bearer_auth(&other)
        .send()
        .await
        .expect("request");
    assert_eq!(res.status(), 200);

    let metrics = reqwest::get(&app.metrics_url)
        .await
        .expect("scrape")
        .text()
        .await
        .expect("text");
    assert!(
        metrics.lines().any(
            |l| l.starts_with("kwm_rejections_total{type=\"rate-limited\"} ") && !l.ends_with(" 0")
        ),
        "the refusal is counted"
    );
    app.assert_logs_free_of(&[]);
}

#[tokio::test]
async fn a_graceful_stop_lets_an_upload_in_flight_finish() {
    let mut app = spawn_app().await;
    let (_dir, out) = synth_exports(1, 40, 5);
    let export = &out.providers[0];
    let p = app.register_provider(export.agb).await;
    let regional = kwm_tests::regional_key();
    let ctx = PrepareContext::new(RegionConfig::wbw(), Pseudonymiser::new(&regional, &p.keys));
    let records = prepare_file(&export.path, &ctx).expect("prepared").records;
    let (_, key) = p.client.active_key().await.expect("keys");
    let sealed = seal_records(
        &records,
        p.agb,
        None,
        &key,
        p.keys.signer(),
        &kwm_tests::regional_key().check_value(),
        time::OffsetDateTime::now_utc(),
    )
    .expect("sealed");
    let body = serde_json::to_vec(&sealed).expect("json");
    let (first, rest) = body.split_at(body.len() / 2);

    // Half the upload is sent; the service counts it in flight once it has the request's head.
    let stream = begin_request(
        &app.base_url,
        "POST",
        "/v1/batches",
        &p.token,
        body.len(),
        first,
    )
    .await;
    let metrics_url = app.metrics_url.clone();
    wait_for(|| {
        let url = metrics_url.clone();
        async move {
            let text = reqwest::get(url)
                .await
                .expect("scrape")
                .text()
                .await
                .expect("text");
            text.lines().any(|l| l == "kwm_http_requests_in_flight 1")
        }
    })
    .await;

    // Stop: the listener closes at once ...
    app.begin_shutdown();
    let addr = app.base_url.trim_start_matches("http://").to_string();
    wait_for(|| {
        let addr = addr.clone();
        async move { TcpStream::connect(addr).await.is_err() }
    })
    .await;

    // ... and the upload in flight still completes and is stored.
    let mut stream = stream;
    stream.write_all(rest).await.expect("rest of the body");
    let res = read_response(stream).await;
    assert_eq!(res.status, 201, "{}", String::from_utf8_lossy(&res.body));
    let receipt: kwm_schemas::api::BatchReceipt =
        serde_json::from_slice(&res.body).expect("a receipt");
    assert_eq!(u64::from(receipt.stored), export.rows);
    app.shutdown().await.expect("the service stops cleanly");
    assert_eq!(app.stored_rows(Some(p.agb)).await, export.rows);
}

/// Waits until `done` holds, letting the service's tasks run; fails after ten seconds.
async fn wait_for<F: std::future::Future<Output = bool>>(mut done: impl FnMut() -> F) {
    tokio::time::timeout(Duration::from_secs(10), async {
        while !done().await {
            tokio::task::yield_now().await;
        }
    })
    .await
    .expect("the condition holds within ten seconds");
}
