#!/usr/bin/env python3
# SPDX-License-Identifier: MIT
"""Staging cost of one build against another, on the same data, alternated so
that both meet the same state of a shared machine: first ingest, an unchanged
re-ingest of the rows reordered, and a 1% changed re-ingest, median of ROUNDS each. For measuring what a change costs
(e.g. the staging history of trace), with the older build as the reference.

  bench/ab_staging.py BUILD_REF BUILD_NEW [--rows N] [--attrs K] [--rounds R]
                      [--ref-config YAML] [--new-config YAML]

Each BUILD is a meson build directory (its daemon/tpsyncd and daemon/tpsyncctl)."""
import argparse
import os
import shutil
import statistics
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import bench  # noqa: E402


def one_round(build, work, first, same, changed, extra=""):
    bench.TPSYNCD = os.path.join(build, "daemon", "tpsyncd")
    bench.TPSYNCCTL = os.path.join(build, "daemon", "tpsyncctl")
    shutil.rmtree(work, ignore_errors=True)
    d = bench.Daemon(work, extra=extra)
    d.ctl("pause")
    t_first = d.drop(first, "a.csv")
    t_same = d.drop(same, "b.csv")
    t_changed = d.drop(changed, "c.csv")
    d.stop()
    size = os.path.getsize(os.path.join(work, "state.db"))
    shutil.rmtree(work, ignore_errors=True)
    return t_first, t_changed, size, t_same


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("ref")
    ap.add_argument("new")
    ap.add_argument("--rows", type=int, default=1000000)
    ap.add_argument("--attrs", type=int, default=10)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--ref-config", default="", help="YAML added to the reference's configuration")
    ap.add_argument("--new-config", default="", help="YAML added to the new build's configuration")
    args = ap.parse_args()
    tmp = tempfile.mkdtemp(prefix="tpsync-ab-")
    try:
        first = os.path.join(tmp, "first.csv")
        changed = os.path.join(tmp, "changed.csv")
        same = os.path.join(tmp, "same.csv")
        bench.gen(args.rows, args.attrs, first)
        bench.gen(args.rows, args.attrs, same, "--reverse")
        bench.gen(args.rows, args.attrs, changed, "--change-rate", "0.01")
        runs = {"ref": [], "new": []}
        for r in range(args.rounds):
            for name in ("ref", "new") if r % 2 == 0 else ("new", "ref"):
                extra = args.ref_config if name == "ref" else args.new_config
                res = one_round(getattr(args, name), os.path.join(tmp, "d"), first, same, changed,
                                extra + "\n" if extra else "")
                runs[name].append(res)
                print(f"  round {r + 1} {name}: first {res[0]:.2f} s, unchanged {res[3]:.2f} s, 1% changed {res[1]:.2f} s, "
                      f"database {res[2] / 1e6:.0f} MB", flush=True)
        for i, what in ((0, "first ingest"), (3, "unchanged re-ingest"), (1, "1% changed re-ingest")):
            ref = statistics.median(x[i] for x in runs["ref"])
            new = statistics.median(x[i] for x in runs["new"])
            print(f"{what:24} ref {ref:6.2f} s  new {new:6.2f} s  new/ref {new / ref:.3f}")
        ref = statistics.median(x[2] for x in runs["ref"])
        new = statistics.median(x[2] for x in runs["new"])
        print(f"{'state database':24} ref {ref / 1e6:6.0f} MB new {new / 1e6:6.0f} MB new/ref {new / ref:.3f}")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
