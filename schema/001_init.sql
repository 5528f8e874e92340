-- tpsyncd state, version 1. Times are milliseconds since the Unix epoch.
-- Attribute values are kept per profile as one compact blob (see daemon/attrset.c):
-- a CSV row is diffed with a single point lookup, and 50M profiles do not repeat
-- attribute names. attr_names interns the names.
CREATE TABLE attr_names (
  id INTEGER PRIMARY KEY,
  name TEXT NOT NULL UNIQUE
);

-- One row per profile Target knows about or will be told about.
--   accepted: the mirror, the values Target last accepted
--   inflight: the values of the one unanswered request holding this profile
--   pending:  staged changes not yet in any request, coalesced per attribute
CREATE TABLE profiles (
  id TEXT PRIMARY KEY,
  accepted BLOB,
  inflight BLOB,
  inflight_batch INTEGER,
  pending BLOB,
  pending_seq INTEGER,
  pending_since INTEGER,
  source TEXT
) WITHOUT ROWID;
CREATE INDEX profiles_pending ON profiles (pending_seq) WHERE pending IS NOT NULL;
CREATE INDEX profiles_inflight ON profiles (inflight_batch) WHERE inflight_batch IS NOT NULL;

-- A batch moves ready -> posting -> submitted -> complete | stuck; or to dead, split,
-- requeued. "posting" is written (durably) before the request goes out, so a
-- request whose answer never came is known after a crash.
CREATE TABLE batches (
  id INTEGER PRIMARY KEY,
  state TEXT NOT NULL,
  created_at INTEGER NOT NULL,
  first_sent_at INTEGER,
  sent_at INTEGER,
  answered_at INTEGER,
  completed_at INTEGER,
  attempts INTEGER NOT NULL DEFAULT 0,
  failures INTEGER NOT NULL DEFAULT 0,
  next_attempt_at INTEGER NOT NULL DEFAULT 0,
  rows INTEGER NOT NULL DEFAULT 0,
  bytes INTEGER NOT NULL DEFAULT 0,
  header BLOB,
  target_batch_id TEXT,
  status_url TEXT,
  target_status TEXT,
  polls INTEGER NOT NULL DEFAULT 0,
  next_poll_at INTEGER,
  consumed INTEGER,
  successful INTEGER,
  not_found INTEGER,
  failed INTEGER,
  http_status INTEGER,
  last_error TEXT,
  requeue_of INTEGER
);
CREATE INDEX batches_state ON batches (state, next_attempt_at);

-- The rows of a batch that is not final yet: attrs is what the request carries
-- (all current attributes with rows: full_profile), changed what made it necessary.
CREATE TABLE batch_rows (
  batch_id INTEGER NOT NULL,
  profile TEXT NOT NULL,
  attrs BLOB NOT NULL,
  changed BLOB NOT NULL,
  PRIMARY KEY (batch_id, profile)
) WITHOUT ROWID;

-- Values that could not be delivered, one row per attribute, readable as text.
CREATE TABLE dead_letters (
  id INTEGER PRIMARY KEY,
  profile TEXT NOT NULL,
  attr TEXT NOT NULL,
  value TEXT NOT NULL,
  batch_id INTEGER,
  reason TEXT NOT NULL,
  attempts INTEGER NOT NULL DEFAULT 0,
  last_answer TEXT,
  created_at INTEGER NOT NULL
);
CREATE INDEX dead_letters_profile ON dead_letters (profile, attr);

-- Profiles that were in a request whose answer never came: Target may still apply
-- it later, so their latest values are sent once more after due_at.
CREATE TABLE echoes (
  profile TEXT PRIMARY KEY,
  due_at INTEGER NOT NULL
) WITHOUT ROWID;

-- Files of spool and snapshot sources: progress while staging, identity after.
CREATE TABLE ingested_files (
  id INTEGER PRIMARY KEY,
  source TEXT NOT NULL,
  name TEXT NOT NULL,
  size INTEGER NOT NULL,
  mtime INTEGER NOT NULL,
  hash TEXT,
  state TEXT NOT NULL,           -- staging | done | failed
  offset INTEGER NOT NULL DEFAULT 0,
  line INTEGER NOT NULL DEFAULT 1,
  rows INTEGER NOT NULL DEFAULT 0,
  staged INTEGER NOT NULL DEFAULT 0,
  rejected INTEGER NOT NULL DEFAULT 0,
  known INTEGER NOT NULL DEFAULT 0,     -- rows whose profile this source staged before
  missing INTEGER,                      -- snapshots: this source's profiles absent from the file
  started_at INTEGER NOT NULL,
  finished_at INTEGER,
  error TEXT
);
CREATE INDEX ingested_files_name ON ingested_files (source, name, size, mtime);

-- Requests sent, for the rolling rows-per-day budget.
CREATE TABLE sends (
  at INTEGER NOT NULL,
  rows INTEGER NOT NULL
);
CREATE INDEX sends_at ON sends (at);

-- Rows rejected while ingesting a file: written in the slice's transaction, and
-- turned into NAME.rejects.csv when the file is done.
CREATE TABLE rejects (
  file_id INTEGER NOT NULL,
  line INTEGER NOT NULL,
  reason TEXT NOT NULL,
  raw BLOB NOT NULL
);
CREATE INDEX rejects_file ON rejects (file_id, line);
