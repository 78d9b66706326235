"""Fetch the official dataset files when they are missing locally (checksummed, atomic).

Every file goes to a temp name beside its destination and is checksummed before `os.replace`
puts it in place; a dataset's missing files are fetched as a set, so a failure (unreachable URL,
checksum mismatch, interrupted transfer) leaves neither partial files nor a folder it created.
"""
from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
import urllib.error
import urllib.request
from pathlib import Path

from tqdm.auto import tqdm

from .loaders import DataError


def _hasher(checksum: str | None, url: str):
    """(hash object, expected hex digest or '') from "sha256:…" / "md5:…" / a bare sha256."""
    if not checksum:
        return hashlib.sha256(), ""
    algo, _, want = checksum.rpartition(":")
    try:
        return hashlib.new(algo or "sha256"), want.lower()
    except ValueError:
        raise DataError(f"{url}: unknown checksum algorithm {algo!r} (use sha256: or md5:)") from None


def fetch(url: str, dest: str | os.PathLike, checksum: str | None = None, timeout: float = 60) -> Path:
    """Download `url` to `dest` via a temp file; verify `checksum` ("sha256:…" / "md5:…" / bare
    sha256) before the file appears. A failed or mismatching download leaves nothing behind."""
    dest = Path(dest)
    h, want = _hasher(checksum, url)
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=dest.parent, prefix=f".{dest.name}.", suffix=".part")
    try:
        with os.fdopen(fd, "wb") as out:
            try:
                resp = urllib.request.urlopen(url, timeout=timeout)
            except (urllib.error.URLError, OSError, ValueError) as e:
                reason = getattr(e, "reason", None) or e
                raise DataError(f"{url}: download failed ({str(reason).splitlines()[0]})") from None
            try:
                with resp:
                    total = int(resp.headers.get("Content-Length") or 0) or None
                    with tqdm(total=total, unit="B", unit_scale=True, desc=dest.name, leave=False) as bar:
                        while chunk := resp.read(1 << 16):
                            out.write(chunk)
                            h.update(chunk)
                            bar.update(len(chunk))
            except OSError as e:  # connection reset, timeout mid-transfer, incomplete read
                raise DataError(f"{url}: download interrupted ({str(e).splitlines()[0] or type(e).__name__})") from None
        if want and h.hexdigest() != want:
            raise DataError(f"{url}: checksum mismatch ({h.name} {h.hexdigest()} != {want})")
        os.chmod(tmp, 0o644)  # mkstemp makes files private; the data dir may be shared
        os.replace(tmp, dest)
        return dest
    finally:
        Path(tmp).unlink(missing_ok=True)


def missing_files(spec, folder: Path) -> list[tuple]:
    return [d for d in spec.downloads if not (Path(folder) / d[1]).exists()]


def ensure_files(spec, folder: Path, timeout: float = 60) -> list[Path]:
    """Download every official file of `spec` that `folder` lacks; all or nothing."""
    folder = Path(folder)
    todo = missing_files(spec, folder)
    if not todo:
        return []
    created = []  # the folders this call makes (the dataset folder and any missing parents)
    p = folder
    while not p.exists() and p != p.parent:
        created.append(p)
        p = p.parent
    folder.mkdir(parents=True, exist_ok=True)
    stage = Path(tempfile.mkdtemp(dir=folder, prefix=".download.", suffix=".tmp"))
    try:
        staged = [fetch(url, stage / name, checksum, timeout) for url, name, checksum in todo]
        out = []
        for p in staged:
            os.replace(p, folder / p.name)
            out.append(folder / p.name)
        return out
    except BaseException:
        if created:  # we made the folder: remove it (nothing else can be inside) and its parents
            shutil.rmtree(folder, ignore_errors=True)
            for d in created[1:]:
                try:
                    d.rmdir()
                except OSError:
                    break
        raise
    finally:
        shutil.rmtree(stage, ignore_errors=True)
