"""`python -m tests.fakes.intel --port P`: serve the fake intel APIs until interrupted.

Prints one JSON line with the base URL of every source (and the INTEL_<SOURCE>_URL variables) once listening,
so a parent process (the dev stack) can read it.
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
import threading

from .server import start_fake_intel


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.fakes.intel", description=__doc__)
    parser.add_argument("--port", type=int, default=0, help="port on 127.0.0.1 (0 = any free port)")
    parser.add_argument("--host", default="127.0.0.1")
    args = parser.parse_args(argv)
    fake = start_fake_intel(args.port, host=args.host)
    print(json.dumps({"url": fake.origin, "port": fake.port, "env": fake.env()}), flush=True)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    stop.wait()
    fake.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
