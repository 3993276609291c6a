"""`alpagasus`: an LLM judge rates each (instruction, input, response); the highest rated first.

ALPAGASUS (Chen et al. 2024, "AlpaGasus: Training a Better Alpaca with Fewer Data") asks ChatGPT
to rate each Alpaca triplet's accuracy on a 0-5 scale with the prompt of the authors' repository
(gpt4life/alpagasus `rating/chatgpt_rating.py`, in `judge.ALPAGASUS_*`) and keeps those rated
>= 4.5. Here the judge is the user's causal LM (`--set model=DIR`, prompted through its own chat
template), read one of two ways:
- `reading: generate` (default, the method's): greedy decoding of `max_new_tokens` and the
  repository's `parse_score` (the reply's first line as a float, else the number after "score:").
  A reply with no rating in [0, 5] is quarantined: it scores the lowest float32 (never selected
  before a rated example), is counted in the summary and listed in `unrated.jsonl` with its reply.
- `reading: expected`: the probability-weighted rating over the next-token logits of "0".."5"
  (one forward pass, never unparsable: for judges too weak to answer in the asked format).
The score is the rating; `select` keeps the top p% (ties: smaller id first). How many examples
reach the paper's threshold (`threshold`, 4.5) is in the summary, beside whether the whole
selection reaches it. Replies are written per shard to `judge_replies/` (id, reply, rating).
"""
from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..storage import write_atomic
from .base import ALL_TASK, PoolScorer, register, score_pool
from .judge import (ALPAGASUS_SCALE, READINGS, JudgeConfig, LMJudge, alpagasus_prompt, judge_kwargs, parse_rating,
                    record_parts)

log = logging.getLogger("less_ray")
UNRATED = float(np.finfo(np.float32).min)  # a reply with no rating: last in any ranking, never NaN


@dataclass
class AlpagasusConfig(JudgeConfig):
    threshold: float = 4.5  # the paper keeps ratings >= 4.5 (reported, beside the top p%)
    reading: str = "generate"  # generate (greedy reply, parse_score) | expected (rating from digit probabilities)
    max_new_tokens: int = 16  # the rating is the reply's first line; the explanation after it is not read


class AlpagasusScorer(PoolScorer):
    def __init__(self, tasks: list[str], judge: dict[str, Any], reading: str, max_new_tokens: int, replies: str):
        super().__init__(tasks)
        self.judge = LMJudge(**judge)
        self.reading, self.max_new_tokens, self.replies = reading, max_new_tokens, Path(replies)

    def score(self, rows):
        prompts = [alpagasus_prompt(self.judge, *record_parts(r["messages"])) for r in rows]
        special = not self.judge.templated
        if self.reading == "expected":
            ratings = self.judge.expected(prompts, ALPAGASUS_SCALE, add_special=special)
            replies = [None] * len(rows)
        else:
            replies = self.judge.generate(prompts, self.max_new_tokens, add_special=special)
            parsed = [parse_rating(t) for t in replies]
            ratings = np.array([p if p is not None and 0 <= p <= 5 else UNRATED for p in parsed], np.float64)
        name = hashlib.sha256("\n".join(r["id"] for r in rows).encode()).hexdigest()[:16]
        with open(self.replies / f"{name}.jsonl", "w") as f:
            for r, t, s in zip(rows, replies, ratings):
                f.write(json.dumps({"id": r["id"], "reply": t, "rating": None if s == UNRATED else float(s)}) + "\n")
        return {ALL_TASK: (ratings, None)}


@register("alpagasus", AlpagasusConfig, "an LLM judge's 0-5 accuracy rating of each example (ALPAGASUS); "
          "highest first (give --set model=DIR)")
def run_alpagasus(cfg: AlpagasusConfig) -> dict[str, Any]:
    if cfg.reading not in READINGS:
        raise ValueError(f"alpagasus: reading must be one of {READINGS}, not {cfg.reading!r}")
    out = Path(cfg.out).resolve()
    replies = out / "judge_replies"
    replies.mkdir(parents=True, exist_ok=True)
    for f in replies.glob("*.jsonl"):  # this run's replies only
        f.unlink()
    summary = score_pool(cfg, "alpagasus", [ALL_TASK], AlpagasusScorer,
                         {"judge": judge_kwargs(cfg), "reading": cfg.reading, "max_new_tokens": cfg.max_new_tokens,
                          "replies": str(replies)},
                         {"judge": str(cfg.model), "reading": cfg.reading, "prompt": "gpt4life/alpagasus accuracy"})
    written = [r for f in sorted(replies.glob("*.jsonl")) for r in map(json.loads, f.read_text().splitlines())]
    unrated = [r for r in written if r["rating"] is None]
    (out / "unrated.jsonl").write_text("".join(json.dumps(r) + "\n" for r in unrated))
    rated = np.array([r["rating"] for r in written if r["rating"] is not None])
    if len(unrated) > len(written) / 2:  # a judge too weak for the format: the selection is by id, say so
        log.warning("alpagasus: %d of %d replies hold no rating (see %s); the judge %s does not answer in the "
                    "asked format: name a stronger judge, or --set reading=expected", len(unrated), len(written),
                    out / "unrated.jsonl", cfg.model)
    summary.update({"unrated": {"count": len(unrated), "file": "unrated.jsonl", "score": UNRATED},
                    "rated": int(len(rated)), "mean_rating": float(rated.mean()) if len(rated) else None,
                    "at_or_above_threshold": int((rated >= cfg.threshold).sum()), "threshold": cfg.threshold})
    write_atomic(out / "score_summary.json", json.dumps(summary, indent=2, default=str))  # the counts join it
    return summary
