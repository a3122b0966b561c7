"""Enrichment under the hardening rules: TLP clearance on every read path that exposes an IoC,
push endpoints only for Pub/Sub, and a hung Redis that costs a short timeout, not a hang."""

import contextlib
import json
import os
import signal

import pytest
from helpers import create_user, push_envelope

pytestmark = pytest.mark.integration


def _bearer(auth, username, password):
    response = auth.post("/api/v1/auth/token", json={"username": username, "password": password})
    assert response.status_code == 200, response.get_json()
    return {"Authorization": f"Bearer {response.get_json()['access_token']}"}


def _ensure_topics(backend_env, *names):
    from google.api_core.exceptions import AlreadyExists
    from google.cloud import pubsub_v1

    publisher = pubsub_v1.PublisherClient()
    for name in names:
        with contextlib.suppress(AlreadyExists):
            publisher.create_topic(name=publisher.topic_path(backend_env["GOOGLE_CLOUD_PROJECT"], name))


@pytest.fixture
def marked(function_client, backend_env):
    """A green and a red IoC, each with an enrichment run; a red analyst and an amber one (the "reader")."""
    url = backend_env["DATABASE_URL"]
    auth = function_client("auth")
    writer = _bearer(auth, "writer", create_user(url, "writer", "analyst", clearance="red"))
    reader = _bearer(auth, "reader", create_user(url, "reader", "analyst"))
    _ensure_topics(backend_env, "ioc-enrichment-requested")
    iocs = function_client("iocs")
    items = [{"value": f"{tlp}.enrich-tlp.example.com", "tlp": tlp} for tlp in ("green", "red")]
    results = iocs.post("/api/v1/iocs/batch", json={"iocs": items}, headers=writer).get_json()["results"]
    ids = {r["value"].split(".")[0]: r["id"] for r in results}
    api = function_client("enrichment")
    runs = {}
    for tlp in ("green", "red"):
        started = api.post("/api/v1/enrichment/enrich", json={"value": f"{tlp}.enrich-tlp.example.com"}, headers=writer)
        assert started.status_code == 202, started.get_json()
        assert started.get_json()["ioc_id"] == ids[tlp]
        runs[tlp] = started.get_json()["run_id"]
    return {"api": api, "iocs": iocs, "ids": ids, "runs": runs, "writer": writer, "reader": reader}


def test_enrichment_reads_respect_the_callers_clearance(marked):
    api, iocs, ids, runs, writer, reader = (marked[k] for k in ("api", "iocs", "ids", "runs", "writer", "reader"))
    # runs: the red IoC's run does not exist for the amber reader
    assert api.get(f"/api/v1/enrichment/runs/{runs['green']}", headers=reader).status_code == 200
    hidden = api.get(f"/api/v1/enrichment/runs/{runs['red']}", headers=reader)
    assert hidden.status_code == 404 and hidden.is_json
    assert api.get(f"/api/v1/enrichment/runs/{runs['red']}", headers=writer).status_code == 200
    # the IoC's enrichment results on the iocs function
    assert iocs.get(f"/api/v1/iocs/{ids['green']}/enrichment", headers=reader).status_code == 200
    assert iocs.get(f"/api/v1/iocs/{ids['red']}/enrichment", headers=reader).status_code == 404
    assert iocs.get(f"/api/v1/iocs/{ids['red']}/enrichment", headers=writer).status_code == 200
    # starting a run on an IoC above the clearance: as if it did not exist
    assert api.post("/api/v1/enrichment/enrich", json={"value": "red.enrich-tlp.example.com"}, headers=reader).status_code == 404


def test_batches_leave_out_iocs_above_the_clearance(marked, backend_env):
    api, writer, reader, ids = marked["api"], marked["writer"], marked["reader"], marked["ids"]
    values = ["green.enrich-tlp.example.com", "red.enrich-tlp.example.com"]
    batch = api.post("/api/v1/enrichment/batch", json={"iocs": values}, headers=writer)
    assert batch.status_code == 202, batch.get_json()
    batch_id = batch.get_json()["batch_id"]
    as_writer = api.get(f"/api/v1/enrichment/batches/{batch_id}", headers=writer).get_json()
    assert {r["ioc_id"] for r in as_writer["runs"]} == {ids["green"], ids["red"]}
    as_reader = api.get(f"/api/v1/enrichment/batches/{batch_id}", headers=reader).get_json()
    assert {r.get("ioc_id") for r in as_reader["runs"]} == {ids["green"]}
    assert as_reader["total"] == 1


@pytest.mark.parametrize("function", ["enrich-dispatch", "enrich-aggregate"])
def test_a_forged_push_to_an_enrichment_topic_function_is_401(function_client, function):
    push = push_envelope({}, {}, f"{function}-push")  # well formed, and no token
    response = function_client(function).post("/", json=push, query_string={})
    assert response.status_code == 401 and response.is_json


def test_a_hung_redis_does_not_hang_enrichment(function_client, backend_env, frozen_redis):
    password = create_user(backend_env["DATABASE_URL"], "erin", "analyst")
    env = {"REDIS_URL": frozen_redis.env["REDIS_URL"], "REDIS_TIMEOUT_MS": "200", "REDIS_BREAKER_SECONDS": "30"}
    headers = _bearer(function_client("auth", **env), "erin", password)
    api = function_client("enrichment", **env)
    main = __import__("sys").modules["main"]  # the enrichment function's module, as functions-framework loaded it
    breaker = main.router.runtime.redis_breaker
    assert api.get("/api/v1/enrichment/sources", headers=headers).status_code == 200 and not breaker.is_open

    os.kill(frozen_redis.pid, signal.SIGSTOP)
    first = api.get("/api/v1/enrichment/sources", headers=headers)
    assert first.status_code == 503 and first.is_json  # the quota and health live in Redis: unavailable, said at once
    assert breaker.is_open and breaker.last_error in ("TimeoutError", "ConnectionError")
    answers = [api.get("/api/v1/enrichment/sources", headers=headers).status_code for _ in range(10)]
    assert answers == [503] * 10  # the breaker answers without touching the frozen Redis


# RFC 8215's local-use NAT64 prefix (64:ff9b:1::/48) with a /96 translator, Teredo (2001::/32), whose client
# address is the last 32 bits inverted, and SIIT's IPv4-translated form (::ffff:0:0:0/96): each carried the red
# address to every IPv6 source at amber.
@pytest.mark.parametrize(
    "spelling",
    [
        "64:ff9b::b9dc:6501",
        "2002:b9dc:6501::1",
        "::b9dc:6501",
        "64:ff9b:1::b9dc:6501",
        "2001:0:4136:e378:8000:63bf:4623:9afe",
        "::ffff:0:b9dc:6501",
    ],
    ids=["nat64", "6to4", "ipv4-compatible", "nat64-local-use", "teredo", "ipv4-translated"],
)
def test_an_ipv6_spelling_of_a_red_ipv4_address_is_enriched_as_red(function_client, backend_env, spelling):
    """POST /enrich of an IPv6 address carrying a stored TLP:RED IPv4 address (NAT64, 6to4, IPv4-compatible) made
    an amber IoC of the spelling and sent it to every IPv6 source, for any analyst: the red address, so spelled,
    went to third parties (GET /detect/intel refuses it since today). The request now carries the stricter TLP of
    the two, so dispatch asks no source whose max_tlp is lower, and it is above an amber analyst's clearance."""
    from threatflow.adapters.firestore import FirestoreDocuments

    url = backend_env["DATABASE_URL"]
    auth = function_client("auth")
    tag = spelling.replace(":", "")[-6:]
    red = _bearer(auth, f"red6{tag}", create_user(url, f"red6{tag}", "analyst", clearance="red"))
    amber = _bearer(auth, f"amber6{tag}", create_user(url, f"amber6{tag}", "analyst"))
    _ensure_topics(backend_env, "ioc-enrichment-requested")
    stored = function_client("iocs").post("/api/v1/iocs/batch", json={"iocs": [{"value": "185.220.101.1", "tlp": "red"}]}, headers=red)
    assert stored.status_code in (200, 201, 207), stored.get_json()
    api = function_client("enrichment")
    assert api.post("/api/v1/enrichment/enrich", json={"value": spelling}, headers=amber).status_code == 404
    started = api.post("/api/v1/enrichment/enrich", json={"value": spelling}, headers=red)
    assert started.status_code == 202, started.get_json()
    run = FirestoreDocuments(project=backend_env["GOOGLE_CLOUD_PROJECT"]).get("enrichment_runs", started.get_json()["run_id"])
    assert run is not None and run["request"]["tlp"] == "red", run
    batch = api.post("/api/v1/enrichment/batch", json={"iocs": [spelling]}, headers=amber).get_json()
    assert batch["runs"][0].get("error") == "no such indicator within your TLP clearance", batch


@pytest.mark.parametrize(
    "spelling",
    ["::ffff:185.220.101.3", "64:ff9b::b9dc:6503", "::b9dc:6503", "::ffff:0:b9dc:6503"],
    ids=["ipv4-mapped", "nat64", "ipv4-compatible", "ipv4-translated"],
)
def test_an_ipv4_address_whose_ipv6_spelling_is_stored_red_is_enriched_as_red(function_client, backend_env, spelling):
    """The reverse of the test above: the red IoC is the IPv6 spelling and the IoC enriched is the IPv4 address it
    carries, e.g. the one the flow bridge makes of a flow from ::ffff:a.b.c.d (flows store the IPv4 host). Only IPv6
    IoCs looked at the address they carry, so an amber analyst's enrich of the IPv4 address, and the bridge's
    auto-enrichment of it, went at amber to every IPv4 source."""
    from threatflow.adapters.firestore import FirestoreDocuments
    from threatflow.adapters.postgres import create_engine, unit_of_work
    from threatflow.intel import enrichment as intel_enrichment
    from threatflow.platform.config import Settings

    url = backend_env["DATABASE_URL"]
    auth = function_client("auth")
    tag = spelling.replace(":", "")[-6:]
    red = _bearer(auth, f"red4{tag}", create_user(url, f"red4{tag}", "analyst", clearance="red"))
    amber = _bearer(auth, f"amber4{tag}", create_user(url, f"amber4{tag}", "analyst"))
    _ensure_topics(backend_env, "ioc-enrichment-requested")
    iocs = function_client("iocs")
    stored = iocs.post("/api/v1/iocs/batch", json={"iocs": [{"value": spelling, "type": "ipv6", "tlp": "red"}]}, headers=red)
    assert stored.get_json()["results"][0]["value"] == spelling, stored.get_json()
    ipv4 = iocs.post("/api/v1/iocs/batch", json={"iocs": [{"value": "185.220.101.3"}]}, headers=amber).get_json()["results"][0]
    api = function_client("enrichment")
    assert api.post("/api/v1/enrichment/enrich", json={"value": "185.220.101.3"}, headers=amber).status_code == 404
    started = api.post("/api/v1/enrichment/enrich", json={"value": "185.220.101.3"}, headers=red)
    assert started.status_code == 202, started.get_json()
    run = FirestoreDocuments(project=backend_env["GOOGLE_CLOUD_PROJECT"]).get("enrichment_runs", started.get_json()["run_id"])
    assert run is not None and run["request"]["tlp"] == "red", run
    engine = create_engine(Settings.from_env({"DATABASE_URL": url}))
    try:
        with unit_of_work(engine) as conn:  # what auto-enrichment on ingest (the flow bridge's IoCs) asks dispatch to run
            (request,) = intel_enrichment.ingest_requests(conn, [ipv4["id"]], message_id="bridge-1")
    finally:
        engine.dispose()
    assert (request.value, request.tlp) == ("185.220.101.3", "red"), request


def test_an_ipv4_mapped_ipv6_ioc_of_a_red_ipv4_address_is_enriched_as_red(function_client, backend_env):
    """`::ffff:a.b.c.d` typed ipv6 stays an ipv6 IoC (normalise), and Python counts it global: carried_ipv4 read
    NAT64, 6to4, IPv4-compatible, IPv4-translated and Teredo but not the mapped form, so an amber analyst's enrich
    of it was accepted at amber and sent the red address, so spelled, to every IPv6 source."""
    from threatflow.adapters.firestore import FirestoreDocuments

    url = backend_env["DATABASE_URL"]
    auth = function_client("auth")
    red = _bearer(auth, "red6mapped", create_user(url, "red6mapped", "analyst", clearance="red"))
    amber = _bearer(auth, "amber6mapped", create_user(url, "amber6mapped", "analyst"))
    _ensure_topics(backend_env, "ioc-enrichment-requested")
    stored = function_client("iocs").post("/api/v1/iocs/batch", json={"iocs": [{"value": "185.220.101.2", "tlp": "red"}]}, headers=red)
    assert stored.status_code in (200, 201, 207), stored.get_json()
    api, item = function_client("enrichment"), {"value": "::ffff:185.220.101.2", "type": "ipv6"}
    assert api.post("/api/v1/enrichment/enrich", json=item, headers=amber).status_code == 404
    started = api.post("/api/v1/enrichment/enrich", json=item, headers=red)
    assert started.status_code == 202, started.get_json()
    run = FirestoreDocuments(project=backend_env["GOOGLE_CLOUD_PROJECT"]).get("enrichment_runs", started.get_json()["run_id"])
    assert run is not None and run["request"]["tlp"] == "red", run


def test_a_writer_cleared_below_the_default_tlp_stores_new_values_they_can_read(function_client, backend_env):
    """A green analyst's POST /enrichment/enrich of a new value stored the IoC at the default, amber, then answered
    404 "no indicator" (above their clearance), and every retry did the same; /enrichment/batch answered each new
    value "no such indicator within your TLP clearance"; POST /iocs/batch stored it amber too and answered its id,
    which the writer then read as 404. A new IoC whose item names no TLP now takes the lower of the default and the
    writer's clearance, on all three routes; an amber writer's still gets amber, and a TLP the item names is kept."""
    url = backend_env["DATABASE_URL"]
    auth = function_client("auth")
    green = _bearer(auth, "greenanalyst", create_user(url, "greenanalyst", "analyst", clearance="green"))
    amber = _bearer(auth, "amberanalyst", create_user(url, "amberanalyst", "analyst"))
    _ensure_topics(backend_env, "ioc-enrichment-requested")
    api, iocs = function_client("enrichment"), function_client("iocs")

    def tlp_of(ioc_id, headers):
        found = iocs.get(f"/api/v1/iocs/{ioc_id}", headers=headers)
        assert found.status_code == 200, found.get_json()
        return found.get_json()["tlp"]

    started = api.post("/api/v1/enrichment/enrich", json={"value": "new.green-writer.example.com"}, headers=green)
    assert started.status_code == 202, started.get_json()
    assert tlp_of(started.get_json()["ioc_id"], green) == "green"
    again = api.post("/api/v1/enrichment/enrich", json={"value": "new.green-writer.example.com"}, headers=green)
    assert again.status_code == 202 and again.get_json()["ioc_id"] == started.get_json()["ioc_id"], again.get_json()

    batch = api.post(
        "/api/v1/enrichment/batch", json={"iocs": ["one.green-writer.example.com", "two.green-writer.example.com"]}, headers=green
    )
    assert batch.status_code == 202, batch.get_json()
    runs = batch.get_json()["runs"]
    assert [r.get("error") for r in runs] == [None, None], runs
    assert [tlp_of(r["ioc_id"], green) for r in runs] == ["green", "green"]

    stored = iocs.post("/api/v1/iocs/batch", json={"iocs": [{"value": "three.green-writer.example.com"}]}, headers=green)
    assert tlp_of(stored.get_json()["results"][0]["id"], green) == "green"
    marked = iocs.post("/api/v1/iocs/batch", json={"iocs": [{"value": "four.green-writer.example.com", "tlp": "amber"}]}, headers=green)
    assert tlp_of(marked.get_json()["results"][0]["id"], amber) == "amber"  # named: kept, as before

    by_amber = api.post("/api/v1/enrichment/enrich", json={"value": "new.amber-writer.example.com"}, headers=amber)
    assert by_amber.status_code == 202 and tlp_of(by_amber.get_json()["ioc_id"], amber) == "amber"


def test_a_threat_made_by_a_writer_cleared_below_the_default_tlp_is_one_they_can_read(function_client, backend_env, db):
    """As for IoCs: a green analyst's new threat naming no TLP was stored amber, its id answered, and reading it back
    was a 404 (above their clearance); a STIX import's new threats the same. It now takes the lower of the default and
    the writer's clearance; an amber writer's still gets amber, and a TLP the item names is kept."""
    url = backend_env["DATABASE_URL"]
    auth = function_client("auth")
    green = _bearer(auth, "greenwriter", create_user(url, "greenwriter", "analyst", clearance="green"))
    amber = _bearer(auth, "amberwriter", create_user(url, "amberwriter", "analyst"))
    threats = function_client("threats")

    def made(body, headers):
        response = threats.post("/api/v1/threats/batch", json={"threats": [body]}, headers=headers)
        assert response.status_code == 200, response.get_json()
        return response.get_json()["results"][0]["id"]

    def tlp_of(threat_id, headers):
        found = threats.get(f"/api/v1/threats/{threat_id}", headers=headers)
        assert found.status_code == 200, found.get_json()
        return found.get_json()["tlp"]

    assert tlp_of(made({"kind": "malware", "name": "Green Writer Family"}, green), green) == "green"
    assert tlp_of(made({"kind": "malware", "name": "Green Writer Marked", "tlp": "amber"}, green), amber) == "amber"
    assert tlp_of(made({"kind": "malware", "name": "Amber Writer Family"}, amber), amber) == "amber"
    bundle = {
        "type": "bundle",
        "id": "bundle--6f1e2b8a-0c55-4d0e-9d8e-0f3a1c2b4d5e",
        "objects": [
            {
                "type": "malware", "id": "malware--0a9b8c7d-6e5f-4a3b-9c2d-1e0f9a8b7c6d", "name": "Green Import Family",
                "is_family": True, "spec_version": "2.1", "created": "2026-01-01T00:00:00Z", "modified": "2026-01-01T00:00:00Z",
            }
        ],
    }  # fmt: skip
    imported = function_client("iocs").post(
        "/api/v1/iocs/import", json={"format": "stix", "content": json.dumps(bundle)}, headers=green
    )
    assert imported.status_code == 200, imported.get_json()
    assert db.one("SELECT tlp FROM threats WHERE name = 'Green Import Family'")[0] == "green"


def _dispatched(backend_env, request_json):
    """enrich-dispatch run on a request (what the push of ioc-enrichment-requested does): the run it leaves."""
    from threatflow.enrichment import handlers, runs
    from threatflow.enrichment.tasks import EnrichRequest
    from threatflow.runtime import Runtime

    runtime = Runtime.from_env()
    try:
        ctx = handlers.context(runtime)
        request = EnrichRequest.from_json(request_json)
        handlers.dispatch_request(ctx, request)
        return runs.get_run(runtime.documents, request.run_id)
    finally:
        runtime.engine.dispose()


@pytest.mark.parametrize(
    ("stored", "enriched"),
    [
        ({"value": "185.220.112.0/24"}, "185.220.112.20"),
        ({"value": "2a0b:f4c0:2::/48"}, "2a0b:f4c0:2::7"),
        ({"value": "2002:b9dc:7011::1", "type": "ipv6"}, "185.220.112.17"),
        ({"value": "2001:0:4136:e378:8000:63bf:4623:8fde", "type": "ipv6"}, "185.220.112.33"),
    ],
    ids=["ipv4-cidr", "ipv6-cidr", "6to4", "teredo"],
)
def test_a_host_covered_by_a_red_record_is_enriched_without_the_sources_below_red(function_client, backend_env, stored, enriched):
    """An enrichment run of a host inside a red range (or whose 6to4 or Teredo spelling is stored red) went at the
    host's own TLP to every source. The analyst enriches their own host, so it is no 404, but no source below red is
    asked, and the run's skip reasons name neither the TLP nor the record (its readers are those of the host)."""
    from threatflow.adapters.firestore import FirestoreDocuments

    url = backend_env["DATABASE_URL"]
    auth = function_client("auth")
    tag = enriched.replace(":", "").replace(".", "")[-6:]
    red = _bearer(auth, f"redc{tag}", create_user(url, f"redc{tag}", "analyst", clearance="red"))
    amber = _bearer(auth, f"amberc{tag}", create_user(url, f"amberc{tag}", "analyst"))
    _ensure_topics(backend_env, "ioc-enrichment-requested", "enrichment-tasks", "enrichment-completed")
    written = function_client("iocs").post("/api/v1/iocs/batch", json={"iocs": [{**stored, "tlp": "red"}]}, headers=red)
    assert written.get_json()["results"][0]["value"] == stored["value"], written.get_json()
    api = function_client("enrichment")
    started = api.post("/api/v1/enrichment/enrich", json={"value": enriched}, headers=amber)
    assert started.status_code == 202, started.get_json()
    documents = FirestoreDocuments(project=backend_env["GOOGLE_CLOUD_PROJECT"])
    run = _dispatched(backend_env, documents.get("enrichment_runs", started.get_json()["run_id"])["request"])
    assert run["expected"] == [], run  # no source asked: every one of them has max_tlp amber
    assert run["skipped"] and not any("red" in why or stored["value"] in why for why in run["skipped"].values()), run
    batch = api.post("/api/v1/enrichment/batch", json={"iocs": [enriched], "force": True}, headers=amber).get_json()
    (item,) = batch["runs"]
    assert item.get("status") == "running", batch
    assert _dispatched(backend_env, documents.get("enrichment_runs", item["run_id"])["request"])["expected"] == []


def test_auto_enrichment_of_a_host_inside_a_red_range_asks_no_source_below_red(function_client, backend_env):
    """The flow bridge's and the IoC API's new hosts are auto-enriched at their own TLP: one inside a red range went
    to every auto-enriching source."""
    from threatflow.adapters.postgres import create_engine, unit_of_work
    from threatflow.enrichment import handlers, runs
    from threatflow.intel import enrichment as intel_enrichment
    from threatflow.platform.config import Settings
    from threatflow.runtime import Runtime

    url = backend_env["DATABASE_URL"]
    auth = function_client("auth")
    red = _bearer(auth, "redcauto", create_user(url, "redcauto", "analyst", clearance="red"))
    amber = _bearer(auth, "ambercauto", create_user(url, "ambercauto", "analyst"))
    _ensure_topics(backend_env, "ioc-enrichment-requested", "enrichment-tasks", "enrichment-completed")
    iocs = function_client("iocs")
    iocs.post("/api/v1/iocs/batch", json={"iocs": [{"value": "185.220.113.0/24", "tlp": "red"}]}, headers=red)
    host = iocs.post("/api/v1/iocs/batch", json={"iocs": [{"value": "185.220.113.9"}]}, headers=amber).get_json()["results"][0]
    outside = iocs.post("/api/v1/iocs/batch", json={"iocs": [{"value": "185.220.114.9"}]}, headers=amber).get_json()["results"][0]
    engine = create_engine(Settings.from_env({"DATABASE_URL": url}))
    try:
        with unit_of_work(engine) as conn:
            requests = intel_enrichment.ingest_requests(conn, [host["id"], outside["id"]], message_id="contain-1")
    finally:
        engine.dispose()
    runtime = Runtime.from_env()
    try:
        ctx = handlers.context(runtime)
        for request in requests:
            handlers.dispatch_request(ctx, request)
        by_ioc = {r.ioc_id: runs.get_run(runtime.documents, r.run_id) for r in requests}
    finally:
        runtime.engine.dispose()
    assert by_ioc[outside["id"]] is not None and by_ioc[outside["id"]]["expected"], by_ioc  # auto-enriched as before
    assert by_ioc[host["id"]] is None, by_ioc  # nothing to auto-enrich: no run is recorded
