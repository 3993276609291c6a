"""The package's shape: no import cycle inside less_ray (an import inside a function counts: it is a
cycle that only hides until someone moves the import up), no module over 600 lines, and one stage
registry that the pipeline, the CLI and `less-ray config` all read."""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
MAX_LINES = 600


def import_graph(package: Path) -> dict[str, set[str]]:
    """module -> the package's modules it imports anywhere in its body (module- and function-level)."""
    top = package.name
    mods = {}
    for p in package.rglob("*.py"):
        name = ".".join(p.relative_to(package.parent).with_suffix("").parts)
        mods[name.removesuffix(".__init__")] = p

    def resolve(cur: str, node: ast.AST) -> list[str]:
        pkg = cur if mods[cur].name == "__init__.py" else cur.rsplit(".", 1)[0]
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = pkg.split(".")[: len(pkg.split(".")) - (node.level - 1)]
                mod = ".".join(base + ([node.module] if node.module else []))
            else:
                mod = node.module or ""
            names = [mod] + [f"{mod}.{a.name}" for a in node.names]
        else:
            names = [a.name for a in node.names]
        out = []
        for c in names:
            while c and c not in mods:
                c = c.rpartition(".")[0]
            if c and c != cur and (c == top or c.startswith(top + ".")):
                out.append(c)
        return out

    graph: dict[str, set[str]] = {m: set() for m in mods}
    for m, p in mods.items():
        for node in ast.walk(ast.parse(p.read_text(encoding="utf-8"))):
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                for t in resolve(m, node):
                    # a package importing its own submodules, or a module its own parent package, is no cycle
                    if not (mods[m].name == "__init__.py" and t.startswith(m + ".")) and not m.startswith(t + "."):
                        graph[m].add(t)
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (iterative Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    found: list[list[str]] = []
    counter = 0
    for root in graph:
        if root in index:
            continue
        work = [(root, iter(sorted(graph[root])))]
        index[root] = low[root] = counter
        counter += 1
        stack.append(root)
        on.add(root)
        while work:
            v, it = work[-1]
            w = next(it, None)
            if w is not None:
                if w not in index:
                    index[w] = low[w] = counter
                    counter += 1
                    stack.append(w)
                    on.add(w)
                    work.append((w, iter(sorted(graph[w]))))
                elif w in on:
                    low[v] = min(low[v], index[w])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[v])
            if low[v] == index[v]:
                comp = []
                while True:
                    x = stack.pop()
                    on.discard(x)
                    comp.append(x)
                    if x == v:
                        break
                if len(comp) > 1:
                    found.append(sorted(comp))
    return found


def test_the_checker_sees_a_cycle_hidden_in_a_function(tmp_path):
    pkg = tmp_path / "pkg"
    (pkg / "sub").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "sub" / "__init__.py").write_text("")
    (pkg / "a.py").write_text("from .sub import b\n")
    (pkg / "sub" / "b.py").write_text("def f():\n    from ..c import g\n")
    (pkg / "c.py").write_text("import pkg.a\n")
    (pkg / "d.py").write_text("from . import a\n")
    assert cycles(import_graph(pkg)) == [["pkg.a", "pkg.c", "pkg.sub.b"]]


def test_no_import_cycle_in_less_ray():
    found = cycles(import_graph(ROOT / "less_ray"))
    assert not found, "import cycles: " + "; ".join(" <-> ".join(c) for c in found)


def test_no_module_over_600_lines():
    over = {str(p.relative_to(ROOT)): n for p in (ROOT / "less_ray").rglob("*.py")
            if (n := len(p.read_text(encoding="utf-8").splitlines())) > MAX_LINES}
    assert not over, f"modules over {MAX_LINES} lines: {over}"


def test_every_stage_is_declared_once_and_read_from_the_registry():
    from dataclasses import fields

    from less_ray.cli import build_parser, stage_config_class
    from less_ray.pipeline import PipelineConfig
    from less_ray.stages import CONFIGURED, PIPELINE_STAGES, REGISTRY, get_stage

    names = [s.name for s in REGISTRY]
    assert len(names) == len(set(names))
    # the pipeline's default stage list is the registry's, in its order
    assert PipelineConfig().stages == list(PIPELINE_STAGES)
    # every pipeline stage with a config of its own has its section in PipelineConfig
    sections = {f.name for f in fields(PipelineConfig)}
    assert {s.name for s in REGISTRY if s.pipeline} <= sections
    # every registered stage is a command (its help the registry's), every stage-like command registered
    action = next(a for a in build_parser()._actions if a.dest == "stage")
    commands = action.choices
    helps = {c.dest: c.help for c in action._choices_actions}
    for s in REGISTRY:
        top, *sub = s.cli.split()
        assert top in commands, s.name
        if sub:
            nested = next(a for a in commands[top]._actions if a.dest == "action").choices
            assert sub[0] in nested, s.name
        elif s.name == top:
            assert helps[s.name] == s.summary, s.name
    assert set(commands) - {s.cli.split()[0] for s in REGISTRY} == {"model", "config"}  # tools, not stages
    # `less-ray config` knows exactly the stages with a config, each its registered class
    assert set(CONFIGURED) == {s.name for s in REGISTRY if s.config}
    for name in CONFIGURED:
        assert stage_config_class(name) is get_stage(name).config_class()
    with pytest.raises(ValueError, match="no stage 'nope'"):
        get_stage("nope")


def test_preflight_names_the_registry_stages_on_a_typo(tmp_path):
    from less_ray.pipeline import PipelineConfig
    from less_ray.preflight import preflight_pipeline
    cfg = PipelineConfig(out=str(tmp_path), base_model=str(tmp_path), pool=str(tmp_path / "p.jsonl"),
                         targets={"t": str(tmp_path / "t.jsonl")}, stages=["warmup", "scroe"])
    errors = preflight_pipeline(cfg).errors
    assert any("stages[1]: unknown stage 'scroe' (did you mean 'score'?)" in e for e in errors), errors
