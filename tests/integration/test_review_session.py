"""Attacks on this session's work (review2): the push body check, the rate-limit RefusalMemo and the
enrichment closer's compare-and-set, each against the real services of the run (tests/conftest.py)."""

from __future__ import annotations

import json

import pytest
from helpers import clear_enrichment_runs, enrichment_ioc, push_envelope, start_enrichment_run, store_enrichment_answer

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


def test_the_per_source_enrichment_functions_refuse_them_too(backend_env, monkeypatch):
    """enrich-<source> (nine deployed functions, one folder: functions/enrich-source) is not in test_push_bodies'
    list, which loads functions/<name>/main.py: loaded here as Terraform deploys it, with ENRICH_SOURCE set."""
    import os
    import sys
    from pathlib import Path

    import functions_framework

    monkeypatch.setenv("ENRICH_SOURCE", "virustotal")
    sys.modules.pop("main", None)
    source = Path(__file__).resolve().parents[2] / "functions" / "enrich-source" / "main.py"
    client = functions_framework.create_app(target="enrich_source", source=str(source), signature_type="cloudevent").test_client()
    token = {"token": os.environ["PUSH_AUTH_TOKEN"]}
    bodies = {**{name: json.dumps(body).encode() for name, body in FRAMEWORK_BODIES.items()}, "not JSON": b"\x00{", "an array": b"[]"}
    statuses = {
        name: client.post("/", data=body, content_type="application/json", query_string=token).status_code for name, body in bodies.items()
    }
    assert statuses == {name: 400 for name in bodies}
    assert client.post("/", data=b"[]", content_type="application/json").status_code == 401  # a forged push: refused first


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


# -- RefusalMemo: it must never refuse what Redis would allow ------------------------------------------------


class _SlowReplies:
    """A TCP hop in front of the run's real Redis that holds every reply for `delay` seconds (a slow network,
    or a request thread that waits for the GIL before it reads the answer): commands reach Redis at once, so
    Redis reads its clock `delay` seconds before the instance sees the answer."""

    def __init__(self, target_port: int, delay: float) -> None:
        import socket
        import threading

        self.delay = delay
        self._target = target_port
        self._server = socket.create_server(("127.0.0.1", 0))
        self.port = self._server.getsockname()[1]
        self._sockets: list[socket.socket] = [self._server]
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        import socket
        import threading

        while True:
            try:
                client, _ = self._server.accept()
            except OSError:
                return
            upstream = socket.create_connection(("127.0.0.1", self._target))
            self._sockets += [client, upstream]
            threading.Thread(target=self._pump, args=(client, upstream, 0.0), daemon=True).start()
            threading.Thread(target=self._pump, args=(upstream, client, self.delay), daemon=True).start()

    @staticmethod
    def _pump(source: object, sink: object, delay: float) -> None:
        import time

        while True:
            try:
                chunk = source.recv(65536)  # type: ignore[attr-defined]
            except OSError:
                return
            if not chunk:
                return
            time.sleep(delay)
            try:
                sink.sendall(chunk)  # type: ignore[attr-defined]
            except OSError:
                return

    def close(self) -> None:
        for sock in self._sockets:
            sock.close()


def test_a_remembered_refusal_ends_no_later_than_redis_s(function_client, backend_env):
    """The memo's wait must run from before the Redis call, not from when its answer arrived: with the answer
    0.4 s late, a request sent once Redis allows the address again (by Redis's own clock) goes to Redis and is
    served, instead of being refused from memory for the 0.4 s of the answer's delay."""
    import time
    from urllib.parse import urlsplit

    slow = _SlowReplies(urlsplit(backend_env["REDIS_URL"]).port or 6379, delay=0.4)
    try:
        url = urlsplit(backend_env["REDIS_URL"])._replace(netloc=f"127.0.0.1:{slow.port}").geturl()
        client = function_client("auth", REDIS_URL=url, REDIS_TIMEOUT_MS="5000", RATE_LIMIT_PER_IP="1/1", TRUSTED_PROXY_HOPS="1")

        def me(address: str) -> int:
            return int(client.get("/api/v1/auth/me", headers={"X-Forwarded-For": address}).status_code)

        assert me("198.51.100.60") == 401  # loads the script: the address under test starts on a warm connection
        assert me("198.51.100.61") == 401  # allowed (no token: 401), charged; Redis read its clock about 0.4 s ago
        redis_time_of_first = time.monotonic() - slow.delay
        assert me("198.51.100.61") == 429  # refused by Redis until redis_time_of_first + 1 s
        time.sleep(max(0.0, redis_time_of_first + 1.1 - time.monotonic()))
        assert me("198.51.100.61") == 401  # Redis allows it again: not refused from memory
    finally:
        slow.close()


# -- the enrichment closer: a dispatcher's write in the instant between its commit and its compare-and-set ----


@pytest.fixture
def enrichment(backend_env):
    from threatflow.runtime import Runtime

    runtime = Runtime.from_env()
    clear_enrichment_runs(runtime.documents)
    yield runtime
    runtime.engine.dispose()


def _overdue_run(runtime, value: str, *, expected: list[str], answered: list[str]) -> tuple[str, int]:
    """A run enrich-dispatch started, 30 s past its deadline, with answers stored for `answered`."""
    ioc_id = enrichment_ioc(runtime, value)
    run_id = start_enrichment_run(runtime, ioc_id, value, expected=expected, deadline_in=-30)
    for source in answered:
        store_enrichment_answer(runtime, run_id, ioc_id, source)
    return run_id, ioc_id


class _StartedBeforeTheDone:
    """The runtime's real Firestore store, except that enrich-dispatch starts run `run_id` again (runs.start_run,
    written to the emulator) just before the closer's compare-and-set write of `done` reaches it: after the
    closer's PostgreSQL commit, the gap closing.py documents."""

    def __init__(self, documents, run_id: str, deadline_at: float) -> None:
        self._documents, self._run_id, self._deadline_at, self.started = documents, run_id, deadline_at, False

    def __getattr__(self, name: str):
        return getattr(self._documents, name)

    def update_if_unchanged(self, collection: str, doc_id: str, data, *, version: str):
        from threatflow.enrichment import runs

        if doc_id == self._run_id and data.get("status") == "done" and not self.started:
            self.started = True
            runs.start_run(
                self._documents,
                doc_id,
                version=runs.get_run_versioned(self._documents, doc_id).version,
                expected=["abuseipdb", "virustotal"],
                skipped={},
                deadline_at=self._deadline_at,
            )
        return self._documents.update_if_unchanged(collection, doc_id, data, version=version)


def test_a_run_started_again_between_the_commit_and_the_done_waits_for_its_new_answers(enrichment):
    """The dispatcher's start lands after the closer committed its timeout rows but before its `done`: the
    compare-and-set refuses the done, and the rows it committed must not stand in for the answers the new start
    is waiting for (they would make the run due at once, close it on the next attempt and drop those answers)."""
    import time

    from threatflow.adapters.postgres import unit_of_work
    from threatflow.enrichment import closing, handlers, repository, runs
    from threatflow.intel import enrichment as intel_enrichment

    runtime = enrichment
    run_id, _ = _overdue_run(runtime, "45.95.147.60", expected=["abuseipdb", "virustotal"], answered=["virustotal"])
    new_deadline = time.time() + 600
    racing = _StartedBeforeTheDone(runtime.documents, run_id, new_deadline)
    ctx = handlers.context(runtime)

    result = closing.close_overdue(
        documents=racing, engine=runtime.engine, now=ctx.now, reliability=ctx.reliability(), apply_verdict=intel_enrichment.apply_verdict
    )

    assert racing.started and (result["closed"], result["changed"], result["failed"]) == (0, 1, 0), result
    run = runtime.documents.get(runs.RUNS, run_id)
    assert run["status"] == "running" and run["deadline_at"] == new_deadline, run
    with unit_of_work(runtime.engine) as conn:
        rows = {r["source"]: r["status"] for r in repository.run_results(conn, run_id)}
    assert rows == {"virustotal": "ok"}  # abuseipdb's answer to the new start can still be stored


# -- the overdue sweep's cursor: whatever the document holds, the sweep goes on ----------------------------------


@pytest.mark.parametrize(
    "cursor",
    [{"after": float("nan")}, {"after": float("inf")}, {"after": 1e300}, {"after": "soon"}, {"after": True}, {"after": [1]}, {}],
    ids=["nan", "infinity", "past-the-end", "a-string", "a-boolean", "a-list", "empty"],
)
def test_a_corrupt_or_past_the_end_cursor_does_not_stop_the_sweep(enrichment, cursor):
    """A cursor document written by hand (or by a bug): within two ticks the sweep closes an overdue run and the
    cursor is one it wrote. NaN was the one that stuck: the Firestore client refuses a range filter on NaN (a
    ValueError, not a Firestore error), so every tick failed before closing anything."""
    from threatflow.enrichment import closing, handlers, runs
    from threatflow.intel import enrichment as intel_enrichment

    runtime = enrichment
    run_id, _ = _overdue_run(runtime, "45.95.147.61", expected=["virustotal"], answered=[])
    runtime.documents.set(runs.SWEEPS, runs.OVERDUE_CURSOR, cursor)
    ctx = handlers.context(runtime)
    deps = {
        "documents": runtime.documents,
        "engine": runtime.engine,
        "now": ctx.now,
        "reliability": ctx.reliability(),
        "apply_verdict": intel_enrichment.apply_verdict,
    }

    ticks = [closing.close_overdue(**deps) for _ in range(2)]

    assert sum(t["closed"] for t in ticks) == 1 and runtime.documents.get(runs.RUNS, run_id)["status"] == "done", ticks
    assert runs.overdue_cursor(runtime.documents) is None


def test_a_redelivered_request_does_not_reopen_a_run_closed_with_a_verdict(enrichment, function_client):
    """enrich-dispatch published every task but its last write (`dispatched: True`) failed, so Pub/Sub redelivers the
    request; meanwhile the sources answered and the run closed with its verdict. The redelivery finds the run done
    but not marked dispatched, and started it again (start_run was a blind write): the run was reopened, its sources
    asked again, and it was closed a second time. (A close landing between the dispatcher's read and its start:
    tests/integration/test_enrichment_dispatch_race.py.)"""
    import contextlib

    from google.cloud import pubsub_v1

    from threatflow.enrichment import closing, handlers, runs
    from threatflow.intel import enrichment as intel_enrichment

    publisher = pubsub_v1.PublisherClient()
    for topic in ("enrichment-tasks", "enrichment-completed"):
        with contextlib.suppress(Exception):  # already made by an earlier test in this run
            publisher.create_topic(name=publisher.topic_path("threatflow-test", topic))
    runtime = enrichment
    run_id, ioc_id = _overdue_run(runtime, "45.95.147.62", expected=["virustotal"], answered=["virustotal"])
    ctx = handlers.context(runtime)
    closed = closing.close(
        run_id,
        documents=runtime.documents,
        engine=runtime.engine,
        now=ctx.now,
        reliability=ctx.reliability(),
        apply_verdict=intel_enrichment.apply_verdict,
    )
    assert closed.closed
    before = runtime.documents.get(runs.RUNS, run_id)
    request = {"schema_version": 1, "run_id": run_id, "ioc_id": ioc_id, "ioc_type": "ipv4", "value": "45.95.147.62"}
    push = push_envelope(request, {"run_id": run_id}, "ioc-enrichment-requested-push")
    assert function_client("enrich-dispatch").post("/", json=push).status_code == 200
    after = runtime.documents.get(runs.RUNS, run_id)
    assert (after["status"], after["closed_at"]) == ("done", before["closed_at"]), after
