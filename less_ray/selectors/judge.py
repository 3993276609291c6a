"""Model judges for the quality-based selectors (alpagasus, deita, mods, instruction_mining).

Pure torch + transformers, no Ray: the selectors build one of these per Ray Data actor.

- `LMJudge`: a causal LM folder (`--set model=DIR`) asked a rating prompt. Two readings:
  `expected` — one forward pass; the softmax over the next-token logits of the scale's digit tokens
  ("1".."6" for DEITA), and sum(p·value): DEITA's scorer (`deita.selection.scorer.base.infer_score`).
  `generate` — greedy decoding and the method's own parsing of the text (ALPAGASUS's `parse_score`:
  the first line as a float, else the number after "score:"); an unparsable reply is returned as
  None for the caller to quarantine, never as a made-up score.
- `RewardModel`: a sequence-classification reward model folder (`--set reward_model=DIR`, e.g.
  OpenAssistant/reward-model-deberta-v3-large-v2, which MoDS and Instruction Mining use): the logit
  of (instruction, response) as a text pair, the OpenAssistant recipe.
- `record_parts`: a schema record's (instruction, response): every user turn before the last
  assistant turn (joined by blank lines; earlier assistant turns are not repeated) and that
  assistant turn. Our records hold Alpaca's instruction and input already joined in the user turn,
  so ALPAGASUS's `### Input:` block is left empty.

Long fields are cut to `field_max_tokens` tokens each (instruction and response) so a prompt fits
the judge's context; the cut is counted by the caller.
"""
from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from ..config import path_field
from .base import ALL_TASK, PoolScorer, score_pool
from .embeddings import EmbedConfig, weights_id

READINGS = ("expected", "generate")


@dataclass
class JudgeConfig(EmbedConfig):
    """The judge-based selectors' common fields. `model` (EmbedConfig's) is the judge: a causal LM folder."""
    model: str | None = path_field("model", None)  # the judge: a causal LM folder (also the embedder if encoder=model)
    reward_model: str | None = path_field("model", None)  # a sequence-classification reward model folder
    judge_batch_size: int = 8
    field_max_tokens: int = 512  # instruction and response are each cut to this many judge tokens


@dataclass
class QualityConfig(JudgeConfig):
    """JudgeConfig and the reusable quality folder of the selectors that rank by a per-example
    reward (mods, instruction_mining): one `pool_quality` pass serves both when they name one folder."""
    quality: str | None = path_field("out", None)  # reusable per-example quality folder (default <out>/quality)


def record_parts(messages: Sequence[dict[str, str]]) -> tuple[str, str]:
    last = max((i for i, m in enumerate(messages) if m["role"] == "assistant"), default=None)
    if last is None:
        raise ValueError("record has no assistant turn")
    users = [m["content"] for m in messages[:last] if m["role"] == "user"]
    return "\n\n".join(users), messages[last]["content"]


def turn_pairs(messages: Sequence[dict[str, str]]) -> list[tuple[str, str]]:
    """(user, assistant) per assistant turn: the user turn just before it (DEITA scores each turn)."""
    pairs, user = [], ""
    for m in messages:
        if m["role"] == "user":
            user = m["content"]
        elif m["role"] == "assistant":
            pairs.append((user, m["content"]))
    return pairs


def parse_rating(text: str) -> float | None:
    """ALPAGASUS's parse_score: float(first line), else the number after 'score:' / 'Score:'."""
    first = text.strip().split("\n")[0].strip()
    try:
        return float(first)
    except ValueError:
        pass
    m = re.search(r"[Ss]core:\s*([-+]?\d+(?:\.\d+)?)", text)
    return float(m.group(1)) if m else None


def device_for(use_gpu: bool):
    import torch
    return torch.device("cuda" if use_gpu and torch.cuda.is_available() else "cpu")


class LMJudge:
    """A causal LM asked rating prompts; batches sorted by length, left-padded."""

    def __init__(self, model: str, batch_size: int = 8, field_max_tokens: int = 512, use_gpu: bool = False):
        from ..models import load_model_and_tokenizer
        self.device = device_for(use_gpu)
        self.lm, self.tok = load_model_and_tokenizer(model)
        self.lm.to(self.device).eval()
        self.batch_size, self.field_max_tokens = batch_size, field_max_tokens
        self.pad = self.tok.pad_token_id if self.tok.pad_token_id is not None else (self.tok.eos_token_id or 0)
        self.truncated = 0  # fields cut to field_max_tokens so far

    def cut(self, text: str) -> str:
        ids = self.tok(text, add_special_tokens=False)["input_ids"]
        if len(ids) <= self.field_max_tokens:
            return text
        self.truncated += 1
        return self.tok.decode(ids[:self.field_max_tokens])

    def chat_prompt(self, system: str, user: str) -> str:
        """The judge's own chat template where it has one (an instruct model's), else plain text."""
        if getattr(self.tok, "chat_template", None):
            return self.tok.apply_chat_template([{"role": "system", "content": system},
                                                 {"role": "user", "content": user}],
                                                tokenize=False, add_generation_prompt=True)
        return f"{system}\n\n{user}\n\n"

    def scale_token_ids(self, values: Sequence[int]) -> list[int]:
        """The token a model emits for each value of the scale: the value's own vocabulary token,
        else the last token of its encoding. Refuses a tokenizer that merges two values."""
        ids = []
        for v in values:
            tid = self.tok.convert_tokens_to_ids(str(v))
            if tid is None or tid == self.tok.unk_token_id:
                tid = self.tok(str(v), add_special_tokens=False)["input_ids"][-1]
            ids.append(int(tid))
        if len(set(ids)) != len(ids):
            raise ValueError(f"judge tokenizer maps the scale {list(values)} onto tokens {ids}: not one token each")
        return ids

    @property
    def templated(self) -> bool:
        """chat_prompt's texts carry the template's own special tokens (the tokenizer must not add any)."""
        return bool(getattr(self.tok, "chat_template", None))

    def _batches(self, prompts: Sequence[str], add_special: bool):
        import torch
        enc = [self.tok(p, add_special_tokens=add_special)["input_ids"] for p in prompts]
        order = sorted(range(len(enc)), key=lambda i: len(enc[i]))
        for lo in range(0, len(order), self.batch_size):
            idx = order[lo:lo + self.batch_size]
            width = max(len(enc[i]) for i in idx)
            ids = torch.full((len(idx), width), self.pad, dtype=torch.long)
            mask = torch.zeros((len(idx), width), dtype=torch.long)
            for r, i in enumerate(idx):  # left padding: every row's next token is at the last column
                ids[r, width - len(enc[i]):] = torch.tensor(enc[i])
                mask[r, width - len(enc[i]):] = 1
            yield idx, ids.to(self.device), mask.to(self.device)

    def expected(self, prompts: Sequence[str], values: Sequence[int], add_special: bool = True) -> np.ndarray:
        """sum over the scale of softmax(logits of the values' tokens)·value, per prompt
        (`add_special`: False for chat_prompt texts of a templated judge)."""
        import torch
        tids = torch.tensor(self.scale_token_ids(values))
        vals = torch.tensor([float(v) for v in values], dtype=torch.float64)
        out = np.empty(len(prompts), np.float64)
        with torch.inference_mode():
            for idx, ids, mask in self._batches(prompts, add_special):
                pos = mask.cumsum(1) - 1  # positions count real tokens only (left padding)
                logits = self.lm(input_ids=ids, attention_mask=mask, position_ids=pos.clamp(min=0)).logits[:, -1]
                p = torch.softmax(logits[:, tids.to(logits.device)].double(), dim=-1).cpu()
                out[idx] = (p * vals).sum(1).numpy()
        return out

    def generate(self, prompts: Sequence[str], max_new_tokens: int, add_special: bool = True) -> list[str]:
        """Greedy continuations (the judge's reply text), in prompt order."""
        import torch
        out: list[str] = [""] * len(prompts)
        with torch.inference_mode():
            for idx, ids, mask in self._batches(prompts, add_special):
                gen = self.lm.generate(input_ids=ids, attention_mask=mask, max_new_tokens=max_new_tokens,
                                       do_sample=False, pad_token_id=self.pad)
                for r, i in enumerate(idx):
                    out[i] = self.tok.decode(gen[r, ids.shape[1]:], skip_special_tokens=True)
        return out


class RewardModel:
    """A sequence-classification reward model: logit 0 of (instruction, response) as a text pair."""

    def __init__(self, folder: str, batch_size: int = 8, max_tokens: int = 1024, use_gpu: bool = False):
        from transformers import AutoModelForSequenceClassification, AutoTokenizer

        from ..models import pretrained_kwargs
        self.device = device_for(use_gpu)
        kw = pretrained_kwargs(folder, what="reward model")
        self.tok = AutoTokenizer.from_pretrained(folder, **kw)
        self.net = AutoModelForSequenceClassification.from_pretrained(folder, **kw).to(self.device).eval()
        if self.tok.pad_token_id is None:  # causal-LM-based reward models often have none
            self.tok.pad_token = self.tok.eos_token
        self.net.config.pad_token_id = self.tok.pad_token_id
        self.batch_size, self.max_tokens = batch_size, max_tokens

    def score(self, pairs: Sequence[tuple[str, str]]) -> np.ndarray:
        import torch
        out = np.empty(len(pairs), np.float64)
        with torch.inference_mode():
            for lo in range(0, len(pairs), self.batch_size):
                q, a = zip(*pairs[lo:lo + self.batch_size])
                enc = self.tok(list(q), list(a), truncation=True, max_length=self.max_tokens, padding=True,
                               return_tensors="pt").to(self.device)
                out[lo:lo + len(q)] = self.net(**enc).logits[:, 0].double().cpu().numpy()
        return out


def judge_kwargs(cfg: Any, model: str | None = None) -> dict[str, Any]:
    """An LMJudge's arguments from a selector config with model / judge_batch_size / field_max_tokens
    (`model`: another judge folder than cfg.model, e.g. DEITA's complexity scorer)."""
    model = model or cfg.model
    if not model:
        raise ValueError("this selector needs a judge model: --set model=DIR (a causal LM folder)")
    return {"model": str(model), "batch_size": cfg.judge_batch_size, "field_max_tokens": cfg.field_max_tokens,
            "use_gpu": cfg.actor_num_gpus > 0}


# ---- ALPAGASUS's rating prompt (gpt4life/alpagasus rating/chatgpt_rating.py, the accuracy variant) ----

ALPAGASUS_SYSTEM = ("We would like to request your feedback on the performance of AI assistant in response to the "
                    "instruction and the given input displayed following.")
ALPAGASUS_USER = ("Please rate according to the accuracy of the response to the instruction and the input. Each "
                  "assistant receives a score on a scale of 0 to 5, where a higher score indicates higher level of "
                  "the accuracy. Please first output a single line containing value indicating the scores. In the "
                  "subsequent line, please provide a comprehensive explanation of your evaluation, avoiding any "
                  "potential bias. \n\n")
ALPAGASUS_SCALE = (0, 1, 2, 3, 4, 5)


def alpagasus_prompt(judge: LMJudge, instruction: str, response: str) -> str:
    triplet = (f"###Instruction:\n{judge.cut(instruction)}\n\n### Input:\n\n\n"
               f"### Response:\n{judge.cut(response)}\n\n")
    return judge.chat_prompt(ALPAGASUS_SYSTEM, triplet + ALPAGASUS_USER)


# ---- the quality reward shared by mods and instruction_mining ----------------------------------

class Quality:
    """A pair's quality: the reward model's logit when `reward_model` is given; otherwise the judge
    model's expected ALPAGASUS rating (0-5, one forward pass): what is used when no reward model is."""

    def __init__(self, reward_model: str | None, model: str | None, batch_size: int, field_max_tokens: int,
                 use_gpu: bool):
        self.source = quality_source(reward_model, model)
        if reward_model:
            self.rm, self.judge = RewardModel(reward_model, batch_size, 2 * field_max_tokens, use_gpu), None
        elif model:
            self.rm, self.judge = None, LMJudge(model, batch_size, field_max_tokens, use_gpu)
        else:
            raise ValueError("give reward_model=DIR (a sequence-classification reward model) or model=DIR (a causal LM judge)")

    def score(self, pairs: Sequence[tuple[str, str]]) -> np.ndarray:
        if self.rm is not None:
            return self.rm.score(pairs)
        prompts = [alpagasus_prompt(self.judge, q, a) for q, a in pairs]
        return self.judge.expected(prompts, ALPAGASUS_SCALE, add_special=not self.judge.templated)


def quality_source(reward_model: str | None, model: str | None) -> str:
    return f"reward model {reward_model}" if reward_model else f"expected ALPAGASUS rating (0-5) by {model}"


class QualityScorer(PoolScorer):
    """`score_pool`'s per-example quality (task `all`): `Quality` of each record's (instruction, response)."""

    def __init__(self, tasks: list[str], reward_model: str | None, model: str | None, batch_size: int,
                 field_max_tokens: int, use_gpu: bool):
        super().__init__(tasks)
        self.quality = Quality(reward_model, model, batch_size, field_max_tokens, use_gpu)

    def score(self, rows):
        q = self.quality.score([record_parts(r["messages"]) for r in rows])
        return {ALL_TASK: (q, None)}


def quality_kwargs(cfg: JudgeConfig) -> dict[str, Any]:
    return {"reward_model": cfg.reward_model, "model": cfg.model, "batch_size": cfg.judge_batch_size,
            "field_max_tokens": cfg.field_max_tokens, "use_gpu": cfg.actor_num_gpus > 0}


def pool_quality(cfg: QualityConfig, stage: str) -> tuple[list[str], list[str], np.ndarray, str, bool]:
    """Every pool example's `Quality` (task `all`, `score_pool` on the selectors' actors) in the
    folder `cfg.quality` (default <out>/quality), kept while the pool, the quality source, its weights
    and field_max_tokens are unchanged (a folder made with others is emptied first, `artifact.claim`),
    so mods and instruction_mining pointed at one folder score the pool once.
    Returns (ids, sources, scores float64) in pool order, the folder, and whether it was reused."""
    import pyarrow.parquet as pq

    from ..artifact import claim, sha256_file
    folder = Path(cfg.quality or Path(cfg.out) / "quality").resolve()
    key = {"pool_sha256": sha256_file(cfg.pool), "source": quality_source(cfg.reward_model, cfg.model),
           "weights": weights_id(cfg.reward_model or cfg.model), "field_max_tokens": cfg.field_max_tokens}
    claim(folder, key, "_quality_key.json", stage=f"{stage} quality")
    reused = (folder / "score_summary.json").exists()  # written last: the pass finished
    if not reused:
        score_pool(dataclasses.replace(cfg, out=str(folder), top_p=None), f"{stage}:quality", [ALL_TASK],
                   QualityScorer, quality_kwargs(cfg), {"quality_key": key, "quality_source": key["source"]})
    t = pq.read_table(folder / ALL_TASK / "scores.parquet")
    return (t.column("id").to_pylist(), t.column("source").to_pylist(),
            t.column("score").to_numpy().astype(np.float64), str(folder), reused)
