"""extract() against vectors in the style of public IoC-extraction suites: each must match exactly."""

from __future__ import annotations

import time

import pytest
from unit.iocs.extract_vectors import VECTORS, Vector

from threatflow.iocs.extraction import extract


@pytest.mark.parametrize("vector", VECTORS, ids=[vector.id for vector in VECTORS])
def test_extract_vector(vector: Vector) -> None:
    found = {(str(item.type), item.value) for item in extract(vector.text)}
    assert found == vector.expected, f"missing {sorted(vector.expected - found)}, unexpected {sorted(found - vector.expected)}"


def test_vector_ids_are_unique() -> None:
    ids = [vector.id for vector in VECTORS]
    assert len(ids) == len(set(ids))


@pytest.mark.parametrize(
    ("text", "original"),
    [
        ("mail ops @ evil-mail [.] net now", "ops @ evil-mail [.] net"),
        ("bob AT evil DOT com.", "bob AT evil DOT com"),
        ("see http:// evil.com/x ok", "http:// evil.com/x"),
        ("foo 1<.>1<.>1<.>1 bar.", "1<.>1<.>1<.>1"),
        ("x http%3A%2F%2Fevil%2Ecom%2Fa y", "http%3A%2F%2Fevil%2Ecom%2Fa"),
        ("恶意域名evil-cn[.]com，", "evil-cn[.]com"),
    ],
)
def test_original_is_the_text_as_written(text: str, original: str) -> None:
    found = extract(text)
    assert len(found) == 1
    assert found[0].original == original
    assert original in text


def test_long_runs_of_brackets_spaces_and_separators_take_linear_time() -> None:
    # Each of these took seconds with an unbounded repetition (quadratic in the run); now well under a second in all.
    texts = [
        " " * 60_000 + "a @ b.com",
        "[ " * 30_000 + ".",
        "a" + "]" * 60_000,
        "a=" * 30_000 + "@b.com",
        "\t" * 60_000 + "x\t@\ty.com",
        "http%3A%2F%2F" * 5_000,
    ]
    started = time.perf_counter()
    for text in texts:
        extract(text)
    assert time.perf_counter() - started < 5
