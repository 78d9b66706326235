"""The domain side on the GPU against the CPU, in the same run (`params.domain.device`).

    python benchmarks/bench_domain_device.py [--dataset ml1m] [--preset paper] [--steps 20]
        [--models lightgcn,gmf,ncf,sasrec,gru4rec,bert4rec] [--cpu-models lightgcn]
        [--random-weights CONFIG_DIR] [--set KEY=VALUE ...]

1. One training epoch (+ one validation) of each domain model on the GPU, and of `--cpu-models`
   on the CPU as the reference: seconds and the ratio.
2. Joint BDLM for `--steps` steps twice, from the same pre-trained LightGCN, the LLM on the GPU
   both times and the domain side (model, P, M, head) on the CPU, then on the GPU: the median step
   time of each and how far apart their first steps' losses are (the same computation on two
   devices: float rounding only).
--random-weights: the backbone from CONFIG_DIR's config + tokenizer with seeded random weights
(step times do not depend on weight values). Needs a CUDA device.
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from bdlm_lib.params import parse_overrides  # noqa: E402
from bdlm_lib.data import load_dataset  # noqa: E402
from bdlm_lib.domain import NegativeSampler, build_domain_model  # noqa: E402
from bdlm_lib.domain.trainer import model_setting, train_epoch, valid_hr1  # noqa: E402
from bdlm_lib.pipeline import method_params, run_method  # noqa: E402
from bench_gpu_paper_scale import random_backbone, step_seconds  # noqa: E402


def sync():
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def epoch_seconds(ds, params, device: str) -> tuple[float, float]:
    """(one training epoch, one validation HR@1) in seconds for a fresh `params.domain.model`
    (method gmf -> model mf) on `device`."""
    name = params["domain"]["model"]
    model = build_domain_model(name, ds.n_users, ds.n_items, params, ds=ds).to(device)
    opt = torch.optim.Adam(model.parameters(), lr=float(model_setting(params, name, "lr")))
    sampler = NegativeSampler(ds.train["user"].to_numpy(), ds.train["item"].to_numpy(), ds.n_items)
    if model.unit == "users":
        model.set_train_sequences(ds.train_sequences())
    sync()
    t0 = time.perf_counter()
    train_epoch(model, ds, params, 0, opt, sampler)
    sync()
    t1 = time.perf_counter()
    valid_hr1(model, ds, params)
    sync()
    return t1 - t0, time.perf_counter() - t1


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dataset", default="ml1m")
    ap.add_argument("--preset", default="paper")
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--models", default="lightgcn,gmf,ncf,sasrec,gru4rec,bert4rec")
    ap.add_argument("--cpu-models", default="lightgcn", help="also timed on the CPU (the reference)")
    ap.add_argument("--eval-users", type=int, default=200)
    ap.add_argument("--random-weights", default=None, metavar="CONFIG_DIR")
    ap.add_argument("--out", default=None)
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    args = ap.parse_args()
    if not torch.cuda.is_available():
        sys.exit("bench_domain_device: needs a CUDA device (it compares the GPU with the CPU)")
    out = Path(args.out or tempfile.mkdtemp(prefix="bdlm-domain-device-"))
    over = {"output_dir": str(out), "eval.max_users": args.eval_users, "domain.progress": False,
            "domain.epochs": 1, "joint.max_steps": args.steps, "joint.valid_users": 20}
    over.update(parse_overrides(args.set))
    if args.random_weights:
        over["llm.backbone"] = str(random_backbone(args.random_weights, out / "random-backbone"))
    print(f"device: {torch.cuda.get_device_name(0)}; torch {torch.__version__}; "
          f"CPU threads {torch.get_num_threads()}; out {out}", flush=True)
    ds = load_dataset(method_params("lightgcn", args.dataset, args.preset, over), verbose=False)
    res: dict = {"epoch": {}, "joint": {}}

    print("\n| model | epoch s (GPU) | valid s (GPU) | epoch s (CPU) | CPU / GPU |\n| --- | --- | --- | --- | --- |")
    cpu_models = set(filter(None, args.cpu_models.split(",")))
    for name in filter(None, args.models.split(",")):
        p = method_params(name, args.dataset, args.preset, over)
        g = epoch_seconds(ds, p, "cuda")
        c = epoch_seconds(ds, p, "cpu") if name in cpu_models else None
        res["epoch"][name] = {"gpu": g, "cpu": c}
        ratio = f"{c[0] / g[0]:.1f}x" if c else "-"
        print(f"| {name} | {g[0]:.2f} | {g[1]:.2f} | {f'{c[0]:.2f}' if c else '-'} | {ratio} |", flush=True)

    runs = {}
    for dev in ("cpu", "cuda"):
        p = method_params("bdlm", args.dataset, args.preset,
                          {**over, "domain.device": dev, "joint.variant": f"bench-domain-{dev}"})
        t0 = time.perf_counter()
        m = run_method("bdlm", p, ds, progress=False)
        hist = json.loads((Path(m["run_dir"]) / "history.json").read_text())["steps"]
        runs[dev] = {"step_s": step_seconds(m["run_dir"]), "wall_s": time.perf_counter() - t0, "steps": hist,
                     "eval_s_per_user": (m["llm"]["wall_seconds"] - m["llm"]["train_seconds"]) / args.eval_users}
    keys = ("L_LLM", "L_D", "L_ML^L", "L_ML^D")
    diff = max(abs(a[k] - b[k]) / max(abs(a[k]), 1e-8) for a, b in zip(runs["cpu"]["steps"][:3], runs["cuda"]["steps"][:3])
               for k in keys if a.get(k) is not None and b.get(k) is not None)
    print(f"\n| joint BDLM, LLM on the GPU, {args.steps} steps | domain on CPU | domain on GPU | ratio |\n| --- | --- | --- | --- |")
    for k in ("step_s", "eval_s_per_user", "wall_s"):
        c, g = runs["cpu"][k], runs["cuda"][k]
        print(f"| {k} | {c:.3f} | {g:.3f} | {c / g:.2f}x |")
    print(f"| max relative difference of the first 3 steps' losses (CPU vs GPU domain side) | {diff:.2e} | | |")
    res["joint"] = {d: {k: v for k, v in r.items() if k != "steps"} for d, r in runs.items()}
    res["joint"]["loss_rel_diff_first3"] = diff
    (out / "bench_domain_device.json").write_text(json.dumps(res, indent=1))


if __name__ == "__main__":
    main()
