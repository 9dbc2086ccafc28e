-- Release rounds and the privacy accountant. A round publishes one period for the whole region at once
-- (one release per scope: every municipality, `region`, `providers`) from one noisy measurement; a
-- correction is a new version of the round. Every round charges its rho (zero-concentrated DP) to each
-- calendar year of data it reads, in the transaction that stores it, under a cap per data year.
-- Rho is kept in exact integer nano-units (1 rho = 1_000_000_000), never in floating point. Timestamps
-- are UTC text as in 0001 ('2025-03-01T12:00:00.000000Z').

CREATE TABLE rounds (
    -- Lower-case hyphenated UUID.
    id           TEXT NOT NULL PRIMARY KEY CHECK (length(id) = 36),
    -- `2025`, `2025-H1`, `2025-Q3`.
    period       TEXT NOT NULL,
    -- 1 for the first round of the period, then one more for each correction.
    version      INTEGER NOT NULL CHECK (version >= 1),
    -- The data version the round was computed from.
    data_version TEXT NOT NULL,
    -- Who published it: `region token 7`, `calendar`, `cli root`.
    published_by TEXT NOT NULL,
    created_at   TEXT NOT NULL,
    -- The round's entry in the audit chain, appended in the same transaction.
    audit_seq    INTEGER NOT NULL UNIQUE REFERENCES audit_log (seq),
    CONSTRAINT rounds_one_per_version UNIQUE (period, version)
) STRICT;

-- The releases of a round, one per scope.
CREATE TABLE round_releases (
    id       TEXT NOT NULL PRIMARY KEY CHECK (length(id) = 36),
    round_id TEXT NOT NULL REFERENCES rounds (id),
    -- `GM0748`, `region`, `providers`.
    scope    TEXT NOT NULL,
    -- The release as JSON text, kept verbatim.
    body     TEXT NOT NULL,
    CONSTRAINT round_releases_one_per_scope UNIQUE (round_id, scope)
) STRICT;

-- Spend so far per calendar year of data; the cap is policy (the region file), checked when charging.
-- The same year range as the months of `trajectories`.
CREATE TABLE privacy_budget (
    data_year   INTEGER NOT NULL PRIMARY KEY CHECK (data_year BETWEEN 1900 AND 2999),
    spent_nanos INTEGER NOT NULL CHECK (spent_nanos >= 0)
) STRICT;

-- Every charge: one row per (subject, data year). The spend of a year is the sum of its charges.
CREATE TABLE privacy_charges (
    id           INTEGER PRIMARY KEY AUTOINCREMENT,
    data_year    INTEGER NOT NULL REFERENCES privacy_budget (data_year),
    rho_nanos    INTEGER NOT NULL CHECK (rho_nanos > 0),
    -- `round` (subject_id: the round id); `query` is for research answers.
    subject_kind TEXT NOT NULL CHECK (subject_kind IN ('round', 'query')),
    subject_id   TEXT NOT NULL,
    at           TEXT NOT NULL,
    CONSTRAINT privacy_charges_once_per_year UNIQUE (subject_kind, subject_id, data_year)
) STRICT;

CREATE INDEX privacy_charges_by_year ON privacy_charges (data_year, at);
