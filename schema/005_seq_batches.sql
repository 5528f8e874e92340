-- Batches become ranges of pending_seq: cutting one writes no profile row.
-- A profile's pending values stay where they are while its batch is in flight
-- and until Target has finished it; only then are they the mirror (folded
-- into accepted later, in the background). inflight now holds just the
-- values a batch carries for a profile that changed again meanwhile (or of a
-- batch that is not a range: split halves, re-queues), not the whole row.
ALTER TABLE batches ADD COLUMN seq_lo INTEGER;
ALTER TABLE batches ADD COLUMN seq_hi INTEGER;
ALTER TABLE batches ADD COLUMN full_rows INTEGER NOT NULL DEFAULT 1; -- rows: full_profile when cut
ALTER TABLE batches ADD COLUMN folded INTEGER NOT NULL DEFAULT 1;    -- complete range folded into accepted
CREATE INDEX batches_seq ON batches (seq_hi) WHERE seq_hi IS NOT NULL;
CREATE INDEX batches_unfolded ON batches (id) WHERE folded = 0;

-- Batches not yet sent (ready) or sent without an answer (posting, recovered
-- at start): their profiles keep inflight_batch, and inflight becomes the
-- values the batch carries.
UPDATE batches SET full_rows = EXISTS (SELECT 1 FROM batch_rows r WHERE r.batch_id = batches.id AND r.attrs != r.changed)
  WHERE state IN ('ready', 'posting');

-- Batches Target accepted but has not finished: their values went into
-- accepted at once in the old scheme, and their rows' results could no longer
-- be matched. They are not assumed delivered: their profiles' latest values
-- are queued again, at the queue's end.
CREATE TEMP TABLE m5_restage AS
  SELECT DISTINCT r.profile AS id FROM batch_rows r JOIN batches b ON b.id = r.batch_id WHERE b.state = 'submitted';
UPDATE profiles SET pending = tpsync_attrs_merge_latest(pending, inflight, accepted)
  WHERE id IN (SELECT id FROM m5_restage);
CREATE TEMP TABLE m5_seq AS
  SELECT p.id AS id, (SELECT coalesce(max(pending_seq), 0) FROM profiles) + row_number() OVER (ORDER BY p.id) AS seq
  FROM profiles p WHERE p.id IN (SELECT id FROM m5_restage) AND p.pending IS NOT NULL AND p.pending_seq IS NULL;
UPDATE profiles SET pending_seq = s.seq, pending_since = CAST((julianday('now') - 2440587.5) * 86400000 AS INTEGER)
  FROM m5_seq s WHERE s.id = profiles.id;
UPDATE batches SET state = 'unconfirmed',
  last_error = 'state database upgraded (schema 5) before Target''s final status; its profiles were queued again'
  WHERE state = 'submitted';
DROP TABLE m5_restage;
DROP TABLE m5_seq;

UPDATE profiles SET inflight = (SELECT r.changed FROM batch_rows r
    WHERE r.batch_id = profiles.inflight_batch AND r.profile = profiles.id)
  WHERE inflight_batch IS NOT NULL;
UPDATE profiles SET inflight_batch = NULL WHERE inflight_batch IS NOT NULL AND inflight IS NULL;
UPDATE batches SET rows = (SELECT count(*) FROM profiles WHERE inflight_batch = batches.id)
  WHERE state IN ('ready', 'posting');

DROP TABLE batch_rows;
