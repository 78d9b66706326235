"""The GPU check: throughput and MFU of the workbench's own LLM training steps for a ~1B-parameter
Llama at the paper's prompt length, in at most 8 minutes on one H100, with nothing downloaded.

    python benchmarks/bench_gpu_check.py [--out outputs/gpu_check.json] [--steps 8] [--budget 420]
    python benchmarks/bench_gpu_check.py --tiny      # the same code paths on a CPU, in seconds

The model is Llama-2-7B's published architecture (params/backbones/llama-2-7b.json) at hidden 2048,
16 layers, 16 heads (MLP 5504, vocabulary 32000): 0.94B parameters, random weights, built with
`llm.tiny.build_backbone` and loaded through the normal loader; its tokenizer is a small BPE
trained on the made-up item titles (the vocabulary's other rows are spare). Rows printed:

  full SFT      every parameter, fp32 weights + bf16 autocast (`sft.bf16_autocast`), AdamW
  full SFT bf16 every parameter, bf16 weights and AdamW moments (the paper preset's llm.dtype)
  LoRA          bf16 base, r 8 on q/k/v/o (`sft.trainable: lora`), fp32 adapters
                each at the paper preset's batch (8) and, except bf16, at the largest batch that
                fits (doubling from 16), on 1024-token sequences whose last 8 tokens are the answer
  joint BDLM    one `JointTrainer.run_step` (LLM step + domain step + M + distances) at batch 8,
                on a made-up dataset (1000 users, 800 items) with ET and an untrained LightGCN

Each step is the one `sft_train` runs (`lm_forward` under `autocast`, backward, clipping, AdamW)
after `setup_trainable`. tokens/s counts every input token; MFU = tokens/s x FLOPs per token /
(--peak-tflops, 989 = bf16 dense on an H100 SXM), FLOPs per token as `bdlm plan` counts them
(`plan.flops_per_token`: 6N + 12 L h s for full training, 4N + 8 L h s with a frozen base; N = the
decoder layers' parameters; the LM head runs on the answer tokens only). Target: full SFT at 40%
MFU or more. Peak memory: torch.cuda.max_memory_allocated per row. The JSON (--out) is what
`bdlm plan --costs` reads (full_sft.mfu, lora.mfu). Rows that would pass --budget seconds are
skipped and say so.
"""
from __future__ import annotations

import argparse
import gc
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bdlm_lib.llm.backbone import load_backbone  # noqa: E402
from bdlm_lib.llm.batching import lm_forward  # noqa: E402
from bdlm_lib.llm.efficiency import autocast  # noqa: E402
from bdlm_lib.llm.sft import setup_trainable  # noqa: E402
from bdlm_lib.params import load_params  # noqa: E402
from bdlm_lib.plan import describe_backbone, flops_per_token  # noqa: E402

T0 = time.perf_counter()
SIZES = {"full": dict(hidden_size=2048, num_layers=16, num_heads=16),
         "tiny": dict(hidden_size=64, num_layers=2, num_heads=4)}
WORDS = [a + b for a in ("red", "blue", "sun", "star", "moon", "tea", "gold", "silk", "river", "night",
                         "iron", "rose", "wolf", "snow", "fire", "leaf")
         for b in ("", "s", "light", "fall", "wood", "land", "song", "stone", "field", "heart")]


def made_up_data(folder: Path, n_users: int, n_items: int, seed: int = 0) -> Path:
    """A dataset in the TSV layout (interactions.tsv, item_titles.tsv): popularity-skewed
    histories of 15-30 items, titles of 3-6 words and a year."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    pop = 1.0 / (np.arange(n_items) + 10.0)
    pop /= pop.sum()
    rows, seqs = ["user_id\titem_id\ttimestamp\tseq_pos"], {}
    for u in range(1, n_users + 1):
        items = rng.choice(np.arange(1, n_items + 1), size=int(rng.integers(15, 31)), replace=False, p=pop)
        for k, i in enumerate(items):
            rows.append(f"{u}\t{i}\t{978300000 + 1000 * k}\t{k}")
    titles = ["item_id\ttitle"] + [
        f"{i}\t{' '.join(w.capitalize() for w in rng.choice(WORDS, size=int(rng.integers(3, 7))))} "
        f"({1950 + i % 70})" for i in range(1, n_items + 1)]
    (folder / "interactions.tsv").write_text("\n".join(rows) + "\n", encoding="utf-8")
    (folder / "item_titles.tsv").write_text("\n".join(titles) + "\n", encoding="utf-8")
    return folder


def build_model(folder: Path, data: Path, size: str) -> Path:
    """The random-weight Llama of `size` with a BPE tokenizer trained on the titles, as a folder."""
    from bdlm_lib.llm.tiny import bpe_tokenizer, build_backbone
    texts = (data / "item_titles.tsv").read_text(encoding="utf-8").splitlines()[1:]
    tok = bpe_tokenizer([t.split("\t", 1)[1] for t in texts] * 3, vocab_size=3000)
    vocab = 32000 if size == "full" else 4000
    return build_backbone("llama-2-7b", folder, tok, spare_rows=max(0, vocab - len(tok)), **SIZES[size])


def synthetic_batch(batch: int, seq: int, vocab: int, answer: int = 8) -> dict:
    """`collate`'s keys for `batch` sequences of `seq` random tokens, the last `answer` ones the answer."""
    g = torch.Generator().manual_seed(batch)
    ids = torch.randint(3, vocab, (batch, seq), generator=g)
    labels = torch.full_like(ids, -100)
    labels[:, -answer:] = ids[:, -answer:]
    return {"input_ids": ids, "attention_mask": torch.ones_like(ids),
            "position_ids": torch.arange(seq).expand(batch, -1).clone(), "labels": labels,
            "answer_pos": torch.full((batch,), seq - answer - 1)}


def sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def free() -> None:
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()


def peak_gib() -> float | None:
    return torch.cuda.max_memory_allocated() / 2 ** 30 if torch.cuda.is_available() else None


class Stepper:
    """One `sft_train` step (setup_trainable, AdamW, autocast, clipping) on a loaded model."""

    def __init__(self, model, tok, params):
        self.model, self.params = model, params
        groups, self.hooks, self.info = setup_trainable(model, tok, params)
        self.trainable = [p for g in groups for p in g["params"]]
        self.opt = torch.optim.AdamW(groups, lr=1e-5)
        self.dev = model.get_input_embeddings().weight.device
        model.train()

    def step(self, batch: dict) -> None:
        self.opt.zero_grad(set_to_none=True)
        with autocast(self.dev, self.params):
            out = lm_forward(self.model, batch, need_items=False)
        out.loss.backward()
        torch.nn.utils.clip_grad_norm_(self.trainable, 1.0)
        self.opt.step()

    def timed(self, batch: dict, steps: int) -> float:
        """Median seconds per step after one warm-up step."""
        batch = {k: v.to(self.dev) for k, v in batch.items()}
        self.step(batch)
        sync()
        times = []
        for _ in range(steps):
            t = time.perf_counter()
            self.step(batch)
            sync()
            times.append(time.perf_counter() - t)
        return statistics.median(times)


def is_oom(e: BaseException) -> bool:
    return isinstance(e, torch.cuda.OutOfMemoryError) or "out of memory" in str(e).lower()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="outputs/gpu_check.json")
    ap.add_argument("--steps", type=int, default=8, help="timed steps per row (median)")
    ap.add_argument("--budget", type=float, default=420.0, help="seconds; later rows are skipped past it")
    ap.add_argument("--peak-tflops", type=float, default=989.0)
    ap.add_argument("--seq", type=int, default=None, help="tokens per sequence (default: the paper preset's)")
    ap.add_argument("--tiny", action="store_true", help="a 2-layer model, short sequences: the code paths on a CPU")
    args = ap.parse_args()
    from transformers.utils import logging as hf_logging
    hf_logging.disable_progress_bar()
    size = "tiny" if args.tiny else "full"
    paper = load_params("ml1m", "paper")
    seq = args.seq or (64 if args.tiny else int(paper["llm"]["max_prompt_tokens"]))
    bs = 2 if args.tiny else int(paper["sft"]["batch_size"])
    dev = "cuda" if torch.cuda.is_available() else "cpu"
    device = torch.cuda.get_device_name(0) if dev == "cuda" else "cpu"
    work = Path(tempfile.mkdtemp(prefix="bdlm-gpu-check-"))
    data = made_up_data(work / "data", 60 if args.tiny else 1000, 50 if args.tiny else 800)
    folder = build_model(work / "model", data, size)
    bb = describe_backbone(str(folder))
    print(f"device: {device}; torch {torch.__version__}; model {bb.params / 1e9:.2f}B parameters "
          f"({bb.layers} layers, hidden {bb.hidden}), {seq}-token sequences; setup "
          f"{time.perf_counter() - T0:.0f} s", flush=True)
    rows, result = [], {"device": device, "torch": torch.__version__, "seq": seq,
                        "peak_tflops": args.peak_tflops,
                        "model": {"params": bb.params, "layer_params": bb.layer_params,
                                  "layers": bb.layers, "hidden": bb.hidden}}
    rate = args.peak_tflops * 1e12

    def record(key, what, batch, tokens, seconds, kind, peak, note=""):
        tps = tokens / seconds
        mfu = tps * flops_per_token(bb, seq if key != "joint" else tokens / batch, kind) / rate
        row = {"what": what, "batch": batch, "tokens_per_s": round(tps), "mfu": float(f"{mfu:.4g}"),
               "step_s": round(seconds, 4), "peak_gib": None if peak is None else round(peak, 1), "note": note}
        rows.append(row)
        result.setdefault(key, row)
        print(f"{what:<48} batch {batch:>4}  {tps:>9.0f} tokens/s  MFU {mfu:6.1%}  "
              f"peak {'-' if peak is None else f'{peak:5.1f} GiB'}  {note}", flush=True)

    def over_budget(what) -> bool:
        if time.perf_counter() - T0 > args.budget:
            rows.append({"what": what, "note": "skipped: time budget"})
            print(f"{what:<48} skipped (past --budget {args.budget:g} s)", flush=True)
            return True
        return False

    def sft_rows(key, what, over, dtype, kind, search):
        if over_budget(what):
            return
        p = load_params("ml1m", "paper", {"llm.dtype": dtype, **over})
        model, tok = load_backbone(str(folder), dtype=dtype)
        model.to(dev)
        free()
        st = Stepper(model, tok, p)
        secs = st.timed(synthetic_batch(bs, seq, bb.vocab), args.steps)
        record(key, what, bs, bs * seq, secs, kind, peak_gib())
        b, best = bs, None
        while search and time.perf_counter() - T0 < args.budget:
            b *= 2
            if args.tiny and b > 8:
                break
            try:
                free()
                secs = st.timed(synthetic_batch(b, seq, bb.vocab), max(2, args.steps // 2))
                best = (b, secs, peak_gib())
            except Exception as e:   # out of memory: the previous batch was the largest
                if not is_oom(e):
                    raise
                st.opt.zero_grad(set_to_none=True)
                break
        if best is not None:
            record(key + "_max", f"{what} (largest batch)", best[0], best[0] * seq, best[1], kind, best[2])
        del st, model
        free()

    sft_rows("full_sft", "full SFT (fp32 + bf16 autocast)", {"sft.trainable": "full"}, "float32",
             "train_full", True)
    sft_rows("full_sft_bf16", "full SFT (bf16 weights)", {"sft.trainable": "full"}, "bfloat16",
             "train_full", False)
    sft_rows("lora", "LoRA r8 q/k/v/o (bf16 base)", {"sft.trainable": "lora"}, "bfloat16",
             "train_frozen", True)

    if not over_budget("joint BDLM step"):
        from bdlm_lib.data import load_dataset
        from bdlm_lib.domain import build_domain_model
        from bdlm_lib.joint.run import build_joint
        p = load_params(str(data), "paper", {"output_dir": str(work / "out"), "llm.backbone": str(folder),
                                             "llm.dtype": "float32", "domain.progress": False,
                                             "joint.max_steps": args.steps + 1, "eval.max_users": 20})
        ds = load_dataset(p, verbose=False)
        torch.manual_seed(0)
        dom = build_domain_model(p["domain"]["model"], ds.n_users, ds.n_items, p, ds=ds)
        llm, tok = load_backbone(str(folder), dtype="float32")
        llm.to(dev)
        free()
        tr = build_joint(p, ds, dom, llm, tok, progress=False)
        tr.run_step(0)
        sync()
        times, tokens = [], []
        for g in range(1, min(args.steps + 1, tr.total)):
            prompts = [tr.samples[i] for i in tr.schedule[g]]
            t = time.perf_counter()
            tr.run_step(g)
            sync()
            times.append(time.perf_counter() - t)
            tokens.append(sum(len(q.input_ids) + len(q.answer_ids) for q in prompts))
        k = int(np.argsort(times)[len(times) // 2])
        record("joint", "joint BDLM step (full, fp32+autocast)", len(tr.schedule[1]), tokens[k], times[k],
               "train_full", peak_gib(), f"mean prompt {tokens[k] / len(tr.schedule[1]):.0f} tokens")
    result["rows"] = rows
    result["seconds"] = round(time.perf_counter() - T0, 1)
    full = result.get("full_sft", {}).get("mfu")
    if full is not None:
        print(f"target: full SFT at 40% MFU or more: {'met' if full >= 0.40 else 'NOT met'} ({full:.1%}); "
              f"total {result['seconds']:.0f} s", flush=True)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1))
    print(f"written: {out} (bdlm plan --costs {out})")


if __name__ == "__main__":
    main()
