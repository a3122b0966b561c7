"""The threats function (and the threat routes on the iocs function) over their real
HTTP surface, against PostgreSQL, with the shared ATT&CK file."""

import uuid

import pytest
from helpers import IntelApi, require_shared_data

pytestmark = pytest.mark.integration
ALL_TLPS = ("clear", "green", "amber", "amber+strict", "red")  # a writer cleared for everything


@pytest.fixture
def api(function_client, backend_env, monkeypatch):
    monkeypatch.setenv("ATTACK_DATA_PATH", str(require_shared_data("attack", "attack_techniques.json")))

    class Api(IntelApi):
        def batch(self, *items):
            response = self.post("/api/v1/threats/batch", {"threats": list(items)})
            assert response.status_code == 200, response.get_json()
            return response.get_json()

        def iocs(self, *items):
            response = self.post("/api/v1/iocs/batch", {"iocs": list(items)})
            results = response.get_json()["results"]
            assert response.status_code == 200 and all("id" in r for r in results), results
            return [r["id"] for r in results]

    return Api(function_client, backend_env["DATABASE_URL"], ("analyst", "admin", "reader"))


EMOTET = {"kind": "malware", "name": "Emotet", "aliases": ["Geodo", "Heodo"], "ttps": ["T1059.001"], "tags": ["Banking"]}


def test_batch_creates_then_merges_by_alias(api):
    first = api.batch(EMOTET)
    assert first["results"] == [{"index": 0, "status": "created", "id": first["results"][0]["id"]}]
    threat_id = first["results"][0]["id"]
    # The alias as a name, in another case: the same threat, merged.
    second = api.batch(
        {
            "kind": "malware",
            "name": "geodo",
            "aliases": ["Emotet Loader", "HEODO"],
            "ttps": ["t1566"],
            "tags": ["loader"],
            "first_seen": "2014-06-01T00:00:00Z",
            "references": [{"source_name": "malpedia", "url": "https://malpedia.caad.fkie.fraunhofer.de/details/win.emotet"}],
        }
    )
    assert second["results"][0] == {"index": 0, "status": "updated", "id": threat_id}
    threat = api.get(f"/api/v1/threats/{threat_id}").get_json()
    assert threat["name"] == "Emotet" and threat["kind"] == "malware"
    assert threat["aliases"] == ["Geodo", "Heodo", "Emotet Loader"]
    assert threat["ttps"] == ["T1059.001", "T1566"] and threat["tags"] == ["banking", "loader"]
    assert threat["first_seen"].startswith("2014-06-01")
    assert threat["references"][0]["source_name"] == "malpedia"
    assert {t["id"]: t["name"] for t in threat["ttp_details"]} == {"T1059.001": "PowerShell", "T1566": "Phishing"}
    assert threat["ioc_count"] == 0
    # The same again changes nothing; and there is still one threat.
    assert api.batch(EMOTET)["results"][0] == {"index": 0, "status": "unchanged", "id": threat_id}
    assert api.get("/api/v1/threats/stats").get_json()["total"] == 1


def test_items_of_one_batch_sharing_a_name_merge(api):
    result = api.batch(
        {"kind": "intrusion-set", "name": "APT28", "aliases": ["Fancy Bear"]},
        {"kind": "intrusion-set", "name": "fancy bear", "aliases": ["Sofacy"]},
        {"kind": "intrusion-set", "name": "APT29", "aliases": ["Cozy Bear"]},
    )
    r = result["results"]
    assert r[0]["status"] == "created" and r[1]["status"] == "updated" and r[0]["id"] == r[1]["id"]
    assert "merged with item 0" in r[1]["reason"]
    assert r[2]["status"] == "created" and r[2]["id"] != r[0]["id"]
    # Names that belong to two different threats are refused, naming both.
    clash = api.batch({"kind": "intrusion-set", "name": "Sofacy", "aliases": ["Cozy Bear"]})["results"][0]
    assert clash["status"] == "rejected"
    assert f"is threat {r[0]['id']}" in clash["reason"] and f"is threat {r[2]['id']}" in clash["reason"]


def test_bad_items_are_rejected_alone(api):
    result = api.batch(
        {"kind": "tool", "name": "Mimikatz", "ttps": ["T1003.001"]},
        {"kind": "tool", "name": "Bad TTP", "ttps": ["T1059", "T9999"]},
        {"kind": "tool", "name": "Old TTP", "ttps": ["T1086"]},
        {"kind": "spaceship", "name": "Nope"},
        {"kind": "tool", "name": "Deprecated TTP", "ttps": ["T1064"]},
        {"kind": "tool", "name": "Bad time", "first_seen": "2020-01-01T00:00:00"},
    )
    statuses = [r["status"] for r in result["results"]]
    assert statuses == ["created", "rejected", "rejected", "rejected", "created", "rejected"]
    reasons = [r.get("reason") or "" for r in result["results"]]
    assert "T9999: unknown ATT&CK technique" in reasons[1] and "T1059" not in reasons[1].replace("T1059.", "")
    assert "T1086: revoked ATT&CK technique (PowerShell)" in reasons[2]
    assert "kind" in reasons[3]
    assert "T1064: deprecated ATT&CK technique (Scripting)" in reasons[4]
    assert "time zone" in reasons[5]
    assert result["summary"]["created"] == 2 and result["summary"]["rejected"] == 4 and result["summary"]["total"] == 6


def test_batch_limit_and_missing_attack_data(api, monkeypatch):
    too_many = api.post("/api/v1/threats/batch", {"threats": [{"kind": "tool", "name": f"t{i}"} for i in range(1001)]})
    assert too_many.status_code == 413
    monkeypatch.delenv("ATTACK_DATA_PATH")
    monkeypatch.setenv("BUCKET_MODELS", f"never-synced-{uuid.uuid4().hex[:8]}")  # no sync-attack snapshot there
    api.restart()
    plain = api.batch({"kind": "tool", "name": "No TTPs"})
    assert plain["results"][0]["status"] == "created"
    response = api.post("/api/v1/threats/batch", {"threats": [{"kind": "tool", "name": "With TTPs", "ttps": ["T1059"]}]})
    assert response.status_code == 503 and response.headers["Retry-After"]  # a missing dependency, not a bug
    message = response.get_json()["error"]["message"]
    assert "run the sync-attack job" in message and "ATTACK_DATA_PATH" in message


def test_find_filters_and_pages(api):
    api.batch(
        {"kind": "malware", "name": "TrickBot", "aliases": ["TrickLoader"], "tags": ["banking"], "ttps": ["T1055"]},
        {"kind": "malware", "name": "QakBot", "aliases": ["Qbot"], "tags": ["banking", "loader"], "ttps": ["T1059.001"]},
        {"kind": "threat-actor", "name": "Wizard Spider", "description": "Operates TrickBot and Conti", "ttps": ["T1055"]},
        {"kind": "campaign", "name": "Operation Ghost", "tags": ["espionage"]},
        {"kind": "tool", "name": "Cobalt Strike", "tags": ["loader"]},
    )

    def names(body):
        response = api.post("/api/v1/threats/find", body, headers=api.reader)
        assert response.status_code == 200, response.get_json()
        return sorted(t["name"] for t in response.get_json()["threats"])

    assert names({"kind": "malware"}) == ["QakBot", "TrickBot"]
    assert names({"kind": ["campaign", "tool"]}) == ["Cobalt Strike", "Operation Ghost"]
    assert names({"tag": "LOADER"}) == ["Cobalt Strike", "QakBot"]
    assert names({"ttp": "t1055"}) == ["TrickBot", "Wizard Spider"]
    assert names({"alias": "qbot"}) == ["QakBot"]
    assert names({"alias": "QakBot"}) == ["QakBot"]  # the name counts as an alias too
    assert names({"text": "trick"}) == ["TrickBot", "Wizard Spider"]  # name, alias or description
    assert names({"kind": "malware", "tag": "loader"}) == ["QakBot"]
    bad = api.post("/api/v1/threats/find", {"kind": "spaceship"}, headers=api.reader)
    assert bad.status_code == 400 and bad.get_json()["error"]["details"]["field"] == "kind"
    seen, cursor, pages = [], None, 0
    while True:
        page = api.post("/api/v1/threats/find", {"limit": 2, **({"cursor": cursor} if cursor else {})}, headers=api.reader).get_json()
        seen += [t["id"] for t in page["threats"]]
        pages += 1
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert pages == 3 and len(seen) == len(set(seen)) == 5 and seen == sorted(seen, reverse=True)
    assert api.post("/api/v1/threats/find", {"cursor": "garbage"}, headers=api.reader).status_code == 400


def test_by_ttp_includes_sub_techniques_of_a_parent(api):
    api.batch(
        {"kind": "malware", "name": "PS Thing", "ttps": ["T1059.001"]},
        {"kind": "malware", "name": "Shell Thing", "ttps": ["T1059"]},
        {"kind": "malware", "name": "Other", "ttps": ["T1055"]},
    )

    def names(path):
        response = api.get(path)
        assert response.status_code == 200, response.get_json()
        return sorted(t["name"] for t in response.get_json()["threats"])

    assert names("/api/v1/threats/by-ttp/T1059") == ["PS Thing", "Shell Thing"]
    assert names("/api/v1/threats/by-ttp/t1059?exact=true") == ["Shell Thing"]
    assert names("/api/v1/threats/by-ttp/T1059.001") == ["PS Thing"]
    body = api.get("/api/v1/threats/by-ttp/T1059.001").get_json()
    assert body["technique"]["name"] == "PowerShell"
    unknown = api.get("/api/v1/threats/by-ttp/T9999")
    assert unknown.status_code == 400 and "T9999" in unknown.get_json()["error"]["message"]
    revoked = api.get("/api/v1/threats/by-ttp/T1086")
    assert revoked.status_code == 400 and "revoked" in revoked.get_json()["error"]["message"]


def test_link_unlink_and_by_ioc(api):
    threat_id = api.batch(EMOTET)["results"][0]["id"]
    a, b = api.iocs({"value": "evil-emotet.com"}, {"value": "203.0.113.7"})
    linked = api.post(f"/api/v1/threats/{threat_id}/link", {"ioc_ids": [a, b, 999999], "confidence": 70})
    assert linked.status_code == 200, linked.get_json()
    assert [(r["ioc_id"], r["status"]) for r in linked.get_json()["results"]] == [(a, "linked"), (b, "linked"), (999999, "not_found")]
    assert "999999" in linked.get_json()["results"][2]["reason"]
    again = api.post(f"/api/v1/threats/{threat_id}/link", {"ioc_ids": [a], "confidence": 90}).get_json()
    assert again["results"] == [{"ioc_id": a, "status": "already_linked", "tlp": "amber"}]  # its own TLP: its ends' (amber)
    uses = api.post(f"/api/v1/threats/{threat_id}/link", {"ioc_ids": [a], "relation": "uses"}).get_json()
    assert uses["results"][0]["status"] == "linked"
    by_ioc = api.get(f"/api/v1/threats/by-ioc/{a}").get_json()
    assert [(t["id"], t["relation"], t["confidence"]) for t in by_ioc["threats"]] == [(threat_id, "indicates", 90), (threat_id, "uses", 50)]
    assert by_ioc["threats"][0]["source"] == "user:analyst1"
    threat = api.get(f"/api/v1/threats/{threat_id}").get_json()
    assert threat["ioc_count"] == 2 and threat["ioc_count_by_relation"] == {"indicates": 2, "uses": 1}
    unlinked = api.post(f"/api/v1/threats/{threat_id}/unlink", {"ioc_ids": [a, 424242], "relation": "uses"}).get_json()
    assert unlinked["results"] == [{"ioc_id": a, "status": "unlinked", "removed": 1}, {"ioc_id": 424242, "status": "not_linked"}]
    assert api.post(f"/api/v1/threats/{threat_id}/unlink", {"ioc_ids": [a]}).get_json()["results"][0]["removed"] == 1
    assert [t["relation"] for t in api.get(f"/api/v1/threats/by-ioc/{a}").get_json()["threats"]] == []
    assert api.post("/api/v1/threats/999999/link", {"ioc_ids": [a]}).status_code == 404
    assert api.get("/api/v1/threats/by-ioc/999999").status_code == 404
    bad = api.post(f"/api/v1/threats/{threat_id}/link", {"ioc_ids": [a], "relation": "Is Related!"})
    assert bad.status_code == 400 and bad.get_json()["error"]["details"]["field"] == "relation"


def test_relations_and_related_view(api):
    threat_id = api.batch({"kind": "malware", "name": "Dridex"})["results"][0]["id"]
    domain, ip, url, other = api.iocs(
        {"value": "dridex-c2.com", "tags": ["campaign-x42", "malicious"]},
        {"value": "198.51.100.9", "tags": ["campaign-x42"]},
        {"value": "http://dridex-c2.com/payload.bin"},
        {"value": "unrelated.com", "tags": ["malicious"]},
    )
    path = f"/api/v1/iocs/{domain}/relations"
    first = api.post(path, {"target_id": ip, "type": "resolves-to", "confidence": 80})
    assert first.status_code == 201 and first.get_json()["created"] is True
    assert api.post(path, {"target_id": ip, "type": "communicates-with"}).status_code == 201  # several types per pair
    repeat = api.post(path, {"target_id": ip, "type": "resolves-to"})
    assert repeat.status_code == 200 and repeat.get_json()["created"] is False
    assert api.post(f"/api/v1/iocs/{url}/relations", {"target_id": domain, "type": "related-to"}).status_code == 201
    self_rel = api.post(path, {"target_id": domain, "type": "related-to"})
    assert self_rel.status_code == 400 and self_rel.get_json()["error"]["details"]["field"] == "target_id"
    missing = api.post(path, {"target_id": 999999, "type": "drops"})
    assert missing.status_code == 404 and "999999" in missing.get_json()["error"]["message"]
    bad_type = api.post(path, {"target_id": ip, "type": "eats"})
    assert bad_type.status_code == 400 and bad_type.get_json()["error"]["details"]["field"] == "type"
    api.post(f"/api/v1/threats/{threat_id}/link", {"ioc_ids": [domain], "confidence": 75})

    related = api.get(f"/api/v1/iocs/{domain}/related")
    assert related.status_code == 200, related.get_json()
    body = related.get_json()
    assert [(t["id"], t["relation"], t["confidence"]) for t in body["threats"]] == [(threat_id, "indicates", 75)]
    assert sorted((r["direction"], r["type"], r["ioc"]["id"]) for r in body["relations"]) == [
        ("in", "related-to", url),
        ("out", "communicates-with", ip),
        ("out", "resolves-to", ip),
    ]
    assert body["relations"][0]["ioc"]["value"]
    shared = {s["ioc"]["id"]: s["shared_tags"] for s in body["shared_evidence"]}
    assert shared[ip] == ["campaign-x42"] and shared[other] == ["malicious"]
    assert domain not in shared
    ip_view = api.get(f"/api/v1/iocs/{ip}/related").get_json()
    assert {(r["direction"], r["type"]) for r in ip_view["relations"]} == {("in", "resolves-to"), ("in", "communicates-with")}
    assert api.get("/api/v1/iocs/999999/related").status_code == 404

    removed = api.delete(path, {"target_id": ip, "type": "resolves-to"}, headers=api.analyst)
    assert removed.get_json() == {"deleted": 1}
    assert api.delete(path, {"target_id": ip}, headers=api.analyst).get_json() == {"deleted": 1}
    assert api.get(f"/api/v1/iocs/{domain}/related").get_json()["relations"] == [
        {
            "direction": "in",
            "type": "related-to",
            "confidence": 50,
            "source": "user:analyst1",
            "tlp": "amber",
            "ioc": {"id": url, "type": "url", "value": "http://dridex-c2.com/payload.bin"},
        }
    ]


def test_correlate_links_matches_once(api):
    threat_id = api.batch(EMOTET)["results"][0]["id"]
    other_id = api.batch({"kind": "malware", "name": "TrickBot"})["results"][0]["id"]
    tagged, galaxy, aliased, unrelated, dropped = api.iocs(
        {"value": "emotet-c2.com", "tags": ["malware:emotet"]},
        {"value": "203.0.113.50", "tags": ['misp-galaxy:malpedia="Emotet"']},
        {"value": "heodo-drop.com", "tags": ["heodo"]},
        {"value": "trick-c2.com", "tags": ["trickbot", "emotetish"]},
        {"value": "d41d8cd98f00b204e9800998ecf8427e"},
    )
    assert api.post(f"/api/v1/iocs/{tagged}/relations", {"target_id": dropped, "type": "drops"}).status_code == 201
    response = api.post("/api/v1/threats/correlate", {"threat_id": threat_id, "threshold": 70})
    assert response.status_code == 200, response.get_json()
    body = response.get_json()
    scores = {c["ioc_id"]: c["score"] for c in body["candidates"]}
    assert scores[aliased] == 90 and scores[tagged] == 80 and scores[galaxy] == 80
    assert scores[dropped] == 60  # related to a matched IoC, below the threshold
    assert unrelated not in scores
    assert body["linked"] == 3
    reasons = {c["ioc_id"]: c["reasons"] for c in body["candidates"]}
    assert any("malware:emotet" in r for r in reasons[tagged])
    assert any(f"IoC {tagged} drops it" in r for r in reasons[dropped])
    by_ioc = api.get(f"/api/v1/threats/by-ioc/{tagged}").get_json()["threats"]
    assert [(t["id"], t["relation"], t["confidence"]) for t in by_ioc] == [(threat_id, "correlated", 80)]
    assert api.get(f"/api/v1/threats/by-ioc/{dropped}").get_json()["threats"] == []
    assert api.get(f"/api/v1/threats/by-ioc/{unrelated}").get_json()["threats"] == []
    # Idempotent: the same run again links nothing new.
    again = api.post("/api/v1/threats/correlate", {"threat_id": threat_id, "threshold": 70}).get_json()
    assert again["linked"] == 0 and all(c["already_linked"] for c in again["candidates"] if c["score"] >= 70)
    # A dry run at a lower threshold reports without linking.
    dry = api.post("/api/v1/threats/correlate", {"threat_id": threat_id, "threshold": 50, "link": False}).get_json()
    assert dry["linked"] == 0 and api.get(f"/api/v1/threats/by-ioc/{dropped}").get_json()["threats"] == []
    # The other threat finds only its own.
    trick = api.post("/api/v1/threats/correlate", {"threat_id": other_id}).get_json()
    assert [c["ioc_id"] for c in trick["candidates"]] == [unrelated] and trick["linked"] == 1
    assert api.post("/api/v1/threats/correlate", {"threat_id": 999999}).status_code == 404


def test_delete_stats_and_roles(api):
    ids = [
        r["id"] for r in api.batch(EMOTET, {"kind": "tool", "name": "Mimikatz", "ttps": ["T1003.001"], "tags": ["credential"]})["results"]
    ]
    (ioc,) = api.iocs({"value": "mimi.com"})
    api.post(f"/api/v1/threats/{ids[1]}/link", {"ioc_ids": [ioc]})
    stats = api.get("/api/v1/threats/stats").get_json()
    assert stats["total"] == 2 and stats["by_kind"] == {"malware": 1, "tool": 1}
    assert {t["id"]: t["name"] for t in stats["top_ttps"]} == {"T1003.001": "LSASS Memory", "T1059.001": "PowerShell"}
    assert {t["tag"] for t in stats["top_tags"]} == {"banking", "credential"}
    assert stats["links"]["total"] == 1 and stats["links"]["top_threats"] == [{"id": ids[1], "name": "Mimikatz", "iocs": 1}]

    # Readers read; writes need analyst; delete needs admin.
    assert api.post("/api/v1/threats/batch", {"threats": [EMOTET]}, headers=api.reader).status_code == 403
    assert api.post(f"/api/v1/threats/{ids[0]}/link", {"ioc_ids": [ioc]}, headers=api.reader).status_code == 403
    assert api.post(f"/api/v1/threats/{ids[0]}/unlink", {"ioc_ids": [ioc]}, headers=api.reader).status_code == 403
    assert api.post("/api/v1/threats/correlate", {"threat_id": ids[0]}, headers=api.reader).status_code == 403
    assert api.post(f"/api/v1/iocs/{ioc}/relations", {"target_id": ioc, "type": "drops"}, headers=api.reader).status_code == 403
    assert api.delete("/api/v1/threats", {"ids": ids}, headers=api.analyst).status_code == 403
    assert api.get("/api/v1/threats/stats", headers={}).status_code == 401

    deleted = api.delete("/api/v1/threats", {"ids": [ids[1], 999999]})
    assert deleted.status_code == 200 and deleted.get_json() == {"deleted": 1, "not_found": [999999]}
    assert api.get(f"/api/v1/threats/{ids[1]}").status_code == 404
    assert api.get(f"/api/v1/threats/by-ioc/{ioc}").get_json()["threats"] == []  # links went with it
    # Its names are free again.
    assert api.batch({"kind": "tool", "name": "mimikatz"})["results"][0]["status"] == "created"


@pytest.fixture
def engine(backend_env):
    from threatflow.adapters.postgres import create_engine
    from threatflow.platform.config import Settings

    engine = create_engine(Settings.from_env({"DATABASE_URL": backend_env["DATABASE_URL"]}))
    yield engine
    engine.dispose()


def test_store_interface_composes_one_transaction(api, engine):
    """What STIX/MISP import and export call: store functions on one connection."""
    from threatflow.intel import repository as links
    from threatflow.platform.errors import NotFoundError
    from threatflow.threats import repository as store
    from threatflow.threats.attack import AttackCatalog
    from threatflow.threats.model import Reference, ThreatIn, ThreatKind

    catalog = AttackCatalog.load(require_shared_data("attack", "attack_techniques.json"))
    a, b = api.iocs({"value": "stix-c2.com"}, {"value": "192.0.2.44"})
    items = [
        ThreatIn(
            kind=ThreatKind.INTRUSION_SET,
            name="APT28",
            aliases=["Sofacy"],
            ttps=["T1059.001"],
            stix_id="intrusion-set--bef4c620-0787-42a8-a96d-b7eb6e85917c",
            tlp="TLP:GREEN",
            references=[Reference(source_name="mitre-attack", external_id="G0007")],
        ),
        ThreatIn(kind=ThreatKind.MALWARE, name="Secret", tlp="red", ttps=["T1086"]),
    ]
    with engine.begin() as conn:
        results = store.upsert_threats(conn, items, catalog=catalog, readable=ALL_TLPS)
        assert [r.status for r in results] == ["created", "rejected"]
        assert "T1086: revoked ATT&CK technique (PowerShell)" in results[1].reason
        threat_id = results[0].id
        assert links.link_ioc(conn, threat_id=threat_id, ioc_id=a) is True
        assert links.link_ioc(conn, threat_id=threat_id, ioc_id=a, confidence=80) is False
        assert links.add_ioc_relation(conn, source_id=a, target_id=b, type="resolves-to", visible_tlps=ALL_TLPS)[0] is True
        assert links.add_ioc_relation(conn, source_id=a, target_id=b, type="communicates-with", visible_tlps=ALL_TLPS)[0] is True
        with pytest.raises(NotFoundError, match="999999"):
            links.link_ioc(conn, threat_id=threat_id, ioc_id=999999)
    # A renamed object with the same stix_id merges into the same threat.
    with engine.begin() as conn:
        renamed = ThreatIn(kind=ThreatKind.INTRUSION_SET, name="Fancy Bear", stix_id="intrusion-set--bef4c620-0787-42a8-a96d-b7eb6e85917c")
        assert store.upsert_threats(conn, [renamed], catalog=None, readable=ALL_TLPS)[0].id == threat_id
        store.upsert_threats(conn, [ThreatIn(kind=ThreatKind.TOOL, name="Redacted", tlp="red")], catalog=None, readable=ALL_TLPS)
    with engine.connect() as conn:
        exported = store.threats_for_export(conn, max_tlp="amber")
        assert [t["name"] for t in exported] == ["APT28"]
        row = exported[0]
        assert row["aliases"] == ["Sofacy", "Fancy Bear"] and row["tlp"] == "green" and row["ttps"] == ["T1059.001"]
        assert row["references"] == [{"source_name": "mitre-attack", "external_id": "G0007"}]
        assert set(row) >= {"id", "kind", "description", "confidence", "severity", "first_seen", "last_seen", "stix_id", "created_at"}
        assert len(store.threats_for_export(conn)) == 2
        assert links.links_for_iocs(conn, [a, b], per_ioc=32, visible_tlps=ALL_TLPS) == (
            [{"threat_id": threat_id, "ioc_id": a, "relation": "indicates", "confidence": 80, "source": None, "tlp": "amber"}],
            False,
        )
        assert links.relations_among(conn, [b], limit=10, visible_tlps=ALL_TLPS) == []  # one end only: not read
        among = links.relations_among(conn, [a, b], limit=10, visible_tlps=ALL_TLPS)
        assert sorted((r["source_id"], r["target_id"], r["type"]) for r in among) == [(a, b, "communicates-with"), (a, b, "resolves-to")]
        assert len(links.relations_among(conn, [a, b], limit=1, visible_tlps=ALL_TLPS)) == 1


def test_correlate_reads_ioc_evidence(api, engine):
    """ioc_evidence belongs to the enrichment migration (0004); the rows this test adds are removed again."""
    from sqlalchemy import text

    threat_id = api.batch({"kind": "malware", "name": "QakBot", "aliases": ["Qbot"]})["results"][0]["id"]
    family, pulse, nothing = api.iocs({"value": "qak-c2.com"}, {"value": "192.0.2.77"}, {"value": "192.0.2.78"})
    try:
        with engine.begin() as conn:
            conn.execute(
                text(
                    "INSERT INTO ioc_evidence VALUES (:a, 'malwarebazaar', 'malware_family', 'Qbot'),"
                    " (:b, 'otx', 'pulse', 'QakBot returns in 2026')"
                ),
                {"a": family, "b": pulse},
            )
        body = api.post("/api/v1/threats/correlate", {"threat_id": threat_id, "threshold": 70}).get_json()
        scores = {c["ioc_id"]: c["score"] for c in body["candidates"]}
        assert body["evidence_table"] is True
        assert scores == {family: 85, pulse: 60} and nothing not in scores
        assert body["linked"] == 1
    finally:
        with engine.begin() as conn:
            conn.execute(text("DELETE FROM ioc_evidence WHERE ioc_id = ANY(CAST(:i AS bigint[]))"), {"i": [family, pulse]})


def test_items_of_one_batch_merging_into_one_threat_keep_the_most_restrictive_tlp_they_name(api):
    """Items of one batch (or import) that share a name or alias merge into one threat, and each given scalar
    replaced the one before: a report naming a family at amber and again at clear made it clear. The TLP is the
    most restrictive the items name, as for IoCs; a later batch may still set it (within the writer's clearance)."""
    first = api.batch({"kind": "malware", "name": "Dupli", "tlp": "amber"}, {"kind": "malware", "name": "dupli", "tlp": "clear"})
    threat_id = first["results"][0]["id"]
    assert api.get(f"/api/v1/threats/{threat_id}").get_json()["tlp"] == "amber"
    api.batch({"kind": "malware", "name": "Dupli", "tlp": "green"})
    again = api.batch({"kind": "malware", "name": "Dupli", "tlp": "clear"}, {"kind": "malware", "name": "Dupli", "aliases": ["D2"]})
    assert again["results"][0]["id"] == threat_id
    assert api.get(f"/api/v1/threats/{threat_id}").get_json()["tlp"] == "clear"
    mixed = api.batch({"kind": "malware", "name": "Dupli", "tlp": "amber"}, {"kind": "malware", "name": "D2", "tlp": "green"})
    assert mixed["results"][1]["id"] == threat_id
    assert api.get(f"/api/v1/threats/{threat_id}").get_json()["tlp"] == "amber"


def test_items_naming_one_stored_threat_by_different_names_all_merge_into_it(api):
    """Items of one batch that share no name with each other but each name one stored threat (one by its name, one by
    an alias) merge into it together: each was its own group, so the threat was updated once per item in one
    UPDATE ... FROM, of which PostgreSQL applies one row, which by the plan: the other item's tags and TLP were lost."""
    threat_id = api.batch({"kind": "malware", "name": "Twoname", "aliases": ["Twoalias"], "tlp": "green"})["results"][0]["id"]
    both = api.batch(
        {"kind": "malware", "name": "Twoname", "tags": ["by-name"], "tlp": "amber"},
        {"kind": "malware", "name": "Twoalias", "tags": ["by-alias"], "tlp": "clear"},
    )
    assert [r["id"] for r in both["results"]] == [threat_id, threat_id], both
    stored = api.get(f"/api/v1/threats/{threat_id}").get_json()
    assert {"by-name", "by-alias"} <= set(stored["tags"]), stored["tags"]
    assert stored["tlp"] == "amber"


def test_threats_are_related_to_threats_read_both_ways_and_removed(api, backend_env):
    """POST/DELETE /threats/{id}/relations: an intrusion set `uses` a malware, a campaign is `attributed-to` it.
    GET /threats/{id} shows the relations both ways with the threat at the other end; there was no such record,
    so a STIX report's relationships between threats were lost and none could be written by hand."""
    ids = [
        r["id"]
        for r in api.batch(
            {"kind": "intrusion-set", "name": "Rel Set"},
            {"kind": "malware", "name": "Rel Malware"},
            {"kind": "campaign", "name": "Rel Campaign"},
        )["results"]
    ]
    intrusion_set, malware, campaign = ids
    path = f"/api/v1/threats/{intrusion_set}/relations"
    made = api.post(path, {"target_id": malware, "type": "uses", "confidence": 80})
    assert made.status_code == 201, made.get_json()
    assert made.get_json() == {"source_id": intrusion_set, "target_id": malware, "type": "uses", "tlp": "amber", "created": True}
    repeat = api.post(path, {"target_id": malware, "type": "USES"})
    assert repeat.status_code == 200 and repeat.get_json()["created"] is False
    assert api.post(f"/api/v1/threats/{campaign}/relations", {"target_id": intrusion_set, "type": "attributed-to"}).status_code == 201

    view = api.get(f"/api/v1/threats/{intrusion_set}").get_json()
    assert view["relations"] == [
        {
            "direction": "out",
            "type": "uses",
            "confidence": 80,
            "source": "user:analyst1",
            "tlp": "amber",
            "threat": {"id": malware, "kind": "malware", "name": "Rel Malware"},
        },
        {
            "direction": "in",
            "type": "attributed-to",
            "confidence": 50,
            "source": "user:analyst1",
            "tlp": "amber",
            "threat": {"id": campaign, "kind": "campaign", "name": "Rel Campaign"},
        },
    ]
    assert view["relations_truncated"] is False
    assert [(r["direction"], r["type"], r["threat"]["id"]) for r in api.get(f"/api/v1/threats/{malware}").get_json()["relations"]] == [
        ("in", "uses", intrusion_set)
    ]

    itself = api.post(path, {"target_id": intrusion_set})
    assert itself.status_code == 400 and itself.get_json()["error"]["details"]["field"] == "target_id"
    missing = api.post(path, {"target_id": 999999})
    assert missing.status_code == 404 and "999999" in missing.get_json()["error"]["message"]
    assert api.post("/api/v1/threats/999999/relations", {"target_id": malware}).status_code == 404
    bad = api.post(path, {"target_id": malware, "type": "Is Related!"})
    assert bad.status_code == 400 and bad.get_json()["error"]["details"]["field"] == "relation"
    assert api.post(path, {"target_id": malware}, headers=api.reader).status_code == 403

    # A pair holds at most 8 verbs, as a threat and an IoC do; a new one past them is a 409, a repeat still answers.
    for verb in ("a1", "a2", "a3", "a4", "a5", "a6", "a7"):
        assert api.post(path, {"target_id": malware, "type": verb}).status_code == 201
    full = api.post(path, {"target_id": malware, "type": "a8"})
    assert full.status_code == 409 and "8 relations" in full.get_json()["error"]["message"]
    assert api.post(path, {"target_id": malware, "type": "uses"}).status_code == 200

    removed = api.delete(path, {"target_id": malware, "type": "uses"}, headers=api.analyst)
    assert removed.status_code == 200 and removed.get_json() == {"deleted": 1}
    assert api.delete(path, {"target_id": malware}, headers=api.analyst).get_json() == {"deleted": 7}
    assert api.delete(path, {"target_id": malware}, headers=api.reader).status_code == 403
    assert [r["threat"]["id"] for r in api.get(f"/api/v1/threats/{intrusion_set}").get_json()["relations"]] == [campaign]
    # Deleting a threat takes its relations with it.
    assert api.delete("/api/v1/threats", {"ids": [campaign]}).get_json()["deleted"] == 1
    assert api.get(f"/api/v1/threats/{intrusion_set}").get_json()["relations"] == []


def test_threat_relations_treat_a_threat_above_the_callers_clearance_as_absent(api, backend_env):
    """A red threat does not exist for an amber analyst or reader: relating to it or from it is a 404, as linking
    is, and a relation to it is left out of what an amber reader sees of the other threat."""
    from helpers import SqlDb

    amber, red = [r["id"] for r in api.batch({"kind": "malware", "name": "Rel Amber"}, {"kind": "malware", "name": "Rel Red"})["results"]]
    assert api.post(f"/api/v1/threats/{amber}/relations", {"target_id": red, "type": "variant-of"}).status_code == 201
    db = SqlDb(backend_env["DATABASE_URL"])
    try:
        db.execute("UPDATE threats SET tlp = 'red' WHERE id = %s", red)
    finally:
        db.close()
    assert api.get(f"/api/v1/threats/{amber}").get_json()["relations"] == []
    to_red = api.post(f"/api/v1/threats/{amber}/relations", {"target_id": red, "type": "uses"})
    assert to_red.status_code == 404 and str(red) in to_red.get_json()["error"]["message"]
    assert api.post(f"/api/v1/threats/{red}/relations", {"target_id": amber}).status_code == 404
    assert api.delete(f"/api/v1/threats/{amber}/relations", {"target_id": red}, headers=api.analyst).status_code == 404


def test_relation_and_link_verbs_spelled_with_spaces_underscores_or_capitals_are_read_as_their_tidy_word(api):
    """`Attributed To`, `attributed_to` and ` Uses ` were a 400 on POST /threats/{id}/relations (and such link verbs on
    /link): they are the verbs attributed-to and uses (lower-case, trimmed, runs of spaces and underscores one
    hyphen), on every route that reads a verb. A verb that is still no tidy word is a 400 naming it."""
    campaign, intrusion_set, malware = (
        r["id"]
        for r in api.batch(
            {"kind": "campaign", "name": "Spelt Campaign"},
            {"kind": "intrusion-set", "name": "Spelt Set"},
            {"kind": "malware", "name": "Spelt RAT"},
        )["results"]
    )
    made = api.post(f"/api/v1/threats/{campaign}/relations", {"target_id": intrusion_set, "type": "Attributed To"})
    assert made.status_code == 201, made.get_json()
    assert made.get_json()["type"] == "attributed-to"
    again = api.post(f"/api/v1/threats/{campaign}/relations", {"target_id": intrusion_set, "type": "attributed_to"})
    assert (again.status_code, again.get_json()["created"]) == (200, False)
    assert api.post(f"/api/v1/threats/{intrusion_set}/relations", {"target_id": malware, "type": " Uses "}).get_json()["type"] == "uses"
    view = api.get(f"/api/v1/threats/{intrusion_set}").get_json()["relations"]
    assert sorted((r["direction"], r["type"]) for r in view) == [("in", "attributed-to"), ("out", "uses")]
    unrelate = {"target_id": intrusion_set, "type": "ATTRIBUTED TO"}
    removed = api.delete(f"/api/v1/threats/{campaign}/relations", unrelate, headers=api.analyst)
    assert removed.get_json() == {"deleted": 1}
    for verb in ("Is Related!", "_", "attributed to!"):
        refused = api.post(f"/api/v1/threats/{intrusion_set}/relations", {"target_id": malware, "type": verb})
        assert (refused.status_code, refused.get_json()["error"]["details"]["field"]) == (400, "relation"), verb

    (ioc,) = api.iocs({"value": "spelt-rat.example.net"})
    linked = api.post(f"/api/v1/threats/{malware}/link", {"ioc_ids": [ioc], "relation": "Communicates_With"}).get_json()
    assert linked["relation"] == "communicates-with" and linked["results"][0]["status"] == "linked"
    assert [t["relation"] for t in api.get(f"/api/v1/threats/by-ioc/{ioc}").get_json()["threats"]] == ["communicates-with"]
    unlinked = api.post(f"/api/v1/threats/{malware}/unlink", {"ioc_ids": [ioc], "relation": "Communicates With"}).get_json()
    assert unlinked["results"] == [{"ioc_id": ioc, "status": "unlinked", "removed": 1}]


def test_relation_and_link_verbs_with_separators_at_either_end_are_read_without_them(api):
    """`uses_` and `uses-` were stored as `uses-`, a second verb beside `uses`, and `_uses` was a 400: a separator at
    either end joins nothing and is dropped, on the relation routes, /link and /unlink."""
    actor, malware = (
        r["id"] for r in api.batch({"kind": "intrusion-set", "name": "Edge Set"}, {"kind": "malware", "name": "Edge RAT"})["results"]
    )
    made = api.post(f"/api/v1/threats/{actor}/relations", {"target_id": malware, "type": "uses_"})
    assert (made.status_code, made.get_json()["type"]) == (201, "uses"), made.get_json()
    for verb in ("uses-", "_uses", " -uses_ "):
        again = api.post(f"/api/v1/threats/{actor}/relations", {"target_id": malware, "type": verb})
        assert (again.status_code, again.get_json()["type"], again.get_json()["created"]) == (200, "uses", False), verb
    assert [(r["direction"], r["type"]) for r in api.get(f"/api/v1/threats/{actor}").get_json()["relations"]] == [("out", "uses")]

    (ioc,) = api.iocs({"value": "edge-rat.example.net"})
    linked = api.post(f"/api/v1/threats/{malware}/link", {"ioc_ids": [ioc], "relation": "communicates_with_"}).get_json()
    assert linked["relation"] == "communicates-with", linked
    unlinked = api.post(f"/api/v1/threats/{malware}/unlink", {"ioc_ids": [ioc], "relation": "-communicates-with"}).get_json()
    assert unlinked["results"] == [{"ioc_id": ioc, "status": "unlinked", "removed": 1}]
    removed = api.delete(f"/api/v1/threats/{actor}/relations", {"target_id": malware, "type": "_uses_"}, headers=api.analyst)
    assert removed.get_json() == {"deleted": 1}
