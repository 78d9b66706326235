"""BDLM-drs scoring: the cascade LLM -> h_L -> LLM-enhanced domain model (paper §4.2, §5.4).

top-K: one LLM forward pass over each user's top-K prompt (no answer), h_L read at each of the 20
candidates' tokens (`<iid_j>`, or the last title token without ET), then the enhanced domain model
scores the 20 (user, candidate, h_L) triples. binary: the asked item's token in the binary prompt,
one user's prompts sharing their history prefix (`llm.scoring.shared_prefix_hidden`).
With ET the same forward pass also gives the LLM's own top-K scores (logits of the candidates'
`<iid>` tokens at the answer position, exactly what `llm.scoring.score_topk` computes), which the
trainer uses to validate both sides with one pass.
"""
from __future__ import annotations

from contextlib import contextmanager

import numpy as np
import pandas as pd
import torch

from ..llm.batching import collate, fill_scores, length_batches, lm_forward, pad_id, progress_bar
from ..llm.scoring import p_yes, restricted_logits, score_topk_prompts, shared_prefix_groups


@torch.no_grad()
def _candidate_hidden(llm, prompts, pad: int):
    """(LMOutput, h_L [B, C, h] at each top-K prompt's candidates)."""
    batch = collate(prompts, pad, with_answer=False)
    dev = llm.get_input_embeddings().weight.device
    with torch.autocast("cuda", dtype=torch.bfloat16, enabled=dev.type == "cuda"):
        out = lm_forward(llm, batch, need_items=True)
    cols = [[m for m, r in enumerate(p.item_roles) if r == "candidate"] for p in prompts]
    C = max(len(c) for c in cols)
    if any(len(c) != C for c in cols):
        raise ValueError("cascade: prompts of one batch differ in their number of candidates")
    idx = torch.tensor(cols, dtype=torch.long, device=out.item_hidden.device)
    h = out.item_hidden.gather(1, idx.unsqueeze(-1).expand(-1, -1, out.item_hidden.shape[-1]))
    return out, h.float()


@contextmanager
def _eval_mode(llm, enhanced):
    """The LLM and the enhanced model in eval mode (the LLM's training flag restored afterwards)."""
    was = llm.training
    llm.eval()
    try:
        with enhanced.domain.inference():
            enhanced.eval()
            yield
    finally:
        llm.train(was)


def _cascade_batches(llm, builder, enhanced, prompts, batch_size: int, desc: str, progress: bool):
    """Yield (prompt indices, LLM output, h_L) per length-sorted batch, in `_eval_mode`."""
    pad = pad_id(builder.tok)
    n_b = (len(prompts) + batch_size - 1) // batch_size
    with _eval_mode(llm, enhanced):
        for idx in progress_bar(length_batches(prompts, batch_size), n_b, desc, progress):
            out, h = _candidate_hidden(llm, [prompts[i] for i in idx], pad)
            yield idx, out, h


@torch.no_grad()
def cascade_topk_prompts(llm, builder, enhanced, prompts, batch_size: int = 8, progress: bool = False,
                         with_llm: bool = False):
    """Per prompt, the enhanced model's scores of its candidates (prompt order); with `with_llm`
    and ET also the LLM's candidate logits from the same pass (else None)."""
    drs: list = [None] * len(prompts)
    lls: list = [None] * len(prompts)
    for idx, out, h in _cascade_batches(llm, builder, enhanced, prompts, batch_size, "cascade top-K", progress):
        ps = [prompts[i] for i in idx]
        B, C, H = h.shape
        users = np.repeat([p.user for p in ps], C)
        items = np.concatenate([p.candidates for p in ps])
        # h_L goes to wherever the enhanced model lives (it moves it): no round trip through the CPU
        s = enhanced(users, items, h.reshape(B * C, H)).double().cpu().numpy().reshape(B, C)
        ll = None
        if with_llm and builder.et:
            tid = torch.as_tensor(np.stack([builder.tm.item_id(p.candidates) for p in ps]))
            ll = restricted_logits(llm, out.answer_hidden.float(), tid).cpu().numpy()
        for k, i in enumerate(idx):
            drs[i] = s[k]
            lls[i] = None if ll is None else ll[k]
    if with_llm and not builder.et:     # text only: the LLM ranks by title likelihood
        lls = score_topk_prompts(llm, builder, prompts, batch_size)
    return drs, (lls if with_llm else None)


@torch.no_grad()
def cascade_binary_prompts(llm, builder, enhanced, prompts, progress: bool = False, with_llm: bool = False):
    """The enhanced model's binary scores; with `with_llm` also the LLM's P(Yes) from the same
    pass (what `llm.scoring.score_binary` computes), as a pair (drs, llm). One user's prompts share
    their history prefix (`llm.scoring.shared_prefix_hidden`)."""
    out = np.zeros(len(prompts))
    yes = np.zeros(len(prompts))
    with _eval_mode(llm, enhanced):
        # h_L at the answer position and at the asked item's token
        for idx, ans, tgt in shared_prefix_groups(llm, prompts, True, "cascade binary", progress):
            users = np.array([prompts[i].user for i in idx])
            items = np.array([prompts[i].target for i in idx])
            out[idx] = enhanced(users, items, tgt).double().cpu().numpy()
            if with_llm:
                yes[idx] = p_yes(llm, builder, ans)
    return (out, yes) if with_llm else out


def make_cascade_score_fn(llm, builder, enhanced, batch_size: int = 8, progress: bool = True):
    """`score_fn(frame)` for `bdlm_lib.metrics.evaluate` (BDLM-drs)."""
    def score_fn(frame: pd.DataFrame) -> np.ndarray:
        if "position" in frame.columns:
            prompts = builder.topk_prompts(frame, with_answer=False)
            drs, _ = cascade_topk_prompts(llm, builder, enhanced, prompts, batch_size, progress)
            return fill_scores(frame, prompts, drs)
        prompts = builder.binary_prompts(frame, with_answer=False)
        return cascade_binary_prompts(llm, builder, enhanced, prompts, progress)
    return score_fn


def make_shared_score_fns(llm, builder, enhanced, batch_size: int = 8, progress: bool = True):
    """(score_fn_llm, score_fn_drs) that share ONE cascade pass per frame (ET only): both sides
    of a BDLM state are scored for the price of one. Each frame's pair of score arrays is kept for
    the other side (keyed by the frame's content: `evaluate` rebuilds its frames on every call)."""
    import hashlib
    if not builder.et:
        raise ValueError("make_shared_score_fns: needs ET (without it the LLM ranks by title likelihood)")
    memo: dict = {}

    def both(frame: pd.DataFrame):
        key = (tuple(frame.columns),
               hashlib.sha1(pd.util.hash_pandas_object(frame, index=False).to_numpy().tobytes()).hexdigest())
        if key not in memo:
            if "position" in frame.columns:
                prompts = builder.topk_prompts(frame, with_answer=False)
                drs, lls = cascade_topk_prompts(llm, builder, enhanced, prompts, batch_size, progress,
                                                with_llm=True)
                memo[key] = [fill_scores(frame, prompts, lls), fill_scores(frame, prompts, drs)]
            else:
                prompts = builder.binary_prompts(frame, with_answer=False)
                drs, lls = cascade_binary_prompts(llm, builder, enhanced, prompts, progress,
                                                  with_llm=True)
                memo[key] = [lls, drs]
        return memo[key]

    def side(k: int):
        def fn(frame: pd.DataFrame) -> np.ndarray:
            return both(frame)[k]
        return fn
    return side(0), side(1)


@torch.no_grad()
def cascade_rerank_scores(llm, builder, enhanced, users, top: np.ndarray, seed: int = 0,
                          batch_size: int = 8, progress: bool = False) -> np.ndarray:
    """BDLM-drs scores [U, N] of each user's first-stage top N (`top` [U, N], scores aligned with
    it): one top-K prompt per user with those N items as its candidates, shown in a seeded random
    order (as in SFT and the test sets, so the first stage's order is not given away), scored by
    the cascade."""
    rng = np.random.default_rng(np.random.SeedSequence([int(seed), 17]))
    perms = [rng.permutation(top.shape[1]) for _ in range(len(top))]
    prompts = [builder.topk(int(u), top[k][perms[k]]) for k, u in enumerate(users)]
    drs, _ = cascade_topk_prompts(llm, builder, enhanced, prompts, batch_size, progress)
    out = np.empty(top.shape, dtype=np.float64)
    for k, p in enumerate(perms):
        out[k, p] = drs[k]
    return out
