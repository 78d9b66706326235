"""`bdlm report`: the paper's tables and figures, assembled from stored run folders only (no model
is loaded), written as report.md / report.html / CSV / PNG, and as the generated docs/results.md."""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import pandas as pd

from ..methods import BASELINE_ROWS, BDLM_ROWS, CONTROL_ROWS, NCF_ROWS, of_kind
from ..runs import atomic_write_bytes, atomic_write_text, read_json, write_json
from .collect import METRICS, as_folders, choose_runs, collect_runs, table1
from .figures import figure5, figure6, png_bytes
from .full_catalogue import full_ranking_table
from .negatives import run_negative_kinds
from .paper import paper_comparison
from .sparsity import (BREAKDOWNS, bucket_table, gap_change, sparsity_figure, sparsity_summary, sparsity_table,
                       sparsity_tests)
from .statistics import improvement, significance, summarise
from .tables import results_table, to_markdown


def build_report(output_dir: str | Path | Sequence[str | Path] = "outputs", report_dir: str | Path | None = None,
                 n_boot: int | None = None, alpha: float | None = None,
                 lambda_ml: float | None = None, preset: str | None = None,
                 docs: str | Path | None = None) -> Path:
    """Write report.md, report.html, the tables as CSV and the figures as PNG to
    `<output_dir>/report/`; return the path of report.md. Defaults from params `report:`.
    `output_dir`: one folder of stored runs, or several (e.g. `outputs` and the results archive,
    bdlm_lib/archive.py): the report reads them together, the first holds `report/`.
    `preset`: report only the runs of that preset (None: per dataset its largest preset).
    `docs`: also write the results page there (e.g. docs/results.md), see `write_results_page`."""
    from ..params import load_params
    p = load_params()
    n_boot = int(n_boot or p.report.n_boot)
    alpha = float(alpha or p.report.alpha)
    lam = float(lambda_ml if lambda_ml is not None else (p.report.lambda_ml if p.report.lambda_ml is not None
                                                         else p.joint.lambda_ml))
    folders = as_folders(output_dir)
    for d in folders:
        if not d.is_dir():
            raise FileNotFoundError(f"{d}: no such output folder (run a batch first, or give --output-dir)")
    out = Path(report_dir) if report_dir else folders[0] / "report"
    runs = collect_runs(folders)
    if not len(runs):
        raise ValueError(f"{', '.join(map(str, folders))}: no finished runs to report "
                         "(no <dataset>/<batch>/<run>/metrics.json)")
    # the main tables: data as prepared by the presets; sparser data has its own section
    chosen = choose_runs(runs[runs["setting"] == "default"], lam, preset)
    summary, tables = summarise(chosen, n_boot, alpha) if len(chosen) else (pd.DataFrame(
        columns=["dataset", "label", *METRICS]), {})
    t1 = table1(folders, chosen)
    flagged = sorted(l for l in set(summary["label"]) if "+" in l) if len(summary) else []
    t3 = results_table(summary, BASELINE_ROWS + CONTROL_ROWS + BDLM_ROWS + flagged, [*METRICS, "users"]) if len(summary) else pd.DataFrame()
    imp, which = improvement(summary, METRICS) if len(summary) else ({}, {})
    if len(t3):
        t3.loc["Improv."] = [f"{100 * imp[c]:+.1f}%" if c in imp and not pd.isna(imp[c]) else "–" for c in t3.columns]
    t4 = results_table(summary, NCF_ROWS, ["HR@1", "HR@2", "F1"]) if len(summary) else pd.DataFrame()
    sig = significance(summary, tables, which, n_boot, alpha) if len(summary) else pd.DataFrame()
    # the domain baselines at full data beside the paper's Table 3
    full = runs[runs["full_data"] & (runs["setting"] == "default") & runs["method"].isin(of_kind("domain"))]
    full_chosen = choose_runs(full, lam)
    full_summary = summarise(full_chosen, n_boot, alpha)[0] if len(full_chosen) else pd.DataFrame()
    auc = full_chosen.groupby(["dataset", "label"])["AUC"].mean().to_dict() if len(full_chosen) else {}
    kinds = {}   # HR@1 against each half of the negatives, and against uniform ones (one seed: the newest run's)
    for (ds, label), g in (full_chosen.groupby(["dataset", "label"]) if len(full_chosen) else ()):
        newest = g.sort_values("finished").iloc[-1]
        full = newest["full"] if isinstance(newest["full"], dict) else {}
        kinds[(ds, label)] = {**(run_negative_kinds(newest["run_dir"]) or {}), "uniform": full.get("HR@1 uniform")}
    vs_paper = paper_comparison(full_summary, auc, kinds) if len(full_summary) else pd.DataFrame()
    # every run side that ranked the whole catalogue (eval.mode: full)
    full_rank = full_ranking_table(runs, alpha)
    # the sparsity study (batches named sparsity*)
    sp_summary, sp_tables, sp_chosen = sparsity_summary(runs, lam, n_boot, alpha)
    sp_table = sparsity_table(sp_summary)
    sp_tests = sparsity_tests(sp_summary, sp_tables, n_boot, alpha) if len(sp_summary) else pd.DataFrame()
    sp_change = gap_change(sp_tables, n_boot, alpha)
    sp_buckets = {b: bucket_table(sp_chosen, n_boot, alpha, b) for b in BREAKDOWNS}
    figs = {"fig5_ablations.png": figure5(summary) if len(summary) else None,
            "fig6_lambda.png": figure6(runs, n_boot, alpha, preset),
            "sparsity.png": sparsity_figure(sp_summary)}

    for name, df in (("table1", t1), ("table3", t3), ("table4", t4), ("significance", sig),
                     ("summary", summary), ("paper_comparison", vs_paper), ("full_ranking", full_rank), ("sparsity", sp_table),
                     ("sparsity_tests", sp_tests), ("sparsity_gap_change", sp_change), *((f"sparsity_{b}", t) for b, t in sp_buckets.items())):
        atomic_write_text(out / f"{name}.csv", df.to_csv(index=name in ("table3", "table4")))
    write_json(out / "improvement.json", {"improvement": imp, "vs": {f"{d} {m}": list(v) for (d, m), v in which.items()}})
    images = []
    for name, fig in figs.items():
        if fig is not None:
            atomic_write_bytes(out / name, png_bytes(fig))
            images.append(name)
        else:   # a figure of an earlier report whose runs are not in this one would mislead
            (out / name).unlink(missing_ok=True)
    conf = f"{100 * (1 - alpha):.0f}%"
    sections = [
        ("Table 1 - dataset statistics (prepared data)", t1, False),
        (f"Table 3 - main results (value [{conf} bootstrap CI over users]; users = ranked / binary; "
         "Improv. = best BDLM over best baseline)", t3, True),
        ("Table 4 - BDLM with NCF as the domain model", t4, True),
        ("Significance - BDLM vs the best baseline on the same users, and each BDLM-drs vs its domain model "
         "and vs the control (-FT: that model fine-tuned on the same prompt candidates without the LLM) "
         "(exact McNemar on per-user hits; paired bootstrap CI of the difference; with several seeds, "
         "wins and losses summed over the seeds both rows have, the difference averaged over them)", sig, False),
        (f"Full data - the domain baselines on every user of the 5-core beside the paper's Table 3 "
         f"(ours: value [{conf} bootstrap CI]; Beauty stands in for the paper's Grocery and has no paper row)",
         vs_paper, False),
    ]
    if len(full_rank):
        sections.append((f"Full-catalogue ranking (eval.mode: full) - every item the user has not interacted "
                         f"with is ranked; Recall@K [{conf} Wilson interval over users], NDCG@K; HR@K vs uniform negatives: "
                         f"the expected HR@K against as many negatives as a candidate set holds, drawn uniformly "
                         f"from those items", full_rank, False))
    if len(sp_table):
        sections += [
            (f"Sparsity - HR@1 [{conf} CI] at each training density (data.train_keep) and with cold items "
             "(data.cold_items); the same users and candidate sets in every row", sp_table, False),
            ("Sparsity - BDLM against LightGCN, and BDLM-drs against its control LightGCN-FT, at each "
             "setting (exact McNemar on per-user HR@1 hits; paired bootstrap CI of ΔHR@1)", sp_tests, False),
            (f"Sparsity - does the gap to LightGCN (or to the control) change with the setting? (HR@1 gap "
             f"at the default setting and at this one, on the same users; {conf} paired bootstrap CI of the change)",
             sp_change, False),
            *((f"Sparsity - HR@1 [{conf} CI] by {b.replace('_', ' ')} bucket (n = users in the bucket; "
               "p = exact McNemar of the pair named on those users)", t, False) for b, t in sp_buckets.items()),
        ]
    which_preset = f"preset {preset}" if preset else "per dataset its largest preset"
    head = (f"From {', '.join(f'`{d}`' for d in folders)}: {len(runs)} stored run sides; {which_preset}; joint runs at λ nearest {lam:g}; "
            f"{n_boot} bootstrap resamples.")
    md = [f"# BDLM report\n\n{head}\n"]
    html = [f"<h1>BDLM report</h1><p>{head}</p>"]
    for title, df, idx in sections:
        md.append(f"## {title}\n\n{to_markdown(df, index=idx)}")
        html.append(f"<h2>{title}</h2>" + (df.to_html(index=idx, float_format=lambda v: f"{v:.4g}")
                                          if len(df) else "<p><i>(no runs found)</i></p>"))
    for name in images:
        md.append(f"![{name}]({name})\n")
        html.append(f'<h2>{name}</h2><img src="{name}" style="max-width:100%">')
    md.append("## Wall time of the runs used\n\n" + to_markdown(wall_times(chosen), index=False))
    md.append("## Runs used\n\n" + to_markdown(summary[["dataset", "label", "preset", "lambda_ml", "n_seeds", "runs"]]
                                                if len(summary) else summary, index=False))
    atomic_write_text(out / "report.md", "\n".join(md))
    atomic_write_text(out / "report.html", "<!doctype html><html><head><meta charset='utf-8'><title>BDLM report"
                      "</title><style>body{font-family:sans-serif;margin:2em}table{border-collapse:collapse}"
                      "td,th{border:1px solid #ccc;padding:2px 6px;font-size:90%}</style></head><body>"
                      + "\n".join(html) + "</body></html>")
    if docs is not None:
        write_results_page(out, Path(docs), folders)
    return out / "report.md"


def wall_times(chosen: pd.DataFrame) -> pd.DataFrame:
    """Per (dataset, method row): the runs' wall time (run.json's seconds, summed over seeds) and
    their machine (environment.json): what a reader needs to plan the same runs."""
    rows = []
    for (ds, label), g in chosen.groupby(["dataset", "label"], sort=False):
        secs, machines = 0.0, set()
        for rd in g["run_dir"]:
            rd = Path(rd)
            try:
                secs += float(read_json(rd / "run.json").get("seconds") or 0.0)
                env = read_json(rd / "environment.json")
                machines.add(f"{env.get('cpu_count')} CPU" + (f", {env['gpu']}" if env.get("gpu") else ""))
            except (OSError, ValueError):
                continue
        rows.append({"dataset": ds, "method": label, "seeds": len(g), "minutes": round(secs / 60, 1),
                     "machine": "; ".join(sorted(machines))})
    return pd.DataFrame(rows)


def write_results_page(report_dir: Path, docs: Path, output_dir: Path | Sequence[Path]) -> Path:
    """docs/results.md: the report, generated (never typed by hand), its figures beside it in
    `<docs>_figures/`, then the dated notes of `results_notes.md` next to it, if present."""
    import datetime
    import shutil
    body = (report_dir / "report.md").read_text(encoding="utf-8").split("\n", 1)[1]
    figs = docs.parent / f"{docs.stem}_figures"
    images = sorted(report_dir.glob("*.png"))
    if images:
        figs.mkdir(parents=True, exist_ok=True)
        for old in figs.glob("*.png"):
            old.unlink()
    for img in images:
        shutil.copyfile(img, figs / img.name)
        body = body.replace(f"]({img.name})", f"]({figs.name}/{img.name})")
    folders = as_folders(output_dir)
    body = body.replace("From " + ", ".join(f"`{d}`" for d in folders) + ":", "From the stored runs:")
    for d in folders:
        body = body.replace(str(d).rstrip("/") + "/", "")   # run folders relative to their output folder
    notes = docs.parent / "results_notes.md"
    page = (f"# Results\n\n_Generated by `bdlm report --output-dir {' '.join(d.name for d in folders)} "
            f"--docs {docs}` on "
            f"{datetime.date.today().isoformat()} from stored runs; do not edit by hand (the notes at "
            f"the end come from `{notes.name}`). How these numbers are made: [protocol.md](protocol.md)._\n"
            + body + ("\n" + notes.read_text(encoding="utf-8") if notes.exists() else ""))
    atomic_write_text(docs, page)
    return docs
