"""abuse.ch feeds as they are downloaded, in small hand-written reproductions of their shapes: every row gives an
IoC that the store accepts (normalise is what the upsert runs on each item)."""

from threatflow.intel.formats import parse
from threatflow.iocs.normalise import normalise

SHA256 = "0123456789abcdef" * 4
MD5 = "0123456789abcdef" * 2
SHA1 = "0123456789abcdef0123456789abcdef01234567"


def stored(parsed):
    return [(str(ind.type), ind.value) for ind in (normalise(p.item.value, p.item.type) for p in parsed.iocs)]


THREATFOX_CSV = (
    "################################################################\r\n"
    "# ThreatFox IOCs: recent additions - CSV format                #\r\n"
    "################################################################\r\n"
    "#\r\n"
    '# "first_seen_utc","ioc_id","ioc_value","ioc_type","threat_type","fk_malware","malware_alias","malware_printable",'
    '"last_seen_utc","confidence_level","is_compromised","reference","tags","anonymous","reporter"\r\n'
    '"2026-07-04 21:46:30", "101", "198.51.100.36:5555", "ip:port", "botnet_cc", "win.cobalt_strike", "BEACON,cobeacon",'
    ' "Cobalt Strike", "", "75", "False", "None", "CobaltStrike,c2", "0", "someone"\r\n'
    '"2026-07-04 21:46:31", "102", "[2001:db8::7]:443", "ip:port", "botnet_cc", "win.x", "None", "X", "", "100", "False",'
    ' "None", "c2", "0", "someone"\r\n'
    f'"2026-07-04 21:46:32", "103", "{SHA256}", "sha256_hash", "payload", "win.x", "None", "X", "", "50", "False", "None",'
    ' "x", "0", "someone"\r\n'
    f'"2026-07-04 21:46:33", "104", "{MD5}", "md5_hash", "payload", "win.x", "None", "X", "", "50", "False", "None", "x",'
    ' "0", "someone"\r\n'
    '"2026-07-04 21:46:34", "105", "evil.example.com", "domain", "payload_delivery", "js.clearfake", "None", "ClearFake",'
    ' "", "100", "False", "None", "ClearFake", "1", "anonymous"\r\n'
)


def test_threatfox_csv_ip_port_and_hash_types():
    """ThreatFox names its types ip:port, sha256_hash, md5_hash: they went to the store as types, which refused each
    such row ("unknown type 'ip:port'"), so only its domains and URLs were imported. Its confidence_level was unread."""
    parsed = parse("csv", THREATFOX_CSV)
    assert not parsed.errors
    assert stored(parsed) == [
        ("ipv4", "198.51.100.36"),
        ("ipv6", "2001:db8::7"),
        ("sha256", SHA256),
        ("md5", MD5),
        ("domain", "evil.example.com"),
    ]
    assert [p.item.confidence for p in parsed.iocs] == [75, 100, 50, 50, 100]


def test_malwarebazaar_csv_hash_columns():
    """MalwareBazaar's export names its hash columns sha256_hash, md5_hash, sha1_hash and has no value column: the
    whole file was refused ("no value column")."""
    text = (
        "################################################################\n"
        "# MalwareBazaar recent malware samples                         #\n"
        "# Terms Of Use: https://bazaar.abuse.ch/faq/#tos               #\n"
        "################################################################\n"
        "#\n"
        '# "first_seen_utc","sha256_hash","md5_hash","sha1_hash","reporter","file_name","file_type_guess","mime_type",'
        '"signature","clamav","vtpercent","imphash","ssdeep","tlsh"\n'
        f'"2026-05-01 09:59:01", "{SHA256}", "{MD5}", "{SHA1}", "someone", "invoice, May.exe", "exe", "application/x-dosexec",'
        ' "AgentTesla", "n/a", "n/a", "f34d5f2d4577ed6d9ceec516c1f5a744", "3072:abc:def", "T1ABC"\n'
    )
    parsed = parse("csv", text)
    assert not parsed.errors
    assert stored(parsed) == [("sha256", SHA256), ("md5", MD5), ("sha1", SHA1)]


def test_sslbl_botnet_c2_ip_csv():
    """SSLBL's C2 IP list names its address DstIP: refused ("no value column")."""
    text = (
        "################################################################\n# abuse.ch SSLBL Botnet C2 IP Blacklist (CSV)\n#\n"
        "# Firstseen,DstIP,DstPort\n2026-01-01 00:00:00,198.51.100.9,443\n"
    )
    assert stored(parse("csv", text)) == [("ipv4", "198.51.100.9")]


def test_feodo_json_blocklist():
    """Feodo Tracker's JSON blocklist is a list of records naming the address ip_address: every record was rejected
    ("Object contains unknown field `ip_address`"), so the file imported nothing."""
    doc = [
        {"ip_address": "198.51.100.23", "port": 4125, "status": "online", "hostname": None, "as_number": 64500, "as_name": "EXAMPLE-AS",
         "country": "SG", "first_seen": "2026-05-16 19:49:33", "last_online": "2026-06-14", "malware": "Dridex"},
        {"ip_address": "198.51.100.24", "port": 7443, "status": "offline", "hostname": "ns1.example.net", "as_number": 64501,
         "as_name": "OTHER", "country": "CA", "first_seen": "2026-08-27 04:48:12", "last_online": None, "malware": "QakBot"},
    ]  # fmt: skip
    parsed = parse("json", doc)
    assert not parsed.errors and stored(parsed) == [("ipv4", "198.51.100.23"), ("ipv4", "198.51.100.24")]


def test_threatfox_json_export_and_derived_list():
    """ThreatFox's JSON export is an object of id -> [records] (ioc_value, ioc_type): refused whole ('expected
    {"iocs": [...]}'). A list derived from it, {"iocs": [{"ioc": "evil[.]example", "type": "ip:port"...}]}, had every
    item rejected ("unknown field `ioc`")."""
    export = {
        "1844853": [{"ioc_value": "198.51.100.36:5555", "ioc_type": "ip:port", "threat_type": "botnet_cc", "malware": "win.cobalt_strike",
                     "malware_printable": "Cobalt Strike", "first_seen_utc": "2026-07-04 21:46:30", "confidence_level": 75,
                     "tags": "CobaltStrike,c2", "reporter": "someone"}],
        "1844852": [{"ioc_value": SHA256, "ioc_type": "sha256_hash", "threat_type": "payload", "confidence_level": 50, "tags": None}],
    }  # fmt: skip
    parsed = parse("json", export)
    assert not parsed.errors and stored(parsed) == [("ipv4", "198.51.100.36"), ("sha256", SHA256)]
    assert parsed.iocs[0].item.confidence == 75 and parsed.iocs[0].item.tags == ["cobaltstrike", "c2"]
    derived = {"source": "abuse.ch / ThreatFox", "count": 2, "iocs": [
        {"ioc": "bad-host.workers[.]dev", "type": "domain", "malware": "x", "confidence": 50, "first_seen": "2026-08-22 21:23:45 UTC"},
        {"ioc": "198.51.100[.]136:8808", "type": "ip:port", "malware": "AsyncRAT", "confidence": 100},
    ]}  # fmt: skip
    parsed = parse("json", derived)
    assert not parsed.errors and stored(parsed) == [("domain", "bad-host.workers.dev"), ("ipv4", "198.51.100.136")]


def test_json_batch_items_stay_strict():
    """A batch-shaped item (it has a value) is still checked field by field: an unknown field rejects it."""
    parsed = parse("json", [{"value": "198.51.100.1", "colour": "red"}])
    assert [e.ref for e in parsed.errors] == ["#0"] and "colour" in parsed.errors[0].reason


def test_python_written_none_and_null_cells_are_empty_not_values():
    """ThreatFox's CSV export (written by Python) holds the text `None` where a field is empty: its tags column gave
    every IoC the tag `none`, and a `None` confidence rejected the row. `None` and `null` cells are empty cells."""
    doc = (
        '"ioc_value","ioc_type","tags","confidence_level","reference","malware_alias"\n'
        '"evil.example.com","domain","None","None","None","None"\n'
        '"bad.example.com","domain","null","75","","Emotet"\n'
    )
    parsed = parse("csv", doc)
    assert not parsed.errors, parsed.errors
    items = {p.item.value: p.item for p in parsed.iocs}
    assert items["evil.example.com"].tags == [] and items["evil.example.com"].confidence is None
    assert items["bad.example.com"].tags == [] and items["bad.example.com"].confidence == 75


def test_a_commented_out_header_wins_over_a_first_row_holding_a_type_name():
    """A feed whose header is commented out (`# value,type,comment`) and whose first row names a type (`evil.com,domain`)
    read that row as its header, a type-named `domain` column, and every row after it wrongly: all were rejected or
    misread. A first row holding an indicator is data; an uncommented header after the block still wins."""
    text = "# exported 2026-11-27\n# value,type,comment\nevil.com,domain,c2\n198.51.100.7,ipv4,loader\nbad.example.net,domain,\n"
    parsed = parse("csv", text)
    assert [(str(i.item.type), i.item.value) for i in parsed.iocs] == [
        ("domain", "evil.com"),
        ("ipv4", "198.51.100.7"),
        ("domain", "bad.example.net"),
    ], parsed
    assert parsed.iocs[0].ref == "row 3" and not parsed.errors, parsed
    header_after = "# exported 2026-11-27\n# value,type\nvalue,type,comment\nevil.com,domain,c2\n"
    assert [i.item.value for i in parse("csv", header_after).iocs] == ["evil.com"]
