"""The write paths bounded here, fuzzed (Hypothesis) in the style of test_fuzz_bounds2.py: threat TTPs and references
(/threats/batch into an amber threat full of both and into a red one, as an amber and a red analyst), IoC
sightings (POST /iocs/{id}/sightings: sources and contexts of every shape, into a full IoC) and threat links
(POST /threats/{id}/link: verbs and ids of every shape). Never a 5xx or a non-JSON error, and after every request: no
threat holds more than 512 TTPs or 256 references, no IoC more than 64 sources, no threat and IoC more than 8
relations, the cut counts add up, and an amber writer's item merged into the red threat answers `updated` and nothing
more (no cut count telling how full it is)."""

import json
import os

import pytest
from helpers import create_user, require_shared_data
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from route_fuzz import Tally, check

pytestmark = pytest.mark.integration
EXAMPLES = int(os.environ.get("FUZZ_EXAMPLES", "40"))
NAMES = ["RedTechFuzz", "AmberTechFuzz", "NewTechFuzz"]

text = st.one_of(
    st.sampled_from(["feed", " feed ", "", "  ", "x" * 257, "\x00", "https://example.org/a"]),
    st.text(max_size=40),
    st.text(alphabet="ab", min_size=1, max_size=8),  # many distinct short ones: fills the lists fast
    st.integers(),
    st.none(),
)
good_reference = st.fixed_dictionaries(
    {"source_name": st.text(alphabet="abc", min_size=1, max_size=6)}, optional={"url": st.text(alphabet="xyz/", max_size=8)}
)
odd_reference = st.one_of(st.fixed_dictionaries({"source_name": text}, optional={"url": text, "external_id": text}), text)


def _request(techniques):
    ttp = st.one_of(st.sampled_from(techniques), st.sampled_from(["T0000", "t1059", "T1059.999", "", "x"]), text)
    # Mostly well-formed (they reach the bounds), sometimes not (they must be 4xx or rejected items, never a 5xx).
    threat_item = st.fixed_dictionaries(
        {"kind": st.one_of(st.sampled_from(["malware", "tool"]), st.sampled_from(["actor", "tool"])), "name": st.sampled_from(NAMES)},
        optional={
            "ttps": st.one_of(st.lists(st.sampled_from(techniques), min_size=1, max_size=20), st.lists(ttp, max_size=8)),
            "references": st.one_of(st.lists(good_reference, min_size=1, max_size=12), st.lists(odd_reference, max_size=4)),
            "tlp": st.sampled_from(["red", "amber", "clear"]),
        },
    )
    context = st.one_of(st.dictionaries(st.text(max_size=5), text, max_size=4), st.just({"note": "x" * 17_000}), st.integers(), st.none())
    sighting = st.one_of(
        st.fixed_dictionaries({"source": st.text(alphabet="ab ", max_size=6)}),
        st.fixed_dictionaries({}, optional={"source": text, "context": context, "seen_at": text}),
    )
    link = st.one_of(
        st.fixed_dictionaries({"ioc_ids": st.just("the fuzz's IoC"), "relation": st.sampled_from([f"verb-{i}" for i in range(12)])}),
        st.fixed_dictionaries(
            {"ioc_ids": st.one_of(st.lists(st.integers(min_value=-1, max_value=3), max_size=3), text)},
            optional={"relation": text, "confidence": st.integers(-1, 101)},
        ),
    )
    return st.one_of(
        st.tuples(st.sampled_from(["amber", "red"]), st.just("threats"), st.lists(threat_item, min_size=1, max_size=4)),
        st.tuples(st.sampled_from(["amber", "red"]), st.just("sightings"), sighting),
        st.tuples(st.sampled_from(["amber", "red"]), st.sampled_from(["link red", "link amber", "link none"]), link),
    )


def test_bounded_threat_lists_and_sightings_never_answer_5xx_and_keep_their_bounds(function_client, backend_env, monkeypatch):
    attack = require_shared_data("attack", "attack_techniques.json")
    monkeypatch.setenv("ATTACK_DATA_PATH", str(attack))
    known = json.loads(attack.read_text())["techniques"]
    techniques = sorted(t["external_id"] for t in known if not t.get("revoked") and not t.get("deprecated"))[:40]
    url = backend_env["DATABASE_URL"]
    auth = function_client("auth")
    headers = {}
    for clearance in ("amber", "red"):
        password = create_user(url, f"fuzz3{clearance}", "analyst", clearance=clearance)
        token = auth.post("/api/v1/auth/token", json={"username": f"fuzz3{clearance}", "password": password}).get_json()
        headers[clearance] = {"Authorization": f"Bearer {token['access_token']}"}
    limits = {"RATE_LIMIT_PER_USER": "100000/60", "RATE_LIMIT_PER_IP": "100000/60"}
    clients = {"iocs": function_client("iocs", **limits), "threats": function_client("threats", **limits)}
    full = {"value": "full.fuzz3-test.com", "sources": [f"s{i:02d}" for i in range(63)]}  # one short of full
    made = clients["iocs"].post("/api/v1/iocs/batch", json={"iocs": [full]}, headers=headers["amber"]).get_json()
    ioc_id = made["results"][0]["id"]
    threats = [{"kind": "malware", "name": "RedTechFuzz", "tlp": "red"}, {"kind": "tool", "name": "AmberTechFuzz", "tlp": "amber"}]
    made = clients["threats"].post("/api/v1/threats/batch", json={"threats": threats}, headers=headers["red"]).get_json()
    assert made["summary"]["created"] == 2, made
    threat_ids = {"red": made["results"][0]["id"], "amber": made["results"][1]["id"], "none": 10**6}

    from threatflow.adapters.postgres import create_engine
    from threatflow.platform.config import Settings

    engine = create_engine(Settings.from_env({"DATABASE_URL": url}))
    fill = [f"T{9000 + i}" for i in range(505)]  # near full: the fuzz's TTPs and references reach the bounds
    refs = json.dumps([{"source_name": f"r{i}"} for i in range(250)])
    with engine.begin() as conn:
        conn.exec_driver_sql("UPDATE threats SET ttps = %s, refs = %s::jsonb WHERE name LIKE '%%TechFuzz'", (fill, refs))
        for threat_id in (threat_ids["red"], threat_ids["amber"]):  # 7 relations: one new verb fills the pair
            for i in range(7):
                conn.exec_driver_sql(
                    "INSERT INTO threat_iocs (threat_id, ioc_id, relation) VALUES (%s, %s, %s)", (threat_id, ioc_id, f"verb-{i}")
                )
        filled = conn.exec_driver_sql("SELECT name, cardinality(ttps), jsonb_array_length(refs) FROM threats ORDER BY name").all()
    assert [tuple(r) for r in filled] == [("AmberTechFuzz", 505, 250), ("RedTechFuzz", 505, 250)], filled
    tally = Tally()
    reached = {"ttps_cut": 0, "references_cut": 0, "sources_cut": 0, "hidden": 0, "relations_full": 0}

    @settings(max_examples=EXAMPLES, deadline=None, database=None, suppress_health_check=list(HealthCheck))
    @given(_request(techniques))
    def fuzz(drawn):
        writer, route, body = drawn
        if route == "threats":
            client, path, body = clients["threats"], "/api/v1/threats/batch", {"threats": body}
        elif route == "sightings":
            client, path = clients["iocs"], f"/api/v1/iocs/{ioc_id}/sightings"
        else:
            client, path = clients["threats"], f"/api/v1/threats/{threat_ids[route.split()[1]]}/link"
            body = {**body, "ioc_ids": [ioc_id]} if body["ioc_ids"] == "the fuzz's IoC" else body
        with engine.connect() as conn:
            red_tlp = conn.exec_driver_sql("SELECT tlp FROM threats WHERE name = 'RedTechFuzz'").scalar_one()
        response = client.post(path, json=body, headers=headers[writer])
        check(tally, f"{writer} {path} {str(body)[:120]}", response.status_code, response.content_type or "", response.data)
        if response.status_code == 200 and route == "threats":
            answer = response.get_json()
            for key in ("tags_cut", "aliases_cut", "ttps_cut", "references_cut"):
                assert answer["summary"][key] == sum(r.get(key, 0) for r in answer["results"]), answer
            for key in ("ttps_cut", "references_cut"):
                reached[key] += answer["summary"][key] > 0
            if writer == "amber" and red_tlp in ("amber+strict", "red"):
                hidden = [r for r in answer["results"] if r["status"] == "updated" and "id" not in r]
                assert all(set(r) <= {"index", "status", "reason"} for r in hidden), hidden
                reached["hidden"] += bool(hidden)
        if response.status_code == 201 and route == "sightings":
            reached["sources_cut"] += response.get_json().get("sources_cut", 0)
        if response.status_code == 200 and route.startswith("link"):
            reached["relations_full"] += response.get_json()["summary"].get("relations_full", 0)
        with engine.connect() as conn:
            over = conn.exec_driver_sql("SELECT name FROM threats WHERE cardinality(ttps) > 512 OR jsonb_array_length(refs) > 256").all()
            assert over == [], over
            assert conn.exec_driver_sql("SELECT count(*) FROM iocs WHERE cardinality(sources) > 64").scalar_one() == 0
            pairs = "SELECT count(*) FROM (SELECT 1 FROM threat_iocs GROUP BY threat_id, ioc_id HAVING count(*) > 8) AS p"
            assert conn.exec_driver_sql(pairs).scalar_one() == 0

    try:
        fuzz()
    finally:
        engine.dispose()
    print(
        f"bounds3: {tally.requests} fuzzed requests, {len(tally.server_errors)} 5xx, {len(tally.not_json)} non-JSON errors,"
        f" {reached['ttps_cut']} / {reached['references_cut']} with TTPs / references cut, {reached['sources_cut']} sightings"
        f" with their source cut, {reached['relations_full']} links refused as relations_full,"
        f" {reached['hidden']} merged into the red threat by the amber writer"
    )
    assert tally.server_errors == [], "\n".join(tally.server_errors[:10])
    assert tally.not_json == [], "\n".join(tally.not_json[:10])
