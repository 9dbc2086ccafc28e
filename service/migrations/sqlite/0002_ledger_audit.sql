-- The release side of the store: the ledger of frozen releases, the privacy budget they charged, the audit
-- chain, and the record of withdrawals (so that the data version changes on every one of them).
-- Epsilon is kept in exact integer nano-units (`Epsilon::to_nanos`), never in floating point. Timestamps are
-- UTC text as in 0001 ('2025-03-01T12:00:00.000000Z').

CREATE TABLE releases (
    -- Lower-case hyphenated UUID.
    id            TEXT NOT NULL PRIMARY KEY CHECK (length(id) = 36),
    -- `region` or a CBS code.
    scope         TEXT NOT NULL,
    -- `2025`, `2025-H1`, `2025-Q3`.
    period        TEXT NOT NULL,
    version       INTEGER NOT NULL CHECK (version >= 1),
    data_version  TEXT NOT NULL,
    epsilon_nanos INTEGER NOT NULL CHECK (epsilon_nanos > 0),
    created_at    TEXT NOT NULL,
    -- The release as JSON text, kept verbatim.
    body          TEXT NOT NULL,
    -- A release is frozen: one per data version of (scope, period), and versions count up without gaps.
    CONSTRAINT releases_one_per_data_version UNIQUE (scope, period, data_version),
    CONSTRAINT releases_one_per_version UNIQUE (scope, period, version)
) STRICT;

-- Which partitions a release charged.
CREATE TABLE release_partitions (
    release_id TEXT NOT NULL REFERENCES releases (id),
    partition  TEXT NOT NULL,
    PRIMARY KEY (release_id, partition)
) STRICT;

-- Lifetime spend per partition (`GM0748/2025-Q1`); the cap is policy, checked when charging.
CREATE TABLE budget (
    partition   TEXT NOT NULL PRIMARY KEY,
    spent_nanos INTEGER NOT NULL CHECK (spent_nanos >= 0)
) STRICT;

-- The audit chain: each entry carries the hash of the one before (service/src/audit.rs).
CREATE TABLE audit_log (
    seq            INTEGER NOT NULL PRIMARY KEY CHECK (seq >= 1),
    at             TEXT NOT NULL,
    actor_role     TEXT NOT NULL,
    actor_id       TEXT NOT NULL,
    action         TEXT NOT NULL,
    subject        TEXT NOT NULL,
    -- The provider whose data the action touched: the provider's own audit view filters on it.
    provider       TEXT CHECK (provider IS NULL OR (length(provider) = 8 AND provider NOT GLOB '*[^0-9]*')),
    details_digest BLOB NOT NULL CHECK (length(details_digest) = 32),
    prev_hash      BLOB NOT NULL CHECK (length(prev_hash) = 32),
    hash           BLOB NOT NULL CHECK (length(hash) = 32)
) STRICT;

CREATE INDEX audit_log_by_provider ON audit_log (provider, seq);

-- One row per withdrawal (of a batch or a trajectory): the data version counts them.
CREATE TABLE withdrawals (
    id           INTEGER PRIMARY KEY AUTOINCREMENT,
    provider     TEXT NOT NULL,
    at           TEXT NOT NULL,
    trajectories INTEGER NOT NULL CHECK (trajectories >= 0),
    batches      INTEGER NOT NULL CHECK (batches >= 0)
) STRICT;
