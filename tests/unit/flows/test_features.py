"""The flow feature module: both UNSW-NB15 layouts, strict errors with indices, the vocabulary, the columnar fast path."""

import copy
import math
import random

import numpy as np
import pytest
from ml_helpers import flow_without_targets, sample_rows

from threatflow.flows import features as F
from threatflow.platform.errors import ValidationError

PARTITIONED = {
    "dur": 0.121478, "proto": "tcp", "service": "-", "state": "FIN", "spkts": 6, "dpkts": 4, "sbytes": 258,
    "dbytes": 172, "sttl": 252, "dttl": 254, "sload": 14158.94, "dload": 8495.365, "sloss": 0, "dloss": 0,
    "sinpkt": 24.2956, "dinpkt": 8.375, "sjit": 30.177547, "djit": 11.830604, "swin": 255, "stcpb": 621772692,
    "dtcpb": 2202533631, "dwin": 255, "tcprtt": 0.0, "synack": 0.0, "ackdat": 0.0, "smean": 43, "dmean": 43,
    "trans_depth": 0, "response_body_len": 0, "ct_srv_src": 1, "ct_state_ttl": 0, "ct_dst_ltm": 1,
    "ct_src_dport_ltm": 1, "ct_dst_sport_ltm": 1, "ct_dst_src_ltm": 1, "is_ftp_login": 0, "ct_ftp_cmd": 0,
    "ct_flw_http_mthd": 0, "ct_src_ltm": 1, "ct_srv_dst": 1, "is_sm_ips_ports": 0,
}  # fmt: skip
RAW_NAMES = {"sload": "Sload", "dload": "Dload", "spkts": "Spkts", "dpkts": "Dpkts", "smean": "smeansz", "dmean": "dmeansz",
             "response_body_len": "res_bdy_len", "sjit": "Sjit", "djit": "Djit", "sinpkt": "Sintpkt", "dinpkt": "Dintpkt",
             "ct_src_ltm": "ct_src_ ltm"}  # fmt: skip


def raw_flow() -> dict:
    flow = {RAW_NAMES.get(k, k): v for k, v in PARTITIONED.items()}
    flow.update({"srcip": "175.45.176.1", "sport": 1043, "dstip": "149.171.126.6", "dsport": 53, "Stime": 1421927377, "Ltime": 1421927378})
    return flow


def test_feature_columns_exclude_identifiers_and_targets():
    assert len(F.FEATURE_COLUMNS) == 41
    for left_out in ("id", "rate", "srcip", "dstip", "sport", "dsport", "stime", "ltime", "label", "attack_cat"):
        assert left_out not in F.FEATURE_COLUMNS
    assert set(F.CATEGORICAL) <= set(F.FEATURE_COLUMNS)


def test_both_layouts_give_the_same_clean_flow():
    clean, errors = F.validate_flows([PARTITIONED, raw_flow()], blanks=F.Blanks.REFUSED)
    assert errors == []
    features = [{k: v for k, v in c.items() if k in F.FEATURE_COLUMNS} for c in clean]
    assert features[0] == features[1]
    assert clean[1]["ct_src_ltm"] == 1.0 and clean[1]["srcip"] == "175.45.176.1"  # passthrough kept
    assert F.canonical_flow({"ct_src_ ltm": 1, "Sintpkt": 2, "LABEL": 0}) == {"ct_src_ltm": 1, "sinpkt": 2, "label": 0}


def test_raw_feature_names_map_onto_partitioned():
    mapped = {F.canonical_name(n) for n in F.RAW_COLUMNS}
    assert set(F.FEATURE_COLUMNS) - {"proto", "service", "state"} <= mapped
    assert mapped - set(F.KNOWN_FIELDS) == set()


def test_every_offending_field_is_listed_with_its_index():
    bad = dict(PARTITIONED)
    del bad["dur"]
    bad["sload"] = "fast"
    bad["dbytes"] = None
    bad["sbytes"] = True
    bad["sttl"] = float("nan")
    bad["colour"] = "red"
    good = dict(PARTITIONED)
    wrong_type = dict(PARTITIONED, proto=6)
    clean, errors = F.validate_flows([good, bad, wrong_type, "not a flow"], blanks=F.Blanks.REFUSED)
    assert len(clean) == 1
    by_index = {(e.index, e.field) for e in errors}
    assert by_index == {
        (1, "dur"), (1, "sload"), (1, "dbytes"), (1, "sbytes"), (1, "sttl"), (1, "colour"), (2, "proto"), (3, ""),
    }  # fmt: skip
    reasons = {e.field: e.reason for e in errors if e.index == 1}
    assert reasons["dur"] == "missing required feature"
    assert reasons["colour"] == "unknown field"
    assert "finite number" in reasons["sload"] and "null" in reasons["dbytes"]


def test_a_value_is_never_filled_with_zero():
    flow = dict(PARTITIONED)
    flow["sbytes"] = ""
    clean, errors = F.validate_flows([flow], blanks=F.Blanks.REFUSED)
    assert clean == [] and [(e.index, e.field) for e in errors] == [(0, "sbytes")]
    with pytest.raises(ValidationError) as info:
        F.to_matrix([flow], vocabulary=F.Vocabulary({c: () for c in F.CATEGORICAL}))
    assert info.value.details["errors"] == [{"index": 0, "field": "sbytes", "reason": "must be a finite number, got ''"}]


def test_the_same_field_twice_under_both_names_is_refused():
    flow = dict(PARTITIONED, Sload=1.0)
    _, errors = F.validate_flows([flow], blanks=F.Blanks.REFUSED)
    assert [(e.field, "given twice" in e.reason) for e in errors] == [("Sload", True)]


def test_training_loader_reads_blank_raw_cells_as_missing_not_zero():
    flow = dict(PARTITIONED, ct_flw_http_mthd="")
    errors: list = []
    clean = F.validate_flow(0, flow, errors, blanks=F.Blanks.RAW_LAYOUT)
    assert errors == [] and clean is not None and math.isnan(clean["ct_flw_http_mthd"])


def test_vocabulary_codes_and_other_bucket():
    vocab = F.Vocabulary.fit({"proto": ["tcp"] * 9 + ["udp"] * 5 + ["rare"], "service": ["-", "-", "dns"], "state": ["FIN"]}, min_count=2)
    assert vocab.categories["proto"] == ("tcp", "udp")
    assert vocab.code("proto", "udp") == 1 and vocab.code("proto", "rare") == 2 and vocab.code("proto", "never") == 2
    assert F.Vocabulary.from_json(vocab.to_json()) == vocab
    X = F.to_matrix([dict(PARTITIONED, proto="UDP", state="fin")], vocabulary=vocab)
    assert X.dtype == np.float32 and X.shape == (1, 41)
    assert X[0, F.FEATURE_COLUMNS.index("proto")] == 1  # case-normalised to 'udp'
    assert X[0, F.FEATURE_COLUMNS.index("state")] == 0  # 'FIN'
    assert X[0, F.FEATURE_COLUMNS.index("service")] == 0  # "-" is the only frequent service


# -- the columnar fast path against the per-field checker ------------------------------------------
# validate_flows / validate_batch / to_matrix take the column-by-column path when a batch is clean
# and fall back to validate_flow (one field at a time) to list the errors. These tests hold the two
# to the same answers: the same clean flows, the same matrix, and on bad input the same error list,
# whatever the mix of layouts, value kinds and faults in one batch.

VOCAB = F.Vocabulary({"proto": ("tcp", "udp"), "service": ("-", "dns", "http"), "state": ("CON", "FIN", "INT")})


def reference(flows):
    """What validate_flows returned before the fast path: validate_flow on each flow."""
    errors: list = []
    clean = []
    for index, flow in enumerate(flows):
        result = F.validate_flow(index, flow, errors, blanks=F.Blanks.REFUSED)
        if result is not None:
            clean.append(result)
    return clean, errors


def reference_matrix(flows, *, vocabulary):
    """matrix_from_clean as it was before the columnar path: one Python row per flow."""
    index = vocabulary._index
    rows = []
    for flow in flows:
        row = [flow[name] if name not in F.CATEGORICAL else 0.0 for name in F.FEATURE_COLUMNS]
        for position, name in enumerate(F.FEATURE_COLUMNS):
            if name in F.CATEGORICAL:
                row[position] = index[name].get(flow[name], len(vocabulary.categories[name]))
        rows.append(row)
    return np.asarray(rows, dtype=np.float32).reshape(len(rows), len(F.FEATURE_COLUMNS))


def assert_same_as_reference(flows):
    expected_clean, expected_errors = reference(copy.deepcopy(flows))
    clean, errors = F.validate_flows(flows, blanks=F.Blanks.REFUSED)
    assert errors == expected_errors
    assert clean == expected_clean
    batch, batch_errors = F.validate_batch(flows, blanks=F.Blanks.REFUSED)
    assert batch_errors == expected_errors
    if expected_errors:
        assert batch is None
        with pytest.raises(ValidationError) as info:
            F.to_matrix(flows, vocabulary=VOCAB)
        assert info.value.details["errors"] == [e.to_json() for e in expected_errors[:1000]]
    else:
        expected_matrix = reference_matrix(expected_clean, vocabulary=VOCAB)
        np.testing.assert_array_equal(F.matrix_from_clean(expected_clean, vocabulary=VOCAB), expected_matrix)
        matrix = batch.matrix(vocabulary=VOCAB)
        assert matrix.dtype == np.float32 and matrix.shape == expected_matrix.shape
        np.testing.assert_array_equal(matrix, expected_matrix)
        np.testing.assert_array_equal(F.to_matrix(flows, vocabulary=VOCAB), expected_matrix)
    return expected_errors


def dev_flows(n=300):
    return [flow_without_targets(r) for r in sample_rows(2500)[:n]]


def as_numbers(flow):
    """The same flow with JSON numbers instead of CSV strings (ints where the text is integral)."""
    out = {}
    for key, value in flow.items():
        if F.canonical_name(key) in F.NUMERIC_COLUMNS:
            number = float(value)
            out[key] = int(number) if number.is_integer() and "." not in str(value) else number
        else:
            out[key] = value
    return out


def test_fast_path_is_taken_for_clean_batches_and_matches_the_reference():
    flows = dev_flows()
    assert F._columnar(flows, keep_passthrough=False, blanks=F.Blanks.REFUSED) is not None
    assert_same_as_reference(flows)
    numbers = [as_numbers(f) for f in flows]
    assert {type(v) for f in numbers for v in f.values()} >= {int, float, str}
    assert F._columnar(numbers, keep_passthrough=True, blanks=F.Blanks.REFUSED) is not None
    assert_same_as_reference(numbers)


def test_mixed_layouts_and_key_orders_in_one_batch():
    raw = raw_flow()
    reordered = dict(reversed(list(PARTITIONED.items())))
    with_extra = dict(PARTITIONED, id=7, rate=1.5, label=1, attack_cat="DoS", srcip="10.0.0.1")
    flows = [PARTITIONED, raw, reordered, with_extra, raw_flow(), PARTITIONED]
    assert F._columnar(flows, keep_passthrough=True, blanks=F.Blanks.REFUSED) is not None
    assert_same_as_reference(flows)
    clean, _ = F.validate_flows(flows, blanks=F.Blanks.REFUSED)
    assert clean[3]["srcip"] == "10.0.0.1" and clean[3]["attack_cat"] == "DoS" and clean[3]["id"] == 7
    assert "id" not in clean[0]
    X = F.to_matrix(flows, vocabulary=VOCAB)
    assert (X[0] == X).all()  # the same flow whatever the layout, order or pass-through fields


def test_number_forms_the_reference_accepts():
    forms = ["1.5", "1000", "1e3", "-0", "2E+3", "7", 0, -0.0, 2**70 + 12345, 2**63 - 1, 2**64 + 1, 1e308, "1e-320", 5]
    flows = [dict(PARTITIONED, sbytes=value, proto=" TCP ", state="fin", service="HTTP") for value in forms]
    assert F._columnar(flows, keep_passthrough=False, blanks=F.Blanks.REFUSED) is not None
    assert_same_as_reference(flows)
    clean, _ = F.validate_flows(flows, blanks=F.Blanks.REFUSED)
    assert math.copysign(1.0, clean[forms.index("-0")]["sbytes"]) == -1.0
    assert clean[0]["proto"] == "tcp" and clean[0]["state"] == "FIN" and clean[0]["service"] == "http"


BAD_VALUES = [
    "nan", "NaN", "inf", "-Infinity", "1e400", "-1e999", "", "   ", "fast", "1,5", "0x10",
    True, False, None, 10**400, -(10**400), 10**5000, [1], {"a": 1}, float("nan"), float("inf"),
]  # fmt: skip
BAD_CATEGORIES = [6, 6.0, None, True, "", "   ", "x" * 33, ["tcp"], {"tcp": 1}]


def _value_id(value):
    return f"{type(value).__name__}-{value.bit_length() if isinstance(value, int) else str(value)[:12]}"


@pytest.mark.parametrize("value", BAD_VALUES, ids=_value_id)
def test_each_bad_number_is_listed_exactly_as_the_reference_lists_it(value):
    flows = [PARTITIONED, dict(PARTITIONED, sload=value), PARTITIONED]
    errors = assert_same_as_reference(flows)
    assert [(e.index, e.field) for e in errors] == [(1, "sload")]
    assert errors[0].reason.startswith("must be a finite number, got ")


# Text float() reads but JSON and the UNSW CSVs never write: other scripts' digits, underscores, padding, a '+'.
LENIENT_NUMBER_TEXT = ["١٢", "１２", "1_000", " 12 ", "12\n", "+5", "۱.۵", ".5", "5.", "1e", "١e3", "0x10", "Infinity"]


@pytest.mark.parametrize("value", LENIENT_NUMBER_TEXT)
def test_number_text_is_only_ascii_decimal_syntax(value):
    """float() reads "١٢" (Arabic-Indic), "１２" (fullwidth), "1_000", " 12 " and "+5"; /detect, /detect/batch and
    /flows/batch took them as numbers. Each is listed with its field and index, by the per-field checker and the columnar path."""
    errors = assert_same_as_reference([PARTITIONED, dict(PARTITIONED, sbytes=value), PARTITIONED])
    assert [(e.index, e.field) for e in errors] == [(1, "sbytes")]
    assert errors[0].reason.startswith("must be a finite number, got ")
    single: list = []
    assert F.validate_flow(0, dict(PARTITIONED, dur=value), single, blanks=F.Blanks.REFUSED) is None
    assert [e.field for e in single] == ["dur"]


@pytest.mark.parametrize("text", ["tcp\x00", "\x00", "tc\x01p", "http\x1b[31m", "tcp\x7f", "tcp\x85x"])
@pytest.mark.parametrize("field", ["proto", "service", "state"])
def test_a_category_holding_a_control_character_is_refused_naming_it(field, text):
    """/detect scored "tcp\\u0000" as an unknown protocol (200) where /flows/batch refused it: one check, in validation."""
    errors = assert_same_as_reference([PARTITIONED, dict(PARTITIONED, **{field: text})])
    assert [(e.index, e.field) for e in errors] == [(1, field)]
    assert "control character" in errors[0].reason


@pytest.mark.parametrize("field", ["srcip", "attack_cat", "id"])
def test_a_pass_through_string_holding_a_nul_is_refused_naming_it(field):
    """Pass-through fields are not scored, but a NUL in one was answered 200 by /detect and refused by /flows/batch."""
    errors = assert_same_as_reference([dict(PARTITIONED, srcip="10.0.0.1"), dict(PARTITIONED, **{field: "10.0.0.2\x00"})])
    assert [(e.index, e.field) for e in errors] == [(1, field)]
    assert "NUL" in errors[0].reason


@pytest.mark.parametrize("value", BAD_CATEGORIES, ids=_value_id)
def test_each_bad_category_is_listed_exactly_as_the_reference_lists_it(value):
    errors = assert_same_as_reference([dict(PARTITIONED, service=value), PARTITIONED])
    assert [(e.index, e.field) for e in errors] == [(0, "service")]


def test_huge_integers_are_refused_not_crashed_on():
    errors: list = []
    assert F.validate_flow(0, dict(PARTITIONED, dbytes=10**400), errors, blanks=F.Blanks.REFUSED) is None
    assert [(e.field, e.reason) for e in errors] == [("dbytes", "must be a finite number, got an integer of 1329 bits")]
    errors.clear()
    F.validate_flow(0, dict(PARTITIONED, dbytes=10**5000), errors, blanks=F.Blanks.REFUSED)  # past int's repr limit too
    assert errors[0].field == "dbytes" and "integer of" in errors[0].reason


def test_structural_faults_fall_back_to_the_full_error_list():
    missing = dict(PARTITIONED)
    del missing["dur"], missing["proto"]
    unknown = dict(PARTITIONED, colour="red", Colour="blue")
    twice = dict(PARTITIONED, Sload=1.0)
    raw_twice = dict(raw_flow(), smean=43)
    non_str_key = {**PARTITIONED, 1: 2}
    flows = [PARTITIONED, missing, unknown, twice, raw_twice, non_str_key, "not a flow", None, [1, 2], raw_flow()]
    errors = assert_same_as_reference(flows)
    assert {e.index for e in errors} == {1, 2, 3, 4, 5, 6, 7, 8}
    assert assert_same_as_reference([]) == []


def test_random_mixes_of_good_and_bad_flows_match_the_reference():
    rng = random.Random(20261126)
    base = dev_flows(120)
    numeric_raw = {v: k for k, v in RAW_NAMES.items()}
    for _ in range(150):
        flows = []
        for _ in range(rng.randint(1, 12)):
            flow = dict(rng.choice(base))
            if rng.random() < 0.3:
                flow = as_numbers(flow)
            if rng.random() < 0.3:  # raw layout names
                flow = {RAW_NAMES.get(k, k): v for k, v in flow.items()}
            for _ in range(rng.choice([0, 0, 0, 1, 2, 3])):
                fault = rng.randrange(5)
                key = rng.choice(list(flow))
                if fault == 0:
                    flow[key] = rng.choice(BAD_VALUES + BAD_CATEGORIES)
                elif fault == 1:
                    del flow[key]
                elif fault == 2:
                    flow[rng.choice(["colour", "Label2", "ct_src_ltm ", "srcip"])] = 1
                elif fault == 3 and key in numeric_raw:
                    flow[numeric_raw[key]] = flow[key]  # the same field under both names
                else:
                    flow[key] = rng.choice(["1e3", " 2 ", -0.0, 2**65, "-0", "TCP", " fin "])
            if rng.random() < 0.03:
                flow = rng.choice(["flow", None, 3, [flow]])
            flows.append(flow)
        assert_same_as_reference(flows)


def test_clean_batch_of_the_dev_sample_gives_the_reference_matrix_under_the_real_vocabulary():
    flows = dev_flows(2000)
    values = {c: [F.validate_flows([f], blanks=F.Blanks.REFUSED)[0][0][c] for f in flows[:500]] for c in F.CATEGORICAL}
    vocab = F.Vocabulary.fit(values, min_count=2)
    batch, errors = F.validate_batch(flows, blanks=F.Blanks.REFUSED)
    assert errors == []
    expected = reference_matrix(reference(flows)[0], vocabulary=vocab)
    np.testing.assert_array_equal(batch.matrix(vocabulary=vocab), expected)
    np.testing.assert_array_equal(F.matrix_from_clean(F.validate_flows(flows, blanks=F.Blanks.REFUSED)[0], vocabulary=vocab), expected)


def test_a_batch_of_junk_flows_keeps_a_bounded_number_of_field_errors_and_names_every_bad_flow():
    """10,000 flows of 64 unknown fields each (8.7 MB, a reader's /detect/batch) made 1,050,000 field errors, all
    kept though 1,000 are listed: 1.9 s and +140 MB per request (ingest: 4 s, +340 MB). Past MAX_FIELD_ERRORS a bad
    flow is one error naming how many it has; every bad flow is still named (skip_invalid drops exactly those) and
    the first errors are listed as before."""
    junk = [{f"u{i}_{j}": j for j in range(64)} for i in range(2_000)]
    flows = [*junk, dict(PARTITIONED)]
    clean, errors = F.validate_flows(flows, blanks=F.Blanks.REFUSED)
    assert len(clean) == 1
    assert len(errors) <= F.MAX_FIELD_ERRORS + 2 * len(flows), len(errors)
    assert {e.index for e in errors} == set(range(len(junk)))
    first: list[F.FieldError] = []
    F.validate_flow(0, junk[0], first, blanks=F.Blanks.REFUSED)
    assert errors[: len(first)] == first
    last = [e for e in errors if e.index == len(junk) - 1]
    assert len(last) == 1 and "105 invalid fields" in last[0].reason, last


# -- the fields the official raw layout leaves blank -------------------------------------------------------------

RAW_BLANKS = ("ct_flw_http_mthd", "is_ftp_login", "ct_ftp_cmd")


def _nan_aware(flows):
    """Clean flows with NaN written as a marker, so equal flows compare equal."""
    return [{k: "NaN" if isinstance(v, float) and math.isnan(v) else v for k, v in flow.items()} for flow in flows]


def test_the_fields_the_raw_layout_leaves_blank_are_declared_once():
    assert frozenset(RAW_BLANKS) == F.BLANK_IN_RAW
    assert set(F.NUMERIC_COLUMNS) >= F.BLANK_IN_RAW


@pytest.mark.parametrize("function", ["validate_flow", "validate_flows", "validate_batch", "validated_batch"])
def test_which_blanks_are_missing_is_a_required_keyword(function):
    """/detect refuses a blank where ingest and training take it: the caller names the rule, never a default."""
    import inspect

    parameter = inspect.signature(getattr(F, function)).parameters["blanks"]
    assert parameter.kind is inspect.Parameter.KEYWORD_ONLY and parameter.default is inspect.Parameter.empty


@pytest.mark.parametrize("blank", [None, "", " "])
def test_detect_refuses_the_raw_layouts_blanks_and_ingest_reads_them_as_missing(blank):
    flow = dict(PARTITIONED, **dict.fromkeys(RAW_BLANKS, blank))
    for flows in ([flow], [flow, PARTITIONED]):  # one flow (per field) and a batch (columnar)
        _, errors = F.validate_flows(flows, blanks=F.Blanks.REFUSED)
        assert sorted(e.field for e in errors) == sorted(RAW_BLANKS)
        batch, errors = F.validate_batch(flows, blanks=F.Blanks.REFUSED)
        assert batch is None and len(errors) == 3
        clean, errors = F.validate_flows(flows, blanks=F.Blanks.RAW_LAYOUT)
        assert errors == [] and all(math.isnan(clean[0][name]) for name in RAW_BLANKS)
        batch, errors = F.validate_batch(flows, blanks=F.Blanks.RAW_LAYOUT)
        assert errors == [] and np.isnan(batch.matrix(vocabulary=VOCAB)[0, [F.FEATURE_COLUMNS.index(n) for n in RAW_BLANKS]]).all()
    with pytest.raises(ValidationError):
        F.to_matrix([flow], vocabulary=VOCAB)  # the scoring entry of /detect: strict


def test_the_raw_layouts_blanks_are_the_only_blanks_training_and_ingest_take():
    """One rule for training, retraining and ingest: a blank sbytes is a problem (training skips the row), never NaN."""
    flow = dict(PARTITIONED, ct_ftp_cmd=" ", sbytes="")
    for flows in ([flow], [flow, PARTITIONED]):
        _clean, errors = F.validate_flows(flows, blanks=F.Blanks.RAW_LAYOUT)
        assert [(e.index, e.field) for e in errors] == [(0, "sbytes")]
    errors: list = []
    assert F.validate_flow(0, flow, errors, blanks=F.Blanks.RAW_LAYOUT) is None and [e.field for e in errors] == ["sbytes"]


def test_the_columnar_path_reads_the_raw_layouts_blanks_as_the_per_field_checker_does():
    flows = dev_flows()
    forms = [None, "", " ", "\t", "0", 1, 2.0]
    for i, flow in enumerate(flows):
        for j, name in enumerate(RAW_BLANKS):
            flow[name] = forms[(i + j) % len(forms)]
    for blanks in (F.Blanks.RAW_LAYOUT, F.Blanks.REFUSED):
        expected_errors: list = []
        expected = [c for i, f in enumerate(flows) if (c := F.validate_flow(i, f, expected_errors, blanks=blanks)) is not None]
        clean, errors = F.validate_flows(flows, blanks=blanks)
        assert errors == expected_errors and _nan_aware(clean) == _nan_aware(expected)
        batch, errors = F.validate_batch(flows, blanks=blanks)
        if blanks is F.Blanks.RAW_LAYOUT:
            assert F._columnar(flows, keep_passthrough=True, blanks=blanks) is not None  # the fast path took them
            assert errors == [] and len(clean) == len(flows)
            np.testing.assert_array_equal(batch.matrix(vocabulary=VOCAB), F.matrix_from_clean(expected, vocabulary=VOCAB))
        else:
            assert batch is None and errors == expected_errors and errors
