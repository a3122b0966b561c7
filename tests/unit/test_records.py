"""The typed records read rows positionally, so their fields must follow the repositories' column lists."""

import dataclasses
from datetime import UTC, datetime

import pytest

from threatflow.iocs.model import IocRecord
from threatflow.iocs.repository import IOC_COLUMNS
from threatflow.platform.errors import ValidationError
from threatflow.platform.vocabulary import MAX_TAG_LENGTH, MAX_TAGS, clean_tags
from threatflow.threats.model import ThreatRecord
from threatflow.threats.repository import THREAT_COLUMNS


def _columns(text: str) -> list[str]:
    return text.replace(" ", "").split(",")


def test_ioc_record_follows_ioc_columns():
    assert [f.name for f in dataclasses.fields(IocRecord)] == _columns(IOC_COLUMNS)


def test_threat_record_follows_threat_columns():
    expected = ["references" if c == "refs" else c for c in _columns(THREAT_COLUMNS)]
    assert [f.name for f in dataclasses.fields(ThreatRecord)] == expected


def test_ioc_record_json_is_the_api_shape():
    now = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)
    row = (7, "domain", "evil.example", ["c2"], ["feed"], "amber", 50, "malicious", 50, 40, "medium")
    row += (now, now, 3, None, True, [], None, now, now)
    out = IocRecord.from_row(row).to_json()
    assert list(out) == _columns(IOC_COLUMNS)
    assert out["first_seen"] == now.isoformat() and out["expires_at"] is None and out["tags"] == ["c2"]
    with pytest.raises(dataclasses.FrozenInstanceError):
        IocRecord.from_row(row).score = 1  # type: ignore[misc]


def test_one_tag_rule():
    assert clean_tags([" C2 ", "c2", "", "Emotet"]) == ["c2", "emotet"]  # order of first appearance
    with pytest.raises(ValidationError, match="longer than") as info:
        clean_tags(["x" * (MAX_TAG_LENGTH + 1)])
    assert info.value.field == "tags"
    with pytest.raises(ValidationError, match=f"at most {MAX_TAGS} tags per threat"):
        clean_tags([f"t{i}" for i in range(MAX_TAGS + 1)], holder="threat")
    with pytest.raises(ValidationError, match="strings"):
        clean_tags(["ok", 5])


UNKNOWN_TLP = "unknown TLP 'purple'; expected clear, green, amber, amber+strict or red"


def _refusal(call):
    with pytest.raises(ValidationError) as info:
        call()
    return str(info.value), info.value.field


def test_one_unknown_tlp_refusal_for_iocs_threats_and_imports():
    from threatflow.intel.importer import ImportRequest, parse_request
    from threatflow.iocs.service import IocIn
    from threatflow.iocs.service import prepare as prepare_ioc
    from threatflow.platform.vocabulary import Tlp
    from threatflow.threats.model import ThreatIn, ThreatKind
    from threatflow.threats.repository import prepare as prepare_threat

    now = datetime(2026, 1, 2, tzinfo=UTC)
    assert Tlp.parse_field(" TLP:White ", field="tlp") is Tlp.CLEAR
    refusals = {
        _refusal(lambda: Tlp.parse_field("purple", field="tlp")),
        _refusal(lambda: prepare_ioc(IocIn(value="198.51.100.7", tlp="purple"), 0, policies={}, now=now, warninglists=None)),
        _refusal(lambda: prepare_threat(0, ThreatIn(kind=ThreatKind.MALWARE, name="Emotet", tlp="purple"), catalog=None)),
        _refusal(lambda: parse_request(ImportRequest(format="txt", content="198.51.100.7", tlp="purple"))),
    }
    assert refusals == {(UNKNOWN_TLP, "tlp")}


def test_one_time_zone_rule_for_iocs_and_threats():
    from threatflow.iocs.service import IocIn
    from threatflow.iocs.service import prepare as prepare_ioc
    from threatflow.platform.limits import check_aware
    from threatflow.threats.model import ThreatIn, ThreatKind
    from threatflow.threats.repository import prepare as prepare_threat

    naive, now = datetime(2026, 1, 1), datetime(2026, 1, 2, tzinfo=UTC)  # the naive time is the point
    assert check_aware(now, field="seen_at") is now and check_aware(None, field="seen_at") is None
    message = "{} needs a time zone (e.g. 2026-01-01T00:00:00Z)"
    assert _refusal(lambda: prepare_ioc(IocIn(value="198.51.100.7", seen_at=naive), 0, policies={}, now=now, warninglists=None)) == (
        message.format("seen_at"),
        "seen_at",
    )
    assert _refusal(lambda: prepare_ioc(IocIn(value="198.51.100.7", expires_at=naive), 0, policies={}, now=now, warninglists=None)) == (
        message.format("expires_at"),
        "expires_at",
    )
    assert _refusal(lambda: prepare_threat(0, ThreatIn(kind=ThreatKind.MALWARE, name="Emotet", last_seen=naive), catalog=None)) == (
        message.format("last_seen"),
        "last_seen",
    )


def test_an_iocs_first_seen_is_aware_and_not_after_its_seen_at():
    from threatflow.iocs.service import IocIn
    from threatflow.iocs.service import prepare as prepare_ioc

    now = datetime(2026, 1, 2, tzinfo=UTC)
    earlier, later = datetime(2025, 12, 1, tzinfo=UTC), datetime(2026, 1, 3, tzinfo=UTC)

    def prepare(**fields):
        return prepare_ioc(IocIn(value="198.51.100.7", **fields), 0, policies={}, now=now, warninglists=None)

    assert prepare(first_seen=earlier).first_seen == earlier and prepare().first_seen is None  # None: seen_at
    assert _refusal(lambda: prepare(first_seen=datetime(2025, 12, 1))) == (
        "first_seen needs a time zone (e.g. 2026-01-01T00:00:00Z)",
        "first_seen",
    )
    after = ("first_seen is after seen_at (or after now, when seen_at is not given)", "first_seen")
    assert _refusal(lambda: prepare(first_seen=later)) == after  # seen_at defaults to now
    assert _refusal(lambda: prepare(first_seen=now, seen_at=earlier)) == after
