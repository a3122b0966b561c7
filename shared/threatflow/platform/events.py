"""Pub/Sub push deliveries, decoded and acked or retried by the error tree.

Returning normally acks the message. Raising makes the push endpoint answer
5xx, so Pub/Sub redelivers with the subscription's backoff and, after the
maximum attempts, dead-letters it. So: a PermanentError (bad input) is logged
and acked; anything else is raised; an event older than MAX_EVENT_AGE_SECONDS
is dropped so a poison message cannot loop forever.
"""

from __future__ import annotations

import base64
import json
import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Protocol

from threatflow.platform import limits
from threatflow.platform import logging as tf_logging
from threatflow.platform.errors import PermanentError, RetryableError, ThreatFlowError, ValidationError

log = logging.getLogger("threatflow.events")
SCHEMA_VERSION = 1


@dataclass(frozen=True)
class Message:
    message_id: str
    attributes: Mapping[str, str]
    data: dict[str, Any]
    published_at: datetime
    delivery_attempt: int


def encode(payload: Mapping[str, Any]) -> bytes:
    """Every payload carries its schema version, so consumers can evolve safely."""
    return json.dumps({"schema_version": SCHEMA_VERSION, **payload}, separators=(",", ":"), default=str).encode()


def decode(cloud_event: Any) -> Message:
    envelope = cloud_event.data or {}
    message = envelope.get("message") if isinstance(envelope, dict) else None
    if not isinstance(message, dict):
        raise ValidationError("push envelope has no message object", field="message")
    raw = message.get("data")
    try:
        data = json.loads(base64.b64decode(raw)) if raw else {}
    except (ValueError, TypeError) as exc:
        raise ValidationError(f"message data is not base64 JSON: {exc}", field="message.data") from None
    if not isinstance(data, dict):
        raise ValidationError("message data must be a JSON object", field="message.data")
    version = data.get("schema_version", SCHEMA_VERSION)
    if version != SCHEMA_VERSION:
        raise ValidationError(f"unsupported schema_version {version!r}", field="schema_version")
    attributes = message.get("attributes") or {}
    if not isinstance(attributes, dict):
        raise ValidationError("message attributes must be an object", field="message.attributes")
    published = message.get("publishTime") or message.get("publish_time")
    try:
        published_at = datetime.fromisoformat(published.replace("Z", "+00:00")) if published else datetime.now(UTC)
    except (AttributeError, ValueError):
        raise ValidationError(f"publishTime {str(published)[:40]!r} is not an RFC 3339 time", field="message.publishTime") from None
    if published_at.tzinfo is None:
        raise ValidationError(f"publishTime {str(published)[:40]!r} has no time zone", field="message.publishTime")
    return Message(
        message_id=str(message.get("messageId") or message.get("message_id") or cloud_event["id"]),
        attributes=attributes,
        data=data,
        published_at=published_at,
        delivery_attempt=_delivery_attempt(envelope),
    )


def _delivery_attempt(envelope: Mapping[str, Any]) -> int:
    """Pub/Sub puts deliveryAttempt beside `message` in a push body (when the subscription has a
    dead-letter policy). functions-framework turns a raw push into a CloudEvent holding the message
    alone, so the count is read back from the request being served."""
    value = envelope.get("deliveryAttempt")
    if value is None:
        import flask

        body = flask.request.get_json(silent=True) if flask.has_request_context() else None
        value = body.get("deliveryAttempt") if isinstance(body, dict) else None
    try:
        return max(1, int(value or 1))
    except (TypeError, ValueError, OverflowError):  # junk, or a float infinity: Pub/Sub sends a small integer
        return 1


def handle(
    cloud_event: Any, handler: Callable[[Message], Any], *, function: str, max_age_seconds: int, now: datetime | None = None
) -> None:
    with tf_logging.execution_scope(None) as execution_id:
        try:
            message = decode(cloud_event)
        except PermanentError as exc:
            tf_logging.log(log, logging.ERROR, f"dropped undecodable message: {exc.message}", function=function)
            return
        fields = {"function": function, "message_id": message.message_id, "attempt": message.delivery_attempt}
        age = ((now or datetime.now(UTC)) - message.published_at).total_seconds()
        if age > max_age_seconds:
            tf_logging.log(log, logging.ERROR, f"dropped message older than {max_age_seconds} s", age_seconds=age, **fields)
            return
        try:
            handler(message)
        except PermanentError as exc:
            tf_logging.log(log, logging.ERROR, f"acked after permanent error: {exc.message}", code=exc.code, **fields)
            return
        except Exception as exc:
            tf_logging.log(log, logging.WARNING, f"will retry: {exc.__class__.__name__}: {exc}", **fields)
            if not isinstance(exc, RetryableError):
                raise  # a bug: its traceback is wanted
            # Expected, and said above: answered 503 (Pub/Sub redelivers) as an HTTP error, which Flask does not
            # log; raised as it was, functions-framework logged its traceback on every redelivery.
            from werkzeug.exceptions import ServiceUnavailable

            raise ServiceUnavailable(f"will retry: {exc.code}") from None
        tf_logging.log(log, logging.INFO, "handled", execution=execution_id, **fields)


class PushAuthenticator(Protocol):
    def verify(self, *, authorization: str | None, query: Mapping[str, str]) -> None: ...


def protect_push_endpoint(*, verifier: Callable[[], PushAuthenticator], function: str) -> None:
    """Call from a topic function's main.py at import: every push is authenticated
    before its body is even parsed, and every error is JSON.

    It hooks the functions-framework app being created (main.py runs inside its
    app context), so it is the same code in the cloud and behind the local
    gateway; only the verifier's configuration differs (see adapters/pushauth.py)."""
    import flask
    from werkzeug.exceptions import HTTPException

    if not flask.has_app_context():
        return  # imported outside functions-framework (a cold-start benchmark): nothing is served
    app = flask.current_app

    def authenticate() -> Any:
        try:
            verifier().verify(authorization=flask.request.headers.get("Authorization"), query=flask.request.args)
        except ThreatFlowError as exc:
            tf_logging.log(log, logging.WARNING, f"push refused: {exc.message}", function=function, status=exc.status)
            return _json_response(exc.to_json(), exc.status)
        try:
            _check_envelope(flask.request.get_data(cache=True))
        except ValidationError as exc:
            tf_logging.log(log, logging.WARNING, f"push body refused: {exc.message}", function=function, status=exc.status)
            return _json_response(exc.to_json(), exc.status)
        return None

    def http_error(exc: HTTPException) -> Any:
        # functions-framework's own 400 for a body that is not a CloudEvent would echo the headers back as HTML.
        status = exc.code or 500
        return _json_response(
            {"error": {"code": "bad_request" if status < 500 else "internal", "message": exc.name, "details": None}}, status
        )

    app.before_request(authenticate)
    app.register_error_handler(HTTPException, http_error)


# Top-level keys functions-framework reads before our function runs, without checking their types:
# `specversion` makes the body a structured CloudEvent, `context` (or `eventType` with `resource`) a
# legacy background event; a value of another shape there is its 500. A push envelope has none of them.
_FRAMEWORK_KEYS = ("specversion", "context", "eventType", "resource")


def _check_envelope(raw: bytes) -> None:
    """A push body must be a JSON object (the Pub/Sub envelope) before functions-framework parses it:
    its own parse answers 500 for what is not JSON, for a number past Python's 4,300-digit int limit,
    for nesting past the recursion limit, and for an object holding one of _FRAMEWORK_KEYS with a
    value of the wrong shape. Both parses are the standard library's, so one that passes here passes there."""
    limits.check_raw_json(raw, field="body")  # nesting past MAX_JSON_DEPTH, without recursion
    try:
        document = json.loads(raw)
    except (ValueError, RecursionError):  # ValueError: JSONDecodeError, bad UTF-8, the int digit limit
        raise ValidationError("the push body is not JSON", field="body") from None
    if not isinstance(document, dict):
        raise ValidationError("the push body is not a JSON object (a Pub/Sub push envelope)", field="body")
    for key in _FRAMEWORK_KEYS:
        if key in document:
            raise ValidationError(f"the push body is not a Pub/Sub push envelope: it has {key!r}", field=f"body.{key}")


def _json_response(body: Mapping[str, Any], status: int) -> Any:
    import flask

    response = flask.Response(json.dumps(body), status=status, content_type="application/json")
    if status == 401:
        response.headers["WWW-Authenticate"] = 'Bearer realm="pubsub-push"'
    return response
