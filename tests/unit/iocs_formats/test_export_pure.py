"""Export helpers that need no database: patterns, ids, query parameters."""

import pytest
import stix2
from werkzeug.datastructures import MultiDict

from threatflow.intel.formats.export import filter_from_query, indicator_id, pattern_for, threat_id
from threatflow.intel.formats.stix import pattern_values
from threatflow.platform.errors import ValidationError


@pytest.mark.parametrize(
    ("ioc_type", "value", "expected_type"),
    [
        ("ipv4", "198.51.100.1", None),
        ("cidr", "10.0.0.0/8", None),
        ("ipv6", "2001:db8::1", None),
        ("domain", "evil.example.com", "domain"),
        ("url", "http://evil.example.com/a'b", "url"),
        ("email", "bad@evil.example.com", "email"),
        ("md5", "d41d8cd98f00b204e9800998ecf8427e", "md5"),
        ("sha1", "da39a3ee5e6b4b0d3255bfef95601890afd80709", "sha1"),
        ("sha256", "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855", "sha256"),
        ("file_path", "C:\\Windows\\Temp\\evil.exe", "file_path"),
        ("file_path", "/tmp/x y", "file_path"),
    ],
)
def test_patterns_are_valid_and_round_trip(ioc_type, value, expected_type):
    pattern = pattern_for(ioc_type, value)
    indicator = stix2.Indicator(pattern=pattern, pattern_type="stix", valid_from="2024-01-01T00:00:00Z")
    assert stix2.parse(indicator.serialize(), allow_custom=False).pattern == pattern
    found, warning = pattern_values(pattern)
    assert found == [(expected_type, value)] and warning is None


def test_ids_are_deterministic():
    assert indicator_id("ipv4", "1.2.3.4") == indicator_id("ipv4", "1.2.3.4") != indicator_id("ipv4", "1.2.3.5")
    assert threat_id("malware", "Emotet", None) == threat_id("malware", "emotet", None)
    assert (
        threat_id("malware", "Emotet", "malware--b42378e0-f147-496f-992a-26a49705395b") == "malware--b42378e0-f147-496f-992a-26a49705395b"
    )


def test_filter_from_query_lists_scalars_and_default_max_tlp():
    flt = filter_from_query(
        MultiDict([("type", "ipv4,domain"), ("type", "url"), ("active", "true"), ("score_min", "40"), ("format", "csv")])
    )
    assert [str(t) for t in flt.type] == ["ipv4", "domain", "url"] and flt.active is True and flt.score_min == 40
    assert str(flt.max_tlp) == "amber"
    assert str(filter_from_query(MultiDict([("max_tlp", "red")])).max_tlp) == "red"
    with pytest.raises(ValidationError, match="unknown query parameter 'colour'"):
        filter_from_query(MultiDict([("colour", "red")]))
    with pytest.raises(ValidationError, match="score_min"):
        filter_from_query(MultiDict([("score_min", "lots")]))


def test_an_export_filters_tlp_spelled_as_writes_accept_it_is_read():
    """Writes read `TLP:RED`, `tlp-green` or `AMBER` as that TLP; the export's query refused them (a 400, the filter a
    strict enum). A value that is no TLP is still a 400 naming the parameter."""
    from threatflow.iocs.model import Tlp

    flt = filter_from_query({"max_tlp": "TLP:RED", "tlp": "tlp-green, AMBER"})
    assert (flt.max_tlp, flt.tlp) == (Tlp.RED, [Tlp.GREEN, Tlp.AMBER])
    with pytest.raises(ValidationError) as refused:
        filter_from_query({"max_tlp": "purple"})
    assert refused.value.field == "max_tlp"


@pytest.mark.parametrize(
    "stored",
    ["malware--00000000-0000-0000-0000-000000000015", "malware--not-a-uuid", "malware--", "malware--b42378e0f147496f992a26a49705395b-x"],
    ids=["not-rfc-4122", "no-uuid", "empty", "trailing"],
)
def test_a_stored_stix_id_that_stix2_refuses_gives_way_to_the_derived_one(stored):
    """An import keeps any `<type>--...` id a document gives a threat; stix2 refuses one whose UUID is not RFC 4122
    (`malware--00000000-0000-0000-0000-000000000015`, a test fixture's counter), so every STIX export holding that
    threat (an IoC linked to it) was a 500, for every reader."""
    exported = threat_id("malware", "Counter Fixture", stored)
    assert exported == threat_id("malware", "Counter Fixture", None)
    assert stix2.Malware(id=exported, name="Counter Fixture", is_family=True).id == exported


@pytest.mark.parametrize("name", ["first_seen_from", "first_seen_to", "last_seen_from", "last_seen_to"])
@pytest.mark.parametrize(("text", "offset"), [("2026-11-27T10:00:00 00:00", "+00:00"), ("2026-11-27T10:00:00 0530", "+05:30")])
def test_an_export_time_whose_offset_sign_became_a_space_is_read_as_plus(name, text, offset):
    """?last_seen_from=2026-11-27T10:00:00+00:00 typed in curl: the unencoded '+' decodes to a space (a 400)."""
    from datetime import datetime

    expected = datetime.fromisoformat(text.split(" ")[0] + offset)
    assert getattr(filter_from_query(MultiDict({name: text})), name) == expected
    with pytest.raises(ValidationError):
        filter_from_query(MultiDict({name: text.replace(" ", "  ")}))
