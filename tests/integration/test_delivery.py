# SPDX-License-Identifier: MIT
"""Delivery engine: every fault Target can produce, one test each, then a mixed run
with 30% of requests faulted. Each asserts what Target ended up with, that no
limit or ordering rule was broken, and how the daemon reported it."""
import os
import random
import signal

from harness import csv_text, run, target_args, wait_for, write_atomic

HEADER = ["customer_id", "tier", "city"]


def drop(case, name, rows):
    write_atomic(os.path.join(case.spool, name), csv_text(HEADER, rows))


def no_violations(case):
    v = case.target.state()["violations"]
    assert v == [], v


def attempts_for(case, cid):
    return [r for r in case.target.requests() if cid in r["ids"]]


def check_spacing(reqs, at_least_ms):
    """Each retry came at least at_least_ms after the failed attempt's answer.
    Dropped connections are left out: libcurl itself re-sends at once on a fresh
    connection when a reused one turns out dead before any answer."""
    for prev, nxt in zip(reqs, reqs[1:]):
        if prev.get("status") not in (None, 0) and prev.get("outcome") != "accepted":
            gap = nxt["arrived_ms"] - prev.get("answered_ms", prev["arrived_ms"])
            assert gap >= at_least_ms - 20, (gap, prev, nxt)


def deliver_with_fault(case, mode, count=1, want_attempts=None, **fault):
    d = case.daemon().start()
    case.target.fault(mode, count, **fault)
    drop(case, "a.csv", [["c1", "gold", "Utrecht"], ["c2", "silver", "Delft"]])
    wait_for(lambda: case.target.profiles() == {"c1": {"tier": "gold", "city": "Utrecht"},
                                                "c2": {"tier": "silver", "city": "Delft"}}, 30, "delivery")
    s = d.wait_idle(30)
    reqs = attempts_for(case, "c1")
    if want_attempts:
        assert len(reqs) == want_attempts, [(r["fault"], r["outcome"]) for r in reqs]
    no_violations(case)
    return d, s, reqs


def test_http_500_retried(case):
    _, s, reqs = deliver_with_fault(case, "500", 2, want_attempts=3)
    check_spacing(reqs, 100)
    assert s["queue"]["dead_letters"] == 0


def test_http_502_503_504_408_retried(case):
    d = case.daemon().start()
    for mode in ("502", "503", "504", "408"):
        case.target.fault(mode)
    drop(case, "a.csv", [["c1", "gold", "Utrecht"]])
    wait_for(lambda: case.target.profiles() == {"c1": {"tier": "gold", "city": "Utrecht"}}, 30, "delivery")
    reqs = attempts_for(case, "c1")
    assert [r["fault"] for r in reqs] == ["502", "503", "504", "408", "none"], [r["fault"] for r in reqs]
    check_spacing(reqs, 100)
    d.wait_idle()
    no_violations(case)


def test_429_retry_after_honoured(case):
    _, _, reqs = deliver_with_fault(case, "429", 1, want_attempts=2, retry_after=2)
    gap = reqs[1]["arrived_ms"] - reqs[0]["answered_ms"]
    # Retry-After 2 s, clamped to retry.max (3 s here): at least 2 s.
    assert gap >= 1980, gap


test_429_retry_after_honoured.opts = {"retry_max": "3s"}


def test_503_retry_after_clamped_to_retry_max(case):
    _, _, reqs = deliver_with_fault(case, "503", 1, want_attempts=2, retry_after=3600)
    gap = reqs[1]["arrived_ms"] - reqs[0]["answered_ms"]
    assert 900 <= gap < 3000, gap  # retry.max is 1 s


def test_dropped_connection_retried(case):
    d, _, reqs = deliver_with_fault(case, "drop", 1)
    assert reqs[0]["outcome"].startswith("dropped") and reqs[-1]["outcome"] == "accepted"


def test_drop_after_apply_resends_latest_after_timeout(case):
    """The answer was lost although Target applied the batch: the batch is sent
    again, and the latest values once more after target.timeout."""
    d = case.daemon(timeout="1s").start()
    case.target.fault("drop_after_apply")
    drop(case, "a.csv", [["c1", "gold", "Utrecht"]])
    wait_for(lambda: len([r for r in attempts_for(case, "c1") if r["outcome"] == "accepted"]) >= 2, 20,
             "the resend and the echo")
    reqs = attempts_for(case, "c1")
    assert reqs[0]["outcome"] == "dropped after applying"
    lost_at = reqs[0]["arrived_ms"]
    assert reqs[-1]["arrived_ms"] - lost_at >= 1000, [(r["arrived_ms"] - lost_at) for r in reqs]
    d.wait_idle()
    assert case.target.profiles() == {"c1": {"tier": "gold", "city": "Utrecht"}}
    no_violations(case)


def test_slow_answer_applied_late_never_wins(case):
    """A request the client gave up on (timeout) is applied by Target after a newer
    value was delivered; the echo after target.timeout restores the latest value."""
    d = case.daemon(timeout="1s").start()
    case.target.fault("slow", delay_ms=1800)
    drop(case, "a.csv", [["c1", "old", "Utrecht"]])
    # Wait for the client to give up and the retry to be accepted.
    wait_for(lambda: any(r.get("outcome") == "accepted" for r in attempts_for(case, "c1")), 20, "the retry")
    drop(case, "b.csv", [["c1", "new", "Utrecht"]])
    # The late application of the slow request ("old") happens; the echo follows.
    wait_for(lambda: any(r.get("outcome", "").startswith("slow") for r in attempts_for(case, "c1")), 20,
             "the late apply")
    wait_for(lambda: case.target.profiles().get("c1", {}).get("tier") == "new"
             and d.status()["queue"]["pending_profiles"] == 0, 20, "the latest value to win")
    d.wait_idle()
    s = d.sql("SELECT count(*) FROM echoes")
    assert s == [(0,)], s
    assert case.target.profiles() == {"c1": {"tier": "new", "city": "Utrecht"}}
    no_violations(case)


def test_success_false_retried_then_dead_lettered_then_retry_dead(case):
    d = case.daemon(retry_extra="  max_failures: 3\n").start()
    case.target.fault("success_false", 3)
    drop(case, "a.csv", [["c1", "gold", "Utrecht"]])
    dead = wait_for(lambda: d.ctl("dead")["total"] == 2 and d.ctl("dead"), 20, "dead letters")
    letters = sorted((x["profile"], x["attr"], x["value"]) for x in dead["dead_letters"])
    assert letters == [("c1", "city", "Utrecht"), ("c1", "tier", "gold")], letters
    assert all("Injected failure" in x["reason"] and x["attempts"] == 3 for x in dead["dead_letters"]), dead
    assert case.target.profiles() == {}
    s = d.status()
    assert s["queue"]["dead_letters"] == 2
    # A newer value staged meanwhile supersedes the dead letter's.
    drop(case, "b.csv", [["c1", "platinum", ""]])
    wait_for(lambda: case.target.profiles() == {"c1": {"tier": "platinum"}}, 20, "newer value")
    assert [x["attr"] for x in d.ctl("dead")["dead_letters"]] == ["city"]
    r = d.ctl("retry-dead", "--all")
    assert r["requeued"] == 1
    wait_for(lambda: case.target.profiles() == {"c1": {"tier": "platinum", "city": "Utrecht"}}, 20, "re-queued city")
    assert d.ctl("dead")["total"] == 0
    no_violations(case)


def test_garbage_answer_retried(case):
    deliver_with_fault(case, "garbage", 2, want_attempts=3)


def test_http_400_dead_letters_at_once(case):
    d = case.daemon().start()
    case.target.fault("400")
    drop(case, "a.csv", [["c1", "gold", "Utrecht"]])
    dead = wait_for(lambda: d.ctl("dead")["total"] == 2 and d.ctl("dead"), 20, "dead letters")
    assert all(x["reason"] == "HTTP 400" and x["last_answer"] == "injected fault" for x in dead["dead_letters"])
    assert len(case.target.requests()) == 1
    r = d.ctl("dead", as_json=False)
    assert "HTTP 400" in r.stdout and "c1" in r.stdout


def test_413_splits_batch(case):
    d = case.daemon().start()
    case.target.fault("413")
    drop(case, "a.csv", [[f"c{i}", "gold", "x"] for i in range(10)])
    wait_for(lambda: len(case.target.profiles()) == 10, 20, "delivery")
    reqs = case.target.requests()
    assert reqs[0]["rows"] == 10 and reqs[0]["status"] == 413
    assert sorted(r["rows"] for r in reqs[1:]) == [5, 5], [r["rows"] for r in reqs]
    d.wait_idle()
    no_violations(case)


@target_args("--token", "secret-token-2")
def test_401_pauses_until_token_changes(case):
    token_file = os.path.join(case.dir, "token")
    with open(token_file, "w") as f:
        f.write("secret-token-1\n")
    d = case.daemon(target_extra=f"  token_file: {token_file}\n", retry_max="30s").start()
    drop(case, "a.csv", [["c1", "gold", "Utrecht"]])
    wait_for(lambda: d.status()["delivery"]["state"] == "authentication failed", 20, "auth pause")
    assert case.target.profiles() == {}
    assert d.status()["queue"]["batches_ready"] == 1  # nothing dropped
    r = d.ctl("status", as_json=False)
    assert "authentication failed" in r.stdout and "secret-token" not in r.stdout
    with open(token_file, "w") as f:
        f.write("secret-token-2\n")
    d.proc.send_signal(signal.SIGHUP)
    wait_for(lambda: case.target.profiles() == {"c1": {"tier": "gold", "city": "Utrecht"}}, 20, "delivery with new token")
    assert d.status()["delivery"]["state"] == "running"
    d.wait_idle()
    assert "secret-token" not in d.log_text()
    assert "secret-token" not in str(d.ctl("metrics"))


@target_args("--token", "tok-b")
def test_401_resumes_when_token_file_changes(case):
    token_file = os.path.join(case.dir, "token")
    with open(token_file, "w") as f:
        f.write("tok-a")
    d = case.daemon(target_extra=f"  token_file: {token_file}\n", retry_max="1s").start()
    drop(case, "a.csv", [["c1", "gold", "Utrecht"]])
    wait_for(lambda: d.status()["delivery"]["state"] == "authentication failed", 20, "auth pause")
    with open(token_file + ".new", "w") as f:
        f.write("tok-b")
    os.rename(token_file + ".new", token_file)
    wait_for(lambda: case.target.profiles().get("c1"), 20, "delivery after the token file changed")
    assert "tok-" not in d.log_text()


def test_stuck_requeued_once_then_dead(case):
    d = case.daemon().start()
    case.target.fault("poll_stuck", 2)
    drop(case, "a.csv", [["c1", "gold", "Utrecht"]])
    dead = wait_for(lambda: d.ctl("dead")["total"] == 2 and d.ctl("dead"), 20, "dead letters after stuck twice")
    assert all("stuck" in x["reason"] for x in dead["dead_letters"]), dead
    assert len(attempts_for(case, "c1")) == 2  # the original and one re-queue
    states = [b["state"] for b in d.ctl("batches")["batches"]]
    assert sorted(states) == ["dead", "stuck"], states
    dead = d.ctl("batches", "--state", "dead")["batches"]
    assert [b["state"] for b in dead] == ["dead"], dead
    r = d.ctl("batches", "--state", "nonsense", check=False, as_json=False)
    assert r.returncode == 64 and "unconfirmed" in r.stderr, r


def test_status_incomplete_many_times(case):
    d = case.daemon().start()
    case.target.fault("poll_incomplete", polls=8)
    case.target.fault("poll_500", 2)
    drop(case, "a.csv", [["c1", "gold", "Utrecht"]])
    wait_for(lambda: d.status()["delivery"]["batches_complete"] == 1, 30, "complete")
    b = d.ctl("batches")["batches"][0]
    assert b["state"] == "complete" and b["successful"] == 1 and b["target_status"] == "complete", b
    assert case.target.state()["polls"] >= 10


def test_ordering_newer_value_waits_for_answer(case):
    """A newer value staged while the older is in flight goes out only after the
    older request is answered (the fake Target flags any overlap)."""
    d = case.daemon(max_in_flight=4).start()
    case.target.fault("slow", delay_ms=700)
    drop(case, "a.csv", [["c1", "v1", "x"]])
    wait_for(lambda: len(case.target.requests()) == 1, 20, "first request")
    for i in range(2, 6):
        drop(case, f"b{i}.csv", [["c1", f"v{i}", "x"]])
    wait_for(lambda: case.target.profiles().get("c1", {}).get("tier") == "v5", 20, "latest value")
    d.wait_idle()
    no_violations(case)
    reqs = attempts_for(case, "c1")
    for prev, nxt in zip(reqs, reqs[1:]):
        assert nxt["arrived_ms"] >= prev["answered_ms"], (prev, nxt)


def test_call_rate_limit_respected(case):
    """With calls_per_minute 6, 20 files of changes never make Target answer 503."""
    d = case.daemon(calls_per_minute=6, linger="0ms", max_in_flight=1).start()
    case.target.configure(calls_per_minute=6)
    for i in range(4):
        drop(case, f"f{i}.csv", [[f"c{i}", "gold", "x"]])
        wait_for(lambda i=i: f"c{i}" in case.target.profiles(), 20, f"file {i}")
    s = wait_for(lambda: d.status()["delivery"].get("held_back_by") and d.status(), 30, "the rate limit to hold work back")
    assert s["delivery"]["held_back_by"] == "limits.calls_per_minute", s["delivery"]
    assert s["delivery"]["held_back_until"] > 0
    st = case.target.state()
    assert st["rate_rejections"] == 0 and st["violations"] == [], st


def test_rows_per_day_budget(case):
    d = case.daemon(limits_extra="  rows_per_day: 5\n").start()
    drop(case, "a.csv", [[f"c{i}", "gold", "x"] for i in range(8)])
    s = wait_for(lambda: d.status()["delivery"].get("held_back_by") == "limits.rows_per_day" and d.status(), 20,
                 "the daily budget to hold work back")
    assert len(case.target.profiles()) == 5
    assert s["queue"]["pending_profiles"] == 3
    assert s["delivery"]["rows_sent_last_24h"] == 5


def test_mixed_faults(case):
    """Thousands of profiles in many files, 30% of requests faulted at random (fixed
    seed), values full of characters that break naive encoders. Target's final state
    must equal the source data exactly, with no limit or ordering violation."""
    d = case.daemon(timeout="1s", max_in_flight=3, linger="20ms",
                    batch_extra="  max_rows: 60\n").start()
    case.target.configure(fault_rate=0.3, seed=42)
    rnd = random.Random(1234)
    tricky = ["50% off & more", "a+b=c", "comma,inside", 'q "uote"', "new\nline", "tab\tx", "Zürich €",
              "日本", "%41", "&amp;", "=", "+", "100%"]
    truth = {}
    for f in range(12):
        rows = []
        for _ in range(400):
            cid = f"m{rnd.randint(0, 2999):04d}"
            tier = rnd.choice(tricky + ["gold", "silver"])
            city = rnd.choice(tricky + [f"city{rnd.randint(1, 50)}"])
            rows.append([cid, tier, city])
            truth[cid] = {"tier": tier, "city": city}
        drop(case, f"f{f:02d}.csv", rows)
    wait_for(lambda: case.target.profiles() == truth, 120, "Target to equal the source data", interval=0.5)
    d.wait_idle(60)
    assert case.target.profiles() == truth
    no_violations(case)
    reqs = case.target.requests()
    faulted = [r for r in reqs if r["fault"] != "none"]
    print(f"    {len(truth)} profiles, {len(reqs)} requests, {len(faulted)} faulted")
    assert len(faulted) > 0.15 * len(reqs), [r["fault"] for r in reqs]
    for r in reqs:
        assert r["rows"] <= 60
    # Retries are spaced at least retry.initial after the failed answer.
    by_ids = {}
    for r in reqs:
        by_ids.setdefault(tuple(r["ids"]), []).append(r)
    for same in by_ids.values():
        check_spacing(same, 100)


def test_v1_counts_profiles_not_found(case):
    """api_version 1 updates existing profiles only: the unknown one is counted
    as profilesNotFound in the batch's status (and the log)."""
    d = case.daemon(target_extra="  api_version: 1\n").start()
    case.target.configure()
    # c1 exists at Target (created through v2 by someone else); c2 does not.
    import urllib.request
    req = urllib.request.Request(case.target.url + "/m2/demo/v2/profile/batchUpdate",
                                 data=b"batch=thirdPartyId,tier\nc1,old\n", method="POST",
                                 headers={"Content-Type": "application/x-www-form-urlencoded"})
    urllib.request.urlopen(req, timeout=5).read()
    drop(case, "a.csv", [["c1", "gold", "x"], ["c2", "silver", "y"]])
    def complete():
        bs = d.ctl("batches")["batches"]
        return bs and bs[0]["state"] == "complete" and bs[0]
    b = wait_for(complete, 20, "completion")
    assert b["successful"] == 1 and b["not_found"] == 1, b
    assert case.target.requests()[-1]["path"] == "/m2/demo/profile/batchUpdate"
    assert case.target.profiles() == {"c1": {"tier": "gold", "city": "x"}}
    assert "profiles_not_found=1" in d.log_text()
    assert "not_found=1" in d.ctl("batches", as_json=False).stdout


def with_opts(fn):
    opts = getattr(fn, "opts", None)
    if not opts:
        return fn

    def wrapped(case):
        orig = case.daemon

        def daemon(sources=None, **kw):
            return orig(sources, **{**opts, **kw})
        case.daemon = daemon
        return fn(case)
    wrapped.__name__ = fn.__name__
    return wrapped


if __name__ == "__main__":
    run([with_opts(f) for f in [
        test_http_500_retried, test_http_502_503_504_408_retried, test_429_retry_after_honoured,
        test_503_retry_after_clamped_to_retry_max, test_dropped_connection_retried,
        test_drop_after_apply_resends_latest_after_timeout, test_slow_answer_applied_late_never_wins,
        test_success_false_retried_then_dead_lettered_then_retry_dead, test_garbage_answer_retried,
        test_http_400_dead_letters_at_once, test_413_splits_batch, test_401_pauses_until_token_changes,
        test_401_resumes_when_token_file_changes, test_stuck_requeued_once_then_dead,
        test_status_incomplete_many_times, test_ordering_newer_value_waits_for_answer,
        test_call_rate_limit_respected, test_rows_per_day_budget, test_v1_counts_profiles_not_found,
        test_mixed_faults]])
