"""Issue 9, attacked from outside: the flows/detect/hunting surface on hostile input, on the real backends.

Every request's work is bounded, hostile input is a 4xx (or a failed job), never a 5xx or a worker
redelivered forever; roles and TLP hold; push endpoints refuse unauthenticated callers.
"""

import base64
import gzip
import io
import itertools
import json
import random
import threading
import uuid
from datetime import UTC, datetime, timedelta

import pytest
from flows_support import event_keys, flows_api, ingest_job, ingest_push, json_flows, queue_upload
from helpers import create_user, push_envelope

pytestmark = pytest.mark.integration
PROJECT = "threatflow-test"
UPLOADS = "threatflow-uploads"


@pytest.fixture
def api(function_client, backend_env):
    return flows_api(function_client, backend_env["DATABASE_URL"])


def _engine(url):
    from threatflow.adapters.postgres import create_engine
    from threatflow.platform.config import Settings

    return create_engine(Settings.from_env({"DATABASE_URL": url}))


def _count_events(url):
    engine = _engine(url)
    with engine.connect() as conn:
        count = conn.exec_driver_sql("SELECT count(*) FROM flow_events").scalar_one()
    engine.dispose()
    return count


def _push(data, attributes, subscription):
    return push_envelope({"schema_version": 1, **data}, attributes, subscription)


def _raw_csv(count, seed=3):
    import flowgen

    return "\n".join(",".join(flowgen.raw_line(f)) for f in flowgen.generate(count, seed=seed)) + "\n"


# -- authentication and roles ---------------------------------------------------------------------


def test_push_endpoints_refuse_unauthenticated_and_forged_pushes(api, function_client, backend_env):
    """A push without the push token (or with a wrong one) runs nothing: the job stays queued, no view is refreshed."""
    job_id = queue_upload(api, "flows/auth.csv", _raw_csv(20).encode())
    worker = function_client("flow-ingest")
    for query in ({}, {"token": "wrong"}, {"token": ""}):
        refused = worker.post("/", json=ingest_push(job_id), query_string=query)
        assert refused.status_code == 401 and refused.get_json()["error"]
    assert ingest_job(job_id)["state"] == "queued" and _count_events(backend_env["DATABASE_URL"]) == 0

    maintenance = function_client("maintenance")
    for job in ("refresh-flow-views", "flow-retention", "retrain-flows"):
        push = _push({}, {"job": job, "run_id": uuid.uuid4().hex}, "maintenance-push")
        assert maintenance.post("/", json=push, query_string={}).status_code == 401
        assert maintenance.post("/", json=push, query_string={"token": "x" * 40}).status_code == 401
    engine = _engine(backend_env["DATABASE_URL"])
    with engine.connect() as conn:
        assert conn.exec_driver_sql("SELECT count(*) FROM flow_view_refreshes").scalar_one() == 0
    engine.dispose()


def test_reader_cannot_ingest_and_anonymous_callers_cannot_read(api, backend_env):
    flows = json_flows(3)
    assert api.post("/api/v1/flows/batch", {"flows": flows}, headers=api.reader).status_code == 403
    assert api.post("/api/v1/flows/uploads", {"object": "flows/x.csv"}, headers=api.reader).status_code == 403
    anonymous = {"Authorization": "Bearer not-a-token"}
    for path in ("/api/v1/events/search?srcip=1.2.3.4", "/api/v1/events/hosts/1.2.3.4", "/api/v1/events/timeline?srcip=1.2.3.4"):
        assert api.get(path, headers=anonymous).status_code == 401
    assert api.post("/api/v1/flows/batch", {"flows": flows}, headers=anonymous).status_code == 401
    assert _count_events(backend_env["DATABASE_URL"]) == 0


def test_uploads_are_read_from_the_uploads_bucket_only(api):
    for body in ({"object": "flows/x.csv", "bucket": "threatflow-models"}, {"object": "flows/serving.json", "bucket": "threatflow-models"}):
        response = api.post("/api/v1/flows/uploads", body)
        assert response.status_code == 400 and response.get_json()["error"]["details"]["field"] == "bucket"
    for name in ("../flows/serving.json", "\x00", "x" * 1024, "%2e%2e/x", "😀"):
        response = api.post("/api/v1/flows/uploads", {"object": name})
        assert response.status_code in (400, 404), (name, response.get_data(as_text=True))
    assert api.post("/api/v1/flows/uploads", {"object": "x" * 1025}).status_code == 400
    for job_id in ("..", "a" * 65, "%00", "__x__"):
        assert api.get(f"/api/v1/flows/uploads/{job_id}").status_code in (400, 404)


# -- the flow-ingest worker on hostile uploads ----------------------------------------------------------


def test_worker_acks_messages_naming_no_valid_job_without_touching_firestore(api, function_client):
    """Hostile job ids are acked (200) as permanent errors: never a 5xx that Pub/Sub redelivers forever."""
    from threatflow.adapters.firestore import FirestoreDocuments

    worker = function_client("flow-ingest")
    for job_id in ("a/b", "__x__", "x" * 2000, "../../flags/x", uuid.uuid4().hex, "", uuid.uuid4().hex + "\n"):
        response = worker.post("/", json=ingest_push(job_id))
        assert response.status_code == 200, (job_id[:40], response.get_data(as_text=True)[:200])
    missing = uuid.uuid4().hex
    assert worker.post("/", json=ingest_push(missing)).status_code == 200
    documents = FirestoreDocuments(PROJECT)
    assert documents.get("flow_ingest_leases", missing) is None  # the lease it took was released
    assert documents.get("flow_ingest_jobs", missing) is None  # and no job was made up


def test_worker_acks_malformed_push_envelopes_instead_of_answering_500(api, function_client):
    """Envelope fields Pub/Sub never sends so (an authenticated but forged push: attempt count, publish
    time, attributes of the wrong type) are acked as undecodable, never a 5xx redelivered until the dead
    letter."""
    worker = function_client("flow-ingest")
    job_id = queue_upload(api, "flows/untouched.csv", _raw_csv(5).encode())
    good = ingest_push(job_id)
    forged = {
        "infinite attempt": {**good, "deliveryAttempt": float("inf")},
        "attempt object": {**good, "deliveryAttempt": {"n": 5}},
        "publish time text": {**good, "message": {**good["message"], "publishTime": "yesterday"}},
        "publish time number": {**good, "message": {**good["message"], "publishTime": 1700000000}},
        "publish time without zone": {**good, "message": {**good["message"], "publishTime": "2026-01-01T00:00:00"}},
        "attributes list": {**good, "message": {**good["message"], "attributes": [job_id]}},
        "attributes text": {**good, "message": {**good["message"], "attributes": job_id}},
    }
    for name, envelope in forged.items():
        response = worker.post("/", data=json.dumps(envelope), content_type="application/json")
        assert response.status_code == 200, (name, response.status_code, response.get_data(as_text=True)[:200])
    assert ingest_job(job_id)["deliveries"] == 1  # run once, by the push whose only fault was its attempt count


HOSTILE_UPLOADS = {
    # one line with no end: read in bounded pieces, not into memory at once
    "huge-line": lambda: b"srcip," + b"9" * 300_000,
    # a quoted field spanning short lines, larger than csv.field_size_limit(): csv.Error
    "huge-field": lambda: b"proto,service,state,dur\n" + b'"' + (b"a" * 1000 + b"\n") * 200 + b'",-,FIN,1\n',
    # a 10,000-column header (the header line alone is past the line bound)
    "10000-columns": lambda: (",".join(["proto", "service", "state", *(f"c{i}" for i in range(10_000))]) + "\n1,2,3\n").encode(),
    # 1,500 columns: under the line bound, refused by the column bound before validation lists 1,500 problems a row
    "1500-columns": lambda: "".join(
        ",".join(["proto", "service", "state", *(f"c{i}" for i in range(1_500))]) + "\n" + ",".join(["tcp"] * 1_503) + "\n"
        for _ in range(1)
    ).encode(),
    "corrupt-gzip": lambda: b"\x1f\x8b\x08\x00" + bytes(random.Random(1).randrange(256) for _ in range(4000)),
    "truncated-gzip": lambda: gzip.compress(_raw_csv(200).encode())[:-300],
    "binary-junk": lambda: bytes(random.Random(2).randrange(256) for _ in range(50_000)),
    "gzip-then-junk": lambda: gzip.compress(b"") + b"PK\x03\x04 not gzip",
}


FAILS_WITH = {
    "huge-line": "longer than 16384 characters",
    "huge-field": "field larger than field limit",
    "10000-columns": "longer than 16384 characters",
    "1500-columns": "has 1503 columns",
    "corrupt-gzip": "not readable",
    "truncated-gzip": "not readable",
    "binary-junk": "not a UNSW-NB15 CSV",
    "gzip-then-junk": "not readable",
}


@pytest.mark.parametrize("kind", sorted(HOSTILE_UPLOADS))
def test_worker_fails_hostile_uploads_with_a_reason_instead_of_crashing(api, function_client, backend_env, kind):
    job_id = queue_upload(api, f"flows/hostile-{kind}", HOSTILE_UPLOADS[kind]())
    worker = function_client("flow-ingest")
    response = worker.post("/", json=ingest_push(job_id))
    assert response.status_code == 200, response.get_data(as_text=True)[:300]  # acked: a retry cannot help
    job = ingest_job(job_id)
    assert job["state"] == "failed" and FAILS_WITH[kind] in job["error"], job
    assert _count_events(backend_env["DATABASE_URL"]) == 0
    # A redelivery of the finished job does nothing more.
    assert worker.post("/", json=ingest_push(job_id)).status_code == 200
    assert ingest_job(job_id)["state"] == job["state"]


def test_a_tiny_upload_expanding_to_millions_of_lines_fails_at_the_line_bound(api, function_client, backend_env, monkeypatch):
    """A 2 MB-of-newlines gzip (~2 KB on the wire) against a lowered line bound (the real one is 10 M lines,
    which the same code path reaches in seconds): the job fails naming the bound, it does not spin."""
    from threatflow.flows import handlers

    monkeypatch.setattr(handlers, "MAX_LINES", 100_000)
    bomb = gzip.compress(b"proto,service,state,dur\n" + b"\n" * 2_000_000, compresslevel=9)
    assert len(bomb) < 5_000
    job_id = queue_upload(api, "flows/bomb.csv.gz", bomb)
    assert function_client("flow-ingest").post("/", json=ingest_push(job_id)).status_code == 200
    job = ingest_job(job_id)
    assert job["state"] == "failed" and "more than 100000 lines" in job["error"]

    monkeypatch.setattr(handlers, "MAX_LINES", 10_000_000)
    monkeypatch.setattr(handlers, "MAX_TEXT_CHARS", 50_000)
    rows = _raw_csv(400).encode()
    job_id = queue_upload(api, "flows/big.csv.gz", gzip.compress(rows))
    assert function_client("flow-ingest").post("/", json=ingest_push(job_id)).status_code == 200
    job = ingest_job(job_id)
    assert job["state"] == "failed" and "characters" in job["error"]
    assert _count_events(backend_env["DATABASE_URL"]) == 0  # the bound fell inside the first batch: nothing half-stored


def test_an_upload_of_rows_of_another_width_holds_a_batch_of_them_at_a_time_not_the_file(api, function_client, backend_env):
    """Rows whose cell count differs from the header's are counted invalid, never stored; the worker kept every one
    it read until the next 5,000 flows came, so a file of nothing else (a 40 KB gzip of 10 M two-cell lines, within
    MAX_LINES) held all of them at once: 236 bytes a row, 2.4 GB against flow-ingest's 2 GiB, killed at each delivery.
    Here 150,000 such rows (35 MB held as before) must be read within a batch's memory, and all counted."""
    import tracemalloc

    worker = function_client("flow-ingest")
    warm = queue_upload(api, "flows/warm.csv", _raw_csv(5).encode())  # clients and the model loaded before measuring
    assert worker.post("/", json=ingest_push(warm)).status_code == 200 and ingest_job(warm)["state"] == "succeeded"
    rows = 150_000
    bomb = gzip.compress(b"proto,service,state,dur\n" + b"tcp,-\n" * rows, compresslevel=9)
    assert len(bomb) < 10_000
    job_id = queue_upload(api, "flows/narrow.csv.gz", bomb)
    tracemalloc.start()
    try:
        assert worker.post("/", json=ingest_push(job_id)).status_code == 200
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    job = ingest_job(job_id)
    assert job["state"] == "succeeded" and job["invalid"] == rows and job["rows_done"] == rows and job["stored"] == 0, job
    assert job["first_problem"]["line"] == 2 and "the row has 2 cells" in job["first_problem"]["reason"], job
    assert peak < 12 * 1024 * 1024, f"peak {peak / 1e6:.1f} MB of Python objects for {rows} rows of another width"


@pytest.mark.parametrize(
    "name",
    [".", "..", "\u00e9" * 1000, "flows/a\nb.csv", "flows/a\rb.csv", ".well-known/acme-challenge/x"],
    ids=["dot", "dot-dot", "over-1024-bytes", "line-feed", "carriage-return", "acme-challenge"],
)
def test_an_upload_naming_an_object_cloud_storage_cannot_hold_is_a_400_naming_object(api, name):
    """Cloud Storage names are 1-1,024 bytes of UTF-8 without CR or LF, never `.` or `..`, never under
    `.well-known/acme-challenge/`. `.` and `..` were a 500 (the client's request for them is another URL), and the
    others a 404 telling the caller to upload an object that no upload can make (1,000 `é` pass the 1,024-character
    bound at 2,000 bytes)."""
    response = api.post("/api/v1/flows/uploads", {"object": name})
    assert response.status_code == 400, response.get_data(as_text=True)[:300]
    assert response.get_json()["error"]["details"]["field"] == "object"


def test_non_utf8_upload_is_read_with_replacement_and_its_good_rows_stored(api, function_client, backend_env):
    text = _raw_csv(30)
    data = text.encode() + "1.2.3.4,1,5.6.7.8,2,tcp,FIN,caf\xe9\n".encode("latin-1") + b"\xff\xfe\x00garbage\n"
    job_id = queue_upload(api, "flows/latin1.csv", data)
    assert function_client("flow-ingest").post("/", json=ingest_push(job_id)).status_code == 200
    job = ingest_job(job_id)
    assert job["state"] == "succeeded" and job["stored"] == 30 and job["invalid"] == 2, job
    assert _count_events(backend_env["DATABASE_URL"]) == 30


def test_an_upload_deleted_after_it_was_queued_fails_its_job(api, function_client):
    from threatflow.adapters.storage import GcsBlobs

    job_id = queue_upload(api, "flows/vanishing.csv", _raw_csv(5).encode())
    GcsBlobs(PROJECT).delete(UPLOADS, "flows/vanishing.csv")
    assert function_client("flow-ingest").post("/", json=ingest_push(job_id)).status_code == 200
    job = ingest_job(job_id)
    assert job["state"] == "failed" and "no object" in job["error"]


def test_an_upload_larger_than_any_within_bounds_fails_before_it_is_read(api, function_client, monkeypatch):
    """The first delivery hashes the whole object before parsing it, outside the time budget: an object
    larger than the text bound allows (here lowered) would be read for nothing, or past the function's
    timeout at every attempt, leaving its job running. Its size fails the job before any read."""
    from threatflow.flows import handlers

    monkeypatch.setattr(handlers, "MAX_OBJECT_BYTES", 1000)
    job_id = queue_upload(api, "flows/oversized.csv", _raw_csv(20).encode())
    assert function_client("flow-ingest").post("/", json=ingest_push(job_id)).status_code == 200
    job = ingest_job(job_id)
    assert job["state"] == "failed" and "bytes, more than 1000;" in job["error"] and "source" not in job, job


# -- long uploads: continuations, the last delivery attempt, a replaced object ----------------------


@pytest.fixture
def continuations():
    """A pull subscription on the flow-ingest topic: what a delivery publishes to continue its job,
    handed back as the push envelope the local stack's push subscription would deliver."""
    from google.cloud import pubsub_v1

    subscriber = pubsub_v1.SubscriberClient()
    path = subscriber.subscription_path(PROJECT, f"flow-ingest-test-{uuid.uuid4().hex[:8]}")
    subscriber.create_subscription(name=path, topic=pubsub_v1.PublisherClient.topic_path(PROJECT, "flow-ingest"))

    def pull(expected=1):
        found = []
        for _ in range(10):
            response = subscriber.pull(subscription=path, max_messages=10, timeout=5)
            if response.received_messages:
                subscriber.acknowledge(subscription=path, ack_ids=[m.ack_id for m in response.received_messages])
            # The uploads route's own messages (no continuation number) are not continuations.
            found += [m.message for m in response.received_messages if "continuation" in json.loads(m.message.data)]
            if len(found) >= expected:
                break
        return [
            {
                "message": {
                    "data": base64.b64encode(m.data).decode(),
                    "attributes": dict(m.attributes),
                    "messageId": m.message_id,
                    "publishTime": datetime.now(UTC).isoformat().replace("+00:00", "Z"),
                },
                "subscription": f"projects/{PROJECT}/subscriptions/flow-ingest-push",
            }
            for m in found
        ]

    yield pull
    subscriber.delete_subscription(subscription=path)
    subscriber.close()


def _stored_keys(url):
    engine = _engine(url)
    with engine.connect() as conn:
        keys = {str(row[0]) for row in conn.exec_driver_sql("SELECT event_key FROM flow_events")}
    engine.dispose()
    return keys


def test_a_long_upload_continues_in_new_messages_and_never_spends_delivery_attempts(
    api, function_client, backend_env, monkeypatch, continuations
):
    """A spent time budget (0 s here: every batch spends it) ends the delivery after a batch with its progress
    recorded and a continuation published; each continuation resumes there, a superseded message is acked
    without work, and the event keys are those of the whole file's sha256, as a single delivery makes them."""
    import hashlib

    from threatflow.flows import handlers, ingest

    monkeypatch.setattr(handlers, "BATCH_ROWS", 40)
    data = gzip.compress(_raw_csv(100).encode())
    job_id = queue_upload(api, "flows/long.csv.gz", data)
    worker = function_client("flow-ingest", FLOW_INGEST_DELIVERY_SECONDS="0")

    assert worker.post("/", json=ingest_push(job_id)).status_code == 200
    job = ingest_job(job_id)
    assert job["state"] == "running" and job["rows_done"] == 40 and job["stored"] == 40, job
    assert job["continuation"] == 1 and job["deliveries"] == 1 and job["continued_at"] >= job["started_at"]
    [first] = continuations()
    assert first["message"]["attributes"] == {"job_id": job_id}
    assert json.loads(base64.b64decode(first["message"]["data"]))["continuation"] == 1

    # The original message again (its ack lost): superseded by the continuation, acked without work.
    assert worker.post("/", json=ingest_push(job_id)).status_code == 200
    assert ingest_job(job_id)["rows_done"] == 40 and ingest_job(job_id)["deliveries"] == 1
    assert continuations(expected=0) == []
    # A continuation number that is not one is refused (acked), the job untouched.
    for forged in ("1", -1, 10**9, 1.5):
        assert (
            worker.post("/", json=_push({"job_id": job_id, "continuation": forged}, {"job_id": job_id}, "flow-ingest-push")).status_code
            == 200
        )
    assert ingest_job(job_id)["deliveries"] == 1

    assert worker.post("/", json=first).status_code == 200
    job = ingest_job(job_id)
    assert job["state"] == "running" and job["rows_done"] == 80 and job["continuation"] == 2 and job["deliveries"] == 2
    [second] = continuations()
    assert worker.post("/", json=second).status_code == 200
    job = ingest_job(job_id)
    assert job["state"] == "succeeded" and job["rows_done"] == 100 and job["stored"] == 100 and job["deliveries"] == 3, job
    assert continuations(expected=0) == []  # a finished job queues nothing more
    source = "file:" + hashlib.sha256(data).hexdigest()[:32]  # the name `flows load` gives the same file
    assert job["source"] == source
    rows = [flow for _, flow in ingest.read_csv(io.StringIO(_raw_csv(100)))]
    assert _stored_keys(backend_env["DATABASE_URL"]) == set(event_keys(rows, source=source, positions=list(range(100))))


def test_continuations_are_capped_and_the_job_fails_with_the_reason(api, function_client, monkeypatch, continuations):
    from threatflow.flows import handlers

    monkeypatch.setattr(handlers, "BATCH_ROWS", 40)
    monkeypatch.setattr(handlers, "MAX_CONTINUATIONS", 1)
    job_id = queue_upload(api, "flows/capped.csv", _raw_csv(100).encode())
    worker = function_client("flow-ingest", FLOW_INGEST_DELIVERY_SECONDS="0")
    assert worker.post("/", json=ingest_push(job_id)).status_code == 200
    [first] = continuations()
    assert worker.post("/", json=first).status_code == 200  # acked: the job is failed, not retried
    job = ingest_job(job_id)
    assert job["state"] == "failed" and "gave up after 1 continuations at row 80" in job["error"], job
    assert continuations(expected=0) == []


def test_an_object_replaced_between_deliveries_fails_its_job(api, function_client, monkeypatch, continuations):
    from threatflow.adapters.storage import GcsBlobs
    from threatflow.flows import handlers

    monkeypatch.setattr(handlers, "BATCH_ROWS", 40)
    job_id = queue_upload(api, "flows/replaced.csv", _raw_csv(100).encode())
    worker = function_client("flow-ingest", FLOW_INGEST_DELIVERY_SECONDS="0")
    assert worker.post("/", json=ingest_push(job_id)).status_code == 200
    GcsBlobs(PROJECT).put(UPLOADS, "flows/replaced.csv", _raw_csv(100, seed=4).encode())
    [first] = continuations()
    assert worker.post("/", json=first).status_code == 200
    job = ingest_job(job_id)
    assert job["state"] == "failed" and "was replaced after its job started" in job["error"] and job["rows_done"] == 40, job


def test_two_deliveries_taking_over_an_expired_lease_never_run_the_job_together(backend_env):
    """A lease whose holder died is taken over by one delivery: another that read the same expired lease
    (a redelivery and a continuation, say) must not delete the new holder's lease and run beside it.
    The real store; only the second delivery's read of the lease is held until the first one runs."""
    from threatflow.adapters.firestore import FirestoreDocuments
    from threatflow.flows import handlers
    from threatflow.platform.errors import RetryableError

    documents = FirestoreDocuments(PROJECT)
    job_id = uuid.uuid4().hex
    now = datetime.now(UTC)
    documents.set(handlers.INGEST_LEASES, job_id, {"holder": "died", "until": now - timedelta(seconds=1)})
    second_read, first_runs = threading.Event(), threading.Event()

    class HeldRead:
        def __getattr__(self, name):
            return getattr(documents, name)

        def get(self, collection, doc_id):
            found = documents.get(collection, doc_id)
            if threading.current_thread().name == "second" and not second_read.is_set():
                second_read.set()
                first_runs.wait(10)
            return found

    running, overlaps, outcomes = set(), [], {}

    def deliver():
        name = threading.current_thread().name
        try:
            with handlers.lease(HeldRead(), job_id, now=now, wait_seconds=1):
                overlaps.append(set(running))
                running.add(name)
                if name == "first":
                    first_runs.set()
                    second.join(15)  # holds the job while the second delivery tries
                running.discard(name)
            outcomes[name] = "ran"
        except RetryableError:
            outcomes[name] = "retry later"

    second = threading.Thread(target=deliver, name="second")
    first = threading.Thread(target=deliver, name="first")
    second.start()
    assert second_read.wait(10)
    first.start()
    first.join(20)
    second.join(20)
    assert overlaps == [set()], overlaps
    assert outcomes == {"first": "ran", "second": "retry later"}, outcomes
    assert documents.get(handlers.INGEST_LEASES, job_id) is None  # released by its holder


def test_the_last_delivery_attempt_fails_the_job_before_pubsub_dead_letters_it(api, function_client, backend_env):
    """The database is unreachable (a closed port): every attempt raises so Pub/Sub retries; the attempt
    the subscription's policy makes the last (deliveryAttempt, set because it has a dead-letter topic)
    fails the job with the reason before raising, so it is not left "running" after the dead letter."""
    import socket

    from threatflow.flows import handlers

    job_id = queue_upload(api, "flows/no-database.csv", _raw_csv(20).encode())
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        closed = probe.getsockname()[1]
    worker = function_client("flow-ingest", DATABASE_URL=f"postgresql+pg8000://threatflow@127.0.0.1:{closed}/threatflow")
    for attempt in range(1, handlers.MAX_DELIVERY_ATTEMPTS + 1):
        envelope = {**ingest_push(job_id), "deliveryAttempt": attempt}
        assert worker.post("/", json=envelope).status_code == 500
        job = ingest_job(job_id)
        if attempt < handlers.MAX_DELIVERY_ATTEMPTS:
            assert job["state"] == "running", (attempt, job)
    assert job["state"] == "failed" and f"gave up after {handlers.MAX_DELIVERY_ATTEMPTS} delivery attempts" in job["error"], job
    assert ingest_job(job_id)["deliveries"] == handlers.MAX_DELIVERY_ATTEMPTS


# -- hunting views: addresses, windows, bounds ----------------------------------------------------------


def _ingest(api, flows):
    response = api.post("/api/v1/flows/batch", {"flows": flows})
    assert response.status_code == 200, response.get_data(as_text=True)[:400]
    return response.get_json()


def test_host_and_timeline_take_any_spelling_of_an_address_and_refuse_zone_ids(api):
    flows = json_flows(40, seed=21)
    _ingest(api, flows)
    ip = flows[0]["srcip"]
    events = sum(1 for f in flows if f["srcip"] == ip)
    midnight = datetime.now(UTC).replace(hour=0, minute=0, second=0, microsecond=0)
    start = (midnight - timedelta(days=30)).isoformat().replace("+00:00", "Z")

    base = api.get(f"/api/v1/events/hosts/{ip}").get_json()
    assert base["as_source"]["events"] == events
    mapped = api.get(f"/api/v1/events/hosts/::ffff:{ip}")
    assert mapped.status_code == 200 and mapped.get_json()["ip"] == ip and mapped.get_json()["as_source"]["events"] == events
    timeline = api.get("/api/v1/events/timeline", query_string={"srcip": f"::FFFF:{ip}", "from": start}).get_json()
    assert sum(h["events"] for h in timeline["hours"]) == events

    for bad in ("fe80::1%eth0", "fe80::1%25", "::1%1", f"0{ip}", "1.2.3.04", "1.2.3", "1.2.3.4.5", "::g", "１.２.３.４", "%00", "[::1]"):
        host = api.get("/api/v1/events/hosts/" + bad.replace("%", "%25"))
        assert host.status_code == 400, (bad, host.status_code, host.get_data(as_text=True)[:200])
        line = api.get("/api/v1/events/timeline", query_string={"srcip": bad})
        assert line.status_code == 400, (bad, line.status_code, line.get_data(as_text=True)[:200])
    for good in ("2001:db8::1", "2001:0db8:0000:0000:0000:0000:0000:0001", "::", "0.0.0.0", "255.255.255.255"):
        assert api.get(f"/api/v1/events/hosts/{good}").status_code == 200, good
    full = api.get("/api/v1/events/hosts/2001:0DB8::0001").get_json()
    assert full["ip"] == "2001:db8::1"


@pytest.mark.parametrize(
    "path",
    ["/api/v1/events/hosts/1.2.3.4", "/api/v1/events/timeline?srcip=1.2.3.4", "/api/v1/events/top/attack-categories",
     "/api/v1/events/stats/bytes-by-proto"],
)  # fmt: skip
def test_hunting_windows_and_limits_at_their_edges_are_4xx(api, path):
    sep = "&" if "?" in path else "?"
    bad = [
        "from=9999-12-31T23:59:59-23:59",  # past datetime's range once in UTC
        "to=0001-01-01T00:00:00%2B23:59",
        "to=0001-01-01T00:00:00Z",  # default from = to - window: before year 1
        "from=2026-01-01T00:00:00Z&to=2025-01-01T00:00:00Z",
        "from=2000-01-01T00:00:00Z&to=2026-01-01T00:00:00Z",
        "from=2026-01-01T00:00:00",  # no zone
        "from=yesterday",
        "from=2026-01-01T00:00:00Z&from=2027-01-01T00:00:00Z&to=2026-01-01T00:00:00Z",
        "bogus=1",
    ]
    if "top" in path or "stats" in path:
        bad += ["limit=0", "limit=-1", "limit=201", "limit=%C2%B2", "limit=9" * 30, "limit=1e3"]
    for query in bad:
        response = api.get(path + sep + query)
        assert 400 <= response.status_code < 500, (query, response.status_code, response.get_data(as_text=True)[:200])
        assert response.get_json()["error"]
    ok = api.get(path + sep + "from=2026-01-01T00:00:00%2B05:30&to=2026-01-02T00:00:00-08:00")
    assert ok.status_code == 200, ok.get_data(as_text=True)[:200]


@pytest.mark.parametrize("path", ["/api/v1/events/top/attack-categories", "/api/v1/events/stats/bytes-by-proto"])
def test_a_rollup_window_ending_in_the_last_hour_of_time_is_answered(api, path):
    """The roll-ups round `to` up to the hour: in 9999-12-31's last hour that overflowed datetime, a 500."""
    response = api.get(path, query_string={"from": "9999-12-31T00:00:00Z", "to": "9999-12-31T23:30:00Z"})
    assert response.status_code in (200, 400), response.get_data(as_text=True)[:300]
    if response.status_code == 200:
        assert response.get_json()["window"]["from"] == "9999-12-31T00:00:00+00:00"


def test_hunting_queries_run_under_a_statement_timeout(api, backend_env, function_client):
    """A query stuck behind a lock (standing in for a hot address's millions of rows) is cancelled by the
    statement timeout and answered with a 400 asking for a narrower window, not held open or a 500."""
    _ingest(api, json_flows(10, seed=4))
    hunting = function_client("flows", FLOWS_HUNT_TIMEOUT_MS="300")
    engine = _engine(backend_env["DATABASE_URL"])
    locked, release = threading.Event(), threading.Event()

    def hold_lock():
        with engine.begin() as conn:
            conn.exec_driver_sql("LOCK TABLE flow_events IN ACCESS EXCLUSIVE MODE")
            for view in ("flow_attack_categories_hourly", "flow_bytes_by_proto_hourly"):  # a plain refresh holds the view exclusively
                conn.exec_driver_sql(f"REFRESH MATERIALIZED VIEW {view}")
            locked.set()
            release.wait(30)

    holder = threading.Thread(target=hold_lock)
    holder.start()
    try:
        assert locked.wait(10)
        for path in (
            "/api/v1/events/hosts/1.2.3.4",
            "/api/v1/events/timeline?srcip=1.2.3.4",
            "/api/v1/events/top/attack-categories",
            "/api/v1/events/stats/bytes-by-proto",
        ):
            response = hunting.get(path, headers=api.reader)
            assert response.status_code == 400, (path, response.status_code, response.get_data(as_text=True)[:300])
            assert "narrow from/to" in response.get_json()["error"]["message"]
    finally:
        release.set()
        holder.join()
        engine.dispose()
    # the timeout was the transaction's own (SET LOCAL)
    assert hunting.get("/api/v1/events/hosts/1.2.3.4", headers=api.reader).status_code == 200


def test_host_view_hides_an_ioc_above_the_callers_clearance_in_every_spelling(api, backend_env, function_client):
    from threatflow.adapters.postgres import unit_of_work
    from threatflow.iocs import service

    flows = json_flows(20, seed=13)
    _ingest(api, flows)
    ip = flows[0]["srcip"]
    engine = _engine(backend_env["DATABASE_URL"])
    with unit_of_work(engine) as conn:
        policies = service.repository.policies(conn)
        item = service.IocIn(value=ip, tlp="amber", source="analyst-notes", verdict=service.Verdict.MALICIOUS)
        service.upsert_batch(
            [item], conn=conn, now=datetime.now(UTC), warninglists=None, policies=policies, clearance="red", new_tlp="amber"
        )
    engine.dispose()
    password = create_user(backend_env["DATABASE_URL"], "greenx", "reader", clearance="green")
    body = function_client("auth").post("/api/v1/auth/token", json={"username": "greenx", "password": password}).get_json()
    green = {"Authorization": f"Bearer {body['access_token']}"}
    for spelling in (ip, f"::ffff:{ip}", f"::FFFF:{ip}"):
        response = api.get(f"/api/v1/events/hosts/{spelling}", headers=green)
        assert response.status_code == 200 and response.get_json()["ioc"] is None, spelling
        assert "amber" not in response.get_data(as_text=True) and "analyst-notes" not in response.get_data(as_text=True)
    amber = api.get(f"/api/v1/events/hosts/::ffff:{ip}").get_json()  # the default reader's clearance covers amber
    assert amber["ioc"] is not None and amber["ioc"]["value"] == ip, amber["ioc"]


def test_an_upload_whose_message_cannot_be_published_leaves_no_queued_job(api, backend_env):
    from google.cloud import pubsub_v1

    from threatflow.adapters.firestore import FirestoreDocuments
    from threatflow.adapters.storage import GcsBlobs

    GcsBlobs(PROJECT).put(UPLOADS, "flows/orphan.csv", _raw_csv(3).encode())
    publisher = pubsub_v1.PublisherClient()
    topic = publisher.topic_path(PROJECT, "flow-ingest")
    publisher.delete_topic(topic=topic)
    try:
        response = api.post("/api/v1/flows/uploads", {"object": "flows/orphan.csv"})
    finally:
        publisher.create_topic(name=topic)
    assert response.status_code == 503, response.get_data(as_text=True)[:200]
    assert FirestoreDocuments(PROJECT).query("flow_ingest_jobs", where=[("object", "==", "flows/orphan.csv")], limit=5) == []


# -- ingest, search, maintenance ----------------------------------------------------------------------------


def test_batch_with_flows_from_the_future_is_a_400_and_makes_no_partitions(api, backend_env):
    flows = json_flows(50, seed=8)
    for day, flow in enumerate(flows):
        flow["stime"] = flow["ltime"] = int((datetime(2900, 1, 1, tzinfo=UTC) + timedelta(days=day)).timestamp())
    response = api.post("/api/v1/flows/batch", {"flows": flows})
    engine = _engine(backend_env["DATABASE_URL"])
    with engine.connect() as conn:
        future = conn.exec_driver_sql(
            "SELECT count(*) FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid"
            " WHERE i.inhparent = 'flow_events'::regclass AND c.relname >= 'flow_events_p2800'"
        ).scalar_one()
    engine.dispose()
    assert (response.status_code, future) == (400, 0), (response.status_code, future)


def test_flow_retention_refuses_a_negative_retention(api, function_client, backend_env):
    from threatflow.adapters.firestore import FirestoreDocuments

    _ingest(api, json_flows(30, seed=2))  # flowgen's times: the 30 days before today
    before = _count_events(backend_env["DATABASE_URL"])
    run_id = uuid.uuid4().hex
    push = _push({"params": {"retention_days": -1}}, {"job": "flow-retention", "run_id": run_id}, "maintenance-push")
    status = function_client("maintenance").post("/", json=push).status_code
    run = FirestoreDocuments(PROJECT).get("maintenance_runs", run_id) or {}
    assert _count_events(backend_env["DATABASE_URL"]) == before, (status, run.get("result"))
    assert run.get("state") == "failed"


def test_batch_with_a_zone_id_address_is_a_400(api, backend_env):
    flows = json_flows(2)
    flows[1]["srcip"] = "fe80::1%eth0"
    response = api.post("/api/v1/flows/batch", {"flows": flows})
    assert response.status_code == 400, response.get_data(as_text=True)[:300]
    assert response.get_json()["error"]["details"]["errors"][0]["field"] == "srcip"


def test_search_with_a_cursor_at_the_end_of_time_is_answered(api):
    raw = json.dumps({"t": "9999-12-31T23:59:59.999999+00:00", "k": str(uuid.uuid4())}).encode()
    cursor = base64.urlsafe_b64encode(raw).decode().rstrip("=")
    response = api.get("/api/v1/events/search", query_string={"srcip": "1.2.3.4", "cursor": cursor})
    assert response.status_code in (200, 400), response.get_data(as_text=True)[:300]


def test_search_with_a_deeply_nested_cursor_is_a_400(api):
    """A forged cursor of 2,000 nested arrays (2.7 KB of base64) made the JSON decoder hit the recursion limit: a 500."""
    cursor = base64.urlsafe_b64encode(b"[" * 2000).decode().rstrip("=")
    for address in ({"srcip": "1.2.3.4"}, {}):
        response = api.get("/api/v1/events/search", query_string={**address, "cursor": cursor})
        assert response.status_code == 400, response.get_data(as_text=True)[:300]
        assert response.get_json()["error"]["details"]["field"] == "cursor"


def test_search_limit_of_thousands_of_digits_is_a_400(api):
    """int() refuses strings past 4,300 digits with a ValueError the route did not catch: a 500."""
    for limit in ("9" * 4301, "1" + "0" * 4400):
        response = api.get("/api/v1/events/search", query_string={"srcip": "1.2.3.4", "limit": limit})
        assert response.status_code == 400, response.get_data(as_text=True)[:300]
        assert response.get_json()["error"]["details"]["field"] == "limit"
    padded = api.get("/api/v1/events/search", query_string={"srcip": "1.2.3.4", "limit": "0" * 4400 + "5"})
    assert padded.status_code == 200, padded.get_data(as_text=True)[:300]  # 5, as "05" is


def test_search_limit_with_a_superscript_digit_is_a_400(api):
    response = api.get("/api/v1/events/search", query_string={"srcip": "1.2.3.4", "limit": "²"})
    assert response.status_code == 400, response.get_data(as_text=True)[:300]


def test_search_window_at_the_end_of_time_is_a_400(api):
    response = api.get("/api/v1/events/search", query_string={"srcip": "1.2.3.4", "to": "9999-12-31T23:59:59-23:59"})
    assert response.status_code == 400, response.get_data(as_text=True)[:300]


def test_search_with_a_zone_id_is_a_400(api):
    response = api.get("/api/v1/events/search", query_string={"srcip": "fe80::1%eth0"})
    assert response.status_code == 400, response.get_data(as_text=True)[:300]


def test_search_edge_values_are_4xx(api):
    _ingest(api, json_flows(10, seed=6))
    forged = [
        base64.urlsafe_b64encode(json.dumps(doc).encode()).decode().rstrip("=")
        for doc in (
            [1, 2], "x", {"t": 5, "k": "x"}, {"t": "2026-01-01T00:00:00", "k": str(uuid.uuid4())}, {"t": "2026-01-01T00:00:00Z"},
            {"t": "2026-01-01T00:00:00Z", "k": 5}, {"t": "2026-01-01T00:00:00Z", "k": [str(uuid.uuid4())]},
        )
    ] + ["!!!", "%00", "a" * 5000, base64.b64encode(b"\xff\xfe").decode()]  # fmt: skip
    for cursor, address in itertools.product(forged, ({"srcip": "1.2.3.4"}, {})):  # the read pool, the engine
        response = api.get("/api/v1/events/search", query_string={**address, "cursor": cursor})
        assert response.status_code == 400, (cursor[:40], response.status_code, response.get_data(as_text=True)[:200])
    for at in ("0001-01-01T00:00:00+14:00", "0001-01-01T00:00:00-14:00", "9999-12-31T23:59:59-14:00"):
        cursor = base64.urlsafe_b64encode(json.dumps({"t": at, "k": str(uuid.uuid4())}).encode()).decode().rstrip("=")
        for address in ({"srcip": "1.2.3.4"}, {}):
            response = api.get("/api/v1/events/search", query_string={**address, "cursor": cursor})
            assert response.status_code in (200, 400), (at, address, response.status_code, response.get_data(as_text=True)[:200])
    bad = [
        {"limit": "0"}, {"limit": "1001"}, {"limit": "-5"}, {"limit": "1e2"}, {"limit": "9" * 40},
        {"min_probability": "nan"}, {"min_probability": "inf"}, {"min_probability": "-0.1"}, {"min_probability": "1.5"},
        {"label": "2"}, {"label": "true"}, {"predicted": "maybe"}, {"proto": "'; DROP TABLE flow_events;--"},
        {"proto": "x" * 100}, {"attack_cat": "Nope"}, {"dstip": "1.2.3"},
        {"from": "2000-01-01T00:00:00Z"},  # 26 years with an address: past the 92-day bound
    ]  # fmt: skip
    for query in bad:
        response = api.get("/api/v1/events/search", query_string={"srcip": "1.2.3.4", **query})
        assert response.status_code == 400, (query, response.status_code, response.get_data(as_text=True)[:200])
    no_address = api.get("/api/v1/events/search", query_string={"from": "2026-01-01T00:00:00Z", "to": "2026-03-01T00:00:00Z"})
    assert no_address.status_code == 400  # a scan over time alone is held to 7 days
    assert api.get("/api/v1/events/search", query_string={"srcip": "1.2.3.4", "min_probability": "1", "limit": "1000"}).status_code == 200


# -- detect ---------------------------------------------------------------------------------------------


def test_detect_routes_answer_hostile_input_with_4xx(api, function_client, backend_env):
    detect = function_client("detect")
    headers = {**api.reader, "Content-Type": "application/json"}
    flow = {
        k: v for k, v in json_flows(1)[0].items() if k not in ("label", "attack_cat", "srcip", "dstip", "stime", "ltime", "sport", "dsport")
    }
    bodies = [
        b"", b"[]", b"null", b'{"flows": {}}', b'{"flows": [1]}', b'{"flows": [], "x": 1}', b"\xff\xfe",
        json.dumps({"flows": [{**flow, "sbytes": "1e999"}]}).encode(),
        json.dumps({"flows": [{**flow, "sbytes": None}]}).encode(),
        json.dumps({"flows": [{**flow, **{f"c{i}": 1 for i in range(5000)}}] * 20}).encode(),
    ]  # fmt: skip
    for body in bodies:
        response = detect.post("/api/v1/detect/batch", data=body, headers=headers)
        assert 400 <= response.status_code < 500, (body[:60], response.status_code, response.get_data(as_text=True)[:200])
    many = detect.post("/api/v1/detect/batch", json={"flows": [{**flow, **{f"c{i}": 1 for i in range(5000)}}] * 20}, headers=headers)
    assert len(many.get_json()["error"]["details"]["errors"]) <= 1000  # 100,000 problems, a bounded listing
    explain = detect.post("/api/v1/detect/batch?explain=true", json={"flows": [flow] * 1001}, headers=headers)
    assert explain.status_code == 400 and explain.get_json()["error"]["details"]["field"] == "explain"
    for query in ("explain=yes", "top=0", "top=100000", "top=%C2%B2"):
        response = detect.post(f"/api/v1/detect?{query}", json={"flow": flow}, headers=headers)
        assert response.status_code == 400, (query, response.get_data(as_text=True)[:200])
    assert detect.post("/api/v1/detect", json={"flow": flow}, headers=headers).status_code == 200
    assert detect.post("/api/v1/detect", json={"flow": flow}).status_code == 401
    for ip in ("fe80::1%25eth0", "999.1.1.1", "01.2.3.4", "not-an-ip"):
        response = detect.get(f"/api/v1/detect/intel/{ip}", headers=api.reader)
        assert response.status_code == 400, (ip, response.status_code, response.get_data(as_text=True)[:200])


def test_a_batch_observed_at_the_end_of_time_is_refused_and_retention_keeps_running(api, function_client, backend_env):
    """observed_at=9999-12-31 made a partition whose end (9999-12-31 + 1 day) overflows date: every later
    flow-retention run failed, so no old partition was ever dropped again."""
    from threatflow.adapters.firestore import FirestoreDocuments

    flows = [{k: v for k, v in f.items() if k not in ("stime", "ltime")} for f in json_flows(5, seed=1)]
    for observed_at in ("9999-12-31T12:00:00Z", (datetime.now(UTC) + timedelta(days=3)).isoformat()):
        response = api.post("/api/v1/flows/batch", {"flows": flows, "observed_at": observed_at})
        assert response.status_code == 400 and response.get_json()["error"]["details"]["field"] == "observed_at", observed_at
    assert _count_events(backend_env["DATABASE_URL"]) == 0
    assert api.post("/api/v1/flows/batch", {"flows": flows, "observed_at": datetime.now(UTC).isoformat()}).status_code == 200
    # A last-day partition made another way (before this fix, or by hand) no longer stops retention either.
    from datetime import date

    from threatflow.adapters.postgres import unit_of_work
    from threatflow.flows import repository

    engine = _engine(backend_env["DATABASE_URL"])
    with unit_of_work(engine) as conn:
        repository.ensure_partitions(conn, [date.max])
    engine.dispose()
    run_id = uuid.uuid4().hex
    push = _push({}, {"job": "flow-retention", "run_id": run_id}, "maintenance-push")
    assert function_client("maintenance").post("/", json=push).status_code == 200
    assert FirestoreDocuments(PROJECT).get("maintenance_runs", run_id)["state"] == "succeeded"
