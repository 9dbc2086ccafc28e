-- Anonymised extracts a project asked for. Nothing is produced until the operator approves the
-- request (an extract leaves differential privacy behind); on approval the extract is built and kept
-- here with its risk report, in the transaction that records the approval in the audit chain.

CREATE TABLE research_extracts (
    id           uuid PRIMARY KEY,
    project_id   text NOT NULL REFERENCES research_projects (id),
    -- The request as sent: columns, k, l, suppression share, years.
    request      json NOT NULL,
    requested_by text NOT NULL,
    requested_at timestamptz NOT NULL,
    state        text NOT NULL CHECK (state IN ('requested', 'produced')),
    approved_by  text,
    approved_at  timestamptz,
    -- The risk report and the CSV, once produced.
    report       json,
    csv          bytea,
    CHECK ((state = 'produced') = (csv IS NOT NULL AND report IS NOT NULL AND approved_at IS NOT NULL))
);

CREATE INDEX research_extracts_by_project ON research_extracts (project_id, requested_at);
