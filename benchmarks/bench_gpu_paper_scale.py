"""What a `paper_<dataset>` batch costs on one GPU: the real pipeline (`run_method`) at the paper
preset (full data, full-parameter SFT, bf16, batch 8), cut to a few steps and evaluated users,
timed per stage, then scaled to the full schedule the preset implies.

    python benchmarks/bench_gpu_paper_scale.py [--dataset ml1m] [--steps 40] [--eval-users 200]
        [--domain-epochs 3] [--random-weights CONFIG_DIR] [--deepspeed] [--out DIR] [--set KEY=VALUE ...]

--random-weights builds the backbone from CONFIG_DIR's config.json + tokenizer with seeded random
weights (for machines the embedded model's GGUF file cannot reach): step and scoring times do not
depend on the weights' values, the HR figures then mean nothing and are not printed.
--deepspeed adds the joint step under DeepSpeed ZeRO-3 (one process, params/deepspeed/zero3.json).
Prints one table of measured figures and one of the extrapolated batch.
"""
from __future__ import annotations

import argparse
import json
import math
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bdlm_lib.params import parse_overrides  # noqa: E402
from bdlm_lib.data import load_dataset  # noqa: E402
from bdlm_lib.pipeline import method_params, run_method  # noqa: E402


def random_backbone(config_dir: str, out: Path) -> Path:
    """config + tokenizer of `config_dir`, seeded random weights, saved as a model folder."""
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(config_dir), dtype=torch.float32)
    model.save_pretrained(out)
    AutoTokenizer.from_pretrained(config_dir).save_pretrained(out)
    return out


def step_seconds(run_dir) -> float:
    """Median seconds of one joint step (history.json holds cumulative seconds per step; the
    median leaves out the steps followed by a validation)."""
    secs = [r["seconds"] for r in json.loads((Path(run_dir) / "history.json").read_text())["steps"]]
    diffs = sorted(b - a for a, b in zip(secs, secs[1:]))
    return diffs[len(diffs) // 2] if diffs else float("nan")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dataset", default="ml1m")
    ap.add_argument("--steps", type=int, default=40, help="LLM / joint steps timed per method")
    ap.add_argument("--eval-users", type=int, default=200)
    ap.add_argument("--domain-epochs", type=int, default=3)
    ap.add_argument("--random-weights", default=None, metavar="CONFIG_DIR")
    ap.add_argument("--deepspeed", action="store_true")
    ap.add_argument("--out", default=None, help="output_dir of the runs (default: a temp folder)")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                    help="extra parameter override (YAML value), e.g. data.sample_users=100")
    args = ap.parse_args()

    out = Path(args.out or tempfile.mkdtemp(prefix="bdlm-gpu-bench-"))
    over = {"output_dir": str(out), "eval.max_users": args.eval_users,
            "sft.max_steps": args.steps, "joint.max_steps": args.steps,
            "joint.valid_users": min(100, args.eval_users), "domain.epochs": args.domain_epochs,
            "domain.progress": False}
    over.update(parse_overrides(args.set))
    if args.random_weights:
        over["llm.backbone"] = str(random_backbone(args.random_weights, out / "random-backbone"))
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "none"
    print(f"device: {gpu}; torch {torch.__version__}; threads {torch.get_num_threads()}; out {out}")

    rows, t = {}, {}
    p = method_params("lightgcn", args.dataset, "paper", over)
    t0 = time.perf_counter()
    ds = load_dataset(p)
    t["data_prep_s"] = time.perf_counter() - t0
    n_users, n_items = ds.n_users, ds.n_items

    def run(method):
        if torch.cuda.is_available():
            torch.cuda.reset_peak_memory_stats()
        params = method_params(method, args.dataset, "paper", over)
        t0 = time.perf_counter()
        m = run_method(method, params, ds, progress=False)
        m["_wall"] = time.perf_counter() - t0
        m["_peak_gb"] = torch.cuda.max_memory_allocated() / 2 ** 30 if torch.cuda.is_available() else 0.0
        rows[method] = m
        print(f"{method}: {m['_wall']:.1f} s, peak GPU memory {m['_peak_gb']:.1f} GiB", flush=True)
        return m

    m = run("lightgcn")
    t["domain_epoch_s"] = m["epoch_seconds"]
    m = run("instructrec")
    s = m["llm"]["seconds"]
    # s["sft"] = building + tokenising every training prompt (once per run, CPU) + the SFT loop
    loop = json.loads((Path(m["run_dir"]) / "history.json").read_text())["seconds"]
    t["sft_step_s"] = loop / max(m["llm"]["sft_steps"], 1)
    t["prompt_build_s"] = s["sft"] - loop
    t["eval_titles_user_s"] = s["eval"] / args.eval_users
    n_samples = m["llm"]["sft_samples"]
    m = run("llmrec")
    t["eval_titles_user_s_llmrec"] = m["llm"]["seconds"]["eval"] / args.eval_users
    m = run("bdlm")
    t["joint_step_s"] = step_seconds(m["run_dir"])
    # wall - train = both sides' test evaluations (+ saving the embeddings)
    t["eval_bdlm_user_s"] = (m["llm"]["wall_seconds"] - m["llm"]["train_seconds"]) / args.eval_users
    if args.deepspeed:
        from bdlm_lib.joint.run import run_bdlm
        params = method_params("bdlm", args.dataset, "paper",
                               {**over, "joint.deepspeed_config": "params/deepspeed/zero3.json"})
        t0 = time.perf_counter()
        try:
            _, _, ds_dir = run_bdlm(params, ds, progress=False)
            t["joint_step_s_deepspeed_zero3"] = step_seconds(ds_dir)
            print(f"deepspeed: {time.perf_counter() - t0:.1f} s", flush=True)
        except Exception as e:  # report, keep the other figures
            print(f"deepspeed failed: {type(e).__name__}: {str(e)[:300]}", flush=True)

    print("\n| measured | value |\n| --- | --- |")
    print(f"| users / items | {n_users} / {n_items} |")
    print(f"| SFT samples (3 positions per user) | {n_samples} |")
    for k, v in t.items():
        print(f"| {k} | {v:.3f} |")
    for k, m in rows.items():
        print(f"| {k}: wall s / peak GPU GiB | {m['_wall']:.1f} / {m['_peak_gb']:.1f} |")
    if not args.random_weights:
        for k, m in rows.items():
            print(f"| {k}: HR@1 ({args.eval_users} users, {args.steps} steps) | {m.get('HR@1', float('nan')):.3f} |")

    # the full schedule of the paper preset (params/presets/paper.yaml)
    base = method_params("bdlm", args.dataset, "paper")
    bs = int(base["sft"]["batch_size"])
    sft_steps = math.ceil(n_samples / bs) * int(base["sft"]["epochs"])
    joint_steps = math.ceil(n_samples / bs) * int(base["joint"]["epochs"])
    ev_titles = n_users * t["eval_titles_user_s"]
    ev_bdlm = n_users * t["eval_bdlm_user_s"]
    dom = t["domain_epoch_s"] * int(base["domain"]["epochs"])  # upper bound: early stopping cuts it
    joint_run = t["prompt_build_s"] + joint_steps * t["joint_step_s"] + ev_bdlm
    est = {
        "LLM-Rec (eval only)": n_users * t["eval_titles_user_s_llmrec"],
        "InstructRec": t["prompt_build_s"] + sft_steps * t["sft_step_s"] + ev_titles,
        "BDLM, one λ": joint_run,
        "BDLM × 6 λ + w/o PE + w/o ET + BDLM-NCF (9 joint runs)": 9 * joint_run,
        "w/o JL (LLM phase + domain phase)": joint_run + joint_steps * t["joint_step_s"],
        "LightGCN (≤ 200 epochs)": dom,
    }
    total = sum(v for k, v in est.items() if k != "BDLM, one λ")
    print(f"\n| paper_{args.dataset} (extrapolated; {sft_steps} SFT steps, {joint_steps} joint steps, "
          f"{n_users} test users) | hours |\n| --- | --- |")
    for k, v in est.items():
        print(f"| {k} | {v / 3600:.2f} |")
    print(f"| total (without GPT4SM and the 5 other domain baselines) | {total / 3600:.2f} |")
    (out / "bench_gpu.json").write_text(json.dumps({"measured": t, "estimate_s": est, "gpu": gpu,
                                                    "steps": args.steps, "eval_users": args.eval_users},
                                                   indent=1))


if __name__ == "__main__":
    main()
