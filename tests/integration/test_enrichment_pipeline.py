"""The enrichment guarantees on real PostgreSQL, Redis, Pub/Sub and Firestore emulators,
with the fake intel APIs (tests/fakes/intel): the enrichment functions are served by
the dev stack's gateway in this process and reached by real push subscriptions."""

from __future__ import annotations

import argparse
import dataclasses
import json
import threading
import time
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from typing import Any

import pytest
from helpers import create_user

PROJECT = "threatflow-test"


@pytest.fixture
def pipeline(backend_env, function_client, monkeypatch):
    from werkzeug.serving import make_server

    from tests.fakes.intel import start_fake_intel
    from threatflow.devstack.gateway import Gateway, load_function_apps
    from threatflow.devstack.stack import provision_pubsub
    from threatflow.platform.manifest import REPO_ROOT, load_manifest

    fake = start_fake_intel()
    env = {
        **fake.env(),
        "VT_API_KEY": "test-vt-key",
        "ABUSEIPDB_API_KEY": "test-abuseipdb-key",
        "OTX_API_KEY": "test-otx-key",
        "HYBRID_ANALYSIS_API_KEY": "test-ha-key",
        "ABUSECH_AUTH_KEY": "test-abusech-key",
        "GREYNOISE_API_KEY": "test-gn-key",
        # small quotas keep the 429 test fast; a short source timeout keeps the timeout test fast
        "ENRICH_SOURCES_OVERRIDE": json.dumps({"virustotal": {"quota": {"per_minute": 20, "per_day": 500}, "timeout_seconds": 1.5}}),
        "ENRICH_KEY_CACHE_SECONDS": "1",
    }
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    manifest = load_manifest()
    wanted = {n: f for n, f in manifest.functions.items() if n.startswith("enrich") or n == "iocs"}
    topics = {"ioc-enrichment-requested", "enrichment-tasks", "enrichment-completed"} | {
        t for t in manifest.topics if t.startswith(("enrich", "ioc-enrichment"))
    }
    subs = {n: s for n, s in manifest.subscriptions.items() if s.topic in topics}
    small = dataclasses.replace(manifest, functions=wanted, subscriptions=subs, topics={t: manifest.topics[t] for t in topics})
    apps = load_function_apps(small, REPO_ROOT / "functions")
    server = make_server("127.0.0.1", 0, Gateway.from_settings(small, apps), threaded=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{server.server_port}"
    provision_pubsub(small, project=PROJECT, gateway_url=url, token=backend_env["PUSH_AUTH_TOKEN"])
    analyst = create_user(backend_env["DATABASE_URL"], "analyst1", "analyst")
    admin = create_user(backend_env["DATABASE_URL"], "admin1", "admin")
    auth = function_client("auth")

    def token(user: str, password: str) -> dict[str, str]:
        body = auth.post("/api/v1/auth/token", json={"username": user, "password": password}).get_json()
        return {"Authorization": f"Bearer {body['access_token']}"}

    api = function_client("enrichment")
    yield {
        "fake": fake,
        "url": url,
        "api": api,
        "iocs": function_client("iocs"),
        "headers": token("analyst1", analyst),
        "admin": token("admin1", admin),
        "env": backend_env,
    }
    server.shutdown()
    fake.close()


def wait_run(p: dict[str, Any], run_id: str, timeout: float = 60.0) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    body: dict[str, Any] = {}
    while time.monotonic() < deadline:
        response = p["api"].get(f"/api/v1/enrichment/runs/{run_id}", headers=p["headers"])
        assert response.status_code == 200, response.get_json()
        body = response.get_json()
        if body["status"] == "done":
            return body
        time.sleep(0.2)
    pytest.fail(f"run {run_id} not done in {timeout}s: {body}")


def enrich(p: dict[str, Any], value: str, **extra: Any) -> dict[str, Any]:
    response = p["api"].post("/api/v1/enrichment/enrich", json={"value": value, **extra}, headers=p["headers"])
    assert response.status_code == 202, response.get_json()
    return dict(response.get_json())


def test_enrich_closes_a_run_with_every_applicable_source_and_an_explained_verdict(pipeline):
    run = wait_run(pipeline, enrich(pipeline, "185.220.101.1")["run_id"])
    assert set(run["expected"]) >= {"virustotal", "abuseipdb"}
    assert set(run["sources"]) == set(run["expected"])
    assert all(s["status"] in ("ok", "not_found") for s in run["sources"].values()), run["sources"]
    assert run["verdict"] in ("malicious", "suspicious", "harmless", "unknown")
    ioc = pipeline["iocs"].get(f"/api/v1/iocs/{run['ioc_id']}", headers=pipeline["headers"]).get_json()
    assert ioc["enrichment"]["run_id"] == run["run_id"]
    assert {r["source"] for r in ioc["enrichment"]["reasons"]} == set(run["expected"])
    latest = pipeline["iocs"].get(f"/api/v1/iocs/{run['ioc_id']}/enrichment", headers=pipeline["headers"]).get_json()
    assert set(latest["sources"]) == set(run["expected"])


def test_fifty_concurrent_requests_make_one_call_per_source_and_ttl_and_force(pipeline):
    fake = pipeline["fake"]
    value = "45.95.147.236"
    with ThreadPoolExecutor(max_workers=25) as pool:
        started = list(pool.map(lambda _: enrich(pipeline, value), range(50)))
    finished = [wait_run(pipeline, s["run_id"], timeout=120) for s in started]
    expected = set(finished[0]["expected"])
    for source in expected:
        assert fake.call_count(source, value) == 1, (source, fake.call_count(source, value))
    assert all(set(r["sources"]) == expected for r in finished)
    # within the TTL: no call at all
    wait_run(pipeline, enrich(pipeline, value)["run_id"])
    assert all(fake.call_count(s, value) == 1 for s in expected)
    # forced: one more call per source
    forced = wait_run(pipeline, enrich(pipeline, value, force=True)["run_id"])
    assert all(fake.call_count(s, value) == 2 for s in expected)
    assert not any(s["cached"] for s in forced["sources"].values())


def test_a_429_storm_defers_and_never_dead_letters(pipeline):
    fake = pipeline["fake"]
    fake.set_scenario("virustotal", "rate_limited", duration=12, retry_after=1)  # ~12 cool-downs: more than the 5 delivery attempts
    values = ["178.128.78.235", "196.218.123.202", "8.8.4.4", "1.0.0.1", "9.9.9.9"]
    started = [enrich(pipeline, v, sources=["virustotal"]) for v in values]
    finished = [wait_run(pipeline, s["run_id"], timeout=90) for s in started]
    for run in finished:
        assert run["sources"]["virustotal"]["status"] in ("ok", "not_found"), run["sources"]
    calls = sorted(c.at for c in fake.calls("virustotal"))
    # the bucket (20 per minute: a burst of 20, then one per 3 s) is never exceeded in any window
    for i, first in enumerate(calls):
        for j in range(i, len(calls)):
            assert j - i + 1 <= 20 + (calls[j] - first) / 3.0 + 1
    rate_limited = [c for c in fake.calls("virustotal") if c.status == 429]
    assert rate_limited, "the storm was not exercised"
    dead = pipeline["api"].get("/api/v1/enrichment/dead-letters", headers=pipeline["admin"]).get_json()
    assert dead["dead_letters"] == []


def test_a_source_timing_out_is_marked_timeout_and_the_run_still_closes(pipeline):
    pipeline["fake"].set_scenario("virustotal", "slow", delay=4)
    run = wait_run(pipeline, enrich(pipeline, "118.25.6.39")["run_id"])
    assert run["sources"]["virustotal"]["status"] == "timeout"
    others = {k: v for k, v in run["sources"].items() if k != "virustotal"}
    assert others and all(v["status"] in ("ok", "not_found") for v in others.values())


def test_redelivering_every_message_leaves_the_same_state(pipeline):
    from threatflow.enrichment import handlers
    from threatflow.enrichment.tasks import Task
    from threatflow.platform.events import Message
    from threatflow.runtime import Runtime

    run = wait_run(pipeline, enrich(pipeline, "gaga.com")["run_id"])
    iocs = pipeline["iocs"]

    def state() -> tuple[Any, ...]:
        ioc = iocs.get(f"/api/v1/iocs/{run['ioc_id']}", headers=pipeline["headers"]).get_json()
        again = pipeline["api"].get(f"/api/v1/enrichment/runs/{run['run_id']}", headers=pipeline["headers"]).get_json()
        calls = {s: pipeline["fake"].call_count(s, "gaga.com") for s in run["expected"]}
        return ioc["detection_count"], ioc["verdict"], ioc["score"], json.dumps(again["sources"], sort_keys=True), again["verdict"], calls

    before = state()
    runtime = Runtime.from_env()

    for source in run["expected"]:
        task = Task(run["run_id"], run["ioc_id"], run["type"], run["value"], source)
        message = Message(uuid.uuid4().hex, {"source": source}, task.to_json(), datetime.now(UTC), 1)
        handlers.handle_task(message, runtime=runtime)
        done = Message(uuid.uuid4().hex, {"source": source}, {"run_id": run["run_id"], "source": source}, datetime.now(UTC), 1)
        handlers.handle_completed(done, runtime=runtime)
    request = {"run_id": run["run_id"], "ioc_id": run["ioc_id"], "ioc_type": run["type"], "value": run["value"]}
    handlers.handle_request(Message(uuid.uuid4().hex, {}, request, datetime.now(UTC), 1), runtime=runtime)
    time.sleep(2)  # anything the redelivery published has been pushed and handled
    assert state() == before


def test_a_forced_task_delivered_again_takes_the_answer_its_run_fetched(pipeline):
    """Pub/Sub delivers at least once. A forced task whose first delivery asked the source and cached the
    answer, then died (or outlived its ack deadline) before the result was stored, is delivered again: it
    must take that answer, fetched since its run was requested, not ask a second time. A forced task
    requested after the answer, or an older message without its request time, still asks."""
    from threatflow.enrichment import handlers, worker
    from threatflow.enrichment.tasks import Task
    from threatflow.runtime import Runtime

    fake, value = pipeline["fake"], "185.220.101.7"
    run = wait_run(pipeline, enrich(pipeline, value)["run_id"])  # cached: one call per source
    ctx = handlers.context(Runtime.from_env())
    name = sorted(run["expected"])[0]
    source = ctx.settings.sources[name]
    assert fake.call_count(name, value) == 1

    def execute(task: Task) -> worker.Outcome:
        return handlers.run_task(ctx, source, task, charge=None)  # as process_task runs it, without the run's bookkeeping

    forced = Task("forced-run", run["ioc_id"], run["type"], value, name, force=True, requested_at=time.time())
    first = execute(forced)  # the first delivery: the cached answer predates the request, so it asks
    assert not first.cached and fake.call_count(name, value) == 2
    again = execute(forced)  # delivered again before its result was stored
    assert again.cached and fake.call_count(name, value) == 2
    assert again.result is not None and first.result is not None and again.result.fetched_at == first.result.fetched_at
    later = execute(dataclasses.replace(forced, requested_at=time.time() + 1))  # a newer forced request
    assert not later.cached and fake.call_count(name, value) == 3
    old_message = execute(dataclasses.replace(forced, requested_at=None))  # an older version's message
    assert not old_message.cached and fake.call_count(name, value) == 4


def test_the_dispatcher_gives_a_forced_task_its_runs_request_time(pipeline, monkeypatch):
    """What the worker's check above rests on: every task of a forced run carries the run's created_at
    (the same on a second fan-out of the request), a plain run's tasks none."""
    from threatflow.enrichment import handlers, runs
    from threatflow.enrichment.tasks import EnrichRequest
    from threatflow.runtime import Runtime

    runtime = Runtime.from_env()
    ctx = handlers.context(runtime)
    published: list[tuple[str, dict[str, Any]]] = []
    monkeypatch.setattr(ctx, "publish", lambda topic, payload, **attributes: published.append((topic, dict(payload))) or "id")
    for force in (True, False):
        published.clear()
        req = EnrichRequest(uuid.uuid4().hex, 1, "ipv4", "185.220.101.8", force=force)
        handlers.dispatch_request(ctx, req)
        created_at = runs.get_run_versioned(runtime.documents, req.run_id).data["created_at"]
        runtime.documents.delete(runs.RUNS, req.run_id)  # never closed: no later sweep should meet it
        tasks = [payload for topic, payload in published if topic == handlers.TOPIC_TASKS]
        assert tasks, published
        assert {task["requested_at"] for task in tasks} == ({created_at} if force else {None})


def test_a_task_with_a_malformed_requested_at_is_dead_lettered_on_its_first_delivery(pipeline, monkeypatch):
    """Pub/Sub payloads are decoded with json.loads, which takes NaN and Infinity. A requested_at that is no
    time (text, NaN, out of datetime's range) is a permanent error: dead-lettered at once, not raised and
    delivered four more times (float() or the worker's fromtimestamp raised ValueError or OverflowError)."""
    from threatflow.enrichment import handlers
    from threatflow.platform.events import Message
    from threatflow.runtime import Runtime

    runtime = Runtime.from_env()
    ctx = handlers.context(runtime)
    published: list[tuple[str, dict[str, Any], dict[str, str]]] = []
    monkeypatch.setattr(ctx, "publish", lambda topic, payload, **attributes: published.append((topic, dict(payload), attributes)) or "id")
    source = sorted(ctx.settings.sources)[0]
    for bad in ("soon", float("nan"), float("inf"), 1e300):
        published.clear()
        task = {"run_id": "r-bad", "ioc_id": 1, "ioc_type": "ipv4", "value": "185.220.101.9", "source": source, "force": True}
        message = Message(uuid.uuid4().hex, {"source": source}, {**task, "requested_at": bad}, datetime.now(UTC), 1)
        handlers.handle_task(message, runtime=runtime)  # acked: nothing raised for a redelivery
        assert [(topic, attributes["attempts"]) for topic, _, attributes in published] == [
            (ctx.settings.sources[source].dead_letter_topic, "1")
        ], bad
        assert "requested_at" in published[0][2]["error"]


def test_a_poison_message_is_dead_lettered_listed_and_replayable(pipeline):
    from threatflow.adapters.pubsub import PubSubPublisher
    from threatflow.enrichment.tasks import Task
    from threatflow.platform import events

    marker = f"poison-{uuid.uuid4().hex[:8]}.example"
    task = Task(uuid.uuid4().hex, 987_654_321, "domain", marker, "virustotal")  # an IoC that does not exist
    PubSubPublisher(PROJECT).publish("enrichment-tasks", events.encode(task.to_json()), {"source": "virustotal"})
    deadline = time.monotonic() + 60
    found: list[dict[str, Any]] = []
    while time.monotonic() < deadline and not found:
        listed = pipeline["api"].get("/api/v1/enrichment/dead-letters", headers=pipeline["admin"]).get_json()
        found = [d for d in listed["dead_letters"] if d.get("value") == marker]
        time.sleep(1)
    assert found, "the poison message was not dead-lettered within 60 s"
    assert found[0]["attempts"] >= 5 and "does not exist" in found[0]["error"]
    assert pipeline["api"].get("/api/v1/enrichment/dead-letters", headers=pipeline["headers"]).status_code == 403
    replayed = pipeline["api"].post("/api/v1/enrichment/dead-letters/replay", json={"ids": [found[0]["id"]]}, headers=pipeline["admin"])
    assert replayed.status_code == 200 and replayed.get_json()["replayed"] == [found[0]["id"]]


def test_bad_input_is_a_4xx_naming_the_field(pipeline):
    api, headers = pipeline["api"], pipeline["headers"]
    response = api.post("/api/v1/enrichment/enrich", json={"value": "not an indicator at all"}, headers=headers)
    assert response.status_code == 400 and "value" in json.dumps(response.get_json())
    response = api.post("/api/v1/enrichment/enrich", json={"value": "1.2.3.4", "sources": ["nope"]}, headers=headers)
    assert response.status_code == 400 and response.get_json()["error"]["details"]["field"] == "sources"
    response = api.post("/api/v1/enrichment/batch", json={"iocs": ["1.2.3.4"] * 1001}, headers=headers)
    assert response.status_code == 413
    assert api.get("/api/v1/enrichment/runs/nope", headers=headers).status_code == 404
    sources = api.get("/api/v1/enrichment/sources", headers=headers).get_json()["sources"]
    assert {s["name"] for s in sources} >= {"virustotal", "abuseipdb", "internetdb", "greynoise"}


def test_batch_answers_cached_iocs_at_once_and_reports_progress(pipeline):
    api, headers = pipeline["api"], pipeline["headers"]
    wait_run(pipeline, enrich(pipeline, "178.128.78.235")["run_id"])
    response = api.post("/api/v1/enrichment/batch", json={"iocs": ["178.128.78.235", "gaga.com", "not an ioc"]}, headers=headers)
    assert response.status_code == 202, response.get_json()
    body = response.get_json()
    cached, fresh, bad = body["runs"]
    assert cached["status"] == "done" and cached["cached"] is True
    assert fresh["status"] == "running" and "error" in bad and bad["index"] == 2
    assert wait_run(pipeline, cached["run_id"])["sources"]
    deadline = time.monotonic() + 60
    progress: dict[str, Any] = {}
    while time.monotonic() < deadline:
        progress = api.get(f"/api/v1/enrichment/batches/{body['batch_id']}", headers=headers).get_json()
        if progress["complete"]:
            break
        time.sleep(0.3)
    assert progress["complete"] and progress["done"] == 2 and progress["accepted"] == 2 and progress["total"] == 3


def test_a_batch_run_that_asked_no_source_says_why(pipeline, capsys):
    """A run that asks no source (a warninglisted value, as the README's EICAR hash is with warninglists on; a type
    the named sources do not look up) closes `unknown`, and the batch's progress and `threatflow enrich` gave no
    reason: only the run record held it. The batch now carries the skipped sources' reasons, and the CLI says them."""
    from threatflow.cli import enrich as cli

    api, headers = pipeline["api"], pipeline["headers"]
    body = api.post("/api/v1/enrichment/batch", json={"iocs": ["gaga.com"], "sources": ["internetdb"]}, headers=headers).get_json()
    deadline = time.monotonic() + 60
    progress: dict[str, Any] = {}
    while time.monotonic() < deadline and not progress.get("complete"):
        progress = api.get(f"/api/v1/enrichment/batches/{body['batch_id']}", headers=headers).get_json()
        time.sleep(0.2)
    [run] = progress["runs"]
    assert run["verdict"] == "unknown" and run["skipped"] == {"internetdb": "does not look up domain"}, run

    def call(method: str, path: str, payload: Any = None) -> tuple[int, Any]:
        response = api.open(path, method=method, json=payload, headers=headers)
        return response.status_code, response.get_json()

    args = argparse.Namespace(values=["gaga.com"], file=None, sources="internetdb", force=False, no_wait=False, timeout=60.0)
    assert cli.run(args, call) == 0
    assert "gaga.com: no source was asked: internetdb: does not look up domain" in capsys.readouterr().err


def _detect_intel_get(pipeline: Any) -> Callable[[str], tuple[int, Any]]:
    """GET on a router holding only the detect function's intel routes, as the pipeline's user: (status, JSON body)."""
    from werkzeug.test import EnvironBuilder
    from werkzeug.wrappers import Request as WerkzeugRequest

    from threatflow.auth.api import authenticator
    from threatflow.enrichment.api import add_detect_intel_routes
    from threatflow.platform.web import Router
    from threatflow.runtime import Runtime

    runtime = Runtime.from_env()
    router = Router("detect-test", runtime=runtime, authenticator=authenticator(runtime))
    add_detect_intel_routes(router, runtime)

    def get(path: str) -> tuple[int, Any]:
        request = WerkzeugRequest(EnvironBuilder(path=path, headers=pipeline["headers"]).get_environ())
        response = router.handle(request)
        return response.status_code, json.loads(response.get_data())

    return get


def test_detect_intel_route_answers_from_abuseipdb_within_quota_and_cache(pipeline):
    get = _detect_intel_get(pipeline)
    status, body = get("/api/v1/detect/intel/118.25.6.39")
    assert status == 200 and body["source"] == "abuseipdb" and body["cached"] is False, body
    status, again = get("/api/v1/detect/intel/118.25.6.39")
    assert status == 200 and again["cached"] is True
    assert pipeline["fake"].call_count("abuseipdb", "118.25.6.39") == 1
    status, bad = get("/api/v1/detect/intel/not-an-ip")
    assert status == 400 and bad["error"]["details"]["field"] == "ip"
    assert get("/api/v1/detect/intel/10.0.0.1")[0] == 400


def test_detect_intel_refuses_zoned_and_multicast_addresses_without_calling_a_source(pipeline):
    """ip_address() takes an IPv6 zone ("2606:4700:4700::1111%eth0", Python 3.9+): a global address with
    any zone suffix passed the check, went to the sources with the suffix, and was cached under it, so
    each new suffix cost another call of the source's quota; multicast groups went out as hosts too."""
    get = _detect_intel_get(pipeline)
    for ip in ("2606:4700:4700::1111%25eth0", "2606:4700:4700::1111%25a1", "224.0.0.251", "ff0e::1"):
        status, body = get(f"/api/v1/detect/intel/{ip}")
        assert status == 400 and body["error"]["details"]["field"] == "ip", (ip, status, body)
    assert pipeline["fake"].call_count("abuseipdb", "2606:4700:4700::1111%eth0") == 0
    assert pipeline["fake"].call_count("abuseipdb", "224.0.0.251") == 0


def test_cli_enrich_values_and_a_file_prints_a_verdict_table(pipeline, tmp_path, monkeypatch, capsys):
    from threatflow.cli.main import main

    monkeypatch.setenv("THREATFLOW_TOKEN", pipeline["headers"]["Authorization"].split(" ", 1)[1])
    monkeypatch.delenv("THREATFLOW_URL", raising=False)  # set, it would name another server than --url: no token sent
    listing = tmp_path / "iocs.txt"
    listing.write_text("# a comment\ngaga.com\n185.220.101.1\n")
    with pytest.raises(SystemExit) as exited:
        main(["enrich", "118.25.6.39", "--file", str(listing), "--url", pipeline["url"], "--timeout", "60"])
    out, err = capsys.readouterr()
    assert exited.value.code == 0, err
    lines = out.splitlines()
    assert lines[0].split() == ["VERDICT", "SCORE", "TYPE", "RUN", "VALUE"]
    assert {line.split()[-1] for line in lines[1:]} == {"118.25.6.39", "gaga.com", "185.220.101.1"}
    assert "3/3 runs done" in err and "0 rejected" in err


def test_storing_an_ioc_auto_enriches_it_and_401_marks_the_source_unhealthy(pipeline):
    pipeline["fake"].set_scenario("abuseipdb", "unauthorized")
    stored = pipeline["iocs"].post("/api/v1/iocs/batch", json={"iocs": [{"value": "196.218.123.202"}]}, headers=pipeline["headers"])
    assert stored.status_code == 200, stored.get_json()
    ioc_id = stored.get_json()["results"][0]["id"]
    deadline = time.monotonic() + 60
    latest: dict[str, Any] = {}
    while time.monotonic() < deadline:
        latest = pipeline["iocs"].get(f"/api/v1/iocs/{ioc_id}/enrichment", headers=pipeline["headers"]).get_json()
        if latest["verdict"] is not None:
            break
        time.sleep(0.3)
    assert latest["verdict"] is not None, latest
    # ipv4 is auto-enriched by abuseipdb, otx, threatfox and internetdb (manifest auto_enrich), not by virustotal
    assert {"abuseipdb", "internetdb"} <= set(latest["sources"]) and "virustotal" not in latest["sources"]
    assert latest["sources"]["abuseipdb"]["status"] == "auth_error"
    sources = {s["name"]: s for s in pipeline["api"].get("/api/v1/enrichment/sources", headers=pipeline["headers"]).get_json()["sources"]}
    assert sources["abuseipdb"]["health"] == "auth_error" and sources["abuseipdb"]["key_present"] is True
    assert sources["internetdb"]["keyless"] is True and sources["virustotal"]["quota"]["per_day"] == 500
    # re-storing the same IoC is a re-sighting, not a new enrichment
    again = pipeline["iocs"].post("/api/v1/iocs/batch", json={"iocs": [{"value": "196.218.123.202"}]}, headers=pipeline["headers"])
    assert again.get_json()["results"][0]["status"] == "updated"


def test_a_family_named_by_a_source_links_the_ioc_to_the_threat_with_the_evidence_as_reason(pipeline, function_client):
    threats = function_client("threats")
    emotet = {"kind": "malware", "name": "Emotet", "aliases": ["Heodo"]}
    created = threats.post("/api/v1/threats/batch", json={"threats": [emotet]}, headers=pipeline["headers"])
    assert created.status_code == 200, created.get_json()
    sha256 = "275a021bbfb6489e54d471899f7db9d1663fc695ec2fe2a2c4538aabf651fd0f"
    run = wait_run(pipeline, enrich(pipeline, sha256, sources=["malwarebazaar"])["run_id"])
    assert "Emotet" in run["sources"]["malwarebazaar"]["evidence"]["malware_families"]
    linked = threats.get(f"/api/v1/threats/by-ioc/{run['ioc_id']}", headers=pipeline["headers"]).get_json()
    assert [(t["name"], t["relation"], t["source"]) for t in linked["threats"]] == [("Emotet", "correlated", "enrichment")]
    ioc = pipeline["iocs"].get(f"/api/v1/iocs/{run['ioc_id']}", headers=pipeline["headers"]).get_json()
    threat_reasons = [r for r in ioc["enrichment"]["reasons"] if r.get("kind") == "threat"]
    assert threat_reasons and "malwarebazaar" in threat_reasons[0]["reason"] and "Emotet" in threat_reasons[0]["reason"]
    assert ioc["verdict"] == "malicious"


def test_a_parked_task_is_released_by_the_schedule_tick(pipeline, monkeypatch):
    from threatflow.adapters.pubsub import PubSubPublisher
    from threatflow.enrichment import handlers, repository
    from threatflow.enrichment.tasks import Task
    from threatflow.platform import events
    from threatflow.runtime import Runtime

    run = wait_run(pipeline, enrich(pipeline, "185.220.101.1", sources=["virustotal"])["run_id"])
    monkeypatch.setattr(handlers, "PARK_AFTER_SECONDS", 0.5)  # the gateway runs in this process: same module
    runtime = Runtime.from_env()
    ctx = handlers.context(runtime)
    parked_run = uuid.uuid4().hex
    handlers.defer(ctx, Task(parked_run, run["ioc_id"], run["type"], run["value"], "virustotal"), 1.0, "daily cap (test)")
    time.sleep(2.0)

    def rows() -> list[dict[str, Any]]:
        with runtime.engine.connect() as conn:
            return repository.run_results(conn, parked_run)

    assert rows() == [], "a parked task waits in Redis, not in Pub/Sub"
    PubSubPublisher(PROJECT).publish("ioc-enrichment-requested", events.encode({"origin": "tick"}), {"origin": "tick"})
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and not rows():
        time.sleep(0.3)
    assert [(r["source"], r["cached"]) for r in rows()] == [("virustotal", True)]
