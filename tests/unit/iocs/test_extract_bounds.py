"""Bounded work in extraction: one token of 10 MB (no spaces) is read by its separated pieces, not as a whole.

No timing assertion here (tests/perf/bench_extract.py prints the figure); the assertions are on what is
found and on the size of every value, which show that the over-long runs were not taken as indicators.
"""

from __future__ import annotations

from threatflow.iocs.extraction import MAX_TOKEN_CHARS, extract
from threatflow.iocs.normalise import MAX_VALUE_LENGTH

TEN_MB = 10 * 1024 * 1024


def test_a_10_mb_run_without_separators_gives_nothing():
    for junk in ("a[.]" * (TEN_MB // 4), "a." * (TEN_MB // 2), "http://evil.com/" + "a" * TEN_MB, "C:\\" + "a\\" * (TEN_MB // 2)):
        assert extract(junk) == []


def test_a_10_mb_token_of_comma_separated_indicators_is_read_piece_by_piece():
    ips = [f"198.51.{i // 250 % 250}.{i % 250 + 1}" for i in range(20_000)]
    filler = "x" * 400
    token = ",".join(f"{ip},{filler}" for ip in ips)
    token = token + "," + "y" * (TEN_MB - len(token))  # one more piece, too long to be an indicator
    assert len(token) >= TEN_MB and " " not in token
    found = extract(f"feed dump: {token},evil[.]example[.]com,hxxp://bad[.]example[.]net/gate.php")
    values = [item.value for item in found]
    assert values[: len(ips)] == ips
    assert values[len(ips) :] == ["evil.example.com", "http://bad.example.net/gate.php"]
    assert all(len(item.original) <= MAX_TOKEN_CHARS and len(item.value) <= MAX_VALUE_LENGTH for item in found)


def test_tokens_up_to_the_bound_are_read_as_before():
    url = "http://evil.com/" + "a" * (MAX_VALUE_LENGTH - 100)
    assert [item.value for item in extract(f"see {url} now")] == [url]
