"""Extending tokens (ET, paper §4.1 Eq. 2) and pre-loading (PE).

`extend_tokens` adds one token `<uid_k>` per user and `<iid_j>` per item. They are added as
`AddedToken(..., lstrip=True)`: the token swallows the space before it, otherwise SmolLM2's
byte-level BPE spends a separate "Ġ" token in front of every id. All ids of one kind are
contiguous, so the mixed embedding layer of Eq. 2 is just row ranges of one matrix:
`E_U^L = E[user_start : user_start + n_users]`, `E_I^L = E[item_start : item_start + n_items]`.

Output rows. A tied backbone (SmolLM2, the small Qwen2s) keeps its tie: the output row of a new
token *is* its input row (one parameter), so pre-loading also sets the logit direction of
`<iid_j>`, and SFT updates both roles with one gradient. An untied backbone (Llama-2, Vicuna,
Qwen2-7B) gets new rows in both matrices (`resize_token_embeddings` resizes both), and `preload`
writes the same mapped domain directions into the output rows, scaled to the mean norm of the
output layer's own word rows (the two matrices of such a model differ in scale, and a logit is a
dot product with an output row): the new tokens' logits start on the scale of the words' logits
and rank items by the domain geometry. From there the two rows of a token train separately.

A padded vocabulary (Qwen2: more embedding rows than tokenizer tokens) is not special: the new
tokens take the ids after the tokenizer's last one, the matrices are resized to the tokenizer's
size, and any spare rows the new tokens land on are re-drawn like fresh rows, so "w/o PE" starts
every new token alike.

New rows without pre-loading keep transformers' default initialisation of new embeddings
(`mean_resizing=False`: N(0, initializer_range²) from the model's own `_init_weights`) — the
"w/o PE" ablation. `mean_resizing=True` would cost a 576×576 covariance sample per row and make
every new row nearly the mean word, which is not a useful "random" baseline.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import nn


def user_token(k: int) -> str:
    return f"<uid_{int(k)}>"


def item_token(j: int) -> str:
    return f"<iid_{int(j)}>"


@dataclass(frozen=True)
class TokenMap:
    """Where the extended tokens live in the vocabulary (ids are contiguous per kind)."""
    n_users: int
    n_items: int
    user_start: int
    item_start: int
    vocab_before: int  # size of the word vocabulary (rows below this are word rows)

    def user_id(self, k) -> np.ndarray | int:
        return self.user_start + np.asarray(k) if not np.isscalar(k) else self.user_start + int(k)

    def item_id(self, j) -> np.ndarray | int:
        return self.item_start + np.asarray(j) if not np.isscalar(j) else self.item_start + int(j)

    @property
    def user_ids(self) -> np.ndarray:
        return np.arange(self.user_start, self.user_start + self.n_users)

    @property
    def item_ids(self) -> np.ndarray:
        return np.arange(self.item_start, self.item_start + self.n_items)

    @property
    def new_ids(self) -> np.ndarray:
        return np.concatenate([self.user_ids, self.item_ids])

    def to_dict(self) -> dict:
        return dict(self.__dict__)


def extend_tokens(model, tokenizer, n_users: int, n_items: int) -> TokenMap:
    """Add `<uid_k>`/`<iid_j>` as single tokens, resize the input and output embeddings (one
    matrix when tied, both when untied).

    Idempotent: if the tokenizer already holds the tokens (e.g. a saved ET model), nothing is added
    and the existing map is returned. Adding ~10k tokens takes well under a second.
    """
    from transformers import AddedToken
    first_u = tokenizer.convert_tokens_to_ids(user_token(0))
    added_now = False
    if first_u is not None and first_u != tokenizer.unk_token_id and n_users > 0:
        tm = TokenMap(n_users, n_items, first_u,
                      tokenizer.convert_tokens_to_ids(item_token(0)), first_u)
        _check_contiguous(tokenizer, tm)
    else:
        vocab_before = len(tokenizer)
        emb_rows = model.get_input_embeddings().weight.shape[0]
        if emb_rows < vocab_before:
            raise ValueError(f"model has {emb_rows} embedding rows < tokenizer size {vocab_before}")
        new = [AddedToken(user_token(k), lstrip=True, normalized=False, special=False)
               for k in range(n_users)]
        new += [AddedToken(item_token(j), lstrip=True, normalized=False, special=False)
                for j in range(n_items)]
        added = tokenizer.add_tokens(new)  # one batch: a per-token loop rebuilds the trie each time
        if added != n_users + n_items:
            raise ValueError(f"extend_tokens: {added} of {n_users + n_items} tokens were new; "
                             "the tokenizer already holds some <uid_k>/<iid_j> tokens")
        tm = TokenMap(n_users, n_items, vocab_before, vocab_before + n_users, vocab_before)
        _check_contiguous(tokenizer, tm)
        added_now = True
    rows = model.get_input_embeddings().weight.shape[0]
    if rows != len(tokenizer):
        model.resize_token_embeddings(len(tokenizer), mean_resizing=False)
    if added_now and rows > tm.vocab_before:  # new ids landed on spare rows of a padded vocabulary
        _redraw_rows(model, tm.vocab_before, min(rows, len(tokenizer)))
    return tm


def _redraw_rows(model, start: int, end: int) -> None:
    """Rows [start, end) of the input and (untied) output embeddings drawn as transformers draws
    new rows (N(0, initializer_range²)): for a padded vocabulary's spare rows that now hold tokens."""
    std = float(getattr(model.config.get_text_config(), "initializer_range", 0.02))
    g = torch.Generator().manual_seed(start)
    with torch.no_grad():
        for w in _embedding_weights(model):
            w[start:end] = (torch.randn(end - start, w.shape[1], generator=g) * std).to(w.device, w.dtype)


def _embedding_weights(model) -> list:
    """The input embedding weight, and the output one when it is a separate (untied) matrix."""
    emb = model.get_input_embeddings().weight
    out = model.get_output_embeddings()
    if out is None or out.weight.data_ptr() == emb.data_ptr():
        return [emb]
    return [emb, out.weight]


def _check_contiguous(tokenizer, tm: TokenMap) -> None:
    probe_u = [0, tm.n_users - 1] if tm.n_users else []
    probe_i = [0, tm.n_items - 1] if tm.n_items else []
    for k in probe_u:
        if tokenizer.convert_tokens_to_ids(user_token(k)) != tm.user_start + k:
            raise ValueError("extend_tokens: <uid_k> ids are not contiguous")
    for j in probe_i:
        if tokenizer.convert_tokens_to_ids(item_token(j)) != tm.item_start + j:
            raise ValueError("extend_tokens: <iid_j> ids are not contiguous")


# --------------------------------------------------------------------------- pre-loading

def random_projection(d: int, h: int, seed: int = 0) -> nn.Linear:
    """A fixed, seeded map R^d -> R^h with orthonormal rows/columns (QR of a Gaussian matrix).

    With d <= h it is an isometry (keeps every norm and cosine of the domain table, so the
    pre-loaded rows keep the domain model's geometry exactly); with d > h it is a random
    orthogonal projection (Johnson-Lindenstrauss style, approximately keeps cosines).
    Frozen (no grad); the joint trainer may replace it by a learned P.
    """
    g = torch.Generator().manual_seed(int(seed))
    a = torch.randn(max(d, h), min(d, h), generator=g, dtype=torch.float64)
    q, r = torch.linalg.qr(a)  # q: [max, min] orthonormal columns
    q = q * torch.sign(torch.diagonal(r)).unsqueeze(0)  # unique sign convention
    w = q if h >= d else q.T  # weight is [h, d]
    lin = nn.Linear(d, h, bias=False)
    with torch.no_grad():
        lin.weight.copy_(w.to(torch.float32))
    lin.weight.requires_grad_(False)
    return lin


def map_domain(emb: torch.Tensor, h: int, proj: nn.Module | None = None, seed: int = 0) -> torch.Tensor:
    """Domain rows in the LLM's space: `proj(emb)` if given, identity if d == h, else the seeded
    random projection."""
    emb = torch.as_tensor(emb).detach().to(torch.float32).cpu()
    if proj is not None:
        with torch.no_grad():
            p = proj.to("cpu")
            return p(emb.to(next(p.parameters()).dtype)).to(torch.float32)
    if emb.shape[1] == h:
        return emb
    with torch.no_grad():
        return random_projection(emb.shape[1], h, seed)(emb)


def word_norm(model, tm: TokenMap | None = None) -> float:
    """Mean L2 norm of the word rows of the input embedding (the range the new rows should sit in)."""
    w = model.get_input_embeddings().weight
    n = tm.vocab_before if tm is not None else w.shape[0]
    return float(w[:n].detach().float().norm(dim=1).mean())


def preload(model, token_map: TokenMap, user_emb, item_emb, proj: nn.Module | None = None,
            seed: int = 0) -> dict:
    """PE: write the (mapped) domain tables into the `<uid>`/`<iid>` rows.

    Each table is mapped to the LLM's hidden size h (`proj`, identity if d == h, else the seeded
    `random_projection(d, h, seed)`), then multiplied by ONE scale per table so that its mean row
    norm equals the mean norm of the word embeddings. A single scale (not per-row normalisation)
    keeps the domain model's relative norms and all cosines. An untied backbone's output rows get
    the same directions scaled to its output word rows' mean norm. Returns {"user_scale",
    "item_scale", "word_norm", "projection", "output_rows"} (+ "output_word_norm",
    "user_output_scale", "item_output_scale" when untied).
    """
    tm = token_map
    emb = model.get_input_embeddings().weight
    h = emb.shape[1]
    if len(user_emb) != tm.n_users or len(item_emb) != tm.n_items:
        raise ValueError(f"preload: tables have {len(user_emb)} users / {len(item_emb)} items, "
                         f"token map {tm.n_users} / {tm.n_items}")
    target = word_norm(model, tm)
    out = {"word_norm": target,
           "projection": "given" if proj is not None else
           ("identity" if user_emb.shape[1] == h else f"random_orthogonal(seed={seed})")}
    weights = _embedding_weights(model)
    out["output_rows"] = "tied" if len(weights) == 1 else "untied"
    out_target = None
    if len(weights) == 2:   # untied: the output rows get the same directions at the output scale
        out_target = float(weights[1][:tm.vocab_before].detach().float().norm(dim=1).mean())
        out["output_word_norm"] = out_target
    with torch.no_grad():
        for kind, table, start in (("user", user_emb, tm.user_start), ("item", item_emb, tm.item_start)):
            if len(table) == 0:
                continue
            m = map_domain(table, h, proj, seed)
            norm = float(m.norm(dim=1).mean().clamp_min(1e-12))
            scale = target / norm
            emb[start:start + len(table)] = (m * scale).to(emb.dtype).to(emb.device)
            out[f"{kind}_scale"] = scale
            if out_target is not None:
                w = weights[1]
                w[start:start + len(table)] = (m * (out_target / norm)).to(w.dtype).to(w.device)
                out[f"{kind}_output_scale"] = out_target / norm
    return out


def _neighbours(x: torch.Tensor, k: int) -> torch.Tensor:
    x = torch.nn.functional.normalize(x.float(), dim=1)
    sim = x @ x.T
    sim.fill_diagonal_(-float("inf"))
    return sim.topk(k, dim=1).indices


def alignment(model, token_map: TokenMap, user_emb, item_emb, proj: nn.Module | None = None,
              seed: int = 0, k: int = 10, max_rows: int = 2000) -> dict:
    """How well the LLM's id rows agree with the domain tables.

    - `cos_user`/`cos_item`: mean cosine between each LLM row and its mapped domain row (the map
      of `preload`; 1.0 right after PE, about 0 for random rows).
    - `nn_overlap_user`/`nn_overlap_item`: mean share of the k nearest neighbours (cosine) a row
      has in common in the LLM table and in the raw domain table (map-free; on the first
      `max_rows` rows of each table, to bound the O(n²) similarity matrix).
    """
    tm = token_map
    emb = model.get_input_embeddings().weight.detach().float().cpu()
    h = emb.shape[1]
    out = {}
    for kind, table, start in (("user", user_emb, tm.user_start), ("item", item_emb, tm.item_start)):
        table = torch.as_tensor(table).detach().float().cpu()
        if len(table) == 0:
            continue
        llm = emb[start:start + len(table)]
        mapped = map_domain(table, h, proj, seed)
        out[f"cos_{kind}"] = float(torch.nn.functional.cosine_similarity(llm, mapped, dim=1).mean())
        n = min(len(table), max_rows)
        kk = min(k, n - 1)
        if kk >= 1:
            a, b = _neighbours(llm[:n], kk), _neighbours(table[:n], kk)
            hits = (a.unsqueeze(2) == b.unsqueeze(1)).any(dim=2).float().sum(dim=1)
            out[f"nn_overlap_{kind}"] = float((hits / kk).mean())
    out["k"] = k
    return out
