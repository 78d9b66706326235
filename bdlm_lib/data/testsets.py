"""The shared, persisted evaluation sets (SPEC §1), built once per (dataset, seed).

top-K: per user, the held-out item + (n-1) negatives: ceil half drawn by popularity
(probability ∝ train count) and the rest by title similarity (nearest TF-IDF titles to the
positive). Never an item the user touched in any split; candidate order shuffled with the seed.
binary: per user, the held-out item (label 1) + `n_neg` uniformly sampled untouched items (label 0).
"""
from __future__ import annotations

import numpy as np
import pandas as pd
from sklearn.feature_extraction.text import TfidfVectorizer


def title_neighbours(titles: list[str], pool: int = 100, chunk: int = 2048) -> np.ndarray:
    """[n_items, pool] item ids by decreasing TF-IDF cosine similarity of titles (self excluded)."""
    n = len(titles)
    pool = min(pool, n - 1)
    # word uni+bigrams: shared words ("Shampoo", "Star Wars") make items look alike
    vec = TfidfVectorizer(ngram_range=(1, 2), min_df=1, sublinear_tf=True, lowercase=True)
    X = vec.fit_transform(titles)  # rows are L2-normalised
    out = np.empty((n, pool), dtype=np.int64)
    XT = X.T.tocsr()
    for s in range(0, n, chunk):
        sim = (X[s:s + chunk] @ XT).toarray()
        rows = np.arange(sim.shape[0])
        sim[rows, s + rows] = -np.inf  # never the item itself
        # tiny deterministic jitter-free tie order: argsort on (-sim, id) via lexsort is exact
        part = np.argpartition(-sim, pool - 1, axis=1)[:, :pool]
        psim = np.take_along_axis(sim, part, axis=1)
        order = np.lexsort((part, -psim), axis=1)
        out[s:s + chunk] = np.take_along_axis(part, order, axis=1)
    return out


def _touched_sets(train, valid, test):
    allint = pd.concat([train[["user", "item"]], valid[["user", "item"]], test[["user", "item"]]])
    return allint.groupby("user")["item"].apply(lambda s: set(s.tolist())).to_dict()


def build_testsets(train: pd.DataFrame, valid: pd.DataFrame, test: pd.DataFrame,
                   titles: list[str], seed: int = 42, n_candidates: int = 20,
                   n_binary_neg: int = 1, sim_pool: int = 100) -> dict[str, pd.DataFrame]:
    n_items = len(titles)
    n_neg = n_candidates - 1
    if n_neg >= n_items:
        raise ValueError(f"testset.n_candidates={n_candidates} needs more than {n_items} items")
    n_pop = (n_neg + 1) // 2
    n_sim = n_neg - n_pop
    rng = np.random.default_rng(seed)
    pop = np.bincount(train["item"].to_numpy(), minlength=n_items).astype(np.float64) + 1e-12
    pop_p = pop / pop.sum()
    neigh = title_neighbours(titles, sim_pool)
    touched = _touched_sets(train, valid, test)

    out: dict[str, pd.DataFrame] = {}
    for split, held in (("valid", valid), ("test", test)):
        users = held["user"].to_numpy()
        pos = held["item"].to_numpy()
        tk_user, tk_item, tk_label, tk_source = [], [], [], []
        b_user, b_item, b_label = [], [], []
        for u, p in zip(users, pos):
            seen = touched[u]
            chosen: list[int] = []
            chosen_set = set()
            for j in neigh[p]:
                if len(chosen) >= n_sim:
                    break
                j = int(j)
                if j not in seen and j not in chosen_set:
                    chosen.append(j)
                    chosen_set.add(j)
            sim_part = len(chosen)
            need = n_neg - len(chosen)  # popularity half (+ any similarity shortfall)
            while need > 0:
                draw = rng.choice(n_items, size=4 * need + 8, p=pop_p)
                for j in draw:
                    j = int(j)
                    if j not in seen and j not in chosen_set:
                        chosen.append(j)
                        chosen_set.add(j)
                        need -= 1
                        if need == 0:
                            break
            cands = np.array([int(p)] + chosen, dtype=np.int64)
            src = np.array(["pos"] + ["sim"] * sim_part + ["pop"] * (n_neg - sim_part))
            perm = rng.permutation(n_candidates)
            tk_user.append(np.full(n_candidates, u))
            tk_item.append(cands[perm])
            tk_label.append((perm == 0).astype(np.int8))
            tk_source.append(src[perm])
            # binary: uniform untouched negatives
            negs: list[int] = []
            while len(negs) < n_binary_neg:
                j = int(rng.integers(n_items))
                if j not in seen and j not in negs:
                    negs.append(j)
            b_user += [u] * (1 + n_binary_neg)
            b_item += [int(p)] + negs
            b_label += [1] + [0] * n_binary_neg
        out[f"{split}_topk"] = pd.DataFrame({
            "user": np.concatenate(tk_user).astype(np.int64),
            "item": np.concatenate(tk_item),
            "label": np.concatenate(tk_label),
            "position": np.tile(np.arange(n_candidates), len(users)).astype(np.int64),
            "source": np.concatenate(tk_source),
        })
        out[f"{split}_binary"] = pd.DataFrame({
            "user": np.asarray(b_user, dtype=np.int64), "item": np.asarray(b_item, dtype=np.int64),
            "label": np.asarray(b_label, dtype=np.int8)})
    return out


def check_no_leakage(train: pd.DataFrame, sets: dict[str, pd.DataFrame]) -> None:
    """Raise if a held-out positive is in that user's train, or a negative was ever touched by him."""
    train_pairs = set(zip(train["user"].tolist(), train["item"].tolist()))
    for name, df in sets.items():
        pos = df[df["label"] == 1]
        leaked = [(u, i) for u, i in zip(pos["user"], pos["item"]) if (u, i) in train_pairs]
        if leaked:
            raise AssertionError(f"{name}: held-out item in the user's train split, e.g. {leaked[0]}")
        neg = df[df["label"] == 0]
        bad = [(u, i) for u, i in zip(neg["user"], neg["item"]) if (u, i) in train_pairs]
        if bad:
            raise AssertionError(f"{name}: negative the user interacted with, e.g. {bad[0]}")
