"""Train one RecBole model on our exported train split, time each epoch, and score our test
candidates with it. benchmarks/bench_recbole.py runs this file inside RecBole's own virtualenv;
it imports recbole, torch and numpy only (never bdlm_lib, which lives in the other environment).

    python recbole_driver.py JOB.json

JOB.json (written by bench_recbole.py):
    model        BPR | LightGCN | SASRec
    atomic_dir   the folder of `bdlm export --format recbole` (<name>.train.inter, .item, .test.cand)
    name         the file prefix in atomic_dir
    work_dir     where RecBole may write (its data folder, tensorboard events, checkpoint folder)
    epochs, threads, config (RecBole parameters: dim, lr, batch, ... as bench_recbole.py maps them)

Writes, in work_dir:
    scores.npy    float64, one score per row of <name>.test.cand, in file order
    result.json   {"epoch_seconds": [...], "losses": [...], "n_train_samples", "batch_size", ...}

RecBole reads our train split only: it is linked as <name>.inter into a data folder of its own
(no valid/test file, so nothing held out can reach training), and the whole of it is RecBole's
training set (split RS [1, 0, 0]). SASRec's augmentation (one sample per train position) is then
RecBole's own, as in any RecBole run.
"""
from __future__ import annotations

import csv
import json
import logging
import os
import sys
import time
import warnings
from importlib.metadata import version
from pathlib import Path

import numpy as np
import torch


def link(src: Path, dst: Path) -> None:
    dst.parent.mkdir(parents=True, exist_ok=True)
    if dst.is_symlink() or dst.exists():
        dst.unlink()
    dst.symlink_to(src.resolve())


def read_tsv(path: Path) -> dict[str, list[str]]:
    """An atomic file as {field name without its type: column of strings}."""
    with open(path, newline="", encoding="utf-8") as f:
        rows = list(csv.reader(f, delimiter="\t", quoting=csv.QUOTE_NONE))
    names = [h.split(":")[0] for h in rows[0]]
    return {n: [r[k] for r in rows[1:]] for k, n in enumerate(names)}


def histories(train: dict[str, list[str]], dataset, max_len: int) -> dict[int, list[int]]:
    """Each user's last `max_len` train items as RecBole ids, in file order (the export writes
    each user's items in our time order; RecBole's own stable sort keeps it for training)."""
    uid = dataset.token2id(dataset.uid_field, np.array(train["user_id"]))
    iid = dataset.token2id(dataset.iid_field, np.array(train["item_id"]))
    out: dict[int, list[int]] = {}
    for u, i in zip(uid.tolist(), iid.tolist()):
        out.setdefault(u, []).append(i)
    return {u: s[-max_len:] for u, s in out.items()}


def score(model, dataset, cand: dict[str, list[str]], train, batch: int = 8192) -> np.ndarray:
    """RecBole's own `predict` on our candidate rows (raw ids mapped through its token2id)."""
    from recbole.data.interaction import Interaction

    users = dataset.token2id(dataset.uid_field, np.array(cand["user_id"]))
    items = dataset.token2id(dataset.iid_field, np.array(cand["item_id"]))
    fields = {model.ITEM_ID: torch.from_numpy(items)}
    if hasattr(model, "ITEM_SEQ"):            # a sequence model: the user is its train history
        max_len = model.max_seq_length
        hist = histories(train, dataset, max_len)
        seq = np.zeros((len(users), max_len), dtype=np.int64)      # RecBole pads on the right
        length = np.zeros(len(users), dtype=np.int64)
        for r, u in enumerate(users.tolist()):
            h = hist[u]
            seq[r, :len(h)], length[r] = h, len(h)
        fields[model.ITEM_SEQ] = torch.from_numpy(seq)
        fields[model.ITEM_SEQ_LEN] = torch.from_numpy(length)
    else:
        fields[model.USER_ID] = torch.from_numpy(users)
    model.eval()
    out = []
    with torch.no_grad():
        for s in range(0, len(users), batch):
            part = Interaction({k: v[s:s + batch] for k, v in fields.items()})
            out.append(model.predict(part).double().numpy())
    return np.concatenate(out)


def main(job_file: str) -> None:
    job = json.loads(Path(job_file).read_text())
    warnings.simplefilter("ignore")           # RecBole's and torch's deprecation notices
    logging.getLogger().setLevel(logging.ERROR)
    torch.set_num_threads(int(job["threads"]))

    from recbole.config import Config
    from recbole.data import create_dataset, create_samplers, get_dataloader
    from recbole.utils import get_model, get_trainer, init_seed

    work, atomic, name = Path(job["work_dir"]), Path(job["atomic_dir"]), job["name"]
    data = work / "data"
    link(atomic / f"{name}.train.inter", data / name / f"{name}.inter")
    link(atomic / f"{name}.item", data / name / f"{name}.item")
    os.chdir(work)                            # RecBole writes log_tensorboard/ under the cwd

    config = Config(model=job["model"], dataset=name, config_dict={
        **job["config"],
        "data_path": str(data), "checkpoint_dir": str(work / "saved"),
        "load_col": {"inter": ["user_id", "item_id", "timestamp"], "item": ["item_id"]},
        "eval_args": {"split": {"RS": [1.0, 0.0, 0.0]}, "order": "TO", "group_by": "user", "mode": "full"},
        "epochs": int(job["epochs"]), "use_gpu": False, "show_progress": False, "state": "ERROR",
        "save_dataset": False, "save_dataloaders": False, "worker": 0,
    })
    init_seed(config["seed"], config["reproducibility"])
    logging.getLogger().setLevel(logging.ERROR)   # Config may have reset it
    dataset = create_dataset(config)
    built = dataset.build()                       # [all of train, empty, empty]
    train_sampler, _, _ = create_samplers(config, dataset, built)
    train_data = get_dataloader(config, "train")(config, built[0], train_sampler, shuffle=True)
    model = get_model(config["model"])(config, train_data.dataset).to(config["device"])
    # importing RecBole's sequential models imports SINE, whose module switches autograd anomaly
    # detection on for the whole process: a debugging mode that makes every backward pass check
    # each gradient for NaN. It is no part of SASRec (nor of any of our models): off again
    anomaly = torch.is_anomaly_enabled()
    torch.autograd.set_detect_anomaly(False)
    trainer = get_trainer(config["MODEL_TYPE"], config["model"])(config, model)

    # Trainer.fit reports epoch times only through its log; _train_epoch is the body of each of
    # fit's epochs (sampling, forward, backward, Adam), so timing it times what fit trains
    seconds, losses = [], []
    for epoch in range(int(job["epochs"])):
        t0 = time.perf_counter()
        loss = trainer._train_epoch(train_data, epoch, show_progress=False)
        seconds.append(time.perf_counter() - t0)
        losses.append(float(sum(loss)) if isinstance(loss, tuple) else float(loss))

    cand = read_tsv(atomic / f"{name}.test.cand")
    train = read_tsv(atomic / f"{name}.train.inter")
    np.save(work / "scores.npy", score(model, dataset, cand, train), allow_pickle=False)
    (work / "result.json").write_text(json.dumps({
        "epoch_seconds": seconds, "losses": losses,
        "n_train_samples": len(built[0]), "batch_size": config["train_batch_size"],
        "anomaly_detection_was_on": anomaly,
        "versions": {p: version(p) for p in ("recbole", "torch", "numpy", "scipy", "pandas")},
    }, indent=1))


if __name__ == "__main__":
    main(sys.argv[1])
