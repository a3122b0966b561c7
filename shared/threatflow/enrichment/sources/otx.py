"""AlienVault OTX DirectConnect v1: `GET /indicators/{IPv4|IPv6|domain|file|url}/{value}/general`.

The URL indicator goes into the path `quote_plus`-encoded (Cortex, msticpy); hashes all use the `file` slug.
Verdict (reference §3.4, recommended rule): a non-empty `validation` list (whitelisted) -> harmless, score 0;
pulses >= 2 -> malicious; 1 -> suspicious; 0 -> not_found. Score: min(100, 25 * pulse count) (the reference's proposal).
"""

from __future__ import annotations

from urllib.parse import quote_plus

from threatflow.enrichment.model import Evidence, Verdict
from threatflow.enrichment.sources.base import (
    FreeTier,
    Parsed,
    Reply,
    Request,
    Source,
    as_dict,
    as_int,
    as_list,
    as_str,
    as_time,
    bounded_summary,
    not_found,
    strings,
)

_PAGES = {"IPv4": "ip", "IPv6": "ip"}
SLUGS = {"ipv4": "IPv4", "ipv6": "IPv6", "domain": "domain", "url": "url", "md5": "file", "sha1": "file", "sha256": "file"}


def _general(slug: str) -> Request:
    return Request("GET", f"/indicators/{slug}/{{value}}/general", encode=quote_plus if slug == "url" else _segment)


def _segment(value: str) -> str:
    return quote_plus(value, safe="")


def _names(rows: object, *keys: str) -> list[object]:
    """OTX lists hold either strings or objects ({"id", "display_name"}): take the first present key."""
    names: list[object] = []
    for row in as_list(rows):
        if isinstance(row, dict):
            names.append(next((row.get(k) for k in keys if row.get(k)), None))
        else:
            names.append(row)
    return names


def parse(reply: Reply) -> Parsed:
    body = as_dict(reply.body)
    pulse_info = as_dict(body.get("pulse_info") or {}, "pulse_info")
    pulses = [p for p in as_list(pulse_info.get("pulses")) if isinstance(p, dict)]
    count = as_int(pulse_info.get("count"))
    count = len(pulses) if count is None else max(count, len(pulses))
    validation = as_list(body.get("validation"))
    created = [t for t in (as_time(p.get("created")) for p in pulses) if t]
    modified = [t for t in (as_time(p.get("modified")) for p in pulses) if t]
    slug = SLUGS.get(reply.ioc_type, "file")
    evidence = Evidence(
        malware_families=strings(name for p in pulses for name in _names(p.get("malware_families"), "display_name", "id")),
        tags=strings((tag for p in pulses for tag in as_list(p.get("tags"))), limit=40),
        attack_ids=strings(name for p in pulses for name in _names(p.get("attack_ids"), "id")),
        countries=strings([body.get("country_code")]),
        asn=as_str(body.get("asn")),
        first_seen=min(created) if created else None,
        last_seen=max(modified) if modified else None,
        references=strings(
            [f"https://otx.alienvault.com/indicator/{_PAGES.get(slug, slug)}/{quote_plus(reply.value, safe=':')}"]
            + as_list(pulse_info.get("references"))
            + [ref for p in pulses for ref in as_list(p.get("references"))],
            limit=20,
        ),
        raw_summary=bounded_summary(
            {
                "pulse_count": count,
                "pulses": [{"name": as_str(p.get("name"), 120), "id": p.get("id"), "TLP": p.get("TLP")} for p in pulses[:10]],
                "adversaries": strings(p.get("adversary") for p in pulses),
                "validation": [_names([v], "name", "source")[0] for v in validation[:5]],
                "reputation": body.get("reputation"),
                "sections": as_list(body.get("sections")),
            }
        ),
    )
    if validation:
        return Parsed(Verdict.HARMLESS, 0, evidence, detail="whitelisted by OTX validation")
    if count == 0:
        return not_found("no pulses")
    verdict = Verdict.MALICIOUS if count >= 2 else Verdict.SUSPICIOUS
    return Parsed(verdict, min(100, 25 * count), evidence)


SOURCE = Source(
    name="otx",
    title="AlienVault OTX",
    base_url="https://otx.alienvault.com/api/v1",
    auth_header="X-OTX-API-KEY",
    requests={ioc_type: _general(slug) for ioc_type, slug in SLUGS.items()},
    parse=parse,
    reliability=0.5,
    free_tier=FreeTier(note="no published limit; third-party clients assume about 10,000 requests/day"),
    not_found_statuses=frozenset({404}),
    docs="https://otx.alienvault.com/api",
)
