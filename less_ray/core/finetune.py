"""A short in-process LoRA fine-tune and its answer-token loss: pure torch + peft, one device.

The selectors that train a model as part of choosing data (MoDS's initial model trained on its
seed set; Instruction Mining's subsets, each trained and evaluated to fit its rule) need many small
runs inside one actor, not a Ray Train job each. The recipe is the stages' own in miniature: LESS's
tokenisation and label masks (`formatting`), AdamW, linear decay, the mean loss over answer tokens.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np


@dataclass(frozen=True)
class FinetuneRecipe:
    epochs: int = 1
    lr: float = 2e-4
    batch_size: int = 4
    lora_r: int = 8
    lora_alpha: int = 16
    target_modules: tuple[str, ...] = ("q_proj", "k_proj", "v_proj", "o_proj")
    seed: int = 0


def tokenized(records: Sequence[dict[str, Any]], tokenizer, fmt) -> list:
    """The records' tokenized examples; those with no answer token left are dropped (counted by the caller)."""
    from .formatting import SkippedExample, tokenize_messages
    out = [tokenize_messages(r["messages"], tokenizer, fmt, example_id=r["id"]) for r in records]
    return [t for t in out if not isinstance(t, SkippedExample)]


def lora_finetune(base, tokenizer, examples: list, recipe: FinetuneRecipe, max_tokens: int = 2048):
    """A fresh LoRA adapter on `base` (a loaded causal LM) trained on `examples`: the peft model.
    peft injects the adapter into `base`'s modules, so pass a copy (copy.deepcopy) to keep `base`.

    Each step's loss is HF's: the mean over the batch's answer tokens. A batch is run as
    micro-batches of at most `max_tokens` padded tokens whose summed token losses, divided by the
    batch's answer-token count, accumulate into one gradient: the same step, but activation memory
    follows `max_tokens`, not batch_size x longest example (4 x 2,048 tokens of SmolLM2 held 21 GB
    in one forward and was OOM-killed on a 24 GB host)."""
    import torch
    from peft import LoraConfig, get_peft_model

    from .formatting import collate, token_budget_batches
    torch.manual_seed(recipe.seed)
    model = get_peft_model(base, LoraConfig(r=recipe.lora_r, lora_alpha=recipe.lora_alpha, lora_dropout=0.0,
                                            target_modules=list(recipe.target_modules)))
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=recipe.lr, weight_decay=0.0)
    rng = np.random.default_rng(recipe.seed)
    steps = recipe.epochs * max(1, -(-len(examples) // recipe.batch_size))
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: max(0.0, 1 - s / steps))
    model.train()
    for _ in range(recipe.epochs):
        order = rng.permutation(len(examples))
        for lo in range(0, len(order), recipe.batch_size):
            batch = sorted((examples[i] for i in order[lo:lo + recipe.batch_size]), key=lambda e: len(e.input_ids))
            n_answer = sum(1 for e in batch for x in e.labels[1:] if x != -100)  # HF shifts: label 0 never counts
            if n_answer == 0:
                continue  # `tokenized` drops such examples; HF's mean would be NaN here
            for idx in token_budget_batches([len(e.input_ids) for e in batch], len(batch), max_tokens):
                part = {k: v.to(base.device) for k, v in collate([batch[j] for j in idx], tokenizer.pad_token_id).items()}
                logits = model(input_ids=part["input_ids"], attention_mask=part["attention_mask"]).logits[:, :-1]
                labels = part["labels"][:, 1:]
                loss = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(),
                                                         labels.reshape(-1), ignore_index=-100, reduction="sum")
                (loss / n_answer).backward()
            opt.step()
            sched.step()
            opt.zero_grad(set_to_none=True)
    model.eval()
    return model


def answer_loss(model, tokenizer, examples: list, batch_size: int = 8, max_tokens: int = 4096) -> float:
    """Mean loss over all answer tokens of `examples` (token-weighted, as an eval loss). Batches
    hold at most `max_tokens` padded tokens: the logits are tokens x vocabulary floats (4,096 x
    49,152 x 4 bytes = 0.8 GB for SmolLM2), so a batch of long examples must not grow with the batch size."""
    import torch

    from .formatting import collate, token_budget_batches
    total, count = 0.0, 0
    order = sorted(range(len(examples)), key=lambda i: len(examples[i].input_ids))
    with torch.inference_mode():
        for idx in token_budget_batches([len(examples[i].input_ids) for i in order], batch_size, max_tokens):
            batch = collate([examples[order[j]] for j in idx], tokenizer.pad_token_id)
            batch = {k: v.to(model.device) for k, v in batch.items()}
            logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits[:, :-1]
            labels = batch["labels"][:, 1:]
            loss = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(),
                                                     labels.reshape(-1), ignore_index=-100, reduction="sum")
            total += float(loss)
            count += int((labels != -100).sum())
    if count == 0:
        raise ValueError("answer_loss: no answer tokens in the evaluation examples")
    return total / count
