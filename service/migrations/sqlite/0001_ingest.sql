-- The ingest side of the store: registered providers, token hashes, batch receipts and the trajectories
-- they carry. The CHECK constraints repeat the domain rules of the record types (kwm-schemas) so that a
-- bug upstream can never put an out-of-range value into a release: defence in depth, not validation.
-- Timestamps are UTC text, RFC 3339 with exactly six fractional digits ('2025-03-01T12:00:00.000000Z'),
-- so that text order is time order.

CREATE TABLE providers (
    agb                TEXT NOT NULL PRIMARY KEY
                       CHECK (length(agb) = 8 AND agb NOT GLOB '*[^0-9]*'),
    name               TEXT NOT NULL,
    signing_public_key BLOB NOT NULL,
    created_at         TEXT NOT NULL
) STRICT;

CREATE TABLE tokens (
    -- AUTOINCREMENT: a token id is never reused, so audit entries keep pointing at the right token.
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    token_hash  BLOB NOT NULL UNIQUE CHECK (length(token_hash) = 32),
    role        TEXT NOT NULL
                CHECK (role IN ('provider', 'municipality', 'region', 'researcher', 'admin')),
    scope       TEXT,
    label       TEXT NOT NULL,
    created_at  TEXT NOT NULL,
    revoked_at  TEXT
) STRICT;

CREATE TABLE batches (
    provider       TEXT NOT NULL REFERENCES providers (agb),
    -- Lower-case hyphenated UUID.
    batch_id       TEXT NOT NULL CHECK (length(batch_id) = 36),
    key_id         TEXT NOT NULL CHECK (length(key_id) = 16),
    content_digest BLOB NOT NULL CHECK (length(content_digest) = 32),
    record_count   INTEGER NOT NULL CHECK (record_count >= 0),
    stored         INTEGER NOT NULL CHECK (stored BETWEEN 0 AND record_count),
    corrected      INTEGER NOT NULL CHECK (corrected BETWEEN 0 AND record_count),
    unchanged      INTEGER NOT NULL CHECK (unchanged BETWEEN 0 AND record_count),
    received_at    TEXT NOT NULL,
    PRIMARY KEY (provider, batch_id)
) STRICT;

-- A provider's batches, newest first.
CREATE INDEX batches_by_provider_received ON batches (provider, received_at);

CREATE TABLE trajectories (
    provider              TEXT NOT NULL,
    trajectory            BLOB NOT NULL CHECK (length(trajectory) = 32),
    -- Stage-2 (service-keyed) client pseudonym.
    client                BLOB NOT NULL CHECK (length(client) = 32),
    municipality          TEXT NOT NULL
                          CHECK (municipality GLOB 'GM[0-9][0-9][0-9][0-9]' AND municipality <> 'GM0000'),
    target_group          TEXT NOT NULL
                          CHECK (length(target_group) BETWEEN 1 AND 16
                                 AND target_group GLOB '[A-Z]*'
                                 AND target_group NOT GLOB '*[^A-Z0-9_]*'),
    intensity             INTEGER CHECK (intensity BETWEEN 1 AND 4),
    product_category      INTEGER CHECK (product_category BETWEEN 40 AND 55),
    -- Months as yyyymm.
    start_month           INTEGER NOT NULL
                          CHECK (start_month BETWEEN 190001 AND 299912 AND start_month % 100 BETWEEN 1 AND 12),
    end_month             INTEGER
                          CHECK (end_month BETWEEN 190001 AND 299912 AND end_month % 100 BETWEEN 1 AND 12),
    age_band              TEXT NOT NULL CHECK (age_band IN ('0-3', '4-11', '12-17', '18-22')),
    -- iJw JZ588 code as a number (02 is stored as 2).
    end_reason            INTEGER CHECK (end_reason IN (2, 20, 31, 32, 33, 34, 35, 36, 37, 38, 39)),
    satisfaction          INTEGER CHECK (satisfaction BETWEEN 1 AND 10),
    respondent            TEXT CHECK (respondent IN ('youth', 'parent', 'both')),
    carry_on_without_help TEXT CHECK (carry_on_without_help IN ('yes', 'no', 'unknown')),
    problem_t_pre         INTEGER CHECK (problem_t_pre BETWEEN 20 AND 100),
    problem_t_post        INTEGER CHECK (problem_t_post BETWEEN 20 AND 100),
    instrument            TEXT
                          CHECK (length(instrument) BETWEEN 1 AND 16
                                 AND instrument GLOB '[A-Z]*'
                                 AND instrument NOT GLOB '*[^A-Z0-9_]*'),
    goals_agreed          INTEGER CHECK (goals_agreed BETWEEN 0 AND 100),
    goals_achieved        INTEGER CHECK (goals_achieved BETWEEN 0 AND 100),
    -- The batch that last wrote this row.
    batch_id              TEXT NOT NULL,
    -- 1 when first stored, +1 on every correction: tells an insert from an update in one statement.
    revision              INTEGER NOT NULL CHECK (revision >= 1),
    updated_at            TEXT NOT NULL,
    PRIMARY KEY (provider, trajectory),
    FOREIGN KEY (provider, batch_id) REFERENCES batches (provider, batch_id),
    CONSTRAINT trajectory_ends_after_start CHECK (end_month >= start_month),
    CONSTRAINT trajectory_end_has_reason CHECK ((end_month IS NULL) = (end_reason IS NULL)),
    CONSTRAINT trajectory_satisfaction_has_respondent CHECK ((satisfaction IS NULL) = (respondent IS NULL)),
    CONSTRAINT trajectory_scores_have_instrument
        CHECK (instrument IS NOT NULL OR (problem_t_pre IS NULL AND problem_t_post IS NULL)),
    CONSTRAINT trajectory_post_has_pre CHECK (problem_t_post IS NULL OR problem_t_pre IS NOT NULL),
    CONSTRAINT trajectory_goals_achieved_within_agreed
        CHECK (goals_achieved IS NULL OR (goals_agreed IS NOT NULL AND goals_achieved <= goals_agreed))
) STRICT;
-- A rowid table on purpose: trajectory pseudonyms are random, and WITHOUT ROWID would insert whole rows
-- at random places of the primary-key tree (measured: half the ingest rate).

-- For the release engine: the trajectories of a municipality started, running or ended in a period.
CREATE INDEX trajectories_by_municipality_start ON trajectories (municipality, start_month);
CREATE INDEX trajectories_by_municipality_end ON trajectories (municipality, end_month);
-- For herhaald beroep: every trajectory of a client, at any provider.
CREATE INDEX trajectories_by_client ON trajectories (client);
