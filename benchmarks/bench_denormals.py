"""Denormal floats in a trained SASRec / BERT4Rec: training-step time with no flush, with
`torch.set_flush_denormal(True)` on the calling thread (the trainer before session 22), and in a
fresh thread that sets the flag before its first parallel op (`domain.trainer.in_flushing_thread`,
the trainer since session 22), in one process.

    python benchmarks/bench_denormals.py --run-dir outputs/amazon-health/cpu_more/sasrec-s42

Why the fresh thread: the flag is per thread. torch's OpenMP worker team is created by the first
parallel op of a calling thread and copies that thread's floating-point mode, so the main thread's
existing workers keep computing denormals, while a new thread that flushes first gets a flushing
team. Fresh weights show little: the denormals appear as attention sharpens during training, so
point `--run-dir` at a finished run (its params.yaml + model.safetensors).
One timed unit = forward + backward of `--batches` training batches of the run's batch size.
"""
from __future__ import annotations

import argparse
import time

import numpy as np
import torch
import yaml

from bdlm_lib.data import load_dataset
from bdlm_lib.domain import load_domain, trainer


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--run-dir", required=True, help="a finished SASRec / BERT4Rec run folder")
    ap.add_argument("--batches", type=int, default=6)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--data-dir", default=None, help="overrides the run's data_dir")
    a = ap.parse_args()
    with open(f"{a.run_dir}/params.yaml", encoding="utf-8") as f:
        params = yaml.safe_load(f)
    if a.data_dir:
        params["data_dir"] = a.data_dir
    ds = load_dataset(params, verbose=False)
    model = load_domain(a.run_dir).train()
    model.set_train_sequences(ds.train_sequences())
    name = params["domain"]["model"]
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

    print(f"{name} from {a.run_dir}: {a.batches} batches of {bs}, {torch.get_num_threads()} threads")
    for _ in range(a.repeats):
        torch.set_flush_denormal(False)
        off = unit()
        torch.set_flush_denormal(True)
        caller = unit()
        torch.set_flush_denormal(False)
        fresh = trainer.in_flushing_thread(lambda stop: unit())
        print(f"  no flush {off:.2f} s | flush on the calling thread {caller:.2f} s ({off / caller:.2f}x)"
              f" | flush in a fresh thread {fresh:.2f} s ({off / fresh:.2f}x)")


if __name__ == "__main__":
    main()
