"""Property tests: normalise() is idempotent and blind to defanging."""

from __future__ import annotations

import ipaddress
import re

from hypothesis import given, settings
from hypothesis import strategies as st

from threatflow.iocs.normalise import normalise
from threatflow.iocs.types import IocType
from threatflow.platform.errors import ValidationError

_TLDS = ["com", "net", "org", "ru", "io", "co.uk", "xyz", "top", "de", "info"]
_LABEL = st.from_regex(re.compile(r"[a-z0-9](?:[a-z0-9-]{0,14}[a-z0-9])?"), fullmatch=True)
_MIXED_LABEL = st.from_regex(re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9_-]{0,14}[A-Za-z0-9])?"), fullmatch=True)
_UNICODE_LABEL = st.sampled_from(["пример", "bücher", "münchen", "例え", "испытание", "evil"])

domains = st.builds(
    lambda labels, tld: ".".join([*labels, tld]),
    st.lists(st.one_of(_MIXED_LABEL, _UNICODE_LABEL), min_size=1, max_size=3),
    st.sampled_from(_TLDS),
)
ipv4s = st.ip_addresses(v=4).map(str)
ipv6s = st.ip_addresses(v=6).map(lambda a: a.exploded.upper() if int(a) % 2 else str(a))
cidrs = st.builds(lambda net, prefix: f"{net}/{prefix}", st.ip_addresses(v=4), st.integers(0, 32))
cidr6s = st.builds(lambda net, prefix: f"{net}/{prefix}", st.ip_addresses(v=6), st.integers(0, 128))
hashes = st.one_of(st.binary(min_size=16, max_size=16), st.binary(min_size=20, max_size=20), st.binary(min_size=32, max_size=32)).map(
    lambda b: b.hex().upper() if b[0] % 2 else b.hex()
)
path_chars = st.text(alphabet=st.characters(codec="utf-8", categories=("L", "N"), include_characters="-_. ~%!"), min_size=1, max_size=12)
url_paths = st.lists(path_chars, max_size=4).map(lambda parts: "/" + "/".join(parts))
queries = st.one_of(st.just(""), st.builds(lambda k, v: f"?{k}={v}", path_chars, path_chars))
hosts = st.one_of(domains, ipv4s, ipv6s.map(lambda a: f"[{a}]"))
urls = st.builds(
    lambda scheme, host, port, path, query, frag: f"{scheme}://{host}{port}{path}{query}{frag}",
    st.sampled_from(["http", "https", "HTTP", "ftp", "tcp"]),
    hosts,
    st.sampled_from(["", ":80", ":443", ":8080", ":21"]),
    url_paths,
    queries,
    st.sampled_from(["", "#top", "#a/b"]),
)
emails = st.builds(
    lambda local, domain: f"{local}@{domain}",
    st.from_regex(re.compile(r"[A-Za-z0-9_+-]{1,10}(?:\.[A-Za-z0-9_+-]{1,10}){0,2}"), fullmatch=True),
    domains,
)
windows_paths = st.builds(
    lambda drive, parts, sep: f"{drive}:{sep}" + sep.join(parts),
    st.sampled_from("cCdD"),
    st.lists(path_chars, min_size=1, max_size=4),
    st.sampled_from(["\\", "/", "\\\\"]),
)
posix_paths = st.lists(path_chars.filter(lambda p: p not in (".", "..")), min_size=1, max_size=4).map(lambda parts: "/" + "//".join(parts))

values = st.one_of(
    st.tuples(st.just(IocType.DOMAIN), domains),
    st.tuples(st.just(IocType.IPV4), ipv4s),
    st.tuples(st.just(IocType.IPV6), ipv6s),
    st.tuples(st.just(IocType.CIDR), st.one_of(cidrs, cidr6s)),
    st.tuples(st.just(None), hashes),
    st.tuples(st.just(IocType.URL), urls),
    st.tuples(st.just(IocType.EMAIL), emails),
    st.tuples(st.just(IocType.FILE_PATH), st.one_of(windows_paths, posix_paths)),
)


def defang(value: str, style: int, type_: IocType | None) -> str:
    """Defang the way report authors do; file paths (never refanged) and hashes are left as they are."""
    if type_ is IocType.FILE_PATH or re.fullmatch(r"[0-9a-fA-F]+", value):
        return value
    dot = ("[.]", "(.)", "{.}", "[dot]", "\\.")[style % 5]
    out = value
    scheme, sep, rest = out.partition("://")
    if sep:
        scheme = {"http": "hxxp", "https": "hxxps", "HTTP": "hXXp", "ftp": "fxp"}.get(scheme, scheme)
        host_end = min((i for i in (rest.find("/"), rest.find("?"), rest.find("#")) if i != -1), default=len(rest))
        host, tail = rest[:host_end], rest[host_end:]
        colon = ("[://]", "[:]//", "://")[style % 3]
        out = f"{scheme}{colon}{host.replace('.', dot)}{tail}"
    else:
        out = out.replace(".", dot)
    if "@" in out and "://" not in out:
        out = out.replace("@", ("[@]", "[at]", "(at)")[style % 3])
    return out


def _normalise_or_none(value: str, type_: IocType | None) -> object:
    try:
        return normalise(value, type_)
    except ValidationError as exc:
        return ("rejected", exc.field)


@settings(max_examples=400, deadline=None)
@given(values)
def test_normalise_is_idempotent(case: tuple[IocType | None, str]) -> None:
    type_, value = case
    try:
        first = normalise(value, type_)
    except ValidationError:
        return  # some generated values (e.g. a public suffix) are rightly rejected
    assert normalise(first.value, type_) == first
    assert normalise(first.value, first.type) == first
    assert normalise(first.value) == first or type_ is IocType.IPV6 or first.type is IocType.FILE_PATH


@settings(max_examples=400, deadline=None)
@given(values, st.integers(0, 14))
def test_defanged_equals_refanged(case: tuple[IocType | None, str], style: int) -> None:
    type_, value = case
    defanged = defang(value, style, type_)
    assert _normalise_or_none(defanged, type_) == _normalise_or_none(value, type_)
    assert _normalise_or_none(defanged, None) == _normalise_or_none(value, None)


@settings(max_examples=200, deadline=None)
@given(st.ip_addresses())
def test_ip_addresses_round_trip_to_ipaddress_form(address: ipaddress.IPv4Address | ipaddress.IPv6Address) -> None:
    indicator = normalise(str(address))
    if address.version == 6 and address.ipv4_mapped is not None:
        assert indicator.value == str(address.ipv4_mapped)
    else:
        assert indicator.value == address.compressed


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=60))
def test_arbitrary_text_is_accepted_or_rejected_cleanly(text: str) -> None:
    for type_ in (None, *IocType):
        try:
            indicator = normalise(text, type_)
        except ValidationError:
            continue
        assert normalise(indicator.value, indicator.type) == indicator
