"""The kits of deploy/ checked with the tools Debian 12 offers, each against what the code really
does (the paths `flctl provision --installed` writes, the metrics the daemons export):
  systemd     `systemd-analyze verify` and `security --offline` of both units, and the kit of
              `flctl provision --installed` matches their folders and command lines
  prometheus  `promtool check config`, `check rules` and `test rules` (a case for every alert),
              and every metric a rule names is one the daemons export
  grafana     the dashboards are what make_dashboards.py writes, well-formed, every expression
              parses (promtool) and names only exported metrics
  kubernetes  `kubectl kustomize` renders the manifests with a real provisioned kit; every
              object round-trips through the Kubernetes API models of python3-kubernetes
              (unknown or misplaced fields show up); probes, ports, mounts and the kit agree
              with the installed layout; pod security "restricted" holds
  container   `shellcheck` of the build script; the Containerfiles run as a non-root uid from
              Debian's packages
(The monitoring kit against a real Prometheus and real daemons: prometheus_test.py.)

Run by CTest: deploy_test.py BIN_DIR WORK_DIR DeployTest.NAME. Exit status 77 (CTest: skipped)
when the test's tool is missing, with the reason on stdout."""
import glob
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import unittest

import yaml

ROOT = os.path.abspath(os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
DEPLOY = os.path.join(ROOT, "deploy")
BIN = WORK = None


def run(*args, cwd=None, check=True, stdin=None):
    result = subprocess.run([str(a) for a in args], capture_output=True, text=True, cwd=cwd,
                            input=stdin, timeout=300)
    if check and result.returncode != 0:
        raise AssertionError(f"{args} failed ({result.returncode}):\n{result.stdout}"
                             f"{result.stderr}")
    return result


def need(tool, package):
    if shutil.which(tool) is None:
        raise unittest.SkipTest(f"{tool} is not installed (Debian package {package}; "
                                "scripts/deps.sh installs it)")


def provision_installed(out):
    """A consortium provisioned for the installed layout; returns the kits' folder."""
    run(f"{BIN}/flctl", "provision", "--out", out, "--installed", "--coordinator-address",
        "fl.example.org:7443", "--sites", "hospital-a", "--admins", "operator",
        "--data-root", "/srv/dicom")
    return out


def text_config(path):
    """The top-level scalar fields and `tls { }` fields of a text-format config."""
    fields = {}
    with open(path) as f:
        text = f.read()
    for key, value in re.findall(r'^(\w+): "([^"]*)"', text, re.M):
        fields[key] = value
    for key, value in re.findall(r'^\s+(\w+_file): "([^"]*)"', text, re.M):
        fields["tls." + key] = value
    return fields


def exported_metrics():
    """Every metric name the daemons export (their metrics.cc), histograms with their series."""
    names = {"up", "ALERTS", "ALERTS_FOR_STATE"}
    for path in ("server/metrics.cc", "client/metrics.cc"):
        with open(os.path.join(ROOT, path)) as f:
            text = f.read()
        for name in re.findall(r'\.Name\("([a-z0-9_]+)"\)', text):
            names.add(name)
            names.update(name + s for s in ("_bucket", "_sum", "_count"))
    return names


def metric_names(expr):
    """fl_* metric names an expression reads (label names such as fl_job are not metrics)."""
    expr = re.sub(r'\{[^}]*\}', "", expr)  # label matchers
    expr = re.sub(r'\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)', "", expr)
    return set(re.findall(r'(?<![\w:$])(fl_[a-z0-9_]+)', expr))


def unit_settings(path):
    settings = {}
    with open(path) as f:
        for line in f:
            if "=" in line and not line.startswith("#"):
                key, _, value = line.strip().partition("=")
                settings.setdefault(key, []).append(value)
    return settings


class DeployTest(unittest.TestCase):
    def setUp(self):
        self.tmp = tempfile.mkdtemp(dir=WORK)

    def tearDown(self):
        shutil.rmtree(self.tmp, ignore_errors=True)

    # --- systemd ---------------------------------------------------------------------------

    def test_systemd_units(self):
        need("systemd-analyze", "systemd")
        units = sorted(glob.glob(f"{DEPLOY}/systemd/*.service"))
        self.assertEqual([os.path.basename(u) for u in units],
                         ["fl-client.service", "fl-coordinator.service"])
        for unit in units:
            # verify checks that ExecStart exists: the copy runs the binaries just built.
            with open(unit) as f:
                text = f.read().replace("/opt/fl/current/bin/", f"{BIN}/")
            copy = os.path.join(self.tmp, os.path.basename(unit))
            with open(copy, "w") as f:
                f.write(text)
            checked = run("systemd-analyze", "verify", copy, check=False)
            self.assertEqual((checked.returncode, checked.stdout + checked.stderr), (0, ""),
                             f"systemd-analyze verify {unit}")
            # Exposure 0 (locked down) .. 10 (unprotected); ours score about 2.
            security = run("systemd-analyze", "security", "--offline=yes", "--threshold=25",
                           copy, check=False)
            self.assertEqual(security.returncode, 0, security.stdout[-3000:])
            settings = unit_settings(unit)
            for key, value in [("NoNewPrivileges", "yes"), ("ProtectSystem", "strict"),
                               ("ProtectHome", "yes"), ("PrivateTmp", "yes"),
                               ("CapabilityBoundingSet", ""), ("Restart", "on-failure"),
                               ("StateDirectoryMode", "0700"), ("UMask", "0077")]:
                self.assertEqual(settings.get(key), [value], f"{unit}: {key}")
            self.assertNotIn("root", settings["User"][0])

    def test_systemd_units_take_the_installed_kit(self):
        """The kit of `flctl provision --installed` drops into the units' folders unchanged."""
        kits = provision_installed(os.path.join(self.tmp, "pki"))
        with open(f"{DEPLOY}/systemd/fl.sysusers.conf") as f:
            users = {line.split()[1] for line in f if line.startswith("u ")}
        for daemon, kit, conf in [("fl-coordinator", "coordinator", "coordinator.conf"),
                                  ("fl-client", "sites/hospital-a", "client.conf")]:
            settings = unit_settings(f"{DEPLOY}/systemd/{daemon}.service")
            config_dir = "/etc/" + settings["ConfigurationDirectory"][0]
            state_dir = "/var/lib/" + settings["StateDirectory"][0]
            self.assertEqual(settings["ExecStart"],
                             [f"/opt/fl/current/bin/{daemon} --config {config_dir}/{conf}"])
            self.assertIn(settings["User"][0], users)
            fields = text_config(f"{kits}/{kit}/{conf}")
            self.assertEqual(fields["state_dir"], state_dir)
            for key in ("tls.ca_file", "tls.cert_file", "tls.key_file"):
                self.assertEqual(os.path.dirname(fields[key]), config_dir, key)
                self.assertTrue(os.path.exists(f"{kits}/{kit}/{os.path.basename(fields[key])}"))
            self.assertIn("metrics_address", fields)

    # --- Prometheus --------------------------------------------------------------------------

    def test_prometheus_config_rules_and_alert_tests(self):
        need("promtool", "prometheus")
        folder = f"{DEPLOY}/prometheus"
        run("promtool", "check", "config", "prometheus.yml", cwd=folder)
        rules = sorted(glob.glob(f"{folder}/rules/*.yml"))
        run("promtool", "check", "rules", *rules)
        tests = sorted(glob.glob(f"{folder}/tests/*.test.yml"))
        run("promtool", "test", "rules", *tests, cwd=folder)
        alerts, exprs = set(), []
        for path in rules:
            with open(path) as f:
                for group in yaml.safe_load(f)["groups"]:
                    for rule in group["rules"]:
                        exprs.append(rule["expr"])
                        if "alert" in rule:
                            alerts.add(rule["alert"])
        tested = set()
        for path in tests:
            with open(path) as f:
                for case in yaml.safe_load(f)["tests"]:
                    for check in case.get("alert_rule_test", []):
                        if check.get("exp_alerts"):  # a case where it fires, not only silence
                            tested.add(check["alertname"])
        self.assertEqual(alerts - tested, set(), "alerts without a firing test case")
        self.assertGreaterEqual(len(alerts), 12)
        for expr in exprs:
            self.assertEqual(metric_names(expr) - exported_metrics(), set(), expr)

    # --- Grafana -------------------------------------------------------------------------------

    def test_grafana_dashboards(self):
        folder = f"{DEPLOY}/grafana"
        fresh = os.path.join(self.tmp, "dashboards")
        run(sys.executable, f"{folder}/make_dashboards.py", fresh)
        names = sorted(os.listdir(fresh))
        self.assertEqual(names, sorted(os.listdir(f"{folder}/dashboards")))
        self.assertEqual(names, ["fl-federation.json", "fl-job.json", "fl-site.json"])
        exprs = []
        for name in names:
            with open(f"{fresh}/{name}") as f, open(f"{folder}/dashboards/{name}") as g:
                self.assertEqual(f.read(), g.read(), f"{name} differs from make_dashboards.py's")
            with open(f"{folder}/dashboards/{name}") as f:
                board = json.load(f)
            self.assertEqual(board["uid"], name[:-5])
            ids = [p["id"] for p in board["panels"]]
            self.assertEqual(len(ids), len(set(ids)), name)
            for panel in board["panels"]:
                pos = panel["gridPos"]
                self.assertLessEqual(pos["x"] + pos["w"], 24, panel["title"])
                self.assertTrue(panel["targets"], panel["title"])
                for t in panel["targets"]:
                    self.assertEqual(t["datasource"]["uid"], "${datasource}")
                    exprs.append((name, panel["title"], t["expr"]))
        # Every expression parses: promtool checks them as recording rules, offline.
        rules = {"groups": [{"name": "dashboards", "rules": [
            {"record": f"dashboard:expr{i}",
             "expr": e.replace("$fl_job", "j").replace("$instance", ".*")
                      .replace("$__rate_interval", "1m")}
            for i, (_, _, e) in enumerate(exprs)]}]}
        path = os.path.join(self.tmp, "dashboards.rules.yml")
        with open(path, "w") as f:
            yaml.safe_dump(rules, f)
        if shutil.which("promtool"):
            run("promtool", "check", "rules", path)
        for board, title, expr in exprs:
            self.assertEqual(metric_names(expr) - exported_metrics(), set(),
                             f"{board} / {title}: {expr}")
        with open(f"{folder}/provisioning/dashboards/fl.yml") as f:
            self.assertEqual(yaml.safe_load(f)["providers"][0]["type"], "file")
        with open(f"{folder}/provisioning/datasources/prometheus.yml") as f:
            self.assertEqual(yaml.safe_load(f)["datasources"][0]["type"], "prometheus")

    # --- Kubernetes ----------------------------------------------------------------------------

    def render_kubernetes(self):
        """The manifests rendered by kustomize with a real provisioned coordinator kit."""
        need("kubectl", "kubernetes-client")
        kits = provision_installed(os.path.join(self.tmp, "pki"))
        folder = os.path.join(self.tmp, "kubernetes")
        shutil.copytree(f"{DEPLOY}/kubernetes", folder)
        shutil.copytree(f"{kits}/coordinator", f"{folder}/kit")
        rendered = run("kubectl", "kustomize", folder).stdout
        return kits, [d for d in yaml.safe_load_all(rendered) if d]

    def test_kubernetes_manifests(self):
        kits, objects = self.render_kubernetes()
        by_kind = {}
        for obj in objects:
            by_kind.setdefault(obj["kind"], []).append(obj)
        self.assertEqual(sorted(by_kind), ["Namespace", "NetworkPolicy", "Secret", "Service",
                                           "ServiceMonitor", "StatefulSet"])
        self.check_api_models(objects)
        config = text_config(f"{kits}/coordinator/coordinator.conf")
        grpc_port = int(config["listen_address"].rsplit(":", 1)[1])
        metrics_port = int(config["metrics_address"].rsplit(":", 1)[1])
        (sts,) = by_kind["StatefulSet"]
        spec = sts["spec"]["template"]["spec"]
        self.assertEqual(sts["spec"]["replicas"], 1)
        (container,) = spec["containers"]
        ports = {p["name"]: p["containerPort"] for p in container["ports"]}
        self.assertEqual(ports, {"grpc": grpc_port, "metrics": metrics_port})
        self.assertEqual(container["args"], ["--config", "/etc/fl-coordinator/coordinator.conf"])
        for probe, path in [("livenessProbe", "/healthz"), ("readinessProbe", "/readyz"),
                            ("startupProbe", "/healthz")]:
            self.assertEqual(container[probe]["httpGet"], {"path": path, "port": "metrics"})
        self.assertTrue(container["resources"]["limits"]["memory"])
        self.assertTrue(container["resources"]["limits"]["cpu"])
        mounts = {m["mountPath"]: m for m in container["volumeMounts"]}
        self.assertEqual(mounts[config["state_dir"]]["name"],
                         sts["spec"]["volumeClaimTemplates"][0]["metadata"]["name"])
        kit_dir = os.path.dirname(config["tls.key_file"])
        self.assertTrue(mounts[kit_dir]["readOnly"])
        # Pod security "restricted" (the namespace enforces it) for every container.
        pod = spec["securityContext"]
        self.assertTrue(pod["runAsNonRoot"])
        self.assertEqual(pod["seccompProfile"]["type"], "RuntimeDefault")
        for c in spec["containers"] + spec["initContainers"]:
            sc = c["securityContext"]
            self.assertFalse(sc["allowPrivilegeEscalation"], c["name"])
            self.assertTrue(sc["readOnlyRootFilesystem"], c["name"])
            self.assertEqual(sc["capabilities"]["drop"], ["ALL"], c["name"])
        # The Secret holds the whole kit; the init container installs every file of it.
        (secret,) = by_kind["Secret"]
        self.assertEqual(sorted(secret["data"]), sorted(os.listdir(f"{kits}/coordinator")))
        secret_volume = [v for v in spec["volumes"] if "secret" in v]
        self.assertEqual(secret_volume[0]["secret"]["secretName"], secret["metadata"]["name"])
        install = " ".join(spec["initContainers"][0]["args"])
        for name in secret["data"]:
            self.assertIn(f"/run/fl-kit/{name}", install)
        self.assertIn("install -m 0600 /run/fl-kit/key.pem", install)
        # The Services reach the container's named ports; the ServiceMonitor scrapes metrics
        # as prometheus.yml does (no relabelling: the daemons' label is fl_job already).
        for svc in by_kind["Service"]:
            for p in svc["spec"]["ports"]:
                self.assertIn(p["targetPort"], ports)
        (monitor,) = by_kind["ServiceMonitor"]
        with open(f"{DEPLOY}/prometheus/prometheus.yml") as f:
            scrape = yaml.safe_load(f)["scrape_configs"][0]
        self.assertNotIn("metric_relabel_configs", scrape)
        self.assertNotIn("metricRelabelings", monitor["spec"]["endpoints"][0])
        self.assertEqual(monitor["spec"]["endpoints"][0]["port"], "metrics")

    def check_api_models(self, objects):
        """Each built-in object deserialised into python3-kubernetes's models and serialised
        again must come back whole: a field the API does not have, or has elsewhere, is lost
        on the way and named here."""
        try:
            from kubernetes import client
        except ImportError:
            print("note: python3-kubernetes missing, API model round trip not checked")
            return
        api = client.ApiClient()

        class Response:
            def __init__(self, obj):
                self.data = json.dumps(obj)

        for obj in objects:
            if obj["kind"] == "ServiceMonitor":  # a CRD: no model
                continue
            model = api.deserialize(Response(obj), "V1" + obj["kind"])
            back = json.loads(json.dumps(api.sanitize_for_serialization(model)))
            self.assertEqual(lost_fields(obj, back), [], obj["kind"])

    # --- Containers ----------------------------------------------------------------------------

    def test_container_build_script_and_containerfiles(self):
        folder = f"{DEPLOY}/container"
        run("bash", "-n", f"{folder}/build.sh")
        if shutil.which("shellcheck"):
            run("shellcheck", f"{folder}/build.sh")
        else:
            print("note: shellcheck missing, build.sh only parsed")
        self.assertEqual(run(f"{folder}/build.sh", "--help").returncode, 0)
        self.assertEqual(run(f"{folder}/build.sh", "--bogus", check=False).returncode, 2)
        for daemon in ("coordinator", "client"):
            with open(f"{folder}/Containerfile.{daemon}") as f:
                lines = [l.split(None, 1) for l in f.read().splitlines()
                         if l and not l.startswith("#")]
            instructions = {}
            for word, rest in lines:
                instructions.setdefault(word, []).append(rest)
            self.assertEqual(instructions["FROM"], ["scratch"])
            self.assertEqual(instructions["ADD"], ["rootfs.tar /"])
            self.assertEqual(instructions["USER"], ["10001:10001"])
            self.assertEqual(json.loads(instructions["ENTRYPOINT"][0]),
                             [f"/usr/local/bin/fl-{daemon}"])
            conf = "coordinator.conf" if daemon == "coordinator" else "client.conf"
            self.assertEqual(json.loads(instructions["CMD"][0]),
                             ["--config", f"/etc/fl-{daemon}/{conf}"])
            self.assertEqual(json.loads(instructions["VOLUME"][0]), [f"/var/lib/fl-{daemon}"])
            # Every shared library of the built binary comes from a Debian package, so the
            # image's root file system can be made of Debian packages only.
            if os.path.exists(f"{BIN}/fl-{daemon}"):
                linked = run("ldd", f"{BIN}/fl-{daemon}").stdout
                self.assertNotIn("not found", linked)
                libs = re.findall(r"=> (/\S+)", linked)
                paths = sorted(set(libs) | {os.path.realpath(lib) for lib in libs})
                owned = run("dpkg-query", "-S", *paths, check=False).stdout
                owned = {line.split(": ", 1)[1] for line in owned.splitlines() if ": " in line}
                for lib in libs:
                    self.assertTrue(lib in owned or os.path.realpath(lib) in owned,
                                    f"{lib} is in no Debian package")


def lost_fields(original, back, path=""):
    """Paths of `original` missing or different in `back`."""
    lost = []
    if isinstance(original, dict):
        if not isinstance(back, dict):
            return [path or "/"]
        for key, value in original.items():
            if key not in back:
                lost.append(f"{path}/{key}")
            else:
                lost.extend(lost_fields(value, back[key], f"{path}/{key}"))
    elif isinstance(original, list):
        if not isinstance(back, list) or len(back) != len(original):
            return [path]
        for i, (a, b) in enumerate(zip(original, back)):
            lost.extend(lost_fields(a, b, f"{path}[{i}]"))
    elif original != back and str(original) != str(back):
        lost.append(f"{path}: {original!r} became {back!r}")
    return lost


if __name__ == "__main__":
    BIN, WORK = os.path.abspath(sys.argv[1]), os.path.abspath(sys.argv[2])
    os.makedirs(WORK, exist_ok=True)
    program = unittest.main(argv=[sys.argv[0]] + sys.argv[3:], verbosity=2, exit=False)
    result = program.result
    if result.skipped and not result.failures and not result.errors and \
            len(result.skipped) == result.testsRun:
        sys.exit(77)
    sys.exit(0 if result.wasSuccessful() else 1)
