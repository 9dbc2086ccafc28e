-- Batch membership and withdrawn batch ids. A full re-export carries rows unchanged: they keep the
-- values (and `batch_id`, the batch that last wrote them) of the earlier batch, but now also name the
-- newest batch that carried them (`carrier`). A withdrawal of a batch deletes only the rows it is the
-- carrier of, so withdrawing an obsolete export keeps what a later one carried. A withdrawn batch id is
-- kept in `withdrawn_batches` (its receipt is gone), so that re-posting the old sealed batch is refused
-- instead of bringing the withdrawn rows back.

ALTER TABLE trajectories ADD COLUMN carrier uuid;
UPDATE trajectories SET carrier = batch_id;
ALTER TABLE trajectories ALTER COLUMN carrier SET NOT NULL;

-- The rows a batch carries, for its withdrawal.
CREATE INDEX trajectories_by_carrier ON trajectories (provider, carrier);

CREATE TABLE withdrawn_batches (
    provider text NOT NULL,
    batch_id uuid NOT NULL,
    -- When it was withdrawn.
    at       timestamptz NOT NULL,
    PRIMARY KEY (provider, batch_id)
);
