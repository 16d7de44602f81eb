"""The package's architecture as its imports tell it: no cycles, and ``cli`` -> library -> ray/verl.

Every ``import`` / ``from ... import`` of a ``bridge_ray`` module counts, at module level or
inside a function (a function-level import is still a dependency, only a later one); imports
under ``if TYPE_CHECKING:`` do not (no code runs them: annotations only).
"""
from __future__ import annotations

import ast
from pathlib import Path

import bridge_ray

PACKAGE = Path(bridge_ray.__file__).parent


def modules() -> dict[str, Path]:
    found = {}
    for path in PACKAGE.rglob("*.py"):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        found[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return found


def runtime_nodes(tree: ast.AST):
    """Every node of ``tree`` except what sits under ``if TYPE_CHECKING:``."""
    for node in ast.iter_child_nodes(tree):
        if isinstance(node, ast.If) and isinstance(node.test, ast.Name) and node.test.id == "TYPE_CHECKING":
            yield from (n for child in node.orelse for n in [child, *runtime_nodes(child)])
            continue
        yield node
        yield from runtime_nodes(node)


def imports() -> dict[str, set[str]]:
    """{module: the bridge_ray modules it imports}; ``from pkg import name`` counts ``pkg.name`` when that is a module."""
    mods = modules()

    def owner(name: str) -> str:
        while name not in mods:
            name = name.rpartition(".")[0]
        return name

    graph = {}
    for name, path in mods.items():
        deps = set()
        for node in runtime_nodes(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                deps |= {owner(a.name) for a in node.names if a.name.split(".")[0] == "bridge_ray"}
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and (node.module or "").split(".")[0] == "bridge_ray":
                deps |= {owner(f"{node.module}.{a.name}") if f"{node.module}.{a.name}" in mods else owner(node.module)
                         for a in node.names}
        graph[name] = deps - {name}
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index, low, stack, on_stack, found = {}, {}, [], set(), []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def test_no_module_imports_itself_round_a_cycle():
    assert cycles(imports()) == []


def test_only_the_cli_imports_the_cli():
    outside = {name: sorted(d for d in deps if d.startswith("bridge_ray.cli"))
               for name, deps in imports().items() if not name.startswith("bridge_ray.cli") and name != "bridge_ray.__main__"}
    assert {k: v for k, v in outside.items() if v} == {}


def test_the_cli_imports_no_ray_or_trainer_package():
    """``cli`` -> library -> ray/verl: a command reaches Ray, torch or verl through a library call, even
    inside a function (where the test below, which imports modules without running commands, can't see it)."""
    heavy = {"ray", "torch", "verl", "vllm", "transformers"}
    found = {}
    for name, path in modules().items():
        if not name.startswith("bridge_ray.cli") and name != "bridge_ray.__main__":
            continue
        tops = set()
        for node in runtime_nodes(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                tops |= {a.name.split(".")[0] for a in node.names}
            elif isinstance(node, ast.ImportFrom) and node.level == 0:
                tops.add((node.module or "").split(".")[0])
        if tops & heavy:
            found[name] = sorted(tops & heavy)
    assert found == {}


def test_the_cli_and_the_library_import_no_heavy_package():
    """Ray, torch, verl and transformers load where they are used, not with the CLI: ``submit
    --dry-run`` and ``status`` stay quick (``benchmarks/submit_dry_run.py`` times it)."""
    import subprocess
    import sys

    code = ("import sys, bridge_ray, bridge_ray.cli, bridge_ray.jobs, bridge_ray.network, bridge_ray.sft, bridge_ray.ppo, "
            "bridge_ray.runs.curves, bridge_ray.pipelines.sft_then_ppo, bridge_ray.pipelines.text_to_chat; "
            "print(sorted(m for m in ('ray', 'torch', 'verl', 'transformers', 'vllm') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]", out.stdout


def test_the_readme_names_every_public_name():
    """The README's list of `bridge_ray.__all__` had left out eight names, among them errors callers catch."""
    readme = (Path(bridge_ray.__file__).parent.parent / "README.md").read_text()
    listed = readme.split("Public names (`bridge_ray.__all__`)", 1)[1].split("\n\n", 1)[0]
    assert [name for name in bridge_ray.__all__ if f"`{name}`" not in listed] == []
