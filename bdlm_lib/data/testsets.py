"""The shared, persisted evaluation sets (paper §5.2.3), built once per (dataset, seed).

top-K: per user, the held-out item + (n-1) negatives: floor half (9 of 19) by title similarity
(the untouched items whose TF-IDF title is nearest to the positive's, ties by item id; items of
zero similarity do not count as similar) and the rest (10, plus any shortfall of the similarity
pool) by popularity (probability ∝ train count). Never an item the user touched in any split;
candidate order shuffled with the seed.
binary: per user, the held-out item (label 1) + `n_neg` uniformly sampled untouched items (label 0).
"""
from __future__ import annotations

import numpy as np
import pandas as pd
from sklearn.feature_extraction.text import TfidfVectorizer
from tqdm.auto import tqdm


def title_vectors(titles: list[str]):
    """L2-normalised TF-IDF rows of the titles (word uni+bigrams, sublinear tf)."""
    # word uni+bigrams: shared words ("Shampoo", "Star Wars") make items look alike
    vec = TfidfVectorizer(ngram_range=(1, 2), min_df=1, sublinear_tf=True, lowercase=True)
    try:
        return vec.fit_transform(titles)
    except ValueError:  # every title is stop-words/punctuation only: no vocabulary
        from scipy import sparse
        return sparse.csr_matrix((len(titles), 1))


def title_neighbours(titles: list[str], pool: int = 100, chunk: int = 1024,
                     positive_only: bool = False) -> np.ndarray:
    """[n_items, pool] item ids by decreasing TF-IDF cosine similarity of titles, ties by id;
    self excluded. With `positive_only`, -1 pads the row where fewer than `pool` items have a
    similarity > 0 (a title sharing no word is not "similar"; the test sets use this)."""
    n = len(titles)
    pool = max(0, min(pool, n - 1))
    out = np.full((n, pool), -1, dtype=np.int64)
    if pool == 0:
        return out
    X = title_vectors(titles)
    XT = X.T.tocsr()
    for s in range(0, n, chunk):
        sim = (X[s:s + chunk] @ XT).toarray()
        rows = np.arange(sim.shape[0])
        sim[rows, s + rows] = -np.inf  # never the item itself
        part = np.argpartition(-sim, pool - 1, axis=1)[:, :pool]
        psim = np.take_along_axis(sim, part, axis=1)
        # exact order: decreasing similarity, then increasing id (argpartition's order is arbitrary)
        order = np.lexsort((part, -psim), axis=1)
        ids = np.take_along_axis(part, order, axis=1)
        if positive_only:
            ids[np.take_along_axis(psim, order, axis=1) <= 0] = -1
        out[s:s + chunk] = ids
    return out


def _touched_sets(train, valid, test) -> dict[int, set]:
    allint = pd.concat([train[["user", "item"]], valid[["user", "item"]], test[["user", "item"]]])
    allint = allint.sort_values("user", kind="stable")
    users = allint["user"].to_numpy()
    items = allint["item"].to_numpy().tolist()
    bounds = np.flatnonzero(np.diff(users)) + 1
    starts = np.concatenate([[0], bounds]).tolist()
    ends = np.concatenate([bounds, [len(users)]]).tolist()
    return {int(users[a]): set(items[a:b]) for a, b in zip(starts, ends)}


def build_testsets(train: pd.DataFrame, valid: pd.DataFrame, test: pd.DataFrame,
                   titles: list[str], seed: int = 42, n_candidates: int = 20,
                   n_binary_neg: int = 1, sim_pool: int = 100,
                   progress: bool = False) -> dict[str, pd.DataFrame]:
    n_items = len(titles)
    n_neg = n_candidates - 1
    if n_candidates < 2:
        raise ValueError(f"testset.n_candidates={n_candidates}: needs at least 2 (the positive + a negative)")
    if n_binary_neg < 1:
        raise ValueError(f"testset.n_binary_neg={n_binary_neg}: needs at least 1")
    touched = _touched_sets(train, valid, test)
    most = max(len(s) for s in touched.values())
    if n_items - most < max(n_neg, n_binary_neg):
        raise ValueError(f"testset.n_candidates={n_candidates}: a user touched {most} of the "
                         f"{n_items} items, too few untouched items left for the negatives")
    n_pop = (n_neg + 1) // 2
    n_sim = n_neg - n_pop
    rng = np.random.default_rng(seed)
    pop = np.bincount(train["item"].to_numpy(), minlength=n_items).astype(np.float64) + 1e-12
    pop_p = pop / pop.sum()
    # == rng.choice(n_items, size, p=pop_p), draw for draw (same RNG stream), without
    # re-validating p and rebuilding its cdf on every call, which would dominate the per-user loop
    cdf = np.cumsum(pop_p)
    cdf /= cdf[-1]
    neigh = title_neighbours(titles, sim_pool, positive_only=True) if n_sim > 0 else np.full((n_items, 0), -1)
    neigh_lists = neigh.tolist()

    out: dict[str, pd.DataFrame] = {}
    for split, held in (("valid", valid), ("test", test)):
        users = held["user"].to_numpy()
        pos = held["item"].to_numpy()
        n_u = len(users)
        tk_item = np.empty((n_u, n_candidates), dtype=np.int64)
        tk_label = np.empty((n_u, n_candidates), dtype=np.int8)
        tk_source = np.empty((n_u, n_candidates), dtype=object)
        b_item = np.empty((n_u, 1 + n_binary_neg), dtype=np.int64)
        it = tqdm(range(n_u), desc=f"{split} test sets", disable=not progress, leave=False)
        for r in it:
            u, p = int(users[r]), int(pos[r])
            seen = touched[u]
            chosen: list[int] = []
            chosen_set = set()
            if n_sim:
                for j in neigh_lists[p]:
                    if j < 0 or len(chosen) >= n_sim:
                        break
                    if j not in seen and j not in chosen_set:
                        chosen.append(j)
                        chosen_set.add(j)
            sim_part = len(chosen)
            need = n_neg - len(chosen)  # popularity half (+ any similarity shortfall)
            while need > 0:
                draw = cdf.searchsorted(rng.random(4 * need + 8), side="right").tolist()
                for j in draw:
                    if j not in seen and j not in chosen_set:
                        chosen.append(j)
                        chosen_set.add(j)
                        need -= 1
                        if need == 0:
                            break
            cands = np.array([p] + chosen, dtype=np.int64)
            src = np.array(["pos"] + ["sim"] * sim_part + ["pop"] * (n_neg - sim_part), dtype=object)
            perm = rng.permutation(n_candidates)
            tk_item[r] = cands[perm]
            tk_label[r] = perm == 0
            tk_source[r] = src[perm]
            # binary: uniform untouched negatives
            negs: list[int] = []
            while len(negs) < n_binary_neg:
                j = int(rng.integers(n_items))
                if j not in seen and j not in negs:
                    negs.append(j)
            b_item[r] = [p] + negs
        out[f"{split}_topk"] = pd.DataFrame({
            "user": np.repeat(users.astype(np.int64), n_candidates),
            "item": tk_item.ravel(),
            "label": tk_label.ravel(),
            "position": np.tile(np.arange(n_candidates), n_u).astype(np.int64),
            "source": pd.array(tk_source.ravel(), dtype="str"),
        })
        out[f"{split}_binary"] = pd.DataFrame({
            "user": np.repeat(users.astype(np.int64), 1 + n_binary_neg),
            "item": b_item.ravel(),
            "label": np.tile(np.array([1] + [0] * n_binary_neg, dtype=np.int8), n_u)})
    return out


def check_no_leakage(train: pd.DataFrame, sets: dict[str, pd.DataFrame],
                     valid: pd.DataFrame | None = None, test: pd.DataFrame | None = None) -> None:
    """Raise if a held-out positive is in that user's train split, or a negative is an item the
    user interacted with (train; and valid/test when given). Vectorised on (user, item) keys."""
    frames = [train] + [f for f in (valid, test) if f is not None]
    n_items = int(max(max(int(f["item"].max()) for f in frames if len(f)),
                      max(int(s["item"].max()) for s in sets.values() if len(s))) + 1)

    def keys(df):
        return df["user"].to_numpy(np.int64) * n_items + df["item"].to_numpy(np.int64)

    def member(q, sorted_keys):  # np.isin via a sorted array: exact, and much faster here
        if len(sorted_keys) == 0:
            return np.zeros(len(q), dtype=bool)
        idx = np.minimum(np.searchsorted(sorted_keys, q), len(sorted_keys) - 1)
        return sorted_keys[idx] == q

    train_keys = np.sort(keys(train))
    touched_keys = np.sort(np.concatenate([keys(f) for f in frames]))
    for name, df in sets.items():
        lab = df["label"].to_numpy()
        k = keys(df)
        leaked = member(k[lab == 1], train_keys)
        if leaked.any():
            row = df[lab == 1].iloc[int(np.argmax(leaked))]
            raise AssertionError(f"{name}: held-out item in the user's train split, e.g. "
                                 f"user {row['user']} item {row['item']}")
        bad = member(k[lab == 0], touched_keys)
        if bad.any():
            row = df[lab == 0].iloc[int(np.argmax(bad))]
            raise AssertionError(f"{name}: negative the user interacted with, e.g. "
                                 f"user {row['user']} item {row['item']}")
