"""Keyset page cursors, one format for every list in the API.

A cursor is the last id seen, base64-encoded so clients treat it as opaque; a
page costs the same whatever its number, and concurrent inserts never shift it.
"""

from __future__ import annotations

import base64

from threatflow.platform.errors import ValidationError


def encode_cursor(last_id: int) -> str:
    return base64.urlsafe_b64encode(f"id:{last_id}".encode()).decode().rstrip("=")


def decode_cursor(cursor: str) -> int:
    try:
        text = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
        kind, _, value = text.partition(":")
        if kind != "id":
            raise ValueError(kind)
        last_id = int(value)
        if not 0 <= last_id < 2**63:
            raise ValueError(value)
        return last_id
    except (ValueError, UnicodeDecodeError):
        raise ValidationError("cursor is not one this API issued", field="cursor") from None
