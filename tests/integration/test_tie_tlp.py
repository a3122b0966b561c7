"""A TLP of their own for threat-IoC links, IoC-IoC relations and threat-threat relations (sql/0014_link_tlp.sql).

A tie had no marking: it showed to whoever read both its ends. So a tie learnt from TLP:RED material between two amber
objects was refused by STIX imports, and one made while an end was red showed to amber readers once that end was
lowered. Now a tie keeps the marking it was written with (never below the stricter of its ends when written), and
every read hides a tie above the reader's clearance as it hides an end."""

import json
import uuid

import pytest
import sqlalchemy
from helpers import copy_migrations, create_user

from threatflow.adapters.postgres import create_engine
from threatflow.db.migrate import migrate
from threatflow.platform.config import Settings

pytestmark = pytest.mark.integration
RED_MARKING = "marking-definition--5e57c739-391a-4eb3-b6be-7d15ca92d5ed"
AMBER_MARKING = "marking-definition--f88d31f6-486f-44da-b317-01333bde0b82"


def _bearer(function_client, backend_env, username, role, clearance=None):
    password = create_user(backend_env["DATABASE_URL"], username, role, clearance=clearance)
    token = function_client("auth").post("/api/v1/auth/token", json={"username": username, "password": password}).get_json()
    return {"Authorization": f"Bearer {token['access_token']}"}


@pytest.fixture
def world(function_client, backend_env):
    """Three amber IoCs and two amber threats; a red analyst, an amber analyst and an amber reader."""
    users = {
        "red": _bearer(function_client, backend_env, "redwriter", "analyst", clearance="red"),
        "amber": _bearer(function_client, backend_env, "amberwriter", "analyst"),
        "reader": _bearer(function_client, backend_env, "amberreader", "reader"),
    }
    iocs, threats = function_client("iocs"), function_client("threats")
    items = [{"value": f"{name}.tie-tlp.com", "tlp": "amber", "tags": ["tie-tlp"]} for name in ("one", "two", "three")]
    stored = iocs.post("/api/v1/iocs/batch", json={"iocs": items}, headers=users["red"]).get_json()["results"]
    ioc_ids = {r["value"].split(".")[0]: r["id"] for r in stored}
    made = threats.post(
        "/api/v1/threats/batch",
        json={"threats": [{"kind": "malware", "name": "TieSource", "tlp": "amber"}, {"kind": "tool", "name": "TieTarget", "tlp": "amber"}]},
        headers=users["red"],
    ).get_json()["results"]
    return {"iocs": iocs, "threats": threats, "users": users, "ioc": ioc_ids, "threat": [r["id"] for r in made]}


def _red_ties(world):
    """A red link (threat 0 -> one), a red IoC relation (one -> two) and a red threat relation (0 -> 1)."""
    iocs, threats, red = world["iocs"], world["threats"], world["users"]["red"]
    one, two = world["ioc"]["one"], world["ioc"]["two"]
    source, target = world["threat"]
    link = threats.post(f"/api/v1/threats/{source}/link", json={"ioc_ids": [one], "tlp": "TLP:RED"}, headers=red)
    assert link.status_code == 200, link.get_json()
    assert link.get_json()["results"][0]["tlp"] == "red", link.get_json()
    relation = iocs.post(f"/api/v1/iocs/{one}/relations", json={"target_id": two, "type": "resolves-to", "tlp": "red"}, headers=red)
    assert relation.status_code == 201 and relation.get_json()["tlp"] == "red", relation.get_json()
    related = threats.post(f"/api/v1/threats/{source}/relations", json={"target_id": target, "type": "uses", "tlp": "tlp-red"}, headers=red)
    assert related.status_code == 201 and related.get_json()["tlp"] == "red", related.get_json()


def _seen(world, headers, max_tlp):
    """What a caller sees of the three ties on every read route that shows ties."""
    iocs, threats = world["iocs"], world["threats"]
    one, two = world["ioc"]["one"], world["ioc"]["two"]
    source, target = world["threat"]
    threat = threats.get(f"/api/v1/threats/{source}", headers=headers).get_json()
    target_view = threats.get(f"/api/v1/threats/{target}", headers=headers).get_json()
    related = iocs.get(f"/api/v1/iocs/{one}/related", headers=headers).get_json()
    related_two = iocs.get(f"/api/v1/iocs/{two}/related", headers=headers).get_json()
    by_ioc = threats.get(f"/api/v1/threats/by-ioc/{one}", headers=headers).get_json()
    stats = threats.get("/api/v1/threats/stats", headers=headers).get_json()
    export = iocs.get(f"/api/v1/iocs/export?format=stix&tags=tie-tlp&max_tlp={max_tlp}", headers=headers)
    verbs = sorted(o["relationship_type"] for o in json.loads(export.data)["objects"] if o["type"] == "relationship")
    return {
        "ioc_count": threat["ioc_count"],
        "by_relation": threat["ioc_count_by_relation"],
        "threat_relations": [(r["type"], r["threat"]["name"]) for r in threat["relations"]],
        "target_relations": [(r["type"], r["threat"]["name"]) for r in target_view["relations"]],
        "related_threats": [t["name"] for t in related["threats"]],
        "related_iocs": [r["ioc"]["id"] for r in related["relations"]] + [r["ioc"]["id"] for r in related_two["relations"]],
        "by_ioc": ([t["name"] for t in by_ioc["threats"]], by_ioc["count"]),
        "stats": (stats["links"]["total"], stats["links"]["by_relation"], stats["ioc_relations"]),
        "exported": verbs,
    }


def test_a_red_tie_between_amber_ends_is_hidden_from_an_amber_reader_on_every_read_route(world):
    _red_ties(world)
    hidden = _seen(world, world["users"]["reader"], "amber")
    assert hidden == {
        "ioc_count": 0,
        "by_relation": {},
        "threat_relations": [],
        "target_relations": [],
        "related_threats": [],
        "related_iocs": [],
        "by_ioc": ([], 0),
        "stats": (0, {}, 0),
        "exported": [],
    }, hidden
    # An amber analyst's correlation does not learn of the red link either (already_linked, read counts).
    correlated = (
        world["threats"]
        .post("/api/v1/threats/correlate", json={"threat_id": world["threat"][0], "link": False}, headers=world["users"]["amber"])
        .get_json()
    )
    assert correlated["read"].get("links", 0) == 0, correlated
    shown = _seen(world, world["users"]["red"], "red")
    one, two = world["ioc"]["one"], world["ioc"]["two"]
    assert shown == {
        "ioc_count": 1,
        "by_relation": {"indicates": 1},
        "threat_relations": [("uses", "TieTarget")],
        "target_relations": [("uses", "TieSource")],
        "related_threats": ["TieSource"],
        "related_iocs": [two, one],
        "by_ioc": (["TieSource"], 1),
        "stats": (1, {"indicates": 1}, 1),
        "exported": ["indicates", "resolves-to"],  # TieTarget has no exported IoC: its relation is not exported
    }, shown
    # The red reader's own amber export leaves the red ties out too: max_tlp caps ties as it caps ends.
    assert _seen(world, world["users"]["red"], "amber")["exported"] == []


def test_stix_export_marks_each_relationship_with_its_ties_own_tlp(world):
    _red_ties(world)
    one, three = world["ioc"]["one"], world["ioc"]["three"]
    red = world["users"]["red"]
    assert world["iocs"].post(f"/api/v1/iocs/{one}/relations", json={"target_id": three, "type": "drops"}, headers=red).status_code == 201
    target = world["threat"][1]  # exported with an IoC of its own, so its relation to TieSource is exported
    assert world["threats"].post(f"/api/v1/threats/{target}/link", json={"ioc_ids": [three]}, headers=red).status_code == 200
    export = world["iocs"].get("/api/v1/iocs/export?format=stix&tags=tie-tlp&max_tlp=red", headers=red)
    objects = json.loads(export.data)["objects"]
    relationships = sorted((o["relationship_type"], *o["object_marking_refs"]) for o in objects if o["type"] == "relationship")
    assert relationships == sorted(
        [
            ("indicates", RED_MARKING),
            ("indicates", AMBER_MARKING),  # TieTarget's link, no tlp given: the stricter of its amber ends
            ("resolves-to", RED_MARKING),
            ("uses", RED_MARKING),
            ("drops", AMBER_MARKING),
        ]
    ), relationships
    assert {tuple(o["object_marking_refs"]) for o in objects if o["type"] == "indicator"} == {(AMBER_MARKING,)}


def test_lowering_an_end_no_longer_reveals_a_tie_made_while_it_was_red(world):
    """A link made (without a tlp) while its IoC was red is red; the IoC lowered to amber, the link stays red."""
    iocs, threats, red, reader = world["iocs"], world["threats"], world["users"]["red"], world["users"]["reader"]
    three = world["ioc"]["three"]
    source, _ = world["threat"]
    assert iocs.post("/api/v1/iocs/batch", json={"iocs": [{"value": "three.tie-tlp.com", "tlp": "red"}]}, headers=red).status_code == 200
    made = threats.post(f"/api/v1/threats/{source}/link", json={"ioc_ids": [three]}, headers=red).get_json()
    assert made["results"][0] == {"ioc_id": three, "status": "linked", "tlp": "red"}, made
    assert iocs.post("/api/v1/iocs/batch", json={"iocs": [{"value": "three.tie-tlp.com", "tlp": "amber"}]}, headers=red).status_code == 200
    assert iocs.get(f"/api/v1/iocs/{three}", headers=reader).status_code == 200  # the end is amber now
    assert threats.get(f"/api/v1/threats/by-ioc/{three}", headers=reader).get_json()["threats"] == []
    assert threats.get(f"/api/v1/threats/{source}", headers=reader).get_json()["ioc_count"] == 0


def test_writes_of_a_ties_tlp_follow_the_writers_clearance(world):
    """A tlp above the writer's clearance is a 403; one below the stricter end is raised to it; a re-post raises a
    tie's tlp, and lowers it only for a writer cleared for the tlp it had; a delete never reaches a tie above the
    writer's clearance."""
    iocs, threats, users = world["iocs"], world["threats"], world["users"]
    one, two, three = world["ioc"]["one"], world["ioc"]["two"], world["ioc"]["three"]
    source, target = world["threat"]
    amber = users["amber"]
    refused = [
        threats.post(f"/api/v1/threats/{source}/link", json={"ioc_ids": [one], "tlp": "red"}, headers=amber),
        iocs.post(f"/api/v1/iocs/{one}/relations", json={"target_id": two, "type": "drops", "tlp": "red"}, headers=amber),
        threats.post(f"/api/v1/threats/{source}/relations", json={"target_id": target, "tlp": "red"}, headers=amber),
    ]
    assert [r.status_code for r in refused] == [403, 403, 403], [r.get_json() for r in refused]
    assert all(r.get_json()["error"]["details"]["field"] == "tlp" for r in refused)
    bad = iocs.post(f"/api/v1/iocs/{one}/relations", json={"target_id": two, "type": "drops", "tlp": "purple"}, headers=amber)
    assert bad.status_code == 400, bad.get_json()
    low = iocs.post(f"/api/v1/iocs/{one}/relations", json={"target_id": three, "type": "drops", "tlp": "clear"}, headers=amber)
    assert (low.status_code, low.get_json()["tlp"]) == (201, "amber"), low.get_json()

    _red_ties(world)
    # The amber analyst restates the red relation at amber: it is not lowered (they are not cleared for red).
    again = iocs.post(f"/api/v1/iocs/{one}/relations", json={"target_id": two, "type": "resolves-to", "tlp": "amber"}, headers=amber)
    assert again.status_code in (200, 201), again.get_json()
    reader = users["reader"]
    assert iocs.get(f"/api/v1/iocs/{one}/related", headers=reader).get_json()["relations"] == [drops(three)]
    # Nor deleted by them.
    assert iocs.delete(f"/api/v1/iocs/{one}/relations", json={"target_id": two}, headers=amber).get_json() == {"deleted": 0}
    assert threats.post(f"/api/v1/threats/{source}/unlink", json={"ioc_ids": [one]}, headers=amber).get_json()["summary"] == {
        "not_linked": 1,
        "total": 1,
    }
    assert threats.delete(f"/api/v1/threats/{source}/relations", json={"target_id": target}, headers=amber).get_json() == {"deleted": 0}
    # A writer cleared for red lowers them.
    red = users["red"]
    lowered = iocs.post(f"/api/v1/iocs/{one}/relations", json={"target_id": two, "type": "resolves-to", "tlp": "amber"}, headers=red)
    assert (lowered.status_code, lowered.get_json()["tlp"]) == (200, "amber"), lowered.get_json()
    linked = threats.post(f"/api/v1/threats/{source}/link", json={"ioc_ids": [one], "tlp": "amber"}, headers=red).get_json()
    assert linked["results"][0] == {"ioc_id": one, "status": "already_linked", "tlp": "amber"}, linked
    relation = threats.post(f"/api/v1/threats/{source}/relations", json={"target_id": target, "type": "uses", "tlp": "green"}, headers=red)
    assert (relation.status_code, relation.get_json()["tlp"]) == (200, "amber"), relation.get_json()
    assert [t["name"] for t in threats.get(f"/api/v1/threats/by-ioc/{one}", headers=reader).get_json()["threats"]] == ["TieSource"]
    # A re-post naming no tlp keeps it; one naming a stricter raises it.
    assert threats.post(f"/api/v1/threats/{source}/link", json={"ioc_ids": [one]}, headers=red).get_json()["results"][0]["tlp"] == "amber"
    raised = threats.post(f"/api/v1/threats/{source}/link", json={"ioc_ids": [one], "tlp": "amber+strict"}, headers=red).get_json()
    assert raised["results"][0]["tlp"] == "amber+strict", raised
    assert threats.get(f"/api/v1/threats/by-ioc/{one}", headers=reader).get_json()["threats"] == []


def drops(three):
    return {"direction": "out", "type": "drops", "confidence": 50, "source": "user:amberwriter", "tlp": "amber",
            "ioc": {"id": three, "type": "domain", "value": "three.tie-tlp.com"}}  # fmt: skip


def _sdo(kind, n, **fields):
    stamp = {"spec_version": "2.1", "created": "2024-01-01T00:00:00Z", "modified": "2024-01-01T00:00:00Z"}
    return {"type": kind, "id": f"{kind}--{n:08d}-0000-4000-8000-00000000cd01", **stamp, **fields}


def test_a_stix_relationship_marked_above_its_ends_is_stored_with_its_marking_and_hidden(world):
    """It was not made (`errors`, `links_cut`, `relations_cut`, `threat_relations_cut`); now it is stored red and
    only readers cleared for red see it."""
    iocs, threats, red, reader = world["iocs"], world["threats"], world["users"]["red"], world["users"]["reader"]

    def indicator(n, value, kind="domain-name"):
        return _sdo(
            "indicator", n, pattern=f"[{kind}:value = '{value}']", pattern_type="stix", valid_from="2024-01-01T00:00:00Z",
            object_marking_refs=[AMBER_MARKING],
        )  # fmt: skip

    def rel(n, verb, source, target):
        return _sdo(
            "relationship", n, relationship_type=verb, source_ref=source["id"], target_ref=target["id"], object_marking_refs=[RED_MARKING]
        )

    domain, address = indicator(1, "stix.tie-tlp.com"), indicator(2, "198.51.100.91", "ipv4-addr")
    family = _sdo("malware", 3, name="StixTieFamily", is_family=True, object_marking_refs=[AMBER_MARKING])
    actor = _sdo("threat-actor", 4, name="StixTieActor", object_marking_refs=[AMBER_MARKING])
    ties = [rel(5, "indicates", domain, family), rel(6, "resolves-to", domain, address), rel(7, "authored-by", family, actor)]
    bundle = {"type": "bundle", "id": "bundle--00000009-0000-4000-8000-00000000cd01", "objects": [domain, address, family, actor, *ties]}
    response = iocs.post("/api/v1/iocs/import", json={"format": "stix", "content": bundle}, headers=red)
    assert response.status_code == 200, response.get_data(as_text=True)[:500]
    body = response.get_json()
    counts = [body[k] for k in ("links", "links_cut", "relations", "relations_cut", "threat_relations", "threat_relations_cut")]
    assert counts == [1, 0, 1, 0, 1, 0], body
    assert body["errors"] == [], body["errors"]
    by_value = {r["value"]: r["id"] for r in body["iocs"]["results"]}
    family_id = next(t["id"] for t in body["threats"]["results"] if t["ref"] == family["id"])
    domain_id = by_value["stix.tie-tlp.com"]
    for headers, expected in ((reader, 0), (red, 1)):
        related = iocs.get(f"/api/v1/iocs/{domain_id}/related", headers=headers).get_json()
        assert (len(related["threats"]), len(related["relations"])) == (expected, expected), related
        assert len(threats.get(f"/api/v1/threats/{family_id}", headers=headers).get_json()["relations"]) == expected
    assert {r["tlp"] for r in iocs.get(f"/api/v1/iocs/{domain_id}/related", headers=red).get_json()["relations"]} == {"red"}


def test_the_migration_gives_existing_ties_the_stricter_of_their_ends(fresh_database, tmp_path):
    """Ties stored before 0014 take the stricter of their two ends' current TLPs, and the column is NOT NULL."""
    copy_migrations(tmp_path, range(14))
    engine = create_engine(Settings.from_env({"DATABASE_URL": fresh_database}))
    try:
        migrate(engine, sql_dir=tmp_path, progress=lambda _m: None)
        with engine.begin() as conn:

            def run(sql, **params):
                return conn.execute(sqlalchemy.text(sql), params).all()

            ioc = {
                tlp: run(
                    "INSERT INTO iocs (type, value, tlp, first_seen, last_seen, last_seen_day)"
                    " VALUES ('domain', :v, :t, now(), now(), current_date) RETURNING id",
                    v=f"{uuid.uuid4().hex}.com",
                    t=tlp,
                )[0][0]
                for tlp in ("green", "amber", "red")
            }
            threat = {
                tlp: run("INSERT INTO threats (kind, name, tlp) VALUES ('malware', :n, :t) RETURNING id", n=f"M-{tlp}", t=tlp)[0][0]
                for tlp in ("green", "red")
            }
            run(
                "INSERT INTO threat_iocs (threat_id, ioc_id) VALUES (:t, :i), (:r, :g) RETURNING 1",
                t=threat["green"],
                i=ioc["amber"],
                r=threat["red"],
                g=ioc["green"],
            )
            run(
                "INSERT INTO ioc_relations (source_id, target_id, type) VALUES (:a, :b, 'drops'), (:g, :a, 'drops') RETURNING 1",
                a=ioc["amber"],
                b=ioc["red"],
                g=ioc["green"],
            )
            run(
                "INSERT INTO threat_relations (source_id, target_id, type) VALUES (:g, :r, 'uses') RETURNING 1",
                g=threat["green"],
                r=threat["red"],
            )
        copy_migrations(tmp_path, range(14, 15))
        assert migrate(engine, sql_dir=tmp_path, progress=lambda _m: None).applied == (14,)
        with engine.connect() as conn:

            def rows(sql):
                return sorted(tuple(r) for r in conn.execute(sqlalchemy.text(sql)))

            assert rows("SELECT threat_id, ioc_id, tlp FROM threat_iocs") == sorted(
                [(threat["green"], ioc["amber"], "amber"), (threat["red"], ioc["green"], "red")]
            )
            assert rows("SELECT source_id, target_id, tlp FROM ioc_relations") == sorted(
                [(ioc["amber"], ioc["red"], "red"), (ioc["green"], ioc["amber"], "amber")]
            )
            assert rows("SELECT source_id, target_id, tlp FROM threat_relations") == [(threat["green"], threat["red"], "red")]
            nullable = rows(
                "SELECT table_name, is_nullable FROM information_schema.columns WHERE column_name = 'tlp'"
                " AND table_name IN ('threat_iocs', 'ioc_relations', 'threat_relations')"
            )
            assert nullable == [("ioc_relations", "NO"), ("threat_iocs", "NO"), ("threat_relations", "NO")]
    finally:
        engine.dispose()


def test_a_link_correlation_makes_from_a_red_tie_is_red(world):
    """Correlation follows a red link and a red relation when its caller is cleared for red (a red analyst, or the
    enrichment's correlation, which reads every TLP): a link it makes from them is as strict as they are. It was given
    its amber ends' TLP, so an amber reader saw a correlated link that only the red ties had scored high enough."""
    _red_ties(world)  # TieSource -red-> one (indicates: a seed), one -red-> two (resolves-to: 60)
    iocs, threats, users = world["iocs"], world["threats"], world["users"]
    two, source = world["ioc"]["two"], world["threat"][0]
    tagged = iocs.post(
        "/api/v1/iocs/batch",
        json={"iocs": [{"value": "two.tie-tlp.com", "tlp": "amber", "tags": ["tiesource:loader"]}]},
        headers=users["red"],
    )
    assert tagged.status_code == 200, tagged.get_json()
    # Without the red relation, two scores 60 (its tag) and is not linked: what the amber analyst's run sees.
    amber_run = threats.post("/api/v1/threats/correlate", json={"threat_id": source, "link": False}, headers=users["amber"]).get_json()
    assert [(c["ioc_id"], c["score"]) for c in amber_run["candidates"]] == [(two, 60)], amber_run
    red_run = threats.post("/api/v1/threats/correlate", json={"threat_id": source}, headers=users["red"]).get_json()
    assert [(c["ioc_id"], c["score"], c["linked"]) for c in red_run["candidates"]] == [(two, 84, True)], red_run
    seen_by_reader = threats.get(f"/api/v1/threats/by-ioc/{two}", headers=users["reader"]).get_json()
    assert seen_by_reader["threats"] == [], seen_by_reader
    assert threats.get(f"/api/v1/threats/{source}", headers=users["reader"]).get_json()["ioc_count"] == 0
    seen_by_red = threats.get(f"/api/v1/threats/by-ioc/{two}", headers=users["red"]).get_json()
    assert [(t["name"], t["relation"], t["tlp"]) for t in seen_by_red["threats"]] == [("TieSource", "correlated", "red")], seen_by_red


def test_the_enrichments_correlation_reasons_on_an_ioc_tell_its_readers_nothing_above_its_tlp(world, backend_env):
    """The enrichment correlates the threats its evidence names reading every TLP, and records each candidate's
    reasons on the enriched IoC's verdict, which every reader of the IoC sees (GET /iocs/{id}/enrichment). They named
    a red relation and its red-linked seed ("IoC 1 resolves-to it") and a red threat by its name to amber readers of
    an amber IoC."""
    from threatflow.enrichment.verdict import Merged
    from threatflow.intel import enrichment as intel_enrichment

    _red_ties(world)  # TieSource -red-> one (indicates), one -red-> two (resolves-to)
    threats, users = world["threats"], world["users"]
    two = world["ioc"]["two"]
    hidden = threats.post(
        "/api/v1/threats/batch", json={"threats": [{"kind": "malware", "name": "TieHidden", "tlp": "red"}]}, headers=users["red"]
    )
    assert hidden.status_code == 200, hidden.get_json()
    engine = create_engine(Settings.from_env({"DATABASE_URL": backend_env["DATABASE_URL"]}))
    try:
        with engine.begin() as conn:
            intel_enrichment.apply_verdict(
                conn,
                ioc_id=two,
                run_id="tie-tlp-run",
                merged=Merged("malicious", 80, []),
                results=[{"source": "otx", "evidence": {"malware_families": ["TieSource", "TieHidden"]}}],
            )
    finally:
        engine.dispose()

    def reasons(headers):
        verdict = world["iocs"].get(f"/api/v1/iocs/{two}/enrichment", headers=headers).get_json()["verdict"]
        return sorted((r["threat"], r["reason"]) for r in verdict["reasons"] if r.get("kind") == "threat")

    family = "evidence from otx: malware_family 'TieSource' is the name 'TieSource' (85)"
    assert reasons(users["reader"]) == [("TieSource", family)]
    red_reasons = reasons(users["red"])  # the same record: the verdict is the IoC's, shown to each of its readers
    assert red_reasons == [("TieSource", family)], red_reasons
    # The links themselves are made from everything the enrichment read, each as strict as what it was made from.
    seen_by_red = threats.get(f"/api/v1/threats/by-ioc/{two}", headers=users["red"]).get_json()
    assert sorted((t["name"], t["tlp"]) for t in seen_by_red["threats"]) == [("TieHidden", "red"), ("TieSource", "amber")], seen_by_red


def test_a_writer_reposting_a_tie_above_their_clearance_leaves_its_confidence_as_it_was(world):
    """An amber analyst naming a red tie's two ends and verb again (a link, an IoC relation, a threat relation) with
    a higher confidence changed the red tie: its confidence rose to theirs, which red readers then read as the
    strength of the red statement. The answer is unchanged (`already_linked`, `created: false`); the tie is too."""
    _red_ties(world)  # each red tie at the routes' default confidence, 50
    iocs, threats, users = world["iocs"], world["threats"], world["users"]
    one, two = world["ioc"]["one"], world["ioc"]["two"]
    source, target = world["threat"]
    amber = users["amber"]
    relink = threats.post(f"/api/v1/threats/{source}/link", json={"ioc_ids": [one], "confidence": 100}, headers=amber)
    assert relink.get_json()["results"] == [{"ioc_id": one, "status": "already_linked"}], relink.get_json()
    relate = iocs.post(f"/api/v1/iocs/{one}/relations", json={"target_id": two, "type": "resolves-to", "confidence": 99}, headers=amber)
    assert (relate.status_code, relate.get_json()["created"]) == (200, False), relate.get_json()
    related = threats.post(
        f"/api/v1/threats/{source}/relations", json={"target_id": target, "type": "uses", "confidence": 98}, headers=amber
    )
    assert (related.status_code, related.get_json()["created"]) == (200, False), related.get_json()
    red = users["red"]
    link = threats.get(f"/api/v1/threats/by-ioc/{one}", headers=red).get_json()["threats"]
    relation = iocs.get(f"/api/v1/iocs/{one}/related", headers=red).get_json()["relations"]
    threat_relation = threats.get(f"/api/v1/threats/{source}", headers=red).get_json()["relations"]
    assert [(t["confidence"], t["tlp"]) for t in link] == [(50, "red")], link
    assert [(r["confidence"], r["tlp"]) for r in relation] == [(50, "red")], relation
    assert [(r["confidence"], r["tlp"]) for r in threat_relation] == [(50, "red")], threat_relation
    # Within the writer's clearance a re-post still raises the confidence: the red analyst's own.
    threats.post(f"/api/v1/threats/{source}/link", json={"ioc_ids": [one], "confidence": 90}, headers=red)
    assert [t["confidence"] for t in threats.get(f"/api/v1/threats/by-ioc/{one}", headers=red).get_json()["threats"]] == [90]


def test_an_import_stating_a_tie_held_above_the_importers_clearance_leaves_its_confidence_as_it_was(world):
    """An amber analyst's import stating a link, an IoC relation and a threat relation held red (at confidence 20)
    raised each red tie to the import's confidence (50), as a re-post through the routes did."""
    iocs, threats, users = world["iocs"], world["threats"], world["users"]
    one, two = world["ioc"]["one"], world["ioc"]["two"]
    source, target = world["threat"]
    red = users["red"]
    made = [
        threats.post(f"/api/v1/threats/{source}/link", json={"ioc_ids": [one], "tlp": "red", "confidence": 20}, headers=red),
        iocs.post(
            f"/api/v1/iocs/{one}/relations", json={"target_id": two, "type": "resolves-to", "tlp": "red", "confidence": 20}, headers=red
        ),
        threats.post(
            f"/api/v1/threats/{source}/relations", json={"target_id": target, "type": "uses", "tlp": "red", "confidence": 20}, headers=red
        ),
    ]
    assert [m.status_code for m in made] == [200, 201, 201], [m.get_json() for m in made]

    def indicator(n, value):
        return _sdo("indicator", n, pattern=f"[domain-name:value = '{value}']", pattern_type="stix", valid_from="2024-01-01T00:00:00Z")

    def rel(n, verb, a, b):
        return _sdo("relationship", n, relationship_type=verb, source_ref=a["id"], target_ref=b["id"])

    first, second = indicator(11, "one.tie-tlp.com"), indicator(12, "two.tie-tlp.com")
    family, tool = _sdo("malware", 13, name="TieSource", is_family=True), _sdo("tool", 14, name="TieTarget")
    ties = [rel(15, "indicates", first, family), rel(16, "resolves-to", first, second), rel(17, "uses", family, tool)]
    bundle = {"type": "bundle", "id": "bundle--00000019-0000-4000-8000-00000000cd01", "objects": [first, second, family, tool, *ties]}
    imported = iocs.post("/api/v1/iocs/import", json={"format": "stix", "content": bundle, "tlp": "amber"}, headers=users["amber"])
    assert imported.status_code == 200, imported.get_data(as_text=True)[:500]
    body = imported.get_json()
    assert [body[k] for k in ("links", "relations", "threat_relations")] == [1, 1, 1], body
    link = threats.get(f"/api/v1/threats/by-ioc/{one}", headers=red).get_json()["threats"]
    relation = iocs.get(f"/api/v1/iocs/{one}/related", headers=red).get_json()["relations"]
    threat_relation = threats.get(f"/api/v1/threats/{source}", headers=red).get_json()["relations"]
    assert [(t["confidence"], t["tlp"]) for t in link] == [(20, "red")], link
    assert [(r["confidence"], r["tlp"]) for r in relation] == [(20, "red")], relation
    assert [(r["confidence"], r["tlp"]) for r in threat_relation] == [(20, "red")], threat_relation
