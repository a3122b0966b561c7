"""`threatflow iocs import` (and `threatflow enrich --file`) name the format from the file: every MISP event the
MISP parser reads, bare ones included, is sent as misp; the JSON import's own shapes stay json."""

import json
from pathlib import Path

import pytest
from helpers import SHARED_DATA, require_shared_data

from threatflow.cli.iocs import detect_format
from threatflow.intel.formats import parse
from threatflow.platform.errors import ValidationError

MISP_JSON = sorted((SHARED_DATA / "misp").glob("*.json")) if (SHARED_DATA / "misp").exists() else []


@pytest.mark.parametrize("path", MISP_JSON, ids=lambda p: p.name)
def test_every_shared_misp_event_is_detected_as_misp(path):
    """misp_event.json and three more are bare events ({"Attribute": [...], "Org": ...}, no "Event" wrapper): the parser
    reads them, but the CLI sent them as json, and the import answered 'expected {"iocs": [...]}'."""
    require_shared_data("misp")
    text = path.read_text()
    parse("misp", json.loads(text))  # the parser takes it as a MISP event
    assert detect_format(path, text) == "misp"


def test_bare_events_were_among_the_shared_files():
    require_shared_data("misp")
    assert sum("Event" not in json.loads(p.read_text()) for p in MISP_JSON) >= 4


@pytest.mark.parametrize(
    ("doc", "expected"),
    [
        ({"iocs": [{"value": "198.51.100.7"}]}, "json"),
        ([{"value": "198.51.100.7", "type": "ipv4"}], "json"),
        ({"type": "bundle", "objects": []}, "stix"),
        ({"Event": {"info": "x", "Attribute": []}}, "misp"),
        ({"response": [{"Event": {"info": "x"}}]}, "misp"),
        ({"info": "a bare event", "Attribute": [{"type": "ip-dst", "value": "198.51.100.7"}]}, "misp"),
        ({"Object": [{"name": "file", "Attribute": []}]}, "misp"),
    ],
)
def test_json_shapes(doc, expected):
    assert detect_format(Path("x.json"), json.dumps(doc)) == expected


STIX1 = """<?xml version="1.0" encoding="UTF-8"?>
<stix:STIX_Package xmlns:stix="http://stix.mitre.org/stix-1" xmlns:cybox="http://cybox.mitre.org/cybox-2"
    xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance" id="example:Package-1" version="1.2">
  <stix:Indicators><stix:Indicator><indicator:Title>C2</indicator:Title>
    <AddressObj:Address_Value condition="Equals">198.51.100.9</AddressObj:Address_Value>
  </stix:Indicator></stix:Indicators>
</stix:STIX_Package>
"""


def test_a_stix_1_package_is_refused_by_name():
    """STIX 1.x is XML and ThreatFlow reads STIX 2.x JSON only. The CLI sent a .xml package as a text report, so its
    namespace URLs (stix.mitre.org, cybox.mitre.org, www.w3.org) were stored as URL indicators; as format stix the
    API said only "not valid JSON"."""
    with pytest.raises(ValidationError, match="STIX 1"):
        detect_format(Path("package.xml"), STIX1)
    with pytest.raises(ValidationError, match="STIX 1"):
        parse("stix", STIX1)


def test_a_document_that_only_names_stix_package_is_not_refused():
    """The STIX 1.x check looked for the text "STIX_Package" anywhere in the first 64 KiB, so a report about STIX 1
    conversions, a CSV feed whose comment names it or a STIX 2 bundle whose description quotes it was refused as "a
    STIX 1.x package" and could not be imported at all. Only an XML document is a STIX 1 package."""
    report = "Converting a STIX_Package with the elevator lost the C2 at http://c2.example.org/gate.php\n"
    assert detect_format(Path("notes.txt"), report) == "text"
    bundle = {
        "type": "bundle",
        "id": "bundle--00000000-0000-4000-8000-000000000001",
        "objects": [{"type": "report", "id": "report--00000000-0000-4000-8000-000000000002", "description": "from a STIX_Package"}],
    }
    assert detect_format(Path("elevated.json"), json.dumps(bundle)) == "stix"
    with pytest.raises(ValidationError, match="STIX 1"):
        detect_format(Path("package.txt"), "\ufeff\n" + STIX1)  # the package itself still, whatever its name


SINGLE_OBJECT_FILES = (
    ("stix", "oasis-examples", "interop-objectmarking-test.json"),
    ("stix", "attack-objects", "malware_malware--6b616fc1-1505-48e3-8b2c-0d19337bff38.json"),
    ("stix", "attack-objects", "directory_directory--572827aa-e0cd-44fd-afd5-a717a7585f39.json"),
)


@pytest.mark.parametrize("parts", SINGLE_OBJECT_FILES, ids=lambda p: p[-1][:40])
def test_a_single_stix_object_is_detected_as_stix(parts):
    """The STIX import reads a bare object (no bundle), but the CLI sent such a file as json, and the import answered
    'json: expected {"iocs": [...]} or a list of IoC objects' (6 of ../shared/data/stix's files)."""
    path = require_shared_data(*parts)
    text = path.read_text()
    parse("stix", json.loads(text))  # the STIX parser takes it
    assert detect_format(path, text) == "stix"


@pytest.mark.parametrize(
    ("doc", "expected"),
    [
        ({"type": "indicator", "spec_version": "2.1", "id": "indicator--8e2e2d2b-17d4-4cbf-938f-98ee46b3cd3f"}, "stix"),
        ({"type": "ipv4-addr", "id": "ipv4-addr--ff26c055-6336-5bc5-b98d-13d6226742dd", "value": "198.51.100.3"}, "stix"),
        ({"type": "ipv4", "value": "198.51.100.7"}, "json"),  # an IoC of the JSON import: no STIX id
        ({"type": "ipv4", "id": 7, "value": "198.51.100.7"}, "json"),
    ],
)
def test_a_stix_object_is_told_from_a_json_ioc(doc, expected):
    assert detect_format(Path("x.json"), json.dumps(doc)) == expected


def test_json_lines_are_sent_as_a_text_feed():
    """Spamhaus publishes DROP as drop_v4.json, one JSON object a line (JSON Lines): `iocs import drop_v4.json` failed
    with "not valid JSON; name the format with --format", and with --format text its metadata line's terms URL was
    stored beside the networks."""
    text = '{"cidr":"1.10.16.0/20","sblid":"SBL256894","rir":"apnic"}\n{"type":"metadata","terms":"https://www.spamhaus.org/drop/terms/"}\n'
    assert detect_format(Path("drop_v4.json"), text) == "text"
    with pytest.raises(ValidationError, match="not valid JSON"):
        detect_format(Path("broken.json"), '{"cidr": "1.10.16.0/20"\n')


@pytest.mark.parametrize("name", ["deep.json", "deep-lines.json"])
def test_a_json_file_nested_too_deep_is_a_clear_error_not_a_traceback(name, tmp_path):
    """json.loads raises RecursionError (not a ValueError) on a document nested deeper than the interpreter's
    limit: `threatflow iocs import deep.json` died with a traceback, for a whole document and for JSON Lines."""
    deep = "[" * 100_000 + "]" * 100_000
    text = deep if name == "deep.json" else '{"cidr": "198.51.100.0/24"}\n{"a": ' + deep + "}\n"
    with pytest.raises(ValidationError) as raised:
        detect_format(tmp_path / name, text)
    assert raised.value.field == "format" and name in str(raised.value)
