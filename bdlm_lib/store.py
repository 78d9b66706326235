"""The run store: where runs live, what a run folder holds, how a run is claimed and found.

    <output_dir>/<dataset>/<group>/<run_id>/     one run (a batch's name, or a stage's folder)
        params.yaml        the resolved parameters
        fingerprint.json   the run's identity: a hash of the parameters that shape its results
        run.json           method, seed, λ, status (running | ok | failed | interrupted)
        environment.json   versions and machine
        metrics.json       written last: its presence means "finished"
    <output_dir>/.bdlm.lock   held by a batch while it runs (a second batch into the folder refuses)

A run is identified by its parameters: a finished run whose stored fingerprint differs from the
parameters asked for now is never reused nor silently overwritten (`run_state` says "changed"
and which keys differ). Every folder made from a name is checked to stay inside the output folder.
"""
from __future__ import annotations

import hashlib
import json
import os
import platform
import re
import sys
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Mapping

from .runs import atomic_write_bytes, atomic_write_text, read_json, write_json

PARAMS, FINGERPRINT, RUN, ENVIRONMENT, METRICS = \
    "params.yaml", "fingerprint.json", "run.json", "environment.json", "metrics.json"
PARTIAL_METRICS, ERROR, LOCK = "metrics.partial.json", "error.txt", ".bdlm.lock"

# Keys that say where things are or how they are shown, not what is computed: not part of a
# run's identity (moving the output folder or the data copy does not make a run different).
NOT_IDENTITY = ("output_dir", "data_dir", "llm.model_cache", "domain.progress")
# keys added to the schema after runs were stored, at the value that reproduces those runs: a
# stored identity without one of them was made with that value
LATER_KEYS = {"data.train_keep": 1.0, "data.train_keep_order": "recent", "data.cold_items": 0.0,
              "eval.mode": "candidates", "eval.item_buckets": [0, 1, 5, 20],
              "eval.user_buckets": [0, 5, 10, 20, 50], "eval.full_ks": [10, 20],
              "eval.full_rerank_n": 20, "eval.full_first_stage": "domain",
              "llm.attn_implementation": "sdpa", "sft.lora_targets": ["q_proj", "k_proj", "v_proj", "o_proj"],
              "sft.gradient_checkpointing": False, "sft.bf16_autocast": True}


class StoreError(ValueError):
    """A run folder that cannot be used as asked: the message names the folder or the lock."""


_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.+=-]*$")


def is_plain_name(v: Any) -> bool:
    """Letters, digits and `_.+=-`, no separator, no `..`: safe as one path component."""
    return isinstance(v, str) and bool(_NAME.match(v)) and ".." not in v


def safe_name(value: Any, what: str) -> str:
    """`value` as one path component, or a StoreError naming `what`."""
    if not is_plain_name(str(value)):
        raise StoreError(f"{what} {str(value)!r}: not a plain name (letters, digits, _ . + = -; no '/' or '..')")
    return str(value)


def plain(d: Any) -> Any:
    """Nested mappings (Params) -> plain dicts (for YAML and hashing)."""
    return {k: plain(v) for k, v in d.items()} if isinstance(d, Mapping) else d


def write_params(params: Mapping, path: str | os.PathLike) -> None:
    """params.yaml, atomically (the layered parameters, resolved)."""
    import yaml
    atomic_write_text(path, yaml.safe_dump(plain(params), sort_keys=False))


def flat(params: Mapping, prefix: str = "") -> dict:
    """{dotted key: value} of nested parameters."""
    out: dict = {}
    for k, v in params.items():
        if isinstance(v, Mapping):
            out.update(flat(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


PER_MODEL = "domain.per_model."
# what a per-dataset run (data preparation and its statistics) is made of: the keys that shape the
# prepared data (data.dataset.recipe), not the models' settings; prefixes end with "."
DATA_KEYS = ("dataset", "seed", "data.", "testset.")


def _read_by_run(key: str, model: Any) -> bool:
    """False for a key the run never reads: it is in NOT_IDENTITY, or it is another domain model's
    override (`domain.per_model.<name>.*` where <name> is not this run's `domain.model`)."""
    if key in NOT_IDENTITY:
        return False
    return not key.startswith(PER_MODEL) or key[len(PER_MODEL):].split(".", 1)[0] == model


def identity(params: Mapping) -> dict:
    """The parameters that make a run what it is (flat, sorted): tuning one domain model's
    per-model override leaves the runs of the others as they were."""
    return identity_of_flat(flat(params))


def identity_of_flat(values: Mapping) -> dict:
    """`identity` of parameters already flattened (a stored fingerprint.json's `params`, which
    may hold keys that were part of identities before the rule above)."""
    model = values.get("domain.model")
    return {k: v for k, v in sorted(values.items()) if _read_by_run(k, model)}


def fingerprint(params: Mapping) -> str:
    text = json.dumps(identity(params), sort_keys=True, default=str)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def write_fingerprint(run_dir: str | os.PathLike, params: Mapping) -> None:
    write_json(Path(run_dir) / FINGERPRINT, {"sha256": fingerprint(params), "params": identity(params)})


def stored_identity(run_dir: str | os.PathLike) -> dict | None:
    """The identity a run folder was made with: its fingerprint.json, else its params.yaml."""
    run_dir = Path(run_dir)
    if (run_dir / FINGERPRINT).exists():
        stored = read_json(run_dir / FINGERPRINT).get("params")
        return None if stored is None else {**LATER_KEYS, **identity_of_flat(stored)}
    if (run_dir / PARAMS).exists():
        import yaml
        try:
            data = yaml.safe_load((run_dir / PARAMS).read_text(encoding="utf-8"))
        except yaml.YAMLError as e:
            raise StoreError(f"{run_dir / PARAMS}: not valid YAML ({str(e).splitlines()[0]})") from None
        return {**LATER_KEYS, **identity(data or {})}
    return None


def restrict(ident: Mapping, reads: tuple[str, ...] | None) -> dict:
    """`ident` cut to the keys a run reads (`reads`: names, or prefixes ending in "."); all of it
    for None."""
    if reads is None:
        return dict(ident)
    return {k: v for k, v in ident.items() if any(k == r or (r.endswith(".") and k.startswith(r)) for r in reads)}


def changed_keys(old: Mapping, new: Mapping) -> list[str]:
    return sorted(k for k in set(old) | set(new) if old.get(k, "<absent>") != new.get(k, "<absent>"))


def describe_changes(old: Mapping, new: Mapping, most: int = 4) -> str:
    keys = changed_keys(old, new)
    shown = ", ".join(f"{k}: {old.get(k, '<absent>')!r} -> {new.get(k, '<absent>')!r}" for k in keys[:most])
    return shown + (f" (+{len(keys) - most} more)" if len(keys) > most else "")


def describe_run_changes(run_dir: str | os.PathLike, params: Mapping,
                         reads: tuple[str, ...] | None = None) -> str:
    """What differs between the stored run and `params` (the keys in `reads`), for an error line."""
    old = restrict(stored_identity(run_dir) or {}, reads)
    return describe_changes(old, restrict(identity(params), reads))


def run_state(run_dir: str | os.PathLike, params: Mapping,
              reads: tuple[str, ...] | None = None) -> tuple[str, list[str]]:
    """("new" | "finished" | "unfinished" | "changed", the keys that differ), comparing only the
    keys the run reads (`reads`, e.g. DATA_KEYS; None: its whole identity). A folder without any
    record of its parameters counts as made with these (nothing can be compared)."""
    run_dir = Path(run_dir)
    if not run_dir.exists():
        return "new", []
    old = stored_identity(run_dir)
    if old is not None:
        keys = changed_keys(restrict(old, reads), restrict(identity(params), reads))
        if keys:
            return "changed", keys
    return ("finished" if (run_dir / METRICS).exists() else "unfinished"), []


def inside(root: str | os.PathLike, path: str | os.PathLike) -> Path:
    """`path` resolved, refusing anything that is not below `root` (a name with '..', an
    absolute path, a link out)."""
    root_r, path_r = Path(root).resolve(), Path(path).resolve()
    if path_r != root_r and root_r not in path_r.parents:
        raise StoreError(f"{path}: outside the output folder {root_r}")
    return path_r


def dataset_root(params: Mapping) -> Path:
    """`<output_dir>/<dataset>`: where every stage's run folders of one dataset live (a dataset
    given as a folder path is named by its last component)."""
    name = safe_name(Path(str(params["dataset"])).name, "dataset")
    return Path(params["output_dir"]) / name


def run_folder(params: Mapping, group: str, run_id: str) -> Path:
    """`<output_dir>/<dataset>/<group>/<run_id>`, each name checked, inside the output folder."""
    for what, v in (("group", group), ("run id", run_id)):
        safe_name(v, what)
    return inside(params["output_dir"], dataset_root(params) / group / run_id)


def claim(run_dir: str | os.PathLike, params: Mapping, rerun_changed: bool = False,
          reads: tuple[str, ...] | None = None) -> str:
    """Make `run_dir` the folder of a run with `params` and return its state before the claim.
    A finished run with the same parameters (those in `reads`, see run_state) is left alone
    ("finished": reuse it); one with other parameters raises StoreError naming the keys, unless
    `rerun_changed` (then it is emptied)."""
    import shutil
    run_dir = Path(run_dir)
    state, keys = run_state(run_dir, params, reads)
    if state == "changed":
        if not rerun_changed:
            raise StoreError(f"{run_dir}: made with other parameters "
                             f"({describe_run_changes(run_dir, params, reads)})")
        shutil.rmtree(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    if state != "finished":
        write_params(params, run_dir / PARAMS)
        write_fingerprint(run_dir, params)
    return state


def new_run_dir(parent: str | os.PathLike, name: str, overwrite: bool = False) -> Path:
    """A fresh folder for one run made by hand. An existing finished run (it has metrics.json) is
    never silently overwritten: without `overwrite` a numbered sibling (`name-2`, …) is used."""
    safe_name(name, "run folder")
    parent = Path(parent)
    run = parent / name
    if overwrite or not (run / METRICS).exists():
        run.mkdir(parents=True, exist_ok=True)
        return run
    k = 2
    while (parent / f"{name}-{k}" / METRICS).exists():
        k += 1
    run = parent / f"{name}-{k}"
    run.mkdir(parents=True, exist_ok=True)
    return run


def environment_info() -> dict:
    """What a reader needs to reproduce a run: versions, machine, time."""
    info: dict[str, Any] = {
        "time_utc": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "cpu_count": os.cpu_count(),
        "cpu_model": _cpu_model(),
    }
    from importlib.metadata import PackageNotFoundError, version
    # read from the installed metadata: importing deepspeed only to ask would print its notices
    for mod, dist in (("torch", "torch"), ("transformers", "transformers"), ("numpy", "numpy"),
                      ("pandas", "pandas"), ("sklearn", "scikit-learn"), ("peft", "peft"),
                      ("deepspeed", "deepspeed")):
        try:
            info[mod] = version(dist)
        except PackageNotFoundError:
            continue
    try:
        import torch
        info["cuda"] = torch.cuda.is_available()
        if info["cuda"]:
            info["gpu"] = torch.cuda.get_device_name(0)
        info["torch_threads"] = torch.get_num_threads()
        # vectorised kernels of another width may round differently: comparing two runs' last
        # bits needs to know which ones ran
        info["cpu_capability"] = torch.backends.cpu.get_cpu_capability()
    except Exception:
        pass
    return info


def _cpu_model() -> str | None:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or None


def write_run(run_dir: str | os.PathLike, params: Mapping | None = None,
              metrics: Mapping | None = None, extra: Mapping[str, Any] | None = None,
              predictions: Mapping[str, Any] | None = None) -> Path:
    """Write params.yaml (+ fingerprint), environment.json, `extra` (JSON), `predictions` ({file
    name: per-user scores DataFrame}, parquet: the report's CIs and paired tests read them) and,
    last, so that its presence means 'finished', metrics.json. Every file is written atomically."""
    import io
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    if params is not None:
        write_params(params, run_dir / PARAMS)
        if not (run_dir / FINGERPRINT).exists():  # a batch's claim wrote the identity it asked for
            write_fingerprint(run_dir, params)
    write_json(run_dir / ENVIRONMENT, environment_info())
    for fname, obj in (extra or {}).items():
        write_json(run_dir / fname, obj)
    for fname, df in (predictions or {}).items():
        buf = io.BytesIO()
        df.to_parquet(buf, index=False)
        atomic_write_bytes(run_dir / fname, buf.getvalue())
    if metrics is not None:
        write_json(run_dir / METRICS, metrics)
    return run_dir


class OutputLock:
    """The output folder's lock (filelock): a second batch into the same folder refuses at once,
    naming the lock file, instead of running every run a second time."""

    def __init__(self, output_dir: str | os.PathLike):
        from filelock import FileLock
        self.path = Path(output_dir) / LOCK
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = FileLock(str(self.path))

    def __enter__(self) -> "OutputLock":
        from filelock import Timeout
        try:
            self._lock.acquire(timeout=0)
        except Timeout:
            raise StoreError(f"{self.path}: another bdlm batch is writing into {self.path.parent} "
                             f"(wait for it, or use another --output-dir)") from None
        return self

    def __exit__(self, *exc) -> None:
        self._lock.release()


def finished_utc(run_dir: Path) -> str:
    """When a run finished: run.json's `finished_utc`, else its metrics.json's modification time."""
    info = read_json(run_dir / RUN) if (run_dir / RUN).exists() else {}
    if info.get("finished_utc"):
        return str(info["finished_utc"])
    t = (run_dir / METRICS).stat().st_mtime
    return datetime.fromtimestamp(t, timezone.utc).isoformat(timespec="seconds")
