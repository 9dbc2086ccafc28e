//! The audit trail in use: which actions append which entries (`crate::audit` holds the chain itself),
//! what happens when an entry cannot be written, the `forbidden` responses recorded centrally, and the
//! verification of the stored chain that `kwm-service admin audit verify` runs.
//!
//! When an entry cannot be written:
//! - an action that changes state or hands out data (upload, withdrawal, export, token issue and
//!   revocation, key rotation) fails with 503 (database unavailable) or 500 ([`append_required`]).
//!   The entry of every action that changes state is appended in the action's own transaction
//!   (`Store::put_batch_recorded`, `Store::withdraw_batch_recorded`, `Store::put_token_recorded`,
//!   `Store::put_provider_recorded`, `Store::put_rotated_key_recorded`, ...), as a round's is: both
//!   commit or neither ([`failed_action`]; the operator's command fails saying nothing changed). An
//!   export appends before any data leaves, and its `export-sent` entry after.
//! - a refusal (a bad signature, a forbidden call, a batch conflict) stands as answered; the failed
//!   append is logged as an error ([`append_best_effort`]): a refusal changed nothing.
//!
//! Forbidden calls are recorded once per token and window, the rest of the window as one counted entry
//! ([`RefusalTally`]): a token cannot flood the chain.
//!
//! Deleting the newest entries cannot be seen from a hash chain alone. Verification therefore also
//! checks that every batch and release still stored has its entry, and can compare the head with one
//! recorded outside the database before (`--anchor FILE`).

use std::collections::HashSet;
use std::path::Path;

use kwm_schemas::api::AuditRecord;
use kwm_schemas::{AgbCode, Role};
use serde::Serialize;
use uuid::Uuid;

use crate::app::access::Caller;
use crate::app::error::ApiError;
use crate::app::rounds::Actor;
use crate::audit::{digest_of, AuditAction, AuditEntry, ChainError, ChainVerifier, NewAuditEntry};
use crate::clock::Clock;
use crate::metrics::Metrics;
use crate::store::{Store, StoreError};

/// Entries read per page when the whole chain is loaded.
pub const PAGE: u32 = 1000;

/// Marks a response whose refusal the handler has already recorded, so that the central `forbidden`
/// entry is not written twice.
#[derive(Debug, Clone, Copy)]
pub struct AlreadyAudited;

/// The actor of an API call: its role and token id (never the token).
pub fn api_actor(caller: &Caller) -> Actor {
    Actor {
        role: caller.role.as_str().into(),
        id: format!("token {}", caller.token_id),
    }
}

/// The actor of an operator command: `admin`, `cli USER`, USER being the person who ran it
/// ([`os_user`]); `cli unknown` only when the system cannot say.
pub fn operator() -> Actor {
    Actor {
        role: Role::Admin.as_str().into(),
        id: format!("cli {}", os_user().unwrap_or_else(|| "unknown".into())),
    }
}

/// What a provider sees of an operator's login in its audit view.
pub const OPERATOR_AS_PROVIDERS_SEE_IT: &str = "operator";

/// Who runs this process: the user behind `sudo` (`SUDO_USER`), else `USER`, `LOGNAME` or
/// `USERNAME`, else the name of the process's user id in `/etc/passwd` (services and containers
/// often run without those variables), else `uid N`.
pub fn os_user() -> Option<String> {
    let usable =
        |u: &str| !u.is_empty() && u.len() <= 64 && u.chars().all(|c| c.is_ascii_graphic());
    for var in ["SUDO_USER", "USER", "LOGNAME", "USERNAME"] {
        if let Ok(u) = std::env::var(var) {
            if usable(&u) {
                return Some(u);
            }
        }
    }
    let uid = process_uid()?;
    let passwd = std::fs::read_to_string("/etc/passwd").unwrap_or_default();
    let name = passwd.lines().find_map(|line| {
        let mut f = line.split(':');
        let name = f.next()?;
        let id = f.nth(1)?.parse::<u32>().ok()?;
        (id == uid && usable(name)).then(|| name.to_string())
    });
    Some(name.unwrap_or_else(|| format!("uid {uid}")))
}

/// The real user id of this process, from `/proc/self/status` (no libc call needed).
fn process_uid() -> Option<u32> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("Uid:"))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|uid| uid.parse().ok())
}

/// The subject of an upload, replay or refusal of one batch; verification looks for it.
pub fn batch_subject(batch_id: Uuid) -> String {
    format!("batch {batch_id}")
}

/// An entry at the current time.
pub fn entry<T: Serialize>(
    actor: &Actor,
    action: AuditAction,
    subject: impl Into<String>,
    provider: Option<AgbCode>,
    details: &T,
) -> NewAuditEntry {
    NewAuditEntry {
        // The chain records when things happened: the system clock, never a test's.
        at: crate::clock::SystemClock.now(),
        actor_role: actor.role.clone(),
        actor_id: actor.id.clone(),
        action,
        subject: subject.into(),
        provider,
        details_digest: digest_of(details),
    }
}

/// Where entries go: the store, and the metrics that count failed appends.
#[derive(Debug, Clone, Copy)]
pub struct Recorder<'a> {
    pub store: &'a dyn Store,
    pub metrics: &'a Metrics,
}

/// Appends the entry of an action that changed state or hands out data: if it cannot be written the
/// request fails (503 when the database is unavailable, else 500), counted in
/// `kwm_audit_append_failures_total`.
pub async fn append_required(
    to: Recorder<'_>,
    entry: NewAuditEntry,
) -> Result<AuditEntry, ApiError> {
    to.store.append_audit(&entry).await.map_err(|e| {
        to.metrics.observe_audit_failure(true);
        tracing::error!(
            action = entry.action.as_str(),
            error = %e,
            "the audit entry could not be written; the request fails"
        );
        ApiError::from(e)
    })
}

/// The answer to an action whose store call failed; when it was the action's own audit entry that
/// could not be written in its transaction (so the action was rolled back), the failure is counted in
/// `kwm_audit_append_failures_total` and logged, as for any failed append.
pub fn failed_action(to: Recorder<'_>, e: StoreError, action: &'static str) -> ApiError {
    if matches!(e, StoreError::AuditUnwritten(_)) {
        to.metrics.observe_audit_failure(true);
        tracing::error!(action, error = %e, "an action failed: its audit entry could not be written");
    }
    ApiError::from(e)
}

/// Appends the entry of a refusal: the refusal stands either way; a failure is logged as an error and
/// counted.
pub async fn append_best_effort(to: Recorder<'_>, entry: NewAuditEntry) {
    if let Err(e) = to.store.append_audit(&entry).await {
        to.metrics.observe_audit_failure(false);
        tracing::error!(
            action = entry.action.as_str(),
            error = %e,
            "the audit entry of a refusal could not be written"
        );
    }
}

/// An entry as a provider's own audit view shows it: an operator appears by role
/// ([`OPERATOR_AS_PROVIDERS_SEE_IT`]), never by login; the full actor stays in the admin's view.
pub fn to_provider_record(e: &AuditEntry) -> AuditRecord {
    let mut r = to_record(e);
    if r.actor_role == Role::Admin.as_str() {
        r.actor_id = OPERATOR_AS_PROVIDERS_SEE_IT.into();
    }
    r
}

/// An entry as the API shows it.
pub fn to_record(e: &AuditEntry) -> AuditRecord {
    AuditRecord {
        seq: e.seq,
        at: e.entry.at,
        actor_role: e.entry.actor_role.clone(),
        actor_id: e.entry.actor_id.clone(),
        action: e.entry.action.as_str().into(),
        subject: e.entry.subject.clone(),
        provider: e.entry.provider,
        details_digest: hex::encode(e.entry.details_digest),
        prev_hash: hex::encode(e.prev_hash),
        hash: hex::encode(e.hash),
    }
}

/// Refused calls per token and window, so that one token cannot flood the audit chain: the first
/// refusal of a window is recorded at once, the rest are counted per route and recorded as one entry
/// when the window closes ([`RefusalTally::take_closed`], run every window by the service, and
/// [`RefusalTally::take_all`] at shutdown). A window's counts live in this instance's memory: a crash
/// loses at most one window's count of calls that changed nothing.
#[derive(Debug)]
pub struct RefusalTally {
    window: std::time::Duration,
    inner: std::sync::Mutex<RefusalWindows>,
}

#[derive(Debug, Default)]
struct RefusalWindows {
    /// The open window of each token that was refused, by token hash.
    open: std::collections::HashMap<[u8; 32], RefusalWindow>,
    /// Closed windows with counts, not yet recorded.
    closed: Vec<RefusalCount>,
}

#[derive(Debug)]
struct RefusalWindow {
    started: std::time::Instant,
    /// Who was refused, once the first refusal's token was looked up.
    actor: Option<(Actor, Option<AgbCode>)>,
    /// Refusals after the first, per `METHOD /route/template`.
    more: std::collections::BTreeMap<String, u64>,
}

impl RefusalWindow {
    fn new(started: std::time::Instant) -> Self {
        Self {
            started,
            actor: None,
            more: Default::default(),
        }
    }

    /// What is left to record of a closed window.
    fn into_count(self) -> Option<RefusalCount> {
        let (actor, provider) = self.actor?;
        (!self.more.is_empty()).then_some(RefusalCount {
            actor,
            provider,
            per_route: self.more,
        })
    }
}

/// The counted refusals of one token's closed window, to be recorded as one entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RefusalCount {
    pub actor: Actor,
    pub provider: Option<AgbCode>,
    pub per_route: std::collections::BTreeMap<String, u64>,
}

impl RefusalCount {
    pub fn total(&self) -> u64 {
        self.per_route.values().sum()
    }

    /// `forbidden` entry: `49 more forbidden calls: GET /v1/export (40), GET /v1/audit (9)`.
    pub fn to_entry(&self) -> NewAuditEntry {
        let routes: Vec<String> = self
            .per_route
            .iter()
            .map(|(route, n)| format!("{route} ({n})"))
            .collect();
        let subject = format!(
            "{} more forbidden calls: {}",
            self.total(),
            routes.join(", ")
        );
        entry(
            &self.actor,
            AuditAction::Forbidden,
            subject,
            self.provider,
            &self.per_route,
        )
    }
}

impl RefusalTally {
    pub fn new(window: std::time::Duration) -> Self {
        Self {
            window: window.max(std::time::Duration::from_secs(1)),
            inner: Default::default(),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, RefusalWindows> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Counts a refusal of the token with this hash; true when it opens a window (record it now).
    pub fn admit(&self, token_hash: [u8; 32], route: &str, now: std::time::Instant) -> bool {
        let mut w = self.lock();
        let RefusalWindows { open, closed } = &mut *w;
        match open.get_mut(&token_hash) {
            Some(win) if now.duration_since(win.started) < self.window => {
                *win.more.entry(route.to_string()).or_default() += 1;
                false
            }
            Some(win) => {
                let old = std::mem::replace(win, RefusalWindow::new(now));
                closed.extend(old.into_count());
                true
            }
            None => {
                open.insert(token_hash, RefusalWindow::new(now));
                true
            }
        }
    }

    /// Names who was refused in the token's open window (after the lookup of its first refusal).
    pub fn identify(&self, token_hash: [u8; 32], actor: Actor, provider: Option<AgbCode>) {
        if let Some(win) = self.lock().open.get_mut(&token_hash) {
            win.actor.get_or_insert((actor, provider));
        }
    }

    /// Removes the windows closed by `now` and returns the counts to record (windows that had more
    /// than their first refusal).
    pub fn take_closed(&self, now: std::time::Instant) -> Vec<RefusalCount> {
        self.take(|win| now.duration_since(win.started) >= self.window)
    }

    /// Removes every window (at shutdown) and returns the counts to record.
    pub fn take_all(&self) -> Vec<RefusalCount> {
        self.take(|_| true)
    }

    fn take(&self, is_closed: impl Fn(&RefusalWindow) -> bool) -> Vec<RefusalCount> {
        let mut w = self.lock();
        let mut counts = std::mem::take(&mut w.closed);
        let done: Vec<[u8; 32]> = w
            .open
            .iter()
            .filter(|(_, win)| is_closed(win))
            .map(|(k, _)| *k)
            .collect();
        for k in done {
            counts.extend(w.open.remove(&k).and_then(RefusalWindow::into_count));
        }
        counts
    }

    /// Records the counts of closed windows once a window, until the future is dropped.
    pub async fn record_closed_windows(
        self: std::sync::Arc<Self>,
        store: std::sync::Arc<dyn Store>,
        metrics: Metrics,
    ) {
        let mut tick = tokio::time::interval(self.window);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let to = Recorder {
            store: store.as_ref(),
            metrics: &metrics,
        };
        loop {
            tick.tick().await;
            for count in self.take_closed(std::time::Instant::now()) {
                append_best_effort(to, count.to_entry()).await;
            }
        }
    }
}

/// Every stored entry, oldest first, read in pages.
pub async fn load_chain(store: &dyn Store) -> Result<Vec<AuditEntry>, StoreError> {
    let mut all: Vec<AuditEntry> = Vec::new();
    let mut after = 0i64;
    loop {
        let page = store.list_audit(after, PAGE, None).await?;
        let full = page.len() == PAGE as usize;
        match page.last() {
            Some(last) => after = last.seq,
            None => break,
        }
        all.extend(page);
        if !full {
            break;
        }
    }
    Ok(all)
}

/// A head recorded outside the database: the newest entry's sequence number and hash.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Anchor {
    pub seq: i64,
    pub hash: [u8; 32],
}

impl Anchor {
    /// `SEQ HASH` (hash in hex), as [`Anchor::write`] leaves it.
    pub fn parse(text: &str) -> Option<Self> {
        let mut parts = text.split_whitespace();
        let seq = parts.next()?.parse().ok()?;
        let mut hash = [0u8; 32];
        hex::decode_to_slice(parts.next()?, &mut hash).ok()?;
        parts.next().is_none().then_some(Self { seq, hash })
    }

    /// Reads an anchor file; `None` when it does not exist yet.
    pub fn read(path: &Path) -> anyhow::Result<Option<Self>> {
        match std::fs::read_to_string(path) {
            Ok(text) => Self::parse(&text).map(Some).ok_or_else(|| {
                anyhow::anyhow!(
                    "{} is not an audit anchor (`SEQ HASH` as `admin audit verify --anchor` writes it)",
                    path.display()
                )
            }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(anyhow::anyhow!("reading {}: {e}", path.display())),
        }
    }

    pub fn write(&self, path: &Path) -> anyhow::Result<()> {
        std::fs::write(path, format!("{} {}\n", self.seq, hex::encode(self.hash)))
            .map_err(|e| anyhow::anyhow!("writing {}: {e}", path.display()))
    }
}

/// Why verification failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum VerifyError {
    /// A stored entry was changed, deleted, inserted or reordered.
    #[error(transparent)]
    Chain(#[from] ChainError),
    /// An entry that the anchor recorded is gone or different.
    #[error(
        "entry {seq}: the recorded head is {}; entries were deleted or rewritten after it was recorded",
        if *.found { "different" } else { "missing" }
    )]
    Anchor { seq: i64, found: bool },
    /// A stored batch has no upload entry: entries were deleted at the end of the chain (or the
    /// upload's entry could not be written).
    #[error(
        "batch {batch_id} of provider {provider} has no upload entry after entry {head}: entries were \
         deleted from the end of the chain, or the upload's entry could not be written"
    )]
    MissingUpload {
        provider: AgbCode,
        batch_id: Uuid,
        head: i64,
    },
    /// A release (before rounds) or a round of the ledger has no release entry.
    #[error(
        "release or round {release} has no release entry after entry {head}: entries were deleted \
         from the end of the chain, or the release's entry could not be written"
    )]
    MissingRelease { release: Uuid, head: i64 },
}

impl VerifyError {
    /// The entry named: the first broken one, or the head after which entries are missing.
    pub fn seq(&self) -> i64 {
        match self {
            Self::Chain(e) => e.seq(),
            Self::Anchor { seq, .. } => *seq,
            Self::MissingUpload { head, .. } | Self::MissingRelease { head, .. } => *head + 1,
        }
    }
}

/// The outcome of verifying the stored chain.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verification {
    /// Entries read.
    pub entries: usize,
    /// The newest entry.
    pub head: Option<Anchor>,
    pub result: Result<(), VerifyError>,
}

/// Checks the stored chain page by page ([`PAGE`] entries at a time, so a chain of any length is
/// verified in constant memory for the chain itself): the hash chain ([`ChainVerifier`]), the head
/// recorded in `anchor` if given, and that every stored batch and every ledger release has its entry
/// (which a deletion of the newest entries would remove). Only the subjects of upload and release
/// entries are kept, one per stored batch or release.
pub async fn verify(store: &dyn Store, anchor: Option<Anchor>) -> Result<Verification, StoreError> {
    let mut chain = ChainVerifier::default();
    let mut head: Option<Anchor> = None;
    let mut anchor_found: Option<bool> = None;
    let mut uploads: HashSet<(AgbCode, String)> = HashSet::new();
    let mut releases: HashSet<String> = HashSet::new();
    let mut after = 0i64;
    let mut failure: Option<VerifyError> = None;
    let mut entries = 0usize;
    loop {
        let page = store.list_audit(after, PAGE, None).await?;
        let full = page.len() == PAGE as usize;
        for e in &page {
            // After the first broken entry the rest is only counted: the report names that one.
            entries += 1;
            head = Some(Anchor {
                seq: e.seq,
                hash: e.hash,
            });
            if failure.is_some() {
                continue;
            }
            if let Err(err) = chain.check(e) {
                failure = Some(err.into());
                continue;
            }
            if let Some(a) = anchor.filter(|a| a.seq == e.seq) {
                anchor_found = Some(a.hash == e.hash);
            }
            match e.entry.action {
                AuditAction::Upload => {
                    if let Some(p) = e.entry.provider {
                        uploads.insert((p, e.entry.subject.clone()));
                    }
                }
                AuditAction::Release => {
                    // `release <id> (...)` before rounds, `round <id> (<period>)` since.
                    if let Some(id) = e
                        .entry
                        .subject
                        .strip_prefix("release ")
                        .or_else(|| e.entry.subject.strip_prefix("round "))
                        .and_then(|s| s.split_whitespace().next())
                    {
                        releases.insert(id.to_string());
                    }
                }
                _ => {}
            }
        }
        match page.last() {
            Some(last) if full => after = last.seq,
            _ => break,
        }
    }
    let result = match failure {
        Some(e) => Err(e),
        None => match (anchor, anchor_found) {
            (Some(a), found) if found != Some(true) => Err(VerifyError::Anchor {
                seq: a.seq,
                found: found.is_some(),
            }),
            _ => {
                let head_seq = head.map_or(0, |h| h.seq);
                check_entries_exist(store, &uploads, &releases, head_seq).await?
            }
        },
    };
    Ok(Verification {
        entries,
        head,
        result,
    })
}

/// Every stored batch and every ledger release (or round) has its entry.
async fn check_entries_exist(
    store: &dyn Store,
    uploads: &HashSet<(AgbCode, String)>,
    releases: &HashSet<String>,
    head: i64,
) -> Result<Result<(), VerifyError>, StoreError> {
    for p in store.list_providers().await? {
        for b in store.list_batches(p.agb).await? {
            if !uploads.contains(&(p.agb, batch_subject(b.batch_id))) {
                return Ok(Err(VerifyError::MissingUpload {
                    provider: p.agb,
                    batch_id: b.batch_id,
                    head,
                }));
            }
        }
    }
    for r in store.list_releases(None, None).await? {
        if !releases.contains(&r.id.to_string()) {
            return Ok(Err(VerifyError::MissingRelease {
                release: r.id,
                head,
            }));
        }
    }
    // A round and its entry are written in one transaction; a round without one means entries
    // were deleted from the end of the chain.
    for r in store.list_rounds(None).await? {
        if !releases.contains(&r.id.to_string()) {
            return Ok(Err(VerifyError::MissingRelease {
                release: r.id,
                head,
            }));
        }
    }
    Ok(Ok(()))
}

/// Issues a token the way the operator's commands do: stored as a hash, with its `token-issued`
/// entry in the same transaction (a token nobody can account for never exists).
pub async fn issue_token(
    store: &dyn Store,
    actor: &Actor,
    role: Role,
    scope: Option<&str>,
    label: &str,
) -> anyhow::Result<(i64, zeroize::Zeroizing<String>)> {
    let provider = match role {
        Role::Provider => scope.and_then(|s| s.parse().ok()),
        _ => None,
    };
    let (actor, scope_text, label_text) =
        (actor.clone(), scope.map(str::to_owned), label.to_owned());
    let record = move |id: &i64| {
        entry(
            &actor,
            AuditAction::TokenIssued,
            format!("token {id} ({role})"),
            provider,
            &serde_json::json!({
                "id": id, "role": role.as_str(), "scope": scope_text, "label": label_text
            }),
        )
    };
    // A failed append issues nothing (`AuditUnwritten`: "nothing was changed").
    crate::app::access::issue_token_recorded(store, role, scope, label, Some(&record)).await
}

#[cfg(test)]
mod tests {
    use super::*;

    fn admin() -> Actor {
        Actor {
            role: "municipality".into(),
            id: "token 3".into(),
        }
    }

    #[test]
    fn refusals_are_recorded_once_a_window_and_counted_after() {
        use std::time::{Duration, Instant};
        let tally = RefusalTally::new(Duration::from_secs(60));
        let t0 = Instant::now();
        let (a, b) = ([1u8; 32], [2u8; 32]);
        assert!(
            tally.admit(a, "GET /v1/audit", t0),
            "the first opens a window"
        );
        tally.identify(a, admin(), None);
        for i in 1..=3u64 {
            assert!(!tally.admit(a, "GET /v1/audit", t0 + Duration::from_secs(i)));
        }
        assert!(!tally.admit(a, "GET /v1/export", t0 + Duration::from_secs(5)));
        assert!(
            tally.admit(b, "GET /v1/audit", t0),
            "another token has its own window"
        );
        tally.identify(b, admin(), None);
        assert_eq!(tally.take_closed(t0 + Duration::from_secs(59)), vec![]);

        // The next refusal after the window opens a new one; the closed one waits to be recorded.
        assert!(tally.admit(a, "GET /v1/audit", t0 + Duration::from_secs(61)));
        let closed = tally.take_closed(t0 + Duration::from_secs(62));
        assert_eq!(
            closed.len(),
            1,
            "b had only its first refusal: nothing more to record"
        );
        assert_eq!(closed[0].total(), 4);
        assert_eq!(
            closed[0].to_entry().subject,
            "4 more forbidden calls: GET /v1/audit (3), GET /v1/export (1)"
        );
        assert!(tally.take_closed(t0 + Duration::from_secs(62)).is_empty());
        assert!(
            tally.take_all().is_empty(),
            "a's new window holds its first call only"
        );
    }

    #[test]
    fn anchors_round_trip() {
        let a = Anchor {
            seq: 42,
            hash: [7u8; 32],
        };
        let text = format!("{} {}\n", a.seq, hex::encode(a.hash));
        assert_eq!(Anchor::parse(&text), Some(a));
        assert_eq!(Anchor::parse("42"), None);
        assert_eq!(Anchor::parse("x 00"), None);
        assert_eq!(Anchor::parse(&format!("{text} extra")), None);
    }

    #[test]
    fn actors_never_carry_a_token() {
        let caller = Caller {
            token_id: 9,
            role: Role::Provider,
            scope: Some("12345678".into()),
        };
        let a = api_actor(&caller);
        assert_eq!((a.role.as_str(), a.id.as_str()), ("provider", "token 9"));
        assert_eq!(operator().role, "admin");
        assert!(operator().id.starts_with("cli "));
        assert!(process_uid().is_some(), "the process's uid is readable");
    }
}
