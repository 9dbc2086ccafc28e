-- The check value of the region's pseudonymisation key: HMAC-SHA256(regional key, fixed label), never
-- the key (the custodian must not hold it). Registered once by the operator (`admin region key-check
-- set`); ingest refuses a batch whose header carries another check value. Timestamps are UTC text as
-- in 0001.

CREATE TABLE regional_key_check (
    singleton     INTEGER NOT NULL PRIMARY KEY CHECK (singleton = 1),
    check_value   BLOB NOT NULL CHECK (length(check_value) = 32),
    registered_at TEXT NOT NULL
) STRICT;
