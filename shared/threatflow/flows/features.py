"""The flow model's features: one module for training AND serving, so the two cannot drift.

Canonical names are the partitioned UNSW-NB15 layout (UNSW_NB15_training-set.csv). Either
layout is accepted, case-insensitively: the raw 49-column names (`Sload`, `Sintpkt`,
`smeansz`, `res_bdy_len`, the `ct_src_ ltm` typo with its space, `Label`, `Stime` ...) are
mapped onto the partitioned ones.

Fields left out of the model on purpose (they are accepted and passed through):
- `id`: a row number of the published files; it encodes the file order, which is sorted by
  class in the partitioned sets, so it would leak the label.
- `srcip`, `dstip`, `sport`, `dsport`: in UNSW-NB15 the attack traffic comes from a handful of
  testbed addresses (175.45.176.0/22) and ports; a model that learns them learns the testbed,
  not the behaviour, and does not generalise to another network.
- `stime`, `ltime`: wall-clock times of the 2015 capture; attacks were run in time blocks.
- `rate`: only in the partitioned layout (about (spkts + dpkts - 1) / dur); serving raw flows
  would mean synthesising it, and the trees get the same information from spkts, dpkts, dur.
- `label`, `attack_cat`: the targets.

Strict input: a missing feature, an unknown field or a value that is not a finite number is
reported (every one, with the flow's index); a value is never replaced by 0. One exception, named by the caller
(`blanks`, a required keyword): ingest, training and retraining read a blank in the fields the official raw files
leave blank (BLANK_IN_RAW) as missing, NaN, which the trees route as scikit-learn does; /detect refuses it as any
other blank (Blanks.REFUSED). Ingest (flows/ingest.py: validate) refuses more, as what it stores must be an
observation: a negative feature, a TTL, window or sequence number past its protocol field's width, an ltime before
its stime; /detect scores those flows as given.
"""

from __future__ import annotations

import enum
import math
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from itertools import chain
from operator import itemgetter
from typing import TYPE_CHECKING, Any

from threatflow.platform import limits
from threatflow.platform.errors import ValidationError

if TYPE_CHECKING:
    import numpy as np

CATEGORICAL: tuple[str, ...] = ("proto", "service", "state")

# Partitioned order, without id / rate / attack_cat / label.
FEATURE_COLUMNS: tuple[str, ...] = (
    "dur",
    "proto",
    "service",
    "state",
    "spkts",
    "dpkts",
    "sbytes",
    "dbytes",
    "sttl",
    "dttl",
    "sload",
    "dload",
    "sloss",
    "dloss",
    "sinpkt",
    "dinpkt",
    "sjit",
    "djit",
    "swin",
    "stcpb",
    "dtcpb",
    "dwin",
    "tcprtt",
    "synack",
    "ackdat",
    "smean",
    "dmean",
    "trans_depth",
    "response_body_len",
    "ct_srv_src",
    "ct_state_ttl",
    "ct_dst_ltm",
    "ct_src_dport_ltm",
    "ct_dst_sport_ltm",
    "ct_dst_src_ltm",
    "is_ftp_login",
    "ct_ftp_cmd",
    "ct_flw_http_mthd",
    "ct_src_ltm",
    "ct_srv_dst",
    "is_sm_ips_ports",
)
NUMERIC_COLUMNS: tuple[str, ...] = tuple(c for c in FEATURE_COLUMNS if c not in CATEGORICAL)

# The official raw files (UNSW-NB15_1.csv … _4.csv) leave these cells blank on flows with no HTTP or FTP exchange:
# ct_flw_http_mthd and is_ftp_login empty (pandas reads NaN on ~1.35 M and ~1.43 M of their 2.54 M rows), ct_ftp_cmd
# one space. The partitioned files, which the dataset's authors derived from them, hold 0 there. Ingest refused every
# such row (more than half of a raw file) while training read them as missing: both read a blank here as missing now
# (NaN for the trees, NULL when stored), never as 0, and a blank anywhere else is still a problem.
BLANK_IN_RAW: frozenset[str] = frozenset({"ct_flw_http_mthd", "is_ftp_login", "ct_ftp_cmd"})


class Blanks(enum.Enum):
    """Which blank numeric values (null, "" or whitespace only) a validator takes as missing (NaN)."""

    REFUSED = "refused"  # /detect and /detect/batch: every feature is a number
    RAW_LAYOUT = "raw_layout"  # ingest, training, retraining: BLANK_IN_RAW's fields, as the official raw files write them


_BLANK_FIELDS: Mapping[Blanks, frozenset[str]] = {Blanks.REFUSED: frozenset(), Blanks.RAW_LAYOUT: BLANK_IN_RAW}

# Known fields the model does not use; accepted and passed through unchanged (see the docstring).
PASSTHROUGH: tuple[str, ...] = ("id", "rate", "srcip", "sport", "dstip", "dsport", "stime", "ltime", "label", "attack_cat")

# The dataset's attack_cat labels, exactly; Normal first.
ATTACK_CATEGORIES: tuple[str, ...] = (
    "Normal",
    "Generic",
    "Exploits",
    "Fuzzers",
    "DoS",
    "Reconnaissance",
    "Analysis",
    "Backdoor",
    "Shellcode",
    "Worms",
)
# The spellings the dataset's files use for them: any case and padding, and the raw files' "Backdoors".
_CATEGORY_SPELLINGS = {c.lower(): c for c in ATTACK_CATEGORIES} | {"backdoors": "Backdoor"}


def category_named(text: str) -> str | None:
    """The attack_cat label a spelling of the dataset names (" Fuzzers", "backdoors"), else None."""
    return _CATEGORY_SPELLINGS.get(text.strip().lower())


# The raw layout's names (NUSW-NB15_features.csv order) and the partitioned renames.
RAW_COLUMNS: tuple[str, ...] = (
    "srcip", "sport", "dstip", "dsport", "proto", "state", "dur", "sbytes", "dbytes", "sttl", "dttl",
    "sloss", "dloss", "service", "Sload", "Dload", "Spkts", "Dpkts", "swin", "dwin", "stcpb", "dtcpb",
    "smeansz", "dmeansz", "trans_depth", "res_bdy_len", "Sjit", "Djit", "Stime", "Ltime", "Sintpkt",
    "Dintpkt", "tcprtt", "synack", "ackdat", "is_sm_ips_ports", "ct_state_ttl", "ct_flw_http_mthd",
    "is_ftp_login", "ct_ftp_cmd", "ct_srv_src", "ct_srv_dst", "ct_dst_ltm", "ct_src_ ltm",
    "ct_src_dport_ltm", "ct_dst_sport_ltm", "ct_dst_src_ltm", "attack_cat", "Label",
)  # fmt: skip
RAW_RENAMES: Mapping[str, str] = {
    "smeansz": "smean",
    "dmeansz": "dmean",
    "res_bdy_len": "response_body_len",
    "sintpkt": "sinpkt",
    "dintpkt": "dinpkt",
}
KNOWN_FIELDS: frozenset[str] = frozenset(FEATURE_COLUMNS) | frozenset(PASSTHROUGH)
# A valid flow has at most len(FEATURE_COLUMNS) + len(PASSTHROUGH) = 51 distinct fields; past this bound its fields
# are not looked at one by one (each unknown one was a problem: 16 s and 825 MB for a 33 MB body of one flow).
MAX_FLOW_FIELDS = 64
COLUMNAR_MIN = 2  # a single flow is quicker through the per-field checker than set up as columns
# Field errors a batch keeps one by one; past them a bad flow is one error naming how many it has. 10,000 flows of 64
# unknown fields made 1,050,000 errors, every one kept though the answers list 1,000: 1.9 s and +140 MB a request.
MAX_FIELD_ERRORS = 10_000
MAX_CATEGORY_LENGTH = 32


@dataclass(frozen=True)
class FieldError:
    index: int
    field: str
    reason: str

    def to_json(self) -> dict[str, Any]:
        return {"index": self.index, "field": self.field, "reason": self.reason}


def canonical_name(name: str) -> str:
    """A field name in either layout → its partitioned name (unknown names come back normalised)."""
    key = _NAME_CACHE.get(name)
    if key is None:
        key = "".join(str(name).split()).lower()
        key = RAW_RENAMES.get(key, key)
        if key in KNOWN_FIELDS and len(_NAME_CACHE) < 4096:
            _NAME_CACHE[name] = key
    return key


_NAME_CACHE: dict[str, str] = {}


def canonical_flow(flow: Mapping[str, Any]) -> dict[str, Any]:
    """Rename a flow's keys to the partitioned layout; values untouched, unknown keys kept. Raises nothing."""
    return {canonical_name(k): v for k, v in flow.items()}


# Numbers given as text are ASCII decimal syntax (platform.limits.DECIMAL), as JSON numbers and the UNSW CSVs' cells
# are written: float() also reads "١٢", "１２", "1_000", " 12 " and "+5" (the loaders strip a cell's padding first).
DECIMAL = limits.DECIMAL
decimal_text = limits.decimal_text


def _number(value: Any) -> float | None:
    """A finite number, or None. Numeric strings (CSV) in ASCII decimal syntax are accepted; bools, blanks, NaN and inf are not."""
    kind = type(value)
    if kind is float or kind is int:
        number = float(value)
    elif kind is str:
        parsed = decimal_text(value)
        if parsed is None:
            return None
        number = parsed
    else:
        return None
    return number if math.isfinite(number) else None


def _finite(value: Any) -> float | None:
    """_number, with integers too large for a float (JSON allows them) refused rather than raising."""
    try:
        return _number(value)
    except OverflowError:
        return None


finite_number = _finite  # for the other numbers a flow carries (ingest's `rate`), read as the features are


# No value of proto, service or state holds one; PostgreSQL's text cannot hold NUL, and /detect scored "tcp\0" as
# an unknown protocol where /flows/batch refused it. Checked here, for every route that validates flows.
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")


def _category(column: str, value: Any) -> str | None:
    if type(value) is not str:
        return None
    text = value.strip()
    if not text or len(text) > MAX_CATEGORY_LENGTH or _CONTROL.search(text):
        return None
    return text.upper() if column == "state" else text.lower()


def _category_reason(value: Any) -> str:
    found = _CONTROL.search(value.strip()) if type(value) is str else None
    if found is not None:
        return f"contains a control character (U+{ord(found.group()):04X})"
    return f"must be a non-empty string of at most {MAX_CATEGORY_LENGTH} characters"


def _has_nul(value: Any) -> bool:
    return type(value) is str and "\x00" in value


def _is_blank(value: Any) -> bool:
    return value is None or (type(value) is str and not value.strip())


def validate_flow(index: int, flow: Any, errors: list[FieldError], *, blanks: Blanks) -> dict[str, Any] | None:
    """One flow → canonical dict (features as float / normalised strings), or None with errors appended.

    `blanks` names the blank fields read as missing (NaN): Blanks.RAW_LAYOUT for ingest and the training
    loaders (BLANK_IN_RAW, as the official raw CSVs leave them), Blanks.REFUSED for /detect (none).
    """
    if not isinstance(flow, Mapping):
        errors.append(FieldError(index, "", "a flow must be a JSON object"))
        return None
    if len(flow) > MAX_FLOW_FIELDS:  # one problem, not one per field: a 33 MB body of one flow was 2.3 M of them
        errors.append(FieldError(index, "", f"a flow has at most {MAX_FLOW_FIELDS} fields, got {len(flow)}"))
        return None
    clean: dict[str, Any] = {}
    given_as: dict[str, str] = {}
    blank_ok = _BLANK_FIELDS[blanks]
    before = len(errors)
    for raw_name, value in flow.items():
        if type(raw_name) is not str:
            errors.append(FieldError(index, str(raw_name), "field names must be strings"))
            continue
        name = canonical_name(raw_name)
        if name not in KNOWN_FIELDS:
            errors.append(FieldError(index, raw_name, "unknown field"))
            continue
        if name in given_as:
            errors.append(FieldError(index, raw_name, f"given twice (also as {given_as[name]!r})"))
            continue
        given_as[name] = raw_name
        if name in _NUMERIC_SET:
            number = _finite(value)
            if number is None and name in blank_ok and _is_blank(value):
                number = math.nan
            if number is None:
                errors.append(FieldError(index, raw_name, f"must be a finite number, got {_describe(value)}"))
                continue
            clean[name] = number
        elif name in _CATEGORICAL_SET:
            text = _category(name, value)
            if text is None:
                errors.append(FieldError(index, raw_name, _category_reason(value)))
                continue
            clean[name] = text
        elif _has_nul(value):  # not scored, but stored by ingest (PostgreSQL text cannot hold it): refused on every route
            errors.append(FieldError(index, raw_name, "contains a NUL character"))
        else:
            clean[name] = value
    for name in FEATURE_COLUMNS:
        if name not in given_as:
            errors.append(FieldError(index, name, "missing required feature"))
    return clean if len(errors) == before else None


_NUMERIC_SET = frozenset(NUMERIC_COLUMNS)
_CATEGORICAL_SET = frozenset(CATEGORICAL)
_NUMERIC_POSITIONS = [FEATURE_COLUMNS.index(name) for name in NUMERIC_COLUMNS]
_CATEGORICAL_POSITIONS = [FEATURE_COLUMNS.index(name) for name in CATEGORICAL]
# Per rule, the positions in NUMERIC_COLUMNS that must hold a number and those that may be blank.
_STRICT_POSITIONS = {rule: [i for i, name in enumerate(NUMERIC_COLUMNS) if name not in fields] for rule, fields in _BLANK_FIELDS.items()}
_BLANK_POSITIONS = {rule: [i for i, name in enumerate(NUMERIC_COLUMNS) if name in fields] for rule, fields in _BLANK_FIELDS.items()}


def _describe(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int) and value.bit_length() > 1100:  # past any float; repr may even refuse it
        return f"an integer of {value.bit_length()} bits"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, str):
        return repr(value[:40])
    return type(value).__name__


def validate_flows(flows: Sequence[Any], *, blanks: Blanks) -> tuple[list[dict[str, Any]], list[FieldError]]:
    """Validate every flow; returns (clean flows in input order, every error). Clean is complete only without errors."""
    batch = _columnar(flows, keep_passthrough=True, blanks=blanks) if len(flows) >= COLUMNAR_MIN else None
    if batch is not None:
        return batch.clean_flows(), []
    return _validate_each(flows, blanks=blanks)


def _validate_each(flows: Sequence[Any], *, blanks: Blanks) -> tuple[list[dict[str, Any]], list[FieldError]]:
    """The per-field checker: the reference semantics, and the source of every error list."""
    errors: list[FieldError] = []
    clean: list[dict[str, Any]] = []
    for index, flow in enumerate(flows):
        if len(errors) < MAX_FIELD_ERRORS:
            result = validate_flow(index, flow, errors, blanks=blanks)
        else:  # every bad flow is still named (skip_invalid drops exactly those), in one error
            own: list[FieldError] = []
            result = validate_flow(index, flow, own, blanks=blanks)
            if own:
                listed = f"fields are listed one by one up to {MAX_FIELD_ERRORS:,} a batch"
                reason = f"{len(own)} invalid fields, first: {own[0].reason} ({listed})"
                errors.append(FieldError(index, own[0].field, reason))
        if result is not None:
            clean.append(result)
    return clean, errors


@dataclass(frozen=True)
class FlowBatch:
    """Validated flows held by column: what serving needs, without a dict per flow.

    numeric: (n, len(NUMERIC_COLUMNS)) float64, finite (NaN where Blanks.RAW_LAYOUT took a blank); categorical: normalised strings per
    CATEGORICAL column; passthrough: each flow's pass-through values under their canonical
    names (only kept when clean dicts are wanted).
    """

    numeric: np.ndarray
    categorical: tuple[list[str], ...]
    passthrough: list[dict[str, Any]] | None = None

    def __len__(self) -> int:
        return len(self.numeric)

    def matrix(self, *, vocabulary: Vocabulary) -> np.ndarray:
        """The model's float32 matrix in FEATURE_COLUMNS order (the same numbers as matrix_from_clean)."""
        import numpy as np

        n = len(self.numeric)
        X = np.empty((n, len(FEATURE_COLUMNS)), dtype=np.float32)
        X[:, _NUMERIC_POSITIONS] = self.numeric
        index = vocabulary._index
        for name, position, column in zip(CATEGORICAL, _CATEGORICAL_POSITIONS, self.categorical, strict=True):
            mapping, other = index[name], len(vocabulary.categories[name])
            codes = {value: mapping.get(value, other) for value in set(column)}
            X[:, position] = np.fromiter(map(codes.__getitem__, column), dtype=np.float32, count=n)
        return X

    def clean_flows(self) -> list[dict[str, Any]]:
        """The flows as validate_flow returns them (canonical names; equal dicts, key order aside:
        a flow's names are the features and its pass-through fields, so nothing is left to pick)."""
        numeric = self.numeric.tolist()
        passthrough = self.passthrough or [{}] * len(numeric)
        clean = []
        for values, cats, extra in zip(numeric, zip(*self.categorical, strict=True), passthrough, strict=True):
            flow = dict(zip(NUMERIC_COLUMNS, values, strict=True))
            flow.update(zip(CATEGORICAL, cats, strict=True))
            flow.update(extra)
            clean.append(flow)
        return clean


def validate_batch(flows: Sequence[Any], *, blanks: Blanks) -> tuple[FlowBatch | None, list[FieldError]]:
    """validate_flows for scoring: (the batch by column, []) or (None, every error).

    Fast path by column; when it meets anything it cannot vouch for, the per-field checker
    decides, so errors (and what is accepted) are exactly validate_flow's."""
    batch = _columnar(flows, keep_passthrough=False, blanks=blanks) if len(flows) >= COLUMNAR_MIN else None
    if batch is not None:
        return batch, []
    clean, errors = _validate_each(flows, blanks=blanks)
    if errors:
        return None, errors
    return _batch_from_clean(clean), []


def validated_batch(flows: Sequence[Any], *, blanks: Blanks) -> FlowBatch:
    """validate_batch for callers that answer bad input with a 400: the batch, or ValidationError
    listing every offending field (raise_for_errors)."""
    batch, errors = validate_batch(flows, blanks=blanks)
    raise_for_errors(errors)
    if batch is None:  # unreachable: no errors means a batch
        raise ValueError("validation returned neither a batch nor errors")
    return batch


def _batch_from_clean(clean: Sequence[Mapping[str, Any]]) -> FlowBatch:
    """Validated (canonical) flows by column (C-level itemgetter, no Python row per flow)."""
    import numpy as np

    values = chain.from_iterable(map(itemgetter(*NUMERIC_COLUMNS), clean))
    numeric = np.fromiter(values, dtype=np.float64, count=len(clean) * len(NUMERIC_COLUMNS)).reshape(len(clean), len(NUMERIC_COLUMNS))
    return FlowBatch(numeric, tuple(list(map(itemgetter(name), clean)) for name in CATEGORICAL))


@dataclass(frozen=True)
class _Layout:
    """One set of field names, checked once per batch: where each canonical column comes from."""

    numeric: tuple[str, ...]  # the given names of NUMERIC_COLUMNS, in that order
    categorical: tuple[str, ...]  # the given names of CATEGORICAL, in that order
    passthrough: tuple[tuple[str, str], ...]  # (given, canonical) of the pass-through fields


def _layout(keys: Iterable[Any]) -> _Layout | None:
    """The layout of a flow's keys, or None when validate_flow would report any of them."""
    given: dict[str, str] = {}
    names: list[str] = []
    for key in keys:
        if type(key) is not str:
            return None
        name = canonical_name(key)
        if name not in KNOWN_FIELDS or name in given:
            return None
        given[name] = key
        names.append(name)
    if any(name not in given for name in FEATURE_COLUMNS):
        return None
    return _Layout(
        numeric=tuple(given[name] for name in NUMERIC_COLUMNS),
        categorical=tuple(given[name] for name in CATEGORICAL),
        passthrough=tuple((given[name], name) for name in names if name in PASSTHROUGH),
    )


_NUMBER_TYPES = frozenset({float, int, str})  # what _number may accept (never bool, None, containers)


def _number_block(values: list[Any]) -> np.ndarray | None:
    """float64 of each value, as _number reads it (float() of each, the same numbers, the same refusals),
    or None when any would be refused."""
    import numpy as np

    kinds = set(map(type, values))
    if not kinds <= _NUMBER_TYPES:
        return None
    try:
        if str in kinds:
            if not all(map(DECIMAL.fullmatch, (value for value in values if type(value) is str))):
                return None
            block = np.fromiter(map(float, values), dtype=np.float64, count=len(values))
        else:
            block = np.array(values, dtype=np.float64)
    except (ValueError, OverflowError):
        return None
    return block if np.isfinite(block).all() else None


def _blankable_block(values: list[Any]) -> np.ndarray | None:
    """_number_block of a field blanks may leave out: NaN where a value is blank (validate_flow's _is_blank)."""
    import numpy as np

    kinds = set(map(type, values))
    if type(None) not in kinds and str not in kinds:
        return _number_block(values)
    blank = list(map(_is_blank, values))
    if not any(blank):
        return _number_block(values)
    block = _number_block([0 if is_blank else value for value, is_blank in zip(values, blank, strict=True)])
    if block is not None:
        block[np.fromiter(blank, dtype=bool, count=len(blank))] = np.nan
    return block


def _columnar(flows: Sequence[Any], *, keep_passthrough: bool, blanks: Blanks) -> FlowBatch | None:
    """Every flow valid → the batch by column; anything else (or any doubt) → None.

    Per layout (usually one per batch) the names are checked once; then each column is pulled
    with C-level itemgetter/map calls and converted in one go. Values pass only if the per-field
    checker would take them unchanged: exact types float/int/str, float() of each (the same call
    _number makes), finite, or blank where `blanks` allows it (NaN); categoricals exact str, normalised
    through _category per distinct value.
    """
    import numpy as np

    n = len(flows)
    if n == 0 or type(flows[0]) is not dict:
        return None
    first_keys = flows[0].keys()
    if all(type(flow) is dict and flow.keys() == first_keys for flow in flows):
        groups: list[tuple[Any, list[int] | None]] = [(first_keys, None)]
    else:
        by_keys: dict[frozenset[Any], list[int]] = {}
        for index, flow in enumerate(flows):
            if type(flow) is not dict:
                return None
            by_keys.setdefault(frozenset(flow), []).append(index)
        groups = [(flows[indices[0]].keys(), indices) for indices in by_keys.values()]
    strict_positions, blank_positions = _STRICT_POSITIONS[blanks], _BLANK_POSITIONS[blanks]
    numeric = np.empty((n, len(NUMERIC_COLUMNS)), dtype=np.float64)
    categorical: tuple[list[Any], ...] = tuple([None] * n for _ in CATEGORICAL)
    passthrough: list[Any] = [None] * n
    for group_keys, indices in groups:
        layout = _layout(group_keys)
        if layout is None:
            return None
        members = flows if indices is None else [flows[i] for i in indices]
        strict = [layout.numeric[i] for i in strict_positions]
        block = _number_block(list(chain.from_iterable(map(itemgetter(*strict), members))))
        if block is None:
            return None
        block = block.reshape(len(members), len(strict))
        if blank_positions:  # the fields blanks may leave out, column by column
            whole = np.empty((len(members), len(NUMERIC_COLUMNS)), dtype=np.float64)
            whole[:, strict_positions] = block
            for position in blank_positions:
                blankable = _blankable_block(list(map(itemgetter(layout.numeric[position]), members)))
                if blankable is None:
                    return None
                whole[:, position] = blankable
            block = whole
        texts = []
        for name, key in zip(CATEGORICAL, layout.categorical, strict=True):
            column = list(map(itemgetter(key), members))
            if set(map(type, column)) != {str}:
                return None
            normal = {value: _category(name, value) for value in set(column)}
            if None in normal.values():
                return None
            texts.append(list(map(normal.__getitem__, column)))
        for given, _name in layout.passthrough:
            if any(map(_has_nul, map(itemgetter(given), members))):
                return None
        if indices is None:
            numeric = block
            categorical = tuple(texts)
        else:
            numeric[indices] = block
            for target, column in zip(categorical, texts, strict=True):
                for i, text in zip(indices, column, strict=True):
                    target[i] = text
        if keep_passthrough:
            extra = [{name: flow[given] for given, name in layout.passthrough} for flow in members]
            for position, flow_extra in enumerate(extra):
                i = position if indices is None else indices[position]
                passthrough[i] = flow_extra
    if not keep_passthrough:
        return FlowBatch(numeric, categorical)
    return FlowBatch(numeric, categorical, passthrough)


def raise_for_errors(errors: Sequence[FieldError], *, limit: int = 1000) -> None:
    """Turn field errors into one 400 that lists them (bounded), or do nothing."""
    if not errors:
        return
    shown = [e.to_json() for e in errors[:limit]]
    first = errors[0]
    where = f"flows[{first.index}].{first.field}" if first.field else f"flows[{first.index}]"
    raise ValidationError(
        f"{len(errors)} invalid field(s); first: {where}: {first.reason}",
        field=where,
        details={"errors": shown, "total": len(errors), "truncated": len(errors) > limit},
    )


@dataclass(frozen=True)
class Vocabulary:
    """The categorical values the model knows, per column; anything else is the 'other' bucket (code = len)."""

    categories: Mapping[str, tuple[str, ...]]

    @classmethod
    def fit(cls, values: Mapping[str, Iterable[str]], *, min_count: int = 5, max_size: int = 200) -> Vocabulary:
        from collections import Counter

        categories: dict[str, tuple[str, ...]] = {}
        for column in CATEGORICAL:
            counts = Counter(values[column])
            frequent = [v for v, n in counts.most_common(max_size) if n >= min_count]
            categories[column] = tuple(sorted(frequent))
        return cls(categories)

    def code(self, column: str, value: str) -> int:
        return self._index[column].get(value, len(self.categories[column]))

    def size(self, column: str) -> int:
        """Number of codes, the 'other' bucket included."""
        return len(self.categories[column]) + 1

    @property
    def _index(self) -> dict[str, dict[str, int]]:
        cached: dict[str, dict[str, int]] | None = self.__dict__.get("_index_cache")
        if cached is None:
            cached = {c: {v: i for i, v in enumerate(vals)} for c, vals in self.categories.items()}
            object.__setattr__(self, "_index_cache", cached)
        return cached

    def to_json(self) -> dict[str, list[str]]:
        return {c: list(v) for c, v in self.categories.items()}

    @classmethod
    def from_json(cls, data: Mapping[str, Sequence[str]]) -> Vocabulary:
        missing = [c for c in CATEGORICAL if c not in data]
        if missing:
            raise ValueError(f"vocabulary lacks {missing}")
        return cls({c: tuple(str(v) for v in data[c]) for c in CATEGORICAL})


def matrix_from_clean(flows: Sequence[Mapping[str, Any]], *, vocabulary: Vocabulary) -> np.ndarray:
    """Validated (canonical) flows → float32 matrix in FEATURE_COLUMNS order, categoricals as vocabulary codes."""
    return _batch_from_clean(flows).matrix(vocabulary=vocabulary)  # ingest scores its clean flows through here


def to_matrix(flows: Sequence[Mapping[str, Any]], *, vocabulary: Vocabulary) -> np.ndarray:
    """Any flows (either layout) → the model's float32 matrix; invalid input raises ValidationError listing every field.
    Scoring as /detect does: a blank feature is refused (Blanks.REFUSED)."""
    return validated_batch(flows, blanks=Blanks.REFUSED).matrix(vocabulary=vocabulary)


def categorical_indices() -> list[int]:
    return [FEATURE_COLUMNS.index(c) for c in CATEGORICAL]
