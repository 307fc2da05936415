-- Each event names the plugin build that decided it by a key into a table
-- of builds, instead of repeating the build's name, version and digest:
-- those came to about 100 bytes of every event row (a third of it), and
-- as much again in the write-ahead log of every append.
--
-- Rows written before keep their three columns, with `plugin` NULL. Rows
-- written from now on set `plugin` and leave the three columns empty
-- (not NULL: a node of the earlier version, during a rolling upgrade,
-- reads them as text and then shows empty provenance for the newer rows
-- instead of failing). Readers take the build's columns when `plugin`
-- is set.
CREATE TABLE event_plugins (
    id       integer GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    name     text NOT NULL,
    version  text NOT NULL,
    digest   text NOT NULL,
    UNIQUE (digest, name, version)
);

ALTER TABLE events ADD COLUMN plugin integer;
