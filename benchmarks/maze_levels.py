"""The maze's reference levels: a uniform random walk and a shortest-path oracle, per maze size.

    python benchmarks/maze_levels.py [--episodes 100000] [--out benchmarks/results/maze_levels.json]

The oracle knows the reward cell from step 0, so it bounds any learner from above; the random
walk is the no-memory floor. fig2 uses size 9 (an 11x11 array), fig2-release size 11 (13x13).
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import bpm_envs  # noqa: F401  (registers the environments)
from bpm_envs.maze_levels import levels


def report_levels(
    doc: str,
    key: str,
    variants: dict[str, tuple[str, dict[str, Any]]],
    levels_fn: Callable[..., dict[str, Any]],
    random_name: str,
) -> None:
    """The command line of a levels script: for each variant (JSON name -> printed label, env
    kwargs), the random and oracle policies' mean and stderr, printed and written under ``key``."""
    parser = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--episodes", type=int, default=100_000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=None, help="also write the levels as JSON here")
    args = parser.parse_args()
    result: dict[str, Any] = {"episodes": args.episodes, "seed": args.seed, key: {}}
    for name, (label, kwargs) in variants.items():
        t = time.perf_counter()
        lv = levels_fn(args.episodes, args.seed, **kwargs)
        result[key][name] = lv
        rnd, orc = lv["random"], lv["oracle"]
        print(
            f"{label}: {random_name} {rnd['mean']:.3f} +- {rnd['stderr']:.3f}, "
            f"oracle {orc['mean']:.3f} +- {orc['stderr']:.3f} "
            f"(stderr; {args.episodes:,} episodes each, {time.perf_counter() - t:.1f} s)"
        )
    if args.out:
        args.out.write_text(json.dumps(result, indent=2) + "\n")


def main() -> None:
    sizes = {str(s): (f"size {s} ({s + 2}x{s + 2} array)", {"size": s}) for s in (9, 11)}
    report_levels(__doc__, "sizes", sizes, levels, "random walk")


if __name__ == "__main__":
    main()
