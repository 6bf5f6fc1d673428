"""Import direction: detector/ imports no connector; training/ no Kafka or Redis; only ganwatch/ wires."""

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def imports_of(package: str) -> dict[str, set[str]]:
    found = {}
    for path in sorted((ROOT / package).rglob("*.py")):
        names = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                names.update(a.name.split(".")[0] for a in node.names)
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                names.add(node.module.split(".")[0])
        found[str(path.relative_to(ROOT))] = names
    return found


@pytest.mark.parametrize(
    "package, forbidden",
    [
        ("detector", {"connectors", "training", "ganwatch", "kafka", "redis", "pandas",
                      "prometheus_client", "pickle"}),
        ("connectors", {"training", "ganwatch", "torch", "pickle"}),
        ("training", {"ganwatch", "kafka", "redis", "pickle"}),
    ],
)
def test_import_direction(package, forbidden):
    offenders = {f: sorted(names & forbidden) for f, names in imports_of(package).items()
                 if names & forbidden}
    assert offenders == {}


def test_library_code_never_prints():
    for package in ("detector", "connectors", "training"):
        for path in (ROOT / package).rglob("*.py"):
            calls = [n for n in ast.walk(ast.parse(path.read_text()))
                     if isinstance(n, ast.Call) and getattr(n.func, "id", None) == "print"]
            assert not calls, f"print() in {path.relative_to(ROOT)}"
