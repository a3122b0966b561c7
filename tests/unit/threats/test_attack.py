"""ATT&CK validation against the shared technique file (skips when it is absent)."""

import json

import pytest
from helpers import require_shared_data

from threatflow.platform.config import Settings
from threatflow.platform.errors import ConfigError, ValidationError
from threatflow.platform.snapshots import Snapshot
from threatflow.threats import attack
from threatflow.threats.attack import AttackCatalog


@pytest.fixture(scope="module")
def catalog():
    return AttackCatalog.load(require_shared_data("attack", "attack_techniques.json"))


def test_known_technique_and_sub_technique_are_accepted(catalog):
    assert catalog.validate(["T1059", "T1059.001"]) == ["T1059", "T1059.001"]
    assert catalog.get("T1059.001").name == "PowerShell"
    assert catalog.get("T1059.001").parent_id == "T1059"


def test_ids_are_normalised_and_deduplicated(catalog):
    assert catalog.validate([" t1059.001 ", "T1059.001", "t1001"]) == ["T1059.001", "T1001"]


def test_unknown_id_is_rejected_by_name(catalog):
    with pytest.raises(ValidationError) as info:
        catalog.validate(["T1059", "T9999"])
    assert info.value.field == "ttps"
    assert "T9999: unknown ATT&CK technique" in info.value.message


def test_revoked_id_is_rejected_with_its_name(catalog):
    with pytest.raises(ValidationError, match=r"T1086: revoked ATT&CK technique \(PowerShell\)"):
        catalog.validate(["T1086"])


def test_every_problem_is_named_in_one_error(catalog):
    with pytest.raises(ValidationError) as info:
        catalog.validate(["T9999", "T1086", "bogus", "T1059"])
    message = info.value.message
    assert "T9999: unknown" in message and "T1086: revoked" in message and "'bogus': not an ATT&CK technique id" in message
    assert "T1059" not in message.replace("T1059.", "")  # the valid one is not blamed


def test_deprecated_is_accepted_and_reported(catalog):
    assert catalog.validate(["T1064"]) == ["T1064"]
    assert [t.name for t in catalog.deprecated(["T1064", "T1059"])] == ["Scripting"]


def test_sub_techniques_of_a_parent(catalog):
    subs = catalog.subtechniques("t1059")
    assert "T1059.001" in subs and all(s.startswith("T1059.") for s in subs)
    assert catalog.subtechniques("T1059.001") == []


def catalog_snapshot(environ: dict[str, str], *, blobs=None) -> Snapshot[AttackCatalog]:
    """The catalogue as a function instance holds it: ATTACK_DATA_PATH read by Settings, in a snapshot."""
    settings = Settings.from_env(environ)
    load = attack.catalog_loader(data_path=settings.attack_data_path, bucket_models=settings.bucket_models, blobs=blobs)
    return Snapshot("attack", load=load, refresh_seconds=0, retry_seconds=0)


def test_catalog_from_env_needs_the_variable():
    with pytest.raises(ConfigError, match="ATTACK_DATA_PATH is not set"):
        catalog_snapshot({}).get()


def test_catalog_from_env_names_a_missing_file(tmp_path):
    with pytest.raises(ConfigError, match="ATTACK_DATA_PATH="):
        catalog_snapshot({"ATTACK_DATA_PATH": str(tmp_path / "none.json")}).get()


def test_catalog_from_env_loads_and_caches():
    path = str(require_shared_data("attack", "attack_techniques.json"))
    snapshot = catalog_snapshot({"ATTACK_DATA_PATH": path})
    first = snapshot.get()
    assert first is snapshot.get()
    assert len(first) > 600


def test_stix_bundle_format_is_read(tmp_path):
    bundle = {
        "type": "bundle",
        "id": "bundle--1",
        "objects": [
            {
                "type": "attack-pattern",
                "id": "attack-pattern--1",
                "name": "Old Thing",
                "revoked": True,
                "external_references": [{"source_name": "mitre-attack", "external_id": "T1999"}],
            },
            {
                "type": "attack-pattern",
                "id": "attack-pattern--2",
                "name": "Sub Thing",
                "x_mitre_is_subtechnique": True,
                "kill_chain_phases": [{"kill_chain_name": "mitre-attack", "phase_name": "execution"}],
                "external_references": [{"source_name": "mitre-attack", "external_id": "T1998.001"}],
            },
        ],
    }
    path = tmp_path / "enterprise.json"
    path.write_text(json.dumps(bundle))
    catalog = AttackCatalog.load(path)
    assert catalog.validate(["T1998.001"]) == ["T1998.001"]
    assert catalog.get("T1998.001").tactics == ("execution",)
    with pytest.raises(ValidationError, match=r"T1999: revoked ATT&CK technique \(Old Thing\)"):
        catalog.validate(["T1999"])


def test_unreadable_format_is_a_config_error(tmp_path):
    path = tmp_path / "x.json"
    path.write_text('{"hello": 1}')
    with pytest.raises(ConfigError, match="expected"):
        AttackCatalog.load(path)


def test_snapshot_round_trips_every_technique():
    source = require_shared_data("attack", "attack_techniques.json")
    catalog = attack.AttackCatalog.load(source)
    body = attack.snapshot_bytes(catalog, source=str(source), generated_at="2026-11-23T00:00:00+00:00")
    again = attack.AttackCatalog.from_bytes(body, source="s")
    assert again.ids() == catalog.ids()
    assert [again.get(i) for i in again.ids()] == [catalog.get(i) for i in catalog.ids()]


def test_without_a_path_or_blob_store_the_error_says_what_to_set():
    with pytest.raises(ConfigError, match="ATTACK_DATA_PATH is not set"):
        catalog_snapshot({"BUCKET_MODELS": "m"}).get()
