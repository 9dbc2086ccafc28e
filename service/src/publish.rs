//! The ledger side of releases: a release is computed at most once per (scope, period, data version),
//! frozen with its figures, and charged to its budget partitions in the same transaction. Asking again
//! returns the frozen release unchanged; a new version appears only when the data changed and every
//! partition it reads still has budget.
//!
//! The engine (`crate::release`) is pure; this module loads its input, runs it off the async threads,
//! and hands the result to the store. Nothing reaches a caller that did not come out of the engine and
//! through the ledger.

use std::sync::Arc;

use kwm_schemas::region::Epsilon;
use kwm_schemas::release::{Partition, Release, ReleaseScope};
use kwm_schemas::{Month, Period, RegionConfig};
use time::OffsetDateTime;
use uuid::Uuid;

use crate::audit::{digest_of, AuditAction, NewAuditEntry};
use crate::audit_trail::append_required;
use crate::error::ApiError;
use crate::ingest::now_micros;
use crate::noise::OsNoise;
use crate::release::{partitions, IndexedInput, PeriodTables, ReleaseError};
use crate::startup::AppState;
use crate::store::{NewRelease, PutRelease, StoredRelease};

/// Label of the key that orders a client's surplus trajectories (derived from the service
/// pseudonymisation key, so it is as secret and as stable as that key).
const ORDER_KEY_LABEL: &[u8] = b"kwm release order v1";

/// What a ledger entry is about: a municipality, the region, or the per-provider table from which each
/// provider sees its own rows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LedgerScope {
    Release(ReleaseScope),
    /// The region table with a row per provider. When the region policy enables per-provider
    /// reporting this is the region release itself; otherwise it is a release of its own, computed
    /// with provider rows (and the dominance rule that goes with them), of which each provider sees
    /// only its own rows and nobody sees the whole.
    Providers,
}

impl LedgerScope {
    /// The scope key in the ledger.
    pub fn key(self, region: &RegionConfig) -> String {
        match self {
            Self::Release(s) => s.to_string(),
            Self::Providers if region.policy.per_provider_reporting => "region".into(),
            Self::Providers => "providers".into(),
        }
    }

    fn engine_scope(self) -> ReleaseScope {
        match self {
            Self::Release(s) => s,
            Self::Providers => ReleaseScope::Region,
        }
    }
}

/// Who asked, for the audit chain.
#[derive(Debug, Clone)]
pub struct Actor {
    pub role: String,
    pub id: String,
}

/// A release as served, with what the caller should know about how fresh it is.
#[derive(Debug, Clone)]
pub struct Served {
    pub release: Arc<CachedRelease>,
    /// Computed and frozen by this request.
    pub published_now: bool,
    /// Data changed since this release, but a partition it reads has no budget left for a new version.
    pub newer_data_withheld: Option<String>,
}

/// The budget partition key of the ledger: `GM0748/2025-Q1`.
pub fn partition_key(p: &Partition) -> String {
    format!("{}/{}", p.municipality, p.period)
}

/// The release the ledger holds for a stored entry: the frozen body with the ledger's own fields.
pub fn to_release(stored: &StoredRelease) -> Result<Release, ApiError> {
    let mut r: Release = serde_json::from_value(stored.body.clone()).map_err(|e| {
        ApiError::Internal(anyhow::anyhow!(
            "release {} in the ledger does not parse: {e}",
            stored.id
        ))
    })?;
    r.id = Some(stored.id);
    r.version = Some(stored.version);
    r.created_at = Some(stored.created_at);
    r.frozen = true;
    Ok(r)
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
    /// The ledger scope key (`GM0748`, `region`, `providers`), for the caller's scope check.
    pub scope: String,
    pub version: u32,
    pub release: Release,
    pub json: axum::body::Bytes,
}

const CACHE_CAPACITY: usize = 1024;

impl ReleaseCache {
    /// The release with this id, from memory or from the ledger.
    pub async fn get(
        &self,
        store: &dyn crate::store::Store,
        id: Uuid,
    ) -> Result<Option<Arc<CachedRelease>>, ApiError> {
        if let Some(hit) = self.read(id) {
            return Ok(Some(hit));
        }
        match store.get_release(id).await? {
            Some(stored) => Ok(Some(self.insert(&stored)?)),
            None => Ok(None),
        }
    }

    /// The cached form of a stored release (parsed and serialised now if it is not cached yet).
    pub fn insert(&self, stored: &StoredRelease) -> Result<Arc<CachedRelease>, ApiError> {
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

/// The current month in UTC.
pub fn current_month() -> Month {
    let now = OffsetDateTime::now_utc();
    Month::new(now.year() as u16, u8::from(now.month()))
        .unwrap_or_else(|_| unreachable!("the clock is within 1900..2999"))
}

/// The release of `scope` for `period`: the frozen one if the data have not changed since, else a new
/// version if budget remains, else the frozen one marked as withheld, else `budget-exhausted`.
pub async fn get_or_publish(
    state: &AppState,
    scope: LedgerScope,
    period: Period,
    actor: &Actor,
) -> Result<Served, ApiError> {
    let region = &state.region;
    let key = scope.key(region);
    let period_key = period.to_string();
    let engine_scope = scope.engine_scope();
    let parts: Vec<String> = partitions(region, engine_scope, period)
        .map_err(|e| ApiError::not_found(e.to_string()))?
        .iter()
        .map(partition_key)
        .collect();

    // The common case, cheaply: the frozen release is current (one small query, figures from memory).
    let (head, data_version) = state
        .store
        .get_latest_release_head(&key, &period_key)
        .await?;
    if let Some((id, v)) = &head {
        if *v == data_version {
            if let Some(release) = state.releases.get(state.store.as_ref(), *id).await? {
                return Ok(Served {
                    release,
                    published_now: false,
                    newer_data_withheld: None,
                });
            }
        }
    }
    // One computation at a time in this instance; another request may have published meanwhile.
    let _guard = state.publish_lock.lock().await;
    let latest = state.store.get_latest_release(&key, &period_key).await?;
    let data_version = state.store.data_version().await?;
    if let Some(s) = &latest {
        if s.data_version == data_version {
            return served(state, s, false, None);
        }
    }

    let policy = &region.policy;
    let (eps, cap) = (policy.epsilon_per_release, policy.partition_epsilon_cap);
    if let Some((partition, spent)) = first_exhausted(state, &parts, eps, cap).await? {
        return match &latest {
            Some(s) => served(state, s, false, Some(partition)),
            None => Err(budget_exhausted(partition, spent, cap)),
        };
    }

    let release = compute(state, scope, period, &data_version).await?;
    let id = Uuid::now_v7();
    let created_at = now_micros();
    let body = serde_json::to_value(&release)
        .map_err(|e| ApiError::Internal(anyhow::anyhow!("serialising a release: {e}")))?;
    let new = NewRelease {
        id,
        scope: key.clone(),
        period: period_key,
        data_version,
        epsilon: release.epsilon,
        partitions: parts,
        cap,
        created_at,
        body,
    };
    match state.store.put_release(&new).await? {
        PutRelease::Stored(s) => {
            let out = state.releases.insert(&s)?;
            state.metrics.observe_release(&out.release, &key);
            let spent = state.store.budget_spent(&new.partitions).await?;
            for (p, e) in new.partitions.iter().zip(spent) {
                if let Some(e) = e {
                    state.metrics.set_budget(p, e, cap);
                }
            }
            // Frozen and charged already: if the entry cannot be written the request fails, and
            // `admin audit verify` names the release without its entry.
            append_required(
                state,
                NewAuditEntry {
                    at: created_at,
                    actor_role: actor.role.clone(),
                    actor_id: actor.id.clone(),
                    action: AuditAction::Release,
                    subject: format!("release {} ({key} {} v{})", s.id, s.period, s.version),
                    provider: None,
                    details_digest: digest_of(&s.body),
                },
            )
            .await?;
            tracing::info!(
                release = %s.id,
                scope = %key,
                period = %s.period,
                version = s.version,
                "release published"
            );
            Ok(Served {
                release: out,
                published_now: true,
                newer_data_withheld: None,
            })
        }
        PutRelease::Existing(s) => served(state, &s, false, None),
        PutRelease::BudgetExhausted {
            partition,
            spent,
            cap,
        } => match &latest {
            Some(s) => served(state, s, false, Some(partition)),
            None => Err(budget_exhausted(partition, spent, cap)),
        },
    }
}

fn served(
    state: &AppState,
    s: &StoredRelease,
    published_now: bool,
    withheld: Option<String>,
) -> Result<Served, ApiError> {
    Ok(Served {
        release: state.releases.insert(s)?,
        published_now,
        newer_data_withheld: withheld,
    })
}

fn budget_exhausted(partition: String, spent: Epsilon, cap: Epsilon) -> ApiError {
    ApiError::BudgetExhausted {
        partition,
        spent: spent.to_string(),
        cap: cap.to_string(),
    }
}

/// The first partition that cannot pay `eps` more, checked before any computation (the store checks
/// again, atomically, when it charges).
async fn first_exhausted(
    state: &AppState,
    parts: &[String],
    eps: Epsilon,
    cap: Epsilon,
) -> Result<Option<(String, Epsilon)>, ApiError> {
    let spent = state.store.budget_spent(parts).await?;
    let nanos = |e: Epsilon| {
        e.to_nanos().ok_or_else(|| {
            ApiError::Internal(anyhow::anyhow!(
                "epsilon {e} is not a whole number of nano-units; use at most nine decimals"
            ))
        })
    };
    let (eps_n, cap_n) = (nanos(eps)?, nanos(cap)?);
    for (p, s) in parts.iter().zip(spent) {
        let spent_n = match s {
            Some(e) => nanos(e)?,
            None => 0,
        };
        if spent_n + eps_n > cap_n {
            let spent = Epsilon::from_nanos(spent_n).unwrap_or(cap);
            return Ok(Some((p.clone(), spent)));
        }
    }
    Ok(None)
}

/// The built tables of recent periods, by what they were built from: every scope of a period (the nine
/// municipalities, the region, the per-provider table) is a slice of one build, so the rows are loaded
/// and bounded once per period and data version, not once per scope. Holds true counts: memory only,
/// never logged or serialised.
#[derive(Debug, Default)]
pub struct TablesCache {
    entries: std::sync::Mutex<Vec<(TablesKey, Arc<PeriodTables>)>>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct TablesKey {
    period: Period,
    data_version: String,
    per_provider: bool,
    as_of: Month,
}

/// Periods kept: a release round touches one or two.
const TABLES_CAPACITY: usize = 4;

impl TablesCache {
    fn get(&self, key: &TablesKey) -> Option<Arc<PeriodTables>> {
        self.lock()
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, t)| t.clone())
    }

    fn put(&self, key: TablesKey, tables: Arc<PeriodTables>) {
        let mut entries = self.lock();
        entries.retain(|(k, _)| k != &key);
        if entries.len() >= TABLES_CAPACITY {
            entries.remove(0);
        }
        entries.push((key, tables));
    }

    /// Drops every build: after a withdrawal, no table may keep counting the withdrawn rows.
    pub fn clear(&self) {
        self.lock().clear();
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<(TablesKey, Arc<PeriodTables>)>> {
        self.entries
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// Releases `scope` from the period's tables, building them first (from the release index, brought up
/// to date with the store first) unless this data version's build is at hand. The
/// engine runs on a blocking thread with fresh noise from the OS CSPRNG.
async fn compute(
    state: &AppState,
    scope: LedgerScope,
    period: Period,
    data_version: &str,
) -> Result<Release, ApiError> {
    let started = std::time::Instant::now();
    let mut region = (*state.region).clone();
    if scope == LedgerScope::Providers {
        region.policy.per_provider_reporting = true;
    }
    let key = TablesKey {
        period,
        data_version: data_version.to_string(),
        per_provider: region.policy.per_provider_reporting,
        as_of: current_month(),
    };
    let engine_scope = scope.engine_scope();
    let tables = match state.tables.get(&key) {
        Some(t) => t,
        None => {
            state.index.sync(state.store.as_ref()).await?;
            let index = state.index.clone();
            let order_key = state.pseudonym_key.derive(ORDER_KEY_LABEL);
            let as_of = key.as_of;
            let built = tokio::task::spawn_blocking(move || {
                let data = index.read();
                let input = IndexedInput {
                    region: &region,
                    shards: data.shards(),
                    period,
                    as_of,
                    order_key: &order_key,
                };
                PeriodTables::build_indexed(&input)
            })
            .await
            .map_err(|e| ApiError::Internal(anyhow::anyhow!("building the tables panicked: {e}")))?
            .map_err(engine_error)?;
            let built = Arc::new(built);
            state.tables.put(key, built.clone());
            built
        }
    };
    let result =
        tokio::task::spawn_blocking(move || tables.release(engine_scope, &mut OsNoise::new()))
            .await
            .map_err(|e| {
                ApiError::Internal(anyhow::anyhow!("the release computation panicked: {e}"))
            })?;
    state
        .metrics
        .observe_release_compute(started.elapsed().as_secs_f64());
    result.map_err(engine_error)
}

fn engine_error(e: ReleaseError) -> ApiError {
    match e {
        ReleaseError::UnknownMunicipality { .. } => ApiError::not_found(e.to_string()),
        other => ApiError::Internal(anyhow::Error::new(other).context("computing a release")),
    }
}
