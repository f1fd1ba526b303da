"""The layout's rules, checked on the code: no import cycle, Celery only behind ``worker``.

- no import cycle among the modules of ``tasks`` and ``worker`` (explicit imports, read with
  ``ast``), and every module imports first in a fresh interpreter;
- only ``tasks/api.py`` and ``tasks/cli/`` import ``worker``; nothing else in ``tasks`` imports
  kombu; no import sits inside a function;
- importing ``tasks`` and enqueueing changes no attribute of any Celery, kombu or redbeat class
  or module; the project writes no kombu key.
"""

from __future__ import annotations

import ast
import json
import re
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from tests.conftest import ROOT

PACKAGES = ("tasks", "worker")
#: the modules of ``tasks`` that may import the Celery app
MAY_IMPORT_WORKER = ("tasks.api", "tasks.cli")


def modules() -> dict[str, Path]:
    found = {}
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            parts = list(path.relative_to(ROOT).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            found[".".join(parts)] = path
    return found


def imports_of(path: Path) -> list[tuple[str, ast.AST, bool]]:
    """(imported module, node, at module level) for every import of ``path``."""
    tree = ast.parse(path.read_text(), str(path))
    top: set[ast.AST] = set(tree.body)
    for statement in tree.body:  # module-level ``if TYPE_CHECKING:`` and ``try:`` blocks
        if isinstance(statement, (ast.If, ast.Try)):
            top.update(statement.body)
            top.update(getattr(statement, "orelse", []))
    out: list[tuple[str, ast.AST, bool]] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out += [(alias.name, node, node in top) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            # ``from tasks import runtime`` imports the submodule tasks.runtime, else a name of
            # the module (the parent package's ``__init__`` runs first either way, as always)
            for alias in node.names:
                submodule = f"{node.module}.{alias.name}"
                out.append((submodule if submodule in KNOWN else node.module, node, node in top))
    return out


KNOWN = set(modules())


def graph() -> dict[str, set[str]]:
    known = modules()
    edges: dict[str, set[str]] = {name: set() for name in known}
    for name, path in known.items():
        for target, _, _ in imports_of(path):
            if target in known and target != name:
                edges[name].add(target)
    return edges


def cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in sorted(edges[node]):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(edges):
        if node not in index:
            visit(node)
    return found


def test_the_modules_import_one_another_without_a_cycle() -> None:
    assert cycles(graph()) == []


def test_the_cycle_check_finds_a_cycle() -> None:
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_no_import_hides_inside_a_function() -> None:
    hidden = [
        f"{path.relative_to(ROOT)}:{node.lineno} {target}"
        for path in modules().values()
        for target, node, at_top in imports_of(path)
        if not at_top and not _allowed_local_import(path, node)
    ]
    assert hidden == []


def _allowed_local_import(path: Path, node: ast.AST) -> bool:
    """An import a library forces inside a function, marked ``# local: <why>`` on its line."""
    line = path.read_text().splitlines()[node.lineno - 1]  # type: ignore[attr-defined]
    return "# local:" in line


def test_only_the_public_api_and_the_cli_import_worker_and_no_other_tasks_module_kombu() -> None:
    offenders = []
    for name, path in modules().items():
        if not name.startswith("tasks"):
            continue
        for target, _, _ in imports_of(path):
            root = target.split(".")[0]
            may = name.startswith(MAY_IMPORT_WORKER)
            if (root == "worker" or root == "kombu") and not may:
                offenders.append(f"{name} imports {target}")
    assert offenders == []


def test_the_project_writes_no_kombu_key() -> None:
    # kombu's Redis transport keeps its state under these names; only kombu may write them
    key = re.compile(r"""["'](unacked|unacked_index|unacked_mutex|_kombu\.[^"']*)["']""")
    found = [
        f"{path.relative_to(ROOT)}: {match.group(1)}"
        for path in modules().values()
        for match in key.finditer(path.read_text())
    ]
    assert found == []


@pytest.mark.timeout(600)
def test_every_module_imports_first_in_a_fresh_interpreter() -> None:
    # Given each module as the first one a process imports (a cycle breaks some order)
    script = "import importlib, sys\nname = sys.argv[1]\nimportlib.import_module(name)\n"

    def failure(name: str) -> str | None:
        proc = subprocess.run(
            [sys.executable, "-c", script, name],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=120,
        )
        return None if proc.returncode == 0 else f"{name}: {proc.stderr.strip().splitlines()[-1:]}"

    names = [name for name in modules() if not name.endswith("__main__")]  # main: the CLI runs
    with ThreadPoolExecutor(max_workers=4) as pool:  # independent processes: side by side
        failures = [f for f in pool.map(failure, names) if f is not None]
    assert failures == []


SNAPSHOT = r"""
import importlib, inspect, json, sys
MODULES = [
    "celery", "celery.app.base", "celery.app.task", "celery.worker.request",
    "celery.worker.consumer.consumer", "celery.events.dispatcher", "celery.beat",
    "kombu", "kombu.messaging", "kombu.connection", "kombu.pools", "kombu.transport.redis",
    "kombu.transport.virtual", "kombu.transport.virtual.base", "redbeat.schedulers",
]
def snapshot():
    out = {}
    for name in MODULES:
        module = importlib.import_module(name)
        for attr, value in vars(module).items():
            out[f"{name}.{attr}"] = id(value)
            if inspect.isclass(value) and value.__module__ == name:
                for key, member in vars(value).items():
                    out[f"{name}.{attr}.{key}"] = id(member)
    return out
before = snapshot()
import tasks
job = tasks.enqueue_recording("room-layout")
assert tasks.get_job(job.id) is not None
after = snapshot()
changed = sorted(k for k in before if after.get(k) != before[k])
print(json.dumps({"changed": changed, "status": job.status.value}))
"""


@pytest.mark.usefixtures("rdb")
def test_importing_tasks_and_enqueueing_leaves_celery_kombu_and_redbeat_as_shipped(
    redis_url: str,
) -> None:
    proc = subprocess.run(
        [sys.executable, "-c", SNAPSHOT],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        env={"REDIS_URL": redis_url, "PATH": "/usr/bin:/bin"},
    )
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result == {"changed": [], "status": "queued"}
