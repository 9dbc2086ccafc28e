-- The check value of the region's pseudonymisation key: HMAC-SHA256(regional key, fixed label), never
-- the key (the custodian must not hold it). Registered once by the operator (`admin region key-check
-- set`); ingest refuses a batch whose header carries another check value.

CREATE TABLE regional_key_check (
    singleton     integer PRIMARY KEY CHECK (singleton = 1),
    check_value   bytea NOT NULL CHECK (octet_length(check_value) = 32),
    registered_at timestamptz NOT NULL
);
