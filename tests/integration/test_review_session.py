"""Attacks on this session's work (review2): the push body check, the rate-limit RefusalMemo and the
enrichment closer's compare-and-set, each against the real services of the run (tests/conftest.py)."""

from __future__ import annotations

import json

import pytest
from helpers import push_envelope

pytestmark = pytest.mark.integration

# -- push bodies: JSON objects that functions-framework itself cannot take ---------------------------------

# Objects that pass "is it a JSON object" but that functions-framework reads as something else before our
# function runs: `specversion` as a structured CloudEvent (an unhashable value, or a data_base64 that is not a
# string, is its TypeError), `context` / `eventType` + `resource` as a legacy background event (its conversion
# indexes them without a type check). Each was functions-framework's HTML 500 ("crash") before the fix.
PUBSUB_CONTEXT = {"eventId": "1", "timestamp": "t", "eventType": "google.pubsub.topic.publish"}
FRAMEWORK_BODIES = {
    "specversion a list": {"specversion": []},
    "specversion an object": {"specversion": {}},
    "structured, data_base64 a number": {"specversion": "1.0", "id": "1", "source": "s", "type": "t", "data_base64": 5},
    "context a number": {"context": 5, "data": {}},
    "context a string": {"context": "x", "data": {}},
    "context with unknown fields": {"context": {"foo": 1}, "data": {}},
    "context: a Pub/Sub event, resource without name": {
        "context": {
            "eventId": "1",
            "timestamp": "t",
            "eventType": "google.pubsub.topic.publish",
            "resource": {"service": "pubsub.googleapis.com"},
        },
        "data": {},
    },
    "context: a Pub/Sub event, data a number": {
        "context": {**PUBSUB_CONTEXT, "resource": "projects/p/topics/t"},
        "data": 5,
    },
    "eventType and a resource without name": {"eventType": "google.pubsub.topic.publish", "resource": {"service": "pubsub.googleapis.com"}},
}
BINARY_HEADERS = {
    "ce-specversion": "1.0",
    "ce-id": "1",
    "ce-source": "//pubsub.googleapis.com/projects/p/topics/t",
    "ce-type": "google.cloud.pubsub.topic.v1.messagePublished",
}


def test_objects_functions_framework_reads_as_other_events_are_a_json_400(function_client):
    client = function_client("maintenance")
    outcomes = {}
    for name, body in FRAMEWORK_BODIES.items():
        for mode, headers in (("plain", {}), ("binary, unknown specversion", {**BINARY_HEADERS, "ce-specversion": "9"})):
            response = client.post("/", data=json.dumps(body), content_type="application/json", headers=headers)
            outcomes[(name, mode)] = (response.status_code, (response.get_json(silent=True) or {}).get("error", {}).get("code"))
    assert outcomes == {key: (400, "validation") for key in outcomes}


def test_legitimate_envelopes_pass_the_body_check(function_client):
    """Pub/Sub's push envelope as it comes (with deliveryAttempt), in UTF-16 or with a UTF-8 BOM (the standard
    library reads both, as functions-framework does), with a charset, in binary CloudEvent mode (Eventarc), and
    with the JSON oddities both parsers accept the same way (NaN, a float overflowing to infinity, duplicate keys)."""
    client = function_client("maintenance")
    envelope = push_envelope({"job": "no-such-job"}, {}, "maintenance-push")  # an unknown job: logged and acked
    plain = json.dumps(envelope)
    bodies = {
        "plain": (plain.encode(), "application/json", {}),
        "with deliveryAttempt": (json.dumps({**envelope, "deliveryAttempt": 3}).encode(), "application/json", {}),
        "UTF-16": (plain.encode("utf-16"), "application/json", {}),
        "UTF-8 BOM": (b"\xef\xbb\xbf" + plain.encode(), "application/json", {}),
        "charset": (plain.encode(), "application/json; charset=utf-8", {}),
        "binary mode": (plain.encode(), "application/json", BINARY_HEADERS),
        "NaN and infinity": (plain[:-1].encode() + b', "x": NaN, "deliveryAttempt": 1e999}', "application/json", {}),
        "duplicate keys": (b'{"message": 1, ' + plain[1:].encode(), "application/json", {}),
    }
    statuses = {
        name: client.post("/", data=body, content_type=ctype, headers=headers).status_code
        for name, (body, ctype, headers) in bodies.items()
    }
    assert statuses == {name: 200 for name in bodies}
