"""`threatflow flows load`: a gzip raw-layout file streamed in batches into the real flows function,
interrupted and resumed from its progress file, with nothing stored twice."""

import contextlib
import gzip
import sys
import time
from pathlib import Path

import pytest
from flows_support import publish, trained_model
from helpers import create_user

pytestmark = pytest.mark.integration
PROJECT = "threatflow-test"
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "perf"))


class Interrupted(Exception):
    pass


@pytest.fixture
def poster(function_client, backend_env):
    from google.cloud import pubsub_v1

    from threatflow.adapters.storage import GcsBlobs

    publisher = pubsub_v1.PublisherClient()
    with contextlib.suppress(Exception):  # the enrichment capability's topic; made once per run
        publisher.create_topic(name=publisher.topic_path(PROJECT, "ioc-enrichment-requested"))
    publish(GcsBlobs(PROJECT), trained_model())
    password = create_user(backend_env["DATABASE_URL"], "loader", "analyst")
    token = function_client("auth").post("/api/v1/auth/token", json={"username": "loader", "password": password}).get_json()["access_token"]
    client = function_client("flows")
    sent = []

    def post(body, *, fail_after=None):
        if fail_after is not None and len(sent) >= fail_after:
            raise Interrupted("connection lost")
        response = client.post("/api/v1/flows/batch", json=body, headers={"Authorization": f"Bearer {token}"})
        sent.append(len(body["flows"]))
        return response.status_code, response.get_json()

    post.sent = sent
    return post


def _count(url):
    from threatflow.adapters.postgres import create_engine
    from threatflow.platform.config import Settings

    engine = create_engine(Settings.from_env({"DATABASE_URL": url}))
    with engine.connect() as conn:
        total, keys = conn.exec_driver_sql("SELECT count(*), count(DISTINCT event_key) FROM flow_events").one()
    engine.dispose()
    return total, keys


def test_load_is_resumable_and_idempotent(poster, backend_env, tmp_path, capsys):
    import flowgen

    from threatflow.cli import flows as cli

    data = tmp_path / "flows.csv.gz"
    lines = [",".join(flowgen.raw_line(f)) for f in flowgen.generate(1000, seed=21)]
    lines.insert(500, ",".join(["bad"] * 49))  # one unusable row, reported and skipped
    data.write_bytes(gzip.compress(("\n".join(lines) + "\n").encode()))
    progress = cli.Progress(tmp_path / "progress.json")

    with pytest.raises(Interrupted):
        cli.load_file(data, post=lambda b: poster(b, fail_after=2), progress=progress, batch_size=200, show_bar=False, in_flight=1)
    entry = cli.Progress(tmp_path / "progress.json").entry(cli.file_sha256(data), data)
    assert entry["rows_done"] == 400 and not entry.get("done")  # two batches acknowledged, saved
    assert _count(backend_env["DATABASE_URL"]) == (400, 400)

    # Resume: a fresh run reads the ledger, skips the 400 rows and loads the rest.
    resumed = cli.Progress(tmp_path / "progress.json")
    entry = cli.load_file(data, post=poster, progress=resumed, batch_size=300, show_bar=False)
    assert entry["done"] and entry["rows_done"] == 1001 and entry["invalid"] == 1
    assert entry["stored"] == 1000 and entry["duplicates"] == 0
    assert "skipped line 501: " in capsys.readouterr().err  # the API's listed problem, by its line in the file
    assert _count(backend_env["DATABASE_URL"]) == (1000, 1000)

    # A lost ledger (or a crash between the API's commit and the ledger write): re-sent rows are stored once.
    fresh = cli.Progress(tmp_path / "other-progress.json")
    again = cli.load_file(data, post=poster, progress=fresh, batch_size=500, show_bar=False)
    assert again["stored"] == 0 and again["duplicates"] == 1000
    assert _count(backend_env["DATABASE_URL"]) == (1000, 1000)
    # A finished file is not read again.
    sent = len(poster.sent)
    cli.load_file(data, post=poster, progress=cli.Progress(tmp_path / "progress.json"), batch_size=500, show_bar=False)
    assert len(poster.sent) == sent


def test_partitioned_layout_without_addresses_loads_too(poster, backend_env, tmp_path):
    from helpers import require_shared_data

    from threatflow.cli import flows as cli

    source = require_shared_data("unsw-nb15", "unsw_nb15_dev.csv.gz")
    with gzip.open(source, "rt") as handle:
        head = [next(handle) for _ in range(301)]  # header + 300 flows
    data = tmp_path / "part.csv"
    data.write_text("".join(head))
    entry = cli.load_file(data, post=poster, progress=cli.Progress(tmp_path / "p.json"), batch_size=128, show_bar=False)
    assert entry["stored"] == 300 and entry["invalid"] == 0
    assert _count(backend_env["DATABASE_URL"]) == (300, 300)


def test_a_capture_older_than_the_retention_loads_with_its_times_shifted(poster, backend_env, tmp_path, capsys):
    """The official raw files were captured in 2015: as they are, every flow is older than the retention window and
    refused. --shift-times moves every stime/ltime by one offset (newest flow a minute before the load began), kept
    in the ledger so a resumed load moves them by the same offset."""
    import flowgen

    from threatflow.cli import flows as cli

    flows = list(flowgen.generate(600, seed=5))
    newest = max(int(f["ltime"]) for f in flows)
    back = newest - 1_421_927_414 + 86_400  # flowgen writes the last 30 days; move the capture to 2015
    lines = []
    for flow in flows:
        cells = flowgen.raw_line({**flow, "stime": str(int(flow["stime"]) - back), "ltime": str(int(flow["ltime"]) - back)})
        lines.append(",".join(cells))
    data = tmp_path / "unsw-2015.csv"
    data.write_text("\n".join(lines) + "\n")

    as_is = cli.load_file(data, post=poster, progress=cli.Progress(tmp_path / "as-is.json"), batch_size=300, show_bar=False)
    assert as_is["stored"] == 0 and as_is["invalid"] == 600  # every flow: stime older than the retention window
    assert "older than the retention window" in capsys.readouterr().err

    started = float(int(time.time()))  # the load's "now", held to check the offset
    ledger = tmp_path / "shifted.json"
    first_batch_only = len(poster.sent) + 1
    with pytest.raises(Interrupted):
        cli.load_file(data, post=lambda b: poster(b, fail_after=first_batch_only), progress=cli.Progress(ledger),
                      batch_size=300, show_bar=False, in_flight=1, shift=True, now=lambda: started)  # fmt: skip
    offset = cli.Progress(ledger).entry(cli.file_sha256(data) + "+shifted", data)["time_shift"]
    assert offset == int(started - 60 - (newest - back))
    resumed = cli.load_file(
        data, post=poster, progress=cli.Progress(ledger), batch_size=300, show_bar=False, shift=True, now=lambda: started + 3_600
    )  # fmt: skip  (a later run keeps the first run's offset)
    assert resumed["done"] and resumed["stored"] == 600 and resumed["invalid"] == 0  # 300 before the interruption, 300 after
    from threatflow.adapters.postgres import create_engine
    from threatflow.platform.config import Settings

    engine = create_engine(Settings.from_env({"DATABASE_URL": backend_env["DATABASE_URL"]}))
    with engine.connect() as conn:
        stored = conn.exec_driver_sql("SELECT extract(epoch FROM max(event_time))::bigint, count(*) FROM flow_events").one()
    engine.dispose()
    assert tuple(stored) == (newest - back + offset, 600)  # spacing kept: the newest flow is a minute before `started`


class FunctionSession:
    """The `requests.Session` calls `flows load --upload` makes, answered by the real flows function (its test client).

    `token_lost_after` polls of the job, the caller's token stops being valid (it expired: an hour, shorter than a large
    upload's job) and `unreachable_at` names a poll at which the network fails once (a gateway restart)."""

    def __init__(self, client, *, token_lost_after, unreachable_at):
        self.client, self.polls = client, 0
        self.token_lost_after, self.unreachable_at = token_lost_after, unreachable_at

    def post(self, url, *, json=None, headers=None, timeout=None):
        return _Answer(self.client.post(_path(url), json=json, headers=headers))

    def get(self, url, *, headers=None, timeout=None):
        import requests

        self.polls += 1
        if self.polls == self.unreachable_at:
            raise requests.ConnectionError("connection refused")
        if self.polls > self.token_lost_after:
            headers = {"Authorization": "Bearer expired." + "x" * 40}
        return _Answer(self.client.get(_path(url), headers=headers))


def _path(url):
    return "/" + url.split("://", 1)[1].split("/", 1)[1]


class _Answer:
    def __init__(self, response):
        self.status_code, self.text = response.status_code, response.get_data(as_text=True)
        self._json = response.get_json(silent=True)

    def json(self):
        if self._json is None:
            raise ValueError("not JSON")
        return self._json


def test_an_upload_whose_job_can_no_longer_be_read_names_the_job_to_follow(function_client, backend_env, tmp_path, capsys, monkeypatch):
    """`flows load --upload` follows the flow-ingest job it queued. A poll that failed (the token expired during a long
    job, the gateway restarting) showed `None 0 rows`, then died with a KeyError traceback, and the job's id, which the
    job goes on under, was never printed. A network failure is waited out; a poll the API refuses stops the command with
    an error naming the job and the command that shows it."""
    import flowgen
    from google.cloud import pubsub_v1

    from threatflow.cli import flows as cli
    from threatflow.platform.errors import ThreatFlowError

    publisher = pubsub_v1.PublisherClient()
    with contextlib.suppress(Exception):  # made once per run; nothing pushes it here, so the job stays queued
        publisher.create_topic(name=publisher.topic_path(PROJECT, "flow-ingest"))
    monkeypatch.setenv("BUCKET_UPLOADS", "threatflow-uploads")
    monkeypatch.setattr(cli, "UPLOAD_POLL_SECONDS", 0.05, raising=False)
    password = create_user(backend_env["DATABASE_URL"], "uploader", "analyst")
    login = {"username": "uploader", "password": password}
    token = function_client("auth").post("/api/v1/auth/token", json=login).get_json()["access_token"]
    data = tmp_path / "big.csv"
    data.write_text("\n".join(",".join(flowgen.raw_line(f)) for f in flowgen.generate(50, seed=3)) + "\n")
    session = FunctionSession(function_client("flows"), token_lost_after=4, unreachable_at=2)

    with pytest.raises(ThreatFlowError) as raised:
        cli.upload_file(data, base="http://127.0.0.1:8080", token=token, session=session)
    err = capsys.readouterr().err
    job_id = err.split("flow-ingest job ", 1)[1].split()[0].strip(";:,")
    assert len(job_id) == 32 and f"threatflow api GET /api/v1/flows/uploads/{job_id}" in err  # printed when queued
    assert session.polls == 5  # the unreachable poll was retried, the refused one ended it
    message = raised.value.message
    assert "HTTP 401" in message and f"threatflow api GET /api/v1/flows/uploads/{job_id}" in message, message


@pytest.mark.parametrize(("role", "status", "advice"), [(None, 401, "threatflow login"), ("reader", 403, "analyst")])
def test_a_load_refused_for_the_callers_token_or_role_says_what_to_do(function_client, backend_env, tmp_path, role, status, advice):
    """Not logged in (or the token expired), `flows load` said "the API refused a batch (HTTP 401): missing bearer
    token ...; progress is saved, re-run to resume": re-running as it was fails the same way. The error now says to
    log in (401) or that loading needs the analyst role (403)."""
    import flowgen

    from threatflow.cli import flows as cli
    from threatflow.platform.errors import ThreatFlowError

    headers = {}
    if role:
        password = create_user(backend_env["DATABASE_URL"], "watcher", role)
        login = {"username": "watcher", "password": password}
        headers = {"Authorization": "Bearer " + function_client("auth").post("/api/v1/auth/token", json=login).get_json()["access_token"]}
    client = function_client("flows")

    def post(body):
        response = client.post("/api/v1/flows/batch", json=body, headers=headers)
        return response.status_code, response.get_json()

    data = tmp_path / "flows.csv"
    data.write_text("\n".join(",".join(flowgen.raw_line(f)) for f in flowgen.generate(20, seed=4)) + "\n")
    with pytest.raises(ThreatFlowError) as raised:
        cli.load_file(data, post=post, progress=cli.Progress(tmp_path / "p.json"), batch_size=10, show_bar=False)
    assert f"HTTP {status}" in raised.value.message and advice in raised.value.message, raised.value.message
    assert "re-run to resume" not in raised.value.message


def test_a_capture_older_than_the_retention_loaded_as_it_is_points_to_shift_times(poster, tmp_path, capsys):
    """Loaded as it is, a capture from 2015 (the official raw files) is refused row by row as older than the retention
    window, and the load ended with "stored 0, invalid 600" and nothing on what to do: --shift-times is the answer."""
    from datetime import UTC, datetime

    import flowgen

    from threatflow.cli import flows as cli

    lines = [",".join(flowgen.raw_line(f)) for f in flowgen.generate(50, seed=8, end=datetime(2015, 2, 1, tzinfo=UTC))]
    data = tmp_path / "unsw-2015.csv"
    data.write_text("\n".join(lines) + "\n")
    entry = cli.load_file(data, post=poster, progress=cli.Progress(tmp_path / "p.json"), batch_size=25, show_bar=False)
    assert (entry["stored"], entry["invalid"]) == (0, 50)
    assert f"threatflow flows load --shift-times {data}" in capsys.readouterr().err


def test_an_upload_refused_for_an_expired_token_says_to_log_in(function_client, backend_env, tmp_path, monkeypatch):
    """`flows load --upload` an hour after `threatflow login` ended on "the API refused the upload job (HTTP 401):
    {...token has expired...}", the JSON of the answer and nothing on what to do."""
    import flowgen

    from threatflow.cli import flows as cli
    from threatflow.platform.errors import ThreatFlowError

    monkeypatch.setenv("BUCKET_UPLOADS", "threatflow-uploads")
    data = tmp_path / "flows.csv"
    data.write_text("\n".join(",".join(flowgen.raw_line(f)) for f in flowgen.generate(10, seed=6)) + "\n")
    session = FunctionSession(function_client("flows"), token_lost_after=0, unreachable_at=0)
    with pytest.raises(ThreatFlowError) as raised:
        cli.upload_file(data, base="http://127.0.0.1:8080", token="expired." + "x" * 40, session=session)
    assert "HTTP 401" in raised.value.message and "threatflow login" in raised.value.message, raised.value.message


@pytest.mark.parametrize(("role", "status", "advice"), [("reader", 403, "analyst"), ("analyst", 503, "threatflow models train")])
def test_an_upload_the_api_would_refuse_puts_nothing_in_the_bucket(
    function_client, backend_env, tmp_path, monkeypatch, request, role, status, advice
):
    """`flows load --upload` by a reader copied the whole file (up to 2 GiB) into the uploads bucket, then got the 403
    for the job; with no flow model served, the 503 likewise came after the copy. The API is asked first."""
    import flowgen

    from threatflow.adapters.storage import GcsBlobs
    from threatflow.cli import flows as cli
    from threatflow.platform.errors import ThreatFlowError

    monkeypatch.setenv("BUCKET_UPLOADS", "threatflow-uploads")
    if status == 503:
        request.getfixturevalue("models_bucket")  # a models bucket of the test's own, empty: no model served
    username = f"up-{role}"
    password = create_user(backend_env["DATABASE_URL"], username, role)
    login = {"username": username, "password": password}
    token = function_client("auth").post("/api/v1/auth/token", json=login).get_json()["access_token"]
    data = tmp_path / f"refused-{role}.csv"
    data.write_text("\n".join(",".join(flowgen.raw_line(f)) for f in flowgen.generate(10, seed=9)) + "\n")
    session = FunctionSession(function_client("flows"), token_lost_after=100, unreachable_at=0)
    with pytest.raises(ThreatFlowError) as raised:
        cli.upload_file(data, base="http://127.0.0.1:8080", token=token, session=session)
    assert f"HTTP {status}" in raised.value.message and advice in raised.value.message, raised.value.message
    assert not GcsBlobs(PROJECT).exists("threatflow-uploads", f"flows/{cli.file_sha256(data)}/{data.name}")


def test_the_bar_counts_the_rows_the_api_acknowledged_as_the_summary_does(poster, tmp_path, capsys):
    """The bar counted rows as they were sent (before the API answered), and its final figure was this run's rows, where
    the per-file line and the summary give the file's stored, duplicates and invalid: a resumed load of 1,001 rows, one
    invalid, ended on "601 rows" beside "stored 1,000, ..., invalid 1". The bar now shows the acknowledged counts."""
    import re

    import flowgen

    from threatflow.cli import flows as cli

    data = tmp_path / "flows.csv"
    lines = [",".join(flowgen.raw_line(f)) for f in flowgen.generate(1000, seed=31)]
    lines.insert(700, ",".join(["bad"] * 49))
    data.write_text("\n".join(lines) + "\n")
    with pytest.raises(Interrupted):
        cli.load_file(
            data,
            post=lambda b: poster(b, fail_after=2),
            progress=cli.Progress(tmp_path / "p.json"),
            batch_size=200,
            show_bar=False,
            in_flight=1,
        )
    capsys.readouterr()
    entry = cli.load_file(data, post=poster, progress=cli.Progress(tmp_path / "p.json"), batch_size=300, show_bar=True)
    final = capsys.readouterr().err.split("\r")[-1]
    counts = (entry["stored"], entry["duplicates"], entry["invalid"])
    assert counts == (1000, 0, 1)
    shown = re.search(r"([\d,]+) rows \(([\d,]+) stored, ([\d,]+) duplicates, ([\d,]+) invalid\)", final)
    assert shown, final
    rows, *parts = (int(g.replace(",", "")) for g in shown.groups())
    assert tuple(parts) == counts and rows == sum(counts), final
