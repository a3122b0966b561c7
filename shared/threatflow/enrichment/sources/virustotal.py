"""VirusTotal API v3: files (md5/sha1/sha256), URLs (unpadded url-safe base64 ids), domains, IP addresses.

Verdict (reference §1.6, recommended rule): malicious >= 2 engines -> malicious; 1 malicious or any suspicious
-> suspicious; engines answered harmless or undetected, none malicious or suspicious -> harmless; no engine
counts, or only type-unsupported / timeout / failure ones -> unknown.
Score: OpenCTI's malicious / (harmless + undetected + malicious) * 100, None when that denominator is 0.
404 NotFoundError is not_found.
"""

from __future__ import annotations

import base64

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
    as_time,
    bounded_summary,
    detections,
    strings,
)

_GUI = {"file": "file", "url": "url", "domain": "domain", "ip_address": "ip-address"}


def url_id(url: str) -> str:
    """VirusTotal's URL identifier: url-safe base64 without `=` padding (vt-py's `url_id`)."""
    return base64.urlsafe_b64encode(url.encode()).decode().strip("=")


def parse(reply: Reply) -> Parsed:
    data = as_dict(as_dict(reply.body).get("data"), "data")
    attributes = as_dict(data.get("attributes"), "data.attributes")
    kind = as_str(data.get("type"))
    if kind not in _GUI:
        raise ShapeError(f"data.type: unexpected {data.get('type')!r}")
    stats = attributes.get("last_analysis_stats")
    stats = stats if isinstance(stats, dict) else {}
    counts = detections(
        stats.get("malicious"),
        stats.get("suspicious"),
        stats.get("harmless"),
        stats.get("undetected"),
        sum(as_int(v) or 0 for v in stats.values()),
    )
    if counts.malicious >= 2:
        verdict = Verdict.MALICIOUS
    elif counts.malicious == 1 or counts.suspicious > 0:
        verdict = Verdict.SUSPICIOUS
    elif counts.harmless + counts.undetected > 0:  # type-unsupported, timeout, failure: the engine said nothing
        verdict = Verdict.HARMLESS
    else:
        verdict = Verdict.UNKNOWN
    denominator = counts.harmless + counts.undetected + counts.malicious
    score = round(counts.malicious / denominator * 100) if denominator and verdict is not Verdict.UNKNOWN else None

    results = attributes.get("last_analysis_results")
    results = results if isinstance(results, dict) else {}
    flagged = {
        str(engine): as_str(row.get("result"), 80)
        for engine, row in results.items()
        if isinstance(row, dict) and row.get("category") in ("malicious", "suspicious")
    }
    classification = attributes.get("popular_threat_classification")
    classification = classification if isinstance(classification, dict) else {}
    families = strings(
        [row.get("value") for row in as_list(classification.get("popular_threat_name")) if isinstance(row, dict)]
        + [classification.get("suggested_threat_label")]
    )
    asn = as_int(attributes.get("asn"))
    owner = as_str(attributes.get("as_owner"))
    ident = as_str(data.get("id")) or reply.value
    evidence = Evidence(
        malware_families=families,
        tags=strings(as_list(attributes.get("tags"))),
        countries=strings([attributes.get("country")]),
        asn=f"AS{asn}" + (f" {owner}" if owner else "") if asn is not None else None,
        detections=counts,
        first_seen=as_time(attributes.get("first_submission_date")),
        last_seen=as_time(attributes.get("last_analysis_date")),
        references=(f"https://www.virustotal.com/gui/{_GUI[kind]}/{ident}",),
        raw_summary=bounded_summary(
            {
                "id": ident,
                "type": kind,
                "reputation": as_int(attributes.get("reputation")),
                "total_votes": attributes.get("total_votes"),
                "last_analysis_stats": stats,
                "flagged_by": dict(list(flagged.items())[:15]),
                "meaningful_name": attributes.get("meaningful_name"),
                "type_description": attributes.get("type_description"),
                "as_owner": owner,
                "network": attributes.get("network"),
                "categories": attributes.get("categories"),
                "last_final_url": attributes.get("last_final_url"),
                "title": attributes.get("title"),
            }
        ),
    )
    return Parsed(verdict, score, evidence)


SOURCE = Source(
    name="virustotal",
    title="VirusTotal v3",
    base_url="https://www.virustotal.com/api/v3",
    auth_header="x-apikey",
    requests={
        "md5": Request("GET", "/files/{value}"),
        "sha1": Request("GET", "/files/{value}"),
        "sha256": Request("GET", "/files/{value}"),
        "url": Request("GET", "/urls/{value}", encode=url_id),
        "domain": Request("GET", "/domains/{value}"),
        "ipv4": Request("GET", "/ip_addresses/{value}"),
        "ipv6": Request("GET", "/ip_addresses/{value}"),
    },
    parse=parse,
    reliability=0.8,
    free_tier=FreeTier(per_minute=4, per_day=500, note="public API, non-commercial use; ~15.5K lookups/month"),
    not_found_statuses=frozenset({404}),
    default_retry_after=60.0,  # 429 QuotaExceededError carries no Retry-After; the minute window is the usual cause
    docs="https://docs.virustotal.com/reference/overview",
)
