"""STIX import: patterns through the STIX patterning grammar, objects to IoCs and threats."""

import json

import pytest

from threatflow.intel.formats import parse
from threatflow.intel.formats.stix import pattern_values
from threatflow.platform.errors import ValidationError

AMBER = "marking-definition--f88d31f6-486f-44da-b317-01333bde0b82"


def bundle(*objects):
    return json.dumps({"type": "bundle", "id": "bundle--11111111-1111-4111-8111-111111111111", "objects": list(objects)})


def poison_ivy(**extra):
    return {
        "type": "malware",
        "spec_version": "2.1",
        "id": "malware--22222222-2222-4222-8222-222222222222",
        "created": "2024-01-01T00:00:00Z",
        "modified": "2024-01-01T00:00:00Z",
        "name": "Poison Ivy",
        "is_family": True,
        **extra,
    }


def indicator(n, pattern, **extra):
    return {
        "type": "indicator",
        "spec_version": "2.1",
        "id": f"indicator--00000000-0000-4000-8000-00000000000{n}",
        "created": "2024-01-01T00:00:00Z",
        "modified": "2024-01-01T00:00:00Z",
        "pattern": pattern,
        "pattern_type": "stix",
        "valid_from": "2024-01-01T00:00:00Z",
        **extra,
    }


@pytest.mark.parametrize(
    ("pattern", "expected", "warned"),
    [
        ("[ipv4-addr:value = '198.51.100.1']", [(None, "198.51.100.1")], False),
        ("[ipv4-addr:value = '1.2.3.4' OR domain-name:value = 'evil.com']", [(None, "1.2.3.4"), ("domain", "evil.com")], False),
        ("[file:hashes.'SHA-256' = 'ab' OR file:hashes.MD5 = 'cd']", [("sha256", "ab"), ("md5", "cd")], False),
        ("[file:hashes.'SHA-1' = 'ef']", [("sha1", "ef")], False),
        (
            "[url:value = 'http://x.example/a'] AND [email-addr:value = 'a@b.example']",
            [("url", "http://x.example/a"), ("email", "a@b.example")],
            True,
        ),
        ("[file:parent_directory_ref.path = 'C:\\\\Temp' AND file:name = 'evil.exe']", [("file_path", "C:\\Temp\\evil.exe")], False),
        ("[domain-name:value IN ('a.example', 'b.example')]", [("domain", "a.example"), ("domain", "b.example")], False),
        ("[network-traffic:dst_ref.value = '203.0.113.9']", [(None, "203.0.113.9")], False),
        ("[file:hashes.MD5 = 'cd' AND file:size = 3]", [("md5", "cd")], True),
        ("[ipv4-addr:value = '1.1.1.1'] REPEATS 3 TIMES", [(None, "1.1.1.1")], True),
        # No value: no reason either (the importer reports the pattern as naming no supported indicator).
        ("[email-message:subject MATCHES '^x']", [], False),
    ],
)
def test_pattern_values(pattern, expected, warned):
    found, reason = pattern_values(pattern)
    assert found == expected
    assert (reason is not None) == warned


def test_one_bad_object_is_an_error_of_that_object_not_a_refused_bundle():
    """A real report's bundle was refused whole for one object: a pattern the grammar rejects (a syntax error, or a
    Windows path with its backslashes not doubled), an indicator with no pattern, a relationship with no source_ref
    or target_ref. This test used to pin the refusal of the document as the design; each is now an error of that
    object (its id, the reason) and every other object imports."""
    malware = poison_ivy()
    good = indicator(1, "[ipv4-addr:value = '198.51.100.1']")
    syntax = indicator(2, "[ipv4-addr:value = ]")
    backslash = indicator(3, "[file:name = 'C:\\Windows\\x.exe']", spec_version="2.0")
    no_pattern = {k: v for k, v in indicator(4, "").items() if k != "pattern"}
    entropy = indicator(5, "[file:extensions.'windows-pebinary-ext'.sections[*].entropy > 7.0]")  # STIX 2.0 spec example
    half = {
        "type": "relationship",
        "spec_version": "2.1",
        "id": "relationship--44444444-4444-4444-8444-444444444441",
        "created": "2024-01-01T00:00:00Z",
        "modified": "2024-01-01T00:00:00Z",
        "relationship_type": "indicates",
        "source_ref": good["id"],
    }
    link = {**half, "id": "relationship--44444444-4444-4444-8444-444444444442", "target_ref": malware["id"]}
    parsed = parse("stix", bundle(good, syntax, backslash, no_pattern, entropy, malware, half, link))
    assert [(p.ref, p.item.value) for p in parsed.iocs] == [(good["id"], "198.51.100.1")]
    assert [t.item.name for t in parsed.threats] == ["Poison Ivy"]
    assert [(x.ioc_ref, x.threat_ref) for x in parsed.links] == [(good["id"], malware["id"])]
    errors = {e.ref: e.reason for e in parsed.errors}
    assert set(errors) == {syntax["id"], backslash["id"], no_pattern["id"], entropy["id"], half["id"]}
    assert errors[syntax["id"]].startswith(f"objects[1] ({syntax['id']}): pattern is not valid STIX patterning:")
    assert "not valid STIX patterning" in errors[backslash["id"]] and "backslash" in errors[backslash["id"]]
    assert errors[no_pattern["id"]] == f"objects[3] ({no_pattern['id']}): an indicator needs a pattern"
    assert errors[entropy["id"]].startswith("the pattern names no supported indicator")
    assert errors[half["id"]] == f"objects[6] ({half['id']}): a relationship needs source_ref and target_ref"


@pytest.mark.parametrize(
    ("doc", "message"),
    [
        ("[1, 2]", r"objects\[0\] is not a STIX object"),
        ('{"type": "bundle", "objects": {}}', "bundle.objects must be a list"),
        ('{"hello": 1}', "not a STIX bundle or object"),
        ("{", "not valid JSON"),
    ],
)
def test_malformed_bundles(doc, message):
    with pytest.raises(ValidationError, match=message):
        parse("stix", doc)


def test_objects_map_to_iocs_threats_links_and_ttps():
    malware = poison_ivy(
        aliases=["PIVY", "Poison Ivy"],
        first_seen="2015-01-01T00:00:00Z",
        external_references=[{"source_name": "mitre-attack", "external_id": "S0012", "url": "https://attack.mitre.org/software/S0012"}],
        object_marking_refs=[AMBER],
    )
    technique = {
        "type": "attack-pattern",
        "spec_version": "2.1",
        "id": "attack-pattern--33333333-3333-4333-8333-333333333333",
        "created": "2024-01-01T00:00:00Z",
        "modified": "2024-01-01T00:00:00Z",
        "name": "Command and Scripting Interpreter",
        "external_references": [{"source_name": "mitre-attack", "external_id": "T1059"}],
    }

    def rel(n, source, kind, target):
        return {
            "type": "relationship",
            "spec_version": "2.1",
            "id": f"relationship--44444444-4444-4444-8444-44444444444{n}",
            "created": "2024-01-01T00:00:00Z",
            "modified": "2024-01-01T00:00:00Z",
            "source_ref": source,
            "relationship_type": kind,
            "target_ref": target,
        }

    ind1 = indicator(
        1,
        "[domain-name:value = 'evil.example.com']",
        labels=["C2"],
        indicator_types=["malicious-activity"],
        confidence=85,
        valid_until="2030-01-01T00:00:00Z",
        object_marking_refs=[AMBER],
    )
    ind2 = indicator(2, "[ipv4-addr:value = '203.0.113.5']")
    parsed = parse(
        "stix",
        bundle(
            ind1,
            ind2,
            malware,
            technique,
            rel(1, ind1["id"], "indicates", malware["id"]),
            rel(2, malware["id"], "uses", technique["id"]),
            rel(3, ind1["id"], "resolves-to", ind2["id"]),
            rel(4, ind2["id"], "beacons-to", ind1["id"]),
        ),
    )
    first = parsed.iocs[0]
    assert first.ref == ind1["id"] and first.item.value == "evil.example.com" and first.item.type == "domain"
    assert first.item.tags == ["c2", "malicious-activity"] and first.item.tlp == "amber" and first.item.confidence == 85
    assert first.item.expires_at.year == 2030
    (threat,) = parsed.threats
    assert threat.ref == malware["id"] and threat.item.name == "Poison Ivy" and str(threat.item.kind) == "malware"
    assert threat.item.aliases == ["PIVY"] and threat.item.ttps == ["T1059"] and threat.item.stix_id == malware["id"]
    assert threat.item.tlp == "amber" and threat.item.references[0].external_id == "S0012"
    assert [(link.ioc_ref, link.threat_ref, link.relation) for link in parsed.links] == [(ind1["id"], malware["id"], "indicates")]
    assert [(r.source_ref, r.target_ref, r.type) for r in parsed.relations] == [
        (ind1["id"], ind2["id"], "resolves-to"),
        (ind2["id"], ind1["id"], "related-to"),
    ]


def test_scos_and_observed_data_are_iocs():
    doc = bundle(
        {"type": "ipv4-addr", "spec_version": "2.1", "id": "ipv4-addr--55555555-5555-4555-8555-555555555555", "value": "192.0.2.7"},
        {
            "type": "file",
            "spec_version": "2.1",
            "id": "file--66666666-6666-4666-8666-666666666666",
            "hashes": {
                "MD5": "d41d8cd98f00b204e9800998ecf8427e",
                "SHA-256": "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855",
            },
        },
    )
    parsed = parse("stix", doc)
    assert [(p.item.type, p.item.value) for p in parsed.iocs] == [
        (None, "192.0.2.7"),
        ("md5", "d41d8cd98f00b204e9800998ecf8427e"),
        ("sha256", "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"),
    ]


@pytest.mark.parametrize("fmt", ["stix", "misp", "json"])
@pytest.mark.parametrize("kind", [bytes, str])
def test_a_document_nested_past_the_decoder_is_refused_not_a_crash(fmt, kind):
    """An uploaded or inline document is JSON text the request's own depth check never sees (it is a string
    there); 5,000 levels made msgspec raise RecursionError: a 500 on the API, and in the import worker a
    retryable error redelivered until the dead letter."""
    deep = '{"objects": ' + "[" * 5000 + "]" * 5000 + "}"
    with pytest.raises(ValidationError) as caught:
        parse(fmt, deep.encode() if kind is bytes else deep)
    assert "nests deeper than" in str(caught.value)


def test_an_and_across_object_types_is_taken_value_by_value_not_a_refused_bundle():
    """MISP's STIX 2.1 export writes a hostname|port attribute as a domain AND a port. That is valid patterning
    (the OASIS validator passes it), but stix2's pattern builder refuses an AND across object types, and the one
    indicator refused the whole bundle as "not valid STIX patterning"."""
    doc = bundle(
        indicator(1, "[ipv4-addr:value = '198.51.100.1']"),
        indicator(2, "[domain-name:value = 'c2.example.com' AND network-traffic:dst_port = '8443']"),
        indicator(
            3,
            "[network-traffic:src_port = 37020 AND user-account:user_id = 'root'] START t'2016-06-01T01:30:00.123Z'"
            " STOP t'2016-06-01T02:20:00.123Z' OR [ipv4-addr:value = '192.0.2.83']",
        ),
    )
    parsed = parse("stix", doc)
    values = [(p.item.type, p.item.value) for p in parsed.iocs]
    assert values == [(None, "198.51.100.1"), ("domain", "c2.example.com"), (None, "192.0.2.83")]
    warned = {w.ref: w.reason for w in parsed.warnings}
    assert "AND" in warned["indicator--00000000-0000-4000-8000-000000000002"]


def test_a_tlp_red_marking_is_never_lost():
    """A TLP:RED indicator must never come in less restricted. Granular markings (STIX 2.1 marks the pattern or the
    description alone) and a TLP 2.0 marking the bundle defines by its extension only (no name) were not read, so
    these came in with no TLP: amber, or whatever TLP the request named."""
    red = "marking-definition--e828b379-4e03-4974-9ac4-e53a884c97c1"  # TLP 2.0 RED
    green = "marking-definition--bab4a63c-aed9-4cf5-a766-dfca5abac2bb"
    own_red = {
        "type": "marking-definition",
        "spec_version": "2.1",
        "id": "marking-definition--12345678-1234-4234-8234-123456789012",
        "created": "2022-10-01T00:00:00Z",
        "extensions": {
            "extension-definition--60a3c5c5-0d10-413e-aab3-9e08dde9e88d": {"extension_type": "property-extension", "tlp_2_0": "red"}
        },
    }
    doc = bundle(
        own_red,
        indicator(1, "[ipv4-addr:value = '198.51.100.1']", granular_markings=[{"marking_ref": red, "selectors": ["pattern"]}]),
        indicator(
            2,
            "[ipv4-addr:value = '198.51.100.2']",
            description="seen at the victim",
            object_marking_refs=[green],
            granular_markings=[{"marking_ref": red, "selectors": ["description"]}],
        ),
        indicator(3, "[ipv4-addr:value = '198.51.100.3']", object_marking_refs=[own_red["id"]]),
    )
    parsed = parse("stix", doc).with_defaults(tlp="green")
    assert [(p.item.value, p.item.tlp) for p in parsed.iocs] == [("198.51.100.1", "red"), ("198.51.100.2", "red"), ("198.51.100.3", "red")]


def test_revoked_objects_are_skipped_not_imported():
    """A producer withdraws an indicator by publishing a new version with `revoked: true` (TAXII collections,
    OpenCTI), and ATT&CK's bundles keep their revoked groups and software. The latest version won and was imported
    all the same: an active IoC, a threat, and the link between them."""
    withdrawn = indicator(1, "[ipv4-addr:value = '198.51.100.1']")
    revoked = {**withdrawn, "modified": "2024-02-01T00:00:00Z", "revoked": True}
    group = {
        "type": "intrusion-set",
        "spec_version": "2.1",
        "id": "intrusion-set--77777777-7777-4777-8777-777777777777",
        "created": "2024-01-01T00:00:00Z",
        "modified": "2024-01-01T00:00:00Z",
        "name": "Old Name",
        "revoked": True,
    }
    link = {
        "type": "relationship",
        "spec_version": "2.1",
        "id": "relationship--88888888-8888-4888-8888-888888888888",
        "created": "2024-01-01T00:00:00Z",
        "modified": "2024-01-01T00:00:00Z",
        "relationship_type": "indicates",
        "source_ref": withdrawn["id"],
        "target_ref": group["id"],
    }
    parsed = parse("stix", bundle(withdrawn, revoked, indicator(2, "[ipv4-addr:value = '198.51.100.2']"), group, link))
    assert [p.item.value for p in parsed.iocs] == ["198.51.100.2"]
    assert parsed.threats == [] and parsed.links == []
    assert parsed.skipped["revoked indicator"] == 1 and parsed.skipped["revoked intrusion-set"] == 1


def test_a_domain_resolving_to_an_address_gives_both():
    """MISP's domain|ip attribute, and the patterning spec's "domain name with IPv4 resolution" example, compare
    `domain-name:resolves_to_refs[*].value`: the address was dropped as "not an indicator type ThreatFlow stores"."""
    found, _ = pattern_values("[domain-name:value = 'circl.example' AND domain-name:resolves_to_refs[*].value = '198.51.100.14']")
    assert found == [("domain", "circl.example"), (None, "198.51.100.14")]


def resolved(parsed):
    """The (name, address) pairs the parse relates as resolves-to, through the refs each IoC answers to."""
    values_of: dict[str, list[str]] = {}
    for p in parsed.iocs:
        for ref in (p.ref, *getattr(p, "parts", ())):
            values_of.setdefault(ref, []).append(p.item.value)
    return sorted(
        (name, address)
        for r in parsed.relations
        if r.type == "resolves-to"
        for name in values_of.get(r.source_ref, [])
        for address in values_of.get(r.target_ref, [])
    )


def test_misps_stix20_domain_ip_indicator_gives_the_domain_resolving_to_the_address():
    """MISP's STIX 2.0 export writes a domain|ip attribute as one indicator, `[domain-name:value = … AND
    domain-name:resolves_to_refs[*].value = …]`: both values came in, unrelated and with a warning that AND is not
    kept, where MISP's own domain|ip makes the domain resolve to the address. The indicator's threat links still
    reach both IoCs (both keep the indicator's id as their ref)."""
    ind = {
        "type": "indicator",
        "id": "indicator--5b23c82b-6508-4bdc-b580-045b0a00020f",
        "created": "2018-06-15T08:33:15.000Z",
        "modified": "2018-06-15T08:33:15.000Z",
        "labels": ['misp:type="domain|ip"', 'misp:category="Network activity"', 'misp:to_ids="True"'],
        "pattern": "[domain-name:value = 'circl.lu' AND domain-name:resolves_to_refs[*].value = '149.13.33.14']",
        "valid_from": "2018-06-15T08:33:15Z",
    }
    malware = {**poison_ivy(), "spec_version": "2.0", "labels": ["remote-access-trojan"]}
    indicates = {
        "type": "relationship",
        "id": "relationship--5b23c82b-6508-4bdc-b580-045b0a00021f",
        "relationship_type": "indicates",
        "source_ref": ind["id"],
        "target_ref": malware["id"],
    }
    doc = json.dumps(
        {
            "type": "bundle",
            "id": "bundle--5b23c82b-6508-4bdc-b580-045b0a000000",
            "spec_version": "2.0",
            "objects": [ind, malware, indicates],
        }
    )
    parsed = parse("stix", doc)
    assert [(p.ref, p.item.value) for p in parsed.iocs] == [(ind["id"], "circl.lu"), (ind["id"], "149.13.33.14")]
    assert resolved(parsed) == [("circl.lu", "149.13.33.14")]
    assert [(link.ioc_ref, link.threat_ref) for link in parsed.links] == [(ind["id"], malware["id"])]
    assert not parsed.warnings and not parsed.errors


@pytest.mark.parametrize(
    ("pattern", "pairs", "warned"),
    [
        (
            "[domain-name:value = 'a.example' AND domain-name:resolves_to_refs[*].value = '198.51.100.1']",
            [("a.example", "198.51.100.1")],
            False,
        ),
        (
            "[domain-name:resolves_to_refs[*].value IN ('198.51.100.1', '2001:db8::1') AND domain-name:value = 'a.example']",
            [("a.example", "198.51.100.1"), ("a.example", "2001:db8::1")],
            False,
        ),
        (
            "[(domain-name:value = 'a.example' OR domain-name:value = 'b.example')"
            " AND domain-name:resolves_to_refs[*].value = '198.51.100.1']",
            [("a.example", "198.51.100.1"), ("b.example", "198.51.100.1")],
            False,
        ),
        # AND binds tighter than OR: b.example is not said to resolve to anything
        (
            "[domain-name:value = 'a.example' AND domain-name:resolves_to_refs[*].value = '198.51.100.1'"
            " OR domain-name:value = 'b.example']",
            [("a.example", "198.51.100.1")],
            False,
        ),
        (
            "[domain-name:value = 'a.example' AND domain-name:resolves_to_refs[*].value = '198.51.100.1']"
            " OR [domain-name:value = 'b.example' AND domain-name:resolves_to_refs[*].value = '198.51.100.2']",
            [("a.example", "198.51.100.1"), ("b.example", "198.51.100.2")],
            False,
        ),
        # OR, or two observations: the name and the address need not belong to one object
        ("[domain-name:value = 'a.example' OR domain-name:resolves_to_refs[*].value = '198.51.100.1']", [], False),
        ("[domain-name:value = 'a.example'] AND [domain-name:resolves_to_refs[*].value = '198.51.100.1']", [], True),
        ("[domain-name:value = 'a.example'] FOLLOWEDBY [domain-name:resolves_to_refs[*].value = '198.51.100.1']", [], True),
        # an AND that also compares another value: the relation holds, the url is taken as its own IoC (warned)
        (
            "[domain-name:value = 'a.example' AND domain-name:resolves_to_refs[*].value = '198.51.100.1' AND url:value = 'http://a.example/x']",
            [("a.example", "198.51.100.1")],
            True,
        ),
    ],
)
def test_a_domain_resolves_to_the_addresses_its_own_observation_ands_it_with(pattern, pairs, warned):
    """STIX 2.1's form of the same pattern: the names of one observation resolve to the addresses compared in its
    `resolves_to_refs[*].value` when the two are joined by AND (one domain-name object), never across OR or across
    observations. Where the AND is kept as that relation, it is no longer reported as not kept."""
    parsed = parse("stix", bundle(indicator(1, pattern)))
    assert resolved(parsed) == pairs
    assert any("not kept together" in w.reason for w in parsed.warnings) == warned
    assert {p.ref for p in parsed.iocs} == {"indicator--00000000-0000-4000-8000-000000000001"}


def test_an_address_in_a_subnet_is_the_subnet():
    """`ipv4-addr:value ISSUBSET '198.51.100.0/24'` (the patterning spec's "IP address or an identical IP subnet")
    matches every address of the network: the CIDR is the indicator. It named no value and was an error.
    ISSUPERSET, and ISSUBSET negated, match no one network and stay out."""
    found, _ = pattern_values(
        "[ipv4-addr:value ISSUBSET '198.51.100.0/24' OR network-traffic:dst_ref.value ISSUBSET '2001:db8:dead:beef::/64']"
    )
    assert found == [(None, "198.51.100.0/24"), (None, "2001:db8:dead:beef::/64")]
    assert pattern_values("[ipv4-addr:value ISSUPERSET '198.51.100.0/24' OR ipv4-addr:value NOT ISSUBSET '10.0.0.0/8']")[0] == []
    assert pattern_values("[domain-name:value ISSUBSET 'example.com']")[0] == []


@pytest.mark.parametrize(
    "pattern",
    [
        "[domain-name:value = 'evil.example' AND domain-name:value NOT IN ('google.com', 'microsoft.com')]",
        "[domain-name:value = 'evil.example'] OR [domain-name:value NOT IN ('google.com', 'microsoft.com')]",
    ],
)
def test_values_a_pattern_excludes_are_not_iocs(pattern):
    """stix2's pattern builder drops NOT before IN (and LIKE, MATCHES, ISSUBSET, ISSUPERSET): the values an
    analyst listed to exclude, often the big benign services, were imported as indicators."""
    assert pattern_values(pattern)[0] == [("domain", "evil.example")]


def test_the_latest_version_of_an_object_wins_whatever_its_precision():
    """`modified` was compared as text, and '2024-01-01T00:00:00Z' sorts after '2024-01-01T00:00:00.500Z'
    ('Z' > '.'): the older version won when only the newer one carried milliseconds."""
    old = indicator(1, "[ipv4-addr:value = '198.51.100.1']", modified="2024-01-01T00:00:00Z")
    new = indicator(1, "[ipv4-addr:value = '198.51.100.2']", modified="2024-01-01T00:00:00.500Z")
    assert [p.item.value for p in parse("stix", bundle(old, new)).iocs] == ["198.51.100.2"]
    assert [p.item.value for p in parse("stix", bundle(new, old)).iocs] == ["198.51.100.2"]


def test_opencti_connectors_tlp_amber_strict_marking_is_amber_strict():
    """OpenCTI's connectors write TLP:AMBER+STRICT (which STIX 1.0 TLP lacks) as a statement marking with no name,
    the level in `x_opencti_definition`. It was not read: the indicator came in as amber, or the request's TLP."""
    strict = {
        "type": "marking-definition",
        "spec_version": "2.1",
        "id": "marking-definition--826578e1-40a3-4b46-a2d5-f3a5a0d8c2ae",
        "created": "2024-01-01T00:00:00Z",
        "definition_type": "statement",
        "definition": {"statement": "custom"},
        "x_opencti_definition_type": "TLP",
        "x_opencti_definition": "TLP:AMBER+STRICT",
    }
    doc = bundle(strict, indicator(1, "[ipv4-addr:value = '198.51.100.1']", object_marking_refs=[strict["id"]]))
    assert [p.item.tlp for p in parse("stix", doc).with_defaults(tlp="clear").iocs] == ["amber+strict"]


def test_observed_data_and_indicators_give_when_the_value_was_first_seen():
    """observed-data's `first_observed` and an indicator's `valid_from` say since when a value is known; both were
    dropped, so every imported IoC was first seen at the import. A future time is left out, never an error."""
    from datetime import UTC, datetime

    observed = {
        "type": "observed-data",
        "spec_version": "2.1",
        "id": "observed-data--77777777-7777-4777-8777-777777777777",
        "created": "2024-01-01T00:00:00Z",
        "modified": "2024-01-01T00:00:00Z",
        "first_observed": "2021-03-04T05:06:07Z",
        "last_observed": "2021-03-05T00:00:00Z",
        "number_observed": 1,
        "objects": {"0": {"type": "ipv4-addr", "value": "192.0.2.70"}},
    }
    doc = bundle(
        observed,
        indicator(1, "[domain-name:value = 'old.example.com']", valid_from="2020-01-02T03:04:05.5Z"),
        indicator(2, "[domain-name:value = 'future.example.com']", valid_from="2999-01-01T00:00:00Z"),
    )
    parsed = parse("stix", doc)
    seen = {p.item.value: p.item.first_seen for p in parsed.iocs}
    assert seen["192.0.2.70"] == datetime(2021, 3, 4, 5, 6, 7, tzinfo=UTC)
    assert seen["old.example.com"] == datetime(2020, 1, 2, 3, 4, 5, 500000, tzinfo=UTC)
    assert seen["future.example.com"] is None


def test_a_marking_definition_with_a_malformed_id_still_marks_what_names_it():
    """Since an entry whose id does not start with its type-- became an error of that entry (the rest imports), a TLP
    marking definition with such an id was dropped and the objects it marks imported with no TLP at all: a TLP:RED
    indicator came in at the import's default, where the bundle had been refused whole before."""
    bundle = {
        "type": "bundle",
        "id": "bundle--1",
        "objects": [
            {"type": "marking-definition", "id": "tlp-red-marking", "definition_type": "tlp", "definition": {"tlp": "red"}},
            {
                "type": "indicator",
                "id": "indicator--1",
                "pattern": "[ipv4-addr:value = '198.51.100.7']",
                "pattern_type": "stix",
                "valid_from": "2020-01-01T00:00:00Z",
                "object_marking_refs": ["tlp-red-marking"],
            },
        ],
    }
    parsed = parse("stix", bundle)
    assert [(p.item.value, p.item.tlp) for p in parsed.iocs] == [("198.51.100.7", "red")]
    assert [e.ref for e in parsed.errors] == ["tlp-red-marking"]


@pytest.mark.parametrize(
    "marking",
    [
        {"definition_type": "tlp", "definition": {"tlp": "TLP_RED"}},
        {"definition_type": "tlp", "definition": {"tlp": "tlp-red"}},
        {
            "definition_type": "statement",
            "definition": {"statement": "x"},
            "x_opencti_definition_type": "TLP",
            "x_opencti_definition": "TLP: RED",
        },
        {"name": "TLP-RED", "definition_type": "statement", "definition": {"statement": "x"}},
    ],
    ids=["underscore", "dash", "opencti-spaced", "name-dash"],
)
def test_a_loosely_spelled_stix_tlp_marking_is_read_as_that_tlp(marking):
    """Tlp.parse reads producers' `TLP: RED`, `tlp-red`, `TLP_RED` (OTX and MISP take them since today), but a STIX
    marking's level was read by its own `tlp:` strip: such a marking was no TLP, and the TLP:RED indicator it marks
    came in at the import's default TLP."""
    red = {
        "type": "marking-definition",
        "spec_version": "2.1",
        "id": "marking-definition--0b7c2f3e-1a2b-4c3d-8e4f-5a6b7c8d9e0f",
        "created": "2024-01-01T00:00:00Z",
        **marking,
    }
    doc = bundle(red, indicator(1, "[ipv4-addr:value = '198.51.100.1']", object_marking_refs=[red["id"]]))
    assert [p.item.tlp for p in parse("stix", doc).with_defaults(tlp="clear").iocs] == ["red"]


def _indicator_bundle(pattern: str) -> str:
    indicator = {
        "type": "indicator",
        "spec_version": "2.1",
        "id": "indicator--5d0fa6a5-51c4-4d2b-8a3e-0d6a9a3c1f01",
        "created": "2024-01-01T00:00:00Z",
        "modified": "2024-01-01T00:00:00Z",
        "pattern_type": "stix",
        "valid_from": "2024-01-01T00:00:00Z",
        "pattern": pattern,
    }
    return json.dumps({"type": "bundle", "id": "bundle--5d0fa6a5-51c4-4d2b-8a3e-0d6a9a3c1f00", "objects": [indicator]})


@pytest.mark.parametrize("count", [400, 5000])
def test_a_pattern_oring_hundreds_of_values_gives_the_first_hundred(count):
    """A blocklist written as one indicator, `[ipv4-addr:value = 'a' OR … ]`: past about 330 ORs the grammar's tree
    walk hit Python's recursion limit and the indicator was an error with an empty reason ("pattern is not valid STIX
    patterning: "), so nothing of it was imported. It gives its first 100 values, as an `IN (...)` list does, and says
    the rest was left out."""
    addresses = [f"198.51.{i // 250}.{i % 250 + 1}" for i in range(count)]
    pattern = "[" + " OR ".join(f"ipv4-addr:value = '{a}'" for a in addresses) + "]"
    parsed = parse("stix", _indicator_bundle(pattern))
    assert parsed.errors == []
    assert [p.item.value for p in parsed.iocs] == addresses[:100]
    assert any(f"{count - 100} more comparisons past the first 100 were not read" in w.reason for w in parsed.warnings), parsed.warnings


def test_a_long_or_keeps_what_each_of_its_comparisons_says():
    """Read in pieces, a long OR still reads each comparison as a whole pattern would: a domain ANDed with the
    address it resolves to (parenthesised, after 400 ORs of other names) still resolves to it, quoted strings holding
    ` OR ` and brackets are not cut, and a qualifier after the observation is still named."""
    names = [f"'n{i}.example.com'" for i in range(400)]
    tail = "(domain-name:value = 'late.example.com' AND domain-name:resolves_to_refs[*].value = '203.0.113.9')"
    odd = "url:value = 'http://x.example.com/a OR [b] (c)'"
    pattern = "[" + " OR ".join([odd, tail, *(f"domain-name:value = {n}" for n in names)]) + "]"
    parsed = parse("stix", _indicator_bundle(pattern))
    assert parsed.errors == []
    values = [p.item.value for p in parsed.iocs]
    assert values[:3] == ["http://x.example.com/a OR [b] (c)", "late.example.com", "203.0.113.9"]
    assert resolved(parsed) == [("late.example.com", "203.0.113.9")]
    qualified = parse("stix", _indicator_bundle(pattern + " WITHIN 600 SECONDS"))
    assert qualified.errors == [] and any("qualifier" in w.reason for w in qualified.warnings), qualified.warnings


def test_a_long_or_wrapped_in_parentheses_is_read_in_pieces_too():
    """`[(a OR b OR …)]`, the whole observation in one parenthesis (as some exporters write it), is the same OR:
    400 of them were an error (the tree walk's recursion limit)."""
    addresses = [f"198.51.{i // 250}.{i % 250 + 1}" for i in range(400)]
    pattern = "[((" + " OR ".join(f"ipv4-addr:value = '{a}'" for a in addresses) + "))]"
    parsed = parse("stix", _indicator_bundle(pattern))
    assert parsed.errors == [] and [p.item.value for p in parsed.iocs] == addresses[:100]


def test_a_pattern_nesting_too_deeply_to_read_says_so():
    """400 ORs inside a parenthesis that is not the whole observation are not the observation's own, so they are
    not read in pieces: the error names why (it was an empty reason)."""
    inner = " OR ".join(f"ipv4-addr:value = '198.51.100.{i % 250 + 1}'" for i in range(400))
    pattern = f"[({inner}) AND ipv4-addr:value = '198.51.100.1']"
    [error] = parse("stix", _indicator_bundle(pattern)).errors
    assert "nests too deeply to read (400 ORs and ANDs" in error.reason, error.reason


def _sdo(kind, n, **fields):
    stamp = {"spec_version": "2.1", "created": "2024-01-01T00:00:00Z", "modified": "2024-01-01T00:00:00Z"}
    return {"type": kind, "id": f"{kind}--00000000-0000-4000-8000-0000000001{n:02d}", **stamp, **fields}


@pytest.mark.parametrize("shape", [True, 1, ["uses"], {"verb": "uses"}], ids=["bool", "int", "list", "map"])
def test_a_relationship_type_that_is_no_string_is_related_to_with_a_warning(shape):
    """`"relationship_type": true` between two threats was stored as the verb `true` (str() of it), with no word
    said; any other value that is no string is read as no verb: related-to, named in a warning."""
    actor, tool = _sdo("threat-actor", 1, name="Shape Actor"), _sdo("tool", 2, name="Shape Tool")
    rel = _sdo("relationship", 3, relationship_type=shape, source_ref=actor["id"], target_ref=tool["id"])
    parsed = parse("stix", bundle(actor, tool, rel))
    assert [(r.source_ref, r.type, r.target_ref) for r in parsed.threat_relations] == [(actor["id"], "related-to", tool["id"])]
    assert [w.ref for w in parsed.warnings] == [rel["id"]]


def test_uses_in_any_case_between_a_threat_and_an_attack_pattern_is_a_ttp():
    """`USES` (or ` Uses `) between two threats is the verb `uses`, as POST /threats/{id}/relations reads it, but
    between a threat and an attack pattern it was no `uses`: the technique was lost (`skipped` as relationship:USES)."""
    actor = _sdo("intrusion-set", 1, name="Case Set")
    technique = [{"source_name": "mitre-attack", "external_id": "T1059.001"}]
    pattern = _sdo("attack-pattern", 2, name="PowerShell", external_references=technique)
    rel = _sdo("relationship", 3, relationship_type=" USES ", source_ref=actor["id"], target_ref=pattern["id"])
    parsed = parse("stix", bundle(actor, pattern, rel))
    assert [t.item.ttps for t in parsed.threats] == [["T1059.001"]]
    assert not any(k.startswith("relationship:") for k in parsed.skipped), parsed.skipped


def test_a_relationship_verb_spelled_with_spaces_underscores_or_capitals_is_read_as_its_tidy_word():
    """`Attributed To`, `attributed_to`, ` Uses ` between two threats were kept as related-to, each with a warning, and
    `Indicates ` or `Based_On` between an indicator and a threat reached the store as written (refused there). They are
    read as the API reads them: lower-case, trimmed, runs of spaces and underscores one hyphen."""
    campaign, actor = _sdo("campaign", 1, name="Verb Campaign"), _sdo("intrusion-set", 2, name="Verb Set")
    tool = _sdo("tool", 3, name="Verb Tool")
    indicator = _sdo(
        "indicator", 4, pattern_type="stix", pattern="[domain-name:value = 'verbs.example.net']", valid_from="2024-01-01T00:00:00Z"
    )
    rels = [
        _sdo("relationship", 5, relationship_type="Attributed To", source_ref=campaign["id"], target_ref=actor["id"]),
        _sdo("relationship", 6, relationship_type="attributed_to", source_ref=tool["id"], target_ref=actor["id"]),
        _sdo("relationship", 7, relationship_type=" Uses ", source_ref=actor["id"], target_ref=tool["id"]),
        _sdo("relationship", 8, relationship_type="Indicates ", source_ref=indicator["id"], target_ref=tool["id"]),
        _sdo("relationship", 9, relationship_type="Based_On", source_ref=actor["id"], target_ref=indicator["id"]),
    ]
    parsed = parse("stix", bundle(campaign, actor, tool, indicator, *rels))
    assert [(r.source_ref, r.type, r.target_ref) for r in parsed.threat_relations] == [
        (campaign["id"], "attributed-to", actor["id"]),
        (tool["id"], "attributed-to", actor["id"]),
        (actor["id"], "uses", tool["id"]),
    ]
    assert [(link.ioc_ref, link.relation, link.threat_ref) for link in parsed.links] == [
        (indicator["id"], "indicates", tool["id"]),
        (indicator["id"], "based-on", actor["id"]),
    ]
    assert parsed.warnings == [] and parsed.errors == []


def test_a_relationship_verb_with_separators_at_either_end_is_read_without_them():
    """`uses_` and `uses-` between two threats were the verb `uses-`, a relation beside `uses` for the same pair, and
    `_uses` was kept as related-to with a warning; `indicates_` between an indicator and a threat was `indicates-`.
    A separator at either end is dropped, as the API reads the verb."""
    actor, tool = _sdo("intrusion-set", 1, name="Edge Verb Set"), _sdo("tool", 2, name="Edge Verb Tool")
    indicator = _sdo(
        "indicator", 3, pattern_type="stix", pattern="[domain-name:value = 'edge-verbs.example.net']", valid_from="2024-01-01T00:00:00Z"
    )
    rels = [
        _sdo("relationship", 4, relationship_type="uses_", source_ref=actor["id"], target_ref=tool["id"]),
        _sdo("relationship", 5, relationship_type="uses-", source_ref=actor["id"], target_ref=tool["id"]),
        _sdo("relationship", 6, relationship_type="_uses", source_ref=tool["id"], target_ref=actor["id"]),
        _sdo("relationship", 7, relationship_type="indicates_", source_ref=indicator["id"], target_ref=tool["id"]),
    ]
    parsed = parse("stix", bundle(actor, tool, indicator, *rels))
    assert [(r.source_ref, r.type, r.target_ref) for r in parsed.threat_relations] == [
        (actor["id"], "uses", tool["id"]),
        (actor["id"], "uses", tool["id"]),
        (tool["id"], "uses", actor["id"]),
    ]
    assert [(link.ioc_ref, link.relation, link.threat_ref) for link in parsed.links] == [(indicator["id"], "indicates", tool["id"])]
    assert parsed.warnings == [] and parsed.errors == []


def test_a_link_verb_that_is_no_word_is_related_to_with_a_warning():
    """Between an indicator and a threat, a verb no reading makes tidy reached the store as written, which refused it:
    the whole import was a 400 for one relationship. It is kept as related-to and named, as between two threats."""
    tool = _sdo("tool", 1, name="Odd Link Tool")
    indicator = _sdo(
        "indicator", 2, pattern_type="stix", pattern="[domain-name:value = 'odd-link.example.net']", valid_from="2024-01-01T00:00:00Z"
    )
    rel = _sdo("relationship", 3, relationship_type="Loads Into Memory!", source_ref=indicator["id"], target_ref=tool["id"])
    parsed = parse("stix", bundle(tool, indicator, rel))
    assert [(link.ioc_ref, link.relation, link.threat_ref) for link in parsed.links] == [(indicator["id"], "related-to", tool["id"])]
    assert [w.ref for w in parsed.warnings] == [rel["id"]] and "related-to" in parsed.warnings[0].reason


def test_relationships_with_untidy_verbs_are_named_up_to_a_bound_then_counted_in_one_warning():
    """Each relationship whose verb is kept as related-to added its own warning: 100,000 of them answered ~100,000
    warnings, a 16 MB sync answer. The first MAX_UNTIDY_VERB_WARNINGS are named, the rest counted in one warning;
    every one of them is still kept as related-to."""
    named_at_most = 100  # formats/stix.py MAX_UNTIDY_VERB_WARNINGS
    actor, tool = _sdo("threat-actor", 1, name="Many Verbs Actor"), _sdo("tool", 2, name="Many Verbs Tool")
    indicator = _sdo(
        "indicator", 3, pattern_type="stix", pattern="[domain-name:value = 'many-verbs.example.net']", valid_from="2024-01-01T00:00:00Z"
    )
    extra = 150
    rels = [
        {
            **_sdo("relationship", 4, relationship_type=f"verb #{i}!", source_ref=actor["id"], target_ref=tool["id"]),
            "id": f"relationship--00000000-0000-4000-8000-9{i:011d}",
            **({"source_ref": indicator["id"]} if i % 2 else {}),  # links and threat relations share the bound
        }
        for i in range(named_at_most + extra)
    ]
    tidy = _sdo("relationship", 5, relationship_type="Variant Of", source_ref=tool["id"], target_ref=actor["id"])
    parsed = parse("stix", bundle(actor, tool, indicator, *rels, tidy))
    assert len(parsed.threat_relations) + len(parsed.links) == len(rels) + 1
    assert {r.type for r in parsed.threat_relations} == {"related-to", "variant-of"}
    assert {link.relation for link in parsed.links} == {"related-to"}
    named, (summary,) = parsed.warnings[:-1], parsed.warnings[-1:]
    assert [w.ref for w in named] == [r["id"] for r in rels[:named_at_most]]
    assert all("related-to" in w.reason for w in named)
    assert summary.ref == "relationships" and f"{extra} more relationships" in summary.reason and "related-to" in summary.reason


def test_a_long_or_under_thousands_of_parentheses_is_never_a_crash():
    inner = " OR ".join(f"ipv4-addr:value = '198.51.100.{i % 250 + 1}'" for i in range(300))
    parsed = parse("stix", _indicator_bundle("[" + "(" * 5000 + inner + ")" * 5000 + "]"))
    assert len(parsed.errors) + len(parsed.iocs) >= 1


def test_a_wrapped_long_or_of_parenthesised_comparisons_is_read_in_pieces():
    addresses = [f"198.51.{i // 250}.{i % 250 + 1}" for i in range(300)]
    pattern = "[ ( " + " OR ".join(f"(ipv4-addr:value = '{a}')" for a in addresses) + " ) ]"
    parsed = parse("stix", _indicator_bundle(pattern))
    assert parsed.errors == [] and [p.item.value for p in parsed.iocs] == addresses[:100]


def test_attack_patterns_without_a_technique_id_are_named_once_each_up_to_a_bound():
    """Each `uses` of a pattern without a T#### id was its own warning: 20,000 threats using one such pattern gave
    20,000 copies. Each pattern is named once, the first 100 of them, the rest counted in one warning."""
    objects = [_sdo("malware", i, name=f"m{i}", is_family=True) for i in range(1, 151)]
    objects += [_sdo("attack-pattern", 1000 + i, name=f"p{i}") for i in range(150)]
    objects += [
        _sdo("relationship", 5000 + k, relationship_type="uses", source_ref=objects[k]["id"], target_ref=objects[150 + (k % 150)]["id"])
        for k in range(150)
    ]
    objects += [
        _sdo("relationship", 9000 + k, relationship_type="uses", source_ref=objects[k]["id"], target_ref=objects[150]["id"])
        for k in range(1, 150)
    ]
    parsed = parse("stix", json.dumps({"type": "bundle", "id": "bundle--5d0fa6a5-51c4-4d2b-8a3e-0d6a9a3c1f00", "objects": objects}))
    named = [w for w in parsed.warnings if "has no ATT&CK technique id" in w.reason]
    assert len(named) == 100 and len({w.reason for w in named}) == 100
    assert [w.reason for w in parsed.warnings if w.ref == "attack-patterns"] == [
        "50 more attack patterns used by threats have no ATT&CK technique id (T####) and are not kept as TTPs: the first 100 are named"
    ]


@pytest.mark.parametrize(
    "comment",
    [" /* Mirai OR Gafgyt */", " // it's a C2\n"],
    ids=["or-in-block-comment", "quote-in-line-comment"],
)
def test_a_long_or_with_comments_is_cut_only_at_its_own_ors(comment):
    """The grammar skips /* */ and // comments; the long-OR split read their text as pattern: an ' OR ' in one was a
    cut (a piece ending inside the comment is no pattern), and a quote in one opened a string that hid the real ORs
    (the OR was then read whole, past the recursion limit). Either way the indicator was an error."""
    addresses = [f"198.51.{i // 250}.{i % 250 + 1}" for i in range(400)]
    comparisons = [f"ipv4-addr:value = '{a}'" for a in addresses]
    comparisons[99] += comment
    parsed = parse("stix", _indicator_bundle("[" + " OR ".join(comparisons) + "]"))
    assert parsed.errors == [], parsed.errors
    assert [p.item.value for p in parsed.iocs] == addresses[:100]


def test_a_long_or_is_cut_only_where_the_grammar_reads_whitespace():
    """`\\x1c`–`\\x1f` are whitespace to Python's `\\s` but not to the grammar: an OR between them was a cut, and the
    pieces (joined again by spaces) read a pattern the grammar refuses."""
    comparisons = [f"ipv4-addr:value = '198.51.{i // 250}.{i % 250 + 1}'" for i in range(400)]
    pattern = "[" + " OR ".join(comparisons[:5]) + "\x1cOR\x1c" + " OR ".join(comparisons[5:]) + "]"
    with pytest.raises(ValidationError, match="not valid STIX patterning"):
        pattern_values(pattern)


def test_a_long_or_giving_no_new_values_is_read_only_up_to_a_bound():
    """Pieces were read until they gave 100 values: comparisons that give none (one address repeated, an object path
    that is no IoC) had every piece read, 100,000 ORs (3.2 MB) in 20 s where distinct values take 1 s. The first
    1,000 comparisons are read at most; the rest are named as unread."""
    pattern = "[" + " OR ".join(["ipv4-addr:value = '198.51.100.7'"] * 3000) + "]"
    values, reason = pattern_values(pattern)
    assert [value for _type, value in values] == ["198.51.100.7"], values
    assert reason == "2000 more comparisons past the first 1000 were not read", reason
