#!/usr/bin/env python
"""``bpm experiment`` as a script: ``python experiment.py ARGS`` is ``bpm experiment ARGS``.

Examples:
    python experiment.py list
    python experiment.py run fig2 --seeds 0-4 --updates 3000 --workers 2 --out sweeps/fig2
    python experiment.py status sweeps/fig2
    python experiment.py report sweeps/fig2
"""

from __future__ import annotations

import os
import sys

# Idle OpenMP threads of torch spin by default; on a shared CPU that costs many times the work.
# Must be set before torch loads; the spawned workers inherit it.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")


def main(argv: list[str] | None = None) -> int:
    from bpm_agents.cli import main as bpm

    argv = sys.argv[1:] if argv is None else list(argv)
    return bpm(["experiment", *argv], prog="experiment.py")


if __name__ == "__main__":
    sys.exit(main())
