"""YAML configs mapped onto typed dataclasses, and the resolved config every stage saves.

A config file is a YAML mapping whose keys are the dataclass's fields (nested dataclasses
are nested mappings). Unknown keys and wrong types are errors that name the file.
The resolved config (defaults filled in) is written beside each stage's output so a run
can be replayed with `--config` on that file.
"""
from __future__ import annotations

import dataclasses
import hashlib
import inspect
import json
from pathlib import Path
from typing import Any, TypeVar

import yaml

T = TypeVar("T")


class ConfigError(ValueError):
    pass


def config_from_dict(cls: type[T], data: dict[str, Any], where: str = "config") -> T:
    import dacite  # here, not at import: the pure-torch core and the benches run where it is not installed
    try:
        return dacite.from_dict(cls, data, config=dacite.Config(strict=True, cast=[tuple]))
    except (dacite.DaciteError, TypeError, ValueError) as e:
        raise ConfigError(f"{where}: {e}") from None


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
    return config_from_dict(cls, data, where)


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
