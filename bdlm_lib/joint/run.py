"""BDLM end to end: `run_bdlm(params, ds=None, domain_run=None) -> (metrics_llm, metrics_drs, run_dir)`.

    pre-trained domain model (reused run or run_domain)  ->  LLM + ET + PE  ->  M = P(E^D)
    -> JointTrainer (Algorithm 1)  ->  best state per side on validation HR@1
    -> BDLM-llm: llm.scoring on the test sets;  BDLM-drs: the cascade LLM -> h_L -> enhanced model

Run folder `<output_dir>/<dataset>/bdlm/<variant>/`: metrics.json (the shared layout for BDLM-drs,
the paper's headline, plus `llm` and `drs` sub-dicts), metrics_llm.json, metrics_drs.json,
history.json (per-step losses and distances, validation records), llm_rows.safetensors,
domain.safetensors (P-mapped rows; raw rows as user_raw/item_raw), sharing.safetensors (keys
`user`, `item`; the three at the end of training), training.png, params.yaml, environment.json.
"""
from __future__ import annotations

import time
from pathlib import Path
from typing import Mapping

import torch
import yaml
from safetensors.torch import save_file

from ..metrics import bucket_edges, evaluate, topk_metrics
from .full_ranking import full_drs, full_llm
from ..store import dataset_root, write_run
from ..methods import joint_method
from .cascade import cascade_topk_prompts, make_cascade_score_fn, make_shared_score_fns
from .enhanced import EnhancedDomainModel
from .sharing import DomainProjection, InformationSharingModule
from .trainer import CKPT, JointTrainer


def variant_name(params: Mapping) -> str:
    """e.g. lightgcn-lam0.1, lightgcn-woPE-lam0.1, lightgcn-woET, lightgcn-woJL, ncf-lam0.1-ema."""
    j, llm = params["joint"], params["llm"]
    if j.get("variant"):
        return str(j["variant"])
    parts = [params["domain"]["model"]]
    if not llm["extend_tokens"]:
        parts.append("woET")
    elif not llm["preload"]:
        parts.append("woPE")
    if not j["joint"]:
        parts.append("woJL")
    elif llm["extend_tokens"]:
        parts.append(f"lam{float(j['lambda_ml']):g}")
        if j["ml_update"] != "copy":
            parts.append(f"{j['ml_update']}{float(j['ml_momentum']):g}")
    return "-".join(parts)


def _same(a, b) -> bool:
    from ..store import plain
    return yaml.safe_dump(plain(a), sort_keys=True) == yaml.safe_dump(plain(b), sort_keys=True)


def same_data(saved: Mapping, params: Mapping) -> bool:
    """Made on the same prepared data: the data cache's recipe, which reads a key missing from a
    params.yaml written before that key existed as its null default (data.top_items)."""
    from ..data.dataset import recipe
    try:
        return _same(recipe(saved), recipe(params))
    except (KeyError, TypeError, AttributeError):   # not a params file of this workbench
        return False


def _model_keys(domain) -> dict:
    """The domain keys that shape a trained model: not the runtime keys, nor other models'
    per_model overrides."""
    from ..domain.trainer import RUNTIME_KEYS, own_per_model, with_later_defaults
    keys = {k: v for k, v in with_later_defaults(domain).items() if k not in RUNTIME_KEYS}
    if isinstance(keys.get("per_model"), Mapping):
        keys["per_model"] = own_per_model(keys["per_model"], keys.get("model"))
    return keys


def pretrained_domain(params: Mapping, ds, domain_run=None):
    """(model, run_dir): `domain_run` if given, else the finished run under
    <output_dir>/<dataset>/domain/<model>/ trained with the same data/domain params, else a new
    run_domain."""
    from ..domain import load_domain, run_domain
    if domain_run is not None:
        return load_domain(domain_run), Path(domain_run)
    name = params["domain"]["model"]
    root = dataset_root(params)
    parent = root / "domain"
    # standalone runs (domain/<model>*) first, then batch runs (<batch>/<run_id>/) of the same model
    cands = sorted(parent.glob(f"{name}*")) if parent.is_dir() else []
    cands += [d.parent for d in sorted(root.glob("*/*/model.safetensors")) if d.parent.parent != parent]
    for cand in cands:
        if not (cand / "metrics.json").exists() or not (cand / "params.yaml").exists() \
                or not (cand / "model.safetensors").exists():
            continue
        with open(cand / "params.yaml", encoding="utf-8") as f:
            saved = yaml.safe_load(f)
        if same_data(saved, params) \
                and _same(_model_keys(saved.get("domain")), _model_keys(params["domain"])):
            return load_domain(cand), cand
    model, _, run_dir = run_domain(params, ds)
    return model, run_dir


def claim_run_dir(parent: Path, name: str, params: Mapping) -> Path:
    """`parent/name` (or `name-2`, ...): a finished run is never reused, and an unfinished one only
    by a run with the same params (a resume) — its `run.json` holds the params' fingerprint — so two
    presets of one variant running at once get different folders."""
    from ..runs import read_json, write_json
    from ..store import fingerprint
    fp = fingerprint(params)
    k = 1
    while True:
        run = Path(parent) / (name if k == 1 else f"{name}-{k}")
        if not run.exists() or (not (run / "metrics.json").exists() and not any(run.iterdir())):
            run.mkdir(parents=True, exist_ok=True)
            write_json(run / "run.json", {"fingerprint": fp})
            return run
        if not (run / "metrics.json").exists() and (run / "run.json").exists() \
                and read_json(run / "run.json").get("fingerprint") == fp:
            return run
        k += 1


def build_joint(params: Mapping, ds, domain, llm, tokenizer, run_dir=None, progress: bool = True,
                samples=None, engine_factory=None) -> JointTrainer:
    """ET (+PE) on `llm`, P, M = P(E^D), the enhanced model and the trainer (validation wired).
    The domain side (model, P, M, head) is moved to params.domain.device (cuda: on a GPU machine
    the domain step need not wait for the CPU)."""
    from ..domain import domain_device
    from ..llm.prompts import PromptBuilder
    from ..llm.tokens import extend_tokens, preload, word_norm
    seed = int(params["seed"])
    tm = None
    dev = domain_device(params)
    domain.to(dev)
    h = llm.get_input_embeddings().weight.shape[1]
    with torch.no_grad():
        U, I = domain.embeddings()
        U, I = U.detach().float(), I.detach().float()
    proj = DomainProjection(domain.dim, h, seed).to(dev)   # drawn on the CPU, then moved
    M = None
    if params["llm"]["extend_tokens"]:
        tm = extend_tokens(llm, tokenizer, ds.n_users, ds.n_items)
        if params["llm"]["preload"]:
            preload(llm, tm, U, I, proj=None, seed=seed)   # the same map + scale as P below
        proj.calibrate(U, I, word_norm(llm, tm))
        M = InformationSharingModule.from_domain(domain, proj, params["joint"]["ml_update"],
                                                 params["joint"]["ml_momentum"])
    builder = PromptBuilder(ds, tokenizer, params, token_map=tm)
    enhanced = EnhancedDomainModel(domain, h).to(dev)
    trainer = JointTrainer(llm, tokenizer, tm, builder, enhanced, proj, M, params, ds, samples=samples,
                           run_dir=run_dir, progress=progress, validate_fn=validation(params, ds),
                           engine_factory=engine_factory)
    return trainer


def validation(params: Mapping, ds):
    """validate_fn for the trainer: valid top-K HR@1 of both sides from one cascade pass (ET)."""
    j = params["joint"]
    users = j["valid_users"] or params["eval"]["max_users"]
    frame = ds.topk("valid", max_users=users)
    bs = int(params["sft"]["eval_batch_size"])
    cache = {}

    def fn(trainer) -> dict:
        from ..llm.batching import fill_scores
        if "prompts" not in cache:
            cache["prompts"] = trainer.builder.topk_prompts(frame, with_answer=False)
        prompts = cache["prompts"]
        drs, lls = cascade_topk_prompts(trainer.eval_model(), trainer.builder, trainer.enhanced, prompts, bs,
                                        progress=False, with_llm=True)
        return {"llm_HR@1": topk_metrics(frame, fill_scores(frame, prompts, lls), ks=(1,))["HR@1"],
                "drs_HR@1": topk_metrics(frame, fill_scores(frame, prompts, drs), ks=(1,))["HR@1"]}
    return fn


def save_embeddings(trainer: JointTrainer, run_dir: Path) -> None:
    """llm_rows / domain / sharing .safetensors (keys user, item) for the embedding explorer
    (computed on every rank: gathering ZeRO-3 weights is collective; rank 0 writes)."""
    from .llm_io import id_tables
    with torch.no_grad():
        U, I = trainer.enhanced.domain.embeddings()
        U, I = U.detach().float(), I.detach().float()
        dom = {"user": trainer.proj(U, "user"), "item": trainer.proj(I, "item"), "user_raw": U, "item_raw": I}
        dom = {k: v.cpu().contiguous() for k, v in dom.items()}
    rows = id_tables(trainer.llm, trainer.tm) if trainer.tm is not None else None
    if trainer.rank != 0:
        return
    save_file(dom, str(run_dir / "domain.safetensors"))
    if rows is not None:
        save_file({"user": rows[0].contiguous(), "item": rows[1].contiguous()}, str(run_dir / "llm_rows.safetensors"))
        save_file({"user": trainer.M.M_U.cpu().contiguous(), "item": trainer.M.M_I.cpu().contiguous()},
                  str(run_dir / "sharing.safetensors"))


def load_inputs(params: Mapping, ds=None, domain_run=None, verbose: bool = True, cuda: bool = True):
    """What every LLM + domain-model run starts from: (ds, domain model, its run dir, LLM, tokenizer)."""
    from ..data import load_dataset
    from ..llm.backbone import load_backbone
    if ds is None:
        ds = load_dataset(params, verbose=verbose)
    domain, domain_dir = pretrained_domain(params, ds, domain_run)
    lp = params["llm"]
    llm, tok = load_backbone(lp["backbone"], lp.get("model_cache"), lp["dtype"], lp["attn_implementation"])
    if cuda and torch.cuda.is_available():
        llm = llm.cuda()
    return ds, domain, domain_dir, llm, tok


def run_bdlm(params: Mapping, ds=None, domain_run=None, progress: bool = True, run_dir=None,
             stop_after: int | None = None):
    """Train and evaluate one BDLM variant; returns (metrics_llm, metrics_drs, run_dir).
    An unfinished run folder of the same variant (checkpoint present) is resumed. `stop_after`:
    stop after that many global steps, as an interruption would (checkpoint written; returns
    (None, None, run_dir))."""
    from ..data import load_dataset
    t0 = time.perf_counter()
    cfg_path = params["joint"]["deepspeed_config"]
    rank, factory = 0, None
    if cfg_path:   # the LLM step under DeepSpeed: every rank runs this function (the launcher's processes)
        from .distributed import engine_factory, init_distributed, load_ds_config
        if params["sft"]["trainable"] != "full":
            raise ValueError("joint.deepspeed_config: params.sft.trainable must be 'full' (the paper's "
                             "setting; the row-mask hooks of 'top'/'lora' are not ZeRO-3 aware)")
        rank, _ = init_distributed()
        factory = engine_factory(params, load_ds_config(cfg_path))
    if cfg_path:
        if rank == 0:     # missing data or domain run: prepared once, by rank 0, then read by all
            ds = ds if ds is not None else load_dataset(params)
            pretrained_domain(params, ds, domain_run)
        torch.distributed.barrier()
    if ds is None:
        ds = load_dataset(params, verbose=rank == 0)
    ds, domain, domain_dir, llm, tok = load_inputs(params, ds, domain_run, verbose=rank == 0)
    if run_dir is None:
        name = variant_name(params) + ("-ds" if cfg_path else "")
        run_dir = claim_run_dir(dataset_root(params) / "bdlm", name, params) if rank == 0 else None
    if cfg_path:   # every rank writes its checkpoint shard into rank 0's folder
        holder = [str(run_dir) if run_dir else None]
        torch.distributed.broadcast_object_list(holder, src=0)
        run_dir = holder[0]
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    trainer = build_joint(params, ds, domain, llm, tok, run_dir=run_dir, progress=progress and rank == 0,
                          engine_factory=factory)
    trainer.train(stop_after=stop_after)
    if trainer.step < trainer.n_global:
        return None, None, run_dir
    return finish_run(trainer, params, ds, run_dir, domain_dir, t0, progress)


def finish_run(trainer: JointTrainer, params: Mapping, ds, run_dir: Path, domain_dir, t0: float,
               progress: bool = True):
    """After training: embeddings, best state per side, test metrics of both sides, artefacts.
    Under DeepSpeed every rank runs it (ZeRO-3 forward passes are collective); rank 0 writes."""
    import shutil

    from ..llm.scoring import make_score_fn
    from .plots import plot_joint_history
    history = trainer.history
    train_seconds = time.perf_counter() - t0
    save_embeddings(trainer, run_dir)
    bs = int(params["sft"]["eval_batch_size"])
    mu = params["eval"]["max_users"]
    tu = params["eval"].get("topk_users")
    ks = params["eval"]["ks"]
    show = progress and trainer.rank == 0
    best = history["best"]
    if trainer.tm is not None and best.get("llm", {}).get("step") == best.get("drs", {}).get("step"):
        # both sides' best state is the same step (best_drs holds all of it): one cascade pass
        # scores both, which halves the test evaluation
        trainer.load_side(run_dir / "best_drs", "drs")
        fn_llm, fn_drs = make_shared_score_fns(trainer.eval_model(), trainer.builder, trainer.enhanced, bs, show)
    else:
        trainer.load_side(run_dir / "best_llm", "llm")
        fn_llm = make_score_fn(trainer.eval_model(), trainer.builder, bs, show)
        fn_drs = None
    m_llm, p_llm = evaluate(fn_llm, ds, "test", mu, ks, return_predictions=True, topk_users=tu,
                            buckets=bucket_edges(params))
    m_llm.update(full_llm(trainer.eval_model(), trainer.builder, ds, params, bs, show))
    if fn_drs is None:
        trainer.load_side(run_dir / "best_drs", "drs")
        fn_drs = make_cascade_score_fn(trainer.eval_model(), trainer.builder, trainer.enhanced, bs, show)
    m_drs, p_drs = evaluate(fn_drs, ds, "test", mu, ks, return_predictions=True, topk_users=tu,
                            buckets=bucket_edges(params))
    m_drs.update(full_drs(trainer.eval_model(), trainer.builder, trainer.enhanced, ds, params, bs, show))
    info = {"method": joint_method(params), "variant": variant_name(params), "dataset": str(params["dataset"]),
            "preset": params.get("preset"), "domain_model": params["domain"]["model"],
            "domain_run": str(domain_dir), "best": history["best"], "steps": trainer.n_global,
            "deepspeed": trainer.engine is not None, "world_size": trainer.world,
            "train_seconds": round(train_seconds, 2),
            "wall_seconds": round(time.perf_counter() - t0, 2)}
    m_llm = {**m_llm, **info, "side": "llm"}
    m_drs = {**m_drs, **info, "side": "drs"}
    if trainer.rank == 0:
        import matplotlib.pyplot as plt
        plt.close(plot_joint_history(history, run_dir / "training.png", title=f"BDLM {variant_name(params)}"))
        metrics = {**m_drs, "llm": m_llm, "drs": m_drs}
        write_run(run_dir, params, metrics, extra={"history.json": history, "metrics_llm.json": m_llm,
                                                   "metrics_drs.json": m_drs},
                  predictions={"predictions_llm.parquet": p_llm, "predictions_drs.parquet": p_drs})
        for d in (CKPT, CKPT + "_ds"):   # finished: the resumable state is not needed
            shutil.rmtree(run_dir / d, ignore_errors=True)
    return m_llm, m_drs, run_dir
