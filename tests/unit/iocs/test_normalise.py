"""normalise() and refang(): one canonical value per indicator, clear reasons on bad input."""

from __future__ import annotations

import pytest

from threatflow.iocs.normalise import normalise, refang
from threatflow.iocs.types import Indicator, IocType
from threatflow.platform.errors import ValidationError


def ok(value: str, type_: IocType | str | None = None) -> tuple[str, str]:
    indicator = normalise(value, type_)
    assert normalise(indicator.value, type_) == indicator, "not idempotent"
    return str(indicator.type), indicator.value


def reason(value: str, type_: IocType | str | None = None) -> str:
    with pytest.raises(ValidationError) as caught:
        normalise(value, type_)
    return caught.value.message


# -- refang -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("defanged", "fanged"),
    [
        ("hxxp://evil[.]com/a", "http://evil.com/a"),
        ("hXXps://evil(.)com", "https://evil.com"),
        ("h**p://evil.com", "http://evil.com"),
        ("fxp://files{.}evil[dot]com", "ftp://files.evil.com"),
        ("hxxp[://]evil.com", "http://evil.com"),
        ("hxxp[:]//evil.com", "http://evil.com"),
        ("http(://)evil.com", "http://evil.com"),
        ("https:\\/\\/evil.com\\/x", "https://evil.com/x"),
        ("evil[.]com[/]gate", "evil.com/gate"),
        ("1.2.3[.]4", "1.2.3.4"),
        ("evil(dot)com", "evil.com"),
        ("evil{dot}com", "evil.com"),
        ("evil[DOT]com", "evil.com"),
        ("evil\\.com", "evil.com"),
        ("evil [.] com", "evil.com"),
        ("user[@]evil.com", "user@evil.com"),
        ("user[at]evil.com", "user@evil.com"),
        ("user(at)evil.com", "user@evil.com"),
        ("evil dot com", "evil.com"),
        ("www dot evil dot net", "www.evil.net"),
        ("evil[.com", "evil.com"),
    ],
)
def test_refang_undoes_report_defang_forms(defanged: str, fanged: str) -> None:
    assert refang(defanged) == fanged


def test_refang_leaves_prose_alone() -> None:
    assert refang("connect the dot to the line") == "connect the dot to the line"
    assert refang("plain text 1.2.3.4") == "plain text 1.2.3.4"
    assert refang("the http server") == "the http server"


# -- IPs and networks ---------------------------------------------------------------------------


def test_ipv4_is_strict() -> None:
    assert ok("1.2.3.4") == ("ipv4", "1.2.3.4")
    assert ok(" 8.8.8.8 ") == ("ipv4", "8.8.8.8")
    assert ok("1[.]2[.]3[.]4") == ("ipv4", "1.2.3.4")
    assert "above 255" in reason("999.1.1.1")
    assert "leading zero" in reason("01.2.3.4")
    assert "leading zero" in reason("1.2.3.010", "ipv4")
    assert "dotted-quad" in reason("1.2.3", "ipv4")


def test_ipv6_is_compressed_lower_case() -> None:
    assert ok("2001:DB8:0:0:0:0:0:1") == ("ipv6", "2001:db8::1")
    assert ok("[2001:db8::1]") == ("ipv6", "2001:db8::1")
    assert ok("2001:0db8:0000:0000:0000:ff00:0042:8329", "ipv6") == ("ipv6", "2001:db8::ff00:42:8329")
    assert "zone id" in reason("fe80::1%eth0")
    assert "not a valid IPv6" in reason("2001:db8::g", "ipv6")


def test_ipv4_mapped_ipv6_becomes_ipv4_unless_ipv6_is_asked_for() -> None:
    assert ok("::ffff:1.2.3.4") == ("ipv4", "1.2.3.4")
    assert ok("::FFFF:0102:0304") == ("ipv4", "1.2.3.4")
    assert ok("::ffff:1.2.3.4", "ipv6") == ("ipv6", "::ffff:1.2.3.4")
    assert ok("::ffff:1.2.3.4", "ipv4") == ("ipv4", "1.2.3.4")
    assert "IPv6" in reason("2001:db8::1", "ipv4")


def test_cidr_is_normalised_to_its_network() -> None:
    assert ok("10.0.0.1/8") == ("cidr", "10.0.0.0/8")
    assert ok("192.168.1.77/24") == ("cidr", "192.168.1.0/24")
    assert ok("10[.]1.2.3/32") == ("cidr", "10.1.2.3/32")
    assert ok("2001:DB8::1/32") == ("cidr", "2001:db8::/32")
    assert "netmask" in reason("1.2.3.4/33")
    assert "address/prefix" in reason("1.2.3.4/x", "cidr")
    assert "above 255" in reason("300.1.1.1/8", "cidr")


# -- domains ----------------------------------------------------------------------------------------


def test_domain_is_lower_case_without_trailing_dot() -> None:
    assert ok("Evil.COM.") == ("domain", "evil.com")
    assert ok("evil[.]example[.]co[.]uk") == ("domain", "evil.example.co.uk")
    assert ok("_dmarc.evil.com") == ("domain", "_dmarc.evil.com")
    assert ok("github.io") == ("domain", "github.io")
    assert ok("hidden.onion", "domain") == ("domain", "hidden.onion")


def test_domain_idna_is_stored_as_a_label() -> None:
    assert ok("пример.рф") == ("domain", "xn--e1afmkfd.xn--p1ai")
    assert ok("xn--e1afmkfd.xn--p1ai") == ("domain", "xn--e1afmkfd.xn--p1ai")
    assert ok("BÜCHER.de") == ("domain", "xn--bcher-kva.de")
    assert normalise("пример.рф") == normalise("xn--e1afmkfd.xn--p1ai")


def test_domain_needs_a_real_public_suffix() -> None:
    assert "Public Suffix List" in reason("evil.notatld")
    assert "Public Suffix List" in reason("example.exe")
    assert "Public Suffix List" in reason("report.pdf")
    assert "public suffix" in reason("co.uk")
    assert "top-level domain" in reason("localhost", "domain")
    assert "empty label" in reason("evil..com")
    assert "invalid label" in reason("-evil.com")
    assert "IPv4" in reason("1.2.3.4", "domain")
    assert "punycode" in reason("xn--zz.com")


def test_domains_under_the_alternative_roots_malware_uses_are_indicators() -> None:
    """Namecoin's .bit and EmerDNS's .bazar/.coin/.emc/.lib are outside ICANN's root, so not in the Public Suffix
    List, but C2 lives there (BazarLoader's .bazar; ThreatFox's host list in ../shared holds amazonservers.bit)."""
    assert ok("amazonservers.bit") == ("domain", "amazonservers.bit")
    assert ok("reddew28c[.]bazar") == ("domain", "reddew28c.bazar")
    assert ok("C2.Evil.COIN", "domain") == ("domain", "c2.evil.coin")
    assert ok("hxxp://gate.example[.]emc/x.php") == ("url", "http://gate.example.emc/x.php")
    assert "public suffix" in reason("bit", "domain") or "top-level domain" in reason("bit", "domain")
    assert "Public Suffix List" in reason("evil.notatld")


# -- URLs -----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "canonical"),
    [
        ("http://evil.com", "http://evil.com/"),
        ("HTTP://EVIL.COM/Path", "http://evil.com/Path"),
        ("http://evil.com:80/a", "http://evil.com/a"),
        ("https://evil.com:443/a", "https://evil.com/a"),
        ("http://evil.com:443/a", "http://evil.com:443/a"),
        ("https://evil.com:08443/a", "https://evil.com:8443/a"),
        ("http://evil.com/a#frag", "http://evil.com/a"),
        ("http://evil.com/?", "http://evil.com/"),
        ("http://evil.com/a%7eb%2fc%2a?q=%41%3d", "http://evil.com/a~b%2Fc%2A?q=A%3D"),
        ("http://evil.com/a b/ü", "http://evil.com/a%20b/%C3%BC"),
        ("http://evil.com/100%", "http://evil.com/100%25"),
        ("hxxps://Evil[.]Com/gate.php?id=1#x", "https://evil.com/gate.php?id=1"),
        ("http://пример.рф/x", "http://xn--e1afmkfd.xn--p1ai/x"),
        ("http://[2001:DB8::1]:80/x", "http://[2001:db8::1]/x"),
        ("http://1.2.3.4:8080", "http://1.2.3.4:8080/"),
        ("https://bank.com@evil.com/login", "https://bank.com@evil.com/login"),
        ("evil.com/gate.php", "http://evil.com/gate.php"),
        ("1.2.3.4:8080", "http://1.2.3.4:8080/"),
        ("tcp://evil.com:4444", "tcp://evil.com:4444/"),
    ],
)
def test_url_canonical_form(raw: str, canonical: str) -> None:
    assert ok(raw) == ("url", canonical)


def test_bad_urls_are_rejected_with_a_reason() -> None:
    assert "port" in reason("http://evil.com:99999/")
    assert "no host" in reason("http:///x")
    assert "top-level domain" in reason("http://intranet/x")
    assert "above 255" in reason("http://999.1.1.1/")
    assert "control characters" in reason("http://evil.com/a\x00b")
    assert "expected url" in reason("not a url", "url")


# -- hashes ------------------------------------------------------------------------------------------------

MD5 = "d41d8cd98f00b204e9800998ecf8427e"
SHA1 = "da39a3ee5e6b4b0d3255bfef95601890afd80709"
SHA256 = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"


def test_hashes_are_lower_case_of_the_exact_length() -> None:
    assert ok(MD5.upper()) == ("md5", MD5)
    assert ok(SHA1.upper()) == ("sha1", SHA1)
    assert ok(SHA256.upper()) == ("sha256", SHA256)
    assert ok(MD5, "md5") == ("md5", MD5)
    assert "31 hex characters, not 64" in reason(SHA256[:31], "sha256")
    assert "not 40" in reason(MD5, "sha1")
    assert "not hexadecimal" in reason("g" * 32, "md5")
    assert "md5 has 32" in reason("abcdef12")


# -- email -------------------------------------------------------------------------------------------------


def test_email_lower_cases_and_encodes_the_domain_only() -> None:
    assert ok("John.Doe@Evil.COM") == ("email", "John.Doe@evil.com")
    assert ok("actor[@]protonmail[.]com") == ("email", "actor@protonmail.com")
    assert ok("mailto:x@Bücher.de") == ("email", "x@xn--bcher-kva.de")
    assert "mailbox name" in reason("a..b@evil.com", "email")
    assert "mailbox name" in reason(".a@evil.com", "email")
    assert "local@domain" in reason("@evil.com", "email")
    assert "Public Suffix List" in reason("x@evil.invalidtld")


# -- file paths --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "canonical"),
    [
        ("C:\\Users\\Public\\Evil.exe", "C:\\Users\\Public\\Evil.exe"),
        ("c:/Windows//System32/", "C:\\Windows\\System32"),
        ("C:\\", "C:\\"),
        ("\\\\server\\share\\drop.exe", "\\\\server\\share\\drop.exe"),
        ("%appdata%\\Microsoft\\x.dll", "%APPDATA%\\Microsoft\\x.dll"),
        ("%ProgramFiles(x86)%\\Evil", "%PROGRAMFILES(X86)%\\Evil"),
        ("\\\\?\\C:\\very\\long", "\\\\?\\C:\\very\\long"),
        ("C:\\x\\file.txt:Zone.Identifier", "C:\\x\\file.txt:Zone.Identifier"),
        ("/tmp//X/", "/tmp/X"),
        ("/etc/passwd", "/etc/passwd"),
        ("~/.ssh/authorized_keys", "~/.ssh/authorized_keys"),
    ],
)
def test_file_paths_keep_case_and_normalise_separators(raw: str, canonical: str) -> None:
    assert ok(raw) == ("file_path", canonical)


def test_file_paths_are_not_refanged_and_bad_ones_rejected() -> None:
    assert ok("C:\\temp\\a[.]b", "file_path") == ("file_path", "C:\\temp\\a[.]b")
    assert "not allow" in reason("C:\\a|b", "file_path")
    assert "absolute" in reason("evil.exe", "file_path")
    assert "root" in reason("/", "file_path")


# -- types and errors ----------------------------------------------------------------------------------------


def test_type_may_be_given_as_a_string_or_enum() -> None:
    assert normalise("1.2.3.4", "IPv4") == Indicator(IocType.IPV4, "1.2.3.4")
    assert normalise("1.2.3.4", IocType.IPV4) == Indicator(IocType.IPV4, "1.2.3.4")


def test_a_forced_type_that_does_not_fit_names_the_expected_type() -> None:
    assert reason("evil.com", "ipv4").startswith("expected ipv4:")
    assert reason("1.2.3.4", "domain").startswith("expected domain:")
    assert reason("evil.com", "md5").startswith("expected md5:")
    assert reason("evil.com", "email").startswith("expected email:")
    assert reason("evil.com", "cidr").startswith("expected cidr:")


def test_errors_name_the_field() -> None:
    with pytest.raises(ValidationError) as caught:
        normalise("999.1.1.1")
    assert caught.value.field == "value"
    assert caught.value.to_json()["error"]["details"] == {"field": "value"}
    with pytest.raises(ValidationError) as caught:
        normalise("1.2.3.4", "hostname")
    assert caught.value.field == "type"
    assert "".join(reason("   ").split()) == "valueisempty"
    assert "longer than" in reason("a" * 10_000 + ".com")
    assert "give its type" in reason("hello")


def test_defanged_and_fanged_forms_are_the_same_indicator() -> None:
    pairs = [
        ("hxxps://evil[.]com:443/a", "https://evil.com/a"),
        ("1[.]2[.]3[.]4", "1.2.3.4"),
        ("evil[.]com", "evil.com"),
        ("a[@]b[.]com", "a@b.com"),
        ("10[.]0[.]0[.]0/8", "10.0.0.0/8"),
    ]
    for defanged, fanged in pairs:
        assert normalise(defanged) == normalise(fanged)
