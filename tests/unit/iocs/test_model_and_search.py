from datetime import UTC, datetime, timedelta

import msgspec
import pytest

from threatflow.iocs.model import DecayPolicy, Severity, Tlp
from threatflow.iocs.search import FindRequest, compile_filter, decode_cursor, encode_cursor, find_sql
from threatflow.platform.errors import ValidationError

NOW = datetime(2026, 11, 23, tzinfo=UTC)
POLICY = DecayPolicy("ipv4", ttl_days=30, decay_lifetime_days=60, decay_speed=2.0, expired_below=10)


def test_decay_is_polynomial_and_bounded():
    assert POLICY.score(80, NOW, NOW) == 80
    # half the lifetime with speed 2: 1 - sqrt(0.5) = 0.2929
    assert POLICY.score(80, NOW - timedelta(days=30), NOW) == round(80 * (1 - 0.5**0.5))
    assert POLICY.score(80, NOW - timedelta(days=60), NOW) == 0
    assert POLICY.score(80, NOW - timedelta(days=600), NOW) == 0
    assert POLICY.score(80, NOW + timedelta(days=1), NOW) == 80  # seen "in the future": no decay


def test_decay_explanation_names_its_inputs():
    explained = POLICY.explain(80, NOW - timedelta(days=30), NOW)
    assert explained["model"] == "polynomial" and explained["age_days"] == 30.0
    assert explained["score"] == POLICY.score(80, NOW - timedelta(days=30), NOW)
    assert "lifetime_days" in explained["formula"]


@pytest.mark.parametrize(
    ("text", "tlp"), [("TLP:AMBER", Tlp.AMBER), ("white", Tlp.CLEAR), ("amber+strict", Tlp.AMBER_STRICT), (" Red ", Tlp.RED)]
)
def test_tlp_parse(text, tlp):
    assert Tlp.parse(text) is tlp


@pytest.mark.parametrize("text", ["amber strict", "AMBER  Strict", "TLP:AMBER STRICT", "tlp amber\tstrict", " tlp-amber strict "])
def test_amber_strict_with_its_plus_decoded_to_a_space_is_amber_strict(text):
    """An unencoded '+' in a query string (`?max_tlp=amber+strict`) reaches the TLP as a space."""
    assert Tlp.parse(text) is Tlp.AMBER_STRICT


@pytest.mark.parametrize("text", ["tlp:ex:chr", "amberstrict", "amber very strict", "strict amber", "amber strict red", "amber + strict"])
def test_other_spellings_near_amber_strict_are_no_tlp(text):
    with pytest.raises(ValueError):
        Tlp.parse(text)


def test_tlp_ceiling():
    assert Tlp.GREEN.at_most() == ["clear", "green"]


def test_severity_bands():
    assert [Severity.from_score(s) for s in (0, 15, 40, 70, 90)] == ["info", "low", "medium", "high", "critical"]


def test_empty_filter_compiles_to_true():
    assert compile_filter(FindRequest(), now=NOW).where == "TRUE"


def test_filters_are_bound_parameters_never_inlined():
    request = msgspec.convert(
        {"type": ["domain"], "tags": ["Emotet"], "value_prefix": "evil'; DROP TABLE iocs; --", "value_contains": "100%_x"}, FindRequest
    )
    compiled = compile_filter(request, now=NOW)
    assert "DROP" not in compiled.where
    assert compiled.params["prefix"] == "evil'; DROP TABLE iocs; --%"
    assert compiled.params["contains"] == "%100\\%\\_x%"
    assert compiled.params["tags_all"] == ["emotet"]


def test_naive_datetime_filter_is_rejected():
    request = msgspec.convert({"last_seen_from": "2026-01-01T00:00:00"}, FindRequest)
    with pytest.raises(ValidationError, match="time zone"):
        compile_filter(request, now=NOW)


def test_cursor_round_trip_and_tamper():
    assert decode_cursor(encode_cursor(12345)) == 12345
    with pytest.raises(ValidationError, match="cursor"):
        decode_cursor("bm90LWEtY3Vyc29y")


def test_page_asks_one_extra_row():
    sql, params = find_sql(msgspec.convert({"limit": 10, "cursor": encode_cursor(99)}, FindRequest), now=NOW)
    assert params["limit"] == 11 and params["after_id"] == 99
    assert "ORDER BY id DESC" in sql


def test_page_size_is_capped():
    with pytest.raises(msgspec.ValidationError):
        msgspec.convert({"limit": 5000}, FindRequest)
