"""`make bench` runs every tests/perf/bench_*.py without arguments and stops at the first that fails
(README, "Checks"), so none of them may require an argument: argparse would exit 2 before measuring
anything, and every script after it in the loop would never run."""

import ast
import re
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
BENCHES = sorted((REPO / "tests" / "perf").glob("bench_*.py"))


def test_make_bench_runs_each_bench_script_without_arguments():
    makefile = (REPO / "Makefile").read_text()
    recipe = re.search(r"^bench:.*\n((?:\t.*\n)+)", makefile, re.MULTILINE)
    assert recipe is not None, "Makefile has no bench target"
    assert "for script in tests/perf/bench_*.py" in recipe.group(1), recipe.group(1)
    assert "$(BIN)/python $$script ||" in recipe.group(1), recipe.group(1)
    assert len(BENCHES) > 10


def _required_arguments(path: Path) -> list[str]:
    required = []
    for node in ast.walk(ast.parse(path.read_text())):
        if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "add_argument"):
            continue
        names = [a.value for a in node.args if isinstance(a, ast.Constant) and isinstance(a.value, str)]
        keywords = {k.arg: k.value for k in node.keywords}
        nargs = keywords.get("nargs")
        optional_positional = isinstance(nargs, ast.Constant) and nargs.value in ("?", "*")
        if names and not names[0].startswith("-") and not optional_positional:
            required.append(names[0])
        flag = keywords.get("required")
        if isinstance(flag, ast.Constant) and flag.value is True:
            required.append(names[0] if names else "?")
    return required


@pytest.mark.parametrize("script", BENCHES, ids=lambda p: p.name)
def test_no_bench_script_requires_an_argument(script):
    assert _required_arguments(script) == [], f"{script.name} cannot run under `make bench`"


def test_the_check_sees_a_required_positional_and_a_required_option(tmp_path):
    sample = tmp_path / "bench_sample.py"
    sample.write_text(
        "p.add_argument('trees', nargs='+')\np.add_argument('--out', required=True)\n"
        "p.add_argument('maybe', nargs='?')\np.add_argument('--rows', type=int)\n"
    )
    assert _required_arguments(sample) == ["trees", "--out"]


@pytest.mark.parametrize("path", BENCHES, ids=[p.name for p in BENCHES])
def test_every_bench_script_parses_its_arguments(path):
    """`bench_import.py --help` and `bench_stix_expansion.py --help` started the benchmark (minutes of work, a
    PostgreSQL started) instead of printing how to run it: they read no arguments."""
    assert "ArgumentParser(" in path.read_text(), f"{path.name} reads no arguments: --help would run it"
