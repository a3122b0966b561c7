"""Upstream answers that are valid JSON but not storable as they come, through the real cache and result tables.

JSON may carry the escape \\u0000, and json.loads makes it a NUL character, which PostgreSQL accepts neither in text
nor in jsonb. A source naming a tag or a file with one (GreyNoise's `name`, a sandbox's submit name) made the
cache's INSERT fail: `GET /detect/intel/{ip}` answered 500, and a pipeline task failed every delivery into the
dead letter, its run closing with the source `timeout`. A lone UTF-16 surrogate (`\\ud800`) likewise."""

import json

import pytest
from fakes.canned import start_canned
from helpers import enrichment_ioc

pytestmark = pytest.mark.integration

BODY = {
    "ip": "185.220.101.1",
    "noise": True,
    "riot": False,
    "classification": "malicious\u0000",
    "name": "Tor\u0000exit",
    "link": "https://viz.greynoise.io/ip/185.220.101.1",
    "last_seen": "2026-11-20",
    "message": "Success",
}


@pytest.fixture(params=["nul", "lone-surrogate"])
def enrichment(request, backend_env, monkeypatch):
    from threatflow.enrichment.handlers import Enrichment
    from threatflow.runtime import Runtime

    with start_canned() as canned:
        odd = "\u0000" if request.param == "nul" else "\ud800"  # a lone surrogate: PostgreSQL's jsonb refuses it too
        body = {k: v.replace("\u0000", odd) if isinstance(v, str) else v for k, v in BODY.items()}
        canned.answer(200, json.dumps(body).encode())
        monkeypatch.setenv("INTEL_GREYNOISE_URL", canned.url)
        runtime = Runtime.from_env()
        yield Enrichment(runtime)
        runtime.engine.dispose()


def test_a_nul_character_or_lone_surrogate_in_an_answer_is_dropped_before_it_is_cached_or_stored(enrichment):
    from threatflow.adapters.postgres import unit_of_work
    from threatflow.enrichment import api, repository
    from threatflow.enrichment.handlers import result_row
    from threatflow.enrichment.tasks import Task
    from threatflow.enrichment.worker import execute

    answer = api.ip_reputation("185.220.101.1", enrichment=enrichment, clearance="red", charge=None, sources=("greynoise",))
    assert answer["source"] == "greynoise" and answer["verdict"] == "malicious" and not answer["cached"]
    assert "\\u0000" not in json.dumps(answer["evidence"]) and "\\ud800" not in json.dumps(answer["evidence"])
    again = api.ip_reputation("185.220.101.1", enrichment=enrichment, clearance="red", charge=None, sources=("greynoise",))
    assert again["cached"] and again["verdict"] == "malicious"  # the cache row was written and is read back

    source = enrichment.settings.sources["greynoise"]
    ioc_id = enrichment_ioc(enrichment.runtime, "185.220.101.1")
    task = Task("nul-run", ioc_id, "ipv4", "185.220.101.1", "greynoise")
    outcome = execute(task, source=source, key_id="k", cache=enrichment.cache, redis=enrichment.redis, quota=enrichment.quota,
                      call=lambda: pytest.fail("cached: no call"), now=enrichment.now, charge=None)  # fmt: skip
    assert outcome.result is not None
    with unit_of_work(enrichment.runtime.engine) as conn:  # what enrich-<source> stores for its run
        assert repository.insert_results(conn, [result_row("nul-run", ioc_id, outcome.result, cached=True)]) == 1
