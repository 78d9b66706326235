"""Live training curves: every run with a folder writes its losses and validation metrics as
TensorBoard event files into `<run folder>/tensorboard/`, as they happen (flushed every 30 s and at
the end), besides the JSON history it writes at the end. `tensorboard --logdir outputs` shows all
runs, each under its own folder's path.

Tags: `train/<name>` per step or epoch, `valid/<name>` per validation. Names keep letters, digits,
`_ - . /`; other characters become `_` here (so TensorBoard's writer has nothing to rename and
says nothing): `L_ML^L` -> `train/L_ML_L`, `HR@1` -> `valid/HR_1`. A resumed run passes the step it
resumes from (`purge_step`): TensorBoard then drops what an interrupted process had logged past
it, so the curves show each step once. Without a run folder, or without the tensorboard package,
nothing is written.
"""
from __future__ import annotations

import math
import re
from pathlib import Path
from typing import Mapping

FOLDER = "tensorboard"
_BAD = re.compile(r"[^-/\w.]")


def tag(name: str) -> str:
    return _BAD.sub("_", name)


class Curves:
    """A run's TensorBoard writer (module doc), opened at `open` or the first `scalars`; a context
    manager that closes it."""

    def __init__(self, run_dir=None, enabled: bool = True):
        self.run_dir = Path(run_dir) if run_dir is not None and enabled else None
        self.writer = None

    def open(self, purge_step: int | None = None) -> None:
        """Start writing; `purge_step`: the first step of a resumed run."""
        if self.run_dir is None or self.writer is not None:
            return
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:          # the tensorboard package is missing: JSON histories only
            self.run_dir = None
            return
        self.writer = SummaryWriter(log_dir=str(self.run_dir / FOLDER), purge_step=purge_step or None,
                                    flush_secs=30)

    def scalars(self, step: int, values: Mapping, prefix: str = "train") -> None:
        """Log every number of `values` at `step` under `prefix/` (None, NaN and non-numbers skipped)."""
        self.open()
        if self.writer is None:
            return
        for k, v in values.items():
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
                continue
            self.writer.add_scalar(tag(f"{prefix}/{k}"), float(v), int(step))

    def flush(self) -> None:
        if self.writer is not None:
            self.writer.flush()

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            self.writer = None

    def __enter__(self) -> "Curves":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
