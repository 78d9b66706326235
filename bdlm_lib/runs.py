"""Atomic file I/O: every artefact is written to a temp file and renamed into place.

Every writer here goes through a temp file and `os.replace`, so an interrupted or failed run
never leaves a half-written artefact where a finished one is expected.
"""
from __future__ import annotations

import json
import os
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator


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


class ArtefactError(ValueError):
    """A stored artefact that cannot be read: the message names the file."""


def read_json(path: str | os.PathLike) -> Any:
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except json.JSONDecodeError as e:
        raise ArtefactError(f"{path}: corrupt JSON ({e.msg} at line {e.lineno}); "
                            f"delete it, or re-run the run that wrote it") from None


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


def read_safetensors(path: str | os.PathLike) -> dict:
    """A safetensors file's tensors; a truncated or corrupt file is an ArtefactError naming it."""
    from safetensors.torch import load_file
    try:
        return load_file(str(path))
    except FileNotFoundError:
        raise
    except Exception as e:  # safetensors raises its own error type for a bad header or size
        raise ArtefactError(f"{path}: corrupt safetensors file ({str(e).strip()[:120] or type(e).__name__})") from None
