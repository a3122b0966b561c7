"""Short excerpts of real public documents, in the shapes their producers write (each names the public repository
and path it mirrors; values rewritten where they are not the point). Shared by the unit tests of the import formats
and the import route's integration test."""

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

# OpenCTI-Platform/opencti tests/data/DATA-TEST-STIX2_v2.json (OpenCTI's own test bundle): one sighting's id is a
# bare UUID, without its "sighting--" prefix. The whole bundle (an intrusion set, malware, indicators...) was refused
# for it, a sighting that is not even imported.
OPENCTI_BUNDLE = {
    "type": "bundle",
    "id": "bundle--8c939929-688f-4a72-badb-3dd1bd6af0fa",
    "objects": [
        {
            "id": "marking-definition--613f2e26-407d-48c7-9eca-b8e91df99dc9",
            "type": "marking-definition",
            "spec_version": "2.1",
            "definition_type": "TLP",
            "definition": {"TLP": "TLP:WHITE"},
            "created": "2020-02-25T09:02:15.077Z",
        },
        {
            "id": "indicator--a2f7504a-ea0d-48ed-a18d-cbf352fae6cf",
            "type": "indicator",
            "spec_version": "2.1",
            "name": "2a0169c72c84e6d3fa49af701fd46ee7aaf1d1d9e107798d93a6ca8df5d25957",
            "description": "CMSTAR Variants Identified in Phishing Campaign",
            "pattern": "[file:hashes.SHA256 = '2a0169c72c84e6d3fa49af701fd46ee7aaf1d1d9e107798d93a6ca8df5d25957']",
            "valid_from": "2017-09-28T20:25:13.000Z",
            "x_opencti_pattern_type": "stix",
            "created": "2020-02-25T22:25:17.453Z",
            "modified": "2020-02-25T22:25:17.453Z",
            "object_marking_refs": ["marking-definition--613f2e26-407d-48c7-9eca-b8e91df99dc9"],
        },
        {
            "type": "sighting",
            "spec_version": "2.1",
            "id": "579a46af-a339-400d-809e-b92101fe7de8",
            "sighting_of_ref": "indicator--a2f7504a-ea0d-48ed-a18d-cbf352fae6cf",
            "count": 8,
        },
        {"id": "intrusion-set--18854f55-ac7c-4634-bd9a-352dd07613b7", "type": "intrusion-set", "name": "APT41", "aliases": ["Winnti"]},
    ],
}

# abuse.ch's API answers, as client libraries' tests mock them (intelowlproject/IntelOwl's ThreatFox, MalwareBazaar
# and URLhaus analyzers): records under "data" (ThreatFox, MalwareBazaar) or "urls" (URLhaus) beside "query_status".
# Values rewritten; the keys are the APIs'.
THREATFOX_ANSWER = {
    "query_status": "ok",
    "data": [
        {
            "id": "12",
            "ioc": "198.51.100.104:443",
            "threat_type": "botnet_cc",
            "ioc_type": "ip:port",
            "malware": "win.cobalt_strike",
            "malware_printable": "Cobalt Strike",
            "malware_alias": "Agentemis,BEACON,CobaltStrike",
            "confidence_level": 75,
            "first_seen": "2020-12-06 09:10:23 UTC",
            "last_seen": None,
            "reference": None,
            "reporter": "abuse_ch",
            "tags": ["cobaltstrike"],
        }
    ],
}

MALWAREBAZAAR_ANSWER = {
    "query_status": "ok",
    "data": [
        {
            "sha256_hash": "7de2c1bf58bce09eecc70476747d88a26163c3d6bb1d85235c24a558d1f16754",
            "sha3_384_hash": "0e7d8d1b1f0e1e8f7b2c3d4e5f60718293a4b5c6d7e8f90a1b2c3d4e5f60718293a4b5c6d7e8f90a1b2c3d4e5f6071",
            "sha1_hash": "ba4d6a6d1d4a9e4aa9c9e3a1f0b1e8ad1e8f7c0d",
            "md5_hash": "a0b9dbb1c4fbf7ac1a7c8bc9c24ec0a7",
            "first_seen": "2021-03-23 08:18:06",
            "file_name": "invoice.exe",
            "file_type": "exe",
            "reporter": "abuse_ch",
            "signature": "AgentTesla",
            "imphash": "f34d5f2d4577ed6d9ceec516c1f5a744",
            "tags": ["AgentTesla", "exe"],
        }
    ],
}

URLHAUS_ANSWER = {
    "query_status": "ok",
    "urls": [
        {
            "id": "105821",
            "urlhaus_reference": "https://urlhaus.abuse.ch/url/105821/",
            "url": "http://198.51.100.7:39337/Mozi.m",
            "url_status": "online",
            "host": "198.51.100.7",
            "date_added": "2021-03-23 08:18:06 UTC",
            "threat": "malware_download",
            "blacklists": {"spamhaus_dbl": "not listed", "surbl": "not listed"},
            "reporter": "lrz_urlhaus",
            "larted": "true",
            "tags": ["elf", "Mozi"],
        }
    ],
}

# AlienVault OTX: a pulse as OTX exports it (and as /api/v1/pulses/subscribed answers it, under "results"), and its
# indicator records, whose types are OTX's ("IPv4", "FileHash-MD5", "hostname", "CVE"...). Shapes as in
# elastic/integrations packages/ti_otx/data_stream/{threat,pulses_subscribed}/_dev/test/pipeline/; values rewritten.
OTX_INDICATORS = [
    {"indicator": "198.51.100.156", "description": None, "title": None, "content": "", "type": "IPv4", "id": 1588938},
    {
        "indicator": "90421f8531f963d81cf54245b72cde80",
        "description": "MD5 of a5725af4391d21a232dc6d4ad33d7d915bd190bdac9b1826b73f364dc5c1aa65",
        "title": "Win32:Hoblig-B",
        "content": "",
        "type": "FileHash-MD5",
        "id": 9751110,
    },
    {"indicator": "ip.anysrc.example.net", "description": None, "title": None, "content": "", "type": "hostname", "id": 16782717},
    {
        "indicator": "d8c70ca70fd3555a0828fede6cc1f59e2c320ede80157039b6a2f09c336d5f7a",
        "description": None,
        "title": None,
        "content": "",
        "type": "FileHash-SHA256",
        "id": 31612067,
    },
    {"id": 73, "indicator": "http://www.example-shop.ru/signup/", "type": "URL", "title": None, "description": None, "content": ""},
    {"id": 74, "indicator": "CVE-2017-11882", "type": "CVE", "title": None, "description": None, "content": ""},
]

OTX_PULSE = {
    "id": "64d31e8a5133613a90976b3f",
    "name": "TrickBot delivery infrastructure",
    "description": "Malware",
    "author_name": "OctoSeek",
    "created": "2023-08-09T05:05:14.946000",
    "modified": "2023-08-09T05:05:14.946000",
    "tlp": "amber",
    "adversary": "Wizard Spider",
    "tags": ["trickbot"],
    "malware_families": [{"id": "trickbot", "display_name": "TrickBot"}],
    "attack_ids": [{"id": "T1566.001", "name": "Spearphishing Attachment", "display_name": "T1566.001 - Spearphishing Attachment"}],
    "references": [],
    "indicators": OTX_INDICATORS,
}

# oasis-open/cti-stix2-json-schemas examples/sighting-of-observed-data.json (STIX 2.0): a malware is sighted, and
# the sighting's observed data hold the file (its hashes) that was seen; the other observed datum is a registry key.
SIGHTING_OF_MALWARE = {
    "type": "bundle",
    "id": "bundle--a836f05a-f235-4b4b-b523-bd87e40478a1",
    "spec_version": "2.0",
    "objects": [
        {
            "type": "malware",
            "id": "malware--ae560258-a5cb-4be8-8f05-013d6712295f",
            "created": "2014-02-20T09:16:08.989000Z",
            "modified": "2014-02-20T09:16:08.989000Z",
            "name": "Online Job Site Trojan",
            "labels": ["remote-access-trojan"],
        },
        {
            "type": "sighting",
            "id": "sighting--779c4ae8-e134-4180-baa4-03141095d971",
            "created": "2017-02-28T19:37:11.213Z",
            "modified": "2017-02-28T19:37:11.213Z",
            "count": 1,
            "sighting_of_ref": "malware--ae560258-a5cb-4be8-8f05-013d6712295f",
            "observed_data_refs": [
                "observed-data--cf8eaa41-6f4c-482e-89b9-9cd2d6a83cb1",
                "observed-data--a0d34360-66ad-4977-b255-d9e1080421c4",
            ],
        },
        {
            "type": "observed-data",
            "id": "observed-data--cf8eaa41-6f4c-482e-89b9-9cd2d6a83cb1",
            "created": "2017-02-28T19:37:11.213Z",
            "modified": "2017-02-28T19:37:11.213Z",
            "first_observed": "2017-02-27T21:37:11.213Z",
            "last_observed": "2017-02-27T21:37:11.213Z",
            "number_observed": 1,
            "objects": {
                "0": {
                    "type": "file",
                    "hashes": {"MD5": "1717b7fff97d37a1e1a0029d83492de1", "SHA-1": "c79a326f8411e9488bdc3779753e1e3489aaedea"},
                    "name": "resume.pdf",
                }
            },
        },
        {
            "type": "observed-data",
            "id": "observed-data--a0d34360-66ad-4977-b255-d9e1080421c4",
            "created": "2017-02-28T19:37:11.213Z",
            "modified": "2017-02-28T19:37:11.213Z",
            "first_observed": "2017-02-27T21:37:11.213Z",
            "last_observed": "2017-02-27T21:37:11.213Z",
            "number_observed": 1,
            "objects": {"0": {"type": "windows-registry-key", "key": "HKEY_LOCAL_MACHINE\\SYSTEM\\ControlSet001\\Services\\WSALG2"}},
        },
    ],
}

# oasis-open/cti-stix2-json-schemas examples/malware-indicator-for-file-hash.json (STIX 2.0): the hash algorithm is
# written unquoted (`hashes.SHA-256`), which the patterning grammar refuses (it wants `hashes.'SHA-256'`); many
# producers write it so (demisto/content's STIX export writes `file:hashes.sha-256`).
POISON_IVY_FILE_HASH = {
    "type": "bundle",
    "id": "bundle--44af6c39-c09b-49c5-9de2-394224b04982",
    "spec_version": "2.0",
    "objects": [
        {
            "type": "indicator",
            "id": "indicator--a932fcc6-e032-176c-126f-cb970a5a1ade",
            "created": "2014-02-20T09:16:08.989000Z",
            "modified": "2014-02-20T09:16:08.989000Z",
            "name": "File hash for Poison Ivy variant",
            "labels": ["malicious-activity"],
            "pattern": "[file:hashes.SHA-256 = 'ef537f25c895bfa782526529a9b63d97aa631564d5d789c2b765448c8635fb6c']",
            "valid_from": "2014-02-20T09:00:00.000000Z",
        },
        {
            "type": "malware",
            "id": "malware--fdd60b30-b67c-11e3-b0b9-f01faf20d111",
            "created": "2014-02-20T09:16:08.989000Z",
            "modified": "2014-02-20T09:16:08.989000Z",
            "name": "Poison Ivy",
            "labels": ["remote-access-trojan"],
        },
        {
            "type": "relationship",
            "id": "relationship--f191e70e-1736-47c3-b0f9-fdfe01387eb1",
            "created": "2014-02-20T09:16:08.989000Z",
            "modified": "2014-02-20T09:16:08.989000Z",
            "relationship_type": "indicates",
            "source_ref": "indicator--a932fcc6-e032-176c-126f-cb970a5a1ade",
            "target_ref": "malware--fdd60b30-b67c-11e3-b0b9-f01faf20d111",
        },
    ],
}

# MISP/misp-stix's STIX 2.1 test data (_DOMAIN_IP_OBSERVABLE_OBJECTS: how MISP exports a domain|ip attribute):
# the domain-name SCO names the address it resolved to in resolves_to_refs.
MISP_STIX_DOMAIN_IP = {
    "type": "bundle",
    "id": "bundle--91ae0a21-c7ae-4c7f-b84b-b84a7ce53d10",
    "objects": [
        {
            "type": "observed-data",
            "spec_version": "2.1",
            "id": "observed-data--91ae0a21-c7ae-4c7f-b84b-b84a7ce53d1f",
            "created": "2020-10-25T16:22:00.000Z",
            "modified": "2020-10-25T16:22:00.000Z",
            "first_observed": "2020-10-25T16:22:00Z",
            "last_observed": "2020-10-25T16:22:00Z",
            "number_observed": 1,
            "object_refs": ["domain-name--91ae0a21-c7ae-4c7f-b84b-b84a7ce53d1f", "ipv4-addr--91ae0a21-c7ae-4c7f-b84b-b84a7ce53d1f"],
            "labels": ['misp:type="domain|ip"', 'misp:category="Network activity"'],
        },
        {
            "type": "domain-name",
            "spec_version": "2.1",
            "id": "domain-name--91ae0a21-c7ae-4c7f-b84b-b84a7ce53d1f",
            "value": "circl.lu",
            "resolves_to_refs": ["ipv4-addr--91ae0a21-c7ae-4c7f-b84b-b84a7ce53d1f"],
        },
        {"type": "ipv4-addr", "spec_version": "2.1", "id": "ipv4-addr--91ae0a21-c7ae-4c7f-b84b-b84a7ce53d1f", "value": "149.13.33.14"},
    ],
}

# OpenCTI's Hostname observable, a custom SCO type: its exports hold `hostname` SCOs, and its connectors write
# indicators `[hostname:value = '...']` for it (OpenCTI-Platform/connectors, e.g. the sandbox enrichment connectors).
OPENCTI_HOSTNAMES = {
    "type": "bundle",
    "id": "bundle--2047cd44-ffae-5b34-b912-5856add59b50",
    "objects": [
        {
            "type": "indicator",
            "spec_version": "2.1",
            "id": "indicator--cde0a6e1-c622-52c4-b857-e9aeac56131b",
            "name": "ec2-198-51-100-164.compute-1.example.com",
            "pattern": "[hostname:value = 'ec2-198-51-100-164.compute-1.example.com']",
            "pattern_type": "stix",
            "pattern_version": "2.1",
            "valid_from": "2018-02-05T08:04:53.000Z",
            "x_opencti_main_observable_type": "Hostname",
        },
        {
            "type": "hostname",
            "spec_version": "2.1",
            "id": "hostname--2047cd44-ffae-5b34-b912-5856add59b59",
            "value": "vpn.darkhost-example.net",
            "x_opencti_score": 80,
        },
    ],
}

# A TAXII 2.1 envelope, what a collection's objects endpoint answers (oasis-open/cti-taxii-server's medallion
# serves its test data, e.g. medallion/test/directory/.../objects/indicator/7d72d620-..., this way): objects
# without a bundle around them.
TAXII_ENVELOPE = {
    "more": False,
    "objects": [
        {
            "type": "indicator",
            "id": "indicator--7d72d620-9720-4457-897d-7030d1a972df",
            "created": "2019-06-25T18:15:42.452Z",
            "modified": "2019-06-25T18:24:15.157Z",
            "name": "https://dailymemes.example.net",
            "pattern": "[url:value = 'https://dailymemes.example.net']",
            "valid_from": "2019-06-25T18:15:42.452Z",
            "labels": ["malicious-activity"],
        }
    ],
}
