"""Hybrid Analysis (Falcon Sandbox) API v2.

Hashes: the current `GET /search/hash?hash=` (the POST form is deprecated since v2.35.0), then, when the search
returns only ids (`sha256s`, `reports[].id`, or bare sha256 items), one `GET /overview/{sha256}` for the verdict,
threat score, family and tags (what IntelOwl does). A legacy array of full report summaries is parsed as is.
Domains, IPv4 and URLs: `POST /search/terms` with the form field `domain`, `host` or `url`.

Headers: `api-key`, `accept: application/json` and a non-empty User-Agent ("Falcon Sandbox", as IntelOwl).
Verdict (reference §4.4, recommended rule, Cortex's mapping): the worst verdict over the reports and overview:
malicious -> malicious, suspicious -> suspicious, whitelisted -> harmless, "no specific threat" -> unknown;
score = max(threat_score). "Requested hash not found" (404), an empty search or `count: 0` -> not_found.
Deviation: Cortex only compares reports started within an hour of each other; we take the worst over every report
the search returns (a sample once seen malicious stays so), and a whitelisted-only answer scores 0.
"""

from __future__ import annotations

from typing import Any

from threatflow.enrichment.model import Evidence, Verdict
from threatflow.enrichment.sources.base import (
    FreeTier,
    Parsed,
    Reply,
    Request,
    ShapeError,
    Source,
    api_limits_quota,
    as_dict,
    as_int,
    as_list,
    as_str,
    as_time,
    bounded_summary,
    clamp_score,
    not_found,
    strings,
)

_RANK = {"malicious": 3, "suspicious": 2, "whitelisted": 1, "no specific threat": 0}
_VERDICTS = {3: Verdict.MALICIOUS, 2: Verdict.SUSPICIOUS, 1: Verdict.HARMLESS, 0: Verdict.UNKNOWN}
_HASH = Request("GET", "/search/hash", params={"hash": "{value}"})


def _search_items(reply: Reply) -> list[Any]:
    """The result rows, whichever form the search answered in."""
    body = reply.body
    if isinstance(body, list):  # legacy POST /search/hash, or a list of sha256s
        return _checked(body)
    data = as_dict(body)
    if "result" in data:  # /search/terms
        return _checked(as_list(data.get("result")))
    if "reports" in data or "sha256s" in data:  # current GET /search/hash
        return _checked(as_list(data.get("reports")) + as_list(data.get("sha256s")))
    raise ShapeError("expected reports, sha256s or result")


def _checked(items: list[Any]) -> list[Any]:
    for item in items:
        if not (isinstance(item, dict) or (isinstance(item, str) and len(item) == 64)):
            raise ShapeError(f"unexpected search item {str(item)[:40]!r}")
    return items


def _is_full(item: Any) -> bool:
    return isinstance(item, dict) and any(item.get(k) is not None for k in ("verdict", "threat_score", "job_id"))


def follow(reply: Reply) -> Request | None:
    """Search gave ids only: fetch the sample overview of the first sha256 it names."""
    if reply.ioc_type not in ("md5", "sha1", "sha256"):
        return None
    items = _search_items(reply)
    if any(_is_full(i) for i in items):
        return None
    shas = [i if isinstance(i, str) else as_str(i.get("sha256")) for i in items if isinstance(i, str | dict)]
    sha = next((s for s in shas if s and len(s) == 64), None)
    if sha is None and reply.ioc_type == "sha256" and items:
        sha = reply.value
    return None if sha is None else Request("GET", f"/overview/{sha}")


def parse(reply: Reply) -> Parsed:
    items = _search_items(reply)
    rows = [i for i in items if _is_full(i)]
    if isinstance(reply.follow_body, dict):
        rows.append(reply.follow_body)
    if not rows:
        return not_found("no reports") if not items else not_found("no report details available")
    ranks = [_RANK.get(str(r.get("verdict") or "").lower(), 0) for r in rows]
    worst = max(ranks)
    scores = [s for s in (clamp_score(r.get("threat_score")) for r in rows) if s is not None]
    score = max(scores) if scores else None
    if _VERDICTS[worst] is Verdict.HARMLESS:
        score = 0 if score is None else score
    av = [as_int(r.get("av_detect")) for r in rows]  # a percentage of engines (sometimes a string), not counts
    av_best = max((a for a in av if a is not None), default=None)
    mitre = [m for r in rows for m in as_list(r.get("mitre_attcks")) if isinstance(m, dict)]
    starts = [t for t in (as_time(r.get("analysis_start_time")) for r in rows) if t]
    sha = next((as_str(r.get("sha256")) for r in rows if as_str(r.get("sha256"))), None)
    evidence = Evidence(
        malware_families=strings(r.get("vx_family") for r in rows),
        tags=strings(t for r in rows for t in as_list(r.get("tags")) + as_list(r.get("classification_tags"))),
        attack_ids=strings(
            m.get("attck_id")
            for m in mitre
            if (as_int(m.get("malicious_identifiers_count")) or 0) + (as_int(m.get("suspicious_identifiers_count")) or 0) > 0
        ),
        first_seen=min(starts) if starts else None,
        last_seen=max(starts) if starts else None,
        references=(f"https://www.hybrid-analysis.com/sample/{sha}",) if sha else (),
        raw_summary=bounded_summary(
            {
                "verdicts": [r.get("verdict") for r in rows[:10]],
                "threat_scores": scores[:10],
                "av_detect_percent": av_best,
                "sha256": sha,
                "submit_names": strings((r.get("submit_name") or r.get("last_file_name")) for r in rows),
                "type_short": strings(t for r in rows for t in as_list(r.get("type_short"))),
                "environments": strings(r.get("environment_description") for r in rows),
                "report_count": len(rows),
            }
        ),
    )
    return Parsed(_VERDICTS[worst], score, evidence)


SOURCE = Source(
    name="hybrid_analysis",
    title="Hybrid Analysis v2",
    base_url="https://www.hybrid-analysis.com/api/v2",
    auth_header="api-key",
    headers={"Accept": "application/json", "User-Agent": "Falcon Sandbox"},
    requests={
        "md5": _HASH,
        "sha1": _HASH,
        "sha256": _HASH,
        "domain": Request("POST", "/search/terms", form={"domain": "{value}"}),
        "ipv4": Request("POST", "/search/terms", form={"host": "{value}"}),
        "url": Request("POST", "/search/terms", form={"url": "{value}"}),
    },
    parse=parse,
    follow=follow,
    reliability=0.7,
    free_tier=FreeTier(per_minute=200, per_hour=2000, note="default key level; restricted keys: 5/minute, 200/hour"),
    not_found_statuses=frozenset({404}),
    read_quota=api_limits_quota,
    default_retry_after=60.0,
    docs="https://www.hybrid-analysis.com/docs/api/v2",
)
