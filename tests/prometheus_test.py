"""The monitoring kit of deploy/ proven against a real Prometheus (Debian's `prometheus`): it
scrapes a real coordinator and two real fl-client daemons (provisioned by flctl, mutual TLS)
through a short DP job, then
  - every rule of deploy/prometheus/rules is healthy in Prometheus (it parsed and evaluated),
    and every recording rule recorded something;
  - every PromQL expression of every panel of deploy/grafana/dashboards returns data through
    Prometheus's HTTP API (a panel that parses but draws nothing fails the test);
  - stopping one client makes FlSiteSilent fire for that site, and for it only (the test's copy
    of the rules says 5 s where the shipped one says 10 min);
  - both daemons answer /healthz and /readyz, and a client whose data folder disappears stops
    being ready until it is back;
  - `promtool check metrics` accepts both daemons' /metrics;
  - `flctl job watch` follows the job to its end.

Run by CTest: prometheus_test.py BIN_DIR WORK_DIR. Skips (exit 77 from CTest's point of view,
a clear message) only when Debian's prometheus package is not installed."""
import json
import os
import re
import shutil
import subprocess
import sys
import time
import unittest
import urllib.error
import urllib.parse
import urllib.request

import yaml

import fedlib
from fedlib import Federation, free_port, wait_until

DEPLOY = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "deploy")
SITES = ["site-a", "site-b"]
SCRAPE_SECONDS = 0.5  # scrapes and rule evaluations: the job runs for a few seconds only (long
# enough, at 40 local steps a round, that scrapes see it running on a fast or a loaded machine)
# The shipped FlSiteSilent waits 10 minutes of silence and 1 minute more; the test's copy 8 s
# and 2 s (above a few missed scrapes on a loaded machine, which must not fire it).
SILENT_AFTER = 8


def http_get(url, timeout=10):
    """(status, body) of a GET; HTTP errors are answers too."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()


def dashboard_targets():
    """[(dashboard, panel title, expr, instant)] of every panel target of every dashboard."""
    out = []
    folder = os.path.join(DEPLOY, "grafana", "dashboards")
    for name in sorted(os.listdir(folder)):
        with open(os.path.join(folder, name)) as f:
            board = json.load(f)
        for panel in board["panels"]:
            for t in panel["targets"]:
                out.append((name, panel["title"], t["expr"], bool(t.get("instant"))))
    return out


def test_rules(out_dir):
    """Copies of the shipped rule files for the test: FlSiteSilent after SILENT_AFTER s and
    for 2 s, every other rule as shipped. Returns the paths."""
    paths = []
    for name in sorted(os.listdir(os.path.join(DEPLOY, "prometheus", "rules"))):
        with open(os.path.join(DEPLOY, "prometheus", "rules", name)) as f:
            doc = yaml.safe_load(f)
        for group in doc["groups"]:
            group["interval"] = f"{int(SCRAPE_SECONDS * 1000)}ms"
            for rule in group["rules"]:
                if rule.get("alert") == "FlSiteSilent":
                    assert rule["expr"] == "fl:site_silence_seconds > 600", rule["expr"]
                    rule["expr"] = f"fl:site_silence_seconds > {SILENT_AFTER}"
                    rule["for"] = "2s"
        path = os.path.join(out_dir, name)
        with open(path, "w") as f:
            yaml.safe_dump(doc, f)
        paths.append(path)
    return paths


# Figures a site does not send under DP (UploadHeader.train_loss): their panels draw nothing for
# the DP job of this test, and must not.
KEPT_AT_THE_SITE_UNDER_DP = ["fl_coordinator_job_train_loss"]


class Prometheus:
    """A real Prometheus server on loopback with the shipped scrape config, its targets
    replaced by the test's daemons."""

    def __init__(self, work, coordinator_port, client_ports):
        self.dir = os.path.join(work, "prometheus-server")
        shutil.rmtree(self.dir, ignore_errors=True)
        os.makedirs(self.dir)
        with open(os.path.join(DEPLOY, "prometheus", "prometheus.yml")) as f:
            config = yaml.safe_load(f)
        config["global"]["scrape_interval"] = f"{int(SCRAPE_SECONDS * 1000)}ms"
        config["global"]["evaluation_interval"] = f"{int(SCRAPE_SECONDS * 1000)}ms"
        config["rule_files"] = test_rules(self.dir)
        jobs = {c["job_name"]: c for c in config["scrape_configs"]}
        jobs["fl-coordinator"]["static_configs"] = [
            {"targets": [f"127.0.0.1:{coordinator_port}"]}]
        jobs["fl-client"]["static_configs"] = [
            {"targets": [f"127.0.0.1:{port}"], "labels": {"site": site}}
            for site, port in client_ports.items()]
        self.config = os.path.join(self.dir, "prometheus.yml")
        with open(self.config, "w") as f:
            yaml.safe_dump(config, f)
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = open(os.path.join(self.dir, "prometheus.log"), "w")
        self.proc = subprocess.Popen(
            ["prometheus", f"--config.file={self.config}",
             f"--storage.tsdb.path={self.dir}/data", f"--web.listen-address=127.0.0.1:{self.port}",
             "--storage.tsdb.retention.time=1h", "--log.level=warn"],
            stdout=self.log, stderr=subprocess.STDOUT)
        wait_until(lambda: self.ready(), 60, "Prometheus to be ready", interval=0.2)

    def ready(self):
        if self.proc.poll() is not None:
            raise AssertionError(f"prometheus exited: {open(self.log.name).read()[-2000:]}")
        try:
            return http_get(f"{self.url}/-/ready", timeout=2)[0] == 200
        except OSError:
            return False

    def api(self, path, **params):
        """The `data` of a Prometheus API answer; fails the test on an error answer."""
        query = urllib.parse.urlencode(params)
        status, body = http_get(f"{self.url}/api/v1/{path}?{query}")
        answer = json.loads(body)
        if answer.get("status") != "success":
            raise AssertionError(f"{path} {params}: {answer.get('errorType')}: "
                                 f"{answer.get('error')}")
        return answer["data"]

    def query(self, expr, start=None):
        """Result of `expr`: a range query from `start` (1 s steps) or an instant query."""
        if start is None:
            return self.api("query", query=expr)["result"]
        return self.api("query_range", query=expr, start=f"{start:.3f}",
                        end=f"{time.time():.3f}", step="1")["result"]

    def firing(self, alert):
        return [a["labels"] for a in self.api("alerts")["alerts"]
                if a["labels"]["alertname"] == alert and a["state"] == "firing"]

    def stop(self):
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.log.close()


class PrometheusTest(unittest.TestCase):
    def test_rules_dashboards_and_site_silent_alert_on_a_real_federation(self):
        fed = Federation("prometheus")
        prom = None
        try:
            fed.start_coordinator()
            for i, site in enumerate(SITES):
                fed.start_client(site, seed=i + 1, exit_when_idle=False, metrics=True)
            client_ports = {site: int(wait_until(
                lambda s=site: re.search(r"fl-client: metrics on port (\d+)", fed.log(s)),
                30, f"the metrics port of {site}").group(1)) for site in SITES}
            prom = Prometheus(fedlib.WORK, fed.metrics_port, client_ports)
            self.check_probes(fed, client_ports)
            fed.wait_connected(len(SITES))
            started = time.time()
            job_id = fed.submit(
                'name: "monitored" model: "smallcnn" image_size: 32 rounds: 10 local_steps: 40 '
                'batch_size: 8 min_sites: 2 start_timeout_seconds: 60 '
                'round_deadline_seconds: 120 labels: "cardiomegaly" labels: "effusion_right" '
                'dp { enabled: true noise_multiplier: 3.0 clip_norm: 1.0 delta: 1e-6 }')
            watch_log = open(os.path.join(fed.dir, "watch.log"), "w")
            watch = subprocess.Popen(
                [f"{fedlib.BIN}/flctl", "job", "watch", job_id, "--interval", "0.5",
                 "--config", fed.admin], stdout=watch_log, stderr=subprocess.STDOUT)
            self.assertEqual(fed.wait(job_id)["state"], "DONE")
            self.check_watch(watch, watch_log, job_id)
            time.sleep(3 * SCRAPE_SECONDS)  # the last scrape and rule evaluation after the end
            self.check_promtool_metrics(fed, client_ports)
            self.check_rules(prom, started)
            self.check_dashboards(prom, started, job_id)
            self.check_site_silent(prom, fed)
        finally:
            if prom:
                prom.stop()
            fed.stop()

    def check_probes(self, fed, client_ports):
        """Live and ready once started; a client whose data folder goes is live, not ready."""
        for port in [fed.metrics_port] + list(client_ports.values()):
            self.assertEqual(http_get(f"http://127.0.0.1:{port}/healthz"), (200, "ok\n"))
            wait_until(lambda p=port: http_get(f"http://127.0.0.1:{p}/readyz")[0] == 200, 30,
                       f"/readyz on port {port}")
            self.assertEqual(http_get(f"http://127.0.0.1:{port}/nothing")[0], 404)
        data = f"{fed.dir}/data/site-a"
        readyz = f"http://127.0.0.1:{client_ports['site-a']}/readyz"
        os.rename(data, data + ".away")
        try:
            code, body = http_get(readyz)
            self.assertEqual(code, 503)
            self.assertIn(f"data: data folder {data}: No such file or directory", body)
            self.assertEqual(http_get(f"http://127.0.0.1:{client_ports['site-a']}/healthz")[0],
                             200)
        finally:
            os.rename(data + ".away", data)
        self.assertEqual(http_get(readyz), (200, "ready\n"))

    def check_watch(self, watch, log, job_id):
        """`flctl job watch` followed the job to its end (not a terminal: one frame per change)."""
        self.assertEqual(watch.wait(timeout=30), 0)
        log.close()
        with open(log.name) as f:
            frames = f.read().split("\n\n")
        self.assertGreater(len(frames), 3, "the view did not follow the rounds")
        self.assertTrue(any(f"job {job_id}: running" in f and "round" in f and "open" in f
                            for f in frames))
        last = [f for f in frames if f.strip()][-1]
        self.assertIn(f"job {job_id}: done, 10 of 10 rounds committed", last)
        self.assertIn("AUROC, median over sites", last)
        for site in SITES:
            self.assertRegex(last, rf"{site}\s+connected\s+\d+\.\d+\s+aggregated")

    def check_promtool_metrics(self, fed, client_ports):
        for port in [fed.metrics_port] + list(client_ports.values()):
            text = http_get(f"http://127.0.0.1:{port}/metrics")[1]
            lint = subprocess.run(["promtool", "check", "metrics"], input=text,
                                  capture_output=True, text=True)
            self.assertEqual(lint.returncode, 0, f"port {port}: {lint.stdout}{lint.stderr}")

    def check_rules(self, prom, started):
        """Every rule parsed and evaluated without error; every recording rule has data."""
        groups = prom.api("rules")["groups"]
        folder = os.path.join(DEPLOY, "prometheus", "rules")
        shipped = 0
        for name in os.listdir(folder):
            with open(os.path.join(folder, name)) as f:
                shipped += len(yaml.safe_load(f)["groups"])
        self.assertEqual(len(groups), shipped)
        for group in groups:
            for rule in group["rules"]:
                name = rule["name"]
                self.assertEqual(rule["health"], "ok", f"{name}: {rule.get('lastError')}")
                prom.query(rule["query"])  # parses through the API as well
                if rule["type"] == "recording":
                    self.assertTrue(prom.query(name, start=started),
                                    f"recording rule {name} recorded nothing")

    def check_dashboards(self, prom, started, job_id):
        targets = dashboard_targets()
        self.assertGreater(len(targets), 30)
        empty = []
        for board, title, expr, instant in targets:
            expr = (expr.replace("$fl_job", job_id).replace("$instance", ".*")
                    .replace("$__rate_interval", "15s"))
            drawn = prom.query(expr, start=None if instant else started)
            if any(m in expr for m in KEPT_AT_THE_SITE_UNDER_DP):
                # This job trains with DP: the sites keep their training loss (it is not
                # noised), so the panel must stay empty.
                self.assertFalse(drawn, f"{board} / {title} drew a DP job's loss: {expr}")
            elif not drawn:
                empty.append(f"{board} / {title}: {expr}")
        if empty:  # say whether scrapes failed meanwhile (a loaded machine)
            for expr in ['max_over_time(scrape_duration_seconds[10m])',
                         'count_over_time((up == 0)[10m:1s])']:
                empty.append(f"{expr}: " + json.dumps(prom.query(expr)))
        self.assertEqual(empty, [], "panels that draw nothing")

    def check_site_silent(self, prom, fed):
        self.assertEqual(prom.firing("FlSiteSilent"), [])
        fed.clients["site-b"].terminate()
        fed.clients["site-b"].wait(timeout=30)
        fired = wait_until(lambda: prom.firing("FlSiteSilent"), SILENT_AFTER + 30,
                           "FlSiteSilent to fire", interval=0.5)
        self.assertEqual([a["site"] for a in fired], ["site-b"])
        self.assertEqual(fired[0]["severity"], "warning")
        # The operator's view has the alert too: the federation dashboard's "Alerts firing".
        self.assertGreaterEqual(
            float(prom.query('count(ALERTS{alertstate="firing"}) or vector(0)')[0]["value"][1]),
            1)


if __name__ == "__main__":
    if shutil.which("prometheus") is None or shutil.which("promtool") is None:
        print("SKIP: Debian's prometheus package (prometheus, promtool) is not installed; "
              "scripts/deps.sh installs it")
        sys.exit(77)
    fedlib.setup(sys.argv[1], sys.argv[2])
    unittest.main(argv=[sys.argv[0]] + sys.argv[3:], verbosity=2)
