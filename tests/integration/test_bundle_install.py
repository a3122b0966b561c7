"""Each function's bundle, installed as Cloud Functions installs it, loads its entry point.

For every distinct requirements.txt (functions with the same extras share one), a
venv holds exactly the locked pins of that file (`uv pip sync --require-hashes`:
it installs what is missing, removes anything else, and refuses a file that misses
a transitive dependency); no threatflow is installed there, only the bundle is put
on the path. Then, for each function of that set, functions-framework's own loader
(`create_app`, what the runtime calls) loads `main.py` with the cloud settings, and
every third-party import the function's code can make (lazy ones included;
`threatflow.adapters.<x>` only for the extras it has) is looked up in that venv
(found without being run; see IMPORTS). A package missing from a function's
requirements, such as Secret Manager for a function with secrets, fails here, not
in the cloud.

Cost: the venvs live in `.venv-bundles/<hash of the file>` and are synced, not
rebuilt, on the next run, so their bytecode is compiled once; uv's download cache
(~/.cache/uv) is kept too. `make clean` removes them."""

from __future__ import annotations

import hashlib
import json
import os
import secrets
import subprocess
import sys
import zipfile
from collections import defaultdict
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
from bundling import SHARED, bundler, closure_of, generator, needed_imports

from threatflow.platform.manifest import Function, load_manifest

REPO = Path(__file__).resolve().parents[2]
VENVS = REPO / ".venv-bundles"
MANIFEST = load_manifest()

# Loads the entry point as the runtime does, from the bundle alone, with the cloud settings.
LOAD = """
import json, sys
bundle, target, signature = sys.argv[1:4]
sys.path.insert(0, bundle)
error = None
try:
    from functions_framework import create_app
    create_app(target, bundle + "/main.py", signature)
except BaseException as exc:  # reported; the test fails on it
    error = f"{type(exc).__name__}: {exc}"
print(json.dumps({"error": error, "threatflow": getattr(sys.modules.get("threatflow"), "__file__", None)}))
"""

# Finds what each import statement (third-party only: no bundle needed) would load, and reports those that
# would fail. `importlib.util.find_spec` locates a module without running it (only its parent packages run),
# so a check of every lazy import costs little; the modules the entry point imports at load time have
# really run in LOAD, and `uv pip install --require-hashes` has already refused a set with a missing dependency.
IMPORTS = """
import json, sys
from importlib.util import find_spec

def findable(name):
    try:
        return find_spec(name)
    except ImportError:  # a parent package is missing
        return None

missing = {}
for statement in json.loads(sys.argv[1]):
    words = statement.split()
    if words[0] == "import":
        found = findable(words[1]) is not None
    else:  # from MODULE import NAME: NAME is a submodule, or an attribute of a regular (not namespace) module
        module = findable(words[1])
        found = findable(words[1] + "." + words[3]) is not None or (module is not None and module.origin not in (None, "namespace"))
    if not found:
        missing[statement] = "not installed"
print(json.dumps(missing))
"""
# Two at a time: the test command shares two cores with the rest of the suite.
WORKERS = 2


def _uv() -> str:
    return generator.uv_binary()


def _cloud_env(fn: Function) -> dict[str, str]:
    """What Terraform gives the function (terraform/locals.tf), with made-up values; nothing is contacted."""
    env = {
        "PATH": "/usr/bin:/bin",
        "HOME": os.environ.get("HOME", "/tmp"),
        "THREATFLOW_ENV": "cloud",
        "GOOGLE_CLOUD_PROJECT": "bundle-test",
        "CLOUD_SQL_INSTANCE": "bundle-test:europe-west1:pg",
        "DB_NAME": "threatflow",
        "DB_USER": "threatflow",
        "REDIS_URL": "rediss://10.0.0.3:6378/0",
        "THREATFLOW_USES": ",".join(fn.uses),
        "ENRICH_SOURCES_JSON": json.dumps(MANIFEST.raw["sources"]),
        **fn.env,  # a per-source deployment's ENRICH_SOURCE
    }
    for name in fn.secrets:
        env[MANIFEST.secrets[name].env] = secrets.token_hex(32)
    return env


@pytest.fixture(scope="module")
def bundles(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Every function's bundle, built as Cloud Build builds it and unpacked as the runtime unpacks it."""
    out = tmp_path_factory.mktemp("dist")
    built = bundler.bundle_all(out_dir=out, functions_root=REPO / "functions", shared_package=SHARED)
    unpacked = {}
    for bundle in built:
        target = out / "src" / bundle.function
        with zipfile.ZipFile(bundle.path) as archive:
            archive.extractall(target)
        unpacked[bundle.function] = target
    return unpacked


def _synced_venv(path: Path, requirements: Path) -> Path:
    """A venv at `path` with exactly the pins of `requirements`, nothing more."""
    python = path / "bin" / "python"
    if not python.exists():
        subprocess.run([_uv(), "venv", "--quiet", "--python", sys.executable, str(path)], check=True, capture_output=True)
    sync = subprocess.run(
        [_uv(), "pip", "sync", "--quiet", "--python", str(python), "--require-hashes", str(requirements)],
        capture_output=True,
        text=True,
        check=False,
        env={**os.environ, "UV_NO_PROGRESS": "1"},
    )
    assert sync.returncode == 0, f"{requirements}: the locked pins do not install:\n{sync.stderr[-3000:]}"
    return python


def _kept_venv(requirements: Path) -> Path:
    key = hashlib.sha256(f"{sys.version}\0{requirements.read_text()}".encode()).hexdigest()[:16]
    return _synced_venv(VENVS / key, requirements)


def _run(python: Path, args: list[str], env: dict[str, str]) -> Any:
    run = subprocess.run([str(python), "-I", "-c", *args], capture_output=True, text=True, check=False, env=env, timeout=300)
    assert run.returncode == 0, f"probe crashed:\n{run.stderr[-3000:]}"
    return json.loads(run.stdout.splitlines()[-1])


def _load(python: Path, bundle: Path, fn: Function) -> dict[str, Any]:
    return _run(python, [LOAD, str(bundle), fn.entry_point, fn.signature_type], _cloud_env(fn))


def _failed_imports(python: Path, statements: list[str]) -> dict[str, str]:
    return _run(python, [IMPORTS, json.dumps(sorted(statements))], {"PATH": "/usr/bin:/bin"})


def _statements(fn: Function) -> list[str]:
    closure = closure_of(fn.folder)
    extras = generator.function_extras(uses=fn.uses, secrets=fn.secrets, extras=fn.extras)
    return sorted(needed_imports(closure, extras))


def test_every_bundle_loads_in_a_venv_with_only_its_locked_requirements(bundles):
    by_requirements: dict[str, list[Function]] = defaultdict(list)
    for fn in MANIFEST.functions.values():
        by_requirements[(REPO / "functions" / fn.folder / "requirements.txt").read_text()].append(fn)
    venvs = [
        (_kept_venv(REPO / "functions" / functions[0].folder / "requirements.txt"), functions) for functions in by_requirements.values()
    ]
    with ThreadPoolExecutor(max_workers=WORKERS) as pool:
        loads = {fn.name: pool.submit(_load, python, bundles[fn.folder], fn) for python, functions in venvs for fn in functions}
        # One import check per venv, for every statement any of its functions needs.
        wanted = [{fn.name: _statements(fn) for fn in functions} for _, functions in venvs]
        imports = [
            pool.submit(_failed_imports, python, sorted({s for ss in w.values() for s in ss}))
            for (python, _), w in zip(venvs, wanted, strict=True)
        ]
        problems = []
        for w, future in zip(wanted, imports, strict=True):
            failed = future.result()
            problems += [f"{name}: `{s}`: {failed[s]}" for name, statements in w.items() for s in statements if s in failed]
        for name, future in loads.items():
            result = future.result()
            if result["error"]:
                problems.append(f"{name}: functions-framework cannot load {MANIFEST.functions[name].entry_point}: {result['error']}")
            assert result["threatflow"] and result["threatflow"].startswith(str(bundles[MANIFEST.functions[name].folder])), (
                f"{name}: threatflow was imported from {result['threatflow']}, not from the bundle"
            )
    assert not problems, "a bundle does not work with its own requirements.txt:\n  " + "\n  ".join(problems)


def test_a_requirements_file_without_secret_manager_is_caught(tmp_path):
    """The fault this test exists for: a function with secrets whose requirements lack Secret Manager."""
    fn = MANIFEST.functions["auth"]
    assert fn.secrets, "auth reads secrets; pick another function with secrets for this check"
    lines = (REPO / "functions" / "auth" / "requirements.txt").read_text().split("\n")
    start = next(i for i, line in enumerate(lines) if line.startswith("google-cloud-secret-manager=="))
    end = next(i for i in range(start + 1, len(lines)) if lines[i] and not lines[i].startswith(" "))
    without = tmp_path / "requirements.txt"
    without.write_text("\n".join(lines[:start] + lines[end:]))
    python = _synced_venv(tmp_path / "venv", without)
    statement = "from google.cloud import secretmanager"
    assert statement in _statements(fn), "the check above would not look for Secret Manager in auth"
    missing = _failed_imports(python, [statement, "import functions_framework"])
    assert list(missing) == [statement], missing
