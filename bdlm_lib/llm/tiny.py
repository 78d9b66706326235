"""Random-weight stand-ins of the backbones a user brings, built from their published configs.

`params/backbones/<name>.json` holds the published `config.json` of each real model (Llama-2-7B,
which Vicuna-7B shares; Qwen2-7B; Qwen2-0.5B; SmolLM2-135M-Instruct). `shrunk_config` keeps what
makes the architecture itself (model type, tied or untied embeddings, attention bias, the
grouped-query ratio, norm epsilon, RoPE base) and shrinks the sizes; `build_backbone` saves a
random-weight model of it with a tokenizer as a local Hugging Face folder, which
`llm.backbone: <folder>` loads through the normal loader. The tests build them with hidden size 64
and 2 layers; a GPU check builds a ~1B Llama from the 7B config the same way
(`hidden_size=2048, num_layers=16, num_heads=16`).

Where an architecture's own tokenizer is not at hand, pair it with one that is: SmolLM2's (a
byte-level BPE with a ChatML template, as Qwen2's), or `bpe_tokenizer`, a small Llama-style
tokenizer trained on given texts (Metaspace BPE, `<s>` prepended to plain text, `</s>` ending a
turn, Vicuna's "USER: … ASSISTANT:" chat template). The model's vocabulary is the tokenizer's size
(plus `spare_rows`, to mimic a padded vocabulary such as Qwen2's).
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Iterable

import torch

from ..params import PARAMS_DIR

BACKBONES_DIR = PARAMS_DIR / "backbones"
# provenance, storage dtype and the real tokenizer's ids: not part of the architecture
NOT_ARCHITECTURE = ("_name_or_path", "architectures", "torch_dtype", "transformers_version",
                    "is_llama_config", "rope_interleaved", "bos_token_id", "eos_token_id",
                    "pad_token_id")
VICUNA_TEMPLATE = (
    "{{ bos_token }}{% for message in messages %}"
    "{% if message['role'] == 'system' %}{{ message['content'] + ' ' }}"
    "{% elif message['role'] == 'user' %}{{ 'USER: ' + message['content'] + ' ' }}"
    "{% else %}{{ 'ASSISTANT: ' + message['content'] + eos_token }}{% endif %}"
    "{% endfor %}{% if add_generation_prompt %}{{ 'ASSISTANT:' }}{% endif %}")


def published_names() -> list[str]:
    return sorted(p.stem for p in BACKBONES_DIR.glob("*.json"))


def published_config(name: str) -> dict:
    """The published config.json of backbone `name` (a file stem in params/backbones)."""
    path = BACKBONES_DIR / f"{name}.json"
    if not path.is_file():
        raise ValueError(f"{path}: no published config (known: {', '.join(published_names())})")
    return json.loads(path.read_text(encoding="utf-8"))


def _kv_heads(heads: int, pub: dict) -> int:
    """Key/value heads for `heads` query heads at the published grouping ratio (a divisor)."""
    ratio = max(1, pub["num_attention_heads"] // pub.get("num_key_value_heads", pub["num_attention_heads"]))
    kv = max(1, heads // ratio)
    while heads % kv:
        kv -= 1
    return kv


def shrunk_config(name: str, vocab_size: int, hidden_size: int = 64, num_layers: int = 2,
                  num_heads: int = 4, intermediate_size: int | None = None):
    """The published architecture of `name` at a smaller size (a transformers config object).
    The MLP keeps the published intermediate/hidden ratio unless `intermediate_size` is given."""
    from transformers import AutoConfig
    pub = published_config(name)
    if hidden_size % num_heads:
        raise ValueError(f"hidden_size {hidden_size} is not a multiple of num_heads {num_heads}")
    d = {k: v for k, v in pub.items() if k not in NOT_ARCHITECTURE}
    d.update(hidden_size=hidden_size, num_hidden_layers=num_layers, num_attention_heads=num_heads,
             num_key_value_heads=_kv_heads(num_heads, pub), vocab_size=int(vocab_size),
             intermediate_size=intermediate_size or round(hidden_size * pub["intermediate_size"]
                                                          / pub["hidden_size"]))
    if "max_window_layers" in d:
        d["max_window_layers"] = num_layers
    return AutoConfig.for_model(d.pop("model_type"), **d)


def build_backbone(name: str, folder, tokenizer, seed: int = 0, spare_rows: int = 0, **sizes) -> Path:
    """Save a random-weight `name` model (`shrunk_config(name, len(tokenizer) + spare_rows,
    **sizes)`) with `tokenizer` as a Hugging Face folder; returns the folder."""
    from transformers import AutoModelForCausalLM
    cfg = shrunk_config(name, len(tokenizer) + int(spare_rows), **sizes)
    cfg.bos_token_id, cfg.eos_token_id = tokenizer.bos_token_id, tokenizer.eos_token_id
    cfg.pad_token_id = tokenizer.pad_token_id
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(int(seed))
        model = AutoModelForCausalLM.from_config(cfg, dtype=torch.float32)
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def bpe_tokenizer(texts: Iterable[str], vocab_size: int = 2000, chat_template: str | None = VICUNA_TEMPLATE):
    """A Llama-style tokenizer trained on `texts`: Metaspace BPE ("▁" marks a word start), `<unk>`,
    `<s>` (prepended to plain text), `</s>` (end of turn), no padding token; Vicuna's chat template
    by default (None: a base model's tokenizer, plain prompts only)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast
    tk = Tokenizer(models.BPE(unk_token="<unk>"))
    tk.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="first")
    tk.decoder = decoders.Metaspace(replacement="▁", prepend_scheme="first")
    tk.train_from_iterator(list(texts), trainers.BpeTrainer(
        vocab_size=int(vocab_size), special_tokens=["<unk>", "<s>", "</s>"], show_progress=False))
    tk.post_processor = processors.TemplateProcessing(single="<s> $A", pair="<s> $A <s> $B",
                                                      special_tokens=[("<s>", tk.token_to_id("<s>"))])
    return PreTrainedTokenizerFast(tokenizer_object=tk, bos_token="<s>", eos_token="</s>",
                                   unk_token="<unk>", chat_template=chat_template)
