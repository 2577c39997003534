#!/usr/bin/env python
"""``bpm train`` as a script: ``python train.py ARGS`` is ``bpm train ARGS``.

Examples:
    python train.py --env bpm/CueReward-v0 --plasticity retroactive --updates 5000 --seed 0 --out runs/cue-retro
    python train.py --out runs/cue-retro --updates 8000 --resume
    python train.py --algo plastic-ppo --env bpm/PlasticMaze-v0 --plasticity simple --updates 300 --out runs/maze-ppo
    python train.py --algo recurrent-ppo --env bpm/CueReward-v0 --updates 200 --out runs/cue-rppo
    python train.py lm --help          # Penn Treebank language models: bpm train-lm (see README)
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
    if argv and argv[0] == "lm":
        return bpm(["train-lm", *argv[1:]], prog="train.py lm")
    return bpm(["train", *argv], prog="train.py")


if __name__ == "__main__":
    sys.exit(main())
