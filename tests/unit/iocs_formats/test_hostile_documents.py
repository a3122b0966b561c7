"""Documents shaped as real producers write them, or as a hostile one could: each once crashed an import (a 500 for
the sync import, a job redelivered to the dead letter for the async one) or stored data below its marking."""

import pytest
from real_documents import OTX_PULSE

from threatflow.intel.formats import parse


@pytest.mark.parametrize("key", ["TLP", "tlp"])
def test_an_otx_pulse_marked_under_its_api_key_keeps_its_tlp(key):
    """OTX's API writes a pulse's marking as `TLP` (its subscribed and indicator answers, and what IntelMQ's and OTX's
    own STIX exporter read): only `tlp` was read, so a TLP:RED pulse came in at the import's default TLP."""
    pulse = {k: v for k, v in OTX_PULSE.items() if k != "tlp"} | {key: "red"}
    parsed = parse("json", pulse)
    assert {p.item.tlp for p in parsed.iocs} == {"red"}
    assert {t.item.tlp for t in parsed.threats} == {"red"}


def test_an_otx_pulse_with_both_keys_takes_the_stricter():
    parsed = parse("json", OTX_PULSE | {"tlp": "white", "TLP": "amber"})
    assert {p.item.tlp for p in parsed.iocs} == {"amber"}
