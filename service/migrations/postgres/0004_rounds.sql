-- Release rounds and the privacy accountant. A round publishes one period for the whole region at once
-- (one release per scope: every municipality, `region`, `providers`) from one noisy measurement; a
-- correction is a new version of the round. Every round charges its rho (zero-concentrated DP) to each
-- calendar year of data it reads, in the transaction that stores it, under a cap per data year.
-- Rho is kept in exact integer nano-units (1 rho = 1_000_000_000), never in floating point.
-- Rounds of one period take turns on an advisory lock, and charges lock the years in ascending order
-- (service/src/store/postgres.rs, `put_round`).

CREATE TABLE rounds (
    id           uuid PRIMARY KEY,
    -- `2025`, `2025-H1`, `2025-Q3`.
    period       text NOT NULL,
    -- 1 for the first round of the period, then one more for each correction.
    version      integer NOT NULL CHECK (version >= 1),
    -- The data version the round was computed from.
    data_version text NOT NULL,
    -- Who published it: `region token 7`, `calendar`, `cli root`.
    published_by text NOT NULL,
    created_at   timestamptz NOT NULL,
    -- The round's entry in the audit chain, appended in the same transaction.
    audit_seq    bigint NOT NULL UNIQUE REFERENCES audit_log (seq),
    -- Insertion order: breaks ties between rounds created in the same microsecond.
    seq          bigint GENERATED ALWAYS AS IDENTITY,
    CONSTRAINT rounds_one_per_version UNIQUE (period, version)
);

-- The releases of a round, one per scope.
CREATE TABLE round_releases (
    id       uuid PRIMARY KEY,
    round_id uuid NOT NULL REFERENCES rounds (id),
    -- `GM0748`, `region`, `providers`.
    scope    text NOT NULL,
    -- `json`, not `jsonb`: kept verbatim (jsonb refuses \u0000 and rewrites numbers and key order).
    body     json NOT NULL,
    CONSTRAINT round_releases_one_per_scope UNIQUE (round_id, scope)
);

-- Spend so far per calendar year of data; the cap is policy (the region file), checked when charging.
-- The same year range as the months of `trajectories`.
CREATE TABLE privacy_budget (
    data_year   integer PRIMARY KEY CHECK (data_year BETWEEN 1900 AND 2999),
    spent_nanos bigint NOT NULL CHECK (spent_nanos >= 0)
);

-- Every charge: one row per (subject, data year). The spend of a year is the sum of its charges.
CREATE TABLE privacy_charges (
    id           bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    data_year    integer NOT NULL REFERENCES privacy_budget (data_year),
    rho_nanos    bigint NOT NULL CHECK (rho_nanos > 0),
    -- `round` (subject_id: the round id); `query` is for research answers.
    subject_kind text NOT NULL CHECK (subject_kind IN ('round', 'query')),
    subject_id   text NOT NULL,
    at           timestamptz NOT NULL,
    CONSTRAINT privacy_charges_once_per_year UNIQUE (subject_kind, subject_id, data_year)
);

CREATE INDEX privacy_charges_by_year ON privacy_charges (data_year, at);
