//! The HTTP API. One table, [`endpoints`], describes every route: the router is built from it and so is
//! the OpenAPI document, so the two cannot drift apart.

use axum::routing::MethodRouter;
use axum::Router;
use kwm_schemas::problem::ProblemType;
use kwm_schemas::Role;
use schemars::{JsonSchema, Schema, SchemaGenerator};

use crate::http::startup::AppState;

pub mod admin;
pub mod audit;
pub mod batches;
pub mod custody;
pub mod health;
pub mod keys;
pub mod openapi;
pub mod releases;
pub mod research;

/// A JSON Schema producer, so the table can name body types without generics.
pub type SchemaFn = fn(&mut SchemaGenerator) -> Schema;

pub fn schema_of<T: JsonSchema>(g: &mut SchemaGenerator) -> Schema {
    g.subschema_for::<T>()
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Method {
    Get,
    Post,
    Delete,
}

impl Method {
    pub fn as_str(self) -> &'static str {
        match self {
            Method::Get => "get",
            Method::Post => "post",
            Method::Delete => "delete",
        }
    }
}

/// One documented response.
#[derive(Debug, Clone, Copy)]
pub struct Reply {
    pub status: u16,
    pub description: &'static str,
    pub body: Option<SchemaFn>,
    pub media_type: &'static str,
}

pub const fn json(status: u16, description: &'static str, body: SchemaFn) -> Reply {
    Reply {
        status,
        description,
        body: Some(body),
        media_type: "application/json",
    }
}

/// One documented query parameter, with the schema of the values the handler accepts (so that a
/// generated client, or a fuzzer, sends what the service takes).
#[derive(Debug, Clone, Copy)]
pub struct QueryParam {
    pub name: &'static str,
    pub description: &'static str,
    pub required: bool,
    pub schema: SchemaFn,
}

/// One path parameter. A name has one meaning wherever it appears in a path, so the parameters are
/// described once, in [`PATH_PARAMS`]; a path that names another one fails the document's test.
#[derive(Debug, Clone, Copy)]
pub struct PathParam {
    pub name: &'static str,
    pub description: &'static str,
    pub schema: SchemaFn,
}

/// Every path parameter of the API.
pub const PATH_PARAMS: &[PathParam] = &[
    PathParam {
        name: "batch_id",
        description: "the batch id (a UUID), as in the receipt",
        schema: schema_of::<uuid::Uuid>,
    },
    PathParam {
        name: "trajectory",
        description:
            "the trajectory pseudonym, 64 hex digits, as `kwm withdraw --trajectory` computes it",
        schema: schema_of::<kwm_schemas::Pseudonym>,
    },
    PathParam {
        name: "release",
        description:
            "a release id (a UUID), optionally with the format: `.json`, `.csv` or `.xlsx`",
        schema: releases::release_name_schema,
    },
    PathParam {
        name: "extract",
        description: "an extract id (a UUID) with `.csv`",
        schema: research::extract_name_schema,
    },
    PathParam {
        name: "scope",
        description: "whose release: a municipality's CBS code (`GM0748`) or `region`",
        schema: releases::scope_name_schema,
    },
    PathParam {
        name: "period",
        description:
            "the period (`2025`, `2025-H1`, `2025-Q3`), optionally with the format: `.json`, `.csv` \
             or `.xlsx`",
        schema: releases::period_name_schema,
    },
];

/// The description of the path parameter `name`, if the API has one by that name.
pub fn path_param(name: &str) -> Option<&'static PathParam> {
    PATH_PARAMS.iter().find(|p| p.name == name)
}

/// One route of the API.
#[derive(Debug, Clone)]
pub struct Endpoint {
    pub method: Method,
    /// Path in OpenAPI form (`/v1/batches/{batch_id}`), which is also axum 0.8's form.
    pub path: &'static str,
    pub operation_id: &'static str,
    pub summary: &'static str,
    /// Roles that may call it; empty means no token is needed.
    pub roles: &'static [Role],
    pub request: Option<SchemaFn>,
    /// Query parameters.
    pub query: &'static [QueryParam],
    pub replies: Vec<Reply>,
    /// Problem types this endpoint can answer besides the generic ones.
    pub problems: &'static [ProblemType],
    pub handler: fn() -> MethodRouter<AppState>,
}

/// Every endpoint of the API listener.
pub fn endpoints() -> Vec<Endpoint> {
    let mut all = Vec::new();
    all.extend(health::endpoints());
    all.extend(keys::endpoints());
    all.extend(batches::endpoints());
    all.extend(releases::endpoints());
    all.extend(custody::endpoints());
    all.extend(audit::endpoints());
    all.extend(admin::endpoints());
    all.extend(research::endpoints());
    all.extend(openapi::endpoints());
    all
}

/// The API router, built from [`endpoints`].
pub fn router() -> Router<AppState> {
    let mut router = Router::new();
    for e in endpoints() {
        router = router.route(e.path, (e.handler)());
    }
    router
}
