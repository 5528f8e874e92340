# SPDX-License-Identifier: MIT
"""Foundation: a CRM export dropped into a spool directory ends up in the fake
Target attribute for attribute; tpsyncctl answers; --check-config and --once."""
import json
import os
import random
import subprocess
import time

from harness import TPSYNCCTL, TPSYNCD, csv_text, run, spool_source, wait_for, write_atomic

TRICKY = ["50% off & more", "a+b=c", "comma,inside", 'say "hi"', "two\nlines", "tab\there",
          "Zürich €", "日本語", "  padded  ", "100%", "x=y&z=w", "/slash", "semi;colon"]


def make_profiles(n, seed=7):
    rnd = random.Random(seed)
    rows = []
    for i in range(n):
        rows.append([f"cust-{i:05d}", rnd.choice(["gold", "silver", "bronze"]),
                     rnd.choice(TRICKY) if i % 3 == 0 else f"city-{rnd.randint(1, 99)}",
                     str(rnd.randint(0, 100000)), f"user{i}@example.com"])
    return rows


def expected(rows):
    """What Target should hold: email excluded, tier renamed, empty cells absent."""
    out = {}
    for cid, tier, city, points, _email in rows:
        attrs = {"loyaltyTier": tier, "city": city, "points": points}
        out[cid] = {k: v for k, v in attrs.items() if v != ""}
    return out


SOURCE_EXTRA = "columns: {tier: loyaltyTier}\nexclude: [email]"


def test_spool_1000_profiles(case):
    d = case.daemon(spool_source("crm", case.spool, extra=SOURCE_EXTRA)).start()
    rows = make_profiles(1000)
    start = time.monotonic()
    write_atomic(os.path.join(case.spool, "export-0001.csv"),
                 csv_text(["customer_id", "tier", "city", "points", "email"], rows))
    want = expected(rows)
    wait_for(lambda: case.target.profiles() == want, 30, "Target to hold the export")
    elapsed = time.monotonic() - start
    print(f"    1000 profiles in Target after {elapsed:.2f}s")
    assert elapsed < 10, elapsed
    s = d.wait_idle()
    assert s["queue"]["pending_profiles"] == 0 and s["queue"]["dead_letters"] == 0
    assert s["sources"][0]["rows_read"] == 1000 and s["sources"][0]["rows_staged"] == 1000
    assert s["delivery"]["rows_sent"] == 1000
    assert os.path.exists(os.path.join(case.spool, "archive", "export-0001.csv"))
    assert not os.path.exists(os.path.join(case.spool, "export-0001.csv"))
    st = case.target.state()
    assert st["violations"] == [], st["violations"]
    for r in case.target.requests():
        assert r["path"] == "/m2/demo/v2/profile/batchUpdate"
    # Status as a table for people answers too.
    r = d.ctl("status", as_json=False)
    assert r.returncode == 0 and "delivery:" in r.stdout and "crm" in r.stdout, r.stdout


def test_unchanged_data_sends_nothing(case):
    d = case.daemon().start()
    header = ["customer_id", "tier"]
    write_atomic(os.path.join(case.spool, "a.csv"), csv_text(header, [["c1", "gold"], ["c2", "silver"]]))
    wait_for(lambda: len(case.target.profiles()) == 2, 15, "first delivery")
    d.wait_idle()
    subs = case.target.state()["submissions"]
    # Same values under another name, one real change in a third file.
    write_atomic(os.path.join(case.spool, "b.csv"), csv_text(header, [["c1", "gold"], ["c2", "silver"]]))
    wait_for(lambda: d.status()["sources"][0]["files"] == 2, 15, "second file")
    d.wait_idle()
    assert case.target.state()["submissions"] == subs
    write_atomic(os.path.join(case.spool, "c.csv"), csv_text(header, [["c1", "gold"], ["c2", "platinum"]]))
    wait_for(lambda: case.target.profiles().get("c2", {}).get("tier") == "platinum", 15, "the change")
    reqs = case.target.requests()
    assert reqs[-1]["ids"] == ["c2"], reqs[-1]


def test_partial_files_ignored(case):
    d = case.daemon().start()
    part = os.path.join(case.spool, "big.csv.part")
    with open(part, "w") as f:
        f.write("customer_id,tier\nc1,gold\n")
    with open(os.path.join(case.spool, ".hidden.csv"), "w") as f:
        f.write("customer_id,tier\nc9,gold\n")
    time.sleep(0.5)  # give a wrongly eager daemon the chance to read it
    assert d.status()["sources"][0]["rows_read"] == 0
    os.rename(part, os.path.join(case.spool, "big.csv"))
    wait_for(lambda: case.target.profiles() == {"c1": {"tier": "gold"}}, 15, "renamed file")


def test_files_present_at_start(case):
    header = ["customer_id", "tier"]
    for i in range(3):
        write_atomic(os.path.join(case.spool, f"e{i}.csv"), csv_text(header, [["c1", f"v{i}"]]))
    d = case.daemon().start()
    # Older exports first: the last file's value wins.
    wait_for(lambda: case.target.profiles() == {"c1": {"tier": "v2"}} and d.status()["sources"][0]["files"] == 3,
             15, "files found at start")


def test_status_json_and_unreachable(case):
    d = case.daemon().start()
    r = subprocess.run([TPSYNCCTL, "-s", d.socket, "status", "--json"], capture_output=True, text=True)
    assert r.returncode == 0
    s = json.loads(r.stdout)
    assert s["queue"]["pending_profiles"] == 0
    assert s["delivery"]["state"] == "running"
    assert s["uptime_seconds"] >= 0 and s["client_code"] == "demo"
    r = subprocess.run([TPSYNCCTL, "-s", os.path.join(case.dir, "nope.sock"), "status"], capture_output=True, text=True)
    assert r.returncode == 2 and "nope.sock" in r.stderr, (r.returncode, r.stderr)
    r = subprocess.run([TPSYNCCTL, "-s", d.socket, "frobnicate"], capture_output=True, text=True)
    assert r.returncode == 64
    r = subprocess.run([TPSYNCCTL, "--help"], capture_output=True, text=True)
    assert r.returncode == 0 and "retry-dead" in r.stdout


def test_check_config(case):
    d = case.daemon()
    r = subprocess.run([TPSYNCD, "-c", d.config, "--check-config"], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    bad = os.path.join(case.dir, "bad.yaml")
    with open(bad, "w") as f:
        f.write("target:\n  client_code: demo\n  timeout: soon\nbatch:\n  max_rows: 900000\n  colour: red\n")
    r = subprocess.run([TPSYNCD, "-c", bad, "--check-config"], capture_output=True, text=True)
    assert r.returncode == 1
    lines = r.stderr.strip().splitlines()
    assert f"{bad}:3:12: timeout: expected a duration" in lines[0], lines
    assert any(f"{bad}:5:13: max_rows: 900000 is out of range" in x for x in lines), lines
    assert any(f"{bad}:6:3: unknown key \"colour\" in batch" in x for x in lines), lines
    r = subprocess.run([TPSYNCD, "--version"], capture_output=True, text=True)
    assert r.returncode == 0 and r.stdout.startswith("tpsyncd ")


def test_once(case):
    d = case.daemon(spool_source("crm", case.spool, extra=SOURCE_EXTRA))
    rows = make_profiles(200, seed=3)
    write_atomic(os.path.join(case.spool, "x.csv"), csv_text(["customer_id", "tier", "city", "points", "email"], rows))
    r = d.run_once("--wait", "30s")
    assert r.returncode == 0, r.stdout + r.stderr
    assert "rows=200 staged=200 rejected=0" in r.stdout, r.stdout
    assert "batches complete=1" in r.stdout, r.stdout
    assert case.target.profiles() == expected(rows)
    # Nothing new: a second run sends nothing and exits 0.
    subs = case.target.state()["submissions"]
    r = d.run_once("--wait", "30s")
    assert r.returncode == 0 and case.target.state()["submissions"] == subs


if __name__ == "__main__":
    run([test_spool_1000_profiles, test_unchanged_data_sends_nothing, test_partial_files_ignored,
         test_files_present_at_start, test_status_json_and_unreachable, test_check_config, test_once])
