"""The whole BDLM path on the architectures a user brings, as tiny random-weight models built from
the published configs in params/backbones (bdlm_lib.llm.tiny; nothing is downloaded):

  llama    Llama-2-7B's config (Vicuna-7B's too): untied input/output embeddings, full multi-head
           attention; paired with a small Llama-style BPE trained on the titles (Metaspace, `<s>`
           prepended, Vicuna's "USER: … ASSISTANT:" template), since Llama's own tokenizer is not
           at hand.
  qwen2    Qwen2-0.5B's config: tied embeddings, q/k/v biases, grouped-query attention, and a padded
           vocabulary (64 spare rows, as Qwen2 carries more rows than tokens); paired with
           SmolLM2's tokenizer (a byte-level BPE with a ChatML template, like Qwen2's).
  smollm2  SmolLM2-135M-Instruct's config with its own tokenizer.

On a slice of ML-1M (the smoke sample): extend_tokens → preload → prompts in the chat and the
plain format → SFT → one-pass scoring → joint steps → save_pretrained → plain transformers reload;
and LoRA with trainable token rows (peft), which must move nothing but the adapters and the new
rows."""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch

from bdlm_lib.llm import (PromptBuilder, extend_tokens, load_backbone, preload, resolve_backbone,
                          sft_train)
from bdlm_lib.llm.lora import is_tied, is_wrapped, merge_lora
from bdlm_lib.llm.scoring import score_binary_prompts, score_topk_prompts
from bdlm_lib.llm.tiny import build_backbone, bpe_tokenizer, published_config
from bdlm_lib.llm.tokens import map_domain, word_norm
from bdlm_lib.params import load_params

pytestmark = pytest.mark.usefixtures("one_thread")

DATA = os.environ.get("BDLM_DATA_DIR") or str(Path(__file__).resolve().parents[2] / "shared" / "data")
# arch -> (published config, tokenizer, spare embedding rows, tied, chat-template marker)
ARCHS = {"llama": ("llama-2-7b", "bpe", 0, False, "ASSISTANT:"),
         "qwen2": ("qwen2-0.5b", "smollm2", 64, True, "<|im_start|>assistant"),
         "smollm2": ("smollm2-135m-instruct", "smollm2", 0, True, "<|im_start|>assistant")}
# words of the prompt templates, so that the small BPE has them as whole tokens like a real one
TEMPLATE = ("You are a recommender system. User has watched the following movies: Predict if "
            "he/she will watch next. Answer Yes or No. Predict which 1 movie in the candidate set "
            "he/she will watch most probably? Candidates: Answer with the id of one candidate. "
            "Answer with the title of one candidate. The user Answer: Yes No")


def make_params(fmt="chat", **over):
    base = {"data_dir": DATA, "llm.history_len": 3, "llm.prompt_format": fmt, "sft.lr": 1e-3,
            "sft.max_steps": 3, "sft.batch_size": 4, "sft.max_train_users": 6,
            "sft.warmup_ratio": 0.0, "joint.max_steps": 2, "domain.progress": False}
    base.update(over)
    return load_params("ml1m", "smoke", base)


@pytest.fixture(scope="module")
def ds():
    from bdlm_lib.data import load_dataset
    return load_dataset(make_params(), verbose=False)


@pytest.fixture(scope="module")
def folders(ds, tmp_path_factory):
    """{arch: a saved tiny random-weight model folder with its paired tokenizer}."""
    from transformers import AutoTokenizer
    root = tmp_path_factory.mktemp("archs")
    bpe = bpe_tokenizer(list(ds.titles) + [TEMPLATE] * 200, vocab_size=2000)
    smol = AutoTokenizer.from_pretrained(resolve_backbone("smollm2-135m-instruct"))
    return {arch: build_backbone(cfg, root / arch, bpe if t == "bpe" else smol, seed=0, spare_rows=spare)
            for arch, (cfg, t, spare, _, _) in ARCHS.items()}


def tables(ds, d=32, seed=3):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(ds.n_users, d, generator=g), torch.randn(ds.n_items, d, generator=g)


def prepared(folder, ds, **load):
    """Backbone + ET + PE, as prepare_llm does."""
    model, tok = load_backbone(str(folder), **load)
    tm = extend_tokens(model, tok, ds.n_users, ds.n_items)
    preload(model, tm, *tables(ds), seed=0)
    return model, tok, tm


def out_weight(model):
    return model.get_output_embeddings().weight


def test_published_configs_are_the_real_shapes():
    llama = published_config("llama-2-7b")
    assert (llama["hidden_size"], llama["num_hidden_layers"], llama["num_attention_heads"],
            llama["intermediate_size"], llama["vocab_size"], llama["tie_word_embeddings"]) \
        == (4096, 32, 32, 11008, 32000, False)
    qwen = published_config("qwen2-7b")
    assert (qwen["hidden_size"], qwen["num_key_value_heads"], qwen["vocab_size"],
            qwen["tie_word_embeddings"]) == (3584, 4, 152064, False)
    assert published_config("qwen2-0.5b")["tie_word_embeddings"] is True
    assert published_config("smollm2-135m-instruct")["hidden_size"] == 576


@pytest.mark.parametrize("arch", list(ARCHS))
def test_tiny_model_keeps_the_architecture(arch, folders):
    from transformers import AutoConfig
    cfg_name, _, spare, tied, _ = ARCHS[arch]
    pub = published_config(cfg_name)
    cfg = AutoConfig.from_pretrained(folders[arch])
    assert cfg.model_type == pub["model_type"] and cfg.tie_word_embeddings == tied
    assert (cfg.hidden_size, cfg.num_hidden_layers) == (64, 2)
    ratio = pub["num_attention_heads"] // pub["num_key_value_heads"]
    assert cfg.num_key_value_heads == max(1, 4 // ratio)
    model, tok = load_backbone(str(folders[arch]))
    assert model.config._attn_implementation == "sdpa" and tok.padding_side == "right"
    assert model.get_input_embeddings().weight.shape[0] == len(tok) + spare
    assert is_tied(model) == tied


@pytest.mark.parametrize("fmt", ["chat", "plain"])
@pytest.mark.parametrize("arch", list(ARCHS))
def test_prompts_put_items_at_their_own_tokens(arch, fmt, folders, ds):
    model, tok, tm = prepared(folders[arch], ds)
    b = PromptBuilder(ds, tok, make_params(fmt), tm)
    assert b.fmt == fmt
    samples = b.train_samples()
    assert {s.task for s in samples} == {"topk", "binary"}
    marker = ARCHS[arch][4]
    for s in samples[:12]:
        ids = np.asarray(s.input_ids)
        assert np.array_equal(ids[s.item_positions], tm.item_id(s.items))   # one token per item
        assert ids[s.user_position] == tm.user_id(s.user)
        assert s.answer_ids[-1] == tok.eos_token_id
        if fmt == "chat":
            assert s.text.rstrip().endswith(marker)   # ends with the template's assistant header
        else:
            assert s.text.endswith("Answer:") and marker not in s.text
        if s.task == "topk":
            assert tok.decode(s.answer_ids[:-1]).strip() == f"<iid_{s.target}>"
    # the llama stand-in's tokenizer prepends <s> to plain text, as Llama's does
    if arch == "llama":
        assert samples[0].input_ids[0] == tok.bos_token_id


@pytest.mark.parametrize("arch", list(ARCHS))
def test_whole_path(arch, folders, ds, tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer
    _, _, spare, tied, _ = ARCHS[arch]
    model, tok = load_backbone(str(folders[arch]))
    if not tied:   # a trained untied model's output rows live on another scale than its input rows
        with torch.no_grad():
            out_weight(model).mul_(3.0)
    n_words = len(tok)
    before_in = model.get_input_embeddings().weight.detach().clone()
    before_out = out_weight(model).detach().clone()
    # ET: one new row per token in the input and the output matrix (one matrix when tied)
    tm = extend_tokens(model, tok, ds.n_users, ds.n_items)
    n = n_words + ds.n_users + ds.n_items
    emb, out = model.get_input_embeddings().weight, out_weight(model)
    assert len(tok) == n and emb.shape[0] == n and out.shape[0] == n
    assert (emb.data_ptr() == out.data_ptr()) == tied
    assert torch.equal(emb[:n_words], before_in[:n_words]) and torch.equal(out[:n_words], before_out[:n_words])
    if spare:   # the padded vocabulary's spare rows now hold tokens: re-drawn like fresh rows
        assert not torch.equal(emb[n_words:n_words + spare], before_in[n_words:n_words + spare])
        assert float(emb[n_words:n_words + spare].detach().std()) < 0.1
    # PE: the input rows are the mapped tables at the word norm; untied output rows the same
    # directions at the output layer's own word norm
    u, i = tables(ds)
    info = preload(model, tm, u, i, seed=0)
    assert info["output_rows"] == ("tied" if tied else "untied")
    mapped = map_domain(i, emb.shape[1], seed=0)
    for w in (emb, out):
        rows = w[tm.item_ids].detach()
        cos = torch.nn.functional.cosine_similarity(rows, mapped, dim=1)
        assert float(cos.min()) > 0.9999
        norm = float(w[:n_words].detach().norm(dim=1).mean())
        assert abs(float(rows.norm(dim=1).mean()) - norm) < 1e-3 * norm
    if not tied:
        assert info["output_word_norm"] > 2.5 * info["word_norm"]
    # prompts (chat) and SFT (full, the paper's setting)
    p = make_params("chat", **{"llm.backbone": str(folders[arch])})
    b = PromptBuilder(ds, tok, p, tm)
    samples = b.train_samples()
    rows0 = emb[tm.new_ids].detach().clone(), out[tm.new_ids].detach().clone()
    hist = sft_train(model, tok, samples, p, progress=False)
    assert len(hist["loss"]) == 3 and np.isfinite(hist["loss"]).all()
    seen = np.unique(np.concatenate([s.items for s in samples[:12]]))
    assert not torch.equal(emb[tm.item_id(seen)], rows0[0][seen + tm.n_users])
    assert not torch.equal(out[tm.item_id(seen)], rows0[1][seen + tm.n_users])
    # one-pass scoring = the full vocabulary projection at the answer position
    topk = [s for s in samples if s.task == "topk"][:3]
    binary = [s for s in samples if s.task == "binary"][:4]
    sc = score_topk_prompts(model, b, topk, batch_size=2)
    with torch.no_grad():
        for s, got in zip(topk, sc):
            logits = model(input_ids=torch.tensor([s.input_ids])).logits[0, -1]
            assert np.allclose(got, logits[tm.item_id(s.candidates)].numpy(), atol=1e-4)
        pb = score_binary_prompts(model, b, binary)
        for s, got in zip(binary, pb):
            logits = model(input_ids=torch.tensor([s.input_ids])).logits[0, -1]
            ref = torch.softmax(logits[[b.yes_id, b.no_id]], 0)[0]
            assert abs(got - float(ref)) < 1e-4
    # joint steps (Algorithm 1) on the SFT'd model: the LLM's rows are written into M
    from bdlm_lib.domain import build_domain_model
    from bdlm_lib.joint import build_joint
    from bdlm_lib.joint.llm_io import id_tables
    dom = build_domain_model(p.domain.model, ds.n_users, ds.n_items, p, ds=ds)
    trainer = build_joint(p, ds, dom, model, tok, progress=False, samples=samples)
    for g in range(2):
        _, I0 = id_tables(model, tm)
        r = trainer.run_step(g)
        assert all(np.isfinite(r[k]) for k in ("L_LLM", "L_ML^L", "L_D", "L_ML^D"))
        items = np.unique(np.concatenate([trainer.samples[k].items for k in trainer.schedule[g]]))
        _, I1 = id_tables(model, tm)
        assert not torch.equal(I1[items], I0[items])   # the LLM step moved the batch's rows
        with torch.no_grad():   # copy update: the domain step wrote P(E_I^D) last
            _, DI = dom.embeddings()
            assert torch.allclose(trainer.M.M_I[items], trainer.proj(DI[items].float(), "item"), atol=1e-6)
    model.eval()
    # save_pretrained -> plain transformers: the same logits, the same tokens
    folder = tmp_path / "saved"
    model.save_pretrained(folder)
    tok.save_pretrained(folder)
    again = AutoModelForCausalLM.from_pretrained(folder)
    tok2 = AutoTokenizer.from_pretrained(folder)
    assert len(tok2) == n and tok2.convert_tokens_to_ids("<iid_0>") == tm.item_start
    assert again.config.tie_word_embeddings == tied and is_tied(again) == tied
    x = torch.tensor([topk[0].input_ids])
    with torch.no_grad():
        assert torch.allclose(again(input_ids=x).logits, model(input_ids=x).logits, atol=1e-5)


def _unwrapped_name(name: str) -> str:
    """A wrapped model's parameter name as the plain model names it."""
    return name.replace(".base_layer", "").replace(".token_adapter", "")


@pytest.mark.parametrize("arch", list(ARCHS))
def test_lora_moves_only_adapters_and_new_rows(arch, folders, ds, tmp_path):
    """peft LoRA + trainable tokens: base weights and word rows bit-identical, adapters and the new
    rows trained; merged, a plain model whose logits are the wrapped one's; saved, reloadable."""
    from transformers import AutoModelForCausalLM
    tied = ARCHS[arch][3]
    p = make_params("chat", **{"sft.trainable": "lora", "sft.lora_dropout": 0.0, "sft.lr": 1e-2,
                               "sft.gradient_checkpointing": True})
    model, tok, tm = prepared(folders[arch], ds)
    base = {k: v.clone() for k, v in model.state_dict().items()}
    samples = PromptBuilder(ds, tok, p, tm).train_samples()
    hist = sft_train(model, tok, samples, p, progress=False, merge=False)
    assert hist["mode"] == "lora" and is_wrapped(model)
    n_rows = (1 if tied else 2) * len(tm.new_ids) * 64
    kv = model.config.num_key_value_heads * 16
    n_lora = 2 * 8 * ((64 + 64) + 2 * (64 + kv) + (64 + 64))   # 2 layers, r = 8: q, k, v, o
    assert hist["trainable_params"] == n_rows + n_lora
    wrapped = model.state_dict()
    adapters = [k for k in wrapped if "lora_" in k or "trainable_tokens" in k]
    assert adapters and all(_unwrapped_name(k) in base for k in wrapped if k not in adapters)
    for k, v in wrapped.items():
        if k in adapters:
            continue
        assert torch.equal(v, base[_unwrapped_name(k)]), k   # every base weight bit-identical
    assert all(float(wrapped[k].abs().sum()) > 0 for k in adapters if "lora_B" in k)   # B starts at 0
    n_words = tm.vocab_before
    eff_in, eff_out = model.get_input_embeddings().weight, out_weight(model)   # peft: rows in place
    assert torch.equal(eff_in[:n_words], base["model.embed_tokens.weight"][:n_words])
    assert not torch.equal(eff_in[n_words:], base["model.embed_tokens.weight"][n_words:])
    out_key = "model.embed_tokens.weight" if tied else "lm_head.weight"
    assert torch.equal(eff_out[:n_words], base[out_key][:n_words])
    assert not torch.equal(eff_out[n_words:], base[out_key][n_words:])
    assert torch.equal(eff_in, eff_out) == tied
    x = torch.tensor([samples[0].input_ids])
    with torch.no_grad():
        l_wrapped = model(input_ids=x).logits
    merge_lora(model)
    assert not is_wrapped(model) and set(model.state_dict()) == set(base)
    with torch.no_grad():
        assert torch.allclose(model(input_ids=x).logits, l_wrapped, atol=1e-5)
    merged = model.state_dict()
    for k in base:
        moved = not torch.equal(merged[k], base[k])
        target = any(t in k for t in ("q_proj.weight", "k_proj.weight", "v_proj.weight", "o_proj.weight"))
        assert moved == (target or k in ("model.embed_tokens.weight", "lm_head.weight")), k
    assert torch.equal(merged["model.embed_tokens.weight"][:n_words], base["model.embed_tokens.weight"][:n_words])
    assert is_tied(model) == tied
    model.save_pretrained(tmp_path / "m")
    again = AutoModelForCausalLM.from_pretrained(tmp_path / "m")
    with torch.no_grad():
        assert torch.allclose(again(input_ids=x).logits, l_wrapped, atol=1e-5)


def test_lora_gradient_checkpointing_gives_the_same_weights(folders, ds):
    """Checkpointing under LoRA + trainable tokens: the same weights as without, and nothing left
    behind (checkpointing off, no hook on the embedding) after training."""
    out = []
    for gc in (False, True):
        p = make_params("plain", **{"sft.trainable": "lora", "sft.lora_dropout": 0.0, "sft.lr": 1e-2,
                                    "sft.max_steps": 2, "sft.gradient_checkpointing": gc})
        model, tok, tm = prepared(folders["llama"], ds)
        sft_train(model, tok, PromptBuilder(ds, tok, p, tm).train_samples(), p, progress=False)
        assert not model.model.layers[0].gradient_checkpointing   # switched off after training
        assert not model.get_input_embeddings()._forward_hooks
        out.append(model.state_dict())
    for k in out[0]:
        assert torch.allclose(out[0][k], out[1][k], atol=1e-6), k
    assert not torch.equal(out[0]["model.layers.0.self_attn.q_proj.weight"],
                           prepared(folders["llama"], ds)[0].state_dict()["model.layers.0.self_attn.q_proj.weight"])


@pytest.mark.parametrize("arch", ["llama", "qwen2"])
def test_joint_lora_reads_the_rows_through_peft(arch, folders, ds):
    """Mutual learning under LoRA: the trainer reads and writes the `<uid>`/`<iid>` rows through
    peft's wrappers; the batch's rows move, the word rows and every base weight do not. (Untied,
    the input rows of items outside the batch do not move either; tied, every output row takes
    part in the answer's softmax, so they do.)"""
    from bdlm_lib.domain import build_domain_model
    from bdlm_lib.joint import build_joint
    from bdlm_lib.joint.llm_io import id_rows, id_tables
    p = make_params("chat", **{"sft.trainable": "lora", "sft.lora_dropout": 0.0, "sft.lr": 1e-2,
                               "llm.backbone": str(folders[arch]), "joint.lambda_ml": 1.0,
                               "sft.gradient_checkpointing": True})
    model, tok = load_backbone(str(folders[arch]))
    dom = build_domain_model(p.domain.model, ds.n_users, ds.n_items, p, ds=ds)
    trainer = build_joint(p, ds, dom, model, tok, progress=False)
    tm = trainer.tm
    assert is_wrapped(model) and trainer.wrapper.llm is model
    base = {k: v.clone() for k, v in model.state_dict().items() if "lora_" not in k and "trainable_tokens" not in k}
    U0, I0 = id_tables(model, tm)
    words = model.get_input_embeddings().weight[:tm.vocab_before].detach().clone()
    layer = model.model.layers[0]
    flags = []
    h = layer.register_forward_pre_hook(lambda m, a: flags.append(m.gradient_checkpointing and m.training))
    rec = trainer.run_step(0)
    h.remove()
    assert np.isfinite(rec["L_ML^L"]) and np.isfinite(rec["L_LLM"])
    # checkpointing was on for the LLM step only, and left no hook behind
    assert flags[0] and not layer.gradient_checkpointing
    assert not model.get_input_embeddings()._forward_hooks
    prompts = [trainer.samples[k] for k in trainer.schedule[0]]
    users = np.unique([s.user for s in prompts])
    items = np.unique(np.concatenate([s.items for s in prompts]))
    U1, I1 = id_tables(model, tm)
    ru, ri = id_rows(model, tm, users, items)   # a module call through the wrapper = .weight rows
    assert torch.equal(ru.detach(), U1[users]) and torch.equal(ri.detach(), I1[items])
    assert not torch.equal(I1[items], I0[items]) and not torch.equal(U1[users], U0[users])
    others = np.setdiff1d(np.arange(tm.n_items), items)
    assert torch.equal(I1[others], I0[others]) == (not ARCHS[arch][3])
    assert torch.equal(model.get_input_embeddings().weight[:tm.vocab_before], words)
    for k, v in model.state_dict().items():
        if k in base:
            assert torch.equal(v, base[k]), k
    assert np.isfinite(list(trainer.distances().values())).all()
