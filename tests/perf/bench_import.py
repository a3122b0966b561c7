"""Cold-start import cost of each function module, as Cloud Functions loads it.

Each measurement is a fresh interpreter importing functions/<name>/main.py the
way functions-framework does; the baseline is `import functions_framework`
alone in the same run, so the ratio is comparable across noisy machines.
Target: HTTP functions that use neither scikit-learn nor Firestore < 0.5 s.
Run: make bench   (or .venv/bin/python tests/perf/bench_import.py)
"""

from __future__ import annotations

import os
import secrets
import statistics
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
RUNS = 7
PROBE = """
import importlib.util, sys, time
t = time.perf_counter()
{body}
print(time.perf_counter() - t)
"""
LOAD_MAIN = """
spec = importlib.util.spec_from_file_location("main", {path!r})
module = importlib.util.module_from_spec(spec)
sys.modules["main"] = module
spec.loader.exec_module(module)
"""


def measure(body: str) -> float:
    env = {**os.environ, "JWT_SECRET": secrets.token_hex(32)}
    samples = []
    for _ in range(RUNS):
        out = subprocess.run([sys.executable, "-c", PROBE.format(body=body)], env=env, capture_output=True, text=True, check=True)
        samples.append(float(out.stdout.strip().splitlines()[-1]))
    return statistics.median(samples)


def main() -> None:
    import argparse

    argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter).parse_args()
    sys.path.insert(0, str(REPO / "shared"))
    from threatflow.platform.manifest import load_manifest

    manifest = load_manifest()
    baseline = measure("import functions_framework")
    print(f"baseline: import functions_framework = {baseline * 1000:.0f} ms (median of {RUNS})")
    print(f"{'function':<14} {'trigger':<8} {'import ms':>10} {'x baseline':>11}  target")
    for fn in manifest.functions.values():
        seconds = measure(LOAD_MAIN.format(path=str(REPO / "functions" / fn.name / "main.py")))
        heavy = {"firestore", "sklearn"} & set(fn.uses)
        target = "< 500 ms" if fn.trigger.value == "http" and not heavy else "-"
        verdict = "" if target == "-" else ("ok" if seconds < 0.5 else "OVER")
        print(f"{fn.name:<14} {fn.trigger.value:<8} {seconds * 1000:>10.0f} {seconds / baseline:>11.2f}  {target} {verdict}")


if __name__ == "__main__":
    main()
