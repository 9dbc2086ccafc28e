//! `GET /v1/openapi.json`: the OpenAPI 3.1 document, generated from the endpoint table and the schemas of
//! the wire types (JSON Schema 2020-12, which OpenAPI 3.1 uses as is).

use std::collections::BTreeMap;

use axum::routing::get;
use kwm_schemas::problem::{Problem, ProblemType};
use schemars::generate::SchemaSettings;
use serde_json::{json, Map, Value};

use super::{Endpoint, Method};
use crate::error::AppJson;

pub fn endpoints() -> Vec<Endpoint> {
    vec![Endpoint {
        method: Method::Get,
        path: "/v1/openapi.json",
        operation_id: "openapi",
        summary: "This OpenAPI 3.1 document",
        roles: &[],
        request: None,
        query: &[],
        replies: vec![],
        problems: &[],
        handler: || get(|| async { AppJson(document()) }),
    }]
}

/// Builds the document.
pub fn document() -> Value {
    let mut generator = SchemaSettings::draft2020_12()
        .with(|s| s.definitions_path = "/components/schemas".into())
        .into_generator();
    let problem_schema = generator.subschema_for::<Problem>().to_value();
    let mut paths: BTreeMap<&str, Map<String, Value>> = BTreeMap::new();

    for e in super::endpoints() {
        let mut responses = Map::new();
        for r in &e.replies {
            // Replies with one status merge: several media types, or alternative bodies (oneOf).
            let resp = responses
                .entry(r.status.to_string())
                .or_insert_with(|| json!({ "description": r.description }));
            if resp["description"] != r.description {
                let joined = format!(
                    "{}; or {}",
                    resp["description"].as_str().unwrap_or(""),
                    r.description
                );
                resp["description"] = Value::String(joined);
            }
            let (media, schema) = match r.body {
                Some(_) if r.status >= 400 => ("application/problem+json", problem_schema.clone()),
                Some(body) => (r.media_type, body(&mut generator).to_value()),
                None => (
                    r.media_type,
                    json!({ "type": "string", "format": "binary" }),
                ),
            };
            let content = resp
                .as_object_mut()
                .map(|o| o.entry("content").or_insert_with(|| json!({})));
            if let Some(content) = content {
                match content.get_mut(media) {
                    Some(existing) => {
                        let old = existing["schema"].take();
                        existing["schema"] = json!({ "oneOf": [old, schema] });
                    }
                    None => content[media] = json!({ "schema": schema }),
                }
            }
        }
        let mut problems: Vec<ProblemType> = e.problems.to_vec();
        if !e.roles.is_empty() {
            problems.extend([ProblemType::Unauthenticated, ProblemType::Forbidden]);
        }
        problems.push(ProblemType::Internal);
        // Group the problem types by status: one response entry per status, listing the types.
        let mut by_status: BTreeMap<u16, Vec<&str>> = BTreeMap::new();
        for p in &problems {
            by_status.entry(p.status()).or_default().push(p.slug());
        }
        for (status, slugs) in by_status {
            let entry = responses
                .entry(status.to_string())
                .or_insert_with(|| json!({ "description": "" }));
            entry["description"] = Value::String(format!(
                "problem document; type urn:kwm:problem:{{{}}}",
                slugs.join(",")
            ));
            entry["content"] =
                json!({ "application/problem+json": { "schema": problem_schema.clone() } });
        }
        let mut op = json!({
            "operationId": e.operation_id,
            "summary": e.summary,
            "responses": responses,
            "x-roles": e.roles.iter().map(|r| r.as_str()).collect::<Vec<_>>(),
        });
        op["security"] = if e.roles.is_empty() {
            json!([])
        } else {
            json!([{ "bearer": [] }])
        };
        let params: Vec<Value> = e
            .path
            .split('/')
            .filter_map(|seg| seg.strip_prefix('{').and_then(|s| s.strip_suffix('}')))
            .map(|name| json!({ "name": name, "in": "path", "required": true, "schema": { "type": "string" } }))
            .collect();
        let mut params = params;
        params.extend(e.query.iter().map(|q| {
            json!({
                "name": q.name,
                "in": "query",
                "required": q.required,
                "description": q.description,
                "schema": { "type": "string" }
            })
        }));
        if !params.is_empty() {
            op["parameters"] = Value::Array(params);
        }
        if let Some(req) = e.request {
            op["requestBody"] = json!({
                "required": true,
                "content": { "application/json": { "schema": req(&mut generator).to_value() } }
            });
        }
        paths
            .entry(e.path)
            .or_default()
            .insert(e.method.as_str().to_string(), op);
    }

    let schemas = generator.take_definitions(true);
    json!({
        "openapi": "3.1.0",
        "info": {
            "title": "Kwaliteitsmonitor",
            "version": env!("CARGO_PKG_VERSION"),
            "description": "Custodian service for youth-care outcome data: sealed uploads by providers, \
                            k-anonymous and differentially private releases for municipalities and researchers."
        },
        "paths": paths,
        "components": {
            "schemas": schemas,
            "securitySchemes": { "bearer": { "type": "http", "scheme": "bearer" } }
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_endpoint_is_documented_with_its_roles() {
        let doc = document();
        assert_eq!(doc["openapi"], "3.1.0");
        for e in super::super::endpoints() {
            let op = &doc["paths"][e.path][e.method.as_str()];
            assert!(op.is_object(), "{} {} missing", e.method.as_str(), e.path);
            assert_eq!(op["x-roles"].as_array().map(Vec::len), Some(e.roles.len()));
        }
        // Every $ref resolves to a component.
        let text = doc.to_string();
        for part in text.split("\"$ref\":\"#/components/schemas/").skip(1) {
            let name = part.split('"').next().unwrap_or_default();
            assert!(
                doc["components"]["schemas"][name].is_object(),
                "dangling ref {name}"
            );
        }
    }
}
