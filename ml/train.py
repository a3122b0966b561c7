"""Train the flow model: `python ml/train.py --data FILE... --out DIR` (also `threatflow models train`)."""

from __future__ import annotations

import sys

from threatflow.cli.models import train_main

if __name__ == "__main__":
    sys.exit(train_main(sys.argv[1:]))
