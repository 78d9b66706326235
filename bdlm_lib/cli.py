"""`bdlm` command line: thin wrappers over the same library functions the notebooks call.

    bdlm prep --dataset ml1m --preset demo       prepare data + test sets, print Table 1
    bdlm batch params/batches/demo_ml1m.yaml     run a batch of notebooks with papermill
    bdlm report [--docs docs/results.md]         assemble the report from stored runs
    bdlm archive --to results                    copy finished runs' records into the results archive
    bdlm evaluate RUN_DIR --set eval.mode=full   a finished domain run evaluated again, not trained again
    bdlm joint --dataset ml1m --preset paper     one joint run (the DeepSpeed launcher's entry)
    bdlm plan BATCH --backbone CFG --gpus N      per run: GPU memory, fits or not, wall time
    bdlm export --dataset ml1m --preset paper    our splits + candidate sets as RecBole atomic files
    bdlm demo                                    the main job (make demo)
    bdlm refresh-notebooks                       re-execute the committed notebooks on the smoke preset
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from .params import parse_overrides

REPO = Path(__file__).resolve().parent.parent


def cmd_prep(args) -> int:
    from .data import load_dataset, table1
    from .params import load_params
    rows = []
    for name in args.dataset:
        p = load_params(name, args.preset, overrides={**parse_overrides(args.set),
                                                       **({"data_dir": args.data_dir} if args.data_dir else {}),
                                                       **({"output_dir": args.output_dir} if args.output_dir else {})})
        rows.append(load_dataset(p, force=args.force))
    print(table1(rows).to_string())
    return 0


def cmd_export(args) -> int:
    """The prepared data of each dataset as RecBole atomic files (bdlm_lib/data/export.py)."""
    from .data import load_dataset
    from .data.dataset import dataset_tag
    from .data.export import export_recbole
    from .params import load_params
    from .store import dataset_root
    for name in args.dataset:
        p = load_params(name, args.preset, overrides={**parse_overrides(args.set),
                                                       **({"data_dir": args.data_dir} if args.data_dir else {}),
                                                       **({"output_dir": args.output_dir} if args.output_dir else {})})
        ds = load_dataset(p, verbose=False)
        out = export_recbole(ds, dataset_root(p) / "export" / args.format / dataset_tag(p))
        print(f"{name}: {args.format} atomic files -> {out}")
    return 0


def cmd_batch(args) -> int:
    from .experiments.batch import run_batch
    summary = run_batch(args.batch, output_dir=args.output_dir, only=args.only,
                        rerun_changed=args.rerun_changed)
    failed = [r for r in summary.get("runs", []) if r.get("status") == "failed"] if isinstance(summary, dict) else []
    return 1 if failed else 0


def cmd_report(args) -> int:
    from .report import build_report
    path = build_report(args.output_dir or ["outputs"], preset=args.preset, docs=args.docs)
    print(f"report: {path}" + (f"; results page: {args.docs}" if args.docs else ""))
    return 0


def cmd_archive(args) -> int:
    """The records of the finished runs (bdlm_lib/archive.py) into a folder kept under version control."""
    from .archive import archive_runs
    lines = archive_runs(args.output_dir or "outputs", args.to, batches=args.batch)
    for line in lines:
        print(f"archived {line}")
    print(f"{len(lines)} archived into {args.to}" if lines else f"{args.to}: already holds every finished run")
    return 0


def cmd_evaluate(args) -> int:
    """Finished domain runs evaluated again with other eval.* settings (domain/reevaluate.py)."""
    from .domain.reevaluate import reevaluate_domain
    overrides = parse_overrides(args.set)
    if not overrides:
        raise ValueError("evaluate: nothing to change (give --set eval.KEY=VALUE)")
    for run_dir in args.run_dir:
        dst, state = reevaluate_domain(run_dir, overrides, args.as_batch)
        print(f"{run_dir} -> {dst}" + (" (already evaluated so)" if state == "finished" else ""), flush=True)
    return 0


def cmd_demo(args) -> int:
    """The main job: the CPU demo batch on ML-1M end to end, then the report."""
    import time
    from .experiments.batch import run_batch
    import pandas as pd
    from .report import build_report, to_markdown
    t0 = time.perf_counter()
    out = args.output_dir or "outputs"
    summary = run_batch(REPO / "params" / "batches" / "demo_ml1m.yaml", output_dir=out,
                        rerun_changed=args.rerun_changed)
    runs = summary.get("runs", [])
    out = summary.get("output_dir", out)
    path = Path(out) / "report" / "report.md"
    # the batch's own report run has just written it; rebuild only when that run did not run now
    if not any(r.get("run_id") == "report" and r.get("status") == "ok" for r in runs) or not path.exists():
        path = build_report(out, preset="demo")
    print("\nTable 3 (95% bootstrap CIs over users)\n" + to_markdown(pd.read_csv(path.parent / "table3.csv", index_col=0)))
    print(f"\ndemo finished in {(time.perf_counter() - t0) / 60:.1f} min; report: {path}")
    print("What this table can show: the whole pipeline ran, and with 200 ranked users an HR@1 gap of "
          "about 0.1 between one-pass methods is beyond the CIs; it cannot show how BDLM compares at "
          "the paper's scale (600 users sampled, a 135M LLM trained for 12 steps). The measured "
          "comparisons are in docs/results.md.")
    failed = [r for r in runs if r.get("status") == "failed"]
    return 1 if failed else 0


def cmd_joint(args) -> int:
    """One joint BDLM run (paper Algorithm 1) outside a batch; the entry the DeepSpeed launcher
    runs on every rank (`deepspeed --num_gpus N --module bdlm_lib.cli joint ...`)."""
    import torch
    from .joint.run import run_bdlm
    from .params import load_params
    params = load_params(args.dataset, args.preset, parse_overrides(args.set))
    created = not (torch.distributed.is_available() and torch.distributed.is_initialized())
    m_llm, m_drs, run_dir = run_bdlm(params)
    distributed = torch.distributed.is_available() and torch.distributed.is_initialized()
    if not distributed or torch.distributed.get_rank() == 0:
        print(f"BDLM-llm HR@1 {m_llm['topk']['HR@1']:.4f}  BDLM-drs HR@1 {m_drs['topk']['HR@1']:.4f}  -> {run_dir}")
    if distributed and created:   # (DeepSpeed caches the group: a caller that made it keeps it)
        torch.distributed.destroy_process_group()
    return 0


def cmd_plan(args) -> int:
    """Per run of a batch file: per-GPU memory and wall time with a backbone (bdlm_lib/plan.py);
    exit 1, with a one-line reason, when a run does not fit."""
    from .plan import format_plan, plan_batch, verdict
    plan = plan_batch(args.batch, args.backbone, gpus=args.gpus, gpu_gib=args.gpu_memory, mfu=args.mfu,
                      costs=args.costs, peak_tflops=args.peak_tflops, overrides=parse_overrides(args.set),
                      output_dir=args.output_dir)
    print(format_plan(plan))
    reason = verdict(plan)
    if reason:
        print(f"bdlm plan: cannot run as planned: {reason}", file=sys.stderr)
        return 1
    return 0


def cmd_refresh(args) -> int:
    """Re-execute every numbered notebook in place on the smoke preset (what nbval checks)."""
    import papermill as pm
    for nb in sorted((REPO / "notebooks").glob("[0-9][0-9]_*.ipynb")):
        if args.only and not any(o in nb.name for o in args.only):
            continue
        print(f"executing {nb.name}")
        pm.execute_notebook(str(nb), str(nb), kernel_name="python3", cwd=str(REPO / "notebooks"),
                            progress_bar=False)
    return 0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="bdlm", description=__doc__.splitlines()[0])
    # the DeepSpeed launcher puts --local_rank=N before the command
    ap.add_argument("--local_rank", type=int, default=None, help=argparse.SUPPRESS)
    sub = ap.add_subparsers(dest="cmd", required=True)

    p = sub.add_parser("prep", help="prepare datasets and print Table 1")
    p.add_argument("--dataset", nargs="+", default=["ml1m"])
    p.add_argument("--preset", default="demo")
    p.add_argument("--data-dir")
    p.add_argument("--output-dir")
    p.add_argument("--force", action="store_true")
    p.add_argument("--set", nargs="*", metavar="KEY=VALUE", help="param overrides, e.g. data.kcore=10")
    p.set_defaults(fn=cmd_prep)

    p = sub.add_parser("export", help="write prepared data + candidate sets as RecBole atomic files")
    p.add_argument("--dataset", nargs="+", default=["ml1m"])
    p.add_argument("--preset", default="demo")
    p.add_argument("--format", choices=["recbole"], default="recbole")
    p.add_argument("--data-dir")
    p.add_argument("--output-dir")
    p.add_argument("--set", nargs="*", metavar="KEY=VALUE", help="param overrides, e.g. data.kcore=10")
    p.set_defaults(fn=cmd_export)

    p = sub.add_parser("batch", help="run a batch YAML of notebooks with papermill")
    p.add_argument("batch")
    p.add_argument("--output-dir")
    p.add_argument("--only", nargs="*", help="run ids (substrings) to run")
    p.add_argument("--rerun-changed", action="store_true",
                   help="re-run stored runs whose parameters differ from the batch file's (else: stop)")
    p.set_defaults(fn=cmd_batch)

    p = sub.add_parser("report", help="assemble tables and figures from stored runs")
    p.add_argument("--output-dir", nargs="+", metavar="DIR",
                   help="folders of stored runs, read together (default: outputs); e.g. outputs results")
    p.add_argument("--preset", help="report only this preset's runs (default: per dataset its largest)")
    p.add_argument("--docs", metavar="PATH", help="also write the results page, e.g. docs/results.md")
    p.set_defaults(fn=cmd_report)

    p = sub.add_parser("archive", help="copy the finished runs' records (no checkpoints) into the results archive")
    p.add_argument("--output-dir", help="where the runs are (default: outputs)")
    p.add_argument("--to", default="results", metavar="DIR", help="the archive (default: results)")
    p.add_argument("--batch", nargs="*", metavar="NAME", help="only these batches (their `name:`)")
    p.set_defaults(fn=cmd_archive)

    p = sub.add_parser("evaluate", help="evaluate finished domain runs again with other eval.* settings (no training)")
    p.add_argument("run_dir", nargs="+", help="finished domain run folders, e.g. outputs/ml1m/full_domain/lightgcn-s42")
    p.add_argument("--set", action="append", metavar="eval.KEY=VALUE", help="an eval.* setting (repeatable)")
    p.add_argument("--as", dest="as_batch", metavar="NAME",
                   help="the batch folder of the new runs, beside the source's (default: <batch>_eval)")
    p.set_defaults(fn=cmd_evaluate)

    p = sub.add_parser("demo", help="the main job: CPU demo pipeline on MovieLens-1M")
    p.add_argument("--output-dir")
    p.add_argument("--rerun-changed", action="store_true",
                   help="re-run stored demo runs made with other parameters (else: stop)")
    p.set_defaults(fn=cmd_demo)

    p = sub.add_parser("joint", help="one joint BDLM run (also the DeepSpeed launcher's entry)")
    p.add_argument("--dataset", default="ml1m")
    p.add_argument("--preset", default="paper")
    p.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE",
                   help="param overrides, e.g. joint.deepspeed_config=params/deepspeed/zero3.json")
    p.add_argument("--local_rank", type=int, default=None, help=argparse.SUPPRESS)  # the launcher's
    p.set_defaults(fn=cmd_joint)

    p = sub.add_parser("plan", help="per run of a batch: GPU memory and wall time with a backbone")
    p.add_argument("batch")
    p.add_argument("--backbone", required=True,
                   help="a config.json, a model folder, or a published config (params/backbones)")
    p.add_argument("--gpus", type=int, default=1)
    p.add_argument("--gpu-memory", type=float, default=80.0, metavar="GIB", help="per GPU (default 80)")
    p.add_argument("--mfu", type=float, default=0.40, help="assumed MFU without --costs (default 0.40)")
    p.add_argument("--costs", metavar="JSON", help="measured step costs (benchmarks/bench_gpu_check.py)")
    p.add_argument("--peak-tflops", type=float, default=989.0, help="per GPU (default: H100 SXM bf16)")
    p.add_argument("--output-dir", help="where the prepared data is (default: the batch's)")
    p.add_argument("--set", nargs="*", metavar="KEY=VALUE", help="param overrides for every run")
    p.set_defaults(fn=cmd_plan)

    p = sub.add_parser("refresh-notebooks", help="re-execute the notebooks on the smoke preset")
    p.add_argument("--only", nargs="*")
    p.set_defaults(fn=cmd_refresh)

    args = ap.parse_args(argv)
    try:
        return int(args.fn(args) or 0)
    except KeyboardInterrupt as e:  # a batch marks its running run interrupted and says which
        print(f"bdlm {args.cmd}: {e or 'interrupted'}", file=sys.stderr)
        return 130
    except OSError as e:  # permission, disk full, a missing file: name the path
        where = f"{e.filename}: " if getattr(e, "filename", None) else ""
        print(f"bdlm {args.cmd}: error: {where}{e.strerror or e}", file=sys.stderr)
        return 2
    except ValueError as e:  # DataError, ParamsError, BatchError, StoreError, ArtefactError
        print(f"bdlm {args.cmd}: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
