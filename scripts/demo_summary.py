"""Builds build/demo/summary.json from the demo's job statuses and prints the comparison."""
import json
import math
import sys


def mean(values):
    values = [v for v in values if v is not None and not math.isnan(v)]
    return sum(values) / len(values) if values else float("nan")


def site_aurocs(job):
    """site -> {label: auroc} from the final evaluation of a job."""
    out = {}
    for report in job.get("sites", []):
        out[report["site"]] = {m["label"]: float(m.get("auroc", "nan")) for m in report.get("test", [])}
    return out


def main():
    demo, federated_path, alone_paths = sys.argv[1], sys.argv[2], sys.argv[3:]
    federated = json.load(open(federated_path))
    sites_info = {s["name"]: s for s in json.load(open(f"{demo}/sites.json")).get("sites", [])}
    fed = site_aurocs(federated)
    labels = list(federated["spec"]["labels"])
    # Per label: test-count-weighted mean of the sites' AUROC of the federated model.
    final = federated["rounds"][-1] if federated.get("rounds") else {}
    per_label = {m["label"]: float(m["auroc"]) for m in final.get("test", [])}
    sites = []
    for path in alone_paths:
        alone = json.load(open(path))
        name = alone["spec"]["sites"][0]
        own = site_aurocs(alone).get(name, {})
        info = sites_info.get(name, {})
        sites.append({
            "name": name,
            "images": int(info.get("num_images", 0)),
            "labels": sorted(own.keys()),
            "alone_mean_auroc": mean(own.values()),
            "federated_mean_auroc": mean(fed.get(name, {}).values()),
        })
    summary = {
        "federated_mean_auroc": mean(per_label.values()),
        "federated_auroc_per_label": per_label,
        "rounds": len(federated.get("rounds", [])),
        "sites": sites,
    }
    json.dump(summary, open(f"{demo}/summary.json", "w"), indent=2)
    print("\nFederated model, AUROC per finding (pooled over the sites' test splits):")
    for label in labels:
        print(f"  {label:20s} {per_label.get(label, float('nan')):.3f}")
    print(f"  {'mean':20s} {summary['federated_mean_auroc']:.3f}\n")
    print(f"{'site':12s} {'images':>6s}  {'alone':>6s}  {'federated':>9s}  labels")
    for s in sites:
        print(f"{s['name']:12s} {s['images']:6d}  {s['alone_mean_auroc']:6.3f}  "
              f"{s['federated_mean_auroc']:9.3f}  {','.join(s['labels'])}")
    print(f"\nwrote {demo}/summary.json and the exported model in {demo}/model/")


if __name__ == "__main__":
    main()
