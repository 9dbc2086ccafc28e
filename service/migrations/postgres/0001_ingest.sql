-- The ingest side of the store: registered providers, token hashes, batch receipts and the trajectories
-- they carry. The CHECK constraints repeat the domain rules of the record types (kwm-schemas) so that a
-- bug upstream can never put an out-of-range value into a release: defence in depth, not validation.

CREATE TABLE providers (
    agb                text PRIMARY KEY CHECK (agb ~ '^[0-9]{8}$'),
    name               text NOT NULL,
    signing_public_key bytea NOT NULL,
    created_at         timestamptz NOT NULL
);

CREATE TABLE tokens (
    id          bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    token_hash  bytea NOT NULL UNIQUE CHECK (octet_length(token_hash) = 32),
    role        text NOT NULL
                CHECK (role IN ('provider', 'municipality', 'region', 'researcher', 'admin')),
    scope       text,
    label       text NOT NULL,
    created_at  timestamptz NOT NULL,
    revoked_at  timestamptz
);

CREATE TABLE batches (
    provider       text NOT NULL REFERENCES providers (agb),
    batch_id       uuid NOT NULL,
    -- Insertion order: breaks ties between batches received in the same microsecond.
    seq            bigint GENERATED ALWAYS AS IDENTITY,
    key_id         text NOT NULL CHECK (key_id ~ '^[0-9a-f]{16}$'),
    content_digest bytea NOT NULL CHECK (octet_length(content_digest) = 32),
    record_count   integer NOT NULL CHECK (record_count >= 0),
    stored         integer NOT NULL CHECK (stored BETWEEN 0 AND record_count),
    corrected      integer NOT NULL CHECK (corrected BETWEEN 0 AND record_count),
    unchanged      integer NOT NULL CHECK (unchanged BETWEEN 0 AND record_count),
    received_at    timestamptz NOT NULL,
    PRIMARY KEY (provider, batch_id)
);

-- A provider's batches, newest first.
CREATE INDEX batches_by_provider_received ON batches (provider, received_at, seq);

CREATE TABLE trajectories (
    provider              text NOT NULL,
    trajectory            bytea NOT NULL CHECK (octet_length(trajectory) = 32),
    -- Stage-2 (service-keyed) client pseudonym.
    client                bytea NOT NULL CHECK (octet_length(client) = 32),
    municipality          text NOT NULL CHECK (municipality ~ '^GM[0-9]{4}$' AND municipality <> 'GM0000'),
    target_group          text NOT NULL CHECK (target_group ~ '^[A-Z][A-Z0-9_]{0,15}$'),
    intensity             smallint CHECK (intensity BETWEEN 1 AND 4),
    product_category      smallint CHECK (product_category BETWEEN 40 AND 55),
    -- Months as yyyymm.
    start_month           integer NOT NULL
                          CHECK (start_month BETWEEN 190001 AND 299912 AND start_month % 100 BETWEEN 1 AND 12),
    end_month             integer
                          CHECK (end_month BETWEEN 190001 AND 299912 AND end_month % 100 BETWEEN 1 AND 12),
    age_band              text NOT NULL CHECK (age_band IN ('0-3', '4-11', '12-17', '18-22')),
    -- iJw JZ588 code as a number (02 is stored as 2).
    end_reason            smallint CHECK (end_reason IN (2, 20, 31, 32, 33, 34, 35, 36, 37, 38, 39)),
    satisfaction          smallint CHECK (satisfaction BETWEEN 1 AND 10),
    respondent            text CHECK (respondent IN ('youth', 'parent', 'both')),
    carry_on_without_help text CHECK (carry_on_without_help IN ('yes', 'no', 'unknown')),
    problem_t_pre         smallint CHECK (problem_t_pre BETWEEN 20 AND 100),
    problem_t_post        smallint CHECK (problem_t_post BETWEEN 20 AND 100),
    instrument            text CHECK (instrument ~ '^[A-Z][A-Z0-9_]{0,15}$'),
    goals_agreed          smallint CHECK (goals_agreed BETWEEN 0 AND 100),
    goals_achieved        smallint CHECK (goals_achieved BETWEEN 0 AND 100),
    -- The batch that last wrote this row. No foreign key to `batches` on purpose: its per-row check
    -- cost a quarter of the ingest rate, and the store writes both in one transaction anyway.
    batch_id              uuid NOT NULL,
    -- 1 when first stored, +1 on every correction: tells an insert from an update in one statement.
    revision              integer NOT NULL CHECK (revision >= 1),
    updated_at            timestamptz NOT NULL,
    PRIMARY KEY (provider, trajectory),
    CONSTRAINT trajectory_ends_after_start CHECK (end_month >= start_month),
    CONSTRAINT trajectory_end_has_reason CHECK ((end_month IS NULL) = (end_reason IS NULL)),
    CONSTRAINT trajectory_satisfaction_has_respondent CHECK ((satisfaction IS NULL) = (respondent IS NULL)),
    CONSTRAINT trajectory_scores_have_instrument
        CHECK (instrument IS NOT NULL OR (problem_t_pre IS NULL AND problem_t_post IS NULL)),
    CONSTRAINT trajectory_post_has_pre CHECK (problem_t_post IS NULL OR problem_t_pre IS NOT NULL),
    CONSTRAINT trajectory_goals_achieved_within_agreed
        CHECK (goals_achieved IS NULL OR (goals_agreed IS NOT NULL AND goals_achieved <= goals_agreed))
);

-- For the release engine: the trajectories of a municipality started, running or ended in a period.
CREATE INDEX trajectories_by_municipality_start ON trajectories (municipality, start_month);
CREATE INDEX trajectories_by_municipality_end ON trajectories (municipality, end_month);
-- For herhaald beroep: every trajectory of a client, at any provider.
CREATE INDEX trajectories_by_client ON trajectories (client);
