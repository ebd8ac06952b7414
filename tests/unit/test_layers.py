"""The layers of the code, checked from the imports (module level and inside functions alike).

Inner layers never reach outward. From the inside out:

1. `policies` (the policies model): imports nothing of ours.
2. `catalogue`, `logs`: the shared vocabulary; import only layer 1.
3. the state layer (`state`, `exception_queue`): what is stored and its APIs (event log, alert history).
4. the domain (`domain`): business rules and flows over ports; imports layers 1-3 and typed models only.
5. adapters (`connectors`, `receiver`, `alerts`, `sandbox`, `audit`, `data_quality`, `settings`, ...):
   talk to the world; never import Dagster wiring, the dashboard or the command line.
6. Dagster wiring (`assets`, `sensors`, `definitions`, `resources`): thin, over everything below.
7. the command line (`cli` and the command programs in `commands/`, `demo` and `simulate` among them)
   and the dashboard (`dashboards`). A command program (arguments parsed, results printed) lives in
   `commands/` and nowhere else; what it uses lives in the layers below.
"""

from __future__ import annotations

import ast
from functools import cache
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
# Source folder -> package in the wheel (pyproject's package-dir): the design card's top-level
# folders are installed under clarus_pipelines.
PACKAGE_DIRS = {"clarus_pipelines": "clarus_pipelines", "assets": "clarus_pipelines.assets",
                "sensors": "clarus_pipelines.sensors", "dashboards": "clarus_pipelines.dashboards"}
PACKAGES = tuple(PACKAGE_DIRS.values())

TYPED_MODELS = {"clarus_pipelines.connectors.clarus_model"}  # Clarus's JSON:API bodies, as types
OUTER_WIRING = ("clarus_pipelines.assets", "clarus_pipelines.sensors", "clarus_pipelines.definitions",
                "clarus_pipelines.resources")
COMMAND_LINE = ("clarus_pipelines.cli", "clarus_pipelines.commands", "clarus_pipelines.dashboards")
COMMAND_PROGRAMS = ("clarus_pipelines.cli", "clarus_pipelines.commands")


def _module_name(path: Path) -> str:
    folder, *parts = path.relative_to(REPO).with_suffix("").parts
    if parts and parts[-1] == "__init__":
        parts.pop()
    return ".".join([PACKAGE_DIRS[folder], *parts])


@cache
def modules() -> dict[str, Path]:
    found = {}
    for folder in PACKAGE_DIRS:
        for path in (REPO / folder).rglob("*.py"):
            found[_module_name(path)] = path
    return found


@cache
def imports_of(module: str) -> frozenset[str]:
    """Every module of ours that `module` imports, wherever the import statement stands."""
    path = modules()[module]
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            names.add(target)
            names.update(f"{target}.{alias.name}" for alias in node.names)  # `from pkg import module`
    ours = set()
    for name in names - {"clarus_pipelines"}:  # `from clarus_pipelines import catalogue` names the module, not the package
        while name and name not in modules():
            name = name.rpartition(".")[0]
        if name and name != module:
            ours.add(name)
    return frozenset(ours)


def _under(module: str, prefixes) -> bool:
    return any(module == p or module.startswith(p + ".") for p in prefixes)


def _third_party(module: str) -> set[str]:
    tree = ast.parse(modules()[module].read_text(encoding="utf-8"))
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and not node.level and node.module:
            found.add(node.module.split(".")[0])
    return found


def _violations(inner, allowed) -> list[str]:
    bad = []
    for module in sorted(modules()):
        if not _under(module, inner):
            continue
        for imported in sorted(imports_of(module)):
            if not _under(imported, allowed):
                bad.append(f"{module} imports {imported}")
    return bad


def test_the_policies_model_is_a_leaf():
    assert imports_of("clarus_pipelines.policies") == frozenset()


def test_the_vocabulary_imports_only_the_policies_model():
    assert _violations(("clarus_pipelines.catalogue", "clarus_pipelines.logs"), ("clarus_pipelines.policies",)) == []


def test_the_state_layer_imports_only_the_layers_below():
    allowed = ("clarus_pipelines.policies", "clarus_pipelines.catalogue", "clarus_pipelines.logs", "clarus_pipelines.state",
               "clarus_pipelines.exception_queue")
    assert _violations(("clarus_pipelines.state", "clarus_pipelines.exception_queue"), allowed) == []


def test_the_domain_imports_only_policies_state_and_typed_models():
    allowed = ("clarus_pipelines.domain", "clarus_pipelines.policies", "clarus_pipelines.catalogue", "clarus_pipelines.logs",
               "clarus_pipelines.state", "clarus_pipelines.exception_queue", *TYPED_MODELS)
    assert _violations(("clarus_pipelines.domain",), allowed) == []


def test_the_domain_has_no_dagster_and_no_command_programs():
    offenders = {m: sorted(_third_party(m) & {"dagster", "argparse", "streamlit"})
                 for m in modules() if _under(m, ("clarus_pipelines.domain",))}
    assert {m: found for m, found in offenders.items() if found} == {}


def test_adapters_never_reach_the_wiring_the_dashboard_or_the_command_line():
    adapters = [m for m in modules() if m.startswith("clarus_pipelines.")
                and not _under(m, ("clarus_pipelines.domain", "clarus_pipelines.state", *OUTER_WIRING, *COMMAND_LINE))]
    bad = [f"{m} imports {i}" for m in sorted(adapters) for i in sorted(imports_of(m)) if _under(i, (*OUTER_WIRING, *COMMAND_LINE))]
    assert bad == []


def test_the_dagster_wiring_never_imports_the_command_line():
    assert [f"{m} imports {i}" for m in sorted(modules()) if _under(m, OUTER_WIRING)
            for i in sorted(imports_of(m)) if _under(i, COMMAND_LINE)] == []


def test_command_programs_live_with_the_cli():
    """Arguments are parsed only in `cli.py` and `commands/`; every command `cli.COMMANDS` names is there."""
    from clarus_pipelines.cli import COMMANDS

    parsing = sorted(m for m in modules() if "argparse" in _third_party(m) and not _under(m, COMMAND_PROGRAMS))
    assert parsing == [], "command programs belong in clarus_pipelines/commands/ (split out the library part)"
    assert {name: target for name, (target, _) in COMMANDS.items() if not _under(target, ("clarus_pipelines.commands",))} == {}
    assert all(target in modules() for target, _ in COMMANDS.values())


@pytest.mark.parametrize("rule", [test_the_domain_imports_only_policies_state_and_typed_models])
def test_the_checker_sees_a_layer_reaching_up(rule, monkeypatch):
    """The checker is not vacuous: a domain module importing the receiver is caught."""
    real = imports_of.__wrapped__

    def with_a_violation(module: str) -> frozenset[str]:
        found = real(module)
        return found | {"clarus_pipelines.receiver.app"} if module == "clarus_pipelines.domain.orders" else found

    monkeypatch.setattr(__import__(__name__), "imports_of", with_a_violation)
    with pytest.raises(AssertionError, match="clarus_pipelines.domain.orders imports clarus_pipelines.receiver.app"):
        rule()


def test_the_checker_sees_argument_parsing_outside_the_command_programs(monkeypatch):
    """The command-program rule is not vacuous: a library module parsing arguments is caught."""
    real = _third_party

    def with_argparse(module: str) -> set[str]:
        return real(module) | {"argparse"} if module == "clarus_pipelines.runbook" else real(module)

    monkeypatch.setattr(__import__(__name__), "_third_party", with_argparse)
    with pytest.raises(AssertionError, match="clarus_pipelines.runbook"):
        test_command_programs_live_with_the_cli()
