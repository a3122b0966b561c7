"""The flow-detection and hunting surface attacked with material the authors did not write, on the real backends.

Real UNSW-NB15 rows (the dev file, given addresses and times by flowgen) written the way real files are
(BOM, CRLF, hex ports, padded categories, the features file's header, gzip members, a trailing comma),
flows from the distant past, IPv4-mapped addresses at the intel route, every route under every role,
concurrent uploads of one object. Tests that need the shared data skip with a message when it is absent.
"""

from __future__ import annotations

import gzip
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from flows_support import deliver_at_once, deliver_upload, event_keys, flows_api, ingest_job, json_flows, queue_upload, sql_scalar
from helpers import push_envelope

pytestmark = pytest.mark.integration
PROJECT = "threatflow-test"


@pytest.fixture
def api(function_client, backend_env):
    return flows_api(function_client, backend_env["DATABASE_URL"], roles=("reader", "analyst", "admin"))


def _partitions_before(url: str, day: datetime) -> int:
    return int(
        sql_scalar(
            url,
            "SELECT count(*) FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid"
            f" WHERE i.inhparent = 'flow_events'::regclass AND c.relname < 'flow_events_p{day:%Y%m%d}'",
        )
    )


def _oldest_retained() -> datetime:
    day = (datetime.now(UTC) - timedelta(days=90)).date()  # FLOWS_RETENTION_DAYS' default
    return datetime(day.year, day.month, day.day, tzinfo=UTC)


def _raw_lines(count: int, *, seed: int) -> list[list[str]]:
    """Real dev-set flows (features, label, category as recorded) in the raw 49-column layout."""
    import flowgen

    return [list(flowgen.raw_line(flow)) for flow in flowgen.generate(count, seed=seed)]


# -- flows from the distant past: one partition per day -----------------------------------------------


def test_flows_older_than_the_retention_window_are_refused_and_make_no_partitions(api, backend_env):
    """400 flows on 400 past days made 400 daily partitions in one request (3,000: 62 s of DDL, then a 500
    "out of shared memory"), all of which flow-retention drops at its next run. Now each is a problem
    naming stime, and with skip_invalid the recent flows are still stored."""
    url = backend_env["DATABASE_URL"]
    oldest = _oldest_retained()
    flows = json_flows(400, seed=31)
    for k, flow in enumerate(flows):
        flow["stime"] = flow["ltime"] = int((oldest - timedelta(days=1 + k)).timestamp()) + 3600
    refused = api.post("/api/v1/flows/batch", {"flows": flows})
    assert refused.status_code == 400, refused.get_data(as_text=True)[:300]
    details = refused.get_json()["error"]["details"]
    assert details["total"] == 400 and {e["field"] for e in details["errors"]} == {"stime"}
    assert "retention" in details["errors"][0]["reason"]
    assert _partitions_before(url, oldest) == 0

    mixed = json_flows(20, seed=32)  # flowgen's times: the last 30 days
    for flow in mixed[10:]:
        flow["stime"] = flow["ltime"] = int((oldest - timedelta(days=3000)).timestamp())
    mixed[0]["stime"] = mixed[0]["ltime"] = int(oldest.timestamp())  # the first retained instant is kept
    skipped = api.post("/api/v1/flows/batch", {"flows": mixed, "skip_invalid": True})
    body = skipped.get_json()
    assert skipped.status_code == 200 and body["stored"] == 10 and body["invalid"] == 10, body
    assert [p["index"] for p in body["problems"]] == list(range(10, 20))
    assert _partitions_before(url, oldest) == 0

    undated = [{k: v for k, v in flow.items() if k not in ("stime", "ltime")} for flow in json_flows(3, seed=33)]
    for observed_at in ("0001-01-01T00:00:00+14:00", "0001-01-01T00:00:00Z", "1970-01-01T00:00:00Z"):  # the first was a 500
        response = api.post("/api/v1/flows/batch", {"flows": undated, "observed_at": observed_at})
        assert response.status_code == 400, (observed_at, response.status_code, response.get_data(as_text=True)[:300])
        assert response.get_json()["error"]["details"]["field"] == "observed_at"
    assert _partitions_before(url, oldest) == 0
    assert sql_scalar(url, "SELECT count(*) FROM flow_events") == 10


def test_an_upload_of_flows_older_than_the_retention_window_stores_none(api, function_client, backend_env):
    oldest = _oldest_retained()
    lines = _raw_lines(20, seed=34)
    for k, cells in enumerate(lines):
        cells[28] = cells[29] = str(int((oldest - timedelta(days=1000 + k)).timestamp()))  # Stime, Ltime
    job_id = queue_upload(api, "flows/ancient.csv", ("\n".join(",".join(c) for c in lines) + "\n").encode())
    assert deliver_upload(function_client("flow-ingest"), job_id).status_code == 200
    job = ingest_job(job_id)
    assert _partitions_before(backend_env["DATABASE_URL"], oldest) == 0, job
    assert job["state"] == "succeeded" and job["stored"] == 0 and job["invalid"] == 20, job


# -- real files, real quirks, through `threatflow flows load` -------------------------------------------


@pytest.fixture
def loader(api, tmp_path):
    from threatflow.cli import flows as cli

    def post(body: dict[str, Any]) -> tuple[int, Any]:
        response = api.post("/api/v1/flows/batch", body)
        return response.status_code, response.get_json()

    def load(name: str, data: bytes) -> dict[str, Any]:
        path = tmp_path / name
        path.write_bytes(data)
        progress = cli.Progress(tmp_path / f"{name}.progress.json")
        return dict(cli.load_file(path, post=post, progress=progress, batch_size=120, show_bar=False))

    return load


def _text(lines: list[list[str]], *, newline: str = "\n", suffix: str = "") -> str:
    return "".join(",".join(cells) + suffix + newline for cells in lines)


def _quirky(lines: list[list[str]]) -> list[list[str]]:
    """As the published raw files write them: hex source ports, '-' for no port, categories padded with
    blanks, 'Backdoors' for the partitioned files' Backdoor."""
    out = []
    for n, line in enumerate(lines):
        cells = list(line)
        cells[1] = f"0x{int(cells[1]):04x}"
        if n % 3 == 0:
            cells[3] = "-"
        if cells[47]:
            cells[47] = f" {'Backdoors' if cells[47] == 'Backdoor' else cells[47]} "
        out.append(cells)
    return out


def _variants(lines: list[list[str]]) -> dict[str, bytes]:
    from threatflow.flows.ingest import RAW_COLUMNS  # the features file's names: Sload, `ct_src_ ltm`, Stime, Label ...

    plain = _text(lines)
    half = len(lines) // 2
    return {
        "plain.csv": plain.encode(),
        "bom-crlf.csv": ("\ufeff" + _text(lines, newline="\r\n")).encode(),
        "cr-only.csv": _text(lines, newline="\r").encode(),
        "no-final-newline.csv": plain.rstrip("\n").encode(),
        "quoted.csv": "".join(",".join(f'"{c}"' for c in cells) + "\n" for cells in lines).encode(),
        "quirky-cells.csv": _text(_quirky(lines)).encode(),
        "features-file-header.csv": (",".join(RAW_COLUMNS) + "\r\n" + _text(lines, newline="\r\n")).encode(),
        "bom-crlf.csv.gz": gzip.compress(("\ufeff" + _text(lines, newline="\r\n")).encode()),
        "two-gzip-members.csv.gz": gzip.compress(_text(lines[:half]).encode()) + gzip.compress(_text(lines[half:]).encode()),
    }


def test_real_flows_written_as_real_files_are_all_stored(loader, backend_env):
    lines = _raw_lines(240, seed=35)
    expected = len(lines)
    for name, data in _variants(lines).items():
        entry = loader(name, data)
        assert (entry["stored"], entry["invalid"], entry["rows_done"]) == (expected, 0, expected), (name, entry)
    # Each variant is its own file (its own sha256), so each stored its own copy of the same flows.
    assert sql_scalar(backend_env["DATABASE_URL"], "SELECT count(*) FROM flow_events") == expected * len(_variants(lines))
    # The official raw files leave ct_flw_http_mthd / is_ftp_login empty and ct_ftp_cmd one space on flows with no
    # HTTP or FTP exchange: missing values, stored (README, "Blank cells of the raw files"); a blank elsewhere is not.
    blank = [list(cells) for cells in lines[:12]]
    for cells in blank[:5]:
        cells[37] = cells[38] = ""
        cells[39] = " "
    for cells in blank[5:7]:
        cells[7] = ""  # sbytes
    entry = loader("blank-cells.csv", _text(blank).encode())
    assert (entry["stored"], entry["invalid"]) == (10, 2), entry


@pytest.mark.parametrize("layout", ["raw", "header"])  # both were refused whole (raw) or row by row (header)
def test_a_file_whose_lines_end_in_a_comma_is_stored(loader, layout):
    from threatflow.flows.ingest import RAW_COLUMNS

    lines = _raw_lines(60, seed=36)
    header = ",".join(RAW_COLUMNS) + ",\n" if layout == "header" else ""
    entry = loader(f"trailing-{layout}.csv", (header + _text(lines, suffix=",")).encode())
    assert (entry["stored"], entry["invalid"]) == (60, 0), entry


# -- uploads: one object queued again and again; one file under two names -------------------------------


def _jobs_of(name: str) -> list[dict[str, Any]]:
    from threatflow.adapters.firestore import FirestoreDocuments

    return FirestoreDocuments(PROJECT).query("flow_ingest_jobs", where=[("object", "==", name)], limit=50)


def test_an_object_queued_again_while_its_job_is_active_gets_that_job(api, function_client):
    """Each POST /flows/uploads (a 20-byte body) made a job that hashes, parses and scores the whole object
    (up to 2 GiB, 10 M lines): 20 posts of one object were 20 full passes, all but one storing duplicates.
    While a job of the same object generation is queued or running, the route now answers with that job."""
    name = "flows/again-and-again.csv"
    first = queue_upload(api, name, _text(_raw_lines(30, seed=42)).encode())
    for _ in range(19):
        again = api.post("/api/v1/flows/uploads", {"object": name})
        assert again.status_code == 202 and again.get_json()["job_id"] == first, again.get_json()
    assert len(_jobs_of(name)) == 1
    assert deliver_upload(function_client("flow-ingest"), first).status_code == 200
    assert ingest_job(first)["state"] == "succeeded"
    rerun = api.post("/api/v1/flows/uploads", {"object": name}).get_json()["job_id"]  # a finished job can be run again
    assert rerun != first
    replaced = queue_upload(api, name, _text(_raw_lines(31, seed=43)).encode())  # a new generation is a new file
    assert replaced not in (first, rerun) and len(_jobs_of(name)) == 3


def test_one_file_under_two_names_run_at_once_stores_each_flow_once(api, function_client, backend_env):
    data = gzip.compress(_text(_raw_lines(300, seed=37)).encode())
    jobs = [queue_upload(api, "flows/twice-a.csv.gz", data), queue_upload(api, "flows/twice-b.csv.gz", data)]
    done = deliver_at_once(function_client("flow-ingest"), jobs)  # one app, two deliveries at once
    assert all(j["state"] == "succeeded" and j["stored"] + j["duplicates"] == 300 for j in done), done
    assert sum(j["stored"] for j in done) == 300  # event keys are the file's sha256 and row, whatever its name
    assert sql_scalar(backend_env["DATABASE_URL"], "SELECT count(*) FROM flow_events") == 300


# -- the flow -> IoC bridge: addresses that name no host -------------------------------------------------

NOT_A_HOST = ("0.0.0.0", "::", "127.0.0.1", "::1", "255.255.255.255", "224.0.0.1", "ff02::1", "169.254.169.254", "fe80::1", "240.0.0.1")


def test_the_bridge_makes_no_ioc_of_an_address_that_names_no_host(api, function_client):
    """Flows "from" 0.0.0.0 (a DHCP discover), loopback, broadcast, multicast, link-local (the cloud metadata
    server 169.254.169.254) or reserved addresses became IoCs of severity high, tagged flow-detected, and
    so entries of every blocklist export. A public source in the same batch still does."""
    bridging = function_client("flows", FLOWS_BRIDGE_THRESHOLD="0.05")  # the tiny test model is rarely 0.9 sure
    attacks = [f for f in json_flows(600, seed=41) if f["label"] == 1][:8]
    public = "175.45.176.9"
    flows = [{**flow, "srcip": ip} for ip in (*NOT_A_HOST, public) for flow in attacks]
    response = bridging.post("/api/v1/flows/batch", json={"flows": flows}, headers=api.headers["analyst"])
    assert response.status_code == 200, response.get_data(as_text=True)[:300]
    assert response.get_json()["bridge"]["iocs_created"] == 1, response.get_json()
    since = (datetime.now(UTC) - timedelta(days=32)).isoformat()  # flowgen's times: the 30 days before midnight
    for ip in NOT_A_HOST:
        host = api.get(f"/api/v1/events/hosts/{ip}", query_string={"from": since}).get_json()
        assert host["as_source"]["events"] == len(attacks) and host["ioc"] is None, (ip, host["ioc"])
    assert api.get(f"/api/v1/events/hosts/{public}").get_json()["ioc"]["value"] == public


def test_the_flows_batch_answer_counts_no_tags_cut_of_an_ioc_above_the_callers_clearance(api, function_client, backend_env):
    """The bridge sights IoCs as the system, red ones too, and its answer counted the tags a full IoC could not take
    (`bridge.tags_cut`) whatever the IoC's TLP: an amber analyst posting flows from a red IoC's address learnt that it
    was full, and which of the bridge's tags (flow-detected, the categories) it already held, which /iocs/batch and
    /import hide (no id, no tags_cut above the writer's clearance). A readable IoC's cut is still counted."""
    from threatflow.adapters.postgres import create_engine
    from threatflow.platform.config import Settings

    bridging = function_client("flows", FLOWS_BRIDGE_THRESHOLD="0.05")  # the tiny test model is rarely 0.9 sure
    attacks = [f for f in json_flows(600, seed=41) if f["label"] == 1][:9]
    red, amber = "45.146.166.7", "45.146.166.8"

    def post(flows):
        response = bridging.post("/api/v1/flows/batch", json={"flows": flows}, headers=api.headers["analyst"])
        assert response.status_code == 200, response.get_data(as_text=True)[:300]
        return response.get_json()["bridge"]

    assert post([{**flow, "srcip": ip} for ip in (red, amber) for flow in attacks[:3]])["iocs_created"] == 2
    engine = create_engine(Settings.from_env({"DATABASE_URL": backend_env["DATABASE_URL"]}))
    try:
        with engine.begin() as conn:  # both full, of tags the bridge does not give; one marked above amber
            full = [f"t{i:02d}" for i in range(64)]
            conn.exec_driver_sql("UPDATE iocs SET tags = %s WHERE value IN (%s, %s)", (full, red, amber))
            conn.exec_driver_sql("UPDATE iocs SET tlp = 'red' WHERE value = %s", (red,))
    finally:
        engine.dispose()
    hidden = post([{**flow, "srcip": red} for flow in attacks[3:6]])
    assert hidden["iocs_updated"] == 1 and hidden["tags_cut"] == 0, hidden
    shown = post([{**flow, "srcip": amber} for flow in attacks[6:9]])
    assert shown["iocs_updated"] == 1 and shown["tags_cut"] >= 1, shown


def test_the_bridge_queues_at_most_its_hourly_enrichment_budget_most_probable_first(api, function_client, backend_env):
    """One 10,000-flow batch of spoofed public sources made 8,704 IoCs and queued every one for enrichment:
    days of AbuseIPDB's 1,000/day ahead of the analysts' own lookups. FLOWS_BRIDGE_ENRICH_PER_HOUR caps what
    the bridge queues per clock hour across instances; the IoCs are still made, the rest wait for a request."""
    import json

    from google.cloud import pubsub_v1

    subscriber = pubsub_v1.SubscriberClient()
    subscription = subscriber.subscription_path(PROJECT, f"bridge-budget-{uuid.uuid4().hex[:8]}")
    subscriber.create_subscription(name=subscription, topic=f"projects/{PROJECT}/topics/ioc-enrichment-requested")
    from threatflow.adapters.postgres import create_engine, unit_of_work
    from threatflow.platform.config import Settings

    engine = create_engine(Settings.from_env({"DATABASE_URL": backend_env["DATABASE_URL"]}))
    with unit_of_work(engine) as conn:  # this hour's budget, whatever earlier tests spent
        conn.exec_driver_sql("DELETE FROM flow_bridge_enrichment")
    bridging = function_client("flows", FLOWS_BRIDGE_THRESHOLD="0.05", FLOWS_BRIDGE_ENRICH_PER_HOUR="5")
    attacks = [f for f in json_flows(2000, seed=42) if f["label"] == 1][:40]
    first = [{**flow, "srcip": f"45.146.164.{i + 1}"} for i, flow in enumerate(attacks)]  # public, and no other test's
    body = bridging.post("/api/v1/flows/batch", json={"flows": first}, headers=api.headers["analyst"]).get_json()
    created = body["bridge"]["iocs_created"]
    assert created > 5, body["bridge"]
    assert (body["bridge"]["enrichment_requested"], body["bridge"]["enrichment_over_budget"]) == (5, created - 5), body["bridge"]
    second = [{**flow, "srcip": f"45.146.165.{i + 1}"} for i, flow in enumerate(attacks)]
    again = bridging.post("/api/v1/flows/batch", json={"flows": second}, headers=api.headers["analyst"]).get_json()["bridge"]
    assert again["iocs_created"] > 0 and again["enrichment_requested"] == 0, again  # this hour's budget is spent
    assert again["enrichment_over_budget"] == again["iocs_created"]
    assert sql_scalar(backend_env["DATABASE_URL"], "SELECT sum(queued) FROM flow_bridge_enrichment") == 5
    # The five queued are the most probable attackers of the first batch (confidence = max probability x 100).
    queued: list[int] = []
    for _ in range(20):
        response = subscriber.pull(subscription=subscription, max_messages=10, timeout=5)
        for received in response.received_messages:
            queued += json.loads(received.message.data)["ioc_ids"]
        if response.received_messages:
            subscriber.acknowledge(subscription=subscription, ack_ids=[m.ack_id for m in response.received_messages])
        if len(queued) >= 5:
            break
    assert len(queued) == 5, queued
    with engine.connect() as conn:
        rows = conn.exec_driver_sql("SELECT id, confidence FROM iocs WHERE value LIKE '45.146.164.%'").all()
    engine.dispose()
    made = {int(i): int(c) for i, c in rows}
    assert set(queued) <= set(made)
    assert min(made[i] for i in queued) >= max(c for i, c in made.items() if i not in queued)
    subscriber.delete_subscription(subscription=subscription)


def test_a_flow_at_the_retention_edge_bridges_into_an_inactive_ioc_queued_for_no_enrichment(api, function_client, backend_env):
    """A predicted attack ~89 days old (FLOWS_RETENTION_DAYS keeps 90) became a new IoC `active`, severity critical,
    with `expires_at` (seen + the ipv4 TTL, 30 days) two months past, and was queued for enrichment: intel quota spent
    on an indicator already expired. It is stored as the decay-iocs job would leave it (inactive) and not queued; a
    fresh attack source of the same batch still is, and a later fresh sighting makes the old one active again."""
    bridging = function_client("flows", FLOWS_BRIDGE_THRESHOLD="0.05", FLOWS_BRIDGE_ENRICH_PER_HOUR="100000")
    attacks = [f for f in json_flows(600, seed=43) if f["label"] == 1][:6]
    old_ip, fresh_ip = "45.146.167.9", "45.146.167.10"  # public, and no other test's
    at_edge = int((_oldest_retained() + timedelta(days=1)).timestamp()) + 3600
    old = [{**flow, "srcip": old_ip, "stime": at_edge, "ltime": at_edge} for flow in attacks[:3]]
    now = int(datetime.now(UTC).timestamp()) - 3600
    fresh = [{**flow, "srcip": fresh_ip, "stime": now, "ltime": now} for flow in attacks[3:]]
    response = bridging.post("/api/v1/flows/batch", json={"flows": old + fresh}, headers=api.headers["analyst"])
    assert response.status_code == 200, response.get_data(as_text=True)[:300]
    bridged = response.get_json()["bridge"]
    assert bridged["iocs_created"] == 2, bridged
    assert (bridged["enrichment_requested"], bridged["enrichment_over_budget"]) == (1, 0), bridged  # the fresh one only
    url = backend_env["DATABASE_URL"]

    def state(ip: str) -> tuple[bool, bool]:
        return (
            bool(sql_scalar(url, f"SELECT active FROM iocs WHERE value = '{ip}'")),
            bool(sql_scalar(url, f"SELECT expires_at < now() FROM iocs WHERE value = '{ip}'")),
        )

    assert state(old_ip) == (False, True)
    assert state(fresh_ip) == (True, False)
    # Seen again, now: active again, its expiry moved out; an existing IoC is not queued again (as before).
    again = [{**flow, "srcip": old_ip, "stime": now + 60, "ltime": now + 60} for flow in attacks[:3]]
    seen = bridging.post("/api/v1/flows/batch", json={"flows": again}, headers=api.headers["analyst"]).get_json()["bridge"]
    assert (seen["iocs_updated"], seen["enrichment_requested"]) == (1, 0), seen
    assert state(old_ip) == (True, False)


# -- the intel route: an IPv4 host in its IPv6 spelling ----------------------------------------------------


@pytest.fixture
def fake_intel(monkeypatch):
    from tests.fakes.intel import start_fake_intel

    fake = start_fake_intel()
    for key, value in {**fake.env(), "ABUSEIPDB_API_KEY": "test-abuseipdb-key", "VT_API_KEY": "test-vt-key"}.items():
        monkeypatch.setenv(key, value)
    yield fake
    fake.close()


def test_the_flow_retention_job_prunes_old_bridge_budget_hours_and_the_bridge_only_spends(function_client, backend_env):
    """The bridge deleted the budget's hour rows older than two days in every batch it queued enrichment for:
    one more statement per ingest for a table that gains one row an hour. The daily flow-retention job
    prunes them now; the bridge only takes from its hour."""
    from sqlalchemy import text

    from threatflow.adapters.firestore import FirestoreDocuments
    from threatflow.adapters.postgres import create_engine, unit_of_work
    from threatflow.hunting import bridge
    from threatflow.platform.config import Settings

    at = datetime.now(UTC)
    hour = at.replace(minute=0, second=0, microsecond=0)
    old, recent = hour - timedelta(days=3), hour - timedelta(days=1)
    engine = create_engine(Settings.from_env({"DATABASE_URL": backend_env["DATABASE_URL"]}))

    def hours() -> dict[datetime, int]:
        with engine.connect() as conn:
            return {w: int(q) for w, q in conn.exec_driver_sql("SELECT window_start, queued FROM flow_bridge_enrichment").all()}

    try:
        with unit_of_work(engine) as conn:
            conn.exec_driver_sql("DELETE FROM flow_bridge_enrichment")
            conn.execute(text("INSERT INTO flow_bridge_enrichment VALUES (:old, 7), (:recent, 3)"), {"old": old, "recent": recent})
        with unit_of_work(engine) as conn:
            assert bridge.take_enrichment_budget(conn, 4, per_hour=5, now=at) == 4
        with unit_of_work(engine) as conn:
            assert bridge.take_enrichment_budget(conn, 4, per_hour=5, now=at) == 1  # the hour's budget, whatever is stored
        assert hours() == {old: 7, recent: 3, hour: 5}

        run_id = uuid.uuid4().hex
        push = push_envelope({"schema_version": 1}, {"job": "flow-retention", "run_id": run_id}, "maintenance-push")
        assert function_client("maintenance").post("/", json=push).status_code == 200
        run = FirestoreDocuments(PROJECT).get("maintenance_runs", run_id) or {}
        assert run.get("state") == "succeeded" and run["result"]["bridge_budget_hours_pruned"] == 1, run
        assert hours() == {recent: 3, hour: 5}
    finally:
        engine.dispose()


def test_intel_for_an_ipv4_mapped_address_answers_for_the_ipv4_host(fake_intel, api):
    """::ffff:118.25.6.39 was looked up as the IPv6 literal ::ffff:7619:627: "unknown" for an address the
    same source reports as malicious, with a quota token and a cache entry of its own."""
    detect = api.detect
    reader = api.headers["reader"]
    mapped = detect.get("/api/v1/detect/intel/::ffff:118.25.6.39", headers=reader)
    assert mapped.status_code == 200, mapped.get_data(as_text=True)[:300]
    body = mapped.get_json()
    assert (body["ip"], body["verdict"], body["cached"]) == ("118.25.6.39", "malicious", False), body
    plain = detect.get("/api/v1/detect/intel/118.25.6.39", headers=reader).get_json()
    assert plain["cached"] is True and plain["verdict"] == "malicious"
    assert detect.get("/api/v1/detect/intel/::FFFF:7619:0627", headers=reader).get_json()["cached"] is True
    assert fake_intel.call_count("abuseipdb", "118.25.6.39") == 1
    for private in ("::ffff:10.0.0.1", "::ffff:127.0.0.1", "::ffff:169.254.169.254"):
        refused = detect.get(f"/api/v1/detect/intel/{private}", headers=reader)
        assert refused.status_code == 400 and refused.get_json()["error"]["details"]["field"] == "ip", private


def test_intel_refuses_an_unknown_query_parameter_before_asking_a_source(fake_intel, api):
    """/detect/intel/{ip}?foo=1 was answered as if foo were not there (a 200 and a lookup at the sources); the
    route reads no query parameter, so any is a 400 naming it, as on the /events routes."""
    reader = api.headers["reader"]
    for query, field in (("foo=1", "foo"), ("refresh=true", "refresh"), ("ip=1.2.3.4", "ip")):
        refused = api.detect.get(f"/api/v1/detect/intel/118.25.6.39?{query}", headers=reader)
        assert refused.status_code == 400, (query, refused.get_data(as_text=True)[:200])
        assert refused.get_json()["error"]["details"]["field"] == field, refused.get_json()
    assert fake_intel.call_count() == 0  # refused before any source was asked
    assert api.detect.get("/api/v1/detect/intel/118.25.6.39", headers=reader).status_code == 200


def test_intel_refuses_ipv6_forms_of_private_ipv4_addresses(fake_intel, api):
    """NAT64 (64:ff9b::/96), 6to4 (2002::/16) and IPv4-compatible (::/96) spellings of 10.0.0.1, 127.0.0.1 or
    192.168.1.1 passed the public-address check and were sent to the third-party intel APIs."""
    reader = api.headers["reader"]
    for ip in ("64:ff9b::a00:1", "64:ff9b::7f00:1", "2002:c0a8:101::1", "2002:a00:1::", "::127.0.0.1", "::10.0.0.1"):
        refused = api.detect.get(f"/api/v1/detect/intel/{ip}", headers=reader)
        assert refused.status_code == 400 and refused.get_json()["error"]["details"]["field"] == "ip", (
            ip,
            refused.get_data(as_text=True)[:200],
        )
    assert fake_intel.call_count() == 0  # nothing reached a third party
    public = api.detect.get("/api/v1/detect/intel/64:ff9b::7619:627", headers=reader)  # NAT64 of a public address
    assert public.status_code == 200, public.get_data(as_text=True)[:200]


# -- what held ----------------------------------------------------------------------------------------------


def test_every_route_answers_each_role_as_documented(api):
    """12 routes x 4 callers (none, reader, analyst, admin): 48 answers, none a 5xx."""
    flow = {
        k: v for k, v in json_flows(1)[0].items() if k not in ("label", "attack_cat", "srcip", "dstip", "stime", "ltime", "sport", "dsport")
    }
    detect, flows = api.detect, api.client
    missing_job = uuid.uuid4().hex
    routes = [
        (detect, "POST", "/api/v1/detect", {"flow": flow}, (401, 200, 200, 200)),
        (detect, "POST", "/api/v1/detect/batch", {"flows": [flow, flow]}, (401, 200, 200, 200)),
        (detect, "GET", "/api/v1/detect/model", None, (401, 200, 200, 200)),
        (detect, "GET", "/api/v1/detect/intel/10.0.0.1", None, (401, 400, 400, 400)),
        (flows, "POST", "/api/v1/flows/batch", {"flows": json_flows(2, seed=38)}, (401, 403, 200, 200)),
        (flows, "POST", "/api/v1/flows/uploads", {"object": "flows/none.csv"}, (401, 403, 404, 404)),
        (flows, "GET", f"/api/v1/flows/uploads/{missing_job}", None, (401, 404, 404, 404)),
        (flows, "GET", "/api/v1/events/search?srcip=1.2.3.4", None, (401, 200, 200, 200)),
        (flows, "GET", "/api/v1/events/top/attack-categories", None, (401, 200, 200, 200)),
        (flows, "GET", "/api/v1/events/stats/bytes-by-proto", None, (401, 200, 200, 200)),
        (flows, "GET", "/api/v1/events/timeline?srcip=1.2.3.4", None, (401, 200, 200, 200)),
        (flows, "GET", "/api/v1/events/hosts/1.2.3.4", None, (401, 200, 200, 200)),
    ]
    for client, method, path, body, expected in routes:
        got = []
        for role in ("anonymous", "reader", "analyst", "admin"):
            kwargs: dict[str, Any] = {"method": method, "headers": api.headers[role]}
            if body is not None:
                kwargs["json"] = body
            response = client.open(path, **kwargs)
            assert response.is_json, (path, role)
            got.append(response.status_code)
        assert tuple(got) == expected, (method, path, got)


def test_detect_scores_finite_extremes_at_every_batch_size(api):
    """Finite values past float32 (cast to inf in the model's matrix) through the tree walker (<= 64 flows),
    the compiled predictor and the row-split threads (>= 2,000): answered, probabilities in [0, 1]."""
    detect = api.detect
    flow = {
        k: v
        for k, v in json_flows(1, seed=39)[0].items()
        if k not in ("label", "attack_cat", "srcip", "dstip", "stime", "ltime", "sport", "dsport")
    }
    for count in (1, 100, 2500):
        for value in (1e300, -1e300, "1e300", 3.5e38, 5e-324):
            body = {"flows": [{**flow, "sbytes": value, "sload": value, "dur": value}] * count}
            response = detect.post("/api/v1/detect/batch", json=body, headers=api.headers["reader"])
            assert response.status_code == 200, (count, value, response.get_data(as_text=True)[:300])
            results = response.get_json()["results"]
            assert len(results) == count and all(0.0 <= r["probability"] <= 1.0 for r in results)
    explained = detect.post("/api/v1/detect?explain=true&top=41", json={"flow": {**flow, "sbytes": 1e300}}, headers=api.headers["reader"])
    assert explained.status_code == 200 and len(explained.get_json()["result"]["top_features"]) == 41


def test_detect_and_ingest_score_the_same_real_flows_alike(api, backend_env):
    """The same real flows through POST /detect/batch and POST /flows/batch: the stored prediction is
    what detect answers (probability to float32, category and verdict exactly)."""

    flows = json_flows(150, seed=40)
    model_fields = [
        {k: v for k, v in f.items() if k not in ("label", "attack_cat", "srcip", "dstip", "stime", "ltime", "sport", "dsport")}
        for f in flows
    ]
    detected = api.detect.post("/api/v1/detect/batch", json={"flows": model_fields}, headers=api.headers["reader"]).get_json()["results"]
    stored = api.post("/api/v1/flows/batch", {"flows": flows, "source": "attack-consistency"}).get_json()
    assert stored["stored"] == 150, stored
    from threatflow.adapters.postgres import create_engine
    from threatflow.platform.config import Settings

    engine = create_engine(Settings.from_env({"DATABASE_URL": backend_env["DATABASE_URL"]}))
    with engine.connect() as conn:
        rows = {
            r[0]: r[1:]
            for r in conn.exec_driver_sql("SELECT event_key::text, probability, predicted_cat, predicted_attack FROM flow_events")
        }
    engine.dispose()
    keys = event_keys(flows, source="attack-consistency", positions=list(range(len(flows))))
    for i, result in enumerate(detected):
        probability, category, attack = rows[keys[i]]
        assert abs(probability - result["probability"]) < 1e-6 and category == result["attack_cat"] and attack == result["is_attack"], i


def test_batches_at_and_over_their_limits(api):
    """detect/batch: 10,000 flows scored, 10,001 refused before any work; flows/batch: 10,001 refused."""
    flow = {
        k: v
        for k, v in json_flows(1, seed=44)[0].items()
        if k not in ("label", "attack_cat", "srcip", "dstip", "stime", "ltime", "sport", "dsport")
    }
    at = api.detect.post("/api/v1/detect/batch", json={"flows": [flow] * 10_000}, headers=api.headers["reader"])
    assert at.status_code == 200 and len(at.get_json()["results"]) == 10_000
    over = api.detect.post("/api/v1/detect/batch", json={"flows": [flow] * 10_001}, headers=api.headers["reader"])
    assert over.status_code == 400 and over.get_json()["error"]["details"]["field"] == "flows"
    stored = json_flows(1, seed=45)[0]
    refused = api.post("/api/v1/flows/batch", {"flows": [stored] * 10_001})
    assert refused.status_code == 400, refused.get_data(as_text=True)[:200]
