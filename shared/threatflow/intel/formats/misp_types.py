"""MISP attribute types and what they are here; read by the MISP and the CSV parsers."""

from __future__ import annotations

# MISP attribute type -> (our type or None to detect, which half of a composite "a|b" value).
MISP_TYPES: dict[str, tuple[str | None, int]] = {
    "ip-src": (None, 0),
    "ip-dst": (None, 0),
    "ip-src|port": (None, 0),
    "ip-dst|port": (None, 0),
    "domain": ("domain", 0),
    "hostname": ("domain", 0),
    "hostname|port": ("domain", 0),
    "url": ("url", 0),
    "md5": ("md5", 0),
    "sha1": ("sha1", 0),
    "sha256": ("sha256", 0),
    "filename|md5": ("md5", 1),
    "filename|sha1": ("sha1", 1),
    "filename|sha256": ("sha256", 1),
    "malware-sample": ("md5", 1),
    "email": ("email", 0),
    "email-src": ("email", 0),
    "email-dst": ("email", 0),
    "email-reply-to": ("email", 0),
    "filename": ("file_path", 0),  # only absolute paths are IoCs; bare names are skipped
}

__all__ = ["MISP_TYPES"]
