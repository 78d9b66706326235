"""One trainer for every domain model: BPR or BCE over negatives resampled each epoch from the
train split, Adam, early stopping on validation HR@1 (`patience` evaluations without a new best; the first
`min_epochs` epochs are not monitored), and resumable safetensors checkpoints.

Determinism and resume: nothing random carries over from one epoch to the next. Epoch e draws
its shuffling, negatives, cloze masks and dropout from generators seeded with (seed, e), so a run
resumed from the checkpoint of epoch e-1 (model + best weights + Adam state + counters) replays
epoch e exactly as an uninterrupted run would — same final weights, bit for bit, on CPU.
"""
from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Callable, Mapping

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save
from tqdm.auto import tqdm

from ..curves import Curves
from ..metrics import bucket_edges, evaluate, topk_metrics
from ..runs import atomic_write_bytes
from .denormals import denormals_flushed

CHECKPOINT = "checkpoint.safetensors"


class NegativeSampler:
    """Uniform negatives over the items a user has not interacted with in the train split.
    `exclude` (the cold items of data.cold_items) are never drawn: a cold item stands for one
    that did not exist while the model trained, so it is neither a positive nor a negative."""

    def __init__(self, users: np.ndarray, items: np.ndarray, n_items: int, exclude=None):
        self.n_items = int(n_items)
        self.keys = np.unique(np.asarray(users, np.int64) * self.n_items + np.asarray(items, np.int64))
        exclude = np.asarray(exclude if exclude is not None else [], np.int64)
        # draws go through the pool of allowed items (all of them without `exclude`)
        self.pool = np.setdiff1d(np.arange(self.n_items), exclude) if len(exclude) else None
        n_allowed = self.n_items if self.pool is None else len(self.pool)
        counts = np.bincount(self.keys // self.n_items)
        if len(counts) and counts.max() >= n_allowed:
            raise ValueError("negative sampling: a user has interacted with every item")

    def seen(self, users: np.ndarray, items: np.ndarray) -> np.ndarray:
        k = np.asarray(users, np.int64) * self.n_items + np.asarray(items, np.int64)
        idx = np.minimum(np.searchsorted(self.keys, k), len(self.keys) - 1)
        return self.keys[idx] == k

    def sample(self, users: np.ndarray, k: int, rng: np.random.Generator) -> np.ndarray:
        """[len(users), k] negatives (rejection sampling; only the rejected ones are redrawn)."""
        u = np.repeat(np.asarray(users, np.int64), k)
        draw = (lambda n: rng.integers(0, self.n_items, size=n)) if self.pool is None else (
            lambda n: self.pool[rng.integers(0, len(self.pool), size=n)])
        out = draw(len(u))
        todo = np.flatnonzero(self.seen(u, out))
        while len(todo):
            out[todo] = draw(len(todo))
            todo = todo[self.seen(u[todo], out[todo])]
        return out.reshape(-1, k)


def model_setting(params: Mapping, name: str, key: str):
    """A per-model override (`domain.per_model.<name>.<key>`) or the domain-wide value."""
    per = (params["domain"].get("per_model") or {}).get(name) or {}
    value = per.get(key)
    return params["domain"][key] if value is None else value


def pair_loss(pos: torch.Tensor, neg: torch.Tensor, loss: str) -> torch.Tensor:
    """BPR: -log σ(s⁺ - s⁻) averaged over negatives; BCE: positives label 1, negatives 0."""
    if loss == "bpr":
        return -F.logsigmoid(pos.unsqueeze(-1) - neg).mean()
    if loss == "bce":
        return (F.binary_cross_entropy_with_logits(pos, torch.ones_like(pos))
                + F.binary_cross_entropy_with_logits(neg, torch.zeros_like(neg)))
    raise ValueError(f"domain.loss: unknown loss {loss!r} (bpr | bce)")


def _epoch_seed(seed: int, epoch: int) -> int:
    return int(np.random.SeedSequence([int(seed), int(epoch)]).generate_state(1)[0])


def train_epoch(model, ds, params, epoch: int, optimizer, sampler: NegativeSampler) -> float:
    """One pass over the train split; returns the mean loss."""
    d = params["domain"]
    seed = _epoch_seed(params["seed"], epoch)
    rng = np.random.default_rng(seed)
    torch.manual_seed(seed)                      # dropout
    bs = int(model_setting(params, model.name, "batch_size"))
    model.train()
    total, n = 0.0, 0
    if model.unit == "pairs":
        users = ds.train["user"].to_numpy()
        items = ds.train["item"].to_numpy()
        perm = rng.permutation(len(users))
        neg = sampler.sample(users[perm], d["n_neg"], rng)
        for s in range(0, len(perm), bs):
            idx = perm[s:s + bs]
            u = torch.from_numpy(users[idx])
            cand = torch.from_numpy(np.concatenate([items[idx, None], neg[s:s + bs]], 1))
            logits = model(u, cand)
            loss = pair_loss(logits[:, 0], logits[:, 1:], d["loss"])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            total, n = total + loss.item() * len(idx), n + len(idx)
    else:
        perm = rng.permutation(ds.n_users)
        for s in range(0, len(perm), bs):
            pos, neg = model.sequence_logits(perm[s:s + bs], rng, sampler, d["n_neg"])
            loss = pair_loss(pos, neg, d["loss"])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            total, n = total + loss.item() * len(pos), n + len(pos)
    return total / max(n, 1)


def score_fn(model, params: Mapping):
    """A `metrics.evaluate` scorer: the model's logits (σ is monotone, so ranks and the F1
    threshold are the same as with probabilities, without float saturation ties)."""
    bs = int(params["domain"].get("eval_batch_size") or 16384)
    return lambda frame: model.predict(frame["user"].to_numpy(), frame["item"].to_numpy(), bs)


def valid_hr1(model, ds, params) -> float:
    frame = ds.topk("valid", max_users=params["eval"]["max_users"])
    return topk_metrics(frame, score_fn(model, params)(frame), ks=(1,))["HR@1"]


def evaluate_domain(model, ds, params, split: str = "test", return_predictions: bool = False):
    """The shared metrics (the metrics.json layout of every run) on `split`'s persisted candidate sets."""
    return evaluate(score_fn(model, params), ds, split=split, max_users=params["eval"]["max_users"],
                    ks=params["eval"]["ks"], return_predictions=return_predictions,
                    topk_users=params["eval"].get("topk_users"), buckets=bucket_edges(params))


# --- checkpoints ------------------------------------------------------------------------------

# domain keys that say how a model is run, not which model it is (a finished run is reused
# whatever they are: joint.run.pretrained_domain)
RUNTIME_KEYS = frozenset({"progress", "eval_batch_size", "device"})
# keys that may change between an interrupted run and its resumption (they do not change what
# each epoch computes): the runtime keys, more epochs, other patience or floor
_RESUMABLE = RUNTIME_KEYS | {"epochs", "patience", "min_epochs"}
# domain keys added after runs were stored, with the value that reproduces those runs (a saved
# params.yaml without the key was trained that way: joint.run.pretrained_domain reads it so), at
# the top level and in each per_model entry
LATER_DEFAULTS = {"min_epochs": 0}
LATER_PER_MODEL = {"min_epochs": None}


def with_later_defaults(domain: Mapping) -> dict:
    """`domain` with the keys added later filled in as the runs stored before them were made."""
    dom = {**LATER_DEFAULTS, **dict(domain or {})}
    if isinstance(dom.get("per_model"), Mapping):
        dom["per_model"] = {m: {**LATER_PER_MODEL, **dict(v or {})} for m, v in dom["per_model"].items()}
    return dom


def own_per_model(per_model: Mapping | None, name: str) -> dict:
    """The `domain.per_model` entries that shape model `name`: its own only (another model's
    override changes nothing it computes)."""
    return {m: e for m, e in (per_model or {}).items() if m == name}


def _fingerprints(model, params) -> tuple[str, str]:
    """(the checkpoint identity, the one checkpoints were written with before it): the resumable
    keys are left out at both levels (per_model holds min_epochs too), which also makes a
    checkpoint from before a later key match; only this model's per_model entry counts now, as in
    the run's own identity (store.identity), and a checkpoint that held every model's entry still
    resumes."""
    keep = lambda m: {k: v for k, v in dict(m or {}).items() if k not in _RESUMABLE}   # noqa: E731
    dom = keep(params["domain"])
    every = {m: keep(e) for m, e in (dom.get("per_model") or {}).items()}

    def fp(per_model: dict) -> str:
        return json.dumps({"model": model.name, "seed": params["seed"], "domain": {**dom, "per_model": per_model},
                           "n_users": model.n_users, "n_items": model.n_items}, sort_keys=True, default=str)
    return fp(own_per_model(every, model.name)), fp(every)


def save_checkpoint(path: Path, model, optimizer, best_state, state: dict, fingerprint: str) -> None:
    tensors = {f"model/{k}": v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    if best_state is not None:
        tensors.update({f"best/{k}": v.cpu().contiguous() for k, v in best_state.items()})
    osd = optimizer.state_dict()
    for idx, st in osd["state"].items():
        for k, v in st.items():
            tensors[f"optim/{idx}/{k}"] = (v.cpu() if torch.is_tensor(v) else torch.tensor(v)).contiguous()
    tensors["rng/torch"] = torch.get_rng_state()    # informative: each epoch reseeds anyway
    meta = {"state": json.dumps(state), "param_groups": json.dumps(osd["param_groups"]),
            "fingerprint": fingerprint}
    atomic_write_bytes(path, st_save(tensors, metadata=meta))


def load_checkpoint(path: Path, model, optimizer, fingerprint: str | tuple[str, ...]):
    from safetensors import safe_open
    with safe_open(str(path), "pt") as f:
        meta = f.metadata()
    accepted = (fingerprint,) if isinstance(fingerprint, str) else tuple(fingerprint)
    if meta.get("fingerprint") not in accepted:
        raise ValueError(f"{path}: checkpoint was made with other model/params; "
                         f"remove it or use another run dir")
    tensors = st_load(path.read_bytes())
    model.load_state_dict({k[6:]: v for k, v in tensors.items() if k.startswith("model/")})
    best = {k[5:]: v for k, v in tensors.items() if k.startswith("best/")} or None
    ostate: dict = {}
    for k, v in tensors.items():
        if k.startswith("optim/"):
            _, idx, name = k.split("/", 2)
            ostate.setdefault(int(idx), {})[name] = v
    groups = json.loads(meta["param_groups"])
    for g in groups:
        g["betas"] = tuple(g["betas"])
    optimizer.load_state_dict({"state": ostate, "param_groups": groups})
    return best, json.loads(meta["state"])


# --- the loop -------------------------------------------------------------------------------

def train_domain(model, ds, params, run_dir=None,
                 callback: Callable[[int, dict], None] | None = None) -> list[dict]:
    """Train `model` on `ds`'s train split; returns the per-epoch history
    [{epoch, loss, valid_hr1, seconds}]. With `run_dir`, a checkpoint is written atomically after
    every epoch and an existing one is resumed. The best weights (validation HR@1) are restored
    at the end. `callback(epoch, record)` runs after each epoch's checkpoint (tests use it to
    simulate an interruption)."""
    # every epoch reseeds torch's global RNG (dropout); fork it so the caller's state survives.
    # SASRec / BERT4Rec ask for denormals flushed (domain/denormals.py: why)
    # the curves (TensorBoard, x = epoch) go into the run folder, closed however training ends
    with torch.random.fork_rng(devices=[]), denormals_flushed(getattr(model, "flush_denormal", False)), \
            Curves(run_dir) as curves:
        return _train(model, ds, params, run_dir, callback, curves)


def _train(model, ds, params, run_dir, callback, curves: Curves) -> list[dict]:
    d = params["domain"]
    if not any(p.requires_grad for p in model.parameters()):
        model.eval()                             # nothing to train (popularity): no epochs
        return []
    lr = float(model_setting(params, model.name, "lr"))
    optimizer = torch.optim.Adam(model.parameters(), lr=lr, weight_decay=float(d["weight_decay"]))
    sampler = NegativeSampler(ds.train["user"].to_numpy(), ds.train["item"].to_numpy(), ds.n_items,
                              exclude=ds.cold_items)
    if model.unit == "users":
        model.set_train_sequences(ds.train_sequences())
    state = {"epoch": -1, "best_hr1": -1.0, "best_epoch": -1, "bad_evals": 0, "done": False,
             "history": []}
    best_state = None
    ckpt = Path(run_dir) / CHECKPOINT if run_dir is not None else None
    fp, before = _fingerprints(model, params)
    if ckpt is not None and ckpt.exists():
        best_state, state = load_checkpoint(ckpt, model, optimizer, (fp, before))
    curves.open(purge_step=state["epoch"] + 2)

    epochs = int(d["epochs"])
    min_epochs = int(model_setting(params, model.name, "min_epochs") or 0)
    bar = tqdm(range(state["epoch"] + 1, epochs), initial=state["epoch"] + 1, total=epochs,
               desc=f"{model.name}", disable=not d["progress"], leave=False)
    for epoch in bar:
        if state["done"]:
            break
        t0 = time.perf_counter()
        loss = train_epoch(model, ds, params, epoch, optimizer, sampler)
        t_train = time.perf_counter() - t0
        rec = {"epoch": epoch, "loss": loss, "valid_hr1": None, "seconds": round(t_train, 3)}
        if (epoch + 1) % int(d["eval_every"]) == 0 or epoch == epochs - 1:
            t1 = time.perf_counter()
            hr = valid_hr1(model, ds, params)
            rec["valid_hr1"], rec["eval_seconds"] = hr, round(time.perf_counter() - t1, 3)
            # the first min_epochs epochs are not monitored at all (Keras' start_from_epoch): neither
            # a best candidate nor a count against patience (the last epoch always is, so a floor
            # above `epochs` still yields a best state). LightGCN's validation HR@1 (400 users) dips
            # over its first epochs while BPR still falls fast: with patience alone a run can stop
            # after a few epochs, or keep a noisy epoch-1 peak as its best
            rec["monitored"] = epoch + 1 > min_epochs or epoch == epochs - 1
            if rec["monitored"] and hr > state["best_hr1"]:
                state.update(best_hr1=hr, best_epoch=epoch, bad_evals=0)
                best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
            elif rec["monitored"]:
                state["bad_evals"] += 1
                state["done"] = state["bad_evals"] >= int(d["patience"])
        state["epoch"] = epoch
        state["history"].append(rec)
        curves.scalars(epoch + 1, {"loss": loss, "seconds": rec["seconds"]})
        curves.scalars(epoch + 1, {"HR@1": rec["valid_hr1"]}, "valid")
        bar.set_postfix(loss=f"{loss:.4f}", hr1=rec["valid_hr1"])
        if ckpt is not None:
            save_checkpoint(ckpt, model, optimizer, best_state, state, fp)
        if callback is not None:
            callback(epoch, rec)
        if state["done"]:
            break
    bar.close()
    if best_state is not None:
        model.load_state_dict(best_state)
    model.eval()
    return state["history"]
