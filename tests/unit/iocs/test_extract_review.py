"""extract(): defects found reviewing the escaped-delimiter and base64 rules (one test per defect)."""

from __future__ import annotations

import base64
import textwrap

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


def _wrapped(body: str, width: int) -> str:
    return "\n".join(textwrap.wrap(base64.b64encode(body.encode()).decode(), width))


def test_a_url_in_a_wrapped_base64_blob_is_read_whole_not_cut_at_the_line_end() -> None:
    """A MIME part or a PEM block is base64 wrapped at 76 or 64 characters: a line decoded on its own gave the URL
    cut where the line ends ("https://www.paypal.com/hel"). The blob's lines are one token."""
    body = (
        "Dear customer,\nPlease verify your account at https://secure-login.example-bank.com/verify/account?id=12345 "
        "within 24 hours.\nIf you do not, visit https://www.paypal.com/help for support.\nThanks\n"
    )
    for width in (76, 64):
        found = pairs(f"Content-Transfer-Encoding: base64\n\n{_wrapped(body, width)}\n")
        assert found == [
            ("url", "https://secure-login.example-bank.com/verify/account?id=12345"),
            ("url", "https://www.paypal.com/help"),
        ], width


def test_a_one_line_base64_url_still_decodes() -> None:
    token = base64.b64encode(b"GET http://evil-cdn.com/gate.php").decode()
    assert pairs(f"The beacon held {token} in its config.") == [("url", "http://evil-cdn.com/gate.php")]


def test_a_certificate_in_base64_gives_no_url_from_its_der() -> None:
    """A PEM block's DER holds its CA's CRL and policy URLs, each followed by a length byte, not a delimiter
    ("http://ca.example/root.crl0"): decoded bytes that are not text are not read for URLs."""
    der = b"0\x82\x01\x0a\x06\x03U\x1d\x1f\x04C0A0?\xa0=\xa0;\x869http://crl.example-ca.com/RootCA.crl0\x0e\x06\x03U\x1d\x0f"
    pem = "\n".join(textwrap.wrap(base64.b64encode(der * 3).decode(), 64))
    assert pairs(f"Signed with:\n-----BEGIN CERTIFICATE-----\n{pem}\n-----END CERTIFICATE-----\n") == []


def test_a_wrapped_blob_is_decoded_at_most_twice_over(monkeypatch) -> None:
    """Work bounded by construction: every line of a 1 MB blob holds "://" in base64, and each line is decoded
    at most twice (its own segment and, as the line before, the next segment's), however the blob is cut."""
    from threatflow.iocs.extraction import encoded

    decoded: list[int] = []
    real = encoded._base64
    monkeypatch.setattr(encoded, "_base64", lambda token: decoded.append(len(token)) or real(token))
    line = base64.b64encode(b"x" * 6 + b"://" + b"y" * 48).decode()  # 76 characters, "://" in every line
    for lines in ([line] * 13_500, [line, line[:40]] * 6_750):  # one blob; a blob of two lines, again and again
        decoded.clear()
        text = "\n".join(lines)
        assert extract(text) == []
        assert sum(decoded) <= 2 * len(text)
