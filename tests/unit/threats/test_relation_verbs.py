"""The verb of a threat-to-threat relation or a threat-to-IoC link (`threats.model.check_relation_verb`)."""

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from threatflow.platform.errors import ValidationError
from threatflow.threats.model import check_relation_verb


@pytest.mark.parametrize(
    ("given", "verb"),
    [
        ("Attributed To", "attributed-to"),
        ("attributed_to", "attributed-to"),
        (" Uses ", "uses"),
        ("VARIANT  OF", "variant-of"),
        ("derived__from", "derived-from"),
        ("attributed _ to", "attributed-to"),
        ("attributed - to", "attributed-to"),
        ("beacons\tto", "beacons-to"),
        ("attributed-to", "attributed-to"),
        ("x--y", "x--y"),  # a run of hyphens alone is the producer's own tidy word, kept as it is
    ],
)
def test_a_verb_spelled_with_spaces_underscores_or_capitals_is_read_as_its_tidy_word(given, verb):
    """STIX producers and users write `Attributed To`, `attributed_to`, ` Uses `: the API refused them (400) and a
    STIX import kept them as related-to with a warning."""
    assert check_relation_verb(given) == verb


@pytest.mark.parametrize(
    ("given", "verb"),
    [
        ("uses_", "uses"),
        ("uses-", "uses"),
        ("_uses", "uses"),
        ("-uses", "uses"),
        ("__uses__", "uses"),
        ("--uses--", "uses"),
        (" _attributed to- ", "attributed-to"),
        ("- variant_of _", "variant-of"),
    ],
)
def test_separators_before_or_after_a_verb_are_dropped(given, verb):
    """`uses_` and `uses-` were stored as the verb `uses-`, a second verb beside `uses` (counted apart, exported as
    that relationship_type), and `_uses` was refused: a separator at either end joins nothing and is dropped."""
    assert check_relation_verb(given) == verb


@pytest.mark.parametrize("given", ["Is Related!", "uses\u0000", "", "   ", "_", "-", " _-_ ", "1st-stage", "x" * 65, "a b" * 22, "dröps"])
def test_a_verb_that_is_no_tidy_word_once_read_is_refused(given):
    with pytest.raises(ValidationError) as refused:
        check_relation_verb(given)
    assert refused.value.field == "relation"


@settings(max_examples=500, deadline=None)
@given(stored=st.from_regex(r"[a-z][a-z0-9-]{0,63}", fullmatch=True))
def test_a_verb_the_tables_could_hold_is_read_as_itself_without_its_trailing_hyphens(stored):
    """sql/0016_relation_verb_edges.sql rewrites stored verbs as rtrim(verb, '-'): threat_iocs.relation and
    threat_relations.type hold only what their CHECK (^[a-z][a-z0-9-]{0,63}$) admits, and on those values that must be
    what check_relation_verb gives (`uses-` and `uses--` are uses, `x--y-` is x--y)."""
    assert check_relation_verb(stored) == stored.rstrip("-")
