#!/usr/bin/env python
"""Run the paper's experiments as sweeps of ordinary run folders, follow them, report them.

Examples:
    python experiment.py list
    python experiment.py run fig2 --seeds 0-4 --updates 3000 --workers 2 --out sweeps/fig2
    python experiment.py status sweeps/fig2
    python experiment.py report sweeps/fig2
"""

import os
import sys

# Idle OpenMP threads of torch spin by default; on a shared CPU that costs many times the work.
# Must be set before torch loads; the spawned workers inherit it.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

if __name__ == "__main__":
    from bpm_agents.experiments.cli import main

    sys.exit(main())
