"""The import graph, read with ast: the domain stands alone, adapters sit below the services and read models, and
only the composition root and the entry points import everything; no module cycle, not even through lazy imports.
Third-party patches are installed at start-up, not on import, and only on the version they were written for."""

from __future__ import annotations

import ast
import subprocess
import sys
import tomllib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[2]
PACKAGES: list[str] = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"]
"""Baton's own top-level packages, as shipped."""

COMPOSITION = {"infra.bootstrap", "infra.cli", "infra.projector", "infra.installation"}
"""The composition root (bootstrap) and the entry points that run it: the only infra modules that may import the
services, read models, consumers, the HTTP adapter or the demo."""

ABOVE_ADAPTERS = ("services", "projections", "consumers", "api", "demo")
DOMAIN_MAY_IMPORT = ("eventsourcing.domain",)


@dataclass(frozen=True)
class Import:
    """One import statement's target, where it is and how it runs."""

    module: str
    """The importing module."""
    target: str
    """The imported module (a submodule for `from package import submodule`)."""
    line: int
    lazy: bool
    """Inside a function: runs when called, not on import."""
    typing_only: bool
    """Under `if TYPE_CHECKING:`: never runs."""

    def __str__(self) -> str:
        how = " (in a function)" if self.lazy else " (TYPE_CHECKING)" if self.typing_only else ""
        return f"{self.module}:{self.line} imports {self.target}{how}"


def modules() -> dict[str, Path]:
    """Every module of Baton's packages, by dotted name."""
    found: dict[str, Path] = {}
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            parts = list(path.relative_to(ROOT).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            found[".".join(parts)] = path
    return found


def _type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def imports_of(module: str, path: Path, known: dict[str, Path]) -> Iterator[Import]:
    """The imports in one module; `from a import b` names a.b when that is a module of Baton's."""

    def targets(node: ast.Import | ast.ImportFrom) -> list[str]:
        if isinstance(node, ast.Import):
            return [alias.name for alias in node.names]
        if node.level:  # relative: Baton uses none, but name the package it means
            base = module.split(".")[: -node.level]
            name = ".".join([*base, node.module] if node.module else base)
        else:
            name = node.module or ""
        subs = [f"{name}.{alias.name}" for alias in node.names if f"{name}.{alias.name}" in known]
        return subs if len(subs) == len(node.names) else [name, *subs]

    def walk(node: ast.AST, lazy: bool, typing_only: bool) -> Iterator[Import]:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.Import | ast.ImportFrom):
                if isinstance(child, ast.ImportFrom) and child.module == "__future__":
                    continue
                for target in targets(child):
                    yield Import(module, target, child.lineno, lazy, typing_only)
            in_function = isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef | ast.Lambda)
            typing_block = isinstance(child, ast.If) and _type_checking(child.test)
            if typing_block:
                assert isinstance(child, ast.If)
                for stmt in child.body:
                    yield from walk(ast.Module(body=[stmt], type_ignores=[]), lazy, True)
                for stmt in child.orelse:
                    yield from walk(ast.Module(body=[stmt], type_ignores=[]), lazy, typing_only)
            else:
                yield from walk(child, lazy or in_function, typing_only)

    yield from walk(ast.parse(path.read_text(), str(path)), False, False)


def graph() -> list[Import]:
    known = modules()
    return [i for module, path in known.items() for i in imports_of(module, path, known)]


def _in(target: str, *packages: str) -> bool:
    return any(target == p or target.startswith(f"{p}.") for p in packages)


def _cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(edges.get(v, ())):
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

    for v in sorted(edges):
        if v not in index:
            visit(v)
    return found


def _edges(imports: list[Import], *, lazy: bool) -> dict[str, set[str]]:
    """Module -> Baton modules it imports at run time (at import time only, unless lazy)."""
    known = modules()
    edges: dict[str, set[str]] = {m: set() for m in known}
    for i in imports:
        if i.typing_only or (i.lazy and not lazy) or i.target == i.module:
            continue
        if i.target in known:
            edges[i.module].add(i.target)
    return edges


def test_the_graph_is_read() -> None:
    """The parser sees what it must: modules of every package, lazy and typing-only imports among them."""
    imports = graph()
    assert {m.split(".")[0] for m in modules()} == set(PACKAGES)
    assert any(i.module == "infra.bootstrap" and i.target == "services.whistles" for i in imports)
    assert any(i.lazy for i in imports) and any(i.typing_only for i in imports)
    assert any(i.target == "infra.metrics" for i in imports)  # `from infra import metrics` is the module


def test_the_domain_imports_only_itself_the_stdlib_and_eventsourcing_domain() -> None:
    wrong = [
        str(i)
        for i in graph()
        if _in(i.module, "domain")
        and not i.typing_only
        and not _in(i.target, "domain", *DOMAIN_MAY_IMPORT)
        and i.target.split(".")[0] not in sys.stdlib_module_names
    ]
    assert not wrong, "domain/ must not depend on anything but itself, the stdlib and eventsourcing.domain:\n" + (
        "\n".join(wrong)
    )


def test_adapters_import_no_service_read_model_consumer_api_demo_or_composition_root() -> None:
    """infra/'s adapters (store, NATS, relay, notary, privacy, clock...) sit below everything they serve; even a
    lazy or typing-only import of what is above them would make the layers a cycle again."""
    wrong = [
        str(i)
        for i in graph()
        if _in(i.module, "infra")
        and i.module not in COMPOSITION
        and (_in(i.target, *ABOVE_ADAPTERS) or i.target in COMPOSITION)
    ]
    assert not wrong, "an adapter imports from above it (inject it, or move the module up):\n" + "\n".join(wrong)


def test_services_and_read_models_do_not_import_each_other_or_what_runs_them() -> None:
    """Services and projections sit on the adapters, side by side: consumers, the API and the root combine them."""
    above = ("consumers", "api", "demo")
    wrong = [
        str(i)
        for i in graph()
        if (_in(i.module, "services") and (_in(i.target, "projections", *above) or i.target in COMPOSITION))
        or (_in(i.module, "projections") and (_in(i.target, "services", *above) or i.target in COMPOSITION))
    ]
    assert not wrong, "\n".join(wrong)


def test_no_import_cycle_at_module_level() -> None:
    cycles = _cycles(_edges(graph(), lazy=False))
    assert not cycles, f"modules importing one another on import: {cycles}"


def test_no_import_cycle_hidden_by_a_lazy_import() -> None:
    """A function-level import that breaks a cycle only hides it: the modules still need each other."""
    cycles = _cycles(_edges(graph(), lazy=True))
    assert not cycles, f"modules needing one another (through function-level imports): {cycles}"


# Third-party patches: explicit, at start-up, on the version they were written for -----------------------------


def _pins() -> dict[str, str]:
    """pyproject.toml's exact pins, by distribution name."""
    pins: dict[str, str] = {}
    for requirement in tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]:
        name, _, pinned = requirement.partition("==")
        pins[name.split("[")[0]] = pinned
    return pins


def test_patches_name_the_pinned_versions() -> None:
    from consumers.common import FASTSTREAM_VERSION
    from infra.sqlite import EVENTSOURCING_VERSION

    assert _pins()["faststream"] == FASTSTREAM_VERSION
    assert _pins()["eventsourcing"] == EVENTSOURCING_VERSION


def test_importing_baton_patches_nothing() -> None:
    """Every module imported, FastStream's pull loop is still its own until the composition root installs ours."""
    names = sorted(m for m in modules() if not m.endswith("__main__"))
    check = (
        "import importlib\n"
        f"for name in {names!r}: importlib.import_module(name)\n"
        "from faststream.nats.subscriber.usecases.stream_pull_subscriber import BatchPullStreamSubscriber as S\n"
        "from consumers.common import _consume_promptly\n"
        "assert S._consume_pull is not _consume_promptly, 'patched on import'\n"
        "from infra.bootstrap import install_patches\n"
        "install_patches()\n"
        "assert S._consume_pull is _consume_promptly, 'not patched at start-up'\n"
    )
    done = subprocess.run([sys.executable, "-c", check], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr


def test_a_patch_refuses_a_version_it_was_not_written_for(monkeypatch: pytest.MonkeyPatch) -> None:
    from faststream.nats.subscriber.usecases.stream_pull_subscriber import BatchPullStreamSubscriber

    from consumers.common import install_prompt_batches
    from infra import patches

    def own_loop(self: Any) -> None: ...

    monkeypatch.setattr(BatchPullStreamSubscriber, "_consume_pull", own_loop)
    monkeypatch.setattr(patches, "version", lambda distribution: "0.8.0")
    with pytest.raises(patches.UnexpectedVersion, match=r"written for faststream 0\.7\.8 .*0\.8\.0 is installed"):
        install_prompt_batches()
    assert BatchPullStreamSubscriber._consume_pull is own_loop
    assert patches.require_version("faststream", "0.7.8", "a check", strict=False) is False  # warned, not raised


def test_no_module_assigns_to_a_library_at_module_level() -> None:
    """A library's attribute set by Baton (a monkey-patch) is set inside a function the start-up path calls."""
    first = set(PACKAGES)
    wrong = []
    for module, path in modules().items():
        tree = ast.parse(path.read_text())
        libraries = {
            alias.asname or alias.name.split(".")[0]
            for node in ast.walk(tree)
            if isinstance(node, ast.Import | ast.ImportFrom)
            and not (isinstance(node, ast.ImportFrom) and (node.level or (node.module or "").split(".")[0] in first))
            for alias in node.names
            if not (isinstance(node, ast.Import) and alias.name.split(".")[0] in first)
        }
        for node in tree.body:
            targets = node.targets if isinstance(node, ast.Assign) else [getattr(node, "target", None)]
            for target in targets:
                base = target
                while isinstance(base, ast.Attribute):
                    base = base.value
                if isinstance(target, ast.Attribute) and isinstance(base, ast.Name) and base.id in libraries:
                    wrong.append(f"{module}:{node.lineno} sets {ast.unparse(target)}")
    assert not wrong, "\n".join(wrong)
