"""The flow feature module: both UNSW-NB15 layouts, strict errors with indices, the vocabulary."""

import math

import numpy as np
import pytest

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
    clean, errors = F.validate_flows([PARTITIONED, raw_flow()])
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
    clean, errors = F.validate_flows([good, bad, wrong_type, "not a flow"])
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
    clean, errors = F.validate_flows([flow])
    assert clean == [] and [(e.index, e.field) for e in errors] == [(0, "sbytes")]
    with pytest.raises(ValidationError) as info:
        F.to_matrix([flow], vocabulary=F.Vocabulary({c: () for c in F.CATEGORICAL}))
    assert info.value.details["errors"] == [{"index": 0, "field": "sbytes", "reason": "must be a finite number, got ''"}]


def test_the_same_field_twice_under_both_names_is_refused():
    flow = dict(PARTITIONED, Sload=1.0)
    _, errors = F.validate_flows([flow])
    assert [(e.field, "given twice" in e.reason) for e in errors] == [("Sload", True)]


def test_training_loader_reads_blank_raw_cells_as_missing_not_zero():
    flow = dict(PARTITIONED, ct_flw_http_mthd="")
    errors: list = []
    clean = F.validate_flow(0, flow, errors, allow_blank=True)
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
