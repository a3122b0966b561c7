"""ThreatFox (abuse.ch): JSON POST `{"query": "search_ioc", "search_term": ...}` with `Auth-Key`.

Verdict (reference §5.3): every ThreatFox IoC is malicious by definition: `ok` -> malicious with
score = max(confidence_level); `no_result` (singular; `data` is then a string or null) -> not_found.
`search_ioc` matches loosely (1.2.3.4 also finds 1.2.3.45:80), so only records whose `ioc` is the IoC asked
about count (an IPv4 with any port, a URL on the domain or IP, names case-insensitively); `ok` with none of
those -> not_found.
"""

from __future__ import annotations

from urllib.parse import urlsplit

from threatflow.enrichment.model import Evidence, Verdict
from threatflow.enrichment.sources.abusech import query_status
from threatflow.enrichment.sources.base import (
    FreeTier,
    Parsed,
    Reply,
    Request,
    Source,
    as_dict,
    as_list,
    as_str,
    as_time,
    bounded_summary,
    clamp_score,
    not_found,
    strings,
)

_SEARCH = Request("POST", "/", json={"query": "search_ioc", "search_term": "{value}"})


def _is_this_ioc(row: dict[str, object], reply: Reply) -> bool:
    """Whether a record names the IoC asked about: `ip:port` records count for their IP, and for a domain or IP
    a URL on that host counts (as URLhaus's host lookup); a record without an `ioc` is kept (nothing says it is
    another one)."""
    ioc = as_str(row.get("ioc"), 4096)
    if ioc is None:
        return True
    ioc, value = ioc.lower().rstrip("/"), reply.value.strip().lower().rstrip("/")
    if reply.ioc_type in ("ipv4", "domain") and "://" in ioc:
        try:
            return urlsplit(ioc).hostname == value
        except ValueError:
            return False
    if reply.ioc_type == "ipv4" and ioc.rpartition(":")[2].isdigit():
        ioc = ioc.rpartition(":")[0]
    return ioc == value


def parse(reply: Reply) -> Parsed:
    _, miss = query_status(reply.body)
    if miss is not None:
        return miss
    listed = [r for r in as_list(as_dict(reply.body).get("data")) if isinstance(r, dict)]
    rows = [r for r in listed if _is_this_ioc(r, reply)]
    if not rows:
        return not_found("ok without records" if not listed else f"{len(listed)} records, none of this IoC")
    scores = [s for s in (clamp_score(r.get("confidence_level")) for r in rows) if s is not None]
    firsts = [t for t in (as_time(r.get("first_seen")) for r in rows) if t]
    lasts = [t for t in (as_time(r.get("last_seen")) for r in rows) if t]
    aliases = [a.strip() for r in rows for a in (as_str(r.get("malware_alias")) or "").split(",") if a.strip()]
    evidence = Evidence(
        malware_families=strings([r.get("malware_printable") for r in rows] + aliases),
        tags=strings([t for r in rows for t in as_list(r.get("tags"))] + [r.get("threat_type") for r in rows]),
        first_seen=min(firsts) if firsts else None,
        last_seen=max(lasts) if lasts else (max(firsts) if firsts else None),
        references=strings(
            [f"https://threatfox.abuse.ch/ioc/{r.get('id')}" for r in rows if as_str(r.get("id"))]
            + [r.get("reference") for r in rows]
            + [r.get("malware_malpedia") for r in rows]
        ),
        raw_summary=bounded_summary(
            {
                "records": [
                    {
                        "id": r.get("id"),
                        "ioc": as_str(r.get("ioc"), 200),
                        "ioc_type": r.get("ioc_type"),
                        "threat_type": r.get("threat_type"),
                        "malware": r.get("malware"),
                        "confidence_level": r.get("confidence_level"),
                        "reporter": r.get("reporter"),
                    }
                    for r in rows[:10]
                ],
                "record_count": len(rows),
            }
        ),
    )
    return Parsed(Verdict.MALICIOUS, max(scores) if scores else None, evidence)


SOURCE = Source(
    name="threatfox",
    title="ThreatFox",
    base_url="https://threatfox-api.abuse.ch/api/v1",
    auth_header="Auth-Key",
    requests={ioc_type: _SEARCH for ioc_type in ("ipv4", "domain", "url", "md5", "sha256")},
    parse=parse,
    reliability=0.7,
    free_tier=FreeTier(note="fair use, no published limit; free Auth-Key from auth.abuse.ch"),
    docs="https://threatfox.abuse.ch/api/",
)
