"""Maintenance jobs given what an operator or a source really sends: the CLI's manual run, parameters of
the wrong type, odd ATT&CK documents, a compressed evaluation set. On the run's emulators, through the
maintenance function where the retry-or-ack decision is what is tested."""

import contextlib
import gzip
import json
import time
import uuid

import pytest
from helpers import push_envelope_of, run_maintenance_job

pytestmark = pytest.mark.integration
PROJECT = "threatflow-test"


def _docs():
    from threatflow.adapters.firestore import FirestoreDocuments

    return FirestoreDocuments(PROJECT)


def _techniques(n):
    return {"techniques": [{"external_id": f"T{1000 + i}", "name": f"Technique {i}", "tactics": ["execution"]} for i in range(n)]}


# -- threatflow jobs run -----------------------------------------------------------------------------


@pytest.fixture
def maintenance_messages(backend_env):
    """pull(): the next message published on the maintenance topic, from a subscription of this test's own."""
    from google.cloud import pubsub_v1

    publisher, subscriber = pubsub_v1.PublisherClient(), pubsub_v1.SubscriberClient()
    topic = publisher.topic_path(PROJECT, "maintenance")
    with contextlib.suppress(Exception):  # AlreadyExists: created by an earlier test of the run
        publisher.create_topic(name=topic)
    subscription = subscriber.subscription_path(PROJECT, f"jobs-run-{uuid.uuid4().hex[:8]}")
    subscriber.create_subscription(name=subscription, topic=topic)

    def pull():
        # A pull may answer no message although one was published (Pub/Sub gives no such promise, and the emulator
        # under load does so): ask again until one comes, for up to 60 s, instead of failing on an empty answer.
        for _ in range(30):
            received = subscriber.pull(request={"subscription": subscription, "max_messages": 1}, timeout=10).received_messages
            if received:
                subscriber.acknowledge(request={"subscription": subscription, "ack_ids": [r.ack_id for r in received]})
                return received[0].message
            time.sleep(2)
        raise AssertionError(f"no message on the maintenance topic for {subscription}")

    yield pull
    subscriber.delete_subscription(subscription=subscription)
    subscriber.close()


def test_jobs_run_retrain_flows_runs_it_though_the_schedule_ships_disabled(function_client, maintenance_messages, tmp_path, monkeypatch):
    """README: "`threatflow jobs run retrain-flows` runs it once". The CLI fired the schedule's own body,
    params.enabled false included, so the manual run answered "disabled" and trained nothing."""
    from threatflow.cli.main import main

    monkeypatch.setenv("THREATFLOW_STATE_DIR", str(tmp_path))  # no running stack's environment
    with pytest.raises(SystemExit) as exit_:
        main(["jobs", "run", "retrain-flows"])
    assert exit_.value.code == 0
    message = maintenance_messages()
    assert message.attributes["job"] == "retrain-flows"
    assert function_client("maintenance").post("/", json=push_envelope_of(message, "maintenance-push")).status_code == 200
    run = _docs().get("maintenance_runs", message.attributes["run_id"])
    # No labelled flows are stored: a run that really ran says so; the schedule's other params still apply.
    assert run["state"] == "succeeded" and run["result"]["status"] == "skipped", run
    assert "at least 5000 needed" in run["result"]["reason"]


def test_jobs_run_of_a_schedule_outside_the_maintenance_function_points_at_no_run_record(backend_env, tmp_path, monkeypatch, capsys):
    """release-deferred-enrichment publishes on ioc-enrichment-requested, which keeps no maintenance run record, but
    `threatflow jobs run` printed "run <id> ...; its record: threatflow api GET /api/v1/admin/runs/<id>", a 404
    ("no maintenance run ... (yet)") for ever."""
    from google.cloud import pubsub_v1

    from threatflow.cli.main import main

    publisher = pubsub_v1.PublisherClient()
    with contextlib.suppress(Exception):  # AlreadyExists: created by an earlier test of the run
        publisher.create_topic(name=publisher.topic_path(PROJECT, "ioc-enrichment-requested"))
    monkeypatch.setenv("THREATFLOW_STATE_DIR", str(tmp_path))  # no running stack's environment
    with pytest.raises(SystemExit) as exit_:
        main(["jobs", "run", "release-deferred-enrichment"])
    assert exit_.value.code == 0
    out = capsys.readouterr().out
    assert "ioc-enrichment-requested" in out and "/api/v1/admin/runs/" not in out, out


def _jobs_run(*argv):
    from threatflow.cli.main import main

    with pytest.raises(SystemExit) as exit_:
        main(["jobs", "run", *argv])
    return exit_.value.code


def test_jobs_run_passes_params_given_on_the_command_line(maintenance_messages, tmp_path, monkeypatch):
    """`threatflow jobs run JOB` could not pass a job its params (each job declares them: runs.JOB_PARAMS), so an
    operator had to go through the admin API. --param name=value (a value that parses as JSON is that JSON, else
    the text) and --params JSON; they replace the schedule's own params of the same name."""
    monkeypatch.setenv("THREATFLOW_STATE_DIR", str(tmp_path))  # no running stack's environment
    assert _jobs_run("flow-retention", "--param", "retention_days=30") == 0
    assert json.loads(maintenance_messages().data)["params"] == {"retention_days": 30}
    assert _jobs_run("sync-attack", "--params", '{"force": true}') == 0
    assert json.loads(maintenance_messages().data)["params"] == {"force": True}
    assert _jobs_run("retrain-flows", "--param", "evaluation_object=eval/flows.csv", "--param", "max_rows=6000") == 0
    params = json.loads(maintenance_messages().data)["params"]
    assert params == {"min_rows": 5000, "max_rows": 6000, "evaluation_object": "eval/flows.csv"}, params


@pytest.mark.parametrize(
    ("argv", "named"),
    [
        (["flow-retention", "--param", "retention_day=30"], "params.retention_day"),
        (["flow-retention", "--param", "retention_days=-1"], "params.retention_days"),
        (["flow-retention", "--params", '{"retention_days": "30"}'], "params.retention_days"),
        (["flow-retention", "--params", "[30]"], "--params"),
        (["flow-retention", "--params", "{"], "--params"),
        (["flow-retention", "--param", "retention_days"], "--param"),
        (["release-deferred-enrichment", "--param", "limit=3"], "params.limit"),
    ],
)
def test_jobs_run_with_a_bad_param_names_it_and_publishes_nothing(maintenance_messages, tmp_path, monkeypatch, capsys, argv, named):
    """Checked as the admin API checks them (runs.validate_params) before anything is published: the error names
    the param, on one line, with no traceback, and the exit status is 2."""
    monkeypatch.setenv("THREATFLOW_STATE_DIR", str(tmp_path))
    assert _jobs_run(*argv) == 2
    err = capsys.readouterr().err
    assert named in err and "Traceback" not in err, err
    assert _jobs_run("heartbeat") == 0  # nothing was queued: the next message is this one
    assert maintenance_messages().attributes["job"] == "heartbeat"


def test_the_schedule_tick_of_retrain_flows_stays_disabled(function_client, maintenance_messages):
    """What the manual run leaves out must still reach the scheduler's tick: params.enabled false."""
    from threatflow.adapters.pubsub import PubSubPublisher
    from threatflow.devstack.scheduler import fire
    from threatflow.platform.manifest import load_manifest

    fired = fire(load_manifest().schedules["retrain-flows"], publisher=PubSubPublisher(PROJECT), gateway_url="http://127.0.0.1:9")
    message = maintenance_messages()
    assert json.loads(message.data)["params"]["enabled"] is False
    # `threatflow jobs run` prints the run id, to follow the run's record (it printed only the message id)
    assert fired.run_id == message.attributes["run_id"] and fired.ident == message.message_id
    assert function_client("maintenance").post("/", json=push_envelope_of(message, "maintenance-push")).status_code == 200
    assert _docs().get("maintenance_runs", message.attributes["run_id"])["result"]["status"] == "disabled"


# -- parameters of the wrong type ------------------------------------------------------------------


def test_a_force_that_is_not_a_boolean_fails_the_run_and_keeps_the_snapshot(function_client, models_bucket, tmp_path, monkeypatch):
    """{"force": "false"} was truthy: a truncated source replaced a good snapshot though the admin said no force."""
    from threatflow.adapters.storage import GcsBlobs

    source = tmp_path / "attack.json"
    source.write_text(json.dumps(_techniques(40)))
    monkeypatch.setenv("ATTACK_SOURCE", str(source))
    status, run = run_maintenance_job(function_client("maintenance"), "sync-attack")
    assert status == 200 and run["state"] == "succeeded" and run["result"]["techniques"] == 40, run

    source.write_text(json.dumps(_techniques(3)))  # a truncated download
    for force in ("false", "no", 0, 1, [], {"x": 1}):
        status, run = run_maintenance_job(function_client("maintenance"), "sync-attack", {"force": force})
        assert status == 200 and run["state"] == "failed" and "params.force" in run["error"], (force, run)
    snapshot = json.loads(GcsBlobs(PROJECT).get(models_bucket, "attack/techniques.json"))
    assert len(snapshot["techniques"]) == 40
    status, run = run_maintenance_job(function_client("maintenance"), "sync-attack", {"force": True})  # a real boolean still forces
    assert run["state"] == "succeeded" and run["result"]["techniques"] == 3, run


def test_retrain_flows_enabled_must_be_a_boolean(function_client, backend_env):
    """{"enabled": "false"} was truthy: the job trained (and could promote) when it was asked to stay off."""
    client = function_client("maintenance")
    status, run = run_maintenance_job(client, "retrain-flows", {"enabled": "false"})
    assert status == 200 and run["state"] == "failed" and "params.enabled" in run["error"], run
    status, run = run_maintenance_job(client, "retrain-flows", {"enabled": False})
    assert run["state"] == "succeeded" and run["result"]["status"] == "disabled", run


# -- sync-attack: odd documents --------------------------------------------------------------------


ODD_DOCUMENTS = {
    "a reference that is not an object": {
        "type": "bundle",
        "objects": [{"type": "attack-pattern", "id": "attack-pattern--1", "name": "X", "external_references": ["mitre-attack"]}],
    },
    "null references": {"type": "bundle", "objects": [{"type": "attack-pattern", "id": "attack-pattern--1", "external_references": None}]},
    "null kill chain": {
        "type": "bundle",
        "objects": [
            {
                "type": "attack-pattern",
                "id": "attack-pattern--1",
                "name": "X",
                "kill_chain_phases": None,
                "external_references": [{"source_name": "mitre-attack", "external_id": "T1001"}],
            }
        ],
    },
    "a phase that is not an object": {
        "type": "bundle",
        "objects": [
            {
                "type": "attack-pattern",
                "id": "attack-pattern--1",
                "name": "X",
                "kill_chain_phases": ["execution"],
                "external_references": [{"source_name": "mitre-attack", "external_id": "T1001"}],
            }
        ],
    },
    "compact tactics not a list": {"techniques": [{"external_id": "T1001", "name": "X", "tactics": 5}]},
}


@pytest.mark.parametrize("case", sorted(ODD_DOCUMENTS))
def test_an_odd_attack_document_fails_the_run_once_not_five_times(function_client, models_bucket, tmp_path, monkeypatch, case):
    """A source of the wrong shape is a ValidationError (acked, the run failed); it was an AttributeError or a
    TypeError, a 500, so Pub/Sub fetched the 45 MB source four more times before the dead letter."""
    source = tmp_path / "attack.json"
    source.write_text(json.dumps(ODD_DOCUMENTS[case]))
    monkeypatch.setenv("ATTACK_SOURCE", str(source))
    status, run = run_maintenance_job(function_client("maintenance"), "sync-attack")
    assert status == 200 and run["state"] == "failed" and "ATTACK_SOURCE" in run["error"], run


# -- retrain-flows: the trusted evaluation set -----------------------------------------------------


def test_a_compressed_evaluation_set_is_bounded_by_what_it_expands_to(backend_env, models_bucket, monkeypatch):
    """MAX_EVALUATION_BYTES was checked on the object's stored size only: a gzip of a few KB expanded to
    anything in memory (gzip.decompress), past the maintenance function's 1 GiB."""
    from threatflow.adapters.storage import GcsBlobs
    from threatflow.flows import retrain
    from threatflow.platform.errors import ValidationError

    blobs = GcsBlobs(PROJECT)
    header = "proto,service,state,dur,label,attack_cat\n"
    blobs.put(models_bucket, "eval/bomb.csv.gz", gzip.compress((header + "tcp,-,FIN,0.1,0,\n" * 200_000).encode(), 9))
    blobs.put(models_bucket, "eval/nested.csv.gz", gzip.compress(gzip.compress(header.encode() * 200_000, 9), 9))
    blobs.put(models_bucket, "eval/corrupt.csv.gz", gzip.compress(header.encode() * 1000)[:-20])
    monkeypatch.setattr(retrain, "MAX_EVALUATION_BYTES", 1 << 20)
    assert blobs.stat(models_bucket, "eval/bomb.csv.gz").size < 1 << 20
    for name, expected in (("eval/bomb.csv.gz", "expands past"), ("eval/nested.csv.gz", "more than once"), ("eval/corrupt.csv.gz", "gzip")):
        with pytest.raises(ValidationError) as caught:
            retrain.read_evaluation_object(blobs=blobs, bucket=models_bucket, name=name)
        assert caught.value.field == "params.evaluation_object" and expected in caught.value.message, (name, caught.value.message)
    small = header + "tcp,-,FIN,0.1,0,\n" * 10
    blobs.put(models_bucket, "eval/small.csv.gz", gzip.compress(small.encode()))
    held = retrain.read_evaluation_object(blobs=blobs, bucket=models_bucket, name="eval/small.csv.gz")
    assert len(held) + held.invalid == 10  # all read (these rows lack model inputs: held as invalid)


# -- run records -------------------------------------------------------------------------------------


def test_a_run_no_delivery_finished_is_closed_by_purge_runs(function_client, backend_env):
    """A delivery killed by the 540 s timeout or out of memory runs no `except`: its run stays 'running'.
    After the last attempt (or a redelivery dropped as too old) nothing closed it, GET /admin/runs/{id}
    said running forever, and purge-runs (by finished_at) never deleted it."""
    from datetime import UTC, datetime, timedelta

    docs = _docs()
    now = datetime.now(UTC)
    dead, live = f"dead-{uuid.uuid4().hex}", f"live-{uuid.uuid4().hex}"
    docs.set(
        "maintenance_runs",
        dead,
        {"run_id": dead, "job": "retrain-flows", "state": "running", "started_at": now - timedelta(hours=3), "attempts": 5},
    )
    docs.set(
        "maintenance_runs",
        live,
        {"run_id": live, "job": "retrain-flows", "state": "running", "started_at": now - timedelta(minutes=2), "attempts": 1},
    )
    status, run = run_maintenance_job(function_client("maintenance"), "purge-runs")
    assert status == 200 and run["state"] == "succeeded" and run["result"]["abandoned"] >= 1, run
    closed = docs.get("maintenance_runs", dead)
    assert closed["state"] == "failed" and "abandoned" in closed["error"] and closed["finished_at"] >= now, closed
    assert docs.get("maintenance_runs", live)["state"] == "running"  # may still be running: left alone


# -- POST /api/v1/admin/jobs/{job}/run ---------------------------------------------------------------


def test_params_too_large_for_a_message_are_a_400_naming_params(function_client, backend_env, maintenance_messages):
    """The body may hold 32 MiB; a Pub/Sub message at most 10 MB: params of 11 MB were the publisher's
    MessageTooLargeError, a 500. Job params are a few small values: anything past 64 KiB is refused."""
    from helpers import create_user

    password = create_user(backend_env["DATABASE_URL"], "ops-params", "admin")
    token = function_client("auth").post("/api/v1/auth/token", json={"username": "ops-params", "password": password}).get_json()
    headers = {"Authorization": f"Bearer {token['access_token']}"}
    admin = function_client("admin")
    for size in (11_000_000, 70_000):
        response = admin.post("/api/v1/admin/jobs/heartbeat/run", json={"params": {"note": "a" * size}}, headers=headers)
        assert response.status_code == 400 and response.get_json()["error"]["details"]["field"] == "params", (size, response.get_json())
    ok = admin.post("/api/v1/admin/jobs/sync-attack/run", json={"params": {"force": True}}, headers=headers)
    assert ok.status_code == 202
    assert json.loads(maintenance_messages().data)["params"] == {"force": True}


def test_an_attack_source_in_a_bucket_or_a_file_is_bounded_like_one_over_https(function_client, models_bucket, tmp_path, monkeypatch):
    """MAX_SOURCE_BYTES was enforced on an https download only: a gs:// object or a path of any size was
    read whole into the maintenance function's memory."""
    from threatflow.adapters.storage import GcsBlobs
    from threatflow.threats import attack

    data = json.dumps(_techniques(100)).encode()
    monkeypatch.setattr(attack, "MAX_SOURCE_BYTES", len(data) - 1)
    GcsBlobs(PROJECT).put(models_bucket, "sources/attack.json", data)
    (tmp_path / "attack.json").write_bytes(data)
    for source in (f"gs://{models_bucket}/sources/attack.json", str(tmp_path / "attack.json")):
        monkeypatch.setenv("ATTACK_SOURCE", source)
        status, run = run_maintenance_job(function_client("maintenance"), "sync-attack")
        assert status == 200 and run["state"] == "failed" and "larger than" in run["error"], (source, run)


# -- flow-retention and the ingest instances' partition cache -----------------------------------------


def _event(when):
    from threatflow.flows.repository import STORED_FEATURES, EventRow

    return EventRow(
        event_time=when, event_key=str(uuid.uuid4()), srcip="192.0.2.7", sport=1234, dstip="198.51.100.9", dsport=80,
        proto="tcp", service="http", state="FIN", stime=when, ltime=when, features=[1.0] * len(STORED_FEATURES),
        label=0, attack_cat=None, predicted_attack=False, probability=0.1, predicted_cat="Normal", model_version="test", source="test",
    )  # fmt: skip


def test_ingest_recovers_when_another_instance_drops_a_partition_it_had_seen(backend_env):
    """Each instance remembered the days whose partition it made sure of. flow-retention runs in the
    maintenance instance: after it dropped a day (e.g. an admin's run with params.retention_days below
    FLOWS_RETENTION_DAYS, which ingest still accepts), a flows or flow-ingest instance that had seen that
    day inserted into no partition, a 500 on every batch touching the day for the instance's lifetime.
    Now each batch asks the catalog; an insert that still meets a drop (between that look and the
    insert) is retryable, not a 500."""
    from datetime import UTC, datetime, timedelta

    from threatflow.adapters.postgres import create_engine, unit_of_work
    from threatflow.flows import ingest, repository
    from threatflow.platform.config import Settings
    from threatflow.platform.errors import RetryableError

    engine = create_engine(Settings.from_env({"DATABASE_URL": backend_env["DATABASE_URL"]}))
    when = datetime.now(UTC).replace(microsecond=0) - timedelta(days=10)
    try:
        with unit_of_work(engine) as conn:
            assert len(ingest.store(conn, [_event(when)])) == 1
        with unit_of_work(engine) as conn:  # what flow-retention does, in the maintenance instance
            [partition] = [p for p in repository.partitions(conn) if p.day == when.date()]
            repository.drop_partition(conn, partition)
        with pytest.raises(RetryableError), unit_of_work(engine) as conn:  # the race: a 503 / a redelivery, not a 500
            repository.insert_events(conn, [_event(when)])
        with unit_of_work(engine) as conn:  # the next batch makes the partition again and stores
            assert len(ingest.store(conn, [_event(when)])) == 1
    finally:
        engine.dispose()


# -- params checked before a run is queued -----------------------------------------------------------------


def _admin_token(function_client, backend_env):
    from helpers import create_user

    username = f"ops-{uuid.uuid4().hex[:8]}"
    password = create_user(backend_env["DATABASE_URL"], username, "admin")
    answer = function_client("auth").post("/api/v1/auth/token", json={"username": username, "password": password})
    return answer.get_json()["access_token"]


@pytest.mark.parametrize(
    ("params", "field"),
    [({"retention_day": 30}, "params.retention_day"), ({"retention_days": -1}, "params.retention_days")],
)
def test_admin_run_with_a_bad_param_is_a_400_and_queues_nothing(function_client, backend_env, maintenance_messages, params, field):
    """A typo of retention_days ran flow-retention with the default 90 days (a 202), and a bad value was only
    seen in the run record after the 202: now a 400 names the field and nothing is published."""
    headers = {"Authorization": f"Bearer {_admin_token(function_client, backend_env)}"}
    admin = function_client("admin")
    response = admin.post("/api/v1/admin/jobs/flow-retention/run", json={"params": params}, headers=headers)
    assert response.status_code == 400, response.get_json()
    assert response.get_json()["error"]["details"]["field"] == field
    # Nothing queued: the next message on the topic is the good run published after it.
    good = admin.post("/api/v1/admin/jobs/flow-retention/run", json={"params": {"retention_days": 30}}, headers=headers)
    assert good.status_code == 202
    assert maintenance_messages().attributes["run_id"] == good.get_json()["run_id"]


def test_a_message_with_an_unknown_param_fails_its_run_for_good(function_client, backend_env):
    """A message published around the API (a hand-edited schedule) is checked by the maintenance function too:
    the run is recorded failed with the field named and the message acked (retrying cannot fix it)."""
    status, run = run_maintenance_job(function_client("maintenance"), "flow-retention", {"retention_day": 30})
    assert status in (200, 204)
    assert run is not None and run["state"] == "failed" and "no param 'retention_day'" in run["error"], run
