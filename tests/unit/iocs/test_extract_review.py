"""extract(): defects found reviewing the escaped-delimiter and base64 rules (one test per defect)."""

from __future__ import annotations

from threatflow.iocs.extraction import extract


def pairs(text: str) -> list[tuple[str, str]]:
    return [(str(found.type), found.value) for found in extract(text)]


def test_a_name_after_an_escaped_slash_inside_a_path_is_a_file_not_a_host() -> None:
    """The names in "path/to/evil.com" and "../../config.inc" give no domain; written with "%2F" they must not either."""
    assert pairs("GET /index.php?page=..%2F..%2Fconfig.inc HTTP/1.1") == []
    assert pairs("q=path%2Fto%2Freport.name") == []
    assert pairs("%2Fvar%2Fwww%2Fupdate.sh") == []
    # An escaped slash that starts a value, or two of them, still ends a host before it.
    assert pairs("GET /r?next=%2Fupdate-cdn.net%2F HTTP/1.1") == [("domain", "update-cdn.net")]
    assert pairs("next=%2F%2Fupdate-cdn.net%2Fgate") == [("domain", "update-cdn.net")]
    assert pairs("evil-cdn.com%2Fgate%2Fx.php") == [("domain", "evil-cdn.com")]


def test_a_double_escaped_delimiter_is_one_delimiter() -> None:
    """The escape "%252F" is an escaped "%2F": the host after it is evil-cdn.com, not "2fevil-cdn.com"."""
    assert pairs("next=%252Fevil-cdn.com%252F") == [("domain", "evil-cdn.com")]
    assert pairs("%25252Fevil-cdn.com") == [("domain", "evil-cdn.com")]
