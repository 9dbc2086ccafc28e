//! The HTTP client of the custodian's API: `GET /v1/keys`, `GET /v1/me`, `POST /v1/batches`,
//! `GET /v1/batches`, withdrawals (`DELETE /v1/batches/{id}`, `DELETE /v1/trajectories/{pseudonym}`),
//! `GET /v1/export` and `GET /v1/audit`, with problem documents mapped to a typed error and transient failures retried with
//! exponential backoff and jitter (always resending the same bytes, so a retried batch keeps its id).

use std::fmt;
use std::time::Duration;

use kwm_schemas::api::{
    AuditPage, BatchList, BatchReceipt, KeysResponse, TokenInfo, WithdrawalReceipt,
};
use kwm_schemas::envelope::{HpkePublicKey, KeyId, SealedBatch};
use kwm_schemas::problem::{Problem, ProblemType};
use kwm_schemas::release::ProviderScores;
use kwm_schemas::{ExportedRecord, Period, Pseudonym};
use rand::Rng;
use reqwest::header::{HeaderMap, ACCEPT, CONTENT_TYPE, RETRY_AFTER};
use reqwest::{Method, StatusCode};
use serde::de::DeserializeOwned;

use crate::secret::Token;

/// How often and how patiently to retry transient failures.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Attempts in total, the first included; 1 means no retries.
    pub max_attempts: u32,
    /// Delay before the first retry; it doubles with every further retry.
    pub base_delay: Duration,
    /// Upper bound of one delay (a `Retry-After` from the service may ask for longer).
    pub max_delay: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self {
            max_attempts: 6,
            base_delay: Duration::from_millis(500),
            max_delay: Duration::from_secs(30),
        }
    }
}

impl RetryPolicy {
    /// One attempt, no retries.
    pub fn none() -> Self {
        Self {
            max_attempts: 1,
            ..Self::default()
        }
    }

    /// The delay before retry number `retry` (1-based): "equal jitter", half fixed and half random, so
    /// that many providers failing at once do not come back in step.
    pub fn delay(&self, retry: u32, rng: &mut impl Rng) -> Duration {
        let exp = self
            .base_delay
            .saturating_mul(1u32 << retry.saturating_sub(1).min(20));
        let capped = exp.min(self.max_delay);
        let half = capped / 2;
        let jitter_ms = rng.random_range(0..=half.as_millis().min(u128::from(u64::MAX)) as u64);
        half + Duration::from_millis(jitter_ms)
    }
}

/// A failed API call.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("the service URL is not valid: {0}")]
    InvalidUrl(String),
    #[error("this call needs a bearer token (--token, KWM_TOKEN or token in kwm.toml)")]
    NoToken,
    /// The URL's scheme and the service disagree: https to a service that speaks plain http, or
    /// the other way round. Retrying cannot help.
    #[error("could not talk to the service at {url}: {hint}")]
    WrongScheme { url: String, hint: String },
    #[error("could not reach the service at {url}: {}", transport_reason(source))]
    Transport {
        url: String,
        #[source]
        source: reqwest::Error,
    },
    /// The service answered with an RFC 7807 problem document.
    #[error("{}", render_problem(*status, problem))]
    Problem { status: u16, problem: Box<Problem> },
    /// Any other unexpected status (a proxy's error page, say).
    #[error("the service at {url} answered HTTP {status} without a problem document")]
    Status { url: String, status: u16 },
    #[error("the service at {url} sent a response this client does not understand: {message}")]
    Decode { url: String, message: String },
}

fn transport_reason(e: &reqwest::Error) -> String {
    let kind = if e.is_timeout() {
        "timed out"
    } else if e.is_connect() {
        "connection failed"
    } else {
        "request failed"
    };
    // The source chain says why (refused, DNS, TLS); the URL is already in the message.
    let mut detail = String::new();
    let mut src = std::error::Error::source(e);
    while let Some(s) = src {
        detail = s.to_string();
        src = s.source();
    }
    if detail.is_empty() {
        kind.to_string()
    } else {
        format!("{kind} ({detail})")
    }
}

/// When https meets a plain-http service (or the other way round), what to write instead; `None`
/// for any other transport failure. rustls reports the plain-http answer to its hello as a corrupt
/// record; a plain-http request to a TLS port gets bytes that are no HTTP.
fn scheme_mismatch(url: &str, e: &reqwest::Error) -> Option<String> {
    let mut chain = e.to_string();
    let mut src = std::error::Error::source(e);
    while let Some(s) = src {
        chain.push_str(": ");
        chain.push_str(&s.to_string());
        src = s.source();
    }
    let chain = chain.to_ascii_lowercase();
    if let Some(rest) = url.strip_prefix("https://") {
        let tls_saw_http = [
            "corrupt message",
            "invalidcontenttype",
            "wrong version number",
        ]
        .iter()
        .any(|n| chain.contains(n));
        if tls_saw_http {
            return Some(format!(
                "the URL says https, but the service answered in plain http (no TLS); use \
                 http://{rest} for a local service, or put TLS in front of the service"
            ));
        }
    } else if let Some(rest) = url.strip_prefix("http://") {
        if chain.contains("invalid http version") || chain.contains("invalid http status") {
            return Some(format!(
                "the URL says http, but the service did not answer in plain http (it may expect \
                 TLS); try https://{rest}"
            ));
        }
    }
    None
}

fn render_problem(status: u16, p: &Problem) -> String {
    let slug = p
        .kind()
        .map(|k| k.slug().to_string())
        .unwrap_or_else(|| p.type_uri.clone());
    let mut s = format!(
        "the service refused the request (HTTP {status}, {slug}): {}",
        p.detail
    );
    if status == 401 {
        s.push_str(
            "\n  pass the token the custodian issued for you with --token TOKEN or set KWM_TOKEN \
             (or token in kwm.toml); the custodian's operator issues tokens \
             (`kwm-service admin token issue`)",
        );
    }
    for e in p.errors.iter().take(20) {
        s.push_str(&format!(
            "\n  record {} field {}: {}",
            e.record, e.field, e.reason
        ));
    }
    if p.errors.len() > 20 {
        s.push_str(&format!("\n  ... and {} more", p.errors.len() - 20));
    }
    s
}

impl ClientError {
    /// The problem type, when the service sent one of ours.
    pub fn problem_type(&self) -> Option<ProblemType> {
        self.problem().and_then(Problem::kind)
    }

    pub fn problem(&self) -> Option<&Problem> {
        match self {
            Self::Problem { problem, .. } => Some(problem),
            _ => None,
        }
    }

    /// The HTTP status, when there was an answer.
    pub fn status(&self) -> Option<u16> {
        match self {
            Self::Problem { status, .. } | Self::Status { status, .. } => Some(*status),
            _ => None,
        }
    }

    /// Whether the same request may succeed later: connection failures and timeouts, 502/503/504, and
    /// problem types the service marks retryable.
    pub fn is_transient(&self) -> bool {
        match self {
            Self::Transport { source, .. } => {
                source.is_connect()
                    || source.is_timeout()
                    || source.is_request()
                    || source.is_body()
            }
            Self::Status { status, .. } => matches!(status, 502..=504),
            Self::Problem { status, problem } => {
                problem.kind().is_some_and(ProblemType::is_retryable)
                    || (problem.kind().is_none() && matches!(status, 502..=504))
            }
            _ => false,
        }
    }
}

/// The answer to `POST /v1/batches`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PostOutcome {
    pub receipt: BatchReceipt,
    /// `201 Created` (true) or `200 OK` for a batch the service had already stored (false).
    pub created: bool,
    /// Attempts it took, 1 when the first one succeeded.
    pub attempts: u32,
}

/// A client of one service, optionally with a bearer token.
#[derive(Clone)]
pub struct Client {
    http: reqwest::Client,
    base: String,
    token: Option<Token>,
    retry: RetryPolicy,
}

impl fmt::Debug for Client {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Client")
            .field("base", &self.base)
            .field("token", &self.token.as_ref().map(|_| "<redacted>"))
            .field("retry", &self.retry)
            .finish()
    }
}

impl Client {
    /// A client of the service at `base_url` (`https://kwm.example` or `http://127.0.0.1:8080`, with or
    /// without a path prefix), with the default retry policy.
    pub fn new(base_url: &str, token: Option<Token>) -> Result<Self, ClientError> {
        let trimmed = base_url.trim().trim_end_matches('/');
        if !trimmed.is_empty() && !trimmed.contains("://") {
            return Err(ClientError::InvalidUrl(format!(
                "`{trimmed}` has no scheme; write https://{trimmed} (or http://{trimmed} for a \
                 service on this machine without TLS)"
            )));
        }
        let url =
            reqwest::Url::parse(trimmed).map_err(|e| ClientError::InvalidUrl(e.to_string()))?;
        if !matches!(url.scheme(), "http" | "https") {
            return Err(ClientError::InvalidUrl(
                "use an http:// or https:// URL".to_string(),
            ));
        }
        if url.scheme() == "http" && token.is_some() {
            let local = matches!(
                url.host_str(),
                Some("localhost" | "127.0.0.1" | "[::1]" | "::1")
            );
            if !local {
                tracing::warn!(
                    "the service URL is plain http: the bearer token travels unencrypted; use https"
                );
            }
        }
        let http = reqwest::Client::builder()
            .user_agent(concat!("kwm-sdk/", env!("CARGO_PKG_VERSION")))
            .connect_timeout(Duration::from_secs(15))
            .timeout(Duration::from_secs(300))
            .build()
            .map_err(|e| ClientError::InvalidUrl(e.to_string()))?;
        Ok(Self {
            http,
            base: trimmed.to_string(),
            token: token.filter(|t| !t.is_empty()),
            retry: RetryPolicy::default(),
        })
    }

    pub fn with_retry(mut self, retry: RetryPolicy) -> Self {
        self.retry = retry;
        self
    }

    pub fn base_url(&self) -> &str {
        &self.base
    }

    /// `GET /v1/keys` (no token): the service's HPKE keys.
    pub async fn keys(&self) -> Result<KeysResponse, ClientError> {
        let (_, body) = self.call(Method::GET, "/v1/keys", None, false).await?;
        self.decode("/v1/keys", &body)
    }

    /// The active key from `GET /v1/keys`, checked against its published id.
    pub async fn active_key(&self) -> Result<(KeyId, HpkePublicKey), ClientError> {
        let keys = self.keys().await?;
        active_key_of(&keys).map_err(|message| ClientError::Decode {
            url: self.url("/v1/keys"),
            message,
        })
    }

    /// `GET /v1/me`: the role and scope of the token (a provider's scope is its AGB code).
    pub async fn me(&self) -> Result<TokenInfo, ClientError> {
        let (_, body) = self.call(Method::GET, "/v1/me", None, true).await?;
        self.decode("/v1/me", &body)
    }

    /// `POST /v1/batches`: `201` for a new batch, `200` with the original receipt for one stored before.
    /// Transient failures are retried with the same bytes.
    pub async fn post_batch(&self, batch: &SealedBatch) -> Result<PostOutcome, ClientError> {
        let body = serde_json::to_vec(batch).map_err(|e| ClientError::Decode {
            url: self.url("/v1/batches"),
            message: format!("cannot serialise the batch: {e}"),
        })?;
        let (attempts, status, bytes) = self
            .call_counted(Method::POST, "/v1/batches", Some(body), true)
            .await?;
        let receipt: BatchReceipt = self.decode("/v1/batches", &bytes)?;
        Ok(PostOutcome {
            receipt,
            created: status == StatusCode::CREATED,
            attempts,
        })
    }

    /// `GET /v1/batches`: the provider's batches, newest first.
    pub async fn list_batches(&self) -> Result<BatchList, ClientError> {
        let (_, body) = self.call(Method::GET, "/v1/batches", None, true).await?;
        self.decode("/v1/batches", &body)
    }

    /// `GET /v1/batches/{id}`: one receipt.
    pub async fn get_batch(&self, batch_id: uuid::Uuid) -> Result<BatchReceipt, ClientError> {
        let path = format!("/v1/batches/{batch_id}");
        let (_, body) = self.call(Method::GET, &path, None, true).await?;
        self.decode(&path, &body)
    }

    /// `DELETE /v1/batches/{id}`: withdraws one of the provider's batches. A retry after a lost answer
    /// finds nothing left to withdraw (`not-found`): check with [`Client::list_batches`].
    pub async fn withdraw_batch(
        &self,
        batch_id: uuid::Uuid,
    ) -> Result<WithdrawalReceipt, ClientError> {
        let path = format!("/v1/batches/{batch_id}");
        let (_, body) = self.call(Method::DELETE, &path, None, true).await?;
        self.decode(&path, &body)
    }

    /// `DELETE /v1/trajectories/{pseudonym}`: withdraws one of the provider's trajectories, named by its
    /// trajectory pseudonym (see [`crate::custody::trajectory_pseudonym`]).
    pub async fn withdraw_trajectory(
        &self,
        trajectory: &Pseudonym,
    ) -> Result<WithdrawalReceipt, ClientError> {
        let path = format!("/v1/trajectories/{}", hex::encode(trajectory.as_bytes()));
        let (_, body) = self.call(Method::DELETE, &path, None, true).await?;
        // The path holds the pseudonym: errors name the endpoint only.
        self.decode("/v1/trajectories/{trajectory}", &body)
    }

    /// `GET /v1/export`: the provider's stored records as it sent them, without client pseudonyms.
    pub async fn export(&self) -> Result<Vec<ExportedRecord>, ClientError> {
        let (_, body) = self.call(Method::GET, "/v1/export", None, true).await?;
        body.split(|b| *b == b'\n')
            .filter(|line| !line.iter().all(u8::is_ascii_whitespace))
            .map(|line| self.decode("/v1/export", line))
            .collect()
    }

    /// `GET /v1/audit`: a page of audit entries after `after` (the provider's own, or all for an admin).
    pub async fn audit(&self, after: i64, limit: u32) -> Result<AuditPage, ClientError> {
        let path = format!("/v1/audit?after={after}&limit={limit}");
        let (_, body) = self.call(Method::GET, &path, None, true).await?;
        self.decode("/v1/audit", &body)
    }

    /// `GET /v1/providers/me/scores?period=`: the provider's own figures next to the region's, from
    /// the period's newest round.
    pub async fn scores(&self, period: Period) -> Result<ProviderScores, ClientError> {
        let path = format!("/v1/providers/me/scores?period={period}");
        let (_, body) = self.call(Method::GET, &path, None, true).await?;
        self.decode("/v1/providers/me/scores", &body)
    }

    /// The same scores as the service renders them for a spreadsheet: `csv` (the Dutch dialect) or
    /// `xlsx` (a workbook with the figures, a legend and the round). Returns the file's bytes.
    pub async fn scores_file(&self, period: Period, format: &str) -> Result<Vec<u8>, ClientError> {
        let path = format!("/v1/providers/me/scores?period={period}&format={format}");
        let (_, body) = self.call(Method::GET, &path, None, true).await?;
        Ok(body)
    }

    /// `POST /v1/research/queries`: the answer to a query of the researcher's project, charged to it.
    /// Sent once, never retried: a retry after a lost answer would be charged again.
    pub async fn research_query(
        &self,
        request: &kwm_schemas::api::ResearchQueryRequest,
    ) -> Result<kwm_schemas::api::ResearchAnswered, ClientError> {
        self.research_post("/v1/research/queries", request).await
    }

    /// `POST /v1/research/queries/estimate`: what the query would cost and how wide its intervals
    /// would be; nothing is spent.
    pub async fn research_estimate(
        &self,
        request: &kwm_schemas::api::ResearchQueryRequest,
    ) -> Result<kwm_schemas::api::ResearchEstimated, ClientError> {
        self.research_post("/v1/research/queries/estimate", request)
            .await
    }

    /// `GET /v1/research/log`: the project's budget and every answer it was given.
    pub async fn research_log(&self) -> Result<kwm_schemas::api::ResearchLog, ClientError> {
        let (_, body) = self
            .call(Method::GET, "/v1/research/log", None, true)
            .await?;
        self.decode("/v1/research/log", &body)
    }

    async fn research_post<T: DeserializeOwned>(
        &self,
        path: &str,
        request: &kwm_schemas::api::ResearchQueryRequest,
    ) -> Result<T, ClientError> {
        let body = serde_json::to_vec(request).map_err(|e| ClientError::Decode {
            url: self.url(path),
            message: e.to_string(),
        })?;
        let once = Self {
            retry: RetryPolicy::none(),
            ..self.clone()
        };
        let (_, body) = once.call(Method::POST, path, Some(body), true).await?;
        self.decode(path, &body)
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    fn decode<T: DeserializeOwned>(&self, path: &str, body: &[u8]) -> Result<T, ClientError> {
        serde_json::from_slice(body).map_err(|e| ClientError::Decode {
            url: self.url(path),
            message: e.to_string(),
        })
    }

    async fn call(
        &self,
        method: Method,
        path: &str,
        body: Option<Vec<u8>>,
        auth: bool,
    ) -> Result<(StatusCode, Vec<u8>), ClientError> {
        self.call_counted(method, path, body, auth)
            .await
            .map(|(_, s, b)| (s, b))
    }

    /// One request with retries. Returns the attempts used, the success status and the body.
    async fn call_counted(
        &self,
        method: Method,
        path: &str,
        body: Option<Vec<u8>>,
        auth: bool,
    ) -> Result<(u32, StatusCode, Vec<u8>), ClientError> {
        let token = if auth {
            Some(self.token.as_ref().ok_or(ClientError::NoToken)?)
        } else {
            None
        };
        let url = self.url(path);
        // What errors and logs show: the URL with any pseudonym in the path left out.
        let shown = self.url(&shown_path(path));
        let mut attempt = 1u32;
        loop {
            let mut req = self
                .http
                .request(method.clone(), &url)
                .header(ACCEPT, "application/json, application/problem+json");
            if let Some(t) = token {
                req = req.bearer_auth(t.expose());
            }
            if let Some(b) = &body {
                req = req.header(CONTENT_TYPE, "application/json").body(b.clone());
            }
            let result = match req.send().await {
                Ok(resp) => read_response(&shown, resp).await,
                Err(source) => Err((
                    match scheme_mismatch(&self.base, &source) {
                        Some(hint) => ClientError::WrongScheme {
                            url: shown.clone(),
                            hint,
                        },
                        None => ClientError::Transport {
                            url: shown.clone(),
                            source: source.without_url(),
                        },
                    },
                    None,
                )),
            };
            match result {
                Ok((status, bytes)) => return Ok((attempt, status, bytes)),
                Err((err, retry_after)) => {
                    if !err.is_transient() || attempt >= self.retry.max_attempts {
                        return Err(err);
                    }
                    let mut delay = self.retry.delay(attempt, &mut rand::rng());
                    if let Some(ra) = retry_after {
                        delay = delay.max(ra.min(Duration::from_secs(300)));
                    }
                    tracing::warn!(
                        path = %shown_path(path),
                        attempt,
                        max_attempts = self.retry.max_attempts,
                        delay_ms = delay.as_millis() as u64,
                        reason = %short_reason(&err),
                        "transient failure; retrying the same request"
                    );
                    tokio::time::sleep(delay).await;
                    attempt += 1;
                }
            }
        }
    }
}

/// The path with every segment that is a pseudonym (64 hex digits) replaced by `{pseudonym}`: a
/// withdrawal names its trajectory in the path, and no pseudonym belongs in a log or an error message.
fn shown_path(path: &str) -> std::borrow::Cow<'_, str> {
    let is_pseudonym = |seg: &str| seg.len() == 64 && seg.bytes().all(|b| b.is_ascii_hexdigit());
    if !path.split(['/', '?']).any(is_pseudonym) {
        return path.into();
    }
    path.split('/')
        .map(|seg| {
            if is_pseudonym(seg) {
                "{pseudonym}"
            } else {
                seg
            }
        })
        .collect::<Vec<_>>()
        .join("/")
        .into()
}

fn short_reason(e: &ClientError) -> String {
    match e {
        ClientError::Transport { source, .. } => transport_reason(source),
        ClientError::Problem { status, problem } => format!(
            "HTTP {status} {}",
            problem.kind().map(|k| k.slug()).unwrap_or("problem")
        ),
        ClientError::Status { status, .. } => format!("HTTP {status}"),
        other => other.to_string(),
    }
}

/// Reads a response: the body on 2xx, else the typed error and any `Retry-After`.
async fn read_response(
    url: &str,
    resp: reqwest::Response,
) -> Result<(StatusCode, Vec<u8>), (ClientError, Option<Duration>)> {
    let status = resp.status();
    let headers = resp.headers().clone();
    let bytes = resp.bytes().await.map_err(|source| {
        (
            ClientError::Transport {
                url: url.to_string(),
                source: source.without_url(),
            },
            None,
        )
    })?;
    if status.is_success() {
        return Ok((status, bytes.to_vec()));
    }
    let header_retry = retry_after_header(&headers);
    if is_json(&headers) {
        if let Ok(problem) = serde_json::from_slice::<Problem>(&bytes) {
            let retry = problem
                .retry_after
                .map(Duration::from_secs)
                .or(header_retry);
            return Err((
                ClientError::Problem {
                    status: status.as_u16(),
                    problem: Box::new(problem),
                },
                retry,
            ));
        }
    }
    Err((
        ClientError::Status {
            url: url.to_string(),
            status: status.as_u16(),
        },
        header_retry,
    ))
}

fn is_json(headers: &HeaderMap) -> bool {
    headers
        .get(CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|ct| ct.contains("json"))
}

fn retry_after_header(headers: &HeaderMap) -> Option<Duration> {
    headers
        .get(RETRY_AFTER)
        .and_then(|v| v.to_str().ok())
        .and_then(|s| s.trim().parse::<u64>().ok())
        .map(Duration::from_secs)
}

/// The active key of a `GET /v1/keys` answer, its bytes checked against its id.
pub fn active_key_of(keys: &KeysResponse) -> Result<(KeyId, HpkePublicKey), String> {
    let info = keys
        .keys
        .iter()
        .find(|k| k.key_id == keys.active_key_id)
        .ok_or_else(|| {
            format!(
                "the active key {} is not among the published keys",
                keys.active_key_id
            )
        })?;
    let pk = HpkePublicKey::from_bytes(&info.public_key.0)
        .map_err(|e| format!("key {}: {e}", info.key_id))?;
    if pk.key_id() != info.key_id {
        return Err(format!(
            "key {} does not hash to its id; refusing to seal to it",
            info.key_id
        ));
    }
    Ok((info.key_id.clone(), pk))
}

#[cfg(test)]
mod tests {
    use super::*;
    use kwm_schemas::api::{KeyState, PublicKeyInfo};
    use kwm_schemas::envelope::{Base64Bytes, HpkeSecretKey};
    use rand::SeedableRng;

    #[test]
    fn backoff_grows_is_capped_and_jittered() {
        let p = RetryPolicy {
            max_attempts: 10,
            base_delay: Duration::from_millis(100),
            max_delay: Duration::from_secs(2),
        };
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(1);
        for retry in 1..12 {
            let full = (Duration::from_millis(100) * (1 << (retry - 1).min(20))).min(p.max_delay);
            let d = p.delay(retry, &mut rng);
            assert!(
                d >= full / 2 && d <= full,
                "retry {retry}: {d:?} vs {full:?}"
            );
        }
        let a: Vec<Duration> = (0..20).map(|_| p.delay(5, &mut rng)).collect();
        assert!(a.iter().any(|d| *d != a[0]), "jitter varies");
    }

    fn problem(kind: ProblemType) -> ClientError {
        ClientError::Problem {
            status: kind.status(),
            problem: Box::new(Problem::new(kind, "x")),
        }
    }

    #[test]
    fn transient_classification() {
        assert!(problem(ProblemType::Unavailable).is_transient());
        assert!(problem(ProblemType::RateLimited).is_transient());
        assert!(!problem(ProblemType::InvalidRecord).is_transient());
        assert!(!problem(ProblemType::BatchConflict).is_transient());
        assert!(!problem(ProblemType::RetiredKey).is_transient());
        for status in [502, 503, 504] {
            assert!(ClientError::Status {
                url: String::new(),
                status
            }
            .is_transient());
        }
        assert!(!ClientError::Status {
            url: String::new(),
            status: 404
        }
        .is_transient());
        assert_eq!(
            problem(ProblemType::RetiredKey).problem_type(),
            Some(ProblemType::RetiredKey)
        );
    }

    #[test]
    fn active_key_is_checked_against_its_id() {
        let sk = HpkeSecretKey::generate();
        let pk = sk.public_key();
        let info = PublicKeyInfo {
            key_id: pk.key_id(),
            state: KeyState::Active,
            public_key: Base64Bytes(pk.to_bytes()),
            created_at: time::OffsetDateTime::UNIX_EPOCH,
            activated_at: None,
            retired_at: None,
        };
        let mut keys = KeysResponse {
            protocol_version: 1,
            suite: String::new(),
            active_key_id: pk.key_id(),
            keys: vec![info],
        };
        assert_eq!(active_key_of(&keys).expect("ok").0, pk.key_id());
        keys.keys[0].public_key = Base64Bytes(HpkeSecretKey::generate().public_key().to_bytes());
        assert!(active_key_of(&keys).is_err());
        keys.keys.clear();
        assert!(active_key_of(&keys).is_err());
    }

    #[test]
    fn pseudonyms_in_paths_are_not_shown() {
        let hex64 = "ab".repeat(32);
        assert_eq!(
            shown_path(&format!("/v1/trajectories/{hex64}")),
            "/v1/trajectories/{pseudonym}"
        );
        assert_eq!(shown_path("/v1/batches/x"), "/v1/batches/x");
    }

    #[test]
    fn urls_are_checked() {
        assert!(Client::new("ftp://x", None).is_err());
        assert!(Client::new("not a url", None).is_err());
        let c = Client::new("http://127.0.0.1:8080/", None).expect("ok");
        assert_eq!(c.url("/v1/keys"), "http://127.0.0.1:8080/v1/keys");
        assert!(!format!(
            "{:?}",
            Client::new("http://localhost", Some(Token::new("secret-tok"))).expect("ok")
        )
        .contains("secret-tok"));
    }
}
