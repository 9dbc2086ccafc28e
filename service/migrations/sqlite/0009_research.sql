-- Research projects and what they were answered. A project has its own budget (rho, nano-units),
-- carved from the data years' research reserve (`privacy.research_reserve` of the region file):
-- research spend per data year is kept apart from the rounds' (`privacy_budget`), so research never
-- eats the rounds' share, and no project spends more than its own rho. An answer, its charges and its
-- audit entry commit together. Timestamps are UTC text as in 0001.

CREATE TABLE research_projects (
    -- `p` and a number: the scope of its researchers' tokens is `project:<id>`.
    id          TEXT NOT NULL PRIMARY KEY,
    name        TEXT NOT NULL,
    purpose     TEXT NOT NULL,
    rho_nanos   INTEGER NOT NULL CHECK (rho_nanos > 0),
    spent_nanos INTEGER NOT NULL DEFAULT 0 CHECK (spent_nanos >= 0 AND spent_nanos <= rho_nanos),
    -- The last day (YYYY-MM-DD) on which it is answered.
    expires_on  TEXT NOT NULL,
    created_at  TEXT NOT NULL,
    closed_at   TEXT
) STRICT;

-- Research spend so far per calendar year of data, under the year's research reserve.
CREATE TABLE research_budget (
    data_year   INTEGER NOT NULL PRIMARY KEY CHECK (data_year BETWEEN 1900 AND 2999),
    spent_nanos INTEGER NOT NULL CHECK (spent_nanos >= 0)
) STRICT;

-- Every answer given to a project: what was asked, by whom, what it cost, and the answer as sent.
CREATE TABLE research_log (
    id         TEXT NOT NULL PRIMARY KEY,
    project_id TEXT NOT NULL REFERENCES research_projects (id),
    kind       TEXT NOT NULL CHECK (kind IN ('query', 'extract')),
    statement  TEXT NOT NULL,
    actor      TEXT NOT NULL,
    rho_nanos  INTEGER NOT NULL CHECK (rho_nanos >= 0),
    at         TEXT NOT NULL,
    audit_seq  INTEGER NOT NULL UNIQUE REFERENCES audit_log (seq),
    answer     TEXT NOT NULL
) STRICT;

CREATE INDEX research_log_by_project ON research_log (project_id, at);
