-- This database's identity: a random value made once, when the database is created, and copied with
-- it into every backup. An instance reads it when it opens the database and checks it on every
-- connection it opens later: a database dropped and created anew under the same name while the
-- instance runs is another database, and is never read.

CREATE TABLE store_identity (
    singleton integer PRIMARY KEY CHECK (singleton = 1),
    id        text NOT NULL
);

INSERT INTO store_identity (singleton, id) VALUES (1, gen_random_uuid()::text);
