"""LightGCN training speed: bdlm_lib's torch.sparse implementation against
torch_geometric.nn.models.LightGCN, on the full ML-1M train graph, same dim / layers / batch /
BPR loss / Adam, in one process.

    python benchmarks/bench_lightgcn.py [--dim 576] [--layers 3] [--batch-size 8192] [--steps 5]

One training step = one full propagation (forward + backward) + BPR on a batch of
(user, positive, negative) triples + an Adam step. Seconds per epoch = the mean step time over
`--steps` timed steps (after one warm-up step) x the number of batches in an epoch. Ours is timed
twice in the same run: as the trainer runs it (pair scores by `pair_dot`) and with the pair rows
gathered by plain indexing.

torch_geometric is a benchmark-only extra (pure Python; it must not replace torch):
    pip install --no-deps torch_geometric xxhash
"""
from __future__ import annotations

import argparse
import math
import os
import resource
import time

import numpy as np
import torch
import torch.nn.functional as F


def peak_rss_gb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024 ** 2


def available_gb() -> float | None:
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) / 1024 ** 2
    except OSError:
        return None
    return None


def time_steps(step, n_steps: int) -> float:
    step(0)                                   # warm-up (lazy CSR build, allocator)
    t0 = time.perf_counter()
    for s in range(1, n_steps + 1):
        step(s)
    return (time.perf_counter() - t0) / n_steps


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--dim", type=int, default=576)
    ap.add_argument("--layers", type=int, default=3)
    ap.add_argument("--batch-size", type=int, default=8192)
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--only", choices=["ours", "pyg"], default=None)
    ap.add_argument("--force", action="store_true", help="run torch_geometric even if memory looks short")
    args = ap.parse_args()

    from bdlm_lib.data import load_dataset
    from bdlm_lib.domain import LightGCN, NegativeSampler
    from bdlm_lib.domain.trainer import pair_loss
    from bdlm_lib.params import load_params

    params = load_params("ml1m", "demo", overrides={"data.sample_users": None})
    ds = load_dataset(params, verbose=False)
    users, items = ds.train["user"].to_numpy(), ds.train["item"].to_numpy()
    n_u, n_i, bs = ds.n_users, ds.n_items, args.batch_size
    n_batches = math.ceil(len(users) / bs)
    print(f"ML-1M train graph: {n_u} users, {n_i} items, {len(users)} interactions; dim {args.dim}, "
          f"{args.layers} layers, batch {bs} -> {n_batches} steps/epoch; torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads")

    rng = np.random.default_rng(0)
    sampler = NegativeSampler(users, items, n_i)
    batches = []
    for _ in range(args.steps + 1):
        idx = rng.integers(0, len(users), bs)
        batches.append((torch.from_numpy(users[idx]), torch.from_numpy(items[idx]),
                        torch.from_numpy(sampler.sample(users[idx], 1, rng)[:, 0])))

    def bpr(zu, zp, zn):
        return -F.logsigmoid((zu * zp).sum(-1) - (zu * zn).sum(-1)).mean()

    results = {}
    if args.only in (None, "ours"):
        torch.manual_seed(0)
        ours = LightGCN(n_u, n_i, args.dim, args.layers, users, items)
        opt = torch.optim.Adam(ours.parameters(), lr=1e-3)

        def step_ours(s):
            # as the trainer calls it: one [B, 2] candidate batch (positive, negative) through
            # the model's forward, whose training path is `pair_dot`
            u, p, n = batches[s]
            logits = ours(u, torch.stack([p, n], 1))
            loss = pair_loss(logits[:, 0], logits[:, 1:], "bpr")
            opt.zero_grad()
            loss.backward()
            opt.step()

        def step_plain(s):
            # the same step with the pair scores gathered as [B, d] rows (autograd's scatter)
            u, p, n = batches[s]
            U, I = ours.embeddings()
            loss = bpr(U[u], I[p], I[n])
            opt.zero_grad()
            loss.backward()
            opt.step()
        plain = time_steps(step_plain, args.steps)
        sec = time_steps(step_ours, args.steps)
        results["ours (torch.sparse CSR)"] = sec
        print(f"ours: {sec:.3f} s/step -> {sec * n_batches:.1f} s/epoch (peak RSS {peak_rss_gb():.1f} GB)")
        print(f"ours with gathered pair rows instead of pair_dot: {plain:.3f} s/step -> "
              f"{plain * n_batches:.1f} s/epoch; pair_dot's speed-up {plain / sec:.2f}x")

    if args.only in (None, "pyg"):
        try:
            from torch_geometric.nn.models import LightGCN as PygLightGCN
        except ImportError:
            pyg_ok = False
            print("torch_geometric is not installed: the comparison is skipped. Install the "
                  "benchmark-only extra with:  pip install --no-deps torch_geometric xxhash")
        else:
            # message passing over an edge_index materialises [edges, dim] tensors per layer
            need = 2.5 * 2 * len(users) * args.dim * 4 / 1024 ** 3
            have = available_gb()
            if have is not None and have < need and not args.force:
                print(f"torch_geometric needs ~{need:.0f} GB of free memory here, {have:.1f} GB is "
                      f"available: skipped (free memory, or --force, or a smaller --dim)")
                pyg_ok = False
            else:
                pyg_ok = True
        if pyg_ok:
            torch.manual_seed(0)
            pyg = PygLightGCN(n_u + n_i, args.dim, args.layers)
            u_t, i_t = torch.tensor(users), torch.tensor(items) + n_u
            edge_index = torch.stack([torch.cat([u_t, i_t]), torch.cat([i_t, u_t])])
            popt = torch.optim.Adam(pyg.parameters(), lr=1e-3)

            def step_pyg(s):
                u, p, n = batches[s]
                z = pyg.get_embedding(edge_index)
                loss = bpr(z[u], z[p + n_u], z[n + n_u])
                popt.zero_grad()
                loss.backward()
                popt.step()
            sec = time_steps(step_pyg, args.steps)
            results["torch_geometric LightGCN (edge_index)"] = sec
            print(f"torch_geometric: {sec:.3f} s/step -> {sec * n_batches:.1f} s/epoch "
                  f"(peak RSS {peak_rss_gb():.1f} GB)")

    if len(results) == 2:
        a, b = results.values()
        print(f"speed-up of ours over torch_geometric: {b / a:.1f}x "
              f"({a * n_batches:.1f} vs {b * n_batches:.1f} s/epoch)")


if __name__ == "__main__":
    os.environ.setdefault("PYTHONHASHSEED", "0")
    main()
