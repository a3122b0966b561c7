"""STIX 2.1 (and 2.0) import: bundles, TAXII 2.1 envelopes, single objects, and bare SCOs.

- indicator: the pattern is parsed by the STIX patterning grammar
  (stix2patterns, through stix2's pattern visitor, made to keep NOT), never by
  regex. Each `=`/`IN` comparison on a supported path gives one IoC
  (`OBJECT_PATHS`), an address `ISSUBSET` a network gives the network (a CIDR);
  OR gives several. AND (also across object types, which stix2 alone refuses),
  FOLLOWEDBY and qualifiers are taken value by value with a warning;
  `file:parent_directory_ref.path` AND `file:name` in one observation
  is one file path; `domain-name:value` AND `domain-name:resolves_to_refs[*].value` in one observation (MISP's
  domain|ip) are the name resolving to the address (`_resolutions`). A hash algorithm written bare
  (`hashes.SHA-256`, which the grammar refuses) is read as quoted, with a warning. A pattern that does not parse is
  an error of its indicator.
- SCOs (top level or inside observed-data) become IoCs the same way; OpenCTI's custom `hostname` SCO (and
  `hostname:value` in patterns) is a domain.
- malware, threat-actor, intrusion-set, campaign, tool become threats;
  attack-pattern ATT&CK ids (T####) become TTPs of threats that `uses` them.
- relationships: indicator/SCO -> threat = a link; IoC <-> IoC = a relation
  (resolves-to, communicates-with, drops, downloads, else related-to); threat <-> threat = a threat relation
  by its own verb (uses, attributed-to, variant-of ...; one that is no tidy verb is related-to, with a warning).
  A sighting of a threat links the IoCs of its observed data to the threat (`sighted-as`); a domain-name's
  resolves_to_refs are resolves-to relations.
- one bad object (an indicator with no pattern or one that does not parse, a relationship without
  source_ref or target_ref, an entry without type and id or whose id does not start with `<type>--`) is an error
  of that object (`errors`: its id or `objects[i]`, the reason); the rest imports. Only a document that is not
  STIX (not JSON, no bundle or object, no entry that is a STIX object) is refused.
- an object whose latest version is `revoked` is skipped (counted as
  `revoked <type>`); a stored IoC it named is left as it is.
- labels and indicator_types are tags; TLP marking definitions (1.0 and 2.0,
  object and granular markings; the most restrictive wins) are the TLP;
  confidence is kept; valid_until is the expiry.
"""

from __future__ import annotations

import contextlib
import functools
import re
from collections.abc import Collection, Iterator
from datetime import UTC, datetime
from typing import Any

from threatflow.intel.formats.base import RELATION_TYPES, Builder, Link, ParsedImport, ParsedThreat, Relation, load_json, seen_time
from threatflow.platform.errors import ValidationError
from threatflow.platform.vocabulary import MAX_TAGS, Tlp
from threatflow.threats.model import check_relation_verb

THREAT_TYPES = {"malware", "threat-actor", "intrusion-set", "campaign", "tool"}
# TLP 1.0 (STIX 2.x spec) and TLP 2.0 (OASIS extension) marking-definition ids.
TLP_MARKINGS = {
    "marking-definition--613f2e26-407d-48c7-9eca-b8e91df99dc9": "clear",
    "marking-definition--34098fce-860f-48ae-8e50-ebd3cc5e41da": "green",
    "marking-definition--f88d31f6-486f-44da-b317-01333bde0b82": "amber",
    "marking-definition--5e57c739-391a-4eb3-b6be-7d15ca92d5ed": "red",
    "marking-definition--94868c89-83c2-464b-929b-a1a8aa3c8487": "clear",
    "marking-definition--bab4a63c-aed9-4cf5-a766-dfca5abac2bb": "green",
    "marking-definition--55d920b0-5e8b-4f79-9ee9-91f868d9b421": "amber",
    "marking-definition--939a9414-2ddd-4d32-a0cd-375ea402b003": "amber+strict",
    "marking-definition--e828b379-4e03-4974-9ac4-e53a884c97c1": "red",
}
_TLP_RANK = ["clear", "green", "amber", "amber+strict", "red"]
# (object type, property path) -> our type (None: let normalise tell ipv4 from cidr).
OBJECT_PATHS: dict[tuple[str, str], str | None] = {
    ("ipv4-addr", "value"): None,
    ("ipv6-addr", "value"): None,
    ("domain-name", "value"): "domain",
    ("domain-name", "resolves_to_refs.value"): None,
    ("hostname", "value"): "domain",  # OpenCTI's custom Hostname observable
    ("url", "value"): "url",
    ("email-addr", "value"): "email",
    ("email-message", "from_ref.value"): "email",
    ("email-message", "sender_ref.value"): "email",
    ("email-message", "to_refs.value"): "email",
    ("email-message", "cc_refs.value"): "email",
    ("network-traffic", "dst_ref.value"): None,
    ("network-traffic", "src_ref.value"): None,
    ("directory", "path"): "file_path",
    ("file", "hashes.md5"): "md5",
    ("file", "hashes.sha1"): "sha1",
    ("file", "hashes.sha256"): "sha256",
}
MAX_PATTERN_VALUES = 100  # `[x:value IN (...)]` beyond this is cut and reported: each value becomes an IoC
# Relationships whose verb is kept as related-to that are each named in a warning; the rest are counted in one. Each
# added its own: 100,000 of them answered ~100,000 warnings, a 16 MB sync answer.
MAX_UNTIDY_VERB_WARNINGS = 100
_SCO_TYPES = {"ipv4-addr", "ipv6-addr", "domain-name", "hostname", "url", "email-addr", "file", "directory"}
_TTP = re.compile(r"^T\d{4}(?:\.\d{3})?$")
_ESCAPED = re.compile(r"\\(.)")
_LONE_BACKSLASH = re.compile(r"(?<!\\)(?:\\\\)*\\(?![\\'])")  # one the grammar refuses: only \\ and \' are escapes


def _literal(constant: Any) -> str:
    """The string a pattern constant stands for: the visitor keeps the \\ and \\' escapes of the source."""
    return _ESCAPED.sub(r"\1", str(constant.value))


STIX1_ADVICE = "STIX 1.x (XML) is not read, only STIX 2.0/2.1 JSON: convert it first, e.g. with OASIS's cti-stix-elevator"


def parse(content: Any) -> ParsedImport:
    if _is_xml(content):
        raise ValidationError(f"stix: the document is XML; {STIX1_ADVICE}", field="content")
    doc = load_json(content, what="stix")
    objects = _objects(doc)
    out = Builder()
    by_id = _latest_by_id(objects, out)
    tlp_of = _tlp_definitions(by_id, objects)
    ioc_refs: set[str] = set()
    threat_refs: set[str] = set()
    ttps_of_pattern = {obj_id: _attack_id(obj) for obj_id, (_, obj) in by_id.items() if obj.get("type") == "attack-pattern"}

    for obj_id, (index, obj) in by_id.items():
        where = f"objects[{index}] ({obj_id})"
        kind = obj.get("type")
        if obj.get("revoked") is True:  # withdrawn by its producer (its latest version says so): nothing to import
            out.skip(f"revoked {kind}")
        elif kind == "indicator":
            if _indicator(out, obj, where, tlp_of):
                ioc_refs.add(obj_id)
        elif kind in _SCO_TYPES:
            if _sco(out, obj_id, obj, where, _common(out, obj, tlp_of)):
                ioc_refs.add(obj_id)
        elif kind == "observed-data":
            if _observed(out, obj_id, obj, where, tlp_of, by_id):
                ioc_refs.add(obj_id)
        elif kind in THREAT_TYPES:
            if _threat(out, obj_id, obj, where, tlp_of):
                threat_refs.add(obj_id)
        elif kind not in ("relationship", "sighting", "bundle"):  # relationships and sightings: once all is read
            out.skip(str(kind))

    for obj_id, (_, obj) in by_id.items():
        if obj.get("type") == "sighting" and obj.get("revoked") is not True:
            _sighting(out, obj, threat_refs=threat_refs, ioc_refs=ioc_refs, tlp_of=tlp_of)
        elif obj.get("type") == "domain-name" and obj_id in ioc_refs and isinstance(obj.get("resolves_to_refs"), list):
            # the name resolved to these addresses (or names): MISP's domain|ip and domain-ip in STIX 2.1
            targets = [ref for ref in obj["resolves_to_refs"] if isinstance(ref, str) and ref in ioc_refs and ref != obj_id]
            out.relations.extend(Relation(obj_id, target, "resolves-to") for target in dict.fromkeys(targets))

    ttps: dict[str, set[str]] = {}
    untidy = _UntidyVerbs(out)
    # attack patterns `uses` named that have no T#### id: each named once, the first MAX_UNTIDY_VERB_WARNINGS of them
    unnumbered = _NamedUpTo(
        out, "attack-patterns", "attack patterns used by threats have no ATT&CK technique id (T####) and are not kept as TTPs"
    )
    unnumbered_seen: set[str] = set()
    for obj_id, (index, obj) in by_id.items():
        if obj.get("type") != "relationship" or obj.get("revoked") is True:
            continue
        source, target, rel = obj.get("source_ref"), obj.get("target_ref"), obj.get("relationship_type")
        rel = rel if isinstance(rel, str) else ""  # `true` was the verb "true": a value that is no string is no verb
        where = f"objects[{index}] ({obj_id})"
        if not isinstance(source, str) or not isinstance(target, str):
            out.error(obj_id, f"{where}: a relationship needs source_ref and target_ref")
        elif source in ioc_refs and target in threat_refs:
            out.links.append(Link(source, target, untidy.verb(obj_id, rel), _tlp(obj, tlp_of), obj_id))
        elif source in threat_refs and target in ioc_refs:
            out.links.append(Link(target, source, untidy.verb(obj_id, rel), _tlp(obj, tlp_of), obj_id))
        elif source in ioc_refs and target in ioc_refs:
            verb = rel if rel in RELATION_TYPES else "related-to"
            out.relations.append(Relation(source, target, verb, _tlp(obj, tlp_of), obj_id))
        elif source in threat_refs and target in threat_refs and source != target:
            # an intrusion set uses a malware, a campaign is attributed-to an actor: kept by its own verb
            out.threat_relations.append(Relation(source, target, untidy.verb(obj_id, rel), _tlp(obj, tlp_of), obj_id))
        elif rel.strip().lower() == "uses" and {source, target} & threat_refs and (source in ttps_of_pattern or target in ttps_of_pattern):
            threat, pattern = (source, target) if source in threat_refs else (target, source)
            if ttps_of_pattern[pattern]:
                ttps.setdefault(threat, set()).add(ttps_of_pattern[pattern])  # type: ignore[arg-type]
            elif pattern not in unnumbered_seen:
                unnumbered_seen.add(pattern)
                unnumbered.warn(obj_id, f"{pattern} has no ATT&CK technique id (T####); not kept as a TTP")
        else:
            out.skip(f"relationship:{rel}")
    untidy.named.summarise()
    unnumbered.summarise()
    if ttps:
        import msgspec

        for i, parsed_threat in enumerate(out.threats):
            if parsed_threat.ref in ttps:
                merged = sorted({*parsed_threat.item.ttps, *ttps[parsed_threat.ref]})
                out.threats[i] = ParsedThreat(parsed_threat.ref, msgspec.structs.replace(parsed_threat.item, ttps=merged))
    return out.build()


class _NamedUpTo:
    """Warnings of one kind: the first MAX_UNTIDY_VERB_WARNINGS are named one by one, the rest counted in one warning
    under `ref` (`summarise`), so a document of 100,000 such objects does not answer 100,000 warnings."""

    def __init__(self, out: Builder, ref: str, what: str) -> None:
        self.out, self.ref, self.what = out, ref, what
        self.named = self.unnamed = 0

    def warn(self, obj_id: str, reason: str) -> None:
        if self.named < MAX_UNTIDY_VERB_WARNINGS:
            self.out.warn(obj_id, reason)
            self.named += 1
        else:
            self.unnamed += 1

    def summarise(self) -> None:
        if self.unnamed:
            self.out.warn(self.ref, f"{self.unnamed} more {self.what}: the first {MAX_UNTIDY_VERB_WARNINGS} are named")


class _UntidyVerbs:
    """Reads relationships' verbs between a threat and a threat or an IoC as the API reads them (`Attributed To` is
    attributed-to); one that is still no tidy word is related-to (passed on as written, such a verb between an IoC and
    a threat was refused by the store: the whole import was a 400), named in a warning up to the bound (`named`)."""

    def __init__(self, out: Builder) -> None:
        self.named = _NamedUpTo(out, "relationships", "relationships whose relationship_type is no verb kept as related-to")

    def verb(self, obj_id: str, rel: str) -> str:
        try:
            return check_relation_verb(rel)
        except ValidationError:
            self.named.warn(obj_id, f"relationship_type {rel[:64]!r} is no verb (lower-case word, hyphens); kept as related-to")
            return "related-to"


def _sighting(out: Builder, obj: dict[str, Any], *, threat_refs: set[str], ioc_refs: set[str], tlp_of: dict[str, str]) -> None:
    """A sighting of a threat whose observed data hold IoCs: what was seen is that threat (OASIS's
    sighting-of-observed-data idiom), so each such IoC is linked to it as `sighted-as`. Any other sighting is
    counted in `skipped` (a sighting of an indicator says it was seen, not what it is)."""
    threat = obj.get("sighting_of_ref")
    refs = obj.get("observed_data_refs")
    observed = [ref for ref in refs if isinstance(ref, str) and ref in ioc_refs] if isinstance(refs, list) else []
    if not isinstance(threat, str) or threat not in threat_refs or not observed:
        out.skip("sighting")
        return
    marking = _tlp(obj, tlp_of)
    out.links.extend(Link(ref, threat, "sighted-as", marking, obj.get("id")) for ref in dict.fromkeys(observed))


# -- the document --------------------------------------------------------------------------


def _is_xml(content: Any) -> bool:
    head = bytes(content[:64]).decode("utf-8", "replace") if isinstance(content, (bytes, bytearray)) else content
    return isinstance(head, str) and head[:64].lstrip("\ufeff \t\r\n").startswith("<")


def _objects(doc: Any) -> list[Any]:
    if isinstance(doc, list):
        return doc
    if not isinstance(doc, dict):
        raise ValidationError("stix: expected a bundle or a STIX object (a JSON object)", field="content")
    if doc.get("type") == "bundle":
        objects = doc.get("objects", [])
        if not isinstance(objects, list):
            raise ValidationError("stix: bundle.objects must be a list", field="content")
        return objects
    if is_envelope(doc):  # what a TAXII 2.1 collection answers: its objects, no bundle around them
        return list(doc["objects"])
    if isinstance(doc.get("type"), str) and isinstance(doc.get("id"), str):
        return [doc]
    raise ValidationError('stix: not a STIX bundle or object (no "type": "bundle" and no type/id)', field="content")


def is_envelope(doc: Any) -> bool:
    """A TAXII 2.1 envelope: `objects` (and perhaps `more`, `next`), no type."""
    return isinstance(doc, dict) and "type" not in doc and isinstance(doc.get("objects"), list) and set(doc) <= {"more", "next", "objects"}


def _latest_by_id(objects: list[Any], out: Builder) -> dict[str, tuple[int, dict[str, Any]]]:
    """One version per id (the latest `modified`), in document order. An entry that is no STIX object (no type and
    id) or whose id is not `<type>--...` is an error of that entry (OpenCTI's test bundle holds a sighting whose id
    is a bare UUID); the document is refused only when it holds entries and none is a STIX object."""
    by_id: dict[str, tuple[int, dict[str, Any]]] = {}
    for index, obj in enumerate(objects):
        if not isinstance(obj, dict) or not isinstance(obj.get("type"), str) or not isinstance(obj.get("id"), str):
            out.error(f"objects[{index}]", f"objects[{index}] is not a STIX object (needs type and id)")
            continue
        if not obj["id"].startswith(obj["type"] + "--"):
            out.error(obj["id"], f"objects[{index}] ({obj['id']}): the id must start with {obj['type']}--")
            continue
        previous = by_id.get(obj["id"])
        if previous is None or _modified(obj) >= _modified(previous[1]):
            by_id[obj["id"]] = (index, obj)
    if objects and not by_id:
        raise ValidationError(f"stix: bundle: {out.errors[0].reason}", field="content")
    return by_id


def _modified(obj: dict[str, Any]) -> datetime:
    """When this version was made, as a time: as text, '...00Z' sorts after '...00.500Z'. None or unreadable: the oldest."""
    try:
        return datetime.fromisoformat(str(obj["modified"])).astimezone(UTC)
    except (KeyError, ValueError, OverflowError):
        return datetime.min.replace(tzinfo=UTC)


def _tlp_definitions(by_id: dict[str, tuple[int, dict[str, Any]]], objects: list[Any]) -> dict[str, str]:
    """TLP by marking id. A marking definition whose id is malformed (an error of its entry) still marks the objects
    naming it by that id: dropped, a TLP:RED marking let what it marks in at the import's default TLP."""
    tlp = dict(TLP_MARKINGS)
    malformed = [
        (obj["id"], obj)
        for obj in objects
        if isinstance(obj, dict) and obj.get("type") == "marking-definition" and isinstance(obj.get("id"), str) and obj["id"] not in by_id
    ]
    for obj_id, obj in [*((obj_id, obj) for obj_id, (_, obj) in by_id.items()), *malformed]:
        if obj.get("type") != "marking-definition":
            continue
        definition: dict[str, Any] = obj["definition"] if isinstance(obj.get("definition"), dict) else {}
        level = definition.get("tlp", definition.get("TLP")) if str(obj.get("definition_type", "")).lower() == "tlp" else None
        if level is None and isinstance(obj.get("extensions"), dict):  # TLP 2.0: the OASIS extension's tlp_2_0
            level = next((e["tlp_2_0"] for e in obj["extensions"].values() if isinstance(e, dict) and "tlp_2_0" in e), None)
        if level is None and str(obj.get("x_opencti_definition_type", "")).upper() == "TLP":  # OpenCTI's AMBER+STRICT, CLEAR
            level = obj.get("x_opencti_definition")
        if level is None and isinstance(obj.get("name"), str) and obj["name"].strip().lower().startswith("tlp"):
            level = obj["name"]
        if isinstance(level, str):
            # Tlp.parse, as OTX and MISP read them: `TLP_RED`, `tlp-red` were no TLP, and what they mark came in
            # at the import's default
            with contextlib.suppress(ValueError):
                level = Tlp.parse(level).value
            level = level.strip().lower()
            held = tlp.get(obj_id)
            # a malformed id written twice (no versions to choose by): the most restrictive of its levels
            if held is None or obj_id in by_id or _rank(level) > _rank(held):
                tlp[obj_id] = level
    return tlp


def _list(obj: dict[str, Any], key: str) -> list[Any]:
    """The object's list property, [] when absent or not a list (`"labels": 5` raised TypeError: a 500)."""
    value = obj.get(key)
    return list(value) if isinstance(value, list) else []


def _rank(level: str) -> int:
    return _TLP_RANK.index(level) if level in _TLP_RANK else -1


def _tlp(obj: dict[str, Any], tlp_of: dict[str, str]) -> str | None:
    """The object's TLP, granular markings included: one that marks a part we import (the pattern, the description)
    marks the IoC, and we do not tell the parts apart."""
    granular = [g.get("marking_ref") for g in _list(obj, "granular_markings") if isinstance(g, dict)]
    refs = [*_list(obj, "object_marking_refs"), *granular]
    levels = [tlp_of[ref] for ref in refs if isinstance(ref, str) and ref in tlp_of]
    levels = [level for level in levels if level in _TLP_RANK]
    return max(levels, key=_TLP_RANK.index) if levels else None  # several: the most restrictive wins


def _common(out: Builder, obj: dict[str, Any], tlp_of: dict[str, str], *, without_misp: bool = False) -> dict[str, Any]:
    """What each IoC of the object takes from it. Its tags (labels, indicator_types; `without_misp`: MISP's own `misp:`
    labels left out) are cleaned once for all its IoCs (an observed-data's many, an indicator's up to
    MAX_PATTERN_VALUES), the first MAX_TAGS of them: cleaned for each, 20,000 labels on 2,000 addresses took 12 s."""
    confidence = obj.get("confidence")
    tags = [*_list(obj, "labels"), *_list(obj, "indicator_types")]
    if without_misp:
        tags = [t for t in tags if not (isinstance(t, str) and t.startswith("misp:"))]
    return {
        "tags": out.shared_tags(tags, where=str(obj["id"]), room=MAX_TAGS),
        "tlp": _tlp(obj, tlp_of),
        "confidence": confidence if isinstance(confidence, int) and 0 <= confidence <= 100 else None,
        "description": (obj.get("description") or None) if isinstance(obj.get("description"), str) else None,
        # since when the value is known: observed-data's first observation, an indicator's validity
        "first_seen": seen_time(obj.get("first_observed") or obj.get("valid_from")),
    }


# -- indicators and their patterns ---------------------------------------------------------


def _indicator(out: Builder, obj: dict[str, Any], where: str, tlp_of: dict[str, str]) -> bool:
    pattern = obj.get("pattern")
    pattern_type = obj.get("pattern_type", "stix")
    if pattern_type != "stix":
        out.error(obj["id"], f"pattern_type {pattern_type!r} is not supported (only stix)")
        return False
    if not isinstance(pattern, str) or not pattern.strip():
        out.error(obj["id"], f"{where}: an indicator needs a pattern")
        return False
    version = "2.0" if obj.get("spec_version") == "2.0" else "2.1"
    try:
        values, complex_reason, resolutions = _pattern(pattern, version=version)
    except ValidationError as exc:  # this indicator only: the bundle's other objects still import
        quoted, algorithms = _quote_hash_algorithms(pattern)
        try:
            values, complex_reason, resolutions = _pattern(quoted, version=version) if algorithms else ([], None, [])
        except ValidationError:
            algorithms = []
        if not algorithms:
            out.error(obj["id"], f"{where}: {exc.message}")
            return False
        for algorithm in algorithms:
            out.warn(obj["id"], f"hashes.{algorithm} read as hashes.'{algorithm}' (the grammar wants it quoted)")
    common = _common(out, obj, tlp_of)
    if obj.get("valid_until"):
        common["expires_at"] = obj["valid_until"]
    if obj.get("name") and not common["description"]:
        common["description"] = str(obj["name"])[:4096]
    if len(values) > MAX_PATTERN_VALUES:
        out.warn(obj["id"], f"the pattern compares {len(values)} values; only the first {MAX_PATTERN_VALUES} were imported")
        values = values[:MAX_PATTERN_VALUES]
    # Each conjunction's names and addresses answer to a part of the indicator (its IoCs all keep its id, so its
    # threat links reach them all); the relation joins the two parts only.
    parts_of: dict[tuple[str | None, str], list[str]] = {}
    for k, (names, addresses) in enumerate(resolutions):
        for name in names:
            parts_of.setdefault(("domain", name), []).append(f"{obj['id']}/{k}/domain")
        for address in addresses:
            parts_of.setdefault((None, address), []).append(f"{obj['id']}/{k}/address")
    taken = 0
    taken_parts: set[str] = set()
    for ioc_type, value in values:
        parts = parts_of.get((ioc_type, value), [])
        if out.ioc(obj["id"], {**common, "value": value, "type": ioc_type}, parts=parts):
            taken += 1
            taken_parts.update(parts)
    for k in range(len(resolutions)):
        name_part, address_part = f"{obj['id']}/{k}/domain", f"{obj['id']}/{k}/address"
        if name_part in taken_parts and address_part in taken_parts:
            out.relations.append(Relation(name_part, address_part, "resolves-to"))
    if not values:
        out.error(obj["id"], f"the pattern names no supported indicator: {pattern[:200]}")
    elif complex_reason:
        out.warn(obj["id"], f"{complex_reason}; each value was imported as its own IoC")
    return taken > 0


_UNQUOTED_HASH = re.compile(r"(?<=\bhashes\.)([A-Za-z][A-Za-z0-9]*(?:-[A-Za-z0-9]+)+)")


def _quote_hash_algorithms(pattern: str) -> tuple[str, list[str]]:
    """The pattern with hyphenated hash algorithms quoted (`hashes.SHA-256` -> `hashes.'SHA-256'`), and which ones:
    OASIS's own 2.0 examples and many exporters write them bare, which the grammar refuses. Tried only on a pattern
    that did not parse."""
    algorithms = list(dict.fromkeys(_UNQUOTED_HASH.findall(pattern)))
    return _UNQUOTED_HASH.sub(r"'\1'", pattern), algorithms


class AndBooleanExpressionForThreatFlow:
    """What stix2's pattern builder makes of comparisons joined by AND, through its module hook (`create_pattern_object`
    looks up `<class>For<suffix>` in `module_name` first). stix2's own AndBooleanExpression raises unless every
    operand names one object type; the patterning grammar has no such rule, and MISP writes hostname|port as
    `[domain-name:value = 'x' AND network-traffic:dst_port = '8443']`. AND is read value by value here anyway."""

    operator = "AND"

    def __init__(self, operands: list[Any]) -> None:
        self.operands = list(operands)
        self.root_types = set().union(*(operand.root_types for operand in self.operands))


@functools.cache
def _builder(version: str) -> tuple[Any, Any]:
    """stix2's pattern builder for `version` (its pattern class and a visitor), keeping the NOT that stix2 drops
    before IN, LIKE, MATCHES, ISSUBSET and ISSUPERSET: `x NOT IN ('google.com')` was read as `x IN (...)`. Our AND
    comes in through stix2's module hook (AndBooleanExpressionForThreatFlow)."""
    from stix2 import pattern_visitor as v

    def negatable(class_name: str) -> Any:
        def visit(self: Any, ctx: Any) -> Any:
            children = self.visitChildren(ctx)  # path [NOT] operator value
            node = self.instantiate(class_name, children[0], children[-1])
            node.negated = len(children) > 3
            return node

        return visit

    new = version == "2.1"
    visitor = type(
        "ThreatFlowPatternVisitor",
        (v.STIXPatternVisitorForSTIX21 if new else v.STIXPatternVisitorForSTIX20,),
        {
            "visitPropTestSet": negatable("InComparisonExpression"),
            "visitPropTestLike": negatable("LikeComparisonExpression"),
            "visitPropTestRegex": negatable("MatchesComparisonExpression"),
            "visitPropTestIsSubset": negatable("IsSubsetComparisonExpression"),
            "visitPropTestIsSuperset": negatable("IsSupersetComparisonExpression"),
        },
    )
    return (v.Pattern21 if new else v.Pattern20), visitor(v.STIXPatternParser21 if new else v.STIXPatternParser20, "ThreatFlow", __name__)


Resolution = tuple[tuple[str, ...], tuple[str, ...]]  # (domain names, addresses they resolve to) of one conjunction
_NAME, _ADDRESS = ("domain-name", "value"), ("domain-name", "resolves_to_refs.value")


def pattern_values(pattern: str, *, version: str = "2.1") -> tuple[list[tuple[str | None, str]], str | None]:
    """(type, value) pairs a pattern compares against, and why it is more than a plain OR of values (or None)."""
    found, reason, _ = _pattern(pattern, version=version)
    return found, reason


def _pattern(pattern: str, *, version: str) -> tuple[list[tuple[str | None, str]], str | None, list[Resolution]]:
    """pattern_values, and the names that resolve to addresses (`_resolutions`) in the pattern's observations.

    One observation ORing many comparisons (a blocklist as one indicator) is read OR_PIECE comparisons at a time:
    the grammar's tree walk recurses once per OR, and past about 330 hit Python's recursion limit. Pieces are read
    only until they give MAX_PATTERN_VALUES values (the rest would be cut anyway), and at most
    MAX_OR_COMPARISONS_READ comparisons; the comparisons left unread are named in the reason."""
    split = _or_split(pattern)
    if split is None:
        return _whole_pattern(pattern, version=version)
    comparisons, qualifiers = split
    found: list[tuple[str | None, str]] = []
    reasons: list[str] = []
    resolutions: list[Resolution] = []
    read = 0
    while read < min(len(comparisons), MAX_OR_COMPARISONS_READ) and len(dict.fromkeys(found)) < MAX_PATTERN_VALUES:
        piece = comparisons[read : read + OR_PIECE]
        values, reason, resolved = _whole_pattern(f"[{' OR '.join(piece)}]{qualifiers}", version=version)
        found.extend(values)
        reasons.extend([reason] if reason else [])
        resolutions.extend(resolved)
        read += len(piece)
    if read < len(comparisons):
        reasons.append(f"{len(comparisons) - read} more comparisons past the first {read} were not read")
    return list(dict.fromkeys(found)), ("; ".join(dict.fromkeys(reasons)) or None), list(dict.fromkeys(resolutions))


# One observation ORing more comparisons than OR_SPLIT_AT is read in pieces of OR_PIECE (_pattern).
OR_SPLIT_AT = 200
OR_PIECE = 100
# Comparisons read at most, whatever they give: ones that give no new value (one address repeated, a path that is no
# IoC) had every piece read, 100,000 ORs in 20 s (distinct values stop at the first 100 values, ~1 s).
MAX_OR_COMPARISONS_READ = 10 * OR_PIECE
# What _or_split counts: a quoted string (escapes kept, an unterminated one to the end) or a comment (the grammar skips
# /* */ and // ones: an ' OR ' or a quote in one is no pattern), both skipped whole; a bracket or parenthesis; the
# keyword OR between the grammar's whitespace (Python's \s also holds \x1c-\x1f, which the grammar refuses).
_PATTERN_TOKENS = re.compile(
    r"'[^'\\]*(?:\\.[^'\\]*)*'?|/\*(?:.*?\*/|.*)|//[^\r\n]*|[\[\]()]|(?<=[^\S\x1c-\x1f])OR(?=[^\S\x1c-\x1f])", re.S
)


def _or_split(pattern: str) -> tuple[list[str], str] | None:
    """The comparisons of a pattern that is one observation ORing more than OR_SPLIT_AT of them at its top level,
    and what follows the observation (qualifiers); None for any other pattern. Quoted strings are skipped whole
    (`'a OR [b]'`), brackets and parentheses are counted, so only the observation's own ORs cut."""
    text = pattern.strip()
    if not text.startswith("[") or text.count(" OR ") < OR_SPLIT_AT:
        return None
    cuts: list[tuple[int, int]] = []  # (start, end) of each top-level OR keyword
    line_comments: set[int] = set()  # where each // comment ends: a piece ending in one keeps its line's end
    brackets = parens = 0
    end = -1
    for match in _PATTERN_TOKENS.finditer(text):  # a regex walks the text in C: a character loop took 2.7 s for 3.6 MB
        part = match.group()
        if part.startswith("//"):
            line_comments.add(match.end())
        if part[0] in "'/":
            continue  # a quoted string or a comment, skipped whole
        if part == "[":
            brackets += 1
        elif part == "]":
            brackets -= 1
            if brackets == 0:
                end = match.start()
                break
        elif part == "(":
            parens += 1
        elif part == ")":
            parens -= 1
        elif brackets == 1 and parens == 0:
            cuts.append(match.span())
    qualifiers = text[end + 1 :] if end > 0 else ""
    if end < 0 or "[" in qualifiers:
        return None  # unbalanced, or more than one observation: read whole
    if not cuts:
        inner = _unwrapped(text[1:end].strip())  # [(a OR b …)]: parentheses around the whole observation
        # read again once: its inner text is wrapped no more, so this branch does not come back to it
        return _or_split(f"[{inner}]{qualifiers}") if inner != text[1:end].strip() else None
    if len(cuts) < OR_SPLIT_AT:
        return None  # too few ORs to need it: read whole
    starts = [1, *(stop for _, stop in cuts)]
    stops = [*(start for start, _ in cuts), end]
    comparisons = [_comparison(text, start, stop, line_comments) for start, stop in zip(starts, stops, strict=True)]
    return comparisons, (" " + qualifiers.strip() if qualifiers.strip() else "")


def _comparison(text: str, start: int, stop: int, line_comments: set[int]) -> str:
    """text[start:stop] trimmed; one that ends in a // comment keeps a line end, or the comment would swallow what
    is joined after it (the next OR, the closing bracket)."""
    piece = text[start:stop].strip()
    return piece + "\n" if start + len(text[start:stop].rstrip()) in line_comments else piece


def _unwrapped(text: str) -> str:
    """`text` without the parentheses that wrap all of it (`((a OR b))` is `a OR b`), in one scan of it: peeled one
    pair at a time, each pair's check read the text again, and thousands of them made the work quadratic."""
    opened: list[int] = []
    closing: dict[int, int] = {}  # where each parenthesis opened closes
    for match in _PATTERN_TOKENS.finditer(text):
        if match.group() == "(":
            opened.append(match.start())
        elif match.group() == ")" and opened:
            closing[opened.pop()] = match.start()
    start, stop = 0, len(text)
    while start < stop and text[start] == "(" and closing.get(start) == stop - 1:
        start, stop = start + 1, stop - 1
        while start < stop and text[start].isspace():
            start += 1
        while start < stop and text[stop - 1].isspace():
            stop -= 1
    return text[start:stop]


def _whole_pattern(pattern: str, *, version: str) -> tuple[list[tuple[str | None, str]], str | None, list[Resolution]]:
    try:
        pattern_class, visitor = _builder(version)
        tree = pattern_class(pattern).visit(visitor)
    except RecursionError:  # the tree walk recurses once per operator: ~330 ORs or ANDs in one parenthesis
        operators = pattern.count(" OR ") + pattern.count(" AND ")
        raise ValidationError(
            f"pattern nests too deeply to read ({operators} ORs and ANDs, most inside one parenthesis): split it", field="pattern"
        ) from None
    except Exception as exc:  # stix2patterns raises ParseException; the visitor may raise others on odd input
        hint = " (a backslash in a string is written \\\\)" if _LONE_BACKSLASH.search(pattern) else ""
        raise ValidationError(f"pattern is not valid STIX patterning: {exc}{hint}", field="pattern") from None
    found: list[tuple[str | None, str]] = []
    reasons: list[str] = []
    resolutions: list[Resolution] = []
    for observation in _observations(tree, reasons):
        values, resolved = _observation_values(observation, reasons)
        found.extend(values)
        resolutions.extend(resolved)
    return list(dict.fromkeys(found)), ("; ".join(dict.fromkeys(reasons)) or None), list(dict.fromkeys(resolutions))


def _observations(node: Any, reasons: list[str]) -> Iterator[Any]:
    from stix2 import patterns as p

    if isinstance(node, p.ObservationExpression):
        yield node
    elif isinstance(node, p.QualifiedObservationExpression):
        reasons.append(f"qualifier {node.qualifier} is not kept")
        yield from _observations(node.observation_expression, reasons)
    elif isinstance(node, p.ParentheticalExpression):
        yield from _observations(node.expression, reasons)
    elif isinstance(node, (p.AndObservationExpression, p.FollowedByObservationExpression)):
        reasons.append(f"observations joined by {node.operator} are not kept together")
        for operand in node.operands:
            yield from _observations(operand, reasons)
    elif isinstance(node, p.OrObservationExpression):
        for operand in node.operands:
            yield from _observations(operand, reasons)


def _comparisons(node: Any, reasons: list[str], kept: Collection[int] = ()) -> Iterator[Any]:
    """The comparisons under `node`; an AND not in `kept` (ids of those a resolves-to relation keeps) is a reason."""
    from stix2 import patterns as p

    if isinstance(node, p.ParentheticalExpression):
        yield from _comparisons(node.expression, reasons, kept)
    elif isinstance(node, p.OrBooleanExpression):
        for operand in node.operands:
            yield from _comparisons(operand, reasons, kept)
    elif _is_and(node):
        if id(node) not in kept:
            reasons.append("comparisons joined by AND are not kept together")
        for operand in node.operands:
            yield from _comparisons(operand, reasons, kept)
    else:
        yield node


def _is_and(node: Any) -> bool:
    from stix2 import patterns as p

    return isinstance(node, (p.AndBooleanExpression, AndBooleanExpressionForThreatFlow))


def _resolutions(node: Any, kept: set[int]) -> Iterator[Resolution]:
    """(names, addresses) of each conjunction of one observation that ANDs `domain-name:value` with
    `domain-name:resolves_to_refs[*].value`: both describe one domain-name object, so each name resolves to each
    address (MISP's STIX export of domain|ip). Nothing is related across OR or across observations, nor from a
    conjunct that holds names and addresses both (an OR of the two). A conjunction of nothing else goes into `kept`
    (its AND nodes' ids): it is kept together, so not reported as not kept."""
    from stix2 import patterns as p

    if isinstance(node, p.ParentheticalExpression):
        yield from _resolutions(node.expression, kept)
    elif isinstance(node, p.OrBooleanExpression):
        for operand in node.operands:
            yield from _resolutions(operand, kept)
    elif _is_and(node):
        ands: list[Any] = []
        names: dict[str, None] = {}
        addresses: dict[str, None] = {}
        whole = True
        for conjunct in _conjuncts(node, ands):
            sides = _sides(conjunct)
            if set(sides) == {_NAME}:
                names.update(sides[_NAME])
            elif set(sides) == {_ADDRESS}:
                addresses.update(sides[_ADDRESS])
            elif sides:
                whole = False
            yield from _resolutions(conjunct, kept)
        if names and addresses:
            yield tuple(names), tuple(addresses)
            if whole:
                kept.update(id(n) for n in ands)


def _conjuncts(node: Any, ands: list[Any]) -> Iterator[Any]:
    """The operands of an AND, nested ANDs and parentheses flattened (`a AND b AND c` is (a AND b) AND c); the AND
    nodes walked go into `ands`."""
    from stix2 import patterns as p

    if isinstance(node, p.ParentheticalExpression):
        yield from _conjuncts(node.expression, ands)
    elif _is_and(node):
        ands.append(node)
        for operand in node.operands:
            yield from _conjuncts(operand, ands)
    else:
        yield node


def _sides(node: Any) -> dict[tuple[str, str], dict[str, None]]:
    """The exact values compared under `node`, by (object type, path); only names and addresses are told apart,
    every other value falls under its own key."""
    sides: dict[tuple[str, str], dict[str, None]] = {}
    for comparison in _comparisons(node, []):
        key = (comparison.lhs.object_type_name, _hash_key(_path(comparison.lhs)))
        constants = _exact(comparison, key)
        if constants is not None:
            sides.setdefault(key, {}).update(dict.fromkeys(_literal(c) for c in constants))
    return sides


def _exact(comparison: Any, key: tuple[str, str]) -> list[Any] | None:
    """The constants a comparison takes as values (`=`, `IN`, an address ISSUBSET a network), or None."""
    from stix2 import patterns as p

    if isinstance(comparison, p.EqualityComparisonExpression) and not comparison.negated:
        return [comparison.rhs]
    if isinstance(comparison, p.InComparisonExpression) and not comparison.negated:
        return list(comparison.rhs.value)
    if isinstance(comparison, p.IsSubsetComparisonExpression) and not comparison.negated and OBJECT_PATHS.get(key, "") is None:
        return [comparison.rhs]  # an address in this network: the network (a CIDR) is the indicator
    return None


def _path(lhs: Any) -> str:
    from stix2 import patterns as p

    parts = []
    for component in lhs.property_path:
        name = component.property_name if isinstance(component, p.BasicObjectPathComponent) else getattr(component, "property_name", "")
        parts.append(str(name).strip("'"))
    return ".".join(parts)


def _hash_key(path: str) -> str:
    head, _, algorithm = path.partition(".")
    return f"{head}.{algorithm.replace('-', '').replace('_', '').lower()}" if head == "hashes" else path


def _observation_values(observation: Any, reasons: list[str]) -> tuple[list[tuple[str | None, str]], list[Resolution]]:
    local: list[str] = []
    kept: set[int] = set()
    resolutions = list(_resolutions(observation.operand, kept))
    comparisons = list(_comparisons(observation.operand, local, kept))
    values: list[tuple[str | None, str]] = []
    file_parts: dict[str, str] = {}
    for comparison in comparisons:
        object_type = comparison.lhs.object_type_name
        path = _hash_key(_path(comparison.lhs))
        constants = _exact(comparison, (object_type, path))
        if constants is None:
            local.append(f"{object_type}:{path} {comparison.operator} is not an exact value")
            continue
        if object_type == "file" and path in ("name", "parent_directory_ref.path"):
            file_parts[path] = _literal(constants[0])
            continue
        key = (object_type, path)
        if key not in OBJECT_PATHS:
            local.append(f"{object_type}:{path} is not an indicator type ThreatFlow stores")
            continue
        values.extend((OBJECT_PATHS[key], _literal(constant)) for constant in constants)
    if "parent_directory_ref.path" in file_parts and "name" in file_parts:
        directory = file_parts["parent_directory_ref.path"]
        separator = "\\" if "\\" in directory else "/"
        values.append(("file_path", directory.rstrip("\\/") + separator + file_parts["name"]))
        local = [r for r in local if "AND" not in r] if len(comparisons) == 2 else local
    elif file_parts:
        local.append("file:name without parent_directory_ref.path is not a path")
    if values:
        reasons.extend(local)
    return values, resolutions


# -- SCOs ---------------------------------------------------------------------------------


def _sco(out: Builder, ref: str, obj: dict[str, Any], where: str, common: dict[str, Any]) -> bool:
    kind = obj.get("type")
    values: list[tuple[str | None, str]] = []
    if kind in ("ipv4-addr", "ipv6-addr", "domain-name", "hostname", "url", "email-addr") and isinstance(obj.get("value"), str):
        values.append((OBJECT_PATHS[(str(kind), "value")], obj["value"]))
    elif kind == "directory" and isinstance(obj.get("path"), str):
        values.append(("file_path", obj["path"]))
    elif kind == "file":
        for algorithm, digest in (obj["hashes"] if isinstance(obj.get("hashes"), dict) else {}).items():
            key = ("file", _hash_key(f"hashes.{algorithm}"))
            if key in OBJECT_PATHS and isinstance(digest, str):
                values.append((OBJECT_PATHS[key], digest))
    if not values:
        out.skip(f"{kind} without an indicator value")
        return False
    taken = 0
    for ioc_type, value in values:
        taken += out.ioc(ref, {**common, "value": value, "type": ioc_type})
    return taken > 0


def _observed(
    out: Builder, obj_id: str, obj: dict[str, Any], where: str, tlp_of: dict[str, str], by_id: dict[str, tuple[int, dict[str, Any]]]
) -> bool:
    common = _common(out, obj, tlp_of, without_misp=True)
    taken = False
    embedded = obj.get("objects")
    if isinstance(embedded, dict):  # STIX 2.0: SCOs inline, keyed "0", "1"...
        for key, sco in embedded.items():
            if isinstance(sco, dict):
                taken = _sco(out, obj_id, sco, f"{where}.objects[{key}]", common) or taken
    for ref in _list(obj, "object_refs"):  # STIX 2.1: references to top-level SCOs (imported on their own too)
        if isinstance(ref, str) and ref in by_id and by_id[ref][1].get("type") in _SCO_TYPES:
            taken = _sco(out, obj_id, by_id[ref][1], where, common) or taken
    return taken


# -- threats ------------------------------------------------------------------------------


def _threat(out: Builder, obj_id: str, obj: dict[str, Any], where: str, tlp_of: dict[str, str]) -> bool:
    name = obj.get("name")
    if not isinstance(name, str) or not name.strip():
        out.error(obj_id, f"{where}: a {obj['type']} needs a name")
        return False
    aliases = [a for a in [*_list(obj, "aliases"), *_list(obj, "x_mitre_aliases")] if isinstance(a, str)]
    references = []
    for ref in _list(obj, "external_references"):
        if isinstance(ref, dict) and isinstance(ref.get("source_name"), str):
            references.append({k: ref[k] for k in ("source_name", "url", "external_id", "description") if isinstance(ref.get(k), str)})
    confidence = obj.get("confidence")
    return out.threat(
        obj_id,
        {
            "kind": obj["type"],
            "name": name.strip(),
            "aliases": sorted({a.strip() for a in aliases if a.strip() and a.strip().lower() != name.strip().lower()}),
            "description": obj.get("description") if isinstance(obj.get("description"), str) else None,
            "confidence": confidence if isinstance(confidence, int) and 0 <= confidence <= 100 else None,
            "first_seen": obj.get("first_seen"),
            "last_seen": obj.get("last_seen"),
            "references": references,
            "tags": _list(obj, "labels"),
            "stix_id": obj_id,
            "tlp": _tlp(obj, tlp_of),
        },
    )


def _attack_id(obj: dict[str, Any]) -> str | None:
    for ref in _list(obj, "external_references"):
        if isinstance(ref, dict) and ref.get("source_name") in ("mitre-attack", "mitre-mobile-attack", "mitre-ics-attack"):
            external_id = str(ref.get("external_id") or "").upper()
            if _TTP.match(external_id):
                return external_id
    return None
