"""Threat-to-threat relations (POST/DELETE /threats/{id}/relations, STIX imports) under hostile and careless use:
writers racing each other and threat merges, documents naming many relations, odd relationship shapes and ids."""

import threading
import uuid

import pytest
from helpers import IntelApi, SqlDb, await_lock_waiters, create_user

pytestmark = pytest.mark.integration
STAMP = {"spec_version": "2.1", "created": "2026-01-01T00:00:00Z", "modified": "2026-01-01T00:00:00Z"}


@pytest.fixture
def api(function_client, backend_env):
    return IntelApi(function_client, backend_env["DATABASE_URL"], ("analyst", "admin", "reader"))


@pytest.fixture
def db(backend_env):
    db = SqlDb(backend_env["DATABASE_URL"])
    yield db
    db.close()


def _threats(api, *names):
    response = api.post("/api/v1/threats/batch", {"threats": [{"kind": "malware", "name": n} for n in names]})
    assert response.status_code == 200, response.get_json()
    return [r["id"] for r in response.get_json()["results"]]


def _red_analyst(backend_env, function_client):
    password = create_user(backend_env["DATABASE_URL"], "redanalyst", "analyst", clearance="red")
    token = function_client("auth").post("/api/v1/auth/token", json={"username": "redanalyst", "password": password}).get_json()
    return {"Authorization": f"Bearer {token['access_token']}"}


def _race_behind_a_held_lock(db, lock_sql, params, racers):
    """Holds the row lock `lock_sql` takes, starts the racers in order, each once the ones before it wait for a lock
    (so they queue in that order), then lets go and waits for them all."""
    from sqlalchemy import text

    with db._engine.begin() as holder:
        holder.execute(text(lock_sql), params)
        for count, racer in enumerate(racers, start=1):
            racer.start()
            await_lock_waiters(db, count)
    for racer in racers:
        racer.join(60)


def _bundle(objects):
    return {"type": "bundle", "id": f"bundle--{uuid.uuid4()}", "objects": objects}


def _malware(n, name=None):
    stix_id = f"malware--{uuid.uuid5(uuid.NAMESPACE_URL, f'hostile-{n}')}"
    return {"type": "malware", "id": stix_id, "name": name or f"Hostile{n}", "is_family": True, **STAMP}


def _relationship(source, target, verb, **extra):
    return {
        "type": "relationship", "id": f"relationship--{uuid.uuid4()}", "relationship_type": verb,
        "source_ref": source["id"], "target_ref": target["id"], **STAMP, **extra,
    }  # fmt: skip


def test_relating_a_threat_while_a_merge_locks_both_does_not_deadlock(api, db, function_client):
    """POST /threats/{x}/relations locked x, then (the insert's foreign key) its target y; a batch or import merging
    into both locks them in id order, y first when y < x. Each then waited for the other: PostgreSQL aborted one,
    a 500. The writer that held x first (here a third session) decides the order the two queue in."""
    y, x = _threats(api, "Deadlock Lower", "Deadlock Higher")
    merging = function_client("threats")
    outcome = {}

    def relate():
        outcome["relate"] = api.post(f"/api/v1/threats/{x}/relations", {"target_id": y, "type": "uses"}).status_code

    def merge():
        items = [{"kind": "malware", "name": name, "tags": ["merged"]} for name in ("Deadlock Lower", "Deadlock Higher")]
        outcome["merge"] = merging.post("/api/v1/threats/batch", json={"threats": items}, headers=api.analyst).status_code

    racers = [threading.Thread(target=relate), threading.Thread(target=merge)]
    _race_behind_a_held_lock(db, "SELECT 1 FROM threats WHERE id = :x FOR UPDATE", {"x": x}, racers)
    assert outcome == {"relate": 201, "merge": 200}
    assert db.one("SELECT count(*) FROM threat_relations WHERE source_id = %s AND target_id = %s", x, y)[0] == 1


class _Statements:
    """Statements any engine of this process sends to threat_relations while the block runs."""

    def __enter__(self):
        from sqlalchemy import event
        from sqlalchemy.engine import Engine

        self.texts = []
        event.listen(Engine, "before_cursor_execute", self._seen)
        return self

    def _seen(self, conn, cursor, statement, *args, **kwargs):
        if "threat_relations" in statement or "FOR NO KEY UPDATE" in statement:
            self.texts.append(statement)

    def __exit__(self, *exc):
        from sqlalchemy import event
        from sqlalchemy.engine import Engine

        event.remove(Engine, "before_cursor_execute", self._seen)


def test_an_import_relating_threats_of_many_sources_makes_them_in_few_statements(api, db):
    """1,000 relations from 1,000 different threats were written one (source, verb) at a time, two statements
    each: 2,000 statements, which took an import of 1,000 malware from 0.5 s to 1.7 s (2.3 s again)."""
    malware = [_malware(i) for i in range(1000)]
    relationships = [_relationship(m, malware[(i + 1) % 1000], "uses") for i, m in enumerate(malware)]
    with _Statements() as statements:
        response = api.post("/api/v1/iocs/import", {"format": "stix", "content": _bundle(malware + relationships)})
    assert response.status_code == 200, response.get_data(as_text=True)[:300]
    body = response.get_json()
    assert (body["threat_relations"], body["threat_relations_created"], body["threat_relations_cut"]) == (1000, 1000, 0)
    assert db.one("SELECT count(*) FROM threat_relations")[0] == 1000
    assert len(statements.texts) <= 4, len(statements.texts)


def test_relating_to_a_threat_deleted_meanwhile_is_a_404_not_a_500(api, db):
    """The target is looked up, then deleted (an admin's DELETE /threats) before the relation is written: the
    insert's foreign key failed, a 500. The relation now waits for the delete, then finds the threat gone."""
    source, target = _threats(api, "Survivor", "Deleted Meanwhile")
    outcome = {}

    def relate():
        response = api.post(f"/api/v1/threats/{source}/relations", {"target_id": target, "type": "uses"})
        outcome["relate"] = (response.status_code, response.get_json()["error"]["message"] if response.status_code >= 400 else None)

    from sqlalchemy import text

    racer = threading.Thread(target=relate)
    with db._engine.begin() as deleting:
        deleting.execute(text("DELETE FROM threats WHERE id = :t"), {"t": target})
        racer.start()  # it still sees the target (the delete is not committed), then waits for its row
        await_lock_waiters(db, 1)
    racer.join()
    assert outcome["relate"] == (404, f"no threat with id {target}")
    assert db.one("SELECT count(*) FROM threat_relations")[0] == 0


TLP_MARKING = {
    "green": "marking-definition--34098fce-860f-48ae-8e50-ebd3cc5e41da",
    "red": "marking-definition--5e57c739-391a-4eb3-b6be-7d15ca92d5ed",
}


def test_a_relationship_marked_above_both_its_threats_is_stored_with_its_marking_and_hidden_from_their_readers(
    api, backend_env, function_client
):
    """A report's relationship marked TLP:RED (this set is attributed-to that actor) between two amber threats was
    stored without its marking: every amber reader of either threat saw it in GET /threats/{id}, and amber exports
    carried it. Then it was not made (named in `errors`, counted in `threat_relations_cut`). Now a relation has a TLP
    of its own (sql/0014_link_tlp.sql): it is stored red and shown only to readers cleared for red; one marked below
    its threats is stored at the stricter of them. The import's `tlp` marks a relationship that names none, as it
    marks the threats."""
    red_analyst = _red_analyst(backend_env, function_client)
    actor, intrusion_set, malware = _malware(1, "Marked Actor"), _malware(2, "Marked Set"), _malware(3, "Marked Tool")
    secret = _relationship(intrusion_set, actor, "attributed-to", object_marking_refs=[TLP_MARKING["red"]])
    shared = _relationship(intrusion_set, malware, "uses", object_marking_refs=[TLP_MARKING["green"]])
    plain = _relationship(malware, actor, "authored-by")
    bundle = _bundle([actor, intrusion_set, malware, secret, shared, plain])
    response = api.post("/api/v1/iocs/import", {"format": "stix", "content": bundle}, headers=red_analyst)
    assert response.status_code == 200, response.get_data(as_text=True)[:300]
    body = response.get_json()
    assert (body["threat_relations"], body["threat_relations_cut"]) == (3, 0), body
    assert body["errors"] == [], body["errors"]
    set_id = next(t["id"] for t in body["threats"]["results"] if t["ref"] == intrusion_set["id"])
    seen = api.get(f"/api/v1/threats/{set_id}").get_json()["relations"]  # an amber reader
    assert [(r["type"], r["threat"]["name"], r["tlp"]) for r in seen] == [("uses", "Marked Tool", "amber")], seen
    seen_by_red = api.get(f"/api/v1/threats/{set_id}", headers=red_analyst).get_json()["relations"]
    assert sorted((r["type"], r["tlp"]) for r in seen_by_red) == [("attributed-to", "red"), ("uses", "amber")], seen_by_red

    # Unmarked, under an import whose tlp is red, between two threats it leaves amber (they name amber): made red.
    amber = "marking-definition--f88d31f6-486f-44da-b317-01333bde0b82"
    marked = [{**m, "object_marking_refs": [amber]} for m in (actor, malware)]
    again = api.post(
        "/api/v1/iocs/import",
        {"format": "stix", "content": _bundle([*marked, _relationship(actor, malware, "controls")]), "tlp": "red"},
        headers=red_analyst,
    ).get_json()
    assert (again["threat_relations"], again["threat_relations_cut"]) == (1, 0), again
    actor_id = next(t["id"] for t in again["threats"]["results"] if t["ref"] == actor["id"])
    assert [r["type"] for r in api.get(f"/api/v1/threats/{actor_id}").get_json()["relations"]] == ["authored-by"]
    controls = api.get(f"/api/v1/threats/{actor_id}", headers=red_analyst).get_json()["relations"]
    assert ("controls", "red") in [(r["type"], r["tlp"]) for r in controls], controls


@pytest.mark.parametrize(
    ("path_id", "body", "field"),
    [
        ("{x}", {"target_id": 2**63}, "target_id"),
        ("{x}", {"target_id": -(2**63) - 1}, "target_id"),
        ("{x}", {"target_id": 1.5}, "target_id"),
        ("{x}", {"target_id": "1"}, "target_id"),
        ("{x}", {"target_id": True}, "target_id"),
        ("{x}", {"target_id": None}, "target_id"),
        ("{x}", {}, "target_id"),
        ("{x}", {"target_id": "{y}", "type": "x" * 65}, "type"),
        ("{x}", {"target_id": "{y}", "type": ""}, "type"),
        ("{x}", {"target_id": "{y}", "type": 5}, "type"),
        ("{x}", {"target_id": "{y}", "type": "uses\u0000"}, "type"),
        ("{x}", {"target_id": "{y}", "confidence": 101}, "confidence"),
        ("{x}", {"target_id": "{y}", "confidence": 2**64}, "confidence"),
        ("{x}", {"target_id": "{y}", "colour": "red"}, "colour"),
        ("99999999999999999999", {"target_id": "{y}"}, "threat_id"),
    ],
)
def test_odd_relation_requests_are_a_400_naming_the_field(api, path_id, body, field):
    """The two routes never answer 5xx: ids past 64 bits (PostgreSQL's bigint), wrong types, bad verbs."""
    x, y = _threats(api, f"Odd Source {field}", f"Odd Target {field}")
    body = {k: (y if v == "{y}" else v) for k, v in body.items()}
    path = f"/api/v1/threats/{path_id.format(x=x)}/relations"
    for method in ("POST", "DELETE"):
        if method == "DELETE" and field == "confidence":
            continue
        response = api.client(path).open(path, method=method, json=body, headers=api.analyst)
        assert response.status_code == 400, (method, response.status_code, response.get_data(as_text=True)[:300])
        assert response.get_json()["error"]["details"]["field"].split(".")[0] == field, (method, response.get_json())


@pytest.mark.parametrize("path_id", ["0", "-1", "9223372036854775807", "abc", "1.5"])
def test_relations_of_ids_no_threat_holds_are_a_404(api, path_id):
    (y,) = _threats(api, "Lone Target")
    path = f"/api/v1/threats/{path_id}/relations"
    for method in ("POST", "DELETE"):
        response = api.client(path).open(path, method=method, json={"target_id": y}, headers=api.analyst)
        assert response.status_code == 404, (method, path_id, response.status_code, response.get_data(as_text=True)[:300])
    assert api.post(f"/api/v1/threats/{y}/relations", {"target_id": 2**63 - 1}).status_code == 404
    assert api.post(f"/api/v1/threats/{y}/relations", {"target_id": -5}).status_code == 404


def test_two_writers_racing_for_a_pairs_last_verb_make_one(api, db):
    """A pair holding 7 verbs, two POSTs of a new verb each: the second waits for the first (the threats' row locks),
    then sees 8 and is a 409."""
    x, y = _threats(api, "Race Source", "Race Target")
    for i in range(7):
        db.execute("INSERT INTO threat_relations (source_id, target_id, type) VALUES (%s, %s, %s)", x, y, f"held-{i}")
    outcome = {}

    def relate(verb):
        outcome[verb] = api.post(f"/api/v1/threats/{x}/relations", {"target_id": y, "type": verb}).status_code

    racers = [threading.Thread(target=relate, args=(verb,)) for verb in ("first-new", "second-new")]
    _race_behind_a_held_lock(db, "SELECT 1 FROM threats WHERE id = :x FOR UPDATE", {"x": x}, racers)
    assert sorted(outcome.values()) == [201, 409], outcome
    assert db.one("SELECT count(*) FROM threat_relations WHERE source_id = %s AND target_id = %s", x, y)[0] == 8


def test_imports_relating_two_threats_both_ways_while_merging_them_both_succeed(api, db, function_client):
    """Import A relates x -> y and import B y -> x, each merging both threats (new tags): the threat upserts' lock
    makes them one after the other, never a deadlock."""
    x, y = _malware(10, "Both Ways X"), _malware(11, "Both Ways Y")
    other = function_client("iocs")
    outcome = {}

    def run(name, client, source, target):
        merged = [{**t, "labels": [name]} for t in (x, y)]
        body = {"format": "stix", "content": _bundle([*merged, _relationship(source, target, "cooperates-with")])}
        response = client.post("/api/v1/iocs/import", json=body, headers=api.analyst)
        outcome[name] = (response.status_code, response.get_json().get("threat_relations"))

    run("setup", api.client("/api/v1/iocs"), x, y)

    x_id = db.one("SELECT id FROM threats WHERE name = 'Both Ways X'")[0]
    racers = [
        threading.Thread(target=run, args=("a", api.client("/api/v1/iocs"), x, y)),
        threading.Thread(target=run, args=("b", other, y, x)),
    ]
    _race_behind_a_held_lock(db, "SELECT 1 FROM threats WHERE id = :x FOR UPDATE", {"x": x_id}, racers)
    assert outcome == {"setup": (200, 1), "a": (200, 1), "b": (200, 1)}
    assert db.one("SELECT count(*) FROM threat_relations")[0] == 2


def test_an_export_below_a_related_threats_tlp_carries_neither_it_nor_the_relation(api, backend_env, function_client):
    """An IoC indicating an amber and a red threat related both ways: an export at amber (asked, or capped by the
    reader's clearance) names neither the red threat nor a relationship to or from it."""
    import json

    red_analyst = _red_analyst(backend_env, function_client)
    amber_threat = _malware(20, "Export Amber")
    red_threat = {**_malware(21, "Export Red"), "object_marking_refs": [TLP_MARKING["red"]]}
    indicator = {
        "type": "indicator", "id": f"indicator--{uuid.uuid4()}", "pattern": "[domain-name:value = 'export-hub.example.net']",
        "pattern_type": "stix", "valid_from": "2026-01-01T00:00:00Z", **STAMP,
    }  # fmt: skip
    objects = [amber_threat, red_threat, indicator]
    objects += [_relationship(indicator, t, "indicates") for t in (amber_threat, red_threat)]
    objects += [_relationship(amber_threat, red_threat, "uses"), _relationship(red_threat, amber_threat, "variant-of")]
    body = api.post("/api/v1/iocs/import", {"format": "stix", "content": _bundle(objects)}, headers=red_analyst).get_json()
    assert (body["threat_relations"], body["links"]) == (2, 2), body
    everything = api.client("/api/v1/iocs").get("/api/v1/iocs/export?format=stix&max_tlp=red", headers=red_analyst).get_json()
    assert sum(o["type"] == "relationship" and o["source_ref"].startswith("malware--") for o in everything["objects"]) == 2
    for headers, query in ((red_analyst, "max_tlp=amber"), (api.reader, "max_tlp=red")):
        exported = api.client("/api/v1/iocs").get(f"/api/v1/iocs/export?format=stix&{query}", headers=headers)
        assert exported.status_code == 200, exported.get_data(as_text=True)[:300]
        text = exported.get_data(as_text=True)
        assert red_threat["id"] not in text and "Export Red" not in text, query
        shown = {o["id"]: o for o in json.loads(text)["objects"]}
        assert amber_threat["id"] in shown
        assert not [o for o in shown.values() if o["type"] == "relationship" and o["source_ref"].startswith("malware--")], query


def test_an_exported_relation_between_green_threats_is_made_again_by_an_import_whose_tlp_is_amber(api, backend_env, function_client):
    """An export's relationship between two threats carried no marking, so importing that bundle with `"tlp":
    "amber"` (what names none is amber) marked it amber, above its green threats, and it was not made. It carries the
    stricter of its two threats' markings, as it was shared at that level."""
    red_analyst = _red_analyst(backend_env, function_client)
    green = {"object_marking_refs": [TLP_MARKING["green"]]}
    loader, payload = {**_malware(30, "Green Loader"), **green}, {**_malware(31, "Green Payload"), **green}
    indicator = {
        "type": "indicator", "id": f"indicator--{uuid.uuid4()}", "pattern": "[domain-name:value = 'green-loader.example.net']",
        "pattern_type": "stix", "valid_from": "2026-01-01T00:00:00Z", **STAMP, **green,
    }  # fmt: skip
    objects = [loader, payload, indicator, _relationship(loader, payload, "drops")]
    objects += [_relationship(indicator, threat, "indicates") for threat in (loader, payload)]
    first = api.post("/api/v1/iocs/import", {"format": "stix", "content": _bundle(objects)}, headers=red_analyst).get_json()
    assert first["threat_relations"] == 1, first
    exported = api.client("/api/v1/iocs").get("/api/v1/iocs/export?format=stix&max_tlp=green", headers=red_analyst).get_json()
    relationship = next(o for o in exported["objects"] if o["type"] == "relationship" and o["relationship_type"] == "drops")
    assert relationship["object_marking_refs"] == [TLP_MARKING["green"]]
    again = api.post("/api/v1/iocs/import", {"format": "stix", "content": exported, "tlp": "amber"}, headers=red_analyst).get_json()
    assert (again["threat_relations"], again["threat_relations_created"], again["threat_relations_cut"]) == (1, 0, 0), again


def test_an_amber_import_naming_a_red_threat_by_alias_relates_nothing_to_it_and_says_nothing_of_it(api, backend_env, function_client):
    """An amber analyst's bundle names a red threat by one of its aliases (in another case), twice (two objects sharing
    the alias merge into it), and relates those objects to its own threat both ways and to each other: no relation
    is made, none is counted as cut (a cut would tell the pair is full), and the answer carries no id of the red
    threat. Two refs merging into one stored threat relate nothing (no threat is related to itself)."""
    red_analyst = _red_analyst(backend_env, function_client)
    made = api.post(
        "/api/v1/threats/batch",
        {"threats": [{"kind": "malware", "name": "Crimson", "aliases": ["CrimsonAlias"], "tlp": "red"}]},
        headers=red_analyst,
    ).get_json()
    red_id = made["results"][0]["id"]
    own, alias, twin = (
        _malware(40, "Amber Own"),
        _malware(41, "crimsonalias"),
        {**_malware(42, "Crimson Twin"), "aliases": ["CRIMSONALIAS"]},
    )
    objects = [own, alias, twin]
    objects += [_relationship(own, alias, "uses"), _relationship(twin, own, "variant-of"), _relationship(alias, twin, "related-to")]
    response = api.post("/api/v1/iocs/import", {"format": "stix", "content": _bundle(objects)})  # the amber analyst
    assert response.status_code == 200, response.get_data(as_text=True)[:300]
    body = response.get_json()
    assert (body["threat_relations"], body["threat_relations_created"], body["threat_relations_cut"]) == (0, 0, 0), body
    assert not [e for e in body["errors"] if "relation" in e["ref"] or "relation" in e["reason"]], body["errors"]
    assert [t.get("id") for t in body["threats"]["results"] if t["ref"] != own["id"]] == [None, None], body["threats"]
    seen_by_red = api.client("/api/v1/threats").get(f"/api/v1/threats/{red_id}", headers=red_analyst).get_json()
    assert seen_by_red["relations"] == [], seen_by_red


def test_a_tie_stated_twice_is_stored_at_its_strictest_statement(api, backend_env, function_client):
    """A document stating one tie twice, once marked TLP:RED and once unmarked (a report and its summary), made it:
    the red statement was cut and the unmarked one made the same link, IoC relation or threat relation, shown to every
    amber reader of both ends. As for an IoC named twice, the strictest marking of the tie's statements decides: the
    tie is stored red (sql/0014_link_tlp.sql), shown to no amber reader."""
    red_analyst = _red_analyst(backend_env, function_client)
    actor, malware = _malware(11, "Twice Actor"), _malware(12, "Twice Tool")
    first, second = (_indicator(f"[ipv4-addr:value = '198.51.100.{n}']") for n in (71, 72))
    red = {"object_marking_refs": [TLP_MARKING["red"]]}
    ties = [(first, malware, "indicates"), (first, second, "communicates-with"), (malware, actor, "authored-by")]
    stated = [_relationship(source, target, verb, **marking) for source, target, verb in ties for marking in (red, {})]
    bundle = _bundle([actor, malware, first, second, *stated])
    response = api.post("/api/v1/iocs/import", {"format": "stix", "content": bundle}, headers=red_analyst)
    assert response.status_code == 200, response.get_data(as_text=True)[:300]
    body = response.get_json()
    assert (body["links"], body["relations"], body["threat_relations"]) == (1, 1, 1), body
    assert not {r["id"] for r in stated} & {e["ref"] for e in body["errors"]}, body["errors"]
    by_value = {r["value"]: r["id"] for r in body["iocs"]["results"]}
    for headers, shown in ((api.reader, []), (red_analyst, ["red"])):
        related = api.get(f"/api/v1/iocs/{by_value['198.51.100.71']}/related", headers=headers).get_json()
        assert [t["tlp"] for t in related["threats"]] == shown and [r["tlp"] for r in related["relations"]] == shown, related
    malware_id = next(t["id"] for t in body["threats"]["results"] if t["ref"] == malware["id"])
    assert api.get(f"/api/v1/threats/{malware_id}").get_json()["relations"] == []


def _indicator(pattern):
    return {
        "type": "indicator", "id": f"indicator--{uuid.uuid4()}", "pattern": pattern, "pattern_type": "stix",
        "valid_from": "2026-01-01T00:00:00Z", **STAMP,
    }  # fmt: skip


def _bulk_delete(client, admin, ids, outcome, name):
    response = client.delete("/api/v1/threats", json={"ids": ids}, headers=admin)
    outcome[name] = (response.status_code, response.get_json())


def _many_threats(db, prefix, n):
    """n threats stored straight (the API's rate limit would make a test of thousands slow), their ids in order."""
    db.execute("INSERT INTO threats (kind, name) SELECT 'malware', %s || g FROM generate_series(1, %s) g", f"{prefix} ", n)
    with db._engine.connect() as conn:
        return [r[0] for r in conn.exec_driver_sql("SELECT id FROM threats WHERE name LIKE %s ORDER BY id", (f"{prefix} %",)).all()]


@pytest.fixture
def analysed_threats(db):
    """For a test that ANALYZEs threats (to get the plans it needs): afterwards the table has no statistics again, as
    in the other tests. With the statistics of thousands of rows, the plan of a later test's batch upsert changed, and
    test_threats_api's two items of one batch naming one stored threat by different names kept the wrong TLP: that
    upsert updates the threat once per item, and which one PostgreSQL applies follows the plan (a bug of its own)."""
    yield
    db.execute("DELETE FROM pg_statistic WHERE starelid = 'threats'::regclass")
    db.execute("UPDATE pg_class SET reltuples = -1, relpages = 0 WHERE oid = 'threats'::regclass")


def test_two_bulk_deletes_of_overlapping_sets_locking_in_different_scan_orders_do_not_deadlock(api, db, function_client, analysed_threats):
    """DELETE /threats locked its rows in the order its plan scanned them: a few ids of 3,000 threats by the primary key
    (id order), a thousand by a scan of the table (the order rows lie in, which an update changes). Delete A of
    {low, high} and delete B of a thousand, queued behind a holder of `low`: A took `low` and waited for `high`, which B
    had taken and which waited for `low`. PostgreSQL aborted one: a 503. Both lock in id order now: the second waits
    for the first, then deletes what is left."""
    ids = _many_threats(db, "Bulk Delete", 3000)
    low, high = ids[0], ids[1]
    db.execute("UPDATE threats SET tags = tags || '{moved}' WHERE id = %s", low)  # its new row lies after the others
    db.execute("ANALYZE threats")
    with db._engine.connect() as conn:
        laid = [r[0] for r in conn.exec_driver_sql("SELECT id FROM threats ORDER BY ctid").all()]
    assert laid.index(high) < laid.index(low), "the layout the race needs: `low` lies after `high`"
    other = function_client("threats")
    outcome = {}
    racers = [
        threading.Thread(target=_bulk_delete, args=(api.client("/api/v1/threats"), api.admin, [low, high], outcome, "a")),
        threading.Thread(target=_bulk_delete, args=(other, api.admin, ids[:1000], outcome, "b")),
    ]

    _race_behind_a_held_lock(db, "SELECT 1 FROM threats WHERE id = :i FOR UPDATE", {"i": low}, racers)
    assert [outcome[n][0] for n in ("a", "b")] == [200, 200], outcome
    assert outcome["a"][1]["deleted"] + outcome["b"][1]["deleted"] == 1000, outcome
    assert db.one("SELECT count(*) FROM threats")[0] == 2000


def test_bulk_deletes_of_overlapping_sets_racing_freely_never_deadlock(api, db, function_client, analysed_threats):
    """Rounds of two concurrent bulk deletes over real connections, neither held back: overlapping sets of different
    sizes (different plans, so different scan orders), some rows moved by an update, threats related across the sets
    (their relations go with them, deleted by both)."""
    clients = [api.client("/api/v1/threats"), function_client("threats")]
    for round_ in range(10):
        ids = _many_threats(db, f"Race {round_}", 2000)
        db.execute(
            "INSERT INTO threat_relations (source_id, target_id, type)"
            " SELECT s, t, 'uses' FROM unnest(CAST(%s AS bigint[]), CAST(%s AS bigint[])) AS x(s, t) WHERE s <> t",
            ids[:1000],
            [ids[(i * 7 + 3) % 1000] for i in range(1000)],
        )
        db.execute("UPDATE threats SET tags = tags || '{moved}' WHERE id = ANY(%s)", ids[:1000:9])
        db.execute("ANALYZE threats")
        sets = [ids[:1000:97] + ids[1:1000:250], ids[:1000]]  # a few ids (index scan) inside a thousand (table scan)
        outcome = {}
        start = threading.Barrier(2, timeout=30)

        def run(n, client, wanted, outcome=outcome, start=start):
            start.wait()
            _bulk_delete(client, api.admin, wanted, outcome, n)

        racers = [threading.Thread(target=run, args=(n, clients[n], sets[n])) for n in (0, 1)]
        for racer in racers:
            racer.start()
        for racer in racers:
            racer.join(60)
        assert [outcome[n][0] for n in (0, 1)] == [200, 200], (round_, outcome)
        assert outcome[0][1]["deleted"] + outcome[1][1]["deleted"] == 1000, (round_, outcome)
        assert db.one("SELECT count(*) FROM threat_relations WHERE source_id = ANY(%s) OR target_id = ANY(%s)", ids, ids)[0] == 0


def test_two_bulk_deletes_of_threats_related_across_their_sets_do_not_deadlock(api, db, function_client):
    """Delete A of {x, z} and delete B of {y}, with x uses y and y uses z: the relations go with the threats (ON DELETE
    CASCADE), each delete's cascade locking them in the order its threats were deleted, x -> y before y -> z for A and
    y -> z before x -> y for B. Queued behind a holder of y -> z, B (first in the queue) took it and waited for x -> y,
    which A held while it waited for y -> z: PostgreSQL aborted one, a 503. The relations are locked in key order too."""
    x, y, z = _many_threats(db, "Cross Related", 3)
    db.execute("INSERT INTO threat_relations (source_id, target_id, type) VALUES (%s, %s, 'uses'), (%s, %s, 'uses')", x, y, y, z)
    other = function_client("threats")
    outcome = {}
    racers = [
        threading.Thread(target=_bulk_delete, args=(other, api.admin, [y], outcome, "b")),
        threading.Thread(target=_bulk_delete, args=(api.client("/api/v1/threats"), api.admin, [x, z], outcome, "a")),
    ]

    _race_behind_a_held_lock(
        db, "SELECT 1 FROM threat_relations WHERE source_id = :y AND target_id = :z FOR UPDATE", {"y": y, "z": z}, racers
    )
    assert [outcome[n][0] for n in ("a", "b")] == [200, 200], outcome
    assert (outcome["a"][1]["deleted"], outcome["b"][1]["deleted"]) == (2, 1), outcome
    assert db.one("SELECT count(*) FROM threat_relations")[0] == 0


def _delete_iocs(client, admin, body, outcome, name):
    response = client.delete("/api/v1/iocs", json=body, headers=admin)
    outcome[name] = (response.status_code, response.get_json())


@pytest.mark.parametrize("held", ["threats-first", "iocs-first"])
@pytest.mark.parametrize("by", ["ids", "filter"])
def test_a_bulk_threat_delete_and_an_ioc_delete_unlinking_the_same_pairs_do_not_deadlock(api, db, held, by):
    """Threats t1 < t2 and IoCs i1 < i2 linked across them (t1 - i2, t2 - i1). DELETE /threats of {t1, t2} and
    DELETE /iocs of {i1, i2} (by ids, or by a filter) both cascade into threat_iocs, each in the order its own rows
    went: the threat delete (t1, i2) then (t2, i1), the IoC delete (t2, i1) then (t1, i2). Queued behind a holder of
    the link the first of them needs, the first took it and waited for the other, which the second held while it
    waited for the first: PostgreSQL aborted one, a 503. Both lock the links they will delete in (threat_id, ioc_id)
    order first now: the second waits for the first, then deletes what is left."""
    tag = f"unlinked-{uuid.uuid4().hex[:12]}"
    t1, t2 = _many_threats(db, f"Link Race {tag}", 2)
    db.execute(
        "INSERT INTO iocs (type, value, tags, first_seen, last_seen, last_seen_day)"
        " SELECT 'domain', %s || g || '.example', ARRAY[%s], now(), now(), current_date FROM generate_series(1, 2) g",
        f"{tag}-",
        tag,
    )
    with db._engine.connect() as conn:
        i1, i2 = [r[0] for r in conn.exec_driver_sql("SELECT id FROM iocs WHERE %s = ANY(tags) ORDER BY id", (tag,)).all()]
    db.execute("INSERT INTO threat_iocs (threat_id, ioc_id) VALUES (%s, %s), (%s, %s)", t1, i2, t2, i1)
    body = {"ids": [i1, i2]} if by == "ids" else {"filter": {"tags": [tag]}, "confirm": True}
    outcome: dict[str, tuple[int, dict]] = {}
    racers = {
        "threats": threading.Thread(target=_bulk_delete, args=(api.client("/api/v1/threats"), api.admin, [t1, t2], outcome, "threats")),
        "iocs": threading.Thread(target=_delete_iocs, args=(api.client("/api/v1/iocs"), api.admin, body, outcome, "iocs")),
    }
    # The link the first racer's cascade needs first: (t1, i2) for the threat delete, (t2, i1) for the IoC delete.
    first, second = ("threats", "iocs") if held == "threats-first" else ("iocs", "threats")
    link = (t1, i2) if first == "threats" else (t2, i1)

    _race_behind_a_held_lock(
        db,
        "SELECT 1 FROM threat_iocs WHERE threat_id = :t AND ioc_id = :i FOR UPDATE",
        {"t": link[0], "i": link[1]},
        [racers[first], racers[second]],
    )
    assert [outcome[n][0] for n in ("threats", "iocs")] == [200, 200], outcome
    assert (outcome["threats"][1]["deleted"], outcome["iocs"][1]["deleted"]) == (2, 2), outcome
    assert db.one("SELECT count(*) FROM threat_iocs WHERE threat_id = ANY(%s) OR ioc_id = ANY(%s)", [t1, t2], [i1, i2])[0] == 0


def test_two_ioc_deletes_of_iocs_related_across_their_sets_do_not_deadlock(api, db, function_client):
    """IoCs i1 < i2 < i3 < i4 with relations i1 -> i4 and i2 -> i3; DELETE /iocs of {i1, i3} (A) and of {i2, i4} (B).
    Each cascade into ioc_relations locked the relations in the order its own IoCs went: A (i1, i4) then (i2, i3),
    B (i2, i3) then (i1, i4). Queued behind a holder of (i1, i4), A took it and waited for (i2, i3), which B held
    while it waited for (i1, i4): PostgreSQL aborted one, a 503. The relations are locked in key order first now."""
    tag = f"related-{uuid.uuid4().hex[:12]}"
    db.execute(
        "INSERT INTO iocs (type, value, tags, first_seen, last_seen, last_seen_day)"
        " SELECT 'domain', %s || g || '.example', ARRAY[%s], now(), now(), current_date FROM generate_series(1, 4) g",
        f"{tag}-",
        tag,
    )
    with db._engine.connect() as conn:
        i1, i2, i3, i4 = [r[0] for r in conn.exec_driver_sql("SELECT id FROM iocs WHERE %s = ANY(tags) ORDER BY id", (tag,)).all()]
    db.execute(
        "INSERT INTO ioc_relations (source_id, target_id, type, tlp)"
        " VALUES (%s, %s, 'related-to', 'clear'), (%s, %s, 'related-to', 'clear')",
        *(i1, i4, i2, i3),
    )
    outcome: dict[str, tuple[int, dict]] = {}
    racers = [
        threading.Thread(target=_delete_iocs, args=(api.client("/api/v1/iocs"), api.admin, {"ids": [i1, i3]}, outcome, "a")),
        threading.Thread(target=_delete_iocs, args=(function_client("iocs"), api.admin, {"ids": [i2, i4]}, outcome, "b")),
    ]

    _race_behind_a_held_lock(
        db, "SELECT 1 FROM ioc_relations WHERE source_id = :s AND target_id = :t FOR UPDATE", {"s": i1, "t": i4}, racers
    )
    assert [outcome[n][0] for n in ("a", "b")] == [200, 200], outcome
    assert (outcome["a"][1]["deleted"], outcome["b"][1]["deleted"]) == (2, 2), outcome
    assert db.one("SELECT count(*) FROM ioc_relations WHERE source_id = ANY(%s)", [i1, i2, i3, i4])[0] == 0
