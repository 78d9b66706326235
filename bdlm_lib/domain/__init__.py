"""Domain-specific recommenders (paper §2.1, §5.3): popularity, MF/GMF, NCF, LightGCN, SASRec, GRU4Rec, BERT4Rec behind
one interface (`base.DomainModel`), one trainer, and run artefacts under
`<output_dir>/<dataset>/domain/<model>/`.

    model = build_domain_model("lightgcn", ds.n_users, ds.n_items, params, ds=ds)
    history = train_domain(model, ds, params, run_dir)
    metrics = evaluate_domain(model, ds, params)
    model, metrics, run_dir = run_domain(params)       # all of it, with artefacts
"""
from __future__ import annotations

from .base import DomainModel, SequenceModel
from .factory import MODELS, build_domain_model, domain_device
from .lightgcn import LightGCN
from .mf import MF
from .ncf import NCF
from .popularity import Popularity
from .sequential import BERT4Rec, GRU4Rec, SASRec
from .trainer import NegativeSampler, evaluate_domain, train_domain
from .run import load_domain, run_domain, save_domain
from .plots import plot_history

__all__ = ["MODELS", "DomainModel", "SequenceModel", "MF", "NCF", "Popularity", "LightGCN", "SASRec", "GRU4Rec",
           "BERT4Rec", "build_domain_model", "domain_device", "train_domain", "evaluate_domain", "run_domain",
           "save_domain", "load_domain", "plot_history", "NegativeSampler"]
