# SPDX-License-Identifier: MIT
"""Operations: every tpsyncctl command against a running daemon, socket
permissions and peer credentials, reload with good and bad configs, SIGTERM
during ingestion and during sending, logs and metrics."""
import grp
import os
import re
import signal
import stat
import subprocess
import time

from harness import TPSYNCCTL, csv_text, run, spool_source, wait_for, write_atomic


def drop(case, name, rows, header=("customer_id", "tier")):
    write_atomic(os.path.join(case.spool, name), csv_text(list(header), rows))


def test_commands(case):
    d = case.daemon(linger="30s").start()
    drop(case, "a.csv", [["c1", "gold"]])
    wait_for(lambda: d.status()["queue"]["pending_profiles"] == 1, 20, "staging")
    # linger holds it; flush sends now.
    assert case.target.profiles() == {}
    assert d.ctl("flush") == {}
    wait_for(lambda: case.target.profiles() == {"c1": {"tier": "gold"}}, 10, "flush")
    # pause holds submissions and says so; resume releases.
    assert d.ctl("pause") == {}
    assert d.status()["delivery"]["state"] == "paused"
    drop(case, "b.csv", [["c2", "silver"]])
    wait_for(lambda: d.status()["queue"]["pending_profiles"] == 1, 20, "staging while paused")
    d.ctl("flush")
    time.sleep(0.3)
    assert "c2" not in case.target.profiles()
    out = d.ctl("status", as_json=False).stdout
    assert "paused" in out, out
    d.ctl("resume")
    d.ctl("flush")
    wait_for(lambda: "c2" in case.target.profiles(), 10, "resume")
    b = d.ctl("batches", "--limit", "1")["batches"]
    assert len(b) == 1 and b[0]["rows"] == 1
    assert "STATE" in d.ctl("batches", as_json=False).stdout
    assert d.ctl("dead")["total"] == 0
    assert d.ctl("retry-dead", "--all")["requeued"] == 0
    assert d.ctl("rescan")["sources_scanned"] == 1
    assert d.ctl("rescan", "crm")["sources_scanned"] == 1
    r = d.ctl("rescan", "nope", check=False)
    assert r.returncode == 1 and 'no source named "nope"' in r.stderr, r.stderr
    assert d.ctl("reload") == {}
    src = d.ctl("sources")["sources"][0]
    assert src["name"] == "crm" and src["files"] == 2
    assert "crm" in d.ctl("sources", as_json=False).stdout
    r = subprocess.run([TPSYNCCTL, "-s", d.socket, "retry-dead"], capture_output=True, text=True)
    assert r.returncode == 64 and "--all" in r.stderr
    r = subprocess.run([TPSYNCCTL, "help", "batches"], capture_output=True, text=True)
    assert r.returncode == 0 and "--limit N" in r.stdout and "profilesNotFound" in r.stdout, r.stdout


def test_metrics(case):
    d = case.daemon().start()
    drop(case, "a.csv", [["c1", "gold"], ["bad+", "x"]])
    wait_for(lambda: case.target.profiles().get("c1"), 20, "delivery")
    d.wait_idle()
    text = d.ctl("metrics", as_json=False).stdout
    want = ["tpsync_queue_pending_profiles 0", 'tpsync_batches{state="complete"} 1',
            'tpsync_rows_total{source="crm",outcome="read"} 2', 'tpsync_rows_total{source="crm",outcome="rejected"} 1',
            "tpsync_rows_sent_total 1", "tpsync_dead_letters 0", 'tpsync_request_duration_seconds_bucket{le="+Inf"}',
            "tpsync_last_success_timestamp_seconds"]
    for w in want:
        assert w in text, (w, text)
    # Well-formed exposition: every sample line is NAME{labels} VALUE.
    for line in text.splitlines():
        if not line.startswith("#"):
            assert re.match(r'^[a-z_]+(\{[^}]*\})? [0-9.e+-]+$', line), line


def test_socket_permissions_and_peer_credentials(case):
    nogroup = grp.getgrnam("nogroup").gr_gid
    os.chmod(case.dir, 0o711)
    d = case.daemon(linger="30s").start()
    # Default: the daemon's own group; mode 0660.
    assert stat.S_IMODE(os.stat(d.socket).st_mode) == 0o660
    d.stop()
    with open(d.config) as f:
        cfg = f.read()
    with open(d.config, "w") as f:
        f.write(cfg.replace("  socket:", "  group: nogroup\n  socket:", 1))
    d.start()
    st = os.stat(d.socket)
    assert stat.S_IMODE(st.st_mode) == 0o660 and st.st_gid == nogroup

    def as_user(gid, *args):
        return subprocess.run(["setpriv", "--reuid=65534", f"--regid={gid}", "--clear-groups",
                               TPSYNCCTL, "-s", d.socket, *args], capture_output=True, text=True)
    # A member of the socket's group may read ...
    r = as_user(nogroup, "status", "--json")
    assert r.returncode == 0, r.stderr
    # ... but not steer the daemon.
    for cmd in (["pause"], ["reload"], ["retry-dead", "--all"], ["flush"], ["rescan"], ["resume"]):
        r = as_user(nogroup, *cmd)
        assert r.returncode == 1 and "permission denied" in r.stderr, (cmd, r.returncode, r.stderr)
    assert d.status()["delivery"]["state"] == "running"
    assert "control command refused" in d.log_text()
    # Someone outside the group cannot connect at all.
    r = as_user(54321, "status")
    assert r.returncode == 2 and d.socket in r.stderr, (r.returncode, r.stderr)
    # control.mutating: group lets the group steer.
    d.stop()
    with open(d.config, "w") as f:
        f.write(cfg.replace("  socket:", "  group: nogroup\n  mutating: group\n  socket:", 1))
    d.start()
    r = as_user(nogroup, "pause")
    assert r.returncode == 0, r.stderr
    assert d.status()["delivery"]["state"] == "paused"


def test_malformed_and_oversized_requests(case):
    import socket as sk
    d = case.daemon().start()

    def talk(payload, lines=1):
        """Sends payload; returns the answer once it has `lines` lines or the
        daemon closed the connection."""
        s = sk.socket(sk.AF_UNIX, sk.SOCK_STREAM)
        s.settimeout(5)
        s.connect(d.socket)
        s.sendall(payload)
        data = b""
        while data.count(b"\n") < lines:
            chunk = s.recv(65536)
            if not chunk:
                break
            data += chunk
        s.close()
        return data
    assert b'"ok":false' in talk(b"this is not json\n")
    assert b"too long" in talk(b"{" + b" " * 70000)
    two = talk(b'{"v":1,"cmd":"explode"}\n' + b'{"v":1,"cmd":"status"}\n', lines=2).split(b"\n")
    assert b"unknown command" in two[0] and b'"ok":true' in two[1], two
    assert b"protocol version" in talk(b'{"v":99,"cmd":"status"}\n')
    # A slow client holding a half-written line does not stall others.
    slow = sk.socket(sk.AF_UNIX, sk.SOCK_STREAM)
    slow.connect(d.socket)
    slow.sendall(b'{"v":1,"cmd":')
    for _ in range(20):
        assert d.status()["delivery"]["state"] == "running"
    slow.close()


def test_reload(case):
    other = os.path.join(case.dir, "other")
    os.makedirs(other)
    d = case.daemon().start()
    drop(case, "a.csv", [["c1", "gold"]])
    wait_for(lambda: case.target.profiles().get("c1"), 20, "delivery")
    with open(d.config) as f:
        good = f.read()
    # A good config adds a source, taking effect without a restart.
    with open(d.config, "w") as f:
        f.write(good + spool_source("other", other, id_column="member"))
    d.proc.send_signal(signal.SIGHUP)
    wait_for(lambda: len(d.status()["sources"]) == 2, 10, "the new source")
    write_atomic(os.path.join(other, "m.csv"), "member,level\nm1,3\n")
    wait_for(lambda: case.target.profiles().get("m1") == {"level": "3"}, 20, "delivery from the new source")
    assert d.status()["sources"][0]["files"] == 1  # counters carried over
    # A bad config is refused; the running one stays and keeps working.
    with open(d.config, "w") as f:
        f.write(good.replace("linger:", "lingr:"))
    d.proc.send_signal(signal.SIGHUP)
    s = wait_for(lambda: d.status()["last_error"] and d.status(), 10, "the reload error")
    assert "lingr" in s["last_error"] and len(s["sources"]) == 2, s["last_error"]
    r = d.ctl("reload", check=False)
    assert r.returncode == 1 and "lingr" in r.stderr
    write_atomic(os.path.join(other, "n.csv"), "member,level\nm2,4\n")
    wait_for(lambda: case.target.profiles().get("m2") == {"level": "4"}, 20, "still delivering")
    assert "reload rejected" in d.log_text()


def test_sigterm_during_ingest_loses_nothing(case):
    n = 120000
    rows = [[f"s{i:06d}", f"t{i % 9}"] for i in range(n)]
    d = case.daemon(linger="10s").start()
    d.ctl("pause")
    drop(case, "big.csv", rows)
    wait_for(lambda: (d.ctl("sources")["sources"][0].get("ingesting") or {}).get("rows", 0) > 0, 30,
             "ingestion under way", interval=0.01)
    t = time.monotonic()
    assert d.stop() == 0
    assert time.monotonic() - t < 5
    assert d.sql("SELECT state FROM ingested_files") == [("staging",)]
    d.start()
    d.ctl("flush")
    want = {r[0]: {"tier": r[1]} for r in rows}
    wait_for(lambda: case.target.profiles() == want, 120, "everything delivered", interval=0.5)
    assert d.sql("SELECT rows, staged FROM ingested_files") == [(n, n)]


def test_sigterm_during_sending_waits_for_answer(case):
    d = case.daemon(timeout="5s").start()
    case.target.fault("slow", delay_ms=1500)
    drop(case, "a.csv", [["c1", "gold"]])
    wait_for(lambda: case.target.requests(), 10, "the request")
    t = time.monotonic()
    assert d.stop() == 0
    waited = time.monotonic() - t
    assert 0.8 < waited < 5, waited
    # It was answered before exit: recorded as submitted, not re-sent at restart.
    assert d.sql("SELECT state FROM batches") in ([("submitted",)], [("complete",)])
    d.start()
    d.wait_idle()
    assert len(case.target.requests()) == 1
    assert case.target.profiles() == {"c1": {"tier": "gold"}}


def test_logs(case):
    d = case.daemon()
    d.start("--log-level", "warn")
    drop(case, "a.csv", [["c1", "gold"]])
    wait_for(lambda: case.target.profiles().get("c1"), 20, "delivery")
    d.stop()
    text = d.log_text()
    assert "level=info" not in text and "level=debug" not in text
    # Under journald (JOURNAL_STREAM names stderr) lines carry <N> priorities.
    st = os.stat(d.log_path)
    d.start("--log-level", "info", env={"JOURNAL_STREAM": f"{st.st_dev}:{st.st_ino}"})
    d.stop()
    lines = [x for x in d.log_text().splitlines() if x.startswith("<")]
    assert any(x.startswith("<6>level=info msg=\"tpsyncd started\"") for x in lines), lines[:5]
    for line in d.log_text().splitlines():
        assert "level=" in line and "msg=" in line, line


def v1_blob(values):
    """A schema 2 (format 1) attribute blob: varint id, varint length, bytes."""
    def varint(v):
        out = bytearray()
        while True:
            out.append((v & 0x7F) | (0x80 if v > 0x7F else 0))
            v >>= 7
            if not v:
                return bytes(out)
    blob = b""
    for attr_id, value in sorted(values.items()):
        raw = value.encode()
        blob += varint(attr_id) + varint(len(raw)) + raw
    return blob


def test_upgrade_from_schema_2(case):
    """A state database written by an older tpsyncd (schema 2, attribute blobs in
    format 1) is migrated at start: systemd hears that start-up is going on
    before READY=1, the pending change is delivered, and the mirror still knows
    what Target accepted."""
    import socket
    import sqlite3
    schema = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "schema")
    d = case.daemon()
    con = sqlite3.connect(d.db)
    for name in ("001_init.sql", "002_source_state.sql"):
        with open(os.path.join(schema, name)) as f:
            con.executescript(f.read())
    con.execute("PRAGMA user_version = 2")
    con.execute("INSERT INTO attr_names (id, name) VALUES (1, 'tier'), (2, 'city')")
    con.execute("INSERT INTO profiles (id, accepted) VALUES ('c1', ?)", (v1_blob({1: "gold", 2: "Utrecht"}),))
    con.execute("INSERT INTO profiles (id, accepted, pending, pending_seq, pending_since, source)"
                " VALUES ('c2', ?, ?, 1, ?, 'crm')",
                (v1_blob({1: "silver"}), v1_blob({1: "50% off & more"}), int(time.time() * 1000)))
    con.commit()
    con.close()

    sock_path = os.path.join(case.dir, "notify.sock")
    notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    notify.bind(sock_path)
    notify.settimeout(15)
    case.cleanups.append(notify.close)
    d.start(env={"NOTIFY_SOCKET": sock_path})
    messages = []
    while not any("READY=1" in m for m in messages):
        messages.append(notify.recv(4096).decode())
    first = messages[0]
    latest = max(int(n[:3]) for n in os.listdir(schema) if re.match(r"\d{3}_.*\.sql$", n))
    assert "EXTEND_TIMEOUT_USEC=" in first and \
        f"migrating the state database from schema 2 to {latest}" in first, messages
    assert f'msg="migrating the state database" from=2 to={latest}' in d.log_text()
    assert d.sql("PRAGMA user_version")[0][0] == latest

    wait_for(lambda: case.target.profiles().get("c2") == {"tier": "50% off & more"}, 20, "the pending change")
    d.wait_idle()
    # c1 unchanged against its migrated mirror: nothing to send.
    drop(case, "a.csv", [["c1", "gold", "Utrecht"]], header=("customer_id", "tier", "city"))
    wait_for(lambda: d.ctl("sources")["sources"][0]["files"] == 1, 20, "a.csv")
    d.wait_idle()
    assert "c1" not in case.target.profiles()
    # One value changed: the whole profile goes, the other value from the mirror.
    drop(case, "b.csv", [["c1", "gold", "Rotterdam"]], header=("customer_id", "tier", "city"))
    wait_for(lambda: case.target.profiles().get("c1") == {"tier": "gold", "city": "Rotterdam"}, 20, "c1")


if __name__ == "__main__":
    run([test_commands, test_metrics, test_socket_permissions_and_peer_credentials,
         test_malformed_and_oversized_requests, test_reload, test_sigterm_during_ingest_loses_nothing,
         test_sigterm_during_sending_waits_for_answer, test_logs, test_upgrade_from_schema_2])
