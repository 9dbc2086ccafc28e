-- This database's identity: a random value made once, when the database is created, and copied with
-- it into every backup. An instance reads it when it opens the database and checks it on every
-- connection it opens later: a database file removed and created anew at the same path while the
-- instance runs (a second demo on the same directory) is another database, and is never read.

CREATE TABLE store_identity (
    singleton INTEGER NOT NULL PRIMARY KEY CHECK (singleton = 1),
    id        TEXT NOT NULL
) STRICT;

INSERT INTO store_identity (singleton, id) VALUES (1, lower(hex(randomblob(16))));
