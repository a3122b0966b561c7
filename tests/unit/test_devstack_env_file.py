"""`.devstack/env` is a file of `export` lines: sourced by a shell (`. .devstack/env`, as the walkthrough's fake-intel
step invites), it must give back exactly the stack's environment, with no error."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from threatflow.devstack.stack import write_env_file


def test_sourcing_the_env_file_gives_back_the_stacks_environment(tmp_path: Path) -> None:
    """ENRICH_SOURCES_JSON and ENRICH_SECRETS_JSON hold YAML-ish JSON with spaces and braces: written unquoted, every
    word of them was an `export: not a valid identifier` error (hundreds of lines) and the variables were cut short."""
    env = {
        "ENRICH_SOURCES_JSON": json.dumps(
            {"abuseipdb": {"description": "AbuseIPDB API v2 check (free 1,000/day).", "quota": {"per_day": 1000}}}
        ),
        "INTEL_ABUSEIPDB_URL": "http://127.0.0.1:39021/abuseipdb/api/v2",
        "ODD": 'it\'s $HOME `id` "quoted" \\ back;slash & more',
        "EMPTY": "",
    }
    path = write_env_file(tmp_path, env)
    assert path == tmp_path / "env" and path.stat().st_mode & 0o777 == 0o600
    dump = "import json, os, sys; print(json.dumps({k: os.environ.get(k) for k in sys.argv[1:]}))"
    done = subprocess.run(
        ["bash", "-c", '. "$0" && "$1" -c "$2" "${@:3}"', str(path), sys.executable, dump, *sorted(env)],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
        env={"PATH": os.environ["PATH"]},
    )
    assert done.stderr == "" and done.returncode == 0
    assert json.loads(done.stdout) == env
