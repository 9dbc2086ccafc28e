//! `GET /healthz` (the process is up) and `GET /readyz` (the database answers).

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use kwm_schemas::api::Health;

use super::{json, schema_of, Endpoint, Method};
use crate::http::problem::AppJson;
use crate::http::startup::AppState;

pub fn endpoints() -> Vec<Endpoint> {
    vec![
        Endpoint {
            method: Method::Get,
            path: "/healthz",
            operation_id: "healthz",
            summary: "Liveness: the process answers",
            roles: &[],
            request: None,
            query: &[],
            replies: vec![json(200, "alive", schema_of::<Health>)],
            problems: &[],
            handler: || get(healthz),
        },
        Endpoint {
            method: Method::Get,
            path: "/readyz",
            operation_id: "readyz",
            summary: "Readiness: the database answers",
            roles: &[],
            request: None,
            query: &[],
            replies: vec![
                json(200, "ready", schema_of::<Health>),
                json(503, "the database does not answer", schema_of::<Health>),
            ],
            problems: &[],
            handler: || get(readyz),
        },
    ]
}

async fn healthz() -> AppJson<Health> {
    AppJson(Health {
        status: "ok".into(),
        database: None,
    })
}

async fn readyz(State(state): State<AppState>) -> Response {
    match state.store.ping().await {
        Ok(()) => AppJson(Health {
            status: "ready".into(),
            database: Some("ok".into()),
        })
        .into_response(),
        Err(e) => {
            tracing::warn!(error = %e, "readiness check failed");
            (
                StatusCode::SERVICE_UNAVAILABLE,
                AppJson(Health {
                    status: "unavailable".into(),
                    database: Some("unreachable".into()),
                }),
            )
                .into_response()
        }
    }
}
