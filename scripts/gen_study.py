"""Gathers scripts/gen_study.sh's results: per arm (fedavg, pooled, alone-SITE) and privacy (nodp,
dp), FID, precision and recall in the federation's classifier features, the memorisation ratio,
the synthetic-only classifier's AUROC on each hospital's real test set (against the real-data
classifier's), and each DP arm's epsilon; means with 95% t-intervals over seeds. Writes
study.md, study.json and grid-RUN.png (rows: classes; a few samples each) into the study folder.

Usage: gen_study.py STUDY_DIR"""
import glob
import json
import math
import os
import re
import struct
import sys
import zlib

# Two-sided 95% t quantiles by degrees of freedom (1..30); normal beyond.
T95 = [12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228, 2.201, 2.179,
       2.160, 2.145, 2.131, 2.120, 2.110, 2.101, 2.093, 2.086, 2.080, 2.074, 2.069, 2.064,
       2.060, 2.056, 2.052, 2.048, 2.045, 2.042]


def mean_ci(values):
    values = [v for v in values if v is not None and not math.isnan(v)]
    if not values:
        return None
    m = sum(values) / len(values)
    if len(values) < 2:
        return {"mean": m, "low": None, "high": None, "n": 1}
    sd = math.sqrt(sum((v - m) ** 2 for v in values) / (len(values) - 1))
    t = T95[len(values) - 2] if len(values) - 1 <= len(T95) else 1.96
    half = t * sd / math.sqrt(len(values))
    return {"mean": m, "low": m - half, "high": m + half, "n": len(values)}


def synth_eval(path):
    text = open(path).read()
    def number(pattern):
        m = re.search(pattern, text)
        return float(m.group(1)) if m else None
    return {"fid": number(r"FID: ([0-9.eE+-]+)"),
            "precision": number(r"precision \(k = \d+\): ([0-9.]+)"),
            "recall": number(r"recall \(k = \d+\): ([0-9.]+)"),
            "memorisation_ratio": number(r"ratio ([0-9.]+)")}


def mean_auroc(folder):
    values = []
    for path in sorted(glob.glob(os.path.join(folder, "*.json"))):
        value = json.load(open(path)).get("mean_auroc")
        if value is not None:
            values.append(value)
    return sum(values) / len(values) if values else None


def epsilon(status_path):
    if not os.path.exists(status_path):
        return None
    sites = json.load(open(status_path)).get("sites", [])
    eps = [s.get("privacy", {}).get("epsilon") for s in sites]
    eps = [e for e in eps if e]
    return max(eps) if eps else None


def read_pgm(path):
    data = open(path, "rb").read()
    parts = data.split(maxsplit=4)
    width, height, maxval = int(parts[1]), int(parts[2]), int(parts[3])
    raw = parts[4]
    if maxval > 255:
        pixels = [v * 255 // maxval for v in struct.unpack(f">{width * height}H",
                                                           raw[:2 * width * height])]
    else:
        pixels = list(raw[:width * height])
    return width, height, pixels


def write_png(path, width, height, rows):
    raw = b"".join(b"\x00" + bytes(r) for r in rows)
    def chunk(kind, payload):
        return (struct.pack(">I", len(payload)) + kind + payload +
                struct.pack(">I", zlib.crc32(kind + payload) & 0xFFFFFFFF))
    with open(path, "wb") as f:
        f.write(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 0,
                                                                   0, 0, 0)) +
                chunk(b"IDAT", zlib.compress(raw, 9)) + chunk(b"IEND", b""))


def grid(folder, classes, per_class, out, show=6, gap=2):
    files = sorted(glob.glob(os.path.join(folder, "*.pgm")))
    if not files:
        return False
    images = [read_pgm(f) for f in files]
    w, h = images[0][0], images[0][1]
    cols = min(show, per_class)
    width, height = cols * (w + gap) - gap, classes * (h + gap) - gap
    canvas = [[255] * width for _ in range(height)]
    for c in range(classes):
        for j in range(cols):
            index = c * per_class + j
            if index >= len(images):
                continue
            _, _, pixels = images[index]
            for y in range(h):
                row = canvas[c * (h + gap) + y]
                row[j * (w + gap):j * (w + gap) + w] = pixels[y * w:(y + 1) * w]
    write_png(out, width, height, canvas)
    return True


def main(study):
    config = json.load(open(os.path.join(study, "config.json")))
    labels = config["labels"].split(",")
    classes = len(labels) + 1 if labels else 1
    seeds = sorted(glob.glob(os.path.join(study, "seed-*")))
    runs = [f"{a}-{p}" for a in config["arms"].split() for p in config["privacy"].split()]
    table, reference = {}, []
    for seed in seeds:
        reference.append(mean_auroc(os.path.join(seed, "eval", "features")))
    for run in runs:
        per_seed = []
        for seed in seeds:
            path = os.path.join(seed, "eval", f"synth-eval-{run}.txt")
            if not os.path.exists(path):
                continue
            row = synth_eval(path)
            memorised = os.path.join(seed, "eval", f"synth-mem-{run}.txt")
            row["memorisation_ratio"] = (synth_eval(memorised)["memorisation_ratio"]
                                         if os.path.exists(memorised) else None)
            row["tstr_auroc"] = mean_auroc(os.path.join(seed, "eval", f"tstr-{run}"))
            row["epsilon"] = epsilon(os.path.join(seed, "status", f"ldm-{run}.json"))
            per_seed.append(row)
        table[run] = {k: mean_ci([r[k] for r in per_seed])
                      for k in ["fid", "precision", "recall", "memorisation_ratio", "tstr_auroc",
                                "epsilon"]}
        if seeds:
            grid(os.path.join(seeds[0], "grid", f"synth-{run}"), classes, config["per_class"],
                 os.path.join(study, f"grid-{run}.png"))
    result = {"config": config, "seeds": len(seeds), "real_classifier_auroc": mean_ci(reference),
              "runs": table}
    json.dump(result, open(os.path.join(study, "study.json"), "w"), indent=1)

    def fmt(v, digits=3):
        if v is None:
            return "-"
        if v["low"] is None:
            return f"{v['mean']:.{digits}f}"
        return f"{v['mean']:.{digits}f} [{v['low']:.{digits}f}, {v['high']:.{digits}f}]"
    lines = [f"# Generator study ({len(seeds)} seed(s); means with 95% t-intervals over seeds)", "",
             "FID and precision/recall (k = 3) in the features of the federation's classifier, "
             "not Inception: compare them only with each other.", "",
             f"Classifier trained on real data (FedAvg), mean AUROC on the hospitals' test sets: "
             f"{fmt(mean_ci(reference))}", "",
             "| arm | privacy | FID | precision | recall | memorisation ratio | "
             "synthetic-only classifier AUROC | epsilon (each of the two stages) |",
             "| --- | --- | --- | --- | --- | --- | --- | --- |"]
    for run in runs:
        arm, priv = run.rsplit("-", 1)
        r = table[run]
        lines.append(f"| {arm} | {priv} | {fmt(r['fid'], 2)} | {fmt(r['precision'])} | "
                     f"{fmt(r['recall'])} | {fmt(r['memorisation_ratio'])} | "
                     f"{fmt(r['tstr_auroc'])} | {fmt(r['epsilon'], 2)} |")
    lines += ["", "FID, precision, recall: against the hospitals' held-out test images. "
              "Memorisation ratio: median distance of a synthetic image to its nearest image of "
              "the arm's training data over those images' own nearest-neighbour median (well "
              "below 1: copies). Samples: grid-ARM-PRIVACY.png (rows: no finding, then each "
              "finding)."]
    open(os.path.join(study, "study.md"), "w").write("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main(sys.argv[1])
