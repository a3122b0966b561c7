"""Find indicators in free text such as threat reports, advisories and chat logs.

`extract(text)` returns each indicator once, in order of first appearance, with
its canonical value (see `normalise`) and the text as written (`original`,
possibly defanged; for a URL wrapped over two lines it includes the line break,
for "evil [.] com" the spaces).

How it works: a first pass joins defangs written with spaces ("evil [.] com",
"user @ evil.com", "bob AT evil.com", "http:// evil.com", "1<.>2") so that each
indicator is one token, remembering where every character came from; it runs
only where such a form occurs. Then one regular expression picks
whitespace-delimited tokens that contain a trigger character (. : @ \\ /, or a
closing bracket for "[dot]" and "[at]"); each token is refanged, classified and
validated by `normalise` (each distinct spelling once per call); a second
expression finds hashes. This keeps the per-character work inside the regex
engine and the Python work per candidate token, which is what makes several
MB/s possible; every repetition that could meet a long run of brackets or
spaces is bounded, so that no input costs more than linear time.

Defang forms undone, besides those of `normalise.refang`: scheme look-alikes
(hxxp, h__p, h00p, httx, xxxx, meow, fxp, ftx, sfxp) with any written separator
and brackets of any kind around or inside it ("[http]://", "https(://(",
"http[:]//", "http//", ":///", "__" for http); bracket debris around a dot or
a comma written for a dot, in a host ("10[[.]]1", "www].[evil", "evil[.com",
"1(,)2", "x^.com", "evil[]com"); brackets around an "@" ("me)@(evil.com");
partial "[dot"/"dot]"; "(punto)" "(punkt)" "(arroba)" "(et)" "[-]" "(/)";
"-dot-" and "DOT" between lower-case words before a top-level domain; an
unbracketed IPv6 host ("http://2001:db8::1"); a space before the dot of a URL
host that is one label without it ("http://evil .com/x"). A URL written percent-encoded,
in base64 or in hex as a token of its own is decoded ("http%3A%2F%2Fevil%2Ecom",
"aHR0cDovL2V2aWwuY29t", "687474703a2f2f..."; a base64 token is read whenever it
holds "://", so a URL after other text in it is found too). In Chinese, Japanese or Korean
prose, which has no spaces, an indicator ends where those characters meet it
("恶意域名evil.com，").

Choices and false-positive guards:

- a host inside a URL or an email, and a hash inside a URL, email or file path,
  are not reported on their own: the URL/email/path is the indicator. The same
  host written elsewhere on its own is reported as a domain;
- when a URL or email does not validate, its host still counts: "a@1.2.3.4" and
  "test@[1.2.3.4]" give the IPv4, "http://evil.com:99999/" the domain, "@evil.com"
  the domain; an RFC 5322 comment in a mailbox ("john(x)@evil.com") is dropped;
- a host with a port but no path ("1.2.3.4:443", "evil[.]com:443") is the host;
  with a path it is a URL ("1.2.3.4:8080/admin"), taken as http;
- "name.ext" with a common file extension ("invoice.zip", "setup.exe",
  "script.py") is not a domain unless it was defanged ("evil[.]zip"), which
  shows the author meant a host; names whose top-level label is in mixed case
  ("System.IO", "end.The") are taken for code or a missing space, not domains;
- a dotted quad right after "version", "ver", "v", "build", "release" or
  "firmware" is a version number, not an IP; so is anything with an octet above
  255 ("10.0.19041.1"), a leading zero ("01.2.3.4") or a fifth part ("1.2.3.4.5");
- hashes are 32/40/64 hex characters with no hex digit on either side, so a
  sha256 never also yields an md5 or sha1 from its substrings, and no letter
  in front ("test<32 hex>" is an identifier);
- trailing punctuation (. , ; : ! ? quotes and unbalanced closing brackets) is
  not part of an indicator, and typographic punctuation (— … • and the
  full-width forms of CJK text) ends a token; a URL ends at a markdown "](" and, inside a
  comma-separated field ("url,https://x/y,label"), at the next comma;
- "user @ evil.com", "bob AT evil.com" and "evil DOT com" are joined, but plain
  "at" and "dot" in prose are words: "contact at evil.com" is the domain;
- a URL broken by a line break inside its path is joined again when the break
  follows a path separator or the next line starts like a path continuation
  ("/x", ".php", "?id=", or a fragment holding "/" or "="), but not when the next
  line starts with a host name of its own (a list of indicators, one a line);
- outside a URL, a percent-escape of a character no host holds ("%2F", "%20",
  "%3A") ends a host: "%2Fevil.com" and "evil.com%2F" give evil.com;
- a Windows path may hold spaces when quoted, or when a later word carries on
  with a backslash ("C:\\Program Files\\Evil\\x.exe"); a POSIX path likewise
  when the words are capitalised ("/Library/Application Support/X/y");
- a POSIX path needs two or more components ("/tmp/x"), so "/24" or "and/or"
  are not paths; a host with a path but no scheme ("evil[.]com/gate.php") is a
  URL, taken as http, as `normalise` does.

With refang=False only indicators written in plain (fanged) form are found.

Bounded work: a run of more than MAX_TOKEN_CHARS (32 KiB) characters without a space
holds no single indicator (a value may have 8192 characters, a defanged one at most about
four times that); only its pieces between commas, semicolons and "=" that fit are read,
so one 10 MB token costs a few linear regex passes, not the per-token passes over all of it.

The modules, in the order text flows through them:

    joining.py    spaced defangs joined into one token, with the way back to positions as written
    tokens.py     what ends a token, the candidate expressions, stripping punctuation, MAX_TOKEN_CHARS
    scanner.py    each candidate classified (URL, email, host, IP, CIDR, path), then hashes
    classify.py   whether a host-like name is a host (file names, code, mixed case are not)
    encoded.py    URLs written percent-encoded, in base64 or in hex
    ../defang.py  the one defang table, shared with normalise (and so with /batch and /value)
"""

from __future__ import annotations

from threatflow.iocs.extraction.joining import join_spaced
from threatflow.iocs.extraction.scanner import Scanner
from threatflow.iocs.extraction.tokens import CANDIDATE, CANDIDATE_DEFANGED, MAX_TOKEN_CHARS
from threatflow.iocs.types import ExtractedIndicator, IocType

__all__ = ["MAX_TOKEN_CHARS", "extract"]


def extract(text: str, *, refang: bool = True) -> list[ExtractedIndicator]:
    """Indicators in `text`, each (type, value) once, in order of first appearance."""
    joined = join_spaced(text) if refang else None
    scanner = Scanner(joined.text if joined is not None else text, refang=refang)
    candidate = CANDIDATE_DEFANGED if refang else CANDIDATE
    for match in candidate.finditer(scanner.text):
        if match.start() < scanner.consumed:
            continue
        token = match.group()
        if len(token) > MAX_TOKEN_CHARS:
            scanner.long_token(match.start(), token)
        else:
            scanner.token(match.start(), token)
    if refang:
        scanner.encoded_urls()
    scanner.hashes()
    scanner.found.sort(key=lambda f: f.position)
    seen: set[tuple[IocType, str]] = set()
    out: list[ExtractedIndicator] = []
    for found in scanner.found:
        key = (found.type, found.value)
        if key not in seen:
            seen.add(key)
            original = found.original
            if joined is not None:
                original = text[joined.start(found.position) : joined.end(found.end)]
            out.append(ExtractedIndicator(found.type, found.value, original))
    return out
