"""TLP clearance: what a user may read, in one place every read path uses.

Each user has a clearance (default amber, set by admins). A record marked with
a TLP above the reader's clearance does not exist for that reader: lookups
answer 404, searches and exports leave it out, counts do not include it.
Enrichment, flows and reports apply the same helpers later.
"""

from __future__ import annotations

from typing import Any

from threatflow.platform.errors import NotFoundError, ValidationError
from threatflow.platform.vocabulary import Tlp

TLP_ORDER = tuple(Tlp.RED.at_most())  # clear ... red: the one order, from the shared vocabulary
DEFAULT_CLEARANCE = "amber"
# The product's own writers (the flow bridge, enrichment storing a value it was asked about): they name no TLP,
# verdict or description for an IoC that exists, so a stored IoC keeps its marking either way.
SYSTEM = TLP_ORDER[-1]


def parse(value: str, *, field: str = "clearance") -> str:
    try:
        return Tlp.parse(value).value
    except ValueError:
        raise ValidationError(f"unknown TLP {value!r}; expected one of {', '.join(TLP_ORDER)}", field=field) from None


def allowed(clearance: str) -> list[str]:
    """The TLP levels a holder of `clearance` may read, lowest first."""
    return Tlp(clearance).at_most()


def can_read(clearance: str, tlp: str | None) -> bool:
    return tlp is None or (tlp in TLP_ORDER and TLP_ORDER.index(tlp) <= TLP_ORDER.index(clearance))


def cap(requested: str | None, clearance: str) -> str:
    """A requested ceiling (export `max_tlp`) lowered to the caller's clearance."""
    if requested is None or TLP_ORDER.index(requested) > TLP_ORDER.index(clearance):
        return clearance
    return requested


def sql(column: str, clearance: str, *, param: str = "clearance_tlps") -> tuple[str, dict[str, Any]]:
    """A WHERE fragment keeping rows whose `column` the holder may read."""
    if clearance == TLP_ORDER[-1]:
        return "TRUE", {}
    return f"{column} = ANY(CAST(:{param} AS text[]))", {param: allowed(clearance)}


def require(clearance: str, tlp: str | None, *, what: str) -> None:
    """A single record: invisible (404, as if absent) when above the clearance."""
    if not can_read(clearance, tlp):
        raise NotFoundError(f"no {what}")


def of(principal: Any) -> str:
    """The caller's clearance; a request without a principal (internal calls) reads nothing above clear."""
    return str(getattr(principal, "clearance", None) or TLP_ORDER[0])
