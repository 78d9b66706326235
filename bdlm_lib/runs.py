"""Run artefacts: atomic writes, one folder per run, params + metrics + environment beside each other.

Every writer here goes through a temp file and `os.replace`, so an interrupted or failed run
never leaves a half-written artefact where a finished one is expected.
"""
from __future__ import annotations

import json
import os
import platform
import shutil
import sys
import tempfile
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterator, Mapping


def _umask() -> int:
    """The process umask, read without changing it where possible (os.umask(0) is racy)."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        # mkstemp creates 0600 files; give the artefact the permissions a plain open() would
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def _json_default(o: Any) -> Any:
    import numpy as np
    if isinstance(o, (np.integer,)):
        return int(o)
    if isinstance(o, (np.floating,)):
        return float(o)
    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, Path):
        return str(o)
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")


def write_json(path: str | os.PathLike, obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=False, default=_json_default) + "\n")


def read_json(path: str | os.PathLike) -> Any:
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def _missing_ancestors(path: Path) -> list[Path]:
    """The folders above `path` that do not exist yet, deepest first."""
    out, p = [], path.parent
    while not p.exists() and p != p.parent:
        out.append(p)
        p = p.parent
    return out


@contextmanager
def atomic_dir(path: str | os.PathLike) -> Iterator[Path]:
    """Build a folder under a temp name; it appears at `path` only if the block succeeds.
    On failure nothing is left: neither the temp folder nor parent folders this call created."""
    path = Path(path)
    created = _missing_ancestors(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp"))
    try:
        os.chmod(tmp, 0o777 & ~_umask())  # mkdtemp makes it 0700: others could not read the result
        yield tmp
        if path.exists():
            shutil.rmtree(path)
        os.replace(tmp, path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        for d in created:  # deepest first; stops at the first one someone else filled meanwhile
            try:
                d.rmdir()
            except OSError:
                break
        raise


def environment_info() -> dict:
    """What a reader needs to reproduce a run: versions, machine, time."""
    info: dict[str, Any] = {
        "time_utc": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "cpu_count": os.cpu_count(),
        "cpu_model": _cpu_model(),
    }
    for mod in ("torch", "transformers", "numpy", "pandas", "sklearn", "peft", "deepspeed"):
        m = sys.modules.get(mod)
        if m is None:
            try:
                m = __import__(mod)
            except Exception:
                continue
        info[mod] = getattr(m, "__version__", "?")
    try:
        import torch
        info["cuda"] = torch.cuda.is_available()
        if info["cuda"]:
            info["gpu"] = torch.cuda.get_device_name(0)
        info["torch_threads"] = torch.get_num_threads()
        # the kernels torch picked (AVX2 / AVX512 ...): vectorised kernels of another width may
        # round differently, so comparing two runs' last bits needs it
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


def dataset_root(params: Mapping) -> Path:
    """`<output_dir>/<dataset>`: where every stage's run folders of one dataset live (a dataset
    given as a folder path is named by its last component)."""
    return Path(params["output_dir"]) / Path(str(params["dataset"])).name


def new_run_dir(parent: str | os.PathLike, name: str, overwrite: bool = False) -> Path:
    """A fresh folder for one run. An existing finished run (it has metrics.json) is never
    silently overwritten: without `overwrite` a numbered sibling (`name-2`, …) is used."""
    parent = Path(parent)
    run = parent / name
    if overwrite or not (run / "metrics.json").exists():
        run.mkdir(parents=True, exist_ok=True)
        return run
    k = 2
    while (parent / f"{name}-{k}" / "metrics.json").exists():
        k += 1
    run = parent / f"{name}-{k}"
    run.mkdir(parents=True, exist_ok=True)
    return run


def write_run(run_dir: str | os.PathLike, params: Mapping | None = None,
              metrics: Mapping | None = None, extra: Mapping[str, Any] | None = None,
              predictions: Mapping[str, Any] | None = None) -> Path:
    """Write params.yaml, environment.json, `extra` (JSON), `predictions` ({file name: per-user
    scores DataFrame}, parquet: the report's bootstrap CIs and paired tests read them) and, last,
    so that its presence means 'finished', metrics.json. Every file is written atomically."""
    import io

    from .params import save_params
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    if params is not None:
        save_params(params, run_dir / "params.yaml")
    write_json(run_dir / "environment.json", environment_info())
    for fname, obj in (extra or {}).items():
        write_json(run_dir / fname, obj)
    for fname, df in (predictions or {}).items():
        buf = io.BytesIO()
        df.to_parquet(buf, index=False)
        atomic_write_bytes(run_dir / fname, buf.getvalue())
    if metrics is not None:
        write_json(run_dir / "metrics.json", metrics)
    return run_dir
