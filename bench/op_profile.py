#!/usr/bin/env python3
"""Self time per LibTorch op in the traces `fl-bench dp --profile DIR` writes.

usage: bench/op_profile.py DIR/plain.json DIR/dp.json [--top 20]

An op's self time is its duration minus that of the ops it called (nested events on the same
thread), so the column adds up to the time spent in LibTorch ops. Work outside them (the oneDNN
Gram matrices of models/gram.cc) is not in the trace: compare the total with the step time
fl-bench prints."""
import argparse
import collections
import json


def load(path):
    with open(path) as f:
        text = f.read().strip()
    # The legacy profiler may leave a trailing comma before the closing bracket.
    text = text.rstrip("]").rstrip().rstrip(",") + "]"
    return [e for e in json.loads(text) if e.get("ph") == "X"]


def self_times(events):
    by_thread = collections.defaultdict(list)
    for e in events:
        by_thread[e["tid"]].append(e)
    self_us, calls, total = collections.Counter(), collections.Counter(), 0.0
    for thread_events in by_thread.values():
        thread_events.sort(key=lambda e: (e["ts"], -e["dur"]))
        stack = []
        for e in thread_events:
            while stack and stack[-1]["ts"] + stack[-1]["dur"] <= e["ts"]:
                stack.pop()
            if stack:
                self_us[stack[-1]["name"]] -= e["dur"]
            else:
                total += e["dur"]
            self_us[e["name"]] += e["dur"]
            calls[e["name"]] += 1
            stack.append(e)
    return self_us, calls, total


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("traces", nargs="+")
    parser.add_argument("--top", type=int, default=20)
    args = parser.parse_args()
    for path in args.traces:
        self_us, calls, total = self_times(load(path))
        print(f"{path}: {total / 1000:.1f} ms in top-level ops, {sum(calls.values())} ops")
        for name, us in self_us.most_common(args.top):
            print(f"  {us / 1000:9.1f} ms {calls[name]:6d}x  {name}")


if __name__ == "__main__":
    main()
