"""GET /api/v1/detect/intel/{ip} keeps a stored IoC's TLP, as enrich-dispatch does.

Dispatch sends an IoC to a source only when its TLP is at most the source's `max_tlp` (amber in the manifest), so
a TLP:RED address is never disclosed to VirusTotal or AbuseIPDB by enrichment. The detect function's IP intel
route asked the sources about any public address, a stored red one included, for any reader: one GET disclosed
it to every IP source, whoever asked and whatever their clearance."""

import json

import pytest
from helpers import create_user

pytestmark = pytest.mark.integration

RED_IP = "185.220.101.1"
OTHER_IP = "185.220.101.2"


@pytest.fixture
def intel(backend_env, function_client, monkeypatch):
    from werkzeug.test import EnvironBuilder
    from werkzeug.wrappers import Request as WerkzeugRequest

    from tests.fakes.intel import start_fake_intel
    from threatflow.auth.api import authenticator
    from threatflow.enrichment.api import add_detect_intel_routes
    from threatflow.platform.web import Router
    from threatflow.runtime import Runtime

    fake = start_fake_intel()
    for key, value in {**fake.env(), "VT_API_KEY": "test-vt-key", "ABUSEIPDB_API_KEY": "test-abuseipdb-key"}.items():
        monkeypatch.setenv(key, value)
    url = backend_env["DATABASE_URL"]
    auth = function_client("auth")

    def bearer(username, role, clearance=None):
        password = create_user(url, username, role, clearance=clearance)
        token = auth.post("/api/v1/auth/token", json={"username": username, "password": password}).get_json()["access_token"]
        return {"Authorization": f"Bearer {token}"}

    red, reader = bearer("red-analyst", "analyst", "red"), bearer("amber-reader", "reader")
    stored = function_client("iocs").post("/api/v1/iocs/batch", json={"iocs": [{"value": RED_IP, "tlp": "red"}]}, headers=red)
    assert stored.status_code in (200, 201, 207), stored.get_json()
    runtime = Runtime.from_env()
    router = Router("detect-test", runtime=runtime, authenticator=authenticator(runtime))
    add_detect_intel_routes(router, runtime)

    def get(ip, headers):
        response = router.handle(WerkzeugRequest(EnvironBuilder(path=f"/api/v1/detect/intel/{ip}", headers=headers).get_environ()))
        return response.status_code, json.loads(response.get_data())

    yield get, fake, red, reader
    fake.close()
    runtime.engine.dispose()


def test_a_red_address_is_not_sent_to_a_source_whose_max_tlp_is_lower(intel):
    get, fake, red, reader = intel
    status, body = get(RED_IP, red)
    assert status == 200 and body["status"] == "skipped" and body["source"] is None, body
    assert set(body["tried"]) >= {"abuseipdb", "virustotal"} and all("TLP red" in why for why in body["tried"].values())
    assert get(RED_IP, reader)[0] == 404  # above the reader's clearance: as POST /enrich answers
    assert fake.call_count() == 0, "a TLP:RED address went to a third party"
    status, body = get(OTHER_IP, reader)  # an address stored nowhere is asked as before
    assert status == 200 and body["source"] == "abuseipdb" and fake.call_count("abuseipdb", OTHER_IP) == 1


@pytest.mark.parametrize(
    "spelling",
    ["64:ff9b::b9dc:6501", "2002:b9dc:6501::1", "::b9dc:6501", "64:ff9b:1::b9dc:6501", "::ffff:0:b9dc:6501"],
    # 64:ff9b:1::/48: RFC 8215's local-use prefix, as a /96; ::ffff:0:0:0/96: SIIT's IPv4-translated addresses
    ids=["nat64", "6to4", "ipv4-compatible", "nat64-local-use", "ipv4-translated"],
)
def test_a_red_address_spelled_as_an_ipv6_address_carrying_it_is_not_sent_either(intel, spelling):
    """An IPv6 address carrying the stored TLP:RED IPv4 address (NAT64, 6to4, IPv4-compatible: the route reads the
    IPv4 address in it to refuse a private one) was looked up as an IPv6 IoC stored nowhere: any reader's GET sent
    the red address, so spelled, to every IP source."""
    get, fake, red, reader = intel
    assert get(spelling, reader)[0] == 404
    status, body = get(spelling, red)
    assert status == 200 and body["status"] == "skipped" and body["source"] is None, body
    assert fake.call_count() == 0, "a TLP:RED address went to a third party inside an IPv6 one"


@pytest.mark.parametrize(
    ("stored", "asked"),
    [
        ("::ffff:185.220.101.7", "::ffff:185.220.101.7"),
        ("::ffff:185.220.101.7", "185.220.101.7"),
        ("64:ff9b::b9dc:6507", "185.220.101.7"),
        ("::b9dc:6507", "185.220.101.7"),
        ("::ffff:0:b9dc:6507", "::ffff:b9dc:6507"),
    ],
    ids=["ipv4-mapped-as-stored", "ipv4-mapped-asked-as-ipv4", "nat64", "ipv4-compatible", "ipv4-translated"],
)
def test_an_ipv4_address_whose_ipv6_spelling_is_stored_red_is_not_sent_either(intel, function_client, stored, asked):
    """The reverse of the test above: the red IoC is an IPv6 spelling of the host (an IPv4-mapped address typed ipv6
    stays an ipv6 IoC) and the reader asks for the IPv4 address it carries. The route reads ::ffff:a.b.c.d as the IPv4
    host and looked up only an ipv4 IoC, stored nowhere: an amber reader asking for the red IoC's own value got a 200,
    and the address went to AbuseIPDB."""
    get, fake, red, reader = intel
    item = {"value": stored, "type": "ipv6", "tlp": "red"}
    written = function_client("iocs").post("/api/v1/iocs/batch", json={"iocs": [item]}, headers=red).get_json()["results"][0]
    assert (written["type"], written["value"]) == ("ipv6", stored), written
    assert get(asked, reader)[0] == 404
    status, body = get(asked, red)
    assert status == 200 and body["status"] == "skipped" and body["source"] is None, body
    assert fake.call_count() == 0, "an address stored TLP:RED in an IPv6 spelling went to a third party"


# A red record that covers the host without holding it: a range containing it (IPv4 or IPv6 CIDR), a 6to4 or Teredo
# address carrying it (the IPv4 address is their router's or client's), or a range containing the IPv4 address a 6to4
# address carries. Each left the host at its own TLP (stored nowhere), so any reader's GET sent it to every source.
COVERED = [
    ({"value": "185.220.102.0/24"}, "185.220.102.17"),
    ({"value": "2a0b:f4c0:1::/48"}, "2a0b:f4c0:1::5"),
    ({"value": "2002:b9dc:6511::1", "type": "ipv6"}, "185.220.101.17"),
    ({"value": "2001:0:4136:e378:8000:63bf:4623:9ade", "type": "ipv6"}, "185.220.101.33"),
    ({"value": "185.220.104.0/24"}, "2002:b9dc:680a::1"),
    ({"value": "2001:0:4136:e378:8000:63bf:4623:9ad0/124"}, "185.220.101.40"),  # Teredo clients 185.220.101.32-47
    # The broadest ranges that still cover (BROAD below, one bit wider, do not): an IPv4 /8, an IPv6 /32, and the IPv6
    # ranges embedding an IPv4 /8 (a 6to4 /24, an IPv4-mapped /104, a Teredo /104 of clients)
    ({"value": "185.0.0.0/8"}, "185.220.101.40"),
    ({"value": "2a0b:f4c0::/32"}, "2a0b:f4c0:1::5"),
    ({"value": "2002:b900::/24"}, "185.220.101.40"),
    ({"value": "::ffff:b900:0/104"}, "185.220.101.40"),
    ({"value": "2001:0:4136:e378:8000:63bf:4600:0/104"}, "185.220.101.40"),  # Teredo clients 185.255.255.255-185.0.0.0
]
COVERED_IDS = [
    "ipv4-cidr", "ipv6-cidr", "6to4", "teredo", "6to4-of-a-host-in-a-range", "teredo-cidr",
    "ipv4-/8", "ipv6-/32", "6to4-/24", "ipv4-mapped-/104", "teredo-/104",
]  # fmt: skip


@pytest.mark.parametrize(("stored", "asked"), COVERED, ids=COVERED_IDS)
def test_a_host_covered_by_a_red_record_is_not_sent_to_a_source_below_red(intel, function_client, stored, asked):
    """The reader asked about their own host, so it is not a 404 (that would say a red record covers it), but the
    sources whose max_tlp is below red are not asked, and the answer names neither the TLP nor the record."""
    get, fake, red, reader = intel
    written = function_client("iocs").post("/api/v1/iocs/batch", json={"iocs": [{**stored, "tlp": "red"}]}, headers=red)
    assert written.get_json()["results"][0]["value"] == stored["value"], written.get_json()
    status, body = get(asked, reader)
    assert status == 200 and body["status"] == "skipped" and body["source"] is None, body
    assert fake.call_count() == 0, "a host covered by a TLP:RED record went to a third party"
    assert body["tried"] and not any("red" in why or stored["value"] in why for why in body["tried"].values()), body
    status, body = get(asked, red)  # a reader cleared for the record is told its TLP, as for the host's own
    assert status == 200 and body["status"] == "skipped" and all("TLP red" in why for why in body["tried"].values()), body
    assert fake.call_count() == 0


# Ranges broader than any intel about a host: the whole address space, all of IPv4 as IPv6 spells it, every 6to4
# router or Teredo client, one bit wider than the broadest COVERED ranges. Stored red (an analyst cleared for red may),
# each withheld every address it spans from every source below red, for every reader and run: enrichment of addresses
# turned off platform-wide by one record.
BROAD = [
    "0.0.0.0/0", "184.0.0.0/7", "::/0", "2000::/3", "2a0b:f4c0::/31", "::ffff:0:0/96", "::ffff:b800:0/103",
    "64:ff9b::/96", "2002::/16", "2002:b800::/23", "2001::/32", "2001:0:4136:e378:8000:63bf:4600:0/103",
]  # fmt: skip


@pytest.mark.parametrize("broad", BROAD)
def test_a_range_broader_than_intel_about_a_host_withholds_no_host(intel, function_client, broad):
    get, fake, red, reader = intel
    written = function_client("iocs").post("/api/v1/iocs/batch", json={"iocs": [{"value": broad, "tlp": "red"}]}, headers=red)
    assert written.get_json()["results"][0]["status"] == "created", written.get_json()
    for host in ("185.220.101.40", "2a0b:f4c0:1::5"):
        status, body = get(host, reader)
        assert status == 200 and body["source"] == "abuseipdb" and fake.call_count("abuseipdb", host) == 1, (host, body)


def test_a_red_range_leaves_the_hosts_outside_it_alone(intel, function_client):
    get, fake, red, reader = intel
    items = [{"value": "185.220.102.0/24", "tlp": "red"}, {"value": "2002:b9dc:6611::1", "type": "ipv6", "tlp": "red"}]
    items.append({"value": "2001:0:4136:e378:8000:63bf:4623:9ad0/124", "tlp": "red"})  # Teredo clients 185.220.101.32-47
    function_client("iocs").post("/api/v1/iocs/batch", json={"iocs": items}, headers=red)
    for outside in ("185.220.103.1", "185.220.101.255", "185.220.110.1", "185.220.101.31", "185.220.101.48"):
        status, body = get(outside, reader)
        assert status == 200 and body["source"] == "abuseipdb" and fake.call_count("abuseipdb", outside) == 1, body
