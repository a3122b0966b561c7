"""Intel API keys through Secret Manager (its REST API faked): a new version is used without a redeploy."""

from __future__ import annotations

import logging

from fakes.secret_manager import FakeSecretManager

from threatflow.adapters.secrets import SecretManagerSecrets
from threatflow.enrichment.keys import KeyRing
from threatflow.platform.manifest import load_manifest

PROJECT = "threatflow-test"


def test_a_new_secret_version_is_picked_up_after_the_short_cache(capfd):
    vt = load_manifest().sources["virustotal"]
    abuse = load_manifest().sources["abuseipdb"]
    clock = [0.0]
    with FakeSecretManager() as fake:
        fake.add_version(PROJECT, "vt-api-key", "vt-key-version-1")
        secrets = SecretManagerSecrets(PROJECT, endpoint=fake.endpoint, cache_seconds=0)
        ring = KeyRing(secrets=secrets, cache_seconds=60, monotonic=lambda: clock[0])
        logging.getLogger().setLevel(logging.DEBUG)
        assert ring.get(vt) == "vt-key-version-1"
        fake.add_version(PROJECT, "vt-api-key", "vt-key-version-2")
        clock[0] = 30
        assert ring.get(vt) == "vt-key-version-1", "within the cache the old key is still used"
        clock[0] = 61
        assert ring.get(vt) == "vt-key-version-2", "after the cache the new version is used, no redeploy"
        assert ring.get(abuse) is None and not ring.usable(abuse), "no secret version: the source has no key"
        out, err = capfd.readouterr()
        assert "vt-key-version" not in out + err, "keys are never logged"
        assert len([r for r in fake.requests if "vt-api-key" in r]) == 2
