"""Indicator types and the canonical indicator value objects."""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum


class IocType(StrEnum):
    IPV4 = "ipv4"
    IPV6 = "ipv6"
    CIDR = "cidr"
    DOMAIN = "domain"
    URL = "url"
    MD5 = "md5"
    SHA1 = "sha1"
    SHA256 = "sha256"
    FILE_PATH = "file_path"
    EMAIL = "email"


@dataclass(frozen=True, slots=True)
class Indicator:
    """An indicator in its canonical form: equal indicators have equal values."""

    type: IocType
    value: str


@dataclass(frozen=True, slots=True)
class ExtractedIndicator:
    """An indicator found in text: `value` is canonical, `original` is the text as written (possibly defanged)."""

    type: IocType
    value: str
    original: str
