-- Per-row results from Target's status answers: since May 2020 a v2 status
-- lists the rows that failed. A failed row's profile is sent again, up to
-- retry.max_failures times in a row, then its values are dead-lettered.
ALTER TABLE batch_rows ADD COLUMN failed INTEGER NOT NULL DEFAULT 0;
CREATE TABLE row_failures (
  profile TEXT PRIMARY KEY,
  failures INTEGER NOT NULL,     -- consecutive batches whose row for it failed
  batch_id INTEGER NOT NULL,     -- the last of them
  at INTEGER NOT NULL
) WITHOUT ROWID;
-- Rows Target reported failed and that went back to the queue or to dead letters.
ALTER TABLE batches ADD COLUMN rows_requeued INTEGER;
ALTER TABLE batches ADD COLUMN rows_dead INTEGER;

-- A snapshot being read is held back until it is known to be one version of the
-- file (it did not change while it was read): the rows it stages get pending_seq
-- values from hold_seq up, which the batch builder leaves alone meanwhile. A
-- torn read, or one a crash interrupted, is undone: hold_undo keeps the pending
-- set each profile had before (only those that had one).
ALTER TABLE ingested_files ADD COLUMN hold_seq INTEGER;
CREATE TABLE hold_undo (
  profile TEXT PRIMARY KEY,
  pending BLOB NOT NULL,
  pending_seq INTEGER NOT NULL,
  pending_since INTEGER
) WITHOUT ROWID;
