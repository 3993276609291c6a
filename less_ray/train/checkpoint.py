"""Checkpoint folders: what the gradient datastore reads, and what a resumed run needs.

An epoch checkpoint (Ray Train checkpoint `epoch_<k>`, exported to `<out>/checkpoints/epoch_<k>`):
    adapter_config.json, adapter_model.safetensors   LoRA adapter (peft, fp32 master weights)
    optimizer_moments.safetensors                    "<peft param name>.exp_avg" / ".exp_avg_sq",
                                                     fp32, full shapes, every trainable parameter
    state.json                                       epoch, global_step, avg_lr, seed, data_hash,
                                                     base_model, adam, config, ...
    model/                                           (full fine-tune instead of the adapter)
    deepspeed/                                       DeepSpeed's own per-rank state (Ray storage
                                                     only; used to resume, not exported)
Ranks write into their own temp folders; Ray merges them into one checkpoint folder.
"""
from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path
from typing import Any, Iterable

STATE_FILE = "state.json"
MOMENTS_FILE = "optimizer_moments.safetensors"
ADAPTER_FILES = ("adapter_config.json", "adapter_model.safetensors")
MODEL_DIR = "model"  # full fine-tune: an HF model folder
RESUME_DIR = "deepspeed"
MANIFEST_FILE = "warmup_manifest.json"
WARMUP_DATA_FILE = "warmup_data.jsonl"


def data_hash(ids: Iterable[str]) -> str:
    """Hash of the training example ids, in training-set order."""
    h = hashlib.sha256()
    for i in ids:
        h.update(i.encode("utf-8") + b"\n")
    return h.hexdigest()[:16]


def write_json(obj: Any, path: Path) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(obj, indent=2, sort_keys=False, default=str) + "\n", encoding="utf-8")
    tmp.replace(path)


def save_adapter(peft_model, weights: dict, out: Path) -> None:
    """peft's own files; `weights` (full fp32, peft names) replace the module's possibly
    partitioned or low-precision parameters."""
    peft_model.save_pretrained(str(out), state_dict=weights, safe_serialization=True)


def save_full_model(model, weights: dict, tokenizer, out: Path) -> None:
    model.save_pretrained(str(out), state_dict=weights, safe_serialization=True)
    tokenizer.save_pretrained(str(out))


def save_moments(moments: dict, out: Path) -> None:
    from safetensors.torch import save_file
    save_file({k: v.contiguous() for k, v in moments.items()}, str(out / MOMENTS_FILE))


def read_state(ckpt_dir: str | Path) -> dict:
    return json.loads((Path(ckpt_dir) / STATE_FILE).read_text(encoding="utf-8"))


def read_checkpoint_state(ckpt: str | Path) -> dict:
    """A checkpoint's state.json, or {} for a checkpoint without one (an adapter from elsewhere)."""
    path = Path(ckpt) / STATE_FILE
    return json.loads(path.read_text(encoding="utf-8")) if path.exists() else {}


def load_checkpoint_moments(ckpt_dir: str | Path) -> dict[str, tuple[Any, Any]]:
    """{peft parameter name: (exp_avg, exp_avg_sq)} from an epoch checkpoint."""
    from safetensors.torch import load_file
    flat = load_file(str(Path(ckpt_dir) / MOMENTS_FILE))
    names = sorted({k.rsplit(".", 1)[0] for k in flat})
    missing = [n for n in names if f"{n}.exp_avg" not in flat or f"{n}.exp_avg_sq" not in flat]
    if missing:
        raise ValueError(f"{ckpt_dir}: moments incomplete for {missing[:5]}")
    return {n: (flat[f"{n}.exp_avg"], flat[f"{n}.exp_avg_sq"]) for n in names}


def export_checkpoint(src: Path, dst: Path, lora: bool) -> None:
    """Copy what later stages read (not DeepSpeed's resume state) from a Ray checkpoint."""
    if dst.exists():
        shutil.rmtree(dst)
    dst.mkdir(parents=True)
    names = [*ADAPTER_FILES, MOMENTS_FILE, STATE_FILE] if lora else [MODEL_DIR, STATE_FILE]
    for name in names:
        s = src / name
        if s.is_dir():
            shutil.copytree(s, dst / name)
        elif s.exists():
            shutil.copy2(s, dst / name)
        elif name != MOMENTS_FILE:  # target training saves no moments
            raise FileNotFoundError(f"{s}: missing from the Ray checkpoint")


def write_warmup_manifest(out: Path, entries: list[dict], extra: dict) -> Path:
    path = out / MANIFEST_FILE
    write_json({**extra, "checkpoints": entries}, path)
    return path


def read_warmup_manifest(out: str | Path) -> dict:
    """The manifest, with each checkpoint's `path` resolved (falls back to
    <out>/checkpoints/epoch_<k> when the run folder was moved)."""
    out = Path(out)
    manifest = json.loads((out / MANIFEST_FILE).read_text(encoding="utf-8"))
    for c in manifest["checkpoints"]:
        p = Path(c["path"])
        if not p.exists():
            p = out / "checkpoints" / f"epoch_{c['epoch']}"
        c["path"] = str(p)
    return manifest
