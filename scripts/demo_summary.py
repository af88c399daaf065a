"""Builds build/demo/summary.json from the demo's evaluation reports and prints the comparison.

Usage: demo_summary.py DEMO_DIR SITE...

DEMO_DIR holds sites.json (`flctl sites --json`) and, per site, eval/federated/SITE.json and
eval/alone/SITE.json: `flctl evaluate --json` of the federated model and of the model the site
trained alone, both on the site's held-out test set, on the site's own labels.
- A site's mean AUROC: the report's mean over its labels.
- The federated model's AUROC of a label: the mean over the sites that have the label; its mean
  AUROC: the mean over labels of those.
"""
import json
import math
import sys


def mean(values):
    values = [v for v in values if v is not None and not math.isnan(v)]
    return sum(values) / len(values) if values else float("nan")


def load(path):
    with open(path) as f:
        return json.load(f)


def label_aurocs(report):
    return {m["label"]: float("nan") if m["auroc"] is None else float(m["auroc"])
            for m in report["labels"]}


def main():
    demo, names = sys.argv[1], sys.argv[2:]
    sites_info = {s["name"]: s for s in load(f"{demo}/sites.json").get("sites", [])}
    pooled = {}
    sites = []
    for name in names:
        fed = label_aurocs(load(f"{demo}/eval/federated/{name}.json"))
        alone = label_aurocs(load(f"{demo}/eval/alone/{name}.json"))
        for label, auroc in fed.items():
            pooled.setdefault(label, []).append(auroc)
        sites.append({
            "name": name,
            "images": int(sites_info.get(name, {}).get("num_images", 0)),
            "labels": sorted(fed),
            "alone_mean_auroc": mean(alone.values()),
            "federated_mean_auroc": mean(fed.values()),
        })
    per_label = {label: mean(values) for label, values in pooled.items()}
    summary = {
        "federated_mean_auroc": mean(per_label.values()),
        "federated_auroc_per_label": per_label,
        "evaluated_on": "each site's held-out test set",
        "sites": sites,
    }
    with open(f"{demo}/summary.json", "w") as f:
        json.dump(summary, f, indent=2)
    print("\nFederated model, AUROC per finding (mean over the sites' held-out test sets):")
    for label, auroc in per_label.items():
        print(f"  {label:20s} {auroc:.3f}")
    print(f"  {'mean':20s} {summary['federated_mean_auroc']:.3f}\n")
    print("Each site's held-out test set, its own findings:")
    print(f"{'site':12s} {'images':>6s}  {'alone':>6s}  {'federated':>9s}  labels")
    for s in sites:
        print(f"{s['name']:12s} {s['images']:6d}  {s['alone_mean_auroc']:6.3f}  "
              f"{s['federated_mean_auroc']:9.3f}  {','.join(s['labels'])}")
    print(f"\nwrote {demo}/summary.json and the exported model in {demo}/model/")


if __name__ == "__main__":
    main()
