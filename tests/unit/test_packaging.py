"""Packaging: generated requirements, what each bundle carries, and the manifest a function reads.

The slow half, installing each bundle into a clean venv, is tests/integration/test_bundle_install.py.
"""

from __future__ import annotations

import ast
import dataclasses
import functools
import importlib.metadata
import json
import re
import shutil
import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path

import pytest
import yaml
from bundling import SHARED, bundler, closure_of, generator, needed_imports, requirement_names

from threatflow.platform.manifest import DEFAULT_MANIFEST, load_manifest

REPO = Path(__file__).resolve().parents[2]


def _normalise(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


# -- requirements, generated from the manifest, pyproject.toml and the lock -------------------------


def test_requirements_files_match_the_manifest_and_the_lock():
    wanted = generator.render()
    drifted = [str(p.relative_to(REPO)) for p, text in wanted.items() if not p.is_file() or p.read_text() != text]
    assert not drifted, f"out of date (run `make requirements`, or `make lock` after editing pyproject.toml): {drifted}"
    generator.check_lock(uv=generator.uv_binary())
    functions = {p.parent.name for p in wanted if p.parent.parent == REPO / "functions"}
    # Per-source deployments (enrich-<source>) share their template's folder, so its one requirements.txt.
    folders = {fn.folder for fn in load_manifest().functions.values()}
    assert functions == folders, "one requirements.txt per manifest function folder"


def test_each_function_gets_the_extras_of_its_uses_and_secrets():
    manifest = load_manifest()
    for fn in manifest.functions.values():
        extras = generator.function_extras(uses=fn.uses, secrets=fn.secrets, extras=fn.extras)
        header = (REPO / "functions" / fn.folder / "requirements.txt").read_text().splitlines()[1]
        assert header.endswith(f"extras: {', '.join(extras)}."), header
        names = requirement_names(REPO / "functions" / fn.folder / "requirements.txt")
        assert "functions-framework" in names and "msgspec" in names
        assert ("google-cloud-secret-manager" in names) == bool(fn.secrets), f"{fn.name}: Secret Manager iff it has secrets"
        assert ("google-cloud-pubsub" in names) == ("pubsub" in fn.uses), fn.name
        for dev_only in ("pyyaml", "jsonschema", "croniter", "pytest", "uv"):
            assert dev_only not in names, f"{fn.name}: {dev_only} is dev-only and must not be deployed"


def test_every_line_is_pinned_with_hashes():
    for path in [*REPO.glob("functions/*/requirements.txt"), REPO / "requirements" / "dev.txt"]:
        requirements = [line for line in path.read_text().splitlines() if re.match(r"[A-Za-z]", line)]
        assert requirements, path
        assert all(re.match(r"[A-Za-z0-9._-]+(\[[^\]]+\])?==[^ ;]+", r) for r in requirements), f"{path}: unpinned line"
        assert path.read_text().count("--hash=sha256:") >= len(requirements), f"{path}: a pin without a hash"


def test_generator_refuses_an_extra_that_pyproject_lacks_or_that_is_dev_only(tmp_path):
    raw = yaml.safe_load(DEFAULT_MANIFEST.read_text())
    shutil.copy(REPO / "functions" / "topology.schema.json", tmp_path)
    for name in raw["functions"]:
        (tmp_path / name).mkdir()
        (tmp_path / name / "main.py").write_text("")
    raw["functions"]["auth"]["extras"] = ["auth", "nope"]
    raw["functions"]["threats"]["extras"] = ["cli"]
    (tmp_path / "topology.yaml").write_text(yaml.safe_dump(raw))
    with pytest.raises(generator.RequirementsError) as caught:
        generator.targets(tmp_path / "topology.yaml")
    assert "functions.auth: extra 'nope' is not in shared/pyproject.toml" in str(caught.value)
    assert "functions.threats.extras: 'cli' is dev-only" in str(caught.value)


def test_requirements_provide_every_import_the_function_code_makes():
    """Static: every third-party import in a function's import closure, lazy ones included, is in its requirements.

    The clean-venv test imports the entry point; this one also covers imports that run only on some request.
    """
    dists = {top: {_normalise(d) for d in names} for top, names in importlib.metadata.packages_distributions().items()}
    optional = tomllib.loads((REPO / "shared" / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    holders = {
        _normalise(re.split(r"[=<>;\s\[]", requirement, maxsplit=1)[0]): extra
        for extra, requirements in optional.items()
        if extra not in generator.DEV_ONLY_EXTRAS
        for requirement in requirements
    }
    problems = []
    for fn in load_manifest().functions.values():
        extras = generator.function_extras(uses=fn.uses, secrets=fn.secrets, extras=fn.extras)
        installed = {_normalise(n) for n in requirement_names(REPO / "functions" / fn.folder / "requirements.txt")}
        closure = closure_of(fn.folder)
        for statement, importers in sorted(needed_imports(closure, extras).items()):
            top = statement.split()[1].split(".")[0]
            candidates = dists.get(top, set())
            if top == "google":  # a namespace many distributions share: find the one that has the module
                words = statement.split()
                tried = [f"{words[1]}.{words[3]}", words[1]] if words[0] == "from" else [words[1]]
                candidates = next(
                    ({d for d in candidates if _provides(d, m)} for m in tried if any(_provides(d, m) for d in candidates)), set()
                )
            assert candidates, f"no installed distribution provides {statement!r}: is it in shared/pyproject.toml?"
            if not candidates & installed:
                extra = next((holders[d] for d in sorted(candidates) if d in holders), "a new extra")
                needs = f"needs {sorted(candidates)}: add {extra!r} to its extras"
                problems.append(f"functions.{fn.name}: `{statement}` ({', '.join(sorted(importers))}) {needs}")
    assert not problems, (
        "a function's requirements lack a package its code imports; add the extra that holds it to the function's "
        "`extras` in functions/topology.yaml and run `make requirements`:\n  " + "\n  ".join(problems)
    )


# Runtime properties that build a client, by the service (and extra) they need.
RUNTIME_CLIENTS = {
    "engine": "postgres",
    "redis": "redis",
    "rate_limiter": "redis",
    "publisher": "pubsub",
    "documents": "firestore",
    "blobs": "storage",
    "secrets": "secrets",
}


def test_code_that_asks_the_runtime_for_a_client_runs_only_in_functions_that_use_that_service():
    """`runtime.blobs` in a function's code needs `storage` in its `uses`: the client library (its requirements)
    and the IAM grant (Terraform) both follow `uses`. Read from the source: `<runtime>.<client>` attribute access."""
    problems = []
    for fn in load_manifest().functions.values():
        declared = set(generator.function_extras(uses=fn.uses, secrets=fn.secrets, extras=fn.extras))
        closure = closure_of(fn.folder)
        for module, path in sorted(closure.modules.items()):
            if module == "threatflow.runtime":
                continue  # defines the properties
            for node in ast.walk(_parsed(path)):
                if not (isinstance(node, ast.Attribute) and node.attr in RUNTIME_CLIENTS):
                    continue
                owner = node.value.id if isinstance(node.value, ast.Name) else getattr(node.value, "attr", None)
                service = RUNTIME_CLIENTS[node.attr]
                if owner == "runtime" and service not in declared:
                    where = "uses" if service != "secrets" else "secrets (or extras: [secrets])"
                    problems.append(f"functions.{fn.name}: {module}:{node.lineno} uses runtime.{node.attr}; add {service!r} to its {where}")
    assert not problems, (
        "a function's code needs a service its manifest entry lacks (functions/topology.yaml, then make requirements):\n  "
        + ("\n  ".join(sorted(set(problems))))
    )


@functools.cache
def _parsed(path: Path) -> ast.Module:
    """Each shared module once: most of them are in every function's closure."""
    return ast.parse(path.read_bytes())


@functools.cache
def _provides(dist: str, module: str) -> bool:
    files = importlib.metadata.distribution(dist).files or []
    prefix = module.replace(".", "/") + "/"
    single = module.replace(".", "/") + ".py"
    return any(str(f).startswith(prefix) or str(f) == single for f in files)


# -- what a bundle carries ---------------------------------------------------------------------------


def _digests(shared: Path) -> dict[str, str]:
    """Each function's bundle name hash, without writing the zips."""
    return {
        d.name: bundler.content_digest(bundler.bundle_entries(d, shared, manifest_path=DEFAULT_MANIFEST))
        for d in bundler.function_dirs(REPO / "functions")
    }


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    return bundler.bundle_all(out_dir=tmp_path_factory.mktemp("dist"), functions_root=REPO / "functions", shared_package=SHARED)


def test_bundles_leave_out_the_dev_stack_the_cli_migrations_and_type_markers(built):
    for bundle in built:
        with zipfile.ZipFile(bundle.path) as archive:
            names = archive.namelist()
        for left_out in ("threatflow/devstack/", "threatflow/cli/", "threatflow/db/migrate.py", "threatflow/py.typed"):
            assert not [n for n in names if n.startswith(left_out)], f"{bundle.function}: carries {left_out}"
        modules = {n.removesuffix("/__init__.py").removesuffix(".py").replace("/", ".") for n in names if n.endswith(".py")}
        closure = closure_of(bundle.function)
        assert set(closure.modules) <= modules, f"{bundle.function}: a module it imports is missing"
        assert {m for m in modules if m.startswith("threatflow")} == set(closure.modules), (
            f"{bundle.function}: carries what it never imports"
        )


def test_a_change_to_the_dev_stack_or_cli_redeploys_no_function(tmp_path):
    shared = tmp_path / "src" / "threatflow"
    shutil.copytree(SHARED, shared, ignore=shutil.ignore_patterns("__pycache__"))
    before = _digests(shared)
    for changed in ("devstack/stack.py", "cli/main.py", "db/migrate.py", "py.typed"):
        with (shared / changed).open("a") as handle:
            handle.write("\n# an edit that must not reach any function\n")
    (shared / "devstack" / "new_helper.py").write_text("X = 1\n")
    assert _digests(shared) == before, "a dev-stack or CLI change changed a bundle (and so would redeploy it)"
    # The control: a change to code every function imports does change every bundle.
    with (shared / "platform" / "errors.py").open("a") as handle:
        handle.write("\n# shared by every function\n")
    changed = _digests(shared)
    assert all(changed[name] != before[name] for name in before), "the content hash no longer follows the code"


def _demo(tmp_path: Path, main: str) -> Path:
    functions = tmp_path / "functions"
    (functions / "demo").mkdir(parents=True)
    (functions / "demo" / "main.py").write_text(main)
    (functions / "demo" / "requirements.txt").write_text("functions-framework\n")
    return functions


def test_a_function_that_imports_the_dev_stack_is_refused_with_the_chain(tmp_path):
    functions = _demo(tmp_path, "from threatflow.runtime import Runtime\n\ndef demo(request):\n    from threatflow.devstack import stack\n")
    with pytest.raises(bundler.BundleError, match=r"imports threatflow\.devstack.*main -> threatflow\.devstack"):
        bundler.bundle_all(out_dir=tmp_path / "dist", functions_root=functions, shared_package=SHARED)


def test_imports_under_type_checking_and_relative_imports_are_read_as_python_does(tmp_path):
    functions = _demo(
        tmp_path,
        "from typing import TYPE_CHECKING\n"
        "from threatflow.platform import events\n"
        "if TYPE_CHECKING:\n    from threatflow.devstack import stack\n    import yaml\n"
        "else:\n    import threatflow.platform.ports\n"
        "def demo(request):\n    from threatflow.auth import tokens\n    return tokens\n",
    )
    closure = bundler.import_closure(functions / "demo", SHARED)
    wanted = {"threatflow", "threatflow.platform", "threatflow.platform.events", "threatflow.platform.ports", "threatflow.auth.tokens"}
    assert wanted <= set(closure.modules)
    assert not [m for m in closure.modules if "devstack" in m]
    assert "import yaml" not in closure.external
    assert "import jwt" in closure.external, "a lazy import inside a function is still followed"
    # `from . import x` inside the package resolves against the importing module's package
    assert "threatflow.platform.errors" in closure.modules


# -- the manifest inside a function: JSON, read with the standard library ---------------------------


def test_the_json_rendering_loads_to_the_same_manifest(tmp_path):
    rendered = tmp_path / "topology.json"
    rendered.write_bytes(bundler.render_manifest(DEFAULT_MANIFEST))
    from_yaml, from_json = load_manifest(DEFAULT_MANIFEST), load_manifest(rendered)
    assert dataclasses.replace(from_json, path=from_yaml.path) == from_yaml


BLOCK_AND_LOAD = """
import json, sys
sys.path.insert(0, sys.argv[1])
from threatflow.platform.manifest import load_manifest
m = load_manifest()
blocked = [name for name in ("yaml", "jsonschema") if name in sys.modules]
print(json.dumps({"path": str(m.path), "functions": sorted(m.functions), "sources": m.raw["sources"], "loaded": blocked}))
"""


def test_a_bundle_that_reads_the_manifest_carries_it_as_json_and_loads_it_without_pyyaml(tmp_path):
    functions = _demo(
        tmp_path, "from threatflow.platform.manifest import load_manifest\n\ndef demo(request):\n    return load_manifest()\n"
    )
    shutil.copy(DEFAULT_MANIFEST, functions / "topology.yaml")
    shutil.copy(REPO / "functions" / "topology.schema.json", functions / "topology.schema.json")
    (bundle,) = bundler.bundle_all(out_dir=tmp_path / "dist", functions_root=functions, shared_package=SHARED)
    extracted = tmp_path / "bundle"
    with zipfile.ZipFile(bundle.path) as archive:
        assert "threatflow/platform/topology.json" in archive.namelist()
        archive.extractall(extracted)
    # -S -I: no site-packages at all, so neither PyYAML nor jsonschema can be imported: as in a function
    run = subprocess.run([sys.executable, "-S", "-I", "-c", BLOCK_AND_LOAD, str(extracted)], capture_output=True, text=True, check=False)
    assert run.returncode == 0, run.stderr
    loaded = json.loads(run.stdout)
    assert loaded["path"] == str(extracted / "threatflow" / "platform" / "topology.json")
    assert loaded["functions"] == sorted(load_manifest().functions)
    assert loaded["sources"] == load_manifest().raw["sources"]
    assert loaded["loaded"] == []


def test_bundles_without_the_manifest_module_do_not_carry_the_manifest(built):
    for bundle in built:
        closure = closure_of(bundle.function)
        with zipfile.ZipFile(bundle.path) as archive:
            carries = "threatflow/platform/topology.json" in archive.namelist()
        assert carries == ("threatflow.platform.manifest" in closure.modules), bundle.function
