"""The hunting surface's roll-ups, bridge and query parameters at the edges an attacker picks
(review h/flowattack): byte counts the event store accepts per flow but not summed, IPv6 spellings of
addresses the bridge must not bridge or send to intel sources."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta

import pytest
from flows_support import flows_api, json_flows
from helpers import push_envelope

pytestmark = pytest.mark.integration
PROJECT = "threatflow-test"


@pytest.fixture
def api(function_client, backend_env):
    return flows_api(function_client, backend_env["DATABASE_URL"], roles=("reader", "analyst", "admin"))


def _run_job(function_client, job: str) -> dict:
    from threatflow.adapters.firestore import FirestoreDocuments

    run_id = uuid.uuid4().hex
    push = push_envelope({"schema_version": 1}, {"job": job, "run_id": run_id}, "maintenance-push")
    function_client("maintenance").post("/", json=push)
    return FirestoreDocuments(PROJECT).get("maintenance_runs", run_id) or {}


def test_byte_counts_past_bigint_when_summed_keep_the_rollups_refreshing_and_answering(api, function_client):
    """A flow may carry up to 2**62 bytes each way (what the event store keeps), but the hourly roll-up summed an
    hour's bytes into a bigint: two such flows in one hour made every `refresh-flow-views` run fail with "bigint out
    of range" (a 500, retried to the dead letter), so the dashboards stayed frozen until retention dropped that day,
    90 days later; and bytes-by-proto summed the hours of its window into a bigint too."""
    hour = (datetime.now(UTC) - timedelta(days=1)).replace(minute=5, second=0, microsecond=0)
    flows = json_flows(4, seed=71)
    for k, flow in enumerate(flows):
        at = int((hour + timedelta(hours=k // 2)).timestamp())  # two flows in each of two hours
        flow.update(proto="tcp", sbytes=2**62, dbytes=2**62, stime=at, ltime=at)
    response = api.post("/api/v1/flows/batch", {"flows": flows})
    assert response.status_code == 200 and response.get_json()["stored"] == 4, response.get_data(as_text=True)[:300]
    run = _run_job(function_client, "refresh-flow-views")
    assert run.get("state") == "succeeded", run.get("error")
    query = {"from": (hour - timedelta(hours=1)).isoformat(), "to": (hour + timedelta(hours=3)).isoformat()}
    answer = api.get("/api/v1/events/stats/bytes-by-proto", query_string=query)
    assert answer.status_code == 200, answer.get_data(as_text=True)[:300]
    tcp = [p for p in answer.get_json()["protocols"] if p["proto"] == "tcp"]
    assert tcp and tcp[0]["sbytes"] == 4 * 2**62 and tcp[0]["bytes"] == 8 * 2**62, tcp


def test_the_bridge_reads_the_ipv4_address_an_ipv6_source_carries(api, function_client, backend_env):
    """64:ff9b::a00:1 is 10.0.0.1 through NAT64 and 2002:c0a8:101::1 is 192.168.1.1 through 6to4; Python counts
    both global, so the bridge queued them for enrichment and sent internal addresses to AbuseIPDB and OTX (GET
    /detect/intel refuses exactly these). And NAT64 spellings of loopback, multicast and the metadata server became
    IoCs, which their IPv4 spellings never do. A public address spelled through NAT64 is still bridged and enriched."""
    from flows_support import sql_scalar

    from threatflow.adapters.postgres import create_engine, unit_of_work
    from threatflow.platform.config import Settings

    engine = create_engine(Settings.from_env({"DATABASE_URL": backend_env["DATABASE_URL"]}))
    with unit_of_work(engine) as conn:  # this hour's budget, whatever earlier tests spent
        conn.exec_driver_sql("DELETE FROM flow_bridge_enrichment")
    engine.dispose()
    bridging = function_client("flows", FLOWS_BRIDGE_THRESHOLD="0.05", FLOWS_BRIDGE_ENRICH_PER_HOUR="1000")
    attacks = [f for f in json_flows(600, seed=41) if f["label"] == 1][:4]
    internal = ("64:ff9b::a00:1", "2002:c0a8:101::1", "::ffff:0:a00:2")  # 10.0.0.1, 192.168.1.1, 10.0.0.2 (SIIT)
    no_host = ("64:ff9b::7f00:1", "64:ff9b::e000:1", "64:ff9b::a9fe:a9fe")  # 127.0.0.1, 224.0.0.1, 169.254.169.254
    public = "64:ff9b::2d92:a709"  # 45.146.167.9
    flows = [{**flow, "srcip": ip} for ip in (*internal, *no_host, public) for flow in attacks]
    response = bridging.post("/api/v1/flows/batch", json={"flows": flows}, headers=api.headers["analyst"])
    assert response.status_code == 200, response.get_data(as_text=True)[:300]
    bridged = response.get_json()["bridge"]
    assert bridged["iocs_created"] == len(internal) + 1, bridged  # internal hosts are IoCs, as 10.0.0.1 itself is
    assert bridged["enrichment_requested"] == 1 and bridged["enrichment_over_budget"] == 0, bridged  # the public one only
    values = ", ".join(f"'{ip}'" for ip in no_host)
    assert sql_scalar(backend_env["DATABASE_URL"], f"SELECT count(*) FROM iocs WHERE value IN ({values})") == 0


@pytest.mark.parametrize(
    "path",
    [
        "/api/v1/events/search?srcip=175.45.176.1&srcip=175.45.176.2",
        "/api/v1/events/search?limit=5&limit=1000",
        "/api/v1/events/timeline?srcip=175.45.176.1&srcip=175.45.176.2",
        "/api/v1/events/hosts/175.45.176.1?to=2026-11-20T00:00:00Z&to=2026-11-21T00:00:00Z",
        "/api/v1/events/top/attack-categories?limit=5&limit=x",
        "/api/v1/events/stats/bytes-by-proto?to=2026-11-01T00:00:00Z&to=2026-11-02T00:00:00Z",
    ],
)
def test_a_hunting_query_parameter_given_twice_is_a_400_naming_it(api, path):
    """Each route reads one value of a parameter: of srcip=a&srcip=b the first was answered, silently, so a hunter
    asking for two addresses got one address's events and no word that the other was dropped."""
    response = api.get(path)
    assert response.status_code == 400, (path, response.status_code, response.get_data(as_text=True)[:200])
    name = path.split("?")[1].split("=")[0]
    assert response.get_json()["error"]["details"]["field"] == name, response.get_json()


def test_detect_refuses_a_query_parameter_given_twice(api):
    flow = {k: v for k, v in json_flows(1, seed=72)[0].items() if k not in ("stime", "ltime")}
    for query in ("explain=true&explain=false", "top=1&top=41"):
        response = api.detect.post(f"/api/v1/detect?{query}", json={"flow": flow}, headers=api.reader)
        assert response.status_code == 400, (query, response.get_data(as_text=True)[:200])
        assert response.get_json()["error"]["details"]["field"] == query.split("=")[0]


@pytest.mark.parametrize(("query", "field"), [("explian=true", "explian"), ("Explain=true", "Explain"), ("top=3&topp=9", "topp")])
def test_detect_refuses_an_unknown_query_parameter_as_the_events_routes_do(api, query, field):
    """A misspelt parameter was ignored: /detect?explian=true answered 200 with no top_features, and the caller could
    not tell a typo from a model that explains nothing. Every /events route refuses an unknown parameter, naming it."""
    flow = {k: v for k, v in json_flows(1, seed=74)[0].items() if k not in ("stime", "ltime")}
    for path, body in (("/api/v1/detect", {"flow": flow}), ("/api/v1/detect/batch", {"flows": [flow]})):
        response = api.detect.post(f"{path}?{query}", json=body, headers=api.reader)
        assert response.status_code == 400, (path, query, response.get_data(as_text=True)[:200])
        assert response.get_json()["error"]["details"]["field"] == field, response.get_json()
    model = api.detect.get(f"/api/v1/detect/model?{field}=1", headers=api.reader)  # it reads no parameter
    assert model.status_code == 400 and model.get_json()["error"]["details"]["field"] == field, model.get_json()
    known = api.detect.post("/api/v1/detect?explain=true&top=3", json={"flow": flow}, headers=api.reader)
    assert known.status_code == 200 and len(known.get_json()["result"]["top_features"]) == 3, known.get_data(as_text=True)[:200]


def test_search_reads_a_category_as_ingest_does_so_backdoors_finds_what_was_stored_from_it(api):
    """Ingest stores the raw files' `Backdoors` (any case, padded) as `Backdoor`, but the search read only the
    exact names: `?attack_cat=Backdoors` was a 400, so the spelling a flow came in with could not find it."""
    at = int((datetime.now(UTC) - timedelta(hours=2)).timestamp())
    flows = json_flows(2, seed=75)
    for flow, category in zip(flows, (" Backdoors ", "Exploits"), strict=True):
        flow.update(srcip="203.0.113.75", label=1, attack_cat=category, stime=at, ltime=at)
    stored = api.post("/api/v1/flows/batch", {"flows": flows})
    assert stored.status_code == 200 and stored.get_json()["stored"] == 2, stored.get_data(as_text=True)[:300]
    for spelling in ("Backdoors", "backdoors", "Backdoor", " BACKDOOR "):
        found = api.get("/api/v1/events/search", query_string={"srcip": "203.0.113.75", "attack_cat": spelling})
        assert found.status_code == 200, (spelling, found.get_data(as_text=True)[:300])
        assert [e["attack_cat"] for e in found.get_json()["events"]] == ["Backdoor"], (spelling, found.get_json())
        predicted = api.get("/api/v1/events/search", query_string={"srcip": "203.0.113.75", "predicted_cat": spelling})
        assert predicted.status_code == 200, (spelling, predicted.get_data(as_text=True)[:300])
        assert all(e["predicted_cat"] == "Backdoor" for e in predicted.get_json()["events"]), predicted.get_json()
    for name in ("attack_cat", "predicted_cat"):
        refused = api.get("/api/v1/events/search", query_string={"srcip": "203.0.113.75", name: "Backdoorss"})
        assert refused.status_code == 400 and refused.get_json()["error"]["details"]["field"] == name, refused.get_json()


def test_the_timelines_hours_are_whole_hours_as_labelled_and_its_window_says_so_as_the_rollups_do(api):
    """A bucket is labelled with its hour, but the first and last hours counted only the part inside from/to: with
    from=10:30 the 10:00 bucket held the 10:50 flow and not the 10:10 one. Now the window widens to whole hours, as
    the roll-ups' does, and the answer's window is the span counted."""
    hour = (datetime.now(UTC) - timedelta(days=1)).replace(minute=0, second=0, microsecond=0)
    minutes = (10, 50, 70, 150)  # two in the first hour, one in the middle, one past `to` in the last hour
    flows = json_flows(len(minutes), seed=77)
    for flow, minute in zip(flows, minutes, strict=True):
        at = int((hour + timedelta(minutes=minute)).timestamp())
        flow.update(srcip="203.0.113.77", stime=at, ltime=at)
    stored = api.post("/api/v1/flows/batch", {"flows": flows})
    assert stored.status_code == 200 and stored.get_json()["stored"] == len(minutes), stored.get_data(as_text=True)[:300]
    query = {"srcip": "203.0.113.77", "from": (hour + timedelta(minutes=30)).isoformat(), "to": (hour + timedelta(minutes=140)).isoformat()}
    answer = api.get("/api/v1/events/timeline", query_string=query)
    assert answer.status_code == 200, answer.get_data(as_text=True)[:300]
    body = answer.get_json()
    counted = {datetime.fromisoformat(h["hour"]): h["events"] for h in body["hours"]}
    assert counted == {hour: 2, hour + timedelta(hours=1): 1, hour + timedelta(hours=2): 1}, body["hours"]
    window = body["window"]
    assert (datetime.fromisoformat(window["from"]), datetime.fromisoformat(window["to"])) == (hour, hour + timedelta(hours=3)), window
    assert window["resolution_seconds"] == 3600, window


def test_the_timelines_31_day_bound_holds_for_the_whole_hours_it_counts(api):
    """The timeline checked its 31-day bound on the window asked for, then widened it to whole hours: from 10:30 to
    10:20 31 days on was accepted and counted 31 days and an hour (from 10:00 to 11:00), up to two hours past the
    bound. The bound now holds for the span counted (the answer's window); a window that widens to exactly 31 days
    is answered."""
    start = (datetime.now(UTC) - timedelta(days=40)).replace(minute=30, second=0, microsecond=0)

    def timeline(end):
        query = {"srcip": "203.0.113.78", "from": start.isoformat(), "to": end.isoformat()}
        return api.get("/api/v1/events/timeline", query_string=query)

    for end in (start + timedelta(days=31), start + timedelta(days=31, minutes=-10), start + timedelta(days=31, minutes=-29)):
        refused = timeline(end)
        assert refused.status_code == 400 and refused.get_json()["error"]["details"]["field"] == "from", (end, refused.get_json())
    answered = timeline(start + timedelta(days=31, minutes=-30))  # 10:30 to 10:00: 10:00 to 10:00, 31 days
    assert answered.status_code == 200, answered.get_data(as_text=True)[:300]
    window = answered.get_json()["window"]
    counted = datetime.fromisoformat(window["to"]) - datetime.fromisoformat(window["from"])
    assert counted == timedelta(days=31), window


@pytest.mark.parametrize("route", ["/api/v1/events/top/attack-categories", "/api/v1/events/stats/bytes-by-proto"])
def test_a_rollups_400_day_bound_holds_for_the_whole_hours_it_counts(api, route):
    """The roll-ups had the timeline's gap: the 400-day bound was checked on the window asked for, then the hourly
    views counted every hour it touched, up to two hours past the bound. A window that widens to exactly 400 days is
    answered."""
    start = (datetime.now(UTC) - timedelta(days=420)).replace(minute=30, second=0, microsecond=0)

    def rollup(end):
        return api.get(route, query_string={"from": start.isoformat(), "to": end.isoformat()})

    for end in (start + timedelta(days=400), start + timedelta(days=400, minutes=-10)):
        refused = rollup(end)
        assert refused.status_code == 400 and refused.get_json()["error"]["details"]["field"] == "from", (end, refused.get_json())
    answered = rollup(start + timedelta(days=400, minutes=-30))
    assert answered.status_code == 200, answered.get_data(as_text=True)[:300]
    window = answered.get_json()["window"]
    assert datetime.fromisoformat(window["to"]) - datetime.fromisoformat(window["from"]) == timedelta(days=400), window


@pytest.mark.parametrize("value", ["%EF%BC%95", "1_0", "%2B5", "%205", "%D9%A5"])  # fullwidth 5, 1_0, +5, " 5", Arabic-Indic 5
def test_an_integer_query_parameter_is_ascii_digits_as_the_search_limit_is(api, value):
    """The search's limit refuses what int() alone would read ("²" was a 500, "１０" a page of 10); the roll-ups'
    limit and /detect's top went through int() and took a fullwidth or Arabic-Indic digit, 1_0 or +5 as a number."""
    rollup = api.get(f"/api/v1/events/top/attack-categories?limit={value}")
    assert rollup.status_code == 400 and rollup.get_json()["error"]["details"]["field"] == "limit", rollup.get_data(as_text=True)[:200]
    flow = {k: v for k, v in json_flows(1, seed=73)[0].items() if k not in ("stime", "ltime")}
    detect = api.detect.post(f"/api/v1/detect?top={value}", json={"flow": flow}, headers=api.reader)
    assert detect.status_code == 400 and detect.get_json()["error"]["details"]["field"] == "top", detect.get_data(as_text=True)[:200]
