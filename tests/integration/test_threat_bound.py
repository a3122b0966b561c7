"""A threat holds at most 64 tags (MAX_TAGS, as an IoC) and 256 aliases (MAX_ALIASES, as many as one item may name),
whatever path merges into it: /threats/batch and the imports that make threats (STIX, MISP galaxies). Each merge
unioned the item's tags and aliases into the stored lists without limit, so a family named in many reports (each
adding its own aliases and tags) grew at every write, and every alias is a row of threat_names. What a merge could
not keep is counted (`tags_cut`, `aliases_cut`), as for IoCs: the threat keeps what it holds, then the new ones in
the order they come.

The same for a threat's ATT&CK techniques (at most MAX_TTPS, 512) and references (at most MAX_REFERENCES, 256),
counted in `ttps_cut` / `references_cut`: both were unioned without limit at every merge."""

import json
import threading
import uuid

import pytest
from helpers import IntelApi, SqlDb, require_shared_data

pytestmark = pytest.mark.integration


@pytest.fixture
def api(function_client, backend_env, monkeypatch):
    monkeypatch.setenv("ATTACK_DATA_PATH", str(require_shared_data("attack", "attack_techniques.json")))
    return IntelApi(function_client, backend_env["DATABASE_URL"], ("analyst", "reader"))


class Db(SqlDb):
    def row(self, name):
        tags, aliases = self.one("SELECT tags, aliases FROM threats WHERE name = %s", name)
        return list(tags), list(aliases)

    def ttps_refs(self, name):
        ttps, refs = self.one("SELECT ttps, refs FROM threats WHERE name = %s", name)
        return list(ttps), list(refs)


def _batch(api, *items):
    response = api.post("/api/v1/threats/batch", {"threats": list(items)})
    assert response.status_code == 200, response.get_data(as_text=True)[:300]
    return response.get_json()


TAGS = [f"t{i:02d}" for i in range(64)]
ALIASES = [f"Alias{i:03d}" for i in range(256)]


def test_a_threat_keeps_its_tags_then_the_first_new_ones_and_counts_the_rest(api, db):
    assert _batch(api, {"kind": "malware", "name": "Bounded", "tags": TAGS[:60]})["summary"]["created"] == 1
    body = _batch(api, {"kind": "malware", "name": "Bounded", "tags": [*TAGS[:5], *(f"n{i}" for i in range(10))]})
    assert body["results"][0]["status"] == "updated" and body["results"][0]["tags_cut"] == 6, body
    assert body["summary"]["tags_cut"] == 6
    tags, _ = db.row("Bounded")
    assert sorted(tags) == sorted([*TAGS[:60], "n0", "n1", "n2", "n3"])
    again = _batch(api, {"kind": "malware", "name": "Bounded", "tags": ["zz"]})
    assert again["results"][0]["tags_cut"] == 1 and len(db.row("Bounded")[0]) == 64, again


def test_a_threat_keeps_at_most_256_aliases_and_counts_the_rest(api, db):
    assert _batch(api, {"kind": "threat-actor", "name": "Many", "aliases": ALIASES[:250]})["summary"]["created"] == 1
    body = _batch(api, {"kind": "threat-actor", "name": "Many", "aliases": [f"New{i}" for i in range(10)]})
    assert body["results"][0]["aliases_cut"] == 4 and body["summary"]["aliases_cut"] == 4, body
    _, aliases = db.row("Many")
    assert aliases == [*ALIASES[:250], *(f"New{i}" for i in range(6))]
    found = api.post("/api/v1/threats/find", {"alias": "New9"}, headers=api.reader)  # a cut alias is no name of it
    assert found.status_code == 200 and found.get_json()["threats"] == [], found.get_json()


def test_items_of_one_batch_merging_into_one_threat_are_bounded_together(api, db):
    a, b = [f"a{i:02d}" for i in range(64)], [f"b{i:02d}" for i in range(64)]
    body = _batch(api, {"kind": "tool", "name": "Grouped", "tags": a[:10]}, {"kind": "tool", "name": "grouped", "tags": b})
    assert body["results"][0]["status"] == "created" and body["summary"]["tags_cut"] == 10, body
    assert sorted(db.row("Grouped")[0]) == sorted(a[:10] + b[:54])


def test_a_threat_stored_with_more_than_the_bound_keeps_them_and_takes_no_more(api, db):
    assert _batch(api, {"kind": "malware", "name": "Legacy"})["summary"]["created"] == 1
    many = [f"old{i:03d}" for i in range(100)]
    db.execute("UPDATE threats SET tags = %s WHERE name = 'Legacy'", many)
    body = _batch(api, {"kind": "malware", "name": "Legacy", "tags": ["old000", "new"]})
    assert body["results"][0]["tags_cut"] == 1 and db.row("Legacy")[0] == many, body


def test_a_stix_import_into_a_full_threat_counts_its_aliases_cut(api, db):
    assert _batch(api, {"kind": "malware", "name": "StixFull", "aliases": ALIASES})["summary"]["created"] == 1
    malware = {
        "type": "malware",
        "spec_version": "2.1",
        "id": f"malware--{uuid.uuid4()}",
        "created": "2026-01-01T00:00:00Z",
        "modified": "2026-01-01T00:00:00Z",
        "name": "StixFull",
        "is_family": True,
        "aliases": ["OneMore"],
    }
    bundle = {"type": "bundle", "id": f"bundle--{uuid.uuid4()}", "objects": [malware]}
    response = api.post("/api/v1/iocs/import", {"format": "stix", "content": bundle})
    assert response.status_code == 200, response.get_data(as_text=True)[:300]
    body = response.get_json()
    assert body["threats"]["summary"]["aliases_cut"] == 1 and body["threats"]["results"][0]["aliases_cut"] == 1, body["threats"]
    assert "OneMore" not in db.row("StixFull")[1]


def _techniques(n):
    """n ids the ATT&CK file knows, neither revoked nor deprecated (an item's TTPs are checked against it)."""
    known = json.loads(require_shared_data("attack", "attack_techniques.json").read_text())["techniques"]
    return sorted(t["external_id"] for t in known if not t.get("revoked") and not t.get("deprecated"))[:n]


FAKE_TTPS = [f"T{9000 + i}" for i in range(600)]  # format-valid, set in SQL only
REFS = [{"source_name": "report", "url": f"https://example.org/r/{i}"} for i in range(300)]


def test_a_threat_keeps_at_most_512_ttps_and_256_references_and_counts_the_rest(api, db):
    assert _batch(api, {"kind": "malware", "name": "Techy"})["summary"]["created"] == 1
    db.execute("UPDATE threats SET ttps = %s, refs = %s::jsonb WHERE name = 'Techy'", FAKE_TTPS[:510], json.dumps(REFS[:250]))
    new = _techniques(5)
    body = _batch(api, {"kind": "malware", "name": "Techy", "ttps": new, "references": REFS[245:260]})
    result = body["results"][0]
    assert result["status"] == "updated" and result["ttps_cut"] == 3 and result["references_cut"] == 4, body
    assert body["summary"]["ttps_cut"] == 3 and body["summary"]["references_cut"] == 4, body
    ttps, refs = db.ttps_refs("Techy")
    assert sorted(ttps) == sorted([*FAKE_TTPS[:510], *new[:2]]) and refs == REFS[:256]
    again = _batch(api, {"kind": "malware", "name": "Techy", "ttps": new[4:], "references": REFS[299:]})
    assert again["results"][0]["ttps_cut"] == 1 and again["results"][0]["references_cut"] == 1, again
    assert [len(x) for x in db.ttps_refs("Techy")] == [512, 256]


def test_a_threat_stored_with_more_ttps_and_references_keeps_them_and_takes_no_more(api, db):
    assert _batch(api, {"kind": "tool", "name": "LegacyTtps"})["summary"]["created"] == 1
    db.execute("UPDATE threats SET ttps = %s, refs = %s::jsonb WHERE name = 'LegacyTtps'", FAKE_TTPS, json.dumps(REFS))
    body = _batch(api, {"kind": "tool", "name": "LegacyTtps", "ttps": _techniques(1), "references": [REFS[0], {"source_name": "x"}]})
    assert body["results"][0]["ttps_cut"] == 1 and body["results"][0]["references_cut"] == 1, body
    assert db.ttps_refs("LegacyTtps") == (FAKE_TTPS, REFS)


def test_items_of_one_batch_merging_into_one_threat_bound_their_ttps_and_references_together(api, db):
    refs = [{"source_name": f"feed{i}"} for i in range(256)]
    items = [
        {"kind": "campaign", "name": "GroupedRefs", "references": refs[:200]},
        {"kind": "campaign", "name": "groupedrefs", "references": [{"source_name": "extra"}, *refs[150:]]},
        {"kind": "campaign", "name": "GROUPEDREFS", "references": [{"source_name": f"more{i}"} for i in range(10)]},
    ]
    body = _batch(api, *items)
    assert body["results"][0]["status"] == "created" and body["summary"]["references_cut"] == 11, body
    assert db.ttps_refs("GroupedRefs")[1] == [*refs[:200], {"source_name": "extra"}, *refs[200:255]]


def test_a_stix_import_into_a_full_threat_counts_its_ttps_and_references_cut(api, db):
    assert _batch(api, {"kind": "malware", "name": "StixTechy"})["summary"]["created"] == 1
    db.execute("UPDATE threats SET ttps = %s, refs = %s::jsonb WHERE name = 'StixTechy'", FAKE_TTPS[:512], json.dumps(REFS[:256]))
    technique = _techniques(1)[0]
    stamp = {"spec_version": "2.1", "created": "2026-01-01T00:00:00Z", "modified": "2026-01-01T00:00:00Z"}
    malware = {
        "type": "malware", "id": f"malware--{uuid.uuid4()}", "name": "StixTechy", "is_family": True, **stamp,
        "external_references": [{"source_name": "blog", "url": "https://example.org/new"}],
    }  # fmt: skip
    pattern = {
        "type": "attack-pattern", "id": f"attack-pattern--{uuid.uuid4()}", "name": "x", **stamp,
        "external_references": [{"source_name": "mitre-attack", "external_id": technique}],
    }  # fmt: skip
    uses = {
        "type": "relationship", "id": f"relationship--{uuid.uuid4()}", "relationship_type": "uses",
        "source_ref": malware["id"], "target_ref": pattern["id"], **stamp,
    }  # fmt: skip
    bundle = {"type": "bundle", "id": f"bundle--{uuid.uuid4()}", "objects": [malware, pattern, uses]}
    response = api.post("/api/v1/iocs/import", {"format": "stix", "content": bundle})
    assert response.status_code == 200, response.get_data(as_text=True)[:300]
    threats = response.get_json()["threats"]
    assert threats["summary"]["ttps_cut"] == 1 and threats["summary"]["references_cut"] == 1, threats
    assert threats["results"][0]["ttps_cut"] == 1 and threats["results"][0]["references_cut"] == 1, threats
    assert db.ttps_refs("StixTechy") == (FAKE_TTPS[:512], REFS[:256])


def test_concurrent_merges_into_one_threat_keep_its_ttp_bound(backend_env, db):
    """Two writers merging into one threat at once: the second waits for the first (the upserts' lock and the
    threat's row lock), then sees its TTPs, so the threat ends with 512 and the cut counts add up."""
    from threatflow.adapters.postgres import create_engine
    from threatflow.platform.config import Settings
    from threatflow.threats import repository
    from threatflow.threats.model import ThreatIn, ThreatKind

    engine = create_engine(Settings.from_env({"DATABASE_URL": backend_env["DATABASE_URL"]}))
    readable = ["clear", "green", "amber"]
    try:
        with engine.begin() as conn:
            repository.upsert_threats(conn, [ThreatIn(kind=ThreatKind.TOOL, name="Raced")], catalog=None, readable=readable)
        db.execute("UPDATE threats SET ttps = %s WHERE name = 'Raced'", FAKE_TTPS[:508])
        first, second = FAKE_TTPS[550:554], FAKE_TTPS[560:564]
        results = {}
        with engine.begin() as conn:
            results["first"] = repository.upsert_threats(
                conn, [ThreatIn(kind=ThreatKind.TOOL, name="Raced", ttps=first)], catalog=None, readable=readable
            )[0]

            def other():
                with engine.begin() as other_conn:
                    results["second"] = repository.upsert_threats(
                        other_conn, [ThreatIn(kind=ThreatKind.TOOL, name="Raced", ttps=second)], catalog=None, readable=readable
                    )[0]

            racer = threading.Thread(target=other)
            racer.start()
            racer.join(0.5)  # it waits for this transaction's lock (no timing is asserted: only what each wrote)
        racer.join()
    finally:
        engine.dispose()
    ttps, _ = db.ttps_refs("Raced")
    assert len(ttps) == 512 and results["first"].ttps_cut == 0 and results["second"].ttps_cut == 4, results
    assert sorted(ttps) == sorted([*FAKE_TTPS[:508], *first])


def test_a_merge_into_a_full_threat_above_the_writers_clearance_tells_nothing_of_its_fullness(api, db):
    """As tags_cut for an IoC or threat above the clearance: the amber writer's item merges (what fits) and is
    answered `updated`, no cut count in its result or the summary, which would tell how full the red threat is."""
    assert _batch(api, {"kind": "malware", "name": "RedFull"})["summary"]["created"] == 1
    db.execute(
        "UPDATE threats SET tlp = 'red', ttps = %s, refs = %s::jsonb WHERE name = 'RedFull'", FAKE_TTPS[:512], json.dumps(REFS[:256])
    )
    body = _batch(api, {"kind": "malware", "name": "RedFull", "ttps": _techniques(2), "references": [{"source_name": "probe"}]})
    assert body["results"] == [{"index": 0, "status": "updated"}], body
    assert body["summary"]["ttps_cut"] == 0 and body["summary"]["references_cut"] == 0, body
    assert db.ttps_refs("RedFull") == (FAKE_TTPS[:512], REFS[:256])


def test_a_new_stix_threat_using_more_than_the_bound_is_stored_cut_not_refused(api, db):
    """A STIX malware with 520 `uses` of attack patterns and 300 external references: stored with the first 512
    TTPs and 256 references, the rest counted, as a batch item's are (not refused as an item)."""
    techniques = _techniques(520)
    assert len(techniques) == 520, "the ATT&CK file knows fewer techniques than this test needs"
    stamp = {"spec_version": "2.1", "created": "2026-01-01T00:00:00Z", "modified": "2026-01-01T00:00:00Z"}
    malware = {"type": "malware", "id": f"malware--{uuid.uuid4()}", "name": "StixHoarder", "is_family": True, **stamp,
               "external_references": REFS}  # fmt: skip
    objects = [malware]
    for technique in techniques:
        pattern = {"type": "attack-pattern", "id": f"attack-pattern--{uuid.uuid4()}", "name": technique, **stamp,
                   "external_references": [{"source_name": "mitre-attack", "external_id": technique}]}  # fmt: skip
        uses = {"type": "relationship", "id": f"relationship--{uuid.uuid4()}", "relationship_type": "uses",
                "source_ref": malware["id"], "target_ref": pattern["id"], **stamp}  # fmt: skip
        objects += [pattern, uses]
    bundle = {"type": "bundle", "id": f"bundle--{uuid.uuid4()}", "objects": objects}
    response = api.post("/api/v1/iocs/import", {"format": "stix", "content": bundle})
    assert response.status_code == 200, response.get_data(as_text=True)[:300]
    (result,) = response.get_json()["threats"]["results"]
    assert (result["status"], result.get("ttps_cut"), result.get("references_cut")) == ("created", 8, 44), result
    ttps, refs = db.ttps_refs("StixHoarder")
    assert (len(ttps), len(refs)) == (512, 256) and set(ttps) < set(techniques)
