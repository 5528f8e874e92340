# SPDX-License-Identifier: MIT
"""A throwaway PostgreSQL server for the tests: initdb in a temporary directory,
pg_ctl start on a free loopback port, psql for setup and changes, restart and
stop. PostgreSQL refuses to run as root, so when the tests run as root the
server runs as the 'postgres' user that Debian's package creates.

The admin connects over the Unix socket in the directory (trust); tpsyncd
connects over TCP to 127.0.0.1 with a password (scram-sha-256), as it would in
production."""
import glob
import os
import shutil
import socket
import subprocess
import tempfile


def _bindir():
    for cand in sorted(glob.glob("/usr/lib/postgresql/*/bin"), reverse=True):
        if os.path.exists(os.path.join(cand, "initdb")):
            return cand
    raise AssertionError("PostgreSQL server binaries not found (install Debian's 'postgresql' package; "
                         "scripts/deps.sh does)")


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class PgServer:
    ADMIN = "tpsync_admin"

    def __init__(self):
        self.bindir = _bindir()
        self.as_root = os.geteuid() == 0
        self.dir = tempfile.mkdtemp(prefix="tpsync-pg-")
        if self.as_root:
            shutil.chown(self.dir, "postgres", "postgres")
        self.data = os.path.join(self.dir, "data")
        self.log = os.path.join(self.dir, "server.log")
        self._run("initdb", "-D", self.data, "-U", self.ADMIN, "-A", "trust", "--auth-host=scram-sha-256",
                  "-E", "UTF8", "--locale=C", "--no-sync")
        self.port = None
        self.start()

    def _run(self, tool, *args, timeout=60):
        cmd = [os.path.join(self.bindir, tool), *args]
        if self.as_root:
            cmd = ["runuser", "-u", "postgres", "--", *cmd]
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
        if r.returncode != 0:
            raise AssertionError(f"{tool} failed ({r.returncode}): {r.stderr}{r.stdout}")
        return r

    def start(self):
        """Starts the server (on the same port as before after a stop)."""
        for _ in range(5):
            port = self.port or _free_port()
            try:
                self._run("pg_ctl", "-D", self.data, "-l", self.log, "-w", "-t", "30", "start", "-o",
                          f"-p {port} -k {self.dir} -c listen_addresses=127.0.0.1 -c fsync=off "
                          f"-c max_connections=20 -c shared_buffers=16MB")
                self.port = port
                return
            except AssertionError:
                if self.port:
                    raise
        raise AssertionError("cannot start PostgreSQL on a free port")

    def stop(self, mode="fast"):
        self._run("pg_ctl", "-D", self.data, "-m", mode, "-w", "-t", "30", "stop")

    def psql(self, sql, db="crm"):
        """Runs SQL as the admin; returns the rows as lists of strings."""
        r = subprocess.run(["psql", "-X", "-q", "-At", "-F", "\t", "-v", "ON_ERROR_STOP=1", "-h", self.dir,
                            "-p", str(self.port), "-U", self.ADMIN, "-d", db, "-c", sql],
                           capture_output=True, text=True, timeout=120)
        if r.returncode != 0:
            raise AssertionError(f"psql failed: {r.stderr}")
        return [line.split("\t") for line in r.stdout.splitlines()]

    def dsn(self, db="crm", user="crm_reader"):
        return f"host=127.0.0.1 port={self.port} dbname={db} user={user} connect_timeout=5"

    def close(self):
        try:
            self.stop("immediate")
        except Exception:  # noqa: BLE001 - already stopped
            pass
        shutil.rmtree(self.dir, ignore_errors=True)

