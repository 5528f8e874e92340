# SPDX-License-Identifier: MIT
"""The Prometheus endpoint (metrics.listen): the exposition over HTTP, what it
refuses, many and greedy clients during a delivery, a real Prometheus server
scraping it, and the alert rules checked by promtool."""
import http.client
import os
import shutil
import socket
import subprocess
import threading
import time
import urllib.request
import json

from harness import TPSYNCD, csv_text, peak_rss_mb, run, wait_for, write_atomic

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..")


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def metrics_daemon(case, port, **opts):
    return case.daemon(sections_extra=f"metrics:\n  listen: 127.0.0.1:{port}\n", **opts)


def get(port, path="/metrics", method="GET"):
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    c.request(method, path)
    r = c.getresponse()
    body = r.read().decode()
    c.close()
    return r.status, r.getheader("Content-Type"), body


def drop(case, name, rows):
    write_atomic(os.path.join(case.spool, name), csv_text(["customer_id", "tier"], rows))


def test_exposition(case):
    """GET /metrics is the same exposition as tpsyncctl metrics, plus build
    info; other paths are 404, other methods 405; HEAD has no body."""
    port = free_port()
    d = metrics_daemon(case, port).start()
    drop(case, "a.csv", [["c1", "gold"], ["bad+", "x"]])
    wait_for(lambda: case.target.profiles().get("c1"), 20, "delivery")
    d.wait_idle()
    status, ctype, body = get(port)
    assert status == 200 and ctype == "text/plain; version=0.0.4; charset=utf-8", (status, ctype)
    assert 'tpsync_build_info{version="0.1.0",client="demo"} 1' in body, body[:500]
    assert 'tpsync_rows_total{source="crm",outcome="rejected"} 1' in body
    names = {line.split("{")[0].split(" ")[0] for line in body.splitlines() if not line.startswith("#")}
    ctl = d.ctl("metrics", as_json=False).stdout
    ctl_names = {line.split("{")[0].split(" ")[0] for line in ctl.splitlines() if not line.startswith("#")}
    assert names == ctl_names, names ^ ctl_names
    assert get(port, "/")[0] == 404 and get(port, "/metrics/x")[0] == 404
    assert get(port, method="POST")[0] == 405
    status, _, body = get(port, method="HEAD")
    assert status == 200 and body == ""
    # Bad addresses are configuration errors, with the reason.
    for bad in ("9641", "localhost:9641", "127.0.0.1:0", "127.0.0.1:70000", "::1:9641"):
        with open(d.config) as f:
            cfg = f.read()
        with open(os.path.join(case.dir, "bad.yaml"), "w") as f:
            f.write(cfg.replace(f"listen: 127.0.0.1:{port}", f"listen: {bad}"))
        r = subprocess.run([TPSYNCD, "-c", os.path.join(case.dir, "bad.yaml"), "--check-config"],
                           capture_output=True, text=True)
        assert r.returncode == 1 and "metrics.listen" in r.stderr, (bad, r.stderr)


def test_reload_and_busy_port(case):
    """A reload moves the endpoint; a port already taken fails the start with
    the reason, and a reload onto one leaves delivery running."""
    port, port2 = free_port(), free_port()
    d = metrics_daemon(case, port).start()
    assert get(port)[0] == 200
    with open(d.config) as f:
        cfg = f.read()
    with open(d.config, "w") as f:
        f.write(cfg.replace(f"127.0.0.1:{port}", f"127.0.0.1:{port2}"))
    d.ctl("reload")
    wait_for(lambda: get(port2)[0] == 200, 10, "the endpoint on its new port")
    try:
        get(port)
        assert False, "the old port still answers"
    except OSError:
        pass
    d.stop()
    taken = socket.socket()
    taken.bind(("127.0.0.1", port2))
    taken.listen(1)
    case.cleanups.append(taken.close)
    r = subprocess.run([TPSYNCD, "-c", d.config], capture_output=True, text=True, timeout=30)
    assert r.returncode != 0 and "cannot listen for metrics" in r.stderr, r.stderr[-2000:]


def test_many_and_greedy_clients_during_delivery(case):
    """During a delivery: 300 connections that never send a request, one
    client that sends requests without reading the answers, and 200 scrapes
    at once. The scrapes are all answered, the delivery and the control socket
    go on, memory stays bounded, and the idle connections are closed."""
    port = free_port()
    d = metrics_daemon(case, port, linger="10ms", batch_extra="  max_rows: 500\n").start()
    rss0 = peak_rss_mb(d.proc.pid)
    idle = [socket.create_connection(("127.0.0.1", port)) for _ in range(300)]
    case.cleanups.append(lambda: [s.close() for s in idle])
    greedy = socket.create_connection(("127.0.0.1", port))
    case.cleanups.append(greedy.close)
    stop = threading.Event()
    sent = [0]

    def pipeline():
        req = b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n" * 100
        greedy.settimeout(0.5)
        while not stop.is_set():
            try:
                greedy.sendall(req)
                sent[0] += 100
            except socket.timeout:
                continue
            except OSError:
                return
    threading.Thread(target=pipeline, daemon=True).start()
    drop(case, "a.csv", [[f"p{i:05d}", f"t{i}"] for i in range(20000)])
    results = []

    def scrape():
        try:
            results.append(get(port)[0])
        except OSError as e:
            results.append(str(e))
    for _ in range(3):
        threads = [threading.Thread(target=scrape) for _ in range(200)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(30)
        assert d.status()["queue"] is not None  # the control socket answers too
    assert results.count(200) == 600, [r for r in results if r != 200][:5]
    wait_for(lambda: len(case.target.profiles()) == 20000, 60, "the delivery")
    # The idle connections are closed by the daemon (10 s without a request).
    idle[0].settimeout(20)
    assert idle[0].recv(1) == b""
    stop.set()
    assert sent[0] >= 100, sent  # the greedy client did send
    grew = peak_rss_mb(d.proc.pid) - rss0
    # Under AddressSanitizer freed memory sits in its quarantine (256 MB): the
    # bound is the normal build's.
    assert grew < 30 or "ASAN_OPTIONS" in os.environ, (rss0, grew)
    assert case.target.state()["violations"] == []
    print(f"    peak RSS +{grew:.1f} MB with {sent[0]:,} requests sent unread and 300 idle connections")


def test_out_of_descriptors(case):
    """With few descriptors and the endpoint flooded with connections, accept
    rests instead of spinning, the log stays small, the control socket still
    answers, and scrapes are served again once the flood goes."""
    import resource
    from harness import TPSYNCD, cpu_seconds
    port = free_port()
    d = metrics_daemon(case, port)
    limit = 48

    def low_nofile():
        resource.setrlimit(resource.RLIMIT_NOFILE, (limit, limit))
    d.log = open(d.log_path, "a")
    d.proc = subprocess.Popen([TPSYNCD, "-c", d.config], stdout=d.log, stderr=subprocess.STDOUT,
                              preexec_fn=low_nofile)
    case.cleanups.append(d.stop)
    wait_for(lambda: d.ctl_ok(), 15, "tpsyncd to answer")
    flood = [socket.create_connection(("127.0.0.1", port)) for _ in range(120)]
    case.cleanups.append(lambda: [s.close() for s in flood])
    time.sleep(1)
    c0 = cpu_seconds(d.proc.pid)
    time.sleep(3)
    used = cpu_seconds(d.proc.pid) - c0
    assert used < 0.5, used  # no busy accept loop
    assert "cannot accept a metrics connection; pausing for 1 s" in d.log_text()
    for s in flood:
        s.close()
    wait_for(lambda: get(port)[0] == 200, 30, "scrapes once descriptors are back")
    assert d.status()["queue"] is not None
    size = os.path.getsize(d.log_path)
    assert size < 200_000, size
    print(f"    CPU over 3 s while flooded: {used:.2f} s; log {size / 1000:.0f} kB")


def prometheus_bin():
    for p in (shutil.which("prometheus"), "/usr/bin/prometheus"):
        if p and os.path.exists(p):
            return p
    raise AssertionError("prometheus not found: install Debian's 'prometheus' package "
                         "(scripts/deps.sh does with TPSYNC_WITH_PROMETHEUS=1)")


def test_real_prometheus_scrapes(case):
    """Debian's Prometheus, started here on loopback, scrapes tpsyncd every
    second: its API says the target is up and the rows counter advanced."""
    port, pport = free_port(), free_port()
    d = metrics_daemon(case, port).start()
    cfg = os.path.join(case.dir, "prometheus.yml")
    with open(cfg, "w") as f:
        f.write(f"""global:
  scrape_interval: 1s
  scrape_timeout: 900ms
scrape_configs:
  - job_name: tpsyncd
    static_configs:
      - targets: ["127.0.0.1:{port}"]
""")
    log = open(os.path.join(case.dir, "prometheus.log"), "w")
    prom = subprocess.Popen([prometheus_bin(), f"--config.file={cfg}", f"--storage.tsdb.path={case.dir}/tsdb",
                             f"--web.listen-address=127.0.0.1:{pport}"], stdout=log, stderr=subprocess.STDOUT)

    def stop_prom():
        prom.terminate()
        try:
            prom.wait(20)
        except subprocess.TimeoutExpired:
            prom.kill()
        log.close()
    case.cleanups.append(stop_prom)

    def api(path):
        with urllib.request.urlopen(f"http://127.0.0.1:{pport}{path}", timeout=5) as r:
            return json.loads(r.read())

    def up():
        try:
            t = api("/api/v1/targets")["data"]["activeTargets"]
        except OSError:
            return False
        return t and t[0]["health"] == "up" and t[0]

    wait_for(up, 60, "Prometheus to scrape tpsyncd", interval=0.5)

    def read_rows():
        q = api("/api/v1/query?query=" + urllib.request.quote('tpsync_rows_total{outcome="read"}'))["data"]["result"]
        return float(q[0]["value"][1]) if q else None
    wait_for(lambda: read_rows() is not None, 30, "the rows counter in Prometheus", interval=0.5)
    before = read_rows()
    drop(case, "a.csv", [["c1", "gold"], ["c2", "silver"], ["c3", "bronze"]])
    wait_for(lambda: (read_rows() or 0) >= before + 3, 30, "the counter to advance in Prometheus", interval=0.5)
    q = api("/api/v1/query?query=tpsync_build_info")["data"]["result"]
    assert q and q[0]["metric"]["version"] == "0.1.0", q


def test_alert_rules_and_dashboard(case):
    """The alert rules pass promtool, and name only metrics tpsyncd serves; the
    dashboard is JSON whose queries do too."""
    rules = os.path.join(ROOT, "config", "prometheus", "tpsync-alerts.yml")
    promtool = shutil.which("promtool") or "/usr/bin/promtool"
    r = subprocess.run([promtool, "check", "rules", rules], capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr
    port = free_port()
    d = metrics_daemon(case, port).start()
    served = {line.split("{")[0].split(" ")[0] for line in get(port)[2].splitlines() if not line.startswith("#")}
    served |= {n.rsplit("_bucket", 1)[0] + s for n in served if n.endswith("_bucket") for s in ("_bucket", "_sum", "_count")}
    import re
    with open(rules) as f:
        named = set(re.findall(r"\btpsync_[a-z_]+", f.read()))
    assert named and named <= served, named - served
    with open(os.path.join(ROOT, "config", "prometheus", "grafana-dashboard.json")) as f:
        dash = json.load(f)
    exprs = [t["expr"] for p in dash["panels"] for t in p.get("targets", [])]
    named = set(re.findall(r"\btpsync_[a-z_]+", " ".join(exprs)))
    assert exprs and named <= served, named - served


if __name__ == "__main__":
    run([test_exposition, test_reload_and_busy_port, test_many_and_greedy_clients_during_delivery,
         test_out_of_descriptors, test_real_prometheus_scrapes, test_alert_rules_and_dashboard])
