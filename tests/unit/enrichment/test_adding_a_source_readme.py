"""README "Adding a source": the manifest entry it shows is one the manifest loader accepts.

Its step 5 showed `base_url_env: INTEL_CROWDSEC_URL` (the schema allows no such key: the variable is derived from
the name) and `secret: crowdsec-api-key` with no entry under `secrets:` (an unknown secret to the cross-check): a
newcomer following it got a manifest that does not load."""

from __future__ import annotations

import re
from pathlib import Path

import yaml

from threatflow.platform.manifest import DEFAULT_MANIFEST, load_manifest

README = Path(__file__).resolve().parents[3] / "README.md"


def _section(text: str, title: str) -> str:
    """From the heading to the next heading of the same or a higher level outside code blocks."""
    start = text.index(f"### {title}\n")
    fenced = False
    lines = text[start:].splitlines(keepends=True)
    for index, line in enumerate(lines[1:], start=1):
        fenced ^= line.startswith("```")
        if not fenced and re.match(r"#{1,3} ", line):
            return "".join(lines[:index])
    return "".join(lines)


def test_the_readme_manifest_entry_for_a_new_source_loads(tmp_path: Path) -> None:
    section = _section(README.read_text(encoding="utf-8"), "Adding a source")
    blocks = [yaml.safe_load(block) for block in re.findall(r"```yaml\n(.*?)```", section, flags=re.DOTALL)]
    assert blocks and all(isinstance(b, dict) for b in blocks)
    raw = yaml.safe_load(DEFAULT_MANIFEST.read_text())
    for block in blocks:
        for key, entries in block.items():
            raw.setdefault(key, {}).update(entries)
    path = tmp_path / "topology.yaml"
    path.write_text(yaml.safe_dump(raw))
    source = load_manifest(path).sources["crowdsec"]
    assert source.base_url_env == "INTEL_CROWDSEC_URL" and source.secret == "crowdsec-api-key"
