"""The maze's reference levels: a uniform random walk and a shortest-path oracle, per maze size.

    python benchmarks/maze_levels.py [--episodes 100000] [--out benchmarks/results/maze_levels.json]

The oracle knows the reward cell from step 0, so it bounds any learner from above; the random
walk is the no-memory floor. fig2 uses size 9 (an 11x11 array), fig2-release size 11 (13x13).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import bpm_envs  # noqa: F401  (registers the environments)
from bpm_envs.maze_levels import levels


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--episodes", type=int, default=100_000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=None, help="also write the levels as JSON here")
    args = parser.parse_args()
    result = {"episodes": args.episodes, "seed": args.seed, "sizes": {}}
    for size in (9, 11):
        t = time.perf_counter()
        lv = levels(args.episodes, args.seed, size=size)
        result["sizes"][str(size)] = lv
        print(
            f"size {size} ({size + 2}x{size + 2} array): random walk {lv['random']['mean']:.3f} "
            f"+- {lv['random']['stderr']:.3f}, oracle {lv['oracle']['mean']:.2f} +- {lv['oracle']['stderr']:.2f} "
            f"(stderr; {args.episodes:,} episodes each, {time.perf_counter() - t:.1f} s)"
        )
    if args.out:
        args.out.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
