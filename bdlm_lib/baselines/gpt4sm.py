"""GPT4SM baseline (paper §5.3): a domain model fed the frozen, non-fine-tuned LLM's text embeddings.

    ŷ(u, i) = σ(wᵀ [f_D(u, i) ; e_text(item i) ; e_text(history of u)] + b)

e_text = the backbone's top-layer hidden state at the last token of the text (the same reading as
h_L without ET): the item text is its (cut) title, the user text the titles of the last
llm.history_len train items ("The user has watched the following movies: ..."). The backbone is
neither extended nor fine-tuned and receives no gradient; the embeddings are computed once.
The domain side starts from the same pre-trained domain model as BDLM (`pretrained_domain`) and is
trained with BCE on the train split (one sampled negative per positive), baselines.gpt4sm_epochs
epochs at baselines.gpt4sm_lr, the best epoch on validation HR@1 kept. Artefacts go to
`<output_dir>/<dataset>/baselines/gpt4sm/`.
"""
from __future__ import annotations

import copy
import time
from pathlib import Path
from typing import Mapping

import numpy as np
import torch
from tqdm.auto import tqdm

from ..metrics import bucket_edges, evaluate, topk_metrics
from ..store import dataset_root, new_run_dir, write_run
from ..joint.enhanced import EnhancedDomainModel


@torch.no_grad()
def text_embeddings(llm, tokenizer, texts, batch_size: int = 32, progress: bool = True) -> torch.Tensor:
    """[len(texts), h]: top-layer hidden state at each text's last token (frozen backbone)."""
    from ..llm.batching import body
    llm.eval()
    dev = llm.get_input_embeddings().weight.device
    out = torch.zeros(len(texts), llm.get_input_embeddings().weight.shape[1])
    order = np.argsort([len(t) for t in texts], kind="stable")
    for s in tqdm(range(0, len(order), batch_size), desc="GPT4SM text embeddings", disable=not progress,
                  leave=False):
        idx = order[s:s + batch_size]
        enc = [tokenizer(texts[i], add_special_tokens=False)["input_ids"] or [tokenizer.eos_token_id]
               for i in idx]
        T = max(len(e) for e in enc)
        ids = torch.full((len(enc), T), tokenizer.pad_token_id or 0, dtype=torch.long)
        mask = torch.zeros((len(enc), T), dtype=torch.long)
        for r, e in enumerate(enc):
            ids[r, :len(e)] = torch.tensor(e)
            mask[r, :len(e)] = 1
        pos = (mask.cumsum(1) - 1).clamp_min(0)
        hid = body(llm)(input_ids=ids.to(dev), attention_mask=mask.to(dev), position_ids=pos.to(dev),
                        use_cache=False).last_hidden_state
        last = mask.sum(1) - 1
        out[torch.as_tensor(idx)] = hid[torch.arange(len(enc)), last.to(dev)].float().cpu()
    return out


def gpt4sm_texts(ds, params: Mapping) -> tuple[list[str], list[str]]:
    """(item texts, user history texts), titles cut as in the prompts."""
    n = int(params["llm"]["max_title_chars"])
    cut = [" ".join(str(t).split())[:n].rstrip() for t in ds.titles]
    k = int(params["llm"]["history_len"])
    users = [f"The user has interacted with the following {ds.noun or 'items'}: "
             + ", ".join(f"\"{cut[j]}\"" for j in seq[-k:]) for seq in ds.train_sequences()]
    return cut, users


class GPT4SM(torch.nn.Module):
    """The enhanced head over [f_D ; item text ; user text] with the text tables as buffers."""

    def __init__(self, domain, item_text: torch.Tensor, user_text: torch.Tensor):
        super().__init__()
        self.register_buffer("item_text", item_text.float())
        self.register_buffer("user_text", user_text.float())
        self.enhanced = EnhancedDomainModel(domain, item_text.shape[1] + user_text.shape[1])

    def extra(self, users, items) -> torch.Tensor:
        dev = self.item_text.device
        u, i = torch.as_tensor(np.asarray(users), device=dev), torch.as_tensor(np.asarray(items), device=dev)
        return torch.cat([self.item_text[i], self.user_text[u]], dim=-1)

    def forward(self, users, items):
        return self.enhanced(users, items, self.extra(users, items))

    def predict(self, users, items, batch_size: int = 4096) -> np.ndarray:
        return self.enhanced.predict(users, items, self.extra(users, items), batch_size)


def train_gpt4sm(model: GPT4SM, ds, params: Mapping, progress: bool = True) -> list[dict]:
    from ..domain.trainer import NegativeSampler
    j = params["baselines"]
    seed = int(params["seed"])
    users, items = ds.train["user"].to_numpy(), ds.train["item"].to_numpy()
    sampler = NegativeSampler(users, items, ds.n_items)
    opt = torch.optim.Adam(model.enhanced.parameters(), lr=float(j["gpt4sm_lr"]))
    bs = int(params["domain"]["batch_size"])
    valid = ds.topk("valid", max_users=params["eval"]["max_users"])
    hist, best, best_state = [], -1.0, None
    for ep in tqdm(range(int(j["gpt4sm_epochs"])), desc="GPT4SM", disable=not progress, leave=False):
        rng = np.random.default_rng([seed, ep])
        torch.manual_seed(seed * 1000 + ep)
        perm = rng.permutation(len(users))
        neg = sampler.sample(users[perm], 1, rng)[:, 0]
        model.train()
        total = 0.0
        for s in range(0, len(perm), bs):
            idx = perm[s:s + bs]
            u = np.concatenate([users[idx], users[idx]])
            i = np.concatenate([items[idx], neg[s:s + bs]])
            y = np.concatenate([np.ones(len(idx)), np.zeros(len(idx))]).astype(np.float32)
            loss = model.enhanced.loss(u, i, model.extra(u, i), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            total += float(loss.detach()) * len(idx)
        hr1 = topk_metrics(valid, model.predict(valid["user"].to_numpy(), valid["item"].to_numpy()), ks=(1,))["HR@1"]
        hist.append({"epoch": ep, "loss": total / len(perm), "valid_hr1": hr1})
        if hr1 > best:
            best, best_state = hr1, copy.deepcopy(model.state_dict())
    if best_state is not None:
        model.load_state_dict(best_state)
    return hist


def run_gpt4sm(params: Mapping, ds=None, domain_run=None, progress: bool = True, run_dir=None):
    """Train and evaluate GPT4SM; returns (metrics, run_dir) (default folder:
    <output_dir>/<dataset>/baselines/gpt4sm)."""
    from ..domain import domain_device
    from ..joint.run import load_inputs
    t0 = time.perf_counter()
    # the frozen backbone only encodes texts: on the GPU where there is one, tables come back on the CPU
    ds, domain, domain_dir, llm, tok = load_inputs(params, ds, domain_run)
    for p in llm.parameters():
        p.requires_grad_(False)
    item_texts, user_texts = gpt4sm_texts(ds, params)
    model = GPT4SM(domain, text_embeddings(llm, tok, item_texts, progress=progress),
                   text_embeddings(llm, tok, user_texts, progress=progress)).to(domain_device(params))
    del llm
    hist = train_gpt4sm(model, ds, params, progress)
    metrics, preds = evaluate(lambda f: model.predict(f["user"].to_numpy(), f["item"].to_numpy()), ds,
                              "test", params["eval"]["max_users"], params["eval"]["ks"],
                              return_predictions=True, topk_users=params["eval"].get("topk_users"),
                              buckets=bucket_edges(params))
    metrics.update({"method": "gpt4sm", "dataset": str(params["dataset"]), "preset": params.get("preset"),
                    "domain_model": params["domain"]["model"], "domain_run": str(domain_dir),
                    "wall_seconds": round(time.perf_counter() - t0, 2)})
    if run_dir is None:
        parent = dataset_root(params) / "baselines"
        run_dir = new_run_dir(parent, "gpt4sm")
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    write_run(run_dir, params, metrics, extra={"history.json": hist}, predictions={"predictions.parquet": preds})
    return metrics, run_dir
