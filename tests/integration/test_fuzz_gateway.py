"""Every route of every HTTP function fuzzed through the real server: the local gateway (gunicorn).

test_fuzz_routes.py calls each function in process through Flask's test client. That missed what
only the server shows: a gunicorn worker runs at the interpreter's default recursion limit (a body
nested 1,200 deep was a 500 there and a 400 in the test), and gunicorn parses the request line and
headers and writes its own errors. This file sends a smaller budget (FUZZ_GATEWAY_EXAMPLES per
function) over sockets to the gateway, on this run's own services; tests/perf/bench_gateway_limits.py
sends thousands and prints the counts.
"""

import contextlib
import os
import subprocess
import sys

import pytest
from helpers import SHARED_DATA, create_user
from route_fuzz import HTTP_FUNCTIONS, Tally, attack_data, fuzz_over_http

pytestmark = pytest.mark.integration
EXAMPLES = int(os.environ.get("FUZZ_GATEWAY_EXAMPLES", "40"))


@pytest.fixture
def gateway(backend_env, tmp_path):
    """The gateway on a free port, one worker of 4 threads, with a model promoted and the manifest's topics."""
    from flows_support import publish, trained_model
    from google.cloud import pubsub_v1

    from tests.fakes.intel import start_fake_intel
    from threatflow.adapters.storage import GcsBlobs
    from threatflow.devstack import services
    from threatflow.platform.manifest import load_manifest

    publish(GcsBlobs(backend_env["GOOGLE_CLOUD_PROJECT"]), trained_model())
    publisher = pubsub_v1.PublisherClient()
    for topic in load_manifest().topics:
        with contextlib.suppress(Exception):  # already made by an earlier test on this worker
            publisher.create_topic(name=publisher.topic_path(backend_env["GOOGLE_CLOUD_PROJECT"], topic))
    fake = start_fake_intel()  # GET /api/v1/detect/intel/{ip} and enrichment reach the fakes, never the network
    env = {
        **os.environ,
        **backend_env,
        **fake.env(),
        "LOG_LEVEL": "ERROR",
        "RATE_LIMIT_PER_USER": "100000/60",
        "RATE_LIMIT_PER_IP": "100000/60",
        "RATE_LIMIT_LOGIN_PER_IP": "100000/60",
    }
    attack = SHARED_DATA / "attack" / "attack_techniques.json"
    env["ATTACK_DATA_PATH"] = str(attack_data(attack, tmp_path))
    port = services.free_port()
    log_path = tmp_path / "gateway.log"
    command = [sys.executable, "-m", "threatflow.devstack.gateway", "--port", str(port), "--workers", "1", "--threads", "4"]
    with log_path.open("wb") as log:
        process = subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        services.wait_for_port(port, timeout=90, name="gateway", log_path=log_path, command=command)
        yield port, log_path
    finally:
        process.terminate()
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=10)
        fake.close()


def test_no_route_answers_5xx_or_non_json_errors_through_the_gateway(gateway, backend_env):
    import requests

    port, log_path = gateway
    password = create_user(backend_env["DATABASE_URL"], "gatewayfuzz", "admin", clearance="red")

    def sign_in() -> str:
        signed_in = requests.post(
            f"http://127.0.0.1:{port}/api/v1/auth/token", json={"username": "gatewayfuzz", "password": password}, timeout=60
        )
        assert signed_in.status_code == 200, signed_in.text
        return str(signed_in.json()["access_token"])

    tally = Tally()
    fuzz_over_http(port, sign_in, examples_per_function=EXAMPLES, tally=tally)
    print(
        f"through the gateway: {tally.requests} fuzzed requests, {len(tally.server_errors)} 5xx,"
        f" {len(tally.not_json)} non-JSON errors, {len(tally.missing)} 503s naming unconfigured reference data"
    )
    assert tally.requests >= EXAMPLES * len(HTTP_FUNCTIONS) // 2, "most examples never reached the server"
    # With a token the gateway refused, every authenticated route answered a JSON 401 and the checks above passed: no handler ran.
    assert tally.unauthenticated == [], "the token was refused:\n" + "\n".join(tally.unauthenticated[:5])
    log_tail = log_path.read_text(errors="replace")[-3000:]
    assert tally.server_errors == [], "\n".join(tally.server_errors[:10]) + "\n--- gateway log ---\n" + log_tail
    assert tally.not_json == [], "\n".join(tally.not_json[:10])
