//! The client against a scripted stand-in server (not the real service): retries resend the same batch,
//! problem documents become typed errors, and a retired key leads to one reseal to the active key.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use kwm_schemas::api::{BatchReceipt, KeyState, KeysResponse, PublicKeyInfo, TokenInfo};
use kwm_schemas::envelope::{self, Base64Bytes, HpkeSecretKey, SealedBatch};
use kwm_schemas::problem::{Problem, ProblemType, RecordError};
use kwm_schemas::{AgbCode, BatchPayload, Role};
use kwm_sdk::{Client, ClientError, ProviderKeys, RegionalKey, RetryPolicy, Token, UploadOptions};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpListener;

#[derive(Debug, Clone)]
struct Req {
    method: String,
    path: String,
    authorization: Option<String>,
    body: Vec<u8>,
}

struct Reply {
    status: u16,
    content_type: &'static str,
    body: Vec<u8>,
}

fn json<T: serde::Serialize>(status: u16, v: &T) -> Reply {
    Reply {
        status,
        content_type: "application/json",
        body: serde_json::to_vec(v).expect("json"),
    }
}

fn problem(p: &Problem) -> Reply {
    Reply {
        status: p.status,
        content_type: "application/problem+json",
        body: serde_json::to_vec(p).expect("json"),
    }
}

type Handler = Arc<dyn Fn(&Req, &[Req]) -> Reply + Send + Sync>;

/// Serves HTTP/1.1 with keep-alive; `handler` sees the request and every earlier one.
async fn serve(handler: Handler) -> (String, Arc<Mutex<Vec<Req>>>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let log: Arc<Mutex<Vec<Req>>> = Arc::default();
    let log2 = Arc::clone(&log);
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                return;
            };
            let handler = Arc::clone(&handler);
            let log = Arc::clone(&log2);
            tokio::spawn(async move {
                let (r, mut w) = stream.into_split();
                let mut r = BufReader::new(r);
                loop {
                    let mut line = String::new();
                    if r.read_line(&mut line).await.unwrap_or(0) == 0 {
                        return;
                    }
                    let mut parts = line.split_whitespace();
                    let method = parts.next().unwrap_or_default().to_string();
                    let path = parts.next().unwrap_or_default().to_string();
                    let mut len = 0usize;
                    let mut authorization = None;
                    loop {
                        let mut h = String::new();
                        if r.read_line(&mut h).await.unwrap_or(0) == 0 {
                            return;
                        }
                        let h = h.trim_end();
                        if h.is_empty() {
                            break;
                        }
                        let (name, value) = h.split_once(':').unwrap_or((h, ""));
                        if name.eq_ignore_ascii_case("content-length") {
                            len = value.trim().parse().unwrap_or(0);
                        }
                        if name.eq_ignore_ascii_case("authorization") {
                            authorization = Some(value.trim().to_string());
                        }
                    }
                    let mut body = vec![0u8; len];
                    if r.read_exact(&mut body).await.is_err() {
                        return;
                    }
                    let req = Req {
                        method,
                        path,
                        authorization,
                        body,
                    };
                    let reply = {
                        let mut log = log.lock().expect("log");
                        let reply = handler(&req, &log);
                        log.push(req);
                        reply
                    };
                    let head = format!(
                        "HTTP/1.1 {} X\r\ncontent-type: {}\r\ncontent-length: {}\r\n\r\n",
                        reply.status,
                        reply.content_type,
                        reply.body.len()
                    );
                    if w.write_all(head.as_bytes()).await.is_err()
                        || w.write_all(&reply.body).await.is_err()
                    {
                        return;
                    }
                }
            });
        }
    });
    (format!("http://{addr}"), log)
}

fn fast_retries() -> RetryPolicy {
    RetryPolicy {
        max_attempts: 4,
        base_delay: Duration::from_millis(5),
        max_delay: Duration::from_millis(20),
    }
}

fn agb() -> AgbCode {
    "99001234".parse().expect("agb")
}

fn receipt_for(batch: &SealedBatch, replayed: bool) -> BatchReceipt {
    BatchReceipt {
        batch_id: batch.header.batch_id,
        provider: batch.header.provider,
        key_id: batch.header.key_id.clone(),
        record_count: batch.header.record_count,
        stored: batch.header.record_count,
        corrected: 0,
        unchanged: 0,
        received_at: time::OffsetDateTime::UNIX_EPOCH,
        content_digest: String::new(),
        replayed,
    }
}

fn keys_response(active: &HpkeSecretKey, others: &[(&HpkeSecretKey, KeyState)]) -> KeysResponse {
    let info = |k: &HpkeSecretKey, state| PublicKeyInfo {
        key_id: k.public_key().key_id(),
        state,
        public_key: Base64Bytes(k.public_key().to_bytes()),
        created_at: time::OffsetDateTime::UNIX_EPOCH,
        activated_at: None,
        retired_at: None,
    };
    let mut keys = vec![info(active, KeyState::Active)];
    keys.extend(others.iter().map(|(k, s)| info(k, *s)));
    KeysResponse {
        protocol_version: 1,
        suite: "DHKEM(X25519, HKDF-SHA256), HKDF-SHA256, AES-256-GCM".into(),
        active_key_id: active.public_key().key_id(),
        keys,
    }
}

fn sample_batch(sk: &HpkeSecretKey, keys: &ProviderKeys) -> SealedBatch {
    kwm_sdk::batch::seal_records(
        &[],
        agb(),
        Some(uuid::Uuid::new_v4()),
        &sk.public_key(),
        keys.signer(),
        &"ab".repeat(32),
        kwm_sdk::batch::now_utc_seconds(),
    )
    .expect("seal")
}

#[tokio::test]
async fn transient_failures_are_retried_with_the_same_batch() {
    let (url, log) = serve(Arc::new(|req: &Req, earlier: &[Req]| match earlier.len() {
        0 => problem(&Problem::new(ProblemType::Unavailable, "database down")),
        1 => Reply {
            status: 502,
            content_type: "text/html",
            body: b"<html>bad gateway</html>".to_vec(),
        },
        _ => {
            let b: SealedBatch = serde_json::from_slice(&req.body).expect("batch");
            json(201, &receipt_for(&b, false))
        }
    }))
    .await;
    let keys = ProviderKeys::generate().expect("keys");
    let sk = HpkeSecretKey::generate();
    let batch = sample_batch(&sk, &keys);
    let client = Client::new(&url, Some(Token::new("tok-123")))
        .expect("client")
        .with_retry(fast_retries());
    let out = client
        .post_batch(&batch)
        .await
        .expect("succeeds on the third attempt");
    assert_eq!(out.attempts, 3);
    assert!(out.created);
    assert_eq!(out.receipt.batch_id, batch.header.batch_id);
    let log = log.lock().expect("log");
    assert_eq!(log.len(), 3);
    assert!(
        log.iter().all(|r| r.body == log[0].body),
        "the same bytes every time"
    );
    assert!(log
        .iter()
        .all(|r| r.method == "POST" && r.path == "/v1/batches"));
    assert!(log
        .iter()
        .all(|r| r.authorization.as_deref() == Some("Bearer tok-123")));
}

#[tokio::test]
async fn refusals_are_typed_and_not_retried() {
    let (url, log) = serve(Arc::new(|_: &Req, _: &[Req]| {
        let mut p = Problem::new(ProblemType::InvalidRecord, "1 problem(s) in the batch");
        p.errors = vec![RecordError {
            record: 0,
            field: "end_reason".into(),
            reason: "an ended trajectory needs an end reason".into(),
        }];
        problem(&p)
    }))
    .await;
    let keys = ProviderKeys::generate().expect("keys");
    let batch = sample_batch(&HpkeSecretKey::generate(), &keys);
    let client = Client::new(&url, Some(Token::new("t")))
        .expect("client")
        .with_retry(fast_retries());
    let err = client.post_batch(&batch).await.expect_err("refused");
    assert_eq!(err.problem_type(), Some(ProblemType::InvalidRecord));
    assert_eq!(err.status(), Some(422));
    let p = err.problem().expect("problem");
    assert_eq!(p.errors[0].field, "end_reason");
    assert!(err.to_string().contains("invalid-record"), "{err}");
    assert_eq!(log.lock().expect("log").len(), 1, "no retry of a refusal");
}

#[tokio::test]
async fn unreachable_service_is_a_transport_error_after_the_retries() {
    // Bind and drop: nothing listens on the port afterwards.
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        l.local_addr().expect("addr").port()
    };
    let client = Client::new(&format!("http://127.0.0.1:{port}"), None)
        .expect("client")
        .with_retry(fast_retries());
    let err = client.keys().await.expect_err("nobody listens");
    assert!(matches!(err, ClientError::Transport { .. }), "{err:?}");
    assert!(err.is_transient());
    assert!(
        err.to_string().contains("could not reach the service"),
        "{err}"
    );
}

#[tokio::test]
async fn calls_that_need_a_token_say_so() {
    let client = Client::new("http://127.0.0.1:9", None).expect("client");
    assert!(matches!(client.me().await, Err(ClientError::NoToken)));
}

#[tokio::test]
async fn upload_reseals_once_to_the_new_active_key_and_keeps_the_batch_id() {
    let old = Arc::new(HpkeSecretKey::generate());
    let new = Arc::new(HpkeSecretKey::generate());
    let opened: Arc<Mutex<Vec<BatchPayload>>> = Arc::default();
    let handler: Handler = {
        let (old, new, opened) = (Arc::clone(&old), Arc::clone(&new), Arc::clone(&opened));
        Arc::new(move |req: &Req, earlier: &[Req]| {
            let rotated = earlier
                .iter()
                .any(|r| r.method == "POST" && r.path == "/v1/batches");
            match (req.method.as_str(), req.path.as_str()) {
                ("GET", "/v1/me") => json(
                    200,
                    &TokenInfo {
                        role: Role::Provider,
                        scope: Some(agb().to_string()),
                    },
                ),
                ("GET", "/v1/keys") if !rotated => json(200, &keys_response(&old, &[])),
                ("GET", "/v1/keys") => {
                    json(200, &keys_response(&new, &[(&old, KeyState::Retired)]))
                }
                ("POST", "/v1/batches") => {
                    let b: SealedBatch = serde_json::from_slice(&req.body).expect("batch");
                    if b.header.key_id != new.public_key().key_id() {
                        let mut p = Problem::new(ProblemType::RetiredKey, "key retired");
                        p.active_key_id = Some(new.public_key().key_id().to_string());
                        return problem(&p);
                    }
                    let plain = envelope::open(&b, &new).expect("opens with the new key");
                    opened
                        .lock()
                        .expect("lock")
                        .push(serde_json::from_slice(&plain).expect("payload"));
                    json(201, &receipt_for(&b, false))
                }
                _ => problem(&Problem::new(ProblemType::NotFound, "no")),
            }
        })
    };
    let (url, log) = serve(handler).await;

    let dir = tempfile::tempdir().expect("tempdir");
    let out = kwm_sdk::synth::generate(&kwm_sdk::synth::SynthOptions::new(dir.path(), 1, 120, 9))
        .expect("synth");
    let mut opts = UploadOptions::new(
        &out.providers[0].path,
        &url,
        Some(Token::new("tok")),
        ProviderKeys::generate().expect("keys"),
        RegionalKey::generate().expect("regional"),
    );
    opts.batch_size = 50;
    opts.retry = fast_retries();
    let report = kwm_sdk::upload_file(&opts).await.expect("upload");
    assert_eq!(report.provider, Some(agb()));
    assert_eq!(report.batches, 3);
    // Two batches are in flight at once, so the first one or two meet the old key; the third is
    // sealed to the new key from the start.
    assert!(
        (1..=2).contains(&report.resealed_batches),
        "only the batches in flight before the switch met the old key: {}",
        report.resealed_batches
    );
    assert_eq!(report.records_sent, 120);
    assert_eq!(report.stored, 120);
    assert_eq!(report.rows_read, 120);

    let log = log.lock().expect("log");
    let posts: Vec<SealedBatch> = log
        .iter()
        .filter(|r| r.method == "POST")
        .map(|r| serde_json::from_slice(&r.body).expect("batch"))
        .collect();
    let resealed = report.resealed_batches as usize;
    assert_eq!(
        posts.len(),
        3 + resealed,
        "the refused ones and three accepted"
    );
    let (refused, accepted): (Vec<&SealedBatch>, Vec<&SealedBatch>) = posts
        .iter()
        .partition(|p| p.header.key_id == old.public_key().key_id());
    assert_eq!(refused.len(), resealed);
    assert!(accepted
        .iter()
        .all(|p| p.header.key_id == new.public_key().key_id()));
    for r in &refused {
        assert!(
            accepted
                .iter()
                .any(|a| a.header.batch_id == r.header.batch_id),
            "resealed under the same id"
        );
    }
    let ids: std::collections::HashSet<_> = accepted.iter().map(|p| p.header.batch_id).collect();
    assert_eq!(ids.len(), 3);
    assert!(
        log.iter()
            .filter(|r| r.path == "/v1/keys")
            .all(|r| r.authorization.is_none()),
        "keys need no token"
    );
    let records: usize = opened
        .lock()
        .expect("lock")
        .iter()
        .map(|p| p.records.len())
        .sum();
    assert_eq!(records, 120);
}

#[tokio::test]
async fn upload_refuses_a_token_of_another_role_or_provider() {
    let (url, _) = serve(Arc::new(|req: &Req, _: &[Req]| match req.path.as_str() {
        "/v1/me" => json(
            200,
            &TokenInfo {
                role: Role::Municipality,
                scope: Some("GM0748".into()),
            },
        ),
        _ => problem(&Problem::new(ProblemType::NotFound, "no")),
    }))
    .await;
    let dir = tempfile::tempdir().expect("tempdir");
    let out = kwm_sdk::synth::generate(&kwm_sdk::synth::SynthOptions::new(dir.path(), 1, 10, 1))
        .expect("synth");
    let opts = UploadOptions::new(
        &out.providers[0].path,
        &url,
        Some(Token::new("tok")),
        ProviderKeys::generate().expect("keys"),
        RegionalKey::generate().expect("regional"),
    );
    let err = kwm_sdk::upload_file(&opts)
        .await
        .expect_err("not a provider");
    assert!(
        matches!(
            err,
            kwm_sdk::UploadError::NotAProvider {
                role: Role::Municipality
            }
        ),
        "{err}"
    );
}
