"""Extraction test vectors in the style of public IoC-extraction libraries' own test suites.

Each vector is (style, text, expected set of (type, value)): `extract(text)` must
find exactly these indicators, in our canonical form (see `normalise`). The
styles name the suite whose *kind* of input a group imitates (InQuest
iocextract, ioc-finder, ioc-fanger, msticpy, CyberChef, iocsearcher, ninoseki
ioc-extractor, cacador); the inputs and values are our own, written for our type
names and canonical values. "analyst" holds cases of our own that those suites miss, and "quiet" prose
that must give nothing, as bait for the looser defang rules. "public-suites" holds cases written by us
after scoring extract() against the real test vectors of public suites (ioc-finder, iocsearcher, InQuest
iocextract, msticpy, ioc-fanger, cacador; the converted vectors are kept outside the repository, see the
README): one vector of our own wording per class of miss or false positive those vectors showed.

Used by tests/unit/iocs/test_extract_vectors.py (exact match per vector) and
tests/perf/bench_extract_vectors.py (pass rate and the failing vectors).

Where the suites disagree, or the right answer is ambiguous, the vector follows
what an analyst reading the report expects and our documented choices: a host
inside a URL or email is not reported again, IPv4 octets with leading zeros are
not addresses, private addresses are still addresses, "name.ext" with a file
extension is not a domain, and a hash has no hex digit next to it nor a letter in front.
"""

from __future__ import annotations

from typing import NamedTuple

__all__ = ["VECTORS", "Vector"]


class Vector(NamedTuple):
    style: str
    text: str
    expected: frozenset[tuple[str, str]]

    @property
    def id(self) -> str:
        shown = self.text.replace("\n", "\\n").replace("\r", "\\r").replace("\t", "\\t")
        return f"{self.style}:{shown[:60]}"


def _v(style: str, text: str, *expected: tuple[str, str]) -> Vector:
    return Vector(style, text, frozenset(expected))


def _url(value: str) -> tuple[str, str]:
    return ("url", value)


def _domain(value: str) -> tuple[str, str]:
    return ("domain", value)


def _ip(value: str) -> tuple[str, str]:
    return ("ipv4", value)


def _ip6(value: str) -> tuple[str, str]:
    return ("ipv6", value)


def _cidr(value: str) -> tuple[str, str]:
    return ("cidr", value)


def _email(value: str) -> tuple[str, str]:
    return ("email", value)


def _path(value: str) -> tuple[str, str]:
    return ("file_path", value)


MD5 = "4a527f83a3a4ca7e1d70adb26a35b72e"
SHA1 = "c57e08af28c85e7fe987028f7986f0bb4573f663"
SHA256 = "d47712cceb4c780603026e6325221c1bcff90679ebc076baa51c71ebe796717c"
SHA512 = "eca0944df0328fbdd8e652815b7e0918a8ae36d9c64f17b36aa3cd9bf91946ca184ebb204e28906f07c68e17d8dff19bf2b127dfe62c7fbf76e942bff408615d"
MD5_B = "7573f1429f285f385207eb60b9f8c3cc"
SHA1_B = "68e89fead6bf38be96b8461de2259be3aed4f069"
SHA256_B = "5e585fd3fab5cb85a941179b4df835cef988f0281af9f47878024f539c302df5"

_TEST = "http://evil-cdn.net/test"
_MAIL = _email("ops@evil-mail.net")
_WWW = _domain("www.evil.com")
_PHP = "http://evil.com/test.php"
_PHPS = "https://evil.com/test.php"
_VT = "/en/ip-address/90.156.201.27/information/"

# -- InQuest iocextract: wrappers, every bracket defang, punctuation after URLs, spaced emails -------------------------
_IOCEXTRACT = [
    _v("iocextract", f"  {MD5}  ", ("md5", MD5)),
    _v("iocextract", f"\t\t{SHA1}\t\t", ("sha1", SHA1)),
    _v("iocextract", f"\r\n{SHA256}\r\n", ("sha256", SHA256)),
    _v("iocextract", f".!@..{MD5}!@#-", ("md5", MD5)),
    _v("iocextract", f"{SHA512} is a sha512, not three shorter hashes"),
    _v("iocextract", "adc83b191b1c6ea0fd8b46cd9f32e592fc is 34 hex characters"),
    _v("iocextract", f"{MD5}\n{SHA1}\n{SHA256}\n{SHA512}", ("md5", MD5), ("sha1", SHA1), ("sha256", SHA256)),
    _v("iocextract", "203(.)0(.)113(.)7", _ip("203.0.113.7")),
    _v("iocextract", "198[.51.]100[.23", _ip("198.51.100.23")),
    _v("iocextract", "198[.]51.100[.]23", _ip("198.51.100.23")),
    _v("iocextract", "45.33.32.]]]156", _ip("45.33.32.156")),
    _v("iocextract", "45.33.32.)))156", _ip("45.33.32.156")),
    _v("iocextract", "45.33.32[[[.156", _ip("45.33.32.156")),
    _v("iocextract", "45[[[[.]]]]33[[[.]]32[.156", _ip("45.33.32.156")),
    _v("iocextract", "45(((.]]]]33([[.)32.)156", _ip("45.33.32.156")),
    _v("iocextract", "45.33.32\\.156", _ip("45.33.32.156")),
    _v("iocextract", "45\\.33\\.32\\.156", _ip("45.33.32.156")),
    _v("iocextract", "45.33.32\\\\\\\\.156", _ip("45.33.32.156")),
    _v("iocextract", "45[.]33(.32\\.156", _ip("45.33.32.156")),
    _v("iocextract", "0.0.0.0 and 255.255.255.255", _ip("0.0.0.0"), _ip("255.255.255.255")),
    _v("iocextract", "192.168.1 192.168.a.1 11111.1111.1111.1111"),
    _v("iocextract", "http://evil-cdn[.]net[/]test", _url(_TEST)),
    _v("iocextract", "http://evil-cdn(.)net(/)test", _url(_TEST)),
    _v("iocextract", "http://evil-cdn[dot]net/test", _url(_TEST)),
    _v("iocextract", "hxxp://evil-cdn[.net/test", _url(_TEST)),
    _v("iocextract", "hxxp://evil-cdn.]net/test", _url(_TEST)),
    _v("iocextract", "hxxp://evil-cdndot]net/test", _url(_TEST)),
    _v("iocextract", "hxxp://evil-cdn[dotnet/test", _url(_TEST)),
    _v("iocextract", "hxxp://evil-cdn.net[/test", _url(_TEST)),
    _v("iocextract", "http__evil-cdn.net/test", _url(_TEST)),
    _v("iocextract", "evil-cdn [.] net/test", _url(_TEST)),
    _v("iocextract", "evil-cdn(.)net/test", _url(_TEST)),
    _v("iocextract", "evil-cdn (.) net/test", _url(_TEST)),
    _v("iocextract", "http:// evil-cdn.net/test", _url(_TEST)),
    _v("iocextract", "ftx://files.evil-cdn.net/test", _url("ftp://files.evil-cdn.net/test")),
    _v("iocextract", "HXXP://Evil-CDN.net/Test", _url("http://evil-cdn.net/Test")),
    _v("iocextract", "tcp://evil-cdn[.]net:4444/", _url("tcp://evil-cdn.net:4444/")),
    _v("iocextract", "udp://10[.]1[.]2[.]3:53/", _url("udp://10.1.2.3:53/")),
    _v("iocextract", "sftp://drop.evil-cdn.net/in", _url("sftp://drop.evil-cdn.net/in")),
    _v("iocextract", "http://evil-cdn.net/test.com?asd=qwe%20_#zxc", _url("http://evil-cdn.net/test.com?asd=qwe%20_")),
    _v("iocextract", "a [.] b [.] evil-cdn [.] net", _domain("a.b.evil-cdn.net")),
    _v("iocextract", "a[.]b [.] evil-cdn[.]net", _domain("a.b.evil-cdn.net")),
    _v("iocextract", "http://[2001:db8:85a3:0:0:8a2e:370:7334]:80/test", _url("http://[2001:db8:85a3::8a2e:370:7334]/test")),
    _v("iocextract", "http://evil-cdn.net!", _url("http://evil-cdn.net/")),
    _v("iocextract", "http://evil-cdn.net/!!!!", _url("http://evil-cdn.net/")),
    _v("iocextract", "http://evil-cdn.net/!path", _url("http://evil-cdn.net/!path")),
    _v("iocextract", "http://evil-cdn.net/?path", _url("http://evil-cdn.net/?path")),
    _v("iocextract", "http://evil-cdn.net?", _url("http://evil-cdn.net/")),
    _v("iocextract", "http://evil-cdn.net/?q=test???", _url("http://evil-cdn.net/?q=test")),
    _v("iocextract", "http://evil-cdn.net/ ...", _url("http://evil-cdn.net/")),
    _v("iocextract", "http://evil-cdn.net/)", _url("http://evil-cdn.net/")),
    _v("iocextract", "evil-cdn[.]net!!!!", _domain("evil-cdn.net")),
    _v("iocextract", "evil-cdn[.]net/?q=test???", _url("http://evil-cdn.net/?q=test")),
    _v("iocextract", "evil-cdn[.]net/'", _url("http://evil-cdn.net/")),
    _v("iocextract", "https://evil-cdn\\(.)net/", _url("https://evil-cdn.net/")),
    _v("iocextract", "https://evil-cdn\\(.\\)net/test\\.html", _url("https://evil-cdn.net/test.html")),
    _v("iocextract", "http://evil-cdn[.]net/test[.]htm", _url("http://evil-cdn.net/test.htm")),
    _v("iocextract", "evil-cdn\\.net", _domain("evil-cdn.net")),
    _v("iocextract", "mail \\. evil-cdn \\. net", _domain("mail.evil-cdn.net")),
    _v("iocextract", 'href="http%3A%2F%2Fevil-cdn%2Enet%2Fwhite%2Ehta"/>', _url("http://evil-cdn.net/white.hta")),
    _v("iocextract", "http%3A%2F%2Fevil-cdn%2Enet", _url("http://evil-cdn.net/")),
    _v("iocextract", "CDATA[^hxxps://payload(.)evil-cdn(.)net/]]>", _url("https://payload.evil-cdn.net/")),
    _v("iocextract", "aHR0cDovL2V2aWwtY2RuLm5ldC9zb21lL3VybA==", _url("http://evil-cdn.net/some/url")),
    _v("iocextract", "  aHR0cHM6Ly9ldmlsLWNkbi5uZXQveA  ", _url("https://evil-cdn.net/x")),
    _v("iocextract", "687474703a2f2f6576696c2d63646e2e6e65742f70615f74682e646f633f713d612362", _url("http://evil-cdn.net/pa_th.doc?q=a")),
    _v("iocextract", "2020687474703A2F2F6576696C2D63646E2E6E65742F70615F74682E646F632020", _url("http://evil-cdn.net/pa_th.doc")),
    _v("iocextract", "ops @evil-mail[.]net", _MAIL),
    _v("iocextract", "ops@ evil-mail[.]net", _MAIL),
    _v("iocextract", "ops @ evil-mail[.]net", _MAIL),
    _v("iocextract", "ops @ evil-mail [ . ] net", _MAIL),
    _v("iocextract", "ops @ evil-mail.net", _MAIL),
    _v("iocextract", "ops@evil-mail [.] net", _MAIL),
    _v("iocextract", "ops@evil-mail  [  .  ]   net", _MAIL),
    _v("iocextract", "ops@evil-mail [.] net!!!???", _MAIL),
    _v("iocextract", "ops@evil-mail [.] net. tld", _MAIL),
    _v("iocextract", "ops@mail[.]evil-mail[.]net", _email("ops@mail.evil-mail.net")),
    _v("iocextract", "my.u+ser24@exa.mple24.co and a@a.co", _email("my.u+ser24@exa.mple24.co"), _email("a@a.co")),
    _v("iocextract", "myuser@ and @ and a@a"),
    _v("iocextract", "myuser @ word more words, myuser @ words. Sentence"),
    _v("iocextract", "myuser@example . com and myuser@example .]com"),
    _v("iocextract", "a@198.51.100.9", _ip("198.51.100.9")),
    _v("iocextract", "http://192.168.0.1:80/path", _url("http://192.168.0.1/path")),
    _v("iocextract", "192[.]168[.]0[.]1:80/path", _url("http://192.168.0.1/path")),
    _v("iocextract", "192[.]188[dot]0[.]1:9090/url", _url("http://192.188.0.1:9090/url")),
    _v("iocextract", "192.168.0.1:9090", _ip("192.168.0.1")),
    _v("iocextract", "tcp://[fdc4:2581:575b:5a72:0000:0000:0000:0001]:80/path", _url("tcp://[fdc4:2581:575b:5a72::1]:80/path")),
    _v("iocextract", "[fdc4:2581:575b:5a72:0000:0000:0000:0001]:80/path", _url("http://[fdc4:2581:575b:5a72::1]/path")),
    _v("iocextract", "http://fdc4:2581:575b:5a72:0000:0000:0000:0001", _url("http://[fdc4:2581:575b:5a72::1]/")),
    _v("iocextract", "fdc4:2581:575b:5a72:0000:0000:0000:0001", _ip6("fdc4:2581:575b:5a72::1")),
    _v("iocextract", "http://example.com:80/path", _url("http://example.com/path")),
    _v("iocextract", "http://example.com/[.]", _url("http://example.com/.")),
    _v("iocextract", "http://[example.com", _url("http://example.com/")),
    _v("iocextract", "short[.]is", _domain("short.is")),
    _v("iocextract", "AAAAA +example.tld+ 85 85.85 _____ _____.tld x.x.x.x tooshor.t tooshor."),
    _v("iocextract", "123-456-7890 123.102.1215 (123) 456-7890"),
    _v("iocextract", "2001:0db8::0001", _ip6("2001:db8::1")),
    _v("iocextract", "2001:db8:0:0:0:0:2:1", _ip6("2001:db8::2:1")),
    _v("iocextract", "2001:db8:0000:1:1:1:1:1", _ip6("2001:db8:0:1:1:1:1:1")),
    _v("iocextract", "fe80::1ff:fe23:4567:890a", _ip6("fe80::1ff:fe23:4567:890a")),
    _v("iocextract", ".!@..2001:db8:1234:ffff:ffff:ffff:ffff:ffff!@#-", _ip6("2001:db8:1234:ffff:ffff:ffff:ffff:ffff")),
    _v("iocextract", ".!@..111[.]111.111[.]111!@#-", _ip("111.111.111.111")),
]

# -- ioc-finder: markup and markdown boundaries, CIDRs, odd emails, paths with spaces --------------------------------
_IOC_FINDER = [
    _v("ioc-finder", "this is just a (evil-cdn.net) test of example.org", _domain("evil-cdn.net"), _domain("example.org")),
    _v(
        "ioc-finder",
        "https://goole-mail.com/mail?url=http%3A%2F%2Fbad-writer.com%2Fcs%2FC.jpg&t=1575955624&sig=x2Pa--~Chttp://files.zddfdd.org/C_file_pdf.zip",
        _url(
            "https://goole-mail.com/mail?url=http%3A%2F%2Fbad-writer.com%2Fcs%2FC.jpg&t=1575955624&sig=x2Pa--~Chttp://files.zddfdd.org/C_file_pdf.zip"
        ),
    ),
    _v("ioc-finder", "1.1.1.1/0 foobar.com/test/bingo.php", _cidr("0.0.0.0/0"), _url("http://foobar.com/test/bingo.php")),
    _v(
        "ioc-finder",
        "45.9.148.7/0 45.9.148.7/10 45.9.148.7/20 45.9.148.7/32",
        _cidr("0.0.0.0/0"),
        _cidr("45.0.0.0/10"),
        _cidr("45.9.144.0/20"),
        _cidr("45.9.148.7/32"),
    ),
    _v("ioc-finder", "this is just a (1.2.3.54) test of 255.255.1.255 255.256.344.1", _ip("1.2.3.54"), _ip("255.255.1.255")),
    _v(
        "ioc-finder",
        "2001:0db8:0000:0000:0000:ff00:0042:8329 testing 2001:db8:0:0:0:ff00:42:8329 and 2001:db8::ff00:42:8329 x;y ::1 z 1:1",
        _ip6("2001:db8::ff00:42:8329"),
        _ip6("::1"),
    ),
    _v(
        "ioc-finder",
        "test@a.com bingo@en.wikipedia.com bad@test-ing.com me@2600.com",
        _email("test@a.com"),
        _email("bingo@en.wikipedia.com"),
        _email("bad@test-ing.com"),
        _email("me@2600.com"),
    ),
    _v("ioc-finder", "john.smith(comment)@example.com", _email("john.smith@example.com")),
    _v("ioc-finder", "test@[192.168.0.1]", _ip("192.168.0.1")),
    _v("ioc-finder", ">test@[192.168.2.1]<", _ip("192.168.2.1")),
    _v("ioc-finder", "jsmith@[IPv6:2001:db8::1]", _ip6("2001:db8::1")),
    _v("ioc-finder", "http://192.64.55.61/test.php", _url("http://192.64.55.61/test.php")),
    _v("ioc-finder", "http://foo.youtube/test.php", _url("http://foo.youtube/test.php")),
    _v("ioc-finder", "ȩxample.com", _domain("xn--xample-9oc.com")),
    _v("ioc-finder", "example.com example.com Example.com exAmplE.com", _domain("example.com")),
    _v("ioc-finder", "bad@example.com Bad@example.com", _email("bad@example.com"), _email("Bad@example.com")),
    _v("ioc-finder", f"this is a test{'a' * 32}"),
    _v("ioc-finder", f'this is a test "{"a" * 32}"', ("md5", "a" * 32)),
    _v("ioc-finder", f"this is a test {'a' * 32}.", ("md5", "a" * 32)),
    _v("ioc-finder", f"{'A' * 32} {'b' * 40} {'c' * 64} {'d' * 128}", ("md5", "a" * 32), ("sha1", "b" * 40), ("sha256", "c" * 64)),
    _v("ioc-finder", "http://192.168.0.1/test/bad.html</a><br></div>", _url("http://192.168.0.1/test/bad.html")),
    _v("ioc-finder", '<IMg SRc="https://i.imgur.com/abc.png#4827766048"/><br>', _url("https://i.imgur.com/abc.png")),
    _v("ioc-finder", "(https://i.imgur.com/abc.png#abc)", _url("https://i.imgur.com/abc.png")),
    _v("ioc-finder", "[https://i.imgur.com/abc.png](https://i.imgur.com/abc.png)", _url("https://i.imgur.com/abc.png")),
    _v("ioc-finder", "DownloadString('https://hacks4all[.]net/rdp.ps1');g $I", _url("https://hacks4all.net/rdp.ps1")),
    _v("ioc-finder", 'DownloadString("https://hacks4all[.]net/rdp.ps2");g $I', _url("https://hacks4all.net/rdp.ps2")),
    _v("ioc-finder", "Host: dfasdfa (mz-fcb301p.ocn.ad.jp asdfsdafs", _domain("mz-fcb301p.ocn.ad.jp")),
    _v("ioc-finder", "smtp.mailfrom"),
    _v("ioc-finder", "bar.com\" bar.com' bar.com.", _domain("bar.com")),
    _v("ioc-finder", 'my email is: foo"bar@gmail.com', _email("bar@gmail.com")),
    _v("ioc-finder", "foobar@gmail.comahhhhhhhh"),
    _v("ioc-finder", "smtp.mailfrom=example@example.com", _email("example@example.com")),
    _v("ioc-finder", "-----foo@bar.com", _email("foo@bar.com")),
    _v("ioc-finder", "foo-burt@bar.com f-1@bar.com", _email("foo-burt@bar.com"), _email("f-1@bar.com")),
    _v("ioc-finder", "2018.12.15.14.05.43 111.12.15.14.05.43 18.12.15.1411111111 1112.15.14.05 15.14.05.1112"),
    _v("ioc-finder", "18.12.15.14.", _ip("18.12.15.14")),
    _v("ioc-finder", "1.1.1.1.1 1.1.1.1.a 1.1.1.1.1."),
    _v("ioc-finder", "foo.onion and http://foo.onion/test", _domain("foo.onion"), _url("http://foo.onion/test")),
    _v(
        "ioc-finder",
        '<link href="http://fonts.googleapis.com/css?family=Lato:400,700" rel="stylesheet" type="text/css"/>',
        _url("http://fonts.googleapis.com/css?family=Lato:400,700"),
    ),
    _v(
        "ioc-finder",
        "github.com/StylishThemes/GitHub-Dark/blob/master/tools/authors.sh hightower.space/projects",
        _url("http://github.com/StylishThemes/GitHub-Dark/blob/master/tools/authors.sh"),
        _url("http://hightower.space/projects"),
    ),
    _v("ioc-finder", "http://example.com//test", _url("http://example.com//test")),
    _v("ioc-finder", "Foo https://citizenlab.ca/about/), bar", _url("https://citizenlab.ca/about/")),
    _v("ioc-finder", "url,https://example.com/g/foo,Malicious Google Groups discussion", _url("https://example.com/g/foo")),
    _v(
        "ioc-finder",
        "C:\\Windows\\11987416.exe\n\nC:\\Windows\\System32\\46615275.exe\n\nC:\\Windows\\SysWOW64\\f9jwqSbS.exe",
        _path("C:\\Windows\\11987416.exe"),
        _path("C:\\Windows\\System32\\46615275.exe"),
        _path("C:\\Windows\\SysWOW64\\f9jwqSbS.exe"),
    ),
    _v(
        "ioc-finder",
        "HKEY_LOCAL_MACHINE\\Software\\Microsoft\\Windows\\CurrentVersion\\Run and HKLM\\Software\\Microsoft\\Windows",
    ),
    _v(
        "ioc-finder",
        "test /Library/Storage/File System/HFS/25cf5d02-e50b-4288-870a-528d56c3cf6e/pivtoken.appex file",
        _path("/Library/Storage/File System/HFS/25cf5d02-e50b-4288-870a-528d56c3cf6e/pivtoken.appex"),
    ),
    _v("ioc-finder", "and this is a file ~/foo/bar/abc.py", _path("~/foo/bar/abc.py")),
    _v("ioc-finder", "/etc/init.d/.rebootime", _path("/etc/init.d/.rebootime")),
    _v("ioc-finder", "http://userid:password@example.com:8080/", _url("http://userid:password@example.com:8080/")),
    _v("ioc-finder", "http://142.42.1.1:8080/", _url("http://142.42.1.1:8080/")),
    _v("ioc-finder", "http://foo.com/blah_blah_(wikipedia)_(again)", _url("http://foo.com/blah_blah_(wikipedia)_(again)")),
    _v("ioc-finder", "http://foo.com/unicode_(✪)_in_parens", _url("http://foo.com/unicode_(%E2%9C%AA)_in_parens")),
    _v("ioc-finder", "http://code.google.com/events/#&product=browser", _url("http://code.google.com/events/")),
    _v("ioc-finder", "http://foo.bar/?q=Test%20URL-encoded%20stuff", _url("http://foo.bar/?q=Test%20URL-encoded%20stuff")),
    _v("ioc-finder", "http:// http://. http://../ http://??/ http://##/ //a ///a http:///a rdar://1234 h://test :// should fail"),
    _v("ioc-finder", "http://-error-.invalid/ http://1.1.1.1.1 http://123.123.123 http://3628126748 http://.www.foo.bar/"),
    _v("ioc-finder", ".com abc -hi-.com *hi*.com foo@abc me@*hi*.com"),
]

# -- ioc-fanger: every way to write a dot, an at or a scheme ------------------------------------------------------------
_IOC_FANGER = [
    _v("ioc-fanger", "evil[.]com hxxp://evil[.]com hXXp://evil[.]com", _domain("evil.com"), _url("http://evil.com/")),
    _v("ioc-fanger", "evil\\.com and evil^.com", _domain("evil.com")),
    _v("ioc-fanger", "1[.]2[.]3[.]4", _ip("1.2.3.4")),
    _v("ioc-fanger", "bob[@]evil[.]com mary[@]evil.com", _email("bob@evil.com"), _email("mary@evil.com")),
    _v("ioc-fanger", "carlos[at]evil.com juanita(at)evil.com", _email("carlos@evil.com"), _email("juanita@evil.com")),
    _v("ioc-fanger", "http[:]//evil.org https[:]//evil.org", _url("http://evil.org/"), _url("https://evil.org/")),
    _v("ioc-fanger", "hXxps[:]//evil.org/test?target=bad[@]test.com", _url("https://evil.org/test?target=bad@test.com")),
    _v("ioc-fanger", "bad-dot-com example-dot-ru", _domain("bad.com"), _domain("example.ru")),
    _v("ioc-fanger", "5[,]6[,]7(,)8", _ip("5.6.7.8")),
    _v("ioc-fanger", "bob(@)evil.com", _email("bob@evil.com")),
    _v("ioc-fanger", "bob{@}evil.com", _email("bob@evil.com")),
    _v("ioc-fanger", "bob{at}evil.com", _email("bob@evil.com")),
    _v("ioc-fanger", "bob AT evil.com", _email("bob@evil.com")),
    _v("ioc-fanger", "bob@evil[dot]com", _email("bob@evil.com")),
    _v("ioc-fanger", "bob@evil(dot)com", _email("bob@evil.com")),
    _v("ioc-fanger", "bob@evil DOT com", _email("bob@evil.com")),
    _v("ioc-fanger", "me (arroba) evil-corp (punto) com", _email("me@evil-corp.com")),
    _v("ioc-fanger", "me[arroba]evil-corp[punto]com", _email("me@evil-corp.com")),
    _v("ioc-fanger", "me@evil-corp (punkt) de", _email("me@evil-corp.de")),
    _v("ioc-fanger", "me@evil-corp[punkt]de", _email("me@evil-corp.de")),
    _v("ioc-fanger", "www[.evil.com", _WWW),
    _v("ioc-fanger", "www(.)evil(.)com", _WWW),
    _v("ioc-fanger", "www[.[evil[.[com", _WWW),
    _v("ioc-fanger", "www].]evil].]com", _WWW),
    _v("ioc-fanger", "www].[evil].[com", _WWW),
    _v("ioc-fanger", "www[.evil[.com", _WWW),
    _v("ioc-fanger", "www].evil].com", _WWW),
    _v("ioc-fanger", "www.]evil.]com", _WWW),
    _v("ioc-fanger", "www{.}evil}.{com", _WWW),
    _v("ioc-fanger", "www\\.evil\\.com", _WWW),
    _v("ioc-fanger", "www^.evil^.com", _WWW),
    _v("ioc-fanger", "foo[-]bar.com", _domain("foo-bar.com")),
    _v("ioc-fanger", "[www].evil.com", _WWW),
    _v("ioc-fanger", "(www).evil.com", _WWW),
    _v("ioc-fanger", "https://evil.com\\/test.php", _url(_PHPS)),
    _v(
        "ioc-fanger", "diota[-]ar.com:80/.well-known/acme-challenge/mxr.pdf", _url("http://diota-ar.com/.well-known/acme-challenge/mxr.pdf")
    ),
    _v(
        "ioc-fanger",
        "xxxxs://proverka[.]host/ Email: silena[.]berillo(at)gmail[.]com, hto2018(at)yandex[.]ru",
        _url("https://proverka.host/"),
        _email("silena.berillo@gmail.com"),
        _email("hto2018@yandex.ru"),
    ),
    _v(
        "ioc-fanger",
        "code to (https://www.linkedin.com/feed/hashtag/?keywords=%23IOCs)<https://example.in/foo>",
        _url("https://www.linkedin.com/feed/hashtag/?keywords=%23IOCs"),
        _url("https://example.in/foo"),
    ),
    _v("ioc-fanger", "analysis), yo. a. [b a. (b"),
    _v("ioc-fanger", "[Researcher email address].\n\nBest Regards,"),
    _v("ioc-fanger", "seasharpee 123howp foodotcom"),
    _v("ioc-fanger", "xxxx://evil.com/test.php", _url(_PHP)),
    _v("ioc-fanger", "xXxXx://evil.com/test.php", _url(_PHPS)),
    _v("ioc-fanger", "hXXps://evil.com/test.php", _url(_PHPS)),
    _v("ioc-fanger", "http ://evil.com/test.php", _url(_PHP)),
    _v("ioc-fanger", "https:// evil.com/test.php", _url(_PHPS)),
    _v("ioc-fanger", "http//evil.com/test.php", _url(_PHP)),
    _v("ioc-fanger", "https// evil.com/test.php", _url(_PHPS)),
    _v("ioc-fanger", "http:///evil.com/test.php", _url(_PHP)),
    _v("ioc-fanger", "https :///evil.com/test.php", _url(_PHPS)),
    _v("ioc-fanger", "[https]://evil.com/test.php", _url(_PHPS)),
    _v("ioc-fanger", "(http)://evil.com/test.php", _url(_PHP)),
    _v("ioc-fanger", "hxxps[://]evil[.]com/test[.]html", _url("https://evil.com/test.html")),
    _v("ioc-fanger", "foo@barDOTcom", _email("foo@bar.com")),
    _v("ioc-fanger", "foo  @  bar.com", _email("foo@bar.com")),
    _v("ioc-fanger", "foo [AT] bar.com", _email("foo@bar.com")),
    _v("ioc-fanger", "foo (at) bar.com", _email("foo@bar.com")),
    _v("ioc-fanger", "foo[et]bar.com", _email("foo@bar.com")),
    _v("ioc-fanger", "fooMATbar.com", _domain("foomatbar.com")),
    _v("ioc-fanger", "foo 1<.>1<.>1<.>1 bar.", _ip("1.1.1.1")),
    _v("ioc-fanger", " 1,2,3,4,5,6 "),
    _v(
        "ioc-fanger",
        "div><div><br></div><div>hxxp://zeplin[.]atwebpages[.]com/inter[.]php</div><",
        _url("http://zeplin.atwebpages.com/inter.php"),
    ),
    _v(
        "ioc-fanger",
        "In the UI: https://help.passivetotal.org/tags_&_classifications.html (https://help.passivetotal.org/tags_&_classifications.html)",
        _url("https://help.passivetotal.org/tags_&_classifications.html"),
    ),
    _v("ioc-fanger", "domain (www.example.com).", _domain("www.example.com")),
    _v("ioc-fanger", "http://accounts.dot-example.online", _url("http://accounts.dot-example.online/")),
    _v("ioc-fanger", "WWW.MDOT.EXAMPLE.VIP/pay", _url("http://www.mdot.example.vip/pay")),
    _v("ioc-fanger", "foo-dot-com", _domain("foo.com")),
]

# -- msticpy: command lines, field prefixes, lists in brackets ---------------------------------------------------------
_PROC = _path("C:\\one\\path\\or\\another\\myprocess")
_MSTICPY = [
    _v("msticpy", r"c:\one\path\or\another\myprocess -ip4:206.123.1.123", _PROC, _ip("206.123.1.123")),
    _v(
        "msticpy",
        "c:\\one\\path\\or\\another\\myprocess -ip6:(2001:0db8:85a3:0000:0000:8a2e:0370:7334,\n"
        "    2001:db8:85a3:0:0:8a2e:370:7334,2001:db8:85a3::8a2e:370:7334,::ffff:192.0.2.128)",
        _PROC,
        _ip6("2001:db8:85a3::8a2e:370:7334"),
        _ip("192.0.2.128"),
    ),
    _v(
        "msticpy",
        "c:\\one\\path\\or\\another\\myprocess /url:https://some.domain.it/thepath?qry1=abc&qry2=xyz\n"
        '        /url:https://myuser@some.domain.es:88/thepath?qry1=abc&qry2=xyz"<some other trailing stuff',
        _PROC,
        _url("https://some.domain.it/thepath?qry1=abc&qry2=xyz"),
        _url("https://myuser@some.domain.es:88/thepath?qry1=abc&qry2=xyz"),
    ),
    _v("msticpy", r'c:\one\path\or\another\myprocess -file:"..\another\file" -file:"\\uncpath\file"', _PROC, _path("\\\\uncpath\\file")),
    _v("msticpy", "/bin/bash --file:./bish --file:/bin/bash --file:../../bosh", _path("/bin/bash")),
    _v("msticpy", f"-something -hash={MD5_B}", ("md5", MD5_B)),
    _v("msticpy", f"{MD5}hash -something-hash={MD5_B}hash -x", ("md5", MD5), ("md5", MD5_B)),
    _v("msticpy", f"{SHA1}hash -something -hash={SHA256}hash", ("sha1", SHA1), ("sha256", SHA256)),
    _v("msticpy", f"-something\n-hash={SHA1_B} -x", ("sha1", SHA1_B)),
    _v("msticpy", f"hash={SHA256_B},", ("sha256", SHA256_B)),
    _v("msticpy", f"curl 'https://www.virustotal.com{_VT}'", _url(f"https://www.virustotal.com{_VT}")),
    _v("msticpy", "some text with a domain.like.uk in it", _domain("domain.like.uk")),
    _v("msticpy", "some text with a bad domain.like.iandom in it"),
    _v("msticpy", "some text with a news.ycombinator.com in it", _domain("news.ycombinator.com")),
    _v("msticpy", "some text with User <user@microsoft.com> in it", _email("user@microsoft.com")),
    _v("msticpy", "some text with user@microsoft.com (User XYZ)> in it", _email("user@microsoft.com")),
    _v("msticpy", "some text with user@abc.def.net> in it", _email("user@abc.def.net")),
    _v("msticpy", r"c:\one\path\or\another\myprocess -ip4:206[.]123.1.123", _PROC, _ip("206.123.1.123")),
    _v("msticpy", r"c:\one\path\or\another\myprocess -ip4:206.123[.]1[.]123", _PROC, _ip("206.123.1.123")),
    _v("msticpy", f"curl 'hXXps://www.virustotal.com{_VT}'", _url(f"https://www.virustotal.com{_VT}")),
    _v("msticpy", f"curl 'ftp://www[.]virustotal[.]com{_VT}'", _url(f"ftp://www.virustotal.com{_VT}")),
    _v("msticpy", f"curl 'ftps://www[.]virustotal.com{_VT}'", _url(f"ftps://www.virustotal.com{_VT}")),
    _v("msticpy", f"curl 'fXp://www[.]virustotal.com{_VT}'", _url(f"ftp://www.virustotal.com{_VT}")),
    _v("msticpy", f"curl 'sfXp://www.virustotal.com{_VT}'", _url(f"sftp://www.virustotal.com{_VT}")),
    _v("msticpy", f"curl 'fXps://www[.]virustotal.com{_VT}'", _url(f"ftps://www.virustotal.com{_VT}")),
    _v("msticpy", f"curl 'telnet://www[.]virustotal.com{_VT}'", _url(f"telnet://www.virustotal.com{_VT}")),
    _v("msticpy", "some text with a domain[.]like[.]uk in it", _domain("domain.like.uk")),
    _v("msticpy", "some text with a user[AT]domain[.]like.uk in it", _email("user@domain.like.uk")),
]

# -- CyberChef: lists of emails (internationalised too), octets, underscores in labels, labelled hashes ------------------
_CYBERCHEF = [
    _v(
        "cyberchef",
        "email@example.com\nfirstname.lastname@example.com\nemail@subdomain.example.com\nfirstname+lastname@example.com\n"
        "1234567890@example.com\nemail@example-one.com\n_______@example.com email@example.name\n"
        "email@example.museum email@example.co.jp firstname-lastname@example.com",
        _email("email@example.com"),
        _email("firstname.lastname@example.com"),
        _email("email@subdomain.example.com"),
        _email("firstname+lastname@example.com"),
        _email("1234567890@example.com"),
        _email("email@example-one.com"),
        _email("_______@example.com"),
        _email("email@example.name"),
        _email("email@example.museum"),
        _email("email@example.co.jp"),
        _email("firstname-lastname@example.com"),
    ),
    _v("cyberchef", "FoO@BaR.CoM, john@192.168.10.100", _email("FoO@bar.com"), _ip("192.168.10.100")),
    _v("cyberchef", "gomez@junk.br and Abc.123@example.com.", _email("gomez@junk.br"), _email("Abc.123@example.com")),
    _v("cyberchef", "test@xn--bcher-kva.com", _email("test@xn--bcher-kva.com")),
    _v("cyberchef", "user+mailbox/department=shipping@example.com", _email("user+mailbox/department=shipping@example.com")),
    _v(
        "cyberchef", "JosễSilvễ@googlễ.com and JosễSilva@google.com", _email("JosễSilvễ@xn--googl-t71b.com"), _email("JosễSilva@google.com")
    ),
    _v("cyberchef", "उपयोगकर्ता@उदाहरण.कॉम", _email("उपयोगकर्ता@xn--p1b6ci4b4b3a.xn--11b4c3d")),
    _v("cyberchef", "x@Bücher.de", _email("x@xn--bcher-kva.de")),
    _v("cyberchef", "Dörte@Sörensen.example.com", _email("Dörte@xn--srensen-90a.example.com")),
    _v("cyberchef", "аджай@экзампл.рус", _email("аджай@xn--80aniges7g.xn--p1acf")),
    _v("cyberchef", "0.0.0.0", _ip("0.0.0.0")),
    _v("cyberchef", "10.10.10.10 25.25.25.25 99.99.99.99", _ip("10.10.10.10"), _ip("25.25.25.25"), _ip("99.99.99.99")),
    _v("cyberchef", "255.256.255.255 255.255.256.255 256.255.255.255 255.255.255.256"),
    _v("cyberchef", "01.01.01.01 0123.0123.0123.0123 0378.01.01.01 03.0377.2.3"),
    _v("cyberchef", "_sip._tls.lewes-tc.gov.uk", _domain("_sip._tls.lewes-tc.gov.uk")),
    _v("cyberchef", "foo_bar.example.com", _domain("foo_bar.example.com")),
    _v("cyberchef", "normal-domain.org", _domain("normal-domain.org")),
    _v("cyberchef", "example._com"),
    _v("cyberchef", "-bad.example.com", _domain("bad.example.com")),
    _v("cyberchef", "_dmarc.foo_bar.example.com", _domain("_dmarc.foo_bar.example.com")),
    _v("cyberchef", "-_dmarc.bad.example.com", _domain("_dmarc.bad.example.com")),
    _v(
        "cyberchef",
        f"The quick brown fox\n\nMD5: {MD5}\nSHA1: {SHA1}\nSHA256: {SHA256}\nSHA512: {SHA512}",
        ("md5", MD5),
        ("sha1", SHA1),
        ("sha256", SHA256),
    ),
]

# -- iocsearcher: its rearm forms, onion hosts ----------------------------------------------------------------------------
_ONION = "2gzyxa5ihm7nsggfxnu52rck2vv4rvmdlkiu3zzui5du4xyclen53wyd.onion"
_IOCSEARCHER = [
    _v("iocsearcher", "Find this email contact[AT]example[dot]com", _email("contact@example.com")),
    _v("iocsearcher", "IP address 1[.]2[.]3.[4] seen", _ip("1.2.3.4")),
    _v("iocsearcher", "URL hxxp://example[DOT]com", _url("http://example.com/")),
    _v("iocsearcher", "h___p://evil.com/x and httx://evil.org/y", _url("http://evil.com/x"), _url("http://evil.org/y")),
    _v("iocsearcher", "contact (at) evil.com", _email("contact@evil.com")),
    _v("iocsearcher", "write to contact at evil.com", _domain("evil.com")),
    _v("iocsearcher", "evil[]com", _domain("evil.com")),
    _v("iocsearcher", f"http://{_ONION}/ and {_ONION}", _url(f"http://{_ONION}/"), _domain(_ONION)),
    _v("iocsearcher", "subnet 45.9.148.0/24 and 10[.]0[.]0[.]0/8", _cidr("45.9.148.0/24"), _cidr("10.0.0.0/8")),
    # A missing space after a full stop is not a domain.
    _v("iocsearcher", "It ended in a sentence.Another one began"),
]

# -- ioc-extractor (ninoseki): mixed brackets, IDN hosts, defanged IPv6 (as CyberChef's "Defang IP" writes it) ----
_IOC_EXTRACTOR = [
    _v(
        "ioc-extractor",
        "1.1.1[.]1 google(.)com テスト.example.com https://www.google[.]com http://テスト.example.com test@テスト.example.com example.nope",
        _ip("1.1.1.1"),
        _domain("google.com"),
        _domain("xn--zckzah.example.com"),
        _url("https://www.google.com/"),
        _url("http://xn--zckzah.example.com/"),
        _email("test@xn--zckzah.example.com"),
    ),
    _v("ioc-extractor", "test(.}test{.)example[.)com", _domain("test.test.example.com")),
    _v("ioc-extractor", "1.)1[.1.)1 and 1.1.1(dot)2", _ip("1.1.1.1"), _ip("1.1.1.2")),
    _v("ioc-extractor", "はじめよう.みんな", _domain("xn--p8j9a0d9c9a.xn--q9jyb4c")),
    _v("ioc-extractor", "hxxps[:]//test.example[.)com[/]path", _url("https://test.example.com/path")),
    _v("ioc-extractor", "h**ps://google[.)com h**p://neverssl.com", _url("https://google.com/"), _url("http://neverssl.com/")),
    _v("ioc-extractor", "test{@}example.com test(@)example.org", _email("test@example.com"), _email("test@example.org")),
    _v("ioc-extractor", "example.nope test@example.nope http://example.nope テスト.nope"),
    _v("ioc-extractor", "2001[:]0db8[:]85a3[:]0000[:]0000[:]8a2e[:]0370[:]7343", _ip6("2001:db8:85a3::8a2e:370:7343")),
    _v("ioc-extractor", "2001[:]db8[:]3c4d[:]15[:][:]1a2f[:]1a2b", _ip6("2001:db8:3c4d:15::1a2f:1a2b")),
    _v(
        "ioc-extractor",
        "one[@]example[.]com firstname[.]lastname[@]example[.]co[.]uk",
        _email("one@example.com"),
        _email("firstname.lastname@example.co.uk"),
    ),
    _v("ioc-extractor", "Use [@] and [.] anywhere"),
    _v("ioc-extractor", "http://[::1]:8080/ and ftp://[2001:db8::2]/x", _url("http://[::1]:8080/"), _url("ftp://[2001:db8::2]/x")),
]

# -- cacador: one value per line, file names next to hosts -------------------------------------------------------------
_CACADOR = [
    _v("cacador", "8.8.8.8", _ip("8.8.8.8")),
    _v("cacador", "300.300.300.300"),
    _v("cacador", "test@test.com", _email("test@test.com")),
    _v("cacador", "example.com", _domain("example.com")),
    _v("cacador", "example.pumpkin"),
    _v("cacador", "https://www.example.com/foo/bar?baz=1", _url("https://www.example.com/foo/bar?baz=1")),
    _v("cacador", "test.doc test.dll test.jpg test.dl"),
    _v("cacador", "1[.]2.3[.]4 and 1(.)2.3(.)5", _ip("1.2.3.4"), _ip("1.2.3.5")),
    _v("cacador", "www.google.com/)", _url("http://www.google.com/")),
    _v("cacador", "874058e8d8582bf85c115ce319c5b0af", ("md5", "874058e8d8582bf85c115ce319c5b0af")),
    _v("cacador", "874058e8d8582bf85c115ce319c5b0a"),
]

# -- analyst: report prose of our own ----------------------------------------------------------------------------------
_ANALYST = [
    _v("analyst", "C2 at hxxps://evil[.]com:8443/gate then 185.220.101[.]4:443", _url("https://evil.com:8443/gate"), _ip("185.220.101.4")),
    _v("analyst", "beacons to evil[.]com:443 every hour", _domain("evil.com")),
    _v("analyst", "panel at 1.2.3.4:8080/admin", _url("http://1.2.3.4:8080/admin")),
    _v("analyst", "Dropped C:/Users/Public/evil.exe", _path("C:\\Users\\Public\\evil.exe")),
    _v("analyst", "copied to \\\\10.1.2.3\\C$\\Windows\\evil.exe", _path("\\\\10.1.2.3\\C$\\Windows\\evil.exe")),
    _v("analyst", "persistence via %TEMP%\\upd.exe and /dev/shm/.x/kworker", _path("%TEMP%\\upd.exe"), _path("/dev/shm/.x/kworker")),
    _v(
        "analyst",
        "Sender <admin@evil-corp.com> used mailto:billing@evil-corp.com",
        _email("admin@evil-corp.com"),
        _email("billing@evil-corp.com"),
    ),
    _v("analyst", f"| {SHA256} | loader.dll |", ("sha256", SHA256)),
    _v("analyst", f"sha256:{SHA256_B} md5={MD5}", ("sha256", SHA256_B), ("md5", MD5)),
    _v("analyst", "Affects version 1.2.3.4 and Windows 10.0.19041.1; v2.3.4.5 too"),
    _v("analyst", "Attachments invoice.pdf.exe, report.docx and setup.msi"),
    _v("analyst", "Resolved münchen-evil.de and пример.рф", _domain("xn--mnchen-evil-thb.de"), _domain("xn--e1afmkfd.xn--p1ai")),
    _v("analyst", "HTTP://EVIL.COM/Path?Q=1", _url("http://evil.com/Path?Q=1")),
    _v("analyst", "ranges 2001:db8::/32 and 2001:DB8:0:1::/64", _cidr("2001:db8::/32"), _cidr("2001:db8:0:1::/64")),
    _v("analyst", "at 10:30:00 the std::string and 00:1a:2b:3c:4d:5e"),
    _v("analyst", "exfil to evil.com.. then stopped", _domain("evil.com")),
    _v("analyst", "http://evil.com:99999/x was garbled", _domain("evil.com")),
    _v("analyst", "C2 evil[.]com—the same host as 1.2.3.4—was • evil.org", _domain("evil.com"), _ip("1.2.3.4"), _domain("evil.org")),
    _v("analyst", "中文报告：恶意域名evil-cn[.]com，地址（45.9.148.7）。", _domain("evil-cn.com"), _ip("45.9.148.7")),
    _v("analyst", "see _evil[.]com_ and **hxxps://evil[.]org/x**", _domain("evil.com"), _url("https://evil.org/x")),
    _v("analyst", "访问http://evil.com/a后下载了45.9.148.7的文件。", _url("http://evil.com/a"), _ip("45.9.148.7")),
    _v("analyst", "an IDN next to CJK text: はじめよう.みんな。", _domain("xn--p8j9a0d9c9a.xn--q9jyb4c")),
    _v("analyst", "악성 도메인evil.kr과 1.2.3.4", _domain("evil.kr"), _ip("1.2.3.4")),
    _v("analyst", "opened file:///etc/passwd and file:///C:/Users/x.exe", _path("/etc/passwd"), _path("C:\\Users\\x.exe")),
    _v(
        "analyst",
        "BazarLoader resolved reddew28c[.]bazar via EmerDNS; Namecoin C2 hxxp://gate.evil[.]bit/p.php",
        _domain("reddew28c.bazar"),
        _url("http://gate.evil.bit/p.php"),
    ),
    _v("analyst", "link against kernel32.lib for a 64.bit build; GPIOA.ctrl.bit set; stage2.c2[.]emc answered", _domain("stage2.c2.emc")),
    _v("analyst", "import org.apache.commons.lib; c2 at stage2.evil[.]lib", _domain("stage2.evil.lib")),
    _v(
        "analyst",
        "Email us at ALEXANDER.IRWIN@PROTONMAIL.COM (or) MISAEL.SHORT@TUTANOTA.COM",
        _email("ALEXANDER.IRWIN@protonmail.com"),
        _email("MISAEL.SHORT@tutanota.com"),
    ),
    _v(
        "analyst",
        "As seen on hxxps://caminoflamingo[.]co[.]uk, and me0w://yeti.org/",
        _url("https://caminoflamingo.co.uk/"),
        _url("http://yeti.org/"),
    ),
    _v(
        "analyst",
        "path=/tmp/.x/kworker;file=C:\\Temp\\a.exe =bob@evil.com",
        _path("/tmp/.x/kworker"),
        _path("C:\\Temp\\a.exe"),
        _email("bob@evil.com"),
    ),
]

# -- public-suites: one per class of fix found by scoring against public suites' own vectors (our wording) -------------
_PUBLIC_SUITES = [
    # A percent-escaped delimiter outside a URL ends a host, as in a log line or a mangled query string.
    _v("public-suites", "GET /r?next=%2Fupdate-cdn.net%2F HTTP/1.1", _domain("update-cdn.net")),
    # A list of indicators one per line: a URL ending in "/" does not swallow the host on the next line.
    _v(
        "public-suites",
        "Stage 2 hosts:\nhxxps://cdn-upd[.]net/\nstatic-upd[.]org\nhxxps://cdn-upd[.]net/files/\nreport.zip",
        _url("https://cdn-upd.net/"),
        _domain("static-upd.org"),
        _url("https://cdn-upd.net/files/report.zip"),
    ),
    # A base64 token is read for "://" at any alignment: a URL after other text, in any scheme case.
    _v(
        "public-suites",
        "stager arg aXdyIEhUVFBTOi8vdXBkLW1pcnJvci5uZXQvYS5wczEgLU91dEZpbGUgYS5wczE=",
        _url("https://upd-mirror.net/a.ps1"),
    ),
    # A space written before the dot of a one-label URL host is a defang: that label alone is no host.
    _v(
        "public-suites",
        "beacon to hxxp://upd-check .net/gate.php and http:// relay-7 .org",
        _url("http://upd-check.net/gate.php"),
        _url("http://relay-7.org/"),
    ),
]


# -- a defang matrix, as comparison suites build them: each bracket style around each separator ------------------------
# "~" stands for the separator. Not ")." and ")," alone: they end sentences and parentheticals ("(see 1.2.3).").
_AROUND = ("(~(", "(~)", ")~(", ")~)", "(~", "~(", "~)", "[~[", "[~]", "]~[", "]~]", "[~", "~[", "]~", "~]")
_CURLY = str.maketrans("()[]", "{}{}")
_STYLES = tuple(dict.fromkeys((*_AROUND, *(style.translate(_CURLY) for style in _AROUND))))


def _matrix() -> list[Vector]:
    vectors: list[Vector] = []
    cases = (
        (".", ".", "203.0.113.9", _ip("203.0.113.9")),
        (".", ",", "203.0.113.10", _ip("203.0.113.10")),
        ("@", "@", "ops@evil-mail.net", _MAIL),
        ("://", "://", "https://evil-cdn.net", _url("https://evil-cdn.net/")),
        (":", ":", "https://evil-cdn.net/x", _url("https://evil-cdn.net/x")),
        ("http", "http", "http://evil-cdn.net/y", _url("http://evil-cdn.net/y")),
    )
    for separator, written, value, expected in cases:
        for style in _STYLES:
            defanged = style.replace("~", written)
            if defanged in ("),", ")."):
                continue
            vectors.append(_v("defang-matrix", value.replace(separator, defanged), expected))
    return vectors


# -- prose that must stay quiet: bait for the looser defang rules ------------------------------------------------------
_QUIET = [
    _v("quiet", "Meet me @ 5pm at the office, follow us @threatflow and @evil_corp."),
    _v("quiet", "The dot com bubble burst in 2000. THE DOT COM ERA. Look AT this."),
    _v("quiet", "See section (a) and (b). Also [1] and [2]. Smith et al. (2019) found (at) least two."),
    _v("quiet", "array[0].length and obj().method and foo(bar).baz and results[0].com"),
    _v("quiet", "Windows (x64) build 10.0.19041.1 (WinBuild.160101.0800) e.g. and i.e. U.S.A. Figure 1.2.3"),
    _v("quiet", "Saved as Archive (1).zip and Invoice (2).doc and Photo (3).mov"),
    _v("quiet", "send to john @ the office or Contact John (at) noon"),
    _v("quiet", "look at company dot com, the polka-dot-dress and one-dot-five"),
    _v("quiet", "http://localhost:8080/api and http://intranet/path"),
    _v("quiet", "2023-01-01T10:30:00Z and v1.2.3.4-beta and 12:34:56"),
    _v("quiet", "TVqQAAMAAAAEAAAA//8AALgAAAAAAAAAQAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAgAAAAA4fug4AtAnNIbgBTM0hVGhpcyBwcm9ncmFt"),
    _v("quiet", "protocol tcp//x and ssh//evil and the string 'admin@corp.local'"),
    _v("quiet", "1.2.3.4.5.6 and 999.1.1.1 and node.js, Vue.js and ASP.NET"),
    _v("quiet", "C:\\Users\\<username>\\AppData\\Roaming\\Macromedia\\Flash Player\\bin\\flashplayer.exe"),
]

VECTORS: list[Vector] = [
    *_IOCEXTRACT,
    *_IOC_FINDER,
    *_IOC_FANGER,
    *_MSTICPY,
    *_CYBERCHEF,
    *_IOCSEARCHER,
    *_IOC_EXTRACTOR,
    *_CACADOR,
    *_ANALYST,
    *_PUBLIC_SUITES,
    *_matrix(),
    *_QUIET,
]
