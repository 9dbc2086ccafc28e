//! Release rounds (DESIGN section 7): publishing a period for the whole region at once, from one noisy
//! measurement, charged once per data year by the accountant; reading what rounds published; the
//! accountant's report; the region calendar. Only [`publish_round`] computes or charges anything:
//! every read serves a frozen release.

use std::sync::Arc;

use kwm_schemas::problem::ProblemType;
use kwm_schemas::region::Decimal;
use kwm_schemas::release::{
    DataYearBudget, PlannedRound, PrivacyReport, Release, ReleaseScope, RoundOutcome, RoundRelease,
    RoundSummary, Spend,
};
use kwm_schemas::{Month, Period, RegionConfig};
use time::{Date, OffsetDateTime};
use uuid::Uuid;

use crate::app::error::ApiError;
use crate::audit::{digest_of, AuditAction, NewAuditEntry};
use crate::index::ReleaseIndex;
use crate::keys::PseudonymKey;
use crate::metrics::Metrics;
use crate::noise::OsNoise;
use crate::release::{
    compute_round, privacy_statement, IndexedInput, NoisePlan, ReleaseError, RoundContext,
};
use crate::store::{
    data_version_of, NewRound, NewRoundRelease, PutRound, RoundRecord, Store, StoredRoundRelease,
};

/// The key of the keyed order in which a child's surplus trajectories are dropped (derived from the
/// service pseudonymisation key, so it is as secret and as stable as that key).
pub(crate) const ORDER_KEY_LABEL: &[u8] = b"kwm release order v1";

/// Who acts, for the audit chain and a round's `published_by`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Actor {
    pub role: String,
    pub id: String,
}

impl Actor {
    /// The calendar of the region file, publishing by itself.
    pub fn calendar() -> Self {
        Self {
            role: "calendar".into(),
            id: "calendar".into(),
        }
    }

    pub fn describe(&self) -> String {
        if self.role == self.id {
            self.role.clone()
        } else {
            format!("{} {}", self.role, self.id)
        }
    }
}

/// What publishing a round needs: the store, the release index, the region, the keys and the metrics.
#[derive(Debug, Clone)]
pub struct RoundDeps {
    pub store: Arc<dyn Store>,
    pub index: Arc<ReleaseIndex>,
    pub region: Arc<RegionConfig>,
    pub pseudonym_key: Arc<PseudonymKey>,
    pub metrics: Metrics,
    /// Frozen releases, parsed and serialised once.
    pub releases: Arc<ReleaseCache>,
    /// One round computation at a time per instance (the ledger keeps instances consistent).
    pub lock: Arc<tokio::sync::Mutex<()>>,
    /// When a period is final and a calendar round due.
    pub clock: crate::clock::SharedClock,
}

fn month_of(t: OffsetDateTime) -> Month {
    Month::new(t.year() as u16, u8::from(t.month()))
        .unwrap_or_else(|_| unreachable!("the clock is within 1900..2999"))
}

/// The first day on which `period` can be published: the first day of the month after its last month
/// plus the data deadline.
pub fn publishable_from(region: &RegionConfig, period: Period) -> Date {
    let m = period
        .last_month()
        .plus_months(region.privacy.data_deadline_months + 1);
    let month = time::Month::try_from(m.month()).unwrap_or(time::Month::January);
    Date::from_calendar_date(i32::from(m.year()), month, 1).unwrap_or(Date::MAX)
}

fn iso(d: Date) -> String {
    format!("{:04}-{:02}-{:02}", d.year(), u8::from(d.month()), d.day())
}

/// Publishes (or corrects) the round of `period`: checks that the period is final and that its data
/// years have budget, brings the release index up to date, computes every table from one noisy
/// measurement, and stores the round, its charges and its audit entry in one transaction. When the
/// data have not changed since the newest version (or `first_only` and a round exists), nothing is
/// computed into the ledger or charged: the answer is that version, `unchanged`.
pub async fn publish_round(
    deps: &RoundDeps,
    period: Period,
    actor: &Actor,
    first_only: bool,
) -> Result<RoundOutcome, ApiError> {
    let region = deps.region.as_ref();
    let at = deps.clock.now();
    let from = publishable_from(region, period);
    if at.date() < from {
        return Err(ApiError::NotYet {
            kind: ProblemType::PeriodNotFinal,
            detail: format!(
                "{period} can be published from {} on: {} months after the period, late uploads \
                 and corrections are in and herhaald beroep is final",
                iso(from),
                region.privacy.data_deadline_months
            ),
            available_from: Some(iso(from)),
        });
    }
    let rho = region.round_rho(period).ok_or_else(|| {
        ApiError::new(
            ProblemType::BadRequest,
            format!(
                "the region publishes no rounds of this kind of period ({period}); its region file \
                 sets a rho for years{}{}",
                if region.privacy.half_year_round.is_some() { ", half-years" } else { "" },
                if region.privacy.quarter_round.is_some() { ", quarters" } else { "" },
            ),
        )
    })?;
    let cap = region.round_cap_nanos();

    let _one = deps.lock.lock().await;
    let period_key = period.to_string();
    // Cheap checks before computing: the newest version's data, and every year's budget.
    let synced = deps.index.sync(deps.store.as_ref()).await?;
    let data_version = data_version_of(synced.mark);
    let newest = deps
        .store
        .list_rounds(Some(&period_key))
        .await?
        .into_iter()
        .next();
    if let Some(newest) = &newest {
        if first_only || newest.data_version == data_version {
            return outcome("unchanged", newest);
        }
    }
    // A correction (a new version of a round) spends the region's correction rho, if it sets one.
    let rho = match (&newest, region.privacy.correction_round) {
        (Some(_), Some(c)) if c.to_nanos() < rho.to_nanos() => c,
        _ => rho,
    };
    let plan = NoisePlan::new(region, rho).map_err(engine_error)?;
    let charges = plan.charges(region, period).map_err(engine_error)?;
    let years: Vec<u16> = charges.iter().map(|(y, _)| *y).collect();
    let spent = deps.store.privacy_spent(&years).await?;
    for ((year, ask), spent) in charges.iter().zip(&spent) {
        if spent + ask > cap {
            // Another instance may have stored this very round between the two reads above: then
            // the answer is that round, not a refusal.
            if let Some(newest) = deps
                .store
                .list_rounds(Some(&period_key))
                .await?
                .into_iter()
                .next()
            {
                if first_only || newest.data_version == data_version {
                    return outcome("unchanged", &newest);
                }
            }
            return Err(budget_exhausted(*year, *spent, cap));
        }
    }

    let started = std::time::Instant::now();
    let computed = {
        let index = deps.index.clone();
        let region = deps.region.clone();
        let order_key = deps.pseudonym_key.derive(ORDER_KEY_LABEL);
        let as_of = month_of(at);
        tokio::task::spawn_blocking(move || {
            let data = index.read();
            let input = IndexedInput {
                region: &region,
                shards: data.shards(),
                period,
                as_of,
                order_key: &order_key,
            };
            compute_round(&input, rho, &mut OsNoise::new())
        })
        .await
        .map_err(|e| ApiError::Internal(anyhow::anyhow!("the round computation panicked: {e}")))?
        .map_err(engine_error)?
    };
    deps.metrics
        .observe_release_compute(started.elapsed().as_secs_f64());

    let round_id = Uuid::now_v7();
    let mut releases = Vec::with_capacity(computed.releases.len());
    for r in &computed.releases {
        let body = serde_json::to_value(r)
            .map_err(|e| ApiError::Internal(anyhow::anyhow!("serialising a release: {e}")))?;
        releases.push(NewRoundRelease {
            id: Uuid::now_v7(),
            scope: r.scope.to_string(),
            body,
        });
    }
    let digest_input = serde_json::json!({
        "round": round_id,
        "period": period_key,
        "charges": computed.charges,
        "releases": releases.iter().map(|r| serde_json::json!({"id": r.id, "scope": r.scope, "body": r.body})).collect::<Vec<_>>(),
    });
    let new = NewRound {
        id: round_id,
        period: period_key.clone(),
        data_version,
        charges: computed.charges.clone(),
        cap_nanos: cap,
        published_by: actor.describe(),
        created_at: at,
        first_only,
        releases,
        audit: NewAuditEntry {
            at,
            actor_role: actor.role.clone(),
            actor_id: actor.id.clone(),
            action: AuditAction::Release,
            subject: format!("round {round_id} ({period_key})"),
            provider: None,
            details_digest: digest_of(&digest_input),
        },
    };
    match deps.store.put_round(&new).await? {
        PutRound::Stored(record) => {
            for r in &computed.releases {
                deps.metrics.observe_release(r, &r.scope.to_string());
            }
            refresh_budget_metrics(deps).await?;
            tracing::info!(
                round = %record.id,
                period = %record.period,
                version = record.version,
                "round published"
            );
            outcome("published", &record)
        }
        PutRound::Unchanged(record) => outcome("unchanged", &record),
        PutRound::BudgetExhausted {
            year,
            spent_nanos,
            cap_nanos,
            ..
        } => Err(budget_exhausted(year, spent_nanos, cap_nanos)),
    }
}

fn outcome(what: &str, record: &RoundRecord) -> Result<RoundOutcome, ApiError> {
    Ok(RoundOutcome {
        outcome: what.into(),
        round: round_summary(record)?,
    })
}

fn nanos_text(n: i64) -> String {
    Decimal::from_nanos(n)
        .map(|d| d.to_string())
        .unwrap_or_else(|| "0".into())
}

fn budget_exhausted(year: u16, spent: i64, cap: i64) -> ApiError {
    ApiError::BudgetExhausted {
        partition: year.to_string(),
        spent: nanos_text(spent),
        cap: nanos_text(cap),
    }
}

fn engine_error(e: ReleaseError) -> ApiError {
    match e {
        ReleaseError::NotFinal(p) => ApiError::NotYet {
            kind: ProblemType::PeriodNotFinal,
            detail: format!("{p} is not final yet: herhaald beroep's window has not closed"),
            available_from: None,
        },
        other => ApiError::Internal(anyhow::Error::new(other).context("computing a round")),
    }
}

/// A stored round as the API lists it.
pub fn round_summary(r: &RoundRecord) -> Result<RoundSummary, ApiError> {
    let bad = |what: &str| ApiError::Internal(anyhow::anyhow!("round {}: {what}", r.id));
    Ok(RoundSummary {
        id: r.id,
        period: r.period.parse().map_err(|_| bad("period"))?,
        version: r.version,
        created_at: r.created_at,
        published_by: r.published_by.clone(),
        charges: NoisePlan::year_charges(&r.charges),
        releases: r
            .releases
            .iter()
            .map(|(scope, id)| {
                Ok(RoundRelease {
                    scope: scope.parse().map_err(|_| bad("scope"))?,
                    id: *id,
                })
            })
            .collect::<Result<_, ApiError>>()?,
    })
}

/// The rounds of the ledger, newest first, and the calendar's periods not published yet.
pub async fn list_rounds(
    store: &dyn Store,
    region: &RegionConfig,
) -> Result<(Vec<RoundSummary>, Vec<PlannedRound>), ApiError> {
    let rounds = store.list_rounds(None).await?;
    let summaries = rounds
        .iter()
        .map(round_summary)
        .collect::<Result<Vec<_>, _>>()?;
    let planned = region
        .calendar
        .iter()
        .filter(|c| !rounds.iter().any(|r| r.period == c.period.to_string()))
        .map(|c| PlannedRound {
            period: c.period,
            publish_after: iso(c.publish_after.max(publishable_from(region, c.period))),
        })
        .collect();
    Ok((summaries, planned))
}

/// Every published release `caller` may read, of `scope` or of all, newest round last.
pub async fn releases_for(
    store: &dyn Store,
    caller: &crate::app::access::Caller,
    scope: Option<ReleaseScope>,
) -> Result<Vec<kwm_schemas::release::ReleaseSummary>, ApiError> {
    let rounds = store.list_rounds(None).await?;
    let mut releases = Vec::new();
    for r in &rounds {
        let summary = round_summary(r)?;
        for rel in &summary.releases {
            if scope.is_some_and(|s| s != rel.scope) {
                continue;
            }
            if caller
                .may_read_release_scope(&rel.scope.to_string())
                .is_ok()
            {
                releases.push(kwm_schemas::release::ReleaseSummary {
                    id: rel.id,
                    round: summary.id,
                    scope: rel.scope,
                    period: summary.period,
                    version: summary.version,
                    created_at: summary.created_at,
                });
            }
        }
    }
    Ok(releases)
}

/// The release of `scope` in the newest version of `period`'s round; `not-released` (saying when it
/// is planned, if it is) when the period has no round.
pub async fn latest_release(
    store: &dyn Store,
    cache: &ReleaseCache,
    region: &RegionConfig,
    scope: ReleaseScope,
    period: Period,
) -> Result<Arc<CachedRelease>, ApiError> {
    if let ReleaseScope::Municipality(m) = scope {
        if region.municipality(m).is_none() {
            return Err(ApiError::not_found(format!(
                "{m} is not a municipality of region {}",
                region.code
            )));
        }
    }
    // One small query for the id; the figures come from memory once read.
    let id = store
        .get_latest_round_release_id(&scope.to_string(), &period.to_string())
        .await?;
    match id {
        Some(id) => cache
            .get(store, id)
            .await?
            .ok_or_else(|| not_released(region, period)),
        None => Err(not_released(region, period)),
    }
}

fn not_released(region: &RegionConfig, period: Period) -> ApiError {
    let planned = region.calendar.iter().find(|c| c.period == period);
    let from = publishable_from(region, period);
    let (detail, available_from) = match planned {
        Some(c) => {
            let date = c.publish_after.max(from);
            (
                format!(
                    "{period} has not been released; its round is planned for {}",
                    iso(date)
                ),
                Some(iso(date)),
            )
        }
        None => (
            format!(
                "{period} has not been released; the region team publishes it (it can be from {})",
                iso(from)
            ),
            Some(iso(from)),
        ),
    };
    ApiError::NotYet {
        kind: ProblemType::NotReleased,
        detail,
        available_from,
    }
}

/// The accountant per data year: the cap, every charge and what remains.
pub async fn privacy_report(
    store: &dyn Store,
    region: &RegionConfig,
) -> Result<PrivacyReport, ApiError> {
    let q = &region.privacy;
    let charges = store.list_privacy_charges().await?;
    let cap = q.rho_per_data_year.to_nanos().unwrap_or(0);
    let round_cap = region.round_cap_nanos();
    let mut years: Vec<DataYearBudget> = Vec::new();
    for c in &charges {
        if years.last().map(|y| y.data_year) != Some(c.data_year) {
            years.push(DataYearBudget {
                data_year: c.data_year,
                cap: q.rho_per_data_year,
                spent: Vec::new(),
                spent_total: String::new(),
                remaining: String::new(),
            });
        }
        if let Some(y) = years.last_mut() {
            y.spent.push(Spend {
                kind: c.subject_kind.clone(),
                subject: c.subject_id.clone(),
                rho: nanos_text(c.rho_nanos),
                at: c.at,
            });
        }
    }
    for y in &mut years {
        let total: i64 = charges
            .iter()
            .filter(|c| c.data_year == y.data_year)
            .map(|c| c.rho_nanos)
            .sum();
        y.spent_total = nanos_text(total);
        y.remaining = format!(
            "{} ({} for rounds)",
            nanos_text((cap - total).max(0)),
            nanos_text((round_cap - total).max(0))
        );
    }
    let statement = privacy_statement(&RoundContext {
        region,
        plan: &NoisePlan::new(region, q.year_round).map_err(engine_error)?,
        charges: &[],
    });
    Ok(PrivacyReport {
        mechanism: q.mechanism.as_str().into(),
        rho_per_data_year: q.rho_per_data_year,
        research_reserve: q.research_reserve,
        epsilon_per_data_year: statement.epsilon_per_data_year,
        delta: q.delta,
        guarantee_en: statement.guarantee_en,
        guarantee_nl: statement.guarantee_nl,
        years,
    })
}

/// Sets the budget gauges from the ledger (gauges only: the ledger is exact).
pub async fn refresh_budget_metrics(deps: &RoundDeps) -> Result<(), ApiError> {
    let charges = deps.store.list_privacy_charges().await?;
    let mut per_year: std::collections::BTreeMap<u16, i64> = Default::default();
    for c in charges {
        *per_year.entry(c.data_year).or_default() += c.rho_nanos;
    }
    let cap = deps
        .region
        .privacy
        .rho_per_data_year
        .to_nanos()
        .unwrap_or(0);
    for (year, spent) in per_year {
        deps.metrics.set_budget(year, spent, cap);
    }
    Ok(())
}

/// Publishes every calendar round that is due and has no round yet. Each replica runs it; the store
/// publishes each period once (`first_only`), so replicas racing on it charge it once.
pub async fn publish_due(deps: &RoundDeps) -> Vec<(Period, Result<RoundOutcome, ApiError>)> {
    let today = deps.clock.now().date();
    let mut out = Vec::new();
    for c in &deps.region.calendar {
        if today < c.publish_after || today < publishable_from(&deps.region, c.period) {
            continue;
        }
        match deps.store.list_rounds(Some(&c.period.to_string())).await {
            Ok(rounds) if !rounds.is_empty() => continue,
            Ok(_) => {}
            Err(e) => {
                out.push((c.period, Err(e.into())));
                continue;
            }
        }
        let result = publish_round(deps, c.period, &Actor::calendar(), true).await;
        out.push((c.period, result));
    }
    out
}

/// Runs [`publish_due`] every `every` until the process stops; logs what it published or why not.
pub async fn run_calendar(deps: RoundDeps, every: std::time::Duration) {
    if deps.region.calendar.is_empty() {
        return;
    }
    let mut tick = tokio::time::interval(every);
    loop {
        tick.tick().await;
        for (period, result) in publish_due(&deps).await {
            match result {
                Ok(o) => tracing::info!(period = %period, outcome = %o.outcome, "calendar round"),
                Err(e) => {
                    tracing::warn!(period = %period, error = %e, "calendar round not published")
                }
            }
        }
    }
}

/// Frozen releases as served, by id: a release never changes once stored, so its parsed form and its
/// JSON are kept in memory and served without touching the database again. Bounded; when full, the
/// cache starts over (releases are few and cheap to reload).
#[derive(Debug, Default)]
pub struct ReleaseCache {
    entries: std::sync::RwLock<std::collections::HashMap<Uuid, Arc<CachedRelease>>>,
}

/// One frozen release, parsed and serialised once.
#[derive(Debug)]
pub struct CachedRelease {
    /// The scope key (`GM0748`, `region`, `providers`), for the caller's scope check.
    pub scope: String,
    pub version: u32,
    pub release: Release,
    pub json: axum::body::Bytes,
}

const CACHE_CAPACITY: usize = 1024;

/// The release the ledger holds for a stored entry: the frozen body with the ledger's own fields.
pub fn to_release(stored: &StoredRoundRelease) -> Result<Release, ApiError> {
    let mut r: Release = serde_json::from_value(stored.body.clone()).map_err(|e| {
        ApiError::Internal(anyhow::anyhow!(
            "release {} in the ledger does not parse: {e}",
            stored.id
        ))
    })?;
    r.id = Some(stored.id);
    r.round = Some(stored.round_id);
    r.version = Some(stored.version);
    r.created_at = Some(stored.created_at);
    r.frozen = true;
    Ok(r)
}

impl ReleaseCache {
    /// The release with this id, from memory or from the ledger.
    pub async fn get(
        &self,
        store: &dyn Store,
        id: Uuid,
    ) -> Result<Option<Arc<CachedRelease>>, ApiError> {
        if let Some(hit) = self.read(id) {
            return Ok(Some(hit));
        }
        match store.get_round_release(id).await? {
            Some(stored) => Ok(Some(self.insert(&stored)?)),
            None => Ok(None),
        }
    }

    /// The cached form of a stored release (parsed and serialised now if it is not cached yet).
    pub fn insert(&self, stored: &StoredRoundRelease) -> Result<Arc<CachedRelease>, ApiError> {
        if let Some(hit) = self.read(stored.id) {
            return Ok(hit);
        }
        let release = to_release(stored)?;
        let json = serde_json::to_vec(&release)
            .map_err(|e| ApiError::Internal(anyhow::anyhow!("serialising a release: {e}")))?;
        let entry = Arc::new(CachedRelease {
            scope: stored.scope.clone(),
            version: stored.version,
            release,
            json: json.into(),
        });
        let mut map = self
            .entries
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if map.len() >= CACHE_CAPACITY {
            map.clear();
        }
        map.insert(stored.id, entry.clone());
        Ok(entry)
    }

    fn read(&self, id: Uuid) -> Option<Arc<CachedRelease>> {
        self.entries
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .get(&id)
            .cloned()
    }
}
