# SPDX-License-Identifier: MIT
"""When batches are cut (README "When a batch is sent"): full batches while a
file is read, in daemon mode and --once alike, so a first load takes as few
submissions as the row and byte limits allow; batch.linger counted from the
newest change; batch.max_wait bounding a long read; tpsyncctl flush at once.
Each counts Target's submissions, never time."""
import math
import os
import re

from harness import csv_text, run, wait_for, write_atomic

HEADER = ["customer_id", "tier", "city"]


def rows(n, prefix="c", pad=0):
    return [[f"{prefix}{i:06d}", f"tier-{i % 7}", f"city {i % 1000}" + "x" * pad] for i in range(n)]


def drop(case, name, data):
    write_atomic(os.path.join(case.spool, name), csv_text(HEADER, data))


def posts(case):
    return [r for r in case.target.requests() if r.get("rows")]


def test_first_load_full_batches(case):
    """30,000 new profiles in one file with batch.max_rows 2,000 and a linger
    far shorter than the read: 15 submissions, every one full, although the
    file is read and committed in slices of 5,000 rows."""
    d = case.daemon(linger="10ms", batch_extra="  max_rows: 2000\n").start()
    drop(case, "a.csv", rows(30000))
    wait_for(lambda: len(case.target.profiles()) == 30000, 60, "the first load at Target", interval=0.2)
    d.wait_idle()
    sizes = [r["rows"] for r in posts(case)]
    assert sizes == [2000] * 15, sizes
    assert case.target.state()["violations"] == []


def test_first_load_once_by_bytes(case):
    """tpsyncd --once, limited by batch.max_bytes (256 KB): the fewest
    submissions the limit allows, plus one at most, each but the last as full
    as a row more would not fit."""
    d = case.daemon(batch_extra="  max_bytes: 262144\n")
    data = rows(20000, pad=40)
    drop(case, "a.csv", data)
    r = d.run_once("--wait", "60s", timeout=120)
    assert r.returncode == 0, r.stdout + r.stderr
    reqs = posts(case)
    total = sum(x["bytes"] for x in reqs)
    longest_row = max(len(csv_text(HEADER, [row])) for row in data) * 3
    assert len(reqs) <= math.ceil(total / 262144) + 1, (len(reqs), total)
    # Every batch but one (the rest) is full; requests may arrive out of cut
    # order (a small last batch overtakes a full one still uploading).
    short = [x["bytes"] for x in reqs if x["bytes"] <= 262144 - longest_row]
    assert len(short) <= 1, [x["bytes"] for x in reqs]
    assert sum(x["rows"] for x in reqs) == 20000
    assert len(case.target.profiles()) == 20000


def test_linger_counts_from_the_newest_change(case):
    """Small files a tenth of a second apart, with a linger of a second: one
    submission after the last, not one per file."""
    import time
    d = case.daemon(linger="1s").start()
    for i in range(6):
        drop(case, f"f{i}.csv", rows(10, prefix=f"f{i}-"))
        time.sleep(0.1)
    wait_for(lambda: len(case.target.profiles()) == 60, 20, "all six files at Target")
    d.wait_idle()
    assert [r["rows"] for r in posts(case)] == [60]


def test_max_wait_bounds_a_long_read(case):
    """A read far longer than batch.max_wait (100 ms) and no batch full: a
    batch is cut while the file is still being read, so a long ingest still
    sends."""
    d = case.daemon(linger="10s", batch_extra="  max_wait: 100ms\n").start()
    drop(case, "a.csv", rows(300000))
    wait_for(lambda: len(case.target.profiles()) == 300000, 120, "the file at Target", interval=0.5)
    d.wait_idle(60)
    m = re.search(r"^(\S+)Z level=info msg=\"file ingested\"", d.log_text(), re.M)
    import datetime
    ingested_ms = datetime.datetime.fromisoformat(m.group(1)).replace(tzinfo=datetime.timezone.utc).timestamp() * 1000
    reqs = posts(case)
    assert len(reqs) >= 2 and reqs[0]["arrived_ms"] < ingested_ms, [(r["rows"], r["arrived_ms"]) for r in reqs]


def test_flush_sends_at_once(case):
    """With linger and max_wait an hour, nothing goes until tpsyncctl flush."""
    import time
    d = case.daemon(linger="1h", batch_extra="  max_wait: 1h\n").start()
    drop(case, "a.csv", rows(5))
    wait_for(lambda: d.status()["queue"]["pending_profiles"] == 5, 20, "the file staged")
    time.sleep(0.5)
    assert posts(case) == []
    d.ctl("flush")
    wait_for(lambda: len(case.target.profiles()) == 5, 20, "the flush")
    assert [r["rows"] for r in posts(case)] == [5]


if __name__ == "__main__":
    run([test_first_load_full_batches, test_first_load_once_by_bytes, test_linger_counts_from_the_newest_change,
         test_max_wait_bounds_a_long_read, test_flush_sends_at_once])
