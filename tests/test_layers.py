"""The import graph of webapp/: data flows one way, and no module reaches back up.

    storage (history) -> request (guard) -> validation (schema)
        -> generation (providers, relay) -> formatting (formats, render, exports)
        -> response (views, recording, app)

A module may import modules of its own stage or earlier ones, and the leaves
(config, errors and the like) from anywhere; never a later stage. Imports made
inside functions count too; those under TYPE_CHECKING do not.
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent / "webapp"

STAGES: list[tuple[str, set[str]]] = [
    (
        "leaf",
        {
            "config",
            "errors",
            "codeblocks",
            "sockets",
            "events",
            "tokens",
            "runtime",
            "models",
            "ids",
            "quiet",
        },
    ),
    # The history store: SQL in and out, nothing of the request or the relay.
    ("storage", {"history"}),
    ("request", {"guard"}),
    ("validation", {"schema"}),
    (
        "generation",
        {
            "providers",
            "providers.base",
            "seam",
            "providers.wire",
            "providers.openai",
            "providers.local",
            "deadlines",
            "watchdog",
            "opener",
            "accounting",
            "generation",
        },
    ),
    ("formatting", {"formats", "render", "exports"}),
    (
        "response",
        {
            "service",
            "responses",
            "api",
            "ui",
            "openapi",
            "observability",
            "app",
            "fastio",
            "sessions",
            "recording",
            "jobs",
            "eventlog",
            "answers",
            "history_pages",
            "",
        },
    ),
]
STAGE = {module: index for index, (_, modules) in enumerate(STAGES) for module in modules}


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
                found.add(candidate if candidate in STAGE else base)
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.startswith("webapp."):
                    found.add(alias.name.removeprefix("webapp."))
    return found


def graph() -> dict[str, set[str]]:
    return {module_name(p): imports_of(p) for p in ROOT.rglob("*.py")}


def test_every_module_has_a_stage() -> None:
    assert set(graph()) == set(STAGE), set(graph()) ^ set(STAGE)


def test_no_module_imports_a_later_stage() -> None:
    wrong = [
        f"{module} ({STAGES[STAGE[module]][0]}) imports {target} ({STAGES[STAGE[target]][0]})"
        for module, targets in graph().items()
        for target in targets
        if STAGE[target] > STAGE[module] and STAGE[target] != 0
    ]
    assert wrong == []


def test_the_leaves_import_only_leaves() -> None:
    leaves = STAGES[0][1]
    wrong = {m: t - leaves for m, t in graph().items() if m in leaves and t - leaves}
    assert wrong == {}


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
