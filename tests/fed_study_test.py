"""Smoke test of the federation study's summarising code (scripts/fed_study.py) on synthetic
evaluations: AUROC against its definition, the paired bootstrap's significance calls, the
pooled site's labels and the private-head model. No daemons; a few seconds."""
import csv
import json
import os
import struct
import sys
import tempfile
import unittest

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "scripts"))
import fed_study  # noqa: E402


def brute_auroc(scores, targets):
    pos = [s for s, t in zip(scores, targets) if t == 1]
    neg = [s for s, t in zip(scores, targets) if t == 0]
    wins = sum(1.0 if p > n else 0.5 if p == n else 0.0 for p in pos for n in neg)
    return wins / (len(pos) * len(neg))


def write_scores(path, targets, scores):
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["key", "patient_id", "sex", "age", "x_score", "x_target"])
        for i, (t, s) in enumerate(zip(targets, scores)):
            w.writerow([f"uid{i}", f"p{i}", "M", 50, f"{s:.6f}", "" if t is None else t])


def write_status(path, aurocs):
    rounds = [{"round": i, "mean_auroc": a, "train_loss": 1.0 / (i + 1)}
              for i, a in enumerate(aurocs)]
    with open(path, "w") as f:
        json.dump({"rounds": rounds}, f)


class FedStudyTest(unittest.TestCase):
    def test_auroc_matches_its_definition_with_ties(self):
        rng = np.random.default_rng(1)
        for _ in range(20):
            t = rng.integers(0, 2, 40).astype(float)
            s = np.round(rng.random(40), 1)  # many ties
            if 0 < t.sum() < 40:
                self.assertAlmostEqual(fed_study.auroc(s, t), brute_auroc(s, t), places=12)
        self.assertTrue(np.isnan(fed_study.auroc(np.array([0.1, 0.2]), np.array([1.0, 1.0]))))

    def test_titles_of_longer_runs(self):
        self.assertEqual(fed_study.title("pooled-x240"), "pooled (upper bound), 240 rounds")
        self.assertEqual(fed_study.title("fedavg"), "FedAvg")
        self.assertEqual(fed_study.title("other"), "other")

    def make_study(self, root, gap):
        """Two seeds, sites a and b; 'fedavg' scores carry `gap` more signal than 'alone'."""
        rng = np.random.default_rng(2)
        for seed in (1, 2):
            for site in ("a", "b"):
                targets = rng.integers(0, 2, 300)
                noise = rng.normal(size=300)
                for arm, signal in (("alone", 0.3), ("fedavg", 0.3 + gap), ("pooled", 0.3 + gap)):
                    d = os.path.join(root, f"seed-{seed}", "eval", arm)
                    os.makedirs(d, exist_ok=True)
                    scores = signal * targets + noise
                    t = [None if i == 0 else int(v) for i, v in enumerate(targets)]
                    write_scores(os.path.join(d, f"{site}.scores.csv"), t, scores)
            st = os.path.join(root, f"seed-{seed}", "status")
            os.makedirs(st, exist_ok=True)
            write_status(os.path.join(st, "fedavg.json"), [0.5, 0.7, 0.8, 0.8, 0.81, 0.8, 0.8, 0.8])
            write_status(os.path.join(st, "alone-a.json"), [0.5, 0.6, 0.6, 0.6])

    def summary(self, gap):
        with tempfile.TemporaryDirectory() as root:
            self.make_study(root, gap)
            fed_study.summarize(root, 60, 200)
            with open(os.path.join(root, "study.json")) as f:
                out = json.load(f)
            self.assertTrue(os.path.exists(os.path.join(root, "study.md")))
            return out

    def test_a_real_gain_is_significant_and_no_gain_is_not(self):
        out = self.summary(gap=1.5)
        by = {(d["a"], d["b"], d["site"]): d for d in out["comparisons"]}
        for site in ("a", "b"):
            d = by[("fedavg", "alone", site)]
            self.assertTrue(d["significant"], d)
            self.assertGreater(d["ci"][0], 0)
        self.assertFalse(by[("fedavg", "pooled", "all")]["significant"])  # identical scores
        self.assertEqual(by[("fedavg", "pooled", "all")]["difference"], 0)
        conv = {c["job"]: c for c in out["convergence"] if c["seed"] == "seed-1"}
        self.assertAlmostEqual(conv["fedavg"]["last_quarter_change"], -0.005, places=9)
        self.assertAlmostEqual(conv["fedavg"]["best_minus_last_quarter"], 0.01, places=9)
        null = self.summary(gap=0.0)
        for d in null["comparisons"]:
            self.assertEqual(d["difference"], 0)
            self.assertFalse(d["significant"])
        arms = {(r["arm"], r["site"]): r for r in out["arms"]}
        r = arms[("fedavg", "all")]
        self.assertLess(r["ci"][0], r["auroc"])
        self.assertGreater(r["ci"][1], r["auroc"])

    def test_merge_labels_and_combine_head(self):
        with tempfile.TemporaryDirectory() as root:
            for site, header, row in (("a", "key,x,y", "u1,1,0"), ("b", "key,y,z", "u2,1,")):
                os.makedirs(os.path.join(root, "pooled", site))
                os.makedirs(os.path.join(root, site))
                for d in (os.path.join(root, site), os.path.join(root, "pooled", site)):
                    with open(os.path.join(d, "labels.csv"), "w") as f:
                        f.write(f"{header}\n{row}\n")
            out = os.path.join(root, "pooled", "labels.csv")
            fed_study.merge_labels(out, [os.path.join(root, "a"), os.path.join(root, "b")])
            with open(out) as f:
                self.assertEqual(f.read(), "key,x,y,z\nu1,1,0,\nu2,,1,\n")
            self.assertFalse(os.path.exists(os.path.join(root, "pooled", "a", "labels.csv")))

            def blob(values):
                return ("F32", [len(values)], struct.pack(f"<{len(values)}f", *values))
            model = os.path.join(root, "model")
            os.makedirs(model)
            fed_study.write_safetensors(os.path.join(model, "model.safetensors"),
                                        {"conv.weight": blob([1, 2]), "fc.bias": blob([0, 0])},
                                        {"job_id": "j"})
            with open(os.path.join(model, "model.json"), "w") as f:
                json.dump({"architecture": "smallcnn", "labels": ["x", "y"], "input_size": 32,
                           "head_mode": "site"}, f)
            fed_study.write_safetensors(os.path.join(root, "head.safetensors"),
                                        {"fc.bias": blob([3, 4])}, None)
            fed_study.combine_head(model, os.path.join(root, "head.safetensors"),
                                   os.path.join(root, "combined"))
            tensors, meta = fed_study.read_safetensors(
                os.path.join(root, "combined", "model.safetensors"))
            self.assertEqual(struct.unpack("<2f", tensors["fc.bias"][2]), (3.0, 4.0))
            self.assertEqual(struct.unpack("<2f", tensors["conv.weight"][2]), (1.0, 2.0))
            self.assertEqual(meta, {"job_id": "j"})
            with open(os.path.join(root, "combined", "model.json")) as f:
                self.assertEqual(json.load(f)["head_mode"], "label")


if __name__ == "__main__":
    unittest.main()
