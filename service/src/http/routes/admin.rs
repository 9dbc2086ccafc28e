//! `GET /v1/admin/index`: the operator's check that this instance's release index holds exactly the
//! stored rows (`kwm-service admin index verify` calls it). Counts and digests only: no row leaves.

use axum::extract::State;
use axum::routing::get;
use kwm_schemas::api::IndexCheck;
use kwm_schemas::Role;
use tracing::instrument;

use super::{json, schema_of, Endpoint, Method};
use crate::app::access::Caller;
use crate::app::error::ApiError;
use crate::http::problem::AppJson;
use crate::http::startup::AppState;

pub fn endpoints() -> Vec<Endpoint> {
    vec![Endpoint {
        method: Method::Get,
        path: "/v1/admin/index",
        operation_id: "getIndexCheck",
        summary:
            "Compares this instance's release index with a fresh load of the stored rows at the \
                  same change mark: row counts and digests per start year",
        roles: &[Role::Admin],
        request: None,
        query: &[],
        replies: vec![json(
            200,
            "the comparison (`consistent` false names the years that differ)",
            schema_of::<IndexCheck>,
        )],
        problems: &[],
        handler: || get(get_index_check),
    }]
}

#[instrument(skip_all)]
async fn get_index_check(
    State(state): State<AppState>,
    caller: Caller,
) -> Result<AppJson<IndexCheck>, ApiError> {
    caller.require(&[Role::Admin])?;
    let check = state.index.verify(state.store.as_ref()).await?;
    if !check.consistent {
        tracing::error!(
            mark = check.mark,
            index_rows = check.index_rows,
            stored_rows = check.stored_rows,
            "the release index differs from the stored rows"
        );
    }
    Ok(AppJson(check))
}
