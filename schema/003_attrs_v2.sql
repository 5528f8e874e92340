-- Attribute blobs in format 2 (daemon/attrset.h): the id list first, then the
-- values joined by NUL bytes, so that a batch row is its profile id and that
-- run, encoded in one pass. Same size as format 1 (a NUL instead of a length
-- byte per value). tpsync_attrs_v2() is registered by tpsyncd; a blob that does
-- not decode stops the migration, and the database stays at version 2.
UPDATE profiles SET accepted = tpsync_attrs_v2(accepted), inflight = tpsync_attrs_v2(inflight),
  pending = tpsync_attrs_v2(pending)
  WHERE accepted IS NOT NULL OR inflight IS NOT NULL OR pending IS NOT NULL;
UPDATE batch_rows SET attrs = tpsync_attrs_v2(attrs), changed = tpsync_attrs_v2(changed);
