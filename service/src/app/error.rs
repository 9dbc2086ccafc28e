//! The use cases' one error type: every failure names its problem type (a wire type of `schemas`), so
//! that `http::problem` maps it to a status and an RFC 7807 problem document with a stable `type`, and
//! the CLI prints its detail. Nothing here knows HTTP.

use kwm_schemas::problem::{Problem, ProblemType, RecordError};

use crate::store::StoreError;

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

    pub fn to_problem(&self) -> Problem {
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
