"""Flow validation's per-process caches on hostile input: what a batch leaves behind must stay bounded.

ingest.validate (POST /flows/batch, `threatflow flows load`, the flow-ingest worker) caches the parsed
text of addresses, ports, labels and categories in 65,536-entry LRU caches keyed by the cell's text.
A valid cell can be any length (blank padding around an address, leading zeros in a hex port), so each
entry could hold megabytes: only short text is cached (an 80-flow attack with 1 MiB cells had left
~170 MB cached for the life of the instance).
"""

from __future__ import annotations

import gc
import tracemalloc


def test_long_valid_cells_are_not_kept_after_their_batch() -> None:
    from flows_support import json_flows
    from helpers import require_shared_data

    from threatflow.flows import ingest

    require_shared_data("unsw-nb15", "unsw_nb15_dev.csv.gz")
    flows = json_flows(10, seed=3)
    pad = 1 << 20
    tracemalloc.start()
    try:
        gc.collect()
        before = tracemalloc.get_traced_memory()[0]
        for batch in range(8):  # eight requests of ~20 MB each, under MAX_REQUEST_BYTES
            hostile = [
                {
                    **flow,
                    "sport": "0x" + "0" * pad + format(batch * 10 + i, "x"),  # port 0..79, in hex with leading zeros
                    "srcip": " " * pad + f"10.0.{batch}.{i}",  # an address with blank padding
                }
                for i, flow in enumerate(flows)
            ]
            _, _, problems = ingest.validate(hostile)
            assert not problems, problems[:2]
            del hostile
        gc.collect()
        retained = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    assert retained < 16 * 1024 * 1024, f"{retained / 1e6:.0f} MB retained after the batches"
