# SPDX-License-Identifier: MIT
"""A hostile world, part two: files that change under the reader, FIFOs, a
control client that never reads, descriptors running out, a spool directory
made again, a damaged or unwritable state database. Each test asserts the
guarantee (what Target ends up holding, nothing frozen, memory bounded,
nothing lost), not the symptom."""
import csv
import io
import os
import random
import resource
import signal
import socket
import subprocess
import time

from checker import APPLIED
from harness import (TPSYNCCTL, TPSYNCD, cpu_seconds, csv_text, peak_rss_mb, run, snapshot_source, wait_for,
                     write_atomic)


def snapshot_rows(version, n, first=0):
    return [[f"s{i:06d}", f"{version}-tier-{i}", f"{version}-city-{i % 97}"] for i in range(first, first + n)]


def truth_of(rows):
    return {r[0]: {"tier": r[1], "city": r[2]} for r in rows}


def snap_daemon(case, **opts):
    path = os.path.join(case.dir, "snap", "customers.csv")
    os.makedirs(os.path.dirname(path), exist_ok=True)
    return case.daemon(snapshot_source("snap", path, id_column="customer_id"), **opts), path


HEADER = ["customer_id", "tier", "city"]


def applied_rows(case):
    """Every (id, attrs) Target applied, from the fake's request log."""
    out = []
    for r in case.target.requests():
        if r.get("outcome") in APPLIED:
            out += [(row["id"], row["attrs"]) for row in r["data"]]
    return out


def test_restored_snapshot_after_interrupted_read(case):
    """A delivered; B written; the daemon dies (SIGKILL) in the middle of B,
    or stops (SIGTERM) between its slices; A is written back. Target ends with
    A's values everywhere, and never received any of B's."""
    a = snapshot_rows("A", 30000)
    b = snapshot_rows("B", 30000)
    d, path = snap_daemon(case, linger="50ms")
    write_atomic(path, csv_text(HEADER, a))
    d.start()
    wait_for(lambda: case.target.state()["unprocessed"] == 0 and len(case.target.profiles()) == 30000, 60,
             "A at Target", interval=0.3)
    d.wait_idle(60)
    d.stop()
    for how in ("kill", "term"):
        write_atomic(path, csv_text(HEADER, b))
        if how == "kill":
            d.start(wait_ready=False, env={"TPSYNC_CRASH_POINT": "after-slice", "TPSYNC_CRASH_AFTER": "2"})
            wait_for(lambda: d.proc.poll() is not None, 30, "the crash in the middle of B")
            d.log.close()
        else:
            d.start()
            wait_for(lambda: (d.ctl("sources")["sources"][0].get("ingesting") or {}).get("rows", 0) > 0, 30,
                     "B's read to begin", interval=0.005)
            d.stop()
        write_atomic(path, csv_text(HEADER, a))  # yesterday's export, restored
        d.start()
        d.wait_idle(60)
        wait_for(lambda: case.target.profiles() == truth_of(a), 30, f"A at Target after {how}", interval=0.3)
        d.stop()
    assert not [x for x in applied_rows(case) if x[1]["tier"].startswith("B-")]
    assert case.target.state()["violations"] == []


def test_fifo_never_blocks(case):
    """A FIFO renamed onto the snapshot path, and over a spool file waiting its
    turn: refused as not a regular file; the control socket answers the whole
    time, and the real files that follow are read."""
    spool_src = (f"  - name: crm\n    type: spool\n    path: {case.spool}\n    id_column: customer_id\n")
    path = os.path.join(case.dir, "snap", "customers.csv")
    os.makedirs(os.path.dirname(path))
    d = case.daemon(spool_src + snapshot_source("snap", path, id_column="customer_id")).start()
    fifo = os.path.join(case.dir, "snap", "fifo")
    os.mkfifo(fifo)
    os.rename(fifo, path)
    wait_for(lambda: "FIFO" in (d.ctl("sources")["sources"][1]["last_error"] or ""), 10, "the FIFO refused")
    for _ in range(10):
        t = time.monotonic()
        d.status()
        assert time.monotonic() - t < 1.0
    os.unlink(path)
    write_atomic(path, csv_text(HEADER, [["c1", "gold", "Delft"]]))
    wait_for(lambda: case.target.profiles().get("c1"), 20, "the real snapshot")
    # A spool file replaced by a FIFO while a big file keeps ingestion busy.
    big = [[f"b{i:06d}", "x", "y"] for i in range(150000)]
    write_atomic(os.path.join(case.spool, "a-big.csv"), csv_text(HEADER, big))
    wait_for(lambda: d.ctl("sources")["sources"][0].get("ingesting"), 20, "the big file", interval=0.005)
    write_atomic(os.path.join(case.spool, "b.csv"), csv_text(HEADER, [["c2", "gold", "x"]]))
    time.sleep(0.3)  # its event is read between two slices of the big file: queued behind it
    assert d.ctl("sources")["sources"][0].get("ingesting"), "the big file ended too soon for this test"
    os.mkfifo(os.path.join(case.spool, "tmp-fifo"))
    os.rename(os.path.join(case.spool, "tmp-fifo"), os.path.join(case.spool, "b.csv"))
    wait_for(lambda: os.path.exists(os.path.join(case.spool, "failed", "b.csv.error")), 30, "b.csv refused")
    assert "not a regular file" in open(os.path.join(case.spool, "failed", "b.csv.error")).read()
    write_atomic(os.path.join(case.spool, "c.csv"), csv_text(HEADER, [["c3", "gold", "x"]]))
    wait_for(lambda: case.target.profiles().get("c3"), 30, "the file after it")
    assert len([p for p in case.target.profiles() if p.startswith("b")]) == 150000


def test_greedy_control_client(case):
    """Any member of the socket's group sends requests in a loop and never
    reads the answers: the daemon's memory stays bounded and everyone else is
    still answered."""
    d = case.daemon().start()
    before = peak_rss_mb(d.proc.pid)
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.connect(d.socket)
    s.setblocking(False)
    line = b'{"v":1,"cmd":"status"}\n' * 100
    sent, deadline = 0, time.monotonic() + 8
    while time.monotonic() < deadline:
        try:
            sent += s.send(line)
        except BlockingIOError:
            time.sleep(0.01)
    t = time.monotonic()
    assert d.status()["queue"]["pending_profiles"] == 0
    assert time.monotonic() - t < 1.0
    peak = peak_rss_mb(d.proc.pid)
    print(f"    {sent // len(line[:23]):,} requests sent unread; RSS {before:.1f} MB before, {peak:.1f} MB after")
    assert peak - before < 32, (before, peak)
    s.close()
    write_atomic(os.path.join(case.spool, "a.csv"), csv_text(HEADER, [["c1", "gold", "x"]]))
    wait_for(lambda: case.target.profiles().get("c1"), 20, "delivery afterwards")


def test_spool_file_with_earlier_name_size_and_mtime(case):
    """An export copied with cp -p over yesterday's name, same size and mtime,
    different content: a different file, so it is staged."""
    d = case.daemon().start()
    path = os.path.join(case.spool, "export.csv")
    stamp = 1767225600  # the same mtime both times
    for tier in ("gold", "blue"):  # same length
        tmp = os.path.join(case.spool, ".export.tmp")
        with open(tmp, "w") as f:
            f.write(csv_text(["customer_id", "tier"], [["c1", tier]]))
        os.utime(tmp, (stamp, stamp))
        os.rename(tmp, path)
        wait_for(lambda tier=tier: case.target.profiles().get("c1") == {"tier": tier}, 20, f"c1 {tier}")
        wait_for(lambda: not os.path.exists(path), 10, "archiving")
    assert d.ctl("sources")["sources"][0]["files"] == 2


def test_snapshot_rewritten_in_place_while_read(case):
    """The exporter overwrites the snapshot from offset 0, without truncating,
    while it is read: no row stitched from two versions leaves the daemon, and
    Target ends with the new version."""
    v1 = snapshot_rows("v1", 300000)
    v2 = snapshot_rows("v2", 300000, first=500000)  # other ids: a stitched id would be made up
    d, path = snap_daemon(case, linger="20ms")
    write_atomic(path, csv_text(HEADER, v1))
    new_text = csv_text(HEADER, v2).encode()  # ready before the read starts: the read takes about a second
    d.start()
    wait_for(lambda: (d.ctl("sources")["sources"][0].get("ingesting") or {}).get("rows", 0) > 20000, 30,
             "the read to be under way", interval=0.005)
    with open(path, "r+b") as f:  # the writer overtakes the reader at once
        f.write(new_text)
    with open(path, "rb") as f:
        final = f.read()
    rows = [r for r in csv.reader(io.StringIO(final.decode()))][1:]
    want = {r[0]: {"tier": r[1], "city": r[2]} for r in rows if len(r) == 3}
    def arrived():
        got = case.target.profiles()
        return all(got.get(k) == v for k, v in want.items())
    wait_for(arrived, 120, "the new version at Target", interval=1.0)
    d.wait_idle(60)
    valid = {(r[0], r[1], r[2]) for r in v1 + v2 + rows if len(r) == 3}
    bad = [x for x in applied_rows(case) if (x[0], x[1].get("tier"), x[1].get("city")) not in valid]
    assert not bad, bad[:5]
    torn = d.ctl("sources")["sources"][0]["reads_torn"]
    print(f"    reads found torn and done again: {torn}")
    assert torn >= 1


def test_descriptor_exhaustion(case):
    """With few descriptors and the control socket flooded with connections, a
    good spool file is retried (never failed), accept does not spin, and the
    log stays small; once connections close, everything goes on."""
    d = case.daemon()
    limit = 40

    def low_nofile():
        resource.setrlimit(resource.RLIMIT_NOFILE, (limit, limit))
    d.log = open(d.log_path, "a")
    d.proc = subprocess.Popen([TPSYNCD, "-c", d.config, "--log-level", "debug"], stdout=d.log,
                              stderr=subprocess.STDOUT, preexec_fn=low_nofile)
    wait_for(lambda: d.ctl_ok(), 15, "tpsyncd to answer")
    conns = []
    for _ in range(120):
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.setblocking(False)
        try:
            s.connect(d.socket)
        except (BlockingIOError, ConnectionRefusedError, OSError):
            pass
        conns.append(s)
    write_atomic(os.path.join(case.spool, "a.csv"), csv_text(HEADER, [["c1", "gold", "x"]]))
    time.sleep(1)
    c0 = cpu_seconds(d.proc.pid)
    time.sleep(3)
    used = cpu_seconds(d.proc.pid) - c0
    assert used < 0.5, used  # no busy accept loop
    assert not os.path.exists(os.path.join(case.spool, "failed", "a.csv"))
    for s in conns:
        s.close()
    wait_for(lambda: case.target.profiles().get("c1"), 30, "the file, once descriptors are back")
    assert not os.path.exists(os.path.join(case.spool, "failed", "a.csv"))
    size = os.path.getsize(d.log_path)
    print(f"    CPU over 3 s while flooded: {used:.2f} s; log {size / 1000:.0f} kB")
    assert size < 2_000_000, size


def test_spool_directory_removed_and_recreated(case):
    """The spool directory is removed and made again: noticed, watched again
    when it is back, and the next file is read."""
    import shutil
    d = case.daemon().start()
    shutil.rmtree(case.spool)
    wait_for(lambda: d.ctl("sources")["sources"][0]["watching"] is False, 10, "the loss noticed")
    os.makedirs(case.spool)
    wait_for(lambda: d.ctl("sources")["sources"][0]["watching"] is True, 10, "the directory watched again")
    write_atomic(os.path.join(case.spool, "a.csv"), csv_text(HEADER, [["c1", "gold", "x"]]))
    wait_for(lambda: case.target.profiles().get("c1"), 20, "the file in the new directory")
    assert "spool directory is back" in d.log_text()


def corrupt(path):
    """Overwrites pages in the middle of a SQLite file with garbage."""
    size = os.path.getsize(path)
    with open(path, "r+b") as f:
        for at in range(size // 4, size * 3 // 4, 8192 * 3):
            f.seek(at)
            f.write(os.urandom(512))


def test_damaged_state_database(case):
    """A damaged database is refused at start with how to recover;
    --fresh-state moves it aside. A deleted one is recreated, loudly. tpsyncctl
    check checks a healthy one."""
    d = case.daemon()
    d.start()
    write_atomic(os.path.join(case.spool, "a.csv"), csv_text(HEADER, [[f"c{i}", "gold", "x" * 50] for i in range(5000)]))
    wait_for(lambda: len(case.target.profiles()) == 5000, 30, "delivery")
    d.wait_idle()
    r = d.ctl("check", as_json=False, check=False)
    assert r.returncode == 0 and "state database: ok" in r.stdout, (r.stdout, r.stderr)
    d.stop()
    subprocess.run(["sqlite3", d.db, "PRAGMA wal_checkpoint(TRUNCATE)"], check=True, capture_output=True)
    corrupt(d.db)
    p = subprocess.run([TPSYNCD, "-c", d.config], capture_output=True, text=True, timeout=30)
    assert p.returncode == 1 and "damaged" in p.stderr and "--fresh-state" in p.stderr, p.stderr[-500:]
    p = subprocess.Popen([TPSYNCD, "-c", d.config, "--fresh-state"], stderr=subprocess.PIPE, text=True)
    wait_for(lambda: d.ctl_ok(), 15, "a fresh start")
    p.send_signal(signal.SIGTERM)
    err = p.communicate(timeout=30)[1]
    assert p.returncode == 0 and "moved aside" in err, err[-500:]
    assert [n for n in os.listdir(case.dir) if n.startswith("state.db.aside-")]
    # Deleted: made anew, but loudly.
    os.unlink(d.db)
    d.start()
    s = d.status()
    assert s["last_error"] and "created anew" in s["last_error"], s["last_error"]
    assert "a new, empty state database was created where one existed" in d.log_text()


def test_read_only_state_database(case):
    """A database on a read-only mount is refused at start with the reason,
    not run until the first write fails."""
    mnt = os.path.join(case.dir, "ro")
    os.makedirs(mnt)
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=8m", "tmpfs", mnt]).returncode != 0:
        print("    SKIPPED: cannot mount a tmpfs here (needs root)")
        return
    try:
        d = case.daemon()
        with open(d.config) as f:
            cfg = f.read().replace(f"{case.dir}/state.db", f"{mnt}/state.db")
        with open(d.config, "w") as f:
            f.write(cfg)
        d.db = f"{mnt}/state.db"
        d.start()
        d.stop()
        subprocess.run(["mount", "-o", "remount,ro", mnt], check=True)
        p = subprocess.run([TPSYNCD, "-c", d.config], capture_output=True, text=True, timeout=30)
        assert p.returncode == 1 and "read-only" in p.stderr, p.stderr[-500:]
    finally:
        subprocess.run(["umount", "-l", mnt])


def test_redirect_retried_never_followed_and_exposed_token(case):
    """A 302 (a proxy in the way) is retried, never followed; a token file
    others may read is warned about."""
    token = os.path.join(case.dir, "token")
    with open(token, "w") as f:
        f.write("tok\n")
    os.chmod(token, 0o644)
    d = case.daemon(target_extra=f"  token_file: {token}\n").start()
    case.target.fault("302", 2)
    write_atomic(os.path.join(case.spool, "a.csv"), csv_text(HEADER, [["c1", "gold", "x"]]))
    wait_for(lambda: case.target.profiles().get("c1"), 20, "delivery after the redirects")
    reqs = case.target.requests()
    assert [r["status"] for r in reqs] == [302, 302, 200], reqs
    assert "may be read by its group or others" in d.log_text()


def test_snapshot_mutations_across_restarts(case):
    """Randomized: the snapshot is rewritten in place, truncated, appended to,
    replaced by rename and by a FIFO, while the daemon reads it and is killed
    now and then. Target only ever holds values from complete versions of the
    file (what it held whenever a writer was done), and ends with the last."""
    rnd = random.Random(20261201)
    d, path = snap_daemon(case, linger="20ms")
    valid = set()

    def record():
        """The file as it now stands is a complete version."""
        try:
            with open(path, "rb") as f:
                text = f.read().decode(errors="replace")
        except OSError:
            return
        for r in list(csv.reader(io.StringIO(text)))[1:]:
            if len(r) == 3:
                valid.add((r[0], r[1], r[2]))

    def rows_for(v):
        n = rnd.randint(20000, 60000)
        return [[f"m{rnd.randrange(80000):06d}", f"t{v}-{i}", f"c{v}-{i}"] for i in range(n)]

    write_atomic(path, csv_text(HEADER, rows_for(0)))
    record()
    d.start()
    kinds = {}
    for v in range(1, 22):
        kind = rnd.choice(["in_place", "truncate", "append", "rename", "fifo"])
        kinds[kind] = kinds.get(kind, 0) + 1
        time.sleep(rnd.uniform(0.0, 0.3))
        if kind == "in_place":
            data = csv_text(HEADER, rows_for(v)).encode()
            with open(path, "r+b") as f:
                step = len(data) // 5 + 1
                for i in range(0, len(data), step):
                    f.write(data[i:i + step])
                    f.flush()
                    time.sleep(0.01)
        elif kind == "truncate":
            size = os.path.getsize(path)
            os.truncate(path, rnd.randint(size // 3, size))
        elif kind == "append":
            with open(path, "a") as f:
                f.write(csv_text(HEADER, rows_for(v)).split("\n", 1)[1])
        elif kind == "rename":
            write_atomic(path, csv_text(HEADER, rows_for(v)))
        else:
            fifo = path + ".fifo"
            os.mkfifo(fifo)
            os.rename(fifo, path)
            time.sleep(0.2)
            os.unlink(path)
            write_atomic(path, csv_text(HEADER, rows_for(v)))
        record()
        if rnd.random() < 0.25:
            d.kill()
            d.start()
    final = rows_for(99)
    write_atomic(path, csv_text(HEADER, final))
    record()
    last = {}
    for r in final:
        last[r[0]] = {"tier": r[1], "city": r[2]}
    def arrived():
        got = case.target.profiles()
        return all(got.get(k) == v for k, v in last.items())
    wait_for(arrived, 180, "the last version at Target", interval=1.0)
    d.wait_idle(60)
    bad = [x for x in applied_rows(case) if (x[0], x[1].get("tier"), x[1].get("city")) not in valid]
    torn = d.log_text().count("file changed while it was read")
    print(f"    mutations {kinds}; reads found torn and done again: {torn}; rows applied: {len(applied_rows(case))}")
    assert not bad, bad[:5]
    assert case.target.state()["violations"] == []


if __name__ == "__main__":
    run([test_restored_snapshot_after_interrupted_read, test_fifo_never_blocks, test_greedy_control_client,
         test_spool_file_with_earlier_name_size_and_mtime, test_snapshot_rewritten_in_place_while_read,
         test_descriptor_exhaustion, test_spool_directory_removed_and_recreated, test_damaged_state_database,
         test_read_only_state_database, test_redirect_retried_never_followed_and_exposed_token,
         test_snapshot_mutations_across_restarts])
