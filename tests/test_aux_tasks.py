"""Auxiliary SFT tasks (bdlm_lib.llm.aux_tasks, Cao et al. 2024): no held-out item ever leaks into
an auxiliary sample, MIM hides its answer, BPR options are balanced and the negative is untouched,
exact mixing counts, `none`, determinism, and that the samples run through the SFT/scoring code.
Real data (ML-1M, smoke preset, from BDLM_DATA_DIR), the real SmolLM2 tokenizer (with ET: real
added tokens via `extend_tokens` on a tiny random Llama of the same vocabulary)."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from scipy.stats import binomtest

from bdlm_lib.llm.aux_tasks import (MASK, add_aux_samples, aux_count, build_aux_samples, is_aux,
                                    mix_samples)
from bdlm_lib.llm.tokens import item_token
from conftest import REAL_DATA

SMOL = Path.home() / ".cache" / "bdlm" / "models" / "smollm2-135m-instruct"
pytestmark = [
    pytest.mark.skipif(not (REAL_DATA / "movielens-1m").is_dir(), reason=f"no shared data at {REAL_DATA}"),
    pytest.mark.skipif(not (SMOL / "tokenizer.json").exists(),
                       reason="SmolLM2 tokenizer not converted yet (run bdlm once)"),
]


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    from bdlm_lib import load_params
    from bdlm_lib.data import load_dataset
    from bdlm_lib.llm.prompts import PromptBuilder
    from bdlm_lib.llm.tokens import extend_tokens

    out = tmp_path_factory.mktemp("aux")

    def params(**over):
        base = {"output_dir": str(out), "data_dir": str(REAL_DATA), "sft.aux_tasks": "both"}
        base.update({k.replace("__", "."): v for k, v in over.items()})
        return load_params("ml1m", "smoke", base)

    p = params()
    ds = load_dataset(p, verbose=False)
    tok = AutoTokenizer.from_pretrained(SMOL)
    tok_et = AutoTokenizer.from_pretrained(SMOL)
    cfg = LlamaConfig(vocab_size=len(tok_et), hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                      num_attention_heads=2, num_key_value_heads=1, tie_word_embeddings=True,
                      max_position_embeddings=2048, bos_token_id=tok_et.bos_token_id,
                      eos_token_id=tok_et.eos_token_id)
    torch.manual_seed(0)
    model = LlamaForCausalLM(cfg)
    tm = extend_tokens(model, tok_et, ds.n_users, ds.n_items)
    return {"params": params, "p": p, "ds": ds, "model": model, "tok_et": tok_et,
            "plain": PromptBuilder(ds, tok, p), "et": PromptBuilder(ds, tok_et, p, token_map=tm)}


def held_out(ds) -> dict:
    """user -> {valid item, test item}."""
    out: dict = {}
    for df in (ds.valid, ds.test):
        for u, i in zip(df["user"].to_numpy(), df["item"].to_numpy()):
            out.setdefault(int(u), set()).add(int(i))
    return out


def touched(ds) -> dict:
    out = {u: set(s.tolist()) for u, s in enumerate(ds.train_sequences())}
    for u, s in held_out(ds).items():
        out[u] |= s
    return out


@pytest.mark.parametrize("kind", ["et", "plain"])
def test_no_valid_or_test_item_in_any_aux_sample(world, kind):
    ds, b = world["ds"], world[kind]
    n_users = ds.n_users
    samples = build_aux_samples(ds, b, world["p"], n=4 * n_users, seed=3)   # 2 visits/user/task
    assert {s.task for s in samples} == {"mim", "bpr"}
    ho = held_out(ds)
    seqs = ds.train_sequences()
    for s in samples:
        bad = ho[s.user]
        shown = set(np.asarray(s.items).tolist())
        cands = set() if s.candidates is None else set(np.asarray(s.candidates).tolist())
        assert not (shown & bad) and s.target not in bad and not (cands & bad), (s.user, s.task)
        if kind == "et":   # and not in the text either, in any form
            assert not any(item_token(j) in s.text for j in bad)
        # everything shown except a BPR negative is a train item of this user
        train = set(seqs[s.user].tolist())
        assert {int(j) for j in s.items if s.task == "mim" or int(j) != s.target} - train <= cands
        assert s.target in train
    # every user (all have >= 2 train items here) is covered by both tasks
    for task in ("mim", "bpr"):
        assert {s.user for s in samples if s.task == task} == set(range(n_users))


@pytest.mark.parametrize("kind", ["et", "plain"])
def test_mim_answer_is_the_masked_item_and_hidden(world, kind):
    ds, b = world["ds"], world[kind]
    seqs = ds.train_sequences()
    samples = build_aux_samples(ds, b, world["params"](sft__aux_tasks="mim"), n=300, seed=5)
    assert len(samples) == 300 and all(s.task == "mim" and s.candidates is None for s in samples)
    tok = b.tok
    for s in samples:
        assert s.target not in set(np.asarray(s.items).tolist())
        assert s.item_roles == ["history"] * len(s.items) and len(s.items) >= 1
        assert s.text.count(MASK) == 2                       # the slot + the instruction
        assert s.answer_ids == b._answer(b.answer_text(s.target))
        assert tok.decode(s.answer_ids[:-1]).strip() == b.answer_text(s.target)
        # shown items + masked item = a contiguous window of the train sequence, mask inside it
        seq = list(seqs[s.user])
        idx = sorted(seq.index(int(j)) for j in list(s.items) + [s.target])
        assert idx == list(range(idx[0], idx[0] + len(idx))) and len(idx) <= b.history_len
        assert idx[0] <= seq.index(s.target) <= idx[-1]
        if kind == "et":
            assert item_token(s.target) not in s.text
            assert [tok.convert_ids_to_tokens(s.input_ids[q]) for q in s.item_positions] == \
                [item_token(j) for j in s.items]
        else:
            ends = [tok.decode(s.input_ids[:q + 1]) for q in s.item_positions]
            for e, j in zip(ends, s.items):
                assert b.titles[j] in e and not e.endswith(MASK)


def test_bpr_balanced_negative_untouched_positive_held_out_of_history(world):
    ds, b = world["ds"], world["et"]
    samples = build_aux_samples(ds, b, world["params"](sft__aux_tasks="bpr"), n=1500, seed=11)
    assert len(samples) == 1500 and all(s.task == "bpr" for s in samples)
    seen = touched(ds)
    seqs = ds.train_sequences()
    first = 0
    for s in samples:
        c = np.asarray(s.candidates)
        assert len(c) == 2 and s.target in c
        neg = int(c[c != s.target][0])
        assert neg not in seen[s.user]                        # never touched in any split
        hist = [int(j) for j, r in zip(s.items, s.item_roles) if r == "history"]
        assert s.target not in hist
        assert [int(j) for j, r in zip(s.items, s.item_roles) if r == "option"] == c.tolist()
        seq = list(seqs[s.user])                              # positive = next train item after history
        assert hist == seq[seq.index(s.target) - len(hist):seq.index(s.target)] and hist
        assert s.answer_ids == b._answer(item_token(s.target))
        first += int(c[0] == s.target)
    assert 0.45 < first / len(samples) < 0.55
    assert binomtest(first, len(samples), 0.5).pvalue > 1e-3


def test_mixing_counts_are_exact(world):
    from bdlm_lib.llm.prompts import PromptBuilder
    ds = world["ds"]
    p = world["params"](llm__task="binary", sft__max_train_users=50)
    b = PromptBuilder(ds, world["plain"].tok, p)
    rec = b.train_samples(task="binary")
    assert len(rec) == 100
    aux = build_aux_samples(ds, b, p, n=80, seed=1)
    mixed = mix_samples(rec, aux, 0.5, seed=2)
    assert len(mixed) == 150 and sum(is_aux(s) for s in mixed) == 50
    assert sorted(map(id, (s for s in mixed if not is_aux(s)))) == sorted(map(id, rec))
    assert [s for s in mixed if is_aux(s)] != aux[:50] and {id(s) for s in mixed if is_aux(s)} == {id(s) for s in aux[:50]}
    calls = []
    got = mix_samples(rec, lambda k: calls.append(k) or build_aux_samples(ds, b, p, k, 1), 0.3, seed=2)
    assert calls == [30] and len(got) == 130
    assert aux_count(25, 0.5) == 13 and aux_count(100, 0.0) == 0 and aux_count(10, 1.0) == 10
    with pytest.raises(ValueError, match="sft.aux_ratio"):
        mix_samples(rec, aux[:10], 0.5, seed=2)
    with pytest.raises(ValueError, match="sft.aux_ratio"):
        mix_samples(rec, aux, -1, seed=2)
    # the params-driven one-liner: both = half each
    both = add_aux_samples(rec, ds, b, world["params"](sft__aux_tasks="both", sft__aux_ratio=0.5))
    assert len(both) == 150
    assert sum(s.task == "mim" for s in both) == 25 and sum(s.task == "bpr" for s in both) == 25


def test_none_gives_no_aux_and_bad_value_is_one_line(world):
    ds, b = world["ds"], world["plain"]
    none = world["params"](sft__aux_tasks="none")
    assert build_aux_samples(ds, b, none, n=50, seed=0) == []
    rec = build_aux_samples(ds, b, world["params"](sft__aux_tasks="mim"), n=10, seed=0)
    assert add_aux_samples(rec, ds, b, none) == rec
    # a bad value is refused where the parameters are loaded, in one line naming the key
    with pytest.raises(ValueError, match=r"^parameter 'sft\.aux_tasks' must be one of none, mim, bpr, both, got 'mlm'$"):
        world["params"](sft__aux_tasks="mlm")


def _key(s):
    return (s.task, s.user, tuple(s.input_ids), tuple(s.answer_ids), tuple(np.asarray(s.items).tolist()),
            tuple(s.item_positions.tolist()), None if s.candidates is None else tuple(s.candidates.tolist()))


def test_same_seed_same_samples(world):
    ds, b, p = world["ds"], world["et"], world["p"]
    a = build_aux_samples(ds, b, p, n=60, seed=7)
    c = build_aux_samples(ds, b, p, n=60, seed=7)
    d = build_aux_samples(ds, b, p, n=60, seed=8)
    assert [_key(s) for s in a] == [_key(s) for s in c]
    assert [_key(s) for s in a] != [_key(s) for s in d]
    rec = build_aux_samples(ds, b, world["params"](sft__aux_tasks="mim"), n=40, seed=0)
    assert [_key(s) for s in mix_samples(rec, a, 0.5, 3)] == [_key(s) for s in mix_samples(rec, c, 0.5, 3)]


def test_aux_samples_train_and_score_through_the_sft_code(world):
    from bdlm_lib.llm.scoring import restricted_logits, score_topk_prompts
    from bdlm_lib.llm.batching import collate
    from bdlm_lib.llm.sft import sft_train
    ds, b, model, tok = world["ds"], world["et"], world["model"], world["tok_et"]
    p = world["params"](sft__max_steps=2, sft__batch_size=4)
    aux = build_aux_samples(ds, b, p, n=8, seed=0)
    batch = collate(aux, tok.pad_token_id)
    for r, s in enumerate(aux):   # the loss sees exactly the answer tokens
        lab = batch["labels"][r]
        assert lab[lab != -100].tolist() == s.answer_ids
    hist = sft_train(model, tok, add_aux_samples(b.train_samples(task="binary")[:8], ds, b, p), p,
                     progress=False)
    assert hist["n_samples"] == 12 and len(hist["loss"]) == 2 and np.isfinite(hist["loss"]).all()
    bpr = [s for s in aux if s.task == "bpr"]
    scores = score_topk_prompts(model, b, bpr)
    from bdlm_lib.llm.scoring import answer_hidden
    h = answer_hidden(model, bpr, tok.pad_token_id)
    ref = restricted_logits(model, h, torch.as_tensor(np.stack([b.tm.item_id(s.candidates) for s in bpr])))
    assert all(len(x) == 2 for x in scores)
    np.testing.assert_allclose(np.stack(scores), ref.numpy(), rtol=1e-5, atol=1e-5)
