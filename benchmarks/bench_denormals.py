"""Denormal floats in a trained SASRec / BERT4Rec: training-step time with no flush,
`torch.set_flush_denormal(True)` on the calling thread only (what torch's own call does), a
fresh thread that sets the flag before its first parallel op, and the flag set on the calling
thread's OpenMP team (`domain.denormals.denormals_flushed`, what the trainer uses), in one
process.

    python benchmarks/bench_denormals.py --run-dir outputs/amazon-health/cpu_more/sasrec-s42

The flag is per thread. torch's OpenMP workers already exist and keep theirs, so the calling
thread's flag leaves them computing denormals. A fresh thread that flushes first gets a new,
flushing worker team, but then there are more OpenMP threads than cores and libgomp seems to cut
its spin-waiting: `--fresh-weights` (no denormals yet) shows what that costs by itself. The denormals
appear as attention sharpens during training, so point `--run-dir` at a finished run (its
params.yaml + model.safetensors). One timed unit = forward + backward of `--batches` training
batches of the run's batch size.
"""
from __future__ import annotations

import argparse
import threading
import time

import numpy as np
import torch
import yaml

from bdlm_lib.data import load_dataset
from bdlm_lib.domain import build_domain_model, load_domain, trainer
from bdlm_lib.domain.denormals import denormals_flushed


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--run-dir", required=True, help="a finished SASRec / BERT4Rec run folder")
    ap.add_argument("--batches", type=int, default=6)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--data-dir", default=None, help="overrides the run's data_dir")
    ap.add_argument("--fresh-weights", action="store_true", help="an untrained model of the run's kind")
    a = ap.parse_args()
    with open(f"{a.run_dir}/params.yaml", encoding="utf-8") as f:
        params = yaml.safe_load(f)
    if a.data_dir:
        params["data_dir"] = a.data_dir
    ds = load_dataset(params, verbose=False)
    name = params["domain"]["model"]
    model = (build_domain_model(name, ds.n_users, ds.n_items, params, ds=ds) if a.fresh_weights
             else load_domain(a.run_dir)).train()
    model.set_train_sequences(ds.train_sequences())
    bs = int(trainer.model_setting(params, name, "batch_size"))
    d = params["domain"]
    sampler = trainer.NegativeSampler(ds.train["user"].to_numpy(), ds.train["item"].to_numpy(), ds.n_items)
    perm = np.random.default_rng(0).permutation(ds.n_users)

    def unit() -> float:
        rng = np.random.default_rng(0)
        t = time.perf_counter()
        for b in range(a.batches):
            # the trainer's step (train_epoch), without the optimiser
            pos, neg = model.sequence_logits(perm[b * bs:(b + 1) * bs], rng, sampler, d["n_neg"])
            trainer.pair_loss(pos, neg, d["loss"]).backward()
        return time.perf_counter() - t

    def in_fresh_thread() -> float:
        out = []

        def body():
            torch.set_flush_denormal(True)
            out.append(unit())
        th = threading.Thread(target=body)
        th.start()
        th.join()
        return out[0]

    print(f"{name} ({'fresh weights' if a.fresh_weights else 'trained'}) from {a.run_dir}: "
          f"{a.batches} batches of {bs}, {torch.get_num_threads()} threads")
    for _ in range(a.repeats):
        torch.set_flush_denormal(False)
        off = unit()
        torch.set_flush_denormal(True)
        caller = unit()
        torch.set_flush_denormal(False)
        fresh = in_fresh_thread()
        with denormals_flushed():
            team = unit()
        print(f"  no flush {off:.2f} s | the calling thread's flag {caller:.2f} s ({off / caller:.2f}x)"
              f" | a fresh flushing thread {fresh:.2f} s ({off / fresh:.2f}x)"
              f" | the calling thread's team {team:.2f} s ({off / team:.2f}x)")


if __name__ == "__main__":
    main()
