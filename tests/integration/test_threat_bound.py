"""A threat holds at most 64 tags (MAX_TAGS, as an IoC) and 256 aliases (MAX_ALIASES, as many as one item may name),
whatever path merges into it: /threats/batch and the imports that make threats (STIX, MISP galaxies). Each merge
unioned the item's tags and aliases into the stored lists without limit, so a family named in many reports (each
adding its own aliases and tags) grew at every write, and every alias is a row of threat_names. What a merge could
not keep is counted (`tags_cut`, `aliases_cut`), as for IoCs: the threat keeps what it holds, then the new ones in
the order they come."""

import uuid

import pytest
from helpers import IntelApi, SqlDb

pytestmark = pytest.mark.integration


@pytest.fixture
def api(function_client, backend_env):
    return IntelApi(function_client, backend_env["DATABASE_URL"], ("analyst", "reader"))


class Db(SqlDb):
    def row(self, name):
        tags, aliases = self.one("SELECT tags, aliases FROM threats WHERE name = %s", name)
        return list(tags), list(aliases)


@pytest.fixture
def db(backend_env):
    db = Db(backend_env["DATABASE_URL"])
    yield db
    db.close()


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
