"""LoRA as peft does it (`sft.trainable: lora`): low-rank adapters on `sft.lora_targets` plus the
`<uid>`/`<iid>` rows as peft's trainable tokens (`LoraConfig(trainable_token_indices=...)`), so
only the adapters and the new token rows train; the base weights and the word rows of the
vocabulary stay bit-identical.

- **In place.** peft's `LoraModel` tuner wraps the modules of the model object the caller holds
  (the same as `peft.inject_adapter_in_model`), so SFT, the joint trainer and scoring keep their
  reference to one model.
- **Token rows.** Tied backbones: the rows are trainable tokens of the input embedding and peft
  ties the output layer's to them (one set of rows, as the tie itself). Untied backbones: both
  layers are named, each with its own rows (the untied output row of `<iid_j>` is what top-K
  scoring reads, so it must learn too).
- **Reading the rows while wrapped.** The embedding and output layers are peft wrappers: calling
  them, or reading their `.weight` (peft returns the weight with the trained rows in place), gives
  the current rows. That is how scoring (`restricted_logits`), the mutual-learning term
  (`joint.llm_io.id_rows`, a module call) and the distances (`id_tables`, `.weight`) read them.
  Writing rows (pre-loading) must come before `add_lora`.
- **Saving.** `merge_lora` folds the adapters into the base weights and copies the token rows into
  the embedding matrices, in place (peft's per-module unload): the model is a plain transformers
  model again, and `save_pretrained` writes a folder that plain transformers loads. `sft_train`
  merges at its end; the joint trainer keeps the model wrapped (its best-state files name the
  adapter parameters).
"""
from __future__ import annotations

from typing import Mapping, Sequence


def module_name(model, module) -> str:
    """The dotted name of `module` inside `model`."""
    for name, m in model.named_modules():
        if m is module:
            return name
    raise ValueError("module not found in the model")


def is_tied(model) -> bool:
    """Whether the output layer's weight is the input embedding's."""
    out = model.get_output_embeddings()
    return out is None or out.weight.data_ptr() == model.get_input_embeddings().weight.data_ptr()


def lora_config(model, params: Mapping, token_ids: Sequence[int] | None):
    """peft's LoraConfig from params.sft (lora_r, lora_alpha, lora_dropout, lora_targets) with
    `token_ids` (the `<uid>`/`<iid>` ids; None: no trainable rows) as trainable tokens."""
    from peft import LoraConfig
    sft = params["sft"]
    tokens = None
    if token_ids is not None and len(token_ids):
        ids = [int(i) for i in token_ids]
        emb = module_name(model, model.get_input_embeddings())
        tokens = ids if is_tied(model) else {
            emb: ids, module_name(model, model.get_output_embeddings()): ids}
    return LoraConfig(r=int(sft["lora_r"]), lora_alpha=float(sft["lora_alpha"]),
                      lora_dropout=float(sft["lora_dropout"]),
                      target_modules=list(sft["lora_targets"]), trainable_token_indices=tokens)


def add_lora(model, params: Mapping, token_ids: Sequence[int] | None):
    """Wrap `model` in place with LoRA adapters and trainable token rows; returns peft's tuner.
    Afterwards exactly the adapters and the token rows require grad."""
    from peft.tuners.lora import LoraModel
    return LoraModel(model, lora_config(model, params, token_ids), "default")


def is_wrapped(model) -> bool:
    """Whether peft layers (LoRA adapters or trainable tokens) are in the model."""
    from peft.tuners.tuners_utils import BaseTunerLayer
    from peft.utils.other import AuxiliaryTrainingWrapper
    return any(isinstance(m, (BaseTunerLayer, AuxiliaryTrainingWrapper)) for m in model.modules())


def merge_lora(model) -> None:
    """Fold every peft layer into its base layer and put the base layer back (in place): adapters
    into the linear weights, trainable token rows into the embedding matrices (both matrices of a
    tied pair are one parameter, so the tie stays)."""
    from peft.tuners.tuners_utils import BaseTunerLayer
    from peft.utils.other import AuxiliaryTrainingWrapper
    wrapped = [(n, m) for n, m in model.named_modules()
               if isinstance(m, (BaseTunerLayer, AuxiliaryTrainingWrapper))]
    inner = {n for n, _ in wrapped}
    for name, module in wrapped:
        parent_name = name.rpartition(".")[0]
        if any(parent_name == w or parent_name.startswith(w + ".") for w in inner):
            continue   # inside another peft layer (the token adapter of a wrapper): merged with it
        if isinstance(module, AuxiliaryTrainingWrapper):
            base = module.unload_and_optionally_merge_module(merge=True, safe_merge=False,
                                                             adapter_names=None)
        else:
            module.merge()
            base = module.get_base_layer()
        parent = model.get_submodule(parent_name) if parent_name else model
        setattr(parent, name.rpartition(".")[2], base)
    if hasattr(model, "peft_config"):
        del model.peft_config
