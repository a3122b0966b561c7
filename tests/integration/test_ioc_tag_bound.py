"""An IoC holds at most MAX_TAGS_PER_IOC (64) tags, whatever path writes them: /iocs/batch, /iocs/import in every
format (sync and async), and the flow bridge. Each write unioned its tags into the stored list without limit (a MISP
event's import adds `misp-event:<uuid>`, so a value in 20,000 events collects 20,000 tags; one IoC measured 19,200).
What a write could not keep is counted (`tags_cut`), never silently dropped, and which tags stay is deterministic:
those the IoC holds, then the new ones in the order they come (an item's own in alphabetical order)."""

import uuid
from datetime import UTC, datetime, timedelta

import pytest
from helpers import IntelApi, SqlDb

pytestmark = pytest.mark.integration

FULL = [f"t{i:02d}" for i in range(64)]  # a full IoC's tags


@pytest.fixture
def api(function_client, backend_env):
    return IntelApi(function_client, backend_env["DATABASE_URL"], ("analyst", "reader"))


class Db(SqlDb):
    def tags(self, value):
        return list(self.one("SELECT tags FROM iocs WHERE value = %s", value)[0])


def _batch(api, items):
    response = api.post("/api/v1/iocs/batch", {"iocs": items})
    assert response.status_code == 200, response.get_data(as_text=True)[:300]
    return response.get_json()


def test_a_batch_keeps_the_stored_tags_then_the_first_new_ones_and_counts_the_rest(api, db):
    assert _batch(api, [{"value": "198.51.100.1", "tags": FULL[:60]}])["summary"]["created"] == 1
    new = [f"n{i}" for i in range(10)]
    body = _batch(api, [{"value": "198.51.100.1", "tags": [*new, *FULL[:5]]}])  # 5 it holds, 10 new: room for 4
    assert body["results"][0]["status"] == "updated" and body["results"][0]["tags_cut"] == 6, body
    assert body["summary"]["tags_cut"] == 6
    assert db.tags("198.51.100.1") == sorted([*FULL[:60], "n0", "n1", "n2", "n3"])
    again = _batch(api, [{"value": "198.51.100.1", "tags": ["n0", "zz"]}])  # full: one it holds, one more cut
    assert again["results"][0]["tags_cut"] == 1 and len(db.tags("198.51.100.1")) == 64
    plain = _batch(api, [{"value": "198.51.100.9", "tags": ["a"]}])  # nothing cut: no tags_cut on the item
    assert "tags_cut" not in plain["results"][0] and plain["summary"]["tags_cut"] == 0


def test_items_of_one_value_in_a_batch_keep_the_first_items_tags_first(api, db):
    """The merged item stands for the value: its result counts what the items together could not keep."""
    a, b = [f"a{i:02d}" for i in range(64)], [f"b{i:02d}" for i in range(64)]
    body = _batch(api, [{"value": "198.51.100.2", "tags": tags} for tags in (a[:10], b, a)])
    assert [r["status"] for r in body["results"]] == ["created", "unchanged", "unchanged"]
    assert body["results"][0]["tags_cut"] == 64 and body["summary"]["tags_cut"] == 64, body
    assert db.tags("198.51.100.2") == sorted(a[:10] + b[:54])


def test_an_ioc_created_from_items_of_one_value_stores_its_tags_sorted(api, db):
    """Stored tags are sorted on every write (an item's own are sorted, a merge into a stored IoC sorts the union);
    the items of one value merged in a batch, which the bound takes in the order they come, were stored in that order
    when they created the IoC (['zeta', 'alpha', 'mid']), so the same tags read back in another order."""
    _batch(api, [{"value": "198.51.100.4", "tags": ["zeta"]}, {"value": "198.51.100.4", "tags": ["mid", "alpha"]}])
    assert db.tags("198.51.100.4") == ["alpha", "mid", "zeta"]
    _batch(api, [{"value": "198.51.100.5", "tags": ["zeta"]}])
    _batch(api, [{"value": "198.51.100.5", "tags": ["mid", "alpha"]}])  # the same tags, the IoC created then merged
    assert db.tags("198.51.100.5") == ["alpha", "mid", "zeta"]


def test_an_ioc_stored_with_more_tags_than_the_bound_keeps_them_and_takes_no_more(api, db):
    """Rows written before the bound keep their tags (nothing is deleted); they take no new ones."""
    assert _batch(api, [{"value": "198.51.100.3"}])["summary"]["created"] == 1
    many = [f"old{i:03d}" for i in range(100)]
    db.execute("UPDATE iocs SET tags = %s WHERE value = '198.51.100.3'", many)
    body = _batch(api, [{"value": "198.51.100.3", "tags": ["old000", "new"]}])
    assert body["results"][0]["tags_cut"] == 1
    assert db.tags("198.51.100.3") == many


def _stix(value):
    return {
        "type": "bundle",
        "id": f"bundle--{uuid.uuid4()}",
        "objects": [
            {
                "type": "indicator",
                "spec_version": "2.1",
                "id": f"indicator--{uuid.uuid4()}",
                "created": "2026-01-01T00:00:00Z",
                "modified": "2026-01-01T00:00:00Z",
                "valid_from": "2026-01-01T00:00:00Z",
                "pattern_type": "stix",
                "pattern": f"[ipv4-addr:value = '{value}']",
                "labels": ["extra"],
            }
        ],
    }


def _misp(value):
    attribute = {"type": "ip-dst", "category": "Network activity", "value": value, "Tag": [{"name": "extra"}]}
    return {"Event": {"info": "tag bound", "uuid": str(uuid.uuid4()), "date": "2026-01-01", "Attribute": [attribute]}}


FORMATS = {
    "json": lambda v: ({"iocs": [{"value": v, "tags": ["extra"]}]}, {}),
    "csv": lambda v: (f"value,tags\n{v},extra\n", {}),
    "text": lambda v: (f"the beacon went to {v} twice", {"tags": ["extra"]}),
    "stix": lambda v: (_stix(v), {}),
    "misp": lambda v: (_misp(v), {}),
}


@pytest.mark.parametrize("fmt", sorted(FORMATS))
def test_an_import_in_every_format_leaves_a_full_ioc_full_and_counts_what_it_cut(api, db, fmt):
    assert _batch(api, [{"value": "203.0.113.5", "tags": FULL}])["summary"]["created"] == 1
    content, extra = FORMATS[fmt]("203.0.113.5")
    response = api.post("/api/v1/iocs/import", {"format": fmt, "content": content, **extra})
    assert response.status_code == 200, response.get_data(as_text=True)[:300]
    body = response.get_json()
    assert body["iocs"]["summary"]["updated"] == 1, body["iocs"]
    assert body["tags_cut"] >= 1 and body["iocs"]["summary"]["tags_cut"] == body["tags_cut"], body
    assert any(e["ref"] == "tags" and "64" in e["reason"] for e in body["errors"]), body["errors"]
    assert db.tags("203.0.113.5") == FULL


def test_the_flow_bridge_leaves_a_full_ioc_full_and_counts_its_tags_cut(backend_env, db):
    from threatflow.adapters.postgres import create_engine, unit_of_work
    from threatflow.flows.repository import StoredEvent
    from threatflow.hunting import bridge
    from threatflow.iocs import repository as ioc_repository
    from threatflow.platform.config import Settings

    engine = create_engine(Settings.from_env({"DATABASE_URL": backend_env["DATABASE_URL"]}))
    now = datetime.now(UTC)
    events = [StoredEvent(now - timedelta(minutes=i), f"k{i}", "203.0.113.77", True, 0.99, c) for i, c in enumerate(["DoS", "Exploits"])]
    try:
        with unit_of_work(engine) as conn:
            policies = ioc_repository.policies(conn)
            first = bridge.upsert_attack_sources(conn, events, threshold=0.9, policies=policies, warninglists=None, now=now, shown_to="red")
        assert first.created == 1 and first.to_json()["tags_cut"] == 0
        db.execute("UPDATE iocs SET tags = %s WHERE value = '203.0.113.77'", FULL)
        with unit_of_work(engine) as conn:
            again = bridge.upsert_attack_sources(conn, events, threshold=0.9, policies=policies, warninglists=None, now=now, shown_to="red")
    finally:
        engine.dispose()
    assert again.updated == 1 and again.to_json()["tags_cut"] == 3  # flow-detected and two categories
    assert db.tags("203.0.113.77") == FULL


def test_two_writers_adding_tags_at_once_leave_the_ioc_within_the_bound(api, db, backend_env):
    """The bound is applied to the row as the upsert locked it: a writer that waited for another's commit merges
    into the tags that one left, so two concurrent writes of 40 new tags each cannot leave 80."""
    import threading

    from threatflow.adapters.postgres import create_engine, unit_of_work
    from threatflow.iocs import repository as ioc_repository
    from threatflow.iocs import service
    from threatflow.platform.config import Settings

    assert _batch(api, [{"value": "198.51.100.44"}])["summary"]["created"] == 1
    engine = create_engine(Settings.from_env({"DATABASE_URL": backend_env["DATABASE_URL"]}))
    with engine.connect() as conn:
        policies = ioc_repository.policies(conn)

    def write(conn, prefix):
        item = service.IocIn(value="198.51.100.44", tags=[f"{prefix}{i:02d}" for i in range(40)])
        now = datetime.now(UTC)
        return service.upsert_batch([item], conn=conn, now=now, warninglists=None, policies=policies, clearance="red", new_tlp="amber")

    second = {}
    try:
        with unit_of_work(engine) as first_conn:
            first = write(first_conn, "a")  # holds the row's lock until this block commits

            def other():
                with unit_of_work(engine) as conn:
                    second["result"] = write(conn, "b")

            waiting = threading.Thread(target=other)
            waiting.start()
            waiting.join(timeout=1)
            assert waiting.is_alive()  # blocked on the row
        waiting.join(timeout=30)
    finally:
        engine.dispose()
    assert first["summary"]["tags_cut"] == 0 and second["result"]["summary"]["tags_cut"] == 16
    assert db.tags("198.51.100.44") == sorted([f"a{i:02d}" for i in range(40)] + [f"b{i:02d}" for i in range(24)])
