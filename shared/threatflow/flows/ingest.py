"""Flow ingest: validate, score and store batches of flows as events.

One code path for the three ways flows arrive: `POST /api/v1/flows/batch`,
`threatflow flows load` (which posts batches) and the `flow-ingest` worker
(which streams an uploaded file). Validation is ml's features module (one
definition of a valid flow for training and serving) plus the fields only
events have (addresses, ports, times, an ltime not before its stime) and the
ranges a stored observation keeps (no negative feature or `rate`, protocol field widths, whole numbers where
the features file types a field integer: NON_NEGATIVE, PROTOCOL_MAX, WHOLE_NUMBER). Nothing is ever filled with 0:
a blank in the fields the official raw files leave blank (features.BLANK_IN_RAW) is a missing value, as training
reads it (NaN for the model, NULL in the stored features, no bound problem); a blank anywhere else is a problem.

Every event gets a deterministic key: a 128-bit blake2b hash of `<source>:<position>:` and the flow
(flow_content), where the source is a file's sha256 or a batch's own hash. With the event time (the flow's
`stime`, else the batch's `observed_at`, else when the source was first observed:
undated_time), that key makes a re-send a no-op.
"""

from __future__ import annotations

import csv
import functools
import gzip
import hashlib
import io
import ipaddress
import re
import struct
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from itertools import chain
from math import isfinite, isnan
from operator import itemgetter
from typing import IO, TYPE_CHECKING, Any, NamedTuple, Protocol

from threatflow.adapters.postgres import unit_of_work
from threatflow.flows import repository
from threatflow.flows.features import ATTACK_CATEGORIES, BLANK_IN_RAW, DECIMAL, NUMERIC_COLUMNS, category_named, decimal_text
from threatflow.flows.repository import STORED_FEATURES, EventRow, StoredEvent

if TYPE_CHECKING:
    from sqlalchemy.engine import Connection, Engine

MAX_BATCH = 10_000
# A file's events are `source` = FILE_SOURCE + the first 32 hex digits of its sha256, whichever way it is loaded
# (`flows load` posting its rows, or the flow-ingest worker reading its upload), so loading it both ways stores it once.
FILE_SOURCE = "file:"
RETENTION_REASON = "older than the retention window"  # a problem's reason for a time before what flow-retention keeps
# The dataset's own category labels, exactly (attack_cat, and the model's predicted_cat).
CATEGORIES = ATTACK_CATEGORIES

# The raw UNSW-NB15 CSVs have no header: these are their 49 columns in order
# (NUSW-NB15_features.csv, including its `ct_src_ ltm` typo), which ml's
# canonical_flow maps to the partitioned names.
RAW_COLUMNS = (
    "srcip", "sport", "dstip", "dsport", "proto", "state", "dur", "sbytes", "dbytes", "sttl", "dttl", "sloss", "dloss",
    "service", "Sload", "Dload", "Spkts", "Dpkts", "swin", "dwin", "stcpb", "dtcpb", "smeansz", "dmeansz", "trans_depth",
    "res_bdy_len", "Sjit", "Djit", "Stime", "Ltime", "Sintpkt", "Dintpkt", "tcprtt", "synack", "ackdat", "is_sm_ips_ports",
    "ct_state_ttl", "ct_flw_http_mthd", "is_ftp_login", "ct_ftp_cmd", "ct_srv_src", "ct_srv_dst", "ct_dst_ltm", "ct_src_ ltm",
    "ct_src_dport_ltm", "ct_dst_sport_ltm", "ct_dst_src_ltm", "attack_cat", "Label",
)  # fmt: skip
_TEXT_FIELDS = frozenset({"proto", "service", "state", "srcip", "dstip", "attack_cat"})


class Prediction(Protocol):
    """What an event keeps of a flow's prediction (read-only: ml's Verdict is frozen)."""

    @property
    def is_attack(self) -> bool: ...
    @property
    def probability(self) -> float: ...
    @property
    def attack_cat(self) -> str: ...
    @property
    def model_version(self) -> str: ...


class Scorer(Protocol):
    """What ingest needs of ml's ServingModel."""

    @property
    def version(self) -> str: ...

    def verdicts_clean(self, flows: Sequence[Mapping[str, Any]]) -> Sequence[Prediction]:
        """Verdicts of flows that validate_flows already returned (no second validation)."""


@dataclass(frozen=True)
class FlowProblem:
    """One offending field of one flow (same shape as ml's FieldError)."""

    index: int
    field: str
    reason: str

    def to_json(self) -> dict[str, Any]:
        return {"index": self.index, "field": self.field, "reason": self.reason}


@dataclass(frozen=True)
class BatchOutcome:
    received: int
    stored: int
    duplicates: int
    predicted_attacks: int
    model_version: str
    new_events: list[StoredEvent]

    def to_json(self) -> dict[str, Any]:
        return {
            "received": self.received,
            "stored": self.stored,
            "duplicates": self.duplicates,
            "predicted_attacks": self.predicted_attacks,
            "model_version": self.model_version,
        }


# -- validation ----------------------------------------------------------------------------


# Each day of events is a partition: a flow "from the future" would make partitions the retention
# job never drops (year 2900), so a flow (its stime, or a batch's observed_at) may be at most this
# far ahead of the wall clock (clock skew between a sensor and us).
MAX_AHEAD = timedelta(days=1)


def _not_future(epoch_seconds: float) -> None:
    if epoch_seconds > time.time() + MAX_AHEAD.total_seconds():
        raise ValueError("the time is in the future; flows are observed up to now")


def _as_time(value: Any) -> datetime:
    """stime/ltime: epoch seconds (the UNSW layout) or ISO 8601 with a time zone; never in the future."""
    if isinstance(value, bool):
        raise ValueError("a boolean is not a time")
    if isinstance(value, (int, float)):
        if not 0 <= value < 32503680000:  # year 3000
            raise ValueError("epoch seconds out of range")
        _not_future(value)
        return datetime.fromtimestamp(float(value), UTC)
    if isinstance(value, str):
        text = value.strip()
        number = decimal_text(text)  # float() also read "١٤٢١٩٢٧٤١٤", "1_421_927_414", "+1421927414"
        if number is not None:
            return _as_time(number)
        parsed = datetime.fromisoformat(text.replace("Z", "+00:00"))
        if parsed.tzinfo is None:
            raise ValueError("an ISO time needs a time zone")
        at = parsed.astimezone(UTC)
        _not_future(at.timestamp())
        return at
    raise ValueError("expected epoch seconds or an ISO 8601 time")


def event_address(text: str) -> str:
    """An address as the event store keeps it (ingest stores it so, search and the host view look it up
    so): a zone id (fe80::1%eth0) is local to one host and not an inet value, so it is refused;
    ::ffff:a.b.c.d is the IPv4 host, as in the iocs domain. ValueError for anything else."""
    if "%" in text:
        raise ValueError(ZONE_ID_REASON)
    address = ipaddress.ip_address(text.strip())
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return str(address.ipv4_mapped)
    return str(address)


ZONE_ID_REASON = "has a zone id, which is local to one host"


def _as_ip(value: Any) -> str:
    if not isinstance(value, str):
        raise ValueError("expected an IP address as a string")
    return event_address(value)


_HEX_PORT = re.compile(r"0x[0-9a-f]+")


def _as_port(value: Any) -> int | None:
    """Ports: an integer 0-65535; the raw files also write hex (0x000b) and '-' (none)."""
    if value is None or (isinstance(value, str) and value.strip() in ("", "-")):
        return None
    if isinstance(value, bool):
        raise ValueError("a boolean is not a port")
    if isinstance(value, str):
        text = value.strip().lower()
        if text.startswith("0x"):
            if not _HEX_PORT.fullmatch(text):  # int(text, 16) also read "0x_b" and Arabic-Indic or fullwidth digits
                raise ValueError("expected a port number (hex as 0x000b)")
            number = int(text, 16)
        else:
            as_float = decimal_text(text)  # "80", "80.0", "8e1" as the number would be; never cut ("80.5" was stored as 80)
            if as_float is None or not isfinite(as_float):
                raise ValueError("expected a port number")
            if not as_float.is_integer():
                raise ValueError("a port is a whole number")
            number = int(as_float)
    elif isinstance(value, float):
        if not value.is_integer():
            raise ValueError("a port is a whole number")
        number = int(value)
    elif isinstance(value, int):
        number = value
    else:
        raise ValueError("expected a port number")
    if not 0 <= number <= 65535:
        raise ValueError("a port is between 0 and 65535")
    return number


def _as_label(value: Any) -> int | None:
    if value is None or value == "":
        return None
    if isinstance(value, bool) or str(value).strip() not in ("0", "1", "0.0", "1.0"):
        raise ValueError("label is 0 (normal) or 1 (attack)")
    return int(float(value))


def _as_category(value: Any) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str):
        raise ValueError("attack_cat is a category name")
    text = value.strip()
    if not text:
        return None
    category = category_named(text)
    if category is None:
        raise ValueError(f"unknown attack_cat {text!r}; one of {', '.join(CATEGORIES)}")
    return category


_EVENT_FIELDS = {
    "srcip": _as_ip,
    "dstip": _as_ip,
    "sport": _as_port,
    "dsport": _as_port,
    "stime": _as_time,
    "ltime": _as_time,
    "label": _as_label,
    "attack_cat": _as_category,
}


@dataclass(frozen=True)
class EventFields:
    srcip: str | None
    dstip: str | None
    sport: int | None
    dsport: int | None
    stime: datetime | None
    ltime: datetime | None
    label: int | None
    attack_cat: str | None


# Addresses, ports, labels and categories repeat across a file's flows (a few hundred
# hosts): their text is parsed once per process, not once per flow (ipaddress alone cost
# more per flow than the rest of the event fields). Times vary per flow and are not cached.
_CACHED_TEXT = {name: functools.lru_cache(maxsize=65536)(parse) for name, parse in _EVENT_FIELDS.items() if name not in ("stime", "ltime")}
# Only short text is cached: a valid cell can be any length (blank padding, a hex port's leading
# zeros), and 65,536 entries of megabytes each would outlive their batch. An IPv6 address is 45.
_CACHED_TEXT_MAX = 64
# (name, parser, parser for text cached or None), in EventFields order.
_PARSERS = tuple((name, parse, _CACHED_TEXT.get(name)) for name, parse in _EVENT_FIELDS.items())


LTIME_BEFORE_STIME_REASON = "is before stime; a flow ends when or after it starts"


def event_fields(flow: Mapping[str, Any], index: int, problems: list[FlowProblem]) -> EventFields:
    """The event-only fields of one canonical flow; bad ones are added to problems."""
    parsed: list[Any] = []
    for name, parse, cached in _PARSERS:
        value = flow.get(name)
        if value is None:
            parsed.append(None)
            continue
        try:
            short = type(value) is str and len(value) <= _CACHED_TEXT_MAX
            parsed.append(cached(value) if cached is not None and short else parse(value))
        except (ValueError, TypeError, OverflowError) as exc:
            problems.append(FlowProblem(index, name, str(exc) or f"invalid {name}"))
            parsed.append(None)
    stime, ltime = parsed[4], parsed[5]
    if stime is not None and ltime is not None and ltime < stime:
        # Stored as it came, the event's span was negative and one of its times wrong (the stime is its event time).
        problems.append(FlowProblem(index, "ltime", f"{LTIME_BEFORE_STIME_REASON} ({ltime.isoformat()} < {stime.isoformat()})"))
    label, category = parsed[6], parsed[7]
    if label == 0 and category is None:  # label 0 without attack_cat: the dataset's Normal
        parsed[7] = "Normal"
    elif label is not None and category is not None and (category == "Normal") != (label == 0):
        # Ground truth at odds with itself: search would list it under both, and retraining skips it (training.py).
        problems.append(FlowProblem(index, "attack_cat", f"{category} disagrees with label {label} (Normal is label 0, an attack label 1)"))
    return EventFields(*parsed)


def validate(flows: Sequence[Mapping[str, Any]]) -> tuple[list[dict[str, Any]], list[EventFields], list[FlowProblem]]:
    """ml's strict feature validation plus the event fields: every problem, with its flow's index.

    Returns the clean flows and their event fields for the flows without problems (in
    input order; `valid_indices` maps them back), and every problem found.
    """
    from threatflow.flows import features

    clean, feature_errors = features.validate_flows(flows, blanks=features.Blanks.RAW_LAYOUT)
    problems = [FlowProblem(int(e.index), str(e.field), str(e.reason)) for e in feature_errors]
    bad_features = {p.index for p in problems}
    # validate_flows returns clean flows for the valid ones only, in input order.
    by_index = dict(zip((i for i in range(len(flows)) if i not in bad_features), clean, strict=True))
    event_problems: list[FlowProblem] = []
    # The clean flows already carry the pass-through fields under canonical names; only flows
    # that failed feature validation need renaming to have their event fields checked too.
    # A flow past features.MAX_FLOW_FIELDS is refused as a whole: renaming its fields would cost what validation saved.
    fields = {
        i: event_fields(by_index[i] if i in by_index else features.canonical_flow(flow), i, event_problems)
        for i, flow in enumerate(flows)
        if i in by_index or len(flow) <= features.MAX_FLOW_FIELDS
    }
    problems += event_problems
    # Finite is not storable: features are real (float4) and four of them are copied to bigint
    # and integer columns; out of range, the whole batch's INSERT would fail. Nor is it an observation
    # when negative (a feature or `rate`), past its protocol field's width, or a fraction of a whole-number field. One
    # pass in numpy flags the flows to look at.
    unstorable, unbounded = _out_of_range_rows(list(by_index.values()))
    for (i, flow), out_of_range, out_of_bounds in zip(by_index.items(), unstorable, unbounded, strict=True):
        # PostgreSQL text cannot hold NUL: features.validate_flows refuses it (and any control character) in the categoricals
        refused = _bound_problems(i, flow) if out_of_bounds else []
        problems += refused
        if out_of_range:
            named = {p.field for p in refused}
            problems += [p for p in _storage_problems(i, flow) if p.field not in named]
    bad = {p.index for p in problems}
    keep = [i for i in range(len(flows)) if i not in bad]
    problems.sort(key=lambda p: (p.index, p.field))
    return [by_index[i] for i in keep], [fields[i] for i in keep], problems


# Every numeric feature is a count, a size, a duration, a rate, a time between packets, a TTL, a window, a sequence
# number or a flag (NUSW-NB15_features.csv): none is negative. A negative sbytes (-4e18) was stored and pulled the
# bytes-by-proto totals negative; the others were stored as they came, and retraining learnt from them. Refused at
# ingest only: /detect scores what it is given, extremes included (its tests). No row of the dev data is refused.
# `rate` (packets per second, stored with each event though no model input) is refused when negative too.
NON_NEGATIVE: tuple[str, ...] = NUMERIC_COLUMNS
NEGATIVE_REASON = "must not be negative (a count, size, duration, rate, time or flag)"
# The widths of the protocol fields some features copy: past them a value is no observation. Only these: the dev
# data's windows are all 0 or 255 and its is_ftp_login goes up to 2, but neither is the protocol's bound (a "binary"
# of NUSW-NB15_features.csv that real rows break), and a sensor other than UNSW's capture may differ.
PROTOCOL_MAX: Mapping[str, tuple[int, str]] = {
    "sttl": (255, "an IP TTL is 8 bits"),
    "dttl": (255, "an IP TTL is 8 bits"),
    "swin": (65535, "a TCP header's window is 16 bits"),
    "dwin": (65535, "a TCP header's window is 16 bits"),
    "stcpb": (2**32 - 1, "a TCP sequence number is 32 bits"),
    "dtcpb": (2**32 - 1, "a TCP sequence number is 32 bits"),
}
# The features NUSW-NB15_features.csv types integer or binary (a flag, 0 or 1): a fraction of one is no observation
# ("spkts": 1.5 was stored). Its Float ones (dur, loads, jitters, inter-packet times, round trips) and `rate` may be
# anything; the ports and the label are parsed as such (event_fields). None is left out: each is whole in every one of
# the dev file's 49,399 rows (the mean sizes smean and dmean included: typed integer, the capture writes them whole).
# Refused at ingest only, like the negatives: /detect scores any finite value.
WHOLE_NUMBER: tuple[str, ...] = (
    "spkts", "dpkts", "sbytes", "dbytes", "sttl", "dttl", "sloss", "dloss", "swin", "stcpb", "dtcpb", "dwin", "smean",
    "dmean", "trans_depth", "response_body_len", "ct_srv_src", "ct_state_ttl", "ct_dst_ltm", "ct_src_dport_ltm",
    "ct_dst_sport_ltm", "ct_dst_src_ltm", "is_ftp_login", "ct_ftp_cmd", "ct_flw_http_mthd", "ct_src_ltm", "ct_srv_dst",
    "is_sm_ips_ports",
)  # fmt: skip
WHOLE_REASON = "must be a whole number (a count, size, TTL, window, sequence number or flag: NUSW-NB15_features.csv types it integer)"
_WHOLE_SET = frozenset(WHOLE_NUMBER)


def _bound_problems(index: int, flow: Mapping[str, Any]) -> list[FlowProblem]:
    """A validated flow's features (and `rate`) below 0, past their protocol field's width or not whole (one problem a field)."""
    out = []
    for name in NON_NEGATIVE:
        value = flow[name]
        if value < 0:
            out.append(FlowProblem(index, name, NEGATIVE_REASON))
        elif name in PROTOCOL_MAX and value > PROTOCOL_MAX[name][0]:
            highest, why = PROTOCOL_MAX[name]
            out.append(FlowProblem(index, name, f"must be at most {highest} ({why})"))
        elif name in _WHOLE_SET and not float(value).is_integer() and not isnan(value):  # NaN: a raw file's blank
            out.append(FlowProblem(index, name, WHOLE_REASON))
    rate = _rate_number(flow)
    if rate == _NOT_A_RATE:
        out.append(FlowProblem(index, "rate", RATE_REASON))
    elif rate < 0:
        out.append(FlowProblem(index, "rate", NEGATIVE_REASON))
    return out


# The stored features that validation made floats (all but `rate`, which the raw layout lacks).
_VALIDATED_STORED = tuple(name for name in STORED_FEATURES if name in frozenset(NUMERIC_COLUMNS))
_NON_NEGATIVE_SET = frozenset(NON_NEGATIVE)
# Powers of two below bigint's and integer's maxima: the value goes through real first, whose
# rounding would carry 2**31 - 1 up to 2**31 (out of range).
_COLUMN_MAX = {"sbytes": 2.0**62, "dbytes": 2.0**62, "spkts": 2.0**30, "dpkts": 2.0**30}
_REAL_MAX = 3.4028234e38
# Below real's smallest normal number PostgreSQL refuses what real rounds to 0 ("1e-50" is out of
# range for type real) and, before version 12, every subnormal too: only 0 is stored below this.
_REAL_MIN = 1.1754944e-38


def _out_of_range_rows(flows: Sequence[Mapping[str, Any]]) -> tuple[list[bool], list[bool]]:
    """Per validated flow (one pass in numpy): does a feature or `rate` lie outside what its column keeps; is one
    negative, past its protocol field's width or a fraction of a whole number (_bound_problems names them)."""
    import numpy as np

    if not flows:
        return [], []
    values = chain.from_iterable(map(itemgetter(*_VALIDATED_STORED), flows))
    signed = np.fromiter(values, dtype=np.float64, count=len(flows) * len(_VALIDATED_STORED))
    signed = signed.reshape(len(flows), len(_VALIDATED_STORED))
    magnitude = np.abs(signed)
    limits = np.array([_COLUMN_MAX.get(name, _REAL_MAX) for name in _VALIDATED_STORED])
    outside = (magnitude > limits) | ((magnitude > 0) & (magnitude < _REAL_MIN))
    lowest = np.array([0.0 if name in _NON_NEGATIVE_SET else -np.inf for name in _VALIDATED_STORED])
    highest = np.array([PROTOCOL_MAX[name][0] if name in PROTOCOL_MAX else np.inf for name in _VALIDATED_STORED])
    whole = np.array([name in _WHOLE_SET for name in _VALIDATED_STORED])
    # NaN (a blank of BLANK_IN_RAW) compares false with every bound, and floor(NaN) != NaN: not flagged either.
    unbounded = (signed < lowest) | (signed > highest) | ((np.floor(signed) != signed) & whole & ~np.isnan(signed))
    # NaN (no rate) compares false: not flagged; -inf (no number) is flagged with the negatives, _bound_problems names it.
    rates = np.fromiter(map(_rate_number, flows), dtype=np.float64, count=len(flows))
    rate_magnitude = np.abs(rates)
    rate_outside = np.isfinite(rates) & ((rate_magnitude > _REAL_MAX) | ((rate_magnitude > 0) & (rate_magnitude < _REAL_MIN)))
    unstorable_rows = np.any(outside, axis=1) | rate_outside
    unbounded_rows = np.any(unbounded, axis=1) | (rates < 0)
    return list(map(bool, unstorable_rows.tolist())), list(map(bool, unbounded_rows.tolist()))


def _storable(value: float, limit: float) -> bool:
    magnitude = abs(value)
    return magnitude == 0 or _REAL_MIN <= magnitude <= limit


def _rate_number(flow: Mapping[str, Any]) -> float:
    """A flow's `rate` as stored: NaN where it is absent (null or a blank cell: stored as NULL), -inf where it is given
    but no finite number in the features' syntax (a problem: "fast", true and "nan" were stored as NULL, silently, and
    "1_000" as 1000, where every feature is held to ASCII decimal syntax)."""
    rate = flow.get("rate")
    if type(rate) is float and isfinite(rate):
        return rate
    if rate is None or (type(rate) is str and not rate):
        return _NAN
    from threatflow.flows import features

    number = features.finite_number(rate)
    return _NOT_A_RATE if number is None else number


_NOT_A_RATE = float("-inf")
RATE_REASON = "must be a finite number (packets per second), or left out"


def _rate_unstorable(flow: Mapping[str, Any]) -> bool:
    """`rate` is no model input but is stored in the features as real: out of its range the batch's COPY failed."""
    number = _rate_number(flow)
    return isfinite(number) and not _storable(number, _REAL_MAX)


def _storage_problems(index: int, flow: Mapping[str, Any]) -> list[FlowProblem]:
    out = []
    for name in _VALIDATED_STORED:
        limit = _COLUMN_MAX.get(name, _REAL_MAX)
        if not _storable(flow[name], limit) and not isnan(flow[name]):  # NaN: a raw file's blank, stored as NULL
            out.append(FlowProblem(index, name, _out_of_range(limit)))
    if _rate_unstorable(flow):
        out.append(FlowProblem(index, "rate", _out_of_range(_REAL_MAX)))
    return out


def _out_of_range(limit: float) -> str:
    return f"out of the range the event store keeps (0, or {_REAL_MIN:.4g} to {limit:.4g} in magnitude)"


def valid_indices(count: int, problems: Sequence[FlowProblem]) -> list[int]:
    """The input indices of the flows `validate` returned (those without problems)."""
    bad = {p.index for p in problems}
    return [i for i in range(count) if i not in bad]


# -- scoring and storing ---------------------------------------------------------------------


def event_key(source: str, position: int, *, content: bytes) -> str:
    """A deterministic 128-bit key for row `position` of `source` holding the flow `content` (flow_content),
    as a UUID string. The content is part of it because a client names its source (`flows load`: the file's
    sha256) and anyone who knew it could post other rows at its positions first: keyed by source and position
    alone, the real rows, sent later, were all "duplicates". Only the same flow at the same place is one now.
    (blake2b, formatted directly: uuid.uuid5 cost more than scoring the flow.)"""
    h = hashlib.blake2b(f"{source}:{position}:".encode(), digest_size=16)
    h.update(content)
    d = h.hexdigest()
    return f"{d[:8]}-{d[8:12]}-{d[12:16]}-{d[16:20]}-{d[20:]}"


_FEATURES_PACKED = struct.Struct(f"<{len(STORED_FEATURES)}d")
_NAN = float("nan")


def flow_content(features: Sequence[float | None], ev: EventFields, proto: str, service: str, state: str) -> bytes:
    """What an event stores of its flow, as bytes for its key: the model inputs (NaN where absent: a NaN value
    is refused, so the two cannot be confused), the ground truth, addresses, ports, categorical fields and times,
    all as validated (so "80" and 80 are one flow). Not the prediction: the same flow scored by a newer model is
    the same event. A few µs a flow."""
    if None in features:  # a feature the flow does not carry (`rate` in the raw layout)
        features = [_NAN if v is None else v for v in features]
    packed = _FEATURES_PACKED.pack(*features)
    stime = ev.stime.timestamp() if ev.stime is not None else None
    ltime = ev.ltime.timestamp() if ev.ltime is not None else None
    rest = f"|{ev.label}|{ev.attack_cat}|{ev.srcip}|{ev.sport}|{ev.dstip}|{ev.dsport}|{proto}|{service}|{state}|{stime!r}|{ltime!r}"
    return packed + rest.encode()


def _feature_vector(flow: Mapping[str, Any]) -> list[float | None]:
    # Validated flows carry floats for the model's columns: only the others (e.g. `rate`,
    # absent from the raw layout) take the slow path. A blank of BLANK_IN_RAW (NaN) is stored as NULL.
    out: list[Any] = list(map(flow.get, STORED_FEATURES))
    for i, value in enumerate(out):
        if type(value) is not float:
            out[i] = _stored_float(value)
    for i in _BLANK_STORED:
        if out[i] != out[i]:
            out[i] = None
    return out


_BLANK_STORED = tuple(STORED_FEATURES.index(name) for name in sorted(BLANK_IN_RAW))


def _stored_float(value: Any) -> float | None:
    try:
        return float(value) if value is not None and value != "" else None
    except (TypeError, ValueError, OverflowError):  # OverflowError: an int past any float
        return None


def build_rows(
    flows: Sequence[Mapping[str, Any]],
    fields: Sequence[EventFields],
    predictions: Sequence[Any],
    *,
    source: str,
    first_position: int,
    observed_at: datetime,
    positions: Sequence[int] | None = None,
) -> list[EventRow]:
    """Events from scored flows; `positions` (row numbers in the source) default to first_position + i."""
    rows = []
    for offset, (flow, ev, prediction) in enumerate(zip(flows, fields, predictions, strict=True)):
        position = positions[offset] if positions is not None else first_position + offset
        features = _feature_vector(flow)
        proto, service, state = str(flow.get("proto") or "-"), str(flow.get("service") or "-"), str(flow.get("state") or "-")
        rows.append(
            EventRow(
                event_time=ev.stime or observed_at,
                event_key=event_key(source, position, content=flow_content(features, ev, proto, service, state)),
                srcip=ev.srcip,
                sport=ev.sport,
                dstip=ev.dstip,
                dsport=ev.dsport,
                proto=proto,
                service=service,
                state=state,
                stime=ev.stime,
                ltime=ev.ltime,
                features=features,
                label=ev.label,
                attack_cat=ev.attack_cat,
                predicted_attack=bool(prediction.is_attack),
                probability=float(prediction.probability),
                predicted_cat=str(prediction.attack_cat),
                model_version=str(prediction.model_version),
                source=source[:200],
            )
        )
    return rows


def store(conn: Connection, rows: Sequence[EventRow]) -> list[StoredEvent]:
    """Make sure the days' partitions exist, then insert; returns the new events.

    The catalog is asked which of the batch's days lack a partition (one statement, in the batch's
    transaction), every batch: a set of days this process had made once outlived partitions that
    flow-retention, run in another process (possibly with a shorter `retention_days`), dropped since,
    and every later batch of such a day failed (500) until the instance restarted. Partition creation
    commits on its own (a short transaction before the insert), so concurrent ingests of a new day
    wait on one advisory lock, not on each other's data.
    """
    missing = repository.missing_partitions(conn, {r.event_time.astimezone(UTC).date() for r in rows})
    if missing:
        with unit_of_work(conn.engine) as own:  # its own short transaction, on purpose (see above)
            repository.ensure_partitions(own, missing)
    return repository.insert_events(conn, rows)


def undated_time(engine: Engine, source: str, fields: Sequence[EventFields], *, now: datetime, oldest: datetime) -> datetime:
    """The event time of the batch's flows without a stime, when the batch names none (observed_at): when their
    source was first observed (flow_event_sources), so the same source sent again (a retried batch, a file loaded
    again or uploaded under another name) gets the same (event_time, event_key) and is stored once. Each post
    or job took its own time before, and every re-send of the partitioned layout (no stime) stored it again.
    Recorded in its own short transaction: a batch that fails after it still gets the same time when retried."""
    if all(ev.stime is not None for ev in fields):
        return now  # every flow has its own time: nothing to record
    with unit_of_work(engine) as conn:
        return repository.source_observed_at(conn, source, now=now, oldest=oldest)


def score_and_store(
    conn: Connection,
    flows: Sequence[Mapping[str, Any]],
    fields: Sequence[EventFields],
    *,
    model: Scorer,
    source: str,
    first_position: int,
    observed_at: datetime,
    positions: Sequence[int] | None = None,
) -> BatchOutcome:
    """Score validated, canonical flows and store them as events in the caller's transaction."""
    predictions = model.verdicts_clean(flows) if flows else []
    rows = build_rows(
        flows, fields, predictions, source=source, first_position=first_position, observed_at=observed_at, positions=positions
    )
    new = store(conn, rows)
    return BatchOutcome(
        received=len(rows),
        stored=len(new),
        duplicates=len(rows) - len(new),
        predicted_attacks=sum(1 for r in rows if r.predicted_attack),
        model_version=model.version,
        new_events=new,
    )


# -- reading UNSW CSV files -------------------------------------------------------------------


def open_text(stream: IO[bytes]) -> io.TextIOWrapper:
    """A text view of a plain or gzip stream (sniffed by its magic bytes, not its name)."""
    buffered: Any = stream if isinstance(stream, io.BufferedReader) else io.BufferedReader(stream)  # type: ignore[arg-type,type-var]
    raw: Any = gzip.GzipFile(fileobj=buffered) if buffered.peek(2)[:2] == b"\x1f\x8b" else buffered
    return io.TextIOWrapper(raw, encoding="utf-8-sig", errors="replace", newline="")


# A UNSW-NB15 line is ~250 characters; csv builds every cell of a line, so a 500 MB line of cells took gigabytes.
# The flow-ingest worker bounds its uploads' lines at this too (flows/handlers.py), and `flows load` reads through lines_within.
MAX_LINE_CHARS = 16_384


def lines_within(text: IO[str], *, max_chars: int = MAX_LINE_CHARS) -> Iterator[str]:
    """The lines of `text`, never reading more than max_chars + 1 characters at once; a longer line is a ValueError
    naming it (before csv parses it)."""
    number = 0
    while line := text.readline(max_chars + 1):
        number += 1
        if len(line) > max_chars:
            raise ValueError(f"line {number} is longer than {max_chars:,} characters; not a UNSW-NB15 CSV")
        yield line


def _value(name: str, text: str) -> Any:
    """CSV cells to JSON-like values: numbers where the cell is numeric, text otherwise.
    Empty cells stay absent-like (None) so validation names them; never 0."""
    value = text.strip()
    if value == "":
        return None
    if name.lower() in _TEXT_FIELDS or not DECIMAL.fullmatch(value):
        return value  # validation reports a non-numeric one, naming the field (int() read "١٢" as 12)
    try:
        return int(value)
    except ValueError:
        return float(value)


@dataclass(frozen=True)
class MisshapenRow:
    """A CSV row whose cell count differs from the header's (the raw layout's 49): read_csv yields it in place of a
    flow, and the loaders count it as invalid and name it. Its extra cells were dropped and a row missing its last
    columns was stored without them (its label). Blank cells past the header are a trailing comma, not extra cells."""

    cells: int
    expected: int
    raw: bool  # the headerless raw layout

    @property
    def reason(self) -> str:
        layout = f"the raw layout has {self.expected}" if self.raw else f"the header has {self.expected}"
        return f"the row has {self.cells} cells; {layout}"


class CsvRow(NamedTuple):
    """One row of a UNSW CSV as read_csv_rows yields it."""

    number: int  # the data row, from 0 (header not counted, a blank line counted): event positions and rows_done count it
    line: int  # the line of the file it starts on, from 1 as an editor numbers them (header and blank lines counted)
    flow: dict[str, Any] | MisshapenRow


def read_csv_rows(text: Iterable[str], *, skip_rows: int = 0, typed: bool = True) -> Iterator[CsvRow]:
    """The rows of a partitioned (header) or raw (49 columns, no header) UNSW CSV: each flow, or a MisshapenRow for
    a row of another width, with its data-row number and its line.

    Row numbers count data rows from 0, so a resume can skip exactly what was done; they are part of each event's key.
    A problem is named to people by its line, as an editor shows it (`flows load` and the upload worker's first_problem:
    one numbering, where the worker gave a row's index in its batch and the CLI its row number).
    typed=False keeps each cell as its (stripped) text, blank as None: for a client that
    hands the flows to the API, whose validation parses numeric text anyway (parsing here
    too cost the loader as much as the server's validation).
    """
    reader = csv.reader(text)
    first = next(reader, None)
    while first is not None and not "".join(first).strip():  # blank lines before the header or first row (a file was refused)
        first = next(reader, None)
    if first is None:
        return
    first_line = reader.line_num  # a quoted cell may span lines: a row starts after the last line of the one before
    names = [c.strip() for c in first]
    while names and not names[-1]:  # lines ending in a comma (spreadsheet exports): an empty last column
        names.pop()
    lowered = {n.lower() for n in names}
    if {"proto", "service", "state"} <= lowered:
        header = names
        pending: list[tuple[int, list[str]]] = []
    elif len(names) == len(RAW_COLUMNS) and len(first) <= len(RAW_COLUMNS) + 1:
        header = list(RAW_COLUMNS)
        pending = [(first_line, first)]
    else:
        raise ValueError(
            f"not a UNSW-NB15 CSV: the first line has {len(first)} fields and no header; expected the partitioned layout"
            f" with a header or the raw {len(RAW_COLUMNS)}-column layout"
        )

    def rows() -> Iterator[tuple[int, list[str]]]:
        yield from pending
        while True:
            line = reader.line_num + 1
            cells = next(reader, None)
            if cells is None:
                return
            yield line, cells

    width, raw = len(header), bool(pending)
    for number, (line, cells) in enumerate(rows()):
        if number < skip_rows:
            continue
        if not cells or (len(cells) == 1 and not cells[0].strip()):
            continue
        if len(cells) != width and (len(cells) < width or any(cell.strip() for cell in cells[width:])):
            yield CsvRow(number, line, MisshapenRow(len(cells), width, raw))
            continue
        if typed:
            yield CsvRow(number, line, {name: _value(name, cell) for name, cell in zip(header, cells, strict=False)})
        else:
            flow = {name: (value if (value := cell.strip()) else None) for name, cell in zip(header, cells, strict=False)}
            yield CsvRow(number, line, flow)


def read_csv(text: Iterable[str], *, skip_rows: int = 0, typed: bool = True) -> Iterator[tuple[int, dict[str, Any] | MisshapenRow]]:
    """(row number, flow) from read_csv_rows, for readers that name no problem by its line."""
    for row in read_csv_rows(text, skip_rows=skip_rows, typed=typed):
        yield row.number, row.flow


def retained_since(now: datetime, retention_days: int) -> datetime:
    """The oldest event time flow-retention keeps: midnight UTC of the day `retention_days` ago."""
    day = (now - timedelta(days=retention_days)).astimezone(UTC).date()
    return datetime(day.year, day.month, day.day, tzinfo=UTC)


def drop_unretained(
    canonical: list[dict[str, Any]],
    fields: list[EventFields],
    problems: list[FlowProblem],
    *,
    count: int,
    oldest: datetime,
) -> tuple[list[dict[str, Any]], list[EventFields], list[FlowProblem]]:
    """Flows whose stime is older than the retention window become problems (field stime).

    Each day of events is a partition: a 3,000-flow batch over 3,000 past days made 3,000 partitions
    in one transaction (62 s, then a 500: out of lock memory) and flow-retention drops them all again
    at its next run. The window bounds the days one batch can touch to what retention keeps anyway."""
    valid = valid_indices(count, problems)
    old = {i for i, ev in zip(valid, fields, strict=True) if ev.stime is not None and ev.stime < oldest}
    if not old:
        return canonical, fields, problems
    reason = f"{RETENTION_REASON} (before {oldest.date().isoformat()}); flow-retention would drop it"
    kept = [(flow, ev) for i, flow, ev in zip(valid, canonical, fields, strict=True) if i not in old]
    more = sorted([*problems, *(FlowProblem(i, "stime", reason) for i in old)], key=lambda p: (p.index, p.field))
    return [flow for flow, _ in kept], [ev for _, ev in kept], more
