"""The switches that make a 7B backbone's training step fit and run on one GPU: bf16 autocast
(`sft.bf16_autocast`) and gradient checkpointing (`sft.gradient_checkpointing`). SFT and the joint
trainer's LLM step both use them; attention is SDPA (`llm.attn_implementation`, set at load) and
batches are right-padded (`batching.collate`).

Autocast is a GPU setting: on a CPU it stays off, so CPU runs (and the tests) are fp32. Gradient
checkpointing works on either and is non-reentrant (`use_reentrant=False`, PyTorch's recommended
variant: trainable weights inside a checkpointed layer get their gradient even when the layer's
input does not require grad, as under LoRA with frozen embeddings). transformers also hooks the
input embedding so that its output requires grad (the reentrant variant's workaround); that hook
is removed with the checkpointing, so switching per step leaves nothing behind.
"""
from __future__ import annotations

from contextlib import contextmanager
from typing import Mapping

import torch


def autocast(device: torch.device, params: Mapping):
    """bf16 autocast on a GPU when sft.bf16_autocast is set; a disabled context otherwise."""
    on = bool(params["sft"]["bf16_autocast"]) and device.type == "cuda"
    return torch.autocast("cuda" if device.type == "cuda" else "cpu", dtype=torch.bfloat16, enabled=on)


@contextmanager
def gradient_checkpointing(model, params: Mapping):
    """Gradient checkpointing (non-reentrant) inside the block when sft.gradient_checkpointing is
    set; switched off again afterwards (scoring wants the KV cache)."""
    on = bool(params["sft"]["gradient_checkpointing"]) and model.supports_gradient_checkpointing
    if on:
        model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
    try:
        yield on
    finally:
        if on:
            model.activation_checkpointing_disable()
            model.disable_input_require_grads()
