"""The layers of the shared package hold: the import-linter contracts in
pyproject.toml ([tool.importlinter]) pass, and each function's main.py imports
only the wiring, the platform and routes or handlers.

`make lint` runs the same contracts (`lint-imports pyproject.toml`)."""

import ast
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
# What an entry point may import from the shared package: decode, call one handler, map errors.
ENTRY_POINT_MODULES = ("threatflow.runtime", "threatflow.platform")
ROUTE_MODULE_NAMES = ("api", "handlers")


def _lint_imports() -> str:
    found = Path(sys.executable).with_name("lint-imports")
    if found.exists():
        return str(found)
    on_path = shutil.which("lint-imports")
    if on_path is None:
        pytest.fail("lint-imports is not installed: it is in the dev extra of shared/pyproject.toml (make venv)")
    return on_path


def test_import_contracts_hold():
    out = subprocess.run(
        [_lint_imports(), "--no-cache", "pyproject.toml"], cwd=REPO, capture_output=True, text=True, timeout=240, check=False
    )
    assert out.returncode == 0, out.stdout + out.stderr
    assert "BROKEN" not in out.stdout, out.stdout


def test_contracts_cover_the_packages_to_come():
    config = (REPO / "pyproject.toml").read_text()
    for package in ("threatflow.enrichment", "threatflow.flows", "threatflow.hunting", "threatflow.reports"):
        assert f"({package})" in config, f"{package} is not an optional layer in [tool.importlinter]"


def _threatflow_imports(path: Path) -> list[str]:
    names = []
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("threatflow"):
            names.extend(f"{node.module}.{alias.name}" for alias in node.names)
        elif isinstance(node, ast.Import):
            names.extend(alias.name for alias in node.names if alias.name.startswith("threatflow"))
    return names


def _allowed_in_entry_point(name: str) -> bool:
    if any(name == m or name.startswith(m + ".") for m in ENTRY_POINT_MODULES):
        return True
    parts = name.split(".")
    # threatflow.<package>.<api|handlers>[.<symbol>]
    return len(parts) >= 3 and parts[2] in ROUTE_MODULE_NAMES


@pytest.mark.parametrize("main", sorted((REPO / "functions").glob("*/main.py")), ids=lambda p: p.parent.name)
def test_entry_points_import_only_wiring_and_routes(main):
    imports = _threatflow_imports(main)
    assert imports, f"{main} imports nothing from threatflow"
    wrong = [name for name in imports if not _allowed_in_entry_point(name)]
    assert not wrong, f"{main.relative_to(REPO)} reaches below the routes and handlers: {wrong}"
