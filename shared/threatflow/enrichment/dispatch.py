"""Which sources apply to one IoC, and why the others do not."""

from __future__ import annotations

from collections.abc import Callable, Collection, Iterable, Sequence

from threatflow.platform.sources import SourceConfig

TLP_ORDER = ("clear", "green", "amber", "amber+strict", "red")


def tlp_allowed(ioc_tlp: str, max_tlp: str) -> bool:
    try:
        return TLP_ORDER.index(ioc_tlp) <= TLP_ORDER.index(max_tlp)
    except ValueError:
        return False


# A source left unasked because a record covering the value (a range containing the address, a 6to4 or Teredo IoC
# carrying it) is above its max_tlp, to a reader who may not read that record: neither its TLP nor its value is named.
WITHHELD = "withheld: a record covering this address may not go to this source"


def select(
    sources: Iterable[SourceConfig],
    *,
    ioc_type: str,
    tlp: str,
    tlp_withheld: bool,
    warninglisted: bool,
    force: bool,
    wanted: Sequence[str] = (),
    usable_key: Callable[[SourceConfig], bool],
    implemented: Collection[str],
    auto: bool = False,
) -> tuple[list[str], dict[str, str]]:
    """(sources to ask, {skipped source: reason})."""
    chosen: list[str] = []
    skipped: dict[str, str] = {}
    for source in sorted(sources, key=lambda s: s.name):
        reason = None
        if wanted and source.name not in wanted:
            continue
        if not source.enabled:
            reason = "disabled in the manifest"
        elif source.name not in implemented:
            reason = "no declaration in threatflow/enrichment/sources"
        elif ioc_type not in source.indicator_types:
            reason = f"does not look up {ioc_type}"
        elif auto and ioc_type not in source.auto_enrich:
            reason = f"auto-enrichment of {ioc_type} is off for this source"
        elif warninglisted and not force:
            reason = "the IoC is warninglisted (force to enrich anyway)"
        elif not tlp_allowed(tlp, source.max_tlp):
            reason = WITHHELD if tlp_withheld else f"TLP {tlp} is above this source's maximum ({source.max_tlp})"
        elif not usable_key(source):
            reason = "no_key"
        if reason:
            skipped[source.name] = reason
        else:
            chosen.append(source.name)
    return chosen, skipped
