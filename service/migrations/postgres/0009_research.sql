-- Research projects and what they were answered. A project has its own budget (rho, nano-units),
-- carved from the data years' research reserve (`privacy.research_reserve` of the region file):
-- research spend per data year is kept apart from the rounds' (`privacy_budget`), so research never
-- eats the rounds' share, and no project spends more than its own rho. An answer, its charges and its
-- audit entry commit together; a project's row is locked while it is charged, then the years in
-- ascending order (service/src/store/postgres.rs, `put_research_answer`).

CREATE TABLE research_projects (
    -- `p` and a number: the scope of its researchers' tokens is `project:<id>`.
    id          text PRIMARY KEY,
    name        text NOT NULL,
    purpose     text NOT NULL,
    rho_nanos   bigint NOT NULL CHECK (rho_nanos > 0),
    spent_nanos bigint NOT NULL DEFAULT 0 CHECK (spent_nanos >= 0 AND spent_nanos <= rho_nanos),
    -- The last day on which it is answered.
    expires_on  date NOT NULL,
    created_at  timestamptz NOT NULL,
    closed_at   timestamptz
);

-- Research spend so far per calendar year of data, under the year's research reserve.
CREATE TABLE research_budget (
    data_year   integer PRIMARY KEY CHECK (data_year BETWEEN 1900 AND 2999),
    spent_nanos bigint NOT NULL CHECK (spent_nanos >= 0)
);

-- Every answer given to a project: what was asked, by whom, what it cost, and the answer as sent.
CREATE TABLE research_log (
    id         uuid PRIMARY KEY,
    project_id text NOT NULL REFERENCES research_projects (id),
    kind       text NOT NULL CHECK (kind IN ('query', 'extract')),
    statement  text NOT NULL,
    actor      text NOT NULL,
    rho_nanos  bigint NOT NULL CHECK (rho_nanos >= 0),
    at         timestamptz NOT NULL,
    audit_seq  bigint NOT NULL UNIQUE REFERENCES audit_log (seq),
    -- `json`, kept verbatim.
    answer     json NOT NULL
);

CREATE INDEX research_log_by_project ON research_log (project_id, at);
