-- The change feed of `trajectories`, for the release engine's in-memory index of the table: the index
-- reads the whole table once, then only what changed since the last sequence number it saw
-- (`Store::trajectory_changes`). Every writer of `trajectories` adds its rows here in the same
-- transaction as its change:
-- - a batch row (batch_id set) per stored batch that stored or corrected at least one row: the index
--   reads that batch's current rows again;
-- - a removal row (trajectory set) per trajectory row a withdrawal deleted; its pseudonym is erased
--   after a day (every running index has read it by then; one that has not loads again).
-- Sequence numbers are taken at insert time, not at commit: writers take a shared advisory lock first
-- and the reader an exclusive one before it fixes its snapshot, so that no number below the reader's
-- mark can still commit later (service/src/store/postgres.rs, `CHANGE_FEED_LOCK`).

CREATE TABLE trajectory_changes (
    seq        bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    provider   text NOT NULL,
    batch_id   uuid,
    trajectory bytea CHECK (octet_length(trajectory) = 32),
    at         timestamptz NOT NULL DEFAULT now(),
    -- A batch row, a removal row, or a removal row past its retention: its pseudonym erased (both
    -- NULL), so that a withdrawn trajectory leaves no pseudonym behind (`Store::prune_change_feed`).
    CONSTRAINT trajectory_changes_one_kind CHECK (batch_id IS NULL OR trajectory IS NULL)
);

-- For the pruning: the removal rows that still hold a pseudonym, and the newest erased one (a reader
-- whose mark is below it may have missed a removal and must load again).
CREATE INDEX trajectory_changes_removals ON trajectory_changes (at) WHERE trajectory IS NOT NULL;
CREATE INDEX trajectory_changes_erased ON trajectory_changes (seq)
    WHERE batch_id IS NULL AND trajectory IS NULL;

-- The current rows of a batch, for the change feed's reader (and for withdrawing a batch), without a
-- scan of the whole table. Cheap to keep: the rows of one batch share the key, so a batch adds its
-- entries at one place of the index.
CREATE INDEX trajectories_by_batch ON trajectories (provider, batch_id);

-- Rows stored before this feed existed: one batch row per (provider, batch) they carry, so that an
-- index loading from mark 0 finds them like any other.
INSERT INTO trajectory_changes (provider, batch_id)
SELECT DISTINCT provider, batch_id FROM trajectories ORDER BY provider, batch_id;
