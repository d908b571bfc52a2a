"""The import graph of webapp/: data flows one way, and no module reaches back up.

    request -> validation -> generation -> formatting -> response
    web/ (routes, who is asking, limits)          the request and the response
      -> answers/ (an answer's life: store, jobs, event log)
        -> relay/ (one answer in flight: schema, relay, deadlines, formats)
          -> providers/ (the model: OpenAI-compatible, local)
            -> the leaves (config, diffs, errors, ids, quiet, sockets)

One stage per package: a module may import its own package and those below it,
never one above; the leaves import only leaves. The app factory (app.py) and the
package's __init__ sit on top. Imports made inside functions count too; those
under TYPE_CHECKING do not.
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent / "webapp"

LEAVES = {"config", "diffs", "errors", "ids", "quiet", "sockets"}
STAGES = ["leaves", "providers", "relay", "answers", "web", "app"]


def stage_of(module: str) -> str:
    """The stage a module belongs to: its package, or leaves / app at the top level."""
    if module in LEAVES:
        return "leaves"
    if module in ("", "app"):
        return "app"
    package = module.split(".")[0]
    assert package in STAGES, f"{module} is in no stage: put it in a layer's package"
    return package


RANK = {stage: index for index, stage in enumerate(STAGES)}


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    name = ".".join(parts)
    return "" if name == "__init__" else name.removesuffix(".__init__")


def imports_of(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    skip: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            skip |= {id(n) for child in node.body for n in ast.walk(child)}
    found = set()
    for node in ast.walk(tree):
        if id(node) in skip:
            continue
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("webapp"):
            base = node.module.removeprefix("webapp").removeprefix(".")
            for alias in node.names:
                candidate = f"{base}.{alias.name}" if base else alias.name
                found.add(
                    candidate
                    if (ROOT / (candidate.replace(".", "/") + ".py")).exists()
                    or (ROOT / candidate.replace(".", "/")).is_dir()
                    else base
                )
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.startswith("webapp."):
                    found.add(alias.name.removeprefix("webapp."))
    return found


def graph() -> dict[str, set[str]]:
    return {module_name(p): imports_of(p) for p in ROOT.rglob("*.py")}


def test_every_module_has_a_stage() -> None:
    for module in graph():
        stage_of(module)


def test_no_module_imports_a_later_stage() -> None:
    wrong = [
        f"{module} ({stage_of(module)}) imports {target} ({stage_of(target)})"
        for module, targets in graph().items()
        for target in targets
        if RANK[stage_of(target)] > RANK[stage_of(module)]
    ]
    assert wrong == []


def test_the_leaves_import_only_leaves() -> None:
    wrong = {m: t - LEAVES for m, t in graph().items() if m in LEAVES and t - LEAVES}
    assert wrong == {}


def test_the_check_would_catch_a_wrong_way_import() -> None:
    """The rule itself: a relay module importing the answers layer is refused."""
    assert RANK[stage_of("answers.jobs")] > RANK[stage_of("relay.generation")]
    assert RANK[stage_of("web.ui")] > RANK[stage_of("answers.store")]
    assert RANK[stage_of("relay.events")] > RANK[stage_of("providers.base")]


def test_the_import_graph_has_no_cycle() -> None:
    edges = graph()
    done: set[str] = set()

    def visit(module: str, path: list[str]) -> None:
        if module in path:
            raise AssertionError(" -> ".join([*path[path.index(module) :], module]))
        if module in done:
            return
        for target in edges.get(module, ()):
            if target != module:
                visit(target, [*path, module])
        done.add(module)

    for module in edges:
        visit(module, [])
