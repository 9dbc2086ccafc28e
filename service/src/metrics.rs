//! Prometheus metrics, served on their own listener only: requests and latency per route and status,
//! uploads and records by outcome, every rejection by problem type, releases and their cells, the
//! privacy budget, and the database pool. Labels never carry an identifier or a value. The API's
//! middleware that feeds the request series and the metrics listener's router are `http::middleware`'s.

use kwm_schemas::problem::ProblemType;
use kwm_schemas::release::Release;
use prometheus::{
    Encoder, GaugeVec, HistogramOpts, HistogramVec, IntCounterVec, IntGauge, Opts, Registry,
    TextEncoder,
};

use crate::store::{PutBatch, Store};

#[derive(Debug, Clone)]
pub struct Metrics {
    registry: Registry,
    requests: IntCounterVec,
    latency: HistogramVec,
    uploads: IntCounterVec,
    records: IntCounterVec,
    rejections: IntCounterVec,
    releases: IntCounterVec,
    release_cells: IntCounterVec,
    release_compute: prometheus::Histogram,
    epsilon_spent: GaugeVec,
    epsilon_remaining: GaugeVec,
    db_connections: prometheus::IntGaugeVec,
    in_flight: IntGauge,
    audit_failures: IntCounterVec,
    index_rows: IntGauge,
    index_sync_failures: prometheus::IntCounter,
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
        let releases = IntCounterVec::new(
            Opts::new(
                "releases_total",
                "Releases published (frozen in the ledger) by scope kind",
            ),
            &["scope"],
        )?;
        let release_cells = IntCounterVec::new(
            Opts::new(
                "release_cells_total",
                "Cells of published releases by status (published or the reason for suppression)",
            ),
            &["status"],
        )?;
        let release_compute = prometheus::Histogram::with_opts(
            HistogramOpts::new(
                "release_compute_seconds",
                "Time to bring the release index up to date and compute one release",
            )
            .buckets(vec![0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0]),
        )?;
        let epsilon_spent = GaugeVec::new(
            Opts::new(
                "rho_spent",
                "Privacy budget (rho, zCDP) spent per calendar year of data",
            ),
            &["data_year"],
        )?;
        let epsilon_remaining = GaugeVec::new(
            Opts::new(
                "rho_remaining",
                "Privacy budget (rho, zCDP) left per calendar year of data",
            ),
            &["data_year"],
        )?;
        let build = IntGauge::with_opts(
            Opts::new("build_info", "Build information")
                .const_label("version", env!("CARGO_PKG_VERSION")),
        )?;
        build.set(1);
        let db_connections = prometheus::IntGaugeVec::new(
            Opts::new(
                "db_connections",
                "Connections of the database pool by state (in_use, idle), at scrape time",
            ),
            &["state"],
        )?;
        registry.register(Box::new(requests.clone()))?;
        registry.register(Box::new(latency.clone()))?;
        registry.register(Box::new(uploads.clone()))?;
        registry.register(Box::new(records.clone()))?;
        registry.register(Box::new(rejections.clone()))?;
        registry.register(Box::new(releases.clone()))?;
        registry.register(Box::new(release_cells.clone()))?;
        registry.register(Box::new(release_compute.clone()))?;
        registry.register(Box::new(epsilon_spent.clone()))?;
        registry.register(Box::new(epsilon_remaining.clone()))?;
        registry.register(Box::new(build))?;
        registry.register(Box::new(db_connections.clone()))?;
        let in_flight = IntGauge::with_opts(Opts::new(
            "http_requests_in_flight",
            "HTTP requests being answered now",
        ))?;
        registry.register(Box::new(in_flight.clone()))?;
        let audit_failures = IntCounterVec::new(
            Opts::new(
                "audit_append_failures_total",
                "Audit entries that could not be written, by what happened to the request: failed \
                 (an action that needs its entry) or answered (a refusal that stood); alert on any",
            ),
            &["request"],
        )?;
        registry.register(Box::new(audit_failures.clone()))?;
        let index_rows = IntGauge::with_opts(Opts::new(
            "release_index_rows",
            "Trajectories held by this instance's release index",
        ))?;
        registry.register(Box::new(index_rows.clone()))?;
        let index_sync_failures = prometheus::IntCounter::with_opts(Opts::new(
            "release_index_sync_failures_total",
            "Background syncs of the release index that failed (a release syncs again itself)",
        ))?;
        registry.register(Box::new(index_sync_failures.clone()))?;
        for r in ["failed", "answered"] {
            audit_failures.with_label_values(&[r]);
        }
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
            releases,
            release_cells,
            release_compute,
            epsilon_spent,
            epsilon_remaining,
            db_connections,
            in_flight,
            audit_failures,
            index_rows,
            index_sync_failures,
        })
    }

    /// Rows the release index holds after a sync.
    pub fn set_index_rows(&self, rows: usize) {
        self.index_rows.set(i64::try_from(rows).unwrap_or(i64::MAX));
    }

    pub fn index_sync_failed(&self) {
        self.index_sync_failures.inc();
    }

    /// An audit entry could not be written; `request_failed` when the request failed because of it.
    pub fn observe_audit_failure(&self, request_failed: bool) {
        let label = if request_failed { "failed" } else { "answered" };
        self.audit_failures.with_label_values(&[label]).inc();
    }

    /// Reads the pool's connections now; called on every scrape.
    pub fn observe_pool(&self, store: &dyn Store) {
        if let Some(p) = store.pool_status() {
            let idle = p.idle.min(p.size);
            self.db_connections
                .with_label_values(&["in_use"])
                .set(i64::from(p.size - idle));
            self.db_connections
                .with_label_values(&["idle"])
                .set(i64::from(idle));
        }
    }

    /// A release frozen by this instance: counted by scope kind (`municipality`, `region`,
    /// `providers`), the cells of what municipalities may read by status (the per-provider table's
    /// cells are nobody's to count whole).
    pub fn observe_release(&self, release: &Release, scope_key: &str) {
        let kind = if scope_key.starts_with("GM") {
            "municipality"
        } else {
            scope_key
        };
        self.releases.with_label_values(&[kind]).inc();
        if kind == "providers" {
            return;
        }
        for (status, n) in release.status_counts() {
            self.release_cells
                .with_label_values(&[status.as_str()])
                .inc_by(n as u64);
        }
    }

    pub fn observe_release_compute(&self, seconds: f64) {
        self.release_compute.observe(seconds);
    }

    /// The budget of one data year (nano-rho), as the ledger has it now. Gauges only: the ledger is
    /// exact, these are for dashboards.
    pub fn set_budget(&self, data_year: u16, spent_nanos: i64, cap_nanos: i64) {
        let f = |n: i64| n as f64 / 1e9;
        let year = data_year.to_string();
        self.epsilon_spent
            .with_label_values(&[&year])
            .set(f(spent_nanos));
        self.epsilon_remaining
            .with_label_values(&[&year])
            .set(f((cap_nanos - spent_nanos).max(0)));
    }

    /// An upload's outcome; `None` for one refused.
    pub fn observe_upload(&self, outcome: Option<&PutBatch>) {
        match outcome {
            Some(PutBatch::Stored(r)) => {
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
            Some(PutBatch::Replayed(_)) => self.uploads.with_label_values(&["replayed"]).inc(),
            Some(PutBatch::Withdrawn { .. }) | None => {
                self.uploads.with_label_values(&["rejected"]).inc()
            }
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

    /// A request answered: counted and timed by route template, method label and status, and its
    /// problem type counted when it was refused.
    pub fn observe_request(
        &self,
        route: &str,
        method: &str,
        status: u16,
        seconds: f64,
        problem: Option<ProblemType>,
    ) {
        let status = status.to_string();
        let labels = [route, method, status.as_str()];
        self.requests.with_label_values(&labels).inc();
        self.latency.with_label_values(&labels).observe(seconds);
        if let Some(kind) = problem {
            self.rejections.with_label_values(&[kind.slug()]).inc();
        }
    }

    /// Requests in flight.
    pub fn in_flight(&self) -> &IntGauge {
        &self.in_flight
    }
}
