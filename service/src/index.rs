//! The release index: every stored trajectory in memory, in the release engine's form
//! ([`EngineRow`]), kept in step with the store through its change feed
//! ([`Store::trajectory_changes`]). A release then reads memory, not millions of rows from the
//! database: reading them is what made a release over a national year take many seconds.
//!
//! The store stays the only source of truth. The index is a copy that is exact at its mark: the change
//! feed hands over one consistent snapshot per call (on PostgreSQL behind a barrier that waits out
//! in-flight writers, so no commit is ever skipped), and applying it gives the stored table at the new
//! mark. Every instance keeps its own copy; an instance that starts loads it whole. Withdrawn rows leave
//! the copy at the next sync, which every release does before it builds.
//!
//! Rows are sharded by the first byte of the stage-2 client pseudonym (a keyed hash: nobody outside the
//! service can steer it), so that every client's rows sit in one shard: the engine bounds and counts per
//! shard, in parallel, and sorts only within a shard.
//!
//! Memory: about 200-240 bytes per stored trajectory (the 96-byte row and its key in the slot map, at the
//! capacities the vectors and the map grow to; `IndexData::approx_bytes`). Holds client
//! pseudonyms and outcome values: nothing here is logged but counts.
//!
//! A part of the service: it reads the store and feeds the engine; it knows no use case and no HTTP.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, RwLock, RwLockReadGuard};
use std::time::{Duration, Instant};

use kwm_schemas::api::{IndexCheck, IndexYear};
use kwm_schemas::{AgbCode, Pseudonym, RegionConfig, WireRecord};
use time::OffsetDateTime;

use crate::release::{Codebook, EngineRow};
use crate::store::{ChangeSink, Store, StoreError};

/// How long a withdrawn trajectory's pseudonym stays in the store's change feed.
pub const REMOVAL_RETENTION: time::Duration = time::Duration::days(1);

/// Shards by the client pseudonym's first byte.
pub const SHARDS: usize = 256;

/// A stored row's key: provider and stage-1 trajectory pseudonym.
type RowKey = (AgbCode, [u8; 32]);

/// The rows, sharded, and where each one sits.
#[derive(Default)]
pub struct IndexData {
    /// The store's change mark these rows are exact at.
    mark: i64,
    loaded: bool,
    shards: Vec<Vec<EngineRow>>,
    /// Key -> (shard, position in the shard). Std's keyed hasher: trajectory pseudonyms come from the
    /// providers, so the map must not be open to chosen collisions.
    slots: HashMap<RowKey, (u8, u32)>,
}

impl std::fmt::Debug for IndexData {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IndexData")
            .field("mark", &self.mark)
            .field("rows", &self.slots.len())
            .finish_non_exhaustive()
    }
}

impl IndexData {
    fn empty() -> Self {
        Self {
            shards: (0..SHARDS).map(|_| Vec::new()).collect(),
            ..Self::default()
        }
    }

    /// The rows, all of one client in one shard.
    pub fn shards(&self) -> &[Vec<EngineRow>] {
        &self.shards
    }

    pub fn rows(&self) -> usize {
        self.slots.len()
    }

    pub fn mark(&self) -> i64 {
        self.mark
    }

    /// The memory the rows and the slot map take, from their capacities (an estimate: the map's
    /// control bytes are counted, the allocator's own overhead is not).
    pub fn approx_bytes(&self) -> usize {
        let rows: usize = self.shards.iter().map(Vec::capacity).sum();
        rows * std::mem::size_of::<EngineRow>()
            + self.slots.capacity() * (std::mem::size_of::<(RowKey, (u8, u32))>() + 1)
    }

    /// Row counts and an order-independent digest (the wrapping sum of the rows' content digests) per
    /// year the rows started: equal summaries, equal rows, whatever order they were applied in.
    pub fn summary(&self) -> IndexSummary {
        let mut years: BTreeMap<u16, (u64, u128)> = BTreeMap::new();
        for row in self.shards.iter().flatten() {
            let year = u16::try_from(row.start.div_euclid(12)).unwrap_or(u16::MAX);
            let d = row.content_digest();
            let mut low = [0u8; 16];
            low.copy_from_slice(&d[..16]);
            let y = years.entry(year).or_default();
            y.0 += 1;
            y.1 = y.1.wrapping_add(u128::from_be_bytes(low));
        }
        IndexSummary {
            mark: self.mark,
            rows: self.slots.len() as u64,
            years,
        }
    }

    fn upsert(&mut self, row: EngineRow) {
        let shard = row.client[0];
        match self.slots.get(&(row.provider, row.trajectory)).copied() {
            // A correction within the same shard (the same client, or one that hashes alike).
            Some((s, at)) if s == shard => self.shards[usize::from(s)][at as usize] = row,
            // A correction that changed the client: move it.
            Some(_) => {
                self.remove(row.provider, &row.trajectory);
                self.push(row);
            }
            None => self.push(row),
        }
    }

    fn push(&mut self, row: EngineRow) {
        let shard = &mut self.shards[usize::from(row.client[0])];
        self.slots.insert(
            (row.provider, row.trajectory),
            (row.client[0], shard.len() as u32),
        );
        shard.push(row);
    }

    fn remove(&mut self, provider: AgbCode, trajectory: &[u8; 32]) {
        let Some((s, at)) = self.slots.remove(&(provider, *trajectory)) else {
            return;
        };
        let shard = &mut self.shards[usize::from(s)];
        shard.swap_remove(at as usize);
        if let Some(moved) = shard.get(at as usize) {
            self.slots
                .insert((moved.provider, moved.trajectory), (s, at));
        }
    }
}

/// Collects one change-feed call: removals first, then rows, as the store delivers them. With
/// `into` set (a full load), rows go straight into the new data.
struct Collect<'a> {
    codebook: &'a Codebook,
    removed: Vec<RowKey>,
    rows: Vec<EngineRow>,
    into: Option<IndexData>,
}

impl ChangeSink for Collect<'_> {
    fn removed(&mut self, provider: AgbCode, trajectory: &Pseudonym) {
        self.removed.push((provider, trajectory.0));
    }

    fn upsert(&mut self, provider: AgbCode, record: WireRecord) {
        let row = EngineRow::new(self.codebook, provider, &record);
        match &mut self.into {
            Some(data) => data.upsert(row),
            None => self.rows.push(row),
        }
    }
}

/// What [`IndexData::summary`] tells of a copy of the stored table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IndexSummary {
    pub mark: i64,
    pub rows: u64,
    /// Per start year: rows and the sum of their digests.
    pub years: BTreeMap<u16, (u64, u128)>,
}

impl IndexSummary {
    /// This (a running index) beside `stored` (a fresh load at the same mark).
    pub fn compare(&self, stored: &IndexSummary) -> IndexCheck {
        let years: Vec<IndexYear> = self
            .years
            .keys()
            .chain(stored.years.keys())
            .collect::<std::collections::BTreeSet<_>>()
            .into_iter()
            .map(|&year| {
                let (ir, id) = self.years.get(&year).copied().unwrap_or_default();
                let (sr, sd) = stored.years.get(&year).copied().unwrap_or_default();
                IndexYear {
                    year,
                    index_rows: ir,
                    stored_rows: sr,
                    index_digest: format!("{id:032x}"),
                    stored_digest: format!("{sd:032x}"),
                    consistent: ir == sr && id == sd,
                }
            })
            .collect();
        IndexCheck {
            mark: stored.mark,
            consistent: self.mark == stored.mark
                && self.rows == stored.rows
                && years.iter().all(|y| y.consistent),
            index_rows: self.rows,
            stored_rows: stored.rows,
            years,
        }
    }
}

/// What one sync did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Synced {
    /// Rows held after it.
    pub rows: usize,
    /// Removals and rows applied (0: the index was current).
    pub changes: usize,
    pub full_load: bool,
    pub mark: i64,
}

/// The index of one service instance.
pub struct ReleaseIndex {
    codebook: Codebook,
    data: RwLock<IndexData>,
    /// One sync at a time.
    sync: tokio::sync::Mutex<()>,
}

impl std::fmt::Debug for ReleaseIndex {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ReleaseIndex")
            .field("data", &*self.read())
            .finish_non_exhaustive()
    }
}

impl ReleaseIndex {
    pub fn new(region: &RegionConfig) -> Self {
        Self {
            codebook: Codebook::new(region),
            data: RwLock::new(IndexData::empty()),
            sync: tokio::sync::Mutex::new(()),
        }
    }

    /// The rows as of the last sync, for a build. Hold it only while building: a sync waits for it.
    pub fn read(&self) -> RwLockReadGuard<'_, IndexData> {
        self.data
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Brings the index up to the store's latest committed change: the whole table on first use, else
    /// what changed since the mark. Cheap when nothing changed (one small query).
    pub async fn sync(self: &Arc<Self>, store: &dyn Store) -> Result<Synced, StoreError> {
        let _one = self.sync.lock().await;
        self.sync_holding_lock(store).await
    }

    /// Compares this index with the stored table: brings it up to date, then loads the table afresh
    /// (as a starting instance does) and compares the two at the same change mark. Writes that land
    /// between the two reads move the mark: then it tries again, a few times, and reports the last try
    /// (its `consistent` false and the marks apart) when the store keeps moving.
    pub async fn verify(self: &Arc<Self>, store: &dyn Store) -> Result<IndexCheck, StoreError> {
        let _one = self.sync.lock().await;
        let mut tries = 1;
        loop {
            self.sync_holding_lock(store).await?;
            let running = self.read().summary();
            let mut fresh = Collect {
                codebook: &self.codebook,
                removed: Vec::new(),
                rows: Vec::new(),
                into: Some(IndexData::empty()),
            };
            let mark = store.trajectory_changes(0, &mut fresh).await?;
            let mut data = fresh.into.take().unwrap_or_else(IndexData::empty);
            data.mark = mark;
            let check = running.compare(&data.summary());
            if running.mark == mark || tries == 5 {
                return Ok(check);
            }
            tries += 1;
        }
    }

    async fn sync_holding_lock(self: &Arc<Self>, store: &dyn Store) -> Result<Synced, StoreError> {
        let (since, loaded) = {
            let d = self.read();
            (d.mark, d.loaded)
        };
        // Withdrawn trajectories' pseudonyms leave the change feed after a day; every running index
        // has long read them by then (one that has not is told so, and loads again).
        store
            .prune_change_feed(OffsetDateTime::now_utc() - REMOVAL_RETENTION)
            .await?;
        let started = Instant::now();
        let synced = match self.sync_from(store, since, loaded).await {
            // The database does not know the mark (restored from a backup, say): load it whole.
            Err(StoreError::UnknownMark { .. }) if loaded => {
                tracing::warn!(
                    "the store does not know the release index's mark; loading it again"
                );
                self.sync_from(store, 0, false).await
            }
            other => other,
        }?;
        if synced.full_load {
            tracing::info!(
                rows = synced.rows,
                megabytes = self.read().approx_bytes() / 1_000_000,
                seconds = started.elapsed().as_secs_f64(),
                "release index loaded"
            );
        }
        Ok(synced)
    }

    async fn sync_from(
        self: &Arc<Self>,
        store: &dyn Store,
        since: i64,
        loaded: bool,
    ) -> Result<Synced, StoreError> {
        let mut sink = Collect {
            codebook: &self.codebook,
            removed: Vec::new(),
            rows: Vec::new(),
            into: (!loaded).then(IndexData::empty),
        };
        let from = if loaded { since } else { 0 };
        let mark = store.trajectory_changes(from, &mut sink).await?;
        let Collect {
            removed,
            rows,
            into,
            ..
        } = sink;
        let changes = removed.len() + rows.len();
        let this = self.clone();
        // Applying may touch millions of rows and takes the write lock: off the async threads.
        tokio::task::spawn_blocking(move || {
            let mut data = this
                .data
                .write()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            match into {
                Some(mut fresh) => {
                    fresh.mark = mark;
                    fresh.loaded = true;
                    let rows = fresh.rows();
                    *data = fresh;
                    Synced {
                        rows,
                        changes: rows,
                        full_load: true,
                        mark,
                    }
                }
                None => {
                    for (provider, trajectory) in &removed {
                        data.remove(*provider, trajectory);
                    }
                    for row in rows {
                        data.upsert(row);
                    }
                    data.mark = mark;
                    Synced {
                        rows: data.rows(),
                        changes,
                        full_load: false,
                        mark,
                    }
                }
            }
        })
        .await
        .map_err(|e| StoreError::Other(anyhow::anyhow!("applying index changes panicked: {e}")))
    }

    /// Keeps the index in step in the background, every `every`, so that a release after a large
    /// upload does not wait for the catch-up. Logs counts only.
    pub async fn keep_in_step(
        self: Arc<Self>,
        store: Arc<dyn Store>,
        metrics: crate::metrics::Metrics,
        every: Duration,
    ) {
        let mut tick = tokio::time::interval(every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            match self.sync(store.as_ref()).await {
                Ok(s) => metrics.set_index_rows(s.rows),
                Err(e) => {
                    metrics.index_sync_failed();
                    tracing::warn!(error = %e, "release index sync failed; next try in {every:?}");
                }
            }
        }
    }
}
