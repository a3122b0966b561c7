"""AbuseIPDB v2 `GET /check`: IPv4 and IPv6 (URL-encoded by requests), verbose, header `Key` + `Accept: application/json`.

Verdict (reference §2.5, recommended rule): score = abuseConfidenceScore; >= 75 malicious; > 0 suspicious;
0 and whitelisted harmless, reports or not (AbuseIPDB zeroes a whitelisted address's confidence, and IntelOwl reads
it as trusted); 0 with reports, not whitelisted, suspicious; 0 with no reports is not_found (AbuseIPDB makes no "clean" assertion),
verdict unknown, score None, with the country/ISP context kept as evidence.
"""

from __future__ import annotations

from threatflow.enrichment.model import Evidence, ResultStatus, Verdict
from threatflow.enrichment.sources.base import (
    FreeTier,
    Parsed,
    Reply,
    Request,
    ShapeError,
    Source,
    as_bool,
    as_dict,
    as_int,
    as_list,
    as_str,
    as_time,
    bounded_summary,
    clamp_score,
    strings,
    x_ratelimit_quota,
)

CATEGORIES = {
    1: "DNS Compromise", 2: "DNS Poisoning", 3: "Fraud Orders", 4: "DDoS Attack", 5: "FTP Brute-Force",
    6: "Ping of Death", 7: "Phishing", 8: "Fraud VoIP", 9: "Open Proxy", 10: "Web Spam", 11: "Email Spam",
    12: "Blog Spam", 13: "VPN IP", 14: "Port Scan", 15: "Hacking", 16: "SQL Injection", 17: "Spoofing",
    18: "Brute-Force", 19: "Bad Web Bot", 20: "Exploited Host", 21: "Web App Attack", 22: "SSH", 23: "IoT Targeted",
}  # fmt: skip


def parse(reply: Reply) -> Parsed:
    data = as_dict(as_dict(reply.body).get("data"), "data")
    if "abuseConfidenceScore" not in data:
        raise ShapeError("data.abuseConfidenceScore missing")
    score = clamp_score(data.get("abuseConfidenceScore")) or 0
    total_reports = as_int(data.get("totalReports")) or 0
    whitelisted = as_bool(data.get("isWhitelisted")) is True
    reports = [r for r in as_list(data.get("reports")) if isinstance(r, dict)]
    category_ids = [as_int(c) for r in reports for c in as_list(r.get("categories"))]
    tags = strings([CATEGORIES.get(c) for c in category_ids if c is not None] + (["tor"] if as_bool(data.get("isTor")) else []))
    report_times = [t for t in (as_time(r.get("reportedAt")) for r in reports) if t is not None]
    ip = as_str(data.get("ipAddress")) or reply.value
    evidence = Evidence(
        tags=tags,
        countries=strings([data.get("countryCode")]),
        first_seen=min(report_times) if report_times else None,
        last_seen=as_time(data.get("lastReportedAt")),
        references=(f"https://www.abuseipdb.com/check/{ip}",),
        raw_summary=bounded_summary(
            {
                "abuseConfidenceScore": score,
                "totalReports": total_reports,
                "numDistinctUsers": as_int(data.get("numDistinctUsers")),
                "isWhitelisted": data.get("isWhitelisted"),
                "isTor": data.get("isTor"),
                "usageType": data.get("usageType"),
                "isp": data.get("isp"),
                "domain": data.get("domain"),
                "hostnames": as_list(data.get("hostnames")),
                "recent_comments": [as_str(r.get("comment"), 160) for r in reports[:5]],
            }
        ),
    )
    if score >= 75:
        return Parsed(Verdict.MALICIOUS, score, evidence)
    if score > 0:
        return Parsed(Verdict.SUSPICIOUS, score, evidence)
    if whitelisted:  # AbuseIPDB zeroes a whitelisted address's confidence whatever its reports (public resolvers)
        detail = f"whitelisted by AbuseIPDB despite {total_reports} reports" if total_reports else ""
        return Parsed(Verdict.HARMLESS, 0, evidence, detail=detail)
    if total_reports > 0:
        return Parsed(Verdict.SUSPICIOUS, score, evidence)
    return Parsed(Verdict.UNKNOWN, None, evidence, ResultStatus.NOT_FOUND, "never reported")


SOURCE = Source(
    name="abuseipdb",
    title="AbuseIPDB v2",
    base_url="https://api.abuseipdb.com/api/v2",
    auth_header="Key",
    headers={"Accept": "application/json"},  # without it errors (429 included) come back as HTML
    requests={
        "ipv4": Request("GET", "/check", params={"ipAddress": "{value}", "maxAgeInDays": "90", "verbose": "true"}),
        "ipv6": Request("GET", "/check", params={"ipAddress": "{value}", "maxAgeInDays": "90", "verbose": "true"}),
    },
    parse=parse,
    reliability=0.7,
    free_tier=FreeTier(per_day=1000, note="check endpoint, Standard (free) plan; resets daily"),
    read_quota=x_ratelimit_quota,
    default_retry_after=3600.0,  # 429 always carries Retry-After (seconds to the daily reset); this is a fallback
    docs="https://docs.abuseipdb.com/",
)
