"""The one table of methods: what each method is, which parameters make it, how its rows are named.

Every other part reads this table: the pipeline (which runner), the batch runner (parameter
bundles, run ids), the report (row labels, table order) and the joint runner (which method a joint
run's parameters amount to). Adding a method = one row here plus, for a new kind of run, a runner.

Kinds:
    domain    a domain model alone (paper §5.3: NCF, GMF, LightGCN, SASRec, GRU4Rec, BERT4Rec; and
              Popularity, not in the paper)
    llm       an LLM-only run: `llm` says ET / PE / SFT (LLM-Rec, InstructRec; paper §5.3)
    joint     BDLM and its ablations (paper §4, §5.5.2): two sides, BDLM-llm and BDLM-drs
    gpt4sm    the frozen-LLM-feature baseline GPT4SM (paper §5.3)
    control   a domain model fine-tuned on the joint run's prompt candidates without the LLM
              (not in the paper: it asks whether BDLM-drs's gain is the LLM's or the candidates')
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Mapping


@dataclass(frozen=True)
class Method:
    name: str
    kind: str                     # domain | llm | joint | gpt4sm | control
    bundle: dict                  # parameter overrides (dotted keys) that make the method
    display: str                  # the paper's name
    labels: dict = field(default_factory=dict)   # side -> report row ("main" for one-sided runs)
    llm: dict | None = None       # kind llm: {"et", "pe", "sft"}

    @property
    def uses_lambda(self) -> bool:
        """λ (joint.lambda_ml) is part of the run's identity: the bundle trains jointly."""
        return self.bundle.get("joint.joint") is True and self.kind == "joint"


_LGCN = {"domain.model": "lightgcn"}


def _domain(name: str, model: str, display: str) -> Method:
    return Method(name, "domain", {"domain.model": model}, display, {"main": display})


def _joint(name: str, bundle: dict, display: str, main: str | None = None) -> Method:
    return Method(name, "joint", bundle, display,
                  {"llm": f"{display}-llm", "drs": f"{display}-drs", "main": main or f"{display}-drs"})


def _llm(name: str, bundle: dict, display: str, et: bool, pe: bool, sft: bool) -> Method:
    return Method(name, "llm", bundle, display, {"main": display}, {"et": et, "pe": pe, "sft": sft})


_TEXT_ONLY = {"joint.joint": False, "llm.extend_tokens": False, "llm.preload": False}

METHODS: dict[str, Method] = {m.name: m for m in [
    # BDLM and its ablations (λ applies where joint.joint is true)
    _joint("bdlm", {"joint.joint": True, "llm.extend_tokens": True, "llm.preload": True, **_LGCN}, "BDLM"),
    _joint("wo_jl", {"joint.joint": False, "llm.extend_tokens": True, "llm.preload": True, **_LGCN},
           "w/o JL", "w/o JL"),
    _joint("wo_pe", {"joint.joint": True, "llm.extend_tokens": True, "llm.preload": False, **_LGCN},
           "w/o PE", "w/o PE"),
    _joint("wo_et", {"joint.joint": True, "llm.extend_tokens": False, **_LGCN}, "w/o ET", "w/o ET"),
    _joint("bdlm_ncf", {"joint.joint": True, "llm.extend_tokens": True, "llm.preload": True,
                        "domain.model": "ncf"}, "BDLM-NCF"),
    # LLM baselines, and the LLM side alone
    _llm("llmrec", {**_TEXT_ONLY, "sft.max_steps": 0}, "LLM-Rec", et=False, pe=False, sft=False),
    _llm("instructrec", dict(_TEXT_ONLY), "InstructRec", et=False, pe=False, sft=True),
    _llm("et_pe", {"joint.joint": False, "llm.extend_tokens": True, "llm.preload": True}, "ET+PE SFT",
         et=True, pe=True, sft=True),
    _llm("et", {"joint.joint": False, "llm.extend_tokens": True, "llm.preload": False}, "ET SFT",
         et=True, pe=False, sft=True),
    Method("gpt4sm", "gpt4sm", {**_TEXT_ONLY, **_LGCN}, "GPT4SM", {"main": "GPT4SM"}),
    # controls for BDLM-drs: the joint run's domain step without the LLM
    Method("ncf_ft", "control", {"domain.model": "ncf"}, "NCF-FT", {"main": "NCF-FT"}),
    Method("lightgcn_ft", "control", dict(_LGCN), "LightGCN-FT", {"main": "LightGCN-FT"}),
    # domain baselines (GMF = the schema's mf); Popularity: the non-personalised reference line
    _domain("pop", "pop", "Popularity"),
    _domain("lightgcn", "lightgcn", "LightGCN"),
    _domain("ncf", "ncf", "NCF"),
    _domain("gmf", "mf", "GMF"),
    _domain("mf", "mf", "GMF"),
    _domain("sasrec", "sasrec", "SASRec"),
    _domain("gru4rec", "gru4rec", "GRU4Rec"),
    _domain("bert4rec", "bert4rec", "BERT4Rec"),
]}

# Row order of the report's tables (labels as in `Method.labels`).
BASELINE_ROWS = ["LLM-Rec", "InstructRec", "GPT4SM", "Popularity", "NCF", "GMF", "LightGCN", "SASRec", "GRU4Rec", "BERT4Rec"]
BDLM_ROWS = ["BDLM-llm", "BDLM-drs"]
NCF_ROWS = ["NCF", "NCF-FT", "BDLM-NCF-llm", "BDLM-NCF-drs"]
CONTROL_ROWS = ["LightGCN-FT"]               # listed after the baselines, not counted as one in Improv.
ABLATION_ROWS = ["w/o ET", "w/o PE", "w/o JL", "BDLM"]


def get(name: str) -> Method:
    try:
        return METHODS[name]
    except KeyError:
        raise ValueError(f"method '{name}': expected one of {', '.join(sorted(METHODS))}") from None


def of_kind(*kinds: str) -> list[str]:
    return [n for n, m in METHODS.items() if m.kind in kinds]


def lam_tag(lam: float) -> str:
    """0.1 -> '0.1', 1e-3 -> '0.001', 10 -> '10', 0 -> '0' (stable, filename-safe)."""
    return f"{float(lam):g}"


def run_id(method: str, seed: int, lambda_ml: float | None = None, flag: str = "none") -> str:
    """`<method>[+<flag>]-lam<λ>-s<seed>` for a run whose λ matters (joint.joint true),
    `<method>[+<flag>]-s<seed>` otherwise (so a λ grid does not multiply the baselines)."""
    tag = method if flag == "none" else f"{method}+{flag}"
    return f"{tag}-lam{lam_tag(lambda_ml)}-s{seed}" if lambda_ml is not None else f"{tag}-s{seed}"


def joint_method(params: Mapping) -> str:
    """The method a joint run's parameters amount to (a standalone ablation run is reported as
    that ablation): wo_et, wo_pe, wo_jl, bdlm_ncf or bdlm."""
    j, llm = params["joint"], params["llm"]
    if not llm["extend_tokens"]:
        return "wo_et"
    if not llm["preload"]:
        return "wo_pe"
    if not j["joint"]:
        return "wo_jl"
    return "bdlm_ncf" if params["domain"]["model"] == "ncf" else "bdlm"


def label(method: str, side: str) -> str | None:
    m = METHODS.get(method)
    return None if m is None else m.labels.get(side)
