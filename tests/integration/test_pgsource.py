# SPDX-License-Identifier: MIT
"""PostgreSQL sources (type: postgres) against a real server the test starts:
LISTEN/NOTIFY wake-up, the type mapping, ties on the cursor, a rescan, bad rows,
a server restart mid-run, a crash between staging and the cursor commit, an
unreachable server (backoff, no busy loop), the password never leaking, and
config errors."""
import os
import signal
import subprocess
import time

from harness import TPSYNCD, cpu_seconds, run, wait_for
from pgserver import PgServer

PASSWORD = "s3cret-Pg-pass"
QUERY = ("SELECT id, tier, points, balance, ratio, vip, born, seen_at, local_at, note, photo, updated_at"
         " FROM customers WHERE updated_at >= :cursor")

SCHEMA = f"""
CREATE ROLE crm_reader LOGIN PASSWORD '{PASSWORD}';
CREATE TABLE customers (
  id text PRIMARY KEY, tier text, points integer, balance numeric, ratio double precision, vip boolean,
  born date, seen_at timestamptz, local_at timestamp, note text, photo bytea,
  updated_at timestamptz NOT NULL DEFAULT clock_timestamp());
CREATE INDEX customers_cursor ON customers (updated_at, id);
GRANT SELECT ON customers TO crm_reader;
CREATE FUNCTION customers_touch() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN NEW.updated_at := clock_timestamp(); RETURN NEW; END $$;
CREATE TRIGGER customers_touch BEFORE UPDATE ON customers FOR EACH ROW
  WHEN (NEW.updated_at IS NOT DISTINCT FROM OLD.updated_at) EXECUTE FUNCTION customers_touch();
CREATE FUNCTION customers_notify() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN PERFORM pg_notify('customers_changed', ''); RETURN NULL; END $$;
CREATE TRIGGER customers_notify AFTER INSERT OR UPDATE ON customers
  FOR EACH STATEMENT EXECUTE FUNCTION customers_notify();
"""


def start_pg(case, schema=SCHEMA):
    pg = PgServer()
    case.cleanups.append(pg.close)
    pg.psql("CREATE DATABASE crm", db="postgres")
    pg.psql(schema)
    pw = os.path.join(case.dir, "pg-password")
    with open(pw, "w") as f:
        f.write(PASSWORD + "\n")
    return pg, pw


def source(pg, pw, listen="customers_changed", poll="60s", query=QUERY):
    return (f"  - name: crm\n    type: postgres\n    dsn: \"{pg.dsn()}\"\n    password_file: {pw}\n"
            f"    query: \"{query}\"\n    id_column: id\n    cursor_column: updated_at\n"
            f"    exclude: [updated_at]\n    columns: {{tier: loyaltyTier}}\n    poll: {poll}\n"
            + (f"    listen: {listen}\n" if listen else ""))


def sent_ids(case):
    """How many times each profile id was sent to the fake Target."""
    counts = {}
    for r in case.target.requests():
        for i in r.get("ids", []):
            counts[i] = counts.get(i, 0) + 1
    return counts


def test_pg_listen_types_ties_rescan(case):
    pg, pw = start_pg(case)
    pg.psql("INSERT INTO customers (id, tier, points, balance, ratio, vip, born, seen_at, local_at, note) VALUES"
            " ('c1', 'gold', 42, 10.50, 0.1, true, '1980-02-29', '2026-11-29 01:02:03.5+01',"
            "  '2026-11-29 01:02:03', 'Zürich €'),"
            " ('c2', 'silver', -7, -0.001, 2.5e-9, false, NULL, NULL, NULL, '')")
    d = case.daemon(source(pg, pw)).start()
    want = {"c1": {"loyaltyTier": "gold", "points": "42", "balance": "10.50", "ratio": "0.1", "vip": "true",
                   "born": "1980-02-29", "seen_at": "2026-11-29T00:02:03.5Z", "local_at": "2026-11-29T01:02:03",
                   "note": "Zürich €"},
            "c2": {"loyaltyTier": "silver", "points": "-7", "balance": "-0.001", "ratio": "2.5e-09",
                   "vip": "false"}}
    wait_for(lambda: case.target.profiles(), 20, "the table's rows")
    assert case.target.profiles() == want, case.target.profiles()
    # An update wakes the source through NOTIFY at once; the poll is a minute away.
    times = []
    for i in range(5):
        t = time.monotonic()
        pg.psql(f"UPDATE customers SET points = {100 + i} WHERE id = 'c1'")
        wait_for(lambda: case.target.profiles()["c1"]["points"] == str(100 + i), 10, "the update")
        times.append(time.monotonic() - t)
    print(f"    update visible at Target after {min(times):.2f}s .. {max(times):.2f}s (LISTEN, linger 50ms)")
    assert max(times) < 3, times
    # Ties on the cursor: a row with the cursor value already read, committed later.
    last = pg.psql("SELECT updated_at FROM customers WHERE id = 'c1'")[0][0]
    pg.psql(f"INSERT INTO customers (id, tier, updated_at) VALUES ('c3', 'bronze', '{last}')")
    wait_for(lambda: case.target.profiles().get("c3") == {"loyaltyTier": "bronze"}, 10, "the tie")
    d.wait_idle()
    assert all(n == 1 for i, n in sent_ids(case).items() if i != "c1"), sent_ids(case)
    subs = case.target.state()["submissions"]
    # A rescan re-reads everything and diffs it: nothing changed, nothing sent.
    read = d.ctl("sources")["sources"][0]["rows_read"]
    d.ctl("rescan", "crm")
    wait_for(lambda: d.ctl("sources")["sources"][0]["rows_read"] >= read + 3, 10, "the rescan")
    d.wait_idle()
    assert case.target.state()["submissions"] == subs
    # Bad values reject their row only, with the reason shown.
    pg.psql("INSERT INTO customers (id, tier, photo) VALUES ('c4', 'gold', '\\x00ff');"
            "INSERT INTO customers (id, tier, balance) VALUES ('c5', 'gold', 'NaN');"
            "INSERT INTO customers (id, tier) VALUES ('bad/id', 'gold'), ('c6', 'gold')")
    wait_for(lambda: "c6" in case.target.profiles(), 10, "rows after bad ones")
    src = d.ctl("sources")["sources"][0]
    assert src["rows_rejected"] == 3 and src["type"] == "postgres", src
    assert src["last_file"].startswith("updated_at=") and src["last_file"].endswith(" id=c6"), src
    assert not {"c4", "c5", "bad/id"} & set(case.target.profiles())
    log = d.log_text()
    assert "bytea" in log and "not finite" in log and "'+' or '/'" in log
    assert PASSWORD not in log and PASSWORD not in str(d.ctl("sources"))
    # A row committed with a cursor value below the position (a long transaction
    # that stamped it early) is past the position; a rescan picks it up.
    pg.psql("INSERT INTO customers (id, tier, updated_at) VALUES ('late', 'gold', '2000-01-01')")
    pg.psql("UPDATE customers SET tier = 'silver' WHERE id = 'c6'")
    wait_for(lambda: case.target.profiles()["c6"] == {"loyaltyTier": "silver"}, 10, "the update after")
    assert "late" not in case.target.profiles()
    d.ctl("rescan", "crm")
    wait_for(lambda: case.target.profiles().get("late") == {"loyaltyTier": "gold"}, 10, "the late row")


def test_pg_poll_without_listen(case):
    """Without listen, a change arrives within one poll interval."""
    pg, pw = start_pg(case)
    pg.psql("INSERT INTO customers (id, tier) VALUES ('p1', 'gold')")
    d = case.daemon(source(pg, pw, listen=None, poll="1s")).start()
    wait_for(lambda: "p1" in case.target.profiles(), 20, "the first row")
    t = time.monotonic()
    pg.psql("UPDATE customers SET tier = 'silver' WHERE id = 'p1'")
    wait_for(lambda: case.target.profiles()["p1"] == {"loyaltyTier": "silver"}, 10, "the update")
    took = time.monotonic() - t
    print(f"    update visible at Target after {took:.2f}s (poll 1s, no LISTEN)")
    assert took < 3


def test_pg_server_restart(case):
    """The server restarts mid-run: the source reconnects with backoff and reads
    what changed; nothing is lost or staged twice."""
    pg, pw = start_pg(case)
    pg.psql("INSERT INTO customers (id, tier) SELECT 'r' || g, 'gold' FROM generate_series(1, 50) g")
    d = case.daemon(source(pg, pw)).start()
    wait_for(lambda: len(case.target.profiles()) == 50, 20, "the first rows")
    pg.stop("fast")
    wait_for(lambda: "unavailable" in d.log_text(), 10, "the source to notice")
    time.sleep(3)
    attempts = d.log_text().count("database source unavailable")
    assert 1 <= attempts <= 4, f"{attempts} reconnection attempts in ~3 s: not backing off"
    assert d.status()["delivery"]["state"] == "running"
    err = d.ctl("sources")["sources"][0]["last_error"]
    assert err, "the source's error is shown"
    pg.start()
    pg.psql("UPDATE customers SET tier = 'platinum' WHERE id IN ('r1', 'r2');"
            "INSERT INTO customers (id, tier) VALUES ('r51', 'silver')")
    wait_for(lambda: case.target.profiles().get("r51") == {"loyaltyTier": "silver"}, 90, "rows after the restart")
    wait_for(lambda: case.target.profiles()["r1"]["loyaltyTier"] == "platinum", 10, "updates after the restart")
    d.wait_idle()
    assert d.ctl("sources")["sources"][0]["last_error"] is None
    counts = sent_ids(case)
    assert counts["r1"] == 2 and counts["r3"] == 1 and counts["r51"] == 1, counts
    assert case.target.state()["violations"] == []


def test_pg_crash_before_cursor_commit(case):
    """SIGKILL after a slice is staged but before it commits with its cursor: the
    slice is read again after the restart, every row is queued exactly once."""
    pg, pw = start_pg(case)
    pg.psql("INSERT INTO customers (id, tier, points, updated_at) SELECT 'b' || lpad(g::text, 5, '0'),"
            " 't' || (g % 5), g, '2026-01-01'::timestamptz + (g / 7) * interval '1 second'"
            " FROM generate_series(0, 29999) g")  # many ties on the cursor
    d = case.daemon(source(pg, pw), linger="10s")
    d.start(wait_ready=False, env={"TPSYNC_CRASH_POINT": "before-db-commit", "TPSYNC_CRASH_AFTER": "3"})
    wait_for(lambda: d.proc.poll() is not None, 30, "the crash")
    assert d.proc.returncode == -signal.SIGKILL
    d.log.close()
    assert d.sql("SELECT count(*) FROM profiles") == [(4000,)]  # two committed slices of 2,000
    cursor = d.sql("SELECT last_id FROM source_state WHERE source = 'crm'")
    assert cursor == [("b03999",)], cursor
    d.start()
    wait_for(lambda: d.sql("SELECT count(*) FROM profiles") == [(30000,)], 60, "the rest of the table")
    d.ctl("flush")
    want = {f"b{i:05d}": {"loyaltyTier": f"t{i % 5}", "points": str(i)} for i in range(30000)}
    wait_for(lambda: case.target.profiles() == want, 60, "delivery", interval=0.5)
    d.wait_idle()
    counts = sent_ids(case)
    assert len(counts) == 30000 and set(counts.values()) == {1}, "a row was queued twice"
    assert case.target.state()["violations"] == []


def test_pg_unreachable_and_bad_password(case):
    """No server: the daemon runs, shows the error and retries with backoff using
    no CPU to speak of. A wrong password is reported without leaking it."""
    pg, pw = start_pg(case)
    with open(pw, "w") as f:
        f.write("wrong-" + PASSWORD)
    d = case.daemon(source(pg, pw)).start()
    wait_for(lambda: "password authentication failed" in (d.ctl("sources")["sources"][0]["last_error"] or ""),
             10, "the auth error")
    d.stop()
    assert PASSWORD not in d.log_text()
    # Without password_file, the systemd credential NAME-password is used.
    creds = os.path.join(case.dir, "credentials")
    os.makedirs(creds)
    with open(os.path.join(creds, "crm-password"), "w") as f:
        f.write(PASSWORD + "\n")
    d = case.daemon(source(pg, pw).replace(f"    password_file: {pw}\n", ""))
    d.start(env={"CREDENTIALS_DIRECTORY": creds})
    pg.psql("INSERT INTO customers (id, tier) VALUES ('k1', 'gold')")
    wait_for(lambda: "k1" in case.target.profiles(), 20, "a row read with the credential's password")
    d.stop()
    pg.stop("fast")
    with open(pw, "w") as f:
        f.write(PASSWORD)
    d = case.daemon(source(pg, pw)).start()
    t0 = time.monotonic()
    wait_for(lambda: d.ctl("sources")["sources"][0]["last_error"], 10, "the connection error")
    time.sleep(4)
    cpu = cpu_seconds(d.proc.pid)
    attempts = d.log_text().count("database source unavailable")
    print(f"    {attempts} connection attempts and {cpu:.2f}s CPU in {time.monotonic() - t0:.1f}s with the server down")
    assert attempts <= 5 and cpu < 1.0
    # The server comes back: the source connects on its next attempt.
    pg.start()
    pg.psql("INSERT INTO customers (id, tier) VALUES ('u1', 'gold')")
    wait_for(lambda: "u1" in case.target.profiles(), 90, "the row after the server came back")


def test_pg_reload_while_reading(case):
    """SIGHUP while a file is being ingested and the table is being read: the
    new configuration is applied between slices (from the loop, never under a
    source that is running), and every row is queued exactly once."""
    from harness import csv_text, spool_source, write_atomic
    pg, pw = start_pg(case)
    pg.psql("INSERT INTO customers (id, tier) SELECT 'g' || g, 'gold' FROM generate_series(1, 20000) g")
    d = case.daemon(source(pg, pw) + spool_source("files", case.spool), linger="5s").start()
    write_atomic(os.path.join(case.spool, "big.csv"),
                 csv_text(["customer_id", "tier"], [(f"f{i}", "silver") for i in range(60000)]))
    for _ in range(3):
        d.proc.send_signal(signal.SIGHUP)
        time.sleep(0.15)
    wait_for(lambda: d.sql("SELECT count(*) FROM profiles") == [(80000,)], 60, "both sources staged")
    log = d.log_text()
    print(f"    reloads applied: {log.count('configuration reloaded')}, deferred: {log.count('will be applied')}")
    assert "configuration reloaded" in log
    d.ctl("flush")
    wait_for(lambda: len(case.target.profiles()) == 80000, 60, "delivery", interval=0.5)
    d.wait_idle()
    counts = sent_ids(case)
    assert set(counts.values()) == {1}, "a row was queued twice"


def test_pg_once(case):
    """--once reads the table to its end (several slices), delivers and exits 0."""
    pg, pw = start_pg(case)
    pg.psql("INSERT INTO customers (id, tier) SELECT 'o' || g, 'gold' FROM generate_series(1, 4500) g")
    d = case.daemon(source(pg, pw))
    r = d.run_once("--wait", "30s")
    assert r.returncode == 0, r.stderr
    assert len(case.target.profiles()) == 4500
    pg.psql("UPDATE customers SET tier = 'silver' WHERE id = 'o7'")
    r = d.run_once("--wait", "30s")
    assert r.returncode == 0 and case.target.profiles()["o7"] == {"loyaltyTier": "silver"}, r.stderr
    assert sum(r["rows"] for r in case.target.requests()) == 4501  # only the change was sent again


def test_pg_config_errors(case):
    pg_dsn = "host=127.0.0.1 port=1 dbname=crm user=crm_reader"
    base = (f"  - name: crm\n    type: postgres\n    dsn: \"{pg_dsn}\"\n    query: \"{QUERY}\"\n"
            f"    id_column: id\n    cursor_column: updated_at\n")
    d = case.daemon(base)
    with open(d.config) as f:
        good = f.read()
    cases = [
        (good.replace(pg_dsn, pg_dsn + " password=hunter2"), "must not contain the password"),
        (good.replace(pg_dsn, "postgresql://crm_reader:hunter2@127.0.0.1/crm"), "must not contain the password"),
        (good.replace(pg_dsn, "host=127.0.0.1 bogus=1"), "dsn: invalid connection option"),
        (good.replace(f"    dsn: \"{pg_dsn}\"\n", ""), "needs dsn"),
        (good.replace("    id_column: id\n", "    id_column: id\n    path: /tmp/x.db\n"), "takes dsn, not path"),
        (good.replace("    cursor_column: updated_at\n", ""), "a postgres source needs query and cursor_column"),
        (good.replace("type: postgres", "type: sqlite").replace(f"dsn: \"{pg_dsn}\"", "path: /tmp/x.db")
         + "    listen: x\n", "belong to postgres sources"),
    ]
    for bad, want in cases:
        with open(d.config, "w") as f:
            f.write(bad)
        r = subprocess.run([TPSYNCD, "-c", d.config, "--check-config"], capture_output=True, text=True)
        assert r.returncode == 1 and want in r.stderr, (want, r.stderr)
        assert "hunter2" not in r.stderr
    with open(d.config, "w") as f:
        f.write(good)
    r = subprocess.run([TPSYNCD, "-c", d.config, "--check-config"], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    # A cursor of a type with no known minimum is reported, not guessed.
    pg, pw = start_pg(case, SCHEMA + "CREATE TABLE odd (id text, cur bytea); GRANT SELECT ON odd TO crm_reader;")
    d = case.daemon(source(pg, pw, query="SELECT id, cur AS updated_at FROM odd WHERE cur >= :cursor"))
    d.start()
    wait_for(lambda: "cursor_column" in (d.ctl("sources")["sources"][0]["last_error"] or ""), 10,
             "the cursor type error")


if __name__ == "__main__":
    run([test_pg_listen_types_ties_rescan, test_pg_poll_without_listen, test_pg_server_restart, test_pg_crash_before_cursor_commit,
         test_pg_unreachable_and_bad_password, test_pg_reload_while_reading, test_pg_once, test_pg_config_errors])
