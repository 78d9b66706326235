"""The two prompt templates of the paper (Table 2, §4.1.3) and the SFT samples built from them.

Format (params.llm.prompt_format):
- "chat" (default): the instruct model's own chat template, with a short system message
  ("You are a recommender system.") instead of SmolLM2's default one; the prompt ends with the
  assistant header and the answer is the assistant turn followed by the end-of-turn/eos token.
- "plain": the paper's raw text ending in "Answer:"; the answer is " Yes" / " <iid_j>" / " title"
  followed by eos. For base (non-chat) backbones.
The same builder is used for SFT, scoring and generation, so train and eval always agree.

Texts (noun and verbs from ds.noun; "<uid>/<iid>" only with ET, titles cut to llm.max_title_chars):
  binary: User <uid_1> has watched the following movies: <iid_745> (A Close Shave), ... Predict if
          he/she will watch <iid_48> (Pocahontas) next. Answer Yes or No.          -> "Yes" / "No"
  top-K:  User <uid_1> has watched the following movies: ... Predict which 1 movie in the candidate
          set he/she will watch most probably? Candidates: <iid_1184> (Mediterraneo), ...
          Answer with the id of one candidate.                                     -> "<iid_48>"
  open:   User <uid_1> has watched the following movies: ... Predict which 1 movie he/she will
          watch next. Answer with the id of one movie.                             -> "<iid_48>"
          (ET only; not in the paper: the full-catalogue ranking reads every <iid> logit at its
          answer position, with no candidate set to copy from)
  Without ET: "The user has watched ...: "A Close Shave", "Aladdin", ..." and the answer is the
  candidate's (cut) title. The trailing answer hints are not in the paper: they make the zero-shot
  instruct model (LLM-Rec) answer in the expected form.

Every prompt records, for each item it mentions, the token position of its `<iid_j>` token (or of
the last token of its title without ET) — found through the tokenizer's character offsets on the
final text, so it is exact whatever the BPE merges — which is where a joint trainer reads h_L(u,i).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Mapping

import numpy as np
import pandas as pd

from .tokens import TokenMap, item_token, user_token

VERBS = {"movies": ("watched", "watch"), "products": ("bought", "buy"), "books": ("read", "read")}
SYSTEM = "You are a recommender system."


@dataclass
class Prompt:
    task: str                       # "topk" | "binary" | "open" (top-K without candidates)
    user: int
    input_ids: list[int]            # the prompt (ends right before the answer)
    answer_ids: list[int]           # the answer tokens + end-of-turn token
    items: np.ndarray               # items mentioned, in text order
    item_positions: np.ndarray      # token index in input_ids of each item (see module doc)
    item_roles: list[str]           # "history" | "candidate" | "target"
    user_position: int = -1         # index of <uid_k> (ET) or -1
    candidates: np.ndarray | None = None   # top-K candidates in prompt order
    target: int = -1                # item asked about (binary) / answered (top-K); -1 unknown
    label: int = -1                 # binary label (1 Yes, 0 No) or -1
    text: str = field(default="", repr=False)

    @property
    def answer_position(self) -> int:
        """Index whose next-token logits give the first answer token."""
        return len(self.input_ids) - 1

    def position_of(self, item: int, role: str | None = None) -> int:
        """Token position of `item` (the last mention with that role, if given)."""
        for it, pos, r in zip(self.items[::-1], self.item_positions[::-1], self.item_roles[::-1]):
            if it == item and (role is None or r == role):
                return int(pos)
        raise KeyError(f"item {item} not in prompt")


class PromptBuilder:
    """Builds top-K and binary prompts for a `RecDataset` (with ET when `token_map` is given)."""

    def __init__(self, ds, tokenizer, params: Mapping, token_map: TokenMap | None = None):
        self.ds, self.tok, self.tm = ds, tokenizer, token_map
        llm = params["llm"]
        self.history_len = int(llm["history_len"])
        self.max_tokens = int(llm["max_prompt_tokens"])
        self.max_title = int(llm["max_title_chars"])
        self.fmt = llm["prompt_format"]
        if self.fmt == "chat" and not getattr(tokenizer, "chat_template", None):
            self.fmt = "plain"  # a base model without a chat template
        if self.fmt not in ("chat", "plain"):
            raise ValueError(f"llm.prompt_format must be chat or plain, got {self.fmt!r}")
        self.params = params
        self.seed = int(params["seed"])
        self.noun = ds.noun or "items"
        self.past, self.verb = VERBS.get(self.noun, ("interacted with", "interact with"))
        self.one = self.noun[:-1] if self.noun.endswith("s") else self.noun
        self.titles = [self._cut(t) for t in ds.titles]
        self.eos_id = tokenizer.eos_token_id
        sp = " " if self.fmt == "plain" else ""
        self.yes_id = self._single(sp + "Yes")
        self.no_id = self._single(sp + "No")
        self._neigh = None

    @property
    def et(self) -> bool:
        return self.tm is not None

    # ------------------------------------------------------------------ pieces
    def _cut(self, title: str) -> str:
        t = " ".join(str(title).split())
        return t if len(t) <= self.max_title else t[: self.max_title].rstrip()

    def _single(self, text: str) -> int:
        ids = self.tok(text, add_special_tokens=False)["input_ids"]
        return ids[0]

    def history(self, user: int, before: int | None = None) -> np.ndarray:
        """The last history_len train items of `user` (before train position `before`)."""
        seq = self.ds.train_sequences()[user]
        end = len(seq) if before is None else before
        return seq[max(0, end - self.history_len):end]

    def _mention(self, j: int, parts: list, spans: list, role: str) -> None:
        """Append item j to `parts` and record the character span that locates it."""
        start = sum(len(p) for p in parts)
        if self.et:
            tok = item_token(j)
            s = f"{tok} ({self.titles[j]})"
            spans.append((int(j), start, start + len(tok), role))
        else:
            s = f"\"{self.titles[j]}\""
            spans.append((int(j), start + 1, start + 1 + len(self.titles[j]), role))
        parts.append(s)

    def _history_mention(self, j, parts: list, spans: list) -> None:
        self._mention(j, parts, spans, "history")

    def _user_history(self, user: int, hist, parts: list, spans: list):
        """'User <uid_k> has watched the following movies: …' — the opening every template shares;
        returns the <uid_k> character span (None without ET)."""
        uspan = None
        if self.et:
            parts.append("User ")
            uspan = (5, 5 + len(user_token(user)))
            parts.append(user_token(user))
        else:
            parts.append("The user")
        parts.append(f" has {self.past} the following {self.noun}: ")
        for n, j in enumerate(hist):
            if n:
                parts.append(", ")
            self._history_mention(j, parts, spans)
        if len(hist) == 0:
            parts.append("(none)")
        return uspan

    def _message(self, task: str, user: int, hist, item=None, cands=None):
        parts: list[str] = []
        spans: list = []
        uspan = self._user_history(user, hist, parts, spans)
        if task == "binary":
            parts.append(f". Predict if he/she will {self.verb} ")
            self._mention(item, parts, spans, "target")
            parts.append(" next. Answer Yes or No.")
        elif task == "open":
            parts.append(f". Predict which 1 {self.one} he/she will {self.verb} next. "
                         f"Answer with the id of one {self.one}.")
        else:
            parts.append(f". Predict which 1 {self.one} in the candidate set he/she will "
                         f"{self.verb} most probably? Candidates: ")
            for n, j in enumerate(cands):
                if n:
                    parts.append(", ")
                self._mention(j, parts, spans, "candidate")
            parts.append(". Answer with the id of one candidate." if self.et
                         else f". Answer with the title of one candidate.")
        return "".join(parts), spans, uspan

    def _wrap(self, message: str) -> tuple[str, int, bool]:
        """Full prompt text, offset of the message inside it, whether specials are in the text."""
        if self.fmt == "chat":
            full = self.tok.apply_chat_template(
                [{"role": "system", "content": SYSTEM}, {"role": "user", "content": message}],
                tokenize=False, add_generation_prompt=True)
            return full, full.index(message), True
        return message + " Answer:", 0, False

    def _encode(self, task, user, hist, item=None, cands=None):
        msg, spans, uspan = self._message(task, user, hist, item, cands)
        full, off, has_specials = self._wrap(msg)
        enc = self.tok(full, add_special_tokens=not has_specials, return_offsets_mapping=True)
        ids, offsets = enc["input_ids"], enc["offset_mapping"]
        ends = np.array([e for _, e in offsets])
        starts = np.array([s for s, _ in offsets])

        def tok_at(last_char: int) -> int:
            # the token whose span covers character `last_char` (the item's last char)
            k = int(np.searchsorted(ends, last_char + 1, side="left"))
            while k < len(ids) and not (starts[k] <= last_char < ends[k]):
                k += 1
            if k >= len(ids):
                raise RuntimeError("prompt offsets: item position not found")
            return k

        items = np.array([s[0] for s in spans], dtype=np.int64)
        pos = np.array([tok_at(off + s[2] - 1) for s in spans], dtype=np.int64)
        roles = [s[3] for s in spans]
        upos = tok_at(off + uspan[1] - 1) if uspan else -1
        return full, ids, items, pos, roles, upos

    def _answer(self, text: str) -> list[int]:
        pre = " " if self.fmt == "plain" else ""
        return self.tok(pre + text, add_special_tokens=False)["input_ids"] + [self.eos_id]

    def answer_text(self, item: int) -> str:
        return item_token(item) if self.et else self.titles[item]

    def _build(self, task, user, hist, item=None, cands=None) -> tuple:
        hist = np.asarray(hist, dtype=np.int64)
        while True:  # token budget: drop the oldest history item until the prompt fits
            out = self._encode(task, user, hist, item, cands)
            if len(out[1]) <= self.max_tokens or len(hist) == 0:
                return out
            hist = hist[1:]

    # ------------------------------------------------------------------ prompts
    def topk(self, user: int, candidates, target: int = -1, history=None) -> Prompt:
        cands = np.asarray(candidates, dtype=np.int64)
        hist = self.history(user) if history is None else history
        text, ids, items, pos, roles, upos = self._build("topk", user, hist, cands=cands)
        ans = self._answer(self.answer_text(target)) if target >= 0 else []
        return Prompt("topk", int(user), ids, ans, items, pos, roles, upos, cands, int(target), -1, text)

    def open_topk(self, user: int, history=None) -> Prompt:
        """The top-K question without a candidate set (ET only): for full-catalogue ranking."""
        if not self.et:
            raise ValueError("open_topk: needs ET (the answer is one <iid> token)")
        hist = self.history(user) if history is None else history
        text, ids, items, pos, roles, upos = self._build("open", user, hist)
        return Prompt("open", int(user), ids, [], items, pos, roles, upos, None, -1, -1, text)

    def binary(self, user: int, item: int, label: int = -1, history=None) -> Prompt:
        hist = self.history(user) if history is None else history
        text, ids, items, pos, roles, upos = self._build("binary", user, hist, item=int(item))
        ans = self._answer("Yes" if label == 1 else "No") if label in (0, 1) else []
        return Prompt("binary", int(user), ids, ans, items, pos, roles, upos, None, int(item),
                      int(label), text)

    def topk_prompts(self, frame: pd.DataFrame, with_answer: bool = True) -> list[Prompt]:
        """One prompt per user of a top-K frame; candidates in the frame's (stored) order."""
        out = []
        for user, g in frame.groupby("user", sort=False):
            items = g["item"].to_numpy()
            target = int(items[g["label"].to_numpy() == 1][0]) if with_answer and "label" in g else -1
            out.append(self.topk(int(user), items, target))
        return out

    def binary_prompts(self, frame: pd.DataFrame, with_answer: bool = True) -> list[Prompt]:
        labels = frame["label"].to_numpy() if with_answer and "label" in frame else None
        return [self.binary(int(u), int(i), int(labels[n]) if labels is not None else -1)
                for n, (u, i) in enumerate(zip(frame["user"].to_numpy(), frame["item"].to_numpy()))]

    # ------------------------------------------------------------------ SFT samples
    def _negatives(self, rng, target: int, seen: set, n: int) -> list[int]:
        """Half TF-IDF title neighbours of the target, half popularity-sampled (as the test sets)."""
        if self._neigh is None:
            from ..data.testsets import title_neighbours
            pool = int(self.params["testset"]["sim_pool"])
            self._neigh = title_neighbours(self.ds.titles, pool)
            pop = np.bincount(self.ds.train["item"].to_numpy(), minlength=self.ds.n_items) + 1e-12
            self._pop = pop / pop.sum()
        n_sim = n - (n + 1) // 2
        chosen: list[int] = []
        for j in self._neigh[target]:
            if len(chosen) >= n_sim:
                break
            if int(j) not in seen and int(j) not in chosen:
                chosen.append(int(j))
        while len(chosen) < n:
            for j in rng.choice(self.ds.n_items, size=4 * (n - len(chosen)) + 8, p=self._pop):
                if int(j) not in seen and int(j) not in chosen:
                    chosen.append(int(j))
                    if len(chosen) == n:
                        break
        return chosen

    def train_samples(self, task: str | None = None, seed: int | None = None) -> list[Prompt]:
        """SFT samples from the train split only: for each user (at most sft.max_train_users, a
        seeded sample), the last sft.positions_per_user train positions; target = the item there,
        history = the items before it. top-K: target + (n_candidates-1) negatives (half TF-IDF
        similar, half popularity; never an item the user touched in any split), shuffled. binary:
        the target ("Yes") and one uniformly drawn untouched item ("No"), 1:1. Shuffled."""
        task = task or self.params["llm"]["task"]
        sft = self.params["sft"]
        rng = np.random.default_rng(self.seed if seed is None else seed)
        seqs = self.ds.train_sequences()
        users = np.arange(self.ds.n_users)
        cap = sft.get("max_train_users")
        if cap is not None and cap < len(users):
            users = np.sort(rng.permutation(len(users))[:cap])
        n_cand = int(self.params["testset"]["n_candidates"])
        # a negative must never be an item the user touched in ANY split: a held-out valid/test
        # item shown as a wrong candidate would train the model against the evaluation positive
        held = {}
        for df in (self.ds.valid, self.ds.test):
            for uu, ii in zip(df["user"].to_numpy(), df["item"].to_numpy()):
                held.setdefault(int(uu), set()).add(int(ii))
        out: list[Prompt] = []
        for u in users:
            seq = seqs[u]
            seen = set(seq.tolist()) | held.get(int(u), set())
            for t in range(len(seq) - 1, max(0, len(seq) - 1 - int(sft["positions_per_user"])), -1):
                target, hist = int(seq[t]), self.history(int(u), before=t)
                if task in ("topk", "both"):
                    cands = np.array([target] + self._negatives(rng, target, seen, n_cand - 1))
                    out.append(self.topk(int(u), rng.permutation(cands), target, history=hist))
                if task in ("binary", "both"):
                    neg = int(rng.integers(self.ds.n_items))
                    while neg in seen:
                        neg = int(rng.integers(self.ds.n_items))
                    out.append(self.binary(int(u), target, 1, history=hist))
                    out.append(self.binary(int(u), neg, 0, history=hist))
        return [out[i] for i in rng.permutation(len(out))]
