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
import re
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


# --- pipeline sections: a stage's own config, less what the pipeline fills in -----------------
# The pipeline's `extract:` section is ExtractConfig without `data`, `checkpoint`, `out`, ...
# generated from it, so a field is declared once (in its stage) and reaches the stage's CLI
# (`--set`), the pipeline and `less-ray config <stage>` at once.

def section(stage: type, name: str, filled: dict[str, str], own: dict[str, tuple[Any, Any]] | None = None,
            optional: dict[str, str] | None = None, moved: dict[str, str] | None = None) -> type:
    """A dataclass with every init field of `stage` except the `filled` ones (field -> where the
    pipeline takes it from, for the error when a user sets it). `own`: name -> (type, field())
    of fields only the pipeline has (they may shadow a stage field, which is then filled);
    `optional`: required stage fields that may be left unset (-> the given default's source);
    `moved`: old keys -> where they went, for the error."""
    own = own or {}
    optional = optional or {}
    hints = typing.get_type_hints(stage)
    specs = []
    for f in dataclasses.fields(stage):
        if not f.init or f.name in filled or f.name in own:
            continue
        tp = hints[f.name]
        if f.name in optional:
            spec = dataclasses.field(default=None, metadata=f.metadata)
            tp = typing.Optional[tp]
        elif f.default is not dataclasses.MISSING:
            spec = dataclasses.field(default=f.default, metadata=f.metadata)
        elif f.default_factory is not dataclasses.MISSING:
            spec = dataclasses.field(default_factory=f.default_factory, metadata=f.metadata)
        else:
            raise TypeError(f"section {name}: required field {stage.__name__}.{f.name} is neither filled nor optional")
        specs.append((f.name, tp, spec))
    specs += [(n, tp, spec) for n, (tp, spec) in own.items()]
    cls = dataclasses.make_dataclass(name, specs, kw_only=True)
    cls.__module__ = stage.__module__
    cls.stage = stage
    cls.filled = {**filled, **{n: "the pipeline section's own field" for n in own if n in hints}}
    cls.own = tuple(own)
    cls.optional = dict(optional)
    cls.moved = dict(moved or {})
    cls.__doc__ = (f"The pipeline's section for {stage.__name__}: its fields, less those the pipeline fills in "
                   f"({', '.join(filled)}).")
    return cls


def stage_config(sec: Any, **values: Any) -> Any:
    """The stage config of section `sec`: its fields, the pipeline's `values` for the filled ones,
    and for an optional field left unset the value of the same name in `values`."""
    import copy
    cls = type(sec)
    data = {f.name: copy.deepcopy(getattr(sec, f.name)) for f in dataclasses.fields(sec) if f.name not in cls.own}
    for k in cls.optional:
        if data.get(k) is None:
            data[k] = values.pop(k)
        else:
            values.pop(k, None)
    unknown = set(values) - set(cls.filled)
    if unknown:
        raise TypeError(f"stage_config({cls.__name__}): {sorted(unknown)} are not filled fields")
    return cls.stage(**data, **values)


def field_docs(cls: type) -> dict[str, str]:
    """Field -> the comment beside it (or the comment lines above it) in the class's source, for
    the generated help; a section takes its stage's, and its own fields' are its `help` metadata."""
    docs: dict[str, str] = {}
    stage = getattr(cls, "stage", None)
    if stage is not None:
        docs.update(field_docs(stage))
        docs.update({f.name: f.metadata.get("help", "") for f in dataclasses.fields(cls) if f.name in cls.own})
        return docs
    for c in reversed([c for c in cls.__mro__ if dataclasses.is_dataclass(c)]):
        try:
            lines = inspect.getsource(c).splitlines()
        except (OSError, TypeError):
            continue
        above: list[str] = []
        for line in lines[1:]:
            text = line.strip()
            if text.startswith("#"):
                above.append(text.lstrip("# ").strip())
                continue
            head = text.split("#", 1)
            name = head[0].split(":", 1)[0].strip()
            if ":" in head[0] and name.isidentifier() and not text.startswith(("def ", "@", "return")):
                side = head[1].strip() if len(head) > 1 else ""
                docs[name] = " ".join(above + ([side] if side else []))
            above = []
    return docs


def describe_config(cls: type, prefix: str = "") -> list[str]:
    """One line per field (nested configs expanded): `key: type = default  # comment`."""
    hints = typing.get_type_hints(cls)
    docs = field_docs(cls)
    out = []
    base = getattr(cls, "stage", cls)  # a stage's own fields before those it inherits, as saved configs
    order = [k for c in base.__mro__ for k in inspect.get_annotations(c)]
    rank = {k: i for i, k in enumerate(dict.fromkeys(order))}
    for f in sorted(dataclasses.fields(cls), key=lambda f: rank.get(f.name, len(rank))):
        if not f.init:
            continue
        tp = hints[f.name]
        default = f.default if f.default is not dataclasses.MISSING else (
            f.default_factory() if f.default_factory is not dataclasses.MISSING else dataclasses.MISSING)
        if dataclasses.is_dataclass(tp):
            out.append(f"{prefix}{f.name}:" + (f"  # {docs[f.name]}" if docs.get(f.name) else ""))
            out += describe_config(tp, prefix + "  ")
            continue
        shown = "(required)" if default is dataclasses.MISSING else yaml.safe_dump(
            json.loads(json.dumps(default, default=str)), default_flow_style=True).strip().removesuffix("...").strip()
        note = f"  # {docs[f.name]}" if docs.get(f.name) else ""
        out.append(f"{prefix}{f.name}: {_type_name(tp)} = {shown}{note}")
    return out


def set_key(data: dict[str, Any], dotted: str, value: Any) -> None:
    """`--set a.b.c=value`: put `value` at that path of a nested mapping."""
    *parents, last = dotted.split(".")
    node = data
    for p in parents:
        nxt = node.get(p)
        if not isinstance(nxt, dict):
            nxt = node[p] = {}
        node = nxt
    node[last] = value


def parse_sets(items: list[str] | None) -> dict[str, Any]:
    """`KEY=VALUE` strings (VALUE read as YAML: 3, 0.5, true, [1, 2], null) -> a nested mapping."""
    data: dict[str, Any] = {}
    for item in items or []:
        key, sep, text = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"--set {item!r}: expected KEY=VALUE (KEY dotted for nested options, e.g. optim.lr=1e-4)")
        try:
            value = yaml.safe_load(text) if text.strip() else ""
        except yaml.YAMLError as e:
            raise ConfigError(f"--set {item!r}: the value is not valid YAML: {e}") from None
        set_key(data, key.strip(), value)
    return data


def merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    """`over` onto `base`, nested mappings merged key by key."""
    out = dict(base)
    for k, v in over.items():
        out[k] = merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


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
    filled, moved = getattr(cls, "filled", {}), getattr(cls, "moved", {})
    for key in data:
        if key in moved:
            errors.append(f"{prefix}{key}: moved to {moved[key]}")
        elif key in filled and key not in known:
            errors.append(f"{prefix}{key}: the pipeline fills this in ({filled[key]}); remove it here")
        elif key not in known:
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
    data = _ints_as_floats(cls, data) if isinstance(data, dict) else data
    errors = check_mapping(cls, data)
    if errors:
        shown = "\n  ".join(errors[:20]) + (f"\n  ... and {len(errors) - 20} more" if len(errors) > 20 else "")
        raise ConfigError(f"{where}: {len(errors)} problem(s):\n  {shown}")
    try:
        return dacite.from_dict(cls, data, config=dacite.Config(strict=True, cast=[tuple]))
    except (dacite.DaciteError, TypeError, ValueError) as e:
        raise ConfigError(f"{where}: {e}") from None


_FLOAT_TEXT = re.compile(r"^[-+]?(\d+\.?\d*|\.\d+)[eE][-+]?\d+$")


def _ints_as_floats(cls: type, data: dict[str, Any]) -> dict[str, Any]:
    """YAML reads `lr: 1` as an int and `lr: 1e-4` as a string (YAML 1.1 wants `1.0e-4`); a float
    field takes either as the number it means (dacite would not)."""
    hints = typing.get_type_hints(cls)
    out = dict(data)
    for name, value in data.items():
        tp = hints.get(name)
        if tp is None:
            continue
        takes_float = tp is float or (typing.get_origin(tp) in (Union, types.UnionType) and float in typing.get_args(tp))
        if dataclasses.is_dataclass(tp) and isinstance(value, dict):
            out[name] = _ints_as_floats(tp, value)
        elif takes_float and isinstance(value, str) and _FLOAT_TEXT.match(value.strip()):
            out[name] = float(value)
        elif tp is float and isinstance(value, int) and not isinstance(value, bool):
            out[name] = float(value)
        elif takes_float and isinstance(value, int) and not isinstance(value, bool) and int not in typing.get_args(tp):
            out[name] = float(value)
    return out


def load_config(cls: type[T], path: str | Path | None = None, overrides: dict[str, Any] | None = None,
                sets: dict[str, Any] | None = None) -> T:
    """Defaults of `cls`, then the YAML file, then `overrides` (CLI flags, None = not given), then
    `sets` (`--set key.path=value`, merged into nested mappings)."""
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
    if sets:
        data = merge(data, sets)
        where += " with --set"
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
    from . import storage
    path = storage.location(path)
    data = config_to_dict(cfg)
    header = f"# resolved {type(cfg).__name__} (replay with --config {path.name})\n"
    text = header + yaml.safe_dump(data, sort_keys=False, allow_unicode=True)
    if extra:
        text += "# run facts (not config):\n" + "".join(f"# {k}: {v}\n" for k, v in extra.items())
    storage.write_atomic(path, text)
    return path
