"""The results archive: the small records of finished runs, kept under version control.

An output folder holds everything a run made (checkpoints, prepared data, executed notebooks)
and stays on the machine that ran it. The archive keeps only what the report reads, in the same
layout, so that `bdlm report --output-dir results` (or several folders at once) regenerates the
results page on any machine, and results made on different machines add up:

    <results>/<dataset>/<batch>/<run_id>/   params.yaml, fingerprint.json, run.json,
                                            environment.json, metrics.json, per_user*.parquet
    <results>/<dataset>/data/<tag>/         manifest.json (Table 1)

A run's predictions (every candidate's score) are not kept: its per-user record is
(`report.records`: the held-out item's rank, the binary counts at the run's threshold, how many
negatives of each kind beat it, the bucket labels), which is all the report reads of them and a
small fraction of their size on full data. The report from the archive equals the report from the
output folder (tested).

Only finished runs that `bdlm batch` made are archived (metrics.json present, run.json present and
not failed or interrupted): a notebook executed on its own (by `make test`'s nbval pass, or by
hand) writes no run.json, so its smoke-preset records under the default `outputs/` stay out. A run
already in the archive with the same fingerprint and metrics is left alone; one with the same
name and a different fingerprint (its parameters changed) is replaced, and the command says so.
Each run folder appears whole or not at all (`runs.atomic_dir`). run.json gains `finished_utc`
(the time metrics.json was written), because a checkout does not keep files' times and the report
takes the newest run of a seed.
"""
from __future__ import annotations

import shutil
from pathlib import Path

import yaml

from . import store
from .report.collect import run_sides
from .report.records import write_record
from .runs import atomic_dir, read_json, write_json

RECORD = (store.PARAMS, store.FINGERPRINT, store.RUN, store.ENVIRONMENT)
DATA_RECORD = ("manifest.json",)


def _archivable(run_dir: Path) -> bool:
    """A finished run of a batch; not a batch's own report notebook (scope batch: its record is the
    report it wrote on that machine, which `bdlm report` makes again from the archive)."""
    if run_dir.parent.name == "data" or not (run_dir / store.RUN).exists():
        return False
    info = read_json(run_dir / store.RUN)
    return info.get("status") == "ok" and info.get("scope") != "batch"


def _same(a: Path, b: Path, name: str) -> bool:
    return (a / name).exists() and (b / name).exists() and (a / name).read_bytes() == (b / name).read_bytes()


def archive_runs(output_dir: str | Path, results_dir: str | Path,
                 batches: list[str] | None = None) -> list[str]:
    """Copy the records of the finished runs under `output_dir` (of `batches` only, when given)
    and of the prepared data they used into `results_dir`; return one line per run copied."""
    from .data.dataset import dataset_tag
    output_dir, results_dir = Path(output_dir), Path(results_dir)
    if not output_dir.is_dir():
        raise FileNotFoundError(f"{output_dir}: no such output folder")
    if output_dir.resolve() == results_dir.resolve():
        raise ValueError(f"{results_dir}: the archive must be another folder than the output folder")
    done, data = [], set()
    for mfile in sorted(output_dir.glob(f"*/*/*/{store.METRICS}")):
        src = mfile.parent
        if not _archivable(src) or (batches and src.parent.name not in batches):
            continue
        rel = src.relative_to(output_dir)
        for part in rel.parts:
            store.safe_name(part, "run folder")
        dst = results_dir / rel
        if (src / store.PARAMS).exists():
            p = yaml.safe_load((src / store.PARAMS).read_text(encoding="utf-8")) or {}
            if p.get("data") and p.get("seed") is not None:
                data.add((rel.parts[0], dataset_tag(p)))
        if _same(src, dst, store.FINGERPRINT) and _same(src, dst, store.METRICS):
            continue
        replaced = dst.exists()
        with atomic_dir(dst) as tmp:
            for name in RECORD:
                if (src / name).exists():
                    shutil.copyfile(src / name, tmp / name)
            metrics = read_json(src / store.METRICS)
            for side, m in run_sides(metrics).items():
                threshold = (m.get("binary") or {}).get("threshold")
                if threshold is not None:
                    write_record(src, side, float(threshold), tmp)
            info = read_json(tmp / store.RUN) if (tmp / store.RUN).exists() else {}
            write_json(tmp / store.RUN, {**info, "finished_utc": store.finished_utc(src)})
            shutil.copyfile(src / store.METRICS, tmp / store.METRICS)
        done.append(f"{rel}" + (" (replaced: its parameters or metrics changed)" if replaced else ""))
    for ds, tag in sorted(data):
        src, dst = output_dir / ds / "data" / tag, results_dir / ds / "data" / tag
        if not (src / "manifest.json").exists() or _same(src, dst, "manifest.json"):
            continue
        with atomic_dir(dst) as tmp:
            for name in DATA_RECORD:
                if (src / name).exists():
                    shutil.copyfile(src / name, tmp / name)
        done.append(f"{ds}/data/{tag}")
    return done
