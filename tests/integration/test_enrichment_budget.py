"""A per-user enrichment budget: source lookups that leave the cache, per user and hour (ENRICH_USER_BUDGET_PER_HOUR).

The intel quota is the team's: any reader spent it through GET /detect/intel/{ip}, and an analyst's forced batch of
1,000 distinct values was 1,000 runs, bounded only by the per-user request rate and each source's quota. POST
/enrichment/health made ~9 HEAD requests to third parties on every call. Real PostgreSQL, Redis, Pub/Sub and
Firestore emulators; the intel APIs are the local fakes. Nothing dispatches the batches' requests here: what is
charged is decided when the request is accepted."""

from __future__ import annotations

import contextlib
import json
import threading
from datetime import UTC, datetime

import pytest
from helpers import create_user

pytestmark = pytest.mark.integration
PROJECT = "threatflow-test"
BUDGET = 4


@pytest.fixture
def env(backend_env, function_client, monkeypatch):
    from google.cloud import pubsub_v1
    from werkzeug.test import EnvironBuilder
    from werkzeug.wrappers import Request as WerkzeugRequest

    from tests.fakes.intel import start_fake_intel
    from threatflow.auth.api import authenticator
    from threatflow.enrichment.api import add_detect_intel_routes
    from threatflow.platform.web import Router
    from threatflow.runtime import Runtime

    publisher = pubsub_v1.PublisherClient()
    for name in ("ioc-enrichment-requested", "enrichment-tasks", "enrichment-completed"):
        with contextlib.suppress(Exception):  # made by an earlier test of this run
            publisher.create_topic(name=publisher.topic_path(PROJECT, name))
    fake = start_fake_intel()
    settings = {**fake.env(), "VT_API_KEY": "test-vt-key", "ABUSEIPDB_API_KEY": "test-abuseipdb-key"}
    for key, value in {**settings, "ENRICH_USER_BUDGET_PER_HOUR": str(BUDGET)}.items():
        monkeypatch.setenv(key, value)
    auth = function_client("auth")

    def bearer(username, role, clearance=None):
        password = create_user(backend_env["DATABASE_URL"], username, role, clearance=clearance)
        token = auth.post("/api/v1/auth/token", json={"username": username, "password": password}).get_json()["access_token"]
        return {"Authorization": f"Bearer {token}"}

    runtime = Runtime.from_env()
    router = Router("detect-test", runtime=runtime, authenticator=authenticator(runtime))
    add_detect_intel_routes(router, runtime)

    def intel(ip, headers):
        response = router.handle(WerkzeugRequest(EnvironBuilder(path=f"/api/v1/detect/intel/{ip}", headers=headers).get_environ()))
        return response.status_code, json.loads(response.get_data()), response.headers

    yield {
        "runtime": runtime,
        "fake": fake,
        "bearer": bearer,
        "intel": intel,
        "api": function_client("enrichment"),
        "iocs": function_client("iocs"),
    }
    fake.close()
    runtime.engine.dispose()


def _cache(runtime, source_name: str, ioc_type: str, value: str) -> None:
    """A fresh answer of `source_name` about `value` in the result cache, as a task that asked it leaves one."""
    from threatflow.enrichment import handlers
    from threatflow.enrichment.model import Evidence, ResultStatus, SourceResult, Verdict

    ctx = handlers.context(runtime)
    result = SourceResult(source_name, ResultStatus.OK, Verdict.HARMLESS, 0, Evidence(), None, datetime.now(UTC))
    ctx.cache.put(ctx.settings.get(source_name), ioc_type, value, result)


def _refused_by_budget(status: int, body: dict, headers) -> None:
    assert status == 429, body
    assert int(headers["Retry-After"]) >= 1
    assert body["error"]["details"]["budget"] == "enrichment", body
    assert body["error"]["details"]["limit"] == BUDGET and body["error"]["details"]["period_seconds"] == 3600, body
    assert "enrichment budget" in body["error"]["message"]


def test_a_reader_over_budget_gets_429_with_retry_after_while_another_reader_is_served(env):
    intel, fake = env["intel"], env["fake"]
    alice, bob = env["bearer"]("budget-alice", "reader"), env["bearer"]("budget-bob", "reader")
    addresses = [f"185.220.101.{i}" for i in range(10, 10 + BUDGET)]
    for ip in addresses:  # each a fresh call to AbuseIPDB: one lookup of the budget
        status, body, _ = intel(ip, alice)
        assert status == 200 and body["source"] == "abuseipdb" and not body["cached"], body
    status, body, headers = intel("185.220.101.99", alice)
    _refused_by_budget(status, body, headers)
    assert fake.call_count("abuseipdb", "185.220.101.99") == 0, "the refused lookup reached the source"
    status, body, _ = intel("185.220.101.99", bob)  # another reader's budget is their own
    assert status == 200 and body["source"] == "abuseipdb", body
    status, body, _ = intel(addresses[0], alice)  # a cache hit costs nothing, however spent the budget
    assert status == 200 and body["cached"], body
    status, body, _ = intel("185.220.101.99", alice)  # bob's lookup cached it
    assert status == 200 and body["cached"], body
    assert fake.call_count("abuseipdb") == BUDGET + 1


@contextlib.contextmanager
def _cooling_down(runtime, names):
    """`names` answer as a source does after a 429 (cooling down) for this runtime's keys, until the block ends."""
    from threatflow.enrichment import handlers

    ctx = handlers.context(runtime)
    configs = [ctx.settings.get(name) for name in names]
    try:
        for config in configs:
            ctx.quota.cool_down(config, ctx.keys.fingerprint(config), seconds=60, now=datetime.now(UTC))
        yield
    finally:
        for config in configs:
            ctx.redis.delete(f"enr:cooldown:{config.name}:{ctx.keys.fingerprint(config)}")


def test_a_source_out_of_quota_costs_detect_intel_nothing(env):
    """GET /detect/intel charged each source just before its quota was taken: a source found out of quota (cooling
    down, its day spent) was charged though nothing was called, so with AbuseIPDB cooling down each address cost 2
    (the budget of 4 gone after 2 calls), and with every IP source out of quota each 429 spent up to 5. A source the
    quota refuses gives back its charge."""
    from threatflow.enrichment.api import IP_SOURCE_ORDER

    intel, fake, runtime = env["intel"], env["fake"], env["runtime"]
    gina, hank = env["bearer"]("budget-gina", "reader"), env["bearer"]("budget-hank", "reader")
    with _cooling_down(runtime, ["abuseipdb"]):
        for i in range(1, BUDGET + 1):  # each a call to the next source, GreyNoise: one lookup
            status, body, _ = intel(f"185.220.103.{i}", gina)
            assert status == 200 and body["source"] != "abuseipdb" and not body["cached"], body
        status, body, headers = intel("185.220.103.99", gina)
        _refused_by_budget(status, body, headers)
    assert fake.call_count("abuseipdb") == 0
    with _cooling_down(runtime, IP_SOURCE_ORDER):
        for _ in range(3):
            status, body, _ = intel("185.220.104.1", hank)
            assert status == 429 and "out of quota" in body["error"]["message"], body
    for i in range(1, BUDGET + 1):  # the refusals spent nothing
        status, body, _ = intel(f"185.220.104.{i}", hank)
        assert status == 200 and not body["cached"], body


def test_an_address_a_later_source_has_cached_is_free_with_the_budget_spent(env):
    """GET /detect/intel asks the IP sources in order: a reader with the budget spent was refused (429) at the first
    source with no cached answer, though a later one had the address cached (AbuseIPDB cooling down when it was
    first looked up, GreyNoise answered), and a cached address costs nothing. A refusal of the budget moves on to
    the next source as a quota refusal does, and is the answer only when no source has the address cached."""
    intel, fake, runtime = env["intel"], env["fake"], env["runtime"]
    ivy = env["bearer"]("budget-ivy", "reader")
    for i in range(1, BUDGET + 1):
        status, body, _ = intel(f"185.220.105.{i}", ivy)
        assert status == 200 and not body["cached"], body
    _cache(runtime, "greynoise", "ipv4", "185.220.105.50")
    status, body, _ = intel("185.220.105.50", ivy)
    assert status == 200 and body["cached"] and body["source"] == "greynoise", body
    assert fake.call_count("abuseipdb", "185.220.105.50") == 0
    status, body, headers = intel("185.220.105.51", ivy)  # cached nowhere: the budget's refusal
    _refused_by_budget(status, body, headers)


def test_a_batch_over_what_is_left_is_refused_whole_and_cached_values_are_free(env, db):
    api, runtime = env["api"], env["runtime"]
    carol, dave = env["bearer"]("budget-carol", "analyst"), env["bearer"]("budget-dave", "analyst")
    first = [f"45.95.149.{i}" for i in range(1, BUDGET)]  # BUDGET - 1 lookups: VirusTotal only, nothing cached
    response = api.post("/api/v1/enrichment/batch", json={"iocs": first, "sources": ["virustotal"]}, headers=carol)
    assert response.status_code == 202, response.get_json()
    second = [f"45.95.150.{i}" for i in range(1, 3)]  # 2 more: over the 1 left
    response = api.post("/api/v1/enrichment/batch", json={"iocs": second, "sources": ["virustotal"]}, headers=carol)
    _refused_by_budget(response.status_code, response.get_json(), response.headers)
    assert response.get_json()["error"]["details"]["cost"] == 2
    stored = db.one("SELECT count(*) FROM iocs WHERE value = ANY(%s)", second)[0]
    assert stored == 0, "a refused batch stored its values"
    # Values whose every asked source has a fresh answer are free: served at once, even with the budget spent.
    cached = [f"45.95.151.{i}" for i in range(1, 6)]
    for value in cached:
        _cache(runtime, "virustotal", "ipv4", value)
    response = api.post("/api/v1/enrichment/batch", json={"iocs": cached, "sources": ["virustotal"]}, headers=carol)
    assert response.status_code == 202, response.get_json()
    assert all(run["cached"] for run in response.get_json()["runs"])
    # Forced, the same values leave the cache: charged.
    response = api.post("/api/v1/enrichment/batch", json={"iocs": cached[:2], "sources": ["virustotal"], "force": True}, headers=carol)
    _refused_by_budget(response.status_code, response.get_json(), response.headers)
    # One lookup left: POST /enrich of a new value asking one source is served, the next is refused.
    response = api.post("/api/v1/enrichment/enrich", json={"value": "45.95.152.1", "sources": ["virustotal"]}, headers=carol)
    assert response.status_code == 202, response.get_json()
    response = api.post("/api/v1/enrichment/enrich", json={"value": "45.95.152.2", "sources": ["virustotal"]}, headers=carol)
    _refused_by_budget(response.status_code, response.get_json(), response.headers)
    response = api.post("/api/v1/enrichment/batch", json={"iocs": second, "sources": ["virustotal"]}, headers=dave)
    assert response.status_code == 202, response.get_json()  # another analyst is served


class _Unpublishable:
    """The runtime's real publisher, except that a request of enrichment cannot be published (the broker is down)."""

    def __init__(self, publisher):
        self._publisher = publisher

    def publish(self, topic, data, attributes=None):
        return self._fail(topic) if topic == "ioc-enrichment-requested" else self._publisher.publish(topic, data, attributes)

    def publish_many(self, topic, messages):
        return self._fail(topic) if topic == "ioc-enrichment-requested" else self._publisher.publish_many(topic, messages)

    @staticmethod
    def _fail(topic):
        from threatflow.platform.errors import DependencyError

        raise DependencyError(f"Pub/Sub publish to {topic!r} failed")


def test_a_request_that_cannot_be_published_spends_none_of_the_budget(env):
    """POST /enrich and /batch charge the budget, then record and publish their runs; when the publish fails the
    caller gets an error and never sees a run (they are deleted), but the charge was kept: a batch of the whole budget
    that failed so left its user nothing for the hour. What a failed request charged is given back."""
    from werkzeug.test import Client
    from werkzeug.wrappers import Request

    from threatflow.enrichment.api import build_router
    from threatflow.runtime import Runtime

    real = env["runtime"]
    failing = Runtime(
        real.settings, clients={"publisher": _Unpublishable(real.publisher), "documents": real.documents, "engine": real.engine}
    )
    broken = Client(Request.application(build_router(failing).handle))
    kate = env["bearer"]("budget-kate", "analyst")
    values = [f"45.95.155.{i}" for i in range(1, BUDGET + 1)]
    response = broken.post("/api/v1/enrichment/batch", json={"iocs": values, "sources": ["virustotal"]}, headers=kate)
    assert response.status_code == 503, response.get_json()
    response = broken.post("/api/v1/enrichment/enrich", json={"value": "45.95.155.50", "sources": ["virustotal"]}, headers=kate)
    assert response.status_code == 503, response.get_json()
    response = env["api"].post("/api/v1/enrichment/batch", json={"iocs": values, "sources": ["virustotal"]}, headers=kate)
    assert response.status_code == 202, response.get_json()


def test_a_batch_larger_than_the_whole_budget_is_a_413_naming_it(env):
    api = env["api"]
    erin = env["bearer"]("budget-erin", "analyst")
    values = [f"45.95.153.{i}" for i in range(1, BUDGET + 2)]
    response = api.post("/api/v1/enrichment/batch", json={"iocs": values, "sources": ["virustotal"]}, headers=erin)
    body = response.get_json()
    assert response.status_code == 413, body
    wanted = {"budget": "enrichment", "field": "iocs", "limit": BUDGET, "period_seconds": 3600, "cost": BUDGET + 1}
    assert body["error"]["details"] == wanted, body
    # Refused before anything was charged: a batch within the budget still fits whole.
    response = api.post("/api/v1/enrichment/batch", json={"iocs": values[:BUDGET], "sources": ["virustotal"]}, headers=erin)
    assert response.status_code == 202, response.get_json()


def test_a_value_repeated_in_a_batch_is_charged_once_and_unasked_sources_are_free(env):
    api = env["api"]
    frank = env["bearer"]("budget-frank", "analyst")
    value = "45.95.154.1"
    # one IPv4 value five times, asking VirusTotal and Hybrid Analysis (which does not look up IPv4): 1 lookup
    body = {"iocs": [value] * 5 + [{"value": value, "force": True}], "sources": ["virustotal", "hybrid_analysis"]}
    for _ in range(BUDGET):
        response = api.post("/api/v1/enrichment/batch", json=body, headers=frank)
        assert response.status_code == 202, response.get_json()
    response = api.post("/api/v1/enrichment/batch", json=body, headers=frank)
    _refused_by_budget(response.status_code, response.get_json(), response.headers)


def test_source_health_is_checked_at_most_once_a_minute_whoever_asks(env):
    api, fake = env["api"], env["fake"]
    analysts = [env["bearer"](f"budget-health-{i}", "analyst") for i in range(3)]
    answers: list = []

    def ask(headers):
        answers.append(api.post("/api/v1/enrichment/health", headers=headers))

    threads = [threading.Thread(target=ask, args=(h,)) for h in analysts * 2]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert [a.status_code for a in answers] == [200] * 6, [a.get_json() for a in answers]
    probed = sum(fake.state.health_calls.values())
    enabled = len(answers[0].get_json()["sources"])
    assert enabled > 0 and probed == enabled, f"{probed} HEAD requests for 6 calls of {enabled} sources"
    bodies = [a.get_json() for a in answers]
    assert len({b["checked_at"] for b in bodies}) == 1 and all(b["max_age_seconds"] == 60 for b in bodies), bodies
    assert api.post("/api/v1/enrichment/health", headers=analysts[0]).get_json()["sources"] == bodies[0]["sources"]
    assert sum(fake.state.health_calls.values()) == enabled


def test_the_budget_setting_is_checked_at_start_up():
    from threatflow.enrichment.settings import load
    from threatflow.platform.errors import ConfigError
    from threatflow.platform.manifest import load_manifest

    base = load_manifest().sources_env()
    assert load(base).user_budget_per_hour == 10_000
    assert load({**base, "ENRICH_USER_BUDGET_PER_HOUR": "25"}).user_budget_per_hour == 25
    for bad in ("0", "-3", "lots", "1.5"):
        with pytest.raises(ConfigError, match="ENRICH_USER_BUDGET_PER_HOUR"):
            load({**base, "ENRICH_USER_BUDGET_PER_HOUR": bad})


def _auto_cost(api, headers, ioc_type: str) -> int:
    """Source lookups a new, uncached IoC of `ioc_type` costs its auto-enrichment, read from GET /sources: the
    enabled sources auto-enriching the type that have what they need to be asked."""
    sources = api.get("/api/v1/enrichment/sources", headers=headers).get_json()["sources"]
    return sum(1 for s in sources if s["enabled"] and ioc_type in s["auto_enrich"] and s["health"] not in ("no_key", "not_implemented"))


def _auto_enriched_type(api, headers):
    """(type, value of i, lookups) of an auto-enriched type one new IoC of which fits the budget."""
    candidates = {
        "md5": lambda i: f"{i:032x}",
        "domain": lambda i: f"auto-budget-{i}.example-evil.net",
        "ipv4": lambda i: f"45.95.160.{i % 250}",
    }
    return next((t, v, c) for t, v in candidates.items() if 1 <= (c := _auto_cost(api, headers, t)) <= BUDGET)


def test_auto_enrichment_of_a_write_is_queued_within_the_writers_budget(env, db):
    """POST /iocs/batch queued every new IoC of an auto-enriched type for enrichment, uncharged: a writer got around
    the budget with new values (a batch of 10,000 new addresses, ~7 lookups each, as often as the request rate
    allowed). Now the new IoCs are queued in order while the writer's budget has room for their lookups; the write
    itself is never refused, the rest are stored but not queued, and the answer says how many and why."""
    import uuid

    from google.cloud import pubsub_v1

    api = env["api"]
    writer, other = env["bearer"]("budget-writer", "analyst"), env["bearer"]("budget-other-writer", "analyst")
    ioc_type, value, cost = _auto_enriched_type(api, writer)
    fits = BUDGET // cost
    subscriber = pubsub_v1.SubscriberClient()
    topic = pubsub_v1.PublisherClient().topic_path(PROJECT, "ioc-enrichment-requested")
    subscription = subscriber.subscription_path(PROJECT, f"auto-budget-{uuid.uuid4().hex[:8]}")
    subscriber.create_subscription(name=subscription, topic=topic)
    try:
        values = [value(1000 + i) for i in range(fits + 3)]
        iocs = env["iocs"]
        response = iocs.post("/api/v1/iocs/batch", json={"iocs": [{"value": v, "type": ioc_type} for v in values]}, headers=writer)
        assert response.status_code == 200, response.get_json()
        body = response.get_json()
        assert [r["status"] for r in body["results"]] == ["created"] * len(values), body  # the write is never refused
        ids = [r["id"] for r in body["results"]]
        auto = body["auto_enrichment"]
        assert auto["queued"] == fits and auto["lookups"] == fits * cost, auto
        assert auto["not_queued"] == len(values) - fits and "enrichment budget" in auto["reason"], auto
        queued = _pulled_ioc_ids(subscriber, subscription, until=len(ids[:fits]))
        assert queued == ids[:fits], (queued, ids)
        # The budget is spent as any request spends it: POST /enrich of a new value now waits.
        response = api.post("/api/v1/enrichment/enrich", json={"value": value(5000), "type": ioc_type}, headers=writer)
        _refused_by_budget(response.status_code, response.get_json(), response.headers)
        # Values already stored are no new IoCs: writing them again queues and charges nothing.
        again = iocs.post("/api/v1/iocs/batch", json={"iocs": [{"value": v, "type": ioc_type} for v in values]}, headers=writer)
        assert again.get_json()["auto_enrichment"] == {"queued": 0, "lookups": 0}, again.get_json()
        # Another writer's budget is their own.
        response = iocs.post("/api/v1/iocs/batch", json={"iocs": [{"value": value(6000), "type": ioc_type}]}, headers=other)
        assert response.get_json()["auto_enrichment"] == {"queued": 1, "lookups": cost}, response.get_json()
        assert _pulled_ioc_ids(subscriber, subscription, until=1) == [response.get_json()["results"][0]["id"]]
    finally:
        subscriber.delete_subscription(subscription=subscription)
    assert db.one("SELECT count(*) FROM iocs WHERE value = ANY(%s)", values)[0] == len(values)


def test_auto_enrichment_of_cached_values_is_free_and_queued_with_the_budget_spent(env):
    """A new IoC whose every auto-enriching source has a fresh answer in the cache costs nothing: queued whatever
    is left of the budget, as a cached /enrich is served."""
    import uuid

    from google.cloud import pubsub_v1

    from threatflow.enrichment import handlers

    api, iocs, runtime = env["api"], env["iocs"], env["runtime"]
    writer = env["bearer"]("budget-cached-writer", "analyst")
    ctx = handlers.context(runtime)
    cached = "45.95.161.7"
    for source in ctx.settings.enabled():
        if "ipv4" in source.auto_enrich:
            _cache(runtime, source.name, "ipv4", cached)
    spend = [f"45.95.162.{i}" for i in range(1, BUDGET + 1)]  # the whole budget, VirusTotal only
    assert api.post("/api/v1/enrichment/batch", json={"iocs": spend, "sources": ["virustotal"]}, headers=writer).status_code == 202
    subscriber = pubsub_v1.SubscriberClient()
    topic = pubsub_v1.PublisherClient().topic_path(PROJECT, "ioc-enrichment-requested")
    subscription = subscriber.subscription_path(PROJECT, f"auto-budget-{uuid.uuid4().hex[:8]}")
    subscriber.create_subscription(name=subscription, topic=topic)
    try:
        body = iocs.post("/api/v1/iocs/batch", json={"iocs": [{"value": cached}, {"value": "45.95.161.8"}]}, headers=writer).get_json()
        assert body["auto_enrichment"]["queued"] == 1 and body["auto_enrichment"]["lookups"] == 0, body
        assert body["auto_enrichment"]["not_queued"] == 1, body
        assert _pulled_ioc_ids(subscriber, subscription, until=1) == [body["results"][0]["id"]]
    finally:
        subscriber.delete_subscription(subscription=subscription)


def _pulled_ioc_ids(subscriber, subscription, *, until: int) -> list[int]:
    """The IoC ids the auto-enrichment messages on `subscription` name, pulled until `until` of them came (or a
    few empty pulls), then one more pull to see that nothing else was queued."""
    ids: list[int] = []
    for _ in range(8):
        response = subscriber.pull(subscription=subscription, max_messages=10, timeout=5)
        if response.received_messages:
            subscriber.acknowledge(subscription=subscription, ack_ids=[m.ack_id for m in response.received_messages])
        ids += [i for m in response.received_messages for i in json.loads(m.message.data).get("ioc_ids", [])]
        if len(ids) >= until:
            break
    response = subscriber.pull(subscription=subscription, max_messages=10, timeout=2)
    ids += [i for m in response.received_messages for i in json.loads(m.message.data).get("ioc_ids", [])]
    return ids


def test_a_write_whose_auto_enrichment_cannot_be_published_keeps_its_iocs_and_spends_no_budget(env):
    from werkzeug.test import Client
    from werkzeug.wrappers import Request

    from threatflow.iocs.api import build_router
    from threatflow.runtime import Runtime

    real = env["runtime"]
    failing = Runtime(
        real.settings, clients={"publisher": _Unpublishable(real.publisher), "documents": real.documents, "engine": real.engine}
    )
    broken = Client(Request.application(build_router(failing).handle))
    writer = env["bearer"]("budget-unpublished-writer", "analyst")
    ioc_type, value, cost = _auto_enriched_type(env["api"], writer)
    written = [{"value": value(2000 + i), "type": ioc_type} for i in range(BUDGET // cost)]  # the whole budget's worth
    response = broken.post("/api/v1/iocs/batch", json={"iocs": written}, headers=writer)
    body = response.get_json()
    assert response.status_code == 200 and [r["status"] for r in body["results"]] == ["created"] * len(written), body
    assert body["auto_enrichment"]["queued"] == 0 and "logged" in body["auto_enrichment"]["error"], body
    values = [f"45.95.164.{i}" for i in range(1, BUDGET + 1)]  # the whole budget is still there
    response = env["api"].post("/api/v1/enrichment/batch", json={"iocs": values, "sources": ["virustotal"]}, headers=writer)
    assert response.status_code == 202, response.get_json()


def _pulled(subscriber, subscription, *, pulls: int = 3) -> list[dict]:
    """Every message's data on `subscription`, acknowledged, over a few pulls."""
    out: list[dict] = []
    for _ in range(pulls):
        response = subscriber.pull(subscription=subscription, max_messages=100, timeout=3)
        if response.received_messages:
            subscriber.acknowledge(subscription=subscription, ack_ids=[m.ack_id for m in response.received_messages])
        out += [json.loads(m.message.data) for m in response.received_messages]
    return out


def test_a_new_iocs_tlp_lowered_before_dispatch_gets_no_uncharged_auto_enrichment(env):
    """A write's auto-enrichment is charged by the new IoCs' TLP when written; enrich-dispatch read their TLP again
    when it expanded the message. New addresses written at TLP:RED cost nothing (every source's maximum is below it)
    and were queued; the same batch again at TLP:CLEAR, before the message was dispatched, and every auto-enriching
    source was asked about each of them, none of it charged. Dispatch now asks no more than the TLP charged allows."""
    import uuid

    from google.cloud import pubsub_v1

    from threatflow.enrichment import handlers
    from threatflow.platform.events import Message

    runtime, iocs = env["runtime"], env["iocs"]
    writer = env["bearer"]("budget-red-writer", "analyst", clearance="red")
    values = [f"45.95.171.{i}" for i in range(1, 2 * BUDGET + 1)]  # twice the budget's worth of new addresses
    subscriber = pubsub_v1.SubscriberClient()
    publisher = pubsub_v1.PublisherClient()
    requested = subscriber.subscription_path(PROJECT, f"auto-red-{uuid.uuid4().hex[:8]}")
    tasks = subscriber.subscription_path(PROJECT, f"auto-red-tasks-{uuid.uuid4().hex[:8]}")
    subscriber.create_subscription(name=requested, topic=publisher.topic_path(PROJECT, "ioc-enrichment-requested"))
    subscriber.create_subscription(name=tasks, topic=publisher.topic_path(PROJECT, "enrichment-tasks"))
    try:
        body = iocs.post("/api/v1/iocs/batch", json={"iocs": [{"value": v, "tlp": "red"} for v in values]}, headers=writer).get_json()
        ids = [r["id"] for r in body["results"]]
        charged = body["auto_enrichment"]["lookups"]
        lowered = iocs.post("/api/v1/iocs/batch", json={"iocs": [{"value": v, "tlp": "clear"} for v in values]}, headers=writer)
        assert [r["status"] for r in lowered.get_json()["results"]] == ["updated"] * len(values), lowered.get_json()
        messages = [m for m in _pulled(subscriber, requested) if set(m.get("ioc_ids", [])) & set(ids)]
        for data in messages:  # enrich-dispatch, as the pipeline runs it
            handlers.handle_request(Message(uuid.uuid4().hex, {"origin": "ingest"}, data, datetime.now(UTC), 1), runtime=runtime)
        asked = [t for t in _pulled(subscriber, tasks) if t.get("ioc_id") in ids]
        assert len(asked) <= charged, f"{len(asked)} source lookups dispatched, {charged} charged: {body['auto_enrichment']}"
    finally:
        subscriber.delete_subscription(subscription=requested)
        subscriber.delete_subscription(subscription=tasks)



@pytest.mark.parametrize("per_hour", [4, 243, 249, 486, 500, 996])
def test_what_is_left_of_a_budget_is_exactly_what_a_charge_may_spend(env, per_hour):
    """UserBudget.charge_up_to charges what fits of what is left, read with a cost of 0 (the GCRA's `remaining`).
    `remaining` was floor((tolerance - (tat - now)) / interval), which for some budgets rounds one below what a charge
    may spend: a full budget of 243 a hour read 242, so a write costing more than all of it queued 242 lookups, not
    243. It is now the largest cost the script would admit (checked by the same comparison)."""
    import uuid

    from threatflow.enrichment import handlers
    from threatflow.enrichment.budget import UserBudget

    limiter = handlers.context(env["runtime"]).budget._limiter
    budget = UserBudget(limiter=limiter, per_hour=per_hour)
    user = f"budget-exact-{uuid.uuid4().hex[:8]}"
    assert sum(budget.charge_up_to(user, [1] * (per_hour + 5))) == per_hour  # the whole budget, fresh
    budget.refund(user, 3)
    assert sum(budget.charge_up_to(user, [1] * 10)) == 3  # what was given back, no less


def test_a_write_over_its_budget_names_the_new_iocs_it_did_not_queue(env):
    """The IoCs that fit are queued in order, each whole or not at all, so a cheaper one after an IoC that did not
    fit is queued and the one before it is not; a cached one is queued whatever is left. The answer said only how
    many were not queued ("enrich them later"): which ones could not be told from it. It names them now."""
    import uuid

    from google.cloud import pubsub_v1

    api, iocs = env["api"], env["iocs"]
    writer = env["bearer"]("budget-named-writer", "analyst")
    costs = {t: _auto_cost(api, writer, t) for t in ("ipv4", "md5", "sha256")}
    big = max(costs, key=lambda t: costs[t])
    small = min((t for t in costs if costs[t] >= 1), key=lambda t: costs[t])
    if costs[big] <= costs[small] or costs[big] > BUDGET:
        pytest.skip(f"needs two auto-enriched types of different costs within the budget: {costs}")
    value = {"ipv4": lambda i: f"45.95.172.{i}", "md5": lambda i: f"{0xABC000 + i:032x}", "sha256": lambda i: f"{0xABC000 + i:064x}"}
    if not costs[big] + 2 * costs[small] <= BUDGET < 2 * costs[big] + costs[small]:
        pytest.skip(f"needs a big IoC that does not fit after a big and a small one, and a small one that does: {costs}")
    written = [{"value": value[t](i), "type": t} for i, t in enumerate([big, small, big, small])]  # the third is left out
    subscriber = pubsub_v1.SubscriberClient()
    subscription = subscriber.subscription_path(PROJECT, f"auto-named-{uuid.uuid4().hex[:8]}")
    subscriber.create_subscription(name=subscription, topic=pubsub_v1.PublisherClient().topic_path(PROJECT, "ioc-enrichment-requested"))
    try:
        body = iocs.post("/api/v1/iocs/batch", json={"iocs": written}, headers=writer).get_json()
        ids = [r["id"] for r in body["results"]]
        queued = [i for m in _pulled(subscriber, subscription) for i in m.get("ioc_ids", []) if i in ids]
    finally:
        subscriber.delete_subscription(subscription=subscription)
    auto = body["auto_enrichment"]
    assert queued == [ids[0], ids[1], ids[3]], (queued, ids, auto)
    assert auto.get("not_queued_ids") == [i for i in ids if i not in queued], auto
    assert auto["not_queued"] == len(auto["not_queued_ids"]), auto


def test_a_write_with_redis_unreachable_queues_its_auto_enrichment_uncharged(env, function_client):
    """With Redis unreachable the budget allows what it cannot count, as it allows a request (the sources' quotas and
    cache need Redis too, so the tasks wait for it). The write's auto-enrichment was dropped instead: the cache lookup
    of its plan failed before the budget's rule, so the answer said "error" and nothing was ever queued."""
    import uuid

    from google.cloud import pubsub_v1

    writer = env["bearer"]("budget-no-redis-writer", "analyst")
    ioc_type, value, _ = _auto_enriched_type(env["api"], writer)
    no_redis = function_client("iocs", REDIS_URL="redis://127.0.0.1:1/0")
    subscriber = pubsub_v1.SubscriberClient()
    topic = pubsub_v1.PublisherClient().topic_path(PROJECT, "ioc-enrichment-requested")
    subscription = subscriber.subscription_path(PROJECT, f"auto-budget-{uuid.uuid4().hex[:8]}")
    subscriber.create_subscription(name=subscription, topic=topic)
    try:
        written = [{"value": value(3000 + i), "type": ioc_type} for i in range(BUDGET + 2)]
        response = no_redis.post("/api/v1/iocs/batch", json={"iocs": written}, headers=writer)
        body = response.get_json()
        assert response.status_code == 200 and [r["status"] for r in body["results"]] == ["created"] * len(written), body
        assert body["auto_enrichment"]["queued"] == len(written) and "error" not in body["auto_enrichment"], body
        assert _pulled_ioc_ids(subscriber, subscription, until=len(written)) == [r["id"] for r in body["results"]]
    finally:
        subscriber.delete_subscription(subscription=subscription)
