//! Prometheus metrics, served on their own listener only: requests and latency per route and status,
//! uploads and records by outcome, and every rejection by problem type. Labels never carry an identifier
//! or a value.

use std::time::Instant;

use axum::extract::{MatchedPath, Request, State};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use kwm_schemas::problem::ProblemType;
use prometheus::{
    Encoder, HistogramOpts, HistogramVec, IntCounterVec, IntGauge, Opts, Registry, TextEncoder,
};

use crate::error::ApiError;
use crate::store::PutBatch;

#[derive(Debug, Clone)]
pub struct Metrics {
    registry: Registry,
    requests: IntCounterVec,
    latency: HistogramVec,
    uploads: IntCounterVec,
    records: IntCounterVec,
    rejections: IntCounterVec,
}

impl Metrics {
    pub fn new() -> anyhow::Result<Self> {
        let registry = Registry::new_custom(Some("kwm".into()), None)?;
        let requests = IntCounterVec::new(
            Opts::new(
                "http_requests_total",
                "HTTP requests by route, method and status",
            ),
            &["route", "method", "status"],
        )?;
        let latency = HistogramVec::new(
            HistogramOpts::new(
                "http_request_duration_seconds",
                "HTTP request latency by route",
            )
            .buckets(vec![
                0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
            ]),
            &["route", "method", "status"],
        )?;
        let uploads = IntCounterVec::new(
            Opts::new("uploads_total", "Uploaded batches by outcome"),
            &["outcome"],
        )?;
        let records = IntCounterVec::new(
            Opts::new("records_total", "Records of accepted batches by outcome"),
            &["outcome"],
        )?;
        let rejections = IntCounterVec::new(
            Opts::new("rejections_total", "Refused requests by problem type"),
            &["type"],
        )?;
        let build = IntGauge::with_opts(
            Opts::new("build_info", "Build information")
                .const_label("version", env!("CARGO_PKG_VERSION")),
        )?;
        build.set(1);
        registry.register(Box::new(requests.clone()))?;
        registry.register(Box::new(latency.clone()))?;
        registry.register(Box::new(uploads.clone()))?;
        registry.register(Box::new(records.clone()))?;
        registry.register(Box::new(rejections.clone()))?;
        registry.register(Box::new(build))?;
        for t in ProblemType::ALL {
            rejections.with_label_values(&[t.slug()]);
        }
        Ok(Self {
            registry,
            requests,
            latency,
            uploads,
            records,
            rejections,
        })
    }

    pub fn observe_upload(&self, outcome: &Result<PutBatch, ApiError>) {
        match outcome {
            Ok(PutBatch::Stored(r)) => {
                self.uploads.with_label_values(&["stored"]).inc();
                self.records
                    .with_label_values(&["stored"])
                    .inc_by(u64::from(r.stored));
                self.records
                    .with_label_values(&["corrected"])
                    .inc_by(u64::from(r.corrected));
                self.records
                    .with_label_values(&["unchanged"])
                    .inc_by(u64::from(r.unchanged));
            }
            Ok(PutBatch::Replayed(_)) => self.uploads.with_label_values(&["replayed"]).inc(),
            Err(_) => self.uploads.with_label_values(&["rejected"]).inc(),
        }
    }

    pub fn render(&self) -> String {
        let mut buf = Vec::new();
        if let Err(e) = TextEncoder::new().encode(&self.registry.gather(), &mut buf) {
            tracing::error!(error = %e, "encoding metrics failed");
        }
        String::from_utf8(buf).unwrap_or_default()
    }

    pub fn registry(&self) -> &Registry {
        &self.registry
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
    let method = req.method().as_str().to_string();
    let start = Instant::now();
    let res = next.run(req).await;
    let status = res.status().as_u16().to_string();
    let labels = [route.as_str(), method.as_str(), status.as_str()];
    metrics.requests.with_label_values(&labels).inc();
    metrics
        .latency
        .with_label_values(&labels)
        .observe(start.elapsed().as_secs_f64());
    if let Some(kind) = res.extensions().get::<ProblemType>() {
        metrics.rejections.with_label_values(&[kind.slug()]).inc();
    }
    res
}

/// The router of the metrics listener.
pub fn router(metrics: Metrics) -> Router {
    Router::new().route(
        "/metrics",
        get(move || {
            let m = metrics.clone();
            async move {
                (
                    [("content-type", "text/plain; version=0.0.4")],
                    m.render(),
                )
                    .into_response()
            }
        }),
    )
}
