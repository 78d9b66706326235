"""Scoring with the LLM: no free generation in the metrics.

- top-K with ET: ONE forward pass per batch of prompts; a candidate's score is the logit of its
  `<iid_j>` token at the answer position (restricted to the 20 candidate rows of the output layer,
  so the full vocabulary projection is never computed).
- top-K without ET: a candidate's score is the log-likelihood of its (cut) title + end-of-turn as
  the answer (sum, or mean per token with llm.title_score = mean). The prompt runs once with a KV
  cache, the cache is repeated 20 times and the 20 title continuations run as one batch over it.
- full catalogue with ET (`all_item_scorer`): the logits of EVERY `<iid_j>` row at the answer
  position of each user's candidate-free prompt (`PromptBuilder.open_topk`), one pass per batch.
- binary: P(Yes) / (P(Yes) + P(No)) at the answer position. One user's binary prompts (the same
  history, a different item asked about) share their prefix: it runs once with a KV cache and
  the short suffixes run as one batch over it (`shared_prefix_hidden`).
- `generate_answer(s)`: free generation (greedy), for inspection and the benchmark.

`make_score_fn(model, builder)` gives the `score_fn(frame)` that bdlm_lib.metrics.evaluate wants
(top-K frames carry a `position` column, binary frames do not).
"""
from __future__ import annotations

import re
from typing import Sequence

import numpy as np
import pandas as pd
import torch

from .prompts import Prompt, PromptBuilder
from .batching import body, collate, fill_scores, length_batches, pad_id, progress_bar


def _device(model):
    return model.get_input_embeddings().weight.device


@torch.no_grad()
def answer_hidden(model, prompts: Sequence[Prompt], pad_id: int) -> torch.Tensor:
    """[B, h] last-layer hidden state at each prompt's answer position (one padded batch)."""
    batch = collate(prompts, pad_id, with_answer=False)
    dev = _device(model)
    mask = batch["attention_mask"].to(dev)
    with torch.autocast("cuda", dtype=torch.bfloat16, enabled=dev.type == "cuda"):
        hid = body(model)(input_ids=batch["input_ids"].to(dev), attention_mask=mask,
                          position_ids=batch["position_ids"].to(dev), use_cache=False).last_hidden_state
    return hid[torch.arange(len(prompts), device=dev), batch["answer_pos"].to(dev)].float()


def restricted_logits(model, h: torch.Tensor, token_ids: torch.Tensor) -> torch.Tensor:
    """Logits of `token_ids` [B, C] given hidden states h [B, h_dim]: rows of the output layer only."""
    head = model.get_output_embeddings()
    w = head.weight[token_ids.to(h.device)].float()  # [B, C, h]
    out = torch.einsum("bh,bch->bc", h, w)
    if getattr(head, "bias", None) is not None:
        out = out + head.bias[token_ids.to(h.device)].float()
    return out


@torch.no_grad()
def score_topk_prompts(model, builder: PromptBuilder, prompts: Sequence[Prompt],
                       batch_size: int = 8, progress: bool = False) -> list[np.ndarray]:
    """Per prompt, the scores of its candidates (in prompt order)."""
    out: list = [None] * len(prompts)
    if builder.et:
        pad = pad_id(builder.tok)
        n_b = (len(prompts) + batch_size - 1) // batch_size
        for idx in progress_bar(length_batches(prompts, batch_size), n_b, "top-K (ET)", progress):
            ps = [prompts[i] for i in idx]
            h = answer_hidden(model, ps, pad)
            tid = torch.as_tensor(np.stack([builder.tm.item_id(p.candidates) for p in ps]))
            sc = restricted_logits(model, h, tid).cpu().numpy()
            for k, i in enumerate(idx):
                out[i] = sc[k]
    else:
        mean = builder.params["llm"]["title_score"] == "mean"
        for i in progress_bar(range(len(prompts)), len(prompts), "top-K (titles)", progress):
            p = prompts[i]
            conts = [builder._answer(builder.titles[j]) for j in p.candidates]
            out[i] = continuation_loglik(model, p.input_ids, conts, mean=mean)
    return out


@torch.no_grad()
def continuation_loglik(model, prefix_ids: Sequence[int], continuations: Sequence[Sequence[int]],
                        mean: bool = False) -> np.ndarray:
    """log P(continuation | prefix) for each continuation, the prefix computed once (KV cache).

    The prefix runs alone with use_cache=True; its cache is repeated len(continuations) times and
    all continuations (right-padded) run as one batch with positions continuing after the prefix.
    """
    dev = _device(model)
    head = model.get_output_embeddings()
    pre = torch.tensor([list(prefix_ids)], device=dev)
    P = pre.shape[1]
    out = body(model)(input_ids=pre, use_cache=True)
    cache = out.past_key_values
    first = torch.log_softmax(head(out.last_hidden_state[:, -1]).float(), dim=-1)[0]  # [V]
    C, L = len(continuations), max(len(c) for c in continuations)
    cont = torch.zeros((C, L), dtype=torch.long, device=dev)
    cmask = torch.zeros((C, L), dtype=torch.long, device=dev)
    for k, c in enumerate(continuations):
        cont[k, :len(c)] = torch.tensor(list(c), device=dev)
        cmask[k, :len(c)] = 1
    lens = cmask.sum(1)
    logp = first[cont[:, 0]]
    if L > 1:
        cache.batch_repeat_interleave(C)
        mask = torch.cat([torch.ones((C, P), dtype=torch.long, device=dev), cmask[:, :-1]], dim=1)
        pos = (P + torch.arange(L - 1, device=dev)).unsqueeze(0).expand(C, -1)
        hid = body(model)(input_ids=cont[:, :-1], attention_mask=mask, position_ids=pos,
                          past_key_values=cache, use_cache=True).last_hidden_state
        lp = torch.log_softmax(head(hid).float(), dim=-1)  # [C, L-1, V]
        tok_lp = lp.gather(2, cont[:, 1:].unsqueeze(-1)).squeeze(-1) * cmask[:, 1:]
        logp = logp + tok_lp.sum(1)
    if mean:
        logp = logp / lens
    return logp.cpu().numpy().astype(np.float64)


@torch.no_grad()
def sequence_loglik(model, prefix_ids, continuation, mean: bool = False) -> float:
    """Reference: log P(continuation | prefix) from one full forward pass (no cache)."""
    dev = _device(model)
    ids = torch.tensor([list(prefix_ids) + list(continuation)], device=dev)
    n = len(continuation)
    # the whole sequence runs through the model; only the last n+1 positions need logits
    logits = model(input_ids=ids, logits_to_keep=n + 1).logits[0].float()
    lp = torch.log_softmax(logits[:-1], dim=-1)
    v = lp.gather(1, torch.tensor(list(continuation), device=dev).unsqueeze(1)).sum()
    return float(v / len(continuation)) if mean else float(v)


def all_item_scorer(model, builder: PromptBuilder, batch_size: int = 8):
    """`score_users(users) -> [B, n_items]` for `bdlm_lib.full_ranking`: each user's open prompt
    (no candidates) runs once and every `<iid_j>` row of the output layer is read at its answer
    position (ET only)."""
    if not builder.et:
        raise ValueError("all_item_scorer: needs ET (without it an item is a title, not one token)")
    pad = pad_id(builder.tok)
    head = model.get_output_embeddings()
    rows = torch.as_tensor(builder.tm.item_ids)

    @torch.no_grad()
    def score(users: np.ndarray) -> np.ndarray:
        was = model.training
        model.eval()
        try:
            prompts = [builder.open_topk(int(u)) for u in users]
            out = np.empty((len(users), len(rows)))
            # the <iid> rows of the output layer (and their bias), gathered once per call
            ids = rows.to(head.weight.device)
            w = head.weight[ids].float().T
            bias = head.bias[ids].float() if getattr(head, "bias", None) is not None else None
            for idx in length_batches(prompts, batch_size):
                sc = answer_hidden(model, [prompts[i] for i in idx], pad) @ w
                out[idx] = (sc if bias is None else sc + bias).double().cpu().numpy()
            return out
        finally:
            model.train(was)
    return score


def score_topk(model, builder: PromptBuilder, frame: pd.DataFrame, batch_size: int = 8,
               progress: bool = True) -> np.ndarray:
    """Scores aligned with the rows of a top-K frame (one prompt per user, candidates in the
    frame's order)."""
    prompts = builder.topk_prompts(frame, with_answer=False)
    return fill_scores(frame, prompts, score_topk_prompts(model, builder, prompts, batch_size, progress))


def p_yes(model, builder: PromptBuilder, h: torch.Tensor) -> np.ndarray:
    """P(Yes) / (P(Yes) + P(No)) from answer-position hidden states h [B, h_dim]."""
    yn = torch.tensor([builder.yes_id, builder.no_id]).expand(len(h), 2)
    return torch.softmax(restricted_logits(model, h, yn), dim=1)[:, 0].cpu().numpy()


def _user_groups(prompts: Sequence[Prompt]) -> list[np.ndarray]:
    """Indices of the prompts of each user (first-seen order)."""
    groups: dict = {}
    for i, p in enumerate(prompts):
        groups.setdefault(p.user, []).append(i)
    return [np.asarray(g) for g in groups.values()]


@torch.no_grad()
def shared_prefix_hidden(model, prompts: Sequence[Prompt], need_target: bool = False):
    """h_L at the answer position (and at the target item's token) of prompts that share a token
    prefix (one user's binary prompts: the same history, four items asked about).

    The common prefix runs once with a KV cache, cut before every position read so that those
    positions are computed in the batch of suffixes (right-padded, positions continuing after the
    prefix) that runs over the repeated cache: the same numbers as full passes (to float error),
    for ~1/3 of the tokens. Returns (answer_h [n, h], target_h [n, h] or None)."""
    dev = _device(model)
    ids = [list(p.input_ids) for p in prompts]
    answer = [p.answer_position for p in prompts]
    target = [p.position_of(p.target, "target") for p in prompts] if need_target else []
    P = min(answer + target)  # the prefix ends before the first position that is read
    for s in ids[1:]:
        n = min(P, len(s))
        diff = np.flatnonzero(np.asarray(ids[0][:n]) != np.asarray(s[:n]))
        P = int(diff[0]) if len(diff) else n
    C, L = len(ids), max(len(s) for s in ids) - P
    suf = torch.zeros((C, L), dtype=torch.long)
    smask = torch.zeros((C, L), dtype=torch.long)
    for k, s in enumerate(ids):
        suf[k, :len(s) - P] = torch.tensor(s[P:])
        smask[k, :len(s) - P] = 1
    cache = None
    with torch.autocast("cuda", dtype=torch.bfloat16, enabled=dev.type == "cuda"):
        if P:
            cache = body(model)(input_ids=torch.tensor([ids[0][:P]], device=dev), use_cache=True).past_key_values
            if C > 1:
                cache.batch_repeat_interleave(C)
        mask = torch.cat([torch.ones((C, P), dtype=torch.long), smask], dim=1).to(dev)
        pos = (P + torch.arange(L)).unsqueeze(0).expand(C, -1).to(dev)
        hid = body(model)(input_ids=suf.to(dev), attention_mask=mask, position_ids=pos,
                          past_key_values=cache, use_cache=P > 0).last_hidden_state
    rows = torch.arange(C, device=dev)
    ans = hid[rows, torch.tensor(answer, device=dev) - P].float()
    tgt = hid[rows, torch.tensor(target, device=dev) - P].float() if need_target else None
    return ans, tgt


def shared_prefix_groups(model, prompts: Sequence[Prompt], need_target: bool, desc: str,
                         progress: bool):
    """Yield (indices, answer h_L, target h_L or None), one user's prompts at a time."""
    groups = _user_groups(prompts)
    for idx in progress_bar(groups, len(groups), desc, progress):
        yield (idx, *shared_prefix_hidden(model, [prompts[i] for i in idx], need_target))


@torch.no_grad()
def score_binary_prompts(model, builder: PromptBuilder, prompts: Sequence[Prompt],
                         batch_size: int = 8, progress: bool = False,
                         share_prefix: bool = True) -> np.ndarray:
    """P(Yes) per prompt; one user's prompts share their history prefix (`shared_prefix_hidden`)
    unless share_prefix=False (padded batches of `batch_size`)."""
    out = np.zeros(len(prompts))
    if share_prefix:
        for idx, h, _ in shared_prefix_groups(model, prompts, False, "binary", progress):
            out[idx] = p_yes(model, builder, h)
        return out
    pad = pad_id(builder.tok)
    n_b = (len(prompts) + batch_size - 1) // batch_size
    for idx in progress_bar(length_batches(prompts, batch_size), n_b, "binary", progress):
        out[idx] = p_yes(model, builder, answer_hidden(model, [prompts[i] for i in idx], pad))
    return out


def score_binary(model, builder: PromptBuilder, frame: pd.DataFrame, batch_size: int = 8,
                 progress: bool = True) -> np.ndarray:
    """P(Yes) normalised over {Yes, No} for each (user, item) row."""
    return score_binary_prompts(model, builder, builder.binary_prompts(frame, with_answer=False),
                                batch_size, progress)


def make_score_fn(model, builder: PromptBuilder, batch_size: int = 8, progress: bool = True):
    """`score_fn(frame)` for bdlm_lib.metrics.evaluate: top-K frames (with `position`) are ranked
    by `score_topk`, binary frames by `score_binary`."""
    def score_fn(frame: pd.DataFrame) -> np.ndarray:
        if "position" in frame.columns:
            return score_topk(model, builder, frame, batch_size, progress)
        return score_binary(model, builder, frame, batch_size, progress)
    return score_fn


# ----------------------------------------------------------------------------- generation

@torch.no_grad()
def generate_answers(model, tokenizer, prompts: Sequence[Prompt], batch_size: int = 8,
                     max_new_tokens: int = 24) -> list[str]:
    """Greedy free generation for each prompt (left-padded batches); the decoded new text."""
    dev = _device(model)
    pad = pad_id(tokenizer)
    out = [""] * len(prompts)
    for idx in length_batches(prompts, batch_size):
        ps = [prompts[i] for i in idx]
        T = max(len(p.input_ids) for p in ps)
        ids = torch.full((len(ps), T), pad, dtype=torch.long)
        mask = torch.zeros((len(ps), T), dtype=torch.long)
        for b, p in enumerate(ps):
            ids[b, T - len(p.input_ids):] = torch.tensor(p.input_ids)
            mask[b, T - len(p.input_ids):] = 1
        gen = model.generate(input_ids=ids.to(dev), attention_mask=mask.to(dev), do_sample=False,
                             max_new_tokens=max_new_tokens, pad_token_id=pad,
                             eos_token_id=tokenizer.eos_token_id)
        for b, i in enumerate(idx):
            out[i] = tokenizer.decode(gen[b, T:], skip_special_tokens=True).strip()
    return out


def generate_answer(model, tokenizer, prompt: Prompt | str, max_new_tokens: int = 24) -> str:
    """Free generation for one prompt (a `Prompt`, or a raw text passed through as is)."""
    if isinstance(prompt, str):
        ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
        prompt = Prompt("text", -1, ids, [], np.zeros(0, np.int64), np.zeros(0, np.int64), [])
    return generate_answers(model, tokenizer, [prompt], 1, max_new_tokens)[0]


def parse_topk_answer(text: str, prompt: Prompt, builder: PromptBuilder) -> int:
    """The candidate a generated answer names (`<iid_j>` with ET, else a candidate title), -1 if
    the answer is outside the candidate set."""
    cands = [int(c) for c in prompt.candidates]
    if builder.et:
        m = re.search(r"<iid_(\d+)>", text)
        return int(m.group(1)) if m and int(m.group(1)) in cands else -1
    t = text.strip().strip("\"'").lower()
    best = -1
    for j in cands:  # the longest candidate title the answer starts with (or equals)
        title = builder.titles[j].lower()
        if t.startswith(title) and (best < 0 or len(title) > len(builder.titles[best])):
            best = j
    return best
