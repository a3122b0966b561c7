"""One defang table: every defang the extractor reads is also accepted by the normaliser behind /batch and /value.

Indicators are drawn plain, defanged with the written forms the table lists (`threatflow.iocs.defang`),
then read both ways: extracted from a sentence, and normalised on their own as an item of /batch is
(`service.prepare` calls `normalise(value, type)`). Both must give the canonical value of the plain one.
"""

from __future__ import annotations

import re

from hypothesis import given, settings
from hypothesis import strategies as st

from threatflow.iocs import defang
from threatflow.iocs.extraction import extract
from threatflow.iocs.normalise import normalise

_LABEL = st.from_regex(re.compile(r"[a-z][a-z0-9]{3,10}"), fullmatch=True)  # 4+ characters: never a public suffix
_TLDS = st.sampled_from(sorted(defang.SPOKEN_TLDS - {"onion"}))
_PATH = st.from_regex(re.compile(r"(/[a-z0-9_-]{1,8}){1,3}(\?id=[0-9]{1,4})?"), fullmatch=True)


@st.composite
def defanged(draw: st.DrawFn) -> tuple[str, str]:
    """(plain, defanged) for a domain, an IPv4, an email or a URL."""
    host_labels = [draw(_LABEL) for _ in range(draw(st.integers(1, 2)))] + [draw(_TLDS)]
    ip = [str(draw(st.integers(1, 223))), *(str(draw(st.integers(0, 255))) for _ in range(3))]
    kind = draw(st.sampled_from(["domain", "ipv4", "email", "url", "url-ip"]))
    labels = ip if kind in ("ipv4", "url-ip") else host_labels

    def dots() -> str:
        out = labels[0]
        for label in labels[1:]:
            out += draw(st.sampled_from(defang.DOT_FORMS)) + label
        return out

    plain_host = ".".join(labels)
    if kind in ("domain", "ipv4"):
        return plain_host, dots()
    if kind == "email":
        local = draw(_LABEL)
        return f"{local}@{plain_host}", f"{local}{draw(st.sampled_from(defang.AT_FORMS))}{dots()}"
    secure = draw(st.booleans())
    path = draw(_PATH)
    word = draw(st.sampled_from(defang.HTTP_LOOKALIKES)) + ("s" if secure else "")
    separator = draw(st.sampled_from(defang.SCHEME_SEPARATORS))
    return f"{'https' if secure else 'http'}://{plain_host}{path}", f"{word}{separator}{dots()}{path}"


@settings(max_examples=400, deadline=None)
@given(defanged())
def test_every_defang_the_extractor_reads_is_accepted_by_batch(case: tuple[str, str]) -> None:
    plain, written = case
    canonical = normalise(plain).value
    found = [i.value for i in extract(f"The loader then contacted {written} before exiting.")]
    assert canonical in found, (written, found)
    assert normalise(written).value == canonical  # what /batch and /value store for the same item
    assert normalise(written, normalise(plain).type).value == canonical  # with its type given, too


def test_the_drift_that_was_reported_is_gone() -> None:
    # /extract read h__p://evil.com/x while /batch and /value refused it.
    assert [i.value for i in extract("h__p://evil.com/x")] == ["http://evil.com/x"]
    assert normalise("h__p://evil.com/x").value == "http://evil.com/x"


def test_a_third_slash_before_a_defanged_host_is_a_defang() -> None:
    # Hypothesis found it: the host's dot was looked for before refanging, so "[dot]" read as a URL with no host.
    assert normalise("http:///a000[dot]au/0").value == "http://a000.au/0"
    assert [i.value for i in extract("then http:///a000[dot]au/0 was fetched")] == ["http://a000.au/0"]
    assert "has no host" in _refusal("http:///x")  # a real scheme's third slash before no host stays hostless


def _refusal(value: str) -> str:
    from threatflow.platform.errors import ValidationError

    try:
        normalise(value)
    except ValidationError as exc:
        return exc.message
    return ""
