"""End-to-end tests with real processes: fl-coordinator and three fl-client daemons on loopback
with freshly provisioned certificates, plus the refusals of mutual TLS.

Run by CTest: federation_test.py BIN_DIR WORK_DIR [unittest args]."""
import hashlib
import json
import os
import shutil
import signal
import socket
import ssl
import struct
import subprocess
import sys
import time
import unittest
import urllib.request

BIN = WORK = None
SITES = {  # site -> labels it has
    "site-a": "cardiomegaly,effusion_right,effusion_left,infiltrate_right",
    "site-b": "cardiomegaly,effusion_right",
    "site-c": "infiltrate_right,effusion_left",
}


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run(*args, check=True, timeout=120):
    result = subprocess.run([str(a) for a in args], capture_output=True, text=True, timeout=timeout)
    if check and result.returncode != 0:
        raise AssertionError(f"{args} failed ({result.returncode}): {result.stderr}")
    return result


class Federation:
    """A provisioned consortium with a running coordinator."""

    def __init__(self, name, admins="operator"):
        self.dir = os.path.join(WORK, name)
        shutil.rmtree(self.dir, ignore_errors=True)
        os.makedirs(self.dir)
        self.port = free_port()
        self.procs = []
        run(f"{BIN}/flctl", "provision", "--out", f"{self.dir}/pki", "--coordinator-address",
            f"127.0.0.1:{self.port}", "--sites", ",".join(SITES), "--admins", admins,
            "--data-root", f"{self.dir}/data")
        self.admin = f"{self.dir}/pki/admins/operator/admin.conf"

    def start_coordinator(self, extra=""):
        conf = f"{self.dir}/pki/coordinator/coordinator.conf"
        with open(conf, "a") as f:
            f.write(f'port_file: "{self.dir}/port"\nmetrics_address: "127.0.0.1:0"\n' + extra)
        self.spawn("coordinator", f"{BIN}/fl-coordinator", "--config", conf)
        for _ in range(200):
            if os.path.exists(f"{self.dir}/port") and os.path.exists(f"{self.dir}/port.metrics"):
                break
            time.sleep(0.05)
        self.metrics_port = int(open(f"{self.dir}/port.metrics").read())

    def start_client(self, site, count=48, seed=1, extra=""):
        data = f"{self.dir}/data/{site}"
        run(f"{BIN}/flctl", "phantom", "--out", data, "--count", count, "--size", 64, "--seed",
            seed, "--labels", SITES[site], "--site", site)
        conf = f"{self.dir}/pki/sites/{site}/client.conf"
        with open(conf, "a") as f:
            f.write('exit_when_idle: true\nloader_threads: 1\n' + extra)
        return self.spawn(site, f"{BIN}/fl-client", "--config", conf)

    def spawn(self, name, *args):
        log = open(f"{self.dir}/{name}.log", "w")
        proc = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT)
        self.procs.append(proc)
        return proc

    def flctl(self, *args, check=True):
        return run(f"{BIN}/flctl", *args, "--config", self.admin, check=check, timeout=300)

    def submit(self, spec_text):
        """Submits a job written as text-format JobSpec; returns its id."""
        path = f"{self.dir}/job-{len(os.listdir(self.dir))}.conf"
        with open(path, "w") as f:
            f.write(spec_text)
        return self.flctl("job", "submit", "--spec", path).stdout.strip()

    def status(self, job_id):
        return json.loads(self.flctl("job", "status", job_id, "--json").stdout)

    def wait(self, job_id, check=True):
        """Waits for the job to end and returns its status."""
        self.flctl("job", "wait", job_id, check=check)
        return self.status(job_id)

    def metrics(self):
        with urllib.request.urlopen(f"http://127.0.0.1:{self.metrics_port}/metrics", timeout=10) as r:
            return r.read().decode()

    def stop(self):
        for p in self.procs:
            if p.poll() is None:
                p.terminate()
        for p in self.procs:
            try:
                p.wait(timeout=10)
            except subprocess.TimeoutExpired:
                p.kill()


def metric(text, name):
    for line in text.splitlines():
        if line.startswith(name + " ") or line.startswith(name + "{}"):
            return float(line.split()[-1])
    raise AssertionError(f"metric {name} not exported")


def read_safetensors(path):
    with open(path, "rb") as f:
        (n,) = struct.unpack("<Q", f.read(8))
        return json.loads(f.read(n))


class FederationTest(unittest.TestCase):
    def test_three_sites_train_two_rounds(self):
        fed = Federation("two_rounds")
        try:
            fed.start_coordinator()
            for i, site in enumerate(SITES):
                fed.start_client(site, seed=i + 1)
            labels = ["cardiomegaly", "effusion_right", "effusion_left", "infiltrate_right"]
            job_id = fed.submit(
                'name: "it" model: "smallcnn" image_size: 32 rounds: 2 local_steps: 3 '
                'batch_size: 8 min_sites: 3 start_timeout_seconds: 60 round_deadline_seconds: 120 '
                + " ".join(f'labels: "{label}"' for label in labels))
            status = fed.wait(job_id)
            self.assertEqual(status["state"], "DONE")
            self.assertEqual(len(status["rounds"]), 2)
            for r in status["rounds"]:
                self.assertEqual(sorted(r["sites"]), sorted(SITES))
            # Every site evaluated the final model on its own labels only.
            reports = {s["site"]: {m["label"] for m in s["test"]} for s in status["sites"]}
            for site, labels in SITES.items():
                self.assertEqual(reports[site], set(labels.split(",")))
            # The export is a safetensors file with PyTorch names and a sidecar.
            fed.flctl("export", job_id, "--out", f"{fed.dir}/model")
            header = read_safetensors(f"{fed.dir}/model/model.safetensors")
            self.assertEqual(header["fc.weight"]["shape"], [4, 64])
            sidecar = json.load(open(f"{fed.dir}/model/model.json"))
            self.assertEqual(sidecar["labels"], ["cardiomegaly", "effusion_right", "effusion_left",
                                                 "infiltrate_right"])
            text = fed.metrics()
            self.assertEqual(metric(text, "fl_coordinator_rounds_completed_total"), 2)
            sites = json.loads(fed.flctl("sites", "--json").stdout)["sites"]
            self.assertEqual(sorted(s["name"] for s in sites), sorted(SITES))
            # The clients exit by themselves once no job is left.
            for p in fed.procs[1:]:
                self.assertEqual(p.wait(timeout=60), 0)
        finally:
            fed.stop()

    def test_coordinator_killed_mid_job_resumes_and_clients_carry_on(self):
        fed = Federation("kill9")
        try:
            fed.start_coordinator()
            for i, site in enumerate(["site-a", "site-b"]):
                fed.start_client(site, seed=i + 1)
            job_id = fed.submit('name: "k" model: "smallcnn" image_size: 32 rounds: 4 '
                                'local_steps: 3 batch_size: 8 min_sites: 2 '
                                'start_timeout_seconds: 60 round_deadline_seconds: 120 '
                                'labels: "cardiomegaly"')
            for _ in range(600):  # until round 0 is committed
                if fed.status(job_id).get("rounds_done", 0) >= 1:
                    break
                time.sleep(0.1)
            coordinator = fed.procs[0]
            coordinator.send_signal(signal.SIGKILL)
            coordinator.wait()
            fed.spawn("coordinator-restarted", f"{BIN}/fl-coordinator", "--config",
                      f"{fed.dir}/pki/coordinator/coordinator.conf")
            fed.procs[0] = fed.procs.pop()  # keep the clients at procs[1:]
            status = fed.wait(job_id)
            self.assertEqual(status["state"], "DONE")
            self.assertEqual([r["round"] if "round" in r else 0 for r in status["rounds"]],
                             [0, 1, 2, 3])
            for r in status["rounds"]:
                self.assertEqual(sorted(r["sites"]), ["site-a", "site-b"])
            for p in fed.procs[1:]:
                self.assertEqual(p.wait(timeout=60), 0)  # the clients reconnected by themselves
        finally:
            fed.stop()

    def test_dp_round_over_the_site_budget_is_declined_with_the_reason(self):
        fed = Federation("dp_budget")
        try:
            fed.start_coordinator()
            fed.start_client("site-b", seed=2)
            # q = 8/~38, sigma 0.3, 50 steps: far beyond the kit's cap of epsilon 10.
            job_id = fed.submit('name: "dp" model: "smallcnn" image_size: 32 rounds: 1 '
                                'local_steps: 50 batch_size: 8 min_sites: 1 '
                                'start_timeout_seconds: 60 round_deadline_seconds: 20 '
                                'labels: "cardiomegaly" '
                                'dp { enabled: true noise_multiplier: 0.3 delta: 1e-6 }')
            status = fed.wait(job_id, check=False)
            self.assertEqual(status["state"], "FAILED")
            self.assertIn("site-b: privacy budget", status["message"])
            self.assertIn("fl_coordinator_task_declines_total 3", fed.metrics())
        finally:
            fed.stop()

    def test_dp_job_trains_and_reports_the_privacy_spent(self):
        fed = Federation("dp_job")
        try:
            fed.start_coordinator()
            fed.start_client("site-b", seed=2)
            job_id = fed.submit('name: "dp" model: "smallcnn" image_size: 32 rounds: 1 '
                                'local_steps: 3 batch_size: 8 min_sites: 1 '
                                'start_timeout_seconds: 60 round_deadline_seconds: 120 '
                                'labels: "cardiomegaly" dp { enabled: true noise_multiplier: 1.0 '
                                'clip_norm: 1.0 delta: 1e-6 }')
            status = fed.wait(job_id)
            self.assertEqual(status["state"], "DONE")
            privacy = status["sites"][0]["privacy"]
            self.assertGreater(privacy["epsilon"], 0.5)
            self.assertLess(privacy["epsilon"], 10)
            self.assertEqual(privacy["steps"], "3")  # uint64 prints as a JSON string
            self.assertIn('fl_coordinator_site_privacy_epsilon{job="' + job_id, fed.metrics())
            # The site's ledger holds the round (flctl privacy ledger reads it).
            ledger = f"{fed.dir}/pki/sites/site-b/state/privacy.db"
            out = run(f"{BIN}/flctl", "privacy", "ledger", "--ledger", ledger, "--dataset",
                      f"{fed.dir}/data/site-b", "--delta", "1e-6").stdout
            self.assertAlmostEqual(float(out.split()[0]), privacy["epsilon"], places=6)
        finally:
            fed.stop()

    def test_revoked_certificate_is_refused(self):
        fed = Federation("revoked", admins="operator,auditor")
        try:
            cert = f"{fed.dir}/pki/admins/auditor/cert.pem"
            fingerprint = run(f"{BIN}/flctl", "cert", "fingerprint", cert).stdout.strip()
            der = ssl.PEM_cert_to_DER_cert(open(cert).read())
            self.assertEqual(fingerprint, hashlib.sha256(der).hexdigest())
            fed.start_coordinator(f'revoked_certificates: "{fingerprint.upper()}"\n')
            r = run(f"{BIN}/flctl", "job", "list", "--config",
                    f"{fed.dir}/pki/admins/auditor/admin.conf", check=False)
            self.assertNotEqual(r.returncode, 0)
            self.assertIn("revoked", r.stderr)
            self.assertEqual(fed.flctl("job", "list").returncode, 0)  # the operator is not
        finally:
            fed.stop()

    def test_refuses_plaintext_foreign_ca_and_wrong_role(self):
        fed = Federation("refusals")
        other = Federation("other_ca")
        try:
            fed.start_coordinator()
            # A plaintext gRPC client: the server wants a TLS handshake and never answers HTTP/2.
            with socket.create_connection(("127.0.0.1", fed.port), timeout=5) as s:
                s.sendall(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + b"\x00\x00\x00\x04\x00\x00\x00\x00\x00")
                try:
                    reply = s.recv(64)
                except (ConnectionResetError, socket.timeout):
                    reply = b""
                self.assertFalse(reply.startswith(b"\x00\x00"), "plaintext HTTP/2 was answered")
            # TLS without a client certificate: the server aborts the handshake (with TLS 1.3 the
            # client sees it as an alert or a closed connection on its first read).
            ctx = ssl.create_default_context(cafile=f"{fed.dir}/pki/ca/ca.pem")
            ctx.check_hostname = False
            try:
                with socket.create_connection(("127.0.0.1", fed.port), timeout=5) as raw:
                    with ctx.wrap_socket(raw) as tls:
                        tls.sendall(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n")
                        reply = tls.recv(64)
            except (ssl.SSLError, ConnectionResetError, BrokenPipeError):
                reply = b""
            self.assertEqual(reply, b"", "a client without a certificate was answered")
            # An admin kit of another consortium (another CA) is refused.
            foreign = f"{other.dir}/pki/admins/operator/admin.conf"
            with open(foreign) as f:
                text = f.read().replace(f"127.0.0.1:{other.port}", f"127.0.0.1:{fed.port}")
            with open(foreign, "w") as f:
                f.write(text)
            r = run(f"{BIN}/flctl", "job", "list", "--config", foreign, check=False)
            self.assertNotEqual(r.returncode, 0)
            # A site certificate cannot call admin RPCs.
            site_conf = f"{fed.dir}/site-as-admin.conf"
            kit = f"{fed.dir}/pki/sites/site-a"
            with open(site_conf, "w") as f:
                f.write(f'coordinator_address: "127.0.0.1:{fed.port}"\n'
                        f'tls {{ ca_file: "{kit}/ca.pem" cert_file: "{kit}/cert.pem" '
                        f'key_file: "{kit}/key.pem" }}\n')
            r = run(f"{BIN}/flctl", "job", "list", "--config", site_conf, check=False)
            self.assertNotEqual(r.returncode, 0)
            self.assertIn("admin certificate", r.stderr)
            # The real admin works.
            self.assertEqual(fed.flctl("job", "list").returncode, 0)
        finally:
            fed.stop()


if __name__ == "__main__":
    BIN, WORK = os.path.abspath(sys.argv[1]), os.path.abspath(sys.argv[2])
    os.makedirs(WORK, exist_ok=True)
    unittest.main(argv=[sys.argv[0]] + sys.argv[3:], verbosity=2)
