"""An authenticated push whose body is not a Pub/Sub envelope gets a JSON 400 from every topic
function, never functions-framework's 500 (a body that is not JSON, a number too long for Python's
int conversion, or JSON that is not an object)."""

from pathlib import Path

import pytest

from threatflow.platform.manifest import load_manifest

pytestmark = pytest.mark.integration
REPO = Path(__file__).resolve().parents[2]

TOPIC_FUNCTIONS = sorted(
    name
    for name, fn in load_manifest().functions.items()
    if fn.signature_type == "cloudevent" and (REPO / "functions" / name / "main.py").exists()
)
BODIES = {
    "not JSON": b"\x00\xffnot json{",
    "truncated": b'{"message": {"data": "e30=",',
    "a number of 5,000 digits": b'{"message": {"data": "e30=", "attributes": {}, "messageId": ' + b"9" * 5000 + b"}}",
    "an array": b"[1, 2, 3]",
    "a string": b'"hello"',
    "deep nesting": b"[" * 100_000 + b"]" * 100_000,
}


@pytest.mark.parametrize("function", TOPIC_FUNCTIONS)
def test_a_body_that_is_not_an_envelope_is_a_json_400(function_client, function):
    client = function_client(function)
    for name, body in BODIES.items():
        response = client.post("/", data=body, content_type="application/json")
        assert response.status_code == 400, (name, response.status_code, response.data[:200])
        assert response.get_json()["error"]["code"] == "validation", name


def test_a_forged_push_is_refused_before_its_body_is_read(function_client):
    client = function_client(TOPIC_FUNCTIONS[0])
    response = client.post("/", data=b"\x00not json", content_type="application/json", query_string={"token": "guess"})
    assert response.status_code == 401
