"""Joint training (bdlm_lib.joint): the sharing module, λ = 0 neutrality, the pull of λ > 0, the
cascade, exact resume, the variants, and an end-to-end run — on the synthetic fixture dataset
(39 users, 43 items) with a tiny random Llama (2 layers, h = 64) that uses the real SmolLM2
tokenizer, so the prompts, added tokens and positions are the real ones."""
from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from safetensors.torch import load_file

from bdlm_lib.joint import (EnhancedDomainModel, InformationSharingModule, build_joint,
                            make_cascade_score_fn, mutual_learning_loss, run_bdlm)
from bdlm_lib.joint.trainer import CKPT

SMOL = Path.home() / ".cache" / "bdlm" / "models" / "smollm2-135m-instruct"


def tiny_llama(folder: Path) -> Path:
    """A random 2-layer Llama (h = 64) with the SmolLM2 tokenizer, saved as a model folder."""
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM
    tok = AutoTokenizer.from_pretrained(SMOL)
    cfg = LlamaConfig(vocab_size=len(tok), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=True,
                      max_position_embeddings=2048, bos_token_id=tok.bos_token_id,
                      eos_token_id=tok.eos_token_id)
    torch.manual_seed(0)
    LlamaForCausalLM(cfg).save_pretrained(folder)
    tok.save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def world(tmp_path_factory, raw_data):
    if not (SMOL / "tokenizer.json").exists():
        pytest.skip("SmolLM2 tokenizer not converted yet (run bdlm once)")
    from conftest import write_format
    root = tmp_path_factory.mktemp("joint")
    return {"data": write_format("tsv", root / "raw", raw_data), "llm": tiny_llama(root / "tiny"),
            "root": root}


@pytest.fixture
def params(world, tmp_path):
    from bdlm_lib import load_params

    def make(**over):
        base = {"output_dir": str(tmp_path / "out"), "data.sample_users": None,
                "llm.backbone": str(world["llm"]), "joint.max_steps": 3, "domain.progress": False}
        base.update({k.replace("__", "."): v for k, v in over.items()})
        return load_params(str(world["data"]), "smoke", base)
    return make


def make_trainer(p, run_dir=None, domain_seed=0):
    """Fresh, identical pieces every call: the saved tiny LLM and a seeded domain model."""
    from bdlm_lib.data import load_dataset
    from bdlm_lib.domain import build_domain_model
    from bdlm_lib.llm.backbone import load_backbone
    ds = load_dataset(p, verbose=False)
    torch.manual_seed(domain_seed)
    dom = build_domain_model(p.domain.model, ds.n_users, ds.n_items, p, ds=ds)
    llm, tok = load_backbone(p.llm.backbone)
    return build_joint(p, ds, dom, llm, tok, run_dir=run_dir, progress=False), ds


# ---------------------------------------------------------------------------- the module itself

def test_sharing_module_copy_ema_and_loss():
    torch.manual_seed(0)
    M = InformationSharingModule(torch.zeros(5, 3), torch.zeros(4, 3), "copy")
    assert not M.M_U.requires_grad and "M_U" in dict(M.named_buffers())
    rows = torch.randn(3, 3)
    M.write([1, 3, 1], [], rows, None)             # duplicate id: first occurrence wins
    assert torch.equal(M.M_U[1], rows[0]) and torch.equal(M.M_U[3], rows[1])
    assert torch.equal(M.M_U[0], torch.zeros(3))
    E = InformationSharingModule(torch.ones(5, 3), torch.ones(4, 3), "ema", momentum=0.75)
    E.write([2], [0], torch.zeros(1, 3), torch.full((1, 3), 5.0))
    assert torch.allclose(E.M_U[2], torch.full((3,), 0.75)) and torch.allclose(E.M_I[0], torch.full((3,), 2.0))
    ru, ri = torch.randn(2, 3, requires_grad=True), torch.randn(2, 3, requires_grad=True)
    loss = mutual_learning_loss(ru, ri, M, [1, 3], [0, 2])
    ref = ((ru - M.M_U[[1, 3]]) ** 2).mean() + ((ri - M.M_I[[0, 2]]) ** 2).mean()
    assert torch.allclose(loss, ref)
    loss.backward()
    assert ru.grad is not None and M.M_U.grad is None
    with pytest.raises(ValueError, match="ml_update"):
        InformationSharingModule(torch.zeros(1, 2), torch.zeros(1, 2), "mean")


def test_pe_makes_llm_rows_m_and_mapped_domain_equal(params):
    tr, ds = make_trainer(params())
    from bdlm_lib.joint.llm_io import id_tables
    LU, LI = id_tables(tr.llm, tr.tm)
    assert LU.shape == (ds.n_users, 64) and tr.proj.linear is not None   # d = 32 != h = 64: learned P
    assert torch.allclose(LU, tr.M.M_U.cpu(), atol=1e-5) and torch.allclose(LI, tr.M.M_I.cpu(), atol=1e-5)
    assert tr.distances()["dist_llm_domain"] < 1e-8


# ---------------------------------------------------------------------------- λ

def _grads_after_step(p, perturb: bool):
    """Gradients of one joint step's LLM step and domain step. With `perturb`, M is moved by a
    random offset before each of the two steps (the LLM step's copy-write overwrites the batch's
    rows, so the domain step gets its own perturbation)."""
    from bdlm_lib.joint.trainer import step_seed
    tr, _ = make_trainer(p)
    gen = torch.Generator().manual_seed(123)

    def shake():
        if perturb:
            with torch.no_grad():
                tr.M.M_U.add_(torch.randn(tr.M.M_U.shape, generator=gen).to(tr.M.M_U.device))
                tr.M.M_I.add_(torch.randn(tr.M.M_I.shape, generator=gen).to(tr.M.M_I.device))
    torch.manual_seed(step_seed(tr.seed, 0))
    rng = np.random.default_rng(step_seed(tr.seed, 0))
    prompts = [tr.samples[n] for n in tr.schedule[0]]
    shake()
    _, out = tr.llm_step(prompts)
    llm = {n: q.grad.clone() for n, q in tr.llm.named_parameters() if q.grad is not None}
    shake()
    tr.domain_step(prompts, out, rng)
    dom = {n: q.grad.clone() for n, q in tr.enhanced.named_parameters() if q.grad is not None}
    dom.update({f"P.{n}": q.grad.clone() for n, q in tr.proj.named_parameters() if q.grad is not None})
    return llm, dom


# CUT: the cpu preset's LLM side (top layers + new rows, input side cut: sft.rows_from_context
# false) - there only L_ML^L's read of the rows connects M to the LLM, so the check below is that
# λ·L_ML^L still reaches the rows
CUT = {"sft__trainable": "top", "sft__top_layers": 1, "sft__rows_from_context": False}


@pytest.mark.parametrize("lam,over", [(0.0, {}), (1.0, {}), (0.0, CUT), (1.0, CUT)],
                         ids=["lam0", "lam1", "lam0-cut", "lam1-cut"])
def test_lambda_zero_module_has_no_effect_on_gradients(params, lam, over):
    p = params(joint__lambda_ml=lam, **over)
    a_llm, a_dom = _grads_after_step(p, perturb=False)
    b_llm, b_dom = _grads_after_step(p, perturb=True)
    assert a_llm.keys() == b_llm.keys() and len(a_llm) > 0
    same_llm = all(torch.equal(a_llm[k], b_llm[k]) for k in a_llm)
    same_dom = all(torch.equal(a_dom[k], b_dom[k]) for k in a_dom if k in b_dom) and a_dom.keys() == b_dom.keys()
    if lam == 0.0:
        assert same_llm and same_dom
    else:   # the control: with λ > 0 the perturbed M does change both sides' gradients
        assert not same_llm and not same_dom
        assert "P.linear.weight" in b_dom


def test_lambda_positive_pulls_llm_and_domain_together(params):
    """w/o PE: the LLM's id rows start random, away from the mapped domain rows. With λ > 0 the
    LLM↔domain distance falls step by step; with λ = 0 (same lr, same batches) it grows.
    (λ is large here because Eq. 7/8's MSE averages over every row and dimension: on this toy
    model the pull per coordinate is tiny next to the SFT gradient at λ ~ 1.)"""
    ends = {}
    for lam in (0.0, 100.0):
        p = params(llm__preload=False, joint__lambda_ml=lam, joint__max_steps=4, joint__llm_lr=1e-2,
                   joint__domain_lr=1e-2, joint__batch_size=4)
        tr, _ = make_trainer(p)
        d0 = tr.distances()["dist_llm_domain"]
        dist = [tr.run_step(g)["dist_llm_domain"] for g in range(4)]
        ends[lam] = dist[-1]
        if lam > 0:
            assert all(b < a for a, b in zip([d0] + dist, dist)) and dist[-1] < 0.8 * d0
        else:
            assert dist[-1] > d0
    assert ends[100.0] < 0.7 * ends[0.0]


# ---------------------------------------------------------------------------- cascade

def test_cascade_scores_all_20_candidates_from_item_tokens(params):
    tr, ds = make_trainer(params())
    with torch.no_grad():                       # make the h_L half of the head matter
        tr.enhanced.head.weight[:, -64:].normal_()
    frame = ds.topk("test")
    scores = make_cascade_score_fn(tr.llm, tr.builder, tr.enhanced, 8, progress=False)(frame)
    assert len(scores) == len(frame) and np.isfinite(scores).all()
    per_user = frame.assign(s=scores).groupby("user")["s"]
    assert (per_user.size() == 20).all() and (per_user.nunique() == 20).all()
    # the cascade's score of one candidate = head([f_D ; h_L at that candidate's <iid> token])
    u = int(frame["user"].iloc[0])
    cands = frame[frame.user == u]["item"].to_numpy()
    prompt = tr.builder.topk(u, cands)
    ids = torch.tensor([prompt.input_ids])
    with torch.no_grad():
        hid = tr.llm(input_ids=ids, output_hidden_states=True).hidden_states[-1][0]
    k = 7
    pos = prompt.position_of(int(cands[k]), "candidate")
    assert prompt.input_ids[pos] == tr.tm.item_id(int(cands[k]))
    with torch.no_grad(), tr.enhanced.domain.inference():
        ref = tr.enhanced([u], [int(cands[k])], hid[pos][None]).item()
    assert math.isclose(scores[frame.index[frame.user == u][k]], ref, rel_tol=1e-4, abs_tol=1e-4)
    # binary (a user's prompts share their history prefix): head([f_D ; h_L at the asked item's
    # token]) with h_L from a full pass of each prompt
    bframe = ds.binary("test")
    bs = make_cascade_score_fn(tr.llm, tr.builder, tr.enhanced, 8, progress=False)(bframe)
    assert np.isfinite(bs).all() and np.std(bs) > 0
    for n in range(4):
        u, i = int(bframe["user"].iloc[n]), int(bframe["item"].iloc[n])
        prompt = tr.builder.binary(u, i)
        with torch.no_grad(), tr.enhanced.domain.inference():
            hid = tr.llm(input_ids=torch.tensor([prompt.input_ids]), output_hidden_states=True).hidden_states[-1][0]
            ref = tr.enhanced([u], [i], hid[prompt.position_of(i, "target")][None]).item()
        assert math.isclose(bs[n], ref, rel_tol=1e-4, abs_tol=1e-4)


def test_shared_pass_scores_both_sides_as_their_own_passes_do(params, tmp_path):
    """finish_run's one-pass evaluation (both sides' best state at the same step) must give the
    scores of the two separate passes, for top-K and binary frames."""
    from bdlm_lib.joint.cascade import make_shared_score_fns
    from bdlm_lib.llm.scoring import make_score_fn
    tr, ds = make_trainer(params(joint__max_steps=2, joint__eval_every=2), run_dir=tmp_path / "run")
    tr.train()
    assert tr.history["best"]["llm"]["step"] == tr.history["best"]["drs"]["step"] == 2
    with torch.no_grad():                       # make the h_L half of the enhanced head matter
        tr.enhanced.head.weight[:, -64:].normal_()
    fn_llm, fn_drs = make_shared_score_fns(tr.eval_model(), tr.builder, tr.enhanced, 4, progress=False)
    ref_llm = make_score_fn(tr.eval_model(), tr.builder, 4, progress=False)
    ref_drs = make_cascade_score_fn(tr.eval_model(), tr.builder, tr.enhanced, 4, progress=False)
    for frame in (ds.topk("test"), ds.binary("test")):
        got_drs, got_llm = fn_drs(frame), fn_llm(frame)   # the drs call runs the pass for both
        assert np.isfinite(got_llm).all() and np.std(got_llm) > 0
        np.testing.assert_allclose(got_llm, ref_llm(frame), rtol=1e-4, atol=1e-5)
        np.testing.assert_allclose(got_drs, ref_drs(frame), rtol=1e-4, atol=1e-5)


def test_enhanced_model_starts_as_the_domain_model_and_is_detached(params):
    from bdlm_lib.data import load_dataset
    from bdlm_lib.domain import build_domain_model
    p = params()
    ds = load_dataset(p, verbose=False)
    for name in ("lightgcn", "ncf", "mf"):
        torch.manual_seed(0)
        dom = build_domain_model(name, ds.n_users, ds.n_items, p, ds=ds).eval()
        enh = EnhancedDomainModel(dom, 8)
        u, i = torch.arange(5), torch.arange(5) + 3
        h = torch.randn(5, 8, requires_grad=True)
        assert torch.allclose(enh(u, i, h), dom(u, i), atol=1e-5), name
        enh.loss(u, i, h, torch.ones(5)).backward()
        assert h.grad is None                    # Eq. 6 trains the domain side only
        assert dom.user_emb.weight.grad is not None


# ---------------------------------------------------------------------------- resume

def test_interrupted_joint_run_resumed_equals_uninterrupted(params, tmp_path):
    p = params(joint__max_steps=4, joint__eval_every=2, joint__checkpoint_every=1, joint__batch_size=4,
               joint__valid_users=10)
    full, _ = make_trainer(p, run_dir=tmp_path / "full")
    h_full = full.train()
    part, _ = make_trainer(p, run_dir=tmp_path / "cut")
    part.train(stop_after=3)
    assert (tmp_path / "cut" / CKPT / "trainer.json").exists() and part.step == 3
    resumed, _ = make_trainer(p, run_dir=tmp_path / "cut")
    h_res = resumed.train()
    assert h_res["resumed_from_step"] == 3
    key = lambda h: [(r["step"], r["L_LLM"], r["L_D"], r["L_ML^L"], r["L_ML^D"]) for r in h["steps"]]
    assert key(h_res) == key(h_full)
    assert h_res["valid"] == h_full["valid"] and h_res["best"] == h_full["best"]
    for a, b in ((full.llm_state(), resumed.llm_state()), (full.domain_state(), resumed.domain_state()),
                 (full.M.state_dict(), resumed.M.state_dict())):
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


# ---------------------------------------------------------------------------- variants

@pytest.mark.parametrize("over,expect", [
    ({"joint__joint": False}, "woJL"),
    ({"llm__extend_tokens": False}, "woET"),
    ({"domain__model": "ncf", "joint__ml_update": "ema"}, "ncf"),
])
def test_variants_train(params, over, expect):
    from bdlm_lib.joint import variant_name
    p = params(joint__max_steps=2, joint__valid_users=6, joint__batch_size=4, **over)
    assert expect in variant_name(p)
    tr, _ = make_trainer(p)
    hist = tr.train()
    assert len(hist["steps"]) == tr.n_global == (4 if not p.joint.joint else 2)
    assert all(math.isfinite(r["L_LLM"]) for r in hist["steps"])
    assert any(r.get("L_D") is not None and math.isfinite(r["L_D"]) for r in hist["steps"])
    if not p.llm.extend_tokens:
        assert tr.tm is None and tr.M is None and all(r["L_ML^L"] is None for r in hist["steps"])
    if not p.joint.joint:   # LLM phase first (no domain loss), then the domain phase on frozen h_L
        assert [r["phase"] for r in hist["steps"]] == ["llm", "llm", "domain", "domain"]
    assert set(hist["best"]) == {"llm", "drs"}


# ---------------------------------------------------------------------------- end to end

def test_run_bdlm_writes_both_sides_and_artefacts(params):
    # eval.topk_users: 16 users ranked, the binary task on 12 of them (both sides, every row)
    p = params(joint__max_steps=2, eval__max_users=12, eval__topk_users=16)
    m_llm, m_drs, run_dir = run_bdlm(p, progress=False)
    assert run_dir.parent.name == "bdlm" and run_dir.name == "lightgcn-lam0.1"
    for m in (m_llm, m_drs):
        assert m["topk"]["n_users"] == 16 and 0 <= m["topk"]["HR@1"] <= m["topk"]["HR@2"] <= 1
        assert 0 <= m["binary"]["f1"] <= 1 and m["binary"]["n"] == 12 * 2
    saved = json.loads((run_dir / "metrics.json").read_text())
    assert saved["llm"]["topk"] == m_llm["topk"] and saved["topk"] == m_drs["topk"]
    for f in ("llm_rows", "domain", "sharing"):
        t = load_file(str(run_dir / f"{f}.safetensors"))
        assert t["user"].shape[1] == 64 and {"user", "item"} <= set(t)
    hist = json.loads((run_dir / "history.json").read_text())
    assert len(hist["steps"]) == 2 and {"L_LLM", "L_ML^L", "L_D", "L_ML^D", "dist_llm_domain"} <= set(hist["steps"][0])
    assert (run_dir / "training.png").stat().st_size > 0 and not (run_dir / CKPT).exists()
    from bdlm_lib.joint.compare import results_table
    p2 = params(joint__max_steps=2, eval__max_users=12, eval__topk_users=16, sft__max_steps=1)
    table = results_table(p2, bdlm_run=run_dir, run_missing=True, progress=False)
    assert list(table.index) == ["lightgcn", "InstructRec", "BDLM-llm", "BDLM-drs"]
    assert (table["n_users"] == 16).all() and table.loc["BDLM-drs", "HR@1"] == m_drs["topk"]["HR@1"]
    best = table.loc[["lightgcn", "InstructRec"], "HR@1"].max()
    if best > 0:
        assert table.loc["BDLM-llm", "HR@1 vs best baseline"] == f"{100 * (m_llm['topk']['HR@1'] / best - 1):+.1f}%"


def test_full_mode_ranks_the_catalogue_on_both_sides(params):
    # BDLM-llm reads every <iid> logit of the candidate-free prompt; BDLM-drs re-ranks its domain
    # model's top 5: at and beyond N its Recall is the first stage's, below N it may differ
    p = params(joint__max_steps=2, eval__max_users=12, eval__topk_users=16, eval__mode="full",
               eval__full_rerank_n=5, eval__full_ks=[1, 5, 10])
    m_llm, m_drs, run_dir = run_bdlm(p, progress=False)
    for m in (m_llm, m_drs):
        f = m["full"]
        assert f["n_users"] == 16 and f["n_items"] == 43
        assert 0 <= f["Recall@1"] <= f["Recall@5"] <= f["Recall@10"] <= 1 and f["NDCG@10"] <= f["Recall@10"]
    first = m_drs["full"]["first_stage"]
    assert first["model"] == "domain" and m_drs["full"]["rerank_n"] == 5
    assert m_drs["full"]["Recall@5"] == first["Recall@5"] and m_drs["full"]["Recall@10"] == first["Recall@10"]
    saved = json.loads((run_dir / "metrics.json").read_text())
    assert saved["llm"]["full"] == m_llm["full"] and saved["full"] == m_drs["full"]


def test_all_item_scorer_is_the_candidate_logits_of_the_open_prompt(params):
    from bdlm_lib.llm.batching import pad_id
    from bdlm_lib.llm.scoring import all_item_scorer, answer_hidden, restricted_logits
    tr, ds = make_trainer(params())
    model, b = tr.eval_model(), tr.builder
    users = np.array([0, 5, 9, 3])            # histories of different lengths: padded batches
    full = all_item_scorer(model, b, batch_size=3)(users)
    assert full.shape == (4, ds.n_items)
    one = all_item_scorer(model, b, batch_size=1)(users)
    np.testing.assert_allclose(full, one, rtol=1e-4, atol=1e-5)
    prompts = [b.open_topk(int(u)) for u in users]
    assert all("Candidates" not in p.text and p.candidates is None for p in prompts)
    h = answer_hidden(model, prompts[:1], pad_id(b.tok))
    items = np.array([0, 7, 42])
    ref = restricted_logits(model, h, torch.as_tensor(b.tm.item_id(items))[None]).detach().numpy()[0]
    np.testing.assert_allclose(full[0, items], ref, rtol=1e-4, atol=1e-5)


# ---------------------------------------------------------------------------- GPT4SM

def test_gpt4sm_baseline_runs_with_frozen_text_embeddings(params):
    from bdlm_lib.baselines.gpt4sm import run_gpt4sm, text_embeddings
    from bdlm_lib.llm.backbone import load_backbone
    p = params(baselines__gpt4sm_epochs=2, eval__max_users=12)
    m, run_dir = run_gpt4sm(p, progress=False)
    assert run_dir.parent.name == "baselines" and run_dir.name == "gpt4sm"
    assert m["method"] == "gpt4sm" and m["topk"]["n_users"] == 12 and 0 <= m["binary"]["f1"] <= 1
    assert len(json.loads((run_dir / "history.json").read_text())) == 2
    llm, tok = load_backbone(p.llm.backbone)
    e = text_embeddings(llm, tok, ["Toy Story", "Heat", "Toy Story"], progress=False)
    assert e.shape == (3, 64) and torch.allclose(e[0], e[2], atol=1e-5) and not torch.allclose(e[0], e[1])


def test_pretrained_domain_reused_whatever_the_runtime_keys(params):
    """domain.device / progress / eval_batch_size say how a model ran, not which model it is."""
    from bdlm_lib.data import load_dataset
    from bdlm_lib.joint.run import pretrained_domain, same_data
    p = params()
    ds = load_dataset(p, verbose=False)
    _, d1 = pretrained_domain(p, ds)
    _, d2 = pretrained_domain(params(domain__progress=True, domain__device="auto", domain__eval_batch_size=7), ds)
    assert d2 == d1
    _, d3 = pretrained_domain(params(domain__epochs=p.domain.epochs + 1), ds)
    assert d3 != d1 and (d3 / "model.safetensors").exists()
    # a run made before data.top_items existed (its params.yaml lacks the key) is the same data
    saved = yaml.safe_load((d1 / "params.yaml").read_text())
    del saved["data"]["top_items"]
    (d1 / "params.yaml").write_text(yaml.safe_dump(saved))
    assert pretrained_domain(p, ds)[1] == d1
    assert not same_data({**saved, "data": {**saved["data"], "top_items": 50}}, p)


def test_claim_run_dir_resumes_same_params_only(params, tmp_path):
    from bdlm_lib.joint.run import claim_run_dir
    a, b = params(), params(joint__lambda_ml=0.5)
    r1 = claim_run_dir(tmp_path, "v", a)
    (r1 / "checkpoint").mkdir()
    assert claim_run_dir(tmp_path, "v", a) == r1              # same params: resume there
    r2 = claim_run_dir(tmp_path, "v", b)                      # other params running: a sibling
    assert r2 == tmp_path / "v-2"
    (r1 / "metrics.json").write_text("{}")
    assert claim_run_dir(tmp_path, "v", a) == tmp_path / "v-3"   # a finished run is never reused


# ---------------------------------------------------------------------------- control (ncf_ft)

def test_control_replays_the_joint_domain_step_without_the_llm(params):
    """ncf_ft / lightgcn_ft train on exactly the (user, item, label) examples BDLM's domain step
    takes at each step, from the same samples, and write a run the report labels."""
    from bdlm_lib.report import collect_runs
    from bdlm_lib.baselines.control import candidate_examples, candidate_finetune, joint_samples
    from bdlm_lib.joint.trainer import domain_examples, step_seed
    from bdlm_lib.pipeline import run_method
    p = params(domain__model="ncf", joint__max_steps=3, joint__batch_size=4)
    tr, ds = make_trainer(p)
    key = lambda s: (s.task, s.user, s.target, s.label, tuple(s.candidates) if s.candidates is not None else ())
    ctrl = joint_samples(p, ds)
    assert [key(s) for s in ctrl] == [key(s) for s in tr.samples]
    for g in range(3):
        prompts = [tr.samples[n] for n in tr.schedule[g]]
        out = tr._llm_forward(prompts, False)[0]
        u, i, _, y = domain_examples(prompts, out, tr.n_neg, np.random.default_rng(step_seed(42, g)))
        cu, ci, cy = candidate_examples(prompts, tr.n_neg, np.random.default_rng(step_seed(42, g)))
        assert len(y) > len(prompts) and np.array_equal(u, cu) and np.array_equal(i, ci) and np.array_equal(y, cy)

    # domain_lr = 0: the control scores exactly as the pre-trained model; > 0: it moves
    from bdlm_lib.domain import build_domain_model
    torch.manual_seed(0)
    dom = build_domain_model("ncf", ds.n_users, ds.n_items, p, ds=ds).eval()
    uu, ii = torch.arange(10), torch.arange(10) + 2
    before = dom(uu, ii).detach().clone()
    still, _ = candidate_finetune(dom, ds, params(domain__model="ncf", joint__domain_lr=0.0), samples=ctrl,
                                  progress=False)
    assert torch.allclose(still.eval()(uu, ii, torch.zeros(10, 0)), before, atol=1e-6)
    moved, losses = candidate_finetune(dom, ds, params(domain__model="ncf", joint__domain_lr=1e-2), samples=ctrl,
                                       progress=False)
    assert len(losses) == min(p.joint.max_steps, len(tr.schedule)) and not torch.allclose(
        moved.eval()(uu, ii, torch.zeros(10, 0)), before, atol=1e-4)

    q = params(domain__model="ncf", joint__max_steps=3, eval__max_users=12)
    m = run_method("ncf_ft", q)
    run = Path(m["run_dir"])
    assert (run.parent.name, run.name) == ("control", "ncf_ft") and m["steps"] == 3 and m["topk"]["n_users"] == 12
    assert (run / "predictions.parquet").exists() and (run / "metrics.json").exists()
    runs = collect_runs(run.parent.parent.parent)
    assert "NCF-FT" not in set(runs["label"])   # a standalone run has no run.json naming its method
    from bdlm_lib.pipeline import run_recorded
    r = run_recorded("ncf_ft", q, None, Path(q.output_dir) / "ml" / "b")
    assert "NCF-FT" in set(collect_runs(Path(q.output_dir))["label"]) and r["topk"] == m["topk"]
