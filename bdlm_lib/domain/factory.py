"""Building a domain model by name, and the device it trains and scores on."""
from __future__ import annotations

from typing import Mapping

import torch

from .base import DomainModel
from .lightgcn import LightGCN
from .mf import MF
from .ncf import NCF
from .popularity import Popularity
from .sequential import BERT4Rec, GRU4Rec, SASRec

MODELS = ("pop", "mf", "ncf", "lightgcn", "sasrec", "gru4rec", "bert4rec")


def domain_device(params: Mapping) -> torch.device:
    """`params.domain.device`: auto (base.yaml's default: the GPU when there is one), cpu, cuda or
    cuda:N. Where the model trains and scores; it does not change
    which run a model is (not part of run identity)."""
    # params stored before the key existed (a saved run's params.yaml) trained on the CPU
    want = str(params["domain"].get("device") or "cpu")
    if want == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if want != "cpu" and not (want == "cuda" or want.startswith("cuda:")):
        raise ValueError(f"params.domain.device must be auto | cpu | cuda | cuda:N, got {want!r}")
    if want != "cpu" and not torch.cuda.is_available():
        raise ValueError(f"params.domain.device is {want!r} but torch sees no CUDA device")
    return torch.device(want)


def build_domain_model(name: str, n_users: int, n_items: int, params: Mapping, ds=None) -> DomainModel:
    """A fresh model, its initial weights drawn from params.seed (the global RNG is left as it
    was). LightGCN needs `ds` for its train graph and the sequence models for the train
    histories (or a saved state dict to load them from, as `load_domain` does)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(int(params["seed"]))
        return _build(name, n_users, n_items, params, ds)


def _build(name, n_users, n_items, params, ds):
    d = params["domain"]
    dim = int(d["dim"])
    if name == "pop":
        return Popularity(n_users, n_items, ds.train["item"].to_numpy() if ds is not None else None)
    if name == "mf":
        return MF(n_users, n_items, dim)
    if name == "ncf":
        return NCF(n_users, n_items, dim, d["mlp_layers"], d["dropout"])
    if name == "lightgcn":
        tu = ds.train["user"].to_numpy() if ds is not None else None
        ti = ds.train["item"].to_numpy() if ds is not None else None
        return LightGCN(n_users, n_items, dim, d["n_layers"], tu, ti)
    seqs = ds.train_sequences() if ds is not None else None
    common = dict(sequences=seqs, max_seq_len=int(d["max_seq_len"]), dropout=d["dropout"])
    if name == "sasrec":
        return SASRec(n_users, n_items, dim, n_layers=d["n_layers"], n_heads=d["n_heads"], **common)
    if name == "gru4rec":
        return GRU4Rec(n_users, n_items, dim, **common)
    if name == "bert4rec":
        return BERT4Rec(n_users, n_items, dim, n_layers=d["n_layers"], n_heads=d["n_heads"],
                        mask_prob=d["mask_prob"], **common)
    raise ValueError(f"domain.model: unknown model {name!r} ({' | '.join(MODELS)})")
