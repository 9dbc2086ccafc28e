-- The service's own keys, shared by every instance on this database: the second-stage
-- pseudonymisation key and the HPKE key pairs batches are sealed to. Each secret is sealed
-- (AES-256-GCM) under the master key, which is never stored here. `key_check` holds keyed check
-- values (HMAC of a fixed label), never a key: an instance whose master key or pseudonymisation key is
-- not this database's refuses to start.

CREATE TABLE service_keys (
    -- `pseudonym` for the pseudonymisation key; the 16 hex digits of the key id for an HPKE key.
    id           text PRIMARY KEY,
    kind         text NOT NULL CHECK (kind IN ('pseudonym', 'hpke')),
    -- Nonce, ciphertext and tag; the associated data names the format, kind and id.
    sealed       bytea NOT NULL,
    -- The HPKE public key (raw X25519), published at GET /v1/keys without opening the secret.
    public_key   bytea,
    created_at   timestamptz NOT NULL,
    activates_at timestamptz NOT NULL,
    retires_at   timestamptz,
    CHECK ((kind = 'pseudonym') = (id = 'pseudonym')),
    CHECK (kind = 'pseudonym' OR public_key IS NOT NULL)
);

CREATE TABLE key_check (
    singleton       integer PRIMARY KEY CHECK (singleton = 1),
    -- HMAC-SHA256(master key, label) and HMAC-SHA256(pseudonymisation key, label).
    master_check    bytea NOT NULL CHECK (octet_length(master_check) = 32),
    pseudonym_check bytea NOT NULL CHECK (octet_length(pseudonym_check) = 32),
    created_at      timestamptz NOT NULL
);
