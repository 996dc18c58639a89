"""The import order is the flow: a lower layer never imports a higher one (docs/architecture.md).

Every `import medsec.x` / `from medsec.x import ...` in the package counts, the lazy ones inside functions
too. The check itself is shown to catch a deliberately bad import."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1] / "medsec"

# layer of each top-level part of the package, in the order of the flow; metrics is a leaf every layer may
# import, and it imports nothing but the foundation
LAYERS: dict[str, int] = {
    "errors": 0, "paths": 0, "config": 0, "provenance": 0, "configs": 0, "__init__": 0,
    "metrics": 1, "data": 2, "models": 3, "defences": 4, "attacks": 5, "integrity": 6, "studies": 7,
    "report": 8, "cli": 9, "__main__": 10,
}

# Defences train against attacks (adversarial training: Ensemble, GMM's SSAT): they may use the attack engine,
# which imports nothing from the defences (the defence-aware pieces live in attacks/adaptive, above them).
ENGINE = ("medsec.attacks.engine", "medsec.attacks.core", "medsec.attacks.losses")


def layer_of(module: str) -> int:
    """The layer of a dotted module name inside medsec."""
    parts = module.split(".")
    if parts[0] != "medsec":
        raise ValueError(module)
    return LAYERS[parts[1]] if len(parts) > 1 else 0


def imported_medsec_modules(source: str) -> list[str]:
    """Every medsec module a source file imports (top level and inside functions)."""
    out = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            out += [a.name for a in node.names if a.name.split(".")[0] == "medsec"]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0 \
                and node.module.split(".")[0] == "medsec":
            out.append(node.module)
    return out


def violations(sources: dict[str, str]) -> list[str]:
    """'importer -> imported' for each import of a higher layer (and of anything above the foundation by
    metrics)."""
    bad = []
    for module, source in sources.items():
        own = layer_of(module)
        for target in imported_medsec_modules(source):
            if target == "medsec":
                continue
            t = layer_of(target)
            if own == LAYERS["defences"] and target in ENGINE:
                continue
            if t > own or (own == LAYERS["metrics"] and t not in (0, own)):
                bad.append(f"{module} -> {target}")
    return bad


def package_sources() -> dict[str, str]:
    """medsec's modules by dotted name."""
    out = {}
    for p in ROOT.rglob("*.py"):
        rel = p.relative_to(ROOT.parent).with_suffix("")
        name = ".".join(rel.parts)
        out[name[: -len(".__init__")] if name.endswith(".__init__") else name] = p.read_text(encoding="utf-8")
    return out


def test_the_package_imports_in_the_order_of_the_flow():
    sources = package_sources()
    assert len(sources) > 80
    assert violations(sources) == []


@pytest.mark.parametrize(("module", "source"), [
    ("medsec.models.victims", "from medsec.studies.grid import Cell\n"),  # a lower layer reaching up
    ("medsec.defences.base", "def f():\n    from medsec.report.figures import heatmap\n"),  # lazily, too
    ("medsec.metrics.system", "import medsec.models.inference\n"),  # the leaf importing a layer
])
def test_a_deliberately_bad_import_is_caught(module, source):
    assert violations({module: source}) == [f"{module} -> {imported_medsec_modules(source)[0]}"]


def test_allowed_imports_pass():
    assert violations({"medsec.studies.levy": "from medsec.metrics import percent\nfrom medsec.attacks import PGD\n",
                       "medsec.metrics.tasks": "from medsec.errors import MedsecError\n",
                       "medsec.defences.ensemble": "from medsec.attacks.engine import FGSM\n"}) == []
    assert violations({"medsec.defences.ensemble": "from medsec.attacks.adaptive import recipe_for\n"}) != []


def test_only_the_cli_imports_typer():
    users = [m for m, src in package_sources().items()
             if any(n.split(".")[0] == "typer" for n in _imports(src)) and not m.startswith("medsec.cli")]
    assert users == []


def _imports(source: str) -> list[str]:
    out = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            out += [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module:
            out.append(node.module)
    return out


def test_study_and_report_functions_are_short():
    """No function in studies/ or report/ is longer than 60 lines."""
    long = []
    for part in ("studies", "report"):
        for p in (ROOT / part).glob("*.py"):
            for node in ast.walk(ast.parse(p.read_text(encoding="utf-8"))):
                if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                    n = (node.end_lineno or node.lineno) - node.lineno + 1
                    if n > 60:
                        long.append(f"{p.name}:{node.name} ({n} lines)")
    assert long == []
