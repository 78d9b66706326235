"""Sparser training data on the same test sets: `data.train_keep` and `data.cold_items`.

Both act on the train split only, after the leave-one-out split and after the evaluation sets
are built, so the validation and test items and the persisted candidate sets are the same,
byte for byte, at every value: runs at different densities are paired on the same users.

- `train_keep` thins every user's training history. A number <= 1 is the fraction kept (at least
  one interaction per user); a whole number > 1 is how many are kept. `train_keep_order: recent`
  (the default) keeps the most recent ones: the history next to the held-out items stays, as it
  would for a user who has simply interacted less, and the prompts (the last `llm.history_len`
  items) still end where the test item follows. `uniform` keeps a seeded random subset instead.
- `cold_items` (a fraction of the items, seeded) removes every training interaction of those
  items. They stay validation / test targets and candidates: a cold item is one the domain model
  never saw interacted with, while the LLM still reads its title.

What is removed is kept as `dropped.parquet` (the user did interact with those items: the
full-catalogue evaluation does not count them as negatives) and the cold items as
`cold_items.parquet`.
"""
from __future__ import annotations

import numpy as np
import pandas as pd


def kept_per_user(n: np.ndarray, keep: float) -> np.ndarray:
    """How many of each user's `n` training interactions `train_keep` keeps."""
    n = np.asarray(n, dtype=np.int64)
    if keep <= 1:
        return np.minimum(n, np.maximum(1, np.ceil(n * float(keep) - 1e-9).astype(np.int64)))
    return np.minimum(n, int(keep))


def thin_train(train: pd.DataFrame, keep: float, order: str = "recent",
               seed: int = 42) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(kept, dropped) rows of `train` (sorted by user, then time, as the prepared split is)."""
    if keep <= 0 or (keep > 1 and keep != int(keep)):
        raise ValueError(f"data.train_keep={keep}: a fraction in (0, 1] or a whole number > 1")
    if order not in ("recent", "uniform"):
        raise ValueError(f"data.train_keep_order={order!r}: recent | uniform")
    users = train["user"].to_numpy()
    starts = np.flatnonzero(np.r_[True, users[1:] != users[:-1]])
    sizes = np.diff(np.r_[starts, len(users)])
    pos = np.arange(len(users)) - np.repeat(starts, sizes)         # 0 = the user's oldest
    n_keep = np.repeat(kept_per_user(sizes, keep), sizes)
    n_all = np.repeat(sizes, sizes)
    if order == "recent":
        mask = pos >= n_all - n_keep
    else:
        rng = np.random.default_rng(np.random.SeedSequence([int(seed), 7]))
        key = rng.random(len(users))
        # per user, the n_keep rows with the smallest random keys (time order kept)
        rank = pd.Series(key).groupby(users).rank(method="first").to_numpy() - 1
        mask = rank < n_keep
    return train[mask].reset_index(drop=True), train[~mask].reset_index(drop=True)


def choose_cold_items(n_items: int, fraction: float, seed: int = 42) -> np.ndarray:
    """A seeded set of round(fraction * n_items) item ids (sorted)."""
    if not 0 <= fraction < 1:
        raise ValueError(f"data.cold_items={fraction}: a fraction in [0, 1)")
    rng = np.random.default_rng(np.random.SeedSequence([int(seed), 11]))
    return np.sort(rng.permutation(n_items)[:int(round(fraction * n_items))])


def remove_items(train: pd.DataFrame, items: np.ndarray) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(kept, dropped): every training interaction of `items` goes."""
    mask = train["item"].isin(items).to_numpy()
    return train[~mask].reset_index(drop=True), train[mask].reset_index(drop=True)


def sparsify(train: pd.DataFrame, n_items: int, data: dict, seed: int):
    """Apply `data.cold_items` then `data.train_keep` (both no-ops at their defaults).
    Returns (train, dropped, cold_items)."""
    cold = choose_cold_items(n_items, float(data.get("cold_items") or 0.0), seed)
    train, dropped_cold = remove_items(train, cold)
    keep = data.get("train_keep")
    keep = 1.0 if keep is None else float(keep)
    if keep == 1.0:
        dropped_thin = train.iloc[:0]
    else:
        train, dropped_thin = thin_train(train, keep, data.get("train_keep_order") or "recent", seed)
    dropped = pd.concat([dropped_cold, dropped_thin], ignore_index=True)
    return train, dropped.sort_values(["user"], kind="stable").reset_index(drop=True), cold
