"""JSON, CSV and free-text import parsers: pure, no database."""

import pytest

from threatflow.intel.formats import ImportFormat, parse
from threatflow.platform.errors import ValidationError


def values(parsed):
    return [(p.item.value, p.item.type) for p in parsed.iocs]


def test_json_object_and_bare_list():
    doc = b'{"iocs": [{"value": "1.2.3.4", "tags": ["c2"], "tlp": "green", "confidence": 80}, {"value": "evil.com", "type": "domain"}]}'
    parsed = parse("json", doc)
    assert values(parsed) == [("1.2.3.4", None), ("evil.com", "domain")]
    assert parsed.iocs[0].item.tags == ["c2"] and parsed.iocs[0].item.tlp == "green" and parsed.iocs[0].item.confidence == 80
    assert [p.ref for p in parsed.iocs] == ["#0", "#1"]
    assert values(parse("json", '["a.example.com", {"value": "5.6.7.8"}]')) == [("a.example.com", None), ("5.6.7.8", None)]


def test_json_bad_items_are_named_and_the_rest_kept():
    parsed = parse("json", [{"value": "1.2.3.4"}, {"value": "x", "colour": "red"}, 7, {"value": "2.2.2.2", "confidence": 101}])
    assert values(parsed) == [("1.2.3.4", None)]
    assert [e.ref for e in parsed.errors] == ["#1", "#2", "#3"]
    assert "colour" in parsed.errors[0].reason
    assert "<= 100" in parsed.errors[2].reason


@pytest.mark.parametrize(
    ("content", "message"),
    [(b"{not json", "json: not valid JSON"), (b'{"items": []}', '{"iocs": [...]}'), (b'{"iocs": 3}', "iocs must be a list")],
)
def test_json_malformed_document_fails_clearly(content, message):
    with pytest.raises(ValidationError, match=message.replace("[", r"\[").replace("{", r"\{")):
        parse("json", content)


def test_csv_with_aliases_tags_and_per_row_errors():
    text = (
        "Indicator,Type,Tags,TLP,Confidence,Source\n"
        "1.2.3.4,ipv4,c2;botnet|emotet,amber,70,feed-x\n"
        ",domain,,,,\n"
        "evil.com,hostname,,green,high,\n"
        "d41d8cd98f00b204e9800998ecf8427e,md5,,,,\n"
        "a.b,x,y,z,1,2,3,4\n"
    )
    parsed = parse(ImportFormat.CSV, text)
    assert values(parsed) == [("1.2.3.4", "ipv4"), ("d41d8cd98f00b204e9800998ecf8427e", "md5")]
    first = parsed.iocs[0].item
    assert first.tags == ["c2", "botnet", "emotet"] and first.tlp == "amber" and first.confidence == 70 and first.source == "feed-x"
    assert {e.ref: e.reason for e in parsed.errors} == {
        "row 3": "no value",
        "row 4": "confidence 'high' is not an integer (0-100)",
        "row 6": "8 cells but the header names 6 columns",
    }


def test_csv_misp_types_and_composites():
    text = (
        "uuid,event_id,category,type,value,comment,to_ids\n"
        "u1,1,Network activity,ip-dst|port,8.8.4.4|53,dns,1\n"
        "u2,1,Payload,filename|sha1,a.exe|da39a3ee5e6b4b0d3255bfef95601890afd80709,,0\n"
    )
    parsed = parse("csv", text)
    assert values(parsed) == [("8.8.4.4", None), ("da39a3ee5e6b4b0d3255bfef95601890afd80709", "sha1")]
    assert parsed.iocs[0].item.verdict == "malicious" and parsed.iocs[0].item.description == "dns"


def test_csv_without_value_column_fails_naming_the_header():
    with pytest.raises(ValidationError, match=r"no value column.*Header was: foo, bar"):
        parse("csv", "foo,bar\n1,2\n")
    with pytest.raises(ValidationError, match="empty"):
        parse("csv", "   ")


def test_text_extracts_refanged_values():
    parsed = parse("text", "C2 at hxxp://evil[.]example[.]com/gate and 10[.]1[.]2[.]3; hash d41d8cd98f00b204e9800998ecf8427e")
    got = set(values(parsed))
    assert ("d41d8cd98f00b204e9800998ecf8427e", "md5") in got
    assert any(v.startswith("http://evil.example.com") for v, _ in got)


def test_unknown_format_is_named():
    with pytest.raises(ValidationError, match="unknown import format 'yaml'"):
        parse("yaml", "x")


def test_with_defaults_fills_only_what_is_missing():
    parsed = parse("json", [{"value": "1.2.3.4", "source": "mine", "tlp": "red"}, {"value": "5.6.7.8"}])
    filled = parsed.with_defaults(source="upload", tlp="green", tags=["batch-7"])
    a, b = (p.item for p in filled.iocs)
    assert (a.source, a.tlp, a.tags) == ("mine", "red", ["batch-7"])
    assert (b.source, b.tlp, b.tags) == ("upload", "green", ["batch-7"])


def test_a_bad_tag_rejects_only_its_row():
    """The one tag rule (platform.vocabulary.clean_tags): no silent truncation, the row is named."""
    long_tag = "x" * 129
    text = f"value,type,tags\n1.2.3.4,ipv4,ok;{long_tag}\n5.6.7.8,ipv4,OK;ok\n"
    parsed = parse(ImportFormat.CSV, text)
    assert values(parsed) == [("5.6.7.8", "ipv4")]
    assert parsed.iocs[0].item.tags == ["ok"]
    assert [e.ref for e in parsed.errors] == ["row 2"] and "longer than 128" in parsed.errors[0].reason


def test_misp_csv_tlp_tags_set_the_tlp():
    """MISP's CSV export carries tags in attribute_tag (and event_tag with includeContext). They were not read at all:
    a tlp:red attribute came in at the default TLP (or the request's --tlp clear), and its other tags were lost."""
    text = (
        "uuid,event_id,category,type,value,comment,to_ids,date,object_relation,attribute_tag,object_uuid,object_name,object_meta-category,event_tag\n"
        'u1,7,Network activity,ip-dst,198.51.100.1,,1,1700000000,,"tlp:red,osint",,,,tlp:green\n'
        "u2,7,Network activity,domain,evil.example.com,,1,1700000000,,,,,,tlp:amber\n"
        "u3,7,Network activity,domain,bad.example.com,,1,1700000000,,tlp:ex:chr,,,,\n"
    )
    parsed = parse("csv", text).with_defaults(tlp="clear")
    by_value = {p.item.value: p.item for p in parsed.iocs}
    assert by_value["198.51.100.1"].tlp == "tlp:red" and "osint" in by_value["198.51.100.1"].tags
    assert by_value["evil.example.com"].tlp == "tlp:amber"
    assert by_value["bad.example.com"].tlp == "clear" and "tlp:ex:chr" in by_value["bad.example.com"].tags
