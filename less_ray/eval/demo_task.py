"""Evaluation on a demo task family: fresh examples (disjoint from the pool and the targets)."""
from __future__ import annotations

from ..data.demo import generate_pool, generate_targets
from .metrics import normalize_answer
from .prompts import EvalItem


def demo_items(family: str, n: int, seed: int = 0, n_pool: int = 2000) -> list[EvalItem]:
    avoid = generate_pool(n_pool, seed=seed) + generate_targets(family, 12, seed=seed + 1)
    recs = generate_targets(family, n, seed=seed + 1000, avoid=avoid)
    return [EvalItem(f"demo_{family}", r.subtask, r.id, r.messages[0]["content"], "", [r.messages[1]["content"]])
            for r in recs]


def demo_correct(prediction: str, item: EvalItem) -> float:
    return float(normalize_answer(prediction) == normalize_answer(item.gold[0]))


def demo_mean_loss(items: list[EvalItem], model, tok, chat_format: str, batch_size: int) -> float:
    """Mean assistant-token loss of the gold answers: a signal even where a tiny model's greedy
    generations are never exactly right."""
    import torch

    from ..core.formatting import FormatConfig, collate, tokenize_messages
    exs = [tokenize_messages([{"role": "user", "content": i.prompt}, {"role": "assistant", "content": i.gold[0]}],
                             tok, FormatConfig(chat_format, 2048), i.id) for i in items]
    total, count = 0.0, 0
    with torch.no_grad():
        for lo in range(0, len(exs), batch_size):
            batch = {k: v.to(model.device) for k, v in collate(exs[lo:lo + batch_size], tok.pad_token_id).items()}
            logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits[:, :-1]
            labels = batch["labels"][:, 1:]
            keep = labels != -100
            total += torch.nn.functional.cross_entropy(logits[keep].float(), labels[keep], reduction="sum").item()
            count += int(keep.sum())
    return total / max(1, count)
