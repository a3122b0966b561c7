"""IoC import (json, csv, text, STIX, MISP) and export (STIX, CSV, txt) over the iocs function, against PostgreSQL."""

import contextlib
import io
import json
import logging
import uuid
from datetime import UTC, datetime

import pytest
from helpers import SHARED_DATA, create_user, push_envelope_of, require_shared_data

pytestmark = pytest.mark.integration
PROJECT = "threatflow-test"
ATTACK = SHARED_DATA / "attack" / "attack_techniques.json"


@pytest.fixture
def api(function_client, backend_env):
    # Cleared for TLP:RED, so these tests see every marking (clearance itself: test_hardening_access.py).
    password = create_user(backend_env["DATABASE_URL"], "analyst1", "analyst", clearance="red")
    token = (
        function_client("auth").post("/api/v1/auth/token", json={"username": "analyst1", "password": password}).get_json()["access_token"]
    )
    client = function_client("iocs", ATTACK_DATA_PATH=str(ATTACK))

    class Api:
        headers = {"Authorization": f"Bearer {token}"}

        def post(self, path, body):
            return client.post(path, json=body, headers=self.headers)

        def post_raw(self, path, data):
            return client.post(path, data=data, headers={**self.headers, "Content-Type": "application/json"})

        def get(self, path):
            return client.get(path, headers=self.headers)

        def import_(self, fmt, content, **extra):
            return self.post("/api/v1/iocs/import", {"format": fmt, "content": content, **extra})

    return Api()


@pytest.fixture
def db(backend_env):
    from sqlalchemy import text

    from threatflow.adapters.postgres import create_engine
    from threatflow.platform.config import Settings

    engine = create_engine(Settings.from_env({"DATABASE_URL": backend_env["DATABASE_URL"]}))

    class Db:
        def scalar(self, sql, **params):
            with engine.connect() as conn:
                return conn.execute(text(sql), params).scalar()

        def counts(self):
            return {t: self.scalar(f"SELECT count(*) FROM {t}") for t in ("iocs", "threats", "threat_iocs", "ioc_relations")}

    yield Db()
    engine.dispose()


def test_json_import_stores_the_good_and_names_the_bad(api, db):
    good = [{"value": f"45.{i // 250}.{i % 250}.9"} for i in range(990)]
    bad = [
        {"value": "999.1.1.1", "type": "ipv4"},
        {"value": "nodot"},
        {"value": "1.2.3.4", "colour": "red"},
        {"value": "x", "confidence": 101},
    ]
    bad += [{"value": "1.2.3.4", "tlp": "purple"}, {"value": "a" * 31, "type": "sha256"}, 42, {"tags": ["no value"]}]
    bad += [{"value": "example", "type": "domain"}, {"value": "2001:db8::zz", "type": "ipv6"}]
    response = api.import_("json", {"iocs": good[:500] + bad + good[500:]}, source="bulk-upload", tags=["import-test"])
    assert response.status_code == 200, response.get_json()
    body = response.get_json()
    assert body["iocs"]["summary"]["created"] == 990 and body["iocs"]["summary"]["rejected"] == 10
    named = {e["ref"] for e in body["errors"]} | {r["ref"] for r in body["iocs"]["results"] if r["status"] == "rejected"}
    assert named == {f"#{i}" for i in range(500, 510)}
    assert db.scalar("SELECT count(*) FROM iocs") == 990
    assert db.scalar("SELECT count(*) FROM iocs WHERE sources = '{bulk-upload}' AND tags @> '{import-test}'") == 990


def test_csv_and_text_and_misp_imports(api, db):
    csv_body = api.import_("csv", "indicator,type,tags,tlp\nevil.example.com,domain,c2;apt,green\n,,,\n,domain,c2,amber\n")
    assert csv_body.status_code == 200
    assert csv_body.get_json()["iocs"]["summary"]["created"] == 1 and csv_body.get_json()["errors"] == [
        {"ref": "row 4", "reason": "no value"}  # row 3 is blank and skipped
    ]
    text_body = api.import_("text", "beacon to hxxp://bad[.]example[.]net/x from 203.0.113[.]77").get_json()
    assert text_body["iocs"]["summary"]["created"] >= 2
    event = json.loads(require_shared_data("misp", "mispevent_testfiles__existing_event.json").read_text())
    misp = api.import_("misp", event).get_json()
    assert misp["iocs"]["summary"]["created"] + misp["iocs"]["summary"]["updated"] == 68 - misp["iocs"]["summary"]["unchanged"]
    # galaxy clusters that share a name or alias merge into one threat, so some count as updated
    assert misp["threats"]["summary"].get("created", 0) >= 5 and sum(misp["threats"]["summary"].values()) >= 10 and misp["links"] > 0
    assert db.scalar("SELECT count(*) FROM iocs WHERE 'misp:CIRCL' = ANY(sources)") > 0


def test_a_hosts_file_and_a_drop_list_import_their_entries_only(api, db):
    """Text imports of StevenBlack's hosts file and Spamhaus DROP, as downloaded: the store gets the blocked names and
    networks, never 0.0.0.0, 127.0.0.1, ::1 or the header's URLs; the answer counts what was skipped."""
    hosts = (
        "# Title: StevenBlack/hosts\n# Project home page: https://github.com/StevenBlack/hosts\n"
        "127.0.0.1 localhost\n255.255.255.255 broadcasthost\n::1 localhost\n0.0.0.0 0.0.0.0\n"
        "0.0.0.0 ads.tracker-example.com\n0.0.0.0 telemetry.badvendor-example.net\n"
    )
    body = api.import_("text", hosts, source="stevenblack").get_json()
    assert body["iocs"]["summary"]["created"] == 2
    assert body["skipped"] == {"comment lines": 2, "sink addresses": 7, "hosts-file local names": 3}
    drop = "; Spamhaus DROP List 2024/01/06\n; https://www.spamhaus.org/drop/drop.txt\n1.10.16.0/20 ; SBL256894\n"
    assert api.import_("text", drop, source="spamhaus-drop").get_json()["iocs"]["summary"]["created"] == 1
    stored = db.scalar(
        "SELECT string_agg(type || ' ' || value, ', ' ORDER BY value) FROM iocs WHERE sources && ARRAY['stevenblack', 'spamhaus-drop']"
    )
    assert stored == "cidr 1.10.16.0/20, domain ads.tracker-example.com, domain telemetry.badvendor-example.net"


def test_a_feed_line_of_deeply_nested_json_is_not_a_500(api, db):
    """A text feed's '{...}' lines are read as JSON Lines records with the standard library's decoder, which raised
    RecursionError for an object nested past the interpreter's limit (a 250 KB line): the import answered 500 (and an
    async one was retried to the dead letter). Such a line is no record; the feed's other lines import."""
    deep = '{"a":' * 50_000 + "1" + "}" * 50_000
    response = api.import_("text", f"{deep}\n" + "".join(f"198.51.100.{i}\n" for i in range(20, 40)), source="deep-jsonl")
    assert response.status_code == 200, response.get_data(as_text=True)[:300]
    assert response.get_json()["iocs"]["summary"]["created"] == 20


@pytest.mark.parametrize(
    ("fmt", "content", "message"),
    [
        ("json", '{"iocs": [', "not valid JSON"),
        (
            "stix",
            {  # no "type": "bundle": not STIX at all (one bad object inside a bundle is that object's error)
                "id": "bundle--11111111-1111-4111-8111-111111111111",
                "objects": [{"type": "ipv4-addr", "id": "ipv4-addr--22222222-2222-4222-8222-222222222222", "value": "198.51.100.8"}],
            },
            "not a STIX bundle or object",
        ),
        ("misp", {"Event": {"info": "x", "Attribute": {"type": "ip-dst", "value": "198.51.100.9"}}}, "Event.Attribute must be a list"),
        ("csv", "foo,bar\n1,2\n", "no value column"),
    ],
)
def test_malformed_documents_fail_and_store_nothing(api, db, fmt, content, message):
    before = db.counts()
    response = api.import_(fmt, content)
    assert response.status_code == 400
    assert message in response.get_json()["error"]["message"]
    assert db.counts() == before


def test_a_stix_bundle_with_one_bad_object_imports_the_rest(api, db):
    """An invalid pattern (here a Windows path with its backslashes not doubled), an indicator without a pattern and
    a relationship without a target_ref each refused the whole bundle with a 400, so nothing of the report came in.
    Each is now an error naming the object; the rest is stored. (The pinning case of the test above was this.)"""
    ind = {"type": "indicator", "spec_version": "2.1", "pattern_type": "stix", "valid_from": "2024-01-01T00:00:00Z"}
    doc = {
        "type": "bundle",
        "id": "bundle--11111111-1111-4111-8111-111111111111",
        "objects": [
            {"type": "ipv4-addr", "id": "ipv4-addr--22222222-2222-4222-8222-222222222222", "value": "198.51.100.8"},
            {**ind, "id": "indicator--33333333-3333-4333-8333-333333333331", "pattern": "[file:name = 'C:\\Windows\\x.exe']"},
            {**ind, "id": "indicator--33333333-3333-4333-8333-333333333332"},
            {**ind, "id": "indicator--33333333-3333-4333-8333-333333333333", "pattern": "[domain-name:value = 'c2.example.org']"},
            {
                "type": "relationship",
                "id": "relationship--44444444-4444-4444-8444-444444444444",
                "relationship_type": "related-to",
                "source_ref": "indicator--33333333-3333-4333-8333-333333333333",
            },
        ],
    }
    response = api.import_("stix", doc)
    assert response.status_code == 200, response.get_json()
    body = response.get_json()
    assert body["iocs"]["summary"]["created"] == 2
    reasons = {e["ref"]: e["reason"] for e in body["errors"]}
    assert set(reasons) == {
        "indicator--33333333-3333-4333-8333-333333333331",
        "indicator--33333333-3333-4333-8333-333333333332",
        "relationship--44444444-4444-4444-8444-444444444444",
    }
    assert "pattern is not valid STIX patterning" in reasons["indicator--33333333-3333-4333-8333-333333333331"]
    assert "needs a pattern" in reasons["indicator--33333333-3333-4333-8333-333333333332"]
    assert "needs source_ref and target_ref" in reasons["relationship--44444444-4444-4444-8444-444444444444"]
    assert db.scalar("SELECT count(*) FROM iocs WHERE value IN ('198.51.100.8', 'c2.example.org')") == 2


def _apply(conn, parsed, **extra):
    """apply_import in the caller's transaction, as an analyst cleared for red, without ATT&CK or warninglists."""
    from threatflow.intel.importer import apply_import
    from threatflow.iocs import repository as ioc_repository

    return apply_import(
        parsed,
        conn=conn,
        now=datetime.now(UTC),
        actor="t",
        clearance="red",
        catalog=None,
        warninglists=None,
        policies=ioc_repository.policies(conn),
        **extra,
    )


def test_a_database_error_rolls_back_everything(api, db, backend_env, monkeypatch):
    from threatflow.adapters.postgres import create_engine, unit_of_work
    from threatflow.intel import repository as intel_repository
    from threatflow.intel.formats import parse
    from threatflow.platform.config import Settings

    parsed = parse("stix", require_shared_data("stix", "oasis-examples", "threat-reports", "apt1.json").read_bytes())

    def broken(conn, **kwargs):
        from sqlalchemy import text

        conn.execute(text("SELECT 1/0"))  # a real database error, half-way through the import

    monkeypatch.setattr(intel_repository, "link_iocs", broken)  # links are written per threat and relation
    engine = create_engine(Settings.from_env({"DATABASE_URL": backend_env["DATABASE_URL"]}))
    before = db.counts()
    with pytest.raises(Exception, match="division by zero"), unit_of_work(engine) as conn:
        _apply(conn, parsed, source_default="x")
    engine.dispose()
    assert db.counts() == before


def test_a_value_marked_red_anywhere_in_one_import_is_stored_red(api, db):
    """STIX 2.1 gives an observed value as a top-level SCO (often unmarked) and again in the observed-data or
    indicator that marks it. The same value twice in one import was merged into its first item and only that
    item's TLP was kept: the unmarked SCO first stored the address at the request's green, not red."""
    red = "marking-definition--5e57c739-391a-4eb3-b6be-7d15ca92d5ed"
    sco = {"type": "ipv4-addr", "spec_version": "2.1", "id": "ipv4-addr--5a5a5a5a-0000-4000-8000-000000000001", "value": "198.51.100.77"}
    observed = {
        "type": "observed-data",
        "spec_version": "2.1",
        "id": "observed-data--5a5a5a5a-0000-4000-8000-000000000002",
        "created": "2024-01-01T00:00:00Z",
        "modified": "2024-01-01T00:00:00Z",
        "first_observed": "2024-01-01T00:00:00Z",
        "last_observed": "2024-01-01T00:00:00Z",
        "number_observed": 1,
        "object_refs": [sco["id"]],
        "object_marking_refs": [red],
    }
    bundle = {"type": "bundle", "id": "bundle--5a5a5a5a-0000-4000-8000-000000000000", "objects": [sco, observed]}
    response = api.import_("stix", bundle, tlp="green")
    assert response.status_code == 200, response.get_json()
    assert db.scalar("SELECT tlp FROM iocs WHERE value = '198.51.100.77'") == "red"
    items = [{"value": "198.51.100.78", "tlp": "green"}, {"value": "198.51.100.78", "tlp": "red"}, {"value": "198.51.100.78"}]
    assert api.import_("json", {"iocs": items}).status_code == 200
    assert db.scalar("SELECT tlp FROM iocs WHERE value = '198.51.100.78'") == "red"


def test_reimport_creates_no_duplicates_and_raises_detection_counts(api, db):
    bundle = json.loads(require_shared_data("stix", "oasis-examples", "threat-reports", "apt1.json").read_text())
    first = api.import_("stix", bundle).get_json()
    counts = db.counts()
    assert counts["iocs"] == 10 and counts["threats"] >= 20 and counts["threat_iocs"] == first["links"] > 0
    second = api.import_("stix", bundle).get_json()
    assert second["iocs"]["summary"]["created"] == 0 and second["iocs"]["summary"]["updated"] == 10
    assert second["links_created"] == 0 and "created" not in second["threats"]["summary"]
    assert db.counts() == counts
    assert db.scalar("SELECT min(detection_count) FROM iocs") == 2


def test_sync_import_over_5_mb_is_413_with_the_async_hint(api):
    big = {"format": "text", "content": "1.2.3.4 " * 700_000}
    response = api.post("/api/v1/iocs/import", big)
    assert response.status_code == 413 and "async=true" in response.get_json()["error"]["message"]


def test_extract_stores_nothing(api, db):
    response = api.post("/api/v1/iocs/extract", {"text": "see hxxps://evil[.]example[.]com/p and d41d8cd98f00b204e9800998ecf8427e"})
    assert response.status_code == 200
    found = {(i["type"], i["value"]) for i in response.get_json()["iocs"]}
    assert ("md5", "d41d8cd98f00b204e9800998ecf8427e") in found
    assert all({"type", "value", "original"} <= set(i) for i in response.get_json()["iocs"])
    assert db.scalar("SELECT count(*) FROM iocs") == 0


def test_export_formats_respect_max_tlp(api):
    import stix2

    items = [
        {"value": "green.example.com", "tlp": "green", "tags": ["t1"]},
        {"value": "amber.example.com", "tlp": "amber"},
        {"value": "red.example.com", "tlp": "red"},
        {"value": "198.51.100.20", "tlp": "clear"},
    ]
    api.import_("json", items)
    default = api.get("/api/v1/iocs/export?format=stix")
    assert default.status_code == 200 and default.content_type == "application/stix+json;version=2.1"
    assert "attachment; filename=" in default.headers["Content-Disposition"]
    bundle = stix2.parse(default.data.decode(), allow_custom=False)
    names = {o.name for o in bundle.objects if o.type == "indicator"}
    assert names == {"green.example.com", "amber.example.com", "198.51.100.20"}  # default max_tlp is amber
    marked = {o.name: o.object_marking_refs for o in bundle.objects if o.type == "indicator"}
    assert marked["green.example.com"] == [stix2.TLP_GREEN.id]
    everything = stix2.parse(api.get("/api/v1/iocs/export?format=stix&max_tlp=red").data.decode(), allow_custom=False)
    assert "red.example.com" in {o.name for o in everything.objects if o.type == "indicator"}
    txt = api.get("/api/v1/iocs/export?format=txt&type=domain")
    assert txt.content_type.startswith("text/plain") and sorted(txt.data.decode().split()) == ["amber.example.com", "green.example.com"]
    assert txt.headers["X-Export-Count"] == "2" and txt.headers["X-Export-Truncated"] == "false"
    capped = api.get("/api/v1/iocs/export?format=txt&type=domain&limit=1")
    assert len(capped.data.decode().split()) == 1 and capped.headers["X-Export-Truncated"] == "true"
    exact = api.get("/api/v1/iocs/export?format=txt&type=domain&limit=2")
    assert exact.headers["X-Export-Count"] == "2" and exact.headers["X-Export-Truncated"] == "false"
    csv_export = api.get("/api/v1/iocs/export?format=csv&tags=t1")
    lines = csv_export.data.decode().splitlines()
    assert csv_export.content_type.startswith("text/csv") and lines[0].startswith("id,type,value,tags") and len(lines) == 2
    assert api.get("/api/v1/iocs/export?format=pdf").status_code == 400
    assert api.get("/api/v1/iocs/export?bogus=1").status_code == 400
    # The CSV export imports back as the same IoCs.
    again = api.import_("csv", csv_export.data.decode()).get_json()
    assert again["iocs"]["summary"]["updated"] == 1 and again["iocs"]["summary"]["created"] == 0


ROUND_TRIP = [
    "oasis-examples/threat-reports/apt1.json",
    "oasis-examples/indicator-to-campaign-relationship.json",
    "oasis-examples/indicators-for-C2-with-COA.json",
    "oasis-examples/indicator-for-c2-ip-address.json",
    "oasis-examples/infrastructure.json",
    "PyMISP-tests-stix2.json",
]


@pytest.mark.parametrize("name", ROUND_TRIP)
def test_stix_round_trip(api, name):
    import stix2

    from threatflow.intel.formats.stix import pattern_values

    source = json.loads(require_shared_data("stix", *name.split("/")).read_text())
    first = api.import_("stix", source).get_json()
    imported = {r["value"] for r in first["iocs"]["results"] if r.get("id")}
    threats_by_ref = {t["ref"]: t for t in first["threats"]["results"]}
    objects = {o["id"]: o for o in source.get("objects", [source])}
    ref_values: dict[str, set[str]] = {}
    for r in first["iocs"]["results"]:
        if r.get("id"):
            ref_values.setdefault(r["ref"], set()).add(r["value"])
    expected_pairs = {
        (value, objects[r["target_ref"]]["name"])
        for r in objects.values()
        if r["type"] == "relationship" and r["relationship_type"] == "indicates" and r["target_ref"] in threats_by_ref
        for value in ref_values.get(r["source_ref"], set())
    }
    expected_threats = {
        (objects[r["target_ref"]]["name"], objects[r["target_ref"]]["type"])
        for r in objects.values()
        if r["type"] == "relationship"
        and r["relationship_type"] == "indicates"
        and ref_values.get(r["source_ref"])
        and r["target_ref"] in threats_by_ref
    }

    exported = api.get("/api/v1/iocs/export?format=stix&max_tlp=red&limit=1000")
    bundle = stix2.parse(exported.data.decode(), allow_custom=False)
    by_id = {o.id: o for o in bundle.objects}
    indicator_values = {}
    for o in bundle.objects:
        if o.type == "indicator":
            indicator_values[o.id] = {v for _, v in pattern_values(o.pattern)[0]}
    assert set().union(*indicator_values.values()) == imported
    assert {(o.name, o.type) for o in bundle.objects if o.type in ("malware", "threat-actor", "intrusion-set", "campaign", "tool")} == (
        expected_threats
    )
    pairs = {
        (value, by_id[r.target_ref].name)
        for r in bundle.objects
        if r.type == "relationship" and r.relationship_type == "indicates"
        for value in indicator_values[r.source_ref]
    }
    assert pairs == expected_pairs
    # Importing the export changes nothing: same ids, no new rows.
    second = api.import_("stix", json.loads(exported.data)).get_json()
    assert second["iocs"]["summary"]["created"] == 0 and second["links_created"] == 0
    assert "created" not in second["threats"]["summary"]
    again = stix2.parse(api.get("/api/v1/iocs/export?format=stix&max_tlp=red&limit=1000").data.decode(), allow_custom=False)
    assert {o.id for o in again.objects if o.type != "bundle"} == {o.id for o in bundle.objects}


def _push(message):
    return push_envelope_of(message, "ioc-import-push")


@pytest.fixture
def import_queue(backend_env):
    """A pull subscription on the ioc-import topic, to catch what the iocs function queues."""
    from google.api_core.exceptions import AlreadyExists
    from google.cloud import pubsub_v1

    publisher = pubsub_v1.PublisherClient()
    subscriber = pubsub_v1.SubscriberClient()
    topic = publisher.topic_path(PROJECT, "ioc-import")
    with contextlib.suppress(AlreadyExists):  # created by an earlier test in this run
        publisher.create_topic(name=topic)
    sub = subscriber.subscription_path(PROJECT, f"check-{uuid.uuid4().hex[:8]}")
    subscriber.create_subscription(name=sub, topic=topic)

    def next_message():
        return subscriber.pull(request={"subscription": sub, "max_messages": 1}, timeout=10).received_messages[0].message

    yield next_message
    subscriber.close()


def test_async_import_through_the_ioc_import_function(api, db, function_client, import_queue):
    items = [{"value": f"198.18.{i // 250}.{i % 250}"} for i in range(2000)] + [{"value": "not an ioc"}]
    response = api.post("/api/v1/iocs/import?async=true", {"format": "json", "content": items, "source": "async-test"})
    assert response.status_code == 202
    job_id = response.get_json()["job_id"]
    assert response.get_json()["status_url"] == f"/api/v1/iocs/import/{job_id}"
    assert api.get(f"/api/v1/iocs/import/{job_id}").get_json()["state"] == "queued"
    assert db.scalar("SELECT count(*) FROM iocs") == 0

    pulled = import_queue()
    assert pulled.attributes["job_id"] == job_id
    worker = function_client("ioc-import", ATTACK_DATA_PATH=str(ATTACK))
    assert worker.post("/", json=_push(pulled)).status_code == 200
    job = api.get(f"/api/v1/iocs/import/{job_id}").get_json()
    assert job["state"] == "succeeded" and job["attempts"] == 1
    assert job["result"]["iocs"]["summary"]["created"] == 2000 and job["result"]["iocs"]["summary"]["rejected"] == 1
    assert job["progress"]["iocs"] == 2001 and job["result"]["iocs"]["rejected"][0]["ref"] == "#2000"
    assert (job["result"]["links_cut"], job["result"]["relations_cut"], job["result"]["tags_cut"]) == (0, 0, 0)
    assert db.scalar("SELECT count(*) FROM iocs WHERE 'async-test' = ANY(sources)") == 2000
    # A redelivery of a finished job does nothing.
    assert worker.post("/", json=_push(pulled)).status_code == 200
    assert api.get(f"/api/v1/iocs/import/{job_id}").get_json()["attempts"] == 1
    assert db.scalar("SELECT max(detection_count) FROM iocs") == 1
    assert api.get("/api/v1/iocs/import/no-such-job").status_code == 404


@pytest.mark.parametrize(
    ("extra", "field"),
    [
        ({"tlp": "purple"}, "tlp"),
        ({"source": "s" * 300}, "sources"),
        ({"tags": [f"t{i}" for i in range(65)]}, "tags"),
        ({"content": ""}, "content"),
        ({"content": None}, "content"),
    ],
    ids=["tlp", "source", "tags", "empty-content", "null-content"],
)
def test_an_async_import_refuses_the_envelope_a_sync_import_refuses_before_queuing_it(api, import_queue, extra, field):
    """The request's own fields (tlp, source, tags, content) are checked once before the document is read; an async
    import checked only its format, answered 202 and queued a job that could only fail (or, for a bad tlp or source,
    reject every item), where the same body answered synchronously was a 400 naming the field."""
    from threatflow.adapters.firestore import FirestoreDocuments
    from threatflow.intel.importer import IMPORT_JOBS

    body = {"format": "json", "content": [{"value": "198.18.3.3"}], **extra}
    documents = FirestoreDocuments(PROJECT)
    before = len(documents.query(IMPORT_JOBS, where=[("requested_by", "==", "analyst1")], limit=1000))
    sync = api.post("/api/v1/iocs/import", body)
    queued = api.post("/api/v1/iocs/import?async=true", body)
    assert sync.status_code == 400 and sync.get_json()["error"]["details"]["field"] == field, sync.get_json()
    assert queued.status_code == 400, queued.get_data(as_text=True)[:300]
    assert queued.get_json()["error"] == sync.get_json()["error"]
    assert len(documents.query(IMPORT_JOBS, where=[("requested_by", "==", "analyst1")], limit=1000)) == before


def test_a_redelivery_during_a_run_waits_for_the_lease(api, db, function_client, import_queue):
    from datetime import UTC, datetime, timedelta

    from threatflow.adapters.firestore import FirestoreDocuments
    from threatflow.intel.importer import IMPORT_LEASES

    job_id = api.post("/api/v1/iocs/import?async=true", {"format": "json", "content": [{"value": "198.18.9.9"}]}).get_json()["job_id"]
    pulled = import_queue()
    documents = FirestoreDocuments(PROJECT)
    now = datetime.now(UTC)
    # Another delivery holds the job: this one is retried (5xx) and changes nothing.
    documents.set(IMPORT_LEASES, job_id, {"holder": "other", "until": now + timedelta(minutes=5)})
    worker = function_client("ioc-import")
    assert worker.post("/", json=_push(pulled)).status_code >= 500  # Pub/Sub redelivers later
    assert api.get(f"/api/v1/iocs/import/{job_id}").get_json()["state"] == "queued"
    assert db.scalar("SELECT count(*) FROM iocs") == 0
    # The holder died: once its lease expires the next delivery runs the job and frees the lease.
    documents.set(IMPORT_LEASES, job_id, {"holder": "other", "until": now - timedelta(seconds=1)})
    assert worker.post("/", json=_push(pulled)).status_code == 200
    assert api.get(f"/api/v1/iocs/import/{job_id}").get_json()["state"] == "succeeded"
    assert db.scalar("SELECT detection_count FROM iocs WHERE value = '198.18.9.9'") == 1
    assert documents.get(IMPORT_LEASES, job_id) is None


def test_an_async_import_writes_with_its_requesters_clearance(api, db, function_client, backend_env, import_queue):
    """The ioc-import job applies the import as the user who queued it: an IoC marked above that user's clearance
    (an amber analyst here) is only sighted, as by POST /import, never declassified."""
    made = api.post("/api/v1/iocs/batch", {"iocs": [{"value": "198.18.7.7", "tlp": "red", "description": "kept"}]}).get_json()
    assert made["summary"]["created"] == 1, made
    password = create_user(backend_env["DATABASE_URL"], "amber1", "analyst", clearance="amber")
    token = function_client("auth").post("/api/v1/auth/token", json={"username": "amber1", "password": password}).get_json()
    body = {"format": "json", "content": [{"value": "198.18.7.7", "tlp": "clear", "description": "declassified"}]}
    iocs = function_client("iocs", ATTACK_DATA_PATH=str(ATTACK))
    queued = iocs.post("/api/v1/iocs/import?async=true", json=body, headers={"Authorization": f"Bearer {token['access_token']}"})
    assert queued.status_code == 202, queued.get_data(as_text=True)[:300]
    assert function_client("ioc-import").post("/", json=_push(import_queue())).status_code == 200
    job = iocs.get(queued.get_json()["status_url"], headers={"Authorization": f"Bearer {token['access_token']}"}).get_json()
    assert job["state"] == "succeeded", job
    assert db.scalar("SELECT tlp || ':' || description || ':' || detection_count FROM iocs WHERE value = '198.18.7.7'") == "red:kept:2"


@contextlib.contextmanager
def _json_log(name):
    """Logger `name`'s lines as the functions write them (platform/logging.py's JSON), one dict a line."""
    from threatflow.platform.logging import JsonFormatter

    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonFormatter())
    logger = logging.getLogger(name)
    logger.addHandler(handler)
    lines: list[dict] = []
    try:
        yield lines
    finally:
        logger.removeHandler(handler)
        lines.extend(json.loads(line) for line in stream.getvalue().splitlines())


def _crashing_json_parser(monkeypatch, exc):
    """The json format's parser raising `exc` on every document, as a parser bug does on the document that trips it."""
    from threatflow.intel.formats import jsonfmt

    def parse(content):
        raise exc

    monkeypatch.setattr(jsonfmt, "parse", parse)


def test_an_async_import_whose_parser_crashes_fails_on_its_first_delivery(api, db, function_client, import_queue, monkeypatch):
    """The parsing stage is pure: an exception it raises that is no error of the tree (TypeError, KeyError,
    RecursionError ... a parser bug on an odd document) raises again on every delivery. The job went back to queued
    and its message was retried until the dead letter, the document parsed again each time, the job never failed.
    It fails on the first delivery now, says so, logs the traceback with the job id, and the message is acked."""
    _crashing_json_parser(monkeypatch, TypeError("'int' object is not subscriptable"))
    job_id = api.post("/api/v1/iocs/import?async=true", {"format": "json", "content": [{"value": "198.18.9.10"}]}).get_json()["job_id"]
    worker = function_client("ioc-import")
    with _json_log("threatflow.intel.importer") as logged:
        delivered = worker.post("/", json=_push(import_queue()))
    assert delivered.status_code == 200, delivered.get_data(as_text=True)[:300]  # acked: dropped, never redelivered
    job = api.get(f"/api/v1/iocs/import/{job_id}").get_json()
    assert (job["state"], job["attempts"]) == ("failed", 1), job
    assert job["error"] == "the document could not be parsed: internal error (TypeError); it has been logged"
    errors = [line for line in logged if line["severity"] == "ERROR"]
    assert len(errors) == 1 and errors[0]["job_id"] == job_id, logged
    assert "TypeError: 'int' object is not subscriptable" in errors[0]["exception"]
    assert db.scalar("SELECT count(*) FROM iocs") == 0


def test_an_import_past_the_item_bound_is_a_400_naming_content_and_its_async_job_fails_with_it(
    api, db, function_client, import_queue, monkeypatch
):
    """An import holds at most MAX_IMPORT_ITEMS items (scaled down to 3 here): past them a sync import is a 400 naming
    content and an async job fails on its first delivery with the same message, acked; nothing is stored. The whole
    32 MiB body was parsed: 1,342,177 JSON items peaked at 879 MB in parsing alone in the 1 GiB ioc-import function."""
    from threatflow.intel.formats import base

    monkeypatch.setattr(base, "MAX_IMPORT_ITEMS", 3, raising=False)
    items = [{"value": f"198.18.9.{i}"} for i in range(4)]
    message = "the document holds more than 3 items; at most 3 items an import (IoCs and rejected items): split it into several imports"
    refused = api.import_("json", items)
    assert refused.status_code == 400, refused.get_data(as_text=True)[:300]
    assert refused.get_json()["error"]["message"] == message and refused.get_json()["error"]["details"] == {"field": "content"}
    queued = api.post("/api/v1/iocs/import?async=true", {"format": "json", "content": items})
    assert queued.status_code == 202, queued.get_data(as_text=True)[:300]
    job_id = queued.get_json()["job_id"]
    delivered = function_client("ioc-import").post("/", json=_push(import_queue()))
    assert delivered.status_code == 200, delivered.get_data(as_text=True)[:300]  # acked: dropped, never redelivered
    job = api.get(f"/api/v1/iocs/import/{job_id}").get_json()
    assert (job["state"], job["attempts"], job["error"]) == ("failed", 1, message), job
    assert db.scalar("SELECT count(*) FROM iocs") == 0
    assert api.import_("json", items[:3]).get_json()["iocs"]["summary"]["created"] == 3


def test_a_document_opening_more_json_containers_than_the_bound_is_refused_before_it_is_decoded(
    api, db, function_client, import_queue, monkeypatch
):
    """The item bound applies while parsing, after the request is decoded: a 32 MiB body of `[{},{},...]` is 11 million
    objects, ~816 MB decoded (in the iocs function, 1 GiB, which decoded every async body whole to check its envelope,
    and again in ioc-import) before a parser saw the first item. Past MAX_DOCUMENT_CONTAINERS (scaled down to 50 here)
    '{' and '[' in the body, a sync or async import is a 400 naming content before anything is decoded, nothing is
    queued, and a job stored before (under a larger bound) fails on its first delivery with the same message."""
    from threatflow.intel.formats import base

    monkeypatch.setattr(base, "MAX_DOCUMENT_CONTAINERS", 50, raising=False)
    content = [{} for _ in range(60)]
    for path in ("/api/v1/iocs/import", "/api/v1/iocs/import?async=true"):
        refused = api.post(path, {"format": "json", "content": content})
        assert refused.status_code == 400, refused.get_data(as_text=True)[:300]
        error = refused.get_json()["error"]
        assert error["details"] == {"field": "content"} and "more than 50 JSON objects and arrays" in error["message"], error
        assert "split it" in error["message"], error
    queued = api.post("/api/v1/iocs/import?async=true", {"format": "json", "content": [{"value": "198.18.9.40"}] * 40})
    assert queued.status_code == 202, queued.get_data(as_text=True)[:300]
    monkeypatch.setattr(base, "MAX_DOCUMENT_CONTAINERS", 20, raising=False)  # the job is read under a smaller bound
    pulled = import_queue()
    assert pulled.attributes["job_id"] == queued.get_json()["job_id"], "a refused async import was queued before it"
    delivered = function_client("ioc-import").post("/", json=_push(pulled))
    assert delivered.status_code == 200, delivered.get_data(as_text=True)[:300]  # acked: dropped, never redelivered
    job = api.get(f"/api/v1/iocs/import/{queued.get_json()['job_id']}").get_json()
    assert (job["state"], job["attempts"]) == ("failed", 1) and "more than 20 JSON objects and arrays" in job["error"], job
    assert db.scalar("SELECT count(*) FROM iocs") == 0


def test_an_async_document_nested_too_deep_is_a_400_naming_content(api, db):
    """Decoded as an envelope (its content left raw), the request still meets msgspec's nesting guard: a 400, which
    named the body; it names content again, as the sync route's screen does."""
    deep = '{"a": ' * 5000 + '"leaf"' + "}" * 5000
    refused = api.post_raw("/api/v1/iocs/import?async=true", f'{{"format": "json", "content": {deep}}}')
    assert refused.status_code == 400, refused.get_data(as_text=True)[:300]
    assert refused.get_json()["error"]["details"] == {"field": "content"}, refused.get_json()
    assert "nests deeper than 400 levels" in refused.get_json()["error"]["message"]


@pytest.mark.parametrize(
    ("content", "said"),
    [
        ('[{"value": "198.18.9.50", "description": "x\\u0000y"}]', "NUL characters are not allowed"),
        ('[{"value": "198.18.9.51", "confidence": 123456789012345678901234567890}]', "integer out of range"),
    ],
    ids=["nul", "huge-integer"],
)
def test_an_async_document_the_sync_route_screens_out_fails_its_job_with_the_same_words(
    api, db, function_client, import_queue, content, said
):
    """The async route reads only the envelope (the document stays undecoded until the job), so what decode_body's
    screen refuses in a sync import (a NUL, an integer past 64 bits) is refused by the job, on its first delivery and
    in the same words: the job imported them."""
    queued = api.post_raw("/api/v1/iocs/import?async=true", f'{{"format": "json", "content": {content}}}')
    assert queued.status_code == 202, queued.get_data(as_text=True)[:300]
    delivered = function_client("ioc-import").post("/", json=_push(import_queue()))
    assert delivered.status_code == 200, delivered.get_data(as_text=True)[:300]  # acked: dropped, never redelivered
    job = api.get(f"/api/v1/iocs/import/{queued.get_json()['job_id']}").get_json()
    assert (job["state"], job["attempts"]) == ("failed", 1) and said in job["error"] and "content" in job["error"], job
    assert db.scalar("SELECT count(*) FROM iocs") == 0


def test_a_sync_import_whose_parser_crashes_is_a_logged_500(api, db, monkeypatch):
    """The same parser bug in POST /import (no async): the pipeline's 500, its traceback logged under the request id
    (platform/web.py), and nothing stored."""
    _crashing_json_parser(monkeypatch, TypeError("'int' object is not subscriptable"))
    with _json_log("threatflow.http") as logged:
        response = api.import_("json", [{"value": "198.18.9.12"}])
    assert response.status_code == 500 and response.get_json()["error"]["code"] == "internal", response.get_data(as_text=True)[:300]
    unhandled = [line for line in logged if line["message"] == "unhandled error"]
    assert len(unhandled) == 1 and "TypeError: 'int' object is not subscriptable" in unhandled[0]["exception"], logged
    assert db.scalar("SELECT count(*) FROM iocs") == 0


@pytest.mark.parametrize(
    ("failure", "last_error"),
    [
        ("MemoryError while parsing", "MemoryError"),
        ("database connection lost while applying", "InterfaceError: (pg8000.exceptions.InterfaceError) network error"),
    ],
    ids=["memory-while-parsing", "database-lost-while-applying"],
)
def test_an_async_import_is_retried_when_its_failure_may_pass(api, db, function_client, import_queue, monkeypatch, failure, last_error):
    """What another delivery may get past stays retryable: a MemoryError while parsing (the instance ran short, which
    may be the moment's load and not the document) and a database failure while applying. The job goes back to queued,
    and the delivery answers 5xx so Pub/Sub redelivers it."""
    if failure.startswith("MemoryError"):
        _crashing_json_parser(monkeypatch, MemoryError())
    else:
        from sqlalchemy import text

        from threatflow.iocs import repository as ioc_repository

        def lost(conn, **kwargs):  # the audit row is the import's last write, after its IoCs'
            conn.execute(text("SELECT pg_terminate_backend(pg_backend_pid())"))

        monkeypatch.setattr(ioc_repository, "record_audit", lost)
    job_id = api.post("/api/v1/iocs/import?async=true", {"format": "json", "content": [{"value": "198.18.9.11"}]}).get_json()["job_id"]
    delivered = function_client("ioc-import").post("/", json=_push(import_queue()))
    assert delivered.status_code >= 500  # Pub/Sub redelivers later
    job = api.get(f"/api/v1/iocs/import/{job_id}").get_json()
    assert job["state"] == "queued" and job["last_error"].startswith(last_error), job
    assert db.scalar("SELECT count(*) FROM iocs") == 0


@pytest.fixture
def queued_by(function_client, backend_env, import_queue):
    """Queues an async import as a new analyst cleared for red; returns the job's status URL, a change made as an
    admin to that account (admin API) before the worker runs, and the worker's delivery."""
    url = backend_env["DATABASE_URL"]
    auth, admin_api = function_client("auth"), function_client("admin")
    boss = auth.post(
        "/api/v1/auth/token", json={"username": "boss", "password": create_user(url, "boss", "admin", clearance="red")}
    ).get_json()
    as_admin = {"Authorization": f"Bearer {boss['access_token']}"}
    iocs = function_client("iocs", ATTACK_DATA_PATH=str(ATTACK))

    class Queued:
        def __init__(self, username, content):
            password = create_user(url, username, "analyst", clearance="red")
            token = auth.post("/api/v1/auth/token", json={"username": username, "password": password}).get_json()["access_token"]
            self.username = username
            queued = iocs.post(
                "/api/v1/iocs/import?async=true",
                json={"format": "json", "content": content},
                headers={"Authorization": f"Bearer {token}"},
            )
            assert queued.status_code == 202, queued.get_data(as_text=True)[:300]
            self.job_id = queued.get_json()["job_id"]

        def patch(self, **change):
            response = admin_api.patch(f"/api/v1/admin/users/{self.username}", json=change, headers=as_admin)
            assert response.status_code == 200, response.get_json()

        def disable(self):
            assert admin_api.post(f"/api/v1/admin/users/{self.username}/disable", headers=as_admin).status_code in (200, 204)

        def run(self):
            assert function_client("ioc-import").post("/", json=_push(import_queue())).status_code == 200  # acked either way
            return iocs.get(f"/api/v1/iocs/import/{self.job_id}", headers=as_admin).get_json()

    return Queued


def test_an_async_import_writes_with_its_requesters_clearance_when_it_runs(api, db, queued_by):
    """The job stored the clearance its requester had when it was queued and wrote with it: an analyst cleared for
    red, lowered to amber before the worker ran, still rewrote and declassified a red IoC through a queued import."""
    made = api.post("/api/v1/iocs/batch", {"iocs": [{"value": "198.18.7.8", "tlp": "red", "description": "kept"}]}).get_json()
    assert made["summary"]["created"] == 1, made
    job = queued_by("lowered1", [{"value": "198.18.7.8", "tlp": "clear", "description": "declassified"}])
    job.patch(clearance="amber")
    ran = job.run()
    assert ran["state"] == "succeeded", ran
    assert db.scalar("SELECT tlp || ':' || description || ':' || detection_count FROM iocs WHERE value = '198.18.7.8'") == "red:kept:2"


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ("disable", "disabled or no longer exists"),
        ({"role": "reader"}, "analyst"),
        ({"password": "a brand new passphrase 42"}, "changed since"),
    ],
)
def test_an_async_import_is_refused_when_its_requesters_account_changed_before_it_ran(db, queued_by, change, message):
    """A queued job acts for its requester as the token that queued it did: once that token would be refused (the
    account disabled, its role or password changed) or the role no longer writes, the job fails and writes nothing.
    Before, the worker ran it whatever had happened to the account since."""
    job = queued_by("leaver1", [{"value": "198.18.7.9", "tags": ["from-a-leaver"]}])
    if change == "disable":
        job.disable()
    else:
        job.patch(**change)
    ran = job.run()
    assert ran["state"] == "failed" and message in ran["error"], ran
    assert db.scalar("SELECT count(*) FROM iocs WHERE value = '198.18.7.9'") == 0


def test_an_admin_reads_another_users_import_job_only_within_its_clearance(api, function_client, backend_env, import_queue):
    """An async import job's record (its progress, errors and warnings come from the document) is the requester's and,
    for an admin, readable only within the clearance it ran with: an amber admin read a red analyst's job whole,
    though the document it read may be red. The red admin still reads it; the amber admin gets the 404 of a job that
    is not theirs."""
    url = backend_env["DATABASE_URL"]
    auth, iocs = function_client("auth"), function_client("iocs", ATTACK_DATA_PATH=str(ATTACK))

    def bearer(username, role, clearance):
        password = create_user(url, username, role, clearance=clearance)
        token = auth.post("/api/v1/auth/token", json={"username": username, "password": password}).get_json()["access_token"]
        return {"Authorization": f"Bearer {token}"}

    analyst, red_admin, amber_admin = (
        bearer("redjob1", "analyst", "red"),
        bearer("redboss1", "admin", "red"),
        bearer("amberboss1", "admin", "amber"),
    )
    queued = iocs.post(
        "/api/v1/iocs/import?async=true", json={"format": "json", "content": [{"value": "198.18.7.10", "tlp": "red"}]}, headers=analyst
    )
    assert queued.status_code == 202, queued.get_data(as_text=True)[:300]
    status_url = queued.get_json()["status_url"]
    for stage in ("queued", "succeeded"):
        if stage == "succeeded":
            assert function_client("ioc-import").post("/", json=_push(import_queue())).status_code == 200
        assert iocs.get(status_url, headers=analyst).get_json()["state"] == stage
        assert iocs.get(status_url, headers=red_admin).get_json()["state"] == stage
        hidden = iocs.get(status_url, headers=amber_admin)
        assert hidden.status_code == 404 and "198.18" not in hidden.get_data(as_text=True), (stage, hidden.get_json())


def test_a_job_queued_before_requester_ids_were_stored_is_checked_by_username(backend_env):
    """Jobs already queued when this shipped name their requester by username only (and a clearance, now ignored)."""
    from threatflow.adapters.postgres import create_engine, unit_of_work
    from threatflow.auth.model import Role
    from threatflow.auth.repository import UserRepository
    from threatflow.auth.requester import acting_for
    from threatflow.platform.config import Settings
    from threatflow.platform.errors import AuthError

    url = backend_env["DATABASE_URL"]
    create_user(url, "oldjob1", "analyst", clearance="green")
    engine = create_engine(Settings.from_env({"DATABASE_URL": url}))
    try:
        with unit_of_work(engine) as conn:
            users = UserRepository(conn)
            found = acting_for(users, user_id=None, username="OldJob1", version=None, role=Role.ANALYST)
            assert (found.username, found.clearance) == ("oldjob1", "green")
            users.set_disabled("oldjob1", True)
            with pytest.raises(AuthError, match="disabled or no longer exists"):
                acting_for(users, user_id=None, username="oldjob1", version=None, role=Role.ANALYST)
            with pytest.raises(AuthError, match="disabled or no longer exists"):
                acting_for(users, user_id=None, username=None, version=None, role=Role.ANALYST)
    finally:
        engine.dispose()


def test_a_value_marked_red_in_one_chunk_of_a_large_import_is_not_lowered_by_a_later_chunk(db, backend_env):
    """An import is upserted in chunks of upsert_batch's 10,000 items, all in one transaction; the strictest-TLP
    merge held within a chunk only, so the same value marked red early in a large feed and green (or unmarked,
    taking the request's green) in a later chunk was stored green. Chunks of 2 here stand for chunks of 10,000."""
    from threatflow.adapters.postgres import create_engine, unit_of_work
    from threatflow.intel.formats import parse
    from threatflow.platform.config import Settings

    items = [
        {"value": "198.51.100.90", "tlp": "red"},
        {"value": "other.example.com"},
        {"value": "third.example.com"},
        {"value": "198[.]51.100[.]90", "tlp": "green"},  # another spelling of the same address (defanged)
        {"value": "198.51.100.90"},
    ]
    parsed = parse("json", json.dumps(items)).with_defaults(tlp="green")
    engine = create_engine(Settings.from_env({"DATABASE_URL": backend_env["DATABASE_URL"]}))
    with unit_of_work(engine) as conn:
        result = _apply(conn, parsed, chunk=2)
    engine.dispose()
    assert result["iocs"]["summary"]["rejected"] == 0, result["iocs"]
    assert db.scalar("SELECT tlp FROM iocs WHERE value = '198.51.100.90'") == "red"
    assert db.scalar("SELECT tlp FROM iocs WHERE value = 'other.example.com'") == "green"


def test_extract_reads_a_pasted_feed_as_the_text_import_does(api):
    """A feed pasted into /extract gave its header's URLs (the list's home page) and a hosts file's sink address as
    indicators; a text import of the same text stores only the entries. /extract reads it the same way, and says what
    it skipped."""
    text = (
        "# abuse.ch Feodo Tracker Botnet C2 IP Blocklist\n# https://feodotracker.abuse.ch/blocklist/\n"
        "# Last updated: 2026-11-26 10:00:00 UTC\n203.0.113.10\n203.0.113.11\n198.51.100.99\n"
    )
    response = api.post("/api/v1/iocs/extract", {"text": text})
    assert response.status_code == 200, response.get_json()
    body = response.get_json()
    assert [i["value"] for i in body["iocs"]] == ["203.0.113.10", "203.0.113.11", "198.51.100.99"]
    assert {i["type"] for i in body["iocs"]} == {"ipv4"}
    assert body["feed"] is True and body["skipped"] == {"comment lines": 3}
    report = api.post("/api/v1/iocs/extract", {"text": "The actor used https://feodotracker.abuse.ch/x and 203.0.113.10."}).get_json()
    assert report["feed"] is False and report["skipped"] == {}
    assert {i["value"] for i in report["iocs"]} == {"https://feodotracker.abuse.ch/x", "203.0.113.10"}


def test_real_document_shapes_import_through_the_route(api, db):
    """Excerpts of real public documents (tests/real_documents.py) through POST /import: OpenCTI's test bundle was a
    400 for one malformed sighting id, an OTX pulse and abuse.ch's answers were 400s, and a MISP event's object graph
    stored no relation."""
    from real_documents import MALWAREBAZAAR_ANSWER, OPENCTI_BUNDLE, OTX_PULSE, SEDNIT_EVENT

    opencti = api.import_("stix", OPENCTI_BUNDLE)
    assert opencti.status_code == 200, opencti.get_json()
    assert db.scalar("SELECT tlp FROM iocs WHERE value = '2a0169c72c84e6d3fa49af701fd46ee7aaf1d1d9e107798d93a6ca8df5d25957'") == "clear"

    before = db.counts()["ioc_relations"]
    misp = api.import_("misp", SEDNIT_EVENT)
    assert misp.status_code == 200, misp.get_json()
    assert db.counts()["ioc_relations"] - before == 4
    assert (
        db.scalar(
            "SELECT count(*) FROM ioc_relations r JOIN iocs s ON s.id = r.source_id JOIN iocs t ON t.id = r.target_id"
            " WHERE s.value = 'servicecdp.com' AND t.value = '87.236.211.182' AND r.type = 'resolves-to'"
        )
        == 1
    )

    pulse = api.import_("json", OTX_PULSE)
    assert pulse.status_code == 200, pulse.get_json()
    assert db.scalar("SELECT tlp FROM iocs WHERE value = 'd8c70ca70fd3555a0828fede6cc1f59e2c320ede80157039b6a2f09c336d5f7a'") == "amber"
    assert db.scalar("SELECT ttps FROM threats WHERE name = 'Wizard Spider'") == ["T1566.001"]
    assert (
        db.scalar("SELECT count(*) FROM threat_iocs l JOIN threats t ON t.id = l.threat_id WHERE t.name IN ('TrickBot', 'Wizard Spider')")
        == 10
    )

    bazaar = api.import_("json", MALWAREBAZAAR_ANSWER)
    assert bazaar.status_code == 200, bazaar.get_json()
    assert bazaar.get_json()["iocs"]["summary"]["created"] == 3


def test_a_stix_domain_ip_pattern_stores_the_domain_resolving_to_the_address(api, db):
    """MISP's STIX 2.0 export of domain|ip: one indicator ANDing the name and `resolves_to_refs[*].value`. The name
    now resolves to the address (one way only), and the indicator's `indicates` reaches both IoCs."""
    ind = {
        "type": "indicator",
        "id": "indicator--5b23c82b-6508-4bdc-b580-045b0a0002a0",
        "labels": ['misp:type="domain|ip"'],
        "pattern": "[domain-name:value = 'resolves.example.org' AND domain-name:resolves_to_refs[*].value = '198.51.100.77']",
        "valid_from": "2018-06-15T08:33:15Z",
    }
    malware = {"type": "malware", "id": "malware--5b23c82b-6508-4bdc-b580-045b0a0002a1", "name": "Resolver RAT", "labels": ["trojan"]}
    indicates = {
        "type": "relationship",
        "id": "relationship--5b23c82b-6508-4bdc-b580-045b0a0002a2",
        "relationship_type": "indicates",
        "source_ref": ind["id"],
        "target_ref": malware["id"],
    }
    doc = {
        "type": "bundle",
        "id": "bundle--5b23c82b-6508-4bdc-b580-045b0a0002a3",
        "spec_version": "2.0",
        "objects": [ind, malware, indicates],
    }
    response = api.import_("stix", doc)
    assert response.status_code == 200, response.get_json()
    assert response.get_json()["relations"] == 1 and response.get_json()["warnings"] == []
    relations = db.scalar(
        "SELECT string_agg(s.value || ' ' || r.type || ' ' || t.value, ', ') FROM ioc_relations r"
        " JOIN iocs s ON s.id = r.source_id JOIN iocs t ON t.id = r.target_id"
        " WHERE s.value IN ('resolves.example.org', '198.51.100.77') OR t.value IN ('resolves.example.org', '198.51.100.77')"
    )
    assert relations == "resolves.example.org resolves-to 198.51.100.77"
    linked = db.scalar(
        "SELECT string_agg(i.value, ', ' ORDER BY i.value) FROM threat_iocs l JOIN threats t ON t.id = l.threat_id"
        " JOIN iocs i ON i.id = l.ioc_id WHERE t.name = 'Resolver RAT'"
    )
    assert linked == "198.51.100.77, resolves.example.org"


THREAT_TYPES = ("malware", "threat-actor", "intrusion-set", "campaign", "tool")


def test_a_stix_reports_relationships_between_threats_are_kept_and_exported(api, db):
    """OASIS's APT1 report: its intrusion set is attributed-to three threat actors, who use four malware. Those
    seven relationships between threats were counted in `skipped` and lost; they are stored by their own verb,
    once however often the report is imported, and an export gives those between the threats it exports."""
    import stix2

    source = json.loads(require_shared_data("stix", "oasis-examples", "threat-reports", "apt1.json").read_text())
    objects = {o["id"]: o for o in source["objects"]}

    def between_threats(rel):
        ends = (objects.get(rel.get("source_ref"), {}), objects.get(rel.get("target_ref"), {}))
        return rel["type"] == "relationship" and all(end.get("type") in THREAT_TYPES for end in ends)

    wanted = [r for r in objects.values() if between_threats(r)]
    assert len(wanted) == 7

    first = api.import_("stix", source).get_json()
    assert (first["threat_relations"], first["threat_relations_created"], first["threat_relations_cut"]) == (7, 7, 0)
    to_identities = sum(1 for r in objects.values() if r["type"] == "relationship" and r["target_ref"].startswith("identity--"))
    assert first["skipped"].get("relationship:attributed-to") == to_identities and "relationship:uses" not in first["skipped"]
    id_of = {t["ref"]: t["id"] for t in first["threats"]["results"]}  # two actors may merge into one threat by alias
    expected = {f"{id_of[r['source_ref']]}|{r['relationship_type']}|{id_of[r['target_ref']]}" for r in wanted}
    stored_sql = "SELECT string_agg(source_id || '|' || type || '|' || target_id, ',') FROM threat_relations"
    assert set(db.scalar(stored_sql).split(",")) == expected
    again = api.import_("stix", source).get_json()
    assert (again["threat_relations"], again["threat_relations_created"]) == (7, 0)
    assert db.scalar("SELECT count(*) FROM threat_relations") == len(expected)

    bundle = stix2.parse(api.get("/api/v1/iocs/export?format=stix&max_tlp=red&limit=1000").data.decode(), allow_custom=False)
    by_id = {o.id: o for o in bundle.objects}
    name_of = {i: db.scalar("SELECT name FROM threats WHERE id = :i", i=i) for i in id_of.values()}
    exported_threats = {o.name for o in bundle.objects if o.type in THREAT_TYPES}
    exported = {
        (by_id[o.source_ref].name, o.relationship_type, by_id[o.target_ref].name)
        for o in bundle.objects
        if o.type == "relationship" and by_id[o.source_ref].type in THREAT_TYPES and by_id[o.target_ref].type in THREAT_TYPES
    }
    stored = {(name_of[int(e.split("|")[0])], e.split("|")[1], name_of[int(e.split("|")[2])]) for e in expected}
    assert exported == {e for e in stored if e[0] in exported_threats and e[2] in exported_threats}
    # (APT1's indicators reach two threats that no relation joins: the next test exports relations)


def _sdo(kind, n, **fields):
    stamp = "2020-01-01T00:00:00Z"
    return {
        "type": kind,
        "spec_version": "2.1",
        "id": f"{kind}--1b2d9a4e-7f7c-4a55-9e53-0b3b1c2f0a{n:02d}",
        "created": stamp,
        "modified": stamp,
        **fields,
    }


def test_a_relationship_between_threats_with_an_untidy_verb_is_kept_as_related_to(api, db):
    """A verb that is no tidy word is kept as related-to, with a warning; an export of an IoC indicating both threats
    gives both relations, and importing that export makes none anew."""
    import stix2

    loader = _sdo("malware", 1, name="Verb Loader", is_family=True)
    payload = _sdo("malware", 2, name="Verb Payload", is_family=True)
    indicator = _sdo(
        "indicator", 3, pattern_type="stix", pattern="[domain-name:value = 'verb-loader.example.net']", valid_from="2020-01-01T00:00:00Z"
    )
    untidy = _sdo("relationship", 4, relationship_type="Loads Into Memory!", source_ref=loader["id"], target_ref=payload["id"])
    objects = [
        loader,
        payload,
        indicator,
        untidy,
        _sdo("relationship", 5, relationship_type="variant-of", source_ref=payload["id"], target_ref=loader["id"]),
        _sdo("relationship", 6, relationship_type="indicates", source_ref=indicator["id"], target_ref=loader["id"]),
        _sdo("relationship", 7, relationship_type="indicates", source_ref=indicator["id"], target_ref=payload["id"]),
    ]
    result = api.import_("stix", {"type": "bundle", "id": "bundle--6f7e3c52-8f43-4bfc-9d0c-5d0d8a3c9b10", "objects": objects}).get_json()
    assert result["threat_relations"] == 2
    assert [w["ref"] for w in result["warnings"]] == [untidy["id"]]
    assert "related-to" in result["warnings"][0]["reason"]
    rows = db.scalar(
        # ORDER BY the row itself: inside an aggregate `ORDER BY 1` sorts by the constant 1, so the order was the scan's
        "SELECT string_agg(s.name || '|' || r.type || '|' || t.name, ',' ORDER BY s.name || '|' || r.type || '|' || t.name)"
        " FROM threat_relations r"
        " JOIN threats s ON s.id = r.source_id JOIN threats t ON t.id = r.target_id"
    )
    assert rows == "Verb Loader|related-to|Verb Payload,Verb Payload|variant-of|Verb Loader"

    exported = api.get("/api/v1/iocs/export?format=stix&max_tlp=red&limit=1000")
    by_id = {o.id: o for o in stix2.parse(exported.data.decode(), allow_custom=False).objects}
    assert {
        (by_id[o.source_ref].name, o.relationship_type, by_id[o.target_ref].name)
        for o in by_id.values()
        if o.type == "relationship" and by_id[o.source_ref].type == "malware" and by_id[o.target_ref].type == "malware"
    } == {("Verb Loader", "related-to", "Verb Payload"), ("Verb Payload", "variant-of", "Verb Loader")}
    again = api.import_("stix", json.loads(exported.data)).get_json()
    assert (again["threat_relations"], again["threat_relations_created"]) == (2, 0)


def test_stix_relationship_verbs_spelled_loosely_are_stored_as_their_tidy_word(api, db):
    """`Attributed To` between two threats was stored as related-to with a warning, and `Based On` between a threat
    and an indicator reached the store as written, which refused it, so the whole import failed. They are
    attributed-to and based-on, as the API reads them; a verb no reading makes tidy is related-to with a warning."""
    campaign = _sdo("campaign", 11, name="Loose Campaign")
    actor = _sdo("intrusion-set", 12, name="Loose Set")
    indicator = _sdo(
        "indicator", 13, pattern_type="stix", pattern="[domain-name:value = 'loose-verbs.example.net']", valid_from="2020-01-01T00:00:00Z"
    )
    odd = _sdo("relationship", 17, relationship_type="Loads Into Memory!", source_ref=indicator["id"], target_ref=campaign["id"])
    objects = [
        campaign,
        actor,
        indicator,
        _sdo("relationship", 14, relationship_type="Attributed To", source_ref=campaign["id"], target_ref=actor["id"]),
        _sdo("relationship", 15, relationship_type="Based On", source_ref=actor["id"], target_ref=indicator["id"]),
        _sdo("relationship", 16, relationship_type="Indicates ", source_ref=indicator["id"], target_ref=campaign["id"]),
        odd,
    ]
    response = api.import_("stix", {"type": "bundle", "id": "bundle--6f7e3c52-8f43-4bfc-9d0c-5d0d8a3c9b11", "objects": objects})
    assert response.status_code == 200, response.get_json()
    result = response.get_json()
    assert result["threat_relations_created"] == 1 and [w["ref"] for w in result["warnings"]] == [odd["id"]]
    relations = db.scalar(
        "SELECT string_agg(s.name || '|' || r.type || '|' || t.name, ',') FROM threat_relations r"
        " JOIN threats s ON s.id = r.source_id JOIN threats t ON t.id = r.target_id"
    )
    assert relations == "Loose Campaign|attributed-to|Loose Set"
    links = db.scalar(
        "SELECT string_agg(t.name || '|' || l.relation, ',' ORDER BY t.name, l.relation) FROM threat_iocs l"
        " JOIN threats t ON t.id = l.threat_id JOIN iocs i ON i.id = l.ioc_id WHERE i.value = 'loose-verbs.example.net'"
    )
    assert links == "Loose Campaign|indicates,Loose Campaign|related-to,Loose Set|based-on"


def test_a_redelivery_after_the_import_committed_does_not_apply_it_again(api, db, function_client, import_queue, monkeypatch):
    """The import's transaction commits, then the job's results go to the bucket and its record to Firestore. If
    either fails there, the delivery fails (a 503) and Pub/Sub delivers the job again: it applied the document a
    second time, each IoC sighted twice (detection_count 2, the job's counts wrong). The transaction now records that
    the job was applied; a later delivery finishes the job from that record instead."""
    from threatflow.adapters.storage import GcsBlobs
    from threatflow.platform.errors import DependencyError

    items = [{"value": f"198.18.77.{i}"} for i in range(1, 11)]
    job_id = api.post("/api/v1/iocs/import?async=true", {"format": "json", "content": items}).get_json()["job_id"]
    pulled = import_queue()
    put = GcsBlobs.put

    def results_lost(self, bucket, name, data, **kwargs):
        if name.endswith(".result.json"):
            raise DependencyError("Cloud Storage is unavailable (test)")
        return put(self, bucket, name, data, **kwargs)

    monkeypatch.setattr(GcsBlobs, "put", results_lost)
    worker = function_client("ioc-import", ATTACK_DATA_PATH=str(ATTACK))
    assert worker.post("/", json=_push(pulled)).status_code >= 500  # retried by Pub/Sub
    assert db.scalar("SELECT max(detection_count) FROM iocs WHERE value LIKE '198.18.77.%'") == 1
    monkeypatch.setattr(GcsBlobs, "put", put)

    assert worker.post("/", json=_push(pulled)).status_code == 200
    job = api.get(f"/api/v1/iocs/import/{job_id}").get_json()
    assert job["state"] == "succeeded", job
    assert job["result"]["iocs"]["summary"]["created"] == 10
    assert db.scalar("SELECT max(detection_count) FROM iocs WHERE value LIKE '198.18.77.%'") == 1
    assert db.scalar("SELECT count(*) FROM iocs WHERE value LIKE '198.18.77.%'") == 10


@pytest.mark.parametrize(
    ("body", "field"),
    [
        (b'{"format": "json", "content": [{"value": "198.18.9.60", "description": "\xff"}]}', "body"),
        (b'{"format": "\xffjson", "content": [{"value": "198.18.9.61"}]}', "body"),
    ],
    ids=["content", "format"],
)
def test_a_body_that_is_not_utf8_is_a_400_and_never_queued(api, db, import_queue, body, field):
    """A JSON string holding bytes that are not UTF-8 (a Latin-1 file pasted as is): msgspec raises UnicodeDecodeError,
    which decode_body let through, so a sync import was a 500; the async route, which leaves content undecoded (msgspec
    skips it unchecked), queued a job that could only fail, and a bad `format` there was a 500 too."""
    from threatflow.adapters.firestore import FirestoreDocuments
    from threatflow.intel.importer import IMPORT_JOBS

    documents = FirestoreDocuments(PROJECT)
    before = len(documents.query(IMPORT_JOBS, where=[("requested_by", "==", "analyst1")], limit=1000))
    for path in ("/api/v1/iocs/import", "/api/v1/iocs/import?async=true"):
        refused = api.post_raw(path, body)
        assert refused.status_code == 400, (path, refused.get_data(as_text=True)[:300])
        error = refused.get_json()["error"]
        assert error["details"] == {"field": field} and "not valid UTF-8" in error["message"], error
    assert len(documents.query(IMPORT_JOBS, where=[("requested_by", "==", "analyst1")], limit=1000)) == before
    assert db.scalar("SELECT count(*) FROM iocs") == 0


def test_an_imports_tags_as_written_are_bounded_before_they_are_walked(api, db, import_queue):
    """`tags` were bounded only once repeats and blanks were dropped (64), so any number of repeats was accepted: 32 MiB
    of `"a",` (8 million tags, one once cleaned) peaked at 1.6 GB in the iocs function checking an async envelope (the
    decode, then check_json's walk building a path for each) and was queued; 5 MB sync, 251 MB. Past 1,024 tags as
    written it is a 400 naming tags, sync and async alike, and nothing is queued."""
    from threatflow.adapters.firestore import FirestoreDocuments
    from threatflow.intel.importer import IMPORT_JOBS

    documents = FirestoreDocuments(PROJECT)
    before = len(documents.query(IMPORT_JOBS, where=[("requested_by", "==", "analyst1")], limit=1000))
    body = {"format": "json", "content": [{"value": "198.18.9.70"}], "tags": ["a"] * 1025}
    sync = api.post("/api/v1/iocs/import", body)
    queued = api.post("/api/v1/iocs/import?async=true", body)
    assert sync.status_code == 400 and sync.get_json()["error"]["details"] == {"field": "tags"}, sync.get_json()
    assert "1,024 tags as written" in sync.get_json()["error"]["message"], sync.get_json()
    assert queued.status_code == 400 and queued.get_json()["error"] == sync.get_json()["error"], queued.get_data(as_text=True)[:300]
    padded = {**body, "tags": ["a" * 1100] * 1000}  # over 1 MiB as written: refused by the envelope before it is decoded
    queued = api.post("/api/v1/iocs/import?async=true", padded)
    assert queued.status_code == 400 and queued.get_json()["error"]["details"] == {"field": "tags"}, queued.get_data(as_text=True)[:300]
    assert len(documents.query(IMPORT_JOBS, where=[("requested_by", "==", "analyst1")], limit=1000)) == before
    repeated = api.post("/api/v1/iocs/import", {**body, "tags": [" A ", "a", ""] * 300})  # 900 as written, one cleaned
    assert repeated.status_code == 200 and repeated.get_json()["iocs"]["summary"]["created"] == 1, repeated.get_json()
    assert db.scalar("SELECT tags FROM iocs") == ["a"]


def test_an_async_import_reads_its_format_as_a_sync_import_does(api, db, function_client, import_queue):
    """A sync import reads `format` stripped and in any case (" JSON\\n"), and names the formats when it knows none; the
    async route did not strip it, so the body a sync import took was a 400 there, and an unknown format's words differed."""
    content = [{"value": "198.18.9.80"}]
    assert api.import_(" JSON\n", content).status_code == 200
    queued = api.post("/api/v1/iocs/import?async=true", {"format": " JSON\n", "content": content})
    assert queued.status_code == 202, queued.get_data(as_text=True)[:300]
    assert api.get(f"/api/v1/iocs/import/{queued.get_json()['job_id']}").get_json()["format"] == "json"
    assert function_client("ioc-import").post("/", json=_push(import_queue())).status_code == 200
    assert api.get(f"/api/v1/iocs/import/{queued.get_json()['job_id']}").get_json()["state"] == "succeeded"
    sync = api.import_("yaml", content)
    refused = api.post("/api/v1/iocs/import?async=true", {"format": "yaml", "content": content})
    assert sync.status_code == refused.status_code == 400 and refused.get_json()["error"] == sync.get_json()["error"], refused.get_json()


@pytest.mark.parametrize(
    ("fmt", "content"),
    [("csv", [{"value": "198.18.9.90"}]), ("text", {"iocs": []}), ("json", 0), ("stix", False), ("misp", 1.5), ("text", True)],
    ids=["csv-list", "text-object", "json-number", "stix-false", "misp-float", "text-true"],
)
def test_an_async_import_refuses_content_its_format_can_never_read(api, import_queue, fmt, content):
    """Content whose JSON kind alone its format refuses (CSV or text that is no string; a number, true or false in any
    format) is the sync import's 400 at queue time: the async route, which leaves content undecoded, queued a job that
    could only fail."""
    from threatflow.adapters.firestore import FirestoreDocuments
    from threatflow.intel.importer import IMPORT_JOBS

    documents = FirestoreDocuments(PROJECT)
    before = len(documents.query(IMPORT_JOBS, where=[("requested_by", "==", "analyst1")], limit=1000))
    sync = api.import_(fmt, content)
    queued = api.post("/api/v1/iocs/import?async=true", {"format": fmt, "content": content})
    assert sync.status_code == 400, sync.get_json()
    assert queued.status_code == 400 and queued.get_json()["error"] == sync.get_json()["error"], queued.get_data(as_text=True)[:300]
    assert len(documents.query(IMPORT_JOBS, where=[("requested_by", "==", "analyst1")], limit=1000)) == before


@pytest.mark.parametrize("field", ["format", "tlp"])
def test_a_long_unknown_format_or_tlp_is_refused_without_being_echoed_whole(api, field):
    """An unknown format or TLP was echoed whole in its 400 (`{text!r}`): a 32 MiB async request of one answered 32 MiB
    (more for control characters, which repr spells out), 1 MB here; the words now quote its first 64 characters."""
    body = {"format": "json", "content": [{"value": "198.18.9.95"}], field: "q" * 1_000_000}
    for path in ("/api/v1/iocs/import", "/api/v1/iocs/import?async=true"):
        refused = api.post(path, body)
        assert refused.status_code == 400 and refused.get_json()["error"]["details"] == {"field": field}, refused.get_data()[:300]
        assert len(refused.get_data()) < 1000, (path, len(refused.get_data()))


def test_json_containers_opened_by_escapes_in_a_string_content_count_towards_the_bound(api, monkeypatch):
    """A document sent as a JSON string (what the CLI sends) is parsed again by its format, so `\\u007b}` in it opens an
    object the byte count missed: 32 MiB of them is 4.2 million objects, twice MAX_DOCUMENT_CONTAINERS, decoded in
    ioc-import at a peak of 339 MB before the item bound refused them. The escapes count (scaled down to 50 here)."""
    from threatflow.intel.formats import base

    monkeypatch.setattr(base, "MAX_DOCUMENT_CONTAINERS", 50, raising=False)
    content = "\\u005B" + "\\u007b}," * 59 + "\\u007B}]"
    for path in ("/api/v1/iocs/import", "/api/v1/iocs/import?async=true"):
        refused = api.post_raw(path, f'{{"format": "json", "content": "{content}"}}')
        assert refused.status_code == 400, refused.get_data(as_text=True)[:300]
        assert "more than 50 JSON objects and arrays" in refused.get_json()["error"]["message"], refused.get_json()
