"""A threat and an IoC are linked by at most MAX_RELATIONS_PER_LINK (8) relations. A link's relation is a free verb
(`indicates`, `uses`, ... any lower-case word), one row of threat_iocs per (threat, IoC, verb), so every new verb a
link, an import (STIX relationship types) or a script named added a row for the same pair without limit, and a
threat's answer counted its links per verb (`ioc_count_by_relation`) with one key per distinct verb. What a write
could not keep is said (`relations_full` per IoC, an import's `links_cut`), and the answers show at most 64 verbs.

How many IoCs a threat links, and how many IoCs an IoC relates to, is not bounded per record: those are distinct
records (a family can be indicated by 100,000 addresses); every read of them is bounded instead (README)."""

import threading
import uuid

import pytest
from helpers import IntelApi, SqlDb

pytestmark = pytest.mark.integration


@pytest.fixture
def api(function_client, backend_env):
    return IntelApi(function_client, backend_env["DATABASE_URL"], ("analyst", "reader"))


class Db(SqlDb):
    def relations(self, threat_id, ioc_id):
        rows = self.one(
            "SELECT COALESCE(array_agg(relation ORDER BY relation), '{}') FROM threat_iocs WHERE threat_id = %s AND ioc_id = %s",
            threat_id,
            ioc_id,
        )
        return list(rows[0])


def _made(api, value, name):
    ioc = api.post("/api/v1/iocs/batch", {"iocs": [{"value": value}]}).get_json()["results"][0]["id"]
    threat = api.post("/api/v1/threats/batch", {"threats": [{"kind": "malware", "name": name}]}).get_json()["results"][0]["id"]
    return threat, ioc


VERBS = [f"verb-{i}" for i in range(10)]


def test_a_threat_and_an_ioc_are_linked_by_at_most_8_relations(api, db):
    threat, ioc = _made(api, "linked.bound-test.com", "LinkBound")
    for verb in VERBS[:8]:
        body = api.post(f"/api/v1/threats/{threat}/link", {"ioc_ids": [ioc], "relation": verb}).get_json()
        assert body["results"][0]["status"] == "linked", body
    full = api.post(f"/api/v1/threats/{threat}/link", {"ioc_ids": [ioc], "relation": VERBS[8]})
    assert full.status_code == 200 and full.get_json()["results"][0]["status"] == "relations_full", full.get_json()
    assert full.get_json()["summary"].get("relations_full") == 1, full.get_json()
    again = api.post(f"/api/v1/threats/{threat}/link", {"ioc_ids": [ioc], "relation": VERBS[3], "confidence": 90}).get_json()
    assert again["results"][0]["status"] == "already_linked", again  # a relation it holds: still raised
    assert db.relations(threat, ioc) == sorted(VERBS[:8])
    assert db.one("SELECT confidence FROM threat_iocs WHERE threat_id = %s AND relation = %s", threat, VERBS[3])[0] == 90


def test_an_import_links_a_pair_no_further_than_the_bound(api, db):
    threat, ioc = _made(api, "198.51.102.7", "ImportBound")
    for verb in VERBS[:8]:
        db.execute("INSERT INTO threat_iocs (threat_id, ioc_id, relation) VALUES (%s, %s, %s)", threat, ioc, verb)
    stamp = {"spec_version": "2.1", "created": "2026-01-01T00:00:00Z", "modified": "2026-01-01T00:00:00Z"}
    indicator = {
        "type": "indicator", "id": f"indicator--{uuid.uuid4()}", "pattern": "[ipv4-addr:value = '198.51.102.7']",
        "pattern_type": "stix", "valid_from": "2026-01-01T00:00:00Z", **stamp,
    }  # fmt: skip
    malware = {"type": "malware", "id": f"malware--{uuid.uuid4()}", "name": "ImportBound", "is_family": True, **stamp}
    rel = {
        "type": "relationship", "id": f"relationship--{uuid.uuid4()}", "relationship_type": "indicates",
        "source_ref": indicator["id"], "target_ref": malware["id"], **stamp,
    }  # fmt: skip
    bundle = {"type": "bundle", "id": f"bundle--{uuid.uuid4()}", "objects": [indicator, malware, rel]}
    response = api.post("/api/v1/iocs/import", {"format": "stix", "content": bundle})
    assert response.status_code == 200, response.get_data(as_text=True)[:300]
    body = response.get_json()
    assert body["links_cut"] == 1 and body["links_created"] == 0, body
    assert any(e["ref"] == "links" and "8 relations" in e["reason"] for e in body["errors"]), body["errors"]
    assert db.relations(threat, ioc) == sorted(VERBS[:8])


def test_a_threats_answers_show_at_most_64_relation_verbs(api, db):
    threat, _ = _made(api, "first.verbs-test.com", "ManyVerbs")
    values = [f"v{i}.verbs-test.com" for i in range(70)]
    ids = [r["id"] for r in api.post("/api/v1/iocs/batch", {"iocs": [{"value": v} for v in values]}).get_json()["results"]]
    for i, ioc in enumerate(ids):  # 70 verbs, one IoC each
        db.execute("INSERT INTO threat_iocs (threat_id, ioc_id, relation) VALUES (%s, %s, %s)", threat, ioc, f"verb-{i:03d}")
    shown = api.get(f"/api/v1/threats/{threat}").get_json()
    assert shown["ioc_count"] == 70 and len(shown["ioc_count_by_relation"]) == 64, shown
    assert shown["ioc_count_by_relation_truncated"] is True
    stats = api.get("/api/v1/threats/stats").get_json()
    assert len(stats["links"]["by_relation"]) == 64 and stats["links"]["by_relation_truncated"] is True, stats["links"]


def test_concurrent_links_of_one_pair_keep_the_bound(api, db, backend_env):
    """Two writers adding a verb each to a pair holding 7: the second waits for the first (the threat's row lock),
    then sees 8 and links nothing."""
    from threatflow.adapters.postgres import create_engine
    from threatflow.intel import repository
    from threatflow.platform.config import Settings

    threat, ioc = _made(api, "raced.verbs-test.com", "RacedVerbs")
    for verb in VERBS[:7]:
        db.execute("INSERT INTO threat_iocs (threat_id, ioc_id, relation) VALUES (%s, %s, %s)", threat, ioc, verb)
    engine = create_engine(Settings.from_env({"DATABASE_URL": backend_env["DATABASE_URL"]}))
    outcome = {}
    try:
        with engine.begin() as conn:
            outcome["first"] = repository.link_iocs(conn, threat_id=threat, ioc_ids=[ioc], relation=VERBS[7])

            def other():
                with engine.begin() as other_conn:
                    outcome["second"] = repository.link_iocs(other_conn, threat_id=threat, ioc_ids=[ioc], relation=VERBS[8])

            racer = threading.Thread(target=other)
            racer.start()
            racer.join(0.5)  # it waits for this transaction (no timing is asserted: only what each wrote)
        racer.join()
    finally:
        engine.dispose()
    assert outcome["first"].new == {ioc} and outcome["second"].new == set() and outcome["second"].full == {ioc}, outcome
    assert db.relations(threat, ioc) == sorted(VERBS[:8])
