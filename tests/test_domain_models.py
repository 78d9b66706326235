"""Domain models: each of the six trains on real data, beats random ranking on planted
communities, and LightGCN's sparse propagation equals a dense reference."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from bdlm_lib.data import load_dataset
from bdlm_lib.domain import (MODELS, LightGCN, NegativeSampler, build_domain_model,
                             evaluate_domain, train_domain)
from bdlm_lib.domain.denormals import flushing
from bdlm_lib.domain.lightgcn import normalized_adjacency
from bdlm_lib.params import load_params


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def smoke(tmp_path_factory):
    p = load_params("ml1m", "smoke", overrides={
        "output_dir": str(tmp_path_factory.mktemp("out")), "domain.progress": False})
    return p, load_dataset(p, verbose=False)


# the models that learn (popularity only counts: tests/test_domain_runs.py)
TRAINED = [m for m in MODELS if m != "pop"]


@pytest.mark.parametrize("name", TRAINED)
def test_trains_on_ml1m_smoke_and_loss_falls(smoke, name):
    p, ds = smoke
    model = build_domain_model(name, ds.n_users, ds.n_items, p, ds=ds)
    hist = train_domain(model, ds, p)
    assert len(hist) == p.domain.epochs
    assert hist[-1]["loss"] < hist[0]["loss"] - 1e-3, [h["loss"] for h in hist]
    # the DomainModel interface (bdlm_lib/domain/base.py)
    U, I = model.user_embeddings(), model.item_embeddings()
    assert U.shape == (ds.n_users, p.domain.dim) and I.shape == (ds.n_items, p.domain.dim)
    assert U.requires_grad and I.requires_grad
    users, items = torch.tensor([0, 1, 2]), torch.tensor([5, 6, 7])
    f = model.pair_feature(users, items)
    assert f.shape == (3, model.feature_dim)
    assert model(users, items).shape == (3,)
    assert model(users, torch.tensor([[5, 6], [6, 7], [7, 8]])).shape == (3, 2)
    # every item's logit at once (full ranking) = the per-pair logits, inside inference() or not;
    # an inner inference() keeps the outer one's tables
    all_items = torch.arange(ds.n_items).expand(3, -1)
    model.train()
    with model.inference():
        pair = model(users, all_items)
        tables = model._cache
        with model.inference():
            inner = model.score_all(users)
        assert model._cache is tables and not model.training
    torch.testing.assert_close(inner, pair, rtol=1e-5, atol=1e-6)
    assert model.training                                   # back as it was
    model.eval()                                            # (no dropout) outside inference()
    torch.testing.assert_close(model.score_all(users).detach(), pair, rtol=1e-5, atol=1e-6)
    m = evaluate_domain(model, ds, p)
    assert set(m) >= {"split", "max_users", "topk", "binary"}
    assert m["topk"]["n_users"] == p.eval.max_users
    # eval.topk_users reaches the domain evaluation: more users ranked, binary unchanged
    p2 = load_params("ml1m", "smoke", overrides={"output_dir": p.output_dir, "domain.progress": False,
                                                 "eval.topk_users": p.eval.max_users + 5})
    m2 = evaluate_domain(model, ds, p2)
    assert m2["topk"]["n_users"] == p.eval.max_users + 5
    assert m2["binary"] == m["binary"]


def write_communities(folder, n_comm=6, items_per=15, users_per=40, per_user=12, seed=0):
    """A generic-TSV dataset with planted communities: each user interacts only with items of
    their own community, in random order. Titles carry no community signal."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    rows = ["user_id\titem_id\ttimestamp"]
    for c in range(n_comm):
        for k in range(users_per):
            u = f"u{c}_{k}"
            items = rng.choice(items_per, size=per_user, replace=False) + c * items_per
            for t, i in enumerate(items):
                rows.append(f"{u}\ti{i}\t{1000 + t}")
    (folder / "interactions.tsv").write_text("\n".join(rows) + "\n")
    words = ["red", "blue", "green", "gold", "grey", "pink", "teal", "jade", "plum", "sand"]
    titles = ["item_id\ttitle"] + [f"i{i}\t{words[rng.integers(10)]} {words[rng.integers(10)]} no {i}"
                                   for i in range(n_comm * items_per)]
    (folder / "item_titles.tsv").write_text("\n".join(titles) + "\n")
    return folder


@pytest.fixture(scope="module")
def communities(tmp_path_factory):
    root = tmp_path_factory.mktemp("comm")
    folder = write_communities(root / "planted")
    p = load_params(str(folder), "smoke", overrides={
        "output_dir": str(root / "out"), "data.sample_users": None, "eval.max_users": None,
        "domain.progress": False, "domain.epochs": 15, "domain.patience": 15,
        "domain.batch_size": 256, "domain.lr": 0.01, "domain.max_seq_len": 12, "domain.n_layers": 2,
        "domain.per_model.sasrec.batch_size": 64, "domain.per_model.gru4rec.batch_size": 64,
        "domain.per_model.bert4rec.batch_size": 64})
    return p, load_dataset(p, verbose=False)


@pytest.mark.parametrize("name", TRAINED)
def test_beats_random_on_planted_communities(communities, name):
    p, ds = communities
    assert ds.n_users == 240 and ds.n_items == 90
    torch.manual_seed(0)
    model = build_domain_model(name, ds.n_users, ds.n_items, p, ds=ds)
    train_domain(model, ds, p)
    m = evaluate_domain(model, ds, p)
    # random ranking: HR@1 = 1/20; a model that found the communities gets far more
    print(name, m["topk"]["HR@1"], m["binary"]["auc"])
    assert m["topk"]["HR@1"] > 0.25, m["topk"]
    assert m["binary"]["auc"] > 0.75, m["binary"]


def test_lightgcn_propagation_equals_dense_reference():
    rng = np.random.default_rng(0)
    n_u, n_i, K, d = 7, 5, 3, 4
    users = rng.integers(0, n_u, 25)
    items = rng.integers(0, n_i, 25)
    users[:n_u], items[:n_i] = np.arange(n_u), np.arange(n_i)   # no isolated node
    model = LightGCN(n_u, n_i, d, K, users, items).double()
    # dense reference: A = [[0, R], [R^T, 0]] (binary), D^-1/2 A D^-1/2, mean of A_hat^k E
    R = np.zeros((n_u, n_i))
    R[users, items] = 1.0
    A = np.block([[np.zeros((n_u, n_u)), R], [R.T, np.zeros((n_i, n_i))]])
    dinv = 1 / np.sqrt(A.sum(1))
    Ah = torch.tensor(dinv[:, None] * A * dinv[None, :])
    assert torch.allclose(model.adjacency().to_dense(), Ah.float(), atol=1e-6)
    model._adj = model.adjacency().to(torch.float64)
    E = torch.cat([model.user_emb.weight, model.item_emb.weight]).detach().requires_grad_(True)
    ref, x = E, E
    for _ in range(K):
        x = Ah @ x
        ref = ref + x
    ref = ref / (K + 1)
    U, I = model.embeddings()
    assert torch.allclose(torch.cat([U, I]), ref, atol=1e-12)
    # gradients through the custom symmetric SpMM equal dense autograd
    w = torch.randn_like(ref)
    (ref * w).sum().backward()
    (torch.cat([U, I]) * w).sum().backward()
    g = torch.cat([model.user_emb.weight.grad, model.item_emb.weight.grad])
    assert torch.allclose(g, E.grad, atol=1e-12)


def test_domain_device_param_and_a_move_rebuilds_the_graph():
    from bdlm_lib.domain import domain_device
    assert domain_device({"domain": {}}) == torch.device("cpu")          # old params: the CPU
    assert domain_device({"domain": {"device": "auto"}}).type == ("cuda" if torch.cuda.is_available() else "cpu")
    with pytest.raises(ValueError, match="params.domain.device must be auto | cpu"):
        domain_device({"domain": {"device": "gpu"}})
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="'cuda' but torch sees no CUDA device"):
            domain_device({"domain": {"device": "cuda"}})
    rng = np.random.default_rng(0)
    model = LightGCN(6, 5, 4, 2, rng.integers(0, 6, 20), rng.integers(0, 5, 20))
    U0, I0 = model.embeddings()
    assert model._adj is not None
    model.to("cpu")                  # any .to()/.cuda() drops A_hat: it is rebuilt where the weights are
    assert model._adj is None
    U1, I1 = model.embeddings()
    assert torch.equal(U0, U1) and torch.equal(I0, I1)


def test_negative_sampler_avoids_train_items():
    users = np.array([0, 0, 0, 1, 1])
    items = np.array([0, 1, 2, 3, 4])
    s = NegativeSampler(users, items, 6)
    neg = s.sample(np.array([0] * 200 + [1] * 200), 3, np.random.default_rng(0))
    assert neg.shape == (400, 3)
    assert not np.isin(neg[:200], [0, 1, 2]).any() and not np.isin(neg[200:], [3, 4]).any()
    assert set(np.unique(neg[:200])) == {3, 4, 5}
    with pytest.raises(ValueError, match="every item"):
        NegativeSampler(np.zeros(3, int), np.arange(3), 3)


def test_unknown_model_is_one_line_error(smoke):
    p, ds = smoke
    with pytest.raises(ValueError, match="domain.model: unknown model 'svd'"):
        build_domain_model("svd", ds.n_users, ds.n_items, p, ds=ds)


@pytest.mark.parametrize("name", ["sasrec", "bert4rec"])
def test_packed_transformer_equals_torch_layers_on_the_padded_window(name):
    # histories of 0..12 items in a window of 8: empty, short, and cut ones, so that the
    # length-sorted attention groups have different lengths
    from bdlm_lib.domain import BERT4Rec, SASRec
    from bdlm_lib.domain.sequential import encode_padded
    torch.manual_seed(0)
    seqs = [[(3 * k + j) % 30 for j in range(n)] for k, n in enumerate((0, 1, 2, 3, 5, 7, 8, 12, 4))]
    model = (SASRec if name == "sasrec" else BERT4Rec)(len(seqs), 30, 16, sequences=seqs,
                                                      max_seq_len=8, n_layers=2, n_heads=2).eval()
    h = model.history
    real = h > 0
    real[:, -1] = True                       # the user's vector: always computed
    out, ref = model.encode(h), encode_padded(model, h)      # eval mode: no dropout
    assert torch.allclose(out[real], ref[real], atol=1e-5)
    assert (out[~real] == 0).all()
    # and the gradients of the real positions' outputs
    w = torch.randn_like(ref)
    g_out = torch.autograd.grad((out * w)[real].sum(), list(model.encoder.parameters()))
    g_ref = torch.autograd.grad((ref * w)[real].sum(), list(model.encoder.parameters()))
    for a, b in zip(g_out, g_ref):
        assert torch.allclose(a, b, atol=1e-5)


def test_gru4rec_reads_each_history_from_its_first_item():
    from bdlm_lib.domain import GRU4Rec
    torch.manual_seed(0)
    seqs = [[1, 2, 3], [4], [5, 6, 7, 8, 9, 10, 11, 12, 13], [2, 9], []]
    model = GRU4Rec(len(seqs), 20, 8, sequences=seqs, max_seq_len=6).eval()
    out = model.encode(model.history)
    for r, s in enumerate(seqs[:4]):
        s = s[-6:]
        ref, _ = model.gru(model.item_emb(torch.tensor(s).unsqueeze(0) + 1))   # no padding at all
        assert torch.allclose(out[r, 6 - len(s):], ref[0], atol=1e-6), r
        assert (out[r, :6 - len(s)] == 0).all()
    assert torch.isfinite(out[4]).all()      # an empty history still gives a (padding) vector


# the smallest float32 denormal, made from its bits (a float literal would itself be flushed)
_DENORMALS = torch.ones(1 << 20, dtype=torch.int32).view(torch.float32)


def _zeros() -> int:
    # with two threads the product is split between the caller and an OpenMP worker: all of it
    # is 0 only if the worker flushes too (the caller's flag alone does not reach it)
    return int((_DENORMALS * 2 == 0).sum())


@pytest.mark.parametrize("name", ["sasrec", "mf"])
def test_denormals_are_flushed_while_a_transformer_trains(smoke, name):
    if not torch.set_flush_denormal(False):
        pytest.skip("this CPU cannot flush denormals")
    p, ds = smoke
    p = load_params("ml1m", "smoke", overrides={"output_dir": p.output_dir, "domain.progress": False,
                                               "domain.epochs": 1})
    seen = []
    n = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        assert _zeros() == 0                     # the caller's worker team exists before training
        model = build_domain_model(name, ds.n_users, ds.n_items, p, ds=ds)
        train_domain(model, ds, p, callback=lambda epoch, rec: seen.append((flushing(), _zeros())))
        flushes = name == "sasrec"
        assert seen == [(flushes, len(_DENORMALS) if flushes else 0)]
        assert not flushing() and _zeros() == 0  # each thread's setting is back: off ...
        torch.set_flush_denormal(True)           # ... or on, for the caller only
        train_domain(build_domain_model(name, ds.n_users, ds.n_items, p, ds=ds), ds, p)
        assert flushing() and _zeros() < len(_DENORMALS)
    finally:
        torch.set_flush_denormal(False)
        torch.set_num_threads(n)


def test_lightgcn_training_logits_and_gradients_equal_the_plain_dot_products(monkeypatch):
    """A training batch ([B, K] candidates) goes through `pair_dot` (chunked forward, sparse
    backward): logits and the tables' gradients equal `(U[u] * I[i]).sum(-1)` under autograd,
    with repeated users and items and a batch longer than one chunk."""
    from bdlm_lib.domain import pair_dot as pd_mod
    monkeypatch.setattr(pd_mod, "CHUNK", 16)
    rng = np.random.default_rng(1)
    n_u, n_i = 9, 7
    users, items = rng.integers(0, n_u, 40), rng.integers(0, n_i, 40)
    users[:n_u], items[:n_i] = np.arange(n_u), np.arange(n_i)
    model = LightGCN(n_u, n_i, 6, 2, users, items).double()
    model._adj = model.adjacency().to(torch.float64)
    u = torch.as_tensor(rng.integers(0, n_u, 50))                       # 50 pairs: 4 chunks
    cand = torch.as_tensor(rng.integers(0, n_i, (50, 3)))
    w = torch.randn(50, 3, dtype=torch.float64)
    fast = model(u, cand)
    assert type(fast.grad_fn).__name__ == "PairDotBackward"                # the fast path was taken
    (fast * w).sum().backward()
    g_fast = [p.grad.clone() for p in (model.user_emb.weight, model.item_emb.weight)]
    model.zero_grad()
    U, I = model.embeddings()
    plain = (U[u].unsqueeze(1) * I[cand]).sum(-1)
    (plain * w).sum().backward()
    assert torch.allclose(fast, plain, atol=1e-12)
    for a, p in zip(g_fast, (model.user_emb.weight, model.item_emb.weight)):
        assert torch.allclose(a, p.grad, atol=1e-12)
    with model.inference():                                             # scoring: the plain path
        assert torch.allclose(model(u, cand), plain.detach(), atol=1e-12)
