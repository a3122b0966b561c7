"""AlienVault OTX pulses, read by the JSON import: a pulse as OTX exports it, or the API's `{"results": [pulses]}`.

- Each indicator record becomes an IoC by its OTX type (`IPv4`, `hostname`, `URL`, `FileHash-SHA256`...); types
  ThreatFlow does not store (`CVE`, `YARA`, `Mutex`, `FileHash-IMPHASH`...) are counted in `skipped` as `otx:<type>`.
- The pulse's `tlp` (or `TLP`, as OTX's API writes it; the stricter of the two) is every IoC's and threat's TLP,
  its `tags` and `otx-pulse:<id>` are every IoC's tags, an indicator's description (or title, else the pulse's
  name) is its description, its `created` when it was first seen.
- `adversary` becomes a threat-actor and `malware_families` malware threats (at most MAX_THREATS_PER_IOC in all),
  each given the pulse's ATT&CK ids (`attack_ids`, at most MAX_TTPS) as TTPs and linked to every IoC of the pulse.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

import msgspec

from threatflow.intel.formats.base import Builder, Link, ParsedThreat, seen_time, strictest_tlp
from threatflow.intel.formats.csvfmt import map_type
from threatflow.iocs.types import IocType
from threatflow.platform.vocabulary import MAX_TAG_LENGTH, MAX_TAGS, Tlp
from threatflow.threats.model import MAX_TTPS

MAX_THREATS_PER_IOC = 32  # as MISP's event clusters: links stay linear in the document
_TTP = re.compile(r"^T\d{4}(?:\.\d{3})?$")
_OURS = {t.value for t in IocType}


@dataclass
class Seen:
    """A threat the document's pulses named: where it is in `out.threats`, and the TTPs and the strictest TLP of the
    pulses naming it, gathered as they come and written into the threat once, by `finish`."""

    index: int
    ttps: set[str] = field(default_factory=set)
    tlp: str | None = None
    merged: bool = False  # a later pulse named it: its threat is rewritten by `finish`


def finish(out: Builder, seen: dict[str, Seen]) -> None:
    """Each threat several pulses named takes their TTPs (the first MAX_TTPS in order) and the strictest of their
    TLPs, so that a TLP:RED pulse's techniques never show on the threat an earlier white pulse made."""
    for held in seen.values():
        if held.merged:
            threat = out.threats[held.index]
            item = msgspec.structs.replace(threat.item, ttps=sorted(held.ttps)[:MAX_TTPS], tlp=held.tlp)
            out.threats[held.index] = ParsedThreat(threat.ref, item)


def is_pulse(doc: Any) -> bool:
    return isinstance(doc, dict) and isinstance(doc.get("indicators"), list) and ("name" in doc or "id" in doc)


def pulse(out: Builder, doc: dict[str, Any], *, seen: dict[str, Seen], where: str) -> None:
    """One pulse's IoCs, threats and links into `out`; `seen` holds the threats earlier pulses made (call `finish`
    once every pulse of the document is read)."""
    # its tag `otx-pulse:<id>` is one tag: the id is cut to what fits (OTX's own ids are 24 characters)
    pulse_id = str(doc.get("id") or "").strip()[: MAX_TAG_LENGTH - len("otx-pulse:")]
    # cut once: each IoC took its own 4 KB copy of a long name (100,000 indicators held 400 MB)
    name = doc["name"][:4096] if isinstance(doc.get("name"), str) else None
    tlp = _tlp(out, doc, where=where)
    tags = out.shared_tags([t for t in _list(out, doc, "tags", where) if isinstance(t, str)], where=where, room=MAX_TAGS - bool(pulse_id))
    if pulse_id:
        tags.append(f"otx-pulse:{pulse_id}")
    ttps = sorted({i.upper() for i in map(_technique, _list(out, doc, "attack_ids", where)) if i and _TTP.match(i.upper())})
    if len(ttps) > MAX_TTPS:  # every threat of the pulse gets them all: a threat holds at most MAX_TTPS
        out.warn(where, f"the pulse names {len(ttps)} ATT&CK ids; its threats take the first {MAX_TTPS}")
        ttps = ttps[:MAX_TTPS]
    threat_refs = _threats(out, doc, tlp=tlp, ttps=ttps, seen=seen, where=where)
    for index, record in enumerate(doc["indicators"]):
        ref = f"{where}.indicators[{index}]"
        if not isinstance(record, dict) or not isinstance(record.get("indicator"), str):
            out.error(ref, "an OTX indicator needs an indicator (its value)")
            continue
        otx_type = str(record.get("type") or "")
        ioc_type = map_type(otx_type) if otx_type else None
        if otx_type and ioc_type not in _OURS:
            out.skip(f"otx:{otx_type}")
            continue
        described = next((record[k] for k in ("description", "title") if isinstance(record.get(k), str) and record[k]), name)
        item = {
            "value": record["indicator"],
            "type": ioc_type,
            "tags": tags,
            "tlp": tlp,
            "description": described[:4096] if described else None,
            "first_seen": seen_time(record.get("created")),
        }
        if out.ioc(ref, item):
            out.link_all(Link(ref, threat_ref, "indicates") for threat_ref in threat_refs)


def _tlp(out: Builder, doc: dict[str, Any], *, where: str) -> str | None:
    """The pulse's TLP: OTX's API writes the marking as `TLP`, its exports and SDK as `tlp`, the stricter of the two.
    A marking given that is no TLP (`purple`) is read as red, with a warning: a pulse is never stored less restricted
    than its author meant because its marking was spelled oddly."""
    given = [doc[key] for key in ("tlp", "TLP") if doc.get(key) not in (None, "")]
    known = strictest_tlp([g for g in given if isinstance(g, str)])
    unknown = [g for g in given if not isinstance(g, str) or strictest_tlp([g]) is None]
    if unknown:
        out.warn(where, f"unknown TLP {str(unknown[0])[:64]!r}: the pulse is imported as red")
        return Tlp.RED.value
    return None if known is None else Tlp.parse(known).value


def _threats(out: Builder, doc: dict[str, Any], *, tlp: str | None, ttps: list[str], seen: dict[str, Seen], where: str) -> list[str]:
    """The pulse's threats, at most MAX_THREATS_PER_IOC (each is linked to every IoC of the pulse): the adversary
    first, then the families in order; the rest is named in a warning. A threat an earlier pulse of the document
    named (`seen`) gathers this pulse's TTPs and TLP too, in time linear in them (`finish` writes them)."""
    named: list[tuple[str, str]] = []
    adversary = doc.get("adversary")
    if isinstance(adversary, str) and adversary.strip():
        named.append(("threat-actor", adversary.strip()[:256]))
    named.extend(("malware", family) for family in map(_family, _list(out, doc, "malware_families", where)) if family)
    refs: list[str] = []
    for kind, threat_name in named:
        ref = f"threat:{kind}:{threat_name.lower()}"
        if ref in refs:
            continue
        if len(refs) == MAX_THREATS_PER_IOC:
            out.warn(where, f"the pulse names {len(named)} threats; only the first {MAX_THREATS_PER_IOC} were taken")
            break
        if ref in seen:
            held = seen[ref]
            held.ttps.update(ttps)
            held.tlp = held.tlp if tlp == held.tlp else strictest_tlp([held.tlp, tlp])
            held.merged = True
            refs.append(ref)
        elif out.threat(ref, {"kind": kind, "name": threat_name, "ttps": ttps, "tlp": tlp, "tags": ["otx"]}):
            seen[ref] = Seen(len(out.threats) - 1, set(ttps), tlp)
            refs.append(ref)
    return refs


def _list(out: Builder, doc: dict[str, Any], key: str, where: str) -> list[Any]:
    """The pulse's list under `key` ([] when absent or null); anything else is not read, with a warning (an int raised
    TypeError, and a string was read as a list of its characters)."""
    value = doc.get(key)
    if value is None or isinstance(value, list):
        return value or []
    out.warn(where, f"{key} must be a list; got {type(value).__name__}: not read")
    return []


def _family(entry: Any) -> str | None:
    """A malware family as OTX writes it: a name, or {"id": "trickbot", "display_name": "TrickBot"}."""
    return _text(entry.get("display_name") or entry.get("id")) if isinstance(entry, dict) else _text(entry)


def _technique(entry: Any) -> str | None:
    """An ATT&CK id as OTX writes it: "T1566.001", or {"id": "T1566.001", "name": ..., "display_name": ...}."""
    return _text(entry.get("id")) if isinstance(entry, dict) else _text(entry)


def _text(value: Any) -> str | None:
    return value.strip()[:256] if isinstance(value, str) and value.strip() else None
