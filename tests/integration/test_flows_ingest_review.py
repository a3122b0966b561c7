"""The flow-ingest path attacked where the earlier reviews did not look: flows without a time of their own
(the partitioned UNSW-NB15 layout carries no stime) sent again, loaded again, uploaded again; ground
truth that contradicts itself; cells the raw files never write."""

import gzip
from typing import Any

import pytest
from flows_support import deliver_at_once, deliver_upload, flows_api, ingest_job, json_flows, queue_upload, sql_scalar
from helpers import require_shared_data

from threatflow.flows import ingest

pytestmark = pytest.mark.integration


@pytest.fixture
def api(function_client, backend_env):
    return flows_api(function_client, backend_env["DATABASE_URL"])


def _undated(count: int, *, seed: int) -> list[dict[str, Any]]:
    return [{k: v for k, v in flow.items() if k not in ("stime", "ltime")} for flow in json_flows(count, seed=seed)]


def _partitioned(rows: int) -> str:
    """The first rows of the real partitioned dev file, with its header: no addresses, no stime."""
    with gzip.open(require_shared_data("unsw-nb15", "unsw_nb15_dev.csv.gz"), "rt") as handle:
        return "".join(next(handle) for _ in range(rows + 1))


# -- flows without stime, sent again ------------------------------------------------------------------------


def test_an_undated_batch_sent_again_is_stored_once(api, backend_env):
    """The README: "source defaults to the body's sha256, so re-sending a batch stores nothing twice". The key is
    (event_time, event_key), and a flow without stime took the time of each post: a client retrying a batch whose
    answer it lost (a timeout) stored every flow of it twice, and the bridge sighted its attackers twice."""
    flows = _undated(40, seed=61)
    first = api.post("/api/v1/flows/batch", {"flows": flows})
    assert first.status_code == 200 and first.get_json()["stored"] == 40, first.get_data(as_text=True)[:300]
    again = api.post("/api/v1/flows/batch", {"flows": flows}).get_json()
    assert (again["stored"], again["duplicates"]) == (0, 40), again
    assert again["bridge"]["sources"] == 0
    assert sql_scalar(backend_env["DATABASE_URL"], "SELECT count(*) FROM flow_events") == 40


class Killed(Exception):
    pass


def test_a_partitioned_file_reloaded_after_a_kill_before_its_first_answer_is_stored_once(api, backend_env, tmp_path):
    """`flows load` kept the load's start time (every undated flow's event time) in its progress file, written
    only once a batch was acknowledged: killed after the API stored the first batches but before their answer,
    the re-run picked a new start time and stored them all again; so did the same file loaded from another
    machine or with another --progress-file."""
    from threatflow.cli import flows as cli

    data = tmp_path / "part.csv"
    data.write_text(_partitioned(300))

    def post(body: dict[str, Any]) -> tuple[int, Any]:
        response = api.post("/api/v1/flows/batch", body)
        return response.status_code, response.get_json()

    def dies_after_storing(body: dict[str, Any]) -> tuple[int, Any]:
        post(body)  # the API commits the batch; the loader dies before it reads the answer
        raise Killed

    with pytest.raises(Killed):
        ledger = cli.Progress(tmp_path / "p.json")
        cli.load_file(data, post=dies_after_storing, progress=ledger, batch_size=100, show_bar=False, in_flight=1)
    url = backend_env["DATABASE_URL"]
    stored = sql_scalar(url, "SELECT count(*) FROM flow_events")  # the batches in flight when it died (one read ahead)
    assert stored in (100, 200) and cli.Progress(tmp_path / "p.json").doc == {}  # nothing acknowledged, nothing saved
    entry = cli.load_file(data, post=post, progress=cli.Progress(tmp_path / "p.json"), batch_size=100, show_bar=False)
    assert (entry["stored"], entry["duplicates"]) == (300 - stored, stored), entry
    other = cli.load_file(data, post=post, progress=cli.Progress(tmp_path / "elsewhere.json"), batch_size=128, show_bar=False)
    assert (other["stored"], other["duplicates"]) == (0, 300), other
    assert sql_scalar(url, "SELECT count(*) FROM flow_events") == 300


def test_one_partitioned_file_uploaded_under_two_names_stores_each_flow_once(api, function_client, backend_env):
    """Event keys are the file's sha256 and the row "so a repeated row is stored once", and the same file uploaded
    again maps to the same events (handlers.py): only for rows with stime. An undated row took its job's creation
    time, so two jobs of one partitioned file, even queued in the same second, stored every flow twice."""
    data = gzip.compress(_partitioned(250).encode())
    jobs = [queue_upload(api, "flows/part-a.csv.gz", data), queue_upload(api, "flows/part-b.csv.gz", data)]
    worker = function_client("flow-ingest")
    done = deliver_at_once(worker, jobs)
    assert all(j["state"] == "succeeded" and j["stored"] + j["duplicates"] == 250 for j in done), done
    assert sum(j["stored"] for j in done) == 250, done
    # ... and the file uploaded again once both have finished (a new job: the marker names finished ones)
    rerun = api.post("/api/v1/flows/uploads", {"object": "flows/part-a.csv.gz"}).get_json()["job_id"]
    assert deliver_upload(worker, rerun).status_code == 200
    assert (ingest_job(rerun)["stored"], ingest_job(rerun)["duplicates"]) == (0, 250)
    assert sql_scalar(backend_env["DATABASE_URL"], "SELECT count(*) FROM flow_events") == 250


@pytest.mark.parametrize("layout", ["raw", "partitioned"])
def test_one_file_uploaded_and_loaded_with_flows_load_stores_each_flow_once(api, function_client, backend_env, tmp_path, layout):
    """`flows load FILE` and `flows load --upload FILE` are two ways to load one file, and both key its events by the
    file's sha256 and the row number, yet the upload's worker named its source `gcs:<sha256>` and the CLI
    `file:<sha256>`: a file uploaded, then loaded without --upload (an upload whose command was lost, a colleague
    loading it the other way), stored every flow twice, dated ones at the same time, and doubled every count of
    search, the timeline and the host view."""
    import flowgen

    from threatflow.cli import flows as cli

    if layout == "raw":
        text = "\n".join(",".join(flowgen.raw_line(flow)) for flow in flowgen.generate(120, seed=73)) + "\n"
    else:
        text = _partitioned(120)
    data = tmp_path / f"capture-{layout}.csv.gz"
    data.write_bytes(gzip.compress(text.encode(), mtime=0))

    job_id = queue_upload(api, f"flows/{cli.file_sha256(data)}/{data.name}", data.read_bytes())  # as --upload names it
    assert deliver_upload(function_client("flow-ingest"), job_id).status_code == 200
    assert (ingest_job(job_id)["state"], ingest_job(job_id)["stored"]) == ("succeeded", 120), ingest_job(job_id)

    def post(body: dict[str, Any]) -> tuple[int, Any]:
        response = api.post("/api/v1/flows/batch", body)
        return response.status_code, response.get_json()

    loaded = cli.load_file(data, post=post, progress=cli.Progress(tmp_path / "p.json"), batch_size=50, show_bar=False)
    assert (loaded["stored"], loaded["duplicates"]) == (0, 120), loaded
    assert sql_scalar(backend_env["DATABASE_URL"], "SELECT count(*) FROM flow_events") == 120


def test_a_sources_first_observed_time_lives_as_long_as_its_events(api, backend_env):
    """flow-retention deletes the first-observed times older than the retention (their events are dropped), and
    a source whose record is older than the window (retention not run yet) starts anew: re-sent after its events
    were dropped, an undated batch is stored again at a time the window keeps, not refused as too old."""
    from datetime import UTC, datetime, timedelta

    from threatflow.adapters.postgres import create_engine, unit_of_work
    from threatflow.flows import events_jobs, repository
    from threatflow.platform.config import Settings

    assert api.post("/api/v1/flows/batch", {"flows": _undated(5, seed=62)}).status_code == 200
    url = backend_env["DATABASE_URL"]
    recorded = sql_scalar(url, "SELECT observed_at FROM flow_event_sources")
    engine = create_engine(Settings.from_env({"DATABASE_URL": url}))
    try:
        now = datetime.now(UTC)
        with unit_of_work(engine) as conn:  # within the window: the recorded time, whatever `now` says
            assert repository.source_observed_at(conn, "s", now=now, oldest=now - timedelta(days=1)) == now
            later = now + timedelta(days=3)
            assert repository.source_observed_at(conn, "s", now=later, oldest=now - timedelta(days=1)) == now
            assert repository.source_observed_at(conn, "s", now=later, oldest=now + timedelta(days=2)) == later
        result = events_jobs.retention(engine=engine, now=recorded + timedelta(days=3), retention_days=1)
        assert result["sources_pruned"] == 1  # the batch's; "s" (observed `later`) is within the window
        with engine.connect() as conn:
            assert [r[0] for r in conn.exec_driver_sql("SELECT source FROM flow_event_sources")] == ["s"]
    finally:
        engine.dispose()


# -- ground truth that contradicts itself ---------------------------------------------------------------------


def test_a_label_that_contradicts_its_attack_cat_is_a_problem_naming_attack_cat(api, backend_env):
    """Ingest is strict about every field alone ("every bad label or category is a 400"), yet a flow labelled
    normal with attack_cat Exploits, or an attack whose category is Normal, was stored as it came: its ground
    truth is self-contradictory, search by label or attack_cat returned it under both, and retraining dropped it
    without a word (training skips "attack_cat: unknown or disagrees with label")."""
    flows = json_flows(6, seed=63)
    flows[0].update(label=0, attack_cat="Exploits")
    flows[1].update(label=1, attack_cat="Normal")
    flows[2].update(label="1", attack_cat=" Backdoors ")  # the raw files' spelling agrees with an attack
    flows[3].update(label=0, attack_cat="")  # a blank category: the dataset's Normal
    flows[4].update(label=1)
    flows[4].pop("attack_cat")  # an attack of unknown category
    flows[5].update(label=0, attack_cat="normal")
    refused = api.post("/api/v1/flows/batch", {"flows": flows})
    assert refused.status_code == 400, refused.get_data(as_text=True)[:300]
    errors = refused.get_json()["error"]["details"]["errors"]
    assert [(e["index"], e["field"]) for e in errors] == [(0, "attack_cat"), (1, "attack_cat")], errors
    assert "label" in errors[0]["reason"]
    stored = api.post("/api/v1/flows/batch", {"flows": flows, "skip_invalid": True}).get_json()
    assert (stored["stored"], stored["invalid"]) == (4, 2), stored
    contradictions = "SELECT count(*) FROM flow_events WHERE (attack_cat = 'Normal') <> (label = 0)"
    assert sql_scalar(backend_env["DATABASE_URL"], contradictions) == 0


def test_a_fractional_port_written_as_text_is_refused_as_the_same_number_is(api, backend_env):
    """`"sport": 80.5` is a 400 ("a port is a whole number"), but the same port as text, as every CSV cell reaches
    the API from `flows load`, was cut to 80 and stored: a flow's port silently changed on its way in."""
    flows = json_flows(4, seed=64)
    flows[0]["sport"] = 80.5
    flows[1]["sport"] = "80.5"
    flows[2]["dsport"] = " 443.9 "
    flows[3]["dsport"] = "0x01bb"  # what the raw files write: stored as 443
    body = api.post("/api/v1/flows/batch", {"flows": flows, "skip_invalid": True}).get_json()
    assert [(p["index"], p["field"]) for p in body["problems"]] == [(0, "sport"), (1, "sport"), (2, "dsport")], body
    assert body["stored"] == 1
    assert sql_scalar(backend_env["DATABASE_URL"], "SELECT dsport FROM flow_events") == 443


# -- partitions dropped by another instance -----------------------------------------------------------------


def test_a_day_dropped_by_another_instances_retention_is_made_again_not_a_500(api, backend_env):
    """Each process remembers the days whose partitions it made, and only the retention run's own process forgot
    them. flow-retention runs in the maintenance function, and an admin may run it with a shorter retention
    (`params.retention_days`): every flows or flow-ingest instance that had stored flows of a dropped day then
    sent the next batch of that day to a partition that was gone (500; the worker's job retried to the dead
    letter), until the instance restarted."""
    from datetime import UTC, datetime, timedelta

    from threatflow.adapters.postgres import create_engine, unit_of_work
    from threatflow.flows import repository
    from threatflow.platform.config import Settings

    day = datetime.now(UTC).replace(hour=12, minute=0, second=0, microsecond=0) - timedelta(days=10)
    flows = json_flows(20, seed=65)
    for k, flow in enumerate(flows):
        flow["stime"] = flow["ltime"] = int(day.timestamp()) + k
    first = api.post("/api/v1/flows/batch", {"flows": flows[:10]})
    assert first.status_code == 200 and first.get_json()["stored"] == 10, first.get_data(as_text=True)[:300]
    # Another instance's flow-retention, run with retention_days=7: the day goes, this process is not told.
    engine = create_engine(Settings.from_env({"DATABASE_URL": backend_env["DATABASE_URL"]}))
    try:
        with unit_of_work(engine) as conn:
            (partition,) = [p for p in repository.partitions(conn) if p.day == day.date()]
            repository.drop_partition(conn, partition)
    finally:
        engine.dispose()
    again = api.post("/api/v1/flows/batch", {"flows": flows[10:]})
    assert again.status_code == 200, again.get_data(as_text=True)[:300]
    assert again.get_json()["stored"] == 10
    assert sql_scalar(backend_env["DATABASE_URL"], "SELECT count(*) FROM flow_events") == 10


# -- bounded work: a flow of a million fields --------------------------------------------------------------


def test_a_flow_with_hundreds_of_thousands_of_fields_is_one_problem(api, backend_env):
    """The batch route skips the web layer's generic JSON walk, and validation listed each unknown field of a
    flow as a problem: a 33 MB body holding one flow of 2.3 M short fields took 16 s of CPU and 825 MB of
    memory in validation alone (measured in process; a valid 9 MB batch of 10,000 flows: 0.5 s), enough for two
    such requests to exhaust the flows function's 2 GiB. A flow has at most 51 distinct fields (41 features and
    10 pass-through); one with more than 64 is now refused as one problem, before its fields are looked at."""
    valid = json_flows(2, seed=66)
    huge = {**valid[0], **{f"x{i}": 0 for i in range(200_000)}}
    response = api.post("/api/v1/flows/batch", {"flows": [huge, valid[1]], "skip_invalid": True})
    assert response.status_code == 200, response.get_data(as_text=True)[:300]
    body = response.get_json()
    assert (body["stored"], body["invalid"], body["problems_total"]) == (1, 1, 1), {k: body[k] for k in ("stored", "invalid")}
    assert body["problems"][0]["index"] == 0 and "fields" in body["problems"][0]["reason"]
    at_the_bound = {**valid[0], **{f"x{i}": 0 for i in range(64 - len(valid[0]))}}
    named = api.post("/api/v1/flows/batch", {"flows": [at_the_bound]}).get_json()["error"]["details"]
    assert {e["reason"] for e in named["errors"]} == {"unknown field"}  # within the bound, each field is named


# -- whose rows: an analyst naming the worker's sources ---------------------------------------------------


def test_a_batch_cannot_claim_the_rows_of_an_upload_by_naming_its_source(api, function_client, backend_env):
    """An upload's events are keyed by `gcs:<its sha256>` and the row number, and a row already stored is a
    duplicate. POST /flows/batch let any analyst name that source: knowing the file (a shared feed, a published
    capture), one posted its rows first with flipped labels, and the upload, run later, stored none of its own
    (all "duplicates") while search and retraining read the forged ground truth. The worker's `gcs:` and the
    route's own `batch:` (a body's hash) are not a client's to name. Uploads are now keyed `file:<sha256>`, the name
    `flows load` gives the file: rows posted first under it are other events (an event's key covers its flow), never
    the upload's."""
    import hashlib

    import flowgen

    from threatflow.flows.ingest import RAW_COLUMNS

    lines = [list(flowgen.raw_line(flow)) for flow in flowgen.generate(30, seed=67)]
    data = ("\n".join(",".join(cells) for cells in lines) + "\n").encode()
    source = "gcs:" + hashlib.sha256(data).hexdigest()[:32]
    forged = []
    for cells in lines:
        flipped = list(cells)
        flipped[47], flipped[48] = ("", "0") if cells[48] == "1" else ("Exploits", "1")  # attack_cat, Label
        forged.append(dict(zip(RAW_COLUMNS, flipped, strict=True)))
    claimed = api.post("/api/v1/flows/batch", {"flows": forged, "source": source, "positions": list(range(30))})
    as_the_cli = {"flows": forged[:5], "source": "file:" + source[4:], "positions": list(range(5))}
    assert api.post("/api/v1/flows/batch", as_the_cli).get_json()["stored"] == 5  # the upload's own name today
    job_id = queue_upload(api, "flows/shared-feed.csv", data)
    assert deliver_upload(function_client("flow-ingest"), job_id).status_code == 200
    assert ingest_job(job_id)["source"] == as_the_cli["source"]
    assert (ingest_job(job_id)["stored"], ingest_job(job_id)["duplicates"]) == (30, 0), claimed.get_json()
    assert claimed.status_code == 400 and claimed.get_json()["error"]["details"]["field"] == "source"
    assert api.post("/api/v1/flows/batch", {"flows": forged[:1], "source": "batch:0123"}).status_code == 400
    truth = "SELECT count(*) FROM flow_events WHERE label = 1"
    forged_attacks = sum(cells[48] == "0" for cells in lines[:5])  # the five forged rows stay: the README's trust note
    assert sql_scalar(backend_env["DATABASE_URL"], truth) == sum(cells[48] == "1" for cells in lines) + forged_attacks


def test_rows_posted_first_under_a_client_named_source_do_not_claim_the_rows_of_that_source(api, backend_env):
    """A client-named source (`flows load` names a file `file:<its sha256>`) was a key space anyone could fill first:
    an analyst who knew the file posted other rows (here its rows with flipped labels) under its source and row
    numbers, and the real load, run later, stored none of its own ("duplicates"). An event's key now covers the
    flow as well as its source and position, so only the same flow at the same place is a duplicate."""
    flows = json_flows(30, seed=71)
    forged = [{**flow, "label": 1 - flow["label"], "attack_cat": "Normal" if flow["label"] else "Exploits"} for flow in flows]
    source, positions = "file:" + "ab" * 32, list(range(30))
    first = api.post("/api/v1/flows/batch", {"flows": forged, "source": source, "positions": positions})
    assert first.status_code == 200 and first.get_json()["stored"] == 30, first.get_data(as_text=True)[:300]
    real = api.post("/api/v1/flows/batch", {"flows": flows, "source": source, "positions": positions}).get_json()
    assert (real["stored"], real["duplicates"]) == (30, 0), real
    again = api.post("/api/v1/flows/batch", {"flows": flows, "source": source, "positions": positions}).get_json()
    assert (again["stored"], again["duplicates"]) == (0, 30), again  # the same rows sent again: still stored once
    truth = f"SELECT count(*) FROM flow_events WHERE source = '{source}' AND label = 1"
    assert sql_scalar(backend_env["DATABASE_URL"], truth) == 30  # the forged rows stay: see the README's trust note


def test_a_flow_that_ends_before_it_starts_is_a_problem_naming_ltime_and_detect_still_scores_it(api, backend_env):
    """A flow whose ltime is before its stime was stored with that negative span. Now ingest refuses it as a field
    error (flows[i].ltime), counted invalid with skip_invalid as `flows load` sends it; /detect does not use the times
    and scores it."""
    flows = json_flows(3, seed=65)
    flows[1]["ltime"] = flows[1]["stime"] - 1
    refused = api.post("/api/v1/flows/batch", {"flows": flows})
    assert refused.status_code == 400, refused.get_data(as_text=True)[:300]
    error = refused.get_json()["error"]
    assert error["details"]["field"] == "flows[1].ltime" and "before stime" in error["message"], error
    stored = api.post("/api/v1/flows/batch", {"flows": flows, "skip_invalid": True}).get_json()
    assert (stored["stored"], stored["invalid"]) == (2, 1), stored
    assert [(p["index"], p["field"]) for p in stored["problems"]] == [(1, "ltime")]
    assert sql_scalar(backend_env["DATABASE_URL"], "SELECT count(*) FROM flow_events WHERE ltime < stime") == 0
    scored = api.detect.post("/api/v1/detect", json={"flow": flows[1]}, headers=api.reader)
    assert scored.status_code == 200, scored.get_data(as_text=True)[:300]


def test_an_uploads_first_problem_and_flows_load_name_the_line_an_editor_shows(api, function_client, tmp_path, capsys, monkeypatch):
    """One file, two ways in, two numberings: `flows load` printed "skipped row N", N counting data rows from 0 (the
    header not counted, a blank line counted), and the upload's `first_problem.index` was the row's index within its
    worker batch (0 to 4,999, restarting every batch; a row of another width gave its row number instead). Both now
    name the line of the file, as an editor numbers it: from 1, the header and blank lines counted."""
    from threatflow.cli import flows as cli
    from threatflow.flows import handlers

    monkeypatch.setattr(handlers, "BATCH_ROWS", 40)
    lines = _partitioned(100).splitlines()  # the header, then 100 rows
    lines.insert(31, "")  # a blank line inside the first batch
    cells = lines[71].split(",")
    cells[1] = "-1"  # dur, in the second batch of 40 flows
    lines[71] = ",".join(cells)
    data = tmp_path / "part.csv"
    data.write_text("\n".join(lines) + "\n")
    editor_line = 72  # lines[71]
    job_id = queue_upload(api, "flows/numbered.csv", data.read_bytes())
    assert deliver_upload(function_client("flow-ingest"), job_id).status_code == 200
    job = ingest_job(job_id)
    assert (job["state"], job["stored"], job["invalid"]) == ("succeeded", 99, 1), job
    assert (job["first_problem"]["line"], job["first_problem"]["field"]) == (editor_line, "dur"), job["first_problem"]

    def post(body: dict[str, Any]) -> tuple[int, Any]:
        response = api.post("/api/v1/flows/batch", body)
        return response.status_code, response.get_json()

    capsys.readouterr()
    entry = cli.load_file(data, post=post, progress=cli.Progress(tmp_path / "p.json"), batch_size=50, show_bar=False)
    assert (entry["duplicates"], entry["invalid"]) == (99, 1), entry
    assert f"skipped line {editor_line}: dur: " in capsys.readouterr().err


# -- rate and whole numbers -----------------------------------------------------------------------------------


def test_a_negative_rate_is_a_problem_naming_rate_and_detect_still_scores_it(api, backend_env):
    """`"rate": -250` (packets per second; stored with each event, though the model leaves it out) was stored as it
    came, where a negative feature is refused. Now it is a field error naming `rate`, counted invalid with skip_invalid
    as `flows load` sends it; /detect scores the flow (any finite value, as its tests of extremes require)."""
    from threatflow.flows.repository import STORED_FEATURES

    flows = json_flows(3, seed=66)
    flows[1]["rate"] = -250.0
    flows[2]["rate"] = "-1e-30"  # as a CSV cell reaches the route from `flows load`
    refused = api.post("/api/v1/flows/batch", {"flows": flows})
    assert refused.status_code == 400, refused.get_data(as_text=True)[:300]
    error = refused.get_json()["error"]
    assert error["details"]["field"] == "flows[1].rate" and "negative" in error["message"], error
    stored = api.post("/api/v1/flows/batch", {"flows": flows, "skip_invalid": True}).get_json()
    assert (stored["stored"], stored["invalid"]) == (1, 2), stored
    assert [(p["index"], p["field"]) for p in stored["problems"]] == [(1, "rate"), (2, "rate")], stored
    rate = STORED_FEATURES.index("rate") + 1
    assert sql_scalar(backend_env["DATABASE_URL"], f"SELECT count(*) FROM flow_events WHERE features[{rate}] < 0") == 0
    scored = api.detect.post("/api/v1/detect", json={"flow": flows[1]}, headers=api.reader)
    assert scored.status_code == 200, scored.get_data(as_text=True)[:300]


def test_a_fractional_count_is_a_problem_naming_it_and_detect_still_scores_it(api, backend_env):
    """`"spkts": 1.5` was stored: a packet count, like every field NUSW-NB15_features.csv types integer or binary, is a
    whole number. Now a fraction is a field error naming its field (`ingest.WHOLE_NUMBER`), counted invalid with
    skip_invalid; a whole value written as a float or as text is stored, and /detect scores them all."""
    from threatflow.flows.repository import STORED_FEATURES

    flows = json_flows(5, seed=67)
    flows[1]["spkts"] = 1.5
    flows[2]["ct_srv_src"] = "2.5"
    flows[3]["sttl"] = 254.0  # whole, written as a float
    flows[4]["sbytes"] = "1.2e3"  # whole, written as an exponent
    refused = api.post("/api/v1/flows/batch", {"flows": flows})
    assert refused.status_code == 400, refused.get_data(as_text=True)[:300]
    error = refused.get_json()["error"]
    assert error["details"]["field"] == "flows[1].spkts" and "whole number" in error["message"], error
    stored = api.post("/api/v1/flows/batch", {"flows": flows, "skip_invalid": True}).get_json()
    assert (stored["stored"], stored["invalid"]) == (3, 2), stored
    problems = stored["problems"]
    assert [(p["index"], p["field"]) for p in problems] == [(1, "spkts"), (2, "ct_srv_src")], problems
    spkts, ct_srv_src = (STORED_FEATURES.index(name) + 1 for name in ("spkts", "ct_srv_src"))
    odd = (
        f"SELECT count(*) FROM flow_events WHERE features[{spkts}] <> floor(features[{spkts}])"
        f" OR features[{ct_srv_src}] <> floor(features[{ct_srv_src}])"
    )
    assert sql_scalar(backend_env["DATABASE_URL"], odd) == 0
    for flow in flows[1:3]:
        scored = api.detect.post("/api/v1/detect", json={"flow": flow}, headers=api.reader)
        assert scored.status_code == 200, scored.get_data(as_text=True)[:300]


@pytest.mark.parametrize("layout", ["raw", "partitioned"])
def test_an_upload_and_flows_load_refuse_a_negative_rate_and_a_fractional_count_as_the_route_does(
    api, function_client, tmp_path, capsys, layout
):
    """The flow-ingest worker (cells typed) and `flows load` (cells as text, posted to /flows/batch) validate through
    the same module as the route, in the raw 49-column layout (no header: NUSW-NB15_features.csv's names, no `rate`)
    and the partitioned one: each bad row is counted invalid and named by its line and its partitioned field name."""
    import flowgen

    from threatflow.cli import flows as cli

    if layout == "raw":
        lines = [",".join(flowgen.raw_line(flow)) for flow in flowgen.generate(20, seed=74)]
        bad = {3: ("Spkts", "spkts", "1.5"), 7: ("ct_src_ ltm", "ct_src_ltm", "0.5")}  # data row -> (column, field, cell)
        columns, first_line = list(ingest.RAW_COLUMNS), 1
    else:
        lines = _partitioned(20).splitlines()
        bad = {3: ("rate", "rate", "-3.5"), 7: ("dmean", "dmean", "12.5")}
        columns, first_line = lines[0].split(","), 2
    for row, (column, _field, cell) in bad.items():
        cells = lines[first_line - 1 + row].split(",")
        cells[columns.index(column)] = cell
        lines[first_line - 1 + row] = ",".join(cells)
    data = tmp_path / f"odd-{layout}.csv"
    data.write_text("\n".join(lines) + "\n")
    first_bad_line = first_line + 3

    job_id = queue_upload(api, f"flows/odd-{layout}.csv", data.read_bytes())
    assert deliver_upload(function_client("flow-ingest"), job_id).status_code == 200
    job = ingest_job(job_id)
    assert (job["state"], job["stored"], job["invalid"]) == ("succeeded", 18, 2), job
    assert (job["first_problem"]["line"], job["first_problem"]["field"]) == (first_bad_line, bad[3][1]), job["first_problem"]

    def post(body: dict[str, Any]) -> tuple[int, Any]:
        response = api.post("/api/v1/flows/batch", body)
        return response.status_code, response.get_json()

    capsys.readouterr()
    entry = cli.load_file(data, post=post, progress=cli.Progress(tmp_path / "p.json"), batch_size=50, show_bar=False)
    assert (entry["duplicates"], entry["invalid"]) == (18, 2), entry
    err = capsys.readouterr().err
    assert all(f"skipped line {first_line + row}: {field}: " in err for row, (_c, field, _cell) in bad.items()), err
