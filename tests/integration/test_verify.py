# SPDX-License-Identifier: MIT
"""Knowing what Target holds (README "Checking what Target holds"): verify
against the fake's fetch API with silent loss on, values changed "by a page",
answers that are not the documented JSON, an interrupted --all run; the
canary against both readings of the batch format; trace of a profile that
went through two files and a per-row failure."""
import json
import os
import subprocess
import time

from harness import TPSYNCCTL, csv_text, run, wait_for, write_atomic

HEADER = ["customer_id", "tier", "city"]
VERIFY = "verify:\n  min_age: 0s\n  calls_per_minute: 6000\n  canary_timeout: 20s\n"


def drop(case, name, rows):
    write_atomic(os.path.join(case.spool, name), csv_text(HEADER, rows))


def ctl(d, *args, timeout=120):
    """tpsyncctl with its exit code and JSON answer (verify prints the run's)."""
    r = subprocess.run([TPSYNCCTL, "-s", d.socket, *args, "--json"], capture_output=True, text=True, timeout=timeout)
    try:
        out = json.loads(r.stdout) if r.stdout.strip() else None
    except ValueError:
        out = r.stdout
    return r.returncode, out


def settled(case, d):
    d.wait_idle(60)
    wait_for(lambda: case.target.state()["unprocessed"] == 0, 30, "Target to process everything")


def test_verify_all_finds_and_repairs_silent_loss(case):
    """1% of rows lost after success=true: verify --all finds every lost profile
    and queues it again; a second --all matches everything and Target is exact."""
    case.target.configure(loss_rate=0.01, seed=3)
    d = case.daemon(sections_extra=VERIFY).start()
    truth = {f"p{i:04d}": {"tier": f"t{i % 5}", "city": f"c{i % 17}"} for i in range(3000)}
    drop(case, "a.csv", [[k, v["tier"], v["city"]] for k, v in truth.items()])
    settled(case, d)
    lost = set(case.target.state()["lost"])
    assert lost, "the fake lost nothing: the test proves nothing"
    assert case.target.profiles() != truth
    code, r = ctl(d, "verify", "--all")
    assert code == 1, (code, r)
    assert r["differed"] + r["missing"] == len(lost), (r, len(lost))
    assert r["repaired"] == len(lost) and r["matched"] == 3000 - len(lost), r
    settled(case, d)
    # The repairs went out again; nothing else did.
    code, r = ctl(d, "verify", "--all")
    assert code == 0 and r["matched"] == 3000, (code, r)
    assert case.target.profiles() == truth
    assert case.target.state()["violations"] == []
    m = d.ctl("metrics")["text"]
    assert 'tpsync_verify_profiles_total{result="matched"} ' in m


def test_changed_in_target_left_alone(case):
    """A value set by a page after our acceptance is reported, not repaired
    (verify.repair: missing_or_older); --no-repair reports a loss without
    queueing it."""
    d = case.daemon(sections_extra=VERIFY).start()
    drop(case, "a.csv", [["c1", "gold", "Delft"], ["c2", "silver", "Utrecht"]])
    wait_for(lambda: len(case.target.profiles()) == 2, 20, "delivery")
    settled(case, d)
    time.sleep(0.01)
    case.target.visit("c1", {"tier": "platinum"})
    code, r = ctl(d, "verify", "c1", "c2")
    assert code == 1, (code, r)
    res = {x["profile"]: x for x in r["results"]}
    assert res["c1"]["result"] == "changed_in_target" and res["c2"]["result"] == "matched", res
    diff = res["c1"]["detail"]["differs"][0]
    assert diff == {"attr": "tier", "ours": "gold", "target": "platinum", "changed_in_target": True}, diff
    assert d.status()["queue"]["pending_profiles"] == 0
    assert case.target.profiles()["c1"]["tier"] == "platinum"
    # The text form says so too.
    r = subprocess.run([TPSYNCCTL, "-s", d.socket, "verify", "c1"], capture_output=True, text=True, timeout=60)
    assert r.returncode == 1 and "changed in Target since" in r.stdout, r.stdout


def test_unknown_and_odd_answers(case):
    """A profile Target does not have is missing; an answer that is not the
    documented JSON is an error for that profile only; a 500 is asked again."""
    d = case.daemon(sections_extra=VERIFY).start()
    drop(case, "a.csv", [["c1", "gold", "Delft"], ["c2", "silver", "Utrecht"], ["c3", "bronze", "Ede"]])
    wait_for(lambda: len(case.target.profiles()) == 3, 20, "delivery")
    settled(case, d)
    case.target.fault("fetch_garbage", 1)
    case.target.fault("fetch_500", 1)
    code, r = ctl(d, "verify", "--no-repair", "c1", "c2", "c3", "nobody")
    res = {x["profile"]: x["result"] for x in r["results"]}
    assert res["nobody"] == "skipped", res  # never staged: nothing to compare
    assert sorted(res.values()).count("error") == 1, res
    assert sorted(res.values()).count("matched") == 2, res
    assert code == 0 and r["errors"] == 1, (code, r)
    # A profile lost at Target altogether is missing, and with --no-repair stays so.
    case.target.configure(loss_rate=1.0)
    drop(case, "b.csv", [["c9", "gold", "Delft"]])
    wait_for(lambda: d.sql("SELECT count(*) FROM batches WHERE state = 'complete'")[0][0] >= 2, 20, "c9's batch")
    settled(case, d)
    code, r = ctl(d, "verify", "--no-repair", "c9")
    assert code == 1 and r["results"][0]["result"] in ("missing", "differed"), r
    assert d.status()["queue"]["pending_profiles"] == 0


def test_verify_all_interrupted_resumes(case):
    """SIGKILL in the middle of verify --all: the run goes on after the restart,
    and every profile is checked once."""
    d = case.daemon(sections_extra=VERIFY).start()
    drop(case, "a.csv", [[f"p{i:03d}", "gold", "x"] for i in range(120)])
    wait_for(lambda: len(case.target.profiles()) == 120, 20, "delivery")
    settled(case, d)
    case.target.configure(fetch_delay_ms=40)  # 4 at a time: about 1.2 s for all
    code, _ = ctl(d, "verify", "--all", "--background")
    assert code == 0
    wait_for(lambda: d.status()["verify"]["runs"] and d.status()["verify"]["runs"][0]["checked"] >= 20, 30,
             "the run under way", interval=0.01)
    d.kill()
    at_kill = d.sql("SELECT checked FROM verify_runs")[0][0]
    assert at_kill < 120, at_kill  # cut short, or the test proves nothing
    d.start()
    def done():
        runs = d.status()["verify"]["runs"]
        return runs and runs[0]["state"] == "done" and runs[0]
    r = wait_for(done, 60, "the resumed run to end", interval=0.3)
    assert r["checked"] == 120 and r["matched"] == 120, r
    assert d.sql("SELECT count(*) FROM verifications WHERE result = 'matched'") == [(120,)]
    assert 'msg="verification resumed" run=1' in d.log_text()


def test_verify_while_paused_and_sigterm(case):
    """Paused, a verification still reports and queues its repairs, and the
    sending waits for resume; a run stopped by SIGTERM goes on after the
    restart like one cut short by SIGKILL."""
    case.target.configure(loss_rate=1.0)
    d = case.daemon(sections_extra=VERIFY).start()
    drop(case, "a.csv", [["c1", "gold", "Delft"]])
    wait_for(lambda: d.sql("SELECT count(*) FROM batches WHERE state = 'complete'") == [(1,)], 20, "a.csv's batch")
    settled(case, d)
    assert not case.target.profiles().get("c1")  # its values lost after success=true
    case.target.configure(loss_rate=0.0)
    d.ctl("pause")
    code, r = ctl(d, "verify", "c1")
    assert code == 1 and r["repaired"] == 1, (code, r)
    assert d.status()["queue"]["pending_profiles"] == 1
    time.sleep(1)
    assert not case.target.profiles().get("c1"), "sent while paused"
    d.ctl("resume")
    wait_for(lambda: case.target.profiles().get("c1") == {"tier": "gold", "city": "Delft"}, 20, "the repair")
    settled(case, d)
    # SIGTERM in the middle of --all: resumed at the next start, each profile once.
    drop(case, "b.csv", [[f"p{i:03d}", "gold", "x"] for i in range(120)])
    wait_for(lambda: len(case.target.profiles()) == 121, 20, "b.csv")
    settled(case, d)
    case.target.configure(fetch_delay_ms=40)
    assert ctl(d, "verify", "--all", "--background")[0] == 0
    wait_for(lambda: d.status()["verify"]["runs"] and d.status()["verify"]["runs"][0]["checked"] >= 20, 30,
             "the run under way", interval=0.01)
    d.stop()
    at_stop = d.sql("SELECT checked FROM verify_runs WHERE kind = 'all'")[0][0]
    assert at_stop < 121, at_stop
    d.start()
    def done():
        runs = [x for x in d.status()["verify"]["runs"] if x["kind"] == "all"]
        return runs and runs[0]["state"] == "done" and runs[0]
    r = wait_for(done, 60, "the resumed run to end", interval=0.3)
    assert r["checked"] == 121 and r["matched"] == 121, r


def test_canary(case):
    """The canary passes against the documented decoding (rows and cells split,
    then each cell decoded) and names the classes that break under the other
    reading (the whole field decoded first)."""
    d = case.daemon(sections_extra=VERIFY).start()
    code, r = ctl(d, "canary")
    assert code == 0, (code, r)
    assert all(x["ok"] for x in r["results"]) and len(r["results"]) == 10, r["results"]
    case.target.configure(decode="decode_first")
    code, r = ctl(d, "canary")
    assert code == 1, (code, r)
    broken = sorted(x["class"] for x in r["results"] if not x["ok"])
    assert broken == ["comma", "newline"], r["results"]
    text = subprocess.run([TPSYNCCTL, "-s", d.socket, "help", "canary"], capture_output=True, text=True).stdout
    assert "character class" in text


def test_trace(case):
    """A profile that went through two files and a per-row failure: trace shows
    each change's file, line and batch, the failed row, and the verification."""
    d = case.daemon(sections_extra=VERIFY).start()
    drop(case, "a.csv", [["c0", "x", "y"], ["c1", "gold", "Delft"]])
    wait_for(lambda: "c1" in case.target.profiles(), 20, "a.csv")
    settled(case, d)
    case.target.configure(row_failure_rate=1.0)
    drop(case, "b.csv", [["c1", "silver", "Delft"]])
    wait_for(lambda: d.sql("SELECT count(*) FROM row_results WHERE profile = 'c1'") == [(1,)], 20,
             "the failed row")
    case.target.configure(row_failure_rate=0.0)
    wait_for(lambda: case.target.profiles().get("c1", {}).get("tier") == "silver", 30, "c1 sent again")
    settled(case, d)
    ctl(d, "verify", "c1")
    t = d.ctl("trace", "c1")
    assert t["accepted"] == {"tier": "silver", "city": "Delft"}, t
    assert t["pending"] == {} and t["in_flight"] == {}
    files = [(e["file"]["name"], e["line"], e["attrs"]) for e in t["history"] if "file" in e]
    assert files == [("a.csv", 3, ["tier", "city"]), ("b.csv", 2, ["tier"])], t["history"]
    rows = [e["batch"]["row"] for e in t["history"] if "batch" in e]
    assert rows[0] == "not reported failed" and rows[1] == "failed", t["history"]
    assert all(e["batch"]["target_batch_id"] for e in t["history"] if "batch" in e)
    assert t["last_verification"]["result"] == "matched"
    r = subprocess.run([TPSYNCCTL, "-s", d.socket, "trace", "c1"], capture_output=True, text=True)
    assert r.returncode == 0 and "b.csv line 2" in r.stdout and "row: failed" in r.stdout, r.stdout
    r = subprocess.run([TPSYNCCTL, "-s", d.socket, "trace", "nobody"], capture_output=True, text=True)
    assert r.returncode == 1 and "unknown profile" in r.stderr


def test_what_is_not_judged(case):
    """Values accepted less than verify.min_age ago, and profiles with newer
    values pending, are skipped and say why; nothing is fetched for them."""
    d = case.daemon(sections_extra="verify:\n  min_age: 1h\n  calls_per_minute: 6000\n").start()
    drop(case, "a.csv", [["c1", "gold", "Delft"], ["c2", "silver", "Utrecht"]])
    wait_for(lambda: len(case.target.profiles()) == 2, 20, "delivery")
    settled(case, d)
    fetches = case.target.state().get("fetches", 0)
    code, r = ctl(d, "verify", "c1")
    assert code == 0 and r["skipped"] == 1 and r["checked"] == 0, r
    assert "min_age" in r["results"][0]["detail"]["why"], r["results"]
    assert case.target.state().get("fetches", 0) == fetches
    d.stop()
    d2 = case.daemon(sections_extra=VERIFY)
    d2.start()
    d2.ctl("pause")
    drop(case, "b.csv", [["c2", "bronze", "Utrecht"]])
    wait_for(lambda: d2.status()["queue"]["pending_profiles"] == 1, 20, "b.csv staged")
    code, r = ctl(d2, "verify", "c1", "c2")
    res = {x["profile"]: x for x in r["results"]}
    assert res["c1"]["result"] == "matched" and res["c2"]["result"] == "skipped", res
    assert "pending" in res["c2"]["detail"]["why"], res["c2"]
    assert code == 0, (code, r)


def test_sample_stop_and_steady(case):
    """--sample N checks N profiles; --stop ends a background --all; the steady
    sample (verify.sample_per_hour) walks on by itself and shows in status and
    metrics."""
    d = case.daemon(sections_extra=VERIFY).start()
    drop(case, "a.csv", [[f"p{i:03d}", "gold", "x"] for i in range(60)])
    wait_for(lambda: len(case.target.profiles()) == 60, 20, "delivery")
    settled(case, d)
    code, r = ctl(d, "verify", "--sample", "7")
    assert code == 0 and r["checked"] == 7 and r["matched"] == 7, r
    case.target.configure(fetch_delay_ms=200)
    code, _ = ctl(d, "verify", "--all", "--background")
    assert code == 0
    wait_for(lambda: d.status()["verify"]["runs"][0]["checked"] >= 1, 30, "the run under way", interval=0.05)
    code, _ = ctl(d, "verify", "--stop")
    assert code == 0
    run_ = wait_for(lambda: d.status()["verify"]["runs"][0]["state"] == "stopped" and d.status()["verify"]["runs"][0],
                    10, "the run to stop")
    assert run_["checked"] < 60, run_
    d.stop()
    case.target.configure(fetch_delay_ms=0)
    d = case.daemon(sections_extra=VERIFY.replace("verify:\n", "verify:\n  sample_per_hour: 36000\n")).start()
    def steady():
        runs = [x for x in d.status()["verify"]["runs"] if x["kind"] == "steady"]
        return runs and runs[0]["checked"] >= 15 and runs[0]
    r = wait_for(steady, 30, "the steady sample")
    assert r["matched"] == r["checked"], r
    m = [line for line in d.ctl("metrics")["text"].splitlines()
         if line.startswith('tpsync_verify_profiles_total{result="matched"} ')]
    assert m and int(m[0].split()[1]) >= 15, m


def test_token_refused_and_target_unreachable(case):
    """A 401 from the fetch API waits for the token like delivery does, then
    goes on; with Target down, verify says so and exits 2."""
    d = case.daemon(sections_extra=VERIFY, retry_max="300ms").start()
    drop(case, "a.csv", [["c1", "gold", "Delft"]])
    wait_for(lambda: len(case.target.profiles()) == 1, 20, "delivery")
    settled(case, d)
    case.target.fault("fetch_401", 2)
    code, r = ctl(d, "verify", "c1")
    assert code == 0 and r["matched"] == 1, (code, r)
    assert "the fetch API refused the token" in d.log_text()
    case.target.stop()
    r = subprocess.run([TPSYNCCTL, "-s", d.socket, "verify", "c1"], capture_output=True, text=True, timeout=120)
    assert r.returncode == 2, (r.returncode, r.stdout, r.stderr)


if __name__ == "__main__":
    run([test_verify_all_finds_and_repairs_silent_loss, test_changed_in_target_left_alone, test_unknown_and_odd_answers,
         test_verify_all_interrupted_resumes, test_verify_while_paused_and_sigterm, test_canary, test_trace,
         test_what_is_not_judged,
         test_sample_stop_and_steady, test_token_refused_and_target_unreachable])
