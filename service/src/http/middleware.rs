//! The API's own middleware for metrics: every request counted and timed by route template (never the
//! concrete path), and the router of the metrics listener.

use std::sync::Arc;
use std::time::Instant;

use axum::extract::{MatchedPath, Request, State};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use kwm_schemas::problem::ProblemType;
use prometheus::IntGauge;

use crate::metrics::Metrics;
use crate::store::Store;

/// The method as a label from a fixed set: a client that sends made-up methods must not create
/// series without bound.
pub fn method_label(m: &axum::http::Method) -> &'static str {
    use axum::http::Method;
    match *m {
        Method::GET => "GET",
        Method::HEAD => "HEAD",
        Method::POST => "POST",
        Method::PUT => "PUT",
        Method::DELETE => "DELETE",
        Method::PATCH => "PATCH",
        Method::OPTIONS => "OPTIONS",
        _ => "other",
    }
}

/// Middleware: counts and times every request by its route template (never the concrete path, which
/// could hold an id).
pub async fn track(State(metrics): State<Metrics>, req: Request, next: Next) -> Response {
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map(|m| m.as_str().to_string())
        .unwrap_or_else(|| "unmatched".into());
    let method = method_label(req.method());
    let start = Instant::now();
    let _in_flight = InFlight::enter(metrics.in_flight());
    let res = next.run(req).await;
    metrics.observe_request(
        &route,
        method,
        res.status().as_u16(),
        start.elapsed().as_secs_f64(),
        res.extensions().get::<ProblemType>().copied(),
    );
    res
}

/// Counts a request in flight until dropped, also when the request is cancelled.
struct InFlight<'a>(&'a IntGauge);

impl<'a> InFlight<'a> {
    fn enter(gauge: &'a IntGauge) -> Self {
        gauge.inc();
        Self(gauge)
    }
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.dec();
    }
}

/// The router of the metrics listener: `/metrics` only. The API listener never serves it.
pub fn router(metrics: Metrics, store: Arc<dyn Store>) -> Router {
    Router::new().route(
        "/metrics",
        get(move || {
            let m = metrics.clone();
            let store = store.clone();
            async move {
                m.observe_pool(store.as_ref());
                ([("content-type", "text/plain; version=0.0.4")], m.render()).into_response()
            }
        }),
    )
}
