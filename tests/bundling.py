"""Helpers for the packaging tests: the two packaging scripts, loaded as modules, and the import rule they share."""

from __future__ import annotations

import functools
import importlib.util
import re
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO / "shared" / "threatflow"


def _script(name: str) -> ModuleType:
    path = REPO / "scripts" / f"{name}.py"
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec and spec.loader, f"cannot load {path}"
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up by name
    spec.loader.exec_module(module)
    return module


bundler = _script("bundle_functions")
generator = _script("function_requirements")


def requirement_names(path: Path) -> set[str]:
    """The distribution names a requirements file pins, lower case."""
    return {re.split(r"[=<>;\s\[]", line, maxsplit=1)[0].lower() for line in path.read_text().splitlines() if re.match(r"[A-Za-z]", line)}


def needed_imports(closure: Any, extras: tuple[str, ...]) -> dict[str, set[str]]:
    """Third-party imports a function can make at run time, each with the modules that make it.

    `threatflow.adapters.<x>` runs only in a function whose extras include `<x>` (its manifest `uses`, or
    `secrets`): an import made only there is not needed elsewhere, however many modules reach it lazily.
    """
    needed = {}
    for statement, importers in closure.external.items():
        live = {m for m in importers if not (m.startswith("threatflow.adapters.") and m.rsplit(".", 1)[1] not in extras)}
        if live:
            needed[statement] = live
    return needed


@functools.cache
def closure_of(function: str) -> Any:
    """`bundler.import_closure` of functions/<function> in this checkout, followed once per test process:
    several packaging tests read it for every function, and nothing changes the checkout under them."""
    return bundler.import_closure(REPO / "functions" / function, SHARED)
