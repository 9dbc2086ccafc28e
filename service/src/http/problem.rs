//! The problem mapping: renders the use cases' [`ApiError`] as an RFC 7807 problem document with its
//! status, turns the framework's own bare error answers and JSON rejections into problem documents, and
//! answers unknown paths. Only server errors are logged, with their cause chain; their details never
//! reach the client.

use axum::extract::rejection::JsonRejection;
use axum::extract::FromRequest;
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use kwm_schemas::problem::{Problem, ProblemType};

use crate::app::error::ApiError;

/// Media type of problem documents.
pub const PROBLEM_JSON: &str = "application/problem+json";

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
