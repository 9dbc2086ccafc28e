//! The extractors that check a caller's bearer token, role and scope once, before any handler runs
//! (what a role may do is `app::access`'s). Tokens are never logged.

use axum::extract::FromRequestParts;
use axum::http::header::AUTHORIZATION;
use axum::http::request::Parts;
use kwm_schemas::AgbCode;

use crate::app::access::{token_hash, Caller};
use crate::app::error::ApiError;
use crate::http::startup::AppState;
use crate::store::StoreError;

impl FromRequestParts<AppState> for Caller {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        let header = parts
            .headers
            .get(AUTHORIZATION)
            .ok_or_else(ApiError::unauthenticated)?;
        let token = header
            .to_str()
            .ok()
            .and_then(|h| h.strip_prefix("Bearer "))
            .map(str::trim)
            .filter(|t| !t.is_empty())
            .ok_or_else(ApiError::unauthenticated)?;
        let record = match state.store.get_token(&token_hash(token)).await {
            Ok(Some(r)) => r,
            Ok(None) => return Err(ApiError::invalid_token()),
            Err(StoreError::Unavailable(e)) => {
                return Err(ApiError::Unavailable(StoreError::Unavailable(e)))
            }
            Err(e) => return Err(e.into()),
        };
        if record.revoked_at.is_some() {
            return Err(ApiError::invalid_token());
        }
        if let Err(wait) = state.rate_limiter.check(record.id) {
            return Err(ApiError::RateLimited {
                retry_after: wait.as_secs().max(1),
            });
        }
        tracing::Span::current().record("role", record.role.as_str());
        Ok(Caller {
            token_id: record.id,
            role: record.role,
            scope: record.scope,
        })
    }
}

/// A caller that must be a provider; carries its AGB code.
#[derive(Debug, Clone, Copy)]
pub struct ProviderCaller(pub AgbCode);

impl FromRequestParts<AppState> for ProviderCaller {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        let caller = Caller::from_request_parts(parts, state).await?;
        Ok(Self(caller.provider()?))
    }
}

/// A caller that must be a provider, with its token (id, role, scope) for the audit chain.
#[derive(Debug, Clone)]
pub struct ProviderToken {
    pub agb: AgbCode,
    pub caller: Caller,
}

impl FromRequestParts<AppState> for ProviderToken {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        let caller = Caller::from_request_parts(parts, state).await?;
        Ok(Self {
            agb: caller.provider()?,
            caller,
        })
    }
}
