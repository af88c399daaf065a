"""Helpers of scripts/fed_study.sh, scripts/learning_curve.sh and the demo.

  fed_study.py merge-labels OUT.csv SITE_DIR...      one labels CSV over the sites' columns
  fed_study.py combine-head MODEL_DIR HEAD OUT_DIR   global backbone + a site's private head
  fed_study.py summarize STUDY_DIR [--seconds S] [--bootstrap B]
  fed_study.py learning-curve STUDY_DIR [--bootstrap B]

The summary reads, per seed (STUDY_DIR/seed-N/): eval/ARM/SITE.scores.csv (`flctl evaluate
--scores`: each test image's score and target per finding) and status/JOB.json (`flctl job status
--json`: the validation AUROC each round, on the sites' own held-out splits). AUROC per site and
finding is computed from the scores; a site's AUROC is the mean over its findings, the "mean over
sites" the mean of the three. Point estimates are means over seeds. 95% intervals come from a
hierarchical bootstrap: each replicate draws seeds with replacement, then each drawn seed's test
images with replacement (the same images for every arm, so differences between arms are paired),
and averages over the drawn seeds; the interval is the 2.5-97.5 percentile. A difference is
called significant when its interval excludes 0.
"""
import argparse
import csv
import glob
import json
import math
import os
import re
import struct
import sys

import numpy as np

ARM_ORDER = ["alone", "fedavg", "finetune", "fedavg-dp8", "finetune-dp8", "fedavg-dp8b",
             "fedavg-equal", "finetune-equal", "fedadam", "fedyogi", "siteheads", "pooled"]
ARM_TITLES = {"alone": "alone", "fedavg": "FedAvg", "fedavg-equal": "FedAvg, equal site weights",
              "fedadam": "FedAdam", "fedyogi": "FedYogi",
              "siteheads": "FedAvg, private heads", "finetune": "FedAvg + local fine-tune",
              "finetune-equal": "FedAvg, equal weights + local fine-tune",
              "fedavg-dp8": "FedAvg, DP eps = 8", "finetune-dp8": "FedAvg, DP eps = 8 + local fine-tune",
              "fedavg-dp8b": "FedAvg, DP eps = 8, batch 128",
              "pooled": "pooled (upper bound)"}


# ---- data helpers ------------------------------------------------------------------------------

def merge_labels(out, site_dirs):
    """One labels CSV keyed by SOP UID over the union of the sites' columns; empty = unknown."""
    columns, rows = [], []
    for d in site_dirs:
        with open(os.path.join(d, "labels.csv")) as f:
            reader = csv.reader(f)
            header = next(reader)
            for c in header[1:]:
                if c not in columns:
                    columns.append(c)
            for r in reader:
                rows.append((r[0], dict(zip(header[1:], r[1:]))))
    with open(out, "w", newline="") as f:
        w = csv.writer(f, lineterminator="\n")
        w.writerow(["key"] + columns)
        for key, values in rows:
            w.writerow([key] + [values.get(c, "") for c in columns])
    # The copied per-site CSVs would be read as (undecodable) files of the pooled folder.
    for p in glob.glob(os.path.join(os.path.dirname(out), "*", "labels.csv")):
        os.remove(p)


def read_safetensors(path):
    with open(path, "rb") as f:
        raw = f.read()
    n = struct.unpack("<Q", raw[:8])[0]
    header = json.loads(raw[8:8 + n])
    data = raw[8 + n:]
    meta = header.pop("__metadata__", None)
    tensors = {k: (v["dtype"], v["shape"], data[v["data_offsets"][0]:v["data_offsets"][1]])
               for k, v in header.items()}
    return tensors, meta


def write_safetensors(path, tensors, meta):
    header, blobs, offset = {}, [], 0
    if meta:
        header["__metadata__"] = meta
    for name in sorted(tensors):
        dtype, shape, blob = tensors[name]
        header[name] = {"dtype": dtype, "shape": shape, "data_offsets": [offset, offset + len(blob)]}
        blobs.append(blob)
        offset += len(blob)
    text = json.dumps(header, separators=(",", ":")).encode()
    text += b" " * ((8 - len(text) % 8) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(text)) + text + b"".join(blobs))


def combine_head(model_dir, head_path, out_dir):
    """The exported global model with its head tensors replaced by a site's private head."""
    tensors, meta = read_safetensors(os.path.join(model_dir, "model.safetensors"))
    head, _ = read_safetensors(head_path)
    for name, value in head.items():
        if name not in tensors or tensors[name][1] != value[1]:
            sys.exit(f"{head_path}: {name} is not a head tensor of {model_dir}")
        tensors[name] = value
    os.makedirs(out_dir, exist_ok=True)
    write_safetensors(os.path.join(out_dir, "model.safetensors"), tensors, meta)
    with open(os.path.join(model_dir, "model.json")) as f:
        sidecar = json.load(f)
    sidecar["head_mode"] = "label"  # the head is now trained (for this site's findings)
    with open(os.path.join(out_dir, "model.json"), "w") as f:
        json.dump(sidecar, f)


# ---- AUROC and the bootstrap -------------------------------------------------------------------

def auroc(scores, targets):
    """Mann-Whitney AUROC with ties counted half; NaN when a class is missing."""
    pos = int(targets.sum())
    neg = len(targets) - pos
    if pos == 0 or neg == 0:
        return float("nan")
    _, inverse, counts = np.unique(scores, return_inverse=True, return_counts=True)
    ends = np.cumsum(counts)
    ranks = (ends - (counts - 1) / 2.0)[inverse]  # average 1-based rank of each tie group
    return float((ranks[targets == 1].sum() - pos * (pos + 1) / 2.0) / (pos * neg))


def read_scores(path):
    """finding -> (scores, targets) over the images whose target is known, plus image count."""
    with open(path) as f:
        rows = list(csv.DictReader(f))
    findings = [c[:-6] for c in rows[0] if c.endswith("_score")] if rows else []
    out = {}
    for k in findings:
        s = np.array([float(r[k + "_score"]) for r in rows])
        t = np.array([np.nan if r[k + "_target"] == "" else float(r[k + "_target"]) for r in rows])
        out[k] = (s, t)
    return out, len(rows)


class Seed:
    """One seed's evaluations: arm -> site -> finding -> (scores, targets)."""

    def __init__(self, path):
        self.path = path
        self.evals = {}
        self.n = {}  # site -> test images
        for p in sorted(glob.glob(os.path.join(path, "eval", "*", "*.scores.csv"))):
            arm = os.path.basename(os.path.dirname(p))
            site = os.path.basename(p)[:-len(".scores.csv")]
            self.evals.setdefault(arm, {})[site], self.n[site] = read_scores(p)

    def site_auroc(self, arm, site, idx=None):
        """finding -> AUROC of arm at site on the images idx (all when None)."""
        out = {}
        for k, (s, t) in self.evals[arm][site].items():
            if idx is not None:
                s, t = s[idx], t[idx]
            known = ~np.isnan(t)
            out[k] = auroc(s[known], t[known])
        return out


def metrics(seed, arms, sites, idx_of_site):
    """(arm, site, finding) -> AUROC, (arm, site, 'mean'), (arm, 'all', 'mean') for one seed."""
    out = {}
    for arm in arms:
        site_means = []
        for site in sites:
            if site not in seed.evals.get(arm, {}):
                continue
            per = seed.site_auroc(arm, site, idx_of_site.get(site))
            for k, v in per.items():
                out[(arm, site, k)] = v
            m = nanmean(per.values())
            out[(arm, site, "mean")] = m
            site_means.append(m)
        if len(site_means) == len(sites):
            out[(arm, "all", "mean")] = nanmean(site_means)
    return out


def nanmean(values):
    values = [v for v in values if v is not None and not math.isnan(v)]
    return sum(values) / len(values) if values else float("nan")


def bootstrap(seeds, arms, sites, replicates, rng):
    """Point estimates and replicate values of every metric, averaged over seeds."""
    per_seed = [metrics(s, arms, sites, {}) for s in seeds]
    keys = sorted(set().union(*per_seed))
    point = {key: nanmean(m.get(key, float("nan")) for m in per_seed) for key in keys}
    reps = {key: [] for key in keys}
    for _ in range(replicates):
        drawn = rng.integers(0, len(seeds), len(seeds))
        ms = []
        for i in drawn:
            idx = {site: rng.integers(0, n, n) for site, n in seeds[i].n.items()}
            ms.append(metrics(seeds[i], arms, sites, idx))
        for key in keys:
            reps[key].append(nanmean(m.get(key, float("nan")) for m in ms))
    return point, {k: np.array(v) for k, v in reps.items()}


def interval(values):
    values = values[~np.isnan(values)]
    if len(values) == 0:
        return float("nan"), float("nan")
    return float(np.percentile(values, 2.5)), float(np.percentile(values, 97.5))


# ---- curves ------------------------------------------------------------------------------------

def read_curve(path):
    """[(round, validation mean AUROC, train loss)] from a `flctl job status --json` file."""
    with open(path) as f:
        job = json.load(f)
    out = []
    for r in job.get("rounds", []):
        auc = r.get("mean_auroc")
        out.append((int(r.get("round", 0)), float(auc) if auc is not None else float("nan"),
                    float(r.get("train_loss", "nan"))))
    return out


def title(arm):
    """pooled-x240: the pooled arm trained for 240 rounds (scripts/fed_study_longer.sh)."""
    base, _, rounds = arm.partition("-x")
    if rounds.isdigit() and base in ARM_TITLES:
        return f"{ARM_TITLES[base]}, {rounds} rounds"
    return ARM_TITLES.get(arm, arm)


def arm_of_job(name):
    """alone-hospital-a -> alone: a one-hospital arm's jobs are named ARM-HOSPITAL."""
    m = re.match(r"(.+)-(hospital-[a-z])$", name)
    return m.group(1) if m else name


def curves(study):
    """arm -> [(seed name, job name, curve)]."""
    out = {}
    for p in sorted(glob.glob(os.path.join(study, "seed-*", "status", "*.json"))):
        seed = os.path.basename(os.path.dirname(os.path.dirname(p)))
        job = os.path.basename(p)[:-5]
        out.setdefault(arm_of_job(job), []).append((seed, job, read_curve(p)))
    return out


def flatness(curve):
    """Validation AUROC: mean of the last quarter of rounds minus the quarter before it, and
    the best round's value minus the last quarter's mean (how much stopping early would give)."""
    values = [a for _, a, _ in curve if not math.isnan(a)]
    q = max(1, len(values) // 4)
    if len(values) < 2 * q or not values:
        return float("nan"), float("nan")
    last, before = values[-q:], values[-2 * q:-q]
    return sum(last) / q - sum(before) / q, max(values) - sum(last) / q


def plot_curves(study, all_curves):
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib missing (apt-get install python3-matplotlib): no plots")
        return []
    os.makedirs(os.path.join(study, "plots"), exist_ok=True)
    written = []
    for arm, runs in sorted(all_curves.items()):
        fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 3.6))
        for seed, job, curve in runs:
            rounds = [r for r, _, _ in curve]
            label = f"{seed} {job}" if job != arm else seed
            ax1.plot(rounds, [a for _, a, _ in curve], label=label, lw=1)
            ax2.plot(rounds, [l for _, _, l in curve], label=label, lw=1)
        ax1.set(xlabel="round", ylabel="validation AUROC (sites' held-out splits)",
                title=title(arm))
        ax2.set(xlabel="round", ylabel="training loss", title=title(arm))
        ax1.legend(fontsize=6)
        fig.tight_layout()
        path = os.path.join(study, "plots", f"{arm}.png")
        fig.savefig(path, dpi=90)
        plt.close(fig)
        written.append(path)
    return written


# ---- the summary -------------------------------------------------------------------------------

def fmt_ci(point, lo, hi):
    if math.isnan(point):
        return "–"
    return f"{point:.3f} [{lo:.3f}, {hi:.3f}]"


def summarize(study, seconds, replicates, seed_value=12345):
    seed_dirs = sorted(glob.glob(os.path.join(study, "seed-*")))
    seeds = [Seed(p) for p in seed_dirs if glob.glob(os.path.join(p, "eval", "*", "*.scores.csv"))]
    if not seeds:
        sys.exit(f"no evaluations under {study}/seed-*/eval")
    sites = sorted(seeds[0].n)
    extra = sorted(set.intersection(*(set(s.evals) for s in seeds)) - set(ARM_ORDER))
    arms = [a for a in ARM_ORDER if all(a in s.evals for s in seeds)] + extra
    point, reps = bootstrap(seeds, arms, sites, replicates, np.random.default_rng(seed_value))
    config = {}
    if os.path.exists(os.path.join(study, "config.json")):
        with open(os.path.join(study, "config.json")) as f:
            config = json.load(f)

    def ci(key):
        return interval(reps[key]) if key in reps else (float("nan"), float("nan"))

    def diff(a, b, site, finding="mean"):
        ka, kb = (a, site, finding), (b, site, finding)
        if ka not in point or kb not in point:
            return None
        d = point[ka] - point[kb]
        lo, hi = interval(reps[ka] - reps[kb])
        return {"a": a, "b": b, "site": site, "finding": finding, "difference": d, "ci": [lo, hi],
                "significant": bool(lo > 0 or hi < 0)}

    rows = []
    for arm in arms:
        for site in sites + ["all"]:
            key = (arm, site, "mean")
            if key in point:
                lo, hi = ci(key)
                rows.append({"arm": arm, "site": site, "auroc": point[key], "ci": [lo, hi],
                             "per_seed": [metrics(s, [arm], sites, {}).get(key) for s in seeds]})
    findings = []
    for arm in arms:
        for site in sites:
            for k in sorted({k for (a, s, k) in point if a == arm and s == site and k != "mean"}):
                lo, hi = ci((arm, site, k))
                findings.append({"arm": arm, "site": site, "finding": k,
                                 "auroc": point[(arm, site, k)], "ci": [lo, hi]})
    comparisons = []
    for other in [a for a in arms if a != "alone"]:
        for site in sites:
            d = diff(other, "alone", site)
            if d:
                comparisons.append(d)
    for pooled in [a for a in arms if a == "pooled" or a.startswith("pooled-x")]:
        for other in [a for a in arms if a != pooled]:
            d = diff(other, pooled, "all")
            if d:
                comparisons.append(d)
    # A private arm against its non-private twin (fedavg-dp8 against fedavg), per site and over
    # the sites: what DP costs.
    for arm in [a for a in arms if "-dp" in a]:
        base = arm.split("-dp")[0]
        if base in arms:
            for site in sites + ["all"]:
                d = diff(arm, base, site)
                if d:
                    comparisons.append(d)
    finding_diffs = [d for arm in ("fedavg", "finetune") for site in sites
                     for k in sorted({k for (a, s, k) in point if s == site and k != "mean"})
                     for d in [diff(arm, "alone", site, k)] if d]
    all_curves = curves(study)
    conv = []
    for arm, runs in sorted(all_curves.items()):
        for seed, job, curve in runs:
            late, early_gain = flatness(curve)
            conv.append({"arm": arm, "seed": seed, "job": job, "rounds": len(curve),
                         "final_validation_auroc": curve[-1][1] if curve else float("nan"),
                         "last_quarter_change": late, "best_minus_last_quarter": early_gain})
    plots = plot_curves(study, all_curves)
    out = {"config": config, "seeds": [os.path.basename(s.path) for s in seeds], "sites": sites,
           "test_images": seeds[0].n, "bootstrap_replicates": replicates, "seconds": seconds,
           "arms": rows, "findings": findings, "comparisons": comparisons,
           "finding_comparisons": finding_diffs, "convergence": conv,
           "plots": [os.path.relpath(p, study) for p in plots]}
    with open(os.path.join(study, "study.json"), "w") as f:
        json.dump(out, f, indent=1, default=lambda v: None)
    md = markdown(out, arms, sites)
    with open(os.path.join(study, "study.md"), "w") as f:
        f.write(md)
    print(md)


def markdown(out, arms, sites):
    lines = []
    c = out["config"]
    lines.append(f"Seeds: {', '.join(out['seeds'])}; test images per site and seed: "
                 f"{out['test_images']}; {out['bootstrap_replicates']} bootstrap replicates "
                 f"(seeds, then test images).")
    if c:
        lines.append(f"Training images per site: {c.get('counts')}; {c.get('size')} px, "
                     f"{c.get('model')}; rounds of {c.get('steps')} steps x batch "
                     f"{c.get('batch')}; each job stops after {c.get('patience', 0)} rounds "
                     f"without a validation gain or at {c.get('rounds')} rounds (federated and "
                     f"pooled: {c.get('fed_rounds', c.get('rounds'))}), its model the best by "
                     f"validation; fine-tuning from the best FedAvg model, at most "
                     f"{c.get('ft_rounds')} rounds, patience {c.get('ft_patience', 0)}, lr "
                     f"{c.get('ft_lr')}; phantom finding strength "
                     f"{c.get('finding_strength')}, variation {c.get('variation')}, label noise "
                     f"{c.get('label_noise')}.")
    if out.get("seconds"):
        lines.append(f"Wall time: {out['seconds'] / 60:.0f} min.")
    lines.append("")
    lines.append("Mean AUROC over each site's findings on its held-out test set, mean over seeds "
                 "[95% CI]:")
    lines.append("")
    lines.append("| arm | " + " | ".join(sites) + " | mean over sites |")
    lines.append("|---|" + "---|" * (len(sites) + 1))
    by = {(r["arm"], r["site"]): r for r in out["arms"]}
    for arm in arms:
        cells = []
        for site in sites + ["all"]:
            r = by.get((arm, site))
            cells.append(fmt_ci(r["auroc"], *r["ci"]) if r else "–")
        lines.append(f"| {title(arm)} | " + " | ".join(cells) + " |")
    lines.append("")
    lines.append("Differences (paired, same test images) [95% CI]; * = CI excludes 0:")
    lines.append("")
    lines.append("| comparison | site | difference |")
    lines.append("|---|---|---|")
    for d in out["comparisons"]:
        star = " *" if d["significant"] else ""
        lines.append(f"| {title(d['a'])} − {title(d['b'])} | "
                     f"{'mean over sites' if d['site'] == 'all' else d['site']} | "
                     f"{d['difference']:+.3f} [{d['ci'][0]:+.3f}, {d['ci'][1]:+.3f}]{star} |")
    lines.append("")
    lines.append("Per finding (AUROC, mean over seeds [95% CI]):")
    lines.append("")
    lines.append("| site | finding | " + " | ".join(title(a) for a in arms) + " |")
    lines.append("|---|---|" + "---|" * len(arms))
    f_by = {(f["arm"], f["site"], f["finding"]): f for f in out["findings"]}
    for site in sites:
        for k in sorted({f["finding"] for f in out["findings"] if f["site"] == site}):
            cells = [fmt_ci(f_by[(a, site, k)]["auroc"], *f_by[(a, site, k)]["ci"])
                     if (a, site, k) in f_by else "–" for a in arms]
            lines.append(f"| {site} | {k} | " + " | ".join(cells) + " |")
    sig = [d for d in out["finding_comparisons"] if d["significant"]]
    lines.append("")
    lines.append(f"Per finding, FedAvg or fine-tuned against alone: {len(sig)} of "
                 f"{len(out['finding_comparisons'])} differences significant: " +
                 ", ".join(f"{d['a']} {d['site']} {d['finding']} {d['difference']:+.3f}"
                           for d in sig) + ".")
    lines.append("")
    lines.append("Convergence (validation AUROC on the sites' own held-out splits, per job): "
                 "change between the last two quarters of rounds, and best round minus the last "
                 "quarter (what early stopping would have gained):")
    lines.append("")
    lines.append("| arm | jobs | largest last-quarter change | largest best − last |")
    lines.append("|---|---|---|---|")
    for arm in sorted({c["arm"] for c in out["convergence"]}):
        cs = [c for c in out["convergence"] if c["arm"] == arm]
        ch = max((abs(c["last_quarter_change"]) for c in cs
                  if not math.isnan(c["last_quarter_change"])), default=float("nan"))
        gain = max((c["best_minus_last_quarter"] for c in cs
                    if not math.isnan(c["best_minus_last_quarter"])), default=float("nan"))
        lines.append(f"| {title(arm)} | {len(cs)} | {ch:.3f} | {gain:.3f} |")
    if out["plots"]:
        lines.append("")
        lines.append("Curves: " + ", ".join(out["plots"]))
    return "\n".join(lines) + "\n"


# ---- the learning curve ------------------------------------------------------------------------

def learning_curve(study, replicates):
    """eval/N.scores.csv for each training-set size N: mean AUROC and per finding, with CIs."""
    rng = np.random.default_rng(7)
    rows = []
    for p in glob.glob(os.path.join(study, "eval", "*.scores.csv")):
        n_train = int(os.path.basename(p).split(".")[0])
        evals, n = read_scores(p)
        point = {}
        reps = {}
        for k, (s, t) in evals.items():
            known = ~np.isnan(t)
            point[k] = auroc(s[known], t[known])
        point["mean"] = nanmean(point.values())
        for _ in range(replicates):
            idx = rng.integers(0, n, n)
            vals = {}
            for k, (s, t) in evals.items():
                ss, tt = s[idx], t[idx]
                known = ~np.isnan(tt)
                vals[k] = auroc(ss[known], tt[known])
            vals["mean"] = nanmean(vals.values())
            for k, v in vals.items():
                reps.setdefault(k, []).append(v)
        rows.append((n_train, {k: (point[k], *interval(np.array(reps[k]))) for k in point}))
    rows.sort()
    findings = [k for k in rows[0][1] if k != "mean"]
    lines = ["| training images | mean AUROC [95% CI] | " + " | ".join(findings) + " |",
             "|---|---|" + "---|" * len(findings)]
    for n_train, v in rows:
        lines.append(f"| {n_train} | {fmt_ci(*v['mean'])} | " +
                     " | ".join(f"{v[k][0]:.3f}" for k in findings) + " |")
    md = "\n".join(lines) + "\n"
    with open(os.path.join(study, "learning_curve.md"), "w") as f:
        f.write(md)
    with open(os.path.join(study, "learning_curve.json"), "w") as f:
        json.dump([{"images": n, "auroc": {k: {"point": p, "ci": [lo, hi]}
                                           for k, (p, lo, hi) in v.items()}} for n, v in rows],
                  f, indent=1, default=lambda v: None)
    print(md)


def main():
    ap = argparse.ArgumentParser()
    sub = ap.add_subparsers(dest="cmd", required=True)
    m = sub.add_parser("merge-labels")
    m.add_argument("out")
    m.add_argument("sites", nargs="+")
    c = sub.add_parser("combine-head")
    c.add_argument("model_dir")
    c.add_argument("head")
    c.add_argument("out_dir")
    s = sub.add_parser("summarize")
    s.add_argument("study")
    s.add_argument("--seconds", type=float, default=0)
    s.add_argument("--bootstrap", type=int, default=1000)
    lc = sub.add_parser("learning-curve")
    lc.add_argument("study")
    lc.add_argument("--bootstrap", type=int, default=1000)
    a = ap.parse_args()
    if a.cmd == "merge-labels":
        merge_labels(a.out, a.sites)
    elif a.cmd == "combine-head":
        combine_head(a.model_dir, a.head, a.out_dir)
    elif a.cmd == "summarize":
        summarize(a.study, a.seconds, a.bootstrap)
    else:
        learning_curve(a.study, a.bootstrap)


if __name__ == "__main__":
    main()
