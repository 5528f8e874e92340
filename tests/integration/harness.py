# SPDX-License-Identifier: MIT
"""Test harness: starts the fake Target and tpsyncd on loopback in a temporary
directory, talks to both, and waits for conditions with deadlines (no bare sleeps).
Paths to the binaries come from the environment meson sets (TPSYNCD, TPSYNCCTL,
FAKE_TARGET)."""
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request

TPSYNCD = os.environ.get("TPSYNCD", "build/daemon/tpsyncd")
TPSYNCCTL = os.environ.get("TPSYNCCTL", "build/daemon/tpsyncctl")
FAKE_TARGET = os.environ.get("FAKE_TARGET", "build/tests/fake-target/fake-target")


def wait_for(cond, timeout=20.0, what="condition", interval=0.05):
    """Polls cond() until it returns a true value; fails the test at the deadline."""
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        last = cond()
        if last:
            return last
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what} (last: {last!r})")


def cpu_seconds(pid):
    """User + system CPU seconds a running process has used."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def peak_rss_mb(pid):
    """A running process's peak resident memory (VmHWM) in MB."""
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return 0


def make_certs(workdir):
    """A test CA and a server certificate for 127.0.0.1 and 127.0.0.2 (the fake
    Target's base and edge hosts), made with openssl. Returns (ca, cert, key)."""
    ca, ca_key = os.path.join(workdir, "ca.pem"), os.path.join(workdir, "ca.key")
    cert, key = os.path.join(workdir, "server.pem"), os.path.join(workdir, "server.key")
    ext = os.path.join(workdir, "server.ext")
    with open(ext, "w") as f:
        f.write("subjectAltName=IP:127.0.0.1,IP:127.0.0.2\nbasicConstraints=CA:FALSE\n"
                "keyUsage=digitalSignature\nextendedKeyUsage=serverAuth\n")
    ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]
    for cmd in (["openssl", "req", "-x509", *ec, "-keyout", ca_key, "-out", ca, "-days", "2", "-subj", "/CN=tpsync test CA"],
                ["openssl", "req", *ec, "-keyout", key, "-out", cert + ".csr", "-subj", "/CN=127.0.0.1"],
                ["openssl", "x509", "-req", "-in", cert + ".csr", "-CA", ca, "-CAkey", ca_key, "-CAcreateserial",
                 "-out", cert, "-days", "2", "-extfile", ext]):
        subprocess.run(cmd, check=True, capture_output=True)
    return ca, cert, key


class FakeTarget:
    def __init__(self, workdir, *args, tls=False):
        self.port_file = os.path.join(workdir, "fake-target.port")
        self.log = open(os.path.join(workdir, "fake-target.log"), "w")
        # Tests run fast, so the fake's call limit is high unless a test sets it.
        if "--calls-per-minute" not in args:
            args = ("--calls-per-minute", "100000", *args)
        self.ca = None
        if tls:
            self.ca, cert, key = make_certs(workdir)
            args = ("--tls-cert", cert, "--tls-key", key, *args)
        self.proc = subprocess.Popen([os.path.abspath(FAKE_TARGET), "--port-file", self.port_file, *args],
                                     stdout=self.log, stderr=subprocess.STDOUT, cwd=workdir)
        wait_for(lambda: os.path.exists(self.port_file), 10, "fake Target to listen")
        with open(self.port_file) as f:
            self.port = int(f.read())
        self.url = f"{'https' if tls else 'http'}://127.0.0.1:{self.port}"
        self.context = None
        if tls:
            import ssl
            self.context = ssl.create_default_context(cafile=self.ca)

    def _call(self, path, body=None):
        data = json.dumps(body).encode() if body is not None else None
        req = urllib.request.Request(self.url + path, data=data, method="POST" if data else "GET")
        # Generous: /__state of 600,000 profiles takes seconds in a sanitizer build.
        with urllib.request.urlopen(req, timeout=60, context=self.context) as r:
            return json.loads(r.read())

    def polls(self):
        return self._call("/__polls")

    def edge_port(self):
        """The port of the status ("edge") host; pass it as --edge-port to a
        restarted fake so the status URLs it gave out still lead somewhere, as
        a production edge host's name does after an outage."""
        return int(self._call("/__count")["edge_host"].rsplit(":", 1)[1])

    def visit(self, profile, attrs):
        """A page visit (an mbox call) that sets attrs on profile."""
        return self._call("/__visit", {"id": profile, "attrs": attrs})

    def fetch(self, profile, token=None):
        """The profile fetch API, as a client would call it: (status, JSON)."""
        req = urllib.request.Request(f"{self.url}/rest/v1/profiles/thirdPartyId/{profile}?client=demo",
                                     headers={"Authorization": f"Bearer {token}"} if token else {})
        try:
            with urllib.request.urlopen(req, timeout=10, context=self.context) as r:
                return r.status, json.loads(r.read())
        except urllib.error.HTTPError as e:
            return e.code, json.loads(e.read())

    def state(self):
        return self._call("/__state")

    def profiles(self):
        return self.state()["profiles"]

    def requests(self):
        return self._call("/__requests")

    def fault(self, mode, count=1, **kw):
        return self._call("/__fault", {"mode": mode, "count": count, **kw})

    def configure(self, **kw):
        return self._call("/__config", kw)

    def stop(self):
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.log.close()


DEFAULT_CONFIG = """\
target:
  client_code: demo
  base_url: {base_url}
  poll_interval: {poll_interval}
  poll_max: {poll_max}
  timeout: {timeout}
{target_extra}state:
  database: {dir}/state.db
control:
  socket: {dir}/control.sock
batch:
  linger: {linger}
  max_in_flight: {max_in_flight}
  rows: {rows}
{batch_extra}retry:
  initial: 100ms
  max: {retry_max}
{retry_extra}limits:
  calls_per_minute: {calls_per_minute}
{limits_extra}{sections_extra}sources:
{sources}"""


def spool_source(name, path, id_column="customer_id", extra=""):
    return (f"  - name: {name}\n    type: spool\n    path: {path}\n    id_column: {id_column}\n"
            + "".join(f"    {line}\n" for line in extra.splitlines() if line))


def snapshot_source(name, path, id_column="id", extra=""):
    return (f"  - name: {name}\n    type: snapshot\n    path: {path}\n    id_column: {id_column}\n"
            + "".join(f"    {line}\n" for line in extra.splitlines() if line))


class Daemon:
    """tpsyncd with a generated config in workdir."""

    def __init__(self, workdir, target, sources, **opts):
        self.dir = workdir
        values = dict(base_url=target.url if target else "http://127.0.0.1:9", timeout="5s",
                      linger="50ms", max_in_flight=2, rows="full_profile", retry_max="1s",
                      calls_per_minute=1000, target_extra="", batch_extra="", retry_extra="", poll_interval="100ms",
                      poll_max="400ms",
                      limits_extra="", sections_extra="", dir=workdir, sources=sources)
        values.update(opts)
        self.config = os.path.join(workdir, "tpsyncd.yaml")
        with open(self.config, "w") as f:
            f.write(DEFAULT_CONFIG.format(**values))
        self.socket = os.path.join(workdir, "control.sock")
        self.db = os.path.join(workdir, "state.db")
        self.log_path = os.path.join(workdir, "tpsyncd.log")
        self.proc = None

    def start(self, *args, wait_ready=True, env=None):
        self.log = open(self.log_path, "a")
        if os.path.exists(self.socket) and not wait_ready:
            pass
        self.proc = subprocess.Popen([TPSYNCD, "-c", self.config, "--log-level", "debug", *args],
                                     stdout=self.log, stderr=subprocess.STDOUT,
                                     env={**os.environ, **(env or {})})
        if wait_ready:
            wait_for(lambda: self.proc.poll() is not None or self.ctl_ok(), 15, "tpsyncd to answer")
            assert self.proc.poll() is None, "tpsyncd exited at start:\n" + self.log_text()
        return self

    def ctl_ok(self):
        r = subprocess.run([TPSYNCCTL, "-s", self.socket, "status", "--json"], capture_output=True)
        return r.returncode == 0

    def ctl(self, *args, check=True, as_json=True):
        cmd = [TPSYNCCTL, "-s", self.socket, *args] + (["--json"] if as_json else [])
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=30)
        if check and r.returncode != 0:
            raise AssertionError(f"tpsyncctl {' '.join(args)} exited {r.returncode}: {r.stderr}")
        if as_json and r.returncode == 0:
            return json.loads(r.stdout)
        return r

    def status(self):
        return self.ctl("status")

    def wait_idle(self, timeout=30, include_status=True):
        """Waits until nothing is pending, in flight or (optionally) awaiting status."""
        def idle():
            s = self.status()
            q = s["queue"]
            return (not s["ingesting"] and q["pending_profiles"] == 0 and q["batches_ready"] == 0
                    and q["batches_in_flight"] == 0
                    and (not include_status or q["batches_awaiting_status"] == 0)) and s
        return wait_for(idle, timeout, "the queue to drain")

    def stop(self, sig=signal.SIGTERM, timeout=30):
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
                raise AssertionError("tpsyncd did not stop on time")
        if self.proc:
            self.log.close()
        return self.proc.returncode if self.proc else None

    def kill(self):
        return self.stop(signal.SIGKILL)

    def log_text(self):
        with open(self.log_path, errors="replace") as f:
            return f.read()

    def run_once(self, *args, timeout=120):
        r = subprocess.run([TPSYNCD, "-c", self.config, "--once", *args], capture_output=True, text=True,
                           timeout=timeout)
        with open(self.log_path, "a") as f:
            f.write(r.stderr)
        return r

    def sql(self, query):
        import sqlite3
        con = sqlite3.connect(self.db, timeout=10)
        try:
            return con.execute(query).fetchall()
        finally:
            con.close()


def write_atomic(path, text, mode="w"):
    """Writes a file the way exporters should: under a temporary name, then renamed."""
    tmp = path + ".part"
    with open(tmp, mode) as f:
        f.write(text)
    os.rename(tmp, path)


def csv_cell(value):
    if any(c in value for c in ',"\n\r') or value != value.strip():
        return '"' + value.replace('"', '""') + '"'
    return value


def csv_text(header, rows, newline="\n"):
    lines = [",".join(csv_cell(h) for h in header)]
    lines += [",".join(csv_cell(str(v)) for v in row) for row in rows]
    return newline.join(lines) + newline


class Case:
    """A test case: a temporary directory, a fake Target and daemons cleaned up
    afterwards (kept on failure, with logs printed)."""

    def __init__(self, name, *target_args, with_target=True, tls=False):
        self.name = name
        self.dir = tempfile.mkdtemp(prefix=f"tpsync-{name}-")
        self.target = FakeTarget(self.dir, *target_args, tls=tls) if with_target else None
        self.daemons = []
        self.cleanups = []  # called at close, last first (servers a test started)
        self.spool = os.path.join(self.dir, "spool")
        os.makedirs(self.spool)

    def daemon(self, sources=None, **opts):
        if self.target and self.target.ca:
            opts["target_extra"] = f"  ca_file: {self.target.ca}\n" + opts.get("target_extra", "")
        d = Daemon(self.dir, self.target, sources or spool_source("crm", self.spool), **opts)
        self.daemons.append(d)
        return d

    def verify(self):
        """Stops the daemons and fails the test if one exited badly on SIGTERM or
        a sanitizer reported anything in its log."""
        for d in self.daemons:
            if d.proc and d.proc.poll() is None:
                code = d.stop()
                assert code == 0, f"tpsyncd exited {code} on SIGTERM"
            text = d.log_text() if os.path.exists(d.log_path) else ""
            for marker in ("AddressSanitizer", "LeakSanitizer", "runtime error:", "UndefinedBehaviorSanitizer"):
                assert marker not in text, f"sanitizer report in tpsyncd log ({marker})"

    def close(self, ok):
        for d in self.daemons:
            try:
                d.stop()
            except Exception as e:  # noqa: BLE001 - cleanup must go on
                print(f"cleanup: {e}", file=sys.stderr)
        if self.target:
            self.target.stop()
        for fn in reversed(self.cleanups):
            try:
                fn()
            except Exception as e:  # noqa: BLE001 - cleanup must go on
                print(f"cleanup: {e}", file=sys.stderr)
        if ok:
            shutil.rmtree(self.dir, ignore_errors=True)
        else:
            print(f"--- kept {self.dir}", file=sys.stderr)
            for name in ("tpsyncd.log", "fake-target.log"):
                p = os.path.join(self.dir, name)
                if os.path.exists(p):
                    print(f"--- {name} (tail)", file=sys.stderr)
                    with open(p, errors="replace") as f:
                        print("".join(f.readlines()[-60:]), file=sys.stderr)


def run(tests):
    """Runs test functions (each takes a Case name) and prints 'N passed, N failed'."""
    only = sys.argv[1:]
    passed = failed = 0
    for fn in tests:
        if only and fn.__name__ not in only:
            continue
        case = Case(fn.__name__.replace("test_", ""), *getattr(fn, "target_args", ()),
                    with_target=getattr(fn, "with_target", True), tls=getattr(fn, "tls", False))
        start = time.monotonic()
        ok = False
        try:
            fn(case)
            case.verify()
            ok = True
            passed += 1
            print(f"ok   {fn.__name__} ({time.monotonic() - start:.1f}s)")
        except Exception as e:  # noqa: BLE001 - report every failure
            failed += 1
            import traceback
            traceback.print_exc()
            print(f"FAIL {fn.__name__}: {e}")
        finally:
            case.close(ok)
    print(f"{passed} passed, {failed} failed")
    sys.exit(1 if failed or not passed else 0)


def target_args(*args):
    def deco(fn):
        fn.target_args = args
        return fn
    return deco


def over_tls(fn):
    """Runs the test against the fake Target over TLS (the daemon gets its CA)."""
    fn.tls = True
    return fn
