"""Conversation -> token ids and labels, as LESS's code makes them.

Renderings (`chat_format`):
- "less" (the default): exactly LESS's `less/data_selection/get_training_dataset.py` and
  `get_validation_dataset.py`, by the record's encoding (schema.message_encoding):
  * a chat (`encode_with_messages_format`): `<|system|>\n..\n<|user|>\n..\n<|assistant|>\n..{eos}\n`
    per message, each content stripped, the text itself NOT stripped; labels on everything
    but the non-assistant messages and the `<|assistant|>\n` tag that follows each of them:
    assistant content, its eos and the "\n" after it (the text's last one too);
  * prompt/completion (`encode_with_prompt_completion_format`): `prompt + completion + eos`
    with a " " between them unless the prompt ends or the completion starts with
    whitespace; no role tags; labels after the prompt's tokens; a system message is ignored,
    as LESS reads only `prompt` and `completion`;
  * a target (`get_validation_dataset.tokenize`): `<|user|>\n{user}\n<|assistant|>\n{cue}{answer}`,
    verbatim, no eos; labels on the answer's tokens only.
  Token boundaries come from LESS's own procedure: the length of the tokenised text prefix
  (with the tokenizer's special tokens), every tokenisation truncated at `max_seq_length`.
- "tulu_stripped" (alias "tulu", this package's earlier default): the same tags, contents
  stripped, the whole text stripped (so the last "\n" goes), labels on assistant content and
  its eos only, by character spans and the fast tokenizer's offsets. Encodings are ignored but
  a cue, which opens the assistant turn unlabelled.
- "template": the tokenizer's own chat template; labels on assistant content and its
  end-of-turn marker (a cue opens the assistant content, unlabelled).
An example with no label token (all truncated away) is returned as a SkippedExample with its
reason, never as an all -100 row: LESS's code would give it loss 0/0 = NaN and, sorting NaN
first, select it first.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, Sequence

import torch

IGNORE_INDEX = -100
ChatFormat = Literal["less", "tulu_stripped", "tulu", "template"]
CHAT_FORMATS = ("less", "tulu_stripped", "template")
FORMAT_ALIASES = {"tulu": "tulu_stripped"}  # "tulu" meant the stripped rendering before "less" existed
ASSISTANT_TAG = "<|assistant|>\n"


def canonical_format(name: str) -> str:
    """"less", "tulu_stripped" or "template" for a chat_format name (or alias); ValueError otherwise."""
    name = FORMAT_ALIASES.get(name, name)
    if name not in CHAT_FORMATS:
        raise ValueError(f"unknown chat_format {name!r}; expected one of {', '.join(CHAT_FORMATS)} "
                         f"(or {', '.join(f'{a} = {b}' for a, b in FORMAT_ALIASES.items())})")
    return name


@dataclass(frozen=True)
class FormatConfig:
    chat_format: ChatFormat = "less"
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


def _encoding(messages: Sequence[dict]) -> str | None:
    return messages[-1].get("encoding") if messages else None


def _check_role(role: str) -> None:
    if role not in ("system", "user", "assistant"):
        raise ValueError(f"unknown role {role!r}")


# --- chat_format less --------------------------------------------------------------------------
def render_less(messages: Sequence[dict], eos_token: str) -> tuple[str, list[tuple[int, int]]]:
    """LESS's text and the [a, b) character ranges it does NOT train on.

    Tokens ntok(text[:a]) (0 when a == 0) .. ntok(text[:b]) of each range get label -100, as
    LESS computes them (ntok: the length of the truncated tokenisation of a text prefix)."""
    enc = _encoding(messages)
    if enc == "prompt_completion":
        msgs = [m for m in messages if m["role"] != "system"]  # LESS reads prompt and completion only
        prompt, completion = msgs[0]["content"], msgs[1]["content"]
        ws = (" ", "\n", "\t")
        sep = "" if prompt.endswith(ws) or completion.startswith(ws) else " "
        return prompt + sep + completion + eos_token, [(0, len(prompt))]
    if enc == "validation":
        user, answer = messages[0]["content"], messages[1]
        query = "<|user|>\n" + user + "\n" + ASSISTANT_TAG + (answer.get("cue") or "")
        return query + answer["content"], [(0, len(query))]
    if enc is not None:
        raise ValueError(f"unknown message encoding {enc!r}")
    text, masked = "", []
    for i, m in enumerate(messages):
        role = m["role"]
        _check_role(role)
        start = len(text)
        text += f"<|{role}|>\n" + m["content"].strip() + (eos_token if role == "assistant" else "") + "\n"
        if role != "assistant":
            nxt = messages[i + 1]["role"] if i + 1 < len(messages) else None
            masked.append((start, len(text) + (len(ASSISTANT_TAG) if nxt == "assistant" else 0)))
    return text, masked


def _tokenize_less(text: str, masked: list[tuple[int, int]], tokenizer, max_len: int):
    """(input_ids, labels) exactly as LESS: prefix lengths of truncated tokenisations."""
    def ids_of(t: str) -> list[int]:
        return tokenizer(t, max_length=max_len, truncation=True)["input_ids"]

    ids = ids_of(text)
    labels = list(ids)
    cache: dict[int, int] = {0: 0, len(text): len(ids)}  # LESS starts a leading range at token 0

    def ntok(pos: int) -> int:
        if pos not in cache:
            cache[pos] = len(ids_of(text[:pos]))
        return cache[pos]

    for a, b in masked:
        lo, hi = ntok(a), ntok(b)
        labels[lo:hi] = [IGNORE_INDEX] * len(labels[lo:hi])
        if hi >= max_len:  # LESS stops here: nothing after the cut is left to mask
            break
    return ids, labels


# --- chat_format tulu_stripped / template ------------------------------------------------------
def render_tulu(messages: Sequence[dict], eos_token: str) -> tuple[str, list[tuple[int, int]]]:
    """chat_format tulu_stripped: the tulu text, stripped, and the [start, end) spans to train on."""
    text, spans = "", []
    for m in messages:
        role = m["role"]
        _check_role(role)
        text += f"<|{role}|>\n"
        if role == "assistant":
            cue = m.get("cue") or ""
            text += cue
            start = len(text)
            text += (m["content"].rstrip() if cue else m["content"].strip()) + eos_token
            spans.append((start, len(text)))
            text += "\n"
        else:
            text += m["content"].strip() + "\n"
    # it starts with "<|", so only the final newline goes
    return text.rstrip(), spans


def render_template(messages: Sequence[dict], tokenizer) -> tuple[str, list[tuple[int, int]]]:
    """Text from the tokenizer's chat template; assistant spans found by rendering prefixes."""
    msgs = [{"role": m["role"], "content": (m.get("cue") or "") + m["content"]} for m in messages]
    full = tokenizer.apply_chat_template(msgs, tokenize=False)
    spans = []
    for i, m in enumerate(msgs):
        if m["role"] != "assistant":
            continue
        before = tokenizer.apply_chat_template(msgs[:i], tokenize=False, add_generation_prompt=True) if i else ""
        upto = tokenizer.apply_chat_template(msgs[: i + 1], tokenize=False)
        if not (full.startswith(upto) and upto.startswith(before)):
            raise ValueError("the tokenizer's chat template does not render conversations prefix by prefix; "
                             "use chat_format: less")
        cue = messages[i].get("cue") or ""
        if cue and not upto[len(before):].startswith(cue):
            raise ValueError("the tokenizer's chat template changes the start of an assistant turn; "
                             "cannot leave its cue unlabelled (use chat_format: less)")
        end = len(upto.rstrip())  # the end-of-turn marker is trained on, the newline after it is not
        spans.append((len(before) + len(cue), end))
    return full, spans


def render_text(messages: Sequence[dict], tokenizer, chat_format: str) -> tuple[str, bool]:
    """The text a model sees for a record under `chat_format`, and whether the tokenizer should
    add its special tokens to it (a chat template writes its own)."""
    fmt = canonical_format(chat_format)
    if fmt == "less":
        return render_less(messages, tokenizer.eos_token)[0], True
    if fmt == "tulu_stripped":
        return render_tulu(messages, tokenizer.eos_token)[0], True
    return render_template(messages, tokenizer)[0], False


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
    fmt = canonical_format(cfg.chat_format)
    max_len = cfg.max_seq_length
    if fmt == "less":
        text, masked = render_less(messages, tokenizer.eos_token)
        ids, labels = _tokenize_less(text, masked, tokenizer, max_len)
        # LESS's tokenizer call truncates; whether it cut anything needs the uncut length
        truncated = len(ids) >= max_len and len(tokenizer(text)["input_ids"]) > max_len
        if all(x == IGNORE_INDEX for x in labels):
            why = (f"all assistant tokens truncated away (max_seq_length {max_len})" if truncated
                   else "no assistant tokens after tokenisation")
            return SkippedExample(example_id, why)
        return TokenizedExample(example_id, ids, labels, truncated)
    if fmt == "tulu_stripped":
        text, spans = render_tulu(messages, tokenizer.eos_token)
        add_special = True  # BOS as the model expects; the tulu text carries no special tokens
    else:
        text, spans = render_template(messages, tokenizer)
        add_special = False  # the template already wrote them
    if getattr(tokenizer, "is_fast", False):
        enc = tokenizer(text, add_special_tokens=add_special, return_offsets_mapping=True)
        ids, mask = enc["input_ids"], _labels_from_offsets(enc["offset_mapping"], spans)
    else:
        ids = tokenizer(text, add_special_tokens=add_special)["input_ids"]
        mask = _labels_from_prefixes(tokenizer, text, spans, add_special)
    labels = [t if m else IGNORE_INDEX for t, m in zip(ids, mask)]
    if not any(mask):
        return SkippedExample(example_id, "no assistant tokens after tokenisation")
    truncated = len(ids) > max_len
    ids, labels = ids[:max_len], labels[:max_len]
    if all(x == IGNORE_INDEX for x in labels):
        return SkippedExample(example_id, f"all assistant tokens truncated away "
                                          f"(max_seq_length {max_len})")
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


def length_groups(lengths: Sequence[int], overhead: int) -> list[list[int]]:
    """The rows of one padded batch cut into groups of similar length that together compute the
    fewest positions: a group costs (its rows x its longest row) + `overhead` positions (the fixed
    cost of one more forward/backward, in token units). Exact minimum by dynamic programming
    over the rows sorted by length (B <= a few hundred rows: O(B^2) is nothing). Returns row
    indices per group, shortest group first; one group when splitting saves nothing."""
    if overhead < 0:
        raise ValueError(f"overhead must be >= 0, got {overhead}")
    order = sorted(range(len(lengths)), key=lambda i: lengths[i])
    n = len(order)
    best = [0] + [None] * n  # best[j]: cost of the j shortest rows
    cut = [0] * (n + 1)
    for j in range(1, n + 1):
        widest = lengths[order[j - 1]]
        for i in range(j):
            c = best[i] + overhead + (j - i) * widest
            if best[j] is None or c < best[j]:
                best[j], cut[j] = c, i
    groups, j = [], n
    while j > 0:
        groups.append(order[cut[j]:j])
        j = cut[j]
    return groups[::-1]
