# SPDX-License-Identifier: MIT
"""Against a fake Target that behaves as production does (../shared/TARGET_API.md):
TLS, status on another host given as http://, asynchronous processing, per-row
failures, v2 override, a shared 50-calls-a-minute budget answering 503, and the
existing fault mix. Each test asserts what Target ends up holding, that no
limit or ordering rule was broken, and that nothing went over plain http."""
import os
import random

from harness import csv_text, over_tls, run, target_args, wait_for, write_atomic


def no_violations(case):
    st = case.target.state()
    assert st["violations"] == [], st["violations"][:5]
    assert st["plain_on_tls"] == 0, st


def max_in_window(times, window_ms=60000):
    """The most events in any window of window_ms."""
    times = sorted(times)
    best, lo = 0, 0
    for hi, t in enumerate(times):
        while t - times[lo] >= window_ms:
            lo += 1
        best = max(best, hi - lo + 1)
    return best


TOKEN = "prod-token-7d1c"


def token_file(case):
    path = os.path.join(case.dir, "token")
    with open(path, "w") as f:
        f.write(TOKEN + "\n")
    return path


@over_tls
@target_args("--token", TOKEN)
def test_tls_edge_status_host_with_token(case):
    """The status URL names the edge host over http://; it serves TLS only, so
    the daemon must poll it over https, with the token, and complete."""
    d = case.daemon(target_extra=f"  token_file: {token_file(case)}\n").start()
    write_atomic(os.path.join(case.spool, "a.csv"), csv_text(["customer_id", "tier"], [["c1", "gold"]]))
    wait_for(lambda: d.status()["delivery"]["batches_complete"] == 1, 30, "the batch to complete")
    assert case.target.profiles() == {"c1": {"tier": "gold"}}
    st = case.target.state()
    assert st["polls"] >= 1 and st["auth_failures"] == 0, st
    b = d.ctl("batches")["batches"][0]
    assert b["state"] == "complete" and b["target_batch_id"], b
    no_violations(case)
    assert TOKEN not in d.log_text()


@over_tls
def test_certificate_checked(case):
    """Without the CA that signed Target's certificate, nothing is sent: the
    certificate problem is shown and retried, never bypassed."""
    d = case.daemon()
    with open(d.config) as f:
        text = f.read()
    with open(d.config, "w") as f:
        f.write(text.replace(f"  ca_file: {case.target.ca}\n", ""))
    d.start()
    write_atomic(os.path.join(case.spool, "a.csv"), csv_text(["customer_id", "tier"], [["c1", "gold"]]))
    s = wait_for(lambda: "certificate" in (d.status()["delivery"]["last_error"] or "") and d.status(), 20,
                 "the certificate error")
    assert s["queue"]["batches_ready"] == 1, s["queue"]
    assert case.target.state()["submissions"] == 0


@over_tls
def test_async_processing_polls_back_off(case):
    """Target processes a batch seconds after accepting it: its values show only
    then, and the polls in between back off (200 ms doubling to 800 ms)."""
    case.target.configure(process_delay_ms=3000)
    d = case.daemon(poll_interval="200ms", poll_max="800ms").start()
    write_atomic(os.path.join(case.spool, "a.csv"), csv_text(["customer_id", "tier"], [["c1", "gold"]]))
    wait_for(lambda: d.status()["delivery"]["batches_accepted"] == 1, 20, "acceptance")
    assert case.target.profiles() == {}  # accepted for processing, not applied
    wait_for(lambda: d.status()["delivery"]["batches_complete"] == 1, 20, "completion")
    assert case.target.profiles() == {"c1": {"tier": "gold"}}
    polls = case.target.polls()
    gaps = [b - a for a, b in zip(polls, polls[1:])]
    # 200, 400, 800, 800 ms ... : about 5 polls over 3 s, not 15.
    assert 3 <= len(polls) <= 7, (len(polls), gaps)
    assert all(g >= 350 for g in gaps[1:]), gaps
    no_violations(case)


@over_tls
def test_status_gone_sends_again(case):
    """Target no longer knows the batch (404 on its status): not assumed
    delivered; its profiles are sent again and confirmed."""
    d = case.daemon().start()
    case.target.fault("poll_gone")
    write_atomic(os.path.join(case.spool, "a.csv"), csv_text(["customer_id", "tier"], [["c1", "gold"]]))
    wait_for(lambda: d.status()["delivery"]["batches_complete"] == 1, 30, "the second batch to complete")
    states = sorted(b["state"] for b in d.ctl("batches")["batches"])
    assert states == ["complete", "unconfirmed"], states
    assert len(case.target.requests()) == 2
    no_violations(case)


@over_tls
def test_answer_after_long_validation(case):
    """Target takes 3 s to validate a body and answer: with target.timeout 4s
    that is one request, not a retry (curl's low-speed abort fired at 2 s)."""
    d = case.daemon(timeout="4s").start()
    case.target.fault("slow", delay_ms=3000)
    write_atomic(os.path.join(case.spool, "a.csv"), csv_text(["customer_id", "tier"], [["c1", "gold"]]))
    wait_for(lambda: d.status()["delivery"]["batches_accepted"] == 1, 20, "acceptance")
    reqs = case.target.requests()
    assert len(reqs) == 1 and reqs[0]["outcome"] == "slow" and reqs[0]["status"] == 200, reqs
    no_violations(case)


@over_tls
@target_args("--calls-per-minute", "20")
def test_throttled_by_other_tools(case):
    """Other tools of the account use most of its budget (20 calls in a window
    shortened to 3 s here): Target answers 503, and the daemon slows the whole
    account down instead of hammering it; everything arrives, and its own
    calls never go over the budget."""
    case.target.configure(other_calls_per_minute=17, window_ms=3000)
    d = case.daemon(calls_per_minute=100, linger="0ms", max_in_flight=1, retry_max="2s").start()
    for i in range(5):
        write_atomic(os.path.join(case.spool, f"f{i}.csv"), csv_text(["customer_id", "tier"], [[f"c{i}", "gold"]]))
        wait_for(lambda i=i: f"c{i}" in case.target.profiles(), 60, f"c{i}", interval=0.2)
    st = case.target.state()
    assert st["rate_rejections"] > 0, st  # the budget was in fact tight
    assert 'tpsync_retries_total{cause="throttled"} 0' not in d.ctl("metrics")["text"]
    no_violations(case)


def test_changed_only_under_override(case):
    """v2 override: consecutive batches for one profile, with no page visit in
    between, replace what the earlier batch set. With rows: changed_only the
    second row carries only the changed cell, so Target loses the first
    batch's other value; a page visit in between keeps it; full_profile rows
    never lose it. (config warns about changed_only with api_version 2.)"""
    def step(d, name, rows, files):
        write_atomic(os.path.join(case.spool, name), csv_text(["customer_id", "tier", "city"], rows))
        wait_for(lambda: d.ctl("sources")["sources"][0]["files"] == files, 20, name)
        d.wait_idle()

    d = case.daemon(rows="changed_only").start()
    step(d, "a1.csv", [["c1", "gold", "Delft"], ["c2", "gold", "Delft"]], 1)
    case.target.visit("c2", {"visits": "1"})  # a page visit for c2 only
    step(d, "b2.csv", [["c1", "silver", "Delft"], ["c2", "silver", "Delft"]], 2)
    got = case.target.profiles()
    assert got["c1"] == {"tier": "silver"}, got  # city lost: override
    assert got["c2"] == {"tier": "silver", "city": "Delft", "visits": "1"}, got
    d.stop()
    r = d.run_once("--check-config")
    assert "changed_only with api_version 2" in r.stderr, r.stderr
    # The same with full_profile: nothing lost.
    d2 = case.daemon(rows="full_profile").start()
    step(d2, "c3.csv", [["c1", "platinum", "Delft"]], 1)
    assert case.target.profiles()["c1"] == {"tier": "platinum", "city": "Delft"}
    no_violations(case)


@over_tls
@target_args("--token", TOKEN, "--calls-per-minute", "50")
def test_mixed_run_against_production(case):
    """3,000 profiles in six files (ids in several files, with different
    columns) under asynchronous processing, 3% per-row failures, other tools
    using part of the 50-a-minute budget, and 30% of submissions faulted.
    Target ends holding exactly the latest value of every attribute; no
    violation, no plain http, and polls within the budget."""
    case.target.configure(process_delay_ms=300, row_failure_rate=0.03, other_calls_per_minute=10,
                          fault_rate=0.3, seed=99)
    d = case.daemon(target_extra=f"  token_file: {token_file(case)}\n", poll_interval="300ms", poll_max="4s",
                    timeout="2s", calls_per_minute=50, linger="200ms", max_in_flight=2, retry_max="5s",
                    batch_extra="  max_rows: 700\n", limits_extra="  poll_calls_per_minute: 20\n").start()
    rnd = random.Random(777)
    tricky = ["50% off & more", "a+b=c", "comma,inside", 'q "uote"', "new\nline", "Zürich €", "%41", "=", "+"]
    layouts = [["tier", "city"], ["tier", "points"], ["city", "segment"], ["tier", "city", "segment"],
               ["points"], ["segment", "tier"]]
    truth = {}
    for f, cols in enumerate(layouts):
        rows = []
        for cid in rnd.sample(range(3000), 800 if f else 3000):
            row = [f"p{cid:04d}"]
            for col in cols:
                v = rnd.choice(tricky + [f"{col}{rnd.randint(1, 40)}"])
                row.append(v)
                truth.setdefault(row[0], {})[col] = v
            rows.append(row)
        write_atomic(os.path.join(case.spool, f"f{f}.csv"), csv_text(["customer_id", *cols], rows))

    def done():
        return case.target.profiles() == truth and case.target.state()["unprocessed"] == 0
    wait_for(done, 240, "Target to hold the latest value of every attribute", interval=1.0)
    d.wait_idle(120)
    assert case.target.profiles() == truth
    st = case.target.state()
    no_violations(case)
    assert st["rows_failed"] > 0 and st["auth_failures"] == 0, st
    polls = case.target.polls()
    posts = [r["arrived_ms"] for r in case.target.requests()]
    print(f"    {len(truth)} profiles, {len(posts)} submissions, {len(polls)} polls, {st['rows_failed']} rows failed,"
          f" {st['rate_rejections']} throttled; most polls in a minute: {max_in_window(polls)}")
    # Polls beyond limits.poll_calls_per_minute (20) only with calls no
    # submission waits for, and batch.max_in_flight (2) left free.
    assert max_in_window(polls) <= 50 - 2, max_in_window(polls)
    assert max_in_window(polls + posts) <= 50
    s = d.status()["delivery"]
    assert s["rows_failed_at_target"] > 0 and s["rows_requeued_after_failure"] > 0, s
    assert TOKEN not in d.log_text()


if __name__ == "__main__":
    run([test_tls_edge_status_host_with_token, test_certificate_checked, test_async_processing_polls_back_off,
         test_status_gone_sends_again, test_answer_after_long_validation, test_throttled_by_other_tools,
         test_changed_only_under_override, test_mixed_run_against_production])
