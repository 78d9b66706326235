"""Our domain models against RecBole's, on exactly our split: HR@1 and seconds per epoch, in one
run on the same machine.

    python benchmarks/bench_recbole.py [--dataset ml1m] [--preset paper] [--models lightgcn,mf,sasrec]
                                       [--dim 64] [--epochs 5] [--max-users N] [--threads N]
                                       [--venv .venv-recbole] [--work-dir DIR]

For each model, ours (bdlm_lib) and RecBole's twin (mf = BPR, lightgcn = LightGCN, sasrec = SASRec)
train on our train split (`bdlm export --format recbole`) with the same dimension, epochs, learning
rate, batch, loss (BPR, one uniform negative per positive) and thread count, without early
stopping. Both then score the same rows, our persisted test candidates (1 positive + 19
negatives per user, docs/protocol.md), and both HR@1s are computed by our metric code with the
same bootstrap over users. Seconds per epoch: the median over the epochs (training only: sampling,
forward, backward, Adam; no evaluation), which a busy machine disturbs least.

The same parameters where both models have them; where they differ by design, RecBole's model is
kept as it is (its initialisations; SASRec's post-LN blocks, input LayerNorm and right padding).
LightGCN gets reg_weight 0 (our trainer adds no L2 term); SASRec gets inner_size = dim (our
feed-forward width) and our layers, heads and dropout. An SASRec epoch is not the same work on
both sides: RecBole trains one sample per train position (each a full pass over up to 50 items,
loss at its last position only), ours one window per user (loss at every position). RecBole's
batch is therefore set to the targets per step of ours, and the table's notes give the targets
per epoch of each. An epoch of RecBole's SASRec over full ML-1M is about a million samples of 50
positions each, slow on a CPU: `--models sasrec --max-users 500` compares it in minutes.

RecBole runs in a virtualenv of its own (`--venv`, created on first use): recbole 1.2.1 needs
NumPy 1.x and SciPy < 1.11 (it patches np.float, and its LightGCN calls dok_matrix._update), which
the main environment must not be held to. The venv gets torch first (the pinned version, the same
wheel as the main environment), then the pins below with torch constrained so that nothing
replaces it. benchmarks/recbole_driver.py runs there: it imports recbole, torch and numpy only.
RecBole 1.2.1 imports its SINE model with its sequential ones, and that module switches torch's
autograd anomaly detection on for the whole process (every backward step then checks its
gradients for NaN); the driver switches it off again, so SASRec is timed without a debugging mode
that none of our models runs in.

dim 64 keeps a CPU run short; the paper's 576 (or 4096) works too, slowly. Work files (prepared
data, atomic files, RecBole's folders, results.json with every epoch's seconds) go under --work-dir;
nothing else is written but the venv.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd
import torch

REPO = Path(__file__).resolve().parents[1]
DRIVER = Path(__file__).with_name("recbole_driver.py")
RECBOLE = {"mf": "BPR", "lightgcn": "LightGCN", "sasrec": "SASRec"}

TORCH = "torch==2.13.0"
RECBOLE_PIN = "recbole==1.2.1"
# recbole is installed without its declared dependencies: they include ray (only its hyper-
# parameter tuning imports it) and thop / plotly / psutil / tabulate (unused here). These are the
# ones its training and model code import, at versions tried together with recbole 1.2.1:
PINS = [
    "numpy==1.26.4",            # recbole sets np.float = np.float_ (gone in NumPy 2)
    "scipy==1.10.1",            # LightGCN builds its adjacency with dok_matrix._update (gone in 1.11)
    "pandas==2.2.3",
    "scikit-learn==1.5.2",
    "colorlog==4.7.2", "colorama==0.4.4",     # pinned by recbole itself
    "tqdm==4.70.1", "PyYAML==6.0.4", "texttable==1.7.2",
    "tensorboard==2.21.0",      # Trainer opens a SummaryWriter (torch.utils.tensorboard)
]


# --- RecBole's virtualenv -------------------------------------------------------------------

def pip(python: Path, *args: str) -> None:
    r = subprocess.run([str(python), "-m", "pip", "install", "-q", *args], capture_output=True, text=True)
    if r.returncode:
        sys.exit(f"pip install {' '.join(args)} failed:\n{r.stdout[-3000:]}{r.stderr[-3000:]}")


def recbole_python(venv: Path) -> Path:
    """The venv's python, the venv created (or its pins brought up to date) first."""
    python = venv / "bin" / "python"
    stamp = venv / ".bdlm-recbole-pins"
    wanted = "\n".join([TORCH, *PINS, RECBOLE_PIN])
    if python.exists() and stamp.exists() and stamp.read_text() == wanted:
        return python
    print(f"setting up RecBole's virtualenv in {venv} (once, a few minutes)", flush=True)
    if not python.exists():
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    pip(python, TORCH)                        # first and alone, as the main environment does
    got = subprocess.run([str(python), "-c", "import torch; print(torch.__version__)"],
                         capture_output=True, text=True, check=True).stdout.strip()
    constraints = venv / "constraints.txt"    # nothing below may replace torch or NumPy
    constraints.write_text(f"torch=={got}\n{PINS[0]}\n")
    pip(python, "-c", str(constraints), *PINS)
    pip(python, "--no-deps", RECBOLE_PIN)
    stamp.write_text(wanted)
    return python


# --- the two sides ----------------------------------------------------------------------------

def hits_at_1(frame: pd.DataFrame, scores: np.ndarray) -> np.ndarray:
    """Per user, 1 if the positive ranks first (our tie-breaking by stored position)."""
    from bdlm_lib.metrics import positive_ranks
    return (positive_ranks(frame, scores).to_numpy() < 1).astype(float)


def train_ours(name: str, ds, params, frame: pd.DataFrame):
    from bdlm_lib.domain.factory import build_domain_model
    from bdlm_lib.domain.trainer import score_fn, train_domain
    model = build_domain_model(name, ds.n_users, ds.n_items, params, ds=ds)
    history = train_domain(model, ds, params)
    return hits_at_1(frame, score_fn(model, params)(frame)), [h["seconds"] for h in history]


def sasrec_targets(ds, max_len: int) -> int:
    """Targets per epoch of our SASRec: every position of each user's last max_len + 1 train items
    but the first (the positions sequence_logits trains on)."""
    return int(sum(max(min(len(s), max_len + 1) - 1, 0) for s in ds.train_sequences()))


def recbole_config(name: str, ds, params) -> dict:
    """RecBole parameters equal to ours where the models have the same ones."""
    from bdlm_lib.domain.trainer import model_setting
    d = params["domain"]
    common = {"seed": int(params["seed"]), "learning_rate": float(model_setting(params, name, "lr")),
              "weight_decay": float(d["weight_decay"]),
              "train_batch_size": int(model_setting(params, name, "batch_size")),
              "train_neg_sample_args": {"distribution": "uniform", "sample_num": int(d["n_neg"]),
                                        "alpha": 1.0, "dynamic": False, "candidate_num": 0}}
    if d["loss"] != "bpr":
        sys.exit("domain.loss must be bpr: RecBole's BPR and LightGCN have no BCE loss")
    if name == "mf":
        return {**common, "embedding_size": int(d["dim"])}
    if name == "lightgcn":
        return {**common, "embedding_size": int(d["dim"]), "n_layers": int(d["n_layers"]),
                "reg_weight": 0.0}
    # SASRec: our batch is users (windows), RecBole's is samples (one target each): same targets
    # per optimizer step
    steps = math.ceil(ds.n_users / common["train_batch_size"])
    return {**common, "train_batch_size": max(1, round(sasrec_targets(ds, int(d["max_seq_len"])) / steps)),
            "hidden_size": int(d["dim"]), "inner_size": int(d["dim"]), "n_layers": int(d["n_layers"]),
            "n_heads": int(d["n_heads"]), "hidden_dropout_prob": float(d["dropout"]),
            "attn_dropout_prob": float(d["dropout"]), "hidden_act": "gelu", "loss_type": "BPR",
            "MAX_ITEM_LIST_LENGTH": int(d["max_seq_len"])}


def train_recbole(python: Path, name: str, ds, params, atomic: Path, prefix: str, work: Path,
                  threads: int, frame: pd.DataFrame):
    work.mkdir(parents=True, exist_ok=True)
    for f in ("scores.npy", "result.json"):
        (work / f).unlink(missing_ok=True)
    job = {"model": RECBOLE[name], "atomic_dir": str(atomic), "name": prefix,
           "work_dir": str(work), "epochs": int(params["domain"]["epochs"]), "threads": threads,
           "config": recbole_config(name, ds, params)}
    (work / "job.json").write_text(json.dumps(job, indent=1))
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    r = subprocess.run([str(python), str(DRIVER), str(work / "job.json")], cwd=work, env=env,
                       capture_output=True, text=True)
    if r.returncode:
        sys.exit(f"RecBole {RECBOLE[name]} failed (exit {r.returncode}):\n{r.stderr[-4000:]}")
    result = json.loads((work / "result.json").read_text())
    scores = np.load(work / "scores.npy", allow_pickle=False)
    return hits_at_1(frame, scores), result


# --- the run ----------------------------------------------------------------------------------

def candidate_frame(atomic: Path, prefix: str, ds) -> pd.DataFrame:
    """Our test candidates as written in the exported .cand file, in our ids (both sides score
    exactly these rows)."""
    from bdlm_lib.data.export import read_recbole
    cand = read_recbole(atomic, prefix)["test.cand"]
    users = dict(zip(ds.users["raw_id"].astype(str), ds.users["user"]))
    items = dict(zip(ds.items["raw_id"].astype(str), ds.items["item"]))
    return pd.DataFrame({"user": cand["user_id"].map(users).astype(np.int64),
                         "item": cand["item_id"].map(items).astype(np.int64),
                         "label": cand["label"].astype(float).astype(int),
                         "position": cand["position"].astype(float)})


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--dataset", default="ml1m")
    ap.add_argument("--preset", default="paper")
    ap.add_argument("--models", default="lightgcn,mf,sasrec", help="comma-separated: lightgcn, mf, sasrec")
    ap.add_argument("--dim", type=int, default=64, help="embedding size of both sides")
    ap.add_argument("--epochs", type=int, default=5, help="epochs of both sides (no early stopping)")
    ap.add_argument("--max-users", type=int, default=None, help="a seeded sample of users (quick runs)")
    ap.add_argument("--threads", type=int, default=torch.get_num_threads(),
                    help="torch threads of both sides")
    ap.add_argument("--venv", type=Path, default=REPO / ".venv-recbole")
    ap.add_argument("--work-dir", type=Path, default=Path(tempfile.gettempdir()) / "bdlm-bench-recbole")
    args = ap.parse_args()
    models = [m.strip() for m in args.models.split(",") if m.strip()]
    if unknown := [m for m in models if m not in RECBOLE]:
        ap.error(f"--models: unknown {unknown} (lightgcn | mf | sasrec)")

    python = recbole_python(args.venv.resolve())
    work = args.work_dir.resolve()
    torch.set_num_threads(args.threads)

    from bdlm_lib.data import load_dataset
    from bdlm_lib.data.export import export_recbole
    from bdlm_lib.metrics import bootstrap_ci
    from bdlm_lib.params import load_params
    params = load_params(args.dataset, args.preset, overrides={
        "output_dir": str(work / "prepared"), "data.sample_users": args.max_users,
        "domain.dim": args.dim, "domain.epochs": args.epochs,
        "domain.eval_every": args.epochs,     # one validation, after the last epoch: no early stop
        "domain.progress": False, "domain.device": "cpu"})
    ds = load_dataset(params, verbose=False)
    prefix = Path(str(ds.name)).name         # the atomic files' name: <prefix>.train.inter, ...
    atomic = export_recbole(ds, work / "atomic", prefix)
    frame = candidate_frame(atomic, prefix, ds)
    n_boot, alpha = int(params["report"]["n_boot"]), float(params["report"]["alpha"])
    print(f"{prefix}: {ds.n_users} users, {ds.n_items} items, {len(ds.train)} train "
          f"interactions; {frame['user'].nunique()} test users x {len(frame) // frame['user'].nunique()} "
          f"candidates; {args.threads} threads", flush=True)

    def hr(hits):
        lo, hi = bootstrap_ci(hits, n_boot=n_boot, alpha=alpha)
        return hits.mean(), lo, hi

    rows, notes, record = [], [], {}
    for name in models:
        ours_hits, ours_sec = train_ours(name, ds, params, frame)
        rb_hits, rb = train_recbole(python, name, ds, params, atomic, prefix,
                                    work / f"recbole-{RECBOLE[name]}", args.threads, frame)
        (o, olo, ohi), (r, rlo, rhi) = hr(ours_hits), hr(rb_hits)
        so, sr = float(np.median(ours_sec)), float(np.median(rb["epoch_seconds"]))
        rows.append({"model": f"{name} / {RECBOLE[name]}", "dim": args.dim, "epochs": args.epochs,
                     "ours HR@1 [95% CI]": f"{o:.3f} [{olo:.3f}, {ohi:.3f}]",
                     "RecBole HR@1 [95% CI]": f"{r:.3f} [{rlo:.3f}, {rhi:.3f}]",
                     "ours in RecBole CI": "yes" if rlo <= o <= rhi else ("above" if o > rhi else "below"),
                     "ours s/epoch": f"{so:.1f}", "RecBole s/epoch": f"{sr:.1f}",
                     "ours/RecBole": f"{so / sr:.2f}"})
        record[name] = {"ours": {"hr1": [o, olo, ohi], "epoch_seconds": ours_sec},
                        "recbole": {"hr1": [r, rlo, rhi], **rb}}
        if name == "sasrec":
            ours_targets = sasrec_targets(ds, int(params["domain"]["max_seq_len"]))
            notes.append(f"sasrec: targets per epoch: ours {ours_targets} (one window per user), RecBole "
                         f"{rb['n_train_samples']} (one sample per train position, batch {rb['batch_size']})")
        print(f"  {name} done", flush=True)
    # every epoch's time of both sides, beside the table
    (work / "results.json").write_text(json.dumps(record, indent=1))
    print()
    print(pd.DataFrame(rows).to_string(index=False))
    for n in notes:
        print(n)
    print(f"s/epoch: median over epochs; RecBole {rb['versions']['recbole']} with torch "
          f"{rb['versions']['torch']}, ours with torch {torch.__version__}")


if __name__ == "__main__":
    os.environ.setdefault("PYTHONHASHSEED", "0")
    main()
