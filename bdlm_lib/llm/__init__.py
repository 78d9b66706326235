"""The LLM side of BDLM (paper §4.1): backbone, extended tokens, pre-loading, prompts, SFT, scoring."""
from .backbone import BackboneError, load_backbone, resolve_backbone
from .prompts import Prompt, PromptBuilder
from .run import VARIANTS, domain_tables, prepare_llm, run_llm
from .scoring import (continuation_loglik, generate_answer, generate_answers, make_score_fn,
                      parse_topk_answer, score_binary, score_topk)
from .batching import LMOutput, collate, lm_forward
from .sft import sft_train
from .tokens import TokenMap, alignment, extend_tokens, preload, random_projection

__all__ = ["BackboneError", "load_backbone", "resolve_backbone", "Prompt", "PromptBuilder",
           "VARIANTS", "domain_tables", "prepare_llm", "run_llm", "continuation_loglik",
           "generate_answer", "generate_answers", "make_score_fn", "parse_topk_answer",
           "score_binary", "score_topk", "LMOutput", "collate", "lm_forward", "sft_train",
           "TokenMap", "alignment", "extend_tokens", "preload", "random_projection"]
