"""Each source's `parse` on real-shaped payloads: string-typed numbers, nulls, missing keys, legacy forms.

A parse raises on a shape it does not understand (client.lookup turns that into upstream_error); these tests
call the parse functions directly to pin the verdict rules of ../shared/docs/ti-api-reference.md.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

import pytest

from threatflow.enrichment.model import RAW_SUMMARY_LIMIT, ResultStatus, SourceResult, Verdict
from threatflow.enrichment.sources import (
    abuseipdb,
    greynoise,
    hybrid_analysis,
    internetdb,
    malwarebazaar,
    otx,
    threatfox,
    urlhaus,
    virustotal,
)
from threatflow.enrichment.sources.base import (
    Reply,
    ShapeError,
    api_limits_quota,
    as_int,
    as_time,
    bounded_summary,
    x_ratelimit_quota,
)

SHA = "30f8c4e1a5a2b7e3b9f5c9f2c6e3d2a1b0c9d8e7f6a5b4c3d2e1f0a9b8c75050"


def reply(ioc_type: str, body: Any, value: str = "x", follow_body: Any = None) -> Reply:
    return Reply(ioc_type=ioc_type, value=value, body=body, follow_body=follow_body)


# --- VirusTotal ------------------------------------------------------------------------------------------------


def vt(stats: Any, kind: str = "ip_address", **attributes: Any) -> dict[str, Any]:
    return {"data": {"id": "1.2.3.4", "type": kind, "attributes": {"last_analysis_stats": stats, **attributes}}}


@pytest.mark.parametrize(
    ("stats", "verdict", "score"),
    [
        ({"malicious": 2, "suspicious": 0, "harmless": 60, "undetected": 38}, Verdict.MALICIOUS, 2),
        ({"malicious": 1, "suspicious": 0, "harmless": 60, "undetected": 39}, Verdict.SUSPICIOUS, 1),
        ({"malicious": 0, "suspicious": 3, "harmless": 60, "undetected": 37}, Verdict.SUSPICIOUS, 0),
        ({"malicious": 0, "suspicious": 0, "harmless": 70, "undetected": 20}, Verdict.HARMLESS, 0),
        ({"malicious": 0, "suspicious": 0, "harmless": 0, "undetected": 0, "timeout": 0}, Verdict.UNKNOWN, None),
        ({"malicious": "5", "suspicious": None, "harmless": "45", "undetected": "50"}, Verdict.MALICIOUS, 5),  # string numbers, null
    ],
)
def test_virustotal_verdict_rule(stats: dict[str, Any], verdict: Verdict, score: int | None) -> None:
    parsed = virustotal.parse(reply("ipv4", vt(stats)))
    assert (parsed.status, parsed.verdict, parsed.score) == (ResultStatus.OK, verdict, score)


def test_virustotal_engines_that_could_not_scan_say_nothing() -> None:
    # A file object's stats carry eight categories; when every engine answered type-unsupported, timeout or failure,
    # no engine called it clean: that is no verdict (Cortex: info; OpenCTI: a zero denominator is "no record").
    stats = {"harmless": 0, "malicious": 0, "suspicious": 0, "undetected": 0, "type-unsupported": 58, "timeout": 3,
             "confirmed-timeout": 1, "failure": 2}  # fmt: skip
    parsed = virustotal.parse(reply("sha256", vt(stats, kind="file")))
    assert (parsed.status, parsed.verdict, parsed.score) == (ResultStatus.OK, Verdict.UNKNOWN, None)
    assert parsed.evidence.detections is not None and parsed.evidence.detections.total == 64


def test_virustotal_object_without_analysis_is_unknown() -> None:
    parsed = virustotal.parse(reply("domain", {"data": {"id": "new.example", "type": "domain", "attributes": {"tags": None}}}))
    assert (parsed.verdict, parsed.score) == (Verdict.UNKNOWN, None)
    assert parsed.evidence.detections is not None and parsed.evidence.detections.total == 0


def test_virustotal_file_evidence() -> None:
    body = vt(
        {"malicious": 40, "suspicious": 0, "harmless": 0, "undetected": 20, "type-unsupported": 10},
        kind="file",
        first_submission_date=1148301722,
        last_analysis_date="1718153645",
        popular_threat_classification={"suggested_threat_label": "trojan.emotet/heodo", "popular_threat_name": [{"value": "emotet"}, None]},
        last_analysis_results={"A": {"category": "malicious", "result": None}, "B": "not an object"},
    )
    body["data"]["id"] = SHA
    parsed = virustotal.parse(reply("sha256", body))
    assert parsed.evidence.malware_families == ("emotet", "trojan.emotet/heodo")
    assert parsed.evidence.detections is not None and parsed.evidence.detections.total == 70
    assert parsed.evidence.first_seen == datetime(2006, 5, 22, 12, 42, 2, tzinfo=UTC)
    assert parsed.evidence.last_seen == datetime.fromtimestamp(1718153645, UTC)
    assert parsed.evidence.references == (f"https://www.virustotal.com/gui/file/{SHA}",)


@pytest.mark.parametrize(
    "body", [{"data": None}, {"data": {"type": "file", "attributes": None}}, {"data": {"type": "bogus", "attributes": {}}}, []]
)
def test_virustotal_unexpected_shapes_raise(body: Any) -> None:
    with pytest.raises(ShapeError):
        virustotal.parse(reply("md5", body))


def test_virustotal_url_id_is_unpadded_urlsafe_base64() -> None:
    assert virustotal.url_id("http://a.example/?q=>>>") == "aHR0cDovL2EuZXhhbXBsZS8_cT0-Pj4"
    assert "=" not in virustotal.url_id("http://x.example/a")


# --- AbuseIPDB ------------------------------------------------------------------------------------------------


def abuse(**data: Any) -> dict[str, Any]:
    return {"data": {"ipAddress": "1.2.3.4", "abuseConfidenceScore": 0, "totalReports": 0, "isWhitelisted": None, **data}}


@pytest.mark.parametrize(
    ("data", "status", "verdict", "score"),
    [
        ({"abuseConfidenceScore": 75, "totalReports": 3}, ResultStatus.OK, Verdict.MALICIOUS, 75),
        ({"abuseConfidenceScore": "80", "totalReports": "12"}, ResultStatus.OK, Verdict.MALICIOUS, 80),
        ({"abuseConfidenceScore": 30, "totalReports": 2}, ResultStatus.OK, Verdict.SUSPICIOUS, 30),
        ({"abuseConfidenceScore": 0, "totalReports": 1}, ResultStatus.OK, Verdict.SUSPICIOUS, 0),
        ({"abuseConfidenceScore": 0, "isWhitelisted": True}, ResultStatus.OK, Verdict.HARMLESS, 0),
        ({"abuseConfidenceScore": 0, "isWhitelisted": None}, ResultStatus.NOT_FOUND, Verdict.UNKNOWN, None),
        ({"abuseConfidenceScore": 0, "totalReports": None, "isWhitelisted": False}, ResultStatus.NOT_FOUND, Verdict.UNKNOWN, None),
    ],
)
def test_abuseipdb_verdict_rule(data: dict[str, Any], status: ResultStatus, verdict: Verdict, score: int | None) -> None:
    parsed = abuseipdb.parse(reply("ipv4", abuse(**data)))
    assert (parsed.status, parsed.verdict, parsed.score) == (status, verdict, score)


def test_abuseipdb_whitelisted_address_with_reports_is_harmless() -> None:
    """AbuseIPDB zeroes the confidence of a whitelisted address whatever its reports (8.8.8.8 answers
    isWhitelisted true, score 0 and hundreds of reports, most of them mistaken). IntelOwl reads it as
    trusted; read as suspicious, every public resolver in a report was flagged."""
    reports = [{"reportedAt": "2024-06-11T20:55:14+00:00", "categories": [4], "comment": "DNS flood"}]
    parsed = abuseipdb.parse(
        reply("ipv4", abuse(ipAddress="8.8.8.8", abuseConfidenceScore=0, totalReports=412, isWhitelisted=True, reports=reports))
    )
    assert (parsed.status, parsed.verdict, parsed.score) == (ResultStatus.OK, Verdict.HARMLESS, 0)
    assert "412" in (parsed.detail or "")  # the reports are not hidden: the detail says how many were overridden
    assert parsed.evidence.raw_summary["totalReports"] == 412


def test_abuseipdb_reports_give_categories_and_first_seen() -> None:
    reports = [
        {"reportedAt": "2024-06-11T20:55:14+00:00", "categories": [18, "22"], "comment": None},
        {"reportedAt": "2024-05-01T00:00:00+00:00", "categories": None},
        {"reportedAt": None, "categories": [99]},
        "garbage",
    ]
    parsed = abuseipdb.parse(reply("ipv4", abuse(abuseConfidenceScore=90, totalReports=3, reports=reports, isTor=True, countryCode="NL")))
    assert parsed.evidence.tags == ("Brute-Force", "SSH", "tor")
    assert parsed.evidence.first_seen == datetime(2024, 5, 1, tzinfo=UTC)
    assert parsed.evidence.countries == ("NL",)


def test_abuseipdb_missing_score_is_a_shape_error() -> None:
    with pytest.raises(ShapeError):
        abuseipdb.parse(reply("ipv4", {"data": {"ipAddress": "1.2.3.4"}}))


# --- OTX --------------------------------------------------------------------------------------------------------


def otx_body(pulses: Any, count: Any = None, validation: Any = None) -> dict[str, Any]:
    return {"indicator": "1.2.3.4", "validation": validation or [], "pulse_info": {"count": count, "pulses": pulses}}


def test_otx_pulse_counts() -> None:
    pulse = {
        "name": "p",
        "tags": ["mirai"],
        "malware_families": ["Mirai"],
        "attack_ids": [{"id": "T1071"}],
        "created": "2024-01-01T00:00:00",
    }
    assert (otx.parse(reply("ipv4", otx_body([pulse, pulse], count="2"))).verdict) is Verdict.MALICIOUS
    one = otx.parse(reply("ipv4", otx_body([pulse], count=1)))
    assert (one.verdict, one.score) == (Verdict.SUSPICIOUS, 25)
    assert one.evidence.malware_families == ("Mirai",) and one.evidence.attack_ids == ("T1071",)
    assert otx.parse(reply("ipv4", otx_body([], count=0))).status is ResultStatus.NOT_FOUND
    assert otx.parse(reply("ipv4", otx_body(None, count=None))).status is ResultStatus.NOT_FOUND
    many = otx.parse(reply("ipv4", otx_body([pulse], count=9)))  # count beyond the pulses listed
    assert (many.verdict, many.score) == (Verdict.MALICIOUS, 100)


def test_otx_validation_means_whitelisted() -> None:
    parsed = otx.parse(reply("domain", otx_body([{"name": "p"}] * 3, count=3, validation=[{"source": "alexa", "name": "Top domain"}])))
    assert (parsed.verdict, parsed.score) == (Verdict.HARMLESS, 0)


def test_otx_url_goes_into_the_path_quote_plus_encoded() -> None:
    request = otx.SOURCE.requests["url"]
    assert request.encode("http://a.example/x y?q=1") == "http%3A%2F%2Fa.example%2Fx+y%3Fq%3D1"
    assert request.path == "/indicators/url/{value}/general"
    assert otx.SOURCE.requests["sha1"].path == "/indicators/file/{value}/general"


# --- Hybrid Analysis --------------------------------------------------------------------------------------------

LEGACY = [
    {"job_id": "1", "sha256": SHA, "verdict": "suspicious", "threat_score": None, "av_detect": "0", "vx_family": None,
     "mitre_attcks": None},
    {"job_id": "2", "sha256": SHA, "verdict": "malicious", "threat_score": "70", "av_detect": 12, "vx_family": "Emotet",
     "analysis_start_time": "2020-09-10T07:33:18+00:00",
     "mitre_attcks": [{"attck_id": "T1064", "malicious_identifiers_count": 1}, {"attck_id": "T1012", "malicious_identifiers_count": 0}]},
]  # fmt: skip


def test_hybrid_analysis_legacy_array_form() -> None:
    r = reply("md5", LEGACY)
    assert hybrid_analysis.follow(r) is None  # full reports: no overview call needed
    parsed = hybrid_analysis.parse(r)
    assert (parsed.verdict, parsed.score) == (Verdict.MALICIOUS, 70)
    assert parsed.evidence.malware_families == ("Emotet",)
    assert parsed.evidence.attack_ids == ("T1064",)  # only techniques with identifiers
    assert parsed.evidence.raw_summary["av_detect_percent"] == 12


def test_hybrid_analysis_current_search_then_overview() -> None:
    search = {"sha256s": [SHA], "reports": [{"id": "5f59", "environment_id": 160, "state": "SUCCESS"}]}
    follow = hybrid_analysis.follow(reply("md5", search))
    assert follow is not None and (follow.method, follow.path) == ("GET", f"/overview/{SHA}")
    overview = {"sha256": SHA, "verdict": "whitelisted", "threat_score": None, "tags": ["signed"], "vx_family": None}
    parsed = hybrid_analysis.parse(reply("md5", search, follow_body=overview))
    assert (parsed.verdict, parsed.score) == (Verdict.HARMLESS, 0)
    # overview unavailable: the search alone names no verdict
    assert hybrid_analysis.parse(reply("md5", search)).status is ResultStatus.NOT_FOUND


@pytest.mark.parametrize(
    ("verdict", "expected"),
    [
        ("no specific threat", Verdict.UNKNOWN),
        ("suspicious", Verdict.SUSPICIOUS),
        (None, Verdict.UNKNOWN),
        ("MALICIOUS", Verdict.MALICIOUS),
    ],
)
def test_hybrid_analysis_verdict_mapping(verdict: str | None, expected: Verdict) -> None:
    parsed = hybrid_analysis.parse(reply("domain", {"count": 1, "result": [{"verdict": verdict, "threat_score": 10, "job_id": "j"}]}))
    assert parsed.verdict is expected and parsed.status is ResultStatus.OK


def test_hybrid_analysis_empty_results_are_not_found() -> None:
    assert hybrid_analysis.parse(reply("md5", [])).status is ResultStatus.NOT_FOUND
    assert hybrid_analysis.parse(reply("url", {"search_terms": [], "count": 0, "result": []})).status is ResultStatus.NOT_FOUND
    with pytest.raises(ShapeError):
        hybrid_analysis.parse(reply("md5", {"message": "odd"}))


# --- abuse.ch ---------------------------------------------------------------------------------------------------


def test_urlhaus_host_with_string_numbers_and_nulls() -> None:
    body = {
        "query_status": "ok",
        "urlhaus_reference": "https://urlhaus.abuse.ch/host/1.2.3.4/",
        "firstseen": "2019-03-25 09:55:01 UTC",
        "url_count": "11",
        "urls": [
            {
                "id": "1",
                "url_status": "offline",
                "larted": "true",
                "takedown_time_seconds": None,
                "tags": None,
                "date_added": "2019-03-25 09:55:39 UTC",
            },
            {"id": "2", "url_status": "offline", "larted": "false", "takedown_time_seconds": "3600", "tags": ["elf"]},
        ],
    }
    parsed = urlhaus.parse(reply("ipv4", body))
    assert (parsed.verdict, parsed.score) == (Verdict.MALICIOUS, 75)
    assert parsed.evidence.first_seen == datetime(2019, 3, 25, 9, 55, 1, tzinfo=UTC)
    assert parsed.evidence.raw_summary["url_count"] == 11
    body["urls"][1]["url_status"] = "online"
    assert urlhaus.parse(reply("ipv4", body)).score == 100


def test_urlhaus_says_when_a_host_is_a_legitimate_site_abused() -> None:
    """URLhaus lists hacked legitimate sites that serve malware (Spamhaus DBL's `abused_legit_*` in `blacklists`);
    that was kept in the raw summary only, so an analyst about to block the domain was not told it is a legitimate
    site. It is a tag now (the verdict stays malicious: the source lists it)."""
    body = {
        "query_status": "ok",
        "url_count": "1",
        "blacklists": {"spamhaus_dbl": "abused_legit_malware", "surbl": "not listed"},
        "urls": [{"url_status": "online", "date_added": "2024-03-25 09:55:39 UTC"}],
    }
    parsed = urlhaus.parse(reply("domain", body))
    assert parsed.verdict is Verdict.MALICIOUS and "abused-legit" in parsed.evidence.tags
    assert "spamhaus-dbl:abused_legit_malware" in parsed.evidence.tags
    body["blacklists"] = {"spamhaus_dbl": "not listed", "surbl": "not listed"}
    assert not any("abused" in t or "spamhaus" in t for t in urlhaus.parse(reply("domain", body)).evidence.tags)


@pytest.mark.parametrize(
    ("status", "expected"),
    [
        ("no_results", ResultStatus.NOT_FOUND),
        ("invalid_url", ResultStatus.BAD_REQUEST),
        ("http_post_expected", ResultStatus.BAD_REQUEST),
        ("unknown_auth_key", ResultStatus.AUTH_ERROR),
        ("something_new", ResultStatus.UPSTREAM_ERROR),
    ],
)
def test_abusech_query_status(status: str, expected: ResultStatus) -> None:
    assert urlhaus.parse(reply("url", {"query_status": status})).status is expected


def test_abusech_missing_query_status_is_a_shape_error() -> None:
    for parse in (urlhaus.parse, threatfox.parse, malwarebazaar.parse):
        with pytest.raises(ShapeError):
            parse(reply("md5", {"data": []}))


@pytest.mark.parametrize("data", ["Your search did not yield any results", None])
def test_threatfox_no_result_with_string_or_null_data(data: Any) -> None:
    parsed = threatfox.parse(reply("domain", {"query_status": "no_result", "data": data}))
    assert (parsed.status, parsed.verdict, parsed.score) == (ResultStatus.NOT_FOUND, Verdict.UNKNOWN, None)


def test_threatfox_hit_takes_the_highest_confidence() -> None:
    rows = [
        {
            "id": "41",
            "malware_printable": "Dridex",
            "malware_alias": "Bugat, Cridex",
            "confidence_level": "50",
            "first_seen": "2020-12-08 13:36:27 UTC",
            "tags": None,
        },
        {
            "id": "42",
            "malware_printable": "Dridex",
            "malware_alias": None,
            "confidence_level": 90,
            "last_seen": "2021-01-01 00:00:00 UTC",
            "tags": ["exe"],
        },
    ]
    parsed = threatfox.parse(reply("domain", {"query_status": "ok", "data": rows}))
    assert (parsed.verdict, parsed.score) == (Verdict.MALICIOUS, 90)
    assert parsed.evidence.malware_families == ("Dridex", "Bugat", "Cridex")
    assert "https://threatfox.abuse.ch/ioc/41" in parsed.evidence.references


def test_threatfox_counts_only_records_of_the_ioc_asked_about() -> None:
    # search_ioc matches loosely: asking about 1.2.3.4 also returns records of 1.2.3.45:80 (another address),
    # and a domain search returns longer names that contain it. Only the IoC itself (an IP with any port) counts.
    rows = [
        {"id": "1", "ioc": "1.2.3.45:80", "malware_printable": "QakBot", "confidence_level": 100},
        {"id": "2", "ioc": "1.2.3.4:443", "malware_printable": "Dridex", "confidence_level": 50},
    ]
    parsed = threatfox.parse(reply("ipv4", {"query_status": "ok", "data": rows}, value="1.2.3.4"))
    assert (parsed.verdict, parsed.score) == (Verdict.MALICIOUS, 50)
    assert parsed.evidence.malware_families == ("Dridex",)
    assert "https://threatfox.abuse.ch/ioc/1" not in parsed.evidence.references
    others = [{"id": "3", "ioc": "notgaga.com", "confidence_level": 100}, {"id": "4", "ioc": "1.2.3.40", "confidence_level": 90}]
    for ioc_type, value in (("domain", "gaga.com"), ("ipv4", "1.2.3.4")):
        miss = threatfox.parse(reply(ioc_type, {"query_status": "ok", "data": others}, value=value))
        assert (miss.status, miss.verdict, miss.score) == (ResultStatus.NOT_FOUND, Verdict.UNKNOWN, None)
    same = threatfox.parse(
        reply("domain", {"query_status": "ok", "data": [{"id": "5", "ioc": "GaGa.com", "confidence_level": 75}]}, value="gaga.com")
    )
    assert (same.verdict, same.score) == (Verdict.MALICIOUS, 75)
    on_host = [{"id": "6", "ioc": "http://gaga.com/gate.php", "confidence_level": 80}, {"id": "7", "ioc": "http://gaga.com.evil.net/x"}]
    assert threatfox.parse(reply("domain", {"query_status": "ok", "data": on_host}, value="gaga.com")).score == 80


def test_malwarebazaar_hit_and_misses() -> None:
    sample = {
        "sha256_hash": SHA,
        "signature": "Emotet",
        "tags": None,
        "first_seen": "2024-06-01 10:12:00",
        "intelligence": {"downloads": "112"},
    }
    parsed = malwarebazaar.parse(reply("sha256", {"query_status": "ok", "data": [sample]}))
    assert (parsed.verdict, parsed.score) == (Verdict.MALICIOUS, 100)
    assert parsed.evidence.raw_summary["downloads"] == 112
    assert malwarebazaar.parse(reply("md5", {"query_status": "hash_not_found"})).status is ResultStatus.NOT_FOUND
    assert malwarebazaar.parse(reply("md5", {"query_status": "illegal_hash"})).status is ResultStatus.BAD_REQUEST
    with pytest.raises(ShapeError):
        malwarebazaar.parse(reply("md5", {"query_status": "ok", "data": "oops"}))


# --- InternetDB and GreyNoise -----------------------------------------------------------------------------------


def test_internetdb_is_context_only() -> None:
    parsed = internetdb.parse(reply("ipv4", {"ip": "1.2.3.4", "ports": ["22", 80, None], "vulns": ["CVE-2023-38408"], "tags": None}))
    assert (parsed.status, parsed.verdict, parsed.score) == (ResultStatus.OK, Verdict.UNKNOWN, None)
    assert parsed.evidence.raw_summary["ports"] == [22, 80]
    with pytest.raises(ShapeError):
        internetdb.parse(reply("ipv4", {"detail": "weird"}))


@pytest.mark.parametrize(
    ("body", "verdict", "score"),
    [
        ({"noise": True, "riot": False, "classification": "malicious"}, Verdict.MALICIOUS, 90),
        ({"noise": False, "riot": True, "classification": "unknown"}, Verdict.HARMLESS, 0),
        ({"noise": True, "riot": False, "classification": "benign"}, Verdict.HARMLESS, 0),
        ({"noise": "true", "riot": "false", "classification": "unknown"}, Verdict.SUSPICIOUS, 50),
        ({"noise": False, "riot": False, "classification": None}, Verdict.UNKNOWN, None),
    ],
)
def test_greynoise_rule(body: dict[str, Any], verdict: Verdict, score: int | None) -> None:
    parsed = greynoise.parse(reply("ipv4", body))
    assert (parsed.verdict, parsed.score) == (verdict, score)


# --- helpers ----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "expected"),
    [(5, 5), ("11", 11), (" 7 ", 7), ("72.5", 72), (3.0, 3), (True, None), (None, None), ("n/a", None), (float("nan"), None)],
)
def test_as_int(raw: Any, expected: int | None) -> None:
    assert as_int(raw) == expected


@pytest.mark.parametrize(
    "raw",
    ["2019-03-25 09:55:01 UTC", "2019-03-25T09:55:01Z", "2019-03-25T09:55:01+00:00", "2019-03-25 09:55:01", 1553507701, "1553507701"],
)
def test_as_time_reads_every_source_format(raw: Any) -> None:
    assert as_time(raw) == datetime(2019, 3, 25, 9, 55, 1, tzinfo=UTC)


def test_as_time_rejects_garbage() -> None:
    assert as_time("yesterday") is None and as_time(None) is None and as_time(True) is None


@pytest.mark.parametrize("raw", ["0001-01-01T00:00:00+01:00", "9999-12-31T23:59:59-23:59", "1" * 5000])
def test_as_time_reads_a_time_out_of_range_as_none(raw: Any) -> None:
    """A time whose UTC falls outside the datetime range (a zoned zero time, the last day of 9999 west of UTC) raised
    OverflowError, and a 5,000-digit epoch ValueError; either failed the whole answer (upstream_error), so one odd
    last_seen erased the source's verdict, as the placeholders read as no time no longer do."""
    assert as_time(raw) is None


def test_raw_summary_is_bounded() -> None:
    huge = {"reports": [{"comment": "x" * 5000, "n": i} for i in range(5000)], "nested": {"a": {"b": {"c": {"d": {"e": {"f": 1}}}}}}}
    summary = bounded_summary(huge)
    assert len(json.dumps(summary, separators=(",", ":"))) <= RAW_SUMMARY_LIMIT
    assert summary["reports"]  # trimmed, not dropped


def test_quota_headers() -> None:
    quota = x_ratelimit_quota({"x-ratelimit-limit": "1000", "X-RateLimit-Remaining": "998", "X-RateLimit-Reset": "1718236800"})
    assert quota is not None and (quota.limit, quota.remaining, quota.window) == (1000, 998, "day")
    assert quota.reset_at == datetime.fromtimestamp(1718236800, UTC)
    ha = api_limits_quota({"Api-Limits": json.dumps({"limits": {"minute": 5, "hour": 200}, "used": {"minute": 4, "hour": 10}})})
    assert ha is not None and (ha.limit, ha.remaining, ha.window) == (5, 1, "minute")
    assert api_limits_quota({"Api-Limits": "not json"}) is None
    assert x_ratelimit_quota({}) is None


def test_source_result_round_trips() -> None:
    parsed = abuseipdb.parse(reply("ipv4", abuse(abuseConfidenceScore=90, totalReports=2, lastReportedAt="2024-06-01T00:00:00+00:00")))
    result = SourceResult("abuseipdb", parsed.status, parsed.verdict, parsed.score, parsed.evidence, None, datetime.now(UTC))
    assert SourceResult.from_json(result.to_json()) == result


def test_free_tiers_seed_valid_manifest_quotas() -> None:
    from threatflow.enrichment.sources import REGISTRY

    seeds = {name: source.free_tier.manifest_quota() for name, source in REGISTRY.items()}
    assert seeds["virustotal"] == {"per_minute": 4, "per_day": 500}
    assert seeds["abuseipdb"] == {"per_minute": 60, "per_day": 1000}
    assert seeds["hybrid_analysis"] == {"per_minute": 200}
    assert all(q["per_minute"] >= 1 and q.get("per_day", 1) >= 1 for q in seeds.values())
