"""Builds study.json and study.md from the DP study's per-site `flctl evaluate` reports.

Usage: dp_study.py STUDY_DIR [--seconds S]

STUDY_DIR holds jobs.tsv (name, target epsilon with 0 for non-private and "public" for the model
pretrained on the public archive alone, job id), <name>.status.json
(`flctl job status --json`) and eval/<name>/<site>.json (`flctl evaluate --json`, run at each
site on its own held-out data). Only these aggregate reports are read.

Pooling over sites:
- AUROC of a label: the unweighted mean of the AUROCs of the sites that have the label (and
  both of its classes in their test set); mean AUROC: the mean over labels of those.
- Relative drop: (non-private - DP) / non-private, in percent, of the mean AUROC (and per label).
  The pretrained model alone is a reference column: what the hospitals' data adds to it shows.
- A group's accuracy: the n-weighted mean of the sites' accuracies for that group; its statistical
  parity difference (SPD): its accuracy minus the n-weighted mean accuracy of the attribute's
  other groups (the definition `flctl evaluate` uses per site, applied to the pooled groups).
- Pearson r between epsilon and each group's SPD over the DP runs only: the non-private run has
  no finite epsilon, so it is left out (with fewer than 3 DP runs r is not reported).
"""
import glob
import json
import math
import os
import sys


def mean(values):
    values = [v for v in values if v is not None and not math.isnan(v)]
    return sum(values) / len(values) if values else float("nan")


def num(v):
    return None if v is None or (isinstance(v, float) and math.isnan(v)) else v


def fmt(v, digits=3, signed=False):
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "-"
    return f"{v:+.{digits}f}" if signed else f"{v:.{digits}f}"


def pearson(xs, ys):
    pairs = [(x, y) for x, y in zip(xs, ys) if y is not None and not math.isnan(y)]
    if len(pairs) < 3:
        return float("nan")
    mx = sum(x for x, _ in pairs) / len(pairs)
    my = sum(y for _, y in pairs) / len(pairs)
    sxy = sum((x - mx) * (y - my) for x, y in pairs)
    sxx = sum((x - mx) ** 2 for x, _ in pairs)
    syy = sum((y - my) ** 2 for _, y in pairs)
    return sxy / math.sqrt(sxx * syy) if sxx > 0 and syy > 0 else float("nan")


def load_reports(study, name):
    """site -> evaluate report for one run; empty when the run has no exported model."""
    out = {}
    for path in sorted(glob.glob(f"{study}/eval/{name}/*.json")):
        with open(path) as f:
            out[os.path.basename(path)[:-5]] = json.load(f)
    return out


def nan_if_none(v):
    return float("nan") if v is None else float(v)


def pool_run(reports):
    """Pooled per-label AUROC, mean AUROC and group accuracy/SPD of one run."""
    per_label = {}
    for report in reports.values():
        for label in report["labels"]:
            per_label.setdefault(label["label"], []).append(nan_if_none(label.get("auroc")))
    aurocs = {label: mean(values) for label, values in per_label.items()}
    groups = {}  # (attribute, group) -> [n, sum n * accuracy]
    for report in reports.values():
        for g in report["groups"]:
            slot = groups.setdefault((g["attribute"], g["group"]), [0, 0.0])
            if g.get("accuracy") is not None and g["n"] > 0:
                slot[0] += g["n"]
                slot[1] += g["n"] * g["accuracy"]
    pooled = {}
    for (attribute, group), (n, total) in groups.items():
        pooled[(attribute, group)] = {"n": n, "accuracy": total / n if n else float("nan")}
    for (attribute, group), g in pooled.items():
        others = [o for (a, h), o in pooled.items() if a == attribute and h != group and o["n"] > 0]
        weight = sum(o["n"] for o in others)
        other_acc = sum(o["n"] * o["accuracy"] for o in others) / weight if weight else float("nan")
        g["spd"] = g["accuracy"] - other_acc
    return {"auroc": aurocs, "mean_auroc": mean(aurocs.values()), "groups": pooled}


def privacy_spent(status_path):
    """(largest epsilon any site reported, its delta, noise multiplier) from the job status."""
    try:
        with open(status_path) as f:
            job = json.load(f)
    except (OSError, ValueError):
        return {}
    best = {}
    for site in job.get("sites", []):
        p = site.get("privacy", {})
        if float(p.get("epsilon", 0)) > best.get("epsilon", 0):
            best = {"epsilon": float(p["epsilon"]), "delta": float(p.get("delta", 0)),
                    "noise_multiplier": float(p.get("noiseMultiplier", p.get("noise_multiplier", 0)))}
    best["state"] = job.get("state", "")
    return best


def build(study, seconds):
    runs = []
    with open(f"{study}/jobs.tsv") as f:
        for line in f:
            name, eps, job_id = line.rstrip("\n").split("\t")
            reports = load_reports(study, name)
            reference = eps == "public"
            run = {"name": name, "target_epsilon": None if reference else float(eps) or None,
                   "reference": reference, "job_id": job_id,
                   "privacy": privacy_spent(f"{study}/{name}.status.json"),
                   "sites": reports}
            run.update(pool_run(reports) if reports else {"auroc": {}, "mean_auroc": float("nan"),
                                                         "groups": {}})
            runs.append(run)
    base = next(r for r in runs if not r["reference"])  # the non-private run
    for run in runs:
        run["relative_drop_percent"] = 100 * (base["mean_auroc"] - run["mean_auroc"]) / base["mean_auroc"]
        run["label_drop_percent"] = {
            l: 100 * (base["auroc"][l] - a) / base["auroc"][l] for l, a in run["auroc"].items()
            if l in base["auroc"]}
    dp = [r for r in runs if r["target_epsilon"]]
    keys = list(dict.fromkeys(k for r in runs for k in r["groups"]))  # report order
    pearson_r = {f"{a}:{g}": pearson([r["target_epsilon"] for r in dp],
                                     [r["groups"].get((a, g), {}).get("spd") for r in dp])
                 for a, g in keys}
    return runs, keys, pearson_r, seconds


def write_json(study, runs, keys, pearson_r, seconds):
    out = {"seconds": seconds, "pearson_r_epsilon_spd": {k: num(v) for k, v in pearson_r.items()},
           "pearson_r_note": "over the DP runs only (the non-private run has no finite epsilon)",
           "runs": []}
    for r in runs:
        out["runs"].append({
            "name": r["name"], "target_epsilon": r["target_epsilon"], "job_id": r["job_id"],
            "public_pretraining_only": r["reference"],
            "privacy_spent": r["privacy"], "mean_auroc": num(r["mean_auroc"]),
            "auroc": {l: num(v) for l, v in r["auroc"].items()},
            "relative_drop_percent": num(r["relative_drop_percent"]),
            "label_drop_percent": {l: num(v) for l, v in r["label_drop_percent"].items()},
            "groups": [{"attribute": a, "group": g, "n": r["groups"][(a, g)]["n"],
                        "accuracy": num(r["groups"][(a, g)]["accuracy"]),
                        "spd": num(r["groups"][(a, g)]["spd"])} for a, g in keys if (a, g) in r["groups"]],
            "sites": r["sites"]})
    with open(f"{study}/study.json", "w") as f:
        json.dump(out, f, indent=2)


def markdown(runs, keys, pearson_r, seconds):
    head = "| | " + " | ".join(r["name"] for r in runs) + " |"
    rule = "|---" * (len(runs) + 1) + "|"
    lines = ["## Utility: AUROC on the sites' held-out test sets", "", head, rule]
    labels = [l for l in runs[0]["auroc"]]
    for l in labels:
        lines.append(f"| {l} | " + " | ".join(fmt(r["auroc"].get(l)) for r in runs) + " |")
    lines.append("| **mean AUROC** | " + " | ".join(f"**{fmt(r['mean_auroc'])}**" for r in runs) + " |")
    lines.append("| relative drop | " + " | ".join(
        fmt(r["relative_drop_percent"], 1) + " %" for r in runs) + " |")
    lines.append("| ε spent (max over sites) | " + " | ".join(
        fmt(r["privacy"].get("epsilon"), 2) if r["target_epsilon"] else
        "0 (no hospital data)" if r["reference"] else "∞" for r in runs) + " |")
    lines.append("| noise multiplier σ | " + " | ".join(
        fmt(r["privacy"].get("noise_multiplier"), 2) if r["target_epsilon"] else "0" for r in runs) + " |")
    lines += ["", "## Fairness: accuracy at a prevalence-matched threshold per finding and statistical parity difference (SPD)",
              "", "| group | n | " + " | ".join(f"{r['name']} acc / SPD" for r in runs) +
              " | Pearson r (ε, SPD) |", "|---" * (len(runs) + 3) + "|"]
    for a, g in keys:
        n = runs[0]["groups"].get((a, g), {}).get("n", 0)
        cells = [fmt(r["groups"].get((a, g), {}).get("accuracy")) + " / " +
                 fmt(r["groups"].get((a, g), {}).get("spd"), 3, signed=True) for r in runs]
        lines.append(f"| {a} {g} | {n} | " + " | ".join(cells) + f" | {fmt(pearson_r[f'{a}:{g}'], 2, True)} |")
    eps = ", ".join(f"{r['target_epsilon']:g}" for r in runs if r["target_epsilon"])
    lines += ["", f"Pearson r over the DP runs only (ε ∈ {{{eps}}}); the non-private run has no "
              f"finite ε. Study wall time: {seconds} s.", ""]
    if any(r["reference"] for r in runs):
        lines.insert(len(lines) - 1, "Every run starts from `public-pretrained`: the model trained "
                     "(non-privately) on the public archive alone, shown as a reference column; "
                     "relative drops are from `non-private`.")
    return "\n".join(lines)


def main():
    study = sys.argv[1]
    seconds = int(sys.argv[sys.argv.index("--seconds") + 1]) if "--seconds" in sys.argv else None
    runs, keys, pearson_r, seconds = build(study, seconds)
    write_json(study, runs, keys, pearson_r, seconds)
    text = markdown(runs, keys, pearson_r, seconds)
    with open(f"{study}/study.md", "w") as f:
        f.write("# Privacy-utility-fairness study\n\n" + text)
    print(text)
    eps8 = [r for r in runs if r["target_epsilon"] == 8.0]
    if eps8:
        drop = eps8[0]["relative_drop_percent"]
        print(f"mean AUROC drop at ε=8: {fmt(drop, 2)} % ({'within' if drop <= 3 else 'over'} the 3 % target)")
    print(f"wrote {study}/study.json and {study}/study.md")


if __name__ == "__main__":
    main()
