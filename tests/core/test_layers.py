"""Layers point one way: the imports of every module, read from its source (nothing imported).

The core's layers, lowest first; a module may import its own layer and those below::

    base         exceptions, states, URLs, the clock, descriptions, results, contexts,
                 shell quoting, argument checks, the concurrency toolkit (shielded
                 cleanups, deadlines, outcomes), private state files and the managed key
    contract     aiores.adaptor: what adaptors implement
    engine       sessions, the shared watcher, the journal, the rate governor, the
                 registry
    api          Manager and resources, JobService and jobs
    composition  fleets, groups, existing hosts, pools, recovery
    face         aiores (the public re-exports), aiores.testing
    cli          the ``aiores`` command

The core imports no adaptor (it reaches them through the registry, by name). Adaptors
import the core only as ``aiores`` and ``aiores.adaptor``, and another adaptor only by
its package (``aiores_ec2``), never a private module of either. The few imports that
point up are listed in :data:`UPWARD` with their reason; each must stay deferred
(inside a function or under ``TYPE_CHECKING``), so importing a layer never imports
one above it.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
CORE = ROOT / "aiores"
ADAPTORS = ROOT / "adaptors"

#: Each core module (its first name under ``aiores``) by layer, lowest first.
LAYERS: dict[str, frozenset[str]] = {
    "base": frozenset(
        {
            "_exceptions",
            "_states",
            "_url",
            "_clock",
            "_descriptions",
            "_results",
            "_contexts",
            "_shell",
            "_validate",
            "_concurrency",
            "_private",
            "_heap",
        }
    ),
    "contract": frozenset({"adaptor"}),
    "engine": frozenset({"_session", "_watch", "_journal", "_limits", "_registry"}),
    "api": frozenset({"_resource", "_jobs"}),
    "composition": frozenset(
        {"_fleet", "_group", "_hosts", "_jobsession", "_lease", "_pool", "_recover"}
    ),
    "face": frozenset({"__init__", "testing"}),
    "cli": frozenset({"_cli", "__main__"}),
}
RANK = {module: rank for rank, modules in enumerate(LAYERS.values()) for module in modules}
LAYER = {module: layer for layer, modules in LAYERS.items() for module in modules}

#: Imports that point up, by (importer, imported): why each is there. Each must be
#: deferred: inside a function, or under TYPE_CHECKING (an annotation only).
UPWARD: dict[tuple[str, str], str] = {
    ("adaptor", "_limits"): (
        "the rate governor (Bucket, Governor, RetryPolicy, Transience) is part of the "
        "adaptor contract, re-exported by aiores.adaptor; _limits imports only base"
    ),
    ("_session", "_resource"): "Session.manager() makes a Manager",
    ("_session", "_pool"): "Session.pool() makes a Pool",
    ("_session", "_jobs"): "Session.job_service() makes a JobService",
    ("_session", "_jobsession"): "Session.job_session() makes a JobSession",
    ("_session", "_fleet"): "Session.fleet() makes a Fleet",
    ("_session", "_recover"): "Session.recover() and reap() run recovery",
    ("_results", "_resource"): "RunResult.resource is annotated with Resource",
}
#: Upward imports allowed at module level (imported along with their importer).
EAGER = {("adaptor", "_limits")}


@dataclass(frozen=True)
class Import:
    path: Path
    line: int
    module: str  # the absolute module name imported
    deferred: bool  # inside a function or under TYPE_CHECKING

    def __str__(self) -> str:
        return f"{self.path.relative_to(ROOT)}:{self.line} imports {self.module}"


def module_name(path: Path, root: Path) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _exists(module: str) -> bool:
    """True if ``module`` is a module of the core or of an adaptor package."""
    for root in (ROOT, ADAPTORS):
        path = root.joinpath(*module.split("."))
        if path.with_suffix(".py").is_file() or (path / "__init__.py").is_file():
            return True
    return False


def imports(path: Path, root: Path) -> Iterator[Import]:
    """Every import in ``path`` (a module under ``root``), relative ones resolved."""
    name = module_name(path, root)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]

    def visit(node: ast.AST, deferred: bool) -> Iterator[Import]:
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield Import(path, node.lineno, alias.name, deferred)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")
                anchor = anchor[: len(anchor) - node.level + 1]
                base = ".".join([*anchor, *([base] if base else [])])
            for alias in node.names:
                # `from pkg import sub` imports the module pkg.sub where there is one.
                sub = f"{base}.{alias.name}"
                yield Import(path, node.lineno, sub if _exists(sub) else base, deferred)
        for child in ast.iter_child_nodes(node):
            inner = deferred or isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef)
            if isinstance(node, ast.If) and _is_type_checking(node.test) and child in node.body:
                inner = True
            yield from visit(child, inner)

    yield from visit(ast.parse(path.read_text(), str(path)), False)


def core_modules() -> list[Path]:
    return sorted(CORE.rglob("*.py"))


def adaptor_modules() -> list[Path]:
    return sorted(ADAPTORS.glob("aiores_*/**/*.py"))


def adaptor_packages() -> set[str]:
    return {path.name for path in ADAPTORS.glob("aiores_*") if (path / "__init__.py").is_file()}


def layer_of(module: str) -> str:
    """``aiores._cli._main`` -> ``_cli``; ``aiores`` -> ``__init__``."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def test_every_core_module_has_a_layer() -> None:
    unplaced = {layer_of(module_name(path, ROOT)) for path in core_modules()} - set(RANK)
    assert not unplaced, f"place these modules in LAYERS: {sorted(unplaced)}"


@pytest.mark.parametrize("path", core_modules(), ids=lambda p: str(p.relative_to(ROOT)))
def test_core_modules_import_only_their_layer_and_below(path: Path) -> None:
    importer = layer_of(module_name(path, ROOT))
    wrong = []
    for found in imports(path, ROOT):
        if found.module != "aiores" and not found.module.startswith("aiores."):
            continue
        imported = layer_of(found.module)
        if imported == importer or RANK[imported] <= RANK[importer]:
            continue
        reason = UPWARD.get((importer, imported))
        if reason is None:
            wrong.append(f"{found} ({LAYER[importer]} -> {LAYER[imported]})")
        elif not found.deferred and (importer, imported) not in EAGER:
            wrong.append(f"{found} at module level; defer it ({reason})")
    assert not wrong, "imports that point up:\n" + "\n".join(wrong)


def test_each_upward_import_is_still_needed() -> None:
    used = set()
    for path in core_modules():
        importer = layer_of(module_name(path, ROOT))
        used |= {(importer, layer_of(i.module)) for i in imports(path, ROOT)}
    assert set(UPWARD) - used == set(), "remove from UPWARD what no module imports any more"


def test_the_rate_governor_imports_only_base() -> None:
    # adaptor imports _limits eagerly (see UPWARD): that is sound only while _limits
    # brings nothing of the engine with it.
    for found in imports(CORE / "_limits.py", ROOT):
        if found.module.startswith("aiores."):
            assert LAYER[layer_of(found.module)] == "base", str(found)


@pytest.mark.parametrize("path", core_modules(), ids=lambda p: str(p.relative_to(ROOT)))
def test_the_core_imports_no_adaptor(path: Path) -> None:
    packages = adaptor_packages()
    wrong = [str(i) for i in imports(path, ROOT) if i.module.split(".")[0] in packages]
    assert not wrong, "the core reaches adaptors only through the registry:\n" + "\n".join(wrong)


def test_aiores_testing_uses_only_the_public_api() -> None:
    # It is what users' tests use: a mock backend written as any adaptor is.
    wrong = [
        str(i)
        for i in imports(CORE / "testing.py", ROOT)
        if i.module.startswith("aiores") and i.module not in {"aiores", "aiores.adaptor"}
    ]
    assert not wrong, "\n".join(wrong)


@pytest.mark.parametrize("path", adaptor_modules(), ids=lambda p: str(p.relative_to(ROOT)))
def test_adaptors_import_only_the_public_core(path: Path) -> None:
    own = path.relative_to(ADAPTORS).parts[0]
    others = adaptor_packages() - {own}
    wrong = []
    for found in imports(path, ADAPTORS):
        top = found.module.split(".")[0]
        if top == "aiores" and found.module not in {"aiores", "aiores.adaptor"}:
            wrong.append(f"{found}: use aiores or aiores.adaptor")
        elif top in others and found.module != top:
            wrong.append(f"{found}: use the package {top}, not its private modules")
    assert not wrong, "\n".join(wrong)


def test_the_scanner_sees_what_it_must() -> None:
    # The tests above pass vacuously if imports() finds nothing: check it on a sample.
    found = {(i.module, i.deferred) for i in imports(CORE / "_session.py", ROOT)}
    assert ("aiores._journal", False) in found
    assert ("aiores._resource", True) in found
    assert ("aiores._cli._admin", False) in {
        (i.module, i.deferred) for i in imports(CORE / "_cli" / "_main.py", ROOT)
    }
