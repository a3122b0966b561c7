"""Search parameters and the cache key: what makes two searches share a cached page, and what keeps them apart."""

from datetime import UTC, datetime, timedelta

import pytest

from threatflow.flows import search
from threatflow.platform.errors import ValidationError


def _query(params, now):
    return search.parse_search(params, now=search.round_now(now, phase=search.cache_phase(params)))


def test_round_now_floors_to_the_cache_period():
    at = datetime(2026, 11, 26, 5, 0, 59, 999999, tzinfo=UTC)
    assert search.round_now(at) == datetime(2026, 11, 26, 5, 0, 30, tzinfo=UTC)
    assert search.round_now(at.replace(second=30, microsecond=0)) == at.replace(second=30, microsecond=0)


def test_round_now_with_a_phase_moves_the_boundary():
    at = datetime(2026, 11, 26, 5, 0, 59, tzinfo=UTC)  # 59 s past a multiple of 30 s
    assert search.round_now(at, phase=7) == datetime(2026, 11, 26, 5, 0, 37, tzinfo=UTC)
    assert search.round_now(at, phase=29) == at  # a boundary itself
    assert search.round_now(at.replace(second=6), phase=7) == datetime(2026, 11, 26, 4, 59, 37, tzinfo=UTC)


def test_searches_move_on_at_different_seconds_of_the_period():
    phases = {search.cache_phase({"srcip": f"59.166.0.{i}", "limit": "50"}) for i in range(1, 200)}
    assert len(phases) >= 25 and all(0 <= p < search.CACHE_SECONDS for p in phases)
    assert search.cache_phase({"limit": "50", "srcip": "59.166.0.1"}) == search.cache_phase({"srcip": "59.166.0.1", "limit": "50"})


def test_repeats_within_one_cache_period_share_a_key_and_the_next_period_does_not():
    params = {"srcip": "175.45.176.3", "limit": "50"}
    phase = search.cache_phase(params)
    first = datetime(2026, 11, 26, 5, 0, 30 + phase, 5, tzinfo=UTC)  # the first second of one of its periods
    key = search.SearchCache.key(_query(params, first))
    assert search.SearchCache.key(_query(dict(params), first + timedelta(seconds=28))) == key
    assert search.SearchCache.key(_query(params, first + timedelta(seconds=30))) != key


def test_every_parameter_is_part_of_the_key():
    at = datetime(2026, 11, 26, 5, 0, tzinfo=UTC)
    base = {"srcip": "175.45.176.3", "limit": "50"}
    variants = [
        {"limit": "51"},
        {"srcip": "175.45.176.4"},
        {"dstip": "149.171.126.1"},
        {"proto": "udp"},
        {"service": "dns"},
        {"label": "1"},
        {"attack_cat": "Exploits"},
        {"predicted": "attack"},
        {"predicted_cat": "Generic"},
        {"min_probability": "0.5"},
        {"from": "2026-11-20T00:00:00Z"},
        {"to": "2026-11-25T00:00:00Z"},
    ]
    keys = {search.SearchCache.key(_query({**base, **v}, at)) for v in variants}
    keys.add(search.SearchCache.key(_query(base, at)))
    assert len(keys) == len(variants) + 1


def test_a_cursor_round_trips_and_is_part_of_the_key():
    at = datetime(2026, 11, 26, 5, 0, tzinfo=UTC)
    first = _query({"srcip": "175.45.176.3"}, at)
    last = {"event_time": "2026-11-25T04:29:42.123450+00:00", "event_key": "ef4663b0-d934-5da5-b5cb-8d1c899adc29"}
    cursor = search.encode_cursor({**last, "query_id": first.query_id})
    assert search.decode_cursor(cursor) == (
        datetime(2026, 11, 25, 4, 29, 42, 123450, tzinfo=UTC),
        "ef4663b0-d934-5da5-b5cb-8d1c899adc29",
        first.query_id,
    )
    page_two = _query({"srcip": "175.45.176.3", "cursor": cursor}, at)
    assert search.SearchCache.key(page_two) != search.SearchCache.key(_query({"srcip": "175.45.176.3"}, at))


@pytest.mark.parametrize(
    ("text", "hours", "minutes"),
    [
        ("2026-11-27T00:00:00 00:00", 0, 0),  # ?from=2026-11-27T00:00:00+00:00 unencoded: the '+' arrives as a space
        ("2026-11-27T00:00:00 0530", 5, 30),
        ("2026-11-27T10:00:00.123 05:30", 5, 30),
        ("2026-11-27 10:00 0100", 1, 0),
    ],
)
def test_a_time_whose_offset_sign_became_a_space_is_read_as_plus(text, hours, minutes):
    local = datetime.fromisoformat(text.rsplit(" ", 1)[0])
    assert search.parse_time(text, "from") == (local - timedelta(hours=hours, minutes=minutes)).replace(tzinfo=UTC)


@pytest.mark.parametrize(
    "text",
    [
        "2026-11-27T00:00:00  00:00",
        "2026-11-27T00:00:00 00:00:00",
        "2026-11-27T00:00:00 0",
        "2026-11-27 00 00:00",
        "2026-11-27T00:00:00 -00:00",
    ],
)
def test_only_a_date_time_one_space_and_an_offset_is_read_so(text):
    with pytest.raises(ValidationError) as info:
        search.parse_time(text, "from")
    assert info.value.field == "from"


@pytest.mark.parametrize("text", ["０.５", "1_0", "٠.٥", " 0.5", "+0.5", ".5", "nan"])
def test_min_probability_is_ascii_decimal_syntax(text):
    """float() read fullwidth and Arabic-Indic digits, underscores and padding, as flow fields and query_int did."""
    now = datetime(2026, 11, 26, 5, 0, tzinfo=UTC)
    with pytest.raises(ValidationError) as caught:
        _query({"srcip": "59.166.0.1", "min_probability": text}, now)
    assert caught.value.field == "min_probability"
    assert _query({"srcip": "59.166.0.1", "min_probability": "0.5"}, now).min_probability == 0.5


@pytest.mark.parametrize("name", ["attack_cat", "predicted_cat"])
@pytest.mark.parametrize(
    ("text", "category"), [("Backdoors", "Backdoor"), (" backdoors ", "Backdoor"), ("DOS", "DoS"), ("normal", "Normal")]
)
def test_a_category_is_read_as_ingest_reads_it(name, text, category):
    """Ingest stores the raw files' "Backdoors" as Backdoor (features.category_named); the search refused it (a 400)."""
    now = datetime(2026, 5, 1, tzinfo=UTC)
    assert getattr(_query({name: text, "srcip": "203.0.113.9"}, now), name) == category


@pytest.mark.parametrize("text", ["Backdoorss", "Back door", "Exploit"])
def test_a_name_ingest_refuses_is_refused_by_the_search_too(text):
    with pytest.raises(ValidationError) as raised:
        _query({"attack_cat": text}, datetime(2026, 5, 1, tzinfo=UTC))
    assert raised.value.field == "attack_cat"
