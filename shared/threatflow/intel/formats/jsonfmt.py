"""JSON import: `{"iocs": [...]}` or a bare list, items as in POST /api/v1/iocs/batch.

A feed's records are read too: an object without `value` but with a field the CSV import names as the value
(`ip_address`, `ioc`, `ioc_value`...) or fields named by an indicator type (`sha256_hash`, `url`) is read as a CSV
row under its keys (Feodo's blocklist, ThreatFox's lists, MalwareBazaar's and URLhaus's records), ThreatFox's export,
an object of id -> [records], is read as the list of its records, and so are an abuse.ch API answer
(`{"query_status": "ok", "data" | "urls" | "payloads": [records]}`) and OTX's `{"results": [records]}`.
An AlienVault OTX pulse (or `{"results": [pulses]}`) is read by `otx.pulse`: IoCs, TLP, threats and TTPs.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from threatflow.intel.formats import csvfmt, otx
from threatflow.intel.formats.base import Builder, ParsedImport, load_json
from threatflow.platform.errors import ValidationError


def parse(content: Any) -> ParsedImport:
    doc = load_json(content, what="json")
    if isinstance(doc, dict) and doc and all(key.isdigit() and isinstance(entries, list) for key, entries in doc.items()):
        doc = [entry for entries in doc.values() for entry in entries]  # ThreatFox's export: {"<id>": [records]}
    elif isinstance(doc, dict) and "query_status" in doc and "iocs" not in doc:
        doc = _api_records(doc)
    pulses = _pulses(doc)
    if pulses is not None:
        out = Builder()
        seen: dict[str, otx.Seen] = {}  # threats by ref, so that pulses naming one family make one threat
        for index, one in enumerate(pulses):
            otx.pulse(out, one, seen=seen, where="pulse" if len(pulses) == 1 else f"results[{index}]")
        otx.finish(out, seen)
        return out.build()
    if isinstance(doc, dict) and "iocs" not in doc and isinstance(doc.get("results"), list):
        doc = doc["results"]  # OTX's answers of indicator records: {"count", "next", "results": [...]}
    if isinstance(doc, dict):
        if "iocs" not in doc:
            raise ValidationError('json: expected {"iocs": [...]} or a list of IoC objects', field="content")
        doc = doc["iocs"]
    if not isinstance(doc, list):
        raise ValidationError(f"json: iocs must be a list; got {type(doc).__name__}", field="content")
    out = Builder()
    for index, entry in enumerate(doc):
        ref = f"#{index}"
        item = {"value": entry} if isinstance(entry, str) else entry  # a bare value is accepted, as in a blocklist
        if not isinstance(item, dict):
            out.error(ref, f"an IoC must be an object with a value; got {type(item).__name__}")
            continue
        if csvfmt.is_record(item):
            csvfmt.record(out, ref, item)
        else:
            out.ioc(ref, item)
    return out.build()


def split_shape(doc: Any) -> tuple[list[Any], Callable[[list[Any]], Any]] | None:
    """The records a json document holds, as `parse` finds them, and how a run of them is written as a document of the
    same shape (for `threatflow iocs import`, which sends a large feed in parts); None for what must stay whole: OTX
    pulses (a pulse's indicators share its threats and TLP) and documents `parse` refuses."""
    if isinstance(doc, dict) and doc and all(key.isdigit() and isinstance(entries, list) for key, entries in doc.items()):
        return [entry for entries in doc.values() for entry in entries], list  # ThreatFox's export: its records as a list
    if isinstance(doc, dict) and "query_status" in doc and "iocs" not in doc:
        key = next((k for k in API_RECORDS if isinstance(doc.get(k), list)), None)
        return None if key is None else (doc[key], lambda run: {**doc, key: run})
    if _pulses(doc) is not None:
        return None
    if isinstance(doc, dict) and "iocs" not in doc and isinstance(doc.get("results"), list):
        return doc["results"], lambda run: {**doc, "results": run}
    if isinstance(doc, dict) and isinstance(doc.get("iocs"), list):
        return doc["iocs"], lambda run: {**doc, "iocs": run}
    return (doc, list) if isinstance(doc, list) else None


def _pulses(doc: Any) -> list[dict[str, Any]] | None:
    """OTX pulses: one pulse as exported, or the API's {"results": [pulses]}; None when the document holds none."""
    if otx.is_pulse(doc):
        return [doc]
    results = doc.get("results") if isinstance(doc, dict) and "iocs" not in doc else None
    if isinstance(results, list) and results and all(otx.is_pulse(r) for r in results):
        return list(results)
    return None


API_RECORDS = ("data", "urls", "payloads")  # where abuse.ch's APIs put an answer's records


def _api_records(doc: dict[str, Any]) -> list[Any]:
    """An abuse.ch API answer's records: ThreatFox's and MalwareBazaar's `data`, URLhaus's `urls` or `payloads`,
    beside `query_status`. An answer without them (`no_result`, `illegal_search_term`...) is refused by its status."""
    for key in API_RECORDS:
        if isinstance(doc.get(key), list):
            return list(doc[key])
    raise ValidationError(
        f"json: an API answer with query_status {str(doc.get('query_status'))[:64]!r} and no records"
        f" ({', '.join(API_RECORDS)}); nothing to import",
        field="content",
    )
