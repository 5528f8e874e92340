# SPDX-License-Identifier: MIT
"""Reliability: SIGKILL at random moments while files keep arriving, targeted
crash points, a full disk, a failing fsync, and a Target outage. The checker
counts lost, unexpected, duplicated and regressed values; lost and regressions
must be 0, and the final state in Target exact."""
import os
import random
import signal
import subprocess
import time

from checker import Feed, check
from checker import feed_file as checker_feed_file
from harness import csv_text, run, spool_source, wait_for, write_atomic

HERE = os.path.dirname(os.path.abspath(__file__))


def feed_file(case, feed, version, rnd, rows=40, profiles=300):
    checker_feed_file(case.spool, feed, version, rnd, rows=rows, profiles=profiles)


def settle(case, d, feed, timeout=120):
    """Runs the daemon to completion and returns the checker's verdict."""
    truth = feed.truth()
    wait_for(lambda: case.target.profiles() == truth, timeout, "Target to reach the final state", interval=0.3)
    d.wait_idle(timeout)
    wait_for(lambda: d.sql("SELECT count(*) FROM echoes") == [(0,)], 30, "echoes")
    wait_for(lambda: case.target.profiles() == truth, 30, "the final state after echoes", interval=0.3)
    res = check(feed, case.target.requests(), case.target.profiles())
    assert not res["lost"], res["lost"][:5]
    assert not res["unexpected"], res["unexpected"][:5]
    assert not res["regressions"], res["regressions"][:5]
    assert case.target.state()["violations"] == [], case.target.state()["violations"][:5]
    return res


def test_sigkill_loop(case):
    rnd = random.Random(20261128)
    feed = Feed()
    d = case.daemon(timeout="1s", linger="20ms", batch_extra="  max_rows: 50\n")
    case.target.configure(fault_rate=0.15, seed=7)
    kills = 0
    version = 0
    deadline = time.monotonic() + 120
    while kills < 50 and time.monotonic() < deadline:
        for _ in range(rnd.randint(0, 2)):
            version += 1
            feed_file(case, feed, version, rnd)
        d.start(wait_ready=False)
        time.sleep(rnd.uniform(0.02, 0.4))
        d.kill()
        kills += 1
        r = d.sql("PRAGMA integrity_check")
        assert r == [("ok",)], (kills, r)
    assert kills >= 50, kills
    case.target.configure(fault_rate=0.0)
    d.start()
    res = settle(case, d, feed)
    reqs = len(case.target.requests())
    print(f"    {kills} kills, {version} files, {len(feed.truth())} profiles, {reqs} requests, "
          f"{res['duplicated']} duplicate values (bound: kills x 50 rows x 2 attrs = {kills * 100})")
    assert res["duplicated"] <= kills * 100 + version * 80


def test_crash_points(case):
    """Kills at chosen moments: Target answered but nothing committed; request
    posted; a slice committed mid-file; rows durable but file not archived."""
    rnd = random.Random(3)
    feed = Feed()
    d = case.daemon(timeout="1s", linger="20ms", batch_extra="  max_rows: 50\n")
    version = 0
    for point, after in [("after-answer", 1), ("after-post", 2), ("after-slice", 1), ("before-archive", 1),
                         ("after-answer", 3)]:
        version += 1
        feed_file(case, feed, version, rnd, rows=3000 if point == "after-slice" else 60)
        d.start(wait_ready=False, env={"TPSYNC_CRASH_POINT": point, "TPSYNC_CRASH_AFTER": str(after)})
        wait_for(lambda: d.proc.poll() is not None, 30, f"the crash at {point}")
        assert d.proc.returncode == -signal.SIGKILL, (point, d.proc.returncode)
        d.log.close()
        assert f"point={point}" in d.log_text()
        assert d.sql("PRAGMA integrity_check") == [("ok",)]
    d.start()
    settle(case, d, feed)
    # Every file was ingested once and archived.
    assert sorted(os.listdir(os.path.join(case.spool, "archive"))) == [f"f{v:05d}.csv" for v in range(1, version + 1)]
    assert d.sql("SELECT count(*), sum(rows) FROM ingested_files WHERE state = 'done'") == [(version, 3000 + 4 * 60)]


def test_full_disk_then_space_returns(case):
    mnt = os.path.join(case.dir, "small")
    os.makedirs(mnt)
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1200k", "tmpfs", mnt]).returncode != 0:
        print("    SKIPPED: cannot mount a tmpfs here (needs root)")
        return
    try:
        db_dir = os.path.join(mnt, "state")
        os.makedirs(db_dir)
        d = case.daemon(linger="10s")
        with open(d.config) as f:
            cfg = f.read().replace(f"{case.dir}/state.db", f"{db_dir}/state.db")
        with open(d.config, "w") as f:
            f.write(cfg)
        d.db = f"{db_dir}/state.db"
        d.start()
        d.ctl("pause")
        rows = [[f"d{i:06d}", "x" * 40, f"c{i}"] for i in range(20000)]
        write_atomic(os.path.join(case.spool, "big.csv"), csv_text(["customer_id", "tier", "city"], rows))
        s = wait_for(lambda: d.status()["last_error"] and "full" in d.status()["last_error"] and d.status(), 30,
                     "the disk-full error in status")
        assert "ingestion held back" in s["last_error"], s["last_error"]
        assert os.path.exists(os.path.join(case.spool, "big.csv"))  # the file stays
        assert "disk is full" in d.log_text() or "database or disk is full" in d.log_text()
        staged_before = d.sql("SELECT rows FROM ingested_files")
        assert d.proc.poll() is None
        # Space returns: ingestion resumes by itself.
        subprocess.run(["mount", "-o", "remount,size=64m", mnt], check=True)
        wait_for(lambda: d.sql("SELECT state FROM ingested_files") == [("done",)], 60, "ingestion to resume")
        got = d.sql("SELECT rows, staged, rejected FROM ingested_files")
        assert got == [(20000, 20000, 0)], (got, staged_before)
        assert d.status()["last_error"] is None
        d.ctl("resume")
        d.ctl("flush")
        want = {r[0]: {"tier": r[1], "city": r[2]} for r in rows}
        wait_for(lambda: case.target.profiles() == want, 60, "delivery", interval=0.3)
        d.stop()
    finally:
        subprocess.run(["umount", "-l", mnt])


def test_fsync_failure_ends_the_process(case):
    shim = os.environ.get("FAILFSYNC", os.path.join(HERE, "..", "..", "build", "tests", "integration", "libfailfsync.so"))
    flag = os.path.join(case.dir, "fail-fsync")
    d = case.daemon()
    env = {"LD_PRELOAD": shim, "TPSYNC_FAIL_FSYNC_FLAG": flag,
           "ASAN_OPTIONS": os.environ.get("ASAN_OPTIONS", "") + ":verify_asan_link_order=0"}
    d.start(env=env)
    write_atomic(os.path.join(case.spool, "a.csv"), "customer_id,tier\nc1,gold\n")
    wait_for(lambda: case.target.profiles().get("c1"), 20, "delivery before the fault")
    open(flag, "w").close()
    write_atomic(os.path.join(case.spool, "b.csv"), "customer_id,tier\nc2,silver\n")
    wait_for(lambda: d.proc.poll() is not None, 20, "the daemon to exit on the failed fsync")
    assert d.proc.returncode == 74, d.proc.returncode
    d.log.close()
    assert "I/O error; exiting" in d.log_text()
    os.unlink(flag)
    d.start(env=env)
    wait_for(lambda: case.target.profiles().get("c2") == {"tier": "silver"}, 20, "delivery after restart")
    assert d.sql("PRAGMA integrity_check") == [("ok",)]


def test_target_outage(case):
    """Target is down for a while; the queue waits, then drains within
    max_in_flight and the call rate once it is back."""
    d = case.daemon(calls_per_minute=120, max_in_flight=2, retry_max="1s", linger="10ms",
                    batch_extra="  max_rows: 20\n").start()
    port, edge_port = case.target.port, case.target.edge_port()
    case.target.stop()
    os.unlink(case.target.port_file)
    rnd = random.Random(5)
    feed = Feed()
    for v in range(1, 11):
        feed_file(case, feed, v, rnd, rows=40, profiles=500)
    wait_for(lambda: d.status()["sources"][0]["files"] == 10, 20, "ingestion during the outage")
    time.sleep(1.5)
    s = d.status()
    assert s["delivery"]["last_error"] and "network" in s["delivery"]["last_error"], s["delivery"]
    from harness import FakeTarget
    case.target = FakeTarget(case.dir, "--port", str(port), "--edge-port", str(edge_port), "--calls-per-minute", "120",
                             "--state-file", os.path.join(case.dir, "target-state.json"))
    res = settle(case, d, feed, timeout=180)
    st = case.target.state()
    assert st["rate_rejections"] == 0 and st["violations"] == [], st
    print(f"    outage drained: {st['submissions']} submissions, {res['duplicated']} duplicate values")


if __name__ == "__main__":
    run([test_sigkill_loop, test_crash_points, test_full_disk_then_space_returns, test_fsync_failure_ends_the_process,
         test_target_outage])
