"""Benchmark of the LLM scoring paths on real ML-1M top-K prompts (same prompts, same model).

(a) ET: one-pass restricted scoring (logits of the 20 <iid> tokens at the answer position) vs
    free `generate` + parsing (answers outside the candidate set are counted and score a miss).
(b) text-only: title log-likelihood with the prompt's KV cache reused for the 20 titles vs 20 full
    forward passes (prompt + title, batched as one padded batch of 20); scores must agree to 1e-4.
(c) the floor: a bare batched forward pass of the transformer body over the same ET prompts.
(d) binary (ET): each user's four binary prompts (valid + test) sharing their history prefix
    (KV cache) vs padded batches; P(Yes) must agree to 1e-4.
Prints prompts/s and HR@1 for each (for (d), the binary F1 at 0.5 instead).

    python benchmarks/bench_llm_scoring.py --n-prompts 8 [--preset smoke] [--backbone PATH]
"""
from __future__ import annotations

import argparse
import os
import time

import numpy as np
import torch


def timed(fn):
    t0 = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - t0


def hr1(prompts, scores):
    return float(np.mean([p.candidates[int(np.argmax(s))] == p.target for p, s in zip(prompts, scores)]))


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dataset", default="ml1m")
    ap.add_argument("--preset", default="smoke")
    ap.add_argument("--backbone", default="smollm2-135m-instruct")
    ap.add_argument("--n-prompts", type=int, default=8)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--output-dir", default="outputs")
    ap.add_argument("--max-new-tokens", type=int, default=8)
    args = ap.parse_args(argv)

    from bdlm_lib.data import load_dataset
    from bdlm_lib.llm import PromptBuilder, extend_tokens, load_backbone
    from bdlm_lib.llm.scoring import (answer_hidden, continuation_loglik, generate_answers,
                                      parse_topk_answer, score_binary_prompts, score_topk_prompts)
    from bdlm_lib.llm.batching import body, collate
    from bdlm_lib.params import load_params

    params = load_params(args.dataset, args.preset, {"output_dir": args.output_dir})
    ds = load_dataset(params, verbose=False)
    frame = ds.topk("test", max_users=args.n_prompts)
    model, tok = load_backbone(args.backbone)
    torch.set_grad_enabled(False)
    print(f"{args.n_prompts} top-K prompts from {args.dataset}/{args.preset}, backbone {args.backbone}, "
          f"torch threads {torch.get_num_threads()}")
    rows = []

    # (b) text-only first (before ET changes the vocabulary)
    tb = PromptBuilder(ds, tok, params)
    tprompts = tb.topk_prompts(frame)
    model(input_ids=torch.tensor([tprompts[0].input_ids]))  # warm-up: first-call allocations untimed
    kv, t_kv = timed(lambda: [continuation_loglik(model, p.input_ids, [tb._answer(tb.titles[j]) for j in p.candidates])
                              for p in tprompts])

    def full_passes():
        out = []
        for p in tprompts:
            conts = [tb._answer(tb.titles[j]) for j in p.candidates]
            seqs = [list(p.input_ids) + c for c in conts]
            T = max(map(len, seqs))
            ids = torch.full((len(seqs), T), tok.pad_token_id)
            mask = torch.zeros((len(seqs), T), dtype=torch.long)
            for k, s in enumerate(seqs):
                ids[k, :len(s)], mask[k, :len(s)] = torch.tensor(s), 1
            lp = torch.log_softmax(model(input_ids=ids, attention_mask=mask).logits.float(), -1)
            n = len(p.input_ids)
            out.append(np.array([float(sum(lp[k, n - 1 + t, c[t]] for t in range(len(c))))
                                 for k, c in enumerate(conts)]))
        return out
    full, t_full = timed(full_passes)
    diff = max(float(np.abs(a - b).max()) for a, b in zip(kv, full))
    rows.append(("(b) titles, KV cache reused", len(tprompts) / t_kv, hr1(tprompts, kv), f"max |diff| {diff:.2e}"))
    rows.append(("(b) titles, 20 full passes", len(tprompts) / t_full, hr1(tprompts, full),
                 f"KV speed-up {t_full / t_kv:.1f}x"))

    # ET prompts
    tm = extend_tokens(model, tok, ds.n_users, ds.n_items)
    eb = PromptBuilder(ds, tok, params, tm)
    eprompts = eb.topk_prompts(frame)
    bs = args.batch_size

    def floor():
        for s in range(0, len(eprompts), bs):
            b = collate(eprompts[s:s + bs], tok.pad_token_id, with_answer=False)
            body(model)(input_ids=b["input_ids"], attention_mask=b["attention_mask"],
                        position_ids=b["position_ids"], use_cache=False)
    _, t_floor = timed(floor)
    one, t_one = timed(lambda: score_topk_prompts(model, eb, eprompts, batch_size=bs))
    gen, t_gen = timed(lambda: generate_answers(model, tok, eprompts, bs, args.max_new_tokens))
    picked = [parse_topk_answer(g, p, eb) for g, p in zip(gen, eprompts)]
    outside = sum(j < 0 for j in picked)
    gen_hr1 = float(np.mean([j == p.target for j, p in zip(picked, eprompts)]))
    rows.append(("(c) floor: bare batched forward", len(eprompts) / t_floor, float("nan"), ""))
    rows.append(("(a) ET one-pass restricted", len(eprompts) / t_one, hr1(eprompts, one),
                 f"{100 * (t_one / t_floor - 1):+.1f}% vs floor"))
    rows.append(("(a) ET generate + parse", len(eprompts) / t_gen, gen_hr1,
                 f"{outside}/{len(eprompts)} answers outside the candidates"))
    import pandas as pd
    from sklearn.metrics import f1_score
    bframe = pd.concat([ds.binary("valid", max_users=args.n_prompts),
                        ds.binary("test", max_users=args.n_prompts)], ignore_index=True)
    bprompts = eb.binary_prompts(bframe, with_answer=False)
    y = bframe["label"].to_numpy()
    sh, t_sh = timed(lambda: score_binary_prompts(model, eb, bprompts, share_prefix=True))
    pb, t_pb = timed(lambda: score_binary_prompts(model, eb, bprompts, batch_size=bs, share_prefix=False))
    rows.append(("(d) binary, shared history prefix", len(bprompts) / t_sh, f1_score(y, sh > 0.5),
                 f"max |diff| {np.abs(sh - pb).max():.2e}, speed-up {t_pb / t_sh:.2f}x"))
    rows.append(("(d) binary, padded batches", len(bprompts) / t_pb, f1_score(y, pb > 0.5),
                 f"{len(bprompts)} prompts"))
    print(f"{'path':36s} {'prompts/s':>10s} {'HR@1':>6s}  note")
    for name, pps, h, note in rows:
        print(f"{name:36s} {pps:10.3f} {h:6.3f}  {note}")
    print("example generated answer:", repr(gen[0]))
    return rows


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    main()
