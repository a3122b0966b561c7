"""Issue 7: every route of every HTTP function, fuzzed (Hypothesis): never a 5xx, errors always JSON.

The budget is bounded (FUZZ_EXAMPLES per function, about a minute in all);
tests/perf/bench_gateway_limits.py fuzzes through the gateway and prints the counts (run this with -s for
per-function counts; FUZZ_EXAMPLES raises the budget)."""

import os
import sys

import pytest
from helpers import SHARED_DATA, create_user
from hypothesis import HealthCheck, given, settings
from route_fuzz import HTTP_FUNCTIONS, MODEL_FUNCTIONS, Tally, attack_data, check, requests_for, routes_of

pytestmark = pytest.mark.integration
EXAMPLES = int(os.environ.get("FUZZ_EXAMPLES", "100"))
DEFAULT_RECURSION_LIMIT = sys.getrecursionlimit()  # read at import, before Hypothesis raises it


@pytest.fixture
def fake_intel():
    """The intel APIs the enrichment routes reach (POST /health): local fakes, never the network."""
    from tests.fakes.intel import start_fake_intel

    fake = start_fake_intel()
    yield fake
    fake.close()
    for key in fake.env():
        os.environ.pop(key, None)  # later tests must not reach a closed fake


@pytest.fixture
def manifest_topics(backend_env):
    """Every topic of the manifest, as a deployment (Terraform) and the local stack have them: a route that publishes
    (POST /admin/jobs/{name}/run) answered 503 "Topic not found" when no earlier test of the worker had made its topic,
    so an empty body drawn for it failed the fuzz by the order the tests ran in."""
    import contextlib

    from google.cloud import pubsub_v1

    from threatflow.platform.manifest import load_manifest

    publisher = pubsub_v1.PublisherClient()
    for name in load_manifest().topics:
        with contextlib.suppress(Exception):  # made by an earlier test of this run
            publisher.create_topic(name=publisher.topic_path(backend_env["GOOGLE_CLOUD_PROJECT"], name))


@pytest.mark.parametrize("function", HTTP_FUNCTIONS)
def test_no_route_answers_5xx_or_non_json_errors(function_client, backend_env, manifest_topics, function, request, tmp_path):
    attack = SHARED_DATA / "attack" / "attack_techniques.json"
    extra = {"RATE_LIMIT_PER_USER": "100000/60", "RATE_LIMIT_PER_IP": "100000/60", "RATE_LIMIT_LOGIN_PER_IP": "100000/60"}
    if function in ("enrichment", "detect"):  # detect mounts GET /api/v1/detect/intel/{ip}: fakes, never the network
        extra.update(request.getfixturevalue("fake_intel").env())
    extra["ATTACK_DATA_PATH"] = str(attack_data(attack, tmp_path))
    os.environ.update(extra)
    password = create_user(backend_env["DATABASE_URL"], "fuzzadmin", "admin", clearance="red")
    auth = function_client("auth")
    token = auth.post("/api/v1/auth/token", json={"username": "fuzzadmin", "password": password}).get_json()["access_token"]
    if function in MODEL_FUNCTIONS:
        from flows_support import publish, trained_model

        from threatflow.adapters.storage import GcsBlobs

        publish(GcsBlobs(backend_env["GOOGLE_CLOUD_PROJECT"]), trained_model())
    client = auth if function == "auth" else function_client(function, **extra)
    routes = routes_of(function)
    tally = Tally()
    headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}

    @settings(max_examples=EXAMPLES, deadline=None, database=None, suppress_health_check=list(HealthCheck))
    @given(requests_for(routes))
    def fuzz(request):
        method, path, query, body = request
        # The interpreter's default limit, as in a gunicorn worker: Hypothesis raises it while a test runs,
        # and under its limit a body nested 1,200 deep decoded here but was a RecursionError (a 500) there.
        raised = sys.getrecursionlimit()
        sys.setrecursionlimit(DEFAULT_RECURSION_LIMIT)
        try:
            response = client.open(path, method=method, query_string=query, data=body, headers=headers)
        finally:
            sys.setrecursionlimit(raised)
        if response.status_code < 300 and path.split("?", 1)[0].endswith("/revoke"):
            # POST /auth/revoke (or the admin's revoke of fuzzadmin) ended the token: log in again, so the routes
            # behind authentication go on being exercised rather than answering 401.
            renewed = auth.post("/api/v1/auth/token", json={"username": "fuzzadmin", "password": password})
            headers["Authorization"] = f"Bearer {renewed.get_json()['access_token']}"
        check(
            tally,
            f"{method} {path} {query} {body[:80] if body else b''!r}",
            response.status_code,
            response.content_type or "",
            response.data,
        )

    fuzz()
    print(
        f"{function}: {tally.requests} fuzzed requests, {len(tally.server_errors)} 5xx, {len(tally.not_json)} non-JSON errors,"
        f" {len(tally.missing)} 503s naming unconfigured reference data;"
        f" flow-scoring routes by status: {dict(sorted(tally.scored.items()))}"
    )
    assert tally.server_errors == [], "\n".join(tally.server_errors[:10])
    # A refused token would leave every handler behind authentication unexercised, and the test would still pass.
    assert tally.unauthenticated == [], "the token was refused:\n" + "\n".join(tally.unauthenticated[:5])
    assert tally.not_json == [], "\n".join(tally.not_json[:10])
