# SPDX-License-Identifier: MIT
"""Fault soak (suite "slow"): files keep arriving for a few minutes while 30% of
requests fail at random and Target is down for a while in the middle. At the end
Target's state must be exact, with nothing lost or regressed and no limit or
ordering violation."""
import os
import random
import time

from checker import Feed, check
from harness import FakeTarget, csv_text, run, target_args, wait_for, write_atomic

DURATION = float(os.environ.get("TPSYNC_SOAK_SECONDS", "90"))


@target_args("--state-file", "target-state.json")
def test_fault_soak(case):
    rnd = random.Random(99)
    feed = Feed()
    d = case.daemon(timeout="2s", linger="50ms", max_in_flight=3, calls_per_minute=600,
                    batch_extra="  max_rows: 80\n").start()
    case.target.configure(fault_rate=0.3, seed=11)
    start = time.monotonic()
    version = 0
    outage_done = False
    tricky = ["50% off & more", "a+b=c", "comma,inside", 'q"q', "new\nline", "Zürich €", "%41"]
    while time.monotonic() - start < DURATION:
        version += 1
        rows = []
        for i in range(rnd.randint(20, 200)):
            p = f"s{rnd.randrange(5000):05d}"
            tier = f"{rnd.choice(tricky)}#{version}-{i}"
            rows.append([p, tier])
            feed.add(version, p, "tier", tier)
        write_atomic(os.path.join(case.spool, f"f{version:06d}.csv"), csv_text(["customer_id", "tier"], rows))
        if not outage_done and time.monotonic() - start > DURATION / 2:
            port, edge_port = case.target.port, case.target.edge_port()
            case.target.stop()
            os.unlink(case.target.port_file)
            time.sleep(8)
            case.target = FakeTarget(case.dir, "--port", str(port), "--edge-port", str(edge_port), "--state-file", os.path.join(case.dir, "target-state.json"))
            case.target.configure(fault_rate=0.3, seed=12)
            outage_done = True
        time.sleep(rnd.uniform(0.1, 0.6))
    case.target.configure(fault_rate=0.0)
    truth = feed.truth()
    wait_for(lambda: {p: v for p, v in case.target.profiles().items()} == truth, 300,
             "Target to reach the final state", interval=1)
    d.wait_idle(120)
    wait_for(lambda: d.sql("SELECT count(*) FROM echoes") == [(0,)], 60, "echoes")
    # The fake restarted mid-run: only its second life's log is checked for order.
    res = check(feed, case.target.requests(), case.target.profiles())
    assert not res["lost"] and not res["unexpected"], (res["lost"][:3], res["unexpected"][:3])
    assert not res["regressions"], res["regressions"][:3]
    assert case.target.state()["violations"] == []
    print(f"    {version} files, {len(truth)} profiles, outage of 8 s, {res['duplicated']} duplicate values")


if __name__ == "__main__":
    run([test_fault_soak])
