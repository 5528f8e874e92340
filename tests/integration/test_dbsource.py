# SPDX-License-Identifier: MIT
"""Database sources (type: sqlite): a customer table changed while the daemon
runs (inserts, updates, ties on the cursor, a writer holding the database
locked, a rescan, a crash mid-read), value types, and bad values."""
import os
import signal
import sqlite3
import threading
import time

from harness import run, wait_for

QUERY = "SELECT member_id, tier, points, ratio, note, updated_at FROM members WHERE updated_at >= :cursor"


def source(path, poll="30s", extra=""):
    return (f"  - name: loyalty\n    type: sqlite\n    path: {path}\n    query: \"{QUERY}\"\n"
            f"    id_column: member_id\n    cursor_column: updated_at\n    exclude: [updated_at]\n"
            f"    columns: {{tier: loyaltyTier}}\n    poll: {poll}\n{extra}")


def make_db(path, wal):
    con = sqlite3.connect(path, isolation_level=None)
    if wal:
        con.execute("PRAGMA journal_mode=WAL")
    con.execute("CREATE TABLE members (member_id TEXT PRIMARY KEY, tier TEXT, points INTEGER, ratio REAL, note TEXT,"
                " updated_at INTEGER NOT NULL, photo BLOB)")
    return con


def upsert(con, mid, tier, points, ratio, note, at):
    con.execute("INSERT INTO members (member_id, tier, points, ratio, note, updated_at) VALUES (?,?,?,?,?,?)"
                " ON CONFLICT (member_id) DO UPDATE SET tier=excluded.tier, points=excluded.points,"
                " ratio=excluded.ratio, note=excluded.note, updated_at=excluded.updated_at",
                (mid, tier, points, ratio, note, at))


def run_source_test(case, wal):
    path = os.path.join(case.dir, "loyalty.db")
    con = make_db(path, wal)
    upsert(con, "m1", "gold", 42, 0.1, None, 100)
    upsert(con, "m2", "silver", -7, 2.5e-9, "Zürich €", 101)
    d = case.daemon(source(path)).start()
    want = {"m1": {"loyaltyTier": "gold", "points": "42", "ratio": "0.1"},
            "m2": {"loyaltyTier": "silver", "points": "-7", "ratio": "2.5e-09", "note": "Zürich €"}}
    wait_for(lambda: case.target.profiles() == want, 20, "the table's rows")
    # A change shows up promptly (inotify on the database), not after the 30 s poll.
    t = time.monotonic()
    upsert(con, "m1", "platinum", 43, 0.1, None, 102)
    wait_for(lambda: case.target.profiles()["m1"]["loyaltyTier"] == "platinum", 10, "the update")
    print(f"    update visible at Target after {time.monotonic() - t:.2f}s")
    assert time.monotonic() - t < 5
    # Ties on the cursor: a row with the cursor value already read, committed later.
    upsert(con, "m3", "bronze", 1, 1.0, None, 102)
    wait_for(lambda: case.target.profiles().get("m3") == {"loyaltyTier": "bronze", "points": "1", "ratio": "1"},
             10, "the tie")
    d.wait_idle()
    subs = case.target.state()["submissions"]
    # A rescan re-reads everything: nothing changed, nothing sent.
    d.ctl("rescan", "loyalty")
    wait_for(lambda: d.ctl("sources")["sources"][0]["rows_read"] >= 7, 10, "the rescan")
    d.wait_idle()
    assert case.target.state()["submissions"] == subs
    return con, d, path


def test_sqlite_rollback_journal(case):
    con, d, path = run_source_test(case, wal=False)
    # A writer holding an exclusive lock: the daemon retries, never blocks it.
    con.execute("BEGIN EXCLUSIVE")
    upsert(con, "m4", "gold", 4, 4.0, None, 200)
    time.sleep(0.8)
    assert d.status()["delivery"]["state"] == "running"  # the loop answers meanwhile
    t = time.monotonic()
    con.execute("COMMIT")
    assert time.monotonic() - t < 0.5
    wait_for(lambda: case.target.profiles().get("m4", {}).get("loyaltyTier") == "gold", 10, "the locked row")


def test_sqlite_wal(case):
    con, d, _ = run_source_test(case, wal=True)
    # Bad values reject their row only.
    con.execute("INSERT INTO members (member_id, tier, updated_at, points) VALUES ('m5', 'gold', 300, x'00ff')")
    upsert(con, "m6", "gold", 6, 6.0, None, 301)
    upsert(con, "bad+id", "gold", 6, 6.0, None, 302)
    wait_for(lambda: "m6" in case.target.profiles(), 10, "rows after a bad one")
    src = d.ctl("sources")["sources"][0]
    assert src["rows_rejected"] == 2 and "m5" not in case.target.profiles(), src
    assert src["type"] == "sqlite"
    assert src["last_file"] == "updated_at=302 member_id=bad+id", src  # the position, shown


def test_sqlite_crash_mid_read(case):
    """SIGKILL while a 30,000-row table is being read; after restart every row is
    delivered, and the cursor never skipped or repeated a slice."""
    path = os.path.join(case.dir, "big.db")
    con = make_db(path, wal=True)
    con.execute("BEGIN")
    for i in range(30000):
        con.execute("INSERT INTO members (member_id, tier, points, updated_at) VALUES (?, ?, ?, ?)",
                    (f"b{i:05d}", f"t{i % 5}", i, 1000 + i // 7))  # many ties
    con.execute("COMMIT")
    d = case.daemon(source(path), linger="10s")
    d.start(wait_ready=False, env={"TPSYNC_CRASH_POINT": "after-db-slice", "TPSYNC_CRASH_AFTER": "4"})
    wait_for(lambda: d.proc.poll() is not None, 30, "the crash")
    assert d.proc.returncode == -signal.SIGKILL
    d.log.close()
    assert d.sql("SELECT count(*) FROM profiles") == [(8000,)]  # four slices of 2,000
    d.start()
    wait_for(lambda: d.sql("SELECT count(*) FROM profiles") == [(30000,)], 30, "the rest of the table")
    d.ctl("flush")
    want = {f"b{i:05d}": {"loyaltyTier": f"t{i % 5}", "points": str(i)} for i in range(30000)}
    wait_for(lambda: case.target.profiles() == want, 60, "delivery", interval=0.5)
    assert case.target.state()["violations"] == []


def test_sqlite_once(case):
    """--once reads the table to its end, delivers and exits 0."""
    path = os.path.join(case.dir, "once.db")
    con = make_db(path, wal=True)
    con.execute("BEGIN")
    for i in range(4500):
        upsert(con, f"o{i}", "gold", i, None, None, i)
    con.execute("COMMIT")
    d = case.daemon(source(path))
    r = d.run_once("--wait", "30s")
    assert r.returncode == 0, r.stderr
    assert len(case.target.profiles()) == 4500


def test_sqlite_config_errors(case):
    import subprocess
    from harness import TPSYNCD
    d = case.daemon(source(os.path.join(case.dir, "x.db")))
    with open(d.config) as f:
        good = f.read()
    for bad, want in [(good.replace("    cursor_column: updated_at\n", ""), "needs query and cursor_column"),
                      (good.replace(">= :cursor", ">= 5"), "must use the :cursor parameter")]:
        with open(d.config, "w") as f:
            f.write(bad)
        r = subprocess.run([TPSYNCD, "-c", d.config, "--check-config"], capture_output=True, text=True)
        assert r.returncode == 1 and want in r.stderr, r.stderr
    with open(d.config, "w") as f:
        f.write(good.replace(">= :cursor", "> :cursor"))
    r = subprocess.run([TPSYNCD, "-c", d.config, "--check-config"], capture_output=True, text=True)
    assert r.returncode == 0 and 'warning' in r.stderr and '">= :cursor"' in r.stderr, r.stderr


if __name__ == "__main__":
    run([test_sqlite_rollback_journal, test_sqlite_wal, test_sqlite_crash_mid_read, test_sqlite_once,
         test_sqlite_config_errors])
