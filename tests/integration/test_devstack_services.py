"""threatflow.devstack.services against the real binaries: each service is started
in its own tmp_path, used with the real client, stopped, and its port checked free."""

from __future__ import annotations

import socket
import time
import uuid
from pathlib import Path

import pytest

from threatflow.devstack import services

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]
PROJECT = "threatflow-test"


def _port_is_free(port: int) -> bool:
    """Nothing listens, and a server could bind it again (SO_REUSEADDR, as servers do)."""
    with socket.socket() as probe:
        probe.settimeout(1)
        if probe.connect_ex(("127.0.0.1", port)) == 0:
            return False
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def _assert_stopped(service: services.RunningService) -> None:
    services.stop(service)
    assert not services.is_alive(service)
    assert _port_is_free(service.port)
    services.stop(service)  # idempotent


def test_free_port_is_bindable():
    port = services.free_port()
    assert 1024 <= port <= 65535
    assert _port_is_free(port)


def test_postgres_accepts_real_connections(tmp_path: Path):
    import pg8000.native

    service = services.start_postgres(tmp_path, database="tf_check")
    try:
        assert service.name == "postgres"
        assert service.env == {"DATABASE_URL": f"postgresql+pg8000://postgres@127.0.0.1:{service.port}/tf_check"}
        assert service.log_path.is_file() and service.log_path.parent == tmp_path / "postgres"
        conn = pg8000.native.Connection("postgres", host="127.0.0.1", port=service.port, database="tf_check")
        assert conn.run("SELECT 1") == [[1]]
        conn.close()
    finally:
        _assert_stopped(service)


def test_postgres_restart_keeps_its_data(tmp_path: Path):
    import pg8000.native

    first = services.start_postgres(tmp_path)
    try:
        conn = pg8000.native.Connection("postgres", host="127.0.0.1", port=first.port, database="threatflow")
        conn.run("CREATE TABLE kept (v text)")
        conn.run("INSERT INTO kept VALUES ('still here')")
        conn.close()
    finally:
        _assert_stopped(first)

    began = time.monotonic()
    second = services.start_postgres(tmp_path)  # a new free port, same data folder: no initdb this time
    try:
        assert time.monotonic() - began < 30
        conn = pg8000.native.Connection("postgres", host="127.0.0.1", port=second.port, database="threatflow")
        assert conn.run("SELECT v FROM kept") == [["still here"]]
        conn.close()
    finally:
        _assert_stopped(second)


def test_redis_ping_set_get(tmp_path: Path):
    import redis

    service = services.start_redis(tmp_path)
    try:
        assert service.env == {"REDIS_URL": f"redis://127.0.0.1:{service.port}/0"}
        client = redis.Redis.from_url(service.env["REDIS_URL"])
        assert client.ping() is True
        client.set("k", "v")
        assert client.get("k") == b"v"
        client.close()
    finally:
        _assert_stopped(service)


def test_pubsub_emulator_create_topic_and_publish(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    service = services.start_pubsub_emulator(tmp_path, project=PROJECT)
    try:
        assert service.env == {"PUBSUB_EMULATOR_HOST": f"127.0.0.1:{service.port}", "PUBSUB_PROJECT_ID": PROJECT}
        for key, value in service.env.items():
            monkeypatch.setenv(key, value)
        from google.cloud import pubsub_v1

        publisher = pubsub_v1.PublisherClient()
        subscriber = pubsub_v1.SubscriberClient()
        topic = publisher.topic_path(PROJECT, f"topic-{uuid.uuid4().hex[:8]}")
        subscription = subscriber.subscription_path(PROJECT, f"sub-{uuid.uuid4().hex[:8]}")
        publisher.create_topic(name=topic)
        subscriber.create_subscription(name=subscription, topic=topic)
        assert publisher.publish(topic, b"hello", kind="check").result(timeout=30)
        response = subscriber.pull(request={"subscription": subscription, "max_messages": 1}, timeout=30)
        message = response.received_messages[0].message
        assert message.data == b"hello" and message.attributes["kind"] == "check"
        publisher.stop()
        subscriber.close()
    finally:
        _assert_stopped(service)


def test_firestore_emulator_set_get_and_reset(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    service = services.start_firestore_emulator(tmp_path, project=PROJECT)
    try:
        host = service.env["FIRESTORE_EMULATOR_HOST"]
        assert host == f"127.0.0.1:{service.port}"
        monkeypatch.setenv("FIRESTORE_EMULATOR_HOST", host)
        from google.cloud import firestore

        client = firestore.Client(project=PROJECT)
        doc = client.collection("checks").document("one")
        doc.set({"n": 1, "tag": "x"})
        assert doc.get().to_dict() == {"n": 1, "tag": "x"}
        services.reset_firestore(host, PROJECT)
        assert not doc.get().exists
        client.close()
    finally:
        _assert_stopped(service)


def test_storage_emulator_creates_buckets_and_round_trips_a_blob(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    service = services.start_storage_emulator(tmp_path, buckets=["tf-uploads", "tf-reports"])
    try:
        assert service.env == {"STORAGE_EMULATOR_HOST": f"http://127.0.0.1:{service.port}"}
        monkeypatch.setenv("STORAGE_EMULATOR_HOST", service.env["STORAGE_EMULATOR_HOST"])
        from google.auth.credentials import AnonymousCredentials
        from google.cloud import storage

        client = storage.Client(project=PROJECT, credentials=AnonymousCredentials())
        assert {"tf-uploads", "tf-reports"} <= {b.name for b in client.list_buckets()}
        blob = client.bucket("tf-uploads").blob("dir/report.json")
        blob.upload_from_string(b'{"ok": true}', content_type="application/json")
        assert client.bucket("tf-uploads").blob("dir/report.json").download_as_bytes() == b'{"ok": true}'
    finally:
        _assert_stopped(service)


def test_a_taken_port_fails_with_the_log_tail(tmp_path: Path):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(services.ServiceStartError) as caught:
            services.start_redis(tmp_path, port=port)
    message = str(caught.value)
    assert message.startswith("redis: exited with code")
    assert "command: " in message and "redis-server --bind 127.0.0.1" in message
    assert "Address already in use" in message  # from the log tail


def test_a_port_lost_to_a_race_is_retried_on_a_new_one(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        ports = iter([taken.getsockname()[1]])
        real_free_port = services.free_port
        monkeypatch.setattr(services, "free_port", lambda: next(ports, None) or real_free_port())
        service = services.start_redis(tmp_path)
        try:
            assert service.port != taken.getsockname()[1]
            assert services.is_alive(service)
        finally:
            _assert_stopped(service)


def test_wait_for_port_times_out_naming_the_service(tmp_path: Path):
    log = tmp_path / "x.log"
    log.write_text("".join(f"line {i}\n" for i in range(30)))
    with pytest.raises(services.ServiceStartError) as caught:
        services.wait_for_port(services.free_port(), timeout=0.3, name="thing", log_path=log)
    message = str(caught.value)
    assert message.startswith("thing: nothing listened")
    assert "line 29" in message and "line 10" in message and "line 9\n" not in message


def test_stop_kills_a_service_that_ignores_the_polite_signal(tmp_path: Path):
    import subprocess
    import sys

    # A stand-in that ignores SIGTERM: stop() must fall back to SIGKILL after the timeout.
    code = "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); print('up', flush=True); time.sleep(60)"
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, start_new_session=True)
    assert proc.stdout is not None and proc.stdout.readline() == b"up\n"
    service = services.RunningService("fake", proc.pid, 0, {}, tmp_path / "fake.log")
    began = time.monotonic()
    services.stop(service, timeout=0.5)
    assert not services.is_alive(service)
    assert time.monotonic() - began < 5
    proc.stdout.close()


def test_gcloud_sdk_root_has_the_emulators():
    root = services.gcloud_sdk_root()
    assert (root / "platform" / "cloud-firestore-emulator" / "cloud-firestore-emulator.jar").is_file()
    assert list((root / "platform" / "pubsub-emulator" / "lib").glob("cloud-pubsub-emulator-*-all.jar"))


def test_stop_works_from_a_process_that_is_not_the_parent(tmp_path: Path):
    """`devstack down` from another shell: the service is not our child there."""
    import json
    import subprocess
    import sys

    code = (
        "import json, sys; from pathlib import Path; from threatflow.devstack import services; "
        "s = services.start_redis(Path(sys.argv[1])); print(json.dumps([s.pid, s.port]))"
    )
    out = subprocess.run([sys.executable, "-c", code, str(tmp_path)], capture_output=True, text=True, check=True, timeout=60)
    pid, port = json.loads(out.stdout)
    service = services.RunningService("redis", pid, port, {}, tmp_path / "redis" / "redis.log")
    assert services.is_alive(service)
    _assert_stopped(service)


def test_up_on_a_port_another_server_holds_stops_before_starting_anything(tmp_path, capsys):
    """README: `make run` on 8080, `THREATFLOW_PORT` to change. With the port held (another checkout's stack), `up`
    started every service, pointed the push subscriptions at the other server, printed "ThreatFlow local stack is up"
    with the other stack's readiness, and a few seconds later "the gateway exited with code 1"; "Address already in
    use" was only in gateway.log."""
    from threatflow.devstack import stack

    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen(1)
        port = holder.getsockname()[1]
        began = time.monotonic()
        assert stack.up(state_dir=tmp_path / "state", port=port, scheduler=False) == 1
        said = capsys.readouterr().out
    assert f"port {port} is in use" in said and "THREATFLOW_PORT" in said, said
    assert "local stack is up" not in said and not (tmp_path / "state" / "postgres").exists()
    assert time.monotonic() - began < 5
