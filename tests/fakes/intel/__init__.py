"""Fake intel APIs on 127.0.0.1 for tests and the dev stack (`FAKE_INTEL=1 make run`).

    with start_fake_intel() as fake:            # or: python -m tests.fakes.intel --port 8099
        fake.set_scenario("virustotal", "rate_limited", duration=30)
        lookup("virustotal", "ipv4", "1.2.3.4", base_url=fake.url("virustotal"), ...)
        assert fake.call_count("virustotal", "1.2.3.4") == 1

See `server.py` for the scenarios and the HTTP control API, `apis.py` for each source's contract.
"""

from .apis import FAKE_APIS, fixture_path
from .server import SCENARIOS, Call, FakeIntel, start_fake_intel

__all__ = ["FAKE_APIS", "SCENARIOS", "Call", "FakeIntel", "fixture_path", "start_fake_intel"]
