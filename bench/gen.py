#!/usr/bin/env python3
# SPDX-License-Identifier: MIT
"""Seeded CSV generator for benchmarks: N profiles x K attributes.

  gen.py N K OUT [--seed S] [--change-rate R] [--reverse]

With --change-rate R, the same profiles as seed S are written with a fraction R
of the rows changed in one attribute (so runs can measure unchanged and
partly changed re-ingests). --reverse writes the rows in reverse order (same
data, different bytes)."""
import argparse
import random


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("n", type=int)
    ap.add_argument("k", type=int)
    ap.add_argument("out")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--change-rate", type=float, default=0.0)
    ap.add_argument("--reverse", action="store_true")
    a = ap.parse_args()
    rnd = random.Random(a.seed)
    change = random.Random(a.seed + 1000)
    words = ["gold", "silver", "bronze", "platinum", "Amsterdam", "Utrecht", "Zürich", "50% off & more",
             "a+b=c", "comma, inside", "Rotterdam", "Eindhoven"]
    header = "customer_id," + ",".join(f"attr{j}" for j in range(a.k)) + "\n"
    order = range(a.n - 1, -1, -1) if a.reverse else range(a.n)
    # Values depend only on (seed, i, j), so order does not change them.
    with open(a.out, "w", buffering=1 << 20) as f:
        f.write(header)
        for i in order:
            r = random.Random(a.seed * 1000003 + i)
            vals = [f"{words[r.randrange(len(words))]}-{r.randrange(1000)}" for _ in range(a.k)]
            if a.change_rate and change.random() < a.change_rate:
                vals[0] = f"changed-{change.randrange(1 << 30)}"
            f.write(f"cust-{i:09d}," + ",".join('"' + v + '"' if "," in v else v for v in vals) + "\n")


if __name__ == "__main__":
    main()
