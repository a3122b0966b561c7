"""The fake intel server itself: it must refuse what the real APIs refuse (so a client bug shows up here, not in
production), count every call, and be drivable over HTTP from another process (the dev stack, e2e tests)."""

from __future__ import annotations

import base64
import json
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import replace

import pytest
import requests
from fakes.intel import FakeIntel, start_fake_intel
from helpers import REPO_ROOT

from threatflow.enrichment.model import ResultStatus
from threatflow.enrichment.sources import REGISTRY, client
from threatflow.enrichment.sources.base import Request

KEY = "test-key-0123456789abcdef"
IP = "185.220.101.1"


@pytest.fixture(scope="module")
def fake() -> Iterator[FakeIntel]:
    with start_fake_intel() as server:
        yield server


@pytest.fixture(autouse=True)
def _clean(fake: FakeIntel) -> None:
    fake.reset()


def control(fake: FakeIntel, **body: object) -> requests.Response:
    return requests.post(f"{fake.origin}/_control/scenario", json=body, timeout=5)


def lookup(fake: FakeIntel, source: str, ioc_type: str, value: str) -> client.SourceResult:
    with requests.Session() as session:
        return client.lookup(source, ioc_type, value, session=session, api_key=KEY, timeout=5, base_url=fake.url(source))


# --- control API ------------------------------------------------------------------------------------------------


def test_scenario_for_a_duration_then_back_to_auto(fake: FakeIntel) -> None:
    assert control(fake, source="virustotal", scenario="rate_limited", duration=0.4).status_code == 200
    assert lookup(fake, "virustotal", "ipv4", IP).status is ResultStatus.RATE_LIMITED
    time.sleep(0.5)
    assert lookup(fake, "virustotal", "ipv4", IP).status is ResultStatus.OK  # a known demo value under auto


def test_scenario_for_a_number_of_calls(fake: FakeIntel) -> None:
    fake.set_scenario("abuseipdb", "server_error", count=2)
    statuses = [lookup(fake, "abuseipdb", "ipv4", IP).status for _ in range(3)]
    assert statuses == [ResultStatus.UPSTREAM_ERROR, ResultStatus.UPSTREAM_ERROR, ResultStatus.OK]


def test_scenario_per_value(fake: FakeIntel) -> None:
    fake.set_scenario("greynoise", "rate_limited", value="8.8.4.4")
    assert lookup(fake, "greynoise", "ipv4", "8.8.4.4").status is ResultStatus.RATE_LIMITED
    assert lookup(fake, "greynoise", "ipv4", IP).status is ResultStatus.OK


def test_auto_answers_found_for_demo_values_only(fake: FakeIntel) -> None:
    assert lookup(fake, "otx", "ipv4", IP).status is ResultStatus.OK
    assert lookup(fake, "otx", "ipv4", "198.51.100.7").status is ResultStatus.NOT_FOUND


def test_calls_are_counted_per_source_and_value_over_http(fake: FakeIntel) -> None:
    for _ in range(3):
        lookup(fake, "urlhaus", "domain", "evil.example")
    lookup(fake, "urlhaus", "domain", "other.example")
    data = requests.get(f"{fake.origin}/_control/calls", params={"source": "urlhaus"}, timeout=5).json()
    assert data["by_source"]["urlhaus"] == 4
    assert data["by_value"]["urlhaus"] == {"evil.example": 3, "other.example": 1}
    assert {c["scenario"] for c in data["calls"]} == {"auto"}
    assert all(c["headers"]["auth-key"] == "<present>" for c in data["calls"]), "keys are never echoed by the control API"
    assert requests.post(f"{fake.origin}/_control/reset", timeout=5).json() == {"ok": True}
    assert requests.get(f"{fake.origin}/_control/calls", timeout=5).json()["total"] == 0


def test_control_rejects_unknown_names(fake: FakeIntel) -> None:
    assert control(fake, source="nope", scenario="found").status_code == 400
    assert control(fake, source="otx", scenario="exploded").status_code == 400
    assert control(fake, scenario="found").status_code == 400


def test_sources_listing(fake: FakeIntel) -> None:
    listed = requests.get(f"{fake.origin}/_control/sources", timeout=5).json()
    assert set(REGISTRY) <= set(listed)
    assert listed["urlhaus"] == fake.url("urlhaus") and fake.env()["INTEL_URLHAUS_URL"] == fake.url("urlhaus")


def test_runnable_as_a_module_and_drivable_from_another_process() -> None:
    process = subprocess.Popen([sys.executable, "-m", "tests.fakes.intel", "--port", "0"], cwd=REPO_ROOT, stdout=subprocess.PIPE, text=True)
    try:
        assert process.stdout is not None
        started = json.loads(process.stdout.readline())
        origin = started["url"]
        requests.post(
            f"{origin}/_control/scenario", json={"source": "virustotal", "scenario": "unauthorized"}, timeout=5
        ).raise_for_status()
        with requests.Session() as session:
            result = client.lookup(
                "virustotal",
                "domain",
                "evil.example",
                session=session,
                api_key=KEY,
                timeout=5,
                base_url=started["env"]["INTEL_VIRUSTOTAL_URL"],
            )
        assert result.status is ResultStatus.AUTH_ERROR
        assert requests.get(f"{origin}/_control/calls", timeout=5).json()["by_source"] == {"virustotal": 1}
    finally:
        process.terminate()
        process.wait(timeout=10)


# --- the fakes refuse what the real APIs refuse -----------------------------------------------------------------


def test_error_bodies_are_json_with_the_right_content_type(fake: FakeIntel) -> None:
    fake.set_scenario("virustotal", "rate_limited")
    response = requests.get(f"{fake.url('virustotal')}/ip_addresses/{IP}", headers={"X-Apikey": KEY}, timeout=5)
    assert response.status_code == 429 and response.headers["Content-Type"] == "application/json"
    assert response.json()["error"]["code"] == "QuotaExceededError"


def test_virustotal_headers_match_case_insensitively_and_a_missing_key_is_401(fake: FakeIntel) -> None:
    base = fake.url("virustotal")
    assert requests.get(f"{base}/domains/evil.example", headers={"X-APIKEY": KEY}, timeout=5).status_code == 200
    missing = requests.get(f"{base}/domains/evil.example", timeout=5)
    assert missing.status_code == 401 and missing.json()["error"]["code"] == "AuthenticationRequiredError"


def test_virustotal_url_ids(fake: FakeIntel) -> None:
    base, headers = fake.url("virustotal"), {"x-apikey": KEY}
    url = "http://evil.example/payload.exe"
    good = base64.urlsafe_b64encode(url.encode()).decode().strip("=")
    body = requests.get(f"{base}/urls/{good}", headers=headers, timeout=5).json()
    assert len(body["data"]["id"]) == 64 and body["data"]["attributes"]["url"] == url  # ids returned are SHA-256
    padded = base64.urlsafe_b64encode(b"http://evil.example/ab").decode()
    assert padded.endswith("=") and requests.get(f"{base}/urls/{padded}", headers=headers, timeout=5).status_code == 404
    standard = base64.b64encode(b"http://evil.example/??>").decode()  # '/' in the id breaks the path
    assert "/" in standard and requests.get(f"{base}/urls/{standard}", headers=headers, timeout=5).status_code == 404
    file_by_md5 = requests.get(f"{base}/files/44d88612fea8a8f36de82e1278abb02f", headers=headers, timeout=5).json()
    assert len(file_by_md5["data"]["id"]) == 64
    assert requests.post(f"{base}/domains/evil.example", headers=headers, timeout=5).status_code == 400


def test_abuseipdb_needs_accept_json_and_encoded_ipv6(fake: FakeIntel) -> None:
    base = fake.url("abuseipdb")
    fake.set_scenario("abuseipdb", "unauthorized")
    html = requests.get(f"{base}/check", params={"ipAddress": IP}, headers={"Key": KEY}, timeout=5)
    assert html.status_code == 401 and html.headers["Content-Type"].startswith("text/html")
    fake.reset()
    raw = requests.get(f"{base}/check?ipAddress=2a0b:f4c2:2::1", headers={"Key": KEY, "Accept": "application/json"}, timeout=5)
    assert raw.status_code == 422 and raw.json()["errors"][0]["source"]["parameter"] == "ipAddress"
    encoded = requests.get(
        f"{base}/check",
        params={"ipAddress": "2a0b:f4c2:2::1", "verbose": ""},
        headers={"Key": KEY, "Accept": "application/json"},
        timeout=5,
    )
    assert encoded.status_code == 200 and encoded.json()["data"]["ipVersion"] == 6
    assert "reports" in encoded.json()["data"]  # verbose flag without a value
    assert int(encoded.headers["X-RateLimit-Remaining"]) < int(encoded.headers["X-RateLimit-Limit"])


def test_abuseipdb_429_headers(fake: FakeIntel) -> None:
    fake.set_scenario("abuseipdb", "rate_limited")
    response = requests.get(
        f"{fake.url('abuseipdb')}/check", params={"ipAddress": IP}, headers={"Key": KEY, "Accept": "application/json"}, timeout=5
    )
    assert response.status_code == 429 and response.headers["X-RateLimit-Remaining"] == "0"
    assert int(response.headers["Retry-After"]) > 0 and int(response.headers["X-RateLimit-Reset"]) > time.time()
    result = lookup(fake, "abuseipdb", "ipv4", IP)
    assert result.quota is not None and result.quota.remaining == 0 and result.retry_after and result.retry_after > 0


def test_otx_url_must_be_encoded(fake: FakeIntel) -> None:
    base, headers = fake.url("otx"), {"X-OTX-API-KEY": KEY}
    assert requests.get(f"{base}/indicators/url/http://evil.example/payload.exe/general", headers=headers, timeout=5).status_code == 404
    ok = requests.get(f"{base}/indicators/url/http%3A%2F%2Fevil.example%2Fpayload.exe/general", headers=headers, timeout=5)
    assert ok.status_code == 200 and ok.json()["indicator"] == "http://evil.example/payload.exe"


def test_hybrid_analysis_contract(fake: FakeIntel) -> None:
    base, md5 = fake.url("hybrid_analysis"), "44d88612fea8a8f36de82e1278abb02f"
    assert (
        requests.get(f"{base}/search/hash", params={"hash": md5}, headers={"api-key": KEY, "User-Agent": ""}, timeout=5).status_code == 403
    )
    current = requests.get(f"{base}/search/hash", params={"hash": md5}, headers={"api-key": KEY, "User-Agent": "x"}, timeout=5)
    assert "reports" in current.json() and json.loads(current.headers["Api-Limits"])["limit_reached"] is False
    legacy = requests.post(f"{base}/search/hash", data={"hash": md5}, headers={"api-key": KEY, "User-Agent": "x"}, timeout=5)
    assert isinstance(legacy.json(), list) and legacy.json()[0]["md5"] == md5
    fake.set_scenario("hybrid_analysis", "rate_limited")
    limited = lookup(fake, "hybrid_analysis", "md5", md5)
    assert limited.status is ResultStatus.RATE_LIMITED and limited.quota is not None and limited.quota.remaining == 0


def test_urlhaus_wants_a_form_post_with_the_trailing_slash(fake: FakeIntel) -> None:
    base, headers = fake.url("urlhaus"), {"Auth-Key": KEY}
    assert requests.get(f"{base}/host/", params={"host": "evil.example"}, headers=headers, timeout=5).json() == {
        "query_status": "http_post_expected"
    }
    moved = requests.post(f"{base}/host", data={"host": "evil.example"}, headers=headers, timeout=5, allow_redirects=False)
    assert moved.status_code == 301 and moved.headers["Location"].endswith("/host/")
    # the client never follows redirects (the key must not travel), so a wrong declaration fails loudly
    source = replace(REGISTRY["urlhaus"], requests={"domain": Request("POST", "/host", form={"host": "{value}"})})
    with requests.Session() as session:
        result = client.lookup(source, "domain", "evil.example", session=session, api_key=KEY, timeout=5, base_url=base)
    assert result.status is ResultStatus.UPSTREAM_ERROR and result.http_status == 301


def test_threatfox_wants_json_and_malwarebazaar_a_form(fake: FakeIntel) -> None:
    headers = {"Auth-Key": KEY}
    form = requests.post(f"{fake.url('threatfox')}/", data={"query": "search_ioc", "search_term": "gaga.com"}, headers=headers, timeout=5)
    assert form.json()["query_status"] == "unknown_query"
    as_json = requests.post(
        f"{fake.url('malwarebazaar')}/", json={"query": "get_info", "hash": "44d88612fea8a8f36de82e1278abb02f"}, headers=headers, timeout=5
    )
    assert as_json.json()["query_status"] == "no_query"
    illegal = requests.post(f"{fake.url('malwarebazaar')}/", data={"query": "get_info", "hash": "nothex"}, headers=headers, timeout=5)
    assert illegal.json()["query_status"] == "illegal_hash"


def test_greynoise_key_is_optional_and_429_names_the_plan(fake: FakeIntel) -> None:
    base = fake.url("greynoise")
    assert requests.get(f"{base}/{IP}", timeout=5).status_code == 200
    assert requests.get(f"{base}/10.0.0.1", timeout=5).status_code == 400  # not routable
    fake.set_scenario("greynoise", "rate_limited")
    assert requests.get(f"{base}/{IP}", timeout=5).json()["plan"] == "unauthenticated"
    assert requests.get(f"{base}/{IP}", headers={"KEY": KEY}, timeout=5).json()["plan"] == "community"


def test_internetdb_miss_is_404_with_detail(fake: FakeIntel) -> None:
    response = requests.get(f"{fake.url('internetdb')}/198.51.100.7", timeout=5)
    assert response.status_code == 404 and response.json() == {"detail": "No information available"}


def test_retry_after_as_an_http_date() -> None:
    from datetime import UTC, datetime, timedelta
    from email.utils import format_datetime

    # Retry-After may be a date; the client converts it to seconds.
    assert client._retry_after({"Retry-After": format_datetime(datetime.now(UTC) + timedelta(seconds=120), usegmt=True)}) == pytest.approx(
        120, abs=2
    )
    assert client._retry_after({"Retry-After": "soon"}) is None
