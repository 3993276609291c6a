"""Content identity of models and checkpoints: equal content, equal hash, wherever the folder lies.

A hash covers what defines the model's (or adapter's) behaviour, canonically:
- JSON files (config.json, adapter_config.json, tokenizer files) parsed and re-dumped with sorted
  keys, without keys that name a place or a tool version (`_name_or_path`,
  `base_model_name_or_path`, `transformers_version`, ...), and with lists whose order means
  nothing (`target_modules`, `modules_to_save`, `layers_to_transform`, ...) sorted;
- weight files (`*.safetensors`, `*.bin`, `*.gguf`, the AdamW moments) by their bytes' sha256.
File names enter the hash, folder paths never do: a copied model folder matches its original, and
another model written to the same path does not.
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from .artifact import sha256_file

# keys that name where a folder came from, or the tool that wrote it, not what it computes
VOLATILE_KEYS = frozenset({"_name_or_path", "name_or_path", "base_model_name_or_path", "transformers_version",
                           "peft_version", "revision", "_commit_hash", "auto_mapping"})
# lists that are sets: their order changes nothing
UNORDERED_KEYS = frozenset({"target_modules", "modules_to_save", "layers_to_transform", "exclude_modules",
                            "trainable_token_indices"})
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".gguf", ".pt", ".pth")
MODEL_JSON = ("config.json", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json")
TOKENIZER_FILES = ("tokenizer.model", "vocab.json", "merges.txt", "vocab.txt")
CHECKPOINT_FILES = ("adapter_model.safetensors", "adapter_model.bin", "adapter_config.json",
                    "optimizer_moments.safetensors")


def _canonical(obj: Any, key: str | None = None) -> Any:
    if isinstance(obj, dict):
        return {k: _canonical(v, k) for k, v in sorted(obj.items()) if k not in VOLATILE_KEYS}
    if isinstance(obj, list):
        items = [_canonical(v) for v in obj]
        if key in UNORDERED_KEYS:
            items.sort(key=lambda v: json.dumps(v, sort_keys=True))
        return items
    return obj


def canonical_json(path: str | Path) -> bytes:
    """A JSON file's canonical bytes (sorted keys, volatile keys dropped, unordered lists sorted)."""
    data = json.loads(Path(path).read_text(encoding="utf-8"))
    return json.dumps(_canonical(data), sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def _digest(parts: list[tuple[str, str]]) -> str:
    h = hashlib.sha256()
    for name, value in sorted(parts):
        h.update(name.encode() + b"\0" + value.encode() + b"\n")
    return h.hexdigest()


def _part(path: Path) -> tuple[str, str]:
    if path.suffix == ".json":
        return path.name, hashlib.sha256(canonical_json(path)).hexdigest()
    return path.name, sha256_file(path)


def checkpoint_content_hash(ckpt: str | Path) -> str:
    """A LoRA checkpoint's identity: adapter weights, adapter config (canonical) and AdamW moments."""
    files = [p for p in (Path(ckpt) / n for n in CHECKPOINT_FILES) if p.exists()]
    if not files:
        raise FileNotFoundError(f"{ckpt}: no adapter files ({', '.join(CHECKPOINT_FILES[:3])}): not a checkpoint")
    return _digest([_part(p) for p in files])


_MODEL_CACHE: dict[tuple, str] = {}


def model_content_hash(folder: str | Path) -> str | None:
    """A local model folder's identity: its config, tokenizer files (canonical JSON) and every
    weight file's bytes; None when `folder` is not a local folder (a hub id). Cached per process
    by the files' (name, size, mtime)."""
    folder = Path(folder)
    if not folder.is_dir():
        return None
    files = sorted(p for p in folder.iterdir() if p.is_file() and (
        p.name in MODEL_JSON or p.name in TOKENIZER_FILES or p.suffix in WEIGHT_SUFFIXES))
    key = tuple((p.name, (st := p.stat()).st_size, st.st_mtime_ns, st.st_ino) for p in files) + (str(folder.resolve()),)
    if key not in _MODEL_CACHE:
        if not any(p.suffix in WEIGHT_SUFFIXES for p in files):
            return None
        _MODEL_CACHE[key] = _digest([_part(p) for p in files])
    return _MODEL_CACHE[key]
