"""Fetch the official dataset files when they are missing locally (checksummed, atomic)."""
from __future__ import annotations

import hashlib
import os
import tempfile
import urllib.error
import urllib.request
from pathlib import Path

from tqdm.auto import tqdm

from .loaders import DataError


def fetch(url: str, dest: str | os.PathLike, checksum: str | None = None, timeout: float = 60) -> Path:
    """Download `url` to `dest` via a temp file; verify `checksum` ("sha256:…" / "md5:…" / bare
    sha256) before the file appears. A failed or mismatching download leaves nothing behind."""
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    algo, _, want = (checksum or "").rpartition(":") if checksum else ("", "", "")
    h = hashlib.new(algo or "sha256")
    fd, tmp = tempfile.mkstemp(dir=dest.parent, prefix=f".{dest.name}.", suffix=".part")
    try:
        with os.fdopen(fd, "wb") as out:
            try:
                resp = urllib.request.urlopen(url, timeout=timeout)
            except (urllib.error.URLError, OSError) as e:
                raise DataError(f"{url}: download failed ({getattr(e, 'reason', e)})") from None
            with resp:
                total = int(resp.headers.get("Content-Length") or 0) or None
                with tqdm(total=total, unit="B", unit_scale=True, desc=dest.name, leave=False) as bar:
                    while chunk := resp.read(1 << 16):
                        out.write(chunk)
                        h.update(chunk)
                        bar.update(len(chunk))
        if want and h.hexdigest() != want.lower():
            raise DataError(f"{url}: checksum mismatch ({algo or 'sha256'} {h.hexdigest()} != {want})")
        os.replace(tmp, dest)
        return dest
    finally:
        Path(tmp).unlink(missing_ok=True)


def ensure_files(spec, folder: Path) -> None:
    """Download every official file of `spec` that `folder` lacks."""
    for url, name, checksum in spec.downloads:
        if not (folder / name).exists():
            fetch(url, folder / name, checksum)
