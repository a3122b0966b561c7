"""Text imports of public feeds as downloaded: the values the store gets, and nothing else (see text_feed_vectors)."""

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from threatflow.intel.formats import parse
from threatflow.intel.formats.feedlines import names_no_host
from threatflow.iocs.normalise import normalise

from .text_feed_vectors import VECTORS


def stored(text):
    return [(str(i.type), i.value) for i in (normalise(p.item.value, p.item.type) for p in parse("text", text).iocs)]


@pytest.mark.parametrize("vector", VECTORS, ids=[f"{v.defect}-{v.name}" for v in VECTORS])
def test_a_feed_imports_its_entries_and_nothing_else(vector):
    assert stored(vector.text) == vector.expected, vector.origin


def test_a_header_url_does_not_swallow_the_first_entry():
    """The DROPv6 header's URL ends in a path and the next line holds a '/': the extractor read the line break as a
    wrapped URL and joined them, so the first network was lost inside a URL that is not one."""
    assert stored("; https://www.spamhaus.org/drop/dropv6.txt\n2001:678:738::/48 ; SBL270738\n") == [("cidr", "2001:678:738::/48")]


def test_the_summary_counts_what_a_feed_held_besides_indicators():
    text = (
        "# Title: StevenBlack/hosts\n# Project home page: https://github.com/StevenBlack/hosts\n127.0.0.1 localhost\n"
        "0.0.0.0 0.0.0.0\n0.0.0.0 ads.tracker-example.com\n0.0.0.0 telemetry.badvendor-example.net\n"
    )
    parsed = parse("text", text)
    assert [p.item.value for p in parsed.iocs] == ["ads.tracker-example.com", "telemetry.badvendor-example.net"]
    assert parsed.skipped == {"comment lines": 2, "hosts-file local names": 1, "sink addresses": 5}


def test_tor_relay_fingerprints_are_counted_not_stored_as_hashes():
    text = (
        "ExitNode 0011BD2485AD45D984EC4159C88FC066E5E3300E\nPublished 2026-11-26 10:18:36\nExitAddress 162.247.74.201 2026-11-26 11:02:09\n"
    )
    parsed = parse("text", text)
    assert [(p.item.type, p.item.value) for p in parsed.iocs] == [("ipv4", "162.247.74.201")]
    assert parsed.skipped["tor relay fingerprints"] == 1


def test_a_report_keeps_every_indicator_of_its_comment_like_lines():
    """A report (mostly prose) is read whole, as before: a '#' heading or a ';' line may name an indicator."""
    text = "# Analysis of loader-c2.example.com\n\nThe operators rotated hosts weekly; the first beacon went to 203.0.113.9 over TLS.\n"
    assert stored(text) == [("domain", "loader-c2.example.com"), ("ipv4", "203.0.113.9")]


def test_a_feed_of_4_kb_makes_at_most_a_row_per_line():
    """Bounded work: a text feed's lines each give their few values; nothing is expanded (a CIDR stays one row)."""
    text = "".join(f"0.0.0.0 a{i}.tracker-example.com b{i}.tracker-example.com\n" for i in range(60))[:4096]
    parsed = parse("text", text)
    assert len(text) <= 4096 and len(parsed.iocs) <= 2 * text.count("\n") + 2


def test_an_address_range_gives_its_networks_within_a_budget():
    """A range is stored as the networks that cover it: an aligned block is one CIDR, an unaligned one several. A
    range needs up to 62 networks, so a document's ranges give at most one network per 8 bytes of it (a 4 KB list
    of wide ranges made thousands of rows); a range past that is counted, not stored in part."""
    parsed = parse("text", "198.51.100.0-198.51.100.255\n1.0.0.1-1.0.0.6\n1.0.0.1-255.255.255.254\n")
    assert [p.item.value for p in parsed.iocs] == ["198.51.100.0/24", "1.0.0.1/32", "1.0.0.2/31", "1.0.0.4/31", "1.0.0.6/32"]
    assert parsed.skipped["address ranges past the budget of networks"] == 1
    wide = "".join(f"1.{i}.0.1-1.{i}.255.254\n" for i in range(200))  # 30 networks each
    parsed = parse("text", wide)
    assert len(parsed.iocs) <= len(wide) // 8 and parsed.skipped["address ranges past the budget of networks"] > 150


@pytest.mark.parametrize(
    "line",
    [
        "{i}.tracker-example.com",
        "0 a{i}.tracker-example.com b{i}.tracker-example.com c{i}.tracker-example.com",
        "address=/a{i}.tracker-example.com/b{i}.tracker-example.com/0.0.0.0",
        "10.{i}.0.0-10.{i}.255.254",
        "1.{i}.0.1-1.{i}.255.254",
        '{{"cidr": "1.{i}.0.0/16"}}',
        'alert ip [1.{i}.0.1,1.{i}.0.2,1.{i}.0.3] any -> $HOME_NET any (msg:"x"; sid:{i};)',
    ],
)
def test_4_kb_of_any_feed_shape_makes_hundreds_of_rows_not_thousands(line):
    """Bounded work: no record shape expands (ranges share a budget of networks); a 4 KB feed gives at most about one
    row per 6 bytes, as a report does."""
    text = "".join(line.format(i=i) + "\n" for i in range(256)).encode()[:4096].decode(errors="ignore")
    assert len(parse("text", text).iocs) <= len(text) // 6


@pytest.mark.parametrize(
    ("line", "networks"),
    [
        ("2001:db8::1-2001:db8::3", ["2001:db8::1/128", "2001:db8::2/127"]),
        ("2001:db8:0:0:0:0:0:100 - 2001:db8:0:0:0:0:0:1ff", ["2001:db8::100/120"]),
        ("Bad Org Ltd:2001:db8::-2001:db8::ffff", ["2001:db8::/112"]),
        ("Org: with colons:192.0.2.0-192.0.2.255", ["192.0.2.0/24"]),
    ],
)
def test_an_ipv6_range_is_read_from_its_first_address(line, networks):
    """An IPv6 range has colons in it, so the PeerGuardian description ('name:start-end') must not be taken from it:
    '2001:db8::1-2001:db8::3' was read as the description '2001' and the range db8::1 to 2001:db8::3, and stored
    the ~130 networks between them (db8::1/128 … 1000::/4, a sixteenth of the address space); the same range written
    out in full was not read at all. A description may itself hold colons."""
    padding = "".join(f"n{i}.tracker-example.com\n" for i in range(100))  # room in the document's range budget
    parsed = parse("text", f"{line}\n{padding}")
    assert [p.item.value for p in parsed.iocs][: len(networks) + 1] == [*networks, "n0.tracker-example.com"]


def test_a_feeds_records_are_never_joined_into_one_url():
    """A feed is one record a line, but its entries went to the extractor one a line, and it read a URL ending in
    '/' and the next line's hash or file name as one wrapped URL: the hash was lost and a URL no one listed stored."""
    text = (
        "# indicators, one a line\nhttp://a.example.com/dl/\n44d88612fea8a8f36de82e1278abb02f\n"
        "http://b.example.com/files/\npayload-update.bin\nhttp://c.example.com/x/\n/tmp/evil.sh\nevil.example.net\n"
    )
    assert stored(text) == [
        ("url", "http://a.example.com/dl/"),
        ("md5", "44d88612fea8a8f36de82e1278abb02f"),
        ("url", "http://b.example.com/files/"),
        ("url", "http://c.example.com/x/"),
        ("file_path", "/tmp/evil.sh"),
        ("domain", "evil.example.net"),
    ]


@settings(max_examples=200, deadline=None)
@given(
    version=st.sampled_from([4, 6]),
    start=st.integers(min_value=0, max_value=2**128 - 1),
    span=st.one_of(st.integers(min_value=0, max_value=600), st.integers(min_value=0, max_value=2**40)),
    mapped=st.booleans(),
)
def test_a_ranges_networks_are_what_the_extractor_gives_for_them(version, start, span, mapped):
    """A range's networks skip the extractor (two thirds of a range list's import went to scanning them again): each
    must be the indicator the extractor and normalise give for the network written out, and no other."""
    import ipaddress

    from threatflow.intel.formats.text import indicators
    from threatflow.iocs.extraction import extract

    bits = 32 if version == 4 else 128
    first = start % 2**bits
    if version == 6 and mapped:
        first = 0xFFFF00000000 + first % 2**32  # ::ffff:a.b.c.d, written as IPv6
    last = min(first + span, (0xFFFFFFFFFFFF if version == 6 and mapped else 2**bits - 1))
    make = ipaddress.IPv4Address if version == 4 else ipaddress.IPv6Address
    low, high = make(first), make(last)
    text = f"# ranges\nblock:{low}-{high}\n203.0.113.9\n"
    networks = list(ipaddress.summarize_address_range(low, high))
    expected = [f for f in extract("\n\n".join([*map(str, networks), "203.0.113.9"])) if not names_no_host(f.value)]
    if len(networks) > len(text) // 8:  # past the document's budget of networks: the range is skipped
        expected = [f for f in expected if f.value == "203.0.113.9"]
    read = indicators(text, refang=True)
    assert read.feed
    assert [(f.type, f.value) for f in read.found] == [(f.type, f.value) for f in expected]
    assert all(normalise(f.value, f.type).value == f.value for f in read.found)


_ADDRESSES = st.builds("198.51.100.{}".format, st.integers(1, 254)) | st.builds("203.0.113.{}".format, st.integers(1, 254))
_NAMES = st.builds("{}-{}.example.{}".format, st.sampled_from(["c2", "gate", "drop"]), st.integers(0, 99), st.sampled_from(["com", "net"]))
_DETAILS = st.sampled_from(["27.11.2026", "0.95", "1.2.3", "Emotet C2", "443", "2026-11-20 09:11", "seen twice", ""])


@settings(max_examples=15, deadline=None)
@given(st.lists(st.lists(_ADDRESSES | _NAMES | _DETAILS, min_size=2, max_size=5), min_size=3, max_size=6))
def test_every_address_and_name_of_a_comma_row_is_kept(rows):
    """Only a URL on another host than a row's first field is a row detail: any address or name in any field of a
    comma row is an indicator, whatever the first field holds (a date, a score, another indicator)."""
    text = "# address, name, note\n" + "".join(", ".join(row) + "\n" for row in rows)
    wanted = {field for row in rows for field in row if field.startswith(("198.", "203.")) or field.endswith((".com", ".net"))}
    assert wanted <= {value for _, value in stored(text)}
