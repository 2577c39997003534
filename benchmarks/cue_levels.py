"""The cue task's reference levels: random answers (chance) and an oracle that knows the target.

    python benchmarks/cue_levels.py [--episodes 100000] [--out benchmarks/results/cue_levels.json]

The oracle answers every Go step right, so it bounds any learner from above (a meta-learner must
first find the target from the rewards); random answers score 0 in expectation. fig1 plays the
20-bit random cues, a5 the 4 fixed one-hot cues (the same trial structure).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import bpm_envs  # noqa: F401  (registers the environments)
from bpm_envs.cue_levels import levels

VARIANTS = {"fig1": {}, "a5": {"fixed_cues": True}}


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--episodes", type=int, default=100_000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=None, help="also write the levels as JSON here")
    args = parser.parse_args()
    result: dict = {"episodes": args.episodes, "seed": args.seed, "variants": {}}
    for name, kwargs in VARIANTS.items():
        t = time.perf_counter()
        lv = levels(args.episodes, args.seed, **kwargs)
        result["variants"][name] = {"env_kwargs": kwargs, **lv}
        print(
            f"{name} {kwargs or ''}: random answers {lv['random']['mean']:.3f} +- {lv['random']['stderr']:.3f}, "
            f"oracle {lv['oracle']['mean']:.3f} +- {lv['oracle']['stderr']:.3f} "
            f"(stderr; {args.episodes:,} episodes each, {time.perf_counter() - t:.1f} s)"
        )
    if args.out:
        args.out.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
