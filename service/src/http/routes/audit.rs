//! `GET /v1/audit`: the audit chain, paged. The admin sees every entry; a provider sees the entries
//! about its own data only, with the operator named by role (`operator`), not by login.

use axum::extract::rejection::QueryRejection;
use axum::extract::{Query, State};
use axum::routing::get;
use kwm_schemas::api::AuditPage;
use kwm_schemas::problem::ProblemType;
use kwm_schemas::Role;
use schemars::{json_schema, Schema, SchemaGenerator};
use serde::Deserialize;
use tracing::instrument;

use super::{json, schema_of, Endpoint, Method, QueryParam};
use crate::app::access::Caller;
use crate::app::audit_trail::{to_provider_record, to_record};
use crate::app::error::ApiError;
use crate::http::problem::AppJson;
use crate::http::startup::AppState;

/// Entries per page unless `limit` says otherwise ...
pub const DEFAULT_LIMIT: u32 = 100;
/// ... and at most.
pub const MAX_LIMIT: u32 = 1000;

pub fn endpoints() -> Vec<Endpoint> {
    vec![Endpoint {
        method: Method::Get,
        path: "/v1/audit",
        operation_id: "getAudit",
        summary: "Audit entries after a sequence number, oldest first: every entry for the admin, \
                  the entries about its own data for a provider",
        roles: &[Role::Admin, Role::Provider],
        request: None,
        query: &[
            QueryParam {
                name: "after",
                description: "entries with a higher sequence number (default 0: from the start); \
                              pass the previous page's next_after",
                required: false,
                schema: after_schema,
            },
            QueryParam {
                name: "limit",
                description: "entries per page, 1..1000 (default 100)",
                required: false,
                schema: limit_schema,
            },
        ],
        replies: vec![json(200, "a page of entries", schema_of::<AuditPage>)],
        problems: &[ProblemType::BadRequest],
        handler: || get(get_audit),
    }]
}

fn after_schema(_: &mut SchemaGenerator) -> Schema {
    json_schema!({ "type": "integer", "format": "int64", "minimum": 0, "maximum": i64::MAX, "default": 0 })
}

fn limit_schema(_: &mut SchemaGenerator) -> Schema {
    json_schema!({ "type": "integer", "minimum": 1, "maximum": MAX_LIMIT, "default": DEFAULT_LIMIT })
}

#[derive(Debug, Deserialize)]
struct AuditQuery {
    after: Option<i64>,
    limit: Option<u32>,
}

#[instrument(skip_all, fields(role = %caller.role))]
async fn get_audit(
    State(state): State<AppState>,
    caller: Caller,
    query: Result<Query<AuditQuery>, QueryRejection>,
) -> Result<AppJson<AuditPage>, ApiError> {
    caller.require(&[Role::Admin, Role::Provider])?;
    let bad = |d: String| ApiError::new(ProblemType::BadRequest, d);
    let Query(q) = query.map_err(|e| bad(format!("query string: {e}")))?;
    let after = q.after.unwrap_or(0);
    if after < 0 {
        return Err(bad("after is a sequence number, 0 or more".into()));
    }
    let limit = q.limit.unwrap_or(DEFAULT_LIMIT);
    if !(1..=MAX_LIMIT).contains(&limit) {
        return Err(bad(format!("limit is 1..{MAX_LIMIT}")));
    }
    let provider = match caller.role {
        Role::Provider => Some(caller.provider()?),
        _ => None,
    };
    // One more than asked: tells whether another page follows.
    let mut entries = state.store.list_audit(after, limit + 1, provider).await?;
    let more = entries.len() > limit as usize;
    entries.truncate(limit as usize);
    let next_after = if more {
        entries.last().map(|e| e.seq)
    } else {
        None
    };
    Ok(AppJson(AuditPage {
        entries: entries
            .iter()
            .map(if provider.is_some() {
                to_provider_record
            } else {
                to_record
            })
            .collect(),
        next_after,
    }))
}
