"""Conversation -> token ids and labels, as LESS (open-instruct's tulu format) does it.

Two renderings:
- "tulu": `<|system|>\\n..\\n<|user|>\\n..\\n<|assistant|>\\n..{eos}\\n`, stripped at the ends
  (LESS's `_concat_messages(...).strip()`);
- "template": the tokenizer's own chat template.
Labels cover assistant content and the eos (or the template's end-of-turn marker) that
closes it; everything else is -100. Labels are assigned by character spans and the fast
tokenizer's offsets, so no prefix has to be re-tokenised; slow tokenizers fall back to
LESS's prefix re-tokenisation. An example whose assistant tokens are all truncated away
is returned as a SkippedExample with its reason, never as an all -100 row (whose mean
loss would be 0/0 = NaN).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, Sequence

import torch

IGNORE_INDEX = -100
ChatFormat = Literal["tulu", "template"]


@dataclass(frozen=True)
class FormatConfig:
    chat_format: ChatFormat = "tulu"
    max_seq_length: int = 2048


@dataclass(frozen=True)
class TokenizedExample:
    id: str
    input_ids: list[int]
    labels: list[int]
    truncated: bool

    @property
    def n_label_tokens(self) -> int:
        return sum(1 for x in self.labels if x != IGNORE_INDEX)


@dataclass(frozen=True)
class SkippedExample:
    id: str
    reason: str


def render_tulu(messages: Sequence[dict], eos_token: str) -> tuple[str, list[tuple[int, int]]]:
    """Text in tulu format and the [start, end) character spans to train on."""
    text, spans = "", []
    for m in messages:
        role, content = m["role"], m["content"].strip()
        if role not in ("system", "user", "assistant"):
            raise ValueError(f"unknown role {role!r}")
        text += f"<|{role}|>\n"
        if role == "assistant":
            start = len(text)
            text += content + eos_token
            spans.append((start, len(text)))
            text += "\n"
        else:
            text += content + "\n"
    # LESS strips the text; it starts with "<|", so only the final newline goes
    return text.rstrip(), spans


def render_template(messages: Sequence[dict], tokenizer) -> tuple[str, list[tuple[int, int]]]:
    """Text from the tokenizer's chat template; assistant spans found by rendering prefixes."""
    msgs = [dict(m) for m in messages]
    full = tokenizer.apply_chat_template(msgs, tokenize=False)
    spans = []
    for i, m in enumerate(msgs):
        if m["role"] != "assistant":
            continue
        before = tokenizer.apply_chat_template(msgs[:i], tokenize=False, add_generation_prompt=True) if i else ""
        upto = tokenizer.apply_chat_template(msgs[: i + 1], tokenize=False)
        if not (full.startswith(upto) and upto.startswith(before)):
            raise ValueError("the tokenizer's chat template does not render conversations prefix by prefix; "
                             "use chat_format: tulu")
        end = len(upto.rstrip())  # the end-of-turn marker is trained on, the newline after it is not
        spans.append((len(before), end))
    return full, spans


def _labels_from_offsets(offsets, spans) -> list[bool]:
    out = []
    for s, e in offsets:
        out.append(e > s and any(e > a and s < b for a, b in spans))
    return out


def _labels_from_prefixes(tokenizer, text, spans, add_special) -> list[bool]:
    """LESS's way: token index of a character boundary = length of the tokenised prefix."""
    n = len(tokenizer(text, add_special_tokens=add_special)["input_ids"])
    mask = [False] * n
    for a, b in spans:
        lo = len(tokenizer(text[:a], add_special_tokens=add_special)["input_ids"])
        hi = len(tokenizer(text[:b], add_special_tokens=add_special)["input_ids"])
        for i in range(lo, min(hi, n)):
            mask[i] = True
    return mask


def tokenize_messages(messages: Sequence[dict], tokenizer, cfg: FormatConfig,
                      example_id: str = "") -> TokenizedExample | SkippedExample:
    if cfg.chat_format == "tulu":
        text, spans = render_tulu(messages, tokenizer.eos_token)
        add_special = True  # BOS as the model expects; the tulu text carries no special tokens
    elif cfg.chat_format == "template":
        text, spans = render_template(messages, tokenizer)
        add_special = False  # the template already wrote them
    else:
        raise ValueError(f"unknown chat_format {cfg.chat_format!r}; expected tulu or template")
    if getattr(tokenizer, "is_fast", False):
        enc = tokenizer(text, add_special_tokens=add_special, return_offsets_mapping=True)
        ids, mask = enc["input_ids"], _labels_from_offsets(enc["offset_mapping"], spans)
    else:
        ids = tokenizer(text, add_special_tokens=add_special)["input_ids"]
        mask = _labels_from_prefixes(tokenizer, text, spans, add_special)
    labels = [t if m else IGNORE_INDEX for t, m in zip(ids, mask)]
    if not any(mask):
        return SkippedExample(example_id, "no assistant tokens after tokenisation")
    truncated = len(ids) > cfg.max_seq_length
    ids, labels = ids[: cfg.max_seq_length], labels[: cfg.max_seq_length]
    if all(x == IGNORE_INDEX for x in labels):
        return SkippedExample(example_id, f"all assistant tokens truncated away "
                                          f"(max_seq_length {cfg.max_seq_length})")
    return TokenizedExample(example_id, ids, labels, truncated)


def tokenize_record(record, tokenizer, cfg: FormatConfig) -> TokenizedExample | SkippedExample:
    return tokenize_messages(record.messages, tokenizer, cfg, example_id=record.id)


def tokenize_records(records, tokenizer, cfg: FormatConfig):
    """Tokenise many records; returns (kept examples, skipped examples) — nothing vanishes."""
    kept, skipped = [], []
    for r in records:
        t = tokenize_record(r, tokenizer, cfg)
        (kept if isinstance(t, TokenizedExample) else skipped).append(t)
    return kept, skipped


def collate(examples: Sequence[TokenizedExample], pad_token_id: int) -> dict[str, torch.Tensor]:
    """Right-pad to the longest example: input_ids, attention_mask, labels (-100 on padding)."""
    width = max(len(e.input_ids) for e in examples)
    n = len(examples)
    input_ids = torch.full((n, width), pad_token_id, dtype=torch.long)
    labels = torch.full((n, width), IGNORE_INDEX, dtype=torch.long)
    attention = torch.zeros((n, width), dtype=torch.long)
    for i, e in enumerate(examples):
        k = len(e.input_ids)
        input_ids[i, :k] = torch.tensor(e.input_ids)
        labels[i, :k] = torch.tensor(e.labels)
        attention[i, :k] = 1
    return {"input_ids": input_ids, "attention_mask": attention, "labels": labels}


def token_budget_batches(lengths: Sequence[int], batch_size: int, max_tokens: int | None = None) -> list[list[int]]:
    """Positions 0..n-1 cut into consecutive batches of at most `batch_size` examples and, when
    `max_tokens` is set, at most `max_tokens` padded tokens (rows x longest row), which is what
    activation memory follows. An example longer than `max_tokens` gets a batch of its own.
    Sorting by length first keeps both the padding and the number of batches small."""
    if batch_size < 1 or (max_tokens is not None and max_tokens < 1):
        raise ValueError(f"batch_size and max_tokens must be positive, got {batch_size}, {max_tokens}")
    batches: list[list[int]] = []
    current: list[int] = []
    longest = 0
    for i, n in enumerate(lengths):
        wider = max(longest, n)
        if current and (len(current) >= batch_size or (max_tokens and (len(current) + 1) * wider > max_tokens)):
            batches.append(current)
            current, wider = [], n
        current.append(i)
        longest = wider
    if current:
        batches.append(current)
    return batches
