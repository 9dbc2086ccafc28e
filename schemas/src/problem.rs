//! RFC 7807 problem documents: every failure of the API has one stable `type`, so that clients (the SDK
//! first) can act on it without parsing prose.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// Every kind of failure the API reports. The slug is part of the interface: never rename one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub enum ProblemType {
    Unauthenticated,
    Forbidden,
    BadSignature,
    UnknownKey,
    RetiredKey,
    DecryptFailed,
    InvalidRecord,
    BatchConflict,
    TooLarge,
    UnsupportedVersion,
    BadRequest,
    NotFound,
    MethodNotAllowed,
    Unavailable,
    RateLimited,
    BudgetExhausted,
    Internal,
    /// The period has no round (yet): nothing to read.
    NotReleased,
    /// The period has not ended, or its data deadline has not passed: it cannot be published yet.
    PeriodNotFinal,
    /// The provider withdrew the batch with this id: it stays withdrawn (a new upload of the same
    /// records is a new batch with a new id).
    BatchWithdrawn,
    /// The batch was pseudonymised under another regional key than the region's (its check value
    /// differs from the registered one): its client pseudonyms would be other children.
    WrongRegionalKey,
    /// The operator has not registered the check value of the region's key yet: no batch can be told
    /// right from wrong, so none is stored.
    RegionalKeyNotRegistered,
}

/// The prefix of every problem `type` URI.
pub const PROBLEM_TYPE_PREFIX: &str = "urn:kwm:problem:";

impl ProblemType {
    pub const ALL: &'static [ProblemType] = &[
        Self::Unauthenticated,
        Self::Forbidden,
        Self::BadSignature,
        Self::UnknownKey,
        Self::RetiredKey,
        Self::DecryptFailed,
        Self::InvalidRecord,
        Self::BatchConflict,
        Self::TooLarge,
        Self::UnsupportedVersion,
        Self::BadRequest,
        Self::NotFound,
        Self::MethodNotAllowed,
        Self::Unavailable,
        Self::RateLimited,
        Self::BudgetExhausted,
        Self::Internal,
        Self::NotReleased,
        Self::PeriodNotFinal,
        Self::BatchWithdrawn,
        Self::WrongRegionalKey,
        Self::RegionalKeyNotRegistered,
    ];

    pub fn slug(self) -> &'static str {
        match self {
            Self::Unauthenticated => "unauthenticated",
            Self::Forbidden => "forbidden",
            Self::BadSignature => "bad-signature",
            Self::UnknownKey => "unknown-key",
            Self::RetiredKey => "retired-key",
            Self::DecryptFailed => "decrypt-failed",
            Self::InvalidRecord => "invalid-record",
            Self::BatchConflict => "batch-conflict",
            Self::TooLarge => "too-large",
            Self::UnsupportedVersion => "unsupported-version",
            Self::BadRequest => "bad-request",
            Self::NotFound => "not-found",
            Self::MethodNotAllowed => "method-not-allowed",
            Self::Unavailable => "unavailable",
            Self::RateLimited => "rate-limited",
            Self::BudgetExhausted => "budget-exhausted",
            Self::Internal => "internal",
            Self::NotReleased => "not-released",
            Self::PeriodNotFinal => "period-not-final",
            Self::BatchWithdrawn => "batch-withdrawn",
            Self::WrongRegionalKey => "wrong-regional-key",
            Self::RegionalKeyNotRegistered => "regional-key-not-registered",
        }
    }

    /// The `type` member: `urn:kwm:problem:<slug>`.
    pub fn uri(self) -> String {
        format!("{PROBLEM_TYPE_PREFIX}{}", self.slug())
    }

    pub fn from_uri(uri: &str) -> Option<Self> {
        let slug = uri.strip_prefix(PROBLEM_TYPE_PREFIX)?;
        Self::ALL.iter().copied().find(|t| t.slug() == slug)
    }

    pub fn status(self) -> u16 {
        match self {
            Self::Unauthenticated => 401,
            Self::Forbidden | Self::BadSignature => 403,
            Self::UnknownKey | Self::RetiredKey | Self::DecryptFailed | Self::BadRequest => 400,
            Self::InvalidRecord => 422,
            Self::BatchConflict => 409,
            Self::TooLarge => 413,
            Self::UnsupportedVersion => 400,
            Self::NotFound => 404,
            Self::MethodNotAllowed => 405,
            Self::Unavailable => 503,
            Self::RateLimited => 429,
            Self::BudgetExhausted => 409,
            Self::Internal => 500,
            Self::NotReleased => 404,
            Self::PeriodNotFinal => 409,
            Self::BatchWithdrawn => 410,
            Self::WrongRegionalKey => 422,
            Self::RegionalKeyNotRegistered => 409,
        }
    }

    pub fn title(self) -> &'static str {
        match self {
            Self::Unauthenticated => "Missing or unknown bearer token",
            Self::Forbidden => "This token may not do that",
            Self::BadSignature => "The batch signature does not match the provider's key",
            Self::UnknownKey => "The batch is sealed to a key this service does not have",
            Self::RetiredKey => "The batch is sealed to a retired key",
            Self::DecryptFailed => "The batch could not be decrypted",
            Self::InvalidRecord => "A record of the batch is not valid",
            Self::BatchConflict => "This batch id was already used for other content",
            Self::TooLarge => "The request is too large",
            Self::UnsupportedVersion => "Unsupported protocol version",
            Self::BadRequest => "The request is not valid",
            Self::NotFound => "Not found",
            Self::MethodNotAllowed => "Method not allowed",
            Self::Unavailable => "The service is temporarily unavailable",
            Self::RateLimited => "Too many requests for this token",
            Self::BudgetExhausted => "The privacy budget of a data year this round reads is spent",
            Self::Internal => "Internal error",
            Self::NotReleased => "This period has not been released",
            Self::PeriodNotFinal => "This period cannot be published yet",
            Self::BatchWithdrawn => "This batch was withdrawn",
            Self::WrongRegionalKey => "The batch was pseudonymised under another regional key",
            Self::RegionalKeyNotRegistered => {
                "The check value of the region's key is not registered yet"
            }
        }
    }

    /// Whether a client should retry the same request later.
    pub fn is_retryable(self) -> bool {
        matches!(self, Self::Unavailable | Self::RateLimited | Self::Internal)
    }
}

/// One invalid field of one record of a batch.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct RecordError {
    /// Index of the record in the batch, from 0.
    pub record: u32,
    /// The field (CSV column) at fault.
    pub field: String,
    pub reason: String,
}

/// An RFC 7807 `application/problem+json` document with this service's extension members.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct Problem {
    #[serde(rename = "type")]
    pub type_uri: String,
    pub title: String,
    pub status: u16,
    pub detail: String,
    /// Per-record errors (`invalid-record`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub errors: Vec<RecordError>,
    /// The key a client should seal to instead (`retired-key`, `unknown-key`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub active_key_id: Option<String>,
    /// The budget partition that is spent (`budget-exhausted`): the data year, e.g. `2025`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub partition: Option<String>,
    /// The first date (ISO, UTC) on which the period can be or is planned to be published
    /// (`not-released`, `period-not-final`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub available_from: Option<String>,
    /// Seconds to wait before retrying (`rate-limited`, `unavailable`); also sent as `Retry-After`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry_after: Option<u64>,
}

impl Problem {
    pub fn new(kind: ProblemType, detail: impl Into<String>) -> Self {
        Self {
            type_uri: kind.uri(),
            title: kind.title().to_string(),
            status: kind.status(),
            detail: detail.into(),
            errors: Vec::new(),
            active_key_id: None,
            partition: None,
            available_from: None,
            retry_after: None,
        }
    }

    /// The known problem type, if the `type` is one of ours.
    pub fn kind(&self) -> Option<ProblemType> {
        ProblemType::from_uri(&self.type_uri)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slugs_roundtrip_and_match_serde() {
        for t in ProblemType::ALL {
            assert_eq!(ProblemType::from_uri(&t.uri()), Some(*t));
            assert_eq!(
                serde_json::to_value(t).expect("json"),
                serde_json::Value::String(t.slug().into())
            );
        }
    }
}
