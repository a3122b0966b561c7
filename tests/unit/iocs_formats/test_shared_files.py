"""Every shared STIX bundle/object and MISP file parses, yielding the kinds of objects it holds."""

import json

import pytest
from helpers import SHARED_DATA, require_shared_data

from threatflow.intel.formats import parse

STIX_FILES = sorted((SHARED_DATA / "stix").rglob("*.json")) if (SHARED_DATA / "stix").exists() else []
MISP_FILES = sorted((SHARED_DATA / "misp").iterdir()) if (SHARED_DATA / "misp").exists() else []
THREAT_TYPES = {"malware", "threat-actor", "intrusion-set", "campaign", "tool"}
IOC_TYPES = {"ipv4-addr", "ipv6-addr", "domain-name", "url", "email-addr", "directory", "observed-data"}


def _objects(path):
    doc = json.loads(path.read_text())
    return doc["objects"] if doc.get("type") == "bundle" else [doc]


@pytest.mark.parametrize("path", STIX_FILES, ids=lambda p: str(p.relative_to(SHARED_DATA)))
def test_every_shared_stix_file_parses(path):
    require_shared_data("stix")
    parsed = parse("stix", path.read_bytes())
    objects = _objects(path)
    threats = {o["id"] for o in objects if o["type"] in THREAT_TYPES}
    assert {t.ref for t in parsed.threats} == threats
    indicators = [o for o in objects if o["type"] == "indicator"]
    ioc_refs = {p.ref for p in parsed.iocs}
    for o in indicators:  # every indicator is an IoC or a named error
        assert o["id"] in ioc_refs or o["id"] in {e.ref for e in parsed.errors}
    if any(o["type"] in IOC_TYPES for o in objects):
        assert parsed.iocs


def test_parsing_all_shared_stix_files_was_not_vacuous():
    require_shared_data("stix")
    assert len(STIX_FILES) >= 39


def test_apt1_bundle_by_hand():
    path = require_shared_data("stix", "oasis-examples", "threat-reports", "apt1.json")
    parsed = parse("stix", path.read_bytes())
    by_kind = {}
    for t in parsed.threats:
        by_kind.setdefault(str(t.item.kind), set()).add(t.item.name)
    assert by_kind["intrusion-set"] == {"APT1"}
    assert by_kind["threat-actor"] == {"Ugly Gorilla", "DOTA", "SuperHard", "Communist Party of China", "Unit 61398"}
    assert len(by_kind["malware"]) == 6 and len(by_kind["tool"]) == 10
    apt1 = next(t.item for t in parsed.threats if t.item.name == "APT1")
    assert apt1.aliases == ["Comment Crew", "Comment Group", "Shady Rat"]
    assert {(p.item.type, p.item.value) for p in parsed.iocs} >= {
        (None, "223.166.0.0/15"),
        ("domain", "hugesoft.org"),
        ("md5", "001dd76872d80801692ff942308c64e6"),
    }
    assert len(parsed.iocs) == 10  # 4 CIDRs, 3 domains, 3 MD5s; the 2 certificate patterns are named errors
    assert len(parsed.errors) == 2 and all("x509-certificate" in e.reason for e in parsed.errors)
    assert len(parsed.links) == 7


def test_attack_pattern_uses_become_ttps():
    path = require_shared_data("stix", "attack-objects")
    pattern = json.loads(next(path.glob("attack-pattern--0a3ead4e*")).read_text())["objects"][0]
    malware = json.loads(next(path.glob("malware--b42378e0*")).read_text())["objects"][0]
    uses = {
        "type": "relationship",
        "id": "relationship--0d4a7788-7f3b-4df8-a498-31a38003c883",
        "relationship_type": "uses",
        "source_ref": malware["id"],
        "target_ref": pattern["id"],
    }
    parsed = parse("stix", {"type": "bundle", "id": "bundle--0f4a3025-7788-4f25-a0c7-26171056dfae", "objects": [pattern, malware, uses]})
    (threat,) = parsed.threats
    assert threat.item.name == "PoisonIvy" and threat.item.ttps == ["T1003"]


@pytest.mark.parametrize("path", MISP_FILES, ids=lambda p: p.name)
def test_every_shared_misp_file_parses(path):
    require_shared_data("misp")
    parsed = parse("misp", path.read_bytes())
    if path.suffix == ".csv":
        assert len(parsed.iocs) == 9 and not parsed.errors
        return
    doc = json.loads(path.read_text())
    event = doc.get("Event", doc)
    values = {a["value"] for a in event.get("Attribute", [])} | {
        a["value"] for o in event.get("Object", []) for a in o.get("Attribute", [])
    }
    for ioc in parsed.iocs:  # every IoC comes from an attribute (composites keep one half)
        assert any(ioc.item.value in v for v in values)
    galaxies = {g["type"] for g in event.get("Galaxy", [])}
    if galaxies & {"threat-actor", "mitre-malware", "tool", "mitre-intrusion-set", "banker"}:
        assert parsed.threats and parsed.links


def test_misp_existing_event_by_hand():
    path = require_shared_data("misp", "mispevent_testfiles__existing_event.json")
    parsed = parse("misp", path.read_bytes())
    # 9 attributes + 113 object attributes: 37 sha1, 19 domains, 12 ip-dst are IoCs; text, link and bare filenames are not.
    assert len(parsed.iocs) == 68
    assert parsed.skipped == {"text": 38, "link": 1, "filename": 15}
    assert {str(t.item.kind) for t in parsed.threats} == {"threat-actor", "tool", "malware"}
    sofacy = next(t.item for t in parsed.threats if t.item.name == "Sofacy")
    assert "APT28" in sofacy.aliases and "Fancy Bear" in sofacy.aliases
    assert all(p.item.source == "misp:CIRCL" and "misp-event:5a3c2fcd-8328-42bb-a95e-4f4402de0b81" in p.item.tags for p in parsed.iocs)
    assert {p.item.tlp for p in parsed.iocs} == {"tlp:white"}


# -- abuse.ch's own CSV feeds, as they are downloaded --------------------------------------------------------


def _abusech(name):
    return require_shared_data("feeds", "abusech", name).read_bytes()


def test_feodo_tracker_csv_imports_its_c2_addresses():
    """Feodo's blocklist opens with a '#' comment block, then a header naming the address `dst_ip`: the import
    took the first comment line for the header and refused the file ("no value column ... Header was: ####")."""
    text = _abusech("feodo_ipblocklist.csv").decode()
    rows = [line for line in text.splitlines() if line.startswith('"') and not line.startswith('"first_seen_utc"')]
    parsed = parse("csv", text)
    assert not parsed.errors
    assert [p.item.value for p in parsed.iocs] == [row.split(",")[1].strip('"') for row in rows]
    assert parsed.iocs[0].ref == "row 10"  # a row's number is its line in the file, comment block included


def test_threatfox_host_list_imports_its_addresses_not_its_url_column():
    """Its header is `Address,url`, and every `url` cell says " IOC FOUND": that column was read as the
    indicators (every one rejected later) because `address` was not a name for the value."""
    lines = _abusech("threatfox_derived_hostlist_JayP232.csv").decode().splitlines()
    parsed = parse("csv", "\n".join(lines))
    values = [p.item.value for p in parsed.iocs]
    assert values[:2] == ["jghskd9kfx7.brazilsouth.cloudapp.azure.com", "tpowe2.com"]
    entries = [line for line in lines[1:] if line.strip() and not line.startswith("#")]  # it ends "# Number of entries: 24961"
    assert len(values) == len(entries) == 24_961 and "IOC FOUND" not in " ".join(values) and not parsed.errors


def test_urlhaus_dump_still_imports_every_url():
    parsed = parse("csv", _abusech("urlhaus_dump_2025-04-21.csv"))
    assert len(parsed.iocs) == 11_125 and not parsed.errors


@pytest.mark.parametrize("name", ["feodo_ipblocklist_recommended.json", "threatfox_recent_defanged_ashiroodi.json"])
def test_abusech_json_feeds_import_every_record(name):
    """Both imported nothing: every record was rejected for its feed's field names (ip_address, ioc)."""
    doc = json.loads(_abusech(name))
    records = doc["iocs"] if isinstance(doc, dict) else doc
    parsed = parse("json", _abusech(name))
    assert len(parsed.iocs) == len(records) and not parsed.errors
