//! `GET /v1/keys` (the service's HPKE keys and their states) and `GET /v1/me` (who a token is).

use axum::extract::State;
use axum::routing::get;
use kwm_schemas::api::{KeysResponse, TokenInfo};
use kwm_schemas::envelope::PROTOCOL_VERSION;
use kwm_schemas::problem::ProblemType;
use kwm_schemas::Role;

use super::{json, schema_of, Endpoint, Method};
use crate::app::access::Caller;
use crate::app::error::ApiError;
use crate::http::problem::AppJson;
use crate::http::startup::AppState;

/// The HPKE suite of protocol version 1, as published.
pub const SUITE: &str = "DHKEM(X25519, HKDF-SHA256), HKDF-SHA256, AES-256-GCM";

pub fn endpoints() -> Vec<Endpoint> {
    vec![
        Endpoint {
            method: Method::Get,
            path: "/v1/keys",
            operation_id: "getKeys",
            summary: "The service's HPKE public keys with their states; seal to the active one",
            roles: &[],
            request: None,
            query: &[],
            replies: vec![json(200, "the keys", schema_of::<KeysResponse>)],
            problems: &[ProblemType::Unavailable],
            handler: || get(get_keys),
        },
        Endpoint {
            method: Method::Get,
            path: "/v1/me",
            operation_id: "getMe",
            summary: "The role and scope of the presented token",
            roles: &[
                Role::Provider,
                Role::Municipality,
                Role::Region,
                Role::Researcher,
                Role::Admin,
            ],
            request: None,
            query: &[],
            replies: vec![json(
                200,
                "the token's role and scope",
                schema_of::<TokenInfo>,
            )],
            problems: &[],
            handler: || get(get_me),
        },
    ]
}

async fn get_keys(State(state): State<AppState>) -> Result<AppJson<KeysResponse>, ApiError> {
    // The keys in memory: reloaded off the request path (timer and SIGHUP), never per request.
    let active_key_id = state.keyring.active_key_id().ok_or_else(|| {
        ApiError::new(
            ProblemType::Unavailable,
            "the service has no active key right now",
        )
    })?;
    Ok(AppJson(KeysResponse {
        protocol_version: PROTOCOL_VERSION,
        suite: SUITE.to_string(),
        active_key_id,
        keys: state.keyring.public_infos(),
    }))
}

async fn get_me(caller: Caller) -> AppJson<TokenInfo> {
    AppJson(TokenInfo {
        role: caller.role,
        scope: caller.scope,
    })
}
