import base64
import json
from datetime import UTC, datetime, timedelta

import pytest
from cloudevents.http import CloudEvent

from threatflow.platform import events
from threatflow.platform.errors import DependencyError, ValidationError


def _event(data, *, published=None, attributes=None):
    published = published or datetime.now(UTC)
    message = {
        "data": base64.b64encode(json.dumps(data).encode()).decode() if data is not None else None,
        "attributes": attributes or {"job": "heartbeat"},
        "messageId": "m-1",
        "publishTime": published.isoformat().replace("+00:00", "Z"),
    }
    return CloudEvent({"type": "google.cloud.pubsub.topic.v1.messagePublished", "source": "//pubsub", "id": "m-1"}, {"message": message})


def test_encode_carries_schema_version():
    assert json.loads(events.encode({"a": 1})) == {"schema_version": 1, "a": 1}


def test_decode_reads_message():
    msg = events.decode(_event({"schema_version": 1, "x": 2}))
    assert msg.message_id == "m-1"
    assert msg.data["x"] == 2
    assert msg.attributes["job"] == "heartbeat"


def test_delivery_attempt_is_read_from_the_push_body_functions_framework_converted():
    """functions-framework keeps only the message of a raw push; the attempt count beside it is still seen."""
    import flask

    event = _event({"schema_version": 1})
    assert events.decode(event).delivery_attempt == 1
    body = {"message": event.data["message"], "subscription": "projects/p/subscriptions/s", "deliveryAttempt": 5}
    with flask.Flask("t").test_request_context("/", method="POST", json=body):
        assert events.decode(event).delivery_attempt == 5
    with flask.Flask("t").test_request_context("/", method="POST", json={**body, "deliveryAttempt": "junk"}):
        assert events.decode(event).delivery_attempt == 1


def test_unsupported_schema_version_is_permanent():
    with pytest.raises(ValidationError, match="schema_version"):
        events.decode(_event({"schema_version": 99}))


def test_permanent_error_is_acked():
    calls = []

    def handler(message):
        calls.append(message)
        raise ValidationError("bad input", field="x")

    events.handle(_event({"schema_version": 1}), handler, function="t", max_age_seconds=60)  # does not raise: ack
    assert len(calls) == 1


def test_transient_error_is_a_503_for_redelivery():
    """Answered as an HTTP error (Flask logs no traceback for it); any other exception is raised as it is."""
    from werkzeug.exceptions import ServiceUnavailable

    def handler(message):
        raise DependencyError("database down")

    with pytest.raises(ServiceUnavailable):
        events.handle(_event({"schema_version": 1}), handler, function="t", max_age_seconds=60)

    def buggy(message):
        raise KeyError("bug")

    with pytest.raises(KeyError):
        events.handle(_event({"schema_version": 1}), buggy, function="t", max_age_seconds=60)


def test_old_event_is_dropped_without_calling_handler():
    calls = []
    old = _event({"schema_version": 1}, published=datetime.now(UTC) - timedelta(hours=2))
    events.handle(old, calls.append, function="t", max_age_seconds=3600)
    assert calls == []


def test_undecodable_data_is_acked():
    event = CloudEvent(
        {"type": "google.cloud.pubsub.topic.v1.messagePublished", "source": "//pubsub", "id": "x"},
        {"message": {"data": "%%%not base64", "messageId": "x"}},
    )
    calls = []
    events.handle(event, calls.append, function="t", max_age_seconds=60)
    assert calls == []
