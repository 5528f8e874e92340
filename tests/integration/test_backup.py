# SPDX-License-Identifier: MIT
"""tpsyncctl backup: an online copy taken while files are ingested and
batches delivered is a sound database; restored into a new daemon it carries
on, and Target ends exact once the newer exports are fed again. What backup
refuses: an existing file, a FIFO in the way."""
import os
import random
import shutil
import sqlite3
import stat
import subprocess
import time

from checker import Feed, feed_file
from harness import TPSYNCCTL, csv_text, run, spool_source, wait_for, write_atomic


def backup(d, path, cwd=None):
    return subprocess.run([os.path.abspath(TPSYNCCTL), "-s", d.socket, "backup", path], capture_output=True, text=True, timeout=120,
                          cwd=cwd)


def test_backup_while_busy_and_restore(case):
    d = case.daemon(linger="20ms", batch_extra="  max_rows: 300\n").start()
    rnd = random.Random(7)
    feed = Feed()
    files = []
    for v in range(1, 21):
        files.append(feed_file(case.spool, feed, v, rnd, rows=400, profiles=3000))
        if v == 8:
            # Mid-run: ingestion and delivery both under way.
            r = backup(d, "state-backup.db", cwd=case.dir)
            assert r.returncode == 0 and "backup written" in r.stdout, (r.stdout, r.stderr)
        time.sleep(0.05)
    copy = os.path.join(case.dir, "state-backup.db")
    assert stat.S_IMODE(os.stat(copy).st_mode) == 0o600
    assert not os.path.exists(copy + ".tmp")
    con = sqlite3.connect(copy)
    assert con.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
    in_backup = con.execute("SELECT count(*) FROM profiles").fetchone()[0]
    con.close()
    assert in_backup > 0
    truth = feed.truth()
    wait_for(lambda: case.target.profiles() == truth, 120, "Target to reach the final state", interval=0.3)
    d.wait_idle(60)
    d.stop()
    # Restore into a new daemon (its own directory, the backup as its state):
    # it carries on from the backup's state, and the exports newer than the
    # backup, fed again, bring Target to the same final state.
    new_dir = os.path.join(case.dir, "restored")
    os.makedirs(os.path.join(new_dir, "spool"))
    shutil.copyfile(copy, os.path.join(new_dir, "state.db"))
    from harness import Daemon
    d2 = Daemon(new_dir, case.target, spool_source("crm", os.path.join(new_dir, "spool")),
                linger="20ms", batch_extra="  max_rows: 300\n")
    d2.start()
    case.cleanups.append(d2.stop)
    for name, text in files:
        write_atomic(os.path.join(new_dir, "spool", name), text)
    wait_for(lambda: d2.status()["sources"][0]["files"] >= len(files), 60, "the exports fed again")
    d2.wait_idle(60)
    assert case.target.profiles() == truth
    assert d2.sql("PRAGMA integrity_check") == [("ok",)]
    assert case.target.state()["violations"] == []


def test_backup_refusals(case):
    d = case.daemon().start()
    existing = os.path.join(case.dir, "exists.db")
    open(existing, "w").close()
    r = backup(d, existing)
    assert r.returncode == 1 and "exists" in r.stderr, r.stderr
    fifo = os.path.join(case.dir, "f.db")
    os.mkfifo(fifo + ".tmp")
    t = time.monotonic()
    r = backup(d, fifo)
    assert r.returncode == 1 and "cannot create" in r.stderr, r.stderr
    assert time.monotonic() - t < 5  # never opened: nothing blocked
    assert d.status()["queue"] is not None
    r = subprocess.run([TPSYNCCTL, "-s", d.socket, "backup"], capture_output=True, text=True)
    assert r.returncode == 64
    # A plain one works, and a second to the same name is refused.
    path = os.path.join(case.dir, "b.db")
    assert backup(d, path).returncode == 0
    assert backup(d, path).returncode == 1


if __name__ == "__main__":
    run([test_backup_while_busy_and_restore, test_backup_refusals])
