"""Contract tests: every source in REGISTRY x every type it declares, through `client.lookup`, against the fake
APIs (`tests/fakes/intel`) serving each API's documented found / not-found / error forms.

A source added to REGISTRY without a fake and fixtures fails `test_every_source_has_a_fake_and_fixtures`, and
its types appear here automatically: the matrix is built from REGISTRY, not listed by hand.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest
import requests
from fakes.intel import FAKE_APIS, FakeIntel, fixture_path, start_fake_intel

from threatflow.enrichment.model import RAW_SUMMARY_LIMIT, ResultStatus, SourceResult, Verdict
from threatflow.enrichment.sources import REGISTRY, client
from threatflow.enrichment.sources.base import IOC_TYPES

KEY = "test-key-0123456789abcdef"
VALUES = {
    "ipv4": "185.220.101.1",
    "ipv6": "2a0b:f4c2:2::1",
    "domain": "evil.example",
    "url": "http://evil.example/payload.exe?id=1&x=a b",
    "md5": "44d88612fea8a8f36de82e1278abb02f",
    "sha1": "3395856ce81f2b7382dee72602f798b642f14140",
    "sha256": "275a021bbfb6489e54d471899f7db9d1663fc695ec2fe2a2c4538aabf651fd0f",
}
CASES = [pytest.param(name, t, id=f"{name}-{t}") for name, source in REGISTRY.items() for t in sorted(source.types)]
HASHES = ("md5", "sha1", "sha256")

# (source, type or "*") -> (verdict, score, evidence checks) for the `found` fixtures, derived by hand from each
# source's recommended rule in ../shared/docs/ti-api-reference.md.
FOUND: dict[tuple[str, str], tuple[Verdict, int | None, dict[str, Any]]] = {
    ("virustotal", "hash"): (Verdict.MALICIOUS, 93, {"malware_families": "eicar", "detections.malicious": 62}),
    ("virustotal", "url"): (Verdict.MALICIOUS, 10, {"detections.suspicious": 1}),
    ("virustotal", "domain"): (Verdict.MALICIOUS, 4, {"tags": "dga"}),
    ("virustotal", "ip"): (Verdict.MALICIOUS, 16, {"countries": "DE", "asn": "AS208294 Zwiebelfreunde e.V."}),
    ("abuseipdb", "ip"): (Verdict.MALICIOUS, 100, {"tags": "SSH", "countries": "CN"}),
    ("otx", "ip"): (Verdict.MALICIOUS, 75, {"malware_families": "Mirai", "attack_ids": "T1110.001", "asn": "AS208294 Zwiebelfreunde e.V."}),
    ("otx", "domain"): (Verdict.MALICIOUS, 50, {"malware_families": "Dridex", "attack_ids": "T1566.001"}),
    ("otx", "url"): (Verdict.SUSPICIOUS, 25, {"malware_families": "AgentTesla", "attack_ids": "T1105"}),
    ("otx", "hash"): (Verdict.MALICIOUS, 100, {"malware_families": "EICAR"}),
    ("hybrid_analysis", "hash"): (Verdict.MALICIOUS, 85, {"malware_families": "Trojan.Emotet", "tags": "emotet"}),
    ("hybrid_analysis", "*"): (Verdict.MALICIOUS, 100, {"malware_families": "Win32.Trojan.AgentTesla"}),
    ("urlhaus", "ip"): (Verdict.MALICIOUS, 75, {"tags": "mirai"}),  # every URL offline
    ("urlhaus", "hash"): (Verdict.MALICIOUS, 100, {"malware_families": "AgentTesla"}),
    ("urlhaus", "*"): (Verdict.MALICIOUS, 100, {"tags": "exe"}),  # a URL online
    ("threatfox", "*"): (Verdict.MALICIOUS, 100, {"malware_families": "Cridex", "tags": "botnet_cc"}),
    ("malwarebazaar", "*"): (Verdict.MALICIOUS, 100, {"malware_families": "Emotet", "countries": "NL"}),
    ("internetdb", "*"): (Verdict.UNKNOWN, None, {"tags": "tor"}),
    ("greynoise", "*"): (Verdict.MALICIOUS, 90, {"tags": "malicious"}),
}


def expected_found(source: str, ioc_type: str) -> tuple[Verdict, int | None, dict[str, Any]]:
    group = "hash" if ioc_type in HASHES else "ip" if ioc_type in ("ipv4", "ipv6") else ioc_type
    for key in ((source, ioc_type), (source, group), (source, "*")):
        if key in FOUND:
            return FOUND[key]
    raise AssertionError(f"no expectation for {source}/{ioc_type}: add one to FOUND")


@pytest.fixture(scope="module")
def fake() -> Iterator[FakeIntel]:
    with start_fake_intel() as server:
        yield server


@pytest.fixture(autouse=True)
def _clean(fake: FakeIntel) -> None:
    fake.reset()


@pytest.fixture(scope="module")
def session() -> Iterator[requests.Session]:
    with requests.Session() as s:
        yield s


def lookup(
    fake: FakeIntel, session: requests.Session, source: str, ioc_type: str, *, key: str | None = KEY, timeout: float = 5.0
) -> SourceResult:
    return client.lookup(source, ioc_type, VALUES[ioc_type], session=session, api_key=key, timeout=timeout, base_url=fake.url(source))


def value_seen_by_fake(source: str, ioc_type: str) -> str:
    value = VALUES[ioc_type]
    return value if ioc_type == "url" else value.lower()


def test_every_source_has_a_fake_and_fixtures() -> None:
    assert len(REGISTRY) >= 9
    missing = []
    for name, source in REGISTRY.items():
        assert source.types, f"{name} declares no IoC types"
        assert source.types <= set(IOC_TYPES), f"{name} declares unknown types {source.types - set(IOC_TYPES)}"
        if name not in FAKE_APIS:
            missing.append(f"{name}: no fake in tests/fakes/intel/apis.py")
            continue
        for ioc_type in source.types:
            for kind, fixture_type in FAKE_APIS[name].fixture_names(ioc_type):
                path = fixture_path(name, kind, fixture_type)
                if path is None:
                    missing.append(f"{name}/{ioc_type}: no {kind} fixture")
                else:
                    json.loads(path.read_text())  # a fixture must be valid JSON
    assert not missing, "sources without fixtures:\n" + "\n".join(missing)


def test_value_table_covers_every_declared_type() -> None:
    assert {t for s in REGISTRY.values() for t in s.types} <= set(VALUES)


@pytest.mark.parametrize(("source", "ioc_type"), CASES)
def test_found(fake: FakeIntel, session: requests.Session, source: str, ioc_type: str) -> None:
    fake.set_scenario(source, "found")
    result = lookup(fake, session, source, ioc_type)
    verdict, score, checks = expected_found(source, ioc_type)
    assert (result.status, result.verdict, result.score) == (ResultStatus.OK, verdict, score), result.detail
    evidence = result.evidence
    for path, wanted in checks.items():
        head, _, attr = path.partition(".")
        actual = getattr(getattr(evidence, head), attr) if attr else getattr(evidence, head)
        assert wanted == actual or (isinstance(actual, tuple) and wanted in actual), f"{path}: {actual!r}"
    assert evidence.references, "a found result links to the source's page"
    assert evidence.raw_summary
    assert len(json.dumps(evidence.raw_summary, separators=(",", ":"))) <= RAW_SUMMARY_LIMIT
    assert result.retry_after is None and not result.retryable
    two_step = source == "hybrid_analysis" and ioc_type in HASHES  # search, then overview of the sha256 it returned
    assert result.calls == (2 if two_step else 1)
    assert fake.call_count(source) == result.calls
    # Hybrid Analysis' overview call is for the sha256 the search returned: the same value when asked by sha256.
    assert fake.call_count(source, value_seen_by_fake(source, ioc_type)) == (2 if two_step and ioc_type == "sha256" else 1)
    # the result survives a JSON round trip (the pipeline caches and stores it)
    assert SourceResult.from_json(result.to_json()) == result


@pytest.mark.parametrize(("source", "ioc_type"), CASES)
def test_not_found(fake: FakeIntel, session: requests.Session, source: str, ioc_type: str) -> None:
    fake.set_scenario(source, "not_found")
    result = lookup(fake, session, source, ioc_type)
    assert (result.status, result.verdict, result.score) == (ResultStatus.NOT_FOUND, Verdict.UNKNOWN, None), result.detail
    assert not result.retryable
    assert result.calls == 1 and fake.call_count(source) == 1


@pytest.mark.parametrize(("source", "ioc_type"), CASES)
def test_unauthorized(fake: FakeIntel, session: requests.Session, source: str, ioc_type: str) -> None:
    fake.set_scenario(source, "unauthorized")
    result = lookup(fake, session, source, ioc_type)
    assert result.status is ResultStatus.AUTH_ERROR and result.http_status in (401, 403)
    assert not result.retryable
    assert KEY not in result.to_json()
    assert fake.call_count(source) == 1


@pytest.mark.parametrize(("source", "ioc_type"), CASES)
def test_rate_limited_honours_retry_after(fake: FakeIntel, session: requests.Session, source: str, ioc_type: str) -> None:
    fake.set_scenario(source, "rate_limited", retry_after=17)
    result = lookup(fake, session, source, ioc_type)
    assert result.status is ResultStatus.RATE_LIMITED and result.http_status == 429
    assert result.retry_after == 17.0 and result.retryable
    assert (result.verdict, result.score) == (Verdict.UNKNOWN, None)
    assert fake.call_count(source) == 1


@pytest.mark.parametrize(("source", "ioc_type"), CASES)
def test_server_error_is_retryable(fake: FakeIntel, session: requests.Session, source: str, ioc_type: str) -> None:
    fake.set_scenario(source, "server_error")
    result = lookup(fake, session, source, ioc_type)
    assert result.status is ResultStatus.UPSTREAM_ERROR and result.retryable
    assert result.http_status is not None and result.http_status >= 500


@pytest.mark.parametrize(("source", "ioc_type"), CASES)
def test_timeout(fake: FakeIntel, session: requests.Session, source: str, ioc_type: str) -> None:
    fake.set_scenario(source, "slow", delay=0.6)
    result = lookup(fake, session, source, ioc_type, timeout=0.15)
    assert result.status is ResultStatus.TIMEOUT and result.retryable
    assert (result.verdict, result.score) == (Verdict.UNKNOWN, None)


@pytest.mark.parametrize("scenario", ["malformed", "unexpected_shape"])
@pytest.mark.parametrize(("source", "ioc_type"), CASES)
def test_malformed_and_unexpected_shapes(fake: FakeIntel, session: requests.Session, source: str, ioc_type: str, scenario: str) -> None:
    fake.set_scenario(source, scenario)
    result = lookup(fake, session, source, ioc_type)
    assert result.status is ResultStatus.UPSTREAM_ERROR, result
    assert not result.retryable  # the same body would come back: retrying cannot help
    assert (result.verdict, result.score) == (Verdict.UNKNOWN, None)


@pytest.mark.parametrize(("source", "ioc_type"), CASES)
def test_no_key(fake: FakeIntel, session: requests.Session, source: str, ioc_type: str) -> None:
    """A keyed source without a key is refused before any call; a keyless one answers."""
    fake.set_scenario(source, "found")
    result = lookup(fake, session, source, ioc_type, key=None)
    if REGISTRY[source].keyless:
        assert result.status is ResultStatus.OK
        assert fake.call_count(source) >= 1
    else:
        assert result.status is ResultStatus.AUTH_ERROR and result.calls == 0
        assert fake.call_count(source) == 0


@pytest.mark.parametrize("source", sorted(REGISTRY))
def test_health_spends_no_quota(fake: FakeIntel, session: requests.Session, source: str) -> None:
    healthy = client.health(source, session=session, api_key=KEY, timeout=2.0, base_url=fake.url(source))
    assert healthy.reachable and healthy.status is client.HealthStatus.OK
    fake.set_scenario(source, "server_error")
    degraded = client.health(source, session=session, api_key=KEY, timeout=2.0, base_url=fake.url(source))
    assert degraded.reachable and degraded.status is client.HealthStatus.DEGRADED
    assert fake.call_count(source) == 0  # no lookup was made
    assert fake.health_count(source) == 2
    assert all(c.headers.get(REGISTRY[source].auth_header or "", "") == "" for c in fake.calls(source))


def test_health_of_an_unreachable_source(session: requests.Session) -> None:
    import socket

    with socket.socket() as sock:  # a port with nobody listening
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    result = client.health("virustotal", session=session, api_key=None, timeout=1.0, base_url=f"http://127.0.0.1:{port}/api/v3")
    assert not result.reachable and result.status is client.HealthStatus.UNREACHABLE


def test_connection_refused_is_a_retryable_upstream_error(session: requests.Session) -> None:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    result = client.lookup("abuseipdb", "ipv4", "1.2.3.4", session=session, api_key=KEY, timeout=1.0, base_url=f"http://127.0.0.1:{port}")
    assert result.status is ResultStatus.UPSTREAM_ERROR and result.retryable and result.http_status is None


def test_unsupported_type_is_refused_without_a_call(fake: FakeIntel, session: requests.Session) -> None:
    result = client.lookup(
        "greynoise", "sha256", VALUES["sha256"], session=session, api_key=KEY, timeout=1.0, base_url=fake.url("greynoise")
    )
    assert result.status is ResultStatus.BAD_REQUEST and result.calls == 0
    assert fake.call_count("greynoise") == 0


def test_dependencies_are_required_keywords() -> None:
    with pytest.raises(TypeError):
        client.lookup("virustotal", "ipv4", "1.2.3.4")  # type: ignore[call-arg]


@pytest.mark.parametrize("value", ["", "http://x.example/" + "a" * 5000, "evil.example\r\nX-Injected: 1"])
def test_unreasonable_values_are_refused_without_a_call(fake: FakeIntel, session: requests.Session, value: str) -> None:
    result = client.lookup("otx", "domain", value, session=session, api_key=KEY, timeout=1.0, base_url=fake.url("otx"))
    assert result.status is ResultStatus.BAD_REQUEST and result.calls == 0
    assert fake.call_count("otx") == 0


URL_SOURCES = [name for name, source in REGISTRY.items() if "url" in source.types]


def test_every_source_that_takes_a_url_is_checked_for_credentials() -> None:
    assert {"virustotal", "otx", "hybrid_analysis", "urlhaus", "threatfox"} <= set(URL_SOURCES)
    assert not {t for s in REGISTRY.values() for t in s.types} - set(IOC_TYPES), "a new type may carry userinfo"


@pytest.mark.parametrize("source", URL_SOURCES)
@pytest.mark.parametrize("userinfo", ["alice:s3cr3t-pw@", "alice@", "bob:p%40ss@w0rd@"])
def test_a_urls_credentials_are_never_sent_to_a_source(fake: FakeIntel, session: requests.Session, source: str, userinfo: str) -> None:
    """http://user:pass@host/path went to VirusTotal, URLhaus and the others with its credentials (a VirusTotal
    submission is visible to its other customers). The source is asked about the URL without its userinfo,
    and the result's detail says the credentials were withheld."""
    fake.set_scenario(source, "found")
    with_credentials = VALUES["url"].replace("http://", "http://" + userinfo, 1)
    result = client.lookup(source, "url", with_credentials, session=session, api_key=KEY, timeout=5.0, base_url=fake.url(source))
    assert result.status is ResultStatus.OK, result.detail
    calls = fake.calls(source)
    assert calls and all(call.value == VALUES["url"] for call in calls), [c.value for c in calls]
    secret = userinfo[:-1]  # all of it, an "@" inside the userinfo too
    assert not any(secret in (call.path or "") for call in calls)
    assert "credentials withheld" in result.detail
    # what the pipeline stores (the result row's detail, cut to 500 characters) keeps the note
    assert result.detail[:500].startswith("credentials withheld")


def test_a_url_without_credentials_is_sent_as_it_is(fake: FakeIntel, session: requests.Session) -> None:
    result = lookup(fake, session, "urlhaus", "url")
    assert fake.call_count("urlhaus", VALUES["url"]) == 1 and "credentials" not in result.detail


@pytest.mark.parametrize(
    ("value", "sent"),
    [
        ("http://evil.example/login?next=a@b.example", "http://evil.example/login?next=a@b.example"),  # an "@" past the host
        ("https://u:p@[2001:db8::1]:8443/x#f@g", "https://[2001:db8::1]:8443/x#f@g"),
        ("ftp://anonymous:x@evil.example", "ftp://evil.example"),
    ],
)
def test_only_the_authoritys_userinfo_is_withheld(value: str, sent: str) -> None:
    assert client.without_userinfo(value) == (sent, value != sent)
