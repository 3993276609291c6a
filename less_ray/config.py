"""YAML configs mapped onto typed dataclasses, and the resolved config every stage saves.

A config file is a YAML mapping whose keys are the dataclass's fields (nested dataclasses
are nested mappings). Unknown keys and wrong types are errors that name the file.
The resolved config (defaults filled in) is written beside each stage's output so a run
can be replayed with `--config` on that file.
"""
from __future__ import annotations

import dataclasses
import difflib
import hashlib
import inspect
import json
import os
import types
import typing
from pathlib import Path
from typing import Any, Literal, TypeVar, Union

import yaml

T = TypeVar("T")


class ConfigError(ValueError):
    pass


# --- paths -----------------------------------------------------------------------------------
# A field declared with path_field() holds a file or folder. Every such path is made absolute
# on the driver (`absolute_paths`) before a config is sent anywhere: Ray Train moves each worker
# into its own run folder, where a relative path names nothing and transformers would take a
# model path for a hub id. The kind says what preflight checks: "in" must exist, "model" must be
# a model folder (a hub id only with LESS_RAY_ALLOW_HUB=1), "out" is created by the stage.
PathKind = Literal["in", "out", "model"]
HUB_ENV = "LESS_RAY_ALLOW_HUB"


def path_field(kind: PathKind, default: Any = dataclasses.MISSING, **kw: Any) -> Any:
    if default is not dataclasses.MISSING and isinstance(default, (list, dict)):
        kw["default_factory"] = lambda d=default: type(d)(d)
        default = dataclasses.MISSING
    return dataclasses.field(default=default, metadata={"path": kind}, **kw)


def hub_allowed() -> bool:
    return os.environ.get(HUB_ENV, "").strip().lower() in ("1", "true", "yes")


def looks_like_hub_id(value: str) -> bool:
    """`org/name` with no leading ./ or /: what transformers would try to download."""
    return bool(value) and not value.startswith((".", "/", "~")) and value.count("/") == 1


def _absolute(value: Any, kind: str) -> Any:
    if isinstance(value, str) and value and "://" not in value:
        p = Path(value).expanduser()
        if kind == "model" and not p.exists() and hub_allowed() and looks_like_hub_id(value):
            return value  # an explicitly allowed hub id stays a name
        return str(p.resolve())
    if isinstance(value, list):
        return [_absolute(v, kind) for v in value]
    if isinstance(value, dict):
        return {k: _absolute(v, kind) for k, v in value.items()}
    return value


def _path_slots(cfg: Any, prefix: str = "") -> typing.Iterator[tuple[Any, dataclasses.Field, str]]:
    """(owning config, field, dotted key) of every path field in `cfg` and its nested configs."""
    if not dataclasses.is_dataclass(cfg):
        return
    for f in dataclasses.fields(cfg):
        value = getattr(cfg, f.name)
        key = f"{prefix}{f.name}"
        if "path" in f.metadata:
            yield cfg, f, key
        elif dataclasses.is_dataclass(value):
            yield from _path_slots(value, key + ".")
        elif isinstance(value, list):
            for i, v in enumerate(value):
                yield from _path_slots(v, f"{key}[{i}].")


def path_fields(cfg: Any, prefix: str = "") -> typing.Iterator[tuple[str, str, Any]]:
    """(key path, kind, value) of every path field in `cfg` and its nested configs."""
    for owner, f, key in _path_slots(cfg, prefix):
        yield key, f.metadata["path"], getattr(owner, f.name)


def absolute_paths(cfg: T) -> T:
    """Make every path field of `cfg` (nested configs too) absolute, in place; returns `cfg`.
    Relative paths mean the driver's working directory, as in a shell."""
    for owner, f, _ in list(_path_slots(cfg)):
        setattr(owner, f.name, _absolute(getattr(owner, f.name), f.metadata["path"]))
    return cfg


# --- checking a mapping against a dataclass, with messages that name the key ------------------
def _type_name(tp: Any) -> str:
    origin = typing.get_origin(tp)
    if origin is Literal:
        return " | ".join(repr(a) for a in typing.get_args(tp))
    if origin in (Union, types.UnionType):
        return " or ".join(_type_name(a) for a in typing.get_args(tp))
    if tp is type(None):
        return "null"
    if origin is not None:
        return f"{getattr(origin, '__name__', str(origin))}[{', '.join(_type_name(a) for a in typing.get_args(tp))}]"
    return getattr(tp, "__name__", str(tp))


def _show(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


# names people reach for that this project spells otherwise (too far apart for difflib)
SYNONYMS = {"rank": "r", "lora_rank": "r", "lora_r": "r", "lora_alpha": "alpha", "lora_dropout": "dropout",
            "learning_rate": "lr", "num_epochs": "epochs", "num_train_epochs": "epochs", "dim": "dims",
            "dims": "dim", "model": "base_model", "model_name_or_path": "base_model", "train_file": "pool",
            "batch_size": "per_device_batch_size", "output_dir": "out", "target": "targets"}


def _nearest(key: str, known: list[str]) -> str | None:
    if SYNONYMS.get(key) in known:
        return SYNONYMS[key]
    near = difflib.get_close_matches(key, known, n=1, cutoff=0.6)
    return near[0] if near else None


def check_mapping(cls: type, data: Any, prefix: str = "") -> list[str]:
    """Every problem of `data` as a config of `cls`: unknown keys (with the nearest known one),
    missing required keys, wrong types; each message starts with the key's dotted path."""
    where = prefix.rstrip(".") or "config"
    if not isinstance(data, dict):
        return [f"{where}: expected a mapping of option: value, got {type(data).__name__} {_show(data)}"]
    hints = typing.get_type_hints(cls)
    known = {f.name: f for f in dataclasses.fields(cls) if f.init}
    errors = []
    for key in data:
        if key not in known:
            near = _nearest(str(key), list(known))
            errors.append(f"{prefix}{key}: unknown key" + (f" (did you mean '{near}'?)" if near else
                                                             f" (known: {', '.join(sorted(known))})"))
    for name, f in known.items():
        if name in data:
            errors += _check_value(hints[name], data[name], f"{prefix}{name}")
        elif f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
            errors.append(f"{prefix}{name}: required key is missing")
    return errors


def _check_value(tp: Any, value: Any, key: str) -> list[str]:
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if tp is Any:
        return []
    if origin in (Union, types.UnionType):
        results = [_check_value(a, value, key) for a in args]
        if any(not r for r in results):
            return []
        inner = [r for r, a in zip(results, args) if dataclasses.is_dataclass(a) and isinstance(value, dict)]
        return inner[0] if inner else [f"{key}: expected {_type_name(tp)}, got {type(value).__name__} {_show(value)}"]
    if origin is Literal:
        return [] if value in args else [f"{key}: expected one of {_type_name(tp)}, got {_show(value)}"]
    if dataclasses.is_dataclass(tp):
        return check_mapping(tp, value, key + ".")
    if tp is type(None):
        return [] if value is None else [f"{key}: expected null, got {_show(value)}"]
    if origin in (list, tuple) or tp in (list, tuple):
        if not isinstance(value, (list, tuple)):
            return [f"{key}: expected a list ({_type_name(tp)}), got {type(value).__name__} {_show(value)}"]
        if origin is tuple and args and args[-1] is not Ellipsis:
            if len(value) != len(args):
                return [f"{key}: expected {len(args)} items ({_type_name(tp)}), got {len(value)}"]
            return [e for a, v, i in zip(args, value, range(len(args))) for e in _check_value(a, v, f"{key}[{i}]")]
        item = args[0] if args else Any
        return [e for i, v in enumerate(value) for e in _check_value(item, v, f"{key}[{i}]")]
    if origin is dict or tp is dict:
        if not isinstance(value, dict):
            return [f"{key}: expected a mapping ({_type_name(tp)}), got {type(value).__name__} {_show(value)}"]
        kt, vt = args if args else (Any, Any)
        return [e for k, v in value.items() for e in _check_value(kt, k, f"{key} key") + _check_value(vt, v, f"{key}.{k}")]
    if tp is float:
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
    elif tp is int:
        ok = isinstance(value, int) and not isinstance(value, bool)
    elif isinstance(tp, type):
        ok = isinstance(value, tp)
    else:
        return []
    return [] if ok else [f"{key}: expected {_type_name(tp)}, got {type(value).__name__} {_show(value)}"]


def config_from_dict(cls: type[T], data: dict[str, Any], where: str = "config") -> T:
    import dacite  # here, not at import: the pure-torch core and the benches run where it is not installed
    errors = check_mapping(cls, data)
    if errors:
        shown = "\n  ".join(errors[:20]) + (f"\n  ... and {len(errors) - 20} more" if len(errors) > 20 else "")
        raise ConfigError(f"{where}: {len(errors)} problem(s):\n  {shown}")
    data = _ints_as_floats(cls, data)
    try:
        return dacite.from_dict(cls, data, config=dacite.Config(strict=True, cast=[tuple]))
    except (dacite.DaciteError, TypeError, ValueError) as e:
        raise ConfigError(f"{where}: {e}") from None


def _ints_as_floats(cls: type, data: dict[str, Any]) -> dict[str, Any]:
    """YAML reads `lr: 1` as an int; a float field takes it (dacite would not)."""
    hints = typing.get_type_hints(cls)
    out = dict(data)
    for name, value in data.items():
        tp = hints.get(name)
        if tp is None:
            continue
        if dataclasses.is_dataclass(tp) and isinstance(value, dict):
            out[name] = _ints_as_floats(tp, value)
        elif tp is float and isinstance(value, int) and not isinstance(value, bool):
            out[name] = float(value)
        elif typing.get_origin(tp) in (Union, types.UnionType) and float in typing.get_args(tp) \
                and isinstance(value, int) and not isinstance(value, bool) and int not in typing.get_args(tp):
            out[name] = float(value)
    return out


def load_config(cls: type[T], path: str | Path | None = None, overrides: dict[str, Any] | None = None) -> T:
    """Defaults of `cls`, then the YAML file, then `overrides` (CLI flags, None = not given)."""
    data: dict[str, Any] = {}
    where = "config"
    if path is not None:
        where = str(path)
        try:
            loaded = yaml.safe_load(Path(path).read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise ConfigError(f"{path}: no such config file") from None
        except yaml.YAMLError as e:
            raise ConfigError(f"{path}: not valid YAML: {e}") from None
        if loaded is None:
            loaded = {}
        if not isinstance(loaded, dict):
            raise ConfigError(f"{path}: expected a mapping of option: value, got {type(loaded).__name__}")
        data.update(loaded)
    for k, v in (overrides or {}).items():
        if v is not None:
            data[k] = v
    return absolute_paths(config_from_dict(cls, data, where))


def config_to_dict(cfg: Any) -> dict[str, Any]:
    """Plain JSON types; a config's own fields before those it inherits (shared settings such
    as the actor pool's), so a resolved config reads as its stage first."""
    data = json.loads(json.dumps(dataclasses.asdict(cfg), default=str))
    order = [k for c in type(cfg).__mro__ for k in inspect.get_annotations(c) if k in data]
    return {k: data[k] for k in dict.fromkeys(order + list(data))}


def config_hash(cfg: Any) -> str:
    canon = json.dumps(config_to_dict(cfg), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canon.encode()).hexdigest()[:16]


def save_config(cfg: Any, path: str | Path, extra: dict[str, Any] | None = None) -> Path:
    """Write the resolved config as YAML (readable by `load_config` when `extra` is None)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    data = config_to_dict(cfg)
    header = f"# resolved {type(cfg).__name__} (replay with --config {path.name})\n"
    text = header + yaml.safe_dump(data, sort_keys=False, allow_unicode=True)
    if extra:
        text += "# run facts (not config):\n" + "".join(f"# {k}: {v}\n" for k, v in extra.items())
    path.write_text(text, encoding="utf-8")
    return path
