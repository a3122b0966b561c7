"""Shodan InternetDB: keyless `GET /{ip}`; 404 `{"detail": "No information available"}` is not_found.

Verdict (reference §6): context only, never a verdict: ok with verdict unknown and score None. Open ports, CPEs,
hostnames and CVEs go into the evidence (tags and the raw summary). The optional "suspicious when vulns"
proposal is not applied: a listed CVE on an exposed service is exposure, not evidence of malice.
"""

from __future__ import annotations

from threatflow.enrichment.model import Evidence, Verdict
from threatflow.enrichment.sources.base import (
    FreeTier,
    Parsed,
    Reply,
    Request,
    ShapeError,
    Source,
    as_dict,
    as_int,
    as_list,
    as_str,
    bounded_summary,
    strings,
)

_HOST = Request("GET", "/{value}")


def parse(reply: Reply) -> Parsed:
    body = as_dict(reply.body)
    if "ports" not in body and "ip" not in body:
        raise ShapeError("expected ip and ports")
    ip = as_str(body.get("ip")) or reply.value
    vulns = strings(as_list(body.get("vulns")), limit=100)
    evidence = Evidence(
        tags=strings(as_list(body.get("tags"))),
        references=(f"https://www.shodan.io/host/{ip}",),
        raw_summary=bounded_summary(
            {
                "ports": [p for p in (as_int(p) for p in as_list(body.get("ports"))) if p is not None][:50],
                "hostnames": as_list(body.get("hostnames"))[:20],
                "cpes": as_list(body.get("cpes"))[:20],
                "vulns": list(vulns[:30]),
                "vuln_count": len(vulns),
            }
        ),
    )
    return Parsed(Verdict.UNKNOWN, None, evidence, detail="context only")


SOURCE = Source(
    name="internetdb",
    title="Shodan InternetDB",
    base_url="https://internetdb.shodan.io",
    auth_header=None,
    key_required=False,
    requests={"ipv4": _HOST, "ipv6": _HOST},
    parse=parse,
    reliability=0.2,
    free_tier=FreeTier(note="keyless, non-commercial; no published limit (contact Shodan for heavy use)"),
    not_found_statuses=frozenset({404}),
    health_path="/",
    health_note="HEAD / (the docs page), not a lookup; InternetDB is keyless and unmetered anyway",
    docs="https://internetdb.shodan.io/docs",
)
