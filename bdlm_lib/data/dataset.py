"""The prepared dataset every model reads: `prepare_dataset(params)` builds (or reuses) it under
`<output_dir>/<dataset>/data/<tag>/`, `load_dataset(params)` returns a `RecDataset`.

Folder layout (all parquet, written atomically as one folder):
    train/valid/test.parquet     user, item, timestamp (internal contiguous ids)
    users.parquet, items.parquet raw-id maps (+ item titles)
    {valid,test}_{topk,binary}.parquet   the shared evaluation sets
    manifest.json                dataset, seed, params, input sha256, stats
    dropped.parquet, cold_items.parquet   only with data.train_keep / data.cold_items (sparsity.py)
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping

import numpy as np
import pandas as pd

from ..runs import atomic_dir, read_json, write_json
from ..store import dataset_root
from . import download, registry
from .loaders import DataError, detect_format, read_raw
from .prepare import process, sha256_files
from .sparsity import sparsify
from .testsets import build_testsets, check_no_leakage

SETS = ("valid_topk", "test_topk", "valid_binary", "test_binary")
PARQUETS = ("train", "valid", "test", "users", "items") + SETS
MANIFEST_VERSION = 4  # 4: inputs recorded with size, mtime and sha256 (the cache checks them)


def dataset_tag(params: Mapping) -> str:
    d = params["data"]
    size = f"u{d['sample_users']}" if d.get("sample_users") else "all"
    top = f"i{d['top_items']}-" if d.get("top_items") else ""
    return f"k{d['kcore']}-{top}{size}-s{params['seed']}" + "".join(
        f"-{tag}{v:g}" for tag, v in sparsity_settings(d).items())


# the sparsity knobs and their tags, when they are not at their neutral default (which keeps the
# recipe, tag and folder of data prepared without them)
def sparsity_settings(data: Mapping) -> dict:
    out = {}
    if data.get("train_keep") not in (None, 1, 1.0):
        out["keep"] = float(data["train_keep"])
        if (data.get("train_keep_order") or "recent") != "recent":
            out["uniform"] = 1.0
    if data.get("cold_items"):
        out["cold"] = float(data["cold_items"])
    return out


def dataset_dir(params: Mapping) -> Path:
    return dataset_root(params) / "data" / dataset_tag(params)


def recipe(params: Mapping) -> dict:
    """The params that determine the prepared data (a change invalidates the cache)."""
    sparse = sparsity_settings(params["data"])
    return {"dataset": str(params["dataset"]), "seed": params["seed"],
            "data": {k: params["data"].get(k) for k in ("format", "kcore", "top_items", "sample_users",
                                                          "title_extras")},
            "testset": dict(params["testset"])} | ({"sparsity": sparse} if sparse else {})


def _input_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_file() and not p.name.startswith(".")
                  and p.suffix.lower() in {".dat", ".gz", ".tsv", ".zip", ".json"})


def _input_stats(folder: Path) -> dict:
    """{file name: {size, mtime_ns, sha256}} of the raw input files the dataset was read from."""
    files = _input_files(folder)
    sha = sha256_files(files)
    stats = {p.name: p.stat() for p in files}
    return {n: {"size": st.st_size, "mtime_ns": st.st_mtime_ns, "sha256": sha[n]} for n, st in stats.items()}


def _inputs_changed(man: Mapping, params: Mapping, spec) -> str | None:
    """Why a prepared folder no longer matches its raw inputs (None: it does). Size and mtime are
    the fast check; a file whose size or mtime differ is hashed, so a touched copy still matches."""
    try:
        _, folder = registry.resolve(str(params["dataset"]), params.get("data_dir"), spec)
    except DataError as e:
        return str(e)
    if not folder.is_dir():
        return f"{folder} does not exist"
    stored = man.get("inputs") or {}
    files = {p.name: p for p in _input_files(folder)}
    if set(files) != set(stored):
        return f"input files in {folder} are {sorted(files)}, it was built from {sorted(stored)}"
    for name, p in files.items():
        st, rec = p.stat(), stored[name]
        if st.st_size == rec["size"] and st.st_mtime_ns == rec["mtime_ns"]:
            continue
        if sha256_files([p])[name] != rec["sha256"]:
            return f"{p} changed since it was prepared"
    return None


def _locate(params: Mapping, spec: registry.DatasetSpec | None) -> tuple:
    """(spec, folder, format) — downloading the official files when the folder lacks a dataset."""
    spec, folder = registry.resolve(str(params["dataset"]), params.get("data_dir"), spec)
    fmt = params["data"].get("format")
    try:
        return spec, folder, fmt or detect_format(folder)
    except DataError:
        if spec is None or not spec.downloads:
            raise
        if not download.missing_files(spec, folder):
            raise  # the official files are there but unreadable: the detect error says why
        if not params["data"]["download"]:
            raise DataError(f"{folder}: dataset files missing and data.download is false") from None
    download.ensure_files(spec, folder)
    return spec, folder, fmt or detect_format(folder)


def prepare_dataset(params: Mapping, force: bool = False, verbose: bool = True,
                    spec: registry.DatasetSpec | None = None) -> Path:
    """Build the protocol's artefacts for `params` (or reuse matching ones); return the folder.

    `spec` replaces the registered DatasetSpec of `params.dataset` (another download mirror,
    e.g. `REGISTRY["ml1m"].with_base_url(url)`). Nothing is written under the output folder
    unless every step succeeds: the folder appears whole (atomic rename) or not at all."""
    out = dataset_dir(params)
    rec = recipe(params)
    if not force and (out / "manifest.json").exists():
        try:
            man = read_json(out / "manifest.json")
        except (OSError, ValueError):
            man = {}
        if man.get("recipe") == rec and man.get("version") == MANIFEST_VERSION and all(
                (out / f"{n}.parquet").exists() for n in PARQUETS):
            why = _inputs_changed(man, params, spec)
            if why is None:
                return out
            if verbose:
                print(f"prepared data {out} is stale ({why}): rebuilding")
    t0 = time.perf_counter()
    spec, folder, fmt = _locate(params, spec)
    inter, titles = read_raw(folder, fmt, bool(params["data"].get("title_extras")))
    t_read = time.perf_counter() - t0
    proc = process(inter, titles, params["data"]["kcore"], params["data"].get("sample_users"),
                   params["seed"], source=str(folder), top_items=params["data"].get("top_items"))
    t_proc = time.perf_counter() - t0 - t_read
    ts = params["testset"]
    try:
        sets = build_testsets(proc.train, proc.valid, proc.test, proc.items["title"].tolist(),
                              seed=params["seed"], n_candidates=ts["n_candidates"],
                              n_binary_neg=ts["n_binary_neg"], sim_pool=ts["sim_pool"],
                              progress=verbose)
    except ValueError as e:
        raise DataError(f"{folder}: {e}") from None
    check_no_leakage(proc.train, sets, proc.valid, proc.test)
    # thinning comes after the evaluation sets: they are the same at every density
    train, dropped, cold = sparsify(proc.train, len(proc.items), params["data"], params["seed"])
    noun = params["data"].get("noun") or (spec.noun if spec else "items")
    manifest = {
        "version": MANIFEST_VERSION,
        "dataset": str(params["dataset"]),
        "source_folder": str(folder),
        "format": fmt,
        "noun": noun,
        "seed": params["seed"],
        "recipe": rec,
        "params": {k: params[k] for k in ("dataset", "seed", "data", "testset")},
        "inputs": (inputs := _input_stats(folder)),
        "inputs_sha256": {n: v["sha256"] for n, v in inputs.items()},
        "stats": proc.stats,
        "train_interactions": int(len(train)),
        "sparsity": {**sparsity_settings(params["data"]), "dropped": int(len(dropped)), "cold_items": int(len(cold))},
        "counts": proc.counts,
        "seconds": {"read": round(t_read, 2), "process": round(t_proc, 2),
                    "total": round(time.perf_counter() - t0, 2)},
    }
    with atomic_dir(out) as tmp:
        for name, df in (("train", train), ("valid", proc.valid), ("test", proc.test),
                         ("users", proc.users), ("items", proc.items), *sets.items()):
            df.to_parquet(tmp / f"{name}.parquet", index=False)
        if len(dropped):
            dropped.to_parquet(tmp / "dropped.parquet", index=False)
            pd.DataFrame({"item": cold}).to_parquet(tmp / "cold_items.parquet", index=False)
        write_json(tmp / "manifest.json", manifest)
    if verbose:
        s = proc.stats
        print(f"prepared {params['dataset']}: {s['users']} users, {s['items']} items, "
              f"{s['interactions']} interactions -> {out} ({manifest['seconds']['total']:.1f}s)")
    return out


@dataclass
class RecDataset:
    """A prepared dataset: splits, id maps, titles and the shared evaluation sets."""
    path: Path
    name: str
    noun: str
    n_users: int
    n_items: int
    train: pd.DataFrame
    valid: pd.DataFrame
    test: pd.DataFrame
    users: pd.DataFrame
    items: pd.DataFrame
    manifest: dict
    seed: int = 42
    _sets: dict = field(default_factory=dict, repr=False)
    _seqs: list | None = field(default=None, repr=False)

    @property
    def titles(self) -> list[str]:
        return self.items["title"].tolist()

    @property
    def stats(self) -> dict:
        return self.manifest["stats"]

    @property
    def dropped(self) -> pd.DataFrame:
        """Training interactions removed by data.train_keep / data.cold_items (empty without)."""
        f = self.path / "dropped.parquet"
        return pd.read_parquet(f) if f.exists() else self.train.iloc[:0]

    @property
    def cold_items(self) -> np.ndarray:
        """Items whose every training interaction was removed (data.cold_items)."""
        f = self.path / "cold_items.parquet"
        return pd.read_parquet(f)["item"].to_numpy() if f.exists() else np.zeros(0, dtype=np.int64)

    def train_sequences(self) -> list[np.ndarray]:
        """Per user, the train items in time order."""
        if self._seqs is None:
            items = self.train["item"].to_numpy()
            bounds = np.searchsorted(self.train["user"].to_numpy(), np.arange(self.n_users + 1))
            self._seqs = [items[bounds[u]:bounds[u + 1]] for u in range(self.n_users)]
        return self._seqs

    def eval_users(self, max_users: int | None = None) -> np.ndarray:
        """The fixed, seeded subset of users every model is evaluated on (sorted)."""
        users = np.arange(self.n_users)
        if max_users is None or max_users >= self.n_users:
            return users
        rng = np.random.default_rng(self.seed + 1)
        return np.sort(rng.permutation(self.n_users)[:max_users])

    def _set(self, name: str) -> pd.DataFrame:
        if name not in self._sets:
            self._sets[name] = pd.read_parquet(self.path / f"{name}.parquet")
        return self._sets[name]

    def _subset(self, name: str, max_users: int | None) -> pd.DataFrame:
        df = self._set(name)
        if max_users is None or max_users >= self.n_users:
            return df
        return df[df["user"].isin(self.eval_users(max_users))].reset_index(drop=True)

    def topk(self, split: str = "test", max_users: int | None = None) -> pd.DataFrame:
        """user, item, label, position, source — n_candidates rows per user, in stored order."""
        return self._subset(f"{split}_topk", max_users)

    def binary(self, split: str = "test", max_users: int | None = None) -> pd.DataFrame:
        """user, item, label — the interaction-prediction pairs."""
        return self._subset(f"{split}_binary", max_users)


def load_prepared(path: str | Path) -> RecDataset:
    path = Path(path)
    if not (path / "manifest.json").exists():
        raise DataError(f"{path / 'manifest.json'}: not a prepared dataset folder")
    man = read_json(path / "manifest.json")
    missing = [n for n in PARQUETS if not (path / f"{n}.parquet").exists()]
    if missing:
        raise DataError(f"{path / (missing[0] + '.parquet')}: missing from the prepared folder (rebuild with force=True)")
    rd = {n: pd.read_parquet(path / f"{n}.parquet") for n in ("train", "valid", "test", "users", "items")}
    return RecDataset(path=path, name=man["dataset"], noun=man["noun"],
                      n_users=man["stats"]["users"], n_items=man["stats"]["items"],
                      manifest=man, seed=man["seed"], **rd)


def load_dataset(params: Mapping, force: bool = False, verbose: bool = True,
                 spec: registry.DatasetSpec | None = None) -> RecDataset:
    """Prepare (or reuse) and load the dataset described by `params`."""
    return load_prepared(prepare_dataset(params, force=force, verbose=verbose, spec=spec))


def table1(datasets: list) -> pd.DataFrame:
    """Paper Table 1: dataset statistics after k-core, from RecDatasets (or their manifests)."""
    rows = []
    for d in datasets:
        man = d if isinstance(d, Mapping) else d.manifest
        st = man["stats"]
        rows.append({"dataset": man["dataset"], "#users": st["users"], "#items": st["items"],
                     "#interactions": st["interactions"], "sparsity": f"{100 * st['sparsity']:.2f}%"})
    return pd.DataFrame(rows).set_index("dataset")
