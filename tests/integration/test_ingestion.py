# SPDX-License-Identifier: MIT
"""Ingestion: snapshots, full-profile rows, rejects, failed files, strict mode,
crash resume, idempotence, dry runs and a loop that stays responsive."""
import json
import os
import signal
import subprocess
import time

from harness import (TPSYNCCTL, csv_text, run, snapshot_source, spool_source, wait_for,
                     write_atomic)

HEADER = ["id", "tier", "city"]


def snap_rows(n, tier="gold"):
    return [[f"p{i:04d}", tier, f"city{i % 7}"] for i in range(n)]


def truth(rows):
    return {r[0]: {k: v for k, v in zip(HEADER[1:], r[1:]) if v != ""} for r in rows}


def test_snapshot(case):
    path = os.path.join(case.dir, "exports", "pos.csv")
    os.makedirs(os.path.dirname(path))
    d = case.daemon(snapshot_source("pos", path)).start()
    rows = snap_rows(100)
    write_atomic(path, csv_text(HEADER, rows))
    wait_for(lambda: case.target.profiles() == truth(rows), 20, "first snapshot")
    d.wait_idle()
    subs = case.target.state()["submissions"]

    # Rewritten in place, identical: nothing staged, nothing sent.
    with open(path, "w") as f:
        f.write(csv_text(HEADER, rows))
    wait_for(lambda: d.status()["sources"][0]["files"] == 2, 20, "identical rewrite")
    # Same rows in another order (new content, same data): still nothing sent.
    write_atomic(path, csv_text(HEADER, list(reversed(rows))))
    wait_for(lambda: d.status()["sources"][0]["files"] == 3, 20, "reordered snapshot")
    d.wait_idle()
    assert case.target.state()["submissions"] == subs
    assert d.status()["sources"][0]["rows_staged"] == 100

    # Three profiles change: only they are sent.
    rows[3][1] = rows[50][1] = rows[99][2] = "changed"
    write_atomic(path, csv_text(HEADER, rows))
    wait_for(lambda: case.target.profiles() == truth(rows), 20, "changes")
    d.wait_idle()
    new = case.target.requests()[subs:]
    assert sorted(i for r in new for i in r["ids"]) == ["p0003", "p0050", "p0099"], new

    # Deleted, then recreated without five profiles: counted, not cleared.
    os.unlink(path)
    time.sleep(0.2)
    rows[10][1] = "after-delete"
    kept = rows[:95]
    write_atomic(path, csv_text(HEADER, kept))
    wait_for(lambda: case.target.profiles()["p0010"]["tier"] == "after-delete", 20, "recreated snapshot")
    src = wait_for(lambda: d.ctl("sources")["sources"][0]["profiles_missing"] == 5 and d.ctl("sources")["sources"][0],
                   20, "missing profiles count")
    assert "p0097" in case.target.profiles()  # Target keeps what it has
    r = d.ctl("sources", as_json=False)
    assert "profiles missing from the last snapshot: 5" in r.stdout, r.stdout
    # The count survives a restart.
    d.stop()
    d.start()
    assert d.ctl("sources")["sources"][0]["profiles_missing"] == 5
    assert src["type"] == "snapshot" and os.path.exists(path)  # never moved


def test_full_profile_rows(case):
    d = case.daemon().start()
    write_atomic(os.path.join(case.spool, "a.csv"), csv_text(["customer_id", "tier", "city", "zip"],
                                                            [["c1", "gold", "Delft", "2611"]]))
    wait_for(lambda: case.target.profiles().get("c1"), 20, "first")
    d.wait_idle()
    write_atomic(os.path.join(case.spool, "b.csv"), csv_text(["customer_id", "tier"], [["c1", "silver"]]))
    wait_for(lambda: case.target.profiles()["c1"]["tier"] == "silver", 20, "change")
    last = case.target.requests()[-1]["data"]
    assert last == [{"id": "c1", "attrs": {"tier": "silver", "city": "Delft", "zip": "2611"}}], last


def test_changed_only_rows(case):
    d = case.daemon(rows="changed_only").start()
    write_atomic(os.path.join(case.spool, "a.csv"), csv_text(["customer_id", "tier", "city", "zip"],
                                                            [["c1", "gold", "Delft", "2611"]]))
    wait_for(lambda: case.target.profiles().get("c1"), 20, "first")
    d.wait_idle()
    write_atomic(os.path.join(case.spool, "b.csv"), csv_text(["customer_id", "tier", "city", "zip"],
                                                            [["c1", "silver", "Delft", "2611"]]))
    wait_for(lambda: case.target.profiles()["c1"]["tier"] == "silver", 20, "change")
    last = case.target.requests()[-1]["data"]
    assert last == [{"id": "c1", "attrs": {"tier": "silver"}}], last


BAD_FILE = (b"customer_id,tier,city\n"
            b"good1,gold,Delft\n"
            b"bad+plus,gold,x\n"
            b"bad/slash,gold,x\n"
            b",gold,x\n"
            b"good2,\"quoted, comma\",\"multi\nline\"\n"
            b"toomany,a,b,c\n"
            b"toofew,a\n"
            b"badutf,\xc3\x28,x\n"
            b"nul,a\x00b,x\n"
            b"stray,a\"b,x\n"
            + b"long" + b"x" * 200 + b",a,b\n"
            + b"good3,silver,Leiden\n"
            b"unterminated,\"oops,x\n"
            b"swallowed,by,quote\n")


def test_rejects_never_block_good_rows(case):
    d = case.daemon().start()
    with open(os.path.join(case.spool, "mixed.csv.tmp"), "wb") as f:
        f.write(BAD_FILE)
    os.rename(os.path.join(case.spool, "mixed.csv.tmp"), os.path.join(case.spool, "mixed.csv"))
    want = {"good1": {"tier": "gold", "city": "Delft"}, "good2": {"tier": "quoted, comma", "city": "multi\nline"},
            "good3": {"tier": "silver", "city": "Leiden"}}
    wait_for(lambda: case.target.profiles() == want, 20, "good rows")
    rej = os.path.join(case.spool, "archive", "mixed.rejects.csv")
    wait_for(lambda: os.path.exists(rej), 10, "rejects file")
    import csv
    with open(rej, newline="", encoding="utf-8", errors="replace") as f:
        got = [(int(r["line"]), r["reason"]) for r in csv.DictReader(f)]
    assert got == [
        (3, "id contains '+' or '/', which Target does not accept"),
        (4, "id contains '+' or '/', which Target does not accept"),
        (5, "empty id"),
        (8, "row has 4 fields, the header has 3"),
        (9, "row has 2 fields, the header has 3"),
        (10, "invalid UTF-8"),
        (11, "NUL byte in record"),
        (12, "quote inside an unquoted field"),
        (13, "id longer than 128 bytes"),
        (15, "unterminated quoted field"),
    ], got
    src = d.ctl("sources")["sources"][0]
    assert src["rows_rejected"] == 10 and src["rows_staged"] == 3, src
    assert "rejected" in src["last_error"]


def test_unusable_files_go_to_failed(case):
    d = case.daemon().start()
    cases = {
        "empty.csv": "",
        "noid.csv": "cid,tier\nc1,gold\n",
        "badname.csv": "customer_id,loyalty tier\nc1,gold\n",
        "twice.csv": "customer_id,tier,customer_id\nc1,gold,c1\n",
    }
    for name, text in cases.items():
        write_atomic(os.path.join(case.spool, name), text)
    write_atomic(os.path.join(case.spool, "zz-good.csv"), "customer_id,tier\nc7,gold\n")
    wait_for(lambda: case.target.profiles() == {"c7": {"tier": "gold"}}, 20, "the good file")
    failed = os.path.join(case.spool, "failed")
    wait_for(lambda: len([n for n in os.listdir(failed) if n.endswith(".error")]) == 4, 20, "failed files")
    notes = {n: open(os.path.join(failed, n)).read() for n in os.listdir(failed) if n.endswith(".error")}
    assert "empty file: no header row" in notes["empty.csv.error"]
    assert "no id column \"customer_id\"" in notes["noid.csv.error"]
    assert "not a valid attribute name" in notes["badname.csv.error"]
    assert "appears twice" in notes["twice.csv.error"]
    for name in cases:
        assert os.path.exists(os.path.join(failed, name))
    assert d.ctl("sources")["sources"][0]["files_failed"] == 4


def test_strict_source(case):
    d = case.daemon(spool_source("crm", case.spool, extra="strict: true")).start()
    write_atomic(os.path.join(case.spool, "a.csv"), "customer_id,tier\nc1,gold\nbad+id,x\nc2,silver\n")
    failed = os.path.join(case.spool, "failed")
    wait_for(lambda: os.path.exists(os.path.join(failed, "a.csv.error")), 20, "strict rejection")
    note = open(os.path.join(failed, "a.csv.error")).read()
    assert "strict source: 1 bad row(s)" in note and "line 3: id contains '+'" in note, note
    write_atomic(os.path.join(case.spool, "b.csv"), "customer_id,tier\nc1,gold\nc2,silver\n")
    wait_for(lambda: case.target.profiles() == {"c1": {"tier": "gold"}, "c2": {"tier": "silver"}}, 20, "good file")


def test_crash_mid_file_resumes_once(case):
    """SIGKILL while a big file is being staged; after restart every row is staged
    exactly once and Target gets the file's data."""
    n = 150000
    rows = [[f"k{i:06d}", "t" + str(i % 13), "c" + str(i % 101)] for i in range(n)]
    text = csv_text(["customer_id", "tier", "city"], rows)
    d = case.daemon(linger="10s").start()
    d.ctl("pause")
    write_atomic(os.path.join(case.spool, "big.csv"), text)
    wait_for(lambda: 0 < (d.ctl("sources")["sources"][0].get("ingesting") or {}).get("rows", 0) < n * 0.8, 30,
             "ingestion to be under way", interval=0.01)
    d.kill()
    done = d.sql("SELECT state, rows FROM ingested_files")
    assert done and done[0][0] == "staging" and 0 < done[0][1] < n, done
    assert d.sql("PRAGMA integrity_check") == [("ok",)]
    d.start()
    wait_for(lambda: d.sql("SELECT state FROM ingested_files") == [("done",)], 60, "the file to finish")
    assert d.sql("SELECT rows, staged, rejected FROM ingested_files") == [(n, n, 0)]
    assert d.sql("SELECT count(*) FROM profiles WHERE pending IS NOT NULL") == [(n,)]
    d.ctl("flush")
    want = {r[0]: {"tier": r[1], "city": r[2]} for r in rows}
    wait_for(lambda: case.target.profiles() == want, 120, "Target to hold the file", interval=0.5)
    assert os.path.exists(os.path.join(case.spool, "archive", "big.csv"))


def test_redropped_file_is_skipped(case):
    d = case.daemon().start()
    text = "customer_id,tier\nc1,gold\n"
    write_atomic(os.path.join(case.spool, "a.csv"), text)
    wait_for(lambda: case.target.profiles() == {"c1": {"tier": "gold"}}, 20, "first")
    write_atomic(os.path.join(case.spool, "a-again.csv"), text)
    wait_for(lambda: d.status()["sources"][0]["files"] == 2, 20, "second file")
    assert d.status()["sources"][0]["rows_read"] == 1  # not read again
    assert "already ingested" in d.log_text() or "content of one already ingested" in d.log_text()


def test_formats(case):
    """Semicolons, a BOM, CRLF line ends, duplicate ids (last row wins)."""
    d = case.daemon(spool_source("crm", case.spool, extra='delimiter: ";"')).start()
    data = "\ufeffcustomer_id;tier;city\r\nc1;gold;\"a;b\"\r\nc2;silver;x\r\nc1;platinum;\r\n"
    write_atomic(os.path.join(case.spool, "a.csv"), data)
    wait_for(lambda: case.target.profiles() == {"c1": {"tier": "platinum", "city": "a;b"},
                                                "c2": {"tier": "silver", "city": "x"}}, 20, "delivery")


def test_dry_run(case):
    d = case.daemon()
    d.start()
    write_atomic(os.path.join(case.spool, "a.csv"), "customer_id,tier,offer\nc1,gold,50% off & more\n")
    wait_for(lambda: case.target.profiles().get("c1"), 20, "first delivery")
    d.wait_idle()
    d.stop()
    before = d.sql("SELECT id, hex(accepted), hex(pending) FROM profiles ORDER BY id")
    subs = case.target.state()["submissions"]
    write_atomic(os.path.join(case.spool, "b.csv"), "customer_id,tier,offer\nc1,silver,50% off & more\nc2,gold,a+b\nbad+,x,y\n")
    out = os.path.join(case.dir, "dry")
    r = d.run_once("--dry-run", out, "--wait", "20s")
    assert r.returncode == 0, r.stdout + r.stderr
    files = sorted(n for n in os.listdir(out) if n.startswith("batch-"))
    assert files == ["batch-000001.csv"], os.listdir(out)
    body = open(os.path.join(out, files[0])).read()
    assert body == "batch=thirdPartyId,tier,offer\nc1,silver,50%25%20off%20%26%20more\nc2,gold,a%2Bb\n", body
    assert os.path.exists(os.path.join(out, "b.rejects.csv"))
    # Nothing changed: state, source file, Target.
    assert d.sql("SELECT id, hex(accepted), hex(pending) FROM profiles ORDER BY id") == before
    assert os.path.exists(os.path.join(case.spool, "b.csv"))
    assert case.target.state()["submissions"] == subs
    assert not [n for n in os.listdir(out) if n.endswith(".db")]


def test_loop_stays_responsive_during_big_ingest(case):
    n = 300000
    rows = [[f"r{i:07d}", "gold", "city" + str(i % 50), "x" * 20] for i in range(n)]
    d = case.daemon(linger="60s").start()
    d.ctl("pause")
    write_atomic(os.path.join(case.spool, "big.csv"), csv_text(["customer_id", "tier", "city", "note"], rows))
    wait_for(lambda: d.ctl("sources")["sources"][0].get("ingesting"), 20, "ingestion to start", interval=0.01)
    worst = 0.0
    seen_progress = []
    while True:
        t = time.monotonic()
        s = subprocess.run([TPSYNCCTL, "-s", d.socket, "sources", "--json"], capture_output=True, text=True)
        worst = max(worst, time.monotonic() - t)
        ing = json.loads(s.stdout)["sources"][0].get("ingesting")
        if not ing:
            break
        seen_progress.append(ing["rows"])
        time.sleep(0.02)
    print(f"    slowest control answer during ingest: {worst * 1000:.0f} ms over {len(seen_progress)} queries")
    assert len(seen_progress) >= 3 and seen_progress == sorted(seen_progress)
    assert worst < 1.0, worst
    assert d.ctl("sources")["sources"][0]["rows_staged"] == n


if __name__ == "__main__":
    run([test_snapshot, test_full_profile_rows, test_changed_only_rows, test_rejects_never_block_good_rows,
         test_unusable_files_go_to_failed, test_strict_source, test_crash_mid_file_resumes_once,
         test_redropped_file_is_skipped, test_formats, test_dry_run, test_loop_stays_responsive_during_big_ingest])
