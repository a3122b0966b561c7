"""GreyNoise Community v3: `GET /v3/community/{ip}` (IPv4 only), header `key` optional (tighter plan without).

Verdict (reference §7, recommended rule): classification malicious -> malicious, 90; riot or benign ->
harmless, 0; noise with classification unknown -> suspicious, 50; otherwise unknown. 404 (noise and riot
false) -> not_found.
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
    as_bool,
    as_dict,
    as_str,
    as_time,
    bounded_summary,
    strings,
)


def parse(reply: Reply) -> Parsed:
    body = as_dict(reply.body)
    if "noise" not in body and "riot" not in body and "classification" not in body:
        raise ShapeError("expected noise, riot or classification")
    noise = as_bool(body.get("noise")) is True
    riot = as_bool(body.get("riot")) is True
    classification = (as_str(body.get("classification")) or "unknown").lower()
    evidence = Evidence(
        tags=strings([classification if classification != "unknown" else None, "noise" if noise else None, "riot" if riot else None]),
        last_seen=as_time(body.get("last_seen")),
        references=strings([body.get("link")]),
        raw_summary=bounded_summary(
            {"classification": classification, "noise": noise, "riot": riot, "name": body.get("name"), "message": body.get("message")}
        ),
    )
    if classification == "malicious":
        return Parsed(Verdict.MALICIOUS, 90, evidence)
    if riot or classification == "benign":
        return Parsed(Verdict.HARMLESS, 0, evidence)
    if noise:
        return Parsed(Verdict.SUSPICIOUS, 50, evidence)
    return Parsed(Verdict.UNKNOWN, None, evidence)


SOURCE = Source(
    name="greynoise",
    title="GreyNoise Community",
    base_url="https://api.greynoise.io/v3/community",
    auth_header="key",
    key_required=False,
    requests={"ipv4": Request("GET", "/{value}")},
    parse=parse,
    reliability=0.7,
    free_tier=FreeTier(per_day=100, note="100/day unauthenticated (documented); free accounts about 50/week"),
    not_found_statuses=frozenset({404}),
    default_retry_after=3600.0,
    docs="https://docs.greynoise.io/reference/getcommunityip",
)
