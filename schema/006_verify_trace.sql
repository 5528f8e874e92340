-- What Target holds, checked (tpsyncctl verify, canary) and explained
-- (tpsyncctl trace): when a profile's values were last accepted, where its
-- changes came from, which of a batch's rows Target reported failed, and the
-- verification runs with each profile's last result.
ALTER TABLE profiles ADD COLUMN accepted_at INTEGER; -- when the batch of its newest accepted values completed
ALTER TABLE profiles ADD COLUMN history BLOB;        -- its last staging events, oldest first (history.h)
CREATE TABLE row_results (
  profile TEXT NOT NULL,
  batch_id INTEGER NOT NULL,
  result TEXT NOT NULL,          -- failed (rows that went through are not listed)
  at INTEGER NOT NULL,
  PRIMARY KEY (profile, batch_id)
) WITHOUT ROWID;
CREATE INDEX row_results_at ON row_results (at);
CREATE TABLE verify_runs (
  id INTEGER PRIMARY KEY,
  kind TEXT NOT NULL,            -- ids | sample | all | canary
  state TEXT NOT NULL,           -- running | done | stopped | failed
  is_repair INTEGER NOT NULL,
  started_at INTEGER NOT NULL,
  finished_at INTEGER,
  ids TEXT,                      -- kind ids: a JSON array; canary: the nonce
  cursor TEXT,                   -- kind all: the last profile id checked
  wanted INTEGER NOT NULL DEFAULT 0,
  checked INTEGER NOT NULL DEFAULT 0,
  matched INTEGER NOT NULL DEFAULT 0,
  differed INTEGER NOT NULL DEFAULT 0,
  missing INTEGER NOT NULL DEFAULT 0,
  changed_in_target INTEGER NOT NULL DEFAULT 0,
  repaired INTEGER NOT NULL DEFAULT 0,
  skipped INTEGER NOT NULL DEFAULT 0,
  errors INTEGER NOT NULL DEFAULT 0,
  last_error TEXT
);
CREATE TABLE verifications (
  profile TEXT PRIMARY KEY,
  run_id INTEGER NOT NULL,
  at INTEGER NOT NULL,
  result TEXT NOT NULL,          -- matched | differed | missing | changed_in_target | skipped | error
  detail TEXT                    -- JSON: the attributes that differed (ours, Target's), or why
) WITHOUT ROWID;
