"""Function modules import no heavy client at module level (the clients are
built on first use); timings themselves are printed by tests/perf/bench_import.py."""

import json
import secrets
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
HEAVY = (
    "google.cloud.pubsub_v1",
    "google.cloud.firestore",
    "google.cloud.storage",
    "google.cloud.secretmanager",
    "sklearn",
    "sqlalchemy",
    "redis",
    "argon2",
)
PROBE = """
import importlib.util, json, sys
spec = importlib.util.spec_from_file_location("main", sys.argv[1])
module = importlib.util.module_from_spec(spec)
spec.loader.exec_module(module)
print(json.dumps(sorted(m for m in sys.modules if m.split(".")[0] in ("google", "sklearn", "sqlalchemy", "redis", "argon2"))))
"""


@pytest.mark.parametrize("name", ["auth", "admin", "iocs", "threats", "maintenance", "flows", "flow-ingest"])
def test_importing_a_function_loads_no_heavy_client(name):
    out = subprocess.run(
        [sys.executable, "-c", PROBE, str(REPO / "functions" / name / "main.py")],
        env={"JWT_SECRET": secrets.token_hex(32), "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        check=True,
    )
    loaded = json.loads(out.stdout)
    assert not [m for m in loaded if m.startswith(HEAVY)], loaded
