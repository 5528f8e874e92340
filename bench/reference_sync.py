#!/usr/bin/env python3
# SPDX-License-Identifier: MIT
"""What a team writes instead of tpsyncd: diff a CSV export against a SQLite
table of what was sent, and write the changed rows as one URL-encoded batch
body. No retries, limits, crash safety or status checks: the "first full
pass" reference in bench.py.   reference_sync.py CSV STATE.db OUT"""
import csv
import sqlite3
import sys
from urllib.parse import quote

src, db_path, out = sys.argv[1:4]
db = sqlite3.connect(db_path)
db.execute("CREATE TABLE IF NOT EXISTS sent (id TEXT PRIMARY KEY, row TEXT) WITHOUT ROWID")
sent = dict(db.execute("SELECT id, row FROM sent"))
changed = []
with open(src, newline="") as f, open(out, "w") as body:
    rows = csv.reader(f)
    header = next(rows)
    body.write("batch=" + ",".join(["thirdPartyId"] + [quote(h, safe="") for h in header[1:]]) + "\n")
    for row in rows:
        joined = "\0".join(row[1:])
        if sent.get(row[0]) != joined:
            body.write(",".join(quote(v, safe="") for v in row) + "\n")
            changed.append((row[0], joined))
db.executemany("INSERT OR REPLACE INTO sent VALUES (?, ?)", changed)
db.commit()
