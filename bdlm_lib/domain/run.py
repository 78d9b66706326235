"""A domain run end to end, and its artefacts:

    <output_dir>/<dataset>/domain/<model>/
        model.safetensors        state dict (+ model name and sizes in the header metadata)
        embeddings.safetensors   `user` [n_users, dim], `item` [n_items, dim] (E_U^D, E_I^D)
        history.json             per epoch: loss, valid HR@1, seconds
        training.png             the curves
        params.yaml, environment.json, metrics.json (last: its presence = a finished run)

An unfinished run folder (no metrics.json) holding a checkpoint is resumed, not restarted.
"""
from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Mapping

import torch
import yaml
from safetensors import safe_open
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save

from ..full_ranking import domain_scorer, evaluate_full
from ..params import Params
from ..runs import atomic_write_bytes
from ..store import dataset_root, new_run_dir, write_run
from .factory import build_domain_model, domain_device
from .trainer import CHECKPOINT, evaluate_domain, train_domain


def save_domain(model, run_dir, params: Mapping | None = None) -> None:
    """model.safetensors + embeddings.safetensors (both written atomically). With `params`, their
    seed and domain section go into the header too, so the folder loads without params.yaml."""
    run_dir = Path(run_dir)
    meta = {"model": model.name, "n_users": str(model.n_users), "n_items": str(model.n_items),
            "dim": str(model.dim), "feature_dim": str(model.feature_dim)}
    if params is not None:
        meta["params"] = json.dumps({"seed": params["seed"], "domain": dict(params["domain"])},
                                    default=dict)
    sd = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    atomic_write_bytes(run_dir / "model.safetensors", st_save(sd, metadata=meta))
    with model.inference():
        U, I = model.embeddings()
    atomic_write_bytes(run_dir / "embeddings.safetensors",
                       st_save({"user": U.cpu().contiguous(), "item": I.cpu().contiguous()}, metadata=meta))


def evaluate_test(model, ds, params: Mapping) -> tuple[dict, object]:
    """(metrics, predictions) of a trained model on the test split: the candidate sets, and the
    full catalogue too with eval.mode full."""
    metrics, preds = evaluate_domain(model, ds, params, split="test", return_predictions=True)
    if params["eval"].get("mode") == "full":
        with model.inference():   # LightGCN's propagation once for the whole ranking
            metrics["full"] = evaluate_full(domain_scorer(model), ds, params)
    return metrics, preds


def _wrap(d):
    return Params({k: _wrap(v) for k, v in d.items()}) if isinstance(d, dict) else d


def load_domain(run_dir):
    """Rebuild a saved model from `run_dir`'s params.yaml + model.safetensors (eval mode)."""
    run_dir = Path(run_dir)
    path = run_dir / "model.safetensors"
    if not path.exists():
        raise FileNotFoundError(f"{path}: missing (not a saved domain model)")
    try:
        with safe_open(str(path), "pt") as f:
            meta = f.metadata() or {}
        sd = st_load(path.read_bytes())
    except Exception as e:  # safetensors' own error on a truncated or corrupt file
        raise ValueError(f"{path}: corrupt model file ({str(e).strip()[:120] or type(e).__name__}); "
                         f"re-run the domain run that wrote it") from None
    if (run_dir / "params.yaml").exists():
        with open(run_dir / "params.yaml", encoding="utf-8") as f:
            params = _wrap(yaml.safe_load(f))
    elif "params" in meta:
        params = _wrap(json.loads(meta["params"]))
    else:
        raise FileNotFoundError(f"{run_dir / 'params.yaml'}: missing, and the model header has no params")
    if "model" not in meta:
        raise ValueError(f"{path}: no model name in the header (not written by save_domain)")
    model = build_domain_model(meta["model"], int(meta["n_users"]), int(meta["n_items"]), params)
    # the graph (LightGCN) is part of the state: give the empty buffers their saved size first
    for name in ("graph_users", "graph_items"):
        if name in sd:
            setattr(model, name, torch.empty_like(sd[name]))
    model.load_state_dict(sd)
    model.eval()
    return model


def run_domain(params: Mapping, ds=None, run_dir=None):
    """Train params.domain.model on params.dataset, evaluate on test, write the artefacts into
    `run_dir` (a batch run's folder), or a new folder under <output_dir>/<dataset>/domain/.
    Returns (model, metrics, run_dir)."""
    from ..data import load_dataset

    if ds is None:
        ds = load_dataset(params)
    name = params["domain"]["model"]
    if run_dir is not None:
        run_dir = Path(run_dir)
        run_dir.mkdir(parents=True, exist_ok=True)
        return _run(params, ds, name, run_dir)
    parent = dataset_root(params) / "domain"
    run_dir = claim_run_dir(parent, name)
    try:
        return _run(params, ds, name, run_dir)
    finally:
        (run_dir / LOCK).unlink(missing_ok=True)


LOCK = ".running"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def claim_run_dir(parent: Path, name: str) -> Path:
    """`runs.new_run_dir`, made safe for concurrent runs: the unfinished folder it returns is
    claimed with a lock file holding our pid. A folder locked by a live process is skipped for
    the next sibling (`name-2`, ...); a stale lock (its process died) is taken over, so an
    interrupted run is resumed from its checkpoint."""
    k = 1
    while True:
        run_dir = new_run_dir(parent, name if k == 1 else f"{name}-{k}")
        lock = run_dir / LOCK
        try:
            fd = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
        except FileExistsError:
            try:
                pid = int(lock.read_text().strip() or 0)
            except (OSError, ValueError):
                pid = 0
            if pid and pid != os.getpid() and _alive(pid):
                k += 1
                continue
            lock.unlink(missing_ok=True)           # stale: its run died; resume it
            continue
        with os.fdopen(fd, "w") as f:
            f.write(str(os.getpid()))
        return run_dir


def _run(params, ds, name, run_dir):
    import matplotlib.pyplot as plt

    from .plots import plot_history
    # weights drawn on the CPU (same init on every machine), then moved to params.domain.device
    model = build_domain_model(name, ds.n_users, ds.n_items, params, ds=ds).to(domain_device(params))
    t0 = time.perf_counter()
    history = train_domain(model, ds, params, run_dir)
    train_seconds = time.perf_counter() - t0
    metrics, preds = evaluate_test(model, ds, params)
    # the epochs the trainer could pick (a history from before `monitored` existed: all of them)
    evals = [h for h in history if h["valid_hr1"] is not None and h.get("monitored", True)]
    best = max(evals, key=lambda h: h["valid_hr1"]) if evals else None
    metrics.update({
        "model": name, "dataset": str(params["dataset"]), "preset": params.get("preset"),
        "epochs_run": len(history), "best_epoch": best["epoch"] if best else None,
        "valid_HR@1": best["valid_hr1"] if best else None,
        # seconds of this process (a resumed run counts only what it trained itself)
        "train_seconds": round(train_seconds, 2),
        "epoch_seconds": round(sum(h["seconds"] for h in history) / max(len(history), 1), 3),
    })
    save_domain(model, run_dir, params)
    plt.close(plot_history(history, run_dir / "training.png", title=f"{name} on {params['dataset']}"))
    write_run(run_dir, params, metrics, extra={"history.json": history}, predictions={"predictions.parquet": preds})
    (run_dir / CHECKPOINT).unlink(missing_ok=True)      # the finished artefacts replace it
    return model, metrics, run_dir
