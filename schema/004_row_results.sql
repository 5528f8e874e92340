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
