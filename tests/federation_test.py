"""End-to-end tests with real processes: fl-coordinator and three fl-client daemons on loopback
with freshly provisioned certificates, the refusals of mutual TLS (foreign CA, wrong role,
revoked or expired certificates), certificate rotation and revocation without a restart, sites
stopped, killed and restarted mid-round, and corrupt DICOM files in a site's folder. The
helpers live in fedlib.py.

Run by CTest: federation_test.py BIN_DIR WORK_DIR [unittest args]."""
import hashlib
import json
import os
import re
import shutil
import signal
import socket
import ssl
import sys
import time
import unittest

import fedlib
from fedlib import (SITES, Federation, fill_disk, make_expired_cert, metric, read_safetensors,
                    round_sites, run, small_tmpfs_wrap, wait_until, write_corrupt_dicoms)


# Tests whose sites decline on purpose: the round is tried again at once, not after the
# coordinator's default pauses (1 s, 2 s), which would only make them slower.
NO_RETRY_PAUSE = "round_retry { initial_seconds: 0 }\n"


class FederationTest(unittest.TestCase):
    def test_three_sites_train_two_rounds(self):
        fed = Federation("two_rounds")
        try:
            fed.start_coordinator()
            for i, site in enumerate(SITES):
                fed.start_client(site, seed=i + 1)
            job_labels = ["cardiomegaly", "effusion_right", "effusion_left", "infiltrate_right"]
            job_id = fed.submit(
                'name: "it" model: "smallcnn" image_size: 32 rounds: 2 local_steps: 3 '
                'batch_size: 8 min_sites: 3 start_timeout_seconds: 60 round_deadline_seconds: 120 '
                + " ".join(f'labels: "{label}"' for label in job_labels))
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
            with open(f"{fed.dir}/model/model.json") as f:
                sidecar = json.load(f)
            self.assertEqual(sidecar["labels"], ["cardiomegaly", "effusion_right", "effusion_left",
                                                 "infiltrate_right"])
            text = fed.metrics()
            self.assertEqual(metric(text, "fl_coordinator_rounds_completed_total"), 2)
            # The honest sites' reports pass the coordinator's checks: round 1's evaluation of
            # round 0's model and the final one, each site's own figures kept beside the median.
            self.assertEqual(
                metric(text, "fl_coordinator_reports_total", {"result": "accepted"}), 6)
            self.assertEqual(
                metric(text, "fl_coordinator_reports_total", {"result": "rejected"}), 0)
            for r in status["rounds"]:
                self.assertEqual(sorted(s["site"] for s in r["reports"]), sorted(SITES))
            self.assertIn("reported by", fed.flctl("job", "status", job_id).stdout)
            sites = json.loads(fed.flctl("sites", "--json").stdout)["sites"]
            self.assertEqual(sorted(s["name"] for s in sites), sorted(SITES))
            # The clients exit by themselves once no job is left.
            for p in fed.procs[1:]:
                self.assertEqual(p.wait(timeout=60), 0)
            # The export can start a new job; a model that does not fit the job is refused at
            # submission, naming the field and the file.
            spec = ('name: "next" model: "smallcnn" image_size: 32 rounds: 1 '
                    f'initial_model: "{fed.dir}/model/model.safetensors" ')
            next_id = fed.submit(spec + " ".join(f'labels: "{label}"' for label in job_labels))
            self.assertIn(f"started from {fed.dir}/model/model.safetensors",
                          fed.flctl("job", "status", next_id).stdout)
            fed.flctl("job", "cancel", next_id)
            path = f"{fed.dir}/job-misfit.conf"
            with open(path, "w") as f:
                f.write(spec + " ".join(f'labels: "{label}"' for label in job_labels[:3]))
            refused = fed.flctl("job", "submit", "--spec", path, check=False)
            self.assertNotEqual(refused.returncode, 0)
            self.assertIn("initial_model", refused.stderr)
            self.assertIn("shape", refused.stderr)
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
            fed.wait_rounds(job_id, 1, timeout=120)  # fails the test if round 0 never commits
            coordinator = fed.procs[0]
            coordinator.send_signal(signal.SIGKILL)
            coordinator.wait()
            fed.spawn("coordinator-restarted", f"{fedlib.BIN}/fl-coordinator", "--config",
                      f"{fed.dir}/pki/coordinator/coordinator.conf")
            fed.procs[0] = fed.procs.pop()  # keep the clients at procs[1:]
            status = fed.wait(job_id)
            self.assertEqual(status["state"], "DONE")
            # It resumed from a committed checkpoint, not from the start.
            self.assertRegex(fed.log("coordinator-restarted"),
                             re.escape(f"resuming job {job_id} after round ") + r"[1-3]\b")
            self.assertEqual([r["round"] if "round" in r else 0 for r in status["rounds"]],
                             [0, 1, 2, 3])
            for r in status["rounds"]:
                self.assertEqual(sorted(r["sites"]), ["site-a", "site-b"])
            for p in fed.procs[1:]:
                self.assertEqual(p.wait(timeout=60), 0)  # the clients reconnected by themselves
        finally:
            fed.stop()

    def test_job_status_shows_each_sites_training_progress_live(self):
        fed = Federation("progress")
        try:
            fed.start_coordinator()
            fed.start_client("site-a", seed=1, metrics=True)
            fed.wait_connected(1)
            # Enough local steps for training to outlast a few polls of flctl.
            job_id = fed.submit(
                'name: "live" model: "smallcnn" image_size: 32 rounds: 1 local_steps: 5000 '
                'batch_size: 8 min_sites: 1 start_timeout_seconds: 60 '
                'round_deadline_seconds: 600 labels: "cardiomegaly"')

            def training():
                for task in fed.status(job_id).get("current", []):
                    done, total = task.get("steps_done", 0), task.get("steps_total", 0)
                    if task["phase"] == "TASK_PHASE_TRAINING" and 0 < done <= total:
                        return task
                return None
            task = wait_until(training, 180, "site-a in phase training with steps done",
                              interval=0.2)
            self.assertEqual(task["site"], "site-a")
            self.assertEqual(task["steps_total"], 5000)
            self.assertGreater(task["since_unix_seconds"], 0)
            self.assertRegex(fed.flctl("job", "status", job_id).stdout,
                             r"site-a: (training \d+/5000 steps|uploading|uploaded)")
            # The client's own gauges: its phase, the steps, the throughput, the data scan.
            text = fed.client_metrics("site-a")
            self.assertEqual(metric(text, "fl_client_train_steps"), 5000)
            self.assertGreater(metric(text, "fl_client_train_steps_done"), 0)
            self.assertGreaterEqual(metric(text, "fl_client_train_images_per_second"), 0)
            phases = {p: metric(text, "fl_client_task_phase", {"phase": p})
                      for p in ("idle", "downloading", "evaluating", "training", "uploading")}
            self.assertEqual(sum(phases.values()), 1)
            scanned = metric(text, "fl_client_data_scan_files")
            self.assertGreater(scanned, 0)
            self.assertEqual(metric(text, "fl_client_data_scan_files_done"), scanned)
            coordinator = fed.metrics()
            self.assertGreater(
                metric(coordinator, "fl_coordinator_progress_total", {"result": "accepted"}), 0)
            self.assertEqual(
                metric(coordinator, "fl_coordinator_progress_total", {"result": "rejected"}), 0)
            fed.flctl("job", "cancel", job_id)
        finally:
            fed.stop()

    def test_dp_round_over_the_site_budget_is_declined_with_the_reason(self):
        fed = Federation("dp_budget")
        try:
            fed.start_coordinator(NO_RETRY_PAUSE)
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

    def test_site_policy_declines_before_any_download(self):
        """A site whose policy requires DP (as every kit with a privacy cap does unless it says
        otherwise) and at least sigma 0.8 declines a job without DP and a job with sigma 0.5, each
        with its reason, before it downloads anything."""
        fed = Federation("policy")
        try:
            fed.start_coordinator(NO_RETRY_PAUSE)
            fed.set_policy("site-b", "min_noise_multiplier: 0.8")  # require_dp: by the cap
            fed.start_client("site-b", seed=2, metrics=True, exit_when_idle=False)
            base = ('model: "tinycnn" image_size: 32 rounds: 1 local_steps: 2 batch_size: 8 '
                    'min_sites: 1 start_timeout_seconds: 60 round_deadline_seconds: 30 '
                    'labels: "cardiomegaly" ')
            for name, extra, reason in [
                    ("plain", "", "site-b: site policy: this site trains only with differential "
                                  "privacy"),
                    ("weak", "dp { enabled: true noise_multiplier: 0.5 delta: 1e-6 }",
                     "site-b: site policy: the job's noise multiplier 0.5 is below the least "
                     "this site accepts (0.8)")]:
                status = fed.wait(fed.submit(f'name: "{name}" ' + base + extra), check=False)
                self.assertEqual(status["state"], "FAILED")
                self.assertIn(reason, status["message"])
            client = fed.client_metrics("site-b")
            self.assertEqual(metric(client, "fl_client_download_bytes_total"), 0)
            self.assertGreaterEqual(
                metric(client, "fl_client_tasks_total", {"result": "declined"}), 2)
        finally:
            fed.stop()

    def test_a_second_workload_trains_through_the_same_daemons(self):
        """An autoencoder job (no labels) through the same coordinator and clients: every site
        whose policy takes the workload trains, a site that takes only classification declines
        with the reason, and each site reports the reconstruction's L1 and PSNR."""
        fed = Federation("autoencoder")
        try:
            fed.start_coordinator()
            fed.set_policy("site-c", 'require_dp: false workloads: "classification"')
            for i, site in enumerate(SITES):
                fed.start_client(site, seed=i + 1, metrics=site == "site-c",
                                 exit_when_idle=site != "site-c")
            fed.wait_connected(len(SITES))
            job_id = fed.submit(
                'name: "ae" autoencoder { widths: 8 widths: 16 latent_channels: 4 } '
                'image_size: 32 rounds: 2 local_steps: 4 batch_size: 8 min_sites: 2 '
                'start_timeout_seconds: 60 round_deadline_seconds: 120 '
                'local_optimizer { name: "adam" learning_rate: 0.01 }')
            status = fed.wait(job_id)
            self.assertEqual(status["state"], "DONE")
            for r in status["rounds"]:
                self.assertEqual(sorted(r["sites"]), ["site-a", "site-b"])
            self.assertIn("site-c: site policy: this site does not train 'autoencoder' jobs",
                          fed.flctl("job", "status", job_id).stdout)
            client = fed.client_metrics("site-c")
            self.assertEqual(metric(client, "fl_client_download_bytes_total"), 0)
            reports = {s["site"]: {m["name"]: m["value"] for m in s.get("metrics", [])}
                       for s in status["sites"]}
            for site in ["site-a", "site-b"]:
                self.assertGreater(reports[site]["psnr"], 5)
                self.assertLess(reports[site]["l1"], 0.5)
            fed.flctl("export", job_id, "--out", f"{fed.dir}/model")
            header = read_safetensors(f"{fed.dir}/model/model.safetensors")
            self.assertEqual(header["encoder.0.weight"]["shape"], [8, 1, 3, 3])
            with open(f"{fed.dir}/model/model.json") as f:
                self.assertEqual(json.load(f)["workload"], "autoencoder")
        finally:
            fed.stop()

    def test_latent_diffusion_with_dp_then_synthetic_dicom(self):
        """Medfusion's two stages through the same daemons, both with DP against one dataset
        budget: a variational autoencoder job, then a class-conditional diffusion job on its
        frozen latents (the coordinator sends the autoencoder with the task; each site
        downloads it once and checks its digest), then
        flctl synth: Secondary Capture objects marked synthetic that dcmdump and dcm2pnm read
        and flctl data check loads like any site's folder."""
        fed = Federation("diffusion")
        try:
            fed.start_coordinator()
            sites = ["site-a", "site-b"]
            for i, site in enumerate(sites):
                fed.start_client(site, seed=i + 1, exit_when_idle=False, metrics=True)
            fed.wait_connected(len(sites))
            common = ('image_size: 32 local_steps: 3 batch_size: 8 min_sites: 2 '
                      'start_timeout_seconds: 60 round_deadline_seconds: 180 ')
            dp = 'dp { enabled: true noise_multiplier: 1.0 clip_norm: 1.0 delta: 1e-5 } '
            vae = fed.submit(
                'name: "vae" autoencoder { variational: true widths: 8 widths: 16 widths: 16 '
                'latent_channels: 4 } rounds: 2 local_optimizer { name: "adam" '
                'learning_rate: 0.005 } ' + dp + common)
            self.assertEqual(fed.wait(vae)["state"], "DONE")
            ldm = fed.submit(
                f'name: "ldm" labels: "cardiomegaly" labels: "infiltrate_right" diffusion {{ '
                f'autoencoder_job: "{vae}" latent_channels: 4 latent_size: 8 widths: 16 '
                f'widths: 32 embedding_width: 32 timesteps: 100 sample_steps: 10 }} rounds: 2 '
                f'local_optimizer {{ name: "adam" learning_rate: 0.001 }} ' + dp + common)
            status = fed.wait(ldm)
            self.assertEqual(status["state"], "DONE", status.get("message"))
            self.assertEqual(len(status["frozen_digest"]), 64)
            for r in status["rounds"]:
                self.assertEqual(sorted(r["sites"]), sites)
            for s in status["sites"]:
                self.assertGreater(s["privacy"]["epsilon"], 0)
                self.assertIn("eps_l1", {m["name"] for m in s.get("metrics", [])})
            for site in sites:  # both stages spend the one dataset budget of the site's ledger
                ledger = f"{fed.dir}/pki/sites/{site}/state/privacy.db"
                def spent(*job):
                    return float(run(f"{fedlib.BIN}/flctl", "privacy", "ledger", "--ledger",
                                     ledger, "--delta", "1e-5", *job).stdout.split()[0])
                self.assertGreater(spent(), max(spent("--job", vae), spent("--job", ldm)))
            for site in sites:  # the frozen autoencoder came once per site and is kept
                kept = os.listdir(f"{fed.dir}/pki/sites/{site}/state/frozen")
                self.assertEqual(kept, [status["frozen_digest"] + ".safetensors"])
                self.assertEqual(fed.log(site).count("downloading the frozen autoencoder"), 1)
            fed.flctl("export", vae, "--out", f"{fed.dir}/vae")
            fed.flctl("export", ldm, "--out", f"{fed.dir}/ldm")
            out = f"{fed.dir}/synthetic"
            flctl = f"{fedlib.BIN}/flctl"
            run(flctl, "synth", f"{fed.dir}/ldm/model.safetensors", "--autoencoder",
                f"{fed.dir}/vae/model.safetensors", "--out", out, "--per-class", 2, "--steps", 5,
                "--seed", 7)
            files = sorted(f for f in os.listdir(out) if f.endswith(".dcm"))
            self.assertEqual(len(files), 6)  # no finding, cardiomegaly, infiltrate_right
            dump = run("dcmdump", f"{out}/{files[0]}").stdout
            self.assertIn("=SecondaryCaptureImageStorage", dump)
            self.assertIn("DERIVED\\SECONDARY", dump)
            self.assertIn("[SYN]", dump)
            self.assertIn("SYNTHETIC", dump)
            run("dcm2pnm", "--write-png", f"{out}/{files[-1]}", f"{fed.dir}/synthetic.png")
            self.assertGreater(os.path.getsize(f"{fed.dir}/synthetic.png"), 100)
            with open(f"{out}/labels.csv") as f:
                rows = f.read().split()
            self.assertEqual(rows[0], "key,cardiomegaly,infiltrate_right")
            self.assertEqual(sorted(r.split(",", 1)[1] for r in rows[1:]),
                             ["0,0", "0,0", "0,1", "0,1", "1,0", "1,0"])
            check = json.loads(run(flctl, "data", "check", out, "--labels",
                                   f"{out}/labels.csv", "--json").stdout)
            self.assertEqual(len(check), 6)
            for f in check:
                self.assertTrue(f["ok"] and f["labelled"], f)
            # Wrong pairing: a diffusion model with an autoencoder it was not trained on.
            wrong = run(flctl, "synth", f"{fed.dir}/ldm/model.safetensors", "--autoencoder",
                        f"{fed.dir}/ldm/model.safetensors", "--out", f"{fed.dir}/x", check=False)
            self.assertNotEqual(wrong.returncode, 0)
            self.assertIn("autoencoder job", wrong.stderr)
        finally:
            fed.stop()

    def test_the_same_images_through_another_path_spend_one_budget(self):
        """The site's data reached through a symlink with a trailing slash is the same dataset:
        two DP jobs, one before and one after the move, compose in one budget; a different
        dataset_id for the same images is refused at start with the id to use."""
        fed = Federation("dataset_id")
        try:
            fed.start_coordinator()
            fed.start_client("site-b", seed=2)
            spec = ('model: "smallcnn" image_size: 32 rounds: 1 local_steps: 3 batch_size: 8 '
                    'min_sites: 1 start_timeout_seconds: 60 round_deadline_seconds: 120 '
                    'labels: "cardiomegaly" dp { enabled: true noise_multiplier: 1.0 '
                    'delta: 1e-6 }')
            first = fed.submit('name: "before" ' + spec)
            self.assertEqual(fed.wait(first)["state"], "DONE")
            self.assertEqual(fed.clients["site-b"].wait(timeout=60), 0)
            os.symlink(f"{fed.dir}/data/site-b", f"{fed.dir}/moved")
            fed.edit_site_conf("site-b", lambda t: t.replace(f"{fed.dir}/data/site-b",
                                                             f"{fed.dir}/moved/"))
            fed.restart_client("site-b")
            second = fed.submit('name: "after" ' + spec)
            self.assertEqual(fed.wait(second)["state"], "DONE")
            self.assertEqual(fed.clients["site-b"].wait(timeout=60), 0)
            ledger = f"{fed.dir}/pki/sites/site-b/state/privacy.db"

            def epsilon(*job):
                return float(run(f"{fedlib.BIN}/flctl", "privacy", "ledger", "--ledger", ledger,
                                 "--delta", "1e-6", *job).stdout.split()[0])
            both, before, after = epsilon(), epsilon("--job", first), epsilon("--job", second)
            self.assertGreater(before, 0)
            self.assertAlmostEqual(before, after, places=6)
            self.assertGreater(both, before * 1.2)  # one dataset, two jobs composed
            dataset = re.search(r"dataset id '([^']+)'", fed.log("site-b")).group(1)
            fed.edit_site_conf("site-b", lambda t: t + 'dataset_id: "renamed"\n')
            proc = fed.restart_client("site-b")
            self.assertNotEqual(proc.wait(timeout=60), 0)
            self.assertIn(f'set dataset_id: "{dataset}"', fed.log("site-b"))
        finally:
            fed.stop()

    def test_dp_job_trains_and_reports_the_privacy_spent(self):
        fed = Federation("dp_job")
        try:
            fed.start_coordinator()
            fed.start_client("site-b", seed=2)
            job_id = fed.submit('name: "dp" model: "smallcnn" image_size: 32 rounds: 2 '
                                'local_steps: 3 batch_size: 8 min_sites: 1 '
                                'start_timeout_seconds: 60 round_deadline_seconds: 120 '
                                'labels: "cardiomegaly" dp { enabled: true noise_multiplier: 1.0 '
                                'clip_norm: 1.0 delta: 1e-6 }')
            status = fed.wait(job_id)
            self.assertEqual(status["state"], "DONE")
            privacy = status["sites"][0]["privacy"]
            self.assertGreater(privacy["epsilon"], 0.5)
            self.assertLess(privacy["epsilon"], 10)
            self.assertEqual(privacy["steps"], "6")  # uint64 prints as a JSON string
            self.assertIn('fl_coordinator_site_privacy_epsilon{fl_job="' + job_id, fed.metrics())
            # The site's ledger holds the round (flctl privacy ledger reads it).
            ledger = f"{fed.dir}/pki/sites/site-b/state/privacy.db"
            out = run(f"{fedlib.BIN}/flctl", "privacy", "ledger", "--ledger", ledger,
                      "--delta", "1e-6").stdout
            self.assertAlmostEqual(float(out.split()[0]), privacy["epsilon"], places=6)
            # Nothing else from the private batches left the site: no training loss.
            self.assertNotIn("train_loss", status["rounds"][0])
            self.check_report(fed, job_id, privacy["epsilon"])
        finally:
            fed.stop()

    def check_report(self, fed, job_id, epsilon):
        """flctl report writes one self-contained HTML file that is well-formed XML, holds the
        job's figures, and draws in headless Chromium (a screenshot that is not blank)."""
        import xml.etree.ElementTree as ET
        html = f"{fed.dir}/report.html"
        fed.flctl("report", job_id, "--out", html)
        root = ET.parse(html).getroot()  # well-formed: every element closed, text escaped
        ns = {"h": "http://www.w3.org/1999/xhtml", "svg": "http://www.w3.org/2000/svg"}
        self.assertGreaterEqual(len(root.findall(".//svg:svg", ns)), 2)
        titles = [t.text for t in root.findall(".//svg:title", ns)]
        self.assertIn("ROC: cardiomegaly (final model)", titles)  # from the final evaluation
        cells = [td.text for td in root.findall(".//h:td", ns)]
        self.assertIn(f"{epsilon:.3f}", cells)
        text = open(html).read()
        self.assertNotIn("<script", text)
        self.assertNotIn("src=", text)
        chromium = shutil.which("chromium")
        self.assertIsNotNone(chromium, "chromium is missing: run scripts/deps.sh")
        png = f"{fed.dir}/report.png"
        done = run(chromium, "--headless", "--no-sandbox", "--disable-gpu",
                   f"--user-data-dir={fed.dir}/chromium", "--window-size=1000,1600",
                   f"--screenshot={png}", f"file://{html}", check=False, timeout=120)
        self.assertEqual(done.returncode, 0, done.stderr)
        import matplotlib.image
        pixels = matplotlib.image.imread(png)
        self.assertGreater(float(pixels.std()), 0.05, "the screenshot is blank")

    def test_dp_update_on_the_wire_carries_the_noise(self):
        """The coordinator measures the L2 norm of the update bytes that reach it. The job bounds it
        by the most an un-noised DP update can reach: plain SGD moves at most lr x C x |batch| / B
        per step, bounded here with Poisson batches up to 3x their expected size B. With sigma =
        0.001 the update passes the bound; with sigma = 1 it is refused with a norm several times
        the bound: the noise is in the bytes that left the site, not added after."""
        fed = Federation("dp_wire")
        try:
            fed.start_coordinator()
            # sigma = 0.001 spends a huge epsilon: this test site's cap is lifted for it.
            conf = fed.site_conf("site-b")
            with open(conf) as f:
                text = f.read()
            with open(conf, "w") as f:
                f.write(re.sub(r"max_epsilon: [0-9.e+-]+", "max_epsilon: 1e300", text))
            fed.start_client("site-b", seed=2, exit_when_idle=False)
            lr, steps, clip = 0.1, 3, 1.0
            bound = lr * steps * clip * 3

            def spec(name, sigma):
                return (f'name: "{name}" model: "smallcnn" image_size: 32 rounds: 1 '
                        f'local_steps: {steps} batch_size: 8 min_sites: 1 '
                        'start_timeout_seconds: 60 round_deadline_seconds: 20 '
                        f'labels: "cardiomegaly" max_update_norm: {bound} '
                        f'local_optimizer {{ name: "sgd" learning_rate: {lr} }} '
                        f'dp {{ enabled: true noise_multiplier: {sigma} clip_norm: {clip} '
                        'delta: 1e-6 }')

            quiet = fed.submit(spec("almost-plain", 0.001))
            self.assertEqual(fed.wait(quiet)["state"], "DONE")
            self.assertNotIn("refused update", fed.log("coordinator"))
            noisy = fed.submit(spec("noised", 1.0))
            line = wait_until(
                lambda: next((l for l in fed.log("coordinator").splitlines()
                              if "refused update" in l and "exceeds the job's bound" in l), None),
                120, "the noised update to be refused")
            norm = float(line.split("update norm ")[1].split()[0])
            self.assertGreater(norm, 3 * bound, line)
            fed.flctl("job", "cancel", noisy)
        finally:
            fed.stop()

    def test_revoked_certificate_is_refused(self):
        fed = Federation("revoked", admins="operator,auditor")
        try:
            cert = f"{fed.dir}/pki/admins/auditor/cert.pem"
            fingerprint = run(f"{fedlib.BIN}/flctl", "cert", "fingerprint", cert).stdout.strip()
            self.assertEqual(fingerprint, sha256_of_cert(cert))
            fed.start_coordinator(f'revoked_certificates: "{fingerprint.upper()}"\n')
            r = run(f"{fedlib.BIN}/flctl", "job", "list", "--config",
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
            r = run(f"{fedlib.BIN}/flctl", "job", "list", "--config", foreign, check=False)
            self.assertNotEqual(r.returncode, 0)
            # A site certificate cannot call admin RPCs.
            site_conf = f"{fed.dir}/site-as-admin.conf"
            kit = f"{fed.dir}/pki/sites/site-a"
            with open(site_conf, "w") as f:
                f.write(f'coordinator_address: "127.0.0.1:{fed.port}"\n'
                        f'tls {{ ca_file: "{kit}/ca.pem" cert_file: "{kit}/cert.pem" '
                        f'key_file: "{kit}/key.pem" }}\n')
            r = run(f"{fedlib.BIN}/flctl", "job", "list", "--config", site_conf, check=False)
            self.assertNotEqual(r.returncode, 0)
            self.assertIn("admin certificate", r.stderr)
            # The real admin works.
            self.assertEqual(fed.flctl("job", "list").returncode, 0)
        finally:
            fed.stop()

    def test_certificates_rotate_and_revocations_apply_without_restart(self):
        fed = Federation("rotate", admins="operator,auditor")
        try:
            fed.set_tls_reload(1)
            fed.start_coordinator()
            coordinator = fed.procs[0]
            fed.start_client("site-a", seed=1, metrics=True)
            fed.start_client("site-b", seed=2, exit_when_idle=False)
            kit = f"{fed.dir}/pki/coordinator"
            first_cert = sha256_of_cert(f"{kit}/cert.pem")
            self.assertEqual(tls_probe(fed, "operator")[0], first_cert)
            job_id = fed.submit(JOB_ALL_LABELS.format(name="rot", rounds=4, min_sites=2,
                                                      deadline=120))
            # Hold the job mid-round (site-b stopped) while the kits are renewed.
            fed.wait_rounds(job_id, 1, timeout=120)
            fed.clients["site-b"].send_signal(signal.SIGSTOP)
            site_cert = sha256_of_cert(f"{fed.dir}/pki/sites/site-a/cert.pem")
            out = fed.renew(["coordinator", "site-a"]).stdout
            self.assertIn(f"renewed {kit}", out)
            new_cert = sha256_of_cert(f"{kit}/cert.pem")
            self.assertNotEqual(new_cert, first_cert)
            self.assertNotEqual(sha256_of_cert(f"{fed.dir}/pki/sites/site-a/cert.pem"), site_cert)
            # Both daemons pick the new files up, never catching a half-written pair as bad.
            reloads = "fl_coordinator_tls_reloads_total"
            wait_until(lambda: metric_or_zero(fed.metrics(), reloads, {"result": "ok"}) >= 1, 15,
                       "the coordinator's TLS reload")
            wait_until(lambda: metric_or_zero(fed.client_metrics("site-a"),
                                              "fl_client_tls_reloads_total",
                                              {"result": "ok"}) >= 1, 15, "site-a's TLS reload")
            self.assertEqual(metric_or_zero(fed.metrics(), reloads, {"result": "refused"}), 0)
            # New connections are served the renewed certificate by the same process (gRPC's
            # own file watcher swaps it in up to reload_seconds after the reload is counted).
            wait_until(lambda: tls_probe(fed, "operator")[0] == new_cert, 5,
                       "the renewed certificate on a new connection", interval=0.2)
            self.assertTrue(tls_probe(fed, "operator")[1],
                            "an admin with a valid certificate got no HTTP/2 answer")
            self.assertLess(len(fed.committed(job_id)), 4, "the job ended before the renewal")
            fed.clients["site-b"].send_signal(signal.SIGCONT)
            status = fed.wait(job_id)
            self.assertEqual(status["state"], "DONE")
            self.assertEqual(round_sites(status), {r: ["site-a", "site-b"] for r in range(4)})
            self.assertIsNone(coordinator.poll(), "the coordinator stopped")
            self.assertEqual(fed.log("coordinator").count("listening on port"), 1)
            self.assertIn(job_id, fed.flctl("job", "list").stdout)
            # Revocation of an admin and of a connected site, by editing the running config.
            self.assertEqual(fed.clients["site-a"].wait(timeout=60), 0)  # idle: it left
            auditor = f"{fed.dir}/pki/admins/auditor/admin.conf"
            self.assertEqual(fed.flctl("job", "list", config=auditor).returncode, 0)
            connected = "fl_coordinator_sites_connected"
            wait_until(lambda: metric(fed.metrics(), connected) == 1, 10, "site-b alone")
            with open(fed.coordinator_conf, "a") as f:
                for cert in ["admins/auditor/cert.pem", "sites/site-b/cert.pem"]:
                    f.write(f'revoked_certificates: "{sha256_of_cert(f"{fed.dir}/pki/{cert}")}"\n')
            # site-b's open task stream ends within about a second of the reload.
            wait_until(lambda: metric(fed.metrics(), connected) == 0, 5,
                       "site-b's task stream to end")
            r = fed.flctl("job", "list", config=auditor, check=False)
            self.assertNotEqual(r.returncode, 0)
            self.assertIn("revoked", r.stderr)
            self.assertIn(job_id, fed.flctl("job", "list").stdout)  # the operator is not
            self.assertGreaterEqual(
                metric(fed.metrics(), "fl_coordinator_config_reloads_total", {"result": "ok"}), 1)
            wait_until(lambda: "revoked" in fed.log("site-b"), 10, "site-b to be told")
            self.assertEqual(metric(fed.metrics(), connected), 0)  # its retries are refused
            self.assertIsNone(coordinator.poll(), "the coordinator stopped")
        finally:
            fed.stop()

    def test_expired_certificate_is_refused(self):
        fed = Federation("expired")
        try:
            fed.start_coordinator()
            kit = f"{fed.dir}/expired-admin"
            cert, key = make_expired_cert(f"{fed.dir}/pki/ca", kit, "some-admin", "admin")
            subject = run("openssl", "x509", "-in", cert, "-noout", "-subject", "-enddate").stdout
            self.assertIn("some-admin", subject)
            self.assertIn("2020", subject)
            # Signed by the consortium's CA: only its dates are wrong.
            run("openssl", "verify", "-no_check_time", "-CAfile", f"{fed.dir}/pki/ca/ca.pem", cert)
            # The control: a valid admin certificate gets the server's HTTP/2 SETTINGS.
            _, reply = tls_probe(fed, "operator")
            self.assertTrue(reply, "a valid admin certificate was not answered")
            _, reply = tls_probe(fed, cert=cert, key=key)
            self.assertEqual(reply, b"", "an expired certificate was answered")
            # flctl refuses to use it, and says why.
            conf = f"{kit}/admin.conf"
            with open(conf, "w") as f:
                f.write(f'coordinator_address: "127.0.0.1:{fed.port}"\n'
                        f'tls {{ ca_file: "{fed.dir}/pki/ca/ca.pem" cert_file: "{cert}" '
                        f'key_file: "{key}" }}\n')
            r = fed.flctl("job", "list", config=conf, check=False)
            self.assertNotEqual(r.returncode, 0)
            self.assertRegex(r.stderr.lower(), "expired|verif")
            self.assertIsNone(fed.procs[0].poll(), "the coordinator stopped")
            self.assertEqual(fed.flctl("job", "list").returncode, 0)
        finally:
            fed.stop()

    def test_client_stopped_past_the_deadline_and_killed_rejoin(self):
        fed = Federation("stop_kill")
        try:
            fed.start_coordinator()
            for i, site in enumerate(SITES):
                fed.start_client(site, seed=i + 1)
            fed.wait_connected(3)  # min_sites is 2: the job must not start without site-c
            deadline, rounds = 8, 8
            job_id = fed.submit(JOB_ALL_LABELS.format(name="sk", rounds=rounds, min_sites=2,
                                                      deadline=deadline))
            # SIGSTOP site-c in round 1, until a round closes without it at the deadline.
            fed.wait_rounds(job_id, 1, timeout=120)
            stopped = fed.clients["site-c"]
            stopped.send_signal(signal.SIGSTOP)
            stop_round = len(fed.committed(job_id))
            without_c = min(wait_until(
                lambda: [r for r, n in fed.committed(job_id).items() if r >= stop_round and n == 2],
                3 * deadline, "a round closed without the stopped site"))
            stopped.send_signal(signal.SIGCONT)
            # Awake again, site-c drops its stale work and takes part in a later round.
            rejoined = min(wait_until(
                lambda: [r for r, n in fed.committed(job_id).items() if r > without_c and n == 3],
                3 * deadline, "a round with site-c after SIGCONT"))
            # kill -9 site-b as soon as it logs a trained round: the kill lands just before,
            # during ("upload ended without its trailer") or just after its upload; the checks
            # below hold in each case.
            killed = fed.clients["site-b"]
            trained = re.escape(f"job {job_id} round ") + r"(\d+): trained"
            seen = len(re.findall(trained, fed.log("site-b")))
            round_killed = int(wait_until(
                lambda: (lambda m: m[seen] if len(m) > seen else None)(
                    re.findall(trained, fed.log("site-b"))),
                3 * deadline, "site-b training a round", interval=0.005))
            killed.send_signal(signal.SIGKILL)
            killed.wait()
            self.assertLess(round_killed, rounds - 1, "no round left for site-b to rejoin")
            fed.restart_client("site-b")
            status = fed.wait(job_id)
            self.assertEqual(status["state"], "DONE")
            # site-c had its task in the stalled round, which closed at its deadline.
            log = fed.round_log(job_id)
            self.assertIn("site-c", log[without_c]["assigned"])
            self.assertGreater(log[without_c]["committed"] - log[without_c]["opened"],
                               deadline - 0.5)
            self.assertIn("site-b", log[round_killed]["assigned"])
            by_round = round_sites(status)
            self.assertEqual(list(by_round), list(range(rounds)))
            self.assertEqual(by_round[without_c], ["site-a", "site-b"])
            self.assertEqual(by_round[rejoined], sorted(SITES))
            for r, sites in by_round.items():
                self.assertGreaterEqual(len(sites), 2, f"round {r}: {sites}")
                self.assertEqual(len(set(sites)), len(sites), f"round {r}: {sites}")
            self.assertTrue([r for r, s in by_round.items() if r > round_killed and "site-b" in s],
                            f"the restarted site-b never took part: {by_round}")
            # Every accepted update is in exactly one committed round: no partial or stale
            # upload was folded in.
            text = fed.metrics()
            accepted = metric(text, "fl_coordinator_updates_total", {"result": "accepted"})
            self.assertEqual(accepted, sum(len(s) for s in by_round.values()))
            # Truncated uploads are refused; one for a round no longer open is stale, not rejected.
            coordinator_log = fed.log("coordinator")
            self.assertEqual(metric_or_zero(text, "fl_coordinator_updates_total",
                                            {"result": "rejected"}),
                             coordinator_log.count("refused update from "))
            self.assertEqual(metric_or_zero(text, "fl_coordinator_updates_total",
                                            {"result": "stale"}),
                             coordinator_log.count(" not taken: "))
            self.assertEqual(metric(text, "fl_coordinator_rounds_completed_total"), rounds)
            spool = f"{fed.dir}/pki/coordinator/state/spool"
            self.assertEqual(os.listdir(spool) if os.path.isdir(spool) else [], [])
            for site, p in fed.clients.items():
                self.assertEqual(p.wait(timeout=60), 0, f"{site} did not exit cleanly")
        finally:
            fed.stop()

    def test_coordinator_out_of_disk_space_fails_uploads_and_sites_send_them_again(self):
        """The coordinator's spool fills up for real (a small tmpfs in a private mount namespace).
        An update it cannot store is counted as failed, not as bad; each site sends the same
        update again with backoff (no retraining), and once space is back the round commits."""
        fed = Federation("disk_full")
        spool = f"{fed.dir}/pki/coordinator/state/spool"
        wrap = small_tmpfs_wrap(spool, "1m")
        if wrap is None:
            self.skipTest("unprivileged user and mount namespaces are not allowed here")
        try:
            fed.start_coordinator(wrap=wrap)
            filler = f"/proc/{fed.procs[0].pid}/root{spool}/filler"
            fill_disk(filler)
            sites = ["site-a", "site-b"]
            for i, site in enumerate(sites):
                fed.start_client(site, seed=i + 1, metrics=True)
            job_id = fed.submit('name: "full" model: "smallcnn" image_size: 32 rounds: 1 '
                                'local_steps: 3 batch_size: 8 min_sites: 2 '
                                'start_timeout_seconds: 60 round_deadline_seconds: 180 '
                                'labels: "cardiomegaly"')
            for site in sites:
                wait_until(lambda: metric_or_zero(fed.client_metrics(site),
                                                  "fl_client_send_retries_total",
                                                  {"rpc": "upload"}) >= 1,
                           120, f"{site} sending its update again")
            text = fed.metrics()
            self.assertGreaterEqual(
                metric(text, "fl_coordinator_updates_total", {"result": "failed"}), 2)
            self.assertEqual(
                metric_or_zero(text, "fl_coordinator_updates_total", {"result": "rejected"}), 0)
            self.assertGreaterEqual(metric(text, "fl_coordinator_storage_failures_total"), 2)
            self.assertIn("No space left on device", fed.log("coordinator"))
            self.assertEqual(fed.status(job_id)["state"], "RUNNING")
            os.remove(filler)
            status = fed.wait(job_id)
            self.assertEqual(status["state"], "DONE")
            self.assertEqual(round_sites(status), {0: sites})
            self.assertEqual(metric(fed.metrics(), "fl_coordinator_rounds_failed_total"), 0)
            for site in sites:
                log = fed.log(site)
                self.assertEqual(log.count(f"job {job_id} round 0: trained"), 1, site)
                self.assertIn("the coordinator could not store the update", log)
                self.assertIn("sending it again", log)
        finally:
            fed.stop()

    def test_client_out_of_disk_space_declines_sends_nothing_and_keeps_running(self):
        """A site whose state disk is full cannot record a DP round's privacy cost: it declines
        the task with the reason, nothing leaves the site, and the daemon keeps running."""
        fed = Federation("client_disk_full")
        state = f"{fed.dir}/pki/sites/site-b/state"
        wrap = small_tmpfs_wrap(state, "4m")
        if wrap is None:
            self.skipTest("unprivileged user and mount namespaces are not allowed here")
        try:
            fed.start_coordinator(NO_RETRY_PAUSE)
            client = fed.start_client("site-b", seed=2, metrics=True, exit_when_idle=False,
                                      wrap=wrap)
            fed.wait_connected(1)
            fill_disk(f"/proc/{client.pid}/root{state}/filler")
            job_id = fed.submit('name: "dpfull" model: "smallcnn" image_size: 32 rounds: 1 '
                                'local_steps: 3 batch_size: 8 min_sites: 1 '
                                'start_timeout_seconds: 60 round_deadline_seconds: 5 '
                                'labels: "cardiomegaly" '
                                'dp { enabled: true noise_multiplier: 1.0 delta: 1e-6 }')
            status = fed.wait(job_id, check=False)
            self.assertEqual(status["state"], "FAILED")
            self.assertIn("site-b: cannot record the round's privacy cost, so nothing is sent",
                          status["message"])
            text = fed.metrics()
            for result in ("accepted", "rejected", "failed"):  # no upload was even started
                self.assertEqual(metric_or_zero(text, "fl_coordinator_updates_total",
                                                {"result": result}), 0, result)
            self.assertIn("fl_coordinator_task_declines_total 3", text)
            self.assertIn("cannot record the privacy cost", fed.log("site-b"))
            self.assertIn("disk is full", fed.log("site-b"))
            self.assertEqual(metric(fed.client_metrics("site-b"), "fl_client_tasks_total",
                                    {"result": "declined"}), 3)
            self.assertIsNone(client.poll(), "the client stopped")
        finally:
            fed.stop()

    def train_two_rounds_at_site_b(self, fed, name):
        """A two-round classifier job that site-b alone trains to the end, its client then
        exiting cleanly (it is configured to leave when idle)."""
        job_id = fed.submit(f'name: "{name}" model: "smallcnn" image_size: 32 rounds: 2 '
                            'local_steps: 3 batch_size: 8 min_sites: 1 '
                            'start_timeout_seconds: 60 round_deadline_seconds: 120 '
                            'labels: "cardiomegaly" labels: "effusion_right"')
        status = fed.wait(job_id)
        self.assertEqual(status["state"], "DONE")
        self.assertEqual(round_sites(status), {0: ["site-b"], 1: ["site-b"]})
        self.assertEqual(fed.clients["site-b"].wait(timeout=60), 0)

    def test_corrupt_dicom_files_are_skipped_by_the_running_client(self):
        fed = Federation("corrupt")
        try:
            fed.start_coordinator()
            fed.make_data("site-b", count=48, seed=2)
            data = f"{fed.dir}/data/site-b"
            reasons = write_corrupt_dicoms(f"{data}/img_000000.dcm", data)
            with open(f"{data}/labels.csv", "a") as f:  # labelled, so only the damage skips them
                f.writelines(f"{name},1,0\n" for name in reasons)
            fed.start_client("site-b", make_data=False, metrics=True)
            text = fed.client_metrics("site-b")
            self.assertEqual(metric(text, "fl_client_images_skipped", {"reason": "unreadable"}),
                             len(reasons))
            for other in ("missing_file", "duplicate", "bad_row"):
                self.assertEqual(metric(text, "fl_client_images_skipped", {"reason": other}), 0)
            self.assertEqual(metric(text, "fl_client_images"), 48)
            log = fed.log("site-b")
            for name, reason in reasons.items():
                self.assertIn(f"dataset: skipping {data}/{name}: ", log)
                line = next(l for l in log.splitlines() if f"skipping {data}/{name}: " in l)
                self.assertIn(reason, line)
            self.assertIn(f"{len(reasons)} files skipped, 0 without labels", log)
            self.train_two_rounds_at_site_b(fed, "c")
        finally:
            fed.stop()


    def test_chexpert_layout_trains_through_the_daemon(self):
        """A site whose data is the CheXpert release's layout (JPEG files, train.csv with its
        columns, findings renamed onto the job's labels) trains a job through the real daemon;
        a listed file that is missing is skipped at listing, a cut JPEG when it is decoded
        (flctl data check shows both)."""
        fed = Federation("chexpert")
        try:
            fed.start_coordinator()
            fed.make_data("site-b", count=48, seed=2)
            root = write_chexpert_from_phantoms(f"{fed.dir}/data/site-b", f"{fed.dir}/chexpert")
            fed.edit_site_conf("site-b", lambda text: re.sub(
                r"(data_dir|labels_csv): .*\n", "", text) + (
                f'source {{ chexpert {{ root: "{root}" uncertain: UNCERTAIN_IGNORE '
                'frontal_only: true }\n'
                '  rename_labels { key: "Cardiomegaly" value: "cardiomegaly" }\n'
                '  rename_labels { key: "Pleural Effusion" value: "effusion_right" } }\n'))
            checked = run(f"{fedlib.BIN}/flctl", "data", "check", "--config",
                          fed.site_conf("site-b"))
            self.assertIn("source: chexpert, images: 48, decoded: 47, skipped: 2 "
                          "(listing 1, decoding 1)", checked.stdout)
            self.assertIn("filtered out: 1", checked.stdout)
            fed.start_client("site-b", make_data=False, metrics=True,
                             extra="pixel_cache_mib: 16\n")
            text = fed.client_metrics("site-b")
            self.assertEqual(metric(text, "fl_client_images_skipped", {"reason": "missing_file"}), 1)
            self.assertEqual(metric(text, "fl_client_images_skipped", {"reason": "unreadable"}), 0)
            self.assertEqual(metric(text, "fl_client_images"), 48)
            log = fed.log("site-b")
            self.assertIn("chexpert source: ", log)
            self.assertIn("1 files skipped, 0 without labels, 1 filtered out", log)
            self.assertIn("patient99999/study1/view1_frontal.jpg: missing file", log)
            self.train_two_rounds_at_site_b(fed, "x")
            # The cut JPEG is skipped whenever a round draws it (which images a round draws
            # depends on the job id, so this run may not); it never stops the job.
            # The decoded images stayed on the site's disk: the next start finds them.
            with open(fed.site_conf("site-b")) as f:
                state_dir = re.search(r'state_dir: "([^"]*)"', f.read()).group(1)
            cached = [n for n in os.listdir(f"{state_dir}/pixel_cache") if n.endswith(".px")]
            self.assertTrue(0 < len(cached) <= 47, cached)  # the images it decoded
            self.assertIn("pixel cache: 0 entries", fed.log("site-b"))
            checked = run(f"{fedlib.BIN}/flctl", "data", "check", "--config",
                          fed.site_conf("site-b"))
            self.assertIn(f"pixel cache: {len(cached)} entries", checked.stdout)
        finally:
            fed.stop()


JOB_ALL_LABELS = (
    'name: "{name}" model: "smallcnn" image_size: 32 rounds: {rounds} local_steps: 3 '
    'batch_size: 8 min_sites: {min_sites} start_timeout_seconds: 60 '
    'round_deadline_seconds: {deadline} labels: "cardiomegaly" labels: "effusion_right" '
    'labels: "effusion_left" labels: "infiltrate_right"')


def write_chexpert_from_phantoms(dicom_dir, out):
    """Lays out CheXpert-v1.0-small under `out` from a phantom DICOM folder as released:
    train/patientNNNNN/study1/view1_frontal.jpg (converted by DCMTK's dcmj2pnm) and train.csv
    with the release's columns, the phantom's cardiomegaly and effusion_right as Cardiomegaly
    and Pleural Effusion (one -1.0, uncertain), a lateral view for the frontal filter, a listed
    file that is missing and a JPEG cut short. Returns the root (the folder of train.csv)."""
    checked = json.loads(run(f"{fedlib.BIN}/flctl", "data", "check", dicom_dir, "--json").stdout)
    uid_of = {f["path"]: f["sop_instance_uid"] for f in checked if f.get("ok")}
    with open(f"{dicom_dir}/labels.csv") as f:
        header = f.readline().strip().split(",")
        labels = {row[0]: dict(zip(header[1:], row[1:]))
                  for row in (line.strip().split(",") for line in f) if row and row[0]}
    root = f"{out}/CheXpert-v1.0-small"
    columns = ["Path", "Sex", "Age", "Frontal/Lateral", "AP/PA", "No Finding",
               "Enlarged Cardiomediastinum", "Cardiomegaly", "Lung Opacity", "Lung Lesion",
               "Edema", "Consolidation", "Pneumonia", "Atelectasis", "Pneumothorax",
               "Pleural Effusion", "Pleural Other", "Fracture", "Support Devices"]
    rows = []
    for i, path in enumerate(sorted(uid_of)):
        rel = f"CheXpert-v1.0-small/train/patient{i // 2 + 1:05d}/study1/view{i % 2 + 1}_frontal.jpg"
        os.makedirs(os.path.dirname(f"{out}/{rel}"), exist_ok=True)
        run("dcmj2pnm", "+oj", "+Wm", path, f"{out}/{rel}")
        values = {c: "" for c in columns[5:]}
        found = labels[uid_of[path]]
        values["Cardiomegaly"] = found["cardiomegaly"] + ".0"
        values["Pleural Effusion"] = "-1.0" if i == 3 else found["effusion_right"] + ".0"
        rows.append([rel, "Female" if i % 3 else "Male", str(40 + i), "Frontal", "PA"] +
                    [values[c] for c in columns[5:]])
    lateral = rows[0][0].replace("view1_frontal", "view9_lateral")
    shutil.copy(f"{out}/{rows[0][0]}", f"{out}/{lateral}")
    rows.append([lateral, "Male", "50", "Lateral", ""] + rows[0][5:])
    rows.append(["CheXpert-v1.0-small/train/patient99999/study1/view1_frontal.jpg", "Male",
                 "50", "Frontal", "PA"] + rows[0][5:])
    cut = f"{out}/{rows[5][0]}"
    with open(cut, "rb") as f:
        data = f.read()
    with open(cut, "wb") as f:
        f.write(data[:len(data) * 2 // 3])
    with open(f"{root}/train.csv", "w") as f:
        f.write(",".join(columns) + "\n" + "".join(",".join(r) + "\n" for r in rows))
    return root


def sha256_of_cert(cert):
    """SHA-256 of a PEM certificate's DER bytes, as `flctl cert fingerprint` prints it (checked
    in test_revoked_certificate_is_refused)."""
    with open(cert) as f:
        return hashlib.sha256(ssl.PEM_cert_to_DER_cert(f.read())).hexdigest()


def metric_or_zero(text, name, labels):
    """Like metric(), but a labelled series not created yet counts as 0."""
    try:
        return metric(text, name, labels)
    except AssertionError:
        return 0


def tls_probe(fed, admin=None, cert=None, key=None):
    """Opens TLS to the coordinator presenting an admin kit's (or the given) certificate and
    sends the HTTP/2 preface; returns (SHA-256 of the server's certificate, its first bytes or
    b"" when the server closed or refused)."""
    if admin:
        cert = f"{fed.dir}/pki/admins/{admin}/cert.pem"
        key = f"{fed.dir}/pki/admins/{admin}/key.pem"
    ctx = ssl.create_default_context(cafile=f"{fed.dir}/pki/ca/ca.pem")
    ctx.check_hostname = False
    ctx.set_alpn_protocols(["h2"])
    ctx.load_cert_chain(cert, key)
    peer = None
    try:
        with socket.create_connection(("127.0.0.1", fed.port), timeout=5) as raw:
            with ctx.wrap_socket(raw) as tls:
                peer = hashlib.sha256(tls.getpeercert(binary_form=True)).hexdigest()
                tls.sendall(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" +
                            b"\x00\x00\x00\x04\x00\x00\x00\x00\x00")
                reply = tls.recv(64)
    except (ssl.SSLError, ConnectionResetError, BrokenPipeError):
        reply = b""
    return peer, reply


if __name__ == "__main__":
    fedlib.setup(sys.argv[1], sys.argv[2])
    unittest.main(argv=[sys.argv[0]] + sys.argv[3:], verbosity=2)
