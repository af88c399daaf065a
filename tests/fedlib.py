"""Helpers of the end-to-end tests (federation_test.py): a provisioned consortium whose daemons
run as real processes, metric parsing, and the broken inputs some scenarios feed them (an
expired certificate, corrupt DICOM files)."""
import datetime
import errno
import json
import os
import re
import shutil
import socket
import struct
import subprocess
import tempfile
import time
import urllib.request

BIN = WORK = None  # set by setup() from the command line
SITES = {  # site -> labels it has
    "site-a": "cardiomegaly,effusion_right,effusion_left,infiltrate_right",
    "site-b": "cardiomegaly,effusion_right",
    "site-c": "infiltrate_right,effusion_left",
}


def setup(bin_dir, work_dir):
    global BIN, WORK
    BIN, WORK = os.path.abspath(bin_dir), os.path.abspath(work_dir)
    os.makedirs(WORK, exist_ok=True)


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run(*args, check=True, timeout=120):
    result = subprocess.run([str(a) for a in args], capture_output=True, text=True, timeout=timeout)
    if check and result.returncode != 0:
        raise AssertionError(f"{args} failed ({result.returncode}): {result.stderr}")
    return result


def wait_until(predicate, timeout, what, interval=0.1):
    """Polls `predicate` until it returns a true value (returned) or fails after `timeout` s."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(interval)


def metric(text, name, labels=None):
    """The value of metric `name` (with exactly `labels`, a dict, if given) in a /metrics text."""
    want = "" if not labels else "{" + ",".join(f'{k}="{v}"' for k, v in labels.items()) + "}"
    for line in text.splitlines():
        if line.startswith("#"):
            continue
        key, _, value = line.rpartition(" ")
        if key == name + want or (not labels and key == name + "{}"):
            return float(value)
    raise AssertionError(f"metric {name}{want} not exported")


def read_safetensors(path):
    with open(path, "rb") as f:
        (n,) = struct.unpack("<Q", f.read(8))
        return json.loads(f.read(n))


def http_metrics(port):
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as r:
        return r.read().decode()


class Federation:
    """A provisioned consortium with a running coordinator."""

    def __init__(self, name, admins="operator"):
        self.dir = os.path.join(WORK, name)
        shutil.rmtree(self.dir, ignore_errors=True)
        os.makedirs(self.dir)
        self.port = free_port()
        self.procs = []  # the coordinator first, then the clients in start order
        self.clients = {}  # site -> its fl-client process
        self.provision_args = [
            f"{BIN}/flctl", "provision", "--out", f"{self.dir}/pki", "--coordinator-address",
            f"127.0.0.1:{self.port}", "--sites", ",".join(SITES), "--admins", admins,
            "--data-root", f"{self.dir}/data", "--allow-non-dp"]
        run(*self.provision_args)
        self.admin = f"{self.dir}/pki/admins/operator/admin.conf"
        self.coordinator_conf = f"{self.dir}/pki/coordinator/coordinator.conf"

    def site_conf(self, site):
        return f"{self.dir}/pki/sites/{site}/client.conf"

    def edit_site_conf(self, site, edit):
        """Rewrites the site's client.conf with `edit(text) -> text`."""
        with open(self.site_conf(site)) as f:
            text = f.read()
        with open(self.site_conf(site), "w") as f:
            f.write(edit(text))

    def set_policy(self, site, policy):
        """Replaces the site's `policy { ... }` (the kit's require_dp: false) by `policy`."""
        self.edit_site_conf(site, lambda text: re.sub(r"policy \{[^}]*\}\n?", "", text) +
                            f"policy {{ {policy} }}\n")

    def set_tls_reload(self, seconds):
        """Makes the coordinator and every site reread their TLS files every `seconds`."""
        for conf in [self.coordinator_conf] + [self.site_conf(s) for s in SITES]:
            with open(conf) as f:
                text = f.read()
            assert text.count("tls {") == 1, conf
            with open(conf, "w") as f:
                f.write(text.replace("tls {", f"tls {{\n  reload_seconds: {seconds}", 1))

    def renew(self, names):
        """Re-keys the named kits in place with `flctl provision --renew`."""
        return run(*self.provision_args, "--renew", ",".join(names))

    def start_coordinator(self, extra="", wrap=()):
        """`wrap`: a command prefix the coordinator runs under (it must exec its arguments)."""
        with open(self.coordinator_conf, "a") as f:
            f.write(f'port_file: "{self.dir}/port"\nmetrics_address: "127.0.0.1:0"\n' + extra)
        self.spawn("coordinator", *wrap, f"{BIN}/fl-coordinator", "--config",
                   self.coordinator_conf)
        # The metrics port is written before the gRPC port, which is written once listening.
        wait_until(lambda: all(os.path.exists(f"{self.dir}/{n}") for n in ("port", "port.metrics")),
                   30, "the coordinator's port files", interval=0.05)
        with open(f"{self.dir}/port.metrics") as f:
            self.metrics_port = int(f.read())

    def make_data(self, site, count=48, seed=1):
        run(f"{BIN}/flctl", "phantom", "--out", f"{self.dir}/data/{site}", "--count", count,
            "--size", 64, "--seed", seed, "--labels", SITES[site], "--site", site)

    def start_client(self, site, count=48, seed=1, extra="", exit_when_idle=True,
                     metrics=False, make_data=True, wrap=()):
        if make_data:
            self.make_data(site, count, seed)
        with open(self.site_conf(site), "a") as f:
            f.write(f"exit_when_idle: {str(exit_when_idle).lower()}\nloader_threads: 1\n" +
                    ('metrics_address: "127.0.0.1:0"\n' if metrics else "") + extra)
        return self.restart_client(site, wrap)

    def restart_client(self, site, wrap=()):
        """Starts (again) the site's daemon from its config as it is; its log is appended to.
        `wrap` as for start_coordinator."""
        proc = self.spawn(site, *wrap, f"{BIN}/fl-client", "--config", self.site_conf(site))
        self.clients[site] = proc
        return proc

    def log(self, name):
        with open(f"{self.dir}/{name}.log", errors="replace") as f:
            return f.read()

    def spawn(self, name, *args):
        with open(f"{self.dir}/{name}.log", "a") as log:  # the child keeps its own descriptor
            proc = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT)
        self.procs.append(proc)
        return proc

    def flctl(self, *args, check=True, config=None):
        return run(f"{BIN}/flctl", *args, "--config", config or self.admin, check=check,
                   timeout=300)

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

    def committed(self, job_id):
        """{round: number of aggregated sites} of the job's rounds committed so far, from the
        coordinator's log (cheaper to poll than flctl, which loads LibTorch)."""
        pattern = re.escape(f"job {job_id} round ") + r"(\d+) committed: (\d+) sites"
        return {int(r): int(n) for r, n in re.findall(pattern, self.log("coordinator"))}

    def round_log(self, job_id):
        """{round: {"assigned": [sites], "opened": t, "committed": t or None}} from the
        coordinator's log, t in seconds since the epoch."""
        rounds = {}
        prefix = r"^(\S+) fl-coordinator: job " + re.escape(job_id) + r" round (\d+)"
        for line in self.log("coordinator").splitlines():
            opened = re.match(prefix + r": \d+ sites \((.*)\)$", line)
            committed = re.match(prefix + r" committed: ", line)
            if opened:
                rounds[int(opened[2])] = {"assigned": opened[3].split(", "),
                                          "opened": log_time(opened[1]), "committed": None}
            elif committed:
                rounds[int(committed[2])]["committed"] = log_time(committed[1])
        return rounds

    def wait_connected(self, sites, timeout=120):
        """Waits until `sites` sites hold a task stream (a job then sees them all at once)."""
        wait_until(lambda: metric(self.metrics(), "fl_coordinator_sites_connected") == sites,
                   timeout, f"{sites} connected sites", interval=0.2)

    def wait_rounds(self, job_id, rounds, timeout):
        """Waits until `rounds` rounds of the job are committed; returns committed()."""
        return wait_until(lambda: len(self.committed(job_id)) >= rounds and self.committed(job_id),
                          timeout, f"{rounds} committed rounds of {job_id}", interval=0.05)

    def metrics(self):
        return http_metrics(self.metrics_port)

    def client_metrics(self, site):
        """The /metrics text of a client started with metrics=True (its port is in its log)."""
        found = wait_until(lambda: re.search(r"fl-client: metrics on port (\d+)", self.log(site)),
                           30, f"the metrics port of {site}")
        return http_metrics(int(found.group(1)))

    def stop(self):
        for p in self.procs:
            if p.poll() is None:
                p.terminate()
        for p in self.procs:
            try:
                p.wait(timeout=10)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()


def small_tmpfs_wrap(mount_point, size):
    """A `start_coordinator` wrap that gives the coordinator a private mount namespace (a user
    namespace maps the caller to root there) with a tmpfs of `size` at `mount_point`: a disk it
    fills for real. The test reaches it through /proc/PID/root. None if unprivileged namespaces
    or tmpfs mounts are not allowed on this machine."""
    probe = tempfile.mkdtemp()
    try:
        ok = subprocess.run(["unshare", "--map-root-user", "--mount", "mount", "-t", "tmpfs",
                             "tmpfs", probe], capture_output=True).returncode == 0
    finally:
        os.rmdir(probe)
    if not ok:
        return None
    return ["unshare", "--map-root-user", "--mount", "sh", "-c",
            f'mkdir -p "{mount_point}" && mount -t tmpfs -o size={size} tmpfs "{mount_point}" '
            '&& exec "$0" "$@"']


def fill_disk(path):
    """Writes `path` until its file system has no byte left (ENOSPC)."""
    with open(path, "wb", buffering=0) as f:
        for block in (1 << 16, 1 << 12, 1):
            try:
                while True:
                    f.write(b"\0" * block)
            except OSError as e:
                if e.errno != errno.ENOSPC:
                    raise


def log_time(text):
    """Seconds since the epoch of a daemon log timestamp (2026-01-02T03:04:05.678Z)."""
    return datetime.datetime.strptime(text, "%Y-%m-%dT%H:%M:%S.%fZ").replace(
        tzinfo=datetime.timezone.utc).timestamp()


def round_sites(status):
    """{round: sorted site names whose updates were aggregated} of a job status."""
    return {r.get("round", 0): sorted(r.get("sites", [])) for r in status.get("rounds", [])}


_EXPIRED_CA_CONF = """[ca]
default_ca = expired
[expired]
database = {dir}/index.txt
new_certs_dir = {dir}
serial = {dir}/serial
default_md = sha256
policy = anything
unique_subject = no
x509_extensions = leaf
[anything]
organizationalUnitName = supplied
commonName = supplied
[leaf]
basicConstraints = critical,CA:FALSE
keyUsage = critical,digitalSignature
extendedKeyUsage = clientAuth
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid:always
"""


def make_expired_cert(ca_dir, out_dir, common_name, unit):
    """Issues out_dir/cert.pem (+ key.pem, mode 0600) for OU=unit, CN=common_name, signed by
    ca_dir/ca.key but valid only in January 2020, with the openssl CLI."""
    os.makedirs(out_dir, exist_ok=True)
    key, csr, cert = (f"{out_dir}/{n}" for n in ("key.pem", "req.csr", "cert.pem"))
    run("openssl", "req", "-new", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256",
        "-nodes", "-keyout", key, "-out", csr, "-subj", f"/OU={unit}/CN={common_name}")
    os.chmod(key, 0o600)
    with tempfile.TemporaryDirectory() as ca_state:
        open(f"{ca_state}/index.txt", "w").close()
        with open(f"{ca_state}/ca.cnf", "w") as f:
            f.write(_EXPIRED_CA_CONF.format(dir=ca_state))
        run("openssl", "ca", "-batch", "-config", f"{ca_state}/ca.cnf", "-cert",
            f"{ca_dir}/ca.pem", "-keyfile", f"{ca_dir}/ca.key", "-in", csr, "-out", cert,
            "-notext", "-preserveDN", "-create_serial", "-startdate", "20200101000000Z",
            "-enddate", "20200201000000Z")
    return cert, key


def _element(data, group, element, vr):
    """Offset of the value of an explicit-VR little-endian element with a 2-byte length."""
    tag = struct.pack("<HH", group, element) + vr
    at = data.find(tag)
    assert at >= 0, f"({group:04x},{element:04x}) not found"
    return at + 8


def write_corrupt_dicoms(source, folder):
    """Writes broken variants of the valid Part 10 file `source` into `folder`; returns
    {file name: the words the client's refusal must contain}."""
    with open(source, "rb") as f:
        data = f.read()
    pixel_tag = data.find(struct.pack("<HH", 0x7FE0, 0x0010))
    assert data[128:132] == b"DICM" and pixel_tag > 0
    rows = _element(data, 0x0028, 0x0010, b"US")
    broken = {
        # Cut inside the pixel data: DCMTK either fails to parse or finds too few bytes.
        "truncated.dcm": (data[:pixel_tag + 12 + 100], "truncated"),
        # A Part 10 preamble and magic, then bytes that are no dataset.
        "garbage.dcm": (data[:132] + bytes((i * 37 + 11) % 256 for i in range(4000)),
                        "DICOM parse failed"),
        # Every header element but no (7FE0,0010).
        "no_pixels.dcm": (data[:pixel_tag], "no pixel data element"),
        # Rows 60000: beyond any image the loader accepts.
        "absurd_rows.dcm": (data[:rows] + struct.pack("<H", 60000) + data[rows + 2:],
                            "absurd dimensions"),
        "empty.dcm": (b"", "empty file"),
    }
    for name, (content, _) in broken.items():
        with open(os.path.join(folder, name), "wb") as f:
            f.write(content)
    return {name: reason for name, (_, reason) in broken.items()}
