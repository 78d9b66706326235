"""Joint training by deep mutual learning (paper §4.3, Algorithm 1).

Each step takes one aligned batch of SFT samples (u, i, prompt, answer, label) from
`PromptBuilder.train_samples` and runs
  (1) the LLM step: L_LLM + λ·L_ML^L over the batch's users and items (history, candidates and
      target), then the LLM's updated `<uid>`/`<iid>` rows are written into M;
  (2) the domain step: L_D + λ·L_ML^D, L_D = BCE of the LLM-enhanced domain model on the batch's
      positives (the answer item / binary label) and `joint.domain_negatives` candidates per top-K
      prompt, with h_L read from step (1)'s forward pass (detached); then the domain model's mapped
      rows are written into M.
Without ET there are no id rows: L_ML is undefined (logged as null) and M is not used; the two
models still alternate, the domain model reading the training LLM's h_L.
With joint.joint = false (w/o JL) the LLM is fine-tuned first (λ·L_ML dropped) and the enhanced
domain model is then trained on the frozen LLM's h_L over the same batch schedule.

Determinism and resume: the batch order depends only on (seed, epoch); the torch and numpy RNGs
are re-seeded from (seed, step) at every step; a checkpoint holds the trainable LLM weights, the
domain side, M, both optimisers and the LR schedule. So a run interrupted after step k and resumed
ends with the same numbers as the uninterrupted run.
"""
from __future__ import annotations

import math
import time
from contextlib import nullcontext
from pathlib import Path
from typing import Mapping

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import save_file

from ..curves import Curves
from ..llm.batching import epoch_schedule
from ..llm.efficiency import autocast, gradient_checkpointing
from ..llm.sft import setup_trainable
from ..runs import atomic_dir, read_json, read_safetensors, write_json
from ..llm.batching import collate
from .distributed import answer_tokens, gather_item_hidden, shard, sync_replicas, token_weighted
from .llm_io import JointLLM, item_hidden, gathered, id_rows, id_tables, prompt_ids
from .sharing import mutual_learning_loss


CKPT = "checkpoint"


def step_seed(seed: int, step: int) -> int:
    return (int(seed) * 1_000_003 + int(step) * 7919) % (2 ** 31 - 1)


def joint_samples_of(builder, ds, params: Mapping) -> list:
    """A joint run's training samples: the SFT samples (llm.task) plus the auxiliary ones
    (Cao et al. 2024, sft.aux_tasks; none added for none)."""
    from ..llm.aux_tasks import add_aux_samples
    return add_aux_samples(builder.train_samples(task=params["llm"]["task"]), ds, builder, params)


def joint_schedule(params: Mapping, n_samples: int) -> tuple[int, list, int]:
    """(batch size, batch schedule, steps to run) of a joint run over `n_samples` samples: the
    order depends only on (seed, epoch); joint.max_steps cuts it."""
    j = params["joint"]
    bs = int(j["batch_size"] or params["sft"]["batch_size"])
    schedule = epoch_schedule(n_samples, bs, int(j["epochs"]), int(params["seed"]))
    total = len(schedule) if j.get("max_steps") is None else min(len(schedule), int(j["max_steps"]))
    return bs, schedule, total


def select_examples(prompts, n_neg: int, rng: np.random.Generator):
    """Which of the batch's candidate mentions (top-K candidates in prompt order, binary items) the
    domain step trains on, with labels: per top-K prompt the answer item (1) and `n_neg` of its other
    candidates (0); per binary prompt its item with its label. Returns (indices, labels)."""
    keep, labels, k = [], [], 0
    for p in prompts:
        if p.task not in ("topk", "binary"):
            continue  # auxiliary (MIM/BPR) samples feed L_LLM and L_ML only, not the domain step
        n = len(p.candidates) if p.task == "topk" else 1
        if p.task == "topk":
            cand = np.asarray(p.candidates)
            pos = np.flatnonzero(cand == p.target)
            neg = np.flatnonzero(cand != p.target)
            neg = rng.choice(neg, size=min(n_neg, len(neg)), replace=False) if n_neg > 0 else neg[:0]
            sel = np.concatenate([pos[:1], np.sort(neg)])
            keep += (k + sel).tolist()
            labels += [1.0] + [0.0] * (len(sel) - 1)
        else:
            keep.append(k)
            labels.append(float(p.label))
        k += n
    return np.asarray(keep, dtype=np.int64), np.asarray(labels, dtype=np.float32)


def domain_examples(prompts, out, n_neg: int, rng: np.random.Generator, mentions=None):
    """(users, items, h_L, labels) for the domain step from one LLM forward pass (select_examples);
    `mentions` = (users, items, h_L) of the prompts' candidate mentions when they come from several
    ranks (`distributed.gather_item_hidden`), else read from `out`."""
    users, items, h = item_hidden(out, prompts, "candidates") if mentions is None else mentions
    keep, labels = select_examples(prompts, n_neg, rng)
    return users[keep], items[keep], h[torch.as_tensor(keep, dtype=torch.long)], labels


class JointTrainer:
    """Algorithm 1 over `samples`; `train()` returns the history (per-step losses and distances,
    validation records)."""

    def __init__(self, llm, tokenizer, token_map, builder, enhanced, proj, sharing, params: Mapping,
                 ds, samples=None, run_dir=None, progress: bool = True, validate_fn=None,
                 engine_factory=None):
        self.llm, self.tok, self.tm, self.builder = llm, tokenizer, token_map, builder
        self.wrapper = JointLLM(llm, token_map)
        self.enhanced, self.proj, self.M, self.params, self.ds = enhanced, proj, sharing, params, ds
        self.run_dir = Path(run_dir) if run_dir is not None else None
        self.progress, self.validate_fn = progress, validate_fn
        j, sft = params["joint"], params["sft"]
        self.joint = bool(j["joint"])
        self.lam = float(j["lambda_ml"])
        if self.lam < 0 or not math.isfinite(self.lam):
            raise ValueError(f"params.joint.lambda_ml must be a finite number >= 0, got {self.lam}")
        self.seed = int(params["seed"])
        if samples is None:
            samples = joint_samples_of(builder, ds, params)
        self.samples = samples
        if not self.samples:
            raise ValueError("joint training: no training samples (check sft.max_train_users / llm.task)")
        bs, self.schedule, self.total = joint_schedule(params, len(self.samples))
        self.steps_per_epoch = math.ceil(len(self.samples) / bs)
        # w/o JL runs the LLM phase, then the domain phase, over the same schedule
        self.n_global = self.total if self.joint else 2 * self.total
        self.n_neg = int(j["domain_negatives"])
        self.pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
        groups, self.hooks, self.trainable_info = setup_trainable(llm, tokenizer, params)
        self.llm_params = [p for g in groups for p in g["params"]]
        lr = float(j.get("llm_lr") or sft["lr"])
        from transformers import get_cosine_schedule_with_warmup
        warm = math.ceil(float(sft["warmup_ratio"]) * self.total)

        def make_sched(opt):
            return get_cosine_schedule_with_warmup(opt, warm, self.total)
        self.engine, self.rank, self.world = None, 0, 1
        if engine_factory is None:
            self.llm_opt = torch.optim.AdamW(groups, lr=lr)
            self.llm_sched = make_sched(self.llm_opt)
        else:   # DeepSpeed: the engine owns the optimiser (from its JSON config), the schedule, clipping
            self.engine = engine_factory(self.wrapper, groups, lr, make_sched)
            self.llm_opt, self.llm_sched = self.engine.optimizer, self.engine.lr_scheduler
            if torch.distributed.is_initialized():
                self.rank, self.world = torch.distributed.get_rank(), torch.distributed.get_world_size()
        dom_params = list(enhanced.parameters()) + [p for p in proj.parameters() if p.requires_grad]
        self.dom_opt = torch.optim.Adam(dom_params, lr=float(j["domain_lr"]))
        eval_every = j.get("eval_every") or self.steps_per_epoch
        self.eval_every = int(eval_every)
        self.ckpt_every = int(j.get("checkpoint_every") or self.eval_every)
        self.step = 0
        self.curves = Curves(None)   # train(): the run folder's TensorBoard curves (rank 0)
        self.history: dict = {"steps": [], "valid": [], "best": {}, "total_steps": self.total,
                              "joint": self.joint, "lambda_ml": self.lam, "n_samples": len(self.samples),
                              **{k: v for k, v in self.trainable_info.items()}}

    # ------------------------------------------------------------------ one step
    def _llm_forward(self, prompts, train: bool, with_rows: bool = False, ids_of=None):
        """The LLM step's forward pass (through the DeepSpeed engine when there is one); the id
        rows are those of `ids_of`'s users and items (default: `prompts`')."""
        self.llm.train(train)
        batch = collate(prompts, self.pad, with_answer=True)
        users, items = prompt_ids(prompts if ids_of is None else ids_of)
        if self.engine is not None and train:   # the engine's own precision (its JSON config)
            out, ru, ri = self.engine(batch, users if with_rows else None, items if with_rows else None)
            return out, users, items, ru, ri
        dev = next(self.llm.parameters()).device
        with gradient_checkpointing(self.llm, self.params) if train else nullcontext(), \
                autocast(dev, self.params):
            out, ru, ri = self.wrapper(batch, users if with_rows else None, items if with_rows else None)
        return out, users, items, ru, ri

    def llm_step(self, prompts) -> tuple[dict, object]:
        """(1): L_LLM + λ·L_ML^L, optimiser step, write the LLM's rows into M.

        Data parallel (DeepSpeed, world > 1): each rank runs its shard of the global batch, its
        loss weighted by its share of the answer tokens, and L_ML^L over the global batch's ids
        (module `distributed`: the averaged gradient is one process's); the rows written into M are
        those of the whole global batch (identical on every rank after the synchronised step), so
        M stays replicated."""
        run, mine = shard(prompts, self.rank, self.world)
        use_m = self.tm is not None and self.M is not None
        out, users, items, ru, ri = self._llm_forward(run, True, with_rows=use_m, ids_of=prompts)
        loss_llm = out.loss
        rec = {"L_LLM": float(loss_llm.detach()), "L_ML^L": None}
        if self.world > 1:
            loss_llm, rec["L_LLM"] = token_weighted(loss_llm, answer_tokens(mine), self.world)
        loss = loss_llm
        if use_m:
            l_ml = mutual_learning_loss(ru, ri, self.M, users, items)
            rec["L_ML^L"] = float(l_ml.detach())
            if self.joint and self.lam > 0:   # λ = 0: the term does not even enter the graph
                loss = loss + self.lam * l_ml
        if self.engine is not None:
            self.engine.backward(loss)
            self.engine.step()
        else:
            self.llm_opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(self.llm_params, float(self.params["sft"]["max_grad_norm"]))
            self.llm_opt.step()
            self.llm_sched.step()
        if self.joint and use_m:
            gu, gi = prompt_ids(prompts)
            with torch.no_grad():
                self.M.write(gu, gi, *id_rows(self.llm, self.tm, gu, gi))
        return rec, (out, mine)

    def domain_step(self, prompts, out, rng) -> dict:
        """(2): L_D + λ·L_ML^D with h_L from the LLM step's forward pass, then write into M."""
        self.enhanced.train()
        out, mine = out
        # several ranks: every rank gets the global batch's mentions, in one process's order
        mentions = gather_item_hidden(item_hidden(out, mine, "candidates")[2], mine, prompts, self.rank,
                                      self.world) if self.world > 1 else None
        u, i, h, y = domain_examples(prompts, out, self.n_neg, rng, mentions)
        loss_d = self.enhanced.loss(u, i, h, y)
        rec = {"L_D": float(loss_d.detach()), "L_ML^D": None}
        loss = loss_d
        use_m = self.tm is not None and self.M is not None
        if use_m:
            users, items = prompt_ids(prompts)
            ru, ri = self._domain_rows(users, items)
            l_ml = mutual_learning_loss(ru, ri, self.M, users, items)
            rec["L_ML^D"] = float(l_ml.detach())
            if self.joint and self.lam > 0:
                loss = loss + self.lam * l_ml
        self.dom_opt.zero_grad(set_to_none=True)
        loss.backward()
        self.dom_opt.step()
        if use_m and self.joint:
            with torch.no_grad():
                self.M.write(users, items, *self._domain_rows(users, items))
        return rec

    def _domain_rows(self, users, items):
        """P(E_U^D[u]), P(E_I^D[i]) (with grad)."""
        U, I = self.enhanced.domain.embeddings()
        u, i = torch.as_tensor(users, device=U.device), torch.as_tensor(items, device=I.device)
        return self.proj(U[u], "user"), self.proj(I[i], "item")

    @torch.no_grad()
    def distances(self) -> dict:
        """Mean-squared distances over the whole tables: LLM↔M, domain↔M, LLM↔domain."""
        if self.tm is None or self.M is None:
            return {}
        LU, LI = id_tables(self.llm, self.tm, device=self.M.M_U.device)
        U, I = self.enhanced.domain.embeddings()
        DU, DI = self.proj(U.float(), "user"), self.proj(I.float(), "item")
        mse = F.mse_loss
        return {"dist_llm_M": float(mse(LU, self.M.M_U) + mse(LI, self.M.M_I)),
                "dist_domain_M": float(mse(DU, self.M.M_U) + mse(DI, self.M.M_I)),
                "dist_llm_domain": float(mse(LU, DU) + mse(LI, DI))}

    def run_step(self, g: int) -> dict:
        """Global step g (joint: both sides; w/o JL: LLM phase then domain phase)."""
        s = step_seed(self.seed, g)
        torch.manual_seed(s)
        rng = np.random.default_rng(s)
        k = g if self.joint or g < self.total else g - self.total
        prompts = [self.samples[n] for n in self.schedule[k]]
        rec = {"step": g + 1, "epoch": k // self.steps_per_epoch}
        if self.joint:
            r, out = self.llm_step(prompts)
            rec.update(r)
            rec.update(self.domain_step(prompts, out, rng))
        elif g < self.total:
            r, _ = self.llm_step(prompts)
            rec.update(r, phase="llm")
        else:   # the frozen LLM's h_L: same pass, no gradient, eval mode
            run, mine = shard(prompts, self.rank, self.world)
            with torch.no_grad():
                out = self._llm_forward(run, False)[0]
            loss = token_weighted(out.loss, answer_tokens(mine), self.world)[1] if self.world > 1 \
                else float(out.loss)
            rec.update({"L_LLM": loss, "L_ML^L": None, "phase": "domain"})
            rec.update(self.domain_step(prompts, (out, mine), rng))
        rec.update(self.distances())
        return rec

    # ------------------------------------------------------------------ loop
    def _due(self, g: int) -> bool:
        done = g + 1
        if done == self.n_global:
            return True
        if not self.joint and done <= self.total:   # w/o JL: validate only in the domain phase
            return False
        k = done if self.joint else done - self.total
        return k % self.eval_every == 0

    def train(self, stop_after: int | None = None) -> dict:
        """Run (or resume) to the end; `stop_after` = simulate an interruption after that many
        global steps (the checkpoint at that point is written first)."""
        from tqdm.auto import tqdm
        if self.run_dir is not None and (self.run_dir / CKPT / "trainer.json").exists():
            self.load_checkpoint(self.run_dir / CKPT)
        self.curves = Curves(self.run_dir if self.rank == 0 else None)   # x = global step
        self.curves.open(purge_step=self.step + 1)
        bar = tqdm(total=self.n_global, initial=self.step, desc="joint (BDLM)", disable=not self.progress)
        t0 = time.perf_counter()
        try:
            while self.step < self.n_global:
                g = self.step
                rec = self.run_step(g)
                rec["seconds"] = round(time.perf_counter() - t0, 2)
                self.history["steps"].append(rec)
                self.curves.scalars(rec["step"], {k: v for k, v in rec.items() if k not in ("step", "epoch")})
                self.step = g + 1
                bar.update(1)
                bar.set_postfix({k: f"{rec[k]:.3g}" for k in ("L_LLM", "L_D") if k in rec})
                if self._due(g):
                    self.validate()
                if self.run_dir is not None and (self.step % self.ckpt_every == 0 or self.step == stop_after) \
                        and self.step < self.n_global:
                    self.save_checkpoint(self.run_dir / CKPT)
                if stop_after is not None and self.step >= stop_after:
                    break
        finally:
            bar.close()
            self.curves.close()
        if self.step >= self.n_global:
            for h in self.hooks:
                h.remove()
            self.hooks = []
            self.llm.eval()
            self.enhanced.eval()
        return self.history

    def validate(self) -> dict:
        """Validation HR@1 of both sides (through `validate_fn`); keeps the best state per side."""
        if self.validate_fn is None:
            return {}
        rec = {"step": self.step}
        if self.world > 1:   # the replicated domain side: its drift from rank 0's copy, then none
            rec["replica_max_diff"] = self.sync_replicas()
        rec.update(self.validate_fn(self))
        self.history["valid"].append(rec)
        self.curves.scalars(self.step, {k: v for k, v in rec.items() if k != "step"}, "valid")
        for side in ("llm", "drs"):
            key = f"{side}_HR@1"
            best = self.history["best"].get(side)
            if key in rec and (best is None or rec[key] > best["HR@1"]):
                self.history["best"][side] = {"step": self.step, "HR@1": rec[key]}
                if self.run_dir is not None:
                    self.save_side(self.run_dir / f"best_{side}", side)
        return rec

    # ------------------------------------------------------------------ state
    def sync_replicas(self) -> float:
        """Several ranks: every rank takes rank 0's domain side (model, P, head) and M; returns the
        largest difference found (0.0: the replicas had stayed identical)."""
        tensors = [t for m in (self.enhanced, self.proj) for t in m.parameters()]
        if self.M is not None:
            tensors += [self.M.M_U, self.M.M_I]
        return sync_replicas(tensors)

    def llm_state(self) -> dict:
        """Trainable LLM weights on CPU (gathered under ZeRO-3: every rank must call it)."""
        named = [(n, p) for n, p in self.llm.named_parameters() if p.requires_grad]
        with gathered([p for _, p in named]):
            return {n: p.detach().cpu().contiguous().clone() for n, p in named}

    def eval_model(self):
        """The LLM to score with: itself, or under ZeRO-3 (partitioned weights, which the scoring
        code indexes directly) a plain replica holding the gathered current weights."""
        if not any(hasattr(p, "ds_id") for p in self.llm.parameters()):
            return self.llm
        if getattr(self, "_replica", None) is None:   # built on its device in the weights' dtype
            w = self.llm.get_input_embeddings().weight
            with torch.device(w.device):
                self._replica = type(self.llm)._from_config(self.llm.config, dtype=w.dtype)
        named = list(self.llm.named_parameters())
        rep = dict(self._replica.named_parameters())
        with torch.no_grad():
            for n, p in named:   # one parameter gathered at a time: never a second full copy
                with gathered([p]):
                    rep[n].copy_(p.detach().to(rep[n].device, rep[n].dtype))
        self._replica.eval()
        return self._replica

    def domain_state(self) -> dict:
        sd = {f"enhanced.{k}": v for k, v in self.enhanced.state_dict().items()}
        sd.update({f"proj.{k}": v for k, v in self.proj.state_dict().items()})
        return {k: v.detach().cpu().contiguous().clone() for k, v in sd.items()}

    def load_llm_state(self, sd: dict) -> None:
        params = dict(self.llm.named_parameters())
        zero3 = [params[n] for n in sd if hasattr(params[n], "ds_id")]
        ctx = gathered([])
        if zero3:
            import deepspeed
            ctx = deepspeed.zero.GatheredParameters(zero3, modifier_rank=0)
        with ctx, torch.no_grad():
            for n, t in sd.items():
                params[n].copy_(t.to(params[n].device, params[n].dtype))

    def load_domain_state(self, sd: dict) -> None:
        self.enhanced.load_state_dict({k[9:]: v for k, v in sd.items() if k.startswith("enhanced.")})
        self.proj.load_state_dict({k[5:]: v for k, v in sd.items() if k.startswith("proj.")})

    def save_side(self, path: Path, side: str) -> None:
        """The weights that give one side's scores: the LLM (+ the domain side for drs)."""
        state = self.llm_state()
        if self.rank == 0:
            with atomic_dir(path) as tmp:
                save_file(state, str(tmp / "llm.safetensors"))
                if side == "drs":
                    save_file(self.domain_state(), str(tmp / "domain.safetensors"))
        if self.world > 1:     # the other ranks read these files at the end
            torch.distributed.barrier()

    def load_side(self, path: Path, side: str) -> None:
        self.load_llm_state(read_safetensors(path / "llm.safetensors"))
        if side == "drs":
            self.load_domain_state(read_safetensors(path / "domain.safetensors"))

    def save_checkpoint(self, path: Path) -> None:
        """Plain: everything in `path` (atomic). DeepSpeed: the engine's own checkpoint (LLM +
        partitioned optimiser, all ranks) in `path`_ds, the rest in `path` (rank 0)."""
        state = self.llm_state() if self.engine is None else None
        tag = f"step-{self.step}"   # trainer.json names it: the two parts always match on resume
        if self.engine is not None:
            self.engine.save_checkpoint(str(path) + "_ds", tag=tag)
        if self.rank != 0:
            return
        with atomic_dir(path) as tmp:
            if state is not None:
                save_file(state, str(tmp / "llm.safetensors"))
                torch.save({"llm_opt": self.llm_opt.state_dict(), "llm_sched": self.llm_sched.state_dict()},
                           tmp / "llm_optim.pt")
            save_file(self.domain_state(), str(tmp / "domain.safetensors"))
            if self.M is not None:
                save_file({k: v.cpu().contiguous() for k, v in self.M.state_dict().items()},
                          str(tmp / "sharing.safetensors"))
            torch.save({"dom_opt": self.dom_opt.state_dict()}, tmp / "domain_optim.pt")
            write_json(tmp / "trainer.json", {"step": self.step, "history": self.history,
                                              "ds_tag": tag if self.engine is not None else None})
        if self.engine is not None:   # the engine's older states (rank 0 writes the shared folder)
            import shutil
            for old in Path(str(path) + "_ds").glob("step-*"):
                if old.name != tag:
                    shutil.rmtree(old, ignore_errors=True)

    def load_checkpoint(self, path: Path) -> None:
        state = read_json(path / "trainer.json")
        if state["history"].get("total_steps") != self.total:
            raise ValueError(f"{path}: checkpoint of a run with {state['history'].get('total_steps')} "
                             f"steps, this run has {self.total} (different params: use a new run dir)")
        if self.engine is not None:
            self.engine.load_checkpoint(str(path) + "_ds", tag=state.get("ds_tag"))
        else:
            self.load_llm_state(read_safetensors(path / "llm.safetensors"))
            # weights_only: never unpickle arbitrary objects
            opt = torch.load(path / "llm_optim.pt", weights_only=True)
            self.llm_opt.load_state_dict(opt["llm_opt"])
            self.llm_sched.load_state_dict(opt["llm_sched"])
        self.load_domain_state(read_safetensors(path / "domain.safetensors"))
        if self.M is not None:
            self.M.load_state_dict(read_safetensors(path / "sharing.safetensors"))
        self.dom_opt.load_state_dict(torch.load(path / "domain_optim.pt", weights_only=True)["dom_opt"])
        self.step, self.history = int(state["step"]), state["history"]
        self.history["resumed_from_step"] = self.step
