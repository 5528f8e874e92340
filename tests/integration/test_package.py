# SPDX-License-Identifier: MIT
"""The Debian package (suite "package"): built from the tree with
dpkg-buildpackage, lintian-clean, installed with dpkg -i, run from the
installed paths, upgraded to a second build keeping a changed conffile and the
state, removed (state kept) and purged (nothing left). Installs into the
machine it runs on, so it needs root; skipped (exit 77) without root or
debhelper, or when a tpsync package is installed already."""
import os
import shlex
import shutil
import sqlite3
import subprocess
import sys
import tempfile

ROOT = os.path.realpath(os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", ".."))
CONF = "/etc/tpsyncd/tpsyncd.yaml"
STATE = "/var/lib/tpsyncd"


def skip(why):
    print(f"skip: {why}")
    sys.exit(77)


def sh(*args, check=True, **kw):
    r = subprocess.run(args, capture_output=True, text=True, **kw)
    if check and r.returncode != 0:
        raise AssertionError(f"{' '.join(args)} exited {r.returncode}:\n{r.stdout}\n{r.stderr}")
    return r


def copy_tree(dst):
    """The source tree as a clean checkout would have it (no build dirs)."""
    files = sh("git", "ls-files", "-co", "--exclude-standard", cwd=ROOT).stdout.splitlines() \
        if os.path.isdir(os.path.join(ROOT, ".git")) else None
    if files is None:
        shutil.copytree(ROOT, dst, ignore=shutil.ignore_patterns("build*", ".git"))
        return
    for f in files:
        if f.startswith("build") or not os.path.exists(os.path.join(ROOT, f)):
            continue
        os.makedirs(os.path.join(dst, os.path.dirname(f)), exist_ok=True)
        shutil.copy2(os.path.join(ROOT, f), os.path.join(dst, f))


def build(work, version):
    src = os.path.join(work, f"v{version}", "tpsync")
    copy_tree(src)
    if version != "0.1.0":
        with open(os.path.join(src, "debian", "changelog")) as f:
            old = f.read()
        date = sh("date", "-R").stdout.strip()
        with open(os.path.join(src, "debian", "changelog"), "w") as f:
            f.write(f"tpsync ({version}) bookworm; urgency=medium\n\n  * Test upgrade.\n\n"
                    f" -- tpsync developers <tpsync@example.org>  {date}\n\n{old}")
    sh("dpkg-buildpackage", "-us", "-uc", "-b", cwd=src)
    deb = os.path.join(work, f"v{version}", f"tpsync_{version}_{sh('dpkg', '--print-architecture').stdout.strip()}.deb")
    assert os.path.exists(deb), os.listdir(os.path.dirname(deb))
    return deb


def installed_version():
    r = sh("dpkg-query", "-W", "-f=${Status} ${Version}", "tpsync", check=False)
    return r.stdout.split()[-1] if r.returncode == 0 and "install ok installed" in r.stdout else None


def main():
    if os.geteuid() != 0:
        skip("installs a package: needs root")
    for tool in ("dpkg-buildpackage", "dh", "lintian"):
        if not shutil.which(tool):
            skip(f"{tool} not installed (scripts/deps.sh installs debhelper and lintian "
                 "with TPSYNC_WITH_PACKAGING=1)")
    if sh("dpkg-query", "-W", "tpsync", check=False).returncode == 0 and installed_version():
        skip("a tpsync package is installed on this machine already")
    work = tempfile.mkdtemp(prefix="tpsync-package-")
    try:
        deb1, deb2 = build(work, "0.1.0"), build(work, "0.1.1")
        # lintian: no errors or warnings (each one would need an override with a reason).
        r = sh("lintian", "--fail-on", "error,warning", deb1, check=False)
        tags = [line for line in r.stdout.splitlines() if line[:2] in ("E:", "W:")]
        assert r.returncode == 0 and not tags, r.stdout + r.stderr
        files = [line.split()[-1].lstrip(".") for line in sh("dpkg", "-c", deb1).stdout.splitlines()
                 if not line.startswith("d")]

        sh("dpkg", "-i", deb1)
        assert installed_version() == "0.1.0"
        assert "0.1.0" in sh("/usr/sbin/tpsyncd", "--version").stdout + sh("/usr/sbin/tpsyncd", "--version").stderr
        assert os.path.exists("/usr/bin/tpsyncctl") and os.path.exists("/usr/share/man/man8/tpsyncd.8.gz")
        sh("getent", "passwd", "tpsync")
        assert os.path.isdir("/var/spool/tpsyncd/crm")
        # The unit's credential file exists (else systemd refuses the start), empty: no token.
        tok = os.stat("/etc/tpsyncd/target-token")
        assert tok.st_size == 0 and (tok.st_mode & 0o777) == 0o600, oct(tok.st_mode)
        # As installed: no client code yet, so the configuration is refused
        # and the unit's condition keeps the service from starting.
        r = sh("/usr/sbin/tpsyncd", "-c", CONF, "--check-config", check=False)
        assert r.returncode == 1 and "client_code" in r.stderr, r.stderr
        with open("/lib/systemd/system/tpsyncd.service") as f:
            cond = next(line for line in f if line.startswith("ExecCondition="))
        cond_cmd = shlex.split(cond.split("=", 1)[1])
        assert sh(*cond_cmd, check=False).returncode != 0
        # The operator sets a client code: valid, and the condition holds.
        with open(CONF) as f:
            text = f.read()
        text = text.replace("  # client_code: acme", "  client_code: acme #", 1)
        with open(CONF, "w") as f:
            f.write(text)
        r = sh("/usr/sbin/tpsyncd", "-c", CONF, "--check-config", check=False)
        assert r.returncode == 0, r.stderr
        assert sh(*cond_cmd, check=False).returncode == 0
        # Some state, as a running daemon would leave it.
        os.makedirs(STATE, exist_ok=True)
        con = sqlite3.connect(os.path.join(STATE, "state.db"))
        con.execute("CREATE TABLE marker (x)")
        con.execute("INSERT INTO marker VALUES (42)")
        con.commit()
        con.close()

        sh("dpkg", "-i", deb2)
        assert installed_version() == "0.1.1"
        with open(CONF) as f:
            assert f.read() == text, "the changed conffile was not kept"
        assert sqlite3.connect(os.path.join(STATE, "state.db")).execute("SELECT x FROM marker").fetchall() == [(42,)]

        sh("dpkg", "-r", "tpsync")
        assert not os.path.exists("/usr/sbin/tpsyncd")
        assert os.path.exists(CONF) and os.path.exists(os.path.join(STATE, "state.db")), "remove must keep both"

        sh("dpkg", "-P", "tpsync")
        left = [f for f in files if os.path.lexists(f)]
        for d in ("/etc/tpsyncd", STATE, "/var/spool/tpsyncd", "/run/tpsyncd"):
            if os.path.lexists(d):
                left.append(d)
        assert not left, left
        print("ok   package: built, lintian clean, installed, upgraded (conffile and state kept), removed, purged")
        print("1 passed, 0 failed")
    finally:
        if installed_version():
            sh("dpkg", "-P", "tpsync", check=False)
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    try:
        main()
    except AssertionError as e:
        print(f"FAIL test_package: {e}")
        print("0 passed, 1 failed")
        sys.exit(1)
