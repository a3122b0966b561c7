"""An IoC holds at most MAX_SOURCES_PER_IOC (64) sources, as it holds at most 64 tags, whatever path writes them;
an item names at most 64 sources of at most 256 characters each. Sources were unioned without limit and an item's
`source`/`sources` had no bound on their count or length: the growth the tag bound stopped (a MISP import's source is
`misp:<org>`, so a value reported by many organisations collects one source per organisation, and a client naming a
new `source` per request grew the list at every write). What a write could not keep is counted (`sources_cut`),
as tags are, and which sources stay is deterministic: those the IoC holds, then the new ones in the order they come
(an item's own in alphabetical order)."""

import pytest
from helpers import IntelApi, SqlDb

pytestmark = pytest.mark.integration

FULL = [f"s{i:02d}" for i in range(64)]  # a full IoC's sources


@pytest.fixture
def api(function_client, backend_env):
    return IntelApi(function_client, backend_env["DATABASE_URL"], ("analyst", "reader"))


class Db(SqlDb):
    def sources(self, value):
        return list(self.one("SELECT sources FROM iocs WHERE value = %s", value)[0])


def _batch(api, items):
    response = api.post("/api/v1/iocs/batch", {"iocs": items})
    assert response.status_code == 200, response.get_data(as_text=True)[:300]
    return response.get_json()


def test_a_batch_keeps_the_stored_sources_then_the_first_new_ones_and_counts_the_rest(api, db):
    assert _batch(api, [{"value": "198.51.101.1", "sources": FULL[:60]}])["summary"]["created"] == 1
    new = [f"n{i}" for i in range(10)]
    body = _batch(api, [{"value": "198.51.101.1", "sources": [*new, *FULL[:5]]}])  # 5 it holds, 10 new: room for 4
    assert body["results"][0]["status"] == "updated" and body["results"][0]["sources_cut"] == 6, body
    assert body["summary"]["sources_cut"] == 6
    assert db.sources("198.51.101.1") == sorted([*FULL[:60], "n0", "n1", "n2", "n3"])
    again = _batch(api, [{"value": "198.51.101.1", "source": "zz", "sources": ["n0"]}])  # full: one it holds, one cut
    assert again["results"][0]["sources_cut"] == 1 and len(db.sources("198.51.101.1")) == 64
    plain = _batch(api, [{"value": "198.51.101.9", "source": "a"}])  # nothing cut: no sources_cut on the item
    assert "sources_cut" not in plain["results"][0] and plain["summary"]["sources_cut"] == 0


def test_items_of_one_value_in_a_batch_keep_the_first_items_sources_first(api, db):
    a, b = [f"a{i:02d}" for i in range(64)], [f"b{i:02d}" for i in range(64)]
    body = _batch(api, [{"value": "198.51.101.2", "sources": s} for s in (a[:10], b, a)])
    assert [r["status"] for r in body["results"]] == ["created", "unchanged", "unchanged"]
    assert body["results"][0]["sources_cut"] == 64 and body["summary"]["sources_cut"] == 64, body
    assert db.sources("198.51.101.2") == sorted(a[:10] + b[:54])


def test_an_ioc_stored_with_more_sources_than_the_bound_keeps_them_and_takes_no_more(api, db):
    assert _batch(api, [{"value": "198.51.101.3"}])["summary"]["created"] == 1
    many = [f"old{i:03d}" for i in range(100)]
    db.execute("UPDATE iocs SET sources = %s WHERE value = '198.51.101.3'", many)
    body = _batch(api, [{"value": "198.51.101.3", "sources": ["old000", "new"]}])
    assert body["results"][0]["sources_cut"] == 1
    assert db.sources("198.51.101.3") == many


@pytest.mark.parametrize(
    ("item", "reason"),
    [
        ({"sources": [f"x{i}" for i in range(65)]}, "at most 64 sources"),
        ({"source": "x" * 257}, "longer than 256"),
        ({"sources": ["ok", "y" * 257]}, "longer than 256"),
    ],
)
def test_an_item_with_too_many_or_too_long_sources_is_rejected_alone(api, db, item, reason):
    body = _batch(api, [{"value": "198.51.101.4", **item}, {"value": "198.51.101.5", "source": "fine"}])
    assert body["results"][0]["status"] == "rejected" and reason in body["results"][0]["reason"], body
    assert body["results"][1]["status"] == "created"


def test_an_import_into_a_full_ioc_counts_its_sources_cut(api, db):
    assert _batch(api, [{"value": "203.0.114.5", "sources": FULL}])["summary"]["created"] == 1
    content = {"iocs": [{"value": "203.0.114.5"}]}
    response = api.post("/api/v1/iocs/import", {"format": "json", "content": content, "source": "feed-x"})
    assert response.status_code == 200, response.get_data(as_text=True)[:300]
    body = response.get_json()
    assert body["iocs"]["summary"]["updated"] == 1, body["iocs"]
    assert body["sources_cut"] == 1 and body["iocs"]["summary"]["sources_cut"] == 1, body
    assert any(e["ref"] == "sources" and "64" in e["reason"] for e in body["errors"]), body["errors"]
    assert db.sources("203.0.114.5") == FULL


def test_an_import_whose_source_is_too_long_is_refused(api):
    response = api.post("/api/v1/iocs/import", {"format": "json", "content": {"iocs": [{"value": "203.0.114.6"}]}, "source": "x" * 257})
    assert response.status_code == 400 and "256" in response.get_data(as_text=True), response.get_data(as_text=True)[:300]


def test_a_sighting_keeps_a_full_iocs_sources_and_counts_its_source_cut(api, db):
    """POST /iocs/{id}/sightings appended its `source` to the IoC's sources with array_append, past the 64 (a
    sensor naming itself per host grew one IoC's list at every sighting), unstripped and unsorted (" s " stored as
    given); now the bound and the source rule of every other write: the sighting is kept and counted, its source
    counted in the answer's `sources_cut` when the IoC is full."""
    ioc_id = _batch(api, [{"value": "198.51.101.20", "sources": FULL[:63]}])["results"][0]["id"]
    first = api.post(f"/api/v1/iocs/{ioc_id}/sightings", {"source": " a-sensor "})
    assert first.status_code == 201 and "sources_cut" not in first.get_json(), first.get_json()
    assert db.sources("198.51.101.20") == sorted([*FULL[:63], "a-sensor"])
    for source in ("b-sensor", "c-sensor"):
        full = api.post(f"/api/v1/iocs/{ioc_id}/sightings", {"source": source})
        assert full.status_code == 201 and full.get_json()["sources_cut"] == 1, full.get_json()
    held = api.post(f"/api/v1/iocs/{ioc_id}/sightings", {"source": "a-sensor"})  # one it holds: nothing cut
    assert held.status_code == 201 and "sources_cut" not in held.get_json(), held.get_json()
    assert db.sources("198.51.101.20") == sorted([*FULL[:63], "a-sensor"])
    assert db.one("SELECT detection_count FROM iocs WHERE id = %s", ioc_id)[0] == 5  # every sighting still counted
    blank = api.post(f"/api/v1/iocs/{ioc_id}/sightings", {"source": "  "})  # no source, as in a batch item
    assert blank.status_code == 201 and "" not in db.sources("198.51.101.20")


def test_a_sightings_context_is_bounded(api, db):
    """A sighting's `context` is stored whole in ioc_sightings for every sighting: it had no bound but the 32 MiB
    body limit. At most 16 KiB as JSON now, a 400 naming context."""
    ioc_id = _batch(api, [{"value": "198.51.101.21"}])["results"][0]["id"]
    big = api.post(f"/api/v1/iocs/{ioc_id}/sightings", {"context": {"note": "x" * 17_000}})
    assert big.status_code == 400 and big.get_json()["error"]["details"]["field"] == "context", big.get_json()
    fits = api.post(f"/api/v1/iocs/{ioc_id}/sightings", {"context": {"note": "x" * 16_000}})
    assert fits.status_code == 201, fits.get_json()
    assert db.one("SELECT count(*) FROM ioc_sightings WHERE ioc_id = %s", ioc_id)[0] == 1
