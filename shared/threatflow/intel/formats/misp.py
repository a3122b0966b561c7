"""MISP import: events (`{"Event": {...}}`, a bare event, `{"response": [...]}`), attribute searches
(`{"response": {"Attribute": [...]}}`) and MISP CSV.

- Attributes (top level and inside Objects) become IoCs by type (`MISP_TYPES`);
  composite types (`ip-dst|port`, `filename|sha256`) keep the indicator half and
  `domain|ip` gives both halves plus a resolves-to relation, as a `domain-ip` object does.
- An Object's ObjectReferences relate its IoCs to those of the object or attribute referenced
  (our relation types kept, any other word related-to), at most MAX_OBJECT_RELATIONS a document. Non-IoC types (text,
  link, comment, regkey...) are counted in `skipped`, not errors.
- Tags: `tlp:*` sets the TLP (the most restrictive of the event's and the attribute's;
  tlp:ex:chr, tlp:unclear... are kept as tags), `misp-galaxy:*`
  tags are left to the galaxies, every other tag is kept. Each IoC also gets
  `misp-event:<uuid>`; the source is `misp:<Orgc name>`; `comment` (or the
  event's info) is the description.
- `to_ids: true` (or "1") marks the IoC malicious; `to_ids: false` leaves the verdict
  alone and adds the tag `misp:to_ids=false`, so detection exports can skip it.
- Galaxy clusters become threats (threat-actor, intrusion-set, malware families,
  tools), and so do clusters named only by a `misp-galaxy:` tag (feed events have no
  Galaxy block); ATT&CK attack-pattern clusters become TTPs of the event's threats.
  Event-level clusters are linked to every IoC of the event (the first
  MAX_THREATS_PER_IOC of them, so links stay linear in the document; the rest is
  named in warnings), attribute-level clusters to that attribute's IoCs.
"""

from __future__ import annotations

import itertools
import re
from dataclasses import dataclass
from typing import Any

import msgspec

from threatflow.intel.formats.base import (
    RELATION_TYPES,
    Builder,
    Link,
    ParsedImport,
    ParsedThreat,
    Relation,
    as_text,
    is_tlp,
    load_json,
    seen_time,
    strictest_tlp,
)
from threatflow.intel.formats.csvfmt import parse as parse_csv_rows
from threatflow.intel.formats.misp_types import MISP_TYPES
from threatflow.platform.errors import ValidationError
from threatflow.platform.vocabulary import MAX_TAGS

_GALAXY_KINDS = {
    "threat-actor": "threat-actor",
    "mitre-intrusion-set": "intrusion-set",
    "mitre-enterprise-attack-intrusion-set": "intrusion-set",
    "intrusion-set": "intrusion-set",
    "mitre-malware": "malware",
    "mitre-enterprise-attack-malware": "malware",
    "malpedia": "malware",
    "malware": "malware",
    "banker": "malware",
    "ransomware": "malware",
    "rat": "malware",
    "stealer": "malware",
    "botnet": "malware",
    "backdoor": "malware",
    "android": "malware",
    "tool": "tool",
    "mitre-tool": "tool",
    "mitre-enterprise-attack-tool": "tool",
    "exploit-kit": "tool",
}
_ATTACK_PATTERN_GALAXIES = {"mitre-attack-pattern", "mitre-enterprise-attack-attack-pattern", "mitre-mobile-attack-attack-pattern"}
_MITRE_SUFFIX = re.compile(r"^(?P<name>.+?)\s+-\s+(?P<id>[GSTC]\d{4}(?:\.\d{3})?)$")
_TTP = re.compile(r"^T\d{4}(?:\.\d{3})?$")
MAX_THREATS_PER_IOC = 32  # an event's clusters linked to each of its IoCs
# Relations from objects (ObjectReferences, domain-ip) in one document: a reference relates every IoC of one object
# to every IoC of the other, so N references to an object of N IoCs would be N² relations.
MAX_OBJECT_RELATIONS = 1000
_GALAXY_TAG = re.compile(r'^misp-galaxy:(?P<type>[^=]+)="(?P<value>.+)"$')
_ABSOLUTE = re.compile(r"^(?:[A-Za-z]:\\|\\\\|/|%[A-Za-z_]+%\\)")


def parse(content: Any) -> ParsedImport:
    if isinstance(content, (bytes, bytearray, str)):
        text = as_text(content, what="misp").lstrip()
        if not text.startswith(("{", "[")):
            return parse_csv(text)
    doc = load_json(content, what="misp")
    out = Builder()
    events = _events(doc)
    room = _Room(MAX_OBJECT_RELATIONS)  # relations the document's objects may still make
    # The ATT&CK ids of the events naming each threat, written into it once: merged at each event, a family named by
    # 8,000 events sorted its growing list 8,000 times (1.5 MB took 7.4 s).
    ttps_of: dict[str, set[str]] = {}
    for index, event in enumerate(events):
        _event(out, event, room, ttps_of, where="Event" if len(events) == 1 else f"response[{index}].Event")
    for ref, ttps in ttps_of.items():
        threat = out.threats[out.threat_at[ref]]
        out.threats[out.threat_at[ref]] = ParsedThreat(ref, msgspec.structs.replace(threat.item, ttps=sorted({*threat.item.ttps, *ttps})))
    return out.build()


_BARE_EVENT_KEYS = ("Attribute", "Object", "info", "uuid")  # an event's body without its {"Event": ...} wrapper


def is_event_document(doc: Any) -> bool:
    """Whether decoded JSON is a MISP event document as a whole: {"Event": {...}}, {"response": [...]} or a bare event
    (what `threatflow iocs import` sends as misp; a list of events is also read, but a list is the json format's)."""
    return isinstance(doc, dict) and ("Event" in doc or "response" in doc or any(key in doc for key in _BARE_EVENT_KEYS))


def _events(doc: Any) -> list[dict[str, Any]]:
    if isinstance(doc, dict) and isinstance(doc.get("response"), dict) and "Attribute" in doc["response"]:
        events = [doc["response"]]  # /attributes/restSearch: the attributes, read as one event's
    elif isinstance(doc, dict) and "response" in doc:
        items = doc["response"]
        if not isinstance(items, list):
            raise ValidationError("misp: response must be a list of events", field="content")
        events = [item.get("Event", item) if isinstance(item, dict) else item for item in items]
    elif isinstance(doc, dict) and "Event" in doc:
        events = [doc["Event"]]
    elif isinstance(doc, list):
        events = [item.get("Event", item) if isinstance(item, dict) else item for item in doc]
    elif isinstance(doc, dict) and any(key in doc for key in _BARE_EVENT_KEYS):
        events = [doc]
    else:
        raise ValidationError('misp: not a MISP event (expected {"Event": {...}}, a bare event or {"response": [...]})', field="content")
    for index, event in enumerate(events):
        if not isinstance(event, dict):
            raise ValidationError(f"misp: event {index} is not an object", field="content")
    return events


def _list(event: dict[str, Any], key: str, where: str) -> list[Any]:
    value = event.get(key)
    if value is None:
        return []
    if not isinstance(value, list):
        raise ValidationError(f"misp: {where}.{key} must be a list; got {type(value).__name__}", field="content")
    return value


def _tag_names(holder: dict[str, Any], where: str) -> list[str]:
    names = []
    for tag in _list(holder, "Tag", where):
        name = tag.get("name") if isinstance(tag, dict) else tag
        if isinstance(name, str) and name.strip():
            names.append(name.strip())
    return names


def _split_tags(names: list[str], *, floor: str | None = None) -> tuple[list[str], str | None]:
    """The tags to keep and the most restrictive TLP among the `tlp:` tags and `floor` (the event's, for an attribute):
    nothing comes in less restricted than it was marked. The taxonomy's other `tlp:` values (tlp:ex:chr, tlp:unclear)
    are no TLP and stay tags."""
    tags = [name for name in names if not is_tlp(name) and not name.lower().startswith("misp-galaxy:")]
    return tags, strictest_tlp([floor, *(name.lower() for name in names if is_tlp(name))])


def _event(out: Builder, event: dict[str, Any], room: _Room, ttps_of: dict[str, set[str]], *, where: str) -> None:
    unread = room.unread
    uuid = str(event.get("uuid") or "")
    orgc: dict[str, Any] = event["Orgc"] if isinstance(event.get("Orgc"), dict) else {}
    source = f"misp:{orgc['name']}" if orgc.get("name") else "misp"
    event_tags, event_tlp = _split_tags(_tag_names(event, where))
    event_tags = out.shared_tags(event_tags, where=where, room=MAX_TAGS - bool(uuid))  # every attribute's: cleaned once
    if uuid:
        event_tags.append(f"misp-event:{uuid}")
    # every attribute's description: cut once (over 4,096 characters, it got every attribute rejected)
    info = event["info"][:4096] if isinstance(event.get("info"), str) else None
    # The event's date stands for when its attributes were first seen, unless one says so itself.
    ctx = {"source": source, "tags": event_tags, "tlp": event_tlp, "info": info, "first_seen": seen_time(event.get("date"))}

    threat_refs, ttps = _galaxies(out, event, where)
    event_iocs: list[str] = []
    refs_of: dict[str, list[str]] = {}  # a MISP uuid (attribute or object) -> the refs of the IoCs it gave
    for index, attribute in enumerate(_list(event, "Attribute", where)):
        refs = _attribute(out, attribute, ctx, where=f"{where}.Attribute[{index}]")
        event_iocs.extend(refs)
        _remember(refs_of, attribute.get("uuid"), refs)
    objects: list[tuple[str, dict[str, Any]]] = []
    for o_index, obj in enumerate(_list(event, "Object", where)):
        if not isinstance(obj, dict):
            raise ValidationError(f"misp: {where}.Object[{o_index}] is not an object", field="content")
        if _flag(obj.get("deleted")):
            out.skip("deleted")
            continue
        obj_ctx = {**ctx, "info": _comment(obj) or info}  # cut once for all the object's attributes
        by_relation: dict[str, list[str]] = {}  # the object's IoC refs by their object_relation (domain, ip...)
        for index, attribute in enumerate(_list(obj, "Attribute", f"{where}.Object[{o_index}]")):
            refs = _attribute(out, attribute, obj_ctx, where=f"{where}.Object[{o_index}].Attribute[{index}]")
            event_iocs.extend(refs)
            _remember(refs_of, attribute.get("uuid"), refs)
            by_relation.setdefault(str(attribute.get("object_relation") or ""), []).extend(refs)
        _remember(refs_of, obj.get("uuid"), [ref for refs in by_relation.values() for ref in refs])
        if obj.get("name") == "domain-ip":  # the object form of domain|ip: the domain resolved to the address
            names = [*by_relation.get("domain", []), *by_relation.get("hostname", [])]
            if names and by_relation.get("ip") and room.take():
                _relate(out, names, by_relation["ip"], "resolves-to", room, where=f"{where}.Object[{o_index}]")
        objects.append((f"{where}.Object[{o_index}]", obj))
    for obj_where, obj in objects:
        _object_references(out, obj, refs_of, room, where=obj_where)
    if room.unread > unread:
        out.warn(where, f"{room.unread - unread} object relations not read: at most {MAX_OBJECT_RELATIONS} from a document's objects")
    if ttps:  # the event's ATT&CK clusters describe every threat of the event (written by `parse`, once)
        for ref in threat_refs:
            if ref in out.threat_at:
                ttps_of.setdefault(ref, set()).update(ttps)
    linked = threat_refs[:MAX_THREATS_PER_IOC]  # N IoCs x M clusters would be N*M links: kept linear in the document
    if len(threat_refs) > len(linked) and event_iocs:
        out.warn(
            where,
            f"each IoC is linked to the first {len(linked)} of the event's {len(threat_refs)} threats:"
            f" {len(threat_refs) - len(linked)} of its threats are linked to none of its IoCs",
        )
    out.link_all(Link(ioc_ref, threat_ref, "indicates") for ioc_ref in event_iocs for threat_ref in linked)


def _comment(holder: dict[str, Any]) -> str | None:
    """An object's or attribute's `comment` as a description: cut to 4,096 characters (the description's bound, as
    an event's info is); one that is not a string is passed over (either rejected all the attributes it described)."""
    comment = holder.get("comment")
    return comment[:4096] if isinstance(comment, str) and comment else None


def _attribute(out: Builder, attribute: Any, ctx: dict[str, Any], *, where: str) -> list[str]:
    """The refs of the IoCs this attribute gave (none, one, or two for domain|ip)."""
    if not isinstance(attribute, dict):
        raise ValidationError(f"misp: {where} is not an object", field="content")
    if _flag(attribute.get("deleted")):
        out.skip("deleted")
        return []
    misp_type = str(attribute.get("type") or "")
    value = attribute.get("value")
    ref = str(attribute.get("uuid") or where)
    if not misp_type or not isinstance(value, str) or not value.strip():
        out.error(ref, f"{where}: attribute needs a type and a value")
        return []
    tags, tlp = _split_tags(_tag_names(attribute, where), floor=ctx["tlp"])
    to_ids = _flag(attribute.get("to_ids"))
    # the event's tags first, then the attribute's own while the IoC has room: added past the event's 64, every
    # attribute with a tag of its own was rejected
    event_tags = set(ctx["tags"])
    own = [
        t
        for t in out.shared_tags([*tags, *(["misp:to_ids=false"] if to_ids is False else [])], where=where, room=MAX_TAGS)
        if t not in event_tags
    ]
    room = MAX_TAGS - len(ctx["tags"])
    if len(own) > room:
        out.warn(where, f"{len(own) - room} of its own tags not given to it: an IoC holds at most {MAX_TAGS} tags, its event's first")
    base = {
        "tags": [*ctx["tags"], *own[: max(0, room)]],
        "source": ctx["source"],
        "tlp": tlp,
        "description": _comment(attribute) or ctx["info"] or None,
        "first_seen": seen_time(attribute.get("first_seen")) or ctx["first_seen"],
        "verdict": "malicious" if to_ids else None,
    }
    refs: list[str] = []
    if misp_type == "domain|ip":
        domain, _, ip = value.partition("|")
        if out.ioc(f"{ref}/domain", {**base, "value": domain, "type": "domain"}):
            refs.append(f"{ref}/domain")
        if out.ioc(f"{ref}/ip", {**base, "value": ip}):
            refs.append(f"{ref}/ip")
        if len(refs) == 2:
            out.relations.append(Relation(f"{ref}/domain", f"{ref}/ip", "resolves-to"))
    else:
        mapping = MISP_TYPES.get(misp_type)
        if mapping is None:
            out.skip(misp_type)
            return []
        ioc_type, half = mapping
        part = value.split("|")[half] if "|" in misp_type and "|" in value else value
        if ioc_type == "file_path" and not _ABSOLUTE.match(part):
            out.skip("filename")
            return []
        if out.ioc(ref, {**base, "value": part, "type": ioc_type}):
            refs.append(ref)
    threat_refs, _ttps = _galaxies(out, attribute, where)
    out.link_all(Link(ioc_ref, threat_ref, "indicates") for ioc_ref in refs for threat_ref in threat_refs)
    return refs


def _remember(refs_of: dict[str, list[str]], uuid: Any, refs: list[str]) -> None:
    if isinstance(uuid, str) and uuid and refs:
        refs_of.setdefault(uuid, []).extend(refs)


def _object_references(out: Builder, obj: dict[str, Any], refs_of: dict[str, list[str]], room: _Room, *, where: str) -> None:
    """The object's ObjectReferences (this object -> an object or attribute of the event) as relations between
    their IoCs: MISP's relationship_type when it is one of ours (communicates-with, drops...), else related-to.
    A reference to something the document does not hold, or that gave no IoC, relates nothing."""
    references = obj.get("ObjectReference")
    if references is None:
        return
    if not isinstance(references, list):
        out.warn(where, f"ObjectReference must be a list; got {type(references).__name__}: not read")
        return
    sources = refs_of.get(str(obj.get("uuid") or ""), [])
    done: set[tuple[str, str]] = set()  # a reference repeated would make the same relations again
    for reference in references:
        if not isinstance(reference, dict) or _flag(reference.get("deleted")) or not sources:
            continue
        target = str(reference.get("referenced_uuid") or "")
        verb = str(reference.get("relationship_type") or "").strip().lower()
        kind = verb if verb in RELATION_TYPES else "related-to"
        if (target, kind) in done or not refs_of.get(target):
            continue
        done.add((target, kind))
        if room.take():  # past the budget a reference is counted, not walked
            _relate(out, sources, refs_of[target], kind, room, where=where)


@dataclass
class _Room:
    """Relations a document's objects may still make (`left`, from MAX_OBJECT_RELATIONS), and how many relating
    steps (a reference, a domain-ip object) came once none was left: those are counted, never walked, so that
    references past the budget cost nothing but their reading."""

    left: int
    unread: int = 0

    def take(self) -> bool:
        if self.left > 0:
            return True
        self.unread += 1
        return False


def _relate(out: Builder, sources: list[str], targets: list[str], kind: str, room: _Room, *, where: str) -> None:
    """Each source related to each target while the document's objects have room (`room.left`, from
    MAX_OBJECT_RELATIONS); the pairs left out are counted, never enumerated, in a warning of the object."""
    wanted = len(sources) * len(targets) - len(set(sources) & set(targets))
    pairs = itertools.islice(((s, t) for s in sources for t in targets if s != t), room.left)
    taken = [Relation(source, target, kind) for source, target in pairs]
    room.left -= len(taken)
    out.relations.extend(taken)
    if wanted > len(taken):
        out.warn(where, f"{wanted - len(taken)} relations not made: at most {MAX_OBJECT_RELATIONS} from a document's objects")


def _flag(value: Any) -> bool | None:
    """A MISP boolean: true/false, or "1"/"0" as MISP writes them in places (its ZMQ feed, older exports); None if absent."""
    if isinstance(value, bool) or value is None:
        return value
    text = str(value).strip().lower()
    return True if text in ("1", "true") else False if text in ("0", "false", "") else None


def _galaxies(out: Builder, holder: dict[str, Any], where: str) -> tuple[list[str], list[str]]:
    """Threats from the holder's galaxy clusters (refs), and the ATT&CK technique ids among them."""
    refs: dict[str, None] = {}  # in order, each once (a list's `in` made the clusters' reading quadratic)
    ttps: list[str] = []
    for g_index, galaxy in enumerate([*_list(holder, "Galaxy", where), *_tag_galaxies(holder, where)]):
        if not isinstance(galaxy, dict):
            continue
        galaxy_type = str(galaxy.get("type") or "")
        for cluster in _list(galaxy, "GalaxyCluster", f"{where}.Galaxy[{g_index}]"):
            if not isinstance(cluster, dict) or not isinstance(cluster.get("value"), str):
                continue
            value = cluster["value"].strip()
            meta: dict[str, Any] = cluster["meta"] if isinstance(cluster.get("meta"), dict) else {}
            match = _MITRE_SUFFIX.match(value)
            name, external_id = (match.group("name"), match.group("id")) if match else (value, None)
            external_id = external_id or _first(meta.get("external_id"))
            if galaxy_type in _ATTACK_PATTERN_GALAXIES:
                if external_id and _TTP.match(external_id.upper()):
                    ttps.append(external_id.upper())
                continue
            kind = _GALAXY_KINDS.get(galaxy_type)
            if kind is None:
                out.skip(f"galaxy:{galaxy_type}")
                continue
            ref = f"threat:{kind}:{name.lower()}"
            refs[ref] = None
            if ref in out.threat_at:
                continue
            references = [{"source_name": "misp-galaxy", "url": url} for url in _meta_list(meta, "refs") if isinstance(url, str)]
            if external_id:
                references.insert(0, {"source_name": "mitre-attack", "external_id": external_id})
            synonyms = [s for s in _meta_list(meta, "synonyms") if isinstance(s, str) and s.strip() and s.strip().lower() != name.lower()]
            out.threat(
                ref,
                {
                    "kind": kind,
                    "name": name,
                    "aliases": synonyms,
                    "description": cluster.get("description") or None,
                    "references": references,
                    "tags": [f"misp-galaxy:{galaxy_type}"],
                },
            )
    return list(refs), ttps


def _meta_list(meta: dict[str, Any], key: str) -> list[Any]:
    """A cluster's meta list (refs, synonyms); anything else is read as none (`"refs": 5` raised TypeError)."""
    value = meta.get(key)
    return value if isinstance(value, list) else []


def _tag_galaxies(holder: dict[str, Any], where: str) -> list[dict[str, Any]]:
    """Clusters named only by a `misp-galaxy:TYPE="VALUE"` tag, as galaxies: a feed's events (PyMISP's to_feed) carry
    the tags and no Galaxy block. A cluster the Galaxy block already holds is not repeated."""
    held = {
        (str(galaxy.get("type") or ""), str(cluster.get("value") or "").strip())
        for index, galaxy in enumerate(_list(holder, "Galaxy", where))
        if isinstance(galaxy, dict)
        for cluster in _list(galaxy, "GalaxyCluster", f"{where}.Galaxy[{index}]")
        if isinstance(cluster, dict)
    }
    galaxies = []
    for name in _tag_names(holder, where):
        match = _GALAXY_TAG.match(name)
        if match and (match.group("type"), match.group("value").strip()) not in held:
            galaxies.append({"type": match.group("type"), "GalaxyCluster": [{"value": match.group("value")}]})
    return galaxies


def _first(value: Any) -> str | None:
    if isinstance(value, list):
        value = value[0] if value else None
    return value if isinstance(value, str) else None


# -- MISP CSV ---------------------------------------------------------------------------


def parse_csv(text: str) -> ParsedImport:
    """MISP CSV exports: either `uuid,event_id,category,type,value,...` rows, or one
    column per attribute type (`md5, sha1, sha256`) with a value in each cell."""
    return parse_csv_rows(text)
