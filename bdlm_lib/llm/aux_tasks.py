"""Auxiliary recommendation-knowledge SFT tasks (Cao et al. 2024): classic recommender
operations (Masked Item Modeling, Bayesian Personalized Ranking) written as natural-language SFT
samples, mixed with the recommendation-task samples (params.sft.aux_tasks / sft.aux_ratio).

Templates (noun/verbs from the dataset; with ET the items are "<iid_j> (title)", without ET
"\"title\""; wrapped in the same chat/plain format as the recommendation prompts):
  mim: User <uid_3> has watched the following movies: <iid_5> (Heat), [MASK], <iid_9> (Fargo).
       One of these movies is hidden as [MASK]. Predict the hidden movie. Answer with its id.
                                                   -> "<iid_7>"  (without ET: the masked title)
  bpr: User <uid_3> has watched the following movies: <iid_5> (Heat), .... Which of these two
       movies will he/she prefer to watch next: <iid_7> (Alien) or <iid_2> (Babe)? Answer with
       the id of the preferred movie.              -> "<iid_7>"  (without ET: its title)

Choices (why):
- Only ds.train_sequences() is read, so a user's valid/test items (ds.valid/ds.test) can never be
  shown or answered: the split dedups items per user, so they are not in the user's train sequence.
  The BPR negative is drawn uniformly from the items the user never touched in ANY split (train,
  valid, test), as in classic BPR (uniform negatives).
- MIM: a random window of up to llm.history_len consecutive train items, one of them replaced by
  "[MASK]" (only an item that occurs once in the window can be masked, so the answer is never
  visible). BPR: a random cut t; history = the (up to) history_len train items before t, positive
  = the train item at t (the next one after the window, never in the shown history).
- The BPR answer is the preferred ITEM (`<iid_j>` / title), not "A"/"B": a BPR prompt is a
  two-candidate top-K prompt (`candidates` = the two options in prompt order, `target` = the
  positive), so `scoring.score_topk_prompts` scores it unchanged (ET: restricted `<iid>` logits;
  no ET: title likelihood). The order of the two options is a seeded coin flip per sample.
- Samples are `Prompt` objects built by the colleague's `PromptBuilder` machinery (chat wrapping,
  character-offset item positions, oldest-first history truncation, answer + eos) through a thin
  subclass view that only adds the two message templates, so they go straight into
  `sft.collate`/`sft_train` like the recommendation samples. task = "mim" | "bpr"; item roles:
  "history" for shown history items, "option" for the two BPR options (deliberately NOT
  "candidate"/"target": the joint trainer's domain step reads those roles; aux samples carry no
  domain-model example — see `is_aux`). MIM prompts mention no masked item at all.
- Users: every user with >= 2 train items, visited in seeded random order (a fresh permutation
  each pass), so n samples are spread evenly over users; each visit draws a fresh window/cut.
"""
from __future__ import annotations

from typing import Callable, Mapping, Sequence

import numpy as np

from .prompts import Prompt, PromptBuilder

AUX_TASKS = ("none", "mim", "bpr", "both")
MASK = "[MASK]"
MASK_ID = -1  # placeholder for the masked slot inside a history array


def aux_task_setting(params: Mapping) -> str:
    """params.sft.aux_tasks, checked (YAML null counts as "none")."""
    v = params["sft"]["aux_tasks"]
    v = "none" if v is None else str(v).strip().lower()
    if v not in AUX_TASKS:
        raise ValueError(f"sft.aux_tasks must be one of {' | '.join(AUX_TASKS)}, got {v!r}")
    return v


def aux_ratio_setting(params: Mapping) -> float:
    r = params["sft"]["aux_ratio"]
    r = 0.0 if r is None else float(r)
    if not np.isfinite(r) or r < 0:
        raise ValueError(f"sft.aux_ratio must be a number >= 0, got {r!r}")
    return r


def aux_count(n_rec: int, ratio: float) -> int:
    """Auxiliary samples for n_rec recommendation samples: round-half-up of n_rec * ratio."""
    return int(np.floor(n_rec * float(ratio) + 0.5 + 1e-9))


def is_aux(p: Prompt) -> bool:
    """An auxiliary sample (has no domain-model example: the joint trainer must skip it)."""
    return p.task in ("mim", "bpr")


class _AuxView(PromptBuilder):
    """The caller's PromptBuilder with two more message templates. Built by sharing the builder's
    state (no second tokenizer load, same format/ET/titles), so prompts are encoded by the very
    same `_build`/`_encode`/`_wrap`/`_mention`/`_answer` code as the recommendation prompts."""

    def __init__(self, builder: PromptBuilder):  # noqa: D401 - no PromptBuilder.__init__ call
        self.__dict__.update(builder.__dict__)

    def _history_mention(self, j, parts: list, spans: list) -> None:
        if j == MASK_ID:          # the MIM slot: a literal [MASK], no item position
            parts.append(MASK)
        else:
            super()._history_mention(j, parts, spans)

    def _message(self, task, user, hist, item=None, cands=None):
        if task not in ("mim", "bpr"):
            return super()._message(task, user, hist, item, cands)
        parts: list[str] = []
        spans: list = []
        uspan = self._user_history(user, hist, parts, spans)
        how = "its id" if self.et else "its title"
        if task == "mim":
            parts.append(f". One of these {self.noun} is hidden as {MASK}. "
                         f"Predict the hidden {self.one}. Answer with {how}.")
        else:
            parts.append(f". Which of these two {self.noun} will he/she prefer to {self.verb} next: ")
            self._mention(cands[0], parts, spans, "option")
            parts.append(" or ")
            self._mention(cands[1], parts, spans, "option")
            parts.append(f"? Answer with {'the id' if self.et else 'the title'} of the preferred "
                         f"{self.one}.")
        return "".join(parts), spans, uspan

    def _build(self, task, user, hist, item=None, cands=None) -> tuple:
        if task != "mim":
            return super()._build(task, user, hist, item, cands)
        hist = np.asarray(hist, dtype=np.int64)
        while True:  # token budget: drop the oldest history item, but never the mask slot
            out = self._encode(task, user, hist, item, cands)
            if len(out[1]) <= self.max_tokens or len(hist) <= 2:
                return out
            drop = 0 if hist[0] != MASK_ID else 1
            hist = np.delete(hist, drop)

    # ------------------------------------------------------------------ samples
    def mim(self, user: int, window: np.ndarray, mask_at: int) -> Prompt:
        window = np.asarray(window, dtype=np.int64)
        target = int(window[mask_at])
        shown = window.copy()
        shown[mask_at] = MASK_ID
        text, ids, items, pos, roles, upos = self._build("mim", user, shown)
        return Prompt("mim", int(user), ids, self._answer(self.answer_text(target)), items, pos,
                      roles, upos, None, target, -1, text)

    def bpr(self, user: int, hist: np.ndarray, options: Sequence[int], preferred: int) -> Prompt:
        opts = np.asarray(options, dtype=np.int64)
        text, ids, items, pos, roles, upos = self._build("bpr", user, hist, cands=opts)
        return Prompt("bpr", int(user), ids, self._answer(self.answer_text(preferred)), items, pos,
                      roles, upos, opts, int(preferred), -1, text)


def _user_cycle(users: np.ndarray, rng: np.random.Generator):
    """Users in seeded random order, a fresh permutation each pass (even coverage)."""
    while True:
        for u in rng.permutation(users):
            yield int(u)


def _touched(ds) -> list[set]:
    """Per user, every item seen in any split (train, valid, test)."""
    out = [set(s.tolist()) for s in ds.train_sequences()]
    for df in (ds.valid, ds.test):
        for u, i in zip(df["user"].to_numpy(), df["item"].to_numpy()):
            out[int(u)].add(int(i))
    return out


def _mim_samples(view: _AuxView, ds, n: int, rng, users, progress: bool) -> list[Prompt]:
    from tqdm.auto import tqdm
    seqs = ds.train_sequences()
    L = max(2, view.history_len)
    out: list[Prompt] = []
    cyc = _user_cycle(users, rng)
    with tqdm(total=n, desc="aux MIM", disable=not progress, leave=False) as bar:
        while len(out) < n:
            u = next(cyc)
            seq = seqs[u]
            end = int(rng.integers(2, len(seq) + 1))            # window = seq[start:end], >= 2 items
            window = seq[max(0, end - L):end]
            vals, counts = np.unique(window, return_counts=True)
            ok = np.flatnonzero(np.isin(window, vals[counts == 1]))  # masked item must not stay visible
            if len(ok) == 0:
                continue
            out.append(view.mim(u, window, int(rng.choice(ok))))
            bar.update(1)
    return out


def _bpr_samples(view: _AuxView, ds, n: int, rng, users, progress: bool) -> list[Prompt]:
    from tqdm.auto import tqdm
    seqs = ds.train_sequences()
    touched = _touched(ds)
    out: list[Prompt] = []
    cyc = _user_cycle(users, rng)
    with tqdm(total=n, desc="aux BPR", disable=not progress, leave=False) as bar:
        while len(out) < n:
            u = next(cyc)
            seq = seqs[u]
            t = int(rng.integers(1, len(seq)))                  # positive = seq[t], history before it
            pos = int(seq[t])
            hist = view.history(u, before=t)
            if pos in set(hist.tolist()):                       # a repeat: it would be visible
                continue
            neg = int(rng.integers(ds.n_items))
            while neg in touched[u]:
                neg = int(rng.integers(ds.n_items))
            first = bool(rng.integers(2))                       # seeded order of the two options
            opts = [pos, neg] if first else [neg, pos]
            out.append(view.bpr(u, hist, opts, pos))
            bar.update(1)
    return out


def build_aux_samples(ds, builder: PromptBuilder, params: Mapping, n: int, seed: int | None = None,
                      users: Sequence[int] | None = None, progress: bool = False) -> list[Prompt]:
    """`n` auxiliary SFT samples (`Prompt`s) from the train split, per params.sft.aux_tasks:
    none -> [], mim / bpr -> n of that task, both -> n//2 BPR and the rest MIM (in that order,
    not shuffled: `mix_samples` shuffles). `users` restricts the users drawn (default: every user
    with >= 2 train items). Same (ds, builder, params, n, seed) -> same samples."""
    task = aux_task_setting(params)
    n = int(n)
    if n < 0:
        raise ValueError(f"build_aux_samples: n must be >= 0, got {n}")
    if task == "none" or n == 0:
        return []
    seed = int(params["seed"]) if seed is None else int(seed)
    seqs = ds.train_sequences()
    pool = np.arange(ds.n_users) if users is None else np.unique(np.asarray(users, dtype=np.int64))
    pool = np.array([u for u in pool if len(seqs[u]) >= 2], dtype=np.int64)
    if len(pool) == 0:
        raise ValueError("build_aux_samples: no user with >= 2 train items to build samples from")
    view = _AuxView(builder)
    n_bpr = n if task == "bpr" else (n // 2 if task == "both" else 0)
    # separate streams: the MIM samples do not change when only the BPR count changes
    ss = np.random.SeedSequence([seed, 0xA0C5])
    r_mim, r_bpr = (np.random.default_rng(s) for s in ss.spawn(2))
    out = _mim_samples(view, ds, n - n_bpr, r_mim, pool, progress) if n - n_bpr else []
    if n_bpr:
        out += _bpr_samples(view, ds, n_bpr, r_bpr, pool, progress)
    return out


def mix_samples(rec_samples: Sequence[Prompt],
                aux: Sequence[Prompt] | Callable[[int], Sequence[Prompt]],
                ratio: float, seed: int) -> list[Prompt]:
    """rec_samples + aux_count(len(rec_samples), ratio) auxiliary samples, shuffled with `seed`.

    `aux` is a list (its first aux_count(...) samples are used; too few -> ValueError) or a
    callable n -> list (e.g. `lambda n: build_aux_samples(ds, builder, params, n, seed)`)."""
    ratio = float(ratio)
    if not np.isfinite(ratio) or ratio < 0:
        raise ValueError(f"sft.aux_ratio must be a number >= 0, got {ratio!r}")
    k = aux_count(len(rec_samples), ratio)
    chosen = list(aux(k)) if callable(aux) else list(aux)[:k]
    if len(chosen) != k:
        raise ValueError(f"mix_samples: sft.aux_ratio {ratio} needs {k} auxiliary samples for "
                         f"{len(rec_samples)} recommendation samples, got {len(chosen)}")
    allp = list(rec_samples) + chosen
    order = np.random.default_rng(int(seed)).permutation(len(allp))
    return [allp[i] for i in order]


def add_aux_samples(rec_samples: Sequence[Prompt], ds, builder: PromptBuilder, params: Mapping,
                    seed: int | None = None, progress: bool = False) -> list[Prompt]:
    """The one call for the SFT/joint sample construction: with sft.aux_tasks = none (or
    sft.aux_ratio = 0) the recommendation samples unchanged; otherwise them mixed with
    aux_count(len, sft.aux_ratio) auxiliary samples (see module doc), shuffled with `seed`
    (default params.seed)."""
    task, ratio = aux_task_setting(params), aux_ratio_setting(params)
    if task == "none" or ratio == 0:
        return list(rec_samples)
    seed = int(params["seed"]) if seed is None else int(seed)
    return mix_samples(rec_samples,
                       lambda k: build_aux_samples(ds, builder, params, k, seed, progress=progress),
                       ratio, seed)
