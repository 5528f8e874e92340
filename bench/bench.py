#!/usr/bin/env python3
# SPDX-License-Identifier: MIT
"""tpsync benchmarks. Prints a table of figures, each beside a reference measured
in the same run on the same data (sqlite3's own .import, cat of a same-size file),
so the ratios hold across machines. No pass/fail: figures only.

  bench/bench.py [--rows N] [--attrs K] [--big-rows N] [--idle-seconds S] [--drops N] [--only NAME,...]

Needs a build in build/ (ninja -C build)."""
import argparse
import json
import math
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BUILD = os.environ.get("TPSYNC_BUILD", os.path.join(ROOT, "build"))
TPSYNCD = os.path.join(BUILD, "daemon", "tpsyncd")
TPSYNCCTL = os.path.join(BUILD, "daemon", "tpsyncctl")
FAKE = os.path.join(BUILD, "tests", "fake-target", "fake-target")
GEN = os.path.join(ROOT, "bench", "gen.py")
HZ = os.sysconf("SC_CLK_TCK")
sys.path.insert(0, os.path.join(ROOT, "tests", "integration"))
from harness import cpu_seconds, peak_rss_mb  # noqa: E402  (the process probes the tests use)

results = []


def report(name, value, unit, ref=None, ref_name=None, note=""):
    ratio = f"{value / ref:.2f}x {ref_name}" if ref else ""
    results.append((name, value, unit, ratio, note))
    print(f"  {name:44} {value:12.3f} {unit:8} {ratio:24} {note}", flush=True)


def gen(n, k, out, *extra):
    subprocess.run([sys.executable, GEN, str(n), str(k), out, *extra], check=True)


def wait_for(cond, timeout, what, interval=0.05):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        v = cond()
        if v:
            return v
        time.sleep(interval)
    raise SystemExit(f"bench: timed out waiting for {what}")


class Daemon:
    def __init__(self, work, base_url="http://127.0.0.1:9", linger="1d", extra="", calls=1000, poll="100ms"):
        self.work = work
        os.makedirs(os.path.join(work, "spool"), exist_ok=True)
        self.sock = os.path.join(work, "ctl.sock")
        self.cfg = os.path.join(work, "tpsyncd.yaml")
        with open(self.cfg, "w") as f:
            f.write(f"""target: {{client_code: demo, base_url: "{base_url}", poll_interval: {poll}, timeout: 30s}}
state: {{database: {work}/state.db}}
control: {{socket: {self.sock}}}
batch: {{linger: {linger}, max_in_flight: 2}}
retry: {{initial: 100ms, max: 1s}}
limits: {{calls_per_minute: {calls}, rows_per_day: 1000000000}}
{extra}sources:
  - {{name: crm, type: spool, path: {work}/spool, id_column: customer_id, after: delete}}
""")
        self.log = open(os.path.join(work, "tpsyncd.log"), "a")
        self.proc = subprocess.Popen([TPSYNCD, "-c", self.cfg], stderr=self.log)
        wait_for(lambda: self.ctl("status") is not None, 20, "tpsyncd")

    def ctl(self, *args):
        r = subprocess.run([TPSYNCCTL, "-s", self.sock, *args, "--json"], capture_output=True, text=True)
        return json.loads(r.stdout) if r.returncode == 0 and r.stdout.strip() else None

    def files(self):
        s = self.ctl("sources")
        return s["sources"][0]["files"] if s else -1

    def drop(self, src, name):
        """Copies src into the spool (renamed in); returns seconds until ingested."""
        before = self.files()
        tmp = os.path.join(self.work, "spool", name + ".part")
        shutil.copyfile(src, tmp)
        t = time.monotonic()
        os.rename(tmp, os.path.join(self.work, "spool", name))
        size_mb = os.path.getsize(src) / 1e6
        wait_for(lambda: self.files() > before, 60 + size_mb * 2, f"ingesting {name}", interval=0.02)
        return time.monotonic() - t

    def stop(self):
        self.proc.terminate()
        self.proc.wait(60)
        self.log.close()


def bench_staging(args, work):
    n, k = args.rows, args.attrs
    print(f"staging: {n:,} profiles x {k} attributes")
    first = os.path.join(work, "first.csv")
    same = os.path.join(work, "same.csv")
    changed = os.path.join(work, "changed.csv")
    gen(n, k, first)
    gen(n, k, same, "--reverse")
    gen(n, k, changed, "--change-rate", "0.01")
    size_mb = os.path.getsize(first) / 1e6
    db = os.path.join(work, "import.db")
    t = time.monotonic()
    subprocess.run(["sqlite3", db, ".mode csv", f".import {first} t"], check=True, capture_output=True)
    ref = time.monotonic() - t
    os.unlink(db)
    report("sqlite3 .import (reference)", ref, "s", note=f"{size_mb:.0f} MB, {n / ref:,.0f} rows/s")
    d = Daemon(os.path.join(work, "d"))
    d.ctl("pause")
    c0 = cpu_seconds(d.proc.pid)
    s = d.drop(first, "a.csv")
    c1 = cpu_seconds(d.proc.pid)
    report("first ingest", s, "s", ref, ".import", f"{n / s:,.0f} rows/s, cpu {c1 - c0:.1f}s")
    s = d.drop(same, "b.csv")
    c2 = cpu_seconds(d.proc.pid)
    report("unchanged re-ingest (rows reordered)", s, "s", ref, ".import", f"{n / s:,.0f} rows/s, cpu {c2 - c1:.1f}s")
    s = d.drop(changed, "c.csv")
    report("1% changed re-ingest", s, "s", ref, ".import", f"{n / s:,.0f} rows/s")
    report("peak RSS (1M-row run)" if n == 1000000 else f"peak RSS ({n:,} rows)", peak_rss_mb(d.proc.pid), "MB")
    report("state database size", os.path.getsize(os.path.join(work, "d", "state.db")) / 1e6, "MB",
           note=f"{n:,} profiles")
    d.stop()
    for p in (first, same, changed):
        os.unlink(p)
    out = os.path.join(work, "cut.csv")
    r = subprocess.run([os.path.join(BUILD, "bench", "bench_encode"), "--fold", os.path.join(work, "d", "state.db"), out],
                       capture_output=True, text=True, check=True)
    f = r.stdout.split()
    report(f"cut one full batch from {n:,} queued (choose + encode)", float(f[0]), "s",
           note=f"{int(f[3]):,} rows, {int(f[2]) / 1e6:.1f} MB; Target takes a call every 1.2 s at 50/min")
    report("  folding it into the mirror later (background)", float(f[10]), "s", note="in 10,000-profile slices while idle")
    os.unlink(out)


def bench_first_pass(args, work):
    """tpsyncd --once --dry-run of a first load: staging, cutting, encoding
    (what a first full pass costs before the network), against sqlite3's
    .import and the script a team would write instead (bench/reference_sync.py)."""
    n, k = args.rows, args.attrs
    print(f"first full pass: {n:,} profiles x {k} attributes, tpsyncd --once --dry-run")
    first = os.path.join(work, "first.csv")
    gen(n, k, first)
    size_mb = os.path.getsize(first) / 1e6
    imports, passes = [], []
    for _ in range(3):  # alternated: both meet the same state of a shared machine
        db = os.path.join(work, "import.db")
        t = time.monotonic()
        subprocess.run(["sqlite3", db, ".mode csv", f".import {first} t"], check=True, capture_output=True)
        imports.append(time.monotonic() - t)
        os.unlink(db)
        w = os.path.join(work, "fp")
        shutil.rmtree(w, ignore_errors=True)
        os.makedirs(os.path.join(w, "spool"))
        os.makedirs(os.path.join(w, "out"))
        cfg = os.path.join(w, "tpsyncd.yaml")
        with open(cfg, "w") as f:
            f.write(f"""target: {{client_code: demo, base_url: "http://127.0.0.1:9"}}
state: {{database: {w}/state.db}}
control: {{socket: {w}/ctl.sock}}
sources:
  - {{name: crm, type: spool, path: {w}/spool, id_column: customer_id}}
""")
        os.link(first, os.path.join(w, "spool", "first.csv"))
        t = time.monotonic()
        proc = subprocess.Popen([TPSYNCD, "-c", cfg, "--once", "--dry-run", os.path.join(w, "out")],
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        _, status, usage = os.wait4(proc.pid, 0)
        passes.append(time.monotonic() - t)
        proc.returncode = os.waitstatus_to_exitcode(status)
        if proc.returncode != 0:
            raise SystemExit(f"bench: tpsyncd --once --dry-run exited {proc.returncode}")
        rss = usage.ru_maxrss
        bodies = sorted(os.listdir(os.path.join(w, "out")))
        body_bytes = sum(os.path.getsize(os.path.join(w, "out", b)) for b in bodies)
    ref = statistics.median(imports)
    report("sqlite3 .import (reference)", ref, "s", note=f"{size_mb:.0f} MB, median of 3")
    script = os.path.join(work, "script")
    os.makedirs(script)
    t = time.monotonic()
    subprocess.run([sys.executable, os.path.join(ROOT, "bench", "reference_sync.py"), first,
                    os.path.join(script, "sent.db"), os.path.join(script, "body.csv")], check=True)
    script_s = time.monotonic() - t
    report("reference script (bench/reference_sync.py)", script_s, "s", ref, ".import",
           "diff against SQLite + one URL-encoded body")
    p = statistics.median(passes)
    report("first full pass (--once --dry-run)", p, "s", ref, ".import",
           f"median of 3; {p / script_s:.2f}x the script")
    report("  peak RSS", rss / 1024, "MB", note="flat in file size (see memory)")
    fewest = max(math.ceil(body_bytes / 49000000), math.ceil(n / 500000))
    report("  batches for the first load", len(bodies), "", note=f"fewest the limits allow: {fewest}"
           f" ({body_bytes / 1e6:.0f} MB encoded, 49 MB and 500,000 rows a batch)")
    shutil.rmtree(script, ignore_errors=True)
    shutil.rmtree(os.path.join(work, "fp"), ignore_errors=True)
    os.unlink(first)


class Fake:
    def __init__(self, work, *args, calls=1000000):
        self.port_file = tempfile.mktemp(prefix="fake-", suffix=".port", dir=work)
        self.log = open(os.path.join(work, "fake.log"), "w")
        self.proc = subprocess.Popen([FAKE, "--port-file", self.port_file, "--calls-per-minute", str(calls),
                                      "--no-log", *args], stdout=self.log, stderr=subprocess.STDOUT)
        wait_for(lambda: os.path.exists(self.port_file), 10, "fake Target")
        self.url = "http://127.0.0.1:" + open(self.port_file).read().strip()

    def get(self, path):
        import urllib.request
        with urllib.request.urlopen(self.url + path, timeout=30) as r:
            return json.loads(r.read())

    def stop(self):
        self.proc.terminate()
        self.proc.wait(30)
        self.log.close()


def time_cat(src, dst):
    """The copy floor: cat of src into a new file (no shell in the timing)."""
    if os.path.exists(dst):
        os.unlink(dst)
    with open(dst, "wb") as out:
        t = time.perf_counter()
        subprocess.run(["cat", src], stdout=out, check=True)
        return time.perf_counter() - t


ENCODE_ROUNDS = 5


def bench_encoding(args, work):
    print(f"encoding: one full batch (500,000 rows x 10 attributes, full profiles); best of {ENCODE_ROUNDS} rounds,"
          " each a cat and three encoder runs, alternated")
    src = os.path.join(work, "enc.csv")
    gen(500000, args.attrs, src, "--seed", "5")
    d = Daemon(os.path.join(work, "enc"))
    d.ctl("pause")
    d.drop(src, "a.csv")
    d.stop()
    out = os.path.join(work, "batch.csv")
    exe, db = os.path.join(BUILD, "bench", "bench_encode"), os.path.join(work, "enc", "state.db")
    best = None
    cat_s = None
    first_f = None
    for round_ in range(ENCODE_ROUNDS):
        r = subprocess.run([exe] + (["--again"] if round_ else []) + [db, out],
                           capture_output=True, text=True, check=True)
        f = r.stdout.split()
        first_f = first_f or f
        got = [float(f[0]), float(f[1]), int(f[2]), int(f[3]), float(f[4]), float(f[5]), int(f[6]),
               float(f[7]), int(f[8])]
        if best is None:
            best = got
        else:
            for i in (1, 4, 5, 7):
                best[i] = min(best[i], got[i])
        c = time_cat(out, os.path.join(work, "copy.csv"))
        cat_s = c if cat_s is None else min(cat_s, c)
    build_s, write_s, size, rows, encode_s, scan_s, encoded, short_s, short_bytes = best
    mb = size / 1e6
    report("cat of the same-size file (copy floor)", mb / cat_s, "MB/s", note=f"{mb:.1f} MB in {cat_s * 1000:.1f} ms")
    report("encoder: rows in memory -> batch file", encoded / 1e6 / encode_s, "MB/s", encoded / 1e6 / cat_s,
           "cat", f"{rows:,} rows in {encode_s * 1000:.1f} ms")
    report("  the same, every row one attribute short", short_bytes / 1e6 / short_s, "MB/s", short_bytes / 1e6 / cat_s,
           "cat", f"{short_s * 1000:.1f} ms: rows that are not the header's exactly")
    report("batch file from the state db (read + encode)", mb / write_s, "MB/s", mb / cat_s, "cat",
           f"{write_s * 1000:.1f} ms, what the sender does before a retry")
    report("SQLite stepping through those rows alone", mb / scan_s, "MB/s", mb / cat_s, "cat",
           f"{scan_s * 1000:.1f} ms: the read floor of the line above")
    report("cut it (choose the rows + encode the body, one transaction)", build_s, "s",
           note="body written on the way" if int(first_f[9]) else "body written afterwards")
    for p in (src, out, os.path.join(work, "copy.csv")):
        os.unlink(p)


def bench_end_to_end(args, work):
    """A first load into the fake Target at Target's own budget: 50 calls a
    minute for submissions and polls together, default batch settings, the
    first status poll a second after acceptance (target.poll_interval: 1s;
    the default is 30s)."""
    n = args.rows
    print(f"end to end: {n:,} profiles from a spool file to the fake Target at 50 calls a minute")
    src = os.path.join(work, "e2e.csv")
    gen(n, args.attrs, src, "--seed", "9")
    fake = Fake(work, calls=50)
    d = Daemon(os.path.join(work, "e2e"), base_url=fake.url, linger="5s", calls=50, poll="1s")
    c0 = cpu_seconds(d.proc.pid)
    tmp = os.path.join(work, "e2e", "spool", "a.csv.part")
    shutil.copyfile(src, tmp)
    t = time.monotonic()
    os.rename(tmp, tmp[:-5])
    wait_for(lambda: fake.get("/__count")["rows"] >= n, 120 + n / 2000, "delivery", interval=0.1)
    accepted = time.monotonic() - t
    cpu_accepted = cpu_seconds(d.proc.pid) - c0

    def complete():
        s = d.ctl("status")
        return s and s["queue"]["pending_profiles"] == 0 and s["queue"]["batches_awaiting_status"] == 0 \
            and s["queue"]["batches_ready"] == 0 and s["queue"]["batches_in_flight"] == 0
    wait_for(complete, 300, "every batch's final status", interval=0.1)
    total = time.monotonic() - t
    cpu = cpu_seconds(d.proc.pid) - c0
    cnt = fake.get("/__count")
    polls = cnt["polls"]
    report("spool file -> all rows accepted by Target", accepted, "s", note=f"{n / accepted:,.0f} rows/s")
    report("spool file -> every batch's status complete", total, "s",
           note=f"{cnt['submissions']} submissions + {polls} polls = {cnt['submissions'] + polls} calls")
    report("  of which the fake Target's own time", cnt["busy_seconds"], "s")
    report("  tpsyncd CPU until all rows were accepted", cpu_accepted, "s")
    report("  tpsyncd CPU until every status was complete", cpu, "s", note="of it folding into the mirror while idle")
    d.stop()
    fake.stop()
    os.unlink(src)


def bench_latency(args, work):
    print(f"latency: file dropped -> first byte POSTed, linger 0, {args.drops} drops")
    fake = Fake(work)
    fake_log_path = os.path.join(work, "lat-requests.json")
    d = Daemon(os.path.join(work, "lat"), base_url=fake.url, linger="0ms")
    lat = []
    for i in range(args.drops):
        tmp = os.path.join(work, "lat", "spool", f"d{i:04d}.csv.part")
        with open(tmp, "w") as f:
            f.write(f"customer_id,tier\nlat{i},v{i}\n")
        t_ms = time.time() * 1000
        os.rename(tmp, tmp[:-5])
        wait_for(lambda: fake.get("/__count")["submissions"] > i, 10, "request", interval=0.002)
        reqs = fake.get("/__requests")
        lat.append(reqs[-1]["arrived_ms"] - t_ms)
    lat.sort()
    report("median", statistics.median(lat), "ms")
    report("p99", lat[min(len(lat) - 1, int(len(lat) * 0.99))], "ms")
    d.stop()
    fake.stop()


def bench_idle(args, work):
    print(f"idle cost: an idle daemon (one spool source, control socket) over {args.idle_seconds:.0f} s")
    d = Daemon(os.path.join(work, "idle"))
    time.sleep(1)
    c0 = cpu_seconds(d.proc.pid)
    time.sleep(args.idle_seconds)
    used = cpu_seconds(d.proc.pid) - c0
    report("CPU per minute while idle", used * 60 / args.idle_seconds, "s/min",
           note=f"{used:.3f}s over {args.idle_seconds:.0f}s (clock tick {1 / HZ:.2f}s)")
    d.stop()


def bench_memory(args, work):
    n = args.big_rows
    print(f"memory: peak RSS ingesting {n:,} rows x {args.attrs} attributes")
    src = os.path.join(work, "big.csv")
    gen(n, args.attrs, src, "--seed", "11")
    d = Daemon(os.path.join(work, "big"))
    d.ctl("pause")
    s = d.drop(src, "a.csv")
    report(f"peak RSS, {n:,}-row file", peak_rss_mb(d.proc.pid), "MB", note=f"ingested in {s:.1f}s")
    report("state database size", os.path.getsize(os.path.join(work, "big", "state.db")) / 1e6, "MB",
           note=f"{os.path.getsize(os.path.join(work, 'big', 'state.db')) / n:.0f} bytes/profile")
    d.stop()
    os.unlink(src)


def gen_fast(n, k, out, reverse=False):
    """n x k CSV written by sqlite3 itself (about 10x faster than gen.py, for scale
    runs). Values depend only on the row number, so reversed files hold the same data."""
    idx = f"{n - 1} - i" if reverse else "i"
    cols = ", ".join(f"'v{j}-' || (({idx}) * {7919 + j * 104729} % 100003) AS attr{j}" for j in range(k))
    sql = (f".mode csv\n.headers on\n.output {out}\n"
           f"WITH RECURSIVE n(i) AS (SELECT 0 UNION ALL SELECT i + 1 FROM n WHERE i < {n - 1})\n"
           f"SELECT printf('cust-%010d', {idx}) AS customer_id, {cols} FROM n;\n")
    subprocess.run(["sqlite3", ":memory:"], input=sql, text=True, check=True)


def bench_scale(args, work):
    n = args.scale_rows
    print(f"scale: a {n:,}-profile mirror in one state database")
    first = os.path.join(work, "scale.csv")
    t = time.monotonic()
    gen_fast(n, args.attrs, first)
    print(f"  (generated {os.path.getsize(first) / 1e9:.1f} GB in {time.monotonic() - t:.0f}s)", flush=True)
    d = Daemon(os.path.join(work, "scale"))
    d.ctl("pause")
    s = d.drop(first, "a.csv")
    os.unlink(first)
    db = os.path.join(work, "scale", "state.db")
    report("build the mirror (first ingest)", s, "s", note=f"{n / s:,.0f} rows/s")
    report("state database size", os.path.getsize(db) / 1e9, "GB", note=f"{os.path.getsize(db) / n:.0f} bytes/profile")
    same = os.path.join(work, "scale-same.csv")
    gen_fast(n, args.attrs, same, reverse=True)
    s = d.drop(same, "b.csv")
    os.unlink(same)
    report("unchanged full snapshot re-ingest", s, "s", note=f"{n / s:,.0f} rows/s, rows reordered")
    report("peak RSS", peak_rss_mb(d.proc.pid), "MB")
    d.stop()
    out = os.path.join(work, "scale-batch.csv")
    r = subprocess.run([os.path.join(BUILD, "bench", "bench_encode"), db, out], capture_output=True, text=True, check=True)
    build_s, write_s, size, rows = r.stdout.split()[:4]
    report("build one full batch (choose rows + encode)", float(build_s) + float(write_s), "s",
           note=f"{int(rows):,} rows, {int(size) / 1e6:.1f} MB")
    os.unlink(out)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, default=1000000)
    ap.add_argument("--attrs", type=int, default=10)
    ap.add_argument("--only", default="",
                    help="comma-separated: staging,first_pass,encoding,e2e,latency,idle,memory,scale (scale only on request)")
    ap.add_argument("--big-rows", type=int, default=10000000)
    ap.add_argument("--idle-seconds", type=float, default=60)
    ap.add_argument("--drops", type=int, default=100)
    ap.add_argument("--scale-rows", type=int, default=50000000)
    a = ap.parse_args()
    for p in (TPSYNCD, TPSYNCCTL, FAKE):
        if not os.path.exists(p):
            raise SystemExit(f"bench: {p} missing; build first (ninja -C build)")
    work = tempfile.mkdtemp(prefix="tpsync-bench-")
    try:
        only = set(filter(None, a.only.split(",")))
        print(f"tpsync benchmarks on {os.cpu_count()} CPUs; {time.strftime('%Y-%m-%d')}")
        for name, fn in [("staging", bench_staging), ("first_pass", bench_first_pass), ("encoding", bench_encoding),
                         ("e2e", bench_end_to_end),
                         ("latency", bench_latency), ("idle", bench_idle), ("memory", bench_memory),
                         ("scale", bench_scale)]:
            if (not only and name != "scale") or name in only:
                fn(a, work)
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
