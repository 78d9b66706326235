"""Sequence models' training speed: bdlm_lib's encoders (real positions only) against the same
weights run the plain way over the whole padded window, in one process, on a real dataset's
train histories.

    python benchmarks/bench_sequence_models.py [--dataset amazon-health] [--preset cpu] [--batches 10]

The reference is `bdlm_lib.domain.sequential.encode_padded`: torch's own
nn.TransformerEncoderLayer stack over the padded [B, L] window for SASRec / BERT4Rec (the plain
way; the same numbers at real positions, tested in tests/test_domain_models.py),
and for GRU4Rec the GRU stepping through the padding too. One timed unit = forward + backward of `--batches` training batches
(`domain.per_model.<model>.batch_size` users each, the preset's dim / layers / max_seq_len).
Amazon histories are short (Health: median 5 of 50 slots), which is where packing pays.
"""
from __future__ import annotations

import argparse
import os
import time

import numpy as np
import torch

from bdlm_lib.data import load_dataset
from bdlm_lib.domain import build_domain_model
from bdlm_lib.domain.sequential import encode_padded
from bdlm_lib.domain.trainer import model_setting
from bdlm_lib.pipeline import method_params


def timed(fn, batches) -> float:
    fn(batches[0])                                   # warm-up
    t = time.perf_counter()
    for b in batches:
        fn(b)
    return time.perf_counter() - t


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--dataset", default="amazon-health")
    ap.add_argument("--preset", default="cpu")
    ap.add_argument("--batches", type=int, default=10)
    ap.add_argument("--models", nargs="+", default=["sasrec", "gru4rec", "bert4rec"])
    ap.add_argument("--output-dir", default=os.environ.get("TMPDIR", "/tmp") + "/bdlm-bench")
    a = ap.parse_args()
    torch.manual_seed(0)
    for name in a.models:
        p = method_params(name, a.dataset, a.preset, {"domain.progress": False}, seed=42,
                          output_dir=a.output_dir)
        ds = load_dataset(p, verbose=False)
        model = build_domain_model(name, ds.n_users, ds.n_items, p, ds).train()
        model.set_train_sequences(ds.train_sequences())
        bs = int(model_setting(p, name, "batch_size"))
        perm = np.random.default_rng(0).permutation(ds.n_users)
        batches = [model.history_window(perm[s:s + bs])[:, 1:] for s in range(0, a.batches * bs, bs)]
        real = np.mean([(b > 0).float().mean().item() for b in batches])

        def step(encode):
            return lambda seqs: encode(seqs).pow(2).mean().backward()
        t_new = timed(step(model.encode), batches)
        t_ref = timed(step(lambda s: encode_padded(model, s)), batches)
        epoch = ds.n_users / bs / a.batches
        print(f"{name:9s} {a.dataset} (real slots {real:.0%} of L={batches[0].shape[1]}, batch {bs}): "
              f"padded {t_ref * epoch:6.1f} s/epoch, real positions only {t_new * epoch:6.1f} s/epoch, "
              f"{t_ref / t_new:.1f}x")


if __name__ == "__main__":
    main()
