"""The pure parts of correlation: name forms, tag and evidence matching, noisy-or."""

import pytest

from threatflow.intel import correlate as c


@pytest.fixture
def emotet():
    return c.name_forms(["Emotet", "Geodo", "X"])


def test_squash_and_short_names_are_skipped():
    assert c.squash("Win.Emotet") == "winemotet"
    assert c.squash("Lazarus  Group!") == "lazarusgroup"
    assert c.name_forms(["Emotet", "X", "Go"]) == {"emotet": "Emotet"}


@pytest.mark.parametrize(
    ("tag", "score"),
    [
        ("emotet", c.SCORE_EXACT_TAG),
        ("EMOTET", c.SCORE_EXACT_TAG),
        ("malware:emotet", c.SCORE_PREFIXED_TAG),
        ("win.emotet", c.SCORE_PREFIXED_TAG),
        ('misp-galaxy:malpedia="Emotet"', c.SCORE_PREFIXED_TAG),
        ('misp-galaxy:mitre-malware="Emotet - S0367"', c.SCORE_PREFIXED_TAG),
        ("geodo", c.SCORE_EXACT_TAG),
        ("emotet:epoch4", c.SCORE_TAG_PART),
    ],
)
def test_tags_that_name_the_threat(emotet, tag, score):
    signal = c.match_tag(tag, emotet)
    assert signal is not None and signal.score == score
    assert repr(tag) in signal.reason


@pytest.mark.parametrize("tag", ["emotetish", "notemotet", "malware:trickbot", "x", "tlp:amber"])
def test_tags_that_do_not(emotet, tag):
    assert c.match_tag(tag, emotet) is None


def test_multi_word_names_match_across_separators():
    names = c.name_forms(["Lazarus Group"])
    assert c.match_tag("lazarus-group", names).score == c.SCORE_EXACT_TAG
    assert c.match_tag('misp-galaxy:threat-actor="Lazarus Group"', names).score == c.SCORE_PREFIXED_TAG


def test_like_patterns_cover_what_the_matcher_accepts():
    assert c.like_patterns(["Lazarus Group", "X"]) == ["%lazarus%group%"]


def test_evidence_family_and_text(emotet):
    family = c.match_evidence("malwarebazaar", "malware_family", "Emotet", emotet)
    assert family.score == c.SCORE_EVIDENCE_FAMILY and "malwarebazaar" in family.reason
    pulse = c.match_evidence("otx", "pulse", "Emotet epoch 5 returns", emotet)
    assert pulse.score == c.SCORE_EVIDENCE_TEXT
    assert c.match_evidence("otx", "pulse", "TrickBot returns", emotet) is None


def test_noisy_or():
    assert c.noisy_or([]) == 0
    assert c.noisy_or([90]) == 90
    assert c.noisy_or([80, 60]) == 92  # 1 - 0.2 * 0.4
    assert c.noisy_or([100, 10]) == 100
    assert c.noisy_or([60, 60]) == 84


def test_combine_counts_each_group_once():
    tag_a = c.Signal(90, "tag 'emotet'")
    tag_b = c.Signal(80, "tag 'malware:emotet'")
    rel = c.relation_signal("drops", "in", 7)
    score, reasons = c.combine([("tags", tag_a), ("tags", tag_b), ("relation:7", rel)])
    assert score == c.noisy_or([90, 60]) == 96
    assert reasons == ["tag 'emotet' (90)", "IoC 7 drops it (linked to the threat) (60)"]


def test_relation_scores_by_type():
    assert c.relation_signal("resolves-to", "out", 1).score == 60
    assert c.relation_signal("communicates-with", "out", 1).score == 50
    assert c.relation_signal("related-to", "out", 1).score == 40
    # one weak relation alone stays under the default threshold of 70
    assert c.combine([("relation:1", c.relation_signal("related-to", "out", 1))])[0] < 70
