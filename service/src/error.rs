//! The API's one error type: every failure maps to a status and an RFC 7807 problem document with a stable
//! `type`. Only server errors are logged, with their cause chain; their details never reach the client.

use axum::extract::rejection::JsonRejection;
use axum::extract::FromRequest;
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use kwm_schemas::problem::{Problem, ProblemType, RecordError};

use crate::store::StoreError;

/// Media type of problem documents.
pub const PROBLEM_JSON: &str = "application/problem+json";

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// A client-side failure with a message meant for the client.
    #[error("{detail}")]
    Problem {
        kind: ProblemType,
        detail: String,
        errors: Vec<RecordError>,
        active_key_id: Option<String>,
    },
    /// A round would take this data year over what rounds may spend of it.
    #[error("budget exhausted")]
    BudgetExhausted {
        partition: String,
        spent: String,
        cap: String,
    },
    /// A period that has no round (`not-released`) or cannot be published yet (`period-not-final`),
    /// with the date from which it can be or is planned to be.
    #[error("{detail}")]
    NotYet {
        kind: ProblemType,
        detail: String,
        available_from: Option<String>,
    },
    /// No valid bearer token. `presented`: a token was sent but is unknown or revoked (RFC 6750
    /// `invalid_token`); otherwise none was sent.
    #[error("unauthenticated")]
    Unauthenticated { presented: bool },
    /// Too many requests for one token: retry after this many seconds.
    #[error("rate limited")]
    RateLimited { retry_after: u64 },
    /// The database is unreachable: retryable.
    #[error("database unavailable")]
    Unavailable(#[source] StoreError),
    /// The request ran past the configured deadline and was stopped: retryable.
    #[error("request timed out")]
    TimedOut { after_secs: u64 },
    /// Anything else: logged, answered with a bare 500.
    #[error("internal error")]
    Internal(#[source] anyhow::Error),
}

impl ApiError {
    pub fn new(kind: ProblemType, detail: impl Into<String>) -> Self {
        Self::Problem {
            kind,
            detail: detail.into(),
            errors: Vec::new(),
            active_key_id: None,
        }
    }

    pub fn invalid_records(errors: Vec<RecordError>) -> Self {
        let n = errors.len();
        let first = errors
            .first()
            .map(|e| {
                format!(
                    " The first: record {}, field {}: {}.",
                    e.record, e.field, e.reason
                )
            })
            .unwrap_or_default();
        Self::Problem {
            kind: ProblemType::InvalidRecord,
            detail: format!("{n} problem(s) in the batch; nothing was stored.{first}"),
            errors,
            active_key_id: None,
        }
    }

    pub fn with_active_key(self, key_id: String) -> Self {
        match self {
            Self::Problem {
                kind,
                detail,
                errors,
                ..
            } => Self::Problem {
                kind,
                detail,
                errors,
                active_key_id: Some(key_id),
            },
            other => other,
        }
    }

    pub fn kind(&self) -> ProblemType {
        match self {
            Self::Problem { kind, .. } => *kind,
            Self::Unauthenticated { .. } => ProblemType::Unauthenticated,
            Self::RateLimited { .. } => ProblemType::RateLimited,
            Self::BudgetExhausted { .. } => ProblemType::BudgetExhausted,
            Self::NotYet { kind, .. } => *kind,
            Self::Unavailable(_) | Self::TimedOut { .. } => ProblemType::Unavailable,
            Self::Internal(_) => ProblemType::Internal,
        }
    }

    /// The problem's detail as the API would answer it, for a command line.
    pub fn to_string_detail(&self) -> String {
        self.to_problem().detail
    }

    /// No bearer token was sent.
    pub fn unauthenticated() -> Self {
        Self::Unauthenticated { presented: false }
    }

    /// A bearer token was sent, but the service does not know it or it was revoked.
    pub fn invalid_token() -> Self {
        Self::Unauthenticated { presented: true }
    }

    pub fn forbidden(detail: impl Into<String>) -> Self {
        Self::new(ProblemType::Forbidden, detail)
    }

    pub fn not_found(detail: impl Into<String>) -> Self {
        Self::new(ProblemType::NotFound, detail)
    }

    fn to_problem(&self) -> Problem {
        match self {
            Self::Problem {
                kind,
                detail,
                errors,
                active_key_id,
            } => {
                let mut p = Problem::new(*kind, detail.clone());
                p.errors = errors.clone();
                p.active_key_id = active_key_id.clone();
                p
            }
            Self::BudgetExhausted {
                partition,
                spent,
                cap,
            } => {
                let mut p = Problem::new(
                    ProblemType::BudgetExhausted,
                    format!(
                        "data year {partition} has spent rho {spent}; rounds may spend {cap} of it, \
                         so this round cannot be charged. Nothing was published; the rounds published \
                         before stay available."
                    ),
                );
                p.partition = Some(partition.clone());
                p
            }
            Self::NotYet {
                kind,
                detail,
                available_from,
            } => {
                let mut p = Problem::new(*kind, detail.clone());
                p.available_from = available_from.clone();
                p
            }
            Self::Unauthenticated { presented: false } => Problem::new(
                ProblemType::Unauthenticated,
                "send a valid bearer token in the Authorization header",
            ),
            Self::Unauthenticated { presented: true } => Problem::new(
                ProblemType::Unauthenticated,
                "the bearer token is not valid (unknown or revoked); ask the operator for a new one",
            ),
            Self::RateLimited { retry_after } => {
                let mut p = Problem::new(
                    ProblemType::RateLimited,
                    format!("too many requests for this token; retry after {retry_after} s"),
                );
                p.retry_after = Some(*retry_after);
                p
            }
            Self::Unavailable(_) => {
                let mut p = Problem::new(
                    ProblemType::Unavailable,
                    "the database is not reachable right now; retry later",
                );
                p.retry_after = Some(5);
                p
            }
            Self::TimedOut { after_secs } => {
                let mut p = Problem::new(
                    ProblemType::Unavailable,
                    format!(
                        "the request took longer than {after_secs} s and was stopped; retry later \
                         (an upload or a release asked for again is not done twice)"
                    ),
                );
                p.retry_after = Some(5);
                p
            }
            Self::Internal(_) => Problem::new(
                ProblemType::Internal,
                "an internal error occurred; it has been logged",
            ),
        }
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::Unavailable(_) => Self::Unavailable(e),
            StoreError::AuditUnwritten(inner) if matches!(*inner, StoreError::Unavailable(_)) => {
                Self::Unavailable(*inner)
            }
            StoreError::NotFound => Self::not_found("no such resource"),
            other => Self::Internal(other.into()),
        }
    }
}

impl From<anyhow::Error> for ApiError {
    fn from(e: anyhow::Error) -> Self {
        Self::Internal(e)
    }
}

/// The `WWW-Authenticate` challenge of every 401 answer (RFC 6750 section 3): the realm alone when no
/// token was sent, with `error="invalid_token"` when the token sent is not valid.
pub const BEARER_CHALLENGE: &str = "Bearer realm=\"kwm\"";
pub const BEARER_CHALLENGE_INVALID_TOKEN: &str =
    "Bearer realm=\"kwm\", error=\"invalid_token\", error_description=\"the token is unknown or revoked\"";

/// Renders a problem document with its status and media type (and, for a 401, the bearer challenge).
pub fn problem_response(problem: &Problem) -> Response {
    let status = StatusCode::from_u16(problem.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let body = serde_json::to_vec(problem).unwrap_or_default();
    let mut res = (status, body).into_response();
    res.headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(PROBLEM_JSON));
    if let Some(secs) = problem.retry_after {
        if let Ok(v) = HeaderValue::from_str(&secs.to_string()) {
            res.headers_mut().insert(header::RETRY_AFTER, v);
        }
    }
    if status == StatusCode::UNAUTHORIZED {
        res.headers_mut().insert(
            header::WWW_AUTHENTICATE,
            HeaderValue::from_static(BEARER_CHALLENGE),
        );
    }
    res
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        match &self {
            Self::Internal(e) => tracing::error!(error = format!("{e:#}"), "internal error"),
            Self::Unavailable(e) => tracing::warn!(error = %e, "database unavailable"),
            Self::TimedOut { after_secs } => {
                tracing::warn!(after_secs, "request stopped at its deadline")
            }
            Self::Problem { .. }
            | Self::Unauthenticated { .. }
            | Self::RateLimited { .. }
            | Self::BudgetExhausted { .. }
            | Self::NotYet { .. } => {}
        }
        let mut res = problem_response(&self.to_problem());
        if let Self::Unauthenticated { presented: true } = self {
            res.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static(BEARER_CHALLENGE_INVALID_TOKEN),
            );
        }
        res.extensions_mut().insert(self.kind());
        res
    }
}

/// `Json` whose rejections are problem documents too (axum `examples/error-handling`).
#[derive(Debug, FromRequest)]
#[from_request(via(axum::Json), rejection(ApiError))]
pub struct AppJson<T>(pub T);

impl<T: serde::Serialize> IntoResponse for AppJson<T> {
    fn into_response(self) -> Response {
        axum::Json(self.0).into_response()
    }
}

impl From<JsonRejection> for ApiError {
    fn from(r: JsonRejection) -> Self {
        match r {
            JsonRejection::BytesRejection(b) if b.status() == StatusCode::PAYLOAD_TOO_LARGE => {
                Self::new(
                    ProblemType::TooLarge,
                    "the request body is over the size limit",
                )
            }
            JsonRejection::MissingJsonContentType(_) => Self::new(
                ProblemType::BadRequest,
                "send the body as JSON with Content-Type: application/json",
            ),
            // serde's message names the path and the reason; it never contains more than the field
            // name and the expected shape.
            other => Self::new(ProblemType::BadRequest, other.body_text()),
        }
    }
}

/// Answers unknown paths with a problem document.
pub async fn fallback_not_found() -> ApiError {
    ApiError::not_found("no such endpoint; see /v1/openapi.json")
}

/// Middleware: turns the bare error responses that the framework and its layers answer on their own (a
/// wrong method, a body over the limit, an extractor's plain-text rejection) into problem documents with
/// the same status. Bodies of other media types pass unchanged (`/readyz` answers 503 with JSON).
pub async fn problem_for_bare_errors(
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    let res = next.run(req).await;
    let status = res.status();
    let bare = match res.headers().get(header::CONTENT_TYPE) {
        None => true,
        Some(ct) => ct.as_bytes().starts_with(b"text/plain"),
    };
    if !bare || !(status.is_client_error() || status.is_server_error()) {
        return res;
    }
    // The plain-text body is not copied: it is the framework's wording, and may quote the request.
    let (kind, detail) = match status.as_u16() {
        401 => (ProblemType::Unauthenticated, "send a valid bearer token"),
        403 => (ProblemType::Forbidden, "this request is not allowed"),
        404 => (ProblemType::NotFound, "no such resource"),
        405 => (
            ProblemType::MethodNotAllowed,
            "this path does not take this method; the Allow header and /v1/openapi.json list the ones it takes",
        ),
        413 => (
            ProblemType::TooLarge,
            "the request body is over the size limit; the SDK splits uploads into batches that fit",
        ),
        429 => (ProblemType::RateLimited, "too many requests; retry later"),
        408 | 502..=504 => (
            ProblemType::Unavailable,
            "the service could not answer in time; retry later",
        ),
        s if s < 500 => (ProblemType::BadRequest, "the request is not valid"),
        s => {
            tracing::error!(status = s, "a layer answered a bare server error");
            (
                ProblemType::Internal,
                "an internal error occurred; it has been logged",
            )
        }
    };
    let mut problem = Problem::new(kind, detail);
    problem.status = status.as_u16();
    if kind.is_retryable() && kind != ProblemType::Internal {
        problem.retry_after = Some(5);
    }
    let mut out = problem_response(&problem);
    if let Some(allow) = res.headers().get(header::ALLOW) {
        out.headers_mut().insert(header::ALLOW, allow.clone());
    }
    out.extensions_mut().insert(kind);
    out
}
