"""Shapes taken from real public documents (each excerpt is short, values rewritten where they are not the point;
the comment names the public repository and path it mirrors). What real producers write, not our own vectors."""

from threatflow.intel.formats import parse

# MISP/PyMISP tests/mispevent_testfiles/existing_event.json (a CIRCL Sednit event): file objects reference the
# C2 domains they talk to (ObjectReference "communicates-with", to a top-level attribute or to a domain-ip object),
# and each domain-ip object pairs a domain with the address it resolved to.
SEDNIT_EVENT = {
    "Event": {
        "uuid": "5a3c2fcd-8328-42bb-a95e-4f4402de0b81",
        "info": "Sednit update: How Fancy Bear Spent the Year",
        "Orgc": {"name": "CIRCL"},
        "Attribute": [
            {
                "category": "Network activity",
                "type": "domain",
                "to_ids": True,
                "uuid": "5a3c3045-ab0c-4d38-8efe-459002de0b81",
                "value": "movieultimate.com",
            }
        ],
        "Object": [
            {
                "name": "file",
                "meta-category": "file",
                "comment": "Win64/Sednit.Z",
                "uuid": "5a3cda96-85c4-45a1-82ea-c5ed950d210f",
                "Attribute": [
                    {
                        "object_relation": "sha1",
                        "type": "sha1",
                        "to_ids": True,
                        "uuid": "5a3cda97-7e58-4642-aaf5-c5ed950d210f",
                        "value": "6f0fc0ebba3e4c8b26a69cdf519edf8d1aa2f4bb",
                    },
                    {"object_relation": "state", "type": "text", "to_ids": False, "uuid": "5a3cda97-6020-423d", "value": "Malicious"},
                ],
                "ObjectReference": [
                    {
                        "object_uuid": "5a3cda96-85c4-45a1-82ea-c5ed950d210f",
                        "referenced_type": "0",
                        "referenced_uuid": "5a3c3045-ab0c-4d38-8efe-459002de0b81",
                        "relationship_type": "communicates-with",
                        "uuid": "5a3cdba2-2fdc-4f9a-a4eb-4dae950d210f",
                    },
                    {
                        "object_uuid": "5a3cda96-85c4-45a1-82ea-c5ed950d210f",
                        "referenced_type": "1",
                        "referenced_uuid": "5a3ce58a-3198-4cb8-9d51-44e5950d210f",
                        "relationship_type": "communicates-with",
                        "uuid": "5a3ce5a1-1111-4cb8-9d51-44e5950d210f",
                    },
                    {  # to an object this document does not hold: nothing to relate, no error
                        "object_uuid": "5a3cda96-85c4-45a1-82ea-c5ed950d210f",
                        "referenced_uuid": "00000000-0000-4000-8000-000000000000",
                        "relationship_type": "communicates-with",
                    },
                ],
            },
            {
                "name": "domain-ip",
                "meta-category": "network",
                "uuid": "5a3ce58a-3198-4cb8-9d51-44e5950d210f",
                "Attribute": [
                    {
                        "object_relation": "ip",
                        "type": "ip-dst",
                        "to_ids": True,
                        "uuid": "5a3ce58a-fcd8-48d5-8b4a-4fd9950d210f",
                        "value": "87.236.211.182",
                    },
                    {
                        "object_relation": "domain",
                        "type": "domain",
                        "to_ids": True,
                        "uuid": "5a3ce58a-6e14-48ea-9746-48f2950d210f",
                        "value": "servicecdp.com",
                    },
                ],
            },
        ],
    }
}


def test_misp_object_references_and_domain_ip_objects_become_relations():
    """A real MISP event's object graph was dropped: the Sednit event's 20 communicates-with references and 12
    domain-ip objects gave no relation at all, where the older domain|ip attribute gives resolves-to."""
    parsed = parse("misp", SEDNIT_EVENT)
    sha1, c2, ip, domain = (
        "5a3cda97-7e58-4642-aaf5-c5ed950d210f",
        "5a3c3045-ab0c-4d38-8efe-459002de0b81",
        "5a3ce58a-fcd8-48d5-8b4a-4fd9950d210f",
        "5a3ce58a-6e14-48ea-9746-48f2950d210f",
    )
    assert {p.ref for p in parsed.iocs} == {sha1, c2, ip, domain}
    assert sorted((r.source_ref, r.target_ref, r.type) for r in parsed.relations) == sorted(
        [
            (sha1, c2, "communicates-with"),
            (sha1, ip, "communicates-with"),
            (sha1, domain, "communicates-with"),
            (domain, ip, "resolves-to"),
        ]
    )
    assert not parsed.errors


def test_misp_object_relations_are_bounded_per_document():
    """A reference relates every IoC of one object to every IoC of the other: 40 x 40 would be 1,600 relations."""

    def obj(uuid, prefix, refs=()):
        attributes = [{"uuid": f"{uuid}-{i}", "type": "ip-dst", "value": f"{prefix}.{i}"} for i in range(40)]
        return {"name": "ip-port", "uuid": uuid, "Attribute": attributes, "ObjectReference": list(refs)}

    reference = {"referenced_uuid": "b", "relationship_type": "connected-to"}
    event = {"Event": {"Object": [obj("a", "198.51.100", [reference]), obj("b", "203.0.113")]}}
    parsed = parse("misp", event)
    assert len(parsed.iocs) == 80 and len(parsed.relations) == 1000
    assert {r.type for r in parsed.relations} == {"related-to"}
    assert [w.reason for w in parsed.warnings] == ["600 relations not made: at most 1000 from a document's objects"]
