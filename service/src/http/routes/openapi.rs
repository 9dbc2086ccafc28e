//! `GET /v1/openapi.json`: the OpenAPI 3.1 document, generated from the endpoint table and the schemas of
//! the wire types (JSON Schema 2020-12, which OpenAPI 3.1 uses as is).

use std::collections::BTreeMap;

use axum::routing::get;
use kwm_schemas::problem::{Problem, ProblemType};
use schemars::generate::SchemaSettings;
use schemars::{json_schema, Schema, SchemaGenerator};
use serde_json::{json, Map, Value};

use super::{json, Endpoint, Method};
use crate::http::problem::{AppJson, PROBLEM_JSON};

pub fn endpoints() -> Vec<Endpoint> {
    vec![Endpoint {
        method: Method::Get,
        path: "/v1/openapi.json",
        operation_id: "openapi",
        summary: "This OpenAPI 3.1 document",
        roles: &[],
        request: None,
        query: &[],
        replies: vec![json(200, "the document", document_schema)],
        problems: &[],
        handler: || get(|| async { AppJson(document()) }),
    }]
}

fn document_schema(_: &mut SchemaGenerator) -> Schema {
    json_schema!({
        "type": "object",
        "required": ["openapi", "info", "paths", "components"],
        "description": "an OpenAPI 3.1 document"
    })
}

/// Problem types that every operation can answer: the per-token rate limit (429), the database or the
/// request deadline (503), and an internal error (500).
const EVERY_OPERATION: &[ProblemType] = &[
    ProblemType::RateLimited,
    ProblemType::Unavailable,
    ProblemType::Internal,
];

/// Problem types of every operation that takes a token.
const WITH_TOKEN: &[ProblemType] = &[ProblemType::Unauthenticated, ProblemType::Forbidden];

/// Problem types of every operation that takes a request body: a body that is not the documented
/// JSON, or over the size limit.
const WITH_BODY: &[ProblemType] = &[ProblemType::BadRequest, ProblemType::TooLarge];

/// Problem types of every operation with parameters: a value that does not parse.
const WITH_PARAMETERS: &[ProblemType] = &[ProblemType::BadRequest];

/// The problem types an endpoint can answer: its own and those that follow from its shape.
pub fn problem_types(e: &Endpoint) -> Vec<ProblemType> {
    let mut out: Vec<ProblemType> = e.problems.to_vec();
    if !e.roles.is_empty() {
        out.extend_from_slice(WITH_TOKEN);
    }
    if e.request.is_some() {
        out.extend_from_slice(WITH_BODY);
    }
    if !e.query.is_empty() || e.path.contains('{') {
        out.extend_from_slice(WITH_PARAMETERS);
    }
    out.extend_from_slice(EVERY_OPERATION);
    let mut seen = Vec::new();
    out.retain(|p| {
        let new = !seen.contains(p);
        seen.push(*p);
        new
    });
    out
}

/// One response of an operation while it is assembled: a status may carry several media types, and
/// several bodies of one media type (`oneOf`).
#[derive(Default)]
struct ResponseDoc {
    descriptions: Vec<String>,
    content: BTreeMap<&'static str, Vec<Value>>,
    headers: BTreeMap<&'static str, Value>,
}

impl ResponseDoc {
    fn add(&mut self, description: String, media: &'static str, schema: Value) {
        if !self.descriptions.contains(&description) {
            self.descriptions.push(description);
        }
        self.content.entry(media).or_default().push(schema);
    }

    fn render(self) -> Value {
        let content: Map<String, Value> = self
            .content
            .into_iter()
            .map(|(media, mut schemas)| {
                let schema = if schemas.len() == 1 {
                    schemas.remove(0)
                } else {
                    json!({ "oneOf": schemas })
                };
                (media.to_string(), json!({ "schema": schema }))
            })
            .collect();
        let mut out = json!({ "description": self.descriptions.join("; or ") });
        if !content.is_empty() {
            out["content"] = Value::Object(content);
        }
        if !self.headers.is_empty() {
            out["headers"] = json!(self.headers);
        }
        out
    }
}

/// The headers a problem response of this status always carries.
fn problem_headers(status: u16, kinds: &[ProblemType]) -> Vec<(&'static str, Value)> {
    let mut out = Vec::new();
    if status == 401 {
        out.push((
            "WWW-Authenticate",
            json!({
                "description": "RFC 6750: `Bearer realm=\"kwm\"`, with `error=\"invalid_token\"` when a \
                                token was presented but is not valid",
                "required": true,
                "schema": { "type": "string", "pattern": "^Bearer( |$)" }
            }),
        ));
    }
    // Every retryable problem but the internal one says when to retry.
    if kinds
        .iter()
        .any(|k| k.is_retryable() && *k != ProblemType::Internal)
    {
        out.push((
            "Retry-After",
            json!({
                "description": "seconds to wait before retrying",
                "required": true,
                "schema": { "type": "string", "pattern": "^[0-9]+$" }
            }),
        ));
    }
    out
}

/// The schema of a problem document of one status: the `Problem` schema, with `type` one of the
/// listed problem types, so that a client knows every failure it must handle.
fn problem_schema(problem_ref: &Value, status: u16, kinds: &[ProblemType]) -> Value {
    let uris: Vec<String> = kinds.iter().map(|k| k.uri()).collect();
    json!({
        "allOf": [
            problem_ref,
            {
                "properties": {
                    "type": { "enum": uris },
                    "status": { "const": status }
                }
            }
        ]
    })
}

fn parameters(e: &Endpoint, generator: &mut SchemaGenerator) -> Vec<Value> {
    let mut params: Vec<Value> = e
        .path
        .split('/')
        .filter_map(|seg| seg.strip_prefix('{').and_then(|s| s.strip_suffix('}')))
        .map(|name| match super::path_param(name) {
            Some(p) => json!({
                "name": name,
                "in": "path",
                "required": true,
                "description": p.description,
                "schema": (p.schema)(generator).to_value()
            }),
            // Caught by the test below; the document stays valid meanwhile.
            None => json!({ "name": name, "in": "path", "required": true, "schema": { "type": "string" } }),
        })
        .collect();
    params.extend(e.query.iter().map(|q| {
        json!({
            "name": q.name,
            "in": "query",
            "required": q.required,
            "description": q.description,
            "schema": (q.schema)(generator).to_value()
        })
    }));
    params
}

/// Builds the document.
pub fn document() -> Value {
    let mut generator = SchemaSettings::draft2020_12()
        .with(|s| s.definitions_path = "/components/schemas".into())
        .into_generator();
    let problem_ref = generator.subschema_for::<Problem>().to_value();
    let mut paths: BTreeMap<&str, Map<String, Value>> = BTreeMap::new();

    for e in super::endpoints() {
        let mut responses: BTreeMap<u16, ResponseDoc> = BTreeMap::new();
        for r in &e.replies {
            let schema = match r.body {
                Some(body) => body(&mut generator).to_value(),
                None => json!({ "type": "string", "format": "binary" }),
            };
            responses.entry(r.status).or_default().add(
                r.description.to_string(),
                r.media_type,
                schema,
            );
        }
        // One response entry per status, listing the problem types it can carry.
        let mut by_status: BTreeMap<u16, Vec<ProblemType>> = BTreeMap::new();
        for p in problem_types(&e) {
            by_status.entry(p.status()).or_default().push(p);
        }
        for (status, kinds) in by_status {
            let slugs: Vec<&str> = kinds.iter().map(|k| k.slug()).collect();
            let resp = responses.entry(status).or_default();
            resp.add(
                format!(
                    "problem document; type urn:kwm:problem:{{{}}}",
                    slugs.join(",")
                ),
                PROBLEM_JSON,
                problem_schema(&problem_ref, status, &kinds),
            );
            for (name, header) in problem_headers(status, &kinds) {
                resp.headers.insert(name, header);
            }
        }
        let responses: Map<String, Value> = responses
            .into_iter()
            .map(|(status, r)| (status.to_string(), r.render()))
            .collect();
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
        let params = parameters(&e, &mut generator);
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
                            k-anonymous and differentially private releases for municipalities and researchers. \
                            Every failure is an RFC 7807 problem document (`application/problem+json`) whose \
                            `type` is one of those listed for its status."
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
    fn op<'a>(doc: &'a Value, method: &str, path: &str) -> &'a Value {
        &doc["paths"][path][method]
    }

    fn problem_types_of(response: &Value) -> Vec<String> {
        response["content"]["application/problem+json"]["schema"]["allOf"][1]["properties"]["type"]
            ["enum"]
            .as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|v| v.as_str())
                    .map(|s| s.trim_start_matches("urn:kwm:problem:").to_string())
                    .collect()
            })
            .unwrap_or_default()
    }

    #[test]
    fn every_operation_documents_rate_limits_and_every_401_its_challenge() {
        let doc = document();
        for e in super::super::endpoints() {
            let o = op(&doc, e.method.as_str(), e.path);
            let name = format!("{} {}", e.method.as_str(), e.path);
            let r429 = &o["responses"]["429"];
            assert_eq!(problem_types_of(r429), ["rate-limited"], "{name}");
            assert_eq!(
                r429["headers"]["Retry-After"]["required"], true,
                "{name}: 429 without Retry-After"
            );
            assert!(
                o["responses"]["503"]["headers"]["Retry-After"].is_object(),
                "{name}"
            );
            if e.roles.is_empty() {
                assert!(o["responses"]["401"].is_null(), "{name}: public, no 401");
            } else {
                let r401 = &o["responses"]["401"];
                assert_eq!(problem_types_of(r401), ["unauthenticated"], "{name}");
                assert_eq!(
                    r401["headers"]["WWW-Authenticate"]["required"], true,
                    "{name}: 401 without WWW-Authenticate"
                );
            }
        }
    }

    #[test]
    fn the_answers_the_handlers_give_are_documented() {
        let doc = document();
        // A malformed batch id is a bad request.
        let get_batch = op(&doc, "get", "/v1/batches/{batch_id}");
        assert!(problem_types_of(&get_batch["responses"]["400"]).contains(&"bad-request".into()));
        // An upload's 400s include a body that is not a sealed batch.
        let upload = op(&doc, "post", "/v1/batches");
        let upload_400 = problem_types_of(&upload["responses"]["400"]);
        for t in ["bad-request", "unknown-key", "unsupported-version"] {
            assert!(upload_400.contains(&t.to_string()), "{t} in {upload_400:?}");
        }
        assert_eq!(problem_types_of(&upload["responses"]["413"]), ["too-large"]);
        // The document answers 200 with itself.
        let me = op(&doc, "get", "/v1/openapi.json");
        assert!(me["responses"]["200"]["content"]["application/json"].is_object());
        // readyz keeps its JSON 503 next to the problem documents of a deadline.
        let ready = &op(&doc, "get", "/readyz")["responses"]["503"]["content"];
        assert!(
            ready["application/json"].is_object() && ready["application/problem+json"].is_object()
        );
    }

    #[test]
    fn parameters_name_their_schemas() {
        let doc = document();
        let schemas = &doc["components"]["schemas"];
        let mut seen = 0;
        for e in super::super::endpoints() {
            for seg in e.path.split('/') {
                if let Some(name) = seg.strip_prefix('{').and_then(|s| s.strip_suffix('}')) {
                    assert!(
                        super::super::path_param(name).is_some(),
                        "{}: path parameter {name} is not in PATH_PARAMS",
                        e.path
                    );
                }
            }
            let params = op(&doc, e.method.as_str(), e.path)["parameters"]
                .as_array()
                .cloned()
                .unwrap_or_default();
            for p in params {
                seen += 1;
                // A $ref to a wire type, or a constrained value: never a bare string.
                let mut schema = p["schema"].clone();
                if let Some(r) = schema["$ref"].as_str() {
                    schema = schemas[r.trim_start_matches("#/components/schemas/")].clone();
                }
                let constrained = schema["pattern"].is_string()
                    || schema["format"].is_string()
                    || (schema["type"] == "integer" && schema["minimum"].is_number());
                assert!(constrained, "{} {}: {p}", e.path, p["name"]);
            }
        }
        assert!(seen >= 8, "{seen} parameters");
        let find = |path: &str, method: &str, name: &str| -> Value {
            op(&doc, method, path)["parameters"]
                .as_array()
                .and_then(|a| a.iter().find(|p| p["name"] == name).cloned())
                .unwrap_or(Value::Null)
        };
        assert_eq!(
            find("/v1/releases", "get", "period")["schema"]["$ref"],
            "#/components/schemas/Period"
        );
        assert_eq!(
            find("/v1/releases", "get", "scope")["schema"]["$ref"],
            "#/components/schemas/ReleaseScope"
        );
        assert_eq!(
            find("/v1/trajectories/{trajectory}", "delete", "trajectory")["schema"]["$ref"],
            "#/components/schemas/Pseudonym"
        );
        assert_eq!(
            find("/v1/batches/{batch_id}", "get", "batch_id")["schema"]["format"],
            "uuid"
        );
        let limit = find("/v1/audit", "get", "limit");
        assert_eq!(
            (&limit["schema"]["minimum"], &limit["schema"]["maximum"]),
            (&json!(1), &json!(1000))
        );
        // The upload's header: the one version, and created_at in the accepted years.
        let header = &schemas["BatchHeader"]["properties"];
        assert_eq!(header["version"]["const"], 1);
        assert_eq!(header["created_at"]["format"], "date-time");
    }
}
