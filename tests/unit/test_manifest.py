import ast
import copy
from pathlib import Path

import pytest
import yaml

from threatflow.platform.manifest import DEFAULT_MANIFEST, ManifestError, TriggerType, load_manifest

REPO = Path(__file__).resolve().parents[2]


def _write(tmp_path, raw):
    path = tmp_path / "topology.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


@pytest.fixture
def raw():
    return yaml.safe_load(DEFAULT_MANIFEST.read_text())


def test_real_manifest_loads():
    m = load_manifest()
    assert m.functions["auth"].trigger is TriggerType.HTTP
    assert m.functions["maintenance"].signature_type == "cloudevent"
    assert m.route_table()[0][0] == max((r for r, _ in m.route_table()), key=len)
    sub = m.subscriptions["maintenance-push"]
    assert sub.dead_letter_topic == "maintenance-dead-letter" and sub.max_delivery_attempts == 5


def test_every_function_has_a_folder_with_its_entry_point():
    m = load_manifest()
    folders = {p.name for p in (REPO / "functions").iterdir() if p.is_dir() and not p.name.startswith("_")}
    assert folders == m.folders(), "function folders and manifest disagree"
    for fn in m.functions.values():
        tree = ast.parse((REPO / "functions" / fn.folder / "main.py").read_text())
        names = {node.name for node in tree.body if isinstance(node, ast.FunctionDef)}
        assert fn.entry_point in names, f"functions/{fn.name}/main.py does not define {fn.entry_point}"
        assert (REPO / "functions" / fn.folder / "requirements.txt").exists()


def test_per_source_function_is_deployed_once_per_enabled_source():
    m = load_manifest()
    enabled = [s for s in m.sources.values() if s.enabled]
    assert len(enabled) >= 9
    for source in enabled:
        fn = m.functions[source.function]
        assert fn.folder == "enrich-source" and fn.source == source.name and fn.env["ENRICH_SOURCE"] == source.name
        sub = m.subscriptions[f"{source.function}-push"]
        assert sub.filter == f'attributes.source = "{source.name}"' and sub.push_to == source.function
        assert sub.dead_letter_topic == source.dead_letter_topic and source.dead_letter_topic in m.topics
        assert f"{source.dead_letter_topic}-hold" in m.subscriptions
    assert "enrich-source" not in m.functions
    vt = m.sources["virustotal"]
    assert (vt.quota.per_minute, vt.quota.per_day) == (4, 500)
    assert m.sources["abuseipdb"].quota.per_day == 1000
    ha = m.sources["hybrid_analysis"].quota
    assert (ha.per_minute, ha.per_hour) == (200, 2000)


def test_auto_enrich_type_must_be_supported(tmp_path, raw):
    raw["sources"]["abuseipdb"]["auto_enrich"] = ["domain"]
    with pytest.raises(ManifestError, match="auto_enrich: domain not in indicator_types"):
        load_manifest(_write(tmp_path, raw))


def test_source_secret_must_be_declared(tmp_path, raw):
    raw["sources"]["virustotal"]["secret"] = "nope-key"
    with pytest.raises(ManifestError, match="unknown secret 'nope-key'"):
        load_manifest(_write(tmp_path, raw))


def test_schema_error_names_the_path(tmp_path, raw):
    raw["functions"]["auth"]["memory"] = "lots"
    with pytest.raises(ManifestError, match=r"functions\.auth\.memory"):
        load_manifest(_write(tmp_path, raw))


def test_unknown_key_is_rejected(tmp_path, raw):
    raw["functions"]["auth"]["memroy"] = "256Mi"
    with pytest.raises(ManifestError, match="memroy"):
        load_manifest(_write(tmp_path, raw))


def test_subscription_to_unknown_topic(tmp_path, raw):
    raw["subscriptions"]["maintenance-push"]["dead_letter_topic"] = "nowhere"
    with pytest.raises(ManifestError, match="dead_letter_topic: unknown topic 'nowhere'"):
        load_manifest(_write(tmp_path, raw))


def test_push_to_http_function_is_rejected(tmp_path, raw):
    raw["subscriptions"]["maintenance-push"]["push_to"] = "auth"
    with pytest.raises(ManifestError, match="push_to: 'auth' is not triggered by topic"):
        load_manifest(_write(tmp_path, raw))


def test_duplicate_route_is_rejected(tmp_path, raw):
    raw["functions"]["admin"]["routes"].append("/api/v1/auth")
    with pytest.raises(ManifestError, match="already routed"):
        load_manifest(_write(tmp_path, raw))


def test_unknown_secret_is_rejected(tmp_path, raw):
    raw["functions"]["auth"]["secrets"] = ["nope-secret"]
    with pytest.raises(ManifestError, match="unknown secret 'nope-secret'"):
        load_manifest(_write(tmp_path, raw))


def test_dead_letter_needs_attempts(tmp_path, raw):
    bad = copy.deepcopy(raw)
    del bad["subscriptions"]["maintenance-push"]["max_delivery_attempts"]
    with pytest.raises(ManifestError, match="max_delivery_attempts"):
        load_manifest(_write(tmp_path, bad))


def test_missing_file_is_clear(tmp_path):
    with pytest.raises(ManifestError, match="not found"):
        load_manifest(tmp_path / "none.yaml")
