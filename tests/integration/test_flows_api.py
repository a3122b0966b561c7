"""The flows function over HTTP on the real backends: ingest (scored, stored, bridged to IoCs with an
enrichment request on the Pub/Sub emulator), search/timeline/host views, roll-ups, and the flow-ingest worker."""

import base64
import contextlib
import gzip
import json
import sys
import uuid
from collections import Counter
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from flows_support import event_keys, json_flows, publish, trained_model
from helpers import create_user

pytestmark = pytest.mark.integration
PROJECT = "threatflow-test"
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "perf"))


@pytest.fixture
def flows_api(function_client, backend_env):
    from google.cloud import pubsub_v1

    from threatflow.adapters.storage import GcsBlobs

    model = trained_model()
    publish(GcsBlobs(PROJECT), model)
    # The enrichment topic belongs to the enrichment capability; here it is made with a pull subscription to read.
    publisher = pubsub_v1.PublisherClient()
    subscriber = pubsub_v1.SubscriberClient()
    for name in ("ioc-enrichment-requested", "flow-ingest"):
        with contextlib.suppress(Exception):  # already made by an earlier test in this run
            publisher.create_topic(name=publisher.topic_path(PROJECT, name))
    topic = publisher.topic_path(PROJECT, "ioc-enrichment-requested")
    subscription = subscriber.subscription_path(PROJECT, f"flows-test-{uuid.uuid4().hex[:8]}")
    subscriber.create_subscription(name=subscription, topic=topic)

    tokens = {}
    for role in ("analyst", "reader"):
        password = create_user(backend_env["DATABASE_URL"], f"{role}1", role)
        tokens[role] = (
            function_client("auth")
            .post("/api/v1/auth/token", json={"username": f"{role}1", "password": password})
            .get_json()["access_token"]
        )
    client = function_client("flows")

    class Api:
        analyst = {"Authorization": f"Bearer {tokens['analyst']}"}
        reader = {"Authorization": f"Bearer {tokens['reader']}"}
        version = model.version

        def post(self, path, body, headers=None):
            return client.post(path, json=body, headers=headers or self.analyst)

        def post_raw(self, path, text):
            return client.post(path, data=text, headers={**self.analyst, "Content-Type": "application/json"})

        def get(self, path, headers=None):
            return client.get(path, headers=headers or self.reader)

        def enrichment_requests(self, expected):
            found = []
            for _ in range(20):
                response = subscriber.pull(subscription=subscription, max_messages=100, timeout=5)
                if response.received_messages:
                    subscriber.acknowledge(subscription=subscription, ack_ids=[m.ack_id for m in response.received_messages])
                found += [json.loads(m.message.data) for m in response.received_messages]
                if len(found) >= expected:
                    break
            return found

    yield Api()
    subscriber.delete_subscription(subscription=subscription)


def _engine(url):
    from threatflow.adapters.postgres import create_engine
    from threatflow.platform.config import Settings

    return create_engine(Settings.from_env({"DATABASE_URL": url}))


def test_batch_is_scored_stored_bridged_and_idempotent(flows_api, backend_env):
    flows = json_flows(300)
    response = flows_api.post("/api/v1/flows/batch", {"flows": flows})
    assert response.status_code == 200, response.get_data(as_text=True)
    body = response.get_json()
    assert body["received"] == 300 and body["stored"] == 300 and body["duplicates"] == 0
    assert body["model_version"] == flows_api.version

    engine = _engine(backend_env["DATABASE_URL"])
    with engine.connect() as conn:
        rows = conn.exec_driver_sql(
            "SELECT count(*), count(*) FILTER (WHERE label IS NOT NULL AND attack_cat IS NOT NULL),"
            " count(DISTINCT model_version), min(event_time) = min(stime) FROM flow_events"
        ).one()
        assert rows == (300, 300, 1, True)  # ground truth kept, one model version, time from stime
        expected_sources = {
            r[0] for r in conn.exec_driver_sql("SELECT DISTINCT host(srcip) FROM flow_events WHERE predicted_attack AND probability >= 0.9")
        }
        tagged = {r[0]: r[1] for r in conn.exec_driver_sql("SELECT value, tags FROM iocs WHERE 'flow-detected' = ANY(tags)")}
        sightings = conn.exec_driver_sql("SELECT count(*), count(DISTINCT ioc_id) FROM ioc_sightings WHERE source = 'flows'").one()
    engine.dispose()
    assert expected_sources, "the model should flag some of the generated attack flows"
    assert set(tagged) == expected_sources  # one IoC per attack source, deduplicated
    assert all(any(t.startswith("attack-category:") for t in tags) for tags in tagged.values())
    assert sightings == (len(expected_sources), len(expected_sources))
    assert body["bridge"]["iocs_created"] == len(expected_sources)

    # Queued as every new IoC is (enrichment's auto-enrichment message, which enrich-dispatch expands).
    requests = flows_api.enrichment_requests(1)
    assert [r["origin"] for r in requests] == ["ingest"]
    ids = [i for r in requests for i in r["ioc_ids"]]
    engine = _engine(backend_env["DATABASE_URL"])
    with engine.connect() as conn:
        queued = {r[0] for r in conn.exec_driver_sql("SELECT value FROM iocs WHERE id = ANY(%s)", (ids,))}
    engine.dispose()
    assert len(ids) == len(set(ids)) and queued == expected_sources  # testbed ranges are public addresses

    # The same batch again: nothing stored twice, nothing bridged twice.
    again = flows_api.post("/api/v1/flows/batch", {"flows": flows}).get_json()
    assert again["stored"] == 0 and again["duplicates"] == 300 and again["bridge"]["sources"] == 0


def test_bad_flows_are_listed_by_index_and_field(flows_api):
    flows = json_flows(5)
    del flows[1]["sbytes"]
    flows[2]["dur"] = "fast"
    flows[3]["colour"] = "red"
    flows[4]["srcip"] = "999.0.0.1"
    response = flows_api.post("/api/v1/flows/batch", {"flows": flows})
    assert response.status_code == 400
    errors = response.get_json()["error"]["details"]["errors"]
    assert {(e["index"], e["field"]) for e in errors} == {(1, "sbytes"), (2, "dur"), (3, "colour"), (4, "srcip")}
    too_many = flows_api.post("/api/v1/flows/batch", {"flows": [flows[0]] * 10_001})
    assert too_many.status_code == 400 and "flows" in too_many.get_json()["error"]["message"]
    assert flows_api.post("/api/v1/flows/batch", {"flows": flows[:1]}, headers=flows_api.reader).status_code == 403


def test_skip_invalid_stores_the_valid_flows_and_lists_the_rest(flows_api, backend_env):
    flows = json_flows(6, seed=5)
    flows[1]["dur"] = "fast"
    flows[4]["srcip"] = "fe80::1%eth0"  # inet has no zones: a listed problem, not a failed batch
    body = {"flows": flows, "positions": [10, 11, 12, 13, 14, 15], "source": "file:skiptest", "skip_invalid": True}
    response = flows_api.post("/api/v1/flows/batch", body)
    assert response.status_code == 200, response.get_data(as_text=True)
    result = response.get_json()
    assert (result["received"], result["stored"], result["invalid"], result["problems_total"]) == (4, 4, 2, 2)
    assert {(p["index"], p["field"]) for p in result["problems"]} == {(1, "dur"), (4, "srcip")}
    engine = _engine(backend_env["DATABASE_URL"])
    with engine.connect() as conn:
        stored = {str(r[0]) for r in conn.exec_driver_sql("SELECT event_key FROM flow_events WHERE source = 'file:skiptest'")}
    engine.dispose()
    # each stored event keeps its own row number: skipping a flow does not shift the others' keys
    kept = [flows[i] for i in (0, 2, 3, 5)]
    assert stored == set(event_keys(kept, source="file:skiptest", positions=[10, 12, 13, 15]))
    again = flows_api.post("/api/v1/flows/batch", body).get_json()
    assert (again["stored"], again["duplicates"], again["invalid"]) == (0, 4, 2)
    none_valid = flows_api.post("/api/v1/flows/batch", {"flows": [flows[1]], "skip_invalid": True}).get_json()
    assert (none_valid["stored"], none_valid["invalid"], none_valid["problems"][0]["field"]) == (0, 1, "dur")
    without = flows_api.post("/api/v1/flows/batch", {"flows": flows})
    assert without.status_code == 400  # the default stays all-or-nothing


def test_batch_items_holding_nul_huge_integers_or_deep_nesting_are_400s(flows_api):
    """The batch skips the web layer's generic JSON walk (its cost per flow was a fifth of the server's);
    what that walk refused is still refused, naming the field."""
    flows = json_flows(2, seed=9)
    for change, field in (
        ({"proto": "tcp\x00"}, "proto"),
        ({"sbytes": 10**30}, "sbytes"),
        ({"sbytes": 1e30}, "sbytes"),  # finite, but no bigint: listed, not a failed INSERT
        ({"rate": 1e39}, "rate"),  # a pass-through, but stored as real: was the whole batch's failed INSERT (500)
        ({"rate": "-1e39"}, "rate"),
        ({"dur": 1e-50}, "dur"),  # real rounds it to 0, which PostgreSQL refuses: was a 500 too
        ({"dur": [[[[1]]]]}, "dur"),
        ({"colour\x00": 1}, "flows[1]"),
    ):
        bad = {**flows[1], **change}
        for body in ({"flows": [flows[0], bad]}, {"flows": [flows[0], bad], "skip_invalid": True}):
            response = flows_api.post("/api/v1/flows/batch", body)
            if response.status_code == 200:  # skipped and listed, never stored
                result = response.get_json()
                assert result["invalid"] == 1 and result["stored"] + result["duplicates"] == 1
                assert field in result["problems"][0]["field"]
            else:
                assert response.status_code == 400, response.get_data(as_text=True)
                assert field in response.get_json()["error"]["message"]
    deep = '{"flows": [{"dur": ' + "[" * 5000 + "]" * 5000 + "}]}"
    response = flows_api.post_raw("/api/v1/flows/batch", deep)
    assert response.status_code == 400 and "deep" in response.get_json()["error"]["message"]


def test_search_timeline_host_and_rollups_over_http(flows_api, backend_env, function_client):

    flows = json_flows(400, seed=5)
    assert flows_api.post("/api/v1/flows/batch", {"flows": flows}).status_code == 200
    attacker = next(f["srcip"] for f in flows if f["label"] == 1)
    page = flows_api.get(f"/api/v1/events/search?srcip={attacker}&limit=5").get_json()
    assert page["count"] == 5 and all(e["srcip"] == attacker for e in page["events"]) and page["next_cursor"]
    second = flows_api.get(f"/api/v1/events/search?srcip={attacker}&limit=5&cursor={page['next_cursor']}").get_json()
    assert not {e["event_key"] for e in page["events"]} & {e["event_key"] for e in second["events"]}
    assert flows_api.get("/api/v1/events/search?srcip=1.2.3&limit=5").status_code == 400
    assert flows_api.get(f"/api/v1/events/search?srcip={attacker}&limit=5000").status_code == 400

    midnight = datetime.now(UTC).replace(hour=0, minute=0, second=0, microsecond=0)
    start = (midnight - timedelta(days=30)).isoformat().replace("+00:00", "Z")  # flowgen's 30 days end at midnight
    timeline = flows_api.get(f"/api/v1/events/timeline?srcip={attacker}&from={start}").get_json()
    assert sum(h["events"] for h in timeline["hours"]) == sum(1 for f in flows if f["srcip"] == attacker)

    host = flows_api.get(f"/api/v1/events/hosts/{attacker}").get_json()
    assert host["as_source"]["events"] == sum(1 for f in flows if f["srcip"] == attacker)
    assert host["peers"] and host["destination_ports"] and host["first_seen"] <= host["last_seen"]
    engine = _engine(backend_env["DATABASE_URL"])
    with engine.connect() as conn:
        bridged = conn.exec_driver_sql("SELECT count(*) FROM iocs WHERE value = %s", (attacker,)).scalar()
    engine.dispose()
    # The host view links the IoC exactly when one exists for the address (here made by the bridge, amber).
    assert (host["ioc"] is not None) == (bridged == 1), (bridged, host["ioc"])
    if host["ioc"] is not None:
        assert host["ioc"]["value"] == attacker and host["ioc"]["tlp"] == "amber", host["ioc"]
    assert flows_api.get("/api/v1/events/hosts/not-an-ip").status_code == 400

    # Roll-ups: visible after the refresh-flow-views job runs (through the maintenance function).
    push = {
        "message": {
            "data": base64.b64encode(json.dumps({"schema_version": 1}).encode()).decode(),
            "attributes": {"job": "refresh-flow-views", "run_id": uuid.uuid4().hex},
            "messageId": uuid.uuid4().hex,
            "publishTime": datetime.now(UTC).isoformat().replace("+00:00", "Z"),
        },
        "subscription": f"projects/{PROJECT}/subscriptions/maintenance-push",
    }
    assert function_client("maintenance").post("/", json=push).status_code == 200
    flows_client = function_client("flows")
    top = flows_client.get(f"/api/v1/events/top/attack-categories?from={start}", headers=flows_api.reader).get_json()
    assert top["categories"] and top["refreshed_at"]
    # The figures are whole hours: the answer's window is the hours they cover, not the instant asked for.
    asked = flows_client.get(
        "/api/v1/events/top/attack-categories",
        query_string={"from": "2026-01-01T10:30:00Z", "to": "2026-01-01T12:15:00Z"},
        headers=flows_api.reader,
    ).get_json()["window"]
    assert asked == {"from": "2026-01-01T10:00:00+00:00", "to": "2026-01-01T13:00:00+00:00", "resolution_seconds": 3600}
    by_proto = flows_client.get(f"/api/v1/events/stats/bytes-by-proto?from={start}&limit=200", headers=flows_api.reader).get_json()
    assert sum(p["events"] for p in by_proto["protocols"]) == 400
    assert sum(p["sbytes"] for p in by_proto["protocols"]) == sum(int(f["sbytes"]) for f in flows)


def test_a_search_cursor_is_bound_to_its_query(flows_api):
    """A cursor is "older than this event" of one query; given to another (another address, filter or window) it
    paged that query from an arbitrary point, silently skipping its newer events. Now a 400 names the cursor; the
    page size may change between pages."""
    flows = json_flows(200, seed=11)
    assert flows_api.post("/api/v1/flows/batch", {"flows": flows}).status_code == 200
    by_count = Counter(f["srcip"] for f in flows).most_common()
    attacker, other = by_count[0][0], by_count[1][0]
    since = (datetime.now(UTC) - timedelta(days=20)).strftime("%Y-%m-%dT%H:%M:%SZ")  # a window of its own, within the bounds
    base = f"/api/v1/events/search?srcip={attacker}&limit=3"
    cursor = flows_api.get(base).get_json()["next_cursor"]
    assert cursor
    assert flows_api.get(f"/api/v1/events/search?srcip={attacker}&limit=7&cursor={cursor}").status_code == 200
    for changed in (
        f"srcip={other}",
        f"srcip={attacker}&proto=udp",
        f"srcip={attacker}&predicted=attack",
        f"srcip={attacker}&from={since}",
    ):
        response = flows_api.get(f"/api/v1/events/search?{changed}&limit=3&cursor={cursor}")
        assert response.status_code == 400, (changed, response.get_data(as_text=True))
        assert response.get_json()["error"]["details"]["field"] == "cursor"



def test_a_page_whose_clock_is_before_its_cursor_still_continues_at_the_cursor(flows_api, backend_env, function_client):
    """With the search cache on, a window ending now ends at the period boundary before now, and each search (each
    page: the cursor is part of it) has its own phase, so page 2's "now" can fall before page 1's last event. The
    page's window then ended there, not at its cursor: the events between were skipped (4 events a second over the
    last 100 s, paged at 30 sizes: 18 of the 30 listings lost events, up to 82 of 388). A cursor continues below its
    own event whatever the clock of its page."""
    from threatflow.adapters.postgres import unit_of_work
    from threatflow.flows import search

    srcip, now = "203.0.113.99", datetime.now(UTC)
    flows = json_flows(240, seed=19)
    for k, flow in enumerate(flows):  # one every 0.25 s over the last minute
        at = (now - timedelta(seconds=0.25 * (k + 1))).timestamp()
        flow.update(srcip=srcip, stime=at, ltime=at)
    assert flows_api.post("/api/v1/flows/batch", {"flows": flows}).get_json()["stored"] == 240
    listed = flows_api.get(f"/api/v1/events/search?srcip={srcip}&limit=1000").get_json()["events"]
    assert len(listed) == 240
    first = flows_api.get(f"/api/v1/events/search?srcip={srcip}&limit=5").get_json()
    assert [e["event_key"] for e in first["events"]] == [e["event_key"] for e in listed[:5]]
    # Page 2 as the cache parses it: its clock rounded down to a boundary 10 s before page 1's last event.
    clock = datetime.fromisoformat(first["events"][-1]["event_time"]) - timedelta(seconds=10)
    query = search.parse_search({"srcip": srcip, "limit": "5", "cursor": first["next_cursor"]}, now=clock)
    engine = _engine(backend_env["DATABASE_URL"])
    try:
        with unit_of_work(engine) as conn:
            second = json.loads(search.search(query, conn=conn))
    finally:
        engine.dispose()
    assert [e["event_key"] for e in second["events"]] == [e["event_key"] for e in listed[5:10]], "events below the cursor skipped"

    cached = function_client("flows", FLOWS_SEARCH_CACHE="on")  # the same through the route, with the cache on
    for limit in range(7, 17):
        keys, cursor, end = [], None, None
        while True:
            page = cached.get(
                f"/api/v1/events/search?srcip={srcip}&limit={limit}" + (f"&cursor={cursor}" if cursor else ""), headers=flows_api.reader
            ).get_json()
            end = end or datetime.fromisoformat(page["window"]["to"])  # the first page's: a cached page may end up to 30 s back
            keys += [e["event_key"] for e in page["events"]]
            if not (cursor := page["next_cursor"]):
                break
        expected = [e["event_key"] for e in listed if datetime.fromisoformat(e["event_time"]) < end]
        assert keys == expected, (limit, len(expected), len(keys))

def test_flow_ingest_worker_loads_an_upload_once(flows_api, backend_env, function_client):
    import flowgen

    from threatflow.adapters.firestore import FirestoreDocuments
    from threatflow.adapters.storage import GcsBlobs

    raw = "\n".join(",".join(flowgen.raw_line(f)) for f in flowgen.generate(120, seed=3)) + "\n"
    raw += "not,a,flow\n"  # one bad row: counted and skipped, the rest is stored
    # Rows of the wrong width: the extra cell was dropped and the short row stored without its label; both counted and skipped now.
    longer, shorter = (",".join(flowgen.raw_line(f)) for f in flowgen.generate(2, seed=4))
    raw += f"{longer},9\n{shorter.rsplit(',', 1)[0]}\n"
    GcsBlobs(PROJECT).put("threatflow-uploads", "flows/test.csv.gz", gzip.compress(raw.encode()))
    job = flows_api.post("/api/v1/flows/uploads", {"object": "flows/test.csv.gz"})
    assert job.status_code == 202, job.get_data(as_text=True)
    job_id = job.get_json()["job_id"]

    def push():
        return {
            "message": {
                "data": base64.b64encode(json.dumps({"schema_version": 1, "job_id": job_id}).encode()).decode(),
                "attributes": {"job_id": job_id},
                "messageId": uuid.uuid4().hex,
                "publishTime": datetime.now(UTC).isoformat().replace("+00:00", "Z"),
            },
            "subscription": f"projects/{PROJECT}/subscriptions/flow-ingest-push",
        }

    worker = function_client("flow-ingest")
    assert worker.post("/", json=push()).status_code == 200
    done = FirestoreDocuments(PROJECT).get("flow_ingest_jobs", job_id)
    assert done["state"] == "succeeded" and done["stored"] == 120 and done["invalid"] == 3 and done["rows_done"] == 123
    assert done["first_problem"]["line"] == 121 and "cells" in done["first_problem"]["reason"], done["first_problem"]
    # A redelivery of the finished job, and a forced re-run of the same file: nothing stored twice.
    assert worker.post("/", json=push()).status_code == 200
    FirestoreDocuments(PROJECT).set("flow_ingest_jobs", job_id, {"state": "queued", "rows_done": 0, "stored": 0}, merge=True)
    assert worker.post("/", json=push()).status_code == 200
    rerun = FirestoreDocuments(PROJECT).get("flow_ingest_jobs", job_id)
    assert rerun["state"] == "succeeded" and rerun["stored"] == 0 and rerun["duplicates"] == 120
    engine = _engine(backend_env["DATABASE_URL"])
    with engine.connect() as conn:
        assert conn.exec_driver_sql("SELECT count(*) FROM flow_events").scalar_one() == 120
    engine.dispose()
    # the job is its uploader's (the analyst): a reader who did not queue it is told it does not exist
    assert flows_api.get(f"/api/v1/flows/uploads/{job_id}", headers=flows_api.analyst).get_json()["state"] == "succeeded"
    assert flows_api.get(f"/api/v1/flows/uploads/{job_id}").status_code == 404
    assert flows_api.post("/api/v1/flows/uploads", {"object": "flows/missing.csv"}).status_code == 404


def test_host_view_shows_the_linked_ioc_only_within_the_callers_tlp_clearance(flows_api, backend_env, function_client):
    from threatflow.adapters.postgres import unit_of_work
    from threatflow.iocs import service

    flows = json_flows(60, seed=9)
    assert flows_api.post("/api/v1/flows/batch", {"flows": flows}).status_code == 200
    host_ip = flows[0]["srcip"]
    engine = _engine(backend_env["DATABASE_URL"])
    with unit_of_work(engine) as conn:
        policies = service.repository.policies(conn)
        item = service.IocIn(value=host_ip, tlp="red", source="analyst-notes", verdict=service.Verdict.MALICIOUS)
        outcome = service.upsert_batch(
            [item], conn=conn, now=datetime.now(UTC), warninglists=None, policies=policies, clearance="red", new_tlp="amber"
        )
    engine.dispose()
    assert outcome["results"][0]["status"] in ("created", "updated")

    def token(name, clearance):
        password = create_user(backend_env["DATABASE_URL"], name, "reader", clearance=clearance)
        body = function_client("auth").post("/api/v1/auth/token", json={"username": name, "password": password}).get_json()
        return {"Authorization": f"Bearer {body['access_token']}"}

    green = flows_api.get(f"/api/v1/events/hosts/{host_ip}", headers=token("green1", "green"))
    assert green.status_code == 200 and green.get_json()["ioc"] is None  # above the clearance: it does not exist
    assert green.get_json()["as_source"]["events"] >= 1  # the events themselves stay visible
    red = flows_api.get(f"/api/v1/events/hosts/{host_ip}", headers=token("red1", "red")).get_json()
    assert red["ioc"]["value"] == host_ip and red["ioc"]["tlp"] == "red" and red["ioc"]["verdict"] == "malicious"


def test_host_view_finds_an_ioc_stored_under_the_ipv4_mapped_spelling_within_the_callers_clearance(
    flows_api, backend_env, function_client
):
    """Flows store ::ffff:a.b.c.d as the IPv4 host, and the host view looked its IoC up as ipv4 only: an IoC stored
    as `::ffff:198.51.100.19` typed ipv6 showed `"ioc": null` for both spellings of the address. A red one stays
    hidden from an amber reader, as the IPv4 one does."""
    from threatflow.adapters.postgres import unit_of_work
    from threatflow.iocs import service

    at = int((datetime.now(UTC) - timedelta(hours=1)).timestamp())
    flows = json_flows(3, seed=76)
    for flow, srcip in zip(flows, ("198.51.100.19", "::ffff:198.51.100.20", "198.51.100.21"), strict=True):
        flow.update(srcip=srcip, stime=at, ltime=at)
    assert flows_api.post("/api/v1/flows/batch", {"flows": flows}).status_code == 200
    engine = _engine(backend_env["DATABASE_URL"])
    with unit_of_work(engine) as conn:
        items = [
            service.IocIn(value="::ffff:198.51.100.19", type="ipv6", tlp="amber", source="analyst-notes"),
            service.IocIn(value="::ffff:198.51.100.20", type="ipv6", tlp="red", source="analyst-notes"),
            # both spellings stored, at different TLPs: each reader sees the first they may read, the IPv4 one first
            service.IocIn(value="198.51.100.21", type="ipv4", tlp="red", source="analyst-notes"),
            service.IocIn(value="::ffff:198.51.100.21", type="ipv6", tlp="amber", source="analyst-notes"),
        ]
        policies = service.repository.policies(conn)
        outcome = service.upsert_batch(
            items, conn=conn, now=datetime.now(UTC), warninglists=None, policies=policies, clearance="red", new_tlp="amber"
        )
    engine.dispose()
    assert [r["status"] for r in outcome["results"]] == ["created"] * 4, outcome

    def token(name, clearance):
        password = create_user(backend_env["DATABASE_URL"], name, "reader", clearance=clearance)
        body = function_client("auth").post("/api/v1/auth/token", json={"username": name, "password": password}).get_json()
        return {"Authorization": f"Bearer {body['access_token']}"}

    amber, red = token("mapped-amber", "amber"), token("mapped-red", "red")
    for path in ("198.51.100.21", "::ffff:198.51.100.21"):
        seen = {
            name: flows_api.get(f"/api/v1/events/hosts/{path}", headers=headers).get_json()["ioc"]
            for name, headers in (("amber", amber), ("red", red))
        }
        assert (seen["amber"]["value"], seen["amber"]["tlp"]) == ("::ffff:198.51.100.21", "amber"), seen
        assert (seen["red"]["value"], seen["red"]["tlp"]) == ("198.51.100.21", "red"), seen
    for path in ("198.51.100.19", "::ffff:198.51.100.19", "::FFFF:C633:6413"):
        host = flows_api.get(f"/api/v1/events/hosts/{path}", headers=amber)
        assert host.status_code == 200, (path, host.get_data(as_text=True)[:300])
        body = host.get_json()
        assert body["ip"] == "198.51.100.19" and body["as_source"]["events"] == 1, (path, body)
        assert body["ioc"] is not None and (body["ioc"]["type"], body["ioc"]["value"]) == ("ipv6", "::ffff:198.51.100.19"), body
    for path in ("198.51.100.20", "::ffff:198.51.100.20"):
        hidden = flows_api.get(f"/api/v1/events/hosts/{path}", headers=amber).get_json()
        assert hidden["ioc"] is None and hidden["as_source"]["events"] == 1, (path, hidden)  # above the clearance
        shown = flows_api.get(f"/api/v1/events/hosts/{path}", headers=red).get_json()
        assert shown["ioc"] is not None and (shown["ioc"]["value"], shown["ioc"]["tlp"]) == ("::ffff:198.51.100.20", "red"), shown


def test_the_bridge_keeps_the_tlp_of_an_ioc_it_sights_again(flows_api, backend_env, function_client):
    """An attack source an analyst had already marked TLP:RED stays red when new flows from it are bridged:
    the bridge names no TLP, and its upsert used to set the IoC back to amber, so every amber reader saw it.
    The analyst's description and confidence stay too (a re-sighting replaced them with the bridge's)."""
    from threatflow.adapters.postgres import unit_of_work
    from threatflow.iocs import service

    flows = json_flows(300)
    first = flows_api.post("/api/v1/flows/batch", {"flows": flows}).get_json()
    assert first["bridge"]["iocs_created"] >= 1
    engine = _engine(backend_env["DATABASE_URL"])
    with engine.connect() as conn:
        host_ip, created_description, created_confidence = conn.exec_driver_sql(
            "SELECT value, description, confidence FROM iocs WHERE 'flow-detected' = ANY(tags) ORDER BY value LIMIT 1"
        ).one()
    # An IoC the bridge creates carries its description and the model's confidence (probability >= 0.9).
    assert created_description == "source of network flows the flow model predicted as attacks" and created_confidence >= 90
    with unit_of_work(engine) as conn:  # the analyst's classification of that address
        policies = service.repository.policies(conn)
        item = service.IocIn(value=host_ip, tlp="red", source="partner-feed", description="shared under TLP:RED", confidence=35)
        service.upsert_batch(
            [item], conn=conn, now=datetime.now(UTC), warninglists=None, policies=policies, clearance="red", new_tlp="amber"
        )

    again = flows_api.post("/api/v1/flows/batch", {"flows": flows, "source": "sensor-2"}).get_json()  # new events, same sources
    assert again["stored"] == 300 and again["bridge"]["iocs_updated"] >= 1
    with engine.connect() as conn:
        tlp, tags, description, confidence, count = conn.exec_driver_sql(
            "SELECT tlp, tags, description, confidence, detection_count FROM iocs WHERE value = %s", (host_ip,)
        ).one()
    engine.dispose()
    assert "flow-detected" in tags and count >= 3  # the bridge did update it
    assert (tlp, description, confidence) == ("red", "shared under TLP:RED", 35)
    # An upsert naming no confidence keeps the stored one (it was reset to 50).
    with unit_of_work(_engine(backend_env["DATABASE_URL"])) as conn:
        service.upsert_batch(
            [service.IocIn(value=host_ip, source="another-feed")],
            conn=conn,
            now=datetime.now(UTC),
            warninglists=None,
            policies=policies,
            clearance="red",
            new_tlp="amber",
        )
        assert conn.exec_driver_sql("SELECT confidence, tlp FROM iocs WHERE value = %s", (host_ip,)).one() == (35, "red")
    password = create_user(backend_env["DATABASE_URL"], "amber2", "reader", clearance="amber")
    body = function_client("auth").post("/api/v1/auth/token", json={"username": "amber2", "password": password}).get_json()
    host = flows_api.get(f"/api/v1/events/hosts/{host_ip}", headers={"Authorization": f"Bearer {body['access_token']}"})
    assert host.status_code == 200 and host.get_json()["ioc"] is None


def test_a_bridged_ioc_is_first_seen_at_its_first_attack_flow_not_its_last(flows_api, backend_env):
    """A batch's flows from one attack source span a period (flowgen's: 30 days, in no time order). The IoC the bridge
    makes must be first seen at the earliest of them and last seen at the latest, as the host view and the sighting's
    `first_flow_at` say: the upsert was given the last flow's time only, so the walkthrough's 175.45.176.1 was
    "first seen" a month after its first attack flow."""
    flows = json_flows(300)
    flows_api.post("/api/v1/flows/batch", {"flows": flows})
    engine = _engine(backend_env["DATABASE_URL"])
    with engine.connect() as conn:
        srcip, stored_stime = conn.exec_driver_sql(
            "SELECT host(srcip), stime FROM flow_events WHERE predicted_attack AND probability >= 0.9 ORDER BY event_key LIMIT 1"
        ).one()
    stime = int(stored_stime.timestamp())
    flagged = next(f for f in flows if f["srcip"] == srcip and f["stime"] == stime)
    day = 86400
    address = "175.45.179.200"  # flowgen's attack sources end at .10 in each /24: a new source
    copies = [{**flagged, "srcip": address, "stime": stime - k * day, "ltime": flagged["ltime"] - k * day} for k in (3, 0, 7)]
    body = flows_api.post("/api/v1/flows/batch", {"flows": copies, "source": "sensor-first-seen"}).get_json()
    assert body["stored"] == 3 and body["bridge"]["iocs_created"] == 1
    with engine.connect() as conn:
        first_seen, last_seen, context = conn.exec_driver_sql(
            "SELECT i.first_seen, i.last_seen, s.context FROM iocs i JOIN ioc_sightings s ON s.ioc_id = i.id WHERE i.value = %s",
            (address,),
        ).one()
    engine.dispose()
    earliest, latest = (datetime.fromtimestamp(stime - 7 * day, UTC), datetime.fromtimestamp(stime, UTC))
    assert context["flows"] == 3 and context["first_flow_at"] == earliest.isoformat()
    assert (first_seen, last_seen) == (earliest, latest)


def test_the_bridge_recognises_a_stored_ipv6_source_written_as_postgresql_writes_it(flows_api, backend_env):
    """The bridge reads its addresses back from flow_events (host(srcip)); PostgreSQL writes an IPv6 address whose
    first 96 bits are zero with an embedded IPv4 part (::abcd:1234 as ::171.205.18.52), while the IoC is stored as
    the iocs domain normalises it (RFC 5952, ::abcd:1234). The lookup of known addresses must compare the IoC's
    form, or an analyst's description and confidence on that IoC are replaced by the bridge's."""
    from threatflow.adapters.postgres import unit_of_work
    from threatflow.iocs import service

    flows = json_flows(300)
    first = flows_api.post("/api/v1/flows/batch", {"flows": flows}).get_json()
    assert first["bridge"]["iocs_created"] >= 1
    engine = _engine(backend_env["DATABASE_URL"])
    with engine.connect() as conn:
        host_ip = conn.exec_driver_sql("SELECT value FROM iocs WHERE 'flow-detected' = ANY(tags) ORDER BY value LIMIT 1").scalar_one()
        assert conn.exec_driver_sql("SELECT host(CAST('::abcd:1234' AS inet))").scalar_one() == "::171.205.18.52"
    address = "::abcd:1234"
    with unit_of_work(engine) as conn:  # the analyst's classification of that address
        policies = service.repository.policies(conn)
        item = service.IocIn(value=address, source="partner-feed", description="analyst's note", confidence=35)
        result = service.upsert_batch(
            [item], conn=conn, now=datetime.now(UTC), warninglists=None, policies=policies, clearance="red", new_tlp="amber"
        )
        assert result["results"][0]["value"] == address
    moved = [{**f, "srcip": address} if f["srcip"] == host_ip else f for f in flows]
    again = flows_api.post("/api/v1/flows/batch", {"flows": moved, "source": "sensor-2"}).get_json()
    assert again["stored"] == 300 and again["bridge"]["iocs_updated"] >= 1
    with engine.connect() as conn:
        tags, description, confidence = conn.exec_driver_sql(
            "SELECT tags, description, confidence FROM iocs WHERE type = 'ipv6' AND value = %s", (address,)
        ).one()
    engine.dispose()
    assert "flow-detected" in tags  # the bridge did sight it
    assert (description, confidence) == ("analyst's note", 35)


def _stored_events(database_url, srcip, count):
    """`count` events from `srcip` over the last hour, straight into the store (no model needed)."""
    from threatflow.flows import ingest
    from threatflow.flows.repository import STORED_FEATURES, EventRow

    now = datetime.now(UTC)
    rows = [
        EventRow(
            event_time=now - timedelta(minutes=i),
            event_key=str(uuid.uuid4()),
            srcip=srcip,
            sport=40000 + i,
            dstip="149.171.126.6",
            dsport=80,
            proto="tcp",
            service="http",
            state="FIN",
            stime=now - timedelta(minutes=i),
            ltime=now - timedelta(minutes=i),
            features=[1.0] * len(STORED_FEATURES),
            label=1,
            attack_cat="Exploits",
            predicted_attack=True,
            probability=0.97,
            predicted_cat="Exploits",
            model_version="test-v1",
            source="test",
        )
        for i in range(count)
    ]
    engine = _engine(database_url)
    with engine.begin() as conn:
        ingest.store(conn, rows)
    engine.dispose()


@pytest.mark.parametrize(
    ("mode", "flag", "cached"),
    [
        ("on", None, True),  # the environment turns it on: the manifest's `flag` must not override that
        ("off", True, False),  # ... or off, even with the flag document on
        (None, True, True),  # not set: the manifest's default, `flag`, reads the Firestore document
        (None, None, False),  # ... and no document means no cache
    ],
)
def test_search_cache_through_the_gateway_follows_the_environment_then_the_manifest(backend_env, function_client, mode, flag, cached):
    """The gateway loads the flows function as the local stack and the benchmark serve it (with the manifest's env).
    Its FLOWS_SEARCH_CACHE=flag used to replace the caller's FLOWS_SEARCH_CACHE=on, so the benchmark measured no hit."""
    import os
    from dataclasses import replace

    import redis
    from werkzeug.test import Client

    from threatflow.adapters.firestore import FirestoreDocuments
    from threatflow.devstack import gateway
    from threatflow.flows import search
    from threatflow.platform.manifest import REPO_ROOT, load_manifest

    srcip = "175.45.176.9"
    _stored_events(backend_env["DATABASE_URL"], srcip, 12)
    password = create_user(backend_env["DATABASE_URL"], "cachereader", "reader")
    login = function_client("auth").post("/api/v1/auth/token", json={"username": "cachereader", "password": password})
    headers = {"Authorization": f"Bearer {login.get_json()['access_token']}"}
    documents = FirestoreDocuments(PROJECT)
    if flag is None:
        documents.delete("flags", search.FLAG_NAME)
    else:
        documents.set("flags", search.FLAG_NAME, {"enabled": flag})
    os.environ.pop("FLOWS_SEARCH_CACHE", None)
    if mode is not None:
        os.environ["FLOWS_SEARCH_CACHE"] = mode

    manifest = load_manifest()
    assert manifest.functions["flows"].env.get("FLOWS_SEARCH_CACHE") == "flag"  # what this test is about
    only_flows = replace(manifest, functions={"flows": manifest.functions["flows"]})
    sys.modules.pop("main", None)
    client = Client(gateway.Gateway(only_flows, gateway.load_function_apps(only_flows, REPO_ROOT / "functions"), max_body=1 << 20))

    # An explicit window: with one ending now, two requests either side of a cache period boundary are two searches.
    start = (datetime.now(UTC) - timedelta(days=1)).strftime("%Y-%m-%dT%H:%M:%SZ")
    end = (datetime.now(UTC) + timedelta(minutes=1)).strftime("%Y-%m-%dT%H:%M:%SZ")
    path = f"/api/v1/events/search?srcip={srcip}&limit=5&from={start}&to={end}"
    first = client.get(path, headers=headers)
    second = client.get(path, headers=headers)
    assert first.status_code == second.status_code == 200, first.get_data(as_text=True)
    assert first.get_json()["count"] == 5 and first.get_json()["next_cursor"]
    assert second.get_json()["events"] == first.get_json()["events"]
    cached_keys = redis.Redis.from_url(backend_env["REDIS_URL"]).keys("flows:search:*")
    if cached:
        assert (first.headers.get("X-Cache"), second.headers.get("X-Cache")) == ("miss", "hit"), first.headers
        assert second.get_data() == first.get_data()  # a hit is byte for byte the page it stored
        assert len(cached_keys) == 1
    else:
        assert first.headers.get("X-Cache") is None and second.headers.get("X-Cache") is None
        assert cached_keys == []


def test_a_search_from_within_the_cache_period_is_answered_uncached(flows_api, backend_env, function_client):
    """With the cache on, a window ending now ends at the cache period's last boundary, up to 30 s back. A `from`
    after that boundary was a 400 ("from must be before to") that the same search without the cache answered."""
    import os
    import time
    from urllib.parse import quote

    import redis

    from threatflow.flows import search

    srcip = "175.45.176.12"
    stored_at = datetime.now(UTC)
    _stored_events(backend_env["DATABASE_URL"], srcip, 3)  # over the hour before stored_at
    os.environ["FLOWS_SEARCH_CACHE"] = "on"
    client = function_client("flows")
    while True:  # `from` = now, at least 5 s before the query's next cache boundary, so the rounded clock is before it
        start = datetime.now(UTC)
        phase = search.cache_phase({"srcip": srcip, "from": start.isoformat()})
        if (start.timestamp() - phase) % search.CACHE_SECONDS < search.CACHE_SECONDS - 5:
            break
        time.sleep(5)
    recent = quote(start.isoformat())
    answered = client.get(f"/api/v1/events/search?srcip={srcip}&from={recent}", headers=flows_api.reader)
    assert answered.status_code == 200, answered.get_json()
    assert answered.get_json()["count"] == 0 and answered.headers.get("X-Cache") is None  # searched, not cached
    assert redis.Redis.from_url(backend_env["REDIS_URL"]).keys("flows:search:*") == []
    older = quote((stored_at - timedelta(hours=2)).isoformat())
    cached = client.get(f"/api/v1/events/search?srcip={srcip}&from={older}", headers=flows_api.reader)
    assert cached.status_code == 200 and cached.headers.get("X-Cache") == "miss"  # the cache still serves the rest
    wrong = client.get(f"/api/v1/events/search?srcip={srcip}&from={older}&limit=0", headers=flows_api.reader)
    assert wrong.status_code == 400 and wrong.get_json()["error"]["details"]["field"] == "limit"  # real errors stay errors


# The official raw files leave these cells blank on flows with no HTTP or FTP exchange (ct_ftp_cmd as one space).
_RAW_BLANKS = {"ct_flw_http_mthd": "", "is_ftp_login": "", "ct_ftp_cmd": " "}


def _raw_file_with_blanks(count, *, seed):
    """A raw 49-column CSV of generated flows, the three cells blanked on every other row as the official files do."""
    import csv
    import io

    import flowgen

    from threatflow.flows.features import RAW_COLUMNS

    out = io.StringIO()
    writer = csv.writer(out)
    for row, flow in enumerate(flowgen.generate(count, seed=seed)):
        cells = flowgen.raw_line(flow)
        if row % 2 == 0:
            for name, blank in _RAW_BLANKS.items():
                cells[RAW_COLUMNS.index(name)] = blank
        writer.writerow(cells)
    return out.getvalue()


def _blank_positions():
    from threatflow.flows.repository import STORED_FEATURES

    return [STORED_FEATURES.index(name) + 1 for name in _RAW_BLANKS]  # SQL arrays count from 1


def _null_counts(database_url):
    """(events, events whose three raw-blank features are all NULL, events with any other feature NULL but rate,
    events unscored), and the keys of the NULL ones."""
    from threatflow.flows.repository import STORED_FEATURES

    blank = " AND ".join(f"features[{p}] IS NULL" for p in _blank_positions())
    others = " OR ".join(f"features[{i + 1}] IS NULL" for i, n in enumerate(STORED_FEATURES) if n not in _RAW_BLANKS and n != "rate")
    engine = _engine(database_url)
    with engine.connect() as conn:
        counts = conn.exec_driver_sql(
            f"SELECT count(*), count(*) FILTER (WHERE {blank}), count(*) FILTER (WHERE {others}),"
            " count(*) FILTER (WHERE probability IS NULL OR model_version IS NULL) FROM flow_events"
        ).one()
        keys = {str(r[0]) for r in conn.exec_driver_sql(f"SELECT event_key FROM flow_events WHERE {blank}")}
        srcips = [r[0] for r in conn.exec_driver_sql(f"SELECT DISTINCT host(srcip) FROM flow_events WHERE {blank}")]
    engine.dispose()
    return tuple(counts), keys, srcips


def test_the_raw_files_blank_cells_are_stored_as_null_scored_and_searchable(flows_api, backend_env):
    """`flows load` posts an official raw file's cells as text: its blank ct_flw_http_mthd, is_ftp_login and
    ct_ftp_cmd made more than half of the file's rows problems (`must be a finite number, got null`). They are
    missing values now: scored, stored with NULL there (never 0), found by search; a blank sbytes is still a problem."""
    import io

    from threatflow.flows import ingest

    text = _raw_file_with_blanks(200, seed=21)
    flows = [flow for _n, flow in ingest.read_csv(io.StringIO(text), typed=False)]
    assert flows[0]["ct_ftp_cmd"] is None and flows[1]["ct_ftp_cmd"] is not None
    response = flows_api.post("/api/v1/flows/batch", {"flows": flows, "skip_invalid": True})
    assert response.status_code == 200, response.get_data(as_text=True)
    body = response.get_json()
    assert (body["received"], body["stored"], body.get("invalid", 0)) == (200, 200, 0), body
    counts, keys, srcips = _null_counts(backend_env["DATABASE_URL"])
    assert counts == (200, 100, 0, 0)
    found = set()
    midnight = datetime.now(UTC).replace(hour=0, minute=0, second=0, microsecond=0)
    start = (midnight - timedelta(days=30)).isoformat().replace("+00:00", "Z")  # flowgen's 30 days end at midnight
    for srcip in srcips:
        page = flows_api.get(f"/api/v1/events/search?srcip={srcip}&from={start}&limit=500")
        assert page.status_code == 200
        json.loads(page.get_data(as_text=True))  # strict JSON: no NaN anywhere in the answer
        found |= {e["event_key"] for e in page.get_json()["events"]}
    assert keys <= found

    flows[1]["sbytes"] = None  # a blank sbytes: still a problem naming it, never 0
    flows[3]["sbytes"] = " "
    again = flows_api.post("/api/v1/flows/batch", {"flows": flows[:4], "source": "file:blank-sbytes", "skip_invalid": True})
    result = again.get_json()
    assert (result["stored"], result["invalid"]) == (2, 2), result
    assert {(p["index"], p["field"]) for p in result["problems"]} == {(1, "sbytes"), (3, "sbytes")}


def test_the_upload_worker_stores_the_raw_files_blank_cells_as_null(flows_api, backend_env, function_client):
    """The flow-ingest worker reads an uploaded raw file's cells typed: the blank ones are missing, every row stored."""
    from threatflow.adapters.firestore import FirestoreDocuments
    from threatflow.adapters.storage import GcsBlobs

    text = _raw_file_with_blanks(120, seed=23)
    GcsBlobs(PROJECT).put("threatflow-uploads", "flows/raw-blanks.csv.gz", gzip.compress(text.encode()))
    job = flows_api.post("/api/v1/flows/uploads", {"object": "flows/raw-blanks.csv.gz"})
    assert job.status_code == 202, job.get_data(as_text=True)
    job_id = job.get_json()["job_id"]
    push = {
        "message": {
            "data": base64.b64encode(json.dumps({"schema_version": 1, "job_id": job_id}).encode()).decode(),
            "attributes": {"job_id": job_id},
            "messageId": uuid.uuid4().hex,
            "publishTime": datetime.now(UTC).isoformat().replace("+00:00", "Z"),
        },
        "subscription": f"projects/{PROJECT}/subscriptions/flow-ingest-push",
    }
    assert function_client("flow-ingest").post("/", json=push).status_code == 200
    done = FirestoreDocuments(PROJECT).get("flow_ingest_jobs", job_id)
    assert (done["state"], done["stored"], done["invalid"]) == ("succeeded", 120, 0), done
    counts, _keys, _srcips = _null_counts(backend_env["DATABASE_URL"])
    assert counts == (120, 60, 0, 0)
