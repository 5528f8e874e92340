-- Database sources: where each one has read up to. cursor keeps the cursor
-- column's value with its SQLite type; last_id breaks ties between rows that share
-- it. Updated in the same transaction as the rows it covers.
CREATE TABLE source_state (
  source TEXT PRIMARY KEY,
  cursor,
  last_id,
  updated_at INTEGER NOT NULL
) WITHOUT ROWID;
