-- Signed-in dashboard sessions. The browser holds a random secret in an HttpOnly cookie; only its
-- SHA-256 is stored, with the token it was opened with: revoking that token ends its sessions (the
-- lookup joins `tokens`), and a session ends at `expires_at` or at sign-out. Rows outlive neither:
-- maintenance deletes expired ones.

CREATE TABLE dashboard_sessions (
    session_hash bytea PRIMARY KEY CHECK (octet_length(session_hash) = 32),
    token_id     bigint NOT NULL REFERENCES tokens (id),
    created_at   timestamptz NOT NULL,
    expires_at   timestamptz NOT NULL
);

CREATE INDEX dashboard_sessions_by_expiry ON dashboard_sessions (expires_at);
