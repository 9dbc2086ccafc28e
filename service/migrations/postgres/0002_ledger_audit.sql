-- The release side of the store: the ledger of frozen releases, the privacy budget they charged, the audit
-- chain, and the record of withdrawals (so that the data version changes on every one of them).
-- Epsilon is kept in exact integer nano-units (`Epsilon::to_nanos`), never in floating point.

CREATE TABLE releases (
    id            uuid PRIMARY KEY,
    -- `region` or a CBS code.
    scope         text NOT NULL,
    -- `2025`, `2025-H1`, `2025-Q3`.
    period        text NOT NULL,
    version       integer NOT NULL CHECK (version >= 1),
    data_version  text NOT NULL,
    epsilon_nanos bigint NOT NULL CHECK (epsilon_nanos > 0),
    created_at    timestamptz NOT NULL,
    -- Insertion order: breaks ties between releases created in the same microsecond.
    seq           bigint GENERATED ALWAYS AS IDENTITY,
    -- `json`, not `jsonb`: kept verbatim (jsonb refuses \u0000 and rewrites numbers and key order).
    body          json NOT NULL,
    -- A release is frozen: one per data version of (scope, period), and versions count up without gaps.
    CONSTRAINT releases_one_per_data_version UNIQUE (scope, period, data_version),
    CONSTRAINT releases_one_per_version UNIQUE (scope, period, version)
);

-- Which partitions a release charged.
CREATE TABLE release_partitions (
    release_id uuid NOT NULL REFERENCES releases (id),
    partition  text NOT NULL,
    PRIMARY KEY (release_id, partition)
);

-- Lifetime spend per partition (`GM0748/2025-Q1`); the cap is policy, checked when charging.
CREATE TABLE budget (
    partition   text PRIMARY KEY,
    spent_nanos bigint NOT NULL CHECK (spent_nanos >= 0)
);

-- The audit chain: each entry carries the hash of the one before (service/src/audit.rs). Appends lock
-- the table (EXCLUSIVE: plain reads go on) so that two replicas never fork the chain.
CREATE TABLE audit_log (
    seq            bigint PRIMARY KEY CHECK (seq >= 1),
    at             timestamptz NOT NULL,
    actor_role     text NOT NULL,
    actor_id       text NOT NULL,
    action         text NOT NULL,
    subject        text NOT NULL,
    -- The provider whose data the action touched: the provider's own audit view filters on it.
    provider       text CHECK (provider ~ '^[0-9]{8}$'),
    details_digest bytea NOT NULL CHECK (octet_length(details_digest) = 32),
    prev_hash      bytea NOT NULL CHECK (octet_length(prev_hash) = 32),
    hash           bytea NOT NULL CHECK (octet_length(hash) = 32)
);

CREATE INDEX audit_log_by_provider ON audit_log (provider, seq);

-- One row per withdrawal (of a batch or a trajectory): the data version counts them.
CREATE TABLE withdrawals (
    id           bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    provider     text NOT NULL,
    at           timestamptz NOT NULL,
    trajectories bigint NOT NULL CHECK (trajectories >= 0),
    batches      bigint NOT NULL CHECK (batches >= 0)
);
