"""Domain runs: artefacts, save -> load -> identical scores, resume after an interruption
reaches the uninterrupted weights, same seed -> same weights."""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from bdlm_lib.data import load_dataset
from bdlm_lib.domain import MODELS, build_domain_model, load_domain, run_domain, train_domain
from bdlm_lib.domain.trainer import CHECKPOINT
from bdlm_lib.params import load_params
from bdlm_lib.runs import read_json


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def smoke(tmp_path_factory):
    out = tmp_path_factory.mktemp("out")
    p = load_params("ml1m", "smoke", overrides={"output_dir": str(out), "domain.progress": False})
    return p, load_dataset(p, verbose=False)


def with_model(p, name, **over):
    q = load_params("ml1m", "smoke", overrides={"output_dir": p.output_dir, "domain.progress": False,
                                                "domain.model": name, **over})
    return q


def same_weights(a, b) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


@pytest.mark.parametrize("name", [m for m in MODELS if m != "pop"])
def test_run_artefacts_and_save_load_identical_scores(smoke, name):
    p, ds = smoke
    model, metrics, run_dir = run_domain(with_model(p, name), ds)
    assert run_dir.parent == Path(p.output_dir) / "ml1m" / "domain" and run_dir.name.startswith(name)
    for f in ("metrics.json", "params.yaml", "environment.json", "model.safetensors",
              "embeddings.safetensors", "history.json", "training.png"):
        assert (run_dir / f).exists(), f
    assert not (run_dir / CHECKPOINT).exists() and not (run_dir / ".running").exists()
    m = read_json(run_dir / "metrics.json")
    assert m["topk"]["HR@1"] == metrics["topk"]["HR@1"] and {"topk", "binary", "split"} <= set(m)
    hist = read_json(run_dir / "history.json")
    assert len(hist) == m["epochs_run"] and {"loss", "valid_hr1", "seconds"} <= set(hist[0])
    emb = load_file(run_dir / "embeddings.safetensors")
    assert emb["user"].shape == (ds.n_users, p.domain.dim) and emb["item"].shape == (ds.n_items, p.domain.dim)

    loaded = load_domain(run_dir).to(model.device)   # load_domain gives a CPU model; the run's is on domain.device
    assert type(loaded) is type(model) and same_weights(loaded, model)
    frame = ds.topk("test", max_users=p.eval.max_users)
    a = model.predict(frame.user.to_numpy(), frame.item.to_numpy())
    b = loaded.predict(frame.user.to_numpy(), frame.item.to_numpy())

    def same(x, y) -> bool:     # bit-identical on the CPU; CUDA's sparse matmul (LightGCN) is not
        return bool((x == y).all()) if model.device.type == "cpu" else np.allclose(x, y, rtol=1e-5, atol=1e-6)
    assert same(a, b)
    with loaded.inference():
        U, _ = loaded.embeddings()
    assert same(U.detach().cpu().numpy(), emb["user"].numpy())
    # the header alone (no params.yaml beside it) is enough to rebuild the model
    if name in ("lightgcn", "bert4rec"):
        alone = Path(p.output_dir) / f"alone-{name}"
        alone.mkdir()
        (alone / "model.safetensors").write_bytes((run_dir / "model.safetensors").read_bytes())
        again = load_domain(alone).to(model.device)
        assert same(again.predict(frame.user.to_numpy(), frame.item.to_numpy()), a)
    with pytest.raises(FileNotFoundError, match="model.safetensors: missing"):
        load_domain(Path(p.output_dir) / "nowhere")
    # a finished run is never overwritten: a second run goes to a sibling folder
    if name == "mf":
        _, _, second = run_domain(with_model(p, name), ds)
        assert second != run_dir and second.name == "mf-2"


def test_popularity_ranks_by_train_count_and_trains_nothing(smoke):
    p, ds = smoke
    model, metrics, run_dir = run_domain(with_model(p, "pop"), ds)
    assert metrics["epochs_run"] == 0 and read_json(run_dir / "history.json") == []
    assert (run_dir / "training.png").exists()           # a panel that says there was no training
    frame = ds.topk("test", max_users=p.eval.max_users)
    counts = np.bincount(ds.train["item"].to_numpy(), minlength=ds.n_items)
    scores = load_domain(run_dir).predict(frame.user.to_numpy(), frame.item.to_numpy())
    # the same ranking as the raw counts, for every user (ties included)
    by_count = counts[frame.item.to_numpy()]
    assert np.allclose(scores, np.log1p(by_count), atol=1e-6)
    top = frame.assign(s=scores).sort_values(["user", "s"], ascending=[True, False]).groupby("user").head(1)
    assert (counts[top.item.to_numpy()] == frame.assign(c=by_count).groupby("user").c.max().to_numpy()).all()


class Interrupted(Exception):
    pass


@pytest.mark.parametrize("name", ["ncf", "lightgcn", "bert4rec"])
def test_resume_after_interruption_gives_same_weights(smoke, tmp_path, name):
    p, ds = smoke
    q = with_model(p, name, **{"domain.epochs": 4, "domain.patience": 10})
    torch.manual_seed(123)     # the trainer must not depend on the global RNG state
    ref = build_domain_model(name, ds.n_users, ds.n_items, q, ds=ds)
    ref_hist = train_domain(ref, ds, q, tmp_path / "full")

    def crash(epoch, rec):
        if epoch == 1:
            raise Interrupted

    m1 = build_domain_model(name, ds.n_users, ds.n_items, q, ds=ds)
    init = {k: v.clone() for k, v in m1.state_dict().items()}
    with pytest.raises(Interrupted):
        train_domain(m1, ds, q, tmp_path / "cut", callback=crash)
    assert (tmp_path / "cut" / CHECKPOINT).exists()
    # "a new process": a fresh model object, its weights scrambled, must continue from the checkpoint
    m2 = build_domain_model(name, ds.n_users, ds.n_items, q, ds=ds)
    with torch.no_grad():
        for prm in m2.parameters():
            prm.add_(torch.randn_like(prm))
    hist = train_domain(m2, ds, q, tmp_path / "cut")
    assert [h["epoch"] for h in hist] == [0, 1, 2, 3]
    assert [h["loss"] for h in hist] == [h["loss"] for h in ref_hist]
    assert same_weights(m2, ref)
    assert not all(torch.equal(init[k], v) for k, v in m2.state_dict().items())


def test_checkpoint_from_other_params_is_refused(smoke, tmp_path):
    p, ds = smoke
    q = with_model(p, "mf", **{"domain.epochs": 1})
    train_domain(build_domain_model("mf", ds.n_users, ds.n_items, q, ds=ds), ds, q, tmp_path)
    q2 = with_model(p, "mf", **{"domain.epochs": 1, "domain.lr": 0.5})
    with pytest.raises(ValueError, match="checkpoint.safetensors: checkpoint was made with other"):
        train_domain(build_domain_model("mf", ds.n_users, ds.n_items, q2, ds=ds), ds, q2, tmp_path)


def test_checkpoint_follows_only_its_own_models_overrides(smoke, tmp_path):
    """Another model's per_model override does not make a checkpoint stale (a GMF run resumes
    after LightGCN's batch size is tuned); the model's own override does."""
    p, ds = smoke
    q = with_model(p, "mf", **{"domain.epochs": 1, "domain.patience": 5})
    train_domain(build_domain_model("mf", ds.n_users, ds.n_items, q, ds=ds), ds, q, tmp_path)
    other = with_model(p, "mf", **{"domain.epochs": 2, "domain.patience": 5,
                                   "domain.per_model.lightgcn.batch_size": 777})
    hist = train_domain(build_domain_model("mf", ds.n_users, ds.n_items, other, ds=ds), ds, other, tmp_path)
    assert [h["epoch"] for h in hist] == [0, 1]              # epoch 0 came from the checkpoint
    own = with_model(p, "mf", **{"domain.epochs": 3, "domain.per_model.mf.batch_size": 777})
    with pytest.raises(ValueError, match="checkpoint was made with other"):
        train_domain(build_domain_model("mf", ds.n_users, ds.n_items, own, ds=ds), ds, own, tmp_path)


def test_early_stopping_waits_for_min_epochs(smoke):
    """With lr 0 validation HR@1 never improves after epoch 0: patience 1 stops after epoch 1; with
    min_epochs 3 (domain-wide, or for this model only) the first 3 epochs are not monitored, epoch 3
    is the first best and patience 2 stops after epoch 5. Another model's floor does not apply. A
    pretrained run made before the key existed reads as min_epochs 0 (and null per model)."""
    from bdlm_lib.joint.run import _model_keys
    p, ds = smoke
    runs = {}
    for case, over in (("none", {"domain.patience": 1}),
                       ("wide", {"domain.patience": 2, "domain.min_epochs": 3}),
                       ("mf", {"domain.patience": 2, "domain.per_model.mf.min_epochs": 3}),
                       ("other", {"domain.patience": 1, "domain.per_model.lightgcn.min_epochs": 3})):
        q = with_model(p, "mf", **{"domain.epochs": 8, "domain.lr": 0.0, **over})
        hist = train_domain(build_domain_model("mf", ds.n_users, ds.n_items, q, ds=ds), ds, q)
        assert len({h["valid_hr1"] for h in hist}) == 1       # nothing learned: a flat validation
        runs[case] = [h["epoch"] for h in hist]
        assert [h["monitored"] for h in hist] == [h["epoch"] >= (3 if case in ("wide", "mf") else 0) for h in hist]
    assert runs == {"none": [0, 1], "wide": [0, 1, 2, 3, 4, 5], "mf": [0, 1, 2, 3, 4, 5], "other": [0, 1]}
    old = {k: v for k, v in p.domain.items() if k != "min_epochs"}
    old["per_model"] = {m: {k: v for k, v in e.items() if k != "min_epochs"} for m, e in old["per_model"].items()}
    assert _model_keys(old) == _model_keys(p.domain) and p.domain.min_epochs == 0
    assert _model_keys(old) != _model_keys({**p.domain, "min_epochs": 10})


def test_best_state_is_picked_after_min_epochs(smoke):
    """The restored weights are those of the best validation among the monitored epochs only (an
    unmonitored early peak is not kept), and with a floor above `epochs` the last epoch's."""
    p, ds = smoke
    for epochs, floor in ((6, 3), (3, 5)):
        q = with_model(p, "mf", **{"domain.epochs": epochs, "domain.patience": 10, "domain.min_epochs": floor})
        model = build_domain_model("mf", ds.n_users, ds.n_items, q, ds=ds)
        snaps = {}
        hist = train_domain(model, ds, q, callback=lambda e, rec: snaps.update(
            {e: {k: v.detach().clone() for k, v in model.state_dict().items()}}))
        monitored = [h for h in hist if h["monitored"]]
        assert [h["epoch"] for h in monitored] == list(range(min(floor, epochs - 1), epochs))
        best = max(monitored, key=lambda h: h["valid_hr1"])["epoch"]
        assert all(torch.equal(v, snaps[best][k]) for k, v in model.state_dict().items())
        assert not all(torch.equal(v, snaps[0][k]) for k, v in model.state_dict().items())


@pytest.mark.parametrize("name", ["sasrec", "gru4rec", "mf"])
def test_same_seed_same_weights(smoke, name):
    p, ds = smoke
    q = with_model(p, name, **{"domain.epochs": 2})
    models = []
    for seed_noise in (1, 2):
        torch.manual_seed(seed_noise)   # unrelated global state must not matter
        q2 = with_model(p, name, **{"domain.epochs": 2})
        m = build_domain_model(name, ds.n_users, ds.n_items, q2, ds=ds)
        train_domain(m, ds, q2)
        models.append(m)
    assert same_weights(*models)
    q3 = with_model(p, name, **{"domain.epochs": 2, "seed": q.seed + 1})
    other = build_domain_model(name, ds.n_users, ds.n_items, q3, ds=ds)
    train_domain(other, ds, q3)
    assert not same_weights(models[0], other)


def test_concurrent_runs_do_not_share_a_folder(tmp_path):
    import subprocess
    import sys

    from bdlm_lib.domain.run import LOCK, claim_run_dir
    busy = tmp_path / "lightgcn"
    busy.mkdir()
    (busy / LOCK).write_text(str(os.getppid()))          # a live process is training here
    assert claim_run_dir(tmp_path, "lightgcn") == tmp_path / "lightgcn-2"
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True).stdout.strip()
    (busy / LOCK).write_text(dead)                       # its process died: resume there
    assert claim_run_dir(tmp_path, "lightgcn") == busy
    assert (busy / LOCK).read_text() == str(os.getpid())
