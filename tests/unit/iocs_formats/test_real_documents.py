"""Shapes taken from real public documents (each excerpt is short, values rewritten where they are not the point;
the comment names the public repository and path it mirrors). What real producers write, not our own vectors."""

import json

import pytest
from real_documents import (
    MALWAREBAZAAR_ANSWER,
    MISP_STIX_DOMAIN_IP,
    OPENCTI_BUNDLE,
    OPENCTI_HOSTNAMES,
    OTX_INDICATORS,
    OTX_PULSE,
    POISON_IVY_FILE_HASH,
    SEDNIT_EVENT,
    SIGHTING_OF_MALWARE,
    TAXII_ENVELOPE,
    THREATFOX_ANSWER,
    URLHAUS_ANSWER,
)

from threatflow.intel.formats import parse
from threatflow.platform.errors import ValidationError


def test_misp_object_references_and_domain_ip_objects_become_relations():
    """A real MISP event's object graph was dropped: the Sednit event's 20 communicates-with references and 12
    domain-ip objects gave no relation at all, where the older domain|ip attribute gives resolves-to."""
    parsed = parse("misp", SEDNIT_EVENT)
    sha1, c2, ip, domain = (
        "5a3cda97-7e58-4642-aaf5-c5ed950d210f",
        "5a3c3045-ab0c-4d38-8efe-459002de0b81",
        "5a3ce58a-fcd8-48d5-8b4a-4fd9950d210f",
        "5a3ce58a-6e14-48ea-9746-48f2950d210f",
    )
    assert {p.ref for p in parsed.iocs} == {sha1, c2, ip, domain}
    assert sorted((r.source_ref, r.target_ref, r.type) for r in parsed.relations) == sorted(
        [
            (sha1, c2, "communicates-with"),
            (sha1, ip, "communicates-with"),
            (sha1, domain, "communicates-with"),
            (domain, ip, "resolves-to"),
        ]
    )
    assert not parsed.errors


def test_misp_object_relations_are_bounded_per_document():
    """A reference relates every IoC of one object to every IoC of the other: 40 x 40 would be 1,600 relations."""

    def obj(uuid, prefix, refs=()):
        attributes = [{"uuid": f"{uuid}-{i}", "type": "ip-dst", "value": f"{prefix}.{i}"} for i in range(40)]
        return {"name": "ip-port", "uuid": uuid, "Attribute": attributes, "ObjectReference": list(refs)}

    reference = {"referenced_uuid": "b", "relationship_type": "connected-to"}
    event = {"Event": {"Object": [obj("a", "198.51.100", [reference]), obj("b", "203.0.113")]}}
    parsed = parse("misp", event)
    assert len(parsed.iocs) == 80 and len(parsed.relations) == 1000
    assert {r.type for r in parsed.relations} == {"related-to"}
    assert [w.reason for w in parsed.warnings] == ["600 relations not made: at most 1000 from a document's objects"]


def test_one_object_with_a_malformed_id_is_an_error_of_that_object_not_of_the_bundle():
    parsed = parse("stix", OPENCTI_BUNDLE)
    (ioc,) = parsed.iocs
    assert (ioc.item.type, ioc.item.value, ioc.item.tlp) == (
        "sha256",
        "2a0169c72c84e6d3fa49af701fd46ee7aaf1d1d9e107798d93a6ca8df5d25957",
        "clear",
    )
    assert [(t.item.name, t.item.aliases) for t in parsed.threats] == [("APT41", ["Winnti"])]
    assert [(e.ref, e.reason) for e in parsed.errors] == [
        ("579a46af-a339-400d-809e-b92101fe7de8", "objects[2] (579a46af-a339-400d-809e-b92101fe7de8): the id must start with sighting--")
    ]
    # the same for an entry that is no STIX object at all, among real ones; a document of nothing else is still refused
    mixed = {"type": "bundle", "id": "bundle--1", "objects": [OPENCTI_BUNDLE["objects"][1], 42, {"type": "note"}]}
    parsed = parse("stix", mixed)
    assert len(parsed.iocs) == 1
    assert [e.ref for e in parsed.errors] == ["objects[1]", "objects[2]"]
    assert all("is not a STIX object (needs type and id)" in e.reason for e in parsed.errors)


def test_abuse_ch_api_answers_import_as_their_records():
    """Each was refused whole (`expected {"iocs": [...]}`), and MalwareBazaar's and URLhaus's records were refused
    one by one even as a bare list (`unknown field`): they name their values by type (`sha256_hash`, `url`), not by
    a value column."""
    threatfox = parse("json", THREATFOX_ANSWER)
    assert [(p.item.value, p.item.confidence, p.item.tags) for p in threatfox.iocs] == [("198.51.100.104", 75, ["cobaltstrike"])]
    bazaar = parse("json", MALWAREBAZAAR_ANSWER)
    assert {(p.item.type, p.item.value) for p in bazaar.iocs} == {
        ("sha256", "7de2c1bf58bce09eecc70476747d88a26163c3d6bb1d85235c24a558d1f16754"),
        ("sha1", "ba4d6a6d1d4a9e4aa9c9e3a1f0b1e8ad1e8f7c0d"),
        ("md5", "a0b9dbb1c4fbf7ac1a7c8bc9c24ec0a7"),
    }
    assert all(p.item.tags == ["agenttesla", "exe"] for p in bazaar.iocs)
    urlhaus = parse("json", URLHAUS_ANSWER)
    assert [(p.item.type, p.item.value) for p in urlhaus.iocs] == [("url", "http://198.51.100.7:39337/Mozi.m")]
    for answer in (threatfox, bazaar, urlhaus):
        assert not answer.errors
    assert len(parse("json", MALWAREBAZAAR_ANSWER["data"]).iocs) == 3  # the records alone, as a list


def test_an_abuse_ch_answer_without_records_is_refused_by_its_status():
    with pytest.raises(ValidationError, match="query_status 'no_result'"):
        parse("json", {"query_status": "no_result"})


def test_otx_indicator_types_are_read():
    """OTX names hashes FileHash-MD5/SHA1/SHA256: passed through as types, every hash record was rejected."""
    parsed = parse("json", OTX_INDICATORS[:5])
    assert [p.item.type for p in parsed.iocs] == ["ipv4", "md5", "domain", "sha256", "url"]


def test_an_otx_pulse_imports_its_indicators_tlp_threats_and_techniques():
    """An OTX pulse export was refused whole (`expected {"iocs": [...]}`): its indicators, its TLP, its malware
    families, adversary and ATT&CK ids were all lost."""
    for doc in (OTX_PULSE, {"count": 1, "next": None, "results": [OTX_PULSE]}):
        parsed = parse("json", doc)
        assert [(p.item.type, p.item.value) for p in parsed.iocs] == [
            ("ipv4", "198.51.100.156"),
            ("md5", "90421f8531f963d81cf54245b72cde80"),
            ("domain", "ip.anysrc.example.net"),
            ("sha256", "d8c70ca70fd3555a0828fede6cc1f59e2c320ede80157039b6a2f09c336d5f7a"),
            ("url", "http://www.example-shop.ru/signup/"),
        ]
        assert {p.item.tlp for p in parsed.iocs} == {"amber"}
        assert all({"trickbot", "otx-pulse:64d31e8a5133613a90976b3f"} <= set(p.item.tags) for p in parsed.iocs)
        assert sorted((str(t.item.kind), t.item.name, tuple(t.item.ttps), t.item.tlp) for t in parsed.threats) == [
            ("malware", "TrickBot", ("T1566.001",), "amber"),
            ("threat-actor", "Wizard Spider", ("T1566.001",), "amber"),
        ]
        assert len(parsed.links) == 10 and not parsed.errors
        assert parsed.skipped == {"otx:CVE": 1}


@pytest.mark.parametrize("fmt", ["stix", "misp", "json"])
def test_a_document_saved_with_a_utf8_byte_order_mark_is_read(fmt):
    """Windows tools save UTF-8 with a BOM (PowerShell 5's `Set-Content -Encoding UTF8`, Notepad before 2019): the
    JSON formats refused such a file (`not valid JSON: invalid character (byte 0)`), given as bytes or as text that
    kept the BOM, where the CSV and text imports and `threatflow iocs import` drop it; a MISP event was even read as
    a CSV. The same document without the BOM imports."""
    doc = {"stix": OPENCTI_BUNDLE, "misp": SEDNIT_EVENT, "json": MALWAREBAZAAR_ANSWER}[fmt]
    text = json.dumps(doc)
    expected = len(parse(fmt, text).iocs)
    assert expected > 0
    assert len(parse(fmt, "\ufeff" + text).iocs) == expected
    assert len(parse(fmt, ("\ufeff" + text).encode()).iocs) == expected


def test_a_sighting_of_a_threat_links_the_iocs_its_observed_data_hold():
    """STIX's idiom for "this file was seen, and it is that malware": the sighting was skipped, so the file's hashes
    came in with no link to the malware they were sighted as."""
    parsed = parse("stix", SIGHTING_OF_MALWARE)
    observed = "observed-data--cf8eaa41-6f4c-482e-89b9-9cd2d6a83cb1"
    assert {(p.ref, p.item.type) for p in parsed.iocs} == {(observed, "md5"), (observed, "sha1")}
    assert [(link.ioc_ref, link.threat_ref, link.relation) for link in parsed.links] == [
        (observed, "malware--ae560258-a5cb-4be8-8f05-013d6712295f", "sighted-as")
    ]


def test_an_unquoted_hash_algorithm_in_a_pattern_is_read():
    """OASIS's own example indicator was an error (`no viable alternative at input 'file:hashes.SHA-256'`), so the
    Poison Ivy hash and its link were lost. The algorithm is read as if quoted, with a warning."""
    parsed = parse("stix", POISON_IVY_FILE_HASH)
    indicator = "indicator--a932fcc6-e032-176c-126f-cb970a5a1ade"
    assert [(p.ref, p.item.type, p.item.value) for p in parsed.iocs] == [
        (indicator, "sha256", "ef537f25c895bfa782526529a9b63d97aa631564d5d789c2b765448c8635fb6c")
    ]
    assert [(link.ioc_ref, link.threat_ref) for link in parsed.links] == [(indicator, "malware--fdd60b30-b67c-11e3-b0b9-f01faf20d111")]
    assert not parsed.errors
    assert [(w.ref, w.reason) for w in parsed.warnings] == [
        (indicator, "hashes.SHA-256 read as hashes.'SHA-256' (the grammar wants it quoted)")
    ]


@pytest.mark.parametrize(
    ("pattern", "expected"),
    [
        ("[file:hashes.sha-256 = '" + "a" * 64 + "']", [("sha256", "a" * 64)]),
        ("[file:hashes.SHA-1 = '" + "b" * 40 + "' OR file:hashes.MD5 = '" + "c" * 32 + "']", [("sha1", "b" * 40), ("md5", "c" * 32)]),
        ("[file:hashes.'SHA-256' = '" + "d" * 64 + "']", [("sha256", "d" * 64)]),  # quoted: as before, no warning
    ],
)
def test_hash_algorithms_are_read_quoted_or_not(pattern, expected):
    indicator = {"type": "indicator", "id": "indicator--a932fcc6-e032-176c-126f-cb970a5a1ade", "pattern": pattern}
    parsed = parse("stix", indicator)
    assert [(p.item.type, p.item.value) for p in parsed.iocs] == expected and not parsed.errors
    assert bool(parsed.warnings) is ("'SHA-256'" not in pattern)


def test_a_pattern_broken_elsewhere_is_still_an_error():
    indicator = {"type": "indicator", "id": "indicator--a932fcc6-e032-176c-126f-cb970a5a1ade", "pattern": "[file:hashes.SHA-256 = 'x' AND]"}
    parsed = parse("stix", indicator)
    assert not parsed.iocs and "not valid STIX patterning" in parsed.errors[0].reason


def test_a_domain_names_resolves_to_refs_become_resolves_to_relations():
    """MISP's STIX 2.1 export of domain|ip (and of a domain-ip object) says which address the name resolved to in
    the domain-name's resolves_to_refs: both came in, unrelated, where MISP's own domain|ip gives resolves-to."""
    parsed = parse("stix", MISP_STIX_DOMAIN_IP)
    domain, address = "domain-name--91ae0a21-c7ae-4c7f-b84b-b84a7ce53d1f", "ipv4-addr--91ae0a21-c7ae-4c7f-b84b-b84a7ce53d1f"
    assert {(p.ref, p.item.value) for p in parsed.iocs} >= {(domain, "circl.lu"), (address, "149.13.33.14")}
    assert [(r.source_ref, r.target_ref, r.type) for r in parsed.relations] == [(domain, address, "resolves-to")]


def test_an_otx_pulse_makes_bounded_work():
    """Each of a pulse's families and its adversary gets every ATT&CK id: 2,000 of each would be 4,000,000 TTPs from
    a 60 KB document, and a threat holds at most 512 (more was rejected at the upsert). At most 32 threats a pulse
    (the links an IoC takes) and 512 TTPs each; what was left out is named in warnings."""
    pulse = {
        **OTX_PULSE,
        "malware_families": [f"family {i}" for i in range(2000)],
        "attack_ids": [f"T{1000 + i // 10}.{i % 10:03d}" for i in range(2000)],
    }
    parsed = parse("json", pulse)
    assert len(parsed.threats) == 32 and all(len(t.item.ttps) == 512 for t in parsed.threats)
    assert len(parsed.warnings) == 2 and len(parsed.links) == 5 * 32


def test_opencti_hostnames_are_domains():
    """The indicator was an error (`names no supported indicator`) and the SCO skipped as `hostname`."""
    parsed = parse("stix", OPENCTI_HOSTNAMES)
    assert sorted((p.item.type, p.item.value) for p in parsed.iocs) == [
        ("domain", "ec2-198-51-100-164.compute-1.example.com"),
        ("domain", "vpn.darkhost-example.net"),
    ]
    assert not parsed.errors and not parsed.skipped


def test_a_taxii_envelope_is_read_as_its_objects():
    """What a TAXII 2.1 server answers was refused (`not a STIX bundle or object`)."""
    parsed = parse("stix", TAXII_ENVELOPE)
    assert [(p.item.type, p.item.value) for p in parsed.iocs] == [("url", "https://dailymemes.example.net")]
    from pathlib import Path

    from threatflow.cli.iocs import detect_format

    assert detect_format(Path("objects.json"), json.dumps(TAXII_ENVELOPE)) == "stix"  # `threatflow iocs import` sent it as json


def test_pulses_naming_one_family_give_it_the_strictest_of_their_tlps():
    """Pulses of one document naming one family make one threat: it kept the first pulse's TLP and took the TTPs of
    the others, so a TLP:RED pulse's techniques were shown on a white threat to any reader."""
    white = {"id": "w", "name": "open", "tlp": "white", "malware_families": ["Emotet"], "indicators": []}
    red = {"id": "r", "name": "closed", "tlp": "red", "malware_families": ["Emotet"], "attack_ids": ["T1566.001"], "indicators": []}
    (threat,) = parse("json", {"results": [white, red]}).threats
    assert (threat.item.tlp, threat.item.ttps) == ("red", ["T1566.001"])


def test_pulses_naming_one_family_merge_its_ttps_in_bounded_work(monkeypatch):
    """Each pulse naming a family an earlier one named sorted the family's whole list of TTPs again (up to 512) and
    rebuilt the threat: 3.4 MB of 10,000 short pulses naming the 32 families of a first pulse of 512 ids took 52 s.
    What is sorted now stays within the ids the document holds and one sort of each threat's list."""
    from threatflow.intel.formats import otx

    sorted_items = []

    def counting(iterable, *args, **kwargs):
        items = list(iterable)
        sorted_items.append(len(items))
        return sorted(items, *args, **kwargs)

    monkeypatch.setattr(otx, "sorted", counting, raising=False)
    families = [f"family {i}" for i in range(32)]
    first = {"id": "p0", "name": "p", "indicators": [], "malware_families": families, "attack_ids": [f"T{1000 + i}" for i in range(512)]}
    rest = [{"id": f"p{i}", "name": "p", "indicators": [], "malware_families": families} for i in range(1, 200)]
    parsed = parse("json", {"results": [first, *rest]})
    assert len(parsed.threats) == 32 and all(len(t.item.ttps) == 512 for t in parsed.threats)
    assert sum(sorted_items) <= 512 + 32 * 512
