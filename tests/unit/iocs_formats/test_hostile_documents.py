"""Documents shaped as real producers write them, or as a hostile one could: each once crashed an import (a 500 for
the sync import, a job redelivered to the dead letter for the async one) or stored data below its marking."""

import tracemalloc

import pytest
from real_documents import OTX_PULSE

from threatflow.intel.formats import parse


@pytest.mark.parametrize("key", ["TLP", "tlp"])
def test_an_otx_pulse_marked_under_its_api_key_keeps_its_tlp(key):
    """OTX's API writes a pulse's marking as `TLP` (its subscribed and indicator answers, and what IntelMQ's and OTX's
    own STIX exporter read): only `tlp` was read, so a TLP:RED pulse came in at the import's default TLP."""
    pulse = {k: v for k, v in OTX_PULSE.items() if k != "tlp"} | {key: "red"}
    parsed = parse("json", pulse)
    assert {p.item.tlp for p in parsed.iocs} == {"red"}
    assert {t.item.tlp for t in parsed.threats} == {"red"}


def test_an_otx_pulse_with_both_keys_takes_the_stricter():
    parsed = parse("json", OTX_PULSE | {"tlp": "white", "TLP": "amber"})
    assert {p.item.tlp for p in parsed.iocs} == {"amber"}


@pytest.mark.parametrize("field", ["tags", "attack_ids", "malware_families"])
@pytest.mark.parametrize("value", [5, 1.5, True, "TrickBot", {"id": "x"}])
def test_an_otx_pulse_whose_lists_are_scalars_imports_without_them(field, value):
    """`"tags": 5` raised TypeError (a 500; the async job retried to the dead letter), and a string was read as a
    list of its characters (`"tags": "abc"` gave the tags a, b, c)."""
    parsed = parse("json", OTX_PULSE | {field: value})
    assert len(parsed.iocs) == 5
    expected_tags = {"otx-pulse:64d31e8a5133613a90976b3f"} | ({"trickbot"} if field != "tags" else set())
    assert all(set(p.item.tags) == expected_tags for p in parsed.iocs)
    assert [w.ref for w in parsed.warnings] == ["pulse"]


@pytest.mark.parametrize("refs", [5, 1.5, True])
def test_a_stix_sighting_whose_observed_data_refs_is_a_scalar_is_skipped(refs):
    """`observed_data_refs: 5` raised TypeError: the bundle's import was a 500."""
    bundle = {
        "type": "bundle",
        "id": "bundle--1",
        "objects": [
            {"type": "malware", "id": "malware--1", "name": "X", "is_family": True},
            {"type": "ipv4-addr", "id": "ipv4-addr--1", "value": "198.51.100.7"},
            {"type": "sighting", "id": "sighting--1", "sighting_of_ref": "malware--1", "observed_data_refs": refs},
        ],
    }
    parsed = parse("stix", bundle)
    assert (len(parsed.iocs), len(parsed.threats), parsed.links, parsed.skipped) == (1, 1, [], {"sighting": 1})


_IPV4 = {"type": "ipv4-addr", "id": "ipv4-addr--1", "value": "198.51.100.7"}
_INDICATOR = {"type": "indicator", "id": "indicator--1", "pattern": "[ipv4-addr:value = '198.51.100.8']", "pattern_type": "stix"}
_OBSERVED = {"type": "observed-data", "id": "observed-data--1", "object_refs": ["ipv4-addr--1"]}
_FILE = {"type": "file", "id": "file--1", "hashes": {"MD5": "44d88612fea8a8f36de82e1278abb02f"}}
_MALWARE = {"type": "malware", "id": "malware--1", "name": "X", "is_family": True}


@pytest.mark.parametrize(
    ("obj", "field", "value"),
    [
        (_INDICATOR, "labels", 5),
        (_INDICATOR, "indicator_types", 5),
        (_INDICATOR, "object_marking_refs", 5),
        (_INDICATOR, "granular_markings", 5),
        (_OBSERVED, "object_refs", 5),
        (_OBSERVED, "object_refs", [["ipv4-addr--1"]]),
        (_OBSERVED, "labels", [5]),
        (_FILE, "hashes", 5),
        (_FILE, "hashes", ["MD5"]),
        (_MALWARE, "aliases", 5),
        (_MALWARE, "x_mitre_aliases", 5),
        (_MALWARE, "labels", 5),
        (_MALWARE, "external_references", 5),
        ({"type": "attack-pattern", "id": "attack-pattern--1", "name": "T"}, "external_references", 5),
    ],
)
def test_a_stix_field_of_the_wrong_shape_is_an_error_of_its_object_never_a_crash(obj, field, value):
    """A list or map field written as a scalar (`"labels": 5`, `"hashes": 5`) or holding lists raised TypeError or
    AttributeError: the bundle's import was a 500. It is now ignored, or the object's error; the rest imports."""
    bundle = {"type": "bundle", "id": "bundle--1", "objects": [_IPV4, obj | {field: value}]}
    parsed = parse("stix", bundle)
    assert "ipv4-addr--1" in {p.ref for p in parsed.iocs}


@pytest.mark.parametrize(
    "galaxy",
    [
        {"type": "threat-actor", "GalaxyCluster": 5},
        {"type": "threat-actor", "GalaxyCluster": [{"value": "APT 1", "meta": {"refs": 5}}]},
        {"type": "threat-actor", "GalaxyCluster": [{"value": "APT 1", "meta": {"synonyms": 5}}]},
    ],
)
def test_a_misp_galaxy_of_the_wrong_shape_is_never_a_crash(galaxy):
    """`"GalaxyCluster": 5` and a cluster's `"meta": {"refs": 5}` raised TypeError: the import was a 500. A cluster
    list that is no list is refused as every other MISP list is (a 400 naming it); a meta list is read as empty."""
    from threatflow.platform.errors import ValidationError

    event = {"Event": {"info": "i", "Galaxy": [galaxy], "Attribute": [{"type": "ip-dst", "value": "198.51.100.7"}]}}
    if galaxy["GalaxyCluster"] == 5:
        with pytest.raises(ValidationError, match=r"Event\.Galaxy\[0\]\.GalaxyCluster must be a list"):
            parse("misp", event)
        return
    parsed = parse("misp", event)
    assert [(t.item.name, t.item.aliases, t.item.references) for t in parsed.threats] == [("APT 1", [], [])]


class _CountingList(list):
    """A list that counts the items its iterations go through."""

    visits = 0

    def __iter__(self):
        for item in list.__iter__(self):
            _CountingList.visits += 1
            yield item


def test_misp_clusters_are_made_threats_in_linear_work(monkeypatch):
    """Each cluster scanned every threat made before it (`any(t.ref == ref for t in out.threats)`), and each event
    with ATT&CK clusters every threat of the document: 8,000 clusters (190 KB) took 2.4 s, 5 MB would take tens of
    minutes of a sync import. What is scanned now stays linear in the clusters."""
    from threatflow.intel.formats import misp
    from threatflow.intel.formats.base import Builder

    class CountingBuilder(Builder):
        def __init__(self):
            super().__init__()
            self.threats = _CountingList()

    monkeypatch.setattr(misp, "Builder", CountingBuilder)
    _CountingList.visits = 0
    actors = [{"value": f"actor {i}"} for i in range(1000)]
    events = [
        {"Event": {"info": f"e{i}", "Galaxy": [{"type": "threat-actor", "GalaxyCluster": [{"value": f"family {i}"}]},
                                              {"type": "mitre-attack-pattern", "GalaxyCluster": [{"value": "Phishing - T1566"}]}]}}
        for i in range(500)
    ]  # fmt: skip
    big = {"Event": {"info": "big", "Galaxy": [{"type": "threat-actor", "GalaxyCluster": actors}]}}
    parsed = parse("misp", {"response": [big, *events]})
    assert len(parsed.threats) == 1500 and all(t.item.ttps == ["T1566"] for t in parsed.threats[1000:])
    assert _CountingList.visits <= 4 * 1500


def _pulse_of_32_families(indicators: int) -> dict:
    values = [f"198.{i // 65536 % 256}.{i // 256 % 256}.{i % 256}" for i in range(indicators)]
    families = [f"family {i}" for i in range(32)]
    return {"id": "p", "name": "p", "malware_families": families, "indicators": [{"indicator": v} for v in values]}


def _event_of_32_clusters(attributes: int) -> dict:
    values = [f"198.{i // 65536 % 256}.{i // 256 % 256}.{i % 256}" for i in range(attributes)]
    clusters = [{"value": f"actor {i}"} for i in range(32)]
    galaxy = [{"type": "threat-actor", "GalaxyCluster": clusters}]
    return {"Event": {"info": "i", "Galaxy": galaxy, "Attribute": [{"type": "ip-dst", "value": v} for v in values]}}


@pytest.mark.parametrize(("fmt", "make"), [("json", _pulse_of_32_families), ("misp", _event_of_32_clusters)], ids=["otx", "misp"])
def test_a_documents_threat_links_are_held_up_to_a_bound(fmt, make):
    """A pulse or an event links each of its IoCs to up to 32 threats, and every link was held: 4.4 MB of one event
    held 3.2 million links (500 MB; an async import of 32 MB would take 3.5 GB in a 1 GiB function), where an import
    makes at most 10,000. A document's parse holds MAX_PARSED_LINKS; the rest are counted in one warning."""
    from threatflow.intel.formats.base import MAX_PARSED_LINKS

    parsed = parse(fmt, make(MAX_PARSED_LINKS // 32 + 100))
    assert len(parsed.links) == MAX_PARSED_LINKS
    assert [w.to_json() for w in parsed.warnings if w.ref == "links"] == [
        {"ref": "links", "reason": f"3200 threat links not read: a document's parse holds at most {MAX_PARSED_LINKS}"}
    ]


def test_an_imports_request_tags_are_checked_once_before_the_document_is_read():
    """The request's `tags` go to every item and had no bound: 15,000 tags and 15,000 lines of text (325 KB) made
    15,000 lists of 15,000 tags, 1.8 GB, before the store rejected every item for holding more than 64. They are
    now checked as an IoC's tags are: more than 64 is a 400 naming `tags` (every item would be rejected anyway)."""
    from threatflow.intel.importer import ImportRequest, parse_request
    from threatflow.platform.errors import ValidationError

    content = "198.51.100.7\n198.51.100.8\n"
    with pytest.raises(ValidationError, match="at most 64 tags per import") as refused:
        parse_request(ImportRequest(format="text", content=content, tags=[f"t{i}" for i in range(65)]))
    assert refused.value.field == "tags"
    parsed = parse_request(ImportRequest(format="text", content=content, tags=[" Feed ", "feed", *(f"t{i}" for i in range(63))]))
    assert [len(p.item.tags) for p in parsed.iocs] == [64, 64]


def _pulse_of_tags(tags: list[str], indicators: int) -> dict:
    return {"id": "p", "name": "p", "tags": tags, "indicators": [{"indicator": f"198.51.100.{i}"} for i in range(indicators)]}


def _event_of_tags(tags: list[str], attributes: int) -> dict:
    attribute = [{"type": "ip-dst", "value": f"198.51.100.{i}"} for i in range(attributes)]
    return {"Event": {"uuid": "e", "info": "i", "Tag": [{"name": t} for t in tags], "Attribute": attribute}}


@pytest.mark.parametrize(
    ("fmt", "make", "own"), [("json", _pulse_of_tags, "otx-pulse:p"), ("misp", _event_of_tags, "misp-event:e")], ids=["otx", "misp"]
)
def test_a_documents_tags_are_read_once_and_given_to_its_items_up_to_the_bound(monkeypatch, fmt, make, own):
    """A pulse's or an event's tags go to each of its IoCs and were cleaned again for each: 20,000 tags on 2,000
    indicators (0.25 MB) took 11 s, 5 MB hours; and past 64 (or with one tag over 128 characters) every IoC of the
    document was rejected. They are read once; the first 63 (and the pulse's or event's own) go to every IoC, the
    rest are named in one warning."""
    from threatflow.intel.formats import base

    cleaned = []

    def counting(tags, **kwargs):
        tags = list(tags)
        cleaned.append(len(tags))
        return base_clean(tags, **kwargs)

    base_clean = base.clean_tags
    monkeypatch.setattr(base, "clean_tags", counting)
    tags = ["x" * 129, *(f"T{i}" for i in range(20_000))]
    parsed = parse(fmt, make(tags, 100))
    assert [sorted(p.item.tags) for p in parsed.iocs] == [sorted([*(f"t{i}" for i in range(63)), own])] * 100
    assert [w.reason for w in parsed.warnings] == [
        "19938 of its tags not given to its items: an IoC holds at most 64 tags, each at most 128 characters"
    ]
    assert sum(cleaned) <= 20_001 + 100 * 65


def test_a_stix_objects_labels_are_read_once_for_all_the_iocs_it_gives(monkeypatch):
    """An observed-data object's labels go to each of its objects' IoCs (an indicator's to each value of its pattern)
    and were cleaned again for each: 20,000 labels on 2,000 addresses (0.3 MB) took 12 s; past 64, every IoC of the
    object was rejected. They are read once; the first 64 go to every IoC, the rest are named in one warning."""
    from threatflow.intel.formats import base

    cleaned = []

    def counting(tags, **kwargs):
        tags = list(tags)
        cleaned.append(len(tags))
        return base_clean(tags, **kwargs)

    base_clean = base.clean_tags
    monkeypatch.setattr(base, "clean_tags", counting)
    objects = {str(i): {"type": "ipv4-addr", "value": f"198.51.100.{i}"} for i in range(100)}
    labels = [f"T{i}" for i in range(20_000)]
    observed = {"type": "observed-data", "id": "observed-data--1", "labels": labels, "objects": objects}
    parsed = parse("stix", {"type": "bundle", "id": "bundle--1", "objects": [observed]})
    assert [sorted(p.item.tags) for p in parsed.iocs] == [sorted(f"t{i}" for i in range(64))] * 100
    assert [w.to_json() for w in parsed.warnings] == [
        {
            "ref": "observed-data--1",
            "reason": "19936 of its tags not given to its items: an IoC holds at most 64 tags, each at most 128 characters",
        }
    ]
    assert sum(cleaned) <= 20_000 + 100 * 65


def test_an_otx_pulses_name_is_cut_once_for_all_its_iocs():
    """Each IoC took its own 4,096-character cut of a long pulse name as its description: 100,000 indicators under a
    5,000-character name (3 MB) held 400 MB of copies. The pulse's name is cut once and shared."""
    parsed = parse("json", {"id": "p", "name": "N" * 5000, "indicators": [{"indicator": f"198.51.100.{i}"} for i in range(3)]})
    first, *rest = [p.item.description for p in parsed.iocs]
    assert first == "N" * 4096 and all(description is first for description in rest)


def test_a_misp_events_long_info_describes_its_attributes_cut():
    """An event's info over 4,096 characters is every attribute's description, and got every attribute rejected
    (`description` too long); it is cut to 4,096 characters once, as an OTX pulse's name is."""
    parsed = parse("misp", {"Event": {"info": "I" * 5000, "Attribute": [{"type": "ip-dst", "value": "198.51.100.7"}]}})
    assert [p.item.description for p in parsed.iocs] == ["I" * 4096] and not parsed.errors


def test_stix_uses_relationships_to_attack_patterns_are_read_in_linear_work(monkeypatch):
    """Each `uses` relationship from a threat made a set of every attack-pattern id of the bundle to test its ends:
    20,000 patterns and as many relationships (6 MB) took 10 s, 4x fewer 0.65 s."""
    from threatflow.intel.formats import stix

    made = []

    def counting(*args):
        built = set(*args)
        made.append(len(built))
        return built

    monkeypatch.setattr(stix, "set", counting, raising=False)
    patterns = [
        {"type": "attack-pattern", "id": f"attack-pattern--{i}", "name": f"p{i}",
         "external_references": [{"source_name": "mitre-attack", "external_id": f"T{1000 + i}"}]}
        for i in range(2000)
    ]  # fmt: skip
    uses = [
        {"type": "relationship", "id": f"relationship--{i}", "relationship_type": "uses",
         "source_ref": "malware--0", "target_ref": f"attack-pattern--{i}"}
        for i in range(2000)
    ]  # fmt: skip
    malware = {"type": "malware", "id": "malware--0", "name": "M", "is_family": True}
    parsed = stix.parse({"type": "bundle", "id": "bundle--1", "objects": [malware, *patterns, *uses]})
    assert len(parsed.threats[0].item.ttps) == 2000
    assert sum(made) <= 3 * 2000


@pytest.mark.parametrize("marking", ["TLP: RED", "tlp-red", "TLP_RED", " Red ", "tlp:red"])
def test_an_otx_pulses_tlp_spelled_loosely_is_still_read(marking):
    """`"TLP": "TLP: RED"` or `"tlp-red"` was no TLP the parser knew: the pulse came in at the import's default."""
    parsed = parse("json", {k: v for k, v in OTX_PULSE.items() if k != "tlp"} | {"TLP": marking})
    assert {p.item.tlp for p in parsed.iocs} == {"red"}


def test_an_otx_pulse_marked_with_no_known_tlp_comes_in_as_red_and_says_so():
    """A marking the parser cannot read is no reason to store the pulse less restricted than its author meant."""
    parsed = parse("json", {k: v for k, v in OTX_PULSE.items() if k != "tlp"} | {"TLP": "purple"})
    assert {p.item.tlp for p in parsed.iocs} == {"red"} and {t.item.tlp for t in parsed.threats} == {"red"}
    assert any("'purple'" in w.reason and "red" in w.reason for w in parsed.warnings), parsed.warnings


def test_an_otx_pulse_with_a_long_id_keeps_its_iocs():
    """The pulse's tag `otx-pulse:<id>` took the id cut to 128 characters, past the 128-character tag bound: every
    IoC of a pulse whose id was over 118 characters was rejected."""
    parsed = parse("json", OTX_PULSE | {"id": "p" * 300})
    assert len(parsed.iocs) == 5 and not parsed.errors, parsed.errors
    (pulse_tag,) = {t for p in parsed.iocs for t in p.item.tags if t.startswith("otx-pulse:")}
    assert len(pulse_tag) == 128 and pulse_tag.startswith("otx-pulse:ppp")


@pytest.mark.parametrize("comment", ["C" * 5000, 5, ["a"], {"x": 1}])
def test_a_misp_objects_or_attributes_odd_comment_never_rejects_its_attributes(comment):
    """An Object's or an Attribute's `comment` over 4,096 characters, or not a string, was the description of its
    attributes and got them rejected; it is cut, or passed over for the event's info."""
    attribute = {"type": "ip-dst", "value": "198.51.100.7", "comment": comment}
    obj = {"name": "ip-port", "comment": comment, "Attribute": [{"type": "ip-dst", "value": "198.51.100.8"}]}
    parsed = parse("misp", {"Event": {"info": "event info", "Attribute": [attribute], "Object": [obj]}})
    assert not parsed.errors, parsed.errors
    expected = "C" * 4096 if isinstance(comment, str) else "event info"
    assert sorted((p.item.value, p.item.description) for p in parsed.iocs) == [("198.51.100.7", expected), ("198.51.100.8", expected)]


def test_an_imported_threats_references_are_cut_after_their_duplicates_are_merged():
    """The import cut a document's threat to its first 256 references before the store merged equal ones (same
    source, external id and URL): 100 copies of one reference and 200 others kept 157 distinct and answered 44 cut,
    where all 201 fit."""
    from threatflow.intel.importer import _bounded_threats

    refs = [{"source_name": "blog", "url": "https://example.com/same"}] * 100
    refs += [{"source_name": "blog", "url": f"https://example.com/{i}"} for i in range(200)]
    malware = _MALWARE | {"external_references": refs}
    parsed = parse("stix", {"type": "bundle", "id": "bundle--1", "objects": [malware]})
    (threat,), (cut,) = _bounded_threats(parsed.threats)
    assert cut == {} and len({r.url for r in threat.item.references}) == 201


def test_an_imported_threats_aliases_are_cut_after_the_stores_merge_of_them():
    """The store merges aliases case-insensitively (first spelling wins) and drops the name itself; the import's cut
    counted `APT-1` and `apt-1` as two, so 200 aliases and 100 other spellings of them kept 156 and said 44 cut."""
    from threatflow.intel.formats.base import ParsedThreat
    from threatflow.intel.importer import _bounded_threats
    from threatflow.threats.model import ThreatIn, merge_aliases

    aliases = [f"Alias-{i}" for i in range(200)] + [f"ALIAS-{i}" for i in range(100)]
    (threat,), (cut,) = _bounded_threats([ParsedThreat("t", ThreatIn(kind="malware", name="X", aliases=aliases))])
    assert cut == {} and merge_aliases("X", threat.item.aliases) == aliases[:200]  # all 200 reach the store


def _public_addresses(n: int) -> list[str]:
    return [f"45.{i // 65536 % 256}.{i // 256 % 256}.{i % 256}" for i in range(n)]


_ONE_ITEM_DOCUMENTS = {
    "json": lambda values: [{"value": v} for v in values],
    "json-bare": lambda values: list(values),
    "csv": lambda values: "value\n" + "\n".join(values) + "\n",
    "text": lambda values: "\n".join(values) + "\n",
}


@pytest.mark.parametrize("shape", list(_ONE_ITEM_DOCUMENTS))
def test_a_document_past_the_import_item_bound_is_refused_once_parsing_reaches_it(monkeypatch, shape):
    """The request body holds up to 32 MiB and an async import parsed all of it: 1,342,177 JSON items of one address
    (33 MB) peaked at 879 MB in parsing alone, in the 1 GiB ioc-import function, before anything was applied (CSV of
    one column and text of one address a line hold twice as many a byte). An import holds at most MAX_IMPORT_ITEMS
    items (IoCs and the items it rejects): past them the document is refused, a 400 naming content (the async job
    fails with the same message), and parsing stops there. Scaled down here: a bound of 1,000 and 20,000 items."""
    from threatflow.intel.formats import base
    from threatflow.intel.importer import ImportRequest, parse_request
    from threatflow.platform.errors import ValidationError

    bound = 1_000
    monkeypatch.setattr(base, "MAX_IMPORT_ITEMS", bound, raising=False)
    fmt = "json" if shape.startswith("json") else shape
    make = _ONE_ITEM_DOCUMENTS[shape]
    assert len(parse_request(ImportRequest(format=fmt, content=make(_public_addresses(bound)))).iocs) == bound

    content = make(_public_addresses(20 * bound))
    tracemalloc.start()
    try:
        with pytest.raises(ValidationError, match=f"at most {bound:,} items an import") as refused:
            parse_request(ImportRequest(format=fmt, content=content))
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert refused.value.field == "content"
    # Parsed whole, 20,000 items took 13 MB (650 bytes an item); stopped at the bound, what the document's lines or
    # values take besides (text's feed lines: 1.3 MB).
    assert peak < 4_000_000, f"{peak / 1e6:.1f} MB"
