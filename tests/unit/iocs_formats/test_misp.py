"""MISP event import."""

import msgspec
import pytest

from threatflow.intel.formats import parse
from threatflow.platform.errors import ValidationError
from threatflow.platform.vocabulary import Tlp

EVENT = {
    "Event": {
        "uuid": "5a3c2fcd-8328-42bb-a95e-4f4402de0b81",
        "info": "Test event",
        "Orgc": {"name": "CIRCL"},
        "Tag": [{"name": "tlp:green"}, {"name": 'osint:source-type="blog-post"'}, {"name": 'misp-galaxy:threat-actor="Sofacy"'}],
        "Attribute": [
            {"uuid": "a1", "type": "ip-dst", "value": "203.0.113.10", "to_ids": True, "comment": "C2"},
            {"uuid": "a2", "type": "domain|ip", "value": "evil.example.com|203.0.113.11", "to_ids": False},
            {"uuid": "a3", "type": "text", "value": "just words"},
            {"uuid": "a4", "type": "filename|sha256", "value": "x.exe|" + "a" * 64, "Tag": [{"name": "tlp:amber"}]},
            {"uuid": "a5", "type": "url"},
        ],
        "Object": [{"name": "file", "Attribute": [{"uuid": "o1", "type": "md5", "value": "d41d8cd98f00b204e9800998ecf8427e"}]}],
        "Galaxy": [
            {
                "type": "threat-actor",
                "GalaxyCluster": [
                    {"value": "Sofacy", "description": "APT28", "meta": {"synonyms": ["APT28", "Fancy Bear"], "refs": ["https://x"]}}
                ],
            },
            {"type": "mitre-attack-pattern", "GalaxyCluster": [{"value": "Spearphishing Attachment - T1566.001"}]},
        ],
    }
}


def test_event_maps_attributes_tags_galaxies():
    parsed = parse("misp", EVENT)
    got = {(p.ref, p.item.value, p.item.type) for p in parsed.iocs}
    assert got == {
        ("a1", "203.0.113.10", None),
        ("a2/domain", "evil.example.com", "domain"),
        ("a2/ip", "203.0.113.11", None),
        ("a4", "a" * 64, "sha256"),
        ("o1", "d41d8cd98f00b204e9800998ecf8427e", "md5"),
    }
    by_ref = {p.ref: p.item for p in parsed.iocs}
    assert by_ref["a1"].tlp == "tlp:green" and by_ref["a4"].tlp == "tlp:amber"
    assert by_ref["a1"].verdict == "malicious" and by_ref["a1"].description == "C2" and by_ref["a1"].source == "misp:CIRCL"
    assert "misp-event:5a3c2fcd-8328-42bb-a95e-4f4402de0b81" in by_ref["a1"].tags
    assert 'osint:source-type="blog-post"' in by_ref["a1"].tags and not any(t.startswith("misp-galaxy") for t in by_ref["a1"].tags)
    assert "misp:to_ids=false" in by_ref["a2/domain"].tags and by_ref["a2/domain"].verdict is None
    assert by_ref["o1"].description == "Test event"
    (threat,) = parsed.threats
    assert threat.item.name == "Sofacy" and str(threat.item.kind) == "threat-actor"
    assert threat.item.aliases == ["APT28", "Fancy Bear"] and threat.item.ttps == ["T1566.001"]
    assert {link.ioc_ref for link in parsed.links} == {"a1", "a2/domain", "a2/ip", "a4", "o1"}
    assert [(r.source_ref, r.target_ref, r.type) for r in parsed.relations] == [("a2/domain", "a2/ip", "resolves-to")]
    assert parsed.skipped == {"text": 1}
    assert [e.ref for e in parsed.errors] == ["a5"]


def test_bare_event_and_response_list():
    bare = parse("misp", EVENT["Event"])
    response = parse("misp", {"response": [EVENT, EVENT]})
    assert len(bare.iocs) == 5 and len(response.iocs) == 10


@pytest.mark.parametrize(
    ("doc", "message"),
    [
        ({"Event": {"info": "x", "Attribute": {"type": "ip-dst", "value": "1.2.3.4"}}}, "Event.Attribute must be a list; got dict"),
        ({"Event": {"info": "x", "Object": [{"Attribute": "nope"}]}}, r"Event.Object\[0\].Attribute must be a list"),
        ({"nothing": 1}, "not a MISP event"),
        ({"response": {"Event": {}}}, "response must be a list"),
        (b'{"Event": ', "misp: not valid JSON"),
    ],
)
def test_malformed_events_fail_clearly(doc, message):
    with pytest.raises(ValidationError, match=message):
        parse("misp", doc)


def test_misp_csv_typed_columns():
    parsed = parse("misp", "md5, sha1\n644087ccca16d2a728ef7685a4106f09, eabd6974ac71efd72d9e0688d5a6131f336d169c\n")
    assert [(p.item.type, p.item.value) for p in parsed.iocs] == [
        ("md5", "644087ccca16d2a728ef7685a4106f09"),
        ("sha1", "eabd6974ac71efd72d9e0688d5a6131f336d169c"),
    ]


def _event(attributes, tags=(), objects=()):
    return {"Event": {"uuid": "e1", "info": "x", "Tag": [{"name": t} for t in tags], "Attribute": attributes, "Object": list(objects)}}


def test_tlp_is_the_most_restrictive_of_the_event_and_attribute_tags():
    """A TLP:RED event came in TLP:CLEAR when one attribute carried tlp:clear (the attribute's tag won), and an event
    tagged tlp:red and tlp:green came in green (the last tag won). Nothing may come in less restricted than marked."""
    parsed = parse(
        "misp",
        _event(
            [
                {"uuid": "a1", "type": "ip-dst", "value": "203.0.113.1", "Tag": [{"name": "tlp:clear"}]},
                {"uuid": "a2", "type": "ip-dst", "value": "203.0.113.2"},
            ],
            tags=["tlp:red", "tlp:green"],
        ),
    )
    assert {p.ref: p.item.tlp for p in parsed.iocs} == {"a1": "tlp:red", "a2": "tlp:red"}
    raised = parse(
        "misp",
        _event([{"uuid": "a1", "type": "ip-dst", "value": "203.0.113.1", "Tag": [{"name": "TLP:AMBER+STRICT"}]}], tags=["tlp:green"]),
    )
    assert raised.iocs[0].item.tlp == "tlp:amber+strict"


@pytest.mark.parametrize("tag", ["tlp:ex:chr", "tlp:unclear", "tlp:ex:nopub"])
def test_tlp_extension_tags_are_tags_not_a_tlp_that_rejects_the_item(tag):
    """MISP's tlp taxonomy also holds tlp:ex:chr, tlp:ex:nopub and tlp:unclear. Taken as the TLP, they made every
    attribute of the event an item whose TLP the store refuses ("unknown TLP"), so the whole event was rejected."""
    parsed = parse("misp", _event([{"uuid": "a1", "type": "ip-dst", "value": "203.0.113.1"}], tags=["tlp:amber", tag]))
    (ioc,) = parsed.iocs
    assert ioc.item.tlp == "tlp:amber" and tag in ioc.item.tags


def test_string_flags_and_deleted_objects():
    """MISP writes to_ids and deleted as "1"/"0" in places (its ZMQ and older exports: `"to_ids": "1", "deleted": "0"`),
    and a deleted Object carries `"deleted": true` on the object itself. Only the boolean true was read: a "1" deleted
    attribute and every attribute of a deleted object were imported, "1" did not mark malicious, "0" was not tagged."""
    ip = lambda uuid, value, **kw: {"uuid": uuid, "type": "ip-dst", "value": value, **kw}  # noqa: E731
    parsed = parse(
        "misp",
        _event(
            [ip("a1", "203.0.113.1", to_ids="1", deleted="0"), ip("a2", "203.0.113.2", to_ids="0"), ip("a3", "203.0.113.3", deleted="1")],
            objects=[
                {"name": "ip-port", "deleted": True, "Attribute": [ip("o1", "203.0.113.4", to_ids=True)]},
                {"name": "ip-port", "deleted": "0", "Attribute": [ip("o2", "203.0.113.5", to_ids=True)]},
            ],
        ),
    )
    by_ref = {p.ref: p.item for p in parsed.iocs}
    assert set(by_ref) == {"a1", "a2", "o2"}
    assert by_ref["a1"].verdict == "malicious" and "misp:to_ids=false" not in by_ref["a1"].tags
    assert by_ref["a2"].verdict is None and "misp:to_ids=false" in by_ref["a2"].tags
    assert parsed.skipped == {"deleted": 2}


def test_galaxy_tags_without_a_galaxy_block_become_threats_and_ttps():
    """A MISP feed's events (PyMISP's to_feed: Tag, Attribute, Object) name their clusters only as tags, with no Galaxy
    block. Those tags were dropped as "left to the galaxies": no threat actor, no technique, no link."""
    parsed = parse(
        "misp",
        _event(
            [
                {"uuid": "a1", "type": "ip-dst", "value": "203.0.113.1"},
                {"uuid": "a2", "type": "domain", "value": "evil.example.com", "Tag": [{"name": 'misp-galaxy:tool="Mimikatz - S0002"'}]},
            ],
            tags=[
                'misp-galaxy:threat-actor="Sofacy"',
                'misp-galaxy:mitre-attack-pattern="Command and Scripting Interpreter - T1059"',
                'misp-galaxy:mitre-attack-pattern="PowerShell - T1059.001"',
            ],
        ),
    )
    threats = {t.ref: t.item for t in parsed.threats}
    assert set(threats) == {"threat:threat-actor:sofacy", "threat:tool:mimikatz"}
    assert threats["threat:threat-actor:sofacy"].ttps == ["T1059", "T1059.001"]
    assert {"source_name": "mitre-attack", "external_id": "S0002"} in msgspec.to_builtins(threats["threat:tool:mimikatz"].references)
    assert {(link.ioc_ref, link.threat_ref) for link in parsed.links} == {
        ("a1", "threat:threat-actor:sofacy"),
        ("a2", "threat:threat-actor:sofacy"),
        ("a2", "threat:tool:mimikatz"),
    }


def test_attribute_search_response():
    """/attributes/restSearch answers {"response": {"Attribute": [...]}}: refused whole ("response must be a list")."""
    doc = {
        "response": {
            "Attribute": [
                {"uuid": "a1", "type": "ip-dst", "value": "203.0.113.1", "to_ids": True, "Tag": [{"name": "tlp:green"}]},
                {"uuid": "a2", "type": "domain", "value": "evil.example.com", "to_ids": False},
            ]
        }
    }
    parsed = parse("misp", doc)
    assert [(p.ref, p.item.value, p.item.tlp, p.item.verdict) for p in parsed.iocs] == [
        ("a1", "203.0.113.1", "tlp:green", "malicious"),
        ("a2", "evil.example.com", None, None),
    ]


def test_links_stay_linear_in_the_document():
    """Every event-level cluster is linked to every IoC of the event: N attributes and N cluster tags made N² links,
    each one statement in the import's transaction (200 + 200 in 15 KB: 40,000 links). An IoC now takes at most 32
    of its event's threats, and what was left out is named in warnings."""
    n = 200
    attributes = [{"uuid": f"a{i}", "type": "ip-dst", "value": f"198.51.{i // 250}.{i % 250}"} for i in range(n)]
    parsed = parse("misp", _event(attributes, tags=[f'misp-galaxy:threat-actor="Actor {i}"' for i in range(n)]))
    assert len(parsed.iocs) == n and len(parsed.threats) == n
    assert len(parsed.links) == n * 32
    assert any(f"{n - 32} of its" in w.reason for w in parsed.warnings)


def test_an_attribute_is_first_seen_when_the_event_says_not_when_it_is_imported():
    """MISP attributes carry `first_seen` (MISP 2.4.120+) and events a `date`; both were dropped, so a 2014 event's
    indicators were "first seen" on the day of the import. A time in the future or not a time is left out (the IoC
    is still imported: a future first_seen would have rejected it)."""
    from datetime import UTC, datetime

    attributes = [
        {"type": "ip-dst", "value": "198.51.100.1", "first_seen": "2019-06-13T15:56:56.934000+00:00"},
        {"type": "ip-dst", "value": "198.51.100.2"},
        {"type": "ip-dst", "value": "198.51.100.3", "first_seen": "2999-01-01T00:00:00+00:00"},
        {"type": "ip-dst", "value": "198.51.100.4", "first_seen": "yesterday"},
    ]
    event = _event(attributes)
    event["Event"]["date"] = "2014-10-03"
    parsed = parse("misp", event)
    seen = {p.item.value: p.item.first_seen for p in parsed.iocs}
    assert seen["198.51.100.1"] == datetime(2019, 6, 13, 15, 56, 56, 934000, tzinfo=UTC)
    assert seen["198.51.100.2"] == seen["198.51.100.3"] == seen["198.51.100.4"] == datetime(2014, 10, 3, tzinfo=UTC)
    no_date = parse("misp", _event([{"type": "ip-dst", "value": "198.51.100.5", "first_seen": "2999-01-01T00:00:00Z"}]))
    assert no_date.iocs[0].item.first_seen is None and not no_date.errors


def test_object_references_past_the_relation_budget_are_not_walked(monkeypatch):
    """Each ObjectReference walked both objects' IoC lists (the pairs wanted, counted with sets) even once the
    document's 1,000 relations were made, or when it named nothing the document holds: 3.3 MB (an object of 10,000
    addresses, another referring to it 40,000 times) took 48 s of one request and answered 40,000 warnings. The
    references past the budget, or naming nothing, are now counted, not walked: the lists handed to the relating
    step stay linear in the document, and the warnings few."""
    from threatflow.intel.formats import misp

    walked = []
    relate = misp._relate

    def counting(out, sources, targets, *args, **kwargs):
        walked.append(len(sources) + len(targets))
        return relate(out, sources, targets, *args, **kwargs)

    monkeypatch.setattr(misp, "_relate", counting)
    n = 400
    many = [{"uuid": f"x{i}", "type": "ip-dst", "value": f"203.0.{i // 250}.{i % 250 + 1}"} for i in range(n)]
    pointing = [{"referenced_uuid": "X", "relationship_type": "communicates-with"}] * n
    dangling = [{"referenced_uuid": f"nowhere-{i}", "relationship_type": "drops"} for i in range(n)]
    name = {"uuid": "y", "type": "domain", "value": "evil.example.com"}
    copies = [{**a, "uuid": f"z{i}"} for i, a in enumerate(many)]
    event = {
        "Event": {
            "Object": [
                {"name": "ip-port", "uuid": "X", "Attribute": many},
                {"name": "file", "uuid": "Y", "Attribute": [name], "ObjectReference": pointing},
                {"name": "file", "uuid": "X2", "Attribute": copies, "ObjectReference": dangling},
            ]
        }
    }
    parsed = parse("misp", event)
    assert len(parsed.relations) == n  # Y's first reference relates the name to each of X's addresses
    assert sum(walked) <= 10 * n
    assert len(parsed.warnings) <= 2


@pytest.mark.parametrize("tag", ["TLP_RED", "tlp-red", "TLP RED"])
def test_a_loosely_spelled_tlp_tag_marks_the_event(tag):
    """Tlp.parse reads producers' `TLP_RED`, `tlp-red` (OTX's pulse and STIX markings take them), but a MISP tag was
    a TLP only when it began `tlp:`: so tagged, a TLP:RED event came in at the import's default, the tag a tag."""
    parsed = parse("misp", _event([{"uuid": "a1", "type": "ip-dst", "value": "203.0.113.1"}], tags=[tag]))
    (ioc,) = parsed.iocs
    assert Tlp.parse(ioc.item.tlp) is Tlp.RED and tag not in ioc.item.tags


def test_an_attributes_own_tags_past_the_events_full_tags_never_reject_it():
    """An event's tags are cut to 63 (with `misp-event:<uuid>`) for its attributes, but an attribute's own tags (and
    `misp:to_ids=false`) were added after them: an event of 63 or more tags got each attribute holding a tag of its
    own rejected, `at most 64 tags per indicator`. The event's come first, the attribute's while there is room."""
    attribute = {"uuid": "a1", "type": "ip-dst", "value": "203.0.113.1", "to_ids": False, "Tag": [{"name": "own"}]}
    parsed = parse("misp", _event([attribute], tags=[f"t{i:02d}" for i in range(70)]))
    assert parsed.errors == []
    (ioc,) = parsed.iocs
    assert len(ioc.item.tags) == 64 and "misp-event:e1" in ioc.item.tags and "own" not in ioc.item.tags
