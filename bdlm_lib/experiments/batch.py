"""Batches: one YAML expands into runs, each run executes notebook(s) with papermill.

Batch YAML (params/batches/*.yaml):

    name: demo                  # folder name: <output_dir>/<dataset>/<name>/<run_id>/
    preset: demo                # smoke | demo | cpu | paper
    extends: null               # another batch file (relative to this one): its spec under these keys
    output_dir: null            # default for --output-dir (null: base.yaml's output_dir)
    data_dir: null              # null: $BDLM_DATA_DIR
    notebooks_dir: null         # null: the repo's notebooks/; relative: to the YAML that names it
    kernel: null                # Jupyter kernel (null: the notebook's own kernelspec)
    execution_timeout: null     # seconds per cell (null: none)
    overrides: {sft.max_steps: 30}     # applied to every run (dotted or nested keys)
    methods:                    # extra / redefined method bundles (built-ins: bdlm_lib/methods.py)
      bdlm_ema: {joint.joint: true, joint.ml_update: ema}       # a new bundle: exactly these keys
      instructrec: {extends: instructrec, eval.topk_users: 400} # extends: a built-in (or earlier) bundle + these keys
    flags:                      # named ablation-flag bundles crossed with every method
      mim: {sft.aux_tasks: mim}
    grid:                       # a mapping or a list of mappings (blocks, unioned in order)
      datasets: [ml1m]
      methods: [lightgcn, wo_jl, bdlm]
      flags: [none]             # "none" = no extra overrides (the default)
      lambda_ml: [0.1]          # only for joint methods (bundle sets joint.joint: true)
      seeds: [42]
    notebooks:                  # steps, executed in this order inside each run
      - {notebook: 01_data_prep.ipynb, per: dataset}        # once per (dataset, seed): run id data_prep-s42
      - {notebook: 02_domain_pretraining.ipynb, methods: [lightgcn]}   # per run (default); methods: all = every run
      - {notebook: 09_report.ipynb, per: batch, id: report} # once, after every other run

Run ids are stable: `<method>[+<flag>]-lam<λ>-s<seed>` for joint methods, `<method>[+<flag>]-s<seed>`
otherwise (λ does not change them, so a λ grid does not multiply baselines). Runs execute in order:
per-dataset steps, then the grid (blocks, methods in the listed order — later methods may read
earlier runs' artefacts, e.g. the LightGCN run before BDLM), then per-batch steps.

Every notebook named must have a cell tagged `parameters` declaring INJECTED (below).
"""
from __future__ import annotations

import fnmatch
import os
import sys
import time
import traceback
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Iterator, Mapping

import pandas as pd
import yaml

from .. import methods as methods_table
from .. import store
from ..params import ParamsError, load_params
from ..runs import read_json, write_json

REPO = Path(__file__).resolve().parent.parent.parent

# What the runner injects into every notebook: its `parameters` cell must declare each of these.
INJECTED = ("dataset", "preset", "data_dir", "output_dir", "seed", "run_dir", "method", "overrides")

# The built-in method bundles (bdlm_lib/methods.py); a batch file's `methods:` adds or redefines.
METHODS: dict[str, dict] = {n: dict(m.bundle) for n, m in methods_table.METHODS.items()}


class BatchError(ValueError):
    """A bad batch file or run: the message names the file, the run and the key."""


@dataclass
class Step:
    notebook: Path
    per: str = "run"                 # run | dataset | batch
    methods: list[str] | None = None # per-run steps: None = all methods
    id: str = ""


@dataclass
class Run:
    dataset: str
    run_id: str
    method: str
    seed: int
    scope: str                       # run | dataset | batch
    overrides: dict                  # flat dotted keys: batch overrides + method + flag + λ
    notebooks: list[Path]
    run_dir: Path
    flag: str = "none"
    lambda_ml: float | None = None
    params: dict = field(default_factory=dict)

    @property
    def finished(self) -> bool:
        return (self.run_dir / "metrics.json").exists()

    @property
    def reads(self) -> tuple[str, ...] | None:
        """The parameters that make this run what it is: a per-dataset run prepares the data and
        reads only what shapes it (a model's setting changed in the batch file leaves it as it
        was); any other run, its whole identity."""
        return store.DATA_KEYS if self.scope == "dataset" else None


@dataclass
class Batch:
    name: str
    path: Path
    preset: str
    runs: list[Run]
    output_dir: Path


def _flatten(d: Mapping, prefix: str = "") -> dict:
    out = {}
    for k, v in (d or {}).items():
        key = f"{prefix}{k}"
        if isinstance(v, Mapping):
            out.update(_flatten(v, key + "."))
        else:
            out[key] = v
    return out


def _list(v: Any, default: list) -> list:
    if v is None:
        return list(default)
    return list(v) if isinstance(v, (list, tuple)) else [v]


def load_batch(path: str | Path, _chain: tuple = ()) -> dict:
    """Read a batch file; with `extends: other.yaml` (relative to this file) it is that file's spec
    with these keys on top: `overrides`, `methods` and `flags` merge key by key (this file wins),
    every other key (grid, notebooks, name, ...) is replaced whole."""
    path = Path(path)
    try:
        spec = yaml.safe_load(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise BatchError(f"{path}: batch file not found") from None
    except yaml.YAMLError as e:
        raise BatchError(f"{path}: not valid YAML ({str(e).splitlines()[0]})") from None
    if not isinstance(spec, dict):
        raise BatchError(f"{path}: expected a mapping at the top level")
    known = {"name", "description", "preset", "output_dir", "data_dir", "notebooks_dir", "kernel",
             "execution_timeout", "overrides", "methods", "flags", "grid", "notebooks", "extends"}
    unknown = sorted(set(spec) - known)
    if unknown:
        raise BatchError(f"{path}: unknown batch key(s) {unknown} (known: {sorted(known)})")
    # a relative notebooks_dir belongs to the file that names it, not to a file extending this one
    nbd = spec.get("notebooks_dir")
    if nbd is not None and not Path(str(nbd)).is_absolute():
        spec["notebooks_dir"] = str((path.parent / str(nbd)).resolve())
    ext = spec.pop("extends", None)
    if ext is not None:
        parent_path = Path(str(ext))
        parent_path = (parent_path if parent_path.is_absolute() else path.parent / parent_path).resolve()
        chain = _chain + (path.resolve(),)
        if parent_path in chain:
            raise BatchError(f"{path}: extends: {ext} extends this file again (a cycle)")
        if not parent_path.exists():
            raise BatchError(f"{path}: extends: {ext}: no such batch file ({parent_path})")
        merged = load_batch(parent_path, chain)
        for key, value in spec.items():
            if key in ("overrides", "methods", "flags") and value is not None:
                if not isinstance(value, Mapping):
                    raise BatchError(f"{path}: {key}: expected a mapping, got {value!r}")
                # overrides flattened first, so a dotted key here replaces a nested one there
                flat = key == "overrides"
                parent = merged.get(key) or {}
                merged[key] = ({**_flatten(parent), **_flatten(value)} if flat else {**parent, **value})
            else:
                merged[key] = value
        spec = merged
    for key in ("name", "grid", "notebooks"):
        if not spec.get(key):
            raise BatchError(f"{path}: missing '{key}'")
    for key in ("overrides", "methods", "flags"):
        if spec.get(key) is not None and not isinstance(spec[key], Mapping):
            raise BatchError(f"{path}: {key}: expected a mapping, got {spec[key]!r}")
    grid = spec["grid"]
    if not (isinstance(grid, Mapping) or (isinstance(grid, list) and all(isinstance(b, Mapping) for b in grid))):
        raise BatchError(f"{path}: grid: expected a mapping (datasets, methods, seeds, ...) or a list "
                         f"of them, got {grid!r}")
    if not isinstance(spec["notebooks"], list):
        raise BatchError(f"{path}: notebooks: expected a list of steps, got {spec['notebooks']!r}")
    _name(path, "name", spec["name"])
    return spec


def _name(path: Path, key: str, value: Any) -> str:
    """A batch-file value that becomes a folder name: refused with the key if it is not a plain name."""
    try:
        return store.safe_name(value, key)
    except store.StoreError as e:
        raise BatchError(f"{path}: {e}") from None


def _steps(spec: dict, path: Path, nb_dir: Path) -> list[Step]:
    steps = []
    for i, s in enumerate(spec["notebooks"]):
        if isinstance(s, str):
            s = {"notebook": s}
        if not isinstance(s, dict) or "notebook" not in s:
            raise BatchError(f"{path}: notebooks[{i}] needs a 'notebook' path")
        bad = sorted(set(s) - {"notebook", "per", "methods", "id"})
        if bad:
            raise BatchError(f"{path}: notebooks[{i}]: unknown key(s) {bad}")
        nb = Path(s["notebook"])
        nb = nb if nb.is_absolute() else nb_dir / nb
        per = s.get("per", "run")
        if per not in ("run", "dataset", "batch"):
            raise BatchError(f"{path}: notebooks[{i}]: per must be run | dataset | batch, got {per!r}")
        methods = s.get("methods", "all")
        methods = None if methods in (None, "all") else _list(methods, [])
        stem = nb.stem.split("_", 1)[1] if nb.stem[:2].isdigit() and "_" in nb.stem else nb.stem
        steps.append(Step(nb, per, methods, _name(path, f"notebooks[{i}].id", s.get("id") or stem)))
    return steps


def _check_notebook(nb: Path, path: Path, cache: dict) -> None:
    """Fail at validation time (before anything runs) on a missing notebook or parameters cell."""
    if nb in cache:
        return
    if not nb.exists():
        raise BatchError(f"{path}: notebook {nb} does not exist")
    import papermill as pm
    try:
        declared = set(pm.inspect_notebook(str(nb)))
    except Exception as e:  # unreadable notebook JSON
        raise BatchError(f"{path}: notebook {nb}: cannot be read ({e})") from None
    missing = [p for p in INJECTED if p not in declared]
    if missing:
        raise BatchError(f"{path}: notebook {nb}: its 'parameters' cell must declare {missing}")
    cache[nb] = True


def expand_batch(batch_yaml: str | Path, output_dir: str | Path | None = None,
                 notebooks_dir: str | Path | None = None) -> Batch:
    """Expand and validate every run (params resolved, notebooks checked) without executing any.
    `notebooks_dir` replaces the YAML's (tests expand the real batch files over stub notebooks)."""
    path = Path(batch_yaml).resolve()
    spec = load_batch(path)
    name, preset = str(spec["name"]), str(spec.get("preset") or "demo")
    # the YAML's own relative notebooks_dir was made absolute by load_batch; an argument is from the cwd
    nb_dir = Path(notebooks_dir or spec.get("notebooks_dir") or REPO / "notebooks").resolve()
    out = Path(output_dir or spec.get("output_dir") or load_params(preset=preset)["output_dir"]).resolve()
    methods = dict(METHODS)
    for m, bundle in (spec.get("methods") or {}).items():
        _name(path, "methods key", m)
        if bundle is not None and not isinstance(bundle, Mapping):
            raise BatchError(f"{path}: methods.{m}: expected a mapping of param overrides, got {bundle!r}")
        bundle = dict(bundle or {})
        ext = bundle.pop("extends", None)
        if ext is not None and str(ext) not in methods:
            raise BatchError(f"{path}: methods.{m}.extends: unknown method '{ext}' "
                             f"(known: {', '.join(sorted(methods))})")
        # without extends: the entry is the whole bundle (redefining a built-in replaces it)
        methods[str(m)] = {**(methods[str(ext)] if ext is not None else {}), **_flatten(bundle)}
    for k, v in (spec.get("flags") or {}).items():
        _name(path, "flags key", k)
        if v is not None and not isinstance(v, Mapping):
            raise BatchError(f"{path}: flags.{k}: expected a mapping of param overrides, got {v!r}")
    flags = {"none": {}, **{str(k): _flatten(v or {}) for k, v in (spec.get("flags") or {}).items()}}
    base_over = _flatten(spec.get("overrides") or {})
    steps = _steps(spec, path, nb_dir)
    blocks = spec["grid"] if isinstance(spec["grid"], list) else [spec["grid"]]

    grid_runs: list[tuple] = []
    all_ds, all_seeds = [], []
    for b, block in enumerate(blocks):
        bad = sorted(set(block) - {"datasets", "methods", "flags", "lambda_ml", "seeds"})
        if bad:
            raise BatchError(f"{path}: grid[{b}]: unknown key(s) {bad}")
        dsets = _list(block.get("datasets"), [])
        if not dsets:
            raise BatchError(f"{path}: grid[{b}]: 'datasets' is empty")
        seeds = _list(block.get("seeds"), [42])
        bad_seeds = [v for v in seeds if isinstance(v, bool) or not isinstance(v, int) or v < 0]
        if bad_seeds:
            raise BatchError(f"{path}: grid[{b}].seeds: {bad_seeds[0]!r} is not an integer >= 0")
        lams = _list(block.get("lambda_ml"), [None])
        bad_lams = [v for v in lams if v is not None and (isinstance(v, bool) or not isinstance(v, (int, float)) or v < 0)]
        if bad_lams:
            raise BatchError(f"{path}: grid[{b}].lambda_ml: {bad_lams[0]!r} is not a number >= 0")
        for d in dsets:
            _name(path, f"grid[{b}].datasets (folder name)", Path(str(d)).name)
            all_ds += [str(d)] if str(d) not in all_ds else []
            for seed in seeds:
                all_seeds += [seed] if seed not in all_seeds else []
                for m in _list(block.get("methods"), []):
                    if m not in methods:
                        raise BatchError(f"{path}: grid[{b}]: unknown method '{m}' "
                                         f"(known: {', '.join(sorted(methods))})")
                    for f in _list(block.get("flags"), ["none"]):
                        if f not in flags:
                            raise BatchError(f"{path}: grid[{b}]: unknown flag '{f}' (define it under flags:)")
                        joint = methods[m].get("joint.joint") is True
                        for lam in (lams if joint else [None]):
                            grid_runs.append((str(d), str(m), str(f), seed, lam))

    runs: list[Run] = []
    seen: set = set()

    def add(dataset, run_id, method, seed, scope, over, notebooks, flag="none", lam=None):
        if (dataset, run_id) in seen:
            return
        seen.add((dataset, run_id))
        _name(path, "run id", run_id)
        run_dir = store.inside(out, out / Path(dataset).name / name / run_id)
        runs.append(Run(dataset, run_id, method, seed, scope, over, notebooks, run_dir, flag, lam))

    for d in all_ds:
        for seed in all_seeds:
            for st in (s for s in steps if s.per == "dataset"):
                add(d, f"{st.id}-s{seed}", st.id, seed, "dataset", dict(base_over), [st.notebook])
    for d, m, f, seed, lam in grid_runs:
        over = {**base_over, **methods[m], **flags[f]}
        if lam is not None:
            over["joint.lambda_ml"] = float(lam)
        nbs = [s.notebook for s in steps if s.per == "run" and (s.methods is None or m in s.methods)]
        if not nbs:
            raise BatchError(f"{path}: method '{m}' has no notebook step (give a step with methods: [{m}])")
        if methods[m].get("joint.joint") is True:
            lam_v = over.get("joint.lambda_ml")
            if lam_v is None:  # the preset's λ, resolved below; stable because params are
                try:
                    lam_v = load_params(d, preset, base_over).joint.lambda_ml
                except ParamsError as e:
                    raise BatchError(f"{path}: overrides: {e}") from None
            add(d, methods_table.run_id(m, seed, float(lam_v), f), m, seed, "run", over, nbs, f, float(lam_v))
        else:
            add(d, methods_table.run_id(m, seed, None, f), m, seed, "run", over, nbs, f)
    for st in (s for s in steps if s.per == "batch"):
        add(all_ds[0], st.id, st.id, all_seeds[0], "batch", dict(base_over), [st.notebook])

    # validate everything before anything runs: a typo fails here, naming the key and the run
    checked: dict = {}
    for r in runs:
        for nb in r.notebooks:
            _check_notebook(nb, path, checked)
        try:
            r.params = load_params(r.dataset, preset, {**r.overrides, "seed": r.seed,
                                                        "output_dir": str(out),
                                                        "data_dir": spec.get("data_dir")}).to_dict()
        except ParamsError as e:
            raise BatchError(f"{path}: run {r.dataset}/{r.run_id}: {e}") from None
    return Batch(name, path, preset, runs, out)


def headline(metrics: Mapping | None) -> dict:
    """HR@1, HR@2, F1 of a metrics.json (for a two-sided joint run: the domain side, 'drs')."""
    m = metrics or {}
    if "topk" not in m:
        m = m.get("drs") or m.get("llm") or {}
    tk, bn = m.get("topk") or {}, m.get("binary") or {}
    return {"HR@1": tk.get("HR@1"), "HR@2": tk.get("HR@2"), "F1": bn.get("f1")}


def _last_line(e: BaseException) -> str:
    ename, evalue = getattr(e, "ename", None), getattr(e, "evalue", None)
    if ename:  # papermill's PapermillExecutionError: the notebook's own exception
        return f"{ename}: {evalue}".strip().splitlines()[-1] if evalue else ename
    return traceback.format_exception_only(type(e), e)[-1].strip()


KERNEL_LOG = "kernel.log"


@contextmanager
def _kernel_log(path: Path) -> Iterator[None]:
    """Send the standard error of the notebooks' kernels (their transport warnings, the notice
    that closes every clean shutdown) to the run's kernel.log instead of the console. The kernel
    inherits file descriptor 2, so it is pointed at the log for the run's duration; the batch's
    progress bar writes to a saved copy of the console's (`_console`)."""
    sys.stderr.flush()
    saved = os.dup(2)
    with open(path, "ab") as log:
        os.dup2(log.fileno(), 2)
        try:
            yield
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)


def _console() -> Any:
    """A text stream on a copy of the console's standard error, unaffected by `_kernel_log`."""
    return os.fdopen(os.dup(2), "w", buffering=1)


def _execute(r: Run, batch: Batch, kernel: str | None, timeout: int | None) -> tuple[str, str | None]:
    import papermill as pm
    (r.run_dir / store.ERROR).unlink(missing_ok=True)
    write_json(r.run_dir / store.ENVIRONMENT, store.environment_info())
    params = {"dataset": r.dataset, "preset": batch.preset, "data_dir": r.params.get("data_dir"),
              "output_dir": str(batch.output_dir), "seed": r.seed, "run_dir": str(r.run_dir),
              "method": r.method, "overrides": dict(r.overrides)}
    try:
        with _kernel_log(r.run_dir / KERNEL_LOG):
            for nb in r.notebooks:
                pm.execute_notebook(str(nb), str(r.run_dir / nb.name), parameters=params,
                                    kernel_name=kernel, cwd=str(nb.parent), progress_bar=False,
                                    execution_timeout=timeout)
        if not r.finished:
            raise RuntimeError(f"notebook(s) finished without writing {r.run_dir / 'metrics.json'}")
        return "ok", None
    except Exception as e:  # record and go on with the other runs
        err = _last_line(e)
        # an earlier notebook of this run may have written metrics.json: a failed run must not
        # look finished to the resume check
        if r.finished:
            (r.run_dir / store.METRICS).replace(r.run_dir / store.PARTIAL_METRICS)
        (r.run_dir / store.ERROR).write_text(err + "\n", encoding="utf-8")
        return "failed", err


@contextmanager
def _terminate_as_interrupt() -> Iterator[None]:
    """SIGTERM (a job scheduler's or `kill`'s stop) ends the batch as Ctrl-C does: the running run
    is marked interrupted with its time, and the same command resumes it."""
    import signal
    import threading

    def stop(signum, frame):
        raise KeyboardInterrupt("terminated")
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    before = signal.signal(signal.SIGTERM, stop)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, before)


def _earlier_attempts(run_dir: Path, state: str) -> list:
    """The wall times of the earlier attempts of a run that is resumed with the same parameters
    (None for one killed before it could record its time); [] for a new or changed run."""
    f = run_dir / store.RUN
    if state != "unfinished" or not f.exists():
        return []
    prev = read_json(f)
    if prev.get("attempts") is not None:
        return list(prev["attempts"])
    return [prev.get("seconds")] if prev.get("status") in ("interrupted", "failed", "running") else []


def _timing(earlier: list, secs: float) -> dict:
    """run.json's `seconds` (all attempts of the run together, as far as recorded) and `attempts`."""
    attempts = [*earlier, round(secs, 1)]
    return {"seconds": round(sum(a for a in attempts if a is not None), 1), "attempts": attempts}


def _row(r: Run, status: str, seconds: float | None, error: str | None = None) -> dict:
    metrics = read_json(r.run_dir / "metrics.json") if r.finished else None
    return {"dataset": r.dataset, "run_id": r.run_id, "method": r.method, "flag": r.flag,
            "lambda_ml": r.lambda_ml, "seed": r.seed, "status": status, **headline(metrics),
            "seconds": None if seconds is None else round(seconds, 1), "error": error,
            "run_dir": str(r.run_dir)}


def _select(r: Run, only: Iterable[str] | None) -> bool:
    if not only:
        return True
    return any(o == r.method or o in r.run_id or fnmatch.fnmatch(r.run_id, o) for o in only)


def _write_summaries(batch: Batch, rows: list[dict]) -> None:
    by_ds: dict[str, list] = {}
    for row in rows:
        by_ds.setdefault(Path(row["dataset"]).name, []).append(row)
    for ds, rs in by_ds.items():
        write_json(batch.output_dir / ds / batch.name / "summary.json",
                   {"batch": batch.name, "batch_yaml": str(batch.path), "preset": batch.preset, "runs": rs})


class BatchInterrupted(KeyboardInterrupt):
    """Ctrl-C during a batch: the run that was running is marked interrupted; the message says which."""


def run_batch(batch_yaml: str | Path, output_dir: str | Path | None = None,
              only: Iterable[str] | None = None, rerun_changed: bool = False) -> dict:
    """Validate every run, then execute the unfinished ones (resume); return the summary dict
    {"batch", "output_dir", "runs": [{run_id, status (ok|failed|done|pending), HR@1, HR@2, F1,
    seconds, error, ...}]}. `only`: run ids / substrings / globs / method names to execute.

    A run is identified by its parameters: if a stored run was made with other parameters than
    the batch file gives it now, nothing runs and the error lists those runs and keys;
    `rerun_changed` re-runs them instead. The output folder is locked while the batch runs."""
    from tqdm.auto import tqdm
    batch = expand_batch(batch_yaml, output_dir)
    spec = load_batch(batch.path)
    kernel, timeout = spec.get("kernel"), spec.get("execution_timeout")
    only = list(only or [])
    for o in only:
        if not any(_select(r, [o]) for r in batch.runs):
            raise BatchError(f"--only {o}: matches no run of {batch.path.name} "
                             f"(run ids: {', '.join(r.run_id for r in batch.runs)})")
    with store.OutputLock(batch.output_dir), _terminate_as_interrupt():
        by_key = {r.dataset + "/" + r.run_id: r for r in batch.runs}
        states = {k: store.run_state(r.run_dir, r.params, r.reads) for k, r in by_key.items()}
        changed = [k for k, (st, _) in states.items() if st == "changed"]
        if changed and not rerun_changed:
            first = by_key[changed[0]]
            raise BatchError(f"{batch.path.name}: {len(changed)} stored run(s) were made with other parameters: "
                             f"{', '.join(changed)}; {changed[0]}: "
                             f"{store.describe_run_changes(first.run_dir, first.params, first.reads)}. "
                             f"Re-run them with --rerun-changed, or use another --output-dir")
        rows: dict[str, dict] = {}
        for key, r in by_key.items():  # the state before this invocation
            done = states[key][0] == "finished"
            prev = read_json(r.run_dir / store.RUN) if done and (r.run_dir / store.RUN).exists() else {}
            rows[key] = _row(r, "done" if done else "pending", prev.get("seconds") if done else None)
        todo = [r for k, r in by_key.items() if states[k][0] != "finished" and _select(r, only)]
        n_changed = sum(1 for r in todo if states[r.dataset + "/" + r.run_id][0] == "changed")
        print(f"batch {batch.name}: {len(batch.runs)} runs, {len(batch.runs) - len(todo)} finished or "
              f"not selected, {len(todo)} to run" + (f" ({n_changed} re-run: parameters changed)" if n_changed else "")
              + f" -> {batch.output_dir}")
        with _console() as console:
            for r in tqdm(todo, desc=f"batch {batch.name}", unit="run", file=console):
                t0 = time.perf_counter()
                earlier = _earlier_attempts(r.run_dir, states[r.dataset + "/" + r.run_id][0])
                store.claim(r.run_dir, r.params, rerun_changed=rerun_changed, reads=r.reads)
                info = {"batch": batch.name, "dataset": r.dataset, "run_id": r.run_id, "method": r.method,
                        "flag": r.flag, "lambda_ml": r.lambda_ml, "seed": r.seed, "scope": r.scope,
                        "preset": batch.preset, "overrides": r.overrides,
                        "notebooks": [nb.name for nb in r.notebooks]}
                write_json(r.run_dir / store.RUN, {**info, "status": "running"})
                try:
                    status, err = _execute(r, batch, kernel, timeout)
                except KeyboardInterrupt:
                    timing = _timing(earlier, time.perf_counter() - t0)
                    write_json(r.run_dir / store.RUN, {**info, "status": "interrupted", **timing})
                    rows[r.dataset + "/" + r.run_id] = _row(r, "interrupted", timing["seconds"], "interrupted")
                    _write_summaries(batch, list(rows.values()))
                    raise BatchInterrupted(f"interrupted during {r.dataset}/{r.run_id} (marked interrupted); "
                                           f"the same command resumes the batch") from None
                secs = time.perf_counter() - t0
                done = {"finished_utc": store.finished_utc(r.run_dir)} if status == "ok" else {}
                timing = _timing(earlier, secs)
                write_json(r.run_dir / store.RUN, {**info, "status": status, **timing, "error": err, **done})
                rows[r.dataset + "/" + r.run_id] = _row(r, status, timing["seconds"], err)
                _write_summaries(batch, list(rows.values()))
        _write_summaries(batch, list(rows.values()))
    table = pd.DataFrame(list(rows.values()))[["dataset", "run_id", "status", "HR@1", "HR@2", "F1", "seconds"]]
    fmt = {c: (lambda x: "" if pd.isna(x) else f"{x:.4f}") for c in ("HR@1", "HR@2", "F1")}
    print(table.to_string(index=False, formatters=fmt))
    for row in rows.values():
        if row["status"] == "failed":
            print(f"FAILED {row['dataset']}/{row['run_id']}: {row['error']}  ({row['run_dir']}/error.txt)")
    return {"batch": batch.name, "output_dir": str(batch.output_dir), "runs": list(rows.values())}
