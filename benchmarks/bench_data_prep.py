"""Full-dataset preparation time: load + k-core + split + test sets, forced rebuild in a temp dir.

    python benchmarks/bench_data_prep.py [ml1m amazon-health amazon-beauty ...] [--profile]

Goal: ML-1M prep + test sets <= 60 s on 2 CPU cores. Prints one line per dataset with
the phase times and the Table 1 statistics; --profile adds the top cProfile entries.
"""
from __future__ import annotations

import argparse
import cProfile
import io
import pstats
import tempfile
import time

from bdlm_lib import load_params
from bdlm_lib.data import load_prepared, prepare_dataset, table1

GOAL_S = {"ml1m": 60.0}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("datasets", nargs="*", default=["ml1m", "amazon-health"])
    ap.add_argument("--profile", action="store_true")
    args = ap.parse_args()
    rows, ok = [], True
    with tempfile.TemporaryDirectory(prefix="bdlm-bench-") as out:
        for name in args.datasets:
            # the paper preset = the full data (no user sample); 5-core, 20 candidates
            p = load_params(name, "paper", {"output_dir": out})
            prof = cProfile.Profile() if args.profile else None
            t0 = time.perf_counter()
            if prof:
                prof.enable()
            path = prepare_dataset(p, force=True, verbose=False)
            if prof:
                prof.disable()
            total = time.perf_counter() - t0
            ds = load_prepared(path)
            sec = ds.manifest["seconds"]
            goal = GOAL_S.get(name)
            verdict = "" if goal is None else (" [goal <= %.0fs: %s]" % (goal, "met" if total <= goal else "MISSED"))
            ok &= goal is None or total <= goal
            print(f"{name}: {total:.1f}s total (read {sec['read']:.1f}s, k-core+split {sec['process']:.1f}s, "
                  f"test sets+write {total - sec['read'] - sec['process']:.1f}s){verdict}", flush=True)
            rows.append(ds)
            if prof:
                s = io.StringIO()
                pstats.Stats(prof, stream=s).sort_stats("cumulative").print_stats(15)
                print(s.getvalue())
        print()
        print(table1(rows).to_string())
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
