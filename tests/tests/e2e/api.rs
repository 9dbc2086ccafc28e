//! The API surface that needs no upload: health, readiness, the OpenAPI document, authentication and
//! problem documents for unknown paths.

use kwm_schemas::problem::{Problem, ProblemType};
use kwm_schemas::Role;

use crate::helpers::spawn_app;

async fn problem_of(res: reqwest::Response) -> (u16, Problem) {
    let status = res.status().as_u16();
    let ct = res
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_string();
    assert_eq!(ct, "application/problem+json", "status {status}");
    (status, res.json().await.expect("a problem document"))
}

#[tokio::test]
async fn health_and_readiness_answer() {
    let app = spawn_app().await;
    let c = reqwest::Client::new();
    let h = c
        .get(format!("{}/healthz", app.base_url))
        .send()
        .await
        .expect("healthz");
    assert_eq!(h.status(), 200);
    let r = c
        .get(format!("{}/readyz", app.base_url))
        .send()
        .await
        .expect("readyz");
    assert_eq!(r.status(), 200);
    let body: serde_json::Value = r.json().await.expect("json");
    assert_eq!(body["database"], "ok");
}

#[tokio::test]
async fn openapi_document_lists_every_endpoint_with_roles() {
    let app = spawn_app().await;
    let doc: serde_json::Value = reqwest::get(format!("{}/v1/openapi.json", app.base_url))
        .await
        .expect("openapi")
        .json()
        .await
        .expect("json");
    assert_eq!(doc["openapi"], "3.1.0");
    for (path, method) in [
        ("/v1/keys", "get"),
        ("/v1/me", "get"),
        ("/v1/batches", "post"),
        ("/v1/batches", "get"),
        ("/v1/batches/{batch_id}", "get"),
        ("/healthz", "get"),
        ("/readyz", "get"),
        ("/v1/openapi.json", "get"),
    ] {
        assert!(
            doc["paths"][path][method].is_object(),
            "{method} {path} is not documented"
        );
    }
    assert_eq!(
        doc["paths"]["/v1/batches"]["post"]["x-roles"][0],
        "provider"
    );
    assert!(doc["components"]["schemas"]["SealedBatch"].is_object());
}

#[tokio::test]
async fn missing_unknown_and_wrong_role_tokens_get_problems() {
    let app = spawn_app().await;
    let c = reqwest::Client::new();
    let url = format!("{}/v1/batches", app.base_url);

    let (status, p) = problem_of(c.get(&url).send().await.expect("request")).await;
    assert_eq!(
        (status, p.kind()),
        (401, Some(ProblemType::Unauthenticated))
    );

    let (status, p) = problem_of(
        c.get(&url)
            .bearer_auth("kwm_not-a-real-token")
            .send()
            .await
            .expect("request"),
    )
    .await;
    assert_eq!(
        (status, p.kind()),
        (401, Some(ProblemType::Unauthenticated))
    );

    let municipality = app.issue_token(Role::Municipality, Some("GM0748")).await;
    let (status, p) = problem_of(
        c.get(&url)
            .bearer_auth(&municipality)
            .send()
            .await
            .expect("request"),
    )
    .await;
    assert_eq!((status, p.kind()), (403, Some(ProblemType::Forbidden)));

    let me: serde_json::Value = c
        .get(format!("{}/v1/me", app.base_url))
        .bearer_auth(&municipality)
        .send()
        .await
        .expect("request")
        .json()
        .await
        .expect("json");
    assert_eq!(me["role"], "municipality");
    assert_eq!(me["scope"], "GM0748");
    app.assert_logs_free_of(&[]);
}

#[tokio::test]
async fn unknown_paths_and_bad_json_are_problems() {
    let app = spawn_app().await;
    let c = reqwest::Client::new();
    let (status, p) = problem_of(
        c.get(format!("{}/v1/nothing-here", app.base_url))
            .send()
            .await
            .expect("request"),
    )
    .await;
    assert_eq!((status, p.kind()), (404, Some(ProblemType::NotFound)));

    let provider = app.issue_token(Role::Provider, Some("12345678")).await;
    let (status, p) = problem_of(
        c.post(format!("{}/v1/batches", app.base_url))
            .bearer_auth(&provider)
            .header("content-type", "application/json")
            .body("{\"header\": 3}")
            .send()
            .await
            .expect("request"),
    )
    .await;
    assert_eq!((status, p.kind()), (400, Some(ProblemType::BadRequest)));
}
