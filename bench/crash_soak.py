#!/usr/bin/env python3
"""Crash soak: for each seed, one uninterrupted run of a small two-site job, then one run per
kill point with the coordinator killed (SIGKILL, via gdb) at that point of a round drawn from
the seed, restarted, and checked: the final exported model must be bitwise equal to the
uninterrupted one and every round aggregated exactly once (tests/crash_test.py holds the
harness and the checks).

  python3 bench/crash_soak.py --bin build/bin --seeds 20 --work /tmp/soak

Prints one row per run and, as its last line, `crash_runs=N crash_failures=F spool_leaks=L`
(N counts the checked runs: the killed ones, plus the repeated clean ones with
--check-determinism; when a seed's reference run fails, all its points count as failed;
L counts runs whose only fault was the known spool leak, with --tolerate-spool-leak); exits 1
if any run failed. Needs gdb. About 10-25 s per run on a 2-core machine, seeds x (1 + points)
runs in all."""
import argparse
import os
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests"))
import crash_test  # noqa: E402
import fedlib  # noqa: E402


def parse_args():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--bin", default="build/bin",
                        help="folder of fl-coordinator, fl-client, flctl")
    parser.add_argument("--seeds", type=int, default=20, help="seeds 1..N")
    parser.add_argument("--first-seed", type=int, default=1)
    parser.add_argument("--work", default="/tmp/soak", help="scratch folder (wiped per seed)")
    parser.add_argument("--points", default=",".join(crash_test.KILL_POINTS),
                        help="comma-separated kill points (default: all)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--server-optimizer", default="", metavar="KIND",
                        help="ServerOptimizerKind of the job, e.g. FEDADAM (default FedAvg)")
    parser.add_argument("--tolerate-spool-leak", action="store_true",
                        help="count runs whose only fault is the known leak (the spool file of "
                        "an upload the crash cut is never deleted) as 'leak', not as failures")
    parser.add_argument("--check-determinism", action="store_true",
                        help="run each seed's uninterrupted job twice and require bitwise "
                        "equal models (shown as point '(again)')")
    parser.add_argument("--keep", action="store_true", help="keep the scratch folders of runs "
                        "that passed (those of failed runs are always kept)")
    return parser.parse_args()


def first_line(error):
    text = str(error)
    return text.splitlines()[0][:200] if text else ""


def one_run(harness, point, reference, tolerate_leak):
    """(result word, detail, result) of one crashed run compared with the uninterrupted
    reference: "ok", "leak" (sound but spool files were left; only with tolerate_leak) or
    "FAIL"."""
    try:
        result = harness.run(point)
    except Exception as e:  # a stuck or failed run is a result of the soak, not its end
        return "FAIL", f"{type(e).__name__}: {first_line(e)}", None
    problems = list(result.problems)
    differ = crash_test.compare_models(result.tensors, reference.tensors)
    if differ:
        problems.append(f"model: {differ}")
    leak = f"spool files left after the job: {result.leaked_spools}"
    known = set(result.leaked_spools) <= result.orphans_at_kill(harness.job_id)
    if result.leaked_spools and not (tolerate_leak and known):  # others: always a failure
        problems.append(leak + ("" if known else " (not cut by the crash)"))
    round_, site = harness.target(point)
    detail = (f"round {round_} site {site}; {result.kill_state['committed']} committed at "
              f"kill, resumed after {result.resumed_after}")
    if problems:
        return "FAIL", "; ".join(problems), result
    if result.leaked_spools:
        return "leak", f"{detail}; {leak}", result
    return "ok", detail, result


def main():
    args = parse_args()
    points = [p for p in args.points.split(",") if p]
    unknown = [p for p in points if p not in crash_test.KILL_POINTS]
    if unknown:
        sys.exit(f"unknown kill points {unknown}; known: {list(crash_test.KILL_POINTS)}")
    if fedlib.shutil.which("gdb") is None:
        sys.exit("crash_soak needs gdb (apt-get install gdb): it places the kills")
    fedlib.setup(args.bin, args.work)
    runs = failures = leaks = 0
    print(f"{'seed':>4}  {'point':<10}  {'result':<6}  {'time_s':>6}  detail", flush=True)
    for seed in range(args.first_seed, args.first_seed + args.seeds):
        start = time.monotonic()
        failed_here = False
        harness = None
        try:
            harness = crash_test.CrashHarness(f"seed{seed}", seed=seed, rounds=args.rounds,
                                              server_optimizer=args.server_optimizer)
            reference = harness.run()
            word = "ok" if not reference.problems else "FAIL"
            detail = "; ".join(reference.problems) or "uninterrupted reference"
        except Exception as e:  # reported in the table; the seed's points count as failed
            word, detail = "FAIL", f"{type(e).__name__}: {first_line(e)}"
        if word != "ok":
            runs += len(points)
            failures += len(points)
            failed_here = True
        print(f"{seed:>4}  {'(none)':<10}  {word:<6}  {time.monotonic() - start:>6.1f}  {detail}",
              flush=True)
        if word == "ok" and args.check_determinism:
            start = time.monotonic()
            try:
                again = harness.run()
                differ = "; ".join(again.problems) or crash_test.compare_models(
                    again.tensors, reference.tensors)
            except Exception as e:  # reported in the table
                differ = f"{type(e).__name__}: {e}"
            runs += 1
            failures += bool(differ)
            failed_here |= bool(differ)
            print(f"{seed:>4}  {'(again)':<10}  {'FAIL' if differ else 'ok':<6}  "
                  f"{time.monotonic() - start:>6.1f}  {differ or 'bitwise equal to the reference'}",
                  flush=True)
        if word == "ok":
            for point in points:
                start = time.monotonic()
                word, detail, _ = one_run(harness, point, reference, args.tolerate_spool_leak)
                runs += 1
                failures += word == "FAIL"
                leaks += word == "leak"
                failed_here |= word == "FAIL"
                print(f"{seed:>4}  {point:<10}  {word:<6}  {time.monotonic() - start:>6.1f}  "
                      f"{detail}", flush=True)
        if harness:
            harness.close()
        if not failed_here and not args.keep and harness:
            fedlib.shutil.rmtree(harness.dir, ignore_errors=True)
    print(f"crash_runs={runs} crash_failures={failures} spool_leaks={leaks}")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
