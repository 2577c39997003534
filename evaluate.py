#!/usr/bin/env python
"""``bpm evaluate`` as a script: ``python evaluate.py RUN ARGS`` is ``bpm evaluate RUN ARGS``.

Examples:
    python evaluate.py runs/cue-retro --episodes 200
    python evaluate.py runs/cue-retro --json > results.json
    python evaluate.py runs/maze-simple --render human
    python evaluate.py runs/maze-simple --gif maze.gif --gif-episodes 2
    python evaluate.py runs/cue-retro --plot-modulator fig3.png
    python evaluate.py lm runs/lm-quick --data path/to/ptb   # a language model (or: evaluate.py runs/lm-quick ...)
"""

from __future__ import annotations

import os
import sys

# Idle OpenMP threads of torch spin by default; on a CPU shared with other jobs that costs up to
# 40x on these small models. Must be set before torch loads (users may still override it).
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")


def main(argv: list[str] | None = None) -> int:
    from bpm_agents.cli import main as bpm

    argv = sys.argv[1:] if argv is None else list(argv)
    return bpm(["evaluate", *argv], prog="evaluate.py")


if __name__ == "__main__":
    sys.exit(main())
