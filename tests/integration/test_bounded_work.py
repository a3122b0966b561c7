"""The work one read can make the server do is bounded by the request, not by the store.

Each test builds a "hub" straight in PostgreSQL (one IoC linked to more threats than a page
holds, more IoCs carrying a threat's name than correlation reads), then checks the answer
by counts: rows returned, rows read, a flag that says more exists, or a 400 naming the limit.
"""

import json

import pg8000.native
import pytest
from helpers import IntelApi, require_shared_data

pytestmark = pytest.mark.integration


def _sql(url):
    port = int(url.rsplit(":", 1)[1].split("/")[0])
    return pg8000.native.Connection("postgres", host="127.0.0.1", port=port, database=url.rsplit("/", 1)[1])


@pytest.fixture
def api(function_client, backend_env, monkeypatch):
    monkeypatch.setenv("ATTACK_DATA_PATH", str(require_shared_data("attack", "attack_techniques.json")))
    api = IntelApi(function_client, backend_env["DATABASE_URL"], ("analyst", "reader"))
    api.db = _sql(backend_env["DATABASE_URL"])
    yield api
    api.db.close()


THREATS_LIMIT = 500  # threats one IoC's reads show (by-ioc, related), as README says


def _iocs(db, count, *, tags=("misc",), prefix="host"):
    """count amber domains host<n>.example.com with tags, straight into the table; their ids, ascending."""
    rows = db.run(
        "INSERT INTO iocs (type, value, tags, sources, tlp, confidence, verdict, base_score, score, severity,"
        " first_seen, last_seen, last_seen_day, detection_count, expires_at, active)"
        " SELECT 'domain', :p || g || '.example.com', CAST(:t AS text[]), ARRAY['test'], 'amber', 50, 'unknown', 50, 50,"
        " 'medium', now(), now(), current_date, 1, now() + interval '30 days', true FROM generate_series(1, :n) g RETURNING id",
        p=prefix,
        t=list(tags),
        n=count,
    )
    return sorted(r[0] for r in rows)


def _hub_linked_to_threats(db, count):
    """One IoC linked to count threats; its id."""
    (hub,) = _iocs(db, 1, prefix="hub")
    db.run("INSERT INTO threats (kind, name) SELECT 'malware', 'family-' || g FROM generate_series(1, :n) g", n=count)
    db.run("INSERT INTO threat_iocs (threat_id, ioc_id, confidence) SELECT id, :i, mod(id, 100) FROM threats", i=hub)
    return hub


def test_threats_of_a_hub_ioc_are_a_bounded_list_that_says_more_exist(api):
    hub = _hub_linked_to_threats(api.db, THREATS_LIMIT + 1)
    by_ioc = api.get(f"/api/v1/threats/by-ioc/{hub}")
    assert by_ioc.status_code == 200, by_ioc.get_json()
    body = by_ioc.get_json()
    assert len(body["threats"]) == THREATS_LIMIT and body["count"] == THREATS_LIMIT and body["truncated"] is True
    assert [t["confidence"] for t in body["threats"]] == sorted((t["confidence"] for t in body["threats"]), reverse=True)
    related = api.get(f"/api/v1/iocs/{hub}/related").get_json()
    assert len(related["threats"]) == THREATS_LIMIT and related["threats_truncated"] is True
    # At the limit nothing is cut.
    api.db.run("DELETE FROM threat_iocs WHERE threat_id = (SELECT max(threat_id) FROM threat_iocs)")
    body = api.get(f"/api/v1/threats/by-ioc/{hub}").get_json()
    assert body["count"] == THREATS_LIMIT and body["truncated"] is False
    assert api.get(f"/api/v1/iocs/{hub}/related").get_json()["threats_truncated"] is False


def test_a_stix_export_is_bounded_where_building_it_costs_a_millisecond_an_indicator(api):
    """stix2 validates each indicator's pattern with its ANTLR parser: ~0.7 ms an IoC here, so the
    documented 100,000 made a request of ~85 s and a bundle of 55 MB held as objects in memory."""
    _iocs(api.db, 3)
    over = api.get("/api/v1/iocs/export?format=stix&limit=10001")
    assert over.status_code == 400, over.data[:200]
    error = over.get_json()["error"]
    assert error["details"]["field"] == "limit" and "10000" in error["message"] and "csv" in error["message"]
    at = api.get("/api/v1/iocs/export?format=stix&limit=10000")
    assert at.status_code == 200 and at.headers["X-Export-Count"] == "3"
    assert api.get("/api/v1/iocs/export?limit=10001").status_code == 400  # stix is the default format
    for fmt in ("csv", "txt"):  # cheap to build: the 100,000 stays
        response = api.get(f"/api/v1/iocs/export?format={fmt}&limit=100000")
        assert response.status_code == 200 and response.headers["X-Export-Count"] == "3"


CORRELATE_READ_LIMIT = 10_000  # IoCs correlation reads from each kind of signal, as README says


def test_correlation_reads_a_bounded_number_of_iocs_and_says_when_it_stopped(api):
    """A threat whose name is a tag on much of the store: every tagged IoC was read, scored in Python
    and sorted to keep the top `limit` (200,000 took 6 s on the threats function's 256 MiB)."""
    (threat_id,) = (r[0] for r in api.db.run("INSERT INTO threats (kind, name) VALUES ('malware', 'Emotet') RETURNING id"))
    ids = _iocs(api.db, CORRELATE_READ_LIMIT + 1, tags=("emotet",))
    response = api.post("/api/v1/threats/correlate", {"threat_id": threat_id, "link": False, "limit": 5})
    assert response.status_code == 200, response.get_json()
    body = response.get_json()
    assert body["truncated"] is True and body["read"]["tags"] == CORRELATE_READ_LIMIT
    assert [c["ioc_id"] for c in body["candidates"]] == ids[::-1][:5]  # the newest first, as the read keeps them
    # At the limit nothing is cut.
    api.db.run("DELETE FROM iocs WHERE id = :i", i=ids[0])
    body = api.post("/api/v1/threats/correlate", {"threat_id": threat_id, "link": False, "limit": 5}).get_json()
    assert body["truncated"] is False and body["read"]["tags"] == CORRELATE_READ_LIMIT


STIX_LINKS_PER_IOC = 32  # threats a STIX export relates to one IoC, as README says
STIX_LINKS_LIMIT = 10_000  # IoC-to-threat relationships in one bundle


def _stix_objects(response):
    assert response.status_code == 200, response.data[:300]
    objects = json.loads(response.data)["objects"]
    return [o for o in objects if o["type"] == "malware"], [o for o in objects if o["type"] == "relationship"]


def test_a_stix_export_of_one_hub_ioc_carries_a_bounded_number_of_its_threats(api):
    """limit=1 on an IoC linked to 501 threats built 501 threat objects and 501 relationships
    (30,000 links: 60,000 objects for one IoC)."""
    hub = _hub_linked_to_threats(api.db, 501)
    response = api.get(f"/api/v1/iocs/export?format=stix&ids={hub}&limit=1")
    threats, relationships = _stix_objects(response)
    assert len(threats) == STIX_LINKS_PER_IOC and len(relationships) == STIX_LINKS_PER_IOC
    assert response.headers["X-Export-Links-Truncated"] == "true"
    strongest = sorted((r[0] for r in api.db.run("SELECT confidence FROM threat_iocs")), reverse=True)[:STIX_LINKS_PER_IOC]
    confidence = {r[0]: r[1] for r in api.db.run("SELECT t.name, l.confidence FROM threats t JOIN threat_iocs l ON l.threat_id = t.id")}
    assert sorted((confidence[t["name"]] for t in threats), reverse=True) == strongest
    # An IoC with fewer links keeps them all, and nothing says otherwise.
    api.db.run("DELETE FROM threat_iocs WHERE threat_id > :n", n=STIX_LINKS_PER_IOC)
    response = api.get(f"/api/v1/iocs/export?format=stix&ids={hub}&limit=1")
    assert len(_stix_objects(response)[0]) == STIX_LINKS_PER_IOC and response.headers["X-Export-Links-Truncated"] == "false"


def test_a_stix_export_carries_a_bounded_number_of_links_in_all(api):
    ids = _iocs(api.db, STIX_LINKS_LIMIT // STIX_LINKS_PER_IOC + 1)
    api.db.run("INSERT INTO threats (kind, name) SELECT 'malware', 'family-' || g FROM generate_series(1, :n) g", n=STIX_LINKS_PER_IOC)
    api.db.run("INSERT INTO threat_iocs (threat_id, ioc_id) SELECT t.id, i.id FROM threats t, iocs i")
    response = api.get(f"/api/v1/iocs/export?format=stix&limit={len(ids)}")
    threats, relationships = _stix_objects(response)
    assert len(threats) == STIX_LINKS_PER_IOC and len(relationships) == STIX_LINKS_LIMIT
    assert response.headers["X-Export-Count"] == str(len(ids)) and response.headers["X-Export-Links-Truncated"] == "true"


STIX_RELATIONS_LIMIT = 10_000  # IoC-to-IoC relationships in one bundle, as README says


def test_a_stix_export_carries_a_bounded_number_of_ioc_relations(api):
    """Relations accumulate across imports (each import may add 1,000): 150 IoCs related pairwise
    (22,350 relations, 1.3 MB of input over 23 imports) made a bundle of 22,350 relationships, and
    every relation of every exported IoC was read into the function, exported at the other end or not."""
    ids = _iocs(api.db, 150)
    api.db.run(
        "INSERT INTO ioc_relations (source_id, target_id, type, confidence)"
        " SELECT a, b, 'related-to', mod(a + b, 100) FROM unnest(CAST(:i AS bigint[])) a, unnest(CAST(:i AS bigint[])) b WHERE a <> b",
        i=ids,
    )
    response = api.get(f"/api/v1/iocs/export?format=stix&limit={len(ids)}")
    _, relationships = _stix_objects(response)
    assert len(relationships) == STIX_RELATIONS_LIMIT and response.headers["X-Export-Links-Truncated"] == "true"
    # the strongest relations are the ones kept
    value_of = {o["id"]: o["name"] for o in json.loads(response.data)["objects"] if o["type"] == "indicator"}
    confidence = {
        (r[0], r[1]): r[2]
        for r in api.db.run(
            "SELECT s.value, t.value, r.confidence FROM ioc_relations r JOIN iocs s ON s.id = r.source_id JOIN iocs t ON t.id = r.target_id"
        )
    }
    kept = sorted((confidence[(value_of[r["source_ref"]], value_of[r["target_ref"]])] for r in relationships), reverse=True)
    assert kept == sorted(confidence.values(), reverse=True)[:STIX_RELATIONS_LIMIT]
    # Relations to IoCs left out of the export are never in it, and a bundle within the bound is whole.
    some = ids[-10:]
    response = api.get(f"/api/v1/iocs/export?format=stix&ids={','.join(map(str, some))}&limit=10")
    _, relationships = _stix_objects(response)
    assert len(relationships) == 90 and response.headers["X-Export-Links-Truncated"] == "false"


RELATED_TAGS_LIMIT = 64  # an IoC's tags /related compares with other IoCs' (MAX_TAGS), as README says


def test_related_compares_a_bounded_number_of_an_iocs_tags(api):
    """Tags are unioned on every sighting, so one IoC can hold any number: 300 items of one value with
    64 tags each (a 1.2 MB batch) stored 19,200, and /related counted and intersected every one of them
    against the store (100 s on 120,000 IoCs). It now compares the first 64 (in order) and says so."""
    tags = [f"tag-{i:03d}" for i in range(RELATED_TAGS_LIMIT + 1)]
    (hub,) = _iocs(api.db, 1, tags=tags, prefix="hub")
    (first,) = _iocs(api.db, 1, tags=tags[:1], prefix="first")
    (last,) = _iocs(api.db, 1, tags=tags[-1:], prefix="last")
    body = api.get(f"/api/v1/iocs/{hub}/related").get_json()
    assert [s["ioc"]["id"] for s in body["shared_evidence"]] == [first]  # the 65th tag was not compared
    assert body["tags_truncated"] is True
    api.db.run("UPDATE iocs SET tags = array_remove(tags, 'tag-000') WHERE id = :i", i=hub)  # 64 tags: all compared
    body = api.get(f"/api/v1/iocs/{hub}/related").get_json()
    assert body["tags_truncated"] is False and [s["ioc"]["id"] for s in body["shared_evidence"]] == [last]


FILTER_TAGS_LIMIT = 64  # tags / tags_any values in an IoC filter (MAX_TAGS), as README says
FILTER_IDS_LIMIT = 10_000  # ids in an IoC filter, as DELETE's


@pytest.mark.parametrize(("field", "limit"), [("tags", FILTER_TAGS_LIMIT), ("tags_any", FILTER_TAGS_LIMIT), ("ids", FILTER_IDS_LIMIT)])
def test_an_ioc_filters_lists_are_bounded(api, field, limit):
    """tags_any of 10,000 tags (100 KB) took 21 s on 200,000 IoCs, each row's overlap test comparing
    it against the whole list; 100,000 (1 MB) ran past the 60 s socket timeout, a 500 while the
    query went on in PostgreSQL. Every list of a filter now has a bound, a 400 naming the field."""
    _iocs(api.db, 2)

    def values(n):
        return list(range(1, n + 1)) if field == "ids" else [f"tag-{i}" for i in range(n)]

    over = api.post("/api/v1/iocs/find", {field: values(limit + 1)}, headers=api.reader)
    assert over.status_code == 400, over.get_json()
    assert over.get_json()["error"]["details"]["field"] == field and str(limit) in over.get_json()["error"]["message"]
    assert api.post("/api/v1/iocs/find", {field: values(limit)}, headers=api.reader).status_code == 200
    query = ",".join(str(v) for v in values(limit + 1))
    exported = api.get(f"/api/v1/iocs/export?format=txt&{field}={query}")
    assert exported.status_code == 400 and exported.get_json()["error"]["details"]["field"] == field
    assert api.get(f"/api/v1/iocs/export?format=txt&{field}={','.join(str(v) for v in values(limit))}").status_code == 200


def _running(db, marker):
    """Statements carrying marker that PostgreSQL is still running (other than this query)."""
    return db.run(
        "SELECT count(*) FROM pg_stat_activity WHERE state = 'active' AND pid <> pg_backend_pid() AND query LIKE :m", m=f"%{marker}%"
    )[0][0]


def test_a_statement_past_the_database_timeout_is_cancelled_in_postgresql_and_is_a_503(clean_tables):
    """pg8000's socket timeout (DB_TIMEOUT_SECONDS) only stops the client: it raised a bare TimeoutError
    (a 500), PostgreSQL went on running the statement (a 1 MB tags_any filter, one per retry), and the
    connection went back to the pool with the answer still to come. PostgreSQL now cancels a statement
    before the client gives up (statement_timeout), which is a 503, and the pool's connections stay usable."""
    import uuid

    from sqlalchemy import text

    from threatflow.adapters.postgres import create_engine, unavailable, unit_of_work
    from threatflow.platform.config import Settings
    from threatflow.platform.errors import DependencyError

    engine = create_engine(Settings.from_env({"DATABASE_URL": clean_tables, "DB_TIMEOUT_SECONDS": "1", "DB_POOL_SIZE": "1"}))
    db = _sql(clean_tables)
    try:
        marker = uuid.uuid4().hex
        with pytest.raises(Exception) as caught, unit_of_work(engine) as conn:
            conn.execute(text(f"SELECT pg_sleep(4) /* {marker} */"))
        assert isinstance(unavailable(caught.value), DependencyError), repr(caught.value)
        assert _running(db, marker) == 0
        with unit_of_work(engine) as conn:
            assert conn.execute(text("SELECT 41 + 1")).scalar_one() == 42
        # A statement that lifted its own timeout still meets the socket's: a 503, and the pool drops that connection.
        marker = uuid.uuid4().hex
        with pytest.raises(Exception) as caught, unit_of_work(engine) as conn:
            conn.execute(text("SET LOCAL statement_timeout = 0"))
            conn.execute(text(f"SELECT pg_sleep(2) /* {marker} */"))
        assert isinstance(unavailable(caught.value), DependencyError), repr(caught.value)
        for _ in range(3):
            with unit_of_work(engine) as conn:
                assert conn.execute(text("SELECT 41 + 1")).scalar_one() == 42
    finally:
        engine.dispose()
        db.close()


IMPORT_LINKS_PER_IOC = 32  # threats one import links to one IoC (MISP's MAX_THREATS_PER_IOC), as README says
IMPORT_LINKS_LIMIT = 10_000  # IoC-to-threat links one import makes


def _stix_hub_bundle(indicators, threats, values=100):
    """indicators indicators of `values` domains each (a pattern's `IN`), each indicating every one of threats malware."""
    import uuid

    stamp = {"spec_version": "2.1", "created": "2024-01-01T00:00:00Z", "modified": "2024-01-01T00:00:00Z"}
    malware = [
        {"type": "malware", "id": f"malware--{uuid.uuid4()}", "name": f"family-{i}", "is_family": True, **stamp} for i in range(threats)
    ]
    objects = list(malware)
    for n in range(indicators):
        listed = ", ".join(f"'i{n}-h{i}.example.com'" for i in range(values))
        indicator = {
            "type": "indicator",
            "id": f"indicator--{uuid.uuid4()}",
            "pattern": f"[domain-name:value IN ({listed})]",
            "pattern_type": "stix",
            "valid_from": "2024-01-01T00:00:00Z",
            **stamp,
        }
        objects.append(indicator)
        objects += [
            {
                "type": "relationship",
                "id": f"relationship--{uuid.uuid4()}",
                "relationship_type": "indicates",
                "source_ref": indicator["id"],
                "target_ref": m["id"],
                **stamp,
            }
            for m in malware
        ]
    return {"type": "bundle", "id": f"bundle--{uuid.uuid4()}", "objects": objects}


class _Statements:
    """Statements any engine of this process sends while the block runs."""

    def __enter__(self):
        from sqlalchemy import event
        from sqlalchemy.engine import Engine

        self.count = 0
        self.texts = []
        event.listen(Engine, "before_cursor_execute", self._seen)
        return self

    def _seen(self, conn, cursor, statement, *args, **kwargs):
        self.count += 1
        self.texts.append(statement)

    def __exit__(self, *exc):
        from sqlalchemy import event
        from sqlalchemy.engine import Engine

        event.remove(Engine, "before_cursor_execute", self._seen)


def test_an_import_links_each_ioc_to_a_bounded_number_of_threats_in_few_statements(api):
    """One STIX indicator of 100 values indicating 300 malware (167 KB) made 30,000 links, three statements
    each (90,008 statements, 47 s); a 5 MB document would make ~900,000."""
    bundle = _stix_hub_bundle(1, IMPORT_LINKS_PER_IOC + 8)
    with _Statements() as statements:
        response = api.post("/api/v1/iocs/import", {"format": "stix", "content": bundle})
    assert response.status_code == 200, response.get_json()
    body = response.get_json()
    assert api.db.run("SELECT count(*) FROM threat_iocs")[0][0] == 100 * IMPORT_LINKS_PER_IOC
    assert body["links"] == 100 * IMPORT_LINKS_PER_IOC and body["links_cut"] == 100 * 8
    assert any(e["ref"] == "links" and str(IMPORT_LINKS_PER_IOC) in e["reason"] for e in body["errors"]), body["errors"]
    assert statements.count < 200, statements.count  # not one (or three) per link
    # Each IoC keeps the threats the document names first.
    first = {m["name"] for m in bundle["objects"] if m["type"] == "malware"}
    linked = {r[0] for r in api.db.run("SELECT DISTINCT t.name FROM threat_iocs l JOIN threats t ON t.id = l.threat_id")}
    assert linked == {f"family-{i}" for i in range(IMPORT_LINKS_PER_IOC)} and linked < first


def test_an_import_makes_a_bounded_number_of_links_in_all(api):
    indicators = IMPORT_LINKS_LIMIT // (100 * IMPORT_LINKS_PER_IOC) + 1  # 4 x 3,200 = 12,800 wanted
    bundle = _stix_hub_bundle(indicators, IMPORT_LINKS_PER_IOC)
    body = api.post("/api/v1/iocs/import", {"format": "stix", "content": bundle}).get_json()
    assert api.db.run("SELECT count(*) FROM threat_iocs")[0][0] == IMPORT_LINKS_LIMIT
    assert body["links"] == IMPORT_LINKS_LIMIT and body["links_cut"] == indicators * 100 * IMPORT_LINKS_PER_IOC - IMPORT_LINKS_LIMIT
    assert any(e["ref"] == "links" and "10000" in e["reason"] for e in body["errors"]), body["errors"]


def test_ioc_stats_are_computed_once_a_minute_per_instance_and_clearance_not_per_request(api):
    """/iocs/stats scans the whole table seven times (by type, verdict, severity, TLP, source, age, totals):
    2.7 s a call on 1,000,000 IoCs, for any reader, as often as the rate limit lets them."""
    _iocs(api.db, 3)
    with _Statements() as first:
        one = api.get("/api/v1/iocs/stats").get_json()
    assert one["total"] == 3 and sum("count(*)" in t for t in first.texts) == 7
    _iocs(api.db, 1, prefix="later")
    with _Statements() as again:
        two = api.get("/api/v1/iocs/stats").get_json()
    assert sum("count(*)" in t for t in again.texts) == 0, again.texts  # answered from the instance's copy
    assert two == one and two["as_of"] == one["as_of"]


def test_merging_one_indicators_items_in_a_batch_is_linear_in_their_tags(api, monkeypatch):
    """Each duplicate item of a batch re-sorted the union of every tag so far: 300 items of one value with
    64 tags each took 1.3 s, 5,000 (3.5 MB) ran past 300 s. Counted here as the elements sorted."""
    import builtins

    from threatflow.iocs import service

    sorted_elements = []

    def counting_sorted(iterable, *args, **kwargs):
        out = builtins.sorted(iterable, *args, **kwargs)
        sorted_elements.append(len(out))
        return out

    monkeypatch.setattr(service, "sorted", counting_sorted, raising=False)
    items = [{"value": "hub.example.com", "tags": [f"t{i}-{j}" for j in range(64)]} for i in range(500)]
    response = api.post("/api/v1/iocs/batch", {"iocs": items})
    assert response.status_code == 200, response.get_json()
    # The first item's tags: an IoC holds at most 64 (test_ioc_tag_bound.py); the rest of the union is counted.
    assert api.db.run("SELECT tags FROM iocs WHERE value = 'hub.example.com'")[0][0] == sorted(f"t0-{j}" for j in range(64))
    assert response.get_json()["summary"]["tags_cut"] == 499 * 64
    assert sum(sorted_elements) <= 4 * 500 * 64, sum(sorted_elements)  # was ~8,000,000: the union re-sorted 499 times
