"""extract(): indicators in report prose, canonical, deduplicated, with few false positives."""

from __future__ import annotations

from threatflow.iocs.extraction import extract
from threatflow.iocs.types import ExtractedIndicator, IocType

MD5 = "d41d8cd98f00b204e9800998ecf8427e"
SHA1 = "da39a3ee5e6b4b0d3255bfef95601890afd80709"
SHA256 = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"


def pairs(text: str, *, refang: bool = True) -> list[tuple[str, str]]:
    return [(str(found.type), found.value) for found in extract(text, refang=refang)]


def test_defanged_url_in_a_sentence_keeps_its_original() -> None:
    found = extract("The loader fetched hxxps://update-check[.]evil-cdn[.]com/api/gate.php?id=1, then slept.")
    assert found == [
        ExtractedIndicator(
            IocType.URL, "https://update-check.evil-cdn.com/api/gate.php?id=1", "hxxps://update-check[.]evil-cdn[.]com/api/gate.php?id=1"
        )
    ]


def test_url_trailing_punctuation_is_stripped() -> None:
    for tail in (".", ",", ")", "]", '"', "'", ";", "!"):
        assert pairs(f"see http://evil.com/x{tail} now") == [("url", "http://evil.com/x")], tail
    assert pairs("(see http://evil.com/a_(b))") == [("url", "http://evil.com/a_(b)")]
    assert pairs('url="http://evil.com/q?a=1"') == [("url", "http://evil.com/q?a=1")]


def test_url_wrapped_over_two_lines_is_joined() -> None:
    text = "Payload: http://evil.example.com/very/long/path/that/wraps/\nfile.php?x=1 was served."
    found = extract(text)
    assert [(str(f.type), f.value) for f in found] == [("url", "http://evil.example.com/very/long/path/that/wraps/file.php?x=1")]
    assert found[0].original == "http://evil.example.com/very/long/path/that/wraps/\nfile.php?x=1"
    assert pairs("from hxxp://evil[.]com/wp-content/plu\ngins/x.php today") == [("url", "http://evil.com/wp-content/plugins/x.php")]


def test_url_at_line_end_is_not_joined_with_the_next_sentence() -> None:
    assert pairs("Visit http://evil.com/index.php\nThe actor then moved on.") == [("url", "http://evil.com/index.php")]
    assert pairs("http://evil.com/x/\n1.2.3.4 was also seen") == [("url", "http://evil.com/x/"), ("ipv4", "1.2.3.4")]
    assert pairs("http://evil.com\nfoo/bar") == [("url", "http://evil.com/")]


def test_ips_in_sentences() -> None:
    text = "C2 at 185.220.101[.]4:443 and 45.9.148.7, plus (8.8.8.8). Backup 1[.]2[.]3[.]4."
    assert pairs(text) == [("ipv4", "185.220.101.4"), ("ipv4", "45.9.148.7"), ("ipv4", "8.8.8.8"), ("ipv4", "1.2.3.4")]
    found = extract("C2 at 185.220.101[.]4:443")
    assert found[0].original == "185.220.101[.]4"


def test_version_numbers_are_not_ips() -> None:
    text = "Affects version 1.2.3.4, v2.3.4.5, ver. 4.3.2.1, build 10.0.19041.1 and Windows 10.0.17763.1; 1.2.3.4.5 too."
    assert pairs(text) == []
    assert pairs("Beacon to 10.0.0.5 observed.") == [("ipv4", "10.0.0.5")]
    assert pairs("999.1.1.1 and 01.2.3.4") == []


def test_hashes_next_to_punctuation() -> None:
    text = f"MD5:{MD5.upper()}; SHA1 ({SHA1}), sha256={SHA256}."
    assert pairs(text) == [("md5", MD5), ("sha1", SHA1), ("sha256", SHA256)]


def test_hashes_must_be_bounded_and_do_not_split() -> None:
    assert pairs(f"x{MD5}") == []
    assert pairs(f"{MD5}0") == []  # 33 hex characters
    assert pairs(f"{SHA256}") == [("sha256", SHA256)]  # no md5/sha1 from its substrings
    assert pairs(SHA256[:31]) == []


def test_emails_and_cidrs() -> None:
    text = "Contact actor[@]protonmail[.]com or mailto:Bob@Example.ORG; ranges 45.9.148.0/24 and 2001:db8::/32."
    assert pairs(text) == [
        ("email", "actor@protonmail.com"),
        ("email", "Bob@example.org"),
        ("cidr", "45.9.148.0/24"),
        ("cidr", "2001:db8::/32"),
    ]


def test_ipv6() -> None:
    assert pairs("beacon to 2001:DB8::1 and [2001:db8::2]:8080 and ::ffff:10.1.2.3") == [
        ("ipv6", "2001:db8::1"),
        ("ipv6", "2001:db8::2"),
        ("ipv4", "10.1.2.3"),
    ]
    assert pairs("at 10:30:00 the std::string and :: and 00:1a:2b:3c:4d:5e") == []


def test_windows_and_posix_paths() -> None:
    text = (
        'Dropped C:\\Users\\Public\\svchost.exe, "C:\\Program Files (x86)\\Evil Corp\\x.dll" and '
        "C:\\Program Files\\Common Files\\evil.dll. Also \\\\fileserver\\share\\drop.exe and %APPDATA%\\Roaming\\x.bat. "
        "Linux: /tmp/.x/kworker and ~/.ssh/authorized_keys; not /24 or and/or."
    )
    assert pairs(text) == [
        ("file_path", "C:\\Users\\Public\\svchost.exe"),
        ("file_path", "C:\\Program Files (x86)\\Evil Corp\\x.dll"),
        ("file_path", "C:\\Program Files\\Common Files\\evil.dll"),
        ("file_path", "\\\\fileserver\\share\\drop.exe"),
        ("file_path", "%APPDATA%\\Roaming\\x.bat"),
        ("file_path", "/tmp/.x/kworker"),
        ("file_path", "~/.ssh/authorized_keys"),
    ]


def test_domains() -> None:
    assert pairs("Domains: evil[.]com, mail.evil.net and EVIL.ORG; IDN пример.рф.") == [
        ("domain", "evil.com"),
        ("domain", "mail.evil.net"),
        ("domain", "evil.org"),
        ("domain", "xn--e1afmkfd.xn--p1ai"),
    ]
    assert pairs("evil[dot]com and evil(.)net") == [("domain", "evil.com"), ("domain", "evil.net")]


def test_file_names_are_not_domains() -> None:
    text = "Attachments example.exe, report.pdf, setup.dll, invoice.zip, clip.mov, install.sh and run.py were seen."
    assert pairs(text) == []
    # Defanged, the author clearly meant a host.
    assert pairs("C2 evil[.]zip") == [("domain", "evil.zip")]


def test_code_and_prose_are_not_domains() -> None:
    assert pairs("It calls System.IO and System.Net, built on ASP.NET and Node.js. It ended.The next e.g. i.e.") == []


def test_host_inside_url_or_email_is_not_reported_separately() -> None:
    text = "Fetched http://evil.com/a and mailed ops@evil.net, and hxxp://evil[.]org/" + MD5 + ".bin"
    assert pairs(text) == [
        ("url", "http://evil.com/a"),
        ("email", "ops@evil.net"),
        ("url", f"http://evil.org/{MD5}.bin"),
    ]
    # The same host written on its own is reported.
    assert pairs("http://evil.com/a then evil.com") == [("url", "http://evil.com/a"), ("domain", "evil.com")]


def test_scheme_less_host_with_path_is_a_url() -> None:
    assert pairs("Gate at evil[.]com/gate.php now") == [("url", "http://evil.com/gate.php")]


def test_deduplicates_by_type_and_value_keeping_first_order() -> None:
    found = extract("evil[.]com then EVIL.COM then 1.2.3.4 then evil.com and 1[.]2[.]3[.]4")
    assert [(str(f.type), f.value, f.original) for f in found] == [("domain", "evil.com", "evil[.]com"), ("ipv4", "1.2.3.4", "1.2.3.4")]


def test_refang_false_finds_only_plain_indicators() -> None:
    text = "hxxp://evil[.]com/a and http://plain.com/b and 1[.]2[.]3[.]4 and 5.6.7.8 and evil[.]net"
    assert pairs(text, refang=False) == [("url", "http://plain.com/b"), ("ipv4", "5.6.7.8")]


def test_field_prefixes_and_lists() -> None:
    assert pairs("ip=1.2.3.4,5.6.7.8;domain:evil.com") == [("ipv4", "1.2.3.4"), ("ipv4", "5.6.7.8"), ("domain", "evil.com")]


def test_empty_and_plain_text() -> None:
    assert extract("") == []
    assert extract("Nothing to see here. Just words, and more words.") == []
