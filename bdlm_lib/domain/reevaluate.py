"""A finished domain run evaluated again under other `eval.*` settings, without training again.

The evaluation settings (`eval.mode`, `eval.full_ks`, the buckets, ...) do not change what a model
learns, so a run trained for hours need not train again to be ranked on the full catalogue too:

    bdlm evaluate outputs/amazon-health/full_domain/lightgcn-s42 --set eval.mode=full

loads the run's saved model (model.safetensors) and evaluates it with its own parameters and the
new `eval.*` values, into a run of its own, `<root>/<dataset>/<batch>_eval/<run_id>/` (or the
batch folder `--as` names), identified like any run by its parameters: a second call with the
same settings finds it finished, one with other settings stops and says which. metrics.json
keeps the source run's training record (epochs, best epoch, times) and names the source
(`evaluated_from`); the candidate-set metrics are those of the source run (tested), the new ones
sit beside them. Only domain runs re-evaluate: a joint run's evaluation reads models that are not
stored whole.
"""
from __future__ import annotations

from pathlib import Path
from typing import Mapping

import yaml

from .. import store
from ..params import load_params
from ..runs import read_json, write_json

TRAINING_RECORD = ("model", "epochs_run", "best_epoch", "valid_HR@1", "train_seconds", "epoch_seconds")


def eval_params(run_dir: Path, overrides: Mapping) -> dict:
    """The stored run's parameters with `overrides` (eval.* keys only), validated by the schema."""
    bad = [k for k in overrides if not k.startswith("eval.")]
    if bad:
        raise ValueError(f"{bad[0]}: only eval.* settings change without training again "
                         "(run the batch with the new setting instead)")
    f = run_dir / store.PARAMS
    if not f.exists():
        raise FileNotFoundError(f"{f}: missing (not a stored run)")
    stored = yaml.safe_load(f.read_text(encoding="utf-8")) or {}
    return load_params(stored.get("dataset"), stored.get("preset"), {**store.flat(stored), **overrides})


def reevaluate_domain(run_dir: str | Path, overrides: Mapping, batch: str | None = None) -> tuple[Path, str]:
    """Evaluate the finished domain run `run_dir` again with `overrides` (eval.* keys); return
    (the new run's folder, "finished" when it already held this evaluation, else "done")."""
    from ..data import load_dataset
    from .run import evaluate_test, load_domain
    src = Path(run_dir)
    if not (src / store.METRICS).exists() or not (src / "model.safetensors").exists():
        raise FileNotFoundError(f"{src}: not a finished domain run (metrics.json and model.safetensors)")
    params = eval_params(src, overrides)
    name = store.safe_name(batch or f"{src.parent.name}_eval", "batch folder")
    dst = src.parent.parent / name / src.name
    if dst.resolve() == src.resolve():
        raise ValueError(f"{dst}: the re-evaluation needs another batch folder than its source")
    if store.claim(dst, params) == "finished":
        return dst, "finished"
    model = load_domain(src)
    ds = load_dataset(params, verbose=False)
    metrics, preds = evaluate_test(model, ds, params)
    source = read_json(src / store.METRICS)
    metrics.update({k: source[k] for k in TRAINING_RECORD if k in source})
    metrics["dataset"], metrics["preset"] = str(params["dataset"]), params.get("preset")
    metrics["evaluated_from"] = str(Path(src.parent.name) / src.name)
    info = read_json(src / store.RUN) if (src / store.RUN).exists() else {"method": model.name}
    write_json(dst / store.RUN, {**{k: v for k, v in info.items() if k not in ("finished_utc", "seconds")},
                                 "batch": name, "status": "ok", "evaluated_from": metrics["evaluated_from"]})
    extra = {"history.json": read_json(src / "history.json")} if (src / "history.json").exists() else {}
    store.write_run(dst, params, metrics, extra=extra, predictions={"predictions.parquet": preds})
    return dst, "done"
