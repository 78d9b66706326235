"""`bdlm plan`: the backbone counted on the meta device (Llama-2-7B's published size), the model
states from DeepSpeed's own estimators, the activation formula against what autograd really saves
in a (tiny) Llama layer, and the command: an impossible plan refused in one line naming what
would fit, a LoRA plan accepted, measured step costs used for the time."""
from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path

import pytest
import torch

from bdlm_lib import plan

PAPER = str(Path(__file__).resolve().parents[1] / "params" / "batches" / "paper_ml1m.yaml")


def test_llama_2_7b_counted_as_published():
    bb = plan.describe_backbone("llama-2-7b")
    assert bb.params == 6_738_415_616 and not bb.tied
    assert (bb.layers, bb.hidden, bb.kv_hidden, bb.intermediate, bb.vocab) == (32, 4096, 4096, 11008, 32000)
    assert bb.largest_layer == 32000 * 4096                  # the embedding (DeepSpeed's largest layer)
    assert bb.layer_params == 32 * (4 * 4096 ** 2 + 3 * 4096 * 11008 + 2 * 4096)
    assert plan.lora_trainable(bb, ["q_proj", "v_proj"], 8) == 32 * 2 * 8 * (4096 + 4096)


def test_model_states_are_deepspeeds_estimates():
    pytest.importorskip("deepspeed")
    from deepspeed.runtime.zero.stage3 import estimate_zero3_model_states_mem_needs
    P, L = 7_000_000_000, 200_000_000
    gpu, cpu = plan.zero_states(3, P, L, 2)
    assert gpu == estimate_zero3_model_states_mem_needs(P, L, 2, cpu_offload=False, cpu_offload_params=False)[1]
    assert gpu == 4 * L + 18 * P // 2                          # 16-bit weights + grads, fp32 master + Adam
    assert plan.zero_states(3, P, L, 2, "optimizer")[0] == 4 * L + 2 * P // 2
    assert plan.zero_states(2, P, L, 4)[0] == 2 * P + 18 * P // 4


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
def test_activation_formula_is_what_autograd_saves(tmp_path, dtype):
    """Bytes autograd keeps for the backward pass per decoder layer, measured on a tiny Llama (the
    difference between 3 layers and 1), against `activation_bytes` (SDPA, no padding)."""
    from transformers import LlamaConfig, LlamaForCausalLM
    kw = dict(vocab_size=256, hidden_size=128, intermediate_size=344, num_attention_heads=4,
              num_key_value_heads=2, attn_implementation="sdpa")
    (tmp_path / "config.json").write_text(LlamaConfig(num_hidden_layers=1, **kw).to_json_string())
    bb = plan.describe_backbone(str(tmp_path))
    b, s = 2, 48

    def saved(layers: int) -> int:
        torch.manual_seed(0)
        model = LlamaForCausalLM(LlamaConfig(num_hidden_layers=layers, **kw)).to(dtype).train()
        weights = {p.data_ptr() for p in model.parameters()}
        seen = {}

        def pack(t):
            if t.data_ptr() not in weights:
                seen[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
            return t
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            model.model(input_ids=torch.randint(0, 256, (b, s)))
        return sum(seen.values())
    measured = (saved(3) - saved(1)) / 2
    d = 2 if dtype == torch.bfloat16 else 4
    formula = plan.activation_bytes(bb, b * s, d, False) / bb.layers
    assert abs(measured - formula) / measured < 0.05, (measured, formula)
    deep = dataclasses.replace(bb, layers=32)   # checkpointing: each layer's input, one layer's all
    assert plan.activation_bytes(deep, 100, d, True) == 100 * (32 * d * 128 + formula / (b * s))


def test_plan_refuses_full_sft_of_7b_on_one_gpu(tmp_path, capsys):
    from bdlm_lib.cli import main
    rc = main(["plan", PAPER, "--backbone", "llama-2-7b", "--gpus", "1", "--output-dir", str(tmp_path)])
    out, err = capsys.readouterr()
    assert rc == 1 and len(err.strip().splitlines()) == 1, err
    assert "do not fit on 1 x 80 GiB" in err and "would fit with" in err
    assert "bdlm-lam0.1-s42" in out and "ZeRO-3 offloading the optimizer to CPU on 1 GPU" in out
    assert "no steps or time" in out                         # no prepared data in this output folder


def test_plan_accepts_lora_and_uses_measured_costs(tmp_path, capsys):
    from bdlm_lib.cli import main
    costs = tmp_path / "gpu_check.json"
    costs.write_text(json.dumps({"device": "H100", "full_sft": {"mfu": 0.2}, "lora": {"mfu": 0.1}}))
    over = ["--set", "sft.trainable=lora", "sft.gradient_checkpointing=true"]
    assert main(["plan", PAPER, "--backbone", "llama-2-7b", "--gpus", "1", "--output-dir", str(tmp_path),
                 "--costs", str(costs), *over]) == 0
    out = capsys.readouterr().out
    assert "lora SFT, plain PyTorch, 1 GPU" in out and "measured on H100" in out and " NO " not in out
    # the time at 20% MFU is twice the time at 40% (a run's steps and tokens are the same)
    bb = plan.describe_backbone("llama-2-7b")
    s = plan.Setup("train", "full", "zero3", 2, micro_batch=4)
    from bdlm_lib.params import load_params
    p = load_params("ml1m", "paper")
    c = plan.Counts(100, 50)
    t40 = plan.run_seconds(bb, s, "joint", None, p, c, 1024, 989.0, {"full": 0.4, "lora": 0.4})
    t20 = plan.run_seconds(bb, s, "joint", None, p, c, 1024, 989.0, {"full": 0.2, "lora": 0.2})
    assert t40[0] == t20[0] == math.ceil(100 * 3 * 3 / 8) and t20[1] == pytest.approx(2 * t40[1])
