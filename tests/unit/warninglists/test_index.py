"""WarninglistIndex on the real MISP lists (shared data) and on small lists made here."""

import hashlib
import json
from datetime import UTC, datetime

import pytest
from helpers import require_shared_data

from threatflow.iocs import warninglists
from threatflow.iocs.warninglists import ListType, Warninglist, WarninglistIndex, load_directory, load_snapshot

NOW = datetime(2026, 11, 23, tzinfo=UTC)
EMPTY_MD5 = "d41d8cd98f00b204e9800998ecf8427e"
EMPTY_SHA1 = "da39a3ee5e6b4b0d3255bfef95601890afd80709"
EMPTY_SHA256 = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"


@pytest.fixture(scope="module")
def misp() -> WarninglistIndex:
    return load_directory(require_shared_data("feeds", "misp-warninglists"), now=NOW)


def wl(key: str, type_: str, entries: list[str], attributes: list[str]) -> Warninglist:
    return Warninglist(key, key.title(), "", ListType(type_), 1, tuple(attributes), tuple(entries))


def test_every_shared_list_loads_cleanly(misp):
    assert len(misp.lists) == 32
    assert misp.problems == ()
    assert misp.lists["rfc1918"].name == "List of RFC 1918 CIDR blocks"


@pytest.mark.parametrize(
    ("ioc_type", "value", "expected"),
    [
        ("ipv4", "10.1.2.3", "rfc1918"),
        ("ipv4", "192.168.44.1", "rfc1918"),
        ("cidr", "192.168.0.0/24", "rfc1918"),
        ("ipv4", "8.8.8.8", "public-dns-v4"),
        ("ipv6", "2001:4860:4860::8888", "public-dns-v6"),
        ("ipv6", "fe80::1", "ipv6-linklocal"),  # listed upper-case: FE80::/10
        ("ipv6", "2001:db8::1", "rfc3849"),
        ("md5", EMPTY_MD5, "empty-hashes"),
        ("sha1", EMPTY_SHA1, "empty-hashes"),
        ("sha256", EMPTY_SHA256, "empty-hashes"),
        ("domain", "x.0000004.xyz", "dynamic-dns"),  # listed with a leading dot: .0000004.xyz
        ("domain", "com", "tlds"),  # listed upper-case: COM
        ("email", "someone@mailinator.com", "disposable-email"),
        ("domain", "app.any.run", "automated-malware-analysis"),
        ("url", "http://10.1.2.3/payload.exe", "rfc1918"),  # an IP host is checked as an IP
        ("url", "http://[2001:db8::1]:8080/x", "rfc3849"),
    ],
)
def test_known_benign_values_are_flagged(misp, ioc_type, value, expected):
    assert expected in misp.match(ioc_type, value)


def test_exact_values(misp):
    assert misp.match("ipv4", "10.1.2.3") == ["rfc1918", "rfc5735"]
    assert misp.match("ipv4", "8.8.8.8") == ["public-dns-v4"]
    assert misp.match("md5", EMPTY_MD5) == ["common-ioc-false-positive", "empty-hashes"]
    assert misp.match("domain", "evil-xyz-123.biz") == []
    assert misp.match("ipv4", "203.0.113.250") == ["rfc5735"]


def test_public_dns_v6_list_has_google(misp):
    assert "2001:4860:4860::8888" in misp.lists["public-dns-v6"].entries


def test_hostname_lists_flag_parent_domains_string_lists_do_not(misp):
    # google.com is in tranco10k (hostname) and in cisco_top1000 and majestic_million (string: exact only).
    assert "google.com" in misp.lists["tranco10k"].entries
    assert "deep.sub.google.com" not in misp.lists["tranco10k"].entries
    assert misp.match("domain", "google.com") == ["cisco_top1000", "majestic_million", "tranco10k"]
    assert misp.match("domain", "deep.sub.google.com") == ["tranco10k"]
    assert "tranco10k" in misp.match("domain", "mail.google.com")


def test_url_is_flagged_through_its_host(misp):
    assert misp.match("url", "https://www.google.com/search") == misp.match("domain", "www.google.com")
    assert "tranco10k" in misp.match("url", "https://www.google.com/search")
    assert misp.match("url", "https://evil-xyz-123.biz/www.google.com") == []


def test_email_is_flagged_through_its_domain(misp):
    assert "tranco10k" in misp.match("email", "someone@google.com")
    assert misp.match("email", "Someone@Mailinator.com") == ["disposable-email"]


def test_cidr_indicator_flagged_only_when_wholly_inside(misp):
    assert "rfc1918" in misp.match("cidr", "10.20.0.0/16")
    assert "rfc1918" not in misp.match("cidr", "10.0.0.0/7")  # half of it is public space
    assert misp.match("cidr", "0.0.0.0/0") == []
    assert "rfc3849" in misp.match("cidr", "2001:db8:1::/48")


def test_matching_attributes_are_respected(misp):
    # An md5-looking value is never checked against IP or domain lists, a domain never against hash lists.
    assert misp.match("domain", EMPTY_MD5) == []
    assert misp.match("file_path", "com") == []  # tlds applies to domains only
    assert misp.match("md5", "10.1.2.3") == []
    assert misp.match("no-such-type", "10.1.2.3") == []


def test_lists_apply_only_to_their_mapped_types():
    index = WarninglistIndex(
        [
            wl("hashes", "string", [EMPTY_MD5.upper()], ["md5"]),
            wl("nets-for-hashes", "cidr", ["10.0.0.0/8"], ["md5", "sha1"]),  # a network list for hashes: never applies
            wl("names", "hostname", ["example.com"], ["domain|ip"]),
        ]
    )
    assert index.lists["nets-for-hashes"].ioc_types == frozenset()
    assert index.lists["names"].ioc_types == frozenset({"domain"})  # domain|ip: the domain part only
    assert index.match("md5", EMPTY_MD5) == ["hashes"]  # entries compare case-insensitively for hashes
    assert index.match("sha1", EMPTY_MD5) == []
    assert index.match("ipv4", "10.1.2.3") == []
    assert index.match("domain", "a.example.com") == ["names"]
    assert index.match("ipv4", "example.com") == []


def test_ranges_overlap_adjacency_and_covering():
    index = WarninglistIndex(
        [
            wl("a", "cidr", ["10.0.0.0/9", "10.128.0.0/9", "192.0.2.7"], ["ip-dst"]),  # two halves make 10/8
            wl("b", "cidr", ["10.64.0.0/10", "0.0.0.0/32"], ["ip-src"]),
            wl("c", "cidr", ["::/0"], ["ip-src"]),
        ]
    )
    assert index.match("ipv4", "10.64.0.1") == ["a", "b"]
    assert index.match("ipv4", "10.200.0.1") == ["a"]
    assert index.match("ipv4", "192.0.2.7") == ["a"]
    assert index.match("ipv4", "192.0.2.8") == []
    assert index.match("ipv4", "0.0.0.0") == ["b"]
    assert index.match("ipv4", "255.255.255.255") == []
    assert index.match("cidr", "10.0.0.0/8") == ["a"]  # covered by the merged halves
    assert index.match("cidr", "10.64.0.0/10") == ["a", "b"]
    assert index.match("cidr", "10.0.0.0/7") == []
    assert index.match("ipv6", "2001:db8::1") == ["c"]
    assert index.match("cidr", "2001:db8::/32") == ["c"]


@pytest.mark.parametrize("accelerated", [True, False], ids=["aho-corasick", "regex"])
def test_substring_and_regex_lists(accelerated):
    long_entry = "very-long-" * 50 + ".example"
    index = WarninglistIndex(
        [
            wl("sub", "substring", ["sandbox", "any.run", long_entry], ["domain", "url"]),
            wl("rx", "regex", ["/^https?:\\/\\/[^/]*\\.test\\//i", "^ftp:"], ["url"]),
        ],
        accelerated=accelerated,
    )
    assert index.match("domain", "a." + long_entry) == ["sub"]
    assert index.match("domain", "my-sandbox-01.example") == ["sub"]
    assert index.match("url", "https://app.any.run/tasks/1") == ["sub"]
    assert index.match("url", "HTTPS://host.test/x") == ["rx"]
    assert index.match("url", "ftp://files.example/x") == ["rx"]
    assert index.match("domain", "example.org") == []


def test_substring_without_aho_corasick_matches_the_same(misp):
    plain = WarninglistIndex(misp.lists.values(), accelerated=False)
    for ioc_type, value in [
        ("email", "a@mailinator.com"),
        ("email", "a@not-a-disposable-provider.example"),
        ("domain", "app.any.run"),
        ("domain", "totally-unknown.example"),
        ("url", "https://app.any.run/x"),
    ]:
        assert plain.match(ioc_type, value) == misp.match(ioc_type, value), value


def test_malformed_lists_are_reported_and_skipped(tmp_path):
    def write(key, doc):
        (tmp_path / key).mkdir()
        (tmp_path / key / "list.json").write_text(doc if isinstance(doc, str) else json.dumps(doc))

    good = {"name": "Good", "description": "d", "type": "cidr", "version": 3, "matching_attributes": ["ip-dst"]}
    write("good", {**good, "list": ["10.0.0.0/8", "not-an-ip", "300.1.1.1/8", "10.0.0.0/33", "192.0.2.1"]})
    write("not-json", "{nope")
    write("bad-type", {**good, "type": "bloom", "list": ["x"]})
    write("no-attributes", {**good, "matching_attributes": [], "list": ["10.0.0.0/8"]})
    write("no-valid-entries", {**good, "list": ["nope", 7]})
    write("bad-regex", {**good, "type": "regex", "matching_attributes": ["url"], "list": ["(unclosed"]})
    write("bad key!", {**good, "list": ["10.0.0.0/8"]})

    index = load_directory(tmp_path, now=NOW)

    assert list(index.lists) == ["good"]
    assert index.lists["good"].entries == ("10.0.0.0/8", "192.0.2.1")
    problems = {p.key: p for p in index.problems}
    assert set(problems) == {"good", "not-json", "bad-type", "no-attributes", "no-valid-entries", "bad-regex", "bad key!"}
    assert not problems["good"].rejected and problems["good"].dropped_entries == 3
    assert "not-an-ip" in problems["good"].examples
    assert "not valid JSON" in problems["not-json"].error
    assert "'type' is 'bloom'" in problems["bad-type"].error
    assert "matching_attributes" in problems["no-attributes"].error
    assert "no valid cidr entries" in problems["no-valid-entries"].error
    assert "no valid regex entries" in problems["bad-regex"].error
    assert all(p.rejected for k, p in problems.items() if k != "good")


def test_missing_directory_names_the_variable(tmp_path):
    from threatflow.platform.errors import ConfigError

    with pytest.raises(ConfigError, match="WARNINGLISTS_SOURCE="):
        load_directory(tmp_path / "absent")


def test_snapshot_round_trip_equals_direct_load(misp):
    data = misp.snapshot()
    again = load_snapshot(data, now=NOW)
    assert again.snapshot() == data
    assert again.describe() == misp.describe()
    assert again.generated_at == misp.generated_at and again.source == misp.source
    probes = [
        ("ipv4", "10.1.2.3"),
        ("ipv4", "8.8.4.4"),
        ("ipv6", "2001:4860:4860::8888"),
        ("cidr", "192.168.0.0/24"),
        ("domain", "deep.sub.google.com"),
        ("url", "https://www.google.com/search"),
        ("email", "a@mailinator.com"),
        ("md5", EMPTY_MD5),
        ("domain", "evil-xyz-123.biz"),
    ]
    for ioc_type, value in probes:
        assert again.match(ioc_type, value) == misp.match(ioc_type, value), value
    assert json.loads(data)["format"] == warninglists.SNAPSHOT_FORMAT


def test_bad_snapshot_is_refused():
    from threatflow.platform.errors import ValidationError

    with pytest.raises(ValidationError, match="not valid JSON"):
        load_snapshot(b"{")
    with pytest.raises(ValidationError, match="format"):
        load_snapshot(json.dumps({"format": "other", "lists": []}).encode())


def test_url_host():
    assert warninglists.url_host("https://user:pw@Example.COM:8443/a?b#c") == "example.com"
    assert warninglists.url_host("http://[2001:db8::1]:80/") == "2001:db8::1"
    assert warninglists.url_host("http://example.com.") == "example.com"
    assert warninglists.url_host("http://host?x=/y") == "host"


def test_empty_file_hashes_really_are_of_the_empty_file():
    assert hashlib.md5(b"").hexdigest() == EMPTY_MD5
    assert hashlib.sha256(b"").hexdigest() == EMPTY_SHA256
