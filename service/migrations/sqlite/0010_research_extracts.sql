-- Anonymised extracts a project asked for. Nothing is produced until the operator approves the
-- request (an extract leaves differential privacy behind); on approval the extract is built and kept
-- here with its risk report, in the transaction that records the approval in the audit chain.

CREATE TABLE research_extracts (
    id           TEXT NOT NULL PRIMARY KEY,
    project_id   TEXT NOT NULL REFERENCES research_projects (id),
    -- The request as sent (JSON): columns, k, l, suppression share, years.
    request      TEXT NOT NULL,
    requested_by TEXT NOT NULL,
    requested_at TEXT NOT NULL,
    state        TEXT NOT NULL CHECK (state IN ('requested', 'produced')),
    approved_by  TEXT,
    approved_at  TEXT,
    -- The risk report (JSON) and the CSV, once produced.
    report       TEXT,
    csv          BLOB,
    CHECK ((state = 'produced') = (csv IS NOT NULL AND report IS NOT NULL AND approved_at IS NOT NULL))
) STRICT;

CREATE INDEX research_extracts_by_project ON research_extracts (project_id, requested_at);
