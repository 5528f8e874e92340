# SPDX-License-Identifier: MIT
"""Hostile input: a 10 MB field, a 200 MB sparse file of NUL bytes, broken
quoting mixed with good rows, and YAML alias bombs. No crash, memory stays
bounded, good rows are delivered and bad ones reported."""
import os
import subprocess
import time

from harness import TPSYNCD, peak_rss_mb, run, wait_for


def test_huge_field_and_sparse_file(case):
    d = case.daemon().start()
    with open(os.path.join(case.spool, "huge.tmp"), "wb") as f:
        f.write(b"customer_id,tier\nbefore,ok\nbig," + b"x" * (10 << 20) + b"\nafter,ok2\n")
    os.rename(os.path.join(case.spool, "huge.tmp"), os.path.join(case.spool, "huge.csv"))
    wait_for(lambda: case.target.profiles() == {"before": {"tier": "ok"}, "after": {"tier": "ok2"}}, 30, "good rows")
    rej = os.path.join(case.spool, "archive", "huge.rejects.csv")
    wait_for(lambda: os.path.exists(rej), 10, "rejects")
    text = open(rej, errors="replace").read()
    assert "3,\"field longer than the allowed maximum\"" in text
    assert os.path.getsize(rej) < 200000  # the raw row kept in the report is capped
    sparse = os.path.join(case.spool, "sparse.tmp")
    with open(sparse, "wb") as f:
        f.write(b"customer_id,tier\nfirst,ok\n")
        f.truncate(200 << 20)
    os.rename(sparse, os.path.join(case.spool, "sparse.csv"))
    wait_for(lambda: d.status()["sources"][0]["files"] == 2, 120, "the sparse file")
    assert case.target.profiles().get("first") == {"tier": "ok"}
    peak = peak_rss_mb(d.proc.pid)
    print(f"    peak RSS after a 10 MB field and a 200 MB NUL file: {peak:.1f} MB")
    assert peak < 64, peak
    assert d.ctl("sources")["sources"][0]["rows_rejected"] == 2


def test_yaml_bombs(case):
    bomb = os.path.join(case.dir, "bomb.yaml")
    lines = ['a0: &a0 ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]']
    for i in range(1, 10):
        lines.append(f"a{i}: &a{i} [" + ",".join([f"*a{i - 1}"] * 9) + "]")
    lines.append("target: {client_code: demo}\nsources: *a9")
    with open(bomb, "w") as f:
        f.write("\n".join(lines) + "\n")
    t = time.monotonic()
    r = subprocess.run([TPSYNCD, "-c", bomb, "--check-config"], capture_output=True, text=True, timeout=30)
    assert r.returncode == 1 and time.monotonic() - t < 5, (r.returncode, r.stderr[:300])
    assert 'unknown section "a0"' in r.stderr
    deep = os.path.join(case.dir, "deep.yaml")
    with open(deep, "w") as f:
        f.write("target: " + "[" * 5000 + "]" * 5000 + "\n")
    r = subprocess.run([TPSYNCD, "-c", deep, "--check-config"], capture_output=True, text=True, timeout=30)
    assert r.returncode == 1 and "deep.yaml:1:" in r.stderr, r.stderr[:300]
    binary = os.path.join(case.dir, "binary.yaml")
    with open(binary, "wb") as f:
        f.write(b"target:\x00\xff\xfe{client_code: demo}\n")
    r = subprocess.run([TPSYNCD, "-c", binary, "--check-config"], capture_output=True, text=True, timeout=30)
    assert r.returncode == 1 and "binary.yaml:" in r.stderr, r.stderr[:300]


if __name__ == "__main__":
    run([test_huge_field_and_sparse_file, test_yaml_bombs])
